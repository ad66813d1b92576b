//! Carrier datagrams into a call's media core: RTP/RTCP demultiplexing, the replay window,
//! SRTP/SRTCP authentication, RTP parsing, DTMF. Never panics, never authenticates garbage.
//! The harness is `srtp_bridge::fuzzing`, shared with the regression tests in
//! `srtp-bridge/tests/fuzz_regressions.rs`.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use srtp_bridge::fuzzing::replay_carrier_datagrams;

fuzz_target!(|data: &[u8]| {
    let stats = replay_carrier_datagrams(Instant::now(), data);
    // Random bytes cannot carry a valid HMAC-SHA1 tag under key 1.
    assert_eq!(stats.rtp_in, 0, "garbage authenticated");
});
