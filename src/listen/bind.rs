//! A listener's sockets: one per worker, sharing the port with SO_REUSEPORT
//! (the kernel spreads connections), bound here or inherited from the
//! process this one replaces.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::net::{SocketAddr, TcpListener};

fn bind_socket(addr: SocketAddr) -> io::Result<TcpListener> {
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
fn check_port_free(addr: SocketAddr) -> io::Result<()> {
    if addr.port() == 0 {
        return Ok(());
    }
    let probe = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    probe.set_reuse_address(true)?;
    probe.bind(&addr.into())
}

/// At least `workers` sockets listening on `wanted`, and the address they
/// are bound to (port 0 resolved). Inherited sockets come first and keep
/// the connections already queued on them; new ones are bound beside them.
pub fn sockets_for(
    wanted: SocketAddr,
    share_port: bool,
    workers: usize,
    inherited: Vec<TcpListener>,
) -> io::Result<(SocketAddr, Vec<TcpListener>)> {
    let mut sockets = inherited;
    let local = match sockets.first() {
        Some(first) => {
            let local = first.local_addr()?;
            if wanted.port() != 0 && local != wanted {
                let reason = format!("the inherited socket is bound to {local}, not {wanted}");
                return Err(io::Error::new(io::ErrorKind::InvalidInput, reason));
            }
            for s in &sockets {
                s.set_nonblocking(true)?;
            }
            local
        }
        None => {
            if !share_port {
                check_port_free(wanted)?;
            }
            let first = bind_socket(wanted)?;
            // Port 0 resolves on the first bind; the other workers share that port.
            let local = first.local_addr()?;
            sockets.push(first);
            local
        }
    };
    while sockets.len() < workers {
        sockets.push(bind_socket(local)?);
    }
    Ok((local, sockets))
}
