//! Hostile or broken peers against the real binary (issue 12, points 1 and 3).
//!
//! - No call can be taken over by Call-ID: a second connection, of the same carrier or of
//!   another one, that sends requests carrying a live call's Call-ID gets 481 (nothing for an
//!   ACK), and the call keeps answering on its own connection with its media untouched.
//! - A stuck agent cannot freeze its call: the carrier gets a BYE within `send_timeout_ms` of
//!   sbc's writes to the agent blocking, or its own BYE answered during the stall.

use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use interop_tests::rawcall::{self, Dialog, Media, SipConn};
use interop_tests::{AgentBehaviour, SbcOptions, TestEnv};

const SECS20: Duration = Duration::from_secs(20);

/// Where a hostile request comes from.
#[derive(Clone, Copy, Debug)]
enum Origin {
    /// Another connection from the call's own carrier (127.0.0.1).
    SameCarrier,
    /// A connection from another carrier (127.0.0.2).
    OtherCarrier,
}

/// Which identifiers a hostile request carries besides the live call's Call-ID.
#[derive(Clone, Copy, Debug)]
enum Ids {
    /// The INVITE's From tag, a To tag that is not sbc's, another branch.
    WrongToTag,
    /// sbc's real To tag and the INVITE's branch, but another From tag.
    WrongFromTag,
    /// Every identifier right (From tag, sbc's To tag, the INVITE's branch): only the carrier
    /// is wrong.
    AllRight,
}

/// A request for `dialog`'s Call-ID with the identifiers `ids` picks.
fn hostile_request(
    dialog: &Dialog,
    method: &str,
    ids: Ids,
    via_port: u16,
    cseq: u32,
    rtp_port: u16,
) -> String {
    let (from_tag, to_tag, branch) = match ids {
        Ids::WrongToTag => (dialog.from_tag.as_str(), "hostile", "z9hG4bKhostile"),
        Ids::WrongFromTag => ("hostile", dialog.to_tag.as_str(), "z9hG4bKinv1"),
        Ids::AllRight => (
            dialog.from_tag.as_str(),
            dialog.to_tag.as_str(),
            "z9hG4bKinv1",
        ),
    };
    // CANCEL and a retransmitted INVITE name the INVITE's transaction (CSeq 1); the rest are
    // new in-dialog requests.
    let cseq = if matches!(method, "CANCEL" | "ACK") {
        1
    } else {
        cseq
    };
    let body = if method == "INVITE" {
        // A re-offer that would move sbc's media to the attacker's port.
        format!(
            "v=0\r\no=h 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVz\r\n"
        )
    } else {
        String::new()
    };
    let ctype = if body.is_empty() {
        ""
    } else {
        "Content-Type: application/sdp\r\n"
    };
    format!(
        "{method} sip:{called}@127.0.0.1:{port} SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:{via_port};branch={branch}\r\n\
         Max-Forwards: 70\r\n\
         From: <sip:+15550001111@127.0.0.1>;tag={from_tag}\r\n\
         To: <sip:{called}@127.0.0.1>;tag={to_tag}\r\n\
         Call-ID: {cid}\r\n\
         CSeq: {cseq} {method}\r\n\
         Contact: <sip:attacker@127.0.0.1:{via_port};transport=tls>\r\n\
         {ctype}Content-Length: {len}\r\n\r\n{body}",
        called = dialog.called,
        port = dialog.sbc_port,
        cid = dialog.call_id,
        len = body.len(),
    )
}

/// Sends every hostile request (methods × identifier sets × origins) for `dialog`'s Call-ID and
/// checks each answer on the connection it came on: 481, or nothing for an ACK. `phase` names
/// the call's state for messages.
fn attack(
    env: &TestEnv,
    sbc_port: u16,
    dialog: &Dialog,
    phase: &str,
    cseq_base: u32,
) -> Vec<SipConn> {
    let cases: &[(Origin, Ids)] = &[
        (Origin::SameCarrier, Ids::WrongToTag),
        (Origin::SameCarrier, Ids::WrongFromTag),
        (Origin::OtherCarrier, Ids::WrongToTag),
        (Origin::OtherCarrier, Ids::AllRight),
    ];
    let (_attacker_media, attacker_rtp) = Media::bind();
    let mut conns = Vec::new();
    let mut cseq = cseq_base;
    for (origin, ids) in cases {
        let mut conn = match origin {
            Origin::SameCarrier => SipConn::connect(&env.pki, sbc_port),
            Origin::OtherCarrier => {
                SipConn::connect_from(&env.pki, sbc_port, Ipv4Addr::new(127, 0, 0, 2))
            }
        };
        let via_port = conn.local_addr().port();
        for method in ["OPTIONS", "ACK", "BYE", "CANCEL", "INVITE"] {
            cseq += 1;
            let req = hostile_request(dialog, method, *ids, via_port, cseq, attacker_rtp);
            conn.send(&req);
            let what = format!("{phase} call, {origin:?}, {ids:?}, {method}");
            if method == "ACK" {
                if let Some(m) = conn.recv(Duration::from_millis(300)) {
                    panic!("{what}: an ACK must get no answer, got:\n{m}");
                }
                continue;
            }
            let cseq_hdr = match method {
                "CANCEL" => "1 CANCEL".to_string(),
                _ => format!("{cseq} {method}"),
            };
            let got = conn
                .recv(Duration::from_secs(5))
                .unwrap_or_else(|| panic!("{what}: no answer within 5 s"));
            let status = got.split_whitespace().nth(1).unwrap_or_default();
            assert_eq!(
                (status, rawcall::header(&got, "CSeq")),
                ("481", Some(cseq_hdr.as_str())),
                "{what}: expected 481, got:\n{got}"
            );
        }
        conns.push(conn);
    }
    conns
}

