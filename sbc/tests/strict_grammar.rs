//! Strict SIP and SDP grammar (issue 13) against the real binary over TLS: each malformed
//! INVITE goes on a fresh connection and gets its own answer (415 with Accept or
//! Accept-Encoding, 400 with a reason or a Warning), a well-formed one is still answered 200,
//! and afterwards the log and the audit file hold no control character, no injected header
//! text and no SRTP key.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{config, connect, free_port, wait_until, Pki, Sbc};

const KEY: &str = "WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz";

/// A Twilio-like INVITE; `n` makes its Call-ID and branch unique.
fn invite(port: u16, n: usize) -> String {
    let sdp = format!(
        "v=0\r\no=root 1234 1234 IN IP4 192.0.2.10\r\ns=-\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\n\
m=audio 12000 RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n\
a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY}\r\na=sendrecv\r\n"
    );
    format!(
        "INVITE sip:+15550002222@127.0.0.1:{port};transport=tls SIP/2.0\r\n\
Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKstrict{n}\r\n\
Max-Forwards: 70\r\n\
From: \"Caller\" <sip:+15550001111@127.0.0.1>;tag=f{n}\r\n\
To: <sip:+15550002222@127.0.0.1>\r\n\
Call-ID: strict-{n}@127.0.0.1\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+15550001111@127.0.0.1:5999;transport=tls>\r\n\
Content-Type: application/sdp\r\n\
Content-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    )
}

/// `msg` with the first `from` replaced by raw bytes `to`, Content-Length fixed for the body.
fn mutate(msg: &str, from: &str, to: &[u8]) -> Vec<u8> {
    let at = msg
        .find(from)
        .unwrap_or_else(|| panic!("{from:?} not in the INVITE"));
    let mut out = msg.as_bytes()[..at].to_vec();
    out.extend_from_slice(to);
    out.extend_from_slice(&msg.as_bytes()[at + from.len()..]);
    let head_end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let body_len = out.len() - head_end;
    let text = String::from_utf8_lossy(&out[..head_end]).into_owned();
    let old = text
        .lines()
        .find(|l| l.starts_with("Content-Length:"))
        .unwrap()
        .to_string();
    let fixed = format!("Content-Length: {body_len}");
    let pos = out
        .windows(old.len())
        .position(|w| w == old.as_bytes())
        .unwrap();
    out.splice(pos..pos + old.len(), fixed.bytes());
    out
}

/// The first final response to `msg` on a fresh connection (1xx skipped), `None` if closed.
fn final_response(pki: &Pki, port: u16, msg: &[u8]) -> Option<String> {
    let mut tls = connect(pki, port).expect("TLS connect");
    tls.write_all(msg).ok()?;
    tls.flush().ok()?;
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        while let Some(end) = interop_tests::tlsclient::complete_message(&got) {
            let m = String::from_utf8_lossy(&got[..end]).into_owned();
            got.drain(..end);
            if !m.starts_with("SIP/2.0 1") {
                return Some(m);
            }
        }
        match tls.read(&mut buf) {
            Ok(0) => return None,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return None,
        }
    }
    panic!("no final response within 15 s");
}

fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn malformed_invites_get_their_own_answer_and_leave_no_trace() {
    let pki = Pki::new();
    let port = free_port();
    let path = pki.path("sbc.toml");
    std::fs::write(&path, config(port, 44700, "\"127.0.0.0/8\"")).unwrap();
    let sbc = Sbc::start(&path, pki.path("sbc.stderr"));
    assert!(
        wait_until(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "sbc did not listen"
    );

    type Case<'a> = (&'a str, &'a str, &'a [u8], u16, Option<(&'a str, &'a str)>);
    let cases: &[Case] = &[
        ("well-formed", "", b"", 200, None),
        (
            "body without Content-Type",
            "Content-Type: application/sdp\r\n",
            b"",
            415,
            Some(("Accept", "application/sdp")),
        ),
        (
            "text/plain body",
            "Content-Type: application/sdp",
            b"Content-Type: text/plain",
            415,
            Some(("Accept", "application/sdp")),
        ),
        (
            "multipart body",
            "Content-Type: application/sdp",
            b"Content-Type: multipart/mixed;boundary=b1",
            415,
            Some(("Accept", "application/sdp")),
        ),
        (
            "gzip encoding",
            "Content-Type: application/sdp\r\n",
            b"Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n",
            415,
            Some(("Accept-Encoding", "identity")),
        ),
        ("SDP v=1", "v=0", b"v=1", 400, Some(("Warning", "version"))),
        (
            "NUL in Call-ID",
            "Call-ID: strict",
            b"Call-ID: str\0ict",
            400,
            None,
        ),
        (
            "bad UTF-8 in From",
            "\"Caller\"",
            b"\"Call\xc3\x28er\"",
            400,
            None,
        ),
        (
            "ESC in Request-URI",
            "sip:+1555000",
            b"sip:+1555\x1b000",
            400,
            None,
        ),
        (
            "CRLF in the called number",
            "sip:+15550002222@127.0.0.1:",
            b"sip:+1555%0d%0aX-Evil:%20injected@127.0.0.1:",
            400,
            None,
        ),
        (
            "LF in the calling number",
            "<sip:+15550001111@127.0.0.1>",
            b"<sip:+1555%0AX-Evil@127.0.0.1>",
            400,
            None,
        ),
        (
            "NUL in a header name",
            "Max-Forwards",
            b"Max-Fo\0rwards",
            400,
            None,
        ),
    ];
    let mut failures = Vec::new();
    for (n, (what, from, to, want, header_want)) in cases.iter().enumerate() {
        let msg = invite(port, n);
        let bytes = if from.is_empty() {
            msg.into_bytes()
        } else {
            mutate(&msg, from, to)
        };
        let got = final_response(&pki, port, &bytes);
        let status = got
            .as_deref()
            .and_then(|m| m.get(8..11))
            .and_then(|c| c.parse::<u16>().ok());
        let header_ok = header_want.is_none_or(|(name, needle)| {
            got.as_deref()
                .and_then(|m| header(m, name))
                .is_some_and(|v| v.contains(needle))
        });
        println!("{what:<28} {status:?}");
        if status != Some(*want) || !header_ok {
            failures.push(format!("{what}: want {want} {header_want:?}, got {got:?}"));
        }
    }
    assert!(sbc.child.id() > 0);
    std::thread::sleep(Duration::from_millis(300));
    drop(sbc);
    let log = std::fs::read(pki.path("sbc.stderr")).unwrap();
    let audit = std::fs::read(pki.path("audit.jsonl")).unwrap_or_default();
    for (name, text) in [("log", &log), ("audit", &audit)] {
        let text =
            String::from_utf8(text.clone()).unwrap_or_else(|_| panic!("{name} is not UTF-8"));
        for (i, line) in text.lines().enumerate() {
            if line.chars().any(|c| c.is_control() && c != '\t') {
                failures.push(format!("{name} line {i} has a control character: {line:?}"));
            }
        }
        for needle in ["X-Evil", KEY] {
            if text.contains(needle) {
                failures.push(format!("{name} contains {needle:?}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
