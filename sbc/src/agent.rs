//! The agent leg's I/O: a `wss://` WebSocket over `agent_tls::AgentTls` (TLS 1.3 only, see
//! `tls::agent_client_config`; rustls's unbuffered API with small buffers). sbc connects before
//! it answers the INVITE, so an agent that cannot be reached means 503 to the carrier, never a
//! silent call.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use crate::agent_tls::AgentTls;

/// Largest agent WebSocket message accepted (about 3 minutes of base64 mu-law audio).
pub const MAX_AGENT_MESSAGE: usize = 2 << 20;

/// Initial capacity of the agent WebSocket's read buffer: three `media` messages of 20 ms
/// (~300 bytes each); a larger message grows it. It stays at this size only because
/// `upgrade` rebuilds the stream after the handshake (tungstenite would keep its handshake's
/// 4 KiB buffer for the whole call).
pub const AGENT_READ_BUFFER: usize = 1024;

/// An open agent WebSocket and what its TLS negotiated.
pub struct AgentConn {
    pub ws: WebSocketStream<AgentTls>,
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
        let tls = crate::agent_tls::connect(client, server_name, tcp)
            .await
            .map_err(AgentError::Tls)?;
        let (tls_version, cipher) = crate::tls::negotiated(tls.connection());
        let kx_group = crate::tls::kx_group(tls.connection());
        let resumed = tls.connection().handshake_kind() == Some(rustls::HandshakeKind::Resumed);
        let ws = upgrade(url, tls)
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

/// The agent WebSocket's configuration. An agent message is at most a few seconds of base64
/// audio: cap what one frame may allocate (tungstenite's default is 64 MiB). The read buffer
/// starts at [`AGENT_READ_BUFFER`], not tungstenite's 128 KiB: it is zero-filled to its capacity
/// before every read, which cost ~6 % of sbc's CPU and ~128 KiB of RSS per call under load
/// (docs/performance.md); a larger frame still grows it as needed.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(MAX_AGENT_MESSAGE))
        .max_frame_size(Some(MAX_AGENT_MESSAGE))
        .read_buffer_size(AGENT_READ_BUFFER)
}

/// The WebSocket client handshake (RFC 6455 §4.1) on `stream`: tungstenite writes the request
/// and verifies the response, through a [`HeaderOnly`] reader that hands it the bytes of the
/// HTTP response header and not one more. The stream is then rebuilt around the bare `stream`,
/// with the bytes read past the header (frames the agent sent at once): tungstenite's own
/// stream would keep its handshake's 4 KiB read buffer as the WebSocket's read buffer for the
/// whole call, where [`AGENT_READ_BUFFER`] is enough (4 KiB of RSS per call,
/// docs/performance.md).
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    url: &str,
    stream: S,
) -> Result<WebSocketStream<S>, tokio_tungstenite::tungstenite::Error> {
    let reader = HeaderOnly {
        inner: Some(stream),
        end: HeaderEnd::default(),
        done: false,
        tail: Vec::new(),
    };
    let (mut ws, _resp) =
        tokio_tungstenite::client_async_with_config(url, reader, Some(ws_config())).await?;
    let reader = ws.get_mut();
    let (Some(stream), tail) = (reader.inner.take(), std::mem::take(&mut reader.tail)) else {
        // Not reached: `inner` is taken here only.
        return Err(std::io::Error::other("agent stream taken twice").into());
    };
    drop(ws);
    Ok(WebSocketStream::from_partially_read(
        stream,
        tail,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        Some(ws_config()),
    )
    .await)
}

/// Finds the end of an HTTP/1.1 message header (RFC 9112 §2.1: the empty line after the
/// header fields), as httparse does: lines may end in CRLF or a bare LF, and empty lines before
/// the status line are skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum HeaderEnd {
    /// Before the status line (empty lines are skipped).
    #[default]
    Start,
    /// Inside a line.
    Line,
    /// Just after a LF.
    Lf,
    /// After LF CR.
    LfCr,
}

impl HeaderEnd {
    /// Feeds `bytes`; returns how many of them belong to the header when its last byte is
    /// among them.
    fn feed(&mut self, bytes: &[u8]) -> Option<usize> {
        for (i, &b) in bytes.iter().enumerate() {
            *self = match (*self, b) {
                (HeaderEnd::Start, b'\r' | b'\n') => HeaderEnd::Start,
                (HeaderEnd::Lf | HeaderEnd::LfCr, b'\n') => return Some(i + 1),
                (HeaderEnd::Lf, b'\r') => HeaderEnd::LfCr,
                (_, b'\n') => HeaderEnd::Lf,
                _ => HeaderEnd::Line,
            };
        }
        None
    }
}

