//! Calls end to end: SIPp (TLS + SDES-SRTP) → sbc → TLS 1.3 WebSocket test agent.

use std::time::Duration;

use interop_tests::{
    inline_keys, wait_closed, AgentBehaviour, AgentConn, SbcOptions, SbcProcess, SippOutcome,
    TestAgent, TestEnv,
};
use serde_json::Value;

const SECS10: Duration = Duration::from_secs(10);

/// The checks of the Twilio Media Streams stream of one basic 3 s call with SIPp's pattern.
fn check_basic_stream(c: &AgentConn) {
    let events = c.events();
    assert!(
        events.len() >= 2 && events[0] == "connected" && events[1] == "start",
        "first two agent messages must be connected, start; got {:?}",
        &events[..events.len().min(5)]
    );
    let connected = &c.messages[0].1;
    assert_eq!(connected["protocol"], "Call", "connected: {connected}");
    let start = &c.messages[1].1;
    assert!(
        start["start"]["streamSid"].is_string() && start["start"]["callSid"].is_string(),
        "start must carry start.streamSid and start.callSid: {start}"
    );
    assert_eq!(
        start["streamSid"], start["start"]["streamSid"],
        "start: {start}"
    );
    assert_eq!(
        start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw",
        "start: {start}"
    );
    assert_eq!(
        start["start"]["mediaFormat"]["sampleRate"], 8000,
        "start: {start}"
    );
    let n = c.media.len();
    assert!(
        (100..=175).contains(&n),
        "expected ~150 media frames (3 s of 20 ms), got {n}"
    );
    for (i, (_, p)) in c.media.iter().enumerate() {
        assert_eq!(p.len(), 160, "media frame {i} has {} bytes", p.len());
        assert!(
            p.iter().all(|&b| b == 0xAA),
            "media frame {i} is not SIPp's pattern 1 (all 0xAA): {:02x?}",
            &p[..16]
        );
    }
    assert_eq!(
        events.last().map(String::as_str),
        Some("stop"),
        "the last message after the carrier's BYE must be stop; events without media: {:?}",
        events.iter().filter(|e| *e != "media").collect::<Vec<_>>()
    );
    let stop = c.first("stop").expect("stop");
    assert_eq!(
        stop["stop"]["callSid"], start["start"]["callSid"],
        "stop: {stop}"
    );
    assert!(c.closed.is_some(), "the socket must close after stop");
    assert!(c.error.is_none(), "agent connection error: {:?}", c.error);
    assert_eq!(c.binary_frames, 0, "sbc must send only text frames");
}

/// sbc's 200 OK answer: RTP/SAVP on a port of its media range at 127.0.0.1, exactly one SDES
/// line answering tag 1 with AES_CM_128_HMAC_SHA1_80 and sbc's own 30-byte key.
fn check_answer_sdp(env: &TestEnv, o: &SippOutcome) {
    use base64::Engine as _;
    let ok = o
        .response(200, "1 INVITE")
        .unwrap_or_else(|| panic!("no 200 OK\n{}", o.describe()));
    let m = ok
        .lines()
        .find(|l| l.starts_with("m=audio "))
        .unwrap_or_else(|| panic!("no m=audio in the answer:\n{ok}"));
    let f: Vec<&str> = m.split_whitespace().collect();
    let port: u16 = f[1].parse().expect("port");
    assert!(
        (env.ports.media_min..=env.ports.media_max).contains(&port),
        "answer port {port} outside [media] port range: {m}"
    );
    assert_eq!(f[2], "RTP/SAVP", "answer: {m}");
    assert!(ok.contains("c=IN IP4 127.0.0.1"), "answer:\n{ok}");
    let crypto: Vec<&str> = ok.lines().filter(|l| l.starts_with("a=crypto:")).collect();
    assert_eq!(crypto.len(), 1, "answer must have one a=crypto:\n{ok}");
    let c: Vec<&str> = crypto[0].split_whitespace().collect();
    assert_eq!(c[0], "a=crypto:1", "answer: {}", crypto[0]);
    assert_eq!(c[1], "AES_CM_128_HMAC_SHA1_80", "answer: {}", crypto[0]);
    let key = c[2].strip_prefix("inline:").expect("inline:");
    let key = key.split('|').next().unwrap_or(key);
    let raw = base64::engine::general_purpose::STANDARD
        .decode(key)
        .expect("answer key is base64");
    assert_eq!(raw.len(), 30, "AES_CM_128 master key + salt is 30 bytes");
    let offered = inline_keys(&o.messages_log());
    assert_eq!(
        offered.iter().filter(|k| k.as_str() == key).count(),
        1,
        "sbc must answer with its own key, not one of the offered keys"
    );
}

