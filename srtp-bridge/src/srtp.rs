//! SRTP/SRTCP crypto contexts (RFC 3711) for one direction each.
//!
//! SRTP (RTP) packets go through our own transform ([`crate::aes_cm`]): session keys derived
//! once per context, AES key schedule and HMAC pads precomputed, so a packet costs its AES and
//! SHA-1 blocks only. SRTCP goes through `webrtc-srtp`, whose output the RTP transform is tested
//! to match byte for byte.
//!
//! Around the crypto: a replay window over the 48-bit packet index (RFC 3711 §3.3.2) checked
//! *before* any crypto is spent, per-SSRC index estimation (RFC 3711 §3.3.1 and Appendix A),
//! state only for SSRCs that authenticated, length checks so that no datagram reaches library
//! code that indexes unchecked, and refusal of SRTCP packets whose E flag is clear (the library
//! returns those without checking their tag; we never negotiate `UNENCRYPTED_SRTCP`).

use sdp::SrtpSuite;
use webrtc_srtp::context::Context;
use webrtc_srtp::option::srtcp_replay_protection;

use crate::aes_cm::RtpTransform;
use crate::keys::{profile, suite_spec, MasterKey, SuiteSpec};
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
/// Highest packet index: ROC is 32 bits (RFC 3711 §3.3.1).
const MAX_INDEX: u64 = (1 << 48) - 1;

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
    rtp: RtpTransform,
    /// SRTCP only.
    ctx: Context,
    spec: &'static SuiteSpec,
    key: MasterKey,
    /// Replay state of the SSRCs that authenticated, at most [`MAX_SSRCS`] (a linear scan of
    /// a few entries is cheaper than hashing).
    replay: Vec<(u32, ReplayState)>,
    /// SRTCP replay state (highest SRTCP index and window) of the SSRCs whose SRTCP
    /// authenticated, at most [`MAX_SSRCS`]. Ours, not the library's: it survives the rebuild of
    /// the library context, so junk cannot reset it and reopen the door to a replay.
    srtcp_replay: Vec<(u32, ReplayState)>,
    /// SRTCP failures from SSRCs that never authenticated RTP since the last rebuild.
    junk: u32,
}

/// `webrtc-srtp` keeps SRTCP state for every SSRC it is shown, authentic or not. After this
/// many SRTCP failures from unknown SSRCs the library context is rebuilt, so forged SSRCs
/// cannot grow memory without bound. (SRTP keeps state only for authenticated SSRCs.)
const JUNK_LIMIT: u32 = 4096;

fn srtcp_context(spec: &SuiteSpec, key: &MasterKey) -> Result<Context, SrtpError> {
    Context::new(
        key.key(),
        key.salt(),
        profile(&spec.suite).ok_or(SrtpError::UnsupportedSuite)?,
        None,
        Some(srtcp_replay_protection(REPLAY_WINDOW as usize)),
    )
    .map_err(|_| SrtpError::BadKeyLength)
}

impl InboundContext {
    /// A context for `suite` keyed with the peer's master key and salt.
    pub fn new(suite: &SrtpSuite, key: &MasterKey) -> Result<Self, SrtpError> {
        let spec = suite_spec(suite).ok_or(SrtpError::UnsupportedSuite)?;
        let (master_key, master_salt) = key.parts();
        Ok(Self {
            rtp: RtpTransform::new(master_key, master_salt, spec.tag_len),
            ctx: srtcp_context(spec, key)?,
            spec,
            key: key.clone(),
            replay: Vec::new(),
            srtcp_replay: Vec::new(),
            junk: 0,
        })
    }

    /// Checks replay, then authenticates and decrypts one SRTP packet (RFC 3711 §3.3).
    /// Returns the RTP packet and its header.
    pub fn unprotect_rtp(&mut self, packet: &[u8]) -> Result<(Vec<u8>, RtpHeader), SrtpError> {
        let mut plain = Vec::new();
        let header = self.unprotect_rtp_into(packet, &mut plain)?;
        Ok((plain, header))
    }

