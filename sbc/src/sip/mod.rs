//! The SIP core: framing, parsing, the sans-IO UAS call state machine (transactions and
//! dialog) for calls carriers place, and the sans-IO UAC call ([`uac::UacCall`], with the
//! digest client in [`digest`]) for calls sbc places through a trunk (`outbound.rs` drives it).
//! No I/O, no clock: `now` comes in as an argument, randomness through an RNG.
//!
//! What it does not do: sockets, TLS, DNS, routing requests to calls by Call-ID (the shell
//! answers 481 for unknown dialogs), SDP policy (the call task answers offers and checks
//! answers with the `sdp` crate; [`uac::SdesOffer`] only writes our offer and matches the
//! answer's crypto line to it).
//!
//! Driving it, per connection and per call:
//!
//! ```text
//! framer.push(&bytes_read);
//! loop match framer.next_frame() {
//!     Ok(Some(Frame::Ping)) => write "\r\n",
//!     Ok(Some(Frame::Pong)) | Ok(None) => ...,
//!     Ok(Some(Frame::Message(m))) => match SipMessage::parse(&m) {
//!         Ok(SipMessage::Request(r)) => if let Err(rej) = r.validate() {
//!             // never answer an ACK
//!             write stateless_response(&r, rej.status, &rej.reason, &config, None, rng)
//!         } else if new INVITE { call = UasCall::new(now, r, config, rng) }
//!           else { mailbox(call_id) -> call.handle_request(now, r), or 481 }
//!         Ok(SipMessage::Response(r)) => mailbox(call_id) -> call.handle_response(now, r),
//!         Err(_) => close (or 400 if a Via can be salvaged),
//!     },
//!     Err(FrameError::TooLarge { head: Some(h), .. }) => 413 built from h, then close,
//!     Err(_) => close,
//! }
//! // call task:
//! call.accept(now, sdp) / ringing / reject / hangup / answer_reoffer(...)
//! while let Some(m) = call.poll_transmit() { write m.to_bytes() }
//! while let Some(e) = call.poll_event() { act }
//! sleep until call.poll_timeout(), then call.handle_timeout(now)
//! ```

use std::time::Duration;

use rand::Rng;

mod call;
pub(crate) use call::CallRng;
pub mod digest;
pub mod framing;
pub mod message;
pub mod strict;
pub mod uac;

pub use call::{Refresher, RequestMatch, SessionTimer, UasCall, TRANSFER_TIMEOUT};
pub use framing::{Frame, FrameError, Framer};
pub use message::{
    Body, Headers, Method, ParseError, Rejection, Request, Response, SipMessage, ALLOW, SUPPORTED,
};

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
    /// The agent stopped reading: frames for it waited past `[agent] send_timeout_ms`.
    AgentStuck,
    /// The call-control API asked to end the call (`Status=completed` or `<Hangup/>`).
    Api,
    /// A blind transfer succeeded (terminating NOTIFY with a 2xx sipfrag): we leave the call.
    Transferred,
}

/// Where our REFER (RFC 3515) stands; see [`CallEvent::Transfer`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferEvent {
    /// The REFER was accepted (202).
    Accepted,
    /// A NOTIFY with a provisional sipfrag (`SIP/2.0 100 Trying`).
    Progress(u16),
    /// A terminating NOTIFY with a 2xx sipfrag: the carrier connected the call elsewhere.
    Succeeded(u16),
    /// The REFER was refused (its status), the sipfrag said so (its status), or no final
    /// NOTIFY came in time (408). The call goes on.
    Failed(u16),
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
    ReOffer { sdp: Body },
    /// INFO with application/dtmf-relay (or application/dtmf).
    Dtmf { digit: char, duration: Duration },
    /// Progress or outcome of our REFER.
    Transfer(TransferEvent),
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

