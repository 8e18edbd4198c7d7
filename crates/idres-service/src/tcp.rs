//! The Handle protocol over TCP.
//!
//! A connection carries envelope-framed messages one after another. Every
//! resource is bounded: the number of connections (extra ones are closed at
//! once), the time a connection may sit idle or take to deliver a message,
//! and the size of a message (the envelope's length field is checked before
//! anything is read into the per-connection buffer).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use idres_wire::{Envelope, ENVELOPE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

use crate::admin::{Peer, Transport};
use crate::handler::{Handler, Outcome};
use crate::unix_now;

/// Limits of the TCP transport.
#[derive(Debug, Clone, Copy)]
pub struct TcpLimits {
    /// Most connections open at once.
    pub max_connections: usize,
    /// How long a connection may wait for its next message, or take to
    /// send one.
    pub idle_timeout: Duration,
}

impl Default for TcpLimits {
    fn default() -> Self {
        Self {
            max_connections: 1024,
            idle_timeout: Duration::from_secs(30),
        }
    }
}

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn serve(
    handler: Arc<Handler>,
    listener: TcpListener,
    limits: TcpLimits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "TCP accept failed");
                // Out of descriptors or similar: back off instead of spinning.
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = Arc::clone(&slots).try_acquire_owned() else {
            tracing::debug!(%peer, "TCP connection limit reached");
            drop(stream);
            continue;
        };
        let handler = Arc::clone(&handler);
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            connection(handler, stream, peer, limits.idle_timeout, shutdown).await;
            drop(permit);
        });
    }
}

async fn connection(
    handler: Arc<Handler>,
    mut stream: TcpStream,
    peer: SocketAddr,
    idle: Duration,
    mut shutdown: watch::Receiver<bool>,
) {
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::new();
    let mut out = BytesMut::new();
    let mut state = Peer::new(peer, Transport::Tcp);
    loop {
        let mut head = [0u8; ENVELOPE_LEN];
        let read = tokio::select! {
            r = tokio::time::timeout(idle, stream.read_exact(&mut head)) => r,
            _ = shutdown.changed() => return,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let Ok(env) = Envelope::decode(&head) else {
            tracing::debug!(%peer, "unreadable envelope on TCP; closing");
            return;
        };
        let len = env.message_length as usize;
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(ENVELOPE_LEN + len, 0);
        match tokio::time::timeout(idle, stream.read_exact(&mut buf[ENVELOPE_LEN..])).await {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        out.clear();
        let outcome = if Handler::may_block(&buf) {
            // Administration waits for the store's writer and checks keys:
            // off the async workers.
            let h = Arc::clone(&handler);
            let msg = std::mem::take(&mut buf);
            let mut st = state.clone();
            let mut o = std::mem::take(&mut out);
            let joined = tokio::task::spawn_blocking(move || {
                let outcome = h.handle_from(&msg, unix_now(), &mut st, &mut o);
                (outcome, msg, st, o)
            })
            .await;
            let Ok((outcome, msg, st, o)) = joined else {
                return;
            };
            buf = msg;
            state = st;
            out = o;
            outcome
        } else {
            handler.handle_from(&buf, unix_now(), &mut state, &mut out)
        };
        match outcome {
            Outcome::Reply => {
                let written = tokio::time::timeout(idle, stream.write_all(&out)).await;
                if !matches!(written, Ok(Ok(()))) {
                    return;
                }
            }
            Outcome::Drop => return,
        }
        // Large messages should not pin their buffers for the connection's life.
        if buf.capacity() > 64 * 1024 {
            buf = Vec::new();
            out = BytesMut::new();
        }
    }
}
