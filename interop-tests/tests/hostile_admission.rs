//! Admission against the real binary when the configuration changes under open connections
//! and when a carrier's identity is shared (issue 12, points 5 and 7):
//! - a carrier removed by SIGHUP can place no new call on a connection it already has open
//!   (403, `call.refused`, and the connection is closed once no call uses it);
//! - per-carrier call counts survive reloads exactly (calls that started before a reload give
//!   their slot back to the same count that later calls take from);
//! - `twilio_account_sids`: an INVITE from another Twilio account gets 403.

use std::time::{Duration, Instant};

use interop_tests::rawcall::{self, Dialog, Media, SipConn};
use interop_tests::{SbcOptions, SbcProcess, TestEnv};

const SECS10: Duration = Duration::from_secs(10);

/// Rewrites sbc's configuration file from `opts` and sends SIGHUP; waits for the reload line.
fn reload(env: &TestEnv, sbc: &SbcProcess, opts: &SbcOptions) {
    let before = count_lines(sbc, "configuration reloaded");
    let text = interop_tests::sbc::config_toml(env, opts, &sbc.audit_path);
    std::fs::write(&sbc.config_path, text).expect("write config");
    let pid = sbc.pid().expect("sbc running").to_string();
    let st = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .expect("kill -HUP");
    assert!(st.success());
    let deadline = Instant::now() + SECS10;
    while count_lines(sbc, "configuration reloaded") == before {
        assert!(
            Instant::now() < deadline,
            "no reload logged:\n{}",
            interop_tests::tail(&sbc.log(), 20)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count_lines(sbc: &SbcProcess, needle: &str) -> usize {
    sbc.log().lines().filter(|l| l.contains(needle)).count()
}

/// An INVITE on `conn` (SDES offer, no media sent); returns the final status, and on 200 the
/// dialog ready for BYE (ACK sent).
fn invite(conn: &mut SipConn, sbc: &SbcProcess, tag: &str, extra_header: &str) -> (u16, Dialog) {
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(sbc.sip_port, 5999, tag);
    let (_sock, rtp_port) = Media::bind();
    let mut msg = dialog.invite(via_port, rtp_port, &rawcall::test_key(3));
    if !extra_header.is_empty() {
        msg = msg.replacen(
            "Max-Forwards: 70\r\n",
            &format!("Max-Forwards: 70\r\n{extra_header}\r\n"),
            1,
        );
    }
    conn.send(&msg);
    let (status, _) = conn.finish_invite(&mut dialog, SECS10);
    (status, dialog)
}

/// A carrier removed by SIGHUP places no new call on the connection it has open: 403 and a
/// `call.refused` record; the connection is closed once its last call has ended, and the call
/// that was up across the reload is untouched until then.
#[test]
fn reload_that_removes_a_carrier_applies_to_open_connections() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.rtp_timeout_secs = 120;
    let sbc = env.start_sbc(opts.clone());
    let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
    let (status, up) = invite(&mut conn, &sbc, "before", "");
    assert_eq!(status, 200);

    opts.source_cidrs = vec!["10.0.0.0/8".into()];
    reload(&env, &sbc, &opts);

    let (status, _) = invite(&mut conn, &sbc, "after", "");
    assert_eq!(
        status, 403,
        "a removed carrier placed a call on its open connection"
    );
    let rec = sbc.wait_audit(SECS10, |v| {
        v["event"] == "call.refused"
            && v["sip_call_id"]
                .as_str()
                .is_some_and(|c| c.contains("-after-"))
    });
    assert_eq!(rec["decision"]["status"], 403, "{rec}");
    // The call from before the reload goes on; its BYE still works on this connection.
    assert_eq!(sbc.calls_active(), 1.0);
    conn.bye(&up, SECS10);
    // Then sbc closes the connection: nothing more is read from it.
    let deadline = Instant::now() + SECS10;
    let closed = loop {
        if conn.recv(Duration::from_millis(200)).is_none() && conn_is_closed(&mut conn) {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
    };
    assert!(
        closed,
        "sbc kept the revoked connection open:\n{}",
        interop_tests::tail(&sbc.log(), 20)
    );
}

/// True when the peer has closed the TLS stream (a read returns end of stream or an error).
fn conn_is_closed(conn: &mut SipConn) -> bool {
    use std::io::Read;
    let _ = conn
        .tls
        .sock
        .set_read_timeout(Some(Duration::from_millis(100)));
    let mut b = [0u8; 1];
    match conn.tls.read(&mut b) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
    }
}

/// Reload five times with 10 calls up: the per-carrier limit (12) is still exact afterwards,
/// both while those calls last (2 more, then 503) and after they ended (12 again, then 503).
/// Before the counts moved out of the reloadable configuration, each reload copied the live
/// count while ending calls decremented the old copy, so after the first 10 calls ended the
/// carrier could place only 2 calls instead of 12.
#[test]
fn per_carrier_limit_is_exact_across_reloads() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.rtp_timeout_secs = 120;
    opts.max_concurrent_calls = 12;
    opts.max_calls_per_second = 1000;
    let sbc = env.start_sbc(opts.clone());
    let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
    let mut up = Vec::new();
    for i in 0..10 {
        let (status, d) = invite(&mut conn, &sbc, &format!("a{i}"), "");
        assert_eq!(status, 200, "call a{i}");
        up.push(d);
    }
    for _ in 0..5 {
        reload(&env, &sbc, &opts);
    }
    // Later calls come on a new connection, which sees the reloaded configuration.
    let mut conn2 = SipConn::connect(&env.pki, sbc.sip_port);
    let mut up2 = Vec::new();
    for i in 0..2 {
        let (status, d) = invite(&mut conn2, &sbc, &format!("b{i}"), "");
        assert_eq!(status, 200, "call b{i}");
        up2.push(d);
    }
    let (status, _) = invite(&mut conn2, &sbc, "b-over", "");
    assert_eq!(status, 503, "13th call while 12 are up");
    for d in up.drain(..) {
        conn.bye(&d, SECS10);
    }
    for d in up2.drain(..) {
        conn2.bye(&d, SECS10);
    }
    let deadline = Instant::now() + SECS10;
    while sbc.calls_active() > 0.0 {
        assert!(Instant::now() < deadline, "calls did not end");
        std::thread::sleep(Duration::from_millis(50));
    }
    for i in 0..12 {
        let (status, d) = invite(&mut conn2, &sbc, &format!("c{i}"), "");
        assert_eq!(
            status, 200,
            "call c{i} after the reloads: the count drifted"
        );
        up2.push(d);
    }
    let (status, _) = invite(&mut conn2, &sbc, "c-over", "");
    assert_eq!(status, 503, "13th call after the reloads");
    for d in up2.drain(..) {
        conn2.bye(&d, SECS10);
    }
}

/// A carrier that lists its Twilio Account SIDs refuses an INVITE from any other account (or
/// with none): 403 and a `call.refused` record. Its own account's call is answered.
#[test]
fn twilio_account_sids_refuse_other_accounts() {
    const OURS: &str = "AC0123456789abcdef0123456789abcdef";
    const THEIRS: &str = "ACffffffffffffffffffffffffffffffff";
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.rtp_timeout_secs = 120;
    opts.extra_carrier = vec![
        "twilio = true".into(),
        format!("twilio_account_sids = [{OURS:?}]"),
    ];
    let sbc = env.start_sbc(opts);
    let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
    let cases = [
        ("theirs", format!("X-Twilio-AccountSid: {THEIRS}"), 403),
        ("none", String::new(), 403),
        ("ours", format!("X-Twilio-AccountSid: {OURS}"), 200),
    ];
    for (tag, header, expected) in cases {
        let (status, d) = invite(&mut conn, &sbc, tag, &header);
        assert_eq!(status, expected, "account {tag}");
        if status == 200 {
            conn.bye(&d, SECS10);
        } else {
            let rec = sbc.wait_audit(SECS10, |v| {
                v["event"] == "call.refused"
                    && v["sip_call_id"]
                        .as_str()
                        .is_some_and(|c| c.contains(&format!("-{tag}-")))
            });
            assert!(
                rec["decision"]["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("Twilio account")),
                "{rec}"
            );
        }
    }
}
