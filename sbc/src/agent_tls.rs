//! The agent leg's TLS stream: a TLS 1.3 client over a [`TcpStream`] that owns its buffers and
//! keeps them small, driving rustls's unbuffered API ([`UnbufferedClientConnection`]).
//!
//! Why by hand: tokio-rustls drives rustls's buffered `ClientConnection`, whose deframer buffer
//! is allocated at a constant 4 KiB read size (rustls 0.23, `msgs/deframer/buffers.rs`, no knob)
//! and kept for the connection's life, plus a heap `Vec` per received record queued until it is
//! read: ~4.1 KiB of the ~30 KiB of heap a call held under heaptrack (issue 16). No crate
//! offers an async stream over rustls's unbuffered API with a caller-owned small buffer, so this
//! module is one: [`AgentTls`] implements tokio's `AsyncRead + AsyncWrite`, and the WebSocket
//! code above it (`agent::upgrade`, `HeaderOnly`, `AgentLink`) stays generic.
//!
//! What it holds per connection, besides rustls's connection state:
//! - incoming ciphertext: [`INCOMING_DEFAULT`] bytes (two or three agent `media` records of
//!   ~300-400 bytes), grown to the size of a larger record while one arrives (at most
//!   [`MAX_INCOMING`]) and shrunk back as soon as what it still holds fits the default size;
//! - outgoing ciphertext: what one write encrypted and the socket has not taken yet; a buffer
//!   larger than [`OUTGOING_KEEP`] is freed once it has been written out;
//! - plaintext: nothing, except when the caller's read buffer is smaller than a record's
//!   plaintext: the rest waits there for the next reads and is freed once read.
//!
//! rustls 0.23 decrypts each record in place in the incoming buffer, then copies its payload into
//! a `Vec` that `ReadTraffic::next_record` hands out; that `Vec` is dropped when the record has
//! been copied to the caller (it is not kept until the caller reads, as in the buffered API).
//!
//! What it does not do: TLS 1.2, early data, a server side. Handshake failures are not retried.
//!
//! How to drive it: [`connect`] does the handshake over a connected socket; the stream then
//! reads and writes application data. Post-handshake messages (NewSessionTicket, KeyUpdate) are
//! processed by reads. rustls answers a KeyUpdate that asks for ours by switching its sending
//! keys at once and putting our KeyUpdate ahead of the next write's ciphertext (our own key
//! updates, near the AEAD limits, go the same way); handshake messages rustls wants sent are
//! encoded as reads meet them and go out with the next drain of the outgoing buffer. The peer's
//! close_notify reads as the end of the stream (TCP closed without it is an `UnexpectedEof`
//! error, as with tokio-rustls); `poll_shutdown` sends ours, then shuts the TCP write side.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use rustls::client::{ClientConnectionData, UnbufferedClientConnection};
use rustls::unbuffered::{
    ConnectionState, EncodeError, EncodeTlsData, EncryptError, InsufficientSizeError,
    UnbufferedStatus, WriteTraffic,
};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Size of the incoming ciphertext buffer between records larger than it.
pub const INCOMING_DEFAULT: usize = 1024;

/// Largest TLS record on the wire: a 5-byte header and at most 2^14 + 256 bytes of encrypted
/// payload (RFC 8446 §5.2).
pub const MAX_RECORD: usize = 5 + (1 << 14) + 256;

/// Largest the incoming buffer may grow: rustls joins a handshake message split over several
/// records in place and keeps those records until the message is complete; it accepts handshake
/// messages up to 64 KiB, which fit in five records of the largest size.
pub const MAX_INCOMING: usize = 5 * MAX_RECORD;

/// Most plaintext one write takes: one full record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;

/// An outgoing buffer up to this size is kept once written out (one or two `media` frames to the
/// agent); a larger one is freed.
pub const OUTGOING_KEEP: usize = 1024;

/// Upper bound of the bytes one record adds to its plaintext in TLS 1.3 without padding: header
/// (5), inner content type (1), AEAD tag (16), with room to spare.
const RECORD_OVERHEAD: usize = 64;

