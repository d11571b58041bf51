//! The Raft loop: one dedicated thread drives every replica on the node.
//!
//! One pass:
//! 1. drain the inbox (peer messages, proposals, reads, admin commands);
//! 2. on the tick interval, tick every replica (one timer for all of them);
//! 3. for every replica with a `Ready`: take read states, route the messages
//!    that may leave before persistence, and add snapshot / entries / hard
//!    state to ONE WriteBatch shared by all replicas;
//! 4. write that batch with `sync = true` — a single fsync however many
//!    replicas had work (group commit across shards);
//! 5. send `persisted_messages` (votes, append responses: only after the sync,
//!    or a crash could make this node forget a vote or an acknowledged entry),
//!    coalesced per destination node; `advance_append`;
//! 6. apply committed entries of all replicas into one more WriteBatch
//!    (data + applied index together, not synced: the synced log replays
//!    them), answer proposals and serve reads whose index is applied;
//!    `advance_apply`.
//!
//! Nothing here is async: RocksDB calls block, so the loop owns its thread and
//! talks to the tokio world through channels (crossbeam in, oneshot out).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use parking_lot::Mutex;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType,
    Message as RaftMsg, MessageType,
};
use raft::{RawNode, SnapshotStatus, StateRole};
use ringkv_proto::kv::ReadConsistency;
use ringkv_proto::meta::{Epoch, Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::raft::{ChangeKind, RaftMessage, ReplicaChange, ReplicaStatus};
use ringkv_proto::storage::{ConfChangeContext, ReplicaLifecycle, ReplicaState};
use rocksdb::WriteBatch;
use tokio::sync::oneshot;

use crate::engine::{Cf, Engine};
use crate::error::{Error, Result};
use crate::keys;
use crate::metrics::Metrics;
use crate::raft::snapshot::{self, SnapshotDir, SnapshotSlot};
use crate::raft::state_machine::{ApplyBatch, ApplyContext, StateMachine};
use crate::raft::storage::{encode, RaftStorage};

/// Most inbox messages handled in one pass, so that a flood of requests does
/// not delay persisting and answering the ones already taken.
const MAX_MSGS_PER_PASS: usize = 4096;

#[derive(Clone, Debug)]
pub struct LoopConfig {
    pub node_id: u64,
    pub tick: Duration,
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact a replica's log once it holds more applied entries than this;
    /// half of them are kept so a follower slightly behind catches up by log.
    pub compact_log_entries: u64,
    /// ... or once its log is larger than this (then everything applied goes).
    pub compact_log_bytes: u64,
    pub max_size_per_msg: u64,
    pub max_inflight_msgs: usize,
    /// Snapshot files generated at once.
    pub max_snapshot_generations: usize,
    pub snapshot_dir: PathBuf,
}

impl LoopConfig {
    pub fn new(node_id: u64, snapshot_dir: PathBuf) -> Self {
        LoopConfig {
            node_id,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_log_entries: 10_000,
            compact_log_bytes: 64 << 20,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_snapshot_generations: 2,
            snapshot_dir,
        }
    }
}

pub type Callback<T> = oneshot::Sender<Result<T>>;

/// What the loop is asked to do.
pub enum Msg<S: StateMachine> {
    /// A Raft message from a peer.
    Raft {
        shard_id: u64,
        from_node: u64,
        msg: Box<RaftMsg>,
    },
    /// Propose a command; answered once it is applied (or certainly dropped).
    Propose {
        shard_id: u64,
        epoch_version: Option<u64>,
        cmd: S::Command,
        cb: Callback<S::Response>,
    },
    /// Answered with the shard once a read of it at this consistency is safe.
    Read {
        shard_id: u64,
        epoch_version: Option<u64>,
        consistency: ReadConsistency,
        cb: Callback<ShardDescriptor>,
    },
    ChangeReplicas {
        shard_id: u64,
        epoch: Option<Epoch>,
        changes: Vec<ReplicaChange>,
        cb: Callback<ShardDescriptor>,
    },
    TransferLeader {
        shard_id: u64,
        to_replica_id: u64,
        cb: Callback<()>,
    },
    CreateReplica {
        shard: ShardDescriptor,
        replica_id: u64,
        bootstrap: bool,
        /// Campaign at once (placement spreads the first leaders this way).
        campaign: bool,
        cb: Callback<()>,
    },
    RemoveReplica {
        shard_id: u64,
        cb: Callback<()>,
    },
    Status {
        shard_ids: Vec<u64>,
        cb: oneshot::Sender<Vec<ReplicaStatus>>,
    },
    /// A snapshot stream to `to` (a replica id) finished.
    SnapshotSent {
        shard_id: u64,
        to: u64,
        ok: bool,
    },
    /// A snapshot file finished generating (or failed).
    SnapshotGenerated {
        shard_id: u64,
    },
    /// The stream to a node broke: its replicas' leaders should probe again.
    Unreachable {
        node_id: u64,
    },
    Shutdown,
}

/// Where the loop's outgoing messages go (the gRPC transport, or a test double).
pub trait Transport: Send + 'static {
    /// Queues messages for a node without blocking; false if they were dropped.
    fn send(&self, node_id: u64, msgs: Vec<RaftMessage>) -> bool;
    /// Streams the snapshot file at `path`, then `msg`; reports back with
    /// [`Msg::SnapshotSent`].
    fn send_snapshot(&self, node_id: u64, to_replica: u64, msg: RaftMessage, path: PathBuf);
    /// The address of a node, for leader hints.
    fn address(&self, node_id: u64) -> Option<String>;
}

/// The sending side of the loop's inbox.
pub struct LoopHandle<S: StateMachine> {
    tx: Sender<Msg<S>>,
}

impl<S: StateMachine> Clone for LoopHandle<S> {
    fn clone(&self) -> Self {
        LoopHandle { tx: self.tx.clone() }
    }
}

impl<S: StateMachine> LoopHandle<S> {
    pub fn send(&self, m: Msg<S>) -> Result<()> {
        self.tx.send(m).map_err(|_| Error::Stopped)
    }

