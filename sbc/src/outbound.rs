//! Outbound calls through a termination trunk (`[[trunks]]`, docs/outbound.md): the shell around
//! the sans-IO [`UacCall`]. The API (`POST .../Calls.json`) checks a request with [`create`]
//! (trunk policy, TwiML, agent allow-list, CPS pacer) before any SIP goes out; [`run`] then waits
//! for the call's pacer slot, resolves the trunk (RFC 3263), opens TLS to it, sends the INVITE
//! with an SDES offer, retries once with digest credentials, and on the answer checks the SDP
//! against the offer (`SdesOffer::accept_answer`: an answer without an acceptable crypto line is
//! ACKed, sent BYE and the call fails; media never flows in the clear). An answered call is
//! handed to the same media loop as an inbound call (`call::Call::run_answered`): SRTP bridge,
//! agent WebSocket, audit record, API hang-up.
//!
//! Where sbc connects is decided by configuration only: the trunk's URI, and an agent URL whose
//! scheme, host and port equal those of one of `[agent] routes`' URLs (docs/outbound.md). Nothing
//! the API caller sends widens that.
//!
//! The trunk's connection is routed by `dispatch` like a carrier's, under the name
//! `trunk:<name>` (a carrier of that name cannot exist: carrier names have no `:`), so
//! responses and in-dialog requests from the trunk reach the call by that name and Call-ID.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::api::registry::{CallEntry, CallStatus};
use crate::audit::{CallRecord, Decision, Direction, OutboundAudit};
use crate::call::CallInput;
use crate::config::{AgentTarget, CallbackEvent, CarrierConfig, StatusCallback, TrunkConfig};
use crate::metrics as m;
use crate::shared::{CarrierState, Shared};
use crate::sip::digest::Credentials;
use crate::sip::uac::{Dial, SdesOffer, TwilioStatus, UacCall, UacEvent};
use crate::sip::SipMessage;
use crate::trunk::{Pacer, Refusal};

/// Deadline of the trunk's DNS resolution.
const RESOLVE_DEADLINE: Duration = Duration::from_secs(5);

/// What the API asked for, kept for the agent's `start`, status callbacks and the registry.
#[derive(Clone, Debug)]
pub struct OutboundInfo {
    pub call_sid: String,
    pub account: String,
    pub trunk: String,
    pub from: String,
    pub to: String,
    /// The TwiML `<Stream url>`, already checked against the allow-list.
    pub stream_url: String,
    /// `<Parameter>`s: the agent's `customParameters`.
    pub parameters: Vec<(String, String)>,
    /// A configured status callback the request named, with the events it asked for.
    pub callback: Option<StatusCallback>,
    callback_seq: Arc<AtomicU32>,
}

impl OutboundInfo {
    /// Queues the status callback for `event` if the request asked for it; never waits.
    pub(crate) fn status_callback(
        &self,
        shared: &Shared,
        event: CallbackEvent,
        call_status: &str,
        duration_secs: Option<u64>,
    ) {
        let Some(cb) = self.callback.as_ref().filter(|c| c.events.contains(&event)) else {
            return;
        };
        let live = shared.live();
        let (Some(api), Some(tls)) = (live.config.api.as_ref(), live.callback_tls.clone()) else {
            return;
        };
        let Some(acc) = api.accounts.iter().find(|a| a.sid == self.account) else {
            return;
        };
        let seq = self.callback_seq.fetch_add(1, Ordering::Relaxed);
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), self.account.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("CallSid".into(), self.call_sid.clone()),
            ("CallStatus".into(), call_status.into()),
            ("CallbackSource".into(), "call-progress-events".into()),
            ("Called".into(), self.to.clone()),
            ("Caller".into(), self.from.clone()),
            ("Direction".into(), "outbound-api".into()),
            ("From".into(), self.from.clone()),
            ("SequenceNumber".into(), seq.to_string()),
            (
                "Timestamp".into(),
                time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc2822)
                    .unwrap_or_default(),
            ),
            ("To".into(), self.to.clone()),
        ];
        if event == CallbackEvent::Completed {
            let secs = duration_secs.unwrap_or(0);
            params.push(("CallDuration".into(), secs.to_string()));
            params.push(("Duration".into(), secs.div_ceil(60).to_string()));
        }
        shared.callbacks.send(crate::api::callbacks::Delivery {
            callback: cb.clone(),
            token: acc.auth_token.clone(),
            params,
            tls,
        });
    }
}

/// Per-trunk state shared by the API and the call tasks: the CPS pacer and the number of
/// outbound calls up (for `max_concurrent_calls`). One short lock per call created or ended.
#[derive(Default)]
pub struct TrunkTable(Mutex<HashMap<String, TrunkRuntime>>, Mutex<TrunkPeers>);

/// The addresses live outbound calls' trunks resolved to, by trunk: a connection to sbc's SIP
/// listener from one of them may deliver in-dialog requests for that trunk's dialogs (the
/// callee's BYE to sbc's Contact, RFC 3261 §12.2.1.1), even when no carrier's `source_cidrs`
/// admits it (docs/outbound.md, "In-dialog requests on a new connection").
#[derive(Default)]
struct TrunkPeers(HashMap<std::net::IpAddr, HashMap<String, usize>>);

