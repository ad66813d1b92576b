//! Offer/answer against real-world offers in `tests/fixtures/`, with golden answers in which the
//! random key is replaced by `<KEY>` and addresses are RFC 5737 documentation addresses.

use rand::SeedableRng;
use sdp::{answer_offer, AnswerPolicy, Codec, Direction, Refusal, SessionDescription, SrtpSuite};

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}

fn policy() -> AnswerPolicy {
    AnswerPolicy {
        suites: vec![
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ],
        codecs: vec![Codec::Pcmu, Codec::Pcma],
        address: "198.51.100.7".parse().unwrap(),
        port: 20000,
        session_id: 42,
        session_version: 1,
        local_key: None,
        allow_loopback: false,
    }
}

fn answer(name: &str, policy: &AnswerPolicy) -> Result<sdp::Answer, Refusal> {
    let offer = SessionDescription::parse(&fixture(name)).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    answer_offer(&offer, policy, &mut rng)
}

/// Replaces the base64 after `inline:` with `<KEY>`.
fn redact(sdp: &str) -> String {
    sdp.lines()
        .map(|l| match l.split_once("inline:") {
            Some((head, _)) => format!("{head}inline:<KEY>\r\n"),
            None => format!("{l}\r\n"),
        })
        .collect()
}

fn golden(name: &str) -> String {
    String::from_utf8(fixture(name)).unwrap()
}

#[test]
fn every_fixture_round_trips_exactly() {
    let dir = format!("{}/tests/fixtures", env!("CARGO_MANIFEST_DIR"));
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("sdp") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let sd =
            SessionDescription::parse(&bytes).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(sd.to_string().as_bytes(), &bytes[..], "{}", path.display());
    }
}

