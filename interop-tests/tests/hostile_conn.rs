//! A carrier connection whose peer stops reading (issue 12, point 2), against the real binary.
//!
//! `CONNS` TLS connections pipeline ~15 KB OPTIONS (each answered by a ~15 KB 200 OK, the Via
//! headers copied back) and never read. sbc must hold a bounded amount of memory for them
//! (`write_queue_bytes` per connection, plus the kernel's socket buffers, which are not RSS),
//! close each one within `write_timeout_secs` of its writes getting stuck, release the socket
//! (the open-file count returns to its baseline while the peers still hold their ends), count
//! it in `sbc_connections_closed_total{reason="write_stuck"}`, and keep serving others.

use std::io::Write;
use std::sync::Arc;
use std::time::{Duration, Instant};

use interop_tests::{tlsclient, SbcOptions, SbcProcess, TestEnv};

/// Connections that never read.
const CONNS: usize = 24;
/// `[limits] write_timeout_secs` in the test's config.
const WRITE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a never-reading connection may live. sbc closes it `write_timeout_secs` (3 s here)
/// after its writes stop making progress; before that the client has to fill both socket
/// buffers by pipelining, which on a quiet 2-core machine takes 5-9 s and under heavy load (seen:
/// two test suites and compilers at once) up to ~20 s. Before the fix none was ever closed.
const CLOSE_WITHIN: Duration = Duration::from_secs(45);
/// sbc's RSS may grow by at most this over its baseline while the connections are stuck:
/// `CONNS` × (256 KiB queue + 16 KiB framer + TLS buffers) is about 10 MB; the rest is
/// allocator slack. Before the fix the queue held 1,024 messages (~15 MB) per connection.
const RSS_GROWTH_BOUND_KB: u64 = 64 * 1024;

