//! One audit record per call event, as JSON Lines: `call.refused` for every refused INVITE,
//! `call.start` when a call is answered, `call.end` when it ends, and `call.refused.summary` for
//! refusals folded together under a flood. Each record is written and flushed as it happens
//! (optionally fsynced), so a crash loses at most the records of the last 2 ms (see `COALESCE`)
//! and the end records of calls in progress. A record is
//! built in memory and written whole, so a crash cannot leave a partial line from a record that
//! was complete. Records that queue up while the writer is busy, or within 2 ms of its last
//! write, go out together in one write (and one fsync), at most [`BATCH_LINES`] of them; a record
//! that finds the writer idle is written at once.
//!
//! Writes (and fsync) run on the audit's own thread, never on a tokio worker: callers serialise
//! the record and hand the line over a channel. Two kinds of record, two rules:
//! - Records of calls (`call.start`, `call.end`, and the refusal of a call that exists, after
//!   SDP/route checks) are never dropped. Their number in flight is bounded by admission, not by
//!   the channel: while more than `backlog_limit` lines wait for the writer (a stalled disk),
//!   [`Audit::backlogged`] is true and admission refuses new calls with 503, so no call runs
//!   unaudited and the backlog cannot grow past `backlog_limit` plus two records per live call.
//! - Refusals made before a call exists (admission: rate, capacity, identity) are written in full
//!   up to `refusal_records_per_second` ([`RefusalGate`]); beyond it, or while the writer is
//!   backlogged, they are counted by reason and carrier and written as one summary record per
//!   `refusal_summary_interval`. A flood of refused INVITEs therefore costs at most that rate of
//!   lines plus one summary line per interval.
//!
//! No field ever holds key material: the record types have no field that could take a key, and
//! `interop-tests` greps a real call's records for the keys.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::config::{AuditConfig, AuditSink, NumberPrivacy};

/// The audit sink: a handle to the writer thread.
pub struct Audit {
    tx: Mutex<Option<mpsc::Sender<Msg>>>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Lines handed to the writer and not yet written.
    backlog: Arc<AtomicUsize>,
    backlog_limit: usize,
    gate: Arc<Mutex<RefusalGate>>,
    privacy: NumberPrivacy,
}

enum Msg {
    Line(Vec<u8>),
    /// Write the pending summary (if any), fsync, then answer.
    Flush(mpsc::Sender<()>),
}

/// Errors opening the audit file.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    pub path: String,
    pub source: std::io::Error,
}

/// Most records written with one write (and one fsync): those that queued up while the writer
/// was busy. A batch never waits to fill.
pub const BATCH_LINES: usize = 256;

/// After a write, how long the writer lets records gather before it looks again. Under load this
/// turns one wake-up, context switch and write per record into one per interval (each call writes
/// two records); a record waits at most this long in memory, so a crash of the process (not a
/// shutdown, which flushes) may lose the records of this last interval. Well below a
/// disk's fsync latency.
const COALESCE: Duration = Duration::from_millis(2);

/// Lines waiting for the writer beyond which new calls are refused, when the caller has no
/// better figure (see [`Audit::open`]).
pub const DEFAULT_BACKLOG_LIMIT: usize = 4096;

