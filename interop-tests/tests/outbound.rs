//! Outbound calls through a termination trunk (issue 15, docs/outbound.md) against the real
//! binary: `curl` creates the call, a test trunk (`interop_tests::trunk`) challenges with 407,
//! checks `Proxy-Authorization` with its own MD5 computation and answers with SDES-SRTP; the test
//! agent gets the call's audio and the trunk hears the agent. Then every way a call fails or is
//! refused, each with its status.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use interop_tests::trunk::{TestTrunk, TrunkBehaviour};
use interop_tests::{AgentBehaviour, SbcOptions, SbcProcess, TestAgent, TestEnv};
use serde_json::Value;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-token-0123456789abcdef";
const USER: &str = "sbc-trunk-user";
const PASSWORD: &str = "trunk-secret-42";
const FROM: &str = "+14155550100";
const TO: &str = "+15105550123";

fn api_port(env: &TestEnv) -> u16 {
    env.ports.sipp[5]
}

fn secret_file(dir: &Path, name: &str, value: &str) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(&p, format!("{value}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// sbc with the API on and one trunk at `trunk_uri`; `trunk_extra` adds lines to `[[trunks]]`.
fn start_sbc(
    env: &TestEnv,
    agent: &TestAgent,
    trunk_uri: &str,
    password: &str,
    trunk_extra: &[&str],
) -> SbcProcess {
    start_sbc_with(
        env,
        agent,
        Setup {
            trunk_uri,
            password: Some(password),
            trunk_extra,
            ..Setup::default()
        },
    )
}

/// What a test adds to the base configuration of [`start_sbc`].
#[derive(Default)]
struct Setup<'a> {
    trunk_uri: &'a str,
    /// `None`: a trunk without `username`/`password_file`.
    password: Option<&'a str>,
    trunk_extra: &'a [&'a str],
    /// Lines in `[api]`.
    api_extra: Vec<String>,
    /// Lines in the default `[[agent.routes]]` (after `account_sid`).
    route_extra: Vec<String>,
    /// The test carrier's `source_cidrs` (default: 127.0.0.0/8).
    source_cidrs: Option<Vec<String>>,
}

fn start_sbc_with(env: &TestEnv, agent: &TestAgent, s: Setup) -> SbcProcess {
    let token = secret_file(env.dir(), "token", TOKEN);
    let credentials = match s.password {
        Some(password) => {
            let pw = secret_file(env.dir(), "trunk.password", password);
            format!(
                "username = {USER:?}\npassword_file = {:?}\n",
                pw.display().to_string()
            )
        }
        None => String::new(),
    };
    let mut o = SbcOptions::agent(agent.url());
    if let Some(c) = s.source_cidrs {
        o.source_cidrs = c;
    }
    o.carrier_ca = true;
    o.extra_default_route = vec![format!("account_sid = {ACCOUNT:?}")];
    o.extra_default_route.extend(s.route_extra);
    o.extra_toml = vec![format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n{api}\n\
         [[api.accounts]]\nsid = {ACCOUNT:?}\nauth_token_file = {token:?}\n\n\
         [[trunks]]\nname = \"test-trunk\"\nuri = {trunk_uri:?}\n{credentials}\
         account_sids = [{ACCOUNT:?}]\ncaller_ids = [{FROM:?}]\n\
         allow_destinations = [\"+1\"]\n{extra}\n",
        port = api_port(env),
        cert = env.pki.sbc.cert_pem_path.display().to_string(),
        key = env.pki.sbc.key_pem_path.display().to_string(),
        api = s.api_extra.join("\n"),
        token = token.display().to_string(),
        trunk_uri = s.trunk_uri,
        extra = s.trunk_extra.join("\n"),
    )];
    env.start_sbc(o)
}

fn curl(env: &TestEnv, args: &[&str], path: &str) -> (u16, Value) {
    let r = interop_tests::apiclient::curl(
        &env.pki.ca_pem_path,
        ("127.0.0.1", api_port(env)),
        (ACCOUNT, TOKEN),
        args,
        path,
    );
    (r.code, r.body)
}

fn twiml(agent: &TestAgent) -> String {
    format!(
        "<Response><Connect><Stream url=\"{}\"><Parameter name=\"lead\" value=\"42\"/></Stream></Connect></Response>",
        agent.url()
    )
}

/// `curl ... Calls.json` as docs/outbound.md shows it (with this test's host and numbers).
fn create(env: &TestEnv, to: &str, from: &str, twiml: &str, extra: &[&str]) -> (u16, Value) {
    let to = format!("To={to}");
    let from = format!("From={from}");
    let tw = format!("Twiml={twiml}");
    let mut args = vec![
        "--data-urlencode",
        to.as_str(),
        "--data-urlencode",
        from.as_str(),
        "--data-urlencode",
        tw.as_str(),
    ];
    for e in extra {
        args.push("--data-urlencode");
        args.push(e);
    }
    curl(
        env,
        &args,
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
    )
}

fn call_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json")
}

