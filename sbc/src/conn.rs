//! Carrier connections: the accept loop, the per-IP slot, the TLS handshake, the reader that
//! frames SIP and hands each message to `dispatch`, the writer, and the connections sbc opens
//! to a carrier itself.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use ipnet::IpNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};
use tracing::{debug, info, info_span, warn, Instrument};

use crate::audit::SipTls;
use crate::dispatch::ConnCtx;
use crate::metrics as m;
use crate::shared::{canonical_ip, CarrierState, Shared};
use crate::sip::framing::{Frame, FrameError, Framer};
use crate::sip::{Method, SipMessage};

/// TCP keepalive on every carrier socket: first probe after this much silence...
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// ...then one probe this often...
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// ...and the connection is dead after this many unanswered probes.
const KEEPALIVE_PROBES: u32 = 3;
/// `TCP_USER_TIMEOUT`: data the peer's kernel has not acknowledged for this long (a vanished
/// peer, not a slow reader: that is `limits.write_timeout`) makes the kernel drop the connection.
/// It also bounds the keepalive probing above to about the same minute.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(60);
/// The reader's read size: its buffer never grows beyond it (the framer holds at most
/// `max_message_bytes` plus one read).
const READ_CHUNK: usize = 8192;
/// The writer's batch buffer keeps at most this much capacity between bursts.
const WRITE_BATCH_KEEP: usize = 64 * 1024;
/// A write that has not completed for this long (or `limits.write_timeout`, if shorter) means
/// the peer stopped reading: past the byte budget the connection is then given up at once.
/// Before that, a burst beyond the budget is taken while the writer is making progress.
const WRITE_STALLED_AFTER: Duration = Duration::from_secs(1);
/// While the writer makes progress, the queue may hold up to this many times its budget (a
/// burst of responses of calls already admitted) before the connection is given up anyway.
const OVERFLOW_FACTOR: usize = 2;
/// The reservation of a call in setup whose final response never went out on this connection
/// (its dialog moved to another one) is dropped after this long (64 x T1).
const SETUP_RESERVATION_TTL: Duration = Duration::from_secs(32);

/// The sending half of a carrier connection. Responses go back on the connection the request came
/// on (RFC 3261 §18.2.2); the call task keeps the latest one for its in-dialog requests.
///
/// One pointer: every in-dialog request reaches its call with a handle, so each slot of a call's
/// mailbox (tokio allocates 32 at once per call) is as large as it (docs/performance.md, "Memory
/// per call, December 2026"). Its fields are read through `Deref`.
#[derive(Clone)]
pub struct ConnHandle(Arc<ConnInfo>);

impl ConnHandle {
    /// Handles to this connection alive (the reader's own included): a call whose dialog uses
    /// the connection holds one. The count of the one `Arc`, since a clone shares the sender.
    pub(crate) fn strong_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

impl std::ops::Deref for ConnHandle {
    type Target = ConnInfo;
    fn deref(&self) -> &ConnInfo {
        &self.0
    }
}

/// What a [`ConnHandle`] points to.
pub struct ConnInfo {
    pub id: u64,
    pub peer: SocketAddr,
    /// True for a connection sbc opened itself (`connect_outbound`): it carries in-dialog
    /// requests of that carrier's calls, never a new INVITE.
    pub outbound: bool,
    pub(crate) tx: WriteTx,
}

impl ConnHandle {
    /// Queues a message; false when the connection is gone or its peer is not reading (the
    /// message would overflow `limits.write_queue_bytes`: the connection is then closed).
    pub fn send(&self, msg: &SipMessage) -> bool {
        let mut setup_done = None;
        if let SipMessage::Response(r) = msg {
            m::sip_response(r.status);
            if r.status >= 200 && matches!(r.cseq(), Some((_, Method::Invite))) {
                setup_done = msg.call_id();
            }
        }
        let sent = self.tx.try_send(Bytes::from(msg.to_bytes())).is_ok();
        // After the response is queued: its bytes replace the reservation.
        if let Some(call_id) = setup_done {
            self.tx.queue.end_setup(call_id);
        }
        sent
    }

