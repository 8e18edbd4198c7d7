//! Wiring of the gRPC face into a running node: the `[grpc]` section of
//! the configuration, the listener, and the background tasks of the
//! secondary and mirror roles.
//!
//! - `top`: serves the API; keeps filings and the prefix table.
//! - `secondary`: serves the API for its own clients, follows the
//!   upstream's prefix table (`0.NA`) and its own prefixes, and escrows the
//!   changes of its own prefixes upstream.
//! - `mirror`: follows everything upstream; refuses writes.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use idres_store::Store;
use serde::Deserialize;
use tokio::sync::watch;

use crate::core::{Core, Role};
use crate::pb::{self, node_service_client::NodeServiceClient};
use crate::replica::{self, FollowOptions, FollowStatus, Upstream};
use crate::server::{self, Reporting, Security};
use crate::tls::{ClientTlsPem, ServerTls, ServerTlsPem};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

/// The `[grpc]` section.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GrpcConfig {
    /// Address of the gRPC listener; the face is off when unset.
    pub listen: Option<SocketAddr>,
    /// This node's server certificate chain (PEM).
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// CA whose client certificates identify nodes.
    pub client_ca: Option<PathBuf>,
    /// CA whose `operator:` certificates identify operators (the client CA
    /// when unset).
    pub operator_ca: Option<PathBuf>,
    /// Certificate revocation lists (PEM) of those CAs: a revoked client
    /// certificate is refused. Read again on SIGHUP.
    pub client_crls: Vec<PathBuf>,
    /// Serve without TLS: development only, refused off loopback.
    pub dev_plaintext: bool,
    /// CA of the upstream's server certificate (secondary and mirror).
    pub upstream_ca: Option<PathBuf>,
    /// This node's client certificate for the upstream.
    pub upstream_cert: Option<PathBuf>,
    /// Its key.
    pub upstream_key: Option<PathBuf>,
    /// Name to check in the upstream's certificate (the URL's host when
    /// unset).
    pub upstream_server_name: Option<String>,
    /// Development: caller name for a plaintext upstream.
    pub upstream_dev_peer: Option<String>,
    /// Entries per sync batch asked of the upstream.
    pub sync_batch: u32,
    /// Change-log entries to keep for replicas (0: keep all). Older ones
    /// are trimmed every minute; a replica further behind gets a snapshot.
    pub keep_changes: u64,
    /// Seconds between a secondary node's checks of its own prefixes
    /// (0: 30).
    pub prefix_refresh_secs: u64,
    /// What the top node does with the prefixes of a suspended or revoked
    /// node: `escrow` (the default) answers them itself from the escrowed
    /// copies; `refuse` answers them with an error naming why.
    pub withdrawn_prefixes: String,
    /// A mirror or secondary node is ready (`/readyz`, gRPC health) only
    /// while it was caught up with its upstream within this many seconds
    /// (0: 60).
    pub ready_max_lag_secs: u64,
    /// Most connections at once (0: 4096); when full, the longest-idle one
    /// is closed to make room.
    pub max_connections: usize,
    /// Most connections at once from one address (0: 64).
    pub max_per_address: usize,
    /// Seconds a connection may carry nothing before it is closed (0: an
    /// hour).
    pub idle_secs: u64,
    /// Concurrent calls (HTTP/2 streams) on one connection (0: 64).
    pub max_streams: u32,
}

impl GrpcConfig {
    /// The bounds of the face.
    pub fn limits(&self) -> crate::server::Limits {
        let d = crate::server::Limits::default();
        let or = |v: usize, default: usize| if v == 0 { default } else { v };
        crate::server::Limits {
            conns: idres_net::ConnLimits {
                max_connections: or(self.max_connections, d.conns.max_connections),
                max_per_address: or(self.max_per_address, d.conns.max_per_address),
                idle: match self.idle_secs {
                    0 => d.conns.idle,
                    s => std::time::Duration::from_secs(s),
                },
                ..d.conns
            },
            max_streams: if self.max_streams == 0 {
                d.max_streams
            } else {
                self.max_streams
            },
            ..d
        }
    }
}

/// Why the face could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// Something is missing or wrong in the configuration.
    #[error("[grpc] configuration: {0}")]
    Config(String),
    /// TLS material.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Binding the listener.
    #[error("binding gRPC {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The store.
    #[error(transparent)]
    Service(#[from] crate::error::ServiceError),
}

/// A started gRPC face and its background tasks.
#[derive(Debug)]
pub struct GrpcFace {
    /// Bound listener address, if the API is served.
    pub addr: Option<SocketAddr>,
    /// Follower progress (secondary and mirror).
    pub follow_status: Option<watch::Receiver<FollowStatus>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    tls: Option<(watch::Sender<ServerTls>, GrpcConfig)>,
}

