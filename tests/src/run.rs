//! One chaos run end to end: start the cluster, run the clients and the
//! fault schedule for the duration, heal everything, read the sets back,
//! check the histories, write the files and print the summary table.
//!
//! Files in `out`: `history.jsonl` (every operation and the final reads, see
//! [`crate::history`]), `nemesis.jsonl` (every
//! fault as applied), `summary.json`, and on an anomaly `violations.json`
//! (the smallest failing sub-histories found) — replay with the same seed.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringkv_client::Client;
use ringkv_storenode::testkit::poll_until;
use serde::Serialize;

use crate::checker::{check_registers, check_sets, Outcome, RegReport, SetReport};
use crate::cluster::{self, router_addr, Cluster, ROUTERS};
use crate::history::History;
use crate::membership::{self, Admin};
use crate::nemesis::{self, Class, Fault, Kind};
use crate::workload::{self, Recorder, SET_KEYS};

pub struct Options {
    pub ringkv: PathBuf,
    pub out: PathBuf,
    pub duration: Duration,
    pub seed: u64,
    pub workers: usize,
    pub kinds: Vec<Kind>,
    pub shards: u64,
    /// Turn on the storenode's deliberate stale-read bug.
    pub unsafe_local_reads: bool,
}

#[derive(Serialize)]
struct AppliedFault {
    planned: Fault,
    started_ms: u64,
    healed_ms: u64,
    targets: Vec<String>,
    /// Membership faults: what came of them (moved, refused, removed, ...).
    outcome: Option<membership::Outcome>,
}

#[derive(Serialize, Default)]
pub struct Summary {
    pub seed: u64,
    pub duration_s: f64,
    pub ops_by_outcome: BTreeMap<String, usize>,
    pub faults_by_kind: BTreeMap<String, usize>,
    /// Membership faults by kind: how many ended each way (moved, refused,
    /// removed, recommissioned, ...).
    pub fault_outcomes: BTreeMap<String, BTreeMap<String, usize>>,
    /// Fraction of whole seconds with at least one acknowledged write.
    pub availability: f64,
    /// By fault kind: the longest stretch without any acknowledged write that
    /// overlaps a fault of that kind or the [`RECOVERY_WINDOW`] after it (ms).
    pub longest_unavailable_ms: BTreeMap<String, u64>,
    pub register_ops_checked: usize,
    pub anomalies: usize,
    pub undecided_keys: usize,
    pub set: SetReportCounts,
    pub acknowledged_writes_lost: usize,
    /// Replicas storenodes still hosted after the run that placement's map
    /// no longer gives them (should be deleted on placement's word), after
    /// up to [`STALE_REPLICA_TIMEOUT`]; or storenodes that did not answer.
    pub stale_replicas_left: usize,
    /// Processes that exited by themselves (restarted by the run, as a
    /// supervisor would): name, time, how it ended.
    pub process_crashes: Vec<String>,
}

#[derive(Serialize, Default)]
pub struct SetReportCounts {
    pub acknowledged: usize,
    pub lost: usize,
    pub duplicated: usize,
    pub phantom: usize,
    pub unknown_present: usize,
}

fn ms_since(start: Instant) -> u64 {
    start.elapsed().as_millis() as u64
}

/// Until a write and a read go through every router, or `timeout`.
async fn wait_serving(timeout: Duration) -> anyhow::Result<()> {
    for i in 0..ROUTERS {
        let c = Client::connect([router_addr(i)]).await?.with_timeout(Duration::from_secs(2));
        let served = poll_until(timeout, || async {
            (c.put(b"chaos:probe", b"ok").await.is_ok() && c.get(b"chaos:probe").await.is_ok()).then_some(())
        })
        .await;
        if served.is_none() {
            bail!("the cluster did not serve through router {} within {timeout:?}", i + 1);
        }
    }
    Ok(())
}

/// The final read of every set key the run used (`run` long), through
/// either router, each retried until `timeout`.
async fn read_sets_back(run: Duration, timeout: Duration) -> anyhow::Result<BTreeMap<String, Vec<u64>>> {
    let reader = Client::connect((0..ROUTERS).map(router_addr)).await?.with_timeout(Duration::from_secs(5));
    let mut out = BTreeMap::new();
    let keys = (0..=workload::set_generation(run)).flat_map(|g| (0..SET_KEYS).map(move |i| workload::set_key(g, i)));
    for k in keys {
        let last_error = Mutex::new(None);
        let read = poll_until(timeout, || async {
            reader.get(k.as_bytes()).await.map_err(|e| *last_error.lock().expect("not poisoned") = Some(e)).ok()
        })
        .await;
        let Some(v) = read else {
            bail!("final read of {k}: {:?}", last_error.into_inner().expect("not poisoned"));
        };
        out.insert(k, v.as_deref().map(workload::decode_set).unwrap_or_default());
    }
    Ok(out)
}