fn check_audit_basic(sbc: &SbcProcess, call_id: &str) -> Value {
    let start = sbc.wait_event("call.start", call_id, SECS10);
    assert_eq!(start["decision"]["status"], 200, "call.start: {start}");
    let end = sbc.wait_event("call.end", call_id, SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert!(
        end["srtp"]["chosen_inbound"].is_string(),
        "srtp.chosen_inbound must be set: {end}"
    );
    assert!(
        end["sip_tls"]["version"].is_string(),
        "sip_tls.version must be set: {end}"
    );
    assert_eq!(end["carrier"], "test", "call.end: {end}");
    assert!(
        end["media"]["rtp_in"].as_u64().unwrap_or(0) >= 100,
        "media.rtp_in: {end}"
    );
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
    // A real-time echo never fills the play-out queue; a stall may drop late audio (counted).
    assert_eq!(
        end["media"]["agent_audio_overflow_bytes"], 0,
        "call.end: {end}"
    );
    assert!(
        end["media"]["agent_audio_late_dropped_bytes"].is_u64(),
        "call.end: {end}"
    );
    end
}

#[test]
fn basic_call_echo_through_agent() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    check_answer_sdp(&env, &o);
    let rc = o.rtp_check();
    assert!(
        rc.sent >= 140 && rc.received_ok >= 75,
        "SIPp's echo check must have run on ~150 packets: {rc:?}"
    );
    let conns = wait_closed(&agent, 1);
    assert_eq!(conns.len(), 1);
    assert_eq!(conns[0].path, "/ws", "WebSocket request path");
    check_basic_stream(&conns[0]);
    let end = check_audit_basic(&sbc, &call_id);
    assert_eq!(end["agent"]["tls_version"], "TLSv1_3", "call.end: {end}");
    assert_eq!(end["agent"]["mtls"], false, "call.end: {end}");
    assert!(
        end["media"]["agent_media_in"].as_u64().unwrap_or(0) >= 100,
        "the echo must have come from the agent: {end}"
    );
    assert!(
        end["agent"]["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("wss://127.0.0.1:")),
        "agent.target: {end}"
    );
    let m = sbc.metrics();
    for line in [
        "sbc_calls_total{outcome=\"accepted\"} 1",
        "sbc_srtp_suite_total{suite=\"AES_CM_128_HMAC_SHA1_80\"} 1",
        "sbc_calls_active 0",
    ] {
        assert!(
            m.lines().any(|l| l.trim() == line),
            "metrics lack `{line}`:\n{m}"
        );
    }
}

#[test]
fn basic_call_builtin_echo() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let end = check_audit_basic(&sbc, &call_id);
    assert_eq!(end["agent"]["target"], "builtin:echo", "call.end: {end}");
}

/// No SRTP key (neither SIPp's offered keys nor sbc's answer key) may appear in sbc's trace log
/// or audit file.
#[test]
fn no_srtp_keys_in_logs_or_audit() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let mut opts = SbcOptions::agent(agent.url());
    opts.log_level = "trace".into();
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    sbc.wait_event("call.end", &call_id, SECS10);
    let msgs = o.messages_log();
    let keys = inline_keys(&msgs);
    assert!(
        keys.len() >= 3,
        "expected at least 2 offered keys and 1 answer key in SIPp's messages log, found {keys:?}"
    );
    let log = sbc.log();
    let audit = sbc.audit_text();
    assert!(!log.is_empty(), "sbc wrote no log at level trace");
    for k in &keys {
        // The first 24 base64 characters cover the 16-byte master key.
        let probe = &k[..24.min(k.len())];
        for (name, text) in [("log", &log), ("audit", &audit)] {
            if let Some(line) = text.lines().find(|l| l.contains(probe)) {
                panic!("SRTP key material {probe}... found in sbc's {name}: {line}");
            }
        }
    }
    assert!(
        !log.contains("inline:") && !audit.contains("inline:"),
        "sbc's log or audit contains an inline: crypto attribute"
    );
}

