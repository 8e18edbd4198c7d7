//! Binding the sockets of a face.
//!
//! UDP faces run one worker per socket; the sockets share one address
//! through `SO_REUSEPORT` so the kernel spreads sources over workers and
//! keeps each source with one worker (which multi-packet Handle requests
//! need). The Handle and DNS faces listen for UDP and TCP on one port.

use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};

use socket2::{Domain, Protocol, Socket, Type};

/// Binds `workers` UDP sockets (at least one) to `addr` with
/// `SO_REUSEPORT`. With port 0 the first socket picks the port and the
/// others join it.
pub fn udp_workers(addr: SocketAddr, workers: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(workers.max(1));
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
        s.set_reuse_address(true)?;
        // Bigger buffers ride out bursts; the kernel may cap them.
        let _ = s.set_recv_buffer_size(4 << 20);
        let _ = s.set_send_buffer_size(4 << 20);
        s.bind(&addr.into())?;
        let sock: UdpSocket = s.into();
        addr = sock.local_addr()?;
        sockets.push(sock);
    }
    Ok(sockets)
}

/// Binds a TCP listener with a backlog that rides out connection bursts.
pub fn tcp_listener(addr: SocketAddr) -> io::Result<TcpListener> {
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// Which half of a same-port pair failed.
#[derive(Debug, thiserror::Error)]
pub enum PairError {
    /// The UDP sockets.
    #[error("UDP {addr}: {source}")]
    Udp {
        /// The address asked for.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The TCP listener.
    #[error("TCP {addr}: {source}")]
    Tcp {
        /// The address tried.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
}

/// Binds `workers` UDP sockets and a TCP listener on one address. With
/// port 0, the port UDP picked may be taken for TCP; another is tried.
pub fn udp_and_tcp(
    addr: SocketAddr,
    workers: usize,
) -> Result<(Vec<UdpSocket>, TcpListener), PairError> {
    let attempts = if addr.port() == 0 { 20 } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = udp_workers(addr, workers).map_err(|source| PairError::Udp { addr, source })?;
        let tcp_addr = match udp.first().map(UdpSocket::local_addr) {
            Some(Ok(a)) => a,
            _ => addr,
        };
        match tcp_listener(tcp_addr) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(PairError::Tcp {
                    addr: tcp_addr,
                    source,
                });
            }
        }
    }
    Err(last.unwrap_or(PairError::Tcp {
        addr,
        source: io::Error::other("no attempt made"),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pair_shares_its_port() {
        let (udp, tcp) = udp_and_tcp("127.0.0.1:0".parse().expect("addr"), 3).expect("bind");
        assert_eq!(udp.len(), 3);
        let port = tcp.local_addr().expect("tcp").port();
        for u in &udp {
            assert_eq!(u.local_addr().expect("udp").port(), port);
        }
    }
}
