//! The call-control API: a Twilio-compatible subset of `/2010-04-01/Accounts/{AccountSid}/Calls`
//! over HTTPS (HTTP/1.1, hyper), so that agents written for Twilio (Pipecat's
//! `TwilioFrameSerializer`, for one) can hang up, transfer and look up their calls. See
//! `docs/api.md` for what is answered and how.
//!
//! It never touches a call's state itself: it reads the [`registry::CallRegistry`] and sends
//! requests to the call's task through its mailbox (`CallInput`), with `try_send` (a full
//! mailbox is a 503, never a wait).

pub mod callbacks;
pub mod fetch;
pub mod forward;
pub mod registry;
pub mod twiml;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use rand::SeedableRng;
use serde_json::{json, Value};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::call::CallInput;
use crate::config::ApiConfig;
use crate::metrics as m;
use crate::shared::Shared;

/// A request sender on an HTTP/1.1 connection over TLS, and the task driving the connection
/// (abort it when done).
pub(crate) type HttpsClient = (
    hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    tokio::task::JoinHandle<hyper::Result<()>>,
);

/// Opens an HTTPS client connection to `addr`, verifying the server as `server_name` with
/// `tls`: the one client of status callbacks, `Url=` TwiML fetches and cluster forwarding. An
/// error names its step (`connect`, `server name`, `TLS`, `HTTP`). Callers bound it with their
/// own deadline.
pub(crate) async fn https_client(
    addr: impl tokio::net::ToSocketAddrs,
    server_name: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<HttpsClient, String> {
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls_pki_types::ServerName::try_from(server_name.to_string())
        .map_err(|e| format!("server name: {e}"))?;
    let stream = tokio_rustls::TlsConnector::from(tls)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS: {e}"))?;
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    Ok((sender, tokio::spawn(conn)))
}
use crate::sip::HangupCause;
use registry::{CallEntry, CallStatus};

/// Twilio's API version path segment.
const VERSION: &str = "2010-04-01";
/// Largest request body read (form-encoded parameters).
const MAX_BODY: usize = 16 * 1024;
/// Connections served at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 256;
/// Whole-request deadlines: TLS handshake, request head, body.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long `POST Status=completed` waits for the call to end before answering.
const HANGUP_WAIT: Duration = Duration::from_secs(2);
const PAGE_SIZE_DEFAULT: usize = 50;
const PAGE_SIZE_MAX: usize = 1000;

type Body = Full<Bytes>;

/// Serves the API on `listener` until the task is aborted.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let limiter = Arc::new(RateLimiter::default());
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                warn!(error = %e, "API accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        // The response head and body go out as separate TLS records: without this, Nagle holds
        // the second until the client's delayed ACK (~40 ms), twice for a forwarded request.
        let _ = tcp.set_nodelay(true);
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let shared = Arc::clone(&shared);
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            let _permit = permit;
            let Some(acceptor) = shared.live().api_acceptor.clone() else {
                return;
            };
            let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "API TLS handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "API TLS handshake timed out");
                    return;
                }
            };
            let svc = hyper::service::service_fn(move |req| {
                let shared = Arc::clone(&shared);
                let limiter = Arc::clone(&limiter);
                async move { Ok::<_, Infallible>(handle(&shared, &limiter, peer, req).await) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HEADER_TIMEOUT)
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            if let Err(e) = conn.await {
                debug!(%peer, error = %e, "API connection ended with an error");
            }
        });
    }
}

/// Which endpoint a request is for (the metrics label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    CallsList,
    CallCreate,
    CallFetch,
    CallUpdate,
    Other,
}

impl Route {
    fn label(self) -> &'static str {
        match self {
            Route::CallsList => "calls_list",
            Route::CallCreate => "call_create",
            Route::CallFetch => "call_fetch",
            Route::CallUpdate => "call_update",
            Route::Other => "other",
        }
    }
}

/// An answer: status and JSON.
struct Answer {
    status: StatusCode,
    body: Value,
}

impl Answer {
    fn ok(body: Value) -> Answer {
        Answer {
            status: StatusCode::OK,
            body,
        }
    }