/// How often the supervisor looks for processes that exited by themselves.
const SUPERVISE_EVERY: Duration = Duration::from_millis(500);

/// Plays the part of systemd for the cluster: a process that exits by
/// itself (a storenode aborts when its Raft loop dies, so that its
/// supervisor restarts it) is recorded as a crash and started again, until
/// `stop`.
async fn supervise(
    cluster: Arc<Mutex<Cluster>>,
    start: Instant,
    stop: Arc<AtomicBool>,
    crashes: Arc<Mutex<Vec<String>>>,
) {
    while !stop.load(Ordering::Relaxed) {
        tokio::time::sleep(SUPERVISE_EVERY).await;
        let mut c = cluster.lock().expect("not poisoned");
        record_crashes(&mut c, start, &crashes);
    }
}

/// Records every member process that exited by itself, and starts it again.
fn record_crashes(c: &mut Cluster, start: Instant, crashes: &Mutex<Vec<String>>) {
    for (i, status) in c.reap_exited() {
        let crash = format!(
            "{} at {:.1}s: {status} (see {}.log)",
            c.procs[i].name,
            ms_since(start) as f64 / 1000.0,
            c.procs[i].name
        );
        println!("  CRASH  {crash}; restarted");
        if let Err(e) = c.start(i) {
            println!("  restarting {}: {e:#}", c.procs[i].name);
        }
        crashes.lock().expect("not poisoned").push(crash);
    }
}

/// Applies one fault for its duration, then undoes it. Returns the
/// processes it acted on (named as they were then: a membership fault may
/// put a new storenode in a slot meanwhile) and, for membership faults,
/// what came of it.
async fn apply(
    cluster: &Mutex<Cluster>,
    admin: &Admin,
    f: &Fault,
) -> anyhow::Result<(Vec<String>, Option<membership::Outcome>)> {
    let dur = Duration::from_millis(f.duration_ms);
    let deadline = Instant::now() + dur;
    let c = || cluster.lock().expect("not poisoned");
    let everyone = c().members();
    let others = |t: &[usize]| everyone.iter().copied().filter(|i| !t.contains(i)).collect::<Vec<_>>();
    let mut targets: Vec<usize> = {
        let c = c();
        f.targets.iter().map(|&t| c.resolve(t)).collect()
    };
    if f.kind == Kind::KillShardLeader {
        let n = f.picks.first().copied().unwrap_or(0) as usize;
        targets = admin.shard_leader(cluster, n).await.into_iter().collect();
    }
    if matches!(f.kind, Kind::Halves | Kind::Bridge) {
        let (a, b) = c().partition_sides(f);
        targets = a.iter().chain(&b).copied().collect();
    }
    let names = c().names(&targets);
    match f.kind {
        Kind::Kill | Kind::KillShardLeader => {
            for &t in &targets {
                c().kill9(t);
            }
            tokio::time::sleep(dur).await;
            for &t in &targets {
                c().start(t)?;
            }
        }
        Kind::Pause => {
            for &t in &targets {
                c().pause(t);
            }
            tokio::time::sleep(dur).await;
            for &t in &targets {
                c().resume(t);
            }
        }
        Kind::Isolate => {
            let o = others(&targets);
            c().cut(&targets, &o)?;
            c().cut(&o, &targets)?;
            tokio::time::sleep(dur).await;
            c().heal()?;
        }
        Kind::OneWay => {
            c().cut(&targets, &others(&targets))?;
            tokio::time::sleep(dur).await;
            c().heal()?;
        }
        Kind::Halves | Kind::Bridge => {
            let (a, mut b) = c().partition_sides(f);
            if f.kind == Kind::Bridge {
                // The bridge (first of the majority) keeps links to both sides.
                b.remove(0);
            }
            c().cut(&a, &b)?;
            c().cut(&b, &a)?;
            tokio::time::sleep(dur).await;
            c().heal()?;
        }
        Kind::MoveReplica | Kind::Decommission | Kind::AddStorenode | Kind::TransferLeader | Kind::Split => {
            let (names, outcome) = admin
                .run(cluster, || async {
                    match f.kind {
                        Kind::MoveReplica => admin.move_replica(cluster, f, deadline).await,
                        Kind::Decommission => admin.decommission(cluster, f, deadline).await,
                        Kind::AddStorenode => admin.add_storenode(cluster, f, deadline).await,
                        Kind::Split => admin.split(cluster, f, deadline).await,
                        _ => admin.transfer_leader(cluster, f, deadline).await,
                    }
                })
                .await;
            return Ok((names, Some(outcome)));
        }
    }
    Ok((names, None))
}

