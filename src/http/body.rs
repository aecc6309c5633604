//! The response body on its way back: streams frames untouched while
//! observing them for the balancer (first data frame) and for metrics
//! (time to first byte, gRPC status, end of stream).

use crate::balance::PendingRequest;
use crate::metrics::{RequestLabels, ResponseLabels};
use crate::shared::Shared;
use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

pub struct Observation {
    pub pending: PendingRequest,
    pub started: Instant,
    pub shared: Arc<Shared>,
    pub labels: RequestLabels,
    pub status: u16,
    pub grpc_status: Option<u32>,
    ttfb: Option<Duration>,
    failed: bool,
}

impl Observation {
    pub fn new(
        pending: PendingRequest,
        started: Instant,
        shared: Arc<Shared>,
        labels: RequestLabels,
        status: u16,
        grpc_status: Option<u32>,
    ) -> Self {
        Observation {
            pending,
            started,
            shared,
            labels,
            status,
            grpc_status,
            ttfb: None,
            failed: false,
        }
    }

    fn first_frame(&mut self) {
        if self.ttfb.is_none() {
            self.ttfb = Some(self.started.elapsed());
            self.pending.finish();
        }
    }
}

impl Drop for Observation {
    fn drop(&mut self) {
        let latency = self.ttfb.unwrap_or_else(|| self.started.elapsed());
        let failure = self.failed || self.status >= 500 || self.grpc_status.is_some_and(|s| s != 0);
        let labels = ResponseLabels {
            request: self.labels.clone(),
            status_code: self.status,
            classification: if failure { "failure" } else { "success" },
        };
        self.shared.metrics.response(&labels, latency);
    }
}

pub fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

pub struct ObservedBody {
    inner: Incoming,
    observation: Option<Observation>,
}

impl ObservedBody {
    pub fn new(inner: Incoming, observation: Observation) -> Self {
        ObservedBody {
            inner,
            observation: Some(observation),
        }
    }
}

impl Body for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(obs) = this.observation.as_mut() {
                    obs.first_frame();
                    if let Some(trailers) = frame.trailers_ref() {
                        obs.grpc_status = grpc_status(trailers).or(obs.grpc_status);
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if let Some(obs) = this.observation.as_mut() {
                    obs.failed = true;
                    obs.pending.abandon();
                }
                this.observation = None;
            }
            Poll::Ready(None) => {
                if let Some(obs) = this.observation.as_mut() {
                    obs.first_frame();
                }
                this.observation = None;
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