    /// Twilio's error shape: `{"code", "message", "more_info", "status"}`.
    fn error(status: StatusCode, code: u32, message: impl Into<String>) -> Answer {
        Answer {
            status,
            body: json!({
                "code": code,
                "message": message.into(),
                "more_info": format!("https://www.twilio.com/docs/errors/{code}"),
                "status": status.as_u16(),
            }),
        }
    }

    fn not_found(what: &str) -> Answer {
        Answer::error(
            StatusCode::NOT_FOUND,
            20404,
            format!("The requested resource {what} was not found"),
        )
    }
}

async fn handle(
    shared: &Arc<Shared>,
    limiter: &RateLimiter,
    peer: SocketAddr,
    req: Request<Incoming>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (route, account, answer) = route_request(shared, limiter, req).await;
    let status = answer.status.as_u16();
    m::api_request(route.label(), status);
    // The access log: never the Authorization header, never the body.
    info!(
        target: "sbc::api",
        %peer,
        method = %method,
        path = %sanitize(&path),
        route = route.label(),
        account = account.as_deref().unwrap_or("-"),
        status,
        ms = started.elapsed().as_millis() as u64,
        "API request"
    );
    let mut resp = Response::new(Full::new(Bytes::from(answer.body.to_string())));
    *resp.status_mut() = answer.status;
    let h = resp.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if answer.status == StatusCode::UNAUTHORIZED {
        h.insert(
            hyper::header::WWW_AUTHENTICATE,
            hyper::header::HeaderValue::from_static("Basic realm=\"sbc API\""),
        );
    }
    resp
}