    /// Like [`InboundContext::unprotect_rtp`], writing the RTP packet into `plain` (cleared
    /// first): with a buffer reused from packet to packet, no allocation.
    pub fn unprotect_rtp_into(
        &mut self,
        packet: &[u8],
        plain: &mut Vec<u8>,
    ) -> Result<RtpHeader, SrtpError> {
        plain.clear();
        let header = RtpHeader::parse(packet).map_err(|_| SrtpError::Malformed)?;
        if packet.len() < header.header_len + self.rtp.tag_len() {
            return Err(SrtpError::Malformed);
        }
        let ssrc = header.ssrc;
        let slot = self.replay.iter().position(|(s, _)| *s == ssrc);
        let index = match slot {
            Some(i) => {
                let state = &self.replay[i].1;
                let index = state.estimate(header.sequence_number);
                if state.is_replay(index) {
                    return Err(SrtpError::Replay { ssrc, index });
                }
                index
            }
            // A new stream starts at ROC 0 (RFC 3711 §3.3.1).
            None => u64::from(header.sequence_number),
        };
        if !self
            .rtp
            .unprotect_into(packet, header.header_len, ssrc, index, plain)
        {
            return Err(SrtpError::AuthFailed);
        }
        match slot {
            Some(i) => self.replay[i].1.accept(index),
            None => {
                if self.replay.len() >= MAX_SSRCS {
                    // Forget the least advanced stream; its next packet starts a fresh state at
                    // ROC 0, so a stream that had wrapped stops authenticating. Only the key
                    // holder can get here (state needs an authentic packet), with > 16 SSRCs.
                    if let Some(old) =
                        (0..self.replay.len()).min_by_key(|&i| self.replay[i].1.highest)
                    {
                        self.replay.swap_remove(old);
                    }
                }
                let mut state = ReplayState {
                    highest: index,
                    window: 0,
                };
                state.accept(index);
                self.replay.push((ssrc, state));
            }
        }
        Ok(header)
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
    pub fn with_continued_roc(
        suite: &SrtpSuite,
        key: &MasterKey,
        indices: &[(u32, u64)],
    ) -> Option<Self> {
        if indices.iter().all(|(_, i)| *i < 0x1_0000) {
            return None;
        }
        let mut rx = Self::new(suite, key).ok()?;
        rx.replay = indices
            .iter()
            .take(MAX_SSRCS)
            .map(|&(ssrc, index)| {
                let state = ReplayState {
                    highest: index.min(MAX_INDEX),
                    window: 1,
                };
                (ssrc, state)
            })
            .collect();
        Some(rx)
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
        let ssrc = u32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
        let index = u64::from(
            u32::from_be_bytes([e_index[0], e_index[1], e_index[2], e_index[3]]) & 0x7fff_ffff,
        );
        // Our replay check first (RFC 3711 §3.3.2: before any crypto is spent).
        let slot = self.srtcp_replay.iter().position(|(s, _)| *s == ssrc);
        if let Some(i) = slot {
            if self.srtcp_replay[i].1.is_replay(index) {
                return Err(SrtpError::Replay { ssrc, index });
            }
        }
        match self.ctx.decrypt_rtcp(packet) {
            Ok(p) => {
                match slot {
                    Some(i) => self.srtcp_replay[i].1.accept(index),
                    None => {
                        if self.srtcp_replay.len() >= MAX_SSRCS {
                            if let Some(old) = (0..self.srtcp_replay.len())
                                .min_by_key(|&i| self.srtcp_replay[i].1.highest)
                            {
                                self.srtcp_replay.swap_remove(old);
                            }
                        }
                        let mut state = ReplayState {
                            highest: index,
                            window: 0,
                        };
                        state.accept(index);
                        self.srtcp_replay.push((ssrc, state));
                    }
                }
                Ok(p.to_vec())
            }
            Err(webrtc_srtp::Error::SrtcpSsrcDuplicated(ssrc, index)) => Err(SrtpError::Replay {
                ssrc,
                index: index as u64,
            }),
            Err(_) => {
                if !self.replay.iter().any(|(s, _)| *s == ssrc) {
                    self.junk += 1;
                    if self.junk >= JUNK_LIMIT {
                        // The SRTCP replay state of the library starts over; ours (SRTP and
                        // SRTCP) is kept, so no replay gets through after the rebuild.
                        self.junk = 0;
                        if let Ok(ctx) = srtcp_context(self.spec, &self.key) {
                            self.ctx = ctx;
                        }
                    }
                }
                Err(SrtpError::AuthFailed)
            }
        }
    }
}

/// Rollover counter of one SSRC we send, as `webrtc-srtp` keeps it (its `SrtpSsrcState`): the
/// index of the last packet protected, so our SRTP stays byte-identical to what the library
/// sent before (RFC 3711 §3.3.1: the sender's ROC counts wraps of its own sequence numbers).
#[derive(Clone, Copy, Debug, Default)]
struct SenderState {
    index: u64,
    started: bool,
}

impl SenderState {
    /// (ROC for `seq`, step of the index, ROC overflow).
    fn next(&self, seq: u16) -> (u32, i64, bool) {
        let local_roc = (self.index >> 16) as u32;
        let local_seq = self.index as u16;
        if !self.started {
            return (local_roc, 0, false);
        }
        let step = i64::from(seq) - i64::from(local_seq);
        let (roc, step) = if self.index <= 0x8000 {
            (local_roc, step)
        } else if local_seq < 0x8000 {
            if step > 0x8000 {
                (local_roc.wrapping_sub(1), step - 0x1_0000)
            } else {
                (local_roc, step)
            }
        } else if local_seq - 0x8000 > seq {
            (local_roc.wrapping_add(1), step + 0x1_0000)
        } else {
            (local_roc, step)
        };
        (roc, step, roc == 0 && local_roc == u32::MAX)
    }

