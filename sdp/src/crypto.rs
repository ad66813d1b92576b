//! The SDES `a=crypto` attribute (RFC 4568 §9.1) and SRTP key material.

use std::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use nom::bytes::complete::{tag, take_while1};
use nom::character::complete::{digit1, space1};
use nom::combinator::{map_res, opt, rest};
use nom::multi::separated_list1;
use nom::sequence::preceded;
use nom::IResult;
use zeroize::Zeroize;

/// SRTP crypto suites (RFC 4568 §6.2, RFC 6188 §7).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    /// RFC 6188 `AES_256_CM_HMAC_SHA1_80` (also seen spelled `AES_CM_256_HMAC_SHA1_80`).
    AesCm256HmacSha1_80,
    /// RFC 6188 `AES_256_CM_HMAC_SHA1_32` (also `AES_CM_256_HMAC_SHA1_32`).
    AesCm256HmacSha1_32,
    /// Any other suite name, kept as written (e.g. `AEAD_AES_256_GCM`, `F8_128_HMAC_SHA1_80`).
    Unknown(String),
}

impl SrtpSuite {
    /// Reads a suite name; unknown names are kept.
    pub fn from_name(name: &str) -> SrtpSuite {
        match name {
            "AES_CM_128_HMAC_SHA1_80" => SrtpSuite::AesCm128HmacSha1_80,
            "AES_CM_128_HMAC_SHA1_32" => SrtpSuite::AesCm128HmacSha1_32,
            "AES_256_CM_HMAC_SHA1_80" | "AES_CM_256_HMAC_SHA1_80" => SrtpSuite::AesCm256HmacSha1_80,
            "AES_256_CM_HMAC_SHA1_32" | "AES_CM_256_HMAC_SHA1_32" => SrtpSuite::AesCm256HmacSha1_32,
            other => SrtpSuite::Unknown(other.to_string()),
        }
    }

    /// The RFC 4568 / RFC 6188 name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub fn name(&self) -> &str {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 => "AES_CM_128_HMAC_SHA1_80",
            SrtpSuite::AesCm128HmacSha1_32 => "AES_CM_128_HMAC_SHA1_32",
            SrtpSuite::AesCm256HmacSha1_80 => "AES_256_CM_HMAC_SHA1_80",
            SrtpSuite::AesCm256HmacSha1_32 => "AES_256_CM_HMAC_SHA1_32",
            SrtpSuite::Unknown(n) => n,
        }
    }

    /// True for the AES counter-mode suites (the only ones sbc ever negotiates).
    pub fn is_aes_cm(&self) -> bool {
        !matches!(self, SrtpSuite::Unknown(_))
    }

    /// Master key length in bytes (0 for unknown suites).
    pub fn key_len(&self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm128HmacSha1_32 => 16,
            SrtpSuite::AesCm256HmacSha1_80 | SrtpSuite::AesCm256HmacSha1_32 => 32,
            SrtpSuite::Unknown(_) => 0,
        }
    }

    /// Master salt length in bytes (14 for every AES-CM suite, RFC 3711 §8.2).
    pub fn salt_len(&self) -> usize {
        if self.is_aes_cm() {
            14
        } else {
            0
        }
    }

    /// SRTP authentication tag length in bytes (10 or 4).
    pub fn tag_len(&self) -> usize {
        match self {
            SrtpSuite::AesCm128HmacSha1_80 | SrtpSuite::AesCm256HmacSha1_80 => 10,
            SrtpSuite::AesCm128HmacSha1_32 | SrtpSuite::AesCm256HmacSha1_32 => 4,
            SrtpSuite::Unknown(_) => 0,
        }
    }
}

/// SRTP master key followed by master salt. Debug prints `<redacted>`; zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySalt(Vec<u8>, usize);

impl KeySalt {
    /// Builds from key || salt bytes; the salt is the last 14 bytes (RFC 3711 §8.2).
    pub fn new(bytes: Vec<u8>) -> Self {
        let key_len = bytes.len().saturating_sub(14);
        KeySalt(bytes, key_len)
    }