impl Audit {
    /// Opens the sink and starts the writer thread. `backlog_limit`: lines waiting for the writer
    /// beyond which [`Audit::backlogged`] says so (admission then refuses new calls).
    pub fn open(config: &AuditConfig, backlog_limit: usize) -> Result<Audit, AuditError> {
        let (out, file): (Box<dyn Write + Send>, Option<File>) = match &config.sink {
            AuditSink::Stdout => (Box::new(std::io::stdout()), None),
            AuditSink::File(path) => {
                let err = |source| AuditError {
                    path: path.display().to_string(),
                    source,
                };
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(err)?;
                }
                repair_partial_tail(path).map_err(err)?;
                let f = OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(err)?;
                let clone = f.try_clone().map_err(err)?;
                (Box::new(f), Some(clone))
            }
        };
        let sink = Sink {
            out,
            file,
            fsync: config.fsync,
        };
        Ok(Audit::start(sink, config, backlog_limit))
    }

    fn start(sink: Sink, config: &AuditConfig, backlog_limit: usize) -> Audit {
        let (tx, rx) = mpsc::channel();
        let backlog = Arc::new(AtomicUsize::new(0));
        let gate = Arc::new(Mutex::new(RefusalGate::new(
            config.refusal_records_per_second,
            config.refusal_summary_interval,
        )));
        let writer = Writer {
            sink,
            rx,
            backlog: Arc::clone(&backlog),
            gate: Arc::clone(&gate),
            tick: config
                .refusal_summary_interval
                .min(Duration::from_secs(1))
                .max(Duration::from_millis(10)),
        };
        let thread = std::thread::Builder::new()
            .name("sbc-audit".into())
            .spawn(move || writer.run())
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the audit writer thread: audit records are lost");
        }
        Audit {
            tx: Mutex::new(Some(tx)),
            thread: Mutex::new(thread),
            backlog,
            backlog_limit,
            gate,
            privacy: config.number_privacy.clone(),
        }
    }

    /// Applies the configured privacy rule to a phone number or SIP user.
    pub fn number(&self, number: &str) -> String {
        protect_number(&self.privacy, number)
    }

    /// True while more lines wait for the writer than the limit: admission refuses new calls.
    pub fn backlogged(&self) -> bool {
        self.backlog.load(Ordering::Relaxed) >= self.backlog_limit
    }

    /// Writes one record of a call as a single line. Never dropped, never blocks (see the module
    /// doc for why its memory stays bounded).
    pub fn write(&self, event: &'static str, record: &CallRecord) {
        if let Some(line) = serialise(event, record) {
            self.send(line);
        }
    }

    /// A refusal made before a call exists (admission): written in full within
    /// `refusal_records_per_second` and while the writer keeps up, else counted in the next
    /// `call.refused.summary`.
    pub fn write_admission_refusal(&self, record: &CallRecord) {
        let now = Instant::now();
        let full = {
            let mut gate = self.gate.lock().unwrap_or_else(|p| p.into_inner());
            let reason = record.decision.reason.as_str();
            if self.backlogged() {
                gate.count(now, reason, &record.carrier);
                false
            } else {
                gate.admit(now, reason, &record.carrier)
            }
        };
        if full {
            self.write("call.refused", record);
        }
    }

    fn send(&self, line: Vec<u8>) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        match tx.as_ref() {
            Some(tx) => {
                self.backlog.fetch_add(1, Ordering::Relaxed);
                if tx.send(Msg::Line(line)).is_err() {
                    self.backlog.fetch_sub(1, Ordering::Relaxed);
                    tracing::error!("audit writer gone: record lost");
                }
            }
            None => tracing::error!("audit closed: record lost"),
        }
    }

    /// Waits until every record handed over so far is written (and fsynced when configured),
    /// and the pending refusal summary with them. Blocking: call it off the runtime
    /// (`spawn_blocking`) or from a plain thread.
    pub fn flush(&self) {
        let (ack_tx, ack_rx) = mpsc::channel();
        let sent = {
            let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
            tx.as_ref()
                .is_some_and(|t| t.send(Msg::Flush(ack_tx)).is_ok())
        };
        if sent && ack_rx.recv_timeout(Duration::from_secs(30)).is_err() {
            tracing::error!("audit flush did not finish within 30 s");
        }
    }

    /// Flushes, then stops the writer thread. Blocking, like [`Audit::flush`].
    pub fn close(&self) {
        self.flush();
        drop(self.tx.lock().unwrap_or_else(|p| p.into_inner()).take());
        if let Some(t) = self.thread.lock().unwrap_or_else(|p| p.into_inner()).take() {
            let _ = t.join();
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        self.close();
    }
}

fn serialise(event: &'static str, record: &CallRecord) -> Option<Vec<u8>> {
    let line = Line {
        ts: now_rfc3339(),
        event,
        record,
    };
    match serde_json::to_vec(&line) {
        Ok(mut t) => {
            t.push(b'\n');
            Some(t)
        }
        Err(e) => {
            tracing::error!(error = %e, "audit record could not be serialised");
            None
        }
    }
}

/// Where lines go; owned by the writer thread.
struct Sink {
    out: Box<dyn Write + Send>,
    file: Option<File>,
    fsync: bool,
}

impl Sink {
    /// Writes whole lines (one record or a batch of them), then fsyncs when configured.
    fn write_lines(&mut self, text: &[u8]) {
        // sbc is the only writer (append mode), so the length before the write is where these
        // lines start: a write that fails half-way (disk full) is cut back to the end of the last
        // whole line written, so that the next record does not continue a partial line and the
        // records before it are kept.
        let start = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        let mut done = 0;
        let result = loop {
            if done == text.len() {
                break self.out.flush();
            }
            match self.out.write(&text[done..]) {
                Ok(0) => break Err(std::io::ErrorKind::WriteZero.into()),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => break Err(e),
            }
        };
        if let Err(e) = result {
            let kept = text[..done]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            let lost = text[kept..].iter().filter(|&&b| b == b'\n').count();
            tracing::error!(error = %e, lost, "audit records could not be written");
            if let (Some(f), Some(start)) = (&self.file, start) {
                if let Err(e) = f.set_len(start + kept as u64) {
                    tracing::error!(error = %e, "audit log could not be cut back after a failed write");
                }
            }
            return;
        }
        if self.fsync {
            self.sync();
        }
    }

