//! Stream framing for SIP over TLS (RFC 3261 §18.3, RFC 5626 §4.4.1 keep-alives).
//!
//! A pure decoder: the shell pushes the bytes it read and pulls frames until `Ok(None)`.
//!
//! Keep-alives (RFC 5626 §4.4.1): a double CRLF is a ping (answer with one CRLF); a single CRLF
//! followed by anything but CR is a pong, which also covers stray CRLFs before a message
//! (RFC 3261 §7.5 asks to ignore them). A lone CRLF at the end of the buffer waits for the next
//! byte, because it may be the first half of a ping split across reads: sbc never sends pings, so
//! a pong only arrives unsolicited and waiting costs nothing.
//!
//! Messages: the header block ends at the first blank line (CRLF CRLF, or LF LF from LF-only
//! senders); the body is exactly Content-Length bytes (long or compact `l:` form), which a stream
//! transport must carry (RFC 3261 §18.3). After an error the connection is to be closed.

use bytes::Bytes;
use zeroize::Zeroize;

use super::message::{find_head_end, same_header, Body};

/// One unit cut from the byte stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Frame {
    /// A double CRLF ping (RFC 5626): answer with a single CRLF.
    Ping,
    /// A single CRLF pong: nothing to do.
    Pong,
    /// One whole SIP message, headers and body: a [`Body`], so that its SDP (and SRTP keys) is
    /// redacted in Debug and zeroized when the last copy goes.
    Message(Body),
}

/// Why the decoder gave up; the connection is closed after the answer (if any) is sent.
/// Only header blocks are kept here, never a body.
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
    /// Content-Length is not a number, or two of them disagree.
    #[error("invalid Content-Length")]
    BadContentLength { head: Bytes },
}

/// Incremental decoder.
///
/// Its buffer holds INVITE bodies, so SRTP keys: bytes read and not yet framed are
/// `buf[..filled]`, and every byte after `filled` is zero. A message cut from the buffer is
/// copied out (it never shares the buffer's memory), and the bytes it leaves behind are
/// zeroized; when the buffer grows the old one is zeroized before it is freed; on drop the
/// whole buffer is zeroized.
pub struct Framer {
    buf: Vec<u8>,
    filled: usize,
    max: usize,
    /// How far the current message's header block was already searched for its end.
    scanned: usize,
    /// End of the current message's header block, once found.
    head_end: Option<usize>,
}

impl Drop for Framer {
    fn drop(&mut self) {
        self.buf.zeroize();
    }
}

impl Framer {
    pub fn new(max_message_bytes: usize) -> Self {
        Framer {
            buf: Vec::new(),
            filled: 0,
            max: max_message_bytes,
            scanned: 0,
            head_end: None,
        }
    }

    /// Appends bytes read from the stream.
    pub fn push(&mut self, data: &[u8]) {
        let need = self.filled.saturating_add(data.len());
        if need > self.buf.len() {
            // Grow into a new zeroed buffer and wipe the old one (a Vec reallocation would free
            // it with its contents).
            let mut grown = vec![0u8; need.max(self.buf.len().saturating_mul(2)).max(1024)];
            grown[..self.filled].copy_from_slice(&self.buf[..self.filled]);
            self.buf.zeroize();
            self.buf = grown;
        }
        self.buf[self.filled..need].copy_from_slice(data);
        self.filled = need;
    }

    /// Bytes held and not yet framed.
    pub fn buffered(&self) -> usize {
        self.filled
    }

    fn data(&self) -> &[u8] {
        &self.buf[..self.filled]
    }