/// A TLS 1.3 client connection to the agent over TCP. See the module doc.
pub struct AgentTls {
    tcp: TcpStream,
    conn: UnbufferedClientConnection,
    incoming: Incoming,
    outgoing: Outgoing,
    /// Decrypted bytes the caller's buffer could not take yet, read from `plaintext_read` on.
    /// Empty with no allocation otherwise.
    plaintext: Vec<u8>,
    plaintext_read: usize,
    /// The peer's close_notify was processed: reads give the end of the stream.
    peer_closed: bool,
    /// Our close_notify was encrypted: no more writes.
    close_queued: bool,
}

/// Does the TLS 1.3 handshake with `server_name` over `tcp`, which is connected: sends what
/// rustls encodes and reads what it waits for until it can send application data. Data the
/// server sent right behind its handshake (or tickets) stays buffered for the first read.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<AgentTls> {
    let conn = UnbufferedClientConnection::new(config, server_name).map_err(tls_error)?;
    let mut tls = AgentTls {
        tcp,
        conn,
        incoming: Incoming::new(),
        outgoing: Outgoing::default(),
        plaintext: Vec::new(),
        plaintext_read: 0,
        peer_closed: false,
        close_queued: false,
    };
    match tls.handshake().await {
        Ok(()) => Ok(tls),
        Err(e) => {
            tls.send_alert();
            Err(e)
        }
    }
}

/// What the handshake loop does after rustls has reached a state.
enum HandshakeStep {
    /// Ask rustls again.
    Continue,
    /// Send what was encoded.
    Transmit,
    /// rustls needs more of the server's flight.
    Read,
    /// Application data may flow.
    Done,
}

/// Where [`AgentTls::process`] stopped.
enum Reached {
    /// A record's plaintext was delivered: into the caller's buffer, the rest into `plaintext`.
    Data,
    /// Nothing more to process in the buffered ciphertext; the write operation was done and
    /// took this much plaintext.
    Writable(usize),
    /// The peer's close_notify was processed (reported once).
    PeerClosed,
    /// Both sides sent close_notify: nothing more can be read or written.
    Closed,
}

/// What [`AgentTls::process`] does once application data may be written.
#[derive(Clone, Copy)]
enum WriteOp<'a> {
    None,
    /// Encrypt this plaintext into the outgoing buffer.
    Encrypt(&'a [u8]),
    /// Encrypt a close_notify alert into the outgoing buffer.
    CloseNotify,
}

impl AgentTls {
    /// The TLS connection: what it negotiated (it derefs to [`rustls::CommonState`]).
    pub fn connection(&self) -> &UnbufferedClientConnection {
        &self.conn
    }

