//! A process's Raft machinery in one piece: the RocksDB engine, the Raft loop
//! on its own thread, the outbound transport and the inbound RaftTransport
//! service. The storenode (many shard groups) and the placement service (one
//! group) both start one of these; only the state machine differs.
//!
//! The loop thread is supervised: if it ever ends other than by [`RaftNode::stop`]
//! (a panic on a failed synced write, say), [`RaftNode::is_running`] turns
//! false and the `on_exit` hook runs, so the process can fail its health
//! checks and exit for its supervisor to restart it, rather than live on
//! serving nothing.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use ringkv_proto::engine::raft_transport_server::RaftTransportServer;

use crate::config::RaftConfig;
use crate::engine::Engine;
use crate::error::Error;
use crate::metrics::RaftMetrics;
use crate::raft_loop::{LoopConfig, LoopHandle, RaftLoop};
use crate::snapshot::SnapshotDir;
use crate::state_machine::StateMachine;
use crate::transport::{AddressBook, GrpcTransport, RaftService, SnapshotLimits};

/// Largest gRPC message accepted: a batch of Raft messages can carry entries
/// of many groups, each up to `max_size_per_msg`.
pub const MAX_GRPC_MESSAGE_BYTES: usize = 256 << 20;

/// How long a planned stop waits for the node's leaderships to move
/// (an election timeout is a second; a follower far behind needs longer).
pub const HAND_OFF_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The engine of one process, running.
pub struct RaftNode<S: StateMachine> {
    /// This node's id.
    pub node_id: u64,
    /// The node's RocksDB.
    pub engine: Engine,
    /// The loop's inbox.
    pub loop_handle: LoopHandle<S>,
    /// Peer addresses (set by the process from placement or its config).
    pub address_book: Arc<AddressBook>,
    /// The engine's metrics (and the registry the process adds to).
    pub metrics: Arc<RaftMetrics>,
    snap_dir: PathBuf,
    limits: Arc<SnapshotLimits>,
    running: Arc<AtomicBool>,
    /// Set when a planned stop begins (see [`RaftNode::hand_off_leaders`]).
    stopping: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl<S: StateMachine> RaftNode<S> {
    /// Opens `data_dir/db`, loads every persisted replica and starts the loop.
    /// Must run inside a tokio runtime (the transport spawns on it). `on_exit`
    /// runs on the loop thread if the loop ends without being asked to.
    pub async fn open(
        node_id: u64,
        data_dir: PathBuf,
        config: &RaftConfig,
        address_book: Arc<AddressBook>,
        metrics: Arc<RaftMetrics>,
        new_sm: impl Fn() -> S + Send + 'static,
        on_exit: impl FnOnce() + Send + 'static,
    ) -> Result<Self, Error> {
        config.validate().map_err(|e| Error::invalid("raft", e.to_string()))?;
        let db_path = data_dir.join("db");
        let snap_dir = data_dir.join("snap");
        let lcfg = LoopConfig { node_id, snapshot_dir: snap_dir.clone(), raft: config.clone() };
        let cell = Arc::new(OnceLock::new());
        let limits = SnapshotLimits::new(config);
        let transport = GrpcTransport::new(
            node_id,
            address_book.clone(),
            tokio::runtime::Handle::current(),
            cell.clone(),
            limits.clone(),
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
        let running = Arc::new(AtomicBool::new(true));
        let guard = ExitGuard { running: running.clone(), on_exit: Some(Box::new(on_exit)) };
        let thread = std::thread::Builder::new().name(format!("raft-loop-{node_id}")).spawn(move || {
            let guard = guard;
            raft_loop.run();
            guard.running.store(false, Ordering::SeqCst);
            std::mem::forget(guard); // a clean stop: no exit hook
        })?;
        Ok(RaftNode {
            node_id,
            engine,
            loop_handle,
            address_book,
            metrics,
            snap_dir,
            limits,
            running,
            stopping: Arc::new(AtomicBool::new(false)),
            thread: Some(thread),
        })
    }

    /// Whether the loop thread is alive.
    pub fn is_running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// A flag that turns false when the loop thread ends (for health checks).
    pub fn running_flag(&self) -> Arc<AtomicBool> {
        self.running.clone()
    }

    /// What /readyz answers: the loop runs and no planned stop has begun
    /// (a load balancer stops sending new requests while leaderships are
    /// handed off).
    pub fn ready_fn(&self) -> impl Fn() -> bool + Clone + Send + Sync + 'static {
        let (running, stopping) = (self.running.clone(), self.stopping.clone());
        move || running.load(Ordering::SeqCst) && !stopping.load(Ordering::SeqCst)
    }

    /// The inbound side of the transport, to add to the process's gRPC server.
    pub fn raft_service(&self) -> Result<RaftTransportServer<RaftService<S>>, Error> {
        let snap_dir = SnapshotDir::new(self.snap_dir.clone())?;
        let svc = RaftService::new(
            self.node_id,
            self.loop_handle.clone(),
            snap_dir,
            self.limits.clone(),
            self.metrics.clone(),
        );
        Ok(RaftTransportServer::new(svc).max_decoding_message_size(MAX_GRPC_MESSAGE_BYTES))
    }

    /// Before a planned stop: hands every leadership this node holds to
    /// the most caught-up voter of its group, and waits until it leads
    /// nothing or `timeout` passes; returns the leaderships still held.
    /// Callers of a shard answered "not leader" retry at the new leader at
    /// once, instead of waiting out an election timeout after the stop.
    /// The node keeps serving meanwhile (the transfer travels on its Raft
    /// streams); a group whose followers are all behind keeps its leader
    /// until they catch up or the time is up.
    pub async fn hand_off_leaders(&self, timeout: std::time::Duration) -> usize {
        use crate::raft_loop::LoopRequest;
        use crate::state_machine::Group;
        use crate::MemberRole;
        self.stopping.store(true, Ordering::SeqCst);
        let _ = self.loop_handle.send_internal(LoopRequest::Drain);
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let status = self.loop_handle.status(Vec::new()).await.unwrap_or_default();
            let led: Vec<_> = status.iter().filter(|s| s.is_leader).collect();
            if led.is_empty() || tokio::time::Instant::now() >= deadline {
                return led.len();
            }
            let (held, mut asked_any) = (led.len(), false);
            for s in led {
                let target = s
                    .group
                    .members()
                    .into_iter()
                    .filter(|m| m.replica_id != s.replica_id && m.role == MemberRole::Voter as i32)
                    .max_by_key(|m| s.progress.get(&m.replica_id).copied().unwrap_or(0));
                let Some(target) = target else { continue };
                asked_any = true;
                let (group_id, to_replica_id) = (s.group_id, target.replica_id);
                let asked = self.loop_handle.call(|cb| LoopRequest::TransferLeader { group_id, to_replica_id, cb });
                if let Err(e) = asked.await {
                    tracing::debug!(group = group_id, "leader hand-off: {e}");
                }
            }
            if !asked_any {
                // Groups of one voter: nobody to hand to.
                return held;
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// Stops the loop (pending requests get an answer or "outcome unknown")
    /// and waits for its thread.
    pub async fn stop(mut self) {
        self.loop_handle.shutdown();
        if let Some(t) = self.thread.take() {
            let _ = tokio::task::spawn_blocking(move || t.join()).await;
        }
    }
}

impl<S: StateMachine> Drop for RaftNode<S> {
    fn drop(&mut self) {
        // The loop holds a handle of its own (its workers report through
        // it), so it only ends when told to.
        self.loop_handle.shutdown();
    }
}

/// Runs the exit hook if the loop thread unwinds (a panic) instead of
/// returning.
struct ExitGuard {
    running: Arc<AtomicBool>,
    on_exit: Option<Box<dyn FnOnce() + Send>>,
}

impl Drop for ExitGuard {
    fn drop(&mut self) {
        self.running.store(false, Ordering::SeqCst);
        if let Some(f) = self.on_exit.take() {
            f();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_thread_that_panics_runs_the_exit_hook_and_clears_the_running_flag() {
        let running = Arc::new(AtomicBool::new(true));
        let hooked = Arc::new(AtomicBool::new(false));
        let h = hooked.clone();
        let guard =
            ExitGuard { running: running.clone(), on_exit: Some(Box::new(move || h.store(true, Ordering::SeqCst))) };
        let t = std::thread::spawn(move || {
            let _guard = guard;
            panic!("persisting Raft state: disk gone");
        });
        assert!(t.join().is_err());
        assert!(!running.load(Ordering::SeqCst), "health sees the loop is gone");
        assert!(hooked.load(Ordering::SeqCst), "the process is told to exit");
    }
}
