//! The per-packet SRTP transform of `AES_CM_128_HMAC_SHA1_80` / `_32` (RFC 3711 §3.3, §4.1.1,
//! §4.2) with the session keys derived once (§4.3) and kept as an expanded AES key schedule and
//! an HMAC-SHA1 state with both pads already absorbed, so a packet costs only its own AES blocks
//! and SHA-1 blocks. `webrtc-srtp` redoes the key schedule and the pads for every packet, which
//! made our path 1.4-1.5x the crypto floor (docs/performance.md); it still does SRTCP.
//!
//! Checked against RFC 3711 Appendix B.2 (keystream) and B.3 (key derivation), and
//! byte-for-byte against `webrtc-srtp` on random packets (tests in `srtp.rs`).

use aes::cipher::{BlockEncrypt, KeyInit};
use aes::{Aes128Enc, Block};
use hmac::{Hmac, Mac};
use sha1::Sha1;
use zeroize::Zeroize;

/// SRTP key derivation labels (RFC 3711 §4.3.1).
const LABEL_RTP_ENCRYPTION: u8 = 0x00;
const LABEL_RTP_AUTH: u8 = 0x01;
const LABEL_RTP_SALT: u8 = 0x02;

/// AES blocks of keystream made per `encrypt_blocks` call (lets AES-NI pipeline 8 at a time).
const CHUNK_BLOCKS: usize = 16;

/// XORs the AES-CM keystream for `iv` into `data` (RFC 3711 §4.1.1: block j is
/// AES(k, IV + j), the counter in the low bits of the 128-bit IV).
fn apply_keystream(aes: &Aes128Enc, iv: &[u8; 16], data: &mut [u8]) {
    let mut counter = u128::from_be_bytes(*iv);
    let mut blocks = [Block::default(); CHUNK_BLOCKS];
    for chunk in data.chunks_mut(16 * CHUNK_BLOCKS) {
        let n = chunk.len().div_ceil(16);
        for b in &mut blocks[..n] {
            *b = counter.to_be_bytes().into();
            counter = counter.wrapping_add(1);
        }
        aes.encrypt_blocks(&mut blocks[..n]);
        for (d, k) in chunk.chunks_mut(16).zip(&blocks) {
            d.iter_mut().zip(k).for_each(|(d, k)| *d ^= k);
        }
    }
    // The keystream left in `blocks` is not zeroized: it is no key (the key schedule is), and
    // byte-wise volatile writes would cost a third of the transform.
}

/// The AES-CM PRF of RFC 3711 §4.3.1/§4.3.3 with key derivation rate 0 (r = 0): `out.len()`
/// bytes of keystream under the master key with IV = (label · 2^48 XOR master salt) · 2^16.
fn derive(master: &Aes128Enc, master_salt: &[u8; 14], label: u8, out: &mut [u8]) {
    let mut iv = [0u8; 16];
    iv[..14].copy_from_slice(master_salt);
    iv[7] ^= label; // key_id = label || r (48 zero bits), right-aligned against the salt
    out.fill(0);
    apply_keystream(master, &iv, out);
    iv.zeroize();
}

/// RTP session keys of one direction, expanded for use. No Debug: it holds key material; the
/// AES key schedule is zeroized on drop (`aes` feature `zeroize`).
#[derive(Clone)]
pub(crate) struct RtpTransform {
    aes: Aes128Enc,
    /// HMAC-SHA1 keyed with the session authentication key: cloned per packet.
    mac: Hmac<Sha1>,
    salt: [u8; 14],
    tag_len: usize,
}

impl Drop for RtpTransform {
    fn drop(&mut self) {
        self.salt.zeroize();
    }
}

