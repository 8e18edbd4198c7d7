//! The node's metrics, in one Prometheus registry (names and labels in
//! `docs/operations.md`).
//!
//! Every face counts its requests in the same two families, told apart by
//! the `face` label: `idres_requests_total{face,op,code}` and
//! `idres_request_duration_seconds{face,op}`, beside
//! `idres_rate_limited_total{face}` and `idres_dropped_total{face,reason}`.
//! Other parts register their own metrics ([`Metrics::register`]) and may
//! refresh gauges just before each scrape ([`Metrics::on_scrape`]).

#![forbid(unsafe_code)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client;

/// Labels of a request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// The face: `handle_udp`, `handle_tcp`, `handle_http`, `dns_udp`,
    /// `dns_tcp`, `dns_quic`, `http`, `grpc`.
    pub face: &'static str,
    /// The operation (Handle op code, DNS query type, HTTP route, gRPC
    /// method).
    pub op: &'static str,
    /// The result (Handle response code, DNS rcode, HTTP status, gRPC
    /// status).
    pub code: &'static str,
}

/// Labels of a latency.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    /// The face.
    pub face: &'static str,
    /// The operation.
    pub op: &'static str,
}

/// Labels of a face-wide count.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FaceLabels {
    /// The face.
    pub face: &'static str,
}

/// Labels of a dropped message.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DropLabels {
    /// The face.
    pub face: &'static str,
    /// Why it was dropped.
    pub reason: &'static str,
}

fn latency_histogram() -> Histogram {
    // 10 µs to about 10 s.
    Histogram::new([
        0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01,
        0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

type Refresh = Box<dyn Fn() + Send + Sync>;

/// The node's registry and the request families every face shares.
pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    duration: Family<OpLabels, Histogram, fn() -> Histogram>,
    limited: Family<FaceLabels, Counter>,
    dropped: Family<DropLabels, Counter>,
    refresh: Mutex<Vec<Refresh>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        let duration = Family::<OpLabels, Histogram, fn() -> Histogram>::new_with_constructor(
            latency_histogram,
        );
        let limited = Family::<FaceLabels, Counter>::default();
        let dropped = Family::<DropLabels, Counter>::default();
        let mut registry = Registry::default();
        registry.register(
            "idres_requests",
            "Requests answered, by face, operation and result code",
            requests.clone(),
        );
        registry.register(
            "idres_request_duration_seconds",
            "Time to answer a request, by face and operation",
            duration.clone(),
        );
        registry.register(
            "idres_rate_limited",
            "Requests refused or slipped by a rate limit, by face",
            limited.clone(),
        );
        registry.register(
            "idres_dropped",
            "Messages dropped without a reply, by face and reason",
            dropped.clone(),
        );
        Self {
            registry: Mutex::new(registry),
            requests,
            duration,
            limited,
            dropped,
            refresh: Mutex::new(Vec::new()),
        }
    }
}

impl Metrics {
    /// A new registry, shared.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// The counters of one face.
    pub fn face(self: &Arc<Self>, face: &'static str) -> FaceMetrics {
        FaceMetrics {
            face,
            metrics: Arc::clone(self),
        }
    }

    /// Adds a metric to the registry.
    pub fn register(&self, name: &str, help: &str, metric: impl Metric) {
        if let Ok(mut r) = self.registry.lock() {
            r.register(name, help, metric);
        }
    }

    /// Lets `f` add metrics to the registry.
    pub fn with_registry(&self, f: impl FnOnce(&mut Registry)) {
        if let Ok(mut r) = self.registry.lock() {
            f(&mut r);
        }
    }

    /// A gauge registered under `name`.
    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        let g = Gauge::default();
        self.register(name, help, g.clone());
        g
    }

    /// Runs `f` before every scrape (to set gauges read from elsewhere).
    pub fn on_scrape(&self, f: impl Fn() + Send + Sync + 'static) {
        if let Ok(mut r) = self.refresh.lock() {
            r.push(Box::new(f));
        }
    }

    /// The text exposition (OpenMetrics), after refreshing.
    pub fn encode(&self) -> String {
        if let Ok(r) = self.refresh.lock() {
            for f in r.iter() {
                f();
            }
        }
        let mut out = String::with_capacity(16 * 1024);
        if let Ok(r) = self.registry.lock() {
            // Writing to a String cannot fail.
            let _ = prometheus_client::encoding::text::encode(&mut out, &r);
        }
        out
    }
}

type Check = Box<dyn Fn() -> Result<(), String> + Send + Sync>;

/// What the node must have to be ready to serve: each part of the node
/// adds a check (store open, read cache warm, writer not failed, a
/// follower within its allowed lag). `/readyz` and the gRPC health
/// service both ask it.
#[derive(Default)]
pub struct Health {
    checks: Mutex<Vec<(String, Check)>>,
}

