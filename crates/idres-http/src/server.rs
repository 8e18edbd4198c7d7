//! The accept loop: plain TCP or TLS, HTTP/1.1 with keep-alive or HTTP/2,
//! connections admitted by the shared tracker of `idres-net` (caps in all
//! and per address, the longest-idle connection evicted when full), idle
//! connections closed after [`HttpOptions::idle_timeout`], deadlines for
//! the TLS handshake, the headers and the body, and a graceful stop.
//!
//! Each connection's peer address and client-certificate identity are put
//! into every request's extensions as a [`ConnInfo`], which is how the
//! handlers learn of a certificate the TLS layer verified.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use idres_net::{Activity, Tracker};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tower::ServiceExt as _;

use crate::auth::Identity;
use crate::tls::identity_from_cert;
use crate::{App, HttpOptions};

/// How long open connections get to finish their requests at shutdown.
const DRAIN: Duration = Duration::from_secs(3);

/// What a request's connection tells about its client.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// The client's address.
    pub peer: SocketAddr,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// The identity named by a verified client certificate.
    pub client_identity: Option<Identity>,
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    loop {
        if *stop.borrow_and_update() {
            return;
        }
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// Serves `app` on `listener` until `stop` turns true (or its sender is
/// dropped), then lets open connections finish for a few seconds.
pub async fn serve(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<Arc<rustls::ServerConfig>>,
    stop: watch::Receiver<bool>,
) {
    serve_reloadable(listener, app, tls.map(|t| watch::channel(t).1), stop).await;
}

/// [`serve`] with a TLS setup that may be replaced while serving: each new
/// connection takes the one in force when it is accepted, and open
/// connections keep theirs.
pub async fn serve_reloadable(
    listener: TcpListener,
    app: Arc<App>,
    tls: Option<watch::Receiver<Arc<rustls::ServerConfig>>>,
    mut stop: watch::Receiver<bool>,
) {
    let router = crate::router(Arc::clone(&app));
    let options = app.options().clone();
    let tracker = Tracker::for_face(
        idres_net::ConnLimits {
            max_connections: options.max_connections.max(1),
            max_per_address: options.max_per_address.max(1),
            idle: options.idle_timeout,
            handshake: options.handshake_timeout,
            request: options.body_timeout,
        },
        Some(app.metrics().face("http")),
    );
    let mut tasks = JoinSet::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off briefly
                    // rather than spin.
                    tracing::warn!(error = %e, "HTTP accept failed");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(50)) => {},
                        () = stopped(&mut stop) => break,
                    }
                    continue;
                }
            },
            () = stopped(&mut stop) => break,
        };
        let Ok(slot) = tracker.admit(peer.ip()) else {
            continue;
        };
        let _ = stream.set_nodelay(true);
        let router = router.clone();
        let conn_stop = stop.clone();
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(Arc::clone(&t.borrow())));
        let options = options.clone();
        let evicted = slot.token();
        tasks.spawn(async move {
            let activity = Arc::clone(slot.activity());
            let _slot = slot;
            let conn = async move {
                match acceptor {
                    None => {
                        let info = ConnInfo {
                            peer,
                            tls: false,
                            client_identity: None,
                        };
                        serve_connection(stream, info, router, conn_stop, &options, activity).await;
                    }
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            options.handshake_timeout,
                            acceptor.accept(stream),
                        )
                        .await;
                        let tls_stream = match handshake {
                            Ok(Ok(s)) => s,
                            Ok(Err(e)) => {
                                tracing::debug!(%peer, error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => {
                                tracing::debug!(%peer, "TLS handshake timed out");
                                return;
                            }
                        };
                        let client_identity = tls_stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|c| c.first())
                            .and_then(|c| identity_from_cert(c));
                        let info = ConnInfo {
                            peer,
                            tls: true,
                            client_identity,
                        };
                        serve_connection(tls_stream, info, router, conn_stop, &options, activity)
                            .await;
                    }
                }
            };
            tokio::select! {
                () = conn => {}
                () = evicted.cancelled() => {}
            }
        });
        while tasks.try_join_next().is_some() {}
    }
    // Connections saw the stop too and are draining; wait for them, within
    // bounds.
    let _ = tokio::time::timeout(DRAIN + Duration::from_secs(1), async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    tasks.abort_all();
}

async fn serve_connection<S>(
    stream: S,
    info: ConnInfo,
    router: Router,
    mut stop: watch::Receiver<bool>,
    options: &HttpOptions,
    activity: Arc<Activity>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let peer = info.peer;
    let counter = Arc::clone(&activity);
    let service = hyper::service::service_fn(move |mut req: Request<Incoming>| {
        req.extensions_mut().insert(info.clone());
        let guard = counter.busy();
        let call = router.clone().oneshot(req);
        async move {
            let resp = call.await;
            drop(guard);
            resp
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(options.header_timeout)
        .keep_alive(true);
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(60)))
        .keep_alive_timeout(Duration::from_secs(20));
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    // Checked a few times per idle period, so that an idle connection is
    // closed between one and one and a quarter idle periods after its last
    // request.
    let tick = (options.idle_timeout / 4).max(Duration::from_millis(50));
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                }
                return;
            }
            () = stopped(&mut stop) => break,
            () = tokio::time::sleep(tick) => {
                if activity.idle_for().is_some_and(|d| d >= options.idle_timeout) {
                    tracing::debug!(%peer, "closing an idle HTTP connection");
                    break;
                }
            }
        }
    }
    conn.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN, conn.as_mut()).await;
}
