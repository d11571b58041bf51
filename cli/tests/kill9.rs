//! Real `ringkv storenode` processes on 127.0.0.1, killed with SIGKILL while
//! writers run: every acknowledged write survives, none is applied twice, and
//! the restarted replicas converge with the others.
//!
//! "Applied twice" is checked with compare-and-swap counters that each have a
//! single writer: the writer retries a CAS with the same request id through
//! crashes, so a retry of an already-applied CAS must get the original
//! success back (the dedup table is replicated and persisted with the data).
//! A mismatch would mean the retry was applied again.

mod common;

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, free_port};
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::{GetRequest, ReadConsistency, RequestContext};
use ringkv_proto::raft::admin_client::AdminClient;
use ringkv_proto::raft::ShardStatusRequest;
use ringkv_storenode::testkit::{bootstrap_shards, connect, even_shards, ShardClient};
use tokio::sync::Mutex;

const NODES: u64 = 3;
const SHARDS: u64 = 16;
const WRITERS: usize = 8;

/// The storenode processes; killed (and their logs shown) when dropped, so a
/// failing test leaves nothing running.
struct Cluster {
    dir: PathBuf,
    grpc: HashMap<u64, String>,
    http: HashMap<u64, String>,
    children: HashMap<u64, Child>,
}

impl Cluster {
    fn new(dir: &Path) -> Cluster {
        let grpc = (1..=NODES).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let http = (1..=NODES).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        Cluster { dir: dir.to_path_buf(), grpc, http, children: HashMap::new() }
    }

    fn log(&self, id: u64) -> PathBuf {
        self.dir.join(format!("storenode-{id}.log"))
    }

    fn spawn(&mut self, id: u64) {
        let log = File::options().create(true).append(true).open(self.log(id)).expect("log file");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_ringkv"));
        cmd.arg("storenode")
            .args(["--node-id", &id.to_string()])
            .args(["--listen", &self.grpc[&id]])
            .args(["--http", &self.http[&id]])
            .arg("--data-dir")
            .arg(self.dir.join(format!("storenode-{id}")))
            .args(["--raft-tick-ms", "50"])
            // Small enough that a restarted node may need a snapshot.
            .args(["--compact-log-entries", "200"]);
        for (&peer, addr) in &self.grpc {
            if peer != id {
                cmd.args(["--peer", &format!("{peer}={addr}")]);
            }
        }
        cmd.env("RUST_LOG", "info,raft=warn").stdin(Stdio::null()).stdout(log.try_clone().expect("log")).stderr(log);
        let child = cmd.spawn().expect("spawn ringkv storenode");
        self.children.insert(id, child);
    }

