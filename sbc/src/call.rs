//! One tokio task per call. It owns the call's `UasCall` (SIP dialog), its UDP sockets, its
//! `srtp_bridge::Bridge` and its agent WebSocket, and reaches nothing shared on the media path.
//! Other tasks reach it through its mailbox (`CallInput`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::RngCore;
use srtp_bridge::{Bridge, BridgeConfig, BridgeEvent, Component, MediaParams, StreamInfo};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message;
use tracing::{debug, error, info, info_span, trace, warn, Instrument};

use crate::agent::{self, AgentConn};
use crate::audit::{CallRecord, Decision, SipTls};
use crate::config::{AgentTarget, CodecName, RouteMatch};
use crate::conn::ConnHandle;
use crate::metrics as m;
use crate::ports::MediaSockets;
use crate::shared::{CarrierState, Live, Shared};
use crate::sip::{
    CallEvent, CallState, HangupCause, Request, RequestMatch, Response, SipMessage, UasCall,
};

/// What other tasks send to a call.
#[derive(Debug)]
pub enum CallInput {
    /// A request for this Call-ID and the connection it came on. Boxed, as is the response:
    /// a message is ~160 bytes and every slot of the call's mailbox is as large as its largest
    /// variant, so boxing the two makes each slot 72 bytes instead of 168 (3 KiB less per
    /// 32-slot block, one block per call).
    Request(Box<Request>, ConnHandle),
    /// A response to a request the call sent.
    Response(Box<Response>),
    /// End the call from our side (ops, shutdown).
    Hangup(HangupCause),
    /// A new connection to the carrier that sbc opened for this call: use it from now on.
    Adopt(ConnHandle),
    /// Blind transfer (RFC 3515) to `tel:+E164` or a SIP URI, already checked against the
    /// route's `transfer_allow` (API `<Dial>`).
    Transfer(String),
}

/// Everything a new call task starts with.
pub struct CallSetup {
    pub shared: Arc<Shared>,
    pub carrier: Arc<CarrierState>,
    pub invite: Request,
    pub conn: ConnHandle,
    pub sip_tls: SipTls,
    pub sip_call_id: String,
    pub rx: mpsc::Receiver<CallInput>,
    pub received: Instant,
}

/// An outbound call at its answer: what `outbound.rs` hands to the media loop.
pub(crate) struct Answered {
    pub shared: Arc<Shared>,
    /// The trunk as a carrier: its name keys the dialog table, its TLS client config verified it.
    pub carrier: Arc<CarrierState>,
    pub rx: mpsc::Receiver<CallInput>,
    pub conn: ConnHandle,
    pub uac: Box<crate::sip::uac::UacCall>,
    /// The INVITE sbc sent.
    pub invite: Request,
    pub record: CallRecord,
    /// When the API created the call.
    pub started: Instant,
    pub info: crate::outbound::OutboundInfo,
    pub media: MediaSockets,
    pub negotiated: sdp::Negotiated,
    pub agent: AgentConn,
}

/// Runs an outbound call the trunk answered (`outbound.rs`) with the inbound calls' media loop.
/// Returns the call's final Twilio status when its INVITE failed after early media started
/// (`None`: it was answered).
pub(crate) async fn run_answered(a: Answered) -> Option<crate::sip::uac::TwilioStatus> {
    Call::run_answered(a).await
}

/// A refusal of the initial INVITE.
struct Refuse {
    status: u16,
    reason: &'static str,
    warning: Option<String>,
    retry_after: Option<u32>,
    /// For the audit record and logs.
    why: String,
}

/// The agent side once connected.
enum AgentSide {
    Ws(Box<AgentConn>),
    Echo,
}

/// Runs a call to its end. Releases the admission slots and the Call-ID on exit.
///
/// This future is the call task's and lives as long as the call, so it holds only what the
/// whole call needs (issue 16, RSS per call): the setup comes boxed (an async fn's arguments
/// stay in its future for as long as it runs) and is taken apart by [`start`], a plain fn, whose
/// locals are never part of the future. 4,112 bytes before, see `call_task_future_stays_small`.
pub async fn run(setup: Box<CallSetup>) {
    let (call, span, _release) = start(*setup);
    call.run().instrument(span).await;
}

/// The call's id, span, `Call` and release guard, from its setup.
fn start(setup: CallSetup) -> (Box<Call>, tracing::Span, Release) {
    let shared = Arc::clone(&setup.shared);
    let carrier = Arc::clone(&setup.carrier);
    let sip_call_id = setup.sip_call_id.clone();
    let call_id = format!("c{}", shared.next_id());
    let span = info_span!("call", id = %call_id, sip_call_id = %sip_call_id, carrier = %carrier.config.name);
    m::call_started();
    m::carrier_call_started(&carrier.config.name);
    // Released on every exit, a panic of the call task included (tokio catches it per task;
    // a panic in `Call::new` drops it here).
    let release = Release {
        shared,
        carrier,
        sip_call_id,
    };
    (Box::new(Call::new(setup, call_id)), span, release)
}

/// Gives back the admission slots and the Call-ID when a call task ends, however it ends.
struct Release {
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    sip_call_id: String,
}

impl Drop for Release {
    fn drop(&mut self) {
        m::call_ended();
        m::carrier_call_ended(&self.carrier.config.name);
        self.shared
            .dialogs
            .unregister(&self.carrier.config.name, &self.sip_call_id);
        self.carrier.active().fetch_sub(1, Ordering::SeqCst);
        self.shared.active_calls.fetch_sub(1, Ordering::SeqCst);
        if let Some(c) = &self.shared.cluster {
            c.release(&crate::cluster::Cluster::dialog_key(
                &self.carrier.config.name,
                &self.sip_call_id,
            ));
        }
    }
}

struct Call {
    shared: Arc<Shared>,
    /// The configuration this call started with (a reload does not change a call in progress).
    live: Arc<Live>,
    carrier: Arc<CarrierState>,
    rx: mpsc::Receiver<CallInput>,
    conn: ConnHandle,
    /// The SIP core: UAS for a call the carrier placed, UAC for one sbc placed.
    sip: Leg,
    /// The carrier's INVITE (inbound, shared with the `UasCall`), or ours (outbound).
    invite: Arc<Request>,
    record: CallRecord,
    received: Instant,
    /// The call's random source (SRTP keys, SSRC, CallSid, streamSid): a 32-byte seed, not a
    /// 320-byte `StdRng` (issue 16; `sip::CallRng`).
    rng: crate::sip::CallRng,
    end_reason: Option<&'static str>,
    end_detail: Option<String>,
    /// The route the call took (owning account, transfer allow-list).
    route: Option<crate::config::Route>,
    /// The CallSid the agent and the API know the call by, once answered.
    call_sid: Option<String>,
    /// The agent's streamSid, once answered.
    stream_sid: String,
    /// The transfer in progress: its target.
    transfer_to: Option<String>,
    /// sbc's own messages for the agent (transfer results), sent with the bridge's.
    agent_notes: std::collections::VecDeque<String>,
    /// Status callbacks sent so far (`SequenceNumber`).
    callback_seq: u32,
    /// When the call was answered (for `CallDuration`).
    answered_at: Option<Instant>,
    /// What the API asked for, when sbc placed the call (`outbound.rs`). Boxed: `None` for
    /// every inbound call, and `OutboundInfo` is 280 bytes (issue 16).
    outbound: Option<Box<crate::outbound::OutboundInfo>>,
    /// An outbound call's final Twilio status when its INVITE failed after early media started
    /// (`busy`, `no-answer`, `canceled`, `failed`); `None`: answered (or inbound).
    outbound_failed: Option<crate::sip::uac::TwilioStatus>,
}

impl Call {
    fn new(setup: CallSetup, call_id: String) -> Call {
        let mut rng = crate::sip::CallRng::from_entropy();
        let now = Instant::now();
        let shared = setup.shared;
        let invite = Arc::new(setup.invite);
        let uas = rng.with(|r| UasCall::new(now, Arc::clone(&invite), shared.uas.clone(), r));
        let record = CallRecord {
            call_id,
            sip_call_id: setup.sip_call_id,
            carrier: setup.carrier.config.name.clone(),
            source: setup.conn.peer.to_string(),
            sip_tls: setup.sip_tls,
            from: shared
                .audit
                .number(&invite.caller_number().unwrap_or_default()),
            to: shared
                .audit
                .number(&invite.called_number().unwrap_or_default()),
            received_at: crate::audit::now_rfc3339(),
            ..Default::default()
        };
        Call {
            live: shared.live(),
            shared,
            carrier: setup.carrier,
            rx: setup.rx,
            conn: setup.conn,
            sip: Leg::Uas(uas),
            invite,
            record,
            received: setup.received,
            rng,
            end_reason: None,
            end_detail: None,
            route: None,
            call_sid: None,
            stream_sid: String::new(),
            transfer_to: None,
            agent_notes: Default::default(),
            callback_seq: 0,
            answered_at: None,
            outbound: None,
            outbound_failed: None,
        }
    }

