//! The node's configuration file (TOML).
//!
//! Every section and key is optional and has a default; an unknown key is
//! an error, so that a typo never silently leaves a setting at its default.
//! Command-line flags override the file.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use serde::Deserialize;

/// The whole configuration.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Who this node is.
    pub node: NodeConfig,
    /// Where and how data is stored.
    pub store: StoreConfig,
    /// The Handle protocol face.
    pub handle: HandleConfig,
    /// The DNS face: OID resolution (X.672 ORS) over UDP, TCP and QUIC.
    pub dns: idres_dns::DnsConfig,
    /// The HTTP face: JSON API, reverse lookup, web resolver.
    pub http: crate::http::HttpConfig,
    /// The gRPC face for secondary nodes, mirrors and operators.
    pub grpc: idres_grpc::node::GrpcConfig,
    /// Identifier schemes and their links (`docs/schemes.md`).
    pub schemes: idres_schemes::SchemesConfig,
}

/// The node's identity and role.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// Description written into the node's HS_SITE.
    pub description: String,
    /// Address written into the node's HS_SITE (defaults to the Handle
    /// listen address).
    pub advertise: Option<SocketAddr>,
    /// Handles of services that are this node (HS_SERV values naming them
    /// are not referrals).
    pub service_handles: Vec<String>,
    /// The node's role: `top` (default), `secondary` or `mirror`.
    pub role: String,
    /// gRPC URL of the upstream node (secondary and mirror roles).
    pub upstream: Option<String>,
    /// The node's private key (PEM, from `idres keygen`): advertised in
    /// HS_SITE and used to sign replies to certified requests.
    pub key: Option<PathBuf>,
    /// The key that seals secret keys at rest (32 bytes; made at the first
    /// start). Defaults to `secrets.key` in the data directory.
    pub secrets_key: Option<PathBuf>,
    /// The local control socket (`idres backup` talks to it). Defaults to
    /// `control.sock` in the data directory.
    pub control_socket: Option<PathBuf>,
    /// Write operations a second one identity may make, on every face
    /// (0: no limit).
    pub writes_per_sec: u32,
    /// Write operations one identity may make at once after being quiet.
    pub write_burst: u32,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            description: "idres top-level node".into(),
            advertise: None,
            service_handles: Vec::new(),
            role: "top".into(),
            upstream: None,
            key: None,
            secrets_key: None,
            control_socket: None,
            writes_per_sec: 50_000,
            write_burst: 200_000,
        }
    }
}

/// Storage settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Directory of the database.
    pub data_dir: PathBuf,
    /// MiB of sled's page cache.
    pub cache_mb: u64,
    /// MiB of the in-memory record cache that serves resolutions (0 =
    /// none). When every record fits, lookups never touch the disk.
    pub read_cache_mb: u64,
    /// Largest record accepted on every write path, in bytes of its values
    /// on the wire (at most 253,952, so that every reply fits one Handle
    /// message).
    pub max_record_bytes: usize,
    /// Most writes waiting for the store's writer; past it writes are
    /// refused at once (HTTP 503, SERVER_TOO_BUSY, RESOURCE_EXHAUSTED).
    pub max_queued_writes: usize,
    /// Idempotency keys (gRPC operation ids and the like) are remembered
    /// for this many changes after their write (0: for ever).
    pub idempotency_window: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("idres-data"),
            cache_mb: 16,
            read_cache_mb: 256,
            max_record_bytes: idres_model::value::MAX_RECORD_BYTES,
            max_queued_writes: 16_384,
            idempotency_window: 10_000_000,
        }
    }
}

