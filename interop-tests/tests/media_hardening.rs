//! Media hardening against the real binary (issue 13): concurrent calls under SIPp's strict echo
//! check (`-audiotolerance 0.1`), and the `[media]` checks on the carrier's `c=` address.
//!
//! ## SIPp's echo check races a fast echo
//!
//! SIPp 3.8 runs every call's RTP in one thread, on a shared 20 ms grid. After sending a packet
//! for a call it does one `select()` with a zero timeout on that call's socket and, if anything
//! is there, reads *all* of it (`src/rtpstream.cpp`, `rtpstream_playrtptask`); nothing there is
//! `NODATA`, a failed check. It assumes the echo of the packet it just sent cannot already be
//! back. On a two-core machine it can: SIPp's send wakes sbc on the other core, SIPp's thread is
//! descheduled (or busy writing its `-rtpcheck_debug` file) before its `select()`, and sbc's
//! echo of that very packet arrives first. That check then reads two echoes, and the next check
//! of the call finds none: `NODATA`. It hits the call SIPp serves first in each round (its task
//! slot 0: the first call, then the call moved into slot 0 when the first one ends), so one call
//! in a run collects 10-20% `NODATA` and fails the run, in about half of the runs.
//!
//! Measured on the scenario below before any change (December 2026, 2 vCPU): 2 of 12 runs
//! passed; in every failed run all `NODATA` but each call's first packet came right after a
//! check that had read two echoes; no SRTP failure, no content mismatch; `strace` of sbc showed
//! every echo leaving 0.1-8 ms after its packet arrived (and under `strace`, sbc being slower,
//! 14 of 14 runs passed). sbc is not the cause: an echo sent at once is correct.
//!
//! So the strict check is SIPp's, with that race taken out: SIPp runs with
//! `-audiotolerance 0.1` and its `debugafile` is re-read per call; a `NODATA` that follows a
//! check which read two echoes is an early echo, not a missing one. Every call must then have
//! fewer than 10% failed checks (missing echoes, mismatches, SRTP failures), no mismatch and no
//! SRTP failure at all, and SIPp's own exit status may be 253 only when its failures are all of
//! that kind.

use std::collections::BTreeMap;

use interop_tests::{AgentBehaviour, SbcOptions, SippOutcome, TestEnv};

/// One call's echo checks, from SIPp's `debugafile`.
#[derive(Debug, Default, Clone)]
struct CallChecks {
    sent: usize,
    /// Echoes read in each check, in order (0 = `NODATA`).
    reads: Vec<usize>,
    mismatches: usize,
    srtp_failures: usize,
}

impl CallChecks {
    /// `NODATA` right after a check that read two or more echoes: the echo came early.
    fn early(&self) -> usize {
        self.reads
            .windows(2)
            .filter(|w| w[0] >= 2 && w[1] == 0)
            .count()
    }

    fn nodata(&self) -> usize {
        self.reads.iter().filter(|r| **r == 0).count()
    }

    /// Failed checks with early echoes counted as received.
    fn failures(&self) -> usize {
        self.nodata() - self.early() + self.mismatches + self.srtp_failures
    }
}

/// Per call (keyed by SIPp's SSRC), what SIPp logged for each check.
fn per_call(o: &SippOutcome) -> BTreeMap<String, CallChecks> {
    let text = std::fs::read_to_string(o.dir.join("debugafile")).unwrap_or_default();
    let mut calls: BTreeMap<String, CallChecks> = BTreeMap::new();
    let mut cur: Option<String> = None;
    let mut reads = 0;
    for line in text.lines() {
        if line.contains("SIPP SUCCESS SEND LOG:") {
            // `... SEND LOG:  182 0xb6 N [80PPSSSSTTTTTTTTSSSSSSSS...]`: SSRC at hex 16..24.
            let hex = line.rsplit('[').next().unwrap_or_default();
            let ssrc = hex.get(16..24).unwrap_or("?").to_string();
            calls.entry(ssrc.clone()).or_default().sent += 1;
            cur = Some(ssrc);
            reads = 0;
        } else if line.contains("SIPP SUCCESS RECV LOG:") {
            reads += 1;
        } else if let Some(c) = cur.as_ref().and_then(|s| calls.get_mut(s)) {
            if line.contains("processIncomingPacket() rc ==") {
                let rc_zero = line
                    .split("rc ==")
                    .nth(1)
                    .is_some_and(|r| r.split_whitespace().next() == Some("0"));
                if !rc_zero {
                    c.srtp_failures += 1;
                }
            } else if line.contains("COMPARISON OK") {
                c.reads.push(reads);
            } else if line.contains("COMPARISON FAILED") {
                c.reads.push(reads);
                c.mismatches += 1;
            } else if line.contains(" NODATA ") {
                c.reads.push(0);
            }
        }
    }
    calls
}

