//! Wires a storenode together: opens RocksDB, starts the Raft loop on its own
//! thread, serves gRPC (ShardKv, Admin, RaftTransport) and HTTP
//! (/metrics, /healthz, /readyz), and stops it all cleanly.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::routing::get;
use ringkv_proto::kv::shard_kv_server::ShardKvServer;
use ringkv_proto::raft::admin_server::AdminServer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tonic::transport::server::TcpIncoming;

use crate::config::{ConfigError, StorenodeConfig};
use crate::error::Error;
use crate::heartbeat::Heartbeat;
use crate::metrics::Metrics;
use crate::placement_client::PlacementClient;
use crate::service::admin::AdminService;
use crate::service::kv::KvService;
use crate::shard::ShardStateMachine;
use ringkv_proto::placement::RegisterNodeRequest;
use ringkv_raft::node::{RaftNode, MAX_GRPC_MESSAGE_BYTES};
use ringkv_raft::transport::AddressBook;
use ringkv_raft::LoopHandle;

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
    raft: Option<RaftNode<ShardStateMachine>>,
    loop_handle: LoopHandle<ShardStateMachine>,
    serving: Option<Serving>,
}

/// How long stopping waits for a server task (gRPC graceful shutdown waits
/// for peers' long-lived Raft streams, which only end when they reconnect).
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Extra HTTP routes a process serves beside /metrics, /healthz, /readyz.
pub type HttpRouter = axum::Router;

/// Binds a listener, reporting the address in the error.
pub async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), StartError> {
    let l = TcpListener::bind(addr).await.map_err(|source| StartError::Bind { addr, source })?;
    let local = l.local_addr().map_err(|e| StartError::Other(e.to_string()))?;
    Ok((l, local))
}

/// Accepted gRPC connections with Nagle off: small responses (a read's
/// answer, a heartbeat) must not wait for the peer's delayed ACK.
pub fn incoming(l: TcpListener) -> Result<TcpIncoming, StartError> {
    TcpIncoming::from_listener(l, true, Some(Duration::from_secs(30))).map_err(|e| StartError::Other(e.to_string()))
}

/// A process's servers and background tasks, stopped together: each server
/// and task watches one stop signal, and [`Serving::stop`] waits for them.
pub struct Serving {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Default for Serving {
    fn default() -> Self {
        Serving { stop: watch::channel(false).0, tasks: Vec::new() }
    }
}

impl Serving {
    /// Resolves once stopping has begun (for background loops).
    pub fn stopped(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    pub fn spawn(&mut self, task: impl Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task));
    }

    /// Serves gRPC `routes` on `listener` until stop.
    pub fn grpc(&mut self, listener: TcpListener, routes: tonic::transport::server::Router) -> Result<(), StartError> {
        let mut rx = self.stopped();
        let serve = routes.serve_with_incoming_shutdown(incoming(listener)?, async move {
            let _ = rx.wait_for(|s| *s).await;
        });
        self.spawn(async move {
            if let Err(e) = serve.await {
                tracing::error!("gRPC server: {e}");
            }
        });
        Ok(())
    }

    /// Serves `/metrics`, `/healthz` (alive), `/readyz` (200 when `ready()`,
    /// else 503) plus `extra` routes on `addr` (if any) until stop; returns
    /// the bound address.
    pub async fn http(
        &mut self,
        addr: Option<SocketAddr>,
        render_metrics: impl Fn() -> String + Clone + Send + Sync + 'static,
        ready: impl Fn() -> bool + Clone + Send + Sync + 'static,
        extra: HttpRouter,
    ) -> Result<Option<SocketAddr>, StartError> {
        let Some(addr) = addr else { return Ok(None) };
        let (l, local) = bind(addr).await?;
        let readyz = move || {
            let r = ready();
            std::future::ready(if r {
                (axum::http::StatusCode::OK, "ready")
            } else {
                (axum::http::StatusCode::SERVICE_UNAVAILABLE, "not ready")
            })
        };
        let app = extra
            .route("/metrics", get(move || std::future::ready(render_metrics())))
            .route("/healthz", get(|| std::future::ready("ok")))
            .route("/readyz", get(readyz));
        let mut rx = self.stopped();
        self.spawn(async move {
            let serve = axum::serve(l, app).with_graceful_shutdown(async move {
                let _ = rx.wait_for(|s| *s).await;
            });
            if let Err(e) = serve.await {
                tracing::error!("HTTP server: {e}");
            }
        });
        Ok(Some(local))
    }

    /// Signals stop and waits (a bounded time) for every server and task.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, t).await;
        }
    }
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
        let (listener, grpc_addr) = bind(cfg.listen_addr).await?;
        crate::net::set_source_from(grpc_addr);
        let open_err = |e: ringkv_raft::Error| StartError::Open { path: cfg.data_dir.clone(), source: e.into() };
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
        let kv = KvService::new(loop_handle.clone(), raft.engine.clone(), cfg.limits.clone(), metrics.clone());
        let admin = AdminService::new(node_id, loop_handle.clone(), book.clone(), cfg.limits.request_timeout());
        let routes = tonic::transport::Server::builder()
            .add_service(ShardKvServer::new(kv).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
            .add_service(AdminServer::new(admin))
            .add_service(raft.raft_service().map_err(open_err)?);
        serving.grpc(listener, routes)?;
        let m = metrics.clone();
        let running = raft.running_flag();
        let ready = move || running.load(std::sync::atomic::Ordering::SeqCst);
        let http_addr = serving.http(cfg.http_addr, move || m.render(), ready, HttpRouter::new()).await?;
        if !cfg.placement.is_empty() {
            let advertise = cfg.advertise_addr.clone().unwrap_or_else(|| grpc_addr.to_string());
            let hb = Heartbeat {
                node_id,
                register: RegisterNodeRequest {
                    node_id,
                    address: advertise,
                    http_address: http_addr.map(|a| a.to_string()).unwrap_or_default(),
                    zone: cfg.zone.clone(),
                    capacity: cfg.capacity,
                },
                client: Arc::new(PlacementClient::new(cfg.placement.clone())),
                loop_handle: loop_handle.clone(),
                address_book: book.clone(),
                interval: Duration::from_millis(cfg.heartbeat_ms),
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
