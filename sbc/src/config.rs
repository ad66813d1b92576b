//! Configuration: TOML parsed into a raw serde layer (`deny_unknown_fields`), then converted once
//! into the typed values below, so that impossible values cannot exist past `Config::load`.
//!
//! Two steps, two files: `config/raw.rs` is what the TOML says (every value with its byte span),
//! `config/convert.rs` turns it into the types below and refuses what the policy forbids. Errors
//! read `file:line:column: message`, or `file: message` for a key that is missing or a
//! certificate file that is wrong.
//!
//! [`Config::parse_str`] reads no certificate file (used to check the shipped examples);
//! [`Config::load`] also loads every certificate and key and builds the rustls configs, which is
//! what `sbc check-config` and `sbc run` do. Relative paths resolve against the config file's
//! directory.

mod convert;
mod raw;

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The whole daemon configuration, typed.
#[derive(Clone, Debug)]
pub struct Config {
    /// The file it was read from.
    pub path: PathBuf,
    pub sip: SipConfig,
    pub tls: TlsConfig,
    pub carriers: Vec<CarrierConfig>,
    /// `[[trunks]]`: termination trunks for outbound calls (none: sbc places no calls).
    pub trunks: Vec<TrunkConfig>,
    pub media: MediaConfig,
    pub srtp: SrtpConfig,
    pub agent: AgentConfig,
    pub audit: AuditConfig,
    pub metrics: Option<MetricsConfig>,
    pub limits: LimitsConfig,
    pub log: LogConfig,
    /// The call-control API (`[api]`); off when absent.
    pub api: Option<ApiConfig>,
    /// Several instances as one service on Redis (`[cluster]`); off when absent.
    pub cluster: Option<ClusterConfig>,
}

/// `[cluster]`: the shared state of several instances (call registry, cluster-wide limits) in
/// Redis; see `docs/scaling.md`.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` (TLS) URL, without a password (that comes from a file).
    pub redis_url: String,
    /// Redis AUTH password, read from a file only sbc can read.
    pub redis_password: Option<AuthToken>,
    /// CA bundle that verifies a `rediss://` server (else the system roots).
    pub redis_ca: Option<PathBuf>,
    /// This instance's id: unique in the cluster, `[A-Za-z0-9_.-]{1,64}`.
    pub instance_id: String,
    /// Where the other instances reach this instance's API (`host:port`).
    pub api_address: SocketAddr,
    /// The name (or IP) the other instances verify this instance's API certificate for.
    pub api_server_name: String,
    /// CA bundle that verifies the other instances' API certificates (else the webpki roots).
    pub ca: Option<PathBuf>,
    /// How often this instance refreshes its registration.
    pub heartbeat: Duration,
    /// How long an instance's registry entries and slots outlive its last heartbeat.
    pub ttl: Duration,
    /// Deadline of one Redis command (connect included); past it the instance is degraded.
    pub redis_timeout: Duration,
    /// The share (0 < share <= 1) of each cluster-wide limit this instance applies alone
    /// while Redis is unreachable.
    pub degraded_share: f64,
    /// `/readyz` answers 503 while Redis is unreachable.
    pub readyz_requires_redis: bool,
    /// Cluster-wide concurrent calls per carrier name.
    pub carrier_limits: Vec<(String, u32)>,
    /// Cluster-wide concurrent calls per API account SID (the route's `account_sid`).
    pub account_limits: Vec<(String, u32)>,
}

/// `[api]`: the Twilio-compatible call-control API over HTTPS (see `docs/api.md`).
#[derive(Clone, Debug)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Its certificate: files, or a development certificate (loopback only).
    pub identity: TlsIdentity,
    /// TLS 1.3, or 1.2 with `[tls] tls12_cipher_suites` (the SIP listener's rules).
    pub min_version: TlsVersion,
    /// Requests per second per account (token bucket, burst of twice this).
    pub requests_per_second: u32,
    /// Ended calls the API still answers for (oldest forgotten first).
    pub recent_calls: usize,
    pub accounts: Vec<ApiAccount>,
    /// CA bundle that verifies status callback receivers and `Url=` TwiML servers (else the
    /// webpki roots).
    pub callback_ca_bundle: Option<PathBuf>,
    /// `https://host[:port]/path/` prefixes a create request's `Url=` must start with; empty:
    /// `Url=` is refused (`api/fetch.rs`).
    pub twiml_url_prefixes: Vec<String>,
}

