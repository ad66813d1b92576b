//! SRTP cost per packet on the path sbc uses (`srtp_bridge::srtp`), both suites, against the
//! crypto floor: AES-128-CTR + HMAC-SHA1 with the key schedule and HMAC pads computed once
//! (RFC 3711 §4.1.1, §4.2), against `webrtc-srtp` used directly, and against libsrtp2 built
//! with OpenSSL (a C program, benches/c/libsrtp_bench.c, run as a child process so that no
//! unsafe FFI enters the workspace; it inherits our CPU pinning). Prints ns/packet and ratios
//! at the end.
//!
//! `cargo bench -p sbc-benches --bench srtp_bench` (libsrtp2+OpenSSL too after
//! `scripts/bench-libsrtp`; only the summary: `... --bench srtp_bench -- --summary`)

use std::collections::HashMap;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::Command;
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
use webrtc_srtp::context::Context;
use webrtc_srtp::protection_profile::ProtectionProfile;

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

/// `webrtc-srtp` used directly (what srtp-bridge wrapped before it had its own RTP transform).
fn webrtc_context(profile: ProtectionProfile) -> Context {
    let k = key();
    Context::new(k.key(), k.salt(), profile, None, None).expect("key lengths")
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

/// CPU time this thread has run, in ns (`/proc/thread-self/schedstat`, first field): unlike the
/// wall clock it does not count the time other processes hold our core, which on the shared
/// development machine is most of the noise. Wall time if the file is missing.
fn thread_cpu_ns(wall: Instant) -> u128 {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| wall.elapsed().as_nanos())
}

/// CPU ns per packet of `f` over about `budget` of wall time (checked every 256 packets).
fn ns_per(budget: Duration, mut f: impl FnMut(u64)) -> f64 {
    let t = Instant::now();
    let cpu0 = thread_cpu_ns(t);
    let mut n = 0u64;
    loop {
        for _ in 0..256 {
            f(n);
            n += 1;
        }
        if t.elapsed() >= budget {
            return (thread_cpu_ns(t) - cpu0) as f64 / n as f64;
        }
    }
}

/// Figures are medians over this many rounds; in each round every variant runs for
/// `ROUND_BUDGET`, one after the other, so all of them see the same share of a loaded machine.
const ROUNDS: usize = 9;
const ROUND_BUDGET: Duration = Duration::from_millis(40);

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Cost of one unprotect over a stream of fresh packets, contexts rebuilt when they run out.
fn unprotect_loop<C>(
    pkts: Vec<Vec<u8>>,
    new: impl Fn() -> C,
    unprotect: impl Fn(&mut C, &[u8]),
) -> impl FnMut(u64) {
    let mut rx = new();
    let mut k = 0usize;
    move |_| {
        if k == pkts.len() {
            rx = new();
            k = 0;
        }
        unprotect(&mut rx, &pkts[k]);
        k += 1;
    }
}

/// libsrtp2+OpenSSL figures of one run of `target/libsrtp/bin/libsrtp-bench` (built by
/// `scripts/bench-libsrtp`, or `$SBC_LIBSRTP_BENCH`): per suite, the SRTP packet for seq 1 and
/// (protect, unprotect) ns.
type LibsrtpFigures = HashMap<String, (Vec<u8>, f64, f64)>;

fn libsrtp_path() -> Option<PathBuf> {
    let path = std::env::var_os("SBC_LIBSRTP_BENCH").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/libsrtp/bin/libsrtp-bench"),
        Into::into,
    );
    path.exists().then_some(path)
}

fn libsrtp_run(path: &Path, budget: Duration) -> LibsrtpFigures {
    let out = Command::new(path)
        .arg(budget.as_millis().to_string())
        .output()
        .expect("run libsrtp-bench");
    assert!(out.status.success(), "{} failed: {out:?}", path.display());
    let mut figures = LibsrtpFigures::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let e = figures.entry(f[1].to_string()).or_default();
        match f.as_slice() {
            ["first", _, hex] => {
                e.0 = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                    .collect()
            }
            ["ns", _, "protect", v] => e.1 = v.parse().expect("ns"),
            ["ns", _, "unprotect", v] => e.2 = v.parse().expect("ns"),
            _ => panic!("libsrtp-bench printed {line:?}"),
        }
    }
    figures
}

type Variant = (String, Box<dyn FnMut(u64)>);

