//! The agent leg's I/O: a `wss://` WebSocket over tokio-rustls (TLS 1.3 only, see
//! `tls::agent_client_config`). sbc connects before it answers the INVITE, so an agent that cannot
//! be reached means 503 to the carrier, never a silent call.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use rustls_pki_types::ServerName;
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Largest agent WebSocket message accepted (about 3 minutes of base64 mu-law audio).
pub const MAX_AGENT_MESSAGE: usize = 2 << 20;

/// Initial capacity of the agent WebSocket's read buffer (a `media` message is ~300 bytes).
pub const AGENT_READ_BUFFER: usize = 4096;

/// An open agent WebSocket and what its TLS negotiated.
pub struct AgentConn {
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
    pub host: String,
    pub tls_version: String,
    pub cipher: String,
    /// Key-exchange group of the TLS connection (audit).
    pub kx_group: Option<String>,
    pub mtls: bool,
    /// The TLS 1.3 session was resumed from a ticket of an earlier connection to this agent
    /// (PSK with a fresh (EC)DHE exchange, RFC 8446 §2.2): the agent's certificate (and the
    /// client certificate, with mTLS) was verified on the handshake that issued the ticket, not
    /// again on this one (audit).
    pub resumed: bool,
}

/// Why the agent could not be reached (the carrier gets 503).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The route's URL is not a usable `wss://` URL.
    #[error("bad agent URL: {0}")]
    BadUrl(String),
    /// Connect + TLS + WebSocket upgrade took longer than `connect_timeout`.
    #[error("agent connect timed out after {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("agent TCP connect failed: {0}")]
    Tcp(std::io::Error),
    /// The TLS handshake failed (version, certificate, ...).
    #[error("agent TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The WebSocket upgrade failed.
    #[error("agent WebSocket upgrade failed: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
}

impl AgentError {
    /// A short machine-friendly cause for audit and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::BadUrl(_) => "bad_url",
            AgentError::Timeout(_) => "timeout",
            AgentError::Tcp(_) => "tcp",
            AgentError::Tls(_) => "tls",
            AgentError::WebSocket(_) => "websocket",
        }
    }
}

