//! `ringkv playground`: a local cluster in one command. For now it runs the
//! storenodes in this process with a static shard map (placement and the
//! router come next); data survives a restart with the same `--dir`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use ringkv_storenode::testkit::LocalCluster;
use serde::Serialize;

#[derive(clap::Args)]
pub struct Args {
    /// Where data and playground.json live.
    #[arg(long, default_value = "ringkv-playground")]
    dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    storenodes: u64,
    #[arg(long, default_value_t = 16)]
    shards: u64,
}

#[derive(Serialize)]
struct ProcessInfo {
    role: &'static str,
    id: u64,
    grpc: String,
    http: String,
    pid: u32,
    data_dir: PathBuf,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(a.storenodes >= 1 && a.shards >= 1, "--storenodes and --shards must be at least 1");
    std::fs::create_dir_all(&a.dir).with_context(|| format!("creating {}", a.dir.display()))?;
    // Fixed ports so a second start with the same --dir finds the same cluster.
    let cluster = LocalCluster::start_at(&a.dir, a.storenodes, a.shards, 20160)
        .await
        .map_err(|e| anyhow::anyhow!("starting the cluster: {e}"))?;
    cluster
        .wait_for_leaders(Duration::from_secs(30))
        .await
        .map_err(|e| anyhow::anyhow!("waiting for shard leaders: {e}"))?;
    let procs: Vec<ProcessInfo> = cluster
        .configs
        .iter()
        .map(|c| ProcessInfo {
            role: "storenode",
            id: c.node_id,
            grpc: c.listen_addr.to_string(),
            http: c.http_addr.map(|a| a.to_string()).unwrap_or_default(),
            pid: std::process::id(),
            data_dir: c.data_dir.clone(),
        })
        .collect();
    let json = serde_json::to_string_pretty(&procs)?;
    std::fs::write(a.dir.join("playground.json"), json)?;
    println!("ringkv playground: {} storenodes, {} shards, data in {}", a.storenodes, a.shards, a.dir.display());
    for p in &procs {
        println!("  storenode {}  gRPC {}  metrics http://{}/metrics", p.id, p.grpc, p.http);
    }
    println!("Try: ringkv bench --duration 5   (a separate benchmark cluster)");
    println!("Press Ctrl-C to stop.");
    super::shutdown_signal().await;
    println!("stopping…");
    cluster.shutdown().await;
    Ok(())
}
