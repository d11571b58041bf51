//! `ringkv playground`: a whole local cluster in one command, like
//! `tiup playground`. It starts the placement members, the storenodes and a
//! router as child processes of this binary on 127.0.0.1, waits until a write
//! and a read go through, prints the endpoints, writes `DIR/playground.json`
//! (role, id, addresses, pid, data dir, log of each process) and, on Ctrl-C,
//! stops every child with SIGTERM (SIGKILL after a grace period). It restarts
//! nothing by itself. Data lives under DIR and survives the next start.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use ringkv_client::Client;
use serde::Serialize;

use super::defaults;

#[derive(clap::Args)]
pub struct Args {
    /// Where data, logs and playground.json live.
    #[arg(long, default_value = "ringkv-playground")]
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
    /// placement 6390…, storenodes 20160…).
    #[arg(long)]
    port_base: Option<u16>,
    /// Give up if the cluster does not serve within this many seconds.
    #[arg(long, default_value_t = 60)]
    ready_timeout_secs: u64,
}

#[derive(Serialize, Clone)]
pub struct ProcessInfo {
    pub role: &'static str,
    pub id: u64,
    pub grpc: String,
    pub http: String,
    pub pid: u32,
    pub data_dir: PathBuf,
    pub log: PathBuf,
}

struct Ports {
    placement: Vec<(u16, u16)>,
    storenodes: Vec<(u16, u16)>,
    router: (u16, u16),
}

fn ports(a: &Args) -> anyhow::Result<Ports> {
    let (p, s) = (a.placement as u16, a.storenodes as u16);
    Ok(match a.port_base {
        None => Ports {
            placement: (0..p).map(|i| (defaults::PLACEMENT_PORT + i, defaults::PLACEMENT_HTTP_PORT + i)).collect(),
            storenodes: (0..s).map(|i| (defaults::STORENODE_PORT + i, defaults::STORENODE_HTTP_PORT + i)).collect(),
            router: (6380, 8080),
        },
        Some(b) => {
            let top = b as u32 + 2 * (p as u32 + s as u32) + 2;
            if top > u16::MAX as u32 {
                bail!("--port-base {b} leaves no room for {} ports", top - b as u32);
            }
            Ports {
                placement: (0..p).map(|i| (b + 2 * i, b + 2 * i + 1)).collect(),
                storenodes: (0..s).map(|i| (b + 2 * (p + i), b + 2 * (p + i) + 1)).collect(),
                router: (b + 2 * (p + s), b + 2 * (p + s) + 1),
            }
        }
    })
}

/// The children; all stopped when this is dropped (error paths included).
struct Children(Vec<(ProcessInfo, Child)>);

impl Children {
    fn spawn(&mut self, info: ProcessInfo, args: Vec<String>) -> anyhow::Result<()> {
        let log = File::options()
            .create(true)
            .append(true)
            .open(&info.log)
            .with_context(|| info.log.display().to_string())?;
        let exe = std::env::current_exe().context("finding the ringkv binary")?;
        let child = Command::new(exe)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {} {}", info.role, info.id))?;
        let mut info = info;
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
        self.stop(Duration::from_secs(10));
    }
}

