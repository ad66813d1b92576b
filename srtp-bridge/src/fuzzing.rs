//! Support for the fuzz targets (`fuzz/`) and their regression tests: one harness, so a crash
//! found by the fuzzer replays the same way in `cargo test`. Not part of the supported API.

use std::time::{Duration, Instant};

use crate::{
    Bridge, BridgeConfig, BridgeStats, Codec, Component, Direction, LegParams, MasterKey,
    SrtpSuite, StreamInfo,
};

/// Feeds `data` to one call's media core as the `srtp_unprotect` fuzz target does: 200-byte
/// datagrams, alternately on the RTP and the RTCP port, under fixed keys (remote `[1; 16]`),
/// then one RTCP report tick. Returns the counters; random bytes must never authenticate.
pub fn replay_carrier_datagrams(now: Instant, data: &[u8]) -> BridgeStats {
    // MasterKey::new only fails on wrong lengths; these are the suite's 16 and 14.
    let key = |b: u8| MasterKey::new(&[b; 16], &[b; 14]).expect("fixed lengths");
    let carrier = std::net::SocketAddr::from(([192, 0, 2, 10], 4000));
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
        relatch_packets: 5,
    };
    let Ok(mut b) = Bridge::with_leg(now, leg, StreamInfo::default(), config) else {
        return BridgeStats::default();
    };
    for (i, chunk) in data.chunks(200).enumerate() {
        let component = if i % 2 == 0 {
            Component::Rtp
        } else {
            Component::Rtcp
        };
        b.handle_carrier_datagram(now, component, carrier, chunk);
    }
    b.handle_timeout(now + Duration::from_secs(6));
    while b.poll_datagram().is_some() {}
    while b.poll_agent_text().is_some() {}
    b.stats()
}
