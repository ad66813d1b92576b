//! Every rustls configuration sbc uses is built here, and only here. Anything that weakens
//! verification is named `danger_*` (there is none today).
//!
//! Policy (HIPAA 164.312(e), SOC 2): TLS 1.3 is always offered, with its three AEAD suites; TLS
//! 1.2 only when `tls.min_version = "1.2"`, and then only ECDHE key exchange with AEAD ciphers
//! (the `Tls12Suite` enum cannot name anything else). No 0-RTT anywhere. The agent leg is TLS 1.3
//! only. Each config gets its own `CryptoProvider` (aws-lc-rs, suites filtered), so nothing here
//! depends on the process-wide default provider.

use std::path::Path;
use std::sync::Arc;

use rustls::crypto::{aws_lc_rs, CryptoProvider};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, SupportedCipherSuite, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::config::{
    AgentConfig, ConfigError, SipConfig, Tls12Suite, TlsConfig, TlsIdentity, TlsVersion,
};

/// The negotiated TLS version and cipher suite of an established connection, as the audit
/// record and metrics name them (`TLSv1_3`, `TLS13_AES_128_GCM_SHA256`).
pub fn negotiated(state: &rustls::CommonState) -> (String, String) {
    (
        state
            .protocol_version()
            .map(|v| format!("{v:?}"))
            .unwrap_or_default(),
        state
            .negotiated_cipher_suite()
            .map(|s| format!("{:?}", s.suite()))
            .unwrap_or_default(),
    )
}

/// The negotiated key-exchange group of an established connection, as the audit record names
/// it (`X25519MLKEM768` for the hybrid post-quantum group, `X25519`, `secp256r1`, ...).
pub fn kx_group(state: &rustls::CommonState) -> Option<String> {
    state
        .negotiated_key_exchange_group()
        .map(|g| format!("{:?}", g.name()))
}

/// The three rustls configurations sbc uses, built once per load (start, reload, check-config).
pub struct TlsConfigs {
    /// SIP over TLS towards carriers (server side).
    pub sip_server: Arc<rustls::ServerConfig>,
    /// The agent WebSocket (client side).
    pub agent_client: Arc<rustls::ClientConfig>,
    /// Connections sbc opens to a carrier (client side).
    pub carrier_client: Arc<rustls::ClientConfig>,
    /// The call-control API listener (`[api]`), when configured.
    pub api_server: Option<Arc<rustls::ServerConfig>>,
    /// Status callback deliveries (client side), when `[api]` is configured.
    pub callback_client: Option<Arc<rustls::ClientConfig>>,
}

impl TlsConfigs {
    /// Loads every certificate and key `config` names and builds the three configs.
    pub fn build(config: &crate::config::Config) -> Result<TlsConfigs, ConfigError> {
        Ok(TlsConfigs {
            sip_server: sip_server_config(&config.tls, &config.sip)?,
            agent_client: agent_client_config(&config.agent)?,
            carrier_client: carrier_client_config(&config.tls)?,
            api_server: config
                .api
                .as_ref()
                .map(|api| api_server_config(api, &config.tls))
                .transpose()?,
            callback_client: config
                .api
                .as_ref()
                .map(|api| callback_client_config(api, &config.tls))
                .transpose()?,
        })
    }
}

/// The SIP listener's server config: TLS 1.3, plus TLS 1.2 with the configured ECDHE+AEAD suites
/// when `min_version` is 1.2; no 0-RTT; client certificates verified against `client_ca` if set.
/// With `TlsIdentity::DevSelfSigned` it generates an ECDSA P-256 certificate for `sip.host`, and
/// refuses when any listen address is not loopback.
pub fn sip_server_config(
    tls: &TlsConfig,
    sip: &SipConfig,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = provider(tls.min_version, &tls.tls12_suites);
    let (chain, key) = load_identity(&provider, &tls.identity, || {
        match sip.listen.iter().find(|a| !a.ip().is_loopback()) {
            Some(a) => Err(ConfigError(format!(
                "tls.dev_self_signed is refused: sip.listen has {a}, which is not a loopback address"
            ))),
            None => dev_self_signed(&sip.host),
        }
    })?;
    server_config(tls, provider, chain, key)
}

