//! HTTP digest authentication, client side, as SIP uses it (RFC 3261 §22.4): parse a
//! `WWW-Authenticate` / `Proxy-Authenticate` challenge, compute the response, write the
//! `Authorization` / `Proxy-Authorization` value.
//!
//! Algorithms: `MD5`, `MD5-sess` (RFC 2617 §3.2.2.2), `SHA-256`, `SHA-256-sess` (RFC 7616 §3.4.2);
//! `qop=auth` (RFC 2617 §3.2.2.1) and the RFC 2069 form without qop. Not supported: `auth-int`
//! (no carrier we know asks for it), `userhash` (RFC 7616 §3.4.4), SHA-512-256.
//!
//! Pure: the client nonce comes from an injected RNG, the nonce count from the caller.

use std::fmt;

use md5::Md5;
use rand::RngCore;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

/// A digest password. Debug prints `<redacted>`; the bytes are zeroized on drop.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    pub fn new(secret: impl Into<String>) -> Password {
        Password(Zeroizing::new(secret.into()))
    }
    fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Username and password for one trunk.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub username: String,
    pub password: Password,
}

/// The hash of a challenge (RFC 7616 §6.1 registry, the ones sbc implements).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    Md5,
    Md5Sess,
    Sha256,
    Sha256Sess,
}

