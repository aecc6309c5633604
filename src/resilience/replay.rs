//! A request body that can be sent more than once: frames stream upstream as
//! they arrive while a copy (up to a limit) is kept, so a retry can replay
//! what was already sent and then go on reading the client's stream. Once the
//! copy would pass the limit it is dropped and the body is no longer replayable.

use crate::message::BoxError;
use bytes::Bytes;
use http::HeaderMap;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

struct Shared<B> {
    source: Option<B>,
    kept: Vec<Bytes>,
    kept_bytes: usize,
    trailers: Option<HeaderMap>,
    overflowed: bool,
    ended: bool,
    limit: usize,
}

/// Hands out one body per attempt.
#[derive(Clone)]
pub struct Replay<B>(Arc<Mutex<Shared<B>>>);

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Replay<B> {
    pub fn new(source: B, limit: usize) -> Self {
        let ended = source.is_end_stream();
        Replay(Arc::new(Mutex::new(Shared {
            source: Some(source),
            kept: Vec::new(),
            kept_bytes: 0,
            trailers: None,
            overflowed: false,
            ended,
            limit,
        })))
    }

    /// False once the body outgrew the limit (or the source failed).
    pub fn replayable(&self) -> bool {
        !self.0.lock().unwrap_or_else(|p| p.into_inner()).overflowed
    }

    pub fn attempt(&self) -> AttemptBody<B> {
        AttemptBody {
            shared: self.0.clone(),
            position: 0,
            trailers_sent: false,
        }
    }
}

pub struct AttemptBody<B> {
    shared: Arc<Mutex<Shared<B>>>,
    position: usize,
    trailers_sent: bool,
}

impl<B: Body<Data = Bytes, Error = BoxError> + Unpin> Body for AttemptBody<B> {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock().unwrap_or_else(|p| p.into_inner());
        if this.position < s.kept.len() {
            this.position += 1;
            return Poll::Ready(Some(Ok(Frame::data(s.kept[this.position - 1].clone()))));
        }
        if s.ended {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(t) = s.trailers.clone() {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
            }
            return Poll::Ready(None);
        }
        let Some(source) = s.source.as_mut() else {
            return Poll::Ready(None);
        };
        let polled = Pin::new(source).poll_frame(cx);
        match polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    if !s.overflowed && s.kept_bytes + data.len() <= s.limit {
                        s.kept_bytes += data.len();
                        s.kept.push(data.clone());
                        this.position += 1;
                    } else {
                        s.overflowed = true;
                        s.kept.clear();
                        this.position = 0;
                    }
                } else if let Some(t) = frame.trailers_ref() {
                    s.trailers = Some(t.clone());
                    this.trailers_sent = true;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(None) => {
                s.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.overflowed = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        s.ended && self.position >= s.kept.len() && (self.trailers_sent || s.trailers.is_none())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.shared.lock().unwrap_or_else(|p| p.into_inner());
        match &s.source {
            Some(src) if !s.overflowed => {
                let ahead: usize = s.kept[self.position.min(s.kept.len())..]
                    .iter()
                    .map(Bytes::len)
                    .sum();
                let hint = src.size_hint();
                let mut out = SizeHint::new();
                out.set_lower(hint.lower() + ahead as u64);
                if let Some(upper) = hint.upper() {
                    out.set_upper(upper + ahead as u64);
                }
                out
            }
            _ => SizeHint::default(),
        }
    }
}
