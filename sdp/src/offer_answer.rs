//! Offer/answer (RFC 3264) for a carrier INVITE: accept the first SDES-SRTP audio stream with an
//! AES-CM suite and a G.711 codec, refuse everything else with a reason for the 488 Warning.

use std::net::{IpAddr, SocketAddr};

use crate::crypto::{CryptoAttribute, KeySalt, SrtpSuite};
use crate::lines::{
    Attribute, Connection, Direction, Line, MediaLine, Origin, RawLine, SessionDescription,
};

/// Audio codecs sbc answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// G.711 mu-law, static payload type 0.
    Pcmu,
    /// G.711 A-law, static payload type 8.
    Pcma,
}

impl Codec {
    fn name(self) -> &'static str {
        match self {
            Codec::Pcmu => "PCMU",
            Codec::Pcma => "PCMA",
        }
    }

    fn static_pt(self) -> u8 {
        match self {
            Codec::Pcmu => 0,
            Codec::Pcma => 8,
        }
    }
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
    /// The key and suite of the answer in force (re-INVITE): the key is kept only when the
    /// same suite is chosen again. A suite change draws a fresh key, because a new suite means
    /// a new SRTP context whose rollover counter and SRTCP index start over: under the old key
    /// that would repeat (key, SSRC, index) and so the keystream (RFC 3711 §9.1).
    /// `None` draws a fresh key from the RNG.
    pub local_key: Option<(SrtpSuite, KeySalt)>,
    /// Accept loopback `c=` addresses (tests on one host only; refused by default).
    pub allow_loopback: bool,
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
    /// No `m=audio` line with a non-zero port.
    #[error("no audio media line offered")]
    NoAudio,
    /// Audio offered only as plain RTP (`RTP/AVP`).
    #[error("plain RTP offered; SRTP (RTP/SAVP with SDES) is required")]
    PlainRtp,
    /// SRTP offered, but no AES-CM suite among the `a=crypto` lines.
    #[error("no AES-CM SRTP suite offered (offered: {offered})")]
    NoAesCmSuite { offered: String },
    /// AES-CM lines were offered but none is usable (MKI, session parameters, key length...).
    #[error("no usable a=crypto line: {reason}")]
    NoUsableCrypto { reason: String },
    /// Neither PCMU nor PCMA (as configured) among the offered formats.
    #[error("no common codec (PCMU or PCMA required)")]
    NoCommonCodec,
    /// The audio stream's connection address is missing or not an IP address.
    #[error("unusable connection address: {0}")]
    BadAddress(String),
}

/// Longest text a refusal carries from the offer (the Warning header stays short).
const MAX_WARNING_DETAIL: usize = 160;

/// Makes text taken from the offer safe inside a SIP quoted-string (RFC 3261 §25.1
/// `quoted-string`): printable ASCII only, no `"` or backslash, at most `MAX_WARNING_DETAIL` characters.
fn warning_safe(text: &str) -> String {
    let mut out: String = text
        .chars()
        .map(|c| match c {
            '"' | '\\' => '\'',
            ' '..='~' => c,
            _ => '?',
        })
        .take(MAX_WARNING_DETAIL)
        .collect();
    if text.chars().count() > MAX_WARNING_DETAIL {
        out.push_str("...");
    }
    out
}

fn attrs(section: &[RawLine]) -> impl Iterator<Item = &Attribute> {
    section.iter().filter_map(|l| match &l.line {
        Line::Attribute(a) => Some(a),
        _ => None,
    })
}

fn cryptos(section: &[RawLine]) -> Vec<&CryptoAttribute> {
    attrs(section)
        .filter_map(|a| match a {
            Attribute::Crypto(c) => Some(c),
            _ => None,
        })
        .collect()
}

fn is_sdes_srtp(m: &MediaLine, section: &[RawLine]) -> bool {
    m.proto == "RTP/SAVP" || (m.proto == "RTP/SAVPF" && !cryptos(section).is_empty())
}

/// Refuses a media address sbc must not send to: unspecified (`0.0.0.0`, `::`), multicast
/// (sbc answers unicast only, RFC 3264 §6.2), loopback unless `allow_loopback`, and an
/// `addrtype` that does not match the address (`IN IP4 ::1`, RFC 8866 §5.7).
fn check_media_address(ip: IpAddr, addrtype: &str, allow_loopback: bool) -> Result<(), Refusal> {
    let refuse = |why: &str| Err(Refusal::BadAddress(warning_safe(&format!("{ip} is {why}"))));
    let family_ok = match ip {
        IpAddr::V4(_) => addrtype == "IP4",
        IpAddr::V6(_) => addrtype == "IP6",
    };
    if !family_ok {
        return refuse(&format!("not an {addrtype} address"));
    }
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    if ip.is_unspecified() {
        return refuse("unspecified");
    }
    if ip.is_multicast() || ip == IpAddr::from([255, 255, 255, 255]) {
        return refuse("multicast or broadcast");
    }
    if ip.is_loopback() && !allow_loopback {
        return refuse("loopback");
    }
    Ok(())
}