/// A response to a request handled outside any call, by the shell: OPTIONS out of dialog
/// (200 with Allow, Accept, Supported), 415 (with Accept and Accept-Encoding), a [`Rejection`] from [`Request::validate`] (405 and 501
/// carry `Allow: ALLOW`, RFC 3261 §8.2.1; 420 carries `Unsupported`, §8.2.2.3), 481 for an unknown dialog, 403/404/503 (with
/// `Retry-After` when given) for a new INVITE refused before a call task exists. Final responses
/// get a random To tag when To has none (RFC 3261 §8.2.6.2); `Server` comes from config.
/// Never answer an ACK.
pub fn stateless_response(
    req: &Request,
    status: u16,
    reason: &str,
    config: &UasConfig,
    retry_after: Option<u32>,
    rng: &mut dyn rand::RngCore,
) -> Response {
    let tag: String = (0..8).map(|_| format!("{:02x}", rng.gen::<u8>())).collect();
    let reason: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    let mut resp = req.response(status, &reason, (status > 100).then_some(tag.as_str()));
    if matches!(status, 405 | 501) || (status == 200 && req.method == Method::Options) {
        resp.headers.push("Allow", ALLOW);
    }
    if status == 200 && req.method == Method::Options {
        resp.headers.push("Accept", "application/sdp");
        resp.headers.push("Supported", "timer");
    }
    // RFC 3261 §21.4.13: a 415 lists what is acceptable (see `strict::header_problem`).
    if status == 415 {
        let accept = strict::accepted_media_types(&req.method).unwrap_or(&["application/sdp"]);
        resp.headers.push("Accept", accept.join(", "));
        resp.headers.push("Accept-Encoding", "identity");
    }
    if status == 420 {
        resp.headers
            .push("Unsupported", req.unsupported().join(", "));
    }
    if let Some(secs) = retry_after {
        resp.headers.push("Retry-After", secs.to_string());
    }
    if let Some(s) = &config.server_header {
        resp.headers.push("Server", s.clone());
    }
    resp.headers.move_to_end("Content-Length");
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    pub(crate) fn config() -> UasConfig {
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

    fn options() -> Request {
        match SipMessage::parse(b"OPTIONS sip:sbc.example.com SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKo1\r\nFrom: <sip:ping@192.0.2.10>;tag=p1\r\nTo: <sip:sbc.example.com>\r\nCall-ID: opt-1\r\nCSeq: 5 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n").unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("request expected"),
        }
    }

    /// The core stays sans-IO (STYLE.md): no clock, sockets, threads or global RNG outside tests.
    #[test]
    fn no_io_in_the_core() {
        let files = [
            ("mod.rs", include_str!("mod.rs")),
            ("call.rs", include_str!("call.rs")),
            ("framing.rs", include_str!("framing.rs")),
            ("message.rs", include_str!("message.rs")),
        ];
        let marker = ["#[cfg(", "test)]"].concat();
        for (name, text) in files {
            let code = text.split(marker.as_str()).next().unwrap_or("");
            for banned in [
                "Instant::now",
                "SystemTime",
                "tokio",
                "std::net",
                "std::thread",
                "thread_rng",
                "std::fs",
            ] {
                assert!(!code.contains(banned), "{name} uses {banned}");
            }
        }
    }

    /// A 415 lists what sbc accepts (RFC 3261 §21.4.13): the media type and the encoding.
    #[test]
    fn unsupported_media_type_says_what_is_accepted() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let r = stateless_response(
            &options(),
            415,
            "Unsupported Media Type",
            &config(),
            None,
            &mut rng,
        );
        assert_eq!(r.headers.get("Accept"), Some("application/sdp"));
        assert_eq!(r.headers.get("Accept-Encoding"), Some("identity"));
    }

    /// Nothing that can hold an SDP body (and so SRTP keys) prints it in Debug.
    #[test]
    fn debug_never_shows_a_body() {
        let key = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";
        let text = format!("INVITE sip:a@b SIP/2.0\r\nVia: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 {key}\r\n", key.len() + 37);
        let msg = SipMessage::parse(text.as_bytes()).unwrap();
        let SipMessage::Request(req) = msg.clone() else {
            panic!("request expected")
        };
        let mut resp = req.response(200, "OK", Some("t"));
        resp.body = req.body.clone();
        let event = CallEvent::ReOffer {
            sdp: req.body.clone(),
        };
        let mut framer = Framer::new(4096);
        framer.push(text.as_bytes());
        let frame = framer.next_frame().unwrap().unwrap();
        for debug in [
            format!("{msg:?}"),
            format!("{req:#?}"),
            format!("{resp:?}"),
            format!("{event:?}"),
            format!("{frame:?}"),
        ] {
            assert!(!debug.contains("WVNf"), "{debug}");
            assert!(debug.contains("redacted"), "{debug}");
        }
    }

    #[test]
    fn stateless_options_and_rejections() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
        let req = options();
        let ok = stateless_response(&req, 200, "OK", &config(), None, &mut rng);
        assert_eq!(ok.headers.get("Allow"), Some(ALLOW));
        assert_eq!(ok.headers.get("Accept"), Some("application/sdp"));
        assert_eq!(ok.headers.get("Supported"), Some("timer"));
        assert!(ok.headers.get("To").unwrap().contains(";tag="));
        assert_eq!(ok.headers.get("Server"), None);
        let mut cfg = config();
        cfg.server_header = Some("sbc".into());
        let r = stateless_response(&req, 501, "Not Implemented", &cfg, None, &mut rng);
        assert_eq!(r.headers.get("Allow"), Some(ALLOW));
        assert_eq!(r.headers.get("Server"), Some("sbc"));
        let r = stateless_response(
            &req,
            503,
            "Service Unavailable\r\nX: y",
            &cfg,
            Some(30),
            &mut rng,
        );
        assert_eq!(r.headers.get("Retry-After"), Some("30"));
        assert_eq!(r.headers.get("Allow"), None);
        assert!(!r.reason.contains('\n'));
        let mut req420 = req.clone();
        req420.headers.push("Require", "100rel");
        let r = stateless_response(&req420, 420, "Bad Extension", &cfg, None, &mut rng);
        assert_eq!(r.headers.get("Unsupported"), Some("100rel"));
        let r = stateless_response(&req, 100, "Trying", &cfg, None, &mut rng);
        assert_eq!(r.headers.get("To"), Some("<sip:sbc.example.com>"));
    }
}