    /// Ready when a read may have something to return: decrypted bytes are waiting, the peer
    /// closed, or the TCP socket is readable (or failed); otherwise registers `cx` for the
    /// socket's readiness. After a read that returned Pending nothing waits here: such a read
    /// has processed every complete record and delivered all plaintext (see `poll_read`), so
    /// the socket's readiness alone says when to read again.
    pub fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.plaintext_read < self.plaintext.len() || self.peer_closed {
            return Poll::Ready(Ok(()));
        }
        self.tcp.poll_read_ready(cx)
    }

    /// Bytes of heap this type's own buffers hold (incoming, outgoing, undelivered plaintext),
    /// rustls's state not included.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.buf.capacity() + self.outgoing.buf.capacity() + self.plaintext.capacity()
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming.buf[..self.incoming.filled]);
            let step = match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.outgoing)?;
                    HandshakeStep::Continue
                }
                ConnectionState::TransmitTlsData(t) => {
                    // The encoded bytes are in `outgoing` once, sent just below.
                    t.done();
                    HandshakeStep::Transmit
                }
                ConnectionState::BlockedHandshake => HandshakeStep::Read,
                // Application data (sent by the server right behind its handshake) stays
                // queued in rustls for the first read.
                ConnectionState::WriteTraffic(_) | ConnectionState::ReadTraffic(_) => {
                    HandshakeStep::Done
                }
                ConnectionState::PeerClosed | ConnectionState::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "the agent closed the TLS connection during the handshake",
                    ))
                }
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected TLS state during the handshake: {other:?}"
                    )))
                }
            };
            self.incoming.discard(discard);
            match step {
                HandshakeStep::Continue => {}
                HandshakeStep::Transmit => {
                    std::future::poll_fn(|cx| self.outgoing.poll_drain(&mut self.tcp, cx)).await?
                }
                HandshakeStep::Read => {
                    std::future::poll_fn(|cx| self.outgoing.poll_drain(&mut self.tcp, cx)).await?;
                    self.incoming.make_room()?;
                    let n = std::future::poll_fn(|cx| {
                        let mut rb = ReadBuf::new(self.incoming.spare());
                        ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
                        Poll::Ready(Ok::<_, io::Error>(rb.filled().len()))
                    })
                    .await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the agent closed TCP during the TLS handshake",
                        ));
                    }
                    self.incoming.filled += n;
                }
                HandshakeStep::Done => {
                    return std::future::poll_fn(|cx| self.outgoing.poll_drain(&mut self.tcp, cx))
                        .await;
                }
            }
        }
    }

    /// After a failed handshake: encodes the alert rustls queued (bad certificate, ...) and
    /// offers it to the socket once, without waiting, so that the agent logs why.
    fn send_alert(&mut self) {
        let status = self
            .conn
            .process_tls_records(&mut self.incoming.buf[..self.incoming.filled]);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state {
            if encode(&mut e, &mut self.outgoing).is_ok() {
                let _ = self.tcp.try_write(self.outgoing.pending());
            }
        }
    }

    /// Runs rustls over the buffered ciphertext until it reaches a state the caller acts on:
    /// handshake messages it wants sent (a KeyUpdate answer) are encoded into `outgoing` on the
    /// way; a record's plaintext goes into `into` as far as it has room, the rest into
    /// `plaintext`; once nothing more can be processed, `op` is done. The discards are applied
    /// as the API requires: the status's, plus each record's, before rustls is asked again.
    fn process(
        &mut self,
        mut into: Option<&mut ReadBuf<'_>>,
        op: WriteOp<'_>,
    ) -> io::Result<Reached> {
        loop {
            let UnbufferedStatus { mut discard, state } = self
                .conn
                .process_tls_records(&mut self.incoming.buf[..self.incoming.filled]);
            let reached = match state.map_err(tls_error)? {
                ConnectionState::ReadTraffic(mut records) => {
                    while let Some(record) = records.next_record() {
                        let record = record.map_err(tls_error)?;
                        discard += record.discard;
                        let payload = record.payload;
                        let direct = match into.as_deref_mut() {
                            Some(buf) => {
                                let n = payload.len().min(buf.remaining());
                                buf.put_slice(&payload[..n]);
                                n
                            }
                            None => 0,
                        };
                        self.plaintext.extend_from_slice(&payload[direct..]);
                    }
                    Some(Reached::Data)
                }
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.outgoing)?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    // What was encoded waits in `outgoing`, ahead of anything encrypted later,
                    // and goes out with the next drain.
                    t.done();
                    None
                }
                ConnectionState::WriteTraffic(mut w) => {
                    let n = match op {
                        WriteOp::None => 0,
                        WriteOp::Encrypt(data) => encrypt(&mut w, data, &mut self.outgoing)?,
                        WriteOp::CloseNotify => {
                            close_notify(&mut w, &mut self.outgoing)?;
                            0
                        }
                    };
                    Some(Reached::Writable(n))
                }
                ConnectionState::PeerClosed => {
                    self.peer_closed = true;
                    Some(Reached::PeerClosed)
                }
                ConnectionState::Closed => {
                    self.peer_closed = true;
                    Some(Reached::Closed)
                }
                ConnectionState::BlockedHandshake => {
                    return Err(io::Error::other(
                        "agent TLS connection blocked in a handshake after the handshake",
                    ))
                }
                other => {
                    return Err(io::Error::other(format!(
                        "unexpected agent TLS state: {other:?}"
                    )))
                }
            };
            self.incoming.discard(discard);
            if let Some(reached) = reached {
                return Ok(reached);
            }
        }
    }

    /// Copies waiting plaintext into `buf`; false when none waits.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let rest = &self.plaintext[self.plaintext_read..];
        if rest.is_empty() {
            return false;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.plaintext_read += n;
        if self.plaintext_read == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_read = 0;
        }
        true
    }
}

