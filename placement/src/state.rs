//! The placement group's replicated state and its state machine.
//!
//! The state lives in the `data` column family of the placement node's own
//! RocksDB (a placement process hosts nothing else), under these keys:
//!
//! | key | value |
//! |---|---|
//! | `c/next_id` | next id to allocate (u64 BE): nodes, shards and replicas share one space |
//! | `c/version` | shard-map version (u64 BE), bumped by every change |
//! | `c/bootstrapped` | present once the initial shards exist |
//! | `c/cluster_id` | the cluster's id (u64 BE), set once |
//! | `n/` ++ node id (BE) | `Node` (stored state: UP, DRAINING or REMOVED) |
//! | `s/` ++ shard id (BE) | `ShardInfo` |
//! | `o/` ++ operator id (BE) | `Operator` in flight (deleted when it finishes) |
//!
//! Every replica keeps an in-memory mirror ([`ClusterState`]) for serving
//! reads; apply updates both, and [`StateMachine::restore`] rebuilds the
//! mirror from the engine after a restart or a snapshot.

use std::collections::BTreeMap;
use std::sync::Arc;

use parking_lot::RwLock;
use prost::Message;
use ringkv_proto::meta::ShardDescriptor;
use ringkv_proto::placement::{
    placement_command::Op, Node, NodeState, Operator, PlacementCommand, RegisterNodeRequest, SetMaintenanceRequest,
    SetNodeStateRequest, ShardInfo,
};
use ringkv_raft::engine::{Cf, Engine};
use ringkv_raft::{ApplyContext, Result, StateMachine};

use crate::group::PlacementGroup;
use tokio::sync::watch;

const NEXT_ID: &[u8] = b"c/next_id";
const VERSION: &[u8] = b"c/version";
const BOOTSTRAPPED: &[u8] = b"c/bootstrapped";
const CLUSTER_ID: &[u8] = b"c/cluster_id";
const NODE_PREFIX: &[u8] = b"n/";
const SHARD_PREFIX: &[u8] = b"s/";
const OPERATOR_PREFIX: &[u8] = b"o/";
/// Ids below this are left for hand-made ids (tests, the placement members).
const FIRST_ID: u64 = 1000;

fn node_key(id: u64) -> Vec<u8> {
    [NODE_PREFIX, &id.to_be_bytes()].concat()
}

fn shard_key(id: u64) -> Vec<u8> {
    [SHARD_PREFIX, &id.to_be_bytes()].concat()
}

pub(crate) fn operator_key(id: u64) -> Vec<u8> {
    [OPERATOR_PREFIX, &id.to_be_bytes()].concat()
}

fn be_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// A stored counter, `default` when absent; not 8 bytes is corrupt (read as 0,
/// a next id would hand out ids again).
fn counter(engine: &Engine, key: &[u8], default: u64) -> Result<u64> {
    let Some(v) = engine.get(Cf::Data, key)? else { return Ok(default) };
    v.as_slice().try_into().map(u64::from_be_bytes).map_err(|_| {
        let key = String::from_utf8_lossy(key);
        ringkv_raft::Error::Corrupt(format!("placement {key}: {} bytes, not 8", v.len()))
    })
}

/// What placement knows, as of the last applied entry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ClusterState {
    /// The map version, bumped by every command that changes nodes or shards.
    pub version: u64,
    /// Whether the initial shards have been created.
    pub bootstrapped: bool,
    /// The next id to allocate (nodes, shards and replicas share one space).
    pub next_id: u64,
    /// Every registered node by id, removed ones included.
    pub nodes: BTreeMap<u64, Node>,
    /// Every shard by id, with its last reported descriptor and leader.
    pub shards: BTreeMap<u64, ShardInfo>,
    /// The cluster's id (0 until the first registration sets it).
    pub cluster_id: u64,
    /// Operators in flight by id (at most one per shard).
    pub operators: BTreeMap<u64, Operator>,
}

