//! Wires a router into a process: the shard-map refresher, the gRPC `Kv`
//! service, and the HTTP gateway (with /metrics, /healthz, /readyz).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringkv_proto::api::kv_server::KvServer;
use ringkv_storenode::config::Limits;
use ringkv_storenode::placement_client::PlacementClient;
use ringkv_storenode::server::{bind, incoming, spawn_http, StartError, SHUTDOWN_GRACE};
use tokio::sync::watch;

use crate::routing::Router;
use crate::service::KvService;
use crate::shard_map::ShardMapCache;

#[derive(Clone, Debug)]
pub struct RouterConfig {
    pub listen_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    /// Placement members' gRPC addresses.
    pub placement: Vec<String>,
    /// Deadline of a request that names none.
    pub default_timeout: Duration,
    pub limits: Limits,
    /// Shard calls in flight before new requests are shed (HTTP 429).
    pub max_inflight: usize,
}

pub struct RouterServer;

pub struct RouterHandle {
    pub grpc_addr: SocketAddr,
    pub http_addr: Option<SocketAddr>,
    pub map: Arc<ShardMapCache>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl RouterServer {
    pub async fn start(cfg: RouterConfig) -> Result<RouterHandle, StartError> {
        if cfg.placement.is_empty() {
            return Err(StartError::Other("a router needs at least one placement address".into()));
        }
        let (listener, grpc_addr) = bind(cfg.listen_addr).await?;
        let (stop, stop_rx) = watch::channel(false);
        let map = ShardMapCache::new(Arc::new(PlacementClient::new(cfg.placement.clone())));
        let router = Arc::new(Router::new(map.clone(), cfg.max_inflight));
        let svc = KvService::new(router, cfg.limits.clone(), cfg.default_timeout);
        let mut rx = stop_rx.clone();
        let grpc = tonic::transport::Server::builder()
            .add_service(KvServer::new(svc.clone()))
            .serve_with_incoming_shutdown(incoming(listener)?, async move {
                let _ = rx.wait_for(|s| *s).await;
            });
        let mut tasks = vec![
            tokio::spawn(map.clone().run(stop_rx.clone())),
            tokio::spawn(async move {
                if let Err(e) = grpc.await {
                    tracing::error!("gRPC server: {e}");
                }
            }),
        ];
        let mut http_addr = None;
        if let Some(addr) = cfg.http_addr {
            let (l, local) = bind(addr).await?;
            http_addr = Some(local);
            let routes = crate::http::routes(svc, cfg.default_timeout);
            tasks.push(spawn_http(l, render_metrics, routes, stop_rx));
        }
        tracing::info!(%grpc_addr, ?http_addr, "router started");
        Ok(RouterHandle { grpc_addr, http_addr, map, stop, tasks })
    }
}

/// The router's own metrics (the default prometheus registry).
fn render_metrics() -> String {
    use prometheus::Encoder;
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&prometheus::gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

impl RouterHandle {
    pub async fn shutdown(mut self) {
        let _ = self.stop.send(true);
        for t in self.tasks.drain(..) {
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, t).await;
        }
    }
}
