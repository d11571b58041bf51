//! The ShardKv gRPC service: validates a request, hands it to the Raft loop
//! (a proposal for writes, a ReadIndex for reads) and answers once it is
//! applied or safe to read. Reads of RocksDB run on the blocking pool.
//!
//! Each call runs in a `shardkv` span carrying the router's request id
//! (metadata `ringkv-request-id`), and times its hops: the wait in the Raft
//! loop's inbox (`queue`), propose → commit (`commit`), commit → apply
//! (`apply`), or for reads the read index (`read_index`) and the read itself
//! (`read`). They go back to the router in the `ringkv-timing` response
//! metadata, and a call slower than `slow_request_ms` is logged once.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ringkv_common::trace::{self, REQUEST_ID_HEADER, TIMING_HEADER};
use tonic::metadata::{MetadataMap, MetadataValue};
use tracing::Instrument;

use ringkv_proto::kv::shard_kv_server::ShardKv;
use ringkv_proto::kv::{
    BatchCommands, BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, CompareAndSwapRequest,
    CompareAndSwapResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse, GetResult, KvPair, PutRequest,
    PutResponse, ReadConsistency, RequestContext, ScanRequest, ScanResponse, TxnRequest, TxnResponse,
};
use ringkv_proto::meta::ShardDescriptor;
use ringkv_proto::storage::{shard_command::Op, shard_command_result::Result as CmdResult, ShardCommand};
use tonic::{Request, Response, Status, Streaming};

use ringkv_raft::engine::{Cf, Engine};
use ringkv_raft::{LoopHandle, LoopRequest, ReadMode, Timings};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::keys;
use crate::load::ShardLoad;
use crate::metrics::Metrics;
use crate::shard::{decode_value, into_result, key_hashes, ShardStateMachine};

const MAX_REQUEST_ID_BYTES: usize = 64;
/// Pairs one Scan call returns at most.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// The ShardKv service of one storenode (cloned per `Batch` stream: every
/// field is a handle).
#[derive(Clone)]
pub struct KvService {
    loop_handle: LoopHandle<ShardStateMachine>,
    engine: Engine,
    limits: Limits,
    metrics: Arc<Metrics>,
    /// A deliberate bug for proving the fault-injection checker: serve
    /// "linearizable" reads from local data without a ReadIndex round, so a
    /// deposed leader answers stale reads. Only set by the environment
    /// variable [`UNSAFE_LOCAL_READS_ENV`]; never in production.
    unsafe_local_reads: bool,
    /// Requests served per shard, for load-based splits.
    load: Arc<ShardLoad>,
    /// Calls slower than this are logged once with their hops.
    slow_request: Duration,
}

/// One ShardKv call being served: what it is known by, and its hops in the
/// order they happened (a few per call, so a short-held lock suffices).
struct Call {
    method: &'static str,
    request_id: String,
    shard: u64,
    hops: Mutex<Vec<(&'static str, Duration)>>,
}

impl Call {
    /// The call's identity: the router's request id from the metadata, else
    /// the de-dup id of the context (hex) for callers that send no metadata.
    fn new(method: &'static str, meta: &MetadataMap, ctx: Option<&RequestContext>) -> Call {
        let sent = meta.get(REQUEST_ID_HEADER).map(|v| v.as_bytes()).filter(|v| trace::valid_request_id(v));
        let request_id = match (sent, ctx) {
            (Some(id), _) => String::from_utf8_lossy(id).into_owned(),
            (None, Some(c)) if !c.request_id.is_empty() => {
                c.request_id.iter().take(trace::MAX_REQUEST_ID_BYTES / 2).map(|b| format!("{b:02x}")).collect()
            }
            _ => "-".to_string(),
        };
        Call { method, request_id, shard: ctx.map_or(0, |c| c.shard_id), hops: Mutex::new(Vec::new()) }
    }

    fn hop(&self, name: &'static str, d: Duration) {
        self.hops.lock().push((name, d));
    }