impl ClusterState {
    /// Reads the whole state from the engine.
    pub fn load(engine: &Engine) -> Result<ClusterState> {
        let mut st = ClusterState {
            version: counter(engine, VERSION, 0)?,
            bootstrapped: engine.get(Cf::Data, BOOTSTRAPPED)?.is_some(),
            next_id: counter(engine, NEXT_ID, FIRST_ID)?,
            cluster_id: counter(engine, CLUSTER_ID, 0)?,
            ..Default::default()
        };
        for prefix in [NODE_PREFIX, SHARD_PREFIX, OPERATOR_PREFIX] {
            let hi = [prefix, &[0xff; 9][..]].concat();
            let mut it = engine.iter_range(Cf::Data, prefix, &hi);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let corrupt = |e: &dyn std::fmt::Display| {
                    ringkv_raft::Error::Corrupt(format!("placement record {}: {e}", String::from_utf8_lossy(k)))
                };
                if k.len() != prefix.len() + 8 {
                    return Err(corrupt(&"the id is not 8 bytes"));
                }
                let id = be_u64(&k[prefix.len()..]);
                if prefix == NODE_PREFIX {
                    st.nodes.insert(id, Node::decode(v).map_err(|e| corrupt(&e))?);
                } else if prefix == SHARD_PREFIX {
                    st.shards.insert(id, ShardInfo::decode(v).map_err(|e| corrupt(&e))?);
                } else {
                    st.operators.insert(id, Operator::decode(v).map_err(|e| corrupt(&e))?);
                }
                it.next();
            }
            it.status()?;
        }
        Ok(st)
    }

    /// The descriptor of every shard, by shard id.
    pub fn descriptors(&self) -> Vec<ShardDescriptor> {
        self.shards.values().filter_map(|s| s.shard.clone()).collect()
    }

    /// The operator in flight on `shard_id`, if any.
    pub fn operator_on(&self, shard_id: u64) -> Option<&Operator> {
        self.operators.values().find(|o| o.shard_id == shard_id)
    }

    /// How many replicas `node_id` holds, by the shard descriptors.
    pub fn replicas_on(&self, node_id: u64) -> usize {
        self.shards
            .values()
            .filter(|s| s.shard.as_ref().is_some_and(|d| d.replicas.iter().any(|r| r.node_id == node_id)))
            .count()
    }
}

/// Why a placement command was refused (every replica refuses it the same way).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CommandError {
    /// The command names a node that never registered.
    #[error("node {0} is not registered")]
    UnknownNode(u64),
    /// The command names a node in state REMOVED.
    #[error("node {0} was removed; a removed node cannot come back")]
    NodeRemoved(u64),
    /// A registration claims a node id that belongs to another data directory.
    #[error(
        "node id {0} belongs to another storenode (another data directory); start this one without a node id to get a new one"
    )]
    IdentityMismatch(u64),
    /// A registration from a data directory made by another cluster.
    #[error("this data directory belongs to cluster {theirs}, not to this cluster ({ours})")]
    WrongCluster {
        /// The cluster id kept in the node's data directory.
        theirs: u64,
        /// This placement service's cluster id.
        ours: u64,
    },
    /// The command names a shard placement does not know.
    #[error("shard {0} does not exist")]
    UnknownShard(u64),
    /// The command names an operator that is not in flight.
    #[error("operator {0} is not in flight")]
    UnknownOperator(u64),
    /// The command conflicts with the cluster's current state.
    #[error("{0}")]
    Conflict(String),
    /// The command is malformed or asks for something not allowed.
    #[error("{0}")]
    Invalid(String),
}

/// The answer to an applied placement command.
#[derive(Debug)]
pub enum Reply {
    /// A node registered: its id (allocated when it asked with 0).
    Registered(u64),
    /// A node's state was set: the node as it now is.
    Node(Node),
    /// Bootstrap: `true` if this command created the shards, `false` if they existed.
    Bootstrapped(bool),
    /// Shard updates: how many shards changed.
    Updated(usize),
    /// The cluster id (set by this command or before).
    ClusterId(u64),
    /// An operator as it now is (created or advanced).
    Operator(Operator),
    /// An operator finished.
    Finished,
    /// Fresh ids, in allocation order.
    Ids(Vec<u64>),
}

/// What applying a placement command answers.
pub type CommandResult = std::result::Result<Reply, CommandError>;

/// Shared between the state machine (writer, on the Raft loop thread) and the
/// gRPC services (readers).
pub struct Shared {
    /// The mirror of the replicated state, as of the last applied entry.
    pub state: RwLock<ClusterState>,
    /// The map version, for watchers.
    pub version: watch::Sender<u64>,
}

impl Shared {
    /// An empty state at version 0.
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared { state: RwLock::new(ClusterState::default()), version: watch::channel(0).0 })
    }
}

/// Applies placement commands to the engine and to the [`Shared`] mirror.
pub struct PlacementStateMachine {
    shared: Arc<Shared>,
}

impl PlacementStateMachine {
    /// A state machine that keeps `shared` up to date.
    pub fn new(shared: Arc<Shared>) -> Self {
        PlacementStateMachine { shared }
    }

    pub(crate) fn alloc(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState) -> u64 {
        let id = st.next_id.max(FIRST_ID);
        st.next_id = id + 1;
        ctx.put(Cf::Data, NEXT_ID, &st.next_id.to_be_bytes());
        id
    }

