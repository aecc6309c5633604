//! Owns the tokio runtime of one proxy: binds listeners, runs accept loops,
//! drains on stop. Nothing here touches Python.

use crate::config::{Config, TlsMode};
use crate::listen::{accept_loop, ListenerSpec};
use crate::metrics::Metrics;
use crate::shared::{ConnectionTracker, Shared};
use crate::table::Table;
use crate::tls::{self, identity::Identity};
use arc_swap::ArcSwap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;

#[derive(Debug)]
pub enum StartError {
    Config(String),
    Bind(String),
    Tls(String),
    Runtime(String),
}

pub struct Running {
    runtime: tokio::runtime::Runtime,
    drain: watch::Sender<bool>,
    pub shared: Arc<Shared>,
    pub addresses: Vec<(String, SocketAddr)>,
}

pub fn start(mut config: Config) -> Result<Running, StartError> {
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("meshcore-worker")
        .enable_all()
        .build()
        .map_err(|e| StartError::Runtime(e.to_string()))?;
    let listeners = config.listeners.clone();
    let identity = match &config.identity {
        Some(cfg) => {
            let identity = Identity::new(&cfg.trust_anchors_pem)
                .map_err(|e| StartError::Tls(format!("identity: {e}")))?;
            if let (Some(cert), Some(key)) = (&cfg.cert_pem, &cfg.key_pem) {
                identity
                    .update(cert, key)
                    .map_err(|e| StartError::Tls(format!("identity: {e}")))?;
            }
            Some(Arc::new(identity))
        }
        None => None,
    };
    // The key now lives only in `identity`; the table's copy of the config must not hold it.
    config.identity = None;
    let table = Table::build(config, None, identity.as_ref()).map_err(StartError::Config)?;
    let (drain, draining) = watch::channel(false);
    let shared = Arc::new(Shared {
        table: ArcSwap::from_pointee(table),
        metrics: Metrics::default(),
        connections: ConnectionTracker::default(),
        identity: identity.clone(),
        plugins: arc_swap::ArcSwapOption::empty(),
        draining,
    });

    let mut bound = Vec::new();
    for l in &listeners {
        let addr: SocketAddr = l
            .bind
            .parse()
            .map_err(|e| StartError::Config(format!("listener {}: bind: {e}", l.name)))?;
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind(addr))
            .map_err(|e| StartError::Bind(format!("listener {:?} cannot bind {addr}: {e}", l.name)))?;
        bound.push(listener);
    }
    let mut addresses = Vec::new();
    for (index, (l, listener)) in listeners.iter().zip(bound).enumerate() {
        let local = listener
            .local_addr()
            .map_err(|e| StartError::Bind(e.to_string()))?;
        addresses.push((l.name.clone(), local));
        let tls = match (l.tls, &identity) {
            (TlsMode::None, _) => None,
            (mode, Some(identity)) => {
                let config = tls::server_config(identity, mode == TlsMode::Mesh).map_err(StartError::Tls)?;
                Some((tokio_rustls::TlsAcceptor::from(config), mode))
            }
            (_, None) => {
                return Err(StartError::Config(format!(
                    "listeners[{index}].tls: TLS needs an [identity] section"
                )))
            }
        };
        let spec = Arc::new(ListenerSpec {
            index,
            name: Arc::from(l.name.as_str()),
            direction: Arc::from(l.direction.as_str()),
            protocol: l.protocol,
            detect_timeout: Duration::from_millis(l.detect_timeout_ms),
            tls,
        });
        runtime.spawn(accept_loop(listener, spec, shared.clone()));
    }
    Ok(Running {
        runtime,
        drain,
        shared,
        addresses,
    })
}

impl Running {
    /// Swaps in a new routing table. Listeners cannot change while running.
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let current = self.shared.table.load();
        let same = |a: &crate::config::Listener, b: &crate::config::Listener| {
            a.name == b.name && a.bind == b.bind && a.protocol == b.protocol && a.tls == b.tls
        };
        let old = &current.config.listeners;
        if old.len() != config.listeners.len() || !old.iter().zip(&config.listeners).all(|(a, b)| same(a, b))
        {
            return Err("listeners: changing listeners needs a restart".to_string());
        }
        let table = Table::build(config, Some(&current), self.shared.identity.as_ref())?;
        self.shared.table.store(Arc::new(table));
        Ok(())
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`,
    /// then tears everything down.
    pub fn stop(self, grace: Duration) {
        let _ = self.drain.send(true);
        let shared = self.shared.clone();
        self.runtime.block_on(async move {
            let _ = tokio::time::timeout(grace, shared.connections.wait_all_closed()).await;
        });
        self.runtime.shutdown_timeout(Duration::from_millis(100));
    }
}
