//! SDP cost per call: parse the Twilio secure-trunk offer (`sdp/tests/fixtures/twilio.sdp`),
//! answer it (RFC 3264, fresh SRTP key from a seeded ChaCha RNG) and write the answer back.
//! Prints ns per offer; the target is under 5 µs (no test asserts a time).
//!
//! `cargo bench -p sbc-benches --bench sdp_bench`

use std::hint::black_box;
use std::time::Instant;

use criterion::{criterion_group, criterion_main, Criterion};
use rand::SeedableRng;

const TWILIO: &str = include_str!("../../sdp/tests/fixtures/twilio.sdp");

fn policy() -> sdp::AnswerPolicy {
    sdp::AnswerPolicy {
        suites: vec![
            sdp::SrtpSuite::AesCm128HmacSha1_80,
            sdp::SrtpSuite::AesCm128HmacSha1_32,
        ],
        codecs: vec![sdp::Codec::Pcmu, sdp::Codec::Pcma],
        address: "198.51.100.7".parse().expect("literal address"),
        port: 20000,
        session_id: 1,
        session_version: 1,
        local_key: None,
        allow_loopback: true,
    }
}

/// Parse + answer + write, as the call task does for each INVITE.
fn offer_answer(policy: &sdp::AnswerPolicy, rng: &mut rand_chacha::ChaCha8Rng) -> String {
    let offer = sdp::SessionDescription::parse(black_box(TWILIO.as_bytes())).expect("offer");
    let answer = sdp::answer_offer(&offer, policy, rng).expect("answer");
    answer.sdp.to_string()
}

fn bench_sdp(c: &mut Criterion) {
    let policy = policy();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    let offer = sdp::SessionDescription::parse(TWILIO.as_bytes()).expect("offer");

    c.bench_function("sdp/parse Twilio offer", |b| {
        b.iter(|| sdp::SessionDescription::parse(black_box(TWILIO.as_bytes())).expect("offer"))
    });
    c.bench_function("sdp/answer Twilio offer", |b| {
        b.iter(|| sdp::answer_offer(black_box(&offer), &policy, &mut rng).expect("answer"))
    });
    c.bench_function("sdp/write Twilio offer", |b| {
        b.iter(|| black_box(&offer).to_string())
    });
    c.bench_function("sdp/parse+answer+write Twilio offer", |b| {
        b.iter(|| offer_answer(&policy, &mut rng))
    });

    // A plain figure for docs/performance.md: median of 5 runs of 20k offers.
    let mut runs: Vec<f64> = (0..5)
        .map(|_| {
            let n = 20_000u32;
            let t = Instant::now();
            for _ in 0..n {
                black_box(offer_answer(&policy, &mut rng));
            }
            t.elapsed().as_nanos() as f64 / f64::from(n)
        })
        .collect();
    runs.sort_by(f64::total_cmp);
    let ns = runs[2];
    println!(
        "\nSDP parse + answer + write (Twilio offer, {} bytes): {ns:.0} ns per offer \
         (target < 5000 ns: {:.2}x of target)",
        TWILIO.len(),
        ns / 5000.0
    );
}

criterion_group!(benches, bench_sdp);
criterion_main!(benches);
