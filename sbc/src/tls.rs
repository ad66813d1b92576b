//! Every rustls configuration sbc uses is built here, and only here. Anything that weakens
//! verification is named `danger_*`.
//!
//! INTERFACE STUB: the config helper implements these.

use std::sync::Arc;

use crate::config::{AgentConfig, ConfigError, SipConfig, TlsConfig};

/// The SIP listener's server config: TLS 1.3, plus TLS 1.2 with the configured ECDHE+AEAD suites
/// when `min_version` is 1.2; no 0-RTT; client certificates verified against `client_ca` if set.
/// With `TlsIdentity::DevSelfSigned` it generates an ECDSA P-256 certificate for `sip.host`, and
/// refuses when any listen address is not loopback.
pub fn sip_server_config(
    tls: &TlsConfig,
    sip: &SipConfig,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let _ = (tls, sip);
    unimplemented!("tls stub")
}

/// The agent leg's client config: TLS 1.3 only, server verified against `ca_bundle` (or the
/// webpki roots), optional client certificate (mTLS).
pub fn agent_client_config(agent: &AgentConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let _ = agent;
    unimplemented!("tls stub")
}

/// Client config for requests sbc originates towards a carrier on a new connection (a BYE after
/// the carrier's connection dropped): same version and suite policy as the listener, carrier
/// certificate verified against `client_ca` if set, else the webpki roots.
pub fn carrier_client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let _ = tls;
    unimplemented!("tls stub")
}