    /// Reserves room in the write queue for what a new call will send on this connection
    /// before its final response (`100 Trying`, maybe `180`, the `200 OK` with SDP: about
    /// twice its INVITE, `invite_len`). False (nothing reserved) when the queued bytes and
    /// the reservations of the calls already in setup leave no room: the INVITE is then
    /// refused with 503 + Retry-After, so that a burst of setups past what sbc can serve
    /// cannot overflow the queue and cost the connection, with every call on it. The
    /// reservation ends with the call's final response (or after `SETUP_RESERVATION_TTL`).
    pub(crate) fn reserve_setup(&self, call_id: &str, invite_len: usize) -> bool {
        self.tx
            .queue
            .begin_setup(call_id, invite_len, Instant::now())
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// Why sbc gave up on a connection (`WriteQueue::closed`); 0 while it is open.
const OPEN: u8 = 0;
/// A write (or the closing `close_notify`) passed `limits.write_timeout`.
const WRITE_STUCK: u8 = 1;
/// A message would have overflowed `limits.write_queue_bytes`.
const WRITE_QUEUE_FULL: u8 = 2;
/// A write failed (the peer reset the connection): nothing to report beyond debug.
const WRITE_FAILED: u8 = 3;

/// The state one connection's senders, writer and reader share: the bytes queued for the
/// writer, bounded by `limit`, and whether the connection was given up.
struct WriteQueue {
    queued: AtomicUsize,
    limit: usize,
    closed: AtomicU8,
    /// Woken when `closed` is set and when the writer handed bytes to the kernel.
    changed: Notify,
    /// The clock of `writing_since`.
    epoch: Instant,
    /// Milliseconds since `epoch` (plus one) when the writer's current write began; 0 while it
    /// is not writing.
    writing_since: AtomicU64,
    /// How long a write may go on before the writer counts as stalled.
    stalled_after: Duration,
    /// Calls in setup on this connection: SIP Call-ID to (bytes reserved, since when).
    setups: Mutex<HashMap<Box<str>, (usize, Instant)>>,
    /// The sum of the reservations in `setups`.
    setup_bytes: AtomicUsize,
}

impl WriteQueue {
    fn new(limit: usize, write_timeout: Duration) -> WriteQueue {
        WriteQueue {
            queued: AtomicUsize::new(0),
            limit,
            closed: AtomicU8::new(OPEN),
            changed: Notify::new(),
            epoch: Instant::now(),
            writing_since: AtomicU64::new(0),
            stalled_after: WRITE_STALLED_AFTER.min(write_timeout),
            setups: Mutex::new(HashMap::new()),
            setup_bytes: AtomicUsize::new(0),
        }
    }

    /// Takes `len` bytes of the budget; false (nothing taken) when they do not fit.
    ///
    /// Beyond the budget, up to `OVERFLOW_FACTOR` times it, bytes are still taken while the
    /// writer is making progress (not in a write that has lasted `stalled_after`): a burst of
    /// responses to a peer that reads is queued, not a reason to give the connection up. A
    /// peer that stopped reading stalls the writer and gets no such credit (and the write
    /// deadline closes its connection in any case).
    fn reserve(&self, len: usize) -> bool {
        let cap = if self.writer_stalled(Instant::now()) {
            self.limit
        } else {
            self.limit.saturating_mul(OVERFLOW_FACTOR)
        };
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                q.checked_add(len).filter(|&n| n <= cap)
            })
            .is_ok()
    }

    fn now_ms(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.epoch).as_millis() as u64 + 1
    }

    /// The writer begins (`true`) or ends (`false`) a write.
    fn writing(&self, active: bool) {
        let v = if active {
            self.now_ms(Instant::now())
        } else {
            0
        };
        self.writing_since.store(v, Ordering::Release);
    }

    /// The writer has been in one write for `stalled_after` or more at `now`.
    fn writer_stalled(&self, now: Instant) -> bool {
        let since = self.writing_since.load(Ordering::Acquire);
        since != 0
            && self.now_ms(now).saturating_sub(since) >= self.stalled_after.as_millis() as u64
    }

    /// Reserves `2 * invite_len` (at least 1 KiB) for a new call's responses unless the queued
    /// bytes plus all reservations would pass half the budget (the other half is for the
    /// responses to in-dialog requests and for what the reader has already read).
    fn begin_setup(&self, call_id: &str, invite_len: usize, now: Instant) -> bool {
        let need = invite_len.saturating_mul(2).max(1024);
        let mut setups = self.setups.lock().unwrap_or_else(|p| p.into_inner());
        let room = |setup_bytes: usize| {
            self.queued()
                .saturating_add(setup_bytes)
                .saturating_add(need)
                <= self.limit / 2
        };
        if !room(self.setup_bytes.load(Ordering::Acquire)) {
            // Calls whose final response went out elsewhere hold nothing forever.
            let before = setups.len();
            let mut freed = 0;
            setups.retain(|_, (bytes, since)| {
                let keep = now.saturating_duration_since(*since) < SETUP_RESERVATION_TTL;
                if !keep {
                    freed += *bytes;
                }
                keep
            });
            if setups.len() != before {
                self.setup_bytes.fetch_sub(freed, Ordering::AcqRel);
            }
            if !room(self.setup_bytes.load(Ordering::Acquire)) {
                return false;
            }
        }
        if let Some((old, _)) = setups.insert(call_id.into(), (need, now)) {
            self.setup_bytes.fetch_sub(old, Ordering::AcqRel);
        }
        self.setup_bytes.fetch_add(need, Ordering::AcqRel);
        true
    }

