//! Replicas that move, as processes: a storenode started without an id gets
//! a fresh one and its share of replicas while a writer runs; decommission
//! empties it and marks it REMOVED (and is refused where it would leave too
//! few nodes); a storenode killed for good has its replicas replaced, and
//! when it comes back its stale replicas are deleted; a placement leader
//! killed in the middle of a move leaves the move completed or rolled back;
//! bad requests change nothing.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, free_addr, run_cli, TestCluster};
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{ClusterStatusRequest, GetShardMapRequest, ListOperatorsRequest, ShardMap};
use tokio::sync::Mutex;

/// Clusters are heavy for a 2-core machine: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const START_TIMEOUT: Duration = Duration::from_secs(60);
const MOVE_TIMEOUT: Duration = Duration::from_secs(180);

async fn shard_map(pc: &PlacementClient) -> Option<ShardMap> {
    pc.call(Duration::from_secs(3), |mut c| async move { c.get_shard_map(GetShardMapRequest {}).await }).await.ok()
}

async fn operators(pc: &PlacementClient) -> Option<Vec<ringkv_proto::placement::Operator>> {
    let ops = pc
        .call(Duration::from_secs(3), |mut c| async move { c.list_operators(ListOperatorsRequest {}).await })
        .await
        .ok()?;
    Some(ops.operators)
}

/// node id -> replicas it holds, by placement's shard map.
fn replicas_per_node(map: &ShardMap) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for d in map.shards.iter().filter_map(|s| s.shard.as_ref()) {
        for r in &d.replicas {
            *out.entry(r.node_id).or_default() += 1;
        }
    }
    out
}

/// Every shard has exactly `rf` voters on distinct nodes and no learner.
fn fully_replicated(map: &ShardMap, rf: usize) -> bool {
    map.shards.iter().filter_map(|s| s.shard.as_ref()).all(|d| {
        let nodes: BTreeSet<u64> = d.replicas.iter().map(|r| r.node_id).collect();
        d.replicas.len() == rf && nodes.len() == rf && d.replicas.iter().all(|r| r.role == 0)
    })
}

/// `ringkv storenode` arguments for a node joining `cluster`, with no node id.
fn new_storenode_args(cluster: &TestCluster, data_dir: &std::path::Path, node_id: Option<u64>) -> Vec<String> {
    let mut args = vec!["storenode".to_string()];
    if let Some(id) = node_id {
        args.extend(["--node-id".into(), id.to_string()]);
    }
    args.extend([
        "--listen".into(),
        free_addr(),
        "--http".into(),
        free_addr(),
        "--data-dir".into(),
        data_dir.display().to_string(),
        "--raft-tick-ms".into(),
        "50".into(),
    ]);
    for p in &cluster.placement {
        args.extend(["--placement".into(), p.clone()]);
    }
    args
}

/// A writer that puts `w-N` keys until stopped; the keys it was told were written.
fn start_writer(client: ringkv_client::Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let mut acked = Vec::new();
        for i in 0..100_000u64 {
            if stop.load(Ordering::SeqCst) {
                break;
            }
            let key = format!("w-{i}");
            if client.put(key.as_bytes(), key.as_bytes()).await.is_ok() {
                acked.push(key);
            }
        }
        acked
    })
}

/// Starts `name` with `args`, waits until it exits on its own, and returns its log.
async fn refused_at_start(procs: &mut common::Procs, name: &str, args: Vec<String>) -> String {
    procs.start(name, args);
    eventually(&format!("{name} to exit"), START_TIMEOUT, || {
        let running = procs.is_running(name);
        async move { (!running).then_some(()) }
    })
    .await;
    std::fs::read_to_string(procs.dir().join(format!("{name}.log"))).unwrap_or_default()
}

