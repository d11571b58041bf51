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

/// The router's shard map, leader hints and storenode addresses.
pub struct ShardMapCache {
    inner: RwLock<Inner>,
    placement: Arc<PlacementClient>,
    /// Wakes the refresher for an immediate re-fetch.
    refresh: Notify,
    loaded: watch::Sender<bool>,
}

impl ShardMapCache {
    /// An empty map, to be filled from `placement` by [`ShardMapCache::run`].
    pub fn new(placement: Arc<PlacementClient>) -> Arc<Self> {
        Arc::new(ShardMapCache {
            inner: RwLock::new(Inner::default()),
            placement,
            refresh: Notify::new(),
            loaded: watch::channel(false).0,
        })
    }

    /// The version of the installed map (0 before the first).
    pub fn version(&self) -> u64 {
        self.inner.read().version
    }

    /// Whether a map with shards has been installed.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Waits until a map with shards has been loaded, up to `timeout`.
    pub async fn wait_loaded(&self, timeout: Duration) -> bool {
        let mut rx = self.loaded.subscribe();
        let loaded = tokio::time::timeout(timeout, rx.wait_for(|l| *l)).await.is_ok();
        loaded
    }

    pub(crate) fn install(&self, map: ShardMap) {
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
        crate::metrics::map_installed(inner.version, inner.shards.len());
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

    /// Every shard's descriptor, sorted by range start.
    pub fn shards(&self) -> Vec<ShardDescriptor> {
        self.inner.read().shards.clone()
    }

    /// The node last known to lead `shard_id`.
    pub fn leader(&self, shard_id: u64) -> Option<u64> {
        self.inner.read().leaders.get(&shard_id).copied()
    }

    /// Records `shard_id`'s leader node, or forgets it with `None`.
    pub fn set_leader(&self, shard_id: u64, node_id: Option<u64>) {
        let mut inner = self.inner.write();
        match node_id {
            Some(n) => inner.leaders.insert(shard_id, n),
            None => inner.leaders.remove(&shard_id),
        };
    }

    /// The gRPC address of storenode `node_id`, from the last installed map.
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

    /// Wakes the refresher to re-fetch the map from placement now.
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
                crate::metrics::map_in_sync(true);
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
                crate::metrics::map_in_sync(false);
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;
    use ringkv_proto::meta::Epoch;
    use ringkv_proto::placement::ShardInfo;

    use super::*;

    fn cache() -> Arc<ShardMapCache> {
        ShardMapCache::new(Arc::new(PlacementClient::new(Vec::new())))
    }

    fn d(id: u64, start: u64, end: u64, version: u64, conf_ver: u64) -> ShardDescriptor {
        ShardDescriptor { id, start, end, epoch: Some(Epoch { version, conf_ver }), replicas: Vec::new() }
    }

    fn map(version: u64, shards: Vec<ShardDescriptor>) -> ShardMap {
        ShardMap {
            version,
            shards: shards.into_iter().map(|s| ShardInfo { shard: Some(s), ..Default::default() }).collect(),
            ..Default::default()
        }
    }

    /// Four shards splitting the ring evenly, given out of order.
    fn quarters() -> Vec<ShardDescriptor> {
        let q = 1u64 << 62;
        vec![d(13, 3 * q, 0, 1, 1), d(11, q, 2 * q, 1, 1), d(10, 0, q, 1, 1), d(12, 2 * q, 3 * q, 1, 1)]
    }

    fn refresh_requested(c: &ShardMapCache) -> bool {
        c.refresh.notified().now_or_never().is_some()
    }

    #[test]
    fn every_key_is_found_in_the_shard_whose_range_holds_its_hash() {
        let c = cache();
        c.install(map(1, quarters()));
        for i in 0..500 {
            let key = format!("key-{i}");
            let h = hashing::key_hash(key.as_bytes());
            let s = c.shard_for(key.as_bytes()).expect("the ring is covered");
            assert_eq!(s.id, 10 + (h >> 62), "{key} hashes to {h:#x}");
            assert!(hashing::in_range(h, s.start, s.end));
        }
        let starts: Vec<u64> = c.shards().iter().map(|s| s.start).collect();
        assert!(starts.windows(2).all(|w| w[0] < w[1]), "kept sorted by range start: {starts:?}");
    }

    #[test]
    fn a_key_hashing_to_a_range_start_belongs_to_that_shard_not_the_one_before() {
        let h = hashing::key_hash(b"edge");
        assert!(h > 0 && h < u64::MAX);
        let c = cache();
        c.install(map(1, vec![d(1, 0, h, 1, 1), d(2, h, 0, 1, 1)]));
        assert_eq!(c.shard_for(b"edge").map(|s| s.id), Some(2));
        c.install(map(2, vec![d(1, 0, h + 1, 1, 1), d(2, h + 1, 0, 1, 1)]));
        assert_eq!(c.shard_for(b"edge").map(|s| s.id), Some(1), "the end is exclusive, so h < h + 1 stays in 1");
    }

    #[test]
    fn an_end_of_zero_means_the_top_of_the_ring() {
        let c = cache();
        c.install(map(1, vec![d(1, 0, 1 << 63, 1, 1), d(2, 1 << 63, 0, 1, 1)]));
        let top = (0..10_000).map(|i| format!("k{i}")).find(|k| hashing::key_hash(k.as_bytes()) > u64::MAX - (1 << 56));
        let top = top.expect("some key hashes into the top 1/256 of the ring");
        assert_eq!(c.shard_for(top.as_bytes()).map(|s| s.id), Some(2));
    }

    #[test]
    fn a_key_in_a_gap_of_the_map_or_an_empty_map_has_no_shard() {
        let c = cache();
        assert_eq!(c.shard_for(b"k"), None, "nothing loaded yet");
        assert!(!c.is_loaded());
        let h = hashing::key_hash(b"k");
        assert!(h > 0 && h < u64::MAX);
        c.install(map(1, vec![d(1, 0, h, 1, 1), d(2, h + 1, 0, 1, 1)]));
        assert_eq!(c.shard_for(b"k"), None);
        assert!(c.is_loaded());
    }

    #[test]
    fn an_older_map_does_not_replace_a_newer_one() {
        let c = cache();
        c.install(map(5, quarters()));
        c.install(map(4, vec![d(99, 0, 0, 9, 9)]));
        assert_eq!(c.version(), 5);
        assert_eq!(c.shards().len(), 4);
        c.install(map(6, vec![d(99, 0, 0, 9, 9)]));
        assert_eq!((c.version(), c.shards().len()), (6, 1));
    }

    #[test]
    fn a_newer_epoch_from_a_storenode_replaces_the_descriptor_and_an_older_or_equal_one_does_not() {
        let c = cache();
        c.install(map(1, quarters()));
        let q = 1u64 << 62;
        c.update_shard(d(11, q, 2 * q, 1, 2));
        assert!(!refresh_requested(&c), "a same-range update needs no refresh");
        c.update_shard(d(11, q, 2 * q, 2, 1));
        let epoch = |c: &ShardMapCache| c.shards().into_iter().find(|s| s.id == 11).unwrap().epoch.unwrap();
        assert_eq!(epoch(&c), Epoch { version: 2, conf_ver: 1 }, "version counts before conf_ver");
        for stale in [d(11, q, 2 * q, 1, 9), d(11, q, 2 * q, 2, 1)] {
            c.update_shard(stale);
            assert_eq!(epoch(&c), Epoch { version: 2, conf_ver: 1 });
        }
    }

    #[test]
    fn a_newer_descriptor_with_another_range_is_not_taken_but_asks_placement_for_the_map() {
        let c = cache();
        c.install(map(1, quarters()));
        let q = 1u64 << 62;
        c.update_shard(d(11, q, q + 5, 7, 1));
        let s = c.shards().into_iter().find(|s| s.id == 11).unwrap();
        assert_eq!((s.end, s.epoch.unwrap().version), (2 * q, 1));
        assert!(refresh_requested(&c));
    }

    #[test]
    fn leaders_are_learnt_from_the_map_and_corrected_by_hints() {
        let c = cache();
        let mut m = map(1, quarters());
        m.shards[0].leader_node_id = 4;
        c.install(m);
        assert_eq!(c.leader(13), Some(4));
        assert_eq!(c.leader(10), None, "0 means unknown");
        c.set_leader(13, Some(5));
        assert_eq!(c.leader(13), Some(5));
        c.set_leader(13, None);
        assert_eq!(c.leader(13), None);
    }
}
