//! `ringkv bench`: throughput, latency percentiles and CPU per operation.
//!
//! Targets: an in-process cluster of storenodes (the default; clients call
//! `ShardKv` directly), a running cluster through its routers (`--router`,
//! or `--playground DIR`, which also finds every server process to account
//! its CPU), or an etcd cluster (`--etcd`), so that ringkv and etcd are
//! measured by one harness in one sitting. Workloads: plain puts and gets
//! and YCSB A, B, C, F, with uniform or zipfian keys, closed loop or at a
//! fixed rate (`--rate`). `--json FILE` appends one line per phase for
//! `scripts/bench_table.py`.

mod cpu;
mod driver;
mod target;
mod workload;

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ringkv_storenode::testkit::LocalCluster;

use super::playground::file::{self as playground_file, Role};
use cpu::CpuProbe;
use driver::{Load, PhaseResult};
use target::Conn;
use workload::{KeyChooser, KeyDist, Workload};

#[derive(clap::Args)]
pub struct Args {
    /// Storenodes of the in-process cluster.
    #[arg(long, default_value_t = 3)]
    storenodes: u64,
    /// Shards of the in-process cluster.
    #[arg(long, default_value_t = 32)]
    shards: u64,
    /// Concurrent clients (closed loop), or the most operations in flight
    /// (with `--rate`).
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Connections the clients share (to routers or etcd).
    #[arg(long, default_value_t = 8)]
    connections: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// The phases, in order (put, get, a, b, c, f: YCSB's workloads; idle:
    /// no load, CPU per second).
    #[arg(long = "workload", value_enum, value_delimiter = ',', default_values_t = [Workload::Put, Workload::Get])]
    workloads: Vec<Workload>,
    /// How keys are drawn.
    #[arg(long, value_enum, default_value_t = KeyDist::Uniform)]
    distribution: KeyDist,
    /// Open loop: this many operations per second in all, whatever the
    /// latency (default: closed loop).
    #[arg(long)]
    rate: Option<f64>,
    /// Distinct keys (8-byte big-endian integers).
    #[arg(long, default_value_t = 100_000)]
    keys: u64,
    /// Bytes per value written.
    #[arg(long, default_value_t = 256)]
    value_size: usize,
    /// Data directory of the in-process cluster (default: a temporary one,
    /// removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Bench a running cluster through these routers (HOST:PORT, repeatable
    /// or comma-separated) instead of starting one in-process.
    #[arg(long = "router", value_delimiter = ',')]
    routers: Vec<String>,
    /// Bench the playground in DIR through its router, accounting the CPU of
    /// every ringkv process it runs.
    #[arg(long, conflicts_with_all = ["routers", "etcd"])]
    playground: Option<PathBuf>,
    /// Bench an etcd cluster at these endpoints (HOST:PORT) instead.
    #[arg(long, value_delimiter = ',', conflicts_with = "routers")]
    etcd: Vec<String>,
    /// Also account the CPU of these processes (repeatable or
    /// comma-separated), labelled by command name.
    #[arg(long = "cpu-pid", value_delimiter = ',')]
    cpu_pids: Vec<u32>,
    /// The target's name in reports (default: ringkv, etcd or in-process).
    #[arg(long)]
    label: Option<String>,
    /// Append one JSON line per phase to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        a.clients >= 1 && a.connections >= 1 && a.duration >= 1 && !a.workloads.is_empty(),
        "--clients, --connections, --duration and --workload must be positive / non-empty"
    );
    let keys = Arc::new(KeyChooser::new(a.keys, a.distribution)?);
    let mut procs: Vec<(String, u32)> = a.cpu_pids.iter().map(|p| (cpu::comm(*p), *p)).collect();
    let mut cluster = None;
    let tmp = tempfile::tempdir()?;
    let (label, conns) = if let Some(dir) = &a.playground {
        let infos = playground_file::read(dir)?;
        let routers: Vec<String> = infos.iter().filter(|p| p.role == Role::Router).map(|p| p.grpc.clone()).collect();
        anyhow::ensure!(!routers.is_empty(), "the playground in {} has no router", dir.display());
        procs.extend(infos.iter().filter(|p| p.role != Role::Prometheus).map(|p| (p.role.name().to_string(), p.pid)));
        ("ringkv", Conn::routers(&routers, a.connections).await?)
    } else if !a.routers.is_empty() {
        ("ringkv", Conn::routers(&a.routers, a.connections).await?)
    } else if !a.etcd.is_empty() {
        ("etcd", Conn::etcd(&a.etcd, a.connections).await?)
    } else {
        let dir = a.dir.clone().unwrap_or_else(|| tmp.path().to_path_buf());
        let c = LocalCluster::start(&dir, a.storenodes, a.shards, |_| {})
            .await
            .map_err(|e| anyhow::anyhow!("starting the cluster: {e}"))?;
        c.wait_for_leaders(Duration::from_secs(30)).await.map_err(|e| anyhow::anyhow!("{e}"))?;
        // Cluster and clients share this process: its CPU is both.
        procs.push(("bench process".into(), std::process::id()));
        let conn = Conn::Local(c.client());
        cluster = Some(c);
        ("in-process", vec![conn])
    };
    let label = a.label.clone().unwrap_or_else(|| label.to_string());
    let probe = CpuProbe::new(procs)?;
    println!(
        "ringkv bench: {label}, {} clients on {} connections, {} keys ({:?}), values of {} bytes, {} s per phase, {}",
        a.clients,
        conns.len(),
        a.keys,
        a.distribution,
        a.value_size,
        a.duration,
        a.rate.map_or("closed loop".to_string(), |r| format!("open loop at {r:.0} ops/s"))
    );
    for w in &a.workloads {
        let load = Load {
            workload: *w,
            keys: keys.clone(),
            value_size: a.value_size,
            clients: a.clients,
            duration: Duration::from_secs(a.duration),
            rate: a.rate,
        };
        let r = driver::run(&conns, &load, &probe).await?;
        println!("{}", report_line(*w, &r));
        if let Some(path) = &a.json {
            append_json(path, &label, &a, *w, &r)?;
        }
    }
    if let Some(c) = cluster {
        print_raft_counts(&c);
        c.shutdown().await;
    }
    Ok(())
}