/// Reads the server's TLS setup from the files `config` names.
pub fn server_tls(config: &GrpcConfig) -> Result<ServerTls, StartError> {
    let need = |p: &Option<PathBuf>, what: &str| {
        p.clone().ok_or_else(|| {
            StartError::Config(format!(
                "{what} is required (mutual TLS); dev_plaintext serves without TLS on loopback only"
            ))
        })
    };
    let pem = ServerTlsPem::read(
        &need(&config.cert, "cert")?,
        &need(&config.key, "key")?,
        &need(&config.client_ca, "client_ca")?,
        config.operator_ca.as_deref(),
    )?
    .with_crls(&config.client_crls)?;
    Ok(ServerTls::new(&pem)?)
}

impl GrpcFace {
    /// Reads the certificate, key, CAs and CRLs again and serves new
    /// connections with them; open connections keep theirs. On an error
    /// the setup in force stays.
    pub fn reload_tls(&self) -> Result<bool, StartError> {
        let Some((tx, config)) = &self.tls else {
            return Ok(false);
        };
        let fresh = server_tls(config)?;
        let _ = tx.send(fresh);
        Ok(true)
    }

    /// Waits for the tasks to end after the stop signal.
    pub async fn join(self) {
        for t in self.tasks {
            let _ = t.await;
        }
    }
}

fn upstream_of(config: &GrpcConfig, url: &str) -> Result<Upstream, StartError> {
    let tls = if url.starts_with("https://") {
        let need = |p: &Option<PathBuf>, what: &str| {
            p.clone().ok_or_else(|| {
                StartError::Config(format!("{what} is required for an https upstream"))
            })
        };
        let mut t = ClientTlsPem::read(
            &need(&config.upstream_ca, "upstream_ca")?,
            &need(&config.upstream_cert, "upstream_cert")?,
            &need(&config.upstream_key, "upstream_key")?,
        )?;
        t.server_name = config.upstream_server_name.clone();
        Some(t)
    } else if url.starts_with("http://") {
        None
    } else {
        return Err(StartError::Config(format!(
            "upstream {url:?} must start with https:// (or http:// for a development upstream)"
        )));
    };
    Ok(Upstream {
        url: url.to_owned(),
        tls,
        dev_peer: config.upstream_dev_peer.clone(),
    })
}

/// Starts the face: binds and serves the API if `listen` is set, and runs
/// the role's background tasks, until `stop` turns true.
pub async fn start(
    config: &GrpcConfig,
    role: Role,
    upstream: Option<&str>,
    store: Arc<dyn Store>,
    stop: watch::Receiver<bool>,
) -> Result<GrpcFace, StartError> {
    start_reporting(config, role, upstream, store, stop, Reporting::default()).await
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    upstream: String,
}

type GaugeF = Gauge<f64, std::sync::atomic::AtomicU64>;

/// Exports a follower's progress and makes it part of readiness.
fn report_follower(
    reporting: &Reporting,
    url: &str,
    status: watch::Receiver<FollowStatus>,
    max_lag: std::time::Duration,
) {
    let started = std::time::SystemTime::now();
    if let Some(m) = &reporting.metrics {
        let applied = Family::<UpstreamLabels, Gauge>::default();
        let lag = Family::<UpstreamLabels, Gauge>::default();
        let lag_secs = Family::<UpstreamLabels, GaugeF>::default();
        m.register(
            "idres_follower_applied_sequence",
            "Upstream sequence number applied through",
            applied.clone(),
        );
        m.register(
            "idres_follower_lag_changes",
            "Upstream changes not yet applied, as of the last batch",
            lag.clone(),
        );
        m.register(
            "idres_follower_lag_seconds",
            "Seconds since the follower was last caught up with its upstream",
            lag_secs.clone(),
        );
        let labels = UpstreamLabels {
            upstream: url.to_owned(),
        };
        let st = status.clone();
        m.on_scrape(move || {
            let s = st.borrow().clone();
            applied
                .get_or_create(&labels)
                .set(i64::try_from(s.applied_seq).unwrap_or(i64::MAX));
            lag.get_or_create(&labels)
                .set(i64::try_from(s.lag_changes()).unwrap_or(i64::MAX));
            lag_secs.get_or_create(&labels).set(s.lag_seconds(started));
        });
    }
    if let Some(h) = &reporting.health {
        let url = url.to_owned();
        h.add("follower", move || {
            let s = status.borrow().clone();
            if s.in_sync_at.is_none() {
                return Err(format!(
                    "not yet caught up with {url} ({} changes behind as of the last batch)",
                    s.lag_changes()
                ));
            }
            let secs = s.lag_seconds(started);
            if secs <= max_lag.as_secs_f64() {
                Ok(())
            } else {
                Err(format!(
                    "not caught up with {url} for {secs:.0} s (allowed {} s; {} changes behind as of the last batch)",
                    max_lag.as_secs(),
                    s.lag_changes()
                ))
            }
        });
    }
}

