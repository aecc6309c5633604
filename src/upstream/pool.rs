//! Upstream connections to one endpoint: pools of idle HTTP/1.1 connections
//! (hyper's, and those driven inline by `h1`) and multiplexed HTTP/2
//! connections (`h2`). What may be sent again is decided in `resend`.

use super::error::UpstreamError;
use super::h1::{self as inline_h1, InlineBody, InlineConn};
use super::h2::{self as h2_pool, H2Pool, Lease, SettingsSniffer, StreamSlot};
use super::idle::{IdleList, Look};
use super::resend::{copy_head, idempotent, refusal, Refused};
use crate::io::DirectTcp;
use crate::message::{BoxError, ProxyBody};
use crate::time::coarse::coarse_now;
use bytes::Bytes;
use futures_util::future::Either;
use futures_util::FutureExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::io::Io;
type BoxIo = Box<dyn Io>;

/// mTLS towards an upstream proxy; one config per ALPN.
pub struct UpstreamTls {
    /// The SPIFFE ID the upstream must present.
    pub identity: String,
    pub h2: Arc<rustls::ClientConfig>,
    pub h1: Arc<rustls::ClientConfig>,
    pub handshakes: Arc<crate::tls::handshakes::Handshakes>,
}

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when returned.
/// Connections still finishing a response that a checkout steps over before
/// it opens a new one.
const CHECKOUT_SCAN: usize = 8;

/// An HTTP/1.1 connection lent to one request. Released when the response
/// body has ended, it goes back to the pool; dropped, the connection closes
/// after the response it is carrying. No task per request watches it.
pub struct Reusable {
    pool: Arc<EndpointPool>,
    sender: http1::SendRequest<ProxyBody>,
}

impl Reusable {
    pub fn release(self) {
        self.pool.checkin_h1(self.sender);
    }
}

/// What a send gives: the response and, for hyper's HTTP/1.1, the connection.
pub type Sent = Result<(Response<UpstreamBody>, Option<Reusable>), UpstreamError>;