struct TrunkRuntime {
    pacer: Pacer,
    active: u32,
    /// `1 s / max_calls_per_second`.
    interval: Duration,
    /// When the last INVITE went out (or will, for a call waiting for its turn).
    last_invite: Option<Instant>,
}

impl TrunkTable {
    /// Checks the policy and takes a pacer slot and a concurrency slot, atomically.
    fn admit(
        &self,
        trunk: &TrunkConfig,
        account: &str,
        from: &str,
        to: &str,
        now: Instant,
    ) -> Result<Instant, Refusal> {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let t = g.entry(trunk.name.clone()).or_insert_with(|| TrunkRuntime {
            pacer: Pacer::new(trunk.max_calls_per_second, trunk.queue),
            active: 0,
            interval: Duration::from_secs(1) / trunk.max_calls_per_second.get(),
            last_invite: None,
        });
        trunk.policy().check(account, from, to, t.active)?;
        let slot = t.pacer.admit(now)?;
        t.active += 1;
        Ok(slot)
    }

    /// When this call's INVITE may go out: one interval after the previous INVITE. The pacer
    /// slot taken at creation bounds the queue and orders the calls; resolving and connecting
    /// take a varying time after it, so the spacing Twilio counts (INVITEs per second) is
    /// enforced again here, just before sending.
    fn invite_at(&self, trunk: &str, now: Instant) -> Instant {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let Some(t) = g.get_mut(trunk) else {
            return now;
        };
        let at = t.last_invite.map_or(now, |l| (l + t.interval).max(now));
        t.last_invite = Some(at);
        at
    }

    /// Registers the addresses `trunk` resolved to for one call (until [`TrunkTable::forget_peers`]).
    fn add_peers(&self, trunk: &str, addrs: &[std::net::SocketAddr]) {
        let mut g = self.1.lock().unwrap_or_else(|p| p.into_inner());
        for a in addrs {
            let ip = crate::shared::canonical_ip(a.ip());
            *g.0.entry(ip)
                .or_default()
                .entry(trunk.to_string())
                .or_insert(0) += 1;
        }
    }

    fn forget_peers(&self, trunk: &str, addrs: &[std::net::SocketAddr]) {
        let mut g = self.1.lock().unwrap_or_else(|p| p.into_inner());
        for a in addrs {
            let ip = crate::shared::canonical_ip(a.ip());
            if let Some(by_trunk) = g.0.get_mut(&ip) {
                if let Some(n) = by_trunk.get_mut(trunk) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        by_trunk.remove(trunk);
                    }
                }
                if by_trunk.is_empty() {
                    g.0.remove(&ip);
                }
            }
        }
    }

    /// The trunk a live outbound call resolved to `ip` (the first by name when several did).
    pub(crate) fn trunk_at(&self, ip: std::net::IpAddr) -> Option<String> {
        let ip = crate::shared::canonical_ip(ip);
        let g = self.1.lock().unwrap_or_else(|p| p.into_inner());
        g.0.get(&ip).and_then(|t| t.keys().min().cloned())
    }

    fn release(&self, trunk: &str) {
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = g.get_mut(trunk) {
            t.active = t.active.saturating_sub(1);
        }
    }
}

/// A create request as the API parsed it.
pub struct CreateCall {
    pub to: String,
    pub from: String,
    pub timeout: Option<Duration>,
    pub twiml: String,
    /// The CallSid, when the API chose it already (it signed a `Url=` fetch with it).
    pub call_sid: Option<String>,
    pub status_callback: Option<String>,
    pub status_callback_events: Option<String>,
}

/// Why a create request is refused: the HTTP status, Twilio's error code, the message.
#[derive(Debug)]
pub struct CreateError {
    pub status: u16,
    pub code: u32,
    pub message: String,
}

fn err(status: u16, code: u32, message: impl Into<String>) -> CreateError {
    CreateError {
        status,
        code,
        message: message.into(),
    }
}

/// The trunk `account` places calls through: the first whose `account_sids` lists it (or is
/// empty).
fn trunk_for<'a>(trunks: &'a [TrunkConfig], account: &str) -> Option<&'a TrunkConfig> {
    trunks
        .iter()
        .find(|t| t.account_sids.is_empty() || t.account_sids.iter().any(|a| a == account))
}

/// True when `url` is `wss://` with the scheme, host and port of one of the routes' agent URLs.
pub fn agent_url_allowed(routes: &[crate::config::Route], url: &str) -> bool {
    let key = |u: &str| -> Option<(String, u16)> {
        let uri: tokio_tungstenite::tungstenite::http::Uri = u.parse().ok()?;
        if uri.scheme_str() != Some("wss") {
            return None;
        }
        let host = uri.host()?.to_ascii_lowercase();
        Some((host, uri.port_u16().unwrap_or(443)))
    };
    let Some(want) = key(url) else {
        return false;
    };
    routes.iter().any(|r| match &r.target {
        AgentTarget::Url(u) => key(u).as_ref() == Some(&want),
        AgentTarget::Echo => false,
    })
}

