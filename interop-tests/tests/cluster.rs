//! Several sbc instances as one service on Redis (`[cluster]`, `docs/scaling.md`), against the
//! real binary: instances on 127.0.0.1, 127.0.0.2 and 127.0.0.3, one Debian `redis-server` per
//! test (started here on a free port, no persistence, killed by PID), calls from the hand-driven
//! carrier of `rawcall` (SDES offer, builtin echo agent, no media needed).
//!
//! Figures (printed, never asserted): the API's added latency when a request is forwarded, and
//! Redis round trips per call setup.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use interop_tests::rawcall::{self, Dialog, Media, SipConn};
use interop_tests::redis::RedisServer;
use interop_tests::{Ports, SbcOptions, SbcProcess, TestEnv};
use serde_json::Value;

const ACCOUNT: &str = "AC0123456789abcdef0123456789abcdef";
const TOKEN: &str = "test-token-0123456789abcdef";
const SECS10: Duration = Duration::from_secs(10);

/// One instance: its process, where its API and SIP listener are.
struct Node {
    sbc: SbcProcess,
    ip: String,
    api_port: u16,
}

fn write_token(dir: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("token");
    std::fs::write(&p, format!("{TOKEN}\n")).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

/// Starts instance `id` on `ip` (127.0.0.1 takes the test's own ports, others new ones), with
/// the API on, the default route owned by ACCOUNT, the carrier a Twilio trunk (so that the
/// test's `X-Twilio-CallSid` is the CallSid), and `[cluster]` plus `cluster_extra` lines.
fn node(env: &TestEnv, redis: &RedisServer, id: &str, ip: &str, cluster_extra: &[&str]) -> Node {
    node_at(env, &redis.url(), id, ip, cluster_extra)
}

/// [`node`] with Redis at `url`.
fn node_at(env: &TestEnv, url: &str, id: &str, ip: &str, cluster_extra: &[&str]) -> Node {
    let ports = if ip == "127.0.0.1" {
        env.ports.clone()
    } else {
        Ports::allocate()
    };
    let dir = env.dir().join(id);
    std::fs::create_dir_all(&dir).unwrap();
    let token = write_token(&dir);
    let api_port = ports.sipp[5];
    let mut o = SbcOptions::builtin_echo();
    o.listen_ip = ip.into();
    o.rtp_timeout_secs = 120;
    o.max_concurrent_calls = 500;
    o.max_calls_per_second = 1000;
    o.drain_timeout_secs = Some(20);
    o.extra_carrier = vec!["twilio = true".into()];
    o.extra_default_route = vec![format!("account_sid = {ACCOUNT:?}")];
    o.extra_toml = vec![format!(
        "[api]\nlisten = \"{ip}:{api_port}\"\ncertificate = {cert:?}\nprivate_key = {key:?}\n\
         requests_per_second = 1000\n\
         [[api.accounts]]\nsid = {ACCOUNT:?}\nauth_token_file = {token:?}\n\n\
         [cluster]\nredis_url = {url:?}\ninstance_id = {id:?}\napi_address = \"{ip}:{api_port}\"\n\
         ca = {ca:?}\nheartbeat_ms = 300\nttl_ms = 1500\nredis_timeout_ms = 300\n{extra}\n",
        cert = env.pki.cluster.cert_pem_path.display().to_string(),
        key = env.pki.cluster.key_pem_path.display().to_string(),
        token = token.display().to_string(),
        url = url,
        ca = env.pki.ca_pem_path.display().to_string(),
        extra = cluster_extra.join("\n"),
    )];
    let sbc = SbcProcess::start_at(env, &dir, &ports, o);
    let n = Node {
        sbc,
        ip: ip.into(),
        api_port,
    };
    // Registered in Redis (its first heartbeat) before the test goes on.
    wait_until(SECS10, "instance connected to Redis", || {
        metric(&n.sbc, "sbc_cluster_degraded") == Some(0.0)
    });
    n
}

fn wait_until(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(
            started.elapsed() < timeout,
            "{what}: not within {timeout:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// `GET path` on the metrics listener: (status, body).
fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).ok();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut buf = String::new();
    let _ = s.read_to_string(&mut buf);
    let status = buf
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = buf
        .split_once("\r\n\r\n")
        .map_or(String::new(), |(_, b)| b.to_string());
    (status, body)
}

/// The sum of a metric's samples whose line contains every one of `labels`.
fn metric_sum(sbc: &SbcProcess, name: &str, labels: &[&str]) -> f64 {
    sbc.metrics()
        .lines()
        .filter(|l| l.starts_with(name) && labels.iter().all(|x| l.contains(x)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metric(sbc: &SbcProcess, name: &str) -> Option<f64> {
    sbc.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
}

fn connect(env: &TestEnv, n: &Node) -> SipConn {
    let dest = SocketAddr::new(n.ip.parse().unwrap(), n.sbc.sip_port);
    SipConn::connect_from_to(&env.pki, std::net::Ipv4Addr::LOCALHOST, dest)
}

fn call_sid(tag: &str) -> String {
    // CA + 32 hex digits, unique per tag within the test.
    let mut hex: String = tag
        .bytes()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .chars()
        .take(24)
        .collect();
    while hex.len() < 24 {
        hex.push('0');
    }
    format!("CA{hex}{:08x}", std::process::id())
}

/// An INVITE with `X-Twilio-CallSid`; the final response and, on 200, the dialog (ACK sent).
fn invite(conn: &mut SipConn, n: &Node, tag: &str) -> (u16, String, Dialog) {
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(n.sbc.sip_port, 5999, tag);
    let (_sock, rtp_port) = Media::bind();
    let msg = dialog
        .invite(via_port, rtp_port, &rawcall::test_key(3))
        .replacen(
            "Max-Forwards: 70\r\n",
            &format!(
                "Max-Forwards: 70\r\nX-Twilio-AccountSid: {ACCOUNT}\r\nX-Twilio-CallSid: {}\r\n",
                call_sid(tag)
            ),
            1,
        );
    conn.send(&msg);
    let (status, m) = conn.finish_invite(&mut dialog, SECS10);
    (status, m, dialog)
}

/// `curl` against `n`'s API; (status, JSON body, seconds curl took).
fn api(env: &TestEnv, n: &Node, args: &[&str], path: &str) -> (u16, Value, f64) {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--max-time",
            "10",
            "-w",
            "\n%{http_code} %{time_total}",
            "--cacert",
        ])
        .arg(&env.pki.ca_pem_path)
        .args(["-u", &format!("{ACCOUNT}:{TOKEN}")])
        .args(args)
        .arg(format!("https://{}:{}{path}", n.ip, n.api_port))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, tail) = text.rsplit_once('\n').unwrap_or(("", "0 0"));
    let mut t = tail.split_whitespace();
    let code = t.next().and_then(|c| c.parse().ok()).unwrap_or(0);
    let secs = t.next().and_then(|c| c.parse().ok()).unwrap_or(0.0);
    (
        code,
        serde_json::from_str(body).unwrap_or(Value::Null),
        secs,
    )
}

fn call_path(sid: &str) -> String {
    format!("/2010-04-01/Accounts/{ACCOUNT}/Calls/{sid}.json")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// A cluster-wide limit of 50 calls for a carrier: 50 calls spread over three instances are
/// answered, the 51st gets 503 with Retry-After whichever instance it reaches; a call ended on
/// one instance frees a slot for another. The calls list of any instance shows all 50.
#[test]
fn carrier_limit_is_cluster_wide() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let limit = ["carrier_limits = { test = 50 }"];
    let nodes = [
        node(&env, &redis, "a", "127.0.0.1", &limit),
        node(&env, &redis, "b", "127.0.0.2", &limit),
        node(&env, &redis, "c", "127.0.0.3", &limit),
    ];
    let mut conns: Vec<SipConn> = nodes.iter().map(|n| connect(&env, n)).collect();
    let rt = |n: &Node| metric_sum(&n.sbc, "sbc_cluster_redis_commands_total", &[]);
    let acquires = |n: &Node| {
        metric_sum(
            &n.sbc,
            "sbc_cluster_redis_commands_total",
            &["op=\"acquire\""],
        )
    };
    let rt_before: f64 = nodes.iter().map(rt).sum();
    let hb_before: f64 = nodes
        .iter()
        .map(|n| {
            metric_sum(
                &n.sbc,
                "sbc_cluster_redis_commands_total",
                &["op=\"refresh\""],
            )
        })
        .sum();
    let started = Instant::now();
    let mut up: Vec<(usize, Dialog)> = Vec::new();
    for i in 0..50 {
        let k = i % 3;
        let (status, _, d) = invite(&mut conns[k], &nodes[k], &format!("l{i}"));
        assert_eq!(status, 200, "call {i} on instance {k}");
        up.push((k, d));
    }
    let setup_time = started.elapsed();
    let acquired: f64 = nodes.iter().map(acquires).sum();
    let rt_after: f64 = nodes.iter().map(rt).sum();
    let hb_after: f64 = nodes
        .iter()
        .map(|n| {
            metric_sum(
                &n.sbc,
                "sbc_cluster_redis_commands_total",
                &["op=\"refresh\""],
            )
        })
        .sum();
    eprintln!(
        "FIGURE redis round trips per call setup: {:.2} (acquire scripts {acquired} for 50 setups; \
         all commands {} of which {} heartbeats, in {setup_time:?})",
        acquired / 50.0,
        rt_after - rt_before,
        hb_after - hb_before
    );
    assert_eq!(acquired, 50.0, "one acquire round trip per setup");
    for k in 0..3 {
        let (status, resp, _) = invite(&mut conns[k], &nodes[k], &format!("over{k}"));
        assert_eq!(status, 503, "51st call on instance {k}");
        assert!(
            rawcall::header(&resp, "Retry-After").is_some(),
            "503 carries Retry-After: {resp}"
        );
    }
    // Any instance lists every instance's calls.
    let (code, list, _) = api(
        &env,
        &nodes[1],
        &[],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json?PageSize=1000&Status=in-progress"),
    );
    assert_eq!(code, 200, "{list}");
    assert_eq!(list["calls"].as_array().map(Vec::len), Some(50), "{list}");
    // A call ended on instance 1 frees a slot for instance 2.
    let (k, d) = up.remove(1);
    assert_eq!(k, 1);
    conns[1].bye(&d, SECS10);
    wait_until(SECS10, "slot released in Redis", || {
        redis.cli(&["HLEN", "sbc:calls:b"]) == "16"
    });
    let (status, _, d) = invite(&mut conns[2], &nodes[2], "after-bye");
    assert_eq!(status, 200, "a freed slot is taken by another instance");
    up.push((2, d));
    for (k, d) in up {
        conns[k].bye(&d, SECS10);
    }
    wait_until(SECS10, "all slots released", || {
        ["a", "b", "c"]
            .iter()
            .all(|i| redis.cli(&["HLEN", &format!("sbc:calls:{i}")]) == "0")
    });
}

/// An API request to instance A for a call on instance B is forwarded: a fetch answers B's
/// resource, a hang-up makes B send BYE within 500 ms. Prints the added latency of forwarding.
#[test]
fn api_request_for_another_instance_is_forwarded() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let a = node(&env, &redis, "a", "127.0.0.1", &[]);
    let b = node(&env, &redis, "b", "127.0.0.2", &[]);
    let mut conn_b = connect(&env, &b);
    let (status, _, dialog) = invite(&mut conn_b, &b, "fwd");
    assert_eq!(status, 200);
    let sid = call_sid("fwd");
    let path = call_path(&sid);

    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let (code, body, t) = api(&env, &b, &[], &path);
        assert_eq!(code, 200, "{body}");
        direct.push(t);
        let (code, body, t) = api(&env, &a, &[], &path);
        assert_eq!(code, 200, "{body}");
        assert_eq!(body["sid"], sid.as_str());
        assert_eq!(body["status"], "in-progress");
        forwarded.push(t);
    }
    let (d, f) = (median(direct), median(forwarded));
    eprintln!(
        "FIGURE API fetch (curl total, median of 15): direct {:.1} ms, forwarded {:.1} ms, added {:.1} ms",
        d * 1000.0,
        f * 1000.0,
        (f - d) * 1000.0
    );

    // The hang-up, POSTed to A while the carrier answers B's BYE (sbc waits for the call to
    // end before it answers the POST).
    let started = Instant::now();
    let (code, body) = std::thread::scope(|s| {
        let post = s.spawn(|| api(&env, &a, &["-d", "Status=completed"], &path));
        let deadline = Instant::now() + SECS10;
        let mut bye_after = None;
        while let Some(m) = conn_b.recv(deadline.saturating_duration_since(Instant::now())) {
            if m.starts_with("BYE ") {
                bye_after = Some(started.elapsed());
                conn_b.send(&rawcall::response_to(&m, 200, "OK"));
                break;
            }
        }
        let bye_after = bye_after.expect("B sent no BYE");
        eprintln!(
            "FIGURE hang-up POSTed to A, BYE from B after {bye_after:?} (curl start included)"
        );
        assert!(
            bye_after < Duration::from_millis(500),
            "BYE after {bye_after:?}"
        );
        let (code, body, _) = post.join().expect("curl thread");
        (code, body)
    });
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "completed", "{body}");
    let _ = dialog;
    // Ended calls leave the cluster registry: A no longer finds it (Twilio's "already ended").
    wait_until(SECS10, "registry entry removed", || {
        api(&env, &a, &[], &path).0 == 404
    });
}

