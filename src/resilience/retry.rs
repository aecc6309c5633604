//! Which outcomes a route retries, how many times, and whether the budget
//! allows one more: the decisions of the dispatch stage's retry loop.

use super::budget::RetryBudget;
use crate::config;
use std::time::{Duration, Instant};

/// Request bodies larger than this are not kept for replay, so not retried.
pub const MAX_REPLAY_BYTES: usize = 64 * 1024;

const GRPC_CODES: [(&str, u32); 6] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("deadline-exceeded", 4),
    ("resource-exhausted", 8),
    ("internal", 13),
    ("unavailable", 14),
];

/// What went wrong with one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Status(u16, Option<u32>),
    ConnectFailure,
    Reset,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    Retry,
    /// Not retried: the outcome, the attempt limit or the body rules it out.
    Done,
    /// It would be retried, but the route's retry budget is spent.
    BudgetExhausted,
}

#[derive(Debug)]
pub struct RetryPolicy {
    server_errors: bool,
    gateway_errors: bool,
    connect_failures: bool,
    resets: bool,
    grpc: Vec<u32>,
    pub limit: u32,
    pub budget: RetryBudget,
}

impl RetryPolicy {
    pub fn new(cfg: &config::Retry) -> Result<Self, String> {
        let mut p = RetryPolicy {
            server_errors: false,
            gateway_errors: false,
            connect_failures: false,
            resets: false,
            grpc: Vec::new(),
            limit: cfg.limit,
            budget: RetryBudget::new(cfg.budget, cfg.min_per_second, Duration::from_millis(cfg.ttl_ms)),
        };
        for cond in &cfg.on {
            match cond.as_str() {
                "5xx" => p.server_errors = true,
                "gateway-error" => p.gateway_errors = true,
                "connect-failure" => p.connect_failures = true,
                "reset" => p.resets = true,
                other => match GRPC_CODES.iter().find(|(name, _)| *name == other) {
                    Some((_, code)) => p.grpc.push(*code),
                    None => return Err(format!("unknown retry condition {other:?}")),
                },
            }
        }
        Ok(p)
    }

    /// After attempt number `attempt` (0 is the first) ended in `outcome`:
    /// whether to send another. `outcome` is asked only when it matters.
    pub fn next(&self, attempt: u32, outcome: impl FnOnce() -> Outcome, replayable: bool) -> Next {
        if attempt >= self.limit || !self.retries(outcome()) || !replayable {
            return Next::Done;
        }
        if self.budget.withdraw(Instant::now()) {
            Next::Retry
        } else {
            Next::BudgetExhausted
        }
    }

    pub fn retries(&self, outcome: Outcome) -> bool {
        match outcome {
            Outcome::ConnectFailure => self.connect_failures,
            Outcome::Reset => self.resets,
            Outcome::Status(status, grpc) => {
                (self.server_errors && status >= 500)
                    || (self.gateway_errors && matches!(status, 502..=504))
                    || grpc.is_some_and(|g| self.grpc.contains(&g))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(on: &[&str]) -> RetryPolicy {
        RetryPolicy::new(&config::Retry {
            on: on.iter().map(|s| s.to_string()).collect(),
            ..config::fixtures::retry()
        })
        .unwrap()
    }

    #[test]
    fn conditions_select_outcomes() {
        let p = policy(&["gateway-error", "unavailable"]);
        assert!(p.retries(Outcome::Status(503, None)));
        assert!(!p.retries(Outcome::Status(500, None)));
        assert!(p.retries(Outcome::Status(200, Some(14))));
        assert!(!p.retries(Outcome::Status(200, Some(5))));
        assert!(!p.retries(Outcome::ConnectFailure));
        let q = policy(&["5xx", "connect-failure", "reset"]);
        assert!(q.retries(Outcome::Status(500, None)));
        assert!(q.retries(Outcome::ConnectFailure));
        assert!(q.retries(Outcome::Reset));
        assert!(!q.retries(Outcome::Status(404, None)));
    }

    #[test]
    fn unknown_condition_is_an_error() {
        let err = RetryPolicy::new(&config::Retry {
            on: vec!["sometimes".into()],
            ..config::fixtures::retry()
        })
        .unwrap_err();
        assert!(err.contains("sometimes"));
    }
}
