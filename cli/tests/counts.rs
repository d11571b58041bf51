//! What a put costs, in counts rather than time (so it holds on any
//! machine): synced and unsynced RocksDB writes, Raft message batches (one
//! RPC stream item each) and ShardKv calls per put, summed over the
//! storenodes, for one client and for many. Group commit and message
//! batching are what make a cluster fast on few cores; a change that
//! loses them fails here. The bounds sit above what this build does (the
//! figures are printed) and below what the loss of batching would cost.

mod common;

use std::time::Duration;

use common::{metric, scrape, TestCluster};

/// The storenodes' counters, summed.
#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    fsyncs: u64,
    /// Every RocksDB write of the Raft loops, synced or not.
    writes: u64,
    apply_writes: u64,
    batches: u64,
    /// Raft messages, whatever batch they rode in.
    raft_messages: u64,
    requests: u64,
    /// Messages the router sent on its Batch streams.
    stream_messages: u64,
}

fn counts(cluster: &TestCluster) -> Counts {
    let mut c = Counts::default();
    for http in &cluster.storenode_http {
        let text = scrape(http);
        c.fsyncs += metric(&text, "ringkv_raft_fsyncs_total", "");
        c.writes += metric(&text, "ringkv_raft_engine_writes_total", "");
        c.apply_writes += metric(&text, "ringkv_raft_apply_writes_total", "");
        c.batches += metric(&text, "ringkv_raft_message_batches_sent_total", "");
        c.raft_messages += metric(&text, "ringkv_raft_messages_sent_total", "");
        c.requests += metric(&text, "ringkv_storenode_requests_total", "method=\"put\"");
    }
    for http in &cluster.router_http {
        c.stream_messages += metric(&scrape(http), "ringkv_router_batch_commands_per_message_count", "");
    }
    c
}

/// Per put between two readings.
fn per_put(before: Counts, after: Counts, puts: u64) -> [f64; 7] {
    let d = |a: u64, b: u64| (a - b) as f64 / puts as f64;
    [
        d(after.fsyncs, before.fsyncs),
        d(after.writes, before.writes),
        d(after.apply_writes, before.apply_writes),
        d(after.batches, before.batches),
        d(after.raft_messages, before.raft_messages),
        d(after.requests, before.requests),
        d(after.stream_messages, before.stream_messages),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_put_costs_few_fsyncs_writes_and_messages_and_batching_cuts_them() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), 1, 3, 1, 4);
    cluster.wait_serving(Duration::from_secs(60)).await;
    let client = cluster.client().await;
    // Warm up: every shard's leader elected and its first entries applied.
    for i in 0..50 {
        client.put(format!("warm-{i}").as_bytes(), b"v").await.expect("put");
    }

    // One client, one put at a time: each put is fsynced by the leader and
    // both followers (3), applied by three replicas (3). A commit index
    // moving alone costs no fsync (6 per put if it did).
    let puts = 300u64;
    let before = counts(&cluster);
    for i in 0..puts {
        client.put(format!("one-{i}").as_bytes(), b"v").await.expect("put");
    }
    let [fsyncs, all_writes, writes, batches, raft_messages, requests, messages] =
        per_put(before, counts(&cluster), puts);
    eprintln!(
        "1 client: per put {fsyncs:.2} fsyncs, {all_writes:.2} RocksDB writes, {writes:.2} apply writes, {batches:.2} batches, \
         {raft_messages:.2} Raft messages, {requests:.2} calls, {messages:.2} router stream messages"
    );
    assert!(fsyncs <= 3.5, "fsyncs per put, one client: {fsyncs:.2}");
    // Commit indexes ride in the apply write (9 per put if they had writes
    // of their own).
    assert!(all_writes <= 6.5, "RocksDB writes per put, one client: {all_writes:.2}");
    assert!(writes <= 4.0, "apply writes per put, one client: {writes:.2}");
    assert!(batches <= 9.0, "message batches per put, one client: {batches:.2}");
    // Per follower: the append and its response, then the append that
    // announces the new commit index and its response (8), plus a few
    // heartbeats.
    assert!(raft_messages <= 9.0, "Raft messages per put, one client: {raft_messages:.2}");
    assert!((1.0..=1.1).contains(&requests), "ShardKv calls per put: {requests:.2}");
    // Every put went over the router's Batch stream, one message each.
    assert!((0.9..=1.1).contains(&messages), "router stream messages per put, one client: {messages:.2}");

    // 32 clients at once: passes carry many puts, one fsync and one apply
    // write each per node, and messages to a node share a batch.
    let (clients, each) = (32usize, 40u64);
    let mut conns = Vec::new();
    for _ in 0..clients {
        conns.push(cluster.client().await);
    }
    let before = counts(&cluster);
    let tasks: Vec<_> = conns
        .into_iter()
        .enumerate()
        .map(|(c, client)| {
            tokio::spawn(async move {
                for i in 0..each {
                    client.put(format!("many-{c}-{i}").as_bytes(), b"v").await.expect("put");
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.expect("writer");
    }
    let [fsyncs, all_writes, writes, batches, raft_messages, requests, messages] =
        per_put(before, counts(&cluster), clients as u64 * each);
    eprintln!(
        "{clients} clients: per put {fsyncs:.2} fsyncs, {all_writes:.2} RocksDB writes, {writes:.2} apply writes, {batches:.2} batches, \
         {raft_messages:.2} Raft messages, {requests:.2} calls, {messages:.2} router stream messages"
    );
    assert!(fsyncs <= 2.0, "fsyncs per put, {clients} clients (no group commit?): {fsyncs:.2}");
    assert!(all_writes <= 2.5, "RocksDB writes per put, {clients} clients: {all_writes:.2}");
    assert!(writes <= 2.0, "apply writes per put, {clients} clients: {writes:.2}");
    assert!(batches <= 4.0, "message batches per put, {clients} clients (no batching?): {batches:.2}");
    // Proposals of one pass go to a follower in one append (~2.2 here);
    // an append per proposal makes over 4.
    assert!(
        raft_messages <= 3.0,
        "Raft messages per put, {clients} clients (an append per proposal?): {raft_messages:.2}"
    );
    assert!((1.0..=1.1).contains(&requests), "ShardKv calls per put: {requests:.2}");
    // The router coalesces calls to one storenode: ~0.33 messages per put
    // here, 1 without coalescing.
    assert!(messages <= 0.6, "router stream messages per put, {clients} clients (no coalescing?): {messages:.2}");
}
