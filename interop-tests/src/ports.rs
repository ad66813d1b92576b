//! Disjoint port blocks for tests running in parallel threads of one test binary.
//!
//! Block `b` (0..20) owns:
//! - 8 TCP/UDP ports at `21000 + 8b` (sbc SIP, sbc metrics, SIPp SIP ports);
//! - 400 UDP ports at `22000 + 400b`: sbc media `[+0, +199]`, SIPp RTP `[+200, +399]`.
//!
//! All below Linux's ephemeral range (32768-60999) and clear of configs/sbc.toml (20000-20999)
//! and the benches (sbc media 30000-39999, SIPp RTP 40000-49999); every port of a block is
//! bind-checked before use (the shared SIPp example's UAC RTP range 21000-21999 does overlap).

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

const BLOCKS: u32 = 20;
static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);

#[derive(Debug, Clone)]
pub struct Ports {
    pub block: u32,
    pub sip: u16,
    pub metrics: u16,
    /// SIPp's own SIP ports (one per SIPp run of the test, round robin).
    pub sipp: [u16; 6],
    pub media_min: u16,
    pub media_max: u16,
    pub sipp_rtp_min: u16,
    pub sipp_rtp_max: u16,
}

fn free(port: u16) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok() && UdpSocket::bind(("127.0.0.1", port)).is_ok()
}

impl Ports {
    pub fn allocate() -> Ports {
        // Start at a block derived from the pid so that two test binaries that happen to run at
        // the same time are unlikely to collide; the bind check catches the rest.
        let _ = NEXT.compare_exchange(
            u32::MAX,
            std::process::id() % BLOCKS,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        for _ in 0..BLOCKS {
            let block = NEXT.fetch_add(1, Ordering::SeqCst) % BLOCKS;
            let base = 21000 + 8 * block as u16;
            let media = 22000 + 400 * block as u16;
            let p = Ports {
                block,
                sip: base,
                metrics: base + 1,
                sipp: [base + 2, base + 3, base + 4, base + 5, base + 6, base + 7],
                media_min: media,
                media_max: media + 199,
                sipp_rtp_min: media + 200,
                sipp_rtp_max: media + 399,
            };
            if (base..base + 8).all(free)
                && (media..media + 400).all(|port| UdpSocket::bind(("127.0.0.1", port)).is_ok())
            {
                return p;
            }
        }
        panic!("no free port block (21000-21159 TCP/UDP, 22000-29999 UDP on 127.0.0.1)");
    }
}
