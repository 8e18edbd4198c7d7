//! DNS over UDP (RFC 1035 §4.2.1).
//!
//! Each worker is a plain thread blocked in `recv_from` on its own socket;
//! the sockets share one address through `SO_REUSEPORT` and the kernel
//! spreads clients over them. A query needs one receive and one send and
//! nothing else: no event loop, no allocation (the worker keeps its
//! receive and response buffers).

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};

use crate::authority::{Authority, Outcome, Transport};
use crate::unix_now;

/// How often an idle worker wakes to check for shutdown.
const POLL: Duration = Duration::from_millis(200);

/// Binds `workers` UDP sockets to `addr` with `SO_REUSEPORT`. With port 0
/// the first socket picks the port and the others join it.
pub fn bind(addr: SocketAddr, workers: usize) -> io::Result<Vec<UdpSocket>> {
    let mut sockets = Vec::with_capacity(workers.max(1));
    let mut addr = addr;
    for _ in 0..workers.max(1) {
        let s = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
        s.set_reuse_port(true)?;
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

/// Running UDP workers.
#[derive(Debug)]
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl UdpServer {
    /// Starts one worker per socket.
    pub fn start(authority: Arc<Authority>, sockets: Vec<UdpSocket>) -> io::Result<Self> {
        let local_addr = sockets
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no UDP socket"))?
            .local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut threads = Vec::with_capacity(sockets.len());
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_read_timeout(Some(POLL))?;
            let authority = Arc::clone(&authority);
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("idres-dns-udp-{i}"))
                    .spawn(move || worker(&authority, &socket, &stop))?,
            );
        }
        Ok(Self {
            stop,
            threads,
            local_addr,
        })
    }

    /// The address the workers listen on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the workers and waits for them (at most one poll interval).
    pub fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn worker(authority: &Authority, socket: &UdpSocket, stop: &AtomicBool) {
    // A query larger than any UDP payload is read whole, so a long one is
    // judged on its content rather than cut short.
    let mut buf = vec![0u8; 65_536];
    let mut out = Vec::with_capacity(4096);
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue
            }
            Err(e) => {
                tracing::debug!(error = %e, "UDP receive failed");
                continue;
            }
        };
        let Some(query) = buf.get(..n) else { continue };
        if authority.answer(query, Transport::Udp, unix_now(), &mut out) == Outcome::Reply {
            if let Err(e) = socket.send_to(&out, peer) {
                tracing::debug!(error = %e, %peer, "UDP send failed");
            }
        }
    }
}
