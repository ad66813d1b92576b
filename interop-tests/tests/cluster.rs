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
use std::time::{Duration, Instant};

use interop_tests::origination::{self, Origination, OriginationUri, Outcome};
use interop_tests::rawcall::{self, Dialog, Media, SipConn};
use interop_tests::redis::RedisServer;
use interop_tests::trunk::{TestTrunk, TrunkBehaviour};
use interop_tests::{AgentBehaviour, Ports, SbcOptions, SbcProcess, TestAgent, TestEnv};
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
    node_with(env, url, id, ip, cluster_extra, |_| {})
}

/// [`node_at`] with the options changed by `tweak` (agent URL, trunks) before sbc starts.
fn node_with(
    env: &TestEnv,
    url: &str,
    id: &str,
    ip: &str,
    cluster_extra: &[&str],
    tweak: impl FnOnce(&mut SbcOptions),
) -> Node {
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
    tweak(&mut o);
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
    let r = interop_tests::apiclient::curl(
        &env.pki.ca_pem_path,
        (&n.ip, n.api_port),
        (ACCOUNT, TOKEN),
        args,
        path,
    );
    (r.code, r.body, r.secs)
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
    // Active calls by instance and carrier (17, 17 and 16 here).
    for (k, n) in nodes.iter().enumerate() {
        let want = up.iter().filter(|(i, _)| *i == k).count() as f64;
        assert_eq!(
            metric_sum(&n.sbc, "sbc_calls_active_by_carrier", &["carrier=\"test\""]),
            want,
            "instance {k}"
        );
    }
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
    // B's call carries media (the builtin echo agent): it must flow on through A's death.
    let (s, b_call) = attempt(&env, &b, "kb1", 11);
    assert_eq!(s, Outcome::Answered);
    let (mut b_conn, b_dialog, b_media) = b_call.unwrap();
    assert!(b_media.wait_received(10, SECS10), "B's call has audio");
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
    // B's first call is untouched: still in progress, its audio still echoed, no BYE sent to
    // the carrier.
    let (code, body, _) = api(&env, &b, &[], &call_path(&call_sid("kb1")));
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "in-progress");
    let before = b_media.received();
    assert!(
        b_media.wait_received(before + 25, SECS10),
        "B's call lost its audio after A's kill -9"
    );
    assert!(
        b_conn.recv(Duration::from_millis(300)).is_none(),
        "sbc B sent something on its call"
    );
    b_conn.bye(&b_dialog, SECS10);
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
    // A's first call carries media (the builtin echo agent): it must flow on through the outage.
    let (s, ra1) = attempt(&env, &a, "ra1", 13);
    assert_eq!(s, Outcome::Answered);
    let (_ra1_conn, _ra1_dialog, ra1_media) = ra1.unwrap();
    assert!(ra1_media.wait_received(10, SECS10), "A's call has audio");
    assert_eq!(invite(&mut conn_b, &b, "rb1").0, 200);

    redis.stop();
    for n in [&a, &b] {
        wait_until(SECS10, "degraded", || {
            metric(&n.sbc, "sbc_cluster_degraded") == Some(1.0)
        });
    }
    assert!(a.sbc.log().contains("degraded"), "degraded state logged");
    let before = ra1_media.received();
    assert!(
        ra1_media.wait_received(before + 25, SECS10),
        "A's call lost its audio while Redis was away"
    );
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

const TRUNK_USER: &str = "sbc-trunk-user";
const TRUNK_PASSWORD: &str = "trunk-secret-42";
const FROM: &str = "+14155550100";
const TO: &str = "+15105550123";

