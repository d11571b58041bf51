//! The contract between the Raft loop and what a Raft group replicates.
//!
//! A shard's key-value data and (later) the placement service's metadata are
//! each one implementation of [`StateMachine`]; the loop, storage, transport
//! and snapshot code are shared.

use std::collections::HashMap;

use ringkv_proto::meta::ShardDescriptor;
use rocksdb::WriteBatch;

use crate::engine::{Cf, Engine};
use crate::error::Result;
use crate::raft::snapshot::StateRange;

/// A replicated state machine whose state lives in the node's RocksDB.
///
/// `apply` must be deterministic: given the same state and command, every
/// replica writes the same keys and returns the same response. It must not
/// write outside [`StateMachine::state_ranges`] (those ranges are what a
/// snapshot copies and what removing a replica deletes). Engine read errors
/// are returned as `Err` and stop the loop: a replica that cannot read its own
/// state cannot apply deterministically.
pub trait StateMachine: Send + 'static {
    /// What is proposed (encoded into the Raft log).
    type Command: prost::Message + Default + Send + 'static;
    /// What the proposer gets back once the command is applied.
    type Response: Send + 'static;

    fn apply(&mut self, ctx: &mut ApplyContext<'_>, cmd: Self::Command) -> Result<Self::Response>;

    /// The response for an entry whose bytes do not decode as a command (a
    /// corrupt proposal): every replica skips it the same way.
    fn undecodable(&self, reason: String) -> Self::Response;

    /// Every key range of the engine this group's state occupies.
    fn state_ranges(shard: &ShardDescriptor) -> Vec<StateRange>;

    /// (Re)builds any in-memory view of the state from the engine: called
    /// when the replica opens and after a snapshot replaced its state.
    fn restore(&mut self, _engine: &Engine, _shard: &ShardDescriptor) -> Result<()> {
        Ok(())
    }
}

/// What one apply pass gives a state machine: the shard as of this entry, the
/// entry's index, and read-your-writes access to the pass's WriteBatch.
pub struct ApplyContext<'a> {
    pub shard: &'a ShardDescriptor,
    pub index: u64,
    pub engine: &'a Engine,
    pub(crate) batch: &'a mut ApplyBatch,
}

/// A WriteBatch plus an overlay of the keys it writes, so that an entry
/// applied later in the same pass reads what an earlier one wrote.
#[derive(Default)]
pub struct ApplyBatch {
    pub(crate) wb: WriteBatch,
    overlay: HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
}

impl ApplyBatch {
    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }

    pub fn take(&mut self) -> WriteBatch {
        self.overlay.clear();
        std::mem::take(&mut self.wb)
    }
}

impl ApplyContext<'_> {
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.batch.overlay.get(&(cf.as_u8(), key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.engine.get(cf, key)?)
    }

    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.engine.put_cf(&mut self.batch.wb, cf, key, value);
        self.batch.overlay.insert((cf.as_u8(), key.to_vec()), Some(value.to_vec()));
    }

    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.engine.delete_cf(&mut self.batch.wb, cf, key);
        self.batch.overlay.insert((cf.as_u8(), key.to_vec()), None);
    }

    /// Keys in `[lo, hi)` of `cf` as stored before this pass. Only for state
    /// that this pass cannot have written (e.g. expired de-dup records).
    pub fn scan_committed(&self, cf: Cf, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut it = self.engine.iter_range(cf, lo, hi);
        let mut out = Vec::new();
        while let Some(k) = it.key() {
            if out.len() >= limit {
                break;
            }
            out.push(k.to_vec());
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}

impl<'a> ApplyContext<'a> {
    /// A context for applying outside the Raft loop (a state machine's tests).
    pub fn new(shard: &'a ShardDescriptor, index: u64, engine: &'a Engine, batch: &'a mut ApplyBatch) -> Self {
        ApplyContext { shard, index, engine, batch }
    }
}