pub async fn run(o: Options) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&o.out).with_context(|| format!("creating {}", o.out.display()))?;
    cluster::prepare_namespace()?;
    let env = if o.unsafe_local_reads {
        vec![(ringkv_storenode::service::kv::UNSAFE_LOCAL_READS_ENV.to_string(), "1".to_string())]
    } else {
        Vec::new()
    };
    let cluster = Arc::new(Mutex::new(Cluster::new(&o.ringkv, &o.out, o.shards, env)));
    let admin = Arc::new(Admin::new());
    cluster.lock().expect("not poisoned").start_all()?;
    wait_serving(Duration::from_secs(60)).await?;
    let schedule = nemesis::schedule(o.seed, o.duration.as_millis() as u64, &o.kinds);
    println!(
        "chaos: seed {} ({} faults planned over {:?}); files in {}",
        o.seed,
        schedule.len(),
        o.duration,
        o.out.display()
    );

    let start = Instant::now();
    let rec = Recorder::new(start);
    let stop = Arc::new(AtomicBool::new(false));
    let crashes = Arc::new(Mutex::new(Vec::new()));
    let supervisor = tokio::spawn(supervise(cluster.clone(), start, stop.clone(), crashes.clone()));
    let mut workers = Vec::new();
    for w in 0..o.workers {
        // Half the workers prefer each router; all fail over to the other.
        let routers = if w % 2 == 0 { [router_addr(0), router_addr(1)] } else { [router_addr(1), router_addr(0)] };
        let client = Client::connect(routers).await?.with_timeout(Duration::from_secs(2));
        let (rec, stop) = (rec.clone(), stop.clone());
        // One worker in four appends to sets; the rest work on registers.
        if w % 4 == 3 {
            workers.push(tokio::spawn(workload::set_worker(w as u32, client, rec, stop, o.seed)));
        } else {
            workers.push(tokio::spawn(workload::register_worker(w as u32, client, rec, stop, o.seed)));
        }
    }

    // Each fault runs as its own task from its start time, so a companion
    // fault can begin inside a partition.
    let mut running = tokio::task::JoinSet::new();
    for f in schedule {
        tokio::time::sleep(Duration::from_millis(f.at_ms).saturating_sub(start.elapsed())).await;
        let (cluster, admin) = (cluster.clone(), admin.clone());
        running.spawn(async move {
            let started_ms = ms_since(start);
            if f.kind.class() == Class::Membership {
                // Long, and logging their steps: say when they start.
                println!("  {:>6.1}s  {:?} fires", started_ms as f64 / 1000.0, f.kind);
            }
            let (targets, outcome) = apply(&cluster, &admin, &f).await?;
            let result = outcome.as_ref().map(|o| format!(": {} ({})", o.label, o.detail)).unwrap_or_default();
            println!(
                "  {:>6.1}s  {:?} {:?} for {}ms{result}",
                started_ms as f64 / 1000.0,
                f.kind,
                targets,
                f.duration_ms
            );
            anyhow::Ok(AppliedFault { planned: f, started_ms, healed_ms: ms_since(start), targets, outcome })
        });
    }
    let mut applied = Vec::new();
    while let Some(a) = running.join_next().await {
        applied.push(a.context("a nemesis task panicked")??);
    }
    applied.sort_by_key(|a| a.started_ms);
    let mut log = std::io::BufWriter::new(std::fs::File::create(o.out.join("nemesis.jsonl"))?);
    for a in &applied {
        writeln!(log, "{}", serde_json::to_string(a)?)?;
    }
    log.flush()?;
    tokio::time::sleep(o.duration.saturating_sub(start.elapsed())).await;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.context("a client worker panicked")?;
    }
    let run_ms = ms_since(start);

    supervisor.await.context("the supervisor panicked")?;
    // Heal everything and restart whatever is down, stop storenodes that
    // were removed since, then read the sets back.
    {
        let mut c = cluster.lock().expect("not poisoned");
        c.heal()?;
        record_crashes(&mut c, start, &crashes);
        for i in 0..c.procs.len() {
            c.resume(i);
            c.start(i)?;
        }
    }
    let reconciled = admin.reconcile(&cluster).await;
    if !reconciled.is_empty() {
        println!("  after the run: {reconciled}");
    }
    wait_serving(Duration::from_secs(60)).await?;
    let final_reads = read_sets_back(Duration::from_millis(run_ms), Duration::from_secs(60)).await?;
    let stale_replicas = admin.stale_replicas(&cluster, STALE_REPLICA_TIMEOUT).await;
    for s in &stale_replicas {
        println!("  stale replica left: {s}");
    }
    {
        let mut c = cluster.lock().expect("not poisoned");
        record_crashes(&mut c, start, &crashes);
        c.stop_all();
    }

    let history = History {
        registers: std::mem::take(&mut *rec.registers.lock().expect("not poisoned")),
        sets: std::mem::take(&mut *rec.sets.lock().expect("not poisoned")),
        final_reads,
        lines: Default::default(),
    };
    let history_file = o.out.join("history.jsonl");
    history.write_file(&history_file).with_context(|| format!("writing {}", history_file.display()))?;
    let (registers, sets) = (&history.registers, &history.sets);

    let reg = check_registers(registers, KEY_BUDGET);
    let set = check_sets(sets, &history.final_reads);
    if !reg.violations.is_empty() || !set.lost.is_empty() || !set.phantom.is_empty() || !set.duplicated.is_empty() {
        let v = serde_json::json!({
            "seed": o.seed,
            "register_violations": reg.violations,
            "set_lost": set.lost, "set_duplicated": set.duplicated, "set_phantom": set.phantom,
            "nemesis": applied,
        });
        std::fs::write(o.out.join("violations.json"), serde_json::to_string_pretty(&v)?)?;
    }
    let ok_writes = std::mem::take(&mut *rec.ok_writes.lock().expect("not poisoned"));
    let mut summary = summarize(&o, run_ms, registers, sets, &reg, &set, &applied, ok_writes);
    summary.stale_replicas_left = stale_replicas.len();
    summary.process_crashes = std::mem::take(&mut *crashes.lock().expect("not poisoned"));
    std::fs::write(o.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    print_summary(&summary);
    println!("  re-check the history on its own: ringkv chaos check {}", history_file.display());
    Ok(summary)
}

