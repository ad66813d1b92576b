//! Checks the lenient parser does not make: the grammar details RFC 4475's invalid messages
//! break (§3.1.2), applied to requests before they reach a call. The parser accepts what real
//! carriers send (compact forms, folding, LF-only lines); these checks refuse what no conforming
//! element sends, with a 400 (or 505) that says why. Also builds a 400 for a request the parser
//! could not read at all, from whatever Via/From/To/Call-ID/CSeq lines it carries.

use super::message::Request;

/// A request that must be refused: status and reason phrase.
pub type Problem = (u16, &'static str);

/// The first line, without its line ending.
fn first_line(data: &[u8]) -> &[u8] {
    let start = data
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(0);
    let data = &data[start..];
    let end = data
        .iter()
        .position(|&c| c == b'\r' || c == b'\n')
        .unwrap_or(data.len());
    &data[..end]
}

/// `Request-Line = Method SP Request-URI SP SIP-Version CRLF` (RFC 3261 §25.1): single spaces,
/// no trailing whitespace, version `SIP/2.0` (505 otherwise, §21.5.6), no `<>` and no header
/// part (`?`) in the Request-URI (§19.1.5: headers are not allowed there).
pub fn request_line_problem(data: &[u8]) -> Option<Problem> {
    let line = first_line(data);
    if line.starts_with(b"SIP/") {
        return None;
    }
    let parts: Vec<&[u8]> = line.split(|&c| c == b' ').collect();
    if parts.len() != 3 || parts.iter().any(|p| p.is_empty()) || line.contains(&b'\t') {
        return Some((400, "Malformed Request-Line"));
    }
    if !parts[2].eq_ignore_ascii_case(b"SIP/2.0") {
        return Some((505, "Version Not Supported"));
    }
    if parts[1].iter().any(|&c| c == b'<' || c == b'>') {
        return Some((400, "Malformed Request-URI"));
    }
    if parts[1].contains(&b'?') {
        return Some((400, "Headers Not Allowed In Request-URI"));
    }
    None
}

/// Header-level checks on a parsed request.
pub fn header_problem(req: &Request) -> Option<Problem> {
    for name in ["From", "To", "Contact"] {
        for v in req.headers.get_all(name) {
            if v.matches('"').count() % 2 == 1 {
                return Some((400, "Unterminated Quoted String"));
            }
            // name-addr = [ display-name ] LAQUOT addr-spec RAQUOT (no LWS inside the brackets).
            if v.contains("< ") || v.contains(" >") || v.contains("<\t") {
                return Some((400, "Whitespace In addr-spec"));
            }
            // An unquoted display name is a run of tokens: a comma cannot appear in it.
            if let Some(lt) = v.find('<') {
                let display = &v[..lt];
                if !display.trim_start().starts_with('"') && display.contains(',') {
                    return Some((400, "Invalid Display Name"));
                }
            }
        }
    }
    for name in ["Via", "Contact"] {
        for v in req.headers.get_all(name) {
            let squeezed: String = v.chars().filter(|c| !c.is_whitespace()).collect();
            if [";;", ";,", ",;", ",,"]
                .iter()
                .any(|p| squeezed.contains(p))
                || squeezed.ends_with(';')
                || squeezed.ends_with(',')
            {
                return Some((400, "Extraneous Header Field Separators"));
            }
        }
    }
    // SIP-date is an RFC 1123 date in GMT only (RFC 3261 §25.1).
    if let Some(d) = req.headers.get("Date") {
        if !d.trim_end().ends_with("GMT") {
            return Some((400, "Invalid Date"));
        }
    }
    None
}

/// A 400 for a request the parser rejected, built from its raw header lines (RFC 3261 §8.2.6:
/// copy Via, From, To, Call-ID and CSeq). `None` when it lacks Via, Call-ID or CSeq, or is a
/// response or an ACK (never answered).
pub fn bad_request_for_unparsable(data: &[u8], reason: &str) -> Option<Vec<u8>> {
    let text = String::from_utf8_lossy(data);
    let mut lines = text.split('\n').map(|l| l.trim_end_matches('\r'));
    let start = lines.next()?.trim();
    if start.is_empty() || start.starts_with("SIP/") || start.starts_with("ACK ") {
        return None;
    }
    let mut out = format!("SIP/2.0 400 {reason}\r\n");
    let (mut via, mut call_id, mut cseq) = (false, false, false);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let canon = match name.trim().to_ascii_lowercase().as_str() {
            "via" | "v" => {
                via = true;
                "Via"
            }
            "from" | "f" => "From",
            "to" | "t" => "To",
            "call-id" | "i" => {
                call_id = true;
                "Call-ID"
            }
            "cseq" => {
                cseq = true;
                "CSeq"
            }
            _ => continue,
        };
        out.push_str(&format!("{canon}: {}\r\n", value.trim()));
    }
    if !(via && call_id && cseq) {
        return None;
    }
    out.push_str("Content-Length: 0\r\n\r\n");
    Some(out.into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sip::SipMessage;

    fn req(text: &str) -> Request {
        match SipMessage::parse(text.as_bytes()).unwrap() {
            SipMessage::Request(r) => r,
            SipMessage::Response(_) => panic!("not a request"),
        }
    }

    const HEAD: &str = "Via: SIP/2.0/TLS h;branch=z9hG4bK1\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:x@y>\r\nCall-ID: c\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\n";

    #[test]
    fn request_line_grammar() {
        assert_eq!(request_line_problem(b"OPTIONS sip:a@b SIP/2.0\r\n"), None);
        assert_eq!(request_line_problem(b"SIP/2.0 200 OK\r\n"), None);
        assert_eq!(
            request_line_problem(b"OPTIONS  sip:a@b SIP/2.0\r\n")
                .unwrap()
                .0,
            400
        );
        assert_eq!(
            request_line_problem(b"OPTIONS sip:a@b SIP/2.0 \r\n")
                .unwrap()
                .0,
            400
        );
        assert_eq!(
            request_line_problem(b"OPTIONS sip:a@b; lr SIP/2.0\r\n")
                .unwrap()
                .0,
            400
        );
        assert_eq!(
            request_line_problem(b"OPTIONS sip:a@b SIP/7.0\r\n")
                .unwrap()
                .0,
            505
        );
        assert_eq!(
            request_line_problem(b"INVITE <sip:a@b> SIP/2.0\r\n")
                .unwrap()
                .0,
            400
        );
        assert_eq!(
            request_line_problem(b"INVITE sip:a@b?Route=x SIP/2.0\r\n")
                .unwrap()
                .0,
            400
        );
    }

    #[test]
    fn header_grammar() {
        let ok = req(&format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{HEAD}Date: Sat, 13 Nov 2010 23:29:00 GMT\r\n\r\n"
        ));
        assert_eq!(header_problem(&ok), None);
        let quoted = format!(
            "OPTIONS sip:a@b SIP/2.0\r\n{}",
            HEAD.replace("To: <sip:x@y>", "To: \"Mr. X <sip:x@y>")
        );
        assert_eq!(
            header_problem(&req(&format!("{quoted}\r\n"))).unwrap().1,
            "Unterminated Quoted String"
        );
        let spaced = HEAD.replace("To: <sip:x@y>", "To: \"X\" < sip:x@y >");
        assert_eq!(
            header_problem(&req(&format!("OPTIONS sip:a@b SIP/2.0\r\n{spaced}\r\n")))
                .unwrap()
                .0,
            400
        );
        let via = HEAD.replace("branch=z9hG4bK1", "branch=z9hG4bK1;;,;");
        assert_eq!(
            header_problem(&req(&format!("OPTIONS sip:a@b SIP/2.0\r\n{via}\r\n")))
                .unwrap()
                .1,
            "Extraneous Header Field Separators"
        );
        let date =
            format!("OPTIONS sip:a@b SIP/2.0\r\n{HEAD}Date: Fri, 01 Jan 2010 16:00:00 EST\r\n\r\n");
        assert_eq!(header_problem(&req(&date)).unwrap().1, "Invalid Date");
    }

    #[test]
    fn unparsable_requests_still_get_a_400() {
        let raw = format!("OPTIONS sip:a@b; lr SIP/2.0\r\n{HEAD}\r\n");
        let resp = String::from_utf8(
            bad_request_for_unparsable(raw.as_bytes(), "Malformed Request-Line").unwrap(),
        )
        .unwrap();
        assert!(resp.starts_with("SIP/2.0 400 Malformed Request-Line\r\n"));
        assert!(resp.contains("Call-ID: c\r\n") && resp.contains("CSeq: 1 OPTIONS\r\n"));
        assert!(bad_request_for_unparsable(b"SIP/2.0 200 OK\r\nVia: x\r\n\r\n", "x").is_none());
        assert!(
            bad_request_for_unparsable(b"OPTIONS sip:a SIP/2.0\r\nVia: x\r\n\r\n", "x").is_none()
        );
    }
}
