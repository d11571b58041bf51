//! Splits: which shards to split, and splitting one.
//!
//! Shard leaders report their shard's approximate size and load with every
//! heartbeat ([`ShardStats`], kept by the placement leader only). A shard
//! whose data passes `shard_max_bytes` is split where its bytes halve (the
//! leader measures); one serving more than `split_qps` in `split_detections`
//! reports in a row is split where its sampled load halves (TiKV's
//! load-based split), so a hot range spreads over two leaders that the
//! leader balancer then places apart.
//!
//! A split is no operator: it is one command of the shard's own log,
//! proposed by its leader. Placement allocates the new shard's ids, asks the
//! leader, and records both halves at once (heartbeats would bring them
//! too, the newer epoch winning). It is refused while an operator moves a
//! replica of the shard: the split would create the new shard's replicas on
//! the membership of the moment.

use std::collections::HashMap;

use ringkv_proto::placement::{placement_command::Op, ShardInfo, ShardUpdates, SplitShardResponse};
use tonic::Status;

use super::driver::Driver;
use crate::service::PlacementService;
use crate::state::{ClusterState, Reply};
use crate::PlacementSettings;

/// What a shard's leader last reported of its size and load.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ShardStats {
    /// The descriptor version the report was made under: stats of a shard
    /// from before its last split say nothing of it now.
    pub version: u64,
    /// Approximate bytes on disk (0: not measured yet).
    pub bytes: u64,
    /// Requests per second over the leader's last interval.
    pub qps: f64,
    /// Where the sampled load halves (0: too few samples).
    pub load_split_hash: u64,
    /// Reports in a row above `split_qps` with a hash to split at.
    pub hot_reports: u32,
}

impl ShardStats {
    /// Folds a new report into the stats.
    pub fn update(&mut self, version: u64, bytes: u64, qps: f64, load_split_hash: u64, settings: &PlacementSettings) {
        let hot = qps > settings.split_qps && load_split_hash != 0 && version == self.version;
        self.hot_reports = if hot { self.hot_reports + 1 } else { u32::from(qps > settings.split_qps) };
        if bytes != 0 || version != self.version {
            self.bytes = bytes;
        }
        self.version = version;
        self.qps = qps;
        self.load_split_hash = load_split_hash;
    }
}

/// A split to make: the shard, the hash (0: its middle by bytes) and why.
#[derive(Clone, Debug, PartialEq)]
pub struct PlannedSplit {
    /// The shard to split.
    pub shard_id: u64,
    /// Where (0: where its bytes halve, measured by the leader).
    pub split_hash: u64,
    /// "size" or "load".
    pub reason: &'static str,
}

/// The shards to split now, biggest first, at most `max_splits_per_pass`.
pub fn split_candidates(
    st: &ClusterState,
    stats: &HashMap<u64, ShardStats>,
    s: &PlacementSettings,
) -> Vec<PlannedSplit> {
    let mut out: Vec<(u64, PlannedSplit)> = Vec::new();
    for (id, info) in &st.shards {
        let Some(d) = &info.shard else { continue };
        let Some(x) = stats.get(id) else { continue };
        if x.version != d.epoch.unwrap_or_default().version || st.operator_on(*id).is_some() || info.leader_node_id == 0
        {
            continue;
        }
        if s.shard_max_bytes > 0 && x.bytes > s.shard_max_bytes {
            out.push((x.bytes, PlannedSplit { shard_id: *id, split_hash: 0, reason: "size" }));
        } else if s.split_detections > 0 && x.hot_reports >= s.split_detections {
            out.push((x.bytes, PlannedSplit { shard_id: *id, split_hash: x.load_split_hash, reason: "load" }));
        }
    }
    out.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.shard_id.cmp(&b.1.shard_id)));
    out.into_iter().take(s.max_splits_per_pass).map(|(_, p)| p).collect()
}