/// A listener's certificate chain and key: from files (the key checked against the
/// certificate), or the development certificate `dev` makes (after its loopback check).
fn load_identity(
    provider: &Arc<CryptoProvider>,
    identity: &TlsIdentity,
    dev: impl FnOnce() -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError>,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    match identity {
        TlsIdentity::Files {
            certificate,
            private_key,
        } => {
            let chain = load_chain(certificate)?;
            let key = load_key(private_key)?;
            check_key_matches(provider, &chain, &key, certificate, private_key)?;
            Ok((chain, key))
        }
        TlsIdentity::DevSelfSigned => dev(),
    }
}

/// The API listener's server config: the SIP listener's rules (TLS 1.3, plus TLS 1.2 with
/// `[tls] tls12_cipher_suites` when `api.min_version` is 1.2, no 0-RTT), its own certificate,
/// no client certificates (clients authenticate with HTTP Basic), ALPN `http/1.1`.
pub fn api_server_config(
    api: &crate::config::ApiConfig,
    tls: &TlsConfig,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let rules = TlsConfig {
        identity: api.identity.clone(),
        min_version: api.min_version,
        tls12_suites: tls.tls12_suites.clone(),
        client_ca: None,
        require_client_certificate: false,
    };
    let provider = provider(rules.min_version, &rules.tls12_suites);
    let (chain, key) = load_identity(&provider, &rules.identity, || {
        if !api.listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "api.dev_self_signed is refused: api.listen {} is not a loopback address",
                api.listen
            )));
        }
        dev_self_signed(&api.listen.ip().to_string())
    })?;
    let config = server_config(&rules, provider, chain, key)?;
    let mut config = Arc::unwrap_or_clone(config);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn server_config(
    tls: &TlsConfig,
    provider: Arc<CryptoProvider>,
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(tls.min_version))
        .map_err(|e| ConfigError(format!("TLS policy: {e}")))?;
    let builder = match &tls.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let roots = load_roots(ca)?;
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone());
            let verifier = if tls.require_client_certificate {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            let verifier = verifier.build().map_err(|e| {
                ConfigError::in_file(
                    ca,
                    format!("cannot verify client certificates with this CA: {e}"),
                )
            })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| ConfigError(format!("TLS server certificate refused: {e}")))?;
    // No 0-RTT: early data is replayable. (Both are rustls defaults; set so a future default
    // change cannot turn them on.)
    config.max_early_data_size = 0;
    config.send_half_rtt_data = false;
    // Our suite order (strongest first, ECDSA first) wins over the client's.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}

/// The agent leg's client config: TLS 1.3 only, server verified against `ca_bundle` (or the
/// webpki roots), optionally also pinned (`pinned_spki_sha256`: the certificate's key must hash
/// to one of the pins, else the handshake fails with "SPKI pin mismatch" and the call gets
/// 503), optional client certificate (mTLS).
pub fn agent_client_config(agent: &AgentConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let provider = provider(TlsVersion::Tls13, &[]);
    let roots = match &agent.ca_bundle {
        Some(ca) => load_roots(ca)?,
        None => webpki_roots(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError(format!("TLS policy: {e}")))?;
    let builder = if agent.pinned_spki_sha256.is_empty() {
        builder.with_root_certificates(roots)
    } else {
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| ConfigError(format!("agent CA bundle: {e}")))?;
        // `dangerous()` is rustls's name for any custom verifier; this one runs the full WebPKI
        // verification first and only adds a check, so it is not a `danger_*` in our sense.
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedSpkiVerifier {
                webpki,
                pins: agent.pinned_spki_sha256.clone(),
            }))
    };
    let mut config = match &agent.client_certificate {
        None => builder.with_no_client_auth(),
        Some((cert, key_path)) => {
            let chain = load_chain(cert)?;
            let key = load_key(key_path)?;
            check_key_matches(&provider, &chain, &key, cert, key_path)?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                ConfigError::in_file(cert, format!("agent client certificate refused: {e}"))
            })?
        }
    };
    config.enable_early_data = false;
    // No ALPN: the WebSocket upgrade is HTTP/1.1, and the agents in the field do not all offer it.
    config.alpn_protocols.clear();
    Ok(Arc::new(config))
}

