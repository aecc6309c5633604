//! Serving one HTTP/1.1 client connection with hyper, and draining it on shutdown.

use crate::conn::ConnContext;
use crate::message::limits::MAX_HEAD_BYTES;
use crate::metrics::{ConnEvent, TcpSeries};
use crate::proto::Handler;
use crate::proto::RequestBody;
use crate::time::coarse::CoarseTimer;
use hyper::body::Incoming;
use hyper::rt::{Read, Write};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::Request;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

pub async fn serve_http1<I, H>(
    io: I,
    ctx: Arc<ConnContext>,
    header_read_timeout: Duration,
    mut draining: watch::Receiver<bool>,
    handler: H,
) where
    I: Read + Write + Unpin + Send + 'static,
    H: Handler,
{
    let seat = ctx.seat.clone();
    let tcp = ctx.tcp.clone();
    seat.idle();
    let svc =
        service_fn(move |req: Request<Incoming>| handler.call(req.map(RequestBody::Hyper), ctx.clone()));
    let conn = http1::Builder::new()
        // Armed per request; the coarse timer keeps that off tokio's timer wheel.
        .timer(CoarseTimer)
        .header_read_timeout(header_read_timeout)
        // Caps request-line plus headers (answered with 431), like Envoy's 60-96 KiB.
        .max_buf_size(MAX_HEAD_BYTES)
        .serve_connection(io, svc)
        .with_upgrades();
    tokio::pin!(conn);
    // hyper does not say when it is between requests, so these connections
    // stay eligible for eviction; closing one gracefully finishes the
    // request in progress first.
    let result = tokio::select! {
        r = conn.as_mut() => r,
        _ = crate::shared::drained(&mut draining) => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        () = seat.evicted() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = result {
        conn_error(&tcp, &e);
    }
}

/// Malformed requests are answered by hyper (400); the connection ends and
/// is counted and logged here.
fn conn_error(tcp: &TcpSeries, e: &hyper::Error) {
    if e.is_incomplete_message() || e.is_canceled() {
        return; // the client went away; nothing worth logging
    }
    if e.is_timeout() {
        tcp.count(ConnEvent::Http1HeaderTimeout);
    } else if e.is_parse() || e.is_parse_too_large() || e.is_parse_status() {
        tcp.count(ConnEvent::Http1Malformed);
    }
    crate::throttled!("http/1.1 connection error: {e}");
}
