//! Agent frames: 20 ms of mu-law to a Twilio Media Streams `media` message (base64 JSON) and an
//! agent `media` message back to audio, through srtp-bridge's agent module. Prints ns per frame.
//!
//! `cargo bench -p sbc-benches --bench agent_bench`

use std::hint::black_box;
use std::time::Instant;

use criterion::Criterion;
use srtp_bridge::agent::{parse_agent_message, AgentMessage, AgentWriter};

fn main() {
    let audio: Vec<u8> = (0..160u32).map(|i| (i * 37 % 256) as u8).collect();
    let mut writer = AgentWriter::new("MZ00000000000000000000000000000000");
    let inbound = writer.media(20, &audio);
    let agent_text = inbound.clone();
    let mut c = Criterion::default().configure_from_args();
    let mut to_json = || {
        black_box(writer.media(black_box(40), black_box(&audio)));
    };
    let mut from_json = || {
        let Ok(AgentMessage::Media(a)) = parse_agent_message(black_box(&agent_text)) else {
            panic!("media expected")
        };
        black_box(a);
    };
    c.bench_function("agent/mu-law 160 B -> media JSON", |b| b.iter(&mut to_json));
    c.bench_function("agent/media JSON -> mu-law 160 B", |b| {
        b.iter(&mut from_json)
    });
    c.final_summary();
    let time = |f: &mut dyn FnMut()| {
        let mut v: Vec<f64> = (0..5)
            .map(|_| {
                let t = Instant::now();
                for _ in 0..50_000 {
                    f();
                }
                t.elapsed().as_nanos() as f64 / 50_000.0
            })
            .collect();
        v.sort_by(f64::total_cmp);
        v[2]
    };
    let a = time(&mut to_json);
    let b = time(&mut from_json);
    println!("\nagent frames (ns, median of 5x50k): to JSON {a:.0} ns, from JSON {b:.0} ns; {} bytes per message", inbound.len());
}
