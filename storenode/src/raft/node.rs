//! A process's Raft machinery in one piece: the RocksDB engine, the Raft loop
//! on its own thread, the outbound transport and the inbound RaftTransport
//! service. The storenode (many shard groups) and the placement service (one
//! group) both start one of these; only the state machine differs.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ringkv_proto::raft::raft_transport_server::RaftTransportServer;

use crate::config::RaftSettings;
use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::Metrics;
use crate::raft::raft_loop::{LoopConfig, LoopHandle, Msg, RaftLoop};
use crate::raft::snapshot::SnapshotDir;
use crate::raft::state_machine::StateMachine;
use crate::raft::transport::{AddressBook, GrpcTransport, RaftService};

/// Largest gRPC message accepted: a batch of Raft messages can carry entries
/// of many shards, each up to `max_size_per_msg`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 256 << 20;

pub struct RaftNode<S: StateMachine> {
    pub node_id: u64,
    pub engine: Engine,
    pub loop_handle: LoopHandle<S>,
    pub address_book: Arc<AddressBook>,
    pub metrics: Arc<Metrics>,
    snap_dir: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S: StateMachine> RaftNode<S> {
    /// Opens `data_dir/db`, loads every persisted replica and starts the loop.
    /// Must run inside a tokio runtime (the transport spawns on it).
    pub async fn open(
        node_id: u64,
        data_dir: PathBuf,
        settings: &RaftSettings,
        address_book: Arc<AddressBook>,
        metrics: Arc<Metrics>,
        new_sm: impl Fn() -> S + Send + 'static,
    ) -> Result<Self, Error> {
        let db_path = data_dir.join("db");
        let snap_dir = data_dir.join("snap");
        let mut lcfg = LoopConfig::new(node_id, snap_dir.clone());
        lcfg.tick = Duration::from_millis(settings.tick_ms);
        lcfg.election_ticks = settings.election_ticks;
        lcfg.heartbeat_ticks = settings.heartbeat_ticks;
        lcfg.compact_log_entries = settings.compact_log_entries;
        lcfg.compact_log_bytes = settings.compact_log_bytes;
        let cell = Arc::new(OnceLock::new());
        let transport = GrpcTransport::new(
            node_id,
            address_book.clone(),
            tokio::runtime::Handle::current(),
            cell.clone(),
            metrics.clone(),
        );
        let m = metrics.clone();
        // Opening RocksDB and loading every replica blocks: not on a tokio worker.
        let (raft_loop, loop_handle, engine) = tokio::task::spawn_blocking(move || {
            let engine = Engine::open(&db_path)?;
            let (lp, h) = RaftLoop::new(lcfg, engine.clone(), transport, m, new_sm)?;
            Ok::<_, Error>((lp, h, engine))
        })
        .await
        .map_err(|e| Error::Io(std::io::Error::other(e.to_string())))??;
        let _ = cell.set(loop_handle.clone());
        let thread = std::thread::Builder::new().name(format!("raft-loop-{node_id}")).spawn(move || raft_loop.run())?;
        Ok(RaftNode { node_id, engine, loop_handle, address_book, metrics, snap_dir, thread: Some(thread) })
    }

    /// The inbound side of the transport, to add to the process's gRPC server.
    pub fn raft_service(&self) -> Result<RaftTransportServer<RaftService<S>>, Error> {
        let snap_dir = SnapshotDir::new(self.snap_dir.clone())?;
        let svc = RaftService::new(self.node_id, self.loop_handle.clone(), snap_dir, self.metrics.clone());
        Ok(RaftTransportServer::new(svc).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }

    /// Stops the loop (pending requests get an answer or "outcome unknown")
    /// and waits for its thread.
    pub async fn stop(mut self) {
        let _ = self.loop_handle.send(Msg::Shutdown);
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}
