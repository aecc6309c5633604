//! A future with an optional deadline. Unlike `tokio::time::timeout`, a
//! future without a deadline carries no timer, and the wrapped future is
//! stored once (an `if`/`else` over `timeout(f)` and `f` keeps two copies of
//! `f` in the caller's state, which is copied whenever that state moves).

use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::time::{Instant, Sleep};

pin_project! {
    pub struct Deadline<F> {
        #[pin]
        inner: F,
        sleep: Option<Pin<Box<Sleep>>>,
    }
}

/// The deadline passed before the future finished.
#[derive(Debug)]
pub struct Elapsed;

#[inline(always)] // the wrapped future is large: built in place, not copied in and out
pub fn with_deadline<F: Future>(inner: F, deadline: Option<Instant>) -> Deadline<F> {
    Deadline {
        inner,
        sleep: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
    }
}

impl<F: Future> Future for Deadline<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.inner.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match this.sleep {
            Some(sleep) => sleep.as_mut().poll(cx).map(|()| Err(Elapsed)),
            None => Poll::Pending,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn passes_the_output_through_or_gives_up_at_the_deadline() {
        assert_eq!(with_deadline(async { 7 }, None).await.ok(), Some(7));
        let never = std::future::pending::<()>();
        let soon = Instant::now() + Duration::from_millis(50);
        assert!(with_deadline(never, Some(soon)).await.is_err());
        let slow = tokio::time::sleep(Duration::from_millis(20));
        let later = Instant::now() + Duration::from_secs(5);
        assert!(with_deadline(slow, Some(later)).await.is_ok());
    }
}
