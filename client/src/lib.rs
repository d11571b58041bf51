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
//!
//! Every call is known in the routers' and storenodes' logs by a request id.
//! [`Client::put_traced`] and [`Client::get_traced`] choose it (or let the
//! router do so) and return the id the router used, for finding the call in
//! the logs (the slow-request log in particular).

#![warn(missing_docs)]

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

/// An answer and the request id the router knew the call by.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Traced<T> {
    /// The answer.
    pub value: T,
    /// The id in the router's answer (`ringkv-request-id`); empty if the
    /// router sent none.
    pub request_id: String,
}

/// Why a call failed, and so whether its write may have happened.
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
    /// A router address is malformed, or none was given: no client was made.
    #[error("bad router address {0:?}")]
    BadAddress(String),
}

impl Error {
    fn from_status(s: &Status) -> Error {
        if let Ok(e) = ApiError::decode(s.details()) {
            if e.code != 0 {
                let m = e.message;
                match ErrorCode::try_from(e.code) {
                    Ok(ErrorCode::InvalidArgument) => return Error::InvalidArgument(m),
                    Ok(ErrorCode::Unavailable) => return Error::Unavailable(m),
                    Ok(ErrorCode::Ambiguous) => return Error::Ambiguous(m),
                    Ok(ErrorCode::Overloaded) => return Error::Overloaded(m),
                    Ok(ErrorCode::CrossTag) => return Error::CrossTag(m),
                    // A code this client does not know (a newer router): the
                    // gRPC code below still says whether it may be applied.
                    Ok(ErrorCode::Unknown) | Err(_) => {}
                }
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

/// The client's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One page of a scan; pass `continuation` back for the next (empty: done).
pub type ScanPage = ScanResponse;

/// A ringkv client: talks to one router at a time and fails over to the next.
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
        let id = write.then(|| {
            let bytes: [u8; 16] = rand::random();
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            MetadataValue::try_from(hex).expect("hex is valid metadata")
        });
        self.call_with_id(id, write, f).await.map(|t| t.value)
    }

    /// [`Client::call`] under the given request id (kept across retries and
    /// routers; for a write it is also the de-dup id), returning the id the
    /// router answered with.
    async fn call_with_id<T, F, Fut>(
        &self,
        id: Option<MetadataValue<tonic::metadata::Ascii>>,
        write: bool,
        f: F,
    ) -> Result<Traced<T>>
    where
        F: Fn(KvClient<Channel>, Option<MetadataValue<tonic::metadata::Ascii>>, Duration) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Duration::from_millis(20);
        let mut attempts = Attempts::new(write);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let (status, router, sent) = match self.channel().await {
                Ok((i, ch)) => {
                    let res = tokio::time::timeout(left, f(KvClient::new(ch), id.clone(), left)).await;
                    match res {
                        Ok(Ok(r)) => {
                            let request_id = r
                                .metadata()
                                .get(REQUEST_ID_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or_default()
                                .to_string();
                            return Ok(Traced { value: r.into_inner(), request_id });
                        }
                        Ok(Err(s)) => (s, i, true),
                        Err(_) => (Status::deadline_exceeded("client timeout"), i, true),
                    }
                }
                // Not connected: nothing was sent.
                Err(s) => (s, self.current.lock().0, false),
            };
            if let Next::Fail(e) = attempts.after_failure(&status, sent) {
                return Err(e);
            }
            self.fail_over(router);
            if Instant::now() + backoff >= deadline {
                return Err(attempts.out_of_time(&status));
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

    /// Reads `key` linearizably; `None` when absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        self.get_with(key, ReadConsistency::Linearizable).await
    }

    /// Reads `key` with the given consistency; `None` when absent.
    pub async fn get_with(&self, key: &[u8], consistency: ReadConsistency) -> Result<Option<Vec<u8>>> {
        let r = self
            .call(false, |mut c, id, t| {
                let req = GetRequest { key: key.to_vec(), consistency: consistency as i32 };
                async move { c.get(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(r.found.then_some(r.value))
    }

    /// Reads `key` like [`Client::get_with`], under `request_id` when given
    /// (up to 64 visible ASCII characters; the router picks one otherwise),
    /// and returns the id the router used.
    pub async fn get_traced(
        &self,
        key: &[u8],
        consistency: ReadConsistency,
        request_id: Option<&str>,
    ) -> Result<Traced<Option<Vec<u8>>>> {
        let id = Self::chosen_id(request_id)?;
        let r = self
            .call_with_id(id, false, |mut c, id, t| {
                let req = GetRequest { key: key.to_vec(), consistency: consistency as i32 };
                async move { c.get(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(Traced { value: r.value.found.then_some(r.value.value), request_id: r.request_id })
    }

    /// Writes like [`Client::put`] under `request_id` when given (also its
    /// de-dup id: reuse it only to retry this very write), and returns the
    /// id the router used.
    pub async fn put_traced(&self, key: &[u8], value: &[u8], request_id: Option<&str>) -> Result<Traced<()>> {
        let id = match Self::chosen_id(request_id)? {
            Some(id) => id,
            None => {
                let hex: String = rand::random::<[u8; 16]>().iter().map(|b| format!("{b:02x}")).collect();
                MetadataValue::try_from(hex).expect("hex is valid metadata")
            }
        };
        let r = self
            .call_with_id(Some(id), true, |mut c, id, t| {
                let req = PutRequest { key: key.to_vec(), value: value.to_vec() };
                async move { c.put(Self::request(req, id, t)).await }
            })
            .await?;
        Ok(Traced { value: (), request_id: r.request_id })
    }

    /// A caller's request id as metadata; refused unless it is 1 to 64
    /// visible ASCII characters (what the router takes as an id).
    fn chosen_id(id: Option<&str>) -> Result<Option<MetadataValue<tonic::metadata::Ascii>>> {
        let Some(id) = id else { return Ok(None) };
        let usable = !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_graphic());
        let value = usable.then(|| MetadataValue::try_from(id).ok()).flatten();
        value
            .map(Some)
            .ok_or_else(|| Error::InvalidArgument(format!("request id {id:?}: 1 to 64 visible ASCII characters")))
    }

    /// Writes `value` under `key`.
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

/// What [`Client::call`] does after a failed attempt.
#[derive(Debug, PartialEq)]
enum Next {
    /// No router answered: try the next one.
    FailOver,
    /// The call fails with this.
    Fail(Error),
}

/// The failover state of one call, across its attempts.
#[derive(Debug, Clone, Copy)]
struct Attempts {
    write: bool,
    /// Whether a write may have been applied by an attempt so far.
    maybe_sent: bool,
}

impl Attempts {
    fn new(write: bool) -> Self {
        Attempts { write, maybe_sent: false }
    }

    /// Decides what follows an attempt that failed with `status`; `sent`:
    /// whether the request went out on a connection.
    fn after_failure(&mut self, status: &Status, sent: bool) -> Next {
        let typed = ApiError::decode(status.details()).is_ok_and(|e| e.code != 0);
        // A router's typed answer speaks for its attempt; anything else may
        // come after a write that left was applied.
        if !typed {
            self.maybe_sent |= self.write && sent;
        }
        // Not answered by a router: try the next one.
        if !typed && matches!(status.code(), Code::Unavailable | Code::Unknown | Code::Cancelled) {
            return Next::FailOver;
        }
        Next::Fail(self.settle(Error::from_status(status)))
    }

    /// The error when no time is left for another router.
    fn out_of_time(&self, last: &Status) -> Error {
        if self.maybe_sent {
            Error::Ambiguous(format!("no router answered in time; last error: {}", last.message()))
        } else {
            Error::Unavailable(format!("no router reachable: {}", last.message()))
        }
    }

    /// A read is never ambiguous; a write that may have been applied never
    /// fails definitively (a later "not applied" speaks only for itself).
    fn settle(&self, e: Error) -> Error {
        match e {
            Error::Ambiguous(m) if !self.write => Error::Unavailable(m),
            e @ Error::Ambiguous(_) => e,
            e if self.maybe_sent => Error::Ambiguous(format!("an earlier attempt may have been applied; then: {e}")),
            e => e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_CODES: [Code; 17] = [
        Code::Ok,
        Code::Cancelled,
        Code::Unknown,
        Code::InvalidArgument,
        Code::DeadlineExceeded,
        Code::NotFound,
        Code::AlreadyExists,
        Code::PermissionDenied,
        Code::ResourceExhausted,
        Code::FailedPrecondition,
        Code::Aborted,
        Code::OutOfRange,
        Code::Unimplemented,
        Code::Internal,
        Code::Unavailable,
        Code::DataLoss,
        Code::Unauthenticated,
    ];

    /// A router's answer: the typed error in the details.
    fn typed(grpc: Code, code: i32, message: &str) -> Status {
        let e = ApiError { code, message: message.into(), key: b"k".to_vec() };
        Status::with_details(grpc, message, e.encode_to_vec().into())
    }

    /// What a router sends for each API error code (its `to_status`).
    fn router_answer(code: ErrorCode, message: &str) -> Status {
        let grpc = match code {
            ErrorCode::InvalidArgument | ErrorCode::CrossTag => Code::InvalidArgument,
            ErrorCode::Unavailable => Code::Unavailable,
            ErrorCode::Ambiguous => Code::DeadlineExceeded,
            ErrorCode::Overloaded => Code::ResourceExhausted,
            ErrorCode::Unknown => Code::Unknown,
        };
        typed(grpc, code as i32, message)
    }

    #[test]
    fn every_typed_router_error_maps_to_its_variant_with_its_message() {
        let cases = [
            (ErrorCode::InvalidArgument, Error::InvalidArgument("m".into())),
            (ErrorCode::Unavailable, Error::Unavailable("m".into())),
            (ErrorCode::Ambiguous, Error::Ambiguous("m".into())),
            (ErrorCode::Overloaded, Error::Overloaded("m".into())),
            (ErrorCode::CrossTag, Error::CrossTag("m".into())),
        ];
        for (code, want) in cases {
            assert_eq!(Error::from_status(&router_answer(code, "m")), want, "{code:?}");
        }
    }

    #[test]
    fn the_typed_error_wins_over_the_grpc_code() {
        assert_eq!(
            Error::from_status(&typed(Code::Unavailable, ErrorCode::Ambiguous as i32, "m")),
            Error::Ambiguous("m".into())
        );
        assert_eq!(
            Error::from_status(&typed(Code::DeadlineExceeded, ErrorCode::Unavailable as i32, "m")),
            Error::Unavailable("m".into())
        );
    }

    #[test]
    fn an_untyped_status_maps_by_its_grpc_code_and_only_a_deadline_is_ambiguous() {
        for code in ALL_CODES {
            let e = Error::from_status(&Status::new(code, "m"));
            match code {
                Code::InvalidArgument => assert_eq!(e, Error::InvalidArgument("m".into())),
                Code::DeadlineExceeded => assert_eq!(e, Error::Ambiguous("m".into())),
                Code::ResourceExhausted => assert_eq!(e, Error::Overloaded("m".into())),
                _ => assert!(matches!(e, Error::Unavailable(ref m) if m.ends_with(": m")), "{code:?}: {e:?}"),
            }
        }
    }

    #[test]
    fn details_that_are_not_a_typed_error_are_ignored() {
        let garbage = Status::with_details(Code::DeadlineExceeded, "m", vec![0xff, 0xff, 0xff].into());
        assert_eq!(Error::from_status(&garbage), Error::Ambiguous("m".into()));
        let zero = typed(Code::ResourceExhausted, 0, "m");
        assert_eq!(Error::from_status(&zero), Error::Overloaded("m".into()));
    }

    #[test]
    fn a_typed_code_this_client_does_not_know_falls_back_to_the_grpc_code() {
        assert_eq!(Error::from_status(&typed(Code::DeadlineExceeded, 99, "m")), Error::Ambiguous("m".into()));
        assert_eq!(Error::from_status(&typed(Code::ResourceExhausted, 99, "m")), Error::Overloaded("m".into()));
        assert!(matches!(Error::from_status(&typed(Code::Internal, 99, "m")), Error::Unavailable(_)));
    }

    #[test]
    fn only_calls_no_router_answered_fail_over_to_the_next_router() {
        for write in [false, true] {
            for code in ALL_CODES {
                let next = Attempts::new(write).after_failure(&Status::new(code, "m"), false);
                let fails_over = matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled);
                assert_eq!(next == Next::FailOver, fails_over, "{code:?} (write: {write}): {next:?}");
            }
            // A router that answered "unavailable" (no leader in time) is not
            // skipped: another router would see the same cluster.
            let next = Attempts::new(write).after_failure(&router_answer(ErrorCode::Unavailable, "no leader"), true);
            assert_eq!(next, Next::Fail(Error::Unavailable("no leader".into())));
        }
    }

    #[test]
    fn a_typed_refusal_of_a_first_write_attempt_is_a_definite_failure() {
        for (code, want) in [
            (ErrorCode::InvalidArgument, Error::InvalidArgument("m".into())),
            (ErrorCode::Unavailable, Error::Unavailable("m".into())),
            (ErrorCode::Overloaded, Error::Overloaded("m".into())),
            (ErrorCode::CrossTag, Error::CrossTag("m".into())),
            (ErrorCode::Ambiguous, Error::Ambiguous("m".into())),
        ] {
            assert_eq!(Attempts::new(true).after_failure(&router_answer(code, "m"), true), Next::Fail(want));
        }
    }

    #[test]
    fn a_write_that_may_have_been_applied_is_never_reported_as_a_definite_failure() {
        let later = [
            router_answer(ErrorCode::Unavailable, "no leader"),
            router_answer(ErrorCode::Overloaded, "shed"),
            router_answer(ErrorCode::InvalidArgument, "too big"),
            router_answer(ErrorCode::CrossTag, "tags"),
            Status::internal("h2 protocol error"),
            Status::resource_exhausted("message too large"),
        ];
        for answer in later {
            let mut attempts = Attempts::new(true);
            assert_eq!(attempts.after_failure(&Status::unavailable("connection reset"), true), Next::FailOver);
            let next = attempts.after_failure(&answer, true);
            assert!(matches!(next, Next::Fail(Error::Ambiguous(_))), "{answer:?}: {next:?}");
        }
    }

    #[test]
    fn a_write_whose_call_broke_without_a_typed_answer_is_ambiguous() {
        let next = Attempts::new(true).after_failure(&Status::internal("h2 protocol error"), true);
        assert!(matches!(next, Next::Fail(Error::Ambiguous(_))), "{next:?}");
        let next = Attempts::new(false).after_failure(&Status::internal("h2 protocol error"), true);
        assert!(matches!(next, Next::Fail(Error::Unavailable(_))), "a read: {next:?}");
    }

    #[test]
    fn a_timed_out_write_is_ambiguous_and_a_timed_out_read_unavailable() {
        let timeout = Status::deadline_exceeded("client timeout");
        assert_eq!(
            Attempts::new(true).after_failure(&timeout, true),
            Next::Fail(Error::Ambiguous("client timeout".into()))
        );
        assert_eq!(
            Attempts::new(false).after_failure(&timeout, true),
            Next::Fail(Error::Unavailable("client timeout".into()))
        );
    }

    #[test]
    fn running_out_of_routers_is_ambiguous_only_for_a_write_that_left() {
        let reset = Status::unavailable("connection reset");
        let refused = Status::unavailable("connection refused");
        let mut left = Attempts::new(true);
        assert_eq!(left.after_failure(&reset, true), Next::FailOver);
        assert_eq!(left.after_failure(&refused, false), Next::FailOver);
        assert!(matches!(left.out_of_time(&refused), Error::Ambiguous(_)), "the first attempt left");

        let mut never_left = Attempts::new(true);
        assert_eq!(never_left.after_failure(&refused, false), Next::FailOver);
        assert!(matches!(never_left.out_of_time(&refused), Error::Unavailable(_)));

        let mut read = Attempts::new(false);
        assert_eq!(read.after_failure(&reset, true), Next::FailOver);
        assert!(matches!(read.out_of_time(&reset), Error::Unavailable(_)), "a read is never ambiguous");
    }

    #[tokio::test]
    async fn failing_over_moves_to_the_next_router_once_per_failure_and_wraps_around() {
        let client = Client::connect(["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3"]).await.unwrap();
        let current = |c: &Client| c.current.lock().0;
        client.fail_over(0);
        assert_eq!(current(&client), 1);
        client.fail_over(0);
        assert_eq!(current(&client), 1, "a second report of the same failure does not skip a router");
        client.fail_over(1);
        client.fail_over(2);
        assert_eq!(current(&client), 0);
    }

    #[tokio::test]
    async fn a_client_needs_at_least_one_well_formed_router_address() {
        assert_eq!(Client::connect(Vec::<String>::new()).await.err(), Some(Error::BadAddress(String::new())));
        assert_eq!(Client::connect(["not an address"]).await.err(), Some(Error::BadAddress("not an address".into())));
    }
}
