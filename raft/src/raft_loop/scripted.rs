//! Scripted, deterministic tests of the engine: a cluster of several
//! [`RaftLoop`]s in one test, driven by hand through plain-text stories in
//! `testscripts/*.txt` (in the spirit of toydb's golden scripts).
//!
//! # The harness
//!
//! Every node is a real `RaftLoop` over its own RocksDB and snapshot
//! directory in a temporary directory; no thread runs a loop and nothing
//! sleeps. The nodes are joined by [`SimTransport`], an in-memory network: a
//! queue per destination node that `settle` empties into the receiving loop
//! as `LoopRequest::Raft`. Isolated or crashed nodes lose their traffic, as
//! on a real network. A snapshot is "streamed" at once: the file the sender
//! generated is checked as the real receiver checks it (descriptor, group,
//! size and checksum), copied to the receiver's `recv/` directory, the
//! message handed to the receiver's internal queue, and `SnapshotSent`
//! reported to the sender.
//!
//! Time is logical: `tick` advances the loops' clocks, and election timeouts
//! are pinned before every tick (node `n` times out after
//! `election_ticks + 2(n-1)` ticks) so that elections are deterministic: the
//! lowest-numbered node that hears no leader campaigns first.
//!
//! `settle` runs the cluster to quiescence without ticking: drain each
//! loop's inboxes, run a pass on each, deliver every queued message; repeat
//! until nothing moves. Work on worker threads (snapshot generation and
//! install, replica deletion) is waited for with a bounded `recv_timeout` on
//! the loop's internal queue, never a sleep.
//!
//! # The script format
//!
//! A script is a sequence of blocks separated by blank lines. A block holds
//! `#` comments and commands, one per line, then `---` and the output those
//! commands printed (no `---` when they print nothing). The harness runs
//! every command, collects what it prints, and fails with a diff of the
//! whole file if anything differs. `UPDATE_GOLDEN=1 cargo test` rewrites the
//! files with the actual output instead; review the diff before committing.
//!
//! After every command the harness prints the answers that arrived for
//! requests made so far (`n1 g1 put a=1 -> applied prev=-`), and then every
//! change of leadership (`n2 g1 r12 leads term=7`, `... steps down`).
//!
//! Commands (`<n>` is a node id; `g=` defaults to 1):
//!
//! - `cluster nodes=N [groups=G] [voters=1,2,3] [compact=E] [inbox=C]`: N
//!   nodes; G groups, each with a bootstrapped replica `10g+n` on every
//!   voter node (all nodes by default).
//! - `tick [T] [nodes=..]`: T times: tick the (given) running nodes, settle.
//! - `settle`; `campaign <n>`; `transfer <n> to=R`.
//! - `isolate <n>..`, `heal`: cut nodes off from all others, and rejoin them.
//! - `hold-installs <n>`, `release-installs <n>`: keep the node's finished
//!   snapshot installs from its loop (its replicas stay installing), and
//!   hand them over.
//! - `crash <n>`, `restart <n>`: drop a node's loop; (re)open it from its
//!   directory.
//! - `put <n> k=v [fail] [timeout=0] [version=V]`: propose a write (`fail`:
//!   apply fails locally; `timeout=0`: the deadline is now).
//! - `get <n> k [mode=leader|follower|local] [timeout=0]`: a read; once safe,
//!   the key is read from that node's engine.
//! - `change <n> [expect=V/CV] add-voter=R@N add-learner=R@N remove=R`.
//! - `create <n> replica=R [bootstrap] [campaign] [from=<n>]`,
//!   `remove-replica <n>`.
//! - `split <n> at=K new=G ids=R,R,.. [version=V]`: split the group at key K;
//!   group G takes the keys from K on, with replica ids R (one per member,
//!   in replica id order).
//! - Groups are key ranges of their first ancestor's key space: `dump`
//!   prints the group's own range, `put` outside it is refused.
//! - `status [<n>..]` (replicas and tombstones), `dump <n>` (the group's
//!   keys), `metrics <n>`, `progress <n>` (a leader's view of its followers).
//! - `send-raw <n> from=R to=R term=T`: a heartbeat from nowhere;
//!   `send-snapshot <n> to=R names=G|none`: a forged snapshot message.
//!   Both print whether the loop stepped or dropped/refused it.
//! - `flood <n> count=K`: K proposals through the bounded inbox.
//! - `propose-all <n> k=v`: a write to every group of the node, no pass;
//!   `pass <n>`: one pass, printing its fsyncs and readies.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::prelude::{Message as RaftMsg, MessageType};
use raft::StateRole;
use ringkv_proto::engine::RaftMessage;
use tokio::sync::oneshot;

use super::*;
use crate::snapshot;
use crate::testing::{data_key, TestCommand, TestGroup, TestResponse, TestStateMachine};
use crate::{Cf, Member, MemberRole};

type Loop = RaftLoop<TestStateMachine, SimTransport>;

/// How long a worker thread may take to report before the test fails.
const WORKER_DEADLINE: Duration = Duration::from_secs(30);
/// Rounds of `settle` before the cluster is declared unable to quiesce.
const MAX_SETTLE_ROUNDS: usize = 1000;

