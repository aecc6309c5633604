//! A stream's task: the future that answers it, in a heap slot the
//! connection reuses for later streams. Every stream's future has one type
//! (made by [`stream_future`]), so a finished slot can take the next one in
//! place: no allocation of the 1.6 KB state per stream, which is too big for
//! glibc's per-thread cache and made it consolidate its free lists.

use super::respond::Respond;
use super::shared::Shared;
use crate::http::proxy::{handle, ConnContext};
use crate::http::{ProxyBody, RequestBody};
use futures_util::future::Either;
use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::future::Ready;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

/// Finished slots kept per connection (about 1.7 KB each); more are freed.
const SPARE_SLOTS: usize = 8;

/// What a stream is answered with: the proxy's handling of its request, or
/// an answer the server makes itself (400, 431, 501).
pub enum Answer {
    Proxy(Request<RequestBody>),
    Own(Response<ProxyBody>),
}

pub type MakeFuture<F> = fn(Arc<Shared>, u32, Answer, Arc<ConnContext>) -> F;

/// A plain function, not an `async fn`, so the request is not kept twice.
#[allow(clippy::type_complexity)]
pub fn stream_future(
    shared: Arc<Shared>,
    id: u32,
    answer: Answer,
    ctx: Arc<ConnContext>,
) -> Respond<
    Either<
        impl Future<Output = Result<Response<ProxyBody>, Infallible>>,
        Ready<Result<Response<ProxyBody>, Infallible>>,
    >,
> {
    let answer = match answer {
        Answer::Proxy(req) => Either::Left(handle(req, ctx)),
        Answer::Own(resp) => Either::Right(std::future::ready(Ok(resp))),
    };
    Respond::new(shared, id, answer)
}

/// A slot holding a stream's future; yields the emptied slot when done,
/// and whether the stream was proxied (not answered by the server itself).
pub struct Slot<F> {
    slot: Option<Pin<Box<Option<F>>>>,
    proxied: bool,
}

impl<F: Future<Output = ()>> Future for Slot<F> {
    type Output = (bool, Pin<Box<Option<F>>>);

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let slot = this
            .slot
            .as_mut()
            .expect("a stream task is not polled after it finished");
        if let Some(future) = slot.as_mut().as_pin_mut() {
            ready!(future.poll(cx));
        }
        slot.set(None); // the finished state is dropped now, not when reused
        Poll::Ready((this.proxied, this.slot.take().expect("checked above")))
    }
}

/// Finished slots, ready for the next streams.
pub struct Spare<F>(Vec<Pin<Box<Option<F>>>>);

impl<F> Spare<F> {
    pub fn new() -> Self {
        Spare(Vec::new())
    }

    pub fn slot(&mut self, future: F, proxied: bool) -> Slot<F> {
        let slot = match self.0.pop() {
            Some(mut slot) => {
                slot.set(Some(future));
                slot
            }
            None => Box::pin(Some(future)),
        };
        Slot {
            slot: Some(slot),
            proxied,
        }
    }

    pub fn give_back(&mut self, slot: Pin<Box<Option<F>>>) {
        if self.0.len() < SPARE_SLOTS {
            self.0.push(slot);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_size<F>(_: MakeFuture<F>) -> usize {
        std::mem::size_of::<F>()
    }

    /// A stream's future is moved into its slot whole, so it should be the
    /// handler's future plus a little: an `async fn` here kept it twice (4 KB).
    #[test]
    fn a_streams_future_holds_the_handlers_once() {
        let size = output_size(stream_future);
        assert!(size <= 1664 + 64, "a stream's future grew to {size} bytes");
    }
}