/// A route's status callback: where sbc POSTs Twilio's call progress events.
#[derive(Clone, Debug)]
pub struct StatusCallback {
    /// `https://host[:port]/path[?query]`, exactly as signed.
    pub url: String,
    pub host: String,
    pub port: u16,
    /// Path and query.
    pub target: String,
    pub events: Vec<CallbackEvent>,
}

/// Twilio's `StatusCallbackEvent` values.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallbackEvent {
    Initiated,
    Ringing,
    Answered,
    Completed,
}

/// An API account: its SID and the auth token read from a file only sbc can read.
#[derive(Clone, Debug)]
pub struct ApiAccount {
    pub sid: String,
    pub auth_token: AuthToken,
}

/// An auth token: never printed, zeroed on drop.
#[derive(Clone, zeroize::ZeroizeOnDrop)]
pub struct AuthToken(String);

impl AuthToken {
    pub fn new(token: String) -> AuthToken {
        AuthToken(token)
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for AuthToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Clone, Debug)]
pub struct SipConfig {
    /// TLS listen addresses (default `0.0.0.0:5061` and `[::]:5061`).
    pub listen: Vec<SocketAddr>,
    /// Host (name or IP) sbc writes in Contact, Via and Warning headers.
    pub host: String,
    /// `Server`/`User-Agent` header value; `None` sends none. No version by default.
    pub server_header: Option<String>,
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
    /// Send `180 Ringing` when the agent connection takes longer than this.
    pub ringing_after: Duration,
    /// RFC 4028 session interval we ask for / accept, and the minimum we accept.
    pub session_expires: Duration,
    pub min_se: Duration,
}

#[derive(Clone, Debug)]
pub struct TlsConfig {
    pub identity: TlsIdentity,
    pub min_version: TlsVersion,
    /// TLS 1.2 suites allowed (ECDHE + AEAD only), in preference order.
    pub tls12_suites: Vec<Tls12Suite>,
    /// CA bundle for carriers that present client certificates.
    pub client_ca: Option<PathBuf>,
    /// Refuse carriers without a client certificate (only meaningful with `client_ca`).
    pub require_client_certificate: bool,
}

#[derive(Clone, Debug)]
pub enum TlsIdentity {
    /// PEM certificate chain and private key.
    Files {
        certificate: PathBuf,
        private_key: PathBuf,
    },
    /// A self-signed development certificate generated at start (loopback only).
    DevSelfSigned,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// TLS 1.2 cipher suites the policy allows: ECDHE key exchange with an AEAD cipher.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(non_camel_case_types)]
pub enum Tls12Suite {
    TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
    TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
    TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
    TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
}

#[derive(Clone, Debug)]
pub struct CarrierConfig {
    pub name: String,
    /// Signalling source networks.
    pub sources: Vec<ipnet::IpNet>,
    /// If non-empty, the client certificate must carry one of these DNS names.
    pub certificate_names: Vec<String>,
    pub max_concurrent_calls: u32,
    pub max_calls_per_second: u32,
    /// The carrier is Twilio: its `X-Twilio-*` headers are believed (they reach the agent's
    /// `start`). From any other carrier those headers are ignored.
    pub twilio: bool,
    /// When non-empty (needs `twilio`), an INVITE whose `X-Twilio-AccountSid` is not listed is
    /// refused with 403: Twilio's signalling addresses are shared by all Twilio accounts.
    pub twilio_account_sids: Vec<String>,
}

/// A termination trunk (`[[trunks]]`, docs/outbound.md): where outbound calls go and the policy
/// they pass first. A section of its own rather than part of `[[carriers]]`: a carrier is
/// recognised by where its traffic comes from (source networks, client certificate), a trunk
/// by where sbc sends calls (a URI resolved by DNS, digest credentials, caller IDs, pacing).
/// One provider may have both, with different addresses and credentials, and an outbound-only
/// trunk needs no source networks.
#[derive(Clone, Debug)]
pub struct TrunkConfig {
    pub name: String,
    /// `sip:example.pstn.twilio.com;transport=tls`: the Request-URI host of every call.
    pub uri: crate::resolve::TerminationUri,
    /// Digest credentials, when the trunk challenges (Twilio: a credential list). `None`: the
    /// trunk admits sbc by its address or certificate (Twilio: an IP access list), and a
    /// 401/407 fails the call.
    pub credentials: Option<TrunkCredentials>,
    /// Accounts that may place calls through the trunk; empty: any account the API accepts.
    pub account_sids: Vec<String>,
    /// `From` must be one of these (numbers, or prefixes ending in `*`).
    pub caller_ids: Vec<crate::trunk::NumberPattern>,
    /// Destination prefixes allowed; empty: all not denied.
    pub allow_destinations: Vec<String>,
    /// Destination prefixes refused (default [`crate::trunk::DEFAULT_DENY_DESTINATIONS`]).
    pub deny_destinations: Vec<String>,
    /// 1 to 15 (Twilio's trunk CPS range; its default is 1).
    pub max_calls_per_second: std::num::NonZeroU32,
    /// Calls that may wait for their CPS slot; beyond, the API answers 429.
    pub queue: usize,
    pub max_concurrent_calls: u32,
    /// 183 with SDP starts the agent's stream (early media).
    pub early_media: bool,
    /// Ringing time before CANCEL when the API request gives no `Timeout`.
    pub ring_timeout: Duration,
}

/// A trunk's digest credentials: `username` and `password_file` in `[[trunks]]`, both or
/// neither.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TrunkCredentials {
    /// Digest username (Twilio: a credential list's username).
    pub username: String,
    /// File holding the digest password, readable by sbc alone (mode 0600 or 0400); read by
    /// [`TrunkConfig::load_password`] (at `Config::load`, so `check-config` checks it).
    pub password_file: PathBuf,
}

