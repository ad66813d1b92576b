//! The sans-IO UAS side of one call (RFC 3261 §13.3, §17.2.1, §12, §15; RFC 4028).
//!
//! One [`UasCall`] holds the INVITE server transaction, the dialog, the server side of in-dialog
//! requests, our BYE (and session refresh UPDATE) client transactions and the RFC 4028 session
//! timer. Timers are a table of `(deadline, kind)`; over TLS the request retransmit timers
//! (A, E, G) are never armed and the wait timers (I, J, K) are zero, but the UAS core still
//! retransmits 2xx until ACK (RFC 3261 §13.3.1.4).
//!
//! Decisions worth knowing:
//! - A second re-INVITE (or an UPDATE offer) while an offer is unanswered, or any re-INVITE
//!   before the initial INVITE got its final response, is answered `500` with `Retry-After`
//!   (0 to 10 s), as RFC 3261 §14.2 and RFC 3311 §5.2 say. `491` is for glare with an offer of
//!   ours, and sbc never sends offers in a dialog.
//! - A re-INVITE without SDP (offer expected in our 2xx) is answered `488` for now.
//! - `hangup` while our 2xx waits for its ACK sends the BYE when the ACK comes or Timer H fires
//!   (RFC 3261 §15: the callee must not send BYE before the dialog is confirmed).
//! - Session timers: if the UAC supports `timer` and named no refresher we make it the
//!   refresher. When we must refresh, we send an UPDATE without SDP at half the interval, but
//!   only if the carrier's INVITE listed UPDATE in Allow; otherwise we rely on the carrier.
//!   A session interval below our Min-SE is answered `422` by [`UasCall::new`]; the call task
//!   sees `state() == Terminating` right away (or checks
//!   [`UasCall::session_interval_too_small`] first).

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};

use super::message::{name_addr_uri, param, tag_of, Method, Request, Response};
use super::{CallEvent, CallState, HangupCause, SipMessage, UasConfig, ALLOW};

/// What a deadline in the timer table is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    /// Retransmit the pending 2xx (RFC 3261 §13.3.1.4).
    Retransmit2xx,
    /// Timer H for a 2xx: give up waiting for the ACK, send BYE.
    AckTimeout2xx,
    /// Timer H for a non-2xx final response (RFC 3261 §17.2.1).
    TimerH,
    /// Timer F of our BYE (RFC 3261 §17.1.2.2).
    ByeTimeout,
    /// RFC 4028 §10: no refresh from the UAC in time.
    SessionExpiry,
    /// RFC 4028 §10: our turn to refresh.
    SessionRefresh,
    /// Timer F of our refresh UPDATE.
    RefreshTimeout,
}

/// Who refreshes the session (RFC 4028 §9).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refresher {
    Uac,
    Uas,
}

impl Refresher {
    fn as_str(self) -> &'static str {
        match self {
            Refresher::Uac => "uac",
            Refresher::Uas => "uas",
        }
    }
}

/// A negotiated RFC 4028 session timer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SessionTimer {
    pub interval: Duration,
    pub refresher: Refresher,
    /// The UAC listed `timer` in Supported (then our 2xx carries `Require: timer`).
    pub uac_supports: bool,
}

/// The interval is below our Min-SE: answer 422 (RFC 4028 §8.1).
struct TooSmall;