    fn sync(&mut self) {
        if let Some(f) = &self.file {
            if let Err(e) = f.sync_data() {
                tracing::error!(error = %e, "audit fsync failed");
            }
        }
    }
}

/// The writer thread: lines in order, and the refusal summary when it is due.
struct Writer {
    sink: Sink,
    rx: mpsc::Receiver<Msg>,
    backlog: Arc<AtomicUsize>,
    gate: Arc<Mutex<RefusalGate>>,
    tick: Duration,
}

impl Writer {
    fn run(mut self) {
        let mut batch = Vec::new();
        loop {
            match self.rx.recv_timeout(self.tick) {
                Ok(Msg::Line(line)) => {
                    // Whatever else is already queued goes out in the same write, up to
                    // BATCH_LINES; a flush request ends the batch and is answered after it.
                    batch.clear();
                    batch.extend_from_slice(&line);
                    let mut lines = 1;
                    let mut flush = None;
                    while lines < BATCH_LINES {
                        match self.rx.try_recv() {
                            Ok(Msg::Line(line)) => {
                                batch.extend_from_slice(&line);
                                lines += 1;
                            }
                            Ok(Msg::Flush(ack)) => {
                                flush = Some(ack);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.sink.write_lines(&batch);
                    self.backlog.fetch_sub(lines, Ordering::Relaxed);
                    self.summary(false);
                    match flush {
                        Some(ack) => self.flush(ack),
                        // Let the next records gather instead of waking for each one: sbc's
                        // workers then hand over a line without waking this thread (not parked
                        // on the channel), and one write carries them all.
                        None => std::thread::sleep(COALESCE),
                    }
                }
                Ok(Msg::Flush(ack)) => self.flush(ack),
                Err(mpsc::RecvTimeoutError::Timeout) => self.summary(false),
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.summary(true);
                    self.sink.sync();
                    return;
                }
            }
        }
    }

    fn flush(&mut self, ack: mpsc::Sender<()>) {
        self.summary(true);
        self.sink.sync();
        let _ = ack.send(());
    }

    fn summary(&mut self, force: bool) {
        let due = self
            .gate
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take_summary(Instant::now(), force);
        if let Some(summary) = due {
            match serde_json::to_vec(&summary) {
                Ok(mut text) => {
                    text.push(b'\n');
                    self.sink.write_lines(&text);
                }
                Err(e) => tracing::error!(error = %e, "audit summary could not be serialised"),
            }
        }
    }
}

/// Decides which admission refusals are written in full (a token bucket of
/// `refusal_records_per_second`, burst of one second's worth) and counts the others by reason
/// and carrier until the summary is due. Pure: the clock comes in as `now`.
#[derive(Debug)]
pub struct RefusalGate {
    rate: u32,
    interval: Duration,
    tokens: f64,
    last: Option<Instant>,
    /// When the current summary period started (first suppressed refusal), wall and monotonic.
    period: Option<(Instant, String)>,
    counts: BTreeMap<(String, String), u64>,
}

/// One `call.refused.summary` record.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusalSummary {
    pub ts: String,
    pub event: &'static str,
    /// First suppressed refusal of the period (RFC 3339).
    pub period_start: String,
    /// Refusals counted instead of written.
    pub suppressed: u64,
    /// Counts by reason and carrier, sorted.
    pub counts: Vec<RefusalCount>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct RefusalCount {
    pub reason: String,
    pub carrier: String,
    pub count: u64,
}

/// Reason/carrier pairs kept per period; beyond it, counted under `"other"` (reasons and
/// carriers come from sbc's own fixed texts and configuration, so this is a backstop).
const MAX_SUMMARY_KEYS: usize = 256;

impl RefusalGate {
    pub fn new(rate: u32, interval: Duration) -> RefusalGate {
        RefusalGate {
            rate,
            interval,
            tokens: f64::from(rate),
            last: None,
            period: None,
            counts: BTreeMap::new(),
        }
    }

    /// True when this refusal is written in full; else it is counted for the summary.
    pub fn admit(&mut self, now: Instant, reason: &str, carrier: &str) -> bool {
        let rate = f64::from(self.rate);
        let elapsed = self
            .last
            .map_or(0.0, |l| now.saturating_duration_since(l).as_secs_f64());
        self.tokens = (self.tokens + elapsed * rate).min(rate);
        self.last = Some(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            self.count(now, reason, carrier);
            false
        }
    }

    /// Counts a refusal for the summary without writing it.
    pub fn count(&mut self, now: Instant, reason: &str, carrier: &str) {
        self.period.get_or_insert_with(|| (now, now_rfc3339()));
        let key = if self.counts.len() < MAX_SUMMARY_KEYS
            || self
                .counts
                .contains_key(&(reason.to_string(), carrier.to_string()))
        {
            (reason.to_string(), carrier.to_string())
        } else {
            ("other".to_string(), "other".to_string())
        };
        *self.counts.entry(key).or_insert(0) += 1;
    }

    /// The summary when one is due (`interval` after the period's first suppressed refusal, or
    /// at once with `force`), and a new period.
    pub fn take_summary(&mut self, now: Instant, force: bool) -> Option<RefusalSummary> {
        let (start, wall) = self.period.as_ref()?;
        if !force && now.saturating_duration_since(*start) < self.interval {
            return None;
        }
        let period_start = wall.clone();
        self.period = None;
        let counts: Vec<RefusalCount> = std::mem::take(&mut self.counts)
            .into_iter()
            .map(|((reason, carrier), count)| RefusalCount {
                reason,
                carrier,
                count,
            })
            .collect();
        Some(RefusalSummary {
            ts: now_rfc3339(),
            event: "call.refused.summary",
            period_start,
            suppressed: counts.iter().map(|c| c.count).sum(),
            counts,
        })
    }
}

/// Makes the audit file end with a complete line before sbc appends to it. A record is one
/// `write` of a whole line, so a killed process leaves no partial line; a crash of the machine
/// (or a full disk) can. Appending after such a fragment would glue the next record to it, so
/// at start the fragment after the last newline is moved to `<path>.partial` (appended, with a
/// newline, kept as evidence) and the file is cut back to its last complete line.
fn repair_partial_tail(path: &std::path::Path) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let len = f.metadata()?.len();
    if len == 0 {
        return Ok(());
    }
    // Scan back from the end for the last newline, 64 KiB at a time.
    let mut end = len;
    let mut keep = 0u64;
    let mut chunk = vec![0u8; 64 * 1024];
    'scan: while end > 0 {
        let start = end.saturating_sub(chunk.len() as u64);
        let n = (end - start) as usize;
        f.seek(SeekFrom::Start(start))?;
        f.read_exact(&mut chunk[..n])?;
        if let Some(i) = chunk[..n].iter().rposition(|&b| b == b'\n') {
            keep = start + i as u64 + 1;
            break 'scan;
        }
        end = start;
    }
    if keep == len {
        return Ok(());
    }
    let mut fragment = Vec::with_capacity((len - keep) as usize);
    f.seek(SeekFrom::Start(keep))?;
    f.read_to_end(&mut fragment)?;
    fragment.push(b'\n');
    let mut aside = path.as_os_str().to_owned();
    aside.push(".partial");
    let mut side = OpenOptions::new().create(true).append(true).open(&aside)?;
    side.write_all(&fragment)?;
    side.sync_data()?;
    f.set_len(keep)?;
    f.sync_data()?;
    tracing::warn!(
        path = %path.display(),
        bytes = fragment.len() - 1,
        moved_to = %std::path::Path::new(&aside).display(),
        "audit log ended with a partial record (a crash mid-write): moved aside, file cut back to its last complete line"
    );
    Ok(())
}

