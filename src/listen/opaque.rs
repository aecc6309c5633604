//! Opaque TCP: pick an endpoint of the listener's service and splice bytes.

use crate::shared::Shared;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;

pub async fn forward<S>(mut client: S, shared: Arc<Shared>, listener: usize)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let table = shared.table.load_full();
    let Some(service) = table.opaque[listener].map(|i| &table.services[i]) else {
        eprintln!("meshcore: opaque connection on listener {listener} has no service; closing");
        return;
    };
    let Ok(index) = service.balancer.pick() else {
        eprintln!(
            "meshcore: opaque service {} has no available endpoints; closing",
            service.name
        );
        return;
    };
    let endpoint = &service.balancer.endpoints()[index];
    let connect_timeout = table
        .config
        .services
        .iter()
        .find(|s| *s.name == *service.name)
        .map_or(Duration::from_secs(1), |s| {
            Duration::from_millis(s.connect_timeout_ms)
        });
    let mut pending = endpoint.start();
    let upstream = match tokio::time::timeout(connect_timeout, TcpStream::connect(endpoint.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            pending.abandon();
            endpoint.record_failure();
            eprintln!("meshcore: opaque connect to {} failed: {e}", endpoint.addr);
            return;
        }
        Err(_) => {
            pending.abandon();
            endpoint.record_failure();
            eprintln!("meshcore: opaque connect to {} timed out", endpoint.addr);
            return;
        }
    };
    // For TCP the balancer's round trip is the connect time.
    pending.finish();
    endpoint.record_success();
    let _ = upstream.set_nodelay(true);
    let mut upstream = upstream;
    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
}
