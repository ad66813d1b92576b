//! Receiving a call's carrier datagrams with one system call per wake-up.
//!
//! `tokio::net::UdpSocket::poll_recv_from` returns one datagram per call and learns that the
//! socket is drained only from a second, empty `recvfrom` that fails with `EAGAIN`: two system
//! calls for every carrier packet, one of them useless (issue 16 counted 3 `recvfrom` per packet
//! pair, the third being the agent's TLS read). Here one `recvmmsg(2)` takes up to
//! [`RECV_BATCH`] datagrams; when it returns fewer, the socket's queue was empty at that moment,
//! which is what the empty read would have said, so the readiness is cleared without it.
//!
//! Why that is safe: tokio registers sockets with epoll edge-triggered, and Linux queues an edge
//! for every datagram that arrives, so one that lands after the `recvmmsg` still wakes the call.
//! tokio reasons the same way for TCP, where a short read clears the readiness
//! (`PollEvented::poll_read`). `try_io` clears only the readiness it observed before the read: an
//! edge the driver has already seen by then keeps the socket ready.
//!
//! The buffers are per thread, not per call: datagrams are handed to the caller's closure inside
//! the same poll, so nothing in them outlives it, and a call holds no receive buffer of its own.
//! `recvmmsg` comes from nix, since the crate forbids `unsafe` and neither tokio nor socket2 offer
//! it; nix's headers hold raw pointers (not `Send`), which the thread-local keeps out of the
//! call's future.

use std::cell::RefCell;
use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::task::{Context, Poll};

use nix::sys::socket::{recvmmsg, MsgFlags, MultiHeaders, SockaddrStorage};
use tokio::io::Interest;
use tokio::net::UdpSocket;

/// Most datagrams one `recvmmsg` takes. Two would be enough to learn that the queue is empty;
/// four also drain a short burst (a carrier catching up after a stall) in one call.
pub const RECV_BATCH: usize = 4;

/// Room for one datagram: an RTP or RTCP packet from a carrier is far smaller (a 20 ms G.711
/// frame is 172 bytes with SRTP's tag). A longer one is cut to this and counted as truncated.
pub const DATAGRAM_MAX: usize = 2048;

struct Scratch {
    bufs: Box<[[u8; DATAGRAM_MAX]; RECV_BATCH]>,
    headers: MultiHeaders<SockaddrStorage>,
}

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch {
        bufs: Box::new([[0; DATAGRAM_MAX]; RECV_BATCH]),
        headers: MultiHeaders::preallocate(RECV_BATCH, None),
    });
}

/// What one receive took.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Datagrams handed to the closure.
    pub datagrams: usize,
    /// Of those, how many were longer than [`DATAGRAM_MAX`] and were cut.
    pub truncated: usize,
}

/// Waits until `sock` has datagrams, takes up to [`RECV_BATCH`] of them in one `recvmmsg` and
/// hands each to `on_datagram` with its source, in arrival order. `Ready(Ok(r))` has
/// `r.datagrams >= 1`; `Ready(Err(_))` is a receive error other than "nothing queued" (an ICMP
/// error reported on the socket, say). `Pending` registers `cx` for the socket's next datagram.
pub fn poll_recv_batch(
    sock: &UdpSocket,
    cx: &mut Context<'_>,
    mut on_datagram: impl FnMut(&[u8], SocketAddr),
) -> Poll<io::Result<Received>> {
    loop {
        std::task::ready!(sock.poll_recv_ready(cx))?;
        let taken = SCRATCH.with(|s| {
            let mut s = s.borrow_mut();
            let s = &mut *s;
            let mut got = [(0usize, None::<SocketAddr>, false); RECV_BATCH];
            let mut n = 0;
            let r = sock.try_io(Interest::READABLE, || {
                n = recv_into(sock, s, &mut got)?;
                if n < RECV_BATCH {
                    // Fewer than asked for: the queue is empty now. Saying WouldBlock makes
                    // tokio clear the readiness, in place of the empty read (module doc).
                    Err(io::ErrorKind::WouldBlock.into())
                } else {
                    Ok(())
                }
            });
            let mut received = Received::default();
            for (i, (len, from, cut)) in got.iter().take(n).enumerate() {
                // A datagram from an address family the socket cannot have (never on UDP/IP)
                // has no source to latch on; it is dropped.
                let Some(from) = from else { continue };
                on_datagram(&s.bufs[i][..*len], *from);
                received.datagrams += 1;
                received.truncated += usize::from(*cut);
            }
            match r {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                _ => Ok(received),
            }
        });
        match taken {
            Ok(r) if r.datagrams == 0 => continue, // drained (readiness cleared): wait again
            other => return Poll::Ready(other),
        }
    }
}

