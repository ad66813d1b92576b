//! The agent leg's TLS stream: a TLS 1.3 client over a [`TcpStream`] that keeps almost no buffer
//! of its own, driving rustls's unbuffered API ([`UnbufferedClientConnection`]).
//!
//! Why by hand: tokio-rustls drives rustls's buffered `ClientConnection`, whose deframer buffer
//! is allocated at a constant 4 KiB read size (rustls 0.23, `msgs/deframer/buffers.rs`, no knob)
//! and kept for the connection's life, plus a heap `Vec` per received record queued until it is
//! read: ~4.1 KiB of the ~30 KiB of heap a call held under heaptrack (issue 16). No crate
//! offers an async stream over rustls's unbuffered API with caller-owned buffers, so this
//! module is one: [`AgentTls`] implements tokio's `AsyncRead + AsyncWrite`, and the WebSocket
//! code above it (`agent::upgrade`, `HeaderOnly`, `AgentLink`) stays generic.
//!
//! Buffers: per worker thread, not per connection (as `udp_recv` does for datagrams). Each
//! thread has a read scratch ([`READ_SCRATCH_SIZE`], room for the largest record) and a write
//! scratch (one record of ciphertext), allocated once, borrowed only inside one poll (never
//! across a `Pending`) and by no code that could poll an `AgentTls` again. A connection keeps
//! only what a poll could not finish with, in buffers sized to it and freed once they drain:
//! - incoming ciphertext: when the connection holds none, a read takes the socket's bytes into
//!   the read scratch and rustls processes the records there; what is left (an incomplete
//!   record, or records not processed yet because the read stopped at a record's plaintext) is
//!   copied into the connection's own buffer, allocated to the end of the record under way.
//!   While that buffer holds bytes, reads append to it (at most up to the end of the record
//!   under way, so that it drains to empty), as rustls's discard rules are relative to it and
//!   record order must be kept; once rustls has discarded everything it is freed. rustls joins a
//!   handshake message split over several records in place and keeps those records until the
//!   message is complete: the own buffer then grows up to [`MAX_INCOMING`]. A record that
//!   straddles two socket reads thus costs one allocation of its size, for as long as it takes
//!   to arrive;
//! - outgoing ciphertext: when the connection has nothing waiting, a write encrypts into the
//!   write scratch and offers it to the socket at once; only what the socket did not take is
//!   copied into the connection's own buffer. While that holds bytes, writes append to it
//!   (order) and drain it; it is freed once written out;
//! - plaintext: nothing, except when the caller's read buffer is smaller than a record's
//!   plaintext: the rest waits there for the next reads and is freed once read;
//! - during the handshake (short): its own incoming (at least [`INCOMING_HANDSHAKE`]) and
//!   outgoing buffers, reduced at its end to what they still hold (nothing, or the client's
//!   Finished and records the server sent right behind its handshake).
//!
//! So an idle connection holds no buffer at all ([`AgentTls::buffered_capacity`] is 0).
//!
//! rustls 0.23 decrypts each record in place in the ciphertext buffer, then copies its payload
//! into a `Vec` that `ReadTraffic::next_record` hands out; that `Vec` is dropped when the record
//! has been copied to the caller (it is not kept until the caller reads, as in the buffered API).
//!
//! What it does not do: TLS 1.2, early data, a server side. Handshake failures are not retried.
//!
//! How to drive it: [`connect`] does the handshake over a connected socket; the stream then
//! reads and writes application data. The client's last handshake flight (its Finished) is left
//! waiting by `connect` and goes out with the first write (in the same socket write as the
//! WebSocket upgrade request: RFC 8446 §2 lets application data follow it at once) or before
//! the first read. Post-handshake messages (NewSessionTicket, KeyUpdate) are processed by reads.
//! rustls answers a KeyUpdate that asks for ours by switching its sending keys at once and
//! putting our KeyUpdate ahead of the next write's ciphertext (our own key updates, near the AEAD
//! limits, go the same way); handshake messages rustls wants sent are encoded as reads meet them
//! and go out with the next drain of the outgoing buffer. The peer's close_notify reads as the
//! end of the stream (TCP closed without it is an `UnexpectedEof` error, as with tokio-rustls);
//! `poll_shutdown` sends ours, then shuts the TCP write side.

use std::cell::RefCell;
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

/// Least size of the incoming buffer during the handshake: the server's flight (certificates)
/// is read in pieces of at least this size.
pub const INCOMING_HANDSHAKE: usize = 1024;

/// Largest TLS record on the wire: a 5-byte header and at most 2^14 + 256 bytes of encrypted
/// payload (RFC 8446 §5.2).
pub const MAX_RECORD: usize = 5 + (1 << 14) + 256;

/// Largest the incoming buffer may grow: rustls joins a handshake message split over several
/// records in place and keeps those records until the message is complete; it accepts handshake
/// messages up to 64 KiB, which fit in five records of the largest size.
pub const MAX_INCOMING: usize = 5 * MAX_RECORD;

/// Size of a thread's read scratch: one socket read takes at most this much, which holds the
/// largest record whole.
pub const READ_SCRATCH_SIZE: usize = MAX_RECORD;

/// Most plaintext one write takes: one full record (RFC 8446 §5.1).
const MAX_PLAINTEXT: usize = 1 << 14;

/// Upper bound of the bytes one record adds to its plaintext in TLS 1.3 without padding: header
/// (5), inner content type (1), AEAD tag (16), with room to spare.
const RECORD_OVERHEAD: usize = 64;

