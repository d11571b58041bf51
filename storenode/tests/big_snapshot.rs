//! A node installs a snapshot of a shard holding >= 200 MiB while it leads
//! 32 other shards under write load: none of them loses leadership (asserted),
//! and their write latency before and during the install is printed (not
//! asserted: timings on a shared 2-core debug build are too noisy to gate on).
//!
//! Three in-process storenodes on 127.0.0.1, 33 shards with a voter on every
//! node. Node A (1) leads the 32 "busy" shards; the big shard is led by B (2).
//! A's replica of the big shard is removed before the fill (so only B and C
//! hold the data), then a new, empty learner replica is added on A: the leader
//! must send it a snapshot of everything, which A receives and installs on a
//! worker thread while its loop keeps serving the busy shards.
//!
//! Writers put small values to the busy shards through A; their latencies
//! are kept per window (baseline; snapshot generated and streamed; installed
//! on A; after), with every write over 50 ms listed by when it started. A is
//! polled through the whole snapshot: every busy shard must stay led by A,
//! and (leader, term) must be the same before and after.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::RngCore;
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::{BatchPutRequest, GetRequest, KvPair, PutRequest, ReadConsistency, RequestContext};
use ringkv_proto::meta::{Replica, ReplicaRole, ShardDescriptor};
use ringkv_proto::raft::admin_client::AdminClient;
use ringkv_proto::raft::{
    ChangeKind, ChangeReplicasRequest, CreateReplicaRequest, ReplicaChange, ReplicaStatus, ShardStatusRequest,
    TransferLeaderRequest,
};
use ringkv_storenode::testkit::{connect, eventually, replica_id, LocalCluster};
use tonic::transport::Channel;

const A: u64 = 1;
const B: u64 = 2;
const SHARDS: u64 = 33;
/// 208 values of 1 MiB (the default largest value), 8 per batch (one entry).
const VALUE_BYTES: usize = 1 << 20;
const VALUES: usize = 208;
const PER_BATCH: usize = 8;
const WRITERS: usize = 4;
const BASELINE: Duration = Duration::from_secs(3);
/// Hard bounds on the writer load, whatever happens to the install.
const MAX_WRITES_PER_WRITER: u64 = 100_000;
const MAX_LOAD: Duration = Duration::from_secs(90);
const RPC_TIMEOUT: Duration = Duration::from_secs(5);

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

fn ctx(shard: &ShardDescriptor) -> RequestContext {
    let request_id: [u8; 16] = rand::random();
    RequestContext { shard_id: shard.id, epoch: shard.epoch, request_id: request_id.to_vec(), timeout_ms: 0 }
}

fn big_key(i: usize) -> Vec<u8> {
    format!("{{big}}k{i:04}").into_bytes()
}