    fn put_node(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState, n: Node) {
        ctx.put(Cf::Data, &node_key(n.id), &n.encode_to_vec());
        st.nodes.insert(n.id, n);
    }

    fn put_shard(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState, s: ShardInfo) {
        let id = s.shard.as_ref().map_or(0, |d| d.id);
        ctx.put(Cf::Data, &shard_key(id), &s.encode_to_vec());
        st.shards.insert(id, s);
    }

    fn register(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        r: RegisterNodeRequest,
    ) -> CommandResult {
        if r.address.is_empty() {
            return Err(CommandError::Invalid("a node needs an address".into()));
        }
        if r.cluster_id != 0 && st.cluster_id != 0 && r.cluster_id != st.cluster_id {
            return Err(CommandError::WrongCluster { theirs: r.cluster_id, ours: st.cluster_id });
        }
        // Checked before an id is allocated: a refused command writes nothing.
        let known = st.nodes.get(&r.node_id).filter(|_| r.node_id != 0).cloned();
        if let Some(n) = &known {
            if n.state == NodeState::Removed as i32 {
                return Err(CommandError::NodeRemoved(n.id));
            }
            // A node registered before identities existed has none: the first
            // identity to claim it keeps it.
            if !n.instance.is_empty() && n.instance != r.instance {
                return Err(CommandError::IdentityMismatch(n.id));
            }
        }
        // A node without an id is always a new node: a data directory keeps
        // its id, so an address seen before proves nothing about identity.
        let id = if r.node_id == 0 { Self::alloc(ctx, st) } else { r.node_id };
        let (state, maintenance) = known.as_ref().map_or((NodeState::Up as i32, false), |n| (n.state, n.maintenance));
        if id >= st.next_id {
            st.next_id = id + 1;
            ctx.put(Cf::Data, NEXT_ID, &st.next_id.to_be_bytes());
        }
        let node = Node {
            id,
            address: r.address,
            http_address: r.http_address,
            zone: r.zone,
            capacity: r.capacity.max(1),
            state,
            last_heartbeat_ago_ms: 0,
            maintenance,
            instance: r.instance,
        };
        if st.nodes.get(&id) != Some(&node) {
            Self::put_node(ctx, st, node);
            Self::bump(ctx, st);
        }
        Ok(Reply::Registered(id))
    }

    fn set_state(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        r: SetNodeStateRequest,
    ) -> CommandResult {
        let Some(mut node) = st.nodes.get(&r.node_id).cloned() else {
            return Err(CommandError::UnknownNode(r.node_id));
        };
        if node.state == NodeState::Removed as i32 {
            return Err(CommandError::NodeRemoved(r.node_id));
        }
        if r.state == NodeState::Down as i32 {
            return Err(CommandError::Invalid("DOWN is observed, not set".into()));
        }
        if r.state == NodeState::Removed as i32 {
            let held = st.replicas_on(r.node_id);
            let moving = st.operators.values().any(|o| o.from_node == r.node_id || o.to_node == r.node_id);
            if held > 0 || moving {
                return Err(CommandError::Conflict(format!(
                    "node {} still holds {held} replicas{}: decommission it (DRAINING) and it becomes REMOVED once empty",
                    r.node_id,
                    if moving { " and moves in flight" } else { "" }
                )));
            }
        }
        if node.state == r.state {
            return Ok(Reply::Node(node));
        }
        node.state = r.state;
        Self::put_node(ctx, st, node.clone());
        Self::bump(ctx, st);
        Ok(Reply::Node(node))
    }

    fn set_maintenance(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        r: SetMaintenanceRequest,
    ) -> CommandResult {
        let Some(mut node) = st.nodes.get(&r.node_id).cloned() else {
            return Err(CommandError::UnknownNode(r.node_id));
        };
        if node.state == NodeState::Removed as i32 {
            return Err(CommandError::NodeRemoved(r.node_id));
        }
        if node.maintenance != r.on {
            node.maintenance = r.on;
            Self::put_node(ctx, st, node.clone());
            Self::bump(ctx, st);
        }
        Ok(Reply::Node(node))
    }

    fn set_cluster_id(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState, id: u64) -> CommandResult {
        if st.cluster_id == 0 {
            if id == 0 {
                return Err(CommandError::Invalid("a cluster id is non-zero".into()));
            }
            st.cluster_id = id;
            ctx.put(Cf::Data, CLUSTER_ID, &id.to_be_bytes());
        }
        Ok(Reply::ClusterId(st.cluster_id))
    }

