//! The agent leg: Twilio Media Streams JSON messages (see `docs` and AGENT-PROTOCOL.md).
//!
//! Outgoing messages are written as text around pre-escaped JSON strings (one per 20 ms
//! packet, so no `Value` tree); incoming ones are parsed into [`AgentMessage`].

use std::borrow::Cow;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use serde_json::value::RawValue;
use serde_json::{json, Map, Value};

use crate::StreamInfo;

/// Standard alphabet; we always write padding, and accept input with or without it.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a message from the agent was ignored.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// Not JSON, or not an object with a string `event`.
    #[error("malformed agent JSON")]
    Json,
    /// A field the event needs is missing or has the wrong type.
    #[error("agent `{event}` message without {field}")]
    MissingField {
        /// The event.
        event: &'static str,
        /// The missing field.
        field: &'static str,
    },
    /// `media.payload` is not base64.
    #[error("agent media payload is not base64")]
    Base64,
    /// A `dtmf` digit that is not 0-9, *, #, A-D.
    #[error("agent dtmf digit is not a DTMF digit")]
    BadDigit,
}

/// A message from the agent.
#[derive(Debug, PartialEq, Eq)]
pub enum AgentMessage {
    /// Mu-law audio to play to the caller.
    Media(Vec<u8>),
    /// Echo `name` once the audio before it has been played.
    Mark(String),
    /// Drop all queued audio (barge-in).
    Clear,
    /// Send a DTMF digit to the carrier.
    Dtmf {
        /// The digit.
        digit: char,
        /// Tone length, if given (`dtmf.duration` in ms).
        duration: Option<Duration>,
    },
    /// An event sbc does not act on.
    Other(String),
}

/// The top level of an agent message: the event and, unparsed, the objects an event may need.
/// Parsed into borrowed fields rather than a `Value` tree: a `media` message arrives every 20 ms
/// per call, and the tree cost a map, a `String` per key and a copy of the payload (7 % of the
/// call's instructions under callgrind, issue 16). Other fields are skipped; an object that
/// belongs to another event is never looked at, so its shape cannot refuse the message.
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    event: Cow<'a, str>,
    #[serde(borrow, default)]
    media: Option<&'a RawValue>,
    #[serde(borrow, default)]
    mark: Option<&'a RawValue>,
    #[serde(borrow, default)]
    dtmf: Option<&'a RawValue>,
}

#[derive(serde::Deserialize)]
struct MediaBody<'a> {
    #[serde(borrow)]
    payload: Cow<'a, str>,
}

#[derive(serde::Deserialize)]
struct MarkBody<'a> {
    #[serde(borrow)]
    name: Cow<'a, str>,
}

/// `text` as a JSON object of shape `T`; `None` for anything else. serde's derived structs also
/// accept a JSON array (fields by position), which no agent message is.
fn object<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Option<T> {
    if !text.trim_start().starts_with('{') {
        return None;
    }
    serde_json::from_str(text).ok()
}

/// The object an event needs, of shape `T`; a missing one, or one of another shape, is
/// `MissingField`.
fn member<'a, T: serde::Deserialize<'a>>(
    raw: Option<&'a RawValue>,
    event: &'static str,
    field: &'static str,
) -> Result<T, AgentError> {
    raw.and_then(|r| object(r.get()))
        .ok_or(AgentError::MissingField { event, field })
}

