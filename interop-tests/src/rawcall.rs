//! A hand-driven carrier for what SIPp cannot do: a call whose TLS connection the test drops
//! mid-call, a BYE sent later on a new connection, a TLS listener that receives sbc's BYE on a
//! connection sbc opens itself, and a small SRTP sender/receiver for the media of such a call.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use srtp_bridge::srtp::{InboundContext, OutboundContext};
use srtp_bridge::{MasterKey, SrtpSuite};

use crate::pki::Identity;
use crate::tlsclient::{self, TlsConn};
use crate::TestPki;

/// A SIP-over-TLS connection that reads whole messages (headers plus `Content-Length` body).
pub struct SipConn {
    pub tls: TlsConn,
    buf: Vec<u8>,
}

impl SipConn {
    /// Connects to sbc at `127.0.0.1:port`, trusting the test CA.
    pub fn connect(pki: &TestPki, port: u16) -> SipConn {
        let tls = tlsclient::connect(pki, port, Duration::from_secs(10))
            .unwrap_or_else(|e| panic!("connect to sbc 127.0.0.1:{port}: {e}"));
        SipConn {
            tls,
            buf: Vec::new(),
        }
    }

    /// Connects to sbc at `127.0.0.1:port` from `local_ip` (another address in 127.0.0.0/8, so
    /// that sbc sees another source, e.g. another carrier), trusting the test CA.
    pub fn connect_from(pki: &TestPki, port: u16, local_ip: std::net::Ipv4Addr) -> SipConn {
        SipConn::connect_from_to(pki, local_ip, SocketAddr::from(([127, 0, 0, 1], port)))
    }

    /// Connects to sbc at `dest` (an instance on another loopback address) from `local_ip`,
    /// trusting the test CA and verifying sbc's certificate for 127.0.0.1.
    pub fn connect_from_to(
        pki: &TestPki,
        local_ip: std::net::Ipv4Addr,
        dest: SocketAddr,
    ) -> SipConn {
        SipConn::connect_with_recv_buffer(pki, local_ip, dest, None)
    }

    /// As [`SipConn::connect_from_to`], with the socket's receive buffer (`SO_RCVBUF`, set
    /// before connecting) at `recv_buffer` bytes: a small one makes a slowly reading carrier
    /// throttle what sbc can hand to the kernel.
    pub fn connect_with_recv_buffer(
        pki: &TestPki,
        local_ip: std::net::Ipv4Addr,
        dest: SocketAddr,
        recv_buffer: Option<u32>,
    ) -> SipConn {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let tcp = rt
            .block_on(async {
                let sock = tokio::net::TcpSocket::new_v4()?;
                sock.bind(SocketAddr::from((local_ip, 0)))?;
                if let Some(size) = recv_buffer {
                    sock.set_recv_buffer_size(size)?;
                }
                let s = tokio::time::timeout(Duration::from_secs(10), sock.connect(dest))
                    .await
                    .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                s.into_std()
            })
            .unwrap_or_else(|e| panic!("connect to sbc {dest} from {local_ip}: {e}"));
        tcp.set_nonblocking(false).expect("blocking");
        tcp.set_read_timeout(Some(Duration::from_millis(200))).ok();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).expect("add CA");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls_pki_types::ServerName::try_from("127.0.0.1")
            .expect("name")
            .to_owned();
        let conn = rustls::ClientConnection::new(Arc::new(config), name).expect("tls client");
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tls.conn.is_handshaking() {
            assert!(
                Instant::now() < deadline,
                "TLS handshake from {local_ip} timed out"
            );
            match tls.conn.complete_io(&mut tls.sock) {
                Ok(_) => {}
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => panic!("TLS handshake from {local_ip}: {e}"),
            }
        }
        SipConn {
            tls,
            buf: Vec::new(),
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.tls.sock.local_addr().expect("local addr")
    }

    pub fn send(&mut self, msg: &str) {
        self.tls.write_all(msg.as_bytes()).expect("write SIP");
        self.tls.flush().expect("flush SIP");
    }

    /// The next whole SIP message, or `None` when `timeout` passed or the peer closed first.
    pub fn recv(&mut self, timeout: Duration) -> Option<String> {
        match read_message(&mut self.tls, &mut self.buf, timeout) {
            Got::Message(m) => Some(m),
            Got::Timeout | Got::Closed => None,
        }
    }

