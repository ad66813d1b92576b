//! The media port pool: each call takes an even RTP port and the odd RTCP port above it from
//! `[media] port_min..=port_max`, and gives them back when its sockets are dropped.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};

use tokio::net::UdpSocket;

/// The pool shared by all calls.
pub struct PortPool {
    bind: IpAddr,
    first: u16,
    last: u16,
    state: Mutex<PoolState>,
}

struct PoolState {
    in_use: HashSet<u16>,
    next: u16,
}

/// A call's two UDP sockets; the ports return to the pool on drop.
pub struct MediaSockets {
    pub rtp: UdpSocket,
    pub rtcp: UdpSocket,
    pub port: u16,
    pool: Arc<PortPool>,
}

impl Drop for MediaSockets {
    fn drop(&mut self) {
        let mut st = self.pool.state.lock().unwrap_or_else(|p| p.into_inner());
        st.in_use.remove(&self.port);
    }
}

impl PortPool {
    pub fn new(bind: IpAddr, first: u16, last: u16) -> Arc<PortPool> {
        // Round up to an even first port: RTP takes even ports (RFC 3550 §11).
        let first = first.saturating_add(first % 2);
        Arc::new(PortPool {
            bind,
            first,
            last,
            state: Mutex::new(PoolState {
                in_use: HashSet::new(),
                next: first,
            }),
        })
    }

    /// Number of RTP/RTCP pairs in the range.
    pub fn capacity(&self) -> usize {
        if self.last <= self.first {
            return 0;
        }
        usize::from(self.last - self.first).div_ceil(2)
    }

    /// Binds a free pair, trying each pair at most once. `None` when the range is exhausted.
    /// Must be called inside the tokio runtime.
    pub fn allocate(self: &Arc<Self>) -> Option<MediaSockets> {
        let pairs = self.capacity();
        for _ in 0..pairs {
            let port = {
                let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                let port = st.next;
                st.next = if port.saturating_add(3) > self.last {
                    self.first
                } else {
                    port + 2
                };
                if st.in_use.contains(&port) {
                    continue;
                }
                st.in_use.insert(port);
                port
            };
            match (bind_udp(self.bind, port), bind_udp(self.bind, port + 1)) {
                (Ok(rtp), Ok(rtcp)) => {
                    return Some(MediaSockets {
                        rtp,
                        rtcp,
                        port,
                        pool: Arc::clone(self),
                    })
                }
                _ => {
                    // Taken by another process: skip it, leave it marked free for a later try.
                    let mut st = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    st.in_use.remove(&port);
                }
            }
        }
        None
    }
}

fn bind_udp(ip: IpAddr, port: u16) -> std::io::Result<UdpSocket> {
    let s = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
    s.set_nonblocking(true)?;
    UdpSocket::from_std(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn pairs_are_even_and_released_on_drop() {
        let pool = PortPool::new("127.0.0.1".parse().unwrap(), 41001, 41006);
        assert_eq!(pool.capacity(), 2);
        let a = pool.allocate().unwrap();
        let b = pool.allocate().unwrap();
        assert_eq!(a.port % 2, 0);
        assert_ne!(a.port, b.port);
        assert!(pool.allocate().is_none(), "range of two pairs is exhausted");
        let freed = a.port;
        drop(a);
        let c = pool.allocate().unwrap();
        assert_eq!(c.port, freed);
    }
}