/// The trunk `account` places calls through, or why it cannot place any now.
fn usable_trunk<'a>(
    shared: &Shared,
    cfg: &'a crate::config::Config,
    account: &str,
) -> Result<&'a TrunkConfig, CreateError> {
    if shared.draining.load(Ordering::SeqCst) {
        return Err(err(503, 20503, "sbc is shutting down: no new calls"));
    }
    trunk_for(&cfg.trunks, account).ok_or_else(|| {
        if cfg.trunks.is_empty() {
            err(400, 21210, "sbc has no [[trunks]]: it places no calls")
        } else {
            err(
                403,
                20403,
                format!("account {account} may not use any trunk"),
            )
        }
    })
}

/// The checks of [`create`] that need no TwiML: draining, the account's trunk, and the trunk's
/// policy for `from` and `to` (not its concurrency or pacing, which [`create`] takes atomically).
/// The API runs them before it fetches a `Url=` document, so a request refused anyway makes no
/// connection.
pub fn precheck(shared: &Shared, account: &str, from: &str, to: &str) -> Result<(), CreateError> {
    let live = shared.live();
    let trunk = usable_trunk(shared, &live.config, account)?;
    trunk
        .policy()
        .check(account, from, to, 0)
        .map_err(refusal_error)
}

fn refusal_error(r: Refusal) -> CreateError {
    let code = match r.http_status() {
        400 => 21212,
        403 => 21215,
        _ => 20429,
    };
    err(r.http_status(), code, r.to_string())
}

/// Checks a create request and, when it passes, registers the call (`queued`) and starts its
/// task. Nothing goes out on the network before every check passed.
pub fn create(
    shared: &Arc<Shared>,
    account: &str,
    req: CreateCall,
) -> Result<CallEntry, CreateError> {
    let live = shared.live();
    let cfg = &live.config;
    let trunk = usable_trunk(shared, cfg, account)?;
    let stream = crate::api::twiml::parse_stream(&req.twiml).map_err(|m| err(400, 12100, m))?;
    if !agent_url_allowed(&cfg.agent.routes, &stream.url) {
        return Err(err(
            403,
            20403,
            "the <Stream> url's host is not one of the agent URLs in [agent] routes",
        ));
    }
    let callback = match req.status_callback.as_deref() {
        None => None,
        Some(url) => {
            let Some(known) = cfg
                .agent
                .routes
                .iter()
                .filter(|r| r.account_sid.as_deref() == Some(account))
                .filter_map(|r| r.status_callback.as_ref())
                .find(|c| c.url == url)
            else {
                return Err(err(
                    400,
                    21609,
                    "StatusCallback must be one of this account's configured routes' status_callback URLs",
                ));
            };
            let events = parse_events(req.status_callback_events.as_deref())?;
            Some(StatusCallback {
                events,
                ..known.clone()
            })
        }
    };
    let ring_timeout = req.timeout.unwrap_or(trunk.ring_timeout);
    let now = Instant::now();
    let slot = shared
        .trunks
        .admit(trunk, account, &req.from, &req.to, now)
        .map_err(|r| {
            m::outbound_call("refused");
            refusal_error(r)
        })?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let info = OutboundInfo {
        call_sid: req
            .call_sid
            .unwrap_or_else(|| format!("CA{}", crate::call::hex32(&mut rng))),
        account: account.to_string(),
        trunk: trunk.name.clone(),
        from: req.from,
        to: req.to,
        stream_url: stream.url,
        parameters: stream.parameters,
        callback,
        callback_seq: Arc::new(AtomicU32::new(0)),
    };
    let (tx, rx) = mpsc::channel(256);
    let entry = CallEntry {
        sid: info.call_sid.clone(),
        account_sid: Some(account.to_string()),
        alias: None,
        direction: "outbound-api",
        from: info.from.clone(),
        to: info.to.clone(),
        start: time::OffsetDateTime::now_utc(),
        end: None,
        status: CallStatus::Queued,
        end_reason: None,
        transfer_allow: vec![],
        transfer: None,
        mailbox: Some(tx.clone()),
        seq: 0,
    };
    shared.calls.register(entry.clone());
    let span = info_span!("outbound", call_sid = %info.call_sid, trunk = %trunk.name);
    tokio::spawn(
        run(Task {
            shared: Arc::clone(shared),
            trunk: trunk.clone(),
            info,
            tx,
            rx,
            slot,
            ring_timeout,
            created: now,
        })
        .instrument(span),
    );
    shared.calls.get(&entry.sid).ok_or_else(|| {
        // Just registered; only a registry of size 0 forgets it at once.
        err(500, 20500, "call registered and forgotten")
    })
}

fn parse_events(s: Option<&str>) -> Result<Vec<CallbackEvent>, CreateError> {
    let Some(s) = s else {
        return Ok(vec![CallbackEvent::Completed]);
    };
    s.split([' ', ','])
        .filter(|e| !e.is_empty())
        .map(|e| match e {
            "initiated" => Ok(CallbackEvent::Initiated),
            "ringing" => Ok(CallbackEvent::Ringing),
            "answered" => Ok(CallbackEvent::Answered),
            "completed" => Ok(CallbackEvent::Completed),
            other => Err(err(
                400,
                21626,
                format!(
                    "StatusCallbackEvent {:?} is not one of initiated, ringing, answered, completed",
                    other.chars().take(32).collect::<String>()
                ),
            )),
        })
        .collect()
}

