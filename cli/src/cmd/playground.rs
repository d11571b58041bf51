//! `ringkv playground`: a whole local cluster in one command, like
//! `tiup playground`. It starts the placement members, the storenodes and a
//! router as child processes of this binary on 127.0.0.1, waits until a write
//! and a read go through, prints the endpoints, writes `DIR/playground.json`
//! (role, id, addresses, pid, data dir, log of each process) and, on Ctrl-C,
//! stops every child with SIGTERM (SIGKILL after a grace period) — and the
//! storenodes `scale-out` added, found in playground.json. It restarts
//! nothing by itself. Data lives under DIR and survives the next start.
//!
//! Ports: placement 6390+i (HTTP 6490+i), storenodes 20160+i (HTTP
//! 20260+i), router 6380 (HTTP 8080), or consecutive ones from
//! `--port-base`. A port that is taken (a local etcd, another program) is
//! replaced by a free one; the addresses chosen are printed and recorded.
//!
//! While it runs, `ringkv playground scale-out` and `scale-in` change its
//! storenodes (see [`scale`]).

pub(crate) mod file;
mod ports;
mod procs;
mod prometheus;
mod scale;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringkv_client::Client;

use super::defaults;
use file::{ProcessInfo, Role};
use ports::{Pick, Picker};

/// Where a playground lives when no `--dir` is given (start, scale-out, scale-in).
pub const DEFAULT_DIR: &str = "ringkv-data/playground";

/// `ringkv playground [flags]` starts one; the subcommands change a running one.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<PlaygroundCmd>,
    #[command(flatten)]
    start: StartArgs,
}

impl Args {
    /// Starting a playground runs servers (and logs like one); the
    /// subcommands are clients.
    pub fn is_start(&self) -> bool {
        self.command.is_none()
    }

    /// The `--log-format` a start was given (the playground logs in it and
    /// passes it on to every child).
    pub fn log_format(&self) -> Option<super::LogFormat> {
        self.start.log_format.filter(|_| self.is_start())
    }
}

#[derive(clap::Subcommand)]
enum PlaygroundCmd {
    /// Start more storenodes in a running playground (found through its playground.json).
    ScaleOut(scale::ScaleOutArgs),
    /// Decommission a storenode of a running playground: placement moves its
    /// replicas off and marks it removed, then its process is stopped.
    ScaleIn(scale::ScaleInArgs),
}

#[derive(clap::Args)]
struct StartArgs {
    /// Where data, logs and playground.json live.
    #[arg(long, default_value = DEFAULT_DIR)]
    dir: PathBuf,
    #[arg(long, default_value_t = 3)]
    storenodes: u64,
    /// Placement members (1 or 3).
    #[arg(long, default_value_t = 3)]
    placement: u64,
    /// Shards created at bootstrap.
    #[arg(long, default_value_t = 16)]
    shards: u64,
    /// Use ports from here up instead of the standard ones (router 6380/8080,
    /// placement 6390…/6490…, storenodes 20160…/20260…). Taken ports are
    /// replaced by free ones either way.
    #[arg(long)]
    port_base: Option<u16>,
    /// Give up if the cluster does not serve within this many seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
    /// Split a shard whose data passes this size (e.g. 32MiB; 0: never).
    /// Placement's default (128MiB) when not given.
    #[arg(long, value_parser = super::parse_bytes)]
    shard_max_bytes: Option<u64>,
    /// Split a shard serving more requests per second than this, for
    /// `--split-detections` heartbeats in a row. Placement's defaults (3000,
    /// 10) when not given.
    #[arg(long)]
    split_qps: Option<f64>,
    #[arg(long)]
    split_detections: Option<u32>,
    /// Do not start Prometheus even if it is installed (by default the
    /// playground runs `prometheus` from PATH with deploy/prometheus's
    /// config and alert rules, on 127.0.0.1:9090).
    #[arg(long)]
    no_prometheus: bool,
    /// Log lines as `text` or `json`, for the playground and every process
    /// it starts. Each server's default (text) when not given.
    #[arg(long, value_enum)]
    log_format: Option<super::LogFormat>,
    /// Passed on to the router and the storenodes: log requests slower than
    /// this many milliseconds (0: every one). Their default (500) when not given.
    #[arg(long)]
    slow_request_ms: Option<u64>,
}

