//! The loop's inbox: what callers may ask of it, how they wait for the
//! answer, and what the loop needs of the network.
//!
//! Requests from outside (peers' messages, client proposals and reads, admin
//! calls) go through a bounded queue: when it is full the caller gets
//! [`Error::Busy`] at once instead of queueing without limit. Reports of the
//! loop's own background work (snapshots sent, generated or installed, peers
//! unreachable) and shutdown use a second, unbounded queue, so they are never
//! lost to a flood of requests.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::{Sender, TrySendError};
use raft::prelude::Message as RaftMsg;
use ringkv_proto::engine::RaftMessage;
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::RaftMetrics;
use crate::state_machine::StateMachine;
use crate::Member;

/// How long past a request's deadline a caller should wait for the loop's
/// own answer before giving up on it: the loop checks deadlines on its tick,
/// so its "outcome unknown" comes up to a tick late.
pub const ANSWER_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Where the answer to a request goes.
pub type Callback<T> = oneshot::Sender<Result<T>>;

/// When the loop reached each step of a proposal or a read, for tracing a
/// request's hops. Taken a few times per pass (not per entry): every answer
/// of one pass shares the pass's `committed` and `done` instants.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timings {
    /// The loop took the request from its inbox (proposal accepted by
    /// raft-rs, or read queued). The caller's own send time minus this is
    /// the wait in the inbox.
    pub accepted: Instant,
    /// Proposal: the pass that first saw its entry committed (after that
    /// pass's synced write). Read: the pass that got its read index
    /// confirmed. `None` for reads that need no confirmation (local reads).
    pub committed: Option<Instant>,
    /// Proposal: its entry applied (the apply batch written). Read: safe to
    /// serve (applied up to the read index).
    pub done: Instant,
}

impl Timings {
    /// Accepted → committed (zero when there was no commit step).
    pub fn to_commit(&self) -> std::time::Duration {
        self.committed.map_or(std::time::Duration::ZERO, |c| c.saturating_duration_since(self.accepted))
    }

    /// Committed (or accepted, when there was no commit step) → done.
    pub fn to_done(&self) -> std::time::Duration {
        self.done.saturating_duration_since(self.committed.unwrap_or(self.accepted))
    }
}

/// An answer and when the loop reached each step of it.
#[derive(Clone, Debug, PartialEq)]
pub struct Timed<T> {
    /// The answer itself.
    pub value: T,
    /// The steps' instants.
    pub timings: Timings,
}

/// How a read is made safe.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// Linearizable on the leader: ReadIndex (one heartbeat round shared by
    /// the reads of a pass), then wait for apply to reach the index.
    Leader,
    /// Linearizable on any replica: ReadIndex forwarded to the leader.
    Follower,
    /// Whatever this replica has applied (may be stale).
    Local,
}

/// One membership change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberChangeKind {
    /// Add a voter, or promote a learner.
    AddVoter,
    /// Add a learner, or demote a voter.
    AddLearner,
    /// Remove a member.
    Remove,
}

/// A member to add, change or remove.
#[derive(Clone, Debug, PartialEq)]
pub struct MemberChange {
    /// What to do.
    pub kind: MemberChangeKind,
    /// To whom (for a removal only `replica_id` matters).
    pub member: Member,
}

/// How a replica on this node is doing.
#[derive(Clone, Debug, PartialEq)]
pub enum ReplicaCondition {
    /// Serving.
    Normal,
    /// Installing a snapshot on a worker thread: reads and applies wait.
    ApplyingSnapshot,
    /// Fenced off after a local failure (opening, applying or installing);
    /// the rest of the node keeps serving.
    Failed(String),
}

/// A replica's state as [`LoopRequest::Status`] reports it.
#[derive(Clone, Debug)]
pub struct ReplicaStatus<G> {
    /// The group as of the last applied entry (default for a failed replica
    /// whose descriptor could not be read).
    pub group: G,
    /// The group id.
    pub group_id: u64,
    /// This replica's id.
    pub replica_id: u64,
    /// Whether this replica leads.
    pub is_leader: bool,
    /// The leader this replica knows of (0: none).
    pub leader_replica_id: u64,
    /// Raft term.
    pub term: u64,
    /// Raft commit index.
    pub commit_index: u64,
    /// Applied index.
    pub applied_index: u64,
    /// First index still in the log.
    pub first_log_index: u64,
    /// Last index in the log.
    pub last_log_index: u64,
    /// Leader only: replica id -> matched index.
    pub progress: HashMap<u64, u64>,
    /// Serving, installing a snapshot, or failed.
    pub condition: ReplicaCondition,
}

