//! Prometheus metrics of one node's Raft engine, in a registry of the
//! node's own (several nodes may share a process in tests) that the process
//! adds its own metrics to. Names follow Prometheus conventions: `ringkv_`
//! prefix, units in the name, `_total` for counters. Per-group gauges carry a
//! `shard` label (the group id: a shard on storenodes, the placement group on
//! placement members), a handful of series per replica.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

use crate::engine::Cf;

/// The engine's metrics.
pub struct RaftMetrics {
    /// The node's registry (labelled `node`); the process registers its own metrics here too.
    pub registry: Registry,
    /// Synced WriteBatches of Raft state (one per loop pass with any Ready).
    pub raft_fsyncs: IntCounter,
    /// Replicas whose Ready went into one synced WriteBatch.
    pub raft_readies_per_fsync: Histogram,
    /// Raft messages handed to the transport.
    pub raft_messages_sent: IntCounter,
    /// Batches (one per destination node and pass) handed to the transport.
    pub raft_message_batches_sent: IntCounter,
    /// Messages per batch.
    pub raft_messages_per_batch: Histogram,
    /// Raft messages dropped: peer queue full or stream down, unknown or
    /// removed group, or addressed to another replica id.
    pub raft_messages_dropped: IntCounter,
    /// Raft messages received from peers.
    pub raft_messages_received: IntCounter,
    /// Committed entries applied.
    pub raft_entries_applied: IntCounter,
    /// Passes of the loop that had work.
    pub raft_loop_passes: IntCounter,
    /// Requests refused because the loop's inbox was full.
    pub raft_inbox_full: IntCounter,
    /// Snapshot events: generated, sent, send_failed, received, refused, applied.
    pub snapshots: IntCounterVec,
    /// Bytes of snapshot files sent to peers (completed sends).
    pub snapshot_bytes_sent: IntCounter,
    /// Replicas fenced off after a local failure (open, apply or snapshot install).
    pub replicas_failed: IntGauge,
    /// Replicas this node created by applying a split.
    pub splits: IntCounter,
    /// Bytes (keys and values) state machines wrote while applying, by
    /// column family: with no snapshot installed, a split adds nothing to
    /// the `data` CF's count.
    pub apply_bytes: IntCounterVec,
    /// Messages for a group with no replica here kept until a split creates it.
    pub raft_messages_stashed: IntCounter,
    /// 1 if this replica leads its group.
    pub shard_is_leader: IntGaugeVec,
    /// Raft term.
    pub shard_term: IntGaugeVec,
    /// Raft commit index.
    pub shard_commit_index: IntGaugeVec,
    /// Applied index.
    pub shard_applied_index: IntGaugeVec,
    // Request tracing (issue 12): per-step latencies of proposals and reads.
    /// Leader: proposal accepted by the loop → its entry seen committed.
    pub propose_commit_duration: Histogram,
    /// Every replica: entries seen committed → applied (one sample per
    /// replica and pass that applied entries).
    pub commit_apply_duration: Histogram,
    /// Linearizable read: taken from the inbox → safe to serve (read index
    /// confirmed and applied).
    pub read_index_duration: Histogram,
}

fn register<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    // Names are fixed strings of this module: a clash is a programming error.
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
}

fn group_gauge(r: &Registry, name: &str, help: &str) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), &["shard"]).expect("valid metric"))
}

impl RaftMetrics {
    /// A new registry labelled with the node id, holding the engine's metrics.
    pub fn new(node_id: u64) -> RaftMetrics {
        let registry =
            Registry::new_custom(None, Some([("node".to_string(), node_id.to_string())].into_iter().collect()))
                .expect("valid registry");
        let r = &registry;
        let count_buckets = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        RaftMetrics {
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
                "Raft messages dropped (peer queue full, unknown or removed group, stale replica id)",
            ),
            raft_messages_received: counter(r, "ringkv_raft_messages_received_total", "Raft messages received"),
            raft_entries_applied: counter(r, "ringkv_raft_entries_applied_total", "Committed entries applied"),
            raft_loop_passes: counter(r, "ringkv_raft_loop_passes_total", "Raft loop passes"),
            raft_inbox_full: counter(r, "ringkv_raft_inbox_full_total", "Requests refused: Raft loop inbox full"),
            snapshots: register(
                r,
                IntCounterVec::new(Opts::new("ringkv_raft_snapshots_total", "Snapshots by event"), &["event"])
                    .expect("valid metric"),
            ),
            snapshot_bytes_sent: counter(
                r,
                "ringkv_raft_snapshot_bytes_sent_total",
                "Bytes of snapshots sent to peers",
            ),
            replicas_failed: register(
                r,
                IntGauge::new("ringkv_raft_replicas_failed", "Replicas fenced off after a local failure")
                    .expect("valid metric"),
            ),
            splits: counter(r, "ringkv_raft_split_replicas_created_total", "Replicas created by applying a split"),
            apply_bytes: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "ringkv_raft_apply_bytes_written_total",
                        "Bytes state machines put while applying, by column family",
                    ),
                    &["cf"],
                )
                .expect("valid metric"),
            ),
            raft_messages_stashed: counter(
                r,
                "ringkv_raft_messages_stashed_total",
                "Messages for a group with no replica here, kept briefly for a split about to create it",
            ),
            shard_is_leader: group_gauge(r, "ringkv_shard_is_leader", "1 if this replica leads"),
            shard_term: group_gauge(r, "ringkv_shard_term", "Raft term"),
            shard_commit_index: group_gauge(r, "ringkv_shard_commit_index", "Raft commit index"),
            shard_applied_index: group_gauge(r, "ringkv_shard_applied_index", "Applied index"),
            // Request tracing (issue 12).
            propose_commit_duration: histogram(
                r,
                "ringkv_raft_propose_commit_duration_seconds",
                "Leader: proposal accepted to entry committed",
                latency_buckets(),
            ),
            commit_apply_duration: histogram(
                r,
                "ringkv_raft_commit_apply_duration_seconds",
                "Entries committed to applied (written and answered)",
                latency_buckets(),
            ),
            read_index_duration: histogram(
                r,
                "ringkv_raft_read_index_duration_seconds",
                "Linearizable read: asked to ready to serve",
                latency_buckets(),
            ),
            registry,
        }
    }

    /// Counts the bytes one replica's apply batch put, by column family
    /// (indexed by [`Cf::as_u8`]).
    pub fn count_apply_bytes(&self, by_cf: [u64; 3]) {
        for cf in [Cf::Data, Cf::Raft, Cf::Meta] {
            let n = by_cf[cf.as_u8() as usize];
            if n > 0 {
                self.apply_bytes.with_label_values(&[cf.name()]).inc_by(n);
            }
        }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        use prometheus::Encoder;
        let mut buf = Vec::new();
        // Encoding gathered families into a Vec cannot fail.
        let _ = prometheus::TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// 100 µs to ~3.3 s, doubling: a proposal on one fast disk up to one stuck
/// behind an election.
fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")
}