/// RFC 4028 §8, §9: negotiate the session timer from a (re-)INVITE or UPDATE.
fn negotiate(req: &Request, config: &UasConfig) -> Result<Option<SessionTimer>, TooSmall> {
    let uac_supports = req
        .headers
        .get_list("Supported")
        .iter()
        .any(|o| o.eq_ignore_ascii_case("timer"));
    let our_min = config.min_se.as_secs();
    let their_min = req
        .headers
        .get("Min-SE")
        .and_then(|v| v.split(';').next()?.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let floor = our_min.max(their_min);
    let ours = config.session_expires.as_secs().max(floor);
    // Session-Expires = delta-seconds *(SEMI se-params) (RFC 4028 §4); a malformed value is
    // treated as absent.
    let se = req.headers.get("Session-Expires").and_then(|v| {
        let (delta, params) = v.split_once(';').unwrap_or((v, ""));
        let delta: u64 = delta.trim().parse().ok()?;
        let refresher = match param(params, "refresher") {
            Some(r) if r.eq_ignore_ascii_case("uac") => Some(Refresher::Uac),
            Some(r) if r.eq_ignore_ascii_case("uas") => Some(Refresher::Uas),
            _ => None,
        };
        Some((delta, refresher))
    });
    let timer = match se {
        Some((delta, _)) if delta < our_min => return Err(TooSmall),
        Some((delta, refresher)) => {
            // The UAS may lower the interval, never below Min-SE (RFC 4028 §9).
            let interval = delta.min(ours).max(floor).min(delta);
            let refresher = if uac_supports {
                refresher.unwrap_or(Refresher::Uac)
            } else {
                Refresher::Uas
            };
            Some((interval, refresher))
        }
        None if uac_supports => Some((ours, Refresher::Uac)),
        None => None,
    };
    Ok(timer.map(|(secs, refresher)| SessionTimer {
        interval: Duration::from_secs(secs),
        refresher,
        uac_supports,
    }))
}

/// A 2xx to an INVITE waiting for its ACK.
struct Pending2xx {
    response: Response,
    cseq: u32,
    interval: Duration,
    initial: bool,
}

/// Quoted-string content for Warning (RFC 3261 §25.1): no control characters, quotes escaped.
fn quoted(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect::<String>()
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
}

/// A reason phrase without CR/LF (it is written into the status line).
fn phrase(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

fn hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes).map(|_| format!("{:02x}", rng.gen::<u8>())).collect()
}

/// `host:port` with IPv6 literals in brackets (RFC 3261 §25.1 `hostport`).
pub(crate) fn hostport(config: &UasConfig) -> String {
    if config.host.contains(':') && !config.host.starts_with('[') {
        format!("[{}]:{}", config.host, config.port)
    } else {
        format!("{}:{}", config.host, config.port)
    }
}

/// The sans-IO UAS side of one call: the INVITE server transaction, the dialog, in-dialog
/// requests, our BYE client transaction and RFC 4028 session timers.
pub struct UasCall {
    config: UasConfig,
    invite: Request,
    state: CallState,
    rng: StdRng,
    local_tag: String,
    call_id: String,
    invite_branch: Option<String>,
    invite_cseq: u32,
    /// Highest CSeq seen from the carrier (RFC 3261 §12.2.2).
    remote_cseq: u32,
    /// Our CSeq (RFC 3261 §12.2.1.1); the first request we send uses 1.
    local_cseq: u32,
    /// Our side as From of our requests: the INVITE's To with our tag.
    local_party: String,
    /// Their side as To of our requests: the INVITE's From.
    remote_party: String,
    remote_target: String,
    /// Record-Route in order: the UAS route set (RFC 3261 §12.1.1).
    route_set: Vec<String>,
    remote_allows_update: bool,
    last_provisional: Option<Response>,
    final_response: Option<Response>,
    /// A non-2xx final was sent to the initial INVITE: no dialog.
    rejected: bool,
    pending_2xx: Option<Pending2xx>,
    pending_offer: Option<Request>,
    bye_cseq: Option<u32>,
    refresh_cseq: Option<u32>,
    bye_on_ack: bool,
    session: Option<SessionTimer>,
    timers: Vec<(Instant, TimerKind)>,
    transmit: VecDeque<SipMessage>,
    events: VecDeque<CallEvent>,
}

