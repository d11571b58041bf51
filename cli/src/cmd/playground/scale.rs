//! `ringkv playground scale-out` and `scale-in`: a running playground
//! changes shape, as with `tiup playground scale-out --kv 1` / `scale-in`.
//! Both find the playground through `DIR/playground.json`.
//!
//! **scale-out** starts storenodes exactly as the playground starts its own
//! (same binary, flags, log files) under the next node ids — after the
//! largest in playground.json and the largest placement has ever seen, as a
//! removed node's id is never accepted again — on free ports. They run in a
//! process group of their own, so they outlive this command and a Ctrl-C
//! typed at it; each is recorded in playground.json as soon as it is
//! started (so that stopping the playground stops it even if this command
//! is interrupted), then awaited until placement lists it UP. One that does
//! not come up is stopped and its record removed.
//!
//! **scale-in** asks placement to decommission the node (`SetNodeState`
//! DRAINING: placement moves every replica off it, then marks it REMOVED),
//! prints the replicas left on it as they go, and once placement says
//! REMOVED stops the process and drops its record. A refusal from placement
//! is printed as it came and nothing is stopped; running out of time leaves
//! the node draining and running.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{GetShardMapRequest, ListNodesRequest, Node, NodeState, SetNodeStateRequest};

use super::file::{self, ProcessInfo, Role};
use super::ports::Picker;
use super::{command, procs, storenode_args, storenode_info, DEFAULT_DIR, STOP_GRACE};

/// `ringkv playground scale-out`.
#[derive(clap::Args)]
pub struct ScaleOutArgs {
    /// How many storenodes to add.
    #[arg(long, default_value_t = 1)]
    storenodes: u64,
    /// The running playground's directory (its --dir).
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// Give up on a new storenode that placement does not list UP within
    /// this many seconds (it is then stopped).
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
    /// Passed on to the new storenodes (as the playground's own start does;
    /// a scale-out does not know what the start was given).
    #[arg(long, value_enum)]
    log_format: Option<crate::cmd::LogFormat>,
    /// Passed on to the new storenodes.
    #[arg(long)]
    slow_request_ms: Option<u64>,
}

impl ScaleOutArgs {
    /// The flags the new storenodes get on top of the playground's.
    fn passed_on(&self) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(f) = self.log_format {
            args.extend(["--log-format".to_string(), f.as_str().to_string()]);
        }
        if let Some(ms) = self.slow_request_ms {
            args.extend(["--slow-request-ms".to_string(), ms.to_string()]);
        }
        args
    }
}

/// `ringkv playground scale-in`.
#[derive(clap::Args)]
pub struct ScaleInArgs {
    /// The storenode to decommission (its node id, as in playground.json and `ringkv node list`).
    #[arg(long)]
    node: u64,
    /// The running playground's directory (its --dir).
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    /// How long to wait for placement to move the replicas off and mark the
    /// node removed: seconds, or with a unit (90s, 10m, 1h).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    timeout: Duration,
}

/// `90`, `90s`, `10m` or `1h` (as `ringkv chaos --duration`).
fn parse_duration(s: &str) -> Result<Duration, String> {
    super::super::chaos::parse_duration(s)
}

/// One placement call's deadline.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often progress is polled.
const POLL: Duration = Duration::from_millis(500);
/// Progress is printed when it changes, and at least this often.
const PROGRESS_EVERY: Duration = Duration::from_secs(15);

/// A client of the playground's placement members, as recorded.
fn placement(procs: &[ProcessInfo]) -> anyhow::Result<PlacementClient> {
    let addrs: Vec<String> = procs.iter().filter(|p| p.role == Role::Placement).map(|p| p.grpc.clone()).collect();
    if addrs.is_empty() {
        bail!("playground.json lists no placement member");
    }
    Ok(PlacementClient::new(addrs))
}

async fn list_nodes(pc: &PlacementClient) -> Result<Vec<Node>, tonic::Status> {
    pc.call(CALL_TIMEOUT, |mut c| async move { c.list_nodes(ListNodesRequest {}).await }).await.map(|r| r.nodes)
}

fn not_answering(dir: &std::path::Path, pc: &PlacementClient, s: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "the playground in {} does not answer (placement {}: {}); is `ringkv playground --dir {}` running?",
        dir.display(),
        pc.members().join(","),
        s.message(),
        dir.display()
    )
}

