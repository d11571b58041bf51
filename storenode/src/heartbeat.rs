//! The storenode's side of placement: register at start, then heartbeat
//! every interval with a report of every local replica (leaders include their
//! descriptor, so placement learns membership and leader changes). The answer
//! carries every storenode's address, the replicas this node should create
//! and the stale ones it should delete (moved away while it was down).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{NodeHeartbeatRequest, RegisterNodeRequest, ReplicaReport};
use ringkv_proto::raft::ReplicaStatus;
use ringkv_raft::transport::AddressBook;
use ringkv_raft::{LoopHandle, LoopRequest};
use tokio::sync::watch;

use ringkv_raft::engine::Engine;
use ringkv_raft::Group;

use crate::load::ShardLoad;
use crate::metrics::{Metrics, ShardFigures};
use crate::service::admin::status_to_proto;
use crate::shard::{Shard, ShardStateMachine};
use crate::sizes::{DataLayout, ShardData};

/// A follower trailing its leader by more entries than this counts as down.
const LAGGING_ENTRIES: u64 = 1000;

/// The task that registers this storenode with placement and heartbeats to it.
pub struct Heartbeat {
    /// This node's id; placement must register it under the same id.
    pub node_id: u64,
    /// Sent until placement accepts it (address, zone, capacity).
    pub register: RegisterNodeRequest,
    /// Connections to the placement members.
    pub client: Arc<PlacementClient>,
    /// The Raft loop: source of replica status, target of replica creation.
    pub loop_handle: LoopHandle<ShardStateMachine>,
    /// Updated with every other storenode's address from heartbeat answers.
    pub address_book: Arc<AddressBook>,
    /// Time between heartbeats (and between registration attempts).
    pub interval: Duration,
    /// The node's RocksDB, whose metadata gives the shards' sizes.
    pub engine: Engine,
    /// Requests served per shard since the last heartbeat.
    pub load: Arc<ShardLoad>,
    /// How often the sizes of the shards this node leads are measured.
    pub size_check: Duration,
    /// Where the leaders' sizes and load are exported.
    pub metrics: Arc<Metrics>,
}

/// What the heartbeat keeps between beats.
#[derive(Default)]
struct Measured {
    /// When sizes were last measured, and the last beat.
    sizes_at: Option<Instant>,
    beat_at: Option<Instant>,
    /// Shard id -> what was measured.
    sizes: HashMap<u64, Size>,
}

/// A shard's size as measured.
#[derive(Clone, Copy, Debug)]
struct Size {
    /// The descriptor version it was measured under.
    version: u64,
    bytes: u64,
    keys: u64,
}

/// Measures the sizes of `shards` ((id, version, start, end)) on a blocking
/// thread.
async fn measure(engine: &Engine, shards: Vec<(u64, u64, u64, u64)>) -> Result<HashMap<u64, Size>, String> {
    let engine = engine.clone();
    tokio::task::spawn_blocking(move || {
        let layout = DataLayout::read(&engine).map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for (id, version, start, end) in shards {
            let data = ShardData::measure(&engine, &layout, start, end).map_err(|e| e.to_string())?;
            out.insert(id, Size { version, bytes: data.bytes(), keys: data.keys() });
        }
        Ok(out)
    })
    .await
    .map_err(|e| format!("measuring shard sizes: {e}"))?
}

fn report(r: ReplicaStatus) -> ReplicaReport {
    let voters: Vec<u64> = r.shard.as_ref().map_or(Vec::new(), |s| s.replicas.iter().map(|p| p.replica_id).collect());
    let down = if r.is_leader {
        voters
            .iter()
            .filter(|id| **id != r.replica_id)
            .filter(|id| r.progress.get(id).is_none_or(|m| m + LAGGING_ENTRIES < r.last_log_index))
            .count() as u32
    } else {
        0
    };
    ReplicaReport {
        shard: r.shard,
        replica_id: r.replica_id,
        is_leader: r.is_leader,
        applied_index: r.applied_index,
        down_replicas: down,
        failure: r.failure,
        ..Default::default()
    }
}