impl UasCall {
    /// Takes the initial INVITE (already validated) and queues `100 Trying`, or `422` with
    /// Min-SE when its Session-Expires is below our Min-SE (RFC 4028 §8.1).
    pub fn new(now: Instant, invite: Request, config: UasConfig, rng: &mut dyn RngCore) -> Self {
        let mut rng = StdRng::seed_from_u64(rng.next_u64());
        let to = invite.headers.get("To").unwrap_or("").to_string();
        let (local_tag, local_party) = match tag_of(&to) {
            Some(t) => (t.to_string(), to.clone()),
            None => {
                let t = hex(&mut rng, 8);
                let party = format!("{to};tag={t}");
                (t, party)
            }
        };
        let remote_party = invite.headers.get("From").unwrap_or("").to_string();
        let remote_target = invite
            .headers
            .get_list("Contact")
            .first()
            .map(|c| name_addr_uri(c).to_string())
            .unwrap_or_else(|| name_addr_uri(&remote_party).to_string());
        let (invite_cseq, _) = invite.cseq().unwrap_or((0, Method::Invite));
        let remote_allows_update = invite
            .headers
            .get_list("Allow")
            .iter()
            .any(|m| m.eq_ignore_ascii_case("UPDATE"));
        let mut call = UasCall {
            state: CallState::Proceeding,
            rng,
            local_tag,
            call_id: invite.call_id().unwrap_or("").to_string(),
            invite_branch: invite.top_via_branch().map(str::to_string),
            invite_cseq,
            remote_cseq: invite_cseq,
            local_cseq: 0,
            local_party,
            remote_party,
            remote_target,
            route_set: invite.headers.get_list("Record-Route"),
            remote_allows_update,
            last_provisional: None,
            final_response: None,
            rejected: false,
            pending_2xx: None,
            pending_offer: None,
            bye_cseq: None,
            refresh_cseq: None,
            bye_on_ack: false,
            session: None,
            timers: Vec::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
            config,
            invite,
        };
        match negotiate(&call.invite, &call.config) {
            Err(TooSmall) => {
                let mut resp = call.response_to(&call.invite.clone(), 422, "Session Interval Too Small");
                resp.headers
                    .push("Min-SE", call.config.min_se.as_secs().to_string());
                call.send_final_error(now, resp);
            }
            Ok(session) => {
                call.session = session;
                let trying = call.response_to(&call.invite.clone(), 100, "Trying");
                call.transmit.push_back(SipMessage::Response(trying));
            }
        }
        call
    }

    /// True when the INVITE's Session-Expires is below `config.min_se`, i.e. [`UasCall::new`]
    /// will answer it `422` (RFC 4028 §8.1).
    pub fn session_interval_too_small(invite: &Request, config: &UasConfig) -> bool {
        negotiate(invite, config).is_err()
    }

    /// Our To tag.
    pub fn local_tag(&self) -> &str {
        &self.local_tag
    }

    /// The negotiated session timer, if any.
    pub fn session_timer(&self) -> Option<SessionTimer> {
        self.session
    }

    /// A request in this dialog or for this INVITE (ACK, CANCEL, BYE, re-INVITE, UPDATE, INFO,
    /// OPTIONS, a retransmitted INVITE).
    pub fn handle_request(&mut self, now: Instant, request: Request) {
        let is_ack = request.method == Method::Ack;
        if self.state == CallState::Terminated || request.call_id() != Some(self.call_id.as_str())
        {
            if !is_ack {
                self.respond(&request, 481, "Call/Transaction Does Not Exist");
            }
            return;
        }
        let Some((cseq, _)) = request.cseq() else {
            if !is_ack {
                self.respond(&request, 400, "Bad CSeq");
            }
            return;
        };
        match request.method {
            Method::Ack => self.on_ack(now, cseq),
            Method::Cancel => self.on_cancel(now, &request, cseq),
            Method::Invite
                if cseq == self.invite_cseq
                    && request.top_via_branch() == self.invite_branch.as_deref() =>
            {
                // A retransmission of the initial INVITE (RFC 3261 §17.2.1).
                let again = if self.state == CallState::Proceeding {
                    self.last_provisional.clone().or_else(|| {
                        Some(self.response_to(&self.invite.clone(), 100, "Trying"))
                    })
                } else {
                    self.final_response.clone()
                };
                if let Some(r) = again {
                    self.transmit.push_back(SipMessage::Response(r));
                }
            }
            _ => self.in_dialog(now, request, cseq),
        }
    }

