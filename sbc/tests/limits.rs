//! `[limits]` against the real binary over TLS, each set below its default so that a message
//! the default would accept is refused: SIP message size (413, or the connection closed when
//! not even the header block fits), header count (400 Too Many Headers), SDP body size and
//! number of media lines (488 with a Warning saying why). Just under each limit is accepted.
//! And `idle_timeout_secs`: a quiet connection is closed, but not while a call uses it.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::{config, connect, free_port, wait_until, Pki, Sbc};

const LIMITS: &str = "[limits]\nmax_message_bytes = 4096\nmax_headers = 20\nmax_sdp_bytes = 1024\nmax_media_lines = 2\n";

struct Fixture {
    pki: Pki,
    port: u16,
    _sbc: Sbc,
}

fn start() -> Fixture {
    start_with(LIMITS)
}

fn start_with(limits: &str) -> Fixture {
    let pki = Pki::new();
    let port = free_port();
    let media = 44600;
    let cfg = config(port, media, "\"127.0.0.0/8\"").replace("[limits]\n", limits);
    assert!(cfg.contains(limits), "{cfg}");
    let path = pki.path("sbc.toml");
    std::fs::write(&path, cfg).unwrap();
    let sbc = Sbc::start(&path, pki.path("sbc.stderr"));
    assert!(
        wait_until(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "sbc did not listen:\n{}",
        std::fs::read_to_string(pki.path("sbc.stderr")).unwrap_or_default()
    );
    Fixture {
        pki,
        port,
        _sbc: sbc,
    }
}

#[derive(Debug)]
enum Reply {
    /// The final response (1xx skipped), whole.
    Final(String),
    /// The connection closed without a final response.
    Closed,
}

/// Sends `msg` on a fresh connection and waits (generously) for a final response.
fn exchange(
    f: &Fixture,
    msg: &[u8],
) -> (
    Reply,
    Option<rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>>,
) {
    let mut tls = connect(&f.pki, f.port).expect("TLS connect");
    if tls.write_all(msg).and_then(|()| tls.flush()).is_err() {
        return (Reply::Closed, None);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        // Drop complete provisional responses; return the first final one.
        while let Some(end) = interop_tests::tlsclient::complete_message(&got) {
            let m = String::from_utf8_lossy(&got[..end]).into_owned();
            got.drain(..end);
            if !m.starts_with("SIP/2.0 1") {
                return (Reply::Final(m), Some(tls));
            }
        }
        match tls.read(&mut buf) {
            Ok(0) => return (Reply::Closed, None),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return (Reply::Closed, None),
        }
    }
    panic!(
        "no final response and no close within 20 s; got {:?}",
        String::from_utf8_lossy(&got)
    );
}

fn status(r: &Reply) -> Option<u16> {
    match r {
        Reply::Final(m) => m.get(8..11).and_then(|c| c.parse().ok()),
        Reply::Closed => None,
    }
}

fn header<'a>(m: &'a str, name: &str) -> Option<&'a str> {
    m.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// OPTIONS with `extra` header lines (7 headers of its own) and `body`.
fn options(port: u16, tag: &str, extra: usize, body: &str) -> String {
    let mut m = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK{tag}\r\nFrom: <sip:ops@127.0.0.1>;tag=1\r\nTo: <sip:sbc@127.0.0.1>\r\nCall-ID: lim-{tag}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n"
    );
    for i in 0..extra {
        m.push_str(&format!("X-Extra-{i}: {i}\r\n"));
    }
    if !body.is_empty() {
        // A body needs a type sbc reads (else 415, issue 13); OPTIONS bodies are not parsed.
        m.push_str("Content-Type: application/sdp\r\n");
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    m
}

/// An INVITE with an SDES-SRTP offer of `media_lines` audio m= lines, padded with `a=x-pad`
/// attributes to `sdp_len` bytes (at least its natural size).
fn invite(port: u16, tag: &str, media_lines: usize, sdp_len: usize) -> (String, String) {
    let mut sdp = String::from(
        "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n",
    );
    for i in 0..media_lines {
        sdp.push_str(&format!(
            "m=audio {} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n",
            40000 + 2 * i
        ));
    }
    while sdp.len() + 12 <= sdp_len {
        let n = (sdp_len - sdp.len() - 10).min(60);
        sdp.push_str(&format!("a=x-pad:{}\r\n", "p".repeat(n)));
    }
    let call_id = format!("lim-inv-{tag}");
    let msg = format!(
        "INVITE sip:+15550002222@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK{tag}\r\nFrom: <sip:+15550001111@127.0.0.1>;tag=f{tag}\r\nTo: <sip:+15550002222@127.0.0.1>\r\nCall-ID: {call_id}\r\nCSeq: 1 INVITE\r\nMax-Forwards: 70\r\nContact: <sip:carrier@127.0.0.1:5999;transport=tls>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
        sdp.len()
    );
    (msg, call_id)
}

