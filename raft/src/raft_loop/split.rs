//! Splits: a state machine splits its group while applying an entry
//! ([`crate::ApplyContext::split`]); the pass then creates this node's
//! replica of the new group in the same batch, its Raft state starting at
//! the split entry, and opens it once the batch is written. No data moves:
//! the new group's state ranges already hold its data.
//!
//! The races (those TiKV's raftstore learned):
//! - A node that applies the split late finds the new group led elsewhere
//!   already; until it applies, the new leader's messages to it are kept
//!   briefly (see [`Stash`]) and replayed when the replica exists, or
//!   dropped. A message never creates a replica.
//! - The node's replica of the new group may exist before the split applies
//!   here (it came by snapshot, created on placement's request once this
//!   node's parent replica had moved past the split by a snapshot of its
//!   own), or have been removed here since (a tombstone): the split then
//!   leaves it alone.
//! - A split proposed on a stale epoch, or while a membership change is half
//!   done, is refused by the state machine, identically on every replica.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::prelude::{ConfState, Message as RaftMsg};
use ringkv_proto::engine::{MemberRole, ReplicaState};

use super::api::Transport;
use super::apply::SplitOff;
use super::RaftLoop;
use crate::engine::Cf;
use crate::error::Result;
use crate::keys;
use crate::state_machine::{ApplyBatch, Group, StateMachine};
use crate::storage::RaftStorage;

/// How long a message for a group with no replica here is kept, in case a
/// split is about to create it.
const STASH_TTL: Duration = Duration::from_secs(2);
/// At most this many such messages are kept per node; past it, what has
/// expired is dropped, then new messages are.
const STASH_CAPACITY: usize = 1024;

/// Messages for groups with no replica on this node, kept for [`STASH_TTL`]:
/// after a split, the new group's leader (on the node that applied first)
/// campaigns at once; without this its votes and appends to the nodes that
/// apply a moment later would be lost and the group would wait out an
/// election timeout.
#[derive(Default)]
pub(super) struct Stash {
    msgs: HashMap<u64, Vec<(Instant, u64, RaftMsg)>>,
    len: usize,
}

impl Stash {
    /// Keeps a message for `group_id`; false if it was dropped instead.
    pub fn keep(&mut self, group_id: u64, from_node: u64, msg: RaftMsg, now: Instant) -> bool {
        if self.len >= STASH_CAPACITY {
            self.expire(now);
            if self.len >= STASH_CAPACITY {
                return false;
            }
        }
        self.msgs.entry(group_id).or_default().push((now, from_node, msg));
        self.len += 1;
        true
    }

    /// The messages kept for `group_id` that are still fresh.
    pub fn take(&mut self, group_id: u64, now: Instant) -> Vec<(u64, RaftMsg)> {
        let msgs = self.msgs.remove(&group_id).unwrap_or_default();
        self.len -= msgs.len();
        msgs.into_iter().filter(|(at, _, _)| now.duration_since(*at) < STASH_TTL).map(|(_, f, m)| (f, m)).collect()
    }

    /// Drops what is older than [`STASH_TTL`].
    pub fn expire(&mut self, now: Instant) {
        if self.len == 0 {
            return;
        }
        self.msgs.retain(|_, v| {
            v.retain(|(at, _, _)| now.duration_since(*at) < STASH_TTL);
            !v.is_empty()
        });
        self.len = self.msgs.values().map(Vec::len).sum();
    }
}

/// A replica of a new group, written by a split in this pass: opened once
/// the pass's batch is on disk.
pub(super) struct SplitChild {
    pub state: ReplicaState,
    /// The parent's replica led: the new group's replica here campaigns at
    /// once, so the new group has a leader without an election timeout.
    pub campaign: bool,
}

impl<S: StateMachine, T: Transport> RaftLoop<S, T> {
    /// Writes this node's replica of the group a split created into `batch`
    /// (initial Raft state, descriptor, and what the state machine carries
    /// over from `parent`), unless the node has or had one; `None` then.
    pub(super) fn split_child(
        &self,
        parent: &S::Group,
        parent_led: bool,
        off: &SplitOff<S::Group>,
        batch: &mut ApplyBatch,
    ) -> Result<Option<SplitChild>> {
        let new = &off.new;
        let id = new.id();
        let Some(me) = new.members().into_iter().find(|m| m.node_id == self.cfg.node_id) else {
            tracing::info!(group = parent.id(), new_group = id, "split: this node has no replica of the new group");
            return Ok(None);
        };
        if let Some(why) = self.creation_refused(id, me.replica_id) {
            tracing::info!(group = parent.id(), new_group = id, "split: the new group's replica is not created: {why}");
            return Ok(None);
        }
        let role = |r: MemberRole| new.members().iter().filter(|m| m.role == r as i32).map(|m| m.replica_id).collect();
        let cs =
            ConfState { voters: role(MemberRole::Voter), learners: role(MemberRole::Learner), ..Default::default() };
        RaftStorage::init_at(&self.engine, &mut batch.wb, id, cs, off.index, off.term);
        let state = ReplicaState { group: new.encode(), replica_id: me.replica_id, ..Default::default() };
        self.engine.put_cf(&mut batch.wb, Cf::Meta, &keys::replica_state_key(id), &state.encode_to_vec());
        let mut ctx = batch.context(&self.engine, new, off.index);
        S::split_child(&mut ctx, parent)?;
        Ok(Some(SplitChild { state, campaign: parent_led }))
    }

    /// Opens the replicas splits created (their state is written), replays
    /// what their peers sent before they existed, and campaigns where the
    /// parent led.
    pub(super) fn open_split_children(&mut self, children: Vec<SplitChild>) {
        let now = Instant::now();
        for child in children {
            let group = S::Group::decode(&child.state.group).unwrap_or_default();
            let (id, replica_id) = (group.id(), child.state.replica_id);
            if let Err(e) = self.open_replica(child.state) {
                self.failed_to_open(id, group, replica_id, e);
                continue;
            }
            tracing::info!(group = id, "replica created by a split");
            self.metrics.splits.inc();
            for (from, msg) in self.stash.take(id, now) {
                self.step(id, from, msg);
            }
            if child.campaign {
                if let Some(r) = self.replicas.get_mut(&id) {
                    if let Err(e) = r.raw.campaign() {
                        tracing::warn!(group = id, "campaign after a split: {e}");
                    }
                }
            }
            self.dirty.insert(id);
        }
    }
}
