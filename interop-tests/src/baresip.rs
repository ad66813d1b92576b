//! baresip 1.0 (Debian's `baresip-core`) as a second, independent SIP-TLS + SDES-SRTP carrier.
//!
//! [`Baresip::dial`] writes `interop-tests/baresip/{config,accounts}` into `<test dir>/baresip/`
//! (ports from the test's block, paths made absolute), writes the microphone file `in.wav`,
//! dials sbc with `-e "/dial ..."` and a `-t` bound, and kills the process (by PID) if it
//! outlives the bound. baresip records what it heard to `dump-<time>-dec.wav`.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::audio::write_wav;
use crate::sbc::read;
use crate::{tail, TestEnv};

/// The `baresip` binary: `$BARESIP`, else the first `baresip` on `PATH`.
pub fn baresip_binary() -> PathBuf {
    crate::binary_from_env_or_path("BARESIP", "baresip").unwrap_or_else(|| {
        panic!(
            "baresip not found (set BARESIP or put baresip on PATH): install it with \
             scripts/install-test-deps (Debian: apt-get install --no-install-recommends baresip-core)"
        )
    })
}

/// One finished baresip run.
pub struct BaresipRun {
    pub dir: PathBuf,
    /// Exit status code (`None`: killed by the harness or by a signal).
    pub code: Option<i32>,
    pub killed: bool,
}

impl BaresipRun {
    /// baresip's console output (stdout and stderr).
    pub fn log(&self) -> String {
        read(&self.dir.join("baresip.log"))
    }

    /// The `dump-*-<suffix>.wav` baresip's sndfile module wrote (`dec`: heard, `enc`: sent).
    pub fn dump(&self, suffix: &str) -> Option<PathBuf> {
        let want = format!("-{suffix}.wav");
        crate::find_file(&self.dir, |n| n.starts_with("dump-") && n.ends_with(&want))
    }

    /// A failure message: where the files are and the log's tail.
    pub fn describe(&self) -> String {
        format!(
            "baresip exit {:?} (killed by the harness: {}), dir {}\n--- baresip.log (tail) ---\n{}",
            self.code,
            self.killed,
            self.dir.display(),
            tail(&self.log(), 60)
        )
    }
}

pub struct Baresip;

impl Baresip {
    /// Dials `sip:<number>@127.0.0.1:<sbc_port>;transport=tls` with `input` (8 kHz mono) as the
    /// microphone and waits for baresip to exit: it hangs up when `input` ends and quits after
    /// `run_secs` (`-t`); the harness kills it `run_secs + 10` s after the start.
    pub fn dial(
        env: &TestEnv,
        sbc_port: u16,
        number: &str,
        input: &[i16],
        run_secs: u32,
    ) -> BaresipRun {
        let bin = baresip_binary();
        let dir = env.dir().join("baresip");
        std::fs::create_dir_all(&dir).expect("baresip dir");
        let templates = Path::new(env!("CARGO_MANIFEST_DIR")).join("baresip");
        let p = &env.ports;
        for name in ["config", "accounts"] {
            let text = std::fs::read_to_string(templates.join(name))
                .unwrap_or_else(|e| panic!("read baresip/{name}: {e}"));
            let text = text
                .replace("@SIP_PORT@", &p.sipp[0].to_string())
                .replace(
                    "@RTP_PORTS@",
                    &format!("{}-{}", p.sipp_rtp_min, p.sipp_rtp_max),
                )
                .replace("@CA_FILE@", &env.pki.ca_pem_path.display().to_string())
                .replace("@DIR@", &dir.display().to_string());
            std::fs::write(dir.join(name), text).expect("write baresip config");
        }
        write_wav(&dir.join("in.wav"), input);
        let log = std::fs::File::create(dir.join("baresip.log")).expect("baresip.log");
        let mut child = Command::new(&bin)
            .arg("-4")
            .arg("-f")
            .arg(&dir)
            .arg("-e")
            .arg(format!("/dial sip:{number}@127.0.0.1:{sbc_port}"))
            .arg("-t")
            .arg(run_secs.to_string())
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));
        let deadline = Instant::now() + Duration::from_secs(u64::from(run_secs) + 10);
        let (code, killed) = loop {
            if let Some(st) = child.try_wait().expect("wait baresip") {
                break (st.code(), false);
            }
            if Instant::now() > deadline {
                // Child::kill sends SIGKILL to this child's PID only.
                let _ = child.kill();
                let _ = child.wait();
                break (None, true);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        BaresipRun { dir, code, killed }
    }
}
