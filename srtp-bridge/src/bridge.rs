//! [`Bridge`]: the media core of one call, tying the carrier's SRTP leg to the agent's JSON leg.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tracing::{debug, trace};

use crate::agent::{parse_agent_message, AgentMessage, AgentWriter};
use crate::dtmf::{
    digit_to_event, DtmfReceiver, DtmfSender, TelephoneEvent, DEFAULT_DURATION_SAMPLES,
};
use crate::g711::{alaw_to_ulaw, ulaw_to_alaw, ULAW_SILENCE};
use crate::keys::{suite_spec, MasterKey};
use crate::rtcp::{compound_report, find_sender_report, to_ntp, ReceiverStats, SenderInfo};
use crate::rtp::{is_rtcp, write_rtp};
use crate::srtp::{InboundContext, OutboundContext, SrtpError};
use crate::{
    BridgeConfig, BridgeEvent, BridgeStats, Codec, Component, Datagram, Direction, MediaParams,
    SrtpSuite, StreamInfo,
};

/// One packet of audio: 20 ms at 8 kHz, one byte per sample (G.711).
pub const FRAME_BYTES: usize = 160;
/// Packet interval.
pub const FRAME: Duration = Duration::from_millis(20);
/// How long the previous inbound context is still tried after a re-key (packets sent with the
/// old key may still be in flight, or the carrier may switch a little after our answer).
pub const REKEY_GRACE: Duration = Duration::from_secs(5);
/// Agent audio buffered beyond this (120 s) is dropped and counted.
pub const MAX_QUEUED_BYTES: usize = 8000 * 120;
/// Marks waiting for their audio to play out; more are dropped and counted.
pub const MAX_PENDING_MARKS: usize = 1024;
/// Longest mark name kept (bytes); a longer mark is dropped and counted.
pub const MAX_MARK_NAME_BYTES: usize = 256;
/// Agent DTMF digits waiting to be sent; more are dropped and counted.
pub const MAX_PENDING_DTMF: usize = 32;
/// Missed pacing ticks sent in a burst when the driver was late; beyond that they are skipped.
const MAX_CATCH_UP: u32 = 5;
/// Longest stall of the driver after which agent audio is still treated as late, not as a new
/// talkspurt (see [`Bridge::ensure_run`]).
const MAX_STALL: Duration = Duration::from_secs(2);

/// Why the carrier leg's parameters cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BridgeError {
    /// The negotiated suite is not in the suite table.
    #[error("unsupported SRTP suite")]
    UnsupportedSuite,
    /// A master key or salt has the wrong length.
    #[error("SRTP master key or salt has the wrong length")]
    BadKey,
    /// A re-INVITE changed the suite but kept our master key: the new context would restart
    /// the rollover counter and SRTCP index under the same key (keystream reuse, RFC 3711 §9.1).
    #[error("SRTP suite changed without a new local master key")]
    KeyReuse,
}

/// [`MediaParams`] with the keys as [`MasterKey`]s: what the bridge runs on.
#[derive(Clone, Debug)]
pub struct LegParams {
    /// Negotiated suite.
    pub suite: SrtpSuite,
    /// Decrypts what the carrier sends.
    pub remote_key: MasterKey,
    /// Encrypts what we send.
    pub local_key: MasterKey,
    /// Where to send RTP until symmetric RTP learns better.
    pub remote_rtp: SocketAddr,
    /// Where to send RTCP (without rtcp-mux).
    pub remote_rtcp: SocketAddr,
    /// RTP and RTCP share the RTP port (RFC 5761).
    pub rtcp_mux: bool,
    /// Audio codec of the carrier leg.
    pub codec: Codec,
    /// Its payload type.
    pub payload_type: u8,
    /// RFC 4733 payload type, if negotiated.
    pub telephone_event: Option<u8>,
    /// Our direction, as in our answer (RFC 3264 §6.1).
    pub direction: Direction,
}

impl LegParams {
    /// Converts negotiated parameters, checking the suite and key lengths.
    pub fn from_media_params(p: &MediaParams) -> Result<Self, BridgeError> {
        let spec = suite_spec(&p.suite).ok_or(BridgeError::UnsupportedSuite)?;
        let remote = p.remote_key.key();
        let local = p.local_key.key();
        if remote.len() != spec.key_len || local.len() != spec.key_len {
            return Err(BridgeError::BadKey);
        }
        Ok(Self {
            suite: p.suite.clone(),
            remote_key: MasterKey::new(remote, p.remote_key.salt()).ok_or(BridgeError::BadKey)?,
            local_key: MasterKey::new(local, p.local_key.salt()).ok_or(BridgeError::BadKey)?,
            remote_rtp: p.remote_rtp,
            remote_rtcp: p.remote_rtcp,
            rtcp_mux: p.rtcp_mux,
            codec: p.codec,
            payload_type: p.payload_type,
            telephone_event: p.telephone_event,
            direction: p.direction,
        })
    }

    fn sends(&self) -> bool {
        matches!(self.direction, Direction::SendRecv | Direction::SendOnly)
    }

    fn receives(&self) -> bool {
        matches!(self.direction, Direction::SendRecv | Direction::RecvOnly)
    }
}

/// Most the schedule of a run may move earlier, in total, to meet agent audio that arrives
/// ahead of its tick (see [`Bridge::ensure_run`]): one frame, so the carrier never gets more than
/// 20 ms ahead of real time from it.
const MAX_ADVANCE: Duration = FRAME;
/// How much earlier per frame.
const ADVANCE_STEP: Duration = Duration::from_millis(1);

/// A run of paced packets without a silence: tick `n` is due at `start + n * 20 ms` (never
/// `now + 20 ms`, so pacing does not drift) and carries RTP timestamp `ts0 + n * 160`.
#[derive(Debug, Clone, Copy)]
struct Run {
    start: Instant,
    n: u32,
    ts0: u32,
    /// How far `start` has been moved earlier since the run began (at most [`MAX_ADVANCE`]).
    advanced: Duration,
}

impl Run {
    fn due(&self) -> Instant {
        self.start + FRAME * self.n
    }
}

/// The media core of one call.
///
/// Carrier leg: SRTP/SRTCP with symmetric RTP, replay protection, RTCP reports and an
/// inactivity timer. Agent leg: Twilio Media Streams JSON, with agent audio re-framed into
/// 20 ms packets paced in real time, marks, clear and DTMF (RFC 4733) both ways.
pub struct Bridge {
    start: Instant,
    config: BridgeConfig,
    stream: StreamInfo,
    leg: LegParams,
    inbound: Option<InboundContext>,
    /// After a re-key: the new key with the ROC continued (see
    /// [`InboundContext::with_continued_roc`]), until one hypothesis authenticates RTP.
    /// Boxed, as is `previous_inbound`: a context is ~1.1 KiB (AES key schedule, HMAC state,
    /// the SRTCP library context) and both are empty for all but a few seconds after a re-key,
    /// so inline they would make every call's `Bridge` 2.2 KiB larger (docs/performance.md).
    inbound_alt: Option<Box<InboundContext>>,
    /// The inbound context before the last re-key, tried until the instant given.
    previous_inbound: Option<Box<(InboundContext, Instant)>>,
    outbound: Option<OutboundContext>,
    rtp_dest: SocketAddr,
    rtcp_dest: SocketAddr,
    latched: bool,
    /// The SSRC of the first authenticated packet (after start or a re-key): only it re-latches.
    latched_ssrc: Option<u32>,
    /// A new source address of the latched SSRC and how many authenticated packets in a row
    /// came from it.
    relatch_candidate: Option<(SocketAddr, u32)>,
    last_rtp: Instant,
    timed_out: bool,
    stopped: bool,
    writer: AgentWriter,
    inbound_audio: Vec<u8>,
    dtmf_rx: DtmfReceiver,
    recv_stats: ReceiverStats,
    queue: VecDeque<u8>,
    enqueued: u64,
    played: u64,
    marks: VecDeque<(u64, String)>,
    dtmf_tx: VecDeque<DtmfSender>,
    run: Option<Run>,
    /// The run that ended because its tick `n` found no audio: audio that comes within
    /// [`MAX_CATCH_UP`] ticks of it was late, not a new talkspurt, and resumes this schedule.
    lapsed: Option<Run>,
    /// The tick that ended the run ran more than a frame after it was due: the driver stalled,
    /// so the empty queue says nothing about the agent (its audio may be unread).
    lapsed_late: bool,
    /// Ticks the driver missed while audio was due (skipped after [`MAX_CATCH_UP`]): that much
    /// queued audio is dropped at the next ticks rather than played late, until `owed_until`
    /// (the audio the stall held back is read within a few ticks of it).
    owed: u32,
    owed_until: Instant,
    seq: u16,
    ts_base: u32,
    last_ts: Option<u32>,
    marker_next: bool,
    next_rtcp: Instant,
    sent_since_report: bool,
    sent_packets: u32,
    sent_octets: u32,
    datagrams: VecDeque<Datagram>,
    agent_out: VecDeque<String>,
    events: VecDeque<BridgeEvent>,
    stats: BridgeStats,
    /// The decrypted RTP packet, reused from packet to packet (no allocation per packet).
    plain: Vec<u8>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge")
            .field("stream_sid", &self.stream.stream_sid)
            .field("rtp_dest", &self.rtp_dest)
            .field("stats", &self.stats)
            .finish_non_exhaustive()
    }
}

impl Bridge {
    /// Creates the core and queues `connected` and `start` for the agent.
    ///
    /// Parameters the bridge cannot run (a suite outside the table's runnable rows, a key of
    /// the wrong length) are an error: the call must be refused before it is answered.
    pub fn new(
        now: Instant,
        params: MediaParams,
        stream: StreamInfo,
        config: BridgeConfig,
    ) -> Result<Self, BridgeError> {
        Self::with_leg(now, LegParams::from_media_params(&params)?, stream, config)
    }

