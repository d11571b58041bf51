//! Prometheus metrics of one node's Raft engine, in a registry of the
//! node's own (several nodes may share a process in tests) that the process
//! adds its own metrics to. Names follow Prometheus conventions: `ringkv_`
//! prefix, units in the name, `_total` for counters. Per-group gauges carry a
//! `shard` label (the group id: a shard on storenodes, the placement group on
//! placement members), a handful of series per replica.

use std::sync::Arc;
use std::time::Instant;

use prometheus::{Counter, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Registry};
use ringkv_common::metrics::{
    counter, counter_vec, float_counter, gauge, gauge_vec, histogram, histogram_vec, latency_buckets, long_buckets,
    register_process_metrics,
};

use crate::engine::{Cf, EngineStats};

/// The engine's metrics.
pub struct RaftMetrics {
    /// The node's registry (labelled `node`); the process registers its own metrics here too.
    pub registry: Registry,
    /// Replicas hosted (failed ones excluded).
    pub replicas: IntGauge,
    /// Synced WriteBatches of Raft state (one per loop pass with any Ready).
    pub raft_fsyncs: IntCounter,
    /// Unsynced WriteBatches of applied entries (one per pass that applied
    /// anything, every replica's entries together).
    pub apply_writes: IntCounter,
    /// Every RocksDB write of the loop's passes, synced or not.
    pub engine_writes: IntCounter,
    /// Replicas whose Ready went into one synced WriteBatch.
    pub raft_readies_per_fsync: Histogram,
    /// One pass of the loop with work: persist, send, apply, answer.
    pub pass_duration: Histogram,
    /// The pass's synced write of Raft state (the fsync every acknowledged
    /// write waits for).
    pub append_duration: Histogram,
    /// Requests waiting in the loop's inbox (sampled once a second).
    pub inbox_depth: IntGauge,
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
    /// Times a replica here saw its group's leader change (to another
    /// leader or to none).
    pub leader_changes: IntCounter,
    /// Snapshot events: generated, sent, send_failed, received, refused, applied.
    pub snapshots: IntCounterVec,
    /// Bytes of snapshot files sent to peers (completed sends).
    pub snapshot_bytes_sent: IntCounter,
    /// Bytes of snapshot files received from peers (completed receives).
    pub snapshot_bytes_received: IntCounter,
    /// Duration of a snapshot's phase: generate, send, receive, install.
    pub snapshot_duration: HistogramVec,
    /// Snapshots in a phase now: generate, send, receive, install.
    pub snapshots_in_progress: IntGaugeVec,
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
    /// 1 if this replica is a learner.
    pub shard_is_learner: IntGaugeVec,
    /// Raft term.
    pub shard_term: IntGaugeVec,
    /// Raft commit index.
    pub shard_commit_index: IntGaugeVec,
    /// Applied index.
    pub shard_applied_index: IntGaugeVec,
    /// Entries in the replica's log above the truncated index.
    pub shard_log_entries: IntGaugeVec,
    /// Approximate bytes of those entries.
    pub shard_log_bytes: IntGaugeVec,
    /// 1 while the replica installs a snapshot.
    pub shard_snapshot_installing: IntGaugeVec,
    /// Proposals this replica refused (not leader, dropped by raft-rs).
    pub shard_proposals_dropped: IntCounterVec,
    /// Leader only: its last index minus what a follower (label `peer`,
    /// the follower's node id) has matched.
    pub shard_follower_lag: IntGaugeVec,
    /// RocksDB memtables by column family.
    pub rocksdb_memtable_bytes: IntGaugeVec,
    /// RocksDB live SST files by column family.
    pub rocksdb_sst_bytes: IntGaugeVec,
    /// RocksDB's estimate of what compaction must rewrite, by column family.
    pub rocksdb_pending_compaction_bytes: IntGaugeVec,
    /// RocksDB's estimate of live keys, by column family.
    pub rocksdb_estimated_keys: IntGaugeVec,
    /// 1 while RocksDB stops writes.
    pub rocksdb_write_stopped: IntGauge,
    /// The rate RocksDB slows writers to (0: not delayed).
    pub rocksdb_delayed_write_rate: IntGauge,
    /// Time writers spent stalled.
    pub rocksdb_stall_seconds: Counter,
    /// Block cache hits.
    pub rocksdb_block_cache_hits: IntCounter,
    /// Block cache misses.
    pub rocksdb_block_cache_misses: IntCounter,
    /// Bytes held by the block cache.
    pub rocksdb_block_cache_usage: IntGauge,
    /// Size of the data directory's filesystem.
    pub disk_total_bytes: IntGauge,
    /// Bytes of it available to this process.
    pub disk_free_bytes: IntGauge,
    /// Leader: proposal accepted by the loop → its entry seen committed.
    pub propose_commit_duration: Histogram,
    /// Every replica: entries seen committed → applied (one sample per
    /// replica and pass that applied entries).
    pub commit_apply_duration: Histogram,
    /// Linearizable read: taken from the inbox → safe to serve (read index
    /// confirmed and applied).
    pub read_index_duration: Histogram,
}

