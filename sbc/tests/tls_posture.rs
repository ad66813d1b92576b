//! TLS posture of the SIP listener, checked with `openssl s_client` against the real binary:
//! TLS 1.3 offered; TLS 1.2 only with ECDHE + AEAD; TLS 1.0/1.1, CBC and RSA key exchange
//! refused; the certificate chain served complete.

mod common;

use std::process::{Command, Stdio};

use common::{config, free_port, wait_until, Pki, Sbc};

/// Runs s_client with `args`; returns (handshake completed, stdout).
fn s_client(port: u16, args: &[&str]) -> (bool, String) {
    let out = Command::new("timeout")
        .arg("10")
        .arg("openssl")
        .arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("openssl is needed: scripts/install-test-deps installs it");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let ok = text.contains("Cipher is ") && !text.contains("Cipher is (NONE)");
    (ok, text)
}

#[test]
fn listener_posture() {
    let pki = Pki::new();
    // Serve a chain: leaf signed by an intermediate signed by the root.
    let root = interop_tests::pki::TestCa::root("sbc test root");
    let int = root.intermediate("sbc test intermediate");
    int.issue(pki.dir.path(), "sbc", &["127.0.0.1"], true);
    root.write_pem(&pki.path("root.pem"));

    let port = free_port();
    let cfg = pki.path("sbc.toml");
    std::fs::write(&cfg, config(port, 44400, r#""127.0.0.0/8""#)).unwrap();
    let _sbc = Sbc::start(&cfg, pki.path("sbc.log"));
    // The test's own client trusts `pki`'s CA, not this chain: wait on the TCP port instead.
    assert!(wait_until(|| std::net::TcpStream::connect((
        "127.0.0.1",
        port
    ))
    .is_ok()));

    let root_path = pki.path("root.pem");
    let root_arg = root_path.to_str().unwrap();
    let (ok, text) = s_client(port, &["-tls1_3", "-CAfile", root_arg, "-showcerts"]);
    assert!(ok, "TLS 1.3 handshake failed:\n{text}");
    assert!(
        text.contains("Verify return code: 0 (ok)"),
        "chain does not verify to the root:\n{text}"
    );
    assert_eq!(
        text.matches("-----BEGIN CERTIFICATE-----").count(),
        2,
        "leaf + intermediate served"
    );
    assert!(text.contains("TLSv1.3"));

    let (ok, text) = s_client(port, &["-tls1_2"]);
    assert!(ok, "TLS 1.2 handshake failed:\n{text}");
    assert!(
        text.contains("ECDHE-ECDSA-AES") && text.contains("GCM") || text.contains("CHACHA20"),
        "TLS 1.2 suite is not ECDHE+AEAD:\n{text}"
    );

    for (args, what) in [
        (&["-tls1_1"][..], "TLS 1.1"),
        (&["-tls1"][..], "TLS 1.0"),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"][..],
            "CBC suite",
        ),
        (
            &["-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA256"][..],
            "CBC-SHA256 suite",
        ),
        (
            &["-tls1_2", "-cipher", "AES128-GCM-SHA256"][..],
            "RSA key exchange",
        ),
    ] {
        let (ok, text) = s_client(port, args);
        assert!(!ok, "{what} was accepted:\n{text}");
    }
}
