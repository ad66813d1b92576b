//! RTCP reports (RFC 3550 §6.4) and the receiver statistics behind them (RFC 3550 Appendix A).
//!
//! This crate has no wall clock: the NTP timestamp of our sender reports counts from the start of
//! the bridge. Peers use it only through LSR/DLSR for round-trip time (RFC 3550 §6.4.1), which
//! needs consistency, not the date.

use std::time::{Duration, Instant};

/// Receive statistics of the carrier's RTP stream.
#[derive(Debug, Clone, Default)]
pub struct ReceiverStats {
    ssrc: u32,
    started: bool,
    base_ext: u64,
    max_ext: u64,
    received: u64,
    expected_prior: u64,
    received_prior: u64,
    /// Interarrival jitter times 16 (RFC 3550 A.8).
    jitter16: i64,
    last_transit: Option<i64>,
    /// Middle 32 bits of the NTP timestamp of the last SR and when it arrived.
    last_sr: Option<(u32, Instant)>,
}

impl ReceiverStats {
    /// Records one authenticated RTP packet; `arrival` is the arrival time in RTP units
    /// (8 kHz) since the bridge started.
    pub fn on_rtp(&mut self, ssrc: u32, seq: u16, rtp_ts: u32, arrival: u32) {
        if !self.started || ssrc != self.ssrc {
            *self = Self {
                ssrc,
                started: true,
                base_ext: u64::from(seq),
                max_ext: u64::from(seq),
                ..Self::default()
            };
        } else {
            let delta = i64::from(seq.wrapping_sub(self.max_ext as u16) as i16);
            let ext = (self.max_ext as i64 + delta).max(0) as u64;
            self.max_ext = self.max_ext.max(ext);
        }
        self.received += 1;
        // RFC 3550 A.8: J += (|D| - J) / 16.
        let transit = i64::from(arrival.wrapping_sub(rtp_ts) as i32);
        if let Some(last) = self.last_transit {
            let d = (transit - last).abs();
            self.jitter16 += d - ((self.jitter16 + 8) >> 4);
        }
        self.last_transit = Some(transit);
    }

    /// Records an SR from the peer (for LSR/DLSR in our next report).
    pub fn on_sender_report(&mut self, ntp_middle: u32, now: Instant) {
        self.last_sr = Some((ntp_middle, now));
    }

    /// A report block for our next SR/RR (RFC 3550 §6.4.1), `None` before any RTP arrived.
    pub fn report_block(&mut self, now: Instant) -> Option<[u8; 24]> {
        if !self.started {
            return None;
        }
        let expected = self.max_ext - self.base_ext + 1;
        let lost = expected as i64 - self.received as i64;
        let expected_interval = expected - self.expected_prior;
        let received_interval = self.received - self.received_prior;
        self.expected_prior = expected;
        self.received_prior = self.received;
        let lost_interval = expected_interval as i64 - received_interval as i64;
        let fraction = if expected_interval == 0 || lost_interval <= 0 {
            0
        } else {
            ((lost_interval << 8) / expected_interval as i64).min(255) as u8
        };
        let cumulative = lost.clamp(-0x80_0000, 0x7f_ffff) as i32 as u32 & 0x00ff_ffff;
        let (lsr, dlsr) = match self.last_sr {
            Some((lsr, at)) => (lsr, to_ntp_short(now.saturating_duration_since(at))),
            None => (0, 0),
        };
        let mut b = [0u8; 24];
        b[0..4].copy_from_slice(&self.ssrc.to_be_bytes());
        b[4..8].copy_from_slice(&((u32::from(fraction) << 24) | cumulative).to_be_bytes());
        b[8..12].copy_from_slice(&(self.max_ext as u32).to_be_bytes());
        b[12..16].copy_from_slice(&((self.jitter16 >> 4) as u32).to_be_bytes());
        b[16..20].copy_from_slice(&lsr.to_be_bytes());
        b[20..24].copy_from_slice(&dlsr.to_be_bytes());
        Some(b)
    }
}

/// A duration in 1/65536 s (the "NTP short" unit of LSR/DLSR).
fn to_ntp_short(d: Duration) -> u32 {
    ((d.as_micros() << 16) / 1_000_000).min(u128::from(u32::MAX)) as u32
}

/// 64-bit NTP format of a duration (seconds . fraction).
pub fn to_ntp(d: Duration) -> u64 {
    (d.as_secs() << 32) | ((u64::from(d.subsec_nanos()) << 32) / 1_000_000_000)
}

/// Our sending counters for an SR.
#[derive(Debug, Clone, Copy)]
pub struct SenderInfo {
    /// NTP timestamp (see module doc).
    pub ntp: u64,
    /// RTP timestamp corresponding to `ntp`.
    pub rtp_ts: u32,
    /// Packets sent.
    pub packets: u32,
    /// Payload octets sent.
    pub octets: u32,
}

