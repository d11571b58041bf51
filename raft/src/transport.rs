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
//! The receiver writes the file under a name of its own (two transfers of one
//! snapshot never share a file), checks size and checksum as it streams,
//! fsyncs it, reads it back from disk to check the checksum again, and only
//! then gives the Raft message to its loop; a file that fails any check is
//! deleted and the sender told, so its leader sends a new one. Sends and
//! receives are bounded in number and share a bytes-per-second budget each
//! way ([`crate::RaftConfig`]), so snapshots cannot starve the node's disk
//! and network of Raft traffic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use protobuf::Message as _;
use raft::prelude::{Message as RaftMsg, MessageType};
use ringkv_proto::engine::raft_transport_client::RaftTransportClient;
use ringkv_proto::engine::raft_transport_server::RaftTransport;
use ringkv_proto::engine::{Done, RaftBatch, RaftMessage, SnapshotChunk};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use xxhash_rust::xxh3::Xxh3;

use crate::config::RaftConfig;
use crate::metrics::RaftMetrics;
use crate::raft_loop::{LoopHandle, LoopRequest, Transport};
use crate::snapshot::{self, SnapshotDir};
use crate::state_machine::StateMachine;

/// Batches queued per peer before new ones are dropped.
const PEER_QUEUE_BATCHES: usize = 1024;
const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// A received snapshot file is synced every this many bytes.
const SYNC_RECEIVED_EVERY_BYTES: usize = 8 << 20;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);

/// Node id -> gRPC address of every node this one talks to.
#[derive(Default)]
pub struct AddressBook(RwLock<HashMap<u64, String>>);

impl AddressBook {
    /// The address of a node, if known.
    pub fn get(&self, node_id: u64) -> Option<String> {
        self.0.read().get(&node_id).cloned()
    }

    /// Sets (or replaces) the address of a node.
    pub fn set(&self, node_id: u64, address: String) {
        self.0.write().insert(node_id, address);
    }
}

/// A shared bytes-per-second budget: callers reserve bytes and wait until the
/// budget has room for them (a token bucket with one second of burst).
pub struct RateLimiter {
    bytes_per_sec: u64,
    next_free: tokio::sync::Mutex<tokio::time::Instant>,
}

impl RateLimiter {
    /// A limiter of `bytes_per_sec` (0: unlimited).
    pub fn new(bytes_per_sec: u64) -> Self {
        RateLimiter { bytes_per_sec, next_free: tokio::sync::Mutex::new(tokio::time::Instant::now()) }
    }

    /// Waits until `bytes` more fit in the budget.
    pub async fn consume(&self, bytes: usize) {
        if self.bytes_per_sec == 0 {
            return;
        }
        const BURST: Duration = Duration::from_secs(1);
        let cost = Duration::from_secs_f64(bytes as f64 / self.bytes_per_sec as f64);
        let wait_until = {
            let mut next = self.next_free.lock().await;
            let now = tokio::time::Instant::now();
            // `next` is when the budget spent so far is paid off; up to one
            // second of budget unused in the past may be spent at once.
            let start = (*next).max(now.checked_sub(BURST).unwrap_or(now));
            *next = start + cost;
            next.checked_sub(BURST).unwrap_or(now)
        };
        tokio::time::sleep_until(wait_until).await;
    }
}

/// Snapshot traffic limits shared by every transfer of a node.
pub struct SnapshotLimits {
    sends: Arc<Semaphore>,
    receives: Arc<Semaphore>,
    send_rate: RateLimiter,
    receive_rate: RateLimiter,
}

impl SnapshotLimits {
    /// Limits from the engine's config.
    pub fn new(cfg: &RaftConfig) -> Arc<Self> {
        Arc::new(SnapshotLimits {
            sends: Arc::new(Semaphore::new(cfg.max_snapshot_sends)),
            receives: Arc::new(Semaphore::new(cfg.max_snapshot_receives)),
            send_rate: RateLimiter::new(cfg.snapshot_bytes_per_sec),
            receive_rate: RateLimiter::new(cfg.snapshot_bytes_per_sec),
        })
    }
}