    /// An outbound call the trunk answered (`outbound.rs`), run by the same media loop as an
    /// inbound call.
    async fn run_answered(a: Answered) -> Option<crate::sip::uac::TwilioStatus> {
        let live = a.shared.live();
        let call = Box::new(Call {
            live,
            shared: a.shared,
            carrier: a.carrier,
            rx: a.rx,
            conn: a.conn,
            sip: Leg::Uac(Box::new(UacLeg {
                core: *a.uac,
                outcomes: Default::default(),
            })),
            invite: Arc::new(a.invite),
            record: a.record,
            received: a.started,
            rng: crate::sip::CallRng::from_entropy(),
            end_reason: None,
            end_detail: None,
            route: None,
            call_sid: Some(a.info.call_sid.clone()),
            stream_sid: String::new(),
            transfer_to: None,
            agent_notes: Default::default(),
            callback_seq: 0,
            answered_at: None,
            outbound: Some(Box::new(a.info)),
            outbound_failed: None,
        });
        call.active(
            a.media,
            a.negotiated,
            AgentSide::Ws(Box::new(a.agent)),
            Bytes::new(),
        )
        .await
    }

    async fn run(mut self: Box<Self>) {
        self.flush_sip();
        if self.sip.state() != CallState::Proceeding {
            // The core answered the INVITE itself (422 Session Interval Too Small, RFC 4028).
            info!("INVITE refused by the SIP core (session interval too small)");
            self.record.decision = Decision {
                outcome: "refused",
                status: 422,
                reason: "session interval too small".into(),
            };
            self.shared.audit.write("call.refused", &self.record);
            m::call_outcome("refused");
            self.finish_without_media().await;
            return;
        }
        match self.setup().await {
            Ok(Some((media, negotiated, agent, answer_sdp))) => {
                self.active(media, negotiated, agent, answer_sdp).await;
            }
            Ok(None) => {
                // Cancelled or the carrier went away during setup.
                self.status_callback(crate::config::CallbackEvent::Completed, "canceled");
                self.finish_without_media().await;
            }
            Err(refuse) => {
                info!(status = refuse.status, why = %refuse.why, "call refused");
                self.sip.reject(
                    Instant::now(),
                    refuse.status,
                    refuse.reason,
                    refuse.warning.as_deref(),
                    refuse.retry_after,
                );
                self.flush_sip();
                self.record.decision = Decision {
                    outcome: "refused",
                    status: refuse.status,
                    reason: refuse.why,
                };
                self.shared.audit.write("call.refused", &self.record);
                m::call_outcome("refused");
                self.status_callback(crate::config::CallbackEvent::Completed, "failed");
                self.finish_without_media().await;
            }
        }
    }

    /// Sends everything the SIP core queued, on the dialog's connection.
    fn flush_sip(&mut self) {
        while let Some(msg) = self.sip.poll_transmit() {
            if self.conn.send(&msg) {
                continue;
            }
            match msg {
                // A request we originate (BYE) goes on a new connection to the carrier.
                SipMessage::Request(req) => self.send_on_new_connection(req),
                // Responses belong to the connection the request came on (RFC 3261 §18.2.2);
                // the carrier retransmits its request on a new one if it cares.
                SipMessage::Response(r) => {
                    debug!(
                        status = r.status,
                        "carrier connection closed: response not sent"
                    )
                }
            }
        }
    }

    /// Opens a TLS connection to the request's target (first Route, else the Request-URI) and
    /// sends it there; the call adopts the connection for what follows.
    fn send_on_new_connection(&self, req: Request) {
        let target = req
            .headers
            .get("Route")
            .and_then(uri_target)
            .or_else(|| uri_target(&req.uri));
        let Some((host, port)) = target else {
            warn!(uri = %req.uri, "no usable target for a request on a new connection");
            return;
        };
        let shared = Arc::clone(&self.shared);
        let carrier = Arc::clone(&self.carrier);
        let sip_call_id = self.record.sip_call_id.clone();
        let carrier_name = self.carrier.config.name.clone();
        info!(%host, port, "carrier connection gone: opening a new one");
        tokio::spawn(
            async move {
                match crate::conn::connect_outbound(
                    Arc::clone(&shared),
                    carrier,
                    host.clone(),
                    port,
                )
                .await
                {
                    Ok(handle) => {
                        handle.send(&SipMessage::Request(req));
                        if let Some(tx) = shared.dialogs.lookup(&carrier_name, &sip_call_id) {
                            let _ = tx.try_send(CallInput::Adopt(handle));
                        }
                    }
                    Err(e) => {
                        warn!(%host, port, error = %e, method = ?req.method, "cannot reach the carrier: request not delivered");
                        // RFC 3261 §8.1.3.1: a transport failure is a 503 for the request, so
                        // the call ends now instead of waiting out Timer F for a response
                        // that cannot come.
                        if let Some(tx) = shared.dialogs.lookup(&carrier_name, &sip_call_id) {
                            let resp = crate::sip::stateless_response(
                                &req,
                                503,
                                "Service Unavailable",
                                &shared.uas,
                                None,
                                &mut rand::thread_rng(),
                            );
                            let _ = tx.try_send(CallInput::Response(Box::new(resp)));
                        }
                    }
                }
            }
            .in_current_span(),
        );
    }

    fn on_input(&mut self, input: CallInput) {
        let now = Instant::now();
        match input {
            CallInput::Request(req, conn) => {
                if self.sip.match_request(&req) == RequestMatch::None {
                    // Same carrier and Call-ID, but not this dialog nor this INVITE: answered
                    // where it came from; the call, and the connection it answers on, stay.
                    debug!(method = %req.method, peer = %conn.peer, "request matches neither the dialog nor the INVITE transaction");
                    if let Some((status, reason)) = UasCall::unmatched_status(&req) {
                        let uas = &self.shared.uas;
                        let resp = self.rng.with(|r| {
                            crate::sip::stateless_response(&req, status, reason, uas, None, r)
                        });
                        conn.send(&SipMessage::Response(resp));
                    }
                    return;
                }
                // Matched: from now on the call answers on the connection the carrier last used.
                self.conn = conn;
                self.sip.handle_request(now, *req);
            }
            CallInput::Response(resp) => {
                if self.sip.matches_response(&resp) {
                    self.sip.handle_response(now, *resp);
                } else {
                    debug!(
                        status = resp.status,
                        "response matches no request of this call: dropped"
                    );
                }
            }
            CallInput::Hangup(cause) => {
                self.set_end(end_reason_for(cause), None);
                self.sip.hangup(now, cause);
            }
            CallInput::Adopt(conn) => self.conn = conn,
            CallInput::Transfer(to) => self.start_transfer(now, to),
        }
        self.flush_sip();
    }

    /// Sends a REFER (API `<Dial>`, or the agent's `transfer` message once checked against
    /// the route's allow-list).
    fn start_transfer(&mut self, now: Instant, to: String) {
        if self.end_reason.is_some() || !self.sip.refer(now, &to) {
            info!(%to, "transfer refused: the call is not confirmed, ending, or already transferring");
            self.transfer_outcome(&to, "failed", None);
            self.agent_notes
                .push_back(srtp_bridge::agent::transfer_result(
                    &self.stream_sid,
                    &to,
                    "failed",
                    None,
                ));
            return;
        }
        info!(%to, "transfer: REFER sent");
        self.transfer_outcome(&to, "requested", None);
        self.transfer_to = Some(to);
    }

    /// The agent asked for a transfer over its WebSocket.
    fn agent_transfer(&mut self, now: Instant, to: String) {
        let allow = self
            .route
            .as_ref()
            .map(|r| r.transfer_allow.as_slice())
            .unwrap_or_default();
        let valid = crate::api::twiml::transfer_target(&to);
        match valid {
            Some(target) if crate::api::transfer_allowed(allow, &target) => {
                self.start_transfer(now, target)
            }
            _ => {
                info!(to = %to.chars().take(64).collect::<String>(), "agent transfer refused: not in transfer_allow");
                self.agent_notes
                    .push_back(srtp_bridge::agent::transfer_result(
                        &self.stream_sid,
                        &to,
                        "forbidden",
                        None,
                    ));
            }
        }
    }

