//! The Rust client of ringkv. It talks to one or more routers (any of them
//! can serve any key), fails over to the next router when one cannot be
//! reached, and bounds every call by a timeout.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ringkv_client::Error> {
//! let client = ringkv_client::Client::connect(["127.0.0.1:6380"]).await?;
//! client.put(b"greeting", b"hello").await?;
//! assert_eq!(client.get(b"greeting").await?, Some(b"hello".to_vec()));
//! # Ok(()) }
//! ```
//!
//! Writes carry a request id that stays the same when the client retries
//! through another router, so a write is applied at most once. When the
//! outcome of a write cannot be known (the deadline passed after it left), the
//! error is [`Error::Ambiguous`]: the write may or may not have happened.

use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prost::Message;
use ringkv_proto::api::kv_client::KvClient;
use ringkv_proto::api::{
    compare_and_swap_request::{Expected, New},
    BatchGetRequest, BatchPutRequest, CompareAndSwapRequest, DeleteRequest, Error as ApiError, ErrorCode, GetRequest,
    PutRequest, ScanRequest,
};
pub use ringkv_proto::api::{AtomicBatchRequest, AtomicBatchResponse, CompareAndSwapResponse, KeyResult, ScanResponse};
pub use ringkv_proto::kv::{Compare, KvPair, Mutation, ReadConsistency};
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

const REQUEST_ID_HEADER: &str = "ringkv-request-id";

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// Bad input: nothing was written.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// No leader, no quorum or no router in time: nothing was written.
    #[error("unavailable: {0}")]
    Unavailable(String),
    /// The deadline passed after a write left: it may or may not be applied.
    #[error("outcome unknown: {0}")]
    Ambiguous(String),
    /// The cluster shed the request: nothing was written; retry later.
    #[error("overloaded: {0}")]
    Overloaded(String),
    /// An atomic batch whose keys do not share one hash tag.
    #[error("keys span hash tags: {0}")]
    CrossTag(String),
    #[error("bad router address {0:?}")]
    BadAddress(String),
}

impl Error {
    fn from_status(s: &Status) -> Error {
        if let Ok(e) = ApiError::decode(s.details()) {
            if e.code != 0 {
                let m = e.message;
                return match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown) {
                    ErrorCode::InvalidArgument => Error::InvalidArgument(m),
                    ErrorCode::Unavailable => Error::Unavailable(m),
                    ErrorCode::Ambiguous => Error::Ambiguous(m),
                    ErrorCode::Overloaded => Error::Overloaded(m),
                    ErrorCode::CrossTag => Error::CrossTag(m),
                    ErrorCode::Unknown => Error::Unavailable(m),
                };
            }
        }
        match s.code() {
            Code::InvalidArgument => Error::InvalidArgument(s.message().to_string()),
            Code::DeadlineExceeded => Error::Ambiguous(s.message().to_string()),
            Code::ResourceExhausted => Error::Overloaded(s.message().to_string()),
            _ => Error::Unavailable(format!("{}: {}", s.code(), s.message())),
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One page of a scan; pass `continuation` back for the next (empty: done).
pub type ScanPage = ScanResponse;

pub struct Client {
    routers: Vec<Endpoint>,
    /// The router currently in use (index into `routers`) and its channel.
    current: Mutex<(usize, Option<Channel>)>,
    timeout: Duration,
}

impl Client {
    /// A client of the routers at `addrs` (HOST:PORT). Connections are made
    /// lazily: this fails only on malformed addresses.
    pub async fn connect<I, S>(addrs: I) -> Result<Client>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut routers = Vec::new();
        for a in addrs {
            let a = a.as_ref();
            let uri = if a.contains("://") { a.to_string() } else { format!("http://{a}") };
            let ep = Endpoint::from_shared(uri)
                .map_err(|_| Error::BadAddress(a.to_string()))?
                .connect_timeout(Duration::from_secs(1))
                .tcp_nodelay(true);
            routers.push(ep);
        }
        if routers.is_empty() {
            return Err(Error::BadAddress(String::new()));
        }
        Ok(Client { routers, current: Mutex::new((0, None)), timeout: Duration::from_secs(5) })
    }

    /// Bounds every call (retries and failover included). Default 5 s.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    async fn channel(&self) -> Result<(usize, Channel), Status> {
        let (i, ch) = self.current.lock().clone();
        if let Some(ch) = ch {
            return Ok((i, ch));
        }
        let ch = self.routers[i]
            .connect()
            .await
            .map_err(|e| Status::unavailable(format!("router {}: {e}", self.routers[i].uri())))?;
        *self.current.lock() = (i, Some(ch.clone()));
        Ok((i, ch))
    }

    /// Moves to the next router after `failed` could not be reached.
    fn fail_over(&self, failed: usize) {
        let mut cur = self.current.lock();
        if cur.0 == failed {
            *cur = ((failed + 1) % self.routers.len(), None);
        }
    }

