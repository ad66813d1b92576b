//! What the audit records about the SIP leg's TLS (issue 13): the key-exchange group, shown
//! with clients that offer a single group each. `X25519MLKEM768` is the hybrid post-quantum
//! group sbc offers; a client that offers only it must get it, and the record must say so.

mod common;

use std::io::{Read, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{config, free_port, wait_until, Pki, Sbc};

/// A TLS connection to sbc from a client that offers only `group`.
fn connect_with_group(
    pki: &Pki,
    port: u16,
    group: &'static dyn rustls::crypto::SupportedKxGroup,
) -> rustls::StreamOwned<rustls::ClientConnection, std::net::TcpStream> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let mut provider = rustls::crypto::aws_lc_rs::default_provider();
    provider.kx_groups = vec![group];
    let cfg = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    rustls::StreamOwned::new(conn, tcp)
}

/// An INVITE without SDP: refused (488) by the call, which writes a `call.refused` record.
fn invite_without_sdp(port: u16, call_id: &str) -> String {
    format!(
        "INVITE sip:+15550002222@127.0.0.1:{port} SIP/2.0\r\n\
Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK{call_id}\r\n\
Max-Forwards: 70\r\n\
From: <sip:+15550001111@127.0.0.1>;tag=f1\r\n\
To: <sip:+15550002222@127.0.0.1>\r\n\
Call-ID: {call_id}\r\n\
CSeq: 1 INVITE\r\n\
Contact: <sip:+15550001111@127.0.0.1:5999;transport=tls>\r\n\
Content-Length: 0\r\n\r\n"
    )
}

#[test]
fn audit_records_the_sip_legs_key_exchange_group() {
    let pki = Pki::new();
    let port = free_port();
    let path = pki.path("sbc.toml");
    std::fs::write(&path, config(port, 44800, "\"127.0.0.0/8\"")).unwrap();
    let _sbc = Sbc::start(&path, pki.path("sbc.stderr"));
    assert!(
        wait_until(|| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()),
        "sbc did not listen"
    );
    use rustls::crypto::aws_lc_rs::kx_group;
    for (group, name) in [
        (kx_group::X25519MLKEM768, "X25519MLKEM768"),
        (kx_group::X25519, "X25519"),
        (kx_group::SECP256R1, "secp256r1"),
    ] {
        let call_id = format!("kx-{name}");
        let mut tls = connect_with_group(&pki, port, group);
        tls.write_all(invite_without_sdp(port, &call_id).as_bytes())
            .unwrap();
        let mut buf = [0u8; 4096];
        let _ = tls.read(&mut buf);
        let deadline = Instant::now() + Duration::from_secs(10);
        let record = loop {
            let audit = std::fs::read_to_string(pki.path("audit.jsonl")).unwrap_or_default();
            let found = audit
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| v["sip_call_id"] == call_id.as_str());
            if let Some(v) = found {
                break v;
            }
            assert!(
                Instant::now() < deadline,
                "no record for {call_id}:\n{audit}"
            );
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(record["sip_tls"]["kx_group"], name, "{record}");
    }
}
