//! A Twilio-Media-Streams voice agent for tests: a TLS WebSocket server on 127.0.0.1 that records
//! everything sbc sends and behaves as the test asks.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::Message;

use crate::pki::{Identity, TestPki};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AgentBehaviour {
    /// Sends every inbound `media` payload straight back.
    Echo,
    /// Echoes, and closes the WebSocket this long after `start` (sbc must BYE the carrier).
    HangUpAfter(Duration),
    /// Never sends anything.
    Silent,
    /// The server offers only TLS 1.2 (sbc's TLS-1.3-only client must fail).
    Tls12Only,
    /// The server presents a certificate from a CA sbc does not trust.
    UntrustedCert,
    /// Accepts TCP, waits this long, then does the TLS handshake; echoes afterwards.
    DelayAccept(Duration),
    /// Echoes, and requires a client certificate signed by the test CA (mTLS).
    RequireClientCert,
    /// Echoes, and also sends 8 bytes of mu-law silence every interval from `start` until sbc's
    /// Close: sbc always has unread agent data when it ends the call.
    EchoAndStream(Duration),
    /// Echoes until this long after `start`, then stops reading (and writing) its socket for
    /// good, holding it open for up to a minute. Its socket's receive buffer is small (4 KiB), so
    /// sbc's writes block after a few KB.
    StopReadingAfter(Duration),
}

/// SO_RCVBUF of a [`AgentBehaviour::StopReadingAfter`] agent's sockets.
const STALL_RCVBUF: u32 = 4096;

/// Everything one WebSocket connection received.
#[derive(Debug, Clone)]
pub struct AgentConn {
    pub opened: Instant,
    /// The HTTP request path (with query) of the WebSocket upgrade.
    pub path: String,
    /// Every text message, parsed (or `{"unparsed": text}`), with its arrival time.
    pub messages: Vec<(Instant, Value)>,
    /// Decoded `media.payload` of every inbound `media` message.
    pub media: Vec<(Instant, Vec<u8>)>,
    pub binary_frames: usize,
    pub close_frame_received: bool,
    /// When the connection ended (socket closed or error).
    pub closed: Option<Instant>,
    pub error: Option<String>,
    /// When a [`AgentBehaviour::StopReadingAfter`] agent stopped reading.
    pub stalled: Option<Instant>,
}

impl AgentConn {
    /// The `event` names in arrival order.
    pub fn events(&self) -> Vec<String> {
        self.messages
            .iter()
            .map(|(_, v)| v["event"].as_str().unwrap_or("?").to_string())
            .collect()
    }

    pub fn first(&self, event: &str) -> Option<&Value> {
        self.messages
            .iter()
            .map(|(_, v)| v)
            .find(|v| v["event"] == event)
    }

    pub fn all(&self, event: &str) -> Vec<&Value> {
        self.messages
            .iter()
            .map(|(_, v)| v)
            .filter(|v| v["event"] == event)
            .collect()
    }

    pub fn stream_sid(&self) -> Option<String> {
        self.first("start")
            .and_then(|v| v["start"]["streamSid"].as_str().or(v["streamSid"].as_str()))
            .map(str::to_string)
    }
}

#[derive(Default)]
struct Shared {
    conns: Vec<AgentConn>,
    senders: Vec<mpsc::UnboundedSender<Message>>,
    handshake_errors: Vec<String>,
    tcp_accepts: usize,
}

pub struct TestAgent {
    pub port: u16,
    shared: Arc<Mutex<Shared>>,
    runtime: Option<tokio::runtime::Runtime>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn server_config(
    id: &Identity,
    tls12_only: bool,
    client_ca: Option<&rustls_pki_types::CertificateDer<'static>>,
) -> rustls::ServerConfig {
    let versions: &[&rustls::SupportedProtocolVersion] = if tls12_only {
        &[&rustls::version::TLS12]
    } else {
        &[&rustls::version::TLS13, &rustls::version::TLS12]
    };
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(versions)
        .expect("versions");
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.clone()).expect("client CA");
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .expect("client verifier");
            builder.with_client_cert_verifier(verifier)
        }
    };
    builder
        .with_single_cert(id.chain_der.clone(), id.private_key())
        .expect("agent server config")
}

