//! Prometheus metrics of one storenode, in a registry of its own (several
//! storenodes may share a process in tests). Names follow Prometheus
//! conventions: `ringkv_` prefix, units in the name, `_total` for counters.

use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

pub struct Metrics {
    pub registry: Registry,
    /// Synced WriteBatches of Raft state (one per loop pass with any Ready).
    pub raft_fsyncs: IntCounter,
    /// Replicas whose Ready went into one synced WriteBatch.
    pub raft_readies_per_fsync: Histogram,
    pub raft_messages_sent: IntCounter,
    pub raft_message_batches_sent: IntCounter,
    pub raft_messages_per_batch: Histogram,
    /// Raft messages dropped because a peer's queue was full or its stream down.
    pub raft_messages_dropped: IntCounter,
    pub raft_messages_received: IntCounter,
    pub raft_entries_applied: IntCounter,
    pub raft_loop_passes: IntCounter,
    pub snapshots: IntCounterVec,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    /// Per-shard gauges, labelled `shard`: role (1 leader, 0 not), term, commit and applied index.
    pub shard_is_leader: IntGaugeVec,
    pub shard_term: IntGaugeVec,
    pub shard_commit_index: IntGaugeVec,
    pub shard_applied_index: IntGaugeVec,
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid");
    r.register(Box::new(h.clone())).expect("unique metric");
    h
}

fn shard_gauge(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), &["shard"]).expect("valid metric");
    r.register(Box::new(g.clone())).expect("unique metric");
    g
}

impl Metrics {
    pub fn new(node_id: u64) -> Metrics {
        let registry =
            Registry::new_custom(None, Some([("node".to_string(), node_id.to_string())].into_iter().collect()))
                .expect("valid registry");
        let r = &registry;
        let count_buckets = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        let snapshots = IntCounterVec::new(Opts::new("ringkv_raft_snapshots_total", "Snapshots by event"), &["event"])
            .expect("valid metric");
        r.register(Box::new(snapshots.clone())).expect("unique metric");
        let requests = IntCounterVec::new(
            Opts::new("ringkv_storenode_requests_total", "ShardKv requests by method and result"),
            &["method", "result"],
        )
        .expect("valid metric");
        r.register(Box::new(requests.clone())).expect("unique metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("ringkv_storenode_request_duration_seconds", "ShardKv request latency by method")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
            &["method"],
        )
        .expect("valid metric");
        r.register(Box::new(request_duration.clone())).expect("unique metric");
        Metrics {
            raft_fsyncs: counter(r, "ringkv_raft_fsyncs_total", "Synced Raft WriteBatches"),
            raft_readies_per_fsync: histogram(
                r,
                "ringkv_raft_readies_per_fsync",
                "Replicas' Readies persisted by one synced WriteBatch",
                count_buckets.clone(),
            ),
            raft_messages_sent: counter(r, "ringkv_raft_messages_sent_total", "Raft messages sent"),
            raft_message_batches_sent: counter(
                r,
                "ringkv_raft_message_batches_sent_total",
                "Batches (RPC stream items) of Raft messages sent",
            ),
            raft_messages_per_batch: histogram(
                r,
                "ringkv_raft_messages_per_batch",
                "Raft messages coalesced into one batch to a peer",
                count_buckets,
            ),
            raft_messages_dropped: counter(
                r,
                "ringkv_raft_messages_dropped_total",
                "Raft messages dropped (peer queue full, peer unknown or unreachable)",
            ),
            raft_messages_received: counter(
                r,
                "ringkv_raft_messages_received_total",
                "Raft messages received from peers",
            ),
            raft_entries_applied: counter(r, "ringkv_raft_entries_applied_total", "Committed entries applied"),
            raft_loop_passes: counter(r, "ringkv_raft_loop_passes_total", "Raft loop passes"),
            snapshots,
            requests,
            request_duration,
            shard_is_leader: shard_gauge(r, "ringkv_shard_is_leader", "1 if this replica leads"),
            shard_term: shard_gauge(r, "ringkv_shard_term", "Raft term"),
            shard_commit_index: shard_gauge(r, "ringkv_shard_commit_index", "Raft commit index"),
            shard_applied_index: shard_gauge(r, "ringkv_shard_applied_index", "Applied index"),
            registry,
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        let enc = prometheus::TextEncoder::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = enc.encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}
