//! raft-rs `Storage` over the shared RocksDB: one instance per replica, reading
//! the replica's log from the `raft` CF and keeping recent entries in memory so
//! that sending appends to followers rarely touches the disk.
//!
//! Writes never happen here directly: the Raft loop asks this type to add the
//! replica's entries / hard state / truncation to the loop's shared WriteBatch
//! and updates the in-memory view at the same time. The loop writes the batch
//! (synced) before it calls `advance`, and raft-rs only reads entries it has
//! been told are persisted, so the in-memory view never runs ahead of what
//! raft-rs may observe.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::Mutex;
use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};
use ringkv_proto::engine::ApplyState;
use rocksdb::WriteBatch;

use crate::engine::{Cf, Engine};
use crate::error::{Error, Result};
use crate::keys;
use crate::snapshot::SnapshotSlot;

/// The index and term every bootstrapped group starts from (as in TiKV): the
/// first voters agree on this state without a log, and a replica added later
/// is necessarily behind it, so it gets a snapshot.
pub const INIT_INDEX: u64 = 5;
/// The term that goes with [`INIT_INDEX`].
pub const INIT_TERM: u64 = 5;

/// Entries kept in memory per replica (beyond these, reads go to RocksDB).
const CACHE_MAX_ENTRIES: usize = 1024;
const CACHE_MAX_BYTES: usize = 4 << 20;

/// One replica's raft-rs `Storage`: its log, hard state and apply state.
pub struct RaftStorage {
    group_id: u64,
    engine: Engine,
    hard_state: HardState,
    apply: ApplyState,
    conf_state: ConfState,
    last_index: u64,
    last_term: u64,
    cache: VecDeque<Entry>,
    cache_bytes: usize,
    /// Approximate bytes of the log above the truncated index, for
    /// size-triggered compaction. Starts at 0 after a restart (we would rather
    /// compact late than scan the log at start-up); the entry-count trigger
    /// still bounds the log meanwhile.
    log_bytes: u64,
    pub(crate) snapshot: Arc<Mutex<SnapshotSlot>>,
}

/// Decodes a raft-rs `ConfState` stored in an `ApplyState`.
pub fn decode_conf_state(bytes: &[u8]) -> Result<ConfState> {
    ConfState::parse_from_bytes(bytes).map_err(|e| Error::Corrupt(format!("conf state: {e}")))
}

/// Encodes a raft-rs message (rust-protobuf).
pub fn encode<M: protobuf::Message>(m: &M) -> Vec<u8> {
    // Encoding into a Vec cannot fail for raft-rs's messages (no required fields).
    m.write_to_bytes().expect("protobuf encode into memory")
}

fn to_raft_err(e: Error) -> raft::Error {
    raft::Error::Store(StorageError::Other(Box::new(e)))
}

