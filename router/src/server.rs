//! Wires a router into a process: the shard-map refresher, the gRPC `Kv`
//! service, and the HTTP gateway (with /metrics, /healthz, /readyz and the
//! console at /ui).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ringkv_common::limits::Limits;
use ringkv_common::placement_client::PlacementClient;
use ringkv_common::server::{bind, Serving, StartError};
use ringkv_proto::api::kv_server::KvServer;

use crate::routing::Router;
use crate::service::KvService;
use crate::shard_map::ShardMapCache;

/// A router's settings.
#[derive(Clone, Debug)]
pub struct RouterConfig {
    /// gRPC address of the `Kv` service; port 0 picks a free one.
    pub listen_addr: SocketAddr,
    /// HTTP address of the gateway and /metrics, /healthz, /readyz; `None`: no HTTP.
    pub http_addr: Option<SocketAddr>,
    /// Placement members' gRPC addresses.
    pub placement: Vec<String>,
    /// Deadline of a request that names none.
    pub default_timeout: Duration,
    /// Request limits, checked before a request reaches a storenode.
    pub limits: Limits,
    /// Shard calls in flight before new requests are shed (HTTP 429).
    pub max_inflight: usize,
    /// Calls slower than this are logged once at WARN with every hop
    /// (zero: every call).
    pub slow_request: Duration,
    /// Whether single-key calls go over each storenode's ShardKv Batch
    /// stream (else one unary call each).
    pub batch_calls: bool,
}

/// Entry point: [`RouterServer::start`] runs one router in this process.
pub struct RouterServer;

/// A running router; [`RouterHandle::shutdown`] stops it.
pub struct RouterHandle {
    /// The bound gRPC address.
    pub grpc_addr: SocketAddr,
    /// The bound HTTP address, if HTTP is served.
    pub http_addr: Option<SocketAddr>,
    /// The router's copy of the shard map.
    pub map: Arc<ShardMapCache>,
    serving: Serving,
}

impl RouterServer {
    /// Starts a router on the current tokio runtime; fails without a placement address.
    pub async fn start(cfg: RouterConfig) -> Result<RouterHandle, StartError> {
        if cfg.placement.is_empty() {
            return Err(StartError::Other("a router needs at least one placement address".into()));
        }
        let (listener, grpc_addr) = bind(cfg.listen_addr).await?;
        ringkv_common::net::set_source_from(grpc_addr);
        let mut serving = Serving::default();
        let placement = Arc::new(PlacementClient::new(cfg.placement.clone()));
        let map = ShardMapCache::new(placement.clone());
        let router = Arc::new(Router::new(map.clone(), cfg.max_inflight).with_batch_calls(cfg.batch_calls));
        let svc = KvService::new(router, cfg.limits.clone(), cfg.default_timeout).with_slow_request(cfg.slow_request);
        let stopped = serving.stopped();
        serving.spawn(map.clone().run(stopped));
        serving.grpc(listener, tonic::transport::Server::builder().add_service(KvServer::new(svc.clone())))?;
        let routes = crate::http::routes(svc, cfg.default_timeout).merge(crate::console::routes(placement));
        // Ready once it knows where shards are.
        let m = map.clone();
        let http_addr = serving.http(cfg.http_addr, render_metrics, move || m.is_loaded(), routes).await?;
        tracing::info!(%grpc_addr, ?http_addr, "router started");
        Ok(RouterHandle { grpc_addr, http_addr, map, serving })
    }
}

fn render_metrics() -> String {
    crate::metrics::render()
}

impl RouterHandle {
    /// Stops serving and the map refresher, and waits for them.
    pub async fn shutdown(self) {
        self.serving.stop().await;
    }
}
