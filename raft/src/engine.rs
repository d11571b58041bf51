//! The storage engine: one RocksDB per node with the `data`, `raft` and
//! `meta` column families (the engine's keys in [`crate::keys`]; a state
//! machine lays out its own), shared by every replica.
//!
//! Every call here blocks on disk: call it from the Raft loop thread or a
//! blocking pool, never from a tokio worker.

use std::path::Path;
use std::sync::Arc;

use rocksdb::{
    BlockBasedOptions, ColumnFamily, ColumnFamilyDescriptor, DBRawIterator, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};

use crate::keys::{CF_DATA, CF_META, CF_RAFT};

pub use rocksdb::Error as EngineError;

/// A handle to the node's RocksDB (cheap to clone).
#[derive(Clone)]
pub struct Engine {
    db: Arc<DB>,
    /// The options the DB was opened with: RocksDB's statistics (tickers)
    /// live there.
    opts: Arc<Options>,
}

/// What RocksDB reports of one column family, for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CfStats {
    /// Memtables, active and immutable.
    pub memtable_bytes: u64,
    /// Live SST files.
    pub sst_bytes: u64,
    /// Bytes compaction estimates it must rewrite.
    pub pending_compaction_bytes: u64,
    /// RocksDB's estimate of live keys.
    pub estimated_keys: u64,
}

/// What RocksDB reports of itself, for metrics (cheap: in-memory
/// properties and counters, no IO).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EngineStats {
    /// Per column family.
    pub cfs: Vec<(Cf, CfStats)>,
    /// RocksDB stops writes now (too many L0 files or pending compaction).
    pub write_stopped: bool,
    /// The rate RocksDB slows writers to (0: writes are not delayed).
    pub delayed_write_rate: u64,
    /// Microseconds writers spent stalled since the DB opened.
    pub stall_micros: u64,
    /// Block cache hits since the DB opened.
    pub block_cache_hits: u64,
    /// Block cache misses since the DB opened.
    pub block_cache_misses: u64,
    /// Bytes held by the `data` CF's block cache.
    pub block_cache_usage: u64,
}

/// Which column family.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cf {
    /// State machine data.
    Data,
    /// Raft logs and hard states.
    Raft,
    /// Replica, apply and state machine records.
    Meta,
}

impl Cf {
    /// The column family's name in RocksDB.
    pub fn name(self) -> &'static str {
        match self {
            Cf::Data => CF_DATA,
            Cf::Raft => CF_RAFT,
            Cf::Meta => CF_META,
        }
    }

    /// The column family a byte stands for (in snapshot files).
    pub fn from_u8(b: u8) -> Option<Cf> {
        match b {
            0 => Some(Cf::Data),
            1 => Some(Cf::Raft),
            2 => Some(Cf::Meta),
            _ => None,
        }
    }

    /// The byte a column family is written as (in snapshot files).
    pub fn as_u8(self) -> u8 {
        match self {
            Cf::Data => 0,
            Cf::Raft => 1,
            Cf::Meta => 2,
        }
    }
}

/// The write-ahead log kept before column families are flushed to free it.
const MAX_TOTAL_WAL_BYTES: u64 = 256 << 20;

