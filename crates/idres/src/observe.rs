//! What `serve` reports about the node as a whole: the store's metrics and
//! sizes, the data filesystem, certificate expiry, build information and
//! readiness (names in `docs/operations.md`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use idres_metrics::{Health, Metrics};
use idres_store::{SledStore, Store};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;

use crate::config::Config;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BuildLabels {
    version: &'static str,
    role: String,
}

/// Labels of a certificate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CertLabels {
    /// The face or use: `http`, `grpc`, `grpc_upstream`, `dns_quic`.
    pub face: String,
    /// The certificate's subject.
    pub subject: String,
}

/// A certificate file's leaf: subject and notAfter (Unix seconds).
pub fn certificate_expiry(path: &Path) -> anyhow::Result<(String, i64)> {
    let data = std::fs::read(path)?;
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data)
        .map_err(|e| anyhow::anyhow!("{}: no PEM certificate: {e}", path.display()))?;
    let cert = pem
        .parse_x509()
        .map_err(|e| anyhow::anyhow!("{}: not a certificate: {e}", path.display()))?;
    Ok((
        cert.subject().to_string(),
        cert.validity().not_after.timestamp(),
    ))
}

/// The certificate files of a configuration, by face.
pub fn certificates(config: &Config) -> Vec<(&'static str, PathBuf)> {
    let mut out = Vec::new();
    if let Some(c) = &config.http.tls_cert {
        out.push(("http", c.clone()));
    }
    if let Some(c) = &config.grpc.cert {
        out.push(("grpc", c.clone()));
    }
    if let Some(c) = &config.grpc.upstream_cert {
        out.push(("grpc_upstream", c.clone()));
    }
    if let Some(c) = &config.dns.cert {
        out.push(("dns_quic", c.clone()));
    }
    out
}

/// The certificate-expiry family, filled from `config`'s files.
#[derive(Debug, Clone, Default)]
pub struct CertExpiry(Family<CertLabels, Gauge>);

impl CertExpiry {
    /// Reads every certificate of `config` again (at start and on reload).
    pub fn refresh(&self, config: &Config) {
        self.0.clear();
        for (face, path) in certificates(config) {
            match certificate_expiry(&path) {
                Ok((subject, not_after)) => {
                    self.0
                        .get_or_create(&CertLabels {
                            face: face.to_owned(),
                            subject,
                        })
                        .set(not_after);
                }
                Err(e) => tracing::warn!(error = %e, "reading a certificate's expiry"),
            }
        }
    }
}

/// Registers the node-wide metrics and readiness checks.
pub fn install(
    metrics: &Arc<Metrics>,
    health: &Arc<Health>,
    store: &Arc<SledStore>,
    config: &Config,
) -> CertExpiry {
    store.metrics().register_into(metrics);
    let g = |name: &str, help: &str| metrics.gauge(name, help);
    let size = g("idres_store_size_bytes", "Bytes the store takes on disk");
    let records = g("idres_store_records", "Records stored");
    let head = g(
        "idres_changelog_head_sequence",
        "Sequence number of the latest change",
    );
    let trim = g(
        "idres_changelog_trim_sequence",
        "Sequence number of the oldest change kept for followers",
    );
    let avail = g(
        "idres_data_filesystem_avail_bytes",
        "Bytes free for the node on the data directory's filesystem",
    );
    let total = g(
        "idres_data_filesystem_size_bytes",
        "Size of the data directory's filesystem",
    );
    let ready = g(
        "idres_ready",
        "1 when the node is ready to serve (as /readyz)",
    );
    let build = Family::<BuildLabels, Gauge>::default();
    metrics.register(
        "idres_build_info",
        "The node's version and role",
        build.clone(),
    );
    build
        .get_or_create(&BuildLabels {
            version: env!("CARGO_PKG_VERSION"),
            role: config.node.role.clone(),
        })
        .set(1);
    {
        let limited = prometheus_client::metrics::counter::Counter::<u64>::default();
        metrics.register(
            "idres_write_rate_limited",
            "Writes refused by the per-identity write limit, on every face",
            limited.clone(),
        );
        metrics.on_scrape(move || {
            let now = idres_auth::limits::refused();
            let seen = limited.get();
            if now > seen {
                limited.inc_by(now - seen);
            }
        });
    }
    let certs = CertExpiry::default();
    metrics.register(
        "idres_tls_certificate_expiry_timestamp_seconds",
        "When a certificate the node uses expires (Unix time)",
        certs.0.clone(),
    );
    certs.refresh(config);
    {
        let store = Arc::clone(store);
        let health = Arc::clone(health);
        let dir = config.store.data_dir.clone();
        metrics.on_scrape(move || {
            size.set(store.size_on_disk().map_or(-1, |b| b as i64));
            records.set(store.handle_count() as i64);
            head.set(store.last_seq() as i64);
            trim.set(store.first_seq().map_or(-1, |s| s as i64));
            if let Ok(st) = nix::sys::statvfs::statvfs(&dir) {
                let frag = st.fragment_size() as i64;
                avail.set(st.blocks_available() as i64 * frag);
                total.set(st.blocks() as i64 * frag);
            }
            ready.set(i64::from(health.ready()));
        });
    }
    {
        let s = Arc::clone(store);
        health.add("store", move || match s.failure() {
            None => Ok(()),
            Some(why) => Err(format!("the store refuses writes: {why}")),
        });
        let s = Arc::clone(store);
        health.add("read_cache", move || {
            if s.cache_warm() {
                Ok(())
            } else {
                Err("the read cache is still being filled".into())
            }
        });
    }
    certs
}
