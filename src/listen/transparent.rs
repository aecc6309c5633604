//! The destination a redirected connection's client asked for.

use std::net::SocketAddr;
use tokio::net::TcpStream;

/// The original destination of a connection that iptables redirected to
/// this listener (`SO_ORIGINAL_DST`); None for one addressed to the
/// listener itself, or where the kernel has no record (no NAT).
pub fn original_dst(stream: &TcpStream) -> Option<SocketAddr> {
    let local = stream.local_addr().ok()?;
    let dst: SocketAddr = match local {
        SocketAddr::V4(_) => rustix::net::sockopt::ip_original_dst(stream).ok()?.into(),
        SocketAddr::V6(_) => rustix::net::sockopt::ipv6_original_dst(stream).ok()?.into(),
    };
    (dst != local).then_some(dst)
}