/// SHA-256 over a certificate's SubjectPublicKeyInfo DER (RFC 7469 §2.4: the SPKI, not the
/// whole certificate, so that a pin survives renewal with the same key).
pub fn spki_sha256(cert: &CertificateDer<'_>) -> Result<[u8; 32], rustls::Error> {
    use sha2::Digest;
    let ee = webpki::EndEntityCert::try_from(cert)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
    Ok(sha2::Sha256::digest(ee.subject_public_key_info().as_ref()).into())
}

/// The agent certificate's key is not one of `agent.pinned_spki_sha256`.
struct PinMismatch;

impl std::fmt::Display for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("agent certificate SPKI pin mismatch (agent.pinned_spki_sha256)")
    }
}

// rustls prints a custom certificate error with Debug: say the same thing.
impl std::fmt::Debug for PinMismatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl std::error::Error for PinMismatch {}

/// Verifies the agent's certificate as usual (chain to `ca_bundle`, name, validity), then
/// requires its end-entity SubjectPublicKeyInfo to hash to one of the pins.
#[derive(Debug)]
struct PinnedSpkiVerifier {
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    pins: Vec<[u8; 32]>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedSpkiVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        let verified = self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        let spki = spki_sha256(end_entity)?;
        if self.pins.contains(&spki) {
            Ok(verified)
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(PinMismatch))),
            ))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// Client config for requests sbc originates towards a carrier on a new connection (a BYE after
/// the carrier's connection dropped): same version and suite policy as the listener, carrier
/// certificate verified against `client_ca` if set, else the webpki roots.
pub fn carrier_client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    plain_client_config(
        tls.min_version,
        &tls.tls12_suites,
        tls.client_ca.as_deref(),
        None,
    )
}