/// A call waiting for a slow agent, then established: strangers with its Call-ID (from the same
/// carrier on another connection, and from another carrier) get 481 for OPTIONS, BYE, CANCEL and
/// re-INVITE and nothing for ACK; the carrier's own connection still gets the 200 OK, the media
/// keeps flowing, and the call ends normally with the carrier's BYE.
#[test]
fn strangers_cannot_take_over_a_call_by_call_id() {
    let env = TestEnv::new();
    // The agent's TLS handshake waits 5 s: the INVITE stays pending (180 after 200 ms) while the
    // first round of hostile requests runs.
    let agent = env.start_agent(AgentBehaviour::DelayAccept(Duration::from_secs(5)));
    let mut opts = SbcOptions::agent(agent.url());
    opts.source_cidrs = vec!["127.0.0.1/32".into()];
    opts.extra_carriers = vec![("other".into(), vec!["127.0.0.2/32".into()])];
    opts.ringing_after_ms = 200;
    opts.connect_timeout_ms = 15_000;
    opts.rtp_timeout_secs = 30;
    let sbc = env.start_sbc(opts);

    let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(sbc.sip_port, 9, "hostile");
    let (sock, rtp_port) = Media::bind();
    let our_key = rawcall::test_key(7);
    let started = Instant::now();
    conn.send(&dialog.invite(via_port, rtp_port, &our_key));
    let ringing = conn.expect_response(180, "1 INVITE", Duration::from_secs(4));
    dialog.to_tag = rawcall::header(&ringing, "To")
        .and_then(rawcall::tag)
        .unwrap_or_else(|| panic!("180 without To tag:\n{ringing}"))
        .to_string();

    let mut strangers = attack(&env, sbc.sip_port, &dialog, "pending", 100);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the pending round must end before the agent answers ({:?})",
        started.elapsed()
    );

    // The call's own connection gets the 200 OK with sbc's key.
    let ok = conn.expect_response(200, "1 INVITE", SECS20);
    assert_eq!(
        rawcall::header(&ok, "To").and_then(rawcall::tag),
        Some(dialog.to_tag.as_str())
    );
    conn.send(&dialog.ack(via_port));
    let answer = rawcall::parse_answer(rawcall::body(&ok));
    let media = Media::start(sock, our_key, answer);
    assert!(
        media.wait_received(25, SECS20),
        "no SRTP echo after answer: sent {}, authenticated {}",
        media.sent(),
        media.received()
    );

    strangers.extend(attack(&env, sbc.sip_port, &dialog, "established", 200));
    // Media still flows to us (a hostile re-INVITE moved nothing): another 50 packets.
    let before = media.received();
    assert!(
        media.wait_received(before + 50, SECS20),
        "SRTP stopped after the hostile requests: {before} before, {} now",
        media.received()
    );
    // Nothing of the call reached a stranger after its 481s.
    for s in strangers.iter_mut() {
        if let Some(m) = s.recv(Duration::from_millis(100)) {
            panic!("a stranger received a message of the call:\n{m}");
        }
    }
    // The call's own connection saw only its responses (no 481 meant for strangers).
    while let Some(m) = conn.recv(Duration::from_millis(100)) {
        let first = m.lines().next().unwrap_or_default();
        assert!(
            first.starts_with("SIP/2.0 200") || first.starts_with("SIP/2.0 1"),
            "the carrier's connection got something meant for a stranger:\n{m}"
        );
    }

    conn.send(&dialog.bye(via_port, 2));
    conn.expect_response(200, "2 BYE", SECS20);
    let end = sbc.wait_event("call.end", &dialog.call_id, SECS20);
    assert_eq!(end["end_reason"], "carrier_bye", "call.end: {end}");
    assert_eq!(end["media"]["auth_failures"], 0, "call.end: {end}");
    let starts = sbc
        .audit()
        .iter()
        .filter(|v| v["event"] == "call.start")
        .count();
    assert_eq!(starts, 1, "one call only: {:?}", sbc.audit());
    drop(media);
}