/// A compound packet: SR (if `sender`) or RR, then SDES CNAME (RFC 3550 §6.1 requires both),
/// optionally BYE (§6.6).
pub fn compound_report(
    ssrc: u32,
    sender: Option<SenderInfo>,
    block: Option<[u8; 24]>,
    cname: &str,
    bye: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(96);
    let rc = u8::from(block.is_some());
    let words = |bytes: usize| ((bytes / 4 - 1) as u16).to_be_bytes();
    match sender {
        Some(s) => {
            let len = 28 + 24 * usize::from(rc);
            out.extend_from_slice(&[0x80 | rc, 200]);
            out.extend_from_slice(&words(len));
            out.extend_from_slice(&ssrc.to_be_bytes());
            out.extend_from_slice(&s.ntp.to_be_bytes());
            out.extend_from_slice(&s.rtp_ts.to_be_bytes());
            out.extend_from_slice(&s.packets.to_be_bytes());
            out.extend_from_slice(&s.octets.to_be_bytes());
        }
        None => {
            let len = 8 + 24 * usize::from(rc);
            out.extend_from_slice(&[0x80 | rc, 201]);
            out.extend_from_slice(&words(len));
            out.extend_from_slice(&ssrc.to_be_bytes());
        }
    }
    if let Some(b) = block {
        out.extend_from_slice(&b);
    }
    // SDES (§6.5): one chunk, CNAME item, null terminator, padded to a 32-bit boundary.
    let cname = &cname.as_bytes()[..cname.len().min(255)];
    let chunk = 4 + 2 + cname.len() + 1;
    let padded = chunk.div_ceil(4) * 4;
    out.extend_from_slice(&[0x81, 202]);
    out.extend_from_slice(&words(4 + padded));
    out.extend_from_slice(&ssrc.to_be_bytes());
    out.extend_from_slice(&[1, cname.len() as u8]);
    out.extend_from_slice(cname);
    out.resize(out.len() + padded - chunk + 1, 0);
    if bye {
        out.extend_from_slice(&[0x81, 203, 0, 1]);
        out.extend_from_slice(&ssrc.to_be_bytes());
    }
    out
}

/// The middle 32 bits of the NTP timestamp of the first SR in a compound packet, if any.
pub fn find_sender_report(compound: &[u8]) -> Option<u32> {
    let mut rest = compound;
    while rest.len() >= 4 {
        let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
        if rest[1] == 200 && rest.len() >= 16 {
            return Some(u32::from_be_bytes([rest[10], rest[11], rest[12], rest[13]]));
        }
        rest = rest.get(len..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths_consistent(p: &[u8]) -> bool {
        let mut rest = p;
        while !rest.is_empty() {
            if rest.len() < 4 || rest[0] >> 6 != 2 {
                return false;
            }
            let len = (usize::from(u16::from_be_bytes([rest[2], rest[3]])) + 1) * 4;
            match rest.get(len..) {
                Some(r) => rest = r,
                None => return false,
            }
        }
        true
    }

    #[test]
    fn sr_with_block_sdes_and_bye() {
        let t0 = crate::test_epoch();
        let mut rs = ReceiverStats::default();
        for (i, seq) in [10u16, 11, 13, 14].iter().enumerate() {
            rs.on_rtp(0xabc, *seq, i as u32 * 160, i as u32 * 160 + 5);
        }
        rs.on_sender_report(0x1234_5678, t0);
        let block = rs.report_block(t0 + Duration::from_millis(500)).unwrap();
        assert_eq!(&block[0..4], &0xabcu32.to_be_bytes());
        assert_eq!(u32::from(block[4]), 256 / 5); // 1 of 5 lost
        assert_eq!(&block[5..8], &[0, 0, 1]);
        assert_eq!(u32::from_be_bytes(block[8..12].try_into().unwrap()), 14);
        assert_eq!(
            u32::from_be_bytes(block[16..20].try_into().unwrap()),
            0x1234_5678
        );
        assert_eq!(u32::from_be_bytes(block[20..24].try_into().unwrap()), 32768); // 0.5 s
        let sr = SenderInfo {
            ntp: to_ntp(Duration::from_millis(1500)),
            rtp_ts: 9,
            packets: 3,
            octets: 480,
        };
        let p = compound_report(7, Some(sr), Some(block), "sbc", true);
        assert!(lengths_consistent(&p));
        assert_eq!((p[0], p[1]), (0x81, 200));
        assert_eq!(
            find_sender_report(&p),
            Some(((1u64 << 32 | (1u64 << 31)) >> 16) as u32)
        );
        let rr = compound_report(7, None, None, "a-longer-cname", false);
        assert!(lengths_consistent(&rr));
        assert_eq!(
            (rr[0], rr[1], rr.len()),
            (0x80, 201, 8 + 4 + 4 + 2 + 14 + 1 + 3)
        );
        assert_eq!(find_sender_report(&rr), None);
    }

    #[test]
    fn sequence_wrap_in_stats() {
        let mut rs = ReceiverStats::default();
        for i in 0..10u16 {
            rs.on_rtp(1, 65530u16.wrapping_add(i), 0, 0);
        }
        let b = rs.report_block(crate::test_epoch()).unwrap();
        assert_eq!(u32::from_be_bytes(b[8..12].try_into().unwrap()), 65536 + 3);
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
    }

    #[test]
    fn find_sr_never_panics() {
        for len in 0..40usize {
            let d: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(77)).collect();
            let _ = find_sender_report(&d);
        }
    }
}
