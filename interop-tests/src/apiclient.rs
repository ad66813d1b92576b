//! `curl` against sbc's call-control API (the client its users have), shared by the API,
//! outbound and cluster tests.

use std::path::Path;
use std::process::Command;

use serde_json::Value;

/// One answer: HTTP status, body as JSON (`Null` if it is not JSON), seconds curl took.
pub struct Reply {
    pub code: u16,
    pub body: Value,
    pub secs: f64,
}

/// `curl -u user:pass [args] https://host:port{path}`, trusting `ca` only, 10 s at most.
pub fn curl(
    ca: &Path,
    (host, port): (&str, u16),
    (user, pass): (&str, &str),
    args: &[&str],
    path: &str,
) -> Reply {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{time_total}",
            "--cacert",
        ])
        .arg(ca)
        .args(["-u", &format!("{user}:{pass}")])
        .args(args)
        .arg(format!("https://{host}:{port}{path}"))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 0"));
    let mut t = tail.split_whitespace();
    Reply {
        code: t.next().and_then(|c| c.parse().ok()).unwrap_or(0),
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        secs: t.next().and_then(|c| c.parse().ok()).unwrap_or(0.0),
    }
}
