//! Opaque TCP: splice bytes to an endpoint of the connection's service or,
//! on a transparent listener, to where its original destination says.

use crate::conn::ConnContext;
use crate::policy::Decision;
use crate::table::{Service, Table};
use crate::transparent::Destination;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub async fn forward<S>(client: S, conn: Arc<ConnContext>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let listener = conn.listener;
    let table = conn.shared.table.load_full();
    if conn.inbound {
        let decision = table
            .policy
            .decide(&conn.listener_name, conn.peer.ip(), conn.tls.identity(), None);
        conn.shared.metrics.authorization(&conn.listener_name, &decision);
        if let Decision::Deny(rule) = decision {
            crate::throttled!(
                "{}: connection from {} ({}) denied by {rule}",
                conn.listener_name,
                conn.peer,
                conn.tls.identity().unwrap_or("no identity")
            );
            return;
        }
    }
    let (service, pinned) = match conn.original_dst {
        None => match table.opaque_of(listener) {
            Some(i) => (&table.services[i], None),
            None => {
                crate::throttled!("opaque connection on listener {listener} has no service; closing");
                return;
            }
        },
        Some(dst) => match table.destinations.find(dst, conn.inbound) {
            Some(Destination::Service(i)) => (&table.services[i], None),
            Some(Destination::Endpoint { service, endpoint }) => (&table.services[service], Some(endpoint)),
            None => return pass_through(client, &conn, &table, dst).await,
        },
    };
    splice(client, service, pinned).await
}

/// To an endpoint of `service`: the balancer's pick, or the one the client
/// addressed.
async fn splice<S>(mut client: S, service: &Service, pinned: Option<usize>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let index = match pinned {
        Some(i) => i,
        None => match service.balancer.pick() {
            Ok(i) => i,
            Err(_) => {
                crate::throttled!(
                    "opaque service {} has no available endpoints; closing",
                    service.name
                );
                return;
            }
        },
    };
    let endpoint = &service.balancer.endpoints()[index];
    let mut pending = endpoint.start();
    let mut upstream = match service.pools[index].open_stream().await {
        Ok(s) => s,
        Err(e) => {
            pending.abandon();
            endpoint.record_failure();
            crate::throttled!("opaque connection to {} failed: {e}", endpoint.addr);
            return;
        }
    };
    // For TCP the balancer's round trip is the connect (and handshake) time.
    pending.finish();
    endpoint.record_success();
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// A redirected connection to an address outside the mesh. Outbound, it
/// goes where the client meant, if the egress policy allows; inbound, to
/// the app's port on loopback (the app behind this sidecar).
async fn pass_through<S>(mut client: S, conn: &ConnContext, table: &Table, dst: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let target = match conn.inbound {
        true => SocketAddr::new(Ipv4Addr::LOCALHOST.into(), dst.port()),
        false if table.egress.allows(dst) => dst,
        false => {
            conn.tcp.passthrough_denied.fetch_add(1, Relaxed);
            crate::throttled!(
                "{}: connection from {} to {dst} denied by the egress policy",
                conn.listener_name,
                conn.peer
            );
            return;
        }
    };
    conn.tcp.passthrough_allowed.fetch_add(1, Relaxed);
    let connect = TcpStream::connect(target);
    let mut upstream = match tokio::time::timeout(PASSTHROUGH_CONNECT_TIMEOUT, connect).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            crate::throttled!("{}: passthrough to {target} failed: {e}", conn.listener_name);
            return;
        }
        Err(_) => {
            crate::throttled!("{}: passthrough to {target} timed out", conn.listener_name);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}

/// As long as a client's own connect would wait, near enough: the proxy
/// stands in for it.
const PASSTHROUGH_CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
