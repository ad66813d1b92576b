//! `sdp`: a pure SDP (RFC 8866) parser and writer, the SDES `a=crypto` attribute (RFC 4568) and
//! offer/answer (RFC 3264) for a carrier's SRTP audio leg.
//!
//! INTERFACE STUB written by the lead so that the other crates compile against a fixed API.
//! The `sdp` helper replaces every body and may restructure modules, but keeps the public items
//! below (names, fields, signatures). Additions are fine.
#![forbid(unsafe_code)]

use std::fmt;
use std::net::{IpAddr, SocketAddr};

/// A parsed session description that writes back byte-exactly.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {}

impl SessionDescription {
    /// Parses an SDP body (CRLF or bare LF line endings).
    pub fn parse(input: &[u8]) -> Result<Self, ParseError> {
        let _ = input;
        unimplemented!("sdp stub")
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, _f: &mut fmt::Formatter<'_>) -> fmt::Result {
        unimplemented!("sdp stub")
    }
}

/// Why parsing failed, and where (1-based line, byte offset of the line start).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("SDP line {line} (byte {offset}): {kind}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// Byte offset of the start of the offending line.
    pub offset: usize,
    /// What was wrong.
    pub kind: String,
}

/// SRTP crypto suites (RFC 4568 §6.2, RFC 6188). Only the AES-CM ones are ever negotiated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum SrtpSuite {
    AesCm128HmacSha1_80,
    AesCm128HmacSha1_32,
    /// Any other suite name, kept as written (e.g. `AEAD_AES_256_GCM`, `F8_128_HMAC_SHA1_80`).
    Unknown(String),
}

impl SrtpSuite {
    /// The RFC 4568 name, e.g. `AES_CM_128_HMAC_SHA1_80`.
    pub fn name(&self) -> &str {
        unimplemented!("sdp stub")
    }
    /// Master key length in bytes (16 for AES-128).
    pub fn key_len(&self) -> usize {
        unimplemented!("sdp stub")
    }
    /// Master salt length in bytes (14).
    pub fn salt_len(&self) -> usize {
        unimplemented!("sdp stub")
    }
    /// Authentication tag length in bytes (10 or 4).
    pub fn tag_len(&self) -> usize {
        unimplemented!("sdp stub")
    }
}

/// SRTP master key followed by master salt. Debug prints `<redacted>`; zeroized on drop.
#[derive(Clone, PartialEq, Eq)]
pub struct KeySalt {}

impl KeySalt {
    /// Builds from key || salt bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        let _ = bytes;
        unimplemented!("sdp stub")
    }
    pub fn key(&self) -> &[u8] {
        unimplemented!("sdp stub")
    }
    pub fn salt(&self) -> &[u8] {
        unimplemented!("sdp stub")
    }
}

impl fmt::Debug for KeySalt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// Audio codecs sbc answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

/// SDP media direction (RFC 8866 §6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

/// What we answer with.
pub struct AnswerPolicy {
    /// Accepted SRTP suites, most preferred first.
    pub suites: Vec<SrtpSuite>,
    /// Accepted codecs, most preferred first.
    pub codecs: Vec<Codec>,
    /// Address written in our `c=` and `o=` lines.
    pub address: IpAddr,
    /// Our RTP port (RTCP is port + 1 unless the offer has `a=rtcp-mux`).
    pub port: u16,
    /// `o=` session id and version (the version goes up by one on each new answer in a dialog).
    pub session_id: u64,
    pub session_version: u64,
    /// Re-use this key for the same suite (re-INVITE); `None` draws a fresh one from the RNG.
    pub local_key: Option<KeySalt>,
}

/// An accepted offer: the SDP to send and the parameters for the media layer.
#[derive(Debug)]
pub struct Answer {
    pub sdp: SessionDescription,
    pub negotiated: Negotiated,
}

/// Negotiated media parameters for the carrier leg.
#[derive(Clone, Debug)]
pub struct Negotiated {
    /// Where the carrier wants RTP (offer's `c=` and `m=` port).
    pub remote_rtp: SocketAddr,
    /// Where the carrier wants RTCP (`a=rtcp`, else port + 1; equals `remote_rtp` with rtcp-mux).
    pub remote_rtcp: SocketAddr,
    pub rtcp_mux: bool,
    pub suite: SrtpSuite,
    /// Tag of the chosen `a=crypto` line.
    pub crypto_tag: u32,
    /// The carrier's key: decrypts what the carrier sends.
    pub remote_key: KeySalt,
    /// Our key: encrypts what we send.
    pub local_key: KeySalt,
    pub codec: Codec,
    pub payload_type: u8,
    /// `telephone-event` payload type, if offered.
    pub telephone_event: Option<u8>,
    /// Our direction, as written in the answer.
    pub direction: Direction,
    /// Names of every suite the offer carried on the chosen m-line (for the audit record).
    pub offered_suites: Vec<String>,
}

/// Why an offer is refused; `Display` is the text for the 488 `Warning` header.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Refusal {
    #[error("no audio media line offered")]
    NoAudio,
    #[error("plain RTP offered; SRTP (RTP/SAVP with SDES) is required")]
    PlainRtp,
    #[error("no AES-CM SRTP suite offered (offered: {offered})")]
    NoAesCmSuite { offered: String },
    #[error("no usable a=crypto line: {reason}")]
    NoUsableCrypto { reason: String },
    #[error("no common codec (PCMU or PCMA required)")]
    NoCommonCodec,
}

/// Answers a carrier offer (RFC 3264) under `policy`.
pub fn answer_offer(
    offer: &SessionDescription,
    policy: &AnswerPolicy,
    rng: &mut dyn rand::RngCore,
) -> Result<Answer, Refusal> {
    let _ = (offer, policy, rng);
    unimplemented!("sdp stub")
}
