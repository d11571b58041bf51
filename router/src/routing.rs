//! Sends one request to the leader of the shard that owns a key, and retries
//! what can be retried inside the caller's deadline: `NotLeader` (go to the
//! hinted leader), `EpochMismatch` (take the newer descriptor), connection
//! errors and `Retryable` (another replica, jittered backoff). A write keeps
//! one request id across retries, so the shard applies it at most once.
//! Every attempt carries the call's trace id to the storenode and is timed
//! into the call's [`CallTrace`].

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rand::Rng;
use ringkv_common::net::connect;
use ringkv_common::wire_error::WireError;
use ringkv_proto::kv::batch_answer::Answer;
use ringkv_proto::kv::batch_command::Request as Command;
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::{
    BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, CompareAndSwapRequest,
    CompareAndSwapResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse, PutRequest, PutResponse,
    RequestContext, ScanRequest, ScanResponse, TxnRequest, TxnResponse,
};
use ringkv_proto::meta::ShardDescriptor;
use tokio::sync::Semaphore;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::Status;

use crate::batch::BatchStream;
use crate::shard_map::ShardMapCache;
use crate::trace::{storenode_hops, AttemptHop, CallTrace, SendRequestId};

/// A storenode client for one attempt. Get, Put, Delete and CompareAndSwap
/// go over the node's Batch stream when the router uses one; the other calls
/// (and every call to a node without Batch) go unary. Either way they carry
/// the call's request id and answer with the storenode's timing metadata.
#[derive(Clone)]
pub struct ShardClient {
    unary: ShardKvClient<InterceptedService<Channel, SendRequestId>>,
    batch: Option<BatchStream>,
    request_id: Option<AsciiMetadataValue>,
}

/// The ShardKv calls a [`ShardClient`] makes: single-key ones over the
/// Batch stream or unary, the rest unary.
macro_rules! single_key_calls {
    ($($name:ident($req:ty) -> $resp:ty = $variant:ident;)*) => {$(
        /// The ShardKv call of this name.
        pub async fn $name(&mut self, req: $req) -> Result<tonic::Response<$resp>, Status> {
            match &self.batch {
                Some(b) => {
                    let unwrap = |a| match a { Answer::$variant(r) => Some(r), _ => None };
                    b.call(Command::$variant(req), self.request_id.as_ref(), unwrap).await
                }
                None => self.unary.$name(req).await,
            }
        }
    )*};
}

macro_rules! unary_calls {
    ($($name:ident($req:ty) -> $resp:ty;)*) => {$(
        /// The ShardKv call of this name (always unary).
        pub async fn $name(&mut self, req: $req) -> Result<tonic::Response<$resp>, Status> {
            self.unary.$name(req).await
        }
    )*};
}

impl ShardClient {
    single_key_calls! {
        get(GetRequest) -> GetResponse = Get;
        put(PutRequest) -> PutResponse = Put;
        delete(DeleteRequest) -> DeleteResponse = Delete;
        compare_and_swap(CompareAndSwapRequest) -> CompareAndSwapResponse = CompareAndSwap;
    }
    unary_calls! {
        batch_get(BatchGetRequest) -> BatchGetResponse;
        batch_put(BatchPutRequest) -> BatchPutResponse;
        txn(TxnRequest) -> TxnResponse;
        scan(ScanRequest) -> ScanResponse;
    }
}

/// Why a routed call failed, in the terms of the public API.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouteError {
    /// The request itself is wrong (a storenode refused it); nothing was applied.
    #[error("invalid {field}: {reason}")]
    Invalid {
        /// Which part of the request.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Nothing was applied (no leader, no quorum, no shard map in time).
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed after a write left: it may or may not be applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// Shed: this router has too many calls in flight, or the storenode stayed
    /// busy until the deadline; nothing was applied.
    #[error("overloaded: {0}")]
    Overloaded(String),
}

