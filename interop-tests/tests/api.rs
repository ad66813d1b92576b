//! The call-control API (`docs/api.md`) against the real binary, with a SIPp call (TLS + SRTP,
//! echo check on) up: every `curl` example of `docs/api.md`, run as written; the real Pipecat
//! `TwilioFrameSerializer` hanging up through sbc (and failing to with a wrong token).
//!
//! Pipecat and the `twilio` library come from the virtualenv `scripts/install-test-deps` makes
//! (`.test-venv/` at the repository root, or `SBC_TEST_PYTHON`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use interop_tests::{AgentBehaviour, SbcOptions, SbcProcess, SippOutcome, TestAgent, TestEnv};
use serde_json::Value;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const OTHER_ACCOUNT: &str = "ACfedcba9876543210fedcba9876543210";
const TOKEN: &str = "test-token-0123456789abcdef";
const OTHER_TOKEN: &str = "other-token-0123456789abcdef";

/// The API's port: the last of the test's SIPp ports (these tests run at most two SIPp runs).
fn api_port(env: &TestEnv) -> u16 {
    env.ports.sipp[5]
}

fn write_token(dir: &Path, name: &str, token: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{token}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// sbc with the API on, the default route owned by ACCOUNT, and a second account.
fn start(env: &TestEnv, agent: &TestAgent) -> SbcProcess {
    let t1 = write_token(env.dir(), "token-1", TOKEN);
    let t2 = write_token(env.dir(), "token-2", OTHER_TOKEN);
    let mut o = SbcOptions::agent(agent.url());
    o.extra_default_route = vec![
        format!("account_sid = {ACCOUNT:?}"),
        "transfer_allow = [\"+1555000\"]".into(),
    ];
    o.extra_toml = vec![format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
         [[api.accounts]]\nsid = {ACCOUNT:?}\nauth_token_file = {t1:?}\n\
         [[api.accounts]]\nsid = {OTHER_ACCOUNT:?}\nauth_token_file = {t2:?}\n",
        port = api_port(env),
        cert = env.pki.sbc.cert_pem_path.display().to_string(),
        key = env.pki.sbc.key_pem_path.display().to_string(),
        t1 = t1.display().to_string(),
        t2 = t2.display().to_string(),
    )];
    env.start_sbc(o)
}

/// Starts SIPp's call that waits up to 20 s for sbc's BYE (echo check on), in a thread; waits
/// for the agent's `start` and returns its callSid.
fn call_up(
    env: &TestEnv,
    sbc: &SbcProcess,
    agent: &TestAgent,
) -> (thread::JoinHandle<SippOutcome>, String) {
    call_up_with(env, sbc, agent, "uac_wait_bye.xml")
}

fn call_up_with(
    env: &TestEnv,
    sbc: &SbcProcess,
    agent: &TestAgent,
    scenario: &str,
) -> (thread::JoinHandle<SippOutcome>, String) {
    let sipp = env.sipp(scenario).audio_tolerance(0.1);
    let port = sbc.sip_port;
    let handle = thread::spawn(move || sipp.run(port));
    let conns = agent.wait_for("start", Duration::from_secs(15), |c| {
        c.first().is_some_and(|c| c.first("start").is_some())
    });
    let call_sid = conns[0].first("start").unwrap()["start"]["callSid"]
        .as_str()
        .expect("callSid")
        .to_string();
    (handle, call_sid)
}

