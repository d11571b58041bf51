//! The Admin gRPC service: replica lifecycle (create, membership change,
//! leader transfer, removal), node addresses and status. Placement drives it;
//! operators and tests may too.

use std::sync::Arc;

use ringkv_proto::raft::admin_server::Admin;
use ringkv_proto::raft::{
    ChangeReplicasRequest, ChangeReplicasResponse, CreateReplicaRequest, CreateReplicaResponse, RemoveReplicaRequest,
    RemoveReplicaResponse, SetNodeAddressesRequest, SetNodeAddressesResponse, ShardStatusRequest, ShardStatusResponse,
    TransferLeaderRequest, TransferLeaderResponse,
};
use tonic::{Request, Response, Status};

use ringkv_proto::raft::{ChangeKind, ReplicaStatus};
use ringkv_raft::raft_loop::{MemberChange, MemberChangeKind, ReplicaCondition};
use ringkv_raft::transport::AddressBook;
use ringkv_raft::{LoopHandle, LoopRequest};

use ringkv_proto::raft::{SplitShardRequest, SplitShardResponse};
use ringkv_proto::storage::{shard_command::Op, shard_command_result::Result as CmdResult, ShardCommand, SplitCommand};
use ringkv_raft::engine::Engine;

use crate::error::{Error, Result};
use crate::shard::{into_result, to_member, Shard, ShardStateMachine};
use crate::sizes::{DataLayout, ShardData};

/// A replica's status on the wire.
pub fn status_to_proto(s: ringkv_raft::raft_loop::ReplicaStatus<Shard>) -> ReplicaStatus {
    let (applying_snapshot, failure) = match s.condition {
        ReplicaCondition::Normal => (false, String::new()),
        ReplicaCondition::ApplyingSnapshot => (true, String::new()),
        ReplicaCondition::Failed(reason) => (false, reason),
    };
    let mut shard = s.group.0;
    if shard.id == 0 {
        shard.id = s.group_id; // a failed replica whose descriptor could not be read
    }
    ReplicaStatus {
        shard: Some(shard),
        replica_id: s.replica_id,
        is_leader: s.is_leader,
        leader_replica_id: s.leader_replica_id,
        term: s.term,
        commit_index: s.commit_index,
        applied_index: s.applied_index,
        first_log_index: s.first_log_index,
        last_log_index: s.last_log_index,
        progress: s.progress,
        applying_snapshot,
        failure,
    }
}

/// The Admin service of one storenode.
pub struct AdminService {
    node_id: u64,
    loop_handle: LoopHandle<ShardStateMachine>,
    engine: Engine,
    book: Arc<AddressBook>,
    timeout: std::time::Duration,
}

impl AdminService {
    /// The service of node `node_id`; calls wait at most `timeout`.
    pub fn new(
        node_id: u64,
        loop_handle: LoopHandle<ShardStateMachine>,
        engine: Engine,
        book: Arc<AddressBook>,
        timeout: std::time::Duration,
    ) -> Self {
        AdminService { node_id, loop_handle, engine, book, timeout }
    }

    /// Splits a shard this node leads: picks the hash (unless given), then
    /// proposes the split through the shard's log.
    async fn split(&self, req: SplitShardRequest) -> Result<SplitShardResponse> {
        let group_id = req.shard_id;
        let status = self.loop_handle.status(vec![group_id]).await?;
        let Some(s) = status.into_iter().next() else { return Err(Error::ShardNotFound(group_id)) };
        let shard = s.group.0;
        if !s.is_leader {
            return Err(Error::NotLeader { shard_id: group_id, leader: None, leader_address: String::new() });
        }
        let want = req.epoch.unwrap_or_default();
        let have = shard.epoch.unwrap_or_default();
        if (want.version, want.conf_ver) != (have.version, have.conf_ver) {
            return Err(Error::EpochMismatch(Box::new(shard)));
        }
        let split_hash = if req.split_hash != 0 {
            req.split_hash
        } else {
            let (engine, start, end) = (self.engine.clone(), shard.start, shard.end);
            let middle = tokio::task::spawn_blocking(move || {
                let layout = DataLayout::read(&engine)?;
                Ok::<_, Error>(ShardData::measure(&engine, &layout, start, end)?.middle())
            })
            .await
            .map_err(|e| Error::Retryable(format!("measuring the shard: {e}")))??;
            middle.ok_or_else(|| Error::invalid("split_hash", "the shard holds no data to halve: give a hash"))?
        };
        let cmd = ShardCommand {
            request_id: Vec::new(),
            epoch_version: have.version,
            op: Some(Op::Split(SplitCommand {
                split_hash,
                new_shard_id: req.new_shard_id,
                new_replica_ids: req.new_replica_ids,
                conf_ver: have.conf_ver,
            })),
        };
        let deadline = std::time::Instant::now() + self.timeout;
        let res = self.loop_handle.call(|cb| LoopRequest::Propose { group_id, cmd, deadline, cb }).await?;
        match into_result(res.value)? {
            CmdResult::Split(r) => Ok(SplitShardResponse { left: r.left, right: r.right }),
            other => Err(Error::Corrupt(format!("a split answered {other:?}"))),
        }
    }

