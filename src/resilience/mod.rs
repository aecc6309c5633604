//! Resilience: failure accrual, retry budgets and retry conditions.

pub mod breaker;
pub mod budget;
pub mod retry;
