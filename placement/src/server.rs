//! Wires a placement member into a process: its Raft group (the storenode's
//! [`RaftNode`] with the placement state machine), the Placement and
//! RaftTransport gRPC services, HTTP /metrics (engine and scheduler), and the scheduler.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use ringkv_common::server::{bind, HttpRouter, Serving, StartError};
use ringkv_proto::placement::placement_server::PlacementServer as PlacementGrpc;
use ringkv_raft::node::RaftNode;
use ringkv_raft::transport::AddressBook;
use ringkv_raft::{LoopRequest, RaftConfig, RaftMetrics};

use crate::group::PlacementGroup;
use crate::metrics::SchedulerMetrics;
use crate::service::{Liveness, PlacementService};
use crate::state::{PlacementStateMachine, Shared};
use crate::PlacementSettings;

/// A placement member's settings.
#[derive(Clone, Debug)]
pub struct PlacementConfig {
    /// This member's id (1, 2, 3…): also its Raft replica id.
    pub member_id: u64,
    /// gRPC address (Placement, Raft transport); port 0 picks a free one.
    pub listen_addr: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz; `None`: no HTTP.
    pub http_addr: Option<SocketAddr>,
    /// Directory holding the member's RocksDB data and Raft state.
    pub data_dir: PathBuf,
    /// Every member, this one included: id -> gRPC address. The first start
    /// creates the group with exactly these voters.
    pub members: Vec<(u64, String)>,
    /// The Raft engine's settings.
    pub raft: RaftConfig,
    /// Replication, bootstrap and liveness settings.
    pub settings: PlacementSettings,
}

/// Entry point: [`PlacementServer::start`] runs one placement member in this process.
pub struct PlacementServer;

/// A running placement member; [`PlacementHandle::shutdown`] stops it.
pub struct PlacementHandle {
    /// This member's id.
    pub member_id: u64,
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address, if HTTP is served.
    pub http_addr: Option<SocketAddr>,
    /// The member's view of the replicated state.
    pub shared: Arc<Shared>,
    raft: Option<RaftNode<PlacementStateMachine>>,
    serving: Option<Serving>,
}

impl PlacementServer {
    /// Starts a placement member on the current tokio runtime, creating the
    /// group on first start; fails if `member_id` is not among `members`.
    pub async fn start(cfg: PlacementConfig) -> Result<PlacementHandle, StartError> {
        let id = cfg.member_id;
        if id == 0 || !cfg.members.iter().any(|(m, _)| *m == id) {
            return Err(StartError::Other(format!("member id {id} is not among the placement members")));
        }
        let metrics = Arc::new(RaftMetrics::new(id));
        let book = Arc::new(AddressBook::default());
        for (m, addr) in &cfg.members {
            book.set(*m, addr.clone());
        }
        let (listener, grpc_addr) = bind(cfg.listen_addr).await?;
        ringkv_common::net::set_source_from(grpc_addr);
        let shared = Shared::new();
        let sm_shared = shared.clone();
        let open_err = |e: ringkv_raft::Error| StartError::open(cfg.data_dir.clone(), e);
        let raft = RaftNode::open(
            id,
            cfg.data_dir.clone(),
            &cfg.raft,
            book,
            metrics.clone(),
            move || PlacementStateMachine::new(sm_shared.clone()),
            || {
                tracing::error!("the Raft loop thread died: aborting so that a supervisor restarts placement");
                std::process::abort();
            },
        )
        .await
        .map_err(open_err)?;
        // First start: create the group (idempotent when it already exists).
        let group = PlacementGroup::initial(cfg.members.iter().map(|(m, _)| *m));
        raft.loop_handle
            .call(|cb| LoopRequest::CreateReplica { group, replica_id: id, bootstrap: true, campaign: false, cb })
            .await
            .map_err(|e| StartError::Other(format!("creating the placement group: {e}")))?;

        let svc = PlacementService {
            member_id: id,
            loop_handle: raft.loop_handle.clone(),
            shared: shared.clone(),
            liveness: Arc::new(Mutex::new(Liveness::default())),
            settings: cfg.settings.clone(),
            members: Arc::new(cfg.members.iter().cloned().collect::<HashMap<_, _>>()),
            scheduler: Default::default(),
            metrics: Arc::new(SchedulerMetrics::new(&metrics.registry)),
            driver: Arc::new(crate::scheduler::driver::Driver::new(cfg.settings.request_timeout)),
        };
        let mut serving = Serving::default();
        let routes = tonic::transport::Server::builder()
            .add_service(PlacementGrpc::new(svc.clone()))
            .add_service(raft.raft_service().map_err(open_err)?);
        serving.grpc(listener, routes)?;
        let stopped = serving.stopped();
        serving.spawn(crate::scheduler::run(svc, stopped));
        let ready = raft.ready_fn();
        let http_addr = serving.http(cfg.http_addr, move || metrics.render(), ready, HttpRouter::new()).await?;
        tracing::info!(member = id, %grpc_addr, ?http_addr, "placement started");
        Ok(PlacementHandle { member_id: id, grpc_addr, http_addr, shared, raft: Some(raft), serving: Some(serving) })
    }
}

impl PlacementHandle {
    /// Stops serving (and the scheduler), then stops the Raft loop and waits for it.
    pub async fn shutdown(mut self) {
        // Leaderships first, while the Raft streams still carry the
        // transfer: callers then retry at the new leaders at once.
        if let Some(raft) = &self.raft {
            let kept = raft.hand_off_leaders(ringkv_raft::HAND_OFF_TIMEOUT).await;
            if kept > 0 {
                tracing::warn!(kept, "stopping while still leading (no follower caught up in time)");
            }
        }
        if let Some(serving) = self.serving.take() {
            serving.stop().await;
        }
        if let Some(raft) = self.raft.take() {
            raft.stop().await;
        }
    }
}
