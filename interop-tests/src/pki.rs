//! The one test PKI builder of the workspace: throw-away CAs (ECDSA P-256, CA:TRUE), intermediates,
//! and end-entity certificates signed by them. The interop tests and sbc's own binary tests
//! (`sbc/tests/`) all build their certificates here.
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
    /// A server certificate for 127.0.0.1, 127.0.0.2 and 127.0.0.3 (the cluster tests'
    /// instances' APIs), from the test CA.
    pub cluster: Identity,
}

/// A test CA (root or intermediate) that issues certificates.
pub struct TestCa {
    cert: Certificate,
    key: KeyPair,
    /// The CAs between this one and the root (PEM, root left out), for the chains of its leaves.
    chain_pem: String,
    is_root: bool,
}

impl TestCa {
    /// A self-signed root named `cn`.
    pub fn root(cn: &str) -> TestCa {
        let key = KeyPair::generate().expect("CA key");
        let cert = ca_params(cn).self_signed(&key).expect("self-sign CA");
        TestCa {
            cert,
            key,
            chain_pem: String::new(),
            is_root: true,
        }
    }

    /// An intermediate CA named `cn`, signed by this one.
    pub fn intermediate(&self, cn: &str) -> TestCa {
        let key = KeyPair::generate().expect("intermediate key");
        let cert = ca_params(cn)
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign intermediate");
        TestCa {
            cert,
            key,
            chain_pem: if self.is_root {
                String::new()
            } else {
                format!("{}{}", self.cert.pem(), self.chain_pem)
            },
            is_root: false,
        }
    }

    pub fn pem(&self) -> String {
        self.cert.pem()
    }

    pub fn der(&self) -> CertificateDer<'static> {
        self.cert.der().clone()
    }

    /// Writes the CA certificate as PEM to `path`.
    pub fn write_pem(&self, path: &Path) {
        std::fs::write(path, self.cert.pem()).expect("write CA");
    }

    /// An end-entity certificate for `names` (DNS names or IP addresses), written as
    /// `dir/{file}.pem` (leaf, this CA, and the CAs between it and the root) and
    /// `dir/{file}-key.pem`. `server` picks the extended key usage (serverAuth or clientAuth).
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str], server: bool) -> Identity {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params.is_ca = IsCa::NoCa;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("sbc test {file}"));
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("sign leaf");
        let cert_pem_path = dir.join(format!("{file}.pem"));
        let key_pem_path = dir.join(format!("{file}-key.pem"));
        let chain_pem = format!("{}{}{}", cert.pem(), self.cert.pem(), self.chain_pem);
        std::fs::write(&cert_pem_path, chain_pem).expect("write");
        std::fs::write(&key_pem_path, key.serialize_pem()).expect("write key");
        Identity {
            cert_der: cert.der().clone(),
            chain_der: vec![cert.der().clone(), self.cert.der().clone()],
            key_der: key.serialize_der(),
            cert_pem_path,
            key_pem_path,
        }
    }
}

fn ca_params(cn: &str) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, cn);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// The names every interop server certificate carries.
const LOCAL: [&str; 2] = ["127.0.0.1", "localhost"];

impl TestPki {
    pub fn generate(dir: &Path) -> TestPki {
        let ca = TestCa::root("sbc interop test CA");
        let other = TestCa::root("untrusted interop CA");
        let ca_pem_path = dir.join("ca.pem");
        ca.write_pem(&ca_pem_path);
        TestPki {
            ca_der: ca.der(),
            ca_pem_path,
            sbc: ca.issue(dir, "sbc", &LOCAL, true),
            agent: ca.issue(dir, "agent", &LOCAL, true),
            client: ca.issue(dir, "client", &LOCAL, false),
            untrusted_agent: other.issue(dir, "untrusted-agent", &LOCAL, true),
            cluster: ca.issue(
                dir,
                "cluster",
                &["127.0.0.1", "127.0.0.2", "127.0.0.3"],
                true,
            ),
        }
    }
}
