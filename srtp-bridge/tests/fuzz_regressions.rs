//! Inputs the fuzz targets (`fuzz/`) found crashing, replayed through the same harness
//! (`srtp_bridge::fuzzing`). Each input is also in the target's corpus, so `scripts/fuzz-replay`
//! runs it too.
// The test is the driver of the sans-IO core: it supplies the one `now` the core sees.
#![allow(clippy::disallowed_methods)]

use std::time::Instant;

use srtp_bridge::fuzzing::replay_carrier_datagrams;

/// An RTP header extension in the RFC 8285 two-byte form whose element claims 245 bytes of a
/// 169-byte remainder: webrtc-srtp's header parser panicked on it before authentication, so any
/// host able to reach a media port could kill the call's task. Now it is dropped as malformed.
#[test]
fn rfc8285_extension_overrun_is_dropped_not_a_panic() {
    let data = include_bytes!("data/rfc8285-overrun.bin");
    let stats = replay_carrier_datagrams(Instant::now(), data);
    assert_eq!(stats.rtp_in, 0);
    assert!(
        stats.carrier_malformed >= 1,
        "the overrunning packet is counted as malformed: {stats:?}"
    );
}
