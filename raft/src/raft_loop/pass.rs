//! One pass of the loop over the replicas with work: persist, send, apply.
//! The order is what makes it safe; see the module doc of `raft_loop`.

use std::collections::HashMap;
use std::time::Instant;

use prost::Message as _;
use raft::prelude::{Message as RaftMsg, MessageType};
use raft::StateRole;
use ringkv_proto::engine::{RaftMessage, ReplicaLifecycle, ReplicaState};
use rocksdb::WriteBatch;

use super::api::Transport;
use super::apply::{apply_entries, maybe_compact, Answer};
use super::replica::{Lifecycle, Replica};
use super::split::SplitChild;
use super::RaftLoop;
use crate::engine::{concat_batches, Cf};
use crate::keys;
use crate::snapshot;
use crate::state_machine::{ApplyBatch, Group, StateMachine};
use crate::storage::encode;

/// Messages of one pass, by destination node: (message, receiving replica).
type Outbox = HashMap<u64, Vec<(RaftMessage, u64)>>;

impl<S: StateMachine, T: Transport> RaftLoop<S, T> {
    /// One pass over the replicas with work: persist (one fsync), send,
    /// apply, answer.
    pub fn run_pass(&mut self) {
        // A replica with reads queued is dirty (queuing a read marks it), so
        // only dirty replicas are asked: a pass costs what is busy, not what
        // the node hosts.
        for id in &self.dirty {
            if let Some(r) = self.replicas.get_mut(id) {
                r.reads.issue(&mut r.raw, self.ticks);
            }
        }
        if self.dirty.is_empty() {
            return;
        }
        self.metrics.raft_loop_passes.inc();
        let pass_start = std::time::Instant::now();
        let dirty = std::mem::take(&mut self.dirty);
        let node_id = self.cfg.node_id;
        let mut wb = WriteBatch::default();
        let mut readies = Vec::new();
        let mut out = Outbox::new();
        let mut installs = Vec::new();
        let mut failures = Vec::new();
        // Whether any Ready holds what must be on disk before its messages
        // go out (entries, a snapshot, a new term or vote). A Ready whose
        // hard state changed only its commit index does not (raft-rs's
        // `must_sync`, etcd's `MustSync`): a lost commit index is learnt
        // again from the leader, and RocksDB's WAL keeps writes in order, so
        // the commit never survives a crash without the entries it covers.
        let mut must_sync = false;

        // Collect every Ready into one batch.
        for id in &dirty {
            let Some(r) = self.replicas.get(id) else { continue };
            // A replica installing a snapshot is left alone until it is done.
            if r.lifecycle != Lifecycle::Normal || !r.raw.has_ready() {
                continue;
            }
            let not_leader = self.not_leader_fn(r);
            let Some(r) = self.replicas.get_mut(id) else { continue };
            let mut rd = r.raw.ready();
            if let Some(ss) = rd.ss() {
                if ss.leader_id != r.leader_seen {
                    r.leader_seen = ss.leader_id;
                    self.metrics.leader_changes.inc();
                }
                let leads = ss.raft_state == StateRole::Leader;
                if r.is_leader && !leads {
                    r.lost_leadership(not_leader);
                }
                r.is_leader = leads;
            }
            r.reads.confirm(rd.take_read_states());
            route(&self.transport, &self.snap_dir, node_id, r, rd.take_messages(), &mut out);
            if !rd.snapshot().is_empty() {
                let snap = rd.snapshot();
                let md = snap.get_metadata();
                let checked = snapshot::snapshot_data(snap)
                    .and_then(|d| snapshot::snapshot_group::<S::Group>(&d, *id).map(|g| (d, g)));
                let (data, group) = match checked {
                    Ok(x) => x,
                    Err(e) => {
                        // Checked before stepping; raft-rs accepted it, so the
                        // replica cannot go on without it.
                        failures.push((*id, format!("accepted snapshot is unusable: {e}")));
                        continue;
                    }
                };
                let path = self.snap_dir.received(*id, md.term, md.index);
                r.raw.mut_store().apply_snapshot_meta(&mut wb, snap);
                // The replica may hold more than the snapshot covers (it
                // predates a split that narrowed the group): what the new
                // ranges leave out belongs to no replica here (a replica of
                // the split's new group could not have been created over it),
                // so it goes in the same batch.
                let new_ranges = group.state_ranges();
                for old in r.group.state_ranges().into_iter().filter(|o| !new_ranges.contains(o)) {
                    self.engine.delete_range_cf(&mut wb, old.cf, &old.lo, &old.hi);
                }
                r.group = group;
                let st = ReplicaState {
                    group: r.group.encode(),
                    replica_id: r.replica_id,
                    lifecycle: ReplicaLifecycle::ApplyingSnapshot as i32,
                    snapshot_path: path.to_string_lossy().into_owned(),
                    snapshot_size: data.file_size,
                    snapshot_checksum: data.file_checksum,
                };
                self.engine.put_cf(&mut wb, Cf::Meta, &keys::replica_state_key(*id), &st.encode_to_vec());
                installs.push((*id, md.index, st));
            }
            r.raw.mut_store().append(&mut wb, rd.entries());
            if let Some(hs) = rd.hs() {
                r.raw.mut_store().set_hard_state(&mut wb, hs);
            }
            must_sync |= rd.must_sync();
            readies.push((*id, rd));
        }
        // What raft-rs lets leave before persistence (a leader's appends and
        // heartbeats) goes now, so the followers' fsyncs overlap the
        // leader's own (Raft thesis §10.2.1): a leader counts itself in the
        // quorum only once its entries are persisted (`advance_append`
        // below), so committing still needs a majority of synced logs.
        self.flush(std::mem::take(&mut out));
        // Raft state with nothing to sync (commit indexes only) rides in
        // this pass's apply write instead of a write of its own: neither is
        // synced, and the WAL keeps them in order either way.
        let unsynced = if must_sync {
            // A failed write of Raft state leaves Raft's promises unknowable:
            // stop the process rather than answer anything (as etcd and TiKV do).
            let append_start = std::time::Instant::now();
            if let Err(e) = self.engine.write(wb, true) {
                panic!("persisting Raft state: {e}");
            }
            self.metrics.engine_writes.inc();
            self.metrics.append_duration.observe(append_start.elapsed().as_secs_f64());
            self.metrics.raft_fsyncs.inc();
            self.metrics.raft_readies_per_fsync.observe(readies.len() as f64);
            WriteBatch::default()
        } else {
            wb
        };
        // Entries this pass applies count as committed from here: their
        // commit is durable and known. One instant for all of them.
        let committed_at = Instant::now();
        for (id, index, st) in installs {
            self.start_install(id, index, st);
        }

        // Acknowledge what this pass persisted before applying anything: a
        // follower's append responses (and votes) leave now, so the leader's
        // commit waits for the followers' fsyncs, not for their applies. A
        // leader's `advance_append` counts itself in the quorum and may
        // advance the commit; the appends that carry it leave now too.
        let mut advanced: HashMap<u64, (Vec<raft::prelude::Entry>, ApplyBatch)> = HashMap::new();
        for (id, mut rd) in readies {
            let Some(r) = self.replicas.get_mut(&id) else { continue };
            let mut batch = ApplyBatch::default();
            route(&self.transport, &self.snap_dir, node_id, r, rd.take_persisted_messages(), &mut out);
            let mut committed = rd.take_committed_entries();
            let mut light = r.raw.advance_append(rd);
            if let Some(c) = light.commit_index() {
                r.raw.mut_store().set_commit(&mut batch.wb, c);
            }
            route(&self.transport, &self.snap_dir, node_id, r, light.take_messages(), &mut out);
            committed.extend(light.take_committed_entries());
            advanced.insert(id, (committed, batch));
        }
        self.flush(out);

        // Apply, each replica into a batch of its own.
        let mut batches = Vec::new();
        let mut answers: Vec<Answer<S>> = Vec::new();
        let mut applied = Vec::new();
        let mut children = Vec::new();
        let mut replicas_applying = 0;
        for id in &dirty {
            let Some(r) = self.replicas.get_mut(id) else { continue };
            let (mut committed, mut batch) = advanced.remove(id).unwrap_or_default();
            if r.lifecycle != Lifecycle::Normal {
                r.deferred.append(&mut committed);
                if !batch.is_empty() {
                    batches.push(batch.take());
                }
                continue;
            }
            if !r.deferred.is_empty() {
                committed = std::mem::take(&mut r.deferred).into_iter().chain(committed).collect();
            }
            if committed.is_empty() {
                if !batch.is_empty() {
                    batches.push(batch.take());
                }
                applied.push(*id);
                continue;
            }
            let n = committed.len() as u64;
            let mut mine = Vec::new();
            let children_before = children.len();
            match self.apply_committed(*id, committed, &mut batch, &mut mine, &mut children) {
                Ok(()) => {
                    self.metrics.raft_entries_applied.inc_by(n);
                    if let Some(r) = self.replicas.get_mut(id) {
                        maybe_compact(r, &mut batch.wb, &self.cfg.raft);
                    }
                    self.metrics.count_apply_bytes(batch.take_put_bytes());
                    replicas_applying += 1;
                    batches.push(batch.take());
                    answers.append(&mut mine);
                    applied.push(*id);
                }
                Err(e) => {
                    // Nothing of this replica's pass is written (nor any
                    // replica its splits would have created).
                    children.truncate(children_before);
                    mine.into_iter().for_each(Answer::abandon);
                    failures.push((*id, format!("apply: {e}")));
                }
            }
        }
        let applies = !batches.is_empty();
        if !unsynced.is_empty() {
            batches.insert(0, unsynced);
        }
        if !batches.is_empty() {
            if let Err(e) = self.engine.write(concat_batches(batches), false) {
                panic!("writing applied entries: {e}");
            }
            self.metrics.engine_writes.inc();
            if applies {
                self.metrics.apply_writes.inc();
            }
        }
        let applied_at = Instant::now();
        let commit_apply = applied_at.saturating_duration_since(committed_at).as_secs_f64();
        for _ in 0..replicas_applying {
            self.metrics.commit_apply_duration.observe(commit_apply);
        }
        self.open_split_children(children);
        for a in answers {
            a.send(committed_at, applied_at, &self.metrics.propose_commit_duration);
        }
        for id in applied {
            let Some(r) = self.replicas.get_mut(&id) else { continue };
            r.raw.advance_apply();
            r.reads.serve(r.raw.store().applied_index(), &r.group, applied_at, &self.metrics.read_index_duration);
            if r.removed {
                self.destroy_replica(id);
            }
        }
        for (id, reason) in failures {
            self.fail_replica(id, reason);
        }
        for id in dirty {
            let Some(r) = self.replicas.get(&id) else { continue };
            if r.raw.has_ready() && r.lifecycle == Lifecycle::Normal {
                self.dirty.insert(id);
            }
            self.maybe_generate_snapshot(id);
        }
        self.metrics.pass_duration.observe(pass_start.elapsed().as_secs_f64());
    }

