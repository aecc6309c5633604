//! The seam between the server engines and the proxy: what an engine does
//! with each request it has read. Static dispatch, so the request's future
//! is stored in place, never boxed.

use super::RequestBody;
use crate::conn::ConnContext;
use crate::message::ProxyBody;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

pub trait Handler: Copy + Send + Sync + 'static {
    type Future: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static;

    fn call(self, req: Request<RequestBody>, conn: Arc<ConnContext>) -> Self::Future;
}

impl<F, Fut> Handler for F
where
    F: Fn(Request<RequestBody>, Arc<ConnContext>) -> Fut + Copy + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<ProxyBody>, Infallible>> + Send + 'static,
{
    type Future = Fut;

    fn call(self, req: Request<RequestBody>, conn: Arc<ConnContext>) -> Fut {
        self(req, conn)
    }
}