    pub fn key(&self) -> &[u8] {
        &self.0[..self.1]
    }

    pub fn salt(&self) -> &[u8] {
        &self.0[self.1..]
    }

    /// The `inline:` encoding (base64 with padding).
    pub fn to_base64(&self) -> String {
        base64::engine::general_purpose::STANDARD.encode(&self.0)
    }
}

impl Drop for KeySalt {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl fmt::Debug for KeySalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// One `inline:` key parameter (RFC 4568 §9.2): key||salt, optional lifetime and MKI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyParam {
    /// Decoded key||salt; `None` when the base64 was invalid.
    pub key_salt: Option<KeySalt>,
    /// Lifetime as written (`2^31`, `1048576`).
    pub lifetime: Option<String>,
    /// MKI value and length as written (`1:4`).
    pub mki: Option<String>,
}

/// `a=crypto:<tag> <suite> <key-params> [<session-params>]` (RFC 4568 §9.1).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptoAttribute {
    pub tag: u32,
    pub suite: SrtpSuite,
    pub keys: Vec<KeyParam>,
    /// Session parameters as written (`UNENCRYPTED_SRTCP`, `KDR=1`, `WSH=64`, ...).
    pub session_params: Vec<String>,
}

/// Base64 as found in the wild: with or without `=` padding.
const LENIENT_B64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn is_token(c: char) -> bool {
    !c.is_whitespace()
}

/// key-params = key-method ":" key-info; key-info for SRTP = key-salt ["|" lifetime] ["|" mki]
/// (RFC 4568 §6.1, §9.2). Several key-params are separated by ";".
fn key_param(i: &str) -> IResult<&str, KeyParam> {
    let (i, _) = tag("inline:")(i)?;
    let (i, info) = take_while1(|c: char| is_token(c) && c != ';')(i)?;
    let mut parts = info.split('|');
    let b64 = parts.next().unwrap_or_default();
    let mut lifetime = None;
    let mut mki = None;
    for p in parts {
        // The MKI part is the one with a colon (RFC 4568 §6.1: mki-value ":" mki-length).
        if p.contains(':') {
            mki = Some(p.to_string());
        } else {
            lifetime = Some(p.to_string());
        }
    }
    let key_salt = LENIENT_B64.decode(b64).ok().map(KeySalt::new);
    Ok((
        i,
        KeyParam {
            key_salt,
            lifetime,
            mki,
        },
    ))
}