/// The outbound side: one queue and stream task per peer node, plus one task
/// per snapshot being sent.
pub struct GrpcTransport<S: StateMachine> {
    node_id: u64,
    book: Arc<AddressBook>,
    rt: tokio::runtime::Handle,
    peers: Mutex<HashMap<u64, mpsc::Sender<RaftBatch>>>,
    /// Set once the loop exists (the loop is built with its transport).
    loop_handle: Arc<OnceLock<LoopHandle<S>>>,
    limits: Arc<SnapshotLimits>,
    metrics: Arc<RaftMetrics>,
}

impl<S: StateMachine> GrpcTransport<S> {
    /// A transport for node `node_id`; `loop_handle` is set once the loop exists.
    pub fn new(
        node_id: u64,
        book: Arc<AddressBook>,
        rt: tokio::runtime::Handle,
        loop_handle: Arc<OnceLock<LoopHandle<S>>>,
        limits: Arc<SnapshotLimits>,
        metrics: Arc<RaftMetrics>,
    ) -> Self {
        GrpcTransport { node_id, book, rt, peers: Mutex::new(HashMap::new()), loop_handle, limits, metrics }
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

fn report<S: StateMachine>(h: &OnceLock<LoopHandle<S>>, m: LoopRequest<S>) {
    if let Some(h) = h.get() {
        // Reports matter more than new work: they bypass the inbox bound.
        let _ = h.send_internal(m);
    }
}

impl<S: StateMachine> Transport for GrpcTransport<S> {
    fn send(&self, node_id: u64, messages: Vec<RaftMessage>) -> bool {
        self.peer_queue(node_id).try_send(RaftBatch { messages }).is_ok()
    }

    fn send_snapshot(&self, node_id: u64, to_replica: u64, msg: RaftMessage, path: PathBuf) {
        let (book, lh, limits) = (self.book.clone(), self.loop_handle.clone(), self.limits.clone());
        let metrics = self.metrics.clone();
        let group_id = msg.group_id;
        self.rt.spawn(async move {
            let ok = match limits.sends.clone().acquire_owned().await {
                Ok(_permit) => {
                    let timer = metrics.snapshot_phase("send");
                    let sent = send_snapshot_file(&book, node_id, msg, &path, &limits.send_rate).await;
                    drop(timer);
                    match sent {
                        Ok(bytes) => {
                            metrics.snapshot_bytes_sent.inc_by(bytes);
                            true
                        }
                        Err(e) => {
                            tracing::warn!(group_id, node_id, "sending snapshot: {e}");
                            false
                        }
                    }
                }
                Err(_) => false,
            };
            report(&lh, LoopRequest::SnapshotSent { group_id, to: to_replica, ok });
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
    metrics: Arc<RaftMetrics>,
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
            report(&self.loop_handle, LoopRequest::Unreachable { node_id: self.node_id });
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
        let channel = match ringkv_common::net::endpoint(addr) {
            Ok(ep) => match ringkv_common::net::connect_endpoint(ep).await {
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
    rate: &RateLimiter,
) -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
    let addr = book.get(node_id).ok_or("unknown node address")?;
    let mut client = RaftTransportClient::new(ringkv_common::net::connect(&addr).await?);
    let mut file = tokio::fs::File::open(path).await?;
    let size = file.metadata().await?.len();
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
            rate.consume(n).await;
            if tx.send(SnapshotChunk { header: None, data: buf }).await.is_err() {
                return Ok(());
            }
        }
    };
    let (read, sent) = tokio::join!(reader, client.snapshot(ReceiverStream::new(rx)));
    read?;
    sent?;
    Ok(size)
}

/// The inbound side: peers' Raft streams and snapshot uploads.
pub struct RaftService<S: StateMachine> {
    node_id: u64,
    loop_handle: LoopHandle<S>,
    snap_dir: SnapshotDir,
    limits: Arc<SnapshotLimits>,
    metrics: Arc<RaftMetrics>,
}

impl<S: StateMachine> RaftService<S> {
    /// The service of node `node_id`, feeding `loop_handle`.
    pub fn new(
        node_id: u64,
        loop_handle: LoopHandle<S>,
        snap_dir: SnapshotDir,
        limits: Arc<SnapshotLimits>,
        metrics: Arc<RaftMetrics>,
    ) -> Self {
        RaftService { node_id, loop_handle, snap_dir, limits, metrics }
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

    /// Streams a snapshot file to `tmp`, checking size and checksum on the
    /// way, fsyncs it, then re-reads it from disk (off the async workers) to
    /// check the checksum of what is actually stored.
    async fn receive_file(
        &self,
        stream: &mut Streaming<SnapshotChunk>,
        tmp: &std::path::Path,
        data: &ringkv_proto::engine::SnapshotData,
    ) -> Result<(), Status> {
        let mut file = tokio::fs::File::create(tmp).await?;
        let (mut size, mut hash, mut unsynced) = (0u64, Xxh3::new(), 0usize);
        while let Some(chunk) = stream.message().await? {
            size += chunk.data.len() as u64;
            if size > data.file_size {
                return Err(Status::invalid_argument("snapshot larger than announced"));
            }
            self.limits.receive_rate.consume(chunk.data.len()).await;
            hash.update(&chunk.data);
            file.write_all(&chunk.data).await?;
            // Sync as the file grows: one fsync of hundreds of MiB at the end
            // would hold the disk, and every Raft fsync of the node behind it.
            unsynced += chunk.data.len();
            if unsynced >= SYNC_RECEIVED_EVERY_BYTES {
                file.sync_data().await?;
                unsynced = 0;
            }
        }
        if size != data.file_size || hash.digest() != data.file_checksum {
            return Err(Status::data_loss("snapshot file size or checksum mismatch"));
        }
        // The replica's state will point at this file before its data is
        // written: it must be on disk first.
        file.sync_all().await?;
        drop(file);
        let (path, data) = (tmp.to_path_buf(), data.clone());
        tokio::task::spawn_blocking(move || snapshot::verify_file(&path, &data))
            .await
            .map_err(|e| Status::internal(format!("verifying snapshot: {e}")))?
            .map_err(|e| Status::data_loss(e.to_string()))
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
                self.metrics.raft_messages_received.inc();
                let req = LoopRequest::Raft { group_id: m.group_id, from_node: m.from_node, msg: Box::new(msg) };
                match self.loop_handle.try_send(req) {
                    Ok(()) => {}
                    // A full inbox drops peer traffic like a lossy network
                    // would: Raft retransmits what is still needed.
                    Err(crate::Error::Busy(_)) => self.metrics.raft_messages_dropped.inc(),
                    Err(_) => return Err(Status::unavailable("node stopping")),
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
        let refuse = |e: crate::Error| {
            self.metrics.snapshots.with_label_values(&["refused"]).inc();
            Status::invalid_argument(e.to_string())
        };
        let data = snapshot::snapshot_data(msg.get_snapshot()).map_err(refuse)?;
        snapshot::snapshot_group::<S::Group>(&data, header.group_id).map_err(refuse)?;
        let _permit = self.limits.receives.acquire().await.map_err(|_| Status::unavailable("node stopping"))?;
        let path = self.snap_dir.received(header.group_id, md.term, md.index);
        let tmp = self.snap_dir.receiving(header.group_id, md.term, md.index);
        let timer = self.metrics.snapshot_phase("receive");
        let res = async {
            self.receive_file(&mut stream, &tmp, &data).await?;
            tokio::fs::rename(&tmp, &path).await?;
            if let Some(dir) = path.parent() {
                tokio::fs::File::open(dir).await?.sync_all().await?;
            }
            Ok::<(), Status>(())
        }
        .await;
        if let Err(e) = res {
            let _ = tokio::fs::remove_file(&tmp).await;
            self.metrics.snapshots.with_label_values(&["refused"]).inc();
            return Err(e);
        }
        drop(timer);
        self.metrics.snapshots.with_label_values(&["received"]).inc();
        self.metrics.snapshot_bytes_received.inc_by(data.file_size);
        let req = LoopRequest::Raft { group_id: header.group_id, from_node: header.from_node, msg: Box::new(msg) };
        self.loop_handle.send_internal(req).map_err(|_| Status::unavailable("node stopping"))?;
        Ok(Response::new(Done {}))
    }
}
