//! The public `Kv` gRPC service: validates, splits multi-key calls by shard
//! (run in parallel), routes each piece with [`Router::call`], and maps
//! failures to the API's status codes with a typed `api.Error` in the details.
//! Every call runs in a `request` span under its request id, answers with
//! that id (`ringkv-request-id`), and is logged once when slow.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::future::join_all;
use prost::Message;
use ringkv_common::hashing;
use ringkv_common::limits::Limits;
use ringkv_common::trace::{choose_request_id, TRACEPARENT_HEADER};
use ringkv_proto::api::kv_server::Kv;
use ringkv_proto::api::{
    AtomicBatchRequest, AtomicBatchResponse, BatchGetRequest, BatchGetResponse, BatchPutRequest, BatchPutResponse,
    CompareAndSwapRequest, CompareAndSwapResponse, DeleteRequest, DeleteResponse, Error as ApiError, ErrorCode,
    GetRequest, GetResponse, KeyResult, PutRequest, PutResponse, ScanRequest, ScanResponse,
};
use ringkv_proto::kv as shard;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Request, Response, Status};
use tracing::Instrument;

use crate::routing::{CallOptions, RouteError, Router, Target};
use crate::trace::{fresh_id, CallTrace};

/// Scan pages hold at most this many pairs.
pub const MAX_SCAN_LIMIT: u32 = 10_000;
const DEFAULT_SCAN_LIMIT: u32 = 100;

/// The `Kv` service, shared by the gRPC server and the HTTP gateway.
#[derive(Clone)]
pub struct KvService {
    router: Arc<Router>,
    limits: Limits,
    default_timeout: Duration,
    /// Calls slower than this are logged once with every hop.
    slow_request: Duration,
}

/// A routing failure as the API's typed error, naming `key`.
pub fn api_error(e: &RouteError, key: &[u8]) -> ApiError {
    let code = match e {
        RouteError::Invalid { .. } => ErrorCode::InvalidArgument,
        RouteError::Unavailable(_) => ErrorCode::Unavailable,
        RouteError::Ambiguous(_) => ErrorCode::Ambiguous,
        RouteError::Overloaded(_) => ErrorCode::Overloaded,
    };
    ApiError { code: code as i32, message: e.to_string(), key: key.to_vec() }
}

/// The gRPC status for an API error, the typed error in its details.
pub fn to_status(e: ApiError) -> Status {
    let code = match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown) {
        ErrorCode::InvalidArgument | ErrorCode::CrossTag => Code::InvalidArgument,
        ErrorCode::Unavailable => Code::Unavailable,
        ErrorCode::Ambiguous => Code::DeadlineExceeded,
        ErrorCode::Overloaded => Code::ResourceExhausted,
        ErrorCode::Unknown => Code::Unknown,
    };
    Status::with_details(code, e.message.clone(), e.encode_to_vec().into())
}

/// The typed error in a status returned by a router, if any.
pub fn from_status(s: &Status) -> Option<ApiError> {
    ApiError::decode(s.details()).ok().filter(|e| e.code != 0 || !e.message.is_empty())
}

use ringkv_common::trace::MAX_REQUEST_ID_BYTES;
/// Metadata / HTTP header carrying a client's request id.
pub use ringkv_common::trace::REQUEST_ID_HEADER;

/// Options for a write: the given de-dup request id (when sane) or a
/// random one. The caller's id de-duplicates whatever its bytes; the trace
/// is separate (its id may come from a `traceparent`, which a whole trace
/// shares, so it must never de-duplicate).
pub fn write_options(id: Option<Vec<u8>>, deadline: Instant, trace: Arc<CallTrace>) -> CallOptions {
    let request_id = id
        .filter(|id| !id.is_empty() && id.len() <= MAX_REQUEST_ID_BYTES)
        .unwrap_or_else(|| rand::random::<[u8; 16]>().to_vec());
    CallOptions { request_id, is_write: true, deadline, trace }
}