impl TestAgent {
    pub fn start(pki: &TestPki, behaviour: AgentBehaviour) -> TestAgent {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("agent runtime");
        let config = match behaviour {
            AgentBehaviour::Tls12Only => server_config(&pki.agent, true, None),
            AgentBehaviour::UntrustedCert => server_config(&pki.untrusted_agent, false, None),
            AgentBehaviour::RequireClientCert => {
                server_config(&pki.agent, false, Some(&pki.ca_der))
            }
            _ => server_config(&pki.agent, false, None),
        };
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = runtime
            .block_on(async {
                if matches!(behaviour, AgentBehaviour::StopReadingAfter(_)) {
                    // Accepted sockets inherit the listener's receive buffer.
                    let sock = tokio::net::TcpSocket::new_v4()?;
                    sock.set_recv_buffer_size(STALL_RCVBUF)?;
                    sock.bind("127.0.0.1:0".parse().expect("addr"))?;
                    sock.listen(64)
                } else {
                    TcpListener::bind("127.0.0.1:0").await
                }
            })
            .expect("bind agent");
        let port = listener.local_addr().expect("addr").port();
        let shared = Arc::new(Mutex::new(Shared::default()));
        let sh = shared.clone();
        runtime.spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                sh.lock().unwrap().tcp_accepts += 1;
                tokio::spawn(handle(tcp, acceptor.clone(), behaviour, sh.clone()));
            }
        });
        TestAgent {
            port,
            shared,
            runtime: Some(runtime),
        }
    }

    pub fn url(&self) -> String {
        format!("wss://127.0.0.1:{}/ws", self.port)
    }

    /// A snapshot of every connection so far.
    pub fn connections(&self) -> Vec<AgentConn> {
        self.shared.lock().unwrap().conns.clone()
    }

    pub fn handshake_errors(&self) -> Vec<String> {
        self.shared.lock().unwrap().handshake_errors.clone()
    }

    pub fn tcp_accepts(&self) -> usize {
        self.shared.lock().unwrap().tcp_accepts
    }

    /// Waits up to `timeout` until `pred` holds for the connections; returns them (panics with
    /// `what` and a summary on timeout).
    pub fn wait_for(
        &self,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[AgentConn]) -> bool,
    ) -> Vec<AgentConn> {
        let deadline = Instant::now() + timeout;
        loop {
            let conns = self.connections();
            if pred(&conns) {
                return conns;
            }
            if Instant::now() > deadline {
                let summary: Vec<String> = conns
                    .iter()
                    .map(|c| {
                        format!(
                            "events={:?} media={} closed={} err={:?}",
                            c.events()
                                .into_iter()
                                .filter(|e| e != "media")
                                .collect::<Vec<_>>(),
                            c.media.len(),
                            c.closed.is_some(),
                            c.error
                        )
                    })
                    .collect();
                panic!(
                    "test agent: {what}: not within {timeout:?}; connections: {summary:#?}; handshake errors: {:?}",
                    self.handshake_errors()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Sends a text message on connection `idx`.
    pub fn send_json(&self, idx: usize, v: Value) {
        let sh = self.shared.lock().unwrap();
        sh.senders[idx]
            .send(Message::text(v.to_string()))
            .expect("connection gone");
    }

    /// Sends a raw text frame on connection `idx`.
    pub fn send_text(&self, idx: usize, text: &str) {
        let sh = self.shared.lock().unwrap();
        sh.senders[idx]
            .send(Message::text(text.to_string()))
            .expect("connection gone");
    }

    /// Sends `{"event":"mark","streamSid":..,"mark":{"name":name}}` on connection `idx`.
    pub fn send_mark(&self, idx: usize, name: &str) {
        let sid = self.connections()[idx].stream_sid().unwrap_or_default();
        self.send_json(
            idx,
            json!({"event": "mark", "streamSid": sid, "mark": {"name": name}}),
        );
    }

    /// Sends `{"event":"clear","streamSid":..}` on connection `idx`.
    pub fn send_clear(&self, idx: usize) {
        let sid = self.connections()[idx].stream_sid().unwrap_or_default();
        self.send_json(idx, json!({"event": "clear", "streamSid": sid}));
    }

    /// Sends agent audio (`media` with `payload`) on connection `idx`.
    pub fn send_media(&self, idx: usize, audio: &[u8]) {
        let sid = self.connections()[idx].stream_sid().unwrap_or_default();
        let payload = base64::engine::general_purpose::STANDARD.encode(audio);
        self.send_json(
            idx,
            json!({"event": "media", "streamSid": sid, "media": {"payload": payload}}),
        );
    }

    /// Closes connection `idx` (agent hang-up).
    pub fn close(&self, idx: usize) {
        let sh = self.shared.lock().unwrap();
        let _ = sh.senders[idx].send(Message::Close(None));
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_timeout(Duration::from_secs(1));
        }
    }
}

async fn handle(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    behaviour: AgentBehaviour,
    sh: Arc<Mutex<Shared>>,
) {
    if let AgentBehaviour::DelayAccept(d) = behaviour {
        tokio::time::sleep(d).await;
    }
    let tls = match acceptor.accept(tcp).await {
        Ok(t) => t,
        Err(e) => {
            sh.lock().unwrap().handshake_errors.push(e.to_string());
            return;
        }
    };
    let path = Arc::new(Mutex::new(String::new()));
    let p2 = path.clone();
    #[allow(clippy::result_large_err)]
    let cb = move |req: &tokio_tungstenite::tungstenite::handshake::server::Request,
                   resp: tokio_tungstenite::tungstenite::handshake::server::Response| {
        *p2.lock().unwrap() = req.uri().to_string();
        Ok(resp)
    };
    let ws = match tokio_tungstenite::accept_hdr_async(tls, cb).await {
        Ok(ws) => ws,
        Err(e) => {
            sh.lock()
                .unwrap()
                .handshake_errors
                .push(format!("websocket: {e}"));
            return;
        }
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let idx = {
        let mut s = sh.lock().unwrap();
        s.conns.push(AgentConn {
            opened: Instant::now(),
            path: path.lock().unwrap().clone(),
            messages: Vec::new(),
            media: Vec::new(),
            binary_frames: 0,
            close_frame_received: false,
            closed: None,
            error: None,
            stalled: None,
        });
        s.senders.push(tx);
        s.conns.len() - 1
    };
    let echo = !matches!(behaviour, AgentBehaviour::Silent);
    let hang_up_after = match behaviour {
        AgentBehaviour::HangUpAfter(d) => Some(d),
        _ => None,
    };
    let stream_every = match behaviour {
        AgentBehaviour::EchoAndStream(d) => Some(d),
        _ => None,
    };
    let mut ticker = tokio::time::interval(stream_every.unwrap_or(Duration::from_secs(3600)));
    let mut streaming = false;
    let mut stream_sid = Value::Null;
    let (mut sink, mut stream) = ws.split();
    let hangup = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(hangup);
    let mut hangup_armed = false;
    let stop_reading_after = match behaviour {
        AgentBehaviour::StopReadingAfter(d) => Some(d),
        _ => None,
    };
    let stall = tokio::time::sleep(Duration::from_secs(3600));
    tokio::pin!(stall);
    let mut stall_armed = false;
    let mut error = None;
    loop {
        tokio::select! {
            m = stream.next() => match m {
                Some(Ok(Message::Text(t))) => {
                    let now = Instant::now();
                    let v: Value = serde_json::from_str(t.as_str())
                        .unwrap_or_else(|_| json!({"unparsed": t.as_str()}));
                    let mut reply = None;
                    {
                        let mut s = sh.lock().unwrap();
                        let c = &mut s.conns[idx];
                        if v["event"] == "media" {
                            let payload = v["media"]["payload"].as_str().unwrap_or("");
                            match base64::engine::general_purpose::STANDARD.decode(payload) {
                                Ok(bytes) => c.media.push((now, bytes)),
                                Err(e) => c.error = Some(format!("bad base64 payload: {e}")),
                            }
                            if echo {
                                reply = Some(json!({
                                    "event": "media",
                                    "streamSid": v["streamSid"],
                                    "media": {"payload": payload},
                                }));
                            }
                        }
                        if v["event"] == "start" {
                            streaming = stream_every.is_some();
                            stream_sid = v["streamSid"].clone();
                            if let Some(d) = hang_up_after {
                                hangup.as_mut().reset(tokio::time::Instant::now() + d);
                                hangup_armed = true;
                            }
                            if let Some(d) = stop_reading_after {
                                stall.as_mut().reset(tokio::time::Instant::now() + d);
                                stall_armed = true;
                            }
                        }
                        c.messages.push((now, v));
                    }
                    if let Some(r) = reply {
                        if let Err(e) = sink.send(Message::text(r.to_string())).await {
                            error = Some(format!("send: {e}"));
                            break;
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => sh.lock().unwrap().conns[idx].binary_frames += 1,
                Some(Ok(Message::Close(_))) => {
                    streaming = false;
                    sh.lock().unwrap().conns[idx].close_frame_received = true;
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    error = Some(e.to_string());
                    break;
                }
                None => break,
            },
            out = rx.recv() => {
                if let Some(m) = out {
                    let is_close = matches!(m, Message::Close(_));
                    if let Err(e) = sink.send(m).await {
                        error = Some(format!("send: {e}"));
                        break;
                    }
                    if is_close {
                        let _ = sink.flush().await;
                    }
                }
            }
            _ = ticker.tick(), if streaming => {
                let m = json!({
                    "event": "media",
                    "streamSid": stream_sid,
                    "media": {"payload": "//////////8="},
                });
                if let Err(e) = sink.send(Message::text(m.to_string())).await {
                    error = Some(format!("send: {e}"));
                    break;
                }
            }
            _ = &mut stall, if stall_armed => {
                sh.lock().unwrap().conns[idx].stalled = Some(Instant::now());
                // Hold the socket without reading it; sbc must give up on us first.
                tokio::time::sleep(Duration::from_secs(60)).await;
                break;
            }
            _ = &mut hangup, if hangup_armed => {
                hangup_armed = false;
                let _ = sink.send(Message::Close(None)).await;
                let _ = sink.flush().await;
            }
        }
    }
    let mut s = sh.lock().unwrap();
    s.conns[idx].closed = Some(Instant::now());
    if s.conns[idx].error.is_none() {
        s.conns[idx].error = error;
    }
}
