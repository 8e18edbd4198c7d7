//! DNS over UDP (RFC 1035 §4.2.1).
//!
//! Each worker is a plain thread blocked in `recvmmsg` on its own socket;
//! the sockets share one address through `SO_REUSEPORT` and the kernel
//! spreads clients over them. A worker takes every datagram waiting (up to
//! [`BATCH`]) in one system call, answers them, and sends the replies in one
//! `sendmmsg`: under load the cost of the system calls is shared by many
//! queries, and when idle a query still needs only one receive and one
//! send. There is no event loop and no allocation per query (the worker
//! keeps its receive and response buffers).

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::authority::{Authority, Outcome, Transport};
use crate::unix_now;

/// How often an idle worker wakes to check for shutdown.
const POLL: Duration = Duration::from_millis(200);
/// Most datagrams taken in one receive and sent in one send.
pub const BATCH: usize = 32;
/// Bytes kept of one query; a longer one is cut, and so malformed. Real
/// queries are a few dozen bytes.
const MAX_QUERY: usize = 4096;

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
    let fd = socket.as_raw_fd();
    let Ok(mut bufs) =
        Box::<[[u8; MAX_QUERY]; BATCH]>::try_from(vec![[0u8; MAX_QUERY]; BATCH].into_boxed_slice())
    else {
        return;
    };
    let mut rx_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx_headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut outs: Vec<Vec<u8>> = (0..BATCH).map(|_| Vec::with_capacity(1232)).collect();
    let mut received: [(usize, Option<SockaddrStorage>); BATCH] = [(0, None); BATCH];
    let mut to: [Option<SockaddrStorage>; BATCH] = [None; BATCH];
    while !stop.load(Ordering::Relaxed) {
        let n = {
            let mut iovs = bufs.each_mut().map(|b| [IoSliceMut::new(b)]);
            match recvmmsg(
                fd,
                &mut rx_headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => {
                    let mut n = 0;
                    for (slot, m) in received.iter_mut().zip(msgs) {
                        *slot = (m.bytes, m.address);
                        n += 1;
                    }
                    n
                }
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive failed");
                    continue;
                }
            }
        };
        let now = unix_now();
        let mut k = 0;
        for ((len, peer), buf) in received.iter().zip(bufs.iter()).take(n) {
            let (Some(query), Some(out)) = (buf.get(..*len), outs.get_mut(k)) else {
                continue;
            };
            if authority.answer(query, Transport::Udp, now, out) == Outcome::Reply {
                to[k] = *peer;
                k += 1;
            }
        }
        send_all(fd, &mut tx_headers, &outs[..k], &to[..k]);
    }
}

/// Sends `outs[i]` to `to[i]`, as few system calls as the kernel allows.
fn send_all(
    fd: RawFd,
    headers: &mut MultiHeaders<SockaddrStorage>,
    outs: &[Vec<u8>],
    to: &[Option<SockaddrStorage>],
) {
    let mut start = 0;
    while start < outs.len() {
        let iovs: [[IoSlice<'_>; 1]; BATCH] = std::array::from_fn(|i| {
            [IoSlice::new(
                outs.get(start + i).map_or(&[][..], Vec::as_slice),
            )]
        });
        let count = (outs.len() - start).min(BATCH);
        let no_cmsgs: [ControlMessage<'_>; 0] = [];
        match sendmmsg(
            fd,
            headers,
            iovs[..count].iter(),
            to.get(start..).unwrap_or(&[]),
            no_cmsgs,
            MsgFlags::empty(),
        ) {
            Ok(sent) => start += sent.count().max(1),
            Err(Errno::EINTR) => {}
            Err(e) => {
                // The first datagram failed (an unreachable peer, say):
                // skip it, send the rest.
                tracing::debug!(error = %e, "UDP send failed");
                start += 1;
            }
        }
    }
}
