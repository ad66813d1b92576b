//! SRTP cost per packet on the path sbc uses (`srtp_bridge::srtp` over `webrtc-srtp`), both
//! suites, against the crypto floor: AES-128-CTR + HMAC-SHA1 with the key schedule and HMAC
//! pads computed once (RFC 3711 §4.1.1, §4.2). Prints ns/packet and ratios at the end.
//!
//! `cargo bench -p sbc-benches --bench srtp_bench`

use std::hint::black_box;
use std::time::{Duration, Instant};

use aes::cipher::KeyInit;
use aes::Aes128;
use criterion::{BenchmarkId, Criterion, Throughput};
use ctr::cipher::{InnerIvInit, StreamCipher};
use hmac::{Hmac, Mac};
use sdp::SrtpSuite;
use srtp_bridge::rtp::write_rtp;
use srtp_bridge::srtp::{InboundContext, OutboundContext};
use srtp_bridge::MasterKey;

const PAYLOAD: usize = 160; // 20 ms of G.711: a 172-byte RTP packet

fn key() -> MasterKey {
    MasterKey::new(&[0x42; 16], &[0x24; 14]).expect("fixed lengths")
}

fn suites() -> [(&'static str, SrtpSuite); 2] {
    [
        ("80", SrtpSuite::AesCm128HmacSha1_80),
        ("32", SrtpSuite::AesCm128HmacSha1_32),
    ]
}

fn plain(seq: u16) -> Vec<u8> {
    write_rtp(
        false,
        0,
        seq,
        u32::from(seq) * 160,
        0x1234_5678,
        &[0x55; PAYLOAD],
    )
}

/// `n` protected packets in sequence order (a fresh packet per unprotect: the replay window
/// refuses repeats).
fn protected(suite: &SrtpSuite, n: u64) -> Vec<Vec<u8>> {
    let mut tx = OutboundContext::new(suite, &key()).expect("suite in table");
    (0..n)
        .map(|i| tx.protect_rtp(&plain(i as u16)).expect("protect"))
        .collect()
}

/// The floor: precomputed AES key schedule and HMAC state, one 172-byte packet.
struct Floor {
    aes: Aes128,
    mac: Hmac<sha1::Sha1>,
    salt: [u8; 14],
}

impl Floor {
    fn new() -> Self {
        Self {
            aes: Aes128::new(&[7u8; 16].into()),
            mac: <Hmac<sha1::Sha1> as Mac>::new_from_slice(&[9u8; 20]).expect("any key length"),
            salt: [3; 14],
        }
    }

    fn protect(&self, packet: &mut Vec<u8>, roc: u32, tag_len: usize) {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for j in 0..4 {
            iv[4 + j] ^= packet[8 + j];
        }
        iv[12] ^= packet[2];
        iv[13] ^= packet[3];
        iv[8..12]
            .iter_mut()
            .zip(roc.to_be_bytes())
            .for_each(|(a, b)| *a ^= b);
        let core = ctr::CtrCore::<Aes128, ctr::flavors::Ctr128BE>::inner_iv_init(
            self.aes.clone(),
            &iv.into(),
        );
        let mut c = ctr::Ctr128BE::<Aes128>::from_core(core);
        c.apply_keystream(&mut packet[12..]);
        let mut mac = self.mac.clone();
        mac.update(packet);
        mac.update(&roc.to_be_bytes());
        let tag = mac.finalize().into_bytes();
        packet.extend_from_slice(&tag[..tag_len]);
    }
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("srtp_172B");
    g.throughput(Throughput::Elements(1));
    for (name, suite) in suites() {
        g.bench_function(BenchmarkId::new("protect", name), |b| {
            let mut tx = OutboundContext::new(&suite, &key()).expect("suite");
            let mut seq = 0u16;
            b.iter(|| {
                seq = seq.wrapping_add(1);
                black_box(tx.protect_rtp(black_box(&plain(seq))).expect("protect"))
            })
        });
        g.bench_function(BenchmarkId::new("unprotect", name), |b| {
            b.iter_custom(|iters| {
                let pkts = protected(&suite, iters);
                let mut rx = InboundContext::new(&suite, &key()).expect("suite");
                let t = Instant::now();
                for p in &pkts {
                    black_box(rx.unprotect_rtp(black_box(p)).expect("authentic"));
                }
                t.elapsed()
            })
        });
    }
    let floor = Floor::new();
    for (name, tag) in [("80", 10), ("32", 4)] {
        g.bench_function(BenchmarkId::new("floor_aes_ctr_hmac_sha1", name), |b| {
            b.iter(|| {
                let mut p = plain(1);
                floor.protect(&mut p, 0, tag);
                black_box(p)
            })
        });
    }
    g.finish();
}

/// ns per packet of `f` over about `budget`.
fn ns_per(budget: Duration, mut f: impl FnMut(u64)) -> f64 {
    let mut n = 1000u64;
    loop {
        let t = Instant::now();
        for i in 0..n {
            f(i);
        }
        let e = t.elapsed();
        if e >= budget {
            return e.as_nanos() as f64 / n as f64;
        }
        n *= 4;
    }
}

fn summary() {
    let budget = Duration::from_millis(300);
    let floor = Floor::new();
    println!("\nSRTP per 172-byte packet (ns), ratio to the crypto floor:");
    for ((name, suite), tag) in suites().into_iter().zip([10, 4]) {
        let fl = ns_per(budget, |_| {
            let mut p = plain(1);
            floor.protect(&mut p, 0, tag);
            black_box(p);
        });
        let mut tx = OutboundContext::new(&suite, &key()).expect("suite");
        let pr = ns_per(budget, |i| {
            black_box(tx.protect_rtp(&plain(i as u16)).expect("protect"));
        });
        let pkts = protected(&suite, 1 << 20);
        let mut rx = InboundContext::new(&suite, &key()).expect("suite");
        let mut k = 0usize;
        let un = ns_per(budget, |_| {
            if k == pkts.len() {
                rx = InboundContext::new(&suite, &key()).expect("suite");
                k = 0;
            }
            black_box(rx.unprotect_rtp(&pkts[k]).expect("authentic"));
            k += 1;
        });
        println!(
            "  _{name}: floor {fl:6.0}  protect {pr:6.0} ({:.2}x)  unprotect {un:6.0} ({:.2}x)",
            pr / fl,
            un / fl
        );
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
    summary();
}