/// Polls the call resource until its status is `want` (or the deadline); returns it.
fn wait_status(env: &TestEnv, sid: &str, want: &str, timeout: Duration) -> Value {
    let deadline = Instant::now() + timeout;
    loop {
        let (_, v) = curl(env, &[], &call_path(sid));
        if v["status"] == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Runs the `# example: <name>` block of docs/outbound.md with `sh`; its stdout as JSON.
fn run_doc_example(env: &TestEnv, agent: &TestAgent, name: &str) -> Value {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/outbound.md"))
            .expect("docs/outbound.md");
    let marker = format!("# example: {name}\n");
    let start = doc.find(&marker).expect("example in docs/outbound.md");
    let script = &doc[start..start + doc[start..].find("```").expect("end of block")];
    let out = Command::new("sh")
        .arg("-c")
        .arg(script)
        .env("SBC_API", format!("https://127.0.0.1:{}", api_port(env)))
        .env("SBC_CA", &env.pki.ca_pem_path)
        .env("ACCOUNT_SID", ACCOUNT)
        .env("AUTH_TOKEN", TOKEN)
        .env("AGENT_URL", agent.url())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

fn trunk_uri(trunk: &TestTrunk) -> String {
    format!("sip:127.0.0.1:{};transport=tls", trunk.port)
}

#[test]
fn outbound_call_bridges_trunk_and_agent() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Answer, USER, PASSWORD);
    let sbc = start_sbc(&env, &agent, &trunk_uri(&trunk), PASSWORD, &[]);

    // The `curl` of docs/outbound.md, as written.
    let v = run_doc_example(&env, &agent, "create");
    assert_eq!(v["status"], "queued", "{v}\n{}", sbc.log());
    assert_eq!(v["direction"], "outbound-api", "{v}");
    assert_eq!(v["to"], TO, "{v}");
    let sid = v["sid"].as_str().expect("sid").to_string();

    let conns = agent.wait_for("start", Duration::from_secs(15), |c| {
        c.first().is_some_and(|c| c.first("start").is_some())
    });
    let start = conns[0].first("start").unwrap().clone();
    assert_eq!(start["start"]["callSid"], sid.as_str(), "{start}");
    assert_eq!(start["start"]["customParameters"]["lead"], "42", "{start}");
    assert_eq!(
        start["start"]["customParameters"]["direction"], "outbound",
        "{start}"
    );
    assert_eq!(start["start"]["customParameters"]["to"], TO, "{start}");

    // The trunk challenged once and accepted sbc's independent-checked credentials.
    let log = trunk.log();
    assert_eq!(log.first_invites().len(), 1, "{:?}", log.methods());
    assert_eq!((log.auth_ok, log.auth_bad), (1, 0), "{:?}", log.methods());

    // Audio both ways: the agent hears the trunk, the trunk hears the agent's echo, all SRTP
    // that authenticates under the keys of the offer and answer.
    agent.wait_for("media", Duration::from_secs(10), |c| {
        c.first().is_some_and(|c| c.media.len() >= 25)
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    while trunk.media_received() < 25 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        trunk.media_received() >= 25,
        "trunk heard {} authenticated packets (sent {})\n{}",
        trunk.media_received(),
        trunk.media_sent(),
        sbc.log()
    );
    let v = wait_status(&env, &sid, "in-progress", Duration::from_secs(2));
    assert_eq!(v["status"], "in-progress", "{v}");

    // Hang up through the API: BYE to the trunk, status completed.
    let (code, v) = curl(&env, &["-d", "Status=completed"], &call_path(&sid));
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["status"], "completed", "{v}");
    assert!(
        trunk.wait(Duration::from_secs(5), |l| l
            .methods()
            .iter()
            .any(|m| m == "BYE")),
        "{:?}",
        trunk.log().methods()
    );

    let rec = sbc.wait_audit(Duration::from_secs(5), |r| {
        r["event"] == "call.end" && r["direction"] == "outbound"
    });
    assert_eq!(rec["outbound"]["trunk"], "test-trunk", "{rec}");
    assert_eq!(rec["outbound"]["account"], ACCOUNT, "{rec}");
    assert_eq!(rec["outbound"]["final_sip_status"], 200, "{rec}");
    assert!(rec["outbound"]["ring_ms"].is_u64(), "{rec}");
    assert!(
        rec["sip_tls"]["cipher"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{rec}"
    );
    assert!(
        rec["sip_tls"]["version"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{rec}"
    );
    assert!(rec["sip_tls"]["kx_group"].is_string(), "{rec}");
    assert!(
        rec["agent"]["cipher"]
            .as_str()
            .is_some_and(|c| !c.is_empty()),
        "{rec}"
    );
    assert_eq!(
        rec["srtp"]["chosen_inbound"], "AES_CM_128_HMAC_SHA1_80",
        "{rec}"
    );
    assert_eq!(rec["end_reason"], "api_hangup", "{rec}");
    assert!(rec["media"]["rtp_in"].as_u64().unwrap_or(0) >= 25, "{rec}");
    let m = sbc.metrics();
    assert!(
        m.contains("sbc_outbound_calls_total{status=\"completed\"} 1"),
        "{m}"
    );
    // No key material in the logs or the audit.
    assert!(!sbc.log().contains("inline:"), "SDES keys in the log");
    assert!(
        !sbc.audit_text().contains("inline:"),
        "SDES keys in the audit"
    );
}

/// Each way a placed call fails, with its status, what the trunk saw, and the audit record.
#[test]
fn outbound_failures_have_their_status() {
    struct Case {
        name: &'static str,
        behaviour: TrunkBehaviour,
        password: &'static str,
        timeout: &'static str,
        status: &'static str,
        /// A request method the trunk must have received.
        trunk_saw: &'static str,
    }
    let cases = [
        Case {
            name: "busy",
            behaviour: TrunkBehaviour::Busy,
            password: PASSWORD,
            timeout: "Timeout=30",
            status: "busy",
            trunk_saw: "ACK",
        },
        Case {
            name: "no answer",
            behaviour: TrunkBehaviour::Ring,
            password: PASSWORD,
            timeout: "Timeout=2",
            status: "no-answer",
            trunk_saw: "CANCEL",
        },
        Case {
            name: "bad password",
            behaviour: TrunkBehaviour::Answer,
            password: "wrong-password",
            timeout: "Timeout=30",
            status: "failed",
            trunk_saw: "ACK",
        },
        Case {
            name: "plain RTP answer",
            behaviour: TrunkBehaviour::PlainRtp,
            password: PASSWORD,
            timeout: "Timeout=30",
            status: "failed",
            trunk_saw: "BYE",
        },
    ];
    for c in cases {
        let env = TestEnv::new();
        let agent = env.start_agent(AgentBehaviour::Echo);
        let trunk = TestTrunk::start(&env.pki.agent, c.behaviour, USER, PASSWORD);
        let sbc = start_sbc(&env, &agent, &trunk_uri(&trunk), c.password, &[]);
        let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[c.timeout]);
        assert_eq!(code, 201, "{}: {v}", c.name);
        let sid = v["sid"].as_str().unwrap().to_string();
        let v = wait_status(&env, &sid, c.status, Duration::from_secs(15));
        assert_eq!(v["status"], c.status, "{}: {v}\n{}", c.name, sbc.log());
        assert!(
            trunk.wait(Duration::from_secs(5), |l| l
                .methods()
                .iter()
                .any(|m| m == c.trunk_saw)),
            "{}: trunk saw {:?}",
            c.name,
            trunk.log().methods()
        );
        let rec = sbc.wait_audit(Duration::from_secs(5), |r| r["event"] == "call.failed");
        assert_eq!(rec["direction"], "outbound", "{}: {rec}", c.name);
        assert_eq!(
            rec["outbound"]["twilio_status"], c.status,
            "{}: {rec}",
            c.name
        );
        // Never media to the agent for a failed call.
        assert!(
            agent
                .connections()
                .iter()
                .all(|a| a.first("start").is_none()),
            "{}",
            c.name
        );
        if c.name == "bad password" {
            let log = trunk.log();
            assert_eq!(log.auth_bad, 1, "one retry only: {:?}", log.methods());
            assert_eq!(rec["outbound"]["final_sip_status"], 407, "{rec}");
        }
        if c.name == "plain RTP answer" {
            // ACK first, then BYE: never media in the clear.
            let m = trunk.log().methods();
            let ack = m.iter().position(|x| x == "ACK");
            let bye = m.iter().position(|x| x == "BYE");
            assert!(ack.is_some() && ack < bye, "{m:?}");
        }
    }
}

#[test]
fn unresolvable_trunk_fails() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let sbc = start_sbc(
        &env,
        &agent,
        "sip:trunk.invalid;transport=tls",
        PASSWORD,
        &[],
    );
    let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[]);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    let v = wait_status(&env, &sid, "failed", Duration::from_secs(15));
    assert_eq!(v["status"], "failed", "{v}\n{}", sbc.log());
    let rec = sbc.wait_audit(Duration::from_secs(5), |r| r["event"] == "call.failed");
    assert!(
        rec["end_detail"]
            .as_str()
            .is_some_and(|d| d.contains("DNS")),
        "{rec}"
    );
}

/// Refused before any SIP: the trunk never sees an INVITE.
#[test]
fn refusals_send_no_invite() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Answer, USER, PASSWORD);
    let sbc = start_sbc(&env, &agent, &trunk_uri(&trunk), PASSWORD, &[]);
    let tw = twiml(&agent);
    let elsewhere = "<Response><Connect><Stream url=\"wss://agent.elsewhere.example/ws\"/></Connect></Response>";
    for (name, to, from, doc, extra, want) in [
        (
            "From outside caller_ids",
            TO,
            "+14155550199",
            tw.as_str(),
            "",
            400,
        ),
        (
            "destination outside allow list",
            "+442079460000",
            FROM,
            tw.as_str(),
            "",
            403,
        ),
        (
            "premium destination",
            "+19005550100",
            FROM,
            tw.as_str(),
            "",
            403,
        ),
        ("agent URL not configured", TO, FROM, elsewhere, "", 403),
        (
            "MachineDetection",
            TO,
            FROM,
            tw.as_str(),
            "MachineDetection=Enable",
            400,
        ),
        (
            "Url with Twiml",
            TO,
            FROM,
            tw.as_str(),
            "Url=https://example.com/twiml",
            400,
        ),
        (
            "Say",
            TO,
            FROM,
            "<Response><Say>hi</Say></Response>",
            "",
            400,
        ),
    ] {
        let extra: Vec<&str> = if extra.is_empty() {
            vec![]
        } else {
            vec![extra]
        };
        let (code, v) = create(&env, to, from, doc, &extra);
        assert_eq!(code, want, "{name}: {v}");
        assert_eq!(v["status"], want, "{name}: {v}");
        assert!(
            v["code"].is_u64() && v["message"].is_string(),
            "{name}: {v}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        trunk.log().requests.is_empty(),
        "{:?}",
        trunk.log().methods()
    );
    drop(sbc);
}