fn state_name(state: i32) -> String {
    NodeState::try_from(state).map_or_else(|_| format!("state {state}"), |s| s.as_str_name().to_string())
}

pub async fn scale_out(a: ScaleOutArgs) -> anyhow::Result<()> {
    if a.storenodes == 0 || a.storenodes > 50 {
        bail!("--storenodes must be 1..=50");
    }
    let passed_on = a.passed_on();
    let dir = a.dir;
    let recorded = file::read(&dir)?;
    let pc = placement(&recorded)?;
    let known = list_nodes(&pc).await.map_err(|s| not_answering(&dir, &pc, &s))?;
    let placement_addrs: Vec<String> = pc.members().to_vec();

    // Pick ids and ports, start, and record, under the lock: a second
    // scale-out at the same time must not pick the same ids.
    let mut started: Vec<(ProcessInfo, std::process::Child)> = Vec::new();
    let spawned = (|| -> anyhow::Result<()> {
        let _lock = file::lock(&dir)?;
        let mut all = file::read(&dir)?;
        let largest = all
            .iter()
            .filter(|p| p.role == Role::Storenode)
            .map(|p| p.id)
            .chain(known.iter().map(|n| n.id))
            .max()
            .unwrap_or(0);
        let mut picker = Picker::new([]);
        for id in (largest + 1..).take(a.storenodes as usize) {
            let grpc = picker.pick(&format!("storenode {id} gRPC"), None)?.port;
            let http = picker.pick(&format!("storenode {id} HTTP"), None)?.port;
            let mut info = storenode_info(&dir, id, grpc, http);
            let mut args = storenode_args(&info, &placement_addrs);
            args.extend(passed_on.iter().cloned());
            let mut cmd = command(&info, &args)?;
            // A process group of its own: it outlives this command, and a
            // Ctrl-C typed here does not reach it.
            std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
            let child = cmd.spawn().with_context(|| format!("starting storenode {id}"))?;
            info.pid = child.id();
            all.push(info.clone());
            file::write(&dir, &all)?;
            println!("storenode {id}: started (pid {}, gRPC {}, log {})", info.pid, info.grpc, info.log.display());
            started.push((info, child));
        }
        Ok(())
    })();
    let result = match spawned {
        Ok(()) => wait_up(&pc, &mut started, Duration::from_secs(a.ready_timeout_secs)).await,
        Err(e) => Err(e),
    };
    if let Err(e) = result {
        // Nothing half-done stays behind: stop what was started, forget it.
        let infos: Vec<ProcessInfo> = started.iter().map(|(i, _)| i.clone()).collect();
        let stopped = tokio::task::spawn_blocking(move || procs::stop(&infos, STOP_GRACE)).await?;
        for (_, mut child) in started {
            let _ = child.try_wait();
        }
        let _lock = file::lock(&dir)?;
        let mut all = file::read(&dir)?;
        all.retain(|p| !(p.role == Role::Storenode && stopped.iter().any(|s| s.id == p.id && s.pid == p.pid)));
        file::write(&dir, &all)?;
        return Err(e);
    }
    for (info, _) in &started {
        println!("storenode {} is up: gRPC {}, HTTP {}, pid {}", info.id, info.grpc, info.http, info.pid);
    }
    println!("recorded in {}; stopping the playground stops them too", file::path(&dir).display());
    Ok(())
}

