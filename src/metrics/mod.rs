//! The metrics registry: counters and histograms with Linkerd's names, and
//! the one place every family is rendered as Prometheus text.
//!
//! Series are updated with relaxed atomics; rendering takes a snapshot
//! without blocking traffic. Each family's file holds its recording and its
//! rendering; `text` writes the format and escapes every label value.

mod authz;
mod balancer;
mod family;
mod http;
mod identity;
mod labels;
mod lifecycle;
pub mod plugins;
mod retry;
mod tcp;
mod telemetry;
mod text;

pub use balancer::{BalancerGauges, ENDPOINT_STATES};
pub use http::{Histogram, RequestSeries, ResponseSeries, RouteStats, LATENCY_BUCKETS_MS};
pub use labels::{AuthzLabels, RequestLabels, ResponseLabels, RouteLabels, TcpLabels, TlsLabel};
pub use plugins::{HookCounts, PluginReport};
pub use tcp::{ConnEvent, TcpSeries};

use crate::tls::identity::Identity;
use family::Family;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

static NEXT_METRICS_ID: AtomicU64 = AtomicU64::new(1);

#[derive(Debug)]
pub struct Metrics {
    /// Tells this instance's entries apart in the per-thread caches.
    id: u64,
    requests: Family<RequestLabels, RequestSeries>,
    tcp: Family<TcpLabels, TcpSeries>,
    retries: Family<RouteLabels, AtomicU64>,
    authz_allow: Family<AuthzLabels, AtomicU64>,
    authz_deny: Family<AuthzLabels, AtomicU64>,
    budget_exhausted: Family<RouteLabels, AtomicU64>,
    lifecycle: lifecycle::LifecycleCounts,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            id: NEXT_METRICS_ID.fetch_add(1, Relaxed),
            requests: Family::default(),
            tcp: Family::default(),
            retries: Family::default(),
            authz_allow: Family::default(),
            authz_deny: Family::default(),
            budget_exhausted: Family::default(),
            lifecycle: Family::default(),
        }
    }
}

/// What a scrape shows besides the series this registry counts: state read
/// live at scrape time. A family whose source is None is left out.
#[derive(Default)]
pub struct Scrape<'a> {
    /// Each service's balancer (from `Table::balancer_gauges`).
    pub balancers: Option<&'a [BalancerGauges]>,
    /// The workload identity, for its certificate gauges.
    pub identity: Option<&'a Identity>,
    /// The plugin hooks' numbers; None when no plugin host is installed.
    pub plugins: Option<&'a PluginReport>,
    /// Access logs, tap and traces.
    pub telemetry: Option<&'a crate::telemetry::Telemetry>,
}

impl Metrics {
    /// The whole exposition, every family in a fixed order: HTTP, TCP,
    /// retries, authorization, lifecycle, balancer, identity, telemetry,
    /// plugins.
    pub fn render(&self, scrape: &Scrape<'_>) -> String {
        let mut out = String::with_capacity(4096);
        self.render_http(&mut out);
        self.render_tcp(&mut out);
        self.render_retries(&mut out);
        self.render_authz(&mut out);
        self.render_lifecycle(&mut out);
        if let Some(balancers) = scrape.balancers {
            balancer::render(&mut out, balancers);
        }
        if let Some(identity) = scrape.identity {
            identity::render(&mut out, identity);
        }
        if let Some(t) = scrape.telemetry {
            telemetry::render(&mut out, t);
        }
        if let Some(report) = scrape.plugins {
            plugins::render(&mut out, report);
        }
        out
    }
}
