//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766).
//!
//! Each message is preceded by its length in two bytes. A connection may
//! carry many queries, answered in order. Connections are admitted by the
//! shared tracker of `idres-net` (caps in all and per address, the
//! longest-idle connection evicted when full, a long idle cut); a message
//! once begun must arrive whole, and a reply be taken, within the request
//! deadline. A message that is not a query with a readable header closes
//! the connection.

use std::sync::Arc;

use idres_net::{Slot, Tracker};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::authority::{Authority, Outcome, Transport};
use crate::unix_now;

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    authority: Arc<Authority>,
    listener: TcpListener,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    let conns = shutdown.clone();
    idres_net::accept_loop(listener, tracker, shutdown, move |stream, _peer, slot| {
        let authority = Arc::clone(&authority);
        let shutdown = conns.clone();
        async move { connection(&authority, stream, slot, shutdown).await }
    })
    .await;
}

async fn connection(
    authority: &Authority,
    mut stream: TcpStream,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = *slot.limits();
    let mut msg = Vec::new();
    let mut out = Vec::with_capacity(4096);
    let mut frame = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(limits.idle, stream.read_exact(&mut len)) => r,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        let _busy = slot.activity().busy();
        msg.resize(usize::from(u16::from_be_bytes(len)), 0);
        if !matches!(
            tokio::time::timeout(limits.request, stream.read_exact(&mut msg)).await,
            Ok(Ok(_))
        ) {
            return;
        }
        if authority.answer(&msg, Transport::Tcp, unix_now(), &mut out) == Outcome::Drop {
            return;
        }
        let Ok(out_len) = u16::try_from(out.len()) else {
            return;
        };
        frame.clear();
        frame.extend_from_slice(&out_len.to_be_bytes());
        frame.extend_from_slice(&out);
        if !matches!(
            tokio::time::timeout(limits.request, stream.write_all(&frame)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
