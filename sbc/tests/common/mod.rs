//! Helpers shared by the tests that drive the real `sbc` binary: a test PKI, a config writer,
//! the process, and a TLS client.
#![allow(dead_code)] // each test file uses a different subset

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub struct Pki {
    pub dir: tempfile::TempDir,
    pub ca_der: rustls_pki_types::CertificateDer<'static>,
    pub ca: interop_tests::pki::TestCa,
}

impl Pki {
    /// A test CA (`ca.pem`) and sbc's server certificate for 127.0.0.1 (`sbc.pem`,
    /// `sbc-key.pem`), from the workspace's one test PKI builder (`interop_tests::pki`).
    pub fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = interop_tests::pki::TestCa::root("sbc test CA");
        ca.write_pem(&dir.path().join("ca.pem"));
        ca.issue(dir.path(), "sbc", &["127.0.0.1"], true);
        Pki {
            ca_der: ca.der(),
            ca,
            dir,
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn config(port: u16, media: u16, sources: &str) -> String {
    format!(
        r#"[sip]
listen = ["127.0.0.1:{port}"]
[tls]
certificate = "sbc.pem"
private_key = "sbc-key.pem"
[[carriers]]
name = "test"
source_cidrs = [{sources}]
[media]
advertise_address = "127.0.0.1"
bind_address = "127.0.0.1"
port_min = {media}
port_max = {}
allow_loopback_media = true
[[agent.routes]]
default = true
url = "builtin:echo"
[audit]
path = "audit.jsonl"
[limits]
drain_timeout_secs = 2
[log]
format = "json"
level = "info"
"#,
        media + 99
    )
}

pub struct Sbc {
    pub child: Child,
    pub log: PathBuf,
}

impl Sbc {
    pub fn start(cfg: &Path, log: PathBuf) -> Sbc {
        let child = Command::new(env!("CARGO_BIN_EXE_sbc"))
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Sbc { child, log }
    }

    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    pub fn wait_log(&self, needle: &str) -> bool {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if std::fs::read_to_string(&self.log)
                .unwrap_or_default()
                .contains(needle)
            {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for Sbc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends OPTIONS over TLS; `Some(status line)` or `None` when the connection is refused/closed.
pub fn options(pki: &Pki, port: u16) -> Option<String> {
    let mut tls = connect(pki, port)?;
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKops1\r\nFrom: <sip:ops@127.0.0.1>;tag=1\r\nTo: <sip:sbc@127.0.0.1>\r\nCall-ID: ops-{port}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(msg.as_bytes()).ok()?;
    let mut buf = [0u8; 2048];
    let n = tls.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_string)
}

/// A TLS client connection to sbc that trusts the test CA.
pub fn connect(
    pki: &Pki,
    port: u16,
) -> Option<rustls::StreamOwned<rustls::ClientConnection, TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).ok()?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").ok()?;
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).ok()?;
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
    Some(rustls::StreamOwned::new(conn, tcp))
}

pub fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}
