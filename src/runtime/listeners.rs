//! The running proxy's listeners. A start opens them all; a reload opens
//! the added and rebound ones, closes the removed ones, and changes the
//! others in place, without touching a socket that stays.
//!
//! A change is planned first (every new socket bound, every spec built),
//! then applied, so that a reload that cannot bind changes nothing.

use super::StartError;
use crate::config::{Listener, TlsMode};
use crate::conn::admission::Admission;
use crate::listen::{accept_loop, bind, CurrentSpec, ListenerSpec};
use crate::metrics::TcpLabels;
use crate::shared::Shared;
use crate::table::Table;
use crate::tls::{self, identity::Identity};
use arc_swap::ArcSwap;
use std::collections::HashMap;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{mpsc, Arc};
use std::time::Duration;
use tokio::runtime::Handle;
use tokio::sync::watch;

/// Sockets a new process took over from the one it replaces, by listener name.
pub type Inherited = HashMap<String, Vec<TcpListener>>;

/// One configured listener, serving.
struct Group {
    config: Listener,
    local: SocketAddr,
    spec: CurrentSpec,
    /// Copies of the listening sockets, to hand to a process that takes over.
    handover: Vec<TcpListener>,
    /// Ends the accept loops.
    stop: watch::Sender<bool>,
    /// Drains the connections accepted under the current spec.
    drain: watch::Sender<bool>,
    /// Disconnects once every accept loop has ended (and closed its socket).
    ended: mpsc::Receiver<()>,
}

/// How long closing a listener waits for its accept loops to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);

impl Group {
    /// Stops accepting and drains; returns once the sockets are closed, so
    /// that the port refuses and may be bound again.
    fn close(&mut self) {
        let _ = self.stop.send(true);
        let _ = self.drain.send(true);
        self.handover.clear();
        let _ = self.ended.recv_timeout(CLOSE_WAIT);
    }
}

/// A listener to open: bound, its accept loops not started yet.
struct Opening {
    config: Listener,
    local: SocketAddr,
    spec: ListenerSpec,
    drain: watch::Sender<bool>,
    /// (worker, socket registered with that worker's runtime)
    sockets: Vec<(usize, tokio::net::TcpListener)>,
    handover: Vec<TcpListener>,
}

/// A listener that keeps its sockets.
struct Kept {
    group: usize,
    config: Listener,
    /// A new spec, when its settings or its name changed.
    respec: Option<ListenerSpec>,
    /// Renamed: a new drain for the connections under the new name.
    new_drain: Option<watch::Sender<bool>>,
}

/// What a reload does to the listeners.
#[derive(Default)]
pub struct Change {
    keep: Vec<Kept>,
    open: Vec<Opening>,
    /// (old listener id, new name) of renamed listeners, for `Table::alias`.
    pub renamed: Vec<(usize, String)>,
}

pub struct Listeners {
    workers: Vec<Handle>,
    groups: Vec<Group>,
    /// Set by `close_all`: the proxy is stopping, and nothing opens again.
    closed: bool,
    shared: Arc<Shared>,
    identity: Option<Arc<Identity>>,
}

impl Listeners {
    pub fn new(workers: Vec<Handle>, shared: Arc<Shared>, identity: Option<Arc<Identity>>) -> Self {
        Listeners {
            workers,
            groups: Vec::new(),
            closed: false,
            shared,
            identity,
        }
    }