impl TrunkConfig {
    /// The trunk's pure policy (caller IDs, destinations, accounts, concurrency).
    pub fn policy(&self) -> crate::trunk::TrunkPolicy {
        crate::trunk::TrunkPolicy {
            account_sids: self.account_sids.clone(),
            caller_ids: self.caller_ids.clone(),
            allow_destinations: self.allow_destinations.clone(),
            deny_destinations: self.deny_destinations.clone(),
            max_concurrent_calls: self.max_concurrent_calls,
        }
    }

    /// Reads the digest password: the file must be a regular file that neither group nor
    /// others can read or write, and hold a non-empty first line (a trailing newline is not
    /// part of the password).
    /// `None` for a trunk without credentials.
    pub fn load_password(&self) -> Result<Option<crate::sip::digest::Password>, ConfigError> {
        use std::os::unix::fs::PermissionsExt;
        let Some(creds) = &self.credentials else {
            return Ok(None);
        };
        let path = &creds.password_file;
        let meta = std::fs::metadata(path).map_err(|e| {
            ConfigError::in_file(
                path,
                format!("trunk {:?}: cannot read password_file: {e}", self.name),
            )
        })?;
        if !meta.is_file() {
            return Err(ConfigError::in_file(
                path,
                format!("trunk {:?}: password_file is not a regular file", self.name),
            ));
        }
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(ConfigError::in_file(
                path,
                format!(
                    "trunk {:?}: password_file has mode {mode:03o}; it must be readable by sbc alone (chmod 600)",
                    self.name
                ),
            ));
        }
        let bytes = zeroize::Zeroizing::new(std::fs::read(path).map_err(|e| {
            ConfigError::in_file(
                path,
                format!("trunk {:?}: cannot read password_file: {e}", self.name),
            )
        })?);
        let text = std::str::from_utf8(&bytes).map_err(|_| {
            ConfigError::in_file(
                path,
                format!("trunk {:?}: password_file is not UTF-8", self.name),
            )
        })?;
        let password = text.lines().next().unwrap_or("");
        if password.is_empty() {
            return Err(ConfigError::in_file(
                path,
                format!("trunk {:?}: password_file is empty", self.name),
            ));
        }
        Ok(Some(crate::sip::digest::Password::new(password)))
    }
}

