//! Storenode configuration: every field has a default that suits a laptop,
//! and the whole struct can come from a TOML file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use crate::keys::MAX_KEY_LEN_HARD;
/// Request limits, shared with routers.
pub use ringkv_common::limits::Limits;

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorenodeConfig {
    pub node_id: u64,
    /// gRPC address (ShardKv, Admin, Raft transport).
    pub listen_addr: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz.
    pub http_addr: Option<SocketAddr>,
    pub data_dir: PathBuf,
    /// Other storenodes: node id -> gRPC address (static clusters; with
    /// placement, peers are learnt from its heartbeat answers).
    pub peers: Vec<Peer>,
    /// Placement members' gRPC addresses; empty: run without placement.
    pub placement: Vec<String>,
    /// The address other processes reach this node at (default: listen_addr).
    pub advertise_addr: Option<String>,
    pub zone: String,
    /// Relative weight when placement spreads replicas.
    pub capacity: u64,
    pub heartbeat_ms: u64,
    pub raft: RaftSettings,
    pub limits: Limits,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub node_id: u64,
    pub address: String,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RaftSettings {
    pub tick_ms: u64,
    /// Election timeout in ticks (randomised between this and twice this).
    pub election_ticks: usize,
    pub heartbeat_ticks: usize,
    /// Compact a replica's log past this many applied entries.
    pub compact_log_entries: u64,
    /// ... or once its log holds more than this many bytes.
    pub compact_log_bytes: u64,
}

impl Default for StorenodeConfig {
    fn default() -> Self {
        StorenodeConfig {
            node_id: 1,
            listen_addr: ([127, 0, 0, 1], 20160).into(),
            http_addr: Some(([127, 0, 0, 1], 20180).into()),
            data_dir: PathBuf::from("ringkv-data/storenode-1"),
            peers: Vec::new(),
            placement: Vec::new(),
            advertise_addr: None,
            zone: String::new(),
            capacity: 1,
            heartbeat_ms: 1000,
            raft: RaftSettings::default(),
            limits: Limits::default(),
        }
    }
}

impl Default for RaftSettings {
    fn default() -> Self {
        RaftSettings {
            tick_ms: 100,
            election_ticks: 10,
            heartbeat_ticks: 2,
            compact_log_entries: 10_000,
            compact_log_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("parsing {path}: {source}")]
    Parse { path: PathBuf, source: toml::de::Error },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl From<ConfigError> for ringkv_common::server::StartError {
    fn from(e: ConfigError) -> Self {
        ringkv_common::server::StartError::Config(Box::new(e))
    }
}

impl StorenodeConfig {
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_id == 0 {
            return bad("node_id must be non-zero");
        }
        if self.heartbeat_ms == 0 || self.capacity == 0 {
            return bad("heartbeat_ms and capacity must be positive");
        }
        if self.limits.max_key_bytes == 0 || self.limits.max_key_bytes > MAX_KEY_LEN_HARD {
            return bad("limits.max_key_bytes must be between 1 and 65536");
        }
        if self.limits.max_value_bytes == 0 || self.limits.max_value_bytes > 64 << 20 {
            return bad("limits.max_value_bytes must be between 1 and 64 MiB");
        }
        if self.raft.tick_ms == 0 || self.raft.heartbeat_ticks == 0 {
            return bad("raft.tick_ms and raft.heartbeat_ticks must be non-zero");
        }
        if self.raft.election_ticks <= self.raft.heartbeat_ticks {
            return bad("raft.election_ticks must exceed raft.heartbeat_ticks");
        }
        if self.raft.compact_log_entries < 2 {
            return bad("raft.compact_log_entries must be at least 2");
        }
        if self.raft.compact_log_bytes < 4096 {
            return bad("raft.compact_log_bytes must be at least 4096");
        }
        if self.peers.iter().any(|p| p.node_id == 0 || p.node_id == self.node_id) {
            return bad("peers must have non-zero ids different from node_id");
        }
        Ok(())
    }
}