    /// Sends a message built around a fresh callback and waits for the answer.
    /// A dropped callback (the loop stopped) is reported as `Stopped`.
    pub async fn call<T>(&self, build: impl FnOnce(Callback<T>) -> Msg<S>) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.send(build(tx))?;
        rx.await.map_err(|_| Error::Stopped)?
    }
}

struct Proposal<R> {
    index: u64,
    term: u64,
    waiter: Waiter<R>,
}

enum Waiter<R> {
    Cmd(Callback<R>),
    Conf(Callback<ShardDescriptor>),
}

struct ReadWaiter {
    cb: Callback<ShardDescriptor>,
    /// Linearizable-on-leader reads fail when leadership is lost before the
    /// index is confirmed; follower reads keep waiting.
    leader_only: bool,
}

/// ReadIndex requests of one replica. All reads that arrive in one pass share
/// one `read_index` call (one round of heartbeats).
#[derive(Default)]
struct Reads {
    next_ctx: u64,
    batch: Vec<ReadWaiter>,
    /// Issued, waiting for their ReadState: ctx -> (waiters, tick issued).
    issued: HashMap<u64, (Vec<ReadWaiter>, u64)>,
    /// Index confirmed, waiting for apply to reach it.
    confirmed: VecDeque<(u64, Vec<ReadWaiter>)>,
}

struct ReplicaFsm<S: StateMachine> {
    shard: ShardDescriptor,
    replica_id: u64,
    raw: RawNode<RaftStorage>,
    sm: S,
    proposals: VecDeque<Proposal<S::Response>>,
    /// Membership changes applied in joint state: answered when it is left.
    joint_waiters: Vec<Callback<ShardDescriptor>>,
    reads: Reads,
    is_leader: bool,
    removed: bool,
    snap_slot: Arc<Mutex<SnapshotSlot>>,
    /// Replica id -> node id learnt from incoming messages: a new replica
    /// does not know its shard's members until its first snapshot, yet must
    /// answer the leader.
    peer_nodes: HashMap<u64, u64>,
}

type Notify = Box<dyn FnOnce() + Send>;

pub struct RaftLoop<S: StateMachine, T: Transport> {
    cfg: LoopConfig,
    engine: Engine,
    snap_dir: SnapshotDir,
    transport: T,
    metrics: Arc<Metrics>,
    replicas: HashMap<u64, ReplicaFsm<S>>,
    dirty: BTreeSet<u64>,
    tx: Sender<Msg<S>>,
    rx: Receiver<Msg<S>>,
    logger: slog::Logger,
    ticks: u64,
    generating: usize,
    new_sm: Box<dyn Fn() -> S + Send>,
}

fn not_found(id: u64) -> Error {
    Error::ShardNotFound(id)
}

fn role_of(id: u64, cs: &ConfState) -> Option<ReplicaRole> {
    if cs.voters.contains(&id) || cs.voters_outgoing.contains(&id) {
        Some(ReplicaRole::Voter)
    } else if cs.learners.contains(&id) || cs.learners_next.contains(&id) {
        Some(ReplicaRole::Learner)
    } else {
        None
    }
}

impl<S: StateMachine, T: Transport> RaftLoop<S, T> {
    /// Opens every replica persisted in `engine` (finishing any snapshot that
    /// a crash interrupted) and returns the loop and its inbox handle.
    pub fn new(
        cfg: LoopConfig,
        engine: Engine,
        transport: T,
        metrics: Arc<Metrics>,
        new_sm: impl Fn() -> S + Send + 'static,
    ) -> Result<(Self, LoopHandle<S>)> {
        let (tx, rx) = crossbeam_channel::unbounded();
        let snap_dir = SnapshotDir::new(cfg.snapshot_dir.clone())?;
        let mut lp = RaftLoop {
            cfg,
            engine,
            snap_dir,
            transport,
            metrics,
            replicas: HashMap::new(),
            dirty: BTreeSet::new(),
            tx: tx.clone(),
            rx,
            logger: crate::raft::logger(),
            ticks: 0,
            generating: 0,
            new_sm: Box::new(new_sm),
        };
        for state in lp.persisted_replicas()? {
            lp.open_replica(state)?;
        }
        // Interrupted snapshots are applied by now; any other received file
        // is one Raft never accepted.
        lp.snap_dir.remove_all_received();
        Ok((lp, LoopHandle { tx }))
    }

    fn persisted_replicas(&self) -> Result<Vec<ReplicaState>> {
        let mut out = Vec::new();
        let mut it = self.engine.iter_range(Cf::Meta, &[], &[0xff; 9]);
        while let Some(k) = it.key() {
            let Some(shard_id) = keys::shard_of(k) else { break };
            if keys::is_replica_state_key(k) {
                let v = it.value().unwrap_or_default();
                let st = ReplicaState::decode(v)
                    .map_err(|e| Error::Corrupt(format!("shard {shard_id} replica state: {e}")))?;
                out.push(st);
            }
            // Skip the rest of this shard's meta keys (de-dup records can be many).
            it.seek(keys::shard_all_range(shard_id).1);
        }
        it.status()?;
        Ok(out)
    }