/// Handle protocol settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HandleConfig {
    /// Address of the UDP and TCP listeners.
    pub listen: SocketAddr,
    /// UDP worker threads (0 = one per CPU).
    pub udp_workers: usize,
    /// Most TCP connections at once; when full, the longest-idle one is
    /// closed to make room.
    pub max_tcp_connections: usize,
    /// Most TCP connections at once from one address.
    pub max_tcp_per_address: usize,
    /// Seconds a TCP connection may stay idle (clients such as ID-SDK
    /// hold one for hours).
    pub tcp_idle_secs: u64,
    /// Seconds a client may take to send one message once begun, or to
    /// take one reply.
    pub tcp_request_secs: u64,
    /// Bytes per second of UDP replies one source may draw (0: no limit);
    /// a reply over budget is not sent and the client retries over TCP.
    pub udp_rate_bytes: u32,
    /// Bytes of UDP replies one quiet source may draw at once.
    pub udp_burst_bytes: u32,
    /// Prefix length that makes an IPv4 source for the UDP budget.
    pub source_prefix_v4: u8,
    /// Prefix length that makes an IPv6 source for the UDP budget.
    pub source_prefix_v6: u8,
    /// Seconds an authentication challenge may be answered.
    pub challenge_ttl_secs: u64,
    /// Wrong answers for one identity from one address before that address
    /// is refused for `auth_lockout_secs` (0: never).
    pub max_auth_failures: u32,
    /// Seconds such an address is refused.
    pub auth_lockout_secs: u64,
}

impl Default for HandleConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 2641)),
            udp_workers: 0,
            max_tcp_connections: 16_384,
            max_tcp_per_address: 256,
            tcp_idle_secs: 3600,
            tcp_request_secs: 30,
            udp_rate_bytes: 128 * 1024,
            udp_burst_bytes: 256 * 1024,
            source_prefix_v4: 24,
            source_prefix_v6: 56,
            challenge_ttl_secs: 60,
            max_auth_failures: 10,
            auth_lockout_secs: 600,
        }
    }
}

impl HandleConfig {
    /// The limits of the TCP listener.
    pub fn conn_limits(&self) -> idres_net::ConnLimits {
        idres_net::ConnLimits::tcp(
            self.max_tcp_connections,
            self.max_tcp_per_address,
            self.tcp_idle_secs,
            self.tcp_request_secs,
        )
    }

    /// The byte budget of UDP replies. A Handle client has no truncation
    /// bit: it retries over TCP after a timeout, so nothing is sent in
    /// place of a reply over budget (no slip).
    pub fn udp_budget(&self) -> idres_net::BudgetConfig {
        idres_net::BudgetConfig::per_source(
            self.udp_rate_bytes,
            self.udp_burst_bytes,
            0,
            self.source_prefix_v4,
            self.source_prefix_v6,
        )
    }
}

impl Config {
    /// The identifier schemes of `[schemes]`, with the GS1 syntax
    /// dictionary file read if one is named.
    pub fn schemes(&self) -> anyhow::Result<idres_schemes::Schemes> {
        let mut sc = self.schemes.clone();
        if let Some(path) = &sc.gs1.dictionary {
            sc.gs1.dictionary_text =
                Some(std::fs::read_to_string(path).with_context(|| {
                    format!("reading [schemes.gs1] dictionary {}", path.display())
                })?);
        }
        idres_schemes::Schemes::new(&sc).map_err(|e| anyhow::anyhow!("[schemes]: {e}"))
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading configuration {}", path.display()))?;
        toml::from_str(&text).with_context(|| format!("in configuration {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_refused() {
        let err = toml::from_str::<Config>("[handle]\nlisten = \"127.0.0.1:1\"\nlisen = 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
        assert!(toml::from_str::<Config>("[hadle]\n").is_err());
        assert!(
            toml::from_str::<Config>("[http]\nlisten = \"127.0.0.1:8000\"\ntls = 1\n").is_err()
        );
    }

    #[test]
    fn defaults_and_overrides() {
        let c: Config = toml::from_str("[store]\ndata_dir = \"/var/lib/idres\"\n").unwrap();
        assert_eq!(c.store.data_dir, PathBuf::from("/var/lib/idres"));
        assert_eq!(c.handle.listen.port(), 2641);
        assert!(c.http.listen.is_none(), "no HTTP face unless configured");
        let c: Config = toml::from_str(
            "[http]\nlisten = \"127.0.0.1:8000\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n",
        )
        .unwrap();
        assert_eq!(c.http.listen.map(|a| a.port()), Some(8000));
    }
}