/// One non-blocking `recvmmsg` into the thread's buffers; the length, source and truncation of
/// each datagram go to `got`. `Ok(0)` never happens: an empty queue is `WouldBlock`.
fn recv_into(
    sock: &UdpSocket,
    s: &mut Scratch,
    got: &mut [(usize, Option<SocketAddr>, bool); RECV_BATCH],
) -> io::Result<usize> {
    let iovs = s.bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
    let results = recvmmsg(
        sock.as_raw_fd(),
        &mut s.headers,
        &iovs,
        MsgFlags::MSG_DONTWAIT,
        None,
    )
    .map_err(io::Error::from)?;
    let mut n = 0;
    for (slot, m) in got.iter_mut().zip(results) {
        let from = m.address.as_ref().and_then(to_std);
        let cut = m.flags.contains(MsgFlags::MSG_TRUNC);
        *slot = (m.bytes.min(DATAGRAM_MAX), from, cut);
        n += 1;
    }
    Ok(n)
}

fn to_std(a: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(SocketAddr::V4((*v4).into()));
    }
    if let Some(v6) = a.as_sockaddr_in6() {
        return Some(SocketAddr::V6((*v6).into()));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    async fn pair() -> (UdpSocket, std::net::UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.connect(rx.local_addr().unwrap()).unwrap();
        (rx, tx)
    }

    /// Polls once to completion (with a bound, so that a lost wake-up fails the test rather
    /// than hanging it) and returns what was taken.
    async fn take(rx: &UdpSocket) -> (Received, Vec<(Vec<u8>, SocketAddr)>) {
        let mut seen = Vec::new();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            std::future::poll_fn(|cx| {
                poll_recv_batch(rx, cx, |d, from| seen.push((d.to_vec(), from)))
            }),
        )
        .await
        .expect("a queued datagram must wake the receiver")
        .unwrap();
        (r, seen)
    }

    #[tokio::test]
    async fn a_burst_is_taken_a_batch_at_a_time_in_order_with_its_source() {
        let (rx, tx) = pair().await;
        for i in 0..6u8 {
            tx.send(&[i; 10]).unwrap();
        }
        let (r, seen) = take(&rx).await;
        assert_eq!(r.datagrams, RECV_BATCH);
        assert_eq!(seen.len(), RECV_BATCH);
        for (i, (d, from)) in seen.iter().enumerate() {
            assert_eq!(d, &vec![i as u8; 10]);
            assert_eq!(*from, tx.local_addr().unwrap());
        }
        let (r, seen) = take(&rx).await;
        assert_eq!(
            r,
            Received {
                datagrams: 2,
                truncated: 0
            }
        );
        assert_eq!(seen[1].0, vec![5u8; 10]);
    }

    #[tokio::test]
    async fn a_datagram_after_a_short_batch_still_wakes_the_receiver() {
        // The short batch clears the readiness without an empty read (module doc); what arrives
        // after it must still be seen, whether it lands before the next poll or while waiting.
        let (rx, tx) = pair().await;
        tx.send(b"one").unwrap();
        assert_eq!(take(&rx).await.0.datagrams, 1);
        tx.send(b"two").unwrap();
        assert_eq!(take(&rx).await.1[0].0, b"two");
        let waiting = async { take(&rx).await.1 };
        let sender = async {
            tokio::time::sleep(Duration::from_millis(20)).await;
            tx.send(b"three").unwrap();
        };
        let (seen, ()) = tokio::join!(waiting, sender);
        assert_eq!(seen, vec![(b"three".to_vec(), tx.local_addr().unwrap())]);
    }

    #[tokio::test]
    async fn an_empty_socket_is_pending_and_registers_for_the_next_datagram() {
        let (rx, tx) = pair().await;
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        let polled = poll_recv_batch(&rx, &mut cx, |_, _| panic!("nothing was sent"));
        assert!(polled.is_pending());
        tx.send(b"late").unwrap();
        assert_eq!(take(&rx).await.1[0].0, b"late");
    }

    #[tokio::test]
    async fn an_oversized_datagram_is_cut_and_counted() {
        let (rx, tx) = pair().await;
        tx.send(&[7u8; DATAGRAM_MAX + 500]).unwrap();
        tx.send(&[8u8; 20]).unwrap();
        let (r, seen) = take(&rx).await;
        assert_eq!(
            r,
            Received {
                datagrams: 2,
                truncated: 1
            }
        );
        assert_eq!(seen[0].0.len(), DATAGRAM_MAX);
        assert_eq!(seen[1].0, vec![8u8; 20]);
    }
}
