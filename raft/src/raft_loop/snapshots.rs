//! Snapshots, off the loop thread: generating a file when raft-rs asks for
//! one (a follower is too far behind), and installing one this replica
//! received. While a replica installs, the loop leaves its Readies alone
//! (nothing is applied, no read is served); the worker reports back and
//! the replica resumes.

use ringkv_proto::engine::ReplicaState;

use super::api::{LoopRequest, Transport};
use super::replica::Lifecycle;
use super::RaftLoop;
use crate::error::Result;
use crate::snapshot;
use crate::state_machine::StateMachine;

impl<S: StateMachine, T: Transport> RaftLoop<S, T> {
    /// Starts generating a snapshot of `id` if raft-rs asked for one and the
    /// node has a generation slot free.
    pub(super) fn maybe_generate_snapshot(&mut self, id: u64) {
        if self.generating >= self.cfg.raft.max_snapshot_generations {
            return;
        }
        let Some(r) = self.replicas.get(&id) else { return };
        if !r.snap_slot.lock().take_request() {
            return;
        }
        self.generating += 1;
        let (engine, dir, slot, handle) =
            (self.engine.clone(), self.snap_dir.clone(), r.snap_slot.clone(), self.handle.clone());
        let metrics = self.metrics.clone();
        let spawned = std::thread::Builder::new().name(format!("snap-gen-{id}")).spawn(move || {
            let timer = metrics.snapshot_phase("generate");
            let res = snapshot::generate::<S::Group>(&engine, &dir, id);
            match &res {
                Ok(s) => {
                    metrics.snapshots.with_label_values(&["generated"]).inc();
                    tracing::info!(group = id, index = s.get_metadata().index, "snapshot generated")
                }
                Err(e) => tracing::warn!(group = id, "snapshot generation failed: {e}"),
            }
            drop(timer);
            slot.lock().finish(res.ok());
            drop(engine); // before reporting: see `destroy` in lifecycle.rs
            let _ = handle.send_internal(LoopRequest::SnapshotGenerated { group_id: id });
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start snapshot thread: {e}");
            self.generating -= 1;
            r.snap_slot.lock().finish(None);
        }
    }

    /// Hands the install of a persisted snapshot (`state` names the file) to
    /// a worker thread; the replica waits in `ApplyingSnapshot`.
    pub(super) fn start_install(&mut self, id: u64, index: u64, state: ReplicaState) {
        let Some(r) = self.replicas.get_mut(&id) else { return };
        r.lifecycle = Lifecycle::ApplyingSnapshot { index };
        let (engine, group, replica_id, handle) =
            (self.engine.clone(), r.group.clone(), r.replica_id, self.handle.clone());
        let timer = self.metrics.snapshot_phase("install");
        let spawned = std::thread::Builder::new().name(format!("snap-install-{id}")).spawn(move || {
            let result = snapshot::install(&engine, &group, replica_id, &state);
            drop(timer);
            drop(engine); // before reporting: see `destroy` in lifecycle.rs
            let _ = handle.send_internal(LoopRequest::SnapshotInstalled { group_id: id, index, result });
        });
        if let Err(e) = spawned {
            self.fail_replica(id, format!("cannot start the snapshot install thread: {e}"));
        }
    }

    /// A worker finished installing: rebuild the state machine's view and
    /// resume the replica, or fence it off.
    pub(super) fn snapshot_installed(&mut self, id: u64, index: u64, result: Result<()>) {
        let Some(r) = self.replicas.get_mut(&id) else { return };
        if r.lifecycle != (Lifecycle::ApplyingSnapshot { index }) {
            return;
        }
        let restored = result.and_then(|()| r.sm.restore(&self.engine, &r.group));
        match restored {
            Ok(()) => {
                r.lifecycle = Lifecycle::Normal;
                self.snap_dir.remove_received_upto(id, index);
                self.metrics.snapshots.with_label_values(&["applied"]).inc();
                tracing::info!(group = id, index, "snapshot installed");
                self.dirty.insert(id);
            }
            Err(e) => {
                self.metrics.snapshots.with_label_values(&["install_failed"]).inc();
                self.fail_replica(id, format!("installing the snapshot at {index}: {e}"));
            }
        }
    }
}