/// The `# example: NAME` shell blocks of docs/api.md.
fn doc_examples() -> BTreeMap<String, String> {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/api.md"))
        .expect("docs/api.md");
    let mut out = BTreeMap::new();
    let mut block: Option<String> = None;
    for line in doc.lines() {
        match (&mut block, line.trim()) {
            (None, "```sh") => block = Some(String::new()),
            (Some(b), "```") => {
                let text = std::mem::take(b);
                block = None;
                if let Some(name) = text
                    .lines()
                    .next()
                    .and_then(|l| l.strip_prefix("# example: "))
                {
                    out.insert(name.trim().to_string(), text);
                }
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    out
}

/// Runs one docs example with `sh`; its stdout as JSON.
fn run_example(
    env: &TestEnv,
    examples: &BTreeMap<String, String>,
    name: &str,
    call_sid: &str,
) -> Value {
    let script = examples
        .get(name)
        .unwrap_or_else(|| panic!("docs/api.md has no example {name:?}"));
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("SBC_API", format!("https://127.0.0.1:{}", api_port(env)))
        .env("SBC_CA", &env.pki.ca_pem_path)
        .env("ACCOUNT_SID", ACCOUNT)
        .env("AUTH_TOKEN", TOKEN)
        .env("CALL_SID", call_sid)
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "example {name} failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        script
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "example {name}: not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// `curl` with the given credentials; (HTTP status, body as JSON).
fn curl(env: &TestEnv, user: &str, pass: &str, args: &[&str], path: &str) -> (u16, Value) {
    let r = interop_tests::apiclient::curl(
        &env.pki.ca_pem_path,
        ("127.0.0.1", api_port(env)),
        (user, pass),
        args,
        path,
    );
    (r.code, r.body)
}

fn wait_sipp(h: thread::JoinHandle<SippOutcome>) -> SippOutcome {
    h.join().expect("sipp thread")
}

#[test]
fn curl_examples_drive_every_endpoint() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = start(&env, &agent);
    let (sipp, sid) = call_up(&env, &sbc, &agent);
    let ex = doc_examples();
    let call_path = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json");

    let v = run_example(&env, &ex, "fetch", &sid);
    assert_eq!(v["sid"], sid.as_str(), "{v}");
    assert_eq!(v["account_sid"], ACCOUNT, "{v}");
    assert_eq!(v["status"], "in-progress", "{v}");
    assert_eq!(v["direction"], "inbound", "{v}");
    assert_eq!(v["from"], "+15550001111", "{v}");
    assert_eq!(v["to"], "+15550002222", "{v}");
    assert!(
        v["start_time"]
            .as_str()
            .is_some_and(|t| t.ends_with("+0000")),
        "{v}"
    );

    let v = run_example(&env, &ex, "list", &sid);
    let calls = v["calls"].as_array().expect("calls");
    assert_eq!(calls.len(), 1, "{v}");
    assert_eq!(calls[0]["sid"], sid.as_str());
    assert_eq!(v["next_page_uri"], Value::Null);
    // Filters that exclude it, and paging.
    for q in ["Status=completed", "From=+15559999999", "To=+15550000000"] {
        let (code, v) = curl(
            &env,
            ACCOUNT,
            TOKEN,
            &["-G", "--data-urlencode", q],
            &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
        );
        assert_eq!(
            (code, v["calls"].as_array().map(Vec::len)),
            (200, Some(0)),
            "{q}: {v}"
        );
    }
    let (code, v) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &["-G", "-d", "PageSize=1", "-d", "Page=1"],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
    );
    assert_eq!(
        (code, v["calls"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    assert!(v["previous_page_uri"].as_str().is_some(), "{v}");

    let v = run_example(&env, &ex, "wrong-token", &sid);
    assert_eq!(
        (v["status"].as_u64(), v["code"].as_u64()),
        (Some(401), Some(20003)),
        "{v}"
    );

    // The other account: the call does not exist for it, under its own path or the owner's.
    let (code, v) = curl(
        &env,
        OTHER_ACCOUNT,
        OTHER_TOKEN,
        &[],
        &format!("/2010-04-01/Accounts/{OTHER_ACCOUNT}/Calls/{sid}.json"),
    );
    assert_eq!((code, v["code"].as_u64()), (404, Some(20404)), "{v}");
    let (code, _) = curl(
        &env,
        OTHER_ACCOUNT,
        OTHER_TOKEN,
        &["-d", "Status=completed"],
        &call_path,
    );
    assert_eq!(code, 404);
    let (code, v) = curl(
        &env,
        OTHER_ACCOUNT,
        OTHER_TOKEN,
        &[],
        &format!("/2010-04-01/Accounts/{OTHER_ACCOUNT}/Calls.json"),
    );
    assert_eq!(
        (code, v["calls"].as_array().map(Vec::len)),
        (200, Some(0)),
        "{v}"
    );
    let (code, v) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &[],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/CA00000000000000000000000000000000.json"),
    );
    assert_eq!((code, v["code"].as_u64()), (404, Some(20404)), "{v}");

    let v = run_example(&env, &ex, "unsupported-twiml", &sid);
    assert_eq!(v["status"].as_u64(), Some(400), "{v}");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("<Say>") && m.contains("Hangup")),
        "{v}"
    );
    // A transfer outside the route's allow-list: 403 before any REFER.
    let (code, v) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &[
            "--data-urlencode",
            "Twiml=<Response><Dial>+4420000000</Dial></Response>",
        ],
        &call_path,
    );
    assert_eq!((code, v["code"].as_u64()), (403, Some(20403)), "{v}");
    let (code, _) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &["-d", "Url=https://example.com/twiml"],
        &call_path,
    );
    assert_eq!(code, 400);
    let (code, _) = curl(&env, ACCOUNT, TOKEN, &["-d", "Status=ringing"], &call_path);
    assert_eq!(code, 400);
    // The call went through all that untouched.
    let (_, v) = curl(&env, ACCOUNT, TOKEN, &[], &call_path);
    assert_eq!(v["status"], "in-progress", "{v}");

    let v = run_example(&env, &ex, "hangup-twiml", &sid);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["sbc_end_reason"], "api_hangup", "{v}");
    let o = wait_sipp(sipp);
    o.assert_flow_and_clean_echo("SIPp must get sbc's BYE and its echo check pass\n{}", 0.8);
    // Hanging up an ended call: 200 with its resource.
    let v = run_example(&env, &ex, "hangup-status", &sid);
    assert_eq!(v["status"], "completed", "{v}");
    assert!(
        v["duration"].as_str().is_some() && v["end_time"].is_string(),
        "{v}"
    );

    let end = sbc.wait_audit(Duration::from_secs(10), |v| v["event"] == "call.end");
    assert_eq!(end["end_reason"], "api_hangup", "{end}");
    let conns = interop_tests::wait_closed(&agent, 1);
    assert!(conns[0].first("stop").is_some(), "the agent must get stop");

    let m = sbc.metrics();
    for line in [
        "sbc_api_requests_total{route=\"call_fetch\",status=\"200\"}",
        "sbc_api_requests_total{route=\"call_fetch\",status=\"401\"}",
        "sbc_api_requests_total{route=\"call_update\",status=\"403\"}",
        "sbc_api_requests_total{route=\"calls_list\",status=\"200\"}",
    ] {
        assert!(m.contains(line), "metrics lack {line}:\n{m}");
    }
    let log = sbc.log();
    assert!(log.contains("API request"), "no access log line");
    assert!(
        !log.contains(TOKEN) && !log.contains(OTHER_TOKEN),
        "a token reached the log"
    );
}