/// Printable, bounded copy of a request path for the log.
fn sanitize(path: &str) -> String {
    path.chars()
        .take(200)
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// Authenticates, rate-limits, and dispatches; returns the route, the authenticated account
/// and the answer.
async fn route_request(
    shared: &Arc<Shared>,
    limiter: &RateLimiter,
    req: Request<Incoming>,
) -> (Route, Option<String>, Answer) {
    let live = shared.live();
    let Some(api) = live.config.api.as_ref() else {
        return (Route::Other, None, Answer::not_found("/"));
    };
    let path = req.uri().path().to_string();
    let (path_account, rest) = match split_path(&path) {
        Some(x) => x,
        None => return (Route::Other, None, Answer::not_found(&sanitize(&path))),
    };
    let route = match (req.method(), &rest) {
        (&Method::GET, Rest::List) => Route::CallsList,
        (&Method::POST, Rest::List) => Route::CallCreate,
        (&Method::GET, Rest::Call(_)) => Route::CallFetch,
        (&Method::POST, Rest::Call(_)) => Route::CallUpdate,
        _ => Route::Other,
    };
    let Some(account) = authenticate(api, req.headers().get(hyper::header::AUTHORIZATION)) else {
        return (
            route,
            None,
            Answer::error(StatusCode::UNAUTHORIZED, 20003, "Authenticate"),
        );
    };
    if !limiter.allow(&account, api.requests_per_second, Instant::now()) {
        return (
            route,
            Some(account),
            Answer::error(
                StatusCode::TOO_MANY_REQUESTS,
                20429,
                "Too Many Requests: this account's request rate limit was exceeded",
            ),
        );
    }
    // Another account's path is answered as if it did not exist.
    if path_account != account {
        return (route, Some(account), Answer::not_found(&sanitize(&path)));
    }
    let answer = match (route, rest) {
        (Route::CallCreate, _) => create_call(shared, &account, req).await,
        // `[cluster]`: another instance's call is forwarded to it; the list gathers them all.
        (Route::CallFetch | Route::CallUpdate, Rest::Call(sid))
            if shared.calls.get(&sid).is_none() && forward::cluster_for(shared, &req).is_some() =>
        {
            match forward::cluster_for(shared, &req) {
                Some(c) => forward::call(c, &sid, &path, req).await,
                None => Answer::not_found(&sanitize(&path)),
            }
        }
        (Route::CallsList, _) => {
            let remote = match forward::cluster_for(shared, &req) {
                Some(c) => forward::remote_calls(c, &req).await,
                None => Ok(Vec::new()),
            };
            match remote {
                Ok(remote) => list_calls(shared, &account, req.uri().query().unwrap_or(""), remote),
                Err(a) => a,
            }
        }
        (Route::CallFetch, Rest::Call(sid)) => match owned_call(shared, &account, &sid) {
            Some(e) => Answer::ok(call_json(&e)),
            None => Answer::not_found(&sanitize(&path)),
        },
        (Route::CallUpdate, Rest::Call(sid)) => update_call(shared, &account, &sid, req).await,
        _ => Answer::error(StatusCode::METHOD_NOT_ALLOWED, 20004, "Method not allowed"),
    };
    (route, Some(account), answer)
}

enum Rest {
    List,
    Call(String),
}

/// `/2010-04-01/Accounts/{AC}/Calls.json` or `/2010-04-01/Accounts/{AC}/Calls/{CA}.json`.
fn split_path(path: &str) -> Option<(String, Rest)> {
    let rest = path.strip_prefix('/')?.strip_prefix(VERSION)?;
    let rest = rest.strip_prefix("/Accounts/")?;
    let (account, rest) = rest.split_once('/')?;
    if rest == "Calls.json" {
        return Some((account.to_string(), Rest::List));
    }
    let sid = rest.strip_prefix("Calls/")?.strip_suffix(".json")?;
    if sid.is_empty() || sid.len() > 64 || !sid.chars().all(|c| c.is_ascii_alphanumeric()) {
        return None;
    }
    Some((account.to_string(), Rest::Call(sid.to_string())))
}

/// HTTP Basic `AccountSid:AuthToken` (RFC 7617), compared in constant time against every
/// account (so the time taken does not tell which SIDs exist); the account SID on success.
fn authenticate(api: &ApiConfig, header: Option<&hyper::header::HeaderValue>) -> Option<String> {
    let value = header?.to_str().ok()?;
    let (scheme, b64) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || b64.len() > 1024 {
        return None;
    }
    let decoded = zeroize::Zeroizing::new(
        base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?,
    );
    let colon = decoded.iter().position(|&b| b == b':')?;
    let (user, pass) = (&decoded[..colon], &decoded[colon + 1..]);
    let mut found: Option<String> = None;
    for a in &api.accounts {
        let ok = a.sid.as_bytes().ct_eq(user) & a.auth_token.expose().as_bytes().ct_eq(pass);
        if bool::from(ok) {
            found = Some(a.sid.clone());
        }
    }
    found
}

/// The call `sid` if `account` owns it (another account's call does not exist for it).
fn owned_call(shared: &Shared, account: &str, sid: &str) -> Option<CallEntry> {
    shared
        .calls
        .get(sid)
        .filter(|e| e.account_sid.as_deref() == Some(account))
}

/// `remote`: other instances' calls (`forward::remote_calls`), merged by start time.
fn list_calls(shared: &Shared, account: &str, query: &str, remote: Vec<Value>) -> Answer {
    let params: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap_or_default();
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let page_size = match param("PageSize").map(str::parse::<usize>) {
        None => PAGE_SIZE_DEFAULT,
        Some(Ok(n)) if (1..=PAGE_SIZE_MAX).contains(&n) => n,
        Some(_) => {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                20001,
                format!("PageSize must be a number from 1 to {PAGE_SIZE_MAX}"),
            )
        }
    };
    let page = match param("Page").map(str::parse::<usize>) {
        None => 0,
        Some(Ok(n)) if n <= 1_000_000 => n,
        Some(_) => return Answer::error(StatusCode::BAD_REQUEST, 20001, "Page must be a number"),
    };
    let status = param("Status");
    if let Some(s) = status {
        const KNOWN: [&str; 8] = [
            "queued",
            "ringing",
            "in-progress",
            "canceled",
            "completed",
            "failed",
            "busy",
            "no-answer",
        ];
        if !KNOWN.contains(&s) {
            return Answer::error(
                StatusCode::BAD_REQUEST,
                20001,
                format!("Status must be one of {}", KNOWN.join(", ")),
            );
        }
    }
    let (to, from) = (param("To"), param("From"));
    let all = shared.calls.list(account, |e| {
        status.is_none_or(|s| e.status.as_str() == s)
            && to.is_none_or(|t| e.to == t)
            && from.is_none_or(|f| e.from == f)
    });
    let base = format!("/{VERSION}/Accounts/{account}/Calls.json");
    let filters: String = params
        .iter()
        .filter(|(k, _)| matches!(k.as_str(), "Status" | "To" | "From"))
        .map(|(k, v)| {
            format!(
                "&{}",
                serde_urlencoded::to_string([(k, v)]).unwrap_or_default()
            )
        })
        .collect();
    let page_uri = |p: usize| format!("{base}?PageSize={page_size}&Page={p}{filters}");
    let start = page.saturating_mul(page_size);
    let mut all: Vec<Value> = all.iter().map(call_json).collect();
    if !remote.is_empty() {
        all.extend(remote);
        all.sort_by_key(|c| std::cmp::Reverse(forward::start_time(c)));
    }
    let calls: Vec<Value> = all.iter().skip(start).take(page_size).cloned().collect();
    let has_next = all.len() > start.saturating_add(page_size);
    Answer::ok(json!({
        "calls": calls,
        "page": page,
        "page_size": page_size,
        "start": start,
        "end": start + calls.len().saturating_sub(1),
        "uri": page_uri(page),
        "first_page_uri": page_uri(0),
        "next_page_uri": if has_next { Value::from(page_uri(page + 1)) } else { Value::Null },
        "previous_page_uri": if page > 0 { Value::from(page_uri(page - 1)) } else { Value::Null },
    }))
}

