//! `loadgen`: a carrier trunk and a voice agent in one process, to load a release sbc on loopback.
//!
//! ```text
//! loadgen calls [--n 100,250,500,1000,2000] [--window 10] [--rate 200] [--out FILE.jsonl]
//! loadgen setup [--transport l1|ln] [--rates 50,100,200,...] [--secs 3]
//! loadgen floor [--iters 20000] [--peers inline|asleep] [--relay-cpu C --peer-cpu C]
//! ```
//!
//! `calls`: for each N (a fresh sbc each time, stopping at the first N that loses a packet or a
//! call) N calls are set up over one TLS connection (INVITE with an SDES `AES_CM_128_HMAC_SHA1_80`
//! offer, 200, ACK); each sends SRTP PCMU at 50 packets/s from a 20-slot timer wheel (one task
//! for all calls), and the agent (a TLS 1.3 WebSocket server speaking Twilio Media Streams)
//! answers every `media` frame at once with 20 ms of its own. Each payload carries a probe
//! (`sbc_benches::load::probe`), so the run measures latency and loss each way. sbc's CPU is
//! `/proc/<pid>/stat` over the steady window, its RSS `/proc/<pid>/status` at its peak in the window minus the value after one warm-up call
//! (set up, 0.5 s of media, ended), divided by N; the anonymous part (`RssAnon`, the heap and
//! stacks, without the binary's pages) likewise.
//!
//! `setup`: full calls (INVITE, 200, ACK, BYE, 200) at increasing rates, over one shared
//! connection (`l1`) or one new TLS connection per call (`ln`); stops at the first rate with a
//! failed call.
//!
//! `floor`: the unavoidable work of one call-second, timed back to back in one thread: 50 x (UDP
//! recv + SRTP unprotect + TLS record write) and 50 x (TLS record read + SRTP protect + UDP send).
//! With `--peers asleep` the same work runs as a relay thread between a carrier thread and an
//! agent thread, one packet in flight: every packet wakes the thread it is sent to and the relay
//! sleeps in `poll(2)` between packets, as sbc and its peers do on loopback at low load. The
//! relay thread's CPU time (`CLOCK_THREAD_CPUTIME_ID`) is what it reports. `--relay-cpu` and
//! `--peer-cpu` pin the relay thread and the two peer threads, as `calls` has sbc and loadgen on
//! different cores (a wake-up across cores costs more than one on the same core).
//!
//! Loopback only; every run is bounded in time and call count. `SBC` names the sbc binary
//! (default `target/release/sbc`), `SBC_CPU` the cores it is pinned to with taskset (default 0;
//! e.g. `0,1`), `SBC_WORKERS` its `[limits] worker_threads` (default: one per core it may use);
//! pin loadgen itself with `taskset -c 1`. The agent runs on its own runtime,
//! `LOADGEN_AGENT_THREADS` worker threads (default 1), beside the carrier side's thread.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use rand::RngCore;
use sbc_benches::load::hist::Histogram;
use sbc_benches::load::probe::{Probe, FRAME};
use sbc_benches::load::proc;
use sbc_benches::load::sip::{answer_media, take_message, Dialog, Message};
use srtp_bridge::rtp::{is_rtcp, write_rtp};
use srtp_bridge::srtp::{InboundContext, OutboundContext};
use srtp_bridge::{MasterKey, SrtpSuite};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message as WsMessage;

const SIP_ADDR: &str = "127.0.0.1:5071";
const AGENT_ADDR: &str = "127.0.0.1:5081";
const CALLED: &str = "+15550002222";
/// Slots of the send wheel: one per millisecond of the 20 ms packet interval.
const SLOTS: u64 = 20;
/// How long a SIP transaction may take before the call counts as failed.
const SIP_TIMEOUT: Duration = Duration::from_secs(10);
const SUITE: SrtpSuite = SrtpSuite::AesCm128HmacSha1_80;

type Res<T> = Result<T, String>;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// Nanoseconds since the generator's epoch (the clock inside every probe).
fn now_ns() -> u64 {
    EPOCH.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

fn b64() -> &'static base64::engine::GeneralPurpose {
    &base64::engine::general_purpose::STANDARD
}

// ---------------------------------------------------------------------------------------------
// Shared counters

/// Counters and histograms of the current run (reset before each N).
#[derive(Default)]
struct Stats {
    carrier_sent: AtomicU64,
    carrier_send_errors: AtomicU64,
    agent_recv: AtomicU64,
    agent_sent: AtomicU64,
    carrier_recv: AtomicU64,
    carrier_bad: AtomicU64,
    carrier_rtcp: AtomicU64,
    agent_conns: AtomicU64,
    measuring: AtomicBool,
    sending: AtomicBool,
    c2a: Mutex<Histogram>,
    a2c: Mutex<Histogram>,
    rtt: Mutex<Histogram>,
}