    fn bootstrap(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        shards: Vec<ShardInfo>,
    ) -> CommandResult {
        // A second leader may propose the bootstrap again: only the first counts.
        if st.bootstrapped {
            return Ok(Reply::Bootstrapped(false));
        }
        if shards.is_empty() {
            return Err(CommandError::Invalid("no shards to bootstrap".into()));
        }
        for mut info in shards {
            let mut d = info.shard.take().unwrap_or_default();
            d.id = Self::alloc(ctx, st);
            for r in &mut d.replicas {
                if r.replica_id == 0 {
                    r.replica_id = Self::alloc(ctx, st);
                }
            }
            info.shard = Some(d);
            Self::put_shard(ctx, st, info);
        }
        st.bootstrapped = true;
        ctx.put(Cf::Data, BOOTSTRAPPED, b"1");
        Self::bump(ctx, st);
        Ok(Reply::Bootstrapped(true))
    }

    /// Newer descriptors (by epoch) and leader changes reported by shard leaders.
    fn update_shards(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        updates: Vec<ShardInfo>,
    ) -> CommandResult {
        let changed = updates.into_iter().filter(|u| Self::update_shard(ctx, st, u.clone())).count();
        if changed > 0 {
            Self::bump(ctx, st);
        }
        Ok(Reply::Updated(changed))
    }

    /// Stores `u` unless its shard is unknown or its epoch older than the
    /// stored one; whether it changed anything (the caller bumps the version).
    pub(crate) fn update_shard(
        ctx: &mut ApplyContext<'_, PlacementGroup>,
        st: &mut ClusterState,
        u: ShardInfo,
    ) -> bool {
        let Some(new) = u.shard.as_ref() else { return false };
        let Some(cur) = st.shards.get(&new.id) else {
            if !Self::admits_new_shard(st, new) {
                return false;
            }
            Self::put_shard(ctx, st, u);
            return true;
        };
        let cur_epoch = cur.shard.as_ref().and_then(|d| d.epoch).unwrap_or_default();
        let new_epoch = new.epoch.unwrap_or_default();
        let older = (new_epoch.version, new_epoch.conf_ver) < (cur_epoch.version, cur_epoch.conf_ver);
        if older || *cur == u {
            return false;
        }
        Self::put_shard(ctx, st, u);
        true
    }

    /// Whether a shard placement does not know is one a split made: its id
    /// was allocated here, it has been split off (version past the first),
    /// and every known shard it overlaps is older (the parent, before its
    /// narrowed descriptor arrived). Anything else is not taken in.
    fn admits_new_shard(st: &ClusterState, new: &ShardDescriptor) -> bool {
        let version = |d: &ShardDescriptor| d.epoch.unwrap_or_default().version;
        let valid =
            new.id >= FIRST_ID && new.id < st.next_id && version(new) > 1 && (new.end == 0 || new.start < new.end);
        valid
            && st.shards.values().filter_map(|s| s.shard.as_ref()).all(|k| {
                let meets = ringkv_common::hashing::ranges_overlap(k.start, k.end, new.start, new.end);
                !meets || version(k) < version(new)
            })
    }

    /// Allocates `count` fresh ids (at most 64 at once).
    fn alloc_ids(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState, count: u32) -> CommandResult {
        if count == 0 || count > 64 {
            return Err(CommandError::Invalid(format!("{count} ids asked: 1 to 64 at once")));
        }
        Ok(Reply::Ids((0..count).map(|_| Self::alloc(ctx, st)).collect()))
    }

    pub(crate) fn bump(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState) {
        st.version += 1;
        ctx.put(Cf::Data, VERSION, &st.version.to_be_bytes());
    }
}

impl StateMachine for PlacementStateMachine {
    type Command = PlacementCommand;
    type Response = CommandResult;
    type Group = PlacementGroup;

    fn apply(&mut self, ctx: &mut ApplyContext<'_, PlacementGroup>, cmd: PlacementCommand) -> Result<CommandResult> {
        // Work on a copy so that readers never see half of a command.
        let mut st = self.shared.state.read().clone();
        let before = st.version;
        let res = match cmd.op {
            Some(Op::Register(r)) => Self::register(ctx, &mut st, r),
            Some(Op::SetState(r)) => Self::set_state(ctx, &mut st, r),
            Some(Op::Bootstrap(b)) => Self::bootstrap(ctx, &mut st, b.shards),
            Some(Op::UpdateShards(u)) => Self::update_shards(ctx, &mut st, u.shards),
            Some(Op::SetClusterId(c)) => Self::set_cluster_id(ctx, &mut st, c.cluster_id),
            Some(Op::SetMaintenance(r)) => Self::set_maintenance(ctx, &mut st, r),
            Some(Op::AddOperator(a)) => Self::add_operator(ctx, &mut st, a.operator.unwrap_or_default()),
            Some(Op::AdvanceOperator(a)) => Self::advance_operator(ctx, &mut st, a),
            Some(Op::FinishOperator(f)) => Self::finish_operator(ctx, &mut st, f),
            Some(Op::AllocIds(a)) => Self::alloc_ids(ctx, &mut st, a.count),
            None => Err(CommandError::Invalid("empty command".into())),
        };
        let version = st.version;
        *self.shared.state.write() = st;
        if version != before {
            self.shared.version.send_replace(version);
        }
        Ok(res)
    }