#[allow(clippy::too_many_arguments)]
fn summarize(
    o: &Options,
    run_ms: u64,
    registers: &[crate::checker::RegEvent],
    sets: &[crate::checker::SetAdd],
    reg: &RegReport,
    set: &SetReport,
    applied: &[AppliedFault],
    mut ok_writes: Vec<u64>,
) -> Summary {
    ok_writes.sort_unstable();
    let mut s = Summary { seed: o.seed, duration_s: run_ms as f64 / 1000.0, ..Default::default() };
    let outcome = |o: &Outcome| match o {
        Outcome::Ok(_) => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    };
    for e in registers {
        *s.ops_by_outcome.entry(format!("register {}", outcome(&e.outcome))).or_default() += 1;
    }
    for e in sets {
        *s.ops_by_outcome.entry(format!("set-add {}", outcome(&e.outcome))).or_default() += 1;
    }
    let secs = (run_ms / 1000).max(1);
    let mut covered = vec![false; secs as usize];
    for &t in &ok_writes {
        if let Some(c) = covered.get_mut((t / 1000) as usize) {
            *c = true;
        }
    }
    s.availability = covered.iter().filter(|c| **c).count() as f64 / secs as f64;
    for a in applied {
        let kind = format!("{:?}", a.planned.kind);
        *s.faults_by_kind.entry(kind.clone()).or_default() += 1;
        if let Some(o) = &a.outcome {
            *s.fault_outcomes.entry(kind.clone()).or_default().entry(o.label.to_string()).or_default() += 1;
        }
        let gap = longest_gap(&ok_writes, a.started_ms, a.healed_ms + RECOVERY_WINDOW.as_millis() as u64, run_ms);
        let e = s.longest_unavailable_ms.entry(kind).or_default();
        *e = (*e).max(gap);
    }
    s.register_ops_checked = reg.ops_checked;
    s.anomalies = reg.violations.len() + set.duplicated.len() + set.phantom.len();
    s.undecided_keys = reg.undecided.len();
    s.set = SetReportCounts {
        acknowledged: set.acknowledged,
        lost: set.lost.len(),
        duplicated: set.duplicated.len(),
        phantom: set.phantom.len(),
        unknown_present: set.unknown_present,
    };
    s.acknowledged_writes_lost = set.lost.len();
    s
}

