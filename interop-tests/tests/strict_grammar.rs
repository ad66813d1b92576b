//! Strict grammar and the agent leg's SPKI pin against the real binary (issue 13):
//! - `agent.pinned_spki_sha256`: with the test agent's key pinned the call is answered (and its
//!   audit records name the agent leg's key-exchange group and leave out the URL's query); with
//!   any other pin the agent's TLS handshake fails, the carrier gets 503 and the `call.refused`
//!   record says "pin mismatch". The pin is computed here from the test PKI, and checked against
//!   the `openssl` pipeline docs/configuration.md gives (when openssl is installed).
//! - In a call, re-INVITEs sbc cannot read (a body of another type, a compressed body, SDP
//!   `v=1`) each get their own answer (415 with Accept / Accept-Encoding, 488 with a Warning),
//!   and the call goes on: a BYE afterwards is answered 200.

use std::time::Duration;

use base64::Engine;
use interop_tests::agent::AgentBehaviour;
use interop_tests::rawcall::{self, Dialog, Media, SipConn};
use interop_tests::{SbcOptions, SbcProcess, TestEnv};

const SECS10: Duration = Duration::from_secs(10);

/// SHA-256 over the agent certificate's SubjectPublicKeyInfo DER, base64.
fn agent_pin(env: &TestEnv) -> String {
    let key = rcgen::KeyPair::try_from(env.pki.agent.key_der.as_slice()).expect("agent key");
    let spki = key.public_key_der();
    let sha256 = rustls::crypto::aws_lc_rs::cipher_suite::TLS13_AES_128_GCM_SHA256
        .tls13()
        .expect("TLS 1.3 suite")
        .common
        .hash_provider
        .hash(&spki);
    base64::engine::general_purpose::STANDARD.encode(sha256.as_ref())
}

/// The pin as docs/configuration.md says to compute it, if openssl is installed.
fn openssl_pin(env: &TestEnv) -> Option<String> {
    let cert = env.pki.agent.cert_pem_path.display().to_string();
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl x509 -in '{cert}' -pubkey -noout | openssl pkey -pubin -outform der \
             | openssl dgst -sha256 -binary | base64"
        ))
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn start(env: &TestEnv, agent_url: String, pin: &str) -> SbcProcess {
    let mut opts = SbcOptions::agent(agent_url);
    opts.extra_agent = vec![format!("pinned_spki_sha256 = [{pin:?}]")];
    env.start_sbc(opts)
}

/// An INVITE on a new connection; the final status, and on 200 the dialog (ACK sent).
fn invite(sbc: &SbcProcess, env: &TestEnv, tag: &str) -> (SipConn, u16, Dialog) {
    let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(sbc.sip_port, 5999, tag);
    let (_sock, rtp_port) = Media::bind();
    conn.send(&dialog.invite(via_port, rtp_port, &rawcall::test_key(5)));
    let (status, _) = conn.finish_invite(&mut dialog, SECS10);
    (conn, status, dialog)
}

