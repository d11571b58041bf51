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
//! | `n/` ++ node id (BE) | `Node` (stored state: UP, DRAINING or REMOVED) |
//! | `s/` ++ shard id (BE) | `ShardInfo` |
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
    placement_command::Op, Node, NodeState, PlacementCommand, RegisterNodeRequest, SetNodeStateRequest, ShardInfo,
};
use ringkv_raft::engine::{Cf, Engine};
use ringkv_raft::{ApplyContext, Result, StateMachine};

use crate::group::PlacementGroup;
use tokio::sync::watch;

const NEXT_ID: &[u8] = b"c/next_id";
const VERSION: &[u8] = b"c/version";
const BOOTSTRAPPED: &[u8] = b"c/bootstrapped";
const NODE_PREFIX: &[u8] = b"n/";
const SHARD_PREFIX: &[u8] = b"s/";
/// Ids below this are left for hand-made ids (tests, the placement members).
const FIRST_ID: u64 = 1000;

fn node_key(id: u64) -> Vec<u8> {
    [NODE_PREFIX, &id.to_be_bytes()].concat()
}

fn shard_key(id: u64) -> Vec<u8> {
    [SHARD_PREFIX, &id.to_be_bytes()].concat()
}

fn be_u64(b: &[u8]) -> u64 {
    b.try_into().map(u64::from_be_bytes).unwrap_or(0)
}

/// What placement knows, as of the last applied entry.
#[derive(Clone, Debug, Default)]
pub struct ClusterState {
    pub version: u64,
    pub bootstrapped: bool,
    pub next_id: u64,
    pub nodes: BTreeMap<u64, Node>,
    pub shards: BTreeMap<u64, ShardInfo>,
}

impl ClusterState {
    /// Reads the whole state from the engine.
    pub fn load(engine: &Engine) -> Result<ClusterState> {
        let mut st = ClusterState {
            version: engine.get(Cf::Data, VERSION)?.map_or(0, |v| be_u64(&v)),
            bootstrapped: engine.get(Cf::Data, BOOTSTRAPPED)?.is_some(),
            next_id: engine.get(Cf::Data, NEXT_ID)?.map_or(FIRST_ID, |v| be_u64(&v)),
            ..Default::default()
        };
        for (prefix, is_node) in [(NODE_PREFIX, true), (SHARD_PREFIX, false)] {
            let hi = [prefix, &[0xff; 9][..]].concat();
            let mut it = engine.iter_range(Cf::Data, prefix, &hi);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let id = be_u64(&k[prefix.len()..]);
                let corrupt = |e: prost::DecodeError| {
                    ringkv_raft::Error::Corrupt(format!("placement record {}: {e}", String::from_utf8_lossy(k)))
                };
                if is_node {
                    st.nodes.insert(id, Node::decode(v).map_err(corrupt)?);
                } else {
                    st.shards.insert(id, ShardInfo::decode(v).map_err(corrupt)?);
                }
                it.next();
            }
            it.status()?;
        }
        Ok(st)
    }

    pub fn descriptors(&self) -> Vec<ShardDescriptor> {
        self.shards.values().filter_map(|s| s.shard.clone()).collect()
    }
}

/// Why a placement command was refused (every replica refuses it the same way).
#[derive(Debug, Clone, thiserror::Error, PartialEq)]
pub enum CommandError {
    #[error("node {0} is not registered")]
    UnknownNode(u64),
    #[error("node {0} was removed; a removed node cannot come back")]
    NodeRemoved(u64),
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug)]
pub enum Reply {
    Registered(u64),
    Node(Node),
    Bootstrapped(bool),
    Updated(usize),
}

pub type CommandResult = std::result::Result<Reply, CommandError>;

/// Shared between the state machine (writer, on the Raft loop thread) and the
/// gRPC services (readers).
pub struct Shared {
    pub state: RwLock<ClusterState>,
    /// The map version, for watchers.
    pub version: watch::Sender<u64>,
}

impl Shared {
    pub fn new() -> Arc<Shared> {
        Arc::new(Shared { state: RwLock::new(ClusterState::default()), version: watch::channel(0).0 })
    }
}

pub struct PlacementStateMachine {
    shared: Arc<Shared>,
}

impl PlacementStateMachine {
    pub fn new(shared: Arc<Shared>) -> Self {
        PlacementStateMachine { shared }
    }

    fn alloc(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState) -> u64 {
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
        let id = match r.node_id {
            0 => match st.nodes.values().find(|n| n.address == r.address && n.state != NodeState::Removed as i32) {
                // The same address registering again without its id (e.g. it
                // lost its id file): it is the same node.
                Some(n) => n.id,
                None => Self::alloc(ctx, st),
            },
            id => id,
        };
        let state = match st.nodes.get(&id) {
            Some(n) if n.state == NodeState::Removed as i32 => return Err(CommandError::NodeRemoved(id)),
            Some(n) => n.state,
            None => NodeState::Up as i32,
        };
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
        node.state = r.state;
        Self::put_node(ctx, st, node.clone());
        Self::bump(ctx, st);
        Ok(Reply::Node(node))
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
        let mut changed = 0;
        for u in updates {
            let Some(new) = u.shard.as_ref() else { continue };
            let Some(cur) = st.shards.get(&new.id) else { continue };
            let cur_epoch = cur.shard.as_ref().and_then(|d| d.epoch).unwrap_or_default();
            let new_epoch = new.epoch.unwrap_or_default();
            let older = (new_epoch.version, new_epoch.conf_ver) < (cur_epoch.version, cur_epoch.conf_ver);
            if older || *cur == u {
                continue;
            }
            Self::put_shard(ctx, st, u);
            changed += 1;
        }
        if changed > 0 {
            Self::bump(ctx, st);
        }
        Ok(Reply::Updated(changed))
    }

    fn bump(ctx: &mut ApplyContext<'_, PlacementGroup>, st: &mut ClusterState) {
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