    fn update(&mut self, seq: u16, step: i64) {
        if self.started {
            self.index = self.index.wrapping_add_signed(step);
        } else {
            self.index |= u64::from(seq);
            self.started = true;
        }
    }
}

/// Encrypts and authenticates what we send (SRTP and SRTCP under our master key).
pub struct OutboundContext {
    rtp: RtpTransform,
    /// SRTCP only.
    ctx: Context,
    /// Our own SSRCs (one per call, more only if the bridge changes SSRC).
    senders: Vec<(u32, SenderState)>,
}

impl OutboundContext {
    /// A context for `suite` keyed with our master key and salt.
    pub fn new(suite: &SrtpSuite, key: &MasterKey) -> Result<Self, SrtpError> {
        let spec = suite_spec(suite).ok_or(SrtpError::UnsupportedSuite)?;
        let profile = profile(suite).ok_or(SrtpError::UnsupportedSuite)?;
        let ctx = Context::new(key.key(), key.salt(), profile, None, None)
            .map_err(|_| SrtpError::BadKeyLength)?;
        let (master_key, master_salt) = key.parts();
        Ok(Self {
            rtp: RtpTransform::new(master_key, master_salt, spec.tag_len),
            ctx,
            senders: Vec::new(),
        })
    }

    /// Protects one RTP packet (RFC 3711 §3.3); the rollover counter follows the sequence number.
    pub fn protect_rtp(&mut self, packet: &[u8]) -> Result<Vec<u8>, SrtpError> {
        let mut out = Vec::with_capacity(packet.len() + self.rtp.tag_len());
        out.extend_from_slice(packet);
        self.protect_rtp_in_place(&mut out)?;
        Ok(out)
    }

    /// Like [`OutboundContext::protect_rtp`], in place: the payload of the RTP packet in `packet`
    /// is encrypted and the tag appended (no allocation when `packet` has room for the tag, as
    /// [`crate::rtp::write_rtp`]'s output has). On error `packet` is unchanged.
    pub fn protect_rtp_in_place(&mut self, packet: &mut Vec<u8>) -> Result<(), SrtpError> {
        let header = RtpHeader::parse(packet).map_err(|_| SrtpError::Malformed)?;
        let ssrc = header.ssrc;
        let slot = match self.senders.iter().position(|(s, _)| *s == ssrc) {
            Some(i) => i,
            None => {
                self.senders.push((ssrc, SenderState::default()));
                self.senders.len() - 1
            }
        };
        let state = &mut self.senders[slot].1;
        let seq = header.sequence_number;
        let (roc, step, overflow) = state.next(seq);
        if overflow {
            // RFC 3711 §9.2: after 2^48 packets the key must not be used again.
            return Err(SrtpError::Protect);
        }
        let index = (u64::from(roc) << 16) | u64::from(seq);
        self.rtp
            .protect_in_place(packet, header.header_len, ssrc, index);
        state.update(seq, step);
        Ok(())
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

    /// Forged RTP from many SSRCs leaves no state behind; the real stream, past a wrap, keeps
    /// authenticating and replays are still refused.
    #[test]
    fn forged_rtp_ssrcs_keep_no_state() {
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
        for j in 0..100 {
            let p = forger
                .protect_rtp(&write_rtp(false, 0, 1, 0, 1000 + j, &[0; 20]))
                .unwrap();
            assert_eq!(rx.unprotect_rtp(&p), Err(SrtpError::AuthFailed));
        }
        assert_eq!(rx.replay.len(), 1, "no state for unauthenticated SSRCs");
        let p = tx
            .protect_rtp(&write_rtp(false, 0, 14, 0, 3, &[1; 20]))
            .unwrap();
        assert!(rx.unprotect_rtp(&p).is_ok(), "ROC 1 is kept");
        assert!(matches!(
            rx.unprotect_rtp(&sent[19]),
            Err(SrtpError::Replay { .. })
        ));
    }

    /// Forged SRTCP from unknown SSRCs triggers a rebuild of the library's SRTCP context;
    /// SRTCP and SRTP of the real stream keep working.
    #[test]
    fn forged_srtcp_ssrcs_rebuild_the_library_context() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (mut tx, mut rx) = pair(suite.clone());
        let mut forger = OutboundContext::new(&suite, &key(99)).unwrap();
        for seq in 65534..=65535u16 {
            let p = tx
                .protect_rtp(&write_rtp(false, 0, seq, 0, 3, &[1; 20]))
                .unwrap();
            rx.unprotect_rtp(&p).unwrap();
        }
        let rr = |ssrc: u32| {
            let mut p = vec![0x80, 201, 0, 1];
            p.extend_from_slice(&ssrc.to_be_bytes());
            p
        };
        rx.unprotect_rtcp(&tx.protect_rtcp(&rr(3)).unwrap())
            .unwrap();
        for j in 0..JUNK_LIMIT + 10 {
            let p = forger.protect_rtcp(&rr(1000 + j)).unwrap();
            assert_eq!(rx.unprotect_rtcp(&p), Err(SrtpError::AuthFailed));
        }
        assert!(rx.junk < 20, "context was rebuilt");
        rx.unprotect_rtcp(&tx.protect_rtcp(&rr(3)).unwrap())
            .unwrap();
        let p = tx
            .protect_rtp(&write_rtp(false, 0, 0, 0, 3, &[1; 20]))
            .unwrap();
        assert!(rx.unprotect_rtp(&p).is_ok(), "ROC 1 survives the rebuild");
    }

