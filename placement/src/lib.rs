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
//! - [`service`]: the Placement gRPC API.
//! - [`scheduler`]: the leader's background work (bootstrap).
//! - [`server`]: wires it into a process.

#![warn(missing_docs)]

pub mod group;
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
    /// A storenode silent for longer than this is shown DOWN.
    pub down_after: Duration,
    /// How long a proposal or leadership check waits for the Raft group.
    pub request_timeout: Duration,
}

impl Default for PlacementSettings {
    fn default() -> Self {
        PlacementSettings {
            replication_factor: 3,
            initial_shards: 16,
            down_after: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}
