//! How big a shard's data is, and where its middle is, from RocksDB's own
//! bookkeeping rather than by reading the data: the `data` CF's SST files
//! (each a key range and a size; keys start with their hash, which is
//! uniform, so a file's bytes are spread evenly over its hash range) plus
//! what is still in the memtables (read with a memtable-only iterator, at
//! most the write buffer). TiKV's approximate region size works the same
//! way. Space that deleted or overwritten data holds until compaction
//! counts too: the estimate is of what the shard costs on disk. Keys are
//! estimated the same way from each file's entry count (less its
//! deletions), so overwritten keys count until compaction merges them.
//!
//! Runs on a blocking thread: listing files and reading memtables touch
//! RocksDB.

use rocksdb::{ReadOptions, ReadTier};

use ringkv_common::hashing::ring_end;
use ringkv_raft::engine::{Cf, Engine};

use crate::error::Result;
use crate::keys;

/// One SST file of the `data` CF as a hash range, a size and a key count.
#[derive(Clone, Copy, Debug, PartialEq)]
struct FileSpan {
    /// First and last hash of the file's keys (inclusive).
    lo: u64,
    hi: u64,
    bytes: u64,
    /// Entries less deletions.
    keys: u64,
}

/// The `data` CF's files, read once and used for many shards.
#[derive(Clone, Debug, Default)]
pub struct DataLayout {
    files: Vec<FileSpan>,
}

/// The ring hash a `data` CF key starts with (keys are never shorter than 8
/// bytes; a shorter one counts as its bytes padded with zeros).
fn hash_of(data_key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = data_key.len().min(8);
    b[..n].copy_from_slice(&data_key[..n]);
    u64::from_be_bytes(b)
}

impl DataLayout {
    /// Lists the `data` CF's live files.
    pub fn read(engine: &Engine) -> Result<DataLayout> {
        let files = engine
            .db()
            .live_files()?
            .into_iter()
            .filter(|f| f.column_family_name == Cf::Data.name())
            .filter_map(|f| {
                let (lo, hi) = (hash_of(f.start_key.as_deref()?), hash_of(f.end_key.as_deref()?));
                let keys = f.num_entries.saturating_sub(f.num_deletions);
                Some(FileSpan { lo: lo.min(hi), hi: lo.max(hi), bytes: f.size as u64, keys })
            })
            .collect();
        Ok(DataLayout { files })
    }

    /// What files hold in hashes `[start, end)` (`end` as from
    /// [`ring_end`]): `what` of each file (its bytes, its keys) spread evenly
    /// over its hash range.
    fn spread(&self, start: u128, end: u128, what: impl Fn(&FileSpan) -> u64) -> f64 {
        self.files
            .iter()
            .map(|f| {
                let (lo, hi) = (f.lo as u128, f.hi as u128 + 1);
                let (a, b) = (lo.max(start), hi.min(end));
                if a >= b {
                    0.0
                } else {
                    what(f) as f64 * (b - a) as f64 / (hi - lo) as f64
                }
            })
            .sum()
    }
}

/// The memtables' entries in `[start, end)`: (hash, bytes of key and value).
fn memtable_entries(engine: &Engine, start: u64, end: u64) -> Result<Vec<(u64, u64)>> {
    let (lo, hi) = keys::data_range(start, end);
    let mut ro = ReadOptions::default();
    ro.set_read_tier(ReadTier::Memtable);
    ro.set_iterate_upper_bound(hi);
    let mut it = engine.db().raw_iterator_cf_opt(engine.cf(Cf::Data), ro);
    it.seek(&lo);
    let mut out = Vec::new();
    while let (Some(k), Some(v)) = (it.key(), it.value()) {
        out.push((hash_of(k), (k.len() + v.len()) as u64));
        it.next();
    }
    it.status()?;
    Ok(out)
}

/// A shard's data as measured: total bytes, and how to find its middle.
/// Shards measured together share one read of the file list.
pub struct ShardData<'a> {
    start: u128,
    end: u128,
    layout: &'a DataLayout,
    memtable: Vec<(u64, u64)>,
}

