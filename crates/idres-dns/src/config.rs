//! Settings of the DNS face (the `[dns]` section of the node's
//! configuration).

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;

/// Settings of the DNS face. Every key is optional; unknown keys are
/// refused so that a typo never leaves a setting at its default.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DnsConfig {
    /// Address of the UDP and TCP listeners (none: DNS over UDP and TCP
    /// is off).
    pub listen: Option<SocketAddr>,
    /// Address of the DNS-over-QUIC listener (none: off).
    pub doq_listen: Option<SocketAddr>,
    /// The ORS zone served.
    pub zone: String,
    /// PEM certificate chain for DNS-over-QUIC.
    pub cert: Option<PathBuf>,
    /// PEM private key for DNS-over-QUIC.
    pub key: Option<PathBuf>,
    /// UDP worker threads (0 = one per CPU).
    pub udp_workers: usize,
    /// Names of the zone's name servers (default `ns1.<zone>`); the first
    /// is the SOA's primary.
    pub nameservers: Vec<String>,
    /// Addresses answered for name servers named inside the zone.
    pub nameserver_addresses: Vec<IpAddr>,
    /// The zone's contact mailbox, as `user@domain` or a domain name
    /// (default `hostmaster.<zone>`).
    pub hostmaster: Option<String>,
    /// TTL of the SOA and NS records.
    pub soa_ttl: u32,
    /// SOA refresh, seconds.
    pub soa_refresh: u32,
    /// SOA retry, seconds.
    pub soa_retry: u32,
    /// SOA expire, seconds.
    pub soa_expire: u32,
    /// How long a negative answer may be cached (SOA minimum, RFC 2308).
    pub negative_ttl: u32,
    /// Most OID records for which the index of empty non-terminals is
    /// kept in memory (past it, the store is asked on each miss).
    pub index_max_records: usize,
    /// The identifier schemes that read names under `<scheme>.id.<zone>`
    /// (set by the node from `[schemes]`, not read from `[dns]`).
    #[serde(skip)]
    pub schemes: idres_schemes::Schemes,
    /// Largest UDP response we send to an EDNS client (RFC 6891 §6.2.5).
    pub max_udp_payload: u16,
    /// Most TCP connections at once; when full, the longest-idle one is
    /// closed to make room.
    pub max_tcp_connections: usize,
    /// Most TCP connections at once from one address.
    pub max_tcp_per_address: usize,
    /// Seconds a TCP connection may stay idle (RFC 7766 §6.2.3).
    pub tcp_idle_secs: u64,
    /// Seconds a client may take to send one query once begun, or to take
    /// one response.
    pub tcp_request_secs: u64,
    /// Response-rate limiting: bytes per second of UDP responses one
    /// source may draw (0: no limit).
    pub rrl_rate_bytes: u32,
    /// Bytes of UDP responses one quiet source may draw at once.
    pub rrl_burst_bytes: u32,
    /// Every `rrl_slip`-th response over budget is sent truncated (TC), so
    /// a real client retries over TCP; the others are dropped (0: none).
    pub rrl_slip: u32,
    /// Prefix length that makes an IPv4 source.
    pub source_prefix_v4: u8,
    /// Prefix length that makes an IPv6 source.
    pub source_prefix_v6: u8,
    /// Most DNS-over-QUIC connections at once.
    pub max_doq_connections: usize,
    /// Most concurrent queries (streams) on one DNS-over-QUIC connection.
    pub max_doq_streams: u32,
    /// Seconds a DNS-over-QUIC connection may stay idle.
    pub doq_idle_secs: u64,
}

impl Default for DnsConfig {
    fn default() -> Self {
        Self {
            listen: None,
            doq_listen: None,
            zone: idres_model::oid::DEFAULT_ORS_ZONE.to_owned(),
            schemes: idres_schemes::Schemes::default(),
            cert: None,
            key: None,
            udp_workers: 0,
            nameservers: Vec::new(),
            nameserver_addresses: Vec::new(),
            hostmaster: None,
            soa_ttl: 3600,
            soa_refresh: 7200,
            soa_retry: 3600,
            soa_expire: 1_209_600,
            negative_ttl: 300,
            index_max_records: 50_000_000,
            max_udp_payload: 1232,
            max_tcp_connections: 16_384,
            max_tcp_per_address: 256,
            tcp_idle_secs: 3600,
            tcp_request_secs: 30,
            rrl_rate_bytes: 128 * 1024,
            rrl_burst_bytes: 256 * 1024,
            rrl_slip: 2,
            source_prefix_v4: 24,
            source_prefix_v6: 56,
            max_doq_connections: 1024,
            max_doq_streams: 100,
            doq_idle_secs: 30,
        }
    }
}

impl DnsConfig {
    /// The limits of the TCP listener.
    pub fn conn_limits(&self) -> idres_net::ConnLimits {
        idres_net::ConnLimits::tcp(
            self.max_tcp_connections,
            self.max_tcp_per_address,
            self.tcp_idle_secs,
            self.tcp_request_secs,
        )
    }

    /// The response-rate limit of UDP.
    pub fn rrl(&self) -> idres_net::BudgetConfig {
        idres_net::BudgetConfig::per_source(
            self.rrl_rate_bytes,
            self.rrl_burst_bytes,
            self.rrl_slip,
            self.source_prefix_v4,
            self.source_prefix_v6,
        )
    }
}

/// Why the DNS face cannot start with its settings.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// A domain name setting is not a valid name.
    #[error("the {0} {1:?} is not a valid domain name")]
    BadName(&'static str, String),
    /// DNS-over-QUIC needs a certificate and a key.
    #[error("DNS-over-QUIC needs both `cert` and `key`")]
    MissingCertificate,
    /// The certificate or key could not be read.
    #[error("reading {path}: {reason}")]
    Tls {
        /// The file.
        path: String,
        /// What went wrong.
        reason: String,
    },
    /// A listener could not be set up.
    #[error("setting up the {what} listener: {source}")]
    Io {
        /// Which listener.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
    /// TCP or DNS-over-QUIC needs a tokio runtime.
    #[error("the DNS face must be started inside a tokio runtime")]
    NoRuntime,
}

impl DnsConfig {
    /// Checks the names of the configuration (zone, name servers,
    /// hostmaster) as the server would at start.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let name = |what: &'static str, n: &str| {
            crate::wire::name_to_wire(n)
                .map(drop)
                .ok_or_else(|| ConfigError::BadName(what, n.to_owned()))
        };
        name("zone", &self.zone)?;
        for n in &self.nameservers {
            name("nameserver", n)?;
        }
        if let Some(h) = &self.hostmaster {
            name("hostmaster", &h.replacen('@', ".", 1))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: DnsConfig = serde_json::from_str(r#"{"zone":"oid-res.test."}"#).unwrap();
        assert_eq!(c.zone, "oid-res.test.");
        assert_eq!(c.max_udp_payload, 1232);
        let e = serde_json::from_str::<DnsConfig>(r#"{"zoen":"x"}"#).unwrap_err();
        assert!(e.to_string().contains("zoen"), "{e}");
    }
}
