//! The contract between the engine and what a Raft group replicates.
//!
//! A storenode's shards and the placement service's metadata are each one
//! implementation of [`StateMachine`], with a [`Group`] descriptor type of
//! their own; the loop, storage, transport and snapshot code are shared and
//! know nothing of keys, ranges or nodes' roles.

use std::collections::HashMap;

use rocksdb::WriteBatch;

use crate::engine::{Cf, Engine};
use crate::error::Result;
use crate::Member;

/// A key range of one column family that a state machine owns.
#[derive(Clone, Debug, PartialEq)]
pub struct StateRange {
    /// The column family.
    pub cf: Cf,
    /// First key (inclusive).
    pub lo: Vec<u8>,
    /// End key (exclusive).
    pub hi: Vec<u8>,
}

/// What a Raft group is, as far as the engine needs to know: its id, its
/// members (to route messages and to name the leader), two version numbers
/// (membership and everything else) and the engine key ranges its state
/// occupies. The rest (a shard's hash range) is the state machine's.
///
/// The engine persists the descriptor with the replica (encoded by
/// [`Group::encode`]), hands it to apply, updates its members when a
/// membership change applies, and ships it inside snapshots.
pub trait Group: Clone + std::fmt::Debug + Default + Send + Sync + 'static {
    /// The group id (unique in the cluster, non-zero).
    fn id(&self) -> u64;
    /// The members as of the last applied membership change.
    fn members(&self) -> Vec<Member>;
    /// Replaces the members after a membership change applied, and bumps the
    /// membership version.
    fn set_members(&mut self, members: Vec<Member>);
    /// The membership version: bumped by every applied membership change.
    fn conf_version(&self) -> u64;
    /// The version of everything else the state machine versions (a shard's
    /// range); 0 if nothing.
    fn version(&self) -> u64;
    /// The descriptor's persistent encoding.
    fn encode(&self) -> Vec<u8>;
    /// Decodes [`Group::encode`]'s output; a message on failure.
    fn decode(bytes: &[u8]) -> std::result::Result<Self, String>;
    /// Every key range of the engine this group's state occupies: what a
    /// snapshot copies and what removing the replica deletes. Must not
    /// overlap any other group's ranges on the node.
    fn state_ranges(&self) -> Vec<StateRange>;
    /// Whether two groups' state would share keys (creating a replica that
    /// overlaps one on the node is refused).
    fn overlaps(&self, other: &Self) -> bool;
}

/// A replicated state machine whose state lives in the node's RocksDB.
///
/// `apply` must be deterministic: given the same state and command, every
/// replica writes the same keys and returns the same response, whatever else
/// was applied in the same pass. It must not write outside the group's
/// [`Group::state_ranges`]. An `Err` from `apply` or `restore` means this
/// replica cannot go on (a read error, a corrupt record on this node): the
/// engine fences the replica off (reported in status and metrics, its callers
/// answered) and keeps serving every other group on the node.
pub trait StateMachine: Send + 'static {
    /// What is proposed (encoded into the Raft log).
    type Command: prost::Message + Default + Send + 'static;
    /// What the proposer gets back once the command is applied.
    type Response: Send + 'static;
    /// The group descriptor.
    type Group: Group;

    /// Applies one committed command.
    fn apply(&mut self, ctx: &mut ApplyContext<'_, Self::Group>, cmd: Self::Command) -> Result<Self::Response>;

    /// The response for an entry whose bytes do not decode as a command (a
    /// corrupt proposal): every replica skips it the same way.
    fn undecodable(&self, reason: String) -> Self::Response;

    /// An answer for a proposal refused before it enters the log (for
    /// example, one routed with a stale epoch), or `None` to propose it.
    fn check_proposal(_group: &Self::Group, _cmd: &Self::Command) -> Option<Self::Response> {
        None
    }

    /// (Re)builds any in-memory view of the state from the engine: called
    /// when the replica opens and after a snapshot replaced its state.
    fn restore(&mut self, _engine: &Engine, _group: &Self::Group) -> Result<()> {
        Ok(())
    }

    /// A split (see [`ApplyContext::split`]) creates this node's replica of
    /// the new group: write the state it takes over from `parent` as of the
    /// split entry (`ctx.group` is the new group, `ctx.index` the split's
    /// index). Data the two share a key space for needs nothing: the new
    /// group's [`Group::state_ranges`] already cover it. Not called when the
    /// node's replica of the new group exists already (it came by snapshot)
    /// or was removed here.
    fn split_child(_ctx: &mut ApplyContext<'_, Self::Group>, _parent: &Self::Group) -> Result<()> {
        Ok(())
    }
}

/// A split a state machine asked for while applying an entry.
#[derive(Clone, Debug)]
pub struct Split<G> {
    /// The applying group as it is from this entry on (narrower, with a
    /// newer version).
    pub narrowed: G,
    /// The new group: its own id, members (one new replica id per member
    /// of the parent, on the same nodes) and the state ranges given up.
    pub new: G,
}

