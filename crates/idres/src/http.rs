//! Wiring of the HTTP face (`[http]`, `--http-listen`) and `idres
//! init-prefix`, which creates the first administrator of a prefix.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context as _};
use idres_http::auth::Identity;
use idres_http::bootstrap::AdminKey;
use idres_http::{App, HttpOptions, TlsFiles};
use idres_model::Prefix;
use idres_service::Handler;
use idres_store::Store;
use serde::Deserialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The `[http]` section: the JSON API, reverse lookup, web resolver and
/// native Handle messages, on one listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of the listener; without it the node has no HTTP face.
    pub listen: Option<SocketAddr>,
    /// Certificate chain (PEM) for HTTPS, together with `tls_key`.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) for HTTPS.
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM): a client certificate they sign authenticates
    /// as the `index:handle` in its CN or UID. Needs TLS.
    pub client_ca: Option<PathBuf>,
    /// Most connections open at once; when full, the longest-idle one is
    /// closed to make room.
    pub max_connections: usize,
    /// Most connections open at once from one address.
    pub max_per_address: usize,
    /// Seconds a client may take to send a request body.
    pub body_timeout_secs: u64,
    /// Largest request body, in bytes.
    pub max_body_bytes: usize,
    /// Accepted for configurations of earlier versions, which hashed
    /// secret keys; secret keys are now sealed, and this is ignored.
    pub secret_iterations: Option<u32>,
    /// Seconds a connection with no request in progress is kept open.
    pub idle_timeout_secs: u64,
    /// Failed password checks for one identity from one address before
    /// that address is refused for `auth_lockout_secs` (0: never).
    pub max_auth_failures: u32,
    /// Seconds such an address is refused.
    pub auth_lockout_secs: u64,
    /// Public base URL of the GS1 resolver (e.g. `https://id.example.org`,
    /// which may differ from the listener behind a proxy).
    pub public_url: Option<String>,
    /// Name of the resolver in `/.well-known/gs1resolver`.
    pub resolver_name: String,
}

impl Default for HttpConfig {
    fn default() -> Self {
        let o = HttpOptions::default();
        Self {
            listen: None,
            tls_cert: None,
            tls_key: None,
            client_ca: None,
            max_connections: o.max_connections,
            max_per_address: o.max_per_address,
            body_timeout_secs: o.body_timeout.as_secs(),
            max_body_bytes: o.max_body_bytes,
            secret_iterations: None,
            idle_timeout_secs: o.idle_timeout.as_secs(),
            max_auth_failures: o.max_auth_failures,
            auth_lockout_secs: o.auth_lockout.as_secs(),
            public_url: None,
            resolver_name: o.resolver_name,
        }
    }
}

impl HttpConfig {
    pub(crate) fn tls(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
                client_ca: self.client_ca.clone(),
            })),
            (None, None) if self.client_ca.is_some() => {
                bail!("[http] client_ca needs TLS: set tls_cert and tls_key too")
            }
            (None, None) => Ok(None),
            _ => bail!("[http] tls_cert and tls_key go together"),
        }
    }
}

