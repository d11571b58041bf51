//! Wires a storenode together: opens RocksDB, starts the Raft loop on its own
//! thread, serves gRPC (ShardKv, Admin, RaftTransport) and HTTP
//! (/metrics, /healthz, /readyz), and stops it all cleanly.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringkv_common::placement_client::PlacementClient;
use ringkv_common::server::{bind, HttpRouter, Serving, StartError};
use ringkv_proto::kv::shard_kv_server::ShardKvServer;
use ringkv_proto::raft::admin_server::AdminServer;

use crate::config::StorenodeConfig;
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::identity;
use crate::load::ShardLoad;
use crate::metrics::Metrics;
use crate::service::admin::AdminService;
use crate::service::kv::KvService;
use crate::shard::ShardStateMachine;
use ringkv_proto::placement::RegisterNodeRequest;
use ringkv_raft::node::{RaftNode, MAX_GRPC_MESSAGE_BYTES};
use ringkv_raft::transport::AddressBook;
use ringkv_raft::LoopHandle;

/// Entry point: [`Storenode::start`] runs one storenode in this process.
pub struct Storenode;

/// A running storenode; [`StorenodeHandle::shutdown`] stops it.
pub struct StorenodeHandle {
    /// This node's id.
    pub node_id: u64,
    /// The bound gRPC address (the real port when the config asked for 0).
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address, if HTTP is served.
    pub http_addr: Option<SocketAddr>,
    /// The node's metrics, as rendered on /metrics.
    pub metrics: Arc<Metrics>,
    /// Node id -> gRPC address of the other storenodes, used by the Raft transport.
    pub address_book: Arc<AddressBook>,
    raft: Option<RaftNode<ShardStateMachine>>,
    loop_handle: LoopHandle<ShardStateMachine>,
    serving: Option<Serving>,
}

impl Storenode {
    /// Starts a storenode on the current tokio runtime. Ports of 0 pick free ones.
    pub async fn start(cfg: StorenodeConfig) -> Result<StorenodeHandle, StartError> {
        cfg.validate()?;
        let book = Arc::new(AddressBook::default());
        for p in &cfg.peers {
            book.set(p.node_id, p.address.clone());
        }
        let (listener, grpc_addr) = bind(cfg.listen_addr).await?;
        ringkv_common::net::set_source_from(grpc_addr);
        let advertise = cfg.advertise_addr.clone().unwrap_or_else(|| grpc_addr.to_string());
        let placement = (!cfg.placement.is_empty()).then(|| Arc::new(PlacementClient::new(cfg.placement.clone())));
        let mut register = RegisterNodeRequest {
            node_id: cfg.node_id,
            address: advertise,
            http_address: cfg.http_addr.filter(|a| a.port() != 0).map(|a| a.to_string()).unwrap_or_default(),
            zone: cfg.zone.clone(),
            capacity: cfg.capacity,
            ..Default::default()
        };
        // Who this node is, before any data is opened under an id.
        let node_id = match &placement {
            Some(client) => {
                let retry = Duration::from_millis(cfg.heartbeat_ms);
                let id = identity::establish(&cfg.data_dir, cfg.node_id, client, register.clone(), retry)
                    .await
                    .map_err(|e| StartError::Other(e.to_string()))?;
                register.node_id = id.node_id;
                register.cluster_id = id.cluster_id;
                register.instance = id.instance;
                id.node_id
            }
            None => cfg.node_id,
        };
        let metrics = Arc::new(Metrics::new(node_id));
        let open_err = |e: ringkv_raft::Error| StartError::open(cfg.data_dir.clone(), Error::from(e));
        let raft = RaftNode::open(
            node_id,
            cfg.data_dir.clone(),
            &cfg.raft,
            book.clone(),
            metrics.raft.clone(),
            ShardStateMachine::default,
            exit_on_loop_death,
        )
        .await
        .map_err(open_err)?;
        let loop_handle = raft.loop_handle.clone();

        let mut serving = Serving::default();
        let load = Arc::new(ShardLoad::default());
        let kv =
            KvService::new(loop_handle.clone(), raft.engine.clone(), cfg.limits.clone(), metrics.clone(), load.clone())
                .with_slow_request(std::time::Duration::from_millis(cfg.slow_request_ms));
        let admin = AdminService::new(
            node_id,
            loop_handle.clone(),
            raft.engine.clone(),
            book.clone(),
            cfg.limits.request_timeout(),
        );
        let routes = tonic::transport::Server::builder()
            .add_service(ShardKvServer::new(kv).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
            .add_service(AdminServer::new(admin))
            .add_service(raft.raft_service().map_err(open_err)?);
        serving.grpc(listener, routes)?;
        let m = metrics.clone();
        let ready = raft.ready_fn();
        let http_addr = serving.http(cfg.http_addr, move || m.render(), ready, HttpRouter::new()).await?;
        if let Some(client) = placement {
            register.http_address = http_addr.map(|a| a.to_string()).unwrap_or_default();
            let hb = Heartbeat {
                node_id,
                register,
                client,
                loop_handle: loop_handle.clone(),
                address_book: book.clone(),
                interval: Duration::from_millis(cfg.heartbeat_ms),
                engine: raft.engine.clone(),
                load,
                size_check: Duration::from_millis(cfg.size_check_ms),
                metrics: metrics.clone(),
            };
            let stopped = serving.stopped();
            serving.spawn(hb.run(stopped));
        }
        tracing::info!(node_id, %grpc_addr, ?http_addr, "storenode started");
        Ok(StorenodeHandle {
            node_id,
            grpc_addr,
            http_addr,
            metrics,
            address_book: book,
            raft: Some(raft),
            loop_handle,
            serving: Some(serving),
        })
    }
}

/// The Raft loop thread ended without being asked to (it panics only when
/// the node's synced write fails, after which nothing it promised can be
/// trusted): take the process down so its supervisor restarts it, rather
/// than live on serving nothing with healthy-looking health checks.
fn exit_on_loop_death() {
    tracing::error!("the Raft loop thread died: aborting so that a supervisor restarts the storenode");
    std::process::abort();
}

impl StorenodeHandle {
    /// Stops serving, then stops the Raft loop and waits for it. Requests in
    /// flight get their answer or "outcome unknown".
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

    /// The Raft loop's inbox.
    pub fn loop_handle(&self) -> &LoopHandle<ShardStateMachine> {
        &self.loop_handle
    }
}