/// An instance on Redis `redis` whose route leads to the test agent, with one `[[trunks]]` entry
/// (`test-trunk`, at the test trunk, `trunk_extra` lines added) for outbound calls.
fn trunk_node(
    env: &TestEnv,
    (redis, agent, trunk): (&RedisServer, &TestAgent, &TestTrunk),
    id: &str,
    ip: &str,
    cluster_extra: &[&str],
    trunk_extra: &[&str],
) -> Node {
    use std::os::unix::fs::PermissionsExt;
    let pw = env.dir().join(format!("trunk-{id}.password"));
    std::fs::write(&pw, format!("{TRUNK_PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    node_with(env, &redis.url(), id, ip, cluster_extra, |o| {
        o.agent_url = agent.url();
        o.carrier_ca = true;
        o.extra_toml.push(format!(
            "[[trunks]]\nname = \"test-trunk\"\nuri = \"sip:127.0.0.1:{port};transport=tls\"\n\
             username = {TRUNK_USER:?}\npassword_file = {pw:?}\naccount_sids = [{ACCOUNT:?}]\n\
             caller_ids = [{FROM:?}]\nallow_destinations = [\"+1\"]\n{extra}\n",
            port = trunk.port,
            pw = pw.display().to_string(),
            extra = trunk_extra.join("\n"),
        ));
    })
}

/// `POST Calls.json` to `n`: (status, JSON).
fn create_call(env: &TestEnv, agent: &TestAgent, n: &Node) -> (u16, Value) {
    let twiml = format!(
        "Twiml=<Response><Connect><Stream url=\"{}\"/></Connect></Response>",
        agent.url()
    );
    let (to, from) = (format!("To={TO}"), format!("From={FROM}"));
    let (code, v, _) = api(
        env,
        n,
        &[
            "--data-urlencode",
            &to,
            "--data-urlencode",
            &from,
            "--data-urlencode",
            &twiml,
        ],
        &format!("/2010-04-01/Accounts/{ACCOUNT}/Calls.json"),
    );
    (code, v)
}

