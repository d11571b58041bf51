//! Operators: the one way a replica moves. An operator is a small state
//! machine persisted in placement's replicated state (so a new placement
//! leader resumes it), with at most one per shard. This module holds its
//! replicated side: creating, advancing and finishing operators, each
//! checked on apply so that every placement replica accepts or refuses the
//! same commands. The scheduler's driver (`scheduler::driver`) performs the
//! steps against the storenodes.
//!
//! A move of shard S from node A to node B: ADD_LEARNER (an empty replica on
//! B, added as a learner) → CATCH_UP (snapshot, then log) → PROMOTE (one
//! joint change: B becomes a voter, A leaves; leadership moves off A first)
//! → REMOVE_OLD (A deletes its replica, leaving a tombstone) → finished. A
//! step that times out before PROMOTE rolls back (ROLLBACK removes the
//! learner); from PROMOTE on, it only goes forward.

use prost::Message;
use ringkv_proto::meta::ReplicaRole;
use ringkv_proto::placement::{
    AdvanceOperator, FinishOperator, NodeState, Operator, OperatorKind, OperatorOutcome, OperatorStep,
};
use ringkv_raft::engine::Cf;
use ringkv_raft::ApplyContext;

use crate::group::PlacementGroup;
use crate::state::{operator_key, ClusterState, CommandError, CommandResult, PlacementStateMachine, Reply};

pub use ringkv_common::cluster_view::{kind_name, step_name};

/// The outcome's name, lower-case, for metric labels.
pub fn outcome_name(outcome: OperatorOutcome) -> &'static str {
    match outcome {
        OperatorOutcome::Succeeded => "succeeded",
        OperatorOutcome::RolledBack => "rolled-back",
        OperatorOutcome::Cancelled => "cancelled",
    }
}

/// Whether `op` can still be rolled back (nothing past the learner exists).
pub fn can_roll_back(op: &Operator) -> bool {
    matches!(OperatorStep::try_from(op.step), Ok(OperatorStep::AddLearner | OperatorStep::CatchUp))
}

/// Checks a new operator against the state; the error says why it cannot be.
pub fn validate(st: &ClusterState, op: &Operator) -> Result<(), CommandError> {
    let info = st.shards.get(&op.shard_id).ok_or(CommandError::UnknownShard(op.shard_id))?;
    let d = info.shard.as_ref().ok_or(CommandError::UnknownShard(op.shard_id))?;
    if let Some(other) = st.operator_on(op.shard_id) {
        return Err(CommandError::Conflict(format!(
            "shard {} already has operator {} in flight ({} {} → {})",
            op.shard_id,
            other.id,
            kind_name(other.kind),
            other.from_node,
            other.to_node
        )));
    }
    let kind = OperatorKind::try_from(op.kind).map_err(|_| CommandError::Invalid("unknown operator kind".into()))?;
    let (adds, removes) = match kind {
        OperatorKind::MoveReplica => (true, true),
        OperatorKind::AddReplica => (true, false),
        OperatorKind::RemoveReplica => (false, true),
    };
    if adds {
        let to = st.nodes.get(&op.to_node).ok_or(CommandError::UnknownNode(op.to_node))?;
        match NodeState::try_from(to.state) {
            Ok(NodeState::Up) => {}
            Ok(NodeState::Removed) => return Err(CommandError::NodeRemoved(op.to_node)),
            _ => {
                return Err(CommandError::Conflict(format!(
                    "node {} is decommissioning: it takes no replicas",
                    op.to_node
                )))
            }
        }
        if d.replicas.iter().any(|r| r.node_id == op.to_node) {
            return Err(CommandError::Conflict(format!(
                "node {} already holds a replica of shard {}",
                op.to_node, op.shard_id
            )));
        }
    }
    if removes {
        let Some(r) = d.replicas.iter().find(|r| r.node_id == op.from_node) else {
            return Err(CommandError::Conflict(format!(
                "node {} holds no replica of shard {}",
                op.from_node, op.shard_id
            )));
        };
        if r.replica_id != op.from_replica && op.from_replica != 0 {
            return Err(CommandError::Conflict(format!(
                "shard {}'s replica on node {} is {}, not {}",
                op.shard_id, op.from_node, r.replica_id, op.from_replica
            )));
        }
        let voters = d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter as i32).count();
        if !adds && voters <= 1 {
            return Err(CommandError::Conflict(format!("shard {} has a single voter", op.shard_id)));
        }
    }
    Ok(())
}

impl PlacementStateMachine {
    pub(crate) fn add_operator(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        mut op: Operator,
    ) -> CommandResult {
        validate(st, &op)?;
        let d = st.shards.get(&op.shard_id).and_then(|s| s.shard.clone()).unwrap_or_default();
        if op.from_node != 0 {
            op.from_replica = d.replicas.iter().find(|r| r.node_id == op.from_node).map_or(0, |r| r.replica_id);
        }
        op.id = Self::alloc(ctx, st);
        if op.to_node != 0 {
            op.to_replica = Self::alloc(ctx, st);
        }
        op.step = if op.to_node == 0 { OperatorStep::Promote as i32 } else { OperatorStep::AddLearner as i32 };
        op.step_unix_ms = op.created_unix_ms;
        op.epoch = d.epoch;
        ctx.put(Cf::Data, &operator_key(op.id), &op.encode_to_vec());
        st.operators.insert(op.id, op.clone());
        Self::bump(ctx, st);
        Ok(Reply::Operator(op))
    }

    pub(crate) fn advance_operator(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        a: AdvanceOperator,
    ) -> CommandResult {
        let mut op = st.operators.get(&a.id).cloned().ok_or(CommandError::UnknownOperator(a.id))?;
        let step = OperatorStep::try_from(a.step).map_err(|_| CommandError::Invalid("unknown step".into()))?;
        if step == OperatorStep::Rollback {
            if op.step == OperatorStep::Rollback as i32 {
                return Ok(Reply::Operator(op));
            }
            if !can_roll_back(&op) {
                return Err(CommandError::Conflict(format!(
                    "operator {} is at step {}: past the point of no return, it will finish",
                    op.id,
                    step_name(op.step)
                )));
            }
            op.rollback_reason = a.rollback_reason;
            op.cancelled = a.cancelled;
        } else if a.step <= op.step || op.step == OperatorStep::Rollback as i32 {
            return Err(CommandError::Conflict(format!(
                "operator {} is at step {}, cannot go to {}",
                op.id,
                step_name(op.step),
                step_name(a.step)
            )));
        }
        op.step = a.step;
        op.step_unix_ms = a.unix_ms;
        ctx.put(Cf::Data, &operator_key(op.id), &op.encode_to_vec());
        st.operators.insert(op.id, op.clone());
        if let Some(shard) = a.shard {
            Self::update_shard(ctx, st, shard);
        }
        Self::bump(ctx, st);
        Ok(Reply::Operator(op))
    }

    pub(crate) fn finish_operator(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        f: FinishOperator,
    ) -> CommandResult {
        if st.operators.remove(&f.id).is_none() {
            return Err(CommandError::UnknownOperator(f.id));
        }
        ctx.delete(Cf::Data, &operator_key(f.id));
        if let Some(shard) = f.shard {
            Self::update_shard(ctx, st, shard);
        }
        Self::bump(ctx, st);
        Ok(Reply::Finished)
    }
}
