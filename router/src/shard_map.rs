//! The router's copy of the shard map: fetched from placement, kept fresh by
//! its watch stream, corrected early by `EpochMismatch` answers and leader
//! hints from storenodes. Lookup is a binary search over range starts.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use ringkv_common::hashing;
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::meta::ShardDescriptor;
use ringkv_proto::placement::{GetShardMapRequest, ShardMap, WatchShardMapRequest};
use tokio::sync::{watch, Notify};

#[derive(Default)]
struct Inner {
    version: u64,
    /// Sorted by range start.
    shards: Vec<ShardDescriptor>,
    /// Shard id -> node id of its leader, as last learnt.
    leaders: HashMap<u64, u64>,
    /// Node id -> gRPC address.
    nodes: HashMap<u64, String>,
}

pub struct ShardMapCache {
    inner: RwLock<Inner>,
    placement: Arc<PlacementClient>,
    /// Wakes the refresher for an immediate re-fetch.
    refresh: Notify,
    loaded: watch::Sender<bool>,
}

impl ShardMapCache {
    pub fn new(placement: Arc<PlacementClient>) -> Arc<Self> {
        Arc::new(ShardMapCache {
            inner: RwLock::new(Inner::default()),
            placement,
            refresh: Notify::new(),
            loaded: watch::channel(false).0,
        })
    }

    pub fn version(&self) -> u64 {
        self.inner.read().version
    }

    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until a map with shards has been loaded, up to `timeout`.
    pub async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        let loaded = tokio::time::timeout(timeout, rx.wait_for(|l| *l)).await.is_ok();
        loaded
    }

    fn install(&self, map: ShardMap) {
        let mut inner = self.inner.write();
        if map.version < inner.version {
            return;
        }
        inner.version = map.version;
        let mut shards: Vec<ShardDescriptor> = map.shards.iter().filter_map(|s| s.shard.clone()).collect();
        shards.sort_by_key(|s| s.start);
        inner.shards = shards;
        for s in &map.shards {
            if let (Some(d), true) = (&s.shard, s.leader_node_id != 0) {
                inner.leaders.entry(d.id).or_insert(s.leader_node_id);
            }
        }
        inner.nodes = map.nodes.into_iter().map(|n| (n.id, n.address)).collect();
        let has = !inner.shards.is_empty();
        drop(inner);
        if has {
            self.loaded.send_replace(true);
        }
    }

    /// The shard owning `key`, if the map has one.
    pub fn shard_for(&self, key: &[u8]) -> Option<ShardDescriptor> {
        let h = hashing::key_hash(key);
        let inner = self.inner.read();
        let i = inner.shards.partition_point(|s| s.start <= h).checked_sub(1)?;
        let s = &inner.shards[i];
        hashing::in_range(h, s.start, s.end).then(|| s.clone())
    }

    pub fn shards(&self) -> Vec<ShardDescriptor> {
        self.inner.read().shards.clone()
    }

    pub fn leader(&self, shard_id: u64) -> Option<u64> {
        self.inner.read().leaders.get(&shard_id).copied()
    }

    pub fn set_leader(&self, shard_id: u64, node_id: Option<u64>) {
        let mut inner = self.inner.write();
        match node_id {
            Some(n) => inner.leaders.insert(shard_id, n),
            None => inner.leaders.remove(&shard_id),
        };
    }

    pub fn address(&self, node_id: u64) -> Option<String> {
        self.inner.read().nodes.get(&node_id).cloned()
    }

    /// A newer descriptor learnt from a storenode (EpochMismatch).
    pub fn update_shard(&self, d: ShardDescriptor) {
        let mut inner = self.inner.write();
        let newer = |cur: &ShardDescriptor| {
            let (a, b) = (cur.epoch.unwrap_or_default(), d.epoch.unwrap_or_default());
            (b.version, b.conf_ver) > (a.version, a.conf_ver)
        };
        if let Some(cur) = inner.shards.iter_mut().find(|s| s.id == d.id) {
            if newer(cur) && cur.start == d.start && cur.end == d.end {
                *cur = d;
                return;
            }
        }
        drop(inner);
        // A range change (split/merge): only placement's map can be trusted.
        self.refresh.notify_one();
    }

    pub fn request_refresh(&self) {
        self.refresh.notify_one();
    }

    /// Keeps the map fresh until `stop`: an initial fetch, then the watch
    /// stream; on any error, re-fetch after a short backoff.
    pub async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            if *stop.borrow() {
                return;
            }
            let fetched = self
                .placement
                .call(Duration::from_secs(3), |mut c| async move { c.get_shard_map(GetShardMapRequest {}).await })
                .await;
            match fetched {
                Ok(map) => {
                    self.install(map);
                    backoff = Duration::from_millis(50);
                }
                Err(e) => tracing::warn!("fetching the shard map: {}", e.message()),
            }
            let known = self.version();
            let watch = self
                .placement
                .call(Duration::from_secs(3), |mut c| async move {
                    c.watch_shard_map(WatchShardMapRequest { known_version: known }).await
                })
                .await;
            if let Ok(mut stream) = watch {
                loop {
                    tokio::select! {
                        m = stream.message() => match m {
                            Ok(Some(map)) => self.install(map),
                            _ => break,
                        },
                        _ = self.refresh.notified() => break,
                        _ = stop.wait_for(|s| *s) => return,
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}
