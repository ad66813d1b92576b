//! Checks the lenient parser does not make: the grammar details RFC 4475's invalid messages
//! break (§3.1.2), applied to requests before they reach a call. The parser accepts what real
//! carriers send (compact forms, folding, LF-only lines); these checks refuse what no conforming
//! element sends, with a 400 (or 505) that says why. Also builds a 400 for a request the parser
//! could not read at all, from whatever Via/From/To/Call-ID/CSeq lines it carries.

use super::message::{name_addr_uri, uri_user_decodes_cleanly, Method, Request};

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

/// The bytes of the start line and header block: every line must be UTF-8 without control
/// characters other than HTAB. RFC 3261 §25.1 builds header values from `TEXT-UTF8char`
/// (`%x21-7E / UTF8-NONASCII`) and LWS (SP, HTAB): no CTL, and a lone CR inside a line is a
/// CTL too. Checked before anything is parsed, so that no such byte reaches a log line, a call
/// or an audit record. The body is not looked at.
fn head_bytes_problem(data: &[u8]) -> Option<Problem> {
    let start = data
        .iter()
        .position(|&c| c != b'\r' && c != b'\n')
        .unwrap_or(data.len());
    let end = super::message::find_head_end(data, start).unwrap_or(data.len());
    for (n, raw) in data[start..end].split(|&c| c == b'\n').enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(line) else {
            return Some((400, "Invalid UTF-8 In Message Header"));
        };
        if text.chars().any(|c| c.is_control() && c != '\t') {
            return Some(if n == 0 {
                (400, "Control Character In Request-Line")
            } else {
                (400, "Control Character In Header")
            });
        }
    }
    None
}

/// Checks on the raw bytes of a message before it is parsed: control characters (other than
/// HTAB) or invalid UTF-8 anywhere in the start line or the header block (400, see
/// [`head_bytes_problem`]); then, for a request, `Request-Line = Method SP Request-URI SP
/// SIP-Version CRLF` (RFC 3261 §25.1): single spaces, no trailing whitespace, version `SIP/2.0`
/// (505 otherwise, §21.5.6), no `<>` and no header part (`?`) in the Request-URI (§19.1.5:
/// headers are not allowed there). A response is only checked for its bytes.
pub fn request_line_problem(data: &[u8]) -> Option<Problem> {
    if let Some(p) = head_bytes_problem(data) {
        return Some(p);
    }
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

/// What a request's body may be, by method. The INVITE, re-INVITE and UPDATE bodies sbc
/// reads are SDP offers (RFC 3264); INFO carries DTMF (`application/dtmf-relay`,
/// `application/dtmf`). ACK is never answered (RFC 3261 §17.2.3), so its body is ignored
/// rather than refused; methods sbc refuses anyway (405/501) are left to that answer.
pub(crate) fn accepted_media_types(method: &Method) -> Option<&'static [&'static str]> {
    match method {
        Method::Info => Some(&["application/dtmf-relay", "application/dtmf"]),
        Method::Invite | Method::Update | Method::Bye | Method::Cancel | Method::Options => {
            Some(&["application/sdp"])
        }
        _ => None,
    }
}

/// RFC 3261 §20.11, §21.4.13: `Content-Encoding` other than `identity` (sbc decodes none) is a
/// 415 with `Accept-Encoding: identity`. A body without `Content-Type`, or of a type sbc does
/// not read, is a 415 with `Accept` (RFC 3261 §8.2.3). `multipart/*` bodies (RFC 5621) are
/// refused the same way rather than searched for an SDP part: no carrier sbc serves sends
/// them, and a part sbc ignored could not be honoured (RFC 5621 §9). Both headers are added by
/// [`super::stateless_response`] to every 415.
fn body_problem(req: &Request) -> Option<Problem> {
    let accepted = accepted_media_types(&req.method)?;
    for enc in req.headers.get_list("Content-Encoding") {
        if !enc.eq_ignore_ascii_case("identity") {
            return Some((415, "Unsupported Content-Encoding"));
        }
    }
    if req.body.is_empty() {
        return None;
    }
    let Some(ct) = req.headers.get("Content-Type") else {
        return Some((415, "Missing Content-Type"));
    };
    // media-type = m-type SLASH m-subtype *(SEMI m-parameter) (RFC 3261 §20.15).
    let media = ct.split(';').next().unwrap_or("");
    let media: String = media.chars().filter(|c| !c.is_whitespace()).collect();
    if media.len() >= 10 && media[..10].eq_ignore_ascii_case("multipart/") {
        return Some((415, "Multipart Bodies Not Supported"));
    }
    if !accepted.iter().any(|a| a.eq_ignore_ascii_case(&media)) {
        return Some((415, "Unsupported Media Type"));
    }
    None
}

