//! SDP from the network: parse, write back (must be byte-exact when parsing succeeded), answer.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rand::SeedableRng;

fuzz_target!(|data: &[u8]| {
    let Ok(offer) = sdp::SessionDescription::parse(data) else { return };
    assert_eq!(offer.to_string().as_bytes(), data, "writing back is exact");
    let policy = sdp::AnswerPolicy {
        suites: vec![sdp::SrtpSuite::AesCm128HmacSha1_80, sdp::SrtpSuite::AesCm128HmacSha1_32],
        codecs: vec![sdp::Codec::Pcmu, sdp::Codec::Pcma],
        address: "198.51.100.7".parse().expect("literal"),
        port: 20000,
        session_id: 1,
        session_version: 1,
        local_key: None,
        allow_loopback: true,
    };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    if let Ok(answer) = sdp::answer_offer(&offer, &policy, &mut rng) {
        let text = answer.sdp.to_string();
        assert!(sdp::SessionDescription::parse(text.as_bytes()).is_ok(), "our answer parses");
    }
});