fn status_kb(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// An OPTIONS of about 15 KB whose 200 OK is about as large (sbc copies the Via headers back).
fn big_options(port: u16, local_port: u16, conn: usize, seq: u64) -> Vec<u8> {
    let pad = "x".repeat(1400);
    let mut m = format!("OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\n");
    for i in 0..10 {
        m.push_str(&format!(
            "Via: SIP/2.0/TLS 127.0.0.1:{local_port};branch=z9hG4bKh{conn}s{seq}v{i};pad={pad}\r\n"
        ));
    }
    m.push_str(&format!(
        "Max-Forwards: 70\r\nFrom: <sip:hostile@127.0.0.1>;tag=h{conn}\r\nTo: <sip:sbc@127.0.0.1>\r\n\
         Call-ID: hostile-{conn}-{seq}\r\nCSeq: {seq} OPTIONS\r\nContent-Length: 0\r\n\r\n"
    ));
    m.into_bytes()
}

/// What one never-reading connection saw.
struct Outcome {
    /// From the first write until a write failed (sbc reset the connection); `None` when it
    /// was still open after `CLOSE_WITHIN`.
    lifetime: Option<Duration>,
    bytes_sent: usize,
    /// Kept open (not dropped) until the main thread has counted sbc's file descriptors.
    _conn: tlsclient::TlsConn,
}

fn pipeline_without_reading(env: &TestEnv, port: u16, conn_no: usize) -> Outcome {
    let mut tls = tlsclient::connect(&env.pki, port, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("connection {conn_no}: {e}"));
    tls.sock
        .set_write_timeout(Some(Duration::from_millis(200)))
        .expect("write timeout");
    let local_port = tls.sock.local_addr().expect("local addr").port();
    let start = Instant::now();
    let mut sent = 0usize;
    let mut seq = 1u64;
    let mut msg = big_options(port, local_port, conn_no, seq);
    let mut off = 0usize;
    while start.elapsed() < CLOSE_WITHIN {
        // Partial writes resume where they stopped: a retried `write_all` would repeat bytes
        // rustls had already taken and break the framing.
        match tls.write(&msg[off..]) {
            Ok(0) => break,
            Ok(n) => {
                off += n;
                sent += n;
                if off == msg.len() {
                    seq += 1;
                    msg = big_options(port, local_port, conn_no, seq);
                    off = 0;
                }
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => {
                return Outcome {
                    lifetime: Some(start.elapsed()),
                    bytes_sent: sent,
                    _conn: tls,
                }
            }
        }
    }
    Outcome {
        lifetime: None,
        bytes_sent: sent,
        _conn: tls,
    }
}

fn closed_write_stuck(sbc: &SbcProcess) -> f64 {
    sbc.metrics()
        .lines()
        .find(|l| {
            l.starts_with("sbc_connections_closed_total") && l.contains("reason=\"write_stuck\"")
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0.0)
}

fn small_options(port: u16, tag: &str) -> Vec<u8> {
    format!(
        "OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/TLS 127.0.0.1:5999;branch=z9hG4bK{tag}\r\n\
         Max-Forwards: 70\r\nFrom: <sip:probe@127.0.0.1>;tag={tag}\r\nTo: <sip:sbc@127.0.0.1>\r\n\
         Call-ID: probe-{tag}\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n"
    )
    .into_bytes()
}

#[test]
fn peers_that_stop_reading_cost_bounded_memory_and_lose_their_connections() {
    let env = Arc::new(TestEnv::new());
    let mut opts = SbcOptions::builtin_echo();
    opts.log_level = "info".into();
    opts.extra_limits = vec![format!("write_timeout_secs = {}", WRITE_TIMEOUT.as_secs())];
    let sbc = env.start_sbc(opts);
    let pid = sbc.pid().expect("pid");
    let port = sbc.sip_port;

    // Baseline after one ordinary exchange, which also checks that the big OPTIONS is answered
    // in full (so that a never-reading peer really makes sbc queue ~15 KB per request).
    let resp = tlsclient::sip_exchange(
        &env.pki,
        port,
        &big_options(port, 5999, 999, 1),
        Duration::from_secs(10),
    )
    .expect("a big OPTIONS on a reading connection");
    assert_eq!(tlsclient::status_code(&resp), Some(200), "{resp:.300}");
    assert!(resp.len() > 14_000, "200 OK of {} bytes only", resp.len());
    std::thread::sleep(Duration::from_millis(500));
    let fds_before = open_fds(pid);
    let rss_before = status_kb(pid, "VmRSS:");

    let threads: Vec<_> = (0..CONNS)
        .map(|i| {
            let env = Arc::clone(&env);
            std::thread::spawn(move || pipeline_without_reading(&env, port, i))
        })
        .collect();
    let mut rss_peak = rss_before;
    while !threads.iter().all(|t| t.is_finished()) {
        rss_peak = rss_peak.max(status_kb(pid, "VmRSS:"));
        std::thread::sleep(Duration::from_millis(100));
    }
    let outcomes: Vec<Outcome> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    // The clients still hold their sockets: whatever sbc still has open is its own doing.
    let fds_deadline = Instant::now() + Duration::from_secs(5);
    let mut fds_after = open_fds(pid);
    while fds_after > fds_before && Instant::now() < fds_deadline {
        std::thread::sleep(Duration::from_millis(100));
        fds_after = open_fds(pid);
    }
    let hwm = status_kb(pid, "VmHWM:");
    let lifetimes: Vec<Option<Duration>> = outcomes.iter().map(|o| o.lifetime).collect();
    let sent_mb = outcomes.iter().map(|o| o.bytes_sent).sum::<usize>() as f64 / 1e6;
    let open = lifetimes.iter().filter(|l| l.is_none()).count();
    let longest = lifetimes.iter().flatten().max().copied();
    eprintln!(
        "hostile_conn: {CONNS} connections, {sent_mb:.1} MB sent; RSS {rss_before} kB before, \
         peak {rss_peak} kB (VmHWM {hwm} kB); open fds {fds_before} before, {fds_after} after; \
         {open} still open after {CLOSE_WITHIN:?}; longest lifetime {longest:?}; \
         write_stuck closes {}",
        closed_write_stuck(&sbc)
    );

    // A fresh connection is still served.
    let resp = tlsclient::sip_exchange(
        &env.pki,
        port,
        &small_options(port, "after"),
        Duration::from_secs(10),
    )
    .expect("OPTIONS on a fresh connection after the stuck ones");
    assert_eq!(tlsclient::status_code(&resp), Some(200), "{resp}");

    assert!(
        rss_peak.saturating_sub(rss_before) < RSS_GROWTH_BOUND_KB,
        "sbc's RSS grew from {rss_before} kB to {rss_peak} kB (bound: +{RSS_GROWTH_BOUND_KB} kB)"
    );
    assert_eq!(
        open, 0,
        "{open} of {CONNS} never-reading connections were still open after {CLOSE_WITHIN:?}: {lifetimes:?}"
    );
    assert!(
        fds_after <= fds_before,
        "sbc holds {fds_after} open files, {fds_before} before the stuck connections"
    );
    assert!(
        closed_write_stuck(&sbc) >= CONNS as f64,
        "sbc_connections_closed_total{{reason=\"write_stuck\"}} = {}",
        closed_write_stuck(&sbc)
    );
    assert!(
        sbc.log()
            .lines()
            .any(|l| l.contains("\"level\":\"WARN\"") && l.contains("write")),
        "no warning about a stuck writer in sbc's log"
    );
    assert!(
        !sbc.log().contains("panicked"),
        "sbc panicked:\n{}",
        interop_tests::tail(&sbc.log(), 40)
    );
    drop(outcomes);
}

/// Issue 12, point 6: the carrier's connection drops, the agent hangs up, and the carrier's
/// Contact names an address outside its `source_cidrs` (127.0.0.2, the carrier being
/// 127.0.0.1/32): sbc must not connect there for its BYE, must log why, and the call still ends.
#[test]
fn bye_is_not_sent_to_a_contact_outside_the_carrier_sources() {
    use interop_tests::rawcall::{self, Dialog, Media, SipConn};
    use interop_tests::AgentBehaviour;
    let env = TestEnv::new();
    let agent = env.start_agent(AgentBehaviour::Echo);
    // Where a BYE would go: counts TCP accepts.
    let outside = std::net::TcpListener::bind("127.0.0.2:0").expect("bind 127.0.0.2");
    outside.set_nonblocking(true).expect("nonblocking");
    let outside_port = outside.local_addr().expect("addr").port();
    let mut opts = SbcOptions::agent(agent.url());
    opts.source_cidrs = vec!["127.0.0.1/32".into()];
    opts.carrier_ca = true;
    opts.rtp_timeout_secs = 30;
    let sbc = env.start_sbc(opts);
    let secs20 = Duration::from_secs(20);
    let mut conn = SipConn::connect(&env.pki, sbc.sip_port);
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(sbc.sip_port, outside_port, "outside");
    dialog.contact = format!("<sip:carrier@127.0.0.2:{outside_port};transport=tls>");
    let (sock, rtp_port) = Media::bind();
    let key = rawcall::test_key(7);
    conn.send(&dialog.invite(via_port, rtp_port, &key));
    let ok = conn.expect_response(200, "1 INVITE", secs20);
    dialog.to_tag = rawcall::header(&ok, "To")
        .and_then(rawcall::tag)
        .expect("To tag")
        .to_string();
    conn.send(&dialog.ack(via_port));
    let media = Media::start(sock, key, rawcall::parse_answer(rawcall::body(&ok)));
    sbc.wait_event("call.start", &dialog.call_id, secs20);
    conn.drop_abruptly();
    agent.wait_for("agent connection", Duration::from_secs(10), |c| {
        !c.is_empty()
    });
    // Give sbc time to see the drop before the agent hangs up.
    std::thread::sleep(Duration::from_secs(1));
    agent.close(0);
    let end = sbc.wait_event("call.end", &dialog.call_id, secs20);
    assert_eq!(end["end_reason"], "agent_hangup", "call.end: {end}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sbc.log().contains("outside the carrier's source_cidrs") && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        sbc.log().contains("outside the carrier's source_cidrs"),
        "sbc must log why the BYE was not sent:\n{}",
        interop_tests::tail(&sbc.log(), 30)
    );
    assert!(
        outside.accept().is_err(),
        "sbc connected to an address outside the carrier's source_cidrs"
    );
    drop(media);
}