impl RtpTransform {
    /// Derives the SRTP session encryption key, salt and authentication key (RFC 3711 §4.3)
    /// from a 16-byte master key and 14-byte master salt.
    pub(crate) fn new(master_key: &[u8; 16], master_salt: &[u8; 14], tag_len: usize) -> Self {
        let master = Aes128Enc::new(master_key.into());
        let mut k_e = [0u8; 16];
        let mut k_a = [0u8; 20];
        let mut salt = [0u8; 14];
        derive(&master, master_salt, LABEL_RTP_ENCRYPTION, &mut k_e);
        derive(&master, master_salt, LABEL_RTP_AUTH, &mut k_a);
        derive(&master, master_salt, LABEL_RTP_SALT, &mut salt);
        let aes = Aes128Enc::new(&k_e.into());
        // HMAC accepts keys of any length: this cannot fail.
        let mac = <Hmac<Sha1> as Mac>::new_from_slice(&k_a).expect("HMAC takes any key length");
        k_e.zeroize();
        k_a.zeroize();
        Self {
            aes,
            mac,
            salt,
            tag_len,
        }
    }

    /// Authentication tag length in bytes.
    pub(crate) fn tag_len(&self) -> usize {
        self.tag_len
    }

    /// IV = (k_s · 2^16) XOR (SSRC · 2^64) XOR (i · 2^16) (RFC 3711 §4.1.1).
    fn iv(&self, ssrc: u32, index: u64) -> [u8; 16] {
        let mut iv = [0u8; 16];
        iv[..14].copy_from_slice(&self.salt);
        for (a, b) in iv[4..8].iter_mut().zip(ssrc.to_be_bytes()) {
            *a ^= b;
        }
        for (a, b) in iv[8..14].iter_mut().zip(&index.to_be_bytes()[2..]) {
            *a ^= b;
        }
        iv
    }