    /// Reads until the final response to `dialog`'s INVITE (CSeq 1), skipping provisionals and
    /// others; on 200 records sbc's To tag in `dialog`; ACKs it. Returns the status and the
    /// response.
    pub fn finish_invite(&mut self, dialog: &mut Dialog, timeout: Duration) -> (u16, String) {
        let via_port = self.local_addr().port();
        let deadline = Instant::now() + timeout;
        while let Some(m) = self.recv(deadline.saturating_duration_since(Instant::now())) {
            let status = tlsclient::status_code(&m).unwrap_or(0);
            if header(&m, "CSeq") != Some("1 INVITE") || status < 200 {
                continue;
            }
            if status == 200 {
                dialog.to_tag = header(&m, "To")
                    .and_then(tag)
                    .expect("200 OK without a To tag")
                    .to_string();
            }
            self.send(&dialog.ack(via_port));
            return (status, m);
        }
        panic!(
            "no final response to INVITE {} within {timeout:?}",
            dialog.call_id
        );
    }

    /// Sends `dialog`'s BYE (CSeq 2) and waits for its 200.
    pub fn bye(&mut self, dialog: &Dialog, timeout: Duration) {
        let via_port = self.local_addr().port();
        self.send(&dialog.bye(via_port, 2));
        self.expect_response(200, "2 BYE", timeout);
    }

    /// Reads until a response with `status` for `cseq` (e.g. `"1 INVITE"`), skipping others.
    pub fn expect_response(&mut self, status: u16, cseq: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let Some(m) = self.recv(deadline - Instant::now()) else {
                break;
            };
            if tlsclient::status_code(&m) == Some(status) && header(&m, "CSeq") == Some(cseq) {
                return m;
            }
            seen.push(m.lines().next().unwrap_or_default().to_string());
        }
        panic!("no {status} for CSeq {cseq} within {timeout:?}; got: {seen:?}");
    }

    /// Drops the connection the way a crashed or partitioned peer does: no close_notify, no
    /// SIP, just the TCP socket closed.
    pub fn drop_abruptly(self) {
        let _ = self.tls.sock.shutdown(std::net::Shutdown::Both);
    }
}

pub(crate) enum Got {
    Message(String),
    Timeout,
    Closed,
}

pub(crate) fn read_message<S: Read>(io: &mut S, buf: &mut Vec<u8>, timeout: Duration) -> Got {
    let deadline = Instant::now() + timeout;
    let mut chunk = [0u8; 4096];
    loop {
        // Keep-alive CRLFs between messages (RFC 5626 §4.4.1) are not messages.
        while buf.starts_with(b"\r\n") {
            buf.drain(..2);
        }
        if let Some(end) = tlsclient::complete_message(buf) {
            let msg = String::from_utf8_lossy(&buf[..end]).into_owned();
            buf.drain(..end);
            return Got::Message(msg);
        }
        if Instant::now() > deadline {
            return Got::Timeout;
        }
        match io.read(&mut chunk) {
            Ok(0) => return Got::Closed,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return Got::Closed,
        }
    }
}

/// The first value of header `name` (case-insensitive) in a SIP message's text.
pub fn header<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    msg.split("\r\n\r\n").next()?.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The `tag` parameter of a From/To value.
pub fn tag(value: &str) -> Option<&str> {
    value
        .split(';')
        .find_map(|p| p.trim().strip_prefix("tag="))
        .map(|t| t.split(['>', ' ']).next().unwrap_or(t))
}

/// The SDP body of a SIP message.
pub fn body(msg: &str) -> &str {
    msg.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("")
}

/// One call's identity as the carrier sees it.
pub struct Dialog {
    pub call_id: String,
    pub from_tag: String,
    /// sbc's To tag (from its 200 OK).
    pub to_tag: String,
    pub sbc_port: u16,
    /// The carrier's Contact (where sbc sends its own requests).
    pub contact: String,
    pub called: String,
}

/// What a 200 OK's SDP says about sbc's side of the media.
pub struct Answer {
    pub rtp: SocketAddr,
    pub key: MasterKey,
}

