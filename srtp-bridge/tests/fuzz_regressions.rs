//! Inputs the fuzz targets (`fuzz/`) found crashing, replayed through the public API. Each input
//! is also in the target's corpus, so `scripts/fuzz-replay` runs it too.
// The test is the driver of the sans-IO core: it supplies the one `now` the core sees.
#![allow(clippy::disallowed_methods)]

use std::time::{Duration, Instant};

use srtp_bridge::{
    Bridge, BridgeConfig, BridgeStats, Codec, Component, Direction, LegParams, MasterKey,
    SrtpSuite, StreamInfo,
};

/// Feeds `data` to a call's media core as the `srtp_unprotect` fuzz target does: 200-byte
/// datagrams, alternately on the RTP and the RTCP port.
fn replay_srtp_unprotect(data: &[u8]) -> BridgeStats {
    let now = Instant::now();
    let key = |b: u8| MasterKey::new(&[b; 16], &[b; 14]).expect("fixed lengths");
    let carrier = "192.0.2.10:4000".parse().expect("literal");
    let leg = LegParams {
        suite: SrtpSuite::AesCm128HmacSha1_80,
        remote_key: key(1),
        local_key: key(2),
        remote_rtp: carrier,
        remote_rtcp: carrier,
        rtcp_mux: data.first().is_some_and(|b| b & 1 == 1),
        codec: Codec::Pcmu,
        payload_type: 0,
        telephone_event: Some(101),
        direction: Direction::SendRecv,
    };
    let config = BridgeConfig {
        inactivity_timeout: Duration::from_secs(10),
        rtcp_interval: Duration::from_secs(5),
        ssrc: 0x1234_5678,
        mirror_caller_ssrc: false,
    };
    let mut b = Bridge::with_leg(now, leg, StreamInfo::default(), config);
    for (i, chunk) in data.chunks(200).enumerate() {
        let component = if i % 2 == 0 {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        b.handle_carrier_datagram(now, component, carrier, chunk);
    }
    b.handle_timeout(now + Duration::from_secs(6));
    b.stats()
}

/// An RTP header extension in the RFC 8285 two-byte form whose element claims 245 bytes of a
/// 169-byte remainder: webrtc-srtp's header parser panicked on it before authentication, so any
/// host able to reach a media port could kill the call's task. Now it is dropped as malformed.
#[test]
fn rfc8285_extension_overrun_is_dropped_not_a_panic() {
    let data = include_bytes!("data/rfc8285-overrun.bin");
    let stats = replay_srtp_unprotect(data);
    assert_eq!(stats.rtp_in, 0);
    assert!(
        stats.carrier_malformed >= 1,
        "the overrunning packet is counted as malformed: {stats:?}"
    );
}