impl RaftStorage {
    /// Loads the replica's Raft state from the engine (or starts empty when
    /// there is none: a replica created to receive a snapshot).
    pub fn load(engine: Engine, group_id: u64, snapshot: Arc<Mutex<SnapshotSlot>>) -> Result<Self> {
        let hard_state = match engine.get(Cf::Raft, &keys::raft_hard_state_key(group_id))? {
            Some(b) => HardState::parse_from_bytes(&b)
                .map_err(|e| Error::Corrupt(format!("group {group_id} hard state: {e}")))?,
            None => HardState::default(),
        };
        let apply = match engine.get(Cf::Meta, &keys::apply_state_key(group_id))? {
            Some(b) => prost::Message::decode(b.as_slice())
                .map_err(|e| Error::Corrupt(format!("group {group_id} apply state: {e}")))?,
            None => ApplyState::default(),
        };
        let conf_state = decode_conf_state(&apply.conf_state)?;
        let mut s = RaftStorage {
            group_id,
            engine,
            hard_state,
            conf_state,
            last_index: apply.truncated_index,
            last_term: apply.truncated_term,
            apply,
            cache: VecDeque::new(),
            cache_bytes: 0,
            log_bytes: 0,
            snapshot,
        };
        // The last entry of the log, if any, is the last key of the group's log range.
        let (lo, hi) = (keys::raft_log_key(group_id, 0), keys::raft_log_key(group_id, u64::MAX));
        let last = {
            let mut it = s.engine.iter_range(Cf::Raft, &lo, &hi);
            // seek_to_last honours only the upper bound: check the lower one.
            it.seek_to_last();
            let last = match it.key().filter(|k| *k >= lo.as_slice()).and(it.value()) {
                Some(v) => Some(
                    Entry::parse_from_bytes(v)
                        .map_err(|e| Error::Corrupt(format!("group {group_id} log entry: {e}")))?,
                ),
                None => None,
            };
            it.status()?;
            last
        };
        if let Some(e) = last.filter(|e| e.index > s.last_index) {
            s.last_index = e.index;
            s.last_term = e.term;
        }
        if s.hard_state.commit > s.last_index {
            return Err(Error::Corrupt(format!(
                "group {group_id}: commit {} beyond last log index {}",
                s.hard_state.commit, s.last_index
            )));
        }
        Ok(s)
    }

    /// Adds the initial state of a bootstrapped replica to `wb` (see [`INIT_INDEX`]).
    pub fn bootstrap(engine: &Engine, wb: &mut WriteBatch, group_id: u64, voters: Vec<u64>) {
        let cs = ConfState { voters, ..Default::default() };
        Self::init_at(engine, wb, group_id, cs, INIT_INDEX, INIT_TERM);
    }

    /// Adds to `wb` the initial state of a replica whose log starts after
    /// (`index`, `term`) with configuration `cs`: a bootstrapped replica, or
    /// one a split creates (at the split entry, which every replica of the
    /// new group applied identically, so they agree on the log's start and
    /// any of them can be elected). No vote is cast yet.
    pub fn init_at(engine: &Engine, wb: &mut WriteBatch, group_id: u64, cs: ConfState, index: u64, term: u64) {
        let apply = ApplyState {
            applied_index: index,
            applied_term: term,
            truncated_index: index,
            truncated_term: term,
            conf_state: encode(&cs),
        };
        let hs = HardState { term, commit: index, ..Default::default() };
        engine.put_cf(wb, Cf::Raft, &keys::raft_hard_state_key(group_id), &encode(&hs));
        engine.put_cf(wb, Cf::Meta, &keys::apply_state_key(group_id), &prost::Message::encode_to_vec(&apply));
    }

    /// The group this replica belongs to.
    pub fn group_id(&self) -> u64 {
        self.group_id
    }

    /// The apply state as of the last apply written to the batch.
    pub fn apply_state(&self) -> &ApplyState {
        &self.apply
    }

    /// The last applied index.
    pub fn applied_index(&self) -> u64 {
        self.apply.applied_index
    }

    /// The index the log was truncated at (the log starts after it).
    pub fn truncated_index(&self) -> u64 {
        self.apply.truncated_index
    }

    /// The last index in the log, persisted or not.
    pub fn last_index_now(&self) -> u64 {
        self.last_index
    }

    /// Approximate size of the untruncated log (see the field's comment).
    pub fn log_bytes(&self) -> u64 {
        self.log_bytes
    }

