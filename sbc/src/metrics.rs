//! Prometheus metrics: names live here so the rest of the daemon cannot misspell them.
//!
//! Pure crates return counters as plain structs (`srtp_bridge::BridgeStats`); only this module
//! talks to the `metrics` facade.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};

pub const CALLS_ACTIVE: &str = "sbc_calls_active";
pub const CALLS_TOTAL: &str = "sbc_calls_total";
pub const SIP_RESPONSES_TOTAL: &str = "sbc_sip_responses_total";
pub const TLS_HANDSHAKES_TOTAL: &str = "sbc_tls_handshakes_total";
pub const SRTP_SUITE_TOTAL: &str = "sbc_srtp_suite_total";
pub const SRTP_AUTH_FAILURES_TOTAL: &str = "sbc_srtp_auth_failures_total";
pub const RTP_PACKETS_TOTAL: &str = "sbc_rtp_packets_total";
pub const AGENT_CONNECT_SECONDS: &str = "sbc_agent_connect_seconds";
pub const MEDIA_PACKET_LATENCY_SECONDS: &str = "sbc_media_packet_latency_seconds";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "sbc_connections_refused_total";
pub const CONNECTIONS_CLOSED_TOTAL: &str = "sbc_connections_closed_total";

/// What `/readyz` asks: `Ok(())` when this instance takes new calls, else why not.
pub type Readiness = Box<dyn Fn() -> Result<(), &'static str> + Send + Sync>;

static READINESS: std::sync::OnceLock<Readiness> = std::sync::OnceLock::new();

/// Sets what `/readyz` reports (once, when the daemon's state exists; until then it is 503).
pub fn set_readiness(f: Readiness) {
    let _ = READINESS.set(f);
}

/// Starts the HTTP endpoint on the metrics listener. Must run inside the tokio runtime.
///
/// Our own small HTTP/1.1 server instead of the exporter's, so that it can also answer
/// `/healthz` (200 while the process runs) and `/readyz` (200, or 503 while draining or, with
/// `cluster.readyz_requires_redis`, while Redis is unreachable). Every other path answers the
/// Prometheus text, exactly as the exporter's own listener does (`/health` says `OK`).
pub fn install(listen: SocketAddr) -> Result<(), String> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(AGENT_CONNECT_SECONDS.to_string()),
            &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0],
        )
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(MEDIA_PACKET_LATENCY_SECONDS.to_string()),
                &[
                    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025,
                ],
            )
        })
        .and_then(|b| b.install_recorder())
        .map_err(|e| format!("metrics listener on {listen}: {e}"))?;
    let std_listener = std::net::TcpListener::bind(listen)
        .and_then(|l| l.set_nonblocking(true).map(|()| l))
        .map_err(|e| format!("metrics listener on {listen}: {e}"))?;
    let listener = tokio::net::TcpListener::from_std(std_listener)
        .map_err(|e| format!("metrics listener on {listen}: {e}"))?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            upkeep.run_upkeep();
        }
    });
    tokio::spawn(serve(listener, handle));
    Ok(())
}

/// Connections served at once on the metrics listener; more wait in the kernel's backlog.
const MAX_HTTP_CONNECTIONS: usize = 32;

async fn serve(
    listener: tokio::net::TcpListener,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_HTTP_CONNECTIONS));
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let Ok(permit) = std::sync::Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let handle = handle.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let handle = handle.clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(answer(req.uri().path(), handle).await)
                    }
                });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
            let _ = tokio::time::timeout(Duration::from_secs(60), conn).await;
        });
    }
}

async fn answer(
    path: &str,
    handle: metrics_exporter_prometheus::PrometheusHandle,
) -> hyper::Response<http_body_util::Full<bytes::Bytes>> {
    let (status, body) = match path {
        "/healthz" => (200, "ok\n".to_string()),
        "/readyz" => match READINESS.get().map_or(Err("starting"), |f| f()) {
            Ok(()) => (200, "ready\n".to_string()),
            Err(why) => (503, format!("not ready: {why}\n")),
        },
        "/health" => (200, "OK".to_string()),
        _ => (
            200,
            tokio::task::spawn_blocking(move || handle.render())
                .await
                .unwrap_or_default(),
        ),
    };
    let mut resp = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(body)));
    *resp.status_mut() = hyper::StatusCode::from_u16(status).unwrap_or_default();
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain"),
    );
    resp
}

pub fn call_started() {
    gauge!(CALLS_ACTIVE).increment(1.0);
}

pub fn call_ended() {
    gauge!(CALLS_ACTIVE).decrement(1.0);
}

/// Active calls by carrier (an outbound call counts under `trunk:{name}`), beside the total
/// [`CALLS_ACTIVE`]: ops watch active calls by instance and carrier (`deploy/grafana`). A
/// separate gauge so that `sbc_calls_active` keeps its one unlabelled series.
pub const CALLS_ACTIVE_BY_CARRIER: &str = "sbc_calls_active_by_carrier";

pub fn carrier_call_started(carrier: &str) {
    gauge!(CALLS_ACTIVE_BY_CARRIER, "carrier" => carrier.to_string()).increment(1.0);
}

pub fn carrier_call_ended(carrier: &str) {
    gauge!(CALLS_ACTIVE_BY_CARRIER, "carrier" => carrier.to_string()).decrement(1.0);
}