/// Host part of a `wss://` URL, for the audit record.
pub fn url_host(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    uri.host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Connects to `url` within `timeout`; the socket's SO_SNDBUF is `send_buffer` bytes (the
/// kernel doubles it), so that an agent that stops reading blocks sbc's writes after a bounded
/// amount of data instead of several MB of autotuned buffer.
pub async fn connect(
    url: &str,
    client: Arc<rustls::ClientConfig>,
    timeout: Duration,
    send_buffer: usize,
) -> Result<AgentConn, AgentError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| AgentError::BadUrl(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some("wss") {
        return Err(AgentError::BadUrl(format!("{url}: only wss:// is allowed")));
    }
    let host = uri
        .host()
        .ok_or_else(|| AgentError::BadUrl(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| AgentError::BadUrl(format!("{url}: {e}")))?;
    let mtls = client.client_auth_cert_resolver.has_certs();
    let fut = async {
        let tcp = connect_tcp(&host, port, send_buffer)
            .await
            .map_err(AgentError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(client)
            .connect(server_name, tcp)
            .await
            .map_err(AgentError::Tls)?;
        let (tls_version, cipher) = crate::tls::negotiated(tls.get_ref().1);
        let kx_group = crate::tls::kx_group(tls.get_ref().1);
        let resumed = tls.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        // An agent message is at most a few seconds of base64 audio; cap what one frame may
        // allocate (tungstenite's default is 64 MiB). The read buffer starts at 4 KiB, not
        // tungstenite's 128 KiB: it is zero-filled to its capacity before every read, which cost
        // ~6 % of sbc's CPU and ~128 KiB of RSS per call under load (docs/performance.md); a
        // larger frame still grows it as needed.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_AGENT_MESSAGE))
            .max_frame_size(Some(MAX_AGENT_MESSAGE))
            .read_buffer_size(AGENT_READ_BUFFER);
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config))
            .await
            .map_err(|e| AgentError::WebSocket(Box::new(e)))?;
        Ok(AgentConn {
            ws,
            host: host.clone(),
            tls_version,
            cipher,
            kx_group,
            mtls,
            resumed,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| AgentError::Timeout(timeout))?
}

/// TCP connect to the first address of `host` that answers, SO_SNDBUF set before connecting.
async fn connect_tcp(host: &str, port: u16, send_buffer: usize) -> std::io::Result<TcpStream> {
    let mut last = None;
    for addr in tokio::net::lookup_host((host, port)).await? {
        let sock = if addr.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        sock.set_send_buffer_size(u32::try_from(send_buffer).unwrap_or(u32::MAX))?;
        match sock.connect(addr).await {
            Ok(s) => return Ok(s),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| {
        std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no address for the agent host",
        )
    }))
}

/// Backpressure towards the agent, sans-IO (the call task feeds it the clock and the writer's
/// progress). Bytes queued minus bytes written is bounded; and while any byte waits, the writer
/// must make progress within `timeout`. Either breach means the agent is stuck.
#[derive(Debug)]
pub struct AgentFlow {
    limit: u64,
    timeout: Duration,
    queued: u64,
    written: u64,
    /// Since when queued data has waited without the writer making progress.
    waiting_since: Option<Instant>,
    stuck: bool,
}

impl AgentFlow {
    pub fn new(limit_bytes: usize, timeout: Duration) -> AgentFlow {
        AgentFlow {
            limit: limit_bytes as u64,
            timeout,
            queued: 0,
            written: 0,
            waiting_since: None,
            stuck: false,
        }
    }

    /// Bytes queued and not yet written.
    pub fn outstanding(&self) -> u64 {
        self.queued.saturating_sub(self.written)
    }

    /// A frame of `len` bytes wants to be queued: false (and stuck from now on) when it would
    /// take the queue past its bound.
    pub fn offer(&mut self, now: Instant, len: usize) -> bool {
        if self.stuck {
            return false;
        }
        if self.outstanding() + len as u64 > self.limit {
            self.stuck = true;
            return false;
        }
        self.queued += len as u64;
        self.waiting_since.get_or_insert(now);
        true
    }

    /// The writer has written `total` bytes since the start.
    pub fn written(&mut self, now: Instant, total: u64) {
        if total > self.written {
            self.written = total.min(self.queued);
            self.waiting_since = (self.outstanding() > 0).then_some(now);
        }
    }

    /// When the agent will count as stuck unless the writer makes progress first.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stuck {
            return None;
        }
        self.waiting_since.map(|t| t + self.timeout)
    }

    /// Checks the deadline; true once the agent is stuck.
    pub fn handle_timeout(&mut self, now: Instant) -> bool {
        if self.poll_timeout().is_some_and(|d| now >= d) {
            self.stuck = true;
        }
        self.stuck
    }

    pub fn is_stuck(&self) -> bool {
        self.stuck
    }
}

type WsSink = SplitSink<WebSocketStream<TlsStream<TcpStream>>, Message>;

/// What the writer task tells the call, without a channel the call would have to await.
#[derive(Debug, Default)]
pub struct WriterProgress {
    /// Bytes of frames written to the socket so far.
    pub written: AtomicU64,
    /// The writer gave up on a write that did not finish within its deadline.
    pub timed_out: AtomicBool,
}

/// What the call queues for the agent. 16 bytes: tokio's channel allocates its slots 32 at a
/// time, and a `Message` (56 bytes) made that ~4 KiB per call (docs/performance.md).
#[derive(Debug)]
enum Outgoing {
    /// A text frame.
    Text(Box<str>),
    /// Send what is queued, then a Close frame, then end.
    Close,
}

