//! The Handle protocol over UDP.
//!
//! Each worker is a plain thread blocked in `recv_from` on its own socket;
//! the sockets share one address through `SO_REUSEPORT`, so the kernel
//! spreads peers over workers and each peer's packets stay with one worker
//! (which matters for reassembling multi-packet requests). On a busy
//! resolver this costs less per query than an event loop: there is nothing
//! to poll, and a datagram needs one receive and one send.
//!
//! Datagrams over 512 bytes are dropped; multi-packet requests are joined
//! by a bounded [`Reassembler`]; replies over 492 bytes are sent as
//! numbered packets.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use idres_wire::{Assembled, Datagrams, Reassembler, ReassemblyLimits, MAX_DATAGRAM};
use socket2::{Domain, Protocol, Socket, Type};

use crate::admin::{Peer, Transport};
use crate::handler::{Handler, Outcome};
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

/// Running UDP workers.
#[derive(Debug)]
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl UdpServer {
    /// Starts one worker per socket.
    pub fn start(handler: Arc<Handler>, sockets: Vec<UdpSocket>) -> io::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let local_addr = sockets
            .first()
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no UDP socket"))?
            .local_addr()?;
        let mut threads = Vec::new();
        for (i, socket) in sockets.into_iter().enumerate() {
            socket.set_read_timeout(Some(POLL))?;
            let handler = Arc::clone(&handler);
            let stop = Arc::clone(&stop);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("idres-udp-{i}"))
                    .spawn(move || worker(&handler, &socket, &stop))?,
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
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::Release);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for UdpServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

fn worker(handler: &Handler, socket: &UdpSocket, stop: &AtomicBool) {
    // One byte more than the largest datagram, to notice oversized ones.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut packet = [0u8; MAX_DATAGRAM];
    let mut out = BytesMut::with_capacity(64 * 1024);
    let mut reassembler: Reassembler<SocketAddr> = Reassembler::new(ReassemblyLimits::default());
    while !stop.load(Ordering::Relaxed) {
        let (n, peer) = match socket.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                reassembler.expire(Instant::now());
                continue;
            }
            Err(e) => {
                // ICMP errors from earlier sends surface here; keep serving.
                tracing::debug!(error = %e, "UDP receive error");
                continue;
            }
        };
        if n > MAX_DATAGRAM {
            if let Some(f) = handler.face_metrics(Transport::Udp) {
                f.dropped("oversized");
            }
            continue;
        }
        let now = unix_now();
        out.clear();
        let outcome = match reassembler.push(&peer, &buf[..n], Instant::now()) {
            Ok(Assembled::Single(msg)) => {
                handler.handle_from(msg, now, &mut Peer::new(peer, Transport::Udp), &mut out)
            }
            Ok(Assembled::Complete(msg)) => {
                handler.handle_from(&msg, now, &mut Peer::new(peer, Transport::Udp), &mut out)
            }
            Ok(Assembled::Pending) => continue,
            Err(_) => {
                if let Some(f) = handler.face_metrics(Transport::Udp) {
                    f.dropped("reassembly");
                }
                continue;
            }
        };
        if outcome == Outcome::Drop {
            continue;
        }
        if out.len() <= MAX_DATAGRAM {
            send(socket, &out, peer);
            continue;
        }
        let Ok(mut datagrams) = Datagrams::new(&out) else {
            continue;
        };
        while let Some(len) = datagrams.next_into(&mut packet) {
            send(socket, &packet[..len], peer);
        }
    }
}

fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, peer) {
        tracing::debug!(error = %e, %peer, "UDP send failed");
    }
}