/// Offers without an AES-CM SRTP suite get 488 with a Warning, a `call.refused` record naming
/// what was offered, and the refused-call metric: plain RTP/AVP (no crypto at all) and an
/// AEAD-only SAVP offer.
#[test]
fn offers_without_aes_cm_srtp_refused_with_488() {
    let cases: [(&str, serde_json::Value); 2] = [
        ("uac_rtp_avp.xml", serde_json::json!([])),
        ("uac_aead_only.xml", serde_json::json!(["AEAD_AES_256_GCM"])),
    ];
    for (scenario, offered) in cases {
        let env = TestEnv::new();
        let sbc = env.start_sbc(SbcOptions::builtin_echo());
        let o = env
            .sipp(scenario)
            .timeout("10s")
            .run_expect(sbc.sip_port, 0);
        let call_id = o.first_call_id();
        let r = sbc.wait_event("call.refused", &call_id, SECS10);
        assert_eq!(
            r["decision"]["status"], 488,
            "{scenario}: call.refused: {r}"
        );
        check_488_warning(&o);
        assert_eq!(
            r["srtp"]["offered"], offered,
            "{scenario}: call.refused: {r}"
        );
        let m = sbc.metrics();
        assert!(
            m.lines()
                .any(|l| l.trim() == "sbc_calls_total{outcome=\"refused\"} 1"),
            "{scenario}: metrics lack sbc_calls_total{{outcome=\"refused\"}} 1:\n{m}"
        );
    }
}

/// The 488 carries `Warning: 399 <host> "<text>"` (RFC 3261 §20.43).
fn check_488_warning(o: &SippOutcome) {
    let resp = o
        .response(488, "1 INVITE")
        .unwrap_or_else(|| panic!("no 488\n{}", o.describe()));
    let w = resp
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("warning:"))
        .unwrap_or_else(|| panic!("488 without Warning:\n{resp}"));
    let v = w["warning:".len()..].trim();
    assert!(
        v.starts_with("399 ") && v.ends_with('"') && v.matches('"').count() == 2,
        "Warning must be 399 <host> \"text\": {w}"
    );
}

#[test]
fn cancel_before_answer_gets_487() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::DelayAccept(Duration::from_secs(3)));
    let mut opts = SbcOptions::agent(agent.url());
    opts.ringing_after_ms = 10_000;
    opts.connect_timeout_ms = 5000;
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_cancel.xml")
        .timeout("15s")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let r = sbc.wait_event("call.refused", &call_id, SECS10);
    assert_eq!(r["decision"]["status"], 487, "call.refused: {r}");
    assert!(
        sbc.audit()
            .iter()
            .all(|v| v["event"] != "call.start" || v["sip_call_id"] != call_id.as_str()),
        "a cancelled call must not have a call.start record"
    );
}

#[test]
fn agent_hangup_sends_bye_to_carrier() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::HangUpAfter(Duration::from_secs(2)));
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env.sipp("uac_wait_bye.xml").run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(end["end_reason"], "agent_hangup", "call.end: {end}");
}

/// Hold and resume by re-INVITE (signalling only, see the scenario for why SIPp cannot check the
/// echo across a re-key): both re-INVITEs get a 200 whose SDP answers the direction (hold:
/// `recvonly`/`inactive`; resume: `sendrecv`) with one SDES key, and the agent stream survives.
#[test]
fn reinvite_hold_and_resume() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env
        .sipp("uac_reinvite_hold.xml")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let hold = o
        .response(200, "2 INVITE")
        .unwrap_or_else(|| panic!("no 200 for the hold re-INVITE\n{}", o.describe()));
    assert!(
        hold.contains("a=recvonly") || hold.contains("a=inactive"),
        "the answer to a=sendonly must be recvonly or inactive:\n{hold}"
    );
    assert_eq!(hold.matches("a=crypto:").count(), 1, "hold answer:\n{hold}");
    let resume = o
        .response(200, "3 INVITE")
        .unwrap_or_else(|| panic!("no 200 for the resume re-INVITE\n{}", o.describe()));
    assert!(
        resume.contains("a=sendrecv")
            || !(resume.contains("a=recvonly")
                || resume.contains("a=sendonly")
                || resume.contains("a=inactive")),
        "the answer to a=sendrecv must be sendrecv:\n{resume}"
    );
    assert_eq!(
        resume.matches("a=crypto:").count(),
        1,
        "resume answer:\n{resume}"
    );
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    // One stream for the whole call: a re-INVITE must not reconnect the agent.
    let conns = wait_closed(&agent, 1);
    assert_eq!(conns.len(), 1, "re-INVITEs must keep the agent stream");
}

