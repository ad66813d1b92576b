//! `srtp-bridge`: the sans-IO media core of one call. It turns the carrier's SRTP/SRTCP datagrams
//! into Twilio-Media-Streams JSON messages for the voice agent, and the agent's messages back into
//! paced SRTP, with RFC 4733 DTMF both ways.
//!
//! INTERFACE STUB written by the lead so that `sbc` compiles against a fixed API. The
//! `srtp-bridge` helper replaces every body and may add modules and items, but keeps the public
//! items below (names, fields, signatures).
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

pub use sdp::{Codec, Direction, KeySalt, SrtpSuite};

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
    /// Our direction (from the answer): `SendOnly`/`Inactive` means we send no audio, etc.
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
    pub rtp_in: u64,
    pub rtp_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub srtcp_in: u64,
    pub srtcp_out: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub dtmf_from_carrier: u64,
    pub dtmf_from_agent: u64,
    pub agent_media_in: u64,
    pub agent_media_out: u64,
    pub agent_malformed: u64,
}

/// The media core of one call.
pub struct Bridge {}

impl Bridge {
    /// Creates the core and queues `connected` and `start` for the agent.
    pub fn new(
        now: Instant,
        params: MediaParams,
        stream: StreamInfo,
        config: BridgeConfig,
    ) -> Self {
        let _ = (now, params, stream, config);
        unimplemented!("srtp-bridge stub")
    }
    /// A datagram from the carrier on `component`, from `from`.
    pub fn handle_carrier_datagram(
        &mut self,
        now: Instant,
        component: Component,
        from: SocketAddr,
        data: &[u8],
    ) {
        let _ = (now, component, from, data);
        unimplemented!("srtp-bridge stub")
    }
    /// A text frame from the agent WebSocket.
    pub fn handle_agent_text(&mut self, now: Instant, text: &str) {
        let _ = (now, text);
        unimplemented!("srtp-bridge stub")
    }
    /// Drives pacing (20 ms), SRTCP reports and the inactivity timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        let _ = now;
        unimplemented!("srtp-bridge stub")
    }
    /// New parameters after a re-INVITE (keys, address, direction): switch without a gap.
    pub fn update_params(&mut self, now: Instant, params: MediaParams) {
        let _ = (now, params);
        unimplemented!("srtp-bridge stub")
    }
    /// A DTMF digit that arrived by SIP INFO (application/dtmf-relay): send it to the agent.
    pub fn signalled_dtmf(&mut self, now: Instant, digit: char, duration: Duration) {
        let _ = (now, digit, duration);
        unimplemented!("srtp-bridge stub")
    }
    /// The call ends: queue `stop` for the agent.
    pub fn stop(&mut self, now: Instant) {
        let _ = now;
        unimplemented!("srtp-bridge stub")
    }
    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        unimplemented!("srtp-bridge stub")
    }
    pub fn poll_agent_text(&mut self) -> Option<String> {
        unimplemented!("srtp-bridge stub")
    }
    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        unimplemented!("srtp-bridge stub")
    }
    pub fn poll_timeout(&self) -> Option<Instant> {
        unimplemented!("srtp-bridge stub")
    }
    pub fn stats(&self) -> BridgeStats {
        unimplemented!("srtp-bridge stub")
    }
}

/// The `builtin:echo` agent: given a message sbc sent to the agent, the agent's reply, if any
/// (`media` comes back as agent `media` with the same payload).
pub fn echo_agent_reply(text: &str) -> Option<String> {
    let _ = text;
    unimplemented!("srtp-bridge stub")
}