    /// Acts on the REFER's progress: BYE after a successful transfer, else the call goes on.
    fn on_transfer(&mut self, now: Instant, ev: crate::sip::TransferEvent) {
        use crate::sip::TransferEvent as T;
        let to = self.transfer_to.clone().unwrap_or_default();
        match ev {
            T::Accepted => {
                info!(%to, "transfer accepted (202)");
                self.transfer_outcome(&to, "accepted", Some(202));
            }
            T::Progress(status) => debug!(%to, status, "transfer progress"),
            T::Succeeded(status) => {
                info!(%to, status, "transfer completed: leaving the call");
                self.transfer_to = None;
                self.transfer_outcome(&to, "completed", Some(status));
                self.agent_notes
                    .push_back(srtp_bridge::agent::transfer_result(
                        &self.stream_sid,
                        &to,
                        "completed",
                        Some(status),
                    ));
                self.set_end("transferred", Some(to));
                self.sip.hangup(now, HangupCause::Transferred);
            }
            T::Failed(status) => {
                info!(%to, status, "transfer failed: the call goes on");
                self.transfer_to = None;
                self.transfer_outcome(&to, "failed", Some(status));
                self.agent_notes
                    .push_back(srtp_bridge::agent::transfer_result(
                        &self.stream_sid,
                        &to,
                        "failed",
                        Some(status),
                    ));
            }
        }
    }

    /// Records where a transfer stands, for the API and the audit record.
    fn transfer_outcome(&mut self, to: &str, outcome: &str, sip_status: Option<u16>) {
        self.record.transfer = Some(crate::audit::TransferAudit {
            to: to.to_string(),
            outcome: outcome.to_string(),
            sip_status,
        });
        if let Some(sid) = &self.call_sid {
            let info = crate::api::registry::TransferInfo {
                to: to.to_string(),
                outcome: outcome.to_string(),
                sip_status,
            };
            self.shared.calls.update(sid, |e| e.transfer = Some(info));
        }
    }

    fn set_end(&mut self, reason: &'static str, detail: Option<String>) {
        if self.end_reason.is_none() {
            self.end_reason = Some(reason);
            self.end_detail = detail;
        }
    }