#[test]
fn info_dtmf_reaches_agent() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    env.sipp("uac_info_dtmf.xml").run_expect(sbc.sip_port, 0);
    let conns = wait_closed(&agent, 1);
    let dtmf = conns[0].all("dtmf");
    assert_eq!(dtmf.len(), 1, "expected one dtmf message, got {dtmf:?}");
    assert_eq!(dtmf[0]["dtmf"]["digit"], "5", "dtmf: {}", dtmf[0]);
    assert_eq!(
        dtmf[0]["dtmf"]["track"], "inbound_track",
        "dtmf: {}",
        dtmf[0]
    );
    assert!(dtmf[0]["streamSid"].is_string(), "dtmf: {}", dtmf[0]);
    let end = sbc.wait_audit(SECS10, |v| v["event"] == "call.end");
    assert_eq!(end["media"]["dtmf_events"], 1, "call.end: {end}");
}

#[test]
fn mark_is_echoed() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let port = sbc.sip_port;
    std::thread::scope(|s| {
        let sipp = s.spawn(|| env.sipp("uac_tls_srtp_pattern.xml").run(port));
        agent.wait_for("start", SECS10, |c| {
            c.first().is_some_and(|c| c.first("start").is_some())
        });
        let m = sbc.metrics();
        assert!(
            m.lines()
                .any(|l| l.starts_with("sbc_calls_active") && l.trim_end().ends_with(" 1")),
            "sbc_calls_active must be 1 during the call:\n{m}"
        );
        agent.send_mark(0, "m1");
        agent.wait_for("mark m1 echoed", Duration::from_secs(3), |c| {
            c[0].all("mark").iter().any(|m| m["mark"]["name"] == "m1")
        });
        agent.send_clear(0);
        agent.send_mark(0, "m2");
        agent.wait_for("mark m2 echoed after clear", Duration::from_secs(3), |c| {
            c[0].all("mark").iter().any(|m| m["mark"]["name"] == "m2")
        });
        let o = sipp.join().expect("sipp thread");
        assert_eq!(o.code, 0, "{}", o.describe());
    });
}

/// An agent sbc cannot reach securely gets the call refused with 503 and no WebSocket: one that
/// speaks only TLS 1.2 (the agent leg is TLS 1.3 only), one whose certificate sbc does not trust,
/// and one that requires a client certificate sbc does not have.
#[test]
fn agent_tls_failures_get_503() {
    for behaviour in [
        AgentBehaviour::Tls12Only,
        AgentBehaviour::UntrustedCert,
        AgentBehaviour::RequireClientCert,
    ] {
        let env = TestEnv::new();
        let agent = env.start_agent(behaviour);
        let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
        let o = env
            .sipp("uac_expect_503.xml")
            .timeout("15s")
            .run_expect(sbc.sip_port, 0);
        let call_id = o.first_call_id();
        let r = sbc.wait_event("call.refused", &call_id, SECS10);
        assert_eq!(
            r["decision"]["status"], 503,
            "{behaviour:?}: call.refused: {r}"
        );
        assert!(
            agent.connections().is_empty(),
            "{behaviour:?}: no WebSocket may be opened"
        );
        if !matches!(behaviour, AgentBehaviour::RequireClientCert) {
            assert!(
                !agent.handshake_errors().is_empty(),
                "{behaviour:?}: sbc must have tried (and failed) a TLS handshake with the agent; tcp accepts: {}",
                agent.tcp_accepts()
            );
        }
    }
}