/// A client config under sbc's version and suite policy, no client certificate, no early data:
/// servers verified against the CA bundle at `ca` (else the webpki roots); `alpn` if given.
fn plain_client_config(
    min: TlsVersion,
    tls12: &[Tls12Suite],
    ca: Option<&Path>,
    alpn: Option<&[u8]>,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let roots = match ca {
        Some(ca) => load_roots(ca)?,
        None => webpki_roots(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider(min, tls12))
        .with_protocol_versions(versions(min))
        .map_err(|e| ConfigError(format!("TLS policy: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_early_data = false;
    if let Some(alpn) = alpn {
        config.alpn_protocols = vec![alpn.to_vec()];
    }
    Ok(Arc::new(config))
}

/// Status callback deliveries: the SIP listener's version and suite rules, receivers verified
/// against `api.callback_ca_bundle` (else the webpki roots), ALPN `http/1.1`.
pub fn callback_client_config(
    api: &crate::config::ApiConfig,
    tls: &TlsConfig,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    plain_client_config(
        api.min_version,
        &tls.tls12_suites,
        api.callback_ca_bundle.as_deref(),
        Some(b"http/1.1"),
    )
}

/// Requests one instance forwards to another's API (`[cluster]`): TLS 1.3 only (every sbc API
/// offers it), the peer verified against `cluster.ca` (the cluster's own CA; else the webpki
/// roots) for its `api_server_name`, ALPN `http/1.1`.
pub fn cluster_client_config(
    cluster: &crate::config::ClusterConfig,
) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    plain_client_config(
        TlsVersion::Tls13,
        &[],
        cluster.ca.as_deref(),
        Some(b"http/1.1"),
    )
}

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    static BOTH: [&SupportedProtocolVersion; 2] =
        [&rustls::version::TLS13, &rustls::version::TLS12];
    static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
    match min {
        TlsVersion::Tls12 => &BOTH,
        TlsVersion::Tls13 => &TLS13_ONLY,
    }
}

/// aws-lc-rs with only the allowed suites: the three TLS 1.3 AEAD suites, then (when TLS 1.2 is
/// allowed) the configured TLS 1.2 ones in config order. Key exchange groups are the provider's
/// (X25519MLKEM768, X25519, P-256, P-384): all ephemeral.
fn provider(min: TlsVersion, tls12: &[Tls12Suite]) -> Arc<CryptoProvider> {
    use aws_lc_rs::cipher_suite as cs;
    let mut suites: Vec<SupportedCipherSuite> = vec![
        cs::TLS13_AES_256_GCM_SHA384,
        cs::TLS13_AES_128_GCM_SHA256,
        cs::TLS13_CHACHA20_POLY1305_SHA256,
    ];
    if min == TlsVersion::Tls12 {
        suites.extend(tls12.iter().map(|s| match s {
            Tls12Suite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 => {
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256
            }
            Tls12Suite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 => {
                cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384
            }
            Tls12Suite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256 => {
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
            }
            Tls12Suite::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => {
                cs::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256
            }
            Tls12Suite::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => {
                cs::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384
            }
            Tls12Suite::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256 => {
                cs::TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256
            }
        }));
    }
    Arc::new(CryptoProvider {
        cipher_suites: suites,
        ..aws_lc_rs::default_provider()
    })
}

/// A PEM certificate chain, leaf first.
fn load_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let chain = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            ConfigError::in_file(path, format!("cannot read certificate: {}", pem_error(e)))
        })?;
    if chain.is_empty() {
        return Err(ConfigError::in_file(
            path,
            "cannot read certificate: no CERTIFICATE block in this PEM file",
        ));
    }
    Ok(chain)
}

/// A PEM private key: PKCS#8, SEC1 (EC) or PKCS#1 (RSA).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        ConfigError::in_file(path, format!("cannot read private key: {}", pem_error(e)))
    })
}

fn pem_error(e: rustls_pki_types::pem::Error) -> String {
    use rustls_pki_types::pem::Error;
    match e {
        Error::Io(io) => io.to_string(),
        Error::NoItemsFound => "no PEM item of the expected type in this file".to_string(),
        other => format!("not valid PEM ({other:?})"),
    }
}

/// The private key must be the one whose public half is in the leaf certificate.
fn check_key_matches(
    provider: &CryptoProvider,
    chain: &[CertificateDer<'static>],
    key: &PrivateKeyDer<'static>,
    cert_path: &Path,
    key_path: &Path,
) -> Result<(), ConfigError> {
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|e| ConfigError::in_file(key_path, format!("unusable private key: {e}")))?;
    match CertifiedKey::new(chain.to_vec(), signing).keys_match() {
        Ok(()) => Ok(()),
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) => {
            Err(ConfigError(format!(
                "{}: key does not match certificate {}",
                key_path.display(),
                cert_path.display()
            )))
        }
        Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Err(ConfigError(format!(
                "{}: cannot check that this key matches certificate {}",
                key_path.display(),
                cert_path.display()
            )))
        }
        Err(e) => Err(ConfigError::in_file(
            cert_path,
            format!("invalid certificate: {e}"),
        )),
    }
}

fn load_roots(path: &Path) -> Result<RootCertStore, ConfigError> {
    let certs = load_chain(path)?;
    let mut roots = RootCertStore::empty();
    for (i, c) in certs.into_iter().enumerate() {
        roots.add(c).map_err(|e| {
            ConfigError::in_file(
                path,
                format!("CA certificate #{} is not usable: {e}", i + 1),
            )
        })?;
    }
    Ok(roots)
}

fn webpki_roots() -> RootCertStore {
    RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    }
}