    /// Pumps SIP until the dialog is over (after a refusal or cancel): absorbs the ACK.
    async fn finish_without_media(&mut self) {
        let hard_stop = Instant::now() + self.shared.uas.t1 * 64 + Duration::from_secs(1);
        loop {
            while let Some(ev) = self.sip.poll_event() {
                if ev == CallEvent::Terminated {
                    return;
                }
            }
            if self.sip.state() == CallState::Terminated {
                return;
            }
            let deadline = self.sip.poll_timeout().unwrap_or(hard_stop).min(hard_stop);
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(i) => self.on_input(i),
                    None => return,
                },
                _ = tokio::time::sleep_until(deadline.into()) => {
                    if Instant::now() >= hard_stop { return; }
                    self.sip.handle_timeout(Instant::now());
                    self.flush_sip();
                }
            }
        }
    }

    /// From INVITE to 200 OK: SDP, route, ports, agent. `Ok(None)` when cancelled.
    async fn setup(
        &mut self,
    ) -> Result<Option<(MediaSockets, sdp::Negotiated, AgentSide, Bytes)>, Refuse> {
        let cfg = Arc::clone(&self.live.config);
        let body = self.invite.body.clone();
        self.record.srtp.offered = offered_suite_names(&body);
        if body.is_empty() {
            return Err(refuse_488("no SDP offer in the INVITE".into()));
        }
        if body.len() > cfg.limits.max_sdp_bytes {
            return Err(refuse_488(format!(
                "SDP larger than {} bytes",
                cfg.limits.max_sdp_bytes
            )));
        }
        let offer = sdp::SessionDescription::parse(&body).map_err(|e| Refuse {
            status: 400,
            reason: "Bad Request",
            warning: Some(sanitize_warning(&e.to_string())),
            retry_after: None,
            why: format!("malformed SDP: {e}"),
        })?;
        let media_lines = count_media_lines(&body);
        if media_lines > cfg.limits.max_media_lines {
            return Err(refuse_488(format!("too many media lines ({media_lines})")));
        }
        let called = self.invite.called_number().unwrap_or_default();
        let chosen = route_entry(&cfg.agent.routes, &called).cloned();
        let Some(target) = chosen.as_ref().map(|r| r.target.clone()) else {
            return Err(Refuse {
                status: 404,
                reason: "Not Found",
                warning: None,
                retry_after: None,
                why: format!(
                    "no route for called number {}",
                    self.shared.audit.number(&called)
                ),
            });
        };
        self.route = chosen;
        let sid = self.call_sid_for_stream();
        self.call_sid = Some(sid.clone());
        crate::admission::admit_cluster(
            &self.shared,
            &sid,
            &self.carrier.config.name,
            &self.record.sip_call_id,
            self.route.as_ref().and_then(|r| r.account_sid.as_deref()),
        )
        .await
        .map_err(|r| Refuse {
            status: r.status,
            reason: r.reason,
            warning: None,
            retry_after: r.retry_after,
            why: r.why.into(),
        })?;
        self.status_callback(crate::config::CallbackEvent::Initiated, "initiated");
        let Some(media) = self.shared.ports.allocate() else {
            return Err(Refuse {
                status: 503,
                reason: "Service Unavailable",
                warning: Some("no media ports available".into()),
                retry_after: Some(5),
                why: "media port range exhausted".into(),
            });
        };
        let policy = self.answer_policy(media.port, None);
        let answer = self
            .rng
            .with(|r| sdp::answer_offer(&offer, &policy, r))
            .map_err(|r| {
                let text = sanitize_warning(&r.to_string());
                refuse_488(text)
            })?;
        self.record.srtp.offered = answer.negotiated.offered_suites.clone();
        let suite = answer.negotiated.suite.name().to_string();
        self.record.srtp.chosen_inbound = Some(suite.clone());
        self.record.srtp.chosen_outbound = Some(suite);

        // Connect the agent while answering CANCEL and sending 180 if it is slow.
        self.record.agent.target = match &target {
            AgentTarget::Echo => "builtin:echo".into(),
            AgentTarget::Url(u) => crate::audit::url_without_secrets(u),
        };
        let agent = match target {
            AgentTarget::Echo => AgentSide::Echo,
            AgentTarget::Url(url) => {
                self.record.agent.url_host = agent::url_host(&url);
                let started = Instant::now();
                // Boxed: inline, the connect future (TLS and WebSocket handshakes, ~9 KiB) would
                // size the call task's future for the whole call, not only during setup.
                let mut connect = Box::pin(agent::connect(
                    &url,
                    Arc::clone(&self.live.agent_tls),
                    cfg.agent.connect_timeout,
                    cfg.agent.send_buffer_bytes,
                ));
                let ring_at = self.received + cfg.sip.ringing_after;
                let mut rung = false;
                let result = loop {
                    let sip_deadline = self.sip.poll_timeout();
                    tokio::select! {
                        res = &mut connect => break res,
                        input = self.rx.recv() => match input {
                            Some(i) => self.on_input(i),
                            None => return Ok(None),
                        },
                        _ = tokio::time::sleep_until(ring_at.into()), if !rung => {
                            rung = true;
                            self.sip.ringing(Instant::now());
                            self.flush_sip();
                            self.status_callback(crate::config::CallbackEvent::Ringing, "ringing");
                        }
                        _ = sleep_opt(sip_deadline) => {
                            self.sip.handle_timeout(Instant::now());
                            self.flush_sip();
                        }
                    }
                    if self.cancelled() {
                        return Ok(None);
                    }
                };
                let elapsed = started.elapsed();
                m::agent_connect(elapsed);
                self.record.agent.connect_ms = Some(elapsed.as_millis() as u64);
                match result {
                    Ok(conn) => {
                        self.record.agent.tls_version = Some(conn.tls_version.clone());
                        self.record.agent.cipher = Some(conn.cipher.clone());
                        self.record.agent.kx_group = conn.kx_group.clone();
                        self.record.agent.mtls = conn.mtls;
                        self.record.agent.tls_resumed = conn.resumed;
                        AgentSide::Ws(Box::new(conn))
                    }
                    Err(e) => {
                        return Err(Refuse {
                            status: 503,
                            reason: "Service Unavailable",
                            warning: Some("voice agent unreachable".into()),
                            retry_after: Some(5),
                            why: format!("agent {}: {e}", e.kind()),
                        })
                    }
                }
            }
        };
        if self.cancelled() {
            return Ok(None);
        }
        Ok(Some((
            media,
            answer.negotiated,
            agent,
            Bytes::from(answer.sdp.to_string()),
        )))
    }

    /// Drains SIP events during setup; true when the INVITE was cancelled.
    fn cancelled(&mut self) -> bool {
        let mut cancelled = false;
        while let Some(ev) = self.sip.poll_event() {
            match ev {
                CallEvent::Cancelled => cancelled = true,
                CallEvent::Terminated => cancelled = true,
                other => debug!(event = ?other, "SIP event during setup ignored"),
            }
        }
        if cancelled {
            info!("call cancelled by the carrier before answer");
            self.record.decision = Decision {
                outcome: "refused",
                status: 487,
                reason: "cancelled by carrier".into(),
            };
            self.shared.audit.write("call.refused", &self.record);
            m::call_outcome("cancelled");
        }
        cancelled
    }

    fn answer_policy(
        &self,
        port: u16,
        local_key: Option<(sdp::SrtpSuite, sdp::KeySalt)>,
    ) -> sdp::AnswerPolicy {
        answer_policy(
            &self.live.config,
            port,
            session_id(&self.record.call_id),
            local_key,
        )
    }

    async fn active(
        mut self: Box<Self>,
        media: MediaSockets,
        negotiated: sdp::Negotiated,
        agent: AgentSide,
        answer_sdp: Bytes,
    ) -> Option<crate::sip::uac::TwilioStatus> {
        let now = Instant::now();
        let cfg = Arc::clone(&self.live.config);
        let mut version = 1u64;
        let mut local_key = (negotiated.suite.clone(), negotiated.local_key.clone());
        let stream = self.stream_info();
        self.stream_sid = stream.stream_sid.clone();
        // The negotiated parameters go straight into the bridge; one it cannot run is refused
        // here, before the answer (never a 200 with no media).
        // Boxed: the match below keeps its scrutinee alive across the `.await` of its error
        // arm, so an inline `Bridge` (~5.5 KiB) would be stored twice in the call task's future.
        let mut bridge = match Bridge::new(
            now,
            media_params(&negotiated),
            stream.clone(),
            BridgeConfig {
                inactivity_timeout: cfg.media.rtp_timeout,
                rtcp_interval: Duration::from_secs(5),
                ssrc: self.rng.with(|r| r.next_u32()),
                mirror_caller_ssrc: cfg.media.mirror_caller_ssrc,
                relatch_packets: cfg.media.relatch_packets,
            },
        )
        .map(Box::new)
        {
            Ok(b) => b,
            Err(e) => {
                error!(error = %e, "negotiated media parameters unusable: call refused (500)");
                let why = format!("media parameters unusable: {e}");
                self.sip.reject(
                    now,
                    500,
                    "Server Internal Error",
                    Some(&sanitize_warning(&why)),
                    None,
                );
                self.flush_sip();
                self.record.decision = Decision {
                    outcome: "refused",
                    status: 500,
                    reason: why,
                };
                self.shared.audit.write("call.refused", &self.record);
                m::call_outcome("refused");
                self.finish_without_media().await;
                return None;
            }
        };
        self.register_call(&stream);
        self.sip.accept(now, answer_sdp);
        self.flush_sip();
        m::srtp_suite(negotiated.suite.name());
        m::call_outcome("accepted");
        self.record.decision = Decision {
            outcome: "accepted",
            status: 200,
            reason: "OK".into(),
        };
        self.record.answered_at = Some(crate::audit::now_rfc3339());
        self.record.setup_ms = Some(self.received.elapsed().as_millis() as u64);
        self.shared.audit.write("call.start", &self.record);
        info!(
            suite = negotiated.suite.name(),
            codec = ?negotiated.codec,
            remote_rtp = %negotiated.remote_rtp,
            agent = %self.record.agent.target,
            "call answered"
        );
        let answered = Instant::now();
        if !self.sip.early() {
            self.answered_at = Some(answered);
            self.status_callback(crate::config::CallbackEvent::Answered, "in-progress");
        }

        // The call owns the agent WebSocket and drives it both ways (`agent::AgentLink`);
        // `flow` decides when the agent counts as stuck (bytes fed and not flushed past the
        // bound, or no flush progress within send_timeout).
        let (mut link, echo) = match agent {
            AgentSide::Ws(conn) => (Some(agent::AgentLink::new(conn.ws)), false),
            AgentSide::Echo => (None, true),
        };
        let mut flow = agent::AgentFlow::new(cfg.agent.send_queue_bytes, cfg.agent.send_timeout);
        let mut rtcp_first = false;
        let mut stopped = false;
        let mut last_stats = srtp_bridge::BridgeStats::default();
        let media_metrics = m::CallMedia::new();
        let hard_stop_after = self.shared.uas.t1 * 64 + Duration::from_secs(2);
        let mut hard_stop: Option<Instant> = None;
        // Arrival times for the latency histograms (packet in to frame out, both ways).
        let mut carrier_in: Option<Instant> = None;
        let mut agent_in: Option<Instant> = None;
        // Why the agent counts as stuck, once it does (`flow`'s bound or its deadline).
        let mut stuck_why: Option<&'static str> = None;

        loop {
            // 1. Act on what the cores produced.
            while let Some(ev) = self.sip.poll_event() {
                // An outbound call's 2xx or final failure after early media, before the
                // events that followed it (a failure's `Terminated`).
                self.take_outcomes();
                let now = Instant::now();
                match ev {
                    CallEvent::Confirmed => debug!("ACK received: dialog confirmed"),
                    CallEvent::RemoteBye => {
                        info!("carrier hung up (BYE)");
                        self.set_end("carrier_bye", None);
                    }
                    CallEvent::Cancelled => self.set_end("cancelled", None),
                    CallEvent::AckTimeout => {
                        warn!("no ACK for our 200 OK within 64*T1: ending the call");
                        self.set_end("ack_timeout", None);
                    }
                    CallEvent::SessionExpired => {
                        info!("session timer expired without refresh: ending the call");
                        self.set_end("session_timer", None);
                    }
                    CallEvent::Transfer(ev) => self.on_transfer(now, ev),
                    CallEvent::Dtmf { digit, duration } => {
                        debug!(%digit, "DTMF by SIP INFO");
                        bridge.signalled_dtmf(now, digit, duration);
                    }
                    CallEvent::ReOffer { sdp: offer } => {
                        version += 1;
                        let result = sdp::SessionDescription::parse(&offer)
                            .map_err(|e| sanitize_warning(&format!("malformed SDP: {e}")))
                            .and_then(|o| {
                                let mut policy =
                                    self.answer_policy(media.port, Some(local_key.clone()));
                                policy.session_version = version;
                                self.rng
                                    .with(|r| sdp::answer_offer(&o, &policy, r))
                                    .map_err(|r| sanitize_warning(&r.to_string()))
                            });
                        match result {
                            Ok(ans) => {
                                info!(direction = ?ans.negotiated.direction, remote_rtp = %ans.negotiated.remote_rtp, "re-offer accepted: media updated");
                                match bridge.update_params(now, media_params(&ans.negotiated)) {
                                    Ok(()) => {
                                        local_key = (
                                            ans.negotiated.suite.clone(),
                                            ans.negotiated.local_key.clone(),
                                        );
                                        self.sip.answer_reoffer(
                                            now,
                                            Ok(Bytes::from(ans.sdp.to_string())),
                                        );
                                    }
                                    Err(e) => {
                                        info!(error = %e, "re-offer refused (488): media unchanged");
                                        self.sip.answer_reoffer(
                                            now,
                                            Err(sanitize_warning(&format!(
                                                "media parameters unusable: {e}"
                                            ))),
                                        );
                                    }
                                }
                            }
                            Err(w) => {
                                info!(reason = %w, "re-offer refused (488); media unchanged");
                                self.sip.answer_reoffer(now, Err(w));
                            }
                        }
                    }
                    CallEvent::Terminated => {
                        self.set_end("error", Some("dialog terminated".into()));
                        hard_stop = Some(now);
                    }
                    #[allow(unreachable_patterns)]
                    other => debug!(event = ?other, "SIP event ignored"),
                }
            }
            self.take_outcomes();
            while let Some(ev) = bridge.poll_event() {
                match ev {
                    BridgeEvent::RtpTimeout => {
                        if self.end_reason.is_none() {
                            info!("no RTP from the carrier within the timeout: hanging up");
                            self.set_end("rtp_timeout", None);
                            self.sip.hangup(Instant::now(), HangupCause::RtpTimeout);
                        }
                    }
                    BridgeEvent::MediaStarted { from } => debug!(%from, "carrier media started"),
                    other => debug!(event = ?other, "media event"),
                }
            }
            if self.end_reason.is_some() && !stopped {
                stopped = true;
                bridge.stop(Instant::now());
                hard_stop.get_or_insert(Instant::now() + hard_stop_after);
            }
            self.flush_sip();
            let mut rtp_sent = send_datagrams(&mut bridge, &media);
            let mut agent_closed = false;
            let mut texts = 0usize;
            // sbc's own notes first: a transfer result goes out before the `stop` that follows it.
            while let Some(text) = self
                .agent_notes
                .pop_front()
                .or_else(|| bridge.poll_agent_text())
            {
                texts += 1;
                if echo {
                    if let Some(reply) = srtp_bridge::echo_agent_reply(&text) {
                        bridge.handle_agent_text(Instant::now(), &reply);
                    }
                } else if let Some(l) = link.as_mut() {
                    let now = Instant::now();
                    flow.written(now, l.flushed());
                    if !flow.offer(now, text.len()) {
                        stuck_why.get_or_insert("send queue full");
                        continue;
                    }
                    if let Err(e) = l.feed(text) {
                        debug!(error = %e, "agent WebSocket send failed");
                        agent_closed = true;
                    }
                }
            }
            if flow.is_stuck() {
                stuck_why.get_or_insert("no write progress within send_timeout");
            }
            if stuck_why.is_some() && link.is_some() {
                // Never await a stuck agent: drop its socket, hang up towards the carrier.
                link = None;
                if self.end_reason.is_none() {
                    warn!(
                        outstanding_bytes = flow.outstanding(),
                        timeout_ms = cfg.agent.send_timeout.as_millis() as u64,
                        "agent stopped reading: hanging up"
                    );
                    self.set_end("agent_stuck", stuck_why.map(str::to_string));
                    self.sip.hangup(Instant::now(), HangupCause::AgentStuck);
                    continue;
                }
            }
            if echo {
                // The echo replies queue more datagrams; send them now rather than next turn.
                rtp_sent += send_datagrams(&mut bridge, &media);
            }
            if let Some(t) = carrier_in.take().filter(|_| texts > 0) {
                media_metrics.latency_carrier_to_agent(t.elapsed());
            }
            if let Some(t) = agent_in.take().filter(|_| rtp_sent > 0) {
                media_metrics.latency_agent_to_carrier(t.elapsed());
            }
            if stopped {
                if let Some(l) = link.take() {
                    // What was fed (`stop` included), then Close, each write within its
                    // deadline, then the agent's Close, in a task the call does not wait for
                    // (its admission slots and Call-ID are released as the call ends).
                    tokio::spawn(
                        l.close(cfg.agent.send_timeout * 2, AGENT_CLOSE_WAIT)
                            .in_current_span(),
                    );
                }
            }
            if agent_closed && self.end_reason.is_none() {
                info!("agent WebSocket failed: hanging up");
                self.set_end("agent_hangup", Some("send failed".into()));
                self.sip.hangup(Instant::now(), HangupCause::AgentHangup);
                continue;
            }
            report_stats(&media_metrics, &bridge, &mut last_stats);
            if self.sip.state() == CallState::Terminated && stopped {
                break;
            }
            if hard_stop.is_some_and(|h| Instant::now() >= h) {
                break;
            }

            // 2. Wait for the next input.
            let deadline = [
                self.sip.poll_timeout(),
                bridge.poll_timeout(),
                hard_stop,
                link.as_ref().and(flow.poll_timeout()),
            ]
            .into_iter()
            .flatten()
            .min();
            tokio::select! {
                input = self.rx.recv() => match input {
                    Some(i) => self.on_input(i),
                    None => {
                        self.set_end("error", Some("mailbox closed".into()));
                        hard_stop = Some(Instant::now());
                    }
                },
                (component, at, r) = recv_carrier(&media, &mut bridge, &mut rtcp_first) => match r {
                    Ok(got) => {
                        if component == Component::Rtp {
                            carrier_in = Some(at);
                        }
                        if got.truncated > 0 {
                            debug!(truncated = got.truncated, ?component, "carrier datagram longer than {} bytes cut", crate::udp_recv::DATAGRAM_MAX);
                        }
                    }
                    Err(e) => trace!(error = %e, ?component, "UDP recv error"),
                },
                io = next_agent_io(&mut link) => match io {
                    // After `stop` the agent's late media is dropped; only its Close matters.
                    agent::AgentIo::Message(Message::Text(t)) if !stopped => {
                        let now = Instant::now();
                        agent_in = Some(now);
                        match srtp_bridge::agent::transfer_request(t.as_str()) {
                            Some(to) => {
                                self.agent_transfer(now, to);
                                self.flush_sip();
                            }
                            None => bridge.handle_agent_text(now, t.as_str()),
                        }
                    }
                    agent::AgentIo::Message(Message::Binary(_)) => debug!("binary agent frame ignored"),
                    io @ (agent::AgentIo::Message(Message::Close(_)) | agent::AgentIo::Closed(_)) => {
                        link = None;
                        if self.end_reason.is_none() {
                            // A read or write error says why; a Close or EOF has nothing to add.
                            let error = match io {
                                agent::AgentIo::Closed(e) => e,
                                agent::AgentIo::Message(_) => None,
                            };
                            info!(error = error.as_deref(), "agent closed the WebSocket: hanging up");
                            self.set_end("agent_hangup", None);
                            self.sip.hangup(Instant::now(), HangupCause::AgentHangup);
                        }
                    }
                    agent::AgentIo::Message(_) => {}
                },
                _ = sleep_opt(deadline) => {
                    let now = Instant::now();
                    self.sip.handle_timeout(now);
                    bridge.handle_timeout(now);
                    if let Some(l) = link.as_ref() {
                        flow.written(now, l.flushed());
                        flow.handle_timeout(now);
                    }
                }
            }
        }

        let stats = bridge.stats();
        report_stats(&media_metrics, &bridge, &mut last_stats);
        self.record.media = crate::audit::MediaAudit {
            rtp_in: stats.rtp_in,
            rtp_out: stats.rtp_out,
            bytes_in: stats.bytes_in,
            bytes_out: stats.bytes_out,
            srtcp_in: stats.srtcp_in,
            srtcp_out: stats.srtcp_out,
            auth_failures: stats.auth_failures,
            replays: stats.replays,
            dtmf_events: stats.dtmf_from_carrier + stats.dtmf_from_agent,
            agent_media_in: stats.agent_media_in,
            agent_media_out: stats.agent_media_out,
            agent_malformed: stats.agent_malformed,
            carrier_malformed: stats.carrier_malformed,
            agent_audio_overflow_bytes: stats.agent_audio_overflow,
            agent_audio_late_dropped_bytes: stats.agent_audio_late_dropped,
            relatches: stats.relatches,
            agent_marks_dropped: stats.agent_marks_dropped,
            agent_dtmf_dropped: stats.agent_dtmf_dropped,
        };
        self.record.ended_at = Some(crate::audit::now_rfc3339());
        self.record.duration_ms = Some(answered.elapsed().as_millis() as u64);
        self.record.end_reason = Some(self.end_reason.unwrap_or("error").to_string());
        self.record.end_detail = self.end_detail.take();
        info!(
            end_reason = self.end_reason.unwrap_or("error"),
            rtp_in = stats.rtp_in,
            rtp_out = stats.rtp_out,
            auth_failures = stats.auth_failures,
            "call ended"
        );
        self.shared.audit.write("call.end", &self.record);
        // An outbound call whose INVITE failed after early media ends with its Twilio status
        // (`busy`, `no-answer`, ...), as one that failed before any media does.
        let final_status = self
            .outbound_failed
            .map_or(crate::api::registry::CallStatus::Completed, |f| {
                crate::api::registry::CallStatus::from_twilio(f)
            });
        if let Some(sid) = &self.call_sid {
            self.shared
                .calls
                .end_with(sid, final_status, self.end_reason.unwrap_or("error"));
        }
        let status = self.outbound_failed.map_or("completed", |f| f.as_str());
        self.status_callback(crate::config::CallbackEvent::Completed, status);
        self.outbound_failed
    }

    /// Acts on an outbound call's setup outcome that came after the media loop started (early
    /// media): the 2xx makes the call `in-progress` (registry, `answered` callback, audit
    /// `final_sip_status`); a final failure ends it with the status Twilio reports for it
    /// (486/600 `busy`, the ring timeout `no-answer`, an API cancel `canceled`, else `failed`).
    fn take_outcomes(&mut self) {
        while let Some(outcome) = self.sip.poll_outcome() {
            match outcome {
                UacOutcome::Answered => {
                    info!("2xx after early media: the call is answered");
                    if let Some(o) = self.record.outbound.as_mut() {
                        o.final_sip_status = Some(200);
                    }
                    if let Some(sid) = &self.call_sid {
                        self.shared.calls.update(sid, |e| {
                            e.status = crate::api::registry::CallStatus::InProgress
                        });
                    }
                    self.answered_at = Some(Instant::now());
                    self.status_callback(crate::config::CallbackEvent::Answered, "in-progress");
                }
                UacOutcome::Failed { status, twilio } => {
                    info!(
                        status,
                        twilio_status = twilio.as_str(),
                        "INVITE failed after early media"
                    );
                    if let Some(o) = self.record.outbound.as_mut() {
                        o.final_sip_status = Some(status);
                        o.twilio_status = Some(twilio.as_str().to_string());
                    }
                    self.record.decision = Decision {
                        outcome: "failed",
                        status,
                        reason: twilio.as_str().into(),
                    };
                    self.outbound_failed = Some(twilio);
                    self.set_end(twilio.as_str(), Some(format!("final response {status}")));
                }
            }
        }
    }

    /// Makes the call visible to the API under the sid the agent saw (and the carrier's
    /// `X-Twilio-CallSid`, which `stream_info` already used when trusted).
    fn register_call(&mut self, stream: &StreamInfo) {
        if self.outbound.is_some() {
            // Registered by the API when it was created; now it is answered (with early media
            // it stays `ringing` until the 2xx: `take_outcomes`).
            self.call_sid = Some(stream.call_sid.clone());
            if !self.sip.early() {
                self.shared.calls.update(&stream.call_sid, |e| {
                    e.status = crate::api::registry::CallStatus::InProgress
                });
            }
            return;
        }
        let route = self.route.as_ref();
        let mailbox = self
            .shared
            .dialogs
            .lookup(&self.carrier.config.name, &self.record.sip_call_id);
        self.call_sid = Some(stream.call_sid.clone());
        self.shared.calls.register(crate::api::registry::CallEntry {
            sid: stream.call_sid.clone(),
            account_sid: route.and_then(|r| r.account_sid.clone()),
            alias: None,
            direction: "inbound",
            from: stream.from.clone(),
            to: stream.to.clone(),
            start: time::OffsetDateTime::now_utc(),
            end: None,
            status: crate::api::registry::CallStatus::InProgress,
            end_reason: None,
            transfer_allow: route.map(|r| r.transfer_allow.clone()).unwrap_or_default(),
            transfer: None,
            mailbox,
            seq: 0,
        });
    }

    /// The CallSid of this call: the carrier's `X-Twilio-CallSid` when the carrier is Twilio,
    /// else a new one.
    fn call_sid_for_stream(&mut self) -> String {
        let trusted = self.carrier.config.twilio;
        self.invite
            .headers
            .get("X-Twilio-CallSid")
            .filter(|_| trusted)
            .map(str::to_string)
            .unwrap_or_else(|| format!("CA{}", self.rng.with(|r| hex32(r))))
    }

    /// Queues the route's status callback for `event` (if the route asks for it); never waits.
    fn status_callback(&mut self, event: crate::config::CallbackEvent, call_status: &str) {
        if let Some(info) = &self.outbound {
            let duration = self.answered_at.map(|t| t.elapsed().as_secs());
            info.status_callback(&self.shared, event, call_status, duration);
            return;
        }
        let Some(route) = self.route.as_ref() else {
            return;
        };
        let (Some(cb), Some(account)) = (&route.status_callback, &route.account_sid) else {
            return;
        };
        if !cb.events.contains(&event) {
            return;
        }
        let Some(api) = self.live.config.api.as_ref() else {
            return;
        };
        let (Some(acc), Some(tls)) = (
            api.accounts.iter().find(|a| &a.sid == account),
            self.live.callback_tls.clone(),
        ) else {
            return;
        };
        self.callback_seq += 1;
        let from = self.invite.caller_number().unwrap_or_default();
        let to = self.invite.called_number().unwrap_or_default();
        let mut params: Vec<(String, String)> = vec![
            ("AccountSid".into(), account.clone()),
            ("ApiVersion".into(), "2010-04-01".into()),
            ("CallSid".into(), self.call_sid.clone().unwrap_or_default()),
            ("CallStatus".into(), call_status.into()),
            ("CallbackSource".into(), "call-progress-events".into()),
            ("Called".into(), to.clone()),
            ("Caller".into(), from.clone()),
            ("Direction".into(), "inbound".into()),
            ("From".into(), from),
            ("SequenceNumber".into(), (self.callback_seq - 1).to_string()),
            (
                "Timestamp".into(),
                time::OffsetDateTime::now_utc()
                    .format(&time::format_description::well_known::Rfc2822)
                    .unwrap_or_default(),
            ),
            ("To".into(), to),
        ];
        if event == crate::config::CallbackEvent::Completed {
            let secs = self.answered_at.map_or(0, |t| t.elapsed().as_secs());
            params.push(("CallDuration".into(), secs.to_string()));
            params.push(("Duration".into(), secs.div_ceil(60).to_string()));
        }
        self.shared.callbacks.send(crate::api::callbacks::Delivery {
            callback: cb.clone(),
            token: acc.auth_token.clone(),
            params,
            tls,
        });
    }

    /// Pushes counter deltas to Prometheus.
    fn stream_info(&mut self) -> StreamInfo {
        if let Some(info) = &self.outbound {
            // The `<Parameter>`s of the TwiML, then the marker that sbc placed this call.
            let mut custom = info.parameters.clone();
            custom.push(("direction".into(), "outbound".into()));
            return StreamInfo {
                stream_sid: format!("MZ{}", self.rng.with(|r| hex32(r))),
                call_sid: info.call_sid.clone(),
                account_sid: info.account.clone(),
                from: info.from.clone(),
                to: info.to.clone(),
                carrier: self.record.carrier.clone(),
                custom,
            };
        }
        let cfg = &self.live.config;
        let h = &self.invite.headers;
        // X-Twilio-* headers are Twilio's own only when the carrier is Twilio; from any other
        // carrier they are whatever the peer chose to write, and never reach the agent.
        let trusted = |name: &str| {
            self.carrier.config.twilio || !name.to_ascii_lowercase().starts_with("x-twilio-")
        };
        let twilio_header = |name: &str| h.get(name).filter(|_| trusted(name));
        let call_sid = match &self.call_sid {
            Some(sid) => sid.clone(),
            None => twilio_header("X-Twilio-CallSid")
                .map(str::to_string)
                .unwrap_or_else(|| format!("CA{}", self.rng.with(|r| hex32(r)))),
        };
        let account_sid = twilio_header("X-Twilio-AccountSid")
            .map(str::to_string)
            .or_else(|| self.route.as_ref().and_then(|r| r.account_sid.clone()))
            .unwrap_or_else(|| cfg.agent.default_account_sid.clone());
        let custom = cfg
            .agent
            .passthrough_headers
            .iter()
            .filter(|name| trusted(name))
            .filter_map(|name| h.get(name).map(|v| (name.clone(), v.to_string())))
            .collect();
        StreamInfo {
            stream_sid: format!("MZ{}", self.rng.with(|r| hex32(r))),
            call_sid,
            account_sid,
            from: self.invite.caller_number().unwrap_or_default(),
            to: self.invite.called_number().unwrap_or_default(),
            carrier: self.record.carrier.clone(),
            custom,
        }
    }
}