/// An offer with only AES_CM_128_HMAC_SHA1_32: sbc answers with that suite and the echo check
/// passes with 4-byte tags.
#[test]
fn srtp_32_only_offer() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env.sipp("uac_srtp_32_only.xml").run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let ok = o
        .response(200, "1 INVITE")
        .unwrap_or_else(|| panic!("no 200\n{}", o.describe()));
    assert!(
        ok.contains("a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:"),
        "answer must use tag 1 with AES_CM_128_HMAC_SHA1_32:\n{ok}"
    );
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(
        end["srtp"]["chosen_inbound"], "AES_CM_128_HMAC_SHA1_32",
        "call.end: {end}"
    );
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
}

/// A call with no RTP at all from the carrier: sbc hangs up (BYE) after `rtp_timeout_secs`.
#[test]
fn rtp_timeout_sends_bye() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let mut opts = SbcOptions::agent(agent.url());
    opts.rtp_timeout_secs = 2;
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_no_media_wait_bye.xml")
        .timeout("20s")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(end["end_reason"], "rtp_timeout", "call.end: {end}");
    let d = end["duration_ms"].as_u64().unwrap_or(0);
    assert!(
        (1500..=6000).contains(&d),
        "rtp_timeout_secs = 2, call lasted {d} ms: {end}"
    );
    let conns = wait_closed(&agent, 1);
    assert_eq!(conns[0].events().last().map(String::as_str), Some("stop"));
}

/// mTLS towards the agent: with `client_certificate` configured the call works and the audit
/// says `agent.mtls = true`.
#[test]
fn agent_mtls_with_client_cert() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::RequireClientCert);
    let mut opts = SbcOptions::agent(agent.url());
    opts.agent_client_cert = true;
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(end["agent"]["mtls"], true, "call.end: {end}");
}

/// sbc keeps the agent's TLS 1.3 session tickets (one resumption store per agent client config):
/// the first call's agent connection is a full handshake, the next one resumes, still TLS 1.3
/// and with mTLS, and the audit says which was which.
#[test]
fn agent_tls_session_is_resumed_on_the_next_call_and_audited() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::RequireClientCert);
    let mut opts = SbcOptions::agent(agent.url());
    opts.agent_client_cert = true;
    let sbc = env.start_sbc(opts);
    let mut ends = Vec::new();
    for _ in 0..2 {
        let o = env
            .sipp("uac_tls_srtp_pattern.xml")
            .run_expect(sbc.sip_port, 0);
        ends.push(sbc.wait_event("call.end", &o.first_call_id(), SECS10));
    }
    for (end, resumed) in ends.iter().zip([false, true]) {
        assert_eq!(end["agent"]["tls_resumed"], resumed, "call.end: {end}");
        assert_eq!(end["agent"]["tls_version"], "TLSv1_3", "call.end: {end}");
        assert_eq!(end["agent"]["mtls"], true, "call.end: {end}");
    }
    assert_eq!(wait_closed(&agent, 2).len(), 2);
}

/// Runs SIPp's basic call in the background and, once sbc answered it, a second INVITE that the
/// carrier limits must refuse with 503.
fn second_call_refused(opts_change: impl FnOnce(&mut SbcOptions)) {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts_change(&mut opts);
    let sbc = env.start_sbc(opts);
    interop_tests::second_call_refused(&env, &sbc);
}

#[test]
fn carrier_concurrent_call_limit_gives_503() {
    second_call_refused(|o| o.max_concurrent_calls = 1);
}

#[test]
fn carrier_call_rate_limit_gives_503() {
    second_call_refused(|o| o.max_calls_per_second = 1);
}

/// SIP over TLS 1.2 is accepted with `min_version = "1.2"` and audited as such.
#[test]
fn sip_over_tls12() {
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .arg("-tls_version")
        .arg("1.2")
        .run_expect(sbc.sip_port, 0);
    let call_id = o.first_call_id();
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(end["sip_tls"]["version"], "TLSv1_2", "call.end: {end}");
}

/// The harness's echo check is not vacuous: without `mirror_caller_ssrc` SIPp 3.8 decrypts sbc's
/// echo with the wrong SSRC (the decryption "succeeds" into garbage), and the check must report
/// every packet as a content mismatch.
#[test]
fn echo_check_detects_broken_srtp() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.mirror_caller_ssrc = false;
    let sbc = env.start_sbc(opts);
    let o = env.sipp("uac_tls_srtp_pattern.xml").run(sbc.sip_port);
    let rc = o.rtp_check();
    assert!(
        o.code == 253 && rc.srtp_failures + rc.mismatches > 100,
        "expected SIPp's echo check to fail on every packet: exit {}, {rc:?}",
        o.code
    );
}