/// The in-memory network shared by all nodes.
#[derive(Default)]
struct Net {
    /// Messages in flight, by destination node, in send order.
    queues: BTreeMap<u64, VecDeque<RaftMessage>>,
    /// Nodes cut off from every other node.
    isolated: BTreeSet<u64>,
    /// Nodes whose loop is not running.
    down: BTreeSet<u64>,
    /// Each node's snapshot directory (where received files go).
    snap_dirs: HashMap<u64, SnapshotDir>,
    /// Each node's inbox, for snapshot messages and `SnapshotSent` reports.
    handles: HashMap<u64, LoopHandle<TestStateMachine>>,
}

impl Net {
    fn linked(&self, from: u64, to: u64) -> bool {
        let cut = from != to && (self.isolated.contains(&from) || self.isolated.contains(&to));
        !cut && !self.down.contains(&to) && !self.down.contains(&from)
    }
}

/// One node's end of the in-memory network.
struct SimTransport {
    node: u64,
    net: Arc<Mutex<Net>>,
}

impl SimTransport {
    /// Does what the real receiver does with a snapshot stream: checks the
    /// descriptor, stores the file under its received name, verifies it,
    /// and hands the message to the receiving loop. False if refused or lost.
    fn stream_snapshot(&self, node_id: u64, msg: &RaftMessage, path: &Path) -> bool {
        let net = self.net.lock();
        if !net.linked(self.node, node_id) {
            return false;
        }
        let (Some(dir), Some(handle)) = (net.snap_dirs.get(&node_id), net.handles.get(&node_id)) else {
            return false;
        };
        let Ok(m) = RaftMsg::parse_from_bytes(&msg.message) else { return false };
        let md = m.get_snapshot().get_metadata();
        let Ok(data) = snapshot::snapshot_data(m.get_snapshot()) else { return false };
        if snapshot::snapshot_group::<TestGroup>(&data, msg.group_id).is_err() {
            return false;
        }
        let dest = dir.received(msg.group_id, md.term, md.index);
        if std::fs::copy(path, &dest).is_err() || snapshot::verify_file(&dest, &data).is_err() {
            let _ = std::fs::remove_file(&dest);
            return false;
        }
        let req = LoopRequest::Raft { group_id: msg.group_id, from_node: self.node, msg: Box::new(m) };
        handle.send_internal(req).is_ok()
    }
}

impl Transport for SimTransport {
    fn send(&self, node_id: u64, msgs: Vec<RaftMessage>) -> bool {
        // Like a lossy network, the send succeeds; links are checked on delivery.
        self.net.lock().queues.entry(node_id).or_default().extend(msgs);
        true
    }

    fn send_snapshot(&self, node_id: u64, to_replica: u64, msg: RaftMessage, path: PathBuf) {
        let ok = self.stream_snapshot(node_id, &msg, &path);
        let report = LoopRequest::SnapshotSent { group_id: msg.group_id, to: to_replica, ok };
        if let Some(h) = self.net.lock().handles.get(&self.node) {
            let _ = h.send_internal(report);
        }
    }

    fn address(&self, node_id: u64) -> Option<String> {
        Some(format!("n{node_id}"))
    }
}

/// An answer someone is waiting for.
enum Rx {
    Cmd(oneshot::Receiver<Result<Timed<TestResponse>>>),
    /// A read: once answered, `key` is read from the node's engine.
    Read(oneshot::Receiver<Result<Timed<TestGroup>>>, String),
    Conf(oneshot::Receiver<Result<TestGroup>>),
    Unit(oneshot::Receiver<Result<()>>),
}

struct Pending {
    /// `n1 g1 put a=1`.
    desc: String,
    node: u64,
    group: u64,
    rx: Rx,
}

struct Node {
    lp: Option<Loop>,
    metrics: Arc<RaftMetrics>,
    /// `hold-installs`: finished snapshot installs are kept here, unseen by
    /// the loop, so its replicas stay in `ApplyingSnapshot`.
    held: Option<Vec<LoopRequest<TestStateMachine>>>,
}