/// Ends an answered call: ACK, then BYE (answer ignored; the call's audit is not checked here).
fn hang_up(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    ok: &str,
    port: u16,
    call_id: &str,
) {
    let to = header(ok, "To").expect("To");
    let from = header(ok, "From").expect("From");
    for (method, branch, cseq) in [("ACK", "z9hG4bKa", 1), ("BYE", "z9hG4bKb", 2)] {
        let m = format!(
            "{method} sip:+15550002222@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch={branch}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        let _ = tls.write_all(m.as_bytes());
    }
    let _ = tls.flush();
}

#[test]
fn message_size_limit_gives_413_or_closes() {
    let f = start();
    // Under the limit (4096): 200.
    let small = options(f.port, "s1", 0, &"b".repeat(3500));
    assert!(small.len() < 4096);
    let (r, _) = exchange(&f, small.as_bytes());
    assert_eq!(status(&r), Some(200), "{r:?}");
    // Headers fit, body makes it too large: 413 built from the header block.
    let big = options(f.port, "s2", 0, &"b".repeat(5000));
    let (r, _) = exchange(&f, big.as_bytes());
    assert_eq!(status(&r), Some(413), "{r:?}");
    // Not even the header block fits: the connection is closed (nothing to address a 413 to).
    let mut endless = options(f.port, "s3", 0, "");
    endless.truncate(endless.len() - 4);
    endless.push_str(&format!("\r\nX-Long: {}", "h".repeat(6000)));
    let (r, _) = exchange(&f, endless.as_bytes());
    assert!(
        matches!(r, Reply::Closed) || status(&r) == Some(413),
        "{r:?}"
    );
    // sbc is still serving.
    let (r, _) = exchange(&f, options(f.port, "s4", 0, "").as_bytes());
    assert_eq!(status(&r), Some(200), "{r:?}");
}

#[test]
fn header_count_limit_gives_400() {
    let f = start();
    // 7 + 13 = 20 headers: at the limit, accepted.
    let (r, _) = exchange(&f, options(f.port, "h1", 13, "").as_bytes());
    assert_eq!(status(&r), Some(200), "{r:?}");
    // 21: refused.
    let (r, _) = exchange(&f, options(f.port, "h2", 14, "").as_bytes());
    assert_eq!(status(&r), Some(400), "{r:?}");
    let Reply::Final(m) = r else { unreachable!() };
    assert!(m.starts_with("SIP/2.0 400 Too Many Headers"), "{m}");
}

/// The INVITE `(media_lines, sdp_len)` of `accepted` gets 200 (then ACK and BYE), the one of
/// `refused` gets 488 whose Warning contains `why`.
fn accepted_then_refused(accepted: (usize, usize), refused: (usize, usize), why: &str) {
    let f = start();
    let (msg, call_id) = invite(f.port, "a", accepted.0, accepted.1);
    let (r, tls) = exchange(&f, msg.as_bytes());
    assert_eq!(
        status(&r),
        Some(200),
        "{accepted:?} must be accepted: {r:?}"
    );
    if let (Reply::Final(ok), Some(mut tls)) = (&r, tls) {
        hang_up(&mut tls, ok, f.port, &call_id);
    }
    let (msg, _) = invite(f.port, "r", refused.0, refused.1);
    let (r, _) = exchange(&f, msg.as_bytes());
    assert_eq!(status(&r), Some(488), "{refused:?} must be refused: {r:?}");
    let Reply::Final(m) = r else { unreachable!() };
    let warning = header(&m, "Warning").unwrap_or_else(|| panic!("488 without Warning:\n{m}"));
    assert!(
        warning.contains(why),
        "the Warning must say why ({why}): {warning}"
    );
}

/// An SDP of 1000 bytes is accepted, one of 1100 is over `max_sdp_bytes = 1024`.
#[test]
fn sdp_size_limit_gives_488_with_warning() {
    accepted_then_refused((1, 1000), (1, 1100), "SDP larger than 1024 bytes");
}

/// Two m= lines (the limit) are accepted, three are not.
#[test]
fn media_line_limit_gives_488_with_warning() {
    accepted_then_refused((2, 0), (3, 0), "too many media lines (3)");
}

/// Reads from `tls` until `timeout`: true when the peer closed the connection (end of stream or
/// reset), false when it stayed open and silent.
fn closed_within(
    tls: &mut rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream>,
    timeout: Duration,
) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 4096];
    tls.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    while Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

/// `idle_timeout_secs = 1`: a connection carrying an answered call stays open although the
/// carrier sends nothing for several times the timeout (the BYE then still works on it); once
/// the call ended, the quiet connection is closed. An OPTIONS-only connection is closed too.
#[test]
fn idle_timeout_spares_connections_with_calls() {
    let f = start_with("[limits]\nidle_timeout_secs = 1\n");
    let (msg, call_id) = invite(f.port, "idle", 1, 0);
    let (r, tls) = exchange(&f, msg.as_bytes());
    let (Reply::Final(ok), Some(mut tls)) = (r, tls) else {
        panic!("no 200 for the INVITE");
    };
    assert_eq!(status(&Reply::Final(ok.clone())), Some(200), "{ok}");
    let to = header(&ok, "To").expect("To").to_string();
    let from = header(&ok, "From").expect("From").to_string();
    let request = |method: &str, cseq: u32| {
        format!(
            "{method} sip:+15550002222@127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKi{cseq}\r\nFrom: {from}\r\nTo: {to}\r\nCall-ID: {call_id}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
            port = f.port
        )
    };
    tls.write_all(request("ACK", 1).as_bytes()).unwrap();
    // Quiet for four times the idle timeout: a load can only make this wait longer.
    assert!(
        !closed_within(&mut tls, Duration::from_secs(4)),
        "sbc closed the connection of an active call as idle"
    );
    tls.write_all(request("BYE", 2).as_bytes()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while interop_tests::tlsclient::complete_message(&got).is_none() && Instant::now() < deadline {
        match tls.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("SIP/2.0 200") && text.contains("2 BYE"),
        "the BYE on the kept connection must get 200: {text:?}"
    );
    assert!(
        closed_within(&mut tls, Duration::from_secs(20)),
        "after the call, the quiet connection must be closed"
    );
    // No call at all: closed as well.
    let mut plain = connect(&f.pki, f.port).expect("TLS connect");
    assert!(closed_within(&mut plain, Duration::from_secs(20)));
}
