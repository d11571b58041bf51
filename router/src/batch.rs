//! The router's side of ShardKv's `Batch` stream: one long-lived stream per
//! storenode carries every Get, Put, Delete and CompareAndSwap the router
//! sends there (as TiKV's client does with BatchCommands). Calls queue for
//! the stream's writer task, which sends whatever has queued while the last
//! message was going out as one message, so concurrency turns into batching
//! without a timer; a reader task hands each answer to its caller by id.
//!
//! A stream that fails (the storenode died, the connection broke) fails
//! every call waiting on it with `Unavailable` and no typed error — what a
//! unary call gets from a broken connection, so the retry rules are the
//! same: a write is then ambiguous and retried under its request id. The
//! router opens a new stream on the next call. A storenode that does not
//! know `Batch` (an older version during a rolling upgrade) answers
//! `Unimplemented`; the stream is then marked unsupported and calls to that
//! node go unary.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use ringkv_common::coalesce::next_batch;
use ringkv_common::trace::TIMING_HEADER;
use ringkv_common::wire_error::status_of_call;
use ringkv_proto::kv::batch_answer::Answer;
use ringkv_proto::kv::batch_command::Request as Command;
use ringkv_proto::kv::shard_kv_client::ShardKvClient;
use ringkv_proto::kv::{BatchAnswer, BatchCommand, BatchCommands};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::AsciiMetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Response, Status};

/// Calls per message at most (a message stays far under the gRPC limit).
const MAX_COMMANDS: usize = 256;
/// The largest message a storenode's answers may take (as unary calls).
const MAX_MESSAGE_BYTES: usize = 64 << 20;

type Reply = oneshot::Sender<Result<BatchAnswer, Status>>;

/// What a call gets when its stream closed before it could be sent or
/// answered: no typed error, as from a broken connection.
fn closed() -> Status {
    Status::unavailable("batch stream to the storenode closed")
}

/// A call waiting for the writer.
struct Queued {
    command: Command,
    request_id: String,
    reply: Reply,
}

/// The calls a stream has sent and not yet seen answered.
#[derive(Default)]
struct Waiting {
    /// Set once the stream failed: no call is accepted after it.
    closed: bool,
    /// The storenode answered `Unimplemented`: use unary calls.
    unsupported: bool,
    next_id: u64,
    calls: HashMap<u64, Reply>,
}

impl Waiting {
    /// Gives `q` an id and adds it to `commands`, or fails it if the stream
    /// has closed.
    fn enqueue(&mut self, q: Queued, commands: &mut Vec<BatchCommand>) {
        if self.closed {
            let _ = q.reply.send(Err(closed()));
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        self.calls.insert(id, q.reply);
        commands.push(BatchCommand { id, request_id: q.request_id, request: Some(q.command) });
    }

    /// Fails every waiting call with `status`; later calls fail at once.
    fn close(&mut self, status: &Status) {
        self.closed = true;
        for (_, reply) in self.calls.drain() {
            let _ = reply.send(Err(status.clone()));
        }
    }
}

/// One storenode's Batch stream, shared by every call to it.
#[derive(Clone)]
pub struct BatchStream {
    queue: mpsc::UnboundedSender<Queued>,
    waiting: Arc<Mutex<Waiting>>,
}

impl BatchStream {
    /// Opens a stream over `channel` (the tasks live until it fails or
    /// every handle is dropped).
    pub fn open(channel: Channel) -> BatchStream {
        let (queue, rx) = mpsc::unbounded_channel();
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        tokio::spawn(run(channel, rx, waiting.clone()));
        BatchStream { queue, waiting }
    }

    /// Whether the stream failed (open a new one).
    pub fn is_closed(&self) -> bool {
        let w = self.waiting.lock();
        w.closed && !w.unsupported
    }

    /// Whether the storenode does not serve `Batch` (call it unary).
    pub fn is_unsupported(&self) -> bool {
        self.waiting.lock().unsupported
    }

