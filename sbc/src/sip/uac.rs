//! The sans-IO UAC side of one outbound call (RFC 3261 §13.2, §17.1.1, §9.1, §12, §15, §22;
//! RFC 4028 as UAC), beside the UAS core in `call.rs` and with the same shape:
//! `new` queues the INVITE, then `handle_response` / `handle_request` / `handle_timeout`,
//! `poll_transmit` / `poll_event` / `poll_timeout`.
//!
//! Over TLS only: the retransmit timers (A, E) are never armed and the wait timers (D, K) are
//! zero; Timer B (64*T1) bounds the INVITE until a provisional response arrives, Timer F (64*T1)
//! bounds BYE, CANCEL and refreshes.
//!
//! Decisions worth knowing:
//! - One retry with credentials after 401/407 (RFC 3261 §22.2); a second challenge is a failed
//!   call with that status (a wrong password shows as `407`).
//! - One retry after `422 Session Interval Too Small`, with the Min-SE it names (RFC 4028 §7.4).
//! - The ring timeout (`Timeout` of the API) sends CANCEL, but never before a provisional
//!   response (RFC 3261 §9.1): if none came, the CANCEL waits for one and Timer B ends the call.
//! - A 2xx that races our CANCEL is ACKed and followed by BYE (RFC 3261 §9.1); a 2xx from a
//!   second fork is ACKed and sent BYE (§13.2.2.4). Retransmitted 2xx get the same ACK again.
//! - Session timers: the INVITE asks for `timer` with `[sip] session_expires_secs`; when the 2xx
//!   makes us the refresher we refresh at half the interval, by UPDATE without SDP when the peer
//!   allows UPDATE, else by re-INVITE with our offer. Without a refresh from the peer when it is
//!   the refresher, BYE at `interval - min(32 s, interval/3)` (RFC 4028 §10). A 2xx without
//!   `Session-Expires` means no session timer (RFC 4028 §7.2).
//! - Twilio statuses: 486/600 → `busy`, our ring timeout → `no-answer`, our cancel →
//!   `canceled`, every other failure → `failed`, 2xx → `in-progress`.

use std::collections::VecDeque;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::{rngs::StdRng, Rng, RngCore, SeedableRng};

use super::call::hostport;
use super::digest::{header_names, Challenge, Credentials};
use super::message::{name_addr_uri, param, split_addr, tag_of, Body, Method, Request, Response};
use super::{Headers, Refresher, SipMessage, UasConfig, ALLOW};

/// The call's status in Twilio's vocabulary (REST `status` and status callbacks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TwilioStatus {
    Queued,
    Ringing,
    InProgress,
    Completed,
    Busy,
    NoAnswer,
    Failed,
    Canceled,
}

impl TwilioStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TwilioStatus::Queued => "queued",
            TwilioStatus::Ringing => "ringing",
            TwilioStatus::InProgress => "in-progress",
            TwilioStatus::Completed => "completed",
            TwilioStatus::Busy => "busy",
            TwilioStatus::NoAnswer => "no-answer",
            TwilioStatus::Failed => "failed",
            TwilioStatus::Canceled => "canceled",
        }
    }
}

/// Why we cancelled the INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CancelCause {
    /// The ring timeout (`Timeout`) passed.
    RingTimeout,
    /// The API asked (`Status=canceled`) or sbc is shutting down.
    Requested,
}

/// The Twilio status of a failed INVITE with final `status`, given whether we cancelled it.
pub fn twilio_status_for(status: u16, cancelled: Option<CancelCause>) -> TwilioStatus {
    match (status, cancelled) {
        (200..=299, _) => TwilioStatus::InProgress,
        (486 | 600, _) => TwilioStatus::Busy,
        (_, Some(CancelCause::RingTimeout)) => TwilioStatus::NoAnswer,
        (_, Some(CancelCause::Requested)) => TwilioStatus::Canceled,
        _ => TwilioStatus::Failed,
    }
}

/// What to dial. Debug leaves out the SDP (it carries SRTP keys).
#[derive(Clone)]
pub struct Dial {
    /// `sip:+15105550123@example.pstn.twilio.com;transport=tls`.
    pub request_uri: String,
    /// From without tag: `<sip:+14155550100@example.pstn.twilio.com>` (a Twilio number).
    pub from: String,
    /// To: `<sip:+15105550123@example.pstn.twilio.com>`.
    pub to: String,
    /// Our SDP offer ([`SdesOffer`]).
    pub sdp: Bytes,
    /// Digest credentials for the 401/407 retry; `None` fails on a challenge.
    pub credentials: Option<Credentials>,
    /// Ringing time before CANCEL (`Timeout`, default 60 s).
    pub ring_timeout: Duration,
    /// 183 with SDP becomes [`UacEvent::EarlyMedia`]; otherwise it counts as ringing.
    pub early_media: bool,
    /// Extra headers on the INVITE (e.g. `X-` headers), written as given.
    pub headers: Vec<(String, String)>,
}

impl std::fmt::Debug for Dial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dial")
            .field("request_uri", &self.request_uri)
            .field("from", &self.from)
            .field("to", &self.to)
            .field("sdp", &format_args!("<{} bytes, redacted>", self.sdp.len()))
            .field("credentials", &self.credentials)
            .field("ring_timeout", &self.ring_timeout)
            .field("early_media", &self.early_media)
            .finish_non_exhaustive()
    }
}

/// What the call task must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum UacEvent {
    /// 100 Trying (first one only).
    Trying,
    /// 180, or 183 without early media (first one only): Twilio status `ringing`.
    Ringing,
    /// 183 with SDP on a trunk with `early_media` (first one only): start media.
    EarlyMedia { sdp: Body },
    /// 2xx, ACK sent: the answer SDP goes through the SRTP policy now.
    Answered { sdp: Body },
    /// The INVITE failed (final non-2xx, Timer B, a cancel, or a 2xx that raced our CANCEL).
    Failed {
        status: u16,
        reason: String,
        twilio_status: TwilioStatus,
    },
    /// The peer sent BYE (200 queued).
    RemoteBye,
    /// A re-INVITE or UPDATE from the peer with an SDP offer: answer with `answer_reoffer`.
    ReOffer { sdp: Body },
    /// RFC 4028: the session expired or our refresh failed; BYE queued.
    SessionExpired,
    /// Nothing more will happen; the task may exit after draining `poll_transmit`.
    Terminated,
}

/// Coarse state, RFC 3261 §17.1.1.2 names for the INVITE client transaction, then the dialog.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UacState {
    /// INVITE sent, no response yet (Timer B armed).
    Calling,
    /// A provisional response came.
    Proceeding,
    /// CANCEL sent (or waiting for a provisional response to send it).
    Cancelling,
    /// 2xx ACKed.
    Confirmed,
    /// Our BYE is outstanding.
    Terminating,
    Terminated,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimerKind {
    /// RFC 3261 §17.1.1.2: no response to the INVITE within 64*T1.
    TimerB,
    /// The API's `Timeout`.
    Ring,
    /// RFC 3261 §9.1: no final response 64*T1 after CANCEL.
    CancelTimeout,
    /// Timer F of our BYE.
    ByeTimeout,
    /// RFC 4028 §10: our turn to refresh.
    SessionRefresh,
    /// RFC 4028 §10: no refresh in time.
    SessionExpiry,
    /// Timer F of our refresh.
    RefreshTimeout,
}

/// The dialog (RFC 3261 §12.1.2, UAC side).
#[derive(Clone, Debug)]
struct Dialog {
    remote_tag: String,
    /// The To header of the 2xx (with its tag).
    to: String,
    remote_target: String,
    /// Record-Route of the 2xx, reversed.
    route_set: Vec<String>,
}

const MAX_DELTA_SECONDS: u64 = u32::MAX as u64;

/// The sans-IO UAC side of one call.
pub struct UacCall {
    config: UasConfig,
    dial: Dial,
    rng: StdRng,
    call_id: String,
    from_tag: String,
    /// The INVITE in flight (the latest one, after an auth or 422 retry).
    invite: Request,
    cseq: u32,
    auth_retried: bool,
    interval_retried: bool,
    session_expires: Duration,
    state: UacState,
    cancel: Option<CancelCause>,
    cancel_sent: bool,
    provisional: bool,
    trying_seen: bool,
    ringing_seen: bool,
    early_seen: bool,
    /// The SDP of the 183 that started early media: the answer to our offer (RFC 3264 §5), which
    /// a later 2xx may only repeat.
    early_sdp: Option<Body>,
    dialog: Option<Dialog>,
    /// The ACK of our 2xx, sent again for each retransmitted 2xx.
    ack: Option<Request>,
    bye_cseq: Option<u32>,
    refresh: Option<(u32, Method)>,
    session: Option<(Duration, Refresher)>,
    peer_allows_update: bool,
    /// An in-dialog re-INVITE/UPDATE from the peer waiting for `answer_reoffer`.
    pending_reoffer: Option<Request>,
    timers: Vec<(Instant, TimerKind)>,
    transmit: VecDeque<SipMessage>,
    events: VecDeque<UacEvent>,
}

/// Messages hold our SDP offer (SRTP keys): Debug shows the dialog's identity and state only.
impl std::fmt::Debug for UacCall {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UacCall")
            .field("call_id", &self.call_id)
            .field("from_tag", &self.from_tag)
            .field("cseq", &self.cseq)
            .field("state", &self.state)
            .field("cancel", &self.cancel)
            .field("session", &self.session)
            .field("timers", &self.timers)
            .finish_non_exhaustive()
    }
}