#[test]
fn cps_spaces_invites() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Busy, USER, PASSWORD);
    let sbc = start_sbc(
        &env,
        &agent,
        &trunk_uri(&trunk),
        PASSWORD,
        &["max_calls_per_second = 1", "queue = 1"],
    );
    let tw = twiml(&agent);
    let (a, va) = create(&env, TO, FROM, &tw, &[]);
    let (b, vb) = create(&env, TO, FROM, &tw, &[]);
    assert_eq!((a, b), (201, 201), "{va} {vb}");
    // A third within the same second finds the queue of one full.
    let (c, vc) = create(&env, TO, FROM, &tw, &[]);
    assert_eq!(c, 429, "{vc}");
    assert!(
        trunk.wait(Duration::from_secs(10), |l| l.first_invites().len() >= 2),
        "{:?}\n{}",
        trunk.log().methods(),
        sbc.log()
    );
    let t = trunk.log().first_invites();
    let gap = t[1].duration_since(t[0]);
    // sbc sends them 1 s apart; 50 ms for the scheduling of two reader threads here.
    assert!(gap >= Duration::from_millis(950), "INVITEs {gap:?} apart");
}

/// `Status=canceled` on a ringing call sends CANCEL; the call ends `canceled`.
#[test]
fn api_cancels_a_ringing_call() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Ring, USER, PASSWORD);
    let sbc = start_sbc(&env, &agent, &trunk_uri(&trunk), PASSWORD, &[]);
    let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[]);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    let v = wait_status(&env, &sid, "ringing", Duration::from_secs(10));
    assert_eq!(v["status"], "ringing", "{v}\n{}", sbc.log());
    let (code, v) = curl(&env, &["-d", "Status=canceled"], &call_path(&sid));
    assert_eq!(code, 200, "{v}");
    let v = wait_status(&env, &sid, "canceled", Duration::from_secs(5));
    assert_eq!(v["status"], "canceled", "{v}");
    assert!(
        trunk.log().methods().iter().any(|m| m == "CANCEL"),
        "{:?}",
        trunk.log().methods()
    );
    // Canceling an ended call changes nothing.
    let (code, v) = curl(&env, &["-d", "Status=canceled"], &call_path(&sid));
    assert_eq!((code, v["status"].as_str()), (200, Some("canceled")), "{v}");
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

/// An HTTPS application server for outbound calls: it serves TwiML documents under `/twiml/`
/// (a good one naming the test agent, one with `<Say>`, a redirect, one over sbc's size cap)
/// and takes status callbacks under `/status`. Each request is checked with the `twilio`
/// library's `RequestValidator` (the right token, and a wrong one) and appended to a JSON Lines
/// file.
const HOOKS: &str = r#"
import http.server, json, os, ssl, urllib.parse
from twilio.request_validator import RequestValidator

port = int(os.environ["PORT"])
good = RequestValidator(os.environ["AUTH_TOKEN"])
bad = RequestValidator("not-the-token-0123456789")
out = os.environ["OUT"]
agent = os.environ["AGENT_URL"].replace("&", "&amp;")
DOCS = {
    "/twiml/ok": '<?xml version="1.0" encoding="UTF-8"?>\n<Response>\n  <Connect>\n    <Stream url="%s">\n      <Parameter name="lead" value="url-7"/>\n    </Stream>\n  </Connect>\n</Response>\n' % agent,
    "/twiml/say": "<Response><Say>hello</Say></Response>",
    "/twiml/big": "<Response>" + " " * 100000 + "</Response>",
}

class H(http.server.BaseHTTPRequestHandler):
    def serve(self, method):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
        params = dict(urllib.parse.parse_qsl(body, keep_blank_values=True))
        url = "https://127.0.0.1:%d%s" % (port, self.path)
        sig = self.headers.get("X-Twilio-Signature", "")
        rec = {"method": method, "path": self.path, "params": params,
               "valid": good.validate(url, params, sig),
               "valid_with_wrong_token": bad.validate(url, params, sig)}
        with open(out, "a") as f:
            f.write(json.dumps(rec) + "\n")
        path = self.path.split("?")[0]
        if path == "/twiml/redirect":
            self.send_response(302)
            self.send_header("Location", "/twiml/ok")
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif path in DOCS:
            doc = DOCS[path].encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/xml")
            self.send_header("Content-Length", str(len(doc)))
            self.end_headers()
            try:
                self.wfile.write(doc)
            except OSError:
                pass  # sbc stops reading past its size cap
        elif path.startswith("/status"):
            self.send_response(204)
            self.end_headers()
        else:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()

    def do_POST(self):
        self.serve("POST")

    def do_GET(self):
        self.serve("GET")

    def log_message(self, *args):
        pass

srv = http.server.ThreadingHTTPServer(("127.0.0.1", port), H)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print("ready", flush=True)
srv.serve_forever()
"#;

/// The running [`HOOKS`] server; killed on drop.
struct Hooks {
    child: std::process::Child,
    out: PathBuf,
    port: u16,
}

impl Hooks {
    fn start(env: &TestEnv, agent: &TestAgent, port: u16) -> Hooks {
        use std::io::BufRead;
        let out = env.dir().join("hooks.jsonl");
        let script = env.dir().join("hooks.py");
        std::fs::write(&script, HOOKS).unwrap();
        let mut child = Command::new(python())
            .arg(&script)
            .env("PORT", port.to_string())
            .env("AUTH_TOKEN", TOKEN)
            .env("OUT", &out)
            .env("AGENT_URL", agent.url())
            .env("CERT", &env.pki.sbc.cert_pem_path)
            .env("KEY", &env.pki.sbc.key_pem_path)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the HTTPS application server");
        let stdout = child.stdout.take().expect("hooks stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .expect("hooks ready");
        assert_eq!(line.trim(), "ready");
        Hooks { child, out, port }
    }

    fn url(&self, path: &str) -> String {
        format!("https://127.0.0.1:{}{path}", self.port)
    }

    fn requests(&self) -> Vec<Value> {
        std::fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }
}

impl Drop for Hooks {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `POST .../Calls.json` with `Url=` instead of `Twiml=`.
fn create_by_url(env: &TestEnv, url: &str, extra: &[&str]) -> (u16, Value) {
    let url = format!("Url={url}");
    let mut args = vec![
        "--data-urlencode",
        "To=+15105550123",
        "--data-urlencode",
        "From=+14155550100",
        "--data-urlencode",
        url.as_str(),
    ];
    for e in extra {
        args.push("--data-urlencode");
        args.push(e);
    }
    curl(
        env,
        &args,
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
    )
}

/// `Url=`: sbc fetches the TwiML over HTTPS (verified against `[api] callback_ca_bundle`) before
/// it answers, with Twilio's signed parameters; a document outside the `<Connect><Stream>`
/// limit, a redirect, an oversized document, an unreachable server and a URL outside
/// `twiml_url_prefixes` are each the create request's 400, and no INVITE goes out for them.
#[test]
fn url_fetches_twiml_over_https() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let (hooks_port, dead_port) = (env.ports.sipp[4], env.ports.sipp[3]);
    let hooks = Hooks::start(&env, &agent, hooks_port);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Answer, USER, PASSWORD);
    let uri = trunk_uri(&trunk);
    let sbc = start_sbc_with(
        &env,
        &agent,
        Setup {
            trunk_uri: &uri,
            password: Some(PASSWORD),
            api_extra: vec![
                format!(
                    "callback_ca_bundle = {:?}",
                    env.pki.ca_pem_path.display().to_string()
                ),
                format!(
                    "twiml_url_prefixes = [\"https://127.0.0.1:{hooks_port}/twiml/\", \"https://127.0.0.1:{dead_port}/twiml/\"]"
                ),
            ],
            ..Setup::default()
        },
    );

