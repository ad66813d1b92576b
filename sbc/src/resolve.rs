//! Where to connect for a trunk's termination URI (RFC 3263 §4, TLS only): an IP literal is used
//! as is; a name with an explicit port is looked up as A/AAAA; a name without a port is first
//! looked up as SRV `_sips._tcp.<host>` (RFC 3263 §4.2: TLS transport uses the SIPS service
//! over TCP), and, when it has no SRV records, as A/AAAA on port 5061 (RFC 3263 §4.2 last
//! paragraph). `_sip._tcp` names plain-TCP servers, which sbc never uses: the trunk config
//! accepts only `transport=tls` or `sips:`.
//!
//! Lookups go through the [`Lookup`] trait so tests inject answers; [`HickoryLookup`] is the real
//! resolver (hickory-resolver, the system's `/etc/resolv.conf`). Every resolution has a deadline.
//! Names are queried fully qualified (a trailing dot), so search domains never apply.
//!
//! This is I/O: it belongs to the shell, not to the sans-IO SIP core.

use std::fmt;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

/// Default port of SIP over TLS (RFC 3261 §19.1.2).
pub const SIPS_PORT: u16 = 5061;

/// The host part of a termination URI.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Host {
    Name(String),
    Ip(IpAddr),
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::Ip(IpAddr::V6(a)) => write!(f, "[{a}]"),
            Host::Ip(IpAddr::V4(a)) => write!(f, "{a}"),
        }
    }
}

/// A termination URI: `sip:<host>[:port];transport=tls` or `sips:<host>[:port]` (RFC 3261
/// §19.1.1). No user part and no other transport: the Request-URI of each call is built from
/// the destination number and this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TerminationUri {
    pub host: Host,
    pub port: Option<u16>,
    /// `sips:` rather than `sip:...;transport=tls`.
    pub sips: bool,
}

impl TerminationUri {
    /// Parses the URI; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<TerminationUri, String> {
        let (scheme, rest) = s
            .split_once(':')
            .ok_or_else(|| format!("{s:?} is not a sip: or sips: URI"))?;
        let sips = if scheme.eq_ignore_ascii_case("sips") {
            true
        } else if scheme.eq_ignore_ascii_case("sip") {
            false
        } else {
            return Err(format!("{s:?}: scheme {scheme:?} is not sip or sips"));
        };
        let (hostport, params) = rest.split_once(';').unwrap_or((rest, ""));
        if hostport.contains('@') {
            return Err(format!(
                "{s:?}: a termination URI has no user part (the destination number is added per call)"
            ));
        }
        let mut tls = sips;
        for p in params.split(';').filter(|p| !p.is_empty()) {
            let (name, value) = p.split_once('=').unwrap_or((p, ""));
            if name.eq_ignore_ascii_case("transport") {
                if value.eq_ignore_ascii_case("tls") {
                    tls = true;
                } else {
                    return Err(format!(
                        "{s:?}: transport={value} is not allowed; sbc places calls over TLS only (transport=tls)"
                    ));
                }
            }
        }
        if !tls {
            return Err(format!(
                "{s:?}: add ;transport=tls (or use sips:): sbc places calls over TLS only"
            ));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (addr, after) = v6
                .split_once(']')
                .ok_or_else(|| format!("{s:?}: unterminated IPv6 reference"))?;
            let ip: IpAddr = addr
                .parse()
                .map_err(|_| format!("{s:?}: {addr:?} is not an IPv6 address"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => Some(p),
                None if after.is_empty() => None,
                None => return Err(format!("{s:?}: unexpected text after the IPv6 address")),
            };
            (Host::Ip(ip), port)
        } else {
            let (h, p) = match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            };
            let host = match h.parse::<IpAddr>() {
                Ok(ip) => Host::Ip(ip),
                Err(_) if is_hostname(h) => Host::Name(h.to_ascii_lowercase()),
                Err(_) => return Err(format!("{s:?}: {h:?} is not a host name or IP address")),
            };
            (host, p)
        };
        let port = match port {
            None => None,
            Some(p) => Some(
                p.parse::<u16>()
                    .ok()
                    .filter(|&p| p != 0)
                    .ok_or_else(|| format!("{s:?}: port {p:?} is not 1-65535"))?,
            ),
        };
        Ok(TerminationUri { host, port, sips })
    }
}

impl fmt::Display for TerminationUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.sips { "sips:" } else { "sip:" })?;
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        if !self.sips {
            f.write_str(";transport=tls")?;
        }
        Ok(())
    }
}

