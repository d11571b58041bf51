//! The storenode's error type, and its mapping to a gRPC status that carries
//! the typed `ShardError` in its details (never a string to parse).

use prost::Message;
use ringkv_proto::error::{self as pb, shard_error::Kind};
use ringkv_proto::meta::{Replica, ShardDescriptor};
use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("shard {shard_id}: not the leader (leader: {leader:?})")]
    NotLeader { shard_id: u64, leader: Option<Replica>, leader_address: String },
    #[error("shard {}: epoch mismatch, current {:?}", .0.id, .0.epoch)]
    EpochMismatch(Box<ShardDescriptor>),
    #[error("shard {0} not found on this node")]
    ShardNotFound(u64),
    #[error("key not in shard {}", .shard.id)]
    KeyNotInShard { key: Vec<u8>, shard: Box<ShardDescriptor> },
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    #[error("not applied, retry: {0}")]
    Retryable(String),
    #[error("busy: {0}")]
    Busy(String),
    #[error("storage engine: {0}")]
    Engine(#[from] rocksdb::Error),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("corrupt data: {0}")]
    Corrupt(String),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("stopped")]
    Stopped,
}

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
    pub fn invalid(field: &str, reason: impl Into<String>) -> Error {
        Error::InvalidArgument { field: field.to_string(), reason: reason.into() }
    }

    /// The typed wire form, for errors a client can act on; `None` for internal ones.
    pub fn to_proto(&self) -> Option<pb::ShardError> {
        let kind = match self {
            Error::NotLeader { shard_id, leader, leader_address } => Kind::NotLeader(pb::NotLeader {
                shard_id: *shard_id,
                leader: *leader,
                leader_address: leader_address.clone(),
            }),
            Error::EpochMismatch(d) => Kind::EpochMismatch(pb::EpochMismatch { current: Some((**d).clone()) }),
            Error::ShardNotFound(id) => Kind::ShardNotFound(pb::ShardNotFound { shard_id: *id }),
            Error::KeyNotInShard { key, shard } => {
                Kind::KeyNotInShard(pb::KeyNotInShard { key: key.clone(), shard: Some((**shard).clone()) })
            }
            Error::InvalidArgument { field, reason } => {
                Kind::InvalidArgument(pb::InvalidArgument { field: field.clone(), reason: reason.clone() })
            }
            Error::Ambiguous(r) => Kind::Ambiguous(pb::Ambiguous { reason: r.clone() }),
            Error::Retryable(r) => Kind::Retryable(pb::Retryable { reason: r.clone() }),
            Error::Stopped => Kind::Retryable(pb::Retryable { reason: self.to_string() }),
            Error::Busy(r) => Kind::ServerBusy(pb::ServerBusy { reason: r.clone() }),
            _ => return None,
        };
        Some(pb::ShardError { kind: Some(kind) })
    }

    /// Rebuilds the error from its wire form (the inverse of [`Error::to_proto`]).
    pub fn from_proto(e: pb::ShardError) -> Error {
        match e.kind {
            Some(Kind::NotLeader(n)) => {
                Error::NotLeader { shard_id: n.shard_id, leader: n.leader, leader_address: n.leader_address }
            }
            Some(Kind::EpochMismatch(m)) => Error::EpochMismatch(Box::new(m.current.unwrap_or_default())),
            Some(Kind::ShardNotFound(s)) => Error::ShardNotFound(s.shard_id),
            Some(Kind::KeyNotInShard(k)) => {
                Error::KeyNotInShard { key: k.key, shard: Box::new(k.shard.unwrap_or_default()) }
            }
            Some(Kind::InvalidArgument(i)) => Error::InvalidArgument { field: i.field, reason: i.reason },
            Some(Kind::Ambiguous(a)) => Error::Ambiguous(a.reason),
            Some(Kind::Retryable(r)) => Error::Retryable(r.reason),
            Some(Kind::ServerBusy(b)) => Error::Busy(b.reason),
            None => Error::Corrupt("empty ShardError".into()),
        }
    }

    pub fn code(&self) -> Code {
        match self {
            Error::NotLeader { .. } | Error::EpochMismatch(_) | Error::KeyNotInShard { .. } => Code::FailedPrecondition,
            Error::ShardNotFound(_) => Code::NotFound,
            Error::InvalidArgument { .. } => Code::InvalidArgument,
            Error::Ambiguous(_) => Code::DeadlineExceeded,
            Error::Retryable(_) | Error::Stopped => Code::Unavailable,
            Error::Busy(_) => Code::ResourceExhausted,
            _ => Code::Internal,
        }
    }
}

impl From<Error> for Status {
    fn from(e: Error) -> Status {
        match e.to_proto() {
            Some(p) => Status::with_details(e.code(), e.to_string(), p.encode_to_vec().into()),
            None => Status::new(e.code(), e.to_string()),
        }
    }
}

/// The typed error inside a status returned by a storenode, if it has one.
pub fn from_status(s: &Status) -> Option<Error> {
    if s.details().is_empty() {
        return None;
    }
    pb::ShardError::decode(s.details()).ok().map(Error::from_proto)
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
        match from_status(&s) {
            Some(Error::NotLeader { shard_id: 3, leader: Some(l), .. }) => {
                assert_eq!(l.replica_id, 7)
            }
            other => panic!("unexpected {other:?}"),
        }
        let s: Status = Error::invalid("key", "empty").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(matches!(from_status(&s), Some(Error::InvalidArgument { .. })));
    }
}