    /// The call's final response is queued: its reservation ends.
    fn end_setup(&self, call_id: &str) {
        if self.setup_bytes.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut setups = self.setups.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((bytes, _)) = setups.remove(call_id) {
            self.setup_bytes.fetch_sub(bytes, Ordering::AcqRel);
        }
    }

    fn release(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
        self.changed.notify_waiters();
    }

    fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }

    /// The reader reads more only while at most half the budget is used: the other half holds
    /// the responses to what one read completed.
    fn has_room(&self) -> bool {
        self.queued() <= self.limit / 2
    }

    /// Gives the connection up; the first reason sticks.
    fn close(&self, reason: u8) {
        let _ = self
            .closed
            .compare_exchange(OPEN, reason, Ordering::AcqRel, Ordering::Acquire);
        self.changed.notify_waiters();
    }

    fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire) != OPEN
    }

    /// The metric label of a reason worth a warning, `None` for the others.
    fn warn_reason(&self) -> Option<&'static str> {
        match self.closed.load(Ordering::Acquire) {
            WRITE_STUCK => Some("write_stuck"),
            WRITE_QUEUE_FULL => Some("write_queue_full"),
            _ => None,
        }
    }

    /// Returns once `pred` holds (checked after each change).
    async fn wait_until(&self, pred: impl Fn(&WriteQueue) -> bool) {
        loop {
            let changed = self.changed.notified();
            tokio::pin!(changed);
            // Registered before the check, so a change between the check and the await is seen.
            changed.as_mut().enable();
            if pred(self) {
                return;
            }
            changed.await;
        }
    }
}

/// The writer's queue as the senders see it: a channel bounded in bytes (not in messages, whose
/// sizes vary from a 2-byte keep-alive pong to a 16 KB response).
#[derive(Clone)]
pub(crate) struct WriteTx {
    tx: mpsc::UnboundedSender<Bytes>,
    queue: Arc<WriteQueue>,
}

impl WriteTx {
    /// Queues `b` for the writer. A message that does not fit (beyond the byte budget while the
    /// writer is stalled, or beyond `OVERFLOW_FACTOR` times it) is refused and the connection
    /// given up (its peer is not reading); `Err` also when it is closed.
    pub(crate) fn try_send(&self, b: Bytes) -> Result<(), Bytes> {
        if self.queue.is_closed() {
            return Err(b);
        }
        let len = b.len();
        if !self.queue.reserve(len) {
            self.queue.close(WRITE_QUEUE_FULL);
            return Err(b);
        }
        self.tx.send(b).map_err(|e| {
            self.queue.release(len);
            e.0
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.tx.is_closed() || self.queue.is_closed()
    }
}

/// Keepalive and `TCP_USER_TIMEOUT` (see the constants), and no Nagle delay. Failures are
/// logged, not fatal: the write deadline still bounds a stuck peer.
fn tune_socket(tcp: &TcpStream) {
    let _ = tcp.set_nodelay(true);
    let sock = socket2::SockRef::from(tcp);
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL)
        .with_retries(KEEPALIVE_PROBES);
    if let Err(e) = sock.set_tcp_keepalive(&keepalive) {
        debug!(error = %e, "cannot set TCP keepalive");
    }
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(TCP_USER_TIMEOUT)) {
        debug!(error = %e, "cannot set TCP_USER_TIMEOUT");
    }
}

/// The addresses of `resolved` that lie inside one of the carrier's `sources` (IPv4-mapped IPv6
/// compared, and connected to, as IPv4). Nothing a peer sends decides where sbc connects beyond
/// what configuration allows.
fn allowed_targets(resolved: &[SocketAddr], sources: &[IpNet]) -> Vec<SocketAddr> {
    let mut out: Vec<SocketAddr> = Vec::new();
    for a in resolved {
        let ip = canonical_ip(a.ip());
        let a = SocketAddr::new(ip, a.port());
        if sources.iter().any(|net| net.contains(&ip)) && !out.contains(&a) {
            out.push(a);
        }
    }
    out
}

pub(crate) fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
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
    // A carrier's source, or an address a live outbound call's trunk resolved to (its callee
    // may send in-dialog requests to our Contact on a new connection: docs/outbound.md).
    let carrier = shared
        .carrier_for(ip)
        .or_else(|| crate::outbound::trunk_peer(&shared, ip));
    let Some(carrier) = carrier else {
        info!(%peer, "connection from a source no carrier allows: closed");
        m::connection_refused("source_not_allowed");
        return;
    };
    let slot = {
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
    tune_socket(&tcp);
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
            kx_group: crate::tls::kx_group(conn),
            sni: conn.server_name().map(str::to_string),
            client_cert_subject: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|_| "present".to_string()),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.clone().into_owned())),
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
    run_connection(shared, carrier, sip_tls, tls, peer, None, Some(slot)).await;
}