/// The cluster a script drives.
struct Cluster {
    tmp: tempfile::TempDir,
    raft: RaftConfig,
    nodes: BTreeMap<u64, Node>,
    net: Arc<Mutex<Net>>,
    /// Nodes hosting the initial voters.
    voters: Vec<u64>,
    pending: Vec<Pending>,
    /// Who led as of the last command, to print changes.
    leading: BTreeMap<(u64, u64), bool>,
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

/// Opens a node's RocksDB, polling until a worker thread of the node's
/// previous incarnation has let go of it (bounded).
fn open_engine(path: &Path) -> Engine {
    let deadline = Instant::now() + WORKER_DEADLINE;
    loop {
        match Engine::open(path) {
            Ok(e) => return e,
            Err(e) if Instant::now() >= deadline => panic!("cannot open {}: {e}", path.display()),
            Err(_) => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

fn fmt_err(e: &Error) -> String {
    match e {
        Error::NotLeader { leader: Some(m), .. } => format!("NotLeader leader=r{}@n{}", m.replica_id, m.node_id),
        Error::NotLeader { leader: None, .. } => "NotLeader leader=none".into(),
        Error::StaleEpoch { current, .. } => match <TestGroup as Group>::decode(current) {
            Ok(g) => format!("StaleEpoch current={}", fmt_group(&g)),
            Err(e) => format!("StaleEpoch undecodable: {e}"),
        },
        Error::GroupNotFound(g) => format!("GroupNotFound g{g}"),
        Error::ReplicaFailed { reason, .. } => format!("ReplicaFailed: {reason}"),
        Error::InvalidArgument { field, reason } => format!("InvalidArgument {field}: {reason}"),
        Error::ConfChangeRefused(r) => format!("ConfChangeRefused: {r}"),
        Error::Ambiguous(r) => format!("Ambiguous: {r}"),
        Error::Retryable(r) => format!("Retryable: {r}"),
        Error::Busy(r) => format!("Busy: {r}"),
        other => format!("{other}"),
    }
}

fn fmt_group(g: &TestGroup) -> String {
    let ids = |role: MemberRole| {
        let ids: Vec<String> =
            g.members.iter().filter(|m| m.role == role as i32).map(|m| m.replica_id.to_string()).collect();
        if ids.is_empty() {
            "-".to_string()
        } else {
            ids.join(",")
        }
    };
    format!(
        "voters={} learners={} version={} conf_ver={}",
        ids(MemberRole::Voter),
        ids(MemberRole::Learner),
        g.version,
        g.conf_ver
    ) + &if g.lo.is_empty() && g.hi.is_empty() {
        String::new()
    } else {
        format!(" keys={}..{}", String::from_utf8_lossy(&g.lo), String::from_utf8_lossy(&g.hi))
    }
}

fn fmt_value(v: Option<Vec<u8>>) -> String {
    v.map(|v| String::from_utf8_lossy(&v).into_owned()).unwrap_or_else(|| "-".into())
}

/// A command line: the name, its positional words, its `key=value` pairs.
struct Args {
    name: String,
    pos: Vec<String>,
    kv: Vec<(String, String)>,
}

impl Args {
    fn parse(line: &str) -> Args {
        let mut words = line.split_whitespace();
        let name = words.next().unwrap_or_default().to_string();
        let (mut pos, mut kv) = (Vec::new(), Vec::new());
        for w in words {
            match w.split_once('=') {
                Some((k, v)) => kv.push((k.to_string(), v.to_string())),
                None => pos.push(w.to_string()),
            }
        }
        Args { name, pos, kv }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.kv.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn num(&self, key: &str, default: u64) -> u64 {
        self.get(key).map_or(default, |v| v.parse().unwrap_or_else(|_| panic!("{key}={v}: not a number")))
    }

    fn list(&self, key: &str) -> Option<Vec<u64>> {
        self.get(key).map(|v| v.split(',').map(|x| x.parse().expect("a list of numbers")).collect())
    }

    fn flag(&self, word: &str) -> bool {
        self.pos.iter().any(|p| p == word)
    }

    /// The first positional word as a node id.
    fn node(&self) -> u64 {
        self.pos.first().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("{}: which node?", self.name))
    }

    fn nodes(&self) -> Vec<u64> {
        self.pos.iter().map(|p| p.parse().expect("node ids")).collect()
    }

    fn group(&self) -> u64 {
        self.num("g", 1)
    }

    fn deadline(&self) -> Instant {
        match self.get("timeout") {
            Some("0") => Instant::now(),
            Some(v) => panic!("timeout={v}: only timeout=0 (a deadline already due) is supported"),
            None => later(),
        }
    }

    /// `key=value` pairs other than the given options.
    fn data(&self, options: &[&str]) -> Vec<(String, String)> {
        self.kv.iter().filter(|(k, _)| !options.contains(&k.as_str())).cloned().collect()
    }
}

/// `R@N` as a member.
fn parse_member(s: &str, role: MemberRole) -> Member {
    let (r, n) = s.split_once('@').unwrap_or((s, "0"));
    Member { replica_id: r.parse().expect("a replica id"), node_id: n.parse().expect("a node id"), role: role as i32 }
}

impl Cluster {
    fn new(a: &Args) -> Cluster {
        let n = a.num("nodes", 3);
        let groups = a.num("groups", 1);
        let mut raft = RaftConfig::default();
        raft.compact_log_entries = a.num("compact", raft.compact_log_entries);
        raft.inbox_capacity = a.num("inbox", raft.inbox_capacity as u64) as usize;
        let mut c = Cluster {
            tmp: tempfile::tempdir().expect("a temporary directory"),
            raft,
            nodes: BTreeMap::new(),
            net: Arc::new(Mutex::new(Net::default())),
            voters: a.list("voters").unwrap_or_else(|| (1..=n).collect()),
            pending: Vec::new(),
            leading: BTreeMap::new(),
        };
        for id in 1..=n {
            c.start(id);
        }
        for g in 1..=groups {
            for n in c.voters.clone() {
                let group = c.initial_group(g);
                let (tx, mut rx) = oneshot::channel();
                c.lp(n).handle(LoopRequest::CreateReplica {
                    group,
                    replica_id: 10 * g + n,
                    bootstrap: true,
                    campaign: false,
                    cb: tx,
                });
                rx.try_recv().expect("answered at once").expect("the initial replicas are created");
            }
        }
        c
    }

    /// The group as bootstrapped: replica `10g+n` on every voter node.
    fn initial_group(&self, g: u64) -> TestGroup {
        let members = self
            .voters
            .iter()
            .map(|n| Member { replica_id: 10 * g + n, node_id: *n, role: MemberRole::Voter as i32 })
            .collect();
        TestGroup { id: g, members, conf_ver: 1, version: 1, ..Default::default() }
    }

    /// Opens node `id`'s loop from its directory.
    fn start(&mut self, id: u64) {
        let dir = self.tmp.path().join(format!("n{id}"));
        let engine = open_engine(&dir.join("db"));
        let metrics = Arc::new(RaftMetrics::new(id));
        let cfg = LoopConfig { node_id: id, snapshot_dir: dir.join("snap"), raft: self.raft.clone() };
        let transport = SimTransport { node: id, net: self.net.clone() };
        let (lp, handle) =
            RaftLoop::new(cfg, engine, transport, metrics.clone(), TestStateMachine::default).expect("the loop starts");
        let mut net = self.net.lock();
        net.handles.insert(id, handle);
        net.snap_dirs.insert(id, lp.snap_dir.clone());
        net.down.remove(&id);
        net.queues.remove(&id);
        drop(net);
        self.nodes.insert(id, Node { lp: Some(lp), metrics, held: None });
    }

    fn crash(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).expect("a node of the cluster");
        node.lp = None;
        let mut net = self.net.lock();
        net.down.insert(id);
        net.queues.remove(&id);
        net.handles.remove(&id);
        drop(net);
        self.leading.retain(|(n, _), _| *n != id);
    }

    fn lp(&mut self, id: u64) -> &mut Loop {
        self.nodes.get_mut(&id).and_then(|n| n.lp.as_mut()).unwrap_or_else(|| panic!("node {id} is not running"))
    }

    fn running(&self) -> Vec<u64> {
        self.nodes.iter().filter(|(_, n)| n.lp.is_some()).map(|(id, _)| *id).collect()
    }

    /// Whether node `id` waits for one of its worker threads (installs
    /// count only when they are not held).
    fn waits_for_worker(&self, id: u64) -> bool {
        let node = &self.nodes[&id];
        let Some(lp) = node.lp.as_ref() else { return false };
        lp.generating > 0
            || !lp.destroying.is_empty()
            || (node.held.is_none() && lp.replicas.values().any(|r| r.lifecycle != replica::Lifecycle::Normal))
    }

    /// Hands a worker's report to node `id`'s loop, or keeps it if it is a
    /// finished install and the node holds them.
    fn report(&mut self, id: u64, m: LoopRequest<TestStateMachine>) {
        let node = self.nodes.get_mut(&id).expect("a node of the cluster");
        match (&mut node.held, m) {
            (Some(held), m @ LoopRequest::SnapshotInstalled { .. }) => held.push(m),
            (_, m) => {
                node.lp.as_mut().expect("a running node").handle(m);
            }
        }
    }

    /// Runs the cluster until nothing moves: inboxes drained, passes run,
    /// messages delivered, worker threads reported.
    fn settle(&mut self) {
        for _ in 0..MAX_SETTLE_ROUNDS {
            let mut busy = false;
            for id in self.running() {
                while let Ok(m) = self.lp(id).internal.try_recv() {
                    self.report(id, m);
                    busy = true;
                }
                let lp = self.lp(id);
                while let Ok(m) = lp.requests.try_recv() {
                    lp.handle(m);
                    busy = true;
                }
                lp.run_pass();
                busy |= !lp.dirty.is_empty();
            }
            busy |= self.deliver();
            if busy {
                continue;
            }
            let waiting: Vec<u64> = self.running().into_iter().filter(|id| self.waits_for_worker(*id)).collect();
            if waiting.is_empty() {
                return;
            }
            for id in waiting {
                match self.lp(id).internal.recv_timeout(WORKER_DEADLINE) {
                    Ok(m) => self.report(id, m),
                    Err(e) => panic!("node {id}: a worker thread did not report within {WORKER_DEADLINE:?}: {e}"),
                }
            }
        }
        panic!("the cluster did not settle in {MAX_SETTLE_ROUNDS} rounds");
    }

    /// Delivers every queued message over a live link; true if any was.
    fn deliver(&mut self) -> bool {
        let queues = std::mem::take(&mut self.net.lock().queues);
        let mut delivered = false;
        for (to, msgs) in queues {
            for m in msgs {
                if !self.net.lock().linked(m.from_node, to) {
                    continue;
                }
                let msg = RaftMsg::parse_from_bytes(&m.message).expect("the loop sends decodable messages");
                self.lp(to).handle(LoopRequest::Raft {
                    group_id: m.group_id,
                    from_node: m.from_node,
                    msg: Box::new(msg),
                });
                delivered = true;
            }
        }
        delivered
    }

    fn tick(&mut self, times: u64, only: Option<Vec<u64>>) {
        let election = self.raft.election_ticks;
        for _ in 0..times {
            for id in self.running() {
                if only.as_ref().is_some_and(|o| !o.contains(&id)) {
                    continue;
                }
                let lp = self.lp(id);
                let timeout = (election + 2 * (id as usize - 1)).min(2 * election - 1);
                for r in lp.replicas.values_mut() {
                    r.raw.raft.set_randomized_election_timeout(timeout);
                }
                lp.tick();
            }
            self.settle();
        }
    }

    /// Prints the answers that arrived, in request order.
    fn poll(&mut self, out: &mut Vec<String>) {
        let pending = std::mem::take(&mut self.pending);
        for mut p in pending {
            let answer = match &mut p.rx {
                Rx::Cmd(rx) => rx.try_recv().map(|r| match r.map(|t| t.value) {
                    Ok(TestResponse::Applied(prev)) => format!("applied prev={}", fmt_value(prev)),
                    Ok(other) => format!("{other:?}"),
                    Err(e) => fmt_err(&e),
                }),
                Rx::Conf(rx) => rx.try_recv().map(|r| match r {
                    Ok(g) => format!("ok {}", fmt_group(&g)),
                    Err(e) => fmt_err(&e),
                }),
                Rx::Unit(rx) => rx.try_recv().map(|r| match r {
                    Ok(()) => "ok".to_string(),
                    Err(e) => fmt_err(&e),
                }),
                Rx::Read(rx, key) => {
                    let key = key.clone();
                    match rx.try_recv() {
                        Ok(Ok(_)) => {
                            let lp = self.lp(p.node);
                            let k = lp
                                .replicas
                                .get(&p.group)
                                .map_or_else(|| data_key(p.group, key.as_bytes()), |r| r.group.key(key.as_bytes()));
                            let v = lp.engine.get(Cf::Data, &k).expect("a read");
                            Ok(format!("{key}={}", fmt_value(v)))
                        }
                        Ok(Err(e)) => Ok(fmt_err(&e)),
                        Err(e) => Err(e),
                    }
                }
            };
            match answer {
                Ok(a) => out.push(format!("{} -> {a}", p.desc)),
                Err(oneshot::error::TryRecvError::Closed) => out.push(format!("{} -> dropped", p.desc)),
                Err(oneshot::error::TryRecvError::Empty) => self.pending.push(p),
            }
        }
    }

    /// Prints every change of leadership since the last command.
    fn leadership(&mut self, out: &mut Vec<String>) {
        let mut now = BTreeMap::new();
        for id in self.running() {
            for (g, r) in &self.lp(id).replicas {
                now.insert((id, *g), (r.leads(), r.replica_id, r.raw.raft.term));
            }
        }
        for ((n, g), (leads, rid, term)) in &now {
            let before = self.leading.get(&(*n, *g)).copied().unwrap_or(false);
            if *leads && !before {
                out.push(format!("n{n} g{g} r{rid} leads term={term}"));
            } else if !*leads && before {
                out.push(format!("n{n} g{g} r{rid} steps down term={term}"));
            }
        }
        for (k, was) in &self.leading {
            if *was && !now.contains_key(k) {
                out.push(format!("n{} g{} gone", k.0, k.1));
            }
        }
        self.leading = now.into_iter().map(|(k, (leads, _, _))| (k, leads)).collect();
    }

    fn status(&mut self, nodes: Vec<u64>, out: &mut Vec<String>) {
        let nodes = if nodes.is_empty() { self.nodes.keys().copied().collect() } else { nodes };
        for id in nodes {
            let Some(lp) = self.nodes.get(&id).and_then(|n| n.lp.as_ref()) else {
                out.push(format!("n{id} down"));
                continue;
            };
            for s in lp.status(&[]) {
                let head = format!("n{id} g{} r{}", s.group_id, s.replica_id);
                if let ReplicaCondition::Failed(reason) = &s.condition {
                    out.push(format!("{head} failed: {reason}"));
                    continue;
                }
                let r = &lp.replicas[&s.group_id];
                let role = match r.raw.raft.state {
                    StateRole::Leader => "leader",
                    StateRole::Follower => "follower",
                    StateRole::Candidate => "candidate",
                    StateRole::PreCandidate => "precandidate",
                };
                let cond = if s.condition == ReplicaCondition::ApplyingSnapshot { " applying-snapshot" } else { "" };
                out.push(format!(
                    "{head} {role} term={} vote={} leader={} commit={} applied={} log={}..{} {}{cond}",
                    s.term,
                    r.raw.raft.vote,
                    s.leader_replica_id,
                    s.commit_index,
                    s.applied_index,
                    s.first_log_index,
                    s.last_log_index,
                    fmt_group(&s.group)
                ));
            }
            let mut tombs: Vec<_> = lp.tombstones.iter().collect();
            tombs.sort_by_key(|(g, _)| **g);
            for (g, t) in tombs {
                out.push(format!("n{id} g{g} tombstone r{} conf_ver={}", t.replica_id, t.conf_ver));
            }
        }
    }

    fn request(&mut self, node: u64, group: u64, desc: String, rx: Rx) {
        self.pending.push(Pending { desc: format!("n{node} g{group} {desc}"), node, group, rx });
    }

    /// Runs one command; what it prints goes to `out`.
    fn exec(cluster: &mut Option<Cluster>, line: &str, out: &mut Vec<String>) {
        let a = Args::parse(line);
        if a.name == "cluster" {
            *cluster = Some(Cluster::new(&a));
            return;
        }
        let c = cluster.as_mut().expect("the script starts with `cluster`");
        c.run(&a, out);
        c.poll(out);
        c.leadership(out);
    }

    fn run(&mut self, a: &Args, out: &mut Vec<String>) {
        let g = a.group();
        match a.name.as_str() {
            "tick" => {
                let times = a.pos.first().map_or(1, |t| t.parse().expect("a number of ticks"));
                self.tick(times, a.list("nodes"));
            }
            "settle" => self.settle(),
            "campaign" => {
                let lp = self.lp(a.node());
                let r = lp.replicas.get_mut(&g).expect("a replica of the group");
                r.raw.campaign().expect("campaign");
                lp.dirty.insert(g);
            }
            "hold-installs" => self.nodes.get_mut(&a.node()).expect("a node of the cluster").held = Some(Vec::new()),
            "release-installs" => {
                let id = a.node();
                let held = self.nodes.get_mut(&id).and_then(|n| n.held.take()).unwrap_or_default();
                for m in held {
                    self.lp(id).handle(m);
                }
                self.settle();
            }
            "isolate" => self.net.lock().isolated.extend(a.nodes()),
            "heal" => self.net.lock().isolated.clear(),
            "crash" => self.crash(a.node()),
            "restart" => {
                let id = a.node();
                if self.nodes.get(&id).is_some_and(|n| n.lp.is_some()) {
                    self.crash(id);
                }
                self.start(id);
            }
            "put" => {
                let n = a.node();
                let data = a.data(&["g", "timeout", "version"]);
                let [(k, v)] = data.as_slice() else { panic!("put: one key=value") };
                let cmd = TestCommand {
                    key: k.as_bytes().to_vec(),
                    value: v.as_bytes().to_vec(),
                    fail: a.flag("fail"),
                    version: a.num("version", 0),
                    ..Default::default()
                };
                let (tx, rx) = oneshot::channel();
                let deadline = a.deadline();
                self.lp(n).handle(LoopRequest::Propose { group_id: g, cmd, deadline, cb: tx });
                let fail = if a.flag("fail") { " (fails at apply)" } else { "" };
                self.request(n, g, format!("put {k}={v}{fail}"), Rx::Cmd(rx));
            }
            "split" => {
                let n = a.node();
                let at = a.get("at").expect("split: at=KEY").to_string();
                let new_group = a.num("new", 0);
                let cmd = TestCommand {
                    split_at: at.clone().into_bytes(),
                    new_group,
                    new_replica_ids: a.list("ids").expect("split: ids=R,R,.."),
                    version: a.num("version", 0),
                    ..Default::default()
                };
                let (tx, rx) = oneshot::channel();
                let deadline = a.deadline();
                self.lp(n).handle(LoopRequest::Propose { group_id: g, cmd, deadline, cb: tx });
                self.request(n, g, format!("split at={at} new=g{new_group}"), Rx::Cmd(rx));
            }
            "get" => {
                let n = a.node();
                let key = a.pos.get(1).expect("get: a key").clone();
                let mode = match a.get("mode").unwrap_or("leader") {
                    "leader" => ReadMode::Leader,
                    "follower" => ReadMode::Follower,
                    "local" => ReadMode::Local,
                    m => panic!("mode={m}"),
                };
                let (tx, rx) = oneshot::channel();
                let deadline = a.deadline();
                self.lp(n).handle(LoopRequest::Read { group_id: g, mode, deadline, cb: tx });
                let desc = format!("get {key} ({})", a.get("mode").unwrap_or("leader"));
                self.request(n, g, desc, Rx::Read(rx, key));
            }
            "change" => {
                let n = a.node();
                let mut changes = Vec::new();
                for (k, v) in &a.kv {
                    let (kind, role) = match k.as_str() {
                        "add-voter" => (MemberChangeKind::AddVoter, MemberRole::Voter),
                        "add-learner" => (MemberChangeKind::AddLearner, MemberRole::Learner),
                        "remove" => (MemberChangeKind::Remove, MemberRole::Voter),
                        _ => continue,
                    };
                    changes.push(MemberChange { kind, member: parse_member(v, role) });
                }
                let expect = a.get("expect").map(|e| {
                    let (v, cv) = e.split_once('/').expect("expect=VERSION/CONF_VER");
                    (v.parse().expect("a version"), cv.parse().expect("a conf version"))
                });
                let (tx, rx) = oneshot::channel();
                let deadline = a.deadline();
                self.lp(n).handle(LoopRequest::ChangeMembers { group_id: g, expect, changes, deadline, cb: tx });
                let what: Vec<String> =
                    a.kv.iter().filter(|(k, _)| k != "g").map(|(k, v)| format!("{k}={v}")).collect();
                self.request(n, g, format!("change {}", what.join(" ")), Rx::Conf(rx));
            }
            "transfer" => {
                let n = a.node();
                let to = a.num("to", 0);
                let (tx, rx) = oneshot::channel();
                self.lp(n).handle(LoopRequest::TransferLeader { group_id: g, to_replica_id: to, cb: tx });
                self.request(n, g, format!("transfer to r{to}"), Rx::Unit(rx));
            }
            "create" => {
                let n = a.node();
                let replica_id = a.num("replica", 10 * g + n);
                // `from=N`: the group as node N's replica has it (placement
                // hands a node the descriptor it knows); else the initial one.
                let group = match a.get("from") {
                    Some(f) => self.lp(f.parse().expect("a node id")).replicas[&g].group.clone(),
                    None => self.initial_group(g),
                };
                let (bootstrap, campaign) = (a.flag("bootstrap"), a.flag("campaign"));
                let (tx, rx) = oneshot::channel();
                self.lp(n).handle(LoopRequest::CreateReplica { group, replica_id, bootstrap, campaign, cb: tx });
                self.request(n, g, format!("create r{replica_id}"), Rx::Unit(rx));
            }
            "remove-replica" => {
                let n = a.node();
                let (tx, rx) = oneshot::channel();
                self.lp(n).handle(LoopRequest::RemoveReplica { group_id: g, cb: tx });
                self.request(n, g, "remove-replica".into(), Rx::Unit(rx));
            }
            "status" => self.status(a.nodes(), out),
            "progress" => {
                let n = a.node();
                let r = &self.lp(n).replicas[&g];
                let mut prs: Vec<String> = r
                    .raw
                    .raft
                    .prs()
                    .iter()
                    .map(|(id, p)| format!("r{id}:{:?} matched={} next={}", p.state, p.matched, p.next_idx))
                    .collect();
                prs.sort();
                out.push(format!("n{n} g{g} progress {}", prs.join(" ")));
            }
            "dump" => {
                let n = a.node();
                let lp = self.lp(n);
                let range = match lp.replicas.get(&g) {
                    Some(r) => r.group.state_ranges().remove(0),
                    None => TestGroup { id: g, ..Default::default() }.state_ranges().remove(0),
                };
                let mut it = lp.engine.iter_range(Cf::Data, &range.lo, &range.hi);
                let mut kvs = Vec::new();
                while let (Some(k), Some(v)) = (it.key(), it.value()) {
                    kvs.push(format!("{}={}", String::from_utf8_lossy(&k[8..]), String::from_utf8_lossy(v)));
                    it.next();
                }
                out.push(format!("n{n} g{g}: {}", if kvs.is_empty() { "-".into() } else { kvs.join(" ") }));
            }
            "metrics" => {
                let n = a.node();
                let m = &self.nodes[&n].metrics;
                let snaps: Vec<String> = ["generated", "sent", "send_failed", "applied", "refused", "install_failed"]
                    .iter()
                    .map(|l| (l, m.snapshots.with_label_values(&[l]).get()))
                    .filter(|(_, v)| *v > 0)
                    .map(|(l, v)| format!("{l}={v}"))
                    .collect();
                out.push(format!(
                    "n{n} replicas_failed={} snapshots: {}",
                    m.replicas_failed.get(),
                    if snaps.is_empty() { "-".into() } else { snaps.join(" ") }
                ));
            }
            "send-raw" => {
                let n = a.node();
                let mut m = RaftMsg::default();
                m.set_msg_type(MessageType::MsgHeartbeat);
                (m.from, m.to, m.term) = (a.num("from", 0), a.num("to", 0), a.num("term", 0));
                let desc = format!("n{n} g{g} heartbeat r{}->r{} term={}", m.from, m.to, m.term);
                let dropped = self.nodes[&n].metrics.raft_messages_dropped.get();
                self.lp(n).handle(LoopRequest::Raft { group_id: g, from_node: 0, msg: Box::new(m) });
                let fate =
                    if self.nodes[&n].metrics.raft_messages_dropped.get() > dropped { "dropped" } else { "stepped" };
                out.push(format!("{desc}: {fate}"));
            }
            "send-snapshot" => {
                let n = a.node();
                let names = a.get("names").expect("send-snapshot: names=G|none");
                let group = match names {
                    "none" => Vec::new(),
                    id => Group::encode(&TestGroup { id: id.parse().expect("a group id"), ..self.initial_group(g) }),
                };
                let data = ringkv_proto::engine::SnapshotData { group, file_size: 1, file_checksum: 1 };
                let mut m = RaftMsg::default();
                m.set_msg_type(MessageType::MsgSnapshot);
                (m.from, m.to, m.term) = (a.num("from", 0), a.num("to", 0), a.num("term", 100));
                let from = m.from;
                let snap = m.mut_snapshot();
                snap.mut_metadata().index = 1000;
                snap.mut_metadata().term = 100;
                snap.mut_metadata().mut_conf_state().voters = vec![from];
                snap.data = prost::Message::encode_to_vec(&data).into();
                let metrics = self.nodes[&n].metrics.clone();
                let refused = || metrics.snapshots.with_label_values(&["refused"]).get();
                let before = refused();
                self.lp(n).handle(LoopRequest::Raft { group_id: g, from_node: 0, msg: Box::new(m) });
                let fate = if refused() > before { "refused" } else { "stepped" };
                out.push(format!("n{n} g{g} snapshot naming {names}: {fate}"));
            }
            "flood" => {
                let n = a.node();
                let handle = self.net.lock().handles.get(&n).expect("a running node").clone();
                for i in 1..=a.num("count", 1) {
                    let (tx, rx) = oneshot::channel();
                    let key = format!("f{i}");
                    let cmd = TestCommand { key: key.clone().into_bytes(), value: b"x".to_vec(), ..Default::default() };
                    let req = LoopRequest::Propose { group_id: g, cmd, deadline: later(), cb: tx };
                    match handle.try_send(req) {
                        Ok(()) => {
                            out.push(format!("n{n} g{g} put {key}=x queued"));
                            self.request(n, g, format!("put {key}=x"), Rx::Cmd(rx));
                        }
                        Err(e) => out.push(format!("n{n} g{g} put {key}=x refused: {}", fmt_err(&e))),
                    }
                }
            }
            "propose-all" => {
                let n = a.node();
                let data = a.data(&[]);
                let [(k, v)] = data.as_slice() else { panic!("propose-all: one key=value") };
                let mut groups: Vec<u64> = self.lp(n).replicas.keys().copied().collect();
                groups.sort();
                for g in groups {
                    let cmd =
                        TestCommand { key: k.as_bytes().to_vec(), value: v.as_bytes().to_vec(), ..Default::default() };
                    let (tx, rx) = oneshot::channel();
                    self.lp(n).handle(LoopRequest::Propose { group_id: g, cmd, deadline: later(), cb: tx });
                    self.request(n, g, format!("put {k}={v}"), Rx::Cmd(rx));
                }
            }
            "pass" => {
                let n = a.node();
                let m = self.nodes[&n].metrics.clone();
                let (fsyncs, readies) = (m.raft_fsyncs.get(), m.raft_readies_per_fsync.get_sample_sum());
                self.lp(n).run_pass();
                out.push(format!(
                    "n{n} pass: fsyncs={} readies={}",
                    m.raft_fsyncs.get() - fsyncs,
                    m.raft_readies_per_fsync.get_sample_sum() - readies
                ));
            }
            other => panic!("unknown command {other:?}"),
        }
    }
}

/// A block of a script: comments and commands, and their output.
#[derive(Default)]
struct Block {
    lines: Vec<String>,
    output: Vec<String>,
}

fn parse_script(text: &str) -> Vec<Block> {
    let mut blocks = Vec::new();
    let mut cur = Block::default();
    let mut in_output = false;
    for line in text.lines() {
        if in_output {
            if line.trim().is_empty() {
                blocks.push(std::mem::take(&mut cur));
                in_output = false;
            } else {
                cur.output.push(line.to_string());
            }
        } else if line.trim().is_empty() {
            if !cur.lines.is_empty() {
                blocks.push(std::mem::take(&mut cur));
            }
        } else if line == "---" {
            in_output = true;
        } else {
            cur.lines.push(line.to_string());
        }
    }
    if !cur.lines.is_empty() || in_output {
        blocks.push(cur);
    }
    blocks
}

fn render(blocks: &[Block]) -> String {
    let mut s = String::new();
    for (i, b) in blocks.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        for l in &b.lines {
            s.push_str(l);
            s.push('\n');
        }
        if !b.output.is_empty() {
            s.push_str("---\n");
            for l in &b.output {
                s.push_str(l);
                s.push('\n');
            }
        }
    }
    s
}

/// A line diff (longest common subsequence): `-` expected, `+` actual.
fn diff(expected: &str, actual: &str) -> String {
    let (a, b): (Vec<&str>, Vec<&str>) = (expected.lines().collect(), actual.lines().collect());
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, String::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out += &format!("  {}\n", a[i]);
            (i, j) = (i + 1, j + 1);
        } else if j < b.len() && (i == a.len() || lcs[i][j + 1] >= lcs[i + 1][j]) {
            out += &format!("+ {}\n", b[j]);
            j += 1;
        } else {
            out += &format!("- {}\n", a[i]);
            i += 1;
        }
    }
    out
}