/// What the loop is asked to do.
pub enum LoopRequest<S: StateMachine> {
    /// A Raft message from a peer node.
    Raft {
        /// The group it is for.
        group_id: u64,
        /// The node that sent it.
        from_node: u64,
        /// The raft-rs message.
        msg: Box<RaftMsg>,
    },
    /// Propose a command; answered once it is applied, certainly dropped
    /// (retryable), or, at `deadline` or when the leader steps down, with
    /// [`Error::Ambiguous`].
    Propose {
        /// The group.
        group_id: u64,
        /// The command.
        cmd: S::Command,
        /// When the caller stops waiting.
        deadline: Instant,
        /// The answer, with its [`Timings`].
        cb: Callback<Timed<S::Response>>,
    },
    /// Answered with the group once a read of it in this mode is safe.
    Read {
        /// The group.
        group_id: u64,
        /// How the read is made safe.
        mode: ReadMode,
        /// When the caller stops waiting (answered retryable then).
        deadline: Instant,
        /// The answer: the group as of the read, with its [`Timings`].
        cb: Callback<Timed<S::Group>>,
    },
    /// Change the group's members (one ConfChangeV2: joint consensus when
    /// more than one voter changes). Answered with the group once applied.
    ChangeMembers {
        /// The group.
        group_id: u64,
        /// `(version, conf_version)` the caller saw; refused as stale if the
        /// group moved on.
        expect: Option<(u64, u64)>,
        /// The changes.
        changes: Vec<MemberChange>,
        /// When the caller stops waiting.
        deadline: Instant,
        /// The answer.
        cb: Callback<S::Group>,
    },
    /// Hand leadership to another member.
    TransferLeader {
        /// The group.
        group_id: u64,
        /// The member to lead.
        to_replica_id: u64,
        /// The answer (the transfer itself happens asynchronously).
        cb: Callback<()>,
    },
    /// Create a replica on this node.
    CreateReplica {
        /// The group as the creator knows it.
        group: S::Group,
        /// This replica's id.
        replica_id: u64,
        /// One of the group's first voters: start from the initial state.
        /// Otherwise start empty and wait for a snapshot from the leader.
        bootstrap: bool,
        /// Campaign at once (placement spreads the first leaders this way).
        campaign: bool,
        /// The answer.
        cb: Callback<()>,
    },
    /// Delete this node's replica of a group (its data goes on a worker thread).
    RemoveReplica {
        /// The group.
        group_id: u64,
        /// The answer.
        cb: Callback<()>,
    },
    /// The status of some replicas (all if `group_ids` is empty).
    Status {
        /// Which groups.
        group_ids: Vec<u64>,
        /// The answer.
        cb: oneshot::Sender<Vec<ReplicaStatus<S::Group>>>,
    },
    /// A snapshot stream to replica `to` finished.
    SnapshotSent {
        /// The group.
        group_id: u64,
        /// The receiving replica.
        to: u64,
        /// Whether the receiver accepted the file.
        ok: bool,
    },
    /// A snapshot file finished generating (or failed).
    SnapshotGenerated {
        /// The group.
        group_id: u64,
    },
    /// A snapshot's data finished installing on a worker thread.
    SnapshotInstalled {
        /// The group.
        group_id: u64,
        /// The snapshot's index.
        index: u64,
        /// Whether it worked.
        result: Result<()>,
    },
    /// A removed replica's data is gone.
    ReplicaDestroyed {
        /// The group.
        group_id: u64,
        /// Whether the deletion was written.
        result: Result<()>,
    },
    /// The stream to a node broke: its replicas' leaders should probe again.
    Unreachable {
        /// The node.
        node_id: u64,
    },
    /// A planned stop begins: from now on no replica here campaigns or
    /// accepts a leadership transfer, so that leaderships handed away do
    /// not come back (a balancer, an election) just before the node stops.
    /// Leaders keep leading until they hand over.
    Drain,
    /// Stop the loop (pending callers are answered).
    Shutdown,
}

/// Where the loop's outgoing messages go (the gRPC transport, or a test double).
pub trait Transport: Send + 'static {
    /// Queues messages for a node without blocking; false if they were dropped.
    fn send(&self, node_id: u64, msgs: Vec<RaftMessage>) -> bool;
    /// Streams the snapshot file at `path`, then `msg`; reports back with
    /// [`LoopRequest::SnapshotSent`].
    fn send_snapshot(&self, node_id: u64, to_replica: u64, msg: RaftMessage, path: PathBuf);
    /// The address of a node, for leader hints.
    fn address(&self, node_id: u64) -> Option<String>;
}

/// The sending side of the loop's two queues.
pub struct LoopHandle<S: StateMachine> {
    pub(super) requests: Sender<LoopRequest<S>>,
    pub(super) internal: Sender<LoopRequest<S>>,
    /// Counts requests refused because the inbox is full.
    pub(super) metrics: Arc<RaftMetrics>,
}

impl<S: StateMachine> Clone for LoopHandle<S> {
    fn clone(&self) -> Self {
        LoopHandle { requests: self.requests.clone(), internal: self.internal.clone(), metrics: self.metrics.clone() }
    }
}

impl<S: StateMachine> LoopHandle<S> {
    /// Queues a request; [`Error::Busy`] if the inbox is full, [`Error::Stopped`]
    /// if the loop is gone.
    pub fn try_send(&self, r: LoopRequest<S>) -> Result<()> {
        self.requests.try_send(r).map_err(|e| match e {
            TrySendError::Full(_) => {
                self.metrics.raft_inbox_full.inc();
                Error::Busy("raft loop inbox full".into())
            }
            TrySendError::Disconnected(_) => Error::Stopped,
        })
    }

    /// Queues a report or a shutdown on the unbounded queue.
    pub fn send_internal(&self, r: LoopRequest<S>) -> Result<()> {
        self.internal.send(r).map_err(|_| Error::Stopped)
    }

    /// Asks the loop to stop.
    pub fn shutdown(&self) {
        let _ = self.send_internal(LoopRequest::Shutdown);
    }

    /// Sends a request built around a fresh callback and waits for the
    /// answer. A dropped callback (the loop stopped) is reported as `Stopped`.
    pub async fn call<T>(&self, build: impl FnOnce(Callback<T>) -> LoopRequest<S>) -> Result<T> {
        let (tx, rx) = oneshot::channel();
        self.try_send(build(tx))?;
        rx.await.map_err(|_| Error::Stopped)?
    }

    /// The status of the given groups' replicas (all if empty).
    pub async fn status(&self, group_ids: Vec<u64>) -> Result<Vec<ReplicaStatus<S::Group>>> {
        let (tx, rx) = oneshot::channel();
        self.try_send(LoopRequest::Status { group_ids, cb: tx })?;
        rx.await.map_err(|_| Error::Stopped)
    }
}
