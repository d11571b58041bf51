//! The ShardKv gRPC service: validates a request, hands it to the Raft loop
//! (a proposal for writes, a ReadIndex for reads) and answers once it is
//! applied or safe to read. Reads of RocksDB run on the blocking pool.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use ringkv_proto::kv::shard_kv_server::ShardKv;
use ringkv_proto::kv::{
    BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse, CompareAndSwapRequest,
    CompareAndSwapResponse, DeleteRequest, DeleteResponse, GetRequest, GetResponse, GetResult, KvPair, PutRequest,
    PutResponse, ReadConsistency, RequestContext, ScanRequest, ScanResponse, TxnRequest, TxnResponse,
};
use ringkv_proto::meta::ShardDescriptor;
use ringkv_proto::storage::{shard_command::Op, shard_command_result::Result as CmdResult, ShardCommand};
use tonic::{Request, Response, Status};

use ringkv_raft::engine::{Cf, Engine};
use ringkv_raft::{LoopHandle, LoopRequest, ReadMode};

use crate::config::Limits;
use crate::error::{Error, Result};
use crate::keys;
use crate::load::ShardLoad;
use crate::metrics::Metrics;
use crate::shard::{decode_value, into_result, key_hashes, ShardStateMachine};

const MAX_REQUEST_ID_BYTES: usize = 64;
/// Pairs one Scan call returns at most.
pub const MAX_SCAN_LIMIT: usize = 10_000;