async fn check_acked(client: &ringkv_client::Client, acked: &[String]) {
    for key in acked {
        let got = client.get(key.as_bytes()).await.expect("read back");
        assert_eq!(got.as_deref(), Some(key.as_bytes()), "acknowledged write {key} lost");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_gets_an_id_and_its_share_and_decommission_moves_everything_off_it_under_a_writer() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 1, 3, 1, 12);
    cluster.wait_serving(START_TIMEOUT).await;
    let penv = [("RINGKV_PLACEMENT", cluster.placement[0].as_str())];
    let pc = PlacementClient::new(cluster.placement.clone());

    // Refused where it would leave fewer UP nodes than the replication factor.
    let (ok, out, err) = run_cli(&["node", "decommission", "3"], &penv);
    assert!(!ok && err.contains("fewer than the replication factor"), "{out}{err}");
    let (_, out, _) = run_cli(&["node", "list", "-o", "json"], &penv);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(nodes.as_array().expect("nodes").iter().all(|n| n["state"] == "up"), "nothing changed: {out}");

    // Bad input: a clear error each, nothing changed.
    let map = shard_map(&pc).await.expect("shard map");
    let shard = map.shards[0].shard.clone().expect("descriptor");
    let (holder, id) = (shard.replicas[0].node_id.to_string(), shard.id.to_string());
    let other = shard.replicas[1].node_id.to_string();
    for (args, want) in [
        (vec!["shard", "move", &id, "--from", &holder, "--to", &other], "already holds a replica"),
        (vec!["shard", "move", "999999", "--from", &holder, "--to", &other], "shard 999999 does not exist"),
        (vec!["shard", "move", &id, "--from", &holder, "--to", "4242"], "node 4242 is not registered"),
        (vec!["node", "decommission", "4242"], "node 4242 is not registered"),
        (vec!["operator", "cancel", "4242"], "operator 4242 is not in flight"),
    ] {
        let (ok, out, err) = run_cli(&args, &penv);
        assert!(!ok && err.contains(want), "{args:?}: {out}{err}");
    }
    assert_eq!(shard_map(&pc).await.expect("map").version, map.version, "refused requests change nothing");

    let client = cluster.client().await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_writer(cluster.client().await, stop.clone());

    // A 4th storenode, started without --node-id, gets a fresh id and keeps it.
    let data4 = dir.path().join("storenode-new");
    cluster.procs.start("storenode-new", new_storenode_args(&cluster, &data4, None));
    let new_id: u64 = eventually("the new node to register", START_TIMEOUT, || async {
        let identity = std::fs::read_to_string(data4.join("identity.toml")).ok()?;
        let line = identity.lines().find(|l| l.starts_with("node_id"))?;
        line.split('=').nth(1)?.trim().parse().ok()
    })
    .await;
    assert!(new_id >= 1000, "a placement-allocated id, not a config default: {new_id}");

    // It gets its share: 36 replicas over 4 nodes, 9 each (±1), while the writer runs.
    let started = Instant::now();
    eventually("the cluster to balance onto the new node", MOVE_TIMEOUT, || async {
        let map = shard_map(&pc).await?;
        let per = replicas_per_node(&map);
        let balanced = per.len() == 4 && per.values().all(|n| n.abs_diff(9) <= 1) && fully_replicated(&map, 3);
        balanced.then_some(())
    })
    .await;
    println!("balanced onto the new node in {:?}", started.elapsed());
    let st = pc
        .call(Duration::from_secs(3), |mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
        .await
        .expect("status");
    assert_eq!(st.under_replicated, 0);

    // Another process claiming the new node's id (a fresh data dir) is refused.
    let data5 = dir.path().join("storenode-impostor");
    let args = new_storenode_args(&cluster, &data5, Some(new_id));
    let log = refused_at_start(&mut cluster.procs, "impostor", args).await;
    assert!(log.contains("belongs to another storenode"), "{log}");

    // A data dir made by another cluster refuses to start.
    let data6 = dir.path().join("storenode-foreign");
    std::fs::create_dir_all(&data6).expect("mkdir");
    std::fs::write(data6.join("identity.toml"), "node_id = 0\ncluster_id = 12345\ninstance = \"f00\"\n")
        .expect("identity");
    let args = new_storenode_args(&cluster, &data6, None);
    let log = refused_at_start(&mut cluster.procs, "foreign", args).await;
    assert!(log.contains("belongs to cluster 12345"), "{log}");

    // Decommission: every replica moves off; the node ends REMOVED by itself.
    let (ok, out, err) = run_cli(&["node", "decommission", &new_id.to_string(), "--wait", "--stall-secs", "20"], &penv);
    assert!(ok && out.contains("is REMOVED"), "{out}{err}");
    let map = shard_map(&pc).await.expect("map");
    assert_eq!(replicas_per_node(&map).get(&new_id), None, "no replica left on the decommissioned node");
    assert!(fully_replicated(&map, 3));

    stop.store(true, Ordering::SeqCst);
    let acked = writer.await.expect("writer");
    assert!(acked.len() > 100, "the writer made progress during the moves: {}", acked.len());
    check_acked(&client, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_node_is_replaced_and_when_it_returns_its_stale_replicas_are_deleted() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 1, 4, 1, 8);
    cluster.wait_serving(START_TIMEOUT).await;
    let pc = PlacementClient::new(cluster.placement.clone());
    let client = cluster.client().await;
    for i in 0..200u32 {
        client.put(format!("k{i}").as_bytes(), b"v").await.expect("put");
    }
    // Let the first balancing (4 nodes, ring placement) settle.
    eventually("the cluster to balance", MOVE_TIMEOUT, || async {
        let st = pc
            .call(Duration::from_secs(3), |mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
            .await
            .ok()?;
        st.balanced.then_some(())
    })
    .await;
    // Planned downtime: leaderships leave node 3, its replicas stay.
    let penv = [("RINGKV_PLACEMENT", cluster.placement[0].as_str())];
    let held = replicas_per_node(&shard_map(&pc).await.expect("map")).get(&3).copied();
    let (ok, out, err) = run_cli(&["node", "maintenance", "3", "on"], &penv);
    assert!(ok && out.contains("maintenance"), "{out}{err}");
    eventually("no shard led by the node in maintenance", MOVE_TIMEOUT, || async {
        let map = shard_map(&pc).await?;
        map.shards.iter().all(|s| s.leader_node_id != 3 && s.leader_node_id != 0).then_some(())
    })
    .await;
    assert_eq!(replicas_per_node(&shard_map(&pc).await.expect("map")).get(&3).copied(), held, "replicas stay");
    let (ok, _, err) = run_cli(&["node", "maintenance", "3", "off"], &penv);
    assert!(ok, "{err}");

    let victim = 2u64;
    let before = replicas_per_node(&shard_map(&pc).await.expect("map"));
    assert!(before.get(&victim).copied().unwrap_or(0) > 0);

    cluster.procs.kill9("storenode-2");
    let killed = Instant::now();
    eventually("every shard back to 3 healthy replicas", MOVE_TIMEOUT, || async {
        let map = shard_map(&pc).await?;
        (fully_replicated(&map, 3) && !replicas_per_node(&map).contains_key(&victim)).then_some(())
    })
    .await;
    println!("fully replicated again {:?} after kill -9 (down-after 3 s)", killed.elapsed());
    let (_, out, _) = run_cli(&["node", "list"], &penv);
    assert!(out.lines().any(|l| l.trim_start().starts_with("2 ") && l.contains("down")), "{out}");
    // The repairs finish without waiting on the dead node (inside the 60 s
    // step timeout they would otherwise wait out): it deletes its old
    // replicas when it returns.
    eventually("the repair operators to finish", Duration::from_secs(50), || async {
        operators(&pc).await?.is_empty().then_some(())
    })
    .await;
    for i in 0..200u32 {
        assert_eq!(client.get(format!("k{i}").as_bytes()).await.expect("get").as_deref(), Some(&b"v"[..]));
    }

    // It comes back: the replicas it still has on disk are stale and go away.
    cluster.procs.restart("storenode-2");
    let admin_addr = cluster.storenodes[1].clone();
    eventually("the returning node to delete its stale replicas", MOVE_TIMEOUT, || {
        let (pc, addr) = (&pc, admin_addr.clone());
        async move {
            let map = shard_map(pc).await?;
            let placed: BTreeSet<(u64, u64)> = map
                .shards
                .iter()
                .filter_map(|s| s.shard.as_ref())
                .flat_map(|d| d.replicas.iter().filter(|r| r.node_id == victim).map(move |r| (d.id, r.replica_id)))
                .collect();
            let ch = ringkv_common::net::connect(&addr).await.ok()?;
            let st = ringkv_proto::raft::admin_client::AdminClient::new(ch)
                .shard_status(ringkv_proto::raft::ShardStatusRequest::default())
                .await
                .ok()?
                .into_inner();
            let local: BTreeSet<(u64, u64)> =
                st.replicas.iter().map(|r| (r.shard.as_ref().map_or(0, |d| d.id), r.replica_id)).collect();
            // Only what placement placed there (balance may give it new ones).
            (local == placed && fully_replicated(&map, 3)).then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_placement_leader_killed_in_the_middle_of_a_move_leaves_it_done_or_rolled_back() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 3, 4, 1, 8);
    cluster.wait_serving(START_TIMEOUT).await;
    let pc = PlacementClient::new(cluster.placement.clone());
    // Let the initial balancing finish (4 nodes, 24 replicas), then ask for
    // a move. The balancer may still start one of its own between the two
    // (placement then refuses ours for that shard): ask again, with the
    // map as it is then, until placement takes it.
    let penv = [("RINGKV_PLACEMENT", cluster.placement[0].as_str())];
    let deadline = std::time::Instant::now() + MOVE_TIMEOUT;
    let (d, from, to) = loop {
        eventually("no operator in flight", MOVE_TIMEOUT, || async { operators(&pc).await?.is_empty().then_some(()) })
            .await;
        let map = shard_map(&pc).await.expect("map");
        let d = map.shards[0].shard.clone().expect("descriptor");
        let from = d.replicas[0].node_id;
        let to = (1..=4u64).find(|n| !d.replicas.iter().any(|r| r.node_id == *n)).expect("a free node");
        let args = ["shard", "move", &d.id.to_string(), "--from", &from.to_string(), "--to", &to.to_string()];
        let args: Vec<&str> = args.iter().map(|s| s.as_ref()).collect();
        let (ok, out, err) = run_cli(&args, &penv);
        if ok {
            break (d, from, to);
        }
        assert!(err.contains("already has operator"), "the move is refused for another reason: {out}{err}");
        assert!(std::time::Instant::now() < deadline, "the balancer never let a manual move in: {err}");
    };
    let leader = cluster.placement_leader().await.expect("a placement leader");
    cluster.procs.kill9(&format!("placement-{leader}"));

    eventually("the move to finish under a new placement leader", MOVE_TIMEOUT, || async {
        let ops = operators(&pc).await?;
        let map = shard_map(&pc).await?;
        let shard = map.shards.iter().filter_map(|s| s.shard.as_ref()).find(|s| s.id == d.id)?.clone();
        (ops.iter().all(|o| o.shard_id != d.id) && fully_replicated(&map, 3)).then_some(shard)
    })
    .await;
    let map = shard_map(&pc).await.expect("map");
    let after = map.shards.iter().filter_map(|s| s.shard.as_ref()).find(|s| s.id == d.id).expect("shard");
    let nodes: BTreeSet<u64> = after.replicas.iter().map(|r| r.node_id).collect();
    let done = nodes.contains(&to) && !nodes.contains(&from);
    let undone = nodes.contains(&from) && !nodes.contains(&to);
    assert!(done || undone, "neither done nor rolled back: {:?}", after.replicas);
    let client = cluster.client().await;
    client.put(b"after-move", b"ok").await.expect("the shards serve");
}
