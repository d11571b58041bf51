//! What every ringkv process shares, so that a process which only routes
//! (the router, the CLI's ops commands) depends on neither the storenode
//! crate nor RocksDB.
//!
//! - [`coalesce`]: batching what queued together, the Batch stream's rule at both ends.
//! - [`cluster_view`]: the nodes, shards, operators and health the CLI and the console show.
//! - [`net`]: outgoing gRPC connections, sent from the process's own address.
//! - [`placement_client`]: a client of the placement service that finds its leader.
//! - [`limits`]: request size and time limits a storenode or router enforces.
//! - [`server`]: binding listeners and running a process's servers and tasks.
//! - [`wire_error`]: the typed errors a storenode answers, read from a gRPC status.
//! - [`hashing`]: where a key sits on the ring (hash tags, ranges, prefixes).
//! - [`metrics`]: registering and rendering Prometheus metrics, and the
//!   series every process exports (process collector, build info).
//! - [`shard_health`]: what is wrong with a shard (leaderless, under-replicated, ...).
//! - [`trace`]: request ids, `traceparent`, and the storenode's timing header.

// tonic's `Status` is large, and gRPC calls return it by value: boxing it
// everywhere would only add noise.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

pub mod cluster_view;
pub mod coalesce;
pub mod hashing;
pub mod limits;
pub mod metrics;
pub mod net;
pub mod placement_client;
pub mod server;
pub mod shard_health;
pub mod trace;
pub mod wire_error;

pub use limits::Limits;
pub use placement_client::PlacementClient;
pub use server::{Serving, StartError};
pub use wire_error::WireError;