/// Opens a TLS connection to a carrier for a request sbc originates when the dialog's connection
/// is gone (RFC 3261 §18.1.1: a new connection to the target). `host` comes from what the carrier
/// sent (Contact, Record-Route), so it is resolved and only addresses inside the carrier's
/// `source_cidrs` are tried: otherwise the error says the target is outside them. The carrier's
/// certificate is verified (`tls::carrier_client_config`). Responses on it are routed like any
/// other; the handle is marked `outbound`.
pub async fn connect_outbound(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    host: String,
    port: u16,
) -> std::io::Result<ConnHandle> {
    use std::io::{Error, ErrorKind};
    let timeout = shared.live().config.limits.tls_handshake_timeout;
    let resolved: Vec<SocketAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![SocketAddr::new(ip, port)],
        Err(_) => tokio::time::timeout(timeout, tokio::net::lookup_host((host.as_str(), port)))
            .await
            .map_err(|_| Error::new(ErrorKind::TimedOut, "lookup timed out"))??
            .collect(),
    };
    let targets = allowed_targets(&resolved, &carrier.config.sources);
    if targets.is_empty() {
        let resolved: Vec<String> = resolved.iter().map(|a| a.ip().to_string()).collect();
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "target {host}:{port} (resolved to [{}]) is outside the carrier's source_cidrs: not connecting",
                resolved.join(", ")
            ),
        ));
    }
    connect_to(shared, carrier, host, targets)
        .await
        .map(|(handle, _)| handle)
}

/// Opens a TLS connection to the first of `targets` that accepts TCP, verifying the peer's
/// certificate for `host` (also the SNI) with the carrier client config (`[tls] client_ca`, else
/// the webpki roots), and starts its reader and writer: what it reads is routed by `dispatch`
/// under `carrier`'s name. The caller decided that `targets` are allowed (a carrier's
/// `source_cidrs`, or a trunk's configured URI). Used by [`connect_outbound`] and by outbound
/// calls (`outbound.rs`, where `carrier` stands for the trunk). Returns the handle (marked
/// `outbound`) and the negotiated TLS parameters.
pub(crate) async fn connect_to(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    host: String,
    targets: Vec<SocketAddr>,
) -> std::io::Result<(ConnHandle, SipTls)> {
    use std::io::{Error, ErrorKind};
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let live = shared.live();
    let timeout = live.config.limits.tls_handshake_timeout;
    let connect = async {
        let mut last_err = None;
        let mut tcp = None;
        for addr in targets {
            match TcpStream::connect(addr).await {
                Ok(t) => {
                    tcp = Some(t);
                    break;
                }
                Err(e) => last_err = Some(e),
            }
        }
        let tcp = match (tcp, last_err) {
            (Some(t), _) => t,
            (None, Some(e)) => return Err(e),
            (None, None) => return Err(Error::new(ErrorKind::NotConnected, "no address")),
        };
        let peer = tcp.peer_addr()?;
        tune_socket(&tcp);
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
            kx_group: crate::tls::kx_group(conn),
            sni: Some(host.clone()),
            client_cert_subject: None,
            client_cert: None,
        }
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run_connection(
        shared,
        carrier,
        sip_tls.clone(),
        tls,
        peer,
        Some(ready_tx),
        None,
    ));
    let handle = ready_rx
        .await
        .map_err(|_| Error::new(ErrorKind::ConnectionAborted, "connection task ended"))?;
    Ok((handle, sip_tls))
}

