//! The DNS face of idres: OID resolution in the X.672 OID Resolution
//! System (ORS) over UDP, TCP and DNS-over-QUIC.
//!
//! An OID's record is the handle `OID/<oid>` in the node's store (see
//! [`idres_model::oid`]); its DNS name is the OID's arcs reversed under the
//! ORS zone. [`Authority`] answers queries from the store without sockets
//! or clocks; [`udp`], [`tcp`] and [`doq`] carry messages to and from it.
//! [`start`] wires them together on sockets the caller bound (tests bind
//! port 0), and [`DnsServer::shutdown`] stops them.
//!
//! How values become NAPTR, URI and TXT records is in [`views`]; the
//! answering rules are in [`authority`]; [`index`] tells empty
//! non-terminals from names that do not exist; `docs/dns.md` describes it
//! all for operators.

#![forbid(unsafe_code)]

pub mod authority;
pub mod config;
pub mod doq;
pub mod index;
pub mod response;
pub mod tcp;
pub mod udp;
pub mod views;
pub mod wire;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use idres_store::Store;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use authority::{Authority, Outcome, Transport};
pub use config::{ConfigError, DnsConfig};

/// Current Unix time in seconds.
pub(crate) fn unix_now() -> u32 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u32::try_from(d.as_secs()).unwrap_or(u32::MAX))
        .unwrap_or(0)
}

/// Sockets for the DNS face, bound by the caller.
#[derive(Debug, Default)]
pub struct DnsSockets {
    /// UDP sockets sharing one address (one worker each).
    pub udp: Vec<std::net::UdpSocket>,
    /// The TCP listener.
    pub tcp: Option<std::net::TcpListener>,
    /// The UDP socket for DNS-over-QUIC.
    pub doq: Option<std::net::UdpSocket>,
}

impl DnsSockets {
    /// Binds what `config` asks for: UDP (one socket per worker) and TCP on
    /// `listen`, on the same port when `listen` has port 0; UDP for QUIC
    /// on `doq_listen`.
    pub fn bind(config: &DnsConfig) -> Result<Self, ConfigError> {
        let mut sockets = Self::default();
        if let Some(addr) = config.listen {
            let workers = match config.udp_workers {
                0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
                n => n,
            };
            let (udp, tcp) = idres_net::bind::udp_and_tcp(addr, workers).map_err(|e| {
                let (what, source) = match e {
                    idres_net::bind::PairError::Udp { source, .. } => ("DNS UDP", source),
                    idres_net::bind::PairError::Tcp { source, .. } => ("DNS TCP", source),
                };
                ConfigError::Io { what, source }
            })?;
            sockets.udp = udp;
            sockets.tcp = Some(tcp);
        }
        if let Some(addr) = config.doq_listen {
            sockets.doq =
                Some(
                    std::net::UdpSocket::bind(addr).map_err(|source| ConfigError::Io {
                        what: "DNS-over-QUIC",
                        source,
                    })?,
                );
        }
        Ok(sockets)
    }
}

/// The running DNS face.
#[derive(Debug)]
pub struct DnsServer {
    udp: Option<udp::UdpServer>,
    tasks: Vec<JoinHandle<()>>,
    stop: watch::Sender<bool>,
    tcp_addr: Option<SocketAddr>,
    doq_addr: Option<SocketAddr>,
    /// The QUIC endpoint, its certificate files and limits, for reloads.
    doq: Option<(
        quinn::Endpoint,
        std::path::PathBuf,
        std::path::PathBuf,
        doq::DoqLimits,
    )>,
}

impl DnsServer {
    /// Where UDP queries are taken.
    pub fn udp_addr(&self) -> Option<SocketAddr> {
        self.udp.as_ref().map(udp::UdpServer::local_addr)
    }

    /// Where TCP queries are taken.
    pub fn tcp_addr(&self) -> Option<SocketAddr> {
        self.tcp_addr
    }

    /// Where DNS-over-QUIC queries are taken.
    pub fn doq_addr(&self) -> Option<SocketAddr> {
        self.doq_addr
    }

    /// Reads the DNS-over-QUIC certificate and key again and serves new
    /// connections with them; open connections keep theirs. `Ok(false)`
    /// when there is no DNS-over-QUIC listener; on an error the setup in
    /// force stays.
    pub fn reload_tls(&self) -> Result<bool, ConfigError> {
        let Some((endpoint, cert, key, limits)) = &self.doq else {
            return Ok(false);
        };
        let fresh = doq::server_config(cert, key, *limits)?;
        endpoint.set_server_config(Some(fresh));
        Ok(true)
    }

