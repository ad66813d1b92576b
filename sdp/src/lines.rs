//! SDP lines (RFC 8866 §5): parsed one at a time after dispatching on the type letter, kept with
//! their original text so that a description writes back byte-exactly.

use std::fmt;
use std::net::IpAddr;

use nom::bytes::complete::take_while1;
use nom::character::complete::{char, digit1, space1};
use nom::combinator::{map_res, opt, rest};
use nom::multi::many0;
use nom::sequence::preceded;
use nom::IResult;
use zeroize::Zeroize;

use crate::crypto::{parse_crypto, CryptoAttribute};

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

/// How a line ended in the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LineEnding {
    Crlf,
    Lf,
    /// The last line, without a line break.
    None,
}

impl LineEnding {
    fn as_str(self) -> &'static str {
        match self {
            LineEnding::Crlf => "\r\n",
            LineEnding::Lf => "\n",
            LineEnding::None => "",
        }
    }
}

/// SDP media direction (RFC 8866 §6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    SendRecv,
    SendOnly,
    RecvOnly,
    Inactive,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::SendRecv => "sendrecv",
            Direction::SendOnly => "sendonly",
            Direction::RecvOnly => "recvonly",
            Direction::Inactive => "inactive",
        }
    }
}

/// `o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>` (RFC 8866 §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    pub username: String,
    pub session_id: String,
    pub session_version: String,
    pub nettype: String,
    pub addrtype: String,
    pub address: String,
}

/// `c=<nettype> <addrtype> <connection-address>` (RFC 8866 §5.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub nettype: String,
    pub addrtype: String,
    /// As written (may carry `/ttl` for multicast).
    pub address: String,
}

impl Connection {
    /// The unicast IP address, if the address is one.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

/// `m=<media> <port>[/<count>] <proto> <fmt> ...` (RFC 8866 §5.14).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MediaLine {
    pub media: String,
    pub port: u16,
    pub port_count: Option<u16>,
    pub proto: String,
    pub formats: Vec<String>,
}

/// `a=` attributes sbc understands; everything else is kept as `Other`.
#[derive(Clone, PartialEq, Eq)]
pub enum Attribute {
    /// `a=rtpmap:<pt> <encoding>/<clock>[/<channels>]` (RFC 8866 §6.6).
    Rtpmap {
        payload_type: u8,
        encoding: String,
        clock_rate: u32,
        channels: Option<u32>,
    },
    /// `a=fmtp:<format> <params>` (RFC 8866 §6.15).
    Fmtp {
        format: String,
        params: String,
    },
    /// `a=ptime:<ms>` (RFC 8866 §6.4).
    Ptime(u32),
    /// `a=maxptime:<ms>` (RFC 8866 §6.5).
    MaxPtime(u32),
    Direction(Direction),
    /// `a=rtcp:<port> [<nettype> <addrtype> <address>]` (RFC 3605).
    Rtcp {
        port: u16,
        address: Option<String>,
    },
    /// `a=rtcp-mux` (RFC 5761).
    RtcpMux,
    /// `a=ssrc:<id> <attribute>[:<value>]` (RFC 5576), the rest kept as written.
    Ssrc {
        id: u32,
        rest: String,
    },
    /// `a=crypto:...` (RFC 4568).
    Crypto(CryptoAttribute),
    /// Any other attribute: name and optional value, as written.
    Other {
        name: String,
        value: Option<String>,
    },
}

/// One line: its type letter, parsed value and original text.
#[derive(Clone, PartialEq, Eq)]
pub enum Line {
    Version(u32),
    Origin(Origin),
    SessionName(String),
    Connection(Connection),
    Media(MediaLine),
    Attribute(Attribute),
    /// `i u e p b t r z k` lines and unknown letters: type letter and value as written.
    Other {
        kind: char,
        value: String,
    },
}

