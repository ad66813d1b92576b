//! Carrier connections: the accept loop, the per-IP slot, the TLS handshake, the reader that
//! frames SIP and hands each message to `dispatch`, the writer, and the connections sbc opens
//! to a carrier itself.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tracing::{debug, info, info_span, warn, Instrument};

use crate::audit::SipTls;
use crate::dispatch::ConnCtx;
use crate::metrics as m;
use crate::shared::{canonical_ip, CarrierState, Shared};
use crate::sip::framing::{Frame, FrameError, Framer};
use crate::sip::{Method, SipMessage};

/// The sending half of a carrier connection. Responses go back on the connection the request came
/// on (RFC 3261 §18.2.2); the call task keeps the latest one for its in-dialog requests.
#[derive(Clone)]
pub struct ConnHandle {
    pub id: u64,
    pub peer: SocketAddr,
    pub(crate) tx: mpsc::Sender<Bytes>,
    /// sbc opened this connection (to send a BYE): it carries in-dialog requests only.
    pub outbound: bool,
}

impl ConnHandle {
    /// Queues a message; false when the connection is gone or hopelessly backed up.
    pub fn send(&self, msg: &SipMessage) -> bool {
        if let SipMessage::Response(r) = msg {
            m::sip_response(r.status);
        }
        self.tx.try_send(Bytes::from(msg.to_bytes())).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

pub(crate) fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    sock.set_reuseaddr(true)?;
    sock.bind(addr)?;
    sock.listen(1024)
}

pub(crate) async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move { serve_connection(shared, tcp, peer).await });
    }
}

/// Decrements the per-IP connection count on drop.
struct IpSlot {
    shared: Arc<Shared>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut map = self.shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

async fn serve_connection(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr) {
    let ip = canonical_ip(peer.ip());
    let live = shared.live();
    // The source check comes before the TLS handshake and before any SIP is parsed.
    let Some(carrier) = shared.carrier_for(ip) else {
        info!(%peer, "connection from a source no carrier allows: closed");
        m::connection_refused("source_not_allowed");
        return;
    };
    let _slot = {
        let mut map = shared.per_ip.lock().unwrap_or_else(|p| p.into_inner());
        let n = map.entry(ip).or_insert(0);
        if *n >= live.config.limits.max_connections_per_ip {
            drop(map);
            warn!(%peer, limit = live.config.limits.max_connections_per_ip, "too many connections from this address: closed");
            m::connection_refused("per_ip_limit");
            return;
        }
        *n += 1;
        IpSlot {
            shared: Arc::clone(&shared),
            ip,
        }
    };
    let _ = tcp.set_nodelay(true);
    let handshake = tokio::time::timeout(
        live.config.limits.tls_handshake_timeout,
        live.acceptor.accept(tcp),
    )
    .await;
    let tls = match handshake {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            info!(%peer, error = %e, "TLS handshake failed");
            m::tls_handshake("none", "none", "failed");
            return;
        }
        Err(_) => {
            info!(%peer, "TLS handshake timed out");
            m::tls_handshake("none", "none", "timeout");
            m::connection_refused("handshake_timeout");
            return;
        }
    };
    let sip_tls = {
        let conn = tls.get_ref().1;
        let (version, cipher) = crate::tls::negotiated(conn);
        SipTls {
            version,
            cipher,
            sni: conn.server_name().map(str::to_string),
            client_cert_subject: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|_| "present".to_string()),
            client_cert: conn
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| Arc::new(c.clone().into_owned())),
        }
    };
    m::tls_handshake(&sip_tls.version, &sip_tls.cipher, "ok");
    if !carrier.config.certificate_names.is_empty() {
        let leaf = tls.get_ref().1.peer_certificates().and_then(|c| c.first());
        if !certificate_names_match(leaf, &carrier.config.certificate_names) {
            warn!(%peer, carrier = %carrier.config.name, "carrier client certificate missing or not for an expected name: closed");
            m::connection_refused("certificate_name");
            return;
        }
    }
    run_connection(shared, carrier, sip_tls, tls, peer, None).await;
}

