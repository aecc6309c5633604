//! Upstream connections to one endpoint: a pool of idle HTTP/1.1 connections
//! and one shared, multiplexed HTTP/2 connection.

use super::ProxyBody;
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

/// Any upstream transport: plain TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type BoxIo = Box<dyn Io>;

/// mTLS towards an upstream proxy; one config per ALPN.
pub struct UpstreamTls {
    pub h2: Arc<rustls::ClientConfig>,
    pub h1: Arc<rustls::ClientConfig>,
}

/// Idle HTTP/1.1 connections kept per endpoint; more are closed when returned.
const MAX_IDLE_PER_ENDPOINT: usize = 512;

#[derive(Debug)]
pub enum UpstreamError {
    Connect(std::io::Error),
    ConnectTimeout,
    Tls(std::io::Error),
    Http(hyper::Error),
}

impl std::fmt::Display for UpstreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            UpstreamError::Connect(e) => write!(f, "connect failed: {e}"),
            UpstreamError::ConnectTimeout => write!(f, "connect timed out"),
            UpstreamError::Tls(e) => write!(f, "tls: {e}"),
            UpstreamError::Http(e) => write!(f, "upstream error: {e}"),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wire {
    Http1,
    Http2,
}

#[derive(Debug)]
pub struct Settings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
}

pub struct EndpointPool {
    addr: SocketAddr,
    settings: Arc<Settings>,
    tls: Option<UpstreamTls>,
    idle_h1: Mutex<Vec<(Instant, http1::SendRequest<ProxyBody>)>>,
    h2: tokio::sync::Mutex<Option<http2::SendRequest<ProxyBody>>>,
}

impl EndpointPool {
    pub fn new(addr: SocketAddr, settings: Arc<Settings>, tls: Option<UpstreamTls>) -> Self {
        EndpointPool {
            addr,
            settings,
            tls,
            idle_h1: Mutex::new(Vec::new()),
            h2: tokio::sync::Mutex::new(None),
        }
    }

    pub async fn send(
        self: &Arc<Self>,
        req: Request<ProxyBody>,
        wire: Wire,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match wire {
            Wire::Http1 => self.send_h1(req).await,
            Wire::Http2 => self.send_h2(req).await,
        }
    }

    async fn send_h1(self: &Arc<Self>, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut req = req;
        // A pooled connection may have been closed by the server while idle;
        // when hyper hands the unsent request back, try the next one.
        while let Some(mut sender) = self.checkout_h1() {
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    self.checkin_when_ready(sender);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    Some(unsent) => req = unsent,
                    None => return Err(UpstreamError::Http(e.into_error())),
                },
            }
        }
        let mut sender = self.connect_h1().await?;
        let resp = sender.send_request(req).await.map_err(UpstreamError::Http)?;
        self.checkin_when_ready(sender);
        Ok(resp)
    }

    fn checkout_h1(&self) -> Option<http1::SendRequest<ProxyBody>> {
        let mut idle = self.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        while let Some((since, sender)) = idle.pop() {
            if now - since < self.settings.idle_timeout && sender.is_ready() {
                return Some(sender);
            }
        }
        None
    }

    /// An HTTP/1.1 connection is reusable once the response body is read.
    fn checkin_when_ready(self: &Arc<Self>, mut sender: http1::SendRequest<ProxyBody>) {
        let pool = self.clone();
        tokio::spawn(async move {
            if sender.ready().await.is_ok() {
                let mut idle = pool.idle_h1.lock().unwrap_or_else(|p| p.into_inner());
                if idle.len() < MAX_IDLE_PER_ENDPOINT {
                    idle.push((Instant::now(), sender));
                }
            }
        });
    }

    /// A raw byte stream for opaque TCP (TLS-wrapped when meshed).
    pub async fn open_stream(&self) -> Result<BoxIo, UpstreamError> {
        Ok(self.connect(Wire::Http1).await?.into_inner())
    }

    /// True when this endpoint is another proxy reached over mTLS.
    pub fn is_meshed(&self) -> bool {
        self.tls.is_some()
    }

    async fn connect(&self, wire: Wire) -> Result<TokioIo<BoxIo>, UpstreamError> {
        let limit = self.settings.connect_timeout;
        let stream = tokio::time::timeout(limit, TcpStream::connect(self.addr))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout)?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
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

    async fn send_h2(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, UpstreamError> {
        let mut sender = self.h2_sender().await?;
        let ready = sender.ready().await;
        let req = match ready {
            Ok(()) => match sender.try_send_request(req).await {
                Ok(resp) => return Ok(resp),
                // The shared connection went away (GOAWAY, idle close) before this
                // request was sent: hyper hands it back, so send it on a new one.
                Err(mut e) => e
                    .take_message()
                    .ok_or_else(|| UpstreamError::Http(e.into_error()))?,
            },
            Err(_) => req,
        };
        self.forget_h2().await;
        let mut sender = self.h2_sender().await?;
        sender.ready().await.map_err(UpstreamError::Http)?;
        sender.send_request(req).await.map_err(UpstreamError::Http)
    }

    async fn forget_h2(&self) {
        *self.h2.lock().await = None;
    }

    async fn h2_sender(&self) -> Result<http2::SendRequest<ProxyBody>, UpstreamError> {
        let mut slot = self.h2.lock().await;
        if let Some(sender) = slot.as_ref().filter(|s| !s.is_closed()) {
            return Ok(sender.clone());
        }
        let io = self.connect(Wire::Http2).await?;
        let (sender, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(hyper_util::rt::TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(10)))
            .handshake(io)
            .await
            .map_err(UpstreamError::Http)?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        *slot = Some(sender.clone());
        Ok(sender)
    }
}