/// Until placement lists every started node UP; an error when one exits or
/// the time is up.
async fn wait_up(
    pc: &PlacementClient,
    started: &mut [(ProcessInfo, std::process::Child)],
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut last_error = String::new();
    loop {
        for (info, child) in started.iter_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                bail!("storenode {} exited during start-up ({status}); see {}", info.id, info.log.display());
            }
        }
        match list_nodes(pc).await {
            Ok(nodes) => {
                let up = |id: u64| nodes.iter().any(|n| n.id == id && n.state == NodeState::Up as i32);
                if started.iter().all(|(i, _)| up(i.id)) {
                    return Ok(());
                }
            }
            Err(s) => last_error = format!(" (placement: {})", s.message()),
        }
        if Instant::now() > deadline {
            let waiting: Vec<String> = started.iter().map(|(i, _)| i.log.display().to_string()).collect();
            bail!(
                "placement did not list the new storenodes UP within {timeout:?}{last_error}; logs: {}",
                waiting.join(", ")
            );
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Replicas placed on `node` by the shard map.
async fn replicas_on(pc: &PlacementClient, node: u64) -> Result<usize, tonic::Status> {
    let map = pc.call(CALL_TIMEOUT, |mut c| async move { c.get_shard_map(GetShardMapRequest {}).await }).await?;
    Ok(map
        .shards
        .iter()
        .filter_map(|s| s.shard.as_ref())
        .flat_map(|d| &d.replicas)
        .filter(|r| r.node_id == node)
        .count())
}

pub async fn scale_in(a: ScaleInArgs) -> anyhow::Result<()> {
    let dir = a.dir;
    let id = a.node;
    let recorded = file::read(&dir)?;
    let Some(info) = recorded.iter().find(|p| p.role == Role::Storenode && p.id == id).cloned() else {
        let ids: Vec<String> =
            recorded.iter().filter(|p| p.role == Role::Storenode).map(|p| p.id.to_string()).collect();
        bail!(
            "node {id} is not a storenode of the playground in {} (its storenodes: {})",
            dir.display(),
            if ids.is_empty() { "none".to_string() } else { ids.join(", ") }
        );
    };
    let pc = placement(&recorded)?;
    let nodes = list_nodes(&pc).await.map_err(|s| not_answering(&dir, &pc, &s))?;
    let already_removed = nodes.iter().any(|n| n.id == id && n.state == NodeState::Removed as i32);
    if already_removed {
        println!("storenode {id} is already removed in placement");
    } else {
        pc.call(CALL_TIMEOUT, |mut c| async move {
            c.set_node_state(SetNodeStateRequest { node_id: id, state: NodeState::Draining as i32, dry_run: false })
                .await
        })
        .await
        .map_err(|s| {
            anyhow::anyhow!(
                "placement refused to decommission storenode {id}: {:?}: {} (nothing was stopped)",
                s.code(),
                s.message()
            )
        })?;
        println!("storenode {id} is draining: placement moves its replicas to the other storenodes");
        wait_removed(&pc, id, a.timeout).await?;
    }

    let stopped = {
        let info = info.clone();
        tokio::task::spawn_blocking(move || procs::stop(std::slice::from_ref(&info), STOP_GRACE)).await?
    };
    if stopped.is_empty() {
        println!("storenode {id} (pid {}) was not running", info.pid);
    } else {
        println!("storenode {id} (pid {}) stopped", info.pid);
    }
    let _lock = file::lock(&dir)?;
    let mut all = file::read(&dir)?;
    all.retain(|p| !(p.role == Role::Storenode && p.id == id));
    file::write(&dir, &all)?;
    println!(
        "storenode {id} removed from {}; its data stays in {}",
        file::path(&dir).display(),
        info.data_dir.display()
    );
    Ok(())
}

/// Until placement lists `id` REMOVED (or no longer lists it), printing the
/// replicas left on it; an error with the count left when `timeout` passes.
async fn wait_removed(pc: &PlacementClient, id: u64, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let deadline = start + timeout;
    let mut shown: Option<(usize, i32)> = None;
    let mut shown_at = Instant::now();
    let mut last: Option<(usize, i32)> = None;
    let mut last_error = String::new();
    loop {
        match list_nodes(pc).await {
            Ok(nodes) => match nodes.iter().find(|n| n.id == id) {
                None => return Ok(()),
                Some(n) if n.state == NodeState::Removed as i32 => {
                    println!("storenode {id} is removed ({:.0}s)", start.elapsed().as_secs_f64());
                    return Ok(());
                }
                Some(n) => match replicas_on(pc, id).await {
                    Ok(count) => last = Some((count, n.state)),
                    Err(s) => last_error = format!("; placement: {}", s.message()),
                },
            },
            Err(s) => last_error = format!("; placement: {}", s.message()),
        }
        if let Some((count, state)) = last {
            if shown != last || shown_at.elapsed() >= PROGRESS_EVERY {
                println!(
                    "  {:>5.0}s  storenode {id}: {count} replicas left, {}",
                    start.elapsed().as_secs_f64(),
                    state_name(state)
                );
                shown = last;
                shown_at = Instant::now();
            }
        }
        if Instant::now() > deadline {
            let left = last.map_or_else(|| "an unknown number of".to_string(), |(c, _)| c.to_string());
            bail!(
                "storenode {id} was not decommissioned within {timeout:?}: {left} replicas remain on it{last_error}. \
                 It keeps running and draining; run scale-in again to keep waiting, or `ringkv node undrain {id}` to cancel"
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