/// The media address (`c=IN IP4`, `m=audio` port) and the SDES key of the first `a=crypto` line
/// that starts with `crypto` (e.g. `"a=crypto:"` for any, `"a=crypto:1 AES_CM_128_HMAC_SHA1_80 "`
/// for one tag and suite) whose key||salt is the 30 bytes of an AES_CM_128 suite; `None` when
/// any of the three is missing or malformed.
pub fn sdes_media(sdp: &str, crypto: &str) -> Option<(SocketAddr, MasterKey)> {
    let mut ip = None;
    let mut port = None;
    let mut key = None;
    for l in sdp.lines() {
        if let Some(c) = l.strip_prefix("c=IN IP4 ") {
            ip = c.trim().parse::<std::net::Ipv4Addr>().ok();
        } else if let Some(m) = l.strip_prefix("m=audio ") {
            port = m
                .split_whitespace()
                .next()
                .and_then(|p| p.parse::<u16>().ok());
        } else if key.is_none() && l.starts_with(crypto) {
            let Some(inline) = l.split("inline:").nth(1) else {
                continue;
            };
            let b64: String = inline
                .chars()
                .take_while(|c| *c != '|' && !c.is_whitespace())
                .collect();
            let raw = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .ok()
                .filter(|raw| raw.len() == 30)?;
            key = MasterKey::new(&raw[..16], &raw[16..]);
        }
    }
    Some((SocketAddr::from((ip?, port?)), key?))
}

/// sbc's side of the media from a 200 OK's SDP; panics (a test failure) when it is incomplete.
pub fn parse_answer(sdp: &str) -> Answer {
    let (rtp, key) = sdes_media(sdp, "a=crypto:")
        .unwrap_or_else(|| panic!("answer without c=, m=audio or a 30-byte a=crypto key:\n{sdp}"));
    Answer { rtp, key }
}

impl Dialog {
    pub fn new(sbc_port: u16, contact_port: u16, tag: &str) -> Dialog {
        Dialog {
            call_id: format!("raw-{tag}-{}@127.0.0.1", std::process::id()),
            from_tag: format!("ft{tag}"),
            to_tag: String::new(),
            sbc_port,
            contact: format!("<sip:carrier@127.0.0.1:{contact_port};transport=tls>"),
            called: "+15550002222".into(),
        }
    }

    /// An INVITE offering SDES-SRTP (`AES_CM_128_HMAC_SHA1_80`, our `key`) on `rtp_port`.
    pub fn invite(&self, via_port: u16, rtp_port: u16, key: &MasterKey) -> String {
        let mut ks = key.key().to_vec();
        ks.extend_from_slice(key.salt());
        let inline = base64::engine::general_purpose::STANDARD.encode(ks);
        let sdp = format!(
            "v=0\r\no=carrier 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{inline}\r\na=sendrecv\r\n"
        );
        self.request("INVITE", 1, via_port, "z9hG4bKinv", "", &sdp)
    }

    pub fn ack(&self, via_port: u16) -> String {
        self.request("ACK", 1, via_port, "z9hG4bKack", &self.to_tag_param(), "")
    }

    pub fn bye(&self, via_port: u16, cseq: u32) -> String {
        self.request(
            "BYE",
            cseq,
            via_port,
            "z9hG4bKbye",
            &self.to_tag_param(),
            "",
        )
    }

    fn to_tag_param(&self) -> String {
        format!(";tag={}", self.to_tag)
    }

    fn request(
        &self,
        method: &str,
        cseq: u32,
        via_port: u16,
        branch: &str,
        to_tag: &str,
        body: &str,
    ) -> String {
        let ctype = if body.is_empty() {
            String::new()
        } else {
            "Content-Type: application/sdp\r\n".into()
        };
        format!(
            "{method} sip:{called}@127.0.0.1:{port} SIP/2.0\r\n\
             Via: SIP/2.0/TLS 127.0.0.1:{via_port};branch={branch}{cseq}\r\n\
             Max-Forwards: 70\r\n\
             From: <sip:+15550001111@127.0.0.1>;tag={ftag}\r\n\
             To: <sip:{called}@127.0.0.1>{to_tag}\r\n\
             Call-ID: {cid}\r\n\
             CSeq: {cseq} {method}\r\n\
             Contact: {contact}\r\n\
             {ctype}Content-Length: {len}\r\n\r\n{body}",
            called = self.called,
            port = self.sbc_port,
            ftag = self.from_tag,
            cid = self.call_id,
            contact = self.contact,
            len = body.len(),
        )
    }
}

