//! Cluster forwarding (`[cluster]`, `docs/scaling.md`): a request for a call that another
//! instance owns is sent to that instance's API over TLS (verified against `cluster.ca`) and its
//! answer relayed, so a client never needs to know which instance holds a call; the calls list
//! gathers every live instance's calls. Requests come here only once authenticated and for the
//! authenticated account's own path; the owner authenticates them again with the same
//! credentials. A forwarded request carries [`FORWARDED_BY`], and is never forwarded again.
//!
//! While Redis is unreachable (degraded mode) the owner of a call this instance does not hold
//! is unknown: such requests, and the calls list, get `503` code 20503.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use serde_json::Value;
use tracing::{debug, warn};

use super::{Answer, BODY_TIMEOUT, MAX_BODY};
use crate::cluster::{Cluster, Peer};
use crate::metrics as m;
use crate::shared::Shared;

/// Set on a forwarded request (the forwarding instance's id): its target answers alone.
pub const FORWARDED_BY: &str = "x-sbc-forwarded-by";
/// Connect, TLS, request and whole answer of one forwarded request.
const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest answer relayed (a calls list of 1000 calls fits).
const MAX_ANSWER: usize = 2 * 1024 * 1024;

/// The cluster, unless there is none or `req` was forwarded to us already.
pub(super) fn cluster_for<'a>(shared: &'a Shared, req: &Request<Incoming>) -> Option<&'a Cluster> {
    if req.headers().contains_key(FORWARDED_BY) {
        return None;
    }
    shared.cluster.as_deref()
}

fn unavailable() -> Answer {
    Answer::error(
        StatusCode::SERVICE_UNAVAILABLE,
        20503,
        "Service Unavailable: the cluster's call registry cannot be reached",
    )
}

/// A fetch or update of call `sid`, which this instance does not hold: relayed to its owner;
/// `404` when no live instance holds it.
pub(super) async fn call(
    cluster: &Cluster,
    sid: &str,
    path: &str,
    req: Request<Incoming>,
) -> Answer {
    let asked = Instant::now();
    let owner = match cluster.owner(sid).await {
        Ok(Some(o)) if o.id != cluster.instance_id() => o,
        Ok(_) => return Answer::not_found(&super::sanitize(path)),
        Err(_) => return unavailable(),
    };
    let (parts, body) = req.into_parts();
    let body =
        match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
            Ok(Ok(b)) => b.to_bytes(),
            _ => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    20001,
                    "request body too large or too slow",
                )
            }
        };
    let target = parts
        .uri
        .path_and_query()
        .map_or(path.to_string(), |p| p.as_str().to_string());
    let started = Instant::now();
    match send(cluster, &owner, parts.method, &target, &parts.headers, body).await {
        Ok(answer) => {
            m::cluster_forwarded("ok");
            debug!(
                owner = %owner.id,
                lookup_us = started.duration_since(asked).as_micros() as u64,
                forward_us = started.elapsed().as_micros() as u64,
                "API request forwarded"
            );
            answer
        }
        Err(e) => {
            m::cluster_forwarded("error");
            warn!(owner = %owner.id, api = %owner.api, error = %e, "API request could not be forwarded to the call's instance");
            Answer::error(
                StatusCode::BAD_GATEWAY,
                20502,
                "Bad Gateway: the instance holding this call did not answer",
            )
        }
    }
}

/// The calls of every other live instance for the list request `req` (its filters, the largest
/// page): JSON resources as those instances answer them. An instance that does not answer is
/// left out (and logged): it holds no call that could be controlled anyway.
pub(super) async fn remote_calls(
    cluster: &Cluster,
    req: &Request<Incoming>,
) -> Result<Vec<Value>, Answer> {
    let peers = cluster.peers().await.map_err(|_| unavailable())?;
    if peers.is_empty() {
        return Ok(Vec::new());
    }
    let query: Vec<(String, String)> =
        serde_urlencoded::from_str(req.uri().query().unwrap_or("")).unwrap_or_default();
    let mut keep: Vec<(String, String)> = query
        .into_iter()
        .filter(|(k, _)| matches!(k.as_str(), "Status" | "To" | "From"))
        .collect();
    keep.push(("PageSize".into(), super::PAGE_SIZE_MAX.to_string()));
    keep.push(("Page".into(), "0".into()));
    let target = format!(
        "{}?{}",
        req.uri().path(),
        serde_urlencoded::to_string(&keep).unwrap_or_default()
    );
    let asks = peers.iter().map(|p| {
        send(
            cluster,
            p,
            hyper::Method::GET,
            &target,
            req.headers(),
            Bytes::new(),
        )
    });
    let answers = futures_util::future::join_all(asks).await;
    let mut calls = Vec::new();
    for (peer, a) in peers.iter().zip(answers) {
        match a {
            Ok(a) if a.status == StatusCode::OK => {
                m::cluster_forwarded("ok");
                if let Some(list) = a.body.get("calls").and_then(Value::as_array) {
                    calls.extend(list.iter().cloned());
                }
            }
            Ok(a) => {
                m::cluster_forwarded("error");
                warn!(instance = %peer.id, status = a.status.as_u16(), "calls list: instance refused the forwarded request");
            }
            Err(e) => {
                m::cluster_forwarded("error");
                warn!(instance = %peer.id, error = %e, "calls list: instance did not answer");
            }
        }
    }
    Ok(calls)
}

/// One request to `peer`'s API with the client's credentials; its status and JSON.
async fn send(
    cluster: &Cluster,
    peer: &Peer,
    method: hyper::Method,
    target: &str,
    headers: &hyper::HeaderMap,
    body: Bytes,
) -> Result<Answer, String> {
    tokio::time::timeout(FORWARD_TIMEOUT, async {
        let (mut sender, conn) = super::https_client(
            peer.api.as_str(),
            &peer.server_name,
            Arc::clone(&cluster.forward_tls),
        )
        .await?;
        let mut req = Request::builder()
            .method(method)
            .uri(target)
            .header(hyper::header::HOST, peer.api.as_str())
            .header(FORWARDED_BY, cluster.instance_id());
        for name in [hyper::header::AUTHORIZATION, hyper::header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&name) {
                req = req.header(name, v);
            }
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("request: {e}"))?;
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
        let status = resp.status();
        let bytes = Limited::new(resp.into_body(), MAX_ANSWER)
            .collect()
            .await
            .map_err(|e| format!("answer: {e}"))?
            .to_bytes();
        conn.abort();
        let body: Value =
            serde_json::from_slice(&bytes).map_err(|e| format!("answer is not JSON: {e}"))?;
        Ok(Answer { status, body })
    })
    .await
    .map_err(|_| "timed out".to_string())?
}

/// A call resource's `start_time` (RFC 2822), for ordering merged lists newest first.
pub(super) fn start_time(call: &Value) -> Option<time::OffsetDateTime> {
    call.get("start_time")
        .and_then(Value::as_str)
        .and_then(|s| {
            time::OffsetDateTime::parse(s, &time::format_description::well_known::Rfc2822).ok()
        })
}