/// Opens a TLS connection to a carrier for a request sbc originates when the dialog's connection
/// is gone (RFC 3261 §18.1.1: a new connection to the target). The carrier's certificate is
/// verified (`tls::carrier_client_config`). Responses on it are routed like any other.
pub async fn connect_outbound(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    host: String,
    port: u16,
) -> std::io::Result<ConnHandle> {
    use std::io::{Error, ErrorKind};
    let server_name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Error::new(ErrorKind::InvalidInput, e.to_string()))?;
    let live = shared.live();
    let timeout = live.config.limits.tls_handshake_timeout;
    let connect = async {
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let peer = tcp.peer_addr()?;
        let _ = tcp.set_nodelay(true);
        let tls = tokio_rustls::TlsConnector::from(Arc::clone(&live.carrier_tls))
            .connect(server_name, tcp)
            .await?;
        Ok::<_, Error>((tls, peer))
    };
    let (tls, peer) = tokio::time::timeout(timeout, connect)
        .await
        .map_err(|_| Error::new(ErrorKind::TimedOut, "connect timed out"))??;
    let sip_tls = {
        let conn = tls.get_ref().1;
        let (version, cipher) = crate::tls::negotiated(conn);
        SipTls {
            version,
            cipher,
            sni: Some(host.clone()),
            client_cert_subject: None,
            client_cert: None,
        }
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    tokio::spawn(run_connection(
        shared,
        carrier,
        sip_tls,
        tls,
        peer,
        Some(ready_tx),
    ));
    ready_rx
        .await
        .map_err(|_| Error::new(ErrorKind::ConnectionAborted, "connection task ended"))
}