    /// The configuration as of the applied index.
    pub fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    /// The node's engine.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Adds `entries` (from a Ready) to `wb`; entries after them from an older
    /// term are removed, as Raft's log matching requires.
    pub fn append(&mut self, wb: &mut WriteBatch, entries: &[Entry]) {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else { return };
        for e in entries {
            let bytes = encode(e);
            self.log_bytes += bytes.len() as u64;
            self.engine.put_cf(wb, Cf::Raft, &keys::raft_log_key(self.group_id, e.index), &bytes);
        }
        if last.index < self.last_index {
            self.engine.delete_range_cf(
                wb,
                Cf::Raft,
                &keys::raft_log_key(self.group_id, last.index + 1),
                &keys::raft_log_key(self.group_id, self.last_index + 1),
            );
        }
        // Cache: drop what the new entries replace, then append.
        while self.cache.back().is_some_and(|b| b.index >= first.index) {
            let e = self.cache.pop_back().expect("checked non-empty");
            self.cache_bytes -= e.compute_size() as usize;
        }
        if self.cache.back().is_some_and(|b| b.index + 1 != first.index) {
            self.cache.clear();
            self.cache_bytes = 0;
        }
        for e in entries {
            self.cache_bytes += e.compute_size() as usize;
            self.cache.push_back(e.clone());
        }
        while self.cache.len() > CACHE_MAX_ENTRIES || self.cache_bytes > CACHE_MAX_BYTES {
            let Some(e) = self.cache.pop_front() else { break };
            self.cache_bytes -= e.compute_size() as usize;
        }
        self.last_index = last.index;
        self.last_term = last.term;
    }

    /// Adds the hard state to `wb`.
    pub fn set_hard_state(&mut self, wb: &mut WriteBatch, hs: &HardState) {
        self.hard_state = hs.clone();
        self.engine.put_cf(wb, Cf::Raft, &keys::raft_hard_state_key(self.group_id), &encode(hs));
    }

    /// Adds a new commit index to `wb` (the rest of the hard state unchanged).
    pub fn set_commit(&mut self, wb: &mut WriteBatch, commit: u64) {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(wb, &hs);
    }

    /// Records that entries up to `index` (of `term`) are applied, with the
    /// conf state as of then, into `wb` — the same batch as the applied data.
    pub fn set_applied(&mut self, wb: &mut WriteBatch, index: u64, term: u64) {
        self.apply.applied_index = index;
        self.apply.applied_term = term;
        self.write_apply_state(wb);
    }

    /// Records the configuration an applied membership change produced.
    pub fn set_conf_state(&mut self, cs: ConfState) {
        self.apply.conf_state = encode(&cs);
        self.conf_state = cs;
    }

    fn write_apply_state(&self, wb: &mut WriteBatch) {
        self.engine.put_cf(
            wb,
            Cf::Meta,
            &keys::apply_state_key(self.group_id),
            &prost::Message::encode_to_vec(&self.apply),
        );
    }

    /// Drops log entries up to and including `index` (must be applied).
    pub fn compact(&mut self, wb: &mut WriteBatch, index: u64) -> Result<()> {
        if index <= self.apply.truncated_index || index > self.apply.applied_index {
            return Ok(());
        }
        let term = raft::Storage::term(self, index)?;
        self.engine.delete_range_cf(
            wb,
            Cf::Raft,
            &keys::raft_log_key(self.group_id, self.apply.truncated_index + 1),
            &keys::raft_log_key(self.group_id, index + 1),
        );
        // Assume entries of even size: keep the share of bytes still in the log.
        let (before, after) = (self.last_index - self.apply.truncated_index, self.last_index - index);
        self.log_bytes = self.log_bytes * after / before.max(1);
        self.apply.truncated_index = index;
        self.apply.truncated_term = term;
        self.write_apply_state(wb);
        while self.cache.front().is_some_and(|e| e.index <= index) {
            let e = self.cache.pop_front().expect("checked non-empty");
            self.cache_bytes -= e.compute_size() as usize;
        }
        Ok(())
    }