#[derive(Clone, Debug)]
pub struct MediaConfig {
    /// Address written in SDP `c=`.
    pub advertise_address: IpAddr,
    /// Address the RTP sockets bind to.
    pub bind_address: IpAddr,
    /// Inclusive UDP port range; RTP uses even ports, RTCP the next odd one.
    pub port_first: u16,
    pub port_last: u16,
    pub rtp_timeout: Duration,
    /// Send our RTP with the SSRC the carrier uses towards us, instead of our own random one.
    /// Only for test peers that need it (SIPp 3.8's SRTP echo check decrypts with its own SSRC);
    /// off for real carriers.
    pub mirror_caller_ssrc: bool,
    /// Authenticated packets in a row from a new address (of the latched SSRC) before outbound
    /// media moves there.
    pub relatch_packets: u32,
    /// Accept loopback `c=` addresses in offers (tests on one host only).
    pub allow_loopback_media: bool,
    /// Codec preference for answers.
    pub codecs: Vec<CodecName>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CodecName {
    Pcmu,
    Pcma,
}

#[derive(Clone, Debug)]
pub struct SrtpConfig {
    /// Accepted suites, most preferred first: rows of the suite table (`sdp::SUITES`) that
    /// sbc runs.
    pub suites: Vec<sdp::SrtpSuite>,
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    /// Routes, checked in order: exact matches first, then the longest prefix, then the default.
    pub routes: Vec<Route>,
    /// CA bundle that verifies agent servers (None: the system/webpki roots).
    pub ca_bundle: Option<PathBuf>,
    /// Client certificate chain and key for mTLS.
    pub client_certificate: Option<(PathBuf, PathBuf)>,
    /// SHA-256 digests of SubjectPublicKeyInfo DER the agent server's certificate must match
    /// (one of them), on top of CA verification. Empty: no pinning.
    pub pinned_spki_sha256: Vec<[u8; 32]>,
    pub connect_timeout: Duration,
    /// A frame queued for the agent must be written within this, else the agent is stuck and
    /// the call is hung up (`agent_stuck`).
    pub send_timeout: Duration,
    /// Bytes of frames queued for the agent and not yet written; beyond it the agent is stuck.
    pub send_queue_bytes: usize,
    /// SO_SNDBUF of the agent socket: how much the kernel holds for an agent that stops reading
    /// before writes block and `send_timeout` starts to count.
    pub send_buffer_bytes: usize,
    /// SIP headers copied into `customParameters` (by header name, case-insensitive).
    pub passthrough_headers: Vec<String>,
    /// accountSid sent when the INVITE has no `X-Twilio-AccountSid`.
    pub default_account_sid: String,
}

#[derive(Clone, Debug)]
pub struct Route {
    pub matcher: RouteMatch,
    pub target: AgentTarget,
    /// The API account that owns this route's calls (sees and controls them).
    pub account_sid: Option<String>,
    /// Transfer destinations allowed for this route's calls: a `tel:`/number prefix
    /// (`+1555`) or an exact SIP URI. Empty: no transfer.
    pub transfer_allow: Vec<String>,
    /// Call progress webhooks, signed with the route account's auth token.
    pub status_callback: Option<StatusCallback>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum RouteMatch {
    Exact(String),
    Prefix(String),
    Default,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AgentTarget {
    /// A `wss://host:port/path?query` URL.
    Url(String),
    /// `builtin:echo`: the caller's audio comes back to the caller.
    Echo,
}

#[derive(Clone, Debug)]
pub struct AuditConfig {
    pub sink: AuditSink,
    /// fsync after each record.
    pub fsync: bool,
    pub number_privacy: NumberPrivacy,
    /// Refusals made before a call exists (admission: rate, capacity, identity) written as full
    /// `call.refused` records per second; beyond it they are counted in a summary record.
    pub refusal_records_per_second: u32,
    /// How often the summary of suppressed refusals is written (when there is one).
    pub refusal_summary_interval: std::time::Duration,
}

#[derive(Clone, Debug)]
pub enum AuditSink {
    File(PathBuf),
    Stdout,
}

#[derive(Clone)]
pub enum NumberPrivacy {
    AsIs,
    /// Keep the last 4 digits.
    Masked,
    /// HMAC-SHA256 with a secret salt, hex.
    Hashed {
        salt: Vec<u8>,
    },
}

impl std::fmt::Debug for NumberPrivacy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NumberPrivacy::AsIs => f.write_str("AsIs"),
            NumberPrivacy::Masked => f.write_str("Masked"),
            NumberPrivacy::Hashed { .. } => f.write_str("Hashed { salt: <redacted> }"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct MetricsConfig {
    pub listen: SocketAddr,
}

#[derive(Clone, Debug)]
pub struct LimitsConfig {
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_sdp_bytes: usize,
    pub max_media_lines: usize,
    pub max_connections_per_ip: u32,
    pub tls_handshake_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_concurrent_calls: u32,
    /// SIGTERM: how long active calls may continue before sbc hangs them up.
    pub drain_timeout: Duration,
    /// Bytes a connection's writer may hold queued (not yet handed to the kernel). The reader
    /// stops reading while half of it is used; a message that would overflow it is refused and
    /// the connection closed. At least 4 × `max_message_bytes`.
    pub write_queue_bytes: usize,
    /// Deadline for each write to a carrier connection (and for its close): a peer that does not
    /// read for this long loses its connection.
    pub write_timeout: Duration,
    /// Runtime worker threads; `None`: one per CPU sbc may run on (its affinity mask). Read at
    /// start only: a reload does not change the running count.
    pub worker_threads: Option<std::num::NonZeroUsize>,
}

#[derive(Clone, Debug)]
pub struct LogConfig {
    pub format: LogFormat,
    /// An `EnvFilter` directive, e.g. `info` or `sbc=debug,info`.
    pub level: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Pretty,
    Json,
}

/// A configuration error, displayed as `file:line:column: message` (or `file: message`).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl ConfigError {
    /// An error about a file that is not the config itself (a certificate, a key): `path: msg`.
    pub fn in_file(path: &Path, msg: impl std::fmt::Display) -> ConfigError {
        ConfigError(format!("{}: {msg}", path.display()))
    }
}

impl Config {
    /// Reads, parses and validates `path`, including the certificate files it names: each chain
    /// and key is loaded, the key checked against its certificate, and every rustls config built.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let config = Config::parse_file(path)?;
        config.check_tls()?;
        for trunk in &config.trunks {
            trunk.load_password()?;
        }
        Ok(config)
    }

    /// Reads and parses `path` without touching certificate files (see [`Config::load`]).
    pub fn parse_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::in_file(path, format!("cannot read the configuration file: {e}"))
        })?;
        Config::parse_str(&text, path)
    }

    /// Parses and validates `text` as if read from `path` (used for error positions and to
    /// resolve relative paths). Certificate files are not touched; the one file it reads is
    /// `audit.hash_salt_file` with `number_privacy = "hashed"`, because the typed value holds
    /// the salt.
    pub fn parse_str(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let base = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
        let ctx = convert::Ctx { path, text, base };
        let raw: raw::RawConfig = toml::from_str(text).map_err(|e| {
            let msg = e.message().trim_end().replace('\n', "; ");
            match e.span() {
                Some(span) => ctx.at(span, msg),
                None => ConfigError::in_file(path, msg),
            }
        })?;
        convert::convert(&ctx, raw)
    }

    /// Loads the certificate and key files and builds every rustls config sbc uses, so that
    /// `check-config` finds what `run` would.
    pub fn check_tls(&self) -> Result<(), ConfigError> {
        crate::tls::TlsConfigs::build(self).map(drop)
    }
}

