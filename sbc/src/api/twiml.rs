//! The little TwiML sbc understands in `POST .../Calls/{Sid}.json` `Twiml=`: one verb inside
//! `<Response>`: `<Hangup/>`, `<Dial>+E164</Dial>`, `<Dial><Number>+E164</Number></Dial>` or
//! `<Dial><Sip>sip:…</Sip></Dial>`. Anything else is refused with a message that says what is
//! understood; nothing is ignored silently (a `<Say>` that does not happen would mislead).

/// What a TwiML document asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Verb {
    Hangup,
    /// A transfer to `tel:+E164` or a `sip:`/`sips:` URI.
    Dial(String),
}

const UNDERSTOOD: &str = "sbc understands only <Response><Hangup/></Response>, <Response><Dial>+E164</Dial></Response>, <Dial><Number>+E164</Number></Dial> and <Dial><Sip>sip:...</Sip></Dial>";

/// Parses `text`; the error is the message for the 400 answer.
pub fn parse(text: &str) -> Result<Verb, String> {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("<?xml") {
        let end = rest
            .find("?>")
            .ok_or_else(|| format!("TwiML: unterminated XML declaration; {UNDERSTOOD}"))?;
        t = rest[end + 2..].trim();
    }
    let body = strip_element(t, "Response")
        .ok_or_else(|| format!("TwiML must be one <Response> element; {UNDERSTOOD}"))?;
    if body.is_empty() {
        return Err(format!("TwiML <Response> is empty; {UNDERSTOOD}"));
    }
    if body == "<Hangup/>" || body == "<Hangup />" || strip_element(body, "Hangup") == Some("") {
        return Ok(Verb::Hangup);
    }
    if let Some(inner) = strip_element(body, "Dial") {
        let target = if let Some(n) = strip_element(inner, "Number") {
            number(n)?
        } else if let Some(s) = strip_element(inner, "Sip") {
            sip_uri(s)?
        } else if inner.starts_with('<') {
            return Err(format!(
                "TwiML <Dial> holds something other than a number, <Number> or <Sip>; {UNDERSTOOD}"
            ));
        } else {
            number(inner)?
        };
        return Ok(Verb::Dial(target));
    }
    let name: String = body
        .trim_start_matches('<')
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
        .take(32)
        .collect();
    Err(format!(
        "TwiML verb <{name}> is not supported; {UNDERSTOOD}"
    ))
}

/// The content of `<name>...</name>` when `s` is exactly that element (no attributes).
fn strip_element<'a>(s: &'a str, name: &str) -> Option<&'a str> {
    let open = format!("<{name}>");
    let close = format!("</{name}>");
    s.strip_prefix(open.as_str())?
        .strip_suffix(close.as_str())
        .map(str::trim)
}

/// A transfer target as the agent's `transfer` message may give it: `tel:+E164`, `+E164` or a
/// `sip:`/`sips:` URI; normalised to `tel:+E164` or the URI.
pub fn transfer_target(to: &str) -> Option<String> {
    let t = to.trim();
    if t.starts_with("sip:") || t.starts_with("sips:") {
        sip_uri(t).ok()
    } else {
        number(t.strip_prefix("tel:").unwrap_or(t)).ok()
    }
}

fn number(n: &str) -> Result<String, String> {
    let n = n.trim();
    let digits = n.strip_prefix('+').unwrap_or("");
    if (1..=15).contains(&digits.len()) && digits.chars().all(|c| c.is_ascii_digit()) {
        Ok(format!("tel:{n}"))
    } else {
        Err(format!(
            "TwiML <Dial>: {:?} is not a +E.164 number",
            truncate(n)
        ))
    }
}

fn sip_uri(s: &str) -> Result<String, String> {
    let s = s.trim();
    let ok = (s.starts_with("sip:") || s.starts_with("sips:"))
        && s.len() <= 256
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '<' | '>' | '"'))
        && crate::call::uri_target(s).is_some();
    if ok {
        // `&amp;` in XML text; the URI itself keeps `&`.
        Ok(s.replace("&amp;", "&"))
    } else {
        Err(format!("TwiML <Sip>: {:?} is not a sip: URI", truncate(s)))
    }
}

fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn understood_documents() {
        assert_eq!(parse("<Response><Hangup/></Response>"), Ok(Verb::Hangup));
        assert_eq!(
            parse("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Response>\n  <Hangup></Hangup>\n</Response>"),
            Ok(Verb::Hangup)
        );
        assert_eq!(
            parse("<Response><Dial>+15550009999</Dial></Response>"),
            Ok(Verb::Dial("tel:+15550009999".into()))
        );
        assert_eq!(
            parse("<Response><Dial><Number>+15550009999</Number></Dial></Response>"),
            Ok(Verb::Dial("tel:+15550009999".into()))
        );
        assert_eq!(
            parse("<Response><Dial><Sip>sip:desk@pbx.example.com;transport=tls</Sip></Dial></Response>"),
            Ok(Verb::Dial("sip:desk@pbx.example.com;transport=tls".into()))
        );
    }

    #[test]
    fn everything_else_is_refused_with_a_reason() {
        for bad in [
            "",
            "<Response></Response>",
            "<Response><Say>hi</Say></Response>",
            "<Response><Hangup/><Say>hi</Say></Response>",
            "<Response><Dial>5550009999</Dial></Response>",
            "<Response><Dial><Sip>http://x</Sip></Dial></Response>",
            "<Response><Dial><Client>bob</Client></Dial></Response>",
            "<Hangup/>",
            "<?xml",
        ] {
            let e = parse(bad).unwrap_err();
            assert!(e.contains("TwiML"), "{bad}: {e}");
        }
        assert!(parse("<Response><Say>x</Say></Response>")
            .unwrap_err()
            .contains("<Say>"));
    }
}