    fn undecodable(&self, reason: String) -> CommandResult {
        Err(CommandError::Invalid(format!("undecodable command: {reason}")))
    }

    fn restore(&mut self, engine: &Engine, _group: &PlacementGroup) -> Result<()> {
        let st = ClusterState::load(engine)?;
        let version = st.version;
        *self.shared.state.write() = st;
        self.shared.version.send_replace(version);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::meta::{Epoch, Replica};
    use ringkv_proto::placement::{BootstrapShards, ShardUpdates};
    use ringkv_raft::state_machine::ApplyBatch;

    use super::*;

    /// A placement state machine over its own engine, applying as the Raft
    /// loop does. All that touches the Raft machinery is here.
    struct Fixture {
        _dir: tempfile::TempDir,
        engine: Engine,
        group: PlacementGroup,
        sm: PlacementStateMachine,
        shared: Arc<Shared>,
        index: u64,
    }

    impl Fixture {
        fn new() -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            let engine = Engine::open(&dir.path().join("db")).unwrap();
            let shared = Shared::new();
            let group = PlacementGroup::initial([1]);
            let mut sm = PlacementStateMachine::new(shared.clone());
            sm.restore(&engine, &group).unwrap();
            Fixture { _dir: dir, engine, group, sm, shared, index: 0 }
        }

        /// Applies one command as one committed entry.
        fn apply(&mut self, op: Option<Op>) -> CommandResult {
            self.index += 1;
            let mut batch = ApplyBatch::default();
            let mut ctx = batch.context(&self.engine, &self.group, self.index);
            let res = self.sm.apply(&mut ctx, PlacementCommand { op }).unwrap();
            self.engine.write(batch.take(), false).unwrap();
            res
        }

        /// Stores `value` under `key` as if a past apply had.
        fn put_raw(&self, key: &[u8], value: &[u8]) {
            let mut batch = ApplyBatch::default();
            batch.context(&self.engine, &self.group, 0).put(Cf::Data, key, value);
            self.engine.write(batch.take(), false).unwrap();
        }

        /// A fresh replica's state machine restored from this engine.
        fn restore(&self) -> Result<Arc<Shared>> {
            let shared = Shared::new();
            PlacementStateMachine::new(shared.clone()).restore(&self.engine, &self.group)?;
            Ok(shared)
        }

        fn state(&self) -> ClusterState {
            self.shared.state.read().clone()
        }
    }

    fn register(node_id: u64, address: &str) -> Option<Op> {
        Some(Op::Register(RegisterNodeRequest { node_id, address: address.into(), ..Default::default() }))
    }

    fn set_state(node_id: u64, state: NodeState) -> Option<Op> {
        Some(Op::SetState(SetNodeStateRequest { node_id, state: state as i32, dry_run: false }))
    }

    /// Shards over nodes 1..=3 whose replica ids are left to allocate, but
    /// for `replica_id` on the first replica of the first shard.
    fn bootstrap(n: usize, replica_id: u64) -> Option<Op> {
        let shards = (0..n)
            .map(|i| {
                let replicas =
                    (1..=3).map(|node_id| Replica { replica_id: 0, node_id, role: 0 }).collect::<Vec<Replica>>();
                let mut d = ShardDescriptor { id: 0, start: i as u64, end: i as u64 + 1, epoch: None, replicas };
                if i == 0 {
                    d.replicas[0].replica_id = replica_id;
                }
                ShardInfo { shard: Some(d), ..Default::default() }
            })
            .collect();
        Some(Op::Bootstrap(BootstrapShards { shards }))
    }

    fn update(id: u64, version: u64, conf_ver: u64, leader_node_id: u64) -> ShardInfo {
        ShardInfo {
            shard: Some(ShardDescriptor { id, epoch: Some(Epoch { version, conf_ver }), ..Default::default() }),
            leader_node_id,
            down_replicas: 0,
        }
    }

    fn registered(r: CommandResult) -> u64 {
        match r {
            Ok(Reply::Registered(id)) => id,
            other => panic!("not registered: {other:?}"),
        }
    }