/// Parses one text frame from the agent. A message that repeats a key is refused as malformed
/// (RFC 8259 §4 leaves its meaning to the receiver).
pub fn parse_agent_message(text: &str) -> Result<AgentMessage, AgentError> {
    let env: Envelope<'_> = object(text).ok_or(AgentError::Json)?;
    match &*env.event {
        "media" => {
            let body: MediaBody<'_> = member(env.media, "media", "media.payload")?;
            B64_LENIENT
                .decode(body.payload.as_bytes())
                .map(AgentMessage::Media)
                .map_err(|_| AgentError::Base64)
        }
        "mark" => {
            let body: MarkBody<'_> = member(env.mark, "mark", "mark.name")?;
            Ok(AgentMessage::Mark(body.name.into_owned()))
        }
        "clear" => Ok(AgentMessage::Clear),
        "dtmf" => {
            // Rare: the tree is fine here, and `duration` may be a number or a string.
            let d: Value = env
                .dtmf
                .and_then(|d| serde_json::from_str(d.get()).ok())
                .filter(|d: &Value| !d.is_null())
                .ok_or(AgentError::MissingField {
                    event: "dtmf",
                    field: "dtmf",
                })?;
            let digit = d
                .get("digit")
                .and_then(Value::as_str)
                .ok_or(AgentError::MissingField {
                    event: "dtmf",
                    field: "dtmf.digit",
                })?;
            let mut chars = digit.chars();
            let digit = match (chars.next(), chars.next()) {
                (Some(c), None) if crate::dtmf::digit_to_event(c).is_some() => {
                    c.to_ascii_uppercase()
                }
                _ => return Err(AgentError::BadDigit),
            };
            let duration = d
                .get("duration")
                .and_then(|x| {
                    x.as_u64()
                        .or_else(|| x.as_str().and_then(|s| s.parse().ok()))
                })
                .map(Duration::from_millis);
            Ok(AgentMessage::Dtmf { digit, duration })
        }
        other => Ok(AgentMessage::Other(other.to_owned())),
    }
}

/// The target of an agent's transfer request, an sbc extension message
/// `{"event":"transfer","streamSid":…,"transfer":{"to":"tel:+1…"}}` (`docs/api.md`); `None`
/// for any other message. The call task acts on it (the bridge ignores the event).
pub fn transfer_request(text: &str) -> Option<String> {
    // Media frames are most of the traffic: only parse what can be a transfer.
    if !text.contains("transfer") {
        return None;
    }
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("event")?.as_str()? != "transfer" {
        return None;
    }
    let to = v.get("transfer")?.get("to")?.as_str()?;
    (!to.is_empty() && to.len() <= 256).then(|| to.to_owned())
}

/// The answer to a transfer (sbc extension message, `docs/api.md`):
/// `{"event":"transfer","streamSid":…,"transfer":{"to":…,"status":"completed"|"failed","sipStatus":486}}`.
pub fn transfer_result(
    stream_sid: &str,
    to: &str,
    status: &str,
    sip_status: Option<u16>,
) -> String {
    serde_json::json!({
        "event": "transfer",
        "streamSid": stream_sid,
        "transfer": { "to": to, "status": status, "sipStatus": sip_status },
    })
    .to_string()
}

/// Writes the messages sbc sends to the agent, numbering them (`sequenceNumber` from 1; the
/// `connected` message has none, as with Twilio).
#[derive(Debug)]
pub struct AgentWriter {
    /// `streamSid` as a JSON string literal.
    sid: String,
    seq: u64,
    chunk: u64,
}

