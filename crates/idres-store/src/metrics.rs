//! What the store measures, as Prometheus metrics (names in
//! `docs/operations.md`).

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

/// The store's own metrics; sizes and sequence numbers are read when
/// scraped by whoever registers them.
#[derive(Debug)]
pub struct StoreMetrics {
    /// Write requests submitted and not yet taken by the writer.
    pub queue_depth: Gauge,
    /// Writes refused because the queue was full.
    pub queue_full: Counter,
    /// Mutations per group commit.
    pub group_mutations: Histogram,
    /// Seconds from the start of a group to its durable end.
    pub commit_seconds: Histogram,
    /// Seconds of the flush of a group.
    pub flush_seconds: Histogram,
    /// 1 once a write failed and the store refuses writes.
    pub writer_failed: Gauge,
    /// Lookups answered by the read cache.
    pub cache_hits: Counter,
    /// Lookups that went to the database.
    pub cache_misses: Counter,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        Self {
            queue_depth: Gauge::default(),
            queue_full: Counter::default(),
            group_mutations: Histogram::new(exponential_buckets(1.0, 4.0, 9)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_1, 2.5, 12)),
            flush_seconds: Histogram::new(exponential_buckets(0.000_1, 2.5, 12)),
            writer_failed: Gauge::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
        }
    }
}

impl StoreMetrics {
    /// Adds these metrics to the node's registry.
    pub fn register_into(&self, metrics: &idres_metrics::Metrics) {
        metrics.with_registry(|r| self.register(r));
    }

    /// Adds these metrics to `registry` (prefix `idres_`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "idres_writer_queue_depth",
            "Write requests waiting for the store's writer",
            self.queue_depth.clone(),
        );
        registry.register(
            "idres_writer_queue_full",
            "Writes refused because the writer's queue was full",
            self.queue_full.clone(),
        );
        registry.register(
            "idres_writer_group_mutations",
            "Mutations per group commit",
            self.group_mutations.clone(),
        );
        registry.register(
            "idres_writer_commit_duration_seconds",
            "Time of a group commit, from its first request to durable",
            self.commit_seconds.clone(),
        );
        registry.register(
            "idres_writer_flush_duration_seconds",
            "Time of the flush that makes a group durable",
            self.flush_seconds.clone(),
        );
        registry.register(
            "idres_writer_failed",
            "1 when a write failed and the store refuses writes until reopened",
            self.writer_failed.clone(),
        );
        registry.register(
            "idres_read_cache_hits",
            "Record lookups answered from the read cache",
            self.cache_hits.clone(),
        );
        registry.register(
            "idres_read_cache_misses",
            "Record lookups that went to the database",
            self.cache_misses.clone(),
        );
    }
}
