//! `Url=` of `POST .../Calls.json`: the TwiML document of a new outbound call, fetched over
//! HTTPS before the API answers (docs/outbound.md, "TwiML by URL").
//!
//! What is fetched is bounded on every side, because the URL comes from an API caller:
//! - only `https://` URLs that start with one of `[api] twiml_url_prefixes` (each
//!   `https://host[:port]/path/`, so the authority is fixed by configuration; none configured
//!   means `Url=` is refused);
//! - the server is verified with the status callbacks' client config (the SIP listener's
//!   version and suite policy, `[api] callback_ca_bundle` or the webpki roots, ALPN `http/1.1`);
//! - one deadline ([`FETCH_TIMEOUT`]) over connect, TLS, request, response and body;
//! - a body of at most [`MAX_DOCUMENT`] bytes;
//! - redirects are not followed: a 3xx is a failed fetch (a redirect would leave the prefix).
//!
//! The request is Twilio's: `POST` (or `GET` with `Method=GET`) with the call's parameters
//! (form-encoded for POST), signed with `X-Twilio-Signature` under the account's auth token as
//! status callbacks are, so a Twilio webhook validator accepts it.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};

/// Deadline of the whole fetch.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest TwiML document read.
pub const MAX_DOCUMENT: usize = 64 * 1024;

/// Why a fetch failed: the message of the API's 400 answer.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FetchError {
    /// The URL is not `https://host[:port]/...` or not under a configured prefix.
    #[error("Url {0}")]
    Refused(String),
    /// Connect, TLS or HTTP failed, or the deadline passed.
    #[error("Url fetch failed: {0}")]
    Transport(String),
    /// The server answered something other than 2xx (a 3xx included: redirects are not followed).
    #[error("Url fetch answered HTTP {0}{1}")]
    Status(u16, &'static str),
    /// The body was larger than [`MAX_DOCUMENT`] or not UTF-8.
    #[error("Url document {0}")]
    Body(String),
}

/// Where to fetch: checked against the prefixes.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
    /// Path and query, as sent in the request line.
    pub path: String,
}

/// Checks `url` against `prefixes` (`https://host[:port]/...`, each ending its authority with
/// `/`, as config enforces) and splits it.
pub fn target(url: &str, prefixes: &[String]) -> Result<Target, FetchError> {
    if prefixes.is_empty() {
        return Err(FetchError::Refused(
            "is not accepted: [api] twiml_url_prefixes is not configured".into(),
        ));
    }
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(FetchError::Refused("is not a URL".into()));
    }
    if !prefixes.iter().any(|p| url.starts_with(p.as_str())) {
        return Err(FetchError::Refused(
            "is not under one of [api] twiml_url_prefixes".into(),
        ));
    }
    let uri: hyper::Uri = url
        .parse()
        .map_err(|_| FetchError::Refused("is not a URL".into()))?;
    if uri.scheme_str() != Some("https") {
        return Err(FetchError::Refused("must be https://".into()));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| FetchError::Refused("has no host".into()))?;
    if authority.as_str().contains('@') {
        return Err(FetchError::Refused("must not hold credentials".into()));
    }
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    Ok(Target {
        host,
        port: authority.port_u16().unwrap_or(443),
        path: uri
            .path_and_query()
            .map_or_else(|| "/".to_string(), |p| p.as_str().to_string()),
    })
}