    // Each refusal: status, Twilio code, a word of the message.
    for (name, url, extra, code, needle) in [
        (
            "outside the limit",
            hooks.url("/twiml/say"),
            "",
            12100,
            "<Connect>",
        ),
        (
            "outside the limit, GET",
            hooks.url("/twiml/say"),
            "Method=GET",
            12100,
            "<Connect>",
        ),
        (
            "redirect",
            hooks.url("/twiml/redirect"),
            "",
            11200,
            "redirects are not followed",
        ),
        (
            "too large",
            hooks.url("/twiml/big"),
            "",
            11200,
            "larger than",
        ),
        (
            "unreachable",
            format!("https://127.0.0.1:{dead_port}/twiml/ok"),
            "",
            11200,
            "connect",
        ),
        (
            "not under a prefix",
            hooks.url("/elsewhere/ok"),
            "",
            21205,
            "twiml_url_prefixes",
        ),
        (
            "plain http",
            format!("http://127.0.0.1:{hooks_port}/twiml/ok"),
            "",
            21205,
            "twiml_url_prefixes",
        ),
    ] {
        let extra: Vec<&str> = if extra.is_empty() {
            vec![]
        } else {
            vec![extra]
        };
        let (status, v) = create_by_url(&env, &url, &extra);
        assert_eq!(status, 400, "{name}: {v}");
        assert_eq!(v["status"], 400, "{name}: {v}");
        assert_eq!(v["code"], code, "{name}: {v}");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(needle)),
            "{name}: {v}"
        );
    }
    // A request the trunk policy refuses anyway is refused before the fetch.
    let refused_url = format!("Url={}", hooks.url("/twiml/ok?refused=1"));
    let (status, v) = curl(
        &env,
        &[
            "--data-urlencode",
            "To=+15105550123",
            "--data-urlencode",
            "From=+14155550199",
            "--data-urlencode",
            &refused_url,
        ],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
    );
    assert_eq!((status, v["code"].as_u64()), (400, Some(21212)), "{v}");
    let seen = hooks.requests();
    assert!(
        seen.iter().all(|r| r["path"] != "/elsewhere/ok"
            && r["path"] != "/twiml/ok"
            && r["path"] != "/twiml/ok?refused=1"),
        "{seen:#?}"
    );
    // The GET carried the signature over the URL alone; the POSTs signed their parameters.
    assert!(
        seen.iter().any(|r| r["method"] == "GET"
            && r["valid"] == true
            && r["params"] == serde_json::json!({})),
        "{seen:#?}"
    );

    // The good document: 201, the call goes out, the agent's start carries its <Parameter>.
    let (status, v) = create_by_url(&env, &hooks.url("/twiml/ok"), &[]);
    assert_eq!(status, 201, "{v}\n{}", sbc.log());
    assert_eq!(v["status"], "queued", "{v}");
    let sid = v["sid"].as_str().expect("sid").to_string();
    let conns = agent.wait_for("start", Duration::from_secs(15), |c| {
        c.first().is_some_and(|c| c.first("start").is_some())
    });
    let start = conns[0].first("start").unwrap().clone();
    assert_eq!(start["start"]["callSid"], sid.as_str(), "{start}");
    assert_eq!(
        start["start"]["customParameters"]["lead"], "url-7",
        "{start}"
    );
    let fetch = hooks
        .requests()
        .into_iter()
        .find(|r| r["path"] == "/twiml/ok")
        .expect("the document was fetched");
    assert_eq!(fetch["method"], "POST", "{fetch}");
    assert_eq!(
        fetch["valid"], true,
        "RequestValidator must accept: {fetch}"
    );
    assert_eq!(fetch["valid_with_wrong_token"], false, "{fetch}");
    let p = &fetch["params"];
    assert_eq!(p["CallSid"], sid.as_str(), "{fetch}");
    assert_eq!(p["AccountSid"], ACCOUNT, "{fetch}");
    assert_eq!(
        (p["From"].as_str(), p["To"].as_str()),
        (Some(FROM), Some(TO))
    );
    assert_eq!(p["Direction"], "outbound-api", "{fetch}");

    let (code, v) = curl(&env, &["-d", "Status=completed"], &call_path(&sid));
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("completed")),
        "{v}"
    );
    // One call went out: the refused requests sent no INVITE.
    assert_eq!(
        trunk.log().first_invites().len(),
        1,
        "{:?}",
        trunk.log().methods()
    );
}

