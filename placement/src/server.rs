//! Wires a placement member into a process: its Raft group (the storenode's
//! [`RaftNode`] with the placement state machine), the Placement and
//! RaftTransport gRPC services, HTTP /metrics, and the scheduler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use ringkv_proto::meta::{Epoch, Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::placement::placement_server::PlacementServer as PlacementGrpc;
use ringkv_storenode::config::RaftSettings;
use ringkv_storenode::metrics::Metrics;
use ringkv_storenode::raft::node::RaftNode;
use ringkv_storenode::raft::raft_loop::Msg;
use ringkv_storenode::raft::transport::AddressBook;
use ringkv_storenode::server::{bind, incoming, spawn_http, StartError, SHUTDOWN_GRACE};
use tokio::sync::watch;

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
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
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
        let shared = Shared::new();
        let sm_shared = shared.clone();
        let open_err = |source| StartError::Open { path: cfg.data_dir.clone(), source };
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
        let (stop, stop_rx) = watch::channel(false);
        let mut rx = stop_rx.clone();
        let grpc = tonic::transport::Server::builder()
            .add_service(PlacementGrpc::new(svc.clone()))
            .add_service(raft.raft_service().map_err(open_err)?)
            .serve_with_incoming_shutdown(incoming(listener)?, async move {
                let _ = rx.wait_for(|s| *s).await;
            });
        let mut tasks = vec![
            tokio::spawn(async move {
                if let Err(e) = grpc.await {
                    tracing::error!("gRPC server: {e}");
                }
            }),
            tokio::spawn(crate::scheduler::run(svc, stop_rx.clone())),
        ];
        let mut http_addr = None;
        if let Some(addr) = cfg.http_addr {
            let (l, local) = bind(addr).await?;
            http_addr = Some(local);
            tasks.push(spawn_http(l, move || metrics.render(), axum_router(), stop_rx));
        }
        tracing::info!(member = id, %grpc_addr, ?http_addr, "placement started");
        Ok(PlacementHandle { member_id: id, grpc_addr, http_addr, shared, raft: Some(raft), stop, tasks })
    }
}

fn axum_router() -> ringkv_storenode::server::HttpRouter {
    ringkv_storenode::server::HttpRouter::new()
}

impl PlacementHandle {
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, t).await;
        }
        if let Some(raft) = self.raft.take() {
            raft.stop().await;
        }
    }
}