fn hex(rng: &mut StdRng, bytes: usize) -> String {
    (0..bytes)
        .map(|_| format!("{:02x}", rng.gen::<u8>()))
        .collect()
}

/// The top Via's branch of a response.
fn top_branch(headers: &Headers) -> Option<&str> {
    let via = headers.get("Via")?;
    let first = super::message::split_list(via).next()?;
    param(first.split_once(';')?.1, "branch")
}

/// `Session-Expires: delta;refresher=...` (RFC 4028 §4).
fn session_expires(headers: &Headers) -> Option<(u64, Option<Refresher>)> {
    let v = headers.get("Session-Expires")?;
    let (delta, params) = v.split_once(';').unwrap_or((v, ""));
    let delta = delta.trim().parse::<u64>().ok()?.min(MAX_DELTA_SECONDS);
    let refresher = match param(params, "refresher") {
        Some(r) if r.eq_ignore_ascii_case("uac") => Some(Refresher::Uac),
        Some(r) if r.eq_ignore_ascii_case("uas") => Some(Refresher::Uas),
        _ => None,
    };
    Some((delta, refresher))
}

impl UacCall {
    /// Builds the INVITE, queues it, arms Timer B and the ring timeout.
    pub fn new(now: Instant, dial: Dial, config: UasConfig, rng: &mut dyn RngCore) -> UacCall {
        let mut rng = StdRng::from_seed({
            let mut seed = [0u8; 32];
            rng.fill_bytes(&mut seed);
            seed
        });
        let call_id = format!("{}@{}", hex(&mut rng, 16), config.host);
        let from_tag = hex(&mut rng, 8);
        let session_expires = config.session_expires.max(config.min_se);
        let placeholder = Request {
            method: Method::Invite,
            uri: dial.request_uri.clone(),
            headers: Headers::default(),
            body: Body::default(),
        };
        let mut call = UacCall {
            config,
            dial,
            rng,
            call_id,
            from_tag,
            invite: placeholder,
            cseq: 0,
            auth_retried: false,
            interval_retried: false,
            session_expires,
            state: UacState::Calling,
            cancel: None,
            cancel_sent: false,
            provisional: false,
            trying_seen: false,
            ringing_seen: false,
            early_seen: false,
            early_sdp: None,
            dialog: None,
            ack: None,
            bye_cseq: None,
            refresh: None,
            session: None,
            peer_allows_update: false,
            pending_reoffer: None,
            timers: Vec::new(),
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        };
        call.send_invite(now, None);
        let ring = now + call.dial.ring_timeout;
        call.timers.push((ring, TimerKind::Ring));
        call
    }

    pub fn call_id(&self) -> &str {
        &self.call_id
    }
    pub fn local_tag(&self) -> &str {
        &self.from_tag
    }
    pub fn state(&self) -> UacState {
        self.state
    }
    /// The negotiated session interval and refresher, once answered.
    pub fn session_timer(&self) -> Option<(Duration, Refresher)> {
        self.session
    }

    fn via(&mut self) -> (String, String) {
        let branch = format!("z9hG4bK{}", hex(&mut self.rng, 12));
        (
            format!("SIP/2.0/TLS {};branch={branch}", hostport(&self.config)),
            branch,
        )
    }

    fn contact(&self) -> String {
        format!("<sip:sbc@{};transport=tls>", hostport(&self.config))
    }

    fn tagged_from(&self) -> String {
        format!("{};tag={}", self.dial.from, self.from_tag)
    }

    fn common(&self, h: &mut Headers) {
        if let Some(s) = &self.config.server_header {
            h.push("User-Agent", s.clone());
        }
    }

