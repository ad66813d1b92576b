//! SIP over TLS input: framing, parsing, the strict checks, validation, the called and calling
//! numbers (rsip URI parsing plus percent-decoding), and the UAS core fed with whatever parses
//! as a request. Must never panic, and a number never holds a control character (it goes into
//! log lines and audit records).
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;
use sbc::sip::framing::{Frame, Framer};
use sbc::sip::{strict, Body, Headers, Method, Request, SipMessage, UasCall, UasConfig};

fuzz_target!(|data: &[u8]| {
    let config = UasConfig {
        t1: Duration::from_millis(500),
        t2: Duration::from_secs(4),
        t4: Duration::from_secs(5),
        host: "sbc.example".into(),
        port: 5061,
        server_header: None,
        session_expires: Duration::from_secs(1800),
        min_se: Duration::from_secs(90),
    };
    // The number parsing on its own: the input as a Request-URI, and as From and To values.
    let text = String::from_utf8_lossy(data).into_owned();
    let mut headers = Headers::default();
    headers.push("From", text.clone());
    headers.push("To", format!("<{text}>"));
    let raw = Request {
        method: Method::Invite,
        uri: text,
        headers,
        body: Body::default(),
    };
    check_numbers(&raw);
    let _ = strict::header_problem(&raw);
    let now = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let mut framer = Framer::new(4096);
    // Feed in two pieces to exercise incremental framing.
    let split = data.len() / 2;
    framer.push(&data[..split]);
    framer.push(&data[split..]);
    let mut call: Option<UasCall> = None;
    for _ in 0..16 {
        let frame = match framer.next_frame() {
            Ok(Some(f)) => f,
            _ => break,
        };
        let Frame::Message(msg) = frame else { continue };
        let _ = strict::request_line_problem(&msg);
        let _ = strict::bad_request_for_unparsable(&msg, "x");
        let Ok(parsed) = SipMessage::parse(&msg) else { continue };
        let _ = parsed.to_bytes();
        match parsed {
            SipMessage::Request(req) => {
                let _ = strict::header_problem(&req);
                check_numbers(&req);
                if req.validate().is_err() {
                    continue;
                }
                match call.as_mut() {
                    None => call = Some(UasCall::new(now, req, config.clone(), &mut rng)),
                    Some(c) => c.handle_request(now, req),
                }
            }
            SipMessage::Response(resp) => {
                if let Some(c) = call.as_mut() {
                    c.handle_response(now, resp);
                }
            }
        }
    }
    if let Some(c) = call.as_mut() {
        c.accept(now, bytes::Bytes::from(b"v=0\r\n".to_vec()));
        c.handle_timeout(now + Duration::from_secs(40));
        c.hangup(now + Duration::from_secs(41), sbc::sip::HangupCause::Ops);
        while c.poll_transmit().is_some() {}
        while c.poll_event().is_some() {}
    }
});

fn check_numbers(req: &Request) {
    for n in [req.called_number(), req.caller_number()].into_iter().flatten() {
        assert!(!n.chars().any(char::is_control), "control character in {n:?}");
    }
}
