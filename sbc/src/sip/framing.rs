//! Stream framing for SIP over TLS (RFC 3261 §18.3, RFC 5626 §4.4.1 keep-alives).
//!
//! INTERFACE STUB: the SIP helper implements this.

use bytes::Bytes;

/// One unit cut from the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A double CRLF ping (RFC 5626): answer with a single CRLF.
    Ping,
    /// A single CRLF pong: nothing to do.
    Pong,
    /// One whole SIP message, headers and body.
    Message(Bytes),
}

/// Why the decoder gave up; the connection is closed after the answer (if any) is sent.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The message exceeds the size limit. `head` holds the header block when it was complete,
    /// so a 413 can be built from it.
    #[error("message larger than {limit} bytes")]
    TooLarge { limit: usize, head: Option<Bytes> },
    /// A message on a stream without Content-Length (RFC 3261 §18.3 makes it mandatory).
    #[error("missing Content-Length")]
    MissingContentLength { head: Bytes },
    #[error("invalid Content-Length")]
    BadContentLength { head: Bytes },
}

/// Incremental decoder.
pub struct Framer {}

impl Framer {
    pub fn new(max_message_bytes: usize) -> Self {
        let _ = max_message_bytes;
        unimplemented!("framing stub")
    }
    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        let _ = data;
        unimplemented!("framing stub")
    }
    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        unimplemented!("framing stub")
    }
}