/// Places a call by hand on a new TLS connection to sbc at `127.0.0.1:sbc_port`: INVITE with
/// SDES-SRTP (Contact port `contact_port`), 200 OK, ACK. Returns the connection, the dialog and
/// the running media (sending to sbc, decrypting what comes back).
pub fn place_call(
    pki: &TestPki,
    sbc_port: u16,
    contact_port: u16,
    name: &str,
    timeout: Duration,
) -> (SipConn, Dialog, Media) {
    let mut conn = SipConn::connect(pki, sbc_port);
    let via_port = conn.local_addr().port();
    let mut dialog = Dialog::new(sbc_port, contact_port, name);
    let (sock, rtp_port) = Media::bind();
    let our_key = test_key(7);
    conn.send(&dialog.invite(via_port, rtp_port, &our_key));
    let ok = conn.expect_response(200, "1 INVITE", timeout);
    dialog.to_tag = header(&ok, "To")
        .and_then(tag)
        .unwrap_or_else(|| panic!("200 OK without To tag:\n{ok}"))
        .to_string();
    conn.send(&dialog.ack(via_port));
    let answer = parse_answer(body(&ok));
    let media = Media::start(sock, our_key, answer);
    (conn, dialog, media)
}

/// A response to `request` (Via, From, To, Call-ID, CSeq copied), without a body.
pub fn response_to(request: &str, status: u16, reason: &str) -> String {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = header(request, name) {
            out.push_str(&format!("{name}: {v}\r\n"));
        }
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    out
}

/// SRTP media of one call: sends PCMU every 20 ms under `our_key` to sbc, decrypts what sbc
/// sends back under sbc's key and counts the packets that authenticate.
pub struct Media {
    pub socket_port: u16,
    stop: Arc<AtomicBool>,
    pub sent: Arc<AtomicU64>,
    pub received_ok: Arc<AtomicU64>,
    pub received_bad: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Media {
    /// Binds a UDP port on 127.0.0.1 (its number goes into the offer); sending starts with
    /// [`Media::start`] once the answer is known.
    pub fn bind() -> (UdpSocket, u16) {
        let sock = UdpSocket::bind("127.0.0.1:0").expect("bind media socket");
        let port = sock.local_addr().expect("addr").port();
        (sock, port)
    }

    pub fn start(sock: UdpSocket, our_key: MasterKey, answer: Answer) -> Media {
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let received_ok = Arc::new(AtomicU64::new(0));
        let received_bad = Arc::new(AtomicU64::new(0));
        let socket_port = sock.local_addr().expect("addr").port();
        let (st, se, ok, bad) = (
            Arc::clone(&stop),
            Arc::clone(&sent),
            Arc::clone(&received_ok),
            Arc::clone(&received_bad),
        );
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let thread = std::thread::spawn(move || {
            let mut out = OutboundContext::new(&suite, &our_key).expect("outbound SRTP context");
            let mut inb = InboundContext::new(&suite, &answer.key).expect("inbound SRTP context");
            sock.set_read_timeout(Some(Duration::from_millis(5))).ok();
            let ssrc = 0x5eed_0001;
            let mut seq: u16 = 1000;
            let mut ts: u32 = 0;
            let mut next = Instant::now();
            let mut buf = [0u8; 2048];
            // Bounded: a test that forgets to stop the media ends it after two minutes.
            let hard_stop = Instant::now() + Duration::from_secs(120);
            while !st.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                if Instant::now() >= next {
                    let payload = [0x55u8; 160];
                    let rtp = srtp_bridge::rtp::write_rtp(false, 0, seq, ts, ssrc, &payload);
                    let srtp = out.protect_rtp(&rtp).expect("protect");
                    if sock.send_to(&srtp, answer.rtp).is_ok() {
                        se.fetch_add(1, Ordering::SeqCst);
                    }
                    seq = seq.wrapping_add(1);
                    ts = ts.wrapping_add(160);
                    next += Duration::from_millis(20);
                }
                if let Ok((n, _)) = sock.recv_from(&mut buf) {
                    if srtp_bridge::rtp::is_rtcp(&buf[..n]) {
                        continue;
                    }
                    match inb.unprotect_rtp(&buf[..n]) {
                        Ok(_) => ok.fetch_add(1, Ordering::SeqCst),
                        Err(_) => bad.fetch_add(1, Ordering::SeqCst),
                    };
                }
            }
        });
        Media {
            socket_port,
            stop,
            sent,
            received_ok,
            received_bad,
            thread: Some(thread),
        }
    }

