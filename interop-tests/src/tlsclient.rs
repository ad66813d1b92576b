//! A raw SIP-over-TLS client for things SIPp cannot send (an INVITE without Call-ID) and for
//! checking that sbc refuses a connection.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::TestPki;

fn client_config(pki: &TestPki) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).expect("add CA");
    rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("versions")
    .with_root_certificates(roots)
    .with_no_client_auth()
}

/// An open SIP-over-TLS connection.
pub type TlsConn = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// Connects to `127.0.0.1:port` over TLS (trusting the test CA) and completes the handshake.
pub fn connect(pki: &TestPki, port: u16, timeout: Duration) -> Result<TlsConn, String> {
    let tcp = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)
        .map_err(|e| format!("tcp connect: {e}"))?;
    tcp.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1")
        .expect("name")
        .to_owned();
    let conn = rustls::ClientConnection::new(Arc::new(client_config(pki)), name)
        .map_err(|e| format!("tls: {e}"))?;
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + timeout;
    while tls.conn.is_handshaking() {
        if Instant::now() > deadline {
            return Err("tls handshake timed out".into());
        }
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(format!("tls handshake: {e}")),
        }
    }
    Ok(tls)
}

/// Connects to `127.0.0.1:port` over TLS (trusting the test CA), sends `request` and reads
/// until one complete SIP message (headers plus `Content-Length` body) arrived, the peer closed,
/// or `timeout` passed. `Err` describes a connect/handshake/IO failure.
pub fn sip_exchange(
    pki: &TestPki,
    port: u16,
    request: &[u8],
    timeout: Duration,
) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    let mut tls = connect(pki, port, timeout)?;
    tls.write_all(request).map_err(|e| format!("write: {e}"))?;
    tls.flush().map_err(|e| format!("flush: {e}"))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = complete_message(&buf) {
            return Ok(String::from_utf8_lossy(&buf[..end]).into_owned());
        }
        if Instant::now() > deadline {
            return if buf.is_empty() {
                Err("no response before timeout".into())
            } else {
                Ok(String::from_utf8_lossy(&buf).into_owned())
            };
        }
        match tls.read(&mut chunk) {
            Ok(0) => {
                return if buf.is_empty() {
                    Err("connection closed without a response".into())
                } else {
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => {
                return if buf.is_empty() {
                    Err(format!("read: {e}"))
                } else {
                    Ok(String::from_utf8_lossy(&buf).into_owned())
                }
            }
        }
    }
}

/// The length of the first complete SIP message in `buf` (headers plus `Content-Length` body).
pub fn complete_message(buf: &[u8]) -> Option<usize> {
    // The head is located in bytes: a lossy UTF-8 view would move offsets after invalid bytes.
    let head_end = buf.windows(4).position(|w| w == b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]);
    let len = head
        .lines()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            let n = name.trim().to_ascii_lowercase();
            (n == "content-length" || n == "l").then(|| value.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some(head_end + len)
}

/// The status code of a SIP response (`SIP/2.0 400 Bad Request` → 400).
pub fn status_code(response: &str) -> Option<u16> {
    let first = response.lines().next()?;
    let mut parts = first.split_whitespace();
    (parts.next()? == "SIP/2.0").then_some(())?;
    parts.next()?.parse().ok()
}
