//! Accept loops: one per listener, each connection detected and dispatched.

pub mod detect;
pub mod io;
pub mod opaque;

use crate::config::ListenerProtocol;
use crate::http::proxy::ConnContext;
use crate::http::server::{serve_http1, serve_http2};
use crate::metrics::{TcpLabels, TcpSeries};
use crate::shared::Shared;
use bytes::Bytes;
use detect::Protocol;
use hyper_util::rt::TokioIo;
use io::{Counted, Prefixed};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

pub struct ListenerSpec {
    pub index: usize,
    pub name: Arc<str>,
    pub direction: Arc<str>,
    pub protocol: ListenerProtocol,
    pub detect_timeout: Duration,
}

pub async fn accept_loop(listener: TcpListener, spec: Arc<ListenerSpec>, shared: Arc<Shared>) {
    let mut draining = shared.draining.clone();
    let tcp = shared.metrics.tcp(&TcpLabels {
        direction: spec.direction.clone(),
        listener: spec.name.clone(),
    });
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::shared::drained(&mut draining) => return,
        };
        match accepted {
            Ok((stream, _peer)) => {
                let guard = shared.track_connection();
                let (spec, shared, tcp) = (spec.clone(), shared.clone(), tcp.clone());
                tokio::spawn(async move {
                    serve_connection(stream, spec, shared, tcp).await;
                    drop(guard);
                });
            }
            Err(e) => {
                // Usually EMFILE: back off instead of spinning.
                eprintln!("meshcore: accept on {} failed: {e}", spec.name);
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

struct OpenConnection(Arc<TcpSeries>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.close_total.fetch_add(1, Relaxed);
    }
}

async fn serve_connection(
    stream: TcpStream,
    spec: Arc<ListenerSpec>,
    shared: Arc<Shared>,
    tcp: Arc<TcpSeries>,
) {
    tcp.open_total.fetch_add(1, Relaxed);
    tcp.open.fetch_add(1, Relaxed);
    let _open = OpenConnection(tcp.clone());
    let _ = stream.set_nodelay(true);
    let mut stream = Counted::new(stream, tcp);
    let (protocol, prefix) = match spec.protocol {
        ListenerProtocol::Http1 => (Protocol::Http1, Bytes::new()),
        ListenerProtocol::Http2 => (Protocol::Http2, Bytes::new()),
        ListenerProtocol::Opaque => (Protocol::Opaque, Bytes::new()),
        ListenerProtocol::Auto => match detect::detect(&mut stream, spec.detect_timeout).await {
            Ok(found) => found,
            Err(_) => return,
        },
    };
    let io = Prefixed::new(prefix, stream);
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        listener: spec.index,
        direction: spec.direction.clone(),
    });
    let draining = shared.draining.clone();
    match protocol {
        Protocol::Http1 => serve_http1(TokioIo::new(io), ctx, draining).await,
        Protocol::Http2 => serve_http2(TokioIo::new(io), ctx, draining).await,
        Protocol::Opaque => opaque::forward(io, shared, spec.index).await,
    }
}