    /// A new INVITE (first, or a retry with `auth` = (header name, value)).
    fn send_invite(&mut self, now: Instant, auth: Option<(&str, String)>) {
        self.cseq += 1;
        let (via, _) = self.via();
        let mut h = Headers::default();
        h.push("Via", via);
        h.push("Max-Forwards", "70");
        h.push("From", self.tagged_from());
        h.push("To", self.dial.to.clone());
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{} INVITE", self.cseq));
        h.push("Contact", self.contact());
        h.push("Allow", ALLOW);
        h.push("Supported", "timer");
        h.push(
            "Session-Expires",
            self.session_expires.as_secs().to_string(),
        );
        h.push("Min-SE", self.config.min_se.as_secs().to_string());
        if let Some((name, value)) = auth {
            h.push(name, value);
        }
        for (n, v) in &self.dial.headers {
            h.push(n, v.clone());
        }
        self.common(&mut h);
        h.push("Content-Type", "application/sdp");
        h.push("Content-Length", "0");
        self.invite = Request {
            method: Method::Invite,
            uri: self.dial.request_uri.clone(),
            headers: h,
            body: self.dial.sdp.clone().into(),
        };
        self.cancel_timers(TimerKind::TimerB);
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::TimerB));
        self.transmit
            .push_back(SipMessage::Request(self.invite.clone()));
    }

    /// ACK for a non-2xx final response: part of the INVITE transaction (RFC 3261 §17.1.1.3).
    fn ack_non_2xx(&mut self, resp: &Response) {
        let mut h = Headers::default();
        if let Some(v) = self.invite.headers.get("Via") {
            h.push("Via", v);
        }
        h.push("Max-Forwards", "70");
        h.push("From", self.tagged_from());
        h.push(
            "To",
            resp.headers.get("To").unwrap_or(&self.dial.to).to_string(),
        );
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{} ACK", self.invite_cseq()));
        h.push("Content-Length", "0");
        self.transmit.push_back(SipMessage::Request(Request {
            method: Method::Ack,
            uri: self.invite.uri.clone(),
            headers: h,
            body: Body::default(),
        }));
    }

    /// CANCEL (RFC 3261 §9.1): same Request-URI, Call-ID, From, To, CSeq number and top Via as
    /// the INVITE.
    fn send_cancel(&mut self, now: Instant) {
        if self.cancel_sent {
            return;
        }
        self.cancel_sent = true;
        let mut h = Headers::default();
        if let Some(v) = self.invite.headers.get("Via") {
            h.push("Via", v);
        }
        h.push("Max-Forwards", "70");
        h.push("From", self.tagged_from());
        h.push("To", self.dial.to.clone());
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{} CANCEL", self.invite_cseq()));
        self.common(&mut h);
        h.push("Content-Length", "0");
        self.transmit.push_back(SipMessage::Request(Request {
            method: Method::Cancel,
            uri: self.invite.uri.clone(),
            headers: h,
            body: Body::default(),
        }));
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::CancelTimeout));
    }

    /// A request inside `dialog` (RFC 3261 §12.2.1.1), loose or strict routing.
    fn dialog_request(&mut self, dialog: &Dialog, method: Method, cseq: u32) -> Request {
        let (via, _) = self.via();
        let mut h = Headers::default();
        h.push("Via", via);
        h.push("Max-Forwards", "70");
        let mut uri = dialog.remote_target.clone();
        let mut routes = dialog.route_set.clone();
        if let Some(first) = routes.first() {
            if param(
                split_addr(first).0.split_once(';').map_or("", |x| x.1),
                "lr",
            )
            .is_none()
            {
                // Strict routing: the first route becomes the Request-URI (§12.2.1.1).
                uri = name_addr_uri(first).to_string();
                routes.remove(0);
                routes.push(format!("<{}>", dialog.remote_target));
            }
        }
        for r in routes {
            h.push("Route", r);
        }
        h.push("From", self.tagged_from());
        h.push("To", dialog.to.clone());
        h.push("Call-ID", self.call_id.clone());
        h.push("CSeq", format!("{cseq} {method}"));
        self.common(&mut h);
        h.push("Content-Length", "0");
        Request {
            method,
            uri,
            headers: h,
            body: Body::default(),
        }
    }

    /// Cancel the INVITE (`Status=canceled`): CANCEL now if a provisional response came, else
    /// as soon as one comes. Ignored once answered (use [`UacCall::hangup`]).
    pub fn cancel(&mut self, now: Instant) {
        self.start_cancel(now, CancelCause::Requested);
    }

    fn start_cancel(&mut self, now: Instant, cause: CancelCause) {
        if !matches!(self.state, UacState::Calling | UacState::Proceeding) {
            return;
        }
        self.cancel = Some(cause);
        self.state = UacState::Cancelling;
        self.cancel_timers(TimerKind::Ring);
        if self.provisional {
            self.send_cancel(now);
        }
    }

    /// End the call: BYE once answered, CANCEL before.
    pub fn hangup(&mut self, now: Instant) {
        match self.state {
            UacState::Calling | UacState::Proceeding => self.cancel(now),
            UacState::Confirmed => self.send_bye(now),
            _ => {}
        }
    }

    fn send_bye(&mut self, now: Instant) {
        let Some(dialog) = self.dialog.clone() else {
            return;
        };
        self.cseq += 1;
        let cseq = self.cseq;
        let bye = self.dialog_request(&dialog, Method::Bye, cseq);
        self.bye_cseq = Some(cseq);
        self.state = UacState::Terminating;
        self.cancel_timers(TimerKind::SessionRefresh);
        self.cancel_timers(TimerKind::SessionExpiry);
        self.cancel_timers(TimerKind::RefreshTimeout);
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::ByeTimeout));
        self.transmit.push_back(SipMessage::Request(bye));
    }

    fn fail(&mut self, status: u16, reason: &str) {
        self.events.push_back(UacEvent::Failed {
            status,
            reason: reason.to_string(),
            twilio_status: twilio_status_for(status, self.cancel),
        });
        self.terminate();
    }

    fn terminate(&mut self) {
        if self.state != UacState::Terminated {
            self.state = UacState::Terminated;
            self.timers.clear();
            self.events.push_back(UacEvent::Terminated);
        }
    }

    fn cancel_timers(&mut self, kind: TimerKind) {
        self.timers.retain(|(_, k)| *k != kind);
    }

    /// Whether a response belongs to this call: Call-ID and our From tag.
    pub fn matches_response(&self, resp: &Response) -> bool {
        resp.headers.get("Call-ID") == Some(self.call_id.as_str())
            && resp.headers.get("From").and_then(tag_of) == Some(self.from_tag.as_str())
    }

    /// A response from the trunk.
    pub fn handle_response(&mut self, now: Instant, resp: Response) {
        if !self.matches_response(&resp) || self.state == UacState::Terminated {
            return;
        }
        let Some((cseq, method)) = resp.cseq() else {
            return;
        };
        match method {
            Method::Invite if cseq == self.invite_cseq() => {
                // The INVITE transaction is matched by branch too (RFC 3261 §17.1.3); a 2xx
                // retransmission keeps the branch of the INVITE.
                if top_branch(&resp.headers) != top_branch(&self.invite.headers) {
                    return;
                }
                self.on_invite_response(now, resp);
            }
            Method::Bye if self.bye_cseq == Some(cseq) && resp.status >= 200 => self.terminate(),
            m if self
                .refresh
                .as_ref()
                .is_some_and(|(c, rm)| *c == cseq && *rm == m) =>
            {
                self.on_refresh_response(now, resp)
            }
            _ => {}
        }
    }

    fn invite_cseq(&self) -> u32 {
        self.invite.cseq().map_or(0, |(n, _)| n)
    }

    fn on_invite_response(&mut self, now: Instant, resp: Response) {
        let status = resp.status;
        match status {
            100..=199 => {
                if !matches!(
                    self.state,
                    UacState::Calling | UacState::Proceeding | UacState::Cancelling
                ) {
                    return;
                }
                self.provisional = true;
                self.cancel_timers(TimerKind::TimerB);
                if self.state == UacState::Calling {
                    self.state = UacState::Proceeding;
                }
                if self.cancel.is_some() {
                    self.send_cancel(now);
                    return;
                }
                if status == 100 {
                    if !self.trying_seen {
                        self.trying_seen = true;
                        self.events.push_back(UacEvent::Trying);
                    }
                } else if status == 183 && self.dial.early_media && !resp.body.is_empty() {
                    if !self.early_seen {
                        self.early_seen = true;
                        self.early_sdp = Some(resp.body.clone());
                        self.events
                            .push_back(UacEvent::EarlyMedia { sdp: resp.body });
                    }
                } else if !self.ringing_seen {
                    self.ringing_seen = true;
                    self.events.push_back(UacEvent::Ringing);
                }
            }
            200..=299 => self.on_2xx(now, resp),
            _ => {
                if !matches!(
                    self.state,
                    UacState::Calling | UacState::Proceeding | UacState::Cancelling
                ) {
                    return;
                }
                self.ack_non_2xx(&resp);
                if let (Some((challenge_header, answer_header)), false, Some(creds)) = (
                    header_names(status),
                    self.auth_retried,
                    self.dial.credentials.clone(),
                ) {
                    if self.cancel.is_none() {
                        if let Ok(ch) = Challenge::choose(resp.headers.get_all(challenge_header)) {
                            self.auth_retried = true;
                            let uri = self.dial.request_uri.clone();
                            let auth = ch.authorize(&creds, "INVITE", &uri, 1, &mut self.rng);
                            self.state = UacState::Calling;
                            self.provisional = false;
                            self.send_invite(now, Some((answer_header, auth.to_string())));
                            return;
                        }
                    }
                }
                if status == 422 && !self.interval_retried && self.cancel.is_none() {
                    let min_se = resp
                        .headers
                        .get("Min-SE")
                        .and_then(|v| v.split(';').next()?.trim().parse::<u64>().ok());
                    if let Some(secs) = min_se.filter(|&s| s > self.session_expires.as_secs()) {
                        self.interval_retried = true;
                        self.session_expires = Duration::from_secs(secs.min(MAX_DELTA_SECONDS));
                        self.state = UacState::Calling;
                        self.provisional = false;
                        self.send_invite(now, None);
                        return;
                    }
                }
                let reason = resp.reason.clone();
                self.fail(status, &reason);
            }
        }
    }

    fn on_2xx(&mut self, now: Instant, resp: Response) {
        let Some(to) = resp.headers.get("To").map(str::to_string) else {
            return;
        };
        let remote_tag = tag_of(&to).unwrap_or_default().to_string();
        if let Some(d) = &self.dialog {
            if d.remote_tag == remote_tag {
                // Retransmitted 2xx: our ACK got lost or crossed it (RFC 3261 §13.2.2.4).
                if let Some(ack) = self.ack.clone() {
                    self.transmit.push_back(SipMessage::Request(ack));
                }
            } else {
                // A second fork answered: ACK it and end that dialog at once.
                let other = self.dialog_from(&resp, remote_tag, to);
                self.ack_and_bye_fork(&other);
            }
            return;
        }
        if !matches!(
            self.state,
            UacState::Calling | UacState::Proceeding | UacState::Cancelling
        ) {
            return;
        }
        let dialog = self.dialog_from(&resp, remote_tag, to);
        let ack = self.dialog_request(&dialog, Method::Ack, self.invite_cseq());
        self.transmit.push_back(SipMessage::Request(ack.clone()));
        self.ack = Some(ack);
        self.dialog = Some(dialog);
        self.peer_allows_update = resp
            .headers
            .get_list("Allow")
            .iter()
            .any(|m| m.eq_ignore_ascii_case("UPDATE"));
        self.cancel_timers(TimerKind::TimerB);
        self.cancel_timers(TimerKind::Ring);
        self.cancel_timers(TimerKind::CancelTimeout);
        if self.cancel.is_some() {
            // The 2xx crossed our CANCEL: the call is cancelled anyway (RFC 3261 §9.1).
            let status = 487;
            self.events.push_back(UacEvent::Failed {
                status,
                reason: "answered after CANCEL".into(),
                twilio_status: twilio_status_for(status, self.cancel),
            });
            self.state = UacState::Confirmed;
            self.send_bye(now);
            return;
        }
        if let Some(early) = &self.early_sdp {
            if !resp.body.is_empty() && resp.body != *early {
                // The media runs on the 183's answer; a different one in the 2xx cannot be
                // followed (no second answer to one offer): end the call rather than guess.
                let status = 200;
                self.events.push_back(UacEvent::Failed {
                    status,
                    reason: "the 2xx's SDP differs from the early media's 183".into(),
                    twilio_status: TwilioStatus::Failed,
                });
                self.state = UacState::Confirmed;
                self.send_bye(now);
                return;
            }
        }
        self.state = UacState::Confirmed;
        self.events.push_back(UacEvent::Answered {
            sdp: resp.body.clone(),
        });
        self.session = session_expires(&resp.headers).map(|(secs, refresher)| {
            (
                Duration::from_secs(secs.max(1)),
                // RFC 4028 §7.2: the 2xx names the refresher; absent, we take it.
                refresher.unwrap_or(Refresher::Uac),
            )
        });
        self.arm_session(now);
    }

    fn dialog_from(&self, resp: &Response, remote_tag: String, to: String) -> Dialog {
        let remote_target = resp
            .headers
            .get("Contact")
            .map(|c| name_addr_uri(c).to_string())
            .unwrap_or_else(|| self.dial.request_uri.clone());
        let mut route_set: Vec<String> =
            resp.headers.get_list("Record-Route").into_iter().collect();
        route_set.reverse();
        Dialog {
            remote_tag,
            to,
            remote_target,
            route_set,
        }
    }

    fn ack_and_bye_fork(&mut self, other: &Dialog) {
        let cseq = self.invite_cseq();
        let ack = self.dialog_request(other, Method::Ack, cseq);
        self.transmit.push_back(SipMessage::Request(ack));
        let bye = self.dialog_request(other, Method::Bye, cseq + 1);
        self.transmit.push_back(SipMessage::Request(bye));
    }

    /// RFC 4028 §10 deadlines from `now`.
    fn arm_session(&mut self, now: Instant) {
        self.cancel_timers(TimerKind::SessionRefresh);
        self.cancel_timers(TimerKind::SessionExpiry);
        let Some((interval, refresher)) = self.session else {
            return;
        };
        if refresher == Refresher::Uac {
            self.timers
                .push((now + interval / 2, TimerKind::SessionRefresh));
        }
        let slack = Duration::from_secs(32).min(interval / 3);
        self.timers
            .push((now + interval - slack, TimerKind::SessionExpiry));
    }

    /// Our refresh: UPDATE without SDP if the peer allows it, else re-INVITE with our offer.
    fn send_refresh(&mut self, now: Instant) {
        let Some(dialog) = self.dialog.clone() else {
            return;
        };
        let Some((interval, _)) = self.session else {
            return;
        };
        self.cseq += 1;
        let cseq = self.cseq;
        let method = if self.peer_allows_update {
            Method::Update
        } else {
            Method::Invite
        };
        let mut req = self.dialog_request(&dialog, method.clone(), cseq);
        req.headers.remove("Content-Length");
        req.headers.push("Contact", self.contact());
        req.headers.push("Supported", "timer");
        req.headers.push(
            "Session-Expires",
            format!("{};refresher=uac", interval.as_secs()),
        );
        req.headers
            .push("Min-SE", self.config.min_se.as_secs().to_string());
        if method == Method::Invite {
            req.headers.push("Content-Type", "application/sdp");
            req.body = self.dial.sdp.clone().into();
        }
        req.headers.push("Content-Length", "0");
        self.refresh = Some((cseq, method));
        self.timers
            .push((now + 64 * self.config.t1, TimerKind::RefreshTimeout));
        self.transmit.push_back(SipMessage::Request(req));
    }

    fn on_refresh_response(&mut self, now: Instant, resp: Response) {
        if resp.status < 200 {
            return;
        }
        let Some((cseq, method)) = self.refresh.take() else {
            return;
        };
        self.cancel_timers(TimerKind::RefreshTimeout);
        let ok = (200..300).contains(&resp.status);
        if method == Method::Invite && ok {
            if let Some(dialog) = self.dialog.clone() {
                let ack = self.dialog_request(&dialog, Method::Ack, cseq);
                self.transmit.push_back(SipMessage::Request(ack));
            }
        }
        if ok {
            if let Some((secs, refresher)) = session_expires(&resp.headers) {
                self.session = Some((
                    Duration::from_secs(secs.max(1)),
                    refresher.unwrap_or(Refresher::Uac),
                ));
            }
            self.arm_session(now);
        } else if matches!(resp.status, 408 | 481) {
            // The dialog is gone on the other side (RFC 4028 §10, RFC 5057).
            self.events.push_back(UacEvent::SessionExpired);
            self.send_bye(now);
        }
    }

    /// Whether a request from the trunk belongs to this dialog (Call-ID, their tag, our tag).
    pub fn matches_request(&self, req: &Request) -> bool {
        let Some(d) = &self.dialog else {
            return false;
        };
        req.headers.get("Call-ID") == Some(self.call_id.as_str())
            && req.headers.get("From").and_then(tag_of) == Some(d.remote_tag.as_str())
            && req.headers.get("To").and_then(tag_of) == Some(self.from_tag.as_str())
    }

    /// A request from the trunk: in-dialog BYE, re-INVITE/UPDATE (refresh or re-offer),
    /// OPTIONS/INFO; anything that does not match the dialog is answered 481 (never an ACK).
    pub fn handle_request(&mut self, now: Instant, req: Request) {
        if req.method == Method::Ack {
            return;
        }
        if !self.matches_request(&req) || self.state == UacState::Terminated {
            let resp = req.response(481, "Call/Transaction Does Not Exist", None);
            self.transmit.push_back(SipMessage::Response(resp));
            return;
        }
        match req.method {
            Method::Bye => {
                let resp = req.response(200, "OK", None);
                self.transmit.push_back(SipMessage::Response(resp));
                self.events.push_back(UacEvent::RemoteBye);
                self.terminate();
            }
            Method::Invite | Method::Update => {
                if self.pending_reoffer.is_some() {
                    // RFC 3261 §14.2: a second offer while one is pending.
                    let mut resp = req.response(500, "Server Internal Error", None);
                    resp.headers.push("Retry-After", "1");
                    self.transmit.push_back(SipMessage::Response(resp));
                    return;
                }
                if let Some((secs, refresher)) = session_expires(&req.headers) {
                    // The peer refreshes: it is the refresher unless it says otherwise.
                    let refresher = match refresher {
                        Some(Refresher::Uac) | None => Refresher::Uas,
                        Some(Refresher::Uas) => Refresher::Uac,
                    };
                    self.session = Some((Duration::from_secs(secs.max(1)), refresher));
                }
                if self.session.is_some() {
                    self.arm_session(now);
                }
                if req.body.is_empty() {
                    let sdp = (req.method == Method::Invite).then(|| self.dial.sdp.clone());
                    let resp = self.ok_to_offer(&req, sdp);
                    self.transmit.push_back(SipMessage::Response(resp));
                } else {
                    self.events.push_back(UacEvent::ReOffer {
                        sdp: req.body.clone(),
                    });
                    self.pending_reoffer = Some(req);
                }
            }
            Method::Options | Method::Info => {
                let resp = req.response(200, "OK", None);
                self.transmit.push_back(SipMessage::Response(resp));
            }
            _ => {
                let mut resp = req.response(405, "Method Not Allowed", None);
                resp.headers.push("Allow", ALLOW);
                self.transmit.push_back(SipMessage::Response(resp));
            }
        }
    }

    fn ok_to_offer(&self, req: &Request, sdp: Option<Bytes>) -> Response {
        let mut resp = req.response(200, "OK", None);
        resp.headers.remove("Content-Length");
        resp.headers.push("Contact", self.contact());
        if let Some((interval, refresher)) = self.session {
            // In the answer, `refresher` names roles of this transaction (RFC 4028 §9), where
            // the peer is the UAC: "uac" when the peer refreshes (our `Uas`), "uas" when we do.
            let who = match refresher {
                Refresher::Uac => "uas",
                Refresher::Uas => "uac",
            };
            resp.headers.push("Require", "timer");
            resp.headers.push(
                "Session-Expires",
                format!("{};refresher={who}", interval.as_secs()),
            );
        }
        if let Some(sdp) = sdp {
            resp.headers.push("Content-Type", "application/sdp");
            resp.body = sdp.into();
        }
        resp.headers.push("Content-Length", "0");
        resp
    }

    /// Answers the pending re-offer: `Ok(sdp)` → 200 with it, `Err(status)` → that status
    /// (488 for an offer the SRTP policy refuses).
    pub fn answer_reoffer(&mut self, now: Instant, answer: Result<Bytes, u16>) {
        let _ = now;
        let Some(req) = self.pending_reoffer.take() else {
            return;
        };
        let resp = match answer {
            Ok(sdp) => {
                self.dial.sdp = sdp.clone();
                self.ok_to_offer(&req, Some(sdp))
            }
            Err(status) => req.response(status, "Not Acceptable Here", None),
        };
        self.transmit.push_back(SipMessage::Response(resp));
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(i) = self
            .timers
            .iter()
            .enumerate()
            .filter(|(_, (d, _))| *d <= now)
            .min_by_key(|(_, (d, _))| *d)
            .map(|(i, _)| i)
        {
            let (_, kind) = self.timers.swap_remove(i);
            self.fire(now, kind);
        }
    }

    fn fire(&mut self, now: Instant, kind: TimerKind) {
        match kind {
            TimerKind::TimerB => self.fail(408, "Request Timeout (no response, Timer B)"),
            TimerKind::Ring => self.start_cancel(now, CancelCause::RingTimeout),
            TimerKind::CancelTimeout => {
                self.fail(487, "Request Terminated (no final response after CANCEL)")
            }
            TimerKind::ByeTimeout => self.terminate(),
            TimerKind::SessionRefresh => self.send_refresh(now),
            TimerKind::SessionExpiry | TimerKind::RefreshTimeout => {
                self.refresh = None;
                self.events.push_back(UacEvent::SessionExpired);
                self.send_bye(now);
            }
        }
    }

    pub fn poll_transmit(&mut self) -> Option<SipMessage> {
        self.transmit.pop_front()
    }
    pub fn poll_event(&mut self) -> Option<UacEvent> {
        self.events.pop_front()
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.timers.iter().map(|(d, _)| *d).min()
    }
}