/// A parsed session description: the session-level lines and the media sections, each line with
/// its original text, so that `to_string()` gives back the input.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SessionDescription {
    /// Session-level lines (before the first `m=`).
    pub session: Vec<RawLine>,
    /// Media sections: each starts with its `m=` line.
    pub media: Vec<Vec<RawLine>>,
}

/// A line with the exact text it was parsed from (or written as).
#[derive(Clone, PartialEq, Eq)]
pub struct RawLine {
    pub line: Line,
    pub text: String,
    pub ending: LineEnding,
}

/// Key material may sit in `a=crypto` lines (RFC 4568) and `k=` lines (RFC 8866 §5.12), also
/// when they did not parse: their text never reaches `Debug` and is zeroized on drop.
fn is_sensitive(text: &str) -> bool {
    let b = text.as_bytes();
    b.starts_with(b"k=") || (b.len() >= 8 && b[..8].eq_ignore_ascii_case(b"a=crypto"))
}

impl fmt::Debug for RawLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("RawLine");
        d.field("line", &self.line);
        if is_sensitive(&self.text) {
            d.field("text", &format_args!("<redacted>"));
        } else {
            d.field("text", &self.text);
        }
        d.field("ending", &self.ending).finish()
    }
}

impl Drop for RawLine {
    fn drop(&mut self) {
        if is_sensitive(&self.text) {
            self.text.zeroize();
        }
    }
}

impl fmt::Debug for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Rtpmap {
                payload_type,
                encoding,
                clock_rate,
                channels,
            } => f
                .debug_struct("Rtpmap")
                .field("payload_type", payload_type)
                .field("encoding", encoding)
                .field("clock_rate", clock_rate)
                .field("channels", channels)
                .finish(),
            Attribute::Fmtp { format, params } => f
                .debug_struct("Fmtp")
                .field("format", format)
                .field("params", params)
                .finish(),
            Attribute::Ptime(p) => f.debug_tuple("Ptime").field(p).finish(),
            Attribute::MaxPtime(p) => f.debug_tuple("MaxPtime").field(p).finish(),
            Attribute::Direction(d) => f.debug_tuple("Direction").field(d).finish(),
            Attribute::Rtcp { port, address } => f
                .debug_struct("Rtcp")
                .field("port", port)
                .field("address", address)
                .finish(),
            Attribute::RtcpMux => f.write_str("RtcpMux"),
            Attribute::Ssrc { id, rest } => f
                .debug_struct("Ssrc")
                .field("id", id)
                .field("rest", rest)
                .finish(),
            // `CryptoAttribute`'s Debug prints keys as `<redacted>` (`KeySalt`).
            Attribute::Crypto(c) => f.debug_tuple("Crypto").field(c).finish(),
            Attribute::Other { name, value } => {
                let mut d = f.debug_struct("Other");
                d.field("name", name);
                if name.eq_ignore_ascii_case("crypto") && value.is_some() {
                    d.field("value", &format_args!("<redacted>"));
                } else {
                    d.field("value", value);
                }
                d.finish()
            }
        }
    }
}

impl fmt::Debug for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Version(v) => f.debug_tuple("Version").field(v).finish(),
            Line::Origin(o) => f.debug_tuple("Origin").field(o).finish(),
            Line::SessionName(s) => f.debug_tuple("SessionName").field(s).finish(),
            Line::Connection(c) => f.debug_tuple("Connection").field(c).finish(),
            Line::Media(m) => f.debug_tuple("Media").field(m).finish(),
            Line::Attribute(a) => f.debug_tuple("Attribute").field(a).finish(),
            Line::Other { kind, value } => {
                let mut d = f.debug_struct("Other");
                d.field("kind", kind);
                if *kind == 'k' {
                    d.field("value", &format_args!("<redacted>"));
                } else {
                    d.field("value", value);
                }
                d.finish()
            }
        }
    }
}

impl RawLine {
    /// A new line whose text is the canonical form of `line`, ending in CRLF.
    pub fn new(line: Line) -> RawLine {
        RawLine {
            text: line.to_string(),
            line,
            ending: LineEnding::Crlf,
        }
    }
}