    /// Issue 13: 4,096 junk SRTCP packets rebuild the library context, which used to reset the
    /// SRTCP replay window; a captured SRTCP packet could then be replayed. Replay state now
    /// survives the junk.
    #[test]
    fn srtcp_replay_state_survives_junk() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (mut tx, mut rx) = pair(suite.clone());
        let mut forger = OutboundContext::new(&suite, &key(99)).unwrap();
        let rr = |ssrc: u32| {
            let mut p = vec![0x80, 201, 0, 1];
            p.extend_from_slice(&ssrc.to_be_bytes());
            p
        };
        let captured = tx.protect_rtcp(&rr(3)).unwrap();
        rx.unprotect_rtcp(&captured).unwrap();
        for _ in 0..3 {
            rx.unprotect_rtcp(&tx.protect_rtcp(&rr(3)).unwrap())
                .unwrap();
        }
        assert!(matches!(
            rx.unprotect_rtcp(&captured),
            Err(SrtpError::Replay { .. })
        ));
        for j in 0..JUNK_LIMIT + 10 {
            let p = forger.protect_rtcp(&rr(1000 + j)).unwrap();
            assert_eq!(rx.unprotect_rtcp(&p), Err(SrtpError::AuthFailed));
        }
        assert!(rx.junk < 20, "context was rebuilt");
        assert!(
            matches!(rx.unprotect_rtcp(&captured), Err(SrtpError::Replay { .. })),
            "a captured SRTCP packet must not be accepted again after junk"
        );
        rx.unprotect_rtcp(&tx.protect_rtcp(&rr(3)).unwrap())
            .unwrap();
    }

    /// A random RTP packet: CSRCs, a header extension (a generic profile or a well-formed
    /// one-byte RFC 8285 element), marker, payload type and payload length all drawn.
    fn random_rtp(rng: &mut impl rand::Rng, seq: u16, ssrc: u32) -> Vec<u8> {
        let cc = rng.gen_range(0..3u8);
        let ext = rng.gen_range(0..4u8);
        let mut p = vec![
            0x80 | if ext > 0 { 0x10 } else { 0 } | cc,
            rng.gen_range(0..=255u8),
        ];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
        p.extend_from_slice(&ssrc.to_be_bytes());
        for _ in 0..cc {
            p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
        }
        match ext {
            0 => {}
            1 => p.extend_from_slice(&[0xBE, 0xDE, 0, 1, 0x10, rng.gen(), 0, 0]),
            _ => {
                p.extend_from_slice(&[0x12, 0x34, 0, ext - 1]);
                for _ in 0..ext - 1 {
                    p.extend_from_slice(&rng.gen::<u32>().to_be_bytes());
                }
            }
        }
        let len = rng.gen_range(0..300);
        p.extend((0..len).map(|_| rng.gen::<u8>()));
        p
    }