/// A call's trace from its headers: the caller's `ringkv-request-id` when it
/// is a usable id, else a valid `traceparent`'s trace id, else a fresh id.
/// A malformed header is ignored, never refused.
pub fn trace_from(request_id: Option<&[u8]>, traceparent: Option<&[u8]>) -> Arc<CallTrace> {
    Arc::new(CallTrace::new(choose_request_id(request_id, traceparent, fresh_id)))
}

fn trace_of(meta: &MetadataMap) -> Arc<CallTrace> {
    trace_from(meta.get(REQUEST_ID_HEADER).map(|v| v.as_bytes()), meta.get(TRACEPARENT_HEADER).map(|v| v.as_bytes()))
}

fn invalid(field: &str, reason: impl Into<String>) -> ApiError {
    let reason = reason.into();
    ApiError { code: ErrorCode::InvalidArgument as i32, message: format!("invalid {field}: {reason}"), key: Vec::new() }
}

impl KvService {
    /// A service routing through `router`, checking `limits`; `default_timeout`
    /// bounds requests that carry no deadline.
    pub fn new(router: Arc<Router>, limits: Limits, default_timeout: Duration) -> Self {
        KvService { router, limits, default_timeout, slow_request: Duration::from_millis(500) }
    }

    /// Logs calls slower than `d` (zero: every call) once, with every hop.
    pub fn with_slow_request(mut self, d: Duration) -> Self {
        self.slow_request = d;
        self
    }

    /// A write's routing options: the caller's request id (metadata
    /// `ringkv-request-id`, so a client retrying through another router is
    /// still applied once) or a fresh one, the deadline and the trace.
    pub fn write_opts<T>(&self, req: &Request<T>) -> CallOptions {
        let id = req.metadata().get(REQUEST_ID_HEADER).map(|v| v.as_bytes().to_vec());
        write_options(id, self.deadline(req), trace_of(req.metadata()))
    }

    /// A read's routing options: the deadline and the trace.
    pub fn read_opts<T>(&self, req: &Request<T>) -> CallOptions {
        CallOptions::read(self.deadline(req), trace_of(req.metadata()))
    }

    /// The caller's deadline (grpc-timeout), or the router's default.
    fn deadline<T>(&self, req: &Request<T>) -> Instant {
        let t = req
            .metadata()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(self.default_timeout);
        Instant::now() + t
    }

    /// Refuses an empty key or one over `limits.max_key_bytes`.
    pub fn check_key(&self, key: &[u8]) -> Result<(), ApiError> {
        if key.is_empty() {
            return Err(invalid("key", "empty"));
        }
        if key.len() > self.limits.max_key_bytes {
            return Err(invalid("key", format!("{} bytes, limit {}", key.len(), self.limits.max_key_bytes)));
        }
        Ok(())
    }

    /// Refuses a value over `limits.max_value_bytes`.
    pub fn check_value(&self, v: &[u8]) -> Result<(), ApiError> {
        if v.len() > self.limits.max_value_bytes {
            return Err(invalid("value", format!("{} bytes, limit {}", v.len(), self.limits.max_value_bytes)));
        }
        Ok(())
    }

    fn check_count(&self, n: usize) -> Result<(), ApiError> {
        if n == 0 || n > self.limits.max_batch_keys {
            return Err(invalid("batch", format!("{n} keys; between 1 and {}", self.limits.max_batch_keys)));
        }
        Ok(())
    }

    // Public entry points (gRPC and HTTP both come here): each is counted.

    /// Reads one key with the given consistency.
    pub async fn get_at(&self, key: Vec<u8>, consistency: i32, opts: &CallOptions) -> Result<GetResponse, ApiError> {
        self.timed("get", opts, self.get_at_inner(key, consistency, opts)).await
    }

    /// Writes one key.
    pub async fn put_at(&self, key: Vec<u8>, value: Vec<u8>, opts: &CallOptions) -> Result<PutResponse, ApiError> {
        self.timed("put", opts, self.put_at_inner(key, value, opts)).await
    }

    /// Deletes one key.
    pub async fn delete_at(&self, key: Vec<u8>, opts: &CallOptions) -> Result<DeleteResponse, ApiError> {
        self.timed("delete", opts, self.delete_at_inner(key, opts)).await
    }

