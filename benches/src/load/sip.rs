//! The SIP a carrier trunk sends for one call (INVITE with an SDES offer, ACK, BYE, RFC 3261
//! §13, §17.1.1.3, §15) and what it reads back: framing of a TLS byte stream by Content-Length
//! (RFC 3261 §18.3), the status, Call-ID, To tag, and the answer's port and SRTP key
//! (RFC 4568 §9.1 `inline:` key||salt, base64).

use std::net::SocketAddr;

use base64::Engine as _;

/// One call's identity in the messages.
#[derive(Clone, Debug)]
pub struct Dialog {
    /// Call-ID.
    pub call_id: String,
    /// Our From tag.
    pub from_tag: String,
    /// The To tag of sbc's 200 OK, once known.
    pub to_tag: Option<String>,
    /// `host:port` of sbc (Request-URI and To).
    pub target: SocketAddr,
    /// Our address for Via and Contact.
    pub local: SocketAddr,
    /// Called number.
    pub called: String,
}

impl Dialog {
    fn uri(&self) -> String {
        format!("sip:{}@{};transport=tls", self.called, self.target)
    }

    fn common(&self, method: &str, cseq: u32, branch: &str) -> String {
        let to_tag = self
            .to_tag
            .as_ref()
            .map(|t| format!(";tag={t}"))
            .unwrap_or_default();
        format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/TLS {local};branch=z9hG4bK{branch}\r\n\
             From: <sip:+15550001111@{local}>;tag={from}\r\nTo: <sip:{called}@{target}>{to_tag}\r\n\
             Call-ID: {cid}\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\n",
            uri = self.uri(),
            local = self.local,
            from = self.from_tag,
            called = self.called,
            target = self.target,
            cid = self.call_id,
        )
    }

    /// The INVITE offering RTP/SAVP PCMU on `rtp_port` with one `AES_CM_128_HMAC_SHA1_80` key
    /// (30 bytes: 16 key, 14 salt) and rtcp-mux.
    pub fn invite(&self, rtp_port: u16, key_salt: &[u8; 30]) -> Vec<u8> {
        let ip = self.local.ip();
        let sdp = format!(
            "v=0\r\no=- 1 1 IN IP4 {ip}\r\ns=-\r\nc=IN IP4 {ip}\r\nt=0 0\r\n\
             m=audio {rtp_port} RTP/SAVP 0\r\na=rtpmap:0 PCMU/8000\r\n\
             a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{key}\r\na=rtcp-mux\r\na=sendrecv\r\n",
            key = base64::engine::general_purpose::STANDARD.encode(key_salt),
        );
        let mut m = self.common("INVITE", 1, &format!("{}i", self.call_id));
        m.push_str(&format!(
            "Contact: <sip:+15550001111@{};transport=tls>\r\nContent-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            self.local,
            sdp.len()
        ));
        m.into_bytes()
    }

    /// The ACK for a 2xx (a new transaction, RFC 3261 §13.2.2.4).
    pub fn ack(&self) -> Vec<u8> {
        let mut m = self.common("ACK", 1, &format!("{}a", self.call_id));
        m.push_str("Content-Length: 0\r\n\r\n");
        m.into_bytes()
    }

    /// The BYE.
    pub fn bye(&self) -> Vec<u8> {
        let mut m = self.common("BYE", 2, &format!("{}b", self.call_id));
        m.push_str("Content-Length: 0\r\n\r\n");
        m.into_bytes()
    }
}

/// A SIP message read from the stream (only what the generator looks at).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    /// Status code of a response; `None` for a request.
    pub status: Option<u16>,
    /// Call-ID header value.
    pub call_id: String,
    /// CSeq method.
    pub cseq_method: String,
    /// Tag of the To header, if any.
    pub to_tag: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

/// Why a stream could not be framed.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header section is not text or lacks a start line.
    #[error("unparsable SIP message head")]
    BadHead,
    /// Content-Length is not a number.
    #[error("bad Content-Length")]
    BadLength,
}

/// Takes one complete message off the front of `buf` (skipping CRLF keep-alives, RFC 5626
/// §4.4.1); `Ok(None)` when more bytes are needed.
pub fn take_message(buf: &mut Vec<u8>) -> Result<Option<Message>, FrameError> {
    let lead = buf
        .iter()
        .take_while(|&&b| b == b'\r' || b == b'\n')
        .count();
    buf.drain(..lead);
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| FrameError::BadHead)?;
    let mut lines = head.split("\r\n");
    let start = lines.next().ok_or(FrameError::BadHead)?;
    let status = if let Some(rest) = start.strip_prefix("SIP/2.0 ") {
        Some(
            rest.get(..3)
                .and_then(|s| s.parse().ok())
                .ok_or(FrameError::BadHead)?,
        )
    } else {
        None
    };
    let mut len = 0usize;
    let (mut call_id, mut cseq_method, mut to_tag) = (String::new(), String::new(), None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "content-length" | "l" => len = value.parse().map_err(|_| FrameError::BadLength)?,
            "call-id" | "i" => call_id = value.to_string(),
            "cseq" => cseq_method = value.split_whitespace().nth(1).unwrap_or("").to_string(),
            "to" | "t" => {
                to_tag = value
                    .split(';')
                    .skip(1)
                    .find_map(|p| p.trim().strip_prefix("tag=").map(str::to_string))
            }
            _ => {}
        }
    }
    let total = head_end + 4 + len;
    if buf.len() < total {
        return Ok(None);
    }
    let body = buf[head_end + 4..total].to_vec();
    buf.drain(..total);
    Ok(Some(Message {
        status,
        call_id,
        cseq_method,
        to_tag,
        body,
    }))
}