    #[test]
    fn an_empty_engine_is_an_unbootstrapped_cluster_whose_ids_start_at_1000() {
        let f = Fixture::new();
        let st = ClusterState::load(&f.engine).unwrap();
        assert_eq!((st.version, st.bootstrapped, st.next_id), (0, false, FIRST_ID));
        assert!(st.nodes.is_empty() && st.shards.is_empty());
    }

    #[test]
    fn a_new_address_gets_a_new_id_and_starts_up() {
        let mut f = Fixture::new();
        assert_eq!(registered(f.apply(register(0, "10.0.0.1:7000"))), 1000);
        assert_eq!(registered(f.apply(register(0, "10.0.0.2:7000"))), 1001);
        let st = f.state();
        assert_eq!((st.next_id, st.version), (1002, 2));
        let n = &st.nodes[&1001];
        assert_eq!((n.address.as_str(), n.state, n.capacity), ("10.0.0.2:7000", NodeState::Up as i32, 1));
        assert_eq!(*f.shared.version.borrow(), 2, "watchers see the new version");
    }

    fn register_as(node_id: u64, address: &str, instance: &str, cluster_id: u64) -> Option<Op> {
        let r = RegisterNodeRequest {
            node_id,
            address: address.into(),
            instance: instance.into(),
            cluster_id,
            ..Default::default()
        };
        Some(Op::Register(r))
    }

    #[test]
    fn an_address_registering_again_without_an_id_is_a_new_node_not_the_old_one() {
        // The defect: a newcomer at a dead node's address, started without
        // --node-id, was taken for that node and handed its replicas.
        let mut f = Fixture::new();
        let old = registered(f.apply(register_as(0, "a:1", "i1", 0)));
        let new = registered(f.apply(register_as(0, "a:1", "i2", 0)));
        assert!(new > old);
        assert_eq!(f.state().nodes[&old].instance, "i1", "the old node is left as it was");
    }

    #[test]
    fn a_registration_claiming_a_known_id_from_another_identity_is_refused_and_changes_nothing() {
        let mut f = Fixture::new();
        let id = registered(f.apply(register_as(0, "a:1", "i1", 0)));
        f.apply(set_state(id, NodeState::Draining)).unwrap();
        let before = f.state();
        assert_eq!(f.apply(register_as(id, "b:1", "other", 0)).unwrap_err(), CommandError::IdentityMismatch(id));
        assert_eq!(f.state(), before);
        // The node itself, restarted at a new address, keeps its id and state.
        assert_eq!(registered(f.apply(register_as(id, "c:1", "i1", 0))), id);
        assert_eq!(f.state().nodes[&id].address, "c:1");
        assert_eq!(f.state().nodes[&id].state, NodeState::Draining as i32);
    }

    #[test]
    fn a_node_from_another_cluster_is_refused_and_the_cluster_id_is_set_once() {
        let mut f = Fixture::new();
        let set = |id| Some(Op::SetClusterId(ringkv_proto::placement::SetClusterId { cluster_id: id }));
        assert!(matches!(f.apply(set(42)), Ok(Reply::ClusterId(42))));
        assert!(matches!(f.apply(set(43)), Ok(Reply::ClusterId(42))), "a second leader's candidate is ignored");
        assert_eq!(ClusterState::load(&f.engine).unwrap().cluster_id, 42);
        let before = f.state();
        assert_eq!(
            f.apply(register_as(0, "a:1", "i1", 7)).unwrap_err(),
            CommandError::WrongCluster { theirs: 7, ours: 42 }
        );
        assert_eq!(f.state(), before, "no id allocated for a refused node");
        assert!(f.apply(register_as(0, "a:1", "i1", 42)).is_ok());
    }

    #[test]
    fn a_node_that_changes_a_field_when_registering_again_bumps_the_version() {
        let mut f = Fixture::new();
        let id = registered(f.apply(register(0, "a:1")));
        let v = f.state().version;
        let again = RegisterNodeRequest { node_id: id, address: "a:1".into(), zone: "z2".into(), ..Default::default() };
        assert_eq!(registered(f.apply(Some(Op::Register(again)))), id);
        assert_eq!(f.state().version, v + 1);
        assert_eq!(f.state().nodes[&id].zone, "z2");
    }

    #[test]
    fn a_node_registering_with_its_own_id_keeps_it_and_new_ids_are_allocated_above_it() {
        let mut f = Fixture::new();
        assert_eq!(registered(f.apply(register(5000, "a:1"))), 5000);
        assert_eq!(registered(f.apply(register(7, "b:1"))), 7, "a hand-made low id is kept");
        assert_eq!(f.state().next_id, 5001, "a lower id does not move the next id back");
        assert_eq!(registered(f.apply(register(0, "c:1"))), 5001);
    }