    /// Persists a snapshot's Raft metadata into `wb`: the whole log is replaced
    /// by the snapshot point. The data itself is written by the loop.
    pub fn apply_snapshot_meta(&mut self, wb: &mut WriteBatch, snap: &Snapshot) {
        let md = snap.get_metadata();
        self.engine.delete_range_cf(
            wb,
            Cf::Raft,
            &keys::raft_log_key(self.group_id, 0),
            &keys::raft_log_key(self.group_id, u64::MAX),
        );
        self.apply.applied_index = md.index;
        self.apply.applied_term = md.term;
        self.apply.truncated_index = md.index;
        self.apply.truncated_term = md.term;
        self.set_conf_state(md.get_conf_state().clone());
        self.write_apply_state(wb);
        let mut hs = self.hard_state.clone();
        hs.commit = hs.commit.max(md.index);
        hs.term = hs.term.max(md.term);
        self.set_hard_state(wb, &hs);
        self.last_index = md.index;
        self.last_term = md.term;
        self.cache.clear();
        self.cache_bytes = 0;
        self.log_bytes = 0;
    }

    fn entry_from_db(&self, index: u64) -> Result<Entry> {
        match self.engine.get(Cf::Raft, &keys::raft_log_key(self.group_id, index))? {
            Some(b) => Entry::parse_from_bytes(&b)
                .map_err(|e| Error::Corrupt(format!("group {} entry {index}: {e}", self.group_id))),
            None => Err(Error::Corrupt(format!("group {} missing entry {index}", self.group_id))),
        }
    }
}

