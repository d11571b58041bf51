//! Storenode configuration: every field has a default that suits a laptop,
//! and the whole struct can come from a TOML file.

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;

use ringkv_raft::RaftConfig;

use crate::keys::MAX_KEY_LEN_HARD;
/// Request limits, shared with routers.
pub use ringkv_common::limits::Limits;

/// A storenode's settings; missing fields take their defaults.
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorenodeConfig {
    /// This node's id, unique in the cluster. 0 (the default): placement
    /// allocates one at the first start, kept in the data dir's
    /// `identity.toml`; a static cluster (no placement) needs one.
    pub node_id: u64,
    /// gRPC address (ShardKv, Admin, Raft transport).
    pub listen_addr: SocketAddr,
    /// HTTP address for /metrics, /healthz, /readyz.
    pub http_addr: Option<SocketAddr>,
    /// Directory holding the node's RocksDB data and Raft state.
    pub data_dir: PathBuf,
    /// Other storenodes: node id -> gRPC address (static clusters; with
    /// placement, peers are learnt from its heartbeat answers).
    pub peers: Vec<Peer>,
    /// Placement members' gRPC addresses; empty: run without placement.
    pub placement: Vec<String>,
    /// The address other processes reach this node at (default: listen_addr).
    pub advertise_addr: Option<String>,
    /// Failure zone sent to placement, which spreads a shard's replicas over
    /// distinct zones when set; empty: no zone.
    pub zone: String,
    /// Relative weight when placement spreads replicas.
    pub capacity: u64,
    /// Interval between heartbeats to placement, in milliseconds (positive).
    pub heartbeat_ms: u64,
    /// How often the sizes of the shards this node leads are measured for
    /// placement's size-based split, in milliseconds (positive).
    pub size_check_ms: u64,
    /// The Raft engine's settings (`[raft]`).
    pub raft: RaftConfig,
    /// Request limits (`[limits]`).
    pub limits: Limits,
    /// ShardKv requests slower than this many milliseconds are logged once
    /// at WARN with their id and every hop (0: every request).
    pub slow_request_ms: u64,
}

/// Another storenode of a static cluster.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    /// The peer's node id: non-zero, not this node's.
    pub node_id: u64,
    /// The peer's gRPC address.
    pub address: String,
}

impl Default for StorenodeConfig {
    fn default() -> Self {
        StorenodeConfig {
            node_id: 0,
            listen_addr: ([127, 0, 0, 1], 20160).into(),
            http_addr: Some(([127, 0, 0, 1], 20180).into()),
            data_dir: PathBuf::from("ringkv-data/storenode"),
            peers: Vec::new(),
            placement: Vec::new(),
            advertise_addr: None,
            zone: String::new(),
            capacity: 1,
            heartbeat_ms: 1000,
            size_check_ms: 10_000,
            raft: RaftConfig::default(),
            limits: Limits::default(),
            slow_request_ms: 500,
        }
    }
}

/// Why a configuration could not be loaded or is not usable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The config file is not valid TOML for this struct.
    #[error("parsing {path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// The TOML error.
        source: toml::de::Error,
    },
    /// A setting is out of range or inconsistent (found by `validate`).
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl From<ConfigError> for ringkv_common::server::StartError {
    fn from(e: ConfigError) -> Self {
        ringkv_common::server::StartError::Config(Box::new(e))
    }
}

impl StorenodeConfig {
    /// Reads a config from a TOML file (without validating it).
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
        toml::from_str(&text).map_err(|source| ConfigError::Parse { path: path.into(), source })
    }

    /// Checks ids, intervals, limits and the Raft settings.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_string()));
        if self.node_id == 0 && self.placement.is_empty() {
            return bad("node_id must be non-zero without placement (with placement, 0 lets it allocate one)");
        }
        if self.heartbeat_ms == 0 || self.capacity == 0 || self.size_check_ms == 0 {
            return bad("heartbeat_ms, size_check_ms and capacity must be positive");
        }
        if self.limits.max_key_bytes == 0 || self.limits.max_key_bytes > MAX_KEY_LEN_HARD {
            return bad("limits.max_key_bytes must be between 1 and 65536");
        }
        if self.limits.max_value_bytes == 0 || self.limits.max_value_bytes > 64 << 20 {
            return bad("limits.max_value_bytes must be between 1 and 64 MiB");
        }
        self.raft.validate().map_err(|e| ConfigError::Invalid(e.0))?;
        if self.peers.iter().any(|p| p.node_id == 0 || p.node_id == self.node_id) {
            return bad("peers must have non-zero ids different from node_id");
        }
        Ok(())
    }
}
