//! Accept loops: one per listener. Each connection is (optionally) TLS
//! terminated, its protocol detected, and handed to HTTP or TCP proxying.

pub mod bind;
pub mod detect;
pub mod opaque;
pub mod transparent;

use crate::config::{ListenerProtocol, TlsMode};
use crate::conn::admission;
use crate::conn::{ConnContext, PeerTls};
use crate::io::Io;
use crate::io::{Counted, DirectTcp, Prefixed};
use crate::metrics::{ConnEvent, TcpSeries};
use crate::proto::{h1, h2};
use crate::proxy::handle;
use crate::shared::Shared;
use crate::tls::handshakes::{Handshakes, Side};
use bytes::Bytes;
use detect::Protocol;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

/// A TLS handshake that takes longer than this is abandoned.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How a listener serves its connections. A reload that changes settings
/// but not the address swaps in a new spec over the same sockets; each
/// connection keeps the spec it was accepted with.
pub struct ListenerSpec {
    /// The listener's id in the routing table (`Table::listener_ids`).
    pub id: usize,
    pub name: Arc<str>,
    pub direction: Arc<str>,
    pub protocol: ListenerProtocol,
    pub detect_timeout: Duration,
    pub header_read_timeout: Duration,
    pub idle_timeout: Duration,
    pub admission: Arc<admission::Admission>,
    /// The acceptor, the listener's mode, and where its handshakes are counted
    /// (None for an edge: `tls_handshakes_total` counts the mesh's).
    pub tls: Option<(tokio_rustls::TlsAcceptor, TlsMode, Option<Arc<Handshakes>>)>,
    /// Peers trusted to name the original caller (gateways).
    pub trusted_gateways: Arc<[String]>,
    /// Takes redirected connections, served by their original destination.
    pub transparent: bool,
    /// Original destination ports forwarded as TCP, without detection.
    pub opaque_ports: Arc<[u16]>,
    /// The listener's connection counters.
    pub tcp: Arc<TcpSeries>,
    /// Flips to true when this listener stops: removed by a reload, or the
    /// proxy draining. Its accept loops end and its connections drain.
    pub draining: tokio::sync::watch::Receiver<bool>,
}

/// A listener's spec as it is now; reloads store a new one.
pub type CurrentSpec = Arc<arc_swap::ArcSwap<ListenerSpec>>;

/// Accepts on one socket until `stop` flips, serving each connection with
/// the listener's spec as it is when the connection arrives.
pub async fn accept_loop(
    listener: TcpListener,
    current: CurrentSpec,
    mut stop: tokio::sync::watch::Receiver<bool>,
    shared: Arc<Shared>,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = crate::shared::drained(&mut stop) => return,
        };
        let spec = current.load_full();
        let tcp = &spec.tcp;
        match accepted {
            Ok((stream, peer)) => {
                let Some((admitted, took)) = spec.admission.admit() else {
                    tcp.count(ConnEvent::Refused);
                    crate::throttled!(
                        "{}: connection from {peer} refused: max_connections reached and none idle",
                        spec.name
                    );
                    continue; // dropping the stream closes it
                };
                if took == admission::Admit::Evicted {
                    tcp.count(ConnEvent::Evicted);
                }
                let guard = shared.track_connection();
                let (shared, tcp) = (shared.clone(), tcp.clone());
                tokio::spawn(async move {
                    serve_connection(stream, peer, spec, shared, tcp, admitted.seat.clone()).await;
                    drop(admitted);
                    drop(guard);
                });
            }
            Err(e) => {
                // Out of descriptors: make room by closing the longest-idle
                // connection, and back off instead of spinning.
                let exhausted = matches!(e.raw_os_error(), Some(code) if code == EMFILE || code == ENFILE);
                if exhausted {
                    tcp.count(ConnEvent::AcceptExhausted);
                    if spec.admission.evict_one() {
                        tcp.count(ConnEvent::Evicted);
                    }
                }
                crate::throttled!("accept on {} failed: {e}", spec.name);
                tokio::time::sleep(Duration::from_millis(if exhausted { 10 } else { 50 })).await;
            }
        }
    }
}

/// Linux's "too many open files" for the process and for the system.
const EMFILE: i32 = 24;
const ENFILE: i32 = 23;

struct OpenConnection(Arc<TcpSeries>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Relaxed);
        self.0.close_total.fetch_add(1, Relaxed);
    }
}

type BoxIo = Box<dyn Io>;

/// The `rule` label of a plaintext connection refused by a `tls = "mesh"` listener.
const PLAINTEXT_DENIED_RULE: &str = "tls:mesh";