fn scripts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/raft_loop/testscripts")
}

/// Runs `testscripts/<name>.txt` and compares (or, with `UPDATE_GOLDEN=1`,
/// rewrites) its expected output.
fn run_script(name: &str) {
    let path = scripts_dir().join(format!("{name}.txt"));
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut blocks = parse_script(&text);
    let expected = render(&blocks);
    let mut cluster = None;
    for b in &mut blocks {
        let mut out = Vec::new();
        for line in b.lines.iter().filter(|l| !l.trim_start().starts_with('#')) {
            Cluster::exec(&mut cluster, line, &mut out);
        }
        b.output = out;
    }
    let actual = render(&blocks);
    if actual == expected {
        return;
    }
    if std::env::var("UPDATE_GOLDEN").is_ok_and(|v| v == "1") {
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        return;
    }
    panic!("{name}: output differs (- expected, + actual; UPDATE_GOLDEN=1 to accept):\n{}", diff(&expected, &actual));
}

macro_rules! scripts {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_script(stringify!($name));
            }
        )*

        /// Every script in `testscripts/` has a test above, and the other way round.
        #[test]
        fn every_script_has_a_test() {
            let listed: BTreeSet<String> = [$(stringify!($name)),*].iter().map(|s| s.to_string()).collect();
            let on_disk: BTreeSet<String> = std::fs::read_dir(scripts_dir())
                .expect("the scripts directory")
                .flatten()
                .filter_map(|e| e.file_name().to_str()?.strip_suffix(".txt").map(str::to_string))
                .collect();
            assert_eq!(listed, on_disk);
        }
    };
}

