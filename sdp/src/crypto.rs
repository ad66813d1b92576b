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

pub use crate::suite::SrtpSuite;

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
    /// Decoded key||salt (always `Some` for a parsed line: invalid base64 fails the line).
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

/// `base64 = ALPHA / DIGIT / "+" / "/" / "="` (RFC 4568 §9.2).
fn is_base64(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '+' || c == '/' || c == '='
}

/// Longest decimal string read for a lifetime or an MKI value (both fit in 64 bits).
const MAX_DIGITS: usize = 19;
/// Highest lifetime (RFC 3711 §9.2: at most 2^48 SRTP packets per master key).
const MAX_LIFETIME: u64 = 1 << 48;

fn digits(s: &str, max: usize) -> Option<u64> {
    if s.is_empty() || s.len() > max || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// `lifetime = ["2^"] 1*(DIGIT)` (RFC 4568 §9.2), between 1 and 2^48 packets.
fn valid_lifetime(s: &str) -> bool {
    match s.strip_prefix("2^") {
        Some(exp) => digits(exp, 2).is_some_and(|e| e <= 48),
        None => digits(s, MAX_DIGITS).is_some_and(|n| (1..=MAX_LIFETIME).contains(&n)),
    }
}

/// `mki = mki-value ":" mki-length`, `mki-value = 1*DIGIT`, `mki-length = 1*3DIGIT` in
/// 1..=128 (RFC 4568 §9.2).
fn valid_mki(s: &str) -> bool {
    let Some((value, len)) = s.split_once(':') else {
        return false;
    };
    digits(value, MAX_DIGITS).is_some() && digits(len, 3).is_some_and(|l| (1..=128).contains(&l))
}

/// key-params = key-method ":" key-info; for SRTP
/// `key-info = key-salt ["|" lifetime] ["|" mki]` (RFC 4568 §6.1, §9.2). Several key-params are
/// separated by ";". Strict: anything else (an empty or trailing part, a third part, a
/// lifetime after the MKI, characters outside base64 in the key) fails the whole line, which
/// is then kept as an unknown attribute and never chosen.
fn key_param(i: &str) -> IResult<&str, KeyParam> {
    let fail = || nom::Err::Error(nom::error::Error::new(i, nom::error::ErrorKind::Verify));
    let (i, _) = tag("inline:")(i)?;
    let (i, info) = take_while1(|c: char| is_token(c) && c != ';')(i)?;
    let mut parts = info.split('|');
    let b64 = parts.next().unwrap_or_default();
    if b64.is_empty() || !b64.chars().all(is_base64) {
        return Err(fail());
    }
    let mut lifetime = None;
    let mut mki = None;
    for p in parts {
        // The MKI part is the one with a colon (RFC 4568 §6.1: mki-value ":" mki-length);
        // it comes last.
        if mki.is_some() {
            return Err(fail());
        }
        if p.contains(':') {
            if !valid_mki(p) {
                return Err(fail());
            }
            mki = Some(p.to_string());
        } else {
            if lifetime.is_some() || !valid_lifetime(p) {
                return Err(fail());
            }
            lifetime = Some(p.to_string());
        }
    }
    let key_salt = Some(KeySalt::new(LENIENT_B64.decode(b64).map_err(|_| fail())?));
    Ok((
        i,
        KeyParam {
            key_salt,
            lifetime,
            mki,
        },
    ))
}

/// Parses the value of an `a=crypto` attribute (after `crypto:`):
/// `tag 1*WSP crypto-suite 1*WSP key-params *(1*WSP session-param)` with `tag = 1*9DIGIT` and
/// `srtp-crypto-suite = 1*(ALPHA / DIGIT / "_")` (RFC 4568 §9.1, §9.2).
pub(crate) fn parse_crypto(value: &str) -> IResult<&str, CryptoAttribute> {
    let (i, tag_digits) = digit1(value)?;
    if tag_digits.len() > 9 {
        return Err(nom::Err::Error(nom::error::Error::new(
            value,
            nom::error::ErrorKind::TooLarge,
        )));
    }
    let (_, tag_num) = map_res(rest, str::parse::<u32>)(tag_digits)?;
    let (i, _) = space1(i)?;
    let (i, suite) = take_while1(|c: char| c.is_ascii_alphanumeric() || c == '_')(i)?;
    let (i, _) = space1(i)?;
    let (i, keys) = separated_list1(tag(";"), key_param)(i)?;
    let (i, params) = opt(preceded(space1, rest))(i)?;
    if !i.is_empty() {
        // Junk glued to the key parameters (e.g. `inline:KEY|2^20,x`).
        return Err(nom::Err::Error(nom::error::Error::new(
            i,
            nom::error::ErrorKind::Eof,
        )));
    }
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
        if !self.suite.runs() {
            return Some(format!("suite {} is not supported", self.suite.name()));
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

    /// RFC 4568 §9.1/§9.2 grammar: a line with any invalid part does not parse (it is kept as
    /// an unknown attribute by the SDP parser, so it is never the chosen line).
    #[test]
    fn rfc4568_grammar_is_strict() {
        const K: &str = "PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR";
        let ok = |v: &str| parse_crypto(v).is_ok_and(|(r, _)| r.is_empty());
        for good in [
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}"),
            format!("123456789 AES_CM_128_HMAC_SHA1_80 inline:{K}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^31"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1048576"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^20|1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^20|1:128 KDR=0 WSH=64"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^20|1:4;inline:{K}|2^20|2:4"),
        ] {
            assert!(ok(&good), "{good}");
        }
        for bad in [
            format!("1234567890 AES_CM_128_HMAC_SHA1_80 inline:{K}"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}||1:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^20|1:4|"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^20|1:4|x"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:4|2^20"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^20|2^20"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|2^99"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|0"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|abc"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:0"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:129"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|1:1234"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}|x:4"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K}!junk"),
            format!("1 AES_CM_128_HMAC_SHA1_80 inline:{K};"),
            format!("1 AES-CM-128 inline:{K}"),
            "1 AES_CM_128_HMAC_SHA1_80 inline:".to_string(),
            "1 AES_CM_128_HMAC_SHA1_80 inline:A".to_string(),
        ] {
            assert!(!ok(&bad), "{bad}");
        }
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

    use proptest::prelude::*;

    proptest::proptest! {
        /// Valid lines (RFC 4568 §9.1/§9.2 grammar) parse and write back exactly.
        #[test]
        fn valid_lines_round_trip(
            tag_num in 0u32..1_000_000_000,
            suite in proptest::sample::select(vec![
                "AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32",
                "AES_256_CM_HMAC_SHA1_80", "F8_128_HMAC_SHA1_80",
            ]),
            key in proptest::collection::vec(proptest::prelude::any::<u8>(), 30..47),
            lifetime in proptest::option::of(proptest::prop_oneof![
                (1u64..=48).prop_map(|e| format!("2^{e}")),
                (1u64..=(1u64 << 48)).prop_map(|n| n.to_string()),
            ]),
            mki in proptest::option::of((0u64..100_000, 1u32..=128).prop_map(|(v, l)| format!("{v}:{l}"))),
            params in proptest::collection::vec(
                proptest::sample::select(vec!["KDR=0", "WSH=64", "UNENCRYPTED_SRTCP", "FEC_ORDER=FEC_SRTP"]),
                0..3,
            ),
        ) {
            let mut text = format!(
                "{tag_num} {suite} inline:{}",
                base64::engine::general_purpose::STANDARD.encode(&key)
            );
            if let Some(l) = &lifetime {
                text.push_str(&format!("|{l}"));
            }
            if let Some(m) = &mki {
                text.push_str(&format!("|{m}"));
            }
            for p in &params {
                text.push_str(&format!(" {p}"));
            }
            let (rest, c) = parse_crypto(&text).unwrap();
            prop_assert!(rest.is_empty());
            prop_assert_eq!(c.to_string(), text);
        }
    }
}