/// One offered `a=crypto` line and its key (the call task keeps it to set up SRTP).
#[derive(Clone, Debug)]
pub struct OfferedKey {
    pub tag: u32,
    pub suite: sdp::SrtpSuite,
    pub key_salt: sdp::KeySalt,
}

/// Our SDES-SRTP offer: PCMU, PCMA, telephone-event, `AES_CM_128_HMAC_SHA1_80` (tag 1) and
/// `AES_CM_128_HMAC_SHA1_32` (tag 2) with fresh 30-byte key||salt each (RFC 4568 §6.2,
/// RFC 3711 §8.2), written with the `sdp` crate's types and checked to parse back.
/// Debug leaves out the SDP text (it carries the keys).
#[derive(Clone)]
pub struct SdesOffer {
    pub sdp: Bytes,
    pub keys: Vec<OfferedKey>,
}

impl std::fmt::Debug for SdesOffer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SdesOffer")
            .field("sdp", &format_args!("<{} bytes, redacted>", self.sdp.len()))
            .field("keys", &self.keys)
            .finish()
    }
}

/// Why an answer to our offer is not usable: a failed call (BYE after ACK), never media in the
/// clear.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnswerError {
    #[error("answer SDP does not parse: {0}")]
    Parse(String),
    #[error("answer has no audio stream")]
    NoAudio,
    #[error("answer is not RTP/SAVP (got {0})")]
    NotSavp(String),
    #[error("answer has no a=crypto line matching an offered one")]
    NoCrypto,
}

