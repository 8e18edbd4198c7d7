//! DNS over TCP (RFC 1035 §4.2.2, RFC 7766).
//!
//! Each message is preceded by its length in two bytes. A connection may
//! carry many queries, answered in order. The server bounds what a client
//! can hold: connections beyond the limit are closed at once, an idle
//! connection is closed after the idle time, a message must arrive whole
//! within that time, and a reply must be taken by the client within it.
//! A message that is not a query with a readable header closes the
//! connection.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::authority::{Authority, Outcome, Transport};
use crate::unix_now;

/// Limits of the TCP listener.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Most connections at once.
    pub max_connections: usize,
    /// How long a connection may wait for the next message or a write.
    pub idle: Duration,
}

/// Accepts connections until `shutdown` turns true.
pub async fn serve(
    authority: Arc<Authority>,
    listener: TcpListener,
    limits: TcpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of descriptors and the like: back off briefly.
                tracing::warn!(error = %e, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "TCP connection limit reached; closing");
            continue;
        };
        let authority = Arc::clone(&authority);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let _ = stream.set_nodelay(true);
            connection(&authority, stream, limits.idle, shutdown).await;
        });
    }
}

async fn connection(
    authority: &Authority,
    mut stream: TcpStream,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut msg = Vec::new();
    let mut out = Vec::with_capacity(4096);
    let mut frame = Vec::with_capacity(4096);
    loop {
        let mut len = [0u8; 2];
        let read = tokio::select! {
            _ = shutdown.changed() => return,
            r = tokio::time::timeout(idle, stream.read_exact(&mut len)) => r,
        };
        if !matches!(read, Ok(Ok(_))) {
            return;
        }
        msg.resize(usize::from(u16::from_be_bytes(len)), 0);
        if !matches!(
            tokio::time::timeout(idle, stream.read_exact(&mut msg)).await,
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
            tokio::time::timeout(idle, stream.write_all(&frame)).await,
            Ok(Ok(()))
        ) {
            return;
        }
    }
}