/// SIGTERM drains: the call in progress continues to its end, a new INVITE gets 503, and sbc
/// exits 0 once the call is over.
#[test]
fn sigterm_drains_calls() {
    let env = TestEnv::new();
    let mut sbc = env.start_sbc(SbcOptions::builtin_echo());
    let port = sbc.sip_port;
    let first = env.sipp("uac_tls_srtp_pattern.xml");
    let second = env.sipp("uac_expect_503.xml").timeout("10s");
    let bg = std::thread::spawn(move || first.run(port));
    sbc.wait_audit(SECS10, |v| v["event"] == "call.start");
    sbc.signal_term();
    std::thread::sleep(Duration::from_millis(300));
    let o = second.run_expect(port, 0);
    let refused_id = o.first_call_id();
    let r = sbc.wait_event("call.refused", &refused_id, SECS10);
    assert_eq!(r["decision"]["status"], 503, "call.refused: {r}");
    let o1 = bg.join().expect("first call");
    assert_eq!(
        o1.code,
        0,
        "the call in progress must finish\n{}",
        o1.describe()
    );
    o1.rtp_check().assert_clean(&o1, 0.5);
    let end = sbc.wait_event("call.end", &o1.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    let st = sbc
        .wait_exit(Duration::from_secs(10))
        .expect("sbc must exit after draining");
    assert!(st.success(), "sbc exit status after SIGTERM: {st}");
}

/// SIGTERM with a call that outlasts `drain_timeout_secs`: sbc hangs it up (BYE to the carrier,
/// `end_reason = "shutdown"`) and exits 0.
#[test]
fn sigterm_drain_timeout_hangs_up() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.drain_timeout_secs = Some(1);
    let mut sbc = env.start_sbc(opts);
    let port = sbc.sip_port;
    let sipp = env.sipp("uac_wait_bye.xml");
    let bg = std::thread::spawn(move || sipp.run(port));
    sbc.wait_audit(SECS10, |v| v["event"] == "call.start");
    std::thread::sleep(Duration::from_millis(500));
    sbc.signal_term();
    let o = bg.join().expect("sipp");
    assert_eq!(o.code, 0, "SIPp must get sbc's BYE\n{}", o.describe());
    o.rtp_check().assert_clean(&o, 0.5);
    let end = sbc.wait_event("call.end", &o.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "shutdown", "call.end: {end}");
    let st = sbc
        .wait_exit(Duration::from_secs(10))
        .expect("sbc must exit after the drain timeout");
    assert!(st.success(), "sbc exit status after SIGTERM: {st}");
}

/// `X-Twilio-CallSid` from the INVITE becomes `start.callSid` and is passed through in
/// `customParameters` (it is in `passthrough_headers`), but only from a carrier marked
/// `twilio = true`: from any other carrier the header is the peer's own invention and is ignored
/// (issue 12, point 7).
#[test]
fn twilio_callsid_header_passthrough_only_from_twilio_carrier() {
    let sid = "CA0123456789abcdef0123456789abcdef";
    for twilio in [true, false] {
        let env = TestEnv::new();
        let agent = env.start_agent(AgentBehaviour::Echo);
        let mut opts = SbcOptions::agent(agent.url());
        if twilio {
            opts.extra_carrier.push("twilio = true".into());
        }
        let sbc = env.start_sbc(opts);
        env.sipp("uac_twilio_headers.xml")
            .run_expect(sbc.sip_port, 0);
        let conns = wait_closed(&agent, 1);
        let start = conns[0].first("start").expect("start").clone();
        let passed = &start["start"]["customParameters"]["X-Twilio-CallSid"];
        if twilio {
            assert_eq!(start["start"]["callSid"], sid, "start: {start}");
            assert_eq!(passed, sid, "start: {start}");
        } else {
            assert_ne!(start["start"]["callSid"], sid, "start: {start}");
            assert!(
                passed.is_null(),
                "header passed from a non-Twilio carrier: {start}"
            );
        }
    }
}