fn addr(port: u16) -> String {
    format!("127.0.0.1:{port}")
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    if !(a.placement == 1 || a.placement == 3) {
        bail!("--placement must be 1 or 3");
    }
    if a.storenodes == 0 || a.storenodes > 50 || a.shards == 0 {
        bail!("--storenodes must be 1..=50 and --shards at least 1");
    }
    let dir = &a.dir;
    std::fs::create_dir_all(dir.join("logs")).with_context(|| format!("creating {}", dir.display()))?;
    let ports = ports(&a)?;
    let rf = a.storenodes.min(3);
    let members: Vec<String> =
        ports.placement.iter().enumerate().map(|(i, (g, _))| format!("{}={}", i + 1, addr(*g))).collect();
    let placement_addrs: Vec<String> = ports.placement.iter().map(|(g, _)| addr(*g)).collect();
    let info = |role: &'static str, id: u64, (g, h): (u16, u16), data: PathBuf| ProcessInfo {
        role,
        id,
        grpc: addr(g),
        http: addr(h),
        pid: 0,
        log: dir.join("logs").join(format!("{role}-{id}.log")),
        data_dir: data,
    };
    let mut children = Children(Vec::new());
    for (i, p) in ports.placement.iter().enumerate() {
        let id = i as u64 + 1;
        let pi = info("placement", id, *p, dir.join(format!("placement-{id}")));
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
        ];
        for m in &members {
            args.extend(["--member".into(), m.clone()]);
        }
        children.spawn(pi, args)?;
    }
    for (i, p) in ports.storenodes.iter().enumerate() {
        let id = i as u64 + 1;
        let si = info("storenode", id, *p, dir.join(format!("storenode-{id}")));
        let mut args = vec![
            "storenode".into(),
            "--node-id".into(),
            id.to_string(),
            "--listen".into(),
            si.grpc.clone(),
            "--http".into(),
            si.http.clone(),
            "--data-dir".into(),
            si.data_dir.display().to_string(),
        ];
        for p in &placement_addrs {
            args.extend(["--placement".into(), p.clone()]);
        }
        children.spawn(si, args)?;
    }
    let ri = info("router", 1, ports.router, PathBuf::new());
    let router_addr = ri.grpc.clone();
    let router_http = ri.http.clone();
    children.spawn(
        ri,
        vec![
            "router".into(),
            "--listen".into(),
            router_addr.clone(),
            "--http".into(),
            router_http.clone(),
            "--placement".into(),
            placement_addrs.join(","),
        ],
    )?;
    let procs: Vec<ProcessInfo> = children.0.iter().map(|(i, _)| i.clone()).collect();
    std::fs::write(dir.join("playground.json"), serde_json::to_string_pretty(&procs)?)?;

    wait_until_serving(&mut children, &router_addr, Duration::from_secs(a.ready_timeout_secs)).await?;
    println!(
        "ringkv playground is up: {} placement, {} storenodes, 1 router; data in {}",
        a.placement,
        a.storenodes,
        dir.display()
    );
    println!("  router gRPC   {router_addr}");
    println!("  router HTTP   http://{router_http}");
    println!("  placement     {}", placement_addrs.join(","));
    println!("Try:");
    if a.port_base.is_some() {
        println!("  export RINGKV_ROUTER={router_addr} RINGKV_PLACEMENT={}", placement_addrs.join(","));
    }
    println!("  ringkv put hello world && ringkv get hello");
    println!(
        "  curl -X PUT --data-binary 42 http://{router_http}/v1/kv/answer; curl http://{router_http}/v1/kv/answer"
    );
    println!("  ringkv cluster status;  ringkv shard list;  ringkv node list");
    println!("Processes, addresses and logs: {}. Ctrl-C stops everything.", dir.join("playground.json").display());

    loop {
        tokio::select! {
            _ = super::shutdown_signal() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                if let Some((p, st)) = children.exited() {
                    eprintln!("{} {} exited ({st}); see {}. Not restarting it.", p.role, p.id, p.log.display());
                    children.0.retain(|(i, _)| i.pid != p.pid);
                }
            }
        }
    }
    println!("stopping…");
    tokio::task::spawn_blocking(move || children.stop(Duration::from_secs(10))).await?;
    Ok(())
}

/// Polls with a real write and read through the router until both succeed.
async fn wait_until_serving(children: &mut Children, router: &str, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let client = Client::connect([router]).await?.with_timeout(Duration::from_secs(2));
    loop {
        if let Some((p, st)) = children.exited() {
            bail!("{} {} exited during start-up ({st}); see {}", p.role, p.id, p.log.display());
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
