//! What a storenode (or a placement member) answers when a request fails,
//! as the caller sees it: a typed `ShardError` in the gRPC status details
//! (never a string to parse), or no typed answer at all when the call failed
//! on the way. [`WireError::from_status`] is the one place a status is read.

use prost::Message;
use ringkv_proto::error::{self as pb, shard_error::Kind};
use ringkv_proto::kv::CallStatus;
use ringkv_proto::meta::{Replica, ShardDescriptor};
use tonic::{Code, Status};

/// A failed call to a storenode, as read from its gRPC status.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WireError {
    /// The replica asked is not the shard's leader; nothing was applied.
    #[error("shard {shard_id}: not the leader (leader: {leader:?})")]
    NotLeader {
        /// The shard asked.
        shard_id: u64,
        /// The leader as that replica last knew it, if any.
        leader: Option<Replica>,
        /// The leader's gRPC address when known (empty otherwise).
        leader_address: String,
    },
    /// The caller's descriptor of the shard is stale; this one is current.
    #[error("shard {}: epoch mismatch, current {:?}", .0.id, .0.epoch)]
    EpochMismatch(Box<ShardDescriptor>),
    /// The node has no replica of the shard.
    #[error("shard {0} not found on this node")]
    ShardNotFound(u64),
    /// The key hashes outside the shard's range.
    #[error("key not in shard {}", .shard.id)]
    KeyNotInShard {
        /// The key refused.
        key: Vec<u8>,
        /// The shard's current descriptor.
        shard: Box<ShardDescriptor>,
    },
    /// The request is malformed; retrying it cannot help.
    #[error("invalid {field}: {reason}")]
    InvalidArgument {
        /// The offending field.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The write may or may not have been applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// Nothing was applied; the same request may be retried.
    #[error("not applied, retry: {0}")]
    Retryable(String),
    /// The node shed the request; nothing was applied.
    #[error("busy: {0}")]
    Busy(String),
    /// No typed answer: the call failed on the way (refused, reset, timed
    /// out) or the server answered a bare status. A write may have arrived.
    #[error("{code}: {message}")]
    Transport {
        /// The status code.
        code: Code,
        /// The status message.
        message: String,
    },
    /// A typed answer this process cannot read (an empty error).
    #[error("unreadable error: {0}")]
    Other(String),
}

impl WireError {
    /// The error a storenode's status carries; [`WireError::Transport`] when
    /// its details hold no typed error.
    pub fn from_status(s: &Status) -> WireError {
        let typed = if s.details().is_empty() { None } else { pb::ShardError::decode(s.details()).ok() };
        match typed {
            Some(e) => WireError::from_proto(e),
            None => WireError::Transport { code: s.code(), message: s.message().to_string() },
        }
    }

    /// Whether the storenode answered with a typed refusal (the request
    /// reached it), rather than the call failing on the way.
    pub fn is_transport(&self) -> bool {
        matches!(self, WireError::Transport { .. })
    }

    /// The typed wire form; `None` for [`WireError::Transport`] and [`WireError::Other`].
    pub fn to_proto(&self) -> Option<pb::ShardError> {
        let kind = match self {
            WireError::NotLeader { shard_id, leader, leader_address } => Kind::NotLeader(pb::NotLeader {
                shard_id: *shard_id,
                leader: *leader,
                leader_address: leader_address.clone(),
            }),
            WireError::EpochMismatch(d) => Kind::EpochMismatch(pb::EpochMismatch { current: Some((**d).clone()) }),
            WireError::ShardNotFound(id) => Kind::ShardNotFound(pb::ShardNotFound { shard_id: *id }),
            WireError::KeyNotInShard { key, shard } => {
                Kind::KeyNotInShard(pb::KeyNotInShard { key: key.clone(), shard: Some((**shard).clone()) })
            }
            WireError::InvalidArgument { field, reason } => {
                Kind::InvalidArgument(pb::InvalidArgument { field: field.clone(), reason: reason.clone() })
            }
            WireError::Ambiguous(r) => Kind::Ambiguous(pb::Ambiguous { reason: r.clone() }),
            WireError::Retryable(r) => Kind::Retryable(pb::Retryable { reason: r.clone() }),
            WireError::Busy(r) => Kind::ServerBusy(pb::ServerBusy { reason: r.clone() }),
            WireError::Transport { .. } | WireError::Other(_) => return None,
        };
        Some(pb::ShardError { kind: Some(kind) })
    }