/// Reads a form-encoded body within [`MAX_BODY`] and [`BODY_TIMEOUT`].
async fn form(req: Request<Incoming>) -> Result<Vec<(String, String)>, Answer> {
    let body = match tokio::time::timeout(
        BODY_TIMEOUT,
        Limited::new(req.into_body(), MAX_BODY).collect(),
    )
    .await
    {
        Ok(Ok(b)) => b.to_bytes(),
        Ok(Err(_)) => {
            return Err(Answer::error(
                StatusCode::PAYLOAD_TOO_LARGE,
                20001,
                format!("request body larger than {MAX_BODY} bytes"),
            ))
        }
        Err(_) => {
            return Err(Answer::error(
                StatusCode::REQUEST_TIMEOUT,
                20001,
                "request body too slow",
            ))
        }
    };
    serde_urlencoded::from_bytes(&body).map_err(|_| {
        Answer::error(
            StatusCode::BAD_REQUEST,
            20001,
            "the body must be application/x-www-form-urlencoded",
        )
    })
}

/// `POST .../Calls.json`: an outbound call through the account's trunk (`outbound.rs`).
async fn create_call(shared: &Arc<Shared>, account: &str, req: Request<Incoming>) -> Answer {
    let params = match form(req).await {
        Ok(p) => p,
        Err(a) => return a,
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let bad = |code: u32, msg: &str| Answer::error(StatusCode::BAD_REQUEST, code, msg);
    if param("MachineDetection").is_some() || param("AsyncAmd").is_some() {
        return bad(21626, "MachineDetection is not implemented by sbc");
    }
    let (Some(to), Some(from)) = (param("To"), param("From")) else {
        return bad(21201, "To and From are required");
    };
    let post = match param("Method") {
        None | Some("POST") => true,
        Some("GET") => false,
        Some(_) => return bad(21205, "Method must be GET or POST"),
    };
    let mut call_sid = None;
    let twiml = match (param("Twiml"), param("Url")) {
        (Some(t), None) => t.to_string(),
        (None, Some(url)) => {
            // A request refused anyway (trunk policy) makes no connection.
            if let Err(e) = crate::outbound::precheck(shared, account, from, to) {
                crate::metrics::outbound_call("refused");
                return Answer::error(
                    StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
                    e.code,
                    e.message,
                );
            }
            // Fetched before the 201, so that a bad document is this request's 400.
            let sid = format!(
                "CA{}",
                crate::call::hex32(&mut rand::rngs::StdRng::from_entropy())
            );
            match fetch_twiml(shared, account, url, post, &sid, to, from).await {
                Ok(doc) => {
                    call_sid = Some(sid);
                    doc
                }
                Err(e) => {
                    let code = match e {
                        fetch::FetchError::Refused(_) => 21205,
                        _ => 11200,
                    };
                    return bad(code, &e.to_string());
                }
            }
        }
        (Some(_), Some(_)) => return bad(21205, "send Twiml or Url, not both"),
        (None, None) => {
            return bad(
                21205,
                "Twiml or Url is required (<Response><Connect><Stream url=...>)",
            )
        }
    };
    let timeout = match param("Timeout").map(str::parse::<u64>) {
        None => None,
        Some(Ok(n)) if (1..=600).contains(&n) => Some(Duration::from_secs(n)),
        Some(_) => return bad(21210, "Timeout must be a number of seconds from 1 to 600"),
    };
    let create = crate::outbound::CreateCall {
        to: to.to_string(),
        from: from.to_string(),
        timeout,
        twiml,
        call_sid,
        status_callback: param("StatusCallback").map(str::to_string),
        status_callback_events: param("StatusCallbackEvent").map(str::to_string),
    };
    match crate::outbound::create(shared, account, create) {
        Ok(entry) => Answer {
            status: StatusCode::CREATED,
            body: call_json(&entry),
        },
        Err(e) => Answer::error(
            StatusCode::from_u16(e.status).unwrap_or(StatusCode::BAD_REQUEST),
            e.code,
            e.message,
        ),
    }
}

/// Fetches the TwiML at `url` (`fetch.rs`): Twilio's call parameters, signed with the
/// account's auth token.
async fn fetch_twiml(
    shared: &Shared,
    account: &str,
    url: &str,
    post: bool,
    call_sid: &str,
    to: &str,
    from: &str,
) -> Result<String, fetch::FetchError> {
    let live = shared.live();
    let Some(api) = live.config.api.as_ref() else {
        return Err(fetch::FetchError::Refused(
            "is not accepted: no [api]".into(),
        ));
    };
    let target = fetch::target(url, &api.twiml_url_prefixes)?;
    let (Some(tls), Some(acc)) = (
        live.callback_tls.clone(),
        api.accounts.iter().find(|a| a.sid == account),
    ) else {
        return Err(fetch::FetchError::Refused(
            "is not accepted: no client TLS config".into(),
        ));
    };
    let params: Vec<(String, String)> = if post {
        [
            ("AccountSid", account),
            ("ApiVersion", VERSION),
            ("CallSid", call_sid),
            ("CallStatus", "queued"),
            ("Called", to),
            ("Caller", from),
            ("Direction", "outbound-api"),
            ("From", from),
            ("To", to),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    } else {
        Vec::new()
    };
    let signature = callbacks::signature(acc.auth_token.expose(), url, &params);
    fetch::fetch(&target, post, &params, &signature, tls).await
}

async fn update_call(shared: &Shared, account: &str, sid: &str, req: Request<Incoming>) -> Answer {
    let params = match form(req).await {
        Ok(p) => p,
        Err(a) => return a,
    };
    let param = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let Some(entry) = owned_call(shared, account, sid) else {
        return Answer::not_found(&format!("/{VERSION}/Accounts/{account}/Calls/{sid}.json"));
    };
    let verb =
        match (param("Status"), param("Twiml"), param("Url")) {
            (Some("completed"), None, None) => twiml::Verb::Hangup,
            // Twilio: `canceled` ends a queued or ringing call, and nothing else.
            (Some("canceled"), None, None) => {
                if matches!(entry.status, CallStatus::Queued | CallStatus::Ringing) {
                    twiml::Verb::Hangup
                } else {
                    return Answer::ok(call_json(&entry));
                }
            }
            (Some(other), None, None) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    21220,
                    format!(
                        "Status={:?} is not supported: only Status=completed (hang up)",
                        other.chars().take(32).collect::<String>()
                    ),
                )
            }
            (None, Some(doc), None) => match twiml::parse(doc) {
                Ok(v) => v,
                Err(msg) => return Answer::error(StatusCode::BAD_REQUEST, 12100, msg),
            },
            (None, None, Some(_)) => return Answer::error(
                StatusCode::BAD_REQUEST,
                21205,
                "Url is not supported: sbc does not fetch TwiML; send Twiml= or Status=completed",
            ),
            (None, None, None) => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    20001,
                    "nothing to do: send Status=completed or Twiml=",
                )
            }
            _ => {
                return Answer::error(
                    StatusCode::BAD_REQUEST,
                    20001,
                    "send exactly one of Status, Twiml or Url",
                )
            }
        };
    if entry.status.is_final() {
        return match verb {
            // Hanging up an ended call changes nothing: its resource, as Twilio answers.
            twiml::Verb::Hangup => Answer::ok(call_json(&entry)),
            twiml::Verb::Dial(_) => Answer::error(
                StatusCode::BAD_REQUEST,
                21220,
                "Call is not in-progress. Cannot transfer.",
            ),
        };
    }
    let Some(mailbox) = entry.mailbox.clone() else {
        return Answer::ok(call_json(&entry));
    };
    let input = match &verb {
        twiml::Verb::Hangup => CallInput::Hangup(HangupCause::Api),
        twiml::Verb::Dial(to) => {
            if !transfer_allowed(&entry.transfer_allow, to) {
                return Answer::error(
                    StatusCode::FORBIDDEN,
                    20403,
                    format!("transfer to {to} is not in this route's transfer_allow list"),
                );
            }
            CallInput::Transfer(to.clone())
        }
    };
    let mut changes = shared.calls.subscribe();
    if mailbox.try_send(input).is_err() {
        return Answer::error(
            StatusCode::SERVICE_UNAVAILABLE,
            20503,
            "the call is busy; try again",
        );
    }
    if verb == twiml::Verb::Hangup {
        // Answer with the call ended when it ends promptly (it normally does: the BYE is sent
        // at once), else with what is known after HANGUP_WAIT.
        let deadline = tokio::time::Instant::now() + HANGUP_WAIT;
        while shared.calls.get(sid).is_some_and(|e| !e.status.is_final()) {
            if tokio::time::timeout_at(deadline, changes.changed())
                .await
                .is_err()
            {
                break;
            }
        }
    }
    match shared.calls.get(sid) {
        Some(e) => Answer::ok(call_json(&e)),
        None => Answer::ok(call_json(&entry)),
    }
}

