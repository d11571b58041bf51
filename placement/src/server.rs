//! Wires a placement member into a process: its Raft group (the storenode's
//! [`RaftNode`] with the placement state machine), the Placement and
//! RaftTransport gRPC services, HTTP /metrics, and the scheduler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use ringkv_common::server::{bind, HttpRouter, Serving, StartError};
use ringkv_proto::meta::{Epoch, Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::placement::placement_server::PlacementServer as PlacementGrpc;
use ringkv_storenode::config::RaftSettings;
use ringkv_storenode::metrics::Metrics;
use ringkv_storenode::raft::node::RaftNode;
use ringkv_storenode::raft::raft_loop::Msg;
use ringkv_storenode::raft::transport::AddressBook;

use crate::service::{Liveness, PlacementService};
use crate::state::{PlacementStateMachine, Shared};
use crate::{PlacementSettings, GROUP_ID};

#[derive(Clone, Debug)]
pub struct PlacementConfig {
    /// This member's id (1, 2, 3…): also its Raft replica id.
    pub member_id: u64,
    pub listen_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Every member, this one included: id -> gRPC address. The first start
    /// creates the group with exactly these voters.
    pub members: Vec<(u64, String)>,
    pub raft: RaftSettings,
    pub settings: PlacementSettings,
}

pub struct PlacementServer;

pub struct PlacementHandle {
    pub member_id: u64,
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub shared: Arc<Shared>,
    raft: Option<RaftNode<PlacementStateMachine>>,
    serving: Option<Serving>,
}

/// The placement group as a shard descriptor: the whole ring, one voter per member.
fn group_descriptor(members: &[(u64, String)]) -> ShardDescriptor {
    ShardDescriptor {
        id: GROUP_ID,
        start: 0,
        end: 0,
        epoch: Some(Epoch { version: 1, conf_ver: 1 }),
        replicas: members
            .iter()
            .map(|(id, _)| Replica { replica_id: *id, node_id: *id, role: ReplicaRole::Voter as i32 })
            .collect(),
    }
}

impl PlacementServer {
    pub async fn start(cfg: PlacementConfig) -> Result<PlacementHandle, StartError> {
        let id = cfg.member_id;
        if id == 0 || !cfg.members.iter().any(|(m, _)| *m == id) {
            return Err(StartError::Other(format!("member id {id} is not among the placement members")));
        }
        let metrics = Arc::new(Metrics::new(id));
        let book = Arc::new(AddressBook::default());
        for (m, addr) in &cfg.members {
            book.set(*m, addr.clone());
        }
        let (listener, grpc_addr) = bind(cfg.listen_addr).await?;
        ringkv_common::net::set_source_from(grpc_addr);
        let shared = Shared::new();
        let sm_shared = shared.clone();
        let open_err = |source: ringkv_storenode::Error| StartError::open(cfg.data_dir.clone(), source);
        let raft = RaftNode::open(id, cfg.data_dir.clone(), &cfg.raft, book, metrics.clone(), move || {
            PlacementStateMachine::new(sm_shared.clone())
        })
        .await
        .map_err(open_err)?;
        // First start: create the group (idempotent when it already exists).
        let (tx, rx) = tokio::sync::oneshot::channel();
        let create = Msg::CreateReplica {
            shard: group_descriptor(&cfg.members),
            replica_id: id,
            bootstrap: true,
            campaign: false,
            cb: tx,
        };
        raft.loop_handle.send(create).map_err(|_| StartError::Other("raft loop stopped".into()))?;
        rx.await
            .map_err(|_| StartError::Other("raft loop stopped".into()))?
            .map_err(|e| StartError::Other(format!("creating the placement group: {e}")))?;

        let svc = PlacementService {
            member_id: id,
            loop_handle: raft.loop_handle.clone(),
            shared: shared.clone(),
            liveness: Arc::new(Mutex::new(Liveness::default())),
            settings: cfg.settings.clone(),
            members: Arc::new(cfg.members.iter().cloned().collect::<HashMap<_, _>>()),
        };
        let mut serving = Serving::default();
        let routes = tonic::transport::Server::builder()
            .add_service(PlacementGrpc::new(svc.clone()))
            .add_service(raft.raft_service().map_err(open_err)?);
        serving.grpc(listener, routes)?;
        let stopped = serving.stopped();
        serving.spawn(crate::scheduler::run(svc, stopped));
        let http_addr = serving.http(cfg.http_addr, move || metrics.render(), || true, HttpRouter::new()).await?;
        tracing::info!(member = id, %grpc_addr, ?http_addr, "placement started");
        Ok(PlacementHandle { member_id: id, grpc_addr, http_addr, shared, raft: Some(raft), serving: Some(serving) })
    }
}

impl PlacementHandle {
    pub async fn shutdown(mut self) {
        if let Some(serving) = self.serving.take() {
            serving.stop().await;
        }
        if let Some(raft) = self.raft.take() {
            raft.stop().await;
        }
    }
}
