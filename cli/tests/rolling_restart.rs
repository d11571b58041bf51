//! A rolling restart, as an operator (or a StatefulSet, or systemd) does
//! one: every storenode in turn gets SIGTERM, hands its leaderships away,
//! exits, and starts again on its data directory; the next one only once
//! every shard has its leader and all its replicas back. A writer through
//! the router meanwhile sees no failed write, and every acknowledged write
//! is read back at the end.

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, run_cli, scrape, try_http, TestCluster};
use serde_json::Value;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_restart_of_every_storenode_fails_no_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 1, 3, 1, 8);
    cluster.wait_serving(Duration::from_secs(60)).await;
    let env = [("RINGKV_PLACEMENT", cluster.placement.join(","))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let healthy = || {
        let (ok, out, _) = run_cli(&["cluster", "status", "-o", "json"], &env);
        let st: Value = serde_json::from_str(&out).ok()?;
        let whole = ok && st["nodes_up"] == 3 && st["leaderless"] == 0 && st["under_replicated"] == 0;
        (whole && st["shards_with_leader"] == st["shards"]).then_some(())
    };
    eventually("a healthy cluster", Duration::from_secs(60), || std::future::ready(healthy())).await;

    // The writer: one key per put, with a deadline longer than a restart.
    let (client, reader) = (cluster.client().await, cluster.client().await);
    let stop = Arc::new(AtomicBool::new(false));
    let (acked, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let writer = {
        let (stop, acked, failed) = (stop.clone(), acked.clone(), failed.clone());
        tokio::spawn(async move {
            let (mut errors, mut slowest) = (Vec::new(), Duration::ZERO);
            // Bounded: at most this many puts, however long the restarts take.
            for i in 0..200_000u64 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                let start = std::time::Instant::now();
                let put = client.put(format!("roll-{i}").as_bytes(), i.to_string().as_bytes()).await;
                slowest = slowest.max(start.elapsed());
                match put {
                    Ok(()) => acked.store(i + 1, Ordering::SeqCst),
                    Err(e) => {
                        failed.fetch_add(1, Ordering::SeqCst);
                        errors.push(format!("put roll-{i}: {e}"));
                        acked.store(i + 1, Ordering::SeqCst);
                    }
                }
            }
            (errors, slowest)
        })
    };

    for i in 0..3 {
        let name = format!("storenode-{}", i + 1);
        let led_before = scrape(&cluster.storenode_http[i])
            .lines()
            .filter(|l| l.starts_with("ringkv_shard_is_leader{") && l.ends_with(" 1"))
            .count();
        let before = acked.load(Ordering::SeqCst);
        let st = tokio::task::block_in_place(|| cluster.procs.terminate(&name, Duration::from_secs(30)));
        assert!(st.success(), "{name} exits cleanly on SIGTERM: {st}");
        cluster.procs.restart(&name);
        let http = cluster.storenode_http[i].clone();
        eventually(&format!("{name} ready again"), Duration::from_secs(60), || {
            let ready = try_http("GET", &http, "/readyz", b"").is_ok_and(|(code, _)| code == 200);
            std::future::ready(ready.then_some(()))
        })
        .await;
        eventually("every shard led and whole again", Duration::from_secs(90), || std::future::ready(healthy())).await;
        eventually(&format!("writes going on after {name}'s restart"), Duration::from_secs(30), || {
            std::future::ready((acked.load(Ordering::SeqCst) > before + 10).then_some(()))
        })
        .await;
        eprintln!(
            "{name}: led {led_before} shards before its stop; writes {before} -> {}",
            acked.load(Ordering::SeqCst)
        );
    }

    stop.store(true, Ordering::SeqCst);
    let (errors, slowest) = writer.await.expect("writer");
    eprintln!("slowest put during the rolling restart: {slowest:?}");
    assert_eq!(failed.load(Ordering::SeqCst), 0, "failed writes during the rolling restart: {errors:#?}");
    let n = acked.load(Ordering::SeqCst);
    assert!(n > 100, "the writer made progress: {n}");
    for i in 0..n {
        let got = reader.get(format!("roll-{i}").as_bytes()).await.expect("get");
        assert_eq!(got.as_deref(), Some(i.to_string().as_bytes()), "roll-{i}");
    }
}
