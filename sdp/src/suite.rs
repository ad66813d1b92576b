//! sbc's SRTP policy in one place: every SDES suite sbc knows, as data (RFC 4568 §6.2,
//! RFC 6188 §7), and which of them sbc runs.
//!
//! The config (`[srtp] suites`), offer/answer ([`crate::answer_offer`]) and the media core
//! (`srtp-bridge`) all read this table; nothing else spells a suite name or a key length.
//! To allow a suite in the config, offer/answer and the bridge, it must have `runs: true` here
//! (and the bridge must have a transform for it: `srtp-bridge` refuses a row it cannot run).

/// One row of the suite table.
#[derive(Debug, PartialEq, Eq)]
pub struct SuiteSpec {
    /// The typed suite.
    pub suite: SrtpSuite,
    /// RFC 4568 / RFC 6188 name, as written in `a=crypto` and in the config.
    pub name: &'static str,
    /// Other spellings seen in offers (read, never written).
    pub aliases: &'static [&'static str],
    /// Master key length in bytes.
    pub key_len: usize,
    /// Master salt length in bytes (RFC 3711 §8.2: 112 bits for AES-CM).
    pub salt_len: usize,
    /// SRTP authentication tag length in bytes.
    pub tag_len: usize,
    /// SRTCP authentication tag length in bytes (80 bits for every suite here, RFC 4568
    /// §6.2.2 / RFC 3711 §4.2; the `_32` suites shorten only the SRTP tag).
    pub srtcp_tag_len: usize,
    /// sbc negotiates and runs this suite (the config may allow it).
    pub runs: bool,
}

/// SRTP crypto suites (RFC 4568 §6.2, RFC 6188 §7). The data of each is its [`SuiteSpec`] row.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpSuite {
    /// `AES_CM_128_HMAC_SHA1_80` (RFC 4568 §6.2.1).
    AesCm128HmacSha1_80,
    /// `AES_CM_128_HMAC_SHA1_32` (RFC 4568 §6.2.2).
    AesCm128HmacSha1_32,
    /// RFC 6188 `AES_256_CM_HMAC_SHA1_80` (also seen spelled `AES_CM_256_HMAC_SHA1_80`).
    AesCm256HmacSha1_80,
    /// RFC 6188 `AES_256_CM_HMAC_SHA1_32` (also `AES_CM_256_HMAC_SHA1_32`).
    AesCm256HmacSha1_32,
    /// Any other suite name, kept as written (e.g. `AEAD_AES_256_GCM`, `F8_128_HMAC_SHA1_80`).
    Unknown(String),
}

/// Every suite sbc knows, most preferred first among those it runs.
pub static SUITES: [SuiteSpec; 4] = [
    SuiteSpec {
        suite: SrtpSuite::AesCm128HmacSha1_80,
        name: "AES_CM_128_HMAC_SHA1_80",
        aliases: &[],
        key_len: 16,
        salt_len: 14,
        tag_len: 10,
        srtcp_tag_len: 10,
        runs: true,
    },
    SuiteSpec {
        suite: SrtpSuite::AesCm128HmacSha1_32,
        name: "AES_CM_128_HMAC_SHA1_32",
        aliases: &[],
        key_len: 16,
        salt_len: 14,
        tag_len: 4,
        srtcp_tag_len: 10,
        runs: true,
    },
    SuiteSpec {
        suite: SrtpSuite::AesCm256HmacSha1_80,
        name: "AES_256_CM_HMAC_SHA1_80",
        aliases: &["AES_CM_256_HMAC_SHA1_80"],
        key_len: 32,
        salt_len: 14,
        tag_len: 10,
        srtcp_tag_len: 10,
        runs: false,
    },
    SuiteSpec {
        suite: SrtpSuite::AesCm256HmacSha1_32,
        name: "AES_256_CM_HMAC_SHA1_32",
        aliases: &["AES_CM_256_HMAC_SHA1_32"],
        key_len: 32,
        salt_len: 14,
        tag_len: 4,
        srtcp_tag_len: 10,
        runs: false,
    },
];

impl SrtpSuite {
    /// Reads a suite name (exact spelling, RFC 4568 names are case-sensitive); unknown names
    /// are kept.
    pub fn from_name(name: &str) -> SrtpSuite {
        SUITES
            .iter()
            .find(|s| s.name == name || s.aliases.contains(&name))
            .map_or_else(|| SrtpSuite::Unknown(name.to_string()), |s| s.suite.clone())
    }

    /// The suites sbc runs, in table order (the default of `[srtp] suites`).
    pub fn supported() -> impl Iterator<Item = SrtpSuite> {
        SUITES.iter().filter(|s| s.runs).map(|s| s.suite.clone())
    }

    /// This suite's table row; `None` for unknown suites.
    pub fn spec(&self) -> Option<&'static SuiteSpec> {
        SUITES.iter().find(|s| s.suite == *self)
    }

    /// True when sbc negotiates and runs this suite.
    pub fn runs(&self) -> bool {
        self.spec().is_some_and(|s| s.runs)
    }

    /// The RFC 4568 / RFC 6188 name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub fn name(&self) -> &str {
        match self {
            SrtpSuite::Unknown(n) => n,
            known => known.spec().map_or("", |s| s.name),
        }
    }

    /// True for the AES counter-mode suites of the table.
    pub fn is_aes_cm(&self) -> bool {
        self.spec().is_some()
    }

    /// Master key length in bytes (0 for unknown suites).
    pub fn key_len(&self) -> usize {
        self.spec().map_or(0, |s| s.key_len)
    }

    /// Master salt length in bytes (0 for unknown suites).
    pub fn salt_len(&self) -> usize {
        self.spec().map_or(0, |s| s.salt_len)
    }

    /// SRTP authentication tag length in bytes (0 for unknown suites).
    pub fn tag_len(&self) -> usize {
        self.spec().map_or(0, |s| s.tag_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_matches_rfc_4568_and_rfc_6188() {
        // RFC 4568 §6.2.1 / §6.2.2: 128-bit key, 112-bit salt, 80- or 32-bit SRTP tag and an
        // 80-bit SRTCP tag for both; RFC 6188 §7: 256-bit key, same salt and tags.
        let row = |s: SrtpSuite| {
            let r = s.spec().unwrap();
            (r.key_len, r.salt_len, r.tag_len, r.srtcp_tag_len, r.runs)
        };
        assert_eq!(row(SrtpSuite::AesCm128HmacSha1_80), (16, 14, 10, 10, true));
        assert_eq!(row(SrtpSuite::AesCm128HmacSha1_32), (16, 14, 4, 10, true));
        assert_eq!(row(SrtpSuite::AesCm256HmacSha1_80), (32, 14, 10, 10, false));
        assert_eq!(row(SrtpSuite::AesCm256HmacSha1_32), (32, 14, 4, 10, false));
        for s in &SUITES {
            assert_eq!(SrtpSuite::from_name(s.name), s.suite);
            assert_eq!(s.suite.name(), s.name);
        }
        assert_eq!(
            SrtpSuite::supported().collect::<Vec<_>>(),
            [
                SrtpSuite::AesCm128HmacSha1_80,
                SrtpSuite::AesCm128HmacSha1_32
            ]
        );
        let g = SrtpSuite::from_name("AEAD_AES_256_GCM");
        assert!(g.spec().is_none() && !g.runs() && g.key_len() == 0);
        assert_eq!(g.name(), "AEAD_AES_256_GCM");
    }
}
