//! Raw layer to typed values, once. Every refusal names the file, and the line and column of the
//! offending value when the file has one (a key left out has no position: the message names the
//! key instead).

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::raw::{self, S};
use super::*;

/// The six TLS 1.2 suites the policy allows, in the default preference order.
pub(crate) const DEFAULT_TLS12_SUITES: [Tls12Suite; 6] = [
    Tls12Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    Tls12Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    Tls12Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    Tls12Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    Tls12Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    Tls12Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
];

/// Headers copied into the agent's `customParameters` by default (Twilio's call identifiers).
const DEFAULT_PASSTHROUGH: [&str; 3] = ["X-Twilio-CallSid", "P-Asserted-Identity", "Diversion"];
const DEFAULT_ACCOUNT_SID: &str = "ACsbc00000000000000000000000000000";
const DEFAULT_AUDIT_PATH: &str = "/var/log/sbc/audit.jsonl";

/// Where errors point: the file's path (as given) and its text, for line/column.
pub(crate) struct Ctx<'a> {
    pub path: &'a Path,
    pub text: &'a str,
    /// Relative paths in the file resolve against this directory.
    pub base: PathBuf,
}

impl Ctx<'_> {
    /// `file:line:column: msg`, column counted in characters, both 1-based.
    pub(crate) fn at(&self, span: Range<usize>, msg: impl std::fmt::Display) -> ConfigError {
        let (line, col) = line_col(self.text, span.start);
        ConfigError(format!("{}:{line}:{col}: {msg}", self.path.display()))
    }

    /// At the value's position if it is in the file, else `file: msg`.
    fn at_opt(&self, span: Option<Range<usize>>, msg: impl std::fmt::Display) -> ConfigError {
        match span {
            Some(s) => self.at(s, msg),
            None => ConfigError(format!("{}: {msg}", self.path.display())),
        }
    }

    fn file(&self, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{}: {msg}", self.path.display()))
    }

    fn resolve(&self, p: &S<String>, key: &str) -> Result<PathBuf, ConfigError> {
        if p.get_ref().trim().is_empty() {
            return Err(self.at(p.span(), format!("{key}: empty path")));
        }
        let path = Path::new(p.get_ref());
        Ok(if path.is_absolute() {
            path.to_path_buf()
        } else {
            self.base.join(path)
        })
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    // Spans from the TOML parser fall on character boundaries; floor defensively anyway.
    let mut o = offset;
    while !text.is_char_boundary(o) {
        o -= 1;
    }
    let before = &text[..o];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// A value from the file, or its default (with no position).
fn val<T: Clone>(v: &Option<S<T>>, default: T) -> (T, Option<Range<usize>>) {
    match v {
        Some(s) => (s.get_ref().clone(), Some(s.span())),
        None => (default, None),
    }
}

fn ms(ctx: &Ctx, v: &Option<S<u64>>, default: u64, key: &str) -> Result<Duration, ConfigError> {
    let (n, span) = val(v, default);
    if n == 0 {
        return Err(ctx.at_opt(span, format!("{key} must be greater than 0")));
    }
    Ok(Duration::from_millis(n))
}

fn secs(ctx: &Ctx, v: &Option<S<u64>>, default: u64, key: &str) -> Result<Duration, ConfigError> {
    let (n, span) = val(v, default);
    if n == 0 {
        return Err(ctx.at_opt(span, format!("{key} must be greater than 0")));
    }
    Ok(Duration::from_secs(n))
}

/// A listener's `min_version`: "1.2" (the default) or "1.3".
fn min_version(ctx: &Ctx, v: &Option<S<String>>, key: &str) -> Result<TlsVersion, ConfigError> {
    match v.as_ref().map(|v| (v.get_ref().as_str(), v.span())) {
        None | Some(("1.2", _)) => Ok(TlsVersion::Tls12),
        Some(("1.3", _)) => Ok(TlsVersion::Tls13),
        Some((other, span)) => Err(ctx.at(
            span,
            format!("{key}: {other:?} is not allowed; use \"1.2\" or \"1.3\""),
        )),
    }
}

fn positive<T: Copy + PartialEq + Default + std::fmt::Display>(
    ctx: &Ctx,
    v: &Option<S<T>>,
    default: T,
    key: &str,
) -> Result<T, ConfigError> {
    let (n, span) = val(v, default);
    if n == T::default() {
        return Err(ctx.at_opt(span, format!("{key} must be greater than 0")));
    }
    Ok(n)
}

fn usize_of(ctx: &Ctx, v: &Option<S<u64>>, default: u64, key: &str) -> Result<usize, ConfigError> {
    let n = positive(ctx, v, default, key)?;
    usize::try_from(n)
        .map_err(|_| ctx.at_opt(v.as_ref().map(|s| s.span()), format!("{key} is too large")))
}

/// A list of Twilio Account SIDs: each one well-formed, none twice. `owner` starts the error
/// ("carrier \"twilio\"", "trunk \"out\"").
fn account_sid_list(
    ctx: &Ctx,
    sids: &[S<String>],
    owner: &str,
) -> Result<Vec<String>, ConfigError> {
    for sid in sids {
        if !is_account_sid(sid.get_ref()) {
            return Err(ctx.at(
                sid.span(),
                format!(
                    "{owner}: {:?} is not a Twilio Account SID (\"AC\" followed by 32 hex digits)",
                    sid.get_ref()
                ),
            ));
        }
    }
    no_duplicates(ctx, sids, "account SID", |s| s.to_string())?;
    Ok(sids.iter().map(|s| s.get_ref().clone()).collect())
}

/// Refuses duplicates in a list of spanned strings (compared as `key` maps them).
fn no_duplicates(
    ctx: &Ctx,
    items: &[S<String>],
    what: &str,
    key: impl Fn(&str) -> String,
) -> Result<(), ConfigError> {
    let mut seen = HashSet::new();
    for it in items {
        if !seen.insert(key(it.get_ref())) {
            return Err(ctx.at(
                it.span(),
                format!("{what} {:?} is listed twice", it.get_ref()),
            ));
        }
    }
    Ok(())
}

pub(crate) fn convert(ctx: &Ctx, raw: raw::RawConfig) -> Result<Config, ConfigError> {
    let tls_raw = raw.tls.ok_or_else(|| {
        ctx.file(
            "missing section [tls]: set certificate and private_key, or dev_self_signed = true",
        )
    })?;
    let sip = sip(ctx, raw.sip.unwrap_or_default())?;
    let tls = tls(ctx, tls_raw, &sip)?;
    let carriers = carriers(ctx, raw.carriers, tls.client_ca.is_some())?;
    let trunks = trunks(ctx, raw.trunks)?;
    let media = media(
        ctx,
        raw.media.ok_or_else(|| {
            ctx.file("missing section [media] (media.advertise_address is required)")
        })?,
    )?;
    let srtp = srtp(ctx, raw.srtp.unwrap_or_default())?;
    let agent = agent(
        ctx,
        raw.agent.ok_or_else(|| {
            ctx.file("missing section [agent] (at least one [[agent.routes]] is required)")
        })?,
    )?;
    let audit = audit(ctx, raw.audit.unwrap_or_default())?;
    let metrics = raw.metrics.map(|m| metrics(ctx, m)).transpose()?;
    let limits = limits(ctx, raw.limits.unwrap_or_default())?;
    let log = log(ctx, raw.log.unwrap_or_default())?;
    let api = raw.api.map(|a| api(ctx, a, &tls)).transpose()?;
    let cluster = raw.cluster.map(|c| cluster(ctx, c)).transpose()?;
    for (name, _) in cluster.iter().flat_map(|c| &c.carrier_limits) {
        if !carriers.iter().any(|c| &c.name == name) {
            return Err(ctx.file(format!(
                "cluster.carrier_limits names {name:?}, which is not one of [[carriers]]"
            )));
        }
    }
    for (sid, _) in cluster.iter().flat_map(|c| &c.account_limits) {
        if !api.iter().flat_map(|a| &a.accounts).any(|a| &a.sid == sid) {
            return Err(ctx.file(format!(
                "cluster.account_limits names {sid:?}, which is not one of [[api.accounts]]"
            )));
        }
    }
    for r in &agent.routes {
        if let (Some(sid), Some(api)) = (&r.account_sid, &api) {
            if !api.accounts.iter().any(|a| &a.sid == sid) {
                return Err(ctx.file(format!(
                    "agent.routes.account_sid {sid:?} is not one of [[api.accounts]]"
                )));
            }
        }
        if let Some(cb) = &r.status_callback {
            if r.account_sid.is_none() || api.is_none() {
                return Err(ctx.file(format!(
                    "agent.routes.status_callback {:?} needs the route's account_sid and [api] with that account (its auth token signs the callbacks)",
                    cb.url
                )));
            }
        }
    }
    Ok(Config {
        path: ctx.path.to_path_buf(),
        sip,
        tls,
        carriers,
        trunks,
        media,
        srtp,
        agent,
        audit,
        metrics,
        limits,
        log,
        api,
        cluster,
    })
}

fn sip(ctx: &Ctx, r: raw::RawSip) -> Result<SipConfig, ConfigError> {
    let listen = match &r.listen {
        None => vec![
            SocketAddr::from(([0, 0, 0, 0], 5061)),
            SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 5061)),
        ],
        Some(l) => {
            if l.get_ref().is_empty() {
                return Err(ctx.at(
                    l.span(),
                    "sip.listen is empty: give at least one address like \"0.0.0.0:5061\"",
                ));
            }
            no_duplicates(ctx, l.get_ref(), "listen address", |s| s.to_string())?;
            l.get_ref()
                .iter()
                .map(|a| {
                    a.get_ref().parse::<SocketAddr>().map_err(|_| {
                        ctx.at(
                            a.span(),
                            format!(
                                "sip.listen: {:?} is not an IP address and port (e.g. \"0.0.0.0:5061\" or \"[::]:5061\")",
                                a.get_ref()
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let host = match &r.host {
        Some(h) => {
            let s = h.get_ref();
            if !valid_host(s) {
                return Err(ctx.at(
                    h.span(),
                    format!("sip.host: {s:?} is not an IP address or DNS name"),
                ));
            }
            s.clone()
        }
        None => {
            // A trial on loopback may leave it out; anything reachable from outside must say which
            // name carriers reach it by.
            if listen.iter().all(|a| a.ip().is_loopback()) {
                listen[0].ip().to_string()
            } else {
                return Err(ctx.file(
                    "sip.host is required: the host name or IP address carriers reach sbc at (written in Contact and Via)",
                ));
            }
        }
    };
    let server_header = match &r.server_header {
        None => None,
        Some(h) => {
            let s = h.get_ref();
            if s.trim().is_empty() || s.chars().any(|c| c.is_control()) {
                return Err(ctx.at(
                    h.span(),
                    "sip.server_header must be non-empty printable text without line breaks (omit the key to send no Server header)",
                ));
            }
            Some(s.clone())
        }
    };
    let t1 = ms(ctx, &r.t1_ms, 500, "sip.t1_ms")?;
    let t2 = ms(ctx, &r.t2_ms, 4000, "sip.t2_ms")?;
    let t4 = ms(ctx, &r.t4_ms, 5000, "sip.t4_ms")?;
    if t2 < t1 {
        return Err(ctx.at_opt(
            r.t2_ms.as_ref().or(r.t1_ms.as_ref()).map(|s| s.span()),
            format!(
                "sip.t2_ms ({}) must not be lower than sip.t1_ms ({})",
                t2.as_millis(),
                t1.as_millis()
            ),
        ));
    }
    let ringing_after = ms(ctx, &r.ringing_after_ms, 1000, "sip.ringing_after_ms")?;
    let session_expires = secs(
        ctx,
        &r.session_expires_secs,
        1800,
        "sip.session_expires_secs",
    )?;
    let min_se = secs(ctx, &r.min_se_secs, 90, "sip.min_se_secs")?;
    if min_se < Duration::from_secs(90) {
        return Err(ctx.at_opt(
            r.min_se_secs.as_ref().map(|s| s.span()),
            "sip.min_se_secs must be at least 90 (RFC 4028 section 4)",
        ));
    }
    if session_expires < min_se {
        return Err(ctx.at_opt(
            r.session_expires_secs
                .as_ref()
                .or(r.min_se_secs.as_ref())
                .map(|s| s.span()),
            format!(
                "sip.session_expires_secs ({}) must not be lower than sip.min_se_secs ({})",
                session_expires.as_secs(),
                min_se.as_secs()
            ),
        ));
    }
    Ok(SipConfig {
        listen,
        host,
        server_header,
        t1,
        t2,
        t4,
        ringing_after,
        session_expires,
        min_se,
    })
}

/// An IP address or a DNS name (RFC 1123 labels).
fn valid_host(s: &str) -> bool {
    if s.parse::<IpAddr>().is_ok() {
        return true;
    }
    !s.is_empty()
        && s.len() <= 253
        && s.trim_end_matches('.').split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn tls(ctx: &Ctx, r: raw::RawTls, sip: &SipConfig) -> Result<TlsConfig, ConfigError> {
    let (dev, dev_span) = val(&r.dev_self_signed, false);
    let identity = match (dev, &r.certificate, &r.private_key) {
        (true, Some(c), _) | (true, None, Some(c)) => {
            return Err(ctx.at(
                c.span(),
                "tls.dev_self_signed = true generates its own certificate: remove tls.certificate and tls.private_key, or set dev_self_signed = false",
            ))
        }
        (true, None, None) => {
            if let Some(a) = sip.listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ctx.at_opt(
                    dev_span,
                    format!(
                        "tls.dev_self_signed is refused: sip.listen has {a}, which is not a loopback address; configure tls.certificate and tls.private_key"
                    ),
                ));
            }
            TlsIdentity::DevSelfSigned
        }
        (false, Some(c), Some(k)) => TlsIdentity::Files {
            certificate: ctx.resolve(c, "tls.certificate")?,
            private_key: ctx.resolve(k, "tls.private_key")?,
        },
        (false, Some(c), None) => {
            return Err(ctx.at(c.span(), "tls.certificate is set but tls.private_key is missing"))
        }
        (false, None, Some(k)) => {
            return Err(ctx.at(k.span(), "tls.private_key is set but tls.certificate is missing"))
        }
        (false, None, None) => {
            return Err(ctx.at_opt(
                dev_span,
                "[tls] needs certificate and private_key (PEM files), or dev_self_signed = true for a loopback trial",
            ))
        }
    };
    let min_version = min_version(ctx, &r.min_version, "tls.min_version")?;
    let tls12_suites = match &r.tls12_cipher_suites {
        None => DEFAULT_TLS12_SUITES.to_vec(),
        Some(list) => {
            no_duplicates(ctx, list.get_ref(), "cipher suite", |s| {
                s.to_ascii_uppercase()
            })?;
            let suites = list
                .get_ref()
                .iter()
                .map(|s| {
                    Tls12Suite::from_name(s.get_ref()).ok_or_else(|| {
                        ctx.at(
                            s.span(),
                            format!(
                                "tls.tls12_cipher_suites: {:?} is refused: only ECDHE key exchange with an AEAD cipher is allowed (no CBC, RSA key exchange or SHA-1); allowed: {}",
                                s.get_ref(),
                                DEFAULT_TLS12_SUITES.map(|s| s.name()).join(", ")
                            ),
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            if suites.is_empty() && min_version == TlsVersion::Tls12 {
                return Err(ctx.at(
                    list.span(),
                    "tls.tls12_cipher_suites is empty while tls.min_version = \"1.2\": list suites, or set min_version = \"1.3\"",
                ));
            }
            suites
        }
    };
    let client_ca = r
        .client_ca
        .as_ref()
        .map(|p| ctx.resolve(p, "tls.client_ca"))
        .transpose()?;
    let (require_client_certificate, req_span) = val(&r.require_client_certificate, false);
    if require_client_certificate && client_ca.is_none() {
        return Err(ctx.at_opt(
            req_span,
            "tls.require_client_certificate = true needs tls.client_ca (the CA that signs carrier certificates)",
        ));
    }
    Ok(TlsConfig {
        identity,
        min_version,
        tls12_suites,
        client_ca,
        require_client_certificate,
    })
}

fn carriers(
    ctx: &Ctx,
    r: Option<S<Vec<S<raw::RawCarrier>>>>,
    has_client_ca: bool,
) -> Result<Vec<CarrierConfig>, ConfigError> {
    let Some(list) = r.filter(|l| !l.get_ref().is_empty()) else {
        return Err(
            ctx.file("no [[carriers]]: at least one carrier (name, source_cidrs) is required")
        );
    };
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for c in list.into_inner() {
        let c = c.into_inner();
        let name = c.name.get_ref().trim();
        if name.is_empty() || name.chars().any(|ch| ch.is_control()) {
            return Err(ctx.at(
                c.name.span(),
                "carriers.name must be non-empty printable text",
            ));
        }
        if !names.insert(name.to_string()) {
            return Err(ctx.at(
                c.name.span(),
                format!("carrier name {name:?} is used twice"),
            ));
        }
        if c.source_cidrs.get_ref().is_empty() {
            return Err(ctx.at(
                c.source_cidrs.span(),
                format!("carrier {name:?}: source_cidrs is empty; list the networks its signalling comes from"),
            ));
        }
        let mut sources = Vec::new();
        for s in c.source_cidrs.get_ref() {
            let net = s.get_ref().parse::<ipnet::IpNet>().map_err(|_| {
                ctx.at(
                    s.span(),
                    format!(
                        "carrier {name:?}: {:?} is not a CIDR network (e.g. \"54.172.60.0/30\" or \"2001:db8::/32\"; a single host is \"192.0.2.1/32\")",
                        s.get_ref()
                    ),
                )
            })?;
            if net.trunc() != net {
                return Err(ctx.at(
                    s.span(),
                    format!(
                        "carrier {name:?}: {net} has host bits set; did you mean {}?",
                        net.trunc()
                    ),
                ));
            }
            sources.push(net);
        }
        let certificate_names = match &c.certificate_names {
            None => Vec::new(),
            Some(l) => {
                if !l.get_ref().is_empty() && !has_client_ca {
                    // Without a CA no certificate is asked for, so the names could never be
                    // checked: refuse rather than let a security setting do nothing.
                    return Err(ctx.at(
                        l.span(),
                        format!("carrier {name:?}: certificate_names needs tls.client_ca to verify carrier certificates"),
                    ));
                }
                for n in l.get_ref() {
                    if !valid_host(n.get_ref()) || n.get_ref().parse::<IpAddr>().is_ok() {
                        return Err(ctx.at(
                            n.span(),
                            format!(
                                "carrier {name:?}: certificate name {:?} is not a DNS name",
                                n.get_ref()
                            ),
                        ));
                    }
                }
                l.get_ref()
                    .iter()
                    .map(|n| n.get_ref().to_ascii_lowercase())
                    .collect()
            }
        };
        let twilio = c.twilio.as_ref().is_some_and(|t| *t.get_ref());
        let twilio_account_sids = match &c.twilio_account_sids {
            None => Vec::new(),
            Some(l) => {
                if !l.get_ref().is_empty() && !twilio {
                    return Err(ctx.at(
                        l.span(),
                        format!("carrier {name:?}: twilio_account_sids needs twilio = true"),
                    ));
                }
                account_sid_list(ctx, l.get_ref(), &format!("carrier {name:?}"))?
            }
        };
        out.push(CarrierConfig {
            name: name.to_string(),
            sources,
            certificate_names,
            twilio,
            twilio_account_sids,
            max_concurrent_calls: positive(
                ctx,
                &c.max_concurrent_calls,
                100,
                "carriers.max_concurrent_calls",
            )?,
            max_calls_per_second: positive(
                ctx,
                &c.max_calls_per_second,
                10,
                "carriers.max_calls_per_second",
            )?,
        });
    }
    Ok(out)
}

/// `[[trunks]]` (optional: without it sbc places no outbound calls).
fn trunks(ctx: &Ctx, r: Option<S<Vec<S<raw::RawTrunk>>>>) -> Result<Vec<TrunkConfig>, ConfigError> {
    let Some(list) = r else {
        return Ok(Vec::new());
    };
    let mut names = HashSet::new();
    let mut out = Vec::new();
    for t in list.into_inner() {
        let t = t.into_inner();
        let name = t.name.get_ref().trim().to_string();
        if name.is_empty() || name.chars().any(|ch| ch.is_control()) {
            return Err(ctx.at(
                t.name.span(),
                "trunks.name must be non-empty printable text",
            ));
        }
        if !names.insert(name.clone()) {
            return Err(ctx.at(t.name.span(), format!("trunk name {name:?} is used twice")));
        }
        let uri = crate::resolve::TerminationUri::parse(t.uri.get_ref().trim())
            .map_err(|e| ctx.at(t.uri.span(), format!("trunk {name:?}: uri: {e}")))?;
        let credentials = match (&t.username, &t.password_file) {
            (None, None) => None,
            (Some(u), Some(p)) => {
                let username = u.get_ref().clone();
                if username.is_empty() || username.chars().any(|c| c.is_control()) {
                    return Err(ctx.at(
                        u.span(),
                        format!("trunk {name:?}: username must be non-empty printable text"),
                    ));
                }
                Some(crate::config::TrunkCredentials {
                    username,
                    password_file: ctx.resolve(p, "trunks.password_file")?,
                })
            }
            (Some(u), None) => {
                return Err(ctx.at(
                    u.span(),
                    format!("trunk {name:?}: username without password_file; give both, or neither for a trunk that does not challenge"),
                ))
            }
            (None, Some(p)) => {
                return Err(ctx.at(
                    p.span(),
                    format!("trunk {name:?}: password_file without username; give both, or neither for a trunk that does not challenge"),
                ))
            }
        };
        let account_sids = match &t.account_sids {
            None => Vec::new(),
            Some(l) => account_sid_list(ctx, l.get_ref(), &format!("trunk {name:?}"))?,
        };
        if t.caller_ids.get_ref().is_empty() {
            return Err(ctx.at(
                t.caller_ids.span(),
                format!("trunk {name:?}: caller_ids is empty; list the numbers (Twilio numbers or verified caller IDs) calls may come from"),
            ));
        }
        let mut caller_ids = Vec::new();
        for c in t.caller_ids.get_ref() {
            caller_ids.push(
                crate::trunk::NumberPattern::parse(c.get_ref())
                    .map_err(|e| ctx.at(c.span(), format!("trunk {name:?}: caller_ids: {e}")))?,
            );
        }
        no_duplicates(ctx, t.caller_ids.get_ref(), "caller ID", |s| s.to_string())?;
        let prefixes = |v: &Option<S<Vec<S<String>>>>,
                        default: &[&str],
                        key: &str|
         -> Result<Vec<String>, ConfigError> {
            let Some(l) = v else {
                return Ok(default.iter().map(|s| s.to_string()).collect());
            };
            for p in l.get_ref() {
                let text = p.get_ref();
                let ok = text.strip_prefix('+').is_some_and(|d| {
                    (1..=15).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_digit())
                });
                if !ok {
                    return Err(ctx.at(
                        p.span(),
                        format!("trunk {name:?}: {key}: {text:?} is not a number prefix (+ and 1 to 15 digits)"),
                    ));
                }
            }
            no_duplicates(ctx, l.get_ref(), "prefix", |s| s.to_string())?;
            Ok(l.get_ref().iter().map(|s| s.get_ref().clone()).collect())
        };
        let allow_destinations = prefixes(&t.allow_destinations, &[], "allow_destinations")?;
        let deny_destinations = prefixes(
            &t.deny_destinations,
            crate::trunk::DEFAULT_DENY_DESTINATIONS,
            "deny_destinations",
        )?;
        let (cps, cps_span) = val(&t.max_calls_per_second, 1);
        let max_calls_per_second = std::num::NonZeroU32::new(cps)
            .filter(|n| n.get() <= 15)
            .ok_or_else(|| {
                ctx.at_opt(
                    cps_span,
                    format!("trunk {name:?}: max_calls_per_second must be 1 to 15 (Twilio's range; its default is 1)"),
                )
            })?;
        let (queue, _) = val(&t.queue, 10);
        let max_concurrent_calls = positive(
            ctx,
            &t.max_concurrent_calls,
            10,
            "trunks.max_concurrent_calls",
        )?;
        let (early_media, _) = val(&t.early_media, false);
        let (ring, ring_span) = val(&t.ring_timeout_secs, 60);
        if !(5..=600).contains(&ring) {
            return Err(ctx.at_opt(
                ring_span,
                format!("trunk {name:?}: ring_timeout_secs must be 5 to 600"),
            ));
        }
        out.push(TrunkConfig {
            name,
            uri,
            credentials,
            account_sids,
            caller_ids,
            allow_destinations,
            deny_destinations,
            max_calls_per_second,
            queue: queue as usize,
            max_concurrent_calls,
            early_media,
            ring_timeout: Duration::from_secs(ring),
        });
    }
    Ok(out)
}

/// `AC` followed by 32 hex digits (Twilio's Account SID).
pub(crate) fn is_account_sid(s: &str) -> bool {
    s.len() == 34 && s.starts_with("AC") && s[2..].chars().all(|c| c.is_ascii_hexdigit())
}

fn ip(ctx: &Ctx, s: &S<String>, key: &str) -> Result<IpAddr, ConfigError> {
    s.get_ref().parse().map_err(|_| {
        ctx.at(
            s.span(),
            format!("{key}: {:?} is not an IP address", s.get_ref()),
        )
    })
}

fn media(ctx: &Ctx, r: raw::RawMedia) -> Result<MediaConfig, ConfigError> {
    let advertise_address = ip(ctx, &r.advertise_address, "media.advertise_address")?;
    if advertise_address.is_unspecified() || advertise_address.is_multicast() {
        return Err(ctx.at(
            r.advertise_address.span(),
            format!("media.advertise_address: {advertise_address} cannot be written in SDP c=; give the address carriers send RTP to"),
        ));
    }
    let bind_address = match &r.bind_address {
        None => IpAddr::from([0, 0, 0, 0]),
        Some(b) => ip(ctx, b, "media.bind_address")?,
    };
    let (port_first, first_span) = val(&r.port_min, 20000);
    let (port_last, last_span) = val(&r.port_max, 29999);
    if port_first == 0 {
        return Err(ctx.at_opt(first_span, "media.port_min must be greater than 0"));
    }
    if port_first >= port_last {
        return Err(ctx.at_opt(
            first_span.or(last_span.clone()),
            format!("media port range is inverted or empty: port_min ({port_first}) must be lower than port_max ({port_last})"),
        ));
    }
    // RTP takes an even port and RTCP the odd one after it: the range must hold one such pair.
    let first_even = port_first + port_first % 2;
    if first_even >= port_last {
        return Err(ctx.at_opt(
            first_span.or(last_span),
            format!("media port range {port_first}-{port_last} holds no even RTP port with its RTCP port after it"),
        ));
    }
    let rtp_timeout = secs(ctx, &r.rtp_timeout_secs, 30, "media.rtp_timeout_secs")?;
    let codecs = match &r.codecs {
        None => vec![CodecName::Pcmu, CodecName::Pcma],
        Some(l) => {
            if l.get_ref().is_empty() {
                return Err(ctx.at(l.span(), "media.codecs is empty; use [\"PCMU\", \"PCMA\"]"));
            }
            no_duplicates(ctx, l.get_ref(), "codec", |s| s.to_ascii_uppercase())?;
            l.get_ref()
                .iter()
                .map(|c| match c.get_ref().to_ascii_uppercase().as_str() {
                    "PCMU" => Ok(CodecName::Pcmu),
                    "PCMA" => Ok(CodecName::Pcma),
                    _ => Err(ctx.at(
                        c.span(),
                        format!("media.codecs: {:?} is not supported; sbc bridges \"PCMU\" and \"PCMA\"", c.get_ref()),
                    )),
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(MediaConfig {
        advertise_address,
        bind_address,
        port_first,
        port_last,
        rtp_timeout,
        mirror_caller_ssrc: r
            .mirror_caller_ssrc
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(false),
        relatch_packets: match &r.relatch_packets {
            None => 5,
            Some(n) if (1..=1000).contains(n.get_ref()) => *n.get_ref(),
            Some(n) => {
                return Err(ctx.at(n.span(), "media.relatch_packets must be 1 to 1000"));
            }
        },
        allow_loopback_media: r
            .allow_loopback_media
            .as_ref()
            .map(|b| *b.get_ref())
            .unwrap_or(false),
        codecs,
    })
}

fn srtp(ctx: &Ctx, r: raw::RawSrtp) -> Result<SrtpConfig, ConfigError> {
    let suites = match &r.suites {
        None => sdp::SrtpSuite::supported().collect(),
        Some(l) => {
            if l.get_ref().is_empty() {
                return Err(ctx.at(l.span(), "srtp.suites is empty; use [\"AES_CM_128_HMAC_SHA1_80\", \"AES_CM_128_HMAC_SHA1_32\"]"));
            }
            no_duplicates(ctx, l.get_ref(), "SRTP suite", |s| s.to_string())?;
            l.get_ref()
                .iter()
                .map(|s| {
                    let suite = sdp::SrtpSuite::from_name(s.get_ref());
                    if suite.runs() && suite.name() == s.get_ref() {
                        return Ok(suite);
                    }
                    let allowed: Vec<String> = sdp::SrtpSuite::supported()
                        .map(|s| s.name().to_string())
                        .collect();
                    Err(ctx.at(
                        s.span(),
                        format!(
                            "srtp.suites: {:?} is refused: only {} are allowed",
                            s.get_ref(),
                            allowed.join(" and ")
                        ),
                    ))
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    Ok(SrtpConfig { suites })
}

fn agent(ctx: &Ctx, r: raw::RawAgent) -> Result<AgentConfig, ConfigError> {
    let ca_bundle = r
        .ca_bundle
        .as_ref()
        .map(|p| ctx.resolve(p, "agent.ca_bundle"))
        .transpose()?;
    let client_certificate = match (&r.client_certificate, &r.client_private_key) {
        (Some(c), Some(k)) => Some((
            ctx.resolve(c, "agent.client_certificate")?,
            ctx.resolve(k, "agent.client_private_key")?,
        )),
        (None, None) => None,
        (Some(c), None) => {
            return Err(ctx.at(
                c.span(),
                "agent.client_certificate is set but agent.client_private_key is missing",
            ))
        }
        (None, Some(k)) => {
            return Err(ctx.at(
                k.span(),
                "agent.client_private_key is set but agent.client_certificate is missing",
            ))
        }
    };
    let pinned_spki_sha256 = match &r.pinned_spki_sha256 {
        None => Vec::new(),
        Some(l) => {
            if l.get_ref().is_empty() {
                return Err(ctx.at(
                    l.span(),
                    "agent.pinned_spki_sha256 is empty: leave the key out to disable pinning",
                ));
            }
            l.get_ref()
                .iter()
                .map(|p| {
                    spki_pin(p.get_ref()).ok_or_else(|| {
                        ctx.at(
                            p.span(),
                            "agent.pinned_spki_sha256: each pin is the SHA-256 of the certificate's \
                             SubjectPublicKeyInfo DER, in base64 (44 characters, as in \
                             `openssl pkey -pubin -outform der | openssl dgst -sha256 -binary | base64`) \
                             or hex (64 digits, colons allowed)",
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()?
        }
    };
    let connect_timeout = ms(ctx, &r.connect_timeout_ms, 3000, "agent.connect_timeout_ms")?;
    let send_timeout = ms(ctx, &r.send_timeout_ms, 2000, "agent.send_timeout_ms")?;
    let send_queue_bytes = usize_of(ctx, &r.send_queue_bytes, 65536, "agent.send_queue_bytes")?;
    let send_buffer_bytes = usize_of(ctx, &r.send_buffer_bytes, 65536, "agent.send_buffer_bytes")?;
    let passthrough_headers = match &r.passthrough_headers {
        None => DEFAULT_PASSTHROUGH.iter().map(|s| s.to_string()).collect(),
        Some(l) => {
            for h in l.get_ref() {
                if !is_token(h.get_ref()) {
                    return Err(ctx.at(
                        h.span(),
                        format!(
                            "agent.passthrough_headers: {:?} is not a SIP header name",
                            h.get_ref()
                        ),
                    ));
                }
            }
            no_duplicates(ctx, l.get_ref(), "header", |s| s.to_ascii_lowercase())?;
            l.get_ref().iter().map(|h| h.get_ref().clone()).collect()
        }
    };
    let default_account_sid = match &r.default_account_sid {
        None => DEFAULT_ACCOUNT_SID.to_string(),
        Some(s) => {
            let v = s.get_ref();
            if !(v.len() == 34
                && v.starts_with("AC")
                && v.chars().all(|c| c.is_ascii_alphanumeric()))
            {
                return Err(ctx.at(
                    s.span(),
                    "agent.default_account_sid must be \"AC\" followed by 32 letters or digits (34 characters)",
                ));
            }
            v.clone()
        }
    };
    let Some(routes_raw) = r.routes.filter(|l| !l.get_ref().is_empty()) else {
        return Err(ctx.file(
            "no [[agent.routes]]: add at least one, e.g. `default = true` with `url = \"builtin:echo\"`",
        ));
    };
    let mut routes = Vec::new();
    let mut seen = HashSet::new();
    for route in routes_raw.into_inner() {
        let route_span = route.span();
        let route = route.into_inner();
        let matcher = match (&route.exact, &route.prefix, &route.default) {
            (Some(e), None, None) => {
                check_match_value(ctx, e, "exact")?;
                RouteMatch::Exact(e.get_ref().clone())
            }
            (None, Some(p), None) => {
                check_match_value(ctx, p, "prefix")?;
                RouteMatch::Prefix(p.get_ref().clone())
            }
            (None, None, Some(d)) => {
                if !*d.get_ref() {
                    return Err(ctx.at(d.span(), "agent.routes: `default = false` means nothing; remove it and give exact or prefix"));
                }
                RouteMatch::Default
            }
            _ => return Err(ctx.at(
                route_span,
                "each [[agent.routes]] needs exactly one of `exact`, `prefix` or `default = true`",
            )),
        };
        if !seen.insert(matcher.clone()) {
            let what = match &matcher {
                RouteMatch::Default => "a second default route".to_string(),
                RouteMatch::Exact(e) => format!("exact {e:?} is routed twice"),
                RouteMatch::Prefix(p) => format!("prefix {p:?} is routed twice"),
            };
            return Err(ctx.at(route_span, format!("agent.routes: {what}")));
        }
        let target = agent_target(ctx, &route.url)?;
        let account_sid = match &route.account_sid {
            None => None,
            Some(s) if is_account_sid(s.get_ref()) => Some(s.get_ref().clone()),
            Some(s) => {
                return Err(ctx.at(
                    s.span(),
                    "agent.routes.account_sid must be \"AC\" followed by 32 hex digits",
                ))
            }
        };
        let mut transfer_allow = Vec::new();
        for t in route.transfer_allow.iter().flat_map(|l| l.get_ref()) {
            let v = t.get_ref();
            let number = v.strip_prefix("tel:").unwrap_or(v);
            let ok = if v.starts_with("sip:") || v.starts_with("sips:") {
                crate::call::uri_target(v).is_some() && !v.contains(['<', '>', ' ', '"'])
            } else {
                !number.is_empty()
                    && number.starts_with('+')
                    && number[1..].chars().all(|c| c.is_ascii_digit())
            };
            if !ok {
                return Err(ctx.at(
                    t.span(),
                    format!("agent.routes.transfer_allow: {v:?} is neither a +E.164 prefix (\"+1555\", \"tel:+1555\") nor a sip: URI"),
                ));
            }
            transfer_allow.push(number.to_string());
        }
        let status_callback = match &route.status_callback {
            None => {
                if let Some(e) = &route.status_callback_events {
                    return Err(ctx.at(
                        e.span(),
                        "agent.routes.status_callback_events without status_callback",
                    ));
                }
                None
            }
            Some(u) => Some(status_callback(ctx, u, &route.status_callback_events)?),
        };
        routes.push(Route {
            matcher,
            target,
            account_sid,
            transfer_allow,
            status_callback,
        });
    }
    Ok(AgentConfig {
        routes,
        ca_bundle,
        client_certificate,
        pinned_spki_sha256,
        connect_timeout,
        send_timeout,
        send_queue_bytes,
        send_buffer_bytes,
        passthrough_headers,
        default_account_sid,
    })
}

/// A SHA-256 SPKI pin: 64 hex digits (colons allowed, any case) or standard base64 of the 32
/// bytes (with or without padding).
fn spki_pin(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let s = s.trim();
    let hex: String = s.chars().filter(|&c| c != ':').collect();
    if hex.len() == 64 && hex.chars().all(|c| c.is_ascii_hexdigit()) {
        let mut out = [0u8; 32];
        for (i, b) in out.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        return Some(out);
    }
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(s)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
        .ok()?;
    bytes.try_into().ok()
}

fn check_match_value(ctx: &Ctx, v: &S<String>, key: &str) -> Result<(), ConfigError> {
    let s = v.get_ref();
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ctx.at(
            v.span(),
            format!("agent.routes.{key} must be a non-empty number or user part without spaces"),
        ));
    }
    Ok(())
}

/// RFC 3261 `token` (header names).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-.!%*_+`'~".contains(c))
}

fn agent_target(ctx: &Ctx, url: &S<String>) -> Result<AgentTarget, ConfigError> {
    let u = url.get_ref();
    if u == "builtin:echo" {
        return Ok(AgentTarget::Echo);
    }
    let lower = u.to_ascii_lowercase();
    if lower.starts_with("ws://") {
        return Err(ctx.at(
            url.span(),
            format!("agent.routes.url: {u:?} is refused: the agent leg is TLS only; use wss://"),
        ));
    }
    let Some(rest) = lower.strip_prefix("wss://").map(|_| &u["wss://".len()..]) else {
        return Err(ctx.at(
            url.span(),
            format!("agent.routes.url: {u:?} must be a wss:// URL or \"builtin:echo\""),
        ));
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let bad = |why: &str| ctx.at(url.span(), format!("agent.routes.url: {u:?}: {why}"));
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad("contains spaces or control characters"));
    }
    if rest.contains('#') {
        return Err(bad(
            "a fragment (#...) is not sent in a WebSocket request; remove it",
        ));
    }
    if authority.contains('@') {
        return Err(bad("credentials in the URL are not supported"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let Some(end) = v6.find(']') else {
            return Err(bad("unterminated IPv6 address"));
        };
        if v6[..end].parse::<std::net::Ipv6Addr>().is_err() {
            return Err(bad("invalid IPv6 address"));
        }
        match &v6[end + 1..] {
            "" => (None, None),
            p => match p.strip_prefix(':') {
                Some(p) => (None, Some(p)),
                None => return Err(bad("invalid host and port")),
            },
        }
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (Some(h), Some(p)),
            None => (Some(authority), None),
        }
    };
    if let Some(h) = host {
        if !valid_host(h) {
            return Err(bad("no valid host name"));
        }
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return Err(bad("invalid port"));
        }
    }
    Ok(AgentTarget::Url(u.clone()))
}

fn audit(ctx: &Ctx, r: raw::RawAudit) -> Result<AuditConfig, ConfigError> {
    let sink = match &r.path {
        None => AuditSink::File(PathBuf::from(DEFAULT_AUDIT_PATH)),
        Some(p) if p.get_ref() == "-" => AuditSink::Stdout,
        Some(p) => AuditSink::File(ctx.resolve(p, "audit.path")?),
    };
    let (fsync, _) = val(&r.fsync, false);
    let (privacy, privacy_span) = val(&r.number_privacy, "as-is".to_string());
    let number_privacy = match privacy.as_str() {
        "as-is" | "masked" => {
            if let Some(f) = &r.hash_salt_file {
                return Err(ctx.at(
                    f.span(),
                    "audit.hash_salt_file is only used with number_privacy = \"hashed\"; remove it",
                ));
            }
            if privacy == "as-is" {
                NumberPrivacy::AsIs
            } else {
                NumberPrivacy::Masked
            }
        }
        "hashed" => {
            let Some(f) = &r.hash_salt_file else {
                return Err(ctx.at_opt(
                    privacy_span,
                    "audit.number_privacy = \"hashed\" needs audit.hash_salt_file (a file with at least 16 secret bytes)",
                ));
            };
            let path = ctx.resolve(f, "audit.hash_salt_file")?;
            let bytes = std::fs::read(&path).map_err(|e| {
                ctx.at(
                    f.span(),
                    format!("audit.hash_salt_file: cannot read {}: {e}", path.display()),
                )
            })?;
            // A trailing newline from `echo`/editors is not part of the secret.
            let salt = bytes.trim_ascii_end().to_vec();
            if salt.len() < 16 {
                return Err(ctx.at(
                    f.span(),
                    format!(
                        "audit.hash_salt_file: {} holds fewer than 16 bytes of salt",
                        path.display()
                    ),
                ));
            }
            NumberPrivacy::Hashed { salt }
        }
        other => {
            return Err(ctx.at_opt(
                privacy_span,
                format!(
                "audit.number_privacy: {other:?} is not one of \"as-is\", \"masked\", \"hashed\""
            ),
            ))
        }
    };
    let (refusal_records_per_second, _) = val(&r.refusal_records_per_second, 10);
    let refusal_summary_interval = secs(
        ctx,
        &r.refusal_summary_interval_secs,
        60,
        "audit.refusal_summary_interval_secs",
    )?;
    Ok(AuditConfig {
        sink,
        fsync,
        number_privacy,
        refusal_records_per_second,
        refusal_summary_interval,
    })
}

/// `status_callback` (an `https://` URL: the webhook leg is TLS only, like every other) and
/// `status_callback_events` (default `["completed"]`, as Twilio's).
fn status_callback(
    ctx: &Ctx,
    url: &S<String>,
    events: &Option<S<Vec<S<String>>>>,
) -> Result<StatusCallback, ConfigError> {
    let u = url.get_ref();
    let bad = |why: &str| {
        ctx.at(
            url.span(),
            format!("agent.routes.status_callback: {u:?}: {why}"),
        )
    };
    let rest = u
        .strip_prefix("https://")
        .ok_or_else(|| bad("must be an https:// URL"))?;
    if u.chars().any(|c| c.is_whitespace() || c.is_control()) || u.contains('#') {
        return Err(bad("no spaces, control characters or fragment"));
    }
    let (authority, target) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_string()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_string()),
    };
    if authority.contains('@') {
        return Err(bad("credentials in the URL are refused"));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (h, after) = v6.split_once(']').ok_or_else(|| bad("bad IPv6 address"))?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad("bad port"))?,
            None => 443,
        };
        (h.to_string(), port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_string(), p.parse().map_err(|_| bad("bad port"))?),
            None => (authority.to_string(), 443),
        }
    };
    if host.is_empty() || port == 0 {
        return Err(bad("no host"));
    }
    let events = match events {
        None => vec![CallbackEvent::Completed],
        Some(list) => {
            let mut out = Vec::new();
            for e in list.get_ref() {
                let ev = match e.get_ref().as_str() {
                    "initiated" => CallbackEvent::Initiated,
                    "ringing" => CallbackEvent::Ringing,
                    "answered" => CallbackEvent::Answered,
                    "completed" => CallbackEvent::Completed,
                    other => {
                        return Err(ctx.at(
                            e.span(),
                            format!("agent.routes.status_callback_events: {other:?} is not one of initiated, ringing, answered, completed"),
                        ))
                    }
                };
                if !out.contains(&ev) {
                    out.push(ev);
                }
            }
            out
        }
    };
    Ok(StatusCallback {
        url: u.clone(),
        host,
        port,
        target,
        events,
    })
}

fn api(ctx: &Ctx, r: raw::RawApi, tls: &TlsConfig) -> Result<ApiConfig, ConfigError> {
    let listen: SocketAddr = r.listen.get_ref().parse().map_err(|_| {
        ctx.at(
            r.listen.span(),
            format!(
                "api.listen: {:?} is not an IP address and port (e.g. \"127.0.0.1:8443\")",
                r.listen.get_ref()
            ),
        )
    })?;
    let (dev, dev_span) = val(&r.dev_self_signed, false);
    let identity = match (dev, &r.certificate, &r.private_key) {
        (true, None, None) => {
            if !listen.ip().is_loopback() {
                return Err(ctx.at_opt(
                    dev_span,
                    format!("api.dev_self_signed is refused: api.listen {listen} is not a loopback address"),
                ));
            }
            TlsIdentity::DevSelfSigned
        }
        (false, Some(c), Some(k)) => TlsIdentity::Files {
            certificate: ctx.resolve(c, "api.certificate")?,
            private_key: ctx.resolve(k, "api.private_key")?,
        },
        _ => {
            return Err(ctx.at(
                r.listen.span(),
                "[api] needs certificate and private_key, or dev_self_signed = true (not both)",
            ))
        }
    };
    let min_version = min_version(ctx, &r.min_version, "api.min_version")?;
    if min_version == TlsVersion::Tls12 && tls.tls12_suites.is_empty() {
        return Err(ctx.file(
            "api.min_version = \"1.2\" needs tls.tls12_cipher_suites (the API uses the SIP listener's TLS 1.2 suites)",
        ));
    }
    let requests_per_second = positive(ctx, &r.requests_per_second, 10, "api.requests_per_second")?;
    let recent_calls = usize_of(ctx, &r.recent_calls, 1000, "api.recent_calls")?;
    let mut accounts: Vec<ApiAccount> = Vec::new();
    for a in r.accounts.iter().flatten() {
        let a = a.get_ref();
        let sid = a.sid.get_ref();
        if !is_account_sid(sid) {
            return Err(ctx.at(
                a.sid.span(),
                "api.accounts.sid must be \"AC\" followed by 32 hex digits",
            ));
        }
        if accounts.iter().any(|x| &x.sid == sid) {
            return Err(ctx.at(a.sid.span(), format!("api.accounts: {sid:?} twice")));
        }
        let path = ctx.resolve(&a.auth_token_file, "api.accounts.auth_token_file")?;
        let auth_token = read_token(&path).map_err(|why| {
            ctx.at(
                a.auth_token_file.span(),
                format!("api.accounts.auth_token_file {}: {why}", path.display()),
            )
        })?;
        accounts.push(ApiAccount {
            sid: sid.clone(),
            auth_token,
        });
    }
    let callback_ca_bundle = r
        .callback_ca_bundle
        .as_ref()
        .map(|p| ctx.resolve(p, "api.callback_ca_bundle"))
        .transpose()?;
    let mut twiml_url_prefixes = Vec::new();
    for p in r.twiml_url_prefixes.iter().flat_map(|v| v.get_ref().iter()) {
        if !crate::api::fetch::valid_prefix(p.get_ref()) {
            return Err(ctx.at(
                p.span(),
                "api.twiml_url_prefixes: each entry must be https://host[:port]/ followed by an optional path",
            ));
        }
        twiml_url_prefixes.push(p.get_ref().clone());
    }
    Ok(ApiConfig {
        listen,
        identity,
        min_version,
        requests_per_second,
        recent_calls,
        accounts,
        callback_ca_bundle,
        twiml_url_prefixes,
    })
}

fn cluster(ctx: &Ctx, r: raw::RawCluster) -> Result<ClusterConfig, ConfigError> {
    let url = r.redis_url.get_ref();
    let scheme_ok = url.starts_with("redis://") || url.starts_with("rediss://");
    let host_part = url.split_once("://").map_or("", |(_, rest)| rest);
    if !scheme_ok || host_part.is_empty() {
        return Err(ctx.at(
            r.redis_url.span(),
            "cluster.redis_url must be redis://host[:port][/db] or rediss://host[:port][/db] (TLS)",
        ));
    }
    if host_part.split('/').next().is_some_and(|a| a.contains('@')) {
        return Err(ctx.at(
            r.redis_url.span(),
            "cluster.redis_url must not hold credentials: put the password in cluster.redis_password_file",
        ));
    }
    let redis_password = match &r.redis_password_file {
        None => None,
        Some(p) => {
            let path = ctx.resolve(p, "cluster.redis_password_file")?;
            Some(read_token(&path).map_err(|why| {
                ctx.at(
                    p.span(),
                    format!("cluster.redis_password_file {}: {why}", path.display()),
                )
            })?)
        }
    };
    let redis_ca = r
        .redis_ca
        .as_ref()
        .map(|p| ctx.resolve(p, "cluster.redis_ca"))
        .transpose()?;
    let id = r.instance_id.get_ref();
    if id.is_empty()
        || id.len() > 64
        || !id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
    {
        return Err(ctx.at(
            r.instance_id.span(),
            "cluster.instance_id must be 1 to 64 of A-Z a-z 0-9 _ . -",
        ));
    }
    let api_address: SocketAddr = r.api_address.get_ref().parse().map_err(|_| {
        ctx.at(
            r.api_address.span(),
            format!(
                "cluster.api_address: {:?} is not an IP address and port (e.g. \"10.0.0.7:8443\")",
                r.api_address.get_ref()
            ),
        )
    })?;
    let api_server_name = match &r.api_server_name {
        None => api_address.ip().to_string(),
        Some(n) => {
            if !valid_host(n.get_ref()) {
                return Err(ctx.at(n.span(), "cluster.api_server_name is not a host name or IP"));
            }
            n.get_ref().clone()
        }
    };
    let ca =
        r.ca.as_ref()
            .map(|p| ctx.resolve(p, "cluster.ca"))
            .transpose()?;
    let heartbeat = ms(ctx, &r.heartbeat_ms, 1000, "cluster.heartbeat_ms")?;
    let ttl = ms(ctx, &r.ttl_ms, 5000, "cluster.ttl_ms")?;
    if ttl < heartbeat * 2 {
        return Err(ctx.at_opt(
            r.ttl_ms.as_ref().map(|s| s.span()),
            "cluster.ttl_ms must be at least twice cluster.heartbeat_ms",
        ));
    }
    let redis_timeout = ms(ctx, &r.redis_timeout_ms, 500, "cluster.redis_timeout_ms")?;
    let (share, share_span) = val(&r.degraded_share, 0.5);
    if !(share > 0.0 && share <= 1.0) {
        return Err(ctx.at_opt(
            share_span,
            "cluster.degraded_share must be greater than 0 and at most 1",
        ));
    }
    let (readyz_requires_redis, _) = val(&r.readyz_requires_redis, false);
    let limits = |v: &Option<S<std::collections::BTreeMap<String, u32>>>, key: &str| {
        let Some(v) = v else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (name, n) in v.get_ref() {
            if *n == 0 {
                return Err(ctx.at(v.span(), format!("{key}.{name} must be greater than 0")));
            }
            out.push((name.clone(), *n));
        }
        Ok(out)
    };
    let carrier_limits = limits(&r.carrier_limits, "cluster.carrier_limits")?;
    let account_limits = limits(&r.account_limits, "cluster.account_limits")?;
    Ok(ClusterConfig {
        redis_url: url.clone(),
        redis_password,
        redis_ca,
        instance_id: id.clone(),
        api_address,
        api_server_name,
        ca,
        heartbeat,
        ttl,
        redis_timeout,
        degraded_share: share,
        readyz_requires_redis,
        carrier_limits,
        account_limits,
    })
}

/// Reads an auth token file: refused unless only its owner may read it (mode 0600 or 0400),
/// and unless it holds at least 16 characters of printable ASCII (surrounding whitespace
/// trimmed).
fn read_token(path: &Path) -> Result<AuthToken, String> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "mode {mode:o} lets others read it; chmod 600 (only sbc may read an auth token)"
        ));
    }
    let text = zeroize::Zeroizing::new(
        std::fs::read_to_string(path).map_err(|e| format!("cannot read it: {e}"))?,
    );
    let token = text.trim();
    if token.len() < 16 || !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must hold one token of at least 16 printable ASCII characters".into());
    }
    Ok(AuthToken::new(token.to_string()))
}

fn metrics(ctx: &Ctx, r: raw::RawMetrics) -> Result<MetricsConfig, ConfigError> {
    let listen = match &r.listen {
        None => SocketAddr::from(([127, 0, 0, 1], 9090)),
        Some(l) => l.get_ref().parse().map_err(|_| {
            ctx.at(
                l.span(),
                format!(
                    "metrics.listen: {:?} is not an IP address and port (e.g. \"127.0.0.1:9090\")",
                    l.get_ref()
                ),
            )
        })?,
    };
    Ok(MetricsConfig { listen })
}

fn limits(ctx: &Ctx, r: raw::RawLimits) -> Result<LimitsConfig, ConfigError> {
    let l = LimitsConfig {
        max_message_bytes: usize_of(ctx, &r.max_message_bytes, 16384, "limits.max_message_bytes")?,
        max_headers: usize_of(ctx, &r.max_headers, 100, "limits.max_headers")?,
        max_sdp_bytes: usize_of(ctx, &r.max_sdp_bytes, 8192, "limits.max_sdp_bytes")?,
        max_media_lines: usize_of(ctx, &r.max_media_lines, 8, "limits.max_media_lines")?,
        max_connections_per_ip: positive(
            ctx,
            &r.max_connections_per_ip,
            64,
            "limits.max_connections_per_ip",
        )?,
        tls_handshake_timeout: ms(
            ctx,
            &r.tls_handshake_timeout_ms,
            5000,
            "limits.tls_handshake_timeout_ms",
        )?,
        idle_timeout: secs(ctx, &r.idle_timeout_secs, 600, "limits.idle_timeout_secs")?,
        max_concurrent_calls: positive(
            ctx,
            &r.max_concurrent_calls,
            1000,
            "limits.max_concurrent_calls",
        )?,
        drain_timeout: secs(ctx, &r.drain_timeout_secs, 30, "limits.drain_timeout_secs")?,
        write_queue_bytes: usize_of(
            ctx,
            &r.write_queue_bytes,
            256 * 1024,
            "limits.write_queue_bytes",
        )?,
        write_timeout: secs(ctx, &r.write_timeout_secs, 10, "limits.write_timeout_secs")?,
        worker_threads: match &r.worker_threads {
            None => None,
            Some(_) => {
                let n = positive(ctx, &r.worker_threads, 1, "limits.worker_threads")?;
                // u32 always fits a usize on the platforms sbc builds for (64-bit Linux).
                std::num::NonZeroUsize::new(n as usize)
            }
        },
    };
    // The reader pauses at half the queue; the other half holds the responses to what one read
    // completed (at most a whole message, echoed headers included).
    if l.write_queue_bytes / 4 < l.max_message_bytes {
        return Err(ctx.at_opt(
            r.write_queue_bytes
                .as_ref()
                .or(r.max_message_bytes.as_ref())
                .map(|s| s.span()),
            format!(
                "limits.write_queue_bytes ({}) must be at least 4 × limits.max_message_bytes ({})",
                l.write_queue_bytes, l.max_message_bytes
            ),
        ));
    }
    if l.max_sdp_bytes > l.max_message_bytes {
        return Err(ctx.at_opt(
            r.max_sdp_bytes
                .as_ref()
                .or(r.max_message_bytes.as_ref())
                .map(|s| s.span()),
            format!(
                "limits.max_sdp_bytes ({}) cannot exceed limits.max_message_bytes ({})",
                l.max_sdp_bytes, l.max_message_bytes
            ),
        ));
    }
    Ok(l)
}

fn log(ctx: &Ctx, r: raw::RawLog) -> Result<LogConfig, ConfigError> {
    let format = match &r.format {
        None => LogFormat::Pretty,
        Some(f) => match f.get_ref().as_str() {
            "pretty" => LogFormat::Pretty,
            "json" => LogFormat::Json,
            other => {
                return Err(ctx.at(
                    f.span(),
                    format!("log.format: {other:?} is not \"pretty\" or \"json\""),
                ))
            }
        },
    };
    let level = match &r.level {
        None => "info".to_string(),
        Some(l) => {
            if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(l.get_ref()) {
                return Err(ctx.at(
                    l.span(),
                    format!("log.level: {:?} is not a valid filter: {e}", l.get_ref()),
                ));
            }
            l.get_ref().clone()
        }
    };
    Ok(LogConfig { format, level })
}