impl Algorithm {
    /// The token as written in headers; matching is case-insensitive (RFC 7616 §3.3).
    pub fn from_token(s: &str) -> Option<Algorithm> {
        [
            Algorithm::Md5,
            Algorithm::Md5Sess,
            Algorithm::Sha256,
            Algorithm::Sha256Sess,
        ]
        .into_iter()
        .find(|a| a.name().eq_ignore_ascii_case(s))
    }
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Md5 => "MD5",
            Algorithm::Md5Sess => "MD5-sess",
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Sha256Sess => "SHA-256-sess",
        }
    }
    fn is_sess(self) -> bool {
        matches!(self, Algorithm::Md5Sess | Algorithm::Sha256Sess)
    }
    /// Lower-case hex of the hash (RFC 7616 §3.4.1 `H(data)`).
    fn hash(self, data: &str) -> String {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => hex(&Md5::digest(data.as_bytes())),
            Algorithm::Sha256 | Algorithm::Sha256Sess => hex(&Sha256::digest(data.as_bytes())),
        }
    }
    /// Preference when several challenges come (RFC 7616 §3.7: the client uses the first one it
    /// supports; we prefer the stronger hash when a server offers both).
    fn strength(self) -> u8 {
        match self {
            Algorithm::Md5 | Algorithm::Md5Sess => 1,
            Algorithm::Sha256 | Algorithm::Sha256Sess => 2,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Why a challenge cannot be answered.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DigestError {
    /// The scheme is not `Digest` (e.g. `Basic`, which SIP forbids: RFC 3261 §22.1).
    #[error("authentication scheme {0:?} is not Digest")]
    NotDigest(String),
    /// A parameter list that does not follow `auth-param *("," auth-param)` (RFC 7235 §2.1).
    #[error("malformed challenge at byte {offset}: {reason}")]
    Malformed { offset: usize, reason: &'static str },
    /// `realm` or `nonce` missing (both are required, RFC 2617 §3.2.1).
    #[error("challenge without {0}")]
    Missing(&'static str),
    /// An algorithm sbc does not implement.
    #[error("unsupported digest algorithm {0:?}")]
    UnsupportedAlgorithm(String),
    /// A `qop` list without `auth` (only `auth-int` or unknown values).
    #[error("unsupported qop {0:?} (only auth is implemented)")]
    UnsupportedQop(String),
    /// None of the challenges in the response can be answered.
    #[error("no usable challenge in the response")]
    NoChallenge,
}

/// A parsed `Digest` challenge (RFC 2617 §3.2.1, RFC 7616 §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub nonce: String,
    pub opaque: Option<String>,
    pub algorithm: Algorithm,
    /// `true` when the server offered `qop=auth` (then we answer with qop=auth, cnonce and nc).
    pub qop_auth: bool,
    /// `stale=true`: the nonce expired but the credentials were right (RFC 2617 §3.2.1).
    pub stale: bool,
}

/// Splits `auth-param` lists: `name=token` or `name="quoted \" string"`, comma-separated.
fn auth_params(s: &str, base: usize) -> Result<Vec<(String, String)>, DigestError> {
    let b = s.as_bytes();
    let mut i = 0;
    let mut out = Vec::new();
    let err = |at: usize, reason| DigestError::Malformed {
        offset: base + at,
        reason,
    };
    loop {
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t' || b[i] == b',') {
            i += 1;
        }
        if i >= b.len() {
            return Ok(out);
        }
        let start = i;
        while i < b.len() && (b[i].is_ascii_alphanumeric() || b"-_.".contains(&b[i])) {
            i += 1;
        }
        if i == start {
            return Err(err(i, "expected a parameter name"));
        }
        let name = s[start..i].to_ascii_lowercase();
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= b.len() || b[i] != b'=' {
            return Err(err(i, "expected '=' after a parameter name"));
        }
        i += 1;
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        let mut value = String::new();
        if i < b.len() && b[i] == b'"' {
            // quoted-string with quoted-pair (RFC 7230 §3.2.6).
            i += 1;
            loop {
                let Some(&c) = b.get(i) else {
                    return Err(err(i, "unterminated quoted string"));
                };
                match c {
                    b'"' => {
                        i += 1;
                        break;
                    }
                    b'\\' if i + 1 < b.len() => {
                        value.push(b[i + 1] as char);
                        i += 2;
                    }
                    _ => {
                        // Push whole UTF-8 characters.
                        let ch = s[i..].chars().next().unwrap_or('\u{fffd}');
                        value.push(ch);
                        i += ch.len_utf8();
                    }
                }
            }
        } else {
            let vstart = i;
            while i < b.len() && b[i] != b',' && b[i] != b' ' && b[i] != b'\t' {
                i += 1;
            }
            value.push_str(&s[vstart..i]);
        }
        out.push((name, value));
        while i < b.len() && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i < b.len() && b[i] != b',' {
            return Err(err(i, "expected ',' between parameters"));
        }
    }
}

impl Challenge {
    /// Parses one header value, e.g. `Digest realm="sip.twilio.com", nonce="...", qop="auth"`.
    pub fn parse(value: &str) -> Result<Challenge, DigestError> {
        let trimmed = value.trim_start();
        let lead = value.len() - trimmed.len();
        let (scheme, rest) = trimmed.split_once([' ', '\t']).unwrap_or((trimmed, ""));
        if !scheme.eq_ignore_ascii_case("Digest") {
            return Err(DigestError::NotDigest(scheme.to_string()));
        }
        let params = auth_params(rest, lead + scheme.len() + 1)?;
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let realm = get("realm").ok_or(DigestError::Missing("realm"))?;
        let nonce = get("nonce").ok_or(DigestError::Missing("nonce"))?;
        let algorithm = match get("algorithm") {
            None => Algorithm::Md5,
            Some(a) => Algorithm::from_token(&a).ok_or(DigestError::UnsupportedAlgorithm(a))?,
        };
        let qop_auth = match get("qop") {
            None => false,
            Some(q) => {
                if q.split(',').any(|t| t.trim().eq_ignore_ascii_case("auth")) {
                    true
                } else {
                    return Err(DigestError::UnsupportedQop(q));
                }
            }
        };
        let stale = get("stale").is_some_and(|s| s.eq_ignore_ascii_case("true"));
        Ok(Challenge {
            realm,
            nonce,
            opaque: get("opaque"),
            algorithm,
            qop_auth,
            stale,
        })
    }

    /// The challenge to answer among several header values: the strongest hash that parses.
    pub fn choose<'a>(values: impl IntoIterator<Item = &'a str>) -> Result<Challenge, DigestError> {
        let mut best: Option<Challenge> = None;
        let mut last_err = DigestError::NoChallenge;
        for v in values {
            match Challenge::parse(v) {
                Ok(c) => {
                    if best
                        .as_ref()
                        .is_none_or(|b| c.algorithm.strength() > b.algorithm.strength())
                    {
                        best = Some(c);
                    }
                }
                Err(e) => last_err = e,
            }
        }
        best.ok_or(last_err)
    }

    /// Computes the response for `method` and `uri` (the Request-URI, RFC 3261 §22.4) with nonce
    /// count `nc` and a fresh 128-bit client nonce from `rng`.
    pub fn authorize(
        &self,
        creds: &Credentials,
        method: &str,
        uri: &str,
        nc: u32,
        rng: &mut dyn RngCore,
    ) -> Authorization {
        let mut raw = [0u8; 16];
        rng.fill_bytes(&mut raw);
        self.authorize_with_cnonce(creds, method, uri, nc, &hex(&raw))
    }

    /// [`Challenge::authorize`] with a given client nonce (test vectors).
    pub fn authorize_with_cnonce(
        &self,
        creds: &Credentials,
        method: &str,
        uri: &str,
        nc: u32,
        cnonce: &str,
    ) -> Authorization {
        let h = |d: &str| self.algorithm.hash(d);
        // A1 (RFC 2617 §3.2.2.2, RFC 7616 §3.4.2). The secret only lives in these buffers.
        let a1 = Zeroizing::new(format!(
            "{}:{}:{}",
            creds.username,
            self.realm,
            creds.password.expose()
        ));
        let mut ha1 = Zeroizing::new(h(&a1));
        if self.algorithm.is_sess() {
            ha1 = Zeroizing::new(h(&format!("{}:{}:{cnonce}", *ha1, self.nonce)));
        }
        // A2 for qop=auth or no qop (RFC 2617 §3.2.2.3).
        let ha2 = h(&format!("{method}:{uri}"));
        let nc_hex = format!("{nc:08x}");
        let response = if self.qop_auth {
            h(&format!(
                "{}:{}:{nc_hex}:{cnonce}:auth:{ha2}",
                *ha1, self.nonce
            ))
        } else {
            // RFC 2069 compatibility (RFC 2617 §3.2.2.1).
            h(&format!("{}:{}:{ha2}", *ha1, self.nonce))
        };
        Authorization {
            username: creds.username.clone(),
            realm: self.realm.clone(),
            nonce: self.nonce.clone(),
            uri: uri.to_string(),
            response,
            algorithm: self.algorithm,
            opaque: self.opaque.clone(),
            qop: (self.qop_auth || self.algorithm.is_sess()).then(|| (cnonce.to_string(), nc_hex)),
            qop_auth: self.qop_auth,
        }
    }
}

/// The credentials to send (RFC 2617 §3.2.2). `Display` writes the header value.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authorization {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    /// Hex digest; not a secret by itself (a replay needs the nonce to be still valid).
    pub response: String,
    pub algorithm: Algorithm,
    pub opaque: Option<String>,
    /// `(cnonce, nc)` when sent.
    qop: Option<(String, String)>,
    qop_auth: bool,
}

