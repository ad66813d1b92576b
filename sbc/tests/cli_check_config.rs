//! `sbc check-config` on good and bad input: the real binary, temporary files, certificates made
//! by the workspace test PKI (`interop_tests::pki`). Every bad input must give exit code 1 and one message that names the file
//! and, for config values, the line and column of the value.

use std::path::{Path, PathBuf};
use std::process::Command;

use tempfile::TempDir;

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn sbc(args: &[&std::ffi::OsStr]) -> Run {
    let out = Command::new(env!("CARGO_BIN_EXE_sbc"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run sbc");
    Run {
        code: out.status.code().expect("sbc exited by a signal"),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn check(path: &Path) -> Run {
    sbc(&["check-config".as_ref(), path.as_os_str()])
}

/// 1-based line and column of the first occurrence of `needle` in `text`.
fn pos(text: &str, needle: &str) -> (usize, usize) {
    let at = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} not in config"));
    let line = text[..at].lines().count().max(1);
    let line = if text[..at].ends_with('\n') {
        line + 1
    } else {
        line
    };
    let col = at - text[..at].rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, col)
}

/// A test CA and end-entity certificates signed by it (ECDSA P-256).
struct Pki {
    dir: TempDir,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = interop_tests::pki::TestCa::root("sbc test CA");
        ca.write_pem(&dir.path().join("ca.pem"));
        for name in ["server", "other"] {
            ca.issue(dir.path(), name, &["sbc.test"], true);
        }
        Pki { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `text` as `sbc.toml` next to the certificates and returns its path.
    fn config(&self, text: &str) -> PathBuf {
        let p = self.path("sbc.toml");
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// A complete production-like config using the PKI's files by relative path.
const GOOD: &str = r#"
[sip]
listen = ["0.0.0.0:5061"]
host = "sbc.test"

[tls]
certificate = "server.pem"
private_key = "server-key.pem"
min_version = "1.2"
tls12_cipher_suites = ["TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256", "TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"]
client_ca = "ca.pem"
require_client_certificate = false

[[carriers]]
name = "twilio"
source_cidrs = ["54.172.60.0/30", "54.244.51.0/30"]

[media]
advertise_address = "192.0.2.10"
port_min = 20000
port_max = 29999

[srtp]
suites = ["AES_CM_128_HMAC_SHA1_80", "AES_CM_128_HMAC_SHA1_32"]

[agent]
ca_bundle = "ca.pem"
client_certificate = "other.pem"
client_private_key = "other-key.pem"

[[agent.routes]]
exact = "+15550002222"
url = "wss://agent.test:8443/ws?x=1"

[[agent.routes]]
default = true
url = "builtin:echo"

[audit]
path = "audit.jsonl"
"#;

/// Runs check-config on `text` and asserts exit 1 with `file:line:col:` at `needle` and
/// `message` in the one-line error.
fn refused_at(text: &str, needle: &str, message: &str) {
    let pki = Pki::new();
    let path = pki.config(text);
    let r = check(&path);
    assert_eq!(r.code, 1, "stderr: {}", r.stderr);
    assert!(r.stdout.is_empty(), "stdout: {}", r.stdout);
    let (line, col) = pos(text, needle);
    let expected = format!("{}:{line}:{col}: ", path.display());
    assert!(
        r.stderr.contains(&expected),
        "expected {expected:?} in {:?}",
        r.stderr
    );
    assert!(
        r.stderr.contains(message),
        "expected {message:?} in {:?}",
        r.stderr
    );
    assert_eq!(
        r.stderr.trim_end().lines().count(),
        1,
        "one message: {:?}",
        r.stderr
    );
}

#[test]
fn good_config_with_certificates_passes() {
    let pki = Pki::new();
    let r = check(&pki.config(GOOD));
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    assert!(r.stdout.contains(": ok"), "{}", r.stdout);
    assert!(r.stderr.is_empty(), "{}", r.stderr);
}

#[test]
fn missing_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent.toml");
    let r = check(&path);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("{}: cannot read", path.display())),
        "{}",
        r.stderr
    );
}

#[test]
fn unknown_key() {
    let text = GOOD.replace(
        "require_client_certificate = false",
        "require_client_certificate = false\nverify_peer = false",
    );
    refused_at(&text, "verify_peer", "unknown field `verify_peer`");
}

#[test]
fn wrong_type() {
    let text = GOOD.replace("port_max = 29999", "port_max = \"29999\"");
    refused_at(&text, "\"29999\"", "invalid type");
}

#[test]
fn inverted_port_range() {
    let text = GOOD.replace("port_min = 20000", "port_min = 30000");
    refused_at(
        &text,
        "30000",
        "port_min (30000) must be lower than port_max (29999)",
    );
}

#[test]
fn bad_cidr() {
    let text = GOOD.replace("54.244.51.0/30", "54.244.51.0/33");
    refused_at(&text, "\"54.244.51.0/33\"", "not a CIDR network");
}

#[test]
fn cidr_with_host_bits() {
    let text = GOOD.replace("54.244.51.0/30", "54.244.51.1/30");
    refused_at(&text, "\"54.244.51.1/30\"", "did you mean 54.244.51.0/30");
}

#[test]
fn weak_tls12_suite() {
    let text = GOOD.replace(
        "\"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\"]",
        "\"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\"]",
    );
    refused_at(
        &text,
        "\"TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA\"",
        "only ECDHE key exchange with an AEAD cipher",
    );
    let text = GOOD.replace(
        "\"TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\"]",
        "\"TLS_RSA_WITH_AES_128_GCM_SHA256\"]",
    );
    refused_at(&text, "\"TLS_RSA_WITH_AES_128_GCM_SHA256\"", "is refused");
}

#[test]
fn tls_version_below_1_2() {
    let text = GOOD.replace("min_version = \"1.2\"", "min_version = \"1.0\"");
    refused_at(&text, "\"1.0\"", "use \"1.2\" or \"1.3\"");
}

#[test]
fn non_aes_cm_srtp_suite() {
    let text = GOOD.replace("\"AES_CM_128_HMAC_SHA1_32\"]", "\"AEAD_AES_256_GCM\"]");
    refused_at(
        &text,
        "\"AEAD_AES_256_GCM\"",
        "only AES_CM_128_HMAC_SHA1_80 and AES_CM_128_HMAC_SHA1_32",
    );
    let text = GOOD.replace("\"AES_CM_128_HMAC_SHA1_32\"]", "\"NULL_HMAC_SHA1_80\"]");
    refused_at(&text, "\"NULL_HMAC_SHA1_80\"", "is refused");
}

#[test]
fn plain_ws_agent_url() {
    let text = GOOD.replace("wss://agent.test:8443/ws?x=1", "ws://agent.test:8080/ws");
    refused_at(
        &text,
        "\"ws://agent.test:8080/ws\"",
        "the agent leg is TLS only",
    );
}

#[test]
fn route_with_two_matchers() {
    let text = GOOD.replace("default = true", "default = true\nprefix = \"+1\"");
    refused_at(
        &text,
        "[[agent.routes]]\ndefault",
        "exactly one of `exact`, `prefix` or `default = true`",
    );
}

#[test]
fn dev_certificate_on_public_address() {
    let text = GOOD.replace(
        "certificate = \"server.pem\"\nprivate_key = \"server-key.pem\"",
        "dev_self_signed = true",
    );
    refused_at(&text, "true\nmin_version", "not a loopback address");
}

#[test]
fn unreadable_certificate() {
    let pki = Pki::new();
    std::fs::write(pki.path("server.pem"), "this is not PEM\n").unwrap();
    let r = check(&pki.config(GOOD));
    assert_eq!(r.code, 1, "{}", r.stderr);
    let cert = pki.path("server.pem");
    assert!(
        r.stderr
            .contains(&format!("{}: cannot read certificate", cert.display())),
        "{}",
        r.stderr
    );

    std::fs::remove_file(pki.path("server.pem")).unwrap();
    let r = check(&pki.config(GOOD));
    assert_eq!(r.code, 1);
    assert!(
        r.stderr
            .contains(&format!("{}: cannot read certificate", cert.display())),
        "{}",
        r.stderr
    );
}

#[test]
fn unreadable_private_key() {
    let pki = Pki::new();
    std::fs::write(
        pki.path("server-key.pem"),
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    let r = check(&pki.config(GOOD));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&pki.path("server-key.pem").display().to_string()),
        "{}",
        r.stderr
    );
}

#[test]
fn key_that_does_not_match_the_certificate() {
    let pki = Pki::new();
    let text = GOOD.replace(
        "private_key = \"server-key.pem\"",
        "private_key = \"other-key.pem\"",
    );
    let r = check(&pki.config(&text));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("key does not match certificate"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&pki.path("other-key.pem").display().to_string()),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&pki.path("server.pem").display().to_string()),
        "{}",
        r.stderr
    );
}