impl RaftMetrics {
    /// A new registry labelled with the node id, holding the engine's metrics.
    pub fn new(node_id: u64) -> RaftMetrics {
        let registry =
            Registry::new_custom(None, Some([("node".to_string(), node_id.to_string())].into_iter().collect()))
                .expect("valid registry");
        let r = &registry;
        register_process_metrics(r);
        let count_buckets = vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0];
        let group = |name: &str, help: &str| gauge_vec(r, name, help, &["shard"]);
        let phase = &["phase"];
        let cf = &["cf"];
        RaftMetrics {
            replicas: gauge(r, "ringkv_raft_replicas", "Replicas hosted (failed ones excluded)"),
            raft_fsyncs: counter(r, "ringkv_raft_fsyncs_total", "Synced Raft WriteBatches"),
            apply_writes: counter(
                r,
                "ringkv_raft_apply_writes_total",
                "Unsynced WriteBatches of applied entries (one per pass that applied any)",
            ),
            engine_writes: counter(
                r,
                "ringkv_raft_engine_writes_total",
                "RocksDB writes of the Raft loop's passes, synced or not",
            ),
            raft_readies_per_fsync: histogram(
                r,
                "ringkv_raft_readies_per_fsync",
                "Replicas' Readies persisted by one synced WriteBatch",
                count_buckets.clone(),
            ),
            pass_duration: histogram(
                r,
                "ringkv_raft_pass_duration_seconds",
                "One Raft loop pass with work: persist, send, apply",
                latency_buckets(),
            ),
            append_duration: histogram(
                r,
                "ringkv_raft_append_duration_seconds",
                "Synced write of Raft state (the fsync) in one pass",
                latency_buckets(),
            ),
            inbox_depth: gauge(r, "ringkv_raft_inbox_depth", "Requests waiting in the Raft loop's inbox"),
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
            leader_changes: counter(
                r,
                "ringkv_raft_leader_changes_seen_total",
                "Times a replica here saw its group's leader change",
            ),
            snapshots: counter_vec(r, "ringkv_raft_snapshots_total", "Snapshots by event", &["event"]),
            snapshot_bytes_sent: counter(
                r,
                "ringkv_raft_snapshot_bytes_sent_total",
                "Bytes of snapshots sent to peers",
            ),
            snapshot_bytes_received: counter(
                r,
                "ringkv_raft_snapshot_bytes_received_total",
                "Bytes of snapshots received from peers",
            ),
            snapshot_duration: histogram_vec(
                r,
                "ringkv_raft_snapshot_duration_seconds",
                "Duration of a snapshot phase: generate, send, receive, install",
                phase,
                long_buckets(),
            ),
            snapshots_in_progress: gauge_vec(
                r,
                "ringkv_raft_snapshots_in_progress",
                "Snapshots in a phase now: generate, send, receive, install",
                phase,
            ),
            replicas_failed: gauge(r, "ringkv_raft_replicas_failed", "Replicas fenced off after a local failure"),
            splits: counter(r, "ringkv_raft_split_replicas_created_total", "Replicas created by applying a split"),
            apply_bytes: counter_vec(
                r,
                "ringkv_raft_apply_bytes_written_total",
                "Bytes state machines put while applying, by column family",
                &["cf"],
            ),
            raft_messages_stashed: counter(
                r,
                "ringkv_raft_messages_stashed_total",
                "Messages for a group with no replica here, kept briefly for a split about to create it",
            ),
            shard_is_leader: group("ringkv_shard_is_leader", "1 if this replica leads"),
            shard_is_learner: group("ringkv_shard_is_learner", "1 if this replica is a learner"),
            shard_term: group("ringkv_shard_term", "Raft term"),
            shard_commit_index: group("ringkv_shard_commit_index", "Raft commit index"),
            shard_applied_index: group("ringkv_shard_applied_index", "Applied index"),
            shard_log_entries: group("ringkv_shard_log_entries", "Entries in the Raft log above the truncated index"),
            shard_log_bytes: group("ringkv_shard_log_bytes", "Approximate bytes of the Raft log"),
            shard_snapshot_installing: group("ringkv_shard_snapshot_installing", "1 while installing a snapshot"),
            shard_proposals_dropped: counter_vec(
                r,
                "ringkv_shard_proposals_dropped_total",
                "Proposals this replica refused (not leader, dropped by raft-rs, busy)",
                &["shard"],
            ),
            shard_follower_lag: gauge_vec(
                r,
                "ringkv_shard_follower_lag_entries",
                "Leader only: last index minus the follower's matched index",
                &["shard", "peer"],
            ),
            rocksdb_memtable_bytes: gauge_vec(r, "ringkv_rocksdb_memtable_bytes", "Memtables", cf),
            rocksdb_sst_bytes: gauge_vec(r, "ringkv_rocksdb_sst_bytes", "Live SST files", cf),
            rocksdb_pending_compaction_bytes: gauge_vec(
                r,
                "ringkv_rocksdb_pending_compaction_bytes",
                "Estimated bytes compaction must rewrite",
                cf,
            ),
            rocksdb_estimated_keys: gauge_vec(r, "ringkv_rocksdb_estimated_keys", "Estimated live keys", cf),
            rocksdb_write_stopped: gauge(r, "ringkv_rocksdb_write_stopped", "1 while RocksDB stops writes"),
            rocksdb_delayed_write_rate: gauge(
                r,
                "ringkv_rocksdb_delayed_write_rate_bytes",
                "Write rate RocksDB slows writers to (0: not delayed)",
            ),
            rocksdb_stall_seconds: float_counter(
                r,
                "ringkv_rocksdb_stall_seconds_total",
                "Time writers spent stalled by RocksDB",
            ),
            rocksdb_block_cache_hits: counter(r, "ringkv_rocksdb_block_cache_hits_total", "Block cache hits"),
            rocksdb_block_cache_misses: counter(r, "ringkv_rocksdb_block_cache_misses_total", "Block cache misses"),
            rocksdb_block_cache_usage: gauge(r, "ringkv_rocksdb_block_cache_usage_bytes", "Bytes in the block cache"),
            disk_total_bytes: gauge(r, "ringkv_disk_total_bytes", "Size of the data directory's filesystem"),
            disk_free_bytes: gauge(r, "ringkv_disk_free_bytes", "Bytes of the data directory's filesystem available"),
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

    /// Removes every series of a group's replica (it left this node or
    /// was fenced off), so that series stay bounded by the replicas hosted.
    /// `peers` are the follower labels its leader exported.
    pub fn forget_group(&self, group_id: u64, peers: impl IntoIterator<Item = u64>) {
        let g = group_id.to_string();
        let gauges = [
            &self.shard_is_leader,
            &self.shard_is_learner,
            &self.shard_term,
            &self.shard_commit_index,
            &self.shard_applied_index,
            &self.shard_log_entries,
            &self.shard_log_bytes,
            &self.shard_snapshot_installing,
        ];
        for v in gauges {
            let _ = v.remove_label_values(&[&g]);
        }
        let _ = self.shard_proposals_dropped.remove_label_values(&[&g]);
        for p in peers {
            let _ = self.shard_follower_lag.remove_label_values(&[&g, &p.to_string()]);
        }
    }

    /// Counts a snapshot's phase as in progress until the returned guard
    /// drops, then observes its duration (failed attempts included: a stuck
    /// phase shows as in progress, a slow one in the histogram).
    pub fn snapshot_phase(self: &Arc<Self>, phase: &'static str) -> PhaseTimer {
        self.snapshots_in_progress.with_label_values(&[phase]).inc();
        PhaseTimer { metrics: self.clone(), phase, start: Instant::now() }
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

    /// Sets the RocksDB series from what the engine reports (its counters
    /// are cumulative: the metric's counters move by the difference).
    pub fn set_engine_stats(&self, st: &EngineStats) {
        for (cf, c) in &st.cfs {
            let l = [cf.name()];
            self.rocksdb_memtable_bytes.with_label_values(&l).set(c.memtable_bytes as i64);
            self.rocksdb_sst_bytes.with_label_values(&l).set(c.sst_bytes as i64);
            self.rocksdb_pending_compaction_bytes.with_label_values(&l).set(c.pending_compaction_bytes as i64);
            self.rocksdb_estimated_keys.with_label_values(&l).set(c.estimated_keys as i64);
        }
        self.rocksdb_write_stopped.set(st.write_stopped as i64);
        self.rocksdb_delayed_write_rate.set(st.delayed_write_rate as i64);
        let stalled = st.stall_micros as f64 / 1e6;
        self.rocksdb_stall_seconds.inc_by((stalled - self.rocksdb_stall_seconds.get()).max(0.0));
        self.rocksdb_block_cache_hits.inc_by(st.block_cache_hits.saturating_sub(self.rocksdb_block_cache_hits.get()));
        let misses = st.block_cache_misses.saturating_sub(self.rocksdb_block_cache_misses.get());
        self.rocksdb_block_cache_misses.inc_by(misses);
        self.rocksdb_block_cache_usage.set(st.block_cache_usage as i64);
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        ringkv_common::metrics::render(&self.registry)
    }
}

/// A snapshot phase in progress (see [`RaftMetrics::snapshot_phase`]).
pub struct PhaseTimer {
    metrics: Arc<RaftMetrics>,
    phase: &'static str,
    start: Instant,
}

impl Drop for PhaseTimer {
    fn drop(&mut self) {
        self.metrics.snapshots_in_progress.with_label_values(&[self.phase]).dec();
        self.metrics.snapshot_duration.with_label_values(&[self.phase]).observe(self.start.elapsed().as_secs_f64());
    }
}
