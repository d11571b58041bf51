//! `ringkv bench` is the harness the performance figures come from, so it
//! is tested like the rest: against a real etcd member this test starts
//! (Debian's `etcd-server`, which the set-up installs) and against a ringkv
//! cluster through its router, every phase's JSON line carries its
//! operations, percentiles and the CPU of the processes it was told to
//! account; the open loop issues exactly rate × duration operations.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{free_addr, run_cli, Kids, TestCluster};

/// The JSON lines `ringkv bench --json` appended to `path`.
fn rows(path: &Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).expect("bench wrote its JSON lines");
    text.lines().map(|l| serde_json::from_str(l).expect("one JSON object per line")).collect()
}

/// Runs `ringkv bench` with `args` plus a fresh `--json` file; its rows.
fn bench(dir: &Path, name: &str, args: &[&str]) -> Vec<serde_json::Value> {
    let json = dir.join(format!("{name}.jsonl"));
    let json_arg = json.to_string_lossy().into_owned();
    let mut all: Vec<&str> = vec!["bench", "--json", &json_arg, "--duration", "1"];
    all.extend_from_slice(args);
    let (ok, out, err) = run_cli(&all, &[]);
    assert!(ok, "ringkv {all:?} failed:\n{out}\n{err}");
    eprintln!("{out}");
    rows(&json)
}

/// Every phase ran, none failed, and the CPU of `process` was accounted.
fn check(rows: &[serde_json::Value], target: &str, workloads: &[&str], process: &str) {
    let got: Vec<&str> = rows.iter().map(|r| r["workload"].as_str().expect("workload")).collect();
    assert_eq!(got, workloads);
    for r in rows {
        assert_eq!(r["target"], target, "{r}");
        assert_eq!(r["errors"], 0, "{r}");
        assert!(r["ops"].as_u64().expect("ops") > 0, "{r}");
        let (p50, p99) = (r["p50_ms"].as_f64().expect("p50"), r["p99_ms"].as_f64().expect("p99"));
        assert!(p50 > 0.0 && p50 <= p99, "{r}");
        assert!(r["cpu_us_per_op"].as_f64().expect("CPU per op") > 0.0, "{r}");
        assert!(r["cpu_us_per_op_by_process"][process].as_f64().is_some(), "no CPU of {process}: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_drives_etcd_and_a_ringkv_router_through_one_harness() {
    let dir = tempfile::tempdir().expect("tempdir");

    // etcd: one member on loopback, in the test's directory.
    let (client, peer) = (free_addr(), free_addr());
    let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
    let etcd = Command::new("etcd")
        .args(["--name", "e1", "--data-dir"])
        .arg(dir.path().join("etcd"))
        .args(["--listen-client-urls", &format!("http://{client}")])
        .args(["--advertise-client-urls", &format!("http://{client}")])
        .args(["--listen-peer-urls", &format!("http://{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://{peer}")])
        .args(["--initial-cluster", &format!("e1=http://{peer}")])
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .expect("etcd (Debian's etcd-server; `make setup` installs it)");
    let etcd_pid = etcd.id().to_string();
    let _etcd = Kids(vec![etcd]);
    common::eventually("etcd to serve", Duration::from_secs(30), || async {
        let (ok, _, _) = run_cli(&["bench", "--etcd", &client, "--duration", "1", "--clients", "1"], &[]);
        ok.then_some(())
    })
    .await;
    let rows = bench(
        dir.path(),
        "etcd",
        &["--etcd", &client, "--clients", "4", "--connections", "2", "--workload", "put,get,f", "--cpu-pid", &etcd_pid],
    );
    check(&rows, "etcd", &["put", "get", "ycsb-f"], "etcd");

    // ringkv: through the router, with the storenodes' and router's CPU.
    let cluster = TestCluster::start(dir.path(), 1, 3, 1, 4);
    cluster.wait_serving(Duration::from_secs(60)).await;
    let pids: Vec<String> = ["storenode-1", "storenode-2", "storenode-3", "router-1"]
        .iter()
        .map(|n| cluster.procs.pid(n).expect("running").to_string())
        .collect();
    let pids = pids.join(",");
    let router = &cluster.routers[0];
    let rows = bench(
        dir.path(),
        "ringkv",
        &["--router", router, "--cpu-pid", &pids, "--workload", "a,b,c", "--distribution", "zipfian", "--clients", "8"],
    );
    check(&rows, "ringkv", &["ycsb-a", "ycsb-b", "ycsb-c"], "ringkv");
    assert_eq!(rows[0]["distribution"], "zipfian");

    // Open loop: every operation due in the second is issued, none more.
    let rows = bench(dir.path(), "open", &["--router", router, "--rate", "300", "--workload", "put"]);
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["ops"].as_u64().expect("ops") + rows[0]["errors"].as_u64().expect("errors"), 300);
    assert_eq!(rows[0]["rate"], 300.0);
}