/// The linearizability search's time budget per register key, in a run and
/// by default in `ringkv chaos check`.
pub const KEY_BUDGET: Duration = Duration::from_secs(60);

/// How long after the run storenodes get to delete replicas placement no
/// longer gives them.
pub const STALE_REPLICA_TIMEOUT: Duration = Duration::from_secs(30);

/// How long after a fault heals an outage still counts against that fault.
pub const RECOVERY_WINDOW: Duration = Duration::from_secs(5);

/// The longest stretch between acknowledged writes (sorted, ms) that
/// overlaps `[from, to]`, clipped to the run `[0, end]`.
fn longest_gap(ok_writes: &[u64], from: u64, to: u64, end: u64) -> u64 {
    let i = ok_writes.partition_point(|&t| t <= from);
    // The write before the window (or the run's start) opens the first gap.
    let mut prev = if i == 0 { 0 } else { ok_writes[i - 1] };
    let mut longest = 0;
    for &t in &ok_writes[i..] {
        longest = longest.max(t - prev);
        prev = t;
        if t > to {
            return longest;
        }
    }
    longest.max(end.saturating_sub(prev))
}

pub fn print_summary(s: &Summary) {
    println!();
    println!("chaos summary (seed {}, {:.0}s)", s.seed, s.duration_s);
    println!("  {:<34} {:>10}", "operations", "count");
    for (k, v) in &s.ops_by_outcome {
        println!("  {k:<34} {v:>10}");
    }
    println!("  {:<34} {:>10} {:>22}", "faults", "injected", "longest unavailable");
    for (k, v) in &s.faults_by_kind {
        println!("  {k:<34} {v:>10} {:>20}ms", s.longest_unavailable_ms.get(k).copied().unwrap_or(0));
        if let Some(outcomes) = s.fault_outcomes.get(k) {
            // Labels may hold commas ("added, one removed").
            let list: Vec<String> = outcomes.iter().map(|(label, n)| format!("{label}: {n}")).collect();
            println!("      {}", list.join("; "));
        }
    }
    println!("  {:<34} {:>9.1}%", "availability (seconds with a write)", s.availability * 100.0);
    println!("  {:<34} {:>10}", "register operations checked", s.register_ops_checked);
    println!("  {:<34} {:>10}", "register keys undecided", s.undecided_keys);
    println!("  {:<34} {:>10}", "set elements acknowledged", s.set.acknowledged);
    println!("  {:<34} {:>10}", "stale replicas left after the run", s.stale_replicas_left);
    println!("  {:<34} {:>10}", "processes crashed (restarted)", s.process_crashes.len());
    for crash in &s.process_crashes {
        println!("      {crash}");
    }
    println!("  {:<34} {:>10}", "anomalies (must be 0)", s.anomalies);
    println!("  {:<34} {:>10}", "acknowledged writes lost (must be 0)", s.acknowledged_writes_lost);
}

#[cfg(test)]
mod tests {
    use super::longest_gap;

    #[test]
    fn unavailability_is_the_longest_gap_overlapping_the_fault() {
        let writes = [100, 200, 300, 2_300, 2_400, 9_000];
        // Fault 250..1000: the gap 300..2300 overlaps it.
        assert_eq!(longest_gap(&writes, 250, 1_000, 10_000), 2_000);
        // A fault after the last write: the gap runs to the end of the run.
        assert_eq!(longest_gap(&writes, 9_500, 9_600, 10_000), 1_000);
        // A fault in a busy stretch.
        assert_eq!(longest_gap(&writes, 2_300, 2_350, 10_000), 100);
        // No writes at all: the whole run.
        assert_eq!(longest_gap(&[], 10, 20, 500), 500);
    }
}