/// `kill -9` of instance A: its registry entries and slots expire within the TTL, and B's call
/// is untouched.
#[test]
fn killed_instance_slots_expire_within_ttl() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let limit = ["carrier_limits = { test = 3 }"];
    let mut a = node(&env, &redis, "a", "127.0.0.1", &limit);
    let b = node(&env, &redis, "b", "127.0.0.2", &limit);
    let mut conn_a = connect(&env, &a);
    let mut conn_b = connect(&env, &b);
    let (s, _, b_call) = invite(&mut conn_b, &b, "kb1");
    assert_eq!(s, 200);
    for i in 0..2 {
        assert_eq!(invite(&mut conn_a, &a, &format!("ka{i}")).0, 200);
    }
    assert_eq!(
        invite(&mut conn_b, &b, "kb-over").0,
        503,
        "limit of 3 reached"
    );
    assert_eq!(redis.cli(&["HLEN", "sbc:calls:a"]), "2");

    a.sbc.kill();
    let killed = Instant::now();
    let gone = wait_until(
        Duration::from_secs(5),
        "A's registry entries expire",
        || redis.cli(&["EXISTS", "sbc:calls:a"]) == "0",
    );
    eprintln!("FIGURE A's registry entries expired {gone:?} after kill -9 (ttl 1.5 s)");
    // B now gets the slots A held.
    let mut n = 0;
    let admitted = wait_until(
        Duration::from_secs(5),
        "B admits after A's slots expire",
        || {
            n += 1;
            invite(&mut conn_b, &b, &format!("kb-retry{n}")).0 == 200
        },
    );
    let since_kill = killed.elapsed();
    eprintln!("FIGURE B admitted a new call {since_kill:?} after A's kill -9");
    assert!(
        since_kill <= Duration::from_millis(1500 + 1500),
        "{since_kill:?}"
    );
    let _ = admitted;
    // B's first call is untouched: still in progress, no BYE sent to the carrier.
    let (code, body, _) = api(&env, &b, &[], &call_path(&call_sid("kb1")));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "in-progress");
    conn_b.bye(&b_call, SECS10);
}