/// The next request on `conn` within `timeout` whose request line starts with `prefix`.
fn wait_request(conn: &mut SipConn, prefix: &str, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if let Some(m) = conn.recv(deadline - Instant::now()) {
            if m.starts_with(prefix) {
                return Some(m);
            }
        }
    }
    None
}

/// An agent that stops reading mid-call (its socket buffers are small, and sbc's send buffer
/// towards the agent is 4 KiB here, so sbc's writes block within about a second of media).
/// Either sbc notices within `send_timeout_ms` of its writes making no progress and sends the
/// carrier a BYE (`end_reason = agent_stuck`), or, when the carrier hangs up during the stall,
/// its BYE gets a 200 at once (`end_reason = carrier_bye`). Both write `call.end`.
#[test]
fn a_stuck_agent_cannot_freeze_its_call() {
    // (carrier hangs up during the stall, send_timeout_ms, expected end_reason)
    let cases = [(false, 1000u64, "agent_stuck"), (true, 5000, "carrier_bye")];
    for (carrier_bye, send_timeout_ms, want_end) in cases {
        let env = TestEnv::new();
        let agent = env.start_agent(AgentBehaviour::StopReadingAfter(Duration::from_secs(1)));
        let mut opts = SbcOptions::agent(agent.url());
        opts.rtp_timeout_secs = 30;
        opts.extra_agent = vec![
            format!("send_timeout_ms = {send_timeout_ms}"),
            "send_buffer_bytes = 4096".into(),
        ];
        let sbc = env.start_sbc(opts);
        let (mut conn, dialog, media) = rawcall::place_call(
            &env.pki,
            sbc.sip_port,
            9,
            &format!("stuck{carrier_bye}"),
            SECS20,
        );
        let via_port = conn.local_addr().port();
        assert!(
            media.wait_received(10, SECS20),
            "no SRTP through the agent before the stall"
        );
        let conns = agent.wait_for("the agent stops reading", SECS20, |c| {
            c.first().is_some_and(|c| c.stalled.is_some())
        });
        let stalled = conns[0].stalled.expect("stalled");
        let what = format!("carrier_bye={carrier_bye}");
        if carrier_bye {
            // 3 s into the stall sbc's writes to the agent are blocked (a few KB of buffers at
            // ~13 KB/s), and its 5 s deadline has not passed: the carrier's BYE must still be
            // answered at once.
            std::thread::sleep(
                (stalled + Duration::from_secs(3)).saturating_duration_since(Instant::now()),
            );
            let sent = Instant::now();
            conn.send(&dialog.bye(via_port, 2));
            conn.expect_response(200, "2 BYE", Duration::from_secs(2));
            eprintln!(
                "{what}: 200 to the carrier's BYE {:?} after it was sent, {:?} into the stall",
                sent.elapsed(),
                sent - stalled
            );
        } else {
            let bye = wait_request(&mut conn, "BYE ", SECS20).unwrap_or_else(|| {
                panic!(
                    "{what}: no BYE from sbc within 20 s of the agent's stall\n{}",
                    interop_tests::tail(&sbc.log(), 30)
                )
            });
            let after = stalled.elapsed();
            eprintln!("{what}: sbc's BYE {after:?} after the agent stopped reading");
            // Buffers (~1-2 s of media) + the 1 s deadline; generous margin for a loaded box.
            assert!(
                after < Duration::from_secs(8),
                "{what}: BYE only {after:?} after the stall"
            );
            assert!(
                rawcall::header(&bye, "Reason").is_some_and(|r| r.contains("cause=41")),
                "{what}: BYE without the agent-stuck Reason:\n{bye}"
            );
            conn.send(&rawcall::response_to(&bye, 200, "OK"));
        }
        let end = sbc.wait_event("call.end", &dialog.call_id, Duration::from_secs(5));
        assert_eq!(end["end_reason"], want_end, "{what}: call.end: {end}");
        if !carrier_bye {
            assert_eq!(
                end["end_detail"], "no write progress within send_timeout",
                "{what}: it is the deadline that ends the call: {end}"
            );
        }
        drop(media);
    }
}