/// Answers a carrier offer (RFC 3264 §6) under `policy`.
pub fn answer_offer(
    offer: &SessionDescription,
    policy: &AnswerPolicy,
    rng: &mut dyn rand::RngCore,
) -> Result<Answer, Refusal> {
    let mline = |s: &[RawLine]| match s.first().map(|l| &l.line) {
        Some(Line::Media(m)) => Some(m.clone()),
        _ => None,
    };
    let audio: Vec<(usize, MediaLine)> = offer
        .media
        .iter()
        .enumerate()
        .filter_map(|(i, s)| mline(s).map(|m| (i, m)))
        .filter(|(_, m)| m.media == "audio" && m.port != 0)
        .collect();
    if audio.is_empty() {
        return Err(Refusal::NoAudio);
    }
    let Some((chosen, m)) = audio
        .iter()
        .find(|(i, m)| is_sdes_srtp(m, &offer.media[*i]))
        .cloned()
    else {
        if audio.iter().any(|(_, m)| m.proto.contains("SAVP")) {
            return Err(Refusal::NoUsableCrypto {
                reason: "no SDES a=crypto line (DTLS-SRTP is not supported)".into(),
            });
        }
        return Err(Refusal::PlainRtp);
    };
    let section = &offer.media[chosen];

    // Crypto (RFC 4568 §7.1.1): our most preferred suite first, offer order within a suite.
    let lines = cryptos(section);
    let offered_suites: Vec<String> = lines.iter().map(|c| c.suite.name().to_string()).collect();
    if !lines.iter().any(|c| c.suite.is_aes_cm()) {
        let offered = if offered_suites.is_empty() {
            "none".to_string()
        } else {
            offered_suites.join(", ")
        };
        return Err(Refusal::NoAesCmSuite {
            offered: warning_safe(&offered),
        });
    }
    let mut reasons = Vec::new();
    let mut pick = None;
    'suites: for suite in &policy.suites {
        for c in lines.iter().filter(|c| &c.suite == suite) {
            match c.unusable_reason() {
                None => {
                    pick = Some(*c);
                    break 'suites;
                }
                Some(r) => reasons.push(r),
            }
        }
    }
    let Some(crypto) = pick else {
        if reasons.is_empty() {
            reasons.push(format!(
                "offered suites ({}) are not accepted",
                offered_suites.join(", ")
            ));
        }
        return Err(Refusal::NoUsableCrypto {
            reason: warning_safe(&reasons.join("; ")),
        });
    };
    let remote_key = crypto.keys[0]
        .key_salt
        .clone()
        .ok_or_else(|| Refusal::NoUsableCrypto {
            reason: "key is not valid base64".into(),
        })?;

    // Codec: our preference among the offered formats (static types may lack an rtpmap).
    let rtpmaps: Vec<(u8, String, u32)> = attrs(section)
        .filter_map(|a| match a {
            Attribute::Rtpmap {
                payload_type,
                encoding,
                clock_rate,
                ..
            } => Some((*payload_type, encoding.clone(), *clock_rate)),
            _ => None,
        })
        .collect();
    let offered_pts: Vec<u8> = m.formats.iter().filter_map(|f| f.parse().ok()).collect();
    let pt_for = |codec: Codec| {
        offered_pts
            .iter()
            .copied()
            .find(|pt| match rtpmaps.iter().find(|(p, _, _)| p == pt) {
                Some((_, enc, clock)) => enc.eq_ignore_ascii_case(codec.name()) && *clock == 8000,
                None => *pt == codec.static_pt(),
            })
    };
    let (codec, payload_type) = policy
        .codecs
        .iter()
        .find_map(|c| pt_for(*c).map(|pt| (*c, pt)))
        .ok_or(Refusal::NoCommonCodec)?;
    let telephone_event = offered_pts.iter().copied().find(|pt| {
        rtpmaps.iter().any(|(p, enc, clock)| {
            p == pt && enc.eq_ignore_ascii_case("telephone-event") && *clock == 8000
        })
    });
    let te_fmtp = telephone_event.and_then(|pt| {
        attrs(section).find_map(|a| match a {
            Attribute::Fmtp { format, params } if *format == pt.to_string() => Some(params.clone()),
            _ => None,
        })
    });

    // Addresses: media-level c= overrides session-level (RFC 8866 §5.7).
    let conn: Option<&Connection> = section
        .iter()
        .find_map(|l| match &l.line {
            Line::Connection(c) => Some(c),
            _ => None,
        })
        .or_else(|| offer.connection());
    let conn = conn.ok_or_else(|| Refusal::BadAddress("no c= line".into()))?;
    let ip = conn.ip().ok_or_else(|| {
        Refusal::BadAddress(warning_safe(&format!(
            "{} is not an IP address",
            conn.address
        )))
    })?;
    check_media_address(ip, &conn.addrtype, policy.allow_loopback)?;
    let rtcp_mux = attrs(section).any(|a| *a == Attribute::RtcpMux);
    let remote_rtp = SocketAddr::new(ip, m.port);
    let remote_rtcp = if rtcp_mux {
        remote_rtp
    } else {
        let explicit = attrs(section).find_map(|a| match a {
            Attribute::Rtcp { port, address } => Some((*port, address.clone())),
            _ => None,
        });
        match explicit {
            Some((port, address)) => {
                // `a=rtcp:port [nettype addrtype address]` (RFC 3605 §2.1).
                let addr_ip = match address {
                    Some(a) => {
                        let parts: Vec<&str> = a.split_whitespace().collect();
                        let bad =
                            || Refusal::BadAddress(warning_safe(&format!("a=rtcp address {a}")));
                        let [_, addrtype, addr] = parts[..] else {
                            return Err(bad());
                        };
                        let rip: IpAddr = addr.parse().map_err(|_| bad())?;
                        check_media_address(rip, addrtype, policy.allow_loopback)?;
                        rip
                    }
                    None => ip,
                };
                SocketAddr::new(addr_ip, port)
            }
            None => SocketAddr::new(ip, m.port.saturating_add(1)),
        }
    };

    // Direction (RFC 3264 §6.1): media-level overrides session-level. (An old-style hold with
    // c=0.0.0.0, RFC 3264 §8.4, is refused above: sbc never sends media to an unspecified
    // address; carriers hold with a=sendonly.)
    let dir_of = |s: &[RawLine]| {
        attrs(s).find_map(|a| match a {
            Attribute::Direction(d) => Some(*d),
            _ => None,
        })
    };
    let offered_dir = dir_of(section)
        .or_else(|| dir_of(&offer.session))
        .unwrap_or(Direction::SendRecv);
    let direction = match offered_dir {
        Direction::SendOnly => Direction::RecvOnly,
        Direction::RecvOnly => Direction::SendOnly,
        d => d,
    };

    let local_key = match &policy.local_key {
        Some((suite, k)) if *suite == crypto.suite && k.key().len() == crypto.suite.key_len() => {
            k.clone()
        }
        _ => {
            let mut bytes = vec![0u8; crypto.suite.key_len() + crypto.suite.salt_len()];
            rng.fill_bytes(&mut bytes);
            KeySalt::new(bytes)
        }
    };

    // The answer: one m-line per offered m-line, in order (RFC 3264 §6).
    let addrtype = if policy.address.is_ipv4() {
        "IP4"
    } else {
        "IP6"
    };
    let session = vec![
        RawLine::new(Line::Version(0)),
        RawLine::new(Line::Origin(Origin {
            username: "-".into(),
            session_id: policy.session_id.to_string(),
            session_version: policy.session_version.to_string(),
            nettype: "IN".into(),
            addrtype: addrtype.into(),
            address: policy.address.to_string(),
        })),
        RawLine::new(Line::SessionName("-".into())),
        RawLine::new(Line::Connection(Connection {
            nettype: "IN".into(),
            addrtype: addrtype.into(),
            address: policy.address.to_string(),
        })),
        RawLine::new(Line::Other {
            kind: 't',
            value: "0 0".into(),
        }),
    ];
    let mut media = Vec::new();
    for (i, s) in offer.media.iter().enumerate() {
        let Some(om) = mline(s) else { continue };
        if i != chosen {
            media.push(vec![RawLine::new(Line::Media(MediaLine {
                port: 0,
                port_count: None,
                ..om
            }))]);
            continue;
        }
        let mut formats = vec![payload_type.to_string()];
        if let Some(te) = telephone_event {
            formats.push(te.to_string());
        }
        let mut sec = vec![
            RawLine::new(Line::Media(MediaLine {
                media: "audio".into(),
                port: policy.port,
                port_count: None,
                proto: om.proto.clone(),
                formats,
            })),
            RawLine::new(Line::Attribute(Attribute::Rtpmap {
                payload_type,
                encoding: codec.name().into(),
                clock_rate: 8000,
                channels: None,
            })),
        ];
        if let Some(te) = telephone_event {
            sec.push(RawLine::new(Line::Attribute(Attribute::Rtpmap {
                payload_type: te,
                encoding: "telephone-event".into(),
                clock_rate: 8000,
                channels: None,
            })));
            sec.push(RawLine::new(Line::Attribute(Attribute::Fmtp {
                format: te.to_string(),
                params: te_fmtp.clone().unwrap_or_else(|| "0-16".into()),
            })));
        }
        sec.push(RawLine::new(Line::Attribute(Attribute::Ptime(20))));
        if rtcp_mux {
            sec.push(RawLine::new(Line::Attribute(Attribute::RtcpMux)));
        }
        sec.push(RawLine::new(Line::Attribute(Attribute::Direction(
            direction,
        ))));
        sec.push(RawLine::new(Line::Attribute(Attribute::Crypto(
            CryptoAttribute {
                tag: crypto.tag,
                suite: crypto.suite.clone(),
                keys: vec![crate::crypto::KeyParam {
                    key_salt: Some(local_key.clone()),
                    lifetime: None,
                    mki: None,
                }],
                session_params: Vec::new(),
            },
        ))));
        media.push(sec);
    }
    Ok(Answer {
        sdp: SessionDescription { session, media },
        negotiated: Negotiated {
            remote_rtp,
            remote_rtcp,
            rtcp_mux,
            suite: crypto.suite.clone(),
            crypto_tag: crypto.tag,
            remote_key,
            local_key,
            codec,
            payload_type,
            telephone_event,
            direction,
            offered_suites,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\n";

    fn policy() -> AnswerPolicy {
        AnswerPolicy {
            suites: vec![
                SrtpSuite::AesCm128HmacSha1_80,
                SrtpSuite::AesCm128HmacSha1_32,
            ],
            codecs: vec![Codec::Pcmu, Codec::Pcma],
            address: "198.51.100.7".parse().unwrap(),
            port: 20000,
            session_id: 1,
            session_version: 1,
            local_key: None,
            allow_loopback: false,
        }
    }

    fn refuse(tail: &str) -> Refusal {
        let offer = SessionDescription::parse(format!("{HEAD}{tail}").as_bytes()).unwrap();
        let mut rng = rand::rngs::mock::StepRng::new(0, 1);
        answer_offer(&offer, &policy(), &mut rng).unwrap_err()
    }

    /// The Display text goes verbatim inside a quoted Warning header (RFC 3261 §20.43).
    fn assert_warning_safe(r: &Refusal) {
        let text = r.to_string();
        assert!(
            text.chars()
                .all(|c| (' '..='~').contains(&c) && c != '"' && c != '\\'),
            "{text:?}"
        );
        assert!(text.len() < 300, "{}", text.len());
    }

    #[test]
    fn refusal_text_from_the_offer_cannot_break_the_warning_header() {
        let r = refuse("a=crypto:1 X\"Y\\Z\u{e9} inline:AAAA\r\n");
        assert!(matches!(r, Refusal::NoAesCmSuite { .. }));
        assert_warning_safe(&r);
        // Such a suite name breaks the RFC 4568 grammar (`1*(ALPHA / DIGIT / "_")`): the line
        // is ignored as if absent.
        assert!(r.to_string().contains("offered: none"), "{r}");

        let r = refuse("a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR \"EVIL\"\r\n");
        assert!(matches!(r, Refusal::NoUsableCrypto { .. }));
        assert_warning_safe(&r);

        let many: String = (1..200)
            .map(|t| format!("a=crypto:{t} AEAD_AES_256_GCM inline:AAAA\r\n"))
            .collect();
        let r = refuse(&many);
        assert_warning_safe(&r);
        assert!(r.to_string().ends_with("...)"));

        let offer = SessionDescription::parse(
            b"v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 host\"name\r\nt=0 0\r\nm=audio 4000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:PS1uQCVeeCFCanVmcjkpPywjNWhcYD0mXXtxaVBR\r\n",
        )
        .unwrap();
        let mut rng = rand::rngs::mock::StepRng::new(0, 1);
        let r = answer_offer(&offer, &policy(), &mut rng).unwrap_err();
        assert!(matches!(r, Refusal::BadAddress(_)));
        assert_warning_safe(&r);
    }
}