/// Terminates TLS when the listener asks for it. Returns the transport, what
/// TLS established, and whether ALPN chose h2. None: the connection is refused.
async fn accept_transport(
    stream: Counted<DirectTcp>,
    spec: &ListenerSpec,
    peer: SocketAddr,
    tcp: &TcpSeries,
    metrics: &crate::metrics::Metrics,
) -> Option<(BoxIo, PeerTls, bool)> {
    let Some((acceptor, mode, handshakes)) = &spec.tls else {
        return Some((Box::new(stream), PeerTls::Plaintext, false));
    };
    let mut stream = stream;
    let mut first = [0u8; 1];
    let n = tokio::time::timeout(spec.detect_timeout, stream.read(&mut first))
        .await
        .unwrap_or(Ok(0))
        .unwrap_or(0);
    let prefix = Bytes::copy_from_slice(&first[..n]);
    // 0x16 opens a TLS handshake record.
    if n == 1 && first[0] == 0x16 {
        let handshake = acceptor.accept(Prefixed::new(prefix, stream));
        let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
            Ok(Ok(tls)) => tls,
            Ok(Err(e)) => {
                // A certificate the mesh does not accept is a denial; anything
                // else is a failed handshake.
                let refused_identity = e
                    .get_ref()
                    .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                    .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)));
                tcp.count(match refused_identity {
                    true => ConnEvent::TlsIdentityRefused,
                    false => ConnEvent::TlsHandshakeFailed,
                });
                crate::throttled!("{}: TLS handshake from {peer} failed: {e}", spec.name);
                return None;
            }
            Err(_) => {
                tcp.count(ConnEvent::TlsHandshakeFailed);
                return None;
            }
        };
        let (_, session) = tls.get_ref();
        if let Some(handshakes) = handshakes {
            handshakes.count(Side::Server, session.negotiated_key_exchange_group());
        }
        let identity = session
            .peer_certificates()
            .and_then(|certs| certs.first())
            .and_then(crate::tls::verify::spiffe_id);
        let h2 = session.alpn_protocol() == Some(b"h2");
        let peer_tls = match identity {
            Some(id) => PeerTls::Identity(Arc::from(id)),
            None => PeerTls::NoIdentity,
        };
        return Some((Box::new(tls), peer_tls, h2));
    }
    if *mode == TlsMode::Server {
        // An edge port speaks TLS only: plaintext there is a client misconfigured.
        tcp.count(ConnEvent::PlaintextRefused);
        crate::throttled!(
            "{}: plaintext connection from {peer} refused (tls = \"server\")",
            spec.name
        );
        return None;
    }
    if *mode == TlsMode::Mesh {
        tcp.count(ConnEvent::PlaintextRefused);
        // A connection without an identity where one is required is a denial,
        // counted with the requests policy denies.
        let rule = crate::policy::Decision::Deny(Arc::from(PLAINTEXT_DENIED_RULE));
        metrics.authorization(&spec.name, &rule);
        crate::throttled!(
            "{}: plaintext connection from {peer} refused (tls = \"mesh\")",
            spec.name
        );
        return None;
    }
    Some((Box::new(Prefixed::new(prefix, stream)), PeerTls::Plaintext, false))
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    spec: Arc<ListenerSpec>,
    shared: Arc<Shared>,
    tcp: Arc<TcpSeries>,
    seat: Arc<admission::Seat>,
) {
    tcp.open_total.fetch_add(1, Relaxed);
    tcp.open.fetch_add(1, Relaxed);
    let _open = OpenConnection(tcp.clone());
    let _ = stream.set_nodelay(true);
    let original_dst = match spec.transparent {
        true => transparent::original_dst(&stream),
        false => None,
    };
    let counted = Counted::new(DirectTcp::new(stream), tcp.clone());
    let Some((mut io, tls, alpn_h2)) = accept_transport(counted, &spec, peer, &tcp, &shared.metrics).await
    else {
        return;
    };
    // A redirected connection to an address outside the mesh is passed through, undetected.
    let inbound = &*spec.direction == "inbound";
    let in_mesh = original_dst.map(|dst| shared.table.load().destinations.find(dst, inbound).is_some());
    let opaque_port = original_dst.is_some_and(|dst| spec.opaque_ports.contains(&dst.port()));
    let (protocol, prefix) = match spec.protocol {
        _ if in_mesh == Some(false) || opaque_port => (Protocol::Opaque, Bytes::new()),
        _ if alpn_h2 => (Protocol::Http2, Bytes::new()),
        ListenerProtocol::Http1 => (Protocol::Http1, Bytes::new()),
        ListenerProtocol::Http2 => (Protocol::Http2, Bytes::new()),
        ListenerProtocol::Opaque => (Protocol::Opaque, Bytes::new()),
        ListenerProtocol::Auto => match detect::detect(&mut io, spec.detect_timeout).await {
            Ok(found) => found,
            Err(_) => return,
        },
    };
    let io = Prefixed::new(prefix, io);
    let header_read_timeout = spec.header_read_timeout;
    let ctx = Arc::new(ConnContext {
        shared: shared.clone(),
        listener: spec.id,
        listener_name: spec.name.clone(),
        direction: spec.direction.clone(),
        inbound,
        peer,
        client_id: tls.identity().and_then(|id| http::HeaderValue::from_str(id).ok()),
        via_gateway: tls
            .identity()
            .is_some_and(|id| spec.trusted_gateways.iter().any(|g| g == id)),
        original_dst,
        tls,
        no_name: Arc::from(""),
        seat,
        idle_timeout: spec.idle_timeout,
        tcp,
    });
    let draining = spec.draining.clone();
    match protocol {
        Protocol::Http1 => h1::server::serve(io, ctx, header_read_timeout, draining, handle).await,
        Protocol::Http2 => h2::server::serve(io, ctx, header_read_timeout, draining, handle).await,
        Protocol::Opaque => opaque::forward(io, ctx).await,
        Protocol::Closed => {}
    }
}
