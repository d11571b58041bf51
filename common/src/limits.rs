//! Request limits: how big a key, a value or a batch may be, and how long a
//! request may wait. Storenodes and routers enforce the same ones.

use std::time::Duration;

use serde::Deserialize;

/// Size and time limits of requests; every field has a default, and the
/// struct reads from TOML (`[limits]` in a storenode's config).
#[derive(Clone, Debug, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Longest key accepted, in bytes.
    pub max_key_bytes: usize,
    /// Longest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Most keys in one batch request.
    pub max_batch_keys: usize,
    /// How long a request may wait for Raft before the outcome is reported unknown.
    pub request_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_key_bytes: 4096, max_value_bytes: 1 << 20, max_batch_keys: 1024, request_timeout_ms: 5000 }
    }
}

impl Limits {
    /// [`Limits::request_timeout_ms`] as a duration.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}