scripts! {
    apply_failure_fences_the_replica,
    commit_needs_a_quorum,
    commit_with_one_follower_cut_off,
    conf_add_learner,
    conf_change_on_follower_is_refused,
    conf_joint_change_of_two_voters,
    conf_promote_learner,
    conf_refused_demote_last_voter,
    conf_refused_node_already_hosts_a_member,
    conf_refused_remove_leader,
    conf_refused_stale_epoch,
    conf_remove_voter,
    conf_second_change_while_one_is_pending,
    crash_with_a_pending_proposal,
    deadline_passed_answers_ambiguous,
    election_after_leader_isolation,
    election_single_node,
    election_three_nodes,
    empty_command_is_refused,
    full_inbox_answers_busy,
    leader_read_on_follower_is_refused,
    leader_transfer,
    learner_never_campaigns,
    local_read_may_be_stale,
    many_groups_share_one_fsync,
    prevote_keeps_partitioned_node_from_disrupting,
    proposal_to_follower_names_the_leader,
    read_index_on_follower,
    read_index_on_leader,
    read_on_deposed_leader_is_refused,
    remove_replica_by_hand_leaves_a_tombstone,
    replication_to_all_replicas,
    restart_follower_catches_up_by_snapshot,
    restart_keeps_committed_data_and_term_and_vote,
    restart_of_the_leader,
    snapshot_catch_up_after_log_compaction,
    installing_replica_does_not_campaign,
    split_creates_the_new_group_on_every_node,
    split_races,
    snapshot_for_a_member_added_after_it_was_generated,
    snapshot_naming_another_group_is_refused,
    stale_version_proposal_is_answered_stale,
    step_down_answers_pending_proposals_ambiguous,
    tombstone_refuses_late_create_and_old_traffic,
}
