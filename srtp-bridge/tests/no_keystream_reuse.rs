//! Issue 13: no keystream reuse, ever. `_80` and `_32` both have 16-byte keys; a re-INVITE that
//! changed the suite used to keep our master key while the bridge built a fresh outbound
//! context, so the rollover counter went back to 0 and the SRTCP index restarted while the SSRC
//! and sequence numbers carried on: after 65,536 packets, (key, SSRC, index) repeated.
//!
//! The whole path as the daemon runs it, on a virtual clock: offer/answer (`sdp::answer_offer`,
//! with the key in force passed back on the re-INVITE as `sbc` does), then the sans-IO bridge.
//! What is checked comes from the wire, not from the implementation: for SRTP the AES-CM
//! keystream itself (ciphertext XOR the known agent audio; the same key, SSRC and index give
//! the same keystream whatever the tag length), for SRTCP the (SSRC, SRTCP index) in the clear
//! trailer (RFC 3711 §3.4), each per master key.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use base64::Engine;
use rand::SeedableRng;
use sdp::{answer_offer, AnswerPolicy, Codec, KeySalt, SessionDescription, SrtpSuite};
use srtp_bridge::{Bridge, BridgeConfig, MediaParams, StreamInfo};

const OFFER: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\na=rtcp-mux\r\n";
const CARRIER_KEY: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
/// Agent audio: every byte 0x55 (mu-law passes through the bridge unchanged).
const AUDIO: u8 = 0x55;

fn offer(suite: &str) -> SessionDescription {
    SessionDescription::parse(
        format!("{OFFER}a=crypto:1 {suite} inline:{CARRIER_KEY}\r\n").as_bytes(),
    )
    .unwrap()
}

fn policy(local_key: Option<(SrtpSuite, KeySalt)>) -> AnswerPolicy {
    AnswerPolicy {
        suites: SrtpSuite::supported().collect(),
        codecs: vec![Codec::Pcmu],
        address: "198.51.100.7".parse().unwrap(),
        port: 20000,
        session_id: 1,
        session_version: 1,
        local_key,
        allow_loopback: false,
    }
}

fn params(n: &sdp::Negotiated) -> MediaParams {
    MediaParams {
        suite: n.suite.clone(),
        remote_key: n.remote_key.clone(),
        local_key: n.local_key.clone(),
        remote_rtp: n.remote_rtp,
        remote_rtcp: n.remote_rtcp,
        rtcp_mux: n.rtcp_mux,
        codec: n.codec,
        payload_type: n.payload_type,
        telephone_event: n.telephone_event,
        direction: n.direction,
    }
}

/// What has been sent under each master key.
#[derive(Default)]
struct Wire {
    /// Distinct master keys in use, in order (a key is identified by its position).
    keys: Vec<KeySalt>,
    srtp: HashSet<(usize, [u8; 16])>,
    srtcp: HashSet<(usize, u32, u32)>,
    srtp_packets: u64,
    reused: Vec<String>,
}

impl Wire {
    fn key_id(&mut self, k: &KeySalt) -> usize {
        match self.keys.iter().position(|x| x == k) {
            Some(i) => i,
            None => {
                self.keys.push(k.clone());
                self.keys.len() - 1
            }
        }
    }

    fn drain(&mut self, b: &mut Bridge, key: usize) {
        while let Some(d) = b.poll_datagram() {
            let p = &d.data;
            if (200..=204).contains(&p[1]) {
                // SRTCP: header, sender SSRC, ..., E||index (4 bytes), 80-bit tag.
                let ssrc = u32::from_be_bytes(p[4..8].try_into().unwrap());
                let t = p.len() - 14;
                let index = u32::from_be_bytes(p[t..t + 4].try_into().unwrap()) & 0x7fff_ffff;
                if !self.srtcp.insert((key, ssrc, index)) {
                    self.reused
                        .push(format!("SRTCP key {key} ssrc {ssrc:#x} index {index}"));
                }
            } else {
                assert_eq!(p[0], 0x80, "plain 12-byte RTP header");
                let mut ks = [0u8; 16];
                for (i, b) in ks.iter_mut().enumerate() {
                    *b = p[12 + i] ^ AUDIO;
                }
                self.srtp_packets += 1;
                if !self.srtp.insert((key, ks)) {
                    let seq = u16::from_be_bytes([p[2], p[3]]);
                    self.reused.push(format!(
                        "SRTP keystream repeated: key {key} seq {seq} after {} packets",
                        self.srtp_packets
                    ));
                }
            }
        }
    }
}

fn agent_second() -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode([AUDIO; 8000]);
    format!(r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{b64}"}}}}"#)
}

/// Runs the bridge for `packets` 20 ms ticks of continuous agent audio.
fn run(b: &mut Bridge, wire: &mut Wire, key: usize, now: &mut Instant, packets: u64) {
    let second = agent_second();
    for i in 0..packets {
        if i % 50 == 0 {
            b.handle_agent_text(*now, &second);
        }
        b.handle_timeout(*now);
        wire.drain(b, key);
        *now += Duration::from_millis(20);
    }
}

#[test]
fn a_suite_changing_reinvite_after_70000_packets_never_reuses_a_keystream() {
    #[allow(clippy::disallowed_methods)] // the test's epoch; the bridge never reads the clock
    let mut now = Instant::now();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(13);
    let first = answer_offer(&offer("AES_CM_128_HMAC_SHA1_80"), &policy(None), &mut rng).unwrap();
    let mut b = Bridge::new(
        now,
        params(&first.negotiated),
        StreamInfo {
            stream_sid: "MZ1".into(),
            ..Default::default()
        },
        BridgeConfig {
            inactivity_timeout: Duration::from_secs(24 * 3600),
            rtcp_interval: Duration::from_secs(5),
            ssrc: 0x5bc0_0001,
            mirror_caller_ssrc: false,
            relatch_packets: 5,
        },
    )
    .unwrap();
    while b.poll_agent_text().is_some() {}
    let mut wire = Wire::default();
    let k1 = wire.key_id(&first.negotiated.local_key);
    run(&mut b, &mut wire, k1, &mut now, 70_000);
    assert!(wire.srtp_packets >= 69_990, "{}", wire.srtp_packets);

    // The re-INVITE changes the suite; the key in force goes back into the policy, as in sbc.
    let second = answer_offer(
        &offer("AES_CM_128_HMAC_SHA1_32"),
        &policy(Some((
            first.negotiated.suite.clone(),
            first.negotiated.local_key.clone(),
        ))),
        &mut rng,
    )
    .unwrap();
    assert_eq!(second.negotiated.suite, SrtpSuite::AesCm128HmacSha1_32);
    b.update_params(now, params(&second.negotiated))
        .expect("the re-INVITE is accepted");
    let k2 = wire.key_id(&second.negotiated.local_key);
    run(&mut b, &mut wire, k2, &mut now, 6_000);
    b.stop(now);
    wire.drain(&mut b, k2);
    assert!(
        wire.reused.is_empty(),
        "{} reuses, first: {:?}",
        wire.reused.len(),
        &wire.reused[..wire.reused.len().min(3)]
    );
    assert!(wire.srtcp.len() > 250, "SRTCP reports were checked too");
}
