//! ringkv storenode: hosts replicas of many shards (Raft groups) over one
//! RocksDB, replicates their writes to other storenodes, and serves the
//! ShardKv API.
//!
//! - [`engine`] and [`keys`]: the shared RocksDB and its key layout.
//! - [`raft`]: the multi-Raft machinery (storage, loop, snapshots, transport).
//! - [`shard`]: the key-value state machine of one shard.
//! - [`service`]: gRPC handlers; [`server`] wires everything into a process.
//! - [`heartbeat`]: registration and reports to placement.
//!
//! What routers and other processes share with it (connections, the placement
//! client, limits, server plumbing, wire errors) lives in `ringkv-common`.

// tonic's `Status` is large, and gRPC handlers return it by value: boxing
// it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod engine;
pub mod error;
pub mod heartbeat;
pub mod keys;
pub mod metrics;
pub mod raft;
pub mod server;
pub mod service;
pub mod shard;
pub mod testkit;

/// Outgoing connections, from `ringkv-common` (the Raft transport dials peers through it).
pub use ringkv_common::net;

pub use config::StorenodeConfig;
pub use error::{Error, Result};
pub use server::{Storenode, StorenodeHandle};
