//! Membership faults: what an operator does to a live cluster, asked of
//! placement (`MoveReplica`, `SetNodeState`) and of storenodes
//! (`TransferLeader`) while the clients run and other faults strike; and the
//! bookkeeping that keeps the cluster at its size ([`Admin::reconcile`]): a
//! storenode placement REMOVED is stopped for good, and a new one (no
//! `--node-id`, a free address) takes its place.
//!
//! A refusal (another operator on the shard, too few nodes UP, a node down,
//! placement unreachable behind a partition) is an outcome, logged like any
//! other, never an error of the run: the admin APIs refusing what they must
//! refuse is part of what runs here. What proves the changes safe is not this
//! module but the checkers: no acknowledged write may be lost and every
//! history must stay linearizable while replicas move under it.
//!
//! Every call has a deadline and every wait ends with the fault's duration,
//! except the short clean-up after it (a recommission, a replacement).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::meta::{ReplicaRole, ShardDescriptor};
use ringkv_proto::placement::{
    GetShardMapRequest, ListNodesRequest, ListOperatorsRequest, MoveReplicaRequest, Node, NodeState,
    SetNodeStateRequest, ShardMap, SplitShardRequest,
};
use ringkv_proto::raft::admin_client::AdminClient;
use ringkv_proto::raft::{ShardStatusRequest, TransferLeaderRequest};
use serde::Serialize;

use crate::cluster::{placement_addr, Cluster, PLACEMENT, STORENODES};
use crate::nemesis::Fault;

/// Deadline of one call to placement or a storenode.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a fault looks again at what it waits for.
const POLL: Duration = Duration::from_millis(500);
/// How often a refused request is asked again.
const RETRY: Duration = Duration::from_secs(1);
/// How long the clean-up after a fault may keep trying (recommission).
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(10);

/// What a fault did: a short label (counted in the summary) and the details.
#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub label: &'static str,
    pub detail: String,
}

impl Outcome {
    fn new(label: &'static str, detail: impl Into<String>) -> Outcome {
        Outcome { label, detail: detail.into() }
    }
}

/// The result of a membership fault: the processes it involved and what it did.
pub struct Effect {
    pub targets: Vec<usize>,
    pub outcome: Outcome,
}

/// The operator's side of the run: a placement client, and the lock that
/// keeps membership faults one at a time.
pub struct Admin {
    pc: PlacementClient,
    /// The schedule never overlaps two membership faults, but one may
    /// overrun its planned end by its clean-up: the next one waits.
    lock: tokio::sync::Mutex<()>,
}

fn status_text(s: &tonic::Status) -> String {
    format!("{:?}: {}", s.code(), s.message())
}

/// `picks[n]` modulo `len` (0 when there is no such pick).
fn choose(picks: &[u64], n: usize, len: usize) -> usize {
    picks.get(n).map_or(0, |p| (*p % len.max(1) as u64) as usize)
}

fn lock(cluster: &Mutex<Cluster>) -> std::sync::MutexGuard<'_, Cluster> {
    cluster.lock().expect("not poisoned")
}

impl Default for Admin {
    fn default() -> Self {
        Admin::new()
    }
}

impl Admin {
    pub fn new() -> Admin {
        Admin { pc: PlacementClient::new((0..PLACEMENT).map(placement_addr).collect()), lock: Default::default() }
    }

    async fn shard_map(&self) -> Result<ShardMap, tonic::Status> {
        self.pc.call(CALL_TIMEOUT, |mut c| async move { c.get_shard_map(GetShardMapRequest {}).await }).await
    }

    async fn nodes(&self) -> Result<BTreeMap<u64, Node>, tonic::Status> {
        let r = self.pc.call(CALL_TIMEOUT, |mut c| async move { c.list_nodes(ListNodesRequest {}).await }).await?;
        Ok(r.nodes.into_iter().map(|n| (n.id, n)).collect())
    }

    async fn set_state(&self, node_id: u64, state: NodeState, timeout: Duration) -> Result<(), tonic::Status> {
        let req = SetNodeStateRequest { node_id, state: state as i32, dry_run: false };
        self.pc.call(timeout, |mut c| async move { c.set_node_state(req).await }).await.map(|_| ())
    }

    /// Whether placement lists `node_id` as REMOVED (None: it did not answer).
    async fn is_removed(&self, node_id: u64) -> Option<bool> {
        let nodes = self.nodes().await.ok()?;
        Some(nodes.get(&node_id).is_some_and(|n| n.state == NodeState::Removed as i32))
    }