/// The README's scenario: 10 calls at 5 per second, SIPp's echo check at `-audiotolerance 0.1`;
/// `Err` says why the strict check failed.
fn strict_concurrent_echo(opts: SbcOptions, env: &TestEnv) -> Result<(), String> {
    let sbc = env.start_sbc(opts);
    let o = env
        .sipp("uac_tls_srtp_pattern.xml")
        .calls(10, 5, 10)
        .audio_tolerance(0.1)
        .run(sbc.sip_port);
    let calls = per_call(&o);
    let summary: Vec<String> = calls
        .iter()
        .map(|(ssrc, c)| {
            format!(
                "{ssrc}: sent {} nodata {} (early {}) mismatches {} srtp_failures {}",
                c.sent,
                c.nodata(),
                c.early(),
                c.mismatches,
                c.srtp_failures
            )
        })
        .collect();
    eprintln!(
        "SIPp exit {} (its own verdict); per call:\n{}",
        o.code,
        summary.join("\n")
    );
    if calls.len() != 10 {
        return Err(format!("{} calls with RTP\n{}", calls.len(), o.describe()));
    }
    let all_clean = calls.values().all(|c| {
        c.sent >= 140
            && c.mismatches == 0
            && c.srtp_failures == 0
            && (c.failures() as f64) < 0.1 * c.sent as f64
    });
    // SIPp's own verdict may fail (253) only through early echoes: the per-call check above
    // already refuses mismatches, SRTP failures and missing echoes (see the module doc).
    let sipp_ok = o.code == 0 || o.code == 253;
    if all_clean && sipp_ok {
        Ok(())
    } else {
        Err(format!(
            "strict echo check failed: SIPp exit {}\n{}\n{}",
            o.code,
            summary.join("\n"),
            o.describe()
        ))
    }
}

#[test]
fn concurrent_calls_pass_the_strict_echo_check_builtin_echo() {
    let env = TestEnv::new();
    strict_concurrent_echo(SbcOptions::builtin_echo(), &env).unwrap();
}

/// The corrected check is not vacuous: echoes SIPp cannot decrypt (without
/// `mirror_caller_ssrc` SIPp 3.8 decrypts with its own SSRC) fail it.
#[test]
fn the_strict_echo_check_fails_on_broken_echoes() {
    let env = TestEnv::new();
    let mut opts = SbcOptions::builtin_echo();
    opts.mirror_caller_ssrc = false;
    let e = strict_concurrent_echo(opts, &env).unwrap_err();
    assert!(e.contains("strict echo check failed"), "{e}");
}

#[test]
fn concurrent_calls_pass_the_strict_echo_check_through_the_agent() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    strict_concurrent_echo(SbcOptions::agent(agent.url()), &env).unwrap();
}

/// `inv` with its `c=` line replaced and Content-Length set to the new body's length.
fn with_connection(inv: &str, c: &str) -> String {
    let (head, body) = inv.split_once("\r\n\r\n").expect("a body");
    let body = body.replace("c=IN IP4 127.0.0.1", &format!("c={c}"));
    let head: Vec<String> = head
        .split("\r\n")
        .map(|l| {
            if l.to_ascii_lowercase().starts_with("content-length:") {
                format!("Content-Length: {}", body.len())
            } else {
                l.to_string()
            }
        })
        .collect();
    format!("{}\r\n\r\n{body}", head.join("\r\n"))
}

/// Issue 13: `c=` is checked. Unspecified, multicast and addrtype-mismatched addresses get 488
/// with a Warning that says why (loopback is allowed in this test setting:
/// `allow_loopback_media = true`, without it 127.0.0.1 gets the same 488).
#[test]
fn unusable_connection_addresses_get_488_with_a_warning() {
    use interop_tests::rawcall::{self, Dialog, Media, SipConn};
    let env = TestEnv::new();
    let sbc = env.start_sbc(SbcOptions::builtin_echo());
    for (n, (c, why)) in [
        ("IN IP4 0.0.0.0", "unspecified"),
        ("IN IP4 224.0.0.1", "multicast"),
        ("IN IP4 ::1", "not an IP4 address"),
    ]
    .into_iter()
    .enumerate()
    {
        let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
        let via_port = conn.local_addr().port();
        let dialog = Dialog::new(sbc.sip_port, 5999, &format!("cline{n}"));
        let (_sock, rtp_port) = Media::bind();
        let inv = dialog.invite(via_port, rtp_port, &rawcall::test_key(3));
        conn.send(&with_connection(&inv, c));
        let r = conn.expect_response(488, "1 INVITE", std::time::Duration::from_secs(10));
        let warning = rawcall::header(&r, "Warning").unwrap_or_default();
        assert!(warning.contains(why), "c={c}: Warning {warning:?}\n{r}");
    }
}