impl Engine {
    /// Opens (or creates) the database at `path` with the three column families.
    pub fn open(path: &Path) -> Result<Engine, EngineError> {
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // A WAL file lives until every column family with data in it has
        // flushed, and `meta` (small, steady writes) rarely fills its
        // memtable: left to RocksDB's default (4x all write buffers, ~2 GiB
        // here) the Raft log's traffic piles up that much WAL, all of it
        // replayed after a kill -9. Past this size RocksDB flushes the column
        // families that pin the oldest WAL instead.
        opts.set_max_total_wal_size(MAX_TOTAL_WAL_BYTES);
        // Counters only (block cache hits, stall time): no timers or
        // histograms, whose clock reads cost on every operation.
        opts.enable_statistics();
        opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
        let mut data_opts = Options::default();
        let mut bbo = BlockBasedOptions::default();
        bbo.set_bloom_filter(10.0, false);
        data_opts.set_block_based_table_factory(&bbo);
        data_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_DATA, data_opts),
            ColumnFamilyDescriptor::new(CF_RAFT, Options::default()),
            ColumnFamilyDescriptor::new(CF_META, Options::default()),
        ];
        let db = DB::open_cf_descriptors(&opts, path, cfs)?;
        Ok(Engine { db: Arc::new(db), opts: Arc::new(opts) })
    }

    /// What RocksDB reports of itself. A property RocksDB cannot give reads
    /// as 0 (metrics, not decisions, are made of these).
    pub fn stats(&self) -> EngineStats {
        use rocksdb::properties as p;
        use rocksdb::statistics::Ticker;
        let prop = |cf: Cf, name: &p::PropName| self.db.property_int_value_cf(self.cf(cf), name).ok().flatten();
        let cfs = [Cf::Data, Cf::Raft, Cf::Meta]
            .into_iter()
            .map(|cf| {
                let v = |name| prop(cf, name).unwrap_or(0);
                let stats = CfStats {
                    memtable_bytes: v(p::CUR_SIZE_ALL_MEM_TABLES),
                    sst_bytes: v(p::LIVE_SST_FILES_SIZE),
                    pending_compaction_bytes: v(p::ESTIMATE_PENDING_COMPACTION_BYTES),
                    estimated_keys: v(p::ESTIMATE_NUM_KEYS),
                };
                (cf, stats)
            })
            .collect();
        let db_prop = |name: &p::PropName| self.db.property_int_value(name).ok().flatten().unwrap_or(0);
        EngineStats {
            cfs,
            write_stopped: db_prop(p::IS_WRITE_STOPPED) != 0,
            delayed_write_rate: db_prop(p::ACTUAL_DELAYED_WRITE_RATE),
            stall_micros: self.opts.get_ticker_count(Ticker::StallMicros),
            block_cache_hits: self.opts.get_ticker_count(Ticker::BlockCacheHit),
            block_cache_misses: self.opts.get_ticker_count(Ticker::BlockCacheMiss),
            block_cache_usage: prop(Cf::Data, p::BLOCK_CACHE_USAGE).unwrap_or(0),
        }
    }

    /// (total, available) bytes of the filesystem holding the DB.
    pub fn disk_space(&self) -> std::io::Result<(u64, u64)> {
        let st = rustix::fs::statvfs(self.db.path())?;
        Ok((st.f_blocks.saturating_mul(st.f_frsize), st.f_bavail.saturating_mul(st.f_frsize)))
    }

    /// The handle of a column family.
    pub fn cf(&self, cf: Cf) -> &ColumnFamily {
        // The three CFs are created by `open`, so the handle always exists.
        self.db.cf_handle(cf.name()).expect("column family created at open")
    }

    /// The RocksDB handle, for snapshots and iterators with custom options.
    pub fn db(&self) -> &DB {
        &self.db
    }

    /// Writes `wb` atomically; with `sync` it is on disk (WAL fsynced) on return,
    /// and so is every write made before it.
    pub fn write(&self, wb: WriteBatch, sync: bool) -> Result<(), EngineError> {
        let mut wo = WriteOptions::default();
        wo.set_sync(sync);
        self.db.write_opt(wb, &wo)
    }

    /// Ingests an SST file into `cf` (the file is moved, not copied): its
    /// keys land atomically, newer than everything written before.
    pub fn ingest(&self, cf: Cf, sst: &Path) -> Result<(), EngineError> {
        let mut opts = rocksdb::IngestExternalFileOptions::default();
        opts.set_move_files(true);
        self.db.ingest_external_file_cf_opts(self.cf(cf), &opts, vec![sst])
    }

    /// Reads one key.
    pub fn get(&self, cf: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, EngineError> {
        self.db.get_cf(self.cf(cf), key)
    }

    /// A raw iterator over `[lo, hi)` of `cf`, positioned at `lo`.
    pub fn iter_range(&self, cf: Cf, lo: &[u8], hi: &[u8]) -> DBRawIterator<'_> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(hi.to_vec());
        let mut it = self.db.raw_iterator_cf_opt(self.cf(cf), ro);
        it.seek(lo);
        it
    }

    /// Adds a put to a batch.
    pub fn put_cf(&self, wb: &mut WriteBatch, cf: Cf, key: &[u8], value: &[u8]) {
        wb.put_cf(self.cf(cf), key, value);
    }

    /// Adds a delete to a batch.
    pub fn delete_cf(&self, wb: &mut WriteBatch, cf: Cf, key: &[u8]) {
        wb.delete_cf(self.cf(cf), key);
    }

    /// Adds a range delete (`[lo, hi)`) to a batch.
    pub fn delete_range_cf(&self, wb: &mut WriteBatch, cf: Cf, lo: &[u8], hi: &[u8]) {
        wb.delete_range_cf(self.cf(cf), lo, hi);
    }
}

/// One WriteBatch holding every operation of `batches`, in order: what
/// writing them one after the other would do, in one atomic write.
///
/// A batch's representation is an 8-byte sequence number and a 4-byte
/// little-endian count, then its records; concatenating records and adding
/// counts is RocksDB's own `WriteBatchInternal::Append`.
pub fn concat_batches(batches: Vec<WriteBatch>) -> WriteBatch {
    const HEADER: usize = 12;
    let mut batches: Vec<WriteBatch> = batches.into_iter().filter(|b| !b.is_empty()).collect();
    if batches.len() <= 1 {
        return batches.pop().unwrap_or_default();
    }
    let total: usize = batches.iter().map(|b| b.data().len() - HEADER).sum();
    let mut rep = Vec::with_capacity(HEADER + total);
    rep.extend_from_slice(&[0u8; HEADER]);
    let mut count: u32 = 0;
    for b in &batches {
        let data = b.data();
        count += u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
        rep.extend_from_slice(&data[HEADER..]);
    }
    rep[8..HEADER].copy_from_slice(&count.to_le_bytes());
    WriteBatch::from_data(&rep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concatenated_batches_write_every_operation_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let e = Engine::open(dir.path()).unwrap();
        let mut a = WriteBatch::default();
        e.put_cf(&mut a, Cf::Data, b"k1", b"a");
        e.put_cf(&mut a, Cf::Meta, b"m", b"a");
        let mut b = WriteBatch::default();
        e.put_cf(&mut b, Cf::Data, b"k1", b"b"); // later batch wins
        e.delete_cf(&mut b, Cf::Meta, b"m");
        e.put_cf(&mut b, Cf::Raft, b"r", b"b");
        let merged = concat_batches(vec![a, WriteBatch::default(), b]);
        assert_eq!(merged.len(), 5);
        e.write(merged, false).unwrap();
        assert_eq!(e.get(Cf::Data, b"k1").unwrap().as_deref(), Some(&b"b"[..]));
        assert_eq!(e.get(Cf::Meta, b"m").unwrap(), None);
        assert_eq!(e.get(Cf::Raft, b"r").unwrap().as_deref(), Some(&b"b"[..]));
        assert!(concat_batches(Vec::new()).is_empty());
    }
}