impl SessionDescription {
    /// Parses an SDP body (CRLF or bare LF line endings). Unknown lines and attributes are kept.
    pub fn parse(input: &[u8]) -> Result<Self, ParseError> {
        let mut session = Vec::new();
        let mut media: Vec<Vec<RawLine>> = Vec::new();
        let mut offset = 0;
        let mut number = 0;
        while offset < input.len() {
            number += 1;
            let rest = &input[offset..];
            let (body, ending, consumed) = match rest.iter().position(|&b| b == b'\n') {
                Some(nl) if nl > 0 && rest[nl - 1] == b'\r' => {
                    (&rest[..nl - 1], LineEnding::Crlf, nl + 1)
                }
                Some(nl) => (&rest[..nl], LineEnding::Lf, nl + 1),
                None => (rest, LineEnding::None, rest.len()),
            };
            let err = |kind: String| ParseError {
                line: number,
                offset,
                kind,
            };
            let text = std::str::from_utf8(body).map_err(|_| err("not UTF-8".into()))?;
            let line = parse_line(text).map_err(err)?;
            // RFC 8866 §5.1: "v=0"; there is no other version. Parsed leniently (it is a
            // number), refused here so that the error carries the line's position.
            if let Line::Version(v) = line {
                if v != 0 {
                    return Err(err(format!(
                        "unsupported SDP version {v} (RFC 8866 §5.1 defines only v=0)"
                    )));
                }
            }
            let raw = RawLine {
                line,
                text: text.to_string(),
                ending,
            };
            if matches!(raw.line, Line::Media(_)) {
                media.push(vec![raw]);
            } else if let Some(m) = media.last_mut() {
                m.push(raw);
            } else {
                session.push(raw);
            }
            offset += consumed;
        }
        if !matches!(session.first().map(|l| &l.line), Some(Line::Version(_))) {
            return Err(ParseError {
                line: 1,
                offset: 0,
                kind: "an SDP body starts with v=".into(),
            });
        }
        Ok(SessionDescription { session, media })
    }

    /// All lines in order.
    pub fn lines(&self) -> impl Iterator<Item = &RawLine> {
        self.session.iter().chain(self.media.iter().flatten())
    }

    /// The session-level connection line.
    pub fn connection(&self) -> Option<&Connection> {
        self.session.iter().find_map(|l| match &l.line {
            Line::Connection(c) => Some(c),
            _ => None,
        })
    }
}

impl fmt::Display for SessionDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for l in self.lines() {
            f.write_str(&l.text)?;
            f.write_str(l.ending.as_str())?;
        }
        Ok(())
    }
}

type PResult<'a, T> = IResult<&'a str, T>;

fn token(i: &str) -> PResult<'_, &str> {
    take_while1(|c: char| !c.is_whitespace())(i)
}

fn number<T: std::str::FromStr>(i: &str) -> PResult<'_, T> {
    map_res(digit1, str::parse::<T>)(i)
}

/// Dispatches on the type letter (RFC 8866 §5: `<type>=<value>`), then runs that line's parser.
fn parse_line(text: &str) -> Result<Line, String> {
    let mut chars = text.chars();
    let kind = chars.next().ok_or("empty line")?;
    if chars.next() != Some('=') || !kind.is_ascii_alphabetic() {
        return Err(format!(
            "expected <letter>=, found {:?}",
            text.chars().take(8).collect::<String>()
        ));
    }
    let value = &text[2..];
    let full = |r: PResult<'_, Line>, what: &str| -> Result<Line, String> {
        match r {
            Ok(("", l)) => Ok(l),
            Ok((left, _)) => Err(format!("unexpected {left:?} at the end of the {what} line")),
            Err(_) => Err(format!("malformed {what} line")),
        }
    };
    // Trailing blanks after the last field are tolerated (the text is kept as written anyway).
    let fields = value.trim_end_matches([' ', '\t']);
    match kind {
        'v' => full(
            number::<u32>(fields).map(|(i, v)| (i, Line::Version(v))),
            "v=",
        ),
        'o' => full(origin(fields), "o="),
        's' => Ok(Line::SessionName(value.to_string())),
        'c' => full(connection(fields), "c="),
        'm' => full(media_line(fields), "m="),
        'a' => Ok(Line::Attribute(attribute(value))),
        other => Ok(Line::Other {
            kind: other,
            value: value.to_string(),
        }),
    }
}

