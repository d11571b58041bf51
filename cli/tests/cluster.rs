//! The whole system as processes: 3 placement members, 3 storenodes and 2
//! routers from the `ringkv` binary on 127.0.0.1. A cluster serves 10,000
//! keys through gRPC and HTTP with both routers agreeing; kill -9 of a
//! process of any role while a writer runs loses no acknowledged write and
//! writes resume within seconds; bad input through every door is refused.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{eventually, http, run_cli, TestCluster};
use ringkv_client::{Client, Error};
use tokio::sync::Mutex;

/// Clusters are heavy for a 2-core machine: one test at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

const START_TIMEOUT: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_serves_10k_keys_through_grpc_and_http_and_routers_agree() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), 3, 3, 2, 16);
    cluster.wait_serving(START_TIMEOUT).await;
    let client = cluster.client().await;

    const N: usize = 10_000;
    let pairs: Vec<(Vec<u8>, Vec<u8>)> =
        (0..N).map(|i| (format!("key-{i:05}").into_bytes(), format!("value-{i}").into_bytes())).collect();
    // 1,000 single puts, the rest in batches (split by shard in the router).
    for (k, v) in &pairs[..1000] {
        client.put(k, v).await.expect("put");
    }
    for chunk in pairs[1000..].chunks(500) {
        let results = client.batch_put(chunk).await.expect("batch put");
        assert!(results.iter().all(|r| r.error.is_none()), "a key of the batch failed: {results:?}");
    }

    // Read every key back through each router over gRPC.
    for r in &cluster.routers {
        let c = Client::connect([r]).await.expect("router").with_timeout(Duration::from_secs(10));
        for chunk in pairs.chunks(500) {
            let keys: Vec<Vec<u8>> = chunk.iter().map(|(k, _)| k.clone()).collect();
            let got = c.batch_get(&keys).await.expect("batch get");
            for ((k, v), g) in chunk.iter().zip(got) {
                assert_eq!(&g.key, k);
                assert!(
                    g.error.is_none() && g.found && &g.value == v,
                    "router {r}: key {:?}",
                    String::from_utf8_lossy(k)
                );
            }
        }
    }
    // ... and over HTTP: every key through the batch endpoint, a sample one by one.
    for h in &cluster.router_http {
        for chunk in pairs.chunks(1000) {
            let keys: Vec<String> = chunk.iter().map(|(k, _)| String::from_utf8_lossy(k).into_owned()).collect();
            let body = serde_json::json!({ "keys": keys }).to_string();
            let (status, resp) = http("POST", h, "/v1/batch_get", body.as_bytes());
            assert_eq!(status, 200, "{}", String::from_utf8_lossy(&resp));
            let resp: serde_json::Value = serde_json::from_slice(&resp).expect("JSON");
            let results = resp["results"].as_array().expect("results");
            assert_eq!(results.len(), chunk.len());
            for ((_, v), r) in chunk.iter().zip(results) {
                assert_eq!(r["value"].as_str().map(str::as_bytes), Some(v.as_slice()), "HTTP {h}: {r}");
            }
        }
        for (k, v) in pairs.iter().step_by(97) {
            let (status, body) = http("GET", h, &format!("/v1/kv/{}", String::from_utf8_lossy(k)), b"");
            assert_eq!((status, body.as_slice()), (200, v.as_slice()));
        }
        let (status, _) = http("GET", h, "/v1/kv/no-such-key", b"");
        assert_eq!(status, 404);
        assert_eq!(http("GET", h, "/readyz", b"").0, 200, "a router with a shard map is ready");
        let (_, metrics) = http("GET", h, "/metrics", b"");
        let metrics = String::from_utf8_lossy(&metrics);
        assert!(metrics.contains("ringkv_router_requests_total{op=\"batch_get\",outcome=\"ok\"}"), "{metrics}");
    }

    // Two routers at once: writes through one are read through the other.
    let (a, b) = (
        Client::connect([&cluster.routers[0]]).await.expect("router"),
        Client::connect([&cluster.routers[1]]).await.expect("router"),
    );
    for i in 0..200u32 {
        let k = format!("shared-{}", i % 20).into_bytes();
        let (w, r) = if i % 2 == 0 { (&a, &b) } else { (&b, &a) };
        w.put(&k, &i.to_be_bytes()).await.expect("put");
        assert_eq!(r.get(&k).await.expect("get"), Some(i.to_be_bytes().to_vec()), "the other router sees the write");
    }

    // Scans: a complete hash tag reads one shard in key order; a plain prefix
    // is a paged full scan that still returns every match exactly once.
    for i in (0..30u32).rev() {
        client.put(format!("user:{{7}}:{i:02}").as_bytes(), b"x").await.expect("put");
    }
    let page = client.scan(b"user:{7}:", 100, b"").await.expect("scan");
    assert!(!page.full_scan && page.continuation.is_empty());
    let keys: Vec<String> = page.pairs.iter().map(|p| String::from_utf8_lossy(&p.key).into_owned()).collect();
    let want: Vec<String> = (0..30).map(|i| format!("user:{{7}}:{i:02}")).collect();
    assert_eq!(keys, want, "one shard, key order");
    let (mut seen, mut token, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let page = client.scan(b"key-01", 37, &token).await.expect("scan");
        assert!(page.full_scan);
        seen.extend(page.pairs.into_iter().map(|p| p.key));
        pages += 1;
        if page.continuation.is_empty() {
            break;
        }
        token = page.continuation;
        assert!(pages < 100, "the scan ends");
    }
    seen.sort();
    let want: Vec<Vec<u8>> = (1000..2000).map(|i| format!("key-{i:05}").into_bytes()).collect();
    assert_eq!(seen, want, "a paged full scan returns every match once");
    assert!(pages >= 1000 / 37, "paged: {pages} pages");

    // An atomic batch over one tag: all or nothing.
    use ringkv_client::{AtomicBatchRequest, Compare, Mutation};
    use ringkv_proto::kv::{compare::Expected, mutation::Op};
    let batch = |expect: &[u8], v: &[u8]| AtomicBatchRequest {
        compares: vec![Compare {
            key: b"acct:{9}:a".to_vec(),
            expected: Some(Expected::ExpectedValue(expect.to_vec())),
        }],
        mutations: vec![
            Mutation { key: b"acct:{9}:a".to_vec(), op: Some(Op::Put(v.to_vec())) },
            Mutation { key: b"acct:{9}:b".to_vec(), op: Some(Op::Put(v.to_vec())) },
        ],
    };
    client.put(b"acct:{9}:a", b"0").await.expect("put");
    let r = client.atomic_batch(batch(b"wrong", b"1")).await.expect("atomic batch");
    assert!(!r.succeeded && r.current[0].value == b"0");
    assert_eq!(client.get(b"acct:{9}:b").await.expect("get"), None, "nothing applied");
    let r = client.atomic_batch(batch(b"0", b"1")).await.expect("atomic batch");
    assert!(r.succeeded);
    assert_eq!(client.get(b"acct:{9}:a").await.expect("get"), Some(b"1".to_vec()));
    assert_eq!(client.get(b"acct:{9}:b").await.expect("get"), Some(b"1".to_vec()));

    // The CLI sees the cluster: every shard has a leader, nothing is under-replicated.
    let placement = cluster.placement.join(",");
    let (ok, out, err) = run_cli(&["cluster", "status", "-o", "json"], &[("RINGKV_PLACEMENT", &placement)]);
    assert!(ok, "{err}");
    let st: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert_eq!(st["shards"], 16);
    assert_eq!(st["shards_with_leader"], 16);
    assert_eq!(st["under_replicated"], 0);
    assert_eq!(st["nodes_up"], 3);
}

