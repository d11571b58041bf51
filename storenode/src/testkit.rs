//! A local cluster of in-process storenodes on 127.0.0.1, with a small
//! shard-routing client: used by the cluster tests, `ringkv bench` and
//! `ringkv playground` until the placement service and router exist.
//!
//! The shard map is static: `shards` ranges split the ring evenly, every
//! shard has a replica on every node, replica id = `shard_id * 1000 + node_id`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;
use ringkv_common::wire_error::WireError;
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::{
    compare_and_swap_request::{Expected, New},
    CompareAndSwapRequest, CompareAndSwapResponse, DeleteRequest, GetRequest, PutRequest, ReadConsistency,
    RequestContext,
};
use ringkv_proto::meta::{Epoch, Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::raft::admin_client::AdminClient;
use ringkv_proto::raft::{CreateReplicaRequest, NodeAddress, SetNodeAddressesRequest, ShardStatusRequest};
use tonic::transport::Channel;
use tonic::Status;

use crate::config::{Peer, StorenodeConfig};
use crate::error::Error;
use crate::keys;
use crate::server::{Storenode, StorenodeHandle};

/// Polls `f` until it returns Some or `timeout` passes (then panics with
/// `what`): tests wait for conditions, never for a fixed time.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    poll_until(timeout, f).await.unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

/// Polls `f` until it returns Some, or None once `timeout` has passed; for
/// callers that report a timeout as an error rather than panic.
pub async fn poll_until<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The replica id the kit gives `shard_id`'s replica on `node_id`.
pub fn replica_id(shard_id: u64, node_id: u64) -> u64 {
    shard_id * 1000 + node_id
}

/// `n` shards splitting the ring evenly, each with a voter on every node.
pub fn even_shards(n: u64, nodes: &[u64]) -> Vec<ShardDescriptor> {
    let width = u64::MAX / n;
    (0..n)
        .map(|i| {
            let id = i + 1;
            ShardDescriptor {
                id,
                start: i * width,
                end: if i + 1 == n { 0 } else { (i + 1) * width },
                epoch: Some(Epoch { version: 1, conf_ver: 1 }),
                replicas: nodes
                    .iter()
                    .map(|&node_id| Replica {
                        replica_id: replica_id(id, node_id),
                        node_id,
                        role: ReplicaRole::Voter as i32,
                    })
                    .collect(),
            }
        })
        .collect()
}

pub use ringkv_common::net::connect;

/// Creates every shard's first replicas on the nodes they name (idempotent).
pub async fn bootstrap_shards(addrs: &HashMap<u64, String>, shards: &[ShardDescriptor]) -> anyhow_lite::Result<()> {
    for (&node_id, addr) in addrs {
        let mut admin = AdminClient::new(connect(addr).await?);
        let peers = addrs
            .iter()
            .filter(|(id, _)| **id != node_id)
            .map(|(id, a)| NodeAddress { node_id: *id, address: a.clone() })
            .collect();
        admin.set_node_addresses(SetNodeAddressesRequest { nodes: peers }).await?;
        for s in shards.iter().filter(|s| s.replicas.iter().any(|r| r.node_id == node_id)) {
            admin
                .create_replica(CreateReplicaRequest {
                    shard: Some(s.clone()),
                    replica_id: replica_id(s.id, node_id),
                    bootstrap: true,
                    campaign: false,
                })
                .await?;
        }
    }
    Ok(())
}

/// `n` storenodes in this process, node `i + 1` at index `i` of each vector.
pub struct LocalCluster {
    /// Directory holding every node's data directory.
    pub base: PathBuf,
    /// Each node's config, with its bound addresses and peers filled in.
    pub configs: Vec<StorenodeConfig>,
    /// Each node's handle; `None` while the node is stopped.
    pub nodes: Vec<Option<StorenodeHandle>>,
    /// The static shard map the cluster was bootstrapped with.
    pub shards: Vec<ShardDescriptor>,
}

impl LocalCluster {
    /// Starts `n` storenodes under `base` (ports picked by the OS, then fixed
    /// so restarts keep them), and creates `shards` shards replicated on all.
    pub async fn start(
        base: &Path,
        n: u64,
        shards: u64,
        tweak: impl Fn(&mut StorenodeConfig),
    ) -> anyhow_lite::Result<LocalCluster> {
        Self::start_with(base, n, shards, None, tweak).await
    }

    /// Like [`LocalCluster::start`] on fixed ports: gRPC on `port + i`, HTTP
    /// on `port + 100 + i` for node `i + 1` (so a restart finds the same cluster).
    pub async fn start_at(base: &Path, n: u64, shards: u64, port: u16) -> anyhow_lite::Result<LocalCluster> {
        Self::start_with(base, n, shards, Some(port), |_| {}).await
    }

    async fn start_with(
        base: &Path,
        n: u64,
        shards: u64,
        port: Option<u16>,
        tweak: impl Fn(&mut StorenodeConfig),
    ) -> anyhow_lite::Result<LocalCluster> {
        let mut configs = Vec::new();
        let mut nodes = Vec::new();
        for id in 1..=n {
            let (grpc, http) = match port {
                Some(p) => (p + id as u16 - 1, p + 100 + id as u16 - 1),
                None => (0, 0),
            };
            let mut cfg = StorenodeConfig {
                node_id: id,
                listen_addr: ([127, 0, 0, 1], grpc).into(),
                http_addr: Some(([127, 0, 0, 1], http).into()),
                data_dir: base.join(format!("storenode-{id}")),
                ..Default::default()
            };
            tweak(&mut cfg);
            let h = Storenode::start(cfg.clone()).await?;
            cfg.listen_addr = h.grpc_addr;
            cfg.http_addr = h.http_addr;
            configs.push(cfg);
            nodes.push(Some(h));
        }
        let addrs: Vec<(u64, String)> = configs.iter().map(|c| (c.node_id, c.listen_addr.to_string())).collect();
        for (i, cfg) in configs.iter_mut().enumerate() {
            cfg.peers = addrs
                .iter()
                .filter(|(id, _)| *id != cfg.node_id)
                .map(|(id, a)| Peer { node_id: *id, address: a.clone() })
                .collect();
            if let Some(h) = &nodes[i] {
                for p in &cfg.peers {
                    h.address_book.set(p.node_id, p.address.clone());
                }
            }
        }
        let node_ids: Vec<u64> = (1..=n).collect();
        let shards = even_shards(shards, &node_ids);
        let cluster = LocalCluster { base: base.to_path_buf(), configs, nodes, shards };
        bootstrap_shards(&cluster.addresses(), &cluster.shards).await?;
        Ok(cluster)
    }

    /// The gRPC address of `node_id`.
    pub fn addr(&self, node_id: u64) -> String {
        self.configs[node_id as usize - 1].listen_addr.to_string()
    }

    /// Node id -> gRPC address, for every node.
    pub fn addresses(&self) -> HashMap<u64, String> {
        self.configs.iter().map(|c| (c.node_id, c.listen_addr.to_string())).collect()
    }

    /// A [`ShardClient`] over this cluster's shard map.
    pub fn client(&self) -> ShardClient {
        ShardClient::new(self.shards.clone(), self.addresses())
    }

    /// Stops a node cleanly (its data stays).
    pub async fn stop(&mut self, node_id: u64) {
        if let Some(h) = self.nodes[node_id as usize - 1].take() {
            h.shutdown().await;
        }
    }

    /// Starts a stopped node again from its config and data.
    pub async fn restart(&mut self, node_id: u64) -> anyhow_lite::Result<()> {
        let cfg = self.configs[node_id as usize - 1].clone();
        let h = Storenode::start(cfg).await?;
        self.nodes[node_id as usize - 1] = Some(h);
        Ok(())
    }

    /// The handle of `node_id`, if it is running.
    pub fn node(&self, node_id: u64) -> Option<&StorenodeHandle> {
        self.nodes[node_id as usize - 1].as_ref()
    }

    /// Tells every running node the address of `node_id` (after it moved).
    pub async fn announce(&self, node_id: u64, address: String) -> anyhow_lite::Result<()> {
        for c in &self.configs {
            if c.node_id == node_id || self.node(c.node_id).is_none() {
                continue;
            }
            let mut admin = AdminClient::new(connect(&c.listen_addr.to_string()).await?);
            admin
                .set_node_addresses(SetNodeAddressesRequest {
                    nodes: vec![NodeAddress { node_id, address: address.clone() }],
                })
                .await?;
        }
        Ok(())
    }

    /// Waits until every shard has a leader that all its running replicas agree on.
    pub async fn wait_for_leaders(&self, timeout: Duration) -> anyhow_lite::Result<HashMap<u64, u64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut leaders: HashMap<u64, u64> = HashMap::new();
            for c in &self.configs {
                if self.node(c.node_id).is_none() {
                    continue;
                }
                let Ok(ch) = connect(&c.listen_addr.to_string()).await else { continue };
                let Ok(st) = AdminClient::new(ch).shard_status(ShardStatusRequest::default()).await else {
                    continue;
                };
                for r in st.into_inner().replicas {
                    if r.is_leader {
                        leaders.insert(r.shard.map_or(0, |s| s.id), c.node_id);
                    }
                }
            }
            if leaders.len() == self.shards.len() {
                return Ok(leaders);
            }
            if Instant::now() > deadline {
                return Err(format!("only {} of {} shards have a leader", leaders.len(), self.shards.len()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops every node cleanly.
    pub async fn shutdown(mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i as u64 + 1).await;
        }
    }
}

/// A minimal error type for the kit (it is not library API to match on).
pub mod anyhow_lite {
    /// Any error.
    pub type Error = Box<dyn std::error::Error + Send + Sync>;
    /// A result with any error.
    pub type Result<T> = std::result::Result<T, Error>;
}

/// Routes requests to shard leaders of a static shard map, following
/// `NotLeader` hints and retrying retryable errors until a deadline. Writes
/// carry a request id kept across retries, so a retried write applies once.
#[derive(Clone)]
pub struct ShardClient {
    shards: Arc<RwLock<Vec<ShardDescriptor>>>,
    addrs: Arc<HashMap<u64, String>>,
    channels: Arc<RwLock<HashMap<u64, Channel>>>,
    leaders: Arc<RwLock<HashMap<u64, u64>>>,
    /// How long [`ShardClient::call`] keeps retrying (default 10 s).
    pub deadline: Duration,
}

impl ShardClient {
    /// A client for `shards`, reaching node ids at `addrs`.
    pub fn new(mut shards: Vec<ShardDescriptor>, addrs: HashMap<u64, String>) -> Self {
        shards.sort_by_key(|s| s.start);
        ShardClient {
            shards: Arc::new(RwLock::new(shards)),
            addrs: Arc::new(addrs),
            channels: Default::default(),
            leaders: Default::default(),
            deadline: Duration::from_secs(10),
        }
    }

    /// The shard whose range holds `key`'s hash.
    pub fn shard_for(&self, key: &[u8]) -> ShardDescriptor {
        let h = keys::key_hash(key);
        let shards = self.shards.read();
        let i = shards.partition_point(|s| s.start <= h).saturating_sub(1);
        shards[i].clone()
    }

    async fn kv(&self, node_id: u64) -> Result<ShardKvClient<Channel>, Error> {
        if let Some(c) = self.channels.read().get(&node_id) {
            return Ok(ShardKvClient::new(c.clone()));
        }
        let addr = self.addrs.get(&node_id).ok_or(Error::Retryable(format!("no address for node {node_id}")))?;
        let ch = connect(addr).await.map_err(|e| Error::Retryable(format!("connect {addr}: {e}")))?;
        self.channels.write().insert(node_id, ch.clone());
        Ok(ShardKvClient::new(ch))
    }

    fn context(shard: &ShardDescriptor, request_id: &[u8]) -> RequestContext {
        RequestContext { shard_id: shard.id, epoch: shard.epoch, request_id: request_id.to_vec(), timeout_ms: 0 }
    }

    /// Runs `f` against the shard of `key` until it succeeds, fails for good,
    /// or the deadline passes (then: the last error, ambiguous for writes).
    pub async fn call<T, F, Fut>(&self, key: &[u8], f: F) -> Result<T, Error>
    where
        F: Fn(ShardKvClient<Channel>, RequestContext) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let request_id: [u8; 16] = rand::random();
        let deadline = Instant::now() + self.deadline;
        let mut backoff = Duration::from_millis(20);
        let mut attempt = 0usize;
        loop {
            let shard = self.shard_for(key);
            let node = self
                .leaders
                .read()
                .get(&shard.id)
                .copied()
                .unwrap_or_else(|| shard.replicas[attempt % shard.replicas.len().max(1)].node_id);
            let res = match self.kv(node).await {
                Ok(c) => f(c, Self::context(&shard, &request_id)).await.map_err(|s| WireError::from_status(&s).into()),
                Err(e) => Err(e),
            };
            let err = match res {
                Ok(r) => return Ok(r.into_inner()),
                Err(e) => e,
            };
            match &err {
                Error::NotLeader { leader: Some(l), .. } => {
                    self.leaders.write().insert(shard.id, l.node_id);
                }
                Error::NotLeader { .. }
                | Error::Retryable(_)
                | Error::Stopped
                | Error::Ambiguous(_)
                | Error::Busy(_) => {
                    self.leaders.write().remove(&shard.id);
                    attempt += 1;
                }
                Error::EpochMismatch(current) => {
                    let mut shards = self.shards.write();
                    if let Some(s) = shards.iter_mut().find(|s| s.id == current.id) {
                        *s = (**current).clone();
                    }
                }
                _ => return Err(err),
            }
            if Instant::now() + backoff > deadline {
                return Err(err);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        self.call(key, |mut c, ctx| {
            let req = PutRequest { context: Some(ctx), key: key.to_vec(), value: value.to_vec() };
            async move { c.put(req).await }
        })
        .await
        .map(|_| ())
    }

    /// Reads `key` with the given consistency; `None` when absent.
    pub async fn get_with(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>, Error> {
        let r = self
            .call(key, |mut c, ctx| {
                let req = GetRequest { context: Some(ctx), key: key.to_vec(), consistency: consistency as i32 };
                async move { c.get(req).await }
            })
            .await?;
        Ok(r.found.then_some(r.value))
    }

    /// Reads `key` linearizably; `None` when absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, Error> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// Deletes `key`; whether it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool, Error> {
        self.call(key, |mut c, ctx| {
            let req = DeleteRequest { context: Some(ctx), key: key.to_vec() };
            async move { c.delete(req).await }
        })
        .await
        .map(|r| r.existed)
    }

    /// Compare-and-swap: `expected = None` means "must be absent".
    pub async fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: &[u8]) -> Result<CompareAndSwapResponse, Error> {
        self.call(key, |mut c, ctx| {
            let req = CompareAndSwapRequest {
                context: Some(ctx),
                key: key.to_vec(),
                expected: Some(match expected {
                    Some(v) => Expected::ExpectedValue(v.to_vec()),
                    None => Expected::ExpectAbsent(true),
                }),
                new: Some(New::NewValue(new.to_vec())),
            };
            async move { c.compare_and_swap(req).await }
        })
        .await
    }
}