    /// Runs one API call with failover across routers, inside the timeout.
    async fn call<T, F, Fut>(&self, write: bool, f: F) -> Result<T>
    where
        F: Fn(KvClient<Channel>, Option<MetadataValue<tonic::metadata::Ascii>>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let id = write.then(|| {
            let bytes: [u8; 16] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            MetadataValue::try_from(hex).expect("hex is valid metadata")
        });
        let mut backoff = Duration::from_millis(20);
        // A write that may have reached a router is ambiguous if we give up.
        let mut maybe_sent = false;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (status, router, sent) = match self.channel().await {
                Ok((i, ch)) => {
                    let res = tokio::time::timeout(left, f(KvClient::new(ch), id.clone(), left)).await;
                    match res {
                        Ok(Ok(r)) => return Ok(r.into_inner()),
                        Ok(Err(s)) => (s, i, true),
                        Err(_) => (Status::deadline_exceeded("client timeout"), i, true),
                    }
                }
                // Not connected: nothing was sent.
                Err(s) => (s, self.current.lock().0, false),
            };
            let typed = ApiError::decode(status.details()).is_ok_and(|e| e.code != 0);
            // Not answered by a router: try the next one.
            let unreachable = !typed && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled);
            if !unreachable {
                let e = Error::from_status(&status);
                // An earlier attempt through another router may have been
                // applied: a later "not applied" answer speaks only for itself.
                return Err(match e {
                    Error::Unavailable(m) | Error::Overloaded(m) if maybe_sent => {
                        Error::Ambiguous(format!("an earlier attempt may have been applied; then: {m}"))
                    }
                    e => e,
                });
            }
            maybe_sent |= write && sent;
            self.fail_over(router);
            if Instant::now() + backoff >= deadline {
                return Err(if maybe_sent {
                    Error::Ambiguous(format!("no router answered in time; last error: {}", status.message()))
                } else {
                    Error::Unavailable(format!("no router reachable: {}", status.message()))
                });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(500));
        }
    }

    fn request<T>(msg: T, id: Option<MetadataValue<tonic::metadata::Ascii>>, timeout: Duration) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.set_timeout(timeout);
        if let Some(id) = id {
            r.metadata_mut().insert(REQUEST_ID_HEADER, id);
        }
        r
    }

    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    pub async fn get_with(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>> {
        let r = self
            .call(false, |mut c, id, t| {
                let req = GetRequest { key: key.to_vec(), consistency: consistency as i32 };
                async move { c.get(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(r.found.then_some(r.value))
    }

    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<()> {
        self.call(true, |mut c, id, t| {
            let req = PutRequest { key: key.to_vec(), value: value.to_vec() };
            async move { c.put(Self::request(req, id, t)).await }
        })
        .await
        .map(|_| ())
    }

    /// Deletes `key`; true when it existed.
    pub async fn delete(&self, key: &[u8]) -> Result<bool> {
        let r = self
            .call(true, |mut c, id, t| {
                let req = DeleteRequest { key: key.to_vec() };
                async move { c.delete(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(r.existed)
    }

    /// Compare-and-swap. `expected = None`: the key must be absent.
    /// `new = None`: delete the key when the condition holds.
    pub async fn cas(&self, key: &[u8], expected: Option<&[u8]>, new: Option<&[u8]>) -> Result<CompareAndSwapResponse> {
        self.call(true, |mut c, id, t| {
            let req = CompareAndSwapRequest {
                key: key.to_vec(),
                expected: Some(match expected {
                    Some(v) => Expected::ExpectedValue(v.to_vec()),
                    None => Expected::ExpectAbsent(true),
                }),
                new: Some(match new {
                    Some(v) => New::NewValue(v.to_vec()),
                    None => New::Delete(true),
                }),
            };
            async move { c.compare_and_swap(Self::request(req, id, t)).await }
        })
        .await
    }

    /// Reads many keys (across shards, in parallel); each result says found,
    /// value, or its own error.
    pub async fn batch_get(&self, keys: &[Vec<u8>]) -> Result<Vec<KeyResult>> {
        let r = self
            .call(false, |mut c, id, t| {
                let req = BatchGetRequest { keys: keys.to_vec(), consistency: ReadConsistency::Linearizable as i32 };
                async move { c.batch_get(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(r.results)
    }

    /// Writes many pairs; not atomic across shards: each result has its own error.
    pub async fn batch_put(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<KeyResult>> {
        let r = self
            .call(true, |mut c, id, t| {
                let pairs = pairs.iter().map(|(k, v)| KvPair { key: k.clone(), value: v.clone() }).collect();
                let req = BatchPutRequest { pairs };
                async move { c.batch_put(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(r.results)
    }

    /// All compares hold and all mutations apply, or nothing applies. Every
    /// key must share one hash tag (`{…}`).
    pub async fn atomic_batch(&self, req: AtomicBatchRequest) -> Result<AtomicBatchResponse> {
        self.call(true, |mut c, id, t| {
            let req = req.clone();
            async move { c.atomic_batch(Self::request(req, id, t)).await }
        })
        .await
    }

    /// One page of keys starting with `prefix` (see [`ScanPage`]).
    pub async fn scan(&self, prefix: &[u8], limit: u32, continuation: &[u8]) -> Result<ScanPage> {
        self.call(false, |mut c, id, t| {
            let req = ScanRequest {
                prefix: prefix.to_vec(),
                limit,
                continuation: continuation.to_vec(),
                consistency: ReadConsistency::Linearizable as i32,
            };
            async move { c.scan(Self::request(req, id, t)).await }
        })
        .await
    }
}