fn report_line(w: Workload, r: &PhaseResult) -> String {
    let name = w.name();
    let per_process =
        |scale: f64| -> Vec<String> { r.cpu.iter().map(|(k, v)| format!("{k} {:.1}", v * scale)).collect() };
    if w == Workload::Idle {
        let secs = r.elapsed.as_secs_f64();
        return format!(
            "{name:>7}: CPU {:.1} % of a core ({})",
            r.cores() * 100.0,
            per_process(100.0 / secs).join(" %, ") + " %"
        );
    }
    let mut line = format!(
        "{name:>7}: {:>8.0} ops/s  p50 {:>7.2} ms  p99 {:>7.2} ms  p99.9 {:>7.2} ms  errors {}",
        r.rate(),
        ms(r.quantile(0.5)),
        ms(r.quantile(0.99)),
        ms(r.quantile(0.999)),
        r.errors
    );
    if let Some(total) = r.cpu_us_per_op() {
        line += &format!("  CPU {total:.0} µs/op ({})", per_process(1e6 / r.ops.max(1) as f64).join(", "));
    }
    line
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn append_json(path: &PathBuf, label: &str, a: &Args, w: Workload, r: &PhaseResult) -> anyhow::Result<()> {
    let cpu: serde_json::Map<String, serde_json::Value> =
        r.cpu.iter().map(|(k, v)| (k.clone(), (v * 1e6 / r.ops.max(1) as f64).into())).collect();
    let row = serde_json::json!({
        "target": label,
        "workload": w.name(),
        "distribution": format!("{:?}", a.distribution).to_lowercase(),
        "clients": a.clients,
        "rate": a.rate,
        "ops_per_sec": r.rate(),
        "ops": r.ops,
        "errors": r.errors,
        "p50_ms": ms(r.quantile(0.5)),
        "p99_ms": ms(r.quantile(0.99)),
        "p999_ms": ms(r.quantile(0.999)),
        "cpu_us_per_op": r.cpu_us_per_op(),
        "cpu_cores": r.cores(),
        "cpu_us_per_op_by_process": cpu,
    });
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    writeln!(f, "{row}")?;
    Ok(())
}

fn print_raft_counts(cluster: &LocalCluster) {
    let mut fsyncs = 0;
    let (mut readies, mut msgs, mut batches) = (0.0, 0u64, 0u64);
    for n in cluster.nodes.iter().flatten() {
        fsyncs += n.metrics.raft.raft_fsyncs.get();
        readies += n.metrics.raft.raft_readies_per_fsync.get_sample_sum();
        msgs += n.metrics.raft.raft_messages_sent.get();
        batches += n.metrics.raft.raft_message_batches_sent.get();
    }
    println!(
        "raft: {fsyncs} fsyncs, {:.1} replica Readies per fsync, {:.1} messages per batch",
        readies / fsyncs.max(1) as f64,
        msgs as f64 / batches.max(1) as f64
    );
}
