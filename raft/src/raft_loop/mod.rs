//! The Raft loop: one dedicated thread drives every replica on the node.
//!
//! One pass ([`RaftLoop::run_pass`], in `pass.rs`):
//! 1. drain the inbox (peer messages, proposals, reads, admin requests);
//! 2. on the tick interval, tick every replica (one timer for all of them);
//! 3. for every replica with a `Ready`: take read states, route the messages
//!    that may leave before persistence, and add snapshot / entries / hard
//!    state to ONE WriteBatch shared by all replicas;
//! 4. send those messages (a leader's appends, one per follower however many
//!    proposals the pass brought: raft-rs's `batch_append`; followers persist
//!    in parallel with the leader, which counts itself in the quorum only
//!    after step 5's `advance_append`), then write that batch with
//!    `sync = true` — a single fsync however many replicas had work (group
//!    commit across groups) — when any Ready must be synced (entries, a
//!    snapshot, a new term or vote); a batch that only moves commit indexes
//!    needs no fsync (etcd's `MustSync`) and joins step 6's unsynced write
//!    instead of having one of its own;
//! 5. `advance_append` every Ready and send its `persisted_messages` (votes,
//!    append responses: only after the sync, or a crash could make this node
//!    forget a vote or an acknowledged entry) and what advancing produced (a
//!    leader's new commit index), coalesced per destination node — before
//!    step 6, so a leader's commit waits on its followers' fsyncs, never on
//!    their applies;
//! 6. apply committed entries of all replicas, each replica into a batch of
//!    its own (data + applied index together), then write all of them as one
//!    unsynced batch (the synced log replays them); answer proposals and serve
//!    reads whose index is applied; `advance_apply`.
//!
//! Disk-heavy work stays off this thread: snapshot files are generated,
//! installed (`snapshots.rs`) and removed replicas deleted (`lifecycle.rs`)
//! by worker threads that report back through the loop's internal queue.
//!
//! A replica that meets a local failure (its stored state does not decode,
//! apply cannot read its data, a snapshot install fails) is fenced off: its
//! callers are answered, it is reported as failed in status and metrics, and
//! every other replica keeps serving. Only a failure of the shared synced
//! write stops the process: after it, what Raft promised is unknowable.
//!
//! Nothing here is async: RocksDB calls block, so the loop owns its thread
//! and talks to the tokio world through channels (crossbeam in, oneshot out).
//!
//! Files: `api` (the inbox), `replica` (one replica), `read_index`,
//! `requests` (proposals, reads, membership and leadership), `lifecycle`
//! (create, open, fail, remove), `pass` (the pass above), `apply`, `snapshots`.

mod api;
mod apply;
mod lifecycle;
mod pass;
mod read_index;
mod replica;
mod requests;
mod snapshots;
mod split;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use raft::SnapshotStatus;
use ringkv_proto::engine::Tombstone;

pub use api::{
    Callback, LoopHandle, LoopRequest, MemberChange, MemberChangeKind, ReadMode, ReplicaCondition, ReplicaStatus,
    Timed, Timings, Transport, ANSWER_GRACE,
};

use crate::config::RaftConfig;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::metrics::RaftMetrics;
use crate::snapshot::SnapshotDir;
use crate::state_machine::{Group, StateMachine};
use replica::{Lifecycle, Replica};

/// Most inbox requests handled in one pass, so that a flood of requests does
/// not delay persisting and answering the ones already taken.
const MAX_REQUESTS_PER_PASS: usize = 4096;

/// RocksDB's figures and the disk's free space are read every this many
/// ticks (and at the first).
const ENGINE_STATS_TICKS: u64 = 50;

/// What the loop needs to start.
#[derive(Clone, Debug)]
pub struct LoopConfig {
    /// This node's id.
    pub node_id: u64,
    /// Where snapshot files live (`gen/`, `recv/`).
    pub snapshot_dir: PathBuf,
    /// The engine's tunables.
    pub raft: RaftConfig,
}

/// A replica fenced off after a local failure: it holds no `RawNode` and
/// cannot step, propose, read or apply.
struct FailedReplica<G> {
    group: G,
    replica_id: u64,
    reason: String,
}

