//! Prometheus metrics of one storenode: the engine's ([`RaftMetrics`], whose
//! registry is the node's: Raft, RocksDB, disk, process) plus the ShardKv
//! service's and the shard sizes and load its leaders measure. Names follow
//! Prometheus conventions: `ringkv_` prefix, units in the name, `_total` for
//! counters; docs/metrics.md lists them all.

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use prometheus::{GaugeVec, Histogram, HistogramVec, IntCounterVec, IntGaugeVec};
use ringkv_common::metrics::{counter_vec, float_gauge_vec, gauge_vec, histogram, histogram_vec};
use ringkv_raft::RaftMetrics;

/// The storenode's metrics.
pub struct Metrics {
    /// The engine's metrics and the node's registry.
    pub raft: Arc<RaftMetrics>,
    /// ShardKv requests by method and result.
    pub requests: IntCounterVec,
    /// ShardKv request latency by method.
    pub request_duration: HistogramVec,
    /// ShardKv requests slower than `--slow-request-ms`, by method (each logged once).
    pub slow_requests: IntCounterVec,
    /// Leader only: on-disk bytes of a shard's data.
    pub shard_bytes: IntGaugeVec,
    /// Leader only: estimated keys of a shard's data.
    pub shard_keys: IntGaugeVec,
    /// Leader only: reads per second over the last heartbeat interval.
    pub shard_reads: GaugeVec,
    /// Leader only: writes per second over the last heartbeat interval.
    pub shard_writes: GaugeVec,
    /// Answers per message sent on a `Batch` stream (how many calls one
    /// HTTP/2 frame carries back to a router).
    pub batch_answers: Histogram,
    /// Shards whose size and load series are exported now.
    load_exported: Mutex<HashSet<u64>>,
}

/// What a leader measured of its shard, as exported.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct ShardFigures {
    /// On-disk bytes.
    pub bytes: u64,
    /// Estimated keys.
    pub keys: u64,
    /// Reads per second.
    pub reads_per_sec: f64,
    /// Writes per second.
    pub writes_per_sec: f64,
}

impl Metrics {
    /// A storenode's metrics in a new registry labelled with its node id.
    pub fn new(node_id: u64) -> Metrics {
        let raft = Arc::new(RaftMetrics::new(node_id));
        let r = &raft.registry;
        let shard = &["shard"];
        Metrics {
            requests: counter_vec(
                r,
                "ringkv_storenode_requests_total",
                "ShardKv requests by method and result",
                &["method", "result"],
            ),
            request_duration: histogram_vec(
                r,
                "ringkv_storenode_request_duration_seconds",
                "ShardKv request latency by method",
                &["method"],
                prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets"),
            ),
            shard_bytes: gauge_vec(
                r,
                "ringkv_shard_approximate_bytes",
                "Leader only: on-disk bytes of the shard",
                shard,
            ),
            shard_keys: gauge_vec(
                r,
                "ringkv_shard_approximate_keys",
                "Leader only: estimated keys of the shard",
                shard,
            ),
            shard_reads: float_gauge_vec(
                r,
                "ringkv_shard_reads_per_second",
                "Leader only: reads served per second",
                shard,
            ),
            shard_writes: float_gauge_vec(r, "ringkv_shard_writes_per_second", "Leader only: writes per second", shard),
            slow_requests: counter_vec(
                r,
                "ringkv_storenode_slow_requests_total",
                "ShardKv requests slower than --slow-request-ms, by method (each logged once)",
                &["method"],
            ),
            batch_answers: histogram(
                r,
                "ringkv_storenode_batch_answers_per_message",
                "Answers per message sent on a ShardKv Batch stream",
                prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets"),
            ),
            load_exported: Mutex::new(HashSet::new()),
            raft,
        }
    }

    /// Exports what this node's leaders measured, and removes the series of
    /// shards it no longer leads (so that a shard's figures come from its
    /// leader alone).
    pub fn set_shard_figures(&self, figures: &[(u64, ShardFigures)]) {
        let mut exported = self.load_exported.lock();
        let now: HashSet<u64> = figures.iter().map(|(id, _)| *id).collect();
        for gone in exported.difference(&now) {
            let l = [gone.to_string()];
            let l = [l[0].as_str()];
            let _ = self.shard_bytes.remove_label_values(&l);
            let _ = self.shard_keys.remove_label_values(&l);
            let _ = self.shard_reads.remove_label_values(&l);
            let _ = self.shard_writes.remove_label_values(&l);
        }
        for (id, f) in figures {
            let l = [id.to_string()];
            let l = [l[0].as_str()];
            self.shard_bytes.with_label_values(&l).set(f.bytes as i64);
            self.shard_keys.with_label_values(&l).set(f.keys as i64);
            self.shard_reads.with_label_values(&l).set(f.reads_per_sec);
            self.shard_writes.with_label_values(&l).set(f.writes_per_sec);
        }
        *exported = now;
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        self.raft.render()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_figures_of_shards_no_longer_led_are_removed() {
        let m = Metrics::new(7);
        let f = ShardFigures { bytes: 100, keys: 10, reads_per_sec: 1.5, writes_per_sec: 2.0 };
        m.set_shard_figures(&[(1, f), (2, f)]);
        let text = m.render();
        assert!(text.contains("ringkv_shard_approximate_bytes{shard=\"2\",node=\"7\"} 100"), "{text}");
        m.set_shard_figures(&[(1, f)]);
        let text = m.render();
        assert!(!text.contains("shard=\"2\""), "shard 2's series are gone: {text}");
        assert!(text.contains("ringkv_shard_writes_per_second{shard=\"1\",node=\"7\"} 2"), "{text}");
    }
}
