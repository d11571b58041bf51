//! `ringkv router`: runs a router (gRPC Kv + HTTP gateway) until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use ringkv_router::{RouterConfig, RouterServer};
use ringkv_storenode::config::Limits;

#[derive(clap::Args)]
pub struct Args {
    /// gRPC listen address (the Kv API).
    #[arg(long, default_value = "127.0.0.1:6380")]
    listen: SocketAddr,
    /// HTTP gateway address (/v1/kv/{key}, /metrics, /healthz).
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// A placement member's gRPC address (repeatable).
    #[arg(long = "placement", env = "RINGKV_PLACEMENT", value_delimiter = ',', default_value = "127.0.0.1:2379")]
    placement: Vec<String>,
    /// Deadline of a request that names none, in milliseconds.
    #[arg(long, default_value_t = 5000)]
    timeout_ms: u64,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    for p in &a.placement {
        p.parse::<SocketAddr>().with_context(|| format!("--placement {p:?}: expected IP:PORT"))?;
    }
    anyhow::ensure!(a.timeout_ms > 0, "--timeout-ms must be positive");
    let cfg = RouterConfig {
        listen_addr: a.listen,
        http_addr: Some(a.http),
        placement: a.placement,
        default_timeout: Duration::from_millis(a.timeout_ms),
        limits: Limits::default(),
    };
    let h = RouterServer::start(cfg).await?;
    println!("router serving gRPC on {} and HTTP on {:?}", h.grpc_addr, h.http_addr);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    h.shutdown().await;
    Ok(())
}