impl AsyncRead for AgentTls {
    /// Returns waiting plaintext, else processes buffered records, else reads the socket.
    ///
    /// Pending is returned only from the socket read, and only once rustls has processed every
    /// complete record in `incoming` (it reached `WriteTraffic`: nothing more to deframe, and
    /// no plaintext queued in it) and `plaintext` is empty. So when a read is Pending this type
    /// holds no undelivered plaintext and no complete undecrypted record, and waiting for the
    /// socket to be readable (`poll_read_ready`, as `call::next_agent_io` does) loses nothing.
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 || this.take_plaintext(buf) {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.peer_closed {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            match this.process(Some(buf), WriteOp::None)? {
                Reached::Data => {
                    // A record with an empty payload delivers nothing: reading on, since
                    // Ready with no bytes would mean the end of the stream.
                    if buf.filled().len() > before || this.take_plaintext(buf) {
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                }
                Reached::PeerClosed | Reached::Closed => return Poll::Ready(Ok(())),
                Reached::Writable(_) => {}
            }
            // Processing may have queued a handshake message (a KeyUpdate answer): offer it to
            // the socket without waiting for it (a pending write is finished by the next write
            // or flush).
            if let Poll::Ready(Err(e)) = this.outgoing.poll_drain(&mut this.tcp, cx) {
                return Poll::Ready(Err(e));
            }
            this.incoming.make_room()?;
            let mut rb = ReadBuf::new(this.incoming.spare());
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the agent closed TCP without a TLS close_notify",
                )));
            }
            this.incoming.filled += n;
        }
    }
}

impl AsyncWrite for AgentTls {
    /// Encrypts up to one record of `buf` into the outgoing buffer and offers it to the socket.
    /// Ok(n) means exactly the first n bytes of `buf` were taken (and will be sent by this or a
    /// later write or flush); Pending (nothing taken) while a full record's worth of earlier
    /// ciphertext still waits for the socket.
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write to the agent after TLS close_notify",
            )));
        }
        if let Poll::Ready(Err(e)) = this.outgoing.poll_drain(&mut this.tcp, cx) {
            return Poll::Ready(Err(e));
        }
        if this.outgoing.pending().len() >= MAX_PLAINTEXT {
            // The drain above returned Pending: `cx` is registered for the socket.
            return Poll::Pending;
        }
        let take = &buf[..buf.len().min(MAX_PLAINTEXT)];
        let n = loop {
            // Records processed on the way (a read had left some) go to `plaintext`, which
            // `poll_read_ready` reports.
            match this.process(None, WriteOp::Encrypt(take))? {
                Reached::Writable(n) => break n,
                Reached::Data | Reached::PeerClosed => {}
                Reached::Closed => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the agent TLS connection is closed",
                    )))
                }
            }
        };
        // `take` was encrypted: Ok(n) whatever the socket does now. A write error here shows
        // again on the next write or flush.
        let _ = this.outgoing.poll_drain(&mut this.tcp, cx);
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.outgoing.poll_drain(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends close_notify (once), then shuts down the TCP write side. The peer's answer, if
    /// any, is for reads to see.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            loop {
                match this.process(None, WriteOp::CloseNotify)? {
                    Reached::Writable(_) | Reached::Closed => break,
                    Reached::Data | Reached::PeerClosed => {}
                }
            }
            this.close_queued = true;
        }
        ready!(this.outgoing.poll_drain(&mut this.tcp, cx))?;
        Pin::new(&mut this.tcp).poll_shutdown(cx)
    }
}

/// Encodes a handshake message into `out`, growing it to the size rustls asks for.
fn encode(e: &mut EncodeTlsData<'_, ClientConnectionData>, out: &mut Outgoing) -> io::Result<()> {
    loop {
        match e.encode(out.spare()) {
            Ok(n) => {
                out.end += n;
                return Ok(());
            }
            Err(EncodeError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.reserve(required_size)
            }
            Err(e) => return Err(io::Error::other(format!("agent TLS: {e}"))),
        }
    }
}