/// The test virtualenv's Python (`scripts/install-test-deps`).
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SBC_TEST_PYTHON") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.test-venv/bin/python");
    assert!(
        p.exists(),
        "{} not found: run scripts/install-test-deps (or set SBC_TEST_PYTHON)",
        p.display()
    );
    p
}

/// A Pipecat bot's end, reduced to its serializer: the real `TwilioFrameSerializer` with its
/// defaults (`auto_hang_up=True`), sbc as `base_url`, and after 3 s of "conversation" the
/// `EndFrame` a finished pipeline pushes through it, which is what makes it hang up.
const PIPECAT_BOT: &str = r#"
import asyncio, os, sys
from pipecat.frames.frames import EndFrame
from pipecat.serializers.twilio import TwilioFrameSerializer

async def main():
    s = TwilioFrameSerializer(
        stream_sid=os.environ["STREAM_SID"],
        call_sid=os.environ["CALL_SID"],
        account_sid=os.environ["ACCOUNT_SID"],
        auth_token=os.environ["AUTH_TOKEN"],
        base_url=os.environ["SBC_API"],
    )
    assert s._params.auto_hang_up
    await asyncio.sleep(3)
    await s.serialize(EndFrame())

asyncio.run(main())
"#;

fn run_bot(env: &TestEnv, stream_sid: &str, call_sid: &str, token: &str) -> String {
    let script = env.dir().join("bot.py");
    std::fs::write(&script, PIPECAT_BOT).unwrap();
    let started = Instant::now();
    let out = Command::new(python())
        .arg(&script)
        .env("SSL_CERT_FILE", &env.pki.ca_pem_path)
        .env("STREAM_SID", stream_sid)
        .env("CALL_SID", call_sid)
        .env("ACCOUNT_SID", ACCOUNT)
        .env("AUTH_TOKEN", token)
        .env("SBC_API", format!("https://127.0.0.1:{}", api_port(env)))
        .output()
        .expect("run the Pipecat bot");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "bot failed:\n{log}");
    assert!(started.elapsed() >= Duration::from_secs(3));
    log
}

