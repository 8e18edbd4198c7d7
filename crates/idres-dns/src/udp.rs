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
//!
//! Response-rate limiting: every response is charged its size against its
//! source's byte budget ([`ByteBudget`], per network prefix); one over
//! budget is dropped, or every `slip`-th one sent as an empty truncated
//! response (header and question, TC set) so that a real client behind a
//! spoofed flood asks again over TCP. Sockets are bound by
//! `idres_net::bind::udp_workers`.

use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use idres_net::{ByteBudget, Verdict};
use nix::errno::Errno;
use nix::sys::socket::{
    recvmmsg, sendmmsg, ControlMessage, MsgFlags, MultiHeaders, SockaddrStorage,
};

use crate::authority::{Authority, Outcome, Transport};
use crate::unix_now;
use crate::wire;

/// How often an idle worker wakes to check for shutdown.
const POLL: Duration = Duration::from_millis(200);
/// Most datagrams taken in one receive and sent in one send.
pub const BATCH: usize = 32;
/// Bytes kept of one query; a longer one is cut, and so malformed. Real
/// queries are a few dozen bytes.
const MAX_QUERY: usize = 4096;

/// Running UDP workers.
#[derive(Debug)]
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
}

impl UdpServer {
    /// Starts one worker per socket.
    /// Responses are charged to their source's `budget`.
    pub fn start(
        authority: Arc<Authority>,
        sockets: Vec<UdpSocket>,
        budget: Arc<ByteBudget>,
    ) -> io::Result<Self> {
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
            let budget = Arc::clone(&budget);
            threads.push(
                std::thread::Builder::new()
                    .name(format!("idres-dns-udp-{i}"))
                    .spawn(move || worker(&authority, &socket, &budget, &stop))?,
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

fn worker(authority: &Authority, socket: &UdpSocket, budget: &ByteBudget, stop: &AtomicBool) {
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
            if authority.answer(query, Transport::Udp, now, out) != Outcome::Reply {
                continue;
            }
            let ip = peer.as_ref().and_then(source_ip);
            let verdict = ip.map_or(Verdict::Send, |ip| budget.charge(ip, out.len()));
            match verdict {
                Verdict::Send => {}
                Verdict::Slip if wire::truncate_to_question(out) => authority.count_limited(),
                Verdict::Slip | Verdict::Drop => {
                    authority.count_limited();
                    continue;
                }
            }
            to[k] = *peer;
            k += 1;
        }
        send_all(fd, &mut tx_headers, &outs[..k], &to[..k]);
    }
}

fn source_ip(addr: &SockaddrStorage) -> Option<std::net::IpAddr> {
    if let Some(v4) = addr.as_sockaddr_in() {
        return Some(std::net::IpAddr::V4(v4.ip()));
    }
    addr.as_sockaddr_in6()
        .map(|v6| std::net::IpAddr::V6(v6.ip()))
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