#[test]
fn agent_client_key_that_does_not_match() {
    let pki = Pki::new();
    let text = GOOD.replace(
        "client_private_key = \"other-key.pem\"",
        "client_private_key = \"server-key.pem\"",
    );
    let r = check(&pki.config(&text));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("key does not match certificate"),
        "{}",
        r.stderr
    );
    assert!(
        r.stderr
            .contains(&pki.path("other.pem").display().to_string()),
        "{}",
        r.stderr
    );
}

#[test]
fn client_ca_that_is_not_a_certificate() {
    let pki = Pki::new();
    std::fs::write(pki.path("ca.pem"), "").unwrap();
    let r = check(&pki.config(GOOD));
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr
            .contains(&format!("{}:", pki.path("ca.pem").display())),
        "{}",
        r.stderr
    );
}

#[test]
fn run_refuses_a_bad_config_without_starting() {
    let pki = Pki::new();
    let text = GOOD.replace("port_min = 20000", "port_min = 30000");
    let path = pki.config(&text);
    let r = sbc(&["run".as_ref(), "--config".as_ref(), path.as_os_str()]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("port_min (30000)"), "{}", r.stderr);
    assert!(!pki.path("audit.jsonl").exists());
}

#[test]
fn help_and_version() {
    let r = sbc(&["--help".as_ref()]);
    assert_eq!(r.code, 0);
    assert!(
        r.stdout.contains("check-config") && r.stdout.contains("run"),
        "{}",
        r.stdout
    );
    let r = sbc(&["check-config".as_ref(), "--help".as_ref()]);
    assert_eq!(r.code, 0);
    assert!(r.stdout.contains("FILE:LINE:COLUMN"), "{}", r.stdout);
    let r = sbc(&["--version".as_ref()]);
    assert_eq!(r.code, 0);
    assert_eq!(
        r.stdout.trim(),
        format!("sbc {}", env!("CARGO_PKG_VERSION"))
    );
}

/// `[[trunks]]` (issue 15): check-config reads the password file and refuses one that group or
/// others can read, naming the file; a bad value in the section is refused at its position.
#[test]
fn trunk_password_file_mode_and_values() {
    use std::os::unix::fs::PermissionsExt;
    let trunk = "\n[[trunks]]\nname = \"twilio-out\"\nuri = \"sip:example.pstn.twilio.com;transport=tls\"\nusername = \"sbc\"\npassword_file = \"trunk.password\"\ncaller_ids = [\"+14155550100\"]\n";
    let pki = Pki::new();
    let secret = pki.path("trunk.password");
    std::fs::write(&secret, "s3cret\n").unwrap();
    let path = pki.config(&format!("{GOOD}{trunk}"));
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let r = check(&path);
    assert_eq!(r.code, 0, "stderr: {}", r.stderr);
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let r = check(&path);
    assert_eq!(r.code, 1);
    assert!(
        r.stderr.contains(&format!("{}: ", secret.display())) && r.stderr.contains("chmod 600"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("s3cret"));
    let bad = format!("{GOOD}{trunk}max_calls_per_second = 20\n");
    refused_at(&bad, "20\n", "max_calls_per_second must be 1 to 15");
}
