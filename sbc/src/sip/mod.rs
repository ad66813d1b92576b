//! The SIP core: framing, parsing, and the sans-IO UAS call state machine (transactions and
//! dialog). No I/O, no clock: `now` comes in as an argument, randomness through an RNG.
//!
//! INTERFACE STUB: the SIP helper implements these and may add modules and items, but keeps the
//! public items below (names, fields, signatures).

use std::time::{Duration, Instant};

use bytes::Bytes;

pub mod framing;
pub mod message;

pub use message::{Method, Request, Response, SipMessage};

/// Static settings of the UAS core, from `[sip]`.
#[derive(Clone, Debug)]
pub struct UasConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// Our host for Contact and Warning (`sip:sbc@<host>:<port>;transport=tls`).
    pub host: String,
    pub port: u16,
    pub server_header: Option<String>,
    pub session_expires: Duration,
    pub min_se: Duration,
}

/// Why sbc ends a confirmed call (becomes the audit record's end reason on our side).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HangupCause {
    AgentHangup,
    RtpTimeout,
    Shutdown,
    Ops,
    Error,
}

/// What the call task must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum CallEvent {
    /// The ACK for our 2xx arrived: the dialog is confirmed.
    Confirmed,
    /// CANCEL before our final response; 200 to CANCEL and 487 to the INVITE already queued.
    Cancelled,
    /// The carrier sent BYE (200 already queued).
    RemoteBye,
    /// A re-INVITE or UPDATE carrying an SDP offer: answer with `answer_reoffer`.
    ReOffer { sdp: Bytes },
    /// INFO with application/dtmf-relay (or application/dtmf).
    Dtmf { digit: char, duration: Duration },
    /// No ACK within 64*T1 (Timer H): a BYE has been queued.
    AckTimeout,
    /// The RFC 4028 session interval expired without a refresh: a BYE has been queued.
    SessionExpired,
    /// The dialog is over (final response sent and no more retransmissions expected, or BYE done):
    /// the call task may exit once it has drained `poll_transmit`.
    Terminated,
}

/// Coarse state, RFC 3261 names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallState {
    /// INVITE received, no final response yet.
    Proceeding,
    /// 2xx sent, waiting for ACK.
    Accepted,
    /// ACK received.
    Confirmed,
    /// A non-2xx final response was sent (waiting for ACK), or BYE sent/received.
    Terminating,
    Terminated,
}

/// The sans-IO UAS side of one call: the INVITE server transaction, the dialog, in-dialog
/// requests, our BYE client transaction and RFC 4028 session timers.
pub struct UasCall {}

impl UasCall {
    /// Takes the initial INVITE (already validated) and queues `100 Trying`.
    pub fn new(
        now: Instant,
        invite: Request,
        config: UasConfig,
        rng: &mut dyn rand::RngCore,
    ) -> Self {
        let _ = (now, invite, config, rng);
        unimplemented!("sip stub")
    }
    /// A request in this dialog or for this INVITE (ACK, CANCEL, BYE, re-INVITE, UPDATE, INFO,
    /// OPTIONS, a retransmitted INVITE).
    pub fn handle_request(&mut self, now: Instant, request: Request) {
        let _ = (now, request);
        unimplemented!("sip stub")
    }
    /// A response to a request we sent (BYE, session refresh).
    pub fn handle_response(&mut self, now: Instant, response: Response) {
        let _ = (now, response);
        unimplemented!("sip stub")
    }
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        unimplemented!("sip stub")
    }
    /// Queue `180 Ringing`.
    pub fn ringing(&mut self, now: Instant) {
        let _ = now;
        unimplemented!("sip stub")
    }
    /// Queue `200 OK` with our SDP answer; retransmitted (T1 doubling to T2) until ACK; Timer H.
    pub fn accept(&mut self, now: Instant, sdp: Bytes) {
        let _ = (now, sdp);
        unimplemented!("sip stub")
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
        let _ = (now, status, reason, warning, retry_after);
        unimplemented!("sip stub")
    }
    /// Answer the pending `ReOffer`: `Ok(sdp)` sends 200 with it, `Err(warning)` sends 488.
    pub fn answer_reoffer(&mut self, now: Instant, answer: Result<Bytes, String>) {
        let _ = (now, answer);
        unimplemented!("sip stub")
    }
    /// End the call from our side: BYE once confirmed (or when the ACK comes), else a final error.
    pub fn hangup(&mut self, now: Instant, cause: HangupCause) {
        let _ = (now, cause);
        unimplemented!("sip stub")
    }
    /// Next message to send on the dialog's connection.
    pub fn poll_transmit(&mut self) -> Option<SipMessage> {
        unimplemented!("sip stub")
    }
    pub fn poll_event(&mut self) -> Option<CallEvent> {
        unimplemented!("sip stub")
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        unimplemented!("sip stub")
    }
    pub fn state(&self) -> CallState {
        unimplemented!("sip stub")
    }
}