    /// A response to a request we sent (BYE, session refresh).
    pub fn handle_response(&mut self, now: Instant, response: Response) {
        if response.headers.get("Call-ID") != Some(self.call_id.as_str()) || response.status < 200
        {
            return;
        }
        let Some((cseq, method)) = response.cseq() else {
            return;
        };
        match method {
            Method::Bye if self.bye_cseq == Some(cseq) => self.terminate(),
            Method::Update if self.refresh_cseq == Some(cseq) => {
                self.refresh_cseq = None;
                self.cancel_timers(TimerKind::RefreshTimeout);
                if (200..300).contains(&response.status) {
                    self.arm_session(now);
                } else if matches!(response.status, 408 | 481) {
                    // The dialog is gone on the other side (RFC 4028 §10, RFC 5057).
                    self.events.push_back(CallEvent::SessionExpired);
                    self.send_bye(now);
                } else {
                    tracing::debug!(status = response.status, "session refresh refused");
                }
            }
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        // Fire due timers in deadline order; a handler may arm new ones that are due too.
        while let Some(i) = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, (d, _))| *d <= now)
            .min_by_key(|(_, (d, _))| *d)
            .map(|(i, _)| i)
        {
            let (deadline, kind) = self.timers.swap_remove(i);
            self.fire(now, deadline, kind);
        }
    }

    fn fire(&mut self, now: Instant, deadline: Instant, kind: TimerKind) {
        match kind {
            TimerKind::Retransmit2xx => {
                let t2 = self.config.t2;
                if let Some(p) = &mut self.pending_2xx {
                    self.transmit
                        .push_back(SipMessage::Response(p.response.clone()));
                    p.interval = (p.interval * 2).min(t2);
                    let next = deadline + p.interval;
                    self.timers.push((next, TimerKind::Retransmit2xx));
                }
            }
            TimerKind::AckTimeout2xx => {
                if self.pending_2xx.take().is_some() {
                    self.cancel_timers(TimerKind::Retransmit2xx);
                    if self.state == CallState::Accepted {
                        self.state = CallState::Confirmed;
                    }
                    self.events.push_back(CallEvent::AckTimeout);
                    self.send_bye(now);
                }
            }
            TimerKind::TimerH | TimerKind::ByeTimeout => self.terminate(),
            TimerKind::SessionExpiry => {
                self.events.push_back(CallEvent::SessionExpired);
                self.send_bye(now);
            }
            TimerKind::SessionRefresh => self.send_refresh(now),
            TimerKind::RefreshTimeout => {
                self.refresh_cseq = None;
                self.events.push_back(CallEvent::SessionExpired);
                self.send_bye(now);
            }
        }
    }

    /// Queue `180 Ringing`.
    pub fn ringing(&mut self, now: Instant) {
        let _ = now;
        if self.state != CallState::Proceeding {
            return;
        }
        let mut resp = self.response_to(&self.invite.clone(), 180, "Ringing");
        resp.headers.push("Contact", self.contact());
        self.last_provisional = Some(resp.clone());
        self.transmit.push_back(SipMessage::Response(resp));
    }

    /// Queue `200 OK` with our SDP answer; retransmitted (T1 doubling to T2) until ACK; Timer H.
    pub fn accept(&mut self, now: Instant, sdp: Bytes) {
        if self.state != CallState::Proceeding {
            return;
        }
        let resp = self.ok_with_sdp(&self.invite.clone(), Some(sdp));
        self.final_response = Some(resp.clone());
        self.state = CallState::Accepted;
        self.start_2xx(now, resp, self.invite_cseq, true);
        self.arm_session(now);
    }

    /// Queue a final error response. `warning` becomes `Warning: 399 <host> "<warning>"`.
    pub fn reject(
        &mut self,
        now: Instant,
        status: u16,
        reason: &str,
        warning: Option<&str>,
        retry_after: Option<u32>,
    ) {
        if self.state != CallState::Proceeding {
            return;
        }
        let status = if (300..700).contains(&status) {
            status
        } else {
            500
        };
        let mut resp = self.response_to(&self.invite.clone(), status, &phrase(reason));
        if let Some(w) = warning {
            resp.headers.push("Warning", self.warning(w));
        }
        if let Some(s) = retry_after {
            resp.headers.push("Retry-After", s.to_string());
        }
        if matches!(status, 405 | 501) {
            resp.headers.push("Allow", ALLOW);
        }
        self.send_final_error(now, resp);
    }

    /// Answer the pending `ReOffer`: `Ok(sdp)` sends 200 with it, `Err(warning)` sends 488.
    pub fn answer_reoffer(&mut self, now: Instant, answer: Result<Bytes, String>) {
        let Some(req) = self.pending_offer.take() else {
            return;
        };
        match answer {
            Ok(sdp) => {
                if let Ok(session) = negotiate(&req, &self.config) {
                    if session.is_some() {
                        self.session = session;
                    }
                }
                self.refresh_target(&req);
                let resp = self.ok_with_sdp(&req, Some(sdp));
                if req.method == Method::Invite {
                    let cseq = req.cseq().map(|c| c.0).unwrap_or(0);
                    self.start_2xx(now, resp, cseq, false);
                } else {
                    self.transmit.push_back(SipMessage::Response(resp));
                }
                self.arm_session(now);
            }
            Err(warning) => {
                let mut resp = self.response_to(&req, 488, "Not Acceptable Here");
                resp.headers.push("Warning", self.warning(&warning));
                self.transmit.push_back(SipMessage::Response(resp));
            }
        }
    }

    /// End the call from our side: BYE once confirmed (or when the ACK comes), else a final error.
    pub fn hangup(&mut self, now: Instant, cause: HangupCause) {
        match self.state {
            CallState::Proceeding => {
                let (status, reason) = match cause {
                    HangupCause::AgentHangup | HangupCause::RtpTimeout => {
                        (480, "Temporarily Unavailable")
                    }
                    HangupCause::Shutdown | HangupCause::Ops => (503, "Service Unavailable"),
                    HangupCause::Error => (500, "Server Internal Error"),
                };
                self.reject(now, status, reason, Some(cause_text(cause)), None);
            }
            CallState::Accepted => self.bye_on_ack = true,
            CallState::Confirmed => self.send_bye(now),
            CallState::Terminating | CallState::Terminated => {}
        }
    }

    /// Next message to send on the dialog's connection.
    pub fn poll_transmit(&mut self) -> Option<SipMessage> {
        self.transmit.pop_front()
    }

    pub fn poll_event(&mut self) -> Option<CallEvent> {
        self.events.pop_front()
    }

    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().map(|(d, _)| *d).min()
    }

    pub fn state(&self) -> CallState {
        self.state
    }

    // --- in-dialog requests -------------------------------------------------------------

    fn in_dialog(&mut self, now: Instant, req: Request, cseq: u32) {
        let to_tag = req.headers.get("To").and_then(tag_of);
        if to_tag != Some(self.local_tag.as_str()) || self.rejected {
            if to_tag.is_none() && req.method == Method::Invite && !self.rejected {
                // Same Call-ID, new transaction, no To tag: a merged request (RFC 3261 §8.2.2.2).
                self.respond(&req, 482, "Loop Detected");
            } else {
                self.respond(&req, 481, "Call/Transaction Does Not Exist");
            }
            return;
        }
        // RFC 3261 §12.2.2: a lower CSeq is out of order.
        if cseq < self.remote_cseq {
            self.respond(&req, 500, "CSeq Out of Order");
            return;
        }
        self.remote_cseq = cseq;
        match req.method {
            Method::Bye => self.on_bye(now, &req),
            Method::Invite | Method::Update => self.on_offer(now, req),
            Method::Options => {
                let mut resp = self.response_to(&req, 200, "OK");
                resp.headers.push("Allow", ALLOW);
                resp.headers.push("Accept", "application/sdp");
                resp.headers.push("Supported", "timer");
                self.transmit.push_back(SipMessage::Response(resp));
            }
            Method::Info => self.on_info(&req),
            Method::Refer | Method::Other(_) => {
                let mut resp = self.response_to(&req, 501, "Not Implemented");
                resp.headers.push("Allow", ALLOW);
                self.transmit.push_back(SipMessage::Response(resp));
            }
            _ => {
                let mut resp = self.response_to(&req, 405, "Method Not Allowed");
                resp.headers.push("Allow", ALLOW);
                self.transmit.push_back(SipMessage::Response(resp));
            }
        }
    }

    fn on_ack(&mut self, _now: Instant, cseq: u32) {
        if self.pending_2xx.as_ref().is_some_and(|p| p.cseq == cseq) {
            let p = self.pending_2xx.take();
            self.cancel_timers(TimerKind::Retransmit2xx);
            self.cancel_timers(TimerKind::AckTimeout2xx);
            if p.is_some_and(|p| p.initial) && self.state == CallState::Accepted {
                self.state = CallState::Confirmed;
                self.events.push_back(CallEvent::Confirmed);
                if self.bye_on_ack {
                    self.send_bye(_now);
                }
            }
        } else if self.rejected && cseq == self.invite_cseq && self.state == CallState::Terminating
        {
            // ACK of our non-2xx final: over TLS Timer I is zero (RFC 3261 §17.2.1).
            self.terminate();
        }
        // Other ACKs (for a 488 to a re-INVITE, duplicates) are absorbed.
    }

    fn on_cancel(&mut self, now: Instant, req: &Request, cseq: u32) {
        // RFC 3261 §9.2: CANCEL matches the INVITE by branch (and Call-ID, CSeq number).
        let matches =
            cseq == self.invite_cseq && req.top_via_branch() == self.invite_branch.as_deref();
        if !matches {
            self.respond(req, 481, "Call/Transaction Does Not Exist");
            return;
        }
        self.respond(req, 200, "OK");
        if self.state == CallState::Proceeding {
            let resp = self.response_to(&self.invite.clone(), 487, "Request Terminated");
            self.events.push_back(CallEvent::Cancelled);
            self.send_final_error(now, resp);
        }
    }

    fn on_bye(&mut self, now: Instant, req: &Request) {
        let _ = now;
        self.respond(req, 200, "OK");
        if self.state == CallState::Proceeding {
            // RFC 3261 §15.1.2: answer the pending INVITE, 487 recommended.
            let resp = self.response_to(&self.invite.clone(), 487, "Request Terminated");
            self.transmit.push_back(SipMessage::Response(resp));
        }
        if let Some(pending) = self.pending_offer.take() {
            self.respond(&pending, 487, "Request Terminated");
        }
        self.events.push_back(CallEvent::RemoteBye);
        self.terminate();
    }

    /// re-INVITE or UPDATE (RFC 3261 §14.2, RFC 3311 §5.2, RFC 4028 §9).
    fn on_offer(&mut self, now: Instant, req: Request) {
        let _ = now;
        if self.state == CallState::Terminating {
            self.respond(&req, 481, "Call/Transaction Does Not Exist");
            return;
        }
        let has_sdp = !req.body.is_empty();
        let is_invite = req.method == Method::Invite;
        let busy = self.pending_offer.is_some()
            || (is_invite && self.pending_2xx.is_some())
            || (self.state == CallState::Proceeding && (is_invite || has_sdp));
        if busy {
            let mut resp = self.response_to(&req, 500, "Server Internal Error");
            let secs = self.rng.gen_range(0..=10u32);
            resp.headers.push("Retry-After", secs.to_string());
            self.transmit.push_back(SipMessage::Response(resp));
            return;
        }
        let session = match negotiate(&req, &self.config) {
            Ok(s) => s,
            Err(TooSmall) => {
                let mut resp = self.response_to(&req, 422, "Session Interval Too Small");
                resp.headers
                    .push("Min-SE", self.config.min_se.as_secs().to_string());
                self.transmit.push_back(SipMessage::Response(resp));
                return;
            }
        };
        if has_sdp {
            self.events.push_back(CallEvent::ReOffer {
                sdp: req.body.clone(),
            });
            self.pending_offer = Some(req);
            return;
        }
        if is_invite {
            let mut resp = self.response_to(&req, 488, "Not Acceptable Here");
            resp.headers.push(
                "Warning",
                self.warning("re-INVITE without SDP offer not supported"),
            );
            self.transmit.push_back(SipMessage::Response(resp));
            return;
        }
        // UPDATE without SDP: a session refresh (RFC 4028 §9).
        if self.state == CallState::Proceeding {
            let resp = self.response_to(&req, 200, "OK");
            self.transmit.push_back(SipMessage::Response(resp));
            return;
        }
        if session.is_some() {
            self.session = session;
        }
        self.refresh_target(&req);
        let resp = self.ok_with_sdp(&req, None);
        self.transmit.push_back(SipMessage::Response(resp));
        self.arm_session(now);
    }

    /// INFO with DTMF (application/dtmf-relay, application/dtmf).
    fn on_info(&mut self, req: &Request) {
        if req.body.is_empty() {
            self.respond(req, 200, "OK");
            return;
        }
        let ctype = req
            .headers
            .get("Content-Type")
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let body = String::from_utf8_lossy(&req.body);
        let dtmf = match ctype.as_str() {
            "application/dtmf-relay" => parse_dtmf_relay(&body),
            "application/dtmf" => body
                .split_whitespace()
                .next()
                .and_then(dtmf_digit)
                .map(|d| (d, Duration::ZERO)),
            _ => {
                let mut resp = self.response_to(req, 415, "Unsupported Media Type");
                resp.headers
                    .push("Accept", "application/dtmf-relay, application/dtmf");
                self.transmit.push_back(SipMessage::Response(resp));
                return;
            }
        };
        self.respond(req, 200, "OK");
        match dtmf {
            Some((digit, duration)) => self.events.push_back(CallEvent::Dtmf { digit, duration }),
            None => tracing::debug!("INFO DTMF body not understood"),
        }
    }

    // --- building and sending -----------------------------------------------------------

    fn contact(&self) -> String {
        format!("<sip:sbc@{};transport=tls>", hostport(&self.config))
    }

    fn warning(&self, text: &str) -> String {
        // Warning: 399 is "Miscellaneous warning" (RFC 3261 §20.43).
        format!("399 {} \"{}\"", self.config.host, quoted(text))
    }

    /// A response to `req` with our To tag (not on 100, RFC 3261 §8.2.6.2) and Server.
    fn response_to(&self, req: &Request, status: u16, reason: &str) -> Response {
        let tag = (status > 100).then_some(self.local_tag.as_str());
        let mut resp = req.response(status, reason, tag);
        if let Some(s) = &self.config.server_header {
            resp.headers.push("Server", s.clone());
        }
        resp
    }

    fn respond(&mut self, req: &Request, status: u16, reason: &str) {
        let resp = self.response_to(req, status, reason);
        self.transmit.push_back(SipMessage::Response(resp));
    }

    /// 200 OK to an INVITE or UPDATE: Contact, Allow, Supported, session timer, SDP.
    fn ok_with_sdp(&self, req: &Request, sdp: Option<Bytes>) -> Response {
        let mut resp = self.response_to(req, 200, "OK");
        resp.headers.push("Contact", self.contact());
        resp.headers.push("Allow", ALLOW);
        resp.headers.push("Supported", "timer");
        if let Some(s) = &self.session {
            resp.headers.push(
                "Session-Expires",
                format!("{};refresher={}", s.interval.as_secs(), s.refresher.as_str()),
            );
            if s.uac_supports {
                resp.headers.push("Require", "timer");
            }
        }
        if let Some(sdp) = sdp {
            resp.headers.push("Content-Type", "application/sdp");
            resp.body = sdp;
        }
        resp
    }

    fn start_2xx(&mut self, now: Instant, resp: Response, cseq: u32, initial: bool) {
        self.transmit.push_back(SipMessage::Response(resp.clone()));
        self.cancel_timers(TimerKind::Retransmit2xx);
        self.cancel_timers(TimerKind::AckTimeout2xx);
        self.pending_2xx = Some(Pending2xx {
            response: resp,
            cseq,
            interval: self.config.t1,
            initial,
        });
        self.timers
            .push((now + self.config.t1, TimerKind::Retransmit2xx));
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::AckTimeout2xx));
    }

    /// A non-2xx final to the initial INVITE; wait for its ACK (Timer H).
    fn send_final_error(&mut self, now: Instant, resp: Response) {
        self.final_response = Some(resp.clone());
        self.transmit.push_back(SipMessage::Response(resp));
        self.rejected = true;
        self.state = CallState::Terminating;
        self.timers.clear();
        self.timers.push((now + 64 * self.config.t1, TimerKind::TimerH));
    }

    /// RFC 4028 §10: arm the expiry (UAC refreshes) or our refresh (we refresh).
    fn arm_session(&mut self, now: Instant) {
        self.cancel_timers(TimerKind::SessionExpiry);
        self.cancel_timers(TimerKind::SessionRefresh);
        let Some(s) = self.session else {
            return;
        };
        match s.refresher {
            Refresher::Uac => {
                // BYE at the interval minus the minimum of 32 s and a third of it (§10).
                let margin = Duration::from_secs(32).min(s.interval / 3);
                self.timers
                    .push((now + s.interval - margin, TimerKind::SessionExpiry));
            }
            Refresher::Uas if self.remote_allows_update => {
                self.timers
                    .push((now + s.interval / 2, TimerKind::SessionRefresh));
            }
            Refresher::Uas => {}
        }
    }

    /// RFC 3261 §12.2.2: a target refresh request replaces the remote target.
    fn refresh_target(&mut self, req: &Request) {
        if let Some(c) = req.headers.get_list("Contact").first() {
            self.remote_target = name_addr_uri(c).to_string();
        }
    }

    /// A request within the dialog (RFC 3261 §12.2.1.1).
    fn dialog_request(&mut self, method: Method) -> Request {
        self.local_cseq += 1;
        let mut uri = self.remote_target.clone();
        let mut routes = self.route_set.clone();
        let loose = routes.first().is_none_or(|r| {
            let u = name_addr_uri(r);
            u.split(';').skip(1).any(|p| {
                p.split('=')
                    .next()
                    .is_some_and(|n| n.trim().eq_ignore_ascii_case("lr"))
            })
        });
        if !loose {
            // Strict router: it becomes the Request-URI, the remote target the last route.
            let first = routes.remove(0);
            routes.push(format!("<{uri}>"));
            uri = name_addr_uri(&first).to_string();
        }
        let mut h = super::Headers::default();
        h.push(
            "Via",
            format!(
                "SIP/2.0/TLS {};branch=z9hG4bK{}",
                hostport(&self.config),
                hex(&mut self.rng, 8)
            ),
        );
        h.push("Max-Forwards", "70");
        for r in routes {
            h.push("Route", r);
        }
        h.push("From", self.local_party.clone());
        h.push("To", self.remote_party.clone());
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{} {}", self.local_cseq, method));
        if let Some(s) = &self.config.server_header {
            h.push("User-Agent", s.clone());
        }
        h.push("Content-Length", "0");
        Request {
            method,
            uri,
            headers: h,
            body: Bytes::new(),
        }
    }

    fn send_bye(&mut self, now: Instant) {
        if self.bye_cseq.is_some() || self.state == CallState::Terminated {
            return;
        }
        if let Some(pending) = self.pending_offer.take() {
            self.respond(&pending, 487, "Request Terminated");
        }
        let bye = self.dialog_request(Method::Bye);
        self.bye_cseq = Some(self.local_cseq);
        self.pending_2xx = None;
        self.refresh_cseq = None;
        self.timers.clear();
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::ByeTimeout));
        self.state = CallState::Terminating;
        self.transmit.push_back(SipMessage::Request(bye));
    }

    /// RFC 4028 §7.4: a refresh UPDATE without SDP, Session-Expires with refresher=uas.
    fn send_refresh(&mut self, now: Instant) {
        let Some(s) = self.session else {
            return;
        };
        if self.state != CallState::Confirmed || self.refresh_cseq.is_some() {
            return;
        }
        let mut req = self.dialog_request(Method::Update);
        req.headers.push("Contact", self.contact());
        req.headers.push(
            "Session-Expires",
            format!("{};refresher=uas", s.interval.as_secs()),
        );
        req.headers.push("Supported", "timer");
        self.refresh_cseq = Some(self.local_cseq);
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::RefreshTimeout));
        self.transmit.push_back(SipMessage::Request(req));
    }

    fn cancel_timers(&mut self, kind: TimerKind) {
        self.timers.retain(|(_, k)| *k != kind);
    }

    fn terminate(&mut self) {
        if self.state == CallState::Terminated {
            return;
        }
        self.state = CallState::Terminated;
        self.timers.clear();
        self.pending_2xx = None;
        self.events.push_back(CallEvent::Terminated);
    }
}

