//! ringkv placement: a small Raft group (1 or 3 members) that owns the
//! cluster's metadata — storenodes, shards, ids — and bootstraps the initial
//! shards once enough storenodes have registered.
//!
//! It runs on the multi-Raft engine (`ringkv-raft`) like the storenode: the
//! same loop, storage, snapshots and transport drive one group whose state
//! machine is [`state::PlacementStateMachine`] and whose descriptor is
//! [`group::PlacementGroup`]. Nothing about consensus is written twice.
//!
//! - [`group`]: the placement group's descriptor.
//! - [`state`]: the replicated state and its state machine.
//! - [`ring`]: where replicas go (consistent-hash ring of nodes).
//! - [`operator`]: how a replica moves, as replicated state.
//! - [`service`]: the Placement gRPC API.
//! - [`scheduler`]: the leader's background work: bootstrap, the checkers
//!   (repair, decommission, balance, leaders) and the operators' driver.
//! - [`metrics`]: placement's metrics.
//! - [`server`]: wires it into a process.

// tonic's `Status` is large, and gRPC handlers return it by value: boxing
// it everywhere would only add noise.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

pub mod group;
pub mod metrics;
pub mod operator;
pub mod ring;
pub mod scheduler;
pub mod server;
pub mod service;
pub mod state;

use std::time::Duration;

pub use server::{PlacementConfig, PlacementHandle, PlacementServer};

pub use group::GROUP_ID;

/// How placement shapes and watches the cluster.
#[derive(Clone, Debug)]
pub struct PlacementSettings {
    /// Replicas per shard (and storenodes needed before bootstrap).
    pub replication_factor: usize,
    /// Shards created at bootstrap.
    pub initial_shards: u64,
    /// A storenode silent for longer than this is DOWN for good: its
    /// replicas are replaced on other nodes (CockroachDB's
    /// `server.time_until_store_dead`, PD's `max-store-down-time`).
    pub down_after: Duration,
    /// A storenode silent for longer than this is shown DOWN (before its
    /// replicas are replaced, at `down_after`).
    pub heartbeat_timeout: Duration,
    /// `down_after` for a node in maintenance (planned downtime).
    pub maintenance_down_after: Duration,
    /// How long a proposal or leadership check waits for the Raft group;
    /// also the scheduler's timeout for one call to a storenode.
    pub request_timeout: Duration,
    /// Operators in flight in the whole cluster.
    pub max_operators: usize,
    /// Operators in flight that add to or remove from one node.
    pub max_operators_per_node: usize,
    /// Replicas being added (receiving a snapshot) on one node at a time.
    pub max_snapshots_per_node: usize,
    /// How long an operator may take to add its learner (and any step
    /// without a timeout of its own) before it rolls back.
    pub operator_step_timeout: Duration,
    /// How long a learner may take to catch up before its operator rolls back.
    pub catch_up_timeout: Duration,
    /// A shard whose data passes this many bytes is split at its middle
    /// (0: never by size). TiKV's region-split-size is in the same range.
    pub shard_max_bytes: u64,
    /// A shard serving more requests per second than this ...
    pub split_qps: f64,
    /// ... in this many leader reports in a row (about a second apart) is
    /// split where its load halves (0: never by load; TiKV's load-based
    /// split: 3,000 QPS, 10 detections).
    pub split_detections: u32,
    /// Splits started per scheduling pass (shards too big or too hot).
    pub max_splits_per_pass: usize,
}

impl PlacementSettings {
    /// When a silent node is shown DOWN: the heartbeat timeout, or the
    /// down timeout when that is shorter.
    pub fn shown_down_after(&self) -> Duration {
        self.heartbeat_timeout.min(self.down_after)
    }
}

impl Default for PlacementSettings {
    fn default() -> Self {
        PlacementSettings {
            replication_factor: 3,
            initial_shards: 16,
            down_after: Duration::from_secs(5 * 60),
            heartbeat_timeout: Duration::from_secs(10),
            maintenance_down_after: Duration::from_secs(30 * 60),
            request_timeout: Duration::from_secs(5),
            max_operators: 16,
            max_operators_per_node: 2,
            max_snapshots_per_node: 1,
            operator_step_timeout: Duration::from_secs(60),
            catch_up_timeout: Duration::from_secs(10 * 60),
            shard_max_bytes: 128 << 20,
            split_qps: 3000.0,
            split_detections: 10,
            max_splits_per_pass: 4,
        }
    }
}