    /// Polls `is_removed(node_id)` until it is, or `deadline`.
    async fn wait_removed(&self, node_id: u64, deadline: Instant) -> bool {
        loop {
            if self.is_removed(node_id).await == Some(true) {
                return true;
            }
            if Instant::now() + POLL >= deadline {
                return false;
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The shard leader kill's target: the process of the storenode leading
    /// the `n`th shard (by id), if placement knows it.
    pub async fn shard_leader(&self, cluster: &Mutex<Cluster>, n: usize) -> Option<usize> {
        let mut shards = self.shard_map().await.ok()?.shards;
        shards.sort_by_key(|s| s.shard.as_ref().map_or(0, |d| d.id));
        let s = shards.get(n % shards.len().max(1))?;
        (s.leader_node_id != 0).then(|| lock(cluster).proc_of_node(s.leader_node_id)).flatten()
    }

    /// Brings the cluster back to its size: stops for good every storenode
    /// placement lists as REMOVED, then starts new storenodes while fewer
    /// than [`STORENODES`] remain. Says what it did (empty: nothing).
    pub async fn reconcile(&self, cluster: &Mutex<Cluster>) -> String {
        let Ok(nodes) = self.nodes().await else { return String::new() };
        let mut c = lock(cluster);
        let mut done = Vec::new();
        for i in c.storenode_members() {
            let Some(id) = c.node_id(i) else { continue };
            if nodes.get(&id).is_some_and(|n| n.state == NodeState::Removed as i32) {
                c.retire(i);
                done.push(format!("node {id} removed: {} stopped", c.procs[i].name));
            }
        }
        while c.storenode_members().len() < STORENODES {
            match c.add_storenode() {
                Ok(Some(i)) => done.push(format!("{} started as a new storenode", c.procs[i].name)),
                Ok(None) => break,
                Err(e) => {
                    done.push(format!("starting a new storenode: {e:#}"));
                    break;
                }
            }
        }
        done.join("; ")
    }

    /// Runs one membership fault under the lock, then reconciles. Returns
    /// the names of the processes it involved (before the reconcile could
    /// put a new storenode in a removed one's slot) and what came of it.
    pub async fn run<F, Fut>(&self, cluster: &Mutex<Cluster>, f: F) -> (Vec<String>, Outcome)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Effect>,
    {
        let _one_at_a_time = self.lock.lock().await;
        // Leftovers of an earlier fault (a node drained since) first.
        let before = self.reconcile(cluster).await;
        let Effect { targets, mut outcome } = f().await;
        let names = lock(cluster).names(&targets);
        let after = self.reconcile(cluster).await;
        for note in [before, after].into_iter().filter(|n| !n.is_empty()) {
            outcome.detail.push_str(&format!(" [{note}]"));
        }
        (names, outcome)
    }

    /// `move-replica`: a replica of a chosen shard, from one of its nodes to
    /// a node without one, through placement's `MoveReplica`; then follows
    /// the operator until it is done or the fault's time is up.
    pub async fn move_replica(&self, cluster: &Mutex<Cluster>, f: &Fault, deadline: Instant) -> Effect {
        let map = match self.shard_map().await {
            Ok(m) => m,
            Err(e) => return Effect { targets: vec![], outcome: Outcome::new("no shard map", status_text(&e)) },
        };
        let mut shards: Vec<_> = map.shards.iter().filter_map(|s| s.shard.clone()).collect();
        shards.sort_by_key(|d| d.id);
        if shards.is_empty() {
            return Effect { targets: vec![], outcome: Outcome::new("no shard map", "no shards yet") };
        }
        // A shard with an operator in flight refuses another: choose among
        // the others while there are any (the balancer is busy after a
        // node joins or leaves), so that most asks make a move.
        let shards = self.idle_first(shards, |d| d.id).await;
        let d = &shards[choose(&f.picks, 0, shards.len())];
        let mut holders: Vec<u64> = d.replicas.iter().map(|r| r.node_id).collect();
        holders.sort_unstable();
        let from = holders[choose(&f.picks, 1, holders.len())];
        // Any node placement still has, UP or not: a refusal is an outcome too.
        let mut free: Vec<u64> = map
            .nodes
            .iter()
            .filter(|n| n.state != NodeState::Removed as i32 && !holders.contains(&n.id))
            .map(|n| n.id)
            .collect();
        free.sort_unstable();
        if free.is_empty() {
            let detail = format!("shard {}: every node holds a replica", d.id);
            return Effect { targets: vec![], outcome: Outcome::new("no target node", detail) };
        }
        let to = free[choose(&f.picks, 2, free.len())];
        let targets = {
            let mut c = lock(cluster);
            [from, to].into_iter().filter_map(|n| c.proc_of_node(n)).collect()
        };
        let what = format!("shard {} from node {from} to node {to}", d.id);
        let req = MoveReplicaRequest { shard_id: d.id, from_node: from, to_node: to };
        let op = match self.pc.call(CALL_TIMEOUT, |mut c| async move { c.move_replica(req).await }).await {
            Ok(r) => r.operator.map_or(0, |o| o.id),
            Err(e) => {
                return Effect { targets, outcome: Outcome::new("refused", format!("{what}: {}", status_text(&e))) }
            }
        };
        println!("           move-replica: operator {op} moves {what}");
        // Until the operator is no longer listed, then where the replica is.
        loop {
            let listed = self
                .pc
                .call(CALL_TIMEOUT, |mut c| async move { c.list_operators(ListOperatorsRequest {}).await })
                .await
                .map(|r| r.operators.iter().any(|o| o.id == op));
            if matches!(listed, Ok(false)) {
                break;
            }
            if Instant::now() + POLL >= deadline {
                let detail = format!("operator {op}, {what}: still in flight");
                return Effect { targets, outcome: Outcome::new("in flight at the end", detail) };
            }
            tokio::time::sleep(POLL).await;
        }
        let moved = self.shard_map().await.ok().and_then(|m| {
            let s = m.shards.iter().filter_map(|s| s.shard.as_ref()).find(|s| s.id == d.id)?;
            let on = |n: u64| s.replicas.iter().any(|r| r.node_id == n);
            Some(on(to) && !on(from))
        });
        let (label, how) = match moved {
            Some(true) => ("moved", "done"),
            Some(false) => ("rolled back", "rolled back or cancelled"),
            None => ("finished, unknown", "finished (shard map unavailable)"),
        };
        Effect { targets, outcome: Outcome::new(label, format!("operator {op}, {what}: {how}")) }
    }

    /// `decommission`: DRAINING for a chosen storenode; at the end (one in
    /// three: after 0.5-2.5 s), if placement has not REMOVED it, UP again.
    /// A removed one is replaced by a new storenode (in [`Admin::run`]'s
    /// reconcile).
    pub async fn decommission(&self, cluster: &Mutex<Cluster>, f: &Fault, deadline: Instant) -> Effect {
        let (i, node) = {
            let mut c = lock(cluster);
            let members = c.storenode_members();
            let i = members[choose(&f.picks, 0, members.len())];
            (i, c.node_id(i))
        };
        let Some(node) = node else {
            return Effect { targets: vec![i], outcome: Outcome::new("not registered yet", "no node id yet") };
        };
        // Asked again while refused (too few nodes UP while another is
        // down, placement unreachable), for up to half the fault.
        let ask_until = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
        let asked = loop {
            let Err(e) = self.set_state(node, NodeState::Draining, CALL_TIMEOUT).await else { break Instant::now() };
            if Instant::now() + RETRY >= ask_until {
                let detail = format!("node {node}: {}", status_text(&e));
                return Effect { targets: vec![i], outcome: Outcome::new("refused", detail) };
            }
            tokio::time::sleep(RETRY).await;
        };
        // A drain takes seconds: one in three is called off while its
        // replicas are still moving, after 0.5-2.5 s.
        let early = choose(&f.picks, 1, 3) == 0;
        let hold = if early {
            let ms = 500 + f.picks.get(2).map_or(0, |p| p % 2_000);
            deadline.min(Instant::now() + Duration::from_millis(ms))
        } else {
            deadline
        };
        println!("           decommission: node {node} draining{}", if early { " (to be called off)" } else { "" });
        if self.wait_removed(node, hold).await {
            return Effect { targets: vec![i], outcome: Outcome::new("removed", format!("node {node} removed")) };
        }
        let held = format!("{:.1}s", hold.saturating_duration_since(asked).as_secs_f64());
        let outcome = match self.recommission(node).await {
            Ok(()) if early => Outcome::new("called off", format!("node {node} draining for {held}, then UP again")),
            Ok(()) => Outcome::new("recommissioned", format!("node {node} draining for {held}, then UP again")),
            // Emptied between the last look and the recommission.
            Err(_) if self.is_removed(node).await == Some(true) => {
                Outcome::new("removed", format!("node {node} removed at the end"))
            }
            Err(e) => Outcome::new("left draining", format!("node {node}: recommission failed: {e}")),
        };
        Effect { targets: vec![i], outcome }
    }

    /// SetNodeState UP, retried (placement may be behind a partition) for
    /// [`CLEANUP_TIMEOUT`]; a refusal for good is returned at once.
    async fn recommission(&self, node: u64) -> Result<(), String> {
        let until = Instant::now() + CLEANUP_TIMEOUT;
        loop {
            let e = match self.set_state(node, NodeState::Up, CALL_TIMEOUT).await {
                Ok(()) => return Ok(()),
                Err(e) => e,
            };
            let for_good = matches!(e.code(), tonic::Code::FailedPrecondition | tonic::Code::NotFound);
            if for_good || Instant::now() + POLL >= until {
                return Err(status_text(&e));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `add-storenode`: a new storenode in a free slot for the first half of
    /// the fault (placement balances replicas onto it), then a chosen
    /// storenode (perhaps the new one) is decommissioned so that the
    /// cluster returns to its size. If placement has not removed it by the
    /// end, it is left draining: placement removes it once it is empty, and
    /// the next membership fault or the end of the run stops it.
    pub async fn add_storenode(&self, cluster: &Mutex<Cluster>, f: &Fault, deadline: Instant) -> Effect {
        let started = lock(cluster).add_storenode();
        let new = match started {
            Ok(Some(i)) => i,
            Ok(None) => return Effect { targets: vec![], outcome: Outcome::new("no free slot", "every slot in use") },
            Err(e) => return Effect { targets: vec![], outcome: Outcome::new("start failed", format!("{e:#}")) },
        };
        let name = lock(cluster).procs[new].name.clone();
        println!("           add-storenode: {name} started");
        let half = Instant::now() + deadline.saturating_duration_since(Instant::now()) / 2;
        tokio::time::sleep_until(half.into()).await;
        let new_id = lock(cluster).node_id(new);
        let added = match new_id {
            Some(id) => format!("{name} joined as node {id}"),
            None => format!("{name} not registered yet"),
        };
        // The node to decommission: a member placement lists UP, tried
        // again until the end while placement refuses (too few nodes UP).
        let mut last_refusal = String::from("placement unreachable");
        loop {
            let up: Vec<(usize, u64)> = match self.nodes().await {
                Ok(nodes) => {
                    let mut c = lock(cluster);
                    c.storenode_members()
                        .into_iter()
                        .filter_map(|i| c.node_id(i).map(|id| (i, id)))
                        .filter(|(_, id)| nodes.get(id).is_some_and(|n| n.state == NodeState::Up as i32))
                        .collect()
                }
                Err(e) => {
                    last_refusal = status_text(&e);
                    Vec::new()
                }
            };
            if !up.is_empty() {
                let (i, node) = up[choose(&f.picks, 0, up.len())];
                match self.set_state(node, NodeState::Draining, CALL_TIMEOUT).await {
                    Ok(()) => {
                        println!("           add-storenode: node {node} draining");
                        let (label, end) = if self.wait_removed(node, deadline).await {
                            ("added, one removed", "removed")
                        } else {
                            ("added, one draining", "still draining at the end")
                        };
                        let detail = format!("{added}; node {node} {end}");
                        return Effect { targets: vec![new, i], outcome: Outcome::new(label, detail) };
                    }
                    Err(e) => last_refusal = format!("node {node}: {}", status_text(&e)),
                }
            }
            if Instant::now() + RETRY >= deadline {
                let detail = format!("{added}; decommission refused: {last_refusal}");
                return Effect { targets: vec![new], outcome: Outcome::new("added, none removed", detail) };
            }
            tokio::time::sleep(RETRY).await;
        }
    }

    /// The shards without an operator in flight (placement refuses a move
    /// or a split of the others), or all of them when there are none such
    /// or placement cannot say.
    async fn idle_first<T>(&self, shards: Vec<T>, id: impl Fn(&T) -> u64) -> Vec<T> {
        let Ok(ops) =
            self.pc.call(CALL_TIMEOUT, |mut c| async move { c.list_operators(ListOperatorsRequest {}).await }).await
        else {
            return shards;
        };
        let busy = |s: &T| ops.operators.iter().any(|o| o.shard_id == id(s));
        if shards.iter().all(busy) {
            return shards;
        }
        shards.into_iter().filter(|s| !busy(s)).collect()
    }

    /// `split`: splits a chosen shard at a chosen hash inside its range,
    /// through placement's `SplitShard`, then watches until the map shows
    /// both halves or the fault's time is up.
    pub async fn split(&self, cluster: &Mutex<Cluster>, f: &Fault, deadline: Instant) -> Effect {
        let map = match self.shard_map().await {
            Ok(m) => m,
            Err(e) => return Effect { targets: vec![], outcome: Outcome::new("no shard map", status_text(&e)) },
        };
        let mut shards: Vec<(u64, &ShardDescriptor)> =
            map.shards.iter().filter_map(|s| Some((s.leader_node_id, s.shard.as_ref()?))).collect();
        shards.sort_by_key(|(_, d)| d.id);
        if shards.is_empty() {
            return Effect { targets: vec![], outcome: Outcome::new("no shard map", "no shards yet") };
        }
        // Placement refuses to split a shard with a move in flight.
        let shards = self.idle_first(shards, |(_, d)| d.id).await;
        let (leader, d) = shards[choose(&f.picks, 0, shards.len())];
        let width = ringkv_common::hashing::ring_end(d.end) - d.start as u128;
        if width < 2 {
            return Effect { targets: vec![], outcome: Outcome::new("too narrow", format!("shard {}", d.id)) };
        }
        // A point inside, from the picks (the middle half of the range).
        let offset = width / 4 + (width / 2) * (f.picks.get(1).copied().unwrap_or(0) as u128) / (1 << 16);
        let at = (d.start as u128 + offset.max(1)) as u64;
        let targets = lock(cluster).proc_of_node(leader).into_iter().collect();
        let what = format!("shard {} at {at:#018x}", d.id);
        let req = SplitShardRequest { shard_id: d.id, split_hash: at };
        let new_id = match self.pc.call(CALL_TIMEOUT, |mut c| async move { c.split_shard(req).await }).await {
            Ok(r) => r.right.map_or(0, |r| r.id),
            Err(e) => {
                return Effect { targets, outcome: Outcome::new("refused", format!("{what}: {}", status_text(&e))) }
            }
        };
        println!("           split: {what}: new shard {new_id}");
        loop {
            let shown = self.shard_map().await.is_ok_and(|m| {
                m.shards.iter().filter_map(|s| s.shard.as_ref()).any(|s| s.id == new_id)
                    && m.shards.iter().filter_map(|s| s.shard.as_ref()).any(|s| s.id == d.id && s.end == at)
            });
            if shown {
                return Effect { targets, outcome: Outcome::new("split", format!("{what}: new shard {new_id}")) };
            }
            if Instant::now() + POLL >= deadline {
                return Effect { targets, outcome: Outcome::new("split, not in the map at the end", what) };
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// `transfer-leader`: asks a chosen shard's leader (storenode Admin
    /// `TransferLeader`) to hand leadership to a chosen other voter, then
    /// watches until that voter leads or the fault's time is up.
    pub async fn transfer_leader(&self, cluster: &Mutex<Cluster>, f: &Fault, deadline: Instant) -> Effect {
        let map = match self.shard_map().await {
            Ok(m) => m,
            Err(e) => return Effect { targets: vec![], outcome: Outcome::new("no shard map", status_text(&e)) },
        };
        let mut led: Vec<(u64, &ShardDescriptor)> = map
            .shards
            .iter()
            .filter(|s| s.leader_node_id != 0)
            .filter_map(|s| Some((s.leader_node_id, s.shard.as_ref()?)))
            .collect();
        led.sort_by_key(|(_, d)| d.id);
        if led.is_empty() {
            return Effect { targets: vec![], outcome: Outcome::new("no leader known", "no shard has a leader") };
        }
        let (from, d) = led[choose(&f.picks, 0, led.len())];
        let mut voters: Vec<_> =
            d.replicas.iter().filter(|r| r.role == ReplicaRole::Voter as i32 && r.node_id != from).collect();
        voters.sort_by_key(|r| r.node_id);
        if voters.is_empty() {
            let detail = format!("shard {}: no other voter", d.id);
            return Effect { targets: vec![], outcome: Outcome::new("no other voter", detail) };
        }
        let to = voters[choose(&f.picks, 1, voters.len())];
        let address = |id: u64| map.nodes.iter().find(|n| n.id == id).map(|n| n.address.clone());
        let targets = {
            let mut c = lock(cluster);
            [from, to.node_id].into_iter().filter_map(|n| c.proc_of_node(n)).collect()
        };
        let what = format!("shard {} from node {from} to node {} (replica {})", d.id, to.node_id, to.replica_id);
        let (Some(from_addr), Some(to_addr)) = (address(from), address(to.node_id)) else {
            return Effect { targets, outcome: Outcome::new("no address", what) };
        };
        let req = TransferLeaderRequest { shard_id: d.id, to_replica_id: to.replica_id };
        let asked = admin_call(&from_addr, |mut c| async move { c.transfer_leader(req).await }).await;
        if let Err(e) = asked {
            return Effect { targets, outcome: Outcome::new("refused", format!("{what}: {e}")) };
        }
        println!("           transfer-leader: {what} asked");
        loop {
            let status = admin_call(&to_addr, |mut c| async move {
                c.shard_status(ShardStatusRequest { shard_ids: vec![d.id] }).await
            })
            .await;
            if status.is_ok_and(|s| s.replicas.iter().any(|r| r.is_leader)) {
                return Effect { targets, outcome: Outcome::new("transferred", what) };
            }
            if Instant::now() + POLL >= deadline {
                return Effect { targets, outcome: Outcome::new("not led by the target at the end", what) };
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Admin {
    /// Replicas a storenode member still hosts that placement's shard map
    /// does not give it (a shard that moved on without it, while it was
    /// down or cut off): placement tells the node to delete them, so once
    /// the cluster is quiet there should be none. Polls until there are
    /// none or `timeout`; returns those left, as "node N: shard S replica R"
    /// (an unreachable node is listed as such).
    pub async fn stale_replicas(&self, cluster: &Mutex<Cluster>, timeout: Duration) -> Vec<String> {
        let until = Instant::now() + timeout;
        loop {
            let stale = self.stale_replicas_now(cluster).await;
            if stale.is_empty() || Instant::now() + POLL * 2 >= until {
                return stale;
            }
            tokio::time::sleep(POLL * 2).await;
        }
    }

    async fn stale_replicas_now(&self, cluster: &Mutex<Cluster>) -> Vec<String> {
        let map = match self.shard_map().await {
            Ok(m) => m,
            Err(e) => return vec![format!("no shard map: {}", status_text(&e))],
        };
        let assigned: std::collections::BTreeSet<(u64, u64, u64)> = map
            .shards
            .iter()
            .filter_map(|s| s.shard.as_ref())
            .flat_map(|d| d.replicas.iter().map(move |r| (r.node_id, d.id, r.replica_id)))
            .collect();
        let nodes: Vec<(u64, String)> = {
            let mut c = lock(cluster);
            c.storenode_members()
                .into_iter()
                .filter_map(|i| Some((c.node_id(i)?, format!("{}:20160", c.procs[i].ip))))
                .collect()
        };
        let mut stale = Vec::new();
        for (node, addr) in nodes {
            // REMOVED nodes are stopped; any other node of placement's counts.
            let known = map.nodes.iter().any(|n| n.id == node && n.state != NodeState::Removed as i32);
            if !known {
                continue;
            }
            match admin_call(
                &addr,
                |mut c| async move { c.shard_status(ShardStatusRequest { shard_ids: vec![] }).await },
            )
            .await
            {
                Ok(st) => stale.extend(
                    st.replicas
                        .iter()
                        .filter_map(|r| Some((r.shard.as_ref()?.id, r.replica_id)))
                        .filter(|&(shard, replica)| !assigned.contains(&(node, shard, replica)))
                        .map(|(shard, replica)| format!("node {node}: shard {shard} replica {replica}")),
                ),
                Err(e) => stale.push(format!("node {node}: {e}")),
            }
        }
        stale
    }
}

/// One call to a storenode's Admin service at `addr`, within [`CALL_TIMEOUT`].
async fn admin_call<T, F, Fut>(addr: &str, f: F) -> Result<T, String>
where
    F: FnOnce(AdminClient<tonic::transport::Channel>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let call = async {
        let ch = ringkv_common::net::connect(addr).await.map_err(|e| format!("{addr} unreachable: {e}"))?;
        f(AdminClient::new(ch)).await.map(|r| r.into_inner()).map_err(|s| status_text(&s))
    };
    tokio::time::timeout(CALL_TIMEOUT, call).await.unwrap_or_else(|_| Err(format!("{addr}: no answer in time")))
}
