//! Call setup past saturation (issue 16): a burst of INVITEs on one trunk connection that sbc
//! cannot answer as fast as they come gets `503` with `Retry-After` for the calls it does not
//! take, every in-dialog request of the calls it has (BYE, ACK) is still answered, and the
//! connection stays open. Against the real binary.
//!
//! The carrier reads, but slowly (a 4 KiB receive buffer, a pause between messages), and sbc's
//! write queue is small (16 KiB): so sbc's responses back up in its queue as they do when a
//! carrier sends more setups than sbc and its peer can turn around. Before the fix the calls
//! in setup overflowed the queue with their `200 OK`s and sbc closed the trunk connection
//! (`write_queue_full`), losing every call on it.

use std::collections::HashSet;
use std::io::Write;
use std::time::{Duration, Instant};

use interop_tests::rawcall::{self, Dialog, SipConn};
use interop_tests::{tlsclient, SbcOptions, TestEnv};

/// Calls set up before the burst; their BYEs go out in the middle of it.
const ESTABLISHED: usize = 10;
/// New INVITEs in the burst.
const BURST: usize = 150;
/// INVITEs per write of the burst (a BYE of an established call follows each write).
const CHUNK: usize = 10;
/// Via headers added to every request: sbc copies them into each response, so that a few
/// calls fill the small write queue.
const PAD_VIAS: usize = 16;

/// `msg` with `PAD_VIAS` more Via headers below its own.
fn padded(msg: &str, tag: &str) -> String {
    let via_end = msg.find("\r\nVia: ").expect("Via") + 2;
    let line_end = via_end + msg[via_end..].find("\r\n").expect("Via line") + 2;
    let mut pad = String::new();
    for i in 0..PAD_VIAS {
        pad.push_str(&format!(
            "Via: SIP/2.0/TLS 192.0.2.{}:5061;branch=z9hG4bK-padding-{tag}-{i}-0123456789abcdef\r\n",
            i + 1
        ));
    }
    format!("{}{pad}{}", &msg[..line_end], &msg[line_end..])
}

#[derive(Default)]
struct Seen {
    /// Call-ID to the final status of its INVITE.
    invite_final: std::collections::HashMap<String, u16>,
    /// 503s without Retry-After.
    no_retry_after: usize,
    /// Call-IDs whose BYE got its 200.
    bye_ok: HashSet<String>,
    /// The To tag of each 200 to an INVITE.
    to_tags: std::collections::HashMap<String, String>,
}

impl Seen {
    fn note(&mut self, m: &str) {
        let status = tlsclient::status_code(m).unwrap_or(0);
        let id = rawcall::header(m, "Call-ID")
            .unwrap_or_default()
            .to_string();
        match rawcall::header(m, "CSeq") {
            Some("1 INVITE") if status >= 200 => {
                if status == 503 && rawcall::header(m, "Retry-After").is_none() {
                    self.no_retry_after += 1;
                }
                if status == 200 {
                    let tag = rawcall::header(m, "To").and_then(rawcall::tag);
                    self.to_tags
                        .insert(id.clone(), tag.expect("To tag").to_string());
                }
                self.invite_final.insert(id, status);
            }
            Some("2 BYE") if status == 200 => {
                self.bye_ok.insert(id);
            }
            _ => {}
        }
    }
}

