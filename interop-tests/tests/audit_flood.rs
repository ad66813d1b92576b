//! A flood of refused INVITEs cannot fill the disk, and a real call placed during it keeps both
//! of its audit records (issue 12, point 4). Against the real binary.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use interop_tests::pki::TestPki;
use interop_tests::rawcall::{self, Dialog, Media, SipConn};
use interop_tests::{SbcOptions, TestEnv};
use serde_json::Value;

const FLOOD: usize = 5000;
const CONNS: usize = 4;
const RATE: u64 = 20;

/// Sends `n` INVITEs on one connection in batches, reading each batch's final responses;
/// returns how many got 503 and how many got 200.
fn flood(pki: &TestPki, sbc_port: u16, conn_no: usize, n: usize) -> (usize, usize) {
    let mut conn = SipConn::connect(pki, sbc_port);
    let via_port = conn.local_addr().port();
    let key = rawcall::test_key(5);
    let (mut refused, mut accepted) = (0, 0);
    for batch in (0..n).collect::<Vec<_>>().chunks(50) {
        let mut waiting = HashSet::new();
        let mut text = String::new();
        for i in batch {
            let d = Dialog::new(sbc_port, 5999, &format!("flood{conn_no}x{i}"));
            text.push_str(&d.invite(via_port, 30000, &key));
            waiting.insert(d.call_id);
        }
        conn.send(&text);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !waiting.is_empty() {
            let left = deadline.saturating_duration_since(Instant::now());
            let m = conn
                .recv(left)
                .unwrap_or_else(|| panic!("no answer to {} INVITEs", waiting.len()));
            let status = interop_tests::tlsclient::status_code(&m).unwrap_or(0);
            if status < 200 {
                continue;
            }
            if let Some(id) = rawcall::header(&m, "Call-ID") {
                if waiting.remove(id) {
                    match status {
                        503 => refused += 1,
                        200 => accepted += 1,
                        other => panic!("unexpected {other} during the flood:\n{m}"),
                    }
                }
            }
        }
    }
    (refused, accepted)
}

#[test]
fn a_flood_of_refusals_is_summarised_and_a_real_call_keeps_both_records() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.log_level = "info".into();
    opts.rtp_timeout_secs = 60;
    // The flooding carrier is 127.0.0.1, one call per second; the real call comes from a
    // second carrier at 127.0.0.2.
    opts.source_cidrs = vec!["127.0.0.1/32".into()];
    opts.max_calls_per_second = 1;
    opts.extra_carriers = vec![("real".into(), vec!["127.0.0.2/32".into()])];
    opts.extra_audit = vec![
        format!("refusal_records_per_second = {RATE}"),
        "refusal_summary_interval_secs = 1".into(),
    ];
    let sbc = env.start_sbc(opts);
    let started = Instant::now();

    let (refused, accepted, dialog) = std::thread::scope(|scope| {
        let pki = &env.pki;
        let port = sbc.sip_port;
        let flooders: Vec<_> = (0..CONNS)
            .map(|c| scope.spawn(move || flood(pki, port, c, FLOOD / CONNS)))
            .collect();
        // The real call, during the flood.
        std::thread::sleep(Duration::from_millis(200));
        let mut real = SipConn::connect_from(&env.pki, sbc.sip_port, [127, 0, 0, 2].into());
        let via_port = real.local_addr().port();
        let mut dialog = Dialog::new(sbc.sip_port, 5999, "realcall");
        let (_sock, rtp_port) = Media::bind();
        real.send(&dialog.invite(via_port, rtp_port, &rawcall::test_key(9)));
        let ok = real.expect_response(200, "1 INVITE", Duration::from_secs(20));
        dialog.to_tag = rawcall::header(&ok, "To")
            .and_then(rawcall::tag)
            .expect("To tag")
            .to_string();
        real.send(&dialog.ack(via_port));
        real.send(&dialog.bye(via_port, 2));
        real.expect_response(200, "2 BYE", Duration::from_secs(20));

        let (mut refused, mut accepted) = (0, 0);
        for f in flooders {
            let (r, a) = f.join().expect("flood thread");
            refused += r;
            accepted += a;
        }
        (refused, accepted, dialog)
    });
    let flood_secs = started.elapsed().as_secs_f64();
    assert_eq!(refused + accepted, FLOOD);
    assert!(
        refused >= FLOOD - 20,
        "the rate limit refused only {refused}"
    );

    // Wait for the summaries to account for every refusal.
    let deadline = Instant::now() + Duration::from_secs(15);
    let (full, suppressed, summaries, audit_bytes) = loop {
        let audit = sbc.audit();
        let full = audit
            .iter()
            .filter(|v| v["event"] == "call.refused" && v["carrier"] == "test")
            .count();
        let summaries: Vec<&Value> = audit
            .iter()
            .filter(|v| v["event"] == "call.refused.summary")
            .collect();
        let suppressed: u64 = summaries
            .iter()
            .map(|v| v["suppressed"].as_u64().unwrap_or(0))
            .sum();
        if full as u64 + suppressed >= refused as u64 || Instant::now() > deadline {
            break (full, suppressed, summaries.len(), sbc.audit_text().len());
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    eprintln!(
        "flood: {refused} refused in {flood_secs:.1} s; audit: {full} full call.refused, \
         {summaries} summaries ({suppressed} suppressed), {audit_bytes} bytes in all"
    );
    assert_eq!(
        full as u64 + suppressed,
        refused as u64,
        "every refusal is either written or counted"
    );
    // The token bucket's burst (RATE) plus RATE per second of the flood, with a second of slack.
    let bound = RATE * (flood_secs.ceil() as u64 + 2);
    assert!(
        (full as u64) <= bound,
        "{full} full refusal records for a {flood_secs:.1} s flood (bound {bound})"
    );
    assert!(
        summaries as f64 <= flood_secs.ceil() + 3.0,
        "{summaries} summaries"
    );
    // The real call has both records.
    let audit = sbc.audit();
    for event in ["call.start", "call.end"] {
        assert!(
            audit
                .iter()
                .any(|v| v["event"] == event && v["sip_call_id"] == dialog.call_id.as_str()),
            "the real call has no {event} record"
        );
    }
}
