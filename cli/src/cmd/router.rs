//! `ringkv router`: runs a router (gRPC Kv + HTTP gateway) until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use ringkv_common::limits::Limits;
use ringkv_router::{RouterConfig, RouterServer};

/// Flags, or the same keys in a TOML file (`--config`); a flag wins over
/// the file, the file over the default.
#[derive(clap::Args, serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of these settings (keys in snake_case).
    #[arg(long, env = "RINGKV_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line). Default text.
    #[arg(long, value_enum, env = "RINGKV_LOG_FORMAT")]
    #[serde(skip)]
    pub log_format: Option<super::LogFormat>,
    /// gRPC listen address (the Kv API). Default 127.0.0.1:6380.
    #[arg(long, env = "RINGKV_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP gateway address (/v1/kv/{key}, /metrics, /healthz). Default 127.0.0.1:8080.
    #[arg(long, env = "RINGKV_HTTP")]
    http: Option<SocketAddr>,
    /// Placement members' gRPC addresses, comma-separated. Default 127.0.0.1:6390.
    #[arg(long = "placement", env = "RINGKV_PLACEMENT", value_delimiter = ',')]
    placement: Vec<String>,
    /// Deadline of a request that names none, in milliseconds. Default 5000.
    #[arg(long, env = "RINGKV_TIMEOUT_MS")]
    timeout_ms: Option<u64>,
    /// Requests in flight before new ones are shed (gRPC RESOURCE_EXHAUSTED,
    /// HTTP 429). Default 10000.
    #[arg(long, env = "RINGKV_MAX_INFLIGHT")]
    max_inflight: Option<usize>,
    /// Log API calls slower than this many milliseconds once, at WARN, with
    /// their request id and every hop (0: every call). Default 500.
    #[arg(long, env = "RINGKV_SLOW_REQUEST_MS")]
    slow_request_ms: Option<u64>,
    /// How single-key calls reach storenodes: `batch` (many per message over
    /// one stream per storenode) or `unary` (a gRPC call each). Default batch.
    #[arg(long, value_enum, env = "RINGKV_SHARD_CALLS")]
    shard_calls: Option<ShardCalls>,
}

/// How the router sends single-key calls to storenodes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardCalls {
    /// Over one ShardKv Batch stream per storenode, coalesced.
    Batch,
    /// One unary gRPC call each.
    Unary,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let f: Args = match &a.config {
        Some(p) => super::load_toml(p)?,
        None => Args::default(),
    };
    let placement = if !a.placement.is_empty() {
        a.placement
    } else if !f.placement.is_empty() {
        f.placement
    } else {
        vec![super::defaults::PLACEMENT_ADDR.to_string()]
    };
    for p in &placement {
        ringkv_common::net::check_host_port(p).map_err(|e| anyhow::anyhow!("--placement {p:?}: {e}"))?;
    }
    let timeout_ms = a.timeout_ms.or(f.timeout_ms).unwrap_or(5000);
    anyhow::ensure!(timeout_ms > 0, "--timeout-ms must be positive");
    let cfg = RouterConfig {
        listen_addr: a.listen.or(f.listen).unwrap_or_else(|| ([127, 0, 0, 1], super::defaults::ROUTER_PORT).into()),
        http_addr: Some(
            a.http.or(f.http).unwrap_or_else(|| ([127, 0, 0, 1], super::defaults::ROUTER_HTTP_PORT).into()),
        ),
        placement,
        default_timeout: Duration::from_millis(timeout_ms),
        limits: Limits::default(),
        max_inflight: a.max_inflight.or(f.max_inflight).unwrap_or(10_000).max(1),
        slow_request: Duration::from_millis(a.slow_request_ms.or(f.slow_request_ms).unwrap_or(500)),
        batch_calls: a.shard_calls.or(f.shard_calls).unwrap_or(ShardCalls::Batch) == ShardCalls::Batch,
    };
    let h = RouterServer::start(cfg).await?;
    println!("router serving gRPC on {} and HTTP on {:?}", h.grpc_addr, h.http_addr);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    h.shutdown().await;
    Ok(())
}