    /// Drops the first `n` buffered bytes, moving the rest to the front and zeroizing what the
    /// move leaves behind.
    fn consume(&mut self, n: usize) {
        let n = n.min(self.filled);
        self.buf.copy_within(n..self.filled, 0);
        let rest = self.filled - n;
        self.buf[rest..self.filled].zeroize();
        self.filled = rest;
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        if self.data().starts_with(b"\r\n") {
            if self.data().starts_with(b"\r\n\r\n") {
                self.consume(4);
                return Ok(Some(Frame::Ping));
            }
            match self.data().get(2) {
                // Maybe the start of a ping, or of CRLF CRLF split across reads.
                None => return Ok(None),
                Some(b'\r') if self.filled == 3 => return Ok(None),
                Some(_) => {
                    self.consume(2);
                    return Ok(Some(Frame::Pong));
                }
            }
        }
        if self.filled == 0 {
            return Ok(None);
        }
        // Search for the blank line; rescan the last 3 bytes in case it straddles two reads.
        // The search is bounded by the limit (+3 so that a head of exactly `max` bytes is seen).
        let head_end = match self.head_end {
            Some(h) => h,
            None => {
                let from = self.scanned.saturating_sub(3);
                let window = self.filled.min(self.max.saturating_add(3));
                let Some(h) = find_head_end(&self.buf[..window], from) else {
                    self.scanned = window;
                    if self.filled > self.max {
                        return Err(FrameError::TooLarge {
                            limit: self.max,
                            head: None,
                        });
                    }
                    return Ok(None);
                };
                self.head_end = Some(h);
                h
            }
        };
        let head = Bytes::copy_from_slice(&self.buf[..head_end]);
        let length = match content_length(&head) {
            Ok(Some(n)) => n,
            Ok(None) => return Err(FrameError::MissingContentLength { head }),
            Err(()) => return Err(FrameError::BadContentLength { head }),
        };
        let total = match head_end.checked_add(length) {
            Some(t) if t <= self.max => t,
            _ => {
                return Err(FrameError::TooLarge {
                    limit: self.max,
                    head: Some(head),
                })
            }
        };
        if self.filled < total {
            return Ok(None);
        }
        self.scanned = 0;
        self.head_end = None;
        let message = Body::from(self.buf[..total].to_vec());
        self.consume(total);
        Ok(Some(Frame::Message(message)))
    }
}