struct Task {
    shared: Arc<Shared>,
    trunk: TrunkConfig,
    info: OutboundInfo,
    tx: mpsc::Sender<CallInput>,
    rx: mpsc::Receiver<CallInput>,
    slot: Instant,
    ring_timeout: Duration,
    created: Instant,
}

/// Gives back the trunk's concurrency slot, its registered addresses and the dialog-table entry
/// however the task ends.
struct Release {
    shared: Arc<Shared>,
    trunk: String,
    dialog: Option<(String, String)>,
    /// `[cluster]`: the call's registry entry and account slot (`admission::admit_outbound`).
    cluster_key: Option<String>,
    peers: Vec<std::net::SocketAddr>,
}

impl Drop for Release {
    fn drop(&mut self) {
        m::call_ended();
        m::carrier_call_ended(&crate::admission::outbound_carrier(&self.trunk));
        if let (Some(c), Some(key)) = (&self.shared.cluster, &self.cluster_key) {
            c.release(key);
        }
        self.shared.trunks.release(&self.trunk);
        self.shared.trunks.forget_peers(&self.trunk, &self.peers);
        if let Some((carrier, call_id)) = &self.dialog {
            self.shared.dialogs.unregister(carrier, call_id);
        }
    }
}

/// How a call that never got to media ended.
struct Failure {
    status: TwilioStatus,
    sip_status: Option<u16>,
    reason: String,
}

fn failed(reason: impl Into<String>) -> Failure {
    Failure {
        status: TwilioStatus::Failed,
        sip_status: None,
        reason: reason.into(),
    }
}