    /// Stops accepting, ends open connections and waits for the workers.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = t.await;
        }
        if let Some(udp) = self.udp {
            let _ = tokio::task::spawn_blocking(move || udp.stop()).await;
        }
    }
}

/// Starts the DNS face on `sockets`, answering for `config`'s zone from
/// `store`. TCP and DNS-over-QUIC run on the current tokio runtime, so a
/// caller that hands in either must call this inside one; UDP runs on its
/// own threads.
pub fn start(
    config: &DnsConfig,
    store: Arc<dyn Store>,
    sockets: DnsSockets,
    metrics: Option<&Arc<idres_metrics::Metrics>>,
) -> Result<DnsServer, ConfigError> {
    let mut authority = Authority::new(config, store)?;
    if let Some(m) = metrics {
        authority.set_metrics(m);
    }
    let authority = Arc::new(authority);
    {
        // Until the index is built, the store answers its questions.
        let authority = Arc::clone(&authority);
        let max = config.index_max_records;
        std::thread::Builder::new()
            .name("idres-dns-index".into())
            .spawn(move || {
                let started = std::time::Instant::now();
                match authority.index().build(authority.store().as_ref(), max) {
                    Ok(()) => tracing::info!(
                        ms = started.elapsed().as_millis() as u64,
                        ready = authority.index().is_ready(),
                        "DNS OID index done"
                    ),
                    Err(e) => tracing::warn!(error = %e, "building the OID index failed"),
                }
            })
            .map_err(|source| ConfigError::Io {
                what: "OID index",
                source,
            })?;
    }
    let needs_runtime = sockets.tcp.is_some() || sockets.doq.is_some();
    if needs_runtime && tokio::runtime::Handle::try_current().is_err() {
        return Err(ConfigError::NoRuntime);
    }
    let doq_config = match &sockets.doq {
        None => None,
        Some(_) => {
            let (Some(cert), Some(key)) = (&config.cert, &config.key) else {
                return Err(ConfigError::MissingCertificate);
            };
            let limits = doq::DoqLimits {
                max_connections: config.max_doq_connections,
                max_streams: config.max_doq_streams,
                idle: Duration::from_secs(config.doq_idle_secs.max(1)),
            };
            Some((doq::server_config(cert, key, limits)?, limits))
        }
    };
    let (stop, stop_rx) = watch::channel(false);
    let mut tasks = Vec::new();
    let mut tcp_addr = None;
    if let Some(listener) = sockets.tcp {
        let io = |source| ConfigError::Io {
            what: "DNS TCP",
            source,
        };
        listener.set_nonblocking(true).map_err(io)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(io)?;
        tcp_addr = Some(listener.local_addr().map_err(io)?);
        let tracker =
            idres_net::Tracker::for_face(config.conn_limits(), metrics.map(|m| m.face("dns_tcp")));
        tasks.push(tokio::spawn(tcp::serve(
            Arc::clone(&authority),
            listener,
            tracker,
            stop_rx.clone(),
        )));
    }
    let mut doq_addr = None;
    let mut doq_reload = None;
    if let (Some(socket), Some((server_config, limits))) = (sockets.doq, doq_config) {
        let endpoint = doq::endpoint(socket, server_config)?;
        if let (Some(c), Some(k)) = (&config.cert, &config.key) {
            doq_reload = Some((endpoint.clone(), c.clone(), k.clone(), limits));
        }
        doq_addr = Some(endpoint.local_addr().map_err(|source| ConfigError::Io {
            what: "DNS-over-QUIC",
            source,
        })?);
        tasks.push(tokio::spawn(doq::serve(
            Arc::clone(&authority),
            endpoint,
            limits,
            stop_rx.clone(),
        )));
    }
    let udp = if sockets.udp.is_empty() {
        None
    } else {
        Some(
            udp::UdpServer::start(
                Arc::clone(&authority),
                sockets.udp,
                Arc::new(idres_net::ByteBudget::new(config.rrl())),
            )
            .map_err(|source| ConfigError::Io {
                what: "DNS UDP",
                source,
            })?,
        )
    };
    Ok(DnsServer {
        udp,
        tasks,
        stop,
        tcp_addr,
        doq_addr,
        doq: doq_reload,
    })
}