    /// Our SRTP against `webrtc-srtp` on random packets, both suites: byte-identical protect
    /// output along a random walk of packet indices (mostly in order, some reordering and
    /// jumps, many sequence-number wraps so ROC > 0, two interleaved SSRCs); our unprotect of
    /// the library's packets gives back the plain packet, refuses exactly the replays our
    /// model of the window predicts and refuses tampered packets; the library decrypts ours.
    #[test]
    fn byte_identical_to_webrtc_srtp_on_random_packets() {
        use rand::{Rng, SeedableRng};
        use std::collections::HashSet;
        use webrtc_srtp::protection_profile::ProtectionProfile;
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0x5eed_3711);
        for (suite, profile) in [
            (
                SrtpSuite::AesCm128HmacSha1_80,
                ProtectionProfile::Aes128CmHmacSha1_80,
            ),
            (
                SrtpSuite::AesCm128HmacSha1_32,
                ProtectionProfile::Aes128CmHmacSha1_32,
            ),
        ] {
            for _ in 0..4 {
                let k: [u8; 16] = rng.gen();
                let s: [u8; 14] = rng.gen();
                let master = MasterKey::new(&k, &s).unwrap();
                let mut ours_tx = OutboundContext::new(&suite, &master).unwrap();
                let mut ours_rx = InboundContext::new(&suite, &master).unwrap();
                let mut lib_tx = Context::new(&k, &s, profile, None, None).unwrap();
                let mut lib_rx = Context::new(&k, &s, profile, None, None).unwrap();
                let ssrcs: [u32; 2] = rng.gen();
                // Streams start at ROC 0 (RFC 3711 §3.3.1), anywhere in the sequence space.
                let mut index = [rng.gen_range(0..0x1_0000u64), rng.gen_range(0..0x1_0000)];
                let mut started = [false; 2];
                let mut seen: [HashSet<u64>; 2] = Default::default();
                let mut highest: [Option<u64>; 2] = [None, None];
                let mut max_roc = 0;
                let (mut replays, mut tampered) = (0, 0);
                for _ in 0..1500 {
                    let which = usize::from(rng.gen_bool(0.2));
                    let step: i64 = match rng.gen_range(0..100) {
                        0..=84 => 1,
                        85..=89 => rng.gen_range(2..100),
                        90..=97 => -rng.gen_range(1..200),
                        _ => 0x7000,
                    };
                    if started[which] {
                        index[which] = index[which].saturating_add_signed(step);
                    }
                    started[which] = true;
                    let i = index[which];
                    max_roc = max_roc.max(i >> 16);
                    let plain = random_rtp(&mut rng, i as u16, ssrcs[which]);
                    let ours = ours_tx.protect_rtp(&plain).unwrap();
                    let lib = lib_tx.encrypt_rtp(&plain).unwrap();
                    assert_eq!(ours, lib.to_vec(), "index {i:#x}");
                    assert_eq!(lib_rx.decrypt_rtp(&ours).unwrap().to_vec(), plain);

                    let expect_replay = seen[which].contains(&i)
                        || highest[which].is_some_and(|h| h >= i + REPLAY_WINDOW);
                    let mut input = lib.to_vec();
                    let tamper = rng.gen_bool(0.05);
                    if tamper {
                        let h = RtpHeader::parse(&plain).unwrap().header_len;
                        let at = rng.gen_range(h..input.len());
                        input[at] ^= 1 << rng.gen_range(0..8);
                    }
                    let got = ours_rx.unprotect_rtp(&input);
                    if expect_replay {
                        replays += 1;
                        assert_eq!(
                            got,
                            Err(SrtpError::Replay {
                                ssrc: ssrcs[which],
                                index: i
                            })
                        );
                    } else if tamper {
                        tampered += 1;
                        assert_eq!(got, Err(SrtpError::AuthFailed));
                    } else {
                        let (back, header) = got.unwrap();
                        assert_eq!(back, plain);
                        assert_eq!(header.ssrc, ssrcs[which]);
                        seen[which].insert(i);
                        highest[which] = Some(highest[which].map_or(i, |h| h.max(i)));
                    }
                }
                assert!(max_roc >= 3, "walk crossed several wraps ({max_roc})");
                assert!(
                    replays > 10 && tampered > 10,
                    "{replays} replays, {tampered} tampered"
                );
            }
        }
    }
}
