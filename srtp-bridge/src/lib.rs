//! `srtp-bridge`: the sans-IO media core of one call. It turns the carrier's SRTP/SRTCP datagrams
//! into Twilio-Media-Streams JSON messages for the voice agent, and the agent's messages back into
//! paced SRTP, with RFC 4733 DTMF both ways.
//!
//! It does no I/O and never reads the clock: the call task owns the UDP sockets and the agent
//! WebSocket, passes every input in with the current time, and sends what the bridge queues.
//! It does not negotiate (see the `sdp` crate), resample, or transcode beyond G.711 A-law/mu-law.
//!
//! ```ignore
//! let mut bridge = Bridge::new(now, params, stream_info, config)?; // Err: refuse the call (488/500)
//! loop {
//!     // Input: one of
//!     bridge.handle_carrier_datagram(now, component, from, &buf);
//!     bridge.handle_agent_text(now, &text);
//!     bridge.handle_timeout(now); // when poll_timeout() is reached
//!     // Output, after every input:
//!     while let Some(d) = bridge.poll_datagram() { socket(d.component).send_to(&d.data, d.dest) }
//!     while let Some(t) = bridge.poll_agent_text() { websocket.send(Text(t)) }
//!     while let Some(e) = bridge.poll_event() { /* RtpTimeout: BYE; MediaStarted: log */ }
//!     sleep_until(bridge.poll_timeout());
//! }
//! ```
//!
//! Modules: [`keys`] (suite table, redacted master keys), [`srtp`] (contexts: our own RTP
//! transform with precomputed session keys, SRTCP over `webrtc-srtp`, replay window), [`rtp`], [`rtcp`], [`dtmf`] (RFC 4733), [`g711`],
//! [`agent`] (Twilio Media Streams JSON), [`bridge`] (the state machine).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::Duration;

pub use sdp::{Codec, Direction, KeySalt, SrtpSuite};

mod aes_cm;
pub mod agent;
pub mod bridge;
pub mod dtmf;
#[doc(hidden)]
pub mod fuzzing;
pub mod g711;
pub mod keys;
pub mod rtcp;
pub mod rtp;
pub mod srtp;

pub use agent::echo_agent_reply;
pub use bridge::{Bridge, BridgeError, LegParams};
pub use keys::MasterKey;

/// Which UDP socket of the call a datagram uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Component {
    /// The RTP port (also carries RTCP when rtcp-mux is negotiated).
    Rtp,
    /// The RTCP port (RTP port + 1).
    Rtcp,
}

/// Parameters of the carrier leg, from the SDP offer/answer.
#[derive(Clone, Debug)]
pub struct MediaParams {
    pub suite: SrtpSuite,
    /// Decrypts what the carrier sends.
    pub remote_key: KeySalt,
    /// Encrypts what we send.
    pub local_key: KeySalt,
    pub remote_rtp: SocketAddr,
    pub remote_rtcp: SocketAddr,
    pub rtcp_mux: bool,
    pub codec: Codec,
    pub payload_type: u8,
    pub telephone_event: Option<u8>,
    /// Our direction, as written in our answer (RFC 3264 §6.1): we send agent audio and DTMF
    /// only for `SendRecv`/`SendOnly`, and run the inactivity timer only for
    /// `SendRecv`/`RecvOnly` (when we expect carrier RTP). SRTCP flows in every direction.
    pub direction: Direction,
}

/// Identity of the stream as the agent sees it in `start`.
#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    pub stream_sid: String,
    pub call_sid: String,
    pub account_sid: String,
    pub from: String,
    pub to: String,
    pub carrier: String,
    /// Extra `customParameters` (configured SIP header passthrough), name -> value.
    pub custom: Vec<(String, String)>,
}

/// Tunables.
#[derive(Clone, Debug)]
pub struct BridgeConfig {
    /// No authenticated RTP from the carrier for this long ends the call.
    pub inactivity_timeout: Duration,
    /// Interval between SRTCP sender/receiver reports (5 s).
    pub rtcp_interval: Duration,
    /// Our SSRC for the carrier leg.
    pub ssrc: u32,
    /// Switch our SSRC to the carrier's once its first packet authenticates. Only for test peers
    /// whose SRTP receiver decrypts with its own SSRC (SIPp 3.8's echo check); never for carriers.
    pub mirror_caller_ssrc: bool,
    /// Authenticated packets in a row, all of the latched SSRC, that must come from a new
    /// source address before outbound media moves there (`[media] relatch_packets`; 0 counts
    /// as 1).
    pub relatch_packets: u32,
}

/// A datagram to send to the carrier.
#[derive(Clone, Debug)]
pub struct Datagram {
    pub component: Component,
    pub dest: SocketAddr,
    pub data: Vec<u8>,
}

/// Something the call task must act on.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeEvent {
    /// No authenticated RTP for `inactivity_timeout`: end the call (BYE).
    RtpTimeout,
    /// The first packet that authenticated arrived (symmetric RTP latched to `from`).
    MediaStarted { from: SocketAddr },
}

/// Counters for the audit record and metrics.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BridgeStats {
    /// Authenticated SRTP packets from the carrier.
    pub rtp_in: u64,
    /// SRTP packets sent to the carrier (audio and DTMF).
    pub rtp_out: u64,
    /// Bytes of those packets as received (SRTP, with tag).
    pub bytes_in: u64,
    /// Bytes of those packets as sent (SRTP, with tag).
    pub bytes_out: u64,
    /// Authenticated SRTCP compound packets from the carrier.
    pub srtcp_in: u64,
    /// SRTCP compound packets sent (reports every `rtcp_interval`, BYE at stop).
    pub srtcp_out: u64,
    /// SRTP/SRTCP packets whose tag did not verify (or SRTCP without encryption).
    pub auth_failures: u64,
    /// SRTP/SRTCP packets refused by the replay window (RFC 3711 §3.3.2).
    pub replays: u64,
    /// Digits sent to the agent (RFC 4733 events and SIP INFO).
    pub dtmf_from_carrier: u64,
    /// `dtmf` messages from the agent.
    pub dtmf_from_agent: u64,
    /// `media` messages from the agent.
    pub agent_media_in: u64,
    /// `media` messages (20 ms each) sent to the agent.
    pub agent_media_out: u64,
    /// Agent messages ignored as malformed (JSON, fields, base64, digit).
    pub agent_malformed: u64,
    /// Carrier datagrams too short or malformed to be SRTP/SRTCP (not counted as auth failures).
    pub carrier_malformed: u64,
    /// Agent audio bytes dropped because the play-out queue was full.
    pub agent_audio_overflow: u64,
    /// Agent audio bytes dropped because the driver stalled past their ticks (see
    /// `Bridge::ensure_run`): played late, they would have delayed everything after them.
    pub agent_audio_late_dropped: u64,
    /// Times outbound media moved to a new carrier address (re-latch, after
    /// `relatch_packets` authenticated packets of the latched SSRC from it).
    pub relatches: u64,
    /// Agent `mark`s dropped: too many pending, or the name too long.
    pub agent_marks_dropped: u64,
    /// Agent `dtmf` messages dropped because too many digits were pending.
    pub agent_dtmf_dropped: u64,
}

/// A fixed `Instant` for tests (the one place this crate may read the clock).
#[cfg(test)]
#[allow(clippy::disallowed_methods)]
pub(crate) fn test_epoch() -> std::time::Instant {
    std::time::Instant::now()
}