/// What a writer learnt: every acknowledged key with its last acknowledged
/// value, and for overwritten keys the values whose outcome is unknown.
#[derive(Default)]
struct Ledger {
    acked: HashMap<Vec<u8>, Vec<u8>>,
    /// Values written after the last ack whose outcome is unknown.
    unknown: HashMap<Vec<u8>, Vec<Vec<u8>>>,
}

async fn writer(
    w: usize,
    client: Arc<Client>,
    stop: Arc<AtomicBool>,
    acks: Arc<AtomicU64>,
    ledger: Arc<Mutex<Ledger>>,
) {
    let deadline = Instant::now() + Duration::from_secs(240);
    for n in 0u64..100_000 {
        if stop.load(Ordering::Relaxed) || Instant::now() > deadline {
            return;
        }
        // Unique keys, and a key overwritten again and again.
        let key = if n % 2 == 0 { format!("w{w}-{n}") } else { format!("hot-{w}") }.into_bytes();
        let val = format!("{w}:{n}").into_bytes();
        match client.put(&key, &val).await {
            Ok(()) => {
                let mut l = ledger.lock().await;
                l.acked.insert(key.clone(), val);
                l.unknown.remove(&key);
                acks.fetch_add(1, Ordering::Relaxed);
            }
            Err(Error::Ambiguous(_)) => ledger.lock().await.unknown.entry(key).or_default().push(val),
            Err(Error::Unavailable(_)) => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("writer {w}: unexpected error {e}"),
        }
    }
}