#[derive(Serialize)]
struct Line<'a> {
    ts: String,
    event: &'static str,
    #[serde(flatten)]
    record: &'a CallRecord,
}

/// Current UTC time, RFC 3339 with milliseconds.
pub fn now_rfc3339() -> String {
    let now = time::OffsetDateTime::now_utc();
    let fmt = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    now.format(&fmt)
        .unwrap_or_else(|_| now.unix_timestamp().to_string())
}

/// Masks or hashes a number per the privacy rule. `Masked` keeps a leading `+` and the last four
/// digits; `Hashed` is HMAC-SHA256 under the secret salt, hex (first 16 bytes).
pub fn protect_number(privacy: &NumberPrivacy, number: &str) -> String {
    match privacy {
        NumberPrivacy::AsIs => number.to_string(),
        NumberPrivacy::Masked => {
            let n = number.chars().count();
            number
                .chars()
                .enumerate()
                .map(|(i, c)| {
                    if i + 4 >= n || (i == 0 && c == '+') {
                        c
                    } else {
                        '*'
                    }
                })
                .collect()
        }
        NumberPrivacy::Hashed { salt } => {
            // HMAC accepts keys of any length, so `new_from_slice` cannot fail.
            let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(salt) else {
                return "hmac-error".into();
            };
            mac.update(number.as_bytes());
            let digest = mac.finalize().into_bytes();
            digest[..16].iter().map(|b| format!("{b:02x}")).collect()
        }
    }
}

