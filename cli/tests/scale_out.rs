//! Scale-out with data, as processes: 3 storenodes, 48 shards × 3 replicas,
//! more than 100 MiB written; a 4th storenode joins while a steady client
//! writes. The ideal is 36 replicas moved (a quarter of 144). Asserts: at
//! most 40 moves (1.1 × the ideal), none rolled back, every node within one
//! replica and one leader of its share, every acknowledged write readable,
//! and snapshot bytes sent within 1.5 × the bytes the moved replicas hold.
//! Prints time to balanced, bytes sent against the ideal and the client's
//! p99 put latency before and during the moves (figures for the closing
//! note; timings are not asserted).

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, free_addr, metric, scrape, TestCluster};
use hdrhistogram::Histogram;
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::ClusterStatusRequest;

const VALUE_BYTES: usize = 64 << 10;
const VALUES: usize = 1700; // 106 MiB
const WRITERS: usize = 8;

/// Snapshot bytes sent by the storenodes at `addrs` (their HTTP addresses).
fn snapshot_bytes(addrs: &[String]) -> u64 {
    addrs.iter().map(|a| metric(&scrape(a), "ringkv_raft_snapshot_bytes_sent_total", "")).sum()
}

/// Value `i` of the bulk load, distinct per `i`.
fn value(i: usize) -> Vec<u8> {
    let mut v: Vec<u8> = (0..VALUE_BYTES)
        .map(|j| (j as u64 ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> (j % 56)) as u8)
        .collect();
    v[..8].copy_from_slice(&(i as u64).to_be_bytes());
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_fourth_node_takes_a_quarter_of_100_mib_with_near_ideal_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 1, 3, 1, 48);
    cluster.wait_serving(Duration::from_secs(90)).await;
    let pc = PlacementClient::new(cluster.placement.clone());

    // > 100 MiB of values, spread over every shard.
    let start = Instant::now();
    cluster.put_big(WRITERS, VALUES, value).await;
    let data_bytes = (VALUES * VALUE_BYTES) as u64;
    println!("wrote {} MiB in {:?}", data_bytes >> 20, start.elapsed());

    // A steady client: one small put after another, latencies by phase.
    let stop = Arc::new(AtomicBool::new(false));
    let during = Arc::new(AtomicBool::new(false));
    let steady = {
        let (client, stop, during) = (cluster.client().await, stop.clone(), during.clone());
        tokio::spawn(async move {
            let mut hists =
                [Histogram::<u64>::new(3).expect("histogram"), Histogram::<u64>::new(3).expect("histogram")];
            let mut acked = Vec::new();
            for i in 0..1_000_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let key = format!("steady-{i}");
                let t = Instant::now();
                if client.put(key.as_bytes(), &[7u8; 1024]).await.is_ok() {
                    let phase = usize::from(during.load(Ordering::SeqCst));
                    let _ = hists[phase].record(t.elapsed().as_micros() as u64);
                    acked.push(key);
                }
            }
            (hists, acked)
        })
    };
    tokio::time::sleep(Duration::from_secs(10)).await; // the "before" phase of the steady client
    let placement_metrics = cluster.placement_http[0].clone();
    let bytes_before = snapshot_bytes(&cluster.storenode_http);

    // The 4th node.
    let http4 = free_addr();
    let mut args = vec!["storenode".to_string(), "--listen".into(), free_addr(), "--http".into(), http4.clone()];
    args.extend(["--data-dir".into(), dir.path().join("storenode-4").display().to_string()]);
    args.extend(["--raft-tick-ms".into(), "50".into()]);
    for p in &cluster.placement {
        args.extend(["--placement".into(), p.clone()]);
    }
    during.store(true, Ordering::SeqCst);
    let joined = Instant::now();
    cluster.procs.start("storenode-4", args);
    eventually("the cluster to balance with the 4th node", Duration::from_secs(600), || async {
        let st = pc
            .call(Duration::from_secs(3), |mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
            .await
            .ok()?;
        (st.loads.len() == 4 && st.balanced).then_some(st)
    })
    .await;
    let to_balanced = joined.elapsed();
    stop.store(true, Ordering::SeqCst);
    let (hists, acked) = steady.await.expect("steady client");

    let pm = scrape(&placement_metrics);
    let moves = metric(&pm, "ringkv_placement_operators_total", "outcome=\"succeeded\"");
    let rolled_back = metric(&pm, "ringkv_placement_operators_total", "outcome=\"rolled-back\"");
    let mut all = cluster.storenode_http.clone();
    all.push(http4);
    let sent = snapshot_bytes(&all) - bytes_before;
    // The new node ends with a quarter of the 3 copies: 3/4 of the data.
    let ideal_bytes = data_bytes * 3 / 4;
    println!(
        "scale-out: {moves} moves (ideal 36), {rolled_back} rolled back, balanced {to_balanced:?} after the join; \
         snapshot bytes sent {} MiB vs ideal {} MiB ({:.2}×); steady put p99 before {} µs, during {} µs ({} / {} puts)",
        sent >> 20,
        ideal_bytes >> 20,
        sent as f64 / ideal_bytes as f64,
        hists[0].value_at_quantile(0.99),
        hists[1].value_at_quantile(0.99),
        hists[0].len(),
        hists[1].len(),
    );
    assert!((30..=40).contains(&moves), "moves {moves}: the ideal is 36, at most 1.1× that");
    assert_eq!(rolled_back, 0);
    assert!(sent <= ideal_bytes * 3 / 2, "sent {sent} bytes for an ideal of {ideal_bytes}: snapshots sent again?");

    let client = cluster.client().await;
    for key in &acked {
        assert!(client.get(key.as_bytes()).await.expect("get").is_some(), "acknowledged {key} lost");
    }
    for i in (0..VALUES).step_by(97) {
        let v = client.get(format!("big-{i}").as_bytes()).await.expect("get").expect("big value");
        assert_eq!((v.len(), &v[..8]), (VALUE_BYTES, &(i as u64).to_be_bytes()[..]));
    }
}
