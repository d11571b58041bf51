//! A client of the placement service that finds its leader: it tries the last
//! known leader, follows `NotLeader` answers (which carry the leader's
//! address), and moves through the configured members on connection errors,
//! until a deadline. Storenodes (heartbeats), routers (the shard map) and the
//! CLI (ops commands) all use it.

use std::collections::HashMap;
use std::future::Future;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringkv_proto::placement::placement_client::PlacementClient as Grpc;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::wire_error::WireError;

/// A client of the placement group: any member's address will do, calls go
/// to the leader. Cheap to share behind an `Arc`; connections are cached.
pub struct PlacementClient {
    members: Vec<String>,
    leader: Mutex<Option<String>>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl PlacementClient {
    /// A client of the placement members at `members` (HOST:PORT each);
    /// connects lazily.
    pub fn new(members: Vec<String>) -> Self {
        PlacementClient { members, leader: Mutex::new(None), channels: Mutex::new(HashMap::new()) }
    }

    /// The configured members' addresses.
    pub fn members(&self) -> &[String] {
        &self.members
    }

    async fn channel(&self, addr: &str) -> Result<Channel, Status> {
        if let Some(c) = self.channels.lock().get(addr) {
            return Ok(c.clone());
        }
        let ch = crate::net::connect(addr)
            .await
            .map_err(|e| Status::unavailable(format!("placement {addr} unreachable: {e}")))?;
        self.channels.lock().insert(addr.to_string(), ch.clone());
        Ok(ch)
    }

    /// Runs `f` against the placement leader, within `timeout`.
    pub async fn call<T, F, Fut>(&self, timeout: Duration, f: F) -> Result<T, Status>
    where
        F: Fn(Grpc<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        if self.members.is_empty() {
            return Err(Status::invalid_argument("no placement address configured"));
        }
        let deadline = Instant::now() + timeout;
        let mut next = 0usize;
        let mut backoff = Duration::from_millis(20);
        loop {
            let addr = self.leader.lock().clone().unwrap_or_else(|| {
                next += 1;
                self.members[(next - 1) % self.members.len()].clone()
            });
            let res = match self.channel(&addr).await {
                Ok(ch) => {
                    let call = f(Grpc::new(ch));
                    match tokio::time::timeout(deadline.saturating_duration_since(Instant::now()), call).await {
                        Ok(r) => r,
                        Err(_) => Err(Status::deadline_exceeded("placement: no answer in time")),
                    }
                }
                Err(e) => Err(e),
            };
            let status = match res {
                Ok(r) => {
                    *self.leader.lock() = Some(addr);
                    return Ok(r.into_inner());
                }
                Err(s) => s,
            };
            match WireError::from_status(&status) {
                WireError::NotLeader { leader_address, .. } if !leader_address.is_empty() => {
                    *self.leader.lock() = Some(leader_address);
                }
                WireError::NotLeader { .. } | WireError::Retryable(_) => *self.leader.lock() = None,
                WireError::Transport { code: Code::Unavailable | Code::Unknown | Code::Cancelled, .. } => {
                    self.channels.lock().remove(&addr);
                    *self.leader.lock() = None;
                }
                _ => return Err(status),
            }
            if Instant::now() + backoff >= deadline {
                return Err(status);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }
}
