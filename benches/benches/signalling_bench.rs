//! Signalling cost per call: frame + parse a Twilio-style INVITE (about 1 KB with SDP) and build
//! the 200 OK through the SIP core; parse + answer the Twilio SDP offer. Prints ns per operation.
//!
//! `cargo bench -p sbc-benches --bench signalling_bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::Criterion;
use rand::SeedableRng;
use sbc::sip::framing::{Frame, Framer};
use sbc::sip::{Request, SipMessage, UasCall, UasConfig};

const SDP: &str = "v=0\r\no=root 1681939480 1681939480 IN IP4 192.0.2.10\r\ns=Twilio Media Gateway\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 12162 RTP/SAVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\na=sendrecv\r\n";

fn invite() -> Vec<u8> {
    let head = format!(
        "INVITE sip:+15550002222@sbc.example.com:5061;transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS 192.0.2.10:5061;branch=z9hG4bK6f2a.8a1b3c4d5e6f;rport\r\n\
Max-Forwards: 69\r\n\
From: \"+15550001111\" <sip:+15550001111@192.0.2.10>;tag=38475912_6772d868_a3d7a1a2\r\n\
To: <sip:+15550002222@sbc.example.com>\r\n\
Call-ID: 4f1b2c3d4e5f60718293a4b5c6d7e8f9@192.0.2.10\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+15550001111@192.0.2.10:5061;transport=tls>\r\n\
Allow: INVITE, ACK, CANCEL, OPTIONS, BYE, INFO, UPDATE\r\n\
Supported: timer\r\n\
X-Twilio-AccountSid: AC0123456789abcdef0123456789abcdef\r\n\
X-Twilio-CallSid: CA0123456789abcdef0123456789abcdef\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{SDP}",
        SDP.len()
    );
    head.into_bytes()
}

fn uas_config() -> UasConfig {
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

fn frame_and_parse(bytes: &[u8]) -> Request {
    let mut framer = Framer::new(16384);
    framer.push(bytes);
    let Ok(Some(Frame::Message(msg))) = framer.next_frame() else {
        panic!("not framed")
    };
    let Ok(SipMessage::Request(req)) = SipMessage::parse(&msg) else {
        panic!("not a request")
    };
    req.validate().expect("valid INVITE");
    req
}

fn policy() -> sdp::AnswerPolicy {
    sdp::AnswerPolicy {
        suites: vec![
            sdp::SrtpSuite::AesCm128HmacSha1_80,
            sdp::SrtpSuite::AesCm128HmacSha1_32,
        ],
        codecs: vec![sdp::Codec::Pcmu, sdp::Codec::Pcma],
        address: "198.51.100.7".parse().expect("literal"),
        port: 20000,
        session_id: 1,
        session_version: 1,
        local_key: None,
        allow_loopback: true,
    }
}

fn per_op(f: &mut dyn FnMut(), n: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_nanos() as f64 / f64::from(n)
}

fn main() {
    let bytes = invite();
    let answer_sdp = Bytes::from_static(b"v=0\r\no=- 1 1 IN IP4 198.51.100.7\r\ns=-\r\nc=IN IP4 198.51.100.7\r\nt=0 0\r\nm=audio 20000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=sendrecv\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNk\r\n");
    let now = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let policy = policy();
    let mut c = Criterion::default().configure_from_args();

    let mut parse = || {
        black_box(frame_and_parse(black_box(&bytes)));
    };
    let mut build = || {
        let req = frame_and_parse(&bytes);
        let mut uas = UasCall::new(now, req, uas_config(), &mut rng);
        uas.accept(now, answer_sdp.clone());
        while let Some(m) = uas.poll_transmit() {
            black_box(m.to_bytes());
        }
    };
    let mut rng2 = rand_chacha::ChaCha8Rng::seed_from_u64(2);
    let mut offer_answer = || {
        let offer = sdp::SessionDescription::parse(black_box(SDP.as_bytes())).expect("offer");
        let a = sdp::answer_offer(&offer, &policy, &mut rng2).expect("answer");
        black_box(a.sdp.to_string());
    };
    c.bench_function("sip/frame+parse+validate INVITE", |b| b.iter(&mut parse));
    c.bench_function("sip/INVITE to 100+200 bytes", |b| b.iter(&mut build));
    c.bench_function("sdp/parse+answer Twilio offer", |b| {
        b.iter(&mut offer_answer)
    });
    c.final_summary();

    // Plain figures for docs/performance.md (medians of 5 runs of 20k operations).
    let med = |f: &mut dyn FnMut()| {
        let mut v: Vec<f64> = (0..5).map(|_| per_op(f, 20_000)).collect();
        v.sort_by(f64::total_cmp);
        v[2]
    };
    let p = med(&mut parse);
    let b = med(&mut build);
    let o = med(&mut offer_answer);
    println!("\nsignalling per call (ns, median of 5x20k):");
    println!(
        "  frame+parse+validate INVITE ({} bytes): {p:.0} ns",
        bytes.len()
    );
    println!("  INVITE -> 100 Trying + 200 OK bytes:      {b:.0} ns");
    println!("  SDP parse + answer (Twilio offer):        {o:.0} ns (target < 5000 ns: {:.2}x of target)", o / 5000.0);
}