    /// The engine's steps of a request sent to the loop at `sent`: the
    /// inbox wait, then commit and apply (a proposal) or the read index
    /// (a read; nothing for a local read).
    fn engine_hops(&self, sent: Instant, t: &Timings, is_write: bool) {
        self.hop("queue", t.accepted.saturating_duration_since(sent));
        match (is_write, t.committed.is_some()) {
            (true, _) => {
                self.hop("commit", t.to_commit());
                self.hop("apply", t.to_done());
            }
            (false, true) => self.hop("read_index", t.done.saturating_duration_since(t.accepted)),
            (false, false) => {}
        }
    }
}

/// Set to 1 to turn on the deliberate stale-read bug (see `KvService`).
pub const UNSAFE_LOCAL_READS_ENV: &str = "RINGKV_UNSAFE_LOCAL_READS";

impl KvService {
    /// The service over a storenode's loop and engine.
    pub fn new(
        loop_handle: LoopHandle<ShardStateMachine>,
        engine: Engine,
        limits: Limits,
        metrics: Arc<Metrics>,
        load: Arc<ShardLoad>,
    ) -> Self {
        let unsafe_local_reads = std::env::var(UNSAFE_LOCAL_READS_ENV).is_ok_and(|v| v == "1");
        if unsafe_local_reads {
            tracing::error!("{UNSAFE_LOCAL_READS_ENV}=1: linearizable reads are served locally (deliberately unsafe)");
        }
        KvService {
            loop_handle,
            engine,
            limits,
            metrics,
            unsafe_local_reads,
            load,
            slow_request: Duration::from_millis(500),
        }
    }

    /// The storenode's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Logs calls slower than `d` (zero: every call) once, with their hops.
    pub fn with_slow_request(mut self, d: Duration) -> Self {
        self.slow_request = d;
        self
    }

    fn check_key(&self, key: &[u8]) -> Result<()> {
        if key.is_empty() {
            return Err(Error::invalid("key", "empty"));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(Error::invalid("key", format!("{} bytes, limit {}", key.len(), self.limits.max_key_bytes)));
        }
        Ok(())
    }

    fn check_value(&self, v: &[u8]) -> Result<()> {
        if v.len() > self.limits.max_value_bytes {
            return Err(Error::invalid("value", format!("{} bytes, limit {}", v.len(), self.limits.max_value_bytes)));
        }
        Ok(())
    }

    fn check_count(&self, n: usize) -> Result<()> {
        if n == 0 {
            return Err(Error::invalid("keys", "empty batch"));
        }
        if n > self.limits.max_batch_keys {
            return Err(Error::invalid("keys", format!("{n} keys, limit {}", self.limits.max_batch_keys)));
        }
        Ok(())
    }

    fn context(ctx: &Option<RequestContext>) -> Result<&RequestContext> {
        let c = ctx.as_ref().ok_or_else(|| Error::invalid("context", "missing"))?;
        if c.shard_id == 0 {
            return Err(Error::invalid("context.shard_id", "missing"));
        }
        if c.request_id.len() > MAX_REQUEST_ID_BYTES {
            return Err(Error::invalid("context.request_id", "longer than 64 bytes"));
        }
        Ok(c)
    }

    /// When the storenode stops waiting for a request: what the caller has
    /// left of its deadline (`timeout_ms`), capped by the node's own limit.
    fn deadline(&self, ctx: &RequestContext) -> Instant {
        let own = self.limits.request_timeout();
        let callers = std::time::Duration::from_millis(ctx.timeout_ms as u64);
        Instant::now() + if ctx.timeout_ms == 0 { own } else { own.min(callers) }
    }