impl AgentWriter {
    /// A writer for one stream.
    pub fn new(stream_sid: &str) -> Self {
        Self {
            sid: Value::from(stream_sid).to_string(),
            seq: 0,
            chunk: 0,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// `connected`.
    pub fn connected(&self) -> String {
        r#"{"event":"connected","protocol":"Call","version":"1.0.0"}"#.to_owned()
    }

    /// `start`, with both spellings of caller and callee in `customParameters`.
    pub fn start(&mut self, info: &StreamInfo) -> String {
        let mut params = Map::new();
        for (k, v) in &info.custom {
            params.insert(k.clone(), Value::from(v.as_str()));
        }
        // The built-in names win over passthrough headers of the same name.
        for (k, v) in [
            ("from", &info.from),
            ("to", &info.to),
            ("from_number", &info.from),
            ("to_number", &info.to),
            ("carrier", &info.carrier),
        ] {
            params.insert(k.to_owned(), Value::from(v.as_str()));
        }
        json!({
            "event": "start",
            "sequenceNumber": self.next_seq().to_string(),
            "streamSid": info.stream_sid,
            "start": {
                "streamSid": info.stream_sid,
                "accountSid": info.account_sid,
                "callSid": info.call_sid,
                "tracks": ["inbound", "outbound"],
                "customParameters": params,
                "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            },
        })
        .to_string()
    }

    /// `media` with 20 ms of inbound mu-law audio; `timestamp_ms` since the stream started.
    ///
    /// One allocation of exactly the message's length (one per 20 ms packet; `format!` with a
    /// separate base64 `String` took two and grew its output several times, and a `String`
    /// whose capacity exceeds its length costs the WebSocket layer one more when it becomes
    /// `Bytes`).
    pub fn media(&mut self, timestamp_ms: u64, ulaw: &[u8]) -> String {
        self.chunk += 1;
        let seq = self.next_seq();
        const PARTS: [&str; 5] = [
            r#"{"event":"media","sequenceNumber":""#,
            r#"","streamSid":"#,
            r#","media":{"track":"inbound","chunk":""#,
            r#"","timestamp":""#,
            r#"","payload":""#,
        ];
        const END: &str = r#""}}"#;
        let len = PARTS.iter().map(|p| p.len()).sum::<usize>()
            + END.len()
            + decimal_len(seq)
            + self.sid.len()
            + decimal_len(self.chunk)
            + decimal_len(timestamp_ms)
            + base64::encoded_len(ulaw.len(), true).unwrap_or(0);
        let mut out = String::with_capacity(len);
        let mut num = [0u8; 20];
        out.push_str(PARTS[0]);
        out.push_str(decimal(seq, &mut num));
        out.push_str(PARTS[1]);
        out.push_str(&self.sid);
        out.push_str(PARTS[2]);
        out.push_str(decimal(self.chunk, &mut num));
        out.push_str(PARTS[3]);
        out.push_str(decimal(timestamp_ms, &mut num));
        out.push_str(PARTS[4]);
        base64::engine::general_purpose::STANDARD.encode_string(ulaw, &mut out);
        out.push_str(END);
        out
    }

    /// `dtmf` from the caller.
    pub fn dtmf(&mut self, digit: char) -> String {
        let seq = self.next_seq();
        format!(
            r#"{{"event":"dtmf","streamSid":{},"sequenceNumber":"{seq}","dtmf":{{"track":"inbound_track","digit":"{digit}"}}}}"#,
            self.sid
        )
    }

    /// `mark` echo.
    pub fn mark(&mut self, name: &str) -> String {
        let seq = self.next_seq();
        format!(
            r#"{{"event":"mark","sequenceNumber":"{seq}","streamSid":{},"mark":{{"name":{}}}}}"#,
            self.sid,
            Value::from(name)
        )
    }

    /// `stop`.
    pub fn stop(&mut self, info: &StreamInfo) -> String {
        json!({
            "event": "stop",
            "sequenceNumber": self.next_seq().to_string(),
            "streamSid": info.stream_sid,
            "stop": {"accountSid": info.account_sid, "callSid": info.call_sid},
        })
        .to_string()
    }
}

/// The `builtin:echo` agent: given a message sbc sent to the agent, the agent's reply, if any.
/// Inbound `media` comes back as agent `media` with the same payload; anything else gets none.
pub fn echo_agent_reply(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("event")?.as_str()? != "media" {
        return None;
    }
    let payload = v.get("media")?.get("payload")?.as_str()?;
    let sid = v.get("streamSid").cloned().unwrap_or(Value::Null);
    Some(json!({"event": "media", "streamSid": sid, "media": {"payload": payload}}).to_string())
}

/// Digits of `n` in decimal.
fn decimal_len(n: u64) -> usize {
    n.checked_ilog10().map_or(1, |l| l as usize + 1)
}

/// `n` in decimal, written into `buf` (20 bytes hold any `u64`).
fn decimal(mut n: u64, buf: &mut [u8; 20]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buf[i..]).unwrap_or("0")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_message_is_exactly_sized_and_matches_the_format() {
        for (sid, ts, n) in [
            ("MZ1", 0u64, 1usize),
            ("MZ\"odd\\sid", 9, 10),
            ("MZ0123456789abcdef", 10, 99),
            ("M", u64::MAX, 1000),
        ] {
            let mut w = AgentWriter::new(sid);
            let ulaw: Vec<u8> = (0..n).map(|i| (i * 7) as u8).collect();
            for _ in 0..n {
                let msg = w.media(ts, &ulaw);
                assert_eq!(msg.len(), msg.capacity(), "{msg}");
                let expected = format!(
                    r#"{{"event":"media","sequenceNumber":"{}","streamSid":{},"media":{{"track":"inbound","chunk":"{}","timestamp":"{ts}","payload":"{}"}}}}"#,
                    w.seq,
                    Value::from(sid),
                    w.chunk,
                    base64::engine::general_purpose::STANDARD.encode(&ulaw)
                );
                assert_eq!(msg, expected);
                let v: Value = serde_json::from_str(&msg).unwrap();
                assert_eq!(v["streamSid"], sid);
            }
        }
        assert_eq!(decimal_len(0), 1);
        assert_eq!(decimal_len(9), 1);
        assert_eq!(decimal_len(10), 2);
        assert_eq!(decimal_len(u64::MAX), 20);
        assert_eq!(decimal(u64::MAX, &mut [0; 20]), u64::MAX.to_string());
        assert_eq!(decimal(0, &mut [0; 20]), "0");
    }

    #[test]
    fn transfer_extension_messages() {
        assert_eq!(
            transfer_request(
                r#"{"event":"transfer","streamSid":"MZ1","transfer":{"to":"tel:+15550009999"}}"#
            ),
            Some("tel:+15550009999".into())
        );
        assert_eq!(
            transfer_request(r#"{"event":"media","media":{"payload":"transfer"}}"#),
            None
        );
        assert_eq!(
            transfer_request(r#"{"event":"transfer","transfer":{}}"#),
            None
        );
        assert_eq!(transfer_request("transfer{"), None);
        let v: Value =
            serde_json::from_str(&transfer_result("MZ1", "tel:+1", "failed", Some(486))).unwrap();
        assert_eq!(v["transfer"]["sipStatus"], 486);
        assert_eq!(v["streamSid"], "MZ1");
    }

    #[test]
    fn parses_agent_messages() {
        let m = parse_agent_message(
            r#"{"event":"media","streamSid":"MZ1","media":{"payload":"//8="}}"#,
        )
        .unwrap();
        assert_eq!(m, AgentMessage::Media(vec![0xff, 0xff]));
        // Missing padding is tolerated.
        assert_eq!(
            parse_agent_message(r#"{"event":"media","media":{"payload":"//8"}}"#).unwrap(),
            AgentMessage::Media(vec![0xff, 0xff])
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"mark","mark":{"name":"m1"}}"#).unwrap(),
            AgentMessage::Mark("m1".into())
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"clear","streamSid":"x"}"#).unwrap(),
            AgentMessage::Clear
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"dtmf","dtmf":{"digit":"5"}}"#).unwrap(),
            AgentMessage::Dtmf {
                digit: '5',
                duration: None
            }
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"dtmf","dtmf":{"digit":"b","duration":250}}"#).unwrap(),
            AgentMessage::Dtmf {
                digit: 'B',
                duration: Some(Duration::from_millis(250))
            }
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"foo"}"#).unwrap(),
            AgentMessage::Other("foo".into())
        );
    }