/// Value `i`: a window of one random buffer, tagged with `i` (distinct,
/// incompressible, and cheap to rebuild for checking).
fn big_value(base: &[u8], i: usize) -> Vec<u8> {
    let off = (i * 7919) % (base.len() - VALUE_BYTES);
    let mut v = base[off..off + VALUE_BYTES].to_vec();
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

async fn admin(c: &LocalCluster, node: u64) -> Option<AdminClient<Channel>> {
    Some(AdminClient::new(connect(&c.addr(node)).await.ok()?))
}

/// Every replica's status on `node` (None if the node does not answer in time).
async fn status(c: &LocalCluster, node: u64, shard_ids: Vec<u64>) -> Option<Vec<ReplicaStatus>> {
    let mut a = admin(c, node).await?;
    let st = tokio::time::timeout(RPC_TIMEOUT, a.shard_status(ShardStatusRequest { shard_ids })).await.ok()?.ok()?;
    Some(st.into_inner().replicas)
}

/// Shard id -> (leader node, term), from every node's view of the replicas it leads.
async fn leaders(c: &LocalCluster) -> HashMap<u64, (u64, u64)> {
    let mut out = HashMap::new();
    for node in 1..=3 {
        for r in status(c, node, vec![]).await.unwrap_or_default() {
            if r.is_leader {
                out.insert(r.shard.as_ref().map_or(0, |s| s.id), (node, r.term));
            }
        }
    }
    out
}

/// Moves each shard's leadership to the node `want` names, re-asking every
/// couple of seconds (a transfer can be dropped), until all are there.
async fn place_leaders(c: &LocalCluster, want: &HashMap<u64, u64>) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last_ask: Option<Instant> = None;
    loop {
        let now = leaders(c).await;
        let wrong: Vec<(u64, u64)> =
            want.iter().filter(|(s, n)| now.get(s).map(|l| l.0) != Some(**n)).map(|(s, n)| (*s, *n)).collect();
        if wrong.is_empty() {
            return;
        }
        assert!(Instant::now() < deadline, "leaders not placed in time: {} shards left: {wrong:?}", wrong.len());
        if !matches!(last_ask, Some(t) if t.elapsed() < Duration::from_secs(2)) {
            last_ask = Some(Instant::now());
            for (shard, to) in wrong {
                let Some(&(from, _)) = now.get(&shard) else { continue };
                if let Some(mut a) = admin(c, from).await {
                    let req = TransferLeaderRequest { shard_id: shard, to_replica_id: replica_id(shard, to) };
                    let _ = tokio::time::timeout(RPC_TIMEOUT, a.transfer_leader(req)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn change(kind: ChangeKind, replica_id: u64, node_id: u64, role: ReplicaRole) -> ReplicaChange {
    ReplicaChange { kind: kind as i32, replica: Some(Replica { replica_id, node_id, role: role as i32 }) }
}

/// The writer load's phases: before the learner is added; while the leader
/// generates and streams the snapshot; while A installs it; after.
const PHASES: [&str; 4] = ["baseline", "gen + transfer", "install", "after install"];

/// Per-phase latencies (µs) and error counts of the writer load.
struct Load {
    hist: [Histogram<u64>; 4],
    errors: [u64; 4],
    first_error: Option<String>,
    /// Writes slower than [`SLOW`]: (start, latency µs), for the timeline.
    slow: Vec<(Instant, u64)>,
}

const SLOW: Duration = Duration::from_millis(50);

impl Load {
    fn new() -> Self {
        let h = || Histogram::<u64>::new_with_bounds(1, 120_000_000, 3).unwrap();
        Load { hist: [h(), h(), h(), h()], errors: [0; 4], first_error: None, slow: Vec::new() }
    }

    fn merge(&mut self, o: Load) {
        for (h, oh) in self.hist.iter_mut().zip(&o.hist) {
            h.add(oh).unwrap();
        }
        for (e, oe) in self.errors.iter_mut().zip(o.errors) {
            *e += oe;
        }
        self.first_error = self.first_error.take().or(o.first_error);
        self.slow.extend(o.slow);
    }
}

/// One writer: small puts round-robin over the busy shards, straight to their
/// leader on A, each latency recorded under the phase it started in.
async fn writer(
    w: usize,
    kv: ShardKvClient<Channel>,
    targets: Arc<Vec<(ShardDescriptor, Vec<u8>)>>,
    phase: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
) -> Load {
    let mut load = Load::new();
    let started = Instant::now();
    let value = vec![b'v'; 128];
    for n in 0..MAX_WRITES_PER_WRITER {
        if stop.load(Ordering::Relaxed) || started.elapsed() > MAX_LOAD {
            break;
        }
        let (shard, key) = &targets[(n as usize * WRITERS + w) % targets.len()];
        let p = phase.load(Ordering::Relaxed);
        let t = Instant::now();
        let mut kv = kv.clone();
        let req = PutRequest { context: Some(ctx(shard)), key: key.clone(), value: value.clone() };
        match tokio::time::timeout(RPC_TIMEOUT * 2, kv.put(req)).await {
            Ok(Ok(_)) => {
                let took = t.elapsed();
                load.hist[p].saturating_record(took.as_micros() as u64);
                if took > SLOW {
                    load.slow.push((t, took.as_micros() as u64));
                }
            }
            Ok(Err(e)) => {
                load.errors[p] += 1;
                load.first_error.get_or_insert_with(|| format!("shard {}: {e}", shard.id));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => {
                load.errors[p] += 1;
                load.first_error.get_or_insert_with(|| format!("shard {}: client timeout", shard.id));
            }
        }
    }
    load
}

fn ms(us: u64) -> f64 {
    us as f64 / 1000.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn big_snapshot_install_keeps_other_leaders() {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let c = LocalCluster::start(dir.path(), 3, SHARDS, |cfg| {
        // Default tick (100 ms) and election timeout (10-20 ticks); a short
        // log so the new replica can only be caught up by snapshot.
        cfg.raft.compact_log_entries = 20;
    })
    .await
    .expect("start cluster");
    let c = Arc::new(c);
    // The body runs in its own task so the cluster is shut down even if it panics.
    let body = tokio::spawn(run(c.clone()));
    let res = body.await;
    match Arc::try_unwrap(c) {
        Ok(c) => c.shutdown().await,
        Err(_) => eprintln!("cluster still referenced; not shut down"),
    }
    drop(dir);
    if let Err(e) = res {
        std::panic::resume_unwind(e.into_panic());
    }
}

async fn run(c: Arc<LocalCluster>) {
    let t0 = Instant::now();
    let c = &*c;
    c.wait_for_leaders(Duration::from_secs(30)).await.expect("leaders");
    let client = c.client();
    let big = client.shard_for(b"{big}");
    let busy: Vec<ShardDescriptor> = c.shards.iter().filter(|s| s.id != big.id).cloned().collect();
    assert_eq!(busy.len(), 32);

    // 1. Leaders: every busy shard on A, the big shard on B.
    let mut want: HashMap<u64, u64> = busy.iter().map(|s| (s.id, A)).collect();
    want.insert(big.id, B);
    place_leaders(c, &want).await;
    println!("leaders placed after {:?}", t0.elapsed());

    // 2. Take A's replica of the big shard out (B and C keep the data).
    let mut a_b = admin(c, B).await.unwrap();
    let after_remove = a_b
        .change_replicas(ChangeReplicasRequest {
            shard_id: big.id,
            epoch: None,
            changes: vec![change(ChangeKind::Remove, replica_id(big.id, A), A, ReplicaRole::Voter)],
        })
        .await
        .expect("remove A's replica of the big shard")
        .into_inner()
        .shard
        .unwrap();
    eventually("A drops its big-shard replica", Duration::from_secs(20), || async {
        status(c, A, vec![big.id]).await?.is_empty().then_some(())
    })
    .await;

    // 3. Fill the big shard through its leader on B: 8 MiB batches, 2 at a time.
    let mut base = vec![0u8; 2 * VALUE_BYTES];
    rand::thread_rng().fill_bytes(&mut base);
    let base = Arc::new(base);
    let fill_start = Instant::now();
    let kv_b = ShardKvClient::new(connect(&c.addr(B)).await.unwrap());
    let next = Arc::new(AtomicU64::new(0));
    let mut fillers = Vec::new();
    for _ in 0..2 {
        let (kv, base, next, shard) = (kv_b.clone(), base.clone(), next.clone(), after_remove.clone());
        fillers.push(tokio::spawn(async move {
            loop {
                let b = next.fetch_add(1, Ordering::Relaxed) as usize;
                if b * PER_BATCH >= VALUES {
                    return;
                }
                let pairs: Vec<KvPair> = (b * PER_BATCH..(b + 1) * PER_BATCH)
                    .map(|i| KvPair { key: big_key(i), value: big_value(&base, i) })
                    .collect();
                let req = BatchPutRequest { context: Some(ctx(&shard)), pairs };
                // Same request id on retry: applied at most once.
                let mut tries = 0;
                loop {
                    let mut kv = kv.clone();
                    match tokio::time::timeout(Duration::from_secs(20), kv.batch_put(req.clone())).await {
                        Ok(Ok(_)) => break,
                        res => {
                            tries += 1;
                            assert!(tries < 5, "batch {b} failed: {res:?}");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                    }
                }
            }
        }));
    }
    for f in fillers {
        f.await.expect("filler");
    }
    let filled = VALUES * VALUE_BYTES;
    println!("filled the big shard (id {}) with {} MiB in {:?}", big.id, filled >> 20, fill_start.elapsed());
    let leader_st = status(c, B, vec![big.id]).await.expect("B status").remove(0);
    assert!(leader_st.is_leader && leader_st.first_log_index > 1, "log compacted on the leader: {leader_st:?}");

    // 4. The writer load against the 32 busy shards, straight to A.
    let mut targets = Vec::new();
    for s in &busy {
        let key =
            (0..).map(|n| format!("busy-{}-{n}", s.id).into_bytes()).find(|k| client.shard_for(k).id == s.id).unwrap();
        targets.push((s.clone(), key));
    }
    let targets = Arc::new(targets);
    let before = leaders(c).await;
    for s in &busy {
        assert_eq!(before.get(&s.id).map(|l| l.0), Some(A), "shard {} led by A before", s.id);
    }
    let phase = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let kv_a = ShardKvClient::new(connect(&c.addr(A)).await.unwrap());
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(w, kv_a.clone(), targets.clone(), phase.clone(), stop.clone())))
        .collect();
    // Whatever happens below, the writers stop (they also stop on their own after MAX_LOAD).
    struct StopOnDrop(Arc<AtomicBool>);
    impl Drop for StopOnDrop {
        fn drop(&mut self) {
            self.0.store(true, Ordering::Relaxed);
        }
    }
    let _stop_guard = StopOnDrop(stop.clone());
    tokio::time::sleep(BASELINE).await;

    // 5. Add an empty learner on A: B must send it a snapshot, A installs it.
    let snaps = |event: &str| c.node(A).unwrap().metrics.raft.snapshots.with_label_values(&[event]).get();
    let (received0, applied0) = (snaps("received"), snaps("applied"));
    phase.store(1, Ordering::Relaxed);
    let install_start = Instant::now();
    let new_id = big.id * 1000 + 11;
    let mut empty = after_remove.clone();
    empty.replicas.clear();
    admin(c, A)
        .await
        .unwrap()
        .create_replica(CreateReplicaRequest {
            shard: Some(empty),
            replica_id: new_id,
            bootstrap: false,
            campaign: false,
        })
        .await
        .expect("create the empty replica on A");
    a_b.change_replicas(ChangeReplicasRequest {
        shard_id: big.id,
        epoch: None,
        changes: vec![change(ChangeKind::AddLearner, new_id, A, ReplicaRole::Learner)],
    })
    .await
    .expect("add the learner on A");

    // Watch A until the snapshot is applied: when it arrived, whether the
    // replica was seen installing, whether A kept leading every busy shard,
    // and how long A's loop took to answer a status call.
    let (mut received_at, mut installing_seen, mut applied_at) = (None, None, None);
    let mut lost: Vec<String> = Vec::new();
    let mut slowest_status = Duration::ZERO;
    let deadline = Instant::now() + Duration::from_secs(120);
    while applied_at.is_none() {
        assert!(Instant::now() < deadline, "snapshot not applied on A in time");
        if received_at.is_none() && snaps("received") > received0 {
            received_at = Some(install_start.elapsed());
            phase.store(2, Ordering::Relaxed);
        }
        let t = Instant::now();
        let st = status(c, A, vec![]).await;
        slowest_status = slowest_status.max(t.elapsed());
        if let Some(st) = st {
            for r in &st {
                let id = r.shard.as_ref().map_or(0, |s| s.id);
                if id == big.id && r.applying_snapshot && installing_seen.is_none() {
                    installing_seen = Some(install_start.elapsed());
                }
                if id != big.id && !r.is_leader {
                    lost.push(format!("shard {id} not led by A at {:?} (term {})", install_start.elapsed(), r.term));
                }
            }
            let big_ok = st.iter().any(|r| {
                r.shard.as_ref().is_some_and(|s| s.id == big.id) && !r.applying_snapshot && r.applied_index > 0
            });
            if big_ok && snaps("applied") > applied0 {
                applied_at = Some(install_start.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    phase.store(3, Ordering::Relaxed);
    // A short window after the install, for comparison.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    let mut load = Load::new();
    for w in writers {
        load.merge(w.await.expect("writer"));
    }

    // 6. Figures (printed, not asserted).
    let snap_size = std::fs::read_dir(c.configs[B as usize - 1].data_dir.join("snap").join("gen"))
        .ok()
        .and_then(|rd| {
            rd.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{}_", big.id)))
                .filter_map(|e| e.metadata().ok().map(|m| m.len()))
                .max()
        })
        .unwrap_or(0);
    let applied_at = applied_at.unwrap();
    println!(
        "snapshot: {:.1} MiB; learner added -> received {:?} -> applying seen {:?} -> applied {:?} \
         (install ~{:?} after receipt)",
        snap_size as f64 / (1u64 << 20) as f64,
        received_at,
        installing_seen,
        applied_at,
        received_at.map(|r| applied_at.saturating_sub(r)),
    );
    println!("slowest status answer from A's loop during the install: {slowest_status:?}");
    let line = |name: &str, h: &Histogram<u64>, errors: u64| {
        println!(
            "{name:>15}: {:>6} writes, {errors:>3} errors, p50 {:>7.2} ms, p99 {:>7.2} ms, max {:>8.2} ms",
            h.len(),
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        )
    };
    for (p, name) in PHASES.iter().enumerate() {
        line(name, &load.hist[p], load.errors[p]);
    }
    let mut during = load.hist[1].clone();
    during.add(&load.hist[2]).unwrap();
    line("whole snapshot", &during, load.errors[1] + load.errors[2]);
    let before_h = &load.hist[0];
    println!(
        "during the snapshot / baseline: p99 {:.2}x, p50 {:.2}x",
        during.value_at_quantile(0.99) as f64 / before_h.value_at_quantile(0.99).max(1) as f64,
        during.value_at_quantile(0.5) as f64 / before_h.value_at_quantile(0.5).max(1) as f64,
    );
    load.slow.sort();
    let slow: Vec<String> = load
        .slow
        .iter()
        .map(|(t, us)| format!("{:.2}s:{:.0}ms", t.saturating_duration_since(install_start).as_secs_f64(), ms(*us)))
        .collect();
    println!(
        "{} writes over {SLOW:?} (start, relative to the learner's addition: latency){}: {}",
        slow.len(),
        if slow.len() > 60 { ", first 60" } else { "" },
        slow[..slow.len().min(60)].join(" ")
    );
    if let Some(e) = &load.first_error {
        println!("first writer error: {e}");
    }

    // 7. Assertions: no busy shard changed leader or term; the snapshot was
    // applied and A's replica holds the big shard's data.
    assert!(lost.is_empty(), "A lost leadership during the install: {lost:?}");
    let after = leaders(c).await;
    for s in &busy {
        assert_eq!(after.get(&s.id), before.get(&s.id), "shard {}: (leader node, term) before vs after", s.id);
    }
    assert!(snaps("applied") > applied0, "A applied a snapshot");
    assert!(!load.hist[0].is_empty() && !during.is_empty(), "writes measured before and during the snapshot");
    let mine = status(c, A, vec![big.id]).await.expect("A status").remove(0);
    assert_eq!(mine.replica_id, new_id);
    assert!(mine.failure.is_empty(), "{mine:?}");
    assert!(mine.applied_index >= leader_st.applied_index, "A applied {mine:?}, leader was at {leader_st:?}");
    let mut kv = kv_a.clone();
    let shard = ShardDescriptor { epoch: mine.shard.as_ref().and_then(|s| s.epoch), ..after_remove.clone() };
    for i in [0, 1, 7, 50, 99, 100, 150, VALUES - 2, VALUES - 1] {
        let r = kv
            .get(GetRequest { context: Some(ctx(&shard)), key: big_key(i), consistency: ReadConsistency::Stale as i32 })
            .await
            .expect("stale read on A")
            .into_inner();
        assert!(r.found, "key {i} on A");
        assert!(r.value == big_value(&base, i), "value {i} on A matches");
    }
    println!("total {:?}", t0.elapsed());
}