/// RFC 1123 host name: dot-separated labels of letters, digits and hyphens.
fn is_hostname(h: &str) -> bool {
    let h = h.strip_suffix('.').unwrap_or(h);
    !h.is_empty()
        && h.len() <= 253
        && h.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

/// One SRV record (RFC 2782).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Srv {
    pub priority: u16,
    pub weight: u16,
    pub port: u16,
    pub target: String,
}

/// What a lookup can say besides answers.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LookupError {
    /// The name exists without records of that type, or does not exist (NXDOMAIN).
    #[error("no {0} records")]
    NoRecords(&'static str),
    /// The resolver failed (no server answered, SERVFAIL, I/O...).
    #[error("{0}")]
    Failed(String),
}

/// DNS as the resolver needs it; the real one is [`HickoryLookup`], tests inject answers.
pub trait Lookup {
    /// SRV records of a fully qualified name.
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<Srv>, LookupError>> + Send;
    /// A and AAAA records of a fully qualified name.
    fn ip(&self, name: &str) -> impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send;
}

/// Why a termination URI resolved to nothing.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveError {
    /// A DNS lookup failed; `query` says which (`SRV _sips._tcp.x.`, `A/AAAA x.`).
    #[error("DNS {query}: {reason}")]
    Lookup { query: String, reason: LookupError },
    /// The whole resolution took longer than its deadline.
    #[error("DNS resolution of {host} took longer than {deadline:?}")]
    Timeout { host: String, deadline: Duration },
    /// The resolver could not be set up (e.g. an unreadable `/etc/resolv.conf`).
    #[error("DNS resolver: {0}")]
    Resolver(String),
}

fn fqdn(name: &str) -> String {
    if name.ends_with('.') {
        name.to_string()
    } else {
        format!("{name}.")
    }
}

/// Addresses to try, in order, for `uri`: every address of the best SRV target first, then the
/// next target's (RFC 3263 §4.4 failover). SRV records are ordered by priority, then by weight
/// (highest first): sbc places few calls per trunk, so RFC 2782's weighted random choice
/// would only spread a handful of calls, and a fixed order keeps failures reproducible.
pub async fn resolve<L: Lookup>(
    lookup: &L,
    uri: &TerminationUri,
    deadline: Duration,
) -> Result<Vec<SocketAddr>, ResolveError> {
    match tokio::time::timeout(deadline, resolve_inner(lookup, uri)).await {
        Ok(r) => r,
        Err(_) => Err(ResolveError::Timeout {
            host: uri.host.to_string(),
            deadline,
        }),
    }
}

async fn resolve_inner<L: Lookup>(
    lookup: &L,
    uri: &TerminationUri,
) -> Result<Vec<SocketAddr>, ResolveError> {
    let name = match &uri.host {
        Host::Ip(ip) => return Ok(vec![SocketAddr::new(*ip, uri.port.unwrap_or(SIPS_PORT))]),
        Host::Name(n) => fqdn(n),
    };
    let a_records = |host: String, port: u16| async move {
        lookup
            .ip(&host)
            .await
            .map(|ips| {
                ips.into_iter()
                    .map(|ip| SocketAddr::new(ip, port))
                    .collect::<Vec<_>>()
            })
            .map_err(|reason| ResolveError::Lookup {
                query: format!("A/AAAA {host}"),
                reason,
            })
    };
    if let Some(port) = uri.port {
        return a_records(name, port).await;
    }
    let srv_name = format!("_sips._tcp.{name}");
    let mut records = match lookup.srv(&srv_name).await {
        Ok(r) => r,
        Err(LookupError::NoRecords(_)) => Vec::new(),
        Err(reason) => {
            return Err(ResolveError::Lookup {
                query: format!("SRV {srv_name}"),
                reason,
            })
        }
    };
    // RFC 2782: a single record with target "." means the service is decidedly not available.
    records.retain(|r| r.target != "." && !r.target.is_empty());
    if records.is_empty() {
        return a_records(name, SIPS_PORT).await;
    }
    records.sort_by(|a, b| a.priority.cmp(&b.priority).then(b.weight.cmp(&a.weight)));
    let mut out = Vec::new();
    let mut last_err = None;
    for r in records {
        match a_records(fqdn(&r.target), r.port).await {
            Ok(addrs) => out.extend(addrs),
            Err(e) => last_err = Some(e),
        }
    }
    match (out.is_empty(), last_err) {
        (true, Some(e)) => Err(e),
        _ => Ok(out),
    }
}

