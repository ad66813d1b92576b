//! Text frames from the agent WebSocket into a call's media core: JSON, base64, marks, clear,
//! DTMF, then pacing. Never panics; malformed input is only counted.
#![no_main]

use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use srtp_bridge::{Bridge, BridgeConfig, Codec, Direction, LegParams, MasterKey, SrtpSuite, StreamInfo};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let now = Instant::now();
    let key = |b: u8| MasterKey::new(&[b; 16], &[b; 14]).expect("fixed lengths");
    let carrier = "192.0.2.10:4000".parse().expect("literal");
    let leg = LegParams {
        suite: SrtpSuite::AesCm128HmacSha1_32,
        remote_key: key(1),
        local_key: key(2),
        remote_rtp: carrier,
        remote_rtcp: carrier,
        rtcp_mux: true,
        codec: Codec::Pcma,
        payload_type: 8,
        telephone_event: Some(101),
        direction: Direction::SendRecv,
    };
    let config = BridgeConfig {
        inactivity_timeout: Duration::from_secs(10),
        rtcp_interval: Duration::from_secs(5),
        ssrc: 7,
        mirror_caller_ssrc: false,
        relatch_packets: 5,
    };
    let Ok(mut b) = Bridge::with_leg(now, leg, StreamInfo::default(), config) else {
        return;
    };
    for line in text.split('\n') {
        b.handle_agent_text(now, line);
    }
    for ms in (0..400).step_by(20) {
        b.handle_timeout(now + Duration::from_millis(ms));
        while b.poll_datagram().is_some() {}
    }
    let _ = srtp_bridge::echo_agent_reply(text);
    while b.poll_agent_text().is_some() {}
});