impl StartArgs {
    /// The flags every child gets from the playground's own: `--log-format`
    /// for all, plus `--slow-request-ms` for routers and storenodes.
    fn passed_on(&self, slow: bool) -> Vec<String> {
        let mut args = Vec::new();
        if let Some(f) = self.log_format {
            args.extend(["--log-format".to_string(), f.as_str().to_string()]);
        }
        if let Some(ms) = self.slow_request_ms.filter(|_| slow) {
            args.extend(["--slow-request-ms".to_string(), ms.to_string()]);
        }
        args
    }
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    match a.command {
        Some(PlaygroundCmd::ScaleOut(s)) => scale::scale_out(s).await,
        Some(PlaygroundCmd::ScaleIn(s)) => scale::scale_in(s).await,
        None => start(a.start).await,
    }
}

/// The (gRPC, HTTP) ports each process would like.
struct Wanted {
    placement: Vec<(u16, u16)>,
    storenodes: Vec<(u16, u16)>,
    router: (u16, u16),
    prometheus: u16,
}

impl Wanted {
    fn all(&self) -> impl Iterator<Item = u16> + '_ {
        let ringkv = self.placement.iter().chain(&self.storenodes).chain([&self.router]).flat_map(|&(g, h)| [g, h]);
        ringkv.chain([self.prometheus])
    }
}