    /// Compare-and-swap on one key.
    pub async fn cas_at(
        &self,
        req: CompareAndSwapRequest,
        opts: &CallOptions,
    ) -> Result<CompareAndSwapResponse, ApiError> {
        self.timed("cas", opts, self.cas_at_inner(req, opts)).await
    }

    /// Reads many keys, one call per shard in parallel.
    pub async fn batch_get_at(&self, req: BatchGetRequest, opts: &CallOptions) -> Result<BatchGetResponse, ApiError> {
        self.timed("batch_get", opts, self.batch_get_at_inner(req, opts)).await
    }

    /// Writes many keys, one call per shard in parallel; failures are reported
    /// per key, not for the whole batch.
    pub async fn batch_put_at(&self, req: BatchPutRequest, opts: &CallOptions) -> Result<BatchPutResponse, ApiError> {
        self.timed("batch_put", opts, self.batch_put_at_inner(req, opts)).await
    }

    /// Compares and mutates keys that share one hash tag, atomically in one shard.
    pub async fn atomic_batch_at(
        &self,
        req: AtomicBatchRequest,
        opts: &CallOptions,
    ) -> Result<AtomicBatchResponse, ApiError> {
        self.timed("atomic_batch", opts, self.atomic_batch_at_inner(req, opts)).await
    }

    /// One page of a scan.
    pub async fn scan_at(&self, req: ScanRequest, opts: &CallOptions) -> Result<ScanResponse, ApiError> {
        self.timed("scan", opts, self.scan_at_inner(req, opts)).await
    }

    async fn get_at_inner(&self, key: Vec<u8>, consistency: i32, opts: &CallOptions) -> Result<GetResponse, ApiError> {
        self.check_key(&key)?;
        let r = self
            .router
            .call(Target::Key(&key), opts, |mut c, ctx| {
                let req = shard::GetRequest { context: Some(ctx), key: key.clone(), consistency };
                async move { c.get(req).await }
            })
            .await
            .map_err(|e| api_error(&e, &key))?;
        Ok(GetResponse { found: r.found, value: r.value })
    }

    async fn put_at_inner(&self, key: Vec<u8>, value: Vec<u8>, opts: &CallOptions) -> Result<PutResponse, ApiError> {
        self.check_key(&key)?;
        self.check_value(&value)?;
        self.router
            .call(Target::Key(&key), opts, |mut c, ctx| {
                let req = shard::PutRequest { context: Some(ctx), key: key.clone(), value: value.clone() };
                async move { c.put(req).await }
            })
            .await
            .map_err(|e| api_error(&e, &key))?;
        Ok(PutResponse {})
    }

    async fn delete_at_inner(&self, key: Vec<u8>, opts: &CallOptions) -> Result<DeleteResponse, ApiError> {
        self.check_key(&key)?;
        let r = self
            .router
            .call(Target::Key(&key), opts, |mut c, ctx| {
                let req = shard::DeleteRequest { context: Some(ctx), key: key.clone() };
                async move { c.delete(req).await }
            })
            .await
            .map_err(|e| api_error(&e, &key))?;
        Ok(DeleteResponse { existed: r.existed })
    }

    async fn cas_at_inner(
        &self,
        req: CompareAndSwapRequest,
        opts: &CallOptions,
    ) -> Result<CompareAndSwapResponse, ApiError> {
        use ringkv_proto::api::compare_and_swap_request::{Expected, New};
        use shard::compare_and_swap_request as s;
        self.check_key(&req.key)?;
        let expected = match req.expected {
            Some(Expected::ExpectedValue(v)) => {
                self.check_value(&v)?;
                s::Expected::ExpectedValue(v)
            }
            Some(Expected::ExpectAbsent(true)) => s::Expected::ExpectAbsent(true),
            _ => return Err(invalid("expected", "set expected_value or expect_absent")),
        };
        let new = match req.new {
            Some(New::NewValue(v)) => {
                self.check_value(&v)?;
                s::New::NewValue(v)
            }
            Some(New::Delete(true)) => s::New::Delete(true),
            _ => return Err(invalid("new", "set new_value or delete")),
        };
        let key = req.key;
        let r = self
            .router
            .call(Target::Key(&key), opts, |mut c, ctx| {
                let req = shard::CompareAndSwapRequest {
                    context: Some(ctx),
                    key: key.clone(),
                    expected: Some(expected.clone()),
                    new: Some(new.clone()),
                };
                async move { c.compare_and_swap(req).await }
            })
            .await
            .map_err(|e| api_error(&e, &key))?;
        Ok(CompareAndSwapResponse { succeeded: r.succeeded, found: r.found, current_value: r.current_value })
    }

