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
//!
//! A reply goes to whatever address the request claims, so what one
//! source may draw is bounded in bytes per second by a shared
//! [`ByteBudget`]: a reply, all its packets counted, that the source's
//! budget cannot pay for is not sent at all, and the client, as Handle
//! clients do after a UDP timeout, asks again over TCP, which is not
//! spoofable. Sockets are bound by `idres_net::bind::udp_workers`.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use idres_net::{ByteBudget, Verdict};
use idres_wire::ENVELOPE_LEN;
use idres_wire::{Assembled, Datagrams, Reassembler, ReassemblyLimits, MAX_DATAGRAM};

use crate::admin::{Peer, Transport};
use crate::handler::{Handler, Outcome};
use crate::unix_now;

/// How often an idle worker wakes to check for shutdown.
const POLL: Duration = Duration::from_millis(200);

/// Running UDP workers.
#[derive(Debug)]
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl UdpServer {
    /// Starts one worker per socket.
    /// Replies are charged to their source's `budget`.
    pub fn start(
        handler: Arc<Handler>,
        sockets: Vec<UdpSocket>,
        budget: Arc<ByteBudget>,
    ) -> io::Result<Self> {
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
            let budget = Arc::clone(&budget);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("idres-udp-{i}"))
                    .spawn(move || worker(&handler, &socket, &budget, &stop))?,
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

fn worker(handler: &Handler, socket: &UdpSocket, budget: &ByteBudget, stop: &AtomicBool) {
    // One byte more than the largest datagram, to notice oversized ones.
    let mut buf = [0u8; MAX_DATAGRAM + 1];
    let mut packet = [0u8; MAX_DATAGRAM];
    let mut out = BytesMut::with_capacity(64 * 1024);
    // Keyed by address, so that each sender's share of partial messages is
    // bounded whatever ports it sends from.
    let mut reassembler: Reassembler<std::net::IpAddr> =
        Reassembler::new(ReassemblyLimits::default());
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
        // A source that spent its budget gets nothing: skip the work.
        if budget.spent(peer.ip()) {
            if let Some(f) = handler.face_metrics(Transport::Udp) {
                f.rate_limited();
            }
            continue;
        }
        let now = unix_now();
        out.clear();
        let outcome = match reassembler.push(&peer.ip(), &buf[..n], Instant::now()) {
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
        if budget.charge(peer.ip(), wire_bytes(out.len())) != Verdict::Send {
            // Nothing smaller than the request would help a Handle client:
            // it retries over TCP after its UDP timeout.
            if let Some(f) = handler.face_metrics(Transport::Udp) {
                f.rate_limited();
            }
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

/// Bytes on the wire for a reply message of `len` bytes (envelope
/// included): one envelope per packet when it is split.
fn wire_bytes(len: usize) -> usize {
    if len <= MAX_DATAGRAM {
        return len;
    }
    let body = len.saturating_sub(ENVELOPE_LEN);
    let per = MAX_DATAGRAM - ENVELOPE_LEN;
    body + body.div_ceil(per) * ENVELOPE_LEN
}

fn send(socket: &UdpSocket, bytes: &[u8], peer: SocketAddr) {
    if let Err(e) = socket.send_to(bytes, peer) {
        tracing::debug!(error = %e, %peer, "UDP send failed");
    }
}