/// Reads, frames and routes SIP on an established TLS stream (either direction) until it closes.
async fn run_connection<S>(
    shared: Arc<Shared>,
    carrier: Arc<CarrierState>,
    sip_tls: SipTls,
    tls: S,
    peer: SocketAddr,
    ready: Option<tokio::sync::oneshot::Sender<ConnHandle>>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
{
    let conn_id = shared.next_id();
    let span = info_span!("conn", id = conn_id, %peer, carrier = %carrier.config.name);
    async move {
        debug!(version = %sip_tls.version, cipher = %sip_tls.cipher, "TLS established");
        let (mut rd, mut wr) = tokio::io::split(tls);
        let (tx, mut rx) = mpsc::channel::<Bytes>(1024);
        // Dropped when the reader stops: the connection is gone (or we gave up on it).
        let (reader_done, mut reader_gone) = tokio::sync::oneshot::channel::<()>();
        let writer = tokio::spawn(async move {
            let mut closed = false;
            loop {
                tokio::select! {
                    biased;
                    b = rx.recv() => match b {
                        Some(b) => {
                            if wr.write_all(&b).await.is_err() {
                                break;
                            }
                        }
                        None => break,
                    },
                    _ = &mut reader_gone, if !closed => {
                        // Refuse new messages from now on, so that a call still holding this
                        // handle sees `send` fail and opens a new connection for its BYE
                        // instead of writing it into a socket the peer already closed. What
                        // was queued before still goes out (a response to the last request):
                        // `recv` yields it, then `None`.
                        rx.close();
                        closed = true;
                    }
                }
            }
            let _ = wr.shutdown().await;
        });
        let handle = ConnHandle {
            id: conn_id,
            peer,
            tx,
            outbound: ready.is_some(),
        };
        if let Some(ready) = ready {
            let _ = ready.send(handle.clone());
        }
        let ctx = ConnCtx::new(Arc::clone(&shared), carrier, sip_tls, handle);
        let live = shared.live();
        let mut framer = Framer::new(live.config.limits.max_message_bytes);
        let mut buf = BytesMut::with_capacity(8192);
        let idle = live.config.limits.idle_timeout;
        let mut linger = false;
        'read: loop {
            buf.clear();
            // A revoked connection is checked every second, so that it closes soon after its
            // last call ended even when the carrier sends nothing more.
            let wait = if ctx.revoked.load(std::sync::atomic::Ordering::Relaxed) {
                idle.min(Duration::from_secs(1))
            } else {
                idle
            };
            let n = match tokio::time::timeout(wait, rd.read_buf(&mut buf)).await {
                Err(_) => {
                    // A call whose dialog uses this connection holds a handle to it: the
                    // connection is not idle while such a call lasts, however quiet the
                    // carrier is (a call without re-INVITEs sends no SIP for its whole length).
                    if ctx.handle.tx.strong_count() > 1 && !ctx.revoked_and_unused() {
                        continue;
                    }
                    debug!("idle timeout: closing");
                    break;
                }
                Ok(Err(e)) => {
                    debug!(error = %e, "read error: closing");
                    break;
                }
                Ok(Ok(0)) => {
                    debug!("peer closed the connection");
                    break;
                }
                Ok(Ok(n)) => n,
            };
            framer.push(&buf[..n]);
            loop {
                match framer.next_frame() {
                    Ok(None) => break,
                    Ok(Some(Frame::Ping)) => {
                        let _ = ctx.handle.tx.try_send(Bytes::from_static(b"\r\n"));
                    }
                    Ok(Some(Frame::Pong)) => {}
                    Ok(Some(Frame::Message(msg))) => ctx.handle_message(&msg),
                    Err(e) => {
                        warn!(error = %e, "SIP framing error: closing the connection");
                        let head = match &e {
                            FrameError::TooLarge { head, .. } => {
                                head.clone().map(|h| (h, 413, "Request Entity Too Large"))
                            }
                            FrameError::MissingContentLength { head } => {
                                Some((head.clone(), 400, "Missing Content-Length"))
                            }
                            FrameError::BadContentLength { head } => {
                                Some((head.clone(), 400, "Bad Content-Length"))
                            }
                            #[allow(unreachable_patterns)]
                            _ => None,
                        };
                        if let Some((head, status, reason)) = head {
                            // The head alone: the body is absent or cut short.
                            if let Ok(SipMessage::Request(req)) = SipMessage::parse_head(&head) {
                                if req.method != Method::Ack {
                                    ctx.reply(&req, status, reason, &[]);
                                }
                            }
                        }
                        linger = true;
                        break 'read;
                    }
                }
            }
            if ctx.revoked_and_unused() {
                info!("no carrier admits this connection any more and no call uses it: closing");
                break;
            }
        }
        drop(ctx);
        drop(reader_done);
        if linger {
            // Lingering close: the peer may still be sending the rest of the refused message.
            // Closing with unread data makes the kernel send a RST, which can destroy the 413
            // before the peer reads it; read and discard for a moment while the writer sends
            // the response and close_notify.
            let mut sink = [0u8; 4096];
            let _ = tokio::time::timeout(Duration::from_secs(2), async {
                while let Ok(n) = rd.read(&mut sink).await {
                    if n == 0 {
                        break;
                    }
                }
            })
            .await;
        }
        // The writer sends what is queued and ends; give it a moment, then stop waiting.
        let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    }
    .instrument(span)
    .await;
}

/// True when the (already chain-verified) client certificate is valid for one of `names`
/// (DNS subjectAltName, RFC 6125 matching as webpki does it).
pub(crate) fn certificate_names_match(
    leaf: Option<&rustls_pki_types::CertificateDer<'_>>,
    names: &[String],
) -> bool {
    let Some(leaf) = leaf else {
        return false;
    };
    let Ok(cert) = webpki::EndEntityCert::try_from(leaf) else {
        return false;
    };
    names.iter().any(|n| {
        rustls_pki_types::ServerName::try_from(n.as_str())
            .map(|sn| cert.verify_is_valid_for_subject_name(&sn).is_ok())
            .unwrap_or(false)
    })
}

impl std::fmt::Debug for ConnHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ConnHandle({}, {})", self.id, self.peer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_certificate_names_are_checked() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["sip.carrier.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let der = cert.der().clone();
        assert!(certificate_names_match(
            Some(&der),
            &["sip.carrier.example".into()]
        ));
        assert!(certificate_names_match(
            Some(&der),
            &["other.example".into(), "sip.carrier.example".into()]
        ));
        assert!(!certificate_names_match(
            Some(&der),
            &["evil.example".into()]
        ));
        assert!(!certificate_names_match(
            None,
            &["sip.carrier.example".into()]
        ));
    }
}
