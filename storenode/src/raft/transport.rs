//! Storenode-to-storenode transport for Raft messages.
//!
//! Outbound: one task and one long-lived client stream per peer node. The Raft
//! loop hands each pass's messages for a node to that node's bounded queue
//! without blocking; a slow or dead peer fills only its own queue, and what
//! does not fit is dropped (Raft retransmits). A broken stream is reopened
//! with exponential backoff, and the loop is told so leaders probe again.
//!
//! Snapshots travel on their own RPC, one stream per snapshot, the file read
//! and sent in 1 MiB chunks, so a shard of any size costs bounded memory.
//! The receiver writes the file, fsyncs it, checks its size and checksum, and
//! only then gives the Raft message to its loop.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::prelude::{Message as RaftMsg, MessageType};
use ringkv_proto::raft::raft_transport_client::RaftTransportClient;
use ringkv_proto::raft::raft_transport_server::RaftTransport;
use ringkv_proto::raft::{Done, RaftBatch, RaftMessage, SnapshotChunk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xxhash_rust::xxh3::Xxh3;

use crate::metrics::Metrics;
use crate::raft::raft_loop::{LoopHandle, Msg, Transport};
use crate::raft::snapshot::{self, SnapshotDir};
use crate::raft::state_machine::StateMachine;

/// Batches queued per peer before new ones are dropped.
const PEER_QUEUE_BATCHES: usize = 1024;
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Snapshots sent at once by this node.
const MAX_SNAPSHOT_SENDS: usize = 4;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Node id -> gRPC address of every storenode this one talks to.
#[derive(Default)]
pub struct AddressBook(RwLock<HashMap<u64, String>>);

impl AddressBook {
    pub fn get(&self, node_id: u64) -> Option<String> {
        self.0.read().get(&node_id).cloned()
    }

    pub fn set(&self, node_id: u64, address: String) {
        self.0.write().insert(node_id, address);
    }
}

pub struct GrpcTransport<S: StateMachine> {
    node_id: u64,
    book: Arc<AddressBook>,
    rt: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, mpsc::Sender<RaftBatch>>>,
    /// Set once the loop exists (the loop is built with its transport).
    loop_handle: Arc<OnceLock<LoopHandle<S>>>,
    snapshot_sends: Arc<Semaphore>,
    metrics: Arc<Metrics>,
}

impl<S: StateMachine> GrpcTransport<S> {
    pub fn new(
        node_id: u64,
        book: Arc<AddressBook>,
        rt: tokio::runtime::Handle,
        loop_handle: Arc<OnceLock<LoopHandle<S>>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        GrpcTransport {
            node_id,
            book,
            rt,
            peers: Mutex::new(HashMap::new()),
            loop_handle,
            snapshot_sends: Arc::new(Semaphore::new(MAX_SNAPSHOT_SENDS)),
            metrics,
        }
    }

    fn peer_queue(&self, node_id: u64) -> mpsc::Sender<RaftBatch> {
        let mut peers = self.peers.lock();
        peers
            .entry(node_id)
            .or_insert_with(|| {
                let (tx, rx) = mpsc::channel(PEER_QUEUE_BATCHES);
                let task = PeerTask {
                    from: self.node_id,
                    node_id,
                    book: self.book.clone(),
                    loop_handle: self.loop_handle.clone(),
                    metrics: self.metrics.clone(),
                };
                self.rt.spawn(task.run(rx));
                tx
            })
            .clone()
    }
}

fn report<S: StateMachine>(h: &OnceLock<LoopHandle<S>>, m: Msg<S>) {
    if let Some(h) = h.get() {
        let _ = h.send(m);
    }
}

impl<S: StateMachine> Transport for GrpcTransport<S> {
    fn send(&self, node_id: u64, messages: Vec<RaftMessage>) -> bool {
        self.peer_queue(node_id).try_send(RaftBatch { messages }).is_ok()
    }

    fn send_snapshot(&self, node_id: u64, to_replica: u64, msg: RaftMessage, path: PathBuf) {
        let (book, lh, sem) = (self.book.clone(), self.loop_handle.clone(), self.snapshot_sends.clone());
        let shard_id = msg.shard_id;
        self.rt.spawn(async move {
            let ok = match sem.acquire_owned().await {
                Ok(_permit) => match send_snapshot_file(&book, node_id, msg, &path).await {
                    Ok(()) => true,
                    Err(e) => {
                        tracing::warn!(shard_id, node_id, "sending snapshot: {e}");
                        false
                    }
                },
                Err(_) => false,
            };
            report(&lh, Msg::SnapshotSent { shard_id, to: to_replica, ok });
        });
    }

    fn address(&self, node_id: u64) -> Option<String> {
        self.book.get(node_id)
    }
}

struct PeerTask<S: StateMachine> {
    from: u64,
    node_id: u64,
    book: Arc<AddressBook>,
    loop_handle: Arc<OnceLock<LoopHandle<S>>>,
    metrics: Arc<Metrics>,
}

impl<S: StateMachine> PeerTask<S> {
    async fn run(self, mut rx: mpsc::Receiver<RaftBatch>) {
        let mut backoff = BACKOFF_MIN;
        loop {
            if let Some(addr) = self.book.get(self.node_id) {
                match self.stream(&addr, &mut rx).await {
                    StreamEnd::QueueClosed => return,
                    StreamEnd::Connected => backoff = BACKOFF_MIN,
                    StreamEnd::Failed => {}
                }
            }
            report(&self.loop_handle, Msg::Unreachable { node_id: self.node_id });
            // Messages queued while the peer is away are stale by the time it
            // is back; Raft will send what is still needed.
            while let Ok(b) = rx.try_recv() {
                self.metrics.raft_messages_dropped.inc_by(b.messages.len() as u64);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn stream(&self, addr: &str, rx: &mut mpsc::Receiver<RaftBatch>) -> StreamEnd {
        let channel = match crate::net::endpoint(addr) {
            Ok(ep) => match crate::net::connect_endpoint(ep).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(from = self.from, to = self.node_id, "connect {addr}: {e}");
                    return StreamEnd::Failed;
                }
            },
            Err(e) => {
                tracing::warn!(to = self.node_id, "bad address {addr}: {e}");
                return StreamEnd::Failed;
            }
        };
        let mut client = RaftTransportClient::new(channel);
        let (tx, srx) = mpsc::channel::<RaftBatch>(64);
        let mut call = Box::pin(async move { client.raft(ReceiverStream::new(srx)).await });
        let mut sent_any = false;
        loop {
            tokio::select! {
                b = rx.recv() => match b {
                    None => return StreamEnd::QueueClosed,
                    Some(b) => {
                        if tx.send(b).await.is_err() {
                            break;
                        }
                        sent_any = true;
                    }
                },
                res = &mut call => {
                    if let Err(e) = res {
                        tracing::debug!(to = self.node_id, "raft stream ended: {e}");
                    }
                    break;
                }
            }
        }
        if sent_any {
            StreamEnd::Connected
        } else {
            StreamEnd::Failed
        }
    }
}

enum StreamEnd {
    QueueClosed,
    Connected,
    Failed,
}

async fn send_snapshot_file(
    book: &AddressBook,
    node_id: u64,
    header: RaftMessage,
    path: &std::path::Path,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let addr = book.get(node_id).ok_or("unknown node address")?;
    let mut client = RaftTransportClient::new(crate::net::connect(&addr).await?);
    let mut file = tokio::fs::File::open(path).await?;
    let (tx, rx) = mpsc::channel::<SnapshotChunk>(2);
    let reader = async move {
        if tx.send(SnapshotChunk { header: Some(header), data: Vec::new() }).await.is_err() {
            return Ok(());
        }
        loop {
            let mut buf = vec![0u8; SNAPSHOT_CHUNK_BYTES];
            let n = file.read(&mut buf).await?;
            if n == 0 {
                return Ok::<(), std::io::Error>(());
            }
            buf.truncate(n);
            if tx.send(SnapshotChunk { header: None, data: buf }).await.is_err() {
                return Ok(());
            }
        }
    };
    let (read, sent) = tokio::join!(reader, client.snapshot(ReceiverStream::new(rx)));
    read?;
    sent?;
    Ok(())
}

/// The inbound side: peers' Raft streams and snapshot uploads.
pub struct RaftService<S: StateMachine> {
    node_id: u64,
    loop_handle: LoopHandle<S>,
    snap_dir: SnapshotDir,
    metrics: Arc<Metrics>,
}

impl<S: StateMachine> RaftService<S> {
    pub fn new(node_id: u64, loop_handle: LoopHandle<S>, snap_dir: SnapshotDir, metrics: Arc<Metrics>) -> Self {
        RaftService { node_id, loop_handle, snap_dir, metrics }
    }

    fn decode(&self, m: &RaftMessage) -> Result<RaftMsg, Status> {
        if m.to_node != self.node_id {
            return Err(Status::invalid_argument(format!(
                "message for node {} reached node {}",
                m.to_node, self.node_id
            )));
        }
        RaftMsg::parse_from_bytes(&m.message)
            .map_err(|e| Status::invalid_argument(format!("undecodable raft message: {e}")))
    }
}

#[tonic::async_trait]
impl<S: StateMachine> RaftTransport for RaftService<S> {
    async fn raft(&self, req: Request<Streaming<RaftBatch>>) -> Result<Response<Done>, Status> {
        let mut stream = req.into_inner();
        while let Some(batch) = stream.message().await? {
            for m in batch.messages {
                let msg = self.decode(&m)?;
                if msg.get_msg_type() == MessageType::MsgSnapshot {
                    return Err(Status::invalid_argument("snapshots go through the Snapshot RPC"));
                }
                let shard_id = m.shard_id;
                let from_node = m.from_node;
                if self.loop_handle.send(Msg::Raft { shard_id, from_node, msg: Box::new(msg) }).is_err() {
                    return Err(Status::unavailable("storenode stopping"));
                }
            }
        }
        Ok(Response::new(Done {}))
    }

    async fn snapshot(&self, req: Request<Streaming<SnapshotChunk>>) -> Result<Response<Done>, Status> {
        let mut stream = req.into_inner();
        let first = stream.message().await?.ok_or_else(|| Status::invalid_argument("empty stream"))?;
        let header = first.header.ok_or_else(|| Status::invalid_argument("first chunk has no header"))?;
        let msg = self.decode(&header)?;
        if msg.get_msg_type() != MessageType::MsgSnapshot {
            return Err(Status::invalid_argument("not a snapshot message"));
        }
        let md = msg.get_snapshot().get_metadata();
        let data = snapshot::snapshot_data(msg.get_snapshot()).map_err(Status::from)?;
        let path = self.snap_dir.received(header.shard_id, md.term, md.index);
        let tmp = path.with_extension("tmp");
        let mut file = tokio::fs::File::create(&tmp).await?;
        let (mut size, mut hash) = (0u64, Xxh3::new());
        let res: Result<(), Status> = async {
            while let Some(chunk) = stream.message().await? {
                size += chunk.data.len() as u64;
                if size > data.file_size {
                    return Err(Status::invalid_argument("snapshot larger than announced"));
                }
                hash.update(&chunk.data);
                file.write_all(&chunk.data).await?;
            }
            if size != data.file_size || hash.digest() != data.file_checksum {
                return Err(Status::data_loss("snapshot file size or checksum mismatch"));
            }
            // The replica's state will point at this file before its data is
            // written: it must be on disk first.
            file.sync_all().await?;
            tokio::fs::rename(&tmp, &path).await?;
            if let Some(dir) = path.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
        self.metrics.snapshots.with_label_values(&["received"]).inc();
        self.loop_handle
            .send(Msg::Raft { shard_id: header.shard_id, from_node: header.from_node, msg: Box::new(msg) })
            .map_err(|_| Status::unavailable("storenode stopping"))?;
        Ok(Response::new(Done {}))
    }
}
