//! SRTP suites as a data table (RFC 4568 §6.2) and master keys that cannot be printed.

use sdp::SrtpSuite;
use webrtc_srtp::protection_profile::ProtectionProfile;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// One row of the suite table: what a negotiated `a=crypto` suite means for the crypto layer.
#[derive(Debug)]
pub struct SuiteSpec {
    /// RFC 4568 name.
    pub name: &'static str,
    /// Master key length in bytes.
    pub key_len: usize,
    /// Master salt length in bytes.
    pub salt_len: usize,
    /// SRTP authentication tag length in bytes.
    pub tag_len: usize,
    /// SRTCP authentication tag length in bytes (always 80 bits for these suites, RFC 4568
    /// §6.2.2 / RFC 3711 §4.2).
    pub srtcp_tag_len: usize,
    pub(crate) profile: ProtectionProfile,
}

/// The suites sbc can run, most preferred first.
pub static SUITES: [SuiteSpec; 2] = [
    SuiteSpec {
        name: "AES_CM_128_HMAC_SHA1_80",
        key_len: 16,
        salt_len: 14,
        tag_len: 10,
        srtcp_tag_len: 10,
        profile: ProtectionProfile::Aes128CmHmacSha1_80,
    },
    SuiteSpec {
        name: "AES_CM_128_HMAC_SHA1_32",
        key_len: 16,
        salt_len: 14,
        tag_len: 4,
        srtcp_tag_len: 10,
        profile: ProtectionProfile::Aes128CmHmacSha1_32,
    },
];

/// The table row for a negotiated suite, `None` if sbc cannot run it.
pub fn suite_spec(suite: &SrtpSuite) -> Option<&'static SuiteSpec> {
    match suite {
        SrtpSuite::AesCm128HmacSha1_80 => Some(&SUITES[0]),
        SrtpSuite::AesCm128HmacSha1_32 => Some(&SUITES[1]),
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
