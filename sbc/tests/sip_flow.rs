//! End-to-end SIP core flows over bytes: fixture messages go through the framer, the parser,
//! `validate` and a `UasCall`; everything the core sends is serialised and framed back.

use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::SeedableRng;
use sbc::sip::framing::{Frame, Framer};
use sbc::sip::{
    stateless_response, CallEvent, CallState, Method, Request, Response, SipMessage, UasCall,
    UasConfig,
};

fn fixture(name: &str) -> Vec<u8> {
    let path = format!("{}/tests/data/sip/{name}", env!("CARGO_MANIFEST_DIR"));
    std::fs::read(&path).unwrap()
}

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

/// Frames `data` fed in chunks of `chunk` bytes and parses every message.
fn frame_all(data: &[u8], chunk: usize) -> Vec<SipMessage> {
    let mut framer = Framer::new(8192);
    let mut out = Vec::new();
    for piece in data.chunks(chunk) {
        framer.push(piece);
        while let Some(frame) = framer.next_frame().unwrap() {
            match frame {
                Frame::Message(m) => out.push(SipMessage::parse(&m).unwrap()),
                Frame::Ping | Frame::Pong => {}
            }
        }
    }
    out
}

fn request(m: SipMessage) -> Request {
    match m {
        SipMessage::Request(r) => r,
        SipMessage::Response(r) => panic!("request expected, got {}", r.status),
    }
}

/// What the call sent, through bytes and back.
fn sent(call: &mut UasCall) -> Vec<SipMessage> {
    let mut wire = Vec::new();
    while let Some(m) = call.poll_transmit() {
        wire.extend_from_slice(&m.to_bytes());
    }
    frame_all(&wire, 7)
}

fn response(m: &SipMessage) -> &Response {
    match m {
        SipMessage::Response(r) => r,
        SipMessage::Request(r) => panic!("response expected, got {}", r.method),
    }
}

#[test]
fn fixtures_frame_parse_and_validate() {
    for (name, called, caller) in [
        ("twilio_invite.sip", "+15550002222", "+15550001111"),
        ("sipp_invite.sip", "service", "sipp"),
        ("compact_invite.sip", "+15550002222", "+15550001111"),
    ] {
        let data = fixture(name);
        // Pipelined with keep-alives, fed in odd chunk sizes.
        let mut stream = b"\r\n\r\n".to_vec();
        stream.extend_from_slice(&data);
        stream.extend_from_slice(&data);
        for chunk in [1, 3, 17, 4096] {
            let msgs = frame_all(&stream, chunk);
            assert_eq!(msgs.len(), 2, "{name}");
            let inv = request(msgs[0].clone());
            assert_eq!(inv.method, Method::Invite);
            assert_eq!(inv.validate(), Ok(()), "{name}");
            assert_eq!(inv.called_number().as_deref(), Some(called), "{name}");
            assert_eq!(inv.caller_number().as_deref(), Some(caller), "{name}");
            assert!(inv.body.starts_with(b"v=0\r\n"));
            assert!(inv.body.ends_with(b"\r\n"));
        }
    }
}

#[test]
fn twilio_call_answered_and_hung_up_by_carrier() {
    let t0 = Instant::now();
    let invite = request(frame_all(&fixture("twilio_invite.sip"), 64).remove(0));
    assert_eq!(
        invite.headers.get("X-Twilio-CallSid"),
        Some("CAXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXXX")
    );
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    let mut call = UasCall::new(t0, invite.clone(), config(), &mut rng);
    call.ringing(t0);
    call.accept(
        t0 + Duration::from_millis(300),
        Bytes::from_static(b"v=0\r\ns=sbc\r\n"),
    );
    let out = sent(&mut call);
    let statuses: Vec<u16> = out.iter().map(|m| response(m).status).collect();
    assert_eq!(statuses, vec![100, 180, 200]);
    let ok = response(&out[2]);
    assert_eq!(&ok.body[..], b"v=0\r\ns=sbc\r\n");
    assert_eq!(
        ok.headers.get("Session-Expires"),
        Some("1800;refresher=uac")
    );
    assert_eq!(ok.headers.get("Require"), Some("timer"));
    let to = ok.headers.get("To").unwrap().to_string();

    let ack = format!(
        "ACK sip:sbc@sbc.example.com:5061;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bKack1\r\nMax-Forwards: 70\r\n\
From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n",
        invite.headers.get("From").unwrap(),
        invite.call_id().unwrap()
    );
    call.handle_request(
        t0 + Duration::from_secs(1),
        request(frame_all(ack.as_bytes(), 5).remove(0)),
    );
    assert_eq!(call.poll_event(), Some(CallEvent::Confirmed));
    assert_eq!(call.state(), CallState::Confirmed);

    let bye = ack
        .replace("ACK sip", "BYE sip")
        .replace("1 ACK", "2 BYE")
        .replace("ack1", "bye1");
    call.handle_request(
        t0 + Duration::from_secs(60),
        request(frame_all(bye.as_bytes(), 5).remove(0)),
    );
    let out = sent(&mut call);
    assert_eq!(response(&out[0]).status, 200);
    assert_eq!(response(&out[0]).headers.get("CSeq"), Some("2 BYE"));
    assert_eq!(call.poll_event(), Some(CallEvent::RemoteBye));
    assert_eq!(call.poll_event(), Some(CallEvent::Terminated));
    assert_eq!(call.poll_timeout(), None);
}

#[test]
fn out_of_dialog_options_and_refused_invite() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let invite = request(frame_all(&fixture("sipp_invite.sip"), 4096).remove(0));
    let busy = stateless_response(
        &invite,
        503,
        "Service Unavailable",
        &config(),
        Some(5),
        &mut rng,
    );
    let bytes = busy.to_bytes();
    let back = frame_all(&bytes, 9);
    let r = response(&back[0]);
    assert_eq!(r.status, 503);
    assert_eq!(r.headers.get("Retry-After"), Some("5"));
    assert_eq!(r.headers.get("Call-ID"), Some("1-4242@192.0.2.2"));
    assert!(r.headers.get("To").unwrap().contains(";tag="));
}