/// Frames the writer puts into one TLS write when several are queued (a Media Streams `media`
/// frame is ~250 bytes, so a batch stays well inside one 16 KiB TLS record).
const MAX_BATCH: usize = 32;

/// The agent WebSocket's sending half, owned by its own task and fed through a bounded queue:
/// the call task never awaits the agent.
pub struct AgentWriter {
    tx: mpsc::Sender<Outgoing>,
    progress: Arc<WriterProgress>,
    task: JoinHandle<()>,
}

/// Why a frame was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// The queue is at its bound: the agent is not reading.
    Full,
    /// The writer ended (a write failed, or timed out).
    Closed,
}

impl AgentWriter {
    /// Spawns the writer. `frames` bounds the channel (the byte bound is [`AgentFlow`]'s);
    /// `write_timeout` bounds each write, so that the task ends on its own after the call gave
    /// up on it (the call's own deadline, [`AgentFlow`], is the one that hangs up).
    pub fn spawn(sink: WsSink, frames: usize, write_timeout: Duration) -> AgentWriter {
        let (tx, rx) = mpsc::channel(frames.max(1));
        let progress = Arc::new(WriterProgress::default());
        let task = tokio::spawn(write_loop(sink, rx, Arc::clone(&progress), write_timeout));
        AgentWriter { tx, progress, task }
    }

    /// Queues a text frame without waiting.
    pub fn try_send(&self, text: String) -> Result<(), QueueError> {
        let item = Outgoing::Text(text.into_boxed_str());
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => QueueError::Full,
            mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
        })
    }

    pub fn progress(&self) -> &WriterProgress {
        &self.progress
    }

    /// Queues a Close frame and lets the writer finish what is queued, then close (each write
    /// still bounded by its deadline).
    pub fn close(self) {
        let _ = self.tx.try_send(Outgoing::Close);
    }

    /// Drops the socket's sending half now (the agent is stuck).
    pub fn abort(self) {
        self.task.abort();
    }
}

/// Takes what is queued, up to [`MAX_BATCH`] frames, after waiting for the first: the frames
/// and whether a Close came (it ends the batch). `None` when the call dropped its sender.
async fn next_batch(rx: &mut mpsc::Receiver<Outgoing>, batch: &mut Vec<Box<str>>) -> Option<bool> {
    batch.clear();
    let mut item = rx.recv().await?;
    loop {
        match item {
            Outgoing::Close => return Some(true),
            Outgoing::Text(t) => batch.push(t),
        }
        if batch.len() >= MAX_BATCH {
            return Some(false);
        }
        match rx.try_recv() {
            Ok(next) => item = next,
            Err(_) => return Some(false),
        }
    }
}

/// Writes the frames of `batch` and flushes once: several queued frames go out in one TLS
/// record and one socket write instead of one each. The bytes written, or why it failed.
async fn write_batch(sink: &mut WsSink, batch: &mut Vec<Box<str>>) -> Result<u64, String> {
    let mut len = 0u64;
    for text in batch.drain(..) {
        len += text.len() as u64;
        sink.feed(Message::text(String::from(text)))
            .await
            .map_err(|e| e.to_string())?;
    }
    sink.flush().await.map_err(|e| e.to_string())?;
    Ok(len)
}