#[test]
fn agent_spki_pin_mismatch_is_503_with_the_reason() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let pin = agent_pin(&env);
    if let Some(o) = openssl_pin(&env) {
        assert_eq!(
            o, pin,
            "docs/configuration.md's openssl pipeline gives another pin"
        );
    }

    // The right pin: answered. The URL's query (here a token) stays out of the audit and the
    // log; the record names the agent leg's key-exchange group.
    let sbc = start(&env, format!("{}?token=s3cr3t-t0ken", agent.url()), &pin);
    let (mut conn, status, dialog) = invite(&sbc, &env, "pinok");
    assert_eq!(status, 200, "{}", interop_tests::tail(&sbc.log(), 20));
    let rec = sbc.wait_event("call.start", &dialog.call_id, SECS10);
    assert_eq!(rec["agent"]["target"], agent.url(), "{rec}");
    // Which group is negotiated depends on both ends' preferences (the test agent and sbc use
    // rustls's defaults); sbc/tests/audit_evidence.rs shows X25519MLKEM768 with a peer that
    // offers only that group.
    let kx = rec["agent"]["kx_group"].as_str().unwrap_or_default();
    assert!(
        ["X25519MLKEM768", "X25519", "secp256r1", "secp384r1"].contains(&kx),
        "{rec}"
    );
    assert!(rec["sip_tls"]["kx_group"].is_string(), "{rec}");
    let via_port = conn.local_addr().port();
    conn.send(&dialog.bye(via_port, 2));
    conn.expect_response(200, "2 BYE", SECS10);
    sbc.wait_event("call.end", &dialog.call_id, SECS10);
    for (what, text) in [("audit", sbc.audit_text()), ("log", sbc.log())] {
        assert!(
            !text.contains("s3cr3t"),
            "the agent URL's query reached the {what}"
        );
    }
    drop(sbc);

    // Any other pin: the handshake fails, 503, and the record says why.
    let wrong = base64::engine::general_purpose::STANDARD.encode([0x42u8; 32]);
    let sbc = start(&env, agent.url(), &wrong);
    let (_conn, status, dialog) = invite(&sbc, &env, "pinbad");
    assert_eq!(status, 503);
    let rec = sbc.wait_event("call.refused", &dialog.call_id, SECS10);
    let reason = rec["decision"]["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("pin mismatch"), "{rec}");
    assert!(sbc.log().contains("pin mismatch"));
}

#[test]
fn unreadable_reinvites_are_refused_and_the_call_goes_on() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    let (mut conn, status, dialog) = invite(&sbc, &env, "reinv");
    assert_eq!(status, 200);
    let via_port = conn.local_addr().port();
    let (_sock, rtp_port) = Media::bind();
    let offer = dialog.invite(via_port, rtp_port, &rawcall::test_key(6));
    type Case<'a> = (&'a str, &'a str, &'a str, u16, &'a str, &'a str);
    let cases: &[Case] = &[
        (
            "text/plain body",
            "Content-Type: application/sdp",
            "Content-Type: text/plain",
            415,
            "Accept",
            "application/sdp",
        ),
        (
            "multipart body",
            "Content-Type: application/sdp",
            "Content-Type: multipart/mixed;boundary=x",
            415,
            "Accept",
            "application/sdp",
        ),
        (
            "gzip",
            "Content-Type: application/sdp",
            "Content-Type: application/sdp\r\nContent-Encoding: gzip",
            415,
            "Accept-Encoding",
            "identity",
        ),
        ("SDP v=1", "v=0", "v=1", 488, "Warning", "version"),
    ];
    for (n, (what, from, to, want, name, needle)) in cases.iter().enumerate() {
        let cseq = 2 + n as u32;
        let reinvite = offer
            .replacen(from, to, 1)
            .replacen("CSeq: 1 INVITE", &format!("CSeq: {cseq} INVITE"), 1)
            .replacen("branch=z9hG4bKinv1", &format!("branch=z9hG4bKre{cseq}"), 1)
            .replacen(
                "To: <sip:+15550002222@127.0.0.1>",
                &format!("To: <sip:+15550002222@127.0.0.1>;tag={}", dialog.to_tag),
                1,
            );
        conn.send(&reinvite);
        let resp = conn.expect_response(*want, &format!("{cseq} INVITE"), SECS10);
        let value = rawcall::header(&resp, name).unwrap_or_default();
        assert!(value.contains(needle), "{what}: {name}: {value:?}\n{resp}");
        // A non-2xx final response is ACKed in its transaction (RFC 3261 §17.1.1.3).
        let head = reinvite.split("\r\n\r\n").next().unwrap_or_default();
        let ack: String = head
            .lines()
            .filter(|l| !l.starts_with("Content-"))
            .map(|l| {
                l.replacen("INVITE sip:", "ACK sip:", 1)
                    .replacen(" INVITE", " ACK", 1)
                    + "\r\n"
            })
            .collect();
        conn.send(&format!("{ack}Content-Length: 0\r\n\r\n"));
    }
    conn.send(&dialog.bye(via_port, 10));
    conn.expect_response(200, "10 BYE", SECS10);
}
