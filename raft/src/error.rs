//! The engine's error type. Errors the caller can act on (not the leader, a
//! stale membership, a full inbox, an outcome that is unknown) are typed so
//! that the process embedding the engine can map them onto its wire errors.
//! An `Err` from a state machine's apply is always taken as local to this
//! replica (which is fenced off); deterministic refusals are the state
//! machine's own responses.

use crate::Member;

/// Everything the engine can answer instead of a result.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica is not the group's leader; `leader` is its best guess.
    #[error("group {group_id}: not the leader (leader: {leader:?})")]
    NotLeader {
        /// The group asked.
        group_id: u64,
        /// The leader this replica knows of, if any.
        leader: Option<Member>,
        /// The leader's node address, when the transport knows it.
        leader_address: String,
    },
    /// The caller's view of the group is stale; `current` is the group's
    /// descriptor as its state machine encodes it.
    #[error("group {group_id}: stale epoch")]
    StaleEpoch {
        /// The group asked.
        group_id: u64,
        /// The current descriptor (state machine encoding).
        current: Vec<u8>,
    },
    /// No replica of this group on this node.
    #[error("group {0} not found on this node")]
    GroupNotFound(u64),
    /// The replica exists but is fenced off after a local failure.
    #[error("group {group_id}: replica failed: {reason}")]
    ReplicaFailed {
        /// The group asked.
        group_id: u64,
        /// Why the replica stopped.
        reason: String,
    },
    /// The request itself is wrong; retrying it cannot help.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Which part of the request.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A membership change Raft refuses (checked before proposing, or at apply).
    #[error("membership change refused: {0}")]
    ConfChangeRefused(String),
    /// The proposal may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// Certainly not applied; trying again (perhaps elsewhere) may work.
    #[error("not applied, retry: {0}")]
    Retryable(String),
    /// The node is overloaded (full inbox, too much uncommitted log).
    #[error("busy: {0}")]
    Busy(String),
    /// RocksDB failed.
    #[error("storage engine: {0}")]
    Engine(#[from] rocksdb::Error),
    /// raft-rs refused a step or proposal.
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    /// Stored or received data does not decode or check out.
    #[error("corrupt data: {0}")]
    Corrupt(String),
    /// A file operation failed.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// The loop has stopped.
    #[error("stopped")]
    Stopped,
}

/// The engine's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::InvalidArgument`].
    pub fn invalid(field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { field: field.to_string(), reason: reason.into() }
    }
}
