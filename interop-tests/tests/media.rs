//! Media content end to end through the real sbc: real audio from baresip, a carrier with the
//! wrong SRTP key, RFC 4733 DTMF both ways (a Rust test carrier), PCMA.

use std::time::Duration;

use interop_tests::audio::{
    alaw_decode, compare_envelopes, nearest_ulaw, silence, tone, ulaw_decode,
};
use interop_tests::baresip::Baresip;
use interop_tests::carrier::TestCarrier;
use interop_tests::{wait_closed, AgentBehaviour, AgentConn, SbcOptions, TestEnv};
use serde_json::{json, Value};

const SECS10: Duration = Duration::from_secs(10);

/// The agent's inbound audio as linear samples (every frame must be 160 bytes).
fn agent_audio(c: &AgentConn) -> Vec<i16> {
    let mut out = Vec::new();
    for (i, (_, p)) in c.media.iter().enumerate() {
        assert_eq!(p.len(), 160, "media frame {i} has {} bytes", p.len());
        out.extend(p.iter().map(|&u| ulaw_decode(u)));
    }
    out
}

/// 1 s of 440 Hz at 12000, 1 s of silence, 1 s of 660 Hz at 4000 (two loudness levels, so a
/// swapped or attenuated stream fails, not only a missing one).
fn source_audio() -> Vec<i16> {
    let mut s = tone(440.0, 12000.0, 1.0);
    s.extend(silence(1.0));
    s.extend(tone(660.0, 4000.0, 1.0));
    s
}

/// baresip (an independent SIP-TLS + SDES-SRTP client) calls sbc and plays a 3 s WAV; the
/// agent's mu-law must sound like it (RMS envelope per 100 ms), and what baresip heard back
/// (the agent's echo, re-encrypted by sbc) too.
#[test]
fn baresip_call_audio_reaches_agent_and_echo_returns() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let source = source_audio();
    // baresip hangs up when the 3 s file ends and quits after 9 s (set-up on a loaded machine).
    let run = Baresip::dial(&env, sbc.sip_port, "+15550002222", &source, 9);
    let log = run.log();
    assert!(
        log.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)")
            && log.contains("Call established"),
        "baresip did not establish an SRTP call\n{}",
        run.describe()
    );
    let conns = wait_closed(&agent, 1);
    assert_eq!(conns.len(), 1, "one agent stream");
    let c = &conns[0];
    assert_eq!(c.events().last().map(String::as_str), Some("stop"));
    let n = c.media.len();
    assert!(
        (130..=175).contains(&n),
        "expected ~150 media frames (3 s), got {n}\n{}",
        run.describe()
    );
    let heard = agent_audio(c);
    let m = compare_envelopes(&source, &heard, 25);
    eprintln!(
        "agent audio vs source: lag {} frames, {} blocks, RMS source {:?} received {:?}",
        m.lag_frames, m.blocks, m.source_rms, m.received_rms
    );
    assert!(
        m.ok_within(20, 0.1),
        "the agent's audio does not sound like baresip's WAV: {m:#?}"
    );
    let end = sbc.wait_audit(SECS10, |v| v["event"] == "call.end");
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert_eq!(
        end["srtp"]["chosen_inbound"], "AES_CM_128_HMAC_SHA1_80",
        "call.end: {end}"
    );
    assert!(
        end["media"]["rtp_in"].as_u64().unwrap_or(0) >= 130,
        "call.end: {end}"
    );
    // baresip (libre) sends a 16-byte RTCP APP in the clear at call start: not SRTCP at all.
    assert!(
        end["media"]["carrier_malformed"].as_u64().is_some(),
        "call.end must count malformed carrier packets: {end}"
    );
    // baresip (libre) sends one RTCP BYE in the clear as it hangs up (after its SRTP is gone);
    // when it arrives before sbc has processed the SIP BYE it counts as one failure.
    assert!(
        end["media"]["auth_failures"].as_u64().unwrap_or(99) <= 1,
        "call.end: {end}"
    );
    // What baresip heard: the agent's echo through sbc's SRTP. Its jitter buffer adds delay and
    // the call ends with the file, so the tail may be cut: allow a larger lag, judge what came.
    let dec = run
        .dump("dec")
        .unwrap_or_else(|| panic!("baresip wrote no dump-*-dec.wav\n{}", run.describe()));
    let (rate, _, echoed) = interop_tests::audio::read_wav(&dec).expect("read dec dump");
    assert_eq!(rate, 8000, "{}", dec.display());
    let m = compare_envelopes(&source, &echoed, 50);
    eprintln!(
        "baresip's recording vs source: lag {} frames, {} blocks, RMS received {:?}",
        m.lag_frames, m.blocks, m.received_rms
    );
    assert!(
        m.ok_within(15, 0.1),
        "what baresip heard ({}) does not sound like its WAV: {m:#?}",
        dec.display()
    );
}