impl<'a> ShardData<'a> {
    /// Measures the shard of hash range `[start, end)`.
    pub fn measure(engine: &Engine, layout: &'a DataLayout, start: u64, end: u64) -> Result<ShardData<'a>> {
        let memtable = memtable_entries(engine, start, end)?;
        Ok(ShardData { start: start as u128, end: ring_end(end), layout, memtable })
    }

    /// Bytes below hash `h` (from the shard's start).
    fn bytes_below(&self, h: u128) -> f64 {
        let mem: u64 = self.memtable.iter().filter(|(x, _)| (*x as u128) < h).map(|(_, b)| b).sum();
        self.layout.spread(self.start, h, |f| f.bytes) + mem as f64
    }

    /// Approximate bytes of the shard.
    pub fn bytes(&self) -> u64 {
        self.bytes_below(self.end) as u64
    }

    /// Approximate keys of the shard (a key in a file and in the memtable
    /// counts twice until they are merged).
    pub fn keys(&self) -> u64 {
        (self.layout.spread(self.start, self.end, |f| f.keys) + self.memtable.len() as f64) as u64
    }

    /// The hash that halves the shard's bytes, strictly inside its range;
    /// `None` for a shard with no data or too narrow to split.
    pub fn middle(&self) -> Option<u64> {
        let total = self.bytes_below(self.end);
        if total <= 0.0 || self.end - self.start < 2 {
            return None;
        }
        // The smallest h whose lower part holds at least half.
        let (mut lo, mut hi) = (self.start + 1, self.end - 1);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if self.bytes_below(mid) * 2.0 >= total {
                hi = mid;
            } else {
                lo = mid + 1;
            }
        }
        Some(lo as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(files: &[(u64, u64, u64)]) -> DataLayout {
        DataLayout {
            files: files.iter().map(|&(lo, hi, bytes)| FileSpan { lo, hi, bytes, keys: bytes / 10 }).collect(),
        }
    }

    fn shard(layout: &DataLayout, start: u64, end: u64, memtable: Vec<(u64, u64)>) -> ShardData<'_> {
        ShardData { start: start as u128, end: ring_end(end), layout, memtable }
    }

    #[test]
    fn a_files_bytes_count_for_the_part_of_its_hash_range_a_shard_covers() {
        let l = layout(&[(0, 999, 1000), (1000, 1999, 500)]);
        assert_eq!(shard(&l, 0, 500, vec![]).bytes(), 500);
        assert_eq!(shard(&l, 500, 1500, vec![]).bytes(), 750);
        assert_eq!(shard(&l, 3000, 0, vec![]).bytes(), 0);
        assert_eq!(shard(&l, 0, 0, vec![(5, 40)]).bytes(), 1540, "memtable entries add up");
        assert_eq!(shard(&l, 500, 1500, vec![]).keys(), 75, "keys spread like bytes");
        assert_eq!(shard(&l, 0, 0, vec![(5, 40)]).keys(), 151);
    }

    #[test]
    fn the_middle_halves_the_bytes_and_stays_inside_the_range() {
        let two = layout(&[(0, 999, 1000), (1000, 1999, 3000)]);
        let m = shard(&two, 0, 2000, vec![]).middle().unwrap();
        assert!((1330..=1336).contains(&m), "{m}: 1000 + 3000 bytes, 2000 below 1333");
        // All in memtable at two hashes: the cut falls between them.
        let none = DataLayout::default();
        let m = shard(&none, 0, 0, vec![(100, 10), (1 << 40, 10)]).middle().unwrap();
        assert!(m > 0 && m <= 101, "{m}");
        assert_eq!(shard(&none, 0, 0, vec![]).middle(), None, "nothing to halve");
        assert_eq!(shard(&layout(&[(0, 10, 100)]), 7, 8, vec![]).middle(), None, "one hash wide");
    }

    #[test]
    fn measuring_a_real_engine_sees_memtable_and_flushed_data() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let mut wb = rocksdb::WriteBatch::default();
        for i in 0..2000 {
            let k = keys::data_key(format!("key-{i}").as_bytes());
            engine.put_cf(&mut wb, Cf::Data, &k, &[7u8; 100]);
        }
        engine.write(wb, false).unwrap();
        let memtable_only = DataLayout::read(&engine).unwrap();
        let before = ShardData::measure(&engine, &memtable_only, 0, 0).unwrap();
        assert!(before.bytes() >= 200_000, "memtable: {}", before.bytes());
        assert_eq!(before.keys(), 2000);
        engine.db().flush_cf(engine.cf(Cf::Data)).unwrap();
        let layout = DataLayout::read(&engine).unwrap();
        let after = ShardData::measure(&engine, &layout, 0, 0).unwrap();
        assert!(after.bytes() > 10_000, "flushed (compressed): {}", after.bytes());
        assert_eq!(after.keys(), 2000, "one file: its entry count");
        let half = ShardData::measure(&engine, &layout, 0, after.middle().unwrap()).unwrap();
        let ratio = half.bytes() as f64 / after.bytes() as f64;
        assert!((0.45..=0.55).contains(&ratio), "{ratio}");
    }
}
