//! Hardening against the real binary: the carrier's TLS connection dropping mid-call (media
//! goes on; the carrier's later BYE on a new connection ends the call; sbc's own BYE goes on a
//! new, verified connection to the carrier), media port exhaustion, an agent that is not there,
//! and a crash (SIGKILL) that must not leave a partial audit line.

use std::time::Duration;

use interop_tests::rawcall::{self, CarrierListener, Dialog, SipConn};
use interop_tests::{AgentBehaviour, SbcOptions, SbcProcess, TestEnv};
use serde_json::Value;

const SECS10: Duration = Duration::from_secs(10);
const SECS20: Duration = Duration::from_secs(20);

/// Waits until sbc's log says it saw the connection from `peer` end (a read error: no
/// close_notify; or a clean end of stream).
fn wait_closed(sbc: &SbcProcess, peer: std::net::SocketAddr) -> bool {
    let peer = format!("\"peer\":\"{peer}\"");
    wait_log_line(sbc, SECS20, |l| {
        l.contains(&peer)
            && (l.contains("read error: closing") || l.contains("peer closed the connection"))
    })
}

/// Waits until one line of sbc's log satisfies `pred`.
fn wait_log_line(sbc: &SbcProcess, timeout: Duration, pred: impl Fn(&str) -> bool) -> bool {
    let deadline = std::time::Instant::now() + timeout;
    while std::time::Instant::now() < deadline {
        if sbc.log().lines().any(&pred) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// The carrier's TLS connection drops mid-call (no BYE, no close_notify). The call stays up and
/// SRTP keeps flowing both ways (sbc's builtin echo returns our packets under its own key); the
/// carrier's BYE, arriving later on a new TLS connection, is matched to the dialog: 200 OK on
/// that connection, `call.end` with `end_reason = carrier_bye`.
#[test]
fn carrier_connection_drop_keeps_call_and_later_bye_on_new_connection_ends_it() {
    let env = TestEnv::new();
    // The carrier's Contact, where a BYE from sbc would arrive: none may.
    let carrier = CarrierListener::start(&env.pki.sbc);
    let mut opts = SbcOptions::builtin_echo();
    opts.carrier_ca = true;
    opts.rtp_timeout_secs = 30;
    let sbc = env.start_sbc(opts);
    let (conn, dialog, media) =
        rawcall::place_call(&env.pki, sbc.sip_port, carrier.port, "drop1", SECS20);
    assert!(
        media.wait_received(25, SECS20),
        "no SRTP echo before the drop: sent {}, authenticated {}, failed {}",
        media.sent(),
        media.received(),
        media.received_bad.load(std::sync::atomic::Ordering::SeqCst)
    );
    let local = conn.local_addr();
    conn.drop_abruptly();
    assert!(
        wait_closed(&sbc, local),
        "sbc did not notice the dropped connection:\n{}",
        interop_tests::tail(&sbc.log(), 20)
    );
    // Media goes on after sbc noticed: another second of echo (50 packets) must authenticate.
    let after_drop = media.received();
    assert!(
        media.wait_received(after_drop + 50, SECS20),
        "SRTP stopped after the carrier's connection dropped: {} echoed before, {} now",
        after_drop,
        media.received()
    );
    assert_eq!(sbc.calls_active(), 1.0, "the call must still be active");
    assert!(
        !sbc.audit().iter().any(|v| v["event"] == "call.end"),
        "the call ended when the connection dropped: {:?}",
        sbc.audit()
    );
    let log = carrier.log();
    assert!(
        log.tcp_accepts == 0 && log.requests.is_empty(),
        "sbc must not hang up (or send anything) when the connection drops: {log:?}"
    );

    let mut conn2 = SipConn::connect(&env.pki, sbc.sip_port);
    let via2 = conn2.local_addr().port();
    conn2.send(&dialog.bye(via2, 2));
    conn2.expect_response(200, "2 BYE", SECS20);
    let end = sbc.wait_event("call.end", &dialog.call_id, SECS20);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    let rtp_in = end["media"]["rtp_in"].as_u64().unwrap_or(0);
    assert!(
        rtp_in > after_drop,
        "sbc's rtp_in ({rtp_in}) must count the packets after the drop ({after_drop} echoed before): {end}"
    );
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
    assert!(
        carrier.log().requests.is_empty(),
        "sbc sent a request of its own: {:?}",
        carrier.log()
    );
    drop(media);
}

/// A call through a test agent whose carrier connection drops; then the agent hangs up, so
/// that sbc must send its BYE on a new connection to the carrier's Contact, a
/// [`CarrierListener`] serving `contact_identity`'s certificate. Runs `check` afterwards.
fn agent_hangs_up_after_carrier_drop(
    tag: &str,
    contact_identity: impl FnOnce(&TestEnv) -> &interop_tests::pki::Identity,
    check: impl FnOnce(&SbcProcess, &CarrierListener, &Dialog),
) {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let carrier = CarrierListener::start(contact_identity(&env));
    let mut opts = SbcOptions::agent(agent.url());
    opts.carrier_ca = true;
    opts.rtp_timeout_secs = 30;
    let sbc = env.start_sbc(opts);
    let (conn, dialog, media) =
        rawcall::place_call(&env.pki, sbc.sip_port, carrier.port, tag, SECS20);
    assert!(
        media.wait_received(10, SECS20),
        "no SRTP through the agent before the drop"
    );
    let local = conn.local_addr();
    conn.drop_abruptly();
    assert!(
        wait_closed(&sbc, local),
        "sbc did not notice the dropped connection"
    );
    agent.wait_for("agent connection", SECS10, |c| !c.is_empty());
    agent.close(0);
    check(&sbc, &carrier, &dialog);
    drop(media);
}

/// After the carrier's connection is gone, the agent hangs up: sbc sends its BYE on a new TLS
/// connection to the carrier's Contact, verifying the carrier's certificate against
/// `tls.client_ca` (here the test CA), and the call ends when the carrier's 200 arrives.
#[test]
fn agent_hangup_after_carrier_drop_sends_bye_on_new_verified_connection() {
    agent_hangs_up_after_carrier_drop(
        "drop2",
        |env| &env.pki.sbc,
        |sbc, carrier, dialog| {
            assert!(
                carrier.wait(SECS20, |l| l.requests.iter().any(|r| r.starts_with("BYE "))),
                "no BYE reached the carrier's Contact; listener: {:?}\nsbc log:\n{}",
                carrier.log(),
                interop_tests::tail(&sbc.log(), 30)
            );
            let log = carrier.log();
            let bye = log
                .requests
                .iter()
                .find(|r| r.starts_with("BYE "))
                .expect("BYE");
            assert_eq!(
                rawcall::header(bye, "Call-ID"),
                Some(dialog.call_id.as_str())
            );
            assert!(
                bye.starts_with(&format!("BYE sip:carrier@127.0.0.1:{}", carrier.port)),
                "the BYE goes to the carrier's Contact: {bye}"
            );
            assert!(log.handshake_errors.is_empty(), "listener: {log:?}");
            let end = sbc.wait_event("call.end", &dialog.call_id, SECS20);
            assert_eq!(end["end_reason"], "agent_hangup", "call.end: {end}");
        },
    );
}

/// The same, but the carrier's Contact presents a certificate from a CA sbc does not trust: sbc
/// must refuse the handshake (no BYE in clear to an impostor), log it, and still end the call.
#[test]
fn bye_on_new_connection_refuses_an_untrusted_carrier_certificate() {
    agent_hangs_up_after_carrier_drop(
        "drop3",
        |env| &env.pki.untrusted_agent,
        |sbc, impostor, dialog| {
            assert!(
                impostor.wait(SECS20, |l| l.tcp_accepts > 0
                    && !l.handshake_errors.is_empty()),
                "sbc did not try (and fail) a handshake with the impostor: {:?}",
                impostor.log()
            );
            assert!(
                wait_log_line(sbc, SECS10, |l| l.contains("cannot reach the carrier")),
                "sbc must log why the BYE was not delivered:\n{}",
                interop_tests::tail(&sbc.log(), 20)
            );
            let log = impostor.log();
            assert!(
                log.requests.is_empty(),
                "no SIP may reach the impostor: {log:?}"
            );
            // The failed connection counts as a 503 for the BYE (RFC 3261 §8.1.3.1): the call
            // ends without waiting out Timer F (64*T1 = 32 s here, plus the 2 s hard stop).
            let end = sbc.wait_event("call.end", &dialog.call_id, SECS20);
            assert_eq!(end["end_reason"], "agent_hangup", "call.end: {end}");
        },
    );
}

/// A media port range holding one call's RTP/RTCP pair: the second concurrent call gets 503
/// with Retry-After and a `call.refused` saying the range is exhausted; the first call is
/// unaffected.
#[test]
fn media_port_range_exhausted_gives_503() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.media_ports = Some((env.ports.media_min, env.ports.media_min + 1));
    let sbc = env.start_sbc(opts);
    let (o, r) = interop_tests::second_call_refused(&env, &sbc);
    let resp = o
        .response(503, "1 INVITE")
        .unwrap_or_else(|| panic!("no 503 in SIPp's log\n{}", o.describe()));
    assert!(
        resp.lines().any(|l| l.starts_with("Retry-After: ")),
        "503 without Retry-After:\n{resp}"
    );
    assert_eq!(
        r["decision"]["reason"], "media port range exhausted",
        "call.refused: {r}"
    );
    // The pair is back in the pool once the first call ended: a third call works.
    sbc.wait_audit(SECS20, |v| v["event"] == "call.end");
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    assert_eq!(o.code, 0, "{}", o.describe());
}

fn refused_reason(sbc: &SbcProcess, call_id: &str) -> String {
    let r = sbc.wait_event("call.refused", call_id, SECS10);
    eprintln!("call.refused reason: {}", r["decision"]["reason"]);
    assert_eq!(r["decision"]["status"], 503, "call.refused: {r}");
    r["decision"]["reason"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The agent's address has nothing listening: 503 to the carrier, and the audit reason says
/// the TCP connect failed.
#[test]
fn agent_unreachable_gives_503_with_reason() {
    let env = TestEnv::new();
    // A port nobody listens on: bound, then closed again.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("port")
        .port();
    let sbc = env.start_sbc(SbcOptions::agent(format!("wss://127.0.0.1:{closed}/agent")));
    let o = env
        .sipp("uac_expect_503.xml")
        .timeout("15s")
        .run_expect(sbc.sip_port, 0);
    let reason = refused_reason(&sbc, &o.first_call_id());
    assert!(
        reason.starts_with("agent tcp:") && reason.to_lowercase().contains("refused"),
        "the reason must say the agent's TCP connect was refused: {reason:?}"
    );
}

/// The agent refuses the handshake (TLS 1.2 only, untrusted certificate, mTLS required without
/// sbc having a client certificate): 503, and the audit reason names the failure. With TLS 1.3
/// the server's refusal of a missing client certificate arrives after the client's handshake
/// finished, so sbc sees it at the WebSocket upgrade.
#[test]
fn agent_refusing_the_handshake_gives_503_with_reason() {
    for (behaviour, prefix, cause) in [
        (AgentBehaviour::Tls12Only, "agent tls:", "ProtocolVersion"),
        (
            AgentBehaviour::UntrustedCert,
            "agent tls:",
            "invalid peer certificate",
        ),
        (
            AgentBehaviour::RequireClientCert,
            "agent websocket:",
            "CertificateRequired",
        ),
    ] {
        let env = TestEnv::new();
        let agent = env.start_agent(behaviour);
        let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
        let o = env
            .sipp("uac_expect_503.xml")
            .timeout("15s")
            .run_expect(sbc.sip_port, 0);
        let reason = refused_reason(&sbc, &o.first_call_id());
        assert!(
            reason.starts_with(prefix) && reason.contains(cause),
            "{behaviour:?}: the reason must say why ({prefix} ... {cause}): {reason:?}"
        );
    }
}

/// SIGKILL while calls are active, a crash that cut the last record short (simulated: a
/// partial line appended to the file, as a power loss mid-write leaves), restart on the same
/// audit file, another call: every line of the file is one complete JSON record, the cut
/// fragment is kept aside in `<audit>.partial`, and the calls before the crash are there.
#[test]
fn sigkill_and_restart_leave_no_partial_audit_line() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.rtp_timeout_secs = 30;
    let mut sbc = env.start_sbc(opts.clone());
    // One finished call, then two active ones when the process dies.
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    let done = o.first_call_id();
    sbc.wait_event("call.end", &done, SECS10);
    let (_c1, d1, m1) = rawcall::place_call(&env.pki, sbc.sip_port, 5999, "kill1", SECS20);
    let (_c2, d2, m2) = rawcall::place_call(&env.pki, sbc.sip_port, 5999, "kill2", SECS20);
    sbc.wait_event("call.start", &d1.call_id, SECS10);
    sbc.wait_event("call.start", &d2.call_id, SECS10);
    sbc.kill();
    drop((m1, m2));
    let audit_path = sbc.audit_path.clone();
    let fragment = r#"{"ts":"2026-01-01T00:00:00.000Z","event":"call.end","call_id":"c9","sip_ca"#;
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&audit_path)
            .expect("open audit");
        f.write_all(fragment.as_bytes()).expect("append fragment");
    }
    drop(sbc);

    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    let after = o.first_call_id();
    sbc.wait_event("call.end", &after, SECS10);

    let text = std::fs::read_to_string(&audit_path).expect("read audit");
    assert!(
        text.ends_with('\n'),
        "the file must end with a complete line"
    );
    let records: Vec<Value> = text
        .lines()
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!("audit line {} is not one JSON record ({e}): {l}", i + 1)
            })
        })
        .collect();
    let has = |event: &str, id: &str| {
        records
            .iter()
            .any(|v| v["event"] == event && v["sip_call_id"] == id)
    };
    assert!(has("call.end", &done), "the call before the crash is kept");
    assert!(has("call.start", &d1.call_id) && has("call.start", &d2.call_id));
    assert!(
        has("call.end", &after),
        "the call after the restart is recorded"
    );
    let partial = std::fs::read_to_string(format!("{}.partial", audit_path.display()))
        .expect("the cut fragment is kept in <audit>.partial");
    assert!(partial.contains(fragment), "partial file: {partial:?}");
    assert!(
        sbc.log().contains("audit log ended with a partial record"),
        "sbc must log the repair"
    );
}