/// Routes: an exact route wins over a prefix route, which wins over the default.
#[test]
fn routes_pick_the_agent_by_called_number() {
    let env = TestEnv::new();
    let exact = env.start_agent(AgentBehaviour::Echo);
    let prefix = env.start_agent(AgentBehaviour::Echo);
    let default = env.start_agent(AgentBehaviour::Echo);
    let mut opts = SbcOptions::agent(default.url());
    opts.routes = vec![
        ("exact".into(), "+15550002222".into(), exact.url()),
        ("prefix".into(), "+1555".into(), prefix.url()),
    ];
    let sbc = env.start_sbc(opts);
    for number in ["+15550002222", "+15559999999", "+4930123456"] {
        env.sipp("uac_tls_srtp_pattern.xml")
            .service(number)
            .run_expect(sbc.sip_port, 0);
    }
    let n = |a: &TestAgent| a.connections().len();
    assert_eq!(
        (n(&exact), n(&prefix), n(&default)),
        (1, 1, 1),
        "one call per agent (exact, prefix, default)"
    );
    let to = |a: &TestAgent| {
        a.connections()[0].first("start").expect("start")["start"]["customParameters"]["to"].clone()
    };
    assert_eq!(to(&exact), "+15550002222");
    assert_eq!(to(&prefix), "+15559999999");
    assert_eq!(to(&default), "+4930123456");
}