/// Redis stopped mid-test: calls go on, instances turn degraded (metric, log), new calls are
/// admitted under the local share (50 % of 4 = 2 per instance), requests for another
/// instance's call get 503; when Redis is back the instances re-register their calls and
/// the cluster-wide limit applies again.
#[test]
fn redis_outage_degrades_and_recovers() {
    let env = TestEnv::new();
    let mut redis = RedisServer::start(env.dir());
    let limit = ["carrier_limits = { test = 4 }", "degraded_share = 0.5"];
    let a = node(&env, &redis, "a", "127.0.0.1", &limit);
    let b = node(&env, &redis, "b", "127.0.0.2", &limit);
    let mut conn_a = connect(&env, &a);
    let mut conn_b = connect(&env, &b);
    assert_eq!(invite(&mut conn_a, &a, "ra1").0, 200);
    assert_eq!(invite(&mut conn_b, &b, "rb1").0, 200);

    redis.stop();
    for n in [&a, &b] {
        wait_until(SECS10, "degraded", || {
            metric(&n.sbc, "sbc_cluster_degraded") == Some(1.0)
        });
    }
    assert!(a.sbc.log().contains("degraded"), "degraded state logged");
    // Calls go on; the API still answers for an instance's own calls, 503 for others'.
    let (code, body, _) = api(&env, &b, &[], &call_path(&call_sid("rb1")));
    assert_eq!((code, body["status"].as_str()), (200, Some("in-progress")));
    let (code, body, _) = api(&env, &a, &[], &call_path(&call_sid("rb1")));
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["code"], 20503);
    // Local share: A holds 1, may hold 2.
    assert_eq!(invite(&mut conn_a, &a, "ra2").0, 200);
    assert_eq!(
        invite(&mut conn_a, &a, "ra3").0,
        503,
        "over the local share"
    );

    redis.restart();
    for n in [&a, &b] {
        wait_until(SECS10, "connected again", || {
            metric(&n.sbc, "sbc_cluster_degraded") == Some(0.0)
        });
    }
    assert!(a.sbc.log().contains("calls and slots registered"));
    assert_eq!(redis.cli(&["HLEN", "sbc:calls:a"]), "2", "A re-registered");
    assert_eq!(redis.cli(&["HLEN", "sbc:calls:b"]), "1", "B re-registered");
    // The cluster-wide limit again: 3 up, one more fits.
    assert_eq!(invite(&mut conn_b, &b, "rb2").0, 200);
    assert_eq!(invite(&mut conn_b, &b, "rb3").0, 503, "cluster limit of 4");
    assert_eq!(invite(&mut conn_a, &a, "ra4").0, 503, "cluster limit of 4");
    // Forwarding works again.
    let (code, body, _) = api(&env, &a, &[], &call_path(&call_sid("rb1")));
    assert_eq!(code, 200, "{body}");
}