/// Whether `to` (`tel:+E164` or a SIP URI) is allowed by `allow` (number prefixes, exact URIs).
pub fn transfer_allowed(allow: &[String], to: &str) -> bool {
    match to.strip_prefix("tel:") {
        Some(number) => allow
            .iter()
            .any(|a| a.starts_with('+') && number.starts_with(a.as_str())),
        None => allow.iter().any(|a| a == to),
    }
}

/// Twilio's call resource.
pub fn call_json(e: &CallEntry) -> Value {
    let account = e.account_sid.clone().unwrap_or_default();
    let start = rfc2822(e.start);
    let duration = e
        .end
        .map(|end| (end - e.start).whole_seconds().max(0).to_string());
    json!({
        "sid": e.sid,
        "account_sid": account,
        "from": e.from,
        "to": e.to,
        "from_formatted": e.from,
        "to_formatted": e.to,
        "status": e.status.as_str(),
        "direction": e.direction,
        "start_time": start,
        "end_time": e.end.map(rfc2822),
        "duration": duration,
        "date_created": start,
        "date_updated": rfc2822(e.end.unwrap_or(e.start)),
        "parent_call_sid": Value::Null,
        "answered_by": Value::Null,
        "caller_name": Value::Null,
        "forwarded_from": Value::Null,
        "price": Value::Null,
        "price_unit": "USD",
        "api_version": VERSION,
        "uri": format!("/{VERSION}/Accounts/{account}/Calls/{}.json", e.sid),
        // sbc's own fields (Twilio clients ignore unknown fields).
        "sbc_end_reason": e.end_reason,
        "transfer": e.transfer.as_ref().map(|t| json!({
            "to": t.to,
            "outcome": t.outcome,
            "sip_status": t.sip_status,
        })),
    })
}