#[test]
fn twilio_offer_golden_answer() {
    let a = answer("twilio.sdp", &policy()).unwrap();
    assert_eq!(redact(&a.sdp.to_string()), golden("twilio.answer"));
    let n = &a.negotiated;
    assert_eq!(n.remote_rtp, "192.0.2.10:12162".parse().unwrap());
    assert_eq!(n.remote_rtcp, "192.0.2.10:12163".parse().unwrap());
    assert_eq!(
        (n.codec, n.payload_type, n.telephone_event),
        (Codec::Pcmu, 0, Some(101))
    );
    assert_eq!(n.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert_eq!(n.crypto_tag, 1);
    assert_eq!(n.remote_key.key().len(), 16);
    assert_ne!(n.local_key, n.remote_key);
    assert_eq!(n.offered_suites, vec!["AES_CM_128_HMAC_SHA1_80"]);
    // The answer's key is the one returned for the media layer.
    let text = a.sdp.to_string();
    assert!(text.contains(&format!("inline:{}", n.local_key.to_base64())));
}

#[test]
fn freeswitch_skips_mki_lines_and_takes_the_usable_one() {
    let a = answer("freeswitch.sdp", &policy()).unwrap();
    assert_eq!(a.negotiated.suite, SrtpSuite::AesCm128HmacSha1_32);
    assert_eq!(a.negotiated.crypto_tag, 3);
    assert_eq!(
        a.negotiated.remote_rtcp,
        "192.0.2.20:24681".parse().unwrap()
    );
    // PCMU is our first choice even though the offer lists PCMA first.
    assert_eq!(a.negotiated.payload_type, 0);
    assert_eq!(redact(&a.sdp.to_string()), golden("freeswitch.answer"));
}

#[test]
fn asterisk_and_sipp_offers_are_accepted() {
    let a = answer("asterisk.sdp", &policy()).unwrap();
    assert_eq!(a.negotiated.telephone_event, Some(101));
    assert!(matches!(
        answer("sipp.sdp", &policy()),
        Err(Refusal::BadAddress(_))
    ));
    let mut p = policy();
    p.allow_loopback = true;
    let s = answer("sipp.sdp", &p).unwrap();
    assert_eq!(s.negotiated.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert_eq!(s.negotiated.crypto_tag, 1);
    assert_eq!(s.negotiated.remote_rtp, "127.0.0.1:21000".parse().unwrap());
    assert_eq!(s.negotiated.direction, Direction::SendRecv);
}

#[test]
fn telnyx_two_lines_policy_order_wins_and_rtcp_mux_is_echoed() {
    let a = answer("telnyx.sdp", &policy()).unwrap();
    assert_eq!(a.negotiated.suite, SrtpSuite::AesCm128HmacSha1_80);
    assert_eq!(a.negotiated.crypto_tag, 2);
    assert!(a.negotiated.rtcp_mux);
    assert_eq!(a.negotiated.remote_rtcp, a.negotiated.remote_rtp);
    assert!(a.sdp.to_string().contains("a=rtcp-mux\r\n"));
    let mut p = policy();
    p.suites.reverse();
    assert_eq!(answer("telnyx.sdp", &p).unwrap().negotiated.crypto_tag, 1);
}

#[test]
fn refusals_say_why() {
    assert_eq!(
        answer("plain_avp.sdp", &policy()).unwrap_err(),
        Refusal::PlainRtp
    );
    let e = answer("aead_only.sdp", &policy()).unwrap_err();
    assert_eq!(
        e,
        Refusal::NoAesCmSuite {
            offered: "AEAD_AES_256_GCM, F8_128_HMAC_SHA1_80".into()
        }
    );
    assert!(!e.to_string().contains('"'));
    // RFC 4568's example: AES-CM with MKI only (and F8) -> no usable line, naming the rule.
    match answer("rfc4568.sdp", &policy()).unwrap_err() {
        Refusal::NoUsableCrypto { reason } => assert!(reason.contains("MKI"), "{reason}"),
        other => panic!("{other:?}"),
    }
    let mut p = policy();
    p.codecs = vec![Codec::Pcma];
    assert_eq!(answer("sipp.sdp", &p).unwrap_err(), Refusal::NoCommonCodec);
    let no_audio = b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5000 RTP/SAVP 96\r\n";
    let offer = SessionDescription::parse(no_audio).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    assert_eq!(
        answer_offer(&offer, &policy(), &mut rng).unwrap_err(),
        Refusal::NoAudio
    );
}

#[test]
fn hold_direction_is_mirrored_and_extra_lines_rejected_in_order() {
    let text = "v=0\r\no=- 1 2 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=video 5000 RTP/AVP 96\r\nm=audio 6000 RTP/SAVP 0\r\na=sendonly\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw\r\nm=audio 7000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkw\r\n";
    let offer = SessionDescription::parse(text.as_bytes()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let a = answer_offer(&offer, &policy(), &mut rng).unwrap();
    assert_eq!(a.negotiated.direction, Direction::RecvOnly);
    let out = a.sdp.to_string();
    let mlines: Vec<&str> = out.lines().filter(|l| l.starts_with("m=")).collect();
    assert_eq!(
        mlines,
        vec![
            "m=video 0 RTP/AVP 96",
            "m=audio 20000 RTP/SAVP 0",
            "m=audio 0 RTP/SAVP 0"
        ]
    );
    assert!(out.contains("a=recvonly\r\n"));
}

#[test]
fn reinvite_reuses_our_key() {
    let first = answer("twilio.sdp", &policy()).unwrap();
    let mut p = policy();
    p.local_key = Some((
        first.negotiated.suite.clone(),
        first.negotiated.local_key.clone(),
    ));
    p.session_version = 2;
    let offer = SessionDescription::parse(&fixture("twilio.sdp")).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(99);
    let second = answer_offer(&offer, &p, &mut rng).unwrap();
    assert_eq!(second.negotiated.local_key, first.negotiated.local_key);
    assert!(second.sdp.to_string().contains("o=- 42 2 IN IP4"));
}

#[test]
fn answers_parse_back() {
    for f in [
        "twilio.sdp",
        "freeswitch.sdp",
        "asterisk.sdp",
        "telnyx.sdp",
        "sipp.sdp",
    ] {
        let mut p = policy();
        p.allow_loopback = f == "sipp.sdp";
        let a = answer(f, &p).unwrap();
        let text = a.sdp.to_string();
        let again = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(again.to_string(), text);
    }
}

const OFFER_HEAD: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n";
const KEY_A: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";

fn answer_text(text: &str, p: &AnswerPolicy) -> Result<sdp::Answer, Refusal> {
    use std::sync::atomic::{AtomicU64, Ordering};
    // A different RNG stream for each answer, as in the daemon (one RNG per call).
    static SEED: AtomicU64 = AtomicU64::new(3);
    let offer = SessionDescription::parse(text.as_bytes()).unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(SEED.fetch_add(1, Ordering::Relaxed));
    answer_offer(&offer, p, &mut rng)
}

/// Issue 13: `_80` and `_32` both have 16-byte keys; a re-INVITE that changes the suite gets a
/// fresh local key (the new context's ROC and SRTCP index start over), the same suite keeps it.
#[test]
fn suite_change_on_reinvite_draws_a_fresh_key() {
    let first = answer_text(
        &format!("{OFFER_HEAD}a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}\r\n"),
        &policy(),
    )
    .unwrap();
    let mut p = policy();
    p.local_key = Some((
        first.negotiated.suite.clone(),
        first.negotiated.local_key.clone(),
    ));
    let second = answer_text(
        &format!("{OFFER_HEAD}a=crypto:1 AES_CM_128_HMAC_SHA1_32 inline:{KEY_A}\r\n"),
        &p,
    )
    .unwrap();
    assert_eq!(second.negotiated.suite, SrtpSuite::AesCm128HmacSha1_32);
    assert_ne!(second.negotiated.local_key, first.negotiated.local_key);
    let same = answer_text(
        &format!("{OFFER_HEAD}a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}\r\n"),
        &p,
    )
    .unwrap();
    assert_eq!(same.negotiated.local_key, first.negotiated.local_key);
}

/// `c=` (and `a=rtcp`) addresses sbc must not send to are refused with a reason (488 Warning).
#[test]
fn unusable_connection_addresses_are_refused() {
    let crypto = format!("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}\r\n");
    let with_c = |c: &str, extra: &str| {
        format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc={c}\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n{crypto}{extra}")
    };
    for c in [
        "IN IP4 0.0.0.0",
        "IN IP6 ::",
        "IN IP4 224.2.1.1/127",
        "IN IP4 239.255.255.250",
        "IN IP6 ff02::1",
        "IN IP4 255.255.255.255",
        "IN IP4 127.0.0.1",
        "IN IP6 ::1",
        "IN IP6 ::ffff:127.0.0.1",
        "IN IP4 ::1",
        "IN IP6 192.0.2.1",
        "IN IP4 2001:db8::1",
    ] {
        let r = answer_text(&with_c(c, ""), &policy());
        assert!(matches!(r, Err(Refusal::BadAddress(_))), "{c}: {r:?}");
    }
    let r = answer_text(
        &with_c("IN IP4 192.0.2.1", "a=rtcp:4001 IN IP4 0.0.0.0\r\n"),
        &policy(),
    );
    assert!(matches!(r, Err(Refusal::BadAddress(_))), "{r:?}");
    let mut p = policy();
    p.allow_loopback = true;
    assert!(answer_text(&with_c("IN IP4 127.0.0.1", ""), &p).is_ok());
    assert!(answer_text(&with_c("IN IP6 ::1", ""), &p).is_ok());
    assert!(answer_text(&with_c("IN IP4 0.0.0.0", ""), &p).is_err());
    assert!(answer_text(&with_c("IN IP6 2001:db8::1", ""), &policy()).is_ok());
}

/// A crypto line with any invalid part (RFC 4568 grammar) is ignored as if absent: the valid
/// line after it is chosen, and with none left the answer is a refusal (488).
#[test]
fn invalid_crypto_lines_are_ignored() {
    let bad = format!(
        "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|\r\n\
         a=crypto:1234567890 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}\r\n\
         a=crypto:3 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|2^20|1:4|junk\r\n\
         a=crypto:4 AES_CM_128_HMAC_SHA1_80 inline:{KEY_A}|1:4|2^20\r\n"
    );
    let a = answer_text(
        &format!("{OFFER_HEAD}{bad}a=crypto:5 AES_CM_128_HMAC_SHA1_32 inline:{KEY_A}\r\n"),
        &policy(),
    )
    .unwrap();
    assert_eq!(a.negotiated.crypto_tag, 5);
    assert_eq!(a.negotiated.suite, SrtpSuite::AesCm128HmacSha1_32);
    let r = answer_text(&format!("{OFFER_HEAD}{bad}"), &policy()).unwrap_err();
    assert!(
        matches!(
            r,
            Refusal::NoAesCmSuite { .. } | Refusal::NoUsableCrypto { .. }
        ),
        "{r:?}"
    );
}