/// A stream for the WebSocket handshake: reads pass through until the end of the HTTP response
/// header, which ends the read; what came after it in the same read is kept in `tail`, and a
/// further read is an error (tungstenite stops reading at the end of the header, so none comes).
/// Writes pass through.
struct HeaderOnly<S> {
    /// Taken back by [`upgrade`] once the handshake is done.
    inner: Option<S>,
    end: HeaderEnd,
    /// The end of the header was read.
    done: bool,
    tail: Vec<u8>,
}

impl<S> HeaderOnly<S> {
    fn inner(&mut self) -> std::io::Result<&mut S> {
        self.inner
            .as_mut()
            .ok_or_else(|| std::io::Error::other("agent stream already taken"))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for HeaderOnly<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.done {
            return Poll::Ready(Err(std::io::Error::other(
                "read past the WebSocket upgrade response",
            )));
        }
        let before = buf.filled().len();
        std::task::ready!(Pin::new(this.inner()?).poll_read(cx, buf))?;
        if let Some(n) = this.end.feed(&buf.filled()[before..]) {
            this.tail.extend_from_slice(&buf.filled()[before + n..]);
            buf.set_filled(before + n);
            this.done = true;
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for HeaderOnly<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(self.inner()?).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.inner()?).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(self.inner()?).poll_shutdown(cx)
    }
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

/// The agent WebSocket, owned by the call task and driven both ways from its one loop: frames
/// are fed without waiting (tungstenite buffers them), and [`AgentLink::poll_io`] flushes what
/// was fed and reads the agent's next message in the same poll. Several frames fed in one turn
/// of the call's loop go out as one TLS record and one socket write.
///
/// One owner instead of a split stream with a writer task (docs/performance.md, "One owner for
/// the agent connection"): per frame the writer task cost a channel push and pop, a task wake-up
/// and the split halves' lock. The call never awaits the agent: a flush that cannot finish stays
/// pending, and [`AgentFlow`] (which counts what is fed, and is told [`AgentLink::flushed`]) turns
/// that into "agent stuck" after its byte bound or its deadline.
pub struct AgentLink<S> {
    ws: WebSocketStream<S>,
    /// Bytes of text frames fed so far.
    offered: u64,
    /// Bytes of text frames known written to the socket (all of `offered` at the last completed
    /// flush).
    flushed: u64,
    /// Fed frames wait for a flush.
    pending: bool,
    /// The last read found no complete message: the socket's readiness was cleared and the
    /// waker registered. See [`AgentLink::poll_io_when`].
    read_idle: bool,
}

/// What [`AgentLink::poll_io`] saw.
#[derive(Debug)]
pub enum AgentIo {
    /// A message from the agent.
    Message(Message),
    /// The agent closed the stream, or reading or writing failed.
    Closed(Option<String>),
}

impl<S: AsyncRead + AsyncWrite + Unpin> AgentLink<S> {
    pub fn new(ws: WebSocketStream<S>) -> AgentLink<S> {
        AgentLink {
            ws,
            offered: 0,
            flushed: 0,
            pending: false,
            read_idle: false,
        }
    }

    /// Queues a text frame without waiting; it is written by the next [`AgentLink::poll_io`].
    /// An error means the connection is unusable (already closed, or a write failed).
    pub fn feed(&mut self, text: String) -> Result<(), String> {
        let len = text.len() as u64;
        // `start_send` without `poll_ready`: tokio-tungstenite's `poll_ready` only flushes, and
        // the call must not wait for that; the frame is buffered either way, and the byte bound
        // on what is buffered is `AgentFlow`'s.
        Pin::new(&mut self.ws)
            .start_send(Message::text(text))
            .map_err(|e| e.to_string())?;
        self.offered += len;
        self.pending = true;
        Ok(())
    }

    pub fn offered(&self) -> u64 {
        self.offered
    }

    pub fn flushed(&self) -> u64 {
        self.flushed
    }

    /// Flushes what was fed (when anything waits), then polls for the agent's next message.
    /// Ready with a message, or with `Closed` when the stream ended or failed either way;
    /// Pending otherwise (woken when the socket can take more, or has data).
    pub fn poll_io(&mut self, cx: &mut Context<'_>) -> Poll<AgentIo> {
        self.poll_io_when(cx, |_, _| true)
    }

