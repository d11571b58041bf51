//! Three in-process storenodes on 127.0.0.1 with 32 shards: replication,
//! failover, restart and catch-up, membership changes, CAS, bad input.

use std::time::{Duration, Instant};

use ringkv_common::wire_error::WireError;
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::{GetRequest, PutRequest, ReadConsistency, RequestContext};
use ringkv_proto::meta::{Replica, ReplicaRole};
use ringkv_proto::raft::admin_client::AdminClient;
use ringkv_proto::raft::{
    ChangeKind, ChangeReplicasRequest, CreateReplicaRequest, ReplicaChange, ShardStatusRequest, TransferLeaderRequest,
};
use ringkv_storenode::testkit::{connect, eventually, LocalCluster};
use ringkv_storenode::Error;
use tonic::Code;

fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .with_test_writer()
        .try_init();
}

/// A stale (local) read of `key` from one node, bypassing Raft.
async fn local_read(c: &LocalCluster, node: u64, key: &[u8]) -> Option<Option<Vec<u8>>> {
    let client = c.client();
    let shard = client.shard_for(key);
    let mut kv = ShardKvClient::new(connect(&c.addr(node)).await.ok()?);
    let r = kv
        .get(GetRequest {
            context: Some(RequestContext { shard_id: shard.id, epoch: shard.epoch, request_id: vec![], timeout_ms: 0 }),
            key: key.to_vec(),
            consistency: ReadConsistency::Stale as i32,
        })
        .await
        .ok()?
        .into_inner();
    Some(r.found.then_some(r.value))
}

