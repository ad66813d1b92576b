//! A termination trunk for sbc's outbound calls (issue 15), written here rather than with SIPp
//! because SIPp's `verifyauth` checks `Authorization`, not `Proxy-Authorization`
//! (/work/shared/FACTS.md). It listens for SIP over TLS on 127.0.0.1, challenges every INVITE
//! without credentials with `407 Proxy Authentication Required`, checks `Proxy-Authorization`
//! with its own MD5 computation (the system's `md5sum`, independent of sbc's digest code), and
//! then behaves as the test asks: answer with SDES-SRTP and run media (PCMU every 20 ms under
//! its own key, counting the packets from sbc that authenticate under sbc's key), answer busy,
//! ring forever, answer with plain RTP, or send the SDES answer and media in a 183 first and
//! the 200 later (early media).

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use srtp_bridge::MasterKey;

use crate::pki::Identity;
use crate::rawcall::{self, header, Answer, Got, Media};

/// What the trunk does with an authenticated INVITE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TrunkBehaviour {
    /// 180, then 200 with an SDES answer (`AES_CM_128_HMAC_SHA1_80`, the offer's tag 1); media.
    Answer,
    /// 180, then 486 Busy Here.
    Busy,
    /// 180 and nothing more (the caller's ring timeout sends CANCEL: 200, then 487).
    Ring,
    /// 200 with `RTP/AVP` and no crypto line.
    PlainRtp,
    /// 183 with the SDES answer and media at once, then [`EARLY_MEDIA_FOR`] later the 200 with
    /// the same SDP (early media, RFC 3960 gateway model).
    EarlyMedia,
    /// As [`TrunkBehaviour::EarlyMedia`], but [`EARLY_MEDIA_FOR`] after the 183 comes 486 Busy
    /// Here instead of the 200.
    EarlyMediaBusy,
    /// 183 with the SDES answer and media, and no final response (the caller's ring timeout
    /// sends CANCEL: 200, then 487).
    EarlyMediaRing,
}

impl TrunkBehaviour {
    /// Sends the SDES answer and media in a 183.
    fn early(self) -> bool {
        matches!(
            self,
            TrunkBehaviour::EarlyMedia
                | TrunkBehaviour::EarlyMediaBusy
                | TrunkBehaviour::EarlyMediaRing
        )
    }
}

/// How long [`TrunkBehaviour::EarlyMedia`] plays media before its 200.
pub const EARLY_MEDIA_FOR: Duration = Duration::from_secs(2);

pub const REALM: &str = "trunk.test";
const NONCE: &str = "5f1e4b9a0c7d";

/// What the trunk saw.
#[derive(Debug, Default, Clone)]
pub struct TrunkLog {
    /// Every request, with when it arrived.
    pub requests: Vec<(Instant, String)>,
    /// INVITEs whose `Proxy-Authorization` checked out / did not.
    pub auth_ok: usize,
    pub auth_bad: usize,
    /// When each 200 to an INVITE went out.
    pub answers: Vec<Instant>,
}

impl TrunkLog {
    pub fn methods(&self) -> Vec<String> {
        self.requests
            .iter()
            .map(|(_, r)| r.split(' ').next().unwrap_or("").to_string())
            .collect()
    }

    /// Arrival times of INVITEs without credentials (one per call).
    pub fn first_invites(&self) -> Vec<Instant> {
        self.requests
            .iter()
            .filter(|(_, r)| r.starts_with("INVITE ") && header(r, "Proxy-Authorization").is_none())
            .map(|(t, _)| *t)
            .collect()
    }
}

struct State {
    log: TrunkLog,
    media: Vec<Media>,
}