    #[test]
    fn a_removed_node_is_refused_under_its_id_and_its_address_comes_back_as_a_new_node() {
        let mut f = Fixture::new();
        let id = registered(f.apply(register(0, "a:1")));
        f.apply(set_state(id, NodeState::Removed)).unwrap();
        let before = f.state();
        assert_eq!(f.apply(register(id, "a:1")).unwrap_err(), CommandError::NodeRemoved(id));
        assert_eq!(f.state(), before, "a refused command changes nothing");
        let new = registered(f.apply(register(0, "a:1")));
        assert!(new > id, "a removed id is never reused: {new}");
        assert_eq!(f.state().nodes[&id].state, NodeState::Removed as i32);
    }

    #[test]
    fn a_node_without_an_address_is_refused() {
        let mut f = Fixture::new();
        assert!(matches!(f.apply(register(0, "")), Err(CommandError::Invalid(_))));
        assert_eq!(f.state(), ClusterState { next_id: FIRST_ID, ..Default::default() });
        assert_eq!(ClusterState::load(&f.engine).unwrap(), f.state());
    }

    #[test]
    fn node_states_move_between_up_draining_and_removed_and_each_change_bumps_the_version() {
        let mut f = Fixture::new();
        let id = registered(f.apply(register(0, "a:1")));
        for state in [NodeState::Draining, NodeState::Up, NodeState::Draining, NodeState::Removed] {
            let v = f.state().version;
            match f.apply(set_state(id, state)) {
                Ok(Reply::Node(n)) => assert_eq!((n.id, n.state), (id, state as i32)),
                other => panic!("{state:?}: {other:?}"),
            }
            assert_eq!(f.state().nodes[&id].state, state as i32);
            assert_eq!(f.state().version, v + 1);
        }
        for state in [NodeState::Up, NodeState::Draining, NodeState::Removed] {
            assert_eq!(f.apply(set_state(id, state)).unwrap_err(), CommandError::NodeRemoved(id));
        }
    }

    #[test]
    fn down_is_observed_not_set_and_unknown_nodes_are_refused() {
        let mut f = Fixture::new();
        let id = registered(f.apply(register(0, "a:1")));
        let before = f.state();
        assert!(matches!(f.apply(set_state(id, NodeState::Down)), Err(CommandError::Invalid(_))));
        assert_eq!(f.apply(set_state(42, NodeState::Draining)).unwrap_err(), CommandError::UnknownNode(42));
        assert_eq!(f.state(), before);
    }

    #[test]
    fn shards_are_bootstrapped_exactly_once_with_fresh_shard_and_replica_ids() {
        let mut f = Fixture::new();
        let node = registered(f.apply(register(0, "a:1")));
        assert!(matches!(f.apply(bootstrap(2, 77)), Ok(Reply::Bootstrapped(true))));
        let st = f.state();
        assert!(st.bootstrapped);
        let ds = st.descriptors();
        assert_eq!(ds.len(), 2);
        // Shard id, then its replicas' ids, in order; the given one is kept.
        assert_eq!(ds[0].id, node + 1);
        let ids0: Vec<u64> = ds[0].replicas.iter().map(|r| r.replica_id).collect();
        assert_eq!(ids0, [77, node + 2, node + 3]);
        assert_eq!(ds[1].id, node + 4);
        let ids1: Vec<u64> = ds[1].replicas.iter().map(|r| r.replica_id).collect();
        assert_eq!(ids1, [node + 5, node + 6, node + 7]);
        assert_eq!(st.next_id, node + 8);
        assert_eq!(st.version, 2, "one bump for the whole bootstrap");

        assert!(matches!(f.apply(bootstrap(3, 0)), Ok(Reply::Bootstrapped(false))));
        assert_eq!(f.state(), st, "a second bootstrap changes nothing");
    }

    #[test]
    fn a_bootstrap_without_shards_is_refused_and_leaves_the_cluster_unbootstrapped() {
        let mut f = Fixture::new();
        assert!(matches!(f.apply(bootstrap(0, 0)), Err(CommandError::Invalid(_))));
        assert!(!f.state().bootstrapped);
        assert!(matches!(f.apply(bootstrap(1, 0)), Ok(Reply::Bootstrapped(true))));
    }