async fn start(dir: &std::path::Path, compact: u64) -> LocalCluster {
    init_tracing();
    let c = LocalCluster::start(dir, 3, 32, |cfg| {
        cfg.raft.tick_ms = 50;
        cfg.raft.compact_log_entries = compact;
    })
    .await
    .expect("start cluster");
    c.wait_for_leaders(Duration::from_secs(20)).await.expect("leaders");
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_to_every_replica() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), 10_000).await;
    let client = c.client();
    for i in 0..200 {
        client.put(format!("key-{i}").as_bytes(), format!("value-{i}").as_bytes()).await.expect("put");
    }
    for i in 0..200 {
        let v = client.get(format!("key-{i}").as_bytes()).await.expect("get");
        assert_eq!(v, Some(format!("value-{i}").into_bytes()));
    }
    assert_eq!(client.get(b"missing").await.expect("get"), None);
    for node in 1..=3 {
        for i in (0..200).step_by(7) {
            let key = format!("key-{i}");
            let want = Some(format!("value-{i}").into_bytes());
            eventually("replica catch-up", Duration::from_secs(10), || async {
                (local_read(&c, node, key.as_bytes()).await? == want).then_some(())
            })
            .await;
        }
    }
    assert!(client.delete(b"key-0").await.expect("delete"));
    assert!(!client.delete(b"key-0").await.expect("delete"));
    assert_eq!(client.get(b"key-0").await.expect("get"), None);
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), 10_000).await;
    let client = c.client();
    let check = |r: Result<(), Error>, what: &str| match r {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("{what}: expected InvalidArgument, got {other:?}"),
    };
    check(client.put(b"", b"v").await, "empty key");
    check(client.put(&vec![b'k'; 5 * 1024], b"v").await, "5 KiB key");
    check(client.put(b"big", &vec![0u8; 2 << 20]).await, "2 MiB value");
    assert_eq!(client.get(b"big").await.expect("get"), None, "nothing written");

    let shard = client.shard_for(b"x");
    let mut kv = ShardKvClient::new(connect(&c.addr(1)).await.unwrap());
    let put = |shard_id: u64, version: u64| PutRequest {
        context: Some(RequestContext {
            shard_id,
            epoch: Some(ringkv_proto::meta::Epoch { version, conf_ver: 1 }),
            request_id: vec![],
            timeout_ms: 0,
        }),
        key: b"x".to_vec(),
        value: b"v".to_vec(),
    };
    let s = kv.put(put(999, 1)).await.expect_err("unknown shard");
    assert_eq!(s.code(), Code::NotFound);
    assert!(matches!(WireError::from_status(&s), WireError::ShardNotFound(999)));
    let s = kv.put(put(shard.id, 7)).await.expect_err("wrong epoch");
    match WireError::from_status(&s) {
        WireError::EpochMismatch(d) => assert_eq!(d.id, shard.id),
        // A follower answers NotLeader before looking at the epoch.
        WireError::NotLeader { .. } => {}
        e => panic!("expected EpochMismatch, got {e:?}"),
    }
    // A key routed to the wrong shard is refused by apply's range check.
    let other = c.shards.iter().find(|s| s.id != shard.id).unwrap().id;
    let leaders = c.wait_for_leaders(Duration::from_secs(5)).await.unwrap();
    let mut kv = ShardKvClient::new(connect(&c.addr(leaders[&other])).await.unwrap());
    let s = kv.put(put(other, 1)).await.expect_err("key not in shard");
    assert!(matches!(WireError::from_status(&s), WireError::KeyNotInShard { .. }), "{s:?}");
    assert_eq!(client.get(b"x").await.expect("get"), None, "nothing written");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_failover_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path(), 10_000).await;
    let client = c.client();
    for i in 0..100 {
        client.put(format!("a-{i}").as_bytes(), b"1").await.expect("put");
    }
    let shard = client.shard_for(b"a-0");
    let leaders = c.wait_for_leaders(Duration::from_secs(5)).await.unwrap();
    let victim = leaders[&shard.id];
    c.stop(victim).await;
    let stopped = Instant::now();
    // Election timeout is 10 ticks of 50 ms (randomised up to 2x): a new
    // leader must serve within about two election timeouts.
    client.put(b"a-0", b"2").await.expect("write after failover");
    let took = stopped.elapsed();
    assert!(took < Duration::from_secs(5), "failover took {took:?}");
    for i in 1..100 {
        assert_eq!(client.get(format!("a-{i}").as_bytes()).await.expect("get"), Some(b"1".to_vec()));
    }
    assert_eq!(client.get(b"a-0").await.expect("get"), Some(b"2".to_vec()));
    c.restart(victim).await.expect("restart");
    // The restarted node catches up by log.
    eventually("restarted node catches up", Duration::from_secs(20), || async {
        (local_read(&c, victim, b"a-0").await? == Some(b"2".to_vec())).then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    // Compact every 40 entries: a node down for 300 writes per shard must get a snapshot.
    let mut c = start(dir.path(), 40).await;
    let client = c.client();
    client.put(b"{s}before", b"x").await.expect("put");
    c.stop(3).await;
    for i in 0..300 {
        client.put(format!("{{s}}k{i}").as_bytes(), format!("v{i}").as_bytes()).await.expect("put");
    }
    client.delete(b"{s}before").await.expect("delete");
    let shard = client.shard_for(b"{s}k0");
    let leaders = c.wait_for_leaders(Duration::from_secs(5)).await.unwrap();
    let mut admin = AdminClient::new(connect(&c.addr(leaders[&shard.id])).await.unwrap());
    let st = admin.shard_status(ShardStatusRequest { shard_ids: vec![shard.id] }).await.unwrap().into_inner();
    assert!(st.replicas[0].first_log_index > 100, "log was compacted: {:?}", st.replicas[0]);
    c.restart(3).await.expect("restart");
    eventually("snapshot catch-up", Duration::from_secs(30), || async {
        (local_read(&c, 3, b"{s}k299").await? == Some(b"v299".to_vec())).then_some(())
    })
    .await;
    assert_eq!(local_read(&c, 3, b"{s}k5").await, Some(Some(b"v5".to_vec())));
    assert_eq!(local_read(&c, 3, b"{s}before").await, Some(None), "deleted key gone after snapshot");
    let applied = c.node(3).unwrap().metrics.raft.snapshots.with_label_values(&["applied"]).get();
    assert!(applied >= 1, "node 3 applied a snapshot");
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learner_added_promoted_and_voter_removed() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), 10_000).await;
    let client = c.client();
    for i in 0..50 {
        client.put(format!("{{m}}k{i}").as_bytes(), b"v").await.expect("put");
    }
    let shard = client.shard_for(b"{m}k0");
    // Move the shard's replica off node 3: remove it there, then re-add a new
    // replica (new id) on node 3 as a learner, promote it, and remove another voter.
    let leaders = c.wait_for_leaders(Duration::from_secs(5)).await.unwrap();
    let mut leader_node = leaders[&shard.id];
    if leader_node == 3 {
        let mut admin = AdminClient::new(connect(&c.addr(3)).await.unwrap());
        admin
            .transfer_leader(TransferLeaderRequest { shard_id: shard.id, to_replica_id: shard.id * 1000 + 1 })
            .await
            .unwrap();
        leader_node = eventually("leader moves", Duration::from_secs(10), || async {
            let l = c.wait_for_leaders(Duration::from_secs(5)).await.ok()?;
            (l[&shard.id] != 3).then_some(l[&shard.id])
        })
        .await;
    }
    let mut admin = AdminClient::new(connect(&c.addr(leader_node)).await.unwrap());
    let change = |kind: ChangeKind, replica_id: u64, node_id: u64, role: ReplicaRole| ReplicaChange {
        kind: kind as i32,
        replica: Some(Replica { replica_id, node_id, role: role as i32 }),
    };
    let after = admin
        .change_replicas(ChangeReplicasRequest {
            shard_id: shard.id,
            epoch: None,
            changes: vec![change(ChangeKind::Remove, shard.id * 1000 + 3, 3, ReplicaRole::Voter)],
        })
        .await
        .expect("remove voter")
        .into_inner()
        .shard
        .unwrap();
    assert_eq!(after.replicas.len(), 2);
    // Node 3 drops its replica once it applies its own removal.
    eventually("node 3 drops the replica", Duration::from_secs(10), || async {
        let mut a = AdminClient::new(connect(&c.addr(3)).await.ok()?);
        let st = a.shard_status(ShardStatusRequest { shard_ids: vec![shard.id] }).await.ok()?.into_inner();
        st.replicas.is_empty().then_some(())
    })
    .await;
    let new_id = shard.id * 1000 + 33;
    let a3 = AdminClient::new(connect(&c.addr(3)).await.unwrap());
    let mut empty = after.clone();
    empty.replicas.clear();
    // The old replica's data is deleted on a worker thread after it leaves
    // the status: until then a create is answered "retry".
    eventually("an empty replica created on node 3", Duration::from_secs(10), || {
        let (mut a3, empty) = (a3.clone(), empty.clone());
        async move {
            let req =
                CreateReplicaRequest { shard: Some(empty), replica_id: new_id, bootstrap: false, campaign: false };
            match a3.create_replica(req).await {
                Ok(_) => Some(()),
                Err(s) if matches!(WireError::from_status(&s), WireError::Retryable(_)) => None,
                Err(s) => panic!("create empty replica: {s}"),
            }
        }
    })
    .await;
    let after = admin
        .change_replicas(ChangeReplicasRequest {
            shard_id: shard.id,
            epoch: None,
            changes: vec![change(ChangeKind::AddLearner, new_id, 3, ReplicaRole::Learner)],
        })
        .await
        .expect("add learner")
        .into_inner()
        .shard
        .unwrap();
    assert!(after.replicas.iter().any(|r| r.replica_id == new_id && r.role == ReplicaRole::Learner as i32));
    eventually("learner caught up", Duration::from_secs(20), || async {
        (local_read(&c, 3, b"{m}k49").await? == Some(b"v".to_vec())).then_some(())
    })
    .await;
    let after = admin
        .change_replicas(ChangeReplicasRequest {
            shard_id: shard.id,
            epoch: None,
            changes: vec![change(ChangeKind::AddVoter, new_id, 3, ReplicaRole::Voter)],
        })
        .await
        .expect("promote")
        .into_inner()
        .shard
        .unwrap();
    assert!(after.replicas.iter().all(|r| r.role == ReplicaRole::Voter as i32));
    assert_eq!(after.replicas.len(), 3);
    let other = [1u64, 2].into_iter().find(|n| *n != leader_node).unwrap();
    let after = admin
        .change_replicas(ChangeReplicasRequest {
            shard_id: shard.id,
            epoch: None,
            changes: vec![change(ChangeKind::Remove, shard.id * 1000 + other, other, ReplicaRole::Voter)],
        })
        .await
        .expect("remove voter")
        .into_inner()
        .shard
        .unwrap();
    assert_eq!(after.replicas.len(), 2);
    assert!(after.epoch.unwrap().conf_ver >= 4);
    // The shard still serves, with its data intact, on its new replica set.
    client.put(b"{m}after", b"ok").await.expect("put after changes");
    for i in 0..50 {
        assert_eq!(client.get(format!("{{m}}k{i}").as_bytes()).await.expect("get"), Some(b"v".to_vec()));
    }
    eventually("new voter has the latest write", Duration::from_secs(10), || async {
        (local_read(&c, 3, b"{m}after").await? == Some(b"ok".to_vec())).then_some(())
    })
    .await;
    c.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_under_concurrent_writers_is_a_register() {
    let dir = tempfile::tempdir().unwrap();
    let c = start(dir.path(), 10_000).await;
    let client = c.client();
    let key = b"counter";
    assert!(client.cas(key, None, b"0").await.expect("init").succeeded);
    // 8 writers each add 1 to the counter 25 times with CAS retry loops. A
    // register gives exactly 200 at the end: no increment lost or doubled.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let client = client.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            let mut conflicts = 0;
            while done < 25 {
                let cur = client.get(key).await.expect("get").expect("present");
                let n: u64 = String::from_utf8(cur.clone()).unwrap().parse().unwrap();
                let r = client.cas(key, Some(&cur), (n + 1).to_string().as_bytes()).await.expect("cas");
                if r.succeeded {
                    done += 1;
                } else {
                    conflicts += 1;
                    assert!(r.found && r.current_value != cur, "a failed CAS reports the newer value");
                }
            }
            conflicts
        }));
    }
    let mut conflicts = 0;
    for t in tasks {
        conflicts += t.await.unwrap();
    }
    assert_eq!(client.get(key).await.unwrap(), Some(b"200".to_vec()));
    assert!(!client.cas(key, None, b"x").await.unwrap().succeeded, "expect-absent fails on a present key");
    println!("CAS conflicts: {conflicts}");
    c.shutdown().await;
}

