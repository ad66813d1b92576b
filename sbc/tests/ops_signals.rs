//! Operations against the real binary: SIGHUP reloads the configuration (an invalid one is
//! refused and the old one stays), SIGTERM drains and exits 0.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Pki {
    dir: tempfile::TempDir,
    ca_der: rustls_pki_types::CertificateDer<'static>,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let leaf = params.signed_by(&key, &ca, &ca_key).unwrap();
        std::fs::write(dir.path().join("sbc.pem"), leaf.pem()).unwrap();
        std::fs::write(dir.path().join("sbc-key.pem"), key.serialize_pem()).unwrap();
        Pki {
            ca_der: ca.der().clone(),
            dir,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn config(port: u16, media: u16, sources: &str) -> String {
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

struct Sbc {
    child: Child,
    log: PathBuf,
}

impl Sbc {
    fn start(cfg: &Path, log: PathBuf) -> Sbc {
        let child = Command::new(env!("CARGO_BIN_EXE_sbc"))
            .args(["run", "--config"])
            .arg(cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Sbc { child, log }
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
    }

    fn wait_log(&self, needle: &str) -> bool {
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
fn options(pki: &Pki, port: u16) -> Option<String> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca_der.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let conn = rustls::ClientConnection::new(Arc::new(cfg), name).unwrap();
    let tcp = TcpStream::connect(("127.0.0.1", port)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let msg = format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bKops1\r\nFrom: <sip:ops@127.0.0.1>;tag=1\r\nTo: <sip:sbc@127.0.0.1>\r\nCall-ID: ops-{port}\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(msg.as_bytes()).ok()?;
    let mut buf = [0u8; 2048];
    let n = tls.read(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    text.lines().next().map(str::to_string)
}

fn wait_until(mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

#[test]
fn sighup_reloads_refuses_bad_config_and_sigterm_exits_zero() {
    let pki = Pki::new();
    let port = free_port();
    let cfg = pki.path("sbc.toml");
    std::fs::write(&cfg, config(port, 43000, r#""127.0.0.0/8""#)).unwrap();
    let mut sbc = Sbc::start(&cfg, pki.path("sbc.log"));
    assert!(
        wait_until(|| options(&pki, port).is_some()),
        "sbc did not come up: {}",
        std::fs::read_to_string(pki.path("sbc.log")).unwrap_or_default()
    );
    assert_eq!(options(&pki, port).as_deref(), Some("SIP/2.0 200 OK"));

    // An invalid file is refused; the running configuration stays.
    std::fs::write(&cfg, "[sip]\nlisten = [\"127.0.0.1:1\"]\nno_such_key = 1\n").unwrap();
    sbc.signal("-HUP");
    assert!(sbc.wait_log("reload refused"), "no refusal logged");
    assert_eq!(options(&pki, port).as_deref(), Some("SIP/2.0 200 OK"));

    // A valid change takes effect: loopback is no longer an allowed carrier source.
    std::fs::write(&cfg, config(port, 43000, r#""10.0.0.0/8""#)).unwrap();
    sbc.signal("-HUP");
    assert!(sbc.wait_log("configuration reloaded"), "no reload logged");
    assert!(
        wait_until(|| options(&pki, port).is_none()),
        "loopback still accepted after the reload"
    );

    sbc.signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = sbc.child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "sbc did not exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(sbc.wait_log("sbc stopped"));
}