/// What the generator needs from sbc's SDP answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnswerMedia {
    /// Where sbc receives RTP (c= address, m= port).
    pub rtp: SocketAddr,
    /// sbc's key||salt (30 bytes for AES_CM_128).
    pub key_salt: Vec<u8>,
}

/// Reads `c=`, `m=audio` and the first `a=crypto` `inline:` key of an answer.
pub fn answer_media(body: &[u8]) -> Option<AnswerMedia> {
    let text = std::str::from_utf8(body).ok()?;
    let mut ip = None;
    let mut port = None;
    let mut key = None;
    for line in text.lines() {
        if let Some(c) = line.strip_prefix("c=IN IP4 ") {
            ip = c.trim().parse::<std::net::IpAddr>().ok();
        } else if let Some(m) = line.strip_prefix("m=audio ") {
            port = m.split_whitespace().next()?.parse::<u16>().ok();
        } else if line.starts_with("a=crypto:") && key.is_none() {
            let inline = line.split("inline:").nth(1)?;
            let b64 = inline.split(['|', ' ']).next()?.trim();
            key = base64::engine::general_purpose::STANDARD.decode(b64).ok();
        }
    }
    Some(AnswerMedia {
        rtp: SocketAddr::new(ip?, port?),
        key_salt: key?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dialog() -> Dialog {
        Dialog {
            call_id: "lg-1-7".into(),
            from_tag: "f7".into(),
            to_tag: None,
            target: "127.0.0.1:5071".parse().unwrap(),
            local: "127.0.0.1:15090".parse().unwrap(),
            called: "+15550002222".into(),
        }
    }

    #[test]
    fn invite_frames_back_and_carries_the_key() {
        let d = dialog();
        let mut buf = d.invite(40000, &[7; 30]);
        let text = String::from_utf8(buf.clone()).unwrap();
        assert!(
            text.starts_with("INVITE sip:+15550002222@127.0.0.1:5071;transport=tls SIP/2.0\r\n")
        );
        buf.extend_from_slice(b"\r\n\r\n");
        buf.extend_from_slice(&d.bye());
        let m = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(
            (m.status, m.call_id.as_str(), m.cseq_method.as_str()),
            (None, "lg-1-7", "INVITE")
        );
        let offer = answer_media(&m.body).unwrap();
        assert_eq!(offer.rtp, "127.0.0.1:40000".parse().unwrap());
        assert_eq!(offer.key_salt, vec![7; 30]);
        let bye = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(bye.cseq_method, "BYE");
        assert!(buf.is_empty());
        assert_eq!(take_message(&mut buf), Ok(None));
    }

    #[test]
    fn response_fields_partial_input_and_errors() {
        let resp = b"SIP/2.0 200 OK\r\nVia: x\r\nTo: <sip:b@c>;tag=abc;x=1\r\ni: cid\r\nCSeq: 1 INVITE\r\nl: 4\r\n\r\nbody";
        let mut buf = resp[..resp.len() - 1].to_vec();
        assert_eq!(take_message(&mut buf), Ok(None));
        buf.push(b'y');
        let m = take_message(&mut buf).unwrap().unwrap();
        assert_eq!(m.status, Some(200));
        assert_eq!(m.to_tag.as_deref(), Some("abc"));
        assert_eq!(m.call_id, "cid");
        assert_eq!(m.body, b"body");
        let mut bad = b"SIP/2.0 2x0 OK\r\n\r\n".to_vec();
        assert_eq!(take_message(&mut bad), Err(FrameError::BadHead));
        let mut bad = b"SIP/2.0 200 OK\r\nContent-Length: z\r\n\r\n".to_vec();
        assert_eq!(take_message(&mut bad), Err(FrameError::BadLength));
    }

    #[test]
    fn ack_and_bye_carry_the_to_tag() {
        let mut d = dialog();
        d.to_tag = Some("sbc1".into());
        for m in [d.ack(), d.bye()] {
            let t = String::from_utf8(m).unwrap();
            assert!(
                t.contains("To: <sip:+15550002222@127.0.0.1:5071>;tag=sbc1\r\n"),
                "{t}"
            );
        }
    }
}