/// SIGTERM: `/readyz` turns 503 while `/healthz` stays 200, and a new INVITE gets 503 with
/// Retry-After (so that the carrier's next origination URI takes it); the call in progress
/// goes on until its BYE, then sbc exits.
#[test]
fn drain_refuses_new_invites_and_fails_readiness() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let mut a = node(
        &env,
        &redis,
        "a",
        "127.0.0.1",
        &["readyz_requires_redis = true"],
    );
    let port = a.sbc.metrics_port;
    assert_eq!(http_get(port, "/readyz").0, 200);
    assert_eq!(http_get(port, "/healthz").0, 200);
    assert!(http_get(port, "/metrics")
        .1
        .contains("sbc_cluster_degraded 0"));
    let mut conn = connect(&env, &a);
    let (s, _, call) = invite(&mut conn, &a, "d1");
    assert_eq!(s, 200);

    a.sbc.signal_term();
    wait_until(SECS10, "/readyz 503 while draining", || {
        http_get(port, "/readyz").0 == 503
    });
    assert_eq!(http_get(port, "/healthz").0, 200);
    let (s, resp, _) = invite(&mut conn, &a, "d2");
    assert_eq!(s, 503, "{resp}");
    assert!(rawcall::header(&resp, "Retry-After").is_some(), "{resp}");
    conn.bye(&call, SECS10);
    assert!(a.sbc.wait_exit(SECS10).is_some(), "sbc exits once drained");
}