/// An agent URL as records and logs may show it: without its query string and fragment (they
/// often carry tokens) and without user info (`user:password@`).
pub fn url_without_secrets(url: &str) -> String {
    let end = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..end];
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let authority_end = rest.find('/').unwrap_or(rest.len());
            let (authority, path) = rest.split_at(authority_end);
            let host = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_string(),
    }
}

/// The SIP leg's TLS parameters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SipTls {
    pub version: String,
    pub cipher: String,
    /// Key-exchange group (`X25519MLKEM768` when the hybrid post-quantum group was used).
    pub kx_group: Option<String>,
    pub sni: Option<String>,
    pub client_cert_subject: Option<String>,
    /// The carrier's certificate, kept so that admission can check it against the live
    /// configuration on every new INVITE (a reload may narrow `certificate_names`). Not written.
    #[serde(skip)]
    pub client_cert: Option<Arc<rustls_pki_types::CertificateDer<'static>>>,
}

/// The decision on the INVITE.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Decision {
    /// `accepted` or `refused`.
    pub outcome: &'static str,
    pub status: u16,
    pub reason: String,
}

/// SRTP negotiation, names only.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SrtpAudit {
    pub offered: Vec<String>,
    /// The suite the carrier uses towards us (we accepted it).
    pub chosen_inbound: Option<String>,
    /// The suite we use towards the carrier (same suite, our key).
    pub chosen_outbound: Option<String>,
}

/// The agent leg.
#[derive(Clone, Debug, Default, Serialize)]
pub struct AgentAudit {
    /// The route's target without query string, fragment or user info (see
    /// [`url_without_secrets`]).
    pub target: String,
    pub url_host: Option<String>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    /// Key-exchange group of the agent leg.
    pub kx_group: Option<String>,
    pub mtls: bool,
    /// The agent leg's TLS session was resumed (see `agent::AgentConn::resumed`): its
    /// certificates were verified when the session was first established, not on this call's
    /// handshake.
    pub tls_resumed: bool,
    pub connect_ms: Option<u64>,
}

/// Media counters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MediaAudit {
    pub rtp_in: u64,
    pub rtp_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub srtcp_in: u64,
    pub srtcp_out: u64,
    pub auth_failures: u64,
    pub replays: u64,
    pub dtmf_events: u64,
    pub agent_media_in: u64,
    pub agent_media_out: u64,
    pub agent_malformed: u64,
    /// Carrier datagrams that were not SRTP/SRTCP at all (too short, not RTP version 2, a
    /// telephone-event shorter than 4 bytes); dropped, not counted as auth failures.
    pub carrier_malformed: u64,
    /// Agent audio bytes dropped because the play-out queue was full.
    pub agent_audio_overflow_bytes: u64,
    /// Agent audio bytes dropped after a stall of the call task instead of being played late.
    pub agent_audio_late_dropped_bytes: u64,
    /// Times outbound media moved to a new carrier address (after `[media] relatch_packets`
    /// authenticated packets of the latched SSRC from it).
    pub relatches: u64,
    /// Agent `mark`s dropped (too many pending, or the name too long).
    pub agent_marks_dropped: u64,
    /// Agent `dtmf` messages dropped (too many digits pending).
    pub agent_dtmf_dropped: u64,
}

/// Everything known about one call. The same value is written at refusal, start and end, so each
/// record is self-contained.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CallRecord {
    pub call_id: String,
    /// `inbound` (the carrier called) or `outbound` (sbc placed the call through a trunk).
    pub direction: Direction,
    /// Outbound calls only: account, trunk, ring time, final SIP status.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub outbound: Option<OutboundAudit>,
    pub sip_call_id: String,
    pub carrier: String,
    pub source: String,
    pub sip_tls: SipTls,
    pub from: String,
    pub to: String,
    pub decision: Decision,
    pub srtp: SrtpAudit,
    pub agent: AgentAudit,
    pub received_at: String,
    pub answered_at: Option<String>,
    pub ended_at: Option<String>,
    pub setup_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub end_reason: Option<String>,
    pub end_detail: Option<String>,
    pub media: MediaAudit,
    /// The last transfer asked for (API `<Dial>` or the agent's `transfer` message), if any.
    pub transfer: Option<TransferAudit>,
}

