//! ShardKv's `Batch` stream: many single-key calls over one HTTP/2 stream,
//! as TiKV's BatchCommands. The router sends the calls it has in flight to
//! this node several to a message; each runs as its own task through the
//! very handler a unary call uses (same checks, spans, metrics, timing), and
//! answers go back as they finish, coalesced into one message whenever more
//! than one is ready.
//!
//! Back-pressure: at most [`MAX_IN_FLIGHT`] commands of a stream run at once;
//! past that the stream stops reading and HTTP/2 flow control holds the
//! router back. Answers wait in an unbounded queue, bounded by that limit.

use std::sync::Arc;

use ringkv_common::coalesce::next_batch;
use ringkv_common::trace::{REQUEST_ID_HEADER, TIMING_HEADER};
use ringkv_common::wire_error::{call_status, WireError};
use ringkv_proto::kv::batch_answer::Answer;
use ringkv_proto::kv::batch_command::Request as Command;
use ringkv_proto::kv::shard_kv_server::ShardKv;
use ringkv_proto::kv::{BatchAnswer, BatchAnswers, BatchCommand, BatchCommands};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Request, Response, Status, Streaming};

use super::kv::KvService;

/// Commands of one stream running at once.
pub const MAX_IN_FLIGHT: usize = 4096;
/// Answers per message at most (a message stays well under the gRPC limit:
/// values are capped far below `MAX_GRPC_MESSAGE_BYTES / MAX_ANSWERS`).
const MAX_ANSWERS: usize = 256;

/// The answer stream of one `Batch` call.
pub type AnswerStream = ReceiverStream<Result<BatchAnswers, Status>>;

/// Serves one `Batch` stream until the router closes it.
pub fn serve(svc: KvService, inbound: Streaming<BatchCommands>) -> Response<AnswerStream> {
    let svc = Arc::new(svc);
    let (answers_tx, answers_rx) = mpsc::unbounded_channel();
    let (out_tx, out_rx) = mpsc::channel(1);
    tokio::spawn(read_commands(svc.clone(), inbound, answers_tx));
    tokio::spawn(write_answers(svc, answers_rx, out_tx));
    Response::new(ReceiverStream::new(out_rx))
}

async fn read_commands(
    svc: Arc<KvService>,
    mut inbound: Streaming<BatchCommands>,
    answers: mpsc::UnboundedSender<BatchAnswer>,
) {
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    // A stream error (the router went away, a malformed message) ends the
    // stream; commands already running still answer into the queue, which
    // nobody reads once the writer has gone.
    while let Ok(Some(msg)) = inbound.message().await {
        for c in msg.commands {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let (svc, answers) = (svc.clone(), answers.clone());
            tokio::spawn(async move {
                let a = run(&svc, c).await;
                drop(permit);
                let _ = answers.send(a);
            });
        }
    }
}

async fn write_answers(
    svc: Arc<KvService>,
    mut answers: mpsc::UnboundedReceiver<BatchAnswer>,
    out: mpsc::Sender<Result<BatchAnswers, Status>>,
) {
    // Ends when every command has answered and the reader has stopped (all
    // senders dropped), or when the router stops reading.
    // Answers finishing together (one apply pass answers many) share a
    // message.
    while let Some(batch) = next_batch(&mut answers, MAX_ANSWERS).await {
        svc.metrics().batch_answers.observe(batch.len() as f64);
        if out.send(Ok(BatchAnswers { answers: batch })).await.is_err() {
            return;
        }
    }
}

/// Runs one command through the unary handler of its kind.
async fn run(svc: &KvService, c: BatchCommand) -> BatchAnswer {
    let id = c.id;
    let rid = c.request_id;
    let (answer, timing) = match c.request {
        Some(Command::Get(r)) => split(svc.get(with_id(r, &rid)).await, Answer::Get),
        Some(Command::Put(r)) => split(svc.put(with_id(r, &rid)).await, Answer::Put),
        Some(Command::Delete(r)) => split(svc.delete(with_id(r, &rid)).await, Answer::Delete),
        Some(Command::CompareAndSwap(r)) => split(svc.compare_and_swap(with_id(r, &rid)).await, Answer::CompareAndSwap),
        None => {
            let e = WireError::InvalidArgument { field: "request".into(), reason: "empty or unknown command".into() };
            (Answer::Failed(call_status(&e.to_status(e.to_string()))), String::new())
        }
    };
    BatchAnswer { id, timing, answer: Some(answer) }
}

/// A request carrying the call's trace id as a unary call's metadata would.
fn with_id<T>(msg: T, request_id: &str) -> Request<T> {
    let mut r = Request::new(msg);
    if let Ok(v) = AsciiMetadataValue::try_from(request_id) {
        r.metadata_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

/// A unary handler's result as a batch answer and its timing.
fn split<T>(r: Result<Response<T>, Status>, wrap: fn(T) -> Answer) -> (Answer, String) {
    match r {
        Ok(resp) => {
            let t = timing(resp.metadata());
            (wrap(resp.into_inner()), t)
        }
        Err(s) => (Answer::Failed(call_status(&s)), timing(s.metadata())),
    }
}

fn timing(meta: &MetadataMap) -> String {
    meta.get(TIMING_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string()
}