    fn open_replica(&mut self, state: ReplicaState) -> Result<()> {
        let shard = state.shard.clone().unwrap_or_default();
        if state.lifecycle == ReplicaLifecycle::ApplyingSnapshot as i32 {
            tracing::info!(shard = shard.id, "finishing a snapshot interrupted by a restart");
            self.finish_snapshot(&shard, &state.snapshot_path, state.replica_id)?;
        }
        let slot = Arc::new(Mutex::new(SnapshotSlot::default()));
        let storage = RaftStorage::load(self.engine.clone(), shard.id, slot.clone())?;
        let rcfg = raft::Config {
            id: state.replica_id,
            election_tick: self.cfg.election_ticks,
            heartbeat_tick: self.cfg.heartbeat_ticks,
            applied: storage.applied_index(),
            max_size_per_msg: self.cfg.max_size_per_msg,
            max_inflight_msgs: self.cfg.max_inflight_msgs,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        let raw = RawNode::new(&rcfg, storage, &self.logger)?;
        let mut sm = (self.new_sm)();
        sm.restore(&self.engine, &shard)?;
        let fsm = ReplicaFsm {
            shard,
            replica_id: state.replica_id,
            raw,
            sm,
            proposals: VecDeque::new(),
            joint_waiters: Vec::new(),
            reads: Reads::default(),
            is_leader: false,
            removed: false,
            snap_slot: slot,
            peer_nodes: HashMap::new(),
        };
        self.dirty.insert(fsm.shard.id);
        self.replicas.insert(fsm.shard.id, fsm);
        Ok(())
    }

    /// Runs the loop on the current thread until `Shutdown` or every handle is gone.
    pub fn run(mut self) {
        let tick = self.cfg.tick;
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = if self.dirty.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            match self.rx.recv_timeout(wait) {
                Ok(m) => {
                    if !self.handle(m) {
                        return;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => return,
            }
            for _ in 0..MAX_MSGS_PER_PASS {
                match self.rx.try_recv() {
                    Ok(m) => {
                        if !self.handle(m) {
                            return;
                        }
                    }
                    Err(_) => break,
                }
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + tick;
            }
            self.poll();
        }
    }

    /// Handles one inbox message; false means stop.
    pub fn handle(&mut self, m: Msg<S>) -> bool {
        match m {
            Msg::Raft { shard_id, from_node, msg } => {
                self.metrics.raft_messages_received.inc();
                match self.replicas.get_mut(&shard_id) {
                    Some(r) => {
                        r.peer_nodes.insert(msg.from, from_node);
                        if let Err(e) = r.raw.step(*msg) {
                            tracing::debug!(shard_id, "step: {e}");
                        }
                        self.dirty.insert(shard_id);
                    }
                    None => self.metrics.raft_messages_dropped.inc(),
                }
            }
            Msg::Propose { shard_id, epoch_version, cmd, cb } => {
                let res = self.propose(shard_id, epoch_version, cmd);
                match res {
                    Ok((index, term)) => {
                        let r = self.replicas.get_mut(&shard_id).expect("proposed to it");
                        r.proposals.push_back(Proposal { index, term, waiter: Waiter::Cmd(cb) });
                    }
                    Err(e) => {
                        let _ = cb.send(Err(e));
                    }
                }
            }
            Msg::Read { shard_id, epoch_version, consistency, cb } => {
                self.read(shard_id, epoch_version, consistency, cb)
            }
            Msg::ChangeReplicas { shard_id, epoch, changes, cb } => {
                match self.change_replicas(shard_id, epoch, changes) {
                    Ok((index, term)) => {
                        let r = self.replicas.get_mut(&shard_id).expect("proposed to it");
                        r.proposals.push_back(Proposal { index, term, waiter: Waiter::Conf(cb) });
                    }
                    Err(e) => {
                        let _ = cb.send(Err(e));
                    }
                }
            }
            Msg::TransferLeader { shard_id, to_replica_id, cb } => {
                let res = self.leader(shard_id).map(|r| r.raw.transfer_leader(to_replica_id));
                self.dirty.insert(shard_id);
                let _ = cb.send(res);
            }
            Msg::CreateReplica { shard, replica_id, bootstrap, campaign, cb } => {
                let _ = cb.send(self.create_replica(shard, replica_id, bootstrap, campaign));
            }
            Msg::RemoveReplica { shard_id, cb } => {
                let res = match self.replicas.contains_key(&shard_id) {
                    true => self.destroy_replica(shard_id),
                    false => Err(not_found(shard_id)),
                };
                let _ = cb.send(res);
            }
            Msg::Status { shard_ids, cb } => {
                let _ = cb.send(self.status(&shard_ids));
            }
            Msg::SnapshotSent { shard_id, to, ok } => {
                self.metrics.snapshots.with_label_values(&[if ok { "sent" } else { "send_failed" }]).inc();
                if let Some(r) = self.replicas.get_mut(&shard_id) {
                    let st = if ok { SnapshotStatus::Finish } else { SnapshotStatus::Failure };
                    r.raw.report_snapshot(to, st);
                    self.dirty.insert(shard_id);
                }
            }
            Msg::SnapshotGenerated { shard_id } => {
                self.generating = self.generating.saturating_sub(1);
                self.dirty.insert(shard_id);
            }
            Msg::Unreachable { node_id } => {
                for r in self.replicas.values_mut().filter(|r| r.is_leader) {
                    for rep in r.shard.replicas.iter().filter(|p| p.node_id == node_id) {
                        r.raw.report_unreachable(rep.replica_id);
                    }
                }
            }
            Msg::Shutdown => return false,
        }
        true
    }

    fn replica(&mut self, shard_id: u64) -> Result<&mut ReplicaFsm<S>> {
        self.replicas.get_mut(&shard_id).ok_or(not_found(shard_id))
    }

    fn not_leader(&self, r: &ReplicaFsm<S>) -> Error {
        let lid = r.raw.raft.leader_id;
        let leader = r.shard.replicas.iter().find(|p| p.replica_id == lid && lid != 0).cloned();
        let leader_address = leader.as_ref().and_then(|l| self.transport.address(l.node_id)).unwrap_or_default();
        Error::NotLeader { shard_id: r.shard.id, leader, leader_address }
    }

    fn leader(&mut self, shard_id: u64) -> Result<&mut ReplicaFsm<S>> {
        let r = self.replicas.get(&shard_id).ok_or(not_found(shard_id))?;
        if r.raw.raft.state != StateRole::Leader {
            return Err(self.not_leader(r));
        }
        self.replica(shard_id)
    }

    fn check_version(r: &ReplicaFsm<S>, version: Option<u64>) -> Result<()> {
        let current = r.shard.epoch.as_ref().map_or(0, |e| e.version);
        match version {
            Some(v) if v != current => Err(Error::EpochMismatch(Box::new(r.shard.clone()))),
            _ => Ok(()),
        }
    }

    fn propose(&mut self, shard_id: u64, version: Option<u64>, cmd: S::Command) -> Result<(u64, u64)> {
        let r = self.leader(shard_id)?;
        Self::check_version(r, version)?;
        let before = r.raw.raft.raft_log.last_index();
        r.raw.propose(vec![], cmd.encode_to_vec())?;
        let index = r.raw.raft.raft_log.last_index();
        if index == before {
            // raft-rs drops proposals while a leader transfer is in progress.
            return Err(Error::Retryable("proposal dropped (leader transfer)".into()));
        }
        let term = r.raw.raft.term;
        self.dirty.insert(shard_id);
        Ok((index, term))
    }

    fn read(
        &mut self,
        shard_id: u64,
        version: Option<u64>,
        consistency: ReadConsistency,
        cb: Callback<ShardDescriptor>,
    ) {
        let Some(r) = self.replicas.get(&shard_id) else {
            let _ = cb.send(Err(not_found(shard_id)));
            return;
        };
        if let Err(e) = Self::check_version(r, version) {
            let _ = cb.send(Err(e));
            return;
        }
        let leader_only = match consistency {
            ReadConsistency::Stale => {
                let _ = cb.send(Ok(r.shard.clone()));
                return;
            }
            ReadConsistency::Linearizable => true,
            ReadConsistency::Follower => false,
        };
        if leader_only && r.raw.raft.state != StateRole::Leader {
            let e = self.not_leader(r);
            let _ = cb.send(Err(e));
            return;
        }
        let r = self.replicas.get_mut(&shard_id).expect("checked above");
        r.reads.batch.push(ReadWaiter { cb, leader_only });
        self.dirty.insert(shard_id);
    }

    fn change_replicas(
        &mut self,
        shard_id: u64,
        epoch: Option<Epoch>,
        changes: Vec<ReplicaChange>,
    ) -> Result<(u64, u64)> {
        let r = self.leader(shard_id)?;
        let current = r.shard.epoch.unwrap_or_default();
        if let Some(e) = epoch {
            if e.conf_ver != current.conf_ver || e.version != current.version {
                return Err(Error::EpochMismatch(Box::new(r.shard.clone())));
            }
        }
        if changes.is_empty() {
            return Err(Error::invalid("changes", "empty"));
        }
        let mut replicas = r.shard.replicas.clone();
        let mut singles = Vec::new();
        for ch in &changes {
            let rep = ch.replica.ok_or_else(|| Error::invalid("replica", "missing"))?;
            if rep.replica_id == 0 || rep.node_id == 0 {
                return Err(Error::invalid("replica", "replica_id and node_id must be non-zero"));
            }
            let kind = ChangeKind::try_from(ch.kind).map_err(|_| Error::invalid("kind", "unknown"))?;
            if kind == ChangeKind::Remove && rep.replica_id == r.replica_id {
                return Err(Error::invalid("replica", "cannot remove the leader: transfer leadership first"));
            }
            let ty = match kind {
                ChangeKind::AddVoter => ConfChangeType::AddNode,
                ChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
                ChangeKind::Remove => ConfChangeType::RemoveNode,
            };
            if kind != ChangeKind::Remove {
                replicas.retain(|p| p.replica_id != rep.replica_id);
                replicas.push(rep);
            }
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ty);
            single.node_id = rep.replica_id;
            singles.push(single);
        }
        let mut cc = ConfChangeV2::default();
        cc.set_changes(singles.into());
        cc.set_transition(ConfChangeTransition::Auto);
        let ctx = ConfChangeContext { replicas }.encode_to_vec();
        let before = r.raw.raft.raft_log.last_index();
        r.raw.propose_conf_change(ctx, cc)?;
        let index = r.raw.raft.raft_log.last_index();
        if index == before {
            return Err(Error::Retryable("membership change already in progress".into()));
        }
        let term = r.raw.raft.term;
        self.dirty.insert(shard_id);
        Ok((index, term))
    }

    fn create_replica(
        &mut self,
        shard: ShardDescriptor,
        replica_id: u64,
        bootstrap: bool,
        campaign: bool,
    ) -> Result<()> {
        if let Some(r) = self.replicas.get(&shard.id) {
            return if r.replica_id == replica_id {
                Ok(()) // idempotent retry
            } else {
                Err(Error::invalid("shard", format!("replica {} of shard {} exists here", r.replica_id, shard.id)))
            };
        }
        if replica_id == 0 || shard.id == 0 {
            return Err(Error::invalid("replica_id", "shard and replica ids must be non-zero"));
        }
        let overlaps = self.replicas.values().any(|r| {
            let (a, b) = (&r.shard, &shard);
            let a_end = if a.end == 0 { u128::MAX } else { a.end as u128 };
            let b_end = if b.end == 0 { u128::MAX } else { b.end as u128 };
            (a.start as u128) < b_end && (b.start as u128) < a_end
        });
        if overlaps {
            return Err(Error::invalid("shard", "range overlaps a shard already on this node"));
        }
        let mut wb = WriteBatch::default();
        if bootstrap {
            if !shard.replicas.iter().any(|p| p.replica_id == replica_id) {
                return Err(Error::invalid("replica_id", "not among the shard's replicas"));
            }
            let voters =
                shard.replicas.iter().filter(|p| p.role == ReplicaRole::Voter as i32).map(|p| p.replica_id).collect();
            RaftStorage::bootstrap(&self.engine, &mut wb, shard.id, voters);
        }
        let state = ReplicaState { shard: Some(shard), replica_id, ..Default::default() };
        self.put_replica_state(&mut wb, &state);
        self.engine.write(wb, true)?;
        let id = shard_id_of(&state);
        self.open_replica(state)?;
        if campaign {
            if let Some(r) = self.replicas.get_mut(&id) {
                r.raw.campaign()?;
                self.dirty.insert(id);
            }
        }
        Ok(())
    }

    fn put_replica_state(&self, wb: &mut WriteBatch, st: &ReplicaState) {
        let id = st.shard.as_ref().map_or(0, |s| s.id);
        self.engine.put_cf(wb, Cf::Meta, &keys::meta_replica_state_key(id), &st.encode_to_vec());
    }

    /// Deletes every trace of the local replica: data, log, Raft and apply state.
    fn destroy_replica(&mut self, shard_id: u64) -> Result<()> {
        let Some(r) = self.replicas.remove(&shard_id) else { return Ok(()) };
        let mut wb = WriteBatch::default();
        for range in S::state_ranges(&r.shard) {
            self.engine.delete_range_cf(&mut wb, range.cf, &range.lo, &range.hi);
        }
        let (lo, hi) = keys::shard_all_range(shard_id);
        self.engine.delete_range_cf(&mut wb, Cf::Raft, &lo, &hi);
        self.engine.delete_range_cf(&mut wb, Cf::Meta, &lo, &hi);
        self.engine.write(wb, true)?;
        self.snap_dir.remove_generated_except(shard_id, None);
        self.dirty.remove(&shard_id);
        tracing::info!(shard_id, replica = r.replica_id, "replica removed");
        // Dropping `r` drops its callbacks: waiters see the loop's answer as
        // "stopped", which a client treats as outcome unknown for writes.
        Ok(())
    }

    fn status(&self, ids: &[u64]) -> Vec<ReplicaStatus> {
        let mut out: Vec<_> = self
            .replicas
            .values()
            .filter(|r| ids.is_empty() || ids.contains(&r.shard.id))
            .map(|r| {
                let raft = &r.raw.raft;
                let store = r.raw.store();
                let progress = if raft.state == StateRole::Leader {
                    raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
                } else {
                    Default::default()
                };
                ReplicaStatus {
                    shard: Some(r.shard.clone()),
                    replica_id: r.replica_id,
                    is_leader: raft.state == StateRole::Leader,
                    leader_replica_id: raft.leader_id,
                    term: raft.term,
                    commit_index: raft.raft_log.committed,
                    applied_index: store.applied_index(),
                    first_log_index: store.truncated_index() + 1,
                    last_log_index: store.last_index_now(),
                    progress,
                }
            })
            .collect();
        out.sort_by_key(|s| s.shard.as_ref().map_or(0, |d| d.id));
        out
    }

    pub fn tick(&mut self) {
        self.ticks += 1;
        let reissue_after = self.cfg.election_ticks as u64;
        for (id, r) in self.replicas.iter_mut() {
            if r.raw.tick() {
                self.dirty.insert(*id);
            }
            // raft-rs silently drops a ReadIndex that a new leader cannot serve
            // yet (nothing committed in its term): ask again.
            for (ctx, (_, at)) in r.reads.issued.iter_mut() {
                if self.ticks - *at >= reissue_after {
                    *at = self.ticks;
                    r.raw.read_index(ctx.to_be_bytes().to_vec());
                    self.dirty.insert(*id);
                }
            }
            r.reads.issued.retain(|_, (w, _)| {
                w.retain(|w| !w.cb.is_closed());
                !w.is_empty()
            });
        }
        if self.ticks.is_multiple_of(10) {
            self.update_gauges();
        }
    }

    fn update_gauges(&self) {
        let m = &self.metrics;
        for r in self.replicas.values() {
            let l = [r.shard.id.to_string()];
            let l = [l[0].as_str()];
            m.shard_is_leader.with_label_values(&l).set(r.is_leader as i64);
            m.shard_term.with_label_values(&l).set(r.raw.raft.term as i64);
            m.shard_commit_index.with_label_values(&l).set(r.raw.raft.raft_log.committed as i64);
            m.shard_applied_index.with_label_values(&l).set(r.raw.store().applied_index() as i64);
        }
    }

    fn issue_reads(&mut self) {
        for (id, r) in self.replicas.iter_mut() {
            if r.reads.batch.is_empty() {
                continue;
            }
            let ctx = r.reads.next_ctx;
            r.reads.next_ctx += 1;
            let batch = std::mem::take(&mut r.reads.batch);
            r.reads.issued.insert(ctx, (batch, self.ticks));
            r.raw.read_index(ctx.to_be_bytes().to_vec());
            self.dirty.insert(*id);
        }
    }

    /// Routes messages of replica `r` into per-node batches; snapshots go to
    /// their own stream.
    fn route(
        transport: &T,
        snap_dir: &SnapshotDir,
        node_id: u64,
        r: &ReplicaFsm<S>,
        msgs: Vec<RaftMsg>,
        out: &mut HashMap<u64, Vec<(RaftMessage, u64)>>,
    ) {
        for m in msgs {
            let to_node = r.shard.replicas.iter().find(|p| p.replica_id == m.to).map(|p| p.node_id);
            let Some(to_node) = to_node.or_else(|| r.peer_nodes.get(&m.to).copied()) else {
                tracing::debug!(shard = r.shard.id, to = m.to, "message to an unknown replica");
                continue;
            };
            let to_replica = m.to;
            let wire = RaftMessage { shard_id: r.shard.id, from_node: node_id, to_node, message: encode(&m) };
            if m.get_msg_type() == MessageType::MsgSnapshot {
                let md = m.get_snapshot().get_metadata();
                let path = snap_dir.generated(r.shard.id, md.term, md.index);
                transport.send_snapshot(to_node, to_replica, wire, path);
            } else {
                out.entry(to_node).or_default().push((wire, to_replica));
            }
        }
    }

    fn flush(&mut self, out: HashMap<u64, Vec<(RaftMessage, u64)>>) {
        for (node, msgs) in out {
            let n = msgs.len();
            let dests: Vec<(u64, u64)> = msgs.iter().map(|(m, to)| (m.shard_id, *to)).collect();
            let batch = msgs.into_iter().map(|(m, _)| m).collect();
            if self.transport.send(node, batch) {
                self.metrics.raft_messages_sent.inc_by(n as u64);
                self.metrics.raft_message_batches_sent.inc();
                self.metrics.raft_messages_per_batch.observe(n as f64);
            } else {
                self.metrics.raft_messages_dropped.inc_by(n as u64);
                for (shard, to) in dests {
                    if let Some(r) = self.replicas.get_mut(&shard) {
                        r.raw.report_unreachable(to);
                    }
                }
            }
        }
    }

    /// One pass over the replicas with work: persist, send, apply (see the
    /// module doc for the order and why).
    pub fn poll(&mut self) {
        self.issue_reads();
        if self.dirty.is_empty() {
            return;
        }
        self.metrics.raft_loop_passes.inc();
        let dirty = std::mem::take(&mut self.dirty);
        let node_id = self.cfg.node_id;
        let mut wb = WriteBatch::default();
        let mut readies = Vec::new();
        let mut out = HashMap::new();
        let mut snapshots = Vec::new();
        for id in &dirty {
            let Some(r) = self.replicas.get_mut(id) else { continue };
            if !r.raw.has_ready() {
                continue;
            }
            let mut rd = r.raw.ready();
            if let Some(ss) = rd.ss() {
                let leader = ss.raft_state == StateRole::Leader;
                if r.is_leader && !leader {
                    r.lost_leadership(&self.transport);
                }
                r.is_leader = leader;
            }
            for rs in rd.take_read_states() {
                let ctx = rs.request_ctx.as_slice().try_into().map(u64::from_be_bytes).unwrap_or(u64::MAX);
                if let Some((w, _)) = r.reads.issued.remove(&ctx) {
                    r.reads.confirmed.push_back((rs.index, w));
                }
            }
            Self::route(&self.transport, &self.snap_dir, node_id, r, rd.take_messages(), &mut out);
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                let md = snap.get_metadata();
                let data = match snapshot::snapshot_data(snap) {
                    Ok(d) => d,
                    // raft-rs has accepted it; going on would diverge from the leader.
                    Err(e) => panic!("shard {id}: accepted snapshot is unreadable: {e}"),
                };
                let path = self.snap_dir.received(*id, md.term, md.index);
                r.raw.mut_store().apply_snapshot_meta(&mut wb, snap);
                r.shard = data.shard.unwrap_or_default();
                let st = ReplicaState {
                    shard: Some(r.shard.clone()),
                    replica_id: r.replica_id,
                    lifecycle: ReplicaLifecycle::ApplyingSnapshot as i32,
                    snapshot_path: path.to_string_lossy().into_owned(),
                };
                self.engine.put_cf(&mut wb, Cf::Meta, &keys::meta_replica_state_key(*id), &st.encode_to_vec());
                snapshots.push((*id, path));
            }
            r.raw.mut_store().append(&mut wb, rd.entries());
            if let Some(hs) = rd.hs() {
                r.raw.mut_store().set_hard_state(&mut wb, hs);
            }
            readies.push((*id, rd));
        }
        if !wb.is_empty() {
            // A failed synced write leaves Raft's promises unknowable: stop the
            // process rather than answer anything (as etcd and TiKV do).
            self.engine.write(wb, true).unwrap_or_else(|e| panic!("persisting Raft state: {e}"));
            self.metrics.raft_fsyncs.inc();
            self.metrics.raft_readies_per_fsync.observe(readies.len() as f64);
        }
        self.flush(std::mem::take(&mut out));
        for (id, path) in snapshots {
            let r = self.replicas.get(&id).expect("replica with a snapshot");
            let (shard, replica_id) = (r.shard.clone(), r.replica_id);
            self.finish_snapshot(&shard, &path.to_string_lossy(), replica_id)
                .unwrap_or_else(|e| panic!("shard {id}: applying snapshot: {e}"));
            let r = self.replicas.get_mut(&id).expect("replica with a snapshot");
            r.sm.restore(&self.engine, &shard).unwrap_or_else(|e| panic!("shard {id}: restoring after snapshot: {e}"));
            self.metrics.snapshots.with_label_values(&["applied"]).inc();
        }

        let mut batch = ApplyBatch::default();
        let mut notify: Vec<Notify> = Vec::new();
        let mut applied = Vec::new();
        for (id, mut rd) in readies {
            let r = self.replicas.get_mut(&id).expect("replica with a ready");
            Self::route(&self.transport, &self.snap_dir, node_id, r, rd.take_persisted_messages(), &mut out);
            let mut committed = rd.take_committed_entries();
            let mut light = r.raw.advance_append(rd);
            if let Some(c) = light.commit_index() {
                r.raw.mut_store().set_commit(&mut batch.wb, c);
            }
            Self::route(&self.transport, &self.snap_dir, node_id, r, light.take_messages(), &mut out);
            committed.extend(light.take_committed_entries());
            if !committed.is_empty() {
                let n = committed.len() as u64;
                apply_entries(&self.engine, r, committed, &mut batch, &mut notify)
                    .unwrap_or_else(|e| panic!("shard {id}: apply: {e}"));
                self.metrics.raft_entries_applied.inc_by(n);
                maybe_compact(r, &mut batch.wb, &self.cfg);
            }
            applied.push(id);
        }
        if !batch.is_empty() {
            self.engine.write(batch.take(), false).unwrap_or_else(|e| panic!("applying: {e}"));
        }
        self.flush(out);
        for n in notify {
            n();
        }
        for id in applied {
            let Some(r) = self.replicas.get_mut(&id) else { continue };
            r.raw.advance_apply();
            r.serve_reads();
            if r.removed {
                if let Err(e) = self.destroy_replica(id) {
                    tracing::error!(shard = id, "removing replica: {e}");
                }
            }
        }
        for id in dirty {
            let Some(r) = self.replicas.get(&id) else { continue };
            if r.raw.has_ready() {
                self.dirty.insert(id);
            }
            self.maybe_generate_snapshot(id);
        }
    }