/// The Content-Length of a header block (RFC 3261 §20.14, compact `l`): `Ok(None)` when absent,
/// `Err` when malformed or when two values disagree. Header names may have whitespace before
/// the colon (§7.3.1); folded lines are not expected here and make a line unrecognised.
fn content_length(head: &[u8]) -> Result<Option<usize>, ()> {
    let mut found: Option<usize> = None;
    // Skip the start line.
    for line in head.split(|&c| c == b'\n').skip(1) {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&c| c == b':') else {
            continue;
        };
        let name = String::from_utf8_lossy(&line[..colon]);
        if !same_header(name.trim_end(), "Content-Length") || line[0] == b' ' || line[0] == b'\t' {
            continue;
        }
        let value = std::str::from_utf8(&line[colon + 1..])
            .map_err(|_| ())?
            .trim();
        if value.is_empty() || !value.bytes().all(|c| c.is_ascii_digit()) {
            return Err(());
        }
        let n: usize = value.parse().map_err(|_| ())?;
        if found.is_some_and(|f| f != n) {
            return Err(());
        }
        found = Some(n);
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const M1: &[u8] = b"OPTIONS sip:sbc@192.0.2.1 SIP/2.0\r\nVia: SIP/2.0/TLS 192.0.2.2;branch=z9hG4bK1\r\nContent-Length: 5\r\n\r\nhello";
    const M2: &[u8] = b"BYE sip:sbc@192.0.2.1 SIP/2.0\r\nl: 0\r\nCall-ID: x\r\n\r\n";

    fn drain(f: &mut Framer) -> Vec<Frame> {
        let mut out = Vec::new();
        while let Some(fr) = f.next_frame().unwrap() {
            out.push(fr);
        }
        out
    }

    #[test]
    fn pipelined_split_at_every_boundary() {
        let mut all = b"\r\n\r\n".to_vec();
        all.extend_from_slice(M1);
        all.extend_from_slice(M2);
        let want = vec![
            Frame::Ping,
            Frame::Message(Body::from_static(M1)),
            Frame::Message(Body::from_static(M2)),
        ];
        for cut in 0..=all.len() {
            let mut f = Framer::new(4096);
            f.push(&all[..cut]);
            let mut got = drain(&mut f);
            f.push(&all[cut..]);
            got.extend(drain(&mut f));
            assert_eq!(got, want, "cut at {cut}");
            assert_eq!(f.buffered(), 0);
        }
        // Byte by byte.
        let mut f = Framer::new(4096);
        let mut got = Vec::new();
        for b in &all {
            f.push(&[*b]);
            got.extend(drain(&mut f));
        }
        assert_eq!(got, want);
    }

    /// The buffer never keeps a copy of a message it handed out: after a message is cut, and
    /// after the buffer grows, everything past the unframed bytes is zero, and the message
    /// does not share the buffer's memory.
    #[test]
    fn buffer_is_wiped_behind_each_message() {
        let mut f = Framer::new(1 << 16);
        let mut all = M1.to_vec();
        all.extend_from_slice(b"BYE sip:a SIP/2.0\r\n");
        f.push(&all);
        let Ok(Some(Frame::Message(m))) = f.next_frame() else {
            panic!("message expected")
        };
        assert_eq!(&m[..], M1);
        assert!(
            f.buf[f.filled..].iter().all(|&b| b == 0),
            "stale bytes left"
        );
        let range = f.buf.as_ptr_range();
        assert!(!range.contains(&m.as_ptr()), "message shares the buffer");
        // Growing: the new buffer holds only the unframed bytes, then zeros.
        let before = f.buf.len();
        f.push(&vec![b'x'; before * 2]);
        assert!(f.buf.len() > before);
        assert!(f.buf[f.filled..].iter().all(|&b| b == 0));
        assert_eq!(&f.buf[..19], b"BYE sip:a SIP/2.0\r\n");
    }

    #[test]
    fn ping_pong_and_leading_crlf() {
        let mut f = Framer::new(100);
        f.push(b"\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(b"\r\n");
        assert_eq!(f.next_frame(), Ok(Some(Frame::Ping)));
        f.push(b"\r\nBYE sip:a SIP/2.0\r\nl: 0\r\n\r\n");
        assert_eq!(f.next_frame(), Ok(Some(Frame::Pong)));
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
        assert_eq!(f.next_frame(), Ok(None));
    }

    #[test]
    fn lf_only_message() {
        let mut f = Framer::new(100);
        f.push(b"BYE sip:a SIP/2.0\nContent-Length : 2\n\nokNEXT");
        assert_eq!(
            f.next_frame(),
            Ok(Some(Frame::Message(Body::from_static(
                b"BYE sip:a SIP/2.0\nContent-Length : 2\n\nok"
            ))))
        );
        assert_eq!(f.buffered(), 4);
    }

    #[test]
    fn missing_and_bad_content_length() {
        let mut f = Framer::new(1000);
        f.push(b"BYE sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n");
        assert_eq!(
            f.next_frame(),
            Err(FrameError::MissingContentLength {
                head: Bytes::from_static(b"BYE sip:a SIP/2.0\r\nCall-ID: x\r\n\r\n")
            })
        );
        for bad in ["x", "-1", "", "99999999999999999999999999", "1 2"] {
            let mut f = Framer::new(1000);
            f.push(format!("BYE sip:a SIP/2.0\r\nContent-Length: {bad}\r\n\r\n").as_bytes());
            assert!(
                matches!(f.next_frame(), Err(FrameError::BadContentLength { .. })),
                "{bad}"
            );
        }
        let mut f = Framer::new(1000);
        f.push(b"BYE sip:a SIP/2.0\r\nContent-Length: 1\r\nl: 2\r\n\r\nab");
        assert!(matches!(
            f.next_frame(),
            Err(FrameError::BadContentLength { .. })
        ));
    }

    #[test]
    fn oversize() {
        // Complete head, body too large: head returned for a 413.
        let mut f = Framer::new(64);
        f.push(b"INVITE sip:a SIP/2.0\r\nContent-Length: 100\r\n\r\n");
        match f.next_frame() {
            Err(FrameError::TooLarge {
                limit: 64,
                head: Some(h),
            }) => {
                assert!(h.ends_with(b"100\r\n\r\n"))
            }
            other => panic!("{other:?}"),
        }
        // Endless header block.
        let mut f = Framer::new(64);
        f.push(b"INVITE sip:a SIP/2.0\r\n");
        assert_eq!(f.next_frame(), Ok(None));
        f.push(&[b'a'; 64]);
        assert_eq!(
            f.next_frame(),
            Err(FrameError::TooLarge {
                limit: 64,
                head: None
            })
        );
        // Exactly at the limit is fine.
        let msg = b"BYE sip:a SIP/2.0\r\nl: 3\r\n\r\nabc";
        let mut f = Framer::new(msg.len());
        f.push(msg);
        assert!(matches!(f.next_frame(), Ok(Some(Frame::Message(_)))));
        let mut f = Framer::new(msg.len() - 1);
        f.push(msg);
        assert!(matches!(
            f.next_frame(),
            Err(FrameError::TooLarge { head: Some(_), .. })
        ));
    }

    proptest::proptest! {
        #[test]
        fn framing_arbitrary_bytes_never_panics(
            chunks in proptest::collection::vec(proptest::collection::vec(proptest::prelude::any::<u8>(), 0..80), 0..8),
            max in 0usize..300,
        ) {
            let mut f = Framer::new(max);
            for c in &chunks {
                f.push(c);
                for _ in 0..10 {
                    match f.next_frame() {
                        Ok(Some(Frame::Message(m))) => {
                            proptest::prop_assert!(m.len() <= max);
                            let _ = super::super::SipMessage::parse(&m);
                        }
                        Ok(Some(_)) => {}
                        Ok(None) | Err(_) => break,
                    }
                }
            }
        }
    }
}
