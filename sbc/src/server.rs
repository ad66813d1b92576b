//! The tokio shell: listeners, connections, admission, the Call-ID → mailbox map, shutdown.
//!
//! One task per TLS connection reads and frames SIP and routes each message: to the call task that
//! owns its Call-ID, or, for a new INVITE, to a new call task. One task per call owns everything of
//! that call (`call.rs`). The only shared map is Call-ID → mailbox.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, error, info, info_span, warn, Instrument};

use crate::audit::{Audit, CallRecord, Decision, SipTls};
use crate::call::{self, CallInput};
use crate::config::{CarrierConfig, Config};
use crate::metrics as m;
use crate::ports::PortPool;
use crate::sip::framing::{Frame, FrameError, Framer};
use crate::sip::{strict, Method, Request, Response, SipMessage, UasConfig};

/// Errors that stop the daemon at start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A configuration or certificate problem found while starting.
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    /// A listener could not bind.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    /// The audit log could not be opened.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// The metrics listener could not start.
    #[error("{0}")]
    Metrics(String),
}

/// Per-carrier admission state.
pub struct CarrierState {
    pub config: CarrierConfig,
    pub active: AtomicU32,
    /// Token bucket for `max_calls_per_second`: (tokens, last refill).
    bucket: Mutex<(f64, Instant)>,
}