/// `outcome`: `accepted`, `refused`, `cancelled`, `failed`.
pub fn call_outcome(outcome: &'static str) {
    counter!(CALLS_TOTAL, "outcome" => outcome).increment(1);
}

pub fn sip_response(code: u16) {
    counter!(SIP_RESPONSES_TOTAL, "code" => code.to_string()).increment(1);
}

pub fn tls_handshake(version: &str, cipher: &str, result: &'static str) {
    counter!(TLS_HANDSHAKES_TOTAL, "version" => version.to_string(), "cipher" => cipher.to_string(), "result" => result)
        .increment(1);
}

pub fn srtp_suite(suite: &str) {
    counter!(SRTP_SUITE_TOTAL, "suite" => suite.to_string()).increment(1);
}

/// One call's media metric handles, resolved once when its media starts: the packet path then
/// increments atomics instead of looking up a metric by name and labels on every packet.
pub struct CallMedia {
    rtp_carrier_to_agent: metrics::Counter,
    rtp_agent_to_carrier: metrics::Counter,
    auth_failures: metrics::Counter,
    latency_carrier_to_agent: metrics::Histogram,
    latency_agent_to_carrier: metrics::Histogram,
}

impl CallMedia {
    pub fn new() -> CallMedia {
        CallMedia {
            rtp_carrier_to_agent: counter!(RTP_PACKETS_TOTAL, "direction" => "carrier_to_agent"),
            rtp_agent_to_carrier: counter!(RTP_PACKETS_TOTAL, "direction" => "agent_to_carrier"),
            auth_failures: counter!(SRTP_AUTH_FAILURES_TOTAL, "side" => "carrier"),
            latency_carrier_to_agent: histogram!(MEDIA_PACKET_LATENCY_SECONDS, "direction" => "carrier_to_agent"),
            latency_agent_to_carrier: histogram!(MEDIA_PACKET_LATENCY_SECONDS, "direction" => "agent_to_carrier"),
        }
    }

    /// RTP packets relayed and SRTP auth failures since the last report.
    pub fn packets(&self, carrier_to_agent: u64, agent_to_carrier: u64, auth_failures: u64) {
        if carrier_to_agent > 0 {
            self.rtp_carrier_to_agent.increment(carrier_to_agent);
        }
        if agent_to_carrier > 0 {
            self.rtp_agent_to_carrier.increment(agent_to_carrier);
        }
        if auth_failures > 0 {
            self.auth_failures.increment(auth_failures);
        }
    }

    pub fn latency_carrier_to_agent(&self, elapsed: Duration) {
        self.latency_carrier_to_agent.record(elapsed.as_secs_f64());
    }

    pub fn latency_agent_to_carrier(&self, elapsed: Duration) {
        self.latency_agent_to_carrier.record(elapsed.as_secs_f64());
    }
}

impl Default for CallMedia {
    fn default() -> CallMedia {
        CallMedia::new()
    }
}

pub fn agent_connect(elapsed: Duration) {
    histogram!(AGENT_CONNECT_SECONDS).record(elapsed.as_secs_f64());
}

/// `reason`: `source_not_allowed`, `per_ip_limit`, `handshake_timeout`, `handshake_failed`.
pub fn connection_refused(reason: &'static str) {
    counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(1);
}

/// One API request, by route (`calls_list`, `call_fetch`, `call_update`, `other`) and status.
pub fn api_request(route: &'static str, status: u16) {
    metrics::counter!("sbc_api_requests_total", "route" => route, "status" => status.to_string())
        .increment(1);
}

/// A status callback that could not be delivered after its retries, or was dropped because
/// the delivery queue was full.
pub fn status_callback_failed(why: &'static str) {
    metrics::counter!("sbc_status_callback_failures_total", "reason" => why).increment(1);
}

/// A connection sbc closed because its peer stopped reading. `reason`: `write_stuck` (a write
/// passed `limits.write_timeout_secs`), `write_queue_full` (`limits.write_queue_bytes` overflowed).
pub fn connection_closed(reason: &'static str) {
    counter!(CONNECTIONS_CLOSED_TOTAL, "reason" => reason).increment(1);
}

/// Outbound calls (placed through a `[[trunks]]` trunk) by final status: `refused` (the API
/// answered 4xx before any SIP), `completed`, `busy`, `no-answer`, `failed`, `canceled`.
/// Inbound calls are `sbc_calls_total{outcome}`; `sbc_calls_active` counts both directions.
pub const OUTBOUND_CALLS_TOTAL: &str = "sbc_outbound_calls_total";

pub fn outbound_call(status: &'static str) {
    counter!(OUTBOUND_CALLS_TOTAL, "status" => status).increment(1);
}

/// 1 while this instance cannot reach Redis (`[cluster]` degraded mode), else 0.
pub fn cluster_degraded(degraded: bool) {
    gauge!("sbc_cluster_degraded").set(if degraded { 1.0 } else { 0.0 });
}

/// One Redis command of the cluster driver, by operation and `ok`/`error`.
pub fn cluster_redis_command(op: &'static str, result: &'static str) {
    counter!("sbc_cluster_redis_commands_total", "op" => op, "result" => result).increment(1);
}

/// One API request forwarded to the instance that owns the call, by `result` (`ok`, `error`).
pub fn cluster_forwarded(result: &'static str) {
    counter!("sbc_cluster_forwarded_requests_total", "result" => result).increment(1);
}