/// Runs one outbound call to its end.
async fn run(task: Task) {
    m::call_started();
    m::carrier_call_started(&crate::admission::outbound_carrier(&task.trunk.name));
    let mut release = Release {
        shared: Arc::clone(&task.shared),
        trunk: task.trunk.name.clone(),
        dialog: None,
        cluster_key: None,
        peers: vec![],
    };
    let shared = Arc::clone(&task.shared);
    let info = task.info.clone();
    let mut record = CallRecord {
        call_id: format!("c{}", shared.next_id()),
        direction: Direction::Outbound,
        carrier: format!("trunk:{}", task.trunk.name),
        from: shared.audit.number(&info.from),
        to: shared.audit.number(&info.to),
        received_at: crate::audit::now_rfc3339(),
        outbound: Some(OutboundAudit {
            account: info.account.clone(),
            trunk: task.trunk.name.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    record.agent.target = crate::audit::url_without_secrets(&info.stream_url);
    record.agent.url_host = crate::agent::url_host(&info.stream_url);
    match dial(task, &mut record, &mut release).await {
        Ok(unanswered) => m::outbound_call(unanswered.map_or("completed", metric_status)),
        Err(f) => {
            let status = f.status.as_str();
            info!(status, sip_status = f.sip_status, reason = %f.reason, "outbound call failed");
            if let Some(o) = record.outbound.as_mut() {
                o.final_sip_status = f.sip_status.or(o.final_sip_status);
                o.twilio_status = Some(status.to_string());
            }
            record.decision = Decision {
                outcome: "failed",
                status: f.sip_status.unwrap_or(0),
                reason: f.reason.clone(),
            };
            record.ended_at = Some(crate::audit::now_rfc3339());
            record.end_reason = Some(status.to_string());
            record.end_detail = Some(f.reason.clone());
            shared.audit.write("call.failed", &record);
            shared
                .calls
                .end_with(&info.call_sid, CallStatus::from_twilio(f.status), status);
            info.status_callback(&shared, CallbackEvent::Completed, status, None);
            m::outbound_call(metric_status(f.status));
        }
    }
}

/// The `status` label of `sbc_outbound_calls_total` for an unanswered call.
fn metric_status(s: TwilioStatus) -> &'static str {
    match s {
        TwilioStatus::Busy => "busy",
        TwilioStatus::NoAnswer => "no-answer",
        TwilioStatus::Canceled => "canceled",
        _ => "failed",
    }
}

/// From the pacer slot to the end of the call. `Ok` once the media loop has ended the call,
/// with the Twilio status of an INVITE that failed after early media started.
async fn dial(
    mut task: Task,
    record: &mut CallRecord,
    release: &mut Release,
) -> Result<Option<TwilioStatus>, Failure> {
    let shared = Arc::clone(&task.shared);
    let live = shared.live();
    let cfg = Arc::clone(&live.config);

    // 0. `[cluster]`: registered as this instance's call, and the account's cluster slot.
    crate::admission::admit_outbound(
        &shared,
        &task.info.call_sid,
        &task.trunk.name,
        &task.info.account,
    )
    .await
    .map_err(|r| failed(r.why))?;
    release.cluster_key = Some(crate::cluster::Cluster::dialog_key(
        &crate::admission::outbound_carrier(&task.trunk.name),
        &task.info.call_sid,
    ));

    // 1. The pacer slot; a cancel while queued ends the call here.
    wait_or_cancel(&mut task.rx, task.slot).await?;

    // 2. Where the trunk is.
    let lookup = crate::resolve::HickoryLookup::from_system().map_err(|e| failed(e.to_string()))?;
    let addrs = crate::resolve::resolve(&lookup, &task.trunk.uri, RESOLVE_DEADLINE)
        .await
        .map_err(|e| failed(format!("trunk DNS: {e}")))?;
    let sni = match &task.trunk.uri.host {
        crate::resolve::Host::Name(n) => n.trim_end_matches('.').to_string(),
        crate::resolve::Host::Ip(ip) => ip.to_string(),
    };
    shared.trunks.add_peers(&task.trunk.name, &addrs);
    release.peers = addrs.clone();
    let carrier = trunk_carrier(&shared, &task.trunk);
    let carrier_name = carrier.config.name.clone();

    // 3. TLS to the trunk (verified for its host, as any carrier connection sbc opens).
    let (conn, sip_tls) =
        crate::conn::connect_to(Arc::clone(&shared), Arc::clone(&carrier), sni, addrs)
            .await
            .map_err(|e| failed(format!("trunk TLS: {e}")))?;
    m::tls_handshake(&sip_tls.version, &sip_tls.cipher, "ok");
    record.source = conn.peer.to_string();
    record.sip_tls = sip_tls;
    if let Some(o) = record.outbound.as_mut() {
        o.trunk_address = Some(conn.peer.to_string());
    }

    // 4. The INVITE with our SDES offer.
    let media = shared
        .ports
        .allocate()
        .ok_or_else(|| failed("media port range exhausted"))?;
    let mut rng = rand::rngs::StdRng::from_entropy();
    let session = crate::call::session_id(&record.call_id);
    let offer = SdesOffer::new(cfg.media.advertise_address, media.port, session, &mut rng);
    record.srtp.offered = offer
        .keys
        .iter()
        .map(|k| k.suite.name().to_string())
        .collect();
    let password = task
        .trunk
        .load_password()
        .map_err(|e| failed(format!("trunk password: {e}")))?;
    let host = match task.trunk.uri.port {
        Some(p) => format!("{}:{p}", task.trunk.uri.host),
        None => task.trunk.uri.host.to_string(),
    };
    let params = if task.trunk.uri.sips {
        ""
    } else {
        ";transport=tls"
    };
    let scheme = if task.trunk.uri.sips { "sips" } else { "sip" };
    let dial = Dial {
        request_uri: format!("{scheme}:{}@{host}{params}", task.info.to),
        from: format!("<{scheme}:{}@{host}>", task.info.from),
        to: format!("<{scheme}:{}@{host}>", task.info.to),
        sdp: offer.sdp.clone(),
        credentials: password
            .zip(task.trunk.credentials.as_ref())
            .map(|(password, c)| Credentials {
                username: c.username.clone(),
                password,
            }),
        ring_timeout: task.ring_timeout,
        early_media: task.trunk.early_media,
        headers: vec![],
    };
    let slot = shared.trunks.invite_at(&task.trunk.name, Instant::now());
    wait_or_cancel(&mut task.rx, slot).await?;
    // `[cluster]`: the trunk's rate counts INVITEs from every instance; its turn in Redis.
    let per_second = task.trunk.max_calls_per_second;
    if let Some(turn) =
        crate::admission::cluster_invite_turn(&shared, &task.trunk.name, per_second).await
    {
        wait_or_cancel(&mut task.rx, turn).await?;
    }
    let invite_at = Instant::now();
    let mut uac = UacCall::new(invite_at, dial, shared.uas.clone(), &mut rng);
    let sip_call_id = uac.call_id().to_string();
    record.sip_call_id = sip_call_id.clone();
    shared
        .dialogs
        .insert(&carrier_name, &sip_call_id, task.tx.clone());
    release.dialog = Some((carrier_name.clone(), sip_call_id.clone()));
    let mut invite = None;
    while let Some(msg) = uac.poll_transmit() {
        if let (None, SipMessage::Request(r)) = (&invite, &msg) {
            invite = Some(r.clone());
        }
        conn.send(&msg);
    }
    // UacCall::new queues the INVITE: it is the first message.
    let invite = invite.ok_or_else(|| failed("the UAC core queued no INVITE"))?;
    info!(%sip_call_id, peer = %conn.peer, "INVITE sent to the trunk");
    // Twilio's `initiated`: the call request went to the network (the resource stays `queued`
    // until it rings; a call that fails before its INVITE never reports `initiated`).
    task.info
        .status_callback(&shared, CallbackEvent::Initiated, "initiated", None);

    // 5. Until the answer or the end. Bounded by the core's timers (Timer B, the ring
    // timeout, the CANCEL timeout); the hard stop is a backstop.
    let hard_stop = invite_at + task.ring_timeout + shared.uas.t1 * 64 * 2 + Duration::from_secs(5);
    let mut rung = false;
    // With `early_media`, a 183 with SDP is the answer the media starts on (`early`); the core
    // checks that a later 2xx repeats it (RFC 3264 §5: one answer per offer).
    let mut early = false;
    let answer = loop {
        let mut answer = None;
        let mut failure = None;
        while let Some(ev) = uac.poll_event() {
            let ringing = matches!(ev, UacEvent::Ringing | UacEvent::EarlyMedia { .. });
            if ringing && !rung {
                rung = true;
                shared
                    .calls
                    .update(&task.info.call_sid, |e| e.status = CallStatus::Ringing);
                task.info
                    .status_callback(&shared, CallbackEvent::Ringing, "ringing", None);
            }
            match ev {
                UacEvent::Ringing => {}
                UacEvent::EarlyMedia { sdp } if answer.is_none() => {
                    info!("early media: the 183's SDP starts the call's media");
                    early = true;
                    answer = Some(sdp);
                }
                UacEvent::Answered { sdp } if answer.is_none() => answer = Some(sdp),
                UacEvent::Failed {
                    status,
                    reason,
                    twilio_status,
                } => {
                    failure = Some(Failure {
                        status: twilio_status,
                        sip_status: Some(status),
                        reason: format!("{status} {reason}"),
                    })
                }
                UacEvent::Terminated if failure.is_none() && answer.is_none() => {
                    failure = Some(failed("dialog terminated before answer"))
                }
                other => debug!(event = ?other, "UAC event"),
            }
        }
        while let Some(msg) = uac.poll_transmit() {
            conn.send(&msg);
        }
        if let Some(o) = record.outbound.as_mut() {
            o.ring_ms = Some(invite_at.elapsed().as_millis() as u64);
        }
        if let Some(f) = failure {
            finish_sip(&shared, &mut uac, &conn, &mut task.rx, hard_stop).await;
            return Err(f);
        }
        if let Some(sdp) = answer {
            break sdp;
        }
        if Instant::now() >= hard_stop {
            return Err(failed("no final response in time"));
        }
        let deadline = uac.poll_timeout().unwrap_or(hard_stop).min(hard_stop);
        tokio::select! {
            input = task.rx.recv() => {
                let now = Instant::now();
                match input {
                    Some(CallInput::Response(r)) if uac.matches_response(&r) => uac.handle_response(now, *r),
                    Some(CallInput::Request(r, c)) if uac.matches_request(&r) => {
                        let _ = c;
                        uac.handle_request(now, *r)
                    }
                    // Same Call-ID, not this dialog (or none yet): 481 where it came from,
                    // the call unchanged.
                    Some(CallInput::Request(r, c)) => refuse_unmatched(&shared, &r, &c),
                    Some(CallInput::Hangup(_)) => uac.cancel(now),
                    Some(other) => debug!(input = ?other, "input before answer ignored"),
                    None => return Err(failed("mailbox closed")),
                }
            }
            _ = tokio::time::sleep_until(deadline.into()) => uac.handle_timeout(Instant::now()),
        }
    };
    // The status the media started on: 183 for early media, else 200. With early media the
    // final response (2xx or a failure) reaches the media loop's core, which records it
    // (`call::Call::take_outcomes`): the call stays `ringing` until then.
    let answer_status = if early { 183 } else { 200 };
    if let Some(o) = record.outbound.as_mut() {
        o.final_sip_status = (!early).then_some(answer_status);
    }

    // 6. The answer: SRTP with a crypto line we offered, or BYE (never media in the clear).
    let negotiated = offer
        .accept_answer(&answer)
        .map_err(|e| e.to_string())
        .and_then(|(ours, theirs)| {
            // The answer, read as an offer by the same policy code as an inbound call's,
            // restricted to the suite the trunk accepted and with our offered key as ours:
            // remote address, codec, telephone-event and the trunk's key come out checked.
            let sd = sdp::SessionDescription::parse(&answer).map_err(|e| e.to_string())?;
            let mut policy = crate::call::answer_policy(
                &cfg,
                media.port,
                session,
                Some((ours.suite.clone(), ours.key_salt.clone())),
            );
            policy.suites = vec![theirs.suite.clone()];
            sdp::answer_offer(&sd, &policy, &mut rng)
                .map(|a| a.negotiated)
                .map_err(|e| e.to_string())
        });
    let negotiated = match negotiated {
        Ok(n) => n,
        Err(why) => {
            warn!(reason = %why, "trunk's answer has no usable SRTP: BYE");
            uac.hangup(Instant::now());
            finish_sip(&shared, &mut uac, &conn, &mut task.rx, hard_stop).await;
            return Err(Failure {
                status: TwilioStatus::Failed,
                sip_status: Some(answer_status),
                reason: format!("unusable answer: {why}"),
            });
        }
    };
    let suite = negotiated.suite.name().to_string();
    record.srtp.chosen_inbound = Some(suite.clone());
    record.srtp.chosen_outbound = Some(suite);

    // 7. The agent. The trunk's in-dialog requests wait in the mailbox meanwhile (bounded by
    // `[agent] connect_timeout`).
    let started = Instant::now();
    let agent = crate::agent::connect(
        &task.info.stream_url,
        Arc::clone(&live.agent_tls),
        cfg.agent.connect_timeout,
        cfg.agent.send_buffer_bytes,
    )
    .await;
    m::agent_connect(started.elapsed());
    record.agent.connect_ms = Some(started.elapsed().as_millis() as u64);
    let agent = match agent {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "agent unreachable after answer: BYE");
            uac.hangup(Instant::now());
            finish_sip(&shared, &mut uac, &conn, &mut task.rx, hard_stop).await;
            return Err(Failure {
                status: TwilioStatus::Failed,
                sip_status: Some(answer_status),
                reason: format!("agent {}: {e}", e.kind()),
            });
        }
    };
    record.agent.tls_version = Some(agent.tls_version.clone());
    record.agent.cipher = Some(agent.cipher.clone());
    record.agent.kx_group = agent.kx_group.clone();
    record.agent.mtls = agent.mtls;
    record.agent.tls_resumed = agent.resumed;
    if let Some(o) = record.outbound.as_mut() {
        o.twilio_status = Some("completed".into());
    }

    // 8. The media loop inbound calls use. After early media it may still end unanswered.
    let unanswered = crate::call::run_answered(crate::call::Answered {
        shared: Arc::clone(&shared),
        carrier,
        rx: task.rx,
        conn,
        uac: Box::new(uac),
        invite,
        record: std::mem::take(record),
        started: task.created,
        info: task.info,
        media,
        negotiated,
        agent,
    })
    .await;
    Ok(unanswered)
}