/// The Rust variants of one suite: floor, sbc protect/unprotect, webrtc-srtp protect/unprotect.
fn variants(name: &str, suite: &SrtpSuite, tag: usize) -> Vec<Variant> {
    let profile = if tag == 10 {
        ProtectionProfile::Aes128CmHmacSha1_80
    } else {
        ProtectionProfile::Aes128CmHmacSha1_32
    };
    let floor = Floor::new();
    let mut tx = OutboundContext::new(suite, &key()).expect("suite");
    let mut wtx = webrtc_context(profile);
    let pkts = protected(suite, 1 << 16);
    let s = suite.clone();
    vec![
        (
            format!("{name} floor"),
            Box::new(move |_| {
                let mut p = plain(1);
                floor.protect(&mut p, 0, tag);
                black_box(p);
            }),
        ),
        (
            format!("{name} sbc protect"),
            Box::new(move |i| {
                black_box(tx.protect_rtp(&plain(i as u16)).expect("protect"));
            }),
        ),
        (
            format!("{name} sbc unprotect"),
            Box::new(unprotect_loop(
                pkts.clone(),
                move || InboundContext::new(&s, &key()).expect("suite"),
                |rx, p| {
                    black_box(rx.unprotect_rtp(p).expect("authentic"));
                },
            )),
        ),
        (
            format!("{name} webrtc protect"),
            Box::new(move |i| {
                black_box(wtx.encrypt_rtp(&plain(i as u16)).expect("protect"));
            }),
        ),
        (
            format!("{name} webrtc unprotect"),
            Box::new(unprotect_loop(
                pkts,
                move || webrtc_context(profile),
                |rx, p| {
                    black_box(rx.decrypt_rtp(p).expect("authentic"));
                },
            )),
        ),
    ]
}

fn summary() {
    let mut all: Vec<Variant> = suites()
        .into_iter()
        .zip([10, 4])
        .flat_map(|((name, suite), tag)| variants(name, &suite, tag))
        .collect();
    let lib = libsrtp_path();
    let mut ns: HashMap<String, Vec<f64>> = HashMap::new();
    for _ in 0..ROUNDS {
        for (label, f) in &mut all {
            ns.entry(label.clone())
                .or_default()
                .push(ns_per(ROUND_BUDGET, &mut *f));
        }
        if let Some(path) = &lib {
            // libsrtp-bench splits its budget per figure in 5 runs and prints the median.
            for (suite, (first, pr, un)) in libsrtp_run(path, ROUND_BUDGET * 5) {
                let tx = &mut OutboundContext::new(
                    &suites()
                        .into_iter()
                        .find(|(n, _)| *n == suite)
                        .expect("suite")
                        .1,
                    &key(),
                )
                .expect("suite");
                let ours = tx.protect_rtp(&plain(1)).expect("protect");
                assert_eq!(
                    ours, first,
                    "libsrtp2 protects the same packet to other bytes"
                );
                ns.entry(format!("{suite} libsrtp protect"))
                    .or_default()
                    .push(pr);
                ns.entry(format!("{suite} libsrtp unprotect"))
                    .or_default()
                    .push(un);
            }
        }
    }
    let fig: HashMap<String, f64> = ns.into_iter().map(|(k, v)| (k, median(v))).collect();
    println!(
        "\nSRTP per 172-byte packet, thread CPU ns: median of {ROUNDS} interleaved rounds \
         (ratio to the crypto floor)"
    );
    for (name, _) in suites() {
        let fl = fig[&format!("{name} floor")];
        println!("  _{name}: crypto floor (AES-128-CTR + HMAC-SHA1, precomputed) {fl:5.0}");
        let row = |who: &str, label: &str| {
            let pr = fig[&format!("{name} {who} protect")];
            let un = fig[&format!("{name} {who} unprotect")];
            println!(
                "    {label:<20} protect {pr:5.0} ({:.2}x)  unprotect {un:5.0} ({:.2}x)",
                pr / fl,
                un / fl
            );
        };
        row("sbc", "sbc (srtp-bridge)");
        row("webrtc", "webrtc-srtp 0.17");
        if lib.is_some() {
            row("libsrtp", "libsrtp2+OpenSSL");
            println!(
                "    {:<20} protect {:.2}           unprotect {:.2}   (output byte-identical)",
                "sbc / libsrtp2",
                fig[&format!("{name} sbc protect")] / fig[&format!("{name} libsrtp protect")],
                fig[&format!("{name} sbc unprotect")] / fig[&format!("{name} libsrtp unprotect")],
            );
        } else {
            println!("    libsrtp2+OpenSSL     not built (scripts/bench-libsrtp builds it in target/libsrtp)");
        }
    }
}

fn main() {
    if !std::env::args().any(|a| a == "--summary") {
        let mut c = Criterion::default().configure_from_args();
        bench(&mut c);
        c.final_summary();
    }
    summary();
}