#[test]
fn a_setup_burst_past_saturation_gets_503s_and_every_in_dialog_request_is_answered() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.log_level = "info".into();
    opts.rtp_timeout_secs = 120;
    opts.max_calls_per_second = 100_000;
    opts.max_concurrent_calls = 10_000;
    opts.extra_limits = vec![
        "max_message_bytes = 4096".into(),
        "max_sdp_bytes = 4096".into(),
        "write_queue_bytes = 16384".into(),
    ];
    let sbc = env.start_sbc(opts);
    let mut conn = SipConn::connect_with_recv_buffer(
        &env.pki,
        [127, 0, 0, 1].into(),
        ([127, 0, 0, 1], sbc.sip_port).into(),
        Some(4096),
    );
    let via_port = conn.local_addr().port();
    let key = rawcall::test_key(3);

    // Calls in progress on the trunk before the burst.
    let mut established = Vec::new();
    for i in 0..ESTABLISHED {
        let mut d = Dialog::new(sbc.sip_port, 5999, &format!("est{i}"));
        conn.send(&d.invite(via_port, 30000 + 2 * i as u16, &key));
        let (status, resp) = conn.finish_invite(&mut d, Duration::from_secs(20));
        assert_eq!(status, 200, "call {i} before the burst:\n{resp}");
        established.push(d);
    }

    // The burst: CHUNK new INVITEs per write, then the BYE of one established call; the carrier
    // reads slowly in between.
    let mut seen = Seen::default();
    let mut burst = Vec::new();
    for (c, chunk_start) in (0..BURST).step_by(CHUNK).enumerate() {
        let mut text = String::new();
        for i in chunk_start..(chunk_start + CHUNK).min(BURST) {
            let d = Dialog::new(sbc.sip_port, 5999, &format!("burst{i}"));
            text.push_str(&padded(&d.invite(via_port, 31000, &key), &format!("i{i}")));
            burst.push(d);
        }
        if let Some(d) = established.get(c) {
            text.push_str(&padded(&d.bye(via_port, 2), &format!("b{c}")));
        }
        // A write error means sbc closed the connection: the assertions below say so.
        if conn
            .tls
            .write_all(text.as_bytes())
            .and_then(|()| conn.tls.flush())
            .is_err()
        {
            break;
        }
        for _ in 0..CHUNK {
            match conn.recv(Duration::from_millis(200)) {
                Some(m) => seen.note(&m),
                None => break,
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // Then it reads at full speed until every INVITE has its final response and every BYE
    // its 200, or sbc closes the connection.
    let deadline = Instant::now() + Duration::from_secs(60);
    while (seen.invite_final.len() < BURST || seen.bye_ok.len() < ESTABLISHED)
        && Instant::now() < deadline
    {
        match conn.recv(Duration::from_secs(1)) {
            Some(m) => seen.note(&m),
            None if sbc.log().contains("write_queue_full") => break,
            None => {}
        }
    }
    let refused = seen.invite_final.values().filter(|&&s| s == 503).count();
    let accepted: Vec<&Dialog> = burst
        .iter()
        .filter(|d| seen.invite_final.get(&d.call_id) == Some(&200))
        .collect();
    let answered = burst
        .iter()
        .filter(|d| seen.invite_final.contains_key(&d.call_id))
        .count();
    eprintln!(
        "overload: {BURST} INVITEs in the burst: {} answered 200, {refused} 503, {answered} answered \
         in all; {} of {ESTABLISHED} BYEs answered",
        accepted.len(),
        seen.bye_ok.len()
    );
    let log = sbc.log();
    assert!(
        !log.contains("write_queue_full"),
        "sbc gave the trunk connection up:\n{}",
        interop_tests::tail(&log, 20)
    );
    assert_eq!(
        answered, BURST,
        "every INVITE of the burst gets a final response"
    );
    assert_eq!(
        seen.bye_ok.len(),
        ESTABLISHED,
        "every BYE of an established call is answered during the burst"
    );
    assert!(refused > 0, "the burst was past saturation: some 503s");
    assert_eq!(seen.no_retry_after, 0, "every 503 carries Retry-After");
    assert!(!accepted.is_empty(), "some calls of the burst were taken");

    // The calls taken during the burst are complete dialogs: ACK, then BYE, all answered.
    let mut text = String::new();
    for d in &accepted {
        let mut d2 = Dialog::new(sbc.sip_port, 5999, "x");
        d2.call_id = d.call_id.clone();
        d2.from_tag = d.from_tag.clone();
        d2.to_tag = seen.to_tags[&d.call_id].clone();
        text.push_str(&d2.ack(via_port));
        text.push_str(&d2.bye(via_port, 2));
    }
    conn.send(&text);
    let want: HashSet<String> = accepted.iter().map(|d| d.call_id.clone()).collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !want.is_subset(&seen.bye_ok) && Instant::now() < deadline {
        if let Some(m) = conn.recv(Duration::from_secs(1)) {
            seen.note(&m);
        }
    }
    let missing = want.difference(&seen.bye_ok).count();
    assert_eq!(
        missing, 0,
        "BYEs of calls taken during the burst unanswered"
    );

    // After the burst the trunk takes new calls again.
    let mut d = Dialog::new(sbc.sip_port, 5999, "after");
    conn.send(&d.invite(via_port, 32000, &key));
    let (status, resp) = conn.finish_invite(&mut d, Duration::from_secs(20));
    assert_eq!(status, 200, "a call after the burst:\n{resp}");
    conn.bye(&d, Duration::from_secs(20));
    assert!(
        !log.contains("panicked"),
        "sbc panicked:\n{}",
        interop_tests::tail(&log, 40)
    );
}