/// The SIP side of a call, so that one media loop ([`Call::active`]) serves both directions:
/// the UAS core for a call the carrier placed, the UAC core for one sbc placed through a trunk.
/// The UAC's events are mapped onto the UAS's [`CallEvent`]s; what only a UAS does (answer,
/// refuse, ring, transfer) is a no-op on the UAC side, which answered before `active`.
// One per call, inside the call task's own state and never moved on the media path: the size
// of the inline UAS variant costs nothing, boxing it would cost every inbound call an allocation.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Leg {
    Uas(UasCall),
    Uac(Box<UacLeg>),
}

/// The UAC core of an outbound call in the media loop, with the setup outcomes its events
/// brought after the hand-over: with early media the loop starts at the 183, so the 2xx (or a
/// final failure) still comes here.
pub(crate) struct UacLeg {
    core: crate::sip::uac::UacCall,
    outcomes: std::collections::VecDeque<UacOutcome>,
}

/// How an outbound call's INVITE ended, once the media loop runs (early media).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum UacOutcome {
    /// The 2xx came (ACK sent): the call is answered now.
    Answered,
    /// A final failure (486, the ring timeout's CANCEL, the API's cancel, ...).
    Failed {
        status: u16,
        twilio: crate::sip::uac::TwilioStatus,
    },
}

