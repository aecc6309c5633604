//! Runs one proxy: a thread per worker, each with its own current-thread
//! tokio runtime and its own SO_REUSEPORT socket per listener (the kernel
//! spreads connections), like pingora and Envoy. Binds happen before any
//! thread starts so errors come back at once. Nothing here touches Python.

use crate::config::{Config, TlsMode};
use crate::listen::{accept_loop, ListenerSpec};
use crate::shared::Shared;
use crate::table::Table;
use crate::tls::{self, identity::Identity};
use socket2::{Domain, Protocol, Socket, Type};
use std::net::SocketAddr;
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
    threads: Vec<std::thread::JoinHandle<()>>,
    drain: watch::Sender<bool>,
    /// When the drain gives up on open connections; set by `stop`.
    deadline: Arc<Mutex<Option<Instant>>>,
    pub shared: Arc<Shared>,
    pub addresses: Vec<(String, SocketAddr)>,
}

fn bind_socket(addr: SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(socket.into())
}

/// Fails when another socket holds `addr`. The workers' sockets share their
/// port with SO_REUSEPORT, which would as well let a second process on the
/// same port take a share of the connections; a socket without it conflicts
/// with every listening socket on the port, including those.
fn check_port_free(addr: SocketAddr) -> std::io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
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

pub fn start(mut config: Config, wrap: Option<ThreadWrapper>) -> Result<Running, StartError> {
    let workers = config
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .max(1);
    let listeners = config.listeners.clone();
    let identity = load_identity(&config)?;
    // The key now lives only in `identity`; the table's copy of the config must not hold it.
    config.identity = None;
    let table = Table::build(config, None, identity.as_ref()).map_err(StartError::Config)?;
    let (drain, draining) = watch::channel(false);
    let shared = Arc::new(Shared::new(table, identity.clone(), draining));

    // sockets[worker] = that worker's socket for every listener
    let mut sockets: Vec<Vec<(std::net::TcpListener, Arc<ListenerSpec>)>> =
        (0..workers).map(|_| Vec::new()).collect();
    let mut addresses = Vec::new();
    for (index, l) in listeners.iter().enumerate() {
        let wanted: SocketAddr = l
            .bind
            .parse()
            .map_err(|e| StartError::Config(format!("listeners[{index}].bind: {e}")))?;
        let bind_error =
            |e: std::io::Error| StartError::Bind(format!("listener {:?} cannot bind {wanted}: {e}", l.name));
        if !l.share_port {
            check_port_free(wanted).map_err(bind_error)?;
        }
        let first = bind_socket(wanted).map_err(bind_error)?;
        // Port 0 resolves on the first bind; the other workers share that port.
        let local = first.local_addr().map_err(bind_error)?;
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
            header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            admission: crate::conn::admission::Admission::new(l.max_connections),
            tls,
        });
        sockets[0].push((first, spec.clone()));
        for worker in sockets.iter_mut().skip(1) {
            worker.push((bind_socket(local).map_err(bind_error)?, spec.clone()));
        }
    }

    let deadline = Arc::new(Mutex::new(None));
    let mut threads = Vec::new();
    for (n, mine) in sockets.into_iter().enumerate() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StartError::Runtime(e.to_string()))?;
        let (shared, deadline) = (shared.clone(), deadline.clone());
        // One worker sweeps the (shared) upstream pools.
        let sweeps = n == 0;
        let body: Box<dyn FnOnce() + Send> =
            Box::new(move || serve_worker(runtime, mine, shared, deadline, sweeps));
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
    Ok(Running {
        threads,
        drain,
        deadline,
        shared,
        addresses,
    })
}

fn serve_worker(
    runtime: tokio::runtime::Runtime,
    sockets: Vec<(std::net::TcpListener, Arc<ListenerSpec>)>,
    shared: Arc<Shared>,
    deadline: Arc<Mutex<Option<Instant>>>,
    sweeps: bool,
) {
    runtime.block_on(async move {
        tokio::spawn(crate::time::coarse::run_ticker());
        if sweeps {
            tokio::spawn(close_idle_upstreams(shared.clone()));
        }
        for (socket, spec) in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    tokio::spawn(accept_loop(listener, spec, shared.clone()));
                }
                Err(e) => eprintln!("meshcore: listener {}: {e}", spec.name),
            }
        }
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
    /// Swaps in a new routing table. Listeners cannot change while running,
    /// except for the service an opaque listener forwards to (read per connection).
    pub fn reload(&self, config: Config) -> Result<(), String> {
        let current = self.shared.table.load();
        let same = |a: &crate::config::Listener, b: &crate::config::Listener| {
            let without_service = |l: &crate::config::Listener| crate::config::Listener {
                service: None,
                ..l.clone()
            };
            without_service(a) == without_service(b)
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
        *self.deadline.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now() + grace);
        let _ = self.drain.send(true);
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}