    #[test]
    fn ids_are_allocated_monotonically_and_never_twice() {
        let mut f = Fixture::new();
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(registered(f.apply(register(0, &format!("n{i}:1")))));
        }
        f.apply(bootstrap(3, 0)).unwrap();
        for d in f.state().descriptors() {
            ids.push(d.id);
            ids.extend(d.replicas.iter().map(|r| r.replica_id));
        }
        ids.push(registered(f.apply(register(0, "late:1"))));
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
        assert!(ids.iter().all(|&id| id >= FIRST_ID && id < f.state().next_id));
    }

    #[test]
    fn shard_updates_take_changes_at_the_same_or_a_newer_epoch_and_ignore_older_ones() {
        let mut f = Fixture::new();
        f.apply(register(0, "a:1")).unwrap();
        f.apply(Some(Op::Bootstrap(BootstrapShards { shards: vec![update(0, 2, 2, 0)] }))).unwrap();
        let id = f.state().descriptors()[0].id;
        fn updates(f: &mut Fixture, shards: Vec<ShardInfo>) -> usize {
            match f.apply(Some(Op::UpdateShards(ShardUpdates { shards }))) {
                Ok(Reply::Updated(n)) => n,
                other => panic!("{other:?}"),
            }
        }
        let v = f.state().version;
        assert_eq!(updates(&mut f, vec![update(id, 2, 1, 9), update(id, 1, 9, 9)]), 0, "older epochs");
        assert_eq!(updates(&mut f, vec![update(id + 100, 9, 9, 9)]), 0, "an unknown shard");
        assert_eq!(f.state().version, v);
        assert_eq!(updates(&mut f, vec![update(id, 2, 2, 5)]), 1, "a new leader at the same epoch");
        assert_eq!(f.state().shards[&id].leader_node_id, 5);
        assert_eq!(updates(&mut f, vec![update(id, 2, 2, 5)]), 0, "the same again");
        assert_eq!(updates(&mut f, vec![update(id, 3, 1, 5)]), 1, "a newer version");
        assert_eq!(f.state().shards[&id].shard.as_ref().unwrap().epoch, Some(Epoch { version: 3, conf_ver: 1 }));
        assert_eq!(f.state().version, v + 2, "one bump per command that changed something");
    }

    #[test]
    fn an_empty_or_undecodable_command_is_refused() {
        let mut f = Fixture::new();
        assert!(matches!(f.apply(None), Err(CommandError::Invalid(_))));
        assert!(
            matches!(f.sm.undecodable("truncated".into()), Err(CommandError::Invalid(m)) if m.contains("truncated"))
        );
        assert_eq!(f.state().version, 0);
    }

    #[test]
    fn restoring_from_the_engine_gives_the_same_state_as_the_in_memory_mirror() {
        let mut f = Fixture::new();
        let a = registered(f.apply(register(0, "a:1")));
        let b = registered(f.apply(register(0, "b:1")));
        registered(f.apply(register(0, "c:1")));
        f.apply(bootstrap(4, 0)).unwrap();
        f.apply(set_state(a, NodeState::Draining)).unwrap();
        f.apply(set_state(b, NodeState::Removed)).unwrap();
        let mut moved = f.state().descriptors()[1].clone();
        moved.epoch = Some(Epoch { version: 1, conf_ver: 2 });
        moved.replicas.pop();
        let shards = vec![ShardInfo { shard: Some(moved), leader_node_id: a, down_replicas: 1 }];
        assert!(matches!(f.apply(Some(Op::UpdateShards(ShardUpdates { shards }))), Ok(Reply::Updated(1))));
        let restored = f.restore().unwrap();
        assert_eq!(*restored.state.read(), f.state());
        assert_eq!(*restored.version.borrow(), f.state().version, "watchers learn the restored version");
    }

    #[test]
    fn a_corrupt_node_or_shard_record_is_a_corrupt_error_not_a_panic() {
        for key in [node_key(1000), shard_key(1000), [NODE_PREFIX, &b"abc"[..]].concat()] {
            let mut f = Fixture::new();
            f.apply(register(0, "a:1")).unwrap();
            f.put_raw(&key, b"\xff\xff\xff");
            let err = f.restore().err().expect("loaded a corrupt record");
            assert!(matches!(err, ringkv_raft::Error::Corrupt(_)), "{key:?}: {err}");
        }
    }

    #[test]
    fn a_counter_that_is_not_8_bytes_is_a_corrupt_error_not_a_restart_of_ids() {
        for key in [NEXT_ID, VERSION] {
            let f = Fixture::new();
            f.put_raw(key, b"\x01\x02\x03");
            let err = ClusterState::load(&f.engine).expect_err("loaded a corrupt counter");
            assert!(matches!(err, ringkv_raft::Error::Corrupt(_)), "{err}");
        }
    }
}