impl SdesOffer {
    pub fn new(address: IpAddr, port: u16, session_id: u64, rng: &mut dyn RngCore) -> SdesOffer {
        use sdp::{
            Attribute, Connection, CryptoAttribute, Direction, KeyParam, KeySalt, Line, MediaLine,
            Origin, RawLine, SessionDescription, SrtpSuite,
        };
        let addrtype = if address.is_ipv4() { "IP4" } else { "IP6" };
        let mut keys = Vec::new();
        for (tag, suite) in [
            (1, SrtpSuite::AesCm128HmacSha1_80),
            (2, SrtpSuite::AesCm128HmacSha1_32),
        ] {
            let mut bytes = vec![0u8; 30];
            rng.fill_bytes(&mut bytes);
            keys.push(OfferedKey {
                tag,
                suite,
                key_salt: KeySalt::new(bytes),
            });
        }
        let session = vec![
            RawLine::new(Line::Version(0)),
            RawLine::new(Line::Origin(Origin {
                username: "sbc".into(),
                session_id: session_id.to_string(),
                session_version: session_id.to_string(),
                nettype: "IN".into(),
                addrtype: addrtype.into(),
                address: address.to_string(),
            })),
            RawLine::new(Line::SessionName("sbc".into())),
            RawLine::new(Line::Connection(Connection {
                nettype: "IN".into(),
                addrtype: addrtype.into(),
                address: address.to_string(),
            })),
            RawLine::new(Line::Other {
                kind: 't',
                value: "0 0".into(),
            }),
        ];
        let rtpmap = |pt: u8, enc: &str| {
            RawLine::new(Line::Attribute(Attribute::Rtpmap {
                payload_type: pt,
                encoding: enc.into(),
                clock_rate: 8000,
                channels: None,
            }))
        };
        let mut media = vec![
            RawLine::new(Line::Media(MediaLine {
                media: "audio".into(),
                port,
                port_count: None,
                proto: "RTP/SAVP".into(),
                formats: vec!["0".into(), "8".into(), "101".into()],
            })),
            rtpmap(0, "PCMU"),
            rtpmap(8, "PCMA"),
            rtpmap(101, "telephone-event"),
            RawLine::new(Line::Attribute(Attribute::Fmtp {
                format: "101".into(),
                params: "0-16".into(),
            })),
            RawLine::new(Line::Attribute(Attribute::Ptime(20))),
            RawLine::new(Line::Attribute(Attribute::Direction(Direction::SendRecv))),
        ];
        for k in &keys {
            media.push(RawLine::new(Line::Attribute(Attribute::Crypto(
                CryptoAttribute {
                    tag: k.tag,
                    suite: k.suite.clone(),
                    keys: vec![KeyParam {
                        key_salt: Some(k.key_salt.clone()),
                        lifetime: None,
                        mki: None,
                    }],
                    session_params: vec![],
                },
            ))));
        }
        let text = SessionDescription {
            session,
            media: vec![media],
        }
        .to_string();
        SdesOffer {
            sdp: Bytes::from(text),
            keys,
        }
    }

    /// Checks an answer against the offer (RFC 4568 §6.1: the answer's crypto line carries the
    /// tag and suite of the offered line it accepts): returns our key for that line and the
    /// answerer's crypto line.
    pub fn accept_answer(
        &self,
        answer: &[u8],
    ) -> Result<(OfferedKey, sdp::CryptoAttribute), AnswerError> {
        use sdp::{Attribute, Line, SessionDescription};
        let sd =
            SessionDescription::parse(answer).map_err(|e| AnswerError::Parse(e.to_string()))?;
        let audio = sd
            .media
            .iter()
            .find(|m| matches!(&m[0].line, Line::Media(ml) if ml.media == "audio" && ml.port != 0))
            .ok_or(AnswerError::NoAudio)?;
        if let Line::Media(ml) = &audio[0].line {
            if !ml.proto.eq_ignore_ascii_case("RTP/SAVP") {
                return Err(AnswerError::NotSavp(ml.proto.clone()));
            }
        }
        for l in audio {
            if let Line::Attribute(Attribute::Crypto(c)) = &l.line {
                if c.unusable_reason().is_some() {
                    continue;
                }
                if let Some(k) = self
                    .keys
                    .iter()
                    .find(|k| k.tag == c.tag && k.suite == c.suite)
                {
                    return Ok((k.clone(), c.clone()));
                }
            }
        }
        Err(AnswerError::NoCrypto)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::digest::Password;
    use rand::SeedableRng;

    fn config() -> UasConfig {
        UasConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
            host: "sbc.example.com".into(),
            port: 5061,
            server_header: None,
            session_expires: Duration::from_secs(1800),
            min_se: Duration::from_secs(90),
        }
    }

    fn dial() -> Dial {
        Dial {
            request_uri: "sip:+15105550123@example.pstn.twilio.com;transport=tls".into(),
            from: "<sip:+14155550100@example.pstn.twilio.com>".into(),
            to: "<sip:+15105550123@example.pstn.twilio.com>".into(),
            sdp: Bytes::from_static(b"v=0\r\n"),
            credentials: Some(Credentials {
                username: "sbc-user".into(),
                password: Password::new("s3cret"),
            }),
            ring_timeout: Duration::from_secs(60),
            early_media: false,
            headers: vec![],
        }
    }

