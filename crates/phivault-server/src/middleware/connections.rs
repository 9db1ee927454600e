//! Limits on connections before any request is read: a cap on open connections in all and
//! per client address, and the timeouts that stop a slow client from holding one open.
//!
//! A connection over a cap is closed as soon as it is accepted, before the TLS handshake, so
//! it costs no handshake work. Its slot is held by the stream itself and returned when the
//! stream is dropped, that is when the connection ends however it ends.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use axum_server::accept::Accept;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long and how many connections the server keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// Time for the TLS handshake, and for the whole head of each request (HTTP/1.1); the
    /// latter also bounds how long a kept-alive connection may wait idle for its next request.
    pub header_read_timeout: Duration,
    /// Time for the whole body of a request once its head is read.
    pub body_read_timeout: Duration,
    /// Open connections at once, from all clients.
    pub max_connections: usize,
    /// Open connections at once from one client address (IPv6: one /64 network).
    pub max_connections_per_address: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_read_timeout: Duration::from_secs(10),
            body_read_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_address: 64,
        }
    }
}

/// The open connections, in all and per address.
#[derive(Debug, Default)]
struct Counts {
    total: usize,
    per_address: HashMap<IpAddr, usize>,
}

/// Accepts a TCP connection only while the caps allow; the stream carries its slot.
#[derive(Debug, Clone)]
pub(crate) struct CappedAcceptor {
    counts: Arc<Mutex<Counts>>,
    max_connections: usize,
    max_per_address: usize,
}

impl CappedAcceptor {
    pub(crate) fn new(limits: &ConnectionLimits) -> Self {
        Self {
            counts: Arc::default(),
            max_connections: limits.max_connections,
            max_per_address: limits.max_connections_per_address,
        }
    }

    /// Takes a slot for `peer`, or `None` when a cap is reached.
    fn admit(&self, peer: IpAddr) -> Option<Slot> {
        let key = address_key(peer);
        let mut counts = lock(&self.counts);
        let here = counts.per_address.get(&key).copied().unwrap_or(0);
        if counts.total >= self.max_connections || here >= self.max_per_address {
            return None;
        }
        counts.total += 1;
        counts.per_address.insert(key, here + 1);
        Some(Slot {
            counts: self.counts.clone(),
            key,
        })
    }
}

/// The counts stay meaningful even if a holder panicked: they are plain integers.
fn lock(counts: &Mutex<Counts>) -> MutexGuard<'_, Counts> {
    counts
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The address a connection counts against: IPv4 (also when mapped into IPv6) as it is,
/// IPv6 by its /64 network, since one client usually holds a whole /64.
fn address_key(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
        v4 => v4,
    }
}

/// One connection's place under the caps, returned on drop.
#[derive(Debug)]
struct Slot {
    counts: Arc<Mutex<Counts>>,
    key: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = lock(&self.counts);
        counts.total = counts.total.saturating_sub(1);
        if let Some(n) = counts.per_address.get_mut(&self.key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.per_address.remove(&self.key);
            }
        }
    }
}

/// A stream holding its connection's slot.
#[derive(Debug)]
pub(crate) struct CappedStream<S> {
    inner: S,
    _slot: Slot,
}

impl<S> Accept<TcpStream, S> for CappedAcceptor {
    type Stream = CappedStream<TcpStream>;
    type Service = S;
    type Future = std::future::Ready<io::Result<(Self::Stream, S)>>;

    fn accept(&self, stream: TcpStream, service: S) -> Self::Future {
        let admitted = stream.peer_addr().and_then(|peer| {
            self.admit(peer.ip()).ok_or_else(|| {
                tracing::debug!("connection refused: connection cap reached");
                io::Error::other("connection cap reached")
            })
        });
        // Refused: the stream is dropped here, which closes the connection.
        std::future::ready(admitted.map(|slot| {
            (
                CappedStream {
                    inner: stream,
                    _slot: slot,
                },
                service,
            )
        }))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for CappedStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CappedStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn caps_per_address_and_in_all_and_slots_return_on_drop() {
        let acceptor = CappedAcceptor::new(&ConnectionLimits {
            max_connections: 3,
            max_connections_per_address: 2,
            ..ConnectionLimits::default()
        });
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let a_mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        let b: IpAddr = "2001:db8::1".parse().unwrap();
        let b_same_64: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let first = acceptor.admit(a).unwrap();
        let _second = acceptor.admit(a_mapped).unwrap();
        assert!(acceptor.admit(a).is_none(), "a third from one address");
        let _third = acceptor.admit(b).unwrap();
        assert!(acceptor.admit(b_same_64).is_none(), "the global cap");
        drop(first);
        let again = acceptor.admit(a);
        assert!(again.is_some(), "a slot comes back on drop");
        assert_eq!(lock(&acceptor.counts).total, 3);
    }
}