/// RFC 8866 §5.2 origin-field.
fn origin(i: &str) -> PResult<'_, Line> {
    let (i, username) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, session_id) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, session_version) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, nettype) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, addrtype) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, address) = token(i)?;
    Ok((
        i,
        Line::Origin(Origin {
            username: username.into(),
            session_id: session_id.into(),
            session_version: session_version.into(),
            nettype: nettype.into(),
            addrtype: addrtype.into(),
            address: address.into(),
        }),
    ))
}

/// RFC 8866 §5.7 connection-field.
fn connection(i: &str) -> PResult<'_, Line> {
    let (i, nettype) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, addrtype) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, address) = token(i)?;
    Ok((
        i,
        Line::Connection(Connection {
            nettype: nettype.into(),
            addrtype: addrtype.into(),
            address: address.into(),
        }),
    ))
}

/// RFC 8866 §5.14 media-field: `<media> <port>[/<number of ports>] <proto> 1*(SP <fmt>)`.
fn media_line(i: &str) -> PResult<'_, Line> {
    let (i, media) = token(i)?;
    let (i, _) = space1(i)?;
    let (i, port) = number::<u16>(i)?;
    let (i, port_count) = opt(preceded(char('/'), number::<u16>))(i)?;
    let (i, _) = space1(i)?;
    let (i, proto) = token(i)?;
    let (i, formats) = many0(preceded(space1, token))(i)?;
    Ok((
        i,
        Line::Media(MediaLine {
            media: media.into(),
            port,
            port_count,
            proto: proto.into(),
            formats: formats.into_iter().map(str::to_string).collect(),
        }),
    ))
}

/// `a=<name>[:<value>]` (RFC 8866 §5.13). A known attribute whose value does not parse is kept
/// as `Other` (lenient parsing; policy decides later).
fn attribute(v: &str) -> Attribute {
    let (name, value) = match v.split_once(':') {
        Some((n, val)) => (n, Some(val)),
        None => (v, None),
    };
    let known = match (name, value) {
        ("rtpmap", Some(val)) => rtpmap(val)
            .ok()
            .filter(|(r, _)| r.is_empty())
            .map(|(_, a)| a),
        ("fmtp", Some(val)) => val.split_once(' ').map(|(f, p)| Attribute::Fmtp {
            format: f.into(),
            params: p.into(),
        }),
        ("ptime", Some(val)) => val.parse().ok().map(Attribute::Ptime),
        ("maxptime", Some(val)) => val.parse().ok().map(Attribute::MaxPtime),
        ("sendrecv", None) => Some(Attribute::Direction(Direction::SendRecv)),
        ("sendonly", None) => Some(Attribute::Direction(Direction::SendOnly)),
        ("recvonly", None) => Some(Attribute::Direction(Direction::RecvOnly)),
        ("inactive", None) => Some(Attribute::Direction(Direction::Inactive)),
        ("rtcp-mux", None) => Some(Attribute::RtcpMux),
        ("rtcp", Some(val)) => rtcp(val).ok().filter(|(r, _)| r.is_empty()).map(|(_, a)| a),
        ("ssrc", Some(val)) => val.split_once(' ').and_then(|(id, rest)| {
            id.parse().ok().map(|id| Attribute::Ssrc {
                id,
                rest: rest.into(),
            })
        }),
        ("crypto", Some(val)) => parse_crypto(val)
            .ok()
            .filter(|(r, _)| r.is_empty())
            .map(|(_, c)| Attribute::Crypto(c)),
        _ => None,
    };
    known.unwrap_or_else(|| Attribute::Other {
        name: name.into(),
        value: value.map(str::to_string),
    })
}