async fn write_loop(
    mut sink: WsSink,
    mut rx: mpsc::Receiver<Outgoing>,
    progress: Arc<WriterProgress>,
    write_timeout: Duration,
) {
    let mut batch = Vec::new();
    while let Some(close) = next_batch(&mut rx, &mut batch).await {
        if !batch.is_empty() {
            match tokio::time::timeout(write_timeout, write_batch(&mut sink, &mut batch)).await {
                Ok(Ok(len)) => {
                    progress.written.fetch_add(len, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "agent WebSocket write failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(?write_timeout, "agent WebSocket write timed out");
                    progress.timed_out.store(true, Ordering::Relaxed);
                    return;
                }
            }
        }
        if close {
            break;
        }
    }
    let _ = tokio::time::timeout(write_timeout, sink.close()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_stuck_when_no_progress_within_the_deadline() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut f = AgentFlow::new(100_000, ms(2000));
        assert_eq!(f.poll_timeout(), None);
        assert!(f.offer(t0, 200));
        assert_eq!(f.poll_timeout(), Some(t0 + ms(2000)));
        // Written promptly: nothing waits, no deadline.
        f.written(t0 + ms(5), 200);
        assert_eq!(f.poll_timeout(), None);
        // Frames every 20 ms; the writer makes progress every now and then: the deadline moves
        // with the progress, not with each new frame.
        for i in 1..=100u64 {
            assert!(f.offer(t0 + ms(20 * i), 200));
        }
        assert_eq!(f.poll_timeout(), Some(t0 + ms(2020)));
        f.written(t0 + ms(1500), 10_000);
        assert_eq!(f.poll_timeout(), Some(t0 + ms(3500)));
        assert!(!f.handle_timeout(t0 + ms(3499)));
        assert!(f.handle_timeout(t0 + ms(3500)));
        assert!(f.is_stuck());
        assert!(!f.offer(t0 + ms(3600), 1));
        assert_eq!(f.poll_timeout(), None);
    }

    #[test]
    fn flow_stuck_when_the_queue_passes_its_byte_bound() {
        let t0 = Instant::now();
        let mut f = AgentFlow::new(1000, Duration::from_secs(60));
        assert!(f.offer(t0, 600));
        assert!(f.offer(t0, 400));
        assert_eq!(f.outstanding(), 1000);
        assert!(!f.offer(t0, 1));
        assert!(f.is_stuck());
        // A flow that keeps up never reaches the bound.
        let mut g = AgentFlow::new(1000, Duration::from_secs(60));
        for i in 0..10_000u64 {
            assert!(g.offer(t0, 300));
            g.written(t0, 300 * (i + 1));
        }
        assert_eq!(g.outstanding(), 0);
        assert!(!g.handle_timeout(t0 + Duration::from_secs(3600)));
    }

    #[tokio::test]
    async fn writer_batches_what_is_queued_and_stops_at_close() {
        let (tx, mut rx) = mpsc::channel(100);
        let mut batch = Vec::new();
        for i in 0..3 {
            tx.try_send(Outgoing::Text(format!("f{i}").into())).unwrap();
        }
        tx.try_send(Outgoing::Close).unwrap();
        tx.try_send(Outgoing::Text("after".into())).unwrap();
        // Everything queued up to the Close, in order, and the Close ends the batch.
        assert_eq!(next_batch(&mut rx, &mut batch).await, Some(true));
        assert_eq!(batch, ["f0", "f1", "f2"].map(Box::from));
        assert_eq!(next_batch(&mut rx, &mut batch).await, Some(false));
        assert_eq!(batch, [Box::from("after")]);
        // A long queue is cut into batches of MAX_BATCH.
        for i in 0..MAX_BATCH + 5 {
            tx.try_send(Outgoing::Text(i.to_string().into())).unwrap();
        }
        assert_eq!(next_batch(&mut rx, &mut batch).await, Some(false));
        assert_eq!(batch.len(), MAX_BATCH);
        assert_eq!(next_batch(&mut rx, &mut batch).await, Some(false));
        assert_eq!(batch.len(), 5);
        assert_eq!(&*batch[0], MAX_BATCH.to_string());
        drop(tx);
        assert_eq!(next_batch(&mut rx, &mut batch).await, None);
        assert_eq!(std::mem::size_of::<Outgoing>(), 16);
    }

    #[test]
    fn url_host_strips_ipv6_brackets() {
        assert_eq!(url_host("wss://[::1]:8443/ws").as_deref(), Some("::1"));
        assert_eq!(
            url_host("wss://agent.example:8443/ws?x=1").as_deref(),
            Some("agent.example")
        );
    }
}
