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

/// The SIP listener's server config: TLS 1.3, plus TLS 1.2 with the configured ECDHE+AEAD suites
/// when `min_version` is 1.2; no 0-RTT; client certificates verified against `client_ca` if set.
/// With `TlsIdentity::DevSelfSigned` it generates an ECDSA P-256 certificate for `sip.host`, and
/// refuses when any listen address is not loopback.
pub fn sip_server_config(
    tls: &TlsConfig,
    sip: &SipConfig,
) -> Result<Arc<rustls::ServerConfig>, ConfigError> {
    let provider = provider(tls.min_version, &tls.tls12_suites);
    let (chain, key) = match &tls.identity {
        TlsIdentity::Files {
            certificate,
            private_key,
        } => {
            let chain = load_chain(certificate)?;
            let key = load_key(private_key)?;
            check_key_matches(&provider, &chain, &key, certificate, private_key)?;
            (chain, key)
        }
        TlsIdentity::DevSelfSigned => {
            if let Some(a) = sip.listen.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ConfigError(format!(
                    "tls.dev_self_signed is refused: sip.listen has {a}, which is not a loopback address"
                )));
            }
            dev_self_signed(&sip.host)?
        }
    };
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
/// webpki roots), optional client certificate (mTLS).
pub fn agent_client_config(agent: &AgentConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let provider = provider(TlsVersion::Tls13, &[]);
    let roots = match &agent.ca_bundle {
        Some(ca) => load_roots(ca)?,
        None => webpki_roots(),
    };
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| ConfigError(format!("TLS policy: {e}")))?
        .with_root_certificates(roots);
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

/// Client config for requests sbc originates towards a carrier on a new connection (a BYE after
/// the carrier's connection dropped): same version and suite policy as the listener, carrier
/// certificate verified against `client_ca` if set, else the webpki roots.
pub fn carrier_client_config(tls: &TlsConfig) -> Result<Arc<rustls::ClientConfig>, ConfigError> {
    let provider = provider(tls.min_version, &tls.tls12_suites);
    let roots = match &tls.client_ca {
        Some(ca) => load_roots(ca)?,
        None => webpki_roots(),
    };
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(tls.min_version))
        .map_err(|e| ConfigError(format!("TLS policy: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.enable_early_data = false;
    Ok(Arc::new(config))
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
            "no CERTIFICATE block in this PEM file",
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