/// The trunk as a carrier, named `trunk:<name>`: the name of its connections in `dispatch` (the
/// one sbc opens, and one from an address the trunk resolved to) and of its dialogs.
pub(crate) fn trunk_carrier(shared: &Shared, trunk: &TrunkConfig) -> Arc<CarrierState> {
    let name = format!("trunk:{}", trunk.name);
    Arc::new(CarrierState {
        config: CarrierConfig {
            name: name.clone(),
            sources: vec![],
            certificate_names: vec![],
            max_concurrent_calls: trunk.max_concurrent_calls,
            max_calls_per_second: trunk.max_calls_per_second.get(),
            twilio: false,
            twilio_account_sids: vec![],
        },
        counters: shared.counters.get(&name),
    })
}

/// The trunk-as-carrier of a connection to sbc's listener from `ip`, when no carrier admits `ip`
/// but a live outbound call's trunk resolved to it: such a connection may deliver in-dialog
/// requests for that trunk's dialogs only (a new INVITE on it is refused by admission).
pub(crate) fn trunk_peer(shared: &Shared, ip: std::net::IpAddr) -> Option<Arc<CarrierState>> {
    let name = shared.trunks.trunk_at(ip)?;
    let live = shared.live();
    let trunk = live.config.trunks.iter().find(|t| t.name == name)?;
    Some(trunk_carrier(shared, trunk))
}

