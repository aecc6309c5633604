//! A route's two timeouts: `timeout` bounds the whole request, retries and
//! response body included; `response_timeout` bounds each attempt's wait for
//! a response head, and never outlives the whole request's deadline.

use std::time::Duration;
use tokio::time::Instant;

/// When the whole request must be done, counted from its arrival.
pub fn request_deadline(timeout: Option<Duration>, started: std::time::Instant) -> Option<Instant> {
    timeout.map(|t| Instant::from_std(started + t))
}

/// When one attempt, starting now, must have its response head.
pub fn attempt_deadline(response_timeout: Option<Duration>, request: Option<Instant>) -> Option<Instant> {
    match (response_timeout, request) {
        (Some(rt), Some(d)) => Some(d.min(Instant::now() + rt)),
        (Some(rt), None) => Some(Instant::now() + rt),
        (None, d) => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_never_outlives_the_request() {
        let soon = Instant::now() + Duration::from_millis(5);
        let got = attempt_deadline(Some(Duration::from_secs(60)), Some(soon));
        assert_eq!(got, Some(soon));
        let later = attempt_deadline(Some(Duration::from_secs(60)), None).unwrap();
        assert!(later > soon);
        assert_eq!(attempt_deadline(None, None), None);
    }
}