impl raft::Storage for RaftStorage {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState { hard_state: self.hard_state.clone(), conf_state: self.conf_state.clone() })
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low <= self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last_index + 1 {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let max_size = max_size.into().unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity((high - low).min(1024) as usize);
        let mut size = 0u64;
        let cache_first = self.cache.front().map(|e| e.index);
        let mut next = low;
        // Entries below the cache come from RocksDB, in one range scan.
        if cache_first.is_none_or(|f| low < f) {
            let db_high = cache_first.map_or(high, |f| f.min(high));
            let lo = keys::raft_log_key(self.group_id, low);
            let hi = keys::raft_log_key(self.group_id, db_high);
            let mut it = self.engine.iter_range(Cf::Raft, &lo, &hi);
            while it.valid() {
                let v = it.value().unwrap_or_default();
                let e = Entry::parse_from_bytes(v)
                    .map_err(|e| to_raft_err(Error::Corrupt(format!("group {} entry: {e}", self.group_id))))?;
                if e.index != next {
                    return Err(to_raft_err(Error::Corrupt(format!("group {}: log gap at {next}", self.group_id))));
                }
                size += e.compute_size() as u64;
                if !out.is_empty() && size > max_size {
                    return Ok(out);
                }
                out.push(e);
                next += 1;
                it.next();
            }
            it.status().map_err(|e| to_raft_err(e.into()))?;
            if next != db_high {
                return Err(to_raft_err(Error::Corrupt(format!(
                    "group {}: log ends at {next}, expected {db_high}",
                    self.group_id
                ))));
            }
        }
        if let Some(f) = cache_first {
            for e in self.cache.iter().skip((next.max(f) - f) as usize) {
                if e.index >= high {
                    break;
                }
                size += e.compute_size() as u64;
                if !out.is_empty() && size > max_size {
                    break;
                }
                out.push(e.clone());
            }
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        if idx == self.apply.truncated_index {
            return Ok(self.apply.truncated_term);
        }
        if idx < self.apply.truncated_index {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last_index {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        if idx == self.last_index {
            return Ok(self.last_term);
        }
        if let Some(f) = self.cache.front() {
            if idx >= f.index {
                return Ok(self.cache[(idx - f.index) as usize].term);
            }
        }
        self.entry_from_db(idx).map(|e| e.term).map_err(to_raft_err)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.apply.truncated_index + 1)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last_index)
    }

    fn snapshot(&self, request_index: u64, to: u64) -> raft::Result<Snapshot> {
        let mut slot = self.snapshot.lock();
        if let Some(snap) = slot.ready_snapshot(request_index, self.apply.truncated_index, to) {
            return Ok(snap);
        }
        slot.request();
        Err(raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64) -> Entry {
        Entry { index, term, data: vec![index as u8; 10].into(), ..Default::default() }
    }

    fn open() -> (tempfile::TempDir, Engine) {
        let dir = tempfile::tempdir().expect("tempdir");
        let engine = Engine::open(dir.path()).expect("open");
        (dir, engine)
    }

    fn load(engine: &Engine) -> RaftStorage {
        RaftStorage::load(engine.clone(), 1, Default::default()).expect("load")
    }

    #[test]
    fn append_persist_reload_and_conflicts() {
        let (_d, engine) = open();
        let mut wb = WriteBatch::default();
        RaftStorage::bootstrap(&engine, &mut wb, 1, vec![1, 2, 3]);
        engine.write(wb, true).expect("write");
        let mut s = load(&engine);
        assert_eq!(s.first_index().unwrap(), INIT_INDEX + 1);
        assert_eq!(s.last_index().unwrap(), INIT_INDEX);
        assert_eq!(s.term(INIT_INDEX).unwrap(), INIT_TERM);
        assert_eq!(s.initial_state().unwrap().conf_state.voters, vec![1, 2, 3]);

        let mut wb = WriteBatch::default();
        let ents: Vec<_> = (6..=20).map(|i| entry(i, 6)).collect();
        s.append(&mut wb, &ents);
        engine.write(wb, true).expect("write");
        // A conflicting suffix from a newer term replaces 15..=20.
        let mut wb = WriteBatch::default();
        s.append(&mut wb, &[entry(15, 7), entry(16, 7)]);
        engine.write(wb, true).expect("write");
        assert_eq!(s.last_index().unwrap(), 16);
        assert_eq!(s.term(15).unwrap(), 7);

        let s2 = load(&engine);
        assert_eq!(s2.last_index().unwrap(), 16, "reload sees the truncated log");
        assert_eq!(s2.term(16).unwrap(), 7);
        let got = s2.entries(6, 17, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.iter().map(|e| e.index).collect::<Vec<_>>(), (6..=16).collect::<Vec<_>>());
        assert_eq!(got[9].term, 7);
        // Cached and uncached reads agree.
        assert_eq!(got, s.entries(6, 17, None, GetEntriesContext::empty(false)).unwrap());
        // Size limit returns at least one entry.
        assert_eq!(s2.entries(6, 17, Some(1), GetEntriesContext::empty(false)).unwrap().len(), 1);
        assert!(matches!(
            s2.entries(6, 18, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Unavailable))
        ));
    }

    #[test]
    fn compaction_moves_first_index() {
        let (_d, engine) = open();
        let mut wb = WriteBatch::default();
        RaftStorage::bootstrap(&engine, &mut wb, 1, vec![1]);
        engine.write(wb, true).expect("write");
        let mut s = load(&engine);
        let mut wb = WriteBatch::default();
        s.append(&mut wb, &(6..=3000).map(|i| entry(i, 6)).collect::<Vec<_>>());
        s.set_applied(&mut wb, 2000, 6);
        engine.write(wb, true).expect("write");
        let before = s.log_bytes();
        assert!(before >= 2995 * 4, "the log's size is counted: {before}");
        let mut wb = WriteBatch::default();
        s.compact(&mut wb, 1500).expect("compact");
        engine.write(wb, true).expect("write");
        assert_eq!(s.log_bytes(), before * 1500 / 2995, "the compacted share leaves the size estimate");
        assert_eq!(s.first_index().unwrap(), 1501);
        assert_eq!(s.term(1500).unwrap(), 6);
        assert!(matches!(s.term(1499), Err(raft::Error::Store(StorageError::Compacted))));
        let s2 = load(&engine);
        assert_eq!(s2.first_index().unwrap(), 1501);
        assert_eq!(s2.last_index().unwrap(), 3000);
        let got = s2.entries(1501, 3001, None, GetEntriesContext::empty(false)).unwrap();
        assert_eq!(got.len(), 1500);
        assert!(engine.get(Cf::Raft, &keys::raft_log_key(1, 1500)).unwrap().is_none());
    }
}
