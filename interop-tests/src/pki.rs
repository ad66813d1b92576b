//! A throw-away test CA (ECDSA P-256, CA:TRUE) and end-entity certificates signed by it.
//!
//! rustls refuses a self-signed CA:TRUE certificate as a server certificate, so every server
//! (sbc's SIP listener, the test agent) gets a leaf signed by the CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, Certificate, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate with its key, as DER and as PEM files.
pub struct Identity {
    pub cert_der: CertificateDer<'static>,
    /// Leaf first, then the CA.
    pub chain_der: Vec<CertificateDer<'static>>,
    pub key_der: Vec<u8>,
    /// PEM chain (leaf first, then the CA).
    pub cert_pem_path: PathBuf,
    pub key_pem_path: PathBuf,
}

impl Identity {
    pub fn private_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }
}

pub struct TestPki {
    pub ca_der: CertificateDer<'static>,
    /// The CA certificate as PEM (sbc's `[agent] ca_bundle`).
    pub ca_pem_path: PathBuf,
    /// sbc's SIP-TLS server certificate.
    pub sbc: Identity,
    /// The test agent's server certificate.
    pub agent: Identity,
    /// A client certificate (mTLS towards the agent).
    pub client: Identity,
    /// A server certificate for 127.0.0.1 from a different CA that sbc does not trust.
    pub untrusted_agent: Identity,
}

struct Ca {
    cert: Certificate,
    key: KeyPair,
}

fn make_ca(cn: &str) -> Ca {
    let key = KeyPair::generate().expect("CA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key).expect("self-sign CA");
    Ca { cert, key }
}

fn make_leaf(dir: &Path, name: &str, ca: &Ca, server: bool) -> Identity {
    let key = KeyPair::generate().expect("leaf key");
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    params.is_ca = IsCa::NoCa;
    params
        .distinguished_name
        .push(DnType::CommonName, format!("sbc interop {name}"));
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if server {
        vec![ExtendedKeyUsagePurpose::ServerAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    };
    let cert = params
        .signed_by(&key, &ca.cert, &ca.key)
        .expect("sign leaf");
    let cert_pem_path = dir.join(format!("{name}.pem"));
    let key_pem_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert_pem_path, format!("{}{}", cert.pem(), ca.cert.pem())).expect("write");
    std::fs::write(&key_pem_path, key.serialize_pem()).expect("write key");
    Identity {
        cert_der: cert.der().clone(),
        chain_der: vec![cert.der().clone(), ca.cert.der().clone()],
        key_der: key.serialize_der(),
        cert_pem_path,
        key_pem_path,
    }
}

impl TestPki {
    pub fn generate(dir: &Path) -> TestPki {
        let ca = make_ca("sbc interop test CA");
        let other = make_ca("untrusted interop CA");
        let ca_pem_path = dir.join("ca.pem");
        std::fs::write(&ca_pem_path, ca.cert.pem()).expect("write ca");
        TestPki {
            ca_der: ca.cert.der().clone(),
            ca_pem_path,
            sbc: make_leaf(dir, "sbc", &ca, true),
            agent: make_leaf(dir, "agent", &ca, true),
            client: make_leaf(dir, "client", &ca, false),
            untrusted_agent: make_leaf(dir, "untrusted-agent", &other, true),
        }
    }
}
