//! `sdp`: a pure SDP (RFC 8866) parser and writer, the SDES `a=crypto` attribute (RFC 4568) and
//! offer/answer (RFC 3264) for a carrier's SRTP audio leg.
//!
//! What it does: `SessionDescription::parse` turns bytes into typed lines and writes them back
//! byte-exactly (`to_string`); `answer_offer` answers a carrier's offer under an `AnswerPolicy`
//! or says why not (`Refusal`, whose text goes into a SIP 488 `Warning`).
//! The SRTP policy (which suites, their key, salt and tag lengths) is one table: [`SUITES`]
//! (`src/suite.rs`), read by the config, offer/answer and the media core.
//! What it does not do: I/O, clocks, global randomness (the RNG is injected), ICE, DTLS-SRTP.
//!
//! ```
//! use sdp::{answer_offer, AnswerPolicy, Codec, SessionDescription, SrtpSuite};
//! let offer = SessionDescription::parse(b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n").unwrap();
//! let policy = AnswerPolicy {
//!     suites: vec![SrtpSuite::AesCm128HmacSha1_80],
//!     codecs: vec![Codec::Pcmu, Codec::Pcma],
//!     address: "198.51.100.7".parse().unwrap(),
//!     port: 20000,
//!     session_id: 1,
//!     session_version: 1,
//!     local_key: None,
//!     allow_loopback: false,
//! };
//! let mut rng = rand::rngs::mock::StepRng::new(1, 1);
//! let answer = answer_offer(&offer, &policy, &mut rng).unwrap();
//! assert_eq!(answer.negotiated.payload_type, 0);
//! assert!(answer.sdp.to_string().contains("m=audio 20000 RTP/SAVP 0"));
//! ```
#![forbid(unsafe_code)]

mod crypto;
mod lines;
mod offer_answer;
mod suite;

pub use crypto::{CryptoAttribute, KeyParam, KeySalt};
pub use lines::{
    Attribute, Connection, Direction, Line, LineEnding, MediaLine, Origin, ParseError, RawLine,
    SessionDescription,
};
pub use offer_answer::{answer_offer, Answer, AnswerPolicy, Codec, Negotiated, Refusal};
pub use suite::{SrtpSuite, SuiteSpec, SUITES};