pub struct TestTrunk {
    pub port: u16,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestTrunk {
    /// Serves with `identity` (a certificate for 127.0.0.1 from the test CA); the digest
    /// credentials it accepts are `username`/`password`.
    pub fn start(
        identity: &Identity,
        behaviour: TrunkBehaviour,
        username: &str,
        password: &str,
    ) -> TestTrunk {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind trunk");
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
            .expect("trunk certificate"),
        );
        let state = Arc::new(Mutex::new(State {
            log: TrunkLog::default(),
            media: Vec::new(),
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, sp) = (Arc::clone(&state), Arc::clone(&stop));
        let creds = (username.to_string(), password.to_string());
        let thread = std::thread::spawn(move || {
            let hard_stop = Instant::now() + Duration::from_secs(120);
            while !sp.load(Ordering::SeqCst) && Instant::now() < hard_stop {
                match listener.accept() {
                    Ok((tcp, _)) => {
                        let (cfg, st, sp, creds) = (
                            Arc::clone(&cfg),
                            Arc::clone(&st),
                            Arc::clone(&sp),
                            creds.clone(),
                        );
                        std::thread::spawn(move || serve(tcp, cfg, st, sp, behaviour, port, creds));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TestTrunk {
            port,
            state,
            stop,
            thread: Some(thread),
        }
    }

    pub fn log(&self) -> TrunkLog {
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .clone()
    }

    pub fn wait(&self, timeout: Duration, pred: impl Fn(&TrunkLog) -> bool) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if pred(&self.log()) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }

    /// SRTP packets from sbc that authenticated under sbc's offered key, over all calls.
    pub fn media_received(&self) -> u64 {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.media.iter().map(|m| m.received()).sum()
    }

    pub fn media_sent(&self) -> u64 {
        let g = self.state.lock().unwrap_or_else(|p| p.into_inner());
        g.media.iter().map(|m| m.sent()).sum()
    }
}

impl Drop for TestTrunk {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .media
            .clear();
    }
}

/// MD5 of `s` in hex, by the system's `md5sum`.
pub fn md5_hex(s: &str) -> String {
    let mut child = std::process::Command::new("md5sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run md5sum");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(s.as_bytes())
        .expect("write md5sum");
    let out = child.wait_with_output().expect("md5sum output");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string()
}

/// `name=value` or `name="value"` from a Digest header.
fn digest_param(h: &str, name: &str) -> Option<String> {
    let rest = h.trim().strip_prefix("Digest")?;
    rest.split(',').find_map(|p| {
        let (k, v) = p.trim().split_once('=')?;
        (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().trim_matches('"').to_string())
    })
}

/// RFC 2617 §3.2.2 with qop=auth, computed here from the header's own fields.
fn check_auth(h: &str, method: &str, user: &str, password: &str) -> bool {
    let get = |n| digest_param(h, n).unwrap_or_default();
    if get("username") != user || get("realm") != REALM || get("nonce") != NONCE {
        return false;
    }
    let ha1 = md5_hex(&format!("{user}:{REALM}:{password}"));
    let ha2 = md5_hex(&format!("{method}:{}", get("uri")));
    let want = md5_hex(&format!(
        "{ha1}:{NONCE}:{}:{}:{}:{ha2}",
        get("nc"),
        get("cnonce"),
        get("qop")
    ));
    get("qop") == "auth" && get("response") == want
}

/// A response to `req` with extra header lines and an optional SDP body; `to_tag` is added to To.
fn respond(
    req: &str,
    status: u16,
    reason: &str,
    to_tag: Option<&str>,
    extra: &str,
    sdp: &str,
) -> String {
    let mut out = format!("SIP/2.0 {status} {reason}\r\n");
    for name in ["Via", "From", "To", "Call-ID", "CSeq"] {
        if let Some(v) = header(req, name) {
            match (name, to_tag) {
                ("To", Some(t)) if !v.contains("tag=") => {
                    out.push_str(&format!("To: {v};tag={t}\r\n"))
                }
                _ => out.push_str(&format!("{name}: {v}\r\n")),
            }
        }
    }
    out.push_str(extra);
    if sdp.is_empty() {
        out.push_str("Content-Length: 0\r\n\r\n");
    } else {
        out.push_str(&format!(
            "Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        ));
    }
    out
}

fn serve(
    tcp: std::net::TcpStream,
    cfg: Arc<rustls::ServerConfig>,
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    behaviour: TrunkBehaviour,
    port: u16,
    (user, password): (String, String),
) {
    tcp.set_nonblocking(false).ok();
    tcp.set_read_timeout(Some(Duration::from_millis(100))).ok();
    let Ok(conn) = rustls::ServerConnection::new(cfg) else {
        return;
    };
    let mut tls = rustls::StreamOwned::new(conn, tcp);
    let mut buf = Vec::new();
    let hard_stop = Instant::now() + Duration::from_secs(60);
    let mut invite: Option<String> = None;
    // EarlyMedia: the 200 (or EarlyMediaBusy's 486) due after the 183.
    let mut pending_answer: Option<(Instant, String)> = None;
    let to_tag = format!("trk{}", port);
    let send = |tls: &mut rustls::StreamOwned<rustls::ServerConnection, std::net::TcpStream>,
                m: String| {
        let _ = tls.write_all(m.as_bytes());
        let _ = tls.flush();
    };
    while !stop.load(Ordering::SeqCst) && Instant::now() < hard_stop {
        if pending_answer
            .as_ref()
            .is_some_and(|(at, _)| Instant::now() >= *at)
        {
            if let Some((_, fin)) = pending_answer.take() {
                let answer = fin.starts_with("SIP/2.0 200");
                send(&mut tls, fin);
                if answer {
                    state
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .log
                        .answers
                        .push(Instant::now());
                }
            }
        }
        let msg = match rawcall::read_message(&mut tls, &mut buf, Duration::from_millis(50)) {
            Got::Message(m) => m,
            Got::Timeout => continue,
            Got::Closed => return,
        };
        if msg.starts_with("SIP/2.0") {
            continue;
        }
        let method = msg.split(' ').next().unwrap_or("").to_string();
        state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .log
            .requests
            .push((Instant::now(), msg.clone()));
        match method.as_str() {
            "INVITE" => {
                let authorized = header(&msg, "Proxy-Authorization")
                    .map(|h| check_auth(h, "INVITE", &user, &password));
                if authorized.is_some() {
                    let mut g = state.lock().unwrap_or_else(|p| p.into_inner());
                    if authorized == Some(true) {
                        g.log.auth_ok += 1;
                    } else {
                        g.log.auth_bad += 1;
                    }
                }
                if authorized != Some(true) {
                    let challenge = format!(
                        "Proxy-Authenticate: Digest realm=\"{REALM}\", nonce=\"{NONCE}\", qop=\"auth\", algorithm=MD5\r\n"
                    );
                    send(
                        &mut tls,
                        respond(
                            &msg,
                            407,
                            "Proxy Authentication Required",
                            Some(&to_tag),
                            &challenge,
                            "",
                        ),
                    );
                    continue;
                }
                invite = Some(msg.clone());
                let contact = format!("Contact: <sip:trunk@127.0.0.1:{port};transport=tls>\r\n");
                send(
                    &mut tls,
                    respond(&msg, 180, "Ringing", Some(&to_tag), &contact, ""),
                );
                match behaviour {
                    TrunkBehaviour::Ring => {}
                    TrunkBehaviour::Busy => send(
                        &mut tls,
                        respond(&msg, 486, "Busy Here", Some(&to_tag), "", ""),
                    ),
                    TrunkBehaviour::PlainRtp => {
                        let sdp = "v=0\r\no=trunk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 40000 RTP/AVP 0\r\na=rtpmap:0 PCMU/8000\r\n";
                        send(
                            &mut tls,
                            respond(&msg, 200, "OK", Some(&to_tag), &contact, sdp),
                        );
                    }
                    TrunkBehaviour::Answer
                    | TrunkBehaviour::EarlyMedia
                    | TrunkBehaviour::EarlyMediaBusy
                    | TrunkBehaviour::EarlyMediaRing => {
                        let Some((sbc_rtp, sbc_key)) = rawcall::sdes_media(
                            rawcall::body(&msg),
                            "a=crypto:1 AES_CM_128_HMAC_SHA1_80 ",
                        ) else {
                            send(
                                &mut tls,
                                respond(&msg, 488, "Not Acceptable Here", Some(&to_tag), "", ""),
                            );
                            continue;
                        };
                        let (sock, rtp_port) = Media::bind();
                        let ours: Vec<u8> = (0..30u8)
                            .map(|i| i.wrapping_mul(13).wrapping_add(5))
                            .collect();
                        let our_key = MasterKey::new(&ours[..16], &ours[16..]).expect("key");
                        let b64 = base64::engine::general_purpose::STANDARD.encode(&ours);
                        let sdp = format!(
                            "v=0\r\no=trunk 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                             m=audio {rtp_port} RTP/SAVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n\
                             a=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=sendrecv\r\n\
                             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{b64}\r\n"
                        );
                        let ok = respond(&msg, 200, "OK", Some(&to_tag), &contact, &sdp);
                        if behaviour.early() {
                            send(
                                &mut tls,
                                respond(
                                    &msg,
                                    183,
                                    "Session Progress",
                                    Some(&to_tag),
                                    &contact,
                                    &sdp,
                                ),
                            );
                            let fin = match behaviour {
                                TrunkBehaviour::EarlyMediaBusy => {
                                    Some(respond(&msg, 486, "Busy Here", Some(&to_tag), "", ""))
                                }
                                TrunkBehaviour::EarlyMediaRing => None,
                                _ => Some(ok),
                            };
                            pending_answer = fin.map(|f| (Instant::now() + EARLY_MEDIA_FOR, f));
                        } else {
                            send(&mut tls, ok);
                            state
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .log
                                .answers
                                .push(Instant::now());
                        }
                        let media = Media::start(
                            sock,
                            our_key,
                            Answer {
                                rtp: sbc_rtp,
                                key: sbc_key,
                            },
                        );
                        state
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .media
                            .push(media);
                    }
                }
            }
            "CANCEL" => {
                pending_answer = None;
                send(&mut tls, respond(&msg, 200, "OK", Some(&to_tag), "", ""));
                if let Some(inv) = invite.take() {
                    send(
                        &mut tls,
                        respond(&inv, 487, "Request Terminated", Some(&to_tag), "", ""),
                    );
                }
            }
            "ACK" => {}
            "BYE" => {
                send(&mut tls, respond(&msg, 200, "OK", None, "", ""));
                // Media stops: the test reads the counters first, then drops the trunk.
            }
            _ => send(&mut tls, respond(&msg, 200, "OK", None, "", "")),
        }
    }
}
