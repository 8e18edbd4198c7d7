//! The HTTP face of idres.
//!
//! One listener (plain HTTP, or HTTPS with rustls and an optional client
//! CA) serves, on the same port as a Handle.Net server's port 8000:
//!
//! - the Handle.Net-compatible JSON API ([`api`]): `/api/handles/{handle}`
//!   with GET, PUT and DELETE, `/api/handles?prefix=` listing, and
//!   `/api/prefixes`;
//! - native Handle messages over HTTP ([`native`]): `POST /` with
//!   `Content-Type: application/x-hdl-message`, answered by the same
//!   [`Handler`](idres_service::Handler) as UDP and TCP;
//! - reverse lookup ([`hrls`]): `/hrls/handles?URL=*pattern*`, from the
//!   store's value index;
//! - a web resolver page ([`web`]) at `/` and `/{handle}`;
//! - its own OpenAPI description ([`openapi`]) and Prometheus metrics
//!   ([`metrics`]).
//!
//! Writes are authenticated ([`auth`]): HTTP Basic with the user
//! `index%3Ahandle` and the HS_SECKEY as password, checked against the
//! sealed secret ([`idres_auth::secret`]), or a client certificate whose CN
//! or UID is `index:handle`. The identity must be granted the operation's
//! bit by an HS_ADMIN value of the handle or of its prefix record, directly
//! or through HS_VLIST groups, by the node's one policy
//! ([`idres_auth::policy`]), decided by the store's writer against the
//! state the write is applied to. A write is answered only once the store
//! reports it durable.
//!
//! The caller binds the listener and hands it in ([`serve`]), so that
//! tests bind port 0.

#![forbid(unsafe_code)]

pub mod api;
pub mod auth;
pub mod bootstrap;
mod error;
pub mod gs1;
pub mod hrls;
pub mod metrics;
pub mod native;
pub mod openapi;
mod query;
mod server;
pub mod tls;
pub mod web;

use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use axum::Router;
use idres_service::Handler;
use idres_store::Store;

pub use error::ApiError;
pub use server::{serve, serve_reloadable, ConnInfo};
pub use tls::{TlsError, TlsFiles};

/// Settings of the HTTP face.
#[derive(Debug, Clone)]
pub struct HttpOptions {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most connections open at once; when full, the longest-idle one is
    /// closed to make room.
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub max_per_address: usize,
    /// How long a client may take to send a request's body.
    pub body_timeout: Duration,
    /// How long a client may take to send a request's headers.
    pub header_timeout: Duration,
    /// How long a connection with no request in progress is kept open.
    pub idle_timeout: Duration,
    /// How long a TLS handshake may take.
    pub handshake_timeout: Duration,
    /// Failed password checks for one identity from one address after
    /// which that address is refused for `auth_lockout` (0: never).
    pub max_auth_failures: u32,
    /// How long such an address is refused.
    pub auth_lockout: Duration,
    /// Most handles one page of `/api/handles?prefix=` may hold.
    pub max_page_size: usize,
    /// Most handles one page of `/hrls/handles` may hold.
    pub max_search_limit: usize,
    /// The public base URL of the GS1 resolver (`https://id.example.org`),
    /// used in linkset anchors and every absolute URL it writes; without
    /// it, the request's `Host`.
    pub public_url: Option<String>,
    /// The resolver's name in its description file.
    pub resolver_name: String,
}

impl Default for HttpOptions {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 << 20,
            max_connections: 4096,
            max_per_address: 256,
            body_timeout: Duration::from_secs(30),
            header_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(3600),
            handshake_timeout: Duration::from_secs(10),
            max_auth_failures: 10,
            auth_lockout: Duration::from_secs(600),
            max_page_size: 10_000,
            max_search_limit: 10_000,
            public_url: None,
            resolver_name: "idres".into(),
        }
    }
}

/// What every request handler shares.
#[derive(Debug)]
pub struct App {
    store: Arc<dyn Store>,
    handler: Arc<Handler>,
    auth: auth::Authenticator,
    metrics: Arc<idres_metrics::Metrics>,
    face: idres_metrics::FaceMetrics,
    health: Arc<idres_metrics::Health>,
    options: HttpOptions,
}

impl App {
    /// The state of an HTTP face over `handler` (and its store), with a
    /// registry and readiness checks of its own.
    pub fn new(handler: Arc<Handler>, options: HttpOptions) -> Arc<Self> {
        Self::with_node(
            handler,
            options,
            idres_metrics::Metrics::new(),
            idres_metrics::Health::new(),
        )
    }

    /// The state of an HTTP face that exports the node's `metrics` and
    /// answers `/readyz` from its `health`.
    pub fn with_node(
        handler: Arc<Handler>,
        options: HttpOptions,
        metrics: Arc<idres_metrics::Metrics>,
        health: Arc<idres_metrics::Health>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store: Arc::clone(handler.store()),
            auth: auth::Authenticator::new(
                Arc::clone(handler.auth().secrets()),
                options.max_auth_failures,
                options.auth_lockout,
            ),
            handler,
            face: metrics.face("http"),
            metrics,
            health,
            options,
        })
    }

    /// The store served.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The node's Handle request handler.
    pub fn handler(&self) -> &Arc<Handler> {
        &self.handler
    }

    /// The options in force.
    pub fn options(&self) -> &HttpOptions {
        &self.options
    }

    /// The node's metrics.
    pub fn metrics(&self) -> &Arc<idres_metrics::Metrics> {
        &self.metrics
    }
}

/// The routes of the HTTP face.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(web::home).post(native::post))
        .route("/api/handles", get(api::list_handles))
        .route("/api/handles/", get(api::list_handles))
        .route(
            "/api/handles/{*handle}",
            get(api::get_handle)
                .put(api::put_handle)
                .delete(api::delete_handle),
        )
        .route("/api/prefixes", get(api::list_prefixes))
        .route("/api/resolve", get(api::resolve_any))
        .route("/api/links", get(api::links))
        .route("/api/openapi.json", get(openapi::document))
        .route("/hrls/handles", get(hrls::search))
        .route("/hrls/handles/", get(hrls::search))
        .route("/.well-known/gs1resolver", get(gs1::description))
        .route("/metrics", get(metrics::export))
        .route("/healthz", get(metrics::healthz))
        .route("/readyz", get(metrics::readyz))
        .fallback(web::by_path)
        .layer(axum::middleware::from_fn_with_state(
            Arc::clone(&app),
            metrics::track,
        ))
        // A body must arrive within its deadline: a client that trickles
        // one holds a connection and a buffer for nothing.
        .layer(tower_http::timeout::RequestBodyTimeoutLayer::new(
            app.options().body_timeout,
        ))
        .with_state(app)
}