/// Waits for `more` acknowledged writes; returns how long it took.
async fn progress(acks: &AtomicU64, more: u64, what: &str) -> Duration {
    let start = Instant::now();
    let target = acks.load(Ordering::Relaxed) + more;
    eventually(what, Duration::from_secs(20), || async { (acks.load(Ordering::Relaxed) >= target).then_some(()) })
        .await;
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_of_any_role_while_writing_loses_nothing() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 3, 3, 2, 8);
    cluster.wait_serving(START_TIMEOUT).await;
    let client = Arc::new(cluster.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(AtomicU64::new(0));
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let writers: Vec<_> =
        (0..4).map(|w| tokio::spawn(writer(w, client.clone(), stop.clone(), acks.clone(), ledger.clone()))).collect();
    progress(&acks, 100, "first writes").await;

    let leader = eventually("a placement leader", Duration::from_secs(10), || cluster.placement_leader()).await;
    let victims =
        [format!("placement-{leader}"), "storenode-1".to_string(), "router-1".to_string(), "storenode-3".into()];
    for victim in &victims {
        cluster.procs.kill9(victim);
        let took = progress(&acks, 100, &format!("writes with {victim} killed")).await;
        eprintln!("killed {victim}: 100 more writes in {took:?}");
        assert!(took < Duration::from_secs(15), "writes took {took:?} to resume after killing {victim}");
        if let Some(id) = victim.strip_prefix("storenode-").and_then(|i| i.parse::<u64>().ok()) {
            // Placement notices the silence (--down-after-secs 3).
            let placement = cluster.placement.join(",");
            eventually(&format!("node {id} shown down"), Duration::from_secs(20), || {
                let placement = placement.clone();
                async move {
                    let (_, out, _) = run_cli(&["node", "list", "-o", "json"], &[("RINGKV_PLACEMENT", &placement)]);
                    let nodes: serde_json::Value = serde_json::from_str(&out).ok()?;
                    nodes.as_array()?.iter().any(|n| n["id"] == id && n["state"] == "down").then_some(())
                }
            })
            .await;
        }
        cluster.procs.restart(victim);
        // Rejoined: it serves again (routers: a probe through it; others: the cluster keeps writing).
        if victim.starts_with("router") {
            cluster.wait_serving(START_TIMEOUT).await;
        }
        progress(&acks, 100, &format!("writes after {victim} restarted")).await;
    }
    // The restarted placement member and storenodes are back: every node up again.
    let placement = cluster.placement.join(",");
    eventually("every storenode up again", Duration::from_secs(30), || {
        let placement = placement.clone();
        async move {
            let (ok, out, _) = run_cli(&["cluster", "status", "-o", "json"], &[("RINGKV_PLACEMENT", &placement)]);
            let st: serde_json::Value = serde_json::from_str(&out).ok()?;
            (ok && st["nodes_up"] == 3 && st["shards_with_leader"] == 8).then_some(())
        }
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.expect("writer");
    }

    let ledger = ledger.lock().await;
    assert!(ledger.acked.len() > 400, "only {} keys acknowledged", ledger.acked.len());
    eprintln!("{} keys acknowledged, {} with an unknown last write", ledger.acked.len(), ledger.unknown.len());
    for (k, v) in &ledger.acked {
        let got = client.get(k).await.expect("read back").expect("an acknowledged key exists");
        let allowed = ledger.unknown.get(k).is_some_and(|u| u.contains(&got));
        assert!(&got == v || allowed, "key {:?}: read {:?}, last acknowledged {:?}", k, got, v);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_through_every_door_is_refused_and_nothing_written() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let cluster = TestCluster::start(dir.path(), 1, 3, 1, 4);
    cluster.wait_serving(START_TIMEOUT).await;
    let router = cluster.routers[0].clone();
    let h = cluster.router_http[0].clone();
    let env = [("RINGKV_ROUTER", router.as_str())];
    let big_key = "k".repeat(5 * 1024);

    // CLI.
    let (ok, _, err) = run_cli(&["put", "", "v"], &env);
    assert!(!ok && err.contains("invalid key: empty"), "{err}");
    let (ok, _, err) = run_cli(&["put", &big_key, "v"], &env);
    assert!(!ok && err.contains("5120 bytes, limit 4096"), "{err}");
    let (ok, _, err) = run_cli(&["put", "k", "v", "--no-such-flag"], &env);
    assert!(!ok && err.contains("--no-such-flag"), "{err}");
    let (ok, _, err) = run_cli(&["get", "k", "--router", "127.0.0.1:1", "--timeout-ms", "500"], &[]);
    assert!(!ok && err.contains("unavailable"), "{err}");
    let (ok, _, err) = run_cli(&["get", "k", "--router", "not-an-address"], &[]);
    assert!(!ok && err.contains("expected HOST:PORT"), "{err}");
    assert_eq!(err.lines().count(), 1, "one clear line: {err}");

    // HTTP.
    let (status, body) = http("PUT", &h, &format!("/v1/kv/{big_key}"), b"v");
    assert_eq!(status, 400, "{}", String::from_utf8_lossy(&body));
    let (status, _) = http("PUT", &h, "/v1/kv/big-value", &vec![b'x'; 2 << 20]);
    assert!(status == 400 || status == 413, "a 2 MiB value is refused, got {status}");
    let (status, body) = http("POST", &h, "/v1/batch_get", b"{\"keys\": [\"a\",");
    assert_eq!(status, 400, "malformed JSON: {}", String::from_utf8_lossy(&body));
    let (status, _) = http("GET", &h, "/v1/kv/x?timeout_ms=soon", b"");
    assert_eq!(status, 400);

    // gRPC.
    let c = Client::connect([&router]).await.expect("router");
    assert!(matches!(c.put(b"", b"v").await, Err(Error::InvalidArgument(_))));
    assert!(matches!(c.put(big_key.as_bytes(), b"v").await, Err(Error::InvalidArgument(_))));
    assert!(matches!(c.put(b"big-value", &vec![b'x'; 2 << 20]).await, Err(Error::InvalidArgument(_))));
    let cross = ringkv_client::AtomicBatchRequest {
        compares: vec![],
        mutations: vec![
            ringkv_client::Mutation {
                key: b"{a}1".to_vec(),
                op: Some(ringkv_proto::kv::mutation::Op::Put(b"x".to_vec())),
            },
            ringkv_client::Mutation {
                key: b"{b}1".to_vec(),
                op: Some(ringkv_proto::kv::mutation::Op::Put(b"x".to_vec())),
            },
        ],
    };
    assert!(matches!(c.atomic_batch(cross).await, Err(Error::CrossTag(_))));

    // Nothing was written.
    assert_eq!(c.get(b"big-value").await.expect("get"), None);
    assert_eq!(c.get(b"{a}1").await.expect("get"), None);
    assert_eq!(c.get(b"k").await.expect("get"), None);

    // Operators mark nodes for maintenance and back; the state is replicated.
    // Draining one of only three nodes is refused (RF 3), nothing changed.
    let penv = [("RINGKV_PLACEMENT", cluster.placement[0].as_str())];
    let (ok, out, err) = run_cli(&["node", "maintenance", "3", "on", "-o", "json"], &penv);
    assert!(ok && out.contains("\"maintenance\": true"), "{out}{err}");
    let (ok, out, _) = run_cli(&["node", "list", "-o", "json"], &penv);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(ok && nodes.as_array().expect("nodes").iter().any(|n| n["id"] == 3 && n["maintenance"] == true));
    let (ok, _, err) = run_cli(&["node", "maintenance", "3", "off"], &penv);
    assert!(ok, "{err}");
    let (ok, _, err) = run_cli(&["node", "drain", "3"], &penv);
    assert!(!ok && err.contains("fewer than the replication factor"), "{err}");
    let (ok, out, _) = run_cli(&["node", "list", "-o", "json"], &penv);
    let nodes: serde_json::Value = serde_json::from_str(&out).expect("JSON");
    assert!(ok && nodes.as_array().expect("nodes").iter().all(|n| n["state"] == "up" && n["maintenance"] == false));
    let (ok, _, err) = run_cli(&["node", "drain", "42"], &penv);
    assert!(!ok && err.contains("node 42 is not registered"), "{err}");

    // A second router from a TOML file serves the same data; a typo in the file is refused.
    let toml = dir.path().join("router.toml");
    let (g, hh) = (common::free_addr(), common::free_addr());
    std::fs::write(&toml, format!("listen = \"{g}\"\nhttp = \"{hh}\"\nplacement = [\"{}\"]\n", cluster.placement[0]))
        .expect("write config");
    let mut procs = common::Procs::new(dir.path());
    procs.start("router-toml", vec!["router".into(), "--config".into(), toml.display().to_string()]);
    let c2 = Client::connect([&g]).await.expect("router");
    eventually("the TOML router to serve", START_TIMEOUT, || async { c2.get(b"k").await.ok() }).await;
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "listen = \"127.0.0.1:1\"\nplacment = []\n").expect("write config");
    let (ok, _, err) = run_cli(&["router", "--config", bad.to_str().expect("utf-8 path")], &[]);
    assert!(!ok && err.contains("placment"), "the unknown key is named: {err}");

    // A router at its in-flight limit sheds load with 429 instead of queueing.
    let (g1, h1) = (common::free_addr(), common::free_addr());
    let placement = cluster.placement[0].clone();
    procs.start(
        "router-small",
        vec![
            "router".into(),
            "--listen".into(),
            g1,
            "--http".into(),
            h1.clone(),
            "--placement".into(),
            placement,
            "--max-inflight".into(),
            "1".into(),
        ],
    );
    eventually("the small router to serve", START_TIMEOUT, || {
        let h1 = h1.clone();
        async move { (common::try_http("GET", &h1, "/v1/kv/k", b"").ok()?.0 == 404).then_some(()) }
    })
    .await;
    // All threads connect first, then send at once.
    let barrier = Arc::new(std::sync::Barrier::new(48));
    let statuses: Vec<u16> = (0..48)
        .map(|_| {
            let (h1, barrier) = (h1.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                http("GET", &h1, "/v1/kv/k", b"").0
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|t| t.join().expect("request thread"))
        .collect();
    assert!(statuses.contains(&429), "some requests shed: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 404 || *s == 429), "only served (no such key) or shed: {statuses:?}");

    // No storenode at all: 503 within the requested deadline, not a hang.
    let (status, _) = http("PUT", &h, "/v1/kv/k", b"v");
    assert_eq!(status, 204);
    let (status, _) = http("PUT", &h, "/v1/kv/k?if_value=nope", b"v2");
    assert_eq!(status, 409);
    let mut cluster = cluster;
    for i in 1..=3 {
        cluster.procs.kill9(&format!("storenode-{i}"));
    }
    let start = Instant::now();
    let (status, _) = http("GET", &h, "/v1/kv/k?timeout_ms=700", b"");
    assert_eq!(status, 503);
    assert!(start.elapsed() < Duration::from_secs(3), "answered within the deadline: {:?}", start.elapsed());
}
