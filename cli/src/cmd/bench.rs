//! `ringkv bench`: puts/s, gets/s and latency percentiles against a local
//! cluster of storenodes on this machine (started by the bench itself, in a
//! temporary directory unless `--dir` is given).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use ringkv_client::Client;
use ringkv_storenode::testkit::{LocalCluster, ShardClient};
use tokio::sync::Mutex;

#[derive(clap::Args)]
pub struct Args {
    #[arg(long, default_value_t = 3)]
    storenodes: u64,
    #[arg(long, default_value_t = 32)]
    shards: u64,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per phase (puts, then gets).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Distinct keys (8-byte big-endian integers).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Data directory (default: a temporary one, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bench a running cluster through these routers (HOST:PORT, repeatable
    /// or comma-separated) instead of starting one in-process: what
    /// applications see, routing included. `--storenodes`, `--shards` and
    /// `--dir` then do not apply.
    #[arg(long = "router", value_delimiter = ',')]
    routers: Vec<String>,
}

/// What the bench drives: an in-process cluster's shards directly, or a
/// running cluster through its routers.
#[derive(Clone)]
enum Target {
    Local(ShardClient),
    Router(Arc<Client>),
}

impl Target {
    async fn put(&self, key: &[u8], value: &[u8]) -> bool {
        match self {
            Target::Local(c) => c.put(key, value).await.is_ok(),
            Target::Router(c) => c.put(key, value).await.is_ok(),
        }
    }

    async fn get(&self, key: &[u8]) -> bool {
        match self {
            Target::Local(c) => c.get(key).await.is_ok(),
            Target::Router(c) => c.get(key).await.is_ok(),
        }
    }
}

struct PhaseResult {
    ops: u64,
    errors: u64,
    elapsed: Duration,
    hist: Histogram<u64>,
}

impl PhaseResult {
    fn print(&self, name: &str) {
        let secs = self.elapsed.as_secs_f64();
        let q = |p: f64| Duration::from_micros(self.hist.value_at_quantile(p));
        println!(
            "{name:>5}: {:>9.0} ops/s  ({} ok, {} errors in {:.1}s)  p50 {:?}  p99 {:?}  p99.9 {:?}  max {:?}",
            self.ops as f64 / secs,
            self.ops,
            self.errors,
            secs,
            q(0.5),
            q(0.99),
            q(0.999),
            Duration::from_micros(self.hist.max()),
        );
    }
}

async fn phase(client: &Target, a: &Args, write: bool) -> anyhow::Result<PhaseResult> {
    let hist = Arc::new(Mutex::new(Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?));
    let deadline = Instant::now() + Duration::from_secs(a.duration);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..a.clients {
        let (client, hist) = (client.clone(), hist.clone());
        let (keys, value) = (a.keys, vec![b'v'; a.value_size]);
        tasks.push(tokio::spawn(async move {
            let mut local = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut ops, mut errors) = (0u64, 0u64);
            let mut i = c as u64;
            while Instant::now() < deadline {
                // A cheap scramble so clients spread over the key space.
                let key = (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) % keys).to_be_bytes();
                i += 7919;
                let t = Instant::now();
                let ok = if write { client.put(&key, &value).await } else { client.get(&key).await };
                if ok {
                    ops += 1;
                    let _ = local.record(t.elapsed().as_micros() as u64);
                } else {
                    errors += 1;
                }
            }
            let _ = hist.lock().await.add(&local);
            (ops, errors)
        }));
    }
    let (mut ops, mut errors) = (0, 0);
    for t in tasks {
        let (o, e) = t.await?;
        ops += o;
        errors += e;
    }
    let hist = Arc::try_unwrap(hist).map_err(|_| anyhow::anyhow!("histogram still shared"))?.into_inner();
    Ok(PhaseResult { ops, errors, elapsed: start.elapsed(), hist })
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.clients >= 1 && a.keys >= 1 && a.duration >= 1,
        "--clients, --keys and --duration must be positive"
    );
    if !a.routers.is_empty() {
        let client = Client::connect(&a.routers).await.map_err(|e| anyhow::anyhow!("--router: {e}"))?;
        let target = Target::Router(Arc::new(client));
        println!(
            "ringkv bench: through router(s) {}, {} clients, {} keys of 8 bytes, values of {} bytes, {}s per phase",
            a.routers.join(","),
            a.clients,
            a.keys,
            a.value_size,
            a.duration
        );
        phase(&target, &a, true).await?.print("put");
        phase(&target, &a, false).await?.print("get");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    let cluster = LocalCluster::start(&dir, a.storenodes, a.shards, |_| {})
        .await
        .map_err(|e| anyhow::anyhow!("starting the cluster: {e}"))?;
    cluster.wait_for_leaders(Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let client = Target::Local(cluster.client());
    println!(
        "ringkv bench: {} storenodes, {} shards, {} clients, {} keys of 8 bytes, values of {} bytes, {}s per phase",
        a.storenodes, a.shards, a.clients, a.keys, a.value_size, a.duration
    );
    let puts = phase(&client, &a, true).await?;
    puts.print("put");
    let gets = phase(&client, &a, false).await?;
    gets.print("get");
    let mut fsyncs = 0;
    let (mut readies, mut msgs, mut batches) = (0.0, 0u64, 0u64);
    for n in cluster.nodes.iter().flatten() {
        fsyncs += n.metrics.raft.raft_fsyncs.get();
        readies += n.metrics.raft.raft_readies_per_fsync.get_sample_sum();
        msgs += n.metrics.raft.raft_messages_sent.get();
        batches += n.metrics.raft.raft_message_batches_sent.get();
    }
    println!(
        "raft: {fsyncs} fsyncs, {:.1} replica Readies per fsync, {:.1} messages per batch",
        readies / fsyncs.max(1) as f64,
        msgs as f64 / batches.max(1) as f64
    );
    cluster.shutdown().await;
    Ok(())
}
