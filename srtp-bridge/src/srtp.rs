//! SRTP/SRTCP crypto contexts (RFC 3711) for one direction each, wrapping `webrtc-srtp`.
//!
//! What we add on top of `webrtc-srtp`: a replay window over the 48-bit packet index (RFC 3711
//! §3.3.2) checked *before* any crypto is spent, per-SSRC index estimation (RFC 3711 §3.3.1 and
//! Appendix A) mirroring the library's rollover counter, length checks so that no datagram
//! reaches library code that indexes unchecked, and refusal of SRTCP packets whose E flag is
//! clear (the library returns those without checking their tag; we never negotiate
//! `UNENCRYPTED_SRTCP`).

use std::collections::HashMap;

use sdp::SrtpSuite;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::{srtcp_replay_protection, srtp_no_replay_protection};

use crate::keys::{suite_spec, MasterKey, SuiteSpec};
use crate::rtp::RtpHeader;

/// SRTP errors. Those caused by network input are counted by the bridge, never logged above trace.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SrtpError {
    /// The negotiated suite is not in the suite table.
    #[error("unsupported SRTP suite")]
    UnsupportedSuite,
    /// Master key or salt has the wrong length for the suite.
    #[error("bad master key length")]
    BadKeyLength,
    /// The packet is too short or its header is malformed.
    #[error("malformed SRTP/SRTCP packet")]
    Malformed,
    /// The packet index is at or behind the replay window (RFC 3711 §3.3.2).
    #[error("replayed SRTP packet (ssrc {ssrc:#010x}, index {index})")]
    Replay {
        /// SSRC of the packet.
        ssrc: u32,
        /// Estimated packet index (SRTCP: the SRTCP index).
        index: u64,
    },
    /// The authentication tag did not verify.
    #[error("SRTP authentication failed")]
    AuthFailed,
    /// An SRTCP packet with the E flag clear (no encryption, not negotiated).
    #[error("unencrypted SRTCP refused")]
    UnencryptedSrtcp,
    /// The library refused to protect (e.g. 2^48 packets with one key, RFC 3711 §9.2).
    #[error("SRTP protect failed")]
    Protect,
}

/// Width of the replay window in packets (RFC 3711 §3.3.2 asks for at least 64).
pub const REPLAY_WINDOW: u64 = 128;
/// SSRCs whose replay state we keep per context (carriers use one, a few after re-INVITEs).
const MAX_SSRCS: usize = 16;

/// Highest authenticated index of one SSRC and the window of indices seen below it.
#[derive(Clone, Copy, Debug)]
struct ReplayState {
    /// Highest authenticated packet index (ROC << 16 | SEQ).
    highest: u64,
    /// Bit i set: index `highest - i` was received.
    window: u128,
}

impl ReplayState {
    /// Estimated packet index for `seq` (RFC 3711 §3.3.1, Appendix A), `s_l` = highest seq.
    fn estimate(&self, seq: u16) -> u64 {
        let roc = self.highest >> 16;
        let s_l = self.highest as u16;
        let seq_i = i64::from(seq);
        let s_l_i = i64::from(s_l);
        let v = if s_l < 0x8000 {
            if seq_i - s_l_i > 0x8000 {
                roc.saturating_sub(1)
            } else {
                roc
            }
        } else if s_l_i - 0x8000 > seq_i {
            roc + 1
        } else {
            roc
        };
        (v << 16) | u64::from(seq)
    }

    fn is_replay(&self, index: u64) -> bool {
        if index > self.highest {
            return false;
        }
        let delta = self.highest - index;
        delta >= REPLAY_WINDOW || self.window & (1u128 << delta) != 0
    }