/// Encrypts `data` into `out` (one record when `data` is at most [`MAX_PLAINTEXT`]), growing it
/// to the size rustls asks for. Returns `data.len()`.
fn encrypt(
    w: &mut WriteTraffic<'_, ClientConnectionData>,
    data: &[u8],
    out: &mut Outgoing,
) -> io::Result<usize> {
    out.reserve(data.len() + RECORD_OVERHEAD);
    loop {
        match w.encrypt(data, out.spare()) {
            Ok(n) => {
                out.end += n;
                return Ok(data.len());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.reserve(required_size)
            }
            Err(e) => return Err(io::Error::other(format!("agent TLS: {e}"))),
        }
    }
}

/// Encrypts a close_notify alert into `out`.
fn close_notify(
    w: &mut WriteTraffic<'_, ClientConnectionData>,
    out: &mut Outgoing,
) -> io::Result<()> {
    out.reserve(RECORD_OVERHEAD);
    loop {
        match w.queue_close_notify(out.spare()) {
            Ok(n) => {
                out.end += n;
                return Ok(());
            }
            Err(EncryptError::InsufficientSize(InsufficientSizeError { required_size })) => {
                out.reserve(required_size)
            }
            Err(e) => return Err(io::Error::other(format!("agent TLS: {e}"))),
        }
    }
}

/// A rustls error as an I/O error (kind InvalidData, as tokio-rustls reports them), keeping
/// rustls's message ("invalid peer certificate: ...").
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Incoming ciphertext: `buf[..filled]` are bytes read from the socket and not yet discarded
/// by rustls; the whole of `buf` is initialized (the crate forbids `unsafe`), so its length is
/// its size.
struct Incoming {
    buf: Vec<u8>,
    filled: usize,
}

impl Incoming {
    fn new() -> Incoming {
        Incoming {
            buf: vec![0; INCOMING_DEFAULT],
            filled: 0,
        }
    }

    /// Removes the first `n` bytes (rustls is done with them). A buffer that had grown goes
    /// back to [`INCOMING_DEFAULT`] as soon as what it still holds, with the record under way,
    /// fits there (when it is empty at the latest): a stream that never drains exactly to a
    /// record boundary still gives the memory back.
    fn discard(&mut self, n: usize) {
        if n == 0 {
            return;
        }
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
        if self.buf.len() > INCOMING_DEFAULT && self.needed() <= INCOMING_DEFAULT {
            // `needed()` > `filled`: what is held fits.
            let mut small = vec![0; INCOMING_DEFAULT];
            small[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf = small;
        }
    }

    /// Size the buffer needs for the records it holds to be complete: the end of the last
    /// record begun, or room for the next record's header (RFC 8446 §5.1: type, version,
    /// 16-bit length). Walks the headers of what rustls has kept (a handshake message still
    /// being joined, then at most one incomplete record).
    fn needed(&self) -> usize {
        let mut pos = 0;
        while pos + 5 <= self.filled {
            let len = usize::from(u16::from_be_bytes([self.buf[pos + 3], self.buf[pos + 4]]));
            pos += 5 + len;
        }
        if pos > self.filled {
            pos
        } else {
            pos + 5
        }
    }

    /// Grows the buffer when the record under way (or the next header) does not fit.
    fn make_room(&mut self) -> io::Result<()> {
        let needed = self.needed();
        if needed <= self.buf.len() {
            return Ok(());
        }
        if needed > MAX_INCOMING {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("agent TLS records need {needed} bytes of buffer (limit {MAX_INCOMING})"),
            ));
        }
        let mut bigger = vec![0; needed];
        bigger[..self.filled].copy_from_slice(&self.buf[..self.filled]);
        self.buf = bigger;
        Ok(())
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.filled..]
    }
}