/// Twilio's date format: RFC 2822 in UTC (`Fri, 04 Dec 2026 12:07:26 +0000`).
fn rfc2822(t: time::OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc2822)
        .unwrap_or_default()
}

/// A token bucket per account: `rate` per second, burst of twice that.
#[derive(Default)]
struct RateLimiter(Mutex<HashMap<String, (f64, Instant)>>);

impl RateLimiter {
    fn allow(&self, account: &str, rate: u32, now: Instant) -> bool {
        let rate = f64::from(rate.max(1));
        let burst = rate * 2.0;
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let b = map.entry(account.to_string()).or_insert((burst, now));
        b.0 = (b.0 + now.saturating_duration_since(b.1).as_secs_f64() * rate).min(burst);
        b.1 = now;
        if b.0 >= 1.0 {
            b.0 -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{ApiAccount, AuthToken, TlsIdentity, TlsVersion};

    fn api() -> ApiConfig {
        ApiConfig {
            listen: "127.0.0.1:0".parse().unwrap(),
            identity: TlsIdentity::DevSelfSigned,
            min_version: TlsVersion::Tls13,
            requests_per_second: 1,
            recent_calls: 10,
            callback_ca_bundle: None,
            twiml_url_prefixes: vec![],
            accounts: vec![ApiAccount {
                sid: format!("AC{}", "a".repeat(32)),
                auth_token: AuthToken::new("0123456789abcdef".into()),
            }],
        }
    }

    fn basic(user: &str, pass: &str) -> hyper::header::HeaderValue {
        let b = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        hyper::header::HeaderValue::from_str(&format!("Basic {b}")).unwrap()
    }

    #[test]
    fn basic_auth() {
        let a = api();
        let sid = a.accounts[0].sid.clone();
        assert_eq!(
            authenticate(&a, Some(&basic(&sid, "0123456789abcdef"))),
            Some(sid.clone())
        );
        assert_eq!(
            authenticate(&a, Some(&basic(&sid, "0123456789abcdeF"))),
            None
        );
        assert_eq!(authenticate(&a, Some(&basic(&sid, ""))), None);
        assert_eq!(
            authenticate(&a, Some(&basic("ACx", "0123456789abcdef"))),
            None
        );
        assert_eq!(authenticate(&a, None), None);
        let junk = hyper::header::HeaderValue::from_static("Basic !!!");
        assert_eq!(authenticate(&a, Some(&junk)), None);
        let bearer = hyper::header::HeaderValue::from_static("Bearer x");
        assert_eq!(authenticate(&a, Some(&bearer)), None);
    }

    #[test]
    fn paths() {
        assert!(matches!(
            split_path("/2010-04-01/Accounts/AC1/Calls.json"),
            Some((a, Rest::List)) if a == "AC1"
        ));
        assert!(matches!(
            split_path("/2010-04-01/Accounts/AC1/Calls/CA9.json"),
            Some((_, Rest::Call(s))) if s == "CA9"
        ));
        assert!(split_path("/2010-04-01/Accounts/AC1/Calls/../x.json").is_none());
        assert!(split_path("/2010-04-01/Accounts/AC1/Messages.json").is_none());
        assert!(split_path("/").is_none());
    }

    #[test]
    fn rate_limit_is_per_account_with_burst() {
        let l = RateLimiter::default();
        let t = Instant::now();
        assert!(l.allow("A", 1, t) && l.allow("A", 1, t));
        assert!(!l.allow("A", 1, t));
        assert!(l.allow("B", 1, t));
        assert!(l.allow("A", 1, t + Duration::from_secs(1)));
    }

    #[test]
    fn transfer_allow_list() {
        let allow = vec!["+1555".to_string(), "sip:desk@pbx.example.com".to_string()];
        assert!(transfer_allowed(&allow, "tel:+15550009999"));
        assert!(!transfer_allowed(&allow, "tel:+4420"));
        assert!(transfer_allowed(&allow, "sip:desk@pbx.example.com"));
        assert!(!transfer_allowed(&allow, "sip:other@pbx.example.com"));
        assert!(!transfer_allowed(&[], "tel:+15550009999"));
    }
}