    /// Applies a replica's committed entries into `batch`, creating the
    /// replicas of the groups its splits make (opened by the caller once the
    /// batch is written).
    fn apply_committed(
        &mut self,
        id: u64,
        mut entries: Vec<raft::prelude::Entry>,
        batch: &mut ApplyBatch,
        answers: &mut Vec<Answer<S>>,
        children: &mut Vec<SplitChild>,
    ) -> crate::error::Result<()> {
        loop {
            let Some(r) = self.replicas.get_mut(&id) else { return Ok(()) };
            let Some(off) = apply_entries(&self.engine, r, entries, batch, answers)? else { return Ok(()) };
            let (parent, led) = (r.group.clone(), r.is_leader);
            tracing::info!(group = id, index = off.index, new_group = off.new.id(), "split applied");
            if let Some(child) = self.split_child(&parent, led, &off, batch)? {
                children.push(child);
            }
            entries = off.rest;
        }
    }

    /// Hands each node its batch of messages; a dropped batch makes the
    /// senders' leaders probe the receivers again.
    fn flush(&mut self, out: Outbox) {
        for (node, msgs) in out {
            let n = msgs.len();
            let dests: Vec<(u64, u64)> = msgs.iter().map(|(m, to)| (m.group_id, *to)).collect();
            let batch = msgs.into_iter().map(|(m, _)| m).collect();
            if self.transport.send(node, batch) {
                self.metrics.raft_messages_sent.inc_by(n as u64);
                self.metrics.raft_message_batches_sent.inc();
                self.metrics.raft_messages_per_batch.observe(n as f64);
            } else {
                self.metrics.raft_messages_dropped.inc_by(n as u64);
                for (group, to) in dests {
                    if let Some(r) = self.replicas.get_mut(&group) {
                        r.raw.report_unreachable(to);
                    }
                }
            }
        }
    }
}

/// Routes messages of replica `r` into per-node batches; snapshots go to
/// their own stream.
fn route<S: StateMachine, T: Transport>(
    transport: &T,
    snap_dir: &snapshot::SnapshotDir,
    node_id: u64,
    r: &Replica<S>,
    msgs: Vec<RaftMsg>,
    out: &mut Outbox,
) {
    for m in msgs {
        let Some(to_node) = r.node_of(m.to) else {
            tracing::debug!(group = r.id(), to = m.to, "message to an unknown replica");
            continue;
        };
        let to_replica = m.to;
        let wire = RaftMessage { group_id: r.id(), from_node: node_id, to_node, message: encode(&m) };
        if m.get_msg_type() == MessageType::MsgSnapshot {
            let md = m.get_snapshot().get_metadata();
            let path = snap_dir.generated(r.id(), md.term, md.index);
            transport.send_snapshot(to_node, to_replica, wire, path);
        } else {
            out.entry(to_node).or_default().push((wire, to_replica));
        }
    }
}