/// Outgoing ciphertext: `buf[start..end]` waits for the socket; all of `buf` is initialized.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Outgoing {
    fn pending(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn spare(&mut self) -> &mut [u8] {
        &mut self.buf[self.end..]
    }

    /// Makes room for `n` more bytes after `end`: moves what waits to the front, then grows.
    fn reserve(&mut self, n: usize) {
        if self.buf.len() - self.end >= n {
            return;
        }
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < n {
            let size = self.end + n;
            self.buf.reserve_exact(size - self.buf.len());
            self.buf.resize(size, 0);
        }
    }

    /// Writes what waits to `tcp` until it is all written (Ready) or the socket is full
    /// (Pending, `cx` registered). A buffer that had grown past [`OUTGOING_KEEP`] is freed once
    /// empty.
    fn poll_drain(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, &self.buf[self.start..self.end]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start += n;
        }
        self.start = 0;
        self.end = 0;
        if self.buf.capacity() > OUTGOING_KEEP {
            self.buf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use interop_tests::pki::{Identity, TestPki};
    use rustls::pki_types::PrivateKeyDer;
    use std::io::Write as _;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;
    use tokio_rustls::server::TlsStream as ServerTls;

    fn provider() -> Arc<rustls::crypto::CryptoProvider> {
        Arc::new(rustls::crypto::aws_lc_rs::default_provider())
    }

    fn server_config(id: &Identity) -> Arc<rustls::ServerConfig> {
        let key: PrivateKeyDer<'static> = id.private_key();
        let config = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(id.chain_der.clone(), key)
            .unwrap();
        Arc::new(config)
    }

    fn client_config(pki: &TestPki) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(pki.ca_der.clone()).unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        Arc::new(config)
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        pki: TestPki,
        client: Arc<rustls::ClientConfig>,
        /// One server config for all connections: its session cache resumes them.
        server: Arc<rustls::ServerConfig>,
    }

    fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let pki = TestPki::generate(dir.path());
        let client = client_config(&pki);
        let server = server_config(&pki.agent);
        Fixture {
            _dir: dir,
            pki,
            client,
            server,
        }
    }

    /// A client connection to a tokio-rustls server on 127.0.0.1, and the server's end.
    async fn pair_with(
        client: Arc<rustls::ClientConfig>,
        server: Arc<rustls::ServerConfig>,
    ) -> (io::Result<AgentTls>, io::Result<ServerTls<TcpStream>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(server);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            acceptor.accept(tcp).await
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let client = connect(client, name, tcp).await;
        (client, server.await.unwrap())
    }

    async fn pair(f: &Fixture) -> (AgentTls, ServerTls<TcpStream>) {
        let (c, s) = pair_with(Arc::clone(&f.client), Arc::clone(&f.server)).await;
        (c.unwrap(), s.unwrap())
    }

    fn idle_capacity_is_small(c: &AgentTls) {
        assert_eq!(c.incoming.buf.capacity(), INCOMING_DEFAULT);
        assert!(c.outgoing.buf.capacity() <= OUTGOING_KEEP);
        assert_eq!(c.plaintext.capacity(), 0);
    }

    #[tokio::test]
    async fn small_writes_and_reads_both_ways() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        assert_eq!(
            c.connection().protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        let mut buf = [0u8; 64];
        for i in 0..20 {
            let msg = format!("client message {i}");
            c.write_all(msg.as_bytes()).await.unwrap();
            c.flush().await.unwrap();
            s.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
            let msg = format!("server message {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
            c.read_exact(&mut buf[..msg.len()]).await.unwrap();
            assert_eq!(&buf[..msg.len()], msg.as_bytes());
        }
        idle_capacity_is_small(&c);
    }

    #[tokio::test]
    async fn a_large_message_grows_the_buffers_which_shrink_back() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        // Server to client: records of 16 KiB, larger than the incoming buffer.
        let writer = {
            let big = big.clone();
            tokio::spawn(async move {
                s.write_all(&big).await.unwrap();
                s.flush().await.unwrap();
                s
            })
        };
        let mut got = vec![0u8; big.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        let mut s = writer.await.unwrap();
        idle_capacity_is_small(&c);
        // Client to server: the outgoing buffer holds a 16 KiB record, then is freed.
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        let mut got = vec![0u8; big.len()];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, big);
        idle_capacity_is_small(&c);
    }

    #[tokio::test]
    async fn reads_with_a_one_byte_buffer() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        let msg: Vec<u8> = (0..20_000u32).map(|i| (i % 253) as u8).collect();
        s.write_all(b"short").await.unwrap();
        s.write_all(&msg).await.unwrap();
        s.flush().await.unwrap();
        let mut got = Vec::new();
        let mut one = [0u8; 1];
        while got.len() < 5 + msg.len() {
            let n = c.read(&mut one).await.unwrap();
            assert_eq!(n, 1);
            got.push(one[0]);
        }
        assert_eq!(&got[..5], b"short");
        assert_eq!(&got[5..], &msg[..]);
        idle_capacity_is_small(&c);
    }

    #[tokio::test]
    async fn many_records_in_one_tcp_write() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        // Queued in the server's rustls session as separate records, then written in one go.
        let mut all = Vec::new();
        for i in 0..50 {
            let msg = format!("{{\"event\":\"media\",\"n\":{i:0>300}}}");
            s.get_mut().1.writer().write_all(msg.as_bytes()).unwrap();
            all.extend_from_slice(msg.as_bytes());
        }
        s.flush().await.unwrap();
        let mut got = vec![0u8; all.len()];
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(got, all);
        idle_capacity_is_small(&c);
    }

    #[tokio::test]
    async fn data_sent_with_the_tickets_right_after_the_handshake_is_read_and_resumption_works() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        assert_eq!(
            c.connection().handshake_kind(),
            Some(rustls::HandshakeKind::Full)
        );
        // The server's tickets went out with (just before) this data.
        s.write_all(b"hello at once").await.unwrap();
        s.flush().await.unwrap();
        let mut buf = [0u8; 13];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"hello at once");
        assert!(c.connection().tls13_tickets_received() >= 1);
        drop((c, s));
        // A second connection with the same ClientConfig resumes.
        let (mut c, mut s) = pair(&f).await;
        assert_eq!(
            c.connection().handshake_kind(),
            Some(rustls::HandshakeKind::Resumed)
        );
        c.write_all(b"ping").await.unwrap();
        c.flush().await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"ping");
    }

    #[tokio::test]
    async fn data_in_the_servers_first_flight_after_its_finished_is_kept() {
        // The server writes before the client's Finished reaches it (0.5-RTT data): the client
        // may process it during its handshake; the first read must still return it.
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = (*f.server).clone();
        config.send_half_rtt_data = true;
        let config = Arc::new(config);
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut wire = Vec::new();
            // ClientHello in, first flight out, then application data in the same write.
            let mut buf = vec![0u8; 8192];
            while conn.is_handshaking() && !conn.wants_write() {
                let n = tcp.read(&mut buf).await.unwrap();
                let mut rd = &buf[..n];
                conn.read_tls(&mut rd).unwrap();
                conn.process_new_packets().unwrap();
            }
            conn.writer().write_all(b"early hello").unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut wire).unwrap();
            }
            tcp.write_all(&wire).await.unwrap();
            // Then finish the handshake and read the client's message.
            let mut plain = Vec::new();
            loop {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0);
                let mut rd = &buf[..n];
                conn.read_tls(&mut rd).unwrap();
                conn.process_new_packets().unwrap();
                let mut tmp = [0u8; 64];
                while let Ok(k) = std::io::Read::read(&mut conn.reader(), &mut tmp) {
                    if k == 0 {
                        break;
                    }
                    plain.extend_from_slice(&tmp[..k]);
                }
                let mut out = Vec::new();
                while conn.wants_write() {
                    conn.write_tls(&mut out).unwrap();
                }
                tcp.write_all(&out).await.unwrap();
                if plain.len() >= 3 {
                    return plain;
                }
            }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = connect(Arc::clone(&f.client), name, tcp).await.unwrap();
        let mut buf = [0u8; 11];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"early hello");
        c.write_all(b"ack").await.unwrap();
        c.flush().await.unwrap();
        assert_eq!(server.await.unwrap(), b"ack");
    }

    #[tokio::test]
    async fn key_updates_both_ways_keep_the_stream_working() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        let mut buf = [0u8; 5];
        for round in 0..3 {
            // The server updates its keys and asks the client to update its own.
            s.get_mut().1.refresh_traffic_keys().unwrap();
            s.write_all(b"after").await.unwrap();
            s.flush().await.unwrap();
            c.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"after", "round {round}");
            c.write_all(b"reply").await.unwrap();
            c.flush().await.unwrap();
            s.read_exact(&mut buf).await.unwrap();
            assert_eq!(&buf, b"reply", "round {round}");
        }
    }

    #[tokio::test]
    async fn close_notify_from_the_peer_reads_as_the_end_and_ours_reaches_it() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        s.write_all(b"bye").await.unwrap();
        s.shutdown().await.unwrap();
        let mut got = Vec::new();
        c.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"bye");
        let mut more = [0u8; 8];
        assert_eq!(c.read(&mut more).await.unwrap(), 0, "the end stays the end");
        // Half-closed: the client may still write, then closes cleanly.
        c.write_all(b"last").await.unwrap();
        c.shutdown().await.unwrap();
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"last");
        assert!(
            c.write_all(b"x").await.is_err(),
            "no write after close_notify"
        );
    }

    #[tokio::test]
    async fn tcp_closed_without_close_notify_is_an_error() {
        let f = fixture();
        let (mut c, s) = pair(&f).await;
        let (tcp, _) = s.into_inner();
        drop(tcp);
        let mut buf = [0u8; 8];
        let e = c.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn a_certificate_from_an_unknown_ca_fails_the_handshake() {
        let f = fixture();
        let (c, s) = pair_with(Arc::clone(&f.client), server_config(&f.pki.untrusted_agent)).await;
        let Err(e) = c else {
            panic!("the handshake fails")
        };
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("certificate"), "{e}");
        // The server learns why: the client's alert.
        let Err(e) = s else {
            panic!("the server sees the failure")
        };
        assert!(e.to_string().contains("UnknownCA"), "{e}");
    }

    #[tokio::test]
    async fn an_idle_connection_holds_little_heap_of_its_own() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        // Tickets and a first exchange processed: the call's steady state.
        s.write_all(b"x").await.unwrap();
        s.flush().await.unwrap();
        let mut one = [0u8; 1];
        c.read_exact(&mut one).await.unwrap();
        c.write_all(&[b'm'; 400]).await.unwrap();
        c.flush().await.unwrap();
        assert!(
            c.buffered_capacity() <= INCOMING_DEFAULT + OUTGOING_KEEP,
            "{}",
            c.buffered_capacity()
        );
        idle_capacity_is_small(&c);
    }

    #[test]
    fn needed_walks_the_record_headers() {
        let mut inc = Incoming::new();
        assert_eq!(inc.needed(), 5);
        // One complete record of 3 bytes, then a header announcing 2000.
        let bytes = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0x07, 0xd0, 9];
        inc.buf[..bytes.len()].copy_from_slice(&bytes);
        inc.filled = bytes.len();
        assert_eq!(inc.needed(), 8 + 5 + 2000);
        inc.make_room().unwrap();
        assert_eq!(inc.buf.len(), 8 + 5 + 2000);
        assert_eq!(&inc.buf[..bytes.len()], &bytes);
        inc.discard(8);
        assert_eq!(inc.filled, 6);
        assert_eq!(
            inc.buf.len(),
            8 + 5 + 2000,
            "the record under way still needs it"
        );
        inc.discard(6);
        assert_eq!(inc.buf.len(), INCOMING_DEFAULT, "shrunk back once empty");
        // Grown for a large record, then left holding the start of a small one: shrunk back,
        // the small record's bytes kept.
        let bytes = [23, 3, 3, 0x07, 0xd0];
        inc.buf[..5].copy_from_slice(&bytes);
        inc.filled = 5;
        inc.make_room().unwrap();
        inc.filled = 5 + 2000;
        inc.make_room().unwrap();
        assert_eq!(inc.buf.len(), 2005 + 5, "room for the next header");
        inc.buf[2005..2010].copy_from_slice(&[23, 3, 3, 0, 100]);
        inc.filled = 2010;
        inc.make_room().unwrap();
        assert_eq!(inc.buf.len(), 2010 + 100);
        inc.buf[2010] = 42;
        inc.filled = 2011;
        inc.discard(2005);
        assert_eq!(inc.buf.len(), INCOMING_DEFAULT);
        assert_eq!(&inc.buf[..6], &[23, 3, 3, 0, 100, 42]);
    }
}