impl CarrierState {
    fn take_token(&self, now: Instant) -> bool {
        let rate = f64::from(self.config.max_calls_per_second.max(1));
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let elapsed = now.saturating_duration_since(b.1).as_secs_f64();
        b.0 = (b.0 + elapsed * rate).min(rate);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

/// What a reload (SIGHUP) replaces as a whole. Tasks take a snapshot (`Shared::live`); a call
/// keeps the snapshot it started with, so calls in progress are not disturbed by a reload.
pub struct Live {
    pub config: Arc<Config>,
    pub acceptor: TlsAcceptor,
    pub agent_tls: Arc<rustls::ClientConfig>,
    pub carrier_tls: Arc<rustls::ClientConfig>,
    pub carriers: Vec<Arc<CarrierState>>,
}

impl Live {
    /// Builds every TLS config and carrier state from `config`; fails without side effects.
    fn build(config: Config, previous: Option<&Live>) -> Result<Live, ServerError> {
        let sip_tls = crate::tls::sip_server_config(&config.tls, &config.sip)?;
        let agent_tls = crate::tls::agent_client_config(&config.agent)?;
        let carrier_tls = crate::tls::carrier_client_config(&config.tls)?;
        let carriers = config
            .carriers
            .iter()
            .map(|c| {
                // Keep the live call count of a carrier that survives the reload.
                let active = previous
                    .and_then(|p| p.carriers.iter().find(|o| o.config.name == c.name))
                    .map(|o| o.active.load(Ordering::SeqCst))
                    .unwrap_or(0);
                Arc::new(CarrierState {
                    config: c.clone(),
                    active: AtomicU32::new(active),
                    bucket: Mutex::new((f64::from(c.max_calls_per_second), Instant::now())),
                })
            })
            .collect();
        Ok(Live {
            config: Arc::new(config),
            acceptor: TlsAcceptor::from(sip_tls),
            agent_tls,
            carrier_tls,
            carriers,
        })
    }
}

/// State shared by connection and call tasks.
pub struct Shared {
    live: std::sync::RwLock<Arc<Live>>,
    pub audit: Audit,
    pub ports: Arc<PortPool>,
    pub uas: UasConfig,
    calls: Mutex<HashMap<String, mpsc::Sender<CallInput>>>,
    per_ip: Mutex<HashMap<IpAddr, u32>>,
    pub active_calls: AtomicU32,
    pub draining: AtomicBool,
    next_id: AtomicU64,
}

impl Shared {
    /// The current configuration snapshot.
    pub fn live(&self) -> Arc<Live> {
        Arc::clone(&self.live.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Re-reads the configuration file and swaps it in atomically; on any error the running
    /// configuration stays. Listen addresses, the media port range, SIP timers and the audit
    /// sink need a restart (a change to them is logged and ignored).
    pub fn reload(&self) -> Result<(), ServerError> {
        let old = self.live();
        let config = Config::load(&old.config.path)?;
        if config.sip.listen != old.config.sip.listen
            || config.media.port_first != old.config.media.port_first
            || config.media.port_last != old.config.media.port_last
        {
            warn!("reload: listen addresses and the media port range change only on restart");
        }
        let live = Live::build(config, Some(&old))?;
        *self.live.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(live);
        Ok(())
    }

    fn carrier_for(&self, ip: IpAddr) -> Option<Arc<CarrierState>> {
        let ip = canonical_ip(ip);
        self.live()
            .carriers
            .iter()
            .find(|c| c.config.sources.iter().any(|net| net.contains(&ip)))
            .cloned()
    }

    /// A fresh identifier (connections, calls).
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Removes a call from the Call-ID map (called by the call task on exit).
    pub fn unregister(&self, sip_call_id: &str) {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(sip_call_id);
    }

    pub(crate) fn lookup(&self, sip_call_id: &str) -> Option<mpsc::Sender<CallInput>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(sip_call_id)
            .filter(|tx| !tx.is_closed())
            .cloned()
    }

    fn all_calls(&self) -> Vec<mpsc::Sender<CallInput>> {
        self.calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .cloned()
            .collect()
    }
}

/// IPv4-mapped IPv6 addresses (dual-stack sockets) compare as IPv4.
fn canonical_ip(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

/// The sending half of a carrier connection. Responses go back on the connection the request came
/// on (RFC 3261 §18.2.2); the call task keeps the latest one for its in-dialog requests.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    tx: mpsc::Sender<Bytes>,
}

impl ConnHandle {
    /// Queues a message; false when the connection is gone or hopelessly backed up.
    pub fn send(&self, msg: &SipMessage) -> bool {
        if let SipMessage::Response(r) = msg {
            m::sip_response(r.status);
        }
        self.tx.try_send(Bytes::from(msg.to_bytes())).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Runs the daemon until SIGTERM/SIGINT, then drains.
pub async fn run(config: Config) -> Result<(), ServerError> {
    let live = Live::build(config, None)?;
    let config = Arc::clone(&live.config);
    let audit = Audit::open(&config.audit)?;
    if let Some(mc) = &config.metrics {
        m::install(mc.listen).map_err(ServerError::Metrics)?;
    }
    let uas = UasConfig {
        t1: config.sip.t1,
        t2: config.sip.t2,
        t4: config.sip.t4,
        host: config.sip.host.clone(),
        port: config.sip.listen.first().map(|a| a.port()).unwrap_or(5061),
        server_header: config.sip.server_header.clone(),
        session_expires: config.sip.session_expires,
        min_se: config.sip.min_se,
    };
    let shared = Arc::new(Shared {
        live: std::sync::RwLock::new(Arc::new(live)),
        audit,
        ports: PortPool::new(
            config.media.bind_address,
            config.media.port_first,
            config.media.port_last,
        ),
        uas,
        calls: Mutex::new(HashMap::new()),
        per_ip: Mutex::new(HashMap::new()),
        active_calls: AtomicU32::new(0),
        draining: AtomicBool::new(false),
        next_id: AtomicU64::new(1),
    });

    let mut listeners = Vec::new();
    for addr in &config.sip.listen {
        let l = bind_listener(*addr).map_err(|source| ServerError::Bind {
            addr: *addr,
            source,
        })?;
        info!(%addr, "SIP over TLS listening");
        listeners.push(tokio::spawn(accept_loop(l, Arc::clone(&shared))));
    }

    wait_for_shutdown_signal(&shared).await;
    info!("shutdown requested: refusing new calls, draining active calls");
    shared.draining.store(true, Ordering::SeqCst);
    let drain_deadline = Instant::now() + config.limits.drain_timeout;
    while shared.active_calls.load(Ordering::SeqCst) > 0 && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let remaining = shared.all_calls();
    if !remaining.is_empty() {
        info!(
            calls = remaining.len(),
            "drain timeout: hanging up remaining calls"
        );
        for tx in remaining {
            let _ = tx.try_send(CallInput::Hangup(crate::sip::HangupCause::Shutdown));
        }
        // Give the BYEs a moment and the call tasks time to write their end records.
        let hard = Instant::now() + Duration::from_secs(5);
        while shared.active_calls.load(Ordering::SeqCst) > 0 && Instant::now() < hard {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    for l in listeners {
        l.abort();
    }
    info!("sbc stopped");
    Ok(())
}

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

/// Waits for SIGTERM or SIGINT; SIGHUP reloads the configuration meanwhile.
async fn wait_for_shutdown_signal(shared: &Shared) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = signal(SignalKind::hangup()).ok();
    match signal(SignalKind::terminate()) {
        Ok(mut term) => loop {
            tokio::select! {
                _ = term.recv() => return,
                _ = tokio::signal::ctrl_c() => return,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => {
                    match shared.reload() {
                        Ok(()) => info!("configuration reloaded"),
                        Err(e) => error!(error = %e, "reload refused: the running configuration stays"),
                    }
                }
            }
        },
        Err(e) => {
            warn!(error = %e, "cannot install SIGTERM handler; only Ctrl-C stops sbc");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { serve_connection(shared, tcp, peer).await });
    }
}

/// Decrements the per-IP connection count on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let ip = canonical_ip(peer.ip());
    let live = shared.live();
    // The source check comes before the TLS handshake and before any SIP is parsed.
    let Some(carrier) = shared.carrier_for(ip) else {
        info!(%peer, "connection from a source no carrier allows: closed");
        m::connection_refused("source_not_allowed");
        return;
    };
    let _slot = {
        let mut map = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= live.config.limits.max_connections_per_ip {
            drop(map);
            warn!(%peer, limit = live.config.limits.max_connections_per_ip, "too many connections from this address: closed");
            m::connection_refused("per_ip_limit");
            return;
        }
        *n += 1;
        IpSlot {
            shared: Arc::clone(&shared),
            ip,
        }
    };
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(
        live.config.limits.tls_handshake_timeout,
        live.acceptor.accept(tcp),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            m::tls_handshake("none", "none", "failed");
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            m::tls_handshake("none", "none", "timeout");
            m::connection_refused("handshake_timeout");
            return;
        }
    };
    let sip_tls = {
        let conn = tls.get_ref().1;
        let (version, cipher) = crate::tls::negotiated(conn);
        SipTls {
            version,
            cipher,
            sni: conn.server_name().map(str::to_string),
            client_cert_subject: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|_| "present".to_string()),
        }
    };
    m::tls_handshake(&sip_tls.version, &sip_tls.cipher, "ok");
    if !carrier.config.certificate_names.is_empty() {
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if !certificate_names_match(leaf, &carrier.config.certificate_names) {
            warn!(%peer, carrier = %carrier.config.name, "carrier client certificate missing or not for an expected name: closed");
            m::connection_refused("certificate_name");
            return;
        }
    }
    run_connection(shared, carrier, sip_tls, tls, peer, None).await;
}

/// Opens a TLS connection to a carrier for a request sbc originates when the dialog's connection
/// is gone (RFC 3261 §18.1.1: a new connection to the target). The carrier's certificate is
/// verified (`tls::carrier_client_config`). Responses on it are routed like any other.
pub async fn connect_outbound(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    host: String,
    port: u16,
) -> std::io::Result<ConnHandle> {
    use std::io::{Error, ErrorKind};
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let live = shared.live();
    let timeout = live.config.limits.tls_handshake_timeout;
    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let peer = tcp.peer_addr()?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&live.carrier_tls))
            .connect(server_name, tcp)
            .await?;
        Ok::<_, Error>((tls, peer))
    };
    let (tls, peer) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "connect timed out"))??;
    let sip_tls = {
        let conn = tls.get_ref().1;
        let (version, cipher) = crate::tls::negotiated(conn);
        SipTls {
            version,
            cipher,
            sni: Some(host.clone()),
            client_cert_subject: None,
        }
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run_connection(
        shared,
        carrier,
        sip_tls,
        tls,
        peer,
        Some(ready_tx),
    ));
    ready_rx
        .await
        .map_err(|_| Error::new(ErrorKind::ConnectionAborted, "connection task ended"))
}