/// Sleeps until `at`; an API cancel (or a closed mailbox) meanwhile ends the call `canceled`.
async fn wait_or_cancel(rx: &mut mpsc::Receiver<CallInput>, at: Instant) -> Result<(), Failure> {
    let wait = tokio::time::sleep_until(at.into());
    tokio::pin!(wait);
    loop {
        tokio::select! {
            _ = &mut wait => return Ok(()),
            input = rx.recv() => match input {
                Some(CallInput::Hangup(_)) | None => {
                    return Err(Failure {
                        status: TwilioStatus::Canceled,
                        sip_status: None,
                        reason: "canceled before the INVITE".into(),
                    })
                }
                Some(other) => debug!(input = ?other, "input before the INVITE ignored"),
            },
        }
    }
}

/// Answers a request that names this call's Call-ID but not its dialog: 481 (nothing for an
/// ACK), on the connection it came on.
fn refuse_unmatched(shared: &Shared, req: &crate::sip::Request, conn: &crate::conn::ConnHandle) {
    debug!(method = %req.method, peer = %conn.peer, "request matches no dialog of this call");
    if let Some((status, reason)) = crate::sip::UasCall::unmatched_status(req) {
        let resp = crate::sip::stateless_response(
            req,
            status,
            reason,
            &shared.uas,
            None,
            &mut rand::thread_rng(),
        );
        conn.send(&SipMessage::Response(resp));
    }
}

