//! Which rows of the suite table (`sdp::SUITES`, RFC 4568 §6.2) this crate runs, and master
//! keys that cannot be printed.

use sdp::SrtpSuite;
use webrtc_srtp::protection_profile::ProtectionProfile;
use zeroize::{Zeroize, ZeroizeOnDrop};

pub use sdp::SuiteSpec;

/// The table row for a negotiated suite (the table is `sdp::SUITES`), `None` if sbc cannot
/// run it: the row must say `runs` and this crate must have a transform for it.
pub fn suite_spec(suite: &SrtpSuite) -> Option<&'static SuiteSpec> {
    suite
        .spec()
        .filter(|s| s.runs && profile(&s.suite).is_some() && s.key_len == 16 && s.salt_len == 14)
}

/// The `webrtc-srtp` profile (SRTCP) of a suite this crate runs.
pub(crate) fn profile(suite: &SrtpSuite) -> Option<ProtectionProfile> {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80 => Some(ProtectionProfile::Aes128CmHmacSha1_80),
        SrtpSuite::AesCm128HmacSha1_32 => Some(ProtectionProfile::Aes128CmHmacSha1_32),
        _ => None,
    }
}

/// Master key and master salt of one direction. Debug prints `<redacted>`; zeroized on drop.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct MasterKey {
    key: [u8; 16],
    salt: [u8; 14],
}

impl MasterKey {
    /// Builds from a 16-byte master key and a 14-byte master salt; `None` on other lengths.
    pub fn new(key: &[u8], salt: &[u8]) -> Option<Self> {
        Some(Self {
            key: key.try_into().ok()?,
            salt: salt.try_into().ok()?,
        })
    }

    /// The master key.
    pub fn key(&self) -> &[u8] {
        &self.key
    }

    /// The master salt.
    pub fn salt(&self) -> &[u8] {
        &self.salt
    }

    /// Master key and master salt at their fixed lengths.
    pub(crate) fn parts(&self) -> (&[u8; 16], &[u8; 14]) {
        (&self.key, &self.salt)
    }
}

impl PartialEq for MasterKey {
    /// Compares without an early exit.
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u8;
        for (a, b) in self
            .key
            .iter()
            .chain(&self.salt)
            .zip(other.key.iter().chain(&other.salt))
        {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl Eq for MasterKey {}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_rfc_4568() {
        let s80 = suite_spec(&SrtpSuite::AesCm128HmacSha1_80).unwrap();
        assert_eq!((s80.key_len, s80.salt_len, s80.tag_len), (16, 14, 10));
        let s32 = suite_spec(&SrtpSuite::AesCm128HmacSha1_32).unwrap();
        assert_eq!(
            (s32.name, s32.tag_len, s32.srtcp_tag_len),
            ("AES_CM_128_HMAC_SHA1_32", 4, 10)
        );
        assert!(suite_spec(&SrtpSuite::Unknown("AEAD_AES_256_GCM".into())).is_none());
        assert!(suite_spec(&SrtpSuite::AesCm256HmacSha1_80).is_none());
        // Every suite the table says sbc runs has a transform here.
        for s in SrtpSuite::supported() {
            assert!(suite_spec(&s).is_some(), "{s:?}");
        }
    }

    #[test]
    fn key_debug_is_redacted() {
        let k = MasterKey::new(&[0xAB; 16], &[0xCD; 14]).unwrap();
        let s = format!("{k:?}");
        assert_eq!(s, "<redacted>");
        assert!(!s.contains("171") && !s.to_lowercase().contains("ab"));
        assert!(MasterKey::new(&[0; 15], &[0; 14]).is_none());
        assert!(MasterKey::new(&[0; 16], &[0; 12]).is_none());
        assert_ne!(k, MasterKey::new(&[0xAB; 16], &[0xCE; 14]).unwrap());
    }
}
