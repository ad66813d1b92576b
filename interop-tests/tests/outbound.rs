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
    let token = secret_file(env.dir(), "token", TOKEN);
    let pw = secret_file(env.dir(), "trunk.password", password);
    let mut o = SbcOptions::agent(agent.url());
    o.carrier_ca = true;
    o.extra_default_route = vec![format!("account_sid = {ACCOUNT:?}")];
    o.extra_toml = vec![format!(
        "[api]\nlisten = \"127.0.0.1:{port}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
         [[api.accounts]]\nsid = {ACCOUNT:?}\nauth_token_file = {token:?}\n\n\
         [[trunks]]\nname = \"test-trunk\"\nuri = {trunk_uri:?}\nusername = {USER:?}\n\
         password_file = {pw:?}\naccount_sids = [{ACCOUNT:?}]\ncaller_ids = [{FROM:?}]\n\
         allow_destinations = [\"+1\"]\n{extra}\n",
        port = api_port(env),
        cert = env.pki.sbc.cert_pem_path.display().to_string(),
        key = env.pki.sbc.key_pem_path.display().to_string(),
        token = token.display().to_string(),
        pw = pw.display().to_string(),
        extra = trunk_extra.join("\n"),
    )];
    env.start_sbc(o)
}

fn curl(env: &TestEnv, args: &[&str], path: &str) -> (u16, Value) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code}",
            "--cacert",
        ])
        .arg(&env.pki.ca_pem_path)
        .args(["-u", &format!("{ACCOUNT}:{TOKEN}")])
        .args(args)
        .arg(format!("https://127.0.0.1:{}{path}", api_port(env)))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (
        code.trim().parse().unwrap_or(0),
        serde_json::from_str(body).unwrap_or(Value::Null),
    )
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
            "Url",
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