/// Parses the value of an `a=crypto` attribute (after `crypto:`).
pub(crate) fn parse_crypto(value: &str) -> IResult<&str, CryptoAttribute> {
    let (i, tag_num) = map_res(digit1, str::parse::<u32>)(value)?;
    let (i, _) = space1(i)?;
    let (i, suite) = take_while1(is_token)(i)?;
    let (i, _) = space1(i)?;
    let (i, keys) = separated_list1(tag(";"), key_param)(i)?;
    let (i, params) = opt(preceded(space1, rest))(i)?;
    let session_params = params
        .map(|p| p.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    Ok((
        i,
        CryptoAttribute {
            tag: tag_num,
            suite: SrtpSuite::from_name(suite),
            keys,
            session_params,
        },
    ))
}

impl CryptoAttribute {
    /// Why sbc cannot use this line, or `None` when it can (one key, right length, no MKI, no
    /// session parameter that changes the transform; RFC 4568 §6.3: an answerer that does not
    /// understand a session parameter must not accept the line).
    pub fn unusable_reason(&self) -> Option<String> {
        if !self.suite.is_aes_cm() {
            return Some(format!("suite {} is not AES-CM", self.suite.name()));
        }
        if self.keys.len() != 1 {
            return Some(format!(
                "tag {}: several keys (MKI) are not supported",
                self.tag
            ));
        }
        let k = &self.keys[0];
        if k.mki.is_some() {
            return Some(format!("tag {}: MKI is not supported", self.tag));
        }
        match &k.key_salt {
            None => return Some(format!("tag {}: key is not valid base64", self.tag)),
            Some(ks) => {
                let want = self.suite.key_len() + self.suite.salt_len();
                if ks.0.len() != want {
                    return Some(format!(
                        "tag {}: key and salt are {} bytes, {} needs {}",
                        self.tag,
                        ks.0.len(),
                        self.suite.name(),
                        want
                    ));
                }
            }
        }
        for p in &self.session_params {
            let ok = p == "KDR=0" || p.starts_with("WSH=") || p.starts_with("FEC_ORDER=");
            if !ok {
                return Some(format!(
                    "tag {}: session parameter {p} is not supported",
                    self.tag
                ));
            }
        }
        None
    }
}

impl fmt::Display for CryptoAttribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} ", self.tag, self.suite.name())?;
        for (n, k) in self.keys.iter().enumerate() {
            if n > 0 {
                f.write_str(";")?;
            }
            let b64 = k
                .key_salt
                .as_ref()
                .map(KeySalt::to_base64)
                .unwrap_or_default();
            write!(f, "inline:{b64}")?;
            if let Some(l) = &k.lifetime {
                write!(f, "|{l}")?;
            }
            if let Some(m) = &k.mki {
                write!(f, "|{m}")?;
            }
        }
        for p in &self.session_params {
            write!(f, " {p}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc4568_example_with_lifetime_and_mki() {
        // RFC 4568 §10.1 (the offer's first crypto line).
        let (_, c) = parse_crypto(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR|2^20|1:4",
        )
        .unwrap();
        assert_eq!(c.tag, 1);
        assert_eq!(c.suite, SrtpSuite::AesCm128HmacSha1_80);
        assert_eq!(c.keys[0].lifetime.as_deref(), Some("2^20"));
        assert_eq!(c.keys[0].mki.as_deref(), Some("1:4"));
        assert_eq!(c.keys[0].key_salt.as_ref().unwrap().key().len(), 16);
        assert!(c.unusable_reason().unwrap().contains("MKI"));
    }

    #[test]
    fn padding_optional_and_session_params() {
        let (_, c) = parse_crypto(
            "2 AES_CM_128_HMAC_SHA1_32 inline:NzB4d1BINUAvLEw6UzF3WSJ+PSdFcGdUJShpX1Zj UNENCRYPTED_SRTCP",
        )
        .unwrap();
        assert_eq!(c.session_params, vec!["UNENCRYPTED_SRTCP"]);
        assert!(c.unusable_reason().unwrap().contains("UNENCRYPTED_SRTCP"));
        // 30 bytes encode to 40 characters without padding; 29 bytes need one `=`.
        let (_, c) =
            parse_crypto("3 AES_CM_128_HMAC_SHA1_80 inline:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
                .unwrap();
        assert_eq!(c.keys[0].key_salt.as_ref().unwrap().0.len(), 28);
        assert!(c.unusable_reason().unwrap().contains("28 bytes"));
    }

    #[test]
    fn suite_spellings_and_unknowns() {
        assert_eq!(
            SrtpSuite::from_name("AES_CM_256_HMAC_SHA1_80"),
            SrtpSuite::AesCm256HmacSha1_80
        );
        assert_eq!(
            SrtpSuite::from_name("AES_256_CM_HMAC_SHA1_80"),
            SrtpSuite::AesCm256HmacSha1_80
        );
        let g = SrtpSuite::from_name("AEAD_AES_256_GCM");
        assert_eq!(g.name(), "AEAD_AES_256_GCM");
        assert!(!g.is_aes_cm());
        assert_eq!(SrtpSuite::AesCm128HmacSha1_32.tag_len(), 4);
    }

    #[test]
    fn key_material_is_redacted() {
        let k = KeySalt::new(vec![7; 30]);
        assert_eq!(format!("{k:?}"), "<redacted>");
        assert_eq!(k.key().len(), 16);
        assert_eq!(k.salt().len(), 14);
        let (_, c) = parse_crypto(
            "1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR",
        )
        .unwrap();
        assert!(!format!("{c:?}").contains("PS1u"));
    }
}