    /// Proposes a write and waits for its result. The loop answers by the
    /// deadline (ambiguous if the entry may still apply); the timeout here
    /// only guards against a loop that stopped answering.
    async fn write(&self, ctx: &RequestContext, op: Op, call: &Call) -> Result<CmdResult> {
        if let Some((h, _)) = key_hashes(&op) {
            self.load.record(ctx.shard_id, true, h);
        }
        let cmd = ShardCommand {
            request_id: ctx.request_id.clone(),
            epoch_version: ctx.epoch.as_ref().map_or(0, |e| e.version),
            op: Some(op),
        };
        let (group_id, deadline) = (ctx.shard_id, self.deadline(ctx));
        let sent = Instant::now();
        let answer = self.loop_handle.call(|cb| LoopRequest::Propose { group_id, cmd, deadline, cb });
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline) + ringkv_raft::ANSWER_GRACE, answer)
            .await
        {
            Ok(Ok(r)) => {
                call.engine_hops(sent, &r.timings, true);
                into_result(r.value)
            }
            Ok(Err(ringkv_raft::Error::Stopped)) => {
                Err(Error::Ambiguous("storenode stopped before the write finished".into()))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Ambiguous("timed out waiting for the write to apply".into())),
        }
    }

    /// Waits until reading `shard_id` at `consistency` is safe; returns the
    /// shard, refused if it is not the epoch the request was routed with.
    async fn read_barrier(&self, ctx: &RequestContext, consistency: i32, call: &Call) -> Result<ShardDescriptor> {
        let consistency =
            ReadConsistency::try_from(consistency).map_err(|_| Error::invalid("consistency", "unknown value"))?;
        let mode = match consistency {
            ReadConsistency::Linearizable if self.unsafe_local_reads => ReadMode::Local,
            ReadConsistency::Linearizable => ReadMode::Leader,
            ReadConsistency::Follower => ReadMode::Follower,
            ReadConsistency::Stale => ReadMode::Local,
        };
        let (group_id, deadline) = (ctx.shard_id, self.deadline(ctx));
        let sent = Instant::now();
        let answer = self.loop_handle.call(|cb| LoopRequest::Read { group_id, mode, deadline, cb });
        let shard =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline) + ringkv_raft::ANSWER_GRACE, answer)
                .await
            {
                Ok(r) => {
                    let r = r.map_err(Error::from)?;
                    call.engine_hops(sent, &r.timings, false);
                    r.value.0
                }
                Err(_) => return Err(Error::Retryable("timed out waiting for a read index".into())),
            };
        if let Some(e) = &ctx.epoch {
            if shard.epoch.as_ref().map_or(0, |x| x.version) != e.version {
                return Err(Error::EpochMismatch(Box::new(shard)));
            }
        }
        Ok(shard)
    }

    async fn read_keys(&self, shard: ShardDescriptor, keys_: Vec<Vec<u8>>, call: &Call) -> Result<Vec<GetResult>> {
        for k in &keys_ {
            if !keys::in_range(keys::key_hash(k), shard.start, shard.end) {
                return Err(Error::KeyNotInShard { key: k.clone(), shard: Box::new(shard) });
            }
        }
        if let Some(k) = keys_.first() {
            self.load.record(shard.id, false, keys::key_hash(k));
        }
        let engine = self.engine.clone();
        let start = Instant::now();
        let read = tokio::task::spawn_blocking(move || {
            keys_
                .into_iter()
                .map(|key| {
                    let v = engine.get(Cf::Data, &keys::data_key(&key))?;
                    Ok(match v {
                        Some(v) => GetResult { key, found: true, value: decode_value(&v)?.to_vec() },
                        None => GetResult { key, found: false, value: Vec::new() },
                    })
                })
                .collect::<Result<Vec<_>>>()
        })
        .await;
        call.hop("read", start.elapsed());
        read.map_err(|e| Error::Corrupt(format!("read task: {e}")))?
    }

    /// Up to `limit` pairs of `shard` whose keys start with `prefix`, in
    /// storage order, strictly after `after` (a user key) when given. Reads
    /// one consistent RocksDB snapshot.
    async fn scan_shard(
        &self,
        shard: ShardDescriptor,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
        call: &Call,
    ) -> Result<(Vec<KvPair>, bool)> {
        let (shard_lo, shard_hi) = keys::data_range(shard.start, shard.end);
        // A complete hash tag in the prefix narrows the scan to one hash.
        let (mut lo, hi) = match keys::prefix_hash(&prefix) {
            Some(h) if !keys::in_range(h, shard.start, shard.end) => return Ok((Vec::new(), false)),
            Some(h) => {
                let lo = [&h.to_be_bytes()[..], &prefix].concat();
                let hi = match keys::prefix_end(&prefix) {
                    Some(end) => [&h.to_be_bytes()[..], &end].concat(),
                    None => match h.checked_add(1) {
                        Some(n) => n.to_be_bytes().to_vec(),
                        None => shard_hi.clone(),
                    },
                };
                (lo, hi)
            }
            None => (shard_lo, shard_hi),
        };
        if let Some(a) = &after {
            // Strictly after: the smallest key greater than the data key of `a`.
            let mut start = keys::data_key(a);
            start.push(0);
            lo = lo.max(start);
        }
        let engine = self.engine.clone();
        let start = Instant::now();
        let read = tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            if lo >= hi {
                return Ok((out, false));
            }
            let mut it = engine.iter_range(Cf::Data, &lo, &hi);
            while let (Some(k), Some(v)) = (it.key(), it.value()) {
                let key = keys::user_key(k);
                if key.starts_with(&prefix) {
                    if out.len() == limit {
                        return Ok((out, true));
                    }
                    out.push(KvPair { key: key.to_vec(), value: decode_value(v)?.to_vec() });
                }
                it.next();
            }
            it.status()?;
            Ok((out, false))
        })
        .await;
        call.hop("read", start.elapsed());
        read.map_err(|e| Error::Corrupt(format!("scan task: {e}")))?
    }

    /// Runs one call in its span; counts it, answers with its hops in the
    /// `ringkv-timing` metadata (on errors too), and logs it once if slow.
    async fn observe<T>(&self, call: &Call, f: impl Future<Output = Result<T>>) -> Result<Response<T>, Status> {
        let span =
            tracing::info_span!("shardkv", request_id = %call.request_id, method = call.method, shard = call.shard);
        let start = Instant::now();
        let res = f.instrument(span.clone()).await;
        let total = start.elapsed();
        let method = call.method;
        self.metrics.request_duration.with_label_values(&[method]).observe(total.as_secs_f64());
        let outcome = match &res {
            Ok(_) => "ok",
            Err(Error::NotLeader { .. }) => "not_leader",
            Err(Error::EpochMismatch(_) | Error::KeyNotInShard { .. }) => "epoch_mismatch",
            Err(Error::InvalidArgument { .. }) => "invalid_argument",
            Err(Error::Ambiguous(_)) => "ambiguous",
            Err(_) => "error",
        };
        self.metrics.requests.with_label_values(&[method, outcome]).inc();
        let mut hops = std::mem::take(&mut *call.hops.lock());
        hops.push(("total", total));
        let timing = trace::format_timing(hops.iter().map(|(n, d)| (*n, *d)));
        if total >= self.slow_request {
            self.metrics.slow_requests.with_label_values(&[method]).inc();
            span.in_scope(|| {
                tracing::warn!(
                    request_id = %call.request_id,
                    method,
                    shard = call.shard,
                    outcome,
                    total_ms = total.as_secs_f64() * 1000.0,
                    hops = %timing,
                    "slow request"
                )
            });
        }
        // The header is ASCII by construction; were it not, the router
        // would only miss the hops.
        let value = MetadataValue::try_from(timing.as_str()).ok();
        match res {
            Ok(r) => {
                let mut resp = Response::new(r);
                if let Some(v) = value {
                    resp.metadata_mut().insert(TIMING_HEADER, v);
                }
                Ok(resp)
            }
            Err(e) => {
                let mut status = Status::from(e);
                if let Some(v) = value {
                    status.metadata_mut().insert(TIMING_HEADER, v);
                }
                Err(status)
            }
        }
    }
}

