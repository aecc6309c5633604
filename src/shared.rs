//! State shared by every connection of one running proxy.

use crate::metrics::Metrics;
use crate::table::Table;
use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{watch, Notify};

pub struct Shared {
    pub table: ArcSwap<Table>,
    pub metrics: Metrics,
    pub connections: ConnectionTracker,
    /// Python plugin hooks, when any are loaded.
    pub plugins: arc_swap::ArcSwapOption<crate::plugin::PluginHost>,
    /// This proxy's workload identity, when mTLS is configured.
    pub identity: Option<Arc<crate::tls::identity::Identity>>,
    /// Flips to true when the proxy starts draining.
    pub draining: watch::Receiver<bool>,
    /// Access logs, tap and traces.
    pub telemetry: crate::telemetry::Telemetry,
}

impl Shared {
    /// A proxy's shared state before any connection or plugin: fresh metrics,
    /// no connections, `draining` false until its sender flips it.
    pub fn new(
        table: Table,
        identity: Option<Arc<crate::tls::identity::Identity>>,
        draining: watch::Receiver<bool>,
    ) -> Self {
        Shared {
            table: ArcSwap::from_pointee(table),
            metrics: Metrics::default(),
            connections: ConnectionTracker::default(),
            plugins: arc_swap::ArcSwapOption::empty(),
            identity,
            draining,
            telemetry: Default::default(),
        }
    }
}

/// Counts open client connections so a drain knows when it is done.
#[derive(Default)]
pub struct ConnectionTracker {
    open: AtomicUsize,
    /// The most open at once since `take_peak` last looked.
    peak: AtomicUsize,
    all_closed: Notify,
}

pub struct ConnectionGuard(Arc<Shared>);

impl ConnectionTracker {
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    /// The most connections open at once since the last call, and now.
    pub fn take_peak(&self) -> (usize, usize) {
        let now = self.open();
        (self.peak.swap(now, Ordering::AcqRel).max(now), now)
    }

    pub async fn wait_all_closed(&self) {
        loop {
            let notified = self.all_closed.notified();
            if self.open() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Shared {
    pub fn track_connection(self: &Arc<Self>) -> ConnectionGuard {
        let open = self.connections.open.fetch_add(1, Ordering::AcqRel) + 1;
        self.connections.peak.fetch_max(open, Ordering::Relaxed);
        ConnectionGuard(self.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        if self.0.connections.open.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.connections.all_closed.notify_waiters();
        }
    }
}

/// Resolves once draining starts (or the proxy is gone).
pub async fn drained(draining: &mut watch::Receiver<bool>) {
    let _ = draining.wait_for(|d| *d).await;
}