impl std::ops::Deref for UacLeg {
    type Target = crate::sip::uac::UacCall;
    fn deref(&self) -> &Self::Target {
        &self.core
    }
}

impl std::ops::DerefMut for UacLeg {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.core
    }
}

impl Leg {
    fn poll_transmit(&mut self) -> Option<SipMessage> {
        match self {
            Leg::Uas(c) => c.poll_transmit(),
            Leg::Uac(c) => c.poll_transmit(),
        }
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self {
            Leg::Uas(c) => c.poll_timeout(),
            Leg::Uac(c) => c.poll_timeout(),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self {
            Leg::Uas(c) => c.handle_timeout(now),
            Leg::Uac(c) => c.handle_timeout(now),
        }
    }

    fn hangup(&mut self, now: Instant, cause: HangupCause) {
        match self {
            Leg::Uas(c) => c.hangup(now, cause),
            Leg::Uac(c) => c.hangup(now),
        }
    }

    fn state(&self) -> CallState {
        use crate::sip::uac::UacState as U;
        match self {
            Leg::Uas(c) => c.state(),
            Leg::Uac(c) => match c.state() {
                U::Calling | U::Proceeding | U::Cancelling => CallState::Proceeding,
                U::Confirmed => CallState::Confirmed,
                U::Terminating => CallState::Terminating,
                U::Terminated => CallState::Terminated,
            },
        }
    }

    fn poll_event(&mut self) -> Option<CallEvent> {
        use crate::sip::uac::UacEvent as U;
        match self {
            Leg::Uas(c) => c.poll_event(),
            Leg::Uac(c) => loop {
                return Some(match c.poll_event()? {
                    U::RemoteBye => CallEvent::RemoteBye,
                    U::ReOffer { sdp } => CallEvent::ReOffer { sdp },
                    U::SessionExpired => CallEvent::SessionExpired,
                    U::Terminated => CallEvent::Terminated,
                    // With early media the 2xx or the final failure arrives here; the media
                    // loop reads them with `poll_outcome` before the events that follow.
                    U::Answered { .. } => {
                        c.outcomes.push_back(UacOutcome::Answered);
                        continue;
                    }
                    U::Failed {
                        status,
                        twilio_status,
                        ..
                    } => {
                        c.outcomes.push_back(UacOutcome::Failed {
                            status,
                            twilio: twilio_status,
                        });
                        continue;
                    }
                    // Setup events (the outbound task consumed them before `active`).
                    other => {
                        debug!(event = ?other, "UAC event after answer ignored");
                        continue;
                    }
                });
            },
        }
    }

    /// The next setup outcome of an outbound call (`None` for an inbound one).
    fn poll_outcome(&mut self) -> Option<UacOutcome> {
        match self {
            Leg::Uas(_) => None,
            Leg::Uac(c) => c.outcomes.pop_front(),
        }
    }

    /// True for an outbound call handed over at a 183 whose 2xx has not come yet.
    fn early(&self) -> bool {
        match self {
            Leg::Uas(_) => false,
            Leg::Uac(c) => !matches!(
                c.state(),
                crate::sip::uac::UacState::Confirmed
                    | crate::sip::uac::UacState::Terminating
                    | crate::sip::uac::UacState::Terminated
            ),
        }
    }

    fn match_request(&self, req: &Request) -> RequestMatch {
        match self {
            Leg::Uas(c) => c.match_request(req),
            Leg::Uac(c) if c.matches_request(req) => RequestMatch::Dialog,
            Leg::Uac(_) => RequestMatch::None,
        }
    }

    fn handle_request(&mut self, now: Instant, req: Request) {
        match self {
            Leg::Uas(c) => c.handle_request(now, req),
            Leg::Uac(c) => c.handle_request(now, req),
        }
    }

    fn matches_response(&self, resp: &Response) -> bool {
        match self {
            Leg::Uas(c) => c.matches_response(resp),
            Leg::Uac(c) => c.matches_response(resp),
        }
    }

    fn handle_response(&mut self, now: Instant, resp: Response) {
        match self {
            Leg::Uas(c) => c.handle_response(now, resp),
            Leg::Uac(c) => c.handle_response(now, resp),
        }
    }

    fn refer(&mut self, now: Instant, to: &str) -> bool {
        match self {
            Leg::Uas(c) => c.refer(now, to),
            // Transfer of an outbound call is not built (docs/outbound.md).
            Leg::Uac(_) => false,
        }
    }

    fn ringing(&mut self, now: Instant) {
        if let Leg::Uas(c) = self {
            c.ringing(now)
        }
    }

    fn accept(&mut self, now: Instant, sdp: Bytes) {
        if let Leg::Uas(c) = self {
            c.accept(now, sdp)
        }
    }

    fn reject(
        &mut self,
        now: Instant,
        status: u16,
        reason: &str,
        warning: Option<&str>,
        retry_after: Option<u32>,
    ) {
        match self {
            Leg::Uas(c) => c.reject(now, status, reason, warning, retry_after),
            // Answered already: a call that cannot run is hung up instead.
            Leg::Uac(c) => c.hangup(now),
        }
    }

    fn answer_reoffer(&mut self, now: Instant, answer: Result<Bytes, String>) {
        match self {
            Leg::Uas(c) => c.answer_reoffer(now, answer),
            Leg::Uac(c) => c.answer_reoffer(now, answer.map_err(|_| 488)),
        }
    }
}

/// Sends what the bridge queued for the carrier; returns the number of RTP datagrams.
fn send_datagrams(bridge: &mut Bridge, media: &MediaSockets) -> usize {
    let mut rtp = 0;
    while let Some(d) = bridge.poll_datagram() {
        let sock = match d.component {
            Component::Rtp => {
                rtp += 1;
                &media.rtp
            }
            Component::Rtcp => &media.rtcp,
        };
        if let Err(e) = sock.try_send_to(&d.data, d.dest) {
            trace!(error = %e, "UDP send failed");
        }
    }
    rtp
}

type AgentStream = crate::agent_tls::AgentTls;

/// The agent's next message, or the end of its stream; pending forever without an agent. What
/// was fed to the link is flushed in the same poll. After a read that found nothing, the link
/// reads again only once the TCP socket is readable (`AgentLink::poll_io_when`): the TLS layer
/// never holds undelivered plaintext or a complete record at that point, since the read that
/// found nothing drained it (`AgentTls`'s `poll_read`).
async fn next_agent_io(link: &mut Option<agent::AgentLink<AgentStream>>) -> agent::AgentIo {
    match link {
        Some(l) => {
            std::future::poll_fn(|cx| {
                l.poll_io_when(cx, |tls, cx| {
                    // Ready also on EOF or a socket error, which the read then reports.
                    tls.poll_read_ready(cx).is_ready()
                })
            })
            .await
        }
        None => std::future::pending().await,
    }
}

/// What the carrier sent on the RTP or the RTCP socket, handed to the bridge as it is received:
/// up to `udp_recv::RECV_BATCH` datagrams from one socket in one `recvmmsg`, into the worker
/// thread's buffers (`udp_recv`). Returns the socket, when its datagrams were received and how
/// many it gave, or its receive error. The socket polled first alternates, so that a flood on
/// one cannot starve the other.
async fn recv_carrier(
    media: &MediaSockets,
    bridge: &mut Bridge,
    rtcp_first: &mut bool,
) -> (
    Component,
    Instant,
    std::io::Result<crate::udp_recv::Received>,
) {
    *rtcp_first = !*rtcp_first;
    let mut order = [(Component::Rtp, &media.rtp), (Component::Rtcp, &media.rtcp)];
    if *rtcp_first {
        order.swap(0, 1);
    }
    std::future::poll_fn(|cx| {
        let now = Instant::now();
        for (component, sock) in order {
            let polled = crate::udp_recv::poll_recv_batch(sock, cx, |datagram, from| {
                bridge.handle_carrier_datagram(now, component, from, datagram)
            });
            if let std::task::Poll::Ready(r) = polled {
                return std::task::Poll::Ready((component, now, r));
            }
        }
        std::task::Poll::Pending
    })
    .await
}

/// How long sbc waits for the agent's Close after sending its own.
const AGENT_CLOSE_WAIT: Duration = Duration::from_secs(1);

/// Adds what the bridge counted since `last` to the call's metric handles.
fn report_stats(metrics: &m::CallMedia, bridge: &Bridge, last: &mut srtp_bridge::BridgeStats) {
    let s = bridge.stats();
    metrics.packets(
        s.rtp_in.saturating_sub(last.rtp_in),
        s.rtp_out.saturating_sub(last.rtp_out),
        s.auth_failures.saturating_sub(last.auth_failures),
    );
    *last = s;
}

async fn sleep_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

fn media_params(n: &sdp::Negotiated) -> MediaParams {
    MediaParams {
        suite: n.suite.clone(),
        remote_key: n.remote_key.clone(),
        local_key: n.local_key.clone(),
        remote_rtp: n.remote_rtp,
        remote_rtcp: n.remote_rtcp,
        rtcp_mux: n.rtcp_mux,
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        direction: n.direction,
    }
}

fn end_reason_for(cause: HangupCause) -> &'static str {
    match cause {
        HangupCause::AgentHangup => "agent_hangup",
        HangupCause::RtpTimeout => "rtp_timeout",
        HangupCause::Shutdown => "shutdown",
        HangupCause::Ops => "ops",
        HangupCause::Error => "error",
        HangupCause::AgentStuck => "agent_stuck",
        HangupCause::Api => "api_hangup",
        HangupCause::Transferred => "transferred",
    }
}

