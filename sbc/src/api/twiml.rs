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

/// What `<Response><Connect><Stream url="wss://…">…</Stream></Connect></Response>` asks for: the
/// TwiML of a call sbc places (`POST .../Calls.json`).
#[derive(Debug, PartialEq, Eq)]
pub struct Stream {
    pub url: String,
    /// `<Parameter name=… value=…/>`, in order: the agent's `customParameters`.
    pub parameters: Vec<(String, String)>,
}

const STREAM_UNDERSTOOD: &str = "a call sbc places understands only <Response><Connect><Stream url=\"wss://...\"> with optional <Parameter name=\"...\" value=\"...\"/> children</Stream></Connect></Response>";

/// Most `<Parameter>`s accepted (Twilio's own limit is similar in spirit: a few small values).
const MAX_PARAMETERS: usize = 32;

/// Parses the TwiML of a new outbound call; the error is the message for the 400 answer.
pub fn parse_stream(text: &str) -> Result<Stream, String> {
    let mut t = text.trim();
    if let Some(rest) = t.strip_prefix("<?xml") {
        let end = rest
            .find("?>")
            .ok_or_else(|| format!("TwiML: unterminated XML declaration; {STREAM_UNDERSTOOD}"))?;
        t = rest[end + 2..].trim();
    }
    let connect = strip_element(t, "Response")
        .and_then(|b| strip_element(b, "Connect"))
        .ok_or_else(|| format!("TwiML must be <Response><Connect>...; {STREAM_UNDERSTOOD}"))?;
    let (attrs, inner) = open_tag(connect, "Stream")
        .ok_or_else(|| format!("TwiML <Connect> must hold one <Stream>; {STREAM_UNDERSTOOD}"))?;
    let url = attr(&attrs, "url")
        .ok_or_else(|| format!("TwiML <Stream> needs a url attribute; {STREAM_UNDERSTOOD}"))?;
    if !url.starts_with("wss://") || url.len() > 512 {
        return Err(format!(
            "TwiML <Stream url>: {:?} is not a wss:// URL",
            truncate(&url)
        ));
    }
    let mut parameters = Vec::new();
    let mut rest = inner.trim();
    while !rest.is_empty() {
        let after = rest.strip_prefix("<Parameter").ok_or_else(|| {
            format!("TwiML <Stream> holds something other than <Parameter/>; {STREAM_UNDERSTOOD}")
        })?;
        let end = after.find("/>").ok_or_else(|| {
            format!("TwiML <Parameter> must be empty (<Parameter .../>); {STREAM_UNDERSTOOD}")
        })?;
        let attrs = attributes(&after[..end])?;
        let (Some(name), Some(value)) = (attr(&attrs, "name"), attr(&attrs, "value")) else {
            return Err(format!(
                "TwiML <Parameter> needs name and value; {STREAM_UNDERSTOOD}"
            ));
        };
        if name.is_empty() || name.len() > 64 || value.len() > 512 {
            return Err("TwiML <Parameter>: name up to 64 characters, value up to 512".into());
        }
        parameters.push((name, value));
        if parameters.len() > MAX_PARAMETERS {
            return Err(format!("TwiML: at most {MAX_PARAMETERS} <Parameter>s"));
        }
        rest = after[end + 2..].trim();
    }
    Ok(Stream { url, parameters })
}

/// `<name attrs>inner</name>` or `<name attrs/>`, exactly: (attributes, inner).
fn open_tag(s: &str, name: &str) -> Option<(Vec<(String, String)>, String)> {
    let after = s.strip_prefix('<')?.strip_prefix(name)?;
    if !after.starts_with([' ', '\t', '\n', '\r', '>', '/']) {
        return None;
    }
    let close_at = after.find('>')?;
    let head = &after[..close_at];
    if let Some(h) = head.strip_suffix('/') {
        if !after[close_at + 1..].trim().is_empty() {
            return None;
        }
        return Some((attributes(h).ok()?, String::new()));
    }
    let inner = after[close_at + 1..]
        .trim_end()
        .strip_suffix(format!("</{name}>").as_str())?;
    Some((attributes(head).ok()?, inner.to_string()))
}

/// `a="x" b='y'` with XML's five entities decoded.
fn attributes(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let eq = rest
            .find('=')
            .ok_or_else(|| format!("TwiML: malformed attributes {:?}", truncate(s)))?;
        let name = rest[..eq].trim().to_string();
        let after = rest[eq + 1..].trim_start();
        let quote = after
            .chars()
            .next()
            .filter(|c| *c == '"' || *c == '\'')
            .ok_or_else(|| format!("TwiML: attribute {name} is not quoted"))?;
        let end = after[1..]
            .find(quote)
            .ok_or_else(|| format!("TwiML: attribute {name} is not terminated"))?;
        let value = after[1..1 + end]
            .replace("&lt;", "<")
            .replace("&gt;", ">")
            .replace("&quot;", "\"")
            .replace("&apos;", "'")
            .replace("&amp;", "&");
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!("TwiML: bad attribute name {:?}", truncate(&name)));
        }
        out.push((name, value));
        rest = after[1 + end + 1..].trim_start();
    }
    Ok(out)
}

fn attr(attrs: &[(String, String)], name: &str) -> Option<String> {
    attrs
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.clone())
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
    #[test]
    fn connect_stream() {
        let s = parse_stream(r#"<Response><Connect><Stream url="wss://agent.example/ws?a=1&amp;b=2"><Parameter name="lead" value="42"/><Parameter name='q' value="a &quot;b&quot;" /></Stream></Connect></Response>"#).unwrap();
        assert_eq!(s.url, "wss://agent.example/ws?a=1&b=2");
        assert_eq!(
            s.parameters,
            vec![("lead".into(), "42".into()), ("q".into(), "a \"b\"".into())]
        );
        let s =
            parse_stream(r#"<Response><Connect><Stream url="wss://a/ws"/></Connect></Response>"#)
                .unwrap();
        assert!(s.parameters.is_empty());
        for bad in [
            r#"<Response><Connect><Stream url="ws://a/ws"/></Connect></Response>"#,
            r#"<Response><Connect><Stream/></Connect></Response>"#,
            r#"<Response><Say>x</Say></Response>"#,
            r#"<Response><Connect><Stream url="wss://a"><Say/></Stream></Connect></Response>"#,
            r#"<Response><Connect><Stream url="wss://a"><Parameter name="x"/></Stream></Connect></Response>"#,
            r#"<Response><Connect><Streamer url="wss://a"/></Connect></Response>"#,
        ] {
            assert!(parse_stream(bad).is_err(), "{bad}");
        }
    }
}
