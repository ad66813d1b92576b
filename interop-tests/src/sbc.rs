//! The real `sbc` binary as a child process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::{Ports, TestEnv};

/// What a test may change in sbc's config; everything else is fixed (see `config_toml`).
#[derive(Debug, Clone)]
pub struct SbcOptions {
    /// `wss://...` or `builtin:echo`.
    pub agent_url: String,
    pub source_cidrs: Vec<String>,
    pub log_level: String,
    pub ringing_after_ms: u64,
    pub rtp_timeout_secs: u64,
    pub max_calls_per_second: u32,
    pub max_concurrent_calls: u32,
    pub connect_timeout_ms: u64,
    /// Present sbc's client certificate to the agent (mTLS).
    pub agent_client_cert: bool,
    /// `[media] mirror_caller_ssrc` (SIPp's echo check needs it).
    pub mirror_caller_ssrc: bool,
    /// `[limits] drain_timeout_secs` (sbc's default when `None`).
    pub drain_timeout_secs: Option<u64>,
    /// `[limits] max_connections_per_ip`.
    pub max_connections_per_ip: u32,
    /// Extra `[[agent.routes]]` before the default one: (`"exact"` or `"prefix"`, number, url).
    pub routes: Vec<(String, String, String)>,
    /// `[tls] client_ca` = the test CA: the roots sbc trusts when it connects to a carrier.
    pub carrier_ca: bool,
    /// `[media] port_min, port_max` instead of the test's whole media block.
    pub media_ports: Option<(u16, u16)>,
    /// Extra `[limits]` lines, e.g. `"max_headers = 20"`.
    pub extra_limits: Vec<String>,
    /// Extra `[audit]` lines, e.g. `"refusal_records_per_second = 5"`.
    pub extra_audit: Vec<String>,
    /// Extra lines in the test carrier's `[[carriers]]` table, e.g. `"twilio = true"`.
    pub extra_carrier: Vec<String>,
    /// More carriers after `test`: (name, source CIDRs), e.g. `("other", vec!["127.0.0.2/32"])`.
    pub extra_carriers: Vec<(String, Vec<String>)>,
    /// Extra `[agent]` lines, e.g. `"send_timeout_ms = 500"`.
    pub extra_agent: Vec<String>,
    /// Extra lines in the default `[[agent.routes]]`, e.g. `"account_sid = \"AC...\""`.
    pub extra_default_route: Vec<String>,
    /// Extra TOML at the end of the file (whole sections, e.g. `[api]`).
    pub extra_toml: Vec<String>,
    /// The address sbc's SIP listener binds and names itself by (another 127.0.0.0/8 address
    /// for a second instance in one test); media and metrics stay on 127.0.0.1.
    pub listen_ip: String,
}

impl SbcOptions {
    pub fn agent(url: impl Into<String>) -> SbcOptions {
        SbcOptions {
            agent_url: url.into(),
            source_cidrs: vec!["127.0.0.0/8".into()],
            log_level: "debug".into(),
            ringing_after_ms: 1000,
            rtp_timeout_secs: 10,
            max_calls_per_second: 50,
            max_concurrent_calls: 100,
            connect_timeout_ms: 2000,
            agent_client_cert: false,
            mirror_caller_ssrc: true,
            drain_timeout_secs: None,
            routes: Vec::new(),
            max_connections_per_ip: 64,
            carrier_ca: false,
            media_ports: None,
            extra_limits: Vec::new(),
            extra_carrier: Vec::new(),
            extra_audit: Vec::new(),
            extra_carriers: Vec::new(),
            extra_agent: Vec::new(),
            extra_default_route: Vec::new(),
            extra_toml: Vec::new(),
            listen_ip: "127.0.0.1".into(),
        }
    }