/// SIPp 3.8 as the called party: a UAS over TLS (certificate from the test CA, for 127.0.0.1)
/// running `scenarios/<scenario>`; its outcome once it exits (bounded by `hard`).
fn sipp_uas(
    env: &TestEnv,
    scenario: &str,
    port: u16,
    hard: Duration,
) -> interop_tests::SippOutcome {
    let dir = env.dir().join("sipp-uas");
    std::fs::create_dir_all(&dir).unwrap();
    let p = &env.ports;
    let mut child = Command::new(interop_tests::sipp::sipp_binary())
        .arg("-sf")
        .arg(interop_tests::scenario_path(scenario))
        .args(["-t", "l1", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("-tls_cert")
        .arg(&env.pki.agent.cert_pem_path)
        .arg("-tls_key")
        .arg(&env.pki.agent.key_pem_path)
        .args(["-mi", "127.0.0.1", "-min_rtp_port"])
        .arg(p.sipp_rtp_min.to_string())
        .arg("-max_rtp_port")
        .arg(p.sipp_rtp_max.to_string())
        .args(["-m", "1", "-timeout", "40s", "-timeout_error", "-nostdin"])
        .args([
            "-trace_err",
            "-trace_msg",
            "-trace_screen",
            "-rtpcheck_debug",
        ])
        .args(["-audiotolerance", "0.1"])
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(dir.join("sipp.stdout")).unwrap())
        .stderr(std::fs::File::create(dir.join("sipp.stderr")).unwrap())
        .spawn()
        .expect("spawn sipp");
    let deadline = Instant::now() + hard;
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait sipp") {
            break st.code().unwrap_or(-1);
        }
        if Instant::now() > deadline {
            // Child::kill: this child's PID only.
            let _ = child.kill();
            let _ = child.wait();
            break -2;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let screen = format!(
        "{}{}",
        std::fs::read_to_string(dir.join("sipp.stdout")).unwrap_or_default(),
        std::fs::read_to_string(dir.join("sipp.stderr")).unwrap_or_default()
    );
    interop_tests::SippOutcome { code, dir, screen }
}

/// Waits until `pred` holds for the agent's first connection; that connection.
fn first_conn(
    agent: &TestAgent,
    what: &str,
    timeout: Duration,
    pred: impl Fn(&interop_tests::AgentConn) -> bool,
) -> interop_tests::AgentConn {
    let conns = agent.wait_for(what, timeout, |c| c.first().is_some_and(&pred));
    conns.into_iter().next().expect("an agent connection")
}

/// SIPp as the called party (UAS over TLS, SDES-SRTP, no digest: a trunk without credentials):
/// the agent hears SIPp's pattern, SIPp's own check of what comes back (the agent's echo)
/// passes, and the audit shows an outbound call with every leg's cipher.
#[test]
fn sipp_answers_an_outbound_call() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let uas_port = env.ports.sipp[0];
    let uri = format!("sip:127.0.0.1:{uas_port};transport=tls");
    let sbc = start_sbc_with(
        &env,
        &agent,
        Setup {
            trunk_uri: &uri,
            password: None,
            ..Setup::default()
        },
    );
    let uas = {
        std::thread::scope(|s| {
            let h = s.spawn(|| {
                sipp_uas(
                    &env,
                    "uas_tls_srtp_pattern.xml",
                    uas_port,
                    Duration::from_secs(45),
                )
            });
            std::thread::sleep(Duration::from_millis(500));
            let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[]);
            assert_eq!(code, 201, "{v}\n{}", sbc.log());
            let sid = v["sid"].as_str().expect("sid").to_string();
            let c = first_conn(&agent, "SIPp's audio", Duration::from_secs(15), |c| {
                c.media.len() >= 100
            });
            // SIPp's pattern 1 is 160 bytes of 0xAA: what the agent hears is SIPp's audio.
            let pattern = c
                .media
                .iter()
                .filter(|(_, p)| p.iter().all(|&b| b == 0xAA))
                .count();
            assert!(
                pattern >= 90,
                "{pattern} of {} frames are SIPp's pattern",
                c.media.len()
            );
            assert_eq!(c.first("start").unwrap()["start"]["callSid"], sid.as_str());
            let v = wait_status(&env, &sid, "in-progress", Duration::from_secs(2));
            assert_eq!(v["status"], "in-progress", "{v}");
            let (code, v) = curl(&env, &["-d", "Status=completed"], &call_path(&sid));
            assert_eq!(
                (code, v["status"].as_str()),
                (200, Some("completed")),
                "{v}"
            );
            h.join().expect("sipp thread")
        })
    };
    uas.assert_flow_and_clean_echo("SIPp UAS: the agent's echo of its pattern", 0.8);
    let check = uas.rtp_check();
    eprintln!("SIPp echo check: {check:?}");
    assert!(
        check.received_ok >= 50,
        "SIPp checked too few echoed packets: {check:?}"
    );
    let rec = sbc.wait_audit(Duration::from_secs(5), |r| {
        r["event"] == "call.end" && r["direction"] == "outbound"
    });
    assert_eq!(rec["outbound"]["trunk"], "test-trunk", "{rec}");
    assert_eq!(rec["outbound"]["final_sip_status"], 200, "{rec}");
    for leg in ["sip_tls", "agent"] {
        assert!(
            rec[leg]["cipher"].as_str().is_some_and(|c| !c.is_empty()),
            "{leg}: {rec}"
        );
    }
    assert_eq!(
        rec["srtp"]["chosen_inbound"], "AES_CM_128_HMAC_SHA1_80",
        "{rec}"
    );
    assert!(rec["media"]["rtp_in"].as_u64().unwrap_or(0) >= 100, "{rec}");
    assert_eq!(rec["media"]["auth_failures"].as_u64(), Some(0), "{rec}");
}

