//! Wires a storenode together: opens RocksDB, starts the Raft loop on its own
//! thread, serves gRPC (ShardKv, Admin, RaftTransport) and HTTP
//! (/metrics, /healthz, /readyz), and stops it all cleanly.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::routing::get;
use ringkv_proto::kv::shard_kv_server::ShardKvServer;
use ringkv_proto::raft::admin_server::AdminServer;
use ringkv_proto::raft::raft_transport_server::RaftTransportServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::{ConfigError, StorenodeConfig};
use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::raft::raft_loop::{LoopConfig, LoopHandle, Msg, RaftLoop};
use crate::raft::snapshot::SnapshotDir;
use crate::raft::transport::{AddressBook, GrpcTransport, RaftService};
use crate::service::admin::AdminService;
use crate::service::kv::KvService;
use crate::shard::ShardStateMachine;

/// Largest gRPC message accepted: a batch of Raft messages can carry entries
/// of many shards, each up to `max_size_per_msg`.
const MAX_GRPC_MESSAGE_BYTES: usize = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("opening {path}: {source}")]
    Open { path: std::path::PathBuf, source: Error },
    #[error("binding {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("{0}")]
    Other(String),
}

pub struct Storenode;

pub struct StorenodeHandle {
    pub node_id: u64,
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub metrics: Arc<Metrics>,
    pub address_book: Arc<AddressBook>,
    loop_handle: LoopHandle<ShardStateMachine>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    loop_thread: Option<std::thread::JoinHandle<()>>,
}

impl Storenode {
    /// Starts a storenode on the current tokio runtime. Ports of 0 pick free ones.
    pub async fn start(cfg: StorenodeConfig) -> Result<StorenodeHandle, StartError> {
        cfg.validate()?;
        let node_id = cfg.node_id;
        let metrics = Arc::new(Metrics::new(node_id));
        let book = Arc::new(AddressBook::default());
        for p in &cfg.peers {
            book.set(p.node_id, p.address.clone());
        }
        let listener = TcpListener::bind(cfg.listen_addr)
            .await
            .map_err(|source| StartError::Bind { addr: cfg.listen_addr, source })?;
        let grpc_addr = listener.local_addr().map_err(|e| StartError::Other(e.to_string()))?;

        let db_path = cfg.data_dir.join("db");
        let snap_path = cfg.data_dir.join("snap");
        let mut lcfg = LoopConfig::new(node_id, snap_path.clone());
        lcfg.tick = Duration::from_millis(cfg.raft.tick_ms);
        lcfg.election_ticks = cfg.raft.election_ticks;
        lcfg.heartbeat_ticks = cfg.raft.heartbeat_ticks;
        lcfg.compact_log_entries = cfg.raft.compact_log_entries;
        let cell = Arc::new(OnceLock::new());
        let transport =
            GrpcTransport::new(node_id, book.clone(), tokio::runtime::Handle::current(), cell.clone(), metrics.clone());
        let (m2, path2) = (metrics.clone(), db_path.clone());
        // Opening RocksDB and loading every replica blocks: not on a tokio worker.
        let (raft_loop, loop_handle, engine) = tokio::task::spawn_blocking(move || {
            let engine = Engine::open(&path2).map_err(Error::from)?;
            let (lp, h) = RaftLoop::new(lcfg, engine.clone(), transport, m2, ShardStateMachine::default)?;
            Ok::<_, Error>((lp, h, engine))
        })
        .await
        .map_err(|e| StartError::Other(e.to_string()))?
        .map_err(|source| StartError::Open { path: db_path.clone(), source })?;
        let _ = cell.set(loop_handle.clone());
        let loop_thread = std::thread::Builder::new()
            .name(format!("raft-loop-{node_id}"))
            .spawn(move || raft_loop.run())
            .map_err(|e| StartError::Other(format!("starting the raft loop: {e}")))?;

        let (stop, stop_rx) = watch::channel(false);
        let snap_dir = SnapshotDir::new(snap_path).map_err(|source| StartError::Open { path: db_path, source })?;
        let kv = KvService::new(loop_handle.clone(), engine, cfg.limits.clone(), metrics.clone());
        let admin = AdminService::new(node_id, loop_handle.clone(), book.clone(), cfg.limits.request_timeout());
        let raft = RaftService::new(node_id, loop_handle.clone(), snap_dir, metrics.clone());
        let mut rx = stop_rx.clone();
        let grpc = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .add_service(ShardKvServer::new(kv).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
            .add_service(AdminServer::new(admin))
            .add_service(RaftTransportServer::new(raft).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), async move {
                let _ = rx.wait_for(|s| *s).await;
            });
        let mut tasks = vec![tokio::spawn(async move {
            if let Err(e) = grpc.await {
                tracing::error!("gRPC server: {e}");
            }
        })];

        let mut http_addr = None;
        if let Some(addr) = cfg.http_addr {
            let l = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
            http_addr = Some(l.local_addr().map_err(|e| StartError::Other(e.to_string()))?);
            let m = metrics.clone();
            let app = axum::Router::new()
                .route("/metrics", get(move || std::future::ready(m.render())))
                .route("/healthz", get(|| std::future::ready("ok")))
                .route("/readyz", get(|| std::future::ready("ok")));
            let mut rx = stop_rx.clone();
            tasks.push(tokio::spawn(async move {
                let serve = axum::serve(l, app).with_graceful_shutdown(async move {
                    let _ = rx.wait_for(|s| *s).await;
                });
                if let Err(e) = serve.await {
                    tracing::error!("HTTP server: {e}");
                }
            }));
        }
        tracing::info!(node_id, %grpc_addr, ?http_addr, "storenode started");
        Ok(StorenodeHandle {
            node_id,
            grpc_addr,
            http_addr,
            metrics,
            address_book: book,
            loop_handle,
            stop,
            tasks,
            loop_thread: Some(loop_thread),
        })
    }
}

impl StorenodeHandle {
    /// Stops serving, then stops the Raft loop and waits for it. Requests in
    /// flight get their answer or "outcome unknown".
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), t).await;
        }
        let _ = self.loop_handle.send(Msg::Shutdown);
        if let Some(t) = self.loop_thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }

    pub fn loop_handle(&self) -> &LoopHandle<ShardStateMachine> {
        &self.loop_handle
    }
}