    fn maybe_generate_snapshot(&mut self, id: u64) {
        if self.generating >= self.cfg.max_snapshot_generations {
            return;
        }
        let Some(r) = self.replicas.get(&id) else { return };
        if !r.snap_slot.lock().take_request() {
            return;
        }
        self.generating += 1;
        let (engine, dir, slot, tx) =
            (self.engine.clone(), self.snap_dir.clone(), r.snap_slot.clone(), self.tx.clone());
        let metrics = self.metrics.clone();
        let spawned = std::thread::Builder::new().name(format!("snap-gen-{id}")).spawn(move || {
            let res = snapshot::generate(&engine, &dir, id, S::state_ranges);
            match &res {
                Ok(s) => {
                    metrics.snapshots.with_label_values(&["generated"]).inc();
                    tracing::info!(shard = id, index = s.get_metadata().index, "snapshot generated")
                }
                Err(e) => tracing::warn!(shard = id, "snapshot generation failed: {e}"),
            }
            slot.lock().finish(res.ok());
            let _ = tx.send(Msg::SnapshotGenerated { shard_id: id });
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start snapshot thread: {e}");
            self.generating -= 1;
            r.snap_slot.lock().finish(None);
        }
    }

    /// Writes a persisted snapshot's data, then marks the replica normal
    /// (synced) and deletes the file. Safe to repeat after a crash.
    fn finish_snapshot(&self, shard: &ShardDescriptor, path: &str, replica_id: u64) -> Result<()> {
        let path = PathBuf::from(path);
        snapshot::write_data(&self.engine, &path, &S::state_ranges(shard))?;
        let mut wb = WriteBatch::default();
        let st = ReplicaState { shard: Some(shard.clone()), replica_id, ..Default::default() };
        self.put_replica_state(&mut wb, &st);
        self.engine.write(wb, true)?;
        let _ = std::fs::remove_file(&path);
        if let Some((_, index)) = snapshot::SnapshotDir::shard_and_index(&path) {
            self.snap_dir.remove_received_upto(shard.id, index);
        }
        Ok(())
    }
}

impl<S: StateMachine> ReplicaFsm<S> {
    fn lost_leadership<T: Transport>(&mut self, _t: &T) {
        // Linearizable reads not yet confirmed can no longer be confirmed here.
        let lid = self.raw.raft.leader_id;
        let leader = self.shard.replicas.iter().find(|p| p.replica_id == lid && lid != 0).cloned();
        for (_, (waiters, _)) in self.reads.issued.iter_mut() {
            for w in std::mem::take(waiters) {
                if w.leader_only {
                    let _ = w.cb.send(Err(Error::NotLeader {
                        shard_id: self.shard.id,
                        leader,
                        leader_address: String::new(),
                    }));
                } else {
                    waiters.push(w);
                }
            }
        }
        self.reads.issued.retain(|_, (w, _)| !w.is_empty());
    }

