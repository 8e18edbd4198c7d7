//! Serving the gRPC face: the four idres services, the standard health
//! service and server reflection, on a listener the caller bound.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::core::Core;
use crate::node_service::NodeServiceImpl;
use crate::pb;
use crate::registry_service::RegistryServiceImpl;
use crate::resolve_service::ResolveServiceImpl;
use crate::sync_service::SyncServiceImpl;
use crate::tls::{self, ServerTls};

/// Why the server could not start or stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// Plaintext was asked for on an address other than loopback.
    #[error("plaintext gRPC is allowed only on a loopback address, not {0}")]
    PlaintextNotLoopback(SocketAddr),
    /// The listener failed.
    #[error("gRPC listener: {0}")]
    Io(#[from] std::io::Error),
    /// The transport failed.
    #[error("gRPC transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    /// Reflection could not be set up.
    #[error("gRPC reflection: {0}")]
    Reflection(String),
}

/// Refuses every call, the health service and reflection included, on a
/// TLS connection whose client certificate did not verify, saying why.
/// The idres services then match the certificate to a filing or an
/// operator ([`crate::auth`]).
// tonic's interceptor signature fixes the error type.
#[allow(clippy::result_large_err)]
fn verified_peer(req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
    match req.extensions().get::<tls::PeerInfo>() {
        Some(info) if info.plaintext => Ok(req),
        Some(info) => match &info.identity {
            Ok(_) => Ok(req),
            Err(why) => Err(tonic::Status::unauthenticated(why.clone())),
        },
        None => Err(tonic::Status::unauthenticated(
            "no connection information; calls must come over the node's listener",
        )),
    }
}

/// How connections are secured.
#[derive(Debug, Clone)]
pub enum Security {
    /// Mutual TLS (the default and only production mode).
    MutualTls(ServerTls),
    /// Mutual TLS whose setup may be replaced while serving (certificate
    /// and CRL reloads); open connections keep theirs.
    Reloadable(tokio::sync::watch::Receiver<ServerTls>),
    /// Plaintext for development, refused unless the listener is loopback.
    DevelopmentPlaintext,
}

/// What the face reports to the rest of the node.
#[derive(Debug, Clone, Default)]
pub struct Reporting {
    /// Where calls are counted (face `grpc`).
    pub metrics: Option<Arc<idres_metrics::Metrics>>,
    /// The node's readiness, reported by the health service.
    pub health: Option<Arc<idres_metrics::Health>>,
    /// Connection limits (defaults when `None`).
    pub limits: Option<Limits>,
    /// The identifier schemes Resolve reads identifiers with (defaults
    /// when `None`).
    pub schemes: Option<idres_schemes::Schemes>,
}

/// Bounds of the gRPC face.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections in all, per address, idle cut and handshake deadline.
    pub conns: idres_net::ConnLimits,
    /// Concurrent HTTP/2 streams on one connection.
    pub max_streams: u32,
    /// Largest message decoded, in bytes.
    pub max_message_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            conns: idres_net::ConnLimits {
                max_connections: 4096,
                max_per_address: 64,
                ..idres_net::ConnLimits::default()
            },
            max_streams: 64,
            max_message_bytes: 64 << 20,
        }
    }
}

/// The services the health service reports on.
const SERVICES: [&str; 5] = [
    "",
    "idres.v1.NodeService",
    "idres.v1.RegistryService",
    "idres.v1.ResolveService",
    "idres.v1.SyncService",
];

/// Serves on `listener` until `shutdown` completes.
pub async fn serve(
    core: Arc<Core>,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    serve_reporting(core, listener, security, shutdown, Reporting::default()).await
}

/// Serves on `listener` until `shutdown` completes, counting calls and
/// reporting readiness as `reporting` says: the health service answers
/// SERVING only while every readiness check of the node passes.
pub async fn serve_reporting(
    core: Arc<Core>,
    listener: TcpListener,
    security: Security,
    shutdown: impl Future<Output = ()> + Send,
    reporting: Reporting,
) -> Result<(), ServeError> {
    let local = listener.local_addr()?;
    let tls = match security {
        Security::MutualTls(t) => Some(tokio::sync::watch::channel(t).1),
        Security::Reloadable(rx) => Some(rx),
        Security::DevelopmentPlaintext => {
            if !local.ip().is_loopback() {
                return Err(ServeError::PlaintextNotLoopback(local));
            }
            tracing::warn!(%local, "gRPC without TLS (development only)");
            None
        }
    };
    let (mut health, health_service) = tonic_health::server::health_reporter();
    let status_of = |ready: bool| {
        if ready {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        }
    };
    let ready_now = reporting.health.as_ref().is_none_or(|h| h.ready());
    for name in SERVICES {
        health.set_service_status(name, status_of(ready_now)).await;
    }
    let watcher = reporting.health.clone().map(|checks| {
        let mut reporter = health.clone();
        tokio::spawn(async move {
            let mut was = ready_now;
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let c = Arc::clone(&checks);
                let Ok(now) = tokio::task::spawn_blocking(move || c.ready()).await else {
                    continue;
                };
                if now != was {
                    for name in SERVICES {
                        reporter.set_service_status(name, status_of(now)).await;
                    }
                    was = now;
                }
            }
        })
    });
    let limits = reporting.limits.unwrap_or_default();
    let face = reporting.metrics.unwrap_or_default().face("grpc");
    let tracker = idres_net::Tracker::for_face(limits.conns, Some(face.clone()));
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ServeError::Reflection(e.to_string()))?;
    let max = limits.max_message_bytes;
    let served = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .max_concurrent_streams(Some(limits.max_streams))
        .concurrency_limit_per_connection(limits.max_streams as usize)
        .layer(crate::metrics::MetricsLayer::new(face))
        .layer(tonic::service::interceptor(verified_peer))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            pb::node_service_server::NodeServiceServer::new(NodeServiceImpl::new(Arc::clone(
                &core,
            )))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::registry_service_server::RegistryServiceServer::new(RegistryServiceImpl::new(
                Arc::clone(&core),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::resolve_service_server::ResolveServiceServer::new(ResolveServiceImpl::new(
                Arc::clone(&core),
            ))
            .max_decoding_message_size(max),
        )
        .add_service(
            pb::sync_service_server::SyncServiceServer::new(SyncServiceImpl::new(core))
                .max_decoding_message_size(max),
        )
        .serve_with_incoming_shutdown(tls::incoming(listener, tls, tracker), shutdown)
        .await;
    if let Some(w) = watcher {
        w.abort();
    }
    served?;
    Ok(())
}