/// The system resolver (hickory-resolver with `/etc/resolv.conf`, on tokio).
pub struct HickoryLookup(hickory_resolver::TokioResolver);

impl HickoryLookup {
    /// Reads the system configuration; fails when it cannot (sbc then refuses outbound calls
    /// with a clear error rather than guessing a public resolver).
    pub fn from_system() -> Result<HickoryLookup, ResolveError> {
        let builder = hickory_resolver::TokioResolver::builder_tokio()
            .map_err(|e| ResolveError::Resolver(e.to_string()))?;
        Ok(HickoryLookup(builder.build()))
    }
}

fn lookup_error(e: hickory_resolver::ResolveError, kind: &'static str) -> LookupError {
    if e.is_nx_domain() || e.is_no_records_found() {
        LookupError::NoRecords(kind)
    } else {
        LookupError::Failed(e.to_string())
    }
}

impl Lookup for HickoryLookup {
    fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<Srv>, LookupError>> + Send {
        let name = name.to_string();
        async move {
            let answer = self
                .0
                .srv_lookup(name.as_str())
                .await
                .map_err(|e| lookup_error(e, "SRV"))?;
            Ok(answer
                .iter()
                .map(|r| Srv {
                    priority: r.priority(),
                    weight: r.weight(),
                    port: r.port(),
                    target: r.target().to_ascii(),
                })
                .collect())
        }
    }