#[test]
fn pipecat_serializer_hangs_up_through_sbc() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = start(&env, &agent);
    let (sipp, sid) = call_up(&env, &sbc, &agent);
    let stream_sid = agent.connections()[0].stream_sid().expect("streamSid");

    // A wrong token: Pipecat's hang-up fails (401) and the call goes on.
    let log = run_bot(&env, &stream_sid, &sid, "wrong-token-0123456789");
    assert!(
        log.contains("Failed to terminate Twilio call") && log.contains("401"),
        "Pipecat must log the failed hang-up:\n{log}"
    );
    let (code, v) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &[],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json"),
    );
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("in-progress")),
        "{v}"
    );
    assert!(
        sbc.audit().iter().all(|r| r["event"] != "call.end"),
        "the call must still be up"
    );

    // The right token: Pipecat's hang-up succeeds and SIPp gets the BYE.
    let log = run_bot(&env, &stream_sid, &sid, TOKEN);
    assert!(
        log.contains("Successfully terminated Twilio call"),
        "Pipecat must see its hang-up succeed:\n{log}"
    );
    let o = wait_sipp(sipp);
    o.assert_flow_and_clean_echo("SIPp must get sbc's BYE\n{}", 0.8);
    let end = sbc.wait_audit(Duration::from_secs(10), |v| v["event"] == "call.end");
    assert_eq!(end["end_reason"], "api_hangup", "{end}");
    let conns = interop_tests::wait_closed(&agent, 1);
    assert!(conns[0].first("stop").is_some(), "the agent must get stop");
}

/// Blind transfer asked for through the API (`<Dial>`): SIPp (TLS + SRTP) gets a REFER to
/// `tel:+15550009999`, answers 202, NOTIFYs 100 then 200 (terminated), and gets sbc's BYE; the
/// API shows the transfer completed, the call ends `transferred`, the agent gets the result
/// and `stop`.
#[test]
fn transfer_by_api_refer_notify_then_bye() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = start(&env, &agent);
    let (sipp, sid) = call_up_with(&env, &sbc, &agent, "uac_transfer.xml");
    thread::sleep(Duration::from_millis(500));
    let call_path = format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json");
    let (code, v) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &[
            "--data-urlencode",
            "Twiml=<Response><Dial>+15550009999</Dial></Response>",
        ],
        &call_path,
    );
    assert_eq!(code, 200, "{v}");
    let o = wait_sipp(sipp);
    o.assert_flow_and_clean_echo("SIPp: REFER, NOTIFYs, then sbc's BYE\n{}", 0.8);
    let end = sbc.wait_audit(Duration::from_secs(10), |v| v["event"] == "call.end");
    assert_eq!(end["end_reason"], "transferred", "{end}");
    assert_eq!(end["end_detail"], "tel:+15550009999", "{end}");
    assert_eq!(end["transfer"]["outcome"], "completed", "{end}");
    assert_eq!(end["transfer"]["sip_status"], 200, "{end}");
    let (_, v) = curl(&env, ACCOUNT, TOKEN, &[], &call_path);
    assert_eq!(v["status"], "completed", "{v}");
    assert_eq!(v["transfer"]["outcome"], "completed", "{v}");
    assert_eq!(v["transfer"]["to"], "tel:+15550009999", "{v}");
    let conns = interop_tests::wait_closed(&agent, 1);
    let result = conns[0]
        .first("transfer")
        .expect("transfer result for the agent");
    assert_eq!(result["transfer"]["status"], "completed", "{result}");
    assert!(conns[0].first("stop").is_some(), "the agent must get stop");
}