/// What one apply pass gives a state machine: the group as of this entry, the
/// entry's index, and read-your-writes access to the pass's WriteBatch.
pub struct ApplyContext<'a, G> {
    /// The group as of this entry.
    pub group: &'a G,
    /// The entry's Raft index.
    pub index: u64,
    /// The node's engine (reads see what earlier passes wrote).
    pub engine: &'a Engine,
    /// Whether the group is in a joint configuration (a membership change
    /// half done) as of this entry: a split must wait until it is left.
    pub joint: bool,
    pub(crate) batch: &'a mut ApplyBatch,
    pub(crate) split: Option<Split<G>>,
}

/// A WriteBatch plus an overlay of the keys it writes, so that an entry
/// applied later in the same pass reads what an earlier one wrote.
#[derive(Default)]
pub struct ApplyBatch {
    pub(crate) wb: WriteBatch,
    overlay: HashMap<(u8, Vec<u8>), Option<Vec<u8>>>,
    /// Bytes (keys and values) the state machines put, by column family
    /// (indexed by [`Cf::as_u8`]): what apply wrote, for the metrics.
    put_bytes: [u64; 3],
}

impl ApplyBatch {
    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        self.wb.is_empty()
    }

    /// Takes the batch to write, clearing the overlay.
    pub fn take(&mut self) -> WriteBatch {
        self.overlay.clear();
        std::mem::take(&mut self.wb)
    }

    /// Takes the bytes put so far, by column family (see `put_bytes`).
    pub(crate) fn take_put_bytes(&mut self) -> [u64; 3] {
        std::mem::take(&mut self.put_bytes)
    }

    /// A context for applying entry `index` of `group` into this batch.
    pub fn context<'a, G>(&'a mut self, engine: &'a Engine, group: &'a G, index: u64) -> ApplyContext<'a, G> {
        ApplyContext { group, index, engine, joint: false, batch: self, split: None }
    }
}

impl<G> ApplyContext<'_, G> {
    /// Splits the group at this entry: from here on the applying group is
    /// `narrowed`, and the engine creates this node's replica of `new` in
    /// the same batch, its Raft state starting at this entry's index and
    /// term (identical on every replica, so the new group elects a leader
    /// among the same nodes). The state machine must have checked that the
    /// two partition the group's state and that `new`'s members pair with
    /// the group's; the engine checks nothing of the kind.
    pub fn split(&mut self, narrowed: G, new: G) {
        self.split = Some(Split { narrowed, new });
    }

    /// The split asked for by the last command, if any.
    pub(crate) fn take_split(&mut self) -> Option<Split<G>> {
        self.split.take()
    }

    /// Reads a key as of this entry (this pass's writes included).
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>> {
        if let Some(v) = self.batch.overlay.get(&(cf.as_u8(), key.to_vec())) {
            return Ok(v.clone());
        }
        Ok(self.engine.get(cf, key)?)
    }

    /// Writes a key.
    pub fn put(&mut self, cf: Cf, key: &[u8], value: &[u8]) {
        self.engine.put_cf(&mut self.batch.wb, cf, key, value);
        self.batch.put_bytes[cf.as_u8() as usize] += (key.len() + value.len()) as u64;
        self.batch.overlay.insert((cf.as_u8(), key.to_vec()), Some(value.to_vec()));
    }

    /// Deletes a key.
    pub fn delete(&mut self, cf: Cf, key: &[u8]) {
        self.engine.delete_cf(&mut self.batch.wb, cf, key);
        self.batch.overlay.insert((cf.as_u8(), key.to_vec()), None);
    }

    /// Keys in `[lo, hi)` of `cf` as of this entry: what earlier passes
    /// stored, with this pass's puts and deletes in that range merged in, so
    /// the answer does not depend on how entries were grouped into passes.
    pub fn scan_keys(&self, cf: Cf, lo: &[u8], hi: &[u8], limit: usize) -> Result<Vec<Vec<u8>>> {
        let mut keys = std::collections::BTreeSet::new();
        let mut it = self.engine.iter_range(cf, lo, hi);
        while let Some(k) = it.key() {
            keys.insert(k.to_vec());
            // Stored keys beyond `limit` plus all overlay deletes could still
            // be needed; stop once enough survive any overlay delete.
            if keys.len() > limit.saturating_add(self.batch.overlay.len()) {
                break;
            }
            it.next();
        }
        it.status()?;
        for ((c, k), v) in &self.batch.overlay {
            if *c == cf.as_u8() && k.as_slice() >= lo && k.as_slice() < hi {
                match v {
                    Some(_) => keys.insert(k.clone()),
                    None => keys.remove(k),
                };
            }
        }
        Ok(keys.into_iter().take(limit).collect())
    }
}