fn refuse_488(why: String) -> Refuse {
    Refuse {
        status: 488,
        reason: "Not Acceptable Here",
        warning: Some(sanitize_warning(&why)),
        retry_after: None,
        why,
    }
}

/// Warning text goes inside a quoted-string (RFC 3261 §20.43): no quotes, backslashes or
/// control characters.
fn sanitize_warning(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c == '"' || c == '\\' || c.is_control() {
                '\''
            } else {
                c
            }
        })
        .take(200)
        .collect()
}

/// Picks the agent for a called number: exact matches first, then the longest prefix, then the
/// default route.
pub fn route(routes: &[crate::config::Route], called: &str) -> Option<AgentTarget> {
    route_entry(routes, called).map(|r| r.target.clone())
}

/// [`route`], giving the whole route.
pub fn route_entry<'a>(
    routes: &'a [crate::config::Route],
    called: &str,
) -> Option<&'a crate::config::Route> {
    if let Some(r) = routes
        .iter()
        .find(|r| matches!(&r.matcher, RouteMatch::Exact(n) if n == called))
    {
        return Some(r);
    }
    let best_prefix = routes
        .iter()
        .filter_map(|r| match &r.matcher {
            RouteMatch::Prefix(p) if called.starts_with(p.as_str()) => Some((p.len(), r)),
            _ => None,
        })
        .max_by_key(|(len, _)| *len);
    if let Some((_, r)) = best_prefix {
        return Some(r);
    }
    routes.iter().find(|r| r.matcher == RouteMatch::Default)
}

