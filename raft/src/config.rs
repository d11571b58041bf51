//! The engine's settings, with every default in one place.
//!
//! A process reads [`RaftConfig`] from its TOML file (`[raft]`) or flags; the
//! loop, the transport and the snapshot workers take their limits from it.

use std::time::Duration;

use serde::Deserialize;

/// Default tick interval: every replica's logical clock advances this often.
pub const DEFAULT_TICK_MS: u64 = 100;

/// Tunables of the multi-Raft engine. Every field has a default that suits a
/// laptop or a small VM; TiKV's defaults are noted where they differ.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RaftConfig {
    /// Milliseconds per tick (one timer for all replicas).
    pub tick_ms: u64,
    /// Election timeout in ticks (randomised between this and twice this).
    pub election_ticks: usize,
    /// Leader heartbeat interval in ticks.
    pub heartbeat_ticks: usize,
    /// Compact a replica's log once it holds more applied entries than this;
    /// half of them are kept so a follower slightly behind catches up by log.
    pub compact_log_entries: u64,
    /// ... or once its log is larger than this many bytes (then everything
    /// applied goes, unless a follower is still receiving a snapshot).
    pub compact_log_bytes: u64,
    /// Largest append message raft-rs builds for one follower.
    pub max_size_per_msg: u64,
    /// Append messages in flight to one follower.
    pub max_inflight_msgs: usize,
    /// Bytes of proposed-but-uncommitted log a leader accepts before new
    /// proposals are refused as busy (raft-rs `max_uncommitted_size`).
    pub max_uncommitted_bytes: u64,
    /// Bytes of committed entries handed to apply per Ready (raft-rs
    /// `max_committed_size_per_ready`), so one replica cannot monopolise a pass.
    pub max_committed_bytes_per_ready: u64,
    /// Requests the loop's inbox holds; past it callers get a busy answer.
    pub inbox_capacity: usize,
    /// Snapshot files generated at once by this node.
    pub max_snapshot_generations: usize,
    /// Snapshots streamed to peers at once by this node (TiKV: 32).
    pub max_snapshot_sends: usize,
    /// Snapshots received at once by this node (TiKV: 32).
    pub max_snapshot_receives: usize,
    /// Snapshot bytes per second this node sends and receives, each way
    /// (TiKV: 100 MiB/s); 0 means unlimited.
    pub snapshot_bytes_per_sec: u64,
}

impl Default for RaftConfig {
    fn default() -> Self {
        RaftConfig {
            tick_ms: DEFAULT_TICK_MS,
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_log_entries: 10_000,
            compact_log_bytes: 64 << 20,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            max_uncommitted_bytes: 64 << 20,
            max_committed_bytes_per_ready: 16 << 20,
            inbox_capacity: 65_536,
            max_snapshot_generations: 2,
            max_snapshot_sends: 4,
            max_snapshot_receives: 4,
            snapshot_bytes_per_sec: 100 << 20,
        }
    }
}

/// Why a [`RaftConfig`] cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("invalid raft config: {0}")]
pub struct InvalidConfig(pub String);

impl RaftConfig {
    /// The tick interval.
    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// Checks the settings against each other.
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        let bad = |m: &str| Err(InvalidConfig(m.to_string()));
        if self.tick_ms == 0 || self.heartbeat_ticks == 0 {
            return bad("raft.tick_ms and raft.heartbeat_ticks must be non-zero");
        }
        if self.election_ticks <= self.heartbeat_ticks {
            return bad("raft.election_ticks must exceed raft.heartbeat_ticks");
        }
        if self.compact_log_entries < 2 {
            return bad("raft.compact_log_entries must be at least 2");
        }
        if self.compact_log_bytes < 4096 {
            return bad("raft.compact_log_bytes must be at least 4096");
        }
        if self.max_size_per_msg == 0 || self.max_inflight_msgs == 0 || self.inbox_capacity == 0 {
            return bad("raft.max_size_per_msg, max_inflight_msgs and inbox_capacity must be non-zero");
        }
        if self.max_uncommitted_bytes < self.max_size_per_msg || self.max_committed_bytes_per_ready == 0 {
            return bad(
                "raft.max_uncommitted_bytes must be at least max_size_per_msg; max_committed_bytes_per_ready non-zero",
            );
        }
        if self.max_snapshot_generations == 0 || self.max_snapshot_sends == 0 || self.max_snapshot_receives == 0 {
            return bad("raft.max_snapshot_generations, max_snapshot_sends and max_snapshot_receives must be non-zero");
        }
        Ok(())
    }
}