    fn accept(&mut self, index: u64) {
        if index > self.highest {
            let shift = index - self.highest;
            self.window = if shift >= REPLAY_WINDOW {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            self.highest = index;
        } else {
            self.window |= 1u128 << (self.highest - index);
        }
    }
}

/// Decrypts and authenticates what one peer sends (SRTP and SRTCP under one master key).
pub struct InboundContext {
    ctx: Context,
    spec: &'static SuiteSpec,
    suite: SrtpSuite,
    key: MasterKey,
    replay: HashMap<u32, ReplayState>,
    /// Failed packets from SSRCs that never authenticated since the last rebuild.
    junk: u32,
}

/// `webrtc-srtp` keeps state for every SSRC it is shown, authentic or not. After this many
/// failures from unknown SSRCs the library context is rebuilt (known streams walked back to
/// their index), so forged SSRCs cannot grow memory without bound.
const JUNK_LIMIT: u32 = 4096;

impl InboundContext {
    /// A context for `suite` keyed with the peer's master key and salt.
    pub fn new(suite: &SrtpSuite, key: &MasterKey) -> Result<Self, SrtpError> {
        let spec = suite_spec(suite).ok_or(SrtpError::UnsupportedSuite)?;
        let ctx = Context::new(
            key.key(),
            key.salt(),
            spec.profile,
            Some(srtp_no_replay_protection()),
            Some(srtcp_replay_protection(REPLAY_WINDOW as usize)),
        )
        .map_err(|_| SrtpError::BadKeyLength)?;
        Ok(Self {
            ctx,
            spec,
            suite: suite.clone(),
            key: key.clone(),
            replay: HashMap::new(),
            junk: 0,
        })
    }

    /// Checks replay, then authenticates and decrypts one SRTP packet (RFC 3711 §3.3).
    /// Returns the RTP packet and its header.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<(Vec<u8>, RtpHeader), SrtpError> {
        let header = RtpHeader::parse(packet).map_err(|_| SrtpError::Malformed)?;
        if packet.len() < header.header_len + self.spec.tag_len {
            return Err(SrtpError::Malformed);
        }
        let ssrc = header.ssrc;
        let index = match self.replay.get(&ssrc) {
            Some(state) => {
                let index = state.estimate(header.sequence_number);
                if state.is_replay(index) {
                    return Err(SrtpError::Replay { ssrc, index });
                }
                index
            }
            None => u64::from(header.sequence_number),
        };
        let plain = match self.ctx.decrypt_rtp(packet) {
            Ok(p) => p,
            Err(_) => {
                if !self.replay.contains_key(&ssrc) {
                    self.junk += 1;
                    if self.junk >= JUNK_LIMIT {
                        self.rebuild();
                    }
                }
                return Err(SrtpError::AuthFailed);
            }
        };
        if !self.replay.contains_key(&ssrc) && self.replay.len() >= MAX_SSRCS {
            // Forget the least advanced stream; its next packet starts a fresh state.
            if let Some(old) = self
                .replay
                .iter()
                .min_by_key(|(_, s)| s.highest)
                .map(|(k, _)| *k)
            {
                self.replay.remove(&old);
            }
        }
        self.replay
            .entry(ssrc)
            .or_insert(ReplayState {
                highest: index,
                window: 0,
            })
            .accept(index);
        Ok((plain.to_vec(), header))
    }

    /// Highest authenticated packet index (ROC << 16 | SEQ) of each SSRC seen.
    pub fn highest_indices(&self) -> Vec<(u32, u64)> {
        self.replay
            .iter()
            .map(|(ssrc, s)| (*ssrc, s.highest))
            .collect()
    }

    /// A context under a new key whose rollover counters continue from `indices` instead of
    /// starting at 0. After a re-key, RFC 4568 leaves open whether the sender keeps its ROC
    /// (libsrtp's stream update does) or starts a new context; the bridge tries both.
    /// `None` when no stream has wrapped yet (then both hypotheses are the same).
    ///
    /// `webrtc-srtp` has no ROC setter, so we walk the new context there: packets protected
    /// under the same key with sequence numbers advancing 0x4000 at a time (RFC 3711
    /// Appendix A then counts each wrap) bring its index to the old one, 4 packets per wrap.
    pub fn with_continued_roc(
        suite: &SrtpSuite,
        key: &MasterKey,
        indices: &[(u32, u64)],
    ) -> Option<Self> {
        if indices.iter().all(|(_, i)| *i < 0x1_0000) {
            return None;
        }
        Self::walked(suite, key, indices)
    }

    /// A fresh context walked to `indices` (see [`InboundContext::with_continued_roc`]).
    fn walked(suite: &SrtpSuite, key: &MasterKey, indices: &[(u32, u64)]) -> Option<Self> {
        let mut rx = Self::new(suite, key).ok()?;
        let mut tx = OutboundContext::new(suite, key).ok()?;
        for &(ssrc, target) in indices.iter().take(MAX_SSRCS) {
            let target = target.min((1 << 32) - 1); // 65,536 wraps = 4 years at 50 packets/s
            let mut index = target & 0xffff;
            loop {
                let pkt = crate::rtp::write_rtp(false, 0, index as u16, 0, ssrc, &[]);
                let prot = tx.protect_rtp(&pkt).ok()?;
                rx.unprotect_rtp(&prot).ok()?;
                if index >= target {
                    break;
                }
                index = (index + 0x4000).min(target);
            }
        }
        Some(rx)
    }