/// Reads, frames and routes SIP on an established TLS stream (either direction) until it closes.
/// `ready` is given the handle of a connection sbc opened (`connect_outbound`); `slot` is the
/// per-IP slot of an accepted one, released only once the socket is closed.
///
/// Memory per connection is bounded: the writer's queue by `limits.write_queue_bytes` (the reader
/// stops reading while half of it is used, so a pipelining peer that does not read is pushed
/// back by TCP), the read buffer by `READ_CHUNK`, the framer by `max_message_bytes` plus one read.
/// Every write has the deadline `limits.write_timeout`: past it (or when the queue overflows)
/// the connection is given up, the writer and the reader stop, and the socket is closed.
async fn run_connection<S>(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    sip_tls: SipTls,
    tls: S,
    peer: SocketAddr,
    ready: Option<tokio::sync::oneshot::Sender<ConnHandle>>,
    slot: Option<IpSlot>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let conn_id = shared.next_id();
    let span = info_span!("conn", id = conn_id, %peer, carrier = %carrier.config.name);
    async move {
        debug!(version = %sip_tls.version, cipher = %sip_tls.cipher, "TLS established");
        let live = shared.live();
        let limits = &live.config.limits;
        let write_timeout = limits.write_timeout;
        let write_queue_bytes = limits.write_queue_bytes;
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::unbounded_channel::<Bytes>();
        let queue = Arc::new(WriteQueue::new(limits.write_queue_bytes, write_timeout));
        // Dropped when the reader stops: the connection is gone (or we gave up on it).
        let (reader_done, mut reader_gone) = tokio::sync::oneshot::channel::<()>();
        let mut writer = {
            let queue = Arc::clone(&queue);
            tokio::spawn(async move {
                let mut reader_stopped = false;
                let mut batch_buf: Vec<u8> = Vec::new();
                loop {
                    let next = tokio::select! {
                        biased;
                        _ = queue.wait_until(WriteQueue::is_closed) => break,
                        b = rx.recv() => b,
                        _ = &mut reader_gone, if !reader_stopped => {
                            // Refuse new messages from now on, so that a call still holding
                            // this handle sees `send` fail and opens a new connection for its
                            // BYE instead of writing it into a socket the peer already closed.
                            // What was queued before still goes out (a response to the last
                            // request): `recv` yields it, then `None`.
                            rx.close();
                            reader_stopped = true;
                            continue;
                        }
                    };
                    let Some(b) = next else { break };
                    // Everything already queued goes out together: one TLS record and one
                    // syscall for a burst of responses instead of one each, and one release
                    // (one wake-up of the paused reader) per batch. Under a burst of call
                    // setups this is what keeps the writer ahead of the call tasks.
                    let mut len = b.len();
                    // Whatever is queued at once, bounded by the queue's own byte budget: when
                    // sbc's workers are saturated the writer is one task among hundreds of call
                    // tasks, and what it takes per turn must keep up with all of them.
                    let batch = if len < write_queue_bytes {
                        match rx.try_recv() {
                            Ok(more) => {
                                batch_buf.clear();
                                batch_buf.extend_from_slice(&b);
                                batch_buf.extend_from_slice(&more);
                                while batch_buf.len() < write_queue_bytes {
                                    match rx.try_recv() {
                                        Ok(more) => batch_buf.extend_from_slice(&more),
                                        Err(_) => break,
                                    }
                                }
                                len = batch_buf.len();
                                None
                            }
                            Err(_) => Some(b),
                        }
                    } else {
                        Some(b)
                    };
                    let out: &[u8] = batch.as_deref().unwrap_or(&batch_buf);
                    queue.writing(true);
                    let written = tokio::select! {
                        biased;
                        _ = queue.wait_until(WriteQueue::is_closed) => break,
                        r = tokio::time::timeout(write_timeout, async {
                            wr.write_all(out).await?;
                            // Out of rustls's buffer too, not only into it.
                            wr.flush().await
                        }) => r,
                    };
                    queue.writing(false);
                    queue.release(len);
                    if batch_buf.capacity() > WRITE_BATCH_KEEP {
                        batch_buf = Vec::new();
                    }
                    match written {
                        Ok(Ok(())) => {}
                        Ok(Err(e)) => {
                            debug!(error = %e, "write error: closing");
                            queue.close(WRITE_FAILED);
                            break;
                        }
                        Err(_) => {
                            queue.close(WRITE_STUCK);
                            break;
                        }
                    }
                }
                if !queue.is_closed()
                    && tokio::time::timeout(write_timeout, wr.shutdown())
                        .await
                        .is_err()
                {
                    queue.close(WRITE_STUCK);
                }
            })
        };
        let handle = ConnHandle(Arc::new(ConnInfo {
            id: conn_id,
            peer,
            outbound: ready.is_some(),
            tx: WriteTx {
                tx,
                queue: Arc::clone(&queue),
            },
        }));
        if let Some(ready) = ready {
            let _ = ready.send(handle.clone());
        }
        let ctx = ConnCtx::new(Arc::clone(&shared), carrier, sip_tls, handle);
        let mut framer = Framer::new(limits.max_message_bytes);
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        let idle = limits.idle_timeout;
        let mut linger = false;
        'read: loop {
            // Backpressure: nothing more is read (so nothing more answered) while the peer
            // leaves half the write queue unread. The writer's deadline bounds this wait.
            queue
                .wait_until(|q| q.is_closed() || q.has_room())
                .await;
            if queue.is_closed() {
                break;
            }
            buf.clear();
            // A revoked connection is checked every second, so that it closes soon after its
            // last call ended even when the carrier sends nothing more.
            let wait = if ctx.revoked.load(std::sync::atomic::Ordering::Relaxed) {
                idle.min(Duration::from_secs(1))
            } else {
                idle
            };
            let read = tokio::select! {
                biased;
                _ = queue.wait_until(WriteQueue::is_closed) => break 'read,
                r = tokio::time::timeout(wait, rd.read_buf(&mut buf)) => r,
            };
            let n = match read {
                Err(_) => {
                    // A call whose dialog uses this connection holds a handle to it: the
                    // connection is not idle while such a call lasts, however quiet the
                    // carrier is (a call without re-INVITEs sends no SIP for its whole length).
                    if ctx.handle.strong_count() > 1 && !ctx.revoked_and_unused() {
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
            if ctx.revoked_and_unused() {
                info!("no carrier admits this connection any more and no call uses it: closing");
                break;
            }
        }
        drop(ctx);
        drop(reader_done);
        if linger && !queue.is_closed() {
            // Lingering close: the peer may still be sending the rest of the refused message.
            // Closing with unread data makes the kernel send a RST, which can destroy the 413
            // before the peer reads it; read and discard for a moment while the writer sends
            // the response and close_notify.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                loop {
                    tokio::select! {
                        biased;
                        _ = queue.wait_until(WriteQueue::is_closed) => break,
                        r = rd.read(&mut sink) => match r {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {}
                        },
                    }
                }
            })
            .await;
        }
        // The writer sends what is queued and ends. It gets one write deadline for all of it;
        // past that the peer is not reading and the writer is stopped.
        if tokio::time::timeout(write_timeout, &mut writer).await.is_err() {
            queue.close(WRITE_STUCK);
            writer.abort();
            // Awaited after the abort: the task (and its half of the socket) is gone after this.
            let _ = writer.await;
        }
        if let Some(reason) = queue.warn_reason() {
            warn!(%peer, reason, queued = queue.queued(), "peer is not reading what sbc sends: connection closed");
            m::connection_closed(reason);
        }
        // Both halves dropped: the socket is closed; only then is the per-IP slot released.
        drop(rd);
        drop(slot);
    }
    .instrument(span)
    .await;
}