    /// Groups keys (with their request positions) by the shard that owns them.
    fn by_shard(&self, keys_: &[Vec<u8>]) -> Result<BTreeMap<u64, Vec<usize>>, ApiError> {
        let mut groups: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
        for (i, k) in keys_.iter().enumerate() {
            self.check_key(k)?;
            let id = self.router.map.shard_for(k).map_or(0, |s| s.id);
            groups.entry(id).or_default().push(i);
        }
        Ok(groups)
    }

    async fn batch_get_at_inner(&self, req: BatchGetRequest, opts: &CallOptions) -> Result<BatchGetResponse, ApiError> {
        self.check_count(req.keys.len())?;
        let groups = self.by_shard(&req.keys)?;
        let consistency = req.consistency;
        let mut results: Vec<KeyResult> =
            req.keys.iter().map(|k| KeyResult { key: k.clone(), ..Default::default() }).collect();
        let calls = groups.into_values().map(|idx| {
            let keys_: Vec<Vec<u8>> = idx.iter().map(|&i| req.keys[i].clone()).collect();
            async move {
                let first = keys_[0].clone();
                let r = self
                    .router
                    .call(Target::Key(&first), opts, |mut c, ctx| {
                        let req = shard::BatchGetRequest { context: Some(ctx), keys: keys_.clone(), consistency };
                        async move { c.batch_get(req).await }
                    })
                    .await;
                (idx, r.map_err(|e| api_error(&e, &first)))
            }
        });
        for (idx, r) in join_all(calls).await {
            match r {
                Ok(resp) => {
                    for (i, got) in idx.into_iter().zip(resp.results) {
                        results[i].found = got.found;
                        results[i].value = got.value;
                    }
                }
                Err(e) => {
                    for i in idx {
                        results[i].error = Some(ApiError { key: results[i].key.clone(), ..e.clone() });
                    }
                }
            }
        }
        Ok(BatchGetResponse { results })
    }

    async fn batch_put_at_inner(&self, req: BatchPutRequest, opts: &CallOptions) -> Result<BatchPutResponse, ApiError> {
        self.check_count(req.pairs.len())?;
        for p in &req.pairs {
            self.check_value(&p.value)?;
        }
        let keys_: Vec<Vec<u8>> = req.pairs.iter().map(|p| p.key.clone()).collect();
        let groups = self.by_shard(&keys_)?;
        let mut results: Vec<KeyResult> =
            keys_.iter().map(|k| KeyResult { key: k.clone(), ..Default::default() }).collect();
        let calls = groups.into_values().map(|idx| {
            let pairs: Vec<shard::KvPair> = idx.iter().map(|&i| req.pairs[i].clone()).collect();
            async move {
                let first = pairs[0].key.clone();
                let r = self
                    .router
                    .call(Target::Key(&first), opts, |mut c, ctx| {
                        let req = shard::BatchPutRequest { context: Some(ctx), pairs: pairs.clone() };
                        async move { c.batch_put(req).await }
                    })
                    .await;
                (idx, r.map_err(|e| api_error(&e, &first)))
            }
        });
        for (idx, r) in join_all(calls).await {
            if let Err(e) = r {
                for i in idx {
                    results[i].error = Some(ApiError { key: results[i].key.clone(), ..e.clone() });
                }
            }
        }
        Ok(BatchPutResponse { results })
    }

