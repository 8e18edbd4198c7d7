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
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("idres-data"),
            cache_mb: 16,
            read_cache_mb: 256,
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
    /// Most TCP connections at once.
    pub max_tcp_connections: usize,
    /// Seconds a TCP connection may stay idle.
    pub tcp_idle_secs: u64,
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
            max_tcp_connections: 1024,
            tcp_idle_secs: 30,
            challenge_ttl_secs: 60,
            max_auth_failures: 10,
            auth_lockout_secs: 600,
        }
    }
}

impl Config {
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