    /// [`AgentLink::poll_io`], except that after a read that found no complete message, the
    /// next read waits until `readable` says the socket has data (and otherwise has registered
    /// `cx` for when it does). Every read attempt costs tungstenite a zeroed read buffer (it
    /// resizes its `BytesMut` to capacity, at least [`AGENT_READ_BUFFER`], before each read) and
    /// a trip through rustls,
    /// and the call polls the agent on every turn of its loop: ~5 futile reads per agent frame,
    /// 11 % of the call's instructions under callgrind (issue 16). Messages already buffered
    /// (several in one TCP read or TLS record) are still taken one per poll, since a read that
    /// returned one clears `read_idle`.
    pub fn poll_io_when(
        &mut self,
        cx: &mut Context<'_>,
        readable: impl FnOnce(&S, &mut Context<'_>) -> bool,
    ) -> Poll<AgentIo> {
        if self.pending {
            match Pin::new(&mut self.ws).poll_flush(cx) {
                Poll::Ready(Ok(())) => {
                    self.pending = false;
                    self.flushed = self.offered;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(AgentIo::Closed(Some(e.to_string()))),
                Poll::Pending => {}
            }
        }
        if self.read_idle && !readable(self.ws.get_ref(), cx) {
            return Poll::Pending;
        }
        let polled = Pin::new(&mut self.ws).poll_next(cx);
        self.read_idle = polled.is_pending();
        match polled {
            Poll::Ready(Some(Ok(m))) => Poll::Ready(AgentIo::Message(m)),
            Poll::Ready(Some(Err(e))) => Poll::Ready(AgentIo::Closed(Some(e.to_string()))),
            Poll::Ready(None) => Poll::Ready(AgentIo::Closed(None)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Sends what was fed (`stop` included), then a Close frame, each within `write_timeout`;
    /// then reads (and discards) what the agent still sends until its Close, the end of the
    /// stream or `close_wait` (RFC 6455 §7.1.1). Dropping a socket with unread data makes the
    /// kernel send an RST instead of a FIN; an agent that is still echoing audio then fails its
    /// next write and may never read the `stop` and Close already on their way (seen with the
    /// test agent under load). Meant for its own task: the call does not wait for it.
    pub async fn close(self, write_timeout: Duration, close_wait: Duration) {
        let mut ws = self.ws;
        match tokio::time::timeout(write_timeout, ws.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "agent WebSocket write failed at close");
                return;
            }
            Err(_) => {
                tracing::debug!(?write_timeout, "agent WebSocket write timed out at close");
                return;
            }
        }
        if tokio::time::timeout(write_timeout, ws.close(None))
            .await
            .is_err()
        {
            tracing::debug!(?write_timeout, "agent WebSocket Close timed out");
            return;
        }
        let drained = tokio::time::timeout(close_wait, async {
            let mut frames = 0u32;
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return frames,
                    Some(Ok(_)) => frames += 1,
                }
            }
        })
        .await;
        match drained {
            Ok(frames) => tracing::trace!(frames, "agent WebSocket closed"),
            Err(_) => tracing::debug!("agent did not answer our WebSocket Close in time"),
        }
    }
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

    /// A stream that counts the writes it is given and the reads it is asked for (the agent
    /// side of a duplex pipe).
    struct CountingStream {
        inner: tokio::io::DuplexStream,
        writes: Arc<std::sync::atomic::AtomicUsize>,
        reads: usize,
    }

    impl AsyncRead for CountingStream {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut tokio::io::ReadBuf<'_>,
        ) -> Poll<std::io::Result<()>> {
            self.reads += 1;
            Pin::new(&mut self.inner).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for CountingStream {
        fn poll_write(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<std::io::Result<usize>> {
            let r = Pin::new(&mut self.inner).poll_write(cx, buf);
            if matches!(r, Poll::Ready(Ok(_))) {
                self.writes
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            r
        }
        fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<std::io::Result<()>> {
            Pin::new(&mut self.inner).poll_shutdown(cx)
        }
    }

    /// sbc's end of a WebSocket over a duplex pipe of `capacity` bytes, the agent's end, and
    /// the count of writes sbc's end made.
    async fn link_pair(
        capacity: usize,
    ) -> (
        AgentLink<CountingStream>,
        WebSocketStream<tokio::io::DuplexStream>,
        Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (a, b) = tokio::io::duplex(capacity);
        let writes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let ours = CountingStream {
            inner: a,
            writes: Arc::clone(&writes),
            reads: 0,
        };
        let sbc = WebSocketStream::from_raw_socket(ours, Role::Client, None).await;
        let agent = WebSocketStream::from_raw_socket(b, Role::Server, None).await;
        (AgentLink::new(sbc), agent, writes)
    }

    fn poll_once<S: AsyncRead + AsyncWrite + Unpin>(link: &mut AgentLink<S>) -> Poll<AgentIo> {
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        link.poll_io(&mut cx)
    }

    #[tokio::test]
    async fn after_a_read_that_found_nothing_the_link_reads_only_once_the_socket_is_readable() {
        let (mut link, mut agent, _) = link_pair(64 * 1024).await;
        let mut cx = Context::from_waker(futures_util::task::noop_waker_ref());
        let reads = |l: &AgentLink<CountingStream>| l.ws.get_ref().reads;
        // Nothing sent: the first poll reads, finds nothing.
        assert!(link.poll_io_when(&mut cx, |_, _| true).is_pending());
        let after_first = reads(&link);
        assert!(after_first >= 1);
        // Not readable: no read at all, however often the call polls (feeding and flushing
        // still work).
        for i in 0..5 {
            link.feed(format!("f{i}")).unwrap();
            assert!(link.poll_io_when(&mut cx, |_, _| false).is_pending());
        }
        assert_eq!(reads(&link), after_first);
        assert_eq!(link.flushed(), 10);
        // Two messages in one go: readable, so it reads and takes the first; the second is
        // already buffered and comes out on the next poll whatever `readable` says.
        agent.send(Message::text("a")).await.unwrap();
        agent.send(Message::text("b")).await.unwrap();
        match link.poll_io_when(&mut cx, |_, _| true) {
            Poll::Ready(AgentIo::Message(m)) => assert_eq!(m, Message::text("a")),
            other => panic!("{other:?}"),
        }
        match link.poll_io_when(&mut cx, |_, _| false) {
            Poll::Ready(AgentIo::Message(m)) => assert_eq!(m, Message::text("b")),
            other => panic!("{other:?}"),
        }
        // Drained again: the next poll reads (nothing); then it waits for readiness.
        assert!(link.poll_io_when(&mut cx, |_, _| false).is_pending());
        let drained = reads(&link);
        assert!(link.poll_io_when(&mut cx, |_, _| false).is_pending());
        assert_eq!(reads(&link), drained);
        // The agent goes away: readable (EOF), and the link reports it.
        drop(agent);
        assert!(matches!(
            link.poll_io_when(&mut cx, |_, _| true),
            Poll::Ready(AgentIo::Closed(_))
        ));
    }

    #[tokio::test]
    async fn frames_fed_in_one_turn_go_out_in_one_write_and_messages_come_in() {
        let (mut link, mut agent, writes) = link_pair(64 * 1024).await;
        for i in 0..3 {
            link.feed(format!("frame {i}")).unwrap();
        }
        assert_eq!((link.offered(), link.flushed()), (21, 0));
        assert_eq!(
            writes.load(std::sync::atomic::Ordering::Relaxed),
            0,
            "fed, not written"
        );
        assert!(poll_once(&mut link).is_pending());
        assert_eq!(link.flushed(), 21);
        assert_eq!(
            writes.load(std::sync::atomic::Ordering::Relaxed),
            1,
            "three frames, one write"
        );
        for i in 0..3 {
            let m = agent.next().await.unwrap().unwrap();
            assert_eq!(m, Message::text(format!("frame {i}")));
        }
        // The agent's message comes back through the same poll.
        agent.send(Message::text("mark")).await.unwrap();
        match poll_once(&mut link) {
            Poll::Ready(AgentIo::Message(m)) => assert_eq!(m, Message::text("mark")),
            other => panic!("{other:?}"),
        }
        // Close: what was fed goes out first, then the Close; the agent's Close ends it.
        link.feed("stop".into()).unwrap();
        let closing = tokio::spawn(link.close(Duration::from_secs(1), Duration::from_secs(1)));
        assert_eq!(agent.next().await.unwrap().unwrap(), Message::text("stop"));
        assert!(matches!(agent.next().await, Some(Ok(Message::Close(_)))));
        let _ = agent.close(None).await;
        tokio::time::timeout(Duration::from_secs(2), closing)
            .await
            .expect("close ends after the agent's Close")
            .unwrap();
    }

    #[tokio::test]
    async fn an_agent_that_does_not_read_leaves_bytes_unflushed_and_the_flow_stuck() {
        let (mut link, agent, _writes) = link_pair(1024).await;
        let t0 = Instant::now();
        let mut flow = AgentFlow::new(16 * 1024, Duration::from_secs(2));
        for i in 0..40 {
            let frame = format!("{i:0>300}");
            if !flow.offer(t0, frame.len()) {
                break;
            }
            link.feed(frame).unwrap();
            assert!(poll_once(&mut link).is_pending());
            flow.written(t0, link.flushed());
        }
        // The pipe holds 1 KiB and the agent reads nothing: most of it waits, the call did not.
        assert!(link.flushed() < link.offered());
        assert!(flow.outstanding() > 10_000, "{}", flow.outstanding());
        assert!(flow.handle_timeout(t0 + Duration::from_secs(2)));
        drop(agent);
    }

    #[test]
    fn header_end_is_found_at_every_split_and_line_ending() {
        let tail = b"\x81\x02hi";
        for header in [
            &b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n"[..],
            b"HTTP/1.1 101 OK\nUpgrade: websocket\n\n",
            b"\r\n\nHTTP/1.1 101 OK\r\nA: b\n\r\n",
            b"HTTP/1.1 403 Forbidden\r\n\r\n",
        ] {
            let mut all = header.to_vec();
            all.extend_from_slice(tail);
            for split in 0..=all.len() {
                let mut end = HeaderEnd::default();
                let found = match end.feed(&all[..split]) {
                    Some(n) => n,
                    None => split + end.feed(&all[split..]).expect("end of header found"),
                };
                assert_eq!(found, header.len(), "{header:?} split at {split}");
            }
        }
        let mut end = HeaderEnd::default();
        assert_eq!(end.feed(b"HTTP/1.1 101 OK\r\nA: b\r\n"), None);
    }

    #[tokio::test]
    async fn header_only_reads_up_to_the_end_of_the_header_and_keeps_the_rest() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (ours, mut theirs) = tokio::io::duplex(1024);
        theirs
            .write_all(b"HTTP/1.1 101 OK\r\nA: b\r\n\r\n\x81\x02hi")
            .await
            .unwrap();
        let mut reader = HeaderOnly {
            inner: Some(ours),
            end: HeaderEnd::default(),
            done: false,
            tail: Vec::new(),
        };
        let mut buf = [0u8; 4096];
        let n = reader.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"HTTP/1.1 101 OK\r\nA: b\r\n\r\n");
        assert_eq!(reader.tail, b"\x81\x02hi");
        assert!(
            reader.read(&mut buf).await.is_err(),
            "nothing past the header"
        );
    }

    /// An agent's end of a duplex pipe that answers the upgrade with `status` (the right
    /// Sec-WebSocket-Accept unless `bad_accept`) and, in the same write, a text frame "hi".
    async fn raw_agent(
        mut pipe: tokio::io::DuplexStream,
        status: &str,
        bad_accept: bool,
    ) -> tokio::io::DuplexStream {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
        let mut request = Vec::new();
        while !request.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            pipe.read_exact(&mut b).await.unwrap();
            request.push(b[0]);
        }
        let request = String::from_utf8(request).unwrap();
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .expect("the request has a key")
            .trim();
        let accept = if bad_accept {
            derive_accept_key(b"another key")
        } else {
            derive_accept_key(key.as_bytes())
        };
        let mut out = format!(
            "HTTP/1.1 {status}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        out.extend_from_slice(b"\x81\x02hi");
        pipe.write_all(&out).await.unwrap();
        pipe
    }

    #[tokio::test]
    async fn upgrade_keeps_what_the_agent_sent_with_its_101() {
        use tokio_tungstenite::tungstenite::protocol::Role;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let agent = tokio::spawn(raw_agent(theirs, "101 Switching Protocols", false));
        let mut ws = upgrade("wss://agent.example/ws", ours).await.unwrap();
        let theirs = agent.await.unwrap();
        // "hi" came in the same write as the 101: the rebuilt stream still has it.
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hi"));
        let mut agent = WebSocketStream::from_raw_socket(theirs, Role::Server, None).await;
        ws.send(Message::text("hello")).await.unwrap();
        assert_eq!(agent.next().await.unwrap().unwrap(), Message::text("hello"));
        agent.send(Message::text("back")).await.unwrap();
        assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("back"));
        assert_eq!(ws.get_config().read_buffer_size, AGENT_READ_BUFFER);
    }

    #[tokio::test]
    async fn upgrade_refused_or_with_a_wrong_accept_key_fails() {
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        use tokio_tungstenite::tungstenite::Error;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let agent = tokio::spawn(raw_agent(theirs, "403 Forbidden", false));
        match upgrade("wss://agent.example/ws", ours).await {
            Err(Error::Http(resp)) => assert_eq!(resp.status(), 403),
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(agent.await.unwrap());
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        let agent = tokio::spawn(raw_agent(theirs, "101 Switching Protocols", true));
        match upgrade("wss://agent.example/ws", ours).await {
            Err(Error::Protocol(ProtocolError::SecWebSocketAcceptKeyMismatch)) => {}
            other => panic!("{:?}", other.map(|_| ())),
        }
        drop(agent.await.unwrap());
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