/// Polls call `sid` on `n` until its status is `want`; the last resource seen.
fn wait_call_status(env: &TestEnv, n: &Node, sid: &str, want: &str) -> Value {
    let deadline = Instant::now() + SECS10;
    loop {
        let (_, v, _) = api(env, n, &[], &call_path(sid));
        if v["status"] == want || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A trunk's `max_calls_per_second = 1` holds for the cluster: two instances asked at the same
/// moment send their INVITEs at least 1 s apart (one Redis round trip each books the turn).
/// While Redis is away each instance paces alone at `degraded_share` of the rate.
#[test]
fn outbound_cps_is_cluster_wide() {
    let env = TestEnv::new();
    let mut redis = RedisServer::start(env.dir());
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(
        &env.pki.agent,
        TrunkBehaviour::Busy,
        TRUNK_USER,
        TRUNK_PASSWORD,
    );
    let extra = ["max_calls_per_second = 1"];
    let share = ["degraded_share = 0.5"];
    let a = trunk_node(
        &env,
        (&redis, &agent, &trunk),
        "a",
        "127.0.0.1",
        &share,
        &extra,
    );
    let b = trunk_node(
        &env,
        (&redis, &agent, &trunk),
        "b",
        "127.0.0.2",
        &share,
        &extra,
    );
    let (ra, rb) = std::thread::scope(|s| {
        let ta = s.spawn(|| create_call(&env, &agent, &a));
        let tb = s.spawn(|| create_call(&env, &agent, &b));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    assert_eq!((ra.0, rb.0), (201, 201), "{} {}", ra.1, rb.1);
    assert!(
        trunk.wait(SECS10, |l| l.first_invites().len() >= 2),
        "{:?}\n{}\n{}",
        trunk.log().methods(),
        a.sbc.log(),
        b.sbc.log()
    );
    let t = trunk.log().first_invites();
    let gap = t[1].duration_since(t[0]);
    eprintln!("FIGURE cluster-wide cps = 1: INVITEs from two instances {gap:?} apart");
    assert!(gap >= Duration::from_secs(1), "INVITEs {gap:?} apart");
    for n in [&a, &b] {
        assert_eq!(
            metric_sum(
                &n.sbc,
                "sbc_cluster_redis_commands_total",
                &["op=\"cps\"", "result=\"ok\""]
            ),
            1.0,
            "one Redis round trip books an INVITE's turn"
        );
    }
    // Both calls ended (busy) and left the registry.
    wait_until(SECS10, "outbound calls left the registry", || {
        redis.cli(&["HLEN", "sbc:calls:a"]) == "0" && redis.cli(&["HLEN", "sbc:calls:b"]) == "0"
    });
    let ops = |op: &str| -> f64 {
        [&a, &b]
            .iter()
            .map(|n| {
                metric_sum(
                    &n.sbc,
                    "sbc_cluster_redis_commands_total",
                    &[&format!("op=\"{op}\"")],
                )
            })
            .sum()
    };
    let (acquire, cps, release) = (ops("acquire"), ops("cps"), ops("release"));
    eprintln!(
        "FIGURE redis round trips per outbound call: setup {:.1} (acquire {acquire}, cps {cps} \
         for 2 calls), end {:.1} (release {release})",
        (acquire + cps) / 2.0,
        release / 2.0
    );
    assert_eq!((acquire, cps, release), (2.0, 2.0, 2.0));

    // Degraded: A alone, at half the rate (one INVITE per 2 s).
    redis.stop();
    wait_until(SECS10, "A degraded", || {
        metric(&a.sbc, "sbc_cluster_degraded") == Some(1.0)
    });
    let (c1, v1) = create_call(&env, &agent, &a);
    let (c2, v2) = create_call(&env, &agent, &a);
    assert_eq!((c1, c2), (201, 201), "{v1} {v2}");
    assert!(
        trunk.wait(SECS10, |l| l.first_invites().len() >= 4),
        "{:?}\n{}",
        trunk.log().methods(),
        a.sbc.log()
    );
    let t = trunk.log().first_invites();
    let gap = t[3].duration_since(t[2]);
    eprintln!("FIGURE degraded (share 0.5 of cps = 1): INVITEs from one instance {gap:?} apart");
    assert!(gap >= Duration::from_millis(1950), "INVITEs {gap:?} apart");
}

/// An outbound call is registered to the instance that placed it: any instance's API fetches
/// and cancels it (forwarded), its registration goes when it ends, and `account_limits`
/// counts it: with a limit of 1 for the account, a second outbound call on another instance
/// fails while the first is up, and goes through once it ended.
#[test]
fn outbound_calls_are_in_the_registry_and_count_for_the_account() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(
        &env.pki.agent,
        TrunkBehaviour::Ring,
        TRUNK_USER,
        TRUNK_PASSWORD,
    );
    let limit = format!("account_limits = {{ {ACCOUNT} = 1 }}");
    let a = trunk_node(
        &env,
        (&redis, &agent, &trunk),
        "a",
        "127.0.0.1",
        &[&limit],
        &[],
    );
    let b = trunk_node(
        &env,
        (&redis, &agent, &trunk),
        "b",
        "127.0.0.2",
        &[&limit],
        &[],
    );
    let (code, v) = create_call(&env, &agent, &a);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    wait_until(SECS10, "A's outbound call registered", || {
        redis.cli(&["HEXISTS", "sbc:calls:a", &sid]) == "1"
    });
    // B answers for A's call (forwarded).
    let v = wait_call_status(&env, &b, &sid, "ringing");
    assert_eq!(v["status"], "ringing", "{v}\n{}", a.sbc.log());
    assert_eq!(v["direction"], "outbound-api", "{v}");
    let (mut direct, mut forwarded) = (Vec::new(), Vec::new());
    for _ in 0..15 {
        let (code, body, t) = api(&env, &a, &[], &call_path(&sid));
        assert_eq!(code, 200, "{body}");
        direct.push(t);
        let (code, body, t) = api(&env, &b, &[], &call_path(&sid));
        assert_eq!(code, 200, "{body}");
        forwarded.push(t);
    }
    let (d, f) = (median(direct), median(forwarded));
    eprintln!(
        "FIGURE API fetch of an outbound call (curl total, median of 15): direct {:.1} ms, \
         forwarded {:.1} ms, added {:.1} ms",
        d * 1000.0,
        f * 1000.0,
        (f - d) * 1000.0
    );

    // The account's one cluster slot is taken: B's call fails before any INVITE.
    let (code, v) = create_call(&env, &agent, &b);
    assert_eq!(code, 201, "{v}");
    let sid2 = v["sid"].as_str().unwrap().to_string();
    let v = wait_call_status(&env, &b, &sid2, "failed");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        b.sbc.log().contains("cluster account limit"),
        "{}",
        b.sbc.log()
    );
    assert_eq!(trunk.log().first_invites().len(), 1);

    // Canceled through B: A sends CANCEL, the call ends, its registration goes.
    let (code, v, _) = api(&env, &b, &["-d", "Status=canceled"], &call_path(&sid));
    assert_eq!(code, 200, "{v}");
    let v = wait_call_status(&env, &a, &sid, "canceled");
    assert_eq!(v["status"], "canceled", "{v}");
    assert!(trunk.wait(SECS10, |l| l.methods().iter().any(|m| m == "CANCEL")));
    wait_until(SECS10, "registration released", || {
        redis.cli(&["HLEN", "sbc:calls:a"]) == "0"
    });
    assert_eq!(api(&env, &b, &[], &call_path(&sid)).0, 404);

    // The slot is free again: B's next call rings.
    let (code, v) = create_call(&env, &agent, &b);
    assert_eq!(code, 201, "{v}");
    let sid3 = v["sid"].as_str().unwrap().to_string();
    let v = wait_call_status(&env, &a, &sid3, "ringing");
    assert_eq!(v["status"], "ringing", "{v}\n{}", b.sbc.log());
    let (code, _, _) = api(&env, &a, &["-d", "Status=canceled"], &call_path(&sid3));
    assert_eq!(code, 200);
}

/// `[[trunks]] max_concurrent_calls` holds across the cluster: with 1, a call ringing through A
/// leaves none for B (it fails before any INVITE, the log says which limit), and B's next call
/// goes out once A's has ended.
#[test]
fn trunk_concurrency_is_cluster_wide() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let agent = env.start_agent(AgentBehaviour::Echo);
    let trunk = TestTrunk::start(
        &env.pki.agent,
        TrunkBehaviour::Ring,
        TRUNK_USER,
        TRUNK_PASSWORD,
    );
    let one = ["max_concurrent_calls = 1"];
    let a = trunk_node(&env, (&redis, &agent, &trunk), "a", "127.0.0.1", &[], &one);
    let b = trunk_node(&env, (&redis, &agent, &trunk), "b", "127.0.0.2", &[], &one);
    let (code, v) = create_call(&env, &agent, &a);
    assert_eq!(code, 201, "{v}");
    let sid = v["sid"].as_str().unwrap().to_string();
    let v = wait_call_status(&env, &a, &sid, "ringing");
    assert_eq!(v["status"], "ringing", "{v}\n{}", a.sbc.log());
    assert_eq!(
        redis.cli(&["HGET", "sbc:count:a", "c:trunk:test-trunk"]),
        "1"
    );

    // B alone is under its own limit of 1, but the trunk's one call is A's.
    let (code, v) = create_call(&env, &agent, &b);
    assert_eq!(code, 201, "{v}");
    let sid2 = v["sid"].as_str().unwrap().to_string();
    let v = wait_call_status(&env, &b, &sid2, "failed");
    assert_eq!(v["status"], "failed", "{v}");
    assert!(
        b.sbc.log().contains("cluster trunk limit reached"),
        "{}",
        b.sbc.log()
    );
    assert_eq!(trunk.log().first_invites().len(), 1);

    // A's call ends; the slot is free for B.
    let (code, v, _) = api(&env, &a, &["-d", "Status=canceled"], &call_path(&sid));
    assert_eq!(code, 200, "{v}");
    wait_until(SECS10, "trunk slot released", || {
        redis
            .cli(&["HGET", "sbc:count:a", "c:trunk:test-trunk"])
            .is_empty()
    });
    let (code, v) = create_call(&env, &agent, &b);
    assert_eq!(code, 201, "{v}");
    let sid3 = v["sid"].as_str().unwrap().to_string();
    let v = wait_call_status(&env, &b, &sid3, "ringing");
    assert_eq!(v["status"], "ringing", "{v}\n{}", b.sbc.log());
    assert_eq!(trunk.log().first_invites().len(), 2);
    let (code, _, _) = api(&env, &b, &["-d", "Status=canceled"], &call_path(&sid3));
    assert_eq!(code, 200);
}

/// A call the origination simulator placed and an instance answered: its connection, dialog
/// and running media (PCMU under our key to sbc; sbc's packets decrypted and counted).
struct Live {
    node: usize,
    tag: String,
    conn: SipConn,
    dialog: Dialog,
    media: Media,
}

/// One attempt of the simulator on instance `n`, as Twilio makes it: a TLS connection (none
/// possible: `ConnectFailed`), an INVITE with `X-Twilio-CallSid`, the final answer. On 200 the
/// call's media starts.
fn attempt(
    env: &TestEnv,
    n: &Node,
    tag: &str,
    key_seed: u8,
) -> (Outcome, Option<(SipConn, Dialog, Media)>) {
    let dest = SocketAddr::new(n.ip.parse().unwrap(), n.sbc.sip_port);
    if TcpStream::connect_timeout(&dest, Duration::from_secs(2)).is_err() {
        return (Outcome::ConnectFailed, None);
    }
    let mut conn = SipConn::connect_from_to(&env.pki, std::net::Ipv4Addr::LOCALHOST, dest);
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(n.sbc.sip_port, 5999, tag);
    let (sock, rtp_port) = Media::bind();
    let key = rawcall::test_key(key_seed);
    let msg = dialog.invite(via_port, rtp_port, &key).replacen(
        "Max-Forwards: 70\r\n",
        &format!(
            "Max-Forwards: 70\r\nX-Twilio-AccountSid: {ACCOUNT}\r\nX-Twilio-CallSid: {}\r\n",
            call_sid(tag)
        ),
        1,
    );
    conn.send(&msg);
    let (status, m) = conn.finish_invite(&mut dialog, SECS10);
    match status {
        200 => {
            let media = Media::start(sock, key, rawcall::parse_answer(rawcall::body(&m)));
            (Outcome::Answered, Some((conn, dialog, media)))
        }
        503 => (Outcome::ServiceUnavailable, None),
        s => (Outcome::Final(s), None),
    }
}

/// Places call `tag` through the URIs in `order` (the simulator's draw), failing over as
/// Twilio does; the attempts and the live call.
fn originate(
    env: &TestEnv,
    nodes: &[&Node],
    order: &[usize],
    tag: &str,
    key_seed: u8,
) -> (origination::Placed, Option<Live>) {
    let mut live = None;
    let placed = origination::try_in_order(order, |i| {
        let (outcome, call) = attempt(env, nodes[i], tag, key_seed);
        if let Some((conn, dialog, media)) = call {
            live = Some(Live {
                node: i,
                tag: tag.to_string(),
                conn,
                dialog,
                media,
            });
        }
        outcome
    });
    (placed, live)
}

/// Two origination URIs of equal priority and weight 10 each, as a Twilio trunk lists them.
fn two_uris() -> Vec<OriginationUri<usize>> {
    vec![
        OriginationUri {
            target: 0,
            priority: 10,
            weight: 10,
        },
        OriginationUri {
            target: 1,
            priority: 10,
            weight: 10,
        },
    ]
}

/// The agent's connection for call `tag` (by the `start` message's callSid).
fn agent_conn_for(
    conns: &[interop_tests::AgentConn],
    tag: &str,
) -> Option<interop_tests::AgentConn> {
    let sid = call_sid(tag);
    conns
        .iter()
        .find(|c| {
            c.first("start")
                .is_some_and(|v| v["start"]["callSid"].as_str() == Some(sid.as_str()))
        })
        .cloned()
}

/// Audio both ways for a live call: the agent got the carrier's PCMU (payload 0x55 bytes), and
/// the carrier got authenticated SRTP back (the agent's echo, re-encrypted by sbc).
fn check_audio(agent: &TestAgent, call: &Live) {
    assert!(
        call.media.wait_received(10, SECS10),
        "call {}: {} packets from sbc authenticated",
        call.tag,
        call.media.received()
    );
    let conns = agent.connections();
    let c = agent_conn_for(&conns, &call.tag)
        .unwrap_or_else(|| panic!("call {}: no agent connection", call.tag));
    assert!(
        c.media
            .iter()
            .any(|(_, p)| !p.is_empty() && p.iter().all(|b| *b == 0x55)),
        "call {}: the agent got none of the carrier's audio",
        call.tag
    );
}

/// 200 calls from the simulator with weights 10/10 over two instances land about half on each,
/// each with audio checked both ways (20 at a time, each up until 10 echoed packets came back).
#[test]
fn origination_weights_spread_calls_over_instances() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let agent = env.start_agent(AgentBehaviour::Echo);
    let url = redis.url();
    let a = node_with(&env, &url, "a", "127.0.0.1", &[], |o| {
        o.agent_url = agent.url()
    });
    let b = node_with(&env, &url, "b", "127.0.0.2", &[], |o| {
        o.agent_url = agent.url()
    });
    let nodes = [&a, &b];
    let mut sim = Origination::new(two_uris(), 17);
    let (total, batch) = (200usize, 20usize);
    let mut per_node = [0usize; 2];
    let started = Instant::now();
    for round in 0..total / batch {
        let orders: Vec<Vec<usize>> = (0..batch).map(|_| sim.order()).collect();
        let placed: Vec<(origination::Placed, Option<Live>)> = std::thread::scope(|s| {
            let handles: Vec<_> = orders
                .iter()
                .enumerate()
                .map(|(i, order)| {
                    let (env, nodes, agent) = (&env, &nodes, &agent);
                    s.spawn(move || {
                        let n = round * batch + i;
                        let tag = format!("w{n}");
                        let (placed, live) = originate(env, nodes, order, &tag, (n % 250) as u8);
                        if let Some(call) = &live {
                            check_audio(agent, call);
                        }
                        (placed, live)
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (p, live) in placed {
            let mut call = live.unwrap_or_else(|| panic!("call lost: {:?}", p.attempts));
            assert_eq!(p.attempts.len(), 1, "no failover needed: {:?}", p.attempts);
            per_node[call.node] += 1;
            call.conn.bye(&call.dialog, SECS10);
        }
    }
    eprintln!(
        "FIGURE origination 10/10: {} calls on A, {} on B, in {:?}",
        per_node[0],
        per_node[1],
        started.elapsed()
    );
    assert_eq!(per_node[0] + per_node[1], total);
    for (k, n) in per_node.iter().enumerate() {
        assert!((70..=130).contains(n), "instance {k} took {n} of {total}");
    }
    for (k, n) in nodes.iter().enumerate() {
        let ended = n
            .sbc
            .audit()
            .iter()
            .filter(|v| v["event"] == "call.end" && v["end_reason"] == "carrier_bye")
            .count();
        assert_eq!(
            ended, per_node[k],
            "instance {k}: calls ended by the carrier's BYE"
        );
    }
}

/// SIGTERM of instance A while it carries calls: A's calls go on (audio still flowing) and end
/// normally with the carrier's BYE; A's new calls get 503 and the simulator fails over to B,
/// then, once A has exited, the connect failure does; no call is lost.
#[test]
fn sigterm_drains_and_the_simulator_fails_over() {
    let env = TestEnv::new();
    let redis = RedisServer::start(env.dir());
    let agent = env.start_agent(AgentBehaviour::Echo);
    let url = redis.url();
    let mut a = node_with(&env, &url, "a", "127.0.0.1", &[], |o| {
        o.agent_url = agent.url()
    });
    let b = node_with(&env, &url, "b", "127.0.0.2", &[], |o| {
        o.agent_url = agent.url()
    });
    let mut sim = Origination::new(two_uris(), 23);
    let mut live: Vec<Live> = Vec::new();
    let place = |sim: &mut Origination<usize>, tag: String, a: &Node, b: &Node| {
        let order = sim.order();
        let (p, call) = originate(&env, &[a, b], &order, &tag, 9);
        let call = call.unwrap_or_else(|| panic!("call {tag} lost: {:?}", p.attempts));
        check_audio(&agent, &call);
        (p, call)
    };
    for i in 0..8 {
        let (_, call) = place(&mut sim, format!("s{i}"), &a, &b);
        live.push(call);
    }
    let on_a = live.iter().filter(|c| c.node == 0).count();
    assert!((1..8).contains(&on_a), "{on_a} of 8 on A");

    a.sbc.signal_term();
    wait_until(SECS10, "A not ready while draining", || {
        http_get(a.sbc.metrics_port, "/readyz").0 == 503
    });
    // New calls: A answers 503, the simulator fails over to B.
    let mut failed_over = 0;
    for i in 0..8 {
        let (p, call) = place(&mut sim, format!("t{i}"), &a, &b);
        assert_eq!(call.node, 1, "{:?}", p.attempts);
        if p.attempts[0] == (0, Outcome::ServiceUnavailable) {
            failed_over += 1;
        }
        live.push(call);
    }
    assert!(failed_over >= 1, "no new call tried A first");
    // A's calls still carry audio during the drain.
    for c in live.iter().filter(|c| c.node == 0) {
        let before = c.media.received();
        assert!(
            c.media.wait_received(before + 10, SECS10),
            "call {} lost its audio during the drain",
            c.tag
        );
    }
    // The carrier ends A's calls: 200 OK for each BYE, audit records ended normally.
    let (mut on_a_calls, mut rest): (Vec<Live>, Vec<Live>) =
        live.into_iter().partition(|c| c.node == 0);
    for c in &mut on_a_calls {
        c.conn.bye(&c.dialog, SECS10);
        let end = a.sbc.wait_event("call.end", &c.dialog.call_id, SECS10);
        assert_eq!(end["end_reason"], "carrier_bye", "{end}");
    }
    assert!(
        a.sbc.wait_exit(Duration::from_secs(20)).is_some(),
        "A exits once drained"
    );
    // A left the cluster as it exited: its registration is gone at once, not at the end of its
    // TTL (1.5 s, refreshed every 0.3 s), so no instance lists or forwards to it meanwhile.
    assert_eq!(redis.cli(&["EXISTS", "sbc:inst:a"]), "0", "{}", a.sbc.log());
    assert_eq!(redis.cli(&["ZSCORE", "sbc:instances", "a"]), "");
    assert!(!redis.cli(&["ZSCORE", "sbc:instances", "b"]).is_empty());
    // A is gone: the connect failure sends its calls to B.
    let mut connect_failed = 0;
    for i in 0..4 {
        let (p, call) = place(&mut sim, format!("u{i}"), &a, &b);
        assert_eq!(call.node, 1, "{:?}", p.attempts);
        if p.attempts[0] == (0, Outcome::ConnectFailed) {
            connect_failed += 1;
        }
        rest.push(call);
    }
    eprintln!(
        "FIGURE SIGTERM: {} calls on A drained, {failed_over} new calls failed over on 503, \
         {connect_failed} on connect failure, 0 lost",
        on_a_calls.len()
    );
    assert!(connect_failed >= 1, "no call tried A after it exited");
    for c in &mut rest {
        assert_eq!(c.node, 1);
        c.conn.bye(&c.dialog, SECS10);
    }
}