/// A carrier that advertises one SRTP key and encrypts with another: every packet fails
/// authentication and is counted (audit, metric), the agent gets no audio, the call still ends
/// cleanly on the carrier's BYE, and nothing is logged per packet above trace.
#[test]
fn wrong_srtp_key_counts_auth_failures_and_relays_nothing() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env.sipp("uac_wrong_key.xml").run(sbc.sip_port);
    // 253: the SIP flow passed, the echo check failed (nothing came back).
    assert_eq!(
        o.code,
        253,
        "expected SIPp's echo check (only) to fail\n{}",
        o.describe()
    );
    assert!(
        o.response(200, "2 BYE").is_some(),
        "the BYE must get a 200\n{}",
        o.describe()
    );
    let sent = o.rtp_check().sent;
    assert!(sent >= 100, "SIPp sent {sent} packets");
    let call_id = o.first_call_id();
    let end = sbc.wait_event("call.end", &call_id, SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    let failures = end["media"]["auth_failures"].as_u64().unwrap_or(0);
    assert!(
        failures as usize >= sent * 9 / 10,
        "SIPp sent {sent} packets, sbc counted {failures} auth failures: {end}"
    );
    assert_eq!(end["media"]["rtp_in"], 0, "call.end: {end}");
    // Well-formed SRTP with the wrong key: auth failures, not malformed packets.
    assert_eq!(end["media"]["carrier_malformed"], 0, "call.end: {end}");
    assert_eq!(end["media"]["agent_media_out"], 0, "call.end: {end}");
    let conns = wait_closed(&agent, 1);
    assert_eq!(conns[0].media.len(), 0, "the agent must get no media");
    assert_eq!(
        conns[0].events(),
        vec!["connected", "start", "stop"],
        "agent events"
    );
    let metric = format!("sbc_srtp_auth_failures_total{{side=\"carrier\"}} {failures}");
    let m = sbc.metrics();
    assert!(
        m.lines().any(|l| l.trim() == metric),
        "metrics lack `{metric}`:\n{m}"
    );
    // sbc runs at debug: per-packet events must be trace only, so this call's log stays short.
    let log = sbc.log();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&call_id)).collect();
    assert!(
        lines.len() < 40,
        "{} log lines for a call with {failures} bad packets (per-packet logging?):\n{}",
        lines.len(),
        interop_tests::tail(&lines.join("\n"), 20)
    );
    for l in log.lines() {
        let v: Value = serde_json::from_str(l).unwrap_or(Value::Null);
        let level = v["level"].as_str().unwrap_or("");
        assert!(
            level != "WARN" && level != "ERROR",
            "sbc logged at {level} for a carrier with a wrong key: {l}"
        );
    }
}