/// Exports a secondary node's escrow backlog and dead letters.
fn report_escrow(reporting: &Reporting, store: &Arc<dyn Store>, url: &str) -> Counter {
    let dead = Counter::default();
    if let Some(m) = &reporting.metrics {
        let backlog = Family::<UpstreamLabels, Gauge>::default();
        let dead_letters = Family::<UpstreamLabels, Counter>::default();
        m.register(
            "idres_escrow_backlog",
            "Local changes not yet escrowed upstream",
            backlog.clone(),
        );
        m.register(
            "idres_escrow_dead_letters",
            "Escrowed operations the upstream refused",
            dead_letters.clone(),
        );
        let labels = UpstreamLabels {
            upstream: url.to_owned(),
        };
        let (store, url, dead_out) = (Arc::clone(store), url.to_owned(), dead.clone());
        m.on_scrape(move || {
            let at = crate::escrow::cursor_of(&*store, &url).unwrap_or(0);
            let n = store.last_seq().saturating_sub(at);
            backlog
                .get_or_create(&labels)
                .set(i64::try_from(n).unwrap_or(i64::MAX));
            let c = dead_letters.get_or_create(&labels);
            let (have, want) = (c.get(), dead_out.get());
            if want > have {
                c.inc_by(want - have);
            }
        });
    }
    dead
}

/// [`start`], reporting metrics and readiness as `reporting` says.
pub async fn start_reporting(
    config: &GrpcConfig,
    role: Role,
    upstream: Option<&str>,
    store: Arc<dyn Store>,
    stop: watch::Receiver<bool>,
    reporting: Reporting,
) -> Result<GrpcFace, StartError> {
    let mut core = Core::new(Arc::clone(&store), role)?;
    if let Some(s) = &reporting.schemes {
        if let Some(c) = Arc::get_mut(&mut core) {
            c.schemes = s.clone();
        }
    }
    match config.withdrawn_prefixes.as_str() {
        "" | "escrow" => core.registry.set_refuse_withdrawn(false),
        "refuse" => core.registry.set_refuse_withdrawn(true),
        other => {
            return Err(StartError::Config(format!(
                "withdrawn_prefixes = {other:?}: use \"escrow\" or \"refuse\""
            )))
        }
    }
    let mut tasks = Vec::new();
    let mut addr = None;
    let mut tls_reload = None;
    if let Some(listen) = config.listen {
        let security = if config.dev_plaintext {
            if !listen.ip().is_loopback() {
                return Err(StartError::Config(format!(
                    "dev_plaintext is allowed only on a loopback address, not {listen}"
                )));
            }
            Security::DevelopmentPlaintext
        } else {
            let (tx, rx) = watch::channel(server_tls(config)?);
            tls_reload = Some((tx, config.clone()));
            Security::Reloadable(rx)
        };
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .map_err(|source| StartError::Bind {
                addr: listen,
                source,
            })?;
        addr = Some(listener.local_addr().map_err(|source| StartError::Bind {
            addr: listen,
            source,
        })?);
        let mut s = stop.clone();
        let core = Arc::clone(&core);
        let mut rep = reporting.clone();
        rep.limits.get_or_insert_with(|| config.limits());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                let _ = s.wait_for(|v| *v).await;
            };
            if let Err(e) = server::serve_reporting(core, listener, security, shutdown, rep).await {
                tracing::error!(error = %e, "gRPC server stopped");
            }
        }));
    }
    let mut follow_status = None;
    match (role, upstream) {
        (Role::Top, _) => {}
        (_, None) => {
            return Err(StartError::Config(format!(
                "the {} role needs --upstream",
                role.as_str()
            )))
        }
        (_, Some(url)) => {
            let up = upstream_of(config, url)?;
            let (tx, rx) = watch::channel(FollowStatus::default());
            let max_lag = std::time::Duration::from_secs(match config.ready_max_lag_secs {
                0 => 60,
                n => n,
            });
            report_follower(&reporting, url, rx.clone(), max_lag);
            follow_status = Some(rx);
            let batch = if config.sync_batch == 0 {
                4096
            } else {
                config.sync_batch
            };
            let refresh = std::time::Duration::from_secs(match config.prefix_refresh_secs {
                0 => 30,
                n => n,
            });
            let store2 = Arc::clone(&store);
            let stop2 = stop.clone();
            let up2 = up.clone();
            tasks.push(tokio::spawn(async move {
                if role == Role::Secondary {
                    follow_own(store2, up2, batch, refresh, stop2, tx).await;
                    return;
                }
                let options = FollowOptions {
                    prefixes: Vec::new(),
                    batch_size: batch,
                    stop_when_caught_up: false,
                };
                if let Err(e) = replica::follow(store2, up2, options, stop2, Some(tx)).await {
                    tracing::error!(error = %e, "follower stopped");
                }
            }));
            if role == Role::Secondary {
                let stop3 = stop.clone();
                let dead = report_escrow(&reporting, &store, url);
                tasks.push(tokio::spawn(crate::escrow::run(store, up, stop3, dead)));
            }
        }
    }
    Ok(GrpcFace {
        addr,
        follow_status,
        tasks,
        tls: tls_reload,
    })
}