    /// Plans the change from today's listeners to `wanted`, binding what is
    /// new (inherited sockets first). Nothing serves differently until `apply`.
    pub fn plan(
        &self,
        wanted: &[Listener],
        table: &Table,
        mut inherited: Inherited,
    ) -> Result<Change, StartError> {
        if self.closed {
            return Err(StartError::Runtime("the proxy is stopping".into()));
        }
        let mut change = Change::default();
        let mut claimed = vec![false; self.groups.len()];
        let mut unplaced = Vec::new();
        // The same name on the same address keeps its sockets and connections.
        for (index, l) in wanted.iter().enumerate() {
            match self
                .groups
                .iter()
                .position(|g| g.config.name == l.name && g.config.bind == l.bind)
            {
                Some(g) => {
                    claimed[g] = true;
                    let old = &self.groups[g];
                    let respec = match settings_changed(&old.config, l) {
                        false => None,
                        true => {
                            let admission = (old.config.max_connections == l.max_connections)
                                .then(|| old.spec.load().admission.clone());
                            let draining = old.drain.subscribe();
                            Some(self.spec(index, l, table, admission, draining)?)
                        }
                    };
                    change.keep.push(Kept {
                        group: g,
                        config: l.clone(),
                        respec,
                        new_drain: None,
                    });
                }
                None => unplaced.push(index),
            }
        }
        for index in unplaced {
            let l = &wanted[index];
            // A listener renamed, or moved onto an address another one leaves,
            // takes those sockets over: nothing queued on them is lost.
            let free = (0..self.groups.len())
                .find(|&g| !claimed[g] && self.groups[g].config.bind == l.bind && fixed_port(&l.bind));
            if let Some(g) = free {
                claimed[g] = true;
                change
                    .renamed
                    .push((self.groups[g].spec.load().id, l.name.clone()));
                let (drain, draining) = watch::channel(false);
                let spec = self.spec(index, l, table, None, draining)?;
                change.keep.push(Kept {
                    group: g,
                    config: l.clone(),
                    respec: Some(spec),
                    new_drain: Some(drain),
                });
                continue;
            }
            let own = inherited.remove(&l.name).unwrap_or_default();
            change.open.push(self.open(index, l, table, own)?);
        }
        Ok(change)
    }

    /// Serves as planned: new listeners start accepting, changed ones take
    /// their new spec, and the ones not kept stop accepting and drain.
    pub fn apply(&mut self, change: Change) {
        let mut kept = vec![false; self.groups.len()];
        for k in change.keep {
            kept[k.group] = true;
            let group = &mut self.groups[k.group];
            group.config = k.config;
            if let Some(spec) = k.respec {
                group.spec.store(Arc::new(spec));
            }
            if let Some(drain) = k.new_drain {
                // Renamed: connections accepted under the old name close.
                let _ = std::mem::replace(&mut group.drain, drain).send(true);
            }
        }
        let mut groups = Vec::new();
        for (mut group, kept) in std::mem::take(&mut self.groups).into_iter().zip(kept) {
            match kept {
                true => groups.push(group),
                false => group.close(),
            }
        }
        for opening in change.open {
            let spec: CurrentSpec = Arc::new(ArcSwap::from_pointee(opening.spec));
            let (stop, stopped) = watch::channel(false);
            let (alive, ended) = mpsc::channel();
            for (worker, socket) in opening.sockets {
                let accepting = accept_loop(socket, spec.clone(), stopped.clone(), self.shared.clone());
                let alive = alive.clone();
                self.workers[worker].spawn(async move {
                    accepting.await;
                    drop(alive);
                });
            }
            groups.push(Group {
                config: opening.config,
                local: opening.local,
                spec,
                handover: opening.handover,
                stop,
                drain: opening.drain,
                ended,
            });
        }
        // Config order, for `addresses`.
        let order = |g: &Group| {
            self.shared
                .table
                .load()
                .config
                .listeners
                .iter()
                .position(|l| l.name == g.config.name)
        };
        groups.sort_by_key(order);
        self.groups = groups;
    }

    /// Stops every listener: no more accepts, and every connection drains.
    pub fn close_all(&mut self) {
        self.closed = true;
        for group in &mut self.groups {
            group.close();
        }
    }

    /// (name, address bound) of every listener, in config order.
    pub fn addresses(&self) -> Vec<(String, SocketAddr)> {
        self.groups
            .iter()
            .map(|g| (g.config.name.clone(), g.local))
            .collect()
    }

    /// (name, configured bind, descriptor) of every listening socket, for a
    /// process that takes over. The descriptors stay this process's.
    pub fn sockets(&self) -> Vec<(String, String, RawFd)> {
        let mut out = Vec::new();
        for g in &self.groups {
            for s in &g.handover {
                out.push((g.config.name.clone(), g.config.bind.clone(), s.as_raw_fd()));
            }
        }
        out
    }

