//! ringkv storenode: hosts replicas of many shards (Raft groups) over one
//! RocksDB, replicates their writes to other storenodes, and serves the
//! ShardKv API.
//!
//! - [`ringkv_raft`] (its own crate): the multi-Raft engine over the node's
//!   one RocksDB; this crate plugs the shard state machine into it.
//! - [`keys`]: the layout of shard data and de-dup records.
//! - [`shard`]: the key-value state machine of one shard and its descriptor.
//! - [`service`]: gRPC handlers; [`server`] wires everything into a process.
//! - [`identity`]: the node id and cluster id kept in the data dir.
//! - [`heartbeat`]: registration and reports to placement.
//!
//! What routers and other processes share with it (connections, the placement
//! client, limits, server plumbing, wire errors) lives in `ringkv-common`.

// tonic's `Status` is large, and gRPC handlers return it by value: boxing
// it everywhere would only add noise.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

pub mod config;
pub mod error;
pub mod heartbeat;
pub mod identity;
pub mod keys;
pub mod load;
pub mod metrics;
pub mod server;
pub mod service;
pub mod shard;
pub mod sizes;
pub mod testkit;

/// The engine crate, re-exported for the processes built on the storenode.
pub use ringkv_raft as raft;
pub use ringkv_raft::engine;

pub use config::StorenodeConfig;
pub use error::{Error, Result};
pub use server::{Storenode, StorenodeHandle};