/// How one API call is routed.
#[derive(Clone, Debug)]
pub struct CallOptions {
    /// Kept across every retry of a write so the shard applies it at most
    /// once; clients that retry through another router send their own.
    pub request_id: Vec<u8>,
    /// Whether the call writes (so an unclear outcome is ambiguous).
    pub is_write: bool,
    /// When the router stops retrying and answers.
    pub deadline: Instant,
    /// The call's trace: its id (sent to storenodes) and hops. Not the
    /// de-dup `request_id`, which only a caller's own id may share.
    pub trace: Arc<CallTrace>,
}

impl CallOptions {
    /// Options for a read: no de-dup request id.
    pub fn read(deadline: Instant, trace: Arc<CallTrace>) -> Self {
        CallOptions { request_id: Vec::new(), is_write: false, deadline, trace }
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

/// Routes calls to shard leaders through the shard map, with a limit on calls in flight.
pub struct Router {
    /// Where shards and their leaders are.
    pub map: Arc<ShardMapCache>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Each storenode's Batch stream, when `batch_calls`.
    batches: Mutex<HashMap<String, BatchStream>>,
    batch_calls: bool,
    /// Calls in flight; past the limit new ones are shed (Overloaded) rather
    /// than queued, so an overloaded cluster answers fast instead of late.
    inflight: Semaphore,
}

impl Router {
    /// A router over `map` that sheds calls past `max_inflight` (at least 1) in flight.
    pub fn new(map: Arc<ShardMapCache>, max_inflight: usize) -> Self {
        Router {
            map,
            channels: Mutex::new(HashMap::new()),
            batches: Mutex::new(HashMap::new()),
            batch_calls: true,
            inflight: Semaphore::new(max_inflight.max(1)),
        }
    }

    /// Whether single-key calls go over Batch streams (the default) or unary.
    pub fn with_batch_calls(mut self, on: bool) -> Self {
        self.batch_calls = on;
        self
    }

    /// `addr`'s Batch stream over `ch`: the open one, or a new one in place
    /// of one that failed. `None` when the node does not serve Batch.
    fn batch_stream(&self, addr: &str, ch: &Channel) -> Option<BatchStream> {
        let mut batches = self.batches.lock();
        let stream = match batches.get(addr) {
            Some(b) if !b.is_closed() => b.clone(),
            _ => {
                let b = BatchStream::open(ch.clone());
                batches.insert(addr.to_string(), b.clone());
                b
            }
        };
        (!stream.is_unsupported()).then_some(stream)
    }

    /// Forgets `addr`'s connection and stream after a transport failure.
    fn forget(&self, addr: &str) {
        self.channels.lock().remove(addr);
        self.batches.lock().remove(addr);
    }

    async fn client(&self, addr: &str, id: SendRequestId) -> Result<ShardClient, WireError> {
        let cached = self.channels.lock().get(addr).cloned();
        let ch = match cached {
            Some(c) => c,
            None => {
                let ch = connect(addr).await.map_err(|e| WireError::Retryable(format!("connect {addr}: {e}")))?;
                self.channels.lock().insert(addr.to_string(), ch.clone());
                ch
            }
        };
        let batch = if self.batch_calls { self.batch_stream(addr, &ch) } else { None };
        let request_id = id.0.clone();
        Ok(ShardClient { unary: ShardKvClient::with_interceptor(ch, id), batch, request_id })
    }

    /// Runs `f` against the leader of the target shard
    /// until it succeeds, fails for good, or `deadline` passes.
    pub async fn call<T, F, Fut>(&self, target: Target<'_>, req: &CallOptions, f: F) -> Result<T, RouteError>
    where
        F: Fn(ShardClient, RequestContext) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let _permit = self
            .inflight
            .try_acquire()
            .map_err(|_| RouteError::Overloaded("too many requests in flight on this router".into()))?;
        let _in_flight = crate::metrics::InFlight::start();
        let (request_id, deadline) = (req.request_id.as_slice(), req.deadline);
        let mut attempts = Attempts::new(req.is_write, deadline);
        let trace = &req.trace;
        let mut recorded_shard = None;
        loop {
            let looked_up = Instant::now();
            let shard = match target {
                Target::Key(k) => self.map.shard_for(k),
                Target::Shard(id) => self.map.shards().into_iter().find(|s| s.id == id),
            };
            trace.route(looked_up.elapsed());
            let err = match shard {
                None => {
                    self.map.request_refresh();
                    WireError::Retryable("no shard map yet".into())
                }
                Some(shard) => {
                    // The fmt layer appends every record to the span's fields:
                    // record the shard once, and again only if a split moved
                    // the key.
                    if recorded_shard != Some(shard.id) {
                        tracing::Span::current().record("shard", shard.id);
                        recorded_shard = Some(shard.id);
                    }
                    match self.attempt(&shard, attempts.attempt, request_id, deadline, trace, &f).await {
                        Ok(r) => return Ok(r),
                        Err(e) => {
                            self.learn(&shard, &e);
                            e
                        }
                    }
                }
            };
            let step = attempts.next_step(&err, Instant::now(), rand::thread_rng().gen_range(0.5..1.0));
            match step {
                Step::Retry(sleep) => {
                    crate::metrics::retried(&err);
                    tokio::time::sleep(sleep).await;
                    trace.backoff(sleep);
                }
                Step::Fail(e) => return Err(e),
            }
        }
    }

    async fn attempt<T, F, Fut>(
        &self,
        shard: &ShardDescriptor,
        attempt: usize,
        request_id: &[u8],
        deadline: Instant,
        trace: &CallTrace,
        f: &F,
    ) -> Result<T, WireError>
    where
        F: Fn(ShardClient, RequestContext) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let start = Instant::now();
        let node = pick_node(self.map.leader(shard.id), shard, attempt);
        let mut storenode = Vec::new();
        let res = self.attempt_node(shard, node, request_id, deadline, trace, f, &mut storenode).await;
        trace.attempt(AttemptHop {
            shard: shard.id,
            node,
            took: start.elapsed(),
            outcome: res.as_ref().map_or_else(outcome_of, |_| "ok"),
            storenode,
        });
        res
    }

    #[allow(clippy::too_many_arguments)]
    async fn attempt_node<T, F, Fut>(
        &self,
        shard: &ShardDescriptor,
        node: u64,
        request_id: &[u8],
        deadline: Instant,
        trace: &CallTrace,
        f: &F,
        storenode: &mut Vec<ringkv_common::trace::Hop>,
    ) -> Result<T, WireError>
    where
        F: Fn(ShardClient, RequestContext) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let addr = self.map.address(node).ok_or_else(|| WireError::Retryable(format!("no address for node {node}")))?;
        // Neither connecting nor waiting for the answer outlives the deadline.
        let client = tokio::time::timeout_at(deadline.into(), self.client(&addr, SendRequestId::of(trace)))
            .await
            .map_err(|_| WireError::Retryable(format!("connect {addr}: deadline passed")))??;
        let ctx = request_context(shard, request_id, deadline);
        let answer = tokio::time::timeout_at(deadline.into(), f(client, ctx)).await;
        let Ok(answer) = answer else {
            // The request left: it may be applied after all.
            return Err(WireError::Ambiguous(format!("no answer from {addr} before the deadline")));
        };
        match answer {
            Ok(r) => {
                *storenode = storenode_hops(r.metadata());
                Ok(r.into_inner())
            }
            Err(s) => {
                *storenode = storenode_hops(s.metadata());
                match WireError::from_status(&s) {
                    // No typed answer: the request may have reached the leader
                    // and been proposed before the connection failed.
                    WireError::Transport { code, message } => {
                        self.forget(&addr);
                        Err(WireError::Ambiguous(format!("{code}: {message}")))
                    }
                    typed => Err(typed),
                }
            }
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

/// A failed attempt's outcome as the slow log names it.
fn outcome_of(e: &WireError) -> &'static str {
    match e {
        WireError::NotLeader { .. } => "not_leader",
        WireError::EpochMismatch(_) => "epoch_mismatch",
        WireError::KeyNotInShard { .. } => "key_not_in_shard",
        WireError::ShardNotFound(_) => "shard_not_found",
        WireError::Retryable(_) => "retryable",
        WireError::Busy(_) => "busy",
        WireError::Ambiguous(_) => "ambiguous",
        WireError::InvalidArgument { .. } => "invalid",
        _ => "error",
    }
}

/// The first backoff between attempts, before jitter.
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
/// Backoff doubles per retry up to this, before jitter.
const MAX_BACKOFF: Duration = Duration::from_millis(500);

/// What [`Router::call`] does after a failed attempt.
#[derive(Debug)]
pub(crate) enum Step {
    /// Sleep this long, then try again (the caches have learnt from the error).
    Retry(Duration),
    /// Give up: the call fails with this.
    Fail(RouteError),
}

/// The retry state of one call, across its attempts.
#[derive(Debug, Clone)]
pub(crate) struct Attempts {
    is_write: bool,
    deadline: Instant,
    /// Attempts made so far; picks the replica when no leader is known.
    pub(crate) attempt: usize,
    /// The next backoff, before jitter.
    backoff: Duration,
    /// Whether a write may have been applied by an attempt that failed.
    maybe_applied: bool,
}

impl Attempts {
    pub(crate) fn new(is_write: bool, deadline: Instant) -> Self {
        Attempts { is_write, deadline, attempt: 0, backoff: FIRST_BACKOFF, maybe_applied: false }
    }

    /// Decides what follows an attempt that failed with `err` at `now`.
    /// `jitter`, in [0.5, 1), scales the backoff (random in production).
    pub(crate) fn next_step(&mut self, err: &WireError, now: Instant, jitter: f64) -> Step {
        self.attempt += 1;
        match err {
            // Ambiguous answers are retried with the same request id: a
            // success or a typed refusal later settles the outcome.
            WireError::Ambiguous(_) => self.maybe_applied = true,
            WireError::NotLeader { .. }
            | WireError::EpochMismatch(_)
            | WireError::KeyNotInShard { .. }
            | WireError::ShardNotFound(_)
            | WireError::Retryable(_)
            | WireError::Busy(_) => {}
            // A later definite refusal speaks only for itself.
            other if self.is_write && self.maybe_applied => {
                return Step::Fail(RouteError::Ambiguous(format!(
                    "an earlier attempt may have been applied; then: {other}"
                )))
            }
            WireError::InvalidArgument { field, reason } => {
                return Step::Fail(RouteError::Invalid { field: field.clone(), reason: reason.clone() })
            }
            other => return Step::Fail(RouteError::Unavailable(other.to_string())),
        }
        // Jittered exponential backoff, never past the deadline.
        let sleep = self.backoff.mul_f64(jitter.clamp(0.5, 1.0));
        if now + sleep >= self.deadline {
            return Step::Fail(match (err, self.is_write && self.maybe_applied) {
                (_, true) => RouteError::Ambiguous(format!("deadline passed; last error: {err}")),
                (WireError::Busy(m), _) => RouteError::Overloaded(m.clone()),
                _ => RouteError::Unavailable(format!("deadline passed; last error: {err}")),
            });
        }
        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
        Step::Retry(sleep)
    }
}

/// The node an attempt goes to: the known leader, else the shard's replicas in
/// turn (0, which has no address, when the shard lists none).
pub(crate) fn pick_node(leader: Option<u64>, shard: &ShardDescriptor, attempt: usize) -> u64 {
    leader.unwrap_or_else(|| {
        let n = shard.replicas.len().max(1);
        shard.replicas.get(attempt % n).map_or(0, |r| r.node_id)
    })
}

/// What an attempt tells the shard: the descriptor it was routed by, the
/// call's request id (the same on every attempt) and what is left of the
/// deadline, so that the storenode answers within it and a stuck shard
/// cannot hold the caller past it.
pub(crate) fn request_context(shard: &ShardDescriptor, request_id: &[u8], deadline: Instant) -> RequestContext {
    let left = deadline.saturating_duration_since(Instant::now()).as_millis().clamp(1, u32::MAX as u128) as u32;
    RequestContext { shard_id: shard.id, epoch: shard.epoch, request_id: request_id.to_vec(), timeout_ms: left }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use ringkv_common::placement_client::PlacementClient;
    use ringkv_proto::meta::{Epoch, Replica};
    use ringkv_proto::placement::{Node, ShardInfo, ShardMap};

    use super::*;

    fn shard(id: u64, version: u64, conf_ver: u64, nodes: &[u64]) -> ShardDescriptor {
        ShardDescriptor {
            id,
            start: 0,
            end: 0,
            epoch: Some(Epoch { version, conf_ver }),
            replicas: nodes.iter().map(|&n| Replica { replica_id: 100 + n, node_id: n, role: 0 }).collect(),
        }
    }

    /// A router whose map holds `d` (the whole ring) on nodes 1..=3; no
    /// placement behind it and no connection made.
    fn router_with(d: ShardDescriptor) -> Router {
        let map = ShardMapCache::new(Arc::new(PlacementClient::new(Vec::new())));
        map.install(ShardMap {
            version: 1,
            shards: vec![ShardInfo { shard: Some(d), leader_node_id: 0, down_replicas: 0 }],
            nodes: (1..=3)
                .map(|id| Node { id, address: format!("127.0.0.1:{}", 1000 + id), ..Default::default() })
                .collect(),
            bootstrapped: true,
        });
        Router::new(map, 16)
    }

    /// Gives every node of `router` a channel that never connects unless used.
    fn lazy_channels(router: &Router) {
        for id in 1..=3 {
            let addr = router.map.address(id).unwrap();
            let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
            router.channels.lock().insert(addr, ch);
        }
    }

    fn not_leader(hint: Option<u64>) -> WireError {
        WireError::NotLeader {
            shard_id: 1,
            leader: hint.map(|node_id| Replica { replica_id: 100 + node_id, node_id, role: 0 }),
            leader_address: String::new(),
        }
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[test]
    fn a_not_leader_answer_with_a_hint_goes_to_the_hinted_leader() {
        let d = shard(1, 1, 1, &[1, 2, 3]);
        let router = router_with(d.clone());
        router.learn(&d, &not_leader(Some(3)));
        assert_eq!(router.map.leader(1), Some(3));
        let mut attempts = Attempts::new(true, far());
        assert!(matches!(attempts.next_step(&not_leader(Some(3)), Instant::now(), 1.0), Step::Retry(_)));
        assert_eq!(pick_node(router.map.leader(1), &d, attempts.attempt), 3);
    }

    #[test]
    fn a_not_leader_answer_without_a_hint_forgets_the_leader_and_tries_the_next_replica() {
        let d = shard(1, 1, 1, &[1, 2, 3]);
        let router = router_with(d.clone());
        router.map.set_leader(1, Some(1));
        router.learn(&d, &not_leader(None));
        assert_eq!(router.map.leader(1), None);
        let mut attempts = Attempts::new(false, far());
        assert!(matches!(attempts.next_step(&not_leader(None), Instant::now(), 1.0), Step::Retry(_)));
        assert_eq!(pick_node(router.map.leader(1), &d, attempts.attempt), 2);
    }

    #[test]
    fn without_a_known_leader_attempts_go_round_the_replicas() {
        let d = shard(1, 1, 1, &[4, 5, 6]);
        let picked: Vec<u64> = (0..5).map(|a| pick_node(None, &d, a)).collect();
        assert_eq!(picked, [4, 5, 6, 4, 5]);
        assert_eq!(pick_node(Some(9), &d, 1), 9, "a known leader wins over the rotation");
        assert_eq!(pick_node(None, &shard(1, 1, 1, &[]), 3), 0, "no replicas: no node (it has no address)");
    }

    #[test]
    fn an_epoch_mismatch_takes_the_newer_descriptor_and_the_next_attempt_carries_it_with_the_same_request_id() {
        let old = shard(1, 1, 1, &[1, 2, 3]);
        let router = router_with(old.clone());
        let id = b"request-1".to_vec();
        let first = request_context(&old, &id, Instant::now() + Duration::from_secs(5));
        let newer = shard(1, 1, 2, &[1, 2]);
        router.learn(&old, &WireError::EpochMismatch(Box::new(newer.clone())));
        let now = router.map.shard_for(b"any key").expect("the shard is still mapped");
        assert_eq!(now, newer);
        let second = request_context(&now, &id, Instant::now() + Duration::from_secs(5));
        assert_eq!(second.epoch, Some(Epoch { version: 1, conf_ver: 2 }));
        assert_eq!((second.shard_id, &second.request_id), (first.shard_id, &first.request_id));
    }

    #[test]
    fn an_epoch_mismatch_with_an_older_descriptor_is_ignored() {
        let cur = shard(1, 2, 2, &[1, 2, 3]);
        let router = router_with(cur.clone());
        router.learn(&cur, &WireError::EpochMismatch(Box::new(shard(1, 1, 5, &[1]))));
        assert_eq!(router.map.shard_for(b"k"), Some(cur));
    }

    #[test]
    fn a_connection_error_forgets_the_leader_so_another_replica_is_tried() {
        let d = shard(1, 1, 1, &[1, 2, 3]);
        let router = router_with(d.clone());
        router.map.set_leader(1, Some(2));
        router.learn(&d, &WireError::Retryable("connect: refused".into()));
        assert_eq!(router.map.leader(1), None);
        assert_ne!(pick_node(router.map.leader(1), &d, 0), 2);
    }

    #[test]
    fn every_answer_that_applied_nothing_is_retried_for_reads_and_writes() {
        let applied_nothing = || {
            vec![
                not_leader(None),
                not_leader(Some(2)),
                WireError::EpochMismatch(Box::new(shard(1, 2, 1, &[1]))),
                WireError::KeyNotInShard { key: b"k".to_vec(), shard: Box::new(shard(1, 1, 1, &[1])) },
                WireError::ShardNotFound(1),
                WireError::Retryable("no quorum".into()),
                WireError::Busy("queue full".into()),
            ]
        };
        for is_write in [false, true] {
            for e in applied_nothing() {
                let mut attempts = Attempts::new(is_write, far());
                assert!(
                    matches!(attempts.next_step(&e, Instant::now(), 0.75), Step::Retry(_)),
                    "{e} (write: {is_write}) should be retried"
                );
                assert_eq!(attempts.attempt, 1);
                assert!(!attempts.maybe_applied, "{e} applied nothing");
            }
        }
    }

    #[test]
    fn an_invalid_argument_fails_at_once() {
        let mut attempts = Attempts::new(true, far());
        let step = attempts.next_step(
            &WireError::InvalidArgument { field: "key".into(), reason: "empty".into() },
            Instant::now(),
            1.0,
        );
        assert!(matches!(step, Step::Fail(RouteError::Invalid { ref field, .. }) if field == "key"), "{step:?}");
    }

    #[test]
    fn an_internal_error_fails_at_once_as_unavailable() {
        for is_write in [false, true] {
            let mut attempts = Attempts::new(is_write, far());
            let step = attempts.next_step(&WireError::Other("bad record".into()), Instant::now(), 1.0);
            assert!(matches!(step, Step::Fail(RouteError::Unavailable(_))), "{step:?}");
        }
    }

    #[test]
    fn an_ambiguous_write_stays_ambiguous_when_a_later_attempt_fails_definitively() {
        for later in [
            WireError::Other("bad record".into()),
            WireError::InvalidArgument { field: "value".into(), reason: "too big".into() },
        ] {
            let mut attempts = Attempts::new(true, far());
            let step = attempts.next_step(&WireError::Ambiguous("connection reset".into()), Instant::now(), 1.0);
            assert!(matches!(step, Step::Retry(_)), "an ambiguous write is retried with its request id");
            let step = attempts.next_step(&later, Instant::now(), 1.0);
            assert!(matches!(step, Step::Fail(RouteError::Ambiguous(_))), "after {later}: {step:?}");
        }
    }

    #[test]
    fn an_ambiguous_write_that_runs_out_of_time_is_ambiguous_whatever_the_last_answer() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let mut attempts = Attempts::new(true, deadline);
        assert!(matches!(attempts.next_step(&WireError::Ambiguous("timeout".into()), start, 1.0), Step::Retry(_)));
        let step = attempts.next_step(&not_leader(None), deadline, 1.0);
        assert!(matches!(step, Step::Fail(RouteError::Ambiguous(_))), "{step:?}");
    }

    #[test]
    fn a_read_is_never_ambiguous_it_is_unavailable_at_the_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let mut attempts = Attempts::new(false, deadline);
        assert!(matches!(attempts.next_step(&WireError::Ambiguous("reset".into()), start, 1.0), Step::Retry(_)));
        let step = attempts.next_step(&WireError::Ambiguous("reset".into()), deadline, 1.0);
        assert!(matches!(step, Step::Fail(RouteError::Unavailable(_))), "{step:?}");
        let mut attempts = Attempts::new(false, far());
        assert!(matches!(attempts.next_step(&WireError::Ambiguous("reset".into()), start, 1.0), Step::Retry(_)));
        let step = attempts.next_step(&WireError::Other("x".into()), start, 1.0);
        assert!(matches!(step, Step::Fail(RouteError::Unavailable(_))), "{step:?}");
    }

    #[test]
    fn a_write_that_was_never_ambiguous_is_unavailable_at_the_deadline() {
        let start = Instant::now();
        let mut attempts = Attempts::new(true, start + Duration::from_millis(5));
        let step = attempts.next_step(&WireError::Retryable("no quorum".into()), start, 1.0);
        assert!(matches!(step, Step::Fail(RouteError::Unavailable(_))), "{step:?}");
    }

    #[test]
    fn a_busy_shard_at_the_deadline_is_reported_as_overloaded() {
        let start = Instant::now();
        let mut attempts = Attempts::new(true, start + Duration::from_millis(5));
        let step = attempts.next_step(&WireError::Busy("queue full".into()), start, 1.0);
        assert!(matches!(step, Step::Fail(RouteError::Overloaded(ref m)) if m == "queue full"), "{step:?}");
    }

    #[test]
    fn backoff_doubles_from_10ms_to_at_most_500ms_and_jitter_keeps_half_to_all_of_it() {
        let sleeps = |jitter: f64| -> Vec<u128> {
            let mut attempts = Attempts::new(false, far());
            (0..9)
                .map(|_| match attempts.next_step(&WireError::Retryable("x".into()), Instant::now(), jitter) {
                    Step::Retry(d) => d.as_millis(),
                    Step::Fail(e) => panic!("gave up early: {e}"),
                })
                .collect()
        };
        assert_eq!(sleeps(1.0), [10, 20, 40, 80, 160, 320, 500, 500, 500]);
        assert_eq!(sleeps(0.5), [5, 10, 20, 40, 80, 160, 250, 250, 250]);
        assert_eq!(sleeps(7.0), sleeps(1.0), "jitter above 1 is clamped");
        assert_eq!(sleeps(0.0), sleeps(0.5), "jitter below 0.5 is clamped");
    }

    #[test]
    fn retries_never_sleep_past_the_deadline() {
        for (budget_ms, attempt_ms) in [(0u64, 0u64), (7, 0), (100, 3), (1000, 0), (2500, 40)] {
            for jitter in [0.5, 0.66, 0.99] {
                for is_write in [false, true] {
                    let start = Instant::now();
                    let deadline = start + Duration::from_millis(budget_ms);
                    let mut attempts = Attempts::new(is_write, deadline);
                    let mut now = start;
                    let failed = loop {
                        now += Duration::from_millis(attempt_ms);
                        match attempts.next_step(&WireError::Retryable("x".into()), now, jitter) {
                            Step::Retry(sleep) => {
                                assert!(now + sleep < deadline, "slept past the deadline");
                                now += sleep;
                            }
                            Step::Fail(e) => break e,
                        }
                        assert!(attempts.attempt < 1000, "never gave up");
                    };
                    assert!(matches!(failed, RouteError::Unavailable(_)), "{failed:?}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_call_with_no_shard_map_and_no_time_left_fails_unavailable_at_once() {
        let router = Router::new(ShardMapCache::new(Arc::new(PlacementClient::new(Vec::new()))), 4);
        let calls = AtomicUsize::new(0);
        let res: Result<(), _> = router
            .call(Target::Key(b"k"), &CallOptions::read(Instant::now(), Arc::new(CallTrace::fresh())), |_, _| {
                calls.fetch_add(1, Ordering::SeqCst);
                async { Ok(tonic::Response::new(())) }
            })
            .await;
        assert!(matches!(res, Err(RouteError::Unavailable(_))), "{res:?}");
        assert_eq!(calls.load(Ordering::SeqCst), 0, "no shard, no attempt");
    }

    #[tokio::test]
    async fn a_call_past_the_in_flight_limit_is_shed_as_overloaded() {
        let router = router_with(shard(1, 1, 1, &[1, 2, 3]));
        let _held: Vec<_> = (0..16).map(|_| router.inflight.try_acquire().unwrap()).collect();
        let res: Result<(), _> = router
            .call(Target::Shard(1), &CallOptions::read(far(), Arc::new(CallTrace::fresh())), |_, _| async {
                Ok(tonic::Response::new(()))
            })
            .await;
        assert!(matches!(res, Err(RouteError::Overloaded(_))), "{res:?}");
    }

    #[tokio::test]
    async fn a_write_keeps_its_request_id_across_retries_and_follows_the_hint() {
        let router = router_with(shard(1, 1, 1, &[1, 2, 3]));
        lazy_channels(&router);
        let seen = Mutex::new(Vec::new());
        let trace = Arc::new(CallTrace::new("trace-7".into()));
        let opts = CallOptions { request_id: b"id-7".to_vec(), is_write: true, deadline: far(), trace: trace.clone() };
        let res = router
            .call(Target::Key(b"k"), &opts, |_, ctx| {
                let mut seen = seen.lock();
                seen.push(ctx.request_id);
                let answer = match seen.len() {
                    1 => Err(Status::from(WireError::Retryable("applying".into()))),
                    2 => Err(Status::from(not_leader(Some(3)))),
                    _ => Ok(tonic::Response::new(seen.len())),
                };
                async move { answer }
            })
            .await;
        assert_eq!(res.unwrap(), 3);
        assert_eq!(*seen.lock(), vec![b"id-7".to_vec(); 3]);
        assert_eq!(router.map.leader(1), Some(3), "the hinted leader is remembered");
        assert_eq!(trace.attempts(), 3, "every attempt is traced");
        let hops = trace.hops();
        assert!(hops.contains("outcome=retryable") && hops.contains("outcome=not_leader"), "{hops}");
        assert!(hops.contains("attempt3;") && hops.contains(";outcome=ok"), "{hops}");
    }

    #[tokio::test]
    async fn an_attempt_that_gets_no_answer_ends_at_the_deadline_ambiguous_for_a_write_unavailable_for_a_read() {
        let router = router_with(shard(1, 1, 1, &[1, 2, 3]));
        lazy_channels(&router);
        for is_write in [true, false] {
            let start = Instant::now();
            let opts = CallOptions {
                request_id: b"id".to_vec(),
                is_write,
                deadline: start + Duration::from_millis(50),
                trace: Arc::new(CallTrace::fresh()),
            };
            let res: Result<(), _> =
                router.call(Target::Key(b"k"), &opts, |_, _| std::future::pending::<Result<_, Status>>()).await;
            assert!(start.elapsed() < Duration::from_secs(2), "took {:?}", start.elapsed());
            match (is_write, res) {
                (true, Err(RouteError::Ambiguous(_))) | (false, Err(RouteError::Unavailable(_))) => {}
                (w, other) => panic!("write: {w}: {other:?}"),
            }
        }
    }
}