/// A response body from upstream: hyper's, read inline, or hyper's on an
/// HTTP/2 stream whose slot it holds until it is done.
pub enum UpstreamBody {
    Hyper(Incoming),
    Inline(InlineBody),
    H2(Incoming, StreamSlot),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) | UpstreamBody::H2(b, _) => {
                Pin::new(b).poll_frame(cx).map_err(BoxError::from)
            }
            UpstreamBody::Inline(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) | UpstreamBody::H2(b, _) => b.is_end_stream(),
            UpstreamBody::Inline(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) | UpstreamBody::H2(b, _) => b.size_hint(),
            UpstreamBody::Inline(b) => b.size_hint(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

#[derive(Debug, PartialEq)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

pub struct EndpointPool {
    addr: SocketAddr,
    settings: Arc<Settings>,
    tls: Option<UpstreamTls>,
    idle_h1: IdleList<http1::SendRequest<ProxyBody>>,
    idle_inline: IdleList<Box<InlineConn>>,
    h2: H2Pool,
    /// Whether the endpoint speaks HTTP/2 without TLS (h2c): learnt from
    /// its answer to the first connection's preface, then remembered.
    h2c: AtomicU8,
}

const H2C_UNKNOWN: u8 = 0;
const H2C_YES: u8 = 1;
const H2C_NO: u8 = 2;

impl EndpointPool {
    pub fn new(addr: SocketAddr, settings: Arc<Settings>, tls: Option<UpstreamTls>) -> Self {
        EndpointPool {
            addr,
            idle_h1: IdleList::new(settings.idle_timeout),
            idle_inline: IdleList::new(settings.idle_timeout),
            settings,
            tls,
            h2: H2Pool::default(),
            h2c: AtomicU8::new(H2C_UNKNOWN),
        }
    }

    /// Sends one request. For HTTP/1.1 it also returns the connection, to be
    /// handed back with [`Reusable::release`] once the response body has ended.
    ///
    /// The senders are chosen here, outside any future, and the others are
    /// plain functions returning `async move` blocks rather than `async fn`s:
    /// an `async fn` keeps a second copy of a by-value request in its state,
    /// and this state is part of every request's, copied whenever it moves.
    pub fn send(self: &Arc<Self>, req: Request<ProxyBody>, wire: Wire) -> impl Future<Output = Sent> + '_ {
        match wire {
            Wire::Http1 if self.tls.is_none() && inline_h1::suits(&req) => Either::Left(
                self.send_inline(req)
                    .map(|sent| Ok((sent?.map(UpstreamBody::Inline), None))),
            ),
            Wire::Http1 => Either::Right(Either::Left(self.send_h1(req).map(move |sent| {
                let (resp, sender) = sent?;
                let reusable = Reusable {
                    pool: self.clone(),
                    sender,
                };
                Ok((resp.map(UpstreamBody::Hyper), Some(reusable)))
            }))),
            Wire::Http2 => Either::Right(Either::Right(self.send_h2(req).map(|sent| {
                let (resp, slot) = sent?;
                Ok((resp.map(|body| UpstreamBody::H2(body, slot)), None))
            }))),
        }
    }

    #[allow(clippy::manual_async_fn)] // one copy of the request in the state, not two
    fn send_inline(
        self: &Arc<Self>,
        mut req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<Response<InlineBody>, UpstreamError>> + '_ {
        async move {
            let resend = idempotent(req.method());
            let mut from_pool = true;
            loop {
                let pooled = if from_pool { self.checkout_inline() } else { None };
                let mut conn = match pooled {
                    Some(conn) => conn,
                    None => Box::new(InlineConn::new(Box::pin(self.connect_tcp()).await?)),
                };
                inline_h1::prepare(&mut conn, &req);
                match inline_h1::exchange(conn, req.method(), self.clone()).await {
                    // A pooled connection the server had closed: resend once, on a
                    // new connection (only a reused one can be stale).
                    Err(inline_h1::Error::Stale(_)) if resend => from_pool = false,
                    sent => {
                        crate::message::headers::recycle(std::mem::take(req.headers_mut()));
                        return sent.map_err(UpstreamError::from);
                    }
                }
            }
        }
    }

    fn checkout_inline(&self) -> Option<Box<InlineConn>> {
        let now = coarse_now();
        loop {
            let mut conn = self.idle_inline.pop_newest(now)?;
            // Checked outside the lock: it may read from the socket.
            if !conn.went_bad_while_idle() {
                return Some(conn);
            }
        }
    }

    pub(super) fn checkin_inline(&self, mut conn: Box<InlineConn>) {
        conn.shrink();
        self.idle_inline.check_in(coarse_now(), conn);
    }

    #[allow(clippy::manual_async_fn)] // one copy of the request in the state, not two
    fn send_h1(
        &self,
        mut req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, http1::SendRequest<ProxyBody>), UpstreamError>> + '_
    {
        async move {
            // A pooled connection may have been closed by the server while idle;
            // when hyper hands the unsent request back, try the next one.
            while let Some(mut sender) = self.checkout_h1() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, sender)),
                    Err(mut e) => match e.take_message() {
                        Some(unsent) => req = unsent,
                        None => return Err(UpstreamError::Http(e.into_error())),
                    },
                }
            }
            // Boxed: connecting (and a TLS handshake) is rare but would make every request's state larger.
            let mut sender = Box::pin(self.connect_h1()).await?;
            let resp = sender.send_request(req).await.map_err(UpstreamError::Http)?;
            Ok((resp, sender))
        }
    }

    /// The most recently returned connection that is ready for a request.
    /// One returned moments ago may still be finishing its last response on
    /// its own task; it is left for a later request.
    fn checkout_h1(&self) -> Option<http1::SendRequest<ProxyBody>> {
        self.idle_h1.find_newest(coarse_now(), CHECKOUT_SCAN, |sender| {
            if sender.is_closed() {
                Look::Drop
            } else if sender.is_ready() {
                Look::Take
            } else {
                Look::Skip
            }
        })
    }

    fn checkin_h1(&self, sender: http1::SendRequest<ProxyBody>) {
        self.idle_h1.check_in(coarse_now(), sender);
    }

    /// Closes idle HTTP/1.1 connections past the idle timeout. Checkouts
    /// skip expired ones, but a pool no request uses any more would keep
    /// them (and their descriptors) open for good.
    pub fn close_expired(&self, now: Instant) {
        self.idle_h1.close_expired(now, |sender| sender.is_closed());
        self.idle_inline.close_expired(now, |_| false);
    }

    /// A raw byte stream for opaque TCP (TLS-wrapped when meshed).
    pub async fn open_stream(&self) -> Result<BoxIo, UpstreamError> {
        Ok(self.connect(Wire::Http1).await?.into_inner())
    }

    /// Whether this pool (and its open connections) can serve an endpoint
    /// configured with these settings and this expected identity, so that a
    /// reload keeps it.
    pub fn serves(&self, settings: &Settings, identity: Option<&str>) -> bool {
        *self.settings == *settings && self.tls.as_ref().map(|t| t.identity.as_str()) == identity
    }

    /// True when this endpoint is another proxy reached over mTLS.
    pub fn is_meshed(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether a plain (h2c) connection to this endpoint is known to speak
    /// HTTP/2; None until one has been tried.
    pub fn speaks_h2c(&self) -> Option<bool> {
        match self.h2c.load(Relaxed) {
            H2C_YES => Some(true),
            H2C_NO => Some(false),
            _ => None,
        }
    }

    /// Finds out whether the endpoint speaks h2c by opening its first
    /// HTTP/2 connection (kept for the request). Other failures say yes:
    /// the request itself will meet and report them.
    pub async fn probe_h2c(&self) -> bool {
        !matches!(self.h2_lease().await, Err(UpstreamError::NotHttp2))
    }

    async fn connect_tcp(&self) -> Result<DirectTcp, UpstreamError> {
        let limit = self.settings.connect_timeout;
        let stream = tokio::time::timeout(limit, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(DirectTcp::new(stream))
    }

    async fn connect(&self, wire: Wire) -> Result<TokioIo<BoxIo>, UpstreamError> {
        let limit = self.settings.connect_timeout;
        let stream = self.connect_tcp().await?;
        let Some(tls) = &self.tls else {
            return Ok(TokioIo::new(Box::new(stream)));
        };
        let config = if wire == Wire::Http2 { &tls.h2 } else { &tls.h1 };
        // Verification is by SPIFFE identity, so the server name is only a placeholder.
        let name = rustls_pki_types::ServerName::IpAddress(self.addr.ip().into());
        let handshake = tokio_rustls::TlsConnector::from(config.clone()).connect(name, stream);
        let tls_stream = tokio::time::timeout(limit, handshake)
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Tls)?;
        let group = tls_stream.get_ref().1.negotiated_key_exchange_group();
        tls.handshakes.count(crate::tls::handshakes::Side::Client, group);
        Ok(TokioIo::new(Box::new(tls_stream)))
    }

    async fn connect_h1(&self) -> Result<http1::SendRequest<ProxyBody>, UpstreamError> {
        let io = self.connect(Wire::Http1).await?;
        let (sender, conn) = http1::Builder::new()
            .handshake(io)
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            let _ = conn.with_upgrades().await;
        });
        Ok(sender)
    }

    #[allow(clippy::manual_async_fn)] // one copy of the request in the state, not two
    fn send_h2(
        &self,
        mut req: Request<ProxyBody>,
    ) -> impl Future<Output = Result<(Response<Incoming>, StreamSlot), UpstreamError>> + '_ {
        async move {
            // A stream the server refused (above its GOAWAY's last stream, or
            // REFUSED_STREAM) was not processed (RFC 9113, 8.7): a bodiless
            // idempotent request is kept so that it can be sent again.
            let mut again =
                (req.body().is_end_stream() && idempotent(req.method())).then(|| Box::new(copy_head(&req)));
            let Lease {
                generation,
                mut sender,
                slot,
            } = self.h2_lease().await?;
            let mut connection_gone = true;
            if sender.ready().await.is_ok() {
                match sender.try_send_request(req).await {
                    Ok(resp) => return Ok((resp, slot)),
                    Err(mut e) => match e.take_message() {
                        // The connection went away (GOAWAY, idle close) before
                        // this request was sent: hyper hands it back.
                        Some(unsent) => req = unsent,
                        None => match (again.take(), refusal(e.error())) {
                            (Some(copy), Some(refused)) => {
                                // A stream refused on its own (the server's stream limit)
                                // leaves the connection in use.
                                connection_gone = refused == Refused::GoAway || sender.is_closed();
                                req = *copy;
                            }
                            _ => return Err(UpstreamError::Http(e.into_error())),
                        },
                    },
                }
            }
            drop(slot);
            if connection_gone {
                self.h2.forget(generation);
            }
            let Lease { mut sender, slot, .. } = self.h2_lease().await?;
            sender.ready().await.map_err(UpstreamError::Http)?;
            let resp = sender.send_request(req).await.map_err(UpstreamError::Http)?;
            Ok((resp, slot))
        }
    }

    /// A stream on a connection with room; connecting is boxed, being rare
    /// but large in every request's state otherwise.
    async fn h2_lease(&self) -> Result<Lease, UpstreamError> {
        match self.h2.try_lease() {
            Some(lease) => Ok(lease),
            None => Box::pin(self.h2.lease(|limit| self.connect_h2(limit))).await,
        }
    }

    async fn connect_h2(
        &self,
        limit: Arc<AtomicUsize>,
    ) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let io = self.connect(Wire::Http2).await?.into_inner();
        let (verdict, heard) = tokio::sync::oneshot::channel();
        let io = TokioIo::new(SettingsSniffer::new(io, limit, verdict));
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .initial_stream_window_size(h2_pool::STREAM_WINDOW)
            .initial_connection_window_size(h2_pool::CONNECTION_WINDOW)
            .handshake(io)
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        // Over TLS, ALPN said h2. In plain text nothing has yet: no request
        // is sent before the server's preface shows it speaks HTTP/2, so one
        // that does not can be asked in HTTP/1.1 instead.
        if self.tls.is_none() {
            let answer = tokio::time::timeout(self.settings.connect_timeout, heard).await;
            match answer {
                Err(_) => return Err(UpstreamError::ConnectTimeout),
                Ok(Ok(true)) => self.h2c.store(H2C_YES, Relaxed),
                Ok(Ok(false)) => {
                    self.h2c.store(H2C_NO, Relaxed);
                    return Err(UpstreamError::NotHttp2);
                }
                Ok(Err(_)) => {
                    return Err(UpstreamError::Io(std::io::Error::other(
                        "connection failed before the HTTP/2 preface",
                    )))
                }
            }
        }
        Ok(sender)
    }
}