    fn start_with(d: Dial) -> (UacCall, Instant, Request) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
        let t0 = Instant::now();
        let mut call = UacCall::new(t0, d, config(), &mut rng);
        let invite = one_request(&mut call);
        (call, t0, invite)
    }

    fn start() -> (UacCall, Instant, Request) {
        start_with(dial())
    }

    fn drain(call: &mut UacCall) -> Vec<SipMessage> {
        std::iter::from_fn(|| call.poll_transmit()).collect()
    }

    fn requests(call: &mut UacCall) -> Vec<Request> {
        drain(call)
            .into_iter()
            .map(|m| match m {
                SipMessage::Request(r) => r,
                SipMessage::Response(r) => panic!("request expected, got {}", r.status),
            })
            .collect()
    }

    fn one_request(call: &mut UacCall) -> Request {
        let mut r = requests(call);
        assert_eq!(r.len(), 1, "{r:?}");
        r.remove(0)
    }

    fn events(call: &mut UacCall) -> Vec<UacEvent> {
        std::iter::from_fn(|| call.poll_event()).collect()
    }

    /// A response to `req` as the trunk writes it.
    fn reply(req: &Request, status: u16, extra: &[(&str, &str)], body: &str) -> Response {
        let mut r = req.response(status, "Reason", (status > 100).then_some("callee1"));
        r.headers.remove("Content-Length");
        for (n, v) in extra {
            r.headers.push(n, *v);
        }
        r.headers.push("Content-Length", "0");
        r.body = body.as_bytes().to_vec().into();
        // Round-trip through the wire format, as the shell would.
        match SipMessage::parse(&r.to_bytes()).unwrap() {
            SipMessage::Response(r) => r,
            SipMessage::Request(_) => unreachable!(),
        }
    }

    const CONTACT: (&str, &str) = ("Contact", "<sip:callee@192.0.2.20:5061;transport=tls>");

    fn answered() -> (UacCall, Instant, Request) {
        let (mut call, t0, invite) = start();
        call.handle_response(t0, reply(&invite, 200, &[CONTACT], "v=0\r\n"));
        let _ = requests(&mut call);
        let _ = events(&mut call);
        (call, t0, invite)
    }

    /// The UAC core and the digest client stay sans-IO (STYLE.md), like `mod.rs` checks for
    /// the UAS core.
    #[test]
    fn no_io_in_the_uac_core() {
        let marker = ["#[cfg(", "test)]"].concat();
        for (name, text) in [
            ("uac.rs", include_str!("uac.rs")),
            ("digest.rs", include_str!("digest.rs")),
        ] {
            let code = text.split(marker.as_str()).next().unwrap_or("");
            for banned in [
                "Instant::now",
                "SystemTime",
                "tokio",
                "std::net::Tcp",
                "std::net::Udp",
                "std::thread",
                "thread_rng",
                "std::fs",
            ] {
                assert!(!code.contains(banned), "{name} uses {banned}");
            }
        }
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn invite_carries_offer_timers_and_headers() {
        let mut d = dial();
        d.headers.push(("X-Call".into(), "abc".into()));
        let (call, t0, invite) = start_with(d);
        assert_eq!(invite.method, Method::Invite);
        assert_eq!(invite.uri, dial().request_uri);
        let h = &invite.headers;
        assert!(h
            .get("Via")
            .unwrap()
            .starts_with("SIP/2.0/TLS sbc.example.com:5061;branch=z9hG4bK"));
        assert!(h.get("From").unwrap().contains(";tag="));
        assert_eq!(h.get("To"), Some(dial().to.as_str()));
        assert_eq!(h.get("CSeq"), Some("1 INVITE"));
        assert_eq!(h.get("Supported"), Some("timer"));
        assert_eq!(h.get("Session-Expires"), Some("1800"));
        assert_eq!(h.get("Min-SE"), Some("90"));
        assert_eq!(h.get("X-Call"), Some("abc"));
        assert_eq!(h.get("Content-Type"), Some("application/sdp"));
        assert_eq!(&invite.body[..], b"v=0\r\n");
        // Over TLS: the first deadline is Timer B, 64*T1, no retransmission before it.
        assert_eq!(call.poll_timeout(), Some(t0 + 64 * ms(500)));
        assert_eq!(call.state(), UacState::Calling);
    }

    /// Provisional responses: which event each gives (first one of a kind only).
    #[test]
    fn provisional_table() {
        type Case<'a> = (bool, &'a [(u16, &'a str)], &'a [&'a str]);
        let cases: &[Case] = &[
            (false, &[(100, "")], &["Trying"]),
            (false, &[(100, ""), (100, "")], &["Trying"]),
            (false, &[(180, ""), (180, "")], &["Ringing"]),
            (false, &[(183, "v=0\r\n")], &["Ringing"]),
            (true, &[(183, "v=0\r\n"), (183, "v=0\r\n")], &["EarlyMedia"]),
            (true, &[(183, "")], &["Ringing"]),
            (
                true,
                &[(100, ""), (180, ""), (183, "v=0\r\n")],
                &["Trying", "Ringing", "EarlyMedia"],
            ),
        ];
        for (early, responses, expected) in cases {
            let mut d = dial();
            d.early_media = *early;
            let (mut call, t0, invite) = start_with(d);
            for (status, body) in responses.iter() {
                call.handle_response(t0, reply(&invite, *status, &[], body));
            }
            let got: Vec<String> = events(&mut call)
                .iter()
                .map(|e| {
                    format!("{e:?}")
                        .split([' ', '{'])
                        .next()
                        .unwrap()
                        .to_string()
                })
                .collect();
            assert_eq!(&got, expected, "early {early} {responses:?}");
            assert_eq!(call.state(), UacState::Proceeding);
            // A provisional response stops Timer B: the next deadline is the ring timeout.
            assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        }
    }

    /// Early media: the 183's SDP is the answer; a 2xx repeating it (or without SDP) confirms
    /// the call, a 2xx with another SDP is ACKed and sent BYE.
    #[test]
    fn early_media_answer_must_be_repeated() {
        for (body, confirmed) in [
            ("v=0\r\nearly\r\n", true),
            ("", true),
            ("v=0\r\nother\r\n", false),
        ] {
            let mut d = dial();
            d.early_media = true;
            let (mut call, t0, invite) = start_with(d);
            call.handle_response(t0, reply(&invite, 183, &[CONTACT], "v=0\r\nearly\r\n"));
            assert_eq!(
                events(&mut call),
                [UacEvent::EarlyMedia {
                    sdp: Body::from_static(b"v=0\r\nearly\r\n")
                }]
            );
            call.handle_response(t0 + ms(500), reply(&invite, 200, &[CONTACT], body));
            let sent = requests(&mut call);
            assert_eq!(sent[0].method, Method::Ack, "{body:?}");
            let ev = events(&mut call);
            if confirmed {
                assert_eq!(sent.len(), 1, "{body:?}");
                assert_eq!(call.state(), UacState::Confirmed);
                assert!(matches!(ev[..], [UacEvent::Answered { .. }]), "{ev:?}");
            } else {
                assert_eq!(sent.len(), 2, "{body:?}");
                assert_eq!(sent[1].method, Method::Bye);
                assert_eq!(call.state(), UacState::Terminating);
                assert!(
                    matches!(
                        &ev[..],
                        [UacEvent::Failed {
                            status: 200,
                            twilio_status: TwilioStatus::Failed,
                            ..
                        }]
                    ),
                    "{ev:?}"
                );
            }
        }
    }

    #[test]
    fn answer_acks_and_confirms() {
        let (mut call, t0, invite) = start();
        call.handle_response(t0, reply(&invite, 180, &[], ""));
        let ok = reply(
            &invite,
            200,
            &[
                CONTACT,
                ("Record-Route", "<sip:p2.example;lr>, <sip:p1.example;lr>"),
            ],
            "v=0\r\nanswer\r\n",
        );
        call.handle_response(t0 + ms(10), ok.clone());
        let ack = one_request(&mut call);
        assert_eq!(ack.method, Method::Ack);
        assert_eq!(ack.uri, "sip:callee@192.0.2.20:5061;transport=tls");
        assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
        assert_ne!(
            ack.top_via_branch(),
            invite.top_via_branch(),
            "2xx ACK is a new transaction"
        );
        let routes: Vec<&str> = ack.headers.get_all("Route").collect();
        assert_eq!(routes, ["<sip:p1.example;lr>", "<sip:p2.example;lr>"]);
        assert!(ack.headers.get("To").unwrap().contains("tag=callee1"));
        assert_eq!(
            events(&mut call),
            [
                UacEvent::Ringing,
                UacEvent::Answered {
                    sdp: Body::from_static(b"v=0\r\nanswer\r\n")
                }
            ]
        );
        assert_eq!(call.state(), UacState::Confirmed);
        // A retransmitted 2xx gets the same ACK again, and no new event.
        call.handle_response(t0 + ms(600), ok);
        assert_eq!(one_request(&mut call), ack);
        assert!(events(&mut call).is_empty());
        // No session timer in the 2xx: nothing armed.
        assert_eq!(call.poll_timeout(), None);
    }

    /// Final failures and the Twilio status each maps to.
    #[test]
    fn final_status_table() {
        let cases: &[(u16, TwilioStatus)] = &[
            (486, TwilioStatus::Busy),
            (600, TwilioStatus::Busy),
            (404, TwilioStatus::Failed),
            (480, TwilioStatus::Failed),
            (503, TwilioStatus::Failed),
            (603, TwilioStatus::Failed),
            (488, TwilioStatus::Failed),
        ];
        for (status, twilio) in cases {
            let (mut call, t0, invite) = start();
            call.handle_response(t0, reply(&invite, 180, &[], ""));
            call.handle_response(t0, reply(&invite, *status, &[], ""));
            let ack = one_request(&mut call);
            assert_eq!(ack.method, Method::Ack);
            assert_eq!(
                ack.top_via_branch(),
                invite.top_via_branch(),
                "non-2xx ACK: same branch"
            );
            assert_eq!(ack.headers.get("CSeq"), Some("1 ACK"));
            assert_eq!(ack.uri, invite.uri);
            let ev = events(&mut call);
            assert_eq!(
                ev[1..],
                [
                    UacEvent::Failed {
                        status: *status,
                        reason: "Reason".into(),
                        twilio_status: *twilio
                    },
                    UacEvent::Terminated
                ],
                "{status}"
            );
            assert_eq!(call.state(), UacState::Terminated);
            assert_eq!(call.poll_timeout(), None);
        }
    }

    #[test]
    fn twilio_status_mapping() {
        use CancelCause::*;
        let cases = [
            (200, None, TwilioStatus::InProgress),
            (486, Some(RingTimeout), TwilioStatus::Busy),
            (487, Some(RingTimeout), TwilioStatus::NoAnswer),
            (487, Some(Requested), TwilioStatus::Canceled),
            (408, None, TwilioStatus::Failed),
            (487, None, TwilioStatus::Failed),
        ];
        for (status, cause, want) in cases {
            assert_eq!(twilio_status_for(status, cause), want, "{status} {cause:?}");
        }
        assert_eq!(TwilioStatus::NoAnswer.as_str(), "no-answer");
        assert_eq!(TwilioStatus::InProgress.as_str(), "in-progress");
    }

    /// 407 then 200: one retry with Proxy-Authorization (401: Authorization), CSeq+1, new
    /// branch, same Call-ID and From tag; the response checks against an independent MD5.
    #[test]
    fn digest_retry_after_401_and_407() {
        for (status, challenge, answer) in [
            (407, "Proxy-Authenticate", "Proxy-Authorization"),
            (401, "WWW-Authenticate", "Authorization"),
        ] {
            let (mut call, t0, invite) = start();
            call.handle_response(t0, reply(&invite, 100, &[], ""));
            let value =
                r#"Digest realm="sip.twilio.com", nonce="abc123", qop="auth", algorithm=MD5"#;
            call.handle_response(
                t0 + ms(50),
                reply(&invite, status, &[(challenge, value)], ""),
            );
            let msgs = requests(&mut call);
            assert_eq!(msgs.len(), 2);
            assert_eq!(msgs[0].method, Method::Ack);
            let retry = &msgs[1];
            assert_eq!(retry.method, Method::Invite);
            assert_eq!(retry.headers.get("CSeq"), Some("2 INVITE"));
            assert_ne!(retry.top_via_branch(), invite.top_via_branch());
            assert_eq!(retry.call_id(), invite.call_id());
            assert_eq!(retry.headers.get("From"), invite.headers.get("From"));
            let auth = retry.headers.get(answer).expect(answer);
            // Independent check: MD5(HA1:nonce:nc:cnonce:auth:HA2).
            let field = |n: &str| {
                let start = auth.find(&format!("{n}=")).unwrap() + n.len() + 1;
                auth[start..]
                    .split(',')
                    .next()
                    .unwrap()
                    .trim()
                    .trim_matches('"')
                    .to_string()
            };
            let md5 = |s: String| {
                use md5::{Digest, Md5};
                Md5::digest(s.as_bytes())
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            };
            let ha1 = md5("sbc-user:sip.twilio.com:s3cret".into());
            let ha2 = md5(format!("INVITE:{}", dial().request_uri));
            let expected = md5(format!(
                "{ha1}:abc123:{}:{}:auth:{ha2}",
                field("nc"),
                field("cnonce")
            ));
            assert_eq!(field("response"), expected);
            assert_eq!(field("uri"), dial().request_uri);
            // Timer B restarts for the new INVITE.
            assert_eq!(call.poll_timeout(), Some(t0 + ms(50) + 64 * ms(500)));
            // The retry is answered.
            call.handle_response(t0 + ms(100), reply(retry, 200, &[CONTACT], "v=0\r\n"));
            let ack = one_request(&mut call);
            assert_eq!(ack.headers.get("CSeq"), Some("2 ACK"));
            assert!(matches!(
                events(&mut call).last(),
                Some(UacEvent::Answered { .. })
            ));
        }
    }

    /// A second challenge (wrong password) and a challenge without credentials fail with it.
    #[test]
    fn second_challenge_or_no_credentials_fail() {
        let value = r#"Digest realm="r", nonce="n1""#;
        let (mut call, t0, invite) = start();
        call.handle_response(
            t0,
            reply(&invite, 407, &[("Proxy-Authenticate", value)], ""),
        );
        let retry = requests(&mut call).pop().unwrap();
        call.handle_response(t0, reply(&retry, 407, &[("Proxy-Authenticate", value)], ""));
        assert_eq!(one_request(&mut call).method, Method::Ack);
        assert!(matches!(
            events(&mut call)[0],
            UacEvent::Failed {
                status: 407,
                twilio_status: TwilioStatus::Failed,
                ..
            }
        ));

        let mut d = dial();
        d.credentials = None;
        let (mut call, t0, invite) = start_with(d);
        call.handle_response(t0, reply(&invite, 401, &[("WWW-Authenticate", value)], ""));
        assert_eq!(one_request(&mut call).method, Method::Ack);
        assert!(matches!(
            events(&mut call)[0],
            UacEvent::Failed { status: 401, .. }
        ));
    }

    #[test]
    fn session_interval_too_small_retries_once_with_min_se() {
        let (mut call, t0, invite) = start();
        call.handle_response(t0, reply(&invite, 422, &[("Min-SE", "3600")], ""));
        let msgs = requests(&mut call);
        assert_eq!(msgs[0].method, Method::Ack);
        assert_eq!(msgs[1].headers.get("Session-Expires"), Some("3600"));
        call.handle_response(t0, reply(&msgs[1], 422, &[("Min-SE", "7200")], ""));
        let _ = requests(&mut call);
        assert!(matches!(
            events(&mut call)[0],
            UacEvent::Failed { status: 422, .. }
        ));
    }

    /// Timer B fires at exactly 64*T1 when nothing answers: 408, `failed`.
    #[test]
    fn timer_b_at_64_t1() {
        let (mut call, t0, _) = start();
        call.handle_timeout(t0 + 64 * ms(500) - Duration::from_micros(1));
        assert!(events(&mut call).is_empty());
        call.handle_timeout(t0 + 64 * ms(500));
        assert_eq!(
            events(&mut call),
            [
                UacEvent::Failed {
                    status: 408,
                    reason: "Request Timeout (no response, Timer B)".into(),
                    twilio_status: TwilioStatus::Failed
                },
                UacEvent::Terminated
            ]
        );
        assert!(drain(&mut call).is_empty());
    }

    /// The ring timeout sends CANCEL (same branch, CSeq number); 487 → ACK, `no-answer`.
    #[test]
    fn ring_timeout_cancels_then_487_is_no_answer() {
        let (mut call, t0, invite) = start();
        call.handle_response(t0, reply(&invite, 180, &[], ""));
        let _ = events(&mut call);
        let ring = t0 + Duration::from_secs(60);
        call.handle_timeout(ring);
        let cancel = one_request(&mut call);
        assert_eq!(cancel.method, Method::Cancel);
        assert_eq!(cancel.uri, invite.uri);
        assert_eq!(cancel.top_via_branch(), invite.top_via_branch());
        assert_eq!(cancel.headers.get("CSeq"), Some("1 CANCEL"));
        assert_eq!(cancel.headers.get("To"), invite.headers.get("To"));
        assert_eq!(call.state(), UacState::Cancelling);
        call.handle_response(ring + ms(5), reply(&cancel, 200, &[], ""));
        assert!(drain(&mut call).is_empty());
        call.handle_response(ring + ms(10), reply(&invite, 487, &[], ""));
        assert_eq!(one_request(&mut call).method, Method::Ack);
        assert_eq!(
            events(&mut call),
            [
                UacEvent::Failed {
                    status: 487,
                    reason: "Reason".into(),
                    twilio_status: TwilioStatus::NoAnswer
                },
                UacEvent::Terminated
            ]
        );
    }

    /// No provisional response yet: CANCEL waits for one (RFC 3261 §9.1).
    #[test]
    fn cancel_waits_for_a_provisional_response() {
        let (mut call, t0, invite) = start();
        call.cancel(t0 + ms(10));
        assert!(drain(&mut call).is_empty());
        call.handle_response(t0 + ms(20), reply(&invite, 100, &[], ""));
        assert_eq!(one_request(&mut call).method, Method::Cancel);
        call.handle_response(t0 + ms(30), reply(&invite, 487, &[], ""));
        let _ = drain(&mut call);
        assert!(matches!(
            events(&mut call)[0],
            UacEvent::Failed {
                twilio_status: TwilioStatus::Canceled,
                ..
            }
        ));
    }

    /// No final response 64*T1 after CANCEL: the call ends anyway.
    #[test]
    fn cancel_without_final_ends_after_64_t1() {
        let (mut call, t0, invite) = start();
        call.handle_response(t0, reply(&invite, 180, &[], ""));
        call.cancel(t0 + ms(100));
        let _ = drain(&mut call);
        let _ = events(&mut call);
        assert_eq!(call.poll_timeout(), Some(t0 + ms(100) + 64 * ms(500)));
        call.handle_timeout(t0 + ms(100) + 64 * ms(500));
        assert!(matches!(
            events(&mut call)[..],
            [
                UacEvent::Failed {
                    status: 487,
                    twilio_status: TwilioStatus::Canceled,
                    ..
                },
                UacEvent::Terminated
            ]
        ));
    }

    /// A 2xx that crosses our CANCEL is ACKed and sent BYE.
    #[test]
    fn two_xx_racing_cancel_is_acked_and_byed() {
        let (mut call, t0, invite) = start();
        call.handle_response(t0, reply(&invite, 180, &[], ""));
        call.cancel(t0);
        let _ = drain(&mut call);
        let _ = events(&mut call);
        call.handle_response(t0 + ms(5), reply(&invite, 200, &[CONTACT], "v=0\r\n"));
        let msgs = requests(&mut call);
        assert_eq!(
            msgs.iter().map(|m| m.method.clone()).collect::<Vec<_>>(),
            [Method::Ack, Method::Bye]
        );
        assert!(matches!(
            events(&mut call)[0],
            UacEvent::Failed {
                twilio_status: TwilioStatus::Canceled,
                ..
            }
        ));
        call.handle_response(t0 + ms(10), reply(&msgs[1], 200, &[], ""));
        assert_eq!(events(&mut call), [UacEvent::Terminated]);
    }

    #[test]
    fn our_bye_and_its_timer_f() {
        let (mut call, t0, _) = answered();
        call.hangup(t0 + ms(1000));
        let bye = one_request(&mut call);
        assert_eq!(bye.method, Method::Bye);
        assert_eq!(bye.uri, "sip:callee@192.0.2.20:5061;transport=tls");
        assert_eq!(bye.headers.get("CSeq"), Some("2 BYE"));
        assert_eq!(call.state(), UacState::Terminating);
        // With a response: terminated at once.
        let (mut c2, _, _) = answered();
        c2.hangup(t0);
        let bye2 = one_request(&mut c2);
        c2.handle_response(t0, reply(&bye2, 200, &[], ""));
        assert_eq!(events(&mut c2), [UacEvent::Terminated]);
        // Without: Timer F.
        assert_eq!(call.poll_timeout(), Some(t0 + ms(1000) + 64 * ms(500)));
        call.handle_timeout(t0 + ms(1000) + 64 * ms(500));
        assert_eq!(events(&mut call), [UacEvent::Terminated]);
    }

    fn in_dialog(
        call: &UacCall,
        invite: &Request,
        method: &str,
        cseq: u32,
        extra: &str,
    ) -> Request {
        let from = invite.headers.get("From").unwrap();
        let text = format!(
            "{method} sip:sbc@sbc.example.com:5061;transport=tls SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.20:5061;branch=z9hG4bKpeer{cseq}\r\nFrom: <sip:+15105550123@example.pstn.twilio.com>;tag=callee1\r\nTo: {from}\r\nCall-ID: {}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n{extra}Content-Length: 0\r\n\r\n",
            call.call_id()
        );
        match SipMessage::parse(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => unreachable!(),
        }
    }

    fn one_response(call: &mut UacCall) -> Response {
        let mut m = drain(call);
        assert_eq!(m.len(), 1);
        match m.remove(0) {
            SipMessage::Response(r) => r,
            SipMessage::Request(r) => panic!("response expected, got {}", r.method),
        }
    }

    #[test]
    fn their_bye_is_answered_200() {
        let (mut call, t0, invite) = answered();
        let bye = in_dialog(&call, &invite, "BYE", 10, "");
        call.handle_request(t0, bye);
        assert_eq!(one_response(&mut call).status, 200);
        assert_eq!(
            events(&mut call),
            [UacEvent::RemoteBye, UacEvent::Terminated]
        );
        assert_eq!(call.state(), UacState::Terminated);
    }

    #[test]
    fn requests_outside_the_dialog_get_481_and_change_nothing() {
        let (mut call, t0, invite) = answered();
        let mut bye = in_dialog(&call, &invite, "BYE", 10, "");
        bye.headers.remove("Call-ID");
        bye.headers.push("Call-ID", "other");
        call.handle_request(t0, bye);
        assert_eq!(one_response(&mut call).status, 481);
        assert_eq!(call.state(), UacState::Confirmed);
        let mut ack = in_dialog(&call, &invite, "ACK", 10, "");
        ack.headers.remove("Call-ID");
        call.handle_request(t0, ack);
        assert!(drain(&mut call).is_empty(), "never answer an ACK");
        // A response for another call is ignored too.
        let mut other = reply(&invite, 486, &[], "");
        other.headers.remove("Call-ID");
        other.headers.push("Call-ID", "other");
        call.handle_response(t0, other);
        assert!(drain(&mut call).is_empty());
        assert!(events(&mut call).is_empty());
    }

    /// Session timers as UAC: (2xx Session-Expires, peer Allow) → what we send and when.
    #[test]
    fn session_refresh_table() {
        let cases: &[(&str, &str, Option<Method>)] = &[
            (
                "1800;refresher=uac",
                "INVITE, ACK, BYE, UPDATE",
                Some(Method::Update),
            ),
            (
                "1800;refresher=uac",
                "INVITE, ACK, BYE",
                Some(Method::Invite),
            ),
            ("1800", "UPDATE", Some(Method::Update)),
            ("1800;refresher=uas", "UPDATE", None),
        ];
        for (se, allow, refresh) in cases {
            let (mut call, t0, invite) = start();
            let ok = reply(
                &invite,
                200,
                &[
                    CONTACT,
                    ("Session-Expires", se),
                    ("Require", "timer"),
                    ("Allow", allow),
                ],
                "v=0\r\n",
            );
            call.handle_response(t0, ok);
            let _ = drain(&mut call);
            let _ = events(&mut call);
            let half = t0 + Duration::from_secs(900);
            call.handle_timeout(half);
            let sent = requests(&mut call);
            match refresh {
                Some(m) => {
                    assert_eq!(sent.len(), 1, "{se} {allow}");
                    let r = &sent[0];
                    assert_eq!(&r.method, m);
                    assert_eq!(r.headers.get("Session-Expires"), Some("1800;refresher=uac"));
                    assert_eq!(r.body.is_empty(), *m == Method::Update);
                    // Answered: re-INVITE gets an ACK, and the next refresh is 900 s later.
                    let resp = reply(
                        r,
                        200,
                        &[("Session-Expires", "1800;refresher=uac")],
                        "v=0\r\n",
                    );
                    call.handle_response(half + ms(20), resp);
                    let after = requests(&mut call);
                    assert_eq!(after.len(), usize::from(*m == Method::Invite));
                    assert_eq!(
                        call.poll_timeout(),
                        Some(half + ms(20) + Duration::from_secs(900))
                    );
                }
                None => {
                    assert!(sent.is_empty());
                    // The peer refreshes; without it, BYE at 1800 - 32 s.
                    assert_eq!(call.poll_timeout(), Some(t0 + Duration::from_secs(1768)));
                    call.handle_timeout(t0 + Duration::from_secs(1768));
                    assert_eq!(one_request(&mut call).method, Method::Bye);
                    assert_eq!(events(&mut call), [UacEvent::SessionExpired]);
                }
            }
        }
    }

    #[test]
    fn refresh_failure_ends_the_call() {
        for status in [408u16, 481] {
            let (mut call, t0, invite) = start();
            let ok = reply(
                &invite,
                200,
                &[
                    CONTACT,
                    ("Session-Expires", "120;refresher=uac"),
                    ("Allow", "UPDATE"),
                ],
                "v=0\r\n",
            );
            call.handle_response(t0, ok);
            let _ = drain(&mut call);
            let _ = events(&mut call);
            call.handle_timeout(t0 + Duration::from_secs(60));
            let update = one_request(&mut call);
            call.handle_response(
                t0 + Duration::from_secs(61),
                reply(&update, status, &[], ""),
            );
            assert_eq!(one_request(&mut call).method, Method::Bye);
            assert_eq!(events(&mut call), [UacEvent::SessionExpired]);
        }
        // No answer to the refresh: Timer F, then BYE.
        let (mut call, t0, invite) = start();
        call.handle_response(
            t0,
            reply(
                &invite,
                200,
                &[
                    CONTACT,
                    ("Session-Expires", "600;refresher=uac"),
                    ("Allow", "UPDATE"),
                ],
                "",
            ),
        );
        let _ = drain(&mut call);
        let _ = events(&mut call);
        call.handle_timeout(t0 + Duration::from_secs(300));
        let _ = drain(&mut call);
        call.handle_timeout(t0 + Duration::from_secs(300) + 64 * ms(500));
        assert_eq!(one_request(&mut call).method, Method::Bye);
        assert_eq!(events(&mut call), [UacEvent::SessionExpired]);
    }

    /// The peer refreshes (re-INVITE/UPDATE): answered, and our expiry moves.
    #[test]
    fn peer_refresh_and_reoffer() {
        let (mut call, t0, invite) = start();
        call.handle_response(
            t0,
            reply(
                &invite,
                200,
                &[CONTACT, ("Session-Expires", "1800;refresher=uas")],
                "",
            ),
        );
        let _ = drain(&mut call);
        let _ = events(&mut call);
        let t1 = t0 + Duration::from_secs(800);
        let update = in_dialog(
            &call,
            &invite,
            "UPDATE",
            11,
            "Session-Expires: 1800;refresher=uac\r\n",
        );
        call.handle_request(t1, update);
        let ok = one_response(&mut call);
        assert_eq!(ok.status, 200);
        assert_eq!(
            ok.headers.get("Session-Expires"),
            Some("1800;refresher=uac")
        );
        assert_eq!(call.poll_timeout(), Some(t1 + Duration::from_secs(1768)));
        // A re-INVITE with SDP is a re-offer for the call task.
        let mut reinvite = in_dialog(
            &call,
            &invite,
            "INVITE",
            12,
            "Content-Type: application/sdp\r\n",
        );
        reinvite.body = Body::from_static(b"v=0\r\nnew\r\n");
        call.handle_request(t1, reinvite.clone());
        assert_eq!(
            events(&mut call),
            [UacEvent::ReOffer {
                sdp: Body::from_static(b"v=0\r\nnew\r\n")
            }]
        );
        // A second one while it is pending: 500 with Retry-After.
        call.handle_request(t1, reinvite);
        assert_eq!(one_response(&mut call).status, 500);
        call.answer_reoffer(t1, Ok(Bytes::from_static(b"v=0\r\nans\r\n")));
        let ok = one_response(&mut call);
        assert_eq!(ok.status, 200);
        assert_eq!(&ok.body[..], b"v=0\r\nans\r\n");
    }

    #[test]
    fn second_fork_is_acked_and_byed() {
        let (mut call, t0, invite) = answered();
        let mut other = reply(&invite, 200, &[CONTACT], "v=0\r\n");
        let to = other.headers.get("To").unwrap().replace("callee1", "fork2");
        other.headers.remove("To");
        other.headers.push("To", to);
        call.handle_response(t0, other);
        let msgs = requests(&mut call);
        assert_eq!(
            msgs.iter().map(|m| m.method.clone()).collect::<Vec<_>>(),
            [Method::Ack, Method::Bye]
        );
        assert!(msgs[1].headers.get("To").unwrap().contains("fork2"));
        assert_eq!(call.state(), UacState::Confirmed);
        assert!(events(&mut call).is_empty());
    }

    #[test]
    fn sdes_offer_parses_back_and_accepts_matching_answers() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        let offer = SdesOffer::new("192.0.2.5".parse().unwrap(), 40000, 1234, &mut rng);
        let text = std::str::from_utf8(&offer.sdp).unwrap();
        let parsed = sdp::SessionDescription::parse(&offer.sdp).unwrap();
        assert_eq!(parsed.to_string(), text);
        assert!(text.contains("m=audio 40000 RTP/SAVP 0 8 101\r\n"));
        assert!(text.contains("a=rtpmap:101 telephone-event/8000\r\n"));
        assert!(text.contains("a=fmtp:101 0-16\r\n"));
        assert!(text.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:"));
        assert!(text.contains("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:"));
        assert!(text.contains("c=IN IP4 192.0.2.5\r\n"));
        assert_eq!(offer.keys.len(), 2);
        assert_ne!(
            offer.keys[0].key_salt, offer.keys[1].key_salt,
            "fresh key per line"
        );
        assert!(!format!("{offer:?}").contains(&offer.keys[0].key_salt.to_base64()));
        let other = SdesOffer::new("192.0.2.5".parse().unwrap(), 40000, 1234, &mut rng);
        assert_ne!(other.keys[0].key_salt, offer.keys[0].key_salt);

        let key = "YUJDZGVmZ2hpSktMbW9QUXJzVHVWd1h5ejEyMzQ1";
        let answer = |proto: &str, crypto: &str| {
            format!("v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nc=IN IP4 192.0.2.20\r\nt=0 0\r\nm=audio 20000 {proto} 0\r\n{crypto}")
        };
        let cases: &[(String, Result<u32, AnswerError>)] = &[
            (
                answer(
                    "RTP/SAVP",
                    &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\n"),
                ),
                Ok(1),
            ),
            (
                answer(
                    "RTP/SAVP",
                    &format!("a=crypto:2 AES_CM_128_HMAC_SHA1_32 inline:{key}\r\n"),
                ),
                Ok(2),
            ),
            (
                answer(
                    "RTP/SAVP",
                    &format!("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{key}\r\n"),
                ),
                Err(AnswerError::NoCrypto),
            ),
            (
                answer("RTP/AVP", ""),
                Err(AnswerError::NotSavp("RTP/AVP".into())),
            ),
            (answer("RTP/SAVP", ""), Err(AnswerError::NoCrypto)),
            (
                "v=0\r\no=- 1 1 IN IP4 192.0.2.20\r\ns=-\r\nt=0 0\r\n".into(),
                Err(AnswerError::NoAudio),
            ),
        ];
        for (a, expected) in cases {
            let got = offer.accept_answer(a.as_bytes()).map(|(k, _)| k.tag);
            assert_eq!(&got, expected, "{a}");
        }
        assert!(matches!(
            offer.accept_answer(b"x=1\r\n"),
            Err(AnswerError::Parse(_))
        ));
    }
}