    pub fn builtin_echo() -> SbcOptions {
        SbcOptions::agent("builtin:echo")
    }
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

pub fn config_toml(env: &TestEnv, o: &SbcOptions, audit: &Path) -> String {
    config_toml_with(env, &env.ports, o, audit)
}

/// [`config_toml`] with ports other than the test's own (a second instance in one test).
pub fn config_toml_with(env: &TestEnv, p: &Ports, o: &SbcOptions, audit: &Path) -> String {
    let cidrs: Vec<String> = o.source_cidrs.iter().map(|c| format!("{c:?}")).collect();
    let client = if o.agent_client_cert {
        format!(
            "client_certificate = {}\nclient_private_key = {}\n",
            toml_str(&env.pki.client.cert_pem_path),
            toml_str(&env.pki.client.key_pem_path)
        )
    } else {
        String::new()
    };
    format!(
        r#"[sip]
listen = ["{ip}:{sip}"]
host = "{ip}"
t1_ms = 500
ringing_after_ms = {ringing}

[tls]
certificate = {cert}
private_key = {key}
min_version = "1.2"
{carrier_ca}
[[carriers]]
name = "test"
source_cidrs = [{cidrs}]
max_concurrent_calls = {maxcalls}
max_calls_per_second = {cps}
{extra_carrier}
{extra_carriers}

[media]
advertise_address = "127.0.0.1"
bind_address = "127.0.0.1"
port_min = {mmin}
port_max = {mmax}
rtp_timeout_secs = {rtpto}
mirror_caller_ssrc = {mirror}
allow_loopback_media = true

[srtp]
suites = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]

[agent]
ca_bundle = {ca}
connect_timeout_ms = {cto}
passthrough_headers = ["X-Twilio-CallSid"]
{extra_agent}
{client}
{routes}[[agent.routes]]
default = true
url = {url:?}
{extra_route}

[audit]
path = {audit}
{extra_audit}

[metrics]
listen = "127.0.0.1:{metrics}"

[limits]
max_connections_per_ip = {maxconn}
{drain}
{extra_limits}

[log]
format = "json"
level = {level:?}

{extra_toml}
"#,
        sip = p.sip,
        ip = o.listen_ip,
        ringing = o.ringing_after_ms,
        cert = toml_str(&env.pki.sbc.cert_pem_path),
        key = toml_str(&env.pki.sbc.key_pem_path),
        cidrs = cidrs.join(", "),
        cps = o.max_calls_per_second,
        maxcalls = o.max_concurrent_calls,
        mirror = o.mirror_caller_ssrc,
        maxconn = o.max_connections_per_ip,
        drain = o
            .drain_timeout_secs
            .map(|d| format!("drain_timeout_secs = {d}"))
            .unwrap_or_default(),
        mmin = o.media_ports.map_or(p.media_min, |r| r.0),
        mmax = o.media_ports.map_or(p.media_max, |r| r.1),
        carrier_ca = if o.carrier_ca {
            format!("client_ca = {}", toml_str(&env.pki.ca_pem_path))
        } else {
            String::new()
        },
        extra_limits = o.extra_limits.join("\n"),
        extra_carrier = o.extra_carrier.join("\n"),
        extra_audit = o.extra_audit.join("\n"),
        extra_agent = o.extra_agent.join("\n"),
        extra_route = o.extra_default_route.join("\n"),
        extra_toml = o.extra_toml.join("\n"),
        extra_carriers = o
            .extra_carriers
            .iter()
            .map(|(name, cidrs)| {
                format!("\n[[carriers]]\nname = {name:?}\nsource_cidrs = {cidrs:?}\n")
            })
            .collect::<String>(),
        rtpto = o.rtp_timeout_secs,
        ca = toml_str(&env.pki.ca_pem_path),
        cto = o.connect_timeout_ms,
        client = client,
        routes = o
            .routes
            .iter()
            .map(|(kind, number, url)| {
                format!("[[agent.routes]]\n{kind} = {number:?}\nurl = {url:?}\n\n")
            })
            .collect::<String>(),
        url = o.agent_url,
        audit = toml_str(audit),
        metrics = p.metrics,
        level = o.log_level,
    )
}

pub fn sbc_binary() -> PathBuf {
    let p = match std::env::var_os("SBC_BIN") {
        Some(p) => PathBuf::from(p),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/sbc"),
    };
    assert!(
        p.exists(),
        "sbc binary not found at {}: build it first: cargo build -p sbc (or set SBC_BIN)",
        p.display()
    );
    p
}

pub struct SbcProcess {
    child: Option<Child>,
    /// Where its SIP listener is (`SbcOptions::listen_ip`).
    pub ip: std::net::IpAddr,
    pub sip_port: u16,
    pub metrics_port: u16,
    pub config_path: PathBuf,
    pub audit_path: PathBuf,
    pub stdout_path: PathBuf,
    pub stderr_path: PathBuf,
}

impl SbcProcess {
    pub fn start(env: &TestEnv, opts: SbcOptions) -> SbcProcess {
        SbcProcess::start_at(env, env.dir(), &env.ports, opts)
    }

