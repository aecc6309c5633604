//! Resilience: what the dispatch stage consults around each attempt.
//! Retry conditions, limits and budget (`retry`, `budget`), request bodies kept
//! for replay (`replay`), per-request and per-attempt deadlines (`timeout`),
//! and failure accrual per endpoint (`breaker`).

pub mod breaker;
pub mod budget;
pub mod replay;
pub mod retry;
pub mod timeout;