/// Blind transfer asked for by the agent over its WebSocket; the carrier reports it failed
/// (sipfrag 486 Busy Here): no BYE from sbc, SIPp's echo check still passes, the agent gets
/// the failed result, and the API shows it.
#[test]
fn transfer_by_agent_fails_busy_and_the_call_goes_on() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = start(&env, &agent);
    let (sipp, sid) = call_up_with(&env, &sbc, &agent, "uac_transfer_busy.xml");
    let stream_sid = agent.connections()[0].stream_sid().expect("streamSid");
    thread::sleep(Duration::from_millis(500));
    agent.send_json(
        0,
        serde_json::json!({
            "event": "transfer",
            "streamSid": stream_sid,
            "transfer": {"to": "tel:+15550009999"},
        }),
    );
    let conns = agent.wait_for("transfer result", Duration::from_secs(15), |c| {
        c.first().is_some_and(|c| c.first("transfer").is_some())
    });
    let result = conns[0].first("transfer").unwrap().clone();
    assert_eq!(result["transfer"]["status"], "failed", "{result}");
    assert_eq!(result["transfer"]["sipStatus"], 486, "{result}");
    let (_, v) = curl(
        &env,
        ACCOUNT,
        TOKEN,
        &[],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json"),
    );
    assert_eq!(v["status"], "in-progress", "{v}");
    assert_eq!(
        (
            v["transfer"]["outcome"].as_str(),
            v["transfer"]["sip_status"].as_u64()
        ),
        (Some("failed"), Some(486)),
        "{v}"
    );
    let o = wait_sipp(sipp);
    o.assert_flow_and_clean_echo("SIPp: no BYE from sbc, echo check passes\n{}", 0.8);
    let end = sbc.wait_audit(Duration::from_secs(10), |v| v["event"] == "call.end");
    assert_eq!(end["end_reason"], "carrier_bye", "{end}");
    assert_eq!(
        (
            end["transfer"]["outcome"].as_str(),
            end["transfer"]["sip_status"].as_u64()
        ),
        (Some("failed"), Some(486)),
        "{end}"
    );
    // Not allowed by the route: refused before any REFER.
    assert!(!o.messages_log().contains("tel:+4420"));
}

/// An HTTPS webhook receiver that checks each request with the `twilio` library's
/// `RequestValidator` (with the right token and with a wrong one) and appends what it got to a
/// JSON Lines file.
const RECEIVER: &str = r#"
import http.server, json, os, ssl, urllib.parse
from twilio.request_validator import RequestValidator

port = int(os.environ["PORT"])
good = RequestValidator(os.environ["AUTH_TOKEN"])
bad = RequestValidator("not-the-token-0123456789")
out = os.environ["OUT"]

class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        url = "https://127.0.0.1:%d%s" % (port, self.path)
        sig = self.headers.get("X-Twilio-Signature", "")
        rec = {"path": self.path, "params": params, "signature": sig,
               "valid": good.validate(url, params, sig),
               "valid_with_wrong_token": bad.validate(url, params, sig)}
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