/// Binds the HTTP face, prints `listening http ADDR` (or `https`), and
/// serves until `stop` turns true.
pub async fn start(
    config: &HttpConfig,
    listen: SocketAddr,
    handler: Arc<Handler>,
    (metrics, health): (Arc<idres_metrics::Metrics>, Arc<idres_metrics::Health>),
    stop: watch::Receiver<bool>,
) -> anyhow::Result<(JoinHandle<()>, Option<TlsReload>)> {
    let (tls, reload) = match config.tls()? {
        Some(files) => {
            let first = idres_http::tls::server_config(&files)
                .context("setting up TLS for the HTTP face")?;
            let (tx, rx) = watch::channel(first);
            (Some(rx), Some(TlsReload { files, tx }))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("binding HTTP {listen}"))?;
    let addr = listener.local_addr()?;
    let options = HttpOptions {
        max_connections: config.max_connections,
        max_per_address: config.max_per_address,
        body_timeout: std::time::Duration::from_secs(config.body_timeout_secs.max(1)),
        max_body_bytes: config.max_body_bytes,
        idle_timeout: std::time::Duration::from_secs(config.idle_timeout_secs.max(1)),
        max_auth_failures: config.max_auth_failures,
        auth_lockout: std::time::Duration::from_secs(config.auth_lockout_secs),
        public_url: config.public_url.clone(),
        resolver_name: config.resolver_name.clone(),
        ..HttpOptions::default()
    };
    if config.secret_iterations.is_some() {
        tracing::warn!(
            "[http] secret_iterations is ignored: secret keys are sealed under the node's \
             secrets key, not hashed"
        );
    }
    let face = if tls.is_some() { "https" } else { "http" };
    let app = App::with_node(handler, options, metrics, health);
    let task = tokio::spawn(idres_http::serve_reloadable(listener, app, tls, stop));
    crate::serve::announce(face, addr);
    Ok((task, reload))
}

/// Reads the HTTP face's certificate, key and client CA again.
#[derive(Debug)]
pub struct TlsReload {
    files: idres_http::TlsFiles,
    tx: watch::Sender<Arc<rustls::ServerConfig>>,
}

impl TlsReload {
    /// Builds the setup from the files and serves new connections with
    /// it; on an error the setup in force stays.
    pub fn reload(&self) -> anyhow::Result<()> {
        let fresh = idres_http::tls::server_config(&self.files)
            .context("reloading TLS for the HTTP face")?;
        let _ = self.tx.send(fresh);
        Ok(())
    }
}

/// Options of `idres init-prefix`.
#[derive(Debug, clap::Args)]
pub struct InitPrefixArgs {
    /// Directory of the database (of a stopped node: a running one holds
    /// the store's lock).
    #[arg(long, default_value = "idres-data")]
    pub data_dir: PathBuf,
    /// The prefix, such as 88.118.8.
    #[arg(long)]
    pub prefix: String,
    /// The administrator identity, index:handle, such as
    /// 300:88.118.8/ADMIN.
    #[arg(long)]
    pub admin: String,
    /// File holding the administrator's secret key (one trailing newline
    /// is ignored). The key is stored sealed under the node's secrets key
    /// and never served to anyone but the handle's administrators.
    #[arg(long, required_unless_present = "pubkey", conflicts_with = "pubkey")]
    pub secret_file: Option<PathBuf>,
    /// PEM file of the administrator's public key (RSA, DSA or SM2
    /// SubjectPublicKeyInfo), stored as its HS_PUBKEY.
    #[arg(long)]
    pub pubkey: Option<PathBuf>,
}

/// `idres init-prefix`: makes an identity the administrator of a prefix,
/// creating the prefix record and the identity's key.
pub fn init_prefix(args: &InitPrefixArgs) -> anyhow::Result<()> {
    let prefix = Prefix::parse(&args.prefix).map_err(|e| anyhow::anyhow!("--prefix: {e}"))?;
    let admin = Identity::parse(&args.admin).map_err(|e| anyhow::anyhow!("--admin: {e}"))?;
    let key = match (&args.secret_file, &args.pubkey) {
        (Some(path), _) => {
            let mut secret =
                std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            if secret.last() == Some(&b'\n') {
                secret.pop();
                if secret.last() == Some(&b'\r') {
                    secret.pop();
                }
            }
            AdminKey::Secret(secret)
        }
        (None, Some(path)) => AdminKey::Public(
            std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        ),
        (None, None) => bail!("give --secret-file or --pubkey"),
    };
    let config = crate::config::Config {
        store: crate::config::StoreConfig {
            data_dir: args.data_dir.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let store = crate::serve::open_store(&config, false).context(
        "is a node running on this data directory? Stop it first, or add administrators \
         through its HTTP API",
    )?;
    let request = idres_http::bootstrap::init_prefix(
        store.as_ref(),
        &prefix,
        &admin,
        &key,
        idres_service::unix_now(),
    )?;
    match store.write(request).context("writing the prefix record")? {
        Ok(_) => {}
        Err(e) => bail!("refused: {e}"),
    }
    store.close().context("flushing the store")?;
    println!(
        "{admin} administers prefix {prefix}: HS_ADMIN 100 of {} names its group at index 200",
        prefix.record_handle()
    );
    Ok(())
}