/// RFC 4733 telephone-events over SRTP from the carrier reach the agent as one Twilio `dtmf`
/// message per digit (the three end packets de-duplicated, also when one arrives late, during
/// the next digit); a `dtmf` from the agent reaches the carrier as one RFC 4733 event over SRTP.
#[test]
fn rfc4733_dtmf_both_ways() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let mut carrier = TestCarrier::call(&env, sbc.sip_port, "+15550002222", 0);
    let quiet = [[0xFFu8; 160]; 10];
    carrier.send_audio(0, &[[0xFF; 160]; 25]);
    agent.wait_for("start", SECS10, |c| {
        c.first().is_some_and(|c| c.first("start").is_some())
    });
    // 1: its third end packet is held back and arrives in the middle of 5 (reordered by the
    // network: it must not end 5 early nor count 1 twice); then 5 and # in order.
    let late_end = carrier.send_dtmf_with(1, 100, None, true);
    carrier.send_audio(0, &quiet);
    carrier.send_dtmf_with(5, 100, late_end.as_deref(), false);
    carrier.send_audio(0, &quiet);
    carrier.send_dtmf(11, 100);
    carrier.send_audio(0, &quiet);
    // The agent presses 7 for 200 ms.
    let sid = agent.connections()[0].stream_sid().unwrap_or_default();
    agent.send_json(
        0,
        json!({"event": "dtmf", "streamSid": sid, "dtmf": {"digit": "7", "duration": 200}}),
    );
    // Keep the call going (audio every 20 ms) until sbc's event has ended (three end packets),
    // at most 5 s: a loaded machine may deliver the agent's message late.
    for _ in 0..50 {
        carrier.send_audio(0, &[[0xFF; 160]; 5]);
        let ends = carrier
            .received()
            .rtp
            .iter()
            .filter(|p| p.payload_type == 101 && p.payload.get(1).is_some_and(|b| b & 0x80 != 0))
            .count();
        if ends >= 3 {
            break;
        }
    }
    let bye = carrier.hang_up();
    assert!(bye.starts_with("SIP/2.0 200"), "BYE answered with:\n{bye}");
    let conns = wait_closed(&agent, 1);
    let digits: Vec<String> = conns[0]
        .all("dtmf")
        .iter()
        .map(|v| v["dtmf"]["digit"].as_str().unwrap_or("?").to_string())
        .collect();
    assert_eq!(
        digits,
        vec!["1", "5", "#"],
        "agent dtmf messages: {:?}",
        conns[0].all("dtmf")
    );
    for d in conns[0].all("dtmf") {
        assert_eq!(d["dtmf"]["track"], "inbound_track", "{d}");
    }
    let r = carrier.received();
    assert_eq!(r.auth_failures, 0, "sbc's SRTP must authenticate");
    let events: Vec<_> = r.rtp.iter().filter(|p| p.payload_type == 101).collect();
    assert!(
        !events.is_empty(),
        "no telephone-event from sbc; payload types seen: {:?}",
        r.rtp
            .iter()
            .map(|p| p.payload_type)
            .collect::<std::collections::BTreeSet<_>>()
    );
    let ts = events[0].timestamp;
    assert!(
        events[0].marker,
        "the first event packet has the marker bit"
    );
    let mut ends = 0;
    let mut last_duration = 0u16;
    for p in &events {
        assert_eq!(
            p.timestamp, ts,
            "all packets of one event share its timestamp"
        );
        assert!(
            p.payload.len() >= 4,
            "telephone-event payload {:?}",
            p.payload
        );
        assert_eq!(p.payload[0], 7, "event code of digit 7: {:?}", p.payload);
        let duration = u16::from_be_bytes([p.payload[2], p.payload[3]]);
        assert!(duration >= last_duration, "durations must not shrink");
        last_duration = duration;
        if p.payload[1] & 0x80 != 0 {
            ends += 1;
        }
    }
    assert_eq!(ends, 3, "three end packets (RFC 4733 §2.5.1.4)");
    assert!(
        (1600..=1760).contains(&last_duration),
        "200 ms = 1600 samples, got {last_duration}"
    );
    let end = sbc.wait_event("call.end", &carrier.call_id, SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert_eq!(
        end["media"]["dtmf_events"], 4,
        "3 from the carrier + 1 from the agent: {end}"
    );
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
}

/// A PCMA-only offer: the agent gets mu-law (the A-law -> mu-law conversion of SIPp's pattern,
/// checked with this crate's own G.711 decoder) and SIPp's echo check passes on A-law again.
#[test]
fn pcma_call_is_mulaw_for_the_agent_and_alaw_again_for_the_carrier() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = env.start_sbc(SbcOptions::agent(agent.url()));
    let o = env.sipp("uac_pcma_pattern.xml").run(sbc.sip_port);
    let ok = o
        .response(200, "1 INVITE")
        .unwrap_or_else(|| panic!("no 200\n{}", o.describe()));
    let m = ok
        .lines()
        .find(|l| l.starts_with("m=audio "))
        .unwrap_or_else(|| panic!("no m=audio in the answer:\n{ok}"));
    let fmts: Vec<&str> = m.split_whitespace().skip(3).collect();
    assert_eq!(fmts.first(), Some(&"8"), "the answer must use PCMA: {m}");
    assert!(!fmts.contains(&"0"), "PCMU was not offered: {m}");
    let conns = wait_closed(&agent, 1);
    let c = &conns[0];
    let start = c.first("start").expect("start");
    assert_eq!(
        start["start"]["mediaFormat"]["encoding"], "audio/x-mulaw",
        "start: {start}"
    );
    // SIPp's pattern 1 is 0xAA in every byte (as checked for PCMU in calls.rs); as A-law that is
    // +32256, whose nearest mu-law code is 0x80 (+32124, mu-law's largest).
    let want = nearest_ulaw(alaw_decode(0xAA));
    assert_eq!(want, vec![0x80]);
    let n = c.media.len();
    assert!((100..=175).contains(&n), "agent got {n} media frames");
    for (i, (_, p)) in c.media.iter().enumerate() {
        assert_eq!(p.len(), 160, "media frame {i}");
        assert!(
            p.iter().all(|b| want.contains(b)),
            "media frame {i} is not the mu-law of SIPp's A-law pattern ({want:02x?}): {:02x?}",
            &p[..16]
        );
    }
    // The way back (checked after the agent's bytes, which tell more when both fail): SIPp's
    // echo check compares what it receives with the A-law it sent.
    assert_eq!(o.code, 0, "SIPp's PCMA echo check\n{}", o.describe());
    let rc = o.rtp_check();
    rc.assert_clean(&o, 0.5);
    assert!(
        rc.sent >= 140 && rc.received_ok >= 75,
        "SIPp's echo check must have run on ~150 packets: {rc:?}"
    );
    let end = sbc.wait_event("call.end", &o.first_call_id(), SECS10);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
}
