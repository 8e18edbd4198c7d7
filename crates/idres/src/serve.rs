//! `idres serve`: open the store, bind every configured face, answer until
//! SIGTERM or SIGINT, then stop accepting, let the writer commit what it
//! holds, and flush the store.
//!
//! Each face prints one line `listening <face> <address>` on standard
//! output once it is bound, so that scripts and tests that ask for port 0
//! learn the port chosen.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use idres_auth::{NodeKey, SecretBox, SecretPolicy};
use idres_metrics::{Health, Metrics};
use idres_model::SiteInfo;
use idres_service::udp::UdpServer;
use idres_service::{Auth, Handler, NodeIdentity};
use idres_store::{SledConfig, SledStore, Store};
use tokio::sync::watch;

use crate::config::Config;

/// How long shutdown may take before the process exits regardless.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(4500);

/// Options of `idres serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// Configuration file (TOML); flags override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Directory of the database.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Address of the Handle protocol listeners (UDP and TCP).
    #[arg(long)]
    pub handle_listen: Option<SocketAddr>,
    /// UDP worker threads (0 = one per CPU).
    #[arg(long)]
    pub udp_workers: Option<usize>,
    /// Address of the DNS listeners for OID resolution (UDP and TCP).
    #[arg(long)]
    pub dns_listen: Option<SocketAddr>,
    /// Address of the DNS-over-QUIC listener (needs `cert` and `key` in
    /// the `[dns]` section).
    #[arg(long)]
    pub doq_listen: Option<SocketAddr>,
    /// Address of the HTTP listener: JSON API, reverse lookup, web
    /// resolver (TLS and client CA in the `[http]` section).
    #[arg(long)]
    pub http_listen: Option<SocketAddr>,
    /// The node's role: top, secondary or mirror.
    #[arg(long, value_parser = ["top", "secondary", "mirror"])]
    pub role: Option<String>,
    /// gRPC URL of the upstream node (secondary and mirror roles).
    #[arg(long)]
    pub upstream: Option<String>,
    /// Address of the gRPC listener (mutual TLS; see the `[grpc]` section).
    #[arg(long)]
    pub grpc_listen: Option<SocketAddr>,
    /// Serve gRPC without TLS, for development: loopback addresses only.
    #[arg(long)]
    pub grpc_dev_plaintext: bool,
    /// The node's private key (from `idres keygen`): advertised in
    /// HS_SITE, it signs replies to certified requests.
    #[arg(long)]
    pub node_key: Option<PathBuf>,
}

impl ServeArgs {
    /// The configuration file with the flags applied.
    pub fn config(&self) -> anyhow::Result<Config> {
        let mut c = match &self.config {
            Some(path) => Config::load(path)?,
            None => Config::default(),
        };
        if let Some(d) = &self.data_dir {
            c.store.data_dir = d.clone();
        }
        if let Some(a) = self.handle_listen {
            c.handle.listen = a;
        }
        if let Some(w) = self.udp_workers {
            c.handle.udp_workers = w;
        }
        if let Some(a) = self.dns_listen {
            c.dns.listen = Some(a);
        }
        if let Some(a) = self.doq_listen {
            c.dns.doq_listen = Some(a);
        }
        if let Some(a) = self.http_listen {
            c.http.listen = Some(a);
        }
        if let Some(r) = &self.role {
            c.node.role = r.clone();
        }
        if let Some(u) = &self.upstream {
            c.node.upstream = Some(u.clone());
        }
        if let Some(a) = self.grpc_listen {
            c.grpc.listen = Some(a);
        }
        if self.grpc_dev_plaintext {
            c.grpc.dev_plaintext = true;
        }
        if let Some(k) = &self.node_key {
            c.node.key = Some(k.clone());
        }
        Ok(c)
    }
}

/// Opens the store of a configuration; `serving` keeps an in-memory copy
/// of the records for resolution, which batch commands do without.
pub fn open_store(config: &Config, serving: bool) -> anyhow::Result<Arc<SledStore>> {
    Ok(open_node_store(config, serving)?.0)
}

/// The secrets key of a configuration: `[node] secrets_key`, or
/// `secrets.key` in the data directory, made at the first start.
pub fn secrets(config: &Config) -> anyhow::Result<Arc<SecretBox>> {
    let path = config
        .node
        .secrets_key
        .clone()
        .unwrap_or_else(|| config.store.data_dir.join("secrets.key"));
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the directory {}", dir.display()))?;
    }
    Ok(Arc::new(SecretBox::load_or_create(&path)?))
}

/// Opens the store with its secrets key: every record written passes the
/// secret-key policy, whatever writes it.
pub fn open_node_store(
    config: &Config,
    serving: bool,
) -> anyhow::Result<(Arc<SledStore>, Arc<SecretBox>)> {
    let secrets = secrets(config)?;
    let mut sc = SledConfig::new(&config.store.data_dir);
    sc.metrics = Arc::default();
    sc.value_policy = Some(Arc::new(SecretPolicy::new(Arc::clone(&secrets))));
    sc.cache_bytes = config.store.cache_mb << 20;
    sc.max_record_bytes = config.store.max_record_bytes;
    sc.max_queued_writes = config.store.max_queued_writes;
    sc.schemes = config.schemes()?;
    sc.read_cache_bytes = if serving {
        usize::try_from(config.store.read_cache_mb << 20).unwrap_or(usize::MAX)
    } else {
        0
    };
    let store = SledStore::open(sc)
        .with_context(|| format!("opening the store in {}", config.store.data_dir.display()))?;
    Ok((Arc::new(store), secrets))
}

