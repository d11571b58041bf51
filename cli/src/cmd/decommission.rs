//! `ringkv node decommission ID --wait`: follows a decommission to its end
//! with a progress bar (replicas remaining, rate, ETA), and when nothing has
//! moved for a while names the shards still on the node and why each is
//! stuck — the operator in flight and what its step waits for, or the reason
//! the scheduler gives for not moving it — instead of a bar that stalls in
//! silence.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};
use ringkv_proto::placement::{ListNodesRequest, ListOperatorsRequest, NodeState};

use super::ops::{operator_row, shard_map, PlacementConn};

const POLL: Duration = Duration::from_secs(1);

/// Replicas still on `node` (shard id, replica id), by the shard map.
async fn remaining(node: u64, c: &PlacementConn) -> anyhow::Result<Vec<(u64, u64)>> {
    let map = shard_map(c).await?;
    Ok(map
        .shards
        .iter()
        .filter_map(|s| s.shard.as_ref())
        .filter_map(|d| d.replicas.iter().find(|r| r.node_id == node).map(|r| (d.id, r.replica_id)))
        .collect())
}

async fn node_state(node: u64, c: &PlacementConn) -> anyhow::Result<i32> {
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move { p.list_nodes(ListNodesRequest {}).await })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))?;
    r.nodes.iter().find(|n| n.id == node).map(|n| n.state).ok_or_else(|| anyhow::anyhow!("node {node} is gone"))
}

/// Why each replica still on `node` has not moved.
async fn explain(node: u64, left: &[(u64, u64)], c: &PlacementConn) -> anyhow::Result<Vec<String>> {
    let ops = c
        .client()?
        .call(c.timeout(), |mut p| async move { p.list_operators(ListOperatorsRequest {}).await })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))?;
    Ok(left
        .iter()
        .map(|(shard, replica)| {
            let why = if let Some(o) = ops.operators.iter().find(|o| o.shard_id == *shard) {
                let row = operator_row(o);
                format!(
                    "operator {} ({} → {}) at step {} for {}s {}",
                    row.id, row.from_node, row.to_node, row.step, row.step_age_secs, row.note
                )
            } else if let Some(b) = ops.blocked.iter().find(|b| b.shard_id == *shard) {
                b.reason.clone()
            } else {
                "not scheduled yet".to_string()
            };
            format!("n{node} still has replica {replica} of shard {shard}: {why}")
        })
        .collect())
}

/// Waits until `node` is REMOVED, showing progress; explains stalls longer
/// than `stall`; gives up (the decommission goes on) after `timeout`.
pub async fn wait(node: u64, c: &PlacementConn, stall: Duration, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let first = remaining(node, c).await?;
    let bar = ProgressBar::new(first.len() as u64);
    bar.set_style(
        ProgressStyle::with_template(
            "{bar:40} {pos}/{len} replicas moved off node {msg} [{elapsed}, {per_sec}, ETA {eta}]",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(node.to_string());
    let (mut last_left, mut last_change, mut explained) = (first.len(), Instant::now(), false);
    loop {
        let left = remaining(node, c).await?;
        bar.set_position((first.len().saturating_sub(left.len())) as u64);
        if left.len() != last_left {
            (last_left, last_change, explained) = (left.len(), Instant::now(), false);
        }
        if left.is_empty() && node_state(node, c).await? == NodeState::Removed as i32 {
            bar.finish();
            println!("node {node} is REMOVED: it holds no replica (took {:.0?})", start.elapsed());
            return Ok(());
        }
        if last_change.elapsed() >= stall && !explained {
            bar.suspend(|| -> anyhow::Result<()> {
                println!("nothing moved for {:.0?}:", last_change.elapsed());
                Ok(())
            })?;
            for line in explain(node, &left, c).await? {
                bar.suspend(|| println!("  {line}"));
            }
            explained = true;
        }
        if start.elapsed() >= timeout {
            bar.abandon();
            anyhow::bail!(
                "gave up waiting after {timeout:?}: node {node} still holds {} replicas (the decommission goes on; `ringkv operator list` shows it)",
                left.len()
            );
        }
        tokio::time::sleep(POLL).await;
    }
}