/// Sends what the core still has (ACK, CANCEL, BYE) and absorbs its responses until it is
/// terminated or `hard_stop`.
async fn finish_sip(
    shared: &Shared,
    uac: &mut UacCall,
    conn: &crate::conn::ConnHandle,
    rx: &mut mpsc::Receiver<CallInput>,
    hard_stop: Instant,
) {
    use crate::sip::uac::UacState;
    loop {
        while let Some(msg) = uac.poll_transmit() {
            conn.send(&msg);
        }
        while uac.poll_event().is_some() {}
        if uac.state() == UacState::Terminated || Instant::now() >= hard_stop {
            return;
        }
        let deadline = uac.poll_timeout().unwrap_or(hard_stop).min(hard_stop);
        tokio::select! {
            input = rx.recv() => match input {
                Some(CallInput::Response(r)) if uac.matches_response(&r) => uac.handle_response(Instant::now(), *r),
                Some(CallInput::Request(r, _)) if uac.matches_request(&r) => uac.handle_request(Instant::now(), *r),
                Some(CallInput::Request(r, c)) => refuse_unmatched(shared, &r, &c),
                Some(_) => {}
                None => return,
            },
            _ = tokio::time::sleep_until(deadline.into()) => uac.handle_timeout(Instant::now()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trunk(cps: u32, queue: usize, max: u32) -> TrunkConfig {
        TrunkConfig {
            name: "t".into(),
            uri: crate::resolve::TerminationUri::parse("sip:127.0.0.1:5061;transport=tls").unwrap(),
            credentials: Some(crate::config::TrunkCredentials {
                username: "u".into(),
                password_file: "/nonexistent".into(),
            }),
            account_sids: vec!["AC1".into()],
            caller_ids: vec![crate::trunk::NumberPattern::parse("+14155550100").unwrap()],
            allow_destinations: vec!["+1".into()],
            deny_destinations: vec!["+1900".into()],
            max_calls_per_second: std::num::NonZeroU32::new(cps).unwrap(),
            queue,
            max_concurrent_calls: max,
            early_media: false,
            ring_timeout: Duration::from_secs(60),
        }
    }

    #[test]
    fn trunk_table_checks_policy_paces_and_counts() {
        let table = TrunkTable::default();
        let t = trunk(2, 1, 2);
        let now = Instant::now();
        let ok = |to: &str| table.admit(&t, "AC1", "+14155550100", to, now);
        assert!(matches!(
            table.admit(&t, "AC2", "+14155550100", "+15105550123", now),
            Err(Refusal::Account(_))
        ));
        assert!(matches!(
            table.admit(&t, "AC1", "+14155550199", "+15105550123", now),
            Err(Refusal::CallerId(_))
        ));
        assert!(matches!(ok("+19005550100"), Err(Refusal::Destination(_))));
        assert_eq!(ok("+15105550123").unwrap(), now);
        assert_eq!(
            ok("+15105550124").unwrap(),
            now + Duration::from_millis(500)
        );
        // The concurrency bound (2 up) comes before the queue.
        assert!(matches!(ok("+15105550125"), Err(Refusal::Concurrency(2))));
        table.release("t");
        // One waits already: the queue of one is full.
        assert!(matches!(ok("+15105550125"), Err(Refusal::QueueFull(1))));
        // INVITEs are spaced from the previous INVITE, whenever each call got there.
        let a = table.invite_at("t", now + Duration::from_millis(300));
        let b = table.invite_at("t", now + Duration::from_millis(400));
        assert_eq!(b - a, Duration::from_millis(500));
        let c = table.invite_at("t", now + Duration::from_secs(5));
        assert_eq!(c, now + Duration::from_secs(5));
    }

    #[test]
    fn trunk_addresses_count_per_call() {
        let table = TrunkTable::default();
        let a: std::net::SocketAddr = "192.0.2.10:5061".parse().unwrap();
        let b: std::net::SocketAddr = "[::ffff:192.0.2.11]:5061".parse().unwrap();
        table.add_peers("t", &[a, b]);
        table.add_peers("t", &[a]);
        assert_eq!(table.trunk_at(a.ip()).as_deref(), Some("t"));
        // IPv4-mapped IPv6 compares as IPv4.
        assert_eq!(
            table.trunk_at("192.0.2.11".parse().unwrap()).as_deref(),
            Some("t")
        );
        assert_eq!(table.trunk_at("192.0.2.12".parse().unwrap()), None);
        table.forget_peers("t", &[a, b]);
        // The second call still holds `a`.
        assert_eq!(table.trunk_at(a.ip()).as_deref(), Some("t"));
        assert_eq!(table.trunk_at("192.0.2.11".parse().unwrap()), None);
        table.forget_peers("t", &[a]);
        assert_eq!(table.trunk_at(a.ip()), None);
    }

    #[test]
    fn callback_events() {
        assert_eq!(parse_events(None).unwrap(), vec![CallbackEvent::Completed]);
        assert_eq!(
            parse_events(Some("initiated ringing,answered completed")).unwrap(),
            vec![
                CallbackEvent::Initiated,
                CallbackEvent::Ringing,
                CallbackEvent::Answered,
                CallbackEvent::Completed
            ]
        );
        assert_eq!(parse_events(Some("bogus")).unwrap_err().status, 400);
    }

    #[test]
    fn agent_urls_must_match_a_route() {
        let route = |u: &str| crate::config::Route {
            matcher: crate::config::RouteMatch::Default,
            target: AgentTarget::Url(u.into()),
            account_sid: None,
            transfer_allow: vec![],
            status_callback: None,
        };
        let routes = vec![
            route("wss://agent.example.com/ws"),
            route("wss://b.example:8443/x"),
        ];
        assert!(agent_url_allowed(
            &routes,
            "wss://agent.example.com/other?x=1"
        ));
        assert!(agent_url_allowed(&routes, "wss://AGENT.example.com:443/"));
        assert!(agent_url_allowed(&routes, "wss://b.example:8443/y"));
        assert!(!agent_url_allowed(&routes, "wss://b.example/y"));
        assert!(!agent_url_allowed(&routes, "ws://agent.example.com/ws"));
        assert!(!agent_url_allowed(
            &routes,
            "wss://agent.example.com.evil.net/ws"
        ));
        assert!(!agent_url_allowed(
            &routes,
            "wss://evil.net/ws#@agent.example.com"
        ));
        assert!(!agent_url_allowed(&[], "wss://agent.example.com/ws"));
    }
}
