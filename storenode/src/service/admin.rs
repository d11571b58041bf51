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

use crate::error::{Error, Result};
use crate::raft::raft_loop::{LoopHandle, Msg};
use crate::raft::transport::AddressBook;
use crate::shard::ShardStateMachine;

pub struct AdminService {
    node_id: u64,
    loop_handle: LoopHandle<ShardStateMachine>,
    book: Arc<AddressBook>,
    timeout: std::time::Duration,
}

impl AdminService {
    pub fn new(
        node_id: u64,
        loop_handle: LoopHandle<ShardStateMachine>,
        book: Arc<AddressBook>,
        timeout: std::time::Duration,
    ) -> Self {
        AdminService { node_id, loop_handle, book, timeout }
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
            self.loop_handle.call(|cb| Msg::CreateReplica { shard, replica_id, bootstrap, campaign, cb }).await?;
            Ok(CreateReplicaResponse {})
        })
        .await
    }

    async fn remove_replica(
        &self,
        req: Request<RemoveReplicaRequest>,
    ) -> Result<Response<RemoveReplicaResponse>, Status> {
        let shard_id = req.into_inner().shard_id;
        self.timed(async {
            self.loop_handle.call(|cb| Msg::RemoveReplica { shard_id, cb }).await?;
            Ok(RemoveReplicaResponse {})
        })
        .await
    }

    async fn change_replicas(
        &self,
        req: Request<ChangeReplicasRequest>,
    ) -> Result<Response<ChangeReplicasResponse>, Status> {
        let req = req.into_inner();
        let (shard_id, epoch, changes) = (req.shard_id, req.epoch, req.changes);
        self.timed(async {
            let shard = self.loop_handle.call(|cb| Msg::ChangeReplicas { shard_id, epoch, changes, cb }).await?;
            Ok(ChangeReplicasResponse { shard: Some(shard) })
        })
        .await
    }

    async fn transfer_leader(
        &self,
        req: Request<TransferLeaderRequest>,
    ) -> Result<Response<TransferLeaderResponse>, Status> {
        let req = req.into_inner();
        let (shard_id, to_replica_id) = (req.shard_id, req.to_replica_id);
        self.timed(async {
            self.loop_handle.call(|cb| Msg::TransferLeader { shard_id, to_replica_id, cb }).await?;
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

    async fn shard_status(&self, req: Request<ShardStatusRequest>) -> Result<Response<ShardStatusResponse>, Status> {
        let shard_ids = req.into_inner().shard_ids;
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.loop_handle.send(Msg::Status { shard_ids, cb: tx })?;
        let replicas = rx.await.map_err(|_| Status::from(Error::Stopped))?;
        Ok(Response::new(ShardStatusResponse { node_id: self.node_id, replicas }))
    }
}