    fn serve_reads(&mut self) {
        let applied = self.raw.store().applied_index();
        while self.reads.confirmed.front().is_some_and(|(idx, _)| *idx <= applied) {
            let (_, waiters) = self.reads.confirmed.pop_front().expect("checked non-empty");
            for w in waiters {
                let _ = w.cb.send(Ok(self.shard.clone()));
            }
        }
    }

    /// The waiter of the proposal at (index, term), if it is ours; proposals
    /// that lost their slot to another entry are told to retry.
    fn take_waiter(&mut self, index: u64, term: u64, notify: &mut Vec<Notify>) -> Option<Waiter<S::Response>> {
        while let Some(p) = self.proposals.front() {
            if p.index > index {
                return None;
            }
            let p = self.proposals.pop_front().expect("checked non-empty");
            if p.index == index && p.term == term {
                return Some(p.waiter);
            }
            // Another entry was committed at this index: ours is gone for good.
            let index = p.index;
            let e = move || Error::Retryable(format!("proposal at {index} superseded"));
            notify.push(match p.waiter {
                Waiter::Cmd(cb) => Box::new(move || {
                    let _ = cb.send(Err(e()));
                }),
                Waiter::Conf(cb) => Box::new(move || {
                    let _ = cb.send(Err(e()));
                }),
            });
        }
        None
    }
}

fn apply_entries<S: StateMachine>(
    engine: &Engine,
    r: &mut ReplicaFsm<S>,
    entries: Vec<Entry>,
    batch: &mut ApplyBatch,
    notify: &mut Vec<Notify>,
) -> Result<()> {
    let mut last = None;
    for e in entries {
        last = Some((e.index, e.term));
        match e.get_entry_type() {
            EntryType::EntryNormal => {
                let waiter = r.take_waiter(e.index, e.term, notify);
                if e.data.is_empty() {
                    continue; // a new leader's empty entry
                }
                let resp = match S::Command::decode(e.data.as_ref()) {
                    Ok(cmd) => {
                        let mut ctx = ApplyContext { shard: &r.shard, index: e.index, engine, batch };
                        r.sm.apply(&mut ctx, cmd)?
                    }
                    Err(err) => r.sm.undecodable(err.to_string()),
                };
                if let Some(Waiter::Cmd(cb)) = waiter {
                    notify.push(Box::new(move || {
                        let _ = cb.send(Ok(resp));
                    }));
                }
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                let waiter = r.take_waiter(e.index, e.term, notify);
                let (cs, ctx) = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
                    let cc = ConfChangeV2::parse_from_bytes(&e.data)
                        .map_err(|x| Error::Corrupt(format!("conf change: {x}")))?;
                    (r.raw.apply_conf_change(&cc)?, cc.context.to_vec())
                } else {
                    let cc = ConfChange::parse_from_bytes(&e.data)
                        .map_err(|x| Error::Corrupt(format!("conf change: {x}")))?;
                    (r.raw.apply_conf_change(&cc)?, cc.context.to_vec())
                };
                // `propose_conf_change` puts its context on the entry.
                let ctx = if e.context.is_empty() { ctx } else { e.context.to_vec() };
                let listed = if ctx.is_empty() {
                    r.shard.replicas.clone()
                } else {
                    ConfChangeContext::decode(ctx.as_slice())
                        .map_err(|x| Error::Corrupt(format!("conf change context: {x}")))?
                        .replicas
                };
                let mut replicas: Vec<Replica> = listed
                    .into_iter()
                    .filter_map(|mut p| {
                        p.role = role_of(p.replica_id, &cs)? as i32;
                        Some(p)
                    })
                    .collect();
                replicas.sort_by_key(|p| p.replica_id);
                replicas.dedup_by_key(|p| p.replica_id);
                r.shard.replicas = replicas;
                r.shard.epoch.get_or_insert_with(Default::default).conf_ver += 1;
                let joint = !cs.voters_outgoing.is_empty();
                if role_of(r.replica_id, &cs).is_none() {
                    r.removed = true;
                }
                r.raw.mut_store().set_conf_state(cs);
                let st = ReplicaState { shard: Some(r.shard.clone()), replica_id: r.replica_id, ..Default::default() };
                engine.put_cf(&mut batch.wb, Cf::Meta, &keys::meta_replica_state_key(r.shard.id), &st.encode_to_vec());
                if let Some(Waiter::Conf(cb)) = waiter {
                    r.joint_waiters.push(cb);
                }
                if !joint {
                    for cb in r.joint_waiters.drain(..) {
                        let shard = r.shard.clone();
                        notify.push(Box::new(move || {
                            let _ = cb.send(Ok(shard));
                        }));
                    }
                }
            }
        }
    }
    if let Some((index, term)) = last {
        r.raw.mut_store().set_applied(&mut batch.wb, index, term);
    }
    Ok(())
}

