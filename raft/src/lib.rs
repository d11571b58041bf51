//! ringkv-raft: the multi-Raft engine. Many Raft groups (a storenode's
//! shards, or the placement service's one group) driven by one loop over one
//! RocksDB, generic over what a group replicates.
//!
//! # Raft in one page
//!
//! A Raft group is a few replicas that agree on one ordered log of commands.
//! One replica is the *leader*: it appends proposals to its log, sends them to
//! the *followers*, and once a majority (a quorum) has persisted an entry, the
//! entry is *committed* and every replica applies it, in log order, to its
//! copy of the state machine. A replica that hears nothing from a leader for
//! an *election timeout* becomes a *candidate* and asks for votes; a majority
//! makes it leader of a new *term*. Because any two majorities intersect,
//! a new leader always holds every committed entry, so an acknowledged write
//! survives the loss of any minority. *Learners* receive the log but do not
//! vote (used to bring a new replica up to date before it counts). Membership
//! changes go through the log too; ringkv uses *joint consensus*
//! (ConfChangeV2): during a change both the old and the new majority must
//! agree. A replica too far behind (its next entry already compacted away)
//! gets a *snapshot* of the state instead of the log.
//!
//! # How ringkv maps it
//!
//! - [`raft::RawNode`] (tikv/raft-rs) is the pure consensus state machine: it
//!   decides, and does no IO. Everything else is here.
//! - [`engine`] and [`keys`]: the node's one RocksDB and the engine's keys in it.
//! - [`storage::RaftStorage`]: each replica's log and hard state in the `raft`
//!   CF, conf state and applied index in the `meta` CF.
//! - [`raft_loop`]: the single thread that steps, ticks and persists all
//!   replicas, with one fsync per pass for all of them, then sends and applies
//!   (the order matters for safety; see that module). Its inbox API is
//!   [`raft_loop::LoopRequest`] / [`raft_loop::LoopHandle`].
//! - [`StateMachine`] and [`Group`]: what a group replicates and what it is.
//!   The storenode's shard state machine and placement's are two users.
//! - [`snapshot`]: snapshot files, generated from a RocksDB snapshot and
//!   streamed in chunks; installed off the loop thread.
//! - [`transport`]: batched gRPC streams between nodes.
//! - [`node`]: all of the above started together, for any state machine.
//! - [`config`], [`metrics`], [`error`]: settings (every default in one
//!   place), Prometheus metrics, the typed error.
//!
//! Replica ids are Raft ids and are unique across the cluster; a replica
//! belongs to one group and lives on one node. A node hosts at most one
//! replica of a group; a removed replica leaves a tombstone so that its old
//! traffic can never bring it back.

#![warn(missing_docs)]
// tonic's `Status` is large, and gRPC handlers return it by value: boxing
// it everywhere would only add noise.
#![allow(clippy::result_large_err)]

pub mod config;
pub mod engine;
pub mod error;
pub mod keys;
pub mod metrics;
pub mod node;
pub mod raft_loop;
pub mod snapshot;
pub mod state_machine;
pub mod storage;
pub mod transport;

#[cfg(test)]
pub(crate) mod testing;

pub use config::RaftConfig;
pub use engine::{Cf, Engine};
pub use error::{Error, Result};
pub use metrics::RaftMetrics;
pub use node::HAND_OFF_TIMEOUT;
pub use raft_loop::{LoopHandle, LoopRequest, ReadMode, Timed, Timings, ANSWER_GRACE};
pub use ringkv_proto::engine::{Member, MemberRole};
pub use state_machine::{ApplyContext, Group, Split, StateMachine, StateRange};

use std::fmt::Write as _;

/// raft-rs logs through slog; forward its records to `tracing`.
struct TracingDrain;

struct KvCollector(String);

impl slog::Serializer for KvCollector {
    fn emit_arguments(&mut self, key: slog::Key, val: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={val}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(&self, record: &slog::Record<'_>, values: &slog::OwnedKVList) -> Result<(), slog::Never> {
        let mut kv = KvCollector(String::new());
        let _ = slog::KV::serialize(&record.kv(), record, &mut kv);
        let _ = slog::KV::serialize(values, record, &mut kv);
        let msg = record.msg();
        match record.level() {
            slog::Level::Critical | slog::Level::Error => tracing::error!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Warning => tracing::warn!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Info => tracing::info!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Debug => tracing::debug!(target: "raft", "{msg}{}", kv.0),
            slog::Level::Trace => tracing::trace!(target: "raft", "{msg}{}", kv.0),
        }
        Ok(())
    }
}

/// A slog logger for raft-rs that forwards to `tracing`.
pub fn logger() -> slog::Logger {
    slog::Logger::root(TracingDrain, slog::o!())
}
