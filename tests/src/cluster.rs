//! The cluster under test and the faults applied to it. Every process gets
//! its own loopback address (placement 127.0.0.11-13, storenodes
//! 127.0.0.21-27, routers 127.0.0.31-32) so iptables rules by address cut
//! exactly the links intended; clients stay on 127.0.0.1 and are never cut.
//! Must run inside a network namespace the caller created: the rules touch
//! nothing else on the machine.
//!
//! Storenodes live in *slots*, one address each: the first [`STORENODES`]
//! start with the cluster (node ids 1-5); the [`SPARE_STORENODES`] others
//! are empty until a membership fault starts a new storenode (no
//! `--node-id`: placement allocates one). A storenode that placement has
//! REMOVED is stopped for good and its slot *retired*; a later storenode may
//! take that address again, with a new data directory and a new id (a
//! replaced machine keeping its IP), but only once every never-used address
//! has been taken. Raft messages name the node they are for, so one sent to
//! the old id at the reused address is refused, never delivered.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{bail, Context};
use ringkv_storenode::identity::Identity;

use crate::layout::Layout;
use crate::nemesis::{Fault, Target};

pub const PLACEMENT: usize = 3;
/// Storenodes the cluster starts with, and returns to after membership faults.
pub const STORENODES: usize = 5;
/// Storenode addresses kept free for storenodes started during the run.
pub const SPARE_STORENODES: usize = 2;
/// Every storenode address: the process indices `PLACEMENT..PLACEMENT + STORENODE_SLOTS`.
pub const STORENODE_SLOTS: usize = STORENODES + SPARE_STORENODES;
pub const ROUTERS: usize = 2;

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Role {
    Placement,
    Storenode,
    Router,
}

/// Where a process stands in the cluster's life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Membership {
    /// Part of the cluster: started, restarted after kills.
    Member,
    /// A storenode slot never used yet.
    Spare,
    /// A storenode placement REMOVED: stopped, never restarted.
    Retired,
}