/// Truncates the log in the same (apply) batch as the applied index, so a
/// lost apply batch loses its truncation too and replay finds every entry.
fn maybe_compact<S: StateMachine>(r: &mut ReplicaFsm<S>, wb: &mut WriteBatch, cfg: &LoopConfig) {
    let store = r.raw.store();
    let (applied, truncated) = (store.applied_index(), store.truncated_index());
    let to = if store.log_bytes() > cfg.compact_log_bytes {
        applied
    } else if applied.saturating_sub(truncated) > cfg.compact_log_entries {
        applied - cfg.compact_log_entries / 2
    } else {
        return;
    };
    if let Err(e) = r.raw.mut_store().compact(wb, to) {
        tracing::warn!(shard = r.shard.id, "log compaction: {e}");
    }
}

fn shard_id_of(st: &ReplicaState) -> u64 {
    st.shard.as_ref().map_or(0, |s| s.id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::ShardStateMachine;
    use ringkv_proto::kv::PutRequest;
    use ringkv_proto::storage::{shard_command::Op, ShardCommand};

    struct NoNetwork;

    impl Transport for NoNetwork {
        fn send(&self, _: u64, _: Vec<RaftMessage>) -> bool {
            true
        }
        fn send_snapshot(&self, _: u64, _: u64, _: RaftMessage, _: PathBuf) {}
        fn address(&self, _: u64) -> Option<String> {
            None
        }
    }

    fn single_voter_shard(id: u64) -> ShardDescriptor {
        let width = u64::MAX / 16;
        ShardDescriptor {
            id,
            start: (id - 1) * width,
            end: id * width,
            epoch: Some(Epoch { version: 1, conf_ver: 1 }),
            replicas: vec![Replica { replica_id: id * 10, node_id: 1, role: ReplicaRole::Voter as i32 }],
        }
    }

    /// Eight replicas each with a proposal in the same pass: their entries
    /// and hard states go to disk in one synced WriteBatch.
    #[test]
    fn one_fsync_per_pass_for_all_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let metrics = Arc::new(Metrics::new(1));
        let cfg = LoopConfig::new(1, dir.path().join("snap"));
        let (mut lp, _h) = RaftLoop::new(cfg, engine, NoNetwork, metrics.clone(), ShardStateMachine::default).unwrap();
        const N: u64 = 8;
        for id in 1..=N {
            let (tx, mut rx) = oneshot::channel();
            lp.handle(Msg::CreateReplica {
                shard: single_voter_shard(id),
                replica_id: id * 10,
                bootstrap: true,
                campaign: false,
                cb: tx,
            });
            rx.try_recv().unwrap().unwrap();
        }
        // Single voters elect themselves once their election timeout passes.
        for _ in 0..40 {
            lp.tick();
            lp.poll();
        }
        assert!(lp.replicas.values().all(|r| r.is_leader), "every replica leads");
        while !lp.dirty.is_empty() {
            lp.poll();
        }
        let fsyncs = metrics.raft_fsyncs.get();
        let hist_before = metrics.raft_readies_per_fsync.get_sample_sum();
        let mut answers = Vec::new();
        for id in 1..=N {
            let shard = single_voter_shard(id);
            // A key that hashes into this shard.
            let key = (0u32..)
                .map(|i| format!("k{i}").into_bytes())
                .find(|k| keys::in_range(keys::key_hash(k), shard.start, shard.end))
                .unwrap();
            let cmd = ShardCommand {
                request_id: vec![],
                epoch_version: 1,
                op: Some(Op::Put(PutRequest { context: None, key, value: b"v".to_vec() })),
            };
            let (tx, rx) = oneshot::channel();
            lp.handle(Msg::Propose { shard_id: id, epoch_version: Some(1), cmd, cb: tx });
            answers.push(rx);
        }
        lp.poll();
        assert_eq!(metrics.raft_fsyncs.get(), fsyncs + 1, "one fsync for {N} replicas");
        assert_eq!(metrics.raft_readies_per_fsync.get_sample_sum() - hist_before, N as f64);
        // Single voters commit on their own persist: every proposal is answered.
        for mut rx in answers {
            let r = rx.try_recv().expect("answered in the same pass").expect("applied");
            assert!(crate::shard::into_result(r).is_ok());
        }
    }
}