/// Splits `shard_id` at `split_hash` (0: its middle by bytes): allocates the
/// new shard's ids, has the leader split it, records both halves.
pub async fn split(
    svc: &PlacementService,
    driver: &Driver,
    st: &ClusterState,
    shard_id: u64,
    split_hash: u64,
    reason: &str,
) -> Result<SplitShardResponse, Status> {
    let info = st.shards.get(&shard_id).ok_or_else(|| Status::not_found(format!("shard {shard_id} is unknown")))?;
    let d = info.shard.as_ref().ok_or_else(|| Status::not_found(format!("shard {shard_id} has no descriptor")))?;
    if let Some(op) = st.operator_on(shard_id) {
        return Err(Status::failed_precondition(format!(
            "shard {shard_id} has operator {} in flight; split it once it is done (ringkv operator list)",
            op.id
        )));
    }
    if split_hash != 0 && !ringkv_common::hashing::splits(d.start, d.end, split_hash) {
        return Err(Status::invalid_argument(format!(
            "hash {split_hash:#018x} is not strictly inside shard {shard_id}'s range [{:#018x}, {})",
            d.start,
            if d.end == 0 { "2^64".to_string() } else { format!("{:#018x}", d.end) }
        )));
    }
    let (leader_node, status) = driver.leader_status(st, shard_id).await.map_err(Status::unavailable)?;
    let current = status.shard.unwrap_or_default();
    let count = current.replicas.len() as u32 + 1;
    let ids = match svc.propose(Op::AllocIds(ringkv_proto::placement::AllocIds { count })).await? {
        Reply::Ids(ids) if ids.len() == count as usize => ids,
        other => return Err(Status::internal(format!("allocating ids: unexpected reply {other:?}"))),
    };
    let req = ringkv_proto::raft::SplitShardRequest {
        shard_id,
        epoch: current.epoch,
        split_hash,
        new_shard_id: ids[0],
        new_replica_ids: ids[1..].to_vec(),
    };
    let resp = driver.split(st, leader_node, req).await.map_err(Status::from)?;
    let halves = [resp.left.clone(), resp.right.clone()];
    let shards = halves
        .into_iter()
        .flatten()
        .map(|d| ShardInfo { shard: Some(d), leader_node_id: leader_node, down_replicas: 0 })
        .collect();
    if let Err(e) = svc.propose(Op::UpdateShards(ShardUpdates { shards })).await {
        // The leaders' heartbeats bring the halves anyway.
        tracing::warn!(shard_id, "recording a split: {}", e.message());
    }
    svc.metrics.splits.with_label_values(&[reason]).inc();
    let right = resp.right.as_ref().map_or(0, |r| r.id);
    let at = resp.right.as_ref().map_or(0, |r| r.start);
    tracing::info!(shard_id, new_shard = right, at = format!("{at:#018x}"), reason, "shard split");
    Ok(SplitShardResponse { left: resp.left, right: resp.right })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ringkv_proto::meta::{Epoch, ShardDescriptor};
    use ringkv_proto::placement::Operator;

    fn state(shards: &[(u64, u64)]) -> ClusterState {
        let mut st = ClusterState::default();
        for &(id, version) in shards {
            let d = ShardDescriptor { id, epoch: Some(Epoch { version, conf_ver: 1 }), ..Default::default() };
            st.shards.insert(id, ShardInfo { shard: Some(d), leader_node_id: 1, down_replicas: 0 });
        }
        st
    }

    fn stats(version: u64, bytes: u64, hot_reports: u32) -> ShardStats {
        ShardStats { version, bytes, qps: 0.0, load_split_hash: 77, hot_reports }
    }

    #[test]
    fn big_shards_split_biggest_first_and_hot_ones_where_their_load_halves() {
        let s = PlacementSettings {
            shard_max_bytes: 100,
            split_detections: 3,
            max_splits_per_pass: 2,
            ..Default::default()
        };
        let st = state(&[(1, 1), (2, 1), (3, 1), (4, 1)]);
        let by =
            HashMap::from([(1, stats(1, 150, 0)), (2, stats(1, 300, 0)), (3, stats(1, 10, 3)), (4, stats(1, 99, 2))]);
        let got = split_candidates(&st, &by, &s);
        let want = vec![
            PlannedSplit { shard_id: 2, split_hash: 0, reason: "size" },
            PlannedSplit { shard_id: 1, split_hash: 0, reason: "size" },
        ];
        assert_eq!(got, want, "two per pass, biggest first");
        let s = PlacementSettings { max_splits_per_pass: 10, ..s };
        let got = split_candidates(&st, &by, &s);
        assert_eq!(got.len(), 3);
        assert_eq!(got[2], PlannedSplit { shard_id: 3, split_hash: 77, reason: "load" });
    }

    #[test]
    fn stale_stats_shards_with_an_operator_or_no_leader_are_left_alone() {
        let s = PlacementSettings { shard_max_bytes: 100, ..Default::default() };
        let mut st = state(&[(1, 2), (2, 1), (3, 1)]);
        st.operators.insert(9, Operator { id: 9, shard_id: 2, ..Default::default() });
        st.shards.get_mut(&3).unwrap().leader_node_id = 0;
        let by = HashMap::from([(1, stats(1, 500, 0)), (2, stats(1, 500, 0)), (3, stats(1, 500, 0))]);
        assert!(split_candidates(&st, &by, &s).is_empty());
    }

    #[test]
    fn a_shard_is_hot_only_in_reports_in_a_row_under_one_version() {
        let s = PlacementSettings { split_qps: 100.0, ..Default::default() };
        let mut x = ShardStats::default();
        x.update(1, 0, 500.0, 5, &s);
        x.update(1, 0, 500.0, 5, &s);
        assert_eq!(x.hot_reports, 2);
        x.update(1, 0, 50.0, 5, &s);
        assert_eq!(x.hot_reports, 0, "a cool report resets");
        x.update(1, 1000, 500.0, 5, &s);
        x.update(2, 0, 500.0, 5, &s);
        assert_eq!((x.hot_reports, x.bytes), (1, 0), "a new version starts over, its size unknown");
    }
}