    /// One more sbc in the same test: its files in `dir`, its ports `ports`
    /// (`Ports::allocate()`), its SIP listener on `opts.listen_ip`.
    pub fn start_at(env: &TestEnv, dir: &Path, ports: &Ports, opts: SbcOptions) -> SbcProcess {
        let config_path = dir.join("sbc.toml");
        let audit_path = dir.join("audit.jsonl");
        let stdout_path = dir.join("sbc.stdout");
        let stderr_path = dir.join("sbc.stderr");
        let ip: std::net::IpAddr = opts.listen_ip.parse().expect("listen_ip");
        std::fs::write(
            &config_path,
            config_toml_with(env, ports, &opts, &audit_path),
        )
        .expect("write config");
        let child = Command::new(sbc_binary())
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .current_dir(dir)
            .stdin(Stdio::null())
            // Appended, so that a restart in the same test directory keeps the first run's log.
            .stdout(append(&stdout_path))
            .stderr(append(&stderr_path))
            .spawn()
            .expect("spawn sbc");
        let mut sbc = SbcProcess {
            child: Some(child),
            ip,
            sip_port: ports.sip,
            metrics_port: ports.metrics,
            config_path,
            audit_path,
            stdout_path,
            stderr_path,
        };
        sbc.wait_ready(Duration::from_secs(20));
        sbc
    }

    fn wait_ready(&mut self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "sbc exited during start-up ({status}):\nstderr:\n{}\nstdout:\n{}\nconfig:\n{}",
                    tail(&self.log(), 40),
                    tail(&read(&self.stdout_path), 20),
                    read(&self.config_path)
                );
            }
            if TcpStream::connect_timeout(
                &(self.ip, self.sip_port).into(),
                Duration::from_millis(200),
            )
            .is_ok()
            {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "sbc did not accept TCP on 127.0.0.1:{} within {timeout:?}\nstderr:\n{}",
                    self.sip_port,
                    tail(&self.log(), 40)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// sbc's log (stderr, JSON lines with `format = "json"`).
    pub fn log(&self) -> String {
        read(&self.stderr_path)
    }

    pub fn stdout(&self) -> String {
        read(&self.stdout_path)
    }

    /// Every audit record written so far.
    pub fn audit(&self) -> Vec<Value> {
        read(&self.audit_path)
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line not JSON ({e}): {l}"))
            })
            .collect()
    }

    pub fn audit_text(&self) -> String {
        read(&self.audit_path)
    }

    /// Waits up to `timeout` for an audit record matching `pred`.
    pub fn wait_audit(&self, timeout: Duration, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.audit().into_iter().find(|v| pred(v)) {
                return v;
            }
            if Instant::now() > deadline {
                panic!(
                    "no matching audit record within {timeout:?}; audit file:\n{}\nsbc log tail:\n{}",
                    self.audit_text(),
                    tail(&self.log(), 30)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the audit record of `event` for SIP Call-ID `sip_call_id`.
    pub fn wait_event(&self, event: &str, sip_call_id: &str, timeout: Duration) -> Value {
        self.wait_audit(timeout, |v| {
            v["event"] == event && v["sip_call_id"].as_str() == Some(sip_call_id)
        })
    }

    /// `GET /metrics` over a plain TCP connection; the body.
    /// The value of `sbc_calls_active` in sbc's metrics (0 when absent).
    pub fn calls_active(&self) -> f64 {
        self.metrics()
            .lines()
            .find_map(|l| l.strip_prefix("sbc_calls_active "))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0.0)
    }

    pub fn metrics(&self) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.metrics_port))
            .unwrap_or_else(|e| panic!("connect metrics 127.0.0.1:{}: {e}", self.metrics_port));
        s.set_read_timeout(Some(Duration::from_secs(5))).ok();
        write!(
            s,
            "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        )
        .expect("write metrics request");
        let mut buf = String::new();
        let _ = s.read_to_string(&mut buf);
        match buf.find("\r\n\r\n") {
            Some(i) => buf[i + 4..].to_string(),
            None => buf,
        }
    }

    /// SIGKILL (no drain, no flush: a crash) and waits for the process to be gone.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends SIGTERM without waiting.
    pub fn signal_term(&self) {
        if let Some(c) = &self.child {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
        }
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let st = self.child.as_mut()?.try_wait().ok().flatten();
            if let Some(st) = st {
                self.child = None;
                return Some(st);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends SIGTERM and waits up to `timeout` for the process to exit; the exit status.
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let mut child = self.child.take()?;
        if let Ok(Some(st)) = child.try_wait() {
            return Some(st);
        }
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        child.wait().ok()
    }
}

impl Drop for SbcProcess {
    fn drop(&mut self) {
        self.terminate(Duration::from_secs(5));
    }
}

fn append(p: &Path) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

pub fn read(p: &Path) -> String {
    std::fs::read(p)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

use crate::tail;
