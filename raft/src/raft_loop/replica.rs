//! One replica of one group on this node: raft-rs's `RawNode` over the
//! replica's storage, its state machine, and everyone waiting on it.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use raft::{RawNode, StateRole};

use super::api::{Callback, Timed};
use super::read_index::Reads;
use crate::error::Error;
use crate::snapshot::SnapshotSlot;
use crate::state_machine::{Group, StateMachine};
use crate::storage::RaftStorage;
use crate::Member;

/// A proposal waiting for its entry to apply.
pub(super) struct Proposal<S: StateMachine> {
    pub index: u64,
    pub term: u64,
    /// Taken when the caller is answered early (deadline, step-down).
    pub waiter: Option<Waiter<S>>,
    pub deadline: Instant,
    /// When the loop took the proposal from its inbox.
    pub accepted: Instant,
}

/// Who waits for a proposal.
pub(super) enum Waiter<S: StateMachine> {
    /// A command: answered with the state machine's response and when each
    /// step of it happened.
    Cmd(Callback<Timed<S::Response>>),
    /// A membership change: answered with the group once the change is
    /// complete (joint state left).
    Conf(Callback<S::Group>),
}

impl<S: StateMachine> Waiter<S> {
    /// Answers with an error.
    pub fn fail(self, e: Error) {
        match self {
            Waiter::Cmd(cb) => {
                let _ = cb.send(Err(e));
            }
            Waiter::Conf(cb) => {
                let _ = cb.send(Err(e));
            }
        }
    }
}

/// Where a replica is in its life on this node. A replica that is applying
/// a snapshot has its Readies left alone (TiKV does the same): nothing is
/// applied and no read is served until the worker has written the data.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Lifecycle {
    Normal,
    /// The snapshot at `index` is being installed by a worker thread.
    ApplyingSnapshot {
        index: u64,
    },
}

/// One replica hosted by the loop.
pub(super) struct Replica<S: StateMachine> {
    pub group: S::Group,
    pub replica_id: u64,
    pub raw: RawNode<RaftStorage>,
    pub sm: S,
    pub proposals: VecDeque<Proposal<S>>,
    /// Membership changes applied in joint state: answered when it is left.
    pub joint_waiters: Vec<Callback<S::Group>>,
    pub reads: Reads<S::Group>,
    pub is_leader: bool,
    /// The leader (replica id, 0 for none) this replica last saw, to count
    /// leader changes.
    pub leader_seen: u64,
    /// Removed from the group by an applied membership change.
    pub removed: bool,
    pub lifecycle: Lifecycle,
    /// Entries committed while a snapshot was installing: applied once it is.
    pub deferred: Vec<raft::prelude::Entry>,
    pub snap_slot: Arc<Mutex<SnapshotSlot>>,
    /// Replica id -> node id learnt from incoming messages: a new replica
    /// does not know its group's members until its first snapshot, yet must
    /// answer the leader.
    pub peer_nodes: HashMap<u64, u64>,
}

impl<S: StateMachine> Replica<S> {
    /// The group id.
    pub fn id(&self) -> u64 {
        self.group.id()
    }

    /// The member that leads, as far as this replica knows.
    pub fn leader(&self) -> Option<Member> {
        let lid = self.raw.raft.leader_id;
        self.group.members().into_iter().find(|m| m.replica_id == lid && lid != 0)
    }

    /// The node hosting a member (from the descriptor, or learnt from traffic).
    pub fn node_of(&self, replica_id: u64) -> Option<u64> {
        let listed = self.group.members().into_iter().find(|m| m.replica_id == replica_id).map(|m| m.node_id);
        listed.or_else(|| self.peer_nodes.get(&replica_id).copied())
    }

    /// Whether raft-rs sees this replica as the leader.
    pub fn leads(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// Leadership was lost. Proposals not yet applied may still commit under
    /// the new leader: their callers learn at once that the outcome is
    /// unknown (they may retry through the new leader within their deadline,
    /// with the same request id). Reads only a leader could confirm are
    /// retryable.
    pub fn lost_leadership(&mut self, not_leader: impl Fn() -> Error) {
        for p in self.proposals.drain(..) {
            if let Some(w) = p.waiter {
                w.fail(Error::Ambiguous("leader stepped down before the entry applied".into()));
            }
        }
        self.reads.fail_leader_only(not_leader);
    }

    /// Answers the callers whose deadline passed: proposals as ambiguous (the
    /// entry is in the log and may still commit).
    pub fn expire_proposals(&mut self, now: Instant) {
        for p in self.proposals.iter_mut().filter(|p| p.deadline <= now) {
            if let Some(w) = p.waiter.take() {
                w.fail(Error::Ambiguous("deadline passed before the entry applied".into()));
            }
        }
    }

    /// Answers everyone waiting on this replica with `err()` (the replica is
    /// going away: removed, failed, or the loop is stopping). Proposals are
    /// ambiguous whatever `err()` says: their entries may commit elsewhere.
    pub fn fail_everyone(&mut self, err: impl Fn() -> Error) {
        for p in self.proposals.drain(..) {
            if let Some(w) = p.waiter {
                w.fail(Error::Ambiguous(format!("replica stopped before the entry applied: {}", err())));
            }
        }
        for cb in self.joint_waiters.drain(..) {
            let _ = cb.send(Err(err()));
        }
        self.reads.fail_all(err);
    }
}
