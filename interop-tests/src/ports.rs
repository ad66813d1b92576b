//! Disjoint port blocks for tests running in parallel threads of one test binary.
//!
//! Block `b` owns:
//! - 8 TCP/UDP ports at `40000 + 8b` (sbc SIP, sbc metrics, SIPp SIP ports);
//! - 400 UDP ports at `42000 + 400b`: sbc media `[+0, +199]`, SIPp RTP `[+200, +399]`.

use std::net::{TcpListener, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};

const BLOCKS: u32 = 30;
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
            let base = 40000 + 8 * block as u16;
            let media = 42000 + 400 * block as u16;
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
            if free(p.sip) && free(p.metrics) && free(media) && free(media + 200) {
                return p;
            }
        }
        panic!("no free port block (40000-40240, 42000-54000 on 127.0.0.1)");
    }
}
