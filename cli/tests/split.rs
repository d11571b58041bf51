//! Shards split by themselves, as processes: one shard, 200 MiB written with
//! a 32 MiB limit. Asserts: the cluster ends with every shard under the
//! limit, every acknowledged write reads back, and no data was copied to
//! split (the storenodes' `data` CF apply counters add up to the bytes the
//! clients wrote, once per replica, and no snapshot was installed). Manual
//! splits through the CLI, and their refusals. Prints the shard count and
//! timings (figures for the closing note; not asserted).

mod common;

use std::time::{Duration, Instant};

use common::{eventually, metric, run_cli, scrape, TestCluster};
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{ClusterStatusRequest, ClusterStatusResponse, GetShardMapRequest, ShardMap};

const VALUE_BYTES: usize = 64 << 10;
const VALUES: usize = 3200; // 200 MiB
const WRITERS: usize = 8;
const LIMIT: u64 = 32 << 20;

async fn status(pc: &PlacementClient) -> Option<ClusterStatusResponse> {
    pc.call(Duration::from_secs(3), |mut c| async move { c.cluster_status(ClusterStatusRequest {}).await }).await.ok()
}

async fn shard_map(pc: &PlacementClient) -> Option<ShardMap> {
    pc.call(Duration::from_secs(3), |mut c| async move { c.get_shard_map(GetShardMapRequest {}).await }).await.ok()
}