/// The ShardKv service of one storenode.
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
        KvService { loop_handle, engine, limits, metrics, unsafe_local_reads, load }
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
    async fn write(&self, ctx: &RequestContext, op: Op) -> Result<CmdResult> {
        if let Some((h, _)) = key_hashes(&op) {
            self.load.record(ctx.shard_id, true, h);
        }
        let cmd = ShardCommand {
            request_id: ctx.request_id.clone(),
            epoch_version: ctx.epoch.as_ref().map_or(0, |e| e.version),
            op: Some(op),
        };
        let (group_id, deadline) = (ctx.shard_id, self.deadline(ctx));
        let call = self.loop_handle.call(|cb| LoopRequest::Propose { group_id, cmd, deadline, cb });
        match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline) + ringkv_raft::ANSWER_GRACE, call).await
        {
            Ok(Ok(r)) => into_result(r),
            Ok(Err(ringkv_raft::Error::Stopped)) => {
                Err(Error::Ambiguous("storenode stopped before the write finished".into()))
            }
            Ok(Err(e)) => Err(e.into()),
            Err(_) => Err(Error::Ambiguous("timed out waiting for the write to apply".into())),
        }
    }

    /// Waits until reading `shard_id` at `consistency` is safe; returns the
    /// shard, refused if it is not the epoch the request was routed with.
    async fn read_barrier(&self, ctx: &RequestContext, consistency: i32) -> Result<ShardDescriptor> {
        let consistency =
            ReadConsistency::try_from(consistency).map_err(|_| Error::invalid("consistency", "unknown value"))?;
        let mode = match consistency {
            ReadConsistency::Linearizable if self.unsafe_local_reads => ReadMode::Local,
            ReadConsistency::Linearizable => ReadMode::Leader,
            ReadConsistency::Follower => ReadMode::Follower,
            ReadConsistency::Stale => ReadMode::Local,
        };
        let (group_id, deadline) = (ctx.shard_id, self.deadline(ctx));
        let call = self.loop_handle.call(|cb| LoopRequest::Read { group_id, mode, deadline, cb });
        let shard =
            match tokio::time::timeout_at(tokio::time::Instant::from_std(deadline) + ringkv_raft::ANSWER_GRACE, call)
                .await
            {
                Ok(r) => r.map_err(Error::from)?.0,
                Err(_) => return Err(Error::Retryable("timed out waiting for a read index".into())),
            };
        if let Some(e) = &ctx.epoch {
            if shard.epoch.as_ref().map_or(0, |x| x.version) != e.version {
                return Err(Error::EpochMismatch(Box::new(shard)));
            }
        }
        Ok(shard)
    }

    async fn read_keys(&self, shard: ShardDescriptor, keys_: Vec<Vec<u8>>) -> Result<Vec<GetResult>> {
        for k in &keys_ {
            if !keys::in_range(keys::key_hash(k), shard.start, shard.end) {
                return Err(Error::KeyNotInShard { key: k.clone(), shard: Box::new(shard) });
            }
        }
        if let Some(k) = keys_.first() {
            self.load.record(shard.id, false, keys::key_hash(k));
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || {
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
        .await
        .map_err(|e| Error::Corrupt(format!("read task: {e}")))?
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
        tokio::task::spawn_blocking(move || {
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
        .await
        .map_err(|e| Error::Corrupt(format!("scan task: {e}")))?
    }

    async fn observe<T>(&self, method: &str, f: impl Future<Output = Result<T>>) -> Result<Response<T>, Status> {
        let start = Instant::now();
        let res = f.await;
        self.metrics.request_duration.with_label_values(&[method]).observe(start.elapsed().as_secs_f64());
        let outcome = match &res {
            Ok(_) => "ok",
            Err(Error::NotLeader { .. }) => "not_leader",
            Err(Error::EpochMismatch(_) | Error::KeyNotInShard { .. }) => "epoch_mismatch",
            Err(Error::InvalidArgument { .. }) => "invalid_argument",
            Err(Error::Ambiguous(_)) => "ambiguous",
            Err(_) => "error",
        };
        self.metrics.requests.with_label_values(&[method, outcome]).inc();
        res.map(Response::new).map_err(Status::from)
    }
}

fn unexpected(r: CmdResult) -> Error {
    Error::Corrupt(format!("unexpected command result {r:?}"))
}

#[tonic::async_trait]
impl ShardKv for KvService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let req = req.into_inner();
        self.observe("get", async {
            let ctx = Self::context(&req.context)?;
            self.check_key(&req.key)?;
            let shard = self.read_barrier(ctx, req.consistency).await?;
            let mut r = self.read_keys(shard, vec![req.key]).await?;
            let r = r.pop().ok_or_else(|| Error::Corrupt("no read result".into()))?;
            Ok(GetResponse { found: r.found, value: r.value })
        })
        .await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        self.observe("put", async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_key(&req.key)?;
            self.check_value(&req.value)?;
            match self.write(&ctx, Op::Put(req)).await? {
                CmdResult::Put(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let req = req.into_inner();
        self.observe("delete", async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_key(&req.key)?;
            match self.write(&ctx, Op::Delete(req)).await? {
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
        let req = req.into_inner();
        self.observe("cas", async {
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
            match self.write(&ctx, Op::Cas(req)).await? {
                CmdResult::Cas(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn batch_get(&self, req: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let req = req.into_inner();
        self.observe("batch_get", async {
            let ctx = Self::context(&req.context)?;
            self.check_count(req.keys.len())?;
            for k in &req.keys {
                self.check_key(k)?;
            }
            let shard = self.read_barrier(ctx, req.consistency).await?;
            Ok(BatchGetResponse { results: self.read_keys(shard, req.keys).await? })
        })
        .await
    }

    async fn batch_put(&self, req: Request<BatchPutRequest>) -> Result<Response<BatchPutResponse>, Status> {
        let req = req.into_inner();
        self.observe("batch_put", async {
            let ctx = Self::context(&req.context)?.clone();
            self.check_count(req.pairs.len())?;
            for p in &req.pairs {
                self.check_key(&p.key)?;
                self.check_value(&p.value)?;
            }
            match self.write(&ctx, Op::BatchPut(req)).await? {
                CmdResult::BatchPut(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        use ringkv_proto::kv::{compare::Expected, mutation};
        let req = req.into_inner();
        self.observe("txn", async {
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
            match self.write(&ctx, Op::Txn(req)).await? {
                CmdResult::Txn(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let req = req.into_inner();
        self.observe("scan", async {
            let ctx = Self::context(&req.context)?;
            if req.prefix.len() > self.limits.max_key_bytes {
                return Err(Error::invalid("prefix", format!("longer than {} bytes", self.limits.max_key_bytes)));
            }
            if req.has_after_key {
                self.check_key(&req.after_key)?;
            }
            let limit = (req.limit as usize).clamp(1, MAX_SCAN_LIMIT);
            let shard = self.read_barrier(ctx, req.consistency).await?;
            let after = req.has_after_key.then_some(req.after_key);
            let (pairs, more) = self.scan_shard(shard, req.prefix, after, limit).await?;
            Ok(ScanResponse { pairs, more })
        })
        .await
    }
}