fn cause_text(cause: HangupCause) -> &'static str {
    match cause {
        HangupCause::AgentHangup => "agent hung up",
        HangupCause::RtpTimeout => "media timeout",
        HangupCause::Shutdown => "shutting down",
        HangupCause::Ops => "ended by operator",
        HangupCause::Error => "internal error",
    }
}

/// A DTMF event name (RFC 4733 §3.2 event codes 0-15 accepted as numbers too).
fn dtmf_digit(s: &str) -> Option<char> {
    let s = s.trim();
    let digit = match s.parse::<u8>() {
        Ok(n @ 0..=9) => char::from(b'0' + n),
        Ok(10) => '*',
        Ok(11) => '#',
        Ok(n @ 12..=15) => char::from(b'A' + n - 12),
        Ok(_) => return None,
        Err(_) => {
            let mut chars = s.chars();
            let c = chars.next()?.to_ascii_uppercase();
            if chars.next().is_some() || !matches!(c, '*' | '#' | 'A'..='D') {
                return None;
            }
            c
        }
    };
    Some(digit)
}

/// `application/dtmf-relay`: `Signal=5` and `Duration=160` (milliseconds) lines.
fn parse_dtmf_relay(body: &str) -> Option<(char, Duration)> {
    let mut digit = None;
    let mut duration = Duration::ZERO;
    for line in body.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "signal" => digit = dtmf_digit(v),
            "duration" => {
                duration = Duration::from_millis(v.trim().parse().ok()?);
            }
            _ => {}
        }
    }
    Some((digit?, duration))
}