/// Suite names of every `a=crypto` line in an SDP body, for the audit record of a refusal (names
/// only: the key parameters are never read here).
pub fn offered_suite_names(body: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(body);
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("a=crypto:"))
        .filter_map(|rest| rest.split_whitespace().nth(1))
        .map(|s| {
            s.chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                .take(64)
                .collect()
        })
        .collect()
}

/// Host and port of a SIP URI (`sip:user@host:port;transport=tls`, `<sips:[::1]:5061;lr>`);
/// the port defaults to 5061 (SIP over TLS).
pub fn uri_target(uri: &str) -> Option<(String, u16)> {
    let uri = uri.trim();
    let uri = uri
        .strip_prefix('<')
        .map(|u| u.split('>').next().unwrap_or(u))
        .unwrap_or(uri);
    let rest = uri
        .strip_prefix("sips:")
        .or_else(|| uri.strip_prefix("sip:"))?;
    let hostport = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hostport = hostport.split([';', '?', '>']).next()?;
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        (h.to_string(), after.strip_prefix(':'))
    } else {
        match hostport.split_once(':') {
            Some((h, p)) => (h.to_string(), Some(p)),
            None => (hostport.to_string(), None),
        }
    };
    if host.is_empty() {
        return None;
    }
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => 5061,
    };
    Some((host, port))
}

fn count_media_lines(body: &[u8]) -> usize {
    body.split(|&b| b == b'\n')
        .filter(|l| l.starts_with(b"m="))
        .count()
}

/// The SDP policy (`[srtp] suites`, `[media] codecs` and address) for our answer on `port`.
pub(crate) fn answer_policy(
    cfg: &crate::config::Config,
    port: u16,
    session_id: u64,
    local_key: Option<(sdp::SrtpSuite, sdp::KeySalt)>,
) -> sdp::AnswerPolicy {
    sdp::AnswerPolicy {
        suites: cfg.srtp.suites.clone(),
        codecs: cfg
            .media
            .codecs
            .iter()
            .map(|c| match c {
                CodecName::Pcmu => sdp::Codec::Pcmu,
                CodecName::Pcma => sdp::Codec::Pcma,
            })
            .collect(),
        address: cfg.media.advertise_address,
        port,
        session_id,
        session_version: 1,
        local_key,
        allow_loopback: cfg.media.allow_loopback_media,
    }
}

pub(crate) fn hex32(rng: &mut dyn RngCore) -> String {
    let mut b = [0u8; 16];
    rng.fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

pub(crate) fn session_id(call_id: &str) -> u64 {
    // Any stable number will do (RFC 8866 §5.2 suggests an NTP timestamp); derive from time.
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    t.wrapping_add(call_id.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Route;

    fn r(m: RouteMatch, url: &str) -> Route {
        Route {
            matcher: m,
            target: AgentTarget::Url(url.into()),
            account_sid: None,
            transfer_allow: vec![],
            status_callback: None,
        }
    }

    #[test]
    fn routing_prefers_exact_then_longest_prefix_then_default() {
        let routes = vec![
            r(RouteMatch::Default, "wss://d/"),
            r(RouteMatch::Prefix("+1".into()), "wss://p1/"),
            r(RouteMatch::Prefix("+1555".into()), "wss://p1555/"),
            r(RouteMatch::Exact("+15550002222".into()), "wss://e/"),
        ];
        assert_eq!(
            route(&routes, "+15550002222"),
            Some(AgentTarget::Url("wss://e/".into()))
        );
        assert_eq!(
            route(&routes, "+15550003333"),
            Some(AgentTarget::Url("wss://p1555/".into()))
        );
        assert_eq!(
            route(&routes, "+14155550000"),
            Some(AgentTarget::Url("wss://p1/".into()))
        );
        assert_eq!(
            route(&routes, "+44"),
            Some(AgentTarget::Url("wss://d/".into()))
        );
        assert_eq!(route(&routes[1..], "+44"), None);
    }

    #[test]
    fn offered_suites_are_names_only() {
        let body = b"v=0\r\nm=audio 1 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz|2^20|1:4\r\na=crypto:2 AEAD_AES_256_GCM inline:abc\r\n";
        let names = offered_suite_names(body);
        assert_eq!(names, vec!["AES_CM_128_HMAC_SHA1_80", "AEAD_AES_256_GCM"]);
        assert!(!format!("{names:?}").contains("WVNf"));
    }

    #[test]
    fn uri_targets() {
        assert_eq!(
            uri_target("sip:+1555@10.0.0.1:5071;transport=tls"),
            Some(("10.0.0.1".into(), 5071))
        );
        assert_eq!(
            uri_target("<sip:edge.example;lr>"),
            Some(("edge.example".into(), 5061))
        );
        assert_eq!(uri_target("sips:u@[::1]:5062"), Some(("::1".into(), 5062)));
        assert_eq!(uri_target("tel:+1555"), None);
        assert_eq!(uri_target("sip:u@host:notaport"), None);
    }

    #[test]
    fn warning_text_cannot_break_the_header() {
        assert_eq!(sanitize_warning("a \"b\"\r\nc"), "a 'b'''c");
    }

    /// Size of the future a function returns, without calling it.
    fn returned_size<A, R>(_f: impl FnOnce(A) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    fn returned_size5<A, B, C, D, E, R>(_f: impl FnOnce(A, B, C, D, E) -> R) -> usize {
        std::mem::size_of::<R>()
    }

    /// The call task's future is allocated once per call and lives as long as the call: RSS per
    /// call (docs/performance.md). It was 27.8 KiB (the `Call` stored three times, the agent
    /// connect future and two copies of the `Bridge` inline); now the `Call`, the `Bridge` and
    /// the connect future are boxed, each stored once. `run` was 4,112 bytes with its
    /// `CallSetup` argument and its locals held for the whole call; 3,456 with both out of it
    /// (`start`); 3,472 with the agent leg's own TLS stream (`agent_tls`, whose buffers moved
    /// to the heap and shrank).
    #[test]
    fn call_task_future_stays_small() {
        let run_size = returned_size(run);
        let active_size = returned_size5(Call::active);
        assert!(run_size <= 3472, "call task future {run_size} bytes");
        assert!(
            active_size <= 4 * 1024,
            "media loop future {active_size} bytes"
        );
    }

    /// Every slot of a call's mailbox (32 per block) is a `CallInput`: with the request and the
    /// response inline it was 168 bytes (a 5.4 KiB block per call); boxed, 72 (a 64-byte
    /// `ConnHandle` and a pointer); with the `ConnHandle` one pointer too, 24 (the `String` of
    /// `Transfer`): a 0.8 KiB block.
    #[test]
    fn mailbox_slot_stays_small() {
        let size = std::mem::size_of::<CallInput>();
        assert!(size <= 32, "CallInput is {size} bytes");
        assert_eq!(std::mem::size_of::<ConnHandle>(), 8);
    }

    /// The boxed `Call` lives as long as the call (issue 16): 3,536 bytes with a `UasCall` of
    /// 1,376 and an inline `Option<OutboundInfo>` of 280 that inbound calls leave `None`; 2,784
    /// after those; 2,488 with its own `StdRng` (320 bytes) kept as a `CallRng` seed (32).
    #[test]
    fn call_stays_small() {
        let size = std::mem::size_of::<Call>();
        assert!(size <= 2488, "Call is {size} bytes");
        assert_eq!(
            std::mem::size_of::<Option<Box<crate::outbound::OutboundInfo>>>(),
            8
        );
    }
}