/// One process of the cluster.
pub struct Proc {
    pub name: String,
    pub role: Role,
    pub id: usize,
    pub ip: String,
    pub membership: Membership,
    /// Storenodes: the data directory (its identity file names the node id).
    pub data_dir: Option<PathBuf>,
    /// Storenodes: the node id, once known (given, or read from the data dir).
    node_id: Option<u64>,
    /// Storenodes started in this slot so far (names data directories apart).
    incarnations: usize,
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
    dir: PathBuf,
    layout: Layout,
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
            storenodes: (0..STORENODE_SLOTS)
                .map(|i| (format!("{}:20160", ip(21, i)), format!("{}:20180", ip(21, i))))
                .collect(),
            routers: (0..ROUTERS).map(|i| (router_addr(i), format!("{}:8080", ip(31, i)))).collect(),
            shards,
            replication_factor: 3,
            router_timeout_ms: Some(2000),
            placement_flags: Vec::new(),
            storenode_flags: Vec::new(),
        };
        let mut procs = Vec::new();
        let mut add = |role: Role, i: usize, ip: String, args: Vec<String>, membership: Membership| {
            let name = format!("{}-{}", format!("{role:?}").to_lowercase(), i + 1);
            let log = dir.join(format!("{name}.log"));
            let (data_dir, node_id, incarnations) = match (role, membership) {
                (Role::Storenode, Membership::Member) => {
                    (Some(dir.join(format!("storenode-{}", i + 1))), Some(i as u64 + 1), 1)
                }
                _ => (None, None, 0),
            };
            procs.push(Proc {
                log,
                name,
                role,
                id: i + 1,
                ip,
                membership,
                data_dir,
                node_id,
                incarnations,
                args,
                child: None,
                paused: false,
            });
        };
        for i in 0..PLACEMENT {
            add(Role::Placement, i, ip(11, i), layout.placement_args(i), Membership::Member);
        }
        for i in 0..STORENODE_SLOTS {
            if i < STORENODES {
                add(Role::Storenode, i, ip(21, i), layout.storenode_args(i), Membership::Member);
            } else {
                add(Role::Storenode, i, ip(21, i), Vec::new(), Membership::Spare);
            }
        }
        for i in 0..ROUTERS {
            add(Role::Router, i, ip(31, i), layout.router_args(i), Membership::Member);
        }
        Cluster { exe: exe.to_path_buf(), dir: dir.to_path_buf(), layout, procs, storenode_env }
    }

    /// Storenode slots holding a member (running or not), in slot order.
    pub fn storenode_members(&self) -> Vec<usize> {
        (PLACEMENT..PLACEMENT + STORENODE_SLOTS).filter(|&i| self.procs[i].membership == Membership::Member).collect()
    }

    /// Every member process of any role.
    pub fn members(&self) -> Vec<usize> {
        (0..self.procs.len()).filter(|&i| self.procs[i].membership == Membership::Member).collect()
    }

    /// The names of processes `procs` (as they are now: a reused slot's
    /// storenode has a name of its own).
    pub fn names(&self, procs: &[usize]) -> Vec<String> {
        procs.iter().map(|&i| self.procs[i].name.clone()).collect()
    }

    /// The node id of storenode process `i`, once it has one: given at
    /// start, or allocated by placement and kept in its data directory.
    pub fn node_id(&mut self, i: usize) -> Option<u64> {
        let p = &mut self.procs[i];
        if p.node_id.is_none() {
            // A missing or half-written file means not registered yet.
            let id = p.data_dir.as_deref().and_then(|d| Identity::load(d).ok().flatten()).map(|id| id.node_id);
            p.node_id = id.filter(|&n| n != 0);
        }
        p.node_id
    }

    /// The member process of storenode `node_id`, if it is one of ours.
    pub fn proc_of_node(&mut self, node_id: u64) -> Option<usize> {
        self.storenode_members().into_iter().find(|&i| self.node_id(i) == Some(node_id))
    }

    /// Starts a new storenode (no node id) in a free slot: a never-used
    /// address if one is left, else a retired one. None when every slot
    /// holds a member.
    pub fn add_storenode(&mut self) -> anyhow::Result<Option<usize>> {
        let Some(i) = self.free_slot() else { return Ok(None) };
        let slot = i - PLACEMENT;
        let p = &mut self.procs[i];
        p.incarnations += 1;
        // A slot's later storenodes get names, logs and data directories
        // of their own.
        p.name = match p.incarnations {
            1 => format!("storenode-{}", slot + 1),
            n => format!("storenode-{}.{n}", slot + 1),
        };
        p.log = self.dir.join(format!("{}.log", p.name));
        let data_dir = self.dir.join(&p.name);
        let (grpc, http) = &self.layout.storenodes[slot];
        p.args = self.layout.new_storenode_args(grpc, http, &data_dir);
        p.data_dir = Some(data_dir);
        p.node_id = None;
        p.membership = Membership::Member;
        self.start(i)?;
        Ok(Some(i))
    }

    /// Where a new storenode goes: a never-used slot, else a retired one.
    fn free_slot(&self) -> Option<usize> {
        let slots = PLACEMENT..PLACEMENT + STORENODE_SLOTS;
        let with = |m: Membership| slots.clone().find(|&i| self.procs[i].membership == m);
        with(Membership::Spare).or_else(|| with(Membership::Retired))
    }

    /// The process a schedule's target names now: storenode `k` is the
    /// `k`th member in slot order (modulo their number).
    pub fn resolve(&self, t: Target) -> usize {
        match t {
            Target::Placement(i) => i,
            Target::Router(i) => PLACEMENT + STORENODE_SLOTS + i,
            Target::Storenode(k) => {
                let members = self.storenode_members();
                match members.len() {
                    0 => PLACEMENT,
                    n => members[k % n],
                }
            }
        }
    }

    /// The two sides of a planned partition, as the cluster is now:
    /// placement as planned; the storenode members ranked by the plan's
    /// `picks` (a rank per slot), the minority taking the first
    /// (members - 1) / 2 of them, so that each side of 5 storenodes is the
    /// one planned and every member is on a side.
    pub fn partition_sides(&self, f: &Fault) -> (Vec<usize>, Vec<usize>) {
        let placement = |side: &[Target]| -> Vec<usize> {
            side.iter().filter(|t| matches!(t, Target::Placement(_))).map(|&t| self.resolve(t)).collect()
        };
        let (mut minority, mut majority) = (placement(&f.targets), placement(&f.other));
        let members = self.storenode_members();
        let mut ranked: Vec<usize> =
            f.picks.iter().filter_map(|&k| usize::try_from(k).ok()).filter_map(|k| members.get(k).copied()).collect();
        // Members the plan did not rank (none while slots and ranks agree) go last.
        ranked.extend(members.iter().filter(|m| !ranked.contains(m)).copied().collect::<Vec<_>>());
        let m = members.len().saturating_sub(1) / 2;
        minority.extend(&ranked[..m]);
        majority.extend(&ranked[m..]);
        (minority, majority)
    }

    /// Stops storenode `i` for good: placement removed it, so it may not
    /// register again (its slot is free for a new storenode).
    pub fn retire(&mut self, i: usize) {
        self.resume(i);
        self.kill9(i);
        self.procs[i].membership = Membership::Retired;
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
        // Spare and retired slots have nothing to start.
        if p.child.is_some() || p.membership != Membership::Member {
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

    /// Member processes that exited by themselves since the last look (a
    /// kill or pause of ours never shows here: a kill reaps its process,
    /// and a stopped process has not exited), with how they ended. Each is
    /// forgotten, so that [`Cluster::start`] starts it again.
    pub fn reap_exited(&mut self) -> Vec<(usize, String)> {
        let mut out = Vec::new();
        for (i, p) in self.procs.iter_mut().enumerate() {
            let Some(child) = p.child.as_mut() else { continue };
            let status = match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) => status.to_string(),
                Err(e) => format!("unknown ({e})"),
            };
            p.child = None;
            p.paused = false;
            out.push((i, status));
        }
        out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nemesis::{schedule, Kind};

    fn cluster() -> Cluster {
        Cluster::new(Path::new("/nonexistent/ringkv"), Path::new("/tmp/unused"), 8, Vec::new())
    }

    #[test]
    fn storenodes_start_in_the_first_slots_and_spares_wait() {
        let c = cluster();
        assert_eq!(c.storenode_members(), (PLACEMENT..PLACEMENT + STORENODES).collect::<Vec<_>>());
        assert_eq!(c.free_slot(), Some(PLACEMENT + STORENODES), "the first spare address");
        assert_eq!(c.procs[PLACEMENT + STORENODES].ip, "127.0.0.26");
        assert_eq!(c.members().len(), PLACEMENT + STORENODES + ROUTERS);
        assert_eq!(c.resolve(Target::Router(1)), c.procs.len() - 1);
        assert_eq!(c.procs[c.resolve(Target::Router(1))].name, "router-2");
    }

    #[test]
    fn a_retired_address_is_reused_only_when_no_spare_is_left() {
        let mut c = cluster();
        c.procs[PLACEMENT + 1].membership = Membership::Retired;
        assert_eq!(c.free_slot(), Some(PLACEMENT + STORENODES));
        for i in PLACEMENT + STORENODES..PLACEMENT + STORENODE_SLOTS {
            c.procs[i].membership = Membership::Member;
        }
        assert_eq!(c.free_slot(), Some(PLACEMENT + 1));
        c.procs[PLACEMENT + 1].membership = Membership::Member;
        assert_eq!(c.free_slot(), None);
    }

    #[test]
    fn a_process_that_exits_by_itself_is_reaped_once_and_started_again() {
        let dir = std::env::temp_dir().join(format!("ringkv-chaos-reap-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // `true` ignores the arguments and exits at once, as a crash would.
        let mut c = Cluster::new(Path::new("true"), &dir, 8, Vec::new());
        c.start(0).expect("start");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let exited = loop {
            let e = c.reap_exited();
            if !e.is_empty() || std::time::Instant::now() > deadline {
                break e;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        };
        assert_eq!(exited.len(), 1, "{exited:?}");
        assert_eq!(exited[0].0, 0);
        assert!(exited[0].1.contains("exit status: 0"), "{exited:?}");
        assert!(c.procs[0].pid().is_none() && c.reap_exited().is_empty(), "reaped once");
        c.start(0).expect("started again");
        assert!(c.procs[0].pid().is_some());
        // A process we kill is not a crash.
        c.kill9(0);
        assert!(c.reap_exited().is_empty());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn storenode_targets_follow_the_members() {
        let mut c = cluster();
        assert_eq!(c.resolve(Target::Storenode(1)), PLACEMENT + 1);
        // Storenode 2 removed, a new one in the first spare slot.
        c.procs[PLACEMENT + 1].membership = Membership::Retired;
        c.procs[PLACEMENT + STORENODES].membership = Membership::Member;
        assert_eq!(c.resolve(Target::Storenode(1)), PLACEMENT + 2);
        assert_eq!(c.resolve(Target::Storenode(4)), PLACEMENT + STORENODES);
        assert_eq!(c.resolve(Target::Storenode(5)), PLACEMENT, "modulo the members");
    }

    #[test]
    fn partitions_put_every_member_on_one_side_with_a_clear_majority() {
        let halves: Vec<Fault> = schedule(4, 600_000 - 1, &[Kind::Halves, Kind::Kill])
            .into_iter()
            .filter(|f| f.kind == Kind::Halves)
            .collect();
        assert!(!halves.is_empty());
        let mut c = cluster();
        for f in &halves {
            // Five members: the sides planned.
            let (a, b) = c.partition_sides(f);
            let planned = |side: &[Target]| side.iter().map(|&t| c.resolve(t)).collect::<Vec<_>>();
            assert_eq!((a.clone(), b.clone()), (planned(&f.targets), planned(&f.other)), "{f:?}");
        }
        for members in [4, 6, 7] {
            for i in 0..STORENODE_SLOTS {
                c.procs[PLACEMENT + i].membership = if i < members { Membership::Member } else { Membership::Spare };
            }
            for f in &halves {
                let (a, b) = c.partition_sides(f);
                let storenodes = |side: &[usize]| side.iter().filter(|&&i| c.procs[i].role == Role::Storenode).count();
                assert_eq!(storenodes(&a), (members - 1) / 2, "minority of {members}");
                assert_eq!(storenodes(&a) + storenodes(&b), members);
                assert!(a.iter().all(|i| !b.contains(i)));
                assert_eq!((a.len() - storenodes(&a), b.len() - storenodes(&b)), (1, 2), "placement 1 vs 2");
            }
        }
    }
}