/// A value that does not compress (sizes are measured on disk), distinct
/// per `i`: xorshift64* output.
fn value(i: usize) -> Vec<u8> {
    let mut x = (i as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    let mut v = Vec::with_capacity(VALUE_BYTES);
    while v.len() < VALUE_BYTES {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_shard_splits_by_size_under_writes_without_copying_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start_with(
        dir.path(),
        1,
        3,
        1,
        1,
        &["--shard-max-bytes", "32MiB", "--split-detections", "0"],
        &["--size-check-ms", "1000"],
    );
    cluster.wait_serving(Duration::from_secs(90)).await;
    let pc = PlacementClient::new(cluster.placement.clone());

    let start = Instant::now();
    cluster.put_big(WRITERS, VALUES, value).await;
    let wrote = Instant::now();
    let map = shard_map(&pc).await.expect("the shard map");
    println!(
        "wrote {} MiB in {:?}; {} shards by then",
        (VALUES * VALUE_BYTES) >> 20,
        start.elapsed(),
        map.shards.len()
    );

    // Splits go on until every shard measures under the limit.
    let shards = eventually("every shard under 32 MiB", Duration::from_secs(240), || {
        let pc = &pc;
        async move {
            let st = status(pc).await?;
            let measured = st.shard_stats.iter().filter(|s| s.approximate_bytes > 0).count();
            let all_small = st.shard_stats.iter().all(|s| s.approximate_bytes < LIMIT);
            (measured as u32 == st.shards && all_small && st.shards >= 6).then_some(st)
        }
    })
    .await;
    println!(
        "{} shards, every one under 32 MiB, {:?} after the last write; sizes (MiB): {:?}",
        shards.shards,
        wrote.elapsed(),
        shards.shard_stats.iter().map(|s| s.approximate_bytes >> 20).collect::<Vec<_>>()
    );

    // Every write reads back, through routers that followed the splits.
    let client = cluster.client().await;
    for i in 0..VALUES {
        let got = client.get(format!("big-{i}").as_bytes()).await.expect("get");
        assert!(got.as_deref() == Some(value(i).as_slice()), "big-{i} reads back");
    }

    // No data was copied: each node applied the clients' bytes once (its
    // replica of each write, plus the probe), and no snapshot was installed.
    // A data key is the 8-byte hash and the key; a value has a 2-byte header.
    let written: u64 = (0..VALUES).map(|i| (8 + format!("big-{i}").len() + 2 + VALUE_BYTES) as u64).sum();
    let mut created = 0;
    for http in &cluster.storenode_http {
        let m = scrape(http);
        let data = metric(&m, "ringkv_raft_apply_bytes_written_total", "cf=\"data\"");
        assert!(
            data >= written && data < written + written / 100,
            "node {http}: {data} bytes applied, {written} written"
        );
        assert_eq!(metric(&m, "ringkv_raft_snapshots_total", "event=\"applied\""), 0, "node {http}: no snapshot");
        created += metric(&m, "ringkv_raft_split_replicas_created_total", "");
    }
    let map = shard_map(&pc).await.expect("the shard map");
    assert_eq!(created, 3 * (map.shards.len() as u64 - 1), "every split made its three replicas by applying it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shard_splits_by_hand_at_a_hash_and_bad_requests_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), 1, 3, 1, 2);
    cluster.wait_serving(Duration::from_secs(90)).await;
    let pc = PlacementClient::new(cluster.placement.clone());
    let client = cluster.client().await;
    for i in 0..200 {
        client.put(format!("k{i}").as_bytes(), format!("v{i}").as_bytes()).await.expect("put");
    }
    let placement = cluster.placement.join(",");
    let env = [("RINGKV_PLACEMENT", placement.as_str())];
    let map = shard_map(&pc).await.expect("the map");
    let low = map.shards.iter().filter_map(|s| s.shard.clone()).find(|d| d.start == 0).expect("the first shard");
    let id = low.id.to_string();

    let (ok, _, err) = run_cli(&["shard", "split", "999999", "--at", "0x10"], &env);
    assert!(!ok && err.contains("shard 999999 is unknown"), "{err}");
    let (ok, _, err) = run_cli(&["shard", "split", &id, "--at", "0"], &env);
    assert!(!ok && err.contains("not strictly inside"), "{err}");
    let (ok, _, err) = run_cli(&["shard", "split", &id, "--at", &low.end.to_string()], &env);
    assert!(!ok && err.contains("not strictly inside"), "the end of the range: {err}");
    let (ok, _, err) = run_cli(&["shard", "split", &id, "--at", "banana"], &env);
    assert!(!ok && err.contains("expected a hash"), "{err}");

    // At a given hash, then at the middle of what it holds.
    let at = low.end / 4;
    let (ok, out, err) = run_cli(&["shard", "split", &id, "--at", &format!("{at:#x}"), "--output", "json"], &env);
    assert!(ok, "{err}");
    let halves: Vec<serde_json::Value> = serde_json::from_str(&out).expect("json");
    assert_eq!(halves.len(), 2, "{out}");
    assert_eq!(halves[1]["start"], format!("{at:016x}"), "{out}");
    let new_id = halves[1]["id"].as_u64().expect("the new shard's id");
    let (ok, out, err) = run_cli(&["shard", "split", &new_id.to_string()], &env);
    assert!(ok, "{out} {err}");

    let map = eventually("four shards, all led", Duration::from_secs(30), || {
        let pc = &pc;
        async move {
            let m = shard_map(pc).await?;
            (m.shards.len() == 4 && m.shards.iter().all(|s| s.leader_node_id != 0)).then_some(m)
        }
    })
    .await;
    let mut ranges: Vec<(u64, u64)> =
        map.shards.iter().filter_map(|s| s.shard.as_ref()).map(|d| (d.start, d.end)).collect();
    ranges.sort();
    assert_eq!(ranges[0].0, 0);
    for w in ranges.windows(2) {
        assert_eq!(w[0].1, w[1].0, "the shards tile the ring: {ranges:x?}");
    }
    assert_eq!(ranges[3].1, 0);
    for i in 0..200 {
        let got = client.get(format!("k{i}").as_bytes()).await.expect("get");
        assert_eq!(got.as_deref(), Some(format!("v{i}").as_bytes()), "k{i}");
    }
}

/// Reads and writes over a range of `keys` keys for `dur`: operations done.
async fn hot_load(cluster: &TestCluster, keys: usize, dur: Duration) -> u64 {
    let until = Instant::now() + dur;
    let mut tasks = Vec::new();
    for w in 0..8usize {
        let client = cluster.client().await;
        tasks.push(tokio::spawn(async move {
            let mut done = 0u64;
            let mut i = w;
            while Instant::now() < until {
                let k = format!("hot-{}", i % keys);
                let ok = if i % 2 == 0 {
                    client.put(k.as_bytes(), b"v").await.is_ok()
                } else {
                    client.get(k.as_bytes()).await.is_ok()
                };
                done += u64::from(ok);
                i += 8;
            }
            done
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.expect("load task");
    }
    total
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hot_range_splits_by_load_and_is_served_by_leaders_on_two_nodes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start_with(
        dir.path(),
        1,
        3,
        1,
        1,
        &["--shard-max-bytes", "0", "--split-qps", "40", "--split-detections", "3"],
        &[],
    );
    cluster.wait_serving(Duration::from_secs(90)).await;
    let pc = PlacementClient::new(cluster.placement.clone());
    let window = Duration::from_secs(5);
    let before = hot_load(&cluster, 1000, window).await;

    // Under load until the range is split and led from two nodes.
    let load = {
        let c = cluster.client().await;
        let until = Instant::now() + Duration::from_secs(60);
        tokio::spawn(async move {
            let mut i = 0usize;
            while Instant::now() < until {
                let _ = c.put(format!("hot-{}", i % 1000).as_bytes(), b"v").await;
                i += 1;
            }
        })
    };
    let map = eventually("the hot range split by load and led from two nodes", Duration::from_secs(60), || {
        let pc = &pc;
        async move {
            let m = shard_map(pc).await?;
            let leaders: std::collections::BTreeSet<u64> = m.shards.iter().map(|s| s.leader_node_id).collect();
            (m.shards.len() >= 2 && !leaders.contains(&0) && leaders.len() >= 2).then_some(m)
        }
    })
    .await;
    load.abort();
    let splits = metric(&scrape(&cluster.placement_http[0]), "ringkv_placement_splits_total", "reason=\"load\"");
    assert!(splits >= 1, "split by load, not by size or by hand: {splits}");
    let after = hot_load(&cluster, 1000, window).await;
    println!(
        "load split: {} shards led from {} nodes; throughput {:.0} ops/s before, {:.0} ops/s after (8 clients, debug build)",
        map.shards.len(),
        map.shards.iter().map(|s| s.leader_node_id).collect::<std::collections::BTreeSet<_>>().len(),
        before as f64 / window.as_secs_f64(),
        after as f64 / window.as_secs_f64()
    );
}