/// RFC 8866 §6.6: `<payload type> <encoding name>/<clock rate>[/<encoding parameters>]`.
fn rtpmap(i: &str) -> PResult<'_, Attribute> {
    let (i, payload_type) = number::<u8>(i)?;
    let (i, _) = space1(i)?;
    let (i, encoding) = take_while1(|c: char| c != '/' && !c.is_whitespace())(i)?;
    let (i, _) = char('/')(i)?;
    let (i, clock_rate) = number::<u32>(i)?;
    let (i, channels) = opt(preceded(char('/'), number::<u32>))(i)?;
    Ok((
        i,
        Attribute::Rtpmap {
            payload_type,
            encoding: encoding.into(),
            clock_rate,
            channels,
        },
    ))
}

/// RFC 3605: `rtcp-attribute = "a=rtcp:" port [nettype space addrtype space connection-address]`.
fn rtcp(i: &str) -> PResult<'_, Attribute> {
    let (i, port) = number::<u16>(i)?;
    let (i, address) = opt(preceded(space1, rest))(i)?;
    Ok((
        i,
        Attribute::Rtcp {
            port,
            address: address.map(str::to_string),
        },
    ))
}

impl fmt::Display for Attribute {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Attribute::Rtpmap {
                payload_type,
                encoding,
                clock_rate,
                channels,
            } => {
                write!(f, "rtpmap:{payload_type} {encoding}/{clock_rate}")?;
                if let Some(c) = channels {
                    write!(f, "/{c}")?;
                }
                Ok(())
            }
            Attribute::Fmtp { format, params } => write!(f, "fmtp:{format} {params}"),
            Attribute::Ptime(p) => write!(f, "ptime:{p}"),
            Attribute::MaxPtime(p) => write!(f, "maxptime:{p}"),
            Attribute::Direction(d) => f.write_str(d.name()),
            Attribute::Rtcp { port, address } => match address {
                Some(a) => write!(f, "rtcp:{port} {a}"),
                None => write!(f, "rtcp:{port}"),
            },
            Attribute::RtcpMux => f.write_str("rtcp-mux"),
            Attribute::Ssrc { id, rest } => write!(f, "ssrc:{id} {rest}"),
            Attribute::Crypto(c) => write!(f, "crypto:{c}"),
            Attribute::Other { name, value } => match value {
                Some(v) => write!(f, "{name}:{v}"),
                None => f.write_str(name),
            },
        }
    }
}