    fn ip(&self, name: &str) -> impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send {
        let name = name.to_string();
        async move {
            let answer = self
                .0
                .lookup_ip(name.as_str())
                .await
                .map_err(|e| lookup_error(e, "A/AAAA"))?;
            let ips: Vec<IpAddr> = answer.iter().collect();
            if ips.is_empty() {
                return Err(LookupError::NoRecords("A/AAAA"));
            }
            Ok(ips)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Injected answers: names absent from a map have no records of that type.
    #[derive(Default)]
    struct Fake {
        srv: HashMap<String, Result<Vec<Srv>, LookupError>>,
        ip: HashMap<String, Vec<IpAddr>>,
        /// Never answers (a resolver that hangs).
        hang: bool,
    }

    impl Lookup for Fake {
        fn srv(&self, name: &str) -> impl Future<Output = Result<Vec<Srv>, LookupError>> + Send {
            let r = self
                .srv
                .get(name)
                .cloned()
                .unwrap_or(Err(LookupError::NoRecords("SRV")));
            let hang = self.hang;
            async move {
                if hang {
                    std::future::pending::<()>().await;
                }
                r
            }
        }
        fn ip(&self, name: &str) -> impl Future<Output = Result<Vec<IpAddr>, LookupError>> + Send {
            let r = self
                .ip
                .get(name)
                .cloned()
                .ok_or(LookupError::NoRecords("A/AAAA"));
            async move { r }
        }
    }

    fn srv(priority: u16, weight: u16, port: u16, target: &str) -> Srv {
        Srv {
            priority,
            weight,
            port,
            target: target.into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const D: Duration = Duration::from_secs(5);

    #[test]
    fn termination_uris() {
        let ok: &[(&str, Host, Option<u16>, bool)] = &[
            (
                "sip:example.pstn.twilio.com;transport=tls",
                Host::Name("example.pstn.twilio.com".into()),
                None,
                false,
            ),
            (
                "sips:Example.PSTN.twilio.com:5062",
                Host::Name("example.pstn.twilio.com".into()),
                Some(5062),
                true,
            ),
            (
                "sip:192.0.2.7;transport=TLS",
                Host::Ip(ip("192.0.2.7")),
                None,
                false,
            ),
            (
                "sip:[2001:db8::7]:5061;transport=tls",
                Host::Ip(ip("2001:db8::7")),
                Some(5061),
                false,
            ),
        ];
        for (s, host, port, sips) in ok {
            let u = TerminationUri::parse(s).unwrap();
            assert_eq!((&u.host, u.port, u.sips), (host, *port, *sips), "{s}");
            assert_eq!(TerminationUri::parse(&u.to_string()).unwrap(), u);
        }
        let bad: &[(&str, &str)] = &[
            ("example.pstn.twilio.com", "not a sip"),
            ("http:x", "scheme"),
            ("sip:example.com", "transport=tls"),
            ("sip:example.com;transport=udp", "TLS only"),
            ("sip:+1555@example.com;transport=tls", "no user part"),
            ("sip:exa_mple.com;transport=tls", "not a host name"),
            ("sip:example.com:0;transport=tls", "port"),
            ("sip:example.com:99999;transport=tls", "port"),
            ("sip:[2001:db8::7;transport=tls", "unterminated"),
        ];
        for (s, needle) in bad {
            let e = TerminationUri::parse(s).unwrap_err();
            assert!(e.contains(needle), "{s}: {e}");
        }
    }

    #[tokio::test]
    async fn resolution_table() {
        let mut f = Fake::default();
        f.srv.insert(
            "_sips._tcp.trunk.example.".into(),
            Ok(vec![
                srv(20, 0, 5061, "c.example."),
                srv(10, 10, 5062, "b.example."),
                srv(10, 50, 5063, "a.example"),
            ]),
        );
        f.ip.insert("a.example.".into(), vec![ip("192.0.2.1")]);
        f.ip.insert(
            "b.example.".into(),
            vec![ip("192.0.2.2"), ip("2001:db8::2")],
        );
        f.ip.insert("c.example.".into(), vec![ip("192.0.2.3")]);
        f.ip.insert("plain.example.".into(), vec![ip("198.51.100.9")]);
        f.srv.insert(
            "_sips._tcp.dot.example.".into(),
            Ok(vec![srv(0, 0, 5061, ".")]),
        );
        f.ip.insert("dot.example.".into(), vec![ip("198.51.100.10")]);
        f.srv.insert(
            "_sips._tcp.broken.example.".into(),
            Err(LookupError::Failed("SERVFAIL".into())),
        );
        let cases: &[(&str, Result<Vec<&str>, &str>)] = &[
            (
                "sip:trunk.example;transport=tls",
                Ok(vec![
                    "192.0.2.1:5063",
                    "192.0.2.2:5062",
                    "[2001:db8::2]:5062",
                    "192.0.2.3:5061",
                ]),
            ),
            // An explicit port skips SRV (RFC 3263 §4.2).
            (
                "sip:trunk.example:5070;transport=tls",
                Err("A/AAAA trunk.example."),
            ),
            ("sips:plain.example", Ok(vec!["198.51.100.9:5061"])),
            ("sips:plain.example:5999", Ok(vec!["198.51.100.9:5999"])),
            ("sips:dot.example", Ok(vec!["198.51.100.10:5061"])),
            ("sips:192.0.2.50", Ok(vec!["192.0.2.50:5061"])),
            ("sips:[2001:db8::50]:5070", Ok(vec!["[2001:db8::50]:5070"])),
            (
                "sips:broken.example",
                Err("SRV _sips._tcp.broken.example.: SERVFAIL"),
            ),
            (
                "sips:missing.example",
                Err("A/AAAA missing.example.: no A/AAAA records"),
            ),
        ];
        for (uri, expected) in cases {
            let u = TerminationUri::parse(uri).unwrap();
            let got = resolve(&f, &u, D).await;
            match expected {
                Ok(addrs) => {
                    let want: Vec<SocketAddr> = addrs.iter().map(|a| a.parse().unwrap()).collect();
                    assert_eq!(got.unwrap(), want, "{uri}");
                }
                Err(needle) => {
                    let e = got.unwrap_err().to_string();
                    assert!(e.contains(needle), "{uri}: {e}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_hanging_resolver_hits_the_deadline() {
        let f = Fake {
            hang: true,
            ..Fake::default()
        };
        let u = TerminationUri::parse("sips:slow.example").unwrap();
        let e = resolve(&f, &u, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(
            e,
            ResolveError::Timeout {
                host: "slow.example".into(),
                deadline: Duration::from_millis(50)
            }
        );
    }

    /// RFC 6761 §6.4: `.invalid` never resolves. hickory answers it NXDOMAIN locally (no query
    /// leaves the machine), and the deadline bounds it anyway.
    #[tokio::test]
    async fn real_resolver_fails_cleanly_on_an_invalid_name() {
        let lookup = match HickoryLookup::from_system() {
            Ok(l) => l,
            // No usable resolv.conf: that failure is clean too.
            Err(e) => {
                assert!(e.to_string().starts_with("DNS resolver:"));
                return;
            }
        };
        let u = TerminationUri::parse("sip:nonexistent.invalid;transport=tls").unwrap();
        let started = std::time::Instant::now();
        let e = resolve(&lookup, &u, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(6));
        let text = e.to_string();
        assert!(
            text.contains("nonexistent.invalid"),
            "the error names the query: {text}"
        );
    }
}