/// quoted-string (RFC 7230 §3.2.6): `"` and `\` escaped.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        // Control characters cannot appear in a header value.
        if !c.is_control() {
            out.push(c);
        }
    }
    out.push('"');
    out
}

impl fmt::Display for Authorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Digest username={}, realm={}, nonce={}, uri={}, response={}, algorithm={}",
            quote(&self.username),
            quote(&self.realm),
            quote(&self.nonce),
            quote(&self.uri),
            quote(&self.response),
            self.algorithm.name()
        )?;
        if let Some((cnonce, nc)) = &self.qop {
            write!(f, ", cnonce={}", quote(cnonce))?;
            if self.qop_auth {
                write!(f, ", qop=auth, nc={nc}")?;
            }
        }
        if let Some(o) = &self.opaque {
            write!(f, ", opaque={}", quote(o))?;
        }
        Ok(())
    }
}

/// Which header carries the answer to a challenge in a response with this status: 407 →
/// `Proxy-Authenticate` / `Proxy-Authorization`, 401 → `WWW-Authenticate` / `Authorization`
/// (RFC 3261 §22.2, §22.3).
pub fn header_names(status: u16) -> Option<(&'static str, &'static str)> {
    match status {
        401 => Some(("WWW-Authenticate", "Authorization")),
        407 => Some(("Proxy-Authenticate", "Proxy-Authorization")),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn creds(user: &str, pass: &str) -> Credentials {
        Credentials {
            username: user.into(),
            password: Password::new(pass),
        }
    }

    /// RFC 2617 §3.5: the worked example (MD5, qop=auth).
    #[test]
    fn rfc2617_section_3_5_vector() {
        let c = Challenge::parse(
            r#"Digest realm="testrealm@host.com", qop="auth,auth-int", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41""#,
        )
        .unwrap();
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert!(c.qop_auth);
        let a = c.authorize_with_cnonce(
            &creds("Mufasa", "Circle Of Life"),
            "GET",
            "/dir/index.html",
            1,
            "0a4f113b",
        );
        assert_eq!(a.response, "6629fae49393a05397450978507c4ef1");
        let text = a.to_string();
        assert!(text.contains(r#"username="Mufasa""#));
        assert!(text.contains("qop=auth, nc=00000001"));
        assert!(text.contains(r#"cnonce="0a4f113b""#));
        assert!(text.contains(r#"opaque="5ccc069c403ebaf9f0171e9517f40e41""#));
    }

    /// RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
    #[test]
    fn rfc7616_section_3_9_1_vectors() {
        let cases = [
            ("MD5", "8ca523f5e9506fed4657c9700eebdbec"),
            (
                "SHA-256",
                "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
            ),
        ];
        for (alg, expected) in cases {
            let header = format!(
                r#"Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm={alg}, nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS""#
            );
            let c = Challenge::parse(&header).unwrap();
            let a = c.authorize_with_cnonce(
                &creds("Mufasa", "Circle of Life"),
                "GET",
                "/dir/index.html",
                1,
                "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
            );
            assert_eq!(a.response, expected, "{alg}");
            assert!(a.to_string().contains(&format!("algorithm={alg}")));
        }
    }

    /// Challenges that cannot be answered, each with the error that says why.
    #[test]
    fn refused_challenges() {
        let cases: &[(&str, DigestError)] = &[
            (r#"Basic realm="x""#, DigestError::NotDigest("Basic".into())),
            (r#"Digest nonce="n""#, DigestError::Missing("realm")),
            (r#"Digest realm="r""#, DigestError::Missing("nonce")),
            (
                r#"Digest realm="r", nonce="n", algorithm=SHA-512-256"#,
                DigestError::UnsupportedAlgorithm("SHA-512-256".into()),
            ),
            (
                r#"Digest realm="r", nonce="n", qop="auth-int""#,
                DigestError::UnsupportedQop("auth-int".into()),
            ),
        ];
        for (header, err) in cases {
            assert_eq!(&Challenge::parse(header).unwrap_err(), err, "{header}");
        }
        assert!(matches!(
            Challenge::parse(r#"Digest realm="unterminated"#),
            Err(DigestError::Malformed { .. })
        ));
        assert!(matches!(
            Challenge::parse(r#"Digest realm"#),
            Err(DigestError::Malformed { .. })
        ));
    }

    #[test]
    fn quoted_pairs_case_and_stale() {
        let c =
            Challenge::parse("digest REALM=\"a\\\"b\" ,NONCE=abc, algorithm=md5-SESS, stale=TRUE")
                .unwrap();
        assert_eq!(c.realm, "a\"b");
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.algorithm, Algorithm::Md5Sess);
        assert!(c.stale);
        assert!(!c.qop_auth);
    }

    /// Without qop the RFC 2069 form: no cnonce, no nc (RFC 2617 §3.2.2.1), computed by hand:
    /// MD5(MD5("u:r:p") ":" "n" ":" MD5("INVITE:sip:x@y")).
    #[test]
    fn rfc2069_form_without_qop() {
        let c = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        let a = c.authorize_with_cnonce(&creds("u", "p"), "INVITE", "sip:x@y", 1, "c");
        let ha1 = Algorithm::Md5.hash("u:r:p");
        let ha2 = Algorithm::Md5.hash("INVITE:sip:x@y");
        assert_eq!(a.response, Algorithm::Md5.hash(&format!("{ha1}:n:{ha2}")));
        let text = a.to_string();
        assert!(!text.contains("cnonce"));
        assert!(!text.contains("nc="));
    }

    /// MD5-sess: HA1 = MD5(MD5(user:realm:pass) ":" nonce ":" cnonce) (RFC 2617 §3.2.2.2).
    #[test]
    fn md5_sess() {
        let c = Challenge::parse(r#"Digest realm="r", nonce="n", qop=auth, algorithm=MD5-sess"#)
            .unwrap();
        let a = c.authorize_with_cnonce(&creds("u", "p"), "INVITE", "sip:x@y", 2, "c");
        let h = |s: &str| Algorithm::Md5.hash(s);
        let ha1 = h(&format!("{}:n:c", h("u:r:p")));
        let ha2 = h("INVITE:sip:x@y");
        assert_eq!(a.response, h(&format!("{ha1}:n:00000002:c:auth:{ha2}")));
    }

    #[test]
    fn choose_prefers_sha256_and_cnonce_comes_from_the_rng() {
        let values = [
            r#"Digest realm="r", nonce="n1", qop="auth", algorithm=MD5"#,
            r#"Digest realm="r", nonce="n2", qop="auth", algorithm=SHA-256"#,
            r#"Basic realm="r""#,
        ];
        let c = Challenge::choose(values).unwrap();
        assert_eq!(c.algorithm, Algorithm::Sha256);
        assert_eq!(c.nonce, "n2");
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        let a1 = c.authorize(&creds("u", "p"), "INVITE", "sip:x@y", 1, &mut rng);
        let a2 = c.authorize(&creds("u", "p"), "INVITE", "sip:x@y", 1, &mut rng);
        assert_ne!(a1.response, a2.response, "fresh cnonce each time");
        assert_eq!(
            Challenge::choose([r#"Basic realm="r""#]).unwrap_err(),
            DigestError::NotDigest("Basic".into())
        );
        assert_eq!(
            Challenge::choose(std::iter::empty()).unwrap_err(),
            DigestError::NoChallenge
        );
    }

    #[test]
    fn password_is_redacted_and_values_are_quoted() {
        let c = creds("us\"er", "hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(format!("{:?}", c.password).contains("<redacted>"));
        let ch = Challenge::parse(r#"Digest realm="r", nonce="n""#).unwrap();
        let a = ch.authorize_with_cnonce(&c, "BYE", "sip:a@b", 1, "x");
        assert!(a.to_string().contains(r#"username="us\"er""#));
        assert!(!a.to_string().contains("hunter2"));
        assert_eq!(
            header_names(407),
            Some(("Proxy-Authenticate", "Proxy-Authorization"))
        );
        assert_eq!(
            header_names(401),
            Some(("WWW-Authenticate", "Authorization"))
        );
        assert_eq!(header_names(403), None);
    }
}