/// The loop: every replica of the node, and the queues that feed it.
pub struct RaftLoop<S: StateMachine, T: Transport> {
    cfg: LoopConfig,
    engine: Engine,
    snap_dir: SnapshotDir,
    transport: T,
    metrics: Arc<RaftMetrics>,
    replicas: HashMap<u64, Replica<S>>,
    failed: HashMap<u64, FailedReplica<S::Group>>,
    /// Removed replicas' tombstones, by group.
    tombstones: HashMap<u64, Tombstone>,
    /// Groups whose removed replica's data a worker is still deleting.
    destroying: HashSet<u64>,
    /// Replicas that may have work this pass.
    dirty: BTreeSet<u64>,
    requests: Receiver<LoopRequest<S>>,
    internal: Receiver<LoopRequest<S>>,
    handle: LoopHandle<S>,
    logger: slog::Logger,
    ticks: u64,
    /// Snapshot files being generated.
    generating: usize,
    /// Messages for groups with no replica here yet (see `split.rs`).
    stash: split::Stash,
    /// A planned stop has begun (see [`LoopRequest::Drain`]).
    draining: bool,
    /// Groups whose per-replica series the last gauge round exported, with
    /// the followers whose lag it exported (see `update_gauges`).
    exported: HashMap<u64, Vec<u64>>,
    new_sm: Box<dyn Fn() -> S + Send>,
}

impl<S: StateMachine, T: Transport> RaftLoop<S, T> {
    /// Opens every replica persisted in `engine` (finishing any snapshot that
    /// a crash interrupted; a replica that cannot open is marked failed, the
    /// others serve) and returns the loop and its inbox handle.
    pub fn new(
        cfg: LoopConfig,
        engine: Engine,
        transport: T,
        metrics: Arc<RaftMetrics>,
        new_sm: impl Fn() -> S + Send + 'static,
    ) -> Result<(Self, LoopHandle<S>)> {
        let (req_tx, requests) = crossbeam_channel::bounded(cfg.raft.inbox_capacity);
        let (int_tx, internal) = crossbeam_channel::unbounded();
        let handle = LoopHandle { requests: req_tx, internal: int_tx, metrics: metrics.clone() };
        let snap_dir = SnapshotDir::new(cfg.snapshot_dir.clone())?;
        let mut lp = RaftLoop {
            cfg,
            engine,
            snap_dir,
            transport,
            metrics,
            replicas: HashMap::new(),
            failed: HashMap::new(),
            tombstones: HashMap::new(),
            destroying: HashSet::new(),
            dirty: BTreeSet::new(),
            requests,
            internal,
            handle: handle.clone(),
            logger: crate::logger(),
            ticks: 0,
            generating: 0,
            stash: split::Stash::default(),
            exported: HashMap::new(),
            draining: false,
            new_sm: Box::new(new_sm),
        };
        lp.open_persisted()?;
        // Interrupted snapshots are applied by now; any other received file
        // is one Raft never accepted.
        lp.snap_dir.remove_all_received();
        Ok((lp, handle))
    }

    /// Runs the loop on the current thread until `Shutdown` or every handle
    /// is gone; then answers everyone still waiting.
    pub fn run(mut self) {
        let tick = self.cfg.raft.tick();
        let mut next_tick = Instant::now() + tick;
        'outer: loop {
            let wait = if self.dirty.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            // Reports first: they free resources and unblock replicas.
            let first = crossbeam_channel::select! {
                recv(self.internal) -> m => m.ok(),
                recv(self.requests) -> m => m.ok(),
                default(wait) => None,
            };
            if let Some(m) = first {
                if !self.handle(m) {
                    break 'outer;
                }
            }
            while let Ok(m) = self.internal.try_recv() {
                if !self.handle(m) {
                    break 'outer;
                }
            }
            for _ in 0..MAX_REQUESTS_PER_PASS {
                match self.requests.try_recv() {
                    Ok(m) => {
                        if !self.handle(m) {
                            break 'outer;
                        }
                    }
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + tick;
            }
            self.run_pass();
        }
        self.stop();
    }

    /// Answers everyone waiting on a replica: the loop is going away.
    /// Requests still queued need nothing: dropping them drops their
    /// callbacks, which [`LoopHandle::call`] reports as [`Error::Stopped`].
    fn stop(&mut self) {
        for r in self.replicas.values_mut() {
            r.fail_everyone(|| Error::Stopped);
        }
    }