fn wanted_ports(a: &StartArgs) -> anyhow::Result<Wanted> {
    let (p, s) = (a.placement as u16, a.storenodes as u16);
    Ok(match a.port_base {
        None => Wanted {
            placement: (0..p).map(|i| (defaults::PLACEMENT_PORT + i, defaults::PLACEMENT_HTTP_PORT + i)).collect(),
            storenodes: (0..s).map(|i| (defaults::STORENODE_PORT + i, defaults::STORENODE_HTTP_PORT + i)).collect(),
            router: (defaults::ROUTER_PORT, defaults::ROUTER_HTTP_PORT),
            prometheus: 9090,
        },
        Some(b) => {
            let top = b as u32 + 2 * (p as u32 + s as u32) + 3;
            if top > u16::MAX as u32 {
                bail!("--port-base {b} leaves no room for {} ports", top - b as u32);
            }
            Wanted {
                placement: (0..p).map(|i| (b + 2 * i, b + 2 * i + 1)).collect(),
                storenodes: (0..s).map(|i| (b + 2 * (p + i), b + 2 * (p + i) + 1)).collect(),
                router: (b + 2 * (p + s), b + 2 * (p + s) + 1),
                prometheus: b + 2 * (p + s) + 2,
            }
        }
    })
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

/// A `ringkv` command for `info` with `args`, its output appended to
/// `info.log`. Used for the playground's own children and for scale-out's.
fn command(info: &ProcessInfo, args: &[String]) -> anyhow::Result<Command> {
    let exe = std::env::current_exe().context("finding the ringkv binary")?;
    program(&exe, info, args)
}

/// `exe` with `args`, its output appended to `info.log`.
fn program(exe: &Path, info: &ProcessInfo, args: &[String]) -> anyhow::Result<Command> {
    let log = File::options()
        .create(true)
        .append(true)
        .open(&info.log)
        .with_context(|| format!("opening {}", info.log.display()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
    // A playground's processes share this machine's cores: runtimes each
    // sized to all of them wake threads across cores for nothing (on 2
    // cores, one worker each costs 13 % less CPU per single-client put;
    // docs/performance.md). The user's own setting wins.
    if std::env::var_os(WORKER_THREADS_ENV).is_none() {
        cmd.env(WORKER_THREADS_ENV, workers_per_process().to_string());
    }
    Ok(cmd)
}

/// Tokio's variable for its runtime's worker threads.
const WORKER_THREADS_ENV: &str = "TOKIO_WORKER_THREADS";

/// Worker threads for each process of a playground: a third of the cores
/// (a playground's busy processes are its storenodes), at least one.
fn workers_per_process() -> usize {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    (cores / 3).max(1)
}

/// A storenode of the playground in `dir`: its record (pid 0 until started).
fn storenode_info(dir: &Path, id: u64, grpc: u16, http: u16) -> ProcessInfo {
    process_info(dir, Role::Storenode, "storenode", id, grpc, http)
}

/// A child's record before it runs: its addresses, data dir and log.
fn process_info(dir: &Path, role: Role, name: &str, id: u64, grpc: u16, http: u16) -> ProcessInfo {
    ProcessInfo {
        role,
        id,
        grpc: addr(grpc),
        http: addr(http),
        pid: 0,
        data_dir: dir.join(format!("{name}-{id}")),
        log: dir.join("logs").join(format!("{name}-{id}.log")),
    }
}

/// The arguments that start the storenode `info` against `placement`: the
/// same for the playground's first storenodes and for scale-out's.
fn storenode_args(info: &ProcessInfo, placement: &[String]) -> Vec<String> {
    let mut args = vec![
        "storenode".into(),
        "--node-id".into(),
        info.id.to_string(),
        "--listen".into(),
        info.grpc.clone(),
        "--http".into(),
        info.http.clone(),
        "--data-dir".into(),
        info.data_dir.display().to_string(),
        // A laptop cluster's shards are small: measure them often, so that
        // a playground started with one shard splits as data arrives.
        "--size-check-ms".into(),
        "2000".into(),
    ];
    for p in placement {
        args.extend(["--placement".into(), p.clone()]);
    }
    args
}

/// The children; all stopped when this is dropped (error paths included).
struct Children(Vec<(ProcessInfo, Child)>);

impl Children {
    fn spawn(&mut self, info: ProcessInfo, args: Vec<String>) -> anyhow::Result<()> {
        self.spawn_command(command(&info, &args)?, info)
    }

    fn spawn_command(&mut self, mut cmd: Command, mut info: ProcessInfo) -> anyhow::Result<()> {
        let child = cmd.spawn().with_context(|| format!("starting {} {}", info.role.name(), info.id))?;
        info.pid = child.id();
        self.0.push((info, child));
        Ok(())
    }

    /// SIGTERM everyone, wait up to `grace`, then SIGKILL whoever is left.
    fn stop(&mut self, grace: Duration) {
        for (_, c) in &self.0 {
            // SAFETY: kill(2) on our own child's pid has no memory effects.
            unsafe {
                libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
            }
        }
        let deadline = Instant::now() + grace;
        for (_, c) in &mut self.0 {
            while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        self.0.clear();
    }

    /// A child that has exited, if any.
    fn exited(&mut self) -> Option<(ProcessInfo, std::process::ExitStatus)> {
        self.0.iter_mut().find_map(|(i, c)| c.try_wait().ok().flatten().map(|st| (i.clone(), st)))
    }
}

impl Drop for Children {
    fn drop(&mut self) {
        self.stop(STOP_GRACE);
    }
}

/// How long a process gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Refuses to start over a playground whose processes still run: with
/// taken ports replaced, a second playground would otherwise get as far as
/// two storenodes on one data directory.
fn ensure_not_running(dir: &Path) -> anyhow::Result<()> {
    if !file::path(dir).exists() {
        return Ok(());
    }
    let running: Vec<String> = file::read(dir)
        .unwrap_or_default()
        .iter()
        .filter(|p| procs::is_ours(p))
        .map(|p| format!("{} {} (pid {})", p.role.name(), p.id, p.pid))
        .collect();
    if !running.is_empty() {
        bail!(
            "a playground is already running in {}: {}; stop it first (Ctrl-C where it runs) or use another --dir",
            dir.display(),
            running.join(", ")
        );
    }
    Ok(())
}

async fn start(a: StartArgs) -> anyhow::Result<()> {
    if !(a.placement == 1 || a.placement == 3) {
        bail!("--placement must be 1 or 3");
    }
    if a.storenodes == 0 || a.storenodes > 50 || a.shards == 0 {
        bail!("--storenodes must be 1..=50 and --shards at least 1");
    }
    let dir = &a.dir;
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    ensure_not_running(dir)?;
    let wanted = wanted_ports(&a)?;
    let mut picker = Picker::new(wanted.all());
    let mut picks: Vec<Pick> = Vec::new();
    let mut pick = |what: String, port: u16| -> anyhow::Result<u16> {
        let p = picker.pick(&what, Some(port))?;
        if p.fell_back() {
            println!("port {port} ({what}) is in use: using 127.0.0.1:{} instead", p.port);
        }
        let port = p.port;
        picks.push(p);
        Ok(port)
    };
    let mut placement_ports = Vec::new();
    for (i, &(g, h)) in wanted.placement.iter().enumerate() {
        placement_ports
            .push((pick(format!("placement {} gRPC", i + 1), g)?, pick(format!("placement {} HTTP", i + 1), h)?));
    }
    let mut storenode_ports = Vec::new();
    for (i, &(g, h)) in wanted.storenodes.iter().enumerate() {
        storenode_ports
            .push((pick(format!("storenode {} gRPC", i + 1), g)?, pick(format!("storenode {} HTTP", i + 1), h)?));
    }
    let router_ports = (pick("router gRPC".into(), wanted.router.0)?, pick("router HTTP".into(), wanted.router.1)?);
    // The Prometheus binary, and the port its UI gets.
    let prometheus = match (a.no_prometheus, prometheus::find_binary()) {
        (false, Some(bin)) => Some((bin, pick("prometheus".into(), wanted.prometheus)?)),
        _ => None,
    };

    let rf = a.storenodes.min(3);
    let members: Vec<String> =
        placement_ports.iter().enumerate().map(|(i, (g, _))| format!("{}={}", i + 1, addr(*g))).collect();
    let placement_addrs: Vec<String> = placement_ports.iter().map(|(g, _)| addr(*g)).collect();
    let mut children = Children(Vec::new());
    for (i, &(g, h)) in placement_ports.iter().enumerate() {
        let id = i as u64 + 1;
        let pi = process_info(dir, Role::Placement, "placement", id, g, h);
        let mut args = vec![
            "placement".into(),
            "--id".into(),
            id.to_string(),
            "--listen".into(),
            pi.grpc.clone(),
            "--http".into(),
            pi.http.clone(),
            "--data-dir".into(),
            pi.data_dir.display().to_string(),
            "--replication-factor".into(),
            rf.to_string(),
            "--initial-shards".into(),
            a.shards.to_string(),
            // A laptop cluster repairs quickly after a storenode is stopped.
            "--down-after-secs".into(),
            "20".into(),
        ];
        for m in &members {
            args.extend(["--member".into(), m.clone()]);
        }
        if let Some(b) = a.shard_max_bytes {
            args.extend(["--shard-max-bytes".into(), b.to_string()]);
        }
        if let Some(q) = a.split_qps {
            args.extend(["--split-qps".into(), q.to_string()]);
        }
        if let Some(d) = a.split_detections {
            args.extend(["--split-detections".into(), d.to_string()]);
        }
        args.extend(a.passed_on(false));
        children.spawn(pi, args)?;
    }
    for (i, &(g, h)) in storenode_ports.iter().enumerate() {
        let si = storenode_info(dir, i as u64 + 1, g, h);
        let mut args = storenode_args(&si, &placement_addrs);
        args.extend(a.passed_on(true));
        children.spawn(si, args)?;
    }
    let ri = ProcessInfo {
        role: Role::Router,
        id: 1,
        grpc: addr(router_ports.0),
        http: addr(router_ports.1),
        pid: 0,
        data_dir: PathBuf::new(),
        log: dir.join("logs").join("router-1.log"),
    };
    let router_addr = ri.grpc.clone();
    let router_http = ri.http.clone();
    let mut args: Vec<String> = vec![
        "router".into(),
        "--listen".into(),
        router_addr.clone(),
        "--http".into(),
        router_http.clone(),
        "--placement".into(),
        placement_addrs.join(","),
    ];
    args.extend(a.passed_on(true));
    children.spawn(ri, args)?;
    let prometheus_http = match &prometheus {
        Some((bin, port)) => Some(start_prometheus(&mut children, dir, bin, *port)?),
        None => None,
    };
    let procs: Vec<ProcessInfo> = children.0.iter().map(|(i, _)| i.clone()).collect();
    {
        let _lock = file::lock(dir)?;
        file::write(dir, &procs)?;
    }

    wait_until_serving(&mut children, &router_addr, Duration::from_secs(a.ready_timeout_secs)).await?;
    println!(
        "ringkv playground is up: {} placement, {} storenodes, 1 router; data in {}",
        a.placement,
        a.storenodes,
        dir.display()
    );
    println!("  router gRPC   {router_addr}");
    println!("  router HTTP   http://{router_http}");
    println!("  console       http://{router_http}/ui");
    println!("  placement     {}", placement_addrs.join(","));
    let storenodes: Vec<String> = storenode_ports.iter().map(|(g, _)| addr(*g)).collect();
    println!("  storenodes    {}", storenodes.join(","));
    match &prometheus_http {
        Some(h) => {
            println!("  prometheus    http://{h}  (alerts: http://{h}/alerts; Grafana dashboards in deploy/grafana)")
        }
        None if a.no_prometheus => {}
        None => println!("  prometheus    not started: no `prometheus` on PATH (Debian: apt install prometheus)"),
    }
    for p in picks.iter().filter(|p| p.fell_back()) {
        println!("  ({} is on port {}: {} was in use)", p.what, p.port, p.wanted.unwrap_or_default());
    }
    println!("Try:");
    if router_addr != defaults::ROUTER_ADDR
        || placement_addrs.first().map(String::as_str) != Some(defaults::PLACEMENT_ADDR)
    {
        // The CLI's defaults would reach another process, or nothing.
        println!("  export RINGKV_ROUTER={router_addr} RINGKV_PLACEMENT={}", placement_addrs.join(","));
    }
    println!("  ringkv put hello world && ringkv get hello");
    println!(
        "  curl -X PUT --data-binary 42 http://{router_http}/v1/kv/answer; curl http://{router_http}/v1/kv/answer"
    );
    println!("  ringkv cluster status;  ringkv shard list;  ringkv node list");
    println!("  ringkv playground scale-out --storenodes 1 --dir {}", dir.display());
    println!("Processes, addresses and logs: {}. Ctrl-C stops everything.", file::path(dir).display());

    loop {
        tokio::select! {
            _ = super::shutdown_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some((p, st)) = children.exited() {
                    eprintln!("{} {} exited ({st}); see {}. Not restarting it.", p.role.name(), p.id, p.log.display());
                    children.0.retain(|(i, _)| i.pid != p.pid);
                }
            }
        }
    }
    println!("stopping…");
    let dir = dir.clone();
    tokio::task::spawn_blocking(move || {
        // Storenodes that scale-out added are not our children: their pids
        // are in playground.json. They stop first, with the storenodes.
        let own: Vec<u32> = procs.iter().map(|p| p.pid).collect();
        let added: Vec<ProcessInfo> = match file::read(&dir) {
            Ok(all) => all.into_iter().filter(|p| !own.contains(&p.pid)).collect(),
            Err(e) => {
                eprintln!("cannot stop what scale-out added: {e:#}");
                Vec::new()
            }
        };
        procs::stop(&added, STOP_GRACE);
        children.stop(STOP_GRACE);
    })
    .await?;
    Ok(())
}

/// Starts Prometheus scraping every process of the playground (the targets
/// are written once playground.json is, and again whenever it changes);
/// returns its HTTP address.
fn start_prometheus(children: &mut Children, dir: &Path, bin: &Path, port: u16) -> anyhow::Result<String> {
    let procs: Vec<ProcessInfo> = children.0.iter().map(|(i, _)| i.clone()).collect();
    let config = prometheus::prepare(dir, &procs)?;
    let info = ProcessInfo {
        role: Role::Prometheus,
        id: 1,
        grpc: String::new(),
        http: addr(port),
        pid: 0,
        data_dir: prometheus::dir(dir).join("data"),
        log: dir.join("logs").join("prometheus.log"),
    };
    let http = info.http.clone();
    let cmd = program(bin, &info, &prometheus::args(&config, &info.data_dir, &http))?;
    children.spawn_command(cmd, info)?;
    Ok(http)
}

/// Polls with a real write and read through the router until both succeed.
async fn wait_until_serving(children: &mut Children, router: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let client = Client::connect([router]).await?.with_timeout(Duration::from_secs(2));
    loop {
        if let Some((p, st)) = children.exited() {
            bail!("{} {} exited during start-up ({st}); see {}", p.role.name(), p.id, p.log.display());
        }
        let ok = client.put(b"playground:probe", b"ok").await.is_ok()
            && client.get(b"playground:probe").await.ok().flatten().as_deref() == Some(b"ok".as_slice());
        if ok {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the cluster did not serve within {timeout:?}; logs are in {}", log_dir(children).display());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn log_dir(children: &Children) -> &Path {
    children.0.first().and_then(|(i, _)| i.log.parent()).unwrap_or(Path::new("."))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn start_args(port_base: Option<u16>) -> StartArgs {
        StartArgs {
            dir: PathBuf::from("d"),
            storenodes: 3,
            placement: 3,
            shards: 16,
            port_base,
            ready_timeout_secs: 60,
            shard_max_bytes: None,
            split_qps: None,
            split_detections: None,
            no_prometheus: false,
            log_format: None,
            slow_request_ms: None,
        }
    }

    #[test]
    fn log_format_and_slow_request_ms_are_passed_on_only_when_given() {
        let a = start_args(None);
        assert!(a.passed_on(true).is_empty() && a.passed_on(false).is_empty());
        let a = StartArgs { log_format: Some(crate::cmd::LogFormat::Json), slow_request_ms: Some(0), ..a };
        assert_eq!(a.passed_on(true), ["--log-format", "json", "--slow-request-ms", "0"]);
        assert_eq!(a.passed_on(false), ["--log-format", "json"], "placement has no slow-request log");
    }

    #[test]
    fn default_ports_avoid_etcd_and_port_base_packs_them() {
        let w = wanted_ports(&start_args(None)).expect("ports");
        assert_eq!(w.placement, vec![(6390, 6490), (6391, 6491), (6392, 6492)]);
        assert_eq!(w.storenodes[0], (20160, 20260));
        assert_eq!(w.router, (6380, 8080));
        assert_eq!(w.prometheus, 9090);
        assert!(!w.all().any(|p| (2379..=2380).contains(&p)), "etcd's ports are left alone");
        let w = wanted_ports(&start_args(Some(30000))).expect("ports");
        let mut all: Vec<u16> = w.all().collect();
        all.sort_unstable();
        assert_eq!(all, (30000..30015).collect::<Vec<_>>());
        assert!(wanted_ports(&start_args(Some(65530))).is_err());
    }

    #[test]
    fn a_storenode_starts_with_the_same_flags_from_start_and_scale_out() {
        let info = storenode_info(Path::new("/pg"), 4, 7000, 7001);
        let args = storenode_args(&info, &["127.0.0.1:6390".into(), "127.0.0.1:6391".into()]).join(" ");
        assert_eq!(
            args,
            "storenode --node-id 4 --listen 127.0.0.1:7000 --http 127.0.0.1:7001 --data-dir /pg/storenode-4 \
             --size-check-ms 2000 --placement 127.0.0.1:6390 --placement 127.0.0.1:6391"
        );
        assert_eq!(info.log, Path::new("/pg/logs/storenode-4.log"));
    }
}
