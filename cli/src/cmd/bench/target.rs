//! What the bench drives: an in-process cluster's shards directly, a running
//! ringkv cluster through its routers' `Kv` API, or an etcd cluster through
//! etcd's KV API — one harness, so the figures compare like with like.

use std::sync::Arc;

use ringkv_client::Client;
use ringkv_storenode::testkit::ShardClient;

use super::workload::OpKind;

/// One connection of the bench to its target; clients share connections
/// round-robin (`--connections`).
#[derive(Clone)]
pub enum Conn {
    /// An in-process cluster, called through its `ShardKv` services.
    Local(ShardClient),
    /// A router (with failover to the others given).
    Router(Arc<Client>),
    /// An etcd cluster (etcd-client balances over the endpoints given).
    Etcd(etcd_client::KvClient),
}

impl Conn {
    /// Connections to the routers at `addrs`, each its own HTTP/2 connection.
    pub async fn routers(addrs: &[String], n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let c = Client::connect(addrs).await.map_err(|e| anyhow::anyhow!("--router: {e}"))?;
            out.push(Conn::Router(Arc::new(c)));
        }
        Ok(out)
    }

    /// Connections to the etcd members at `endpoints`.
    pub async fn etcd(endpoints: &[String], n: usize) -> anyhow::Result<Vec<Conn>> {
        let mut out = Vec::new();
        for _ in 0..n {
            let c = etcd_client::Client::connect(endpoints, None)
                .await
                .map_err(|e| anyhow::anyhow!("--etcd {}: {e}", endpoints.join(",")))?;
            out.push(Conn::Etcd(c.kv_client()));
        }
        Ok(out)
    }

    /// Runs one operation; whether it succeeded (a missing key is a
    /// success: the load does not depend on which keys exist yet).
    pub async fn run(&mut self, op: OpKind, key: &[u8], value: &[u8]) -> bool {
        match op {
            OpKind::Get => self.get(key).await,
            OpKind::Put => self.put(key, value).await,
            OpKind::ReadModifyWrite => self.get(key).await && self.put(key, value).await,
        }
    }

    async fn put(&mut self, key: &[u8], value: &[u8]) -> bool {
        match self {
            Conn::Local(c) => c.put(key, value).await.is_ok(),
            Conn::Router(c) => c.put(key, value).await.is_ok(),
            Conn::Etcd(c) => c.put(key, value, None).await.is_ok(),
        }
    }

    /// A linearizable read: ringkv's default, and etcd's (a range without
    /// `serializable`).
    async fn get(&mut self, key: &[u8]) -> bool {
        match self {
            Conn::Local(c) => c.get(key).await.is_ok(),
            Conn::Router(c) => c.get(key).await.is_ok(),
            Conn::Etcd(c) => c.get(key, None).await.is_ok(),
        }
    }
}
