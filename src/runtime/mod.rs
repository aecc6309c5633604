//! Runs one proxy: a thread per worker, each with its own current-thread
//! tokio runtime and its own SO_REUSEPORT socket per listener (the kernel
//! spreads connections), like pingora and Envoy. Binds happen before any
//! thread starts so errors come back at once. Nothing here touches Python.

mod listeners;

pub use listeners::Inherited;

use crate::config::{self, Config};
use crate::shared::Shared;
use crate::table::Table;
use crate::tls::identity::Identity;
use listeners::Listeners;
use std::net::SocketAddr;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::watch;

#[derive(Debug)]
pub enum StartError {
    Config(String),
    Bind(String),
    Tls(String),
    Runtime(String),
}

/// Runs a worker thread's body; the Python binding uses it to keep each
/// worker's interpreter thread state alive between plugin calls.
pub type ThreadWrapper = Arc<dyn Fn(Box<dyn FnOnce() + Send>) + Send + Sync>;

pub struct Running {
    /// The workers, joined (and emptied) by `stop`.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    drain: watch::Sender<bool>,
    /// When the drain gives up on open connections; set by `stop`.
    deadline: Arc<Mutex<Option<Instant>>>,
    pub shared: Arc<Shared>,
    listeners: Mutex<Listeners>,
}

fn load_identity(config: &Config) -> Result<Option<Arc<Identity>>, StartError> {
    let Some(cfg) = &config.identity else {
        return Ok(None);
    };
    let identity = Identity::new(&cfg.trust_anchors_pem, cfg.trust_domains.clone())
        .map_err(|e| StartError::Tls(format!("identity: {e}")))?;
    if let (Some(cert), Some(key)) = (&cfg.cert_pem, &cfg.key_pem) {
        identity
            .update(cert, key)
            .map_err(|e| StartError::Tls(format!("identity: {e}")))?;
    }
    Ok(Some(Arc::new(identity)))
}

/// Binds every listener (taking `inherited` sockets where given), then
/// starts the workers; returns once they serve.
pub fn start(
    mut config: Config,
    wrap: Option<ThreadWrapper>,
    inherited: Inherited,
) -> Result<Running, StartError> {
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let wanted = config.listeners.clone();
    let identity = load_identity(&config)?;
    // The key now lives only in `identity`; the table's copy of the config must not hold it.
    config.identity = None;
    let table = Table::build(config, None, identity.as_ref()).map_err(StartError::Config)?;
    let (drain, draining) = watch::channel(false);
    let shared = Arc::new(Shared::new(table, identity.clone(), draining));
    let telemetry_config = &shared.table.load().config;
    shared
        .telemetry
        .configure(telemetry_config)
        .map_err(StartError::Config)?;

    let runtimes = (0..workers)
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| StartError::Runtime(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let handles = runtimes.iter().map(|r| r.handle().clone()).collect();
    let mut listeners = Listeners::new(handles, shared.clone(), identity);
    // Every socket is bound before any thread starts, so errors come back at once.
    let opening = listeners.plan(&wanted, &shared.table.load(), inherited)?;

    let deadline = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for (n, runtime) in runtimes.into_iter().enumerate() {
        let (shared, deadline) = (shared.clone(), deadline.clone());
        // One worker sweeps the (shared) upstream pools.
        let sweeps = n == 0;
        let body: Box<dyn FnOnce() + Send> =
            Box::new(move || serve_worker(runtime, shared, deadline, sweeps));
        let wrap = wrap.clone();
        let thread = std::thread::Builder::new()
            .name(format!("meshcore-worker-{n}"))
            .spawn(move || match wrap {
                Some(wrap) => wrap(body),
                None => body(),
            })
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        threads.push(thread);
    }
    listeners.apply(opening);
    Ok(Running {
        threads: Mutex::new(threads),
        drain,
        deadline,
        shared,
        listeners: Mutex::new(listeners),
    })
}

fn serve_worker(
    runtime: tokio::runtime::Runtime,
    shared: Arc<Shared>,
    deadline: Arc<Mutex<Option<Instant>>>,
    sweeps: bool,
) {
    runtime.block_on(async move {
        tokio::spawn(crate::time::coarse::run_ticker());
        if sweeps {
            tokio::spawn(close_idle_upstreams(shared.clone()));
        }
        // Accept loops arrive from `Listeners`, at start and on reloads.
        let mut draining = shared.draining.clone();
        crate::shared::drained(&mut draining).await;
        // Every worker waits for all connections: a pooled upstream connection
        // on this runtime may still carry another worker's requests.
        let until = deadline
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .unwrap_or_else(Instant::now);
        let until = tokio::time::Instant::from_std(until);
        let _ = tokio::time::timeout_at(until, shared.connections.wait_all_closed()).await;
    });
    // Dropping the runtime ends whatever outlived the grace period.
    drop(runtime);
}

/// How often idle upstream connections past their idle timeout are closed.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

async fn close_idle_upstreams(shared: Arc<Shared>) {
    let mut every = tokio::time::interval(SWEEP_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let table = shared.table.load();
        let now = Instant::now();
        for pool in table.services.iter().flat_map(|s| &s.pools) {
            pool.close_expired(now);
        }
    }
}

impl Running {
    /// Swaps in a new routing table, and opens, closes or changes listeners
    /// as the new config says. Nothing changes unless all of it can be done.
    pub fn reload(&self, config: Config) -> Result<(), StartError> {
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.shared.table.load();
        let wanted = config.listeners.clone();
        let mut table = Table::build(config, Some(&current), self.shared.identity.as_ref())
            .map_err(StartError::Config)?;
        let change = listeners.plan(&wanted, &table, Inherited::default())?;
        self.shared
            .telemetry
            .configure(&table.config)
            .map_err(StartError::Config)?;
        // A renamed listener's open connections find its routes under the new name.
        for (old_id, name) in &change.renamed {
            table.alias(*old_id, name);
        }
        self.shared.table.store(Arc::new(table));
        listeners.apply(change);
        Ok(())
    }

    /// Replaces the endpoints of the named services in place: the table is
    /// swapped, but shares everything else with the one it replaces.
    pub fn update_endpoints(&self, updates: &[(String, Vec<config::Endpoint>)]) -> Result<(), StartError> {
        // The listeners' lock orders this with a reload, so neither loses the other's change.
        let _listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        let current = self.shared.table.load();
        let table = current
            .with_endpoints(updates, self.shared.identity.as_ref())
            .map_err(StartError::Config)?;
        self.shared.table.store(Arc::new(table));
        Ok(())
    }

    /// (listener name, address bound), in config order.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .addresses()
    }

    /// (listener name, configured bind, descriptor) of every listening socket.
    pub fn listening_sockets(&self) -> Vec<(String, String, RawFd)> {
        self.listeners.lock().unwrap_or_else(|p| p.into_inner()).sockets()
    }

    /// Stops accepting, lets in-flight requests finish for up to `grace`,
    /// then tears everything down.
    /// A reload that comes after is refused. Stopping twice waits for nothing.
    pub fn stop(&self, grace: Duration) {
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + grace);
        self.listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .close_all();
        let _ = self.drain.send(true);
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|p| p.into_inner()));
        for thread in threads {
            let _ = thread.join();
        }
        // Access logs and spans are flushed here, not by whoever drops the
        // proxy last (Python, holding the GIL).
        self.shared.telemetry.shutdown();
    }
}