/// Fetches the document at `target` (from [`target`]) within [`FETCH_TIMEOUT`].
/// `params` go in the form body for POST; `signature` is the `X-Twilio-Signature` value.
pub async fn fetch(
    target: &Target,
    post: bool,
    params: &[(String, String)],
    signature: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, FetchError> {
    match tokio::time::timeout(
        FETCH_TIMEOUT,
        fetch_inner(target, post, params, signature, tls),
    )
    .await
    {
        Ok(r) => r,
        Err(_) => Err(FetchError::Transport(format!(
            "no document within {} s",
            FETCH_TIMEOUT.as_secs()
        ))),
    }
}

async fn fetch_inner(
    t: &Target,
    post: bool,
    params: &[(String, String)],
    signature: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<String, FetchError> {
    let transport =
        |what: &str, e: &dyn std::fmt::Display| FetchError::Transport(format!("{what}: {e}"));
    let (mut sender, conn) = super::https_client((t.host.as_str(), t.port), &t.host, tls)
        .await
        .map_err(FetchError::Transport)?;
    let host = if t.port == 443 {
        t.host.clone()
    } else {
        format!("{}:{}", t.host, t.port)
    };
    let builder = if post {
        hyper::Request::post(t.path.as_str()).header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
    } else {
        hyper::Request::get(t.path.as_str())
    };
    let body = if post {
        serde_urlencoded::to_string(params).unwrap_or_default()
    } else {
        String::new()
    };
    let req = builder
        .header(hyper::header::HOST, host)
        .header(hyper::header::USER_AGENT, "sbc")
        .header(hyper::header::ACCEPT, "application/xml, text/xml")
        .header("X-Twilio-Signature", signature)
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| transport("request", &e))?;
    let result = async {
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| transport("HTTP", &e))?;
        let status = resp.status().as_u16();
        if !(200..300).contains(&status) {
            let note = if (300..400).contains(&status) {
                " (redirects are not followed)"
            } else {
                ""
            };
            return Err(FetchError::Status(status, note));
        }
        let bytes = Limited::new(resp.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| {
                if e.downcast_ref::<http_body_util::LengthLimitError>()
                    .is_some()
                {
                    FetchError::Body(format!("is larger than {MAX_DOCUMENT} bytes"))
                } else {
                    transport("HTTP body", &e)
                }
            })?
            .to_bytes();
        String::from_utf8(bytes.to_vec()).map_err(|_| FetchError::Body("is not UTF-8".into()))
    }
    .await;
    conn.abort();
    result
}

/// What `[api] twiml_url_prefixes` accepts: `https://host[:port]/` followed by any path, so
/// that a URL starting with the prefix has exactly the prefix's authority.
pub fn valid_prefix(p: &str) -> bool {
    let Some(rest) = p.strip_prefix("https://") else {
        return false;
    };
    let Some(slash) = rest.find('/') else {
        return false;
    };
    let authority = &rest[..slash];
    !authority.is_empty()
        && !authority.contains('@')
        && p.parse::<hyper::Uri>().is_ok()
        && !p.chars().any(|c| c.is_control() || c.is_whitespace())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_must_be_under_a_prefix() {
        let prefixes = vec!["https://twiml.example.com/app/".to_string()];
        assert_eq!(
            target("https://twiml.example.com/app/call.xml?x=1", &prefixes).unwrap(),
            Target {
                host: "twiml.example.com".into(),
                port: 443,
                path: "/app/call.xml?x=1".into()
            }
        );
        for bad in [
            "https://twiml.example.com.evil.net/app/x",
            "https://twiml.example.com/other",
            "http://twiml.example.com/app/x",
            "https://twiml.example.com/app/x y",
            "ftp://x",
        ] {
            assert!(target(bad, &prefixes).is_err(), "{bad}");
        }
        assert!(target("https://twiml.example.com/app/x", &[]).is_err());
        let ported = vec!["https://127.0.0.1:8443/".to_string()];
        assert_eq!(
            target("https://127.0.0.1:8443/t.xml", &ported)
                .unwrap()
                .port,
            8443
        );
        assert!(target("https://127.0.0.1:8444/t.xml", &ported).is_err());
    }

    #[test]
    fn prefixes_fix_the_authority() {
        assert!(valid_prefix("https://twiml.example.com/"));
        assert!(valid_prefix("https://127.0.0.1:8443/app/"));
        assert!(!valid_prefix("https://twiml.example.com"));
        assert!(!valid_prefix("http://twiml.example.com/"));
        assert!(!valid_prefix("https://user@twiml.example.com/"));
        assert!(!valid_prefix("https:///"));
    }
}
