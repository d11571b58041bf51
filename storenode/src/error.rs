//! The storenode's error type, and its mapping to a gRPC status that carries
//! the typed `ShardError` in its details (never a string to parse). The wire
//! form itself, and reading it back from a status, is
//! [`ringkv_common::wire_error::WireError`]'s.

use ringkv_common::wire_error::WireError;
use ringkv_proto::error as pb;
use ringkv_proto::meta::{Replica, ShardDescriptor};
use tonic::{Code, Status};

/// Everything a storenode request or shard operation can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// This replica is not the shard's leader; `leader` is its best guess.
    #[error("shard {shard_id}: not the leader (leader: {leader:?})")]
    NotLeader {
        /// The shard asked.
        shard_id: u64,
        /// The leader this replica knows of, if any.
        leader: Option<Replica>,
        /// The leader's node address, when known (empty otherwise).
        leader_address: String,
    },
    /// The caller's view of the shard is stale; carries the shard's current descriptor.
    #[error("shard {}: epoch mismatch, current {:?}", .0.id, .0.epoch)]
    EpochMismatch(Box<ShardDescriptor>),
    /// No replica of this shard on this node.
    #[error("shard {0} not found on this node")]
    ShardNotFound(u64),
    /// The key lies outside the shard's key range.
    #[error("key not in shard {}", .shard.id)]
    KeyNotInShard {
        /// The key asked for.
        key: Vec<u8>,
        /// The shard's current descriptor.
        shard: Box<ShardDescriptor>,
    },
    /// The request itself is wrong; retrying it cannot help.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// Which part of the request.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// Certainly not applied; trying again (perhaps on another replica) may work.
    #[error("not applied, retry: {0}")]
    Retryable(String),
    /// The node is overloaded and shed the request; nothing was applied.
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
    /// The storenode (its Raft engine) has stopped.
    #[error("stopped")]
    Stopped,
}

/// The storenode's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl From<ringkv_raft::Error> for Error {
    /// The engine's answer in the storenode's terms (a group is a shard).
    fn from(e: ringkv_raft::Error) -> Error {
        use ringkv_raft::Error as E;
        match e {
            E::NotLeader { group_id, leader, leader_address } => Error::NotLeader {
                shard_id: group_id,
                leader: leader.as_ref().map(crate::shard::to_replica),
                leader_address,
            },
            E::StaleEpoch { group_id, current } => {
                match <crate::shard::Shard as ringkv_raft::Group>::decode(&current) {
                    Ok(s) => Error::EpochMismatch(Box::new(s.0)),
                    Err(e) => Error::Corrupt(format!("shard {group_id}: current descriptor: {e}")),
                }
            }
            E::GroupNotFound(id) => Error::ShardNotFound(id),
            // Another replica of the shard can serve: the router tries it.
            E::ReplicaFailed { group_id, reason } => {
                Error::Retryable(format!("this node's replica of shard {group_id} is fenced off: {reason}"))
            }
            E::InvalidArgument { field, reason } => Error::InvalidArgument { field, reason },
            E::ConfChangeRefused(reason) => Error::InvalidArgument { field: "changes".into(), reason },
            E::Ambiguous(r) => Error::Ambiguous(r),
            E::Retryable(r) => Error::Retryable(r),
            E::Busy(r) => Error::Busy(r),
            E::Engine(e) => Error::Engine(e),
            E::Raft(e) => Error::Raft(e),
            E::Corrupt(r) => Error::Corrupt(r),
            E::Io(e) => Error::Io(e),
            E::Stopped => Error::Stopped,
        }
    }
}

impl Error {
    /// An [`Error::InvalidArgument`] for `field`.
    pub fn invalid(field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { field: field.to_string(), reason: reason.into() }
    }

