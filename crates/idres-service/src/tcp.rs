//! The Handle protocol over TCP.
//!
//! A connection carries envelope-framed messages one after another.
//! Connections are admitted by the shared tracker of `idres-net` (caps in
//! all and per address, the longest-idle connection evicted when full, a
//! long idle cut for clients that hold a connection for hours); a message
//! once begun must arrive whole, and a reply be taken, within the request
//! deadline; the size of a message is checked from the envelope before
//! anything is read into the per-connection buffer.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use idres_net::{ConnLimits, Slot, Tracker};
use idres_wire::{Envelope, ENVELOPE_LEN};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

use crate::admin::{Peer, Transport};
use crate::handler::{Handler, Outcome};
use crate::unix_now;

/// The tracker of the Handle TCP face, reporting evictions and refusals as
/// drops of face `handle_tcp`.
pub fn tracker(handler: &Handler, limits: ConnLimits) -> Arc<Tracker> {
    Tracker::for_face(limits, handler.face_metrics(Transport::Tcp).cloned())
}

/// Accepts connections on `listener` until `shutdown` turns true.
pub async fn serve(
    handler: Arc<Handler>,
    listener: TcpListener,
    tracker: Arc<Tracker>,
    shutdown: watch::Receiver<bool>,
) {
    let conns = shutdown.clone();
    idres_net::accept_loop(listener, tracker, shutdown, move |stream, peer, slot| {
        connection(Arc::clone(&handler), stream, peer, slot, conns.clone())
    })
    .await;
}

async fn connection(
    handler: Arc<Handler>,
    mut stream: TcpStream,
    peer: SocketAddr,
    slot: Slot,
    mut shutdown: watch::Receiver<bool>,
) {
    let limits = *slot.limits();
    let mut buf = Vec::new();
    let mut out = BytesMut::new();
    let mut state = Peer::new(peer, Transport::Tcp);
    loop {
        let mut head = [0u8; ENVELOPE_LEN];
        let read = tokio::select! {
            r = tokio::time::timeout(limits.idle, stream.read_exact(&mut head)) => r,
            _ = shutdown.changed() => return,
        };
        match read {
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        let _busy = slot.activity().busy();
        let Ok(env) = Envelope::decode(&head) else {
            tracing::debug!(%peer, "unreadable envelope on TCP; closing");
            return;
        };
        let len = env.message_length as usize;
        buf.clear();
        buf.extend_from_slice(&head);
        buf.resize(ENVELOPE_LEN + len, 0);
        match tokio::time::timeout(limits.request, stream.read_exact(&mut buf[ENVELOPE_LEN..]))
            .await
        {
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
                let written = tokio::time::timeout(limits.request, stream.write_all(&out)).await;
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