/// Found by trying it as a new user would: with 2 of 3 storenodes down, a
/// write to a shard whose leader survived waited out the storenode's own 5 s
/// instead of the caller's budget. The caller's deadline now travels in the
/// request: the leader answers "outcome unknown" by then, and it answers at
/// once as soon as it steps down (check-quorum) rather than never.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_that_cannot_commit_is_answered_by_the_callers_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = start(dir.path(), 10_000).await;
    let leaders = c.wait_for_leaders(Duration::from_secs(20)).await.expect("leaders");
    // A shard led by node 1; then nodes 2 and 3 go away.
    let shard_id = *leaders.iter().find(|(_, n)| **n == 1).expect("node 1 leads a shard").0;
    let key = (0u32..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| c.client().shard_for(k).id == shard_id)
        .expect("a key of that shard");
    let epoch = c.client().shard_for(&key).epoch;
    c.stop(2).await;
    c.stop(3).await;
    let mut kv = ShardKvClient::new(connect(&c.addr(1)).await.expect("connect"));
    let started = Instant::now();
    let res = kv
        .put(PutRequest {
            context: Some(RequestContext { shard_id, epoch, request_id: b"deadline-1".to_vec(), timeout_ms: 1000 }),
            key: key.clone(),
            value: b"v".to_vec(),
        })
        .await;
    let took = started.elapsed();
    let status = res.expect_err("nothing can commit with one voter of three");
    // Ambiguous (the entry may still commit) or NotLeader/Unavailable (the
    // leader stepped down first): never a success, and never the node's own
    // 5 s request timeout.
    let e = WireError::from_status(&status);
    assert!(
        matches!(e, WireError::Ambiguous(_) | WireError::NotLeader { .. } | WireError::Retryable(_)),
        "unexpected answer {e:?}"
    );
    assert!(took < Duration::from_millis(3500), "answered after {took:?}, not by the caller's 1 s deadline");
    c.shutdown().await;
}