    /// Handles one inbox request; false means stop.
    pub fn handle(&mut self, m: LoopRequest<S>) -> bool {
        match m {
            LoopRequest::Raft { group_id, from_node, msg } => self.step(group_id, from_node, *msg),
            LoopRequest::Propose { group_id, cmd, deadline, cb } => self.propose(group_id, cmd, deadline, cb),
            LoopRequest::Read { group_id, mode, deadline, cb } => self.read(group_id, mode, deadline, cb),
            LoopRequest::ChangeMembers { group_id, expect, changes, deadline, cb } => {
                self.change_members(group_id, expect, changes, deadline, cb)
            }
            LoopRequest::TransferLeader { group_id, to_replica_id, cb } => {
                let res = self.leader(group_id).map(|r| r.raw.transfer_leader(to_replica_id));
                self.dirty.insert(group_id);
                let _ = cb.send(res);
            }
            LoopRequest::CreateReplica { group, replica_id, bootstrap, campaign, cb } => {
                let _ = cb.send(self.create_replica(group, replica_id, bootstrap, campaign));
            }
            LoopRequest::RemoveReplica { group_id, cb } => {
                let _ = cb.send(self.remove_replica(group_id));
            }
            LoopRequest::Status { group_ids, cb } => {
                let _ = cb.send(self.status(&group_ids));
            }
            LoopRequest::SnapshotSent { group_id, to, ok } => {
                self.metrics.snapshots.with_label_values(&[if ok { "sent" } else { "send_failed" }]).inc();
                if let Some(r) = self.replicas.get_mut(&group_id) {
                    let st = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                    r.raw.report_snapshot(to, st);
                    self.dirty.insert(group_id);
                }
            }
            LoopRequest::SnapshotGenerated { group_id } => {
                self.generating = self.generating.saturating_sub(1);
                self.dirty.insert(group_id);
            }
            LoopRequest::SnapshotInstalled { group_id, index, result } => {
                self.snapshot_installed(group_id, index, result)
            }
            LoopRequest::ReplicaDestroyed { group_id, result } => self.replica_destroyed(group_id, result),
            LoopRequest::Unreachable { node_id } => {
                for r in self.replicas.values_mut().filter(|r| r.is_leader) {
                    for m in r.group.members().iter().filter(|m| m.node_id == node_id) {
                        r.raw.report_unreachable(m.replica_id);
                    }
                }
            }
            LoopRequest::Drain => self.draining = true,
            LoopRequest::Shutdown => return false,
        }
        true
    }

    /// Advances every replica's logical clock; answers callers whose
    /// deadline passed.
    pub fn tick(&mut self) {
        self.ticks += 1;
        let reissue_after = self.cfg.raft.election_ticks as u64;
        let now = Instant::now();
        for (id, r) in self.replicas.iter_mut() {
            // An installing replica's log starts after the snapshot while
            // raft-rs's `applied` is still before it: an election timeout
            // would make raft-rs read the unapplied entries between them
            // (compacted) and panic. It stays a quiet follower until the
            // install is done; a leader elsewhere is not delayed by it.
            // A draining node's followers do not count down to an election
            // (its leaders keep ticking: they send the heartbeats).
            let may_tick = r.lifecycle == Lifecycle::Normal && (!self.draining || r.leads());
            if may_tick && r.raw.tick() {
                self.dirty.insert(*id);
            }
            // raft-rs silently drops a ReadIndex that a new leader cannot serve
            // yet (nothing committed in its term): ask again.
            if r.reads.on_tick(&mut r.raw, self.ticks, reissue_after, now) {
                self.dirty.insert(*id);
            }
            r.expire_proposals(now);
        }
        if self.ticks == 1 || self.ticks.is_multiple_of(ENGINE_STATS_TICKS) {
            self.update_engine_gauges();
        }
        if self.ticks.is_multiple_of(10) {
            self.update_gauges();
            self.stash.expire(now);
        }
    }

