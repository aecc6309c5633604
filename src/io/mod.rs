//! Streams and buffers, both sides of the proxy: the direct TCP stream,
//! replaying the bytes read during detection, counting bytes for the TCP
//! metrics, and the connections' read buffers.

pub mod read_buf;

use crate::metrics::TcpSeries;
use bytes::{Buf, Bytes};
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The body of an `AsyncWrite` impl that hands every write to `self.$field`
/// unchanged: for wrappers that only look at what is read.
macro_rules! writes_pass_to {
    ($field:ident) => {
        fn poll_write(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &[u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.$field).poll_write(cx, buf)
        }
        fn poll_write_vectored(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            bufs: &[std::io::IoSlice<'_>],
        ) -> std::task::Poll<std::io::Result<usize>> {
            std::pin::Pin::new(&mut self.$field).poll_write_vectored(cx, bufs)
        }
        fn is_write_vectored(&self) -> bool {
            self.$field.is_write_vectored()
        }
        fn poll_flush(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.$field).poll_flush(cx)
        }
        fn poll_shutdown(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<std::io::Result<()>> {
            std::pin::Pin::new(&mut self.$field).poll_shutdown(cx)
        }
    };
}
pub(crate) use writes_pass_to;

/// Any transport: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// A stream whose first bytes were already read; they are served again first.
pub struct Prefixed<T> {
    prefix: Bytes,
    inner: T,
}

impl<T> Prefixed<T> {
    pub fn new(prefix: Bytes, inner: T) -> Self {
        Prefixed { prefix, inner }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.prefix.has_remaining() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Prefixed<T> {
    writes_pass_to!(inner);
}

/// Counts bytes read from and written to the client.
pub struct Counted<T> {
    inner: T,
    series: Arc<TcpSeries>,
}

impl<T> Counted<T> {
    pub fn new(inner: T, series: Arc<TcpSeries>) -> Self {
        Counted { inner, series }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            self.series.read_bytes.fetch_add(n as u64, Relaxed);
        }
        polled
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = polled {
            self.series.write_bytes.fetch_add(n as u64, Relaxed);
        }
        polled
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = polled {
            self.series.write_bytes.fetch_add(n as u64, Relaxed);
        }
        polled
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// Largest vectored write that is copied into one buffer and sent with a
/// single send(2); bigger ones go out with writev(2).
const COALESCE_BYTES: usize = 8 * 1024;

/// Where tokio's readiness comes from edge-triggered epoll or kqueue.
const DRAINED_BY_SHORT_READ: bool = cfg!(any(
    target_os = "linux",
    target_os = "android",
    target_os = "macos",
    target_os = "freebsd"
));

thread_local! {
    /// Where a vectored write is joined; reused, so it is not zeroed or allocated per write.
    static JOINED: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(Vec::with_capacity(COALESCE_BYTES));
}

/// A TCP stream that sends and receives with send(2) and recv(2), made
/// directly rather than through libc (whose wrappers are pthread cancellation
/// points). `write` and `writev` also go through the VFS layer (file lookup
/// with position locking, iovec import); `send` does not, which is measurable
/// at one or two writes per request. hyper hands over a response's head and a
/// small body as two buffers; they are joined here so they still leave in one call.
pub struct DirectTcp {
    inner: tokio::net::TcpStream,
}

impl DirectTcp {
    pub fn new(inner: tokio::net::TcpStream) -> Self {
        DirectTcp { inner }
    }

    fn poll_send(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        loop {
            std::task::ready!(self.inner.poll_write_ready(cx))?;
            let sent = self.inner.try_io(tokio::io::Interest::WRITABLE, || {
                rustix::net::send(&self.inner, buf, rustix::net::SendFlags::NOSIGNAL).map_err(io::Error::from)
            });
            match sent {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                result => return Poll::Ready(result),
            }
        }
    }

    fn poll_recv(&self, cx: &mut Context<'_>, dst: &mut [u8]) -> Poll<io::Result<usize>> {
        if dst.is_empty() {
            return Poll::Ready(Ok(0));
        }
        loop {
            std::task::ready!(self.inner.poll_read_ready(cx))?;
            let mut got = 0;
            let received = self.inner.try_io(tokio::io::Interest::READABLE, || {
                got = rustix::net::recv(&self.inner, &mut *dst, rustix::net::RecvFlags::empty())?.0;
                // A short read shows the socket is drained (epoll is edge-triggered):
                // answering WouldBlock makes tokio forget the readiness now, as its
                // own reads do, rather than after one more recv that finds nothing.
                if DRAINED_BY_SHORT_READ && got > 0 && got < dst.len() {
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(got)
            });
            match received {
                Ok(n) => return Poll::Ready(Ok(n)),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && got > 0 => return Poll::Ready(Ok(got)),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => {
                    continue
                }
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl AsyncRead for DirectTcp {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // Only into memory that is already initialised (the proxy's own read
        // buffers and rustls'); tokio reads into the rest without zeroing it.
        if buf.initialized().len() < buf.capacity() {
            return Pin::new(&mut self.inner).poll_read(cx, buf);
        }
        let got = std::task::ready!(self.poll_recv(cx, buf.initialize_unfilled()))?;
        buf.advance(got);
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for DirectTcp {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_send(cx, buf)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total > COALESCE_BYTES {
            return Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        }
        JOINED.with(|joined| {
            let mut joined = joined.borrow_mut();
            joined.clear();
            bufs.iter().for_each(|b| joined.extend_from_slice(b));
            self.poll_send(cx, &joined)
        })
    }
    fn is_write_vectored(&self) -> bool {
        true
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