/// Which side placed the call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Direction {
    #[default]
    Inbound,
    Outbound,
}

/// What only an outbound call has. The trunk leg's TLS parameters are `sip_tls` (the connection
/// sbc opened), its SRTP suites `srtp`, as for an inbound call.
#[derive(Clone, Debug, Default, Serialize)]
pub struct OutboundAudit {
    /// The API account that created the call.
    pub account: String,
    pub trunk: String,
    /// The address the INVITE went to.
    pub trunk_address: Option<String>,
    /// From the INVITE to the answer or final failure.
    pub ring_ms: Option<u64>,
    /// The INVITE's final SIP status (200 when answered).
    pub final_sip_status: Option<u16>,
    /// Twilio's status at the end (`completed`, `busy`, `no-answer`, `failed`, `canceled`).
    pub twilio_status: Option<String>,
}

/// A blind transfer (REFER) and how it ended.
#[derive(Clone, Debug, Default, Serialize)]
pub struct TransferAudit {
    /// The `Refer-To` target (`tel:+E164` or a SIP URI).
    pub to: String,
    /// `requested`, `accepted`, `completed` or `failed`.
    pub outcome: String,
    /// The REFER's or the sipfrag's SIP status (408: no final NOTIFY in time).
    pub sip_status: Option<u16>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every record says its direction; inbound is the default, outbound records add their own
    /// object, inbound records do not carry it.
    #[test]
    fn direction_is_written() {
        let v = serde_json::to_value(CallRecord::default()).unwrap();
        assert_eq!(v["direction"], "inbound");
        assert!(v.get("outbound").is_none());
        let v = serde_json::to_value(CallRecord {
            direction: Direction::Outbound,
            outbound: Some(OutboundAudit {
                trunk: "t".into(),
                final_sip_status: Some(486),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(v["direction"], "outbound");
        assert_eq!(v["outbound"]["trunk"], "t");
        assert_eq!(v["outbound"]["final_sip_status"], 486);
    }

    /// Tokens in an agent URL's query, fragment or user info never reach a record.
    #[test]
    fn agent_target_leaves_out_secrets() {
        for (url, want) in [
            ("wss://agent.example/ws?token=abc", "wss://agent.example/ws"),
            (
                "wss://agent.example:8443/a/b#frag",
                "wss://agent.example:8443/a/b",
            ),
            (
                "wss://user:pw@agent.example/ws?x=1",
                "wss://agent.example/ws",
            ),
            ("wss://agent.example?token=abc", "wss://agent.example"),
            ("wss://[2001:db8::1]:443/ws", "wss://[2001:db8::1]:443/ws"),
            ("builtin:echo", "builtin:echo"),
        ] {
            assert_eq!(url_without_secrets(url), want, "{url}");
        }
    }

    #[test]
    fn masking_keeps_plus_and_last_four() {
        assert_eq!(
            protect_number(&NumberPrivacy::Masked, "+15550001111"),
            "+*******1111"
        );
        assert_eq!(protect_number(&NumberPrivacy::Masked, "123"), "123");
        assert_eq!(protect_number(&NumberPrivacy::AsIs, "+1555"), "+1555");
    }

    #[test]
    fn hashing_depends_on_salt_and_hides_number() {
        let a = protect_number(
            &NumberPrivacy::Hashed {
                salt: b"one".to_vec(),
            },
            "+15550001111",
        );
        let b = protect_number(
            &NumberPrivacy::Hashed {
                salt: b"two".to_vec(),
            },
            "+15550001111",
        );
        assert_eq!(a.len(), 32);
        assert_ne!(a, b);
        assert!(!a.contains("5550001111"));
    }

    #[test]
    fn a_partial_last_line_is_moved_aside_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig {
            sink: AuditSink::File(path.clone()),
            fsync: false,
            number_privacy: NumberPrivacy::AsIs,
            refusal_records_per_second: 10,
            refusal_summary_interval: Duration::from_secs(60),
        };
        // A fragment longer than one scan chunk, after one complete record.
        let long = format!("{{\"event\":\"call.end\",\"x\":\"{}", "y".repeat(70_000));
        std::fs::write(&path, format!("{{\"event\":\"call.start\"}}\n{long}")).unwrap();
        let audit = Audit::open(&config, DEFAULT_BACKLOG_LIMIT).unwrap();
        audit.write("call.refused", &CallRecord::default());
        audit.flush();
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<String> = text
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["event"].to_string())
            .collect();
        assert_eq!(events, ["\"call.start\"", "\"call.refused\""]);
        let aside = std::fs::read_to_string(dir.path().join("audit.jsonl.partial")).unwrap();
        assert_eq!(aside, format!("{long}\n"));

        // A file that is only a fragment, and a clean file: nothing else changes.
        std::fs::write(&path, "{\"ev").unwrap();
        drop(Audit::open(&config, DEFAULT_BACKLOG_LIMIT).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::write(&path, "{}\n").unwrap();
        drop(Audit::open(&config, DEFAULT_BACKLOG_LIMIT).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        let aside = std::fs::read_to_string(dir.path().join("audit.jsonl.partial")).unwrap();
        assert!(aside.ends_with("{\"ev\n"), "{aside:?}");
    }

    #[test]
    fn records_are_single_lines_with_event_and_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let audit = Audit::open(
            &AuditConfig {
                sink: AuditSink::File(path.clone()),
                fsync: true,
                number_privacy: NumberPrivacy::AsIs,
                refusal_records_per_second: 10,
                refusal_summary_interval: Duration::from_secs(60),
            },
            DEFAULT_BACKLOG_LIMIT,
        )
        .unwrap();
        let rec = CallRecord {
            sip_call_id: "abc\ndef".into(),
            ..Default::default()
        };
        audit.write("call.refused", &rec);
        audit.write("call.start", &rec);
        audit.flush();
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["event"], "call.refused");
        assert_eq!(v["sip_call_id"], "abc\ndef");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }

    fn refusal(reason: &str, carrier: &str) -> CallRecord {
        CallRecord {
            carrier: carrier.into(),
            decision: Decision {
                outcome: "refused",
                status: 503,
                reason: reason.into(),
            },
            ..Default::default()
        }
    }

    #[test]
    fn refusal_gate_writes_the_rate_and_summarises_the_rest_on_a_virtual_clock() {
        let t0 = Instant::now();
        let mut gate = RefusalGate::new(5, Duration::from_secs(10));
        // A burst of 100 in the same instant: the bucket's 5, then counted.
        let written = (0..100)
            .filter(|i| gate.admit(t0, if i % 2 == 0 { "rate" } else { "capacity" }, "twilio"))
            .count();
        assert_eq!(written, 5);
        assert_eq!(gate.take_summary(t0 + Duration::from_secs(9), false), None);
        // One second later the bucket has 5 again.
        let t1 = t0 + Duration::from_secs(1);
        assert_eq!(
            (0..10).filter(|_| gate.admit(t1, "rate", "other")).count(),
            5
        );
        let s = gate
            .take_summary(t0 + Duration::from_secs(10), false)
            .expect("summary due after the interval");
        assert_eq!(s.event, "call.refused.summary");
        assert_eq!(s.suppressed, 95 + 5);
        let by: Vec<(&str, &str, u64)> = s
            .counts
            .iter()
            .map(|c| (c.reason.as_str(), c.carrier.as_str(), c.count))
            .collect();
        // The first five written were reasons rate, capacity, rate, capacity, rate.
        assert_eq!(
            by,
            [
                ("capacity", "twilio", 48),
                ("rate", "other", 5),
                ("rate", "twilio", 47)
            ]
        );
        // Nothing suppressed since: no summary, even forced.
        assert_eq!(gate.take_summary(t0 + Duration::from_secs(30), true), None);
    }

    /// A writer that blocks until released, to stand for a stalled disk.
    struct Stalled {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Stalled {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// An audit whose writer thread writes into `out` (no file, no fsync), folding refusals
    /// beyond 3 per second, with `backlog` lines allowed to wait.
    fn writer_into(out: impl Write + Send + 'static, backlog: usize) -> Audit {
        let sink = Sink {
            out: Box::new(out),
            file: None,
            fsync: false,
        };
        let config = AuditConfig {
            sink: AuditSink::Stdout,
            fsync: false,
            number_privacy: NumberPrivacy::AsIs,
            refusal_records_per_second: 3,
            refusal_summary_interval: Duration::from_secs(3600),
        };
        Audit::start(sink, &config, backlog)
    }

    #[test]
    fn call_records_are_never_dropped_while_refusals_are_folded_and_a_stall_backlogs() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let out = Arc::new(Mutex::new(Vec::new()));
        let audit = writer_into(
            Stalled {
                gate: Arc::clone(&gate),
                out: Arc::clone(&out),
            },
            8,
        );
        // The writer is stalled: 3 refusals are handed over in full, then the gate folds.
        for _ in 0..1000 {
            audit.write_admission_refusal(&refusal("carrier call rate limit", "twilio"));
        }
        assert!(!audit.backlogged());
        // Records of calls are all kept, past the backlog limit; admission sees the backlog.
        for i in 0..20 {
            let rec = CallRecord {
                sip_call_id: format!("call-{i}"),
                ..Default::default()
            };
            audit.write("call.start", &rec);
        }
        assert!(
            audit.backlogged(),
            "a stalled writer must be visible to admission"
        );
        // While backlogged, admission refusals are only counted, even within the rate.
        audit.write_admission_refusal(&refusal("audit backlog", "twilio"));
        {
            let (m, c) = &*gate;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        audit.flush();
        assert!(!audit.backlogged());
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let starts = lines.iter().filter(|v| v["event"] == "call.start").count();
        let refused = lines
            .iter()
            .filter(|v| v["event"] == "call.refused")
            .count();
        let summaries: Vec<_> = lines
            .iter()
            .filter(|v| v["event"] == "call.refused.summary")
            .collect();
        assert_eq!(starts, 20, "every call record is written");
        assert_eq!(refused, 3);
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0]["suppressed"], 997 + 1);
    }

    /// Counts the writes it is asked for; the first one blocks until released.
    struct Counting {
        gate: Arc<(Mutex<bool>, std::sync::Condvar)>,
        writes: Arc<AtomicUsize>,
        out: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Counting {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.gate;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            self.writes.fetch_add(1, Ordering::Relaxed);
            self.out.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn records_queued_behind_a_busy_writer_go_out_together_in_order() {
        let gate = Arc::new((Mutex::new(false), std::sync::Condvar::new()));
        let writes = Arc::new(AtomicUsize::new(0));
        let out = Arc::new(Mutex::new(Vec::new()));
        let audit = writer_into(
            Counting {
                gate: Arc::clone(&gate),
                writes: Arc::clone(&writes),
                out: Arc::clone(&out),
            },
            10_000,
        );
        let n = 2 * BATCH_LINES + 10;
        for i in 0..n {
            let rec = CallRecord {
                sip_call_id: format!("call-{i}"),
                ..Default::default()
            };
            audit.write("call.start", &rec);
        }
        {
            let (m, c) = &*gate;
            *m.lock().unwrap() = true;
            c.notify_all();
        }
        audit.flush();
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        let ids: Vec<String> = text
            .lines()
            .map(|l| {
                let v: serde_json::Value = serde_json::from_str(l).unwrap();
                v["sip_call_id"].as_str().unwrap().to_string()
            })
            .collect();
        let expected: Vec<String> = (0..n).map(|i| format!("call-{i}")).collect();
        assert_eq!(ids, expected, "every record, once, in order");
        // The first record was being written while the others queued: they need at most one
        // write per BATCH_LINES, not one each.
        let w = writes.load(Ordering::Relaxed);
        assert!(
            w <= 1 + n.div_ceil(BATCH_LINES),
            "{w} writes for {n} records"
        );
    }

    /// Writes to a file, then fails half-way through the write that passes `room` bytes.
    struct DiskFull {
        file: File,
        room: usize,
    }

    impl Write for DiskFull {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if self.room == 0 {
                return Err(std::io::Error::other("no space left on device"));
            }
            let n = buf.len().min(self.room);
            self.room -= n;
            self.file.write(&buf[..n])
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_batch_cut_short_keeps_its_whole_lines_and_drops_the_partial_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        std::fs::write(&path, b"{\"old\":1}\n").unwrap();
        let f = OpenOptions::new().append(true).open(&path).unwrap();
        let mut sink = Sink {
            out: Box::new(DiskFull {
                file: f.try_clone().unwrap(),
                room: 20,
            }),
            file: Some(f),
            fsync: false,
        };
        // 12 + 13 bytes: the room ends inside the second line.
        sink.write_lines(b"{\"a\":\"one\"}\n{\"b\":\"two2\"}\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"a\":\"one\"}\n"
        );
        // The next record starts on a line of its own.
        sink.out = Box::new(OpenOptions::new().append(true).open(&path).unwrap());
        sink.write_lines(b"{\"c\":3}\n");
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "{\"old\":1}\n{\"a\":\"one\"}\n{\"c\":3}\n"
        );
    }
}