thread_local! {
    /// The thread's read scratch (module doc). `RefCell`: borrowed in `poll_read_scratch` only,
    /// which polls the socket and runs rustls (with its session cache), none of which polls an
    /// `AgentTls`; a borrow that fails anyway is an error, not a panic.
    static READ_SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        buf: vec![0; READ_SCRATCH_SIZE].into_boxed_slice(),
        start: 0,
        end: 0,
    });
    /// The thread's write scratch: one record's ciphertext, plus the handshake messages rustls
    /// puts ahead of it (a KeyUpdate). It grows if rustls asks for more and keeps that size.
    static WRITE_SCRATCH: RefCell<Outgoing> = RefCell::new(Outgoing {
        buf: vec![0; MAX_RECORD + RECORD_OVERHEAD],
        start: 0,
        end: 0,
    });
}

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
    /// A socket write failed after `poll_write` had taken its plaintext (so it returned Ok):
    /// the next write drains first, which returns the error again.
    write_failed: bool,
}

/// Does the TLS 1.3 handshake with `server_name` over `tcp`, which is connected: sends what
/// rustls encodes and reads what it waits for until it can send application data. Data the
/// server sent right behind its handshake (or tickets) stays buffered for the first read.
///
/// The client's last flight (its Finished, with its certificate when it authenticates) is not
/// sent here: it waits in the stream's outgoing buffer and the next write sends it in the same
/// socket write as that write's data (the WebSocket upgrade request), or the next read sends it
/// before it reads. A caller that neither writes nor reads leaves the server waiting for it.
pub async fn connect(
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    tcp: TcpStream,
) -> io::Result<AgentTls> {
    let conn = UnbufferedClientConnection::new(config, server_name).map_err(tls_error)?;
    let mut tls = AgentTls {
        tcp,
        conn,
        incoming: Incoming::default(),
        outgoing: Outgoing::default(),
        plaintext: Vec::new(),
        plaintext_read: 0,
        peer_closed: false,
        close_queued: false,
        write_failed: false,
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

/// The ciphertext [`AgentTls::process`] hands to rustls.
enum Cipher<'s> {
    /// The connection's own incoming buffer.
    Own,
    /// The thread's read scratch, holding what one socket read took.
    Scratch(&'s mut Scratch),
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
    /// rustls's state and the threads' scratch buffers not included. 0 while idle.
    pub fn buffered_capacity(&self) -> usize {
        self.incoming.buf.capacity() + self.outgoing.buf.capacity() + self.plaintext.capacity()
    }

    async fn handshake(&mut self) -> io::Result<()> {
        loop {
            let UnbufferedStatus { discard, state } =
                self.conn.process_tls_records(self.incoming.held());
            let step = match state.map_err(tls_error)? {
                ConnectionState::EncodeTlsData(mut e) => {
                    encode(&mut e, &mut self.outgoing)?;
                    HandshakeStep::Continue
                }
                ConnectionState::TransmitTlsData(t) => {
                    // The encoded bytes are in `outgoing` once, sent below (or, at the end, by
                    // the first write or read).
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
            self.incoming.discard(discard)?;
            match step {
                HandshakeStep::Continue => {}
                // Sent with the next read's drain, or at the end left for the first write: the
                // client's Finished is the last thing rustls transmits, and it reaches `Done`
                // without reading after it.
                HandshakeStep::Transmit => {}
                HandshakeStep::Read => {
                    std::future::poll_fn(|cx| self.outgoing.poll_drain(&mut self.tcp, cx)).await?;
                    self.incoming.make_room(INCOMING_HANDSHAKE)?;
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
                    // What the handshake buffers still hold, in buffers of its size: the
                    // Finished (sent by the first write or read, see `connect`) and records
                    // that came behind the server's flight.
                    self.outgoing.shrink_to_pending();
                    self.incoming.shrink_to_needed();
                    return Ok(());
                }
            }
        }
    }

    /// After a failed handshake: encodes the alert rustls queued (bad certificate, ...) and
    /// offers it to the socket once, without waiting, so that the agent logs why.
    fn send_alert(&mut self) {
        let status = self.conn.process_tls_records(self.incoming.held());
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = status.state {
            if encode(&mut e, &mut self.outgoing).is_ok() {
                let _ = self.tcp.try_write(self.outgoing.pending());
            }
        }
    }

    /// Runs rustls over the ciphertext in `cipher` until it reaches a state the caller acts on:
    /// handshake messages it wants sent (a KeyUpdate answer) are encoded into `out` (the
    /// connection's outgoing buffer when None) on the way; a record's plaintext goes into `into`
    /// as far as it has room, the rest into `plaintext`; once nothing more can be processed,
    /// `op` is done into `out`. The discards are applied as the API requires: the status's,
    /// plus each record's, before rustls is asked again.
    fn process(
        &mut self,
        mut cipher: Cipher<'_>,
        mut out: Option<&mut Outgoing>,
        mut into: Option<&mut ReadBuf<'_>>,
        op: WriteOp<'_>,
    ) -> io::Result<Reached> {
        loop {
            let held = match &mut cipher {
                Cipher::Own => self.incoming.held(),
                Cipher::Scratch(s) => s.held(),
            };
            let UnbufferedStatus { mut discard, state } = self.conn.process_tls_records(held);
            let out: &mut Outgoing = match out.as_deref_mut() {
                Some(o) => o,
                None => &mut self.outgoing,
            };
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
                    encode(&mut e, out)?;
                    None
                }
                ConnectionState::TransmitTlsData(t) => {
                    // What was encoded waits in `out`, ahead of anything encrypted later, and
                    // goes out with the next drain.
                    t.done();
                    None
                }
                ConnectionState::WriteTraffic(mut w) => {
                    let n = match op {
                        WriteOp::None => 0,
                        WriteOp::Encrypt(data) => encrypt(&mut w, data, out)?,
                        WriteOp::CloseNotify => {
                            close_notify(&mut w, out)?;
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
            match &mut cipher {
                Cipher::Own => self.incoming.discard(discard)?,
                Cipher::Scratch(s) => s.discard(discard)?,
            }
            if let Some(reached) = reached {
                return Ok(reached);
            }
        }
    }

    /// With nothing in the connection's own incoming buffer: reads the socket into the
    /// thread's read scratch and processes the records there, delivering plaintext as
    /// `process` does; copies what is left (an incomplete record, or records after the one
    /// whose plaintext was delivered) into the connection's own buffer. Ready(Ok(true)) when
    /// the read is done (plaintext delivered, or the peer closed), Ready(Ok(false)) when it
    /// should go on (records without plaintext, or only part of a record arrived).
    ///
    /// The scratch is borrowed only within this call: a `Pending` from the socket returns out
    /// of the closure, which ends the borrow, and nothing it calls polls an `AgentTls`.
    fn poll_read_scratch(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<bool>> {
        let r = READ_SCRATCH.try_with(|cell| {
            let Ok(mut s) = cell.try_borrow_mut() else {
                return Poll::Ready(Err(io::Error::other("agent TLS read scratch in use")));
            };
            let s = &mut *s;
            s.start = 0;
            s.end = 0;
            let mut rb = ReadBuf::new(&mut s.buf);
            ready!(Pin::new(&mut self.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(eof_without_close_notify()));
            }
            s.end = n;
            let done = self.read_records(Some(&mut *s), buf)?;
            Poll::Ready(self.incoming.keep(s.held()).map(|()| done))
        });
        r.unwrap_or_else(|_| {
            Poll::Ready(Err(io::Error::other(
                "agent TLS read scratch gone (thread exiting)",
            )))
        })
    }

    /// With nothing waiting in the connection's own outgoing buffer: encrypts `data` into the
    /// thread's write scratch, offers it to the socket at once and copies what the socket did
    /// not take into the connection's own buffer. Returns how much plaintext was taken.
    ///
    /// As for the read scratch, the borrow ends within this call: the socket write does not
    /// wait (a full socket leaves the rest in the connection's buffer), and rustls does not
    /// call back into an `AgentTls`.
    fn write_via_scratch(&mut self, cx: &mut Context<'_>, data: &[u8]) -> io::Result<usize> {
        let r = WRITE_SCRATCH.try_with(|cell| {
            let Ok(mut s) = cell.try_borrow_mut() else {
                return Err(io::Error::other("agent TLS write scratch in use"));
            };
            let s = &mut *s;
            s.start = 0;
            s.end = 0;
            let n = self.encrypt_all(data, Some(s))?;
            // `data` was encrypted: Ok(n) whatever the socket does now. A write error shows
            // again on the next write (`write_failed`) or flush.
            if let Poll::Ready(Err(_)) = s.poll_send(&mut self.tcp, cx) {
                self.write_failed = true;
            }
            self.outgoing.append(s.pending());
            Ok(n)
        });
        r.unwrap_or_else(|_| Err(io::Error::other("agent TLS write scratch gone")))
    }

    /// Runs `process` until `data` (at most [`MAX_PLAINTEXT`]) is encrypted into `out` (the
    /// connection's outgoing buffer when None). Records processed on the way (a read had left
    /// some) go to `plaintext`, which `poll_read_ready` reports.
    fn encrypt_all(&mut self, data: &[u8], mut out: Option<&mut Outgoing>) -> io::Result<usize> {
        loop {
            match self.process(
                Cipher::Own,
                out.as_deref_mut(),
                None,
                WriteOp::Encrypt(data),
            )? {
                Reached::Writable(n) => return Ok(n),
                Reached::Data | Reached::PeerClosed => {}
                Reached::Closed => {
                    return Err(io::Error::new(
                        io::ErrorKind::BrokenPipe,
                        "the agent TLS connection is closed",
                    ))
                }
            }
        }
    }

    /// Processes the records held (in the thread's read scratch when given, else in the
    /// connection's own buffer) for a read: true once plaintext was delivered to `buf` or the
    /// peer closed, false when nothing more can be processed without more bytes. A record with
    /// an empty payload delivers nothing, so it does not end the read (Ready with no bytes
    /// would mean the end of the stream).
    fn read_records(
        &mut self,
        mut scratch: Option<&mut Scratch>,
        buf: &mut ReadBuf<'_>,
    ) -> io::Result<bool> {
        loop {
            let cipher = match scratch.as_deref_mut() {
                Some(s) => Cipher::Scratch(s),
                None => Cipher::Own,
            };
            let before = buf.filled().len();
            match self.process(cipher, None, Some(buf), WriteOp::None)? {
                Reached::Data => {
                    if buf.filled().len() > before || self.take_plaintext(buf) {
                        return Ok(true);
                    }
                }
                Reached::PeerClosed | Reached::Closed => return Ok(true),
                Reached::Writable(_) => return Ok(false),
            }
        }
    }

    /// Copies waiting plaintext into `buf`; false when none waits.
    fn take_plaintext(&mut self, buf: &mut ReadBuf<'_>) -> bool {
        let rest = self
            .plaintext
            .get(self.plaintext_read..)
            .unwrap_or_default();
        if rest.is_empty() {
            return false;
        }
        let n = rest.len().min(buf.remaining());
        buf.put_slice(&rest[..n]);
        self.plaintext_read += n;
        if self.plaintext_read >= self.plaintext.len() {
            self.plaintext = Vec::new();
            self.plaintext_read = 0;
        }
        true
    }
}

impl AsyncRead for AgentTls {
    /// Returns waiting plaintext, else processes records left in the connection's own buffer,
    /// else reads the socket: into that buffer while it holds part of a record, into the
    /// thread's read scratch otherwise (module doc).
    ///
    /// Pending is returned only from the socket read, and only once rustls has processed every
    /// complete record held (it reached `WriteTraffic`: nothing more to deframe, and no
    /// plaintext queued in it) and `plaintext` is empty. So when a read is Pending this type
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
            if this.peer_closed || this.read_records(None, buf)? {
                return Poll::Ready(Ok(()));
            }
            // Pending output (the client's Finished after `connect`, a KeyUpdate answer
            // processing queued) is offered to the socket without waiting for it (a pending
            // write is finished by the next write or flush).
            if let Poll::Ready(Err(e)) = this.outgoing.poll_drain(&mut this.tcp, cx) {
                return Poll::Ready(Err(e));
            }
            if this.incoming.filled == 0 {
                if ready!(this.poll_read_scratch(cx, buf))? {
                    return Poll::Ready(Ok(()));
                }
                continue;
            }
            this.incoming.make_room(0)?;
            let mut rb = ReadBuf::new(this.incoming.spare());
            ready!(Pin::new(&mut this.tcp).poll_read(cx, &mut rb))?;
            let n = rb.filled().len();
            if n == 0 {
                return Poll::Ready(Err(eof_without_close_notify()));
            }
            this.incoming.filled += n;
        }
    }
}

impl AsyncWrite for AgentTls {
    /// Encrypts up to one record of `buf` and offers it to the socket: with nothing waiting,
    /// through the thread's write scratch, keeping only what the socket does not take; with
    /// ciphertext waiting, appended to it (order) and drained with it in one socket write (the
    /// client's Finished goes out so with the first write). Ok(n) means exactly the first n
    /// bytes of `buf` were taken (and will be sent by this or a later write or flush); Pending
    /// (nothing taken, `cx` registered) while a full record's worth of earlier ciphertext still
    /// waits for the socket.
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
        if this.write_failed || this.outgoing.pending().len() >= MAX_PLAINTEXT {
            if let Poll::Ready(Err(e)) = this.outgoing.poll_drain(&mut this.tcp, cx) {
                return Poll::Ready(Err(e));
            }
            this.write_failed = false;
            if this.outgoing.pending().len() >= MAX_PLAINTEXT {
                // The drain above returned Pending: `cx` is registered for the socket.
                return Poll::Pending;
            }
        }
        let take = &buf[..buf.len().min(MAX_PLAINTEXT)];
        if this.outgoing.pending().is_empty() {
            return Poll::Ready(this.write_via_scratch(cx, take));
        }
        let n = this.encrypt_all(take, None)?;
        // `take` was encrypted: Ok(n) whatever the socket does now; the error shows again on
        // the next write (`write_failed`) or flush.
        if let Poll::Ready(Err(_)) = this.outgoing.poll_drain(&mut this.tcp, cx) {
            this.write_failed = true;
        }
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.outgoing.poll_drain(&mut this.tcp, cx))?;
        this.write_failed = false;
        Pin::new(&mut this.tcp).poll_flush(cx)
    }

    /// Sends close_notify (once), then shuts down the TCP write side. The peer's answer, if
    /// any, is for reads to see.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            loop {
                match this.process(Cipher::Own, None, None, WriteOp::CloseNotify)? {
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
    put_growing(
        out,
        |room| e.encode(room),
        |err| match err {
            EncodeError::InsufficientSize(InsufficientSizeError { required_size }) => {
                Some(*required_size)
            }
            _ => None,
        },
    )
}

/// Encrypts `data` into `out` (one record when `data` is at most [`MAX_PLAINTEXT`]), growing it
/// to the size rustls asks for. Returns `data.len()`.
fn encrypt(
    w: &mut WriteTraffic<'_, ClientConnectionData>,
    data: &[u8],
    out: &mut Outgoing,
) -> io::Result<usize> {
    out.reserve(data.len() + RECORD_OVERHEAD);
    put_growing(out, |room| w.encrypt(data, room), encrypt_room_needed)?;
    Ok(data.len())
}

/// Encrypts a close_notify alert into `out`.
fn close_notify(
    w: &mut WriteTraffic<'_, ClientConnectionData>,
    out: &mut Outgoing,
) -> io::Result<()> {
    out.reserve(RECORD_OVERHEAD);
    put_growing(out, |room| w.queue_close_notify(room), encrypt_room_needed)
}

/// Lets `put` (a rustls encode or encrypt) write into `out`'s spare room; when rustls says the
/// room is too small (`room_needed` gives the size it asked for), grows `out` and asks again.
fn put_growing<E: std::fmt::Display>(
    out: &mut Outgoing,
    mut put: impl FnMut(&mut [u8]) -> Result<usize, E>,
    room_needed: impl Fn(&E) -> Option<usize>,
) -> io::Result<()> {
    loop {
        match put(out.spare()) {
            Ok(n) => return out.advance(n),
            Err(e) => match room_needed(&e) {
                Some(size) => out.reserve(size),
                None => return Err(io::Error::other(format!("agent TLS: {e}"))),
            },
        }
    }
}

/// The room an encryption asked for, when that is why it failed.
fn encrypt_room_needed(e: &EncryptError) -> Option<usize> {
    match e {
        EncryptError::InsufficientSize(InsufficientSizeError { required_size }) => {
            Some(*required_size)
        }
        _ => None,
    }
}

/// A rustls error as an I/O error (kind InvalidData, as tokio-rustls reports them), keeping
/// rustls's message ("invalid peer certificate: ...").
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// TCP ended without the peer's close_notify: as tokio-rustls reports it, an `UnexpectedEof`.
fn eof_without_close_notify() -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        "the agent closed TCP without a TLS close_notify",
    )
}

/// rustls told us to discard more than it was given: a bug, reported rather than panicking.
fn bad_discard(n: usize, held: usize) -> io::Error {
    io::Error::other(format!("agent TLS: discard of {n} bytes with {held} held"))
}

/// Size a buffer holding `bytes` needs for the records in it to be complete: the end of the
/// last record begun, or room for the next record's header (RFC 8446 §5.1: type, version,
/// 16-bit length). Walks the headers of what rustls has kept (a handshake message still being
/// joined, then at most one incomplete record); every index is below `bytes.len()`.
fn records_end(bytes: &[u8]) -> usize {
    let mut pos = 0;
    while let Some(&[_, _, _, hi, lo]) = bytes.get(pos..pos + 5) {
        pos += 5 + usize::from(u16::from_be_bytes([hi, lo]));
    }
    if pos > bytes.len() {
        pos
    } else {
        pos + 5
    }
}

/// The connection's own incoming ciphertext: `buf[..filled]` are bytes read from the socket and
/// not yet discarded by rustls; the whole of `buf` is initialized (the crate forbids `unsafe`),
/// so its length is its size. Empty, with no allocation, whenever `filled` is 0 after the
/// handshake.
#[derive(Default)]
struct Incoming {
    buf: Vec<u8>,
    filled: usize,
}

impl Incoming {
    /// The bytes held, for rustls.
    fn held(&mut self) -> &mut [u8] {
        let filled = self.filled.min(self.buf.len());
        &mut self.buf[..filled]
    }

    /// Removes the first `n` bytes (rustls is done with them); frees the buffer once it holds
    /// nothing.
    fn discard(&mut self, n: usize) -> io::Result<()> {
        if n == 0 {
            return Ok(());
        }
        if n > self.filled || self.filled > self.buf.len() {
            return Err(bad_discard(n, self.filled));
        }
        if n == self.filled {
            *self = Incoming::default();
            return Ok(());
        }
        self.buf.copy_within(n..self.filled, 0);
        self.filled -= n;
        Ok(())
    }

    /// Size the buffer needs for the records it holds to be complete ([`records_end`]).
    fn needed(&self) -> usize {
        records_end(self.buf.get(..self.filled).unwrap_or_default())
    }

    /// Grows the buffer when the record under way (or the next header) does not fit, and to
    /// at least `min` bytes.
    fn make_room(&mut self, min: usize) -> io::Result<()> {
        let needed = self.needed();
        if needed > MAX_INCOMING {
            return Err(too_large(needed));
        }
        let size = needed.max(min);
        if size <= self.buf.len() {
            return Ok(());
        }
        let mut bigger = vec![0; size];
        bigger[..self.filled].copy_from_slice(self.held());
        self.buf = bigger;
        Ok(())
    }

    /// Takes `rest`, what a read through the thread's scratch left, into a buffer allocated
    /// to the end of the record under way. Only called with nothing held.
    fn keep(&mut self, rest: &[u8]) -> io::Result<()> {
        if self.filled != 0 {
            return Err(io::Error::other("agent TLS: leftover with ciphertext held"));
        }
        if rest.is_empty() {
            *self = Incoming::default();
            return Ok(());
        }
        let needed = records_end(rest);
        if needed > MAX_INCOMING {
            return Err(too_large(needed));
        }
        let mut buf = vec![0; needed];
        buf[..rest.len()].copy_from_slice(rest);
        self.buf = buf;
        self.filled = rest.len();
        Ok(())
    }

    /// At the end of the handshake: keeps what is held in a buffer of the size it needs, or
    /// none.
    fn shrink_to_needed(&mut self) {
        if self.filled == 0 {
            *self = Incoming::default();
        } else {
            let needed = self.needed();
            if needed < self.buf.len() {
                let mut small = vec![0; needed];
                small[..self.filled].copy_from_slice(self.held());
                self.buf = small;
            }
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        let filled = self.filled.min(self.buf.len());
        &mut self.buf[filled..]
    }
}

fn too_large(needed: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("agent TLS records need {needed} bytes of buffer (limit {MAX_INCOMING})"),
    )
}

/// A thread's read scratch: `buf[start..end]` is what rustls has not discarded of one socket
/// read.
struct Scratch {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl Scratch {
    fn held(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.start..self.end).unwrap_or_default()
    }

    fn discard(&mut self, n: usize) -> io::Result<()> {
        if n > self.end.saturating_sub(self.start) {
            return Err(bad_discard(n, self.end.saturating_sub(self.start)));
        }
        self.start += n;
        Ok(())
    }
}

/// Outgoing ciphertext: `buf[start..end]` waits for the socket; all of `buf` is initialized.
/// The connection's own is freed once written out; a thread's write scratch is one too.
#[derive(Default)]
struct Outgoing {
    buf: Vec<u8>,
    start: usize,
    end: usize,
}

impl Outgoing {
    fn pending(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    fn spare(&mut self) -> &mut [u8] {
        self.buf.get_mut(self.end..).unwrap_or_default()
    }

    /// Counts `n` bytes written into `spare()` by rustls.
    fn advance(&mut self, n: usize) -> io::Result<()> {
        if n > self.buf.len().saturating_sub(self.end) {
            return Err(io::Error::other(format!(
                "agent TLS: {n} bytes encoded into a smaller buffer"
            )));
        }
        self.end += n;
        Ok(())
    }

    /// Makes room for `n` more bytes after `end`: moves what waits to the front, then grows
    /// (to exactly the size needed).
    fn reserve(&mut self, n: usize) {
        if self.buf.len().saturating_sub(self.end) >= n {
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

    /// Appends `bytes` after what waits.
    fn append(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.reserve(bytes.len());
        self.spare()[..bytes.len()].copy_from_slice(bytes);
        self.end += bytes.len();
    }

    /// Replaces the buffer with one the size of what waits (none when nothing does).
    fn shrink_to_pending(&mut self) {
        let pending = self.pending().to_vec();
        self.end = pending.len();
        self.start = 0;
        self.buf = pending;
    }

    /// Writes what waits to `tcp` until it is all written (Ready) or the socket is full
    /// (Pending, `cx` registered). Keeps the buffer.
    fn poll_send(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.start < self.end {
            let n = ready!(Pin::new(&mut *tcp).poll_write(cx, self.pending()))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.start = (self.start + n).min(self.end);
        }
        self.start = 0;
        self.end = 0;
        Poll::Ready(Ok(()))
    }

    /// [`Self::poll_send`], then frees the buffer once everything was written.
    fn poll_drain(&mut self, tcp: &mut TcpStream, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_send(tcp, cx))?;
        *self = Outgoing::default();
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
        let mut client = connect(client, name, tcp).await;
        if let Ok(c) = &mut client {
            // `connect` leaves the client's Finished waiting for the first write or read; the
            // server's accept completes once it has it.
            c.flush().await.unwrap();
        }
        (client, server.await.unwrap())
    }

    async fn pair(f: &Fixture) -> (AgentTls, ServerTls<TcpStream>) {
        let (c, s) = pair_with(Arc::clone(&f.client), Arc::clone(&f.server)).await;
        (c.unwrap(), s.unwrap())
    }

    /// Reads exactly `want.len()` bytes from `r` and checks they are `want`.
    async fn read_expecting(r: &mut (impl AsyncRead + Unpin), want: &[u8]) {
        let mut got = vec![0u8; want.len()];
        r.read_exact(&mut got).await.unwrap();
        assert_eq!(got, want);
    }

    /// An idle connection holds no buffer: everything went through the threads' scratch
    /// buffers or was freed once drained.
    fn holds_no_buffer(c: &AgentTls) {
        assert_eq!(c.incoming.filled, 0);
        assert_eq!(c.outgoing.pending(), b"");
        assert_eq!(c.buffered_capacity(), 0);
    }

    #[tokio::test]
    async fn small_writes_and_reads_both_ways() {
        let f = fixture();
        let (mut c, mut s) = pair(&f).await;
        assert_eq!(
            c.connection().protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        for i in 0..20 {
            let msg = format!("client message {i}");
            c.write_all(msg.as_bytes()).await.unwrap();
            c.flush().await.unwrap();
            read_expecting(&mut s, msg.as_bytes()).await;
            let msg = format!("server message {i}");
            s.write_all(msg.as_bytes()).await.unwrap();
            s.flush().await.unwrap();
            read_expecting(&mut c, msg.as_bytes()).await;
        }
        holds_no_buffer(&c);
    }

    #[tokio::test]
    async fn a_large_message_leaves_no_buffer_behind() {
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
        read_expecting(&mut c, &big).await;
        let mut s = writer.await.unwrap();
        holds_no_buffer(&c);
        // Client to server: 16 KiB records through the write scratch; what the socket did not
        // take at once is kept, then freed once written.
        c.write_all(&big).await.unwrap();
        c.flush().await.unwrap();
        read_expecting(&mut s, &big).await;
        holds_no_buffer(&c);
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
        holds_no_buffer(&c);
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
        read_expecting(&mut c, &all).await;
        holds_no_buffer(&c);
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
        read_expecting(&mut c, b"hello at once").await;
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
        read_expecting(&mut s, b"ping").await;
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
        read_expecting(&mut c, b"early hello").await;
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
        read_expecting(&mut s, &[b'm'; 400]).await;
        // 2,048 before the threads' scratch buffers: 1,024 of incoming buffer kept for the
        // connection's life, and the 1,024 of outgoing buffer kept once written.
        assert_eq!(c.buffered_capacity(), 0);
        holds_no_buffer(&c);
    }

    /// A server end driven by hand (rustls's buffered `ServerConnection` over the raw socket),
    /// so that a test decides how records are cut into TCP writes.
    struct RawServer {
        tcp: TcpStream,
        conn: rustls::ServerConnection,
    }

    impl RawServer {
        /// The wire bytes of one record per message (after anything rustls had queued).
        fn records(&mut self, msgs: &[&[u8]]) -> Vec<u8> {
            for m in msgs {
                self.conn.writer().write_all(m).unwrap();
            }
            let mut wire = Vec::new();
            while self.conn.wants_write() {
                self.conn.write_tls(&mut wire).unwrap();
            }
            wire
        }
    }

    /// A client connection to a [`RawServer`], idle: the server's tickets and a first record
    /// have been read.
    async fn raw_pair(f: &Fixture) -> (AgentTls, RawServer) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::clone(&f.server);
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            while conn.is_handshaking() {
                if conn.wants_write() {
                    let mut out = Vec::new();
                    while conn.wants_write() {
                        conn.write_tls(&mut out).unwrap();
                    }
                    tcp.write_all(&out).await.unwrap();
                    continue;
                }
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0);
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).unwrap();
                    conn.process_new_packets().unwrap();
                }
            }
            RawServer { tcp, conn }
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = connect(Arc::clone(&f.client), name, tcp).await.unwrap();
        c.flush().await.unwrap();
        let mut s = server.await.unwrap();
        let wire = s.records(&[b"ready"]);
        s.tcp.write_all(&wire).await.unwrap();
        read_expecting(&mut c, b"ready").await;
        holds_no_buffer(&c);
        (c, s)
    }

    /// Polls `c.poll_read` into `buf` until it is Ready (Some(bytes read)) or Pending with part
    /// of a record kept in the connection's own buffer (None), waiting for the socket while it
    /// is Pending with nothing kept (the segment has not arrived yet).
    async fn read_or_keep(c: &mut AgentTls, buf: &mut [u8]) -> Option<usize> {
        loop {
            let mut rb = ReadBuf::new(buf);
            let r =
                std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut *c).poll_read(cx, &mut rb)))
                    .await;
            match r {
                Poll::Ready(res) => {
                    res.unwrap();
                    return Some(rb.filled().len());
                }
                Poll::Pending if c.incoming.filled > 0 => return None,
                Poll::Pending => std::future::poll_fn(|cx| c.poll_read_ready(cx))
                    .await
                    .unwrap(),
            }
        }
    }

    #[tokio::test]
    async fn a_record_split_across_two_segments_is_kept_then_completed() {
        let f = fixture();
        let (mut c, mut s) = raw_pair(&f).await;
        let msg: Vec<u8> = (0..1000u32).map(|i| (i % 249) as u8).collect();
        let wire = s.records(&[&msg]);
        let cut = 600;
        s.tcp.write_all(&wire[..cut]).await.unwrap();
        let mut buf = vec![0u8; 2000];
        // The first segment was read into the thread's scratch; the connection keeps it, in a
        // buffer the size of the record.
        assert_eq!(read_or_keep(&mut c, &mut buf).await, None);
        assert_eq!(c.incoming.filled, cut);
        assert_eq!(c.incoming.held(), &wire[..cut]);
        assert_eq!(c.buffered_capacity(), wire.len());
        // The rest is read after it, into that buffer.
        s.tcp.write_all(&wire[cut..]).await.unwrap();
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], &msg[..]);
        holds_no_buffer(&c);
    }

    #[tokio::test]
    async fn a_record_header_split_keeps_its_first_bytes() {
        let f = fixture();
        let (mut c, mut s) = raw_pair(&f).await;
        let first = s.records(&[b"first"]);
        let second = s.records(&[b"second"]);
        let mut segment = first.clone();
        segment.extend_from_slice(&second[..3]);
        s.tcp.write_all(&segment).await.unwrap();
        let mut buf = [0u8; 64];
        let n = read_or_keep(&mut c, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"first");
        // Three bytes of the next header, in room for the header.
        assert_eq!(c.incoming.held(), &second[..3]);
        assert_eq!(c.buffered_capacity(), 5);
        s.tcp.write_all(&second[3..]).await.unwrap();
        let n = c.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"second");
        holds_no_buffer(&c);
    }

    #[tokio::test]
    async fn two_connections_on_one_thread_keep_their_own_leftovers() {
        let f = fixture();
        let (mut c1, mut s1) = raw_pair(&f).await;
        let (mut c2, mut s2) = raw_pair(&f).await;
        let (a1, a2) = (s1.records(&[b"one: first"]), s1.records(&[&[b'1'; 700]]));
        let (b1, b2) = (s2.records(&[b"two: first"]), s2.records(&[&[b'2'; 900]]));
        s1.tcp
            .write_all(&[&a1[..], &a2[..200]].concat())
            .await
            .unwrap();
        s2.tcp
            .write_all(&[&b1[..], &b2[..300]].concat())
            .await
            .unwrap();
        // Both read through the same scratch (the test runtime has one thread), in turn.
        let mut buf = [0u8; 1000];
        let n = read_or_keep(&mut c1, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"one: first");
        let n = read_or_keep(&mut c2, &mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"two: first");
        assert_eq!(c1.incoming.held(), &a2[..200]);
        assert_eq!(c2.incoming.held(), &b2[..300]);
        // The rests, crossed.
        s2.tcp.write_all(&b2[300..]).await.unwrap();
        s1.tcp.write_all(&a2[200..]).await.unwrap();
        read_expecting(&mut c2, &[b'2'; 900]).await;
        read_expecting(&mut c1, &[b'1'; 700]).await;
        holds_no_buffer(&c1);
        holds_no_buffer(&c2);
    }

    #[tokio::test]
    async fn a_write_the_socket_takes_in_part_is_kept_and_sent_in_order() {
        let f = fixture();
        // Small socket buffers: the window fills after a few records.
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(16 * 1024).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let listener = socket.listen(1).unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&f.server));
        let (go, go_rx) = tokio::sync::oneshot::channel::<usize>();
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            let mut s = acceptor.accept(tcp).await.unwrap();
            // Reads nothing more until the client has found its socket full.
            let total = go_rx.await.unwrap();
            let mut got = vec![0u8; total];
            s.read_exact(&mut got).await.unwrap();
            got
        });
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.set_send_buffer_size(16 * 1024).unwrap();
        let tcp = client.connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = connect(Arc::clone(&f.client), name, tcp).await.unwrap();
        c.flush().await.unwrap();
        let data: Vec<u8> = (0..(1u32 << 20))
            .map(|i| (i % 241) as u8 ^ (i >> 12) as u8)
            .collect();
        let mut off = 0;
        loop {
            let chunk = &data[off..];
            assert!(!chunk.is_empty(), "the socket never filled");
            let r = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut c).poll_write(cx, chunk)))
                .await;
            match r {
                Poll::Ready(n) => {
                    let n = n.unwrap();
                    assert_eq!(n, chunk.len().min(MAX_PLAINTEXT), "a record's worth taken");
                    off += n;
                }
                Poll::Pending => break,
            }
        }
        // Pending: a record's worth of ciphertext waits. It began as what the socket did not
        // take of a record encrypted into the write scratch (the buffer was empty after the
        // flush), then later records were appended behind it.
        assert!(c.outgoing.pending().len() >= MAX_PLAINTEXT);
        assert!(c.buffered_capacity() <= 2 * (MAX_RECORD + RECORD_OVERHEAD));
        go.send(data.len()).unwrap();
        c.write_all(&data[off..]).await.unwrap();
        c.flush().await.unwrap();
        holds_no_buffer(&c);
        let got = server.await.unwrap();
        assert_eq!(got.len(), data.len());
        assert!(got == data, "the bytes arrive intact and in order");
    }

    #[tokio::test]
    async fn the_clients_finished_goes_out_with_the_first_write() {
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let config = Arc::clone(&f.server);
        let server = tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            let mut buf = vec![0u8; 1 << 16];
            // ClientHello in, the server's flight out.
            while !conn.wants_write() {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0);
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).unwrap();
                    conn.process_new_packets().unwrap();
                }
            }
            let mut out = Vec::new();
            while conn.wants_write() {
                conn.write_tls(&mut out).unwrap();
            }
            tcp.write_all(&out).await.unwrap();
            // Reads until the client's Finished has come (its middlebox-compatibility
            // ChangeCipherSpec may come before, alone): the read that brought the Finished
            // also brought the first data, unless they were written apart.
            while conn.is_handshaking() {
                let n = tcp.read(&mut buf).await.unwrap();
                assert!(n > 0);
                let mut rd = &buf[..n];
                while !rd.is_empty() {
                    conn.read_tls(&mut rd).unwrap();
                    conn.process_new_packets().unwrap();
                }
            }
            let mut plain = vec![0u8; 64];
            let k = std::io::Read::read(&mut conn.reader(), &mut plain).unwrap_or(0);
            plain.truncate(k);
            plain
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = connect(Arc::clone(&f.client), name, tcp).await.unwrap();
        assert!(!c.outgoing.pending().is_empty(), "the Finished waits");
        // Time for a Finished sent by `connect` to reach the server's read on its own.
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        c.write_all(b"GET / HTTP/1.1").await.unwrap();
        assert_eq!(c.outgoing.pending(), b"", "sent at once");
        let plain = server.await.unwrap();
        assert_eq!(plain, b"GET / HTTP/1.1", "the data came with the Finished");
        holds_no_buffer(&c);
    }

    #[tokio::test]
    async fn a_client_that_reads_first_sends_its_finished() {
        let f = fixture();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::clone(&f.server));
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // Completes once the client's Finished has arrived.
            let mut s = acceptor.accept(tcp).await.unwrap();
            s.write_all(b"server first").await.unwrap();
            s.flush().await.unwrap();
            s
        });
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let mut c = connect(Arc::clone(&f.client), name, tcp).await.unwrap();
        let mut buf = [0u8; 12];
        tokio::time::timeout(std::time::Duration::from_secs(10), c.read_exact(&mut buf))
            .await
            .expect("the read sent the Finished, so the server wrote")
            .unwrap();
        assert_eq!(&buf, b"server first");
        let _s = server.await.unwrap();
        holds_no_buffer(&c);
    }

    #[test]
    fn records_end_walks_the_record_headers() {
        assert_eq!(records_end(&[]), 5);
        assert_eq!(records_end(&[23, 3, 3]), 5);
        // One complete record of 3 bytes, then a header announcing 2000.
        let bytes = [23, 3, 3, 0, 3, 1, 2, 3, 23, 3, 3, 0x07, 0xd0, 9];
        assert_eq!(records_end(&bytes[..8]), 8 + 5);
        assert_eq!(records_end(&bytes), 8 + 5 + 2000);
        let mut inc = Incoming::default();
        inc.keep(&bytes).unwrap();
        assert_eq!(inc.buf.len(), 8 + 5 + 2000);
        assert_eq!(inc.held(), &bytes);
        inc.discard(8).unwrap();
        assert_eq!(inc.held(), &bytes[8..]);
        assert_eq!(inc.buf.len(), 8 + 5 + 2000, "the record under way needs it");
        assert!(inc.discard(7).is_err(), "more than held");
        inc.discard(6).unwrap();
        assert_eq!(inc.buf.capacity(), 0, "freed once empty");
        // A split header: room for the header, then for its record.
        inc.keep(&[23, 3, 3]).unwrap();
        assert_eq!(inc.buf.len(), 5);
        inc.spare().copy_from_slice(&[0, 100]);
        inc.filled = 5;
        inc.make_room(0).unwrap();
        assert_eq!(inc.buf.len(), 105);
        assert_eq!(inc.held(), &[23, 3, 3, 0, 100]);
        // Records that would need more than MAX_INCOMING: an error, not an allocation.
        let mut big = Vec::new();
        for _ in 0..6 {
            big.extend_from_slice(&[23, 3, 3, 0x41, 0x00]);
            big.resize(big.len() + 0x4100, 0);
        }
        big.extend_from_slice(&[23, 3, 3, 0x41, 0x00]);
        let mut inc = Incoming::default();
        assert_eq!(
            inc.keep(&big).unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        assert_eq!(inc.buf.capacity(), 0);
    }
}