/// True when a quoted-string in `v` is left open. Inside a quoted-string a backslash escapes the
/// next character (quoted-pair, RFC 3261 §25.1), so `"J Rosenberg \\\""` is one closed string
/// (RFC 4475 §3.1.1.1 `wsinv`); outside one, a backslash is an ordinary character.
fn quoted_string_unterminated(v: &str) -> bool {
    let mut inside = false;
    let mut chars = v.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => inside = !inside,
            '\\' if inside => {
                chars.next();
            }
            _ => {}
        }
    }
    inside
}

/// Header-level checks on a parsed request: the grammar details RFC 4475 tests, numbers that
/// percent-decode to control characters (400), and bodies sbc does not read (415).
pub fn header_problem(req: &Request) -> Option<Problem> {
    // The called and calling numbers reach log lines and audit records decoded.
    if !uri_user_decodes_cleanly(&req.uri) {
        return Some((400, "Invalid Request-URI User"));
    }
    for name in ["From", "To"] {
        if let Some(v) = req.headers.get(name) {
            if !uri_user_decodes_cleanly(name_addr_uri(v)) {
                return Some((400, "Invalid URI User"));
            }
        }
    }
    for name in ["From", "To", "Contact"] {
        for v in req.headers.get_all(name) {
            if quoted_string_unterminated(v) {
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
    body_problem(req)
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
        // Never echo a control character (the message may have been refused for one).
        let value: String = value
            .trim()
            .chars()
            .map(|c| if c.is_control() && c != '\t' { '?' } else { c })
            .collect();
        out.push_str(&format!("{canon}: {value}\r\n"));
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

    /// `text` with the first occurrence of `from` replaced by the raw bytes `to`.
    fn mutate(text: &str, from: &str, to: &[u8]) -> Vec<u8> {
        let at = text.find(from).expect("pattern in the message");
        let mut out = text.as_bytes()[..at].to_vec();
        out.extend_from_slice(to);
        out.extend_from_slice(&text.as_bytes()[at + from.len()..]);
        out
    }

    /// Control characters (other than HTAB) and invalid UTF-8 anywhere in the start line or the
    /// header block are a 400, whether or not the lenient parser copes with the message.
    #[test]
    fn control_characters_and_bad_utf8_in_the_head() {
        let ok = format!("OPTIONS sip:a@b SIP/2.0\r\n{HEAD}\r\n");
        assert_eq!(request_line_problem(ok.as_bytes()), None);
        let cases: &[(&str, &str, &[u8])] = &[
            ("NUL in Request-URI", "sip:a@b", b"sip:a\0@b"),
            ("DEL in Request-URI", "sip:a@b", b"sip:a\x7f@b"),
            ("bad UTF-8 in Request-URI", "sip:a@b", b"sip:\xff@b"),
            ("NUL in Call-ID", "Call-ID: c", b"Call-ID: c\0x"),
            ("ESC in Call-ID", "Call-ID: c", b"Call-ID: c\x1b[2J"),
            (
                "bare CR in Call-ID",
                "Call-ID: c",
                b"Call-ID: c\rInjected: 1",
            ),
            ("bad UTF-8 in From", "From: <", b"From: \"\xc3\x28\" <"),
            ("C1 control in To", "To: <", b"To: \"\xc2\x85\" <"),
            ("NUL in a header name", "Max-Forwards", b"Max\0Forwards"),
            ("BEL in CSeq", "CSeq: 1", b"CSeq: \x071"),
            ("NUL in method", "OPTIONS", b"OPTI\0NS"),
        ];
        for (what, from, to) in cases {
            let bad = mutate(&ok, from, to);
            let got = request_line_problem(&bad);
            assert_eq!(got.map(|p| p.0), Some(400), "{what}: {got:?}");
        }
        // HTAB is LWS, and UTF-8 is allowed in display names (RFC 3261 §25.1 TEXT-UTF8).
        let tab = mutate(&ok, "To: <", "To: \"Zo\u{eb}\"\t<".as_bytes());
        assert_eq!(request_line_problem(&tab), None);
        // The body is not the head: any byte may appear there.
        let mut body = format!("OPTIONS sip:a@b SIP/2.0\r\n{HEAD}Content-Type: application/sdp\r\nContent-Length: 3\r\n\r\n").into_bytes();
        body.extend_from_slice(b"\0\x01\xff");
        assert_eq!(request_line_problem(&body), None);
    }

    /// Percent-decoding the called or calling number must not produce control characters or
    /// invalid UTF-8 (they would reach log lines and audit records): 400.
    #[test]
    fn numbers_that_decode_to_control_characters() {
        let ok =
            format!("INVITE sip:%2B1555@b SIP/2.0\r\n{HEAD}\r\n").replace("1 OPTIONS", "1 INVITE");
        assert_eq!(header_problem(&req(&ok)), None);
        for (what, from, to) in [
            (
                "CRLF in the Request-URI user",
                "sip:%2B1555@b",
                "sip:%0d%0aX-Evil:%201@b",
            ),
            ("NUL in the Request-URI user", "sip:%2B1555@b", "sip:%00@b"),
            (
                "bad UTF-8 in the Request-URI user",
                "sip:%2B1555@b",
                "sip:%ff%fe@b",
            ),
            ("LF in a tel: URI", "sip:%2B1555@b", "tel:+1555%0A"),
            (
                "LF in the From user",
                "From: <sip:a@b>",
                "From: <sip:%0Aa@b>",
            ),
            ("ESC in the To user", "To: <sip:x@y>", "To: <sip:%1b[2J@y>"),
        ] {
            let bad = req(&ok.replacen(from, to, 1));
            assert_eq!(header_problem(&bad).map(|p| p.0), Some(400), "{what}");
            for n in [bad.called_number(), bad.caller_number()]
                .into_iter()
                .flatten()
            {
                assert!(!n.chars().any(char::is_control), "{what}: {n:?}");
            }
        }
    }

    /// Bodies: only what sbc understands (RFC 3261 §21.4.13, RFC 5621 §9): 415.
    #[test]
    fn bodies_sbc_does_not_understand_are_415() {
        let with = |method: &str, extra: &str, body: &str| {
            req(&format!(
                "{method} sip:a@b SIP/2.0\r\n{}{extra}Content-Length: {}\r\n\r\n{body}",
                HEAD.replace("1 OPTIONS", &format!("1 {method}")),
                body.len()
            ))
        };
        let sdp = "v=0\r\n";
        for (what, method, extra, body, want) in [
            (
                "SDP",
                "INVITE",
                "Content-Type: application/sdp\r\n",
                sdp,
                None,
            ),
            (
                "SDP, parameters and case",
                "INVITE",
                "c: Application/SDP ; charset=utf-8\r\n",
                sdp,
                None,
            ),
            ("no body, no type", "BYE", "", "", None),
            (
                "identity encoding",
                "INVITE",
                "Content-Type: application/sdp\r\nContent-Encoding: Identity\r\n",
                sdp,
                None,
            ),
            (
                "DTMF in INFO",
                "INFO",
                "Content-Type: application/dtmf-relay\r\n",
                "Signal=5\r\n",
                None,
            ),
            (
                "ACK is never answered",
                "ACK",
                "Content-Type: text/plain\r\n",
                "hi",
                None,
            ),
            ("body without Content-Type", "INVITE", "", sdp, Some(415)),
            (
                "text/plain",
                "INVITE",
                "Content-Type: text/plain\r\n",
                sdp,
                Some(415),
            ),
            (
                "SDP-ish prefix",
                "INVITE",
                "Content-Type: application/sdpx\r\n",
                sdp,
                Some(415),
            ),
            (
                "multipart",
                "INVITE",
                "Content-Type: multipart/mixed;boundary=x\r\n",
                "--x\r\n",
                Some(415),
            ),
            (
                "gzip",
                "INVITE",
                "Content-Type: application/sdp\r\nContent-Encoding: gzip\r\n",
                sdp,
                Some(415),
            ),
            (
                "compact gzip",
                "UPDATE",
                "Content-Type: application/sdp\r\ne: identity, gzip\r\n",
                sdp,
                Some(415),
            ),
            (
                "XML in a re-INVITE",
                "INVITE",
                "Content-Type: application/xml\r\n",
                "<x/>",
                Some(415),
            ),
            (
                "SDP in INFO",
                "INFO",
                "Content-Type: application/sdp\r\n",
                sdp,
                Some(415),
            ),
        ] {
            let got = header_problem(&with(method, extra, body));
            assert_eq!(got.map(|p| p.0), want, "{what}: {got:?}");
        }
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

    #[test]
    fn escaped_quotes_inside_a_quoted_string_do_not_open_another() {
        // RFC 4475 §3.1.1.1 (wsinv): valid; §3.1.2.17 (quotbal): unterminated.
        assert!(!quoted_string_unterminated(
            r#""J Rosenberg \\\"" <sip:jdrosen@example.com>"#
        ));
        assert!(!quoted_string_unterminated(r#""a \\" <sip:a@b>"#));
        assert!(quoted_string_unterminated(
            r#""Mr. J. User <sip:j.user@example.com>"#
        ));
        assert!(quoted_string_unterminated(r#""open \" <sip:a@b>"#));
        assert!(!quoted_string_unterminated(r"sip:a\b@example.com"));
    }
}
