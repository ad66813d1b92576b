//! Status callbacks: Twilio's call progress webhooks (`StatusCallbackEvent`: initiated, ringing,
//! answered, completed), POSTed form-encoded to a route's `status_callback` and signed with
//! `X-Twilio-Signature` (base64 of HMAC-SHA1 keyed with the route account's auth token, over the
//! URL followed by each parameter's name and value, sorted by name), so existing webhook
//! validators (the `twilio` library's `RequestValidator`) accept them.
//!
//! Delivery is off the call's path: the call task hands a [`Delivery`] to a bounded queue
//! (`try_send`: a full queue drops it and counts it) and goes on. A worker delivers up to
//! [`CONCURRENCY`] at once, each attempt within [`ATTEMPT_TIMEOUT`], [`ATTEMPTS`] attempts with
//! a doubling pause; a delivery that never got a 2xx is counted in
//! `sbc_status_callback_failures_total{reason}`. Order between deliveries is not guaranteed
//! beyond `SequenceNumber`, as with Twilio.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use tokio::sync::{mpsc, Semaphore};
use tracing::{debug, info, warn, Instrument};

use crate::config::{AuthToken, StatusCallback};
use crate::metrics as m;

/// Deliveries waiting at most.
const QUEUE: usize = 1024;
/// Deliveries in flight at most.
const CONCURRENCY: usize = 16;
/// Connect, TLS, request and response head of one attempt.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
const ATTEMPTS: u32 = 3;
const FIRST_PAUSE: Duration = Duration::from_millis(500);

/// One webhook to deliver.
pub struct Delivery {
    pub callback: StatusCallback,
    pub token: AuthToken,
    pub params: Vec<(String, String)>,
    pub tls: Arc<rustls::ClientConfig>,
}

/// The delivery queue's sending side.
pub struct Callbacks {
    tx: mpsc::Sender<Delivery>,
}

impl Callbacks {
    /// Starts the delivery worker (inside a tokio runtime).
    pub fn spawn() -> Callbacks {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(worker(rx));
        Callbacks { tx }
    }

    /// Queues a delivery; never waits (a full queue drops it, counted).
    pub fn send(&self, d: Delivery) {
        if self.tx.try_send(d).is_err() {
            warn!("status callback queue full: callback dropped");
            m::status_callback_failed("queue_full");
        }
    }
}

async fn worker(mut rx: mpsc::Receiver<Delivery>) {
    let slots = Arc::new(Semaphore::new(CONCURRENCY));
    while let Some(d) = rx.recv().await {
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        tokio::spawn(
            async move {
                let _permit = permit;
                deliver(d).await;
            }
            .in_current_span(),
        );
    }
}

async fn deliver(d: Delivery) {
    let signature = signature(d.token.expose(), &d.callback.url, &d.params);
    let body = serde_urlencoded::to_string(&d.params).unwrap_or_default();
    let mut pause = FIRST_PAUSE;
    let mut last = String::new();
    for attempt in 1..=ATTEMPTS {
        match tokio::time::timeout(ATTEMPT_TIMEOUT, post(&d, &signature, &body)).await {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                debug!(url = %d.callback.url, status, attempt, "status callback delivered");
                return;
            }
            Ok(Ok(status)) => last = format!("HTTP {status}"),
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        if attempt < ATTEMPTS {
            tokio::time::sleep(pause).await;
            pause *= 2;
        }
    }
    info!(url = %d.callback.url, error = %last, "status callback not delivered");
    m::status_callback_failed("undelivered");
}

/// One POST; the response status.
async fn post(d: &Delivery, signature: &str, body: &str) -> Result<u16, String> {
    let cb = &d.callback;
    let (mut sender, conn) =
        super::https_client((cb.host.as_str(), cb.port), &cb.host, Arc::clone(&d.tls)).await?;
    let host = if cb.port == 443 {
        cb.host.clone()
    } else {
        format!("{}:{}", cb.host, cb.port)
    };
    let req = hyper::Request::post(cb.target.as_str())
        .header(hyper::header::HOST, host)
        .header(
            hyper::header::CONTENT_TYPE,
            "application/x-www-form-urlencoded",
        )
        .header(hyper::header::USER_AGENT, "sbc")
        .header("X-Twilio-Signature", signature)
        .body(Full::new(Bytes::from(body.to_string())))
        .map_err(|e| format!("request: {e}"))?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"));
    conn.abort();
    Ok(resp?.status().as_u16())
}

/// Twilio's webhook signature: base64(HMAC-SHA1(token, url + name1 + value1 + name2 + ...)),
/// parameters sorted by name (then value).
pub fn signature(token: &str, url: &str, params: &[(String, String)]) -> String {
    let mut sorted: Vec<&(String, String)> = params.iter().collect();
    sorted.sort();
    // HMAC takes a key of any length: `new_from_slice` cannot fail.
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(token.as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(url.as_bytes());
    for (k, v) in sorted {
        mac.update(k.as_bytes());
        mac.update(v.as_bytes());
    }
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Computed with the `twilio` Python library 9.13 (`RequestValidator("12345").compute_signature`)
    /// for Twilio's documented example request.
    #[test]
    fn signature_matches_the_twilio_library() {
        let params: Vec<(String, String)> = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+12349013030"),
            ("Digits", "1234"),
            ("From", "+12349013030"),
            ("To", "+18005551212"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let mut reversed = params.clone();
        reversed.reverse();
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        assert_eq!(
            signature("12345", url, &params),
            signature("12345", url, &reversed)
        );
        assert_eq!(signature("12345", url, &params), EXPECTED);
    }

    const EXPECTED: &str = "0/KCTR6DLpKmkAf8muzZqo1nDgQ=";
}