fn unexpected(r: CmdResult) -> Error {
    Error::Corrupt(format!("unexpected command result {r:?}"))
}

#[tonic::async_trait]
impl ShardKv for KvService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let call = Call::new("get", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?;
            self.check_key(&req.key)?;
            let shard = self.read_barrier(ctx, req.consistency, &call).await?;
            let mut r = self.read_keys(shard, vec![req.key], &call).await?;
            let r = r.pop().ok_or_else(|| Error::Corrupt("no read result".into()))?;
            Ok(GetResponse { found: r.found, value: r.value })
        })
        .await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let call = Call::new("put", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_key(&req.key)?;
            self.check_value(&req.value)?;
            match self.write(&ctx, Op::Put(req), &call).await? {
                CmdResult::Put(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let call = Call::new("delete", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_key(&req.key)?;
            match self.write(&ctx, Op::Delete(req), &call).await? {
                CmdResult::Delete(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn compare_and_swap(
        &self,
        req: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        use ringkv_proto::kv::compare_and_swap_request::{Expected, New};
        let call = Call::new("cas", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_key(&req.key)?;
            match &req.expected {
                Some(Expected::ExpectedValue(v)) => self.check_value(v)?,
                Some(Expected::ExpectAbsent(true)) => {}
                _ => return Err(Error::invalid("expected", "set expected_value or expect_absent=true")),
            }
            match &req.new {
                Some(New::NewValue(v)) => self.check_value(v)?,
                Some(New::Delete(true)) => {}
                _ => return Err(Error::invalid("new", "set new_value or delete=true")),
            }
            match self.write(&ctx, Op::Cas(req), &call).await? {
                CmdResult::Cas(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn batch_get(&self, req: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let call = Call::new("batch_get", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?;
            self.check_count(req.keys.len())?;
            for k in &req.keys {
                self.check_key(k)?;
            }
            let shard = self.read_barrier(ctx, req.consistency, &call).await?;
            Ok(BatchGetResponse { results: self.read_keys(shard, req.keys, &call).await? })
        })
        .await
    }

    async fn batch_put(&self, req: Request<BatchPutRequest>) -> Result<Response<BatchPutResponse>, Status> {
        let call = Call::new("batch_put", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_count(req.pairs.len())?;
            for p in &req.pairs {
                self.check_key(&p.key)?;
                self.check_value(&p.value)?;
            }
            match self.write(&ctx, Op::BatchPut(req), &call).await? {
                CmdResult::BatchPut(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        use ringkv_proto::kv::{compare::Expected, mutation};
        let call = Call::new("txn", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_count(req.compares.len() + req.mutations.len())?;
            for c in &req.compares {
                self.check_key(&c.key)?;
                match &c.expected {
                    Some(Expected::ExpectedValue(v)) => self.check_value(v)?,
                    Some(Expected::ExpectAbsent(true)) => {}
                    _ => return Err(Error::invalid("compares.expected", "set expected_value or expect_absent=true")),
                }
            }
            for m in &req.mutations {
                self.check_key(&m.key)?;
                match &m.op {
                    Some(mutation::Op::Put(v)) => self.check_value(v)?,
                    Some(mutation::Op::Delete(true)) => {}
                    _ => return Err(Error::invalid("mutations.op", "set put or delete=true")),
                }
            }
            match self.write(&ctx, Op::Txn(req), &call).await? {
                CmdResult::Txn(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    type BatchStream = super::batch::AnswerStream;

    async fn batch(&self, req: Request<Streaming<BatchCommands>>) -> Result<Response<Self::BatchStream>, Status> {
        Ok(super::batch::serve(self.clone(), req.into_inner()))
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let call = Call::new("scan", req.metadata(), req.get_ref().context.as_ref());
        let req = req.into_inner();
        self.observe(&call, async {
            let ctx = Self::context(&req.context)?;
            if req.prefix.len() > self.limits.max_key_bytes {
                return Err(Error::invalid("prefix", format!("longer than {} bytes", self.limits.max_key_bytes)));
            }
            if req.has_after_key {
                self.check_key(&req.after_key)?;
            }
            let limit = (req.limit as usize).clamp(1, MAX_SCAN_LIMIT);
            let shard = self.read_barrier(ctx, req.consistency, &call).await?;
            let after = req.has_after_key.then_some(req.after_key);
            let (pairs, more) = self.scan_shard(shard, req.prefix, after, limit, &call).await?;
            Ok(ScanResponse { pairs, more })
        })
        .await
    }
}
