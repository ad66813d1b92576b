//! Carrier datagrams into a call's media core: RTP/RTCP demultiplexing, the replay window,
//! SRTP/SRTCP authentication, RTP parsing, DTMF. Never panics, never authenticates garbage.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use srtp_bridge::{Bridge, BridgeConfig, Codec, Component, Direction, LegParams, MasterKey, SrtpSuite, StreamInfo};

fuzz_target!(|data: &[u8]| {
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
        let component = if i % 2 == 0 { Component::Rtp } else { Component::Rtcp };
        b.handle_carrier_datagram(now, component, carrier, chunk);
    }
    b.handle_timeout(now + Duration::from_secs(6));
    while b.poll_datagram().is_some() {}
    while b.poll_agent_text().is_some() {}
    let stats = b.stats();
    // Random bytes cannot carry a valid HMAC-SHA1 tag under key 1.
    assert_eq!(stats.rtp_in, 0, "garbage authenticated");
});
