//! `ringkv storenode`: runs one storenode until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use ringkv_storenode::config::Peer;
use ringkv_storenode::{Storenode, StorenodeConfig};

#[derive(clap::Args)]
pub struct Args {
    /// TOML config file; flags given on the command line override it.
    #[arg(long, env = "RINGKV_CONFIG")]
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line). Default text.
    #[arg(long, value_enum, env = "RINGKV_LOG_FORMAT")]
    pub log_format: Option<super::LogFormat>,
    /// Log ShardKv calls slower than this many milliseconds once, at WARN,
    /// with their request id and every hop (0: every call). Default 500.
    #[arg(long, env = "RINGKV_SLOW_REQUEST_MS")]
    slow_request_ms: Option<u64>,
    #[arg(long, env = "RINGKV_NODE_ID")]
    node_id: Option<u64>,
    /// gRPC listen address.
    #[arg(long, env = "RINGKV_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "RINGKV_HTTP")]
    http: Option<SocketAddr>,
    /// The address other nodes and routers dial (HOST:PORT), when it is not
    /// the listen address (a wildcard listen, NAT, a container's name).
    #[arg(long, env = "RINGKV_ADVERTISE")]
    advertise: Option<String>,
    #[arg(long, env = "RINGKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Another storenode, as ID=ADDRESS (repeatable).
    #[arg(long = "peer", env = "RINGKV_PEER", value_delimiter = ',')]
    peers: Vec<String>,
    /// A placement member's gRPC address (repeatable).
    #[arg(long = "placement", env = "RINGKV_PLACEMENT", value_delimiter = ',')]
    placement: Vec<String>,
    /// Zone (failure domain) of this node: replicas of a shard go to different zones.
    #[arg(long, env = "RINGKV_ZONE")]
    zone: Option<String>,
    /// Raft tick in milliseconds.
    #[arg(long, env = "RINGKV_RAFT_TICK_MS")]
    raft_tick_ms: Option<u64>,
    /// Compact a replica's log past this many applied entries.
    #[arg(long, env = "RINGKV_COMPACT_LOG_ENTRIES")]
    compact_log_entries: Option<u64>,
    /// Measure the sizes of the shards this node leads (for size-based
    /// splits) every this many milliseconds. Default 10000.
    #[arg(long, env = "RINGKV_SIZE_CHECK_MS")]
    size_check_ms: Option<u64>,
}

fn parse_peer(s: &str) -> anyhow::Result<Peer> {
    let Some((id, addr)) = s.split_once('=') else { bail!("--peer {s:?}: expected ID=ADDRESS") };
    let node_id = id.parse().with_context(|| format!("--peer {s:?}: bad node id"))?;
    Ok(Peer { node_id, address: addr.to_string() })
}

pub fn config(a: &Args) -> anyhow::Result<StorenodeConfig> {
    let mut cfg = match &a.config {
        Some(p) => StorenodeConfig::from_file(p)?,
        None => StorenodeConfig::default(),
    };
    if let Some(v) = a.node_id {
        cfg.node_id = v;
        if a.data_dir.is_none() && a.config.is_none() {
            cfg.data_dir = PathBuf::from(format!("ringkv-data/storenode-{v}"));
        }
    }
    if let Some(v) = a.listen {
        cfg.listen_addr = v;
    }
    if let Some(v) = a.http {
        cfg.http_addr = Some(v);
    }
    if let Some(v) = &a.data_dir {
        cfg.data_dir = v.clone();
    }
    if let Some(v) = &a.advertise {
        ringkv_common::net::check_host_port(v).map_err(|e| anyhow::anyhow!("--advertise {v:?}: {e}"))?;
        cfg.advertise_addr = Some(v.clone());
    }
    for p in &a.peers {
        cfg.peers.push(parse_peer(p)?);
    }
    for p in &a.placement {
        ringkv_common::net::check_host_port(p).map_err(|e| anyhow::anyhow!("--placement {p:?}: {e}"))?;
        cfg.placement.push(p.clone());
    }
    if let Some(z) = &a.zone {
        cfg.zone = z.clone();
    }
    if let Some(v) = a.raft_tick_ms {
        cfg.raft.tick_ms = v;
    }
    if let Some(v) = a.size_check_ms {
        cfg.size_check_ms = v;
    }
    if let Some(v) = a.compact_log_entries {
        cfg.raft.compact_log_entries = v;
    }
    if let Some(v) = a.slow_request_ms {
        cfg.slow_request_ms = v;
    }
    cfg.validate()?;
    Ok(cfg)
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = config(&a)?;
    let h = Storenode::start(cfg).await?;
    println!("storenode {} serving gRPC on {} (http {:?})", h.node_id, h.grpc_addr, h.http_addr);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    h.shutdown().await;
    Ok(())
}