    fn kill9(&mut self, id: u64) {
        if let Some(mut c) = self.children.remove(&id) {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    async fn wait_serving(&self, id: u64) {
        let addr = self.grpc[&id].clone();
        eventually(&format!("storenode {id} serving"), Duration::from_secs(30), || {
            let addr = addr.clone();
            async move {
                let ch = connect(&addr).await.ok()?;
                AdminClient::new(ch).shard_status(ShardStatusRequest::default()).await.ok().map(|_| ())
            }
        })
        .await
    }

    /// Applied index of every replica on `id`, by shard.
    async fn applied(&self, id: u64) -> Option<HashMap<u64, u64>> {
        let ch = connect(&self.grpc[&id]).await.ok()?;
        let st = AdminClient::new(ch).shard_status(ShardStatusRequest::default()).await.ok()?.into_inner();
        Some(st.replicas.iter().map(|r| (r.shard.as_ref().map_or(0, |s| s.id), r.applied_index)).collect())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let ids: Vec<u64> = self.children.keys().copied().collect();
        for id in ids {
            self.kill9(id);
        }
        if std::thread::panicking() {
            for id in 1..=NODES {
                let log = std::fs::read_to_string(self.log(id)).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                eprintln!("--- storenode {id} log (last lines) ---");
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

#[derive(Default)]
struct Ledger {
    /// key -> value of every acknowledged put.
    acked: HashMap<Vec<u8>, Vec<u8>>,
    /// counter key -> its value as its writer last learnt it.
    counters: HashMap<Vec<u8>, u64>,
}

/// One writer: unique keys plus a counter it alone increments by CAS.
async fn writer(
    w: usize,
    client: ShardClient,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let counter = format!("counter-{w}").into_bytes();
    let mut value: u64 = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    for n in 0u64..20_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            break;
        }
        let key = format!("w{w}-{n}").into_bytes();
        let val = format!("value-{w}-{n}").into_bytes();
        match client.put(&key, &val).await {
            Ok(()) => {
                ledger.lock().await.acked.insert(key, val);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => continue,
        }
        let expected = (value > 0).then(|| value.to_string().into_bytes());
        match client.cas(&counter, expected.as_deref(), (value + 1).to_string().as_bytes()).await {
            Ok(r) => {
                assert!(
                    r.succeeded,
                    "single-writer CAS {value}->{} refused (current {:?}): a retried CAS was applied twice",
                    value + 1,
                    String::from_utf8_lossy(&r.current_value)
                );
                value += 1;
                ledger.lock().await.counters.insert(counter.clone(), value);
            }
            // Unknown outcome: learn the truth before going on.
            Err(_) => {
                let Ok(cur) = client.get(&counter).await else { break };
                let cur: u64 = cur.map_or(0, |v| String::from_utf8_lossy(&v).parse().expect("a counter"));
                assert!(cur == value || cur == value + 1, "counter {cur}, expected {value} or {}", value + 1);
                value = cur;
                ledger.lock().await.counters.insert(counter.clone(), value);
            }
        }
    }
}

async fn wait_progress(acks: &AtomicU64, more: u64, what: &str) {
    let target = acks.load(Ordering::Relaxed) + more;
    eventually(what, Duration::from_secs(30), || async { (acks.load(Ordering::Relaxed) >= target).then_some(()) }).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_kill9_of_one_and_of_all() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = Cluster::new(dir.path());
    for id in 1..=NODES {
        cluster.spawn(id);
    }
    for id in 1..=NODES {
        cluster.wait_serving(id).await;
    }
    let shards = even_shards(SHARDS, &(1..=NODES).collect::<Vec<_>>());
    bootstrap_shards(&cluster.grpc, &shards).await.expect("bootstrap");
    let mut client = ShardClient::new(shards.clone(), cluster.grpc.clone());
    client.deadline = Duration::from_secs(15);

    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, client.clone(), stop.clone(), acks.clone(), ledger.clone())))
        .collect();

    wait_progress(&acks, 300, "initial writes").await;
    // One node dies: the other two keep a majority of every shard.
    cluster.kill9(1);
    wait_progress(&acks, 300, "writes with node 1 down").await;
    cluster.spawn(1);
    cluster.wait_serving(1).await;
    wait_progress(&acks, 300, "writes after node 1 restarted").await;
    // Every node dies at once, mid-write: only what reached disk remains.
    for id in 1..=NODES {
        cluster.kill9(id);
    }
    for id in 1..=NODES {
        cluster.spawn(id);
    }
    for id in 1..=NODES {
        cluster.wait_serving(id).await;
    }
    wait_progress(&acks, 300, "writes after every node restarted").await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer panicked");
    }

    let ledger = ledger.lock().await;
    assert!(ledger.acked.len() >= 1200, "only {} writes acknowledged", ledger.acked.len());
    // Every acknowledged put reads back (linearizably) with its value.
    for (k, v) in &ledger.acked {
        let got = client.get(k).await.unwrap_or_else(|e| panic!("get {:?}: {e}", String::from_utf8_lossy(k)));
        assert_eq!(got.as_ref(), Some(v), "acknowledged write of {:?} lost", String::from_utf8_lossy(k));
    }
    // Counters hold exactly the increments that were applied.
    for (k, value) in &ledger.counters {
        let got = client.get(k).await.expect("read counter").map(|v| String::from_utf8_lossy(&v).into_owned());
        assert_eq!(got, Some(value.to_string()), "counter {:?}", String::from_utf8_lossy(k));
    }

    // All replicas converge: same applied index per shard, then the same data.
    let converged = eventually("replicas to converge", Duration::from_secs(30), || async {
        let mut per_node = Vec::new();
        for id in 1..=NODES {
            per_node.push(cluster.applied(id).await?);
        }
        let same = per_node.windows(2).all(|w| w[0] == w[1]) && per_node[0].len() == SHARDS as usize;
        same.then_some(per_node)
    })
    .await;
    assert!(converged[0].values().all(|&i| i > 5), "every shard applied entries");
    for id in 1..=NODES {
        let mut kv = ShardKvClient::new(connect(&cluster.grpc[&id]).await.expect("connect"));
        for (k, v) in ledger.acked.iter().take(500) {
            let shard = client.shard_for(k);
            let r = kv
                .get(GetRequest {
                    context: Some(RequestContext {
                        shard_id: shard.id,
                        epoch: shard.epoch,
                        request_id: vec![],
                        timeout_ms: 0,
                    }),
                    key: k.clone(),
                    consistency: ReadConsistency::Stale as i32,
                })
                .await
                .expect("local read")
                .into_inner();
            assert!(r.found && &r.value == v, "node {id} diverges on {:?}", String::from_utf8_lossy(k));
        }
    }
}

/// The binary refuses bad configuration with one clear line and exit code 1.
#[test]
fn bad_flags_are_refused() {
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["storenode", "--node-id", "1", "--peer", "nonsense"])
        .output()
        .expect("run ringkv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--peer \"nonsense\": expected ID=ADDRESS"), "stderr: {err}");

    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("bad.toml");
    std::fs::write(&cfg, "node_id = 1\nlisten_adr = \"127.0.0.1:1\"\n").expect("write config");
    let out = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["storenode", "--config"])
        .arg(&cfg)
        .output()
        .expect("run ringkv");
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen_adr"), "an unknown config key is named: {err}");
}