    /// Like [`Bridge::new`] from already converted parameters (raw keys).
    pub fn with_leg(
        now: Instant,
        leg: LegParams,
        stream: StreamInfo,
        config: BridgeConfig,
    ) -> Result<Self, BridgeError> {
        let unsupported = |_| BridgeError::UnsupportedSuite;
        let inbound = Some(InboundContext::new(&leg.suite, &leg.remote_key).map_err(unsupported)?);
        let outbound = Some(OutboundContext::new(&leg.suite, &leg.local_key).map_err(unsupported)?);
        let mut writer = AgentWriter::new(&stream.stream_sid);
        let mut agent_out = VecDeque::new();
        agent_out.push_back(writer.connected());
        agent_out.push_back(writer.start(&stream));
        // RFC 3550 §5.1 wants random initial sequence number and timestamp. The daemon draws
        // our SSRC from its RNG; both are derived from it so this crate needs no RNG of its own.
        let ssrc = config.ssrc;
        // The sequence number starts below 2^15 (random in 15 bits), as libsrtp advises: a
        // receiver that guesses the rollover counter from its first packet (RFC 3711 §3.3.1)
        // cannot then mistake an early wrap for a late packet.
        let seq = (ssrc ^ (ssrc >> 16)) as u16 & 0x7fff;
        let ts_base = ssrc.rotate_left(16) ^ 0x5bd1_e995;
        let interval = config.rtcp_interval.max(Duration::from_millis(100));
        Ok(Self {
            start: now,
            rtp_dest: leg.remote_rtp,
            rtcp_dest: leg.remote_rtcp,
            next_rtcp: now + interval,
            config,
            stream,
            leg,
            inbound,
            inbound_alt: None,
            previous_inbound: None,
            outbound,
            latched: false,
            latched_ssrc: None,
            relatch_candidate: None,
            last_rtp: now,
            timed_out: false,
            stopped: false,
            writer,
            inbound_audio: Vec::with_capacity(2 * FRAME_BYTES),
            dtmf_rx: DtmfReceiver::default(),
            recv_stats: ReceiverStats::default(),
            queue: VecDeque::new(),
            enqueued: 0,
            played: 0,
            marks: VecDeque::new(),
            dtmf_tx: VecDeque::new(),
            run: None,
            lapsed: None,
            lapsed_late: false,
            owed: 0,
            owed_until: now,
            seq,
            ts_base,
            last_ts: None,
            marker_next: true,
            sent_since_report: false,
            sent_packets: 0,
            sent_octets: 0,
            datagrams: VecDeque::new(),
            agent_out,
            events: VecDeque::new(),
            stats: BridgeStats::default(),
            plain: Vec::new(),
        })
    }

    /// A datagram from the carrier on `component`, from `from`. RTCP on the RTP port (rtcp-mux)
    /// is told apart by payload type (RFC 5761 §4).
    pub fn handle_carrier_datagram(
        &mut self,
        now: Instant,
        component: Component,
        from: SocketAddr,
        data: &[u8],
    ) {
        if self.stopped {
            return;
        }
        if component == Component::Rtcp || is_rtcp(data) {
            self.on_srtcp(now, component, from, data);
        } else {
            self.on_srtp(now, from, data);
        }
    }

    /// Tries the current inbound context, then after a re-key the continued-ROC one, then
    /// (within the re-key grace period) the previous one. `rtp`: an RTP success settles which
    /// ROC hypothesis is right (SRTCP carries its own index, so it cannot tell).
    fn unprotect<T>(
        &mut self,
        now: Instant,
        rtp: bool,
        mut f: impl FnMut(&mut InboundContext) -> Result<T, SrtpError>,
    ) -> Result<T, SrtpError> {
        match self
            .inbound
            .as_mut()
            .map_or(Err(SrtpError::AuthFailed), &mut f)
        {
            Ok(v) => {
                if rtp {
                    self.inbound_alt = None;
                }
                return Ok(v);
            }
            Err(SrtpError::AuthFailed) => {}
            Err(e) => return Err(e),
        }
        if let Some(alt) = &mut self.inbound_alt {
            match f(alt) {
                Ok(v) => {
                    if rtp {
                        debug!("carrier kept its rollover counter across the re-key");
                        self.inbound = self.inbound_alt.take().map(|alt| *alt);
                    }
                    return Ok(v);
                }
                Err(SrtpError::AuthFailed) => {}
                Err(e) => return Err(e),
            }
        }
        match self.previous_inbound.as_deref_mut() {
            Some((old, until)) if now < *until => f(old),
            _ => Err(SrtpError::AuthFailed),
        }
    }

    fn count_error(&mut self, e: &SrtpError, what: &'static str) {
        match e {
            SrtpError::Replay { .. } => self.stats.replays += 1,
            SrtpError::Malformed => self.stats.carrier_malformed += 1,
            _ => self.stats.auth_failures += 1,
        }
        trace!(error = %e, what, "carrier packet dropped");
    }

    fn on_srtp(&mut self, now: Instant, from: SocketAddr, data: &[u8]) {
        let mut plain = std::mem::take(&mut self.plain);
        self.on_srtp_into(now, from, data, &mut plain);
        self.plain = plain;
    }

    /// [`Bridge::on_srtp`] with `plain` (the reused buffer) for the decrypted packet.
    fn on_srtp_into(&mut self, now: Instant, from: SocketAddr, data: &[u8], plain: &mut Vec<u8>) {
        let header = match self.unprotect(now, true, |c| c.unprotect_rtp_into(data, plain)) {
            Ok(x) => x,
            Err(e) => return self.count_error(&e, "srtp"),
        };
        self.stats.rtp_in += 1;
        self.stats.bytes_in += data.len() as u64;
        self.last_rtp = now;
        // Symmetric RTP (RFC 4961): answer where authenticated media comes from.
        if !self.latched {
            self.latched = true;
            if self.config.mirror_caller_ssrc {
                self.config.ssrc = header.ssrc;
            }
            self.events.push_back(BridgeEvent::MediaStarted { from });
        }
        self.latch(from, header.ssrc);
        let arrival = self.samples_since_start(now);
        self.recv_stats.on_rtp(
            header.ssrc,
            header.sequence_number,
            header.timestamp,
            arrival,
        );
        let Ok(payload) = header.payload(plain) else {
            self.stats.carrier_malformed += 1;
            return;
        };
        if header.payload_type == self.leg.payload_type {
            match self.leg.codec {
                Codec::Pcmu => self.inbound_audio.extend_from_slice(payload),
                Codec::Pcma => self
                    .inbound_audio
                    .extend(payload.iter().map(|&a| alaw_to_ulaw(a))),
            }
            let ms = now.saturating_duration_since(self.start).as_millis() as u64;
            let mut at = 0;
            while self.inbound_audio.len() - at >= FRAME_BYTES {
                let msg = self
                    .writer
                    .media(ms, &self.inbound_audio[at..at + FRAME_BYTES]);
                self.agent_out.push_back(msg);
                self.stats.agent_media_out += 1;
                at += FRAME_BYTES;
            }
            self.inbound_audio.drain(..at);
        } else if Some(header.payload_type) == self.leg.telephone_event {
            let Some(ev) = TelephoneEvent::parse(payload) else {
                self.stats.carrier_malformed += 1;
                return;
            };
            for digit in self.dtmf_rx.on_packet(header.ssrc, header.timestamp, ev) {
                self.stats.dtmf_from_carrier += 1;
                let msg = self.writer.dtmf(digit);
                self.agent_out.push_back(msg);
            }
        } else {
            trace!(
                pt = header.payload_type,
                "carrier RTP with another payload type ignored"
            );
        }
    }

    /// Symmetric RTP: the first authenticated packet (after start or a re-key) latches its
    /// address and SSRC. A move to another address needs [`BridgeConfig::relatch_packets`]
    /// authenticated packets in a row from it, all of the latched SSRC: with `_32` tags one
    /// forgery in about 2^31 tries authenticates, and a single one must not redirect the
    /// caller's audio.
    fn latch(&mut self, from: SocketAddr, ssrc: u32) {
        let Some(latched_ssrc) = self.latched_ssrc else {
            self.latched_ssrc = Some(ssrc);
            self.relatch_candidate = None;
            if self.rtp_dest != from {
                debug!(%from, previous = %self.rtp_dest, "carrier media latched");
                self.rtp_dest = from;
            }
            return;
        };
        if from == self.rtp_dest {
            self.relatch_candidate = None;
            return;
        }
        if ssrc != latched_ssrc {
            trace!(%from, ssrc, "authenticated packet of another SSRC from a new address; no re-latch");
            return;
        }
        let count = match self.relatch_candidate {
            Some((addr, n)) if addr == from => n + 1,
            _ => 1,
        };
        if count >= self.config.relatch_packets.max(1) {
            debug!(%from, previous = %self.rtp_dest, "carrier media address moved");
            self.rtp_dest = from;
            self.relatch_candidate = None;
            self.stats.relatches += 1;
        } else {
            self.relatch_candidate = Some((from, count));
        }
    }

    fn on_srtcp(&mut self, now: Instant, component: Component, from: SocketAddr, data: &[u8]) {
        let plain = match self.unprotect(now, false, |c| c.unprotect_rtcp(data)) {
            Ok(p) => p,
            Err(e) => return self.count_error(&e, "srtcp"),
        };
        self.stats.srtcp_in += 1;
        if let Some(ntp) = find_sender_report(&plain) {
            self.recv_stats.on_sender_report(ntp, now);
        }
        if component == Component::Rtcp && !self.leg.rtcp_mux {
            self.rtcp_dest = from;
        }
    }

    /// A text frame from the agent WebSocket.
    pub fn handle_agent_text(&mut self, now: Instant, text: &str) {
        if self.stopped {
            return;
        }
        match parse_agent_message(text) {
            Ok(AgentMessage::Media(audio)) => {
                self.stats.agent_media_in += 1;
                let room = MAX_QUEUED_BYTES.saturating_sub(self.queue.len());
                if audio.len() > room {
                    self.stats.agent_audio_overflow += (audio.len() - room) as u64;
                    debug!(dropped = audio.len() - room, "agent audio queue full");
                }
                let take = audio.len().min(room);
                let was_empty = self.queue.is_empty();
                self.queue.extend(&audio[..take]);
                self.enqueued += take as u64;
                if was_empty && take > 0 {
                    self.meet_early_audio(now);
                }
                self.ensure_run(now);
            }
            Ok(AgentMessage::Mark(name)) => {
                if self.marks.len() >= MAX_PENDING_MARKS || name.len() > MAX_MARK_NAME_BYTES {
                    self.stats.agent_marks_dropped += 1;
                    debug!(
                        pending = self.marks.len(),
                        name_len = name.len(),
                        "agent mark dropped"
                    );
                    return;
                }
                self.marks.push_back((self.enqueued, name));
                if self.run.is_none() {
                    self.echo_played_marks();
                }
            }
            Ok(AgentMessage::Clear) => {
                self.played += self.queue.len() as u64;
                self.queue.clear();
                self.owed = 0;
                self.echo_played_marks();
            }
            Ok(AgentMessage::Dtmf { digit, duration }) => {
                self.stats.dtmf_from_agent += 1;
                let (Some(_), Some(code)) = (self.leg.telephone_event, digit_to_event(digit))
                else {
                    debug!("agent DTMF dropped: no telephone-event negotiated");
                    return;
                };
                if self.dtmf_tx.len() >= MAX_PENDING_DTMF {
                    self.stats.agent_dtmf_dropped += 1;
                    debug!("agent DTMF dropped: too many digits pending");
                    return;
                }
                let samples = duration.map_or(DEFAULT_DURATION_SAMPLES, |d| {
                    (d.as_millis().min(10_000) as u32) * 8
                });
                self.dtmf_tx.push_back(DtmfSender::new(code, samples));
                self.ensure_run(now);
            }
            Ok(AgentMessage::Other(event)) => debug!(event, "agent event ignored"),
            Err(e) => {
                self.stats.agent_malformed += 1;
                debug!(error = %e, "malformed agent message ignored");
            }
        }
    }