/// True when the (already chain-verified) client certificate is valid for one of `names`
/// (DNS subjectAltName, RFC 6125 matching as webpki does it).
pub(crate) fn certificate_names_match(
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

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnHandle({}, {})", self.id, self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn outbound_targets_are_kept_only_inside_the_carrier_sources() {
        let sources: Vec<IpNet> = vec![
            "192.0.2.0/30".parse().unwrap(),
            "2001:db8::/64".parse().unwrap(),
        ];
        assert_eq!(
            allowed_targets(&[addr("192.0.2.1:5061")], &sources),
            [addr("192.0.2.1:5061")]
        );
        // Outside: the next /30, another network, loopback, a metadata address.
        for outside in [
            "192.0.2.4:5061",
            "198.51.100.1:5061",
            "127.0.0.1:5061",
            "169.254.169.254:80",
            "[2001:db8:0:1::1]:5061",
            "[::1]:5061",
        ] {
            assert!(
                allowed_targets(&[addr(outside)], &sources).is_empty(),
                "{outside}"
            );
        }
        // An IPv4-mapped IPv6 address is compared, and connected to, as IPv4.
        assert_eq!(
            allowed_targets(&[addr("[::ffff:192.0.2.2]:5061")], &sources),
            [addr("192.0.2.2:5061")]
        );
        assert!(allowed_targets(&[addr("[::ffff:198.51.100.1]:5061")], &sources).is_empty());
        // A name resolving to several addresses: only those inside, in order, without repeats.
        assert_eq!(
            allowed_targets(
                &[
                    addr("198.51.100.1:5061"),
                    addr("[2001:db8::5]:5061"),
                    addr("192.0.2.3:5061"),
                    addr("[::ffff:192.0.2.3]:5061"),
                ],
                &sources
            ),
            [addr("[2001:db8::5]:5061"), addr("192.0.2.3:5061")]
        );
        assert!(allowed_targets(&[addr("192.0.2.1:5061")], &[]).is_empty());
    }

    fn write_tx(limit: usize) -> (WriteTx, mpsc::UnboundedReceiver<Bytes>) {
        write_tx_stalling_after(limit, Duration::from_secs(10))
    }

    fn write_tx_stalling_after(
        limit: usize,
        write_timeout: Duration,
    ) -> (WriteTx, mpsc::UnboundedReceiver<Bytes>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let queue = Arc::new(WriteQueue::new(limit, write_timeout));
        (WriteTx { tx, queue }, rx)
    }

    /// The reader closes an idle or revoked connection only when no call holds a handle to
    /// it: clones of a `ConnHandle` share one sender, so they are counted on its `Arc`.
    #[test]
    fn conn_handle_counts_its_clones() {
        let (tx, _rx) = write_tx(1000);
        let handle = ConnHandle(Arc::new(ConnInfo {
            id: 1,
            peer: addr("192.0.2.1:5061"),
            outbound: false,
            tx,
        }));
        assert_eq!(handle.strong_count(), 1);
        let call = handle.clone();
        assert_eq!(
            (handle.strong_count(), call.peer),
            (2, addr("192.0.2.1:5061"))
        );
        drop(call);
        assert_eq!(handle.strong_count(), 1);
        assert_eq!(std::mem::size_of::<ConnHandle>(), 8);
    }

    #[test]
    fn the_write_queue_is_bounded_in_bytes_and_overflow_gives_the_connection_up() {
        let (tx, mut rx) = write_tx(1000);
        assert!(tx.try_send(Bytes::from(vec![0u8; 400])).is_ok());
        assert!(
            tx.queue.has_room(),
            "400 of 1000 bytes: the reader may read"
        );
        assert!(tx.try_send(Bytes::from(vec![0u8; 400])).is_ok());
        assert!(!tx.queue.has_room(), "800 of 1000: the reader waits");
        assert_eq!(tx.queue.queued(), 800);
        // The writer hands one message to the kernel: its bytes are free again.
        let b = rx.try_recv().unwrap();
        tx.queue.release(b.len());
        assert_eq!(tx.queue.queued(), 400);
        assert!(!tx.is_closed());
        // Past the budget while the writer is not stalled: a burst is queued, up to twice it.
        assert!(tx.try_send(Bytes::from(vec![0u8; 1000])).is_ok());
        assert_eq!(tx.queue.queued(), 1400);
        assert!(
            !tx.is_closed(),
            "a burst to a reading peer keeps the connection"
        );
        // Beyond twice the budget the connection is given up all the same.
        assert!(tx.try_send(Bytes::from(vec![0u8; 601])).is_err());
        assert_eq!(tx.queue.queued(), 1400, "a refused message takes nothing");
        assert!(tx.is_closed());
        assert_eq!(tx.queue.warn_reason(), Some("write_queue_full"));
        // Nothing more is accepted, however small.
        assert!(tx.try_send(Bytes::from_static(b"\r\n")).is_err());
        // The first reason sticks.
        tx.queue.close(WRITE_STUCK);
        assert_eq!(tx.queue.warn_reason(), Some("write_queue_full"));
    }

    #[test]
    fn a_stalled_writer_gets_no_credit_past_the_budget() {
        let (tx, _rx) = write_tx_stalling_after(1000, Duration::from_millis(1));
        assert!(tx.try_send(Bytes::from(vec![0u8; 900])).is_ok());
        // The writer is in a write that does not complete: its peer stopped reading.
        tx.queue.writing(true);
        std::thread::sleep(Duration::from_millis(20));
        assert!(tx.queue.writer_stalled(Instant::now()));
        assert!(
            tx.try_send(Bytes::from(vec![0u8; 50])).is_ok(),
            "within the budget"
        );
        assert!(tx.try_send(Bytes::from(vec![0u8; 51])).is_err());
        assert_eq!(tx.queue.warn_reason(), Some("write_queue_full"));

        // The same overflow while the writer's write completes is queued.
        let (tx, _rx) = write_tx_stalling_after(1000, Duration::from_millis(1));
        assert!(tx.try_send(Bytes::from(vec![0u8; 900])).is_ok());
        tx.queue.writing(true);
        tx.queue.writing(false);
        std::thread::sleep(Duration::from_millis(20));
        assert!(!tx.queue.writer_stalled(Instant::now()));
        assert!(tx.try_send(Bytes::from(vec![0u8; 600])).is_ok());
        assert!(!tx.is_closed());
    }

    #[test]
    fn calls_in_setup_reserve_their_responses_and_new_ones_wait_for_room() {
        let (tx, mut rx) = write_tx(15_000);
        let t0 = Instant::now();
        // Half the budget (7,500 bytes) is for what is queued and what the calls in setup will
        // send (twice their INVITE each).
        assert!(tx.queue.begin_setup("a", 2000, t0));
        assert!(
            !tx.queue.begin_setup("b", 2000, t0),
            "4,000 + 4,000 > 7,500"
        );
        assert_eq!(tx.queue.setup_bytes.load(Ordering::Acquire), 4000);
        assert!(tx.queue.begin_setup("b", 1000, t0), "4,000 + 2,000 fit");
        // Queued bytes count too.
        assert!(tx.try_send(Bytes::from(vec![0u8; 1500])).is_ok());
        assert!(
            !tx.queue.begin_setup("c", 300, t0),
            "6,000 + 1,500 + 1,024 > 7,500"
        );
        // A's final response goes out: its reservation ends (an unknown Call-ID changes nothing).
        tx.queue.end_setup("zzz");
        tx.queue.end_setup("a");
        assert_eq!(tx.queue.setup_bytes.load(Ordering::Acquire), 2000);
        assert!(tx.queue.begin_setup("c", 300, t0));
        let b = rx.try_recv().unwrap();
        tx.queue.release(b.len());
        // A reservation whose final response never came here lapses after the TTL.
        let later = t0 + SETUP_RESERVATION_TTL + Duration::from_secs(1);
        assert!(!tx.queue.begin_setup("d", 3000, t0));
        assert!(tx.queue.begin_setup("d", 3000, later));
        assert_eq!(tx.queue.setup_bytes.load(Ordering::Acquire), 6000);
    }

    #[test]
    fn a_write_queue_whose_reader_is_gone_refuses_messages() {
        let (tx, rx) = write_tx(1000);
        drop(rx);
        assert!(tx.try_send(Bytes::from_static(b"x")).is_err());
        assert_eq!(tx.queue.queued(), 0);
        assert!(tx.is_closed());
        assert_eq!(tx.queue.warn_reason(), None, "not the peer's fault");
    }

    #[tokio::test]
    async fn waiting_for_room_ends_when_bytes_are_released_or_the_connection_closes() {
        let (tx, _rx) = write_tx(1000);
        assert!(tx.try_send(Bytes::from(vec![0u8; 900])).is_ok());
        let q = Arc::clone(&tx.queue);
        let waiter = tokio::spawn(async move {
            q.wait_until(|q| q.is_closed() || q.has_room()).await;
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        tx.queue.release(900);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the release")
            .unwrap();

        let q = Arc::clone(&tx.queue);
        let waiter = tokio::spawn(async move { q.wait_until(WriteQueue::is_closed).await });
        tokio::task::yield_now().await;
        tx.queue.close(WRITE_STUCK);
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("woken by the close")
            .unwrap();
        assert_eq!(tx.queue.warn_reason(), Some("write_stuck"));
    }

    const MINIMAL: &str = crate::config::TEST_MINIMAL;

    fn parse(text: &str) -> Result<crate::config::Config, String> {
        crate::config::Config::parse_str(text, std::path::Path::new("/etc/sbc/t.toml"))
            .map_err(|e| e.to_string())
    }

    #[test]
    fn write_limits_have_documented_defaults_and_are_checked() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.limits.write_queue_bytes, 256 * 1024);
        assert_eq!(c.limits.write_timeout, Duration::from_secs(10));
        let c = parse(&format!(
            "{MINIMAL}[limits]\nwrite_queue_bytes = 65536\nwrite_timeout_secs = 3\n"
        ))
        .unwrap();
        assert_eq!(c.limits.write_queue_bytes, 65536);
        assert_eq!(c.limits.write_timeout, Duration::from_secs(3));
        for (limits, expected) in [
            (
                "write_timeout_secs = 0",
                "limits.write_timeout_secs must be greater than 0",
            ),
            (
                "write_queue_bytes = 0",
                "limits.write_queue_bytes must be greater than 0",
            ),
            (
                "write_queue_bytes = 65535",
                "must be at least 4 × limits.max_message_bytes",
            ),
            (
                "max_message_bytes = 65537\nmax_sdp_bytes = 8192",
                "must be at least 4 × limits.max_message_bytes (65537)",
            ),
            ("write_queue = 1", "unknown field"),
        ] {
            let err = parse(&format!("{MINIMAL}[limits]\n{limits}\n")).unwrap_err();
            assert!(err.contains(expected), "{limits}: {err}");
        }
    }

    #[test]
    fn worker_threads_default_to_the_cpu_count_and_are_checked() {
        // Unset: main.rs leaves tokio's default (one worker per CPU in the affinity mask).
        assert_eq!(parse(MINIMAL).unwrap().limits.worker_threads, None);
        let c = parse(&format!("{MINIMAL}[limits]\nworker_threads = 3\n")).unwrap();
        assert_eq!(c.limits.worker_threads.map(|n| n.get()), Some(3));
        let err = parse(&format!("{MINIMAL}[limits]\nworker_threads = 0\n")).unwrap_err();
        assert!(
            err.contains("limits.worker_threads must be greater than 0"),
            "{err}"
        );
        let err = parse(&format!("{MINIMAL}[limits]\nworker_threads = -1\n")).unwrap_err();
        assert!(err.contains("t.toml:"), "{err}");
    }

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
}
