//! The short fault-injection run on every `make test`: a 3-placement,
//! 5-storenode, 2-router cluster in a network namespace of its own, 16
//! clients, every kind of fault mixed — partitions, kills, pauses and
//! membership changes (replica moves, decommissions, new storenodes,
//! leadership transfers) — then the linearizability and set checks —
//! which must find nothing. And the proof that the checker can fail: with
//! the storenode's deliberate stale-read bug on and partitions as the only
//! fault, it must find an anomaly.
//!
//! Each run's history.jsonl, checked again with `ringkv chaos check`, gives
//! the same verdict.
//!
//! Needs root (network namespaces, iptables); without it the tests say so
//! and pass vacuously. CI runs as root.

use std::process::Command;

fn is_root() -> bool {
    // SAFETY: getuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Runs `scripts/chaos.sh` with `args`; None when this machine cannot.
fn chaos(args: &[&str]) -> Option<(i32, String)> {
    if !is_root() {
        eprintln!("skipped: fault injection needs root (network namespaces and iptables); CI runs it as root");
        return None;
    }
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/chaos.sh");
    let out = Command::new("bash")
        .arg(script)
        .arg(env!("CARGO_BIN_EXE_ringkv"))
        .args(args)
        .output()
        .expect("run scripts/chaos.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Some((out.status.code().unwrap_or(-1), text))
}

static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// `ringkv chaos check` on a run's history: exit code and output.
fn recheck(out: &std::path::Path) -> (i32, String) {
    let r = Command::new(env!("CARGO_BIN_EXE_ringkv"))
        .args(["chaos", "check"])
        .arg(out.join("history.jsonl"))
        .output()
        .expect("run ringkv chaos check");
    let text = format!("{}{}", String::from_utf8_lossy(&r.stdout), String::from_utf8_lossy(&r.stderr));
    (r.status.code().unwrap_or(-1), text)
}

#[test]
fn short_chaos_run_finds_no_anomaly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf-8 path");
    let seed = std::env::var("RINGKV_CHAOS_SEED").unwrap_or_else(|_| "20261124".into());
    let Some((code, text)) = chaos(&["--duration", "75s", "--seed", &seed, "--out", out]) else { return };
    println!("{text}");
    assert_eq!(code, 0, "chaos run failed (seed {seed}):\n{text}");
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).expect("summary.json")).expect("JSON");
    assert_eq!(summary["anomalies"], 0);
    assert_eq!(summary["acknowledged_writes_lost"], 0);
    assert_eq!(summary["undecided_keys"], 0, "every key's history was checked");
    assert!(summary["register_ops_checked"].as_u64().unwrap_or(0) > 500, "{summary}");
    assert!(summary["faults_by_kind"].as_object().is_some_and(|f| f.len() >= 4), "several kinds of fault: {summary}");
    // Every short run has a fault of each class, membership included.
    let membership = ["MoveReplica", "Decommission", "AddStorenode", "TransferLeader", "Split"];
    assert!(
        summary["fault_outcomes"].as_object().is_some_and(|o| membership.iter().any(|k| o.contains_key(*k))),
        "a membership fault ran: {summary}"
    );
    // The history the run wrote says the same when checked on its own.
    let (code, text) = recheck(dir.path());
    assert_eq!(code, 0, "chaos check of the run's history:\n{text}");
    let checked = format!("register operations checked {:>15}", summary["register_ops_checked"]);
    assert!(text.lines().any(|l| l.split_whitespace().eq(checked.split_whitespace())), "same count: {text}");
}

/// Splits under 16 clients with the checkers, mixed with kills and
/// partitions: every split a new Raft group on the same nodes while writes
/// and reads go on (retries across a split included).
#[test]
fn splits_under_load_with_kills_and_partitions_find_no_anomaly() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf-8 path");
    let args = ["--duration", "60s", "--seed", "12", "--nemesis", "split,kill,halves", "--out", out];
    let Some((code, text)) = chaos(&args) else { return };
    println!("{text}");
    assert_eq!(
        code, 0,
        "chaos run failed:
{text}"
    );
    let summary: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("summary.json")).expect("summary.json")).expect("JSON");
    assert_eq!(summary["anomalies"], 0);
    assert_eq!(summary["acknowledged_writes_lost"], 0);
    assert_eq!(summary["undecided_keys"], 0, "every key's history was checked");
    let splits = summary["fault_outcomes"]["Split"].as_object().and_then(|o| o.get("split")).and_then(|n| n.as_u64());
    assert!(splits.unwrap_or(0) >= 2, "shards were split during the run: {summary}");
}

#[test]
fn checker_catches_stale_reads_when_reads_skip_read_index() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().expect("tempdir");
    let out = dir.path().to_str().expect("utf-8 path");
    let args =
        ["--duration", "60s", "--seed", "7", "--nemesis", "isolate,halves", "--unsafe-local-reads", "--out", out];
    let Some((code, text)) = chaos(&args) else { return };
    println!("{text}");
    assert_eq!(code, 3, "the deliberate bug must be caught:\n{text}");
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("violations.json")).expect("violations.json"))
            .expect("JSON");
    let first = &v["register_violations"][0]["ops"];
    assert!(first.as_array().is_some_and(|ops| !ops.is_empty() && ops.len() <= 20), "a small failing sub-history: {v}");
    let (code, text) = recheck(dir.path());
    assert_eq!(code, 3, "chaos check of the run's history finds it too:\n{text}");
    assert!(text.contains("anomaly: register key"), "{text}");
}