    fn open(
        &self,
        index: usize,
        l: &Listener,
        table: &Table,
        inherited: Vec<TcpListener>,
    ) -> Result<Opening, StartError> {
        let wanted: SocketAddr = l
            .bind
            .parse()
            .map_err(|e| StartError::Config(format!("listeners[{index}].bind: {e}")))?;
        let bind_error =
            |e: std::io::Error| StartError::Bind(format!("listener {:?} cannot bind {wanted}: {e}", l.name));
        let (local, sockets) =
            bind::sockets_for(wanted, l.share_port, self.workers.len(), inherited).map_err(bind_error)?;
        let (drain, draining) = watch::channel(false);
        let spec = self.spec(index, l, table, None, draining)?;
        let mut registered = Vec::new();
        let mut handover = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            handover.push(socket.try_clone().map_err(bind_error)?);
            let worker = i % self.workers.len();
            let _entered = self.workers[worker].enter();
            registered.push((
                worker,
                tokio::net::TcpListener::from_std(socket).map_err(bind_error)?,
            ));
        }
        Ok(Opening {
            config: l.clone(),
            local,
            spec,
            drain,
            sockets: registered,
            handover,
        })
    }

    fn spec(
        &self,
        index: usize,
        l: &Listener,
        table: &Table,
        admission: Option<Arc<Admission>>,
        draining: watch::Receiver<bool>,
    ) -> Result<ListenerSpec, StartError> {
        let tls = match (l.tls, &self.identity) {
            (TlsMode::None, _) => None,
            (TlsMode::Server, _) => {
                let Some(certificate) = &l.server_certificate else {
                    return Err(StartError::Config(format!(
                        "listeners[{index}].certificate: tls = \"server\" needs a certificate"
                    )));
                };
                let config =
                    tls::edge::server_config(&certificate.cert_pem, &certificate.key_pem, l.protocol)
                        .map_err(|(field, e)| {
                            StartError::Tls(format!("listeners[{index}].certificate.{field}: {e}"))
                        })?;
                // tls_handshakes_total counts the mesh's handshakes; an edge's are not among them.
                Some((tokio_rustls::TlsAcceptor::from(config), TlsMode::Server, None))
            }
            (mode, Some(identity)) => {
                let config = tls::server_config(identity, mode == TlsMode::Mesh).map_err(StartError::Tls)?;
                let handshakes = Some(identity.handshakes.clone());
                Some((tokio_rustls::TlsAcceptor::from(config), mode, handshakes))
            }
            (_, None) => {
                return Err(StartError::Config(format!(
                    "listeners[{index}].tls: TLS needs an [identity] section"
                )))
            }
        };
        let id = table
            .listener_id(&l.name)
            .ok_or_else(|| StartError::Config(format!("listeners[{index}]: not in the routing table")))?;
        let (name, direction): (Arc<str>, Arc<str>) =
            (Arc::from(l.name.as_str()), Arc::from(l.direction.as_str()));
        let tcp = self.shared.metrics.tcp(&TcpLabels {
            direction: direction.clone(),
            listener: name.clone(),
        });
        Ok(ListenerSpec {
            id,
            name,
            direction,
            protocol: l.protocol,
            detect_timeout: Duration::from_millis(l.detect_timeout_ms),
            header_read_timeout: Duration::from_millis(l.header_read_timeout_ms),
            idle_timeout: Duration::from_millis(l.idle_timeout_ms),
            admission: admission.unwrap_or_else(|| Admission::new(l.max_connections)),
            tls,
            trusted_gateways: l.trusted_gateways.clone().into(),
            transparent: l.transparent,
            opaque_ports: l.opaque_ports.clone().into(),
            tcp,
            draining,
        })
    }
}

/// Whether a listener that keeps its address needs a new spec. An opaque
/// listener's service is read from the table per connection.
fn settings_changed(old: &Listener, new: &Listener) -> bool {
    let without_service = |l: &Listener| Listener {
        service: None,
        ..l.clone()
    };
    without_service(old) != without_service(new)
}

/// Whether `bind` names its port: "host:0" binds a new port each time, so
/// two such listeners never share sockets.
fn fixed_port(bind: &str) -> bool {
    bind.parse::<SocketAddr>().is_ok_and(|a| a.port() != 0)
}