    /// Replaces the library context by one that knows only the authenticated streams.
    /// (The SRTCP replay state of the library starts over; ours for SRTP is kept.)
    fn rebuild(&mut self) {
        self.junk = 0;
        if let Some(fresh) = Self::walked(&self.suite, &self.key, &self.highest_indices()) {
            self.ctx = fresh.ctx;
        }
    }

    /// Authenticates and decrypts one SRTCP compound packet (RFC 3711 §3.4).
    pub fn unprotect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        // RTCP header + sender SSRC, then E||SRTCP index, then the tag.
        let trailer = 4 + self.spec.srtcp_tag_len;
        if packet.len() < 8 + trailer || packet[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        let e_index = &packet[packet.len() - trailer..];
        if e_index[0] & 0x80 == 0 {
            return Err(SrtpError::UnencryptedSrtcp);
        }
        match self.ctx.decrypt_rtcp(packet) {
            Ok(p) => Ok(p.to_vec()),
            Err(webrtc_srtp::Error::SrtcpSsrcDuplicated(ssrc, index)) => Err(SrtpError::Replay {
                ssrc,
                index: index as u64,
            }),
            Err(_) => Err(SrtpError::AuthFailed),
        }
    }
}

/// Encrypts and authenticates what we send (SRTP and SRTCP under our master key).
pub struct OutboundContext {
    ctx: Context,
}

impl OutboundContext {
    /// A context for `suite` keyed with our master key and salt.
    pub fn new(suite: &SrtpSuite, key: &MasterKey) -> Result<Self, SrtpError> {
        let spec = suite_spec(suite).ok_or(SrtpError::UnsupportedSuite)?;
        let ctx = Context::new(key.key(), key.salt(), spec.profile, None, None)
            .map_err(|_| SrtpError::BadKeyLength)?;
        Ok(Self { ctx })
    }

