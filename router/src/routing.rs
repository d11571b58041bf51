//! Sends one request to the leader of the shard that owns a key, and retries
//! what can be retried inside the caller's deadline: `NotLeader` (go to the
//! hinted leader), `EpochMismatch` (take the newer descriptor), connection
//! errors and `Retryable` (another replica, jittered backoff). A write keeps
//! one request id across retries, so the shard applies it at most once.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use ringkv_common::net::connect;
use ringkv_common::wire_error::WireError;
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::RequestContext;
use ringkv_proto::meta::ShardDescriptor;
use tokio::sync::Semaphore;
use tonic::transport::Channel;
use tonic::Status;

use crate::shard_map::ShardMapCache;

/// Why a routed call failed, in the terms of the public API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    /// Nothing was applied (no leader, no quorum, no shard map in time).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed after a write left: it may or may not be applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// How one API call is routed.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// Kept across every retry of a write so the shard applies it at most
    /// once; clients that retry through another router send their own.
    pub request_id: Vec<u8>,
    pub is_write: bool,
    pub deadline: Instant,
}

impl CallOptions {
    pub fn read(deadline: Instant) -> Self {
        CallOptions { request_id: Vec::new(), is_write: false, deadline }
    }
}

/// What a call is routed by.
#[derive(Clone, Copy)]
pub enum Target<'a> {
    /// The shard owning this key.
    Key(&'a [u8]),
    /// This shard (scans walk shards by id).
    Shard(u64),
}

pub struct Router {
    pub map: Arc<ShardMapCache>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Calls in flight; past the limit new ones are shed (Overloaded) rather
    /// than queued, so an overloaded cluster answers fast instead of late.
    inflight: Semaphore,
}

impl Router {
    pub fn new(map: Arc<ShardMapCache>, max_inflight: usize) -> Self {
        Router { map, channels: Mutex::new(HashMap::new()), inflight: Semaphore::new(max_inflight.max(1)) }
    }

    async fn client(&self, addr: &str) -> Result<ShardKvClient<Channel>, WireError> {
        if let Some(c) = self.channels.lock().get(addr) {
            return Ok(ShardKvClient::new(c.clone()));
        }
        let ch = connect(addr).await.map_err(|e| WireError::Retryable(format!("connect {addr}: {e}")))?;
        self.channels.lock().insert(addr.to_string(), ch.clone());
        Ok(ShardKvClient::new(ch))
    }

    /// Runs `f` against the leader of the target shard
    /// until it succeeds, fails for good, or `deadline` passes.
    pub async fn call<T, F, Fut>(&self, target: Target<'_>, req: &CallOptions, f: F) -> Result<T, RouteError>
    where
        F: Fn(ShardKvClient<Channel>, RequestContext) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let _permit = self
            .inflight
            .try_acquire()
            .map_err(|_| RouteError::Overloaded("too many requests in flight on this router".into()))?;
        let (request_id, is_write, deadline) = (req.request_id.as_slice(), req.is_write, req.deadline);
        let mut backoff = Duration::from_millis(10);
        let mut attempt = 0usize;
        // Whether a write may have been applied by an attempt that failed.
        let mut maybe_applied = false;
        loop {
            let shard = match target {
                Target::Key(k) => self.map.shard_for(k),
                Target::Shard(id) => self.map.shards().into_iter().find(|s| s.id == id),
            };
            let err = match shard {
                None => {
                    self.map.request_refresh();
                    WireError::Retryable("no shard map yet".into())
                }
                Some(shard) => match self.attempt(&shard, attempt, request_id, deadline, &f).await {
                    Ok(r) => return Ok(r),
                    Err(e) => {
                        self.learn(&shard, &e);
                        e
                    }
                },
            };
            attempt += 1;
            match &err {
                WireError::InvalidArgument { field, reason } => {
                    return Err(RouteError::Invalid { field: field.clone(), reason: reason.clone() })
                }
                // Ambiguous answers are retried with the same request id: a
                // success or a typed refusal later settles the outcome.
                WireError::Ambiguous(_) => maybe_applied = true,
                WireError::NotLeader { .. }
                | WireError::EpochMismatch(_)
                | WireError::KeyNotInShard { .. }
                | WireError::ShardNotFound(_)
                | WireError::Retryable(_)
                | WireError::Busy(_) => {}
                other if is_write && maybe_applied => {
                    return Err(RouteError::Ambiguous(format!(
                        "an earlier attempt may have been applied; then: {other}"
                    )))
                }
                other => return Err(RouteError::Unavailable(other.to_string())),
            }
            // Jittered exponential backoff, never past the deadline.
            let sleep = backoff.mul_f64(rand::thread_rng().gen_range(0.5..1.0));
            if Instant::now() + sleep >= deadline {
                return Err(match (&err, is_write && maybe_applied) {
                    (_, true) => RouteError::Ambiguous(format!("deadline passed; last error: {err}")),
                    (WireError::Busy(m), _) => RouteError::Overloaded(m.clone()),
                    _ => RouteError::Unavailable(format!("deadline passed; last error: {err}")),
                });
            }
            tokio::time::sleep(sleep).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    async fn attempt<T, F, Fut>(
        &self,
        shard: &ShardDescriptor,
        attempt: usize,
        request_id: &[u8],
        deadline: Instant,
        f: &F,
    ) -> Result<T, WireError>
    where
        F: Fn(ShardKvClient<Channel>, RequestContext) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let node = self.map.leader(shard.id).unwrap_or_else(|| {
            let n = shard.replicas.len().max(1);
            shard.replicas.get(attempt % n).map_or(0, |r| r.node_id)
        });
        let addr = self.map.address(node).ok_or_else(|| WireError::Retryable(format!("no address for node {node}")))?;
        let client = self.client(&addr).await?;
        // The storenode answers within what is left of the deadline, so a
        // stuck shard cannot hold the caller past it.
        let left = deadline.saturating_duration_since(Instant::now()).as_millis().clamp(1, u32::MAX as u128) as u32;
        let ctx = RequestContext {
            shard_id: shard.id,
            epoch: shard.epoch,
            request_id: request_id.to_vec(),
            timeout_ms: left,
        };
        match f(client, ctx).await {
            Ok(r) => Ok(r.into_inner()),
            Err(s) => match WireError::from_status(&s) {
                // No typed answer: the request may have reached the leader
                // and been proposed before the connection failed.
                WireError::Transport { code, message } => {
                    self.channels.lock().remove(&addr);
                    Err(WireError::Ambiguous(format!("{code}: {message}")))
                }
                typed => Err(typed),
            },
        }
    }

    /// Updates the caches from a failed attempt.
    fn learn(&self, shard: &ShardDescriptor, e: &WireError) {
        match e {
            WireError::NotLeader { leader: Some(l), .. } => self.map.set_leader(shard.id, Some(l.node_id)),
            WireError::EpochMismatch(current) => self.map.update_shard((**current).clone()),
            WireError::KeyNotInShard { .. } | WireError::ShardNotFound(_) => {
                self.map.set_leader(shard.id, None);
                self.map.request_refresh();
            }
            _ => self.map.set_leader(shard.id, None),
        }
    }
}