    /// Sends one call and waits for its answer: the response a unary call
    /// would have returned, `ringkv-timing` metadata included.
    pub async fn call<T>(
        &self,
        command: Command,
        request_id: Option<&AsciiMetadataValue>,
        unwrap: fn(Answer) -> Option<T>,
    ) -> Result<Response<T>, Status> {
        let (reply, answer) = oneshot::channel();
        let request_id = request_id.and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
        self.queue.send(Queued { command, request_id, reply }).map_err(|_| closed())?;
        let a = answer.await.map_err(|_| closed())??;
        match a.answer {
            Some(Answer::Failed(s)) => {
                let mut status = status_of_call(s);
                insert_timing(status.metadata_mut(), &a.timing);
                Err(status)
            }
            Some(other) => {
                let r = unwrap(other).ok_or_else(|| Status::internal("batch answer of the wrong kind"))?;
                let mut resp = Response::new(r);
                insert_timing(resp.metadata_mut(), &a.timing);
                Ok(resp)
            }
            None => Err(Status::internal("empty batch answer")),
        }
    }
}

fn insert_timing(meta: &mut tonic::metadata::MetadataMap, timing: &str) {
    if let Ok(v) = AsciiMetadataValue::try_from(timing) {
        meta.insert(TIMING_HEADER, v);
    }
}

/// Opens the stream, then reads answers until it ends; the writer runs
/// beside it.
async fn run(channel: Channel, queue: mpsc::UnboundedReceiver<Queued>, waiting: Arc<Mutex<Waiting>>) {
    let (out, out_rx) = mpsc::channel(1);
    let writer = tokio::spawn(write(queue, out, waiting.clone()));
    let mut client = ShardKvClient::new(channel).max_decoding_message_size(MAX_MESSAGE_BYTES);
    let end = match client.batch(ReceiverStream::new(out_rx)).await {
        Ok(answers) => {
            let mut answers = answers.into_inner();
            loop {
                match answers.message().await {
                    Ok(Some(m)) => deliver(&waiting, m.answers),
                    Ok(None) => break Status::unavailable("batch stream ended by the storenode"),
                    Err(s) => break Status::unavailable(format!("batch stream: {}", s.message())),
                }
            }
        }
        Err(s) => {
            if s.code() == Code::Unimplemented {
                tracing::info!("storenode does not serve Batch streams: calling it unary");
                waiting.lock().unsupported = true;
            }
            Status::unavailable(format!("opening a batch stream: {}", s.message()))
        }
    };
    waiting.lock().close(&end);
    writer.abort();
}

fn deliver(waiting: &Mutex<Waiting>, answers: Vec<BatchAnswer>) {
    let mut w = waiting.lock();
    for a in answers {
        // A caller that gave up (its deadline passed) dropped its receiver.
        if let Some(reply) = w.calls.remove(&a.id) {
            let _ = reply.send(Ok(a));
        }
    }
}

/// Sends queued calls, as many per message as have queued.
async fn write(
    mut queue: mpsc::UnboundedReceiver<Queued>,
    out: mpsc::Sender<BatchCommands>,
    waiting: Arc<Mutex<Waiting>>,
) {
    // The calls being made right now (woken by the same answers) share a
    // message: one turn of the scheduler, not a timer.
    while let Some(queued) = next_batch(&mut queue, MAX_COMMANDS).await {
        let mut commands = Vec::with_capacity(queued.len());
        {
            let mut w = waiting.lock();
            for q in queued {
                w.enqueue(q, &mut commands);
            }
        }
        if commands.is_empty() {
            continue;
        }
        crate::metrics::batch_sent(commands.len());
        // Waiting for room here is what batches: calls queue meanwhile.
        if out.send(BatchCommands { commands }).await.is_err() {
            waiting.lock().close(&closed());
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use std::pin::Pin;
    use std::time::Duration;

    use ringkv_common::wire_error::{call_status, WireError};
    use ringkv_proto::kv::shard_kv_server::{ShardKv, ShardKvServer};
    use ringkv_proto::kv::*;
    use tokio_stream::Stream;
    use tonic::{Request, Streaming};

    use super::*;

    /// How the fake storenode treats Batch streams.
    #[derive(Clone, Copy, PartialEq)]
    enum Mode {
        /// Answers every command: a get with its key as the value, a put
        /// with a typed NotLeader.
        Serve,
        /// An older storenode: `Unimplemented`.
        Unknown,
        /// Takes the first message, then ends the stream with an error (the
        /// storenode went away with the calls unanswered).
        Break,
    }

    struct Fake(Mode);

    fn no<T>() -> Result<Response<T>, Status> {
        Err(Status::unimplemented("not in the fake"))
    }

    fn not_leader() -> Status {
        let e = WireError::NotLeader { shard_id: 7, leader: None, leader_address: String::new() };
        e.to_status(e.to_string())
    }

    type Answers = Pin<Box<dyn Stream<Item = Result<BatchAnswers, Status>> + Send>>;

    #[tonic::async_trait]
    impl ShardKv for Fake {
        async fn get(&self, _: Request<GetRequest>) -> Result<Response<GetResponse>, Status> {
            no()
        }
        async fn put(&self, _: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
            no()
        }
        async fn delete(&self, _: Request<DeleteRequest>) -> Result<Response<DeleteResponse>, Status> {
            no()
        }
        async fn compare_and_swap(
            &self,
            _: Request<CompareAndSwapRequest>,
        ) -> Result<Response<CompareAndSwapResponse>, Status> {
            no()
        }
        async fn batch_get(&self, _: Request<BatchGetRequest>) -> Result<Response<BatchGetResponse>, Status> {
            no()
        }
        async fn batch_put(&self, _: Request<BatchPutRequest>) -> Result<Response<BatchPutResponse>, Status> {
            no()
        }
        async fn txn(&self, _: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
            no()
        }
        async fn scan(&self, _: Request<ScanRequest>) -> Result<Response<ScanResponse>, Status> {
            no()
        }
        type BatchStream = Answers;
        async fn batch(&self, req: Request<Streaming<BatchCommands>>) -> Result<Response<Answers>, Status> {
            let mode = self.0;
            if mode == Mode::Unknown {
                return Err(Status::unimplemented("unknown method Batch"));
            }
            let mut inbound = req.into_inner();
            let (tx, rx) = mpsc::channel(16);
            tokio::spawn(async move {
                while let Ok(Some(m)) = inbound.message().await {
                    if mode == Mode::Break {
                        let _ = tx.send(Err(Status::internal("storenode stopping"))).await;
                        return;
                    }
                    // Answer in reverse order: callers must be matched by id.
                    let answers = m
                        .commands
                        .into_iter()
                        .rev()
                        .map(|c| {
                            let answer = match c.request {
                                Some(Command::Get(g)) => Answer::Get(GetResponse { found: true, value: g.key }),
                                _ => Answer::Failed(call_status(&not_leader())),
                            };
                            BatchAnswer { id: c.id, timing: "total;dur=1.500".into(), answer: Some(answer) }
                        })
                        .collect();
                    if tx.send(Ok(BatchAnswers { answers })).await.is_err() {
                        return;
                    }
                }
            });
            Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
        }
    }

    /// Serves a fake storenode on loopback until the sender is dropped.
    async fn fake(mode: Mode) -> (SocketAddr, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ShardKvServer::new(Fake(mode)))
                .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                    let _ = stopped.await;
                }),
        );
        (addr, stop)
    }

    fn channel(addr: SocketAddr) -> Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{addr}")).unwrap().connect_lazy()
    }

    fn get(key: &str) -> Command {
        Command::Get(GetRequest { key: key.as_bytes().to_vec(), ..Default::default() })
    }

    fn as_get(a: Answer) -> Option<GetResponse> {
        match a {
            Answer::Get(r) => Some(r),
            _ => None,
        }
    }

    #[tokio::test]
    async fn concurrent_calls_get_their_own_answers_typed_errors_and_timing() {
        let (addr, _stop) = fake(Mode::Serve).await;
        let stream = BatchStream::open(channel(addr));
        let calls = (0..64).map(|i| {
            let s = stream.clone();
            async move { (i, s.call(get(&format!("key-{i}")), None, as_get).await) }
        });
        for (i, r) in futures::future::join_all(calls).await {
            let r = r.expect("a get answered");
            assert_eq!(r.get_ref().value, format!("key-{i}").into_bytes(), "answer {i} went to another call");
            let timing = r.metadata().get(TIMING_HEADER).expect("timing passed on");
            assert_eq!(timing.to_str().unwrap(), "total;dur=1.500");
        }
        let put = Command::Put(PutRequest::default());
        let err = stream.call(put, None, as_get).await.expect_err("a refused put");
        assert!(matches!(WireError::from_status(&err), WireError::NotLeader { shard_id: 7, .. }), "{err:?}");
        assert!(!stream.is_closed() && !stream.is_unsupported());
    }

    #[tokio::test]
    async fn a_storenode_without_batch_is_called_unary() {
        let (addr, _stop) = fake(Mode::Unknown).await;
        let stream = BatchStream::open(channel(addr));
        let err = stream.call(get("k"), None, as_get).await.expect_err("no Batch");
        assert!(WireError::from_status(&err).is_transport(), "{err:?}");
        assert!(stream.is_unsupported());
        assert!(!stream.is_closed(), "not reopened over and over");
    }

    #[tokio::test]
    async fn a_broken_stream_fails_its_waiting_calls_as_transport_errors_and_is_replaced() {
        let (addr, _stop) = fake(Mode::Break).await;
        let stream = BatchStream::open(channel(addr));
        let err = tokio::time::timeout(Duration::from_secs(10), stream.call(get("k"), None, as_get))
            .await
            .expect("the waiting call is failed, not left hanging")
            .expect_err("no answer");
        // No typed answer: for a write the router treats it as ambiguous.
        assert!(WireError::from_status(&err).is_transport(), "{err:?}");
        assert_eq!(err.code(), Code::Unavailable);
        assert!(stream.is_closed() && !stream.is_unsupported());
        let late = stream.call(get("k"), None, as_get).await.expect_err("closed");
        assert_eq!(late.code(), Code::Unavailable);
        assert!(stream.waiting.lock().calls.is_empty(), "nothing left waiting");
    }
}