impl std::fmt::Debug for Health {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Health")
    }
}

impl Health {
    /// A new, shared set of checks (ready while it has none).
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Adds a named check.
    pub fn add(&self, name: &str, check: impl Fn() -> Result<(), String> + Send + Sync + 'static) {
        if let Ok(mut c) = self.checks.lock() {
            c.push((name.to_owned(), Box::new(check)));
        }
    }

    /// Every check that fails, with its reason.
    pub fn failing(&self) -> Vec<(String, String)> {
        let Ok(c) = self.checks.lock() else {
            return vec![("health".into(), "checks unavailable".into())];
        };
        c.iter()
            .filter_map(|(name, f)| f().err().map(|why| (name.clone(), why)))
            .collect()
    }

    /// Whether every check passes.
    pub fn ready(&self) -> bool {
        self.failing().is_empty()
    }
}

/// The content type of [`Metrics::encode`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`Metrics::encode_text`].
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

impl Metrics {
    /// The exposition in Prometheus's text format 0.0.4, for scrapers and
    /// tools that do not ask for OpenMetrics: the same samples, with a
    /// counter's HELP and TYPE named after its `_total` samples and no
    /// `# EOF`.
    pub fn encode_text(&self) -> String {
        to_text_format(&self.encode())
    }
}

fn to_text_format(open_metrics: &str) -> String {
    let counters: HashSet<&str> = open_metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(open_metrics.len() + 64 * counters.len());
    for line in open_metrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|tag| {
            let rest = line.strip_prefix(tag)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{tag}{name}_total {tail}"))
        });
        match renamed {
            Some(l) => out.push_str(&l),
            None => out.push_str(line),
        }
        out.push('\n');
    }
    out
}

/// One face's handle on the shared request families.
#[derive(Clone, Debug)]
pub struct FaceMetrics {
    face: &'static str,
    metrics: Arc<Metrics>,
}

impl FaceMetrics {
    /// Counts one request answered with `code`, taking `elapsed`.
    pub fn record(&self, op: &'static str, code: &'static str, elapsed: Duration) {
        let face = self.face;
        self.metrics
            .requests
            .get_or_create(&RequestLabels { face, op, code })
            .inc();
        self.metrics
            .duration
            .get_or_create(&OpLabels { face, op })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one message dropped without a reply.
    pub fn dropped(&self, reason: &'static str) {
        self.metrics
            .dropped
            .get_or_create(&DropLabels {
                face: self.face,
                reason,
            })
            .inc();
    }

    /// Counts one request limited by a rate limit.
    pub fn rate_limited(&self) {
        self.metrics
            .limited
            .get_or_create(&FaceLabels { face: self.face })
            .inc();
    }

    /// Requests counted so far with these labels (for tests and reports).
    pub fn count(&self, op: &'static str, code: &'static str) -> u64 {
        self.metrics
            .requests
            .get_or_create(&RequestLabels {
                face: self.face,
                op,
                code,
            })
            .get()
    }
}

/// The name of an HTTP status code, as a label value.
pub fn status_label(code: u16) -> &'static str {
    static CODES: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    let codes = CODES.get_or_init(|| (0..600).map(|c| c.to_string()).collect());
    codes.get(usize::from(code)).map_or("other", String::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_has_the_families() {
        let m = Metrics::new();
        let f = m.face("handle_udp");
        f.record("RESOLUTION", "SUCCESS", Duration::from_micros(30));
        f.dropped("unreadable");
        let g = m.gauge("idres_store_records", "Records stored");
        m.on_scrape(move || {
            g.set(7);
        });
        let text = m.encode();
        assert!(
            text.contains(
                "idres_requests_total{face=\"handle_udp\",op=\"RESOLUTION\",code=\"SUCCESS\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "idres_request_duration_seconds_count{face=\"handle_udp\",op=\"RESOLUTION\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("idres_store_records 7"), "{text}");
        assert!(text.contains("idres_dropped_total{face=\"handle_udp\",reason=\"unreadable\"} 1"));
        assert_eq!(status_label(404), "404");
        let text = m.encode_text();
        assert!(
            text.contains("# TYPE idres_requests_total counter\n"),
            "{text}"
        );
        assert!(
            text.contains("# HELP idres_requests_total Requests answered"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE idres_store_records gauge\n"),
            "{text}"
        );
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn health_names_what_fails() {
        let h = Health::new();
        assert!(h.ready());
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let f = Arc::clone(&flag);
        h.add("writer", move || {
            if f.load(std::sync::atomic::Ordering::Relaxed) {
                Err("failed".into())
            } else {
                Ok(())
            }
        });
        assert!(h.ready());
        flag.store(true, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            h.failing(),
            vec![("writer".to_owned(), "failed".to_owned())]
        );
    }
}
