//! One audit record per call event, as JSON Lines: `call.refused` for every refused INVITE,
//! `call.start` when a call is answered, `call.end` when it ends. Each record is written and
//! flushed as it happens (optionally fsynced), so a crash loses at most the end record of calls in
//! progress. A record is built in memory and written with one `write_all`, so a crash cannot leave
//! a partial line from a record that was complete.
//!
//! No field ever holds key material: the record types have no field that could take a key, and
//! `interop-tests` greps a real call's records for the keys.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::{Arc, Mutex};

use hmac::{Hmac, Mac};
use serde::Serialize;
use sha2::Sha256;

use crate::config::{AuditConfig, AuditSink, NumberPrivacy};

/// The audit sink.
pub struct Audit {
    out: Mutex<Box<dyn Write + Send>>,
    file: Option<File>,
    fsync: bool,
    privacy: NumberPrivacy,
}

/// Errors opening the audit file.
#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    pub path: String,
    pub source: std::io::Error,
}

impl Audit {
    pub fn open(config: &AuditConfig) -> Result<Audit, AuditError> {
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
        Ok(Audit {
            out: Mutex::new(out),
            file,
            fsync: config.fsync,
            privacy: config.number_privacy.clone(),
        })
    }

    /// Applies the configured privacy rule to a phone number or SIP user.
    pub fn number(&self, number: &str) -> String {
        protect_number(&self.privacy, number)
    }

    /// Writes one record as a single line.
    pub fn write(&self, event: &'static str, record: &CallRecord) {
        let line = Line {
            ts: now_rfc3339(),
            event,
            record,
        };
        let mut text = match serde_json::to_vec(&line) {
            Ok(t) => t,
            Err(e) => {
                tracing::error!(error = %e, "audit record could not be serialised");
                return;
            }
        };
        text.push(b'\n');
        // The lock is only poisoned if a writer panicked mid-write; keep writing regardless.
        let mut out = self.out.lock().unwrap_or_else(|p| p.into_inner());
        // sbc is the only writer (append mode), so the length before the write is where this
        // record starts: a write that fails half-way (disk full) is cut back to it, so that the
        // next record does not continue a partial line.
        let start = self
            .file
            .as_ref()
            .and_then(|f| f.metadata().ok())
            .map(|m| m.len());
        let result = out.write_all(&text).and_then(|()| out.flush());
        if let Err(e) = result {
            tracing::error!(error = %e, "audit record could not be written");
            if let (Some(f), Some(start)) = (&self.file, start) {
                if let Err(e) = f.set_len(start) {
                    tracing::error!(error = %e, "audit log could not be cut back after a failed write");
                }
            }
            return;
        }
        if self.fsync {
            if let Some(f) = &self.file {
                if let Err(e) = f.sync_data() {
                    tracing::error!(error = %e, "audit fsync failed");
                }
            }
        }
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

/// The SIP leg's TLS parameters.
#[derive(Clone, Debug, Default, Serialize)]
pub struct SipTls {
    pub version: String,
    pub cipher: String,
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
    pub target: String,
    pub url_host: Option<String>,
    pub tls_version: Option<String>,
    pub cipher: Option<String>,
    pub mtls: bool,
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
}

/// Everything known about one call. The same value is written at refusal, start and end, so each
/// record is self-contained.
#[derive(Clone, Debug, Default, Serialize)]
pub struct CallRecord {
    pub call_id: String,
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        };
        // A fragment longer than one scan chunk, after one complete record.
        let long = format!("{{\"event\":\"call.end\",\"x\":\"{}", "y".repeat(70_000));
        std::fs::write(&path, format!("{{\"event\":\"call.start\"}}\n{long}")).unwrap();
        let audit = Audit::open(&config).unwrap();
        audit.write("call.refused", &CallRecord::default());
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
        drop(Audit::open(&config).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        std::fs::write(&path, "{}\n").unwrap();
        drop(Audit::open(&config).unwrap());
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{}\n");
        let aside = std::fs::read_to_string(dir.path().join("audit.jsonl.partial")).unwrap();
        assert!(aside.ends_with("{\"ev\n"), "{aside:?}");
    }

    #[test]
    fn records_are_single_lines_with_event_and_timestamp() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/audit.jsonl");
        let audit = Audit::open(&AuditConfig {
            sink: AuditSink::File(path.clone()),
            fsync: true,
            number_privacy: NumberPrivacy::AsIs,
        })
        .unwrap();
        let rec = CallRecord {
            sip_call_id: "abc\ndef".into(),
            ..Default::default()
        };
        audit.write("call.refused", &rec);
        audit.write("call.start", &rec);
        let text = std::fs::read_to_string(path).unwrap();
        let lines: Vec<_> = text.lines().collect();
        assert_eq!(lines.len(), 2);
        let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        assert_eq!(v["event"], "call.refused");
        assert_eq!(v["sip_call_id"], "abc\ndef");
        assert!(v["ts"].as_str().unwrap().ends_with('Z'));
    }
}