/// An ECDSA P-256 end-entity certificate (not a CA: rustls refuses CA:TRUE leaves) for
/// `host`, 127.0.0.1, ::1 and localhost. Development only: nothing can verify it.
fn dev_self_signed(
    host: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), ConfigError> {
    let mut names = vec![host.to_string()];
    for n in ["127.0.0.1", "::1", "localhost"] {
        if !names.iter().any(|h| h.eq_ignore_ascii_case(n)) {
            names.push(n.to_string());
        }
    }
    let fail =
        |e: rcgen::Error| ConfigError(format!("cannot generate the development certificate: {e}"));
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(fail)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(fail)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sbc development certificate");
    let cert = params.self_signed(&key).map_err(fail)?;
    Ok((
        vec![cert.der().clone()],
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use rustls::{CipherSuite, ClientConnection, ProtocolVersion, ServerConnection};
    use std::path::PathBuf;

    /// A CA, a server certificate for `sbc.test` and a client certificate, as PEM files.
    struct Pki {
        dir: tempfile::TempDir,
        ca_der: CertificateDer<'static>,
    }

    impl Pki {
        fn new() -> Pki {
            let dir = tempfile::tempdir().unwrap();
            let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
            let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let ca = p.self_signed(&ca_key).unwrap();
            std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
            for name in ["server", "client"] {
                let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
                let cert = rcgen::CertificateParams::new(vec!["sbc.test".to_string()])
                    .unwrap()
                    .signed_by(&key, &ca, &ca_key)
                    .unwrap();
                std::fs::write(dir.path().join(format!("{name}.pem")), cert.pem()).unwrap();
                std::fs::write(
                    dir.path().join(format!("{name}-key.pem")),
                    key.serialize_pem(),
                )
                .unwrap();
            }
            Pki {
                dir,
                ca_der: ca.der().clone(),
            }
        }

        fn path(&self, n: &str) -> PathBuf {
            self.dir.path().join(n)
        }

        fn config(&self, tls_extra: &str) -> Config {
            let text = format!(
                "[sip]\nlisten = [\"0.0.0.0:5061\"]\nhost = \"sbc.test\"\n\
                 [tls]\ncertificate = \"server.pem\"\nprivate_key = \"server-key.pem\"\n{tls_extra}\n\
                 [[carriers]]\nname = \"c\"\nsource_cidrs = [\"192.0.2.0/24\"]\n\
                 [media]\nadvertise_address = \"192.0.2.1\"\n\
                 [agent]\nca_bundle = \"ca.pem\"\n[[agent.routes]]\ndefault = true\nurl = \"builtin:echo\"\n\
                 [audit]\npath = \"-\"\n"
            );
            Config::parse_str(&text, &self.path("sbc.toml")).unwrap()
        }

        /// A client restricted to `versions` and (if non-empty) `suites`, trusting the test CA.
        fn client(
            &self,
            versions: &[&'static SupportedProtocolVersion],
            suites: &[SupportedCipherSuite],
            with_cert: bool,
        ) -> Arc<rustls::ClientConfig> {
            let mut provider = aws_lc_rs::default_provider();
            if !suites.is_empty() {
                provider.cipher_suites = suites.to_vec();
            }
            let mut roots = RootCertStore::empty();
            roots.add(self.ca_der.clone()).unwrap();
            let b = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
                .with_protocol_versions(versions)
                .unwrap()
                .with_root_certificates(roots);
            Arc::new(if with_cert {
                b.with_client_auth_cert(
                    load_chain(&self.path("client.pem")).unwrap(),
                    load_key(&self.path("client-key.pem")).unwrap(),
                )
                .unwrap()
            } else {
                b.with_no_client_auth()
            })
        }
    }

    /// Runs a handshake in memory; returns the negotiated version and suite.
    fn handshake(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<(ProtocolVersion, CipherSuite), rustls::Error> {
        handshake_to(server, client, "sbc.test")
    }

    fn handshake_to(
        server: Arc<rustls::ServerConfig>,
        client: Arc<rustls::ClientConfig>,
        name: &str,
    ) -> Result<(ProtocolVersion, CipherSuite), rustls::Error> {
        let mut s = ServerConnection::new(server).unwrap();
        let name = rustls_pki_types::ServerName::try_from(name.to_string()).unwrap();
        let mut c = ClientConnection::new(client, name).unwrap();
        for _ in 0..20 {
            let mut buf = Vec::new();
            while c.wants_write() {
                c.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                s.read_tls(&mut rd).unwrap();
            }
            s.process_new_packets()?;
            let mut buf = Vec::new();
            while s.wants_write() {
                s.write_tls(&mut buf).unwrap();
            }
            let mut rd = &buf[..];
            while !rd.is_empty() {
                c.read_tls(&mut rd).unwrap();
            }
            c.process_new_packets()?;
            if !s.is_handshaking() && !c.is_handshaking() {
                // The client's last flight (its Finished, or an alert) must reach the server.
                let mut buf = Vec::new();
                while c.wants_write() {
                    c.write_tls(&mut buf).unwrap();
                }
                let mut rd = &buf[..];
                while !rd.is_empty() {
                    s.read_tls(&mut rd).unwrap();
                }
                s.process_new_packets()?;
                return Ok((
                    s.protocol_version().unwrap(),
                    s.negotiated_cipher_suite().unwrap().suite(),
                ));
            }
        }
        panic!("handshake did not finish");
    }

    use aws_lc_rs::cipher_suite as cs;
    const TLS12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    const TLS13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];

    fn server(c: &Config) -> Arc<rustls::ServerConfig> {
        sip_server_config(&c.tls, &c.sip).unwrap()
    }

    #[test]
    fn tls13_is_always_offered_and_preferred() {
        let pki = Pki::new();
        let (v, _) = handshake(
            server(&pki.config("")),
            pki.client(rustls::DEFAULT_VERSIONS, &[], false),
        )
        .unwrap();
        assert_eq!(v, ProtocolVersion::TLSv1_3);
    }

    #[test]
    fn tls12_uses_the_configured_ecdhe_aead_suites_in_our_order() {
        let pki = Pki::new();
        let c = pki.config("tls12_cipher_suites = [\"TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\", \"TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256\"]");
        let client = pki.client(
            TLS12,
            &[
                cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
                cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
            ],
            false,
        );
        let (v, suite) = handshake(server(&c), client).unwrap();
        assert_eq!(v, ProtocolVersion::TLSv1_2);
        assert_eq!(
            suite,
            CipherSuite::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256
        );

        // A suite the client offers but the config leaves out is never chosen.
        let client = pki.client(TLS12, &[cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384], false);
        assert!(handshake(server(&c), client).is_err());
    }

    #[test]
    fn min_version_1_3_refuses_tls12_clients() {
        let pki = Pki::new();
        let c = pki.config("min_version = \"1.3\"");
        assert!(handshake(server(&c), pki.client(TLS12, &[], false)).is_err());
        assert!(handshake(server(&c), pki.client(TLS13, &[], false)).is_ok());
    }

    #[test]
    fn no_early_data() {
        let pki = Pki::new();
        let s = server(&pki.config(""));
        assert_eq!(s.max_early_data_size, 0);
        assert!(!s.send_half_rtt_data);
        let a = agent_client_config(&pki.config("").agent).unwrap();
        assert!(!a.enable_early_data);
        assert!(a.alpn_protocols.is_empty());
    }

    #[test]
    fn client_certificates_are_verified_when_required() {
        let pki = Pki::new();
        let c = pki.config("client_ca = \"ca.pem\"\nrequire_client_certificate = true");
        assert!(handshake(server(&c), pki.client(TLS13, &[], false)).is_err());
        assert!(handshake(server(&c), pki.client(TLS13, &[], true)).is_ok());
        let c = pki.config("client_ca = \"ca.pem\"");
        assert!(handshake(server(&c), pki.client(TLS13, &[], false)).is_ok());
    }

    #[test]
    fn agent_leg_is_tls13_only() {
        let pki = Pki::new();
        let c = pki.config("");
        let agent = agent_client_config(&c.agent).unwrap();
        let (v, _) = handshake(server(&c), agent.clone()).unwrap();
        assert_eq!(v, ProtocolVersion::TLSv1_3);
        // A server that only speaks TLS 1.2 is refused.
        let only12 = rustls::ServerConfig::builder_with_provider(provider(
            TlsVersion::Tls12,
            &Tls12Suite::ALL,
        ))
        .with_protocol_versions(TLS12)
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            load_chain(&pki.path("server.pem")).unwrap(),
            load_key(&pki.path("server-key.pem")).unwrap(),
        )
        .unwrap();
        assert!(handshake(Arc::new(only12), agent).is_err());
    }

    /// `agent.pinned_spki_sha256`: the agent's certificate must carry a pinned key, on top of
    /// CA verification; a mismatch fails the handshake with an error that says so.
    #[test]
    fn agent_spki_pinning() {
        use sha2::Digest;
        let pki = Pki::new();
        let mut c = pki.config("");
        let key = std::fs::read_to_string(pki.path("server-key.pem")).unwrap();
        let spki = rcgen::KeyPair::from_pem(&key).unwrap().public_key_der();
        let pin: [u8; 32] = sha2::Sha256::digest(&spki).into();
        c.agent.pinned_spki_sha256 = vec![[7; 32], pin];
        let agent = agent_client_config(&c.agent).unwrap();
        assert!(handshake(server(&c), agent).is_ok());
        c.agent.pinned_spki_sha256 = vec![[7; 32]];
        let agent = agent_client_config(&c.agent).unwrap();
        let e = handshake(server(&c), agent).unwrap_err();
        assert!(e.to_string().contains("pin mismatch"), "{e}");
        // The pin adds to CA verification: a pinned key under the wrong name still fails.
        c.agent.pinned_spki_sha256 = vec![pin];
        let agent = agent_client_config(&c.agent).unwrap();
        assert!(handshake_to(server(&c), agent, "other.test").is_err());
    }

    #[test]
    fn carrier_client_follows_the_listener_policy() {
        let pki = Pki::new();
        let c = pki.config("client_ca = \"ca.pem\"\nmin_version = \"1.3\"");
        let carrier = carrier_client_config(&c.tls).unwrap();
        let (v, _) = handshake(server(&c), carrier).unwrap();
        assert_eq!(v, ProtocolVersion::TLSv1_3);
    }

    #[test]
    fn dev_certificate_only_on_loopback() {
        let pki = Pki::new();
        let mut c = pki.config("");
        c.tls.identity = TlsIdentity::DevSelfSigned;
        let err = sip_server_config(&c.tls, &c.sip).unwrap_err().to_string();
        assert!(err.contains("not a loopback address"), "{err}");
        c.sip.listen = vec![
            "127.0.0.1:5061".parse().unwrap(),
            "[::1]:5061".parse().unwrap(),
        ];
        sip_server_config(&c.tls, &c.sip).unwrap();

        // The generated certificate verifies for sip.host, localhost and both loopback addresses
        // once a client trusts it.
        let (chain, key) = dev_self_signed("sbc.test").unwrap();
        let server =
            server_config(&c.tls, provider(TlsVersion::Tls13, &[]), chain.clone(), key).unwrap();
        let mut roots = RootCertStore::empty();
        roots.add(chain[0].clone()).unwrap();
        let client = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider(TlsVersion::Tls13, &[]))
                .with_protocol_versions(TLS13)
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );
        for name in ["sbc.test", "localhost", "127.0.0.1", "::1"] {
            handshake_to(server.clone(), client.clone(), name)
                .unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(handshake_to(server, client, "other.test").is_err());
    }
}