    /// Protects one RTP packet (RFC 3711 §3.3); the rollover counter follows the sequence number.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        RtpHeader::parse(packet).map_err(|_| SrtpError::Malformed)?;
        self.ctx
            .encrypt_rtp(packet)
            .map(|b| b.to_vec())
            .map_err(|_| SrtpError::Protect)
    }

    /// Protects one RTCP compound packet (RFC 3711 §3.4, E flag set, next SRTCP index).
    pub fn protect_rtcp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        if packet.len() < 8 || packet[0] >> 6 != 2 {
            return Err(SrtpError::Malformed);
        }
        self.ctx
            .encrypt_rtcp(packet)
            .map(|b| b.to_vec())
            .map_err(|_| SrtpError::Protect)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rtp::write_rtp;

    fn key(b: u8) -> MasterKey {
        MasterKey::new(&[b; 16], &[b ^ 0x5a; 14]).unwrap()
    }

    fn pair(suite: SrtpSuite) -> (OutboundContext, InboundContext) {
        (
            OutboundContext::new(&suite, &key(7)).unwrap(),
            InboundContext::new(&suite, &key(7)).unwrap(),
        )
    }

    #[test]
    fn round_trip_both_suites() {
        for (suite, tag) in [
            (SrtpSuite::AesCm128HmacSha1_80, 10),
            (SrtpSuite::AesCm128HmacSha1_32, 4),
        ] {
            let (mut tx, mut rx) = pair(suite);
            for seq in 0..20u16 {
                let plain = write_rtp(
                    seq == 0,
                    0,
                    seq,
                    160 * u32::from(seq),
                    42,
                    &[seq as u8; 160],
                );
                let prot = tx.protect_rtp(&plain).unwrap();
                assert_eq!(prot.len(), plain.len() + tag);
                assert_ne!(&prot[12..172], &plain[12..172], "payload is encrypted");
                let (back, h) = rx.unprotect_rtp(&prot).unwrap();
                assert_eq!(back, plain);
                assert_eq!(h.sequence_number, seq);
            }
        }
    }

    #[test]
    fn other_key_fails_auth() {
        let mut tx = OutboundContext::new(&SrtpSuite::AesCm128HmacSha1_80, &key(1)).unwrap();
        let mut rx = InboundContext::new(&SrtpSuite::AesCm128HmacSha1_80, &key(2)).unwrap();
        let prot = tx
            .protect_rtp(&write_rtp(false, 0, 1, 1, 1, &[0; 160]))
            .unwrap();
        assert_eq!(rx.unprotect_rtp(&prot), Err(SrtpError::AuthFailed));
    }

    #[test]
    fn replay_is_dropped_before_crypto_and_reordering_accepted() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        let pkts: Vec<Vec<u8>> = (100..110u16)
            .map(|s| {
                tx.protect_rtp(&write_rtp(false, 0, s, 0, 9, &[1; 160]))
                    .unwrap()
            })
            .collect();
        rx.unprotect_rtp(&pkts[0]).unwrap();
        rx.unprotect_rtp(&pkts[5]).unwrap();
        rx.unprotect_rtp(&pkts[3]).unwrap(); // late but in the window
        assert_eq!(
            rx.unprotect_rtp(&pkts[3]),
            Err(SrtpError::Replay {
                ssrc: 9,
                index: 103
            })
        );
        assert!(matches!(
            rx.unprotect_rtp(&pkts[5]),
            Err(SrtpError::Replay { .. })
        ));
        rx.unprotect_rtp(&pkts[9]).unwrap();
    }

    #[test]
    fn too_old_is_a_replay() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_32);
        let old = tx
            .protect_rtp(&write_rtp(false, 0, 1, 0, 9, &[1; 10]))
            .unwrap();
        let mut last = Vec::new();
        for s in 2..(2 + REPLAY_WINDOW as u16 + 5) {
            last = tx
                .protect_rtp(&write_rtp(false, 0, s, 0, 9, &[1; 10]))
                .unwrap();
        }
        rx.unprotect_rtp(&last).unwrap();
        assert!(matches!(
            rx.unprotect_rtp(&old),
            Err(SrtpError::Replay { .. })
        ));
    }

    /// A forged sequence-number wrap (65535 -> 0): the rollover counter goes to 1 on both sides
    /// (RFC 3711 §3.3.1) and the packet still authenticates.
    #[test]
    fn sequence_wrap_keeps_authenticating() {
        for suite in [
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ] {
            let (mut tx, mut rx) = pair(suite);
            for i in 0..40u32 {
                let seq = 65520u16.wrapping_add(i as u16);
                let prot = tx
                    .protect_rtp(&write_rtp(false, 0, seq, i * 160, 77, &[i as u8; 160]))
                    .unwrap();
                let (plain, h) = rx.unprotect_rtp(&prot).unwrap();
                assert_eq!(h.sequence_number, seq);
                assert_eq!(plain[12], i as u8);
            }
            // ROC is 1 now: a sender that stayed at ROC 0 for seq 5 is not accepted.
            let mut fresh = OutboundContext::new(&SrtpSuite::AesCm128HmacSha1_80, &key(7)).unwrap();
            let stale = fresh
                .protect_rtp(&write_rtp(false, 0, 30, 0, 77, &[0; 160]))
                .unwrap();
            assert!(rx.unprotect_rtp(&stale).is_err());
        }
    }

    #[test]
    fn replay_estimate_follows_appendix_a() {
        let s = ReplayState {
            highest: (1 << 16) | 65530,
            window: 1,
        };
        assert_eq!(s.estimate(3), (2 << 16) | 3);
        assert_eq!(s.estimate(65500), (1 << 16) | 65500);
        let s = ReplayState {
            highest: (2 << 16) | 5,
            window: 1,
        };
        assert_eq!(s.estimate(65530), (1 << 16) | 65530);
        assert_eq!(s.estimate(10), (2 << 16) | 10);
    }

    #[test]
    fn srtcp_round_trip_replay_and_unencrypted() {
        let (mut tx, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_32);
        let rr = [0x80, 201, 0, 1, 0, 0, 0, 42];
        let prot = tx.protect_rtcp(&rr).unwrap();
        assert_eq!(prot.len(), 8 + 4 + 10);
        assert_eq!(rx.unprotect_rtcp(&prot).unwrap(), rr);
        assert!(matches!(
            rx.unprotect_rtcp(&prot),
            Err(SrtpError::Replay { .. })
        ));
        let mut plain_trailer = rr.to_vec();
        plain_trailer.extend_from_slice(&[0, 0, 0, 9]);
        plain_trailer.extend_from_slice(&[0; 10]);
        assert_eq!(
            rx.unprotect_rtcp(&plain_trailer),
            Err(SrtpError::UnencryptedSrtcp)
        );
        let mut tampered = tx.protect_rtcp(&rr).unwrap();
        tampered[6] ^= 1;
        assert_eq!(rx.unprotect_rtcp(&tampered), Err(SrtpError::AuthFailed));
    }

    #[test]
    fn short_and_garbage_input_is_an_error_not_a_panic() {
        let (_, mut rx) = pair(SrtpSuite::AesCm128HmacSha1_80);
        for len in 0..64usize {
            let d: Vec<u8> = (0..len)
                .map(|i| (i as u8).wrapping_mul(31) | 0x80)
                .collect();
            assert!(rx.unprotect_rtp(&d).is_err());
            assert!(rx.unprotect_rtcp(&d).is_err());
        }
    }

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// AES-CM keystream (RFC 3711 §4.1.1) computed independently with RustCrypto.
    fn aes_cm(key: &[u8], iv: &[u8; 16], data: &mut [u8]) {
        use ctr::cipher::{KeyIvInit, StreamCipher};
        let mut c = ctr::Ctr128BE::<aes::Aes128>::new(key.into(), iv.into());
        c.apply_keystream(data);
    }

    /// RFC 3711 Appendix B.2: the AES-CM keystream of the test oracle below.
    #[test]
    fn rfc3711_b2_keystream_oracle() {
        let key = hex("2B7E151628AED2A6ABF7158809CF4F3C");
        let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
        let mut ks = [0u8; 48];
        aes_cm(&key, &iv, &mut ks);
        assert_eq!(
            ks.to_vec(),
            hex("E03EAD0935C95E80E166B16DD92B4EB4D23513162B02D0F72A43A2FE4A5F97AB41E95B3BB0A2E8DD477901E4FCA894C0")
        );
    }

    /// Known answer: with the RFC 3711 Appendix B.3 master key and salt, the packet
    /// `protect_rtp` writes is exactly what the B.3 session keys give under §3.3/§4.1.1/§4.2
    /// (AES-CM with IV = salt ^ SSRC ^ index, HMAC-SHA1 over packet || ROC, both tag sizes),
    /// including after a sequence-number wrap (ROC = 1).
    #[test]
    fn rfc3711_b3_known_answer() {
        use hmac::{Hmac, Mac};
        let master = MasterKey::new(
            &hex("E1F97A0D3E018BE0D64FA32C06DE4139"),
            &hex("0EC675AD498AFEEBB6960B3AABE6"),
        )
        .unwrap();
        // RFC 3711 B.3 session keys.
        let k_e = hex("C61E7A93744F39EE10734AFE3FF7A087");
        let k_s = hex("30CBBC08863D8C85D49DB34A9AE1");
        let k_a = hex("CEBE321F6FF7716B6FD4AB49AF256A156D38BAA4");
        for (suite, tag_len) in [
            (SrtpSuite::AesCm128HmacSha1_80, 10),
            (SrtpSuite::AesCm128HmacSha1_32, 4),
        ] {
            let mut tx = OutboundContext::new(&suite, &master).unwrap();
            let ssrc = 0xDEAD_BEEFu32;
            for (i, seq) in [65534u16, 65535, 0, 1].into_iter().enumerate() {
                let roc: u32 = if i < 2 { 0 } else { 1 };
                let payload: Vec<u8> = (0..40u8).map(|b| b.wrapping_mul(seq as u8 | 1)).collect();
                let plain = write_rtp(i == 0, 0, seq, 1000 + 160 * i as u32, ssrc, &payload);
                let got = tx.protect_rtp(&plain).unwrap();

                let mut iv = [0u8; 16];
                iv[..14].copy_from_slice(&k_s);
                for (j, b) in ssrc.to_be_bytes().iter().enumerate() {
                    iv[4 + j] ^= b;
                }
                let index = (u64::from(roc) << 16) | u64::from(seq);
                for (j, b) in index.to_be_bytes()[2..].iter().enumerate() {
                    iv[8 + j] ^= b;
                }
                let mut expected = plain.clone();
                aes_cm(&k_e, &iv, &mut expected[12..]);
                let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&k_a).unwrap();
                mac.update(&expected);
                mac.update(&roc.to_be_bytes());
                expected.extend_from_slice(&mac.finalize().into_bytes()[..tag_len]);
                assert_eq!(got, expected, "seq {seq}");
            }
        }
    }

    /// After a re-key the continued-ROC context authenticates a sender that kept its ROC;
    /// the fresh one a sender that restarted.
    #[test]
    fn continued_roc_context() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (mut tx, mut rx) = pair(suite.clone());
        // Two wraps on the old key.
        let mut last = 0u64;
        for k in 0..=12u64 {
            let index = 65000 + k * 0x4000 + 60;
            let seq = index as u16;
            rx.unprotect_rtp(
                &tx.protect_rtp(&write_rtp(false, 0, seq, 0, 5, &[1; 20]))
                    .unwrap(),
            )
            .unwrap();
            last = index;
        }
        assert_eq!(rx.highest_indices(), vec![(5, last)]);
        assert!(last >> 16 >= 2);
        let new_key = key(9);
        let mut cont =
            InboundContext::with_continued_roc(&suite, &new_key, &rx.highest_indices()).unwrap();
        let mut fresh = InboundContext::new(&suite, &new_key).unwrap();
        // A sender keeping ROC: its context reached the same index under the new key.
        let mut keeper = OutboundContext::new(&suite, &new_key).unwrap();
        let mut idx = last & 0xffff;
        while idx < last {
            keeper
                .protect_rtp(&write_rtp(false, 0, idx as u16, 0, 5, &[]))
                .unwrap();
            idx = (idx + 0x3000).min(last);
        }
        keeper
            .protect_rtp(&write_rtp(false, 0, last as u16, 0, 5, &[]))
            .unwrap();
        let next = write_rtp(false, 0, (last + 1) as u16, 0, 5, &[7; 20]);
        let kept = keeper.protect_rtp(&next).unwrap();
        assert_eq!(fresh.unprotect_rtp(&kept), Err(SrtpError::AuthFailed));
        assert_eq!(cont.unprotect_rtp(&kept).unwrap().0, next);
        // A sender restarting at ROC 0.
        let mut restarter = OutboundContext::new(&suite, &new_key).unwrap();
        let restarted = restarter
            .protect_rtp(&write_rtp(false, 0, (last + 2) as u16, 0, 5, &[8; 20]))
            .unwrap();
        assert_eq!(cont.unprotect_rtp(&restarted), Err(SrtpError::AuthFailed));
        assert!(fresh.unprotect_rtp(&restarted).is_ok());
        assert!(InboundContext::with_continued_roc(&suite, &new_key, &[(5, 100)]).is_none());
    }

    /// Forged SSRCs trigger a rebuild of the library context; the real stream, past a wrap,
    /// keeps authenticating and replays are still refused.
    #[test]
    fn junk_ssrcs_rebuild_without_losing_the_stream() {
        let suite = SrtpSuite::AesCm128HmacSha1_32;
        let (mut tx, mut rx) = pair(suite.clone());
        let mut forger = OutboundContext::new(&suite, &key(99)).unwrap();
        let mut sent = Vec::new();
        for i in 0..20u16 {
            let p = tx
                .protect_rtp(&write_rtp(
                    false,
                    0,
                    65530u16.wrapping_add(i),
                    0,
                    3,
                    &[i as u8; 20],
                ))
                .unwrap();
            rx.unprotect_rtp(&p).unwrap();
            sent.push(p);
        }
        for j in 0..JUNK_LIMIT + 10 {
            let p = forger
                .protect_rtp(&write_rtp(false, 0, 1, 0, 1000 + j, &[0; 20]))
                .unwrap();
            assert_eq!(rx.unprotect_rtp(&p), Err(SrtpError::AuthFailed));
        }
        assert!(rx.junk < 20, "context was rebuilt");
        let p = tx
            .protect_rtp(&write_rtp(false, 0, 14, 0, 3, &[1; 20]))
            .unwrap();
        assert!(rx.unprotect_rtp(&p).is_ok(), "ROC 1 survives the rebuild");
        assert!(matches!(
            rx.unprotect_rtp(&sent[19]),
            Err(SrtpError::Replay { .. })
        ));
    }
}