/// Reads, frames and routes SIP on an established TLS stream (either direction) until it closes.
async fn run_connection<S>(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    sip_tls: SipTls,
    tls: S,
    peer: SocketAddr,
    ready: Option<tokio::sync::oneshot::Sender<ConnHandle>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let conn_id = shared.next_id();
    let span = info_span!("conn", id = conn_id, %peer, carrier = %carrier.config.name);
    async move {
        debug!(version = %sip_tls.version, cipher = %sip_tls.cipher, "TLS established");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        // Dropped when the reader stops: the connection is gone (or we gave up on it).
        let (reader_done, mut reader_gone) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            let mut closed = false;
            loop {
                tokio::select! {
                    biased;
                    b = rx.recv() => match b {
                        Some(b) => {
                            if wr.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = &mut reader_gone, if !closed => {
                        // Refuse new messages from now on, so that a call still holding this
                        // handle sees `send` fail and opens a new connection for its BYE
                        // instead of writing it into a socket the peer already closed. What
                        // was queued before still goes out (a response to the last request):
                        // `recv` yields it, then `None`.
                        rx.close();
                        closed = true;
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
        let handle = ConnHandle {
            id: conn_id,
            peer,
            tx,
        };
        if let Some(ready) = ready {
            let _ = ready.send(handle.clone());
        }
        let ctx = ConnCtx {
            shared: Arc::clone(&shared),
            carrier,
            sip_tls,
            handle,
        };
        let live = shared.live();
        let mut framer = Framer::new(live.config.limits.max_message_bytes);
        let mut buf = BytesMut::with_capacity(8192);
        let idle = live.config.limits.idle_timeout;
        let mut linger = false;
        'read: loop {
            buf.clear();
            let n = match tokio::time::timeout(idle, rd.read_buf(&mut buf)).await {
                Err(_) => {
                    // A call whose dialog uses this connection holds a handle to it: the
                    // connection is not idle while such a call lasts, however quiet the
                    // carrier is (a call without re-INVITEs sends no SIP for its whole length).
                    if ctx.handle.tx.strong_count() > 1 {
                        continue;
                    }
                    debug!("idle timeout: closing");
                    break;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "read error: closing");
                    break;
                }
                Ok(Ok(0)) => {
                    debug!("peer closed the connection");
                    break;
                }
                Ok(Ok(n)) => n,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => {
                        let _ = ctx.handle.tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                    Ok(Some(Frame::Pong)) => {}
                    Ok(Some(Frame::Message(msg))) => ctx.handle_message(&msg),
                    Err(e) => {
                        warn!(error = %e, "SIP framing error: closing the connection");
                        let head = match &e {
                            FrameError::TooLarge { head, .. } => {
                                head.clone().map(|h| (h, 413, "Request Entity Too Large"))
                            }
                            FrameError::MissingContentLength { head } => {
                                Some((head.clone(), 400, "Missing Content-Length"))
                            }
                            FrameError::BadContentLength { head } => {
                                Some((head.clone(), 400, "Bad Content-Length"))
                            }
                            #[allow(unreachable_patterns)]
                            _ => None,
                        };
                        if let Some((head, status, reason)) = head {
                            // The head alone: the body is absent or cut short.
                            if let Ok(SipMessage::Request(req)) = SipMessage::parse_head(&head) {
                                if req.method != Method::Ack {
                                    ctx.reply(&req, status, reason, &[]);
                                }
                            }
                        }
                        linger = true;
                        break 'read;
                    }
                }
            }
        }
        drop(ctx);
        drop(reader_done);
        if linger {
            // Lingering close: the peer may still be sending the rest of the refused message.
            // Closing with unread data makes the kernel send a RST, which can destroy the 413
            // before the peer reads it; read and discard for a moment while the writer sends
            // the response and close_notify.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        // The writer sends what is queued and ends; give it a moment, then stop waiting.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    .instrument(span)
    .await;
}

/// True when the (already chain-verified) client certificate is valid for one of `names`
/// (DNS subjectAltName, RFC 6125 matching as webpki does it).
fn certificate_names_match(
    leaf: Option<&rustls_pki_types::CertificateDer<'_>>,
    names: &[String],
) -> bool {
    let Some(leaf) = leaf else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    names.iter().any(|n| {
        rustls_pki_types::ServerName::try_from(n.as_str())
            .map(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok())
            .unwrap_or(false)
    })
}

/// What a connection task knows when it routes a message.
struct ConnCtx {
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    sip_tls: SipTls,
    handle: ConnHandle,
}

impl ConnCtx {
    fn reply(&self, req: &Request, status: u16, reason: &str, extra: &[(&str, String)]) {
        let retry_after = extra
            .iter()
            .find(|(k, _)| *k == "Retry-After")
            .and_then(|(_, v)| v.parse().ok());
        let mut rng = rand::thread_rng();
        let mut resp: Response = crate::sip::stateless_response(
            req,
            status,
            reason,
            &self.shared.uas,
            retry_after,
            &mut rng,
        );
        for (k, v) in extra.iter().filter(|(k, _)| *k != "Retry-After") {
            resp.headers.push(k, v.clone());
        }
        self.handle.send(&SipMessage::Response(resp));
    }

    fn handle_message(&self, data: &[u8]) {
        let line_problem = strict::request_line_problem(data);
        let msg = match SipMessage::parse(data) {
            Ok(m) => m,
            Err(e) => {
                let reason = line_problem.map(|p| p.1).unwrap_or("Bad Request");
                match strict::bad_request_for_unparsable(data, reason) {
                    Some(resp) => {
                        info!(error = %e, "unparsable SIP request: 400");
                        m::sip_response(400);
                        let _ = self.handle.tx.try_send(Bytes::from(resp));
                    }
                    // Without Via/Call-ID/CSeq there is nothing to address a response to.
                    None => warn!(error = %e, "unparsable SIP message dropped"),
                }
                return;
            }
        };
        if let SipMessage::Request(req) = &msg {
            if let Some((status, reason)) = line_problem.or_else(|| strict::header_problem(req)) {
                info!(method = ?req.method, status, reason, "malformed request rejected");
                if req.method != Method::Ack {
                    self.reply(req, status, reason, &[]);
                }
                return;
            }
        }
        match msg {
            SipMessage::Response(resp) => {
                let tx = resp
                    .headers
                    .get("Call-ID")
                    .and_then(|id| self.shared.lookup(id));
                match tx {
                    Some(tx) => {
                        let _ = tx.try_send(CallInput::Response(resp));
                    }
                    None => debug!(status = resp.status, "response for no known call dropped"),
                }
            }
            SipMessage::Request(req) => self.handle_request(req),
        }
    }

    fn handle_request(&self, req: Request) {
        if req.headers.0.len() > self.shared.live().config.limits.max_headers {
            warn!(count = req.headers.0.len(), "too many headers");
            if req.method != Method::Ack {
                self.reply(&req, 400, "Too Many Headers", &[]);
            }
            return;
        }
        if let Err(rej) = req.validate() {
            info!(method = ?req.method, status = rej.status, reason = %rej.reason, "request rejected");
            if req.method != Method::Ack {
                self.reply(&req, rej.status, &rej.reason, &[]);
            }
            return;
        }
        let call_id = req.call_id().unwrap_or_default().to_string();
        if let Some(tx) = self.shared.lookup(&call_id) {
            if tx
                .try_send(CallInput::Request(req, self.handle.clone()))
                .is_err()
            {
                warn!(%call_id, "call mailbox full or closed: request dropped");
            }
            return;
        }
        match req.method {
            Method::Invite => {
                let has_to_tag = req
                    .headers
                    .get("To")
                    .is_some_and(|t| t.contains(";tag=") || t.contains("; tag="));
                if has_to_tag {
                    self.reply(&req, 481, "Call/Transaction Does Not Exist", &[]);
                } else {
                    self.new_invite(req, call_id);
                }
            }
            Method::Options => self.reply(&req, 200, "OK", &[]),
            Method::Ack => debug!(%call_id, "ACK for no known call dropped"),
            _ => self.reply(&req, 481, "Call/Transaction Does Not Exist", &[]),
        }
    }

    fn new_invite(&self, req: Request, call_id: String) {
        let shared = &self.shared;
        let carrier = &self.carrier;
        let now = Instant::now();
        let refuse = |status: u16, reason: &str, why: &str, retry: Option<u32>| {
            info!(%call_id, status, why, "INVITE refused at admission");
            let extra: Vec<(&str, String)> = retry
                .map(|r| ("Retry-After", r.to_string()))
                .into_iter()
                .collect();
            self.reply(&req, status, reason, &extra);
            let rec = CallRecord {
                call_id: format!("c{}", shared.next_id()),
                sip_call_id: call_id.clone(),
                carrier: carrier.config.name.clone(),
                source: self.handle.peer.to_string(),
                sip_tls: self.sip_tls.clone(),
                from: shared
                    .audit
                    .number(&req.caller_number().unwrap_or_default()),
                to: shared
                    .audit
                    .number(&req.called_number().unwrap_or_default()),
                decision: Decision {
                    outcome: "refused",
                    status,
                    reason: why.to_string(),
                },
                received_at: crate::audit::now_rfc3339(),
                ..Default::default()
            };
            shared.audit.write("call.refused", &rec);
            m::call_outcome("refused");
        };
        if shared.draining.load(Ordering::SeqCst) {
            return refuse(503, "Service Unavailable", "shutting down", Some(30));
        }
        // Reserve global and carrier capacity atomically; released by the call task.
        let global = shared.active_calls.fetch_add(1, Ordering::SeqCst);
        if global >= shared.live().config.limits.max_concurrent_calls {
            shared.active_calls.fetch_sub(1, Ordering::SeqCst);
            return refuse(
                503,
                "Service Unavailable",
                "over capacity (max_concurrent_calls)",
                Some(5),
            );
        }
        let c = carrier.active.fetch_add(1, Ordering::SeqCst);
        if c >= carrier.config.max_concurrent_calls {
            carrier.active.fetch_sub(1, Ordering::SeqCst);
            shared.active_calls.fetch_sub(1, Ordering::SeqCst);
            return refuse(
                503,
                "Service Unavailable",
                "carrier over capacity (max_concurrent_calls)",
                Some(5),
            );
        }
        if !carrier.take_token(now) {
            carrier.active.fetch_sub(1, Ordering::SeqCst);
            shared.active_calls.fetch_sub(1, Ordering::SeqCst);
            return refuse(
                503,
                "Service Unavailable",
                "carrier call rate limit (max_calls_per_second)",
                Some(1),
            );
        }
        let (tx, rx) = mpsc::channel(256);
        shared
            .calls
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(call_id.clone(), tx);
        let setup = call::CallSetup {
            shared: Arc::clone(shared),
            carrier: Arc::clone(carrier),
            invite: req,
            conn: self.handle.clone(),
            sip_tls: self.sip_tls.clone(),
            sip_call_id: call_id,
            rx,
            received: now,
        };
        tokio::spawn(call::run(setup));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_names_are_checked() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sip.carrier.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        assert!(certificate_names_match(
            Some(&der),
            &["sip.carrier.example".into()]
        ));
        assert!(certificate_names_match(
            Some(&der),
            &["other.example".into(), "sip.carrier.example".into()]
        ));
        assert!(!certificate_names_match(
            Some(&der),
            &["evil.example".into()]
        ));
        assert!(!certificate_names_match(
            None,
            &["sip.carrier.example".into()]
        ));
    }

    #[test]
    fn mapped_ipv4_compares_as_ipv4() {
        let ip: IpAddr = "::ffff:54.172.60.1".parse().unwrap();
        assert_eq!(canonical_ip(ip), "54.172.60.1".parse::<IpAddr>().unwrap());
    }
}