impl Stats {
    fn reset(&self) {
        for c in [
            &self.carrier_sent,
            &self.carrier_send_errors,
            &self.agent_recv,
            &self.agent_sent,
            &self.carrier_recv,
            &self.carrier_bad,
            &self.carrier_rtcp,
        ] {
            c.store(0, Relaxed);
        }
        for h in [&self.c2a, &self.a2c, &self.rtt] {
            *lock(h) = Histogram::default();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(h: &Mutex<Histogram>, from_ns: u64, now: u64) {
    lock(h).record_us(now.saturating_sub(from_ns) / 1000);
}

// ---------------------------------------------------------------------------------------------
// Environment: PKI, sbc config, the sbc process

struct Env {
    dir: tempfile::TempDir,
    pki: interop_tests::TestPki,
    sbc_bin: PathBuf,
    sbc_cpu: String,
}

impl Env {
    fn new() -> Res<Env> {
        let dir = tempfile::Builder::new()
            .prefix("sbc-loadgen-")
            .tempdir()
            .map_err(|e| format!("tempdir: {e}"))?;
        let pki = interop_tests::TestPki::generate(dir.path());
        let mut config = include_str!("../../configs/loadgen.toml").to_string();
        if let Ok(n) = std::env::var("SBC_WORKERS") {
            let n: u32 = n
                .parse()
                .map_err(|_| format!("SBC_WORKERS={n}: not a number"))?;
            config = config.replace("[limits]\n", &format!("[limits]\nworker_threads = {n}\n"));
        }
        std::fs::write(dir.path().join("sbc.toml"), config)
            .map_err(|e| format!("write config: {e}"))?;
        let sbc_bin = std::env::var_os("SBC")
            .map(PathBuf::from)
            .unwrap_or_else(|| workspace_root().join("target/release/sbc"));
        if !sbc_bin.exists() {
            return Err(format!(
                "{} not found: cargo build --release -p sbc --bin sbc",
                sbc_bin.display()
            ));
        }
        Ok(Env {
            dir,
            pki,
            sbc_bin,
            sbc_cpu: std::env::var("SBC_CPU").unwrap_or_else(|_| "0".into()),
        })
    }

    fn client_tls(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(self.pki.ca_der.clone())
            .expect("test CA is valid");
        Arc::new(
            rustls::ClientConfig::builder()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }

    fn agent_tls(&self) -> Arc<rustls::ServerConfig> {
        Arc::new(
            rustls::ServerConfig::builder_with_protocol_versions(&[&rustls::version::TLS13])
                .with_no_client_auth()
                .with_single_cert(
                    self.pki.agent.chain_der.clone(),
                    self.pki.agent.private_key(),
                )
                .expect("test agent certificate is valid"),
        )
    }

    /// Starts sbc pinned to `SBC_CPU` and waits until its SIP port accepts connections.
    fn start_sbc(&self) -> Res<Sbc> {
        let log = std::fs::File::create(self.dir.path().join("sbc.log"))
            .map_err(|e| format!("sbc log: {e}"))?;
        let child = Command::new("taskset")
            .arg("-c")
            .arg(&self.sbc_cpu)
            .arg(&self.sbc_bin)
            .arg("run")
            .arg("--config")
            .arg(self.dir.path().join("sbc.toml"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start sbc: {e}"))?;
        let sbc = Sbc { child };
        let deadline = Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(SIP_ADDR).is_err() {
            if Instant::now() > deadline {
                return Err(format!(
                    "sbc did not listen on {SIP_ADDR}; see {}",
                    self.dir.path().join("sbc.log").display()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(sbc)
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

struct Sbc {
    child: Child,
}

impl Sbc {
    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then up to 30 s for the drain, then SIGKILL.
    fn stop(mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------------------------
// SIP over TLS: one connection, many dialogs

/// A SIP-over-TLS connection to sbc; responses are routed to their call by Call-ID.
struct SipConn {
    out: mpsc::UnboundedSender<Vec<u8>>,
    pending: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>>,
    local: SocketAddr,
    reader: JoinHandle<()>,
}

impl Drop for SipConn {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl SipConn {
    async fn connect(tls: Arc<rustls::ClientConfig>) -> Res<SipConn> {
        let tcp = TcpStream::connect(SIP_ADDR)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let local = tcp.local_addr().map_err(|e| e.to_string())?;
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP address");
        let stream = tokio_rustls::TlsConnector::from(tls)
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake: {e}"))?;
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (out, mut rx) = mpsc::unbounded_channel::<Vec<u8>>();
        tokio::spawn(async move {
            while let Some(mut batch) = rx.recv().await {
                while let Ok(more) = rx.try_recv() {
                    batch.extend_from_slice(&more);
                }
                if wr.write_all(&batch).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
            let _ = wr.shutdown().await;
        });
        let pending: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<Message>>>> = Arc::default();
        let routes = Arc::clone(&pending);
        let reader = tokio::spawn(async move {
            let mut buf = Vec::with_capacity(16 * 1024);
            let mut chunk = vec![0u8; 16 * 1024];
            loop {
                let n = match rd.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                buf.extend_from_slice(&chunk[..n]);
                loop {
                    match take_message(&mut buf) {
                        Ok(Some(m)) => {
                            if let Some(tx) = lock(&routes).get(&m.call_id) {
                                let _ = tx.send(m);
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            eprintln!("loadgen: SIP stream from sbc unparsable: {e}");
                            return;
                        }
                    }
                }
            }
        });
        Ok(SipConn {
            out,
            pending,
            local,
            reader,
        })
    }

    fn register(&self, call_id: &str) -> mpsc::UnboundedReceiver<Message> {
        let (tx, rx) = mpsc::unbounded_channel();
        lock(&self.pending).insert(call_id.to_string(), tx);
        rx
    }

    fn unregister(&self, call_id: &str) {
        lock(&self.pending).remove(call_id);
    }

    fn send(&self, bytes: Vec<u8>) {
        let _ = self.out.send(bytes);
    }
}

/// Waits for the final response to `method`; 1xx are skipped.
async fn final_response(rx: &mut mpsc::UnboundedReceiver<Message>, method: &str) -> Res<Message> {
    let deadline = tokio::time::Instant::now() + SIP_TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .map_err(|_| format!("no final response to {method} within {SIP_TIMEOUT:?}"))?
            .ok_or_else(|| format!("connection closed before the response to {method}"))?;
        match m.status {
            Some(s) if s >= 200 && m.cseq_method == method => return Ok(m),
            _ => continue,
        }
    }
}

/// One established call's signalling.
struct Established {
    dialog: Dialog,
    rx: mpsc::UnboundedReceiver<Message>,
}

/// INVITE (offering `rtp_port` and `key`), final response, ACK. Returns sbc's media.
async fn invite(
    conn: &SipConn,
    call_id: String,
    rtp_port: u16,
    key: &[u8; 30],
) -> Res<(Established, sbc_benches::load::sip::AnswerMedia)> {
    let target: SocketAddr = SIP_ADDR.parse().expect("a socket address");
    let mut dialog = Dialog {
        from_tag: format!("f{call_id}"),
        call_id,
        to_tag: None,
        target,
        local: conn.local,
        called: CALLED.into(),
    };
    let mut rx = conn.register(&dialog.call_id);
    conn.send(dialog.invite(rtp_port, key));
    let resp = match final_response(&mut rx, "INVITE").await {
        Ok(r) => r,
        Err(e) => {
            conn.unregister(&dialog.call_id);
            return Err(e);
        }
    };
    dialog.to_tag = resp.to_tag.clone();
    let status = resp.status.unwrap_or(0);
    if !(200..300).contains(&status) {
        conn.unregister(&dialog.call_id);
        return Err(format!("INVITE answered {status}"));
    }
    conn.send(dialog.ack());
    let Some(answer) = answer_media(&resp.body) else {
        conn.unregister(&dialog.call_id);
        return Err("200 OK without a usable SDP answer".into());
    };
    Ok((Established { dialog, rx }, answer))
}

async fn bye(conn: &SipConn, mut call: Established) -> Res<()> {
    conn.send(call.dialog.bye());
    let r = final_response(&mut call.rx, "BYE").await;
    conn.unregister(&call.dialog.call_id);
    match r?.status {
        Some(s) if (200..300).contains(&s) => Ok(()),
        s => Err(format!("BYE answered {s:?}")),
    }
}

fn random_key() -> [u8; 30] {
    let mut k = [0u8; 30];
    rand::thread_rng().fill_bytes(&mut k);
    k
}

fn master_key(key_salt: &[u8]) -> Res<MasterKey> {
    if key_salt.len() != 30 {
        return Err(format!("SRTP key of {} bytes, want 30", key_salt.len()));
    }
    MasterKey::new(&key_salt[..16], &key_salt[16..]).ok_or_else(|| "bad SRTP key".into())
}

// ---------------------------------------------------------------------------------------------
// The voice agent

async fn agent_server(listener: TcpListener, tls: Arc<rustls::ServerConfig>, stats: Arc<Stats>) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let stats = Arc::clone(&stats);
        tokio::spawn(async move {
            if let Err(e) = agent_conn(tcp, acceptor, &stats).await {
                eprintln!("loadgen agent: {e}");
            }
        });
    }
}

/// The text between `"key":"` and the next `"`.
fn json_str<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    let start = text.find(key)? + key.len();
    let len = text[start..].find('"')?;
    Some(&text[start..start + len])
}

async fn agent_conn(tcp: TcpStream, acceptor: tokio_rustls::TlsAcceptor, stats: &Stats) -> Res<()> {
    let tls = acceptor
        .accept(tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    // A 4 KiB read buffer as in sbc (tungstenite zero-fills its 128 KiB default before each read).
    let config =
        tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096);
    let mut ws = tokio_tungstenite::accept_async_with_config(tls, Some(config))
        .await
        .map_err(|e| format!("WebSocket upgrade: {e}"))?;
    stats.agent_conns.fetch_add(1, Relaxed);
    let mut sid = String::new();
    let mut seq = 0u32;
    let mut buf = Vec::with_capacity(FRAME);
    while let Some(msg) = ws.next().await {
        let text = match msg {
            Ok(WsMessage::Text(t)) => t,
            Ok(WsMessage::Close(_)) | Err(_) => break,
            Ok(_) => continue,
        };
        let text = text.as_str();
        if text.starts_with(r#"{"event":"media""#) {
            let now = now_ns();
            buf.clear();
            let probe = json_str(text, r#""payload":""#)
                .and_then(|p| b64().decode_vec(p, &mut buf).ok())
                .and_then(|_| Probe::decode(&buf));
            let Some(p) = probe else { continue };
            stats.agent_recv.fetch_add(1, Relaxed);
            if stats.measuring.load(Relaxed) {
                record(&stats.c2a, p.carrier_ns, now);
            }
            let reply = Probe {
                agent_seq: seq,
                agent_ns: now_ns(),
                ..p
            };
            seq += 1;
            let msg = format!(
                r#"{{"event":"media","streamSid":"{sid}","media":{{"payload":"{}"}}}}"#,
                b64().encode(reply.encode())
            );
            if ws.send(WsMessage::text(msg)).await.is_err() {
                break;
            }
            stats.agent_sent.fetch_add(1, Relaxed);
        } else if text.contains(r#""event":"start""#) {
            sid = json_str(text, r#""streamSid":""#).unwrap_or("").to_string();
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Carrier media: one task sends for every call, one small task per call receives

struct TxCall {
    idx: u32,
    sock: Arc<UdpSocket>,
    dest: SocketAddr,
    ctx: OutboundContext,
    ssrc: u32,
    seq: u16,
    ts: u32,
    n: u32,
}

enum WheelCmd {
    Add(Box<TxCall>),
    Clear,
}

/// Sends one packet per call every 20 ms: call i is in slot i mod 20, one slot per ms.
async fn send_wheel(mut rx: mpsc::UnboundedReceiver<WheelCmd>, stats: Arc<Stats>) {
    let mut slots: Vec<Vec<TxCall>> = (0..SLOTS).map(|_| Vec::new()).collect();
    let start = tokio::time::Instant::now();
    let mut k = 0u64;
    loop {
        loop {
            match rx.try_recv() {
                Ok(WheelCmd::Add(c)) => slots[(u64::from(c.idx) % SLOTS) as usize].push(*c),
                Ok(WheelCmd::Clear) => slots.iter_mut().for_each(Vec::clear),
                Err(mpsc::error::TryRecvError::Empty) => break,
                Err(mpsc::error::TryRecvError::Disconnected) => return,
            }
        }
        k += 1;
        tokio::time::sleep_until(start + Duration::from_millis(k)).await;
        if !stats.sending.load(Relaxed) {
            continue;
        }
        for c in &mut slots[(k % SLOTS) as usize] {
            let probe = Probe {
                call: c.idx,
                carrier_seq: c.n,
                carrier_ns: now_ns(),
                ..Probe::default()
            };
            let rtp = write_rtp(c.n == 0, 0, c.seq, c.ts, c.ssrc, &probe.encode());
            let Ok(srtp) = c.ctx.protect_rtp(&rtp) else {
                stats.carrier_send_errors.fetch_add(1, Relaxed);
                continue;
            };
            match c.sock.try_send_to(&srtp, c.dest) {
                Ok(_) => {
                    stats.carrier_sent.fetch_add(1, Relaxed);
                }
                Err(_) => {
                    stats.carrier_send_errors.fetch_add(1, Relaxed);
                }
            }
            c.seq = c.seq.wrapping_add(1);
            c.ts = c.ts.wrapping_add(FRAME as u32);
            c.n += 1;
        }
    }
}

async fn receive_media(sock: Arc<UdpSocket>, mut ctx: InboundContext, stats: Arc<Stats>) {
    let mut buf = vec![0u8; 2048];
    loop {
        let Ok((n, _)) = sock.recv_from(&mut buf).await else {
            continue;
        };
        let now = now_ns();
        let data = &buf[..n];
        if is_rtcp(data) {
            stats.carrier_rtcp.fetch_add(1, Relaxed);
            continue;
        }
        let probe = ctx
            .unprotect_rtp(data)
            .ok()
            .and_then(|(plain, h)| h.payload(&plain).ok().and_then(Probe::decode));
        let Some(p) = probe else {
            stats.carrier_bad.fetch_add(1, Relaxed);
            continue;
        };
        stats.carrier_recv.fetch_add(1, Relaxed);
        if stats.measuring.load(Relaxed) {
            record(&stats.a2c, p.agent_ns, now);
            record(&stats.rtt, p.carrier_ns, now);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// `calls`

struct CallsOpts {
    ns: Vec<u32>,
    window: Duration,
    rate: u32,
    /// `--out FILE`: one JSON object per N appended (for `scripts/bench-peers` and the plot).
    out: Option<PathBuf>,
}

/// Appends `line` and a newline to `path`.
fn append_line(path: &Path, line: &str) -> Res<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    writeln!(f, "{line}").map_err(|e| format!("{}: {e}", path.display()))
}

/// A JSON number, or `null` for what was not measured.
fn json_num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

struct Live {
    call: Established,
    recv: JoinHandle<()>,
}

async fn one_call(
    conn: Arc<SipConn>,
    run: u32,
    idx: u32,
    wheel: mpsc::UnboundedSender<WheelCmd>,
    stats: Arc<Stats>,
) -> Res<Live> {
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind RTP: {e}"))?;
    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
    let key = random_key();
    let (call, answer) = invite(&conn, format!("lg{run}-{idx}"), port, &key).await?;
    let tx = OutboundContext::new(&SUITE, &master_key(&key)?).map_err(|e| e.to_string())?;
    let rx =
        InboundContext::new(&SUITE, &master_key(&answer.key_salt)?).map_err(|e| e.to_string())?;
    let sock = Arc::new(sock);
    let recv = tokio::spawn(receive_media(Arc::clone(&sock), rx, stats));
    let ssrc = rand::thread_rng().next_u32();
    let _ = wheel.send(WheelCmd::Add(Box::new(TxCall {
        idx,
        sock,
        dest: answer.rtp,
        ctx: tx,
        ssrc,
        seq: (ssrc >> 17) as u16,
        ts: ssrc.rotate_left(7),
        n: 0,
    })));
    Ok(Live { call, recv })
}

/// Sleeps until `start + i / rate`.
async fn pace(start: tokio::time::Instant, i: u32, rate: u32) {
    let at = start + Duration::from_secs_f64(f64::from(i) / f64::from(rate.max(1)));
    tokio::time::sleep_until(at).await;
}

/// The agent's own runtime (`LOADGEN_AGENT_THREADS` worker threads, default 1), apart from the
/// carrier side's: its TLS server handshakes (one per call) then never delay the carrier's SIP
/// and RTP, and with a free core the two sides run in parallel.
static AGENT_RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();

/// Binds the agent's port and serves it for the rest of the process, on the agent's own
/// runtime; returns the run's counters.
async fn start_agent(env: &Env) -> Res<Arc<Stats>> {
    let stats = Arc::new(Stats::default());
    let listener = std::net::TcpListener::bind(AGENT_ADDR)
        .map_err(|e| format!("agent listen {AGENT_ADDR}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("agent listen {AGENT_ADDR}: {e}"))?;
    let threads = std::env::var("LOADGEN_AGENT_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1);
    let rt = match AGENT_RT.get() {
        Some(rt) => rt,
        None => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(threads)
                .thread_name("agent")
                .enable_all()
                .build()
                .map_err(|e| format!("agent runtime: {e}"))?;
            AGENT_RT.get_or_init(|| rt)
        }
    };
    let tls = env.agent_tls();
    let agent_stats = Arc::clone(&stats);
    rt.spawn(async move {
        match TcpListener::from_std(listener) {
            Ok(l) => agent_server(l, tls, agent_stats).await,
            Err(e) => eprintln!("loadgen agent: listener: {e}"),
        }
    });
    Ok(stats)
}

async fn run_calls(env: &Env, opts: CallsOpts) -> Res<()> {
    let stats = start_agent(env).await?;
    let (wheel, wheel_rx) = mpsc::unbounded_channel();
    tokio::spawn(send_wheel(wheel_rx, Arc::clone(&stats)));
    let me = std::process::id();
    println!(
        "calls: {}s steady window per N, setup {} calls/s over one TLS connection, sbc on CPU {}",
        opts.window.as_secs(),
        opts.rate,
        env.sbc_cpu
    );
    println!(
        "{:>5} {:>6} {:>9} {:>9} {:>22} {:>22} {:>9} {:>8} {:>8} {:>6}",
        "N",
        "failed",
        "lost c>a",
        "lost a>c",
        "c>a p50/p99/max ms",
        "a>c p50/p99/max ms",
        "rtt p99",
        "us/call-s",
        "KiB/call",
        "gen %"
    );
    for (run, &n) in opts.ns.iter().enumerate() {
        stats.reset();
        let _ = wheel.send(WheelCmd::Clear);
        let sbc = env.start_sbc()?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let rss_cold = proc::rss_kib(sbc.pid()).map_err(|e| e.to_string())?;
        stats.sending.store(true, Relaxed);
        let conn = Arc::new(SipConn::connect(env.client_tls()).await?);
        // One call with media, ended, before the baseline is read: what the first call of a
        // process pays once (the binary's code paged in on first use, ~1.9 MiB; aws-lc's RNG
        // and the TLS ticket store initialised; the worker's thread-local buffers) is not a cost
        // of each call. Without it N=1 reads ~2.1 MiB "per call" (docs/performance.md).
        let warm = one_call(
            Arc::clone(&conn),
            run as u32,
            u32::MAX,
            wheel.clone(),
            Arc::clone(&stats),
        )
        .await
        .map_err(|e| format!("warm-up call: {e}"))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let _ = wheel.send(WheelCmd::Clear);
        warm.recv.abort();
        bye(&conn, warm.call)
            .await
            .map_err(|e| format!("warm-up call: {e}"))?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        stats.reset();
        stats.agent_conns.store(0, Relaxed);
        let rss0 = proc::rss_kib(sbc.pid()).map_err(|e| e.to_string())?;
        let anon0 = proc::rss_anon_kib(sbc.pid()).map_err(|e| e.to_string())?;
        let start = tokio::time::Instant::now();
        let mut setups = Vec::new();
        for i in 0..n {
            pace(start, i, opts.rate).await;
            setups.push(tokio::spawn(one_call(
                Arc::clone(&conn),
                run as u32,
                i,
                wheel.clone(),
                Arc::clone(&stats),
            )));
        }
        let mut live = Vec::new();
        let mut failed = 0u32;
        let mut first_error = None;
        for s in setups {
            match s.await.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(l) => live.push(l),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        // Let queues settle, then the steady window.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (cpu0, gen0) = (proc::cpu_us(sbc.pid()), proc::cpu_us(me));
        let (wait0, gwait0) = (proc::wait_us(sbc.pid()), proc::wait_us(me));
        let t0 = Instant::now();
        stats.measuring.store(true, Relaxed);
        let (mut rss_peak, mut anon_peak) = (rss0, anon0);
        while t0.elapsed() < opts.window {
            tokio::time::sleep(Duration::from_millis(500)).await;
            rss_peak = rss_peak.max(proc::rss_kib(sbc.pid()).unwrap_or(0));
            anon_peak = anon_peak.max(proc::rss_anon_kib(sbc.pid()).unwrap_or(0));
        }
        stats.measuring.store(false, Relaxed);
        let (cpu1, gen1) = (proc::cpu_us(sbc.pid()), proc::cpu_us(me));
        let (wait1, gwait1) = (proc::wait_us(sbc.pid()), proc::wait_us(me));
        let waited = |a: std::io::Result<u64>, b: std::io::Result<u64>| match (a, b) {
            (Ok(a), Ok(b)) => format!(
                "{:.0}",
                b.saturating_sub(a) as f64 / (opts.window.as_secs_f64() * 1e4)
            ),
            _ => "-".into(),
        };
        let (sbc_wait, gen_wait) = (waited(wait0, wait1), waited(gwait0, gwait1));
        let secs = t0.elapsed().as_secs_f64();
        // Stop sending, let everything in flight arrive, then count.
        stats.sending.store(false, Relaxed);
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let sent = stats.carrier_sent.load(Relaxed);
        let lost_c2a = sent.saturating_sub(stats.agent_recv.load(Relaxed));
        let lost_a2c = stats
            .agent_sent
            .load(Relaxed)
            .saturating_sub(stats.carrier_recv.load(Relaxed));
        let _ = wheel.send(WheelCmd::Clear);
        let start = tokio::time::Instant::now();
        let mut byes = Vec::new();
        for (i, l) in live.into_iter().enumerate() {
            pace(start, i as u32, 1000).await;
            l.recv.abort();
            let conn = Arc::clone(&conn);
            byes.push(tokio::spawn(async move { bye(&conn, l.call).await }));
        }
        for b in byes {
            if let Err(e) = b.await.map_err(|e| e.to_string()).and_then(|r| r) {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        let cpu = match (cpu0, cpu1) {
            (Ok(a), Ok(b)) => b.saturating_sub(a) as f64,
            _ => f64::NAN,
        };
        let gen = match (gen0, gen1) {
            (Ok(a), Ok(b)) => b.saturating_sub(a) as f64,
            _ => f64::NAN,
        };
        let call_secs = f64::from(n) * secs;
        // RSS per call (KiB): from the baseline after the warm-up call, its anonymous part, and
        // from the idle process before any call.
        let per_call = |peak: u64, base: u64| peak.saturating_sub(base) as f64 / f64::from(n);
        let (kib_per_call, anon_per_call, cold_per_call) = (
            per_call(rss_peak, rss0),
            per_call(anon_peak, anon0),
            per_call(rss_peak, rss_cold),
        );
        let fmt3 = |h: &Mutex<Histogram>| {
            let h = lock(h);
            let ms = |v: Option<u64>| {
                v.map_or("-".to_string(), |us| format!("{:.2}", us as f64 / 1000.0))
            };
            format!(
                "{}/{}/{}",
                ms(h.percentile_us(50.0)),
                ms(h.percentile_us(99.0)),
                ms(Some(h.max_us()))
            )
        };
        if let Some(out) = &opts.out {
            let p99_ms =
                |h: &Mutex<Histogram>| lock(h).percentile_us(99.0).map(|us| us as f64 / 1000.0);
            let p50_ms =
                |h: &Mutex<Histogram>| lock(h).percentile_us(50.0).map(|us| us as f64 / 1000.0);
            append_line(
                out,
                &format!(
                    "{{\"relay\":\"sbc\",\"calls\":{n},\"window_s\":{secs:.3},\"failed\":{failed},\
                     \"lost_c2a\":{lost_c2a},\"lost_a2c\":{lost_a2c},\"c2a_p50_ms\":{},\"c2a_p99_ms\":{},\
                     \"a2c_p50_ms\":{},\"a2c_p99_ms\":{},\"us_per_call_second\":{},\
                     \"rss_kib_per_call\":{},\"anon_kib_per_call\":{},\"rss_kib_per_call_from_cold\":{},\"rss_kib_cold\":{rss_cold},\
                     \"rss_kib_idle\":{rss0},\"sbc_wait_pct\":\"{sbc_wait}\"}}",
                    json_num(p50_ms(&stats.c2a)),
                    json_num(p99_ms(&stats.c2a)),
                    json_num(p50_ms(&stats.a2c)),
                    json_num(p99_ms(&stats.a2c)),
                    json_num(Some(cpu / call_secs)),
                    json_num(Some(kib_per_call)),
                    json_num(Some(anon_per_call)),
                    json_num(Some(cold_per_call)),
                ),
            )?;
        }
        let rtt99 = lock(&stats.rtt)
            .percentile_us(99.0)
            .map_or("-".into(), |us| format!("{:.2}", us as f64 / 1000.0));
        println!(
            "{:>5} {:>6} {:>9} {:>9} {:>22} {:>22} {:>9} {:>8.0} {:>8.1} {:>6.0}",
            n,
            failed,
            lost_c2a,
            lost_a2c,
            fmt3(&stats.c2a),
            fmt3(&stats.a2c),
            rtt99,
            cpu / call_secs,
            kib_per_call,
            gen / (secs * 1e6) * 100.0,
        );
        println!(
            "       packets: carrier sent {sent} (send errors {}), agent got {} sent {}, carrier got {} \
             (undecodable {}, SRTCP {}); agent sockets {}; sbc RSS {rss_cold} KiB idle, {rss0} KiB \
             after a warm-up call (anonymous {anon0}); per call {:.1} KiB anonymous, {:.1} KiB from cold; \
             waiting for a CPU (other load): sbc {sbc_wait} %, loadgen {gen_wait} %",
            stats.carrier_send_errors.load(Relaxed),
            stats.agent_recv.load(Relaxed),
            stats.agent_sent.load(Relaxed),
            stats.carrier_recv.load(Relaxed),
            stats.carrier_bad.load(Relaxed),
            stats.carrier_rtcp.load(Relaxed),
            stats.agent_conns.swap(0, Relaxed),
            anon_per_call,
            cold_per_call,
        );
        drop(conn);
        sbc.stop();
        if let Some(e) = first_error {
            println!("stopping: {failed} calls failed at N={n} (first: {e})");
            break;
        }
        if lost_c2a + lost_a2c > 0 {
            println!("stopping: N={n} lost packets");
            break;
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `setup`

struct SetupOpts {
    per_call_connection: bool,
    rates: Vec<u32>,
    secs: u32,
}

async fn setup_call(
    shared: Option<Arc<SipConn>>,
    tls: Arc<rustls::ClientConfig>,
    call_id: String,
) -> Res<Duration> {
    let conn = match shared {
        Some(c) => c,
        None => Arc::new(SipConn::connect(tls).await?),
    };
    let sock = UdpSocket::bind("127.0.0.1:0")
        .await
        .map_err(|e| format!("bind RTP: {e}"))?;
    let port = sock.local_addr().map_err(|e| e.to_string())?.port();
    let t = Instant::now();
    let (call, _answer) = invite(&conn, call_id, port, &random_key()).await?;
    let setup = t.elapsed();
    bye(&conn, call).await?;
    Ok(setup)
}

async fn run_setup(env: &Env, opts: SetupOpts) -> Res<()> {
    start_agent(env).await?;
    let mode = if opts.per_call_connection {
        "ln (one TLS connection per call)"
    } else {
        "l1 (one shared TLS connection)"
    };
    println!(
        "setup: INVITE/200/ACK/BYE/200 with an SDES offer, agent over wss (TLS 1.3), {} s per rate, {mode}, ECDSA P-256 certificates",
        opts.secs
    );
    println!(
        "{:>6} {:>6} {:>8} {:>6} {:>6} {:>12} {:>12} {:>10} {:>12} {:>6} {:>10}",
        "rate/s",
        "calls",
        "done/s",
        "failed",
        "503",
        "setup p50 ms",
        "setup p99 ms",
        "sbc CPU %",
        "us per call",
        "gen %",
        "sbc wait %"
    );
    let sbc = env.start_sbc()?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut best = None;
    for (run, &rate) in opts.rates.iter().enumerate() {
        let shared = if opts.per_call_connection {
            None
        } else {
            Some(Arc::new(SipConn::connect(env.client_tls()).await?))
        };
        let total = rate * opts.secs;
        let cpu0 = proc::cpu_us(sbc.pid()).map_err(|e| e.to_string())?;
        let gen0 = proc::cpu_us(std::process::id()).map_err(|e| e.to_string())?;
        let wait0 = proc::wait_us(sbc.pid()).map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let start = tokio::time::Instant::now();
        let mut calls = Vec::new();
        for i in 0..total {
            pace(start, i, rate).await;
            calls.push(tokio::spawn(setup_call(
                shared.clone(),
                env.client_tls(),
                format!("su{run}-{i}"),
            )));
        }
        let mut hist = Histogram::default();
        let mut failed = 0u32;
        // 503 to the INVITE: sbc shedding load as it should past saturation, not a failure.
        let mut refused = 0u32;
        let mut first_error = None;
        for c in calls {
            match c.await.map_err(|e| e.to_string()).and_then(|r| r) {
                Ok(d) => hist.record_us(d.as_micros() as u64),
                Err(e) if e.starts_with("INVITE answered 503") => refused += 1,
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        let elapsed = t0.elapsed().as_secs_f64();
        // Calls completed per second, from the first INVITE to the last BYE's 200.
        let achieved = f64::from(total - failed - refused) / elapsed;
        let cpu = proc::cpu_us(sbc.pid())
            .map_err(|e| e.to_string())?
            .saturating_sub(cpu0) as f64;
        let wait = proc::wait_us(sbc.pid())
            .map_err(|e| e.to_string())?
            .saturating_sub(wait0) as f64;
        let gen_cpu = proc::cpu_us(std::process::id())
            .map_err(|e| e.to_string())?
            .saturating_sub(gen0) as f64;
        let ms = |p: f64| {
            hist.percentile_us(p)
                .map_or("-".into(), |u| format!("{:.1}", u as f64 / 1000.0))
        };
        println!(
            "{:>6} {:>6} {:>8.0} {:>6} {:>6} {:>12} {:>12} {:>10.0} {:>12.0} {:>6.0} {:>10.0}",
            rate,
            total,
            achieved,
            failed,
            refused,
            ms(50.0),
            ms(99.0),
            cpu / (elapsed * 1e6) * 100.0,
            cpu / f64::from(total),
            gen_cpu / (elapsed * 1e6) * 100.0,
            wait / (elapsed * 1e6) * 100.0,
        );
        drop(shared);
        if let Some(e) = first_error {
            println!("stopping: {failed} failed at {rate}/s (first: {e})");
            break;
        }
        if achieved < 0.9 * f64::from(rate) {
            println!(
                "stopping: {rate}/s offered, {achieved:.0}/s completed: sbc no longer keeps up"
            );
            break;
        }
        best = Some(rate);
        // Let sbc finish its call tasks and close agent sockets before the next rate.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    match best {
        Some(r) => println!(
            "highest rate with zero failed calls, kept up with (90 % completed within the run): {r}/s ({mode})"
        ),
        None => println!("no rate without failures ({mode})"),
    }
    sbc.stop();
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// `floor`

/// A connected TLS pair over loopback TCP: (client, server), blocking, handshake done.
type Tls<C> = rustls::StreamOwned<C, std::net::TcpStream>;

fn tls_pair(env: &Env) -> Res<(Tls<rustls::ClientConnection>, Tls<rustls::ServerConnection>)> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let a = std::net::TcpStream::connect(l.local_addr().map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())?;
    let (b, _) = l.accept().map_err(|e| e.to_string())?;
    for s in [&a, &b] {
        let _ = s.set_nodelay(true);
        s.set_nonblocking(true).map_err(|e| e.to_string())?;
    }
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").expect("an IP address");
    let cc = rustls::ClientConnection::new(env.client_tls(), name).map_err(|e| e.to_string())?;
    let sc = rustls::ServerConnection::new(env.agent_tls()).map_err(|e| e.to_string())?;
    let mut client = rustls::StreamOwned::new(cc, a);
    let mut server = rustls::StreamOwned::new(sc, b);
    let deadline = Instant::now() + Duration::from_secs(5);
    while client.conn.is_handshaking() || server.conn.is_handshaking() {
        if Instant::now() > deadline {
            return Err("floor: TLS handshake did not finish".into());
        }
        for r in [
            client.conn.complete_io(&mut client.sock).map(|_| ()),
            server.conn.complete_io(&mut server.sock).map(|_| ()),
        ] {
            if let Err(e) = r {
                if e.kind() != std::io::ErrorKind::WouldBlock {
                    return Err(format!("floor: TLS handshake: {e}"));
                }
            }
        }
    }
    for s in [&client.sock, &server.sock] {
        s.set_nonblocking(false).map_err(|e| e.to_string())?;
    }
    Ok((client, server))
}

/// The floor's work done by a relay thread between sleeping peers (module doc, `--peers
/// asleep`): the carrier sends one SRTP packet and waits for the relay's; the agent echoes each
/// TLS record; the relay waits in `poll(2)` on its UDP socket and its TLS connection and does
/// what the inline floor times. Its own CPU time per packet pair includes the wake-ups of its
/// peers that loopback charges to the sender (the receive path and the scheduler run in the
/// sending thread's context), which the inline floor never pays.
fn run_floor_asleep(
    env: &Env,
    iters: u32,
    relay_cpu: Option<usize>,
    peer_cpu: Option<usize>,
) -> Res<()> {
    use nix::poll::{poll, PollFd, PollFlags};
    use std::os::fd::AsRawFd;
    // Pins the calling thread (pid 0: this thread, for sched_setaffinity).
    let pin = |cpu: Option<usize>| -> Res<()> {
        let Some(cpu) = cpu else { return Ok(()) };
        let mut set = nix::sched::CpuSet::new();
        set.set(cpu).map_err(|e| format!("floor: CPU {cpu}: {e}"))?;
        nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
            .map_err(|e| format!("floor: pin to CPU {cpu}: {e}"))
    };
    let io = |e: std::io::Error| e.to_string();
    let FloorParts {
        carrier,
        relay_udp,
        carrier_addr,
        relay_addr,
        mut relay_tls,
        mut agent_tls,
        keys: (k1, k2),
        record,
    } = FloorParts::new(env)?;
    carrier
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    agent_tls
        .sock
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(io)?;
    let len = record.len();

    let agent = std::thread::spawn(move || -> Res<()> {
        pin(peer_cpu)?;
        let mut buf = vec![0u8; len];
        for _ in 0..iters {
            agent_tls
                .read_exact(&mut buf)
                .map_err(|e| format!("agent: {e}"))?;
            agent_tls
                .write_all(&buf)
                .map_err(|e| format!("agent: {e}"))?;
            agent_tls.flush().map_err(|e| format!("agent: {e}"))?;
        }
        Ok(())
    });
    let carrier_thread = {
        let (k1, k2) = (k1.clone(), k2.clone());
        std::thread::spawn(move || -> Res<()> {
            pin(peer_cpu)?;
            let mut tx = OutboundContext::new(&SUITE, &k1).map_err(|e| e.to_string())?;
            let mut rx = InboundContext::new(&SUITE, &k2).map_err(|e| e.to_string())?;
            let mut buf = vec![0u8; 2048];
            for i in 0..iters {
                let pkt = tx
                    .protect_rtp(&write_rtp(
                        false,
                        0,
                        i as u16,
                        i * 160,
                        0xca11,
                        &[0xff; FRAME],
                    ))
                    .map_err(|e| e.to_string())?;
                carrier
                    .send_to(&pkt, relay_addr)
                    .map_err(|e| format!("carrier: {e}"))?;
                let (n, _) = carrier
                    .recv_from(&mut buf)
                    .map_err(|e| format!("carrier: {e}"))?;
                rx.unprotect_rtp(&buf[..n]).map_err(|e| e.to_string())?;
            }
            Ok(())
        })
    };

    pin(relay_cpu)?;
    let mut rx = InboundContext::new(&SUITE, &k1).map_err(|e| e.to_string())?;
    let mut tx = OutboundContext::new(&SUITE, &k2).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let mut rbuf = vec![0u8; len];
    let cpu = || {
        nix::time::clock_gettime(nix::time::ClockId::CLOCK_THREAD_CPUTIME_ID)
            .map(|t| Duration::from(t).as_secs_f64())
            .map_err(|e| e.to_string())
    };
    let (cpu0, wall0) = (cpu()?, Instant::now());
    relay_tls.sock.set_nonblocking(true).map_err(io)?;
    let (mut down, mut up, mut polls, mut got) = (0u32, 0u32, 0u64, 0usize);
    while up < iters {
        let mut fds = [
            PollFd::new(relay_udp.as_raw_fd(), PollFlags::POLLIN),
            PollFd::new(relay_tls.sock.as_raw_fd(), PollFlags::POLLIN),
        ];
        let ready = poll(&mut fds, 5000).map_err(|e| format!("relay: poll: {e}"))?;
        if ready == 0 {
            return Err("floor: no packet within 5 s".into());
        }
        polls += 1;
        let readable = |f: &PollFd| f.revents().is_some_and(|r| r.contains(PollFlags::POLLIN));
        if readable(&fds[0]) {
            let (n, _) = relay_udp.recv_from(&mut buf).map_err(io)?;
            let (plain, _) = rx.unprotect_rtp(&buf[..n]).map_err(|e| e.to_string())?;
            std::hint::black_box(&plain);
            relay_tls.write_all(&record).map_err(io)?;
            relay_tls.flush().map_err(io)?;
            down += 1;
        }
        if readable(&fds[1]) {
            // Non-blocking: the readable socket may carry only TLS 1.3 session tickets.
            loop {
                match relay_tls.read(&mut rbuf[got..]) {
                    Ok(0) => return Err("floor: the agent closed the connection".into()),
                    Ok(n) => got += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(io(e)),
                }
                if got == len {
                    break;
                }
            }
        }
        if got == len {
            got = 0;
            let rtp = write_rtp(false, 0, up as u16, up * 160, 0x5bc, &[0xff; FRAME]);
            let out = tx.protect_rtp(&rtp).map_err(|e| e.to_string())?;
            relay_udp.send_to(&out, carrier_addr).map_err(io)?;
            up += 1;
        }
    }
    let (cpu_s, wall) = (cpu()? - cpu0, wall0.elapsed());
    carrier_thread
        .join()
        .map_err(|_| "carrier thread panicked")??;
    agent.join().map_err(|_| "agent thread panicked")??;
    let per_pair = cpu_s * 1e6 / f64::from(iters);
    println!(
        "floor (peers asleep): relay CPU {per_pair:.2} us per packet pair \
         ({down} down, {up} up, {:.2} polls per pair, wall {:.2} us per pair); \
         per bidirectional call-second (50 pairs): {:.0} us",
        polls as f64 / f64::from(iters),
        wall.as_secs_f64() * 1e6 / f64::from(iters),
        50.0 * per_pair
    );
    Ok(())
}

/// What both floors start from: the carrier's and the relay's UDP sockets, a TLS pair (the relay
/// is the client, as sbc is of the agent leg), the two SRTP master keys (carrier -> relay,
/// relay -> carrier) and one TLS record the size of a Twilio `media` message in a WebSocket
/// frame.
struct FloorParts {
    carrier: std::net::UdpSocket,
    relay_udp: std::net::UdpSocket,
    carrier_addr: SocketAddr,
    relay_addr: SocketAddr,
    relay_tls: Tls<rustls::ClientConnection>,
    agent_tls: Tls<rustls::ServerConnection>,
    keys: (MasterKey, MasterKey),
    record: Vec<u8>,
}

impl FloorParts {
    fn new(env: &Env) -> Res<FloorParts> {
        let io = |e: std::io::Error| e.to_string();
        let carrier = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        let relay_udp = std::net::UdpSocket::bind("127.0.0.1:0").map_err(io)?;
        let (relay_tls, agent_tls) = tls_pair(env)?;
        let mut writer = srtp_bridge::agent::AgentWriter::new("MZ00000000000000000000000000000000");
        let text = writer.media(1234, &[0xff; FRAME]);
        let mut record = vec![0x81, 126];
        record.extend_from_slice(&(text.len() as u16).to_be_bytes());
        record.extend_from_slice(text.as_bytes());
        Ok(FloorParts {
            carrier_addr: carrier.local_addr().map_err(io)?,
            relay_addr: relay_udp.local_addr().map_err(io)?,
            carrier,
            relay_udp,
            relay_tls,
            agent_tls,
            keys: (master_key(&[1; 30])?, master_key(&[2; 30])?),
            record,
        })
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn run_floor(env: &Env, iters: u32) -> Res<()> {
    let io = |e: std::io::Error| e.to_string();
    let FloorParts {
        carrier,
        relay_udp: sbc_udp,
        carrier_addr,
        relay_addr: sbc_addr,
        relay_tls: mut sbc_tls,
        mut agent_tls,
        keys: (k1, k2),
        record,
    } = FloorParts::new(env)?;
    let mut carrier_tx = OutboundContext::new(&SUITE, &k1).map_err(|e| e.to_string())?;
    let mut sbc_rx = InboundContext::new(&SUITE, &k1).map_err(|e| e.to_string())?;
    let mut sbc_tx = OutboundContext::new(&SUITE, &k2).map_err(|e| e.to_string())?;
    let mut carrier_rx = InboundContext::new(&SUITE, &k2).map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 2048];
    let mut rbuf = vec![0u8; record.len()];
    let batch = 1000u32;
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for i in 0..iters {
        let seq = i as u16;
        // Not timed: the carrier sends.
        let pkt = carrier_tx
            .protect_rtp(&write_rtp(false, 0, seq, i * 160, 0xca11, &[0xff; FRAME]))
            .map_err(|e| e.to_string())?;
        carrier.send_to(&pkt, sbc_addr).map_err(io)?;
        // Timed: UDP recv + SRTP unprotect + one TLS record write.
        let t = Instant::now();
        let (n, _) = sbc_udp.recv_from(&mut buf).map_err(io)?;
        let (plain, _) = sbc_rx.unprotect_rtp(&buf[..n]).map_err(|e| e.to_string())?;
        std::hint::black_box(&plain);
        sbc_tls.write_all(&record).map_err(io)?;
        sbc_tls.flush().map_err(io)?;
        let d1 = t.elapsed();
        // Not timed: the agent reads it and sends one back.
        agent_tls.read_exact(&mut rbuf).map_err(io)?;
        agent_tls.write_all(&record).map_err(io)?;
        agent_tls.flush().map_err(io)?;
        // Timed: TLS record read + SRTP protect + UDP send.
        let t = Instant::now();
        sbc_tls.read_exact(&mut rbuf).map_err(io)?;
        let rtp = write_rtp(false, 0, seq, i * 160, 0x5bc, &[0xff; FRAME]);
        let out = sbc_tx.protect_rtp(&rtp).map_err(|e| e.to_string())?;
        sbc_udp.send_to(&out, carrier_addr).map_err(io)?;
        let d2 = t.elapsed();
        // Not timed: the carrier receives.
        let (n, _) = carrier.recv_from(&mut buf).map_err(io)?;
        carrier_rx
            .unprotect_rtp(&buf[..n])
            .map_err(|e| e.to_string())?;
        if i % batch == 0 {
            down.push(0.0);
            up.push(0.0);
        }
        *down.last_mut().expect("pushed above") += d1.as_secs_f64() * 1e6 / f64::from(batch);
        *up.last_mut().expect("pushed above") += d2.as_secs_f64() * 1e6 / f64::from(batch);
    }
    if down.len() > 1 {
        // The last batch may be partial.
        down.pop();
        up.pop();
    }
    let (d, u) = (median(&mut down), median(&mut up));
    println!(
        "floor: carrier->agent {d:.2} us per packet (UDP recv + SRTP unprotect + TLS write), \
         agent->carrier {u:.2} us (TLS read + SRTP protect + UDP send); \
         per bidirectional call-second (50 each way): {:.0} us  [median of {} batches of {batch}]",
        50.0 * (d + u),
        down.len()
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------------

fn list(v: &str) -> Res<Vec<u32>> {
    v.split(',')
        .map(|x| x.trim().parse().map_err(|_| format!("not a number: {x}")))
        .collect()
}

fn main() -> std::process::ExitCode {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    now_ns();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().cloned().unwrap_or_default();
    let mut opts: HashMap<String, String> = HashMap::new();
    let mut it = args.iter().skip(1);
    while let Some(k) = it.next() {
        let Some(name) = k.strip_prefix("--") else {
            eprintln!("loadgen: unexpected argument {k}");
            return std::process::ExitCode::from(2);
        };
        opts.insert(name.to_string(), it.next().cloned().unwrap_or_default());
    }
    let get = |k: &str, d: &str| opts.get(k).cloned().unwrap_or_else(|| d.to_string());
    let result = (|| -> Res<()> {
        let env = Env::new()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        match mode.as_str() {
            "calls" => rt.block_on(run_calls(
                &env,
                CallsOpts {
                    ns: list(&get("n", "100,250,500,1000,2000"))?,
                    window: Duration::from_secs(u64::from(list(&get("window", "10"))?[0])),
                    rate: list(&get("rate", "200"))?[0],
                    out: opts.get("out").map(PathBuf::from),
                },
            )),
            "setup" => rt.block_on(run_setup(
                &env,
                SetupOpts {
                    per_call_connection: get("transport", "l1") == "ln",
                    rates: list(&get("rates", "50,100,200,300,400,500,600,800,1000"))?,
                    secs: list(&get("secs", "3"))?[0],
                },
            )),
            "floor" => match get("peers", "inline").as_str() {
                "inline" => run_floor(&env, list(&get("iters", "20000"))?[0]),
                "asleep" => run_floor_asleep(
                    &env,
                    list(&get("iters", "20000"))?[0],
                    opts.get("relay-cpu")
                        .map(|c| c.parse())
                        .transpose()
                        .map_err(|_| "floor: --relay-cpu: a CPU number")?,
                    opts.get("peer-cpu")
                        .map(|c| c.parse())
                        .transpose()
                        .map_err(|_| "floor: --peer-cpu: a CPU number")?,
                ),
                other => Err(format!("floor: --peers {other}: expected inline or asleep")),
            },
            _ => Err(
                "usage: loadgen calls|setup|floor [--option value ...] (see the source's doc)"
                    .into(),
            ),
        }?;
        if std::env::var_os("LOADGEN_KEEP").is_some() {
            eprintln!(
                "loadgen: kept {} (sbc.log, audit.jsonl)",
                env.dir.keep().display()
            );
        }
        Ok(())
    })();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("loadgen: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
