//! ringkv router: the stateless front door. It keeps a copy of the shard map
//! (from placement, refreshed by its watch), hashes each key to its shard,
//! sends the request to the shard's leader and retries what can be retried
//! within the caller's deadline. Any number of routers can run at once.
//!
//! - [`shard_map`]: the cached map and its refresher.
//! - [`routing`]: one call to a shard leader, with retries; [`batch`]: the
//!   Batch stream that carries single-key calls to a storenode.
//! - [`service`]: the public `Kv` gRPC service.
//! - [`http`]: the HTTP/JSON gateway; [`metrics`]: what it counts.
//! - [`trace`]: a call's id and hops, for its span and the slow-request log.
//! - [`console`]: the web console at `/ui`.
//! - [`server`]: wires it into a process.

// gRPC `Status` and axum `Response` are large and returned by value, as
// their frameworks intend.
#![allow(clippy::result_large_err)]
#![warn(missing_docs)]

pub mod batch;
pub mod console;
pub mod http;
pub mod metrics;
pub mod routing;
pub mod server;
pub mod service;
pub mod shard_map;
pub mod trace;

pub use server::{RouterConfig, RouterHandle, RouterServer};