    /// Reads the typed wire form (the inverse of [`WireError::to_proto`]).
    pub fn from_proto(e: pb::ShardError) -> WireError {
        match e.kind {
            Some(Kind::NotLeader(n)) => {
                WireError::NotLeader { shard_id: n.shard_id, leader: n.leader, leader_address: n.leader_address }
            }
            Some(Kind::EpochMismatch(m)) => WireError::EpochMismatch(Box::new(m.current.unwrap_or_default())),
            Some(Kind::ShardNotFound(s)) => WireError::ShardNotFound(s.shard_id),
            Some(Kind::KeyNotInShard(k)) => {
                WireError::KeyNotInShard { key: k.key, shard: Box::new(k.shard.unwrap_or_default()) }
            }
            Some(Kind::InvalidArgument(i)) => WireError::InvalidArgument { field: i.field, reason: i.reason },
            Some(Kind::Ambiguous(a)) => WireError::Ambiguous(a.reason),
            Some(Kind::Retryable(r)) => WireError::Retryable(r.reason),
            Some(Kind::ServerBusy(b)) => WireError::Busy(b.reason),
            None => WireError::Other("empty ShardError".into()),
        }
    }

    /// The gRPC code a storenode answers this error with.
    pub fn code(&self) -> Code {
        match self {
            WireError::NotLeader { .. } | WireError::EpochMismatch(_) | WireError::KeyNotInShard { .. } => {
                Code::FailedPrecondition
            }
            WireError::ShardNotFound(_) => Code::NotFound,
            WireError::InvalidArgument { .. } => Code::InvalidArgument,
            WireError::Ambiguous(_) => Code::DeadlineExceeded,
            WireError::Retryable(_) => Code::Unavailable,
            WireError::Busy(_) => Code::ResourceExhausted,
            WireError::Transport { code, .. } => *code,
            WireError::Other(_) => Code::Internal,
        }
    }

    /// The status carrying this error: [`WireError::code`], `message`, and
    /// the typed error in the details when it has a wire form.
    pub fn to_status(&self, message: impl Into<String>) -> Status {
        match self.to_proto() {
            Some(p) => Status::with_details(self.code(), message, p.encode_to_vec().into()),
            None => Status::new(self.code(), message),
        }
    }
}

/// A status as the wire form a `Batch` answer carries: code, message and
/// the typed error of its details.
pub fn call_status(s: &Status) -> CallStatus {
    let error = if s.details().is_empty() { None } else { pb::ShardError::decode(s.details()).ok() };
    CallStatus { code: s.code() as i32, message: s.message().to_string(), error }
}

/// The status a [`CallStatus`] stands for (the inverse of [`call_status`]).
pub fn status_of_call(c: CallStatus) -> Status {
    let code = Code::from_i32(c.code);
    match c.error {
        Some(e) => Status::with_details(code, c.message, e.encode_to_vec().into()),
        None => Status::new(code, c.message),
    }
}

impl From<WireError> for Status {
    fn from(e: WireError) -> Status {
        e.to_status(e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors_round_trip_through_status() {
        let e = WireError::NotLeader {
            shard_id: 3,
            leader: Some(Replica { replica_id: 7, node_id: 2, role: 0 }),
            leader_address: "127.0.0.1:1".into(),
        };
        let s: Status = e.clone().into();
        assert_eq!(s.code(), Code::FailedPrecondition);
        assert_eq!(WireError::from_status(&s), e);
        let all = [
            WireError::EpochMismatch(Box::new(ShardDescriptor { id: 4, ..Default::default() })),
            WireError::ShardNotFound(9),
            WireError::KeyNotInShard { key: b"k".to_vec(), shard: Box::default() },
            WireError::InvalidArgument { field: "key".into(), reason: "empty".into() },
            WireError::Ambiguous("a".into()),
            WireError::Retryable("r".into()),
            WireError::Busy("b".into()),
        ];
        for e in all {
            let s: Status = e.clone().into();
            assert_eq!(s.code(), e.code());
            assert_eq!(WireError::from_status(&s), e);
            assert!(!e.is_transport());
            // A Batch answer carries the same error.
            let back = status_of_call(call_status(&s));
            assert_eq!((back.code(), back.message()), (s.code(), s.message()));
            assert_eq!(WireError::from_status(&back), e);
        }
        let bare = status_of_call(call_status(&Status::unavailable("gone")));
        assert!(WireError::from_status(&bare).is_transport());
        assert_eq!(bare.code(), Code::Unavailable);
    }

    #[test]
    fn a_bare_status_is_a_transport_error() {
        let e = WireError::from_status(&Status::unavailable("connection refused"));
        assert_eq!(e, WireError::Transport { code: Code::Unavailable, message: "connection refused".into() });
        assert!(e.is_transport());
        assert_eq!(e.to_proto(), None);
        // Details that are not a ShardError are not a typed answer either.
        let s = Status::with_details(Code::Internal, "x", vec![0xff, 0xff].into());
        assert!(WireError::from_status(&s).is_transport());
    }

    #[test]
    fn an_empty_typed_error_is_other() {
        assert!(matches!(WireError::from_proto(pb::ShardError { kind: None }), WireError::Other(_)));
    }
}