impl fmt::Display for Line {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Line::Version(v) => write!(f, "v={v}"),
            Line::Origin(o) => write!(
                f,
                "o={} {} {} {} {} {}",
                o.username, o.session_id, o.session_version, o.nettype, o.addrtype, o.address
            ),
            Line::SessionName(s) => write!(f, "s={s}"),
            Line::Connection(c) => write!(f, "c={} {} {}", c.nettype, c.addrtype, c.address),
            Line::Media(m) => {
                write!(f, "m={} {}", m.media, m.port)?;
                if let Some(n) = m.port_count {
                    write!(f, "/{n}")?;
                }
                write!(f, " {}", m.proto)?;
                for fmt in &m.formats {
                    write!(f, " {fmt}")?;
                }
                Ok(())
            }
            Line::Attribute(a) => write!(f, "a={a}"),
            Line::Other { kind, value } => write!(f, "{kind}={value}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const TWILIO: &str = "v=0\r\no=root 1681939480 1681939480 IN IP4 192.0.2.10\r\ns=Twilio Media Gateway\r\nc=IN IP4 192.0.2.10\r\nt=0 0\r\nm=audio 12162 RTP/SAVP 0 8 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:8 PCMA/8000\r\na=rtpmap:101 telephone-event/8000\r\na=fmtp:101 0-16\r\na=ptime:20\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\na=sendrecv\r\n";

    #[test]
    fn twilio_offer_round_trips_and_types_lines() {
        let sd = SessionDescription::parse(TWILIO.as_bytes()).unwrap();
        assert_eq!(sd.to_string(), TWILIO);
        assert_eq!(sd.media.len(), 1);
        assert!(matches!(&sd.media[0][0].line, Line::Media(m) if m.formats == ["0", "8", "101"]));
        assert!(sd.media[0]
            .iter()
            .any(|l| matches!(&l.line, Line::Attribute(Attribute::Crypto(c)) if c.tag == 1)));
        assert_eq!(
            sd.connection().unwrap().ip(),
            Some("192.0.2.10".parse().unwrap())
        );
    }

    #[test]
    fn bare_lf_and_missing_final_newline_round_trip() {
        let text = "v=0\no=- 1 1 IN IP4 192.0.2.1\ns=-\nt=0 0\nm=audio 9 RTP/AVP 0\na=x-unknown:foo bar\na=flag";
        let sd = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(sd.to_string(), text);
        assert!(
            matches!(&sd.media[0][2].line, Line::Attribute(Attribute::Other { name, value: None }) if name == "flag")
        );
    }

    #[test]
    fn every_line_type_is_accepted() {
        let text = "v=0\r\no=- 1 2 IN IP6 2001:db8::1\r\ns=x\r\ni=info\r\nu=http://example.com\r\ne=a@example.com\r\np=+1 555\r\nc=IN IP6 2001:db8::1\r\nb=AS:64\r\nt=0 0\r\nr=7d 1h 0 25h\r\nz=2882844526 -1h\r\nk=prompt\r\na=recvonly\r\nm=audio 5004/2 RTP/SAVP 0\r\na=maxptime:40\r\na=rtcp:5007 IN IP6 2001:db8::2\r\na=rtcp-mux\r\na=ssrc:1234 cname:x\r\n";
        let sd = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(sd.to_string(), text);
        let m = &sd.media[0];
        assert!(matches!(&m[0].line, Line::Media(ml) if ml.port_count == Some(2)));
        assert!(matches!(
            &m[2].line,
            Line::Attribute(Attribute::Rtcp {
                port: 5007,
                address: Some(_)
            })
        ));
        assert!(matches!(
            &m[4].line,
            Line::Attribute(Attribute::Ssrc { id: 1234, .. })
        ));
    }

    #[test]
    fn errors_carry_line_and_offset() {
        let e = SessionDescription::parse(
            b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\nm=audio notaport RTP/AVP 0\r\n",
        )
        .unwrap_err();
        assert_eq!((e.line, e.offset), (3, 31));
        let e = SessionDescription::parse(b"v=0\r\nthis is not sdp\r\n").unwrap_err();
        assert_eq!(e.line, 2);
        let e = SessionDescription::parse(b"o=- 1 1 IN IP4 192.0.2.1\r\n").unwrap_err();
        assert_eq!(e.line, 1);
        assert!(SessionDescription::parse(b"v=0\r\n\xff=1\r\n").is_err());
    }

    /// RFC 8866 §5.1 defines only `v=0`: any other version is refused with its position
    /// (table-driven; the caller answers 400 with a Warning).
    #[test]
    fn only_sdp_version_0() {
        for (text, line, offset) in [
            ("v=1\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\n", 1, 0),
            ("v=2\no=- 1 1 IN IP4 192.0.2.1\n", 1, 0),
            ("v=00001\r\ns=-\r\n", 1, 0),
            ("v=0\r\ns=-\r\nv=1\r\n", 3, 10),
        ] {
            let e = SessionDescription::parse(text.as_bytes()).unwrap_err();
            assert_eq!((e.line, e.offset), (line, offset), "{text:?}");
            assert!(e.kind.contains("version"), "{}", e.kind);
        }
        assert!(SessionDescription::parse(b"v=0\r\ns=-\r\n").is_ok());
    }

    #[test]
    fn trailing_blanks_are_tolerated() {
        let text = "v=0 \r\no=- 1 1 IN IP4 192.0.2.1\t\r\ns=-\r\nc=IN IP4 192.0.2.1 \r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0 8 \r\n";
        let sd = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(sd.to_string(), text);
        assert!(matches!(&sd.media[0][0].line, Line::Media(m) if m.formats == ["0", "8"]));
    }

    #[test]
    fn debug_never_shows_key_material() {
        let text = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nk=base64:c2VjcmV0a2V5\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\na=crypto:2 AES_CM_128_HMAC_SHA1_80 inline:bm90dmFsaWQ broken\r\na=CRYPTO:3 x\r\n";
        let sd = SessionDescription::parse(text.as_bytes()).unwrap();
        assert_eq!(sd.to_string(), text);
        let debug = format!("{sd:?} {:#?}", sd.media[0]);
        for secret in ["PS1uQCVe", "bm90dmFsaWQ", "c2VjcmV0a2V5", "CRYPTO:3"] {
            assert!(!debug.contains(secret), "{secret} in {debug}");
        }
        assert!(debug.contains("<redacted>"));
    }

    fn arb_attr() -> impl Strategy<Value = Attribute> {
        prop_oneof![
            (
                any::<u8>(),
                "[A-Za-z][A-Za-z0-9-]{0,10}",
                1u32..100000,
                proptest::option::of(1u32..3)
            )
                .prop_map(|(payload_type, encoding, clock_rate, channels)| {
                    Attribute::Rtpmap {
                        payload_type,
                        encoding,
                        clock_rate,
                        channels,
                    }
                }),
            ("[0-9]{1,3}", "[a-z0-9=;-]{1,12}")
                .prop_map(|(format, params)| Attribute::Fmtp { format, params }),
            (1u32..1000).prop_map(Attribute::Ptime),
            prop_oneof![
                Just(Direction::SendRecv),
                Just(Direction::SendOnly),
                Just(Direction::RecvOnly),
                Just(Direction::Inactive)
            ]
            .prop_map(Attribute::Direction),
            Just(Attribute::RtcpMux),
            (any::<u16>()).prop_map(|port| Attribute::Rtcp {
                port,
                address: None
            }),
            (
                "x-[a-z]{1,8}",
                proptest::option::of("[a-z0-9 ]{0,10}[a-z0-9]")
            )
                .prop_map(|(name, value)| Attribute::Other { name, value }),
        ]
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = SessionDescription::parse(&bytes);
        }

        #[test]
        fn generated_descriptions_round_trip(
            port in any::<u16>(),
            fmts in proptest::collection::vec("[0-9]{1,3}", 1..5),
            attrs in proptest::collection::vec(arb_attr(), 0..8),
        ) {
            let mut lines = vec![
                Line::Version(0),
                Line::Origin(Origin { username: "-".into(), session_id: "1".into(), session_version: "2".into(), nettype: "IN".into(), addrtype: "IP4".into(), address: "192.0.2.1".into() }),
                Line::SessionName("-".into()),
                Line::Other { kind: 't', value: "0 0".into() },
                Line::Media(MediaLine { media: "audio".into(), port, port_count: None, proto: "RTP/SAVP".into(), formats: fmts }),
            ];
            lines.extend(attrs.into_iter().map(Line::Attribute));
            let text: String = lines.iter().map(|l| format!("{l}\r\n")).collect();
            let sd = SessionDescription::parse(text.as_bytes()).unwrap();
            prop_assert_eq!(sd.to_string(), text);
            let parsed: Vec<Line> = sd.lines().map(|l| l.line.clone()).collect();
            prop_assert_eq!(parsed, lines);
        }
    }
}
