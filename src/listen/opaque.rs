//! Opaque TCP: pick an endpoint of the listener's service and splice bytes.

use crate::conn::ConnContext;
use crate::policy::Decision;
use std::sync::Arc;
use tokio::io::{AsyncRead, AsyncWrite};

pub async fn forward<S>(mut client: S, conn: Arc<ConnContext>)
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
    let Some(service) = table.opaque_of(listener).map(|i| &table.services[i]) else {
        crate::throttled!("opaque connection on listener {listener} has no service; closing");
        return;
    };
    let Ok(index) = service.balancer.pick() else {
        crate::throttled!(
            "opaque service {} has no available endpoints; closing",
            service.name
        );
        return;
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