/// Kills the receiver when the test ends.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn read_callbacks(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Status callbacks of a call (initiated, ringing, answered, completed) reach an HTTPS receiver,
/// signed so that the `twilio` library's `RequestValidator` accepts them (and rejects them under
/// another token); a route whose receiver is down gets its failures counted.
#[test]
fn status_callbacks_are_signed_for_twilio_validators() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let (cb_port, dead_port) = (env.ports.sipp[4], env.ports.sipp[3]);
    let out = env.dir().join("callbacks.jsonl");
    let script = env.dir().join("receiver.py");
    std::fs::write(&script, RECEIVER).unwrap();
    let mut child = Command::new(python())
        .arg(&script)
        .env("PORT", cb_port.to_string())
        .env("AUTH_TOKEN", TOKEN)
        .env("OUT", &out)
        .env("CERT", &env.pki.sbc.cert_pem_path)
        .env("KEY", &env.pki.sbc.key_pem_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the webhook receiver");
    let stdout = child.stdout.take().expect("receiver stdout");
    let _receiver = Child(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("receiver ready");
    assert_eq!(line.trim(), "ready");

    // The agent answers its TLS handshake late, so sbc sends 180 (the ringing event).
    let agent = env.start_agent(AgentBehaviour::DelayAccept(Duration::from_millis(1200)));
    let t1 = write_token(env.dir(), "token-1", TOKEN);
    let mut o = SbcOptions::agent(agent.url());
    o.ringing_after_ms = 200;
    o.connect_timeout_ms = 3000;
    let events =
        "status_callback_events = [\"initiated\", \"ringing\", \"answered\", \"completed\"]";
    o.routes = vec![];
    o.extra_default_route = vec![
        format!("account_sid = {ACCOUNT:?}"),
        format!("status_callback = \"https://127.0.0.1:{cb_port}/status?route=default\""),
        events.into(),
        // A second route whose receiver is down (its callbacks fail and are counted).
        format!(
            "\n[[agent.routes]]\nexact = \"+15550003333\"\nurl = {:?}\naccount_sid = {ACCOUNT:?}\nstatus_callback = \"https://127.0.0.1:{dead_port}/status\"",
            agent.url()
        ),
    ];
    o.extra_toml = vec![format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\ncallback_ca_bundle = {ca:?}\n\
         [[api.accounts]]\nsid = {ACCOUNT:?}\nauth_token_file = {t1:?}\n",
        port = api_port(&env),
        cert = env.pki.sbc.cert_pem_path.display().to_string(),
        key = env.pki.sbc.key_pem_path.display().to_string(),
        ca = env.pki.ca_pem_path.display().to_string(),
        t1 = t1.display().to_string(),
    )];
    let sbc = env.start_sbc(o);
    let call = env
        .sipp("uac_tls_srtp_pattern.xml")
        .audio_tolerance(0.1)
        .run(sbc.sip_port);
    call.assert_flow_and_clean_echo("SIPp call for the status callbacks", 0.8);
    let sid = agent.connections()[0].first("start").unwrap()["start"]["callSid"]
        .as_str()
        .unwrap()
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got = read_callbacks(&out);
        if got.iter().any(|v| v["params"]["CallStatus"] == "completed") || Instant::now() > deadline
        {
            break got;
        }
        thread::sleep(Duration::from_millis(100));
    };
    let statuses: Vec<&str> = got
        .iter()
        .map(|v| v["params"]["CallStatus"].as_str().unwrap_or("?"))
        .collect();
    let mut sorted = got.clone();
    sorted.sort_by_key(|v| {
        v["params"]["SequenceNumber"]
            .as_str()
            .and_then(|s| s.parse::<u32>().ok())
    });
    let ordered: Vec<&str> = sorted
        .iter()
        .map(|v| v["params"]["CallStatus"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        ordered,
        vec!["initiated", "ringing", "in-progress", "completed"],
        "{statuses:?}\n{got:#?}\n{}",
        call.describe()
    );
    for v in &got {
        assert_eq!(v["valid"], true, "RequestValidator must accept: {v}");
        assert_eq!(v["valid_with_wrong_token"], false, "{v}");
        assert_eq!(v["path"], "/status?route=default");
        let p = &v["params"];
        assert_eq!(p["CallSid"], sid.as_str(), "{v}");
        assert_eq!(p["AccountSid"], ACCOUNT);
        assert_eq!(
            (p["From"].as_str(), p["To"].as_str()),
            (Some("+15550001111"), Some("+15550002222"))
        );
        assert_eq!(p["Direction"], "inbound");
        assert!(
            p["Timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with("+0000")),
            "{v}"
        );
    }
    let completed = sorted.last().unwrap();
    assert!(
        completed["params"]["CallDuration"]
            .as_str()
            .is_some_and(|d| d.parse::<u64>().is_ok_and(|d| (2..=5).contains(&d))),
        "{completed}"
    );

    // The route whose receiver is down: its completed callback fails after its retries.
    env.sipp("uac_tls_srtp_pattern.xml")
        .service("+15550003333")
        .audio_tolerance(0.1)
        .run(sbc.sip_port)
        .assert_flow_and_clean_echo("SIPp call to the route whose receiver is down", 0.8);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let m = sbc.metrics();
        if m.lines()
            .any(|l| l.starts_with("sbc_status_callback_failures_total{reason=\"undelivered\"}"))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no failed callback counted:\n{m}"
        );
        thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        read_callbacks(&out).len(),
        got.len(),
        "nothing more reached the live receiver"
    );
}