/// baresip (an independent SIP-TLS + SDES-SRTP stack) as the called party: it answers by
/// itself with SRTP mandatory and plays a WAV; the agent hears it, and baresip hears the
/// agent's echo (its recording sounds like the WAV). The API hangs up (sbc's BYE on its own
/// connection to baresip): baresip sends its in-dialog requests on a new TLS connection to
/// sbc's Contact, which this harness's certificates do not allow (docs/outbound.md).
#[test]
fn baresip_answers_an_outbound_call() {
    use interop_tests::audio::{
        compare_envelopes, read_wav, silence, tone, ulaw_decode, write_wav,
    };
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let (listen, tls_port) = (env.ports.sipp[0], env.ports.sipp[1]);
    let dir = env.dir().join("baresip-callee");
    std::fs::create_dir_all(&dir).unwrap();
    // baresip's sip_certificate: certificate chain and key in one PEM file. baresip presents
    // this one certificate as a server (sbc dials it) and as a client (its BYE on a new
    // connection to sbc's listener), so it carries both extended key usages; sbc, with
    // `[tls] client_ca`, refuses a presented client certificate not valid for client
    // authentication (the test PKI's leaves carry one usage each). Its CA is added to the file
    // sbc's `client_ca` and baresip's `sip_cafile` read.
    std::fs::write(dir.join("tls.pem"), dual_use_identity(&env.pki.ca_pem_path)).unwrap();
    let mut source = tone(440.0, 12000.0, 1.0);
    source.extend(silence(1.0));
    source.extend(tone(660.0, 4000.0, 1.0));
    // Silence after the 3 s: baresip hangs up when its file ends (a BYE on a new connection to
    // sbc's Contact).
    source.extend(silence(4.0));
    write_wav(&dir.join("in.wav"), &source);
    std::fs::write(
        dir.join("config"),
        format!(
            "poll_method\tepoll\nsip_listen\t127.0.0.1:{listen}\nsip_certificate\t{d}/tls.pem\n\
             sip_cafile\t{ca}\nnet_interface\t127.0.0.1\naudio_source\taufile,{d}/in.wav\n\
             audio_player\talsa,null\naudio_alert\talsa,null\nausrc_srate\t8000\nauplay_srate\t8000\n\
             ausrc_channels\t1\nauplay_channels\t1\nrtp_ports\t{}-{}\nsnd_path\t{d}\n\
             module_path\t/usr/lib/baresip/modules\nmodule\tg711.so\nmodule\talsa.so\n\
             module\taufile.so\nmodule\tsrtp.so\nmodule\tsndfile.so\nmodule_tmp\taccount.so\n\
             module_app\tmenu.so\n",
            env.ports.sipp_rtp_min,
            env.ports.sipp_rtp_max,
            d = dir.display(),
            ca = env.pki.ca_pem_path.display(),
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("accounts"),
        "<sip:+15105550123@127.0.0.1;transport=tls>;regint=0;mediaenc=srtp-mand;audio_codecs=PCMU;answermode=auto\n",
    )
    .unwrap();
    let log = std::fs::File::create(dir.join("baresip.log")).unwrap();
    let mut child = Command::new(interop_tests::baresip::baresip_binary())
        .arg("-4")
        .arg("-f")
        .arg(&dir)
        .arg("-t")
        .arg("12")
        .current_dir(&dir)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("spawn baresip");
    let uri = format!("sip:127.0.0.1:{tls_port};transport=tls");
    let sbc = start_sbc_with(
        &env,
        &agent,
        Setup {
            trunk_uri: &uri,
            password: None,
            ..Setup::default()
        },
    );
    std::thread::sleep(Duration::from_millis(1000));
    let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[]);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().expect("sid").to_string();
    first_conn(&agent, "baresip's audio", Duration::from_secs(15), |c| {
        c.media.len() >= 210
    });
    // baresip hangs up itself, on a new connection.
    let conns = interop_tests::wait_closed(&agent, 1);
    let v = wait_status(&env, &sid, "completed", Duration::from_secs(10));
    assert_eq!(v["status"], "completed", "{v}\n{}", sbc.log());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(st) = child.try_wait().expect("wait baresip") {
            break st.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let blog = std::fs::read_to_string(dir.join("baresip.log")).unwrap_or_default();
    assert!(
        blog.contains("SRTP is Enabled (cryptosuite=AES_CM_128_HMAC_SHA1_80)"),
        "baresip (exit {code:?}) did not run SRTP:\n{blog}\n{}",
        sbc.log()
    );
    let c = &conns[0];
    assert_eq!(c.first("start").unwrap()["start"]["callSid"], sid.as_str());
    let heard: Vec<i16> = c
        .media
        .iter()
        .flat_map(|(_, p)| p.iter().map(|&u| ulaw_decode(u)))
        .collect();
    let m = compare_envelopes(&source, &heard, 50);
    eprintln!("agent audio vs baresip's WAV: {m:?}");
    assert!(
        m.ok_within(15, 0.15),
        "the agent's audio is not baresip's WAV: {m:#?}\n{blog}"
    );
    let dec = interop_tests::find_file(&dir, |n| n.starts_with("dump-") && n.ends_with("-dec.wav"))
        .unwrap_or_else(|| panic!("baresip wrote no dump-*-dec.wav\n{blog}"));
    let (_, _, echoed) = read_wav(&dec).expect("read dec dump");
    let m = compare_envelopes(&source, &echoed, 50);
    eprintln!("baresip's recording vs its WAV: {m:?}");
    assert!(
        m.ok_within(10, 0.15),
        "baresip did not hear the agent's echo: {m:#?}"
    );
    let rec = sbc.wait_audit(Duration::from_secs(5), |r| {
        r["event"] == "call.end" && r["direction"] == "outbound"
    });
    assert_eq!(
        rec["srtp"]["chosen_inbound"], "AES_CM_128_HMAC_SHA1_80",
        "{rec}"
    );
    assert_eq!(
        rec["end_reason"], "carrier_bye",
        "baresip's BYE: {rec}\n{blog}"
    );
}

/// A certificate for 127.0.0.1 valid for server and client authentication (chain and key as
/// one PEM), from a CA of its own whose certificate is appended to `ca_pem_path`.
fn dual_use_identity(ca_pem_path: &Path) -> String {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "baresip dual-use test CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca = ca.self_signed(&ca_key).expect("self-sign CA");
    let key = KeyPair::generate().expect("leaf key");
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .expect("leaf params");
    leaf.distinguished_name
        .push(DnType::CommonName, "baresip callee");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf = leaf.signed_by(&key, &ca, &ca_key).expect("sign leaf");
    let mut bundle = std::fs::read_to_string(ca_pem_path).expect("read CA bundle");
    bundle.push_str(&ca.pem());
    std::fs::write(ca_pem_path, bundle).expect("write CA bundle");
    format!("{}{}{}", leaf.pem(), ca.pem(), key.serialize_pem())
}

/// `early_media = true`: the trunk's 183 with SDP starts the agent's stream (and the trunk hears
/// the agent) before the 200, and the 200 with the same SDP continues the same stream.
#[test]
fn early_media_starts_the_stream_at_183() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::EarlyMedia, USER, PASSWORD);
    let sbc = start_sbc(
        &env,
        &agent,
        &trunk_uri(&trunk),
        PASSWORD,
        &["early_media = true"],
    );
    let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[]);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    let c = first_conn(&agent, "early media", Duration::from_secs(15), |c| {
        c.media.len() >= 25
    });
    let heard_early = trunk.media_received();
    assert!(
        trunk.log().answers.is_empty(),
        "25 frames reached the agent only after the 200\n{}",
        sbc.log()
    );
    assert!(
        heard_early > 0,
        "the trunk heard nothing from the agent before its 200"
    );
    assert_eq!(c.first("start").unwrap()["start"]["callSid"], sid.as_str());
    // Early media is not an answer: the call is still ringing.
    let (_, v) = curl(&env, &[], &call_path(&sid));
    assert_eq!(v["status"], "ringing", "before the 200: {v}");
    // The 200 comes, is ACKed, and the same stream goes on.
    assert!(trunk.wait(Duration::from_secs(5), |l| l.answers.len() == 1
        && l.methods().iter().any(|m| m == "ACK")));
    let answered = trunk.log().answers[0];
    let v = wait_status(&env, &sid, "in-progress", Duration::from_secs(5));
    assert_eq!(v["status"], "in-progress", "after the 200: {v}");
    let c = first_conn(
        &agent,
        "media after the 200",
        Duration::from_secs(10),
        |c| c.media.iter().filter(|(t, _)| *t > answered).count() >= 50,
    );
    assert_eq!(agent.connections().len(), 1, "one agent stream");
    assert!(c.closed.is_none(), "the stream must go on after the 200");
    assert!(trunk.media_received() > heard_early + 25);
    let (code, v) = curl(&env, &["-d", "Status=completed"], &call_path(&sid));
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("completed")),
        "{v}"
    );
    assert!(trunk.wait(Duration::from_secs(5), |l| l
        .methods()
        .iter()
        .any(|m| m == "BYE")));
    let rec = sbc.wait_audit(Duration::from_secs(5), |r| {
        r["event"] == "call.end" && r["direction"] == "outbound"
    });
    // The final response's status, not the 183's.
    assert_eq!(rec["outbound"]["final_sip_status"], 200, "{rec}");
    assert_eq!(rec["end_reason"], "api_hangup", "{rec}");
}

/// Early media, then a final failure: 486 after the 183 (`busy`), or no final response until
/// the ring timeout's CANCEL (`no-answer`). The call ends with that status in the API, the
/// audit and the metrics, as it would without early media, and the agent's stream is stopped.
#[test]
fn early_media_then_failure_has_its_status() {
    for (behaviour, timeout, status, sip_status) in [
        (TrunkBehaviour::EarlyMediaBusy, "Timeout=30", "busy", 486),
        (
            TrunkBehaviour::EarlyMediaRing,
            "Timeout=4",
            "no-answer",
            487,
        ),
    ] {
        let env = TestEnv::new();
        let agent = env.start_agent(AgentBehaviour::Echo);
        let trunk = TestTrunk::start(&env.pki.agent, behaviour, USER, PASSWORD);
        let sbc = start_sbc(
            &env,
            &agent,
            &trunk_uri(&trunk),
            PASSWORD,
            &["early_media = true"],
        );
        let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[timeout]);
        assert_eq!(code, 201, "{status}: {v}");
        let sid = v["sid"].as_str().unwrap().to_string();
        first_conn(&agent, "early media", Duration::from_secs(15), |c| {
            c.media.len() >= 10
        });
        let (_, v) = curl(&env, &[], &call_path(&sid));
        assert_eq!(v["status"], "ringing", "{status}: during early media: {v}");
        let v = wait_status(&env, &sid, status, Duration::from_secs(15));
        assert_eq!(v["status"], status, "{status}: {v}\n{}", sbc.log());
        if status == "no-answer" {
            assert!(
                trunk.wait(Duration::from_secs(5), |l| l
                    .methods()
                    .iter()
                    .any(|m| m == "CANCEL")),
                "{:?}",
                trunk.log().methods()
            );
        }
        let rec = sbc.wait_audit(Duration::from_secs(5), |r| {
            r["event"] == "call.end" && r["direction"] == "outbound"
        });
        assert_eq!(rec["end_reason"], status, "{rec}");
        assert_eq!(rec["outbound"]["twilio_status"], status, "{rec}");
        assert_eq!(rec["outbound"]["final_sip_status"], sip_status, "{rec}");
        assert!(trunk.log().answers.is_empty(), "{status}: never answered");
        // The agent's stream is stopped and closed.
        let c = first_conn(&agent, "stop", Duration::from_secs(5), |c| {
            c.first("stop").is_some() && c.closed.is_some()
        });
        assert!(c.first("stop").is_some(), "{status}: no stop");
        let m = sbc.metrics();
        assert!(
            m.contains(&format!(
                "sbc_outbound_calls_total{{status=\"{status}\"}} 1"
            )),
            "{status}: {m}"
        );
        assert!(
            !m.contains("sbc_outbound_calls_total{status=\"completed\"}"),
            "{status}: {m}"
        );
    }
}