    pub fn received(&self) -> u64 {
        self.received_ok.load(Ordering::SeqCst)
    }

    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::SeqCst)
    }

    /// Waits up to `timeout` until at least `n` packets from sbc authenticated.
    pub fn wait_received(&self, n: u64, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.received() >= n {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh random-enough SRTP master key for a test call (not secret: test traffic only).
pub fn test_key(seed: u8) -> MasterKey {
    let key: Vec<u8> = (0..16)
        .map(|i| seed.wrapping_mul(31).wrapping_add(i))
        .collect();
    let salt: Vec<u8> = (0..14).map(|i| seed.wrapping_add(7 * i)).collect();
    MasterKey::new(&key, &salt).expect("16-byte key, 14-byte salt")
}

/// What a [`CarrierListener`] saw.
#[derive(Debug, Default, Clone)]
pub struct ListenerLog {
    /// Every SIP request received (all connections).
    pub requests: Vec<String>,
    /// TLS handshakes that failed, with rustls' error.
    pub handshake_errors: Vec<String>,
    pub tcp_accepts: usize,
}

/// The carrier's own SIP-over-TLS server (its Contact), on 127.0.0.1: accepts connections from
/// sbc, records each request and answers it 200 OK.
pub struct CarrierListener {
    pub port: u16,
    log: Arc<std::sync::Mutex<ListenerLog>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl CarrierListener {
    /// Serves with `identity`'s certificate (for 127.0.0.1).
    pub fn start(identity: &Identity) -> CarrierListener {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind carrier listener");
        let port = listener.local_addr().expect("addr").port();
        listener.set_nonblocking(true).expect("nonblocking");
        let cfg = Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::aws_lc_rs::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(identity.chain_der.clone(), identity.private_key())
            .expect("listener certificate"),
        );
        let log = Arc::new(std::sync::Mutex::new(ListenerLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (l2, s2) = (Arc::clone(&log), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let hard_stop = Instant::now() + Duration::from_secs(120);
            while !s2.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        l2.lock().unwrap_or_else(|p| p.into_inner()).tcp_accepts += 1;
                        let (cfg, log, stop) = (Arc::clone(&cfg), Arc::clone(&l2), Arc::clone(&s2));
                        std::thread::spawn(move || serve(tcp, cfg, log, stop));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        CarrierListener {
            port,
            log,
            stop,
            thread: Some(thread),
        }
    }

    pub fn log(&self) -> ListenerLog {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Waits up to `timeout` for `pred` to hold on the log.
    pub fn wait(&self, timeout: Duration, pred: impl Fn(&ListenerLog) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.log()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

fn serve(
    tcp: std::net::TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    log: Arc<std::sync::Mutex<ListenerLog>>,
    stop: Arc<AtomicBool>,
) {
    tcp.set_nonblocking(false).ok();
    tcp.set_read_timeout(Some(Duration::from_millis(200))).ok();
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let deadline = Instant::now() + Duration::from_secs(10);
    while tls.conn.is_handshaking() {
        match tls.conn.complete_io(&mut tls.sock) {
            Ok(_) => {}
            Err(e)
                if (e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut)
                    && Instant::now() < deadline => {}
            Err(e) => {
                log.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .handshake_errors
                    .push(e.to_string());
                return;
            }
        }
    }
    let mut buf = Vec::new();
    let hard_stop = Instant::now() + Duration::from_secs(60);
    while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
        let msg = match read_message(&mut tls, &mut buf, Duration::from_millis(200)) {
            Got::Message(m) => m,
            Got::Timeout => continue,
            Got::Closed => return,
        };
        if msg.starts_with("SIP/2.0") {
            continue;
        }
        log.lock()
            .unwrap_or_else(|p| p.into_inner())
            .requests
            .push(msg.clone());
        if !msg.starts_with("ACK ") {
            let _ = tls.write_all(response_to(&msg, 200, "OK").as_bytes());
            let _ = tls.flush();
        }
    }
}

impl Drop for CarrierListener {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
