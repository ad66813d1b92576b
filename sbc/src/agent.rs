//! The agent leg's I/O: a `wss://` WebSocket over tokio-rustls (TLS 1.3 only, see
//! `tls::agent_client_config`). sbc connects before it answers the INVITE, so an agent that cannot
//! be reached means 503 to the carrier, never a silent call.

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::WebSocketStream;

/// Largest agent WebSocket message accepted (about 3 minutes of base64 mu-law audio).
pub const MAX_AGENT_MESSAGE: usize = 2 << 20;

/// Initial capacity of the agent WebSocket's read buffer (a `media` message is ~300 bytes).
pub const AGENT_READ_BUFFER: usize = 4096;

/// An open agent WebSocket and what its TLS negotiated.
pub struct AgentConn {
    pub ws: WebSocketStream<TlsStream<TcpStream>>,
    pub host: String,
    pub tls_version: String,
    pub cipher: String,
    pub mtls: bool,
}

/// Why the agent could not be reached (the carrier gets 503).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AgentError {
    /// The route's URL is not a usable `wss://` URL.
    #[error("bad agent URL: {0}")]
    BadUrl(String),
    /// Connect + TLS + WebSocket upgrade took longer than `connect_timeout`.
    #[error("agent connect timed out after {0:?}")]
    Timeout(Duration),
    /// TCP connect failed.
    #[error("agent TCP connect failed: {0}")]
    Tcp(std::io::Error),
    /// The TLS handshake failed (version, certificate, ...).
    #[error("agent TLS handshake failed: {0}")]
    Tls(std::io::Error),
    /// The WebSocket upgrade failed.
    #[error("agent WebSocket upgrade failed: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
}

impl AgentError {
    /// A short machine-friendly cause for audit and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            AgentError::BadUrl(_) => "bad_url",
            AgentError::Timeout(_) => "timeout",
            AgentError::Tcp(_) => "tcp",
            AgentError::Tls(_) => "tls",
            AgentError::WebSocket(_) => "websocket",
        }
    }
}

/// Host part of a `wss://` URL, for the audit record.
pub fn url_host(url: &str) -> Option<String> {
    let uri: Uri = url.parse().ok()?;
    uri.host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']').to_string())
}

/// Connects to `url` within `timeout`.
pub async fn connect(
    url: &str,
    client: Arc<rustls::ClientConfig>,
    timeout: Duration,
) -> Result<AgentConn, AgentError> {
    let uri: Uri = url
        .parse()
        .map_err(|e| AgentError::BadUrl(format!("{url}: {e}")))?;
    if uri.scheme_str() != Some("wss") {
        return Err(AgentError::BadUrl(format!("{url}: only wss:// is allowed")));
    }
    let host = uri
        .host()
        .ok_or_else(|| AgentError::BadUrl(format!("{url}: no host")))?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(443);
    let server_name = ServerName::try_from(host.clone())
        .map_err(|e| AgentError::BadUrl(format!("{url}: {e}")))?;
    let mtls = client.client_auth_cert_resolver.has_certs();
    let fut = async {
        let tcp = TcpStream::connect((host.as_str(), port))
            .await
            .map_err(AgentError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let tls = TlsConnector::from(client)
            .connect(server_name, tcp)
            .await
            .map_err(AgentError::Tls)?;
        let (tls_version, cipher) = crate::tls::negotiated(tls.get_ref().1);
        // An agent message is at most a few seconds of base64 audio; cap what one frame may
        // allocate (tungstenite's default is 64 MiB). The read buffer starts at 4 KiB, not
        // tungstenite's 128 KiB: it is zero-filled to its capacity before every read, which cost
        // ~6 % of sbc's CPU and ~128 KiB of RSS per call under load (docs/performance.md); a
        // larger frame still grows it as needed.
        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(MAX_AGENT_MESSAGE))
            .max_frame_size(Some(MAX_AGENT_MESSAGE))
            .read_buffer_size(AGENT_READ_BUFFER);
        let (ws, _resp) = tokio_tungstenite::client_async_with_config(url, tls, Some(ws_config))
            .await
            .map_err(|e| AgentError::WebSocket(Box::new(e)))?;
        Ok(AgentConn {
            ws,
            host: host.clone(),
            tls_version,
            cipher,
            mtls,
        })
    };
    tokio::time::timeout(timeout, fut)
        .await
        .map_err(|_| AgentError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_host_strips_ipv6_brackets() {
        assert_eq!(url_host("wss://[::1]:8443/ws").as_deref(), Some("::1"));
        assert_eq!(
            url_host("wss://agent.example:8443/ws?x=1").as_deref(),
            Some("agent.example")
        );
    }
}