    async fn atomic_batch_at_inner(
        &self,
        req: AtomicBatchRequest,
        opts: &CallOptions,
    ) -> Result<AtomicBatchResponse, ApiError> {
        let all: Vec<&Vec<u8>> =
            req.compares.iter().map(|c| &c.key).chain(req.mutations.iter().map(|m| &m.key)).collect();
        self.check_count(all.len())?;
        for k in &all {
            self.check_key(k)?;
        }
        // Keys that share hash_part share a hash, hence a shard: one Raft entry.
        let tag = hashing::hash_part(all[0]);
        if all.iter().any(|k| hashing::hash_part(k) != tag) {
            return Err(ApiError {
                code: ErrorCode::CrossTag as i32,
                message: "an atomic batch needs keys that share one hash tag, like user:{42}:name and user:{42}:email"
                    .into(),
                key: Vec::new(),
            });
        }
        for m in &req.mutations {
            if let Some(shard::mutation::Op::Put(v)) = &m.op {
                self.check_value(v)?;
            }
        }
        let first = all[0].clone();
        let (compares, mutations) = (req.compares, req.mutations);
        let r = self
            .router
            .call(Target::Key(&first), opts, |mut c, ctx| {
                let req =
                    shard::TxnRequest { context: Some(ctx), compares: compares.clone(), mutations: mutations.clone() };
                async move { c.txn(req).await }
            })
            .await
            .map_err(|e| api_error(&e, &first))?;
        let current = r
            .current
            .into_iter()
            .map(|g| KeyResult { key: g.key, found: g.found, value: g.value, error: None })
            .collect();
        Ok(AtomicBatchResponse { succeeded: r.succeeded, current })
    }

    /// One page of a scan. The continuation is `shard_id (8 BE) ++ last key`:
    /// the next page resumes after that key in that shard.
    async fn scan_at_inner(&self, req: ScanRequest, opts: &CallOptions) -> Result<ScanResponse, ApiError> {
        if req.prefix.len() > self.limits.max_key_bytes {
            return Err(invalid("prefix", "longer than the key limit"));
        }
        let limit = if req.limit == 0 { DEFAULT_SCAN_LIMIT } else { req.limit.min(MAX_SCAN_LIMIT) };
        let (mut shard_idx, mut after) = (0usize, None::<Vec<u8>>);
        let shards = self.router.map.shards();
        if shards.is_empty() {
            return Err(api_error(&RouteError::Unavailable("no shard map yet".into()), &req.prefix));
        }
        let tagged = hashing::prefix_hash(&req.prefix);
        // The shards to visit, in ring order.
        let targets: Vec<u64> = match tagged {
            Some(h) => shards.iter().filter(|s| hashing::in_range(h, s.start, s.end)).map(|s| s.id).collect(),
            None => shards.iter().map(|s| s.id).collect(),
        };
        if !req.continuation.is_empty() {
            if req.continuation.len() < 8 {
                return Err(invalid("continuation", "not a token this router issued"));
            }
            let (id, key) = req.continuation.split_at(8);
            let id = u64::from_be_bytes(id.try_into().unwrap_or_default());
            shard_idx =
                targets.iter().position(|t| *t == id).ok_or_else(|| invalid("continuation", "unknown shard"))?;
            after = (!key.is_empty()).then(|| key.to_vec());
        }
        let mut pairs = Vec::new();
        while shard_idx < targets.len() && (pairs.len() as u32) < limit {
            let id = targets[shard_idx];
            let Some(d) = shards.iter().find(|s| s.id == id) else { break };
            let want = limit - pairs.len() as u32;
            let (prefix, after_key) = (req.prefix.clone(), after.clone());
            let r = self
                .router
                .call(Target::Shard(d.id), opts, |mut c, ctx| {
                    let req = shard::ScanRequest {
                        context: Some(ctx),
                        prefix: prefix.clone(),
                        has_after_key: after_key.is_some(),
                        after_key: after_key.clone().unwrap_or_default(),
                        limit: want,
                        consistency: req.consistency,
                    };
                    async move { c.scan(req).await }
                })
                .await
                .map_err(|e| api_error(&e, &req.prefix))?;
            let last = r.pairs.last().map(|p| p.key.clone());
            pairs.extend(r.pairs);
            if r.more {
                after = last;
                break;
            }
            shard_idx += 1;
            after = None;
        }
        let continuation = if shard_idx < targets.len() {
            let mut c = targets[shard_idx].to_be_bytes().to_vec();
            c.extend(after.unwrap_or_default());
            c
        } else {
            Vec::new()
        };
        Ok(ScanResponse { pairs, continuation, full_scan: tagged.is_none() })
    }
}

