//! The per-request path. `handle` runs a request through five named stages,
//! each a plain function over one `RequestCtx`:
//!
//! 1. `authorize`: the target is well formed and the caller's identity
//!    header is the proxy's.
//! 2. `route`: the listener's route, whether the policy lets the caller
//!    call it, the route's own answers, its service.
//! 3. `plugins`: the route's `on_request` hooks, when it has any (they may
//!    answer, edit the request or choose its service).
//! 4. `dispatch`: the request shaped for its upstream and sent, with retries.
//! 5. `observe`: the answer measured, counted and logged on its way back.
//!
//! A stage that ends the request returns a `Failure` (the proxy's own
//! answer), which `observe` sends. The first two stages run as the request
//! arrives; the rest run in the request's future, which owns the request
//! and its context once (its state is copied whenever the future moves).

// A `Failure` ends the request: it is moved once, to `observe`, so it is not boxed.
#![allow(clippy::result_large_err)]

mod answer;
mod authorize;
mod ctx;
mod dispatch;
mod observe;
mod plugins;
mod route;
mod template;

pub use authorize::CLIENT_ID_HEADER;
pub use dispatch::ORIG_PROTO_HEADER;
pub use observe::grpc_status;

use crate::conn::ConnContext;
use crate::message::ProxyBody;
use crate::proto::RequestBody;
use answer::Failure;
use ctx::RequestCtx;
use futures_util::future::{ready, Either, Ready};
use futures_util::FutureExt;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

/// Proxies one request. The request's future is built from plain functions,
/// `async move` blocks and a `map`, not nested `async fn`s: an `async fn`
/// keeps a second copy of a by-value request, and every nesting level is
/// one more copy of the inner state when it starts. That state is copied
/// whole whenever the request's future moves.
pub fn handle(
    req: Request<RequestBody>,
    conn: Arc<ConnContext>,
) -> impl Future<Output = Result<Response<ProxyBody>, Infallible>> {
    let started = Instant::now();
    // The connection's Arc, not the proxy-wide one: only one worker touches its count.
    let ctx = conn.clone();
    stages(req, conn, started)
        .map(move |done| Ok(done.unwrap_or_else(|f| observe::answer_failure(f, &ctx.shared, started))))
}

/// A request's answer: proxied, or the proxy's own.
type Answered = Result<Response<ProxyBody>, Failure>;

/// The stages up to routing run as the request arrives, with no await; what
/// may wait (plugins, dispatch) runs in the one future that owns the request.
fn stages(
    mut req: Request<RequestBody>,
    conn: Arc<ConnContext>,
    started: Instant,
) -> Either<Ready<Answered>, impl Future<Output = Answered>> {
    let mut ctx = RequestCtx::new(conn, started);
    let routed = authorize::authorize(&mut req, &mut ctx).and_then(|()| route::route(&req, &mut ctx));
    match routed {
        Ok(routed) => Either::Right(dispatch::dispatch(req, ctx, routed)),
        Err(answer) => Either::Left(ready(Err(answer))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(Request<RequestBody>, Arc<ConnContext>) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// A request's whole state is copied when hyper stores it (HTTP/1.1) or
    /// spawns it (one task per HTTP/2 stream); rare paths (connecting, plugin
    /// hooks) are boxed so they do not make every request's state bigger.
    /// Was 3.8 KB until the hot senders stopped being `async fn`s (which keep
    /// two copies of a by-value request), short-lived locals were scoped and
    /// the failure answer became a `map` instead of a wrapping future;
    /// 1664 until telemetry's summary (one boxed pointer) joined it.
    #[test]
    fn per_request_state_stays_small() {
        let size = future_size(handle);
        assert!(size <= 1672, "the per-request future grew to {size} bytes");
    }
}
