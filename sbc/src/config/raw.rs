//! The raw serde layer: exactly what the TOML file says, with the byte span of every value that
//! conversion may refuse, so errors can name line and column. Nothing here is validated beyond
//! TOML types; `super::convert` does that once. Defaults live in the conversion, not here, so a
//! missing key and a present key go through the same checks.

use serde::Deserialize;
use serde_spanned::Spanned;

/// A value with its byte span in the file.
pub(crate) type S<T> = Spanned<T>;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    pub sip: Option<RawSip>,
    pub tls: Option<RawTls>,
    pub carriers: Option<S<Vec<S<RawCarrier>>>>,
    pub trunks: Option<S<Vec<S<RawTrunk>>>>,
    pub media: Option<RawMedia>,
    pub srtp: Option<RawSrtp>,
    pub agent: Option<RawAgent>,
    pub audit: Option<RawAudit>,
    pub metrics: Option<RawMetrics>,
    pub limits: Option<RawLimits>,
    pub log: Option<RawLog>,
    pub api: Option<RawApi>,
    pub cluster: Option<RawCluster>,
}

/// `[cluster]`: several instances as one service on Redis (issue 17).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub redis_url: S<String>,
    pub redis_password_file: Option<S<String>>,
    pub redis_ca: Option<S<String>>,
    pub instance_id: S<String>,
    pub api_address: S<String>,
    pub api_server_name: Option<S<String>>,
    pub ca: Option<S<String>>,
    pub heartbeat_ms: Option<S<u64>>,
    pub ttl_ms: Option<S<u64>>,
    pub redis_timeout_ms: Option<S<u64>>,
    pub degraded_share: Option<S<f64>>,
    pub readyz_requires_redis: Option<S<bool>>,
    pub carrier_limits: Option<S<std::collections::BTreeMap<String, u32>>>,
    pub account_limits: Option<S<std::collections::BTreeMap<String, u32>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApi {
    pub listen: S<String>,
    pub certificate: Option<S<String>>,
    pub private_key: Option<S<String>>,
    pub dev_self_signed: Option<S<bool>>,
    pub min_version: Option<S<String>>,
    pub requests_per_second: Option<S<u32>>,
    pub recent_calls: Option<S<u64>>,
    pub accounts: Option<Vec<S<RawApiAccount>>>,
    pub callback_ca_bundle: Option<S<String>>,
    pub twiml_url_prefixes: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawApiAccount {
    pub sid: S<String>,
    pub auth_token_file: S<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSip {
    pub listen: Option<S<Vec<S<String>>>>,
    pub host: Option<S<String>>,
    pub server_header: Option<S<String>>,
    pub t1_ms: Option<S<u64>>,
    pub t2_ms: Option<S<u64>>,
    pub t4_ms: Option<S<u64>>,
    pub ringing_after_ms: Option<S<u64>>,
    pub session_expires_secs: Option<S<u64>>,
    pub min_se_secs: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    pub certificate: Option<S<String>>,
    pub private_key: Option<S<String>>,
    pub dev_self_signed: Option<S<bool>>,
    pub min_version: Option<S<String>>,
    pub tls12_cipher_suites: Option<S<Vec<S<String>>>>,
    pub client_ca: Option<S<String>>,
    pub require_client_certificate: Option<S<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCarrier {
    pub name: S<String>,
    pub source_cidrs: S<Vec<S<String>>>,
    pub certificate_names: Option<S<Vec<S<String>>>>,
    pub max_concurrent_calls: Option<S<u32>>,
    pub max_calls_per_second: Option<S<u32>>,
    pub twilio: Option<S<bool>>,
    pub twilio_account_sids: Option<S<Vec<S<String>>>>,
}

/// `[[trunks]]`: a termination trunk for outbound calls (docs/outbound.md).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrunk {
    pub name: S<String>,
    pub uri: S<String>,
    pub username: Option<S<String>>,
    pub password_file: Option<S<String>>,
    pub account_sids: Option<S<Vec<S<String>>>>,
    pub caller_ids: S<Vec<S<String>>>,
    pub allow_destinations: Option<S<Vec<S<String>>>>,
    pub deny_destinations: Option<S<Vec<S<String>>>>,
    pub max_calls_per_second: Option<S<u32>>,
    pub queue: Option<S<u32>>,
    pub max_concurrent_calls: Option<S<u32>>,
    pub early_media: Option<S<bool>>,
    pub ring_timeout_secs: Option<S<u64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMedia {
    pub advertise_address: S<String>,
    pub bind_address: Option<S<String>>,
    pub port_min: Option<S<u16>>,
    pub port_max: Option<S<u16>>,
    pub rtp_timeout_secs: Option<S<u64>>,
    pub mirror_caller_ssrc: Option<S<bool>>,
    pub relatch_packets: Option<S<u32>>,
    pub allow_loopback_media: Option<S<bool>>,
    pub codecs: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawSrtp {
    pub suites: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAgent {
    pub ca_bundle: Option<S<String>>,
    pub client_certificate: Option<S<String>>,
    pub client_private_key: Option<S<String>>,
    pub pinned_spki_sha256: Option<S<Vec<S<String>>>>,
    pub connect_timeout_ms: Option<S<u64>>,
    pub send_timeout_ms: Option<S<u64>>,
    pub send_queue_bytes: Option<S<u64>>,
    pub send_buffer_bytes: Option<S<u64>>,
    pub passthrough_headers: Option<S<Vec<S<String>>>>,
    pub default_account_sid: Option<S<String>>,
    pub routes: Option<S<Vec<S<RawRoute>>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub exact: Option<S<String>>,
    pub prefix: Option<S<String>>,
    pub default: Option<S<bool>>,
    pub url: S<String>,
    pub account_sid: Option<S<String>>,
    pub transfer_allow: Option<S<Vec<S<String>>>>,
    pub status_callback: Option<S<String>>,
    pub status_callback_events: Option<S<Vec<S<String>>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAudit {
    pub path: Option<S<String>>,
    pub fsync: Option<S<bool>>,
    pub number_privacy: Option<S<String>>,
    pub hash_salt_file: Option<S<String>>,
    pub refusal_records_per_second: Option<S<u32>>,
    pub refusal_summary_interval_secs: Option<S<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawMetrics {
    pub listen: Option<S<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLimits {
    pub max_message_bytes: Option<S<u64>>,
    pub max_headers: Option<S<u64>>,
    pub max_sdp_bytes: Option<S<u64>>,
    pub max_media_lines: Option<S<u64>>,
    pub max_connections_per_ip: Option<S<u32>>,
    pub tls_handshake_timeout_ms: Option<S<u64>>,
    pub idle_timeout_secs: Option<S<u64>>,
    pub max_concurrent_calls: Option<S<u32>>,
    pub drain_timeout_secs: Option<S<u64>>,
    pub write_queue_bytes: Option<S<u64>>,
    pub write_timeout_secs: Option<S<u64>>,
    pub worker_threads: Option<S<u32>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLog {
    pub format: Option<S<String>>,
    pub level: Option<S<String>>,
}