/// `grpc-timeout` values: an integer and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(v: &str) -> Option<Duration> {
    let (n, unit) = v.split_at(v.len().checked_sub(1)?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

impl KvService {
    /// Runs one API call in its `request` span; counts it, and logs it once
    /// at WARN with every hop when it took `slow_request` or longer.
    async fn timed<T>(
        &self,
        op: &'static str,
        opts: &CallOptions,
        f: impl std::future::Future<Output = Result<T, ApiError>>,
    ) -> Result<T, ApiError> {
        let trace = &opts.trace;
        let span = tracing::info_span!("request", request_id = %trace.id, op, shard = tracing::field::Empty);
        let start = Instant::now();
        let r = f.instrument(span.clone()).await;
        let took = start.elapsed();
        crate::metrics::observe(op, start, &r);
        if took >= self.slow_request {
            crate::metrics::count_slow(op);
            let (route, backoff) = trace.route_and_backoff();
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            span.in_scope(|| {
                tracing::warn!(
                    request_id = %trace.id,
                    op,
                    shard = %trace.shards(),
                    outcome = if r.is_ok() { "ok" } else { "error" },
                    attempts = trace.attempts(),
                    total_ms = ms(took),
                    route_ms = ms(route),
                    backoff_ms = ms(backoff),
                    hops = %trace.hops(),
                    "slow request"
                )
            });
        }
        r
    }
}

/// The gRPC answer, carrying the call's id back (`ringkv-request-id`) on
/// success and on error alike.
fn reply<T>(r: Result<T, ApiError>, opts: &CallOptions) -> Result<Response<T>, Status> {
    let id = AsciiMetadataValue::try_from(opts.trace.id.as_str()).ok();
    let with_id = |m: &mut MetadataMap| {
        if let Some(id) = id.clone() {
            m.insert(REQUEST_ID_HEADER, id);
        }
    };
    match r {
        Ok(v) => {
            let mut resp = Response::new(v);
            with_id(resp.metadata_mut());
            Ok(resp)
        }
        Err(e) => {
            let mut status = to_status(e);
            with_id(status.metadata_mut());
            Err(status)
        }
    }
}

#[tonic::async_trait]
impl Kv for KvService {
    async fn get(&self, req: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
        let o = self.read_opts(&req);
        let r = req.into_inner();
        reply(self.get_at(r.key, r.consistency, &o).await, &o)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let o = self.write_opts(&req);
        let r = req.into_inner();
        reply(self.put_at(r.key, r.value, &o).await, &o)
    }

    async fn delete(&self, req: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
        let o = self.write_opts(&req);
        reply(self.delete_at(req.into_inner().key, &o).await, &o)
    }

    async fn compare_and_swap(
        &self,
        req: Request<CompareAndSwapRequest>,
    ) -> Result<Response<CompareAndSwapResponse>, Status> {
        let o = self.write_opts(&req);
        reply(self.cas_at(req.into_inner(), &o).await, &o)
    }

    async fn batch_get(&self, req: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
        let o = self.read_opts(&req);
        reply(self.batch_get_at(req.into_inner(), &o).await, &o)
    }

    async fn batch_put(&self, req: Request<BatchPutRequest>) -> Result<Response<BatchPutResponse>, Status> {
        let o = self.write_opts(&req);
        reply(self.batch_put_at(req.into_inner(), &o).await, &o)
    }

    async fn atomic_batch(&self, req: Request<AtomicBatchRequest>) -> Result<Response<AtomicBatchResponse>, Status> {
        let o = self.write_opts(&req);
        reply(self.atomic_batch_at(req.into_inner(), &o).await, &o)
    }

    async fn scan(&self, req: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
        let o = self.read_opts(&req);
        reply(self.scan_at(req.into_inner(), &o).await, &o)
    }
}