    async fn timed<T>(&self, f: impl std::future::Future<Output = Result<T>>) -> Result<Response<T>, Status> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(r) => r.map(Response::new).map_err(Status::from),
            Err(_) => Err(Error::Ambiguous("timed out; the change may still happen".into()).into()),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_replica(
        &self,
        req: Request<CreateReplicaRequest>,
    ) -> Result<Response<CreateReplicaResponse>, Status> {
        let req = req.into_inner();
        let shard = req.shard.ok_or_else(|| Status::from(Error::invalid("shard", "missing")))?;
        let (replica_id, bootstrap, campaign) = (req.replica_id, req.bootstrap, req.campaign);
        self.timed(async {
            let group = Shard(shard);
            self.loop_handle
                .call(|cb| LoopRequest::CreateReplica { group, replica_id, bootstrap, campaign, cb })
                .await?;
            Ok(CreateReplicaResponse {})
        })
        .await
    }

    async fn remove_replica(
        &self,
        req: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        let group_id = req.into_inner().shard_id;
        self.timed(async {
            self.loop_handle.call(|cb| LoopRequest::RemoveReplica { group_id, cb }).await?;
            Ok(RemoveReplicaResponse {})
        })
        .await
    }

    async fn change_replicas(
        &self,
        req: Request<ChangeReplicasRequest>,
    ) -> Result<Response<ChangeReplicasResponse>, Status> {
        let req = req.into_inner();
        let (group_id, expect) = (req.shard_id, req.epoch.map(|e| (e.version, e.conf_ver)));
        let mut changes = Vec::with_capacity(req.changes.len());
        for ch in req.changes {
            let replica = ch.replica.ok_or_else(|| Status::from(Error::invalid("replica", "missing")))?;
            let kind = match ChangeKind::try_from(ch.kind) {
                Ok(ChangeKind::AddVoter) => MemberChangeKind::AddVoter,
                Ok(ChangeKind::AddLearner) => MemberChangeKind::AddLearner,
                Ok(ChangeKind::Remove) => MemberChangeKind::Remove,
                Err(_) => return Err(Error::invalid("kind", "unknown").into()),
            };
            changes.push(MemberChange { kind, member: to_member(&replica) });
        }
        let deadline = std::time::Instant::now() + self.timeout;
        self.timed(async {
            let shard = self
                .loop_handle
                .call(|cb| LoopRequest::ChangeMembers { group_id, expect, changes, deadline, cb })
                .await?;
            Ok(ChangeReplicasResponse { shard: Some(shard.0) })
        })
        .await
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = req.into_inner();
        let (group_id, to_replica_id) = (req.shard_id, req.to_replica_id);
        self.timed(async {
            self.loop_handle.call(|cb| LoopRequest::TransferLeader { group_id, to_replica_id, cb }).await?;
            Ok(TransferLeaderResponse {})
        })
        .await
    }

    async fn set_node_addresses(
        &self,
        req: Request<SetNodeAddressesRequest>,
    ) -> Result<Response<SetNodeAddressesResponse>, Status> {
        for n in req.into_inner().nodes {
            if n.node_id == 0 || n.address.is_empty() {
                return Err(Error::invalid("nodes", "node_id and address are required").into());
            }
            if n.node_id != self.node_id {
                self.book.set(n.node_id, n.address);
            }
        }
        Ok(Response::new(SetNodeAddressesResponse {}))
    }

    async fn split_shard(&self, req: Request<SplitShardRequest>) -> Result<Response<SplitShardResponse>, Status> {
        let req = req.into_inner();
        self.timed(self.split(req)).await
    }

    async fn shard_status(&self, req: Request<ShardStatusRequest>) -> Result<Response<ShardStatusResponse>, Status> {
        let shard_ids = req.into_inner().shard_ids;
        let replicas = self.loop_handle.status(shard_ids).await.map_err(Error::from)?;
        let replicas = replicas.into_iter().map(status_to_proto).collect();
        Ok(Response::new(ShardStatusResponse { node_id: self.node_id, replicas }))
    }
}