/// Forgets idempotency keys more than `window` changes old, once a minute.
async fn trim_idempotency(store: Arc<SledStore>, window: u64, mut stop: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(60)) => {}
            _ = stop.changed() => return,
        }
        let keep_from = store.last_seq().saturating_sub(window);
        if keep_from == 0 {
            continue;
        }
        let s = Arc::clone(&store);
        match tokio::task::spawn_blocking(move || s.trim_idempotency(keep_from)).await {
            Ok(Ok(n)) if n > 0 => {
                tracing::debug!(removed = n, keep_from, "idempotency keys trimmed")
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "trimming idempotency keys failed"),
            Err(e) => tracing::warn!(error = %e, "trimming idempotency keys failed"),
        }
    }
}

/// Runs the node until it is told to stop.
pub fn run(args: &ServeArgs) -> anyhow::Result<()> {
    let config = args.config()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("idres")
        .build()
        .context("starting the runtime")?;
    runtime.block_on(serve(config))
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let started = Instant::now();
    let node_key = match &config.node.key {
        Some(path) => {
            let key = NodeKey::load(path)?;
            tracing::info!(algorithm = key.algorithm_name(), path = %path.display(), "node key loaded");
            Some(Arc::new(key))
        }
        None => None,
    };
    let (store, secrets) = open_node_store(&config, true)?;
    let dyn_store: Arc<dyn Store> = store.clone();
    idres_auth::limits::configure(config.node.writes_per_sec, config.node.write_burst);
    let metrics = Metrics::new();
    let health = Health::new();
    let certs = crate::observe::install(&metrics, &health, &store, &config);

    let workers = match config.handle.udp_workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    let (udp_sockets, tcp_listener) =
        idres_net::bind::udp_and_tcp(config.handle.listen, workers)
            .with_context(|| format!("binding the Handle face on {}", config.handle.listen))?;
    let handle_addr = tcp_listener.local_addr()?;
    let advertise = config.node.advertise.unwrap_or(handle_addr);
    let identity = NodeIdentity {
        site: SiteInfo::single(advertise, &config.node.description),
        service_handles: config.node.service_handles.clone(),
    };
    let handler = Arc::new(
        Handler::with_auth(
            Arc::clone(&dyn_store),
            identity,
            Auth::new(secrets, node_key)
                .with_challenge_ttl(Duration::from_secs(config.handle.challenge_ttl_secs.max(1)))
                .with_throttle(
                    config.handle.max_auth_failures,
                    Duration::from_secs(config.handle.auth_lockout_secs),
                ),
        )
        .with_metrics(&metrics)
        .with_schemes(config.schemes()?),
    );
    let budget = Arc::new(idres_net::ByteBudget::new(config.handle.udp_budget()));
    let udp =
        UdpServer::start(Arc::clone(&handler), udp_sockets, budget).context("starting UDP")?;
    tcp_listener.set_nonblocking(true)?;
    let tcp_listener = tokio::net::TcpListener::from_std(tcp_listener)?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tracker = idres_service::tcp::tracker(&handler, config.handle.conn_limits());
    let tcp = tokio::spawn(idres_service::tcp::serve(
        Arc::clone(&handler),
        tcp_listener,
        tracker,
        stop_rx.clone(),
    ));
    announce("handle", handle_addr);
    let dns = if config.dns.listen.is_some() || config.dns.doq_listen.is_some() {
        let sockets = idres_dns::DnsSockets::bind(&config.dns)?;
        let mut dns_config = config.dns.clone();
        dns_config.schemes = config.schemes()?;
        let dns = idres_dns::start(&dns_config, Arc::clone(&dyn_store), sockets, Some(&metrics))?;
        if let Some(a) = dns.udp_addr() {
            announce("dns", a);
        }
        if let Some(a) = dns.doq_addr() {
            announce("doq", a);
        }
        Some(dns)
    } else {
        None
    };
    let role = idres_grpc::Role::parse(&config.node.role).ok_or_else(|| {
        anyhow::anyhow!(
            "unknown role {:?}: use top, secondary or mirror",
            config.node.role
        )
    })?;
    let grpc = if config.grpc.listen.is_some() || role != idres_grpc::Role::Top {
        let face = idres_grpc::node::start_reporting(
            &config.grpc,
            role,
            config.node.upstream.as_deref(),
            Arc::clone(&dyn_store),
            stop_rx.clone(),
            idres_grpc::server::Reporting {
                metrics: Some(Arc::clone(&metrics)),
                health: Some(Arc::clone(&health)),
                limits: Some(config.grpc.limits()),
                schemes: Some(config.schemes()?),
            },
        )
        .await?;
        if let Some(a) = face.addr {
            announce("grpc", a);
        }
        if config.grpc.keep_changes > 0 {
            tokio::spawn(idres_grpc::node::trim_log(
                Arc::clone(&store),
                config.grpc.keep_changes,
                stop_rx.clone(),
            ));
        }
        Some(face)
    } else {
        None
    };
    if config.store.idempotency_window > 0 {
        tokio::spawn(trim_idempotency(
            Arc::clone(&store),
            config.store.idempotency_window,
            stop_rx.clone(),
        ));
    }
    // Without its control socket the node still serves; only online
    // backups need it.
    let control_path = crate::control::socket_path(&config);
    let control = match crate::control::start(&control_path, Arc::clone(&store), stop_rx.clone()) {
        Ok(task) => Some(task),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no control socket: `idres backup` cannot reach this node");
            None
        }
    };
    let control = async move {
        if let Some(t) = control {
            let _ = t.await;
        }
    };
    let (http, http_tls) = match config.http.listen {
        Some(listen) => {
            let (task, reload) = crate::http::start(
                &config.http,
                listen,
                Arc::clone(&handler),
                (Arc::clone(&metrics), Arc::clone(&health)),
                stop_rx.clone(),
            )
            .await?;
            (Some(task), reload)
        }
        None => (None, None),
    };
    tracing::info!(
        handles = store.handle_count(),
        last_seq = store.last_seq(),
        ready_ms = started.elapsed().as_millis() as u64,
        "serving"
    );

    let mut signals = Signals::install()?;
    while signals.next().await == Signal::Reload {
        reload(
            &config,
            http_tls.as_ref(),
            grpc.as_ref(),
            dns.as_ref(),
            &certs,
        );
    }
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    // Whatever happens below, do not outlive the grace period.
    std::thread::spawn(|| {
        std::thread::sleep(SHUTDOWN_GRACE);
        eprintln!("shutdown took too long; exiting");
        std::process::exit(1);
    });
    // Stop every face at once, under one deadline, so that the store is
    // flushed well inside the grace period whatever a face does.
    let udp_stopped = tokio::task::spawn_blocking(move || udp.shutdown());
    let faces = async {
        let http = async {
            if let Some(h) = http {
                let _ = h.await;
            }
        };
        let dns = async {
            if let Some(d) = dns {
                d.shutdown().await;
            }
        };
        let grpc = async {
            if let Some(g) = grpc {
                let _ = g.join().await;
            }
        };
        let _ = tokio::join!(http, dns, grpc, tcp, udp_stopped, control);
    };
    if tokio::time::timeout(Duration::from_secs(3), faces)
        .await
        .is_err()
    {
        tracing::warn!("some connections were still open after 3 s; closing anyway");
    }
    store.close().context("flushing the store")?;
    tracing::info!("stopped");
    Ok(())
}