    /// Full HMAC-SHA1 over the authenticated portion || ROC (RFC 3711 §4.2).
    fn mac(&self, authenticated: &[u8], roc: u32) -> [u8; 20] {
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&roc.to_be_bytes());
        mac.finalize().into_bytes().into()
    }

    /// SRTP packet for the RTP packet `plain` (header `header_len` bytes long) at packet
    /// index `index` (ROC · 2^16 + SEQ): payload encrypted, tag appended (RFC 3711 §3.3).
    /// `header_len` comes from parsing `plain`, so it is at most `plain.len()`.
    #[cfg(test)]
    pub(crate) fn protect(
        &self,
        plain: &[u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(plain.len() + self.tag_len);
        out.extend_from_slice(plain);
        self.protect_in_place(&mut out, header_len, ssrc, index);
        out
    }

    /// Like [`RtpTransform::protect`], in place: `packet` (an RTP packet, header `header_len`
    /// bytes long) gets its payload encrypted and the tag appended. No allocation when `packet`
    /// has room for the tag.
    pub(crate) fn protect_in_place(
        &self,
        packet: &mut Vec<u8>,
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) {
        let start = header_len.min(packet.len());
        apply_keystream(&self.aes, &self.iv(ssrc, index), &mut packet[start..]);
        let tag = self.mac(packet, (index >> 16) as u32);
        packet.extend_from_slice(&tag[..self.tag_len]);
    }

    /// The RTP packet inside `packet` if its tag verifies at `index` (compared in constant
    /// time), `None` otherwise (also when `packet` is shorter than `header_len` + the tag).
    #[cfg(test)]
    pub(crate) fn unprotect(
        &self,
        packet: &[u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
    ) -> Option<Vec<u8>> {
        let mut out = Vec::new();
        self.unprotect_into(packet, header_len, ssrc, index, &mut out)
            .then_some(out)
    }

    /// Like [`RtpTransform::unprotect`] into `out` (cleared first; a reused buffer makes it
    /// allocation-free): false, and `out` left empty, unless the tag verifies.
    pub(crate) fn unprotect_into(
        &self,
        packet: &[u8],
        header_len: usize,
        ssrc: u32,
        index: u64,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let Some(body_end) = packet.len().checked_sub(self.tag_len) else {
            return false;
        };
        if body_end < header_len {
            return false;
        }
        let (authenticated, tag) = packet.split_at(body_end);
        let mut mac = self.mac.clone();
        mac.update(authenticated);
        mac.update(&((index >> 16) as u32).to_be_bytes());
        if mac.verify_truncated_left(tag).is_err() {
            return false;
        }
        out.extend_from_slice(authenticated);
        apply_keystream(&self.aes, &self.iv(ssrc, index), &mut out[header_len..]);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    /// RFC 3711 Appendix B.2: AES-CM keystream segments 0, 1, 2 and 0xfeff, 0xff00, 0xff01.
    #[test]
    fn rfc3711_b2_keystream() {
        let key: [u8; 16] = hex("2B7E151628AED2A6ABF7158809CF4F3C").try_into().unwrap();
        let iv: [u8; 16] = hex("F0F1F2F3F4F5F6F7F8F9FAFBFCFD0000").try_into().unwrap();
        let aes = Aes128Enc::new(&key.into());
        // Longer than one chunk, so the chunk boundary is covered too.
        let mut ks = vec![0u8; 16 * 0x10000];
        apply_keystream(&aes, &iv, &mut ks);
        assert_eq!(
            ks[..48].to_vec(),
            hex("E03EAD0935C95E80E166B16DD92B4EB4D23513162B02D0F72A43A2FE4A5F97AB41E95B3BB0A2E8DD477901E4FCA894C0")
        );
        assert_eq!(
            ks[16 * 0xfeff..16 * 0xff02].to_vec(),
            hex("EC8CDF7398607CB0F2D21675EA9EA1E4362B7C3C6773516318A077D7FC5073AE6A2CC3787889374FBEB4C81B17BA6C44")
        );
        // Same bytes when the keystream is applied in odd-sized pieces at shifted IVs.
        let mut piece = vec![0u8; 37];
        let mut iv2 = iv;
        iv2[15] = 1;
        apply_keystream(&aes, &iv2, &mut piece);
        assert_eq!(piece, ks[16..16 + 37]);
    }

    /// RFC 3711 Appendix B.3: session encryption key, salt and authentication key.
    #[test]
    fn rfc3711_b3_key_derivation() {
        let master_key: [u8; 16] = hex("E1F97A0D3E018BE0D64FA32C06DE4139").try_into().unwrap();
        let master_salt: [u8; 14] = hex("0EC675AD498AFEEBB6960B3AABE6").try_into().unwrap();
        let master = Aes128Enc::new(&master_key.into());
        let mut k_e = [0u8; 16];
        derive(&master, &master_salt, LABEL_RTP_ENCRYPTION, &mut k_e);
        assert_eq!(k_e.to_vec(), hex("C61E7A93744F39EE10734AFE3FF7A087"));
        let mut k_s = [0u8; 14];
        derive(&master, &master_salt, LABEL_RTP_SALT, &mut k_s);
        assert_eq!(k_s.to_vec(), hex("30CBBC08863D8C85D49DB34A9AE1"));
        // B.3 lists 94 bytes of authentication keystream; SHA-1 uses the first 20.
        let mut k_a = [0u8; 94];
        derive(&master, &master_salt, LABEL_RTP_AUTH, &mut k_a);
        assert_eq!(
            k_a.to_vec(),
            hex(concat!(
                "CEBE321F6FF7716B6FD4AB49AF256A156D38BAA48F0A0ACF3C34E2359E6CDBCE",
                "E049646C43D9327AD175578EF72270986371C10C9A369AC2F94A8C5FBCDDDC25",
                "6D6E919A48B610EF17C2041E474035766B68642C59BBFC2F34DB60DBDFB2"
            ))
        );
    }

    /// Too short for header + tag: `None`, no panic.
    #[test]
    fn short_packets_do_not_verify() {
        let t = RtpTransform::new(&[1; 16], &[2; 14], 10);
        for len in 0..30 {
            assert!(
                t.unprotect(&vec![0x80; len], 12, 1, 0).is_none(),
                "len {len}"
            );
        }
        let p = t.protect(&[0x80; 12], 12, 1, 0);
        assert_eq!(t.unprotect(&p, 12, 1, 0).unwrap(), vec![0x80; 12]);
        assert!(t.unprotect(&p, 13, 1, 0).is_none());
    }
}