    /// What a client sees of this error, for errors it can act on; `None`
    /// for internal ones.
    pub fn to_wire(&self) -> Option<WireError> {
        Some(match self {
            Error::NotLeader { shard_id, leader, leader_address } => {
                WireError::NotLeader { shard_id: *shard_id, leader: *leader, leader_address: leader_address.clone() }
            }
            Error::EpochMismatch(d) => WireError::EpochMismatch(d.clone()),
            Error::ShardNotFound(id) => WireError::ShardNotFound(*id),
            Error::KeyNotInShard { key, shard } => WireError::KeyNotInShard { key: key.clone(), shard: shard.clone() },
            Error::InvalidArgument { field, reason } => {
                WireError::InvalidArgument { field: field.clone(), reason: reason.clone() }
            }
            Error::Ambiguous(r) => WireError::Ambiguous(r.clone()),
            Error::Retryable(r) => WireError::Retryable(r.clone()),
            Error::Stopped => WireError::Retryable(self.to_string()),
            Error::Busy(r) => WireError::Busy(r.clone()),
            _ => return None,
        })
    }

    /// The typed wire form, for errors a client can act on; `None` for internal ones.
    pub fn to_proto(&self) -> Option<pb::ShardError> {
        self.to_wire().and_then(|w| w.to_proto())
    }

    /// Rebuilds the error from its wire form (the inverse of [`Error::to_proto`]).
    pub fn from_proto(e: pb::ShardError) -> Error {
        WireError::from_proto(e).into()
    }

    /// The gRPC status code this error is sent with (`Internal` for internal ones).
    pub fn code(&self) -> Code {
        self.to_wire().map_or(Code::Internal, |w| w.code())
    }
}

/// A storenode's answer as a storenode error; a failed call without a typed
/// answer becomes the closest kind by its status code.
impl From<WireError> for Error {
    fn from(w: WireError) -> Error {
        match w {
            WireError::NotLeader { shard_id, leader, leader_address } => {
                Error::NotLeader { shard_id, leader, leader_address }
            }
            WireError::EpochMismatch(d) => Error::EpochMismatch(d),
            WireError::ShardNotFound(id) => Error::ShardNotFound(id),
            WireError::KeyNotInShard { key, shard } => Error::KeyNotInShard { key, shard },
            WireError::InvalidArgument { field, reason } => Error::InvalidArgument { field, reason },
            WireError::Ambiguous(r) => Error::Ambiguous(r),
            WireError::Retryable(r) => Error::Retryable(r),
            WireError::Busy(r) => Error::Busy(r),
            WireError::Transport { code, message } => match code {
                Code::Unavailable | Code::Unknown | Code::Cancelled => Error::Retryable(message),
                Code::DeadlineExceeded => Error::Ambiguous(message),
                Code::InvalidArgument => Error::invalid("request", message),
                _ => Error::Corrupt(format!("{code}: {message}")),
            },
            WireError::Other(m) => Error::Corrupt(m),
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e.to_wire() {
            Some(w) => w.to_status(e.to_string()),
            None => Status::new(Code::Internal, e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_round_trip_through_status() {
        let e = Error::NotLeader {
            shard_id: 3,
            leader: Some(Replica { replica_id: 7, node_id: 2, role: 0 }),
            leader_address: "127.0.0.1:1".into(),
        };
        let s: Status = e.into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        match Error::from(WireError::from_status(&s)) {
            Error::NotLeader { shard_id: 3, leader: Some(l), .. } => {
                assert_eq!(l.replica_id, 7)
            }
            other => panic!("unexpected {other:?}"),
        }
        let s: Status = Error::invalid("key", "empty").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(matches!(WireError::from_status(&s), WireError::InvalidArgument { .. }));
        let s: Status = Error::Stopped.into();
        assert_eq!(s.code(), Code::Unavailable);
        assert!(matches!(WireError::from_status(&s), WireError::Retryable(_)));
        let s: Status = Error::Corrupt("x".into()).into();
        assert_eq!(s.code(), Code::Internal);
        assert!(WireError::from_status(&s).is_transport());
    }
}