impl Heartbeat {
    /// Registers, then heartbeats every `interval` until `stop` turns true.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        let mut registered = false;
        let mut measured = Measured::default();
        loop {
            if !registered {
                let req = self.register.clone();
                match self
                    .client
                    .call(self.interval * 5, |mut c| {
                        let req = req.clone();
                        async move { c.register_node(req).await }
                    })
                    .await
                {
                    Ok(r) if r.node_id == self.node_id => registered = true,
                    Ok(r) => tracing::error!(got = r.node_id, want = self.node_id, "placement gave another node id"),
                    Err(e) => tracing::warn!("registering with placement: {}", e.message()),
                }
            }
            if registered {
                if let Err(e) = self.beat(&mut measured).await {
                    tracing::warn!("heartbeat to placement: {e}");
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(self.interval) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    async fn beat(&self, m: &mut Measured) -> Result<(), String> {
        let status = self.loop_handle.status(Vec::new()).await.map_err(|e| e.to_string())?;
        let now = Instant::now();
        if m.sizes_at.is_none_or(|t| now.duration_since(t) >= self.size_check) {
            let led = status
                .iter()
                .filter(|s| s.is_leader)
                .map(|s| (s.group_id, s.group.version(), s.group.start, s.group.end))
                .collect();
            match measure(&self.engine, led).await {
                Ok(sizes) => m.sizes = sizes,
                Err(e) => tracing::warn!("{e}"),
            }
            m.sizes_at = Some(now);
        }
        let secs = m.beat_at.map_or(self.interval, |t| now.duration_since(t)).as_secs_f64().max(0.001);
        m.beat_at = Some(now);
        let load = self.load.take();
        let mut figures = Vec::new();
        let replicas: Vec<ReplicaReport> = status
            .iter()
            .cloned()
            .map(|s| {
                let (id, version) = (s.group_id, s.group.version());
                let mut r = report(status_to_proto(s));
                if r.is_leader {
                    // Sizes measured under an older version (before a split)
                    // say nothing of the shard now.
                    let size = m.sizes.get(&id).filter(|s| s.version == version);
                    r.approximate_bytes = size.map_or(0, |s| s.bytes);
                    let l = load.get(&id).copied().unwrap_or_default();
                    r.reads_per_sec = l.reads as f64 / secs;
                    r.writes_per_sec = l.writes as f64 / secs;
                    r.load_split_hash = l.split_hash;
                    figures.push((
                        id,
                        ShardFigures {
                            bytes: r.approximate_bytes,
                            keys: size.map_or(0, |s| s.keys),
                            reads_per_sec: r.reads_per_sec,
                            writes_per_sec: r.writes_per_sec,
                        },
                    ));
                }
                r
            })
            .collect();
        self.metrics.set_shard_figures(&figures);
        let req = NodeHeartbeatRequest { node_id: self.node_id, replicas };
        let resp = self
            .client
            .call(self.interval * 3, |mut c| {
                let req = req.clone();
                async move { c.node_heartbeat(req).await }
            })
            .await
            .map_err(|s| s.to_string())?;
        for n in resp.nodes {
            if n.id != self.node_id && !n.address.is_empty() {
                self.address_book.set(n.id, n.address);
            }
        }
        for stale in resp.remove {
            // Only the incarnation placement named: a newer one is left alone.
            let local = status.iter().find(|s| s.group_id == stale.shard_id).map(|s| s.replica_id);
            if local != Some(stale.replica_id) {
                continue;
            }
            let group_id = stale.shard_id;
            match self.loop_handle.call(|cb| LoopRequest::RemoveReplica { group_id, cb }).await {
                Ok(()) => tracing::info!(shard = group_id, replica = stale.replica_id, "removed a stale replica"),
                Err(e) => tracing::warn!(shard = group_id, "removing a stale replica: {e}"),
            }
        }
        for a in resp.create {
            let Some(shard) = a.shard else { continue };
            let (id, replica_id, group) = (shard.id, a.replica_id, Shard(shard));
            let created = self
                .loop_handle
                .call(|cb| LoopRequest::CreateReplica {
                    group,
                    replica_id,
                    bootstrap: a.bootstrap,
                    campaign: a.campaign,
                    cb,
                })
                .await;
            match created {
                Ok(()) => tracing::info!(shard = id, replica_id, "created replica assigned by placement"),
                Err(e) => tracing::warn!(shard = id, replica_id, "creating assigned replica: {e}"),
            }
        }
        Ok(())
    }
}