impl Tls12Suite {
    /// Every suite the policy allows, in the default preference order.
    pub const ALL: [Tls12Suite; 6] = convert::DEFAULT_TLS12_SUITES;

    /// The IANA name, as written in the config.
    pub fn name(self) -> &'static str {
        match self {
            Tls12Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
                "TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256"
            }
            Tls12Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
                "TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384"
            }
            Tls12Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            }
            Tls12Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => {
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256"
            }
            Tls12Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => {
                "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"
            }
            Tls12Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
                "TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256"
            }
        }
    }

    /// The suite with this IANA name (case-insensitive), if the policy allows it.
    pub fn from_name(name: &str) -> Option<Tls12Suite> {
        Tls12Suite::ALL
            .into_iter()
            .find(|s| s.name().eq_ignore_ascii_case(name))
    }
}

impl CodecName {
    /// The RTP encoding name (`PCMU`, `PCMA`).
    pub fn name(self) -> &'static str {
        match self {
            CodecName::Pcmu => "PCMU",
            CodecName::Pcma => "PCMA",
        }
    }
}

/// The smallest valid configuration, for the unit tests of any module that parses one.
#[cfg(test)]
pub(crate) const TEST_MINIMAL: &str = r#"
[tls]
dev_self_signed = true
[sip]
listen = ["127.0.0.1:5061"]
[[carriers]]
name = "lo"
source_cidrs = ["127.0.0.0/8"]
[media]
advertise_address = "127.0.0.1"
[agent]
[[agent.routes]]
default = true
url = "builtin:echo"
[audit]
path = "-"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = TEST_MINIMAL;

    fn parse(text: &str) -> Result<Config, String> {
        Config::parse_str(text, Path::new("/etc/sbc/t.toml")).map_err(|e| e.to_string())
    }

    #[test]
    fn minimal_config_gets_the_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.sip.host, "127.0.0.1");
        assert_eq!(c.sip.server_header, None);
        assert_eq!(
            (c.sip.t1, c.sip.t2, c.sip.t4),
            (
                Duration::from_millis(500),
                Duration::from_secs(4),
                Duration::from_secs(5)
            )
        );
        assert_eq!(c.sip.ringing_after, Duration::from_secs(1));
        assert_eq!(
            (c.sip.session_expires.as_secs(), c.sip.min_se.as_secs()),
            (1800, 90)
        );
        assert_eq!(c.tls.min_version, TlsVersion::Tls12);
        assert_eq!(c.tls.tls12_suites, Tls12Suite::ALL);
        assert!(!c.tls.require_client_certificate && c.tls.client_ca.is_none());
        assert_eq!(c.carriers[0].max_concurrent_calls, 100);
        assert_eq!(c.carriers[0].max_calls_per_second, 10);
        assert_eq!(c.media.bind_address, IpAddr::from([0, 0, 0, 0]));
        assert_eq!((c.media.port_first, c.media.port_last), (20000, 29999));
        assert_eq!(c.media.codecs, [CodecName::Pcmu, CodecName::Pcma]);
        assert_eq!(
            c.srtp.suites,
            [
                sdp::SrtpSuite::AesCm128HmacSha1_80,
                sdp::SrtpSuite::AesCm128HmacSha1_32
            ]
        );
        assert_eq!(c.agent.connect_timeout, Duration::from_secs(3));
        assert_eq!(
            c.agent.passthrough_headers,
            ["X-Twilio-CallSid", "P-Asserted-Identity", "Diversion"]
        );
        assert_eq!(
            c.agent.default_account_sid,
            "ACsbc00000000000000000000000000000"
        );
        assert!(matches!(c.audit.sink, AuditSink::Stdout));
        assert!(matches!(c.audit.number_privacy, NumberPrivacy::AsIs));
        assert!(c.metrics.is_none());
        assert_eq!(c.limits.max_sdp_bytes, 8192);
        assert_eq!(c.limits.drain_timeout, Duration::from_secs(30));
        assert_eq!(c.log.format, LogFormat::Pretty);
        assert_eq!(c.log.level, "info");
    }

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = MINIMAL.replace("path = \"-\"", "path = \"logs/audit.jsonl\"");
        let c = parse(&text).unwrap();
        match c.audit.sink {
            AuditSink::File(p) => assert_eq!(p, Path::new("/etc/sbc/logs/audit.jsonl")),
            AuditSink::Stdout => panic!("file expected"),
        }
    }

    #[test]
    fn host_is_required_off_loopback() {
        let text = MINIMAL
            .replace(
                "dev_self_signed = true",
                "certificate = \"c.pem\"\nprivate_key = \"k.pem\"",
            )
            .replace("127.0.0.1:5061", "0.0.0.0:5061");
        let c = parse(&MINIMAL.replace(
            "dev_self_signed = true",
            "certificate = \"c.pem\"\nprivate_key = \"k.pem\"",
        ))
        .unwrap();
        assert_eq!(
            c.sip.host, "127.0.0.1",
            "loopback-only listeners default the host"
        );
        let err = parse(&text).unwrap_err();
        assert!(
            err.starts_with("/etc/sbc/t.toml: sip.host is required"),
            "{err}"
        );
    }

    #[test]
    fn column_counts_characters_not_bytes() {
        // "=" is byte 6 but the 4th character of line 2.
        assert_eq!(convert::line_col("a\nbé = x", 6), (2, 4));
        assert_eq!(convert::line_col("abc", 0), (1, 1));
        let text = MINIMAL.replace("name = \"lo\"", "name = \"é\"\nmax_calls_per_second = 0");
        let err = parse(&text).unwrap_err();
        let (line, _) = text
            .lines()
            .enumerate()
            .find(|(_, l)| l.starts_with("max_calls_per_second"))
            .map(|(i, l)| (i + 1, l))
            .unwrap();
        assert!(
            err.starts_with(&format!("/etc/sbc/t.toml:{line}:24: ")),
            "{err}"
        );
    }

    #[test]
    fn missing_sections_are_named() {
        for (section, needle) in [
            ("[media]\nadvertise_address = \"127.0.0.1\"\n", "[media]"),
            (
                "[[carriers]]\nname = \"lo\"\nsource_cidrs = [\"127.0.0.0/8\"]\n",
                "[[carriers]]",
            ),
        ] {
            let err = parse(&MINIMAL.replace(section, "")).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
        // [audit] is optional: records go to the default path.
        let c = parse(&MINIMAL.replace("[audit]\npath = \"-\"\n", "")).unwrap();
        match c.audit.sink {
            AuditSink::File(p) => assert_eq!(p, Path::new("/var/log/sbc/audit.jsonl")),
            AuditSink::Stdout => panic!("file expected"),
        }
    }

    #[test]
    fn routes_are_checked() {
        let two_defaults =
            format!("{MINIMAL}[[agent.routes]]\ndefault = true\nurl = \"builtin:echo\"\n");
        assert!(parse(&two_defaults)
            .unwrap_err()
            .contains("a second default route"));
        for (url, why) in [
            ("wss://", "no valid host name"),
            ("wss://a b/", "spaces"),
            ("wss://host:0/", "invalid port"),
            ("wss://user:pw@host/", "credentials"),
            ("https://host/", "must be a wss:// URL"),
            ("builtin:music", "must be a wss:// URL"),
        ] {
            let err = parse(&MINIMAL.replace("builtin:echo", url)).unwrap_err();
            assert!(err.contains(why), "{url}: {err}");
        }
        for url in [
            "wss://[::1]:8443/ws",
            "wss://agent.example?x=1&y=2",
            "WSS://Agent.Example:443",
        ] {
            let c = parse(&MINIMAL.replace("builtin:echo", url)).unwrap();
            assert_eq!(c.agent.routes[0].target, AgentTarget::Url(url.to_string()));
        }
    }

    #[test]
    fn hashed_number_privacy_reads_the_salt() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("sbc.toml");
        let audit =
            "[audit]\npath = \"-\"\nnumber_privacy = \"hashed\"\nhash_salt_file = \"salt\"\n";
        let text = MINIMAL.replace("[audit]\npath = \"-\"\n", audit);

        let err = Config::parse_str(&text, &cfg).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");

        std::fs::write(dir.path().join("salt"), "short\n").unwrap();
        let err = Config::parse_str(&text, &cfg).unwrap_err().to_string();
        assert!(err.contains("fewer than 16 bytes"), "{err}");

        std::fs::write(dir.path().join("salt"), "0123456789abcdef0123\n").unwrap();
        let c = Config::parse_str(&text, &cfg).unwrap();
        match &c.audit.number_privacy {
            NumberPrivacy::Hashed { salt } => assert_eq!(salt, b"0123456789abcdef0123"),
            other => panic!("{other:?}"),
        }
        assert!(
            !format!("{c:?}").contains("0123456789abcdef"),
            "salt must not be printed"
        );

        let err = parse(&MINIMAL.replace(
            "[audit]\npath = \"-\"\n",
            "[audit]\npath = \"-\"\nnumber_privacy = \"hashed\"\n",
        ))
        .unwrap_err();
        assert!(err.contains("needs audit.hash_salt_file"), "{err}");
    }

    #[test]
    fn cross_field_rules() {
        let cases = [
            (
                "[sip]\n",
                "[sip]\nt1_ms = 5000\n",
                "sip.t2_ms (4000) must not be lower than sip.t1_ms (5000)",
            ),
            ("[sip]\n", "[sip]\nmin_se_secs = 60\n", "at least 90"),
            (
                "[sip]\n",
                "[sip]\nserver_header = \"sbc\\r\\nX: y\"\n",
                "without line breaks",
            ),
            (
                "dev_self_signed = true",
                "dev_self_signed = true\ncertificate = \"c.pem\"",
                "remove tls.certificate",
            ),
            (
                "dev_self_signed = true",
                "dev_self_signed = true\nrequire_client_certificate = true",
                "needs tls.client_ca",
            ),
            (
                "dev_self_signed = true",
                "dev_self_signed = true\nmin_version = \"1.2\"\ntls12_cipher_suites = []",
                "is empty",
            ),
            (
                "[audit]",
                "[limits]\nmax_sdp_bytes = 20000\n[audit]",
                "cannot exceed",
            ),
            (
                "[audit]",
                "[log]\nformat = \"xml\"\n[audit]",
                "\"xml\" is not",
            ),
            (
                "[audit]",
                "[metrics]\nlisten = \"localhost\"\n[audit]",
                "metrics.listen",
            ),
            (
                "advertise_address = \"127.0.0.1\"",
                "advertise_address = \"0.0.0.0\"",
                "cannot be written in SDP",
            ),
            (
                "advertise_address = \"127.0.0.1\"",
                "advertise_address = \"127.0.0.1\"\ncodecs = [\"G729\"]",
                "not supported",
            ),
            (
                "source_cidrs = [\"127.0.0.0/8\"]",
                "source_cidrs = []",
                "source_cidrs is empty",
            ),
        ];
        let cases = cases.into_iter().chain([
            (
                "source_cidrs = [\"127.0.0.0/8\"]",
                "source_cidrs = [\"127.0.0.0/8\"]\ncertificate_names = [\"carrier.example\"]",
                "needs tls.client_ca",
            ),
            (
                "advertise_address = \"127.0.0.1\"",
                "advertise_address = \"127.0.0.1\"\nport_min = 20001\nport_max = 20002",
                "no even RTP port",
            ),
        ]);
        for (from, to, why) in cases {
            let text = MINIMAL.replacen(from, to, 1);
            assert_ne!(text, MINIMAL, "{from:?} not found");
            let err = parse(&text).unwrap_err();
            assert!(err.contains(why), "{to:?}: {err}");
            assert!(err.starts_with("/etc/sbc/t.toml:"), "{err}");
        }
    }

    /// `agent.pinned_spki_sha256`: base64 or hex of 32 bytes; anything else is an error that
    /// points at the pin.
    #[test]
    fn agent_spki_pins() {
        assert!(parse(MINIMAL).unwrap().agent.pinned_spki_sha256.is_empty());
        let with = |pins: &str| {
            parse(&MINIMAL.replace(
                "[agent]\n",
                &format!("[agent]\npinned_spki_sha256 = {pins}\n"),
            ))
        };
        let want: Vec<u8> = (0u8..32).collect();
        let b64 = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
        let hex: String = want.iter().map(|b| format!("{b:02x}")).collect();
        let colons = want
            .iter()
            .map(|b| format!("{b:02X}"))
            .collect::<Vec<_>>()
            .join(":");
        for ok in [b64, b64.trim_end_matches('='), &hex, &colons] {
            let c = with(&format!("[\"{ok}\"]")).unwrap();
            assert_eq!(
                c.agent.pinned_spki_sha256,
                vec![<[u8; 32]>::try_from(&want[..]).unwrap()],
                "{ok}"
            );
        }
        for bad in [
            "[]",
            "[\"abc\"]",
            "[\"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHg==\"]",
            &format!("[\"{hex}00\"]"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(
                e.contains("agent.pinned_spki_sha256") && e.contains("t.toml:"),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn tls13_only_allows_an_empty_tls12_list() {
        let text = MINIMAL.replace(
            "dev_self_signed = true",
            "dev_self_signed = true\nmin_version = \"1.3\"\ntls12_cipher_suites = []",
        );
        assert_eq!(parse(&text).unwrap().tls.min_version, TlsVersion::Tls13);
    }

    /// Every key the raw layer accepts, per table, read back from serde's own
    /// `unknown field ..., expected one of ...` message so the list cannot go stale.
    fn accepted_keys() -> Vec<(&'static str, Vec<String>)> {
        fn keys<T: serde::de::DeserializeOwned + std::fmt::Debug>(
            table: &'static str,
        ) -> (&'static str, Vec<String>) {
            let err = toml::from_str::<T>("zz_not_a_key = 1")
                .unwrap_err()
                .message()
                .to_string();
            // serde says "expected `a`", "expected `a` or `b`" or "expected one of `a`, `b`, ...".
            let list = err
                .split("expected ")
                .nth(1)
                .unwrap_or_else(|| panic!("{err}"));
            let list = list.trim_start_matches("one of ").replace(" or ", ", ");
            let keys = list
                .split(", ")
                .map(|k| k.trim_matches('`').to_string())
                .collect();
            (table, keys)
        }
        vec![
            keys::<raw::RawSip>("sip"),
            keys::<raw::RawTls>("tls"),
            keys::<raw::RawCarrier>("carriers"),
            keys::<raw::RawMedia>("media"),
            keys::<raw::RawSrtp>("srtp"),
            keys::<raw::RawAgent>("agent"),
            keys::<raw::RawRoute>("agent.routes"),
            keys::<raw::RawAudit>("audit"),
            keys::<raw::RawMetrics>("metrics"),
            keys::<raw::RawLimits>("limits"),
            keys::<raw::RawLog>("log"),
            keys::<raw::RawApi>("api"),
            keys::<raw::RawApiAccount>("api.accounts"),
            keys::<raw::RawCluster>("cluster"),
        ]
    }

    #[test]
    fn production_example_and_reference_document_every_key() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let example =
            std::fs::read_to_string(root.join("configs/production.example.toml")).unwrap();
        let reference = std::fs::read_to_string(root.join("docs/configuration.md")).unwrap();
        let mut n = 0;
        for (table, keys) in accepted_keys() {
            for key in keys {
                // Set or commented out, at the start of a line.
                let in_example = example.lines().any(|l| {
                    let l = l.trim_start_matches("# ");
                    l.starts_with(&format!("{key} =")) || l == format!("[[{table}.{key}]]")
                });
                assert!(
                    in_example,
                    "[{table}] {key} missing from production.example.toml"
                );
                assert!(
                    reference.contains(&format!("| `{key}` |"))
                        || reference.contains(&format!("`[[{table}.{key}]]`")),
                    "[{table}] {key} missing from docs/configuration.md"
                );
                n += 1;
            }
        }
        assert!(n > 50, "only {n} keys found");
    }
}