/// Prints the machine-readable line that says a face is ready.
pub fn announce(face: &str, addr: SocketAddr) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "listening {face} {addr}");
    let _ = out.flush();
}

/// SIGHUP: read the TLS material of every face again (certificates, keys,
/// CAs, CRLs: HTTP, gRPC, DNS over QUIC) and serve new connections with it; open connections keep
/// theirs. A face whose files do not load keeps what it has, and says so.
fn reload(
    config: &Config,
    http: Option<&crate::http::TlsReload>,
    grpc: Option<&idres_grpc::node::GrpcFace>,
    dns: Option<&idres_dns::DnsServer>,
    certs: &crate::observe::CertExpiry,
) {
    let mut failed = 0;
    if let Some(d) = dns {
        match d.reload_tls() {
            Ok(true) => tracing::info!(face = "dns_quic", "TLS reloaded"),
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                tracing::error!(face = "dns_quic", error = %e, "TLS reload failed; keeping the certificate in force");
            }
        }
    }
    if let Some(h) = http {
        match h.reload() {
            Ok(()) => tracing::info!(face = "http", "TLS reloaded"),
            Err(e) => {
                failed += 1;
                tracing::error!(face = "http", error = %format!("{e:#}"), "TLS reload failed; keeping the certificate in force");
            }
        }
    }
    if let Some(g) = grpc {
        match g.reload_tls() {
            Ok(true) => tracing::info!(face = "grpc", "TLS and CRLs reloaded"),
            Ok(false) => {}
            Err(e) => {
                failed += 1;
                tracing::error!(face = "grpc", error = %e, "TLS reload failed; keeping the certificate in force");
            }
        }
    }
    certs.refresh(config);
    tracing::info!(failed, "reload done");
}

#[derive(Debug, PartialEq, Eq)]
enum Signal {
    Stop,
    Reload,
}

struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Self {
            term: signal(SignalKind::terminate()).context("installing SIGTERM handler")?,
            int: signal(SignalKind::interrupt()).context("installing SIGINT handler")?,
            hup: signal(SignalKind::hangup()).context("installing SIGHUP handler")?,
        })
    }

    async fn next(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop,
            _ = self.int.recv() => Signal::Stop,
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
