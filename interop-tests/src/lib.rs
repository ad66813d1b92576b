//! Shared harness for the end-to-end tests.
//!
//! Every test builds its own [`TestEnv`] (temporary directory, test PKI, its own block of ports),
//! starts the real `sbc` binary with [`TestEnv::start_sbc`], a TLS 1.3 WebSocket test agent with
//! [`TestEnv::start_agent`], and drives calls with SIPp 3.8 (TLS + SRTP) through [`Sipp`].

pub mod agent;
pub mod apiclient;
pub mod audio;
pub mod baresip;
pub mod carrier;
pub mod origination;
pub mod pki;
pub mod ports;
pub mod rawcall;
pub mod redis;
pub mod sbc;
pub mod sipp;
pub mod tlsclient;
pub mod trunk;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Condvar, Mutex};

pub use agent::{AgentBehaviour, AgentConn, TestAgent};
pub use pki::TestPki;
pub use ports::Ports;
pub use sbc::{SbcOptions, SbcProcess};
pub use sipp::{Sipp, SippOutcome};

/// One test's world: a temporary directory, a PKI and a block of ports.
pub struct TestEnv {
    dir: Option<tempfile::TempDir>,
    pub pki: TestPki,
    pub ports: Ports,
    sipp_runs: AtomicU32,
    _slot: Slot,
}

static RUNNING: Mutex<usize> = Mutex::new(0);
static RUNNING_CV: Condvar = Condvar::new();

/// How many tests of one test binary run their calls at once: `INTEROP_JOBS`, else the number
/// of CPUs (at least 2). SIPp's echo check counts a late echo as a failed packet, so running
/// a dozen debug-build sbc + SIPp pairs on two cores makes it fail although sbc echoed every
/// packet (its audit shows rtp_out = rtp_in - 1, no auth failures).
fn max_jobs() -> usize {
    std::env::var("INTEROP_JOBS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2)
                .max(2)
        })
        .max(1)
}

/// A running-test slot, released on drop.
struct Slot;

impl Slot {
    fn acquire() -> Slot {
        let max = max_jobs();
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        while *n >= max {
            n = RUNNING_CV.wait(n).unwrap_or_else(|e| e.into_inner());
        }
        *n += 1;
        Slot
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut n = RUNNING.lock().unwrap_or_else(|e| e.into_inner());
        *n -= 1;
        RUNNING_CV.notify_one();
    }
}

impl TestEnv {
    /// Waits for a free slot (see `INTEROP_JOBS`); a test must hold only one `TestEnv` at a time.
    pub fn new() -> TestEnv {
        let slot = Slot::acquire();
        let dir = tempfile::Builder::new()
            .prefix("sbc-interop-")
            .tempdir()
            .expect("create tempdir");
        let pki = TestPki::generate(dir.path());
        let ports = Ports::allocate();
        TestEnv {
            dir: Some(dir),
            pki,
            ports,
            sipp_runs: AtomicU32::new(0),
            _slot: slot,
        }
    }

    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("tempdir").path()
    }

    pub fn start_sbc(&self, opts: SbcOptions) -> SbcProcess {
        SbcProcess::start(self, opts)
    }

    pub fn start_agent(&self, behaviour: AgentBehaviour) -> TestAgent {
        TestAgent::start(&self.pki, behaviour)
    }

    /// A SIPp run of `scenario` (a file name in `interop-tests/scenarios/`) against `sbc`.
    pub fn sipp(&self, scenario: &str) -> Sipp {
        let n = self.sipp_runs.fetch_add(1, Ordering::SeqCst);
        Sipp::new(self, scenario, n)
    }
}

/// The directory is kept (and its path printed) when the test fails or `INTEROP_KEEP` is set.
impl Drop for TestEnv {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os("INTEROP_KEEP").is_some() {
            if let Some(d) = self.dir.take() {
                eprintln!("kept test directory {}", d.keep().display());
            }
        }
    }
}

impl Default for TestEnv {
    fn default() -> Self {
        TestEnv::new()
    }
}

/// Runs SIPp's basic call in the background and, once sbc answered it, a second INVITE that sbc
/// must refuse with 503; checks the first call is unaffected. Returns the second SIPp run and
/// its `call.refused` record.
pub fn second_call_refused(env: &TestEnv, sbc: &SbcProcess) -> (SippOutcome, serde_json::Value) {
    let timeout = std::time::Duration::from_secs(20);
    let port = sbc.sip_port;
    std::thread::scope(|s| {
        let first = env.sipp("uac_tls_srtp_pattern.xml");
        let second = env.sipp("uac_expect_503.xml").timeout("10s");
        let bg = s.spawn(move || first.run(port));
        sbc.wait_audit(timeout, |v| v["event"] == "call.start");
        let o = second.run_expect(port, 0);
        let call_id = o.first_call_id();
        let r = sbc.wait_event("call.refused", &call_id, timeout);
        assert_eq!(r["decision"]["status"], 503, "call.refused: {r}");
        let first = bg.join().expect("first call");
        assert_eq!(
            first.code,
            0,
            "the first call must be unaffected\n{}",
            first.describe()
        );
        (o, r)
    })
}

/// Waits (10 s) until the agent has `n` connections that all ended.
pub fn wait_closed(agent: &TestAgent, n: usize) -> Vec<AgentConn> {
    agent.wait_for(
        &format!("{n} connection(s), all closed"),
        std::time::Duration::from_secs(10),
        |c| c.len() >= n && c.iter().all(|c| c.closed.is_some()),
    )
}

/// The first file in `dir` whose name satisfies `pred`.
pub fn find_file(dir: &Path, pred: impl Fn(&str) -> bool) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .find(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(&pred))
}

/// `$var` if set, else the first file called `name` in a directory of `PATH`.
pub fn binary_from_env_or_path(var: &str, name: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(var) {
        return Some(PathBuf::from(p));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// `interop-tests/scenarios/<name>`.
pub fn scenario_path(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(name);
    assert!(p.exists(), "no such scenario: {}", p.display());
    p
}

/// Last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// All base64 key values after `inline:` in `text` (the part before any `|` lifetime/MKI).
pub fn inline_keys(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("inline:") {
        rest = &rest[i + "inline:".len()..];
        let key: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '+' || *c == '/' || *c == '=')
            .collect();
        if key.len() >= 16 && !out.contains(&key) {
            out.push(key);
        }
    }
    out
}