/// Forged RTP from another socket, sprayed at every port of sbc's media range during a call,
/// must neither reach the agent nor disturb the call.
#[test]
fn forged_rtp_is_not_relayed() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let port = sbc.sip_port;
    let o = std::thread::scope(|s| {
        let sipp = s.spawn(|| env.sipp("uac_tls_srtp_pattern.xml").run(port));
        agent.wait_for("start", SECS10, |c| {
            c.first().is_some_and(|c| c.first("start").is_some())
        });
        let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
        for round in 0..5u16 {
            for p in env.ports.media_min..=env.ports.media_max {
                let mut pkt = vec![0x80, 0x00];
                pkt.extend_from_slice(&(1000 + round).to_be_bytes());
                pkt.extend_from_slice(&(160u32 * u32::from(round)).to_be_bytes());
                pkt.extend_from_slice(&0x0BAD_F00Du32.to_be_bytes());
                pkt.extend_from_slice(&[0x55; 160]);
                pkt.extend_from_slice(&[0u8; 10]);
                let _ = sock.send_to(&pkt, ("127.0.0.1", p));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        sipp.join().expect("sipp")
    });
    assert_eq!(o.code, 0, "{}", o.describe());
    o.rtp_check().assert_clean(&o, 0.5);
    let conns = wait_closed(&agent, 1);
    for (i, (_, p)) in conns[0].media.iter().enumerate() {
        assert!(
            p.iter().all(|&b| b == 0xAA),
            "media frame {i} reached the agent but is not SIPp's pattern: {:02x?}",
            &p[..16]
        );
    }
    let n = conns[0].media.len();
    assert!((100..=175).contains(&n), "agent got {n} media frames");
    let end = sbc.wait_event("call.end", &o.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
}

/// Malformed agent messages are ignored (counted in `media.agent_malformed`), the call goes on.
#[test]
fn malformed_agent_messages_are_ignored() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let port = sbc.sip_port;
    let o = std::thread::scope(|s| {
        let sipp = s.spawn(|| env.sipp("uac_tls_srtp_pattern.xml").run(port));
        agent.wait_for("start", SECS10, |c| {
            c.first().is_some_and(|c| c.first("start").is_some())
        });
        agent.send_text(0, "this is not json");
        agent.send_json(
            0,
            serde_json::json!({"event": "media", "streamSid": "x", "media": {"payload": "%%%not base64"}}),
        );
        sipp.join().expect("sipp")
    });
    assert_eq!(o.code, 0, "{}", o.describe());
    o.rtp_check().assert_clean(&o, 0.5);
    let end = sbc.wait_event("call.end", &o.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert!(
        end["media"]["agent_malformed"].as_u64().unwrap_or(0) >= 2,
        "media.agent_malformed must count both: {end}"
    );
}

/// Media keeps flowing across a session-refresh re-INVITE with fresh keys (see the scenario: SIPp
/// keeps its first keys, so this also exercises sbc's grace period for the previous key).
#[test]
fn reinvite_refresh_keeps_media() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env
        .sipp("uac_reinvite_refresh.xml")
        .run_expect(sbc.sip_port, 0);
    let rc = o.rtp_check();
    assert!(rc.sent >= 110, "SIPp sent {} packets: {rc:?}", rc.sent);
    assert!(
        o.response(200, "2 INVITE").is_some(),
        "no 200 for the re-INVITE\n{}",
        o.describe()
    );
    let end = sbc.wait_event("call.end", &o.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
    assert_eq!(wait_closed(&agent, 1).len(), 1, "one agent stream");
}

/// Agent audio is re-paced in real time: a `mark` sent after 1 s of audio (sent at once) comes
/// back only once that audio has been played out (~1 s later); after `clear`, queued audio is
/// dropped and the next mark comes back at once.
#[test]
fn mark_waits_for_playout_and_clear_flushes() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Silent);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let port = sbc.sip_port;
    std::thread::scope(|s| {
        let sipp = s.spawn(|| env.sipp("uac_call_5s_no_media.xml").run(port));
        agent.wait_for("start", SECS10, |c| {
            c.first().is_some_and(|c| c.first("start").is_some())
        });
        let mark_time = |name: &str| {
            let conns = agent.wait_for(&format!("mark {name} echoed"), SECS10, |c| {
                c[0].all("mark").iter().any(|m| m["mark"]["name"] == name)
            });
            conns[0]
                .messages
                .iter()
                .find(|(_, v)| v["event"] == "mark" && v["mark"]["name"] == name)
                .map(|(t, _)| *t)
                .expect("mark")
        };
        // 1 s of audio in 40 ms chunks, all at once, then a mark.
        for _ in 0..25 {
            agent.send_media(0, &[0xFF; 320]);
        }
        let t0 = std::time::Instant::now();
        agent.send_mark(0, "after-1s");
        let dt = mark_time("after-1s").saturating_duration_since(t0);
        assert!(
            dt >= Duration::from_millis(700) && dt <= Duration::from_millis(2500),
            "mark after 1 s of audio came back after {dt:?}"
        );
        // 5 s of audio, then clear and a mark: the mark must not wait for the 5 s.
        for _ in 0..125 {
            agent.send_media(0, &[0xFF; 320]);
        }
        std::thread::sleep(Duration::from_millis(200));
        agent.send_clear(0);
        let t1 = std::time::Instant::now();
        agent.send_mark(0, "after-clear");
        let dt = mark_time("after-clear").saturating_duration_since(t1);
        assert!(
            dt <= Duration::from_millis(500),
            "mark after clear came back after {dt:?}"
        );
        let o = sipp.join().expect("sipp");
        assert_eq!(o.code, 0, "{}", o.describe());
    });
}

/// An agent that is still sending when the carrier hangs up gets `stop` and sbc's Close: sbc
/// waits for the agent's Close before dropping the connection (dropping it with unread data
/// sends an RST, and the agent's next write fails before it has read `stop`).
#[test]
fn agent_sending_at_hangup_still_gets_stop() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::EchoAndStream(Duration::from_millis(2)));
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env.sipp("uac_tls_srtp_pattern.xml").run(sbc.sip_port);
    // The agent's extra audio is mixed into the echo, so SIPp's echo check may fail (253); the
    // call itself must complete.
    assert!(
        (o.code == 0 || o.code == 253) && o.response(200, "2 BYE").is_some(),
        "{}",
        o.describe()
    );
    let conns = wait_closed(&agent, 1);
    let c = &conns[0];
    let events: Vec<String> = c.events().into_iter().filter(|e| e != "media").collect();
    assert_eq!(
        events.last().map(String::as_str),
        Some("stop"),
        "the agent must get stop; events without media: {events:?}, error: {:?}",
        c.error
    );
    assert!(
        c.close_frame_received,
        "the agent must get sbc's Close frame (error: {:?})",
        c.error
    );
    assert!(c.error.is_none(), "agent connection error: {:?}", c.error);
    let end = sbc.wait_event("call.end", &o.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
}
