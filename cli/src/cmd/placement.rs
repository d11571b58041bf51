//! `ringkv placement`: runs one member of the placement group until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ringkv_placement::{PlacementConfig, PlacementServer, PlacementSettings};
use ringkv_storenode::config::RaftSettings;

#[derive(clap::Args)]
pub struct Args {
    /// This member's id (1, 2, 3…).
    #[arg(long, default_value_t = 1)]
    id: u64,
    /// gRPC listen address.
    #[arg(long, default_value = "127.0.0.1:2379")]
    listen: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long)]
    http: Option<SocketAddr>,
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Every member as ID=ADDRESS, this one included (repeatable). Default:
    /// a single member at --listen.
    #[arg(long = "member")]
    members: Vec<String>,
    /// Replicas per shard, and storenodes needed before the first shards exist.
    #[arg(long, default_value_t = 3)]
    replication_factor: usize,
    /// Shards created when the cluster bootstraps.
    #[arg(long, default_value_t = 16)]
    initial_shards: u64,
    /// Seconds without a heartbeat before a storenode is shown down.
    #[arg(long, default_value_t = 10)]
    down_after_secs: u64,
    /// Raft tick in milliseconds.
    #[arg(long, default_value_t = 100)]
    raft_tick_ms: u64,
}

pub fn parse_id_addr(flag: &str, s: &str) -> anyhow::Result<(u64, String)> {
    let Some((id, addr)) = s.split_once('=') else { bail!("{flag} {s:?}: expected ID=ADDRESS") };
    let id: u64 = id.parse().with_context(|| format!("{flag} {s:?}: bad id"))?;
    addr.parse::<SocketAddr>().with_context(|| format!("{flag} {s:?}: bad address (want IP:PORT)"))?;
    Ok((id, addr.to_string()))
}

pub fn config(a: &Args) -> anyhow::Result<PlacementConfig> {
    let members = if a.members.is_empty() {
        vec![(a.id, a.listen.to_string())]
    } else {
        a.members.iter().map(|m| parse_id_addr("--member", m)).collect::<anyhow::Result<Vec<_>>>()?
    };
    if !members.iter().any(|(id, _)| *id == a.id) {
        bail!("--id {} is not among the --member list", a.id);
    }
    if a.replication_factor == 0 || a.initial_shards == 0 {
        bail!("--replication-factor and --initial-shards must be at least 1");
    }
    let raft = RaftSettings { tick_ms: a.raft_tick_ms, ..Default::default() };
    Ok(PlacementConfig {
        member_id: a.id,
        listen_addr: a.listen,
        http_addr: a.http,
        data_dir: a.data_dir.clone().unwrap_or_else(|| PathBuf::from(format!("ringkv-data/placement-{}", a.id))),
        members,
        raft,
        settings: PlacementSettings {
            replication_factor: a.replication_factor,
            initial_shards: a.initial_shards,
            down_after: Duration::from_secs(a.down_after_secs),
            ..Default::default()
        },
    })
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = config(&a)?;
    let h = PlacementServer::start(cfg).await?;
    println!("placement {} serving gRPC on {} (http {:?})", h.member_id, h.grpc_addr, h.http_addr);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    h.shutdown().await;
    Ok(())
}