    #[test]
    fn escaped_strings_and_foreign_fields_parse_as_before() {
        // JSON may escape '/' and any character; the payload and mark name are unescaped.
        assert_eq!(
            parse_agent_message(r#"{"event":"media","media":{"payload":"\/\/8\u003d"}}"#).unwrap(),
            AgentMessage::Media(vec![0xff, 0xff])
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"mark","mark":{"name":"a\"b\u00e9"}}"#).unwrap(),
            AgentMessage::Mark("a\"bé".into())
        );
        // Whitespace, fields in any order, extra fields and objects of other events (of any
        // shape) change nothing.
        assert_eq!(
            parse_agent_message(
                " {\"media\": {\"track\":\"outbound\", \"payload\": \"//8=\", \"chunk\": 3},\n \"mark\": 7, \"sequenceNumber\":\"4\", \"event\" : \"media\"}"
            )
            .unwrap(),
            AgentMessage::Media(vec![0xff, 0xff])
        );
        assert_eq!(
            parse_agent_message(r#"{"event":"clear","media":"not an object","dtmf":[1]}"#).unwrap(),
            AgentMessage::Clear
        );
        assert_eq!(
            parse_agent_message(r##"{"event":"dtmf","dtmf":{"digit":"#","duration":"300"}}"##)
                .unwrap(),
            AgentMessage::Dtmf {
                digit: '#',
                duration: Some(Duration::from_millis(300))
            }
        );
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "not json",
            "[1,2]",
            r#"{"event":5}"#,
            r#"{"event":"media"}"#,
            r#"{"event":"media","media":{"payload":"%%%"}}"#,
            r#"{"event":"mark","mark":{}}"#,
            r#"{"event":"dtmf","dtmf":{"digit":"55"}}"#,
            r#"{"event":"dtmf","dtmf":{"digit":"x"}}"#,
            r#"{"event":"dtmf"}"#,
            r#"{"event":"dtmf","dtmf":null}"#,
            // Arrays are not objects, even where serde's derived structs would take them.
            r#"["media",{"payload":"//8="}]"#,
            r#"{"event":"media","media":["//8="]}"#,
            r#"{"event":"mark","mark":["m1"]}"#,
            r#"{"event":"media","event":"media","media":{"payload":"//8="}}"#,
            r#"{"event":"media","media":{"payload":5}}"#,
        ] {
            assert!(parse_agent_message(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn writes_twilio_shapes() {
        let info = StreamInfo {
            stream_sid: "MZ\"1".into(),
            call_sid: "CA1".into(),
            account_sid: "AC1".into(),
            from: "+15550100".into(),
            to: "+15550101".into(),
            carrier: "twilio".into(),
            custom: vec![
                ("X-Foo".into(), "bar".into()),
                ("from".into(), "spoof".into()),
            ],
        };
        let mut w = AgentWriter::new(&info.stream_sid);
        let c: Value = serde_json::from_str(&w.connected()).unwrap();
        assert_eq!(c["event"], "connected");
        assert!(c.get("sequenceNumber").is_none());
        let s: Value = serde_json::from_str(&w.start(&info)).unwrap();
        assert_eq!(s["sequenceNumber"], "1");
        assert_eq!(s["start"]["callSid"], "CA1");
        assert_eq!(s["start"]["streamSid"], "MZ\"1");
        assert_eq!(s["start"]["tracks"], json!(["inbound", "outbound"]));
        assert_eq!(s["start"]["customParameters"]["from"], "+15550100");
        assert_eq!(s["start"]["customParameters"]["to_number"], "+15550101");
        assert_eq!(s["start"]["customParameters"]["X-Foo"], "bar");
        assert_eq!(s["start"]["mediaFormat"]["encoding"], "audio/x-mulaw");
        let m: Value = serde_json::from_str(&w.media(40, &[0xff; 160])).unwrap();
        assert_eq!(m["sequenceNumber"], "2");
        assert_eq!(m["streamSid"], "MZ\"1");
        assert_eq!(m["media"]["chunk"], "1");
        assert_eq!(m["media"]["timestamp"], "40");
        assert_eq!(m["media"]["track"], "inbound");
        let p = m["media"]["payload"].as_str().unwrap();
        assert_eq!(p.len(), 216); // 160 bytes -> 214 chars + "=="
        assert!(p.ends_with("=="));
        let d: Value = serde_json::from_str(&w.dtmf('#')).unwrap();
        assert_eq!(d["dtmf"], json!({"track": "inbound_track", "digit": "#"}));
        let k: Value = serde_json::from_str(&w.mark("a\"b")).unwrap();
        assert_eq!(k["mark"]["name"], "a\"b");
        let st: Value = serde_json::from_str(&w.stop(&info)).unwrap();
        assert_eq!(st["stop"], json!({"accountSid": "AC1", "callSid": "CA1"}));
        assert_eq!(st["sequenceNumber"], "5");
    }

    #[test]
    fn echo_agent() {
        let mut w = AgentWriter::new("MZ1");
        let media = w.media(0, &[1, 2, 3]);
        let reply = echo_agent_reply(&media).unwrap();
        assert_eq!(
            parse_agent_message(&reply).unwrap(),
            AgentMessage::Media(vec![1, 2, 3])
        );
        let r: Value = serde_json::from_str(&reply).unwrap();
        assert_eq!(r["streamSid"], "MZ1");
        assert_eq!(echo_agent_reply(&w.connected()), None);
        assert_eq!(echo_agent_reply(&w.start(&StreamInfo::default())), None);
        assert_eq!(echo_agent_reply("garbage"), None);
    }
}
