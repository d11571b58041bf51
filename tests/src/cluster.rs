//! The cluster under test and the faults applied to it. Every process gets
//! its own loopback address (placement 127.0.0.11-13, storenodes
//! 127.0.0.21-25, routers 127.0.0.31-32) so iptables rules by address cut
//! exactly the links intended; clients stay on 127.0.0.1 and are never cut.
//! Must run inside a network namespace the caller created: the rules touch
//! nothing else on the machine.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};

use crate::layout::Layout;

pub const PLACEMENT: usize = 3;
pub const STORENODES: usize = 5;
pub const ROUTERS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    Placement,
    Storenode,
    Router,
}

/// One process of the cluster.
pub struct Proc {
    pub name: String,
    pub role: Role,
    pub id: usize,
    pub ip: String,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Proc {
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

pub struct Cluster {
    exe: PathBuf,
    pub procs: Vec<Proc>,
    /// Environment for storenodes (e.g. the deliberate stale-read bug).
    storenode_env: Vec<(String, String)>,
}

pub fn placement_addr(i: usize) -> String {
    format!("127.0.0.{}:6390", 11 + i)
}

pub fn router_addr(i: usize) -> String {
    format!("127.0.0.{}:6380", 31 + i)
}

fn ip(first: usize, i: usize) -> String {
    format!("127.0.0.{}", first + i)
}

impl Cluster {
    /// Lays out the processes (nothing started yet).
    pub fn new(exe: &Path, dir: &Path, shards: u64, storenode_env: Vec<(String, String)>) -> Cluster {
        let layout = Layout {
            dir: dir.to_path_buf(),
            placement: (0..PLACEMENT).map(placement_addr).collect(),
            placement_http: (0..PLACEMENT).map(|i| Some(format!("{}:6490", ip(11, i)))).collect(),
            storenodes: (0..STORENODES)
                .map(|i| (format!("{}:20160", ip(21, i)), format!("{}:20180", ip(21, i))))
                .collect(),
            routers: (0..ROUTERS).map(|i| (router_addr(i), format!("{}:8080", ip(31, i)))).collect(),
            shards,
            replication_factor: 3,
            router_timeout_ms: Some(2000),
        };
        let mut procs = Vec::new();
        let mut add = |role: Role, i: usize, ip: String, args: Vec<String>| {
            let name = format!("{}-{}", format!("{role:?}").to_lowercase(), i + 1);
            let log = dir.join(format!("{name}.log"));
            procs.push(Proc { log, name, role, id: i + 1, ip, args, child: None, paused: false });
        };
        for i in 0..PLACEMENT {
            add(Role::Placement, i, ip(11, i), layout.placement_args(i));
        }
        for i in 0..STORENODES {
            add(Role::Storenode, i, ip(21, i), layout.storenode_args(i));
        }
        for i in 0..ROUTERS {
            add(Role::Router, i, ip(31, i), layout.router_args(i));
        }
        Cluster { exe: exe.to_path_buf(), procs, storenode_env }
    }

    pub fn start_all(&mut self) -> anyhow::Result<()> {
        for i in 0..self.procs.len() {
            self.start(i)?;
        }
        Ok(())
    }

    pub fn start(&mut self, i: usize) -> anyhow::Result<()> {
        let env = self.storenode_env.clone();
        let exe = self.exe.clone();
        let p = &mut self.procs[i];
        if p.child.is_some() {
            return Ok(());
        }
        let log = File::options().create(true).append(true).open(&p.log).context("log file")?;
        let mut cmd = Command::new(exe);
        cmd.args(&p.args).env("RUST_LOG", "info,raft=warn").stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log);
        if p.role == Role::Storenode {
            cmd.envs(env);
        }
        p.child = Some(cmd.spawn().with_context(|| format!("starting {}", p.name))?);
        p.paused = false;
        Ok(())
    }

    /// SIGKILL (a paused process is killed too).
    pub fn kill9(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.procs[i].paused = false;
    }

    fn signal(&mut self, i: usize, sig: libc::c_int) -> bool {
        let Some(pid) = self.procs[i].pid() else { return false };
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe { libc::kill(pid as libc::pid_t, sig) == 0 }
    }

    pub fn pause(&mut self, i: usize) -> bool {
        let ok = self.signal(i, libc::SIGSTOP);
        self.procs[i].paused = ok;
        ok
    }

    pub fn resume(&mut self, i: usize) {
        if self.procs[i].paused {
            self.signal(i, libc::SIGCONT);
            self.procs[i].paused = false;
        }
    }

    /// Drops every packet from any address of `from` to any address of `to`.
    pub fn cut(&self, from: &[usize], to: &[usize]) -> anyhow::Result<()> {
        for &a in from {
            for &b in to {
                if a != b {
                    iptables(&["-A", "RINGKV", "-s", &self.procs[a].ip, "-d", &self.procs[b].ip, "-j", "DROP"])?;
                }
            }
        }
        Ok(())
    }

    /// Removes every partition rule.
    pub fn heal(&self) -> anyhow::Result<()> {
        iptables(&["-F", "RINGKV"])
    }

    /// Stops everything (resuming paused processes first so they can die).
    pub fn stop_all(&mut self) {
        for i in 0..self.procs.len() {
            self.resume(i);
            self.kill9(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.heal();
        self.stop_all();
    }
}

pub fn iptables(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("iptables").args(["-w", "5"]).args(args).output().context("running iptables")?;
    if !out.status.success() {
        bail!("iptables {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

/// Checks that we run where partitions are safe to make, and prepares the
/// RINGKV chain. Refuses to touch a namespace that has non-loopback links.
pub fn prepare_namespace() -> anyhow::Result<()> {
    let out = Command::new("ip").args(["-o", "link", "show"]).output().context("running ip")?;
    let links = String::from_utf8_lossy(&out.stdout);
    let foreign: Vec<&str> = links.lines().filter(|l| !l.contains(": lo:")).collect();
    if !foreign.is_empty() {
        bail!("refusing to inject faults outside a private network namespace (found links: {foreign:?}); run under `ip netns exec`");
    }
    // The chain may exist from an earlier run in this namespace.
    let _ = iptables(&["-N", "RINGKV"]);
    iptables(&["-F", "RINGKV"])?;
    if iptables(&["-C", "INPUT", "-j", "RINGKV"]).is_err() {
        iptables(&["-I", "INPUT", "-j", "RINGKV"])?;
    }
    Ok(())
}