/// The status callbacks of an outbound call: initiated, ringing, answered and completed, with
/// Twilio's fields, signed so that the `twilio` library's `RequestValidator` accepts them.
#[test]
fn outbound_status_callbacks_are_signed() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let hooks = Hooks::start(&env, &agent, env.ports.sipp[4]);
    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Answer, USER, PASSWORD);
    let uri = trunk_uri(&trunk);
    let callback = hooks.url("/status?call=outbound");
    let sbc = start_sbc_with(
        &env,
        &agent,
        Setup {
            trunk_uri: &uri,
            password: Some(PASSWORD),
            api_extra: vec![format!(
                "callback_ca_bundle = {:?}",
                env.pki.ca_pem_path.display().to_string()
            )],
            route_extra: vec![format!("status_callback = {callback:?}")],
            ..Setup::default()
        },
    );
    let cb = format!("StatusCallback={callback}");
    let (code, v) = create(
        &env,
        TO,
        FROM,
        &twiml(&agent),
        &[
            &cb,
            "StatusCallbackEvent=initiated ringing answered completed",
        ],
    );
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    first_conn(&agent, "media", Duration::from_secs(15), |c| {
        c.media.len() >= 50
    });
    std::thread::sleep(Duration::from_millis(1200));
    let (code, v) = curl(&env, &["-d", "Status=completed"], &call_path(&sid));
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("completed")),
        "{v}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let got = loop {
        let got: Vec<Value> = hooks
            .requests()
            .into_iter()
            .filter(|r| r["path"] == "/status?call=outbound")
            .collect();
        if got.iter().any(|v| v["params"]["CallStatus"] == "completed") || Instant::now() > deadline
        {
            break got;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut sorted = got.clone();
    sorted.sort_by_key(|v| {
        v["params"]["SequenceNumber"]
            .as_str()
            .and_then(|s| s.parse::<u32>().ok())
    });
    let statuses: Vec<&str> = sorted
        .iter()
        .map(|v| v["params"]["CallStatus"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        statuses,
        vec!["initiated", "ringing", "in-progress", "completed"],
        "{got:#?}\n{}",
        sbc.log()
    );
    for (i, v) in sorted.iter().enumerate() {
        assert_eq!(v["method"], "POST", "{v}");
        assert_eq!(v["valid"], true, "RequestValidator must accept: {v}");
        assert_eq!(v["valid_with_wrong_token"], false, "{v}");
        let p = &v["params"];
        assert_eq!(p["SequenceNumber"], i.to_string().as_str(), "{v}");
        assert_eq!(p["CallSid"], sid.as_str(), "{v}");
        assert_eq!(p["AccountSid"], ACCOUNT, "{v}");
        assert_eq!(p["Direction"], "outbound-api", "{v}");
        assert_eq!(p["ApiVersion"], "2010-04-01", "{v}");
        assert_eq!(p["CallbackSource"], "call-progress-events", "{v}");
        assert_eq!(
            (p["From"].as_str(), p["To"].as_str()),
            (Some(FROM), Some(TO)),
            "{v}"
        );
        assert_eq!(
            (p["Caller"].as_str(), p["Called"].as_str()),
            (Some(FROM), Some(TO)),
            "{v}"
        );
        assert!(
            p["Timestamp"]
                .as_str()
                .is_some_and(|t| t.ends_with("+0000")),
            "{v}"
        );
    }
    let done = &sorted[3]["params"];
    assert!(
        done["CallDuration"]
            .as_str()
            .and_then(|d| d.parse::<u64>().ok())
            .is_some_and(|d| (1..=10).contains(&d)),
        "{done}"
    );
    assert_eq!(done["Duration"], "1", "{done}");
}

/// An agent built on Pipecat's real `TwilioFrameSerializer`: a TLS WebSocket server that feeds
/// every message to `deserialize` (so `InputAudioRawFrame`s are what the pipeline would hear)
/// and speaks back through `serialize(OutputAudioRawFrame)`; it writes what it got to OUT when
/// the stream stops.
const PIPECAT_AGENT: &str = r#"
import asyncio, json, os, ssl, struct, types
import websockets
from pipecat.frames.frames import InputAudioRawFrame, OutputAudioRawFrame
from pipecat.serializers.twilio import TwilioFrameSerializer

out = os.environ["OUT"]

async def handler(ws):
    s = None
    frames, sumsq, samples, sent, custom, stop, error = 0, 0, 0, 0, {}, False, None
    try:
        async for msg in ws:
            ev = json.loads(msg)
            if ev.get("event") == "start":
                custom = ev["start"].get("customParameters", {})
                s = TwilioFrameSerializer(
                    stream_sid=ev["start"]["streamSid"],
                    call_sid=ev["start"]["callSid"],
                    params=TwilioFrameSerializer.InputParams(sample_rate=8000, auto_hang_up=False),
                )
                await s.setup(types.SimpleNamespace(audio_in_sample_rate=8000))
                continue
            if ev.get("event") == "stop":
                stop = True
                break
            if s is None:
                continue
            frame = await s.deserialize(msg)
            if isinstance(frame, InputAudioRawFrame):
                frames += 1
                pcm = struct.unpack("<%dh" % (len(frame.audio) // 2), frame.audio)
                sumsq += sum(x * x for x in pcm)
                samples += len(pcm)
                reply = await s.serialize(OutputAudioRawFrame(audio=frame.audio, sample_rate=8000, num_channels=1))
                if reply:
                    await ws.send(reply)
                    sent += 1
    except Exception as e:
        # How the stream ended is part of the result: the test wants `stop`, then a clean close.
        error = repr(e)
    finally:
        # Written aside, then renamed: the test polls for `out` and must never read it half-written.
        with open(out + ".tmp", "w") as f:
            json.dump({"frames": frames, "rms": (sumsq / samples) ** 0.5 if samples else 0,
                       "sent": sent, "custom": custom, "stop": stop, "error": error}, f)
        os.replace(out + ".tmp", out)

async def main():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.environ["CERT"], os.environ["KEY"])
    async with websockets.serve(handler, "127.0.0.1", int(os.environ["PORT"]), ssl=ctx):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"#;

/// The Pipecat serializer as the agent of an outbound call: it hears the trunk's audio (the
/// test trunk's constant mu-law 0x55, so a non-silent signal), and the trunk hears it back.
#[test]
fn pipecat_serializer_hears_an_outbound_call() {
    use std::io::BufRead;
    let env = TestEnv::new();
    let port = env.ports.sipp[2];
    let out = env.dir().join("pipecat.json");
    let script = env.dir().join("pipecat_agent.py");
    std::fs::write(&script, PIPECAT_AGENT).unwrap();
    let mut child = Command::new(python())
        .arg(&script)
        .env("PORT", port.to_string())
        .env("OUT", &out)
        .env("CERT", &env.pki.agent.cert_pem_path)
        .env("KEY", &env.pki.agent.key_pem_path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start the Pipecat agent");
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().expect("stdout");
    let _child = Kill(child);
    let mut line = String::new();
    std::io::BufReader::new(stdout)
        .read_line(&mut line)
        .expect("ready");
    assert_eq!(line.trim(), "ready");
    let url = format!("wss://127.0.0.1:{port}/pipecat");

    let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Answer, USER, PASSWORD);
    let token = secret_file(env.dir(), "token", TOKEN);
    let pw = secret_file(env.dir(), "trunk.password", PASSWORD);
    let mut o = SbcOptions::agent(url.clone());
    o.carrier_ca = true;
    o.extra_default_route = vec![format!("account_sid = {ACCOUNT:?}")];
    o.extra_toml = vec![format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
         [[api.accounts]]\nsid = {ACCOUNT:?}\nauth_token_file = {token:?}\n\n\
         [[trunks]]\nname = \"test-trunk\"\nuri = {uri:?}\nusername = {USER:?}\n\
         password_file = {pw:?}\naccount_sids = [{ACCOUNT:?}]\ncaller_ids = [{FROM:?}]\n\
         allow_destinations = [\"+1\"]\n",
        port = api_port(&env),
        cert = env.pki.sbc.cert_pem_path.display().to_string(),
        key = env.pki.sbc.key_pem_path.display().to_string(),
        token = token.display().to_string(),
        uri = trunk_uri(&trunk),
        pw = pw.display().to_string(),
    )];
    let sbc = env.start_sbc(o);
    let doc = format!(
        "<Response><Connect><Stream url=\"{url}\"><Parameter name=\"lead\" value=\"pc-1\"/></Stream></Connect></Response>"
    );
    let (code, v) = create(&env, TO, FROM, &doc, &[]);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    let v = wait_status(&env, &sid, "in-progress", Duration::from_secs(15));
    assert_eq!(v["status"], "in-progress", "{v}\n{}", sbc.log());
    std::thread::sleep(Duration::from_secs(2));
    let (code, v) = curl(&env, &["-d", "Status=completed"], &call_path(&sid));
    assert_eq!(
        (code, v["status"].as_str()),
        (200, Some("completed")),
        "{v}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !out.exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    let got: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap_or_default())
        .unwrap_or_else(|e| panic!("no result from the Pipecat agent: {e}\n{}", sbc.log()));
    eprintln!("Pipecat agent: {got}");
    assert_eq!(got["stop"], true, "the stream ended without `stop`: {got}");
    assert!(got["error"].is_null(), "{got}");
    assert!(got["frames"].as_u64().unwrap_or(0) >= 50, "{got}");
    // mu-law 0x55 decodes to a constant of magnitude ~ 340: far from silence.
    assert!(got["rms"].as_f64().unwrap_or(0.0) > 100.0, "{got}");
    assert_eq!(got["custom"]["lead"], "pc-1", "{got}");
    assert!(got["sent"].as_u64().unwrap_or(0) >= 50, "{got}");
    assert!(
        trunk.media_received() >= 25,
        "the trunk heard {} packets from the Pipecat agent",
        trunk.media_received()
    );
}

/// A BYE from the called party as RFC 3261 lets it send one: on a new TLS connection to sbc's
/// Contact (its SIP listener), with the dialog's Call-ID and tags from the callee's side.
fn callee_request(method: &str, ack: &str, from_tag: &str, to_tag: &str, cseq: u32) -> String {
    let call_id = interop_tests::rawcall::header(ack, "Call-ID").expect("Call-ID");
    let uri = |h: &str| {
        let v = interop_tests::rawcall::header(ack, h).expect("From/To");
        v.split(';').next().unwrap_or(v).to_string()
    };
    format!(
        "{method} sip:sbc@127.0.0.1;transport=tls SIP/2.0\r\n\
         Via: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK-callee-{cseq}-{from_tag}\r\n\
         Max-Forwards: 70\r\n\
         From: {to};tag={from_tag}\r\n\
         To: {from};tag={to_tag}\r\n\
         Call-ID: {call_id}\r\n\
         CSeq: {cseq} {method}\r\n\
         Content-Length: 0\r\n\r\n",
        to = uri("To"),
        from = uri("From"),
    )
}

/// The callee's in-dialog requests on a new connection to sbc's listener reach the call when
/// the connection is admitted (a carrier's `source_cidrs`) or comes from an address the trunk
/// resolved to, and only with the dialog's full identifiers: a request with the right Call-ID
/// but other tags gets 481 and the call goes on; the callee's BYE gets 200 and ends the call
/// (`carrier_bye`).
#[test]
fn callee_bye_on_a_new_connection_ends_the_call() {
    // 127.0.0.0/8 admits the callee's connection as a carrier's; 127.0.0.250/32 does not, and
    // the trunk's resolved address (127.0.0.1) does.
    for cidrs in [None, Some(vec!["127.0.0.250/32".to_string()])] {
        let what = if cidrs.is_none() {
            "carrier source"
        } else {
            "trunk address"
        };
        let env = TestEnv::new();
        let agent = env.start_agent(AgentBehaviour::Echo);
        let trunk = TestTrunk::start(&env.pki.agent, TrunkBehaviour::Answer, USER, PASSWORD);
        let uri = trunk_uri(&trunk);
        let sbc = start_sbc_with(
            &env,
            &agent,
            Setup {
                trunk_uri: &uri,
                password: Some(PASSWORD),
                source_cidrs: cidrs.clone(),
                ..Setup::default()
            },
        );
        let (code, v) = create(&env, TO, FROM, &twiml(&agent), &[]);
        assert_eq!(code, 201, "{what}: {v}");
        let sid = v["sid"].as_str().unwrap().to_string();
        first_conn(&agent, "media", Duration::from_secs(15), |c| {
            c.media.len() >= 25
        });
        assert!(trunk.wait(Duration::from_secs(5), |l| l
            .methods()
            .iter()
            .any(|m| m == "ACK")));
        let ack = trunk
            .log()
            .requests
            .iter()
            .find(|(_, m)| m.starts_with("ACK "))
            .map(|(_, m)| m.clone())
            .expect("the ACK");
        let tag = |h: &str| {
            let v = interop_tests::rawcall::header(&ack, h).expect("header");
            v.split(";tag=").nth(1).expect("tag").to_string()
        };
        let (sbc_tag, callee_tag) = (tag("From"), tag("To"));

        // A stranger's BYE: right Call-ID, wrong tags.
        let mut stranger = interop_tests::rawcall::SipConn::connect(&env.pki, sbc.sip_port);
        stranger.send(&callee_request("BYE", &ack, "not-the-callee", &sbc_tag, 7));
        stranger.expect_response(481, "7 BYE", Duration::from_secs(5));
        let mut stranger2 = interop_tests::rawcall::SipConn::connect(&env.pki, sbc.sip_port);
        stranger2.send(&callee_request("BYE", &ack, &callee_tag, "not-sbc", 8));
        stranger2.expect_response(481, "8 BYE", Duration::from_secs(5));
        std::thread::sleep(Duration::from_millis(500));
        let (_, v) = curl(&env, &[], &call_path(&sid));
        assert_eq!(v["status"], "in-progress", "{what}: the call goes on: {v}");
        assert!(
            agent.connections().iter().all(|c| c.closed.is_none()),
            "{what}: the agent's stream goes on"
        );

        // The callee's BYE on its own new connection.
        let mut callee = interop_tests::rawcall::SipConn::connect(&env.pki, sbc.sip_port);
        callee.send(&callee_request("BYE", &ack, &callee_tag, &sbc_tag, 9));
        callee.expect_response(200, "9 BYE", Duration::from_secs(5));
        let v = wait_status(&env, &sid, "completed", Duration::from_secs(10));
        assert_eq!(v["status"], "completed", "{what}: {v}\n{}", sbc.log());
        let rec = sbc.wait_audit(Duration::from_secs(5), |r| {
            r["event"] == "call.end" && r["direction"] == "outbound"
        });
        assert_eq!(rec["end_reason"], "carrier_bye", "{what}: {rec}");
        // sbc sent no BYE of its own: the callee hung up.
        assert!(
            !trunk.log().methods().iter().any(|m| m == "BYE"),
            "{what}: {:?}",
            trunk.log().methods()
        );
    }
}
