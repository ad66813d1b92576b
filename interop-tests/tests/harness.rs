//! Self-tests of the harness (no sbc): the test agent speaks TLS 1.3 WebSocket with the test
//! PKI, echoes media and records messages; the TLS-1.2-only and untrusted agents fail a
//! TLS-1.3-only client that trusts the test CA; every scenario parses in SIPp.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use interop_tests::{AgentBehaviour, TestEnv};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::Connector;

fn tls13_client(env: &TestEnv) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(env.pki.ca_der.clone()).unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

async fn connect(
    env: &TestEnv,
    url: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    String,
> {
    tokio_tungstenite::connect_async_tls_with_config(
        url,
        None,
        false,
        Some(Connector::Rustls(tls13_client(env))),
    )
    .await
    .map(|(ws, _)| ws)
    .map_err(|e| e.to_string())
}

#[test]
fn agent_echoes_and_records() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = connect(&env, &agent.url()).await.expect("connect");
        ws.send(Message::text(
            json!({"event":"connected","protocol":"Call","version":"1.0.0"}).to_string(),
        ))
        .await
        .unwrap();
        ws.send(Message::text(
            json!({"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1","callSid":"CA1"}})
                .to_string(),
        ))
        .await
        .unwrap();
        ws.send(Message::text(
            json!({"event":"media","streamSid":"MZ1","media":{"payload":"qqqq"}}).to_string(),
        ))
        .await
        .unwrap();
        let echo = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .expect("message")
            .expect("ok");
        let v: Value = serde_json::from_str(echo.to_text().unwrap()).unwrap();
        assert_eq!(v["event"], "media");
        assert_eq!(v["streamSid"], "MZ1");
        assert_eq!(v["media"]["payload"], "qqqq");
        ws.close(None).await.unwrap();
    });
    let conns = agent.wait_for("closed", Duration::from_secs(5), |c| {
        c.len() == 1 && c[0].closed.is_some()
    });
    assert_eq!(conns[0].events(), ["connected", "start", "media"]);
    assert_eq!(conns[0].media[0].1, vec![0xAA, 0xAA, 0xAA]);
    assert_eq!(conns[0].stream_sid().as_deref(), Some("MZ1"));
    assert_eq!(conns[0].path, "/ws");
}

#[test]
fn agent_failure_modes_fail_a_tls13_client() {
    let env = TestEnv::new();
    let rt = tokio::runtime::Runtime::new().unwrap();
    for b in [AgentBehaviour::Tls12Only, AgentBehaviour::UntrustedCert] {
        let agent = env.start_agent(b);
        let r = rt.block_on(connect(&env, &agent.url()));
        assert!(
            r.is_err(),
            "{b:?}: a TLS 1.3 client trusting the test CA connected"
        );
    }
}

#[test]
fn agent_hangs_up_after_start() {
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::HangUpAfter(Duration::from_millis(300)));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let mut ws = connect(&env, &agent.url()).await.expect("connect");
        ws.send(Message::text(
            json!({"event":"start","streamSid":"MZ1","start":{"streamSid":"MZ1"}}).to_string(),
        ))
        .await
        .unwrap();
        let m = tokio::time::timeout(Duration::from_secs(3), ws.next())
            .await
            .expect("close in time");
        assert!(
            matches!(m, Some(Ok(Message::Close(_))) | None | Some(Err(_))),
            "{m:?}"
        );
    });
}

/// Every scenario must at least load in SIPp (run against a port nobody listens on, SIPp fails
/// to connect; a scenario parse error shows up in its output instead).
#[test]
fn scenarios_load_in_sipp() {
    let env = TestEnv::new();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios");
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".xml"))
        .collect();
    names.sort();
    for name in names {
        let o = env.sipp(&name).timeout("5s").run(port);
        let out = format!("{}\n{}", o.screen, o.errors_log());
        assert!(
            !out.contains("Unable to load") && !out.contains("XML") && !out.contains("scenario"),
            "{name} did not load in SIPp:\n{out}"
        );
    }
}