    /// Sets every replica's gauges (once a second) and removes the series
    /// of replicas and followers gone since the last round, so that series
    /// stay bounded by what the node hosts.
    fn update_gauges(&mut self) {
        let m = &self.metrics;
        let mut exported = HashMap::with_capacity(self.replicas.len());
        for (id, r) in &self.replicas {
            let g = id.to_string();
            let l = [g.as_str()];
            let raft = &r.raw.raft;
            let store = r.raw.store();
            let learner = raft.prs().conf().learners().contains(&r.replica_id);
            m.shard_is_leader.with_label_values(&l).set(r.is_leader as i64);
            m.shard_is_learner.with_label_values(&l).set(learner as i64);
            m.shard_term.with_label_values(&l).set(raft.term as i64);
            m.shard_commit_index.with_label_values(&l).set(raft.raft_log.committed as i64);
            m.shard_applied_index.with_label_values(&l).set(store.applied_index() as i64);
            let entries = store.last_index_now().saturating_sub(store.truncated_index());
            m.shard_log_entries.with_label_values(&l).set(entries as i64);
            m.shard_log_bytes.with_label_values(&l).set(store.log_bytes() as i64);
            let installing = r.lifecycle != Lifecycle::Normal;
            m.shard_snapshot_installing.with_label_values(&l).set(installing as i64);
            let mut peers = Vec::new();
            if r.leads() {
                let last = raft.raft_log.last_index();
                for (rid, p) in raft.prs().iter().filter(|(rid, _)| **rid != r.replica_id) {
                    let Some(node) = r.node_of(*rid) else { continue };
                    let lag = last.saturating_sub(p.matched);
                    m.shard_follower_lag.with_label_values(&[&g, &node.to_string()]).set(lag as i64);
                    peers.push(node);
                }
            }
            exported.insert(*id, peers);
        }
        for (id, peers) in std::mem::take(&mut self.exported) {
            match exported.get(&id) {
                None => m.forget_group(id, peers),
                Some(now) => {
                    for p in peers.into_iter().filter(|p| !now.contains(p)) {
                        let _ = m.shard_follower_lag.remove_label_values(&[&id.to_string(), &p.to_string()]);
                    }
                }
            }
        }
        self.exported = exported;
        m.replicas.set(self.replicas.len() as i64);
        m.replicas_failed.set(self.failed.len() as i64);
        m.inbox_depth.set(self.requests.len() as i64);
    }

    /// RocksDB's own figures and the data directory's free space (in-memory
    /// properties and one statvfs: cheap enough for the loop thread every
    /// few seconds).
    fn update_engine_gauges(&self) {
        self.metrics.set_engine_stats(&self.engine.stats());
        match self.engine.disk_space() {
            Ok((total, free)) => {
                self.metrics.disk_total_bytes.set(total as i64);
                self.metrics.disk_free_bytes.set(free as i64);
            }
            Err(e) => tracing::debug!("statvfs of the data directory: {e}"),
        }
    }

    fn status(&self, ids: &[u64]) -> Vec<ReplicaStatus<S::Group>> {
        let wanted = |id: &u64| ids.is_empty() || ids.contains(id);
        let mut out: Vec<_> = self
            .replicas
            .iter()
            .filter(|(id, _)| wanted(id))
            .map(|(id, r)| {
                let raft = &r.raw.raft;
                let store = r.raw.store();
                let progress = if r.leads() {
                    raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
                } else {
                    Default::default()
                };
                ReplicaStatus {
                    group: r.group.clone(),
                    group_id: *id,
                    replica_id: r.replica_id,
                    is_leader: r.leads(),
                    leader_replica_id: raft.leader_id,
                    term: raft.term,
                    commit_index: raft.raft_log.committed,
                    applied_index: store.applied_index(),
                    first_log_index: store.truncated_index() + 1,
                    last_log_index: store.last_index_now(),
                    progress,
                    condition: match r.lifecycle {
                        replica::Lifecycle::Normal => ReplicaCondition::Normal,
                        replica::Lifecycle::ApplyingSnapshot { .. } => ReplicaCondition::ApplyingSnapshot,
                    },
                }
            })
            .collect();
        out.extend(self.failed.iter().filter(|(id, _)| wanted(id)).map(|(id, f)| ReplicaStatus {
            group: f.group.clone(),
            group_id: *id,
            replica_id: f.replica_id,
            is_leader: false,
            leader_replica_id: 0,
            term: 0,
            commit_index: 0,
            applied_index: 0,
            first_log_index: 0,
            last_log_index: 0,
            progress: HashMap::new(),
            condition: ReplicaCondition::Failed(f.reason.clone()),
        }));
        out.sort_by_key(|s| s.group_id);
        out
    }
}

#[cfg(test)]
mod scripted;
#[cfg(test)]
mod tests;