/// `/readyz` follows Redis when `readyz_requires_redis` is set.
#[test]
fn readiness_follows_redis_when_asked() {
    let env = TestEnv::new();
    let mut redis = RedisServer::start(env.dir());
    let a = node(
        &env,
        &redis,
        "a",
        "127.0.0.1",
        &["readyz_requires_redis = true"],
    );
    let port = a.sbc.metrics_port;
    assert_eq!(http_get(port, "/readyz").0, 200);
    redis.stop();
    wait_until(SECS10, "/readyz 503 without Redis", || {
        http_get(port, "/readyz").0 == 503
    });
    assert_eq!(http_get(port, "/healthz").0, 200);
    redis.restart();
    wait_until(SECS10, "/readyz 200 with Redis back", || {
        http_get(port, "/readyz").0 == 200
    });
}

/// `rediss://` with Redis AUTH: the client verifies Redis' certificate against `redis_ca` and
/// authenticates with the password file; the call registry then works as over plain TCP.
#[test]
fn redis_over_tls_with_auth() {
    use std::os::unix::fs::PermissionsExt;
    let env = TestEnv::new();
    let tls_port = interop_tests::redis::free_port();
    let password = "redis-secret-0123456789";
    let redis = RedisServer::start_with(
        env.dir(),
        [
            "--tls-port",
            &tls_port.to_string(),
            "--tls-cert-file",
            &env.pki.cluster.cert_pem_path.display().to_string(),
            "--tls-key-file",
            &env.pki.cluster.key_pem_path.display().to_string(),
            "--tls-ca-cert-file",
            &env.pki.ca_pem_path.display().to_string(),
            "--tls-auth-clients",
            "no",
            "--requirepass",
            password,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
    );
    let pw_file = env.dir().join("redis-password");
    std::fs::write(&pw_file, password).unwrap();
    std::fs::set_permissions(&pw_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let a = node_at(
        &env,
        &format!("rediss://127.0.0.1:{tls_port}"),
        "a",
        "127.0.0.1",
        &[
            &format!("redis_ca = {:?}", env.pki.ca_pem_path.display().to_string()),
            &format!("redis_password_file = {:?}", pw_file.display().to_string()),
        ],
    );
    let mut conn = connect(&env, &a);
    let (s, _, call) = invite(&mut conn, &a, "tls1");
    assert_eq!(s, 200);
    assert_eq!(
        redis.cli(&["--no-auth-warning", "-a", password, "HLEN", "sbc:calls:a"]),
        "1"
    );
    assert!(
        !a.sbc.log().contains(password),
        "the password is never logged"
    );
    conn.bye(&call, SECS10);
}