    fn echo_played_marks(&mut self) {
        while let Some((pos, _)) = self.marks.front() {
            if *pos > self.played {
                break;
            }
            if let Some((_, name)) = self.marks.pop_front() {
                let msg = self.writer.mark(&name);
                self.agent_out.push_back(msg);
            }
        }
    }

    fn samples_since_start(&self, now: Instant) -> u32 {
        (now.saturating_duration_since(self.start).as_micros() * 8 / 1000) as u32
    }

    /// Outbound RTP timestamp for wall-clock time `now` (RFC 3550 §5.1: it advances in silences).
    fn ts_at(&self, now: Instant) -> u32 {
        self.ts_base.wrapping_add(self.samples_since_start(now))
    }

    /// Audio that arrives to an empty queue while the run waits for its next tick is real-time
    /// audio slightly ahead of the schedule (the run began with a late frame): move the schedule
    /// earlier by up to [`ADVANCE_STEP`] per frame and [`MAX_ADVANCE`] per run, so such a head
    /// start is worked off instead of delaying every later frame. A burst (the queue filling up)
    /// moves nothing.
    fn meet_early_audio(&mut self, now: Instant) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        let wait = run.due().saturating_duration_since(now);
        let step = wait
            .min(ADVANCE_STEP)
            .min(MAX_ADVANCE.saturating_sub(run.advanced));
        if let Some(start) = run.start.checked_sub(step) {
            run.start = start;
            run.advanced += step;
        }
    }

    /// Makes sure a run is going, then sends what is due.
    ///
    /// Without a run, audio within [`MAX_CATCH_UP`] ticks of the tick that found the queue empty
    /// resumes that run: the late frame takes its missed tick at once (same timestamp spacing,
    /// no marker) and the frames after it keep the run's schedule. Starting a new run at the
    /// late frame's arrival instead would shift every later frame by the lateness, for as long
    /// as the agent keeps talking. Later audio starts a new run (a talkspurt, marker set),
    /// except after a stall of the driver (up to [`MAX_STALL`]): then the run resumes too, its
    /// ticks beyond the last [`MAX_CATCH_UP`] are skipped and that much audio is owed (dropped
    /// from the queue at the next ticks), so a stall costs audio once instead of adding its
    /// length to the latency of everything after it.
    fn ensure_run(&mut self, now: Instant) {
        if self.run.is_none() {
            if let Some(mut lapsed) = self.lapsed.take() {
                let gap = now.saturating_duration_since(lapsed.due());
                if gap < FRAME * MAX_CATCH_UP || (self.lapsed_late && gap < MAX_STALL) {
                    let behind = (gap.as_micros() / FRAME.as_micros()) as u32;
                    if let Some(skip) = behind.checked_sub(MAX_CATCH_UP).filter(|s| *s > 0) {
                        lapsed.n += skip;
                        self.owe(now, skip);
                    }
                    self.run = Some(lapsed);
                    return self.pace(now);
                }
            }
            self.owed = 0;
        }
        if self.run.is_none() {
            let mut ts0 = self.ts_at(now);
            if let Some(last) = self.last_ts {
                if (ts0.wrapping_sub(last) as i32) < FRAME_BYTES as i32 {
                    ts0 = last.wrapping_add(FRAME_BYTES as u32);
                }
            }
            self.run = Some(Run {
                start: now,
                n: 0,
                ts0,
                advanced: Duration::ZERO,
            });
            // RFC 3551 §4.1: marker on the first packet after a silence.
            self.marker_next = true;
        }
        self.pace(now);
    }

    fn pace(&mut self, now: Instant) {
        let mut sent = 0;
        while let Some(mut run) = self.run {
            let due = run.due();
            if due > now {
                break;
            }
            if sent == MAX_CATCH_UP {
                // The driver was late: skip the missed ticks, the timestamp follows the clock.
                let behind = (now - due).as_micros() / FRAME.as_micros();
                run.n += behind as u32;
                self.owe(now, behind as u32);
                sent = 0;
            }
            let ts = run.ts0.wrapping_add(run.n.wrapping_mul(FRAME_BYTES as u32));
            run.n += 1;
            self.run = Some(run);
            self.tick(ts, now, now.saturating_duration_since(due) > FRAME);
            sent += 1;
        }
    }

    fn owe(&mut self, now: Instant, ticks: u32) {
        self.owed = self.owed.saturating_add(ticks);
        self.owed_until = now + FRAME * MAX_CATCH_UP;
    }

    /// One 20 ms tick: a DTMF packet, else an audio frame, else the run ends. `late`: the tick
    /// runs more than a frame after it was due.
    fn tick(&mut self, ts: u32, now: Instant, late: bool) {
        // Audio sent at earlier ticks has been played out by now.
        self.echo_played_marks();
        if let Some(tx) = self.dtmf_tx.front_mut() {
            let (packets, done) = tx.tick(ts);
            if done {
                self.dtmf_tx.pop_front();
            }
            if let Some(pt) = self.leg.telephone_event {
                for p in packets {
                    self.send_rtp(p.marker, pt, p.timestamp, &p.payload);
                }
            }
            self.last_ts = Some(ts);
            return;
        }
        if self.queue.is_empty() {
            // `pace` counted this tick already: keep the run at it, for late audio to resume.
            self.lapsed = self.run.take().map(|r| Run {
                n: r.n.wrapping_sub(1),
                ..r
            });
            self.lapsed_late = late;
            return;
        }
        // Audio whose ticks the driver missed is dropped (counted as played, so marks after it
        // still come back), keeping one frame for this tick.
        if now >= self.owed_until {
            self.owed = 0;
        }
        let owed_frames =
            ((self.queue.len().saturating_sub(1)) / FRAME_BYTES).min(self.owed as usize);
        if owed_frames > 0 {
            let bytes = owed_frames * FRAME_BYTES;
            self.queue.drain(..bytes);
            self.played += bytes as u64;
            self.owed -= owed_frames as u32;
            self.stats.agent_audio_late_dropped += bytes as u64;
            debug!(bytes, "agent audio dropped after a stall of the driver");
        }
        let take = self.queue.len().min(FRAME_BYTES);
        // On the stack: silence where the queue runs short. Copied from the ring's two slices,
        // then dropped from it: draining byte by byte cost ~1,900 instructions a frame
        // (callgrind, issue 16).
        let mut frame = [ULAW_SILENCE; FRAME_BYTES];
        let (head, tail) = self.queue.as_slices();
        let from_head = head.len().min(take);
        frame[..from_head].copy_from_slice(&head[..from_head]);
        frame[from_head..take].copy_from_slice(&tail[..take - from_head]);
        self.queue.drain(..take);
        self.played += take as u64;
        if self.leg.codec == Codec::Pcma {
            frame.iter_mut().for_each(|b| *b = ulaw_to_alaw(*b));
        }
        let marker = std::mem::take(&mut self.marker_next);
        self.send_rtp(marker, self.leg.payload_type, ts, &frame);
        self.last_ts = Some(ts);
    }

    fn send_rtp(&mut self, marker: bool, pt: u8, ts: u32, payload: &[u8]) {
        if !self.leg.sends() {
            return;
        }
        let Some(ctx) = &mut self.outbound else {
            return;
        };
        // One allocation per packet: the RTP packet is written with room for the tag and
        // protected in place; it is the datagram handed to the driver.
        let mut data = write_rtp(marker, pt, self.seq, ts, self.config.ssrc, payload);
        match ctx.protect_rtp_in_place(&mut data) {
            Ok(()) => {
                self.seq = self.seq.wrapping_add(1);
                self.stats.rtp_out += 1;
                self.stats.bytes_out += data.len() as u64;
                self.sent_packets = self.sent_packets.wrapping_add(1);
                self.sent_octets = self.sent_octets.wrapping_add(payload.len() as u32);
                self.sent_since_report = true;
                self.datagrams.push_back(Datagram {
                    component: Component::Rtp,
                    dest: self.rtp_dest,
                    data,
                });
            }
            Err(e) => debug!(error = %e, "SRTP protect failed"),
        }
    }

    fn send_report(&mut self, now: Instant, bye: bool) {
        let sender = self.sent_since_report.then(|| SenderInfo {
            ntp: to_ntp(now.saturating_duration_since(self.start)),
            rtp_ts: self.ts_at(now),
            packets: self.sent_packets,
            octets: self.sent_octets,
        });
        self.sent_since_report = false;
        let block = self.recv_stats.report_block(now);
        let cname = format!("sbc-{:08x}", self.config.ssrc);
        let report = compound_report(self.config.ssrc, sender, block, &cname, bye);
        let Some(ctx) = &mut self.outbound else {
            return;
        };
        match ctx.protect_rtcp(&report) {
            Ok(data) => {
                let (component, dest) = if self.leg.rtcp_mux {
                    (Component::Rtp, self.rtp_dest)
                } else {
                    (Component::Rtcp, self.rtcp_dest)
                };
                self.stats.srtcp_out += 1;
                self.datagrams.push_back(Datagram {
                    component,
                    dest,
                    data,
                });
            }
            Err(e) => debug!(error = %e, "SRTCP protect failed"),
        }
    }

    fn inactivity_deadline(&self) -> Option<Instant> {
        (!self.timed_out && self.leg.receives())
            .then(|| self.last_rtp + self.config.inactivity_timeout)
    }

    /// Drives pacing (20 ms), SRTCP reports and the inactivity timer.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        self.pace(now);
        if self.next_rtcp <= now {
            self.send_report(now, false);
            let interval = self.config.rtcp_interval.max(Duration::from_millis(100));
            while self.next_rtcp <= now {
                self.next_rtcp += interval;
            }
        }
        if self.inactivity_deadline().is_some_and(|d| d <= now) {
            self.timed_out = true;
            debug!("no authenticated carrier RTP within the inactivity timeout");
            self.events.push_back(BridgeEvent::RtpTimeout);
        }
        if self
            .previous_inbound
            .as_deref()
            .is_some_and(|(_, until)| *until <= now)
        {
            self.previous_inbound = None;
        }
    }

    /// New parameters after a re-INVITE (keys, address, direction): switch without a gap.
    /// Unusable parameters are an error and change nothing (the re-INVITE is refused).
    pub fn update_params(&mut self, now: Instant, params: MediaParams) -> Result<(), BridgeError> {
        self.update_leg(now, LegParams::from_media_params(&params)?)
    }

    /// Like [`Bridge::update_params`] from already converted parameters.
    ///
    /// A new remote key gets a new inbound context (two, once the stream has wrapped: ROC
    /// restarted or continued, whichever authenticates first wins); the old one is still tried
    /// for [`REKEY_GRACE`] when the new ones fail authentication, so packets in flight and a
    /// carrier that switches late both get through. A new local key is used from the next
    /// packet on, with a fresh context (our ROC restarts at 0), so a suite change without a new
    /// local key is refused ([`BridgeError::KeyReuse`]). Nothing changes on an error.
    ///
    /// The inactivity timer is not restarted: only media does that (it starts when the new
    /// direction is the first that expects carrier RTP).
    pub fn update_leg(&mut self, now: Instant, leg: LegParams) -> Result<(), BridgeError> {
        let suite_changed = leg.suite != self.leg.suite;
        if suite_changed && leg.local_key == self.leg.local_key {
            return Err(BridgeError::KeyReuse);
        }
        let unsupported = |_| BridgeError::UnsupportedSuite;
        let new_inbound = if suite_changed || leg.remote_key != self.leg.remote_key {
            Some(InboundContext::new(&leg.suite, &leg.remote_key).map_err(unsupported)?)
        } else {
            None
        };
        let new_outbound = if suite_changed || leg.local_key != self.leg.local_key {
            Some(OutboundContext::new(&leg.suite, &leg.local_key).map_err(unsupported)?)
        } else {
            None
        };
        if let Some(ctx) = new_inbound {
            {
                {
                    let indices = self
                        .inbound
                        .as_ref()
                        .map(InboundContext::highest_indices)
                        .unwrap_or_default();
                    self.inbound_alt =
                        InboundContext::with_continued_roc(&leg.suite, &leg.remote_key, &indices)
                            .map(Box::new);
                    if let Some(old) = self.inbound.replace(ctx) {
                        self.previous_inbound = Some(Box::new((old, now + REKEY_GRACE)));
                    }
                    // A new key: its first authenticated packet latches afresh.
                    self.latched_ssrc = None;
                }
            }
        }
        if let Some(ctx) = new_outbound {
            self.outbound = Some(ctx);
        }
        if leg.remote_rtp != self.leg.remote_rtp {
            self.rtp_dest = leg.remote_rtp;
            self.latched_ssrc = None;
        }
        if leg.remote_rtcp != self.leg.remote_rtcp {
            self.rtcp_dest = leg.remote_rtcp;
        }
        if leg.receives() && !self.leg.receives() {
            // The timer was not running (we expected no RTP); it starts now.
            self.last_rtp = now;
        }
        self.leg = leg;
        Ok(())
    }

    /// A DTMF digit that arrived by SIP INFO (application/dtmf-relay): send it to the agent.
    pub fn signalled_dtmf(&mut self, now: Instant, digit: char, duration: Duration) {
        let _ = (now, duration);
        if self.stopped || digit_to_event(digit).is_none() {
            return;
        }
        self.stats.dtmf_from_carrier += 1;
        let msg = self.writer.dtmf(digit.to_ascii_uppercase());
        self.agent_out.push_back(msg);
    }

    /// The call ends: queue `stop` for the agent and an RTCP BYE (RFC 3550 §6.6) for the carrier.
    pub fn stop(&mut self, now: Instant) {
        if self.stopped {
            return;
        }
        let msg = self.writer.stop(&self.stream);
        self.agent_out.push_back(msg);
        self.send_report(now, true);
        self.stopped = true;
        self.run = None;
        self.lapsed = None;
        self.owed = 0;
    }

    /// The next datagram for the carrier.
    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        self.datagrams.pop_front()
    }

    /// The next text frame for the agent.
    pub fn poll_agent_text(&mut self) -> Option<String> {
        self.agent_out.pop_front()
    }

    /// The next event for the call task.
    pub fn poll_event(&mut self) -> Option<BridgeEvent> {
        self.events.pop_front()
    }

    /// When [`Bridge::handle_timeout`] must next be called; `None` after [`Bridge::stop`].
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.stopped {
            return None;
        }
        [
            self.run.map(|r| r.due()),
            Some(self.next_rtcp),
            self.inactivity_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Counters.
    pub fn stats(&self) -> BridgeStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dtmf::TelephoneEvent;
    use crate::rtp::RtpHeader;
    use serde_json::Value;

    const CARRIER: &str = "192.0.2.10:20000";
    const CARRIER_RTCP: &str = "192.0.2.10:20001";

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn key(b: u8) -> MasterKey {
        MasterKey::new(&[b; 16], &[b.wrapping_add(1); 14]).unwrap()
    }

    fn leg(suite: SrtpSuite, codec: Codec, mux: bool) -> LegParams {
        LegParams {
            suite,
            remote_key: key(1),
            local_key: key(2),
            remote_rtp: addr(CARRIER),
            remote_rtcp: if mux {
                addr(CARRIER)
            } else {
                addr(CARRIER_RTCP)
            },
            rtcp_mux: mux,
            codec,
            payload_type: if codec == Codec::Pcmu { 0 } else { 8 },
            telephone_event: Some(101),
            direction: Direction::SendRecv,
        }
    }

    fn config() -> BridgeConfig {
        BridgeConfig {
            inactivity_timeout: Duration::from_secs(10),
            rtcp_interval: Duration::from_secs(5),
            ssrc: 0x5bc0_0001,
            mirror_caller_ssrc: false,
            relatch_packets: 5,
        }
    }

    fn info() -> StreamInfo {
        StreamInfo {
            stream_sid: "MZ1".into(),
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            ..Default::default()
        }
    }

    /// The carrier's side of the call: encrypts with key 1, decrypts with key 2.
    struct Carrier {
        tx: OutboundContext,
        rx: InboundContext,
        seq: u16,
        ts: u32,
    }

    impl Carrier {
        fn new(suite: &SrtpSuite) -> Self {
            Self {
                tx: OutboundContext::new(suite, &key(1)).unwrap(),
                rx: InboundContext::new(suite, &key(2)).unwrap(),
                seq: 1000,
                ts: 0,
            }
        }
        fn rtp(&mut self, pt: u8, payload: &[u8]) -> Vec<u8> {
            let p = write_rtp(false, pt, self.seq, self.ts, 0xca_0001, payload);
            self.seq = self.seq.wrapping_add(1);
            self.ts = self.ts.wrapping_add(160);
            self.tx.protect_rtp(&p).unwrap()
        }
    }

    fn setup(suite: SrtpSuite, codec: Codec, mux: bool) -> (Instant, Bridge, Carrier) {
        let t0 = crate::test_epoch();
        let carrier = Carrier::new(&suite);
        let mut b = Bridge::with_leg(t0, leg(suite, codec, mux), info(), config()).unwrap();
        assert!(b.poll_agent_text().unwrap().contains("\"connected\""));
        assert!(b.poll_agent_text().unwrap().contains("\"start\""));
        (t0, b, carrier)
    }

    fn agent_msgs(b: &mut Bridge) -> Vec<Value> {
        std::iter::from_fn(|| b.poll_agent_text())
            .map(|t| serde_json::from_str(&t).unwrap())
            .collect()
    }

    fn datagrams(b: &mut Bridge) -> Vec<Datagram> {
        std::iter::from_fn(|| b.poll_datagram()).collect()
    }

    fn b64(bytes: &[u8]) -> String {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(bytes)
    }

    fn agent_media(bytes: &[u8]) -> String {
        format!(
            r#"{{"event":"media","streamSid":"MZ1","media":{{"payload":"{}"}}}}"#,
            b64(bytes)
        )
    }

    #[test]
    fn connected_then_start() {
        let t0 = crate::test_epoch();
        let mut b = Bridge::with_leg(
            t0,
            leg(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true),
            info(),
            config(),
        )
        .unwrap();
        let m = agent_msgs(&mut b);
        assert_eq!(m[0]["event"], "connected");
        assert_eq!(m[1]["event"], "start");
        assert_eq!(m[1]["start"]["callSid"], "CA1");
        assert_eq!(m.len(), 2);
    }

    #[test]
    fn inbound_media_reaches_agent_both_suites() {
        for suite in [
            SrtpSuite::AesCm128HmacSha1_80,
            SrtpSuite::AesCm128HmacSha1_32,
        ] {
            let (t0, mut b, mut c) = setup(suite, Codec::Pcmu, true);
            let audio: Vec<u8> = (0..160).map(|i| i as u8).collect();
            for i in 0..3u32 {
                let pkt = c.rtp(0, &audio);
                b.handle_carrier_datagram(t0 + FRAME * i, Component::Rtp, addr(CARRIER), &pkt);
            }
            assert_eq!(
                b.poll_event(),
                Some(BridgeEvent::MediaStarted {
                    from: addr(CARRIER)
                })
            );
            assert_eq!(b.poll_event(), None);
            let m = agent_msgs(&mut b);
            assert_eq!(m.len(), 3);
            assert_eq!(m[2]["media"]["chunk"], "3");
            assert_eq!(m[2]["media"]["timestamp"], "40");
            assert_eq!(m[2]["media"]["payload"], b64(&audio));
            assert_eq!(m[0]["sequenceNumber"], "2");
            assert_eq!(b.stats().rtp_in, 3);
        }
    }

    #[test]
    fn pcma_is_converted_both_ways() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcma, true);
        let alaw: Vec<u8> = (0..160).map(|i| (i * 3) as u8).collect();
        let pkt = c.rtp(8, &alaw);
        b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &pkt);
        let m = agent_msgs(&mut b);
        let ulaw: Vec<u8> = alaw.iter().map(|&a| alaw_to_ulaw(a)).collect();
        assert_eq!(m[0]["media"]["payload"], b64(&ulaw));
        b.handle_agent_text(t0, &agent_media(&ulaw));
        let d = datagrams(&mut b);
        let (plain, h) = c.rx.unprotect_rtp(&d[0].data).unwrap();
        assert_eq!(h.payload_type, 8);
        let back: Vec<u8> = ulaw.iter().map(|&u| ulaw_to_alaw(u)).collect();
        assert_eq!(&plain[12..], &back[..]);
    }

    /// Issue 13: one authenticated packet from a new address no longer moves outbound media;
    /// `relatch_packets` in a row of the latched SSRC do, and each move is counted.
    #[test]
    fn relatch_needs_several_packets_of_the_latched_ssrc() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_32, Codec::Pcmu, true);
        let first = addr("198.51.100.7:30000");
        let other = addr("203.0.113.5:40000");
        let dest_now = |b: &mut Bridge, t: Instant| {
            datagrams(b);
            b.handle_agent_text(t, &agent_media(&[0xff; 160]));
            b.handle_timeout(t);
            datagrams(b).last().map(|d| d.dest)
        };
        let p = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t0, Component::Rtp, first, &p);
        assert_eq!(dest_now(&mut b, t0), Some(first));
        // A single packet (a forgery that happened to authenticate) from elsewhere.
        let p = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t0, Component::Rtp, other, &p);
        assert_eq!(dest_now(&mut b, t0 + FRAME), Some(first));
        // Another SSRC under the same key from the new address never re-latches.
        let mut t = t0 + FRAME * 2;
        for i in 0..10u16 {
            let pkt = write_rtp(false, 0, 500 + i, 0, 0xbad, &[0x55; 160]);
            let p = c.tx.protect_rtp(&pkt).unwrap();
            b.handle_carrier_datagram(t, Component::Rtp, other, &p);
            t += FRAME;
        }
        assert_eq!(dest_now(&mut b, t), Some(first));
        // Packets from the latched address reset the count.
        let p = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t, Component::Rtp, first, &p);
        for _ in 0..4 {
            let p = c.rtp(0, &[0x55; 160]);
            b.handle_carrier_datagram(t, Component::Rtp, other, &p);
        }
        let p = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t, Component::Rtp, first, &p);
        let p = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t, Component::Rtp, other, &p);
        assert_eq!(dest_now(&mut b, t + FRAME), Some(first));
        assert_eq!(b.stats().relatches, 0);
        for _ in 0..5 {
            let p = c.rtp(0, &[0x55; 160]);
            b.handle_carrier_datagram(t, Component::Rtp, other, &p);
        }
        assert_eq!(dest_now(&mut b, t + FRAME * 2), Some(other));
        assert_eq!(b.stats().relatches, 1);
    }

    /// Issue 13: junk SRTCP (which rebuilds the library's SRTCP context) does not reset the
    /// replay state, so a captured SRTCP packet replayed from elsewhere neither counts nor
    /// moves the RTCP destination.
    #[test]
    fn replayed_srtcp_after_junk_does_not_move_rtcp() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, false);
        let rr = |ssrc: u32| {
            let mut p = vec![0x80, 201, 0, 1];
            p.extend_from_slice(&ssrc.to_be_bytes());
            p
        };
        let p = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &p);
        let captured = c.tx.protect_rtcp(&rr(0xca_0001)).unwrap();
        b.handle_carrier_datagram(t0, Component::Rtcp, addr(CARRIER_RTCP), &captured);
        let mut forger = OutboundContext::new(&SrtpSuite::AesCm128HmacSha1_80, &key(99)).unwrap();
        for j in 0..4_200u32 {
            let junk = forger.protect_rtcp(&rr(1000 + j)).unwrap();
            b.handle_carrier_datagram(t0, Component::Rtcp, addr("203.0.113.66:4001"), &junk);
        }
        b.handle_carrier_datagram(t0, Component::Rtcp, addr("203.0.113.66:4001"), &captured);
        assert_eq!(b.stats().srtcp_in, 1);
        assert_eq!(b.stats().replays, 1);
        datagrams(&mut b);
        b.handle_timeout(t0 + Duration::from_secs(5));
        let rtcp: Vec<Datagram> = datagrams(&mut b)
            .into_iter()
            .filter(|d| d.component == Component::Rtcp)
            .collect();
        assert_eq!(rtcp.len(), 1);
        assert_eq!(rtcp[0].dest, addr(CARRIER_RTCP));
    }

    /// Issue 13: pending marks (count and name length) and agent DTMF are bounded; overflow is
    /// counted.
    #[test]
    fn agent_mark_and_dtmf_queues_are_bounded() {
        let (t0, mut b, _c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        b.handle_agent_text(t0, &agent_media(&[0xff; 8000]));
        for i in 0..MAX_PENDING_MARKS + 100 {
            b.handle_agent_text(
                t0,
                &format!(r#"{{"event":"mark","streamSid":"MZ1","mark":{{"name":"m{i}"}}}}"#),
            );
        }
        let long = "x".repeat(MAX_MARK_NAME_BYTES + 1);
        b.handle_agent_text(
            t0,
            &format!(r#"{{"event":"mark","streamSid":"MZ1","mark":{{"name":"{long}"}}}}"#),
        );
        assert_eq!(b.marks.len(), MAX_PENDING_MARKS);
        assert_eq!(b.stats().agent_marks_dropped, 101);
        for _ in 0..MAX_PENDING_DTMF + 7 {
            b.handle_agent_text(
                t0,
                r#"{"event":"dtmf","streamSid":"MZ1","dtmf":{"digit":"5","duration":10000}}"#,
            );
        }
        assert!(b.dtmf_tx.len() <= MAX_PENDING_DTMF);
        assert_eq!(b.stats().agent_dtmf_dropped, 7);
    }

    /// Issue 13: a re-INVITE does not restart the RTP inactivity timer; only media does.
    #[test]
    fn reinvite_does_not_restart_the_rtp_timeout() {
        let (t0, mut b, _c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let mut l = leg(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        l.remote_rtp = addr("192.0.2.11:20000");
        b.update_leg(t0 + Duration::from_secs(9), l).unwrap();
        b.handle_timeout(t0 + Duration::from_secs(10));
        assert_eq!(b.poll_event(), Some(BridgeEvent::RtpTimeout));
    }

    /// Issue 13: parameters the bridge cannot run are an error (the call is refused before the
    /// answer), and a suite change that keeps our key is refused.
    #[test]
    fn unusable_parameters_are_an_error() {
        let t0 = crate::test_epoch();
        let params = |suite: SrtpSuite, key_len: usize| MediaParams {
            suite,
            remote_key: sdp::KeySalt::new(vec![1; key_len + 14]),
            local_key: sdp::KeySalt::new(vec![2; key_len + 14]),
            remote_rtp: addr(CARRIER),
            remote_rtcp: addr(CARRIER),
            rtcp_mux: true,
            codec: Codec::Pcmu,
            payload_type: 0,
            telephone_event: None,
            direction: Direction::SendRecv,
        };
        let e = Bridge::new(
            t0,
            params(SrtpSuite::AesCm256HmacSha1_80, 32),
            info(),
            config(),
        );
        assert_eq!(e.unwrap_err(), BridgeError::UnsupportedSuite);
        let e = Bridge::new(
            t0,
            params(SrtpSuite::AesCm128HmacSha1_80, 10),
            info(),
            config(),
        );
        assert_eq!(e.unwrap_err(), BridgeError::BadKey);
        let mut b = Bridge::new(
            t0,
            params(SrtpSuite::AesCm128HmacSha1_80, 16),
            info(),
            config(),
        )
        .unwrap();
        assert_eq!(
            b.update_params(t0, params(SrtpSuite::AesCm128HmacSha1_32, 16)),
            Err(BridgeError::KeyReuse)
        );
    }

    /// Echo delays (carrier packet in -> echo out) through the built-in echo, with carrier
    /// packets every 20 ms plus 0.1-9 ms of jitter and a driver timer up to 8 ms late.
    fn echo_delays(seed: u64, packets: usize) -> Vec<Duration> {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let from = addr(CARRIER);
        let arrivals: Vec<Instant> = (0..packets)
            .map(|i| {
                let jitter = if rng.gen_bool(0.1) {
                    rng.gen_range(100..9000)
                } else {
                    rng.gen_range(100..600)
                };
                t0 + FRAME * i as u32 + Duration::from_micros(jitter)
            })
            .collect();
        let mut out = Vec::new();
        let mut pending: VecDeque<Instant> = VecDeque::new();
        let mut i = 0;
        let end = t0 + FRAME * (packets as u32 + 3);
        let mut now = t0;
        while now < end {
            let next_timer = b.poll_timeout().unwrap_or(end);
            let next_arrival = arrivals.get(i).copied().unwrap_or(end);
            if next_arrival <= next_timer {
                now = next_arrival;
                let p = c.rtp(0, &[0xaa; 160]);
                b.handle_carrier_datagram(now, Component::Rtp, from, &p);
                pending.push_back(now);
                i += 1;
            } else {
                let late = if rng.gen_bool(0.1) {
                    rng.gen_range(0..8000)
                } else {
                    rng.gen_range(0..1100)
                };
                now = next_timer.max(now) + Duration::from_micros(late);
                b.handle_timeout(now);
            }
            while let Some(t) = b.poll_agent_text() {
                if let Some(r) = crate::echo_agent_reply(&t) {
                    b.handle_agent_text(now, &r);
                }
            }
            while let Some(d) = b.poll_datagram() {
                if !crate::rtp::is_rtcp(&d.data) {
                    if let Some(at) = pending.pop_front() {
                        out.push(now - at);
                    }
                }
            }
        }
        out
    }

    /// The flaky SIPp echo check (issue 13) is not sbc's pacing: whatever the jitter of the
    /// carrier's packets and of the driver's timer, the built-in echo leaves with the packet
    /// that carries it, never a tick later (a late frame takes its missed tick at once).
    #[test]
    fn the_echo_leaves_at_once_whatever_the_jitter() {
        for seed in 0..8 {
            let d = echo_delays(seed, 150);
            assert!(d.len() >= 148, "{}", d.len());
            assert!(d.iter().all(|x| x.is_zero()), "seed {seed}: {d:?}");
        }
    }

    #[test]
    fn tampered_packet_is_counted_and_does_not_move_the_address() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let mut bad = c.rtp(0, &[0x55; 160]);
        bad[20] ^= 1;
        b.handle_carrier_datagram(t0, Component::Rtp, addr("203.0.113.66:4000"), &bad);
        assert_eq!(b.stats().auth_failures, 1);
        assert_eq!(b.poll_event(), None);
        // Our audio still goes to the SDP address.
        b.handle_agent_text(t0, &agent_media(&[0xff; 160]));
        assert_eq!(datagrams(&mut b)[0].dest, addr(CARRIER));
        assert!(agent_msgs(&mut b).is_empty());
        // The first authenticated packet latches its address (symmetric RTP).
        let good = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t0, Component::Rtp, addr("198.51.100.7:30000"), &good);
        assert_eq!(
            b.poll_event(),
            Some(BridgeEvent::MediaStarted {
                from: addr("198.51.100.7:30000")
            })
        );
        b.handle_timeout(t0 + FRAME);
        let more = c.rtp(0, &[0x55; 160]);
        b.handle_carrier_datagram(t0 + FRAME, Component::Rtp, addr("203.0.113.9:1"), &{
            let mut x = more.clone();
            x[30] ^= 0x80;
            x
        });
        b.handle_agent_text(t0 + FRAME, &agent_media(&[0xff; 160]));
        b.handle_timeout(t0 + FRAME * 2);
        assert!(datagrams(&mut b)
            .iter()
            .all(|d| d.dest == addr("198.51.100.7:30000")));
        assert_eq!(b.stats().auth_failures, 2);
    }

    #[test]
    fn replay_is_dropped_and_counted() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_32, Codec::Pcmu, true);
        let pkt = c.rtp(0, &[1; 160]);
        b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &pkt);
        b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &pkt);
        let s = b.stats();
        assert_eq!((s.rtp_in, s.replays, s.auth_failures), (1, 1, 0));
        assert_eq!(agent_msgs(&mut b).len(), 1);
    }

    #[test]
    fn forged_sequence_wrap_through_the_bridge() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        c.seq = 65533;
        for i in 0..6u32 {
            let pkt = c.rtp(0, &[i as u8; 160]);
            b.handle_carrier_datagram(t0 + FRAME * i, Component::Rtp, addr(CARRIER), &pkt);
        }
        assert_eq!(c.seq, 3);
        assert_eq!(b.stats().rtp_in, 6);
        assert_eq!(b.stats().auth_failures, 0);
    }

    #[test]
    fn one_second_chunk_is_paced_into_50_packets() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let audio: Vec<u8> = (0..8000).map(|i| (i % 251) as u8).collect();
        b.handle_agent_text(t0, &agent_media(&audio));
        let mut sent: Vec<(Instant, Vec<u8>)> = datagrams(&mut b)
            .into_iter()
            .map(|d| (t0, d.data))
            .collect();
        // Drive the bridge exactly as the daemon does: sleep until poll_timeout, no later.
        while let Some(at) = b.poll_timeout() {
            if at > t0 + Duration::from_secs(2) {
                break;
            }
            b.handle_timeout(at);
            sent.extend(
                datagrams(&mut b)
                    .into_iter()
                    .filter(|d| d.component == Component::Rtp && !is_rtcp(&d.data))
                    .map(|d| (at, d.data)),
            );
        }
        assert_eq!(sent.len(), 50);
        let mut payload = Vec::new();
        let mut first: Option<RtpHeader> = None;
        for (i, (at, data)) in sent.iter().enumerate() {
            assert_eq!(*at, t0 + FRAME * i as u32, "packet {i} sent on time");
            let (plain, h) = c.rx.unprotect_rtp(data).unwrap();
            let h0 = *first.get_or_insert(h);
            assert_eq!(h.marker, i == 0);
            assert_eq!(h.timestamp.wrapping_sub(h0.timestamp), 160 * i as u32);
            assert_eq!(h.sequence_number.wrapping_sub(h0.sequence_number), i as u16);
            payload.extend_from_slice(&plain[12..]);
        }
        assert_eq!(payload, audio);
        assert_eq!(b.stats().rtp_out, 50);
    }

    #[test]
    fn audio_fed_in_odd_chunks_plays_back_byte_exact_across_the_queue_wrap() {
        // The queue is a ring: chunks of 90-230 bytes fed at every tick, with 1,000 bytes ahead,
        // make each frame straddle the ring's end now and then. What is played must be the
        // audio, byte for byte, in order.
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let audio: Vec<u8> = (0..1000 + 40 * 160).map(|i| (i % 253) as u8).collect();
        let mut fed = 1000;
        b.handle_agent_text(t0, &agent_media(&audio[..fed]));
        let mut payload = Vec::new();
        let mut collect = |b: &mut Bridge, payload: &mut Vec<u8>| {
            for d in datagrams(b) {
                if d.component == Component::Rtp && !is_rtcp(&d.data) {
                    payload.extend_from_slice(&c.rx.unprotect_rtp(&d.data).unwrap().0[12..]);
                }
            }
        };
        collect(&mut b, &mut payload);
        for (i, size) in [90usize, 230, 130, 190]
            .into_iter()
            .cycle()
            .take(40)
            .enumerate()
        {
            let at = b.poll_timeout().expect("a run is paced");
            b.handle_timeout(at);
            collect(&mut b, &mut payload);
            b.handle_agent_text(at, &agent_media(&audio[fed..fed + size]));
            fed += size;
            assert!(payload.len() >= 160 * (i + 1));
        }
        assert_eq!(fed, audio.len());
        assert_eq!(payload, audio[..payload.len()]);
        assert!(payload.len() >= 160 * 40);
    }

    #[test]
    fn silence_advances_timestamp_and_sets_marker() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        b.handle_agent_text(t0, &agent_media(&[0xff; 160]));
        let first = datagrams(&mut b);
        b.handle_timeout(t0 + FRAME); // queue empty: the run ends
        assert!(datagrams(&mut b).is_empty());
        let later = t0 + Duration::from_millis(1000);
        b.handle_agent_text(later, &agent_media(&[0xff; 100]));
        let second = datagrams(&mut b);
        let (_, h1) = c.rx.unprotect_rtp(&first[0].data).unwrap();
        let (p2, h2) = c.rx.unprotect_rtp(&second[0].data).unwrap();
        assert!(h2.marker);
        assert_eq!(h2.timestamp.wrapping_sub(h1.timestamp), 8000);
        assert_eq!(h2.sequence_number, h1.sequence_number.wrapping_add(1));
        assert_eq!(p2.len(), 12 + 160, "short chunk padded to 20 ms");
    }

    #[test]
    fn marks_wait_for_playout_and_clear_flushes() {
        let (t0, mut b, _) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        // Mark with nothing queued: echoed at once.
        b.handle_agent_text(
            t0,
            r#"{"event":"mark","streamSid":"MZ1","mark":{"name":"m0"}}"#,
        );
        assert_eq!(agent_msgs(&mut b)[0]["mark"]["name"], "m0");
        b.handle_agent_text(t0, &agent_media(&[0xff; 320]));
        b.handle_agent_text(t0, r#"{"event":"mark","mark":{"name":"m1"}}"#);
        assert!(agent_msgs(&mut b).is_empty());
        b.handle_timeout(t0 + FRAME); // second frame sent, not played yet
        assert!(agent_msgs(&mut b).is_empty());
        b.handle_timeout(t0 + FRAME * 2); // played out
        assert_eq!(agent_msgs(&mut b)[0]["mark"]["name"], "m1");

        // Clear: a long queue is dropped at once and pending marks are echoed in order.
        b.handle_agent_text(t0 + FRAME * 3, &agent_media(&[0xff; 8000]));
        b.handle_agent_text(t0 + FRAME * 3, r#"{"event":"mark","mark":{"name":"a"}}"#);
        b.handle_agent_text(t0 + FRAME * 3, &agent_media(&[0xff; 800]));
        b.handle_agent_text(t0 + FRAME * 3, r#"{"event":"mark","mark":{"name":"b"}}"#);
        let _ = datagrams(&mut b);
        b.handle_agent_text(t0 + FRAME * 3, r#"{"event":"clear","streamSid":"MZ1"}"#);
        let m = agent_msgs(&mut b);
        assert_eq!(
            m.iter()
                .map(|v| v["mark"]["name"].as_str().unwrap())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        b.handle_timeout(t0 + FRAME * 4);
        assert!(datagrams(&mut b).is_empty(), "nothing left to play");
        assert_eq!(
            b.poll_timeout(),
            Some(t0 + Duration::from_secs(5)),
            "only the RTCP timer remains"
        );
    }

    #[test]
    fn carrier_dtmf_three_end_packets_one_agent_message() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let send = |b: &mut Bridge, c: &mut Carrier, end: bool, dur: u16| {
            let ev = TelephoneEvent {
                event: 5,
                end,
                volume: 10,
                duration: dur,
            }
            .to_bytes();
            let p = write_rtp(false, 101, c.seq, 4242, 0xca_0001, &ev);
            c.seq += 1;
            b.handle_carrier_datagram(
                t0,
                Component::Rtp,
                addr(CARRIER),
                &c.tx.protect_rtp(&p).unwrap(),
            );
        };
        send(&mut b, &mut c, false, 160);
        send(&mut b, &mut c, false, 320);
        for _ in 0..3 {
            send(&mut b, &mut c, true, 480);
        }
        let m = agent_msgs(&mut b);
        assert_eq!(m.len(), 1);
        assert_eq!(m[0]["event"], "dtmf");
        assert_eq!(m[0]["dtmf"]["digit"], "5");
        assert_eq!(m[0]["dtmf"]["track"], "inbound_track");
        assert_eq!(b.stats().dtmf_from_carrier, 1);
        b.signalled_dtmf(t0, '#', Duration::from_millis(100));
        assert_eq!(agent_msgs(&mut b)[0]["dtmf"]["digit"], "#");
    }

    #[test]
    fn agent_dtmf_goes_out_as_rfc4733() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        b.handle_agent_text(
            t0,
            r#"{"event":"dtmf","dtmf":{"digit":"9","duration":100}}"#,
        );
        let mut pkts = datagrams(&mut b);
        for i in 1..10u32 {
            b.handle_timeout(t0 + FRAME * i);
            pkts.extend(datagrams(&mut b));
        }
        let decoded: Vec<(RtpHeader, TelephoneEvent)> = pkts
            .iter()
            .map(|d| {
                let (p, h) = c.rx.unprotect_rtp(&d.data).unwrap();
                (h, TelephoneEvent::parse(&p[12..]).unwrap())
            })
            .collect();
        assert_eq!(decoded.len(), 4 + 3);
        assert!(decoded.iter().all(|(h, e)| h.payload_type == 101
            && e.event == 9
            && h.timestamp == decoded[0].0.timestamp));
        assert!(decoded[0].0.marker && decoded[1..].iter().all(|(h, _)| !h.marker));
        assert_eq!(decoded.iter().filter(|(_, e)| e.end).count(), 3);
        assert_eq!(b.stats().dtmf_from_agent, 1);
    }

    #[test]
    fn malformed_agent_input_is_counted_not_fatal() {
        let (t0, mut b, _) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        b.handle_agent_text(t0, "{not json");
        b.handle_agent_text(t0, r#"{"event":"media","media":{"payload":"***"}}"#);
        b.handle_agent_text(t0, r#"{"event":"unknown-thing"}"#);
        assert_eq!(b.stats().agent_malformed, 2);
        b.handle_agent_text(t0, &agent_media(&[0xff; 160]));
        assert_eq!(datagrams(&mut b).len(), 1);
    }

    #[test]
    fn inactivity_ends_the_call_once() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let pkt = c.rtp(0, &[0; 160]);
        b.handle_carrier_datagram(
            t0 + Duration::from_secs(3),
            Component::Rtp,
            addr(CARRIER),
            &pkt,
        );
        let _ = b.poll_event();
        b.handle_timeout(t0 + Duration::from_secs(12));
        assert_eq!(b.poll_event(), None);
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(13)));
        b.handle_timeout(t0 + Duration::from_secs(13));
        assert_eq!(b.poll_event(), Some(BridgeEvent::RtpTimeout));
        b.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(b.poll_event(), None);
    }

    #[test]
    fn srtcp_reports_every_interval_and_incoming_counted() {
        for mux in [true, false] {
            let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_32, Codec::Pcmu, mux);
            let pkt = c.rtp(0, &[0; 160]);
            b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &pkt);
            assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(5)));
            let mut reports = Vec::new();
            for s in 1..=11u64 {
                b.handle_timeout(t0 + Duration::from_secs(s));
                reports.extend(datagrams(&mut b));
            }
            assert_eq!(reports.len(), 2);
            for r in &reports {
                assert_eq!(
                    r.component,
                    if mux { Component::Rtp } else { Component::Rtcp }
                );
                let plain = c.rx.unprotect_rtcp(&r.data).unwrap();
                assert_eq!(plain[1], 201, "RR: we sent no RTP");
                assert_eq!(plain[0] & 0x1f, 1, "one report block about the carrier");
            }
            assert_eq!(b.stats().srtcp_out, 2);
            // The carrier's SRTCP: on the RTP port with mux, else on the RTCP port.
            let sr = crate::rtcp::compound_report(0xca_0001, None, None, "carrier", false);
            let prot = c.tx.protect_rtcp(&sr).unwrap();
            let comp = if mux { Component::Rtp } else { Component::Rtcp };
            b.handle_carrier_datagram(t0, comp, addr(CARRIER_RTCP), &prot);
            b.handle_carrier_datagram(t0, comp, addr(CARRIER_RTCP), &prot);
            let s = b.stats();
            assert_eq!((s.srtcp_in, s.replays, s.rtp_in), (1, 1, 1));
        }
    }

    #[test]
    fn rekey_switches_without_a_gap() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let old_pkt = c.rtp(0, &[1; 160]);
        b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &old_pkt);
        let mut new_leg = leg(SrtpSuite::AesCm128HmacSha1_32, Codec::Pcmu, true);
        new_leg.remote_key = key(7);
        new_leg.local_key = key(8);
        b.update_leg(t0, new_leg).unwrap();
        // In flight with the old key: still accepted.
        let late = c.rtp(0, &[2; 160]);
        b.handle_carrier_datagram(t0 + FRAME, Component::Rtp, addr(CARRIER), &late);
        // The carrier switches.
        let mut c2 = Carrier {
            tx: OutboundContext::new(&SrtpSuite::AesCm128HmacSha1_32, &key(7)).unwrap(),
            rx: InboundContext::new(&SrtpSuite::AesCm128HmacSha1_32, &key(8)).unwrap(),
            seq: c.seq,
            ts: c.ts,
        };
        let new_pkt = c2.rtp(0, &[3; 160]);
        b.handle_carrier_datagram(t0 + FRAME * 2, Component::Rtp, addr(CARRIER), &new_pkt);
        assert_eq!(b.stats().rtp_in, 3);
        assert_eq!(b.stats().auth_failures, 0);
        // Our packets now use our new key.
        b.handle_agent_text(t0 + FRAME * 2, &agent_media(&[0xff; 160]));
        let d = datagrams(&mut b);
        assert!(c2.rx.unprotect_rtp(&d[0].data).is_ok());
        // After the grace period the old key is refused.
        c.seq = c.seq.wrapping_add(10);
        let stale = c.rtp(0, &[4; 160]);
        b.handle_timeout(t0 + REKEY_GRACE + FRAME);
        b.handle_carrier_datagram(
            t0 + REKEY_GRACE + FRAME,
            Component::Rtp,
            addr(CARRIER),
            &stale,
        );
        assert_eq!(b.stats().auth_failures, 1);
    }

    #[test]
    fn echo_agent_round_trip_through_the_bridge() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let audio: Vec<u8> = (0..160).map(|i| (i * 7) as u8).collect();
        let pkt = c.rtp(0, &audio);
        b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &pkt);
        let text = b.poll_agent_text().unwrap();
        let reply = crate::echo_agent_reply(&text).unwrap();
        b.handle_agent_text(t0, &reply);
        let d = datagrams(&mut b);
        let (plain, _) = c.rx.unprotect_rtp(&d[0].data).unwrap();
        assert_eq!(&plain[12..], &audio[..]);
    }

    #[test]
    fn mirror_caller_ssrc_switches_our_ssrc_only_when_asked() {
        for mirror in [false, true] {
            let suite = SrtpSuite::AesCm128HmacSha1_80;
            let t0 = crate::test_epoch();
            let mut c = Carrier::new(&suite);
            let cfg = BridgeConfig {
                mirror_caller_ssrc: mirror,
                ..config()
            };
            let mut b = Bridge::with_leg(t0, leg(suite, Codec::Pcmu, true), info(), cfg).unwrap();
            let _ = agent_msgs(&mut b);
            let pkt = c.rtp(0, &[0xaa; 160]);
            b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &pkt);
            let text = b.poll_agent_text().unwrap();
            b.handle_agent_text(t0, &crate::echo_agent_reply(&text).unwrap());
            let d = datagrams(&mut b);
            let (plain, _) = c.rx.unprotect_rtp(&d[0].data).unwrap();
            let ssrc = u32::from_be_bytes([plain[8], plain[9], plain[10], plain[11]]);
            let expected = if mirror { 0xca_0001 } else { config().ssrc };
            assert_eq!(ssrc, expected, "mirror = {mirror}");
        }
    }

    #[test]
    fn stop_sends_stop_and_bye_then_goes_quiet() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        b.stop(t0);
        let m = agent_msgs(&mut b);
        assert_eq!(m[0]["event"], "stop");
        assert_eq!(m[0]["stop"]["callSid"], "CA1");
        let d = datagrams(&mut b);
        let plain = c.rx.unprotect_rtcp(&d[0].data).unwrap();
        assert!(plain.windows(2).any(|w| w == [0x81, 203]), "BYE included");
        assert_eq!(b.poll_timeout(), None);
        b.handle_agent_text(t0, &agent_media(&[0xff; 160]));
        assert!(datagrams(&mut b).is_empty());
    }

    #[test]
    fn garbage_from_the_network_never_panics() {
        let (t0, mut b, _) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let mut x: u32 = 1;
        for len in 0..300usize {
            let d: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &d);
            b.handle_carrier_datagram(t0, Component::Rtcp, addr(CARRIER), &d);
            b.handle_agent_text(t0, &String::from_utf8_lossy(&d));
        }
        let s = b.stats();
        assert_eq!(s.rtp_in + s.srtcp_in, 0);
        assert_eq!(b.poll_event(), None);
    }

    #[test]
    fn keys_never_in_debug_output() {
        let l = leg(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let (_, b, _) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        for text in [format!("{l:?}"), format!("{l:#?}"), format!("{b:?}")] {
            assert!(
                !text.contains("[1, 1, 1") && !text.contains("1, 1, 1, 1"),
                "{text}"
            );
            assert!(
                !text.contains("[2, 2, 2") && !text.contains("2, 2, 2, 2"),
                "{text}"
            );
        }
        assert!(format!("{l:?}").contains("<redacted>"));
    }

    proptest::proptest! {
        /// Any datagram, including mutations of authentic ones, is counted and never panics;
        /// a mutated packet never authenticates.
        #[test]
        fn carrier_input_never_panics(
            data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..400),
            flip in 0usize..400,
            v2 in proptest::prelude::any::<bool>(),
        ) {
            let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
            let mut d = data.clone();
            if v2 && !d.is_empty() {
                d[0] = 0x80 | (d[0] & 0x3f);
            }
            b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &d);
            b.handle_carrier_datagram(t0, Component::Rtcp, addr(CARRIER), &d);
            let mut good = c.rtp(0, &data[..data.len().min(160)]);
            let i = flip % good.len();
            good[i] ^= 0x01;
            b.handle_carrier_datagram(t0, Component::Rtp, addr(CARRIER), &good);
            let s = b.stats();
            proptest::prop_assert_eq!(s.rtp_in, 0);
            proptest::prop_assert_eq!(s.auth_failures + s.replays + s.carrier_malformed, 3);
        }
    }

    #[test]
    fn rekey_after_a_wrap_with_the_carrier_keeping_its_roc() {
        let suite = SrtpSuite::AesCm128HmacSha1_80;
        let (t0, mut b, mut c) = setup(suite.clone(), Codec::Pcmu, true);
        c.seq = 65530;
        for i in 0..10u32 {
            let pkt = c.rtp(0, &[1; 160]);
            b.handle_carrier_datagram(t0 + FRAME * i, Component::Rtp, addr(CARRIER), &pkt);
        }
        let mut new_leg = leg(suite.clone(), Codec::Pcmu, true);
        new_leg.remote_key = key(7);
        b.update_leg(t0 + FRAME * 10, new_leg).unwrap();
        // The carrier re-keys its existing stream: same SSRC, ROC 1 carries on.
        let mut keeper = OutboundContext::new(&suite, &key(7)).unwrap();
        keeper
            .protect_rtp(&write_rtp(false, 0, 0, 0, 0xca_0001, &[]))
            .unwrap();
        keeper
            .protect_rtp(&write_rtp(false, 0, 0x4000, 0, 0xca_0001, &[]))
            .unwrap();
        keeper
            .protect_rtp(&write_rtp(false, 0, 0x8000, 0, 0xca_0001, &[]))
            .unwrap();
        keeper
            .protect_rtp(&write_rtp(false, 0, 0xc000, 0, 0xca_0001, &[]))
            .unwrap();
        keeper
            .protect_rtp(&write_rtp(
                false,
                0,
                c.seq.wrapping_sub(1),
                0,
                0xca_0001,
                &[],
            ))
            .unwrap();
        for i in 0..3u16 {
            let pkt = keeper
                .protect_rtp(&write_rtp(false, 0, c.seq + i, 0, 0xca_0001, &[2; 160]))
                .unwrap();
            b.handle_carrier_datagram(t0 + FRAME * 11, Component::Rtp, addr(CARRIER), &pkt);
        }
        assert_eq!(b.stats().rtp_in, 13);
        assert_eq!(b.stats().auth_failures, 0);
    }

    #[test]
    fn direction_gates_sending_and_the_inactivity_timer() {
        let t0 = crate::test_epoch();
        let mut l = leg(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        l.direction = Direction::RecvOnly;
        let mut b = Bridge::with_leg(t0, l.clone(), info(), config()).unwrap();
        let _ = agent_msgs(&mut b);
        b.handle_agent_text(t0, &agent_media(&[0xff; 160]));
        b.handle_agent_text(t0, r#"{"event":"mark","mark":{"name":"m"}}"#);
        b.handle_timeout(t0 + FRAME);
        assert!(
            datagrams(&mut b).is_empty(),
            "recvonly: no audio to the carrier"
        );
        assert_eq!(
            agent_msgs(&mut b)[0]["mark"]["name"],
            "m",
            "marks still echo"
        );

        l.direction = Direction::Inactive;
        b.update_leg(t0 + FRAME, l.clone()).unwrap();
        b.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(b.poll_event(), None, "inactive: no RTP expected");
        assert_eq!(b.stats().srtcp_out, 1, "RTCP still flows");

        l.direction = Direction::SendRecv;
        b.update_leg(t0 + Duration::from_secs(60), l).unwrap();
        b.handle_timeout(t0 + Duration::from_secs(70));
        assert_eq!(b.poll_event(), Some(BridgeEvent::RtpTimeout));
    }

    /// A driver that wakes up late by up to 7 ms each time: still 50 packets in a second,
    /// each sent at its tick or within the lateness, and no drift.
    #[test]
    fn pacing_does_not_drift_with_a_late_driver() {
        let (t0, mut b, _) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        b.handle_agent_text(t0, &agent_media(&[0xff; 8000]));
        let mut count = datagrams(&mut b).len();
        let mut k = 0u64;
        while let Some(due) = b.poll_timeout() {
            if due > t0 + Duration::from_millis(1100) {
                break;
            }
            k += 1;
            let late = Duration::from_micros((k * 2_654_435_761) % 7_000);
            b.handle_timeout(due + late);
            let n = datagrams(&mut b).len();
            assert!(n <= 1, "one packet per wake-up");
            count += n;
        }
        assert_eq!(count, 50);
        // The last audio tick was due at 980 ms; the run ends at the next tick (1000 ms).
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(5)));
    }

    /// Sends `frames` 20 ms frames as an agent that echoes real-time audio would, frame `k`
    /// arriving `late(k)` after `t0 + k * 20 ms`, driving the bridge as the daemon does (timers
    /// that are due before the next frame first). Returns, per frame, (arrival, sent).
    fn drive_real_time_agent(
        frames: u32,
        late: impl Fn(u32) -> Duration,
    ) -> Vec<(Instant, Instant)> {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let arrival = |k: u32| t0 + FRAME * k + late(k);
        let mut sent: Vec<(Instant, Datagram)> = Vec::new();
        let run_timers = |b: &mut Bridge, until: Instant, sent: &mut Vec<(Instant, Datagram)>| {
            while let Some(due) = b.poll_timeout().filter(|d| *d <= until) {
                b.handle_timeout(due);
                sent.extend(datagrams(b).into_iter().map(|d| (due, d)));
            }
        };
        for k in 0..frames {
            run_timers(&mut b, arrival(k), &mut sent);
            b.handle_agent_text(arrival(k), &agent_media(&[k as u8; 160]));
            sent.extend(datagrams(&mut b).into_iter().map(|d| (arrival(k), d)));
        }
        run_timers(
            &mut b,
            arrival(frames) + Duration::from_millis(200),
            &mut sent,
        );
        let mut out = Vec::new();
        for (at, d) in sent.iter().filter(|(_, d)| !is_rtcp(&d.data)) {
            let (plain, _) = c.rx.unprotect_rtp(&d.data).unwrap();
            let k = u32::from(plain[12]);
            assert_eq!(k as usize, out.len(), "frames leave in order, none lost");
            out.push((arrival(k), *at));
        }
        assert_eq!(out.len(), frames as usize);
        out
    }

    /// Agent audio that arrives in real time but now and then a few ms late (an echo agent, or
    /// any agent behind a busy network) must not queue up: a late frame goes out when it
    /// arrives and the frames after it keep their own schedule. Before, each late frame ended
    /// the run and the next run started at its arrival: the schedule only ever moved later, the
    /// queue never drained while audio kept coming, and the added latency became the largest
    /// lateness seen so far (here 10 ms; 65 ms at p99 with 1,000 calls on two cores).
    #[test]
    fn late_agent_frames_do_not_delay_the_frames_after_them() {
        let ms = Duration::from_millis;
        // The first frame is 10 ms late, then every seventh one by 2 to 10 ms.
        let out = drive_real_time_agent(150, |k| match k {
            0 => ms(10),
            k if k % 7 == 3 => ms(2 + u64::from(k % 5) * 2),
            _ => ms(0),
        });
        let delay: Vec<Duration> = out.iter().map(|(a, s)| *s - *a).collect();
        assert!(delay.iter().all(|d| *d <= ms(10)), "{delay:?}");
        // The 10 ms head start of the first frame is worked off (1 ms per frame) and lateness
        // does not carry over: from frame 20 on nothing waits.
        assert!(
            delay[20..].iter().all(|d| d.is_zero()),
            "{:?}",
            &delay[20..]
        );
    }

    /// Faster than real time (Pipecat: 40 ms chunks every 20 ms) is still paced at 20 ms: the
    /// n-th packet never leaves before `first + n * 20 ms` minus one frame.
    #[test]
    fn double_speed_agent_audio_is_still_paced() {
        let (t0, mut b, _) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let mut sent = Vec::new();
        for k in 0..50u32 {
            let at = t0 + FRAME * k;
            while let Some(due) = b.poll_timeout().filter(|d| *d <= at) {
                b.handle_timeout(due);
                sent.extend(datagrams(&mut b).into_iter().map(|_| due));
            }
            b.handle_agent_text(at, &agent_media(&[0x7f; 320]));
            sent.extend(datagrams(&mut b).into_iter().map(|_| at));
        }
        while let Some(due) = b
            .poll_timeout()
            .filter(|d| *d <= t0 + Duration::from_secs(3))
        {
            b.handle_timeout(due);
            sent.extend(
                datagrams(&mut b)
                    .into_iter()
                    .filter(|d| !is_rtcp(&d.data))
                    .map(|_| due),
            );
        }
        assert_eq!(sent.len(), 100);
        for (n, at) in sent.iter().enumerate() {
            assert!(
                *at + FRAME >= t0 + FRAME * n as u32,
                "packet {n} early at {:?}",
                *at - t0
            );
        }
        assert!(sent[99] >= t0 + FRAME * 98);
    }

    /// The driver (the call task) stalls for 400 ms while a real-time agent keeps sending:
    /// afterwards the frames leave on time again; what the stall cost is dropped once (and
    /// counted), not added to every later frame. Before, the frames read after the stall
    /// started a new run and the 400 ms stayed in the queue for the rest of the call.
    #[test]
    fn a_stalled_driver_costs_audio_once_not_latency_forever() {
        let (t0, mut b, mut c) = setup(SrtpSuite::AesCm128HmacSha1_80, Codec::Pcmu, true);
        let arrival = |k: u32| t0 + FRAME * k;
        let (stall_from, stall_to) = (arrival(50) + Duration::from_millis(1), arrival(70));
        let mut sent: Vec<(Instant, Datagram)> = Vec::new();
        let timers = |b: &mut Bridge, until: Instant, sent: &mut Vec<(Instant, Datagram)>| {
            while let Some(due) = b.poll_timeout().filter(|d| *d <= until) {
                // During the stall nothing runs; the first thing after it is the overdue timer.
                let at = if due > stall_from && due < stall_to {
                    stall_to
                } else {
                    due
                };
                b.handle_timeout(at);
                sent.extend(datagrams(b).into_iter().map(|d| (at, d)));
            }
        };
        for k in 0..150u32 {
            let at = arrival(k).max(if arrival(k) > stall_from && arrival(k) < stall_to {
                stall_to
            } else {
                arrival(k)
            });
            timers(&mut b, at, &mut sent);
            b.handle_agent_text(at, &agent_media(&[k as u8; 160]));
            sent.extend(datagrams(&mut b).into_iter().map(|d| (at, d)));
        }
        timers(&mut b, arrival(150) + Duration::from_millis(200), &mut sent);
        let mut delay = Vec::new();
        let mut seen = Vec::new();
        for (at, d) in sent.iter().filter(|(_, d)| !is_rtcp(&d.data)) {
            let (plain, _) = c.rx.unprotect_rtp(&d.data).unwrap();
            let k = u32::from(plain[12]);
            seen.push(k);
            delay.push((k, *at - arrival(k)));
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "in order: {seen:?}");
        // After the stall (frames 70 on arrive on time again) the delay is under one frame and
        // worked off (1 ms per frame) within 20 frames.
        assert!(
            delay.iter().all(|(k, d)| *k < 75 || *d < FRAME),
            "{delay:?}"
        );
        let late: Vec<_> = delay
            .iter()
            .filter(|(k, d)| *k >= 95 && !d.is_zero())
            .collect();
        assert!(late.is_empty(), "{late:?}");
        // The stall's 20 frames: some go out at once (at most MAX_CATCH_UP + 1 burst), the rest are dropped.
        let dropped = b.stats().agent_audio_late_dropped;
        assert_eq!(dropped % 160, 0);
        assert_eq!(
            seen.len() as u64 + dropped / 160,
            150,
            "every frame sent or counted dropped"
        );
        assert!(dropped / 160 <= 20, "dropped {} frames", dropped / 160);
    }

    /// Every call holds one `Bridge` for its whole life (boxed by the daemon): RSS per call
    /// (docs/performance.md). It was 5,584 bytes with the two re-key contexts (`inbound_alt`,
    /// `previous_inbound`, ~1.1 KiB each) inline though they are empty but for a few seconds
    /// after a re-key; boxed, it is about 3.4 KiB. The rekey tests above still exercise both.
    #[test]
    fn bridge_stays_small() {
        let size = std::mem::size_of::<Bridge>();
        assert!(size <= 3_584, "Bridge is {size} bytes");
        assert!(std::mem::size_of::<Option<Box<InboundContext>>>() <= 8);
    }
}