/// A secondary node follows the prefix table and its own prefixes; when the
/// upstream allocates or withdraws one, it starts over with the new filter
/// (the stored cursor's filter differs, so the new ranges come as a
/// snapshot).
async fn follow_own(
    store: Arc<dyn Store>,
    up: Upstream,
    batch: u32,
    check_every: std::time::Duration,
    mut stop: watch::Receiver<bool>,
    status: watch::Sender<FollowStatus>,
) {
    loop {
        let Some(mut own) = own_prefixes(&up, stop.clone()).await else {
            return;
        };
        own.insert(0, idres_model::PREFIX_RECORD_PREFIX.to_owned());
        let (inner_tx, inner_rx) = watch::channel(false);
        let options = FollowOptions {
            prefixes: own.clone(),
            batch_size: batch,
            stop_when_caught_up: false,
        };
        let run = replica::follow(
            Arc::clone(&store),
            up.clone(),
            options,
            inner_rx,
            Some(status.clone()),
        );
        tokio::pin!(run);
        let changed = loop {
            tokio::select! {
                r = &mut run => {
                    if let Err(e) = r {
                        tracing::error!(error = %e, "follower stopped");
                    }
                    return;
                }
                _ = stop.changed() => {
                    let _ = inner_tx.send(true);
                    let _ = run.await;
                    return;
                }
                _ = tokio::time::sleep(check_every) => {
                    if let Some(mut now) = own_prefixes(&up, stop.clone()).await {
                        now.insert(0, idres_model::PREFIX_RECORD_PREFIX.to_owned());
                        if now != own {
                            break now;
                        }
                    }
                }
            }
        };
        tracing::info!(prefixes = ?changed, "this node's prefixes changed; following the new set");
        let _ = inner_tx.send(true);
        let _ = run.await;
    }
}

/// Trims the change log of `store` to its last `keep` entries every
/// minute until `stop` turns true.
pub async fn trim_log(
    store: Arc<idres_store::SledStore>,
    keep: u64,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        tokio::select! {
            _ = tokio::time::sleep(std::time::Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        let last = store.last_seq();
        if last <= keep {
            continue;
        }
        let s = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || s.trim_changes(last - keep + 1)).await {
            Ok(Ok(first)) => tracing::debug!(first_seq = first, "change log trimmed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "trimming the change log failed"),
            Err(e) => tracing::warn!(error = %e, "trimming the change log failed"),
        }
    }
}

/// The prefixes the upstream allocated to this node, retried until known
/// or stopped.
async fn own_prefixes(up: &Upstream, mut stop: watch::Receiver<bool>) -> Option<Vec<String>> {
    let mut wait = std::time::Duration::from_millis(200);
    loop {
        let attempt = async {
            let ch = up.channel().await.map_err(|e| e.to_string())?;
            let mut c = NodeServiceClient::new(ch);
            c.list_prefixes(up.request(pb::ListPrefixesRequest::default()))
                .await
                .map(|r| {
                    r.into_inner()
                        .prefixes
                        .into_iter()
                        .map(|a| a.prefix)
                        .collect::<Vec<_>>()
                })
                .map_err(|s| s.message().to_owned())
        };
        match attempt.await {
            Ok(mut p) => {
                p.sort();
                return Some(p);
            }
            Err(e) => {
                tracing::warn!(upstream = %up.url, error = %e, "asking the upstream for this node's prefixes")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return None,
        }
        wait = (wait * 2).min(std::time::Duration::from_secs(10));
    }
}
