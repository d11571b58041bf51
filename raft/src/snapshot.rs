//! Raft snapshots of a replica's state, as files.
//!
//! A raft-rs snapshot here carries only metadata (index, term, conf state) and
//! a small [`SnapshotData`] naming a file; the state itself — every key of the
//! ranges the state machine owns — is written to that file by a background
//! thread from one RocksDB snapshot, streamed to the follower in chunks on its
//! own RPC, and written into the follower's RocksDB in bounded batches. Memory
//! stays bounded whatever the shard's size.
//!
//! Consistency: the generator reads the apply state, the replica descriptor
//! and the data from the same RocksDB snapshot, so the file holds exactly the
//! state as of the index it claims.
//!
//! Crash safety on the receiver: the Raft metadata and a replica state of
//! `APPLYING_SNAPSHOT` (naming the file) are persisted first; the data is then
//! written; the state returns to `NORMAL` with a synced write; only then is the
//! file deleted. A restart that finds `APPLYING_SNAPSHOT` writes the data again.
//!
//! File format: `RKVSNAP1`, then records `cf:u8 klen:u32 key vlen:u32 value`
//! (big-endian lengths), then a `0xff` end marker. Its xxh3-64 checksum travels
//! in the snapshot metadata and is verified before the file is used.

use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Snapshot};
use ringkv_proto::engine::{ApplyState, ReplicaState, SnapshotData};
use rocksdb::WriteBatch;
use xxhash_rust::xxh3::Xxh3;

use crate::engine::{Cf, Engine};
use crate::error::{Error, Result};
use crate::keys;
use crate::state_machine::{Group, StateRange};
use crate::storage::decode_conf_state;

const MAGIC: &[u8; 8] = b"RKVSNAP1";
const END: u8 = 0xff;

/// Shared between a replica's `Storage` (which asks for a snapshot) and the
/// loop (which generates it in the background).
#[derive(Default)]
pub struct SnapshotSlot {
    ready: Option<Snapshot>,
    requested: bool,
    generating: bool,
}

impl SnapshotSlot {
    /// The generated snapshot, if it is recent enough to be useful: at or past
    /// `request_index`, not older than the log's start (else the follower
    /// could not continue from it by log), and taken after replica `to`
    /// joined. raft-rs on the receiver refuses a snapshot whose conf state
    /// does not list it ("not in the ConfState"): handing such a snapshot
    /// out again and again would never let a new member catch up (found by
    /// the scripted test `conf_joint_change_of_two_voters`: a second learner
    /// added after the first one's snapshot was sent that snapshot forever).
    pub fn ready_snapshot(&self, request_index: u64, truncated_index: u64, to: u64) -> Option<Snapshot> {
        let s = self.ready.as_ref()?;
        let md = s.get_metadata();
        let cs = md.get_conf_state();
        let lists_to = cs.voters.iter().chain(&cs.learners).chain(&cs.voters_outgoing).any(|id| *id == to);
        (md.index >= request_index && md.index >= truncated_index && lists_to).then(|| s.clone())
    }

    /// raft-rs asked for a snapshot: generate one unless a generation runs.
    pub fn request(&mut self) {
        if !self.generating {
            self.requested = true;
        }
    }

    /// Claims a pending request for generation (the caller starts it).
    pub fn take_request(&mut self) -> bool {
        if self.requested && !self.generating {
            self.requested = false;
            self.generating = true;
            return true;
        }
        false
    }

    /// A generation ended; `snap` is its snapshot if it worked.
    pub fn finish(&mut self, snap: Option<Snapshot>) {
        self.generating = false;
        if snap.is_some() {
            self.ready = snap;
        }
    }
}

/// Where snapshot files live: `gen/` for ones this node made, `recv/` for
/// ones it received.
#[derive(Clone, Debug)]
pub struct SnapshotDir {
    root: PathBuf,
}

impl SnapshotDir {
    /// Opens the directory, dropping half-written files (`*.tmp`) that a
    /// crash left: nothing can be writing them before the node starts.
    pub fn new(root: PathBuf) -> Result<Self> {
        fs::create_dir_all(root.join("gen"))?;
        fs::create_dir_all(root.join("recv"))?;
        let dir = SnapshotDir { root };
        for sub in ["gen", "recv"] {
            dir.remove_matching(sub, |_, ext| ext == "tmp");
        }
        Ok(dir)
    }

    /// Removes the files of `sub` whose (name parsed as
    /// `group_term_index`, extension) `pred` selects.
    fn remove_matching(&self, sub: &str, pred: impl Fn(Option<(u64, u64)>, &str) -> bool) {
        let Ok(rd) = fs::read_dir(self.root.join(sub)) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let ext = p.extension().and_then(|x| x.to_str()).unwrap_or("");
            if pred(Self::group_and_index(&p), ext) {
                let _ = fs::remove_file(p);
            }
        }
    }

    /// Removes every received file of `group_id` up to `index`: once a
    /// snapshot at `index` is applied, older ones (including any that Raft
    /// refused as stale, which nothing else would delete) are useless.
    pub fn remove_received_upto(&self, group_id: u64, index: u64) {
        self.remove_matching("recv", |p, ext| ext == "snap" && p.is_some_and(|(s, i)| s == group_id && i <= index));
    }

    /// Removes every received file. Only at start-up, once interrupted
    /// snapshots are applied: no transfer is in flight then.
    pub fn remove_all_received(&self) {
        self.remove_matching("recv", |_, _| true);
    }

    /// The (group, index) of a snapshot file named by this directory
    /// (`group_term_index.ext`).
    pub fn group_and_index(path: &Path) -> Option<(u64, u64)> {
        let mut parts = path.file_stem()?.to_str()?.split('_').map(|x| x.parse::<u64>().ok());
        let (group, _term, index) = (parts.next()??, parts.next()??, parts.next()??);
        Some((group, index))
    }

    /// The file of a snapshot this node generated.
    pub fn generated(&self, group_id: u64, term: u64, index: u64) -> PathBuf {
        self.root.join("gen").join(format!("{group_id}_{term}_{index}.snap"))
    }

    /// The file of a snapshot this node received (complete and verified).
    pub fn received(&self, group_id: u64, term: u64, index: u64) -> PathBuf {
        self.root.join("recv").join(format!("{group_id}_{term}_{index}.snap"))
    }

    /// A fresh temporary name for receiving the snapshot that will be
    /// [`SnapshotDir::received`]: unique per transfer, so two transfers of one
    /// snapshot never write the same file.
    pub fn receiving(&self, group_id: u64, term: u64, index: u64) -> PathBuf {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.root.join("recv").join(format!("{group_id}_{term}_{index}.{n}.tmp"))
    }

    /// Removes every generated file of `group_id` except `keep`.
    pub fn remove_generated_except(&self, group_id: u64, keep: Option<&Path>) {
        let prefix = format!("{group_id}_");
        let Ok(rd) = fs::read_dir(self.root.join("gen")) else { return };
        for e in rd.flatten() {
            let p = e.path();
            let name = e.file_name();
            if name.to_string_lossy().starts_with(&prefix) && Some(p.as_path()) != keep {
                let _ = fs::remove_file(p);
            }
        }
    }
}

/// Writes a snapshot of `group_id` as of now (one RocksDB snapshot) and
/// returns the raft-rs snapshot describing it. Runs on a background thread.
pub fn generate<G: Group>(engine: &Engine, dir: &SnapshotDir, group_id: u64) -> Result<Snapshot> {
    let db = engine.db();
    let snap = db.snapshot();
    let get = |cf: Cf, key: &[u8]| snap.get_cf(engine.cf(cf), key);
    let apply: ApplyState = match get(Cf::Meta, &keys::apply_state_key(group_id))? {
        Some(b) => prost::Message::decode(b.as_slice()).map_err(|e| Error::Corrupt(format!("apply state: {e}")))?,
        None => return Err(Error::GroupNotFound(group_id)),
    };
    let state: ReplicaState = match get(Cf::Meta, &keys::replica_state_key(group_id))? {
        Some(b) => prost::Message::decode(b.as_slice()).map_err(|e| Error::Corrupt(format!("replica state: {e}")))?,
        None => return Err(Error::GroupNotFound(group_id)),
    };
    let group = G::decode(&state.group).map_err(|e| Error::Corrupt(format!("group {group_id} descriptor: {e}")))?;
    let path = dir.generated(group_id, apply.applied_term, apply.applied_index);
    let tmp = path.with_extension("tmp");
    let mut w = ChecksumWriter::new(BufWriter::new(File::create(&tmp)?));
    w.write_all(MAGIC)?;
    for r in group.state_ranges() {
        let mut ro = rocksdb::ReadOptions::default();
        ro.set_snapshot(&snap);
        ro.set_iterate_upper_bound(r.hi.clone());
        let mut it = db.raw_iterator_cf_opt(engine.cf(r.cf), ro);
        it.seek(&r.lo);
        while let (Some(k), Some(v)) = (it.key(), it.value()) {
            w.write_all(&[r.cf.as_u8()])?;
            w.write_all(&(k.len() as u32).to_be_bytes())?;
            w.write_all(k)?;
            w.write_all(&(v.len() as u32).to_be_bytes())?;
            w.write_all(v)?;
            it.next();
        }
        it.status()?;
    }
    w.write_all(&[END])?;
    let (size, checksum) = w.finish()?;
    fs::rename(&tmp, &path)?;
    dir.remove_generated_except(group_id, Some(&path));

    let mut s = Snapshot::default();
    let md = s.mut_metadata();
    md.index = apply.applied_index;
    md.term = apply.applied_term;
    md.set_conf_state(decode_conf_state(&apply.conf_state)?);
    let data = SnapshotData { group: state.group, file_size: size, file_checksum: checksum };
    s.data = prost::Message::encode_to_vec(&data).into();
    Ok(s)
}

/// The [`SnapshotData`] inside a raft-rs snapshot.
pub fn snapshot_data(s: &Snapshot) -> Result<SnapshotData> {
    prost::Message::decode(s.data.as_ref()).map_err(|e| Error::Corrupt(format!("snapshot data: {e}")))
}

/// The group descriptor a snapshot carries, checked to be one of `group_id`:
/// a snapshot without one, or naming another group, is refused (installing
/// it would replace the wrong key ranges, or with a default descriptor, all
/// of them).
pub fn snapshot_group<G: Group>(data: &SnapshotData, group_id: u64) -> Result<G> {
    if data.group.is_empty() {
        return Err(Error::Corrupt(format!("snapshot of group {group_id} carries no group descriptor")));
    }
    let g = G::decode(&data.group).map_err(|e| Error::Corrupt(format!("snapshot of group {group_id}: {e}")))?;
    if g.id() != group_id {
        return Err(Error::Corrupt(format!("snapshot sent to group {group_id} describes group {}", g.id())));
    }
    Ok(g)
}

/// The conf state a snapshot carries.
pub fn conf_state(s: &Snapshot) -> ConfState {
    s.get_metadata().get_conf_state().clone()
}

/// Checks a file on disk against its metadata (size and checksum).
pub fn verify_file(path: &Path, data: &SnapshotData) -> Result<()> {
    let mut f = BufReader::new(File::open(path)?);
    let mut h = Xxh3::new();
    let mut buf = vec![0u8; 256 << 10];
    let mut size = 0u64;
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        size += n as u64;
    }
    if size != data.file_size || h.digest() != data.file_checksum {
        return Err(Error::Corrupt(format!(
            "snapshot file {}: size {size} checksum {:x}, expected {} {:x}",
            path.display(),
            h.digest(),
            data.file_size,
            data.file_checksum
        )));
    }
    Ok(())
}

/// Replaces the state in `ranges` with the file's contents, checking the
/// file's size and checksum as it is read (`expect`, when known): a file that
/// does not match is an error and nothing of it is written. Idempotent: a
/// restart may run it again on the same file.
///
/// The data is not written through memtables and the WAL: it goes into one
/// SST file per range (next to the snapshot file), which RocksDB then
/// ingests after a range delete of the old state, as TiKV does. Hundreds of
/// MiB written as batches would fill the `data` memtables the node's other
/// replicas apply into (stalling their writes) and the one WAL the Raft loop
/// fsyncs every pass; an ingested file touches neither. Ingestion is atomic
/// and durable per file; until [`install`] marks the replica normal, a crash
/// makes the restart do all of it again.
pub fn write_data(engine: &Engine, path: &Path, ranges: &[StateRange], expect: Option<(u64, u64)>) -> Result<()> {
    let mut f = HashingReader { inner: BufReader::new(File::open(path)?), hash: Xxh3::new(), size: 0 };
    let mut magic = [0u8; 8];
    f.read_exact(&mut magic)?;
    if &magic != MAGIC {
        return Err(Error::Corrupt(format!("{}: not a snapshot file", path.display())));
    }
    let mut sst_opts = rocksdb::Options::default();
    sst_opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    let sst_path = |i: usize| path.with_extension(format!("{i}.ingest.tmp"));
    let mut writers: Vec<Option<rocksdb::SstFileWriter<'_>>> = ranges.iter().map(|_| None).collect();
    let res = (|| -> Result<()> {
        loop {
            let mut cf = [0u8; 1];
            f.read_exact(&mut cf)?;
            if cf[0] == END {
                break;
            }
            let cf =
                Cf::from_u8(cf[0]).ok_or_else(|| Error::Corrupt(format!("{}: bad column family", path.display())))?;
            let k = read_chunk(&mut f)?;
            let v = read_chunk(&mut f)?;
            let Some(i) =
                ranges.iter().position(|r| r.cf == cf && r.lo.as_slice() <= &k[..] && &k[..] < r.hi.as_slice())
            else {
                return Err(Error::Corrupt(format!("{}: key outside the group's ranges", path.display())));
            };
            if writers[i].is_none() {
                let w = rocksdb::SstFileWriter::create(&sst_opts);
                w.open(sst_path(i))?;
                writers[i] = Some(w);
            }
            if let Some(w) = writers[i].as_mut() {
                // Keys of a range come in order; a file out of order is refused here.
                w.put(&k, &v).map_err(|e| Error::Corrupt(format!("{}: {e}", path.display())))?;
            }
        }
        if let Some((size, checksum)) = expect {
            // Anything after the end marker counts too: the file must be exactly what was sent.
            std::io::copy(&mut f, &mut std::io::sink())?;
            if f.size != size || f.hash.digest() != checksum {
                return Err(Error::Corrupt(format!(
                    "{}: size or checksum does not match the snapshot",
                    path.display()
                )));
            }
        }
        for w in writers.iter_mut().flatten() {
            w.finish()?;
        }
        let mut wb = WriteBatch::default();
        for r in ranges {
            engine.delete_range_cf(&mut wb, r.cf, &r.lo, &r.hi);
        }
        engine.write(wb, false)?;
        for (i, r) in ranges.iter().enumerate() {
            if writers[i].is_some() {
                engine.ingest(r.cf, &sst_path(i))?;
            }
        }
        Ok(())
    })();
    drop(writers);
    for i in 0..ranges.len() {
        let _ = fs::remove_file(sst_path(i));
    }
    res
}

/// Installs a snapshot whose Raft metadata is persisted (replica state
/// `APPLYING_SNAPSHOT` naming the file): writes the data, then marks the
/// replica normal with a synced write, then deletes the file. Runs on a
/// worker thread, and again at start-up after a crash in between.
pub fn install<G: Group>(engine: &Engine, group: &G, replica_id: u64, state: &ReplicaState) -> Result<()> {
    let path = PathBuf::from(&state.snapshot_path);
    let expect = (state.snapshot_checksum != 0).then_some((state.snapshot_size, state.snapshot_checksum));
    write_data(engine, &path, &group.state_ranges(), expect)?;
    let mut wb = WriteBatch::default();
    let st = ReplicaState { group: group.encode(), replica_id, ..Default::default() };
    engine.put_cf(&mut wb, Cf::Meta, &keys::replica_state_key(group.id()), &prost::Message::encode_to_vec(&st));
    engine.write(wb, true)?;
    let _ = fs::remove_file(&path);
    Ok(())
}

struct HashingReader<R: Read> {
    inner: R,
    hash: Xxh3,
    size: u64,
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }
}

fn read_chunk(f: &mut impl Read) -> Result<Vec<u8>> {
    let mut len = [0u8; 4];
    f.read_exact(&mut len)?;
    let len = u32::from_be_bytes(len) as usize;
    if len > 64 << 20 {
        return Err(Error::Corrupt(format!("snapshot record of {len} bytes")));
    }
    let mut v = vec![0u8; len];
    f.read_exact(&mut v)?;
    Ok(v)
}

struct ChecksumWriter<W: Write> {
    inner: W,
    hash: Xxh3,
    size: u64,
}

impl<W: Write> ChecksumWriter<W> {
    fn new(inner: W) -> Self {
        ChecksumWriter { inner, hash: Xxh3::new(), size: 0 }
    }

    fn finish(mut self) -> std::io::Result<(u64, u64)> {
        self.inner.flush()?;
        Ok((self.size, self.hash.digest()))
    }
}

impl<W: Write> Write for ChecksumWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        self.size += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Decodes a raft-rs snapshot from bytes (for messages read off the wire).
pub fn parse_snapshot(b: &[u8]) -> Result<Snapshot> {
    Snapshot::parse_from_bytes(b).map_err(|e| Error::Corrupt(format!("snapshot: {e}")))
}

#[cfg(test)]
mod slot_tests {
    use super::*;

    #[test]
    fn a_ready_snapshot_is_not_handed_to_a_replica_it_does_not_list() {
        let mut slot = SnapshotSlot::default();
        let mut s = Snapshot::default();
        s.mut_metadata().index = 8;
        s.mut_metadata().mut_conf_state().voters = vec![11, 12, 13];
        s.mut_metadata().mut_conf_state().learners = vec![14];
        slot.finish(Some(s));
        assert!(slot.ready_snapshot(0, 6, 14).is_some(), "the learner it lists");
        assert!(slot.ready_snapshot(0, 6, 15).is_none(), "a member added after it was taken");
        slot.request();
        assert!(slot.take_request(), "a fresh one is generated instead");
    }
}

#[cfg(test)]
mod dir_tests {
    use super::SnapshotDir;

    #[test]
    fn stale_and_half_written_files_are_removed() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path().to_path_buf()).unwrap();
        let touch = |p: std::path::PathBuf| std::fs::write(&p, b"x").map(|_| p).unwrap();
        let old = touch(dir.received(7, 2, 100));
        let applied = touch(dir.received(7, 3, 200));
        let newer = touch(dir.received(7, 3, 300));
        let other_shard = touch(dir.received(8, 1, 50));
        let half = touch(dir.received(9, 1, 10).with_extension("tmp"));
        dir.remove_received_upto(7, 200);
        assert!(!old.exists() && !applied.exists(), "older and applied files go");
        assert!(newer.exists() && other_shard.exists() && half.exists(), "newer, other shards and transfers stay");
        // A restart drops half-written files.
        SnapshotDir::new(tmp.path().to_path_buf()).unwrap();
        assert!(!half.exists() && newer.exists());
        dir.remove_all_received();
        assert!(!newer.exists() && !other_shard.exists());
    }
}

#[cfg(test)]
mod install_tests {
    use super::*;
    use crate::testing::TestGroup;

    /// A group with one key written and its replica state and apply state in
    /// place, so that it can be snapshotted.
    fn engine_with_group(dir: &Path) -> (Engine, TestGroup) {
        let engine = Engine::open(&dir.join("db")).unwrap();
        let g = TestGroup { id: 3, conf_ver: 1, version: 1, ..Default::default() };
        let mut wb = WriteBatch::default();
        crate::storage::RaftStorage::bootstrap(&engine, &mut wb, 3, vec![30]);
        let st = ReplicaState { group: Group::encode(&g), replica_id: 30, ..Default::default() };
        engine.put_cf(&mut wb, Cf::Meta, &keys::replica_state_key(3), &prost::Message::encode_to_vec(&st));
        engine.put_cf(&mut wb, Cf::Data, &crate::testing::data_key(3, b"k"), b"v");
        engine.write(wb, true).unwrap();
        (engine, g)
    }

    #[test]
    fn a_snapshot_file_corrupted_on_disk_is_not_installed() {
        let dir = tempfile::tempdir().unwrap();
        let (engine, g) = engine_with_group(dir.path());
        let snap_dir = SnapshotDir::new(dir.path().join("snap")).unwrap();
        let snap = generate::<TestGroup>(&engine, &snap_dir, 3).unwrap();
        let data = snapshot_data(&snap).unwrap();
        assert_eq!(snapshot_group::<TestGroup>(&data, 3).unwrap(), g);
        let md = snap.get_metadata();
        let path = snap_dir.generated(3, md.term, md.index);
        verify_file(&path, &data).unwrap();

        // A receiver's copy whose last byte flipped on disk.
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last - 1] ^= 0x01;
        let copy = snap_dir.received(3, md.term, md.index);
        fs::write(&copy, &bytes).unwrap();
        assert!(verify_file(&copy, &data).is_err(), "the receiver's check finds it");
        let other_dir = tempfile::tempdir().unwrap();
        let (target, _) = engine_with_group(other_dir.path());
        let state = ReplicaState {
            group: Group::encode(&g),
            replica_id: 30,
            lifecycle: ringkv_proto::engine::ReplicaLifecycle::ApplyingSnapshot as i32,
            snapshot_path: copy.to_string_lossy().into_owned(),
            snapshot_size: data.file_size,
            snapshot_checksum: data.file_checksum,
        };
        assert!(matches!(install(&target, &g, 30, &state), Err(Error::Corrupt(_))));
        assert!(copy.exists(), "a failed install keeps its file for the operator");

        // The intact file installs, and the replica is marked normal.
        fs::copy(&path, &copy).unwrap();
        install(&target, &g, 30, &state).unwrap();
        assert_eq!(target.get(Cf::Data, &crate::testing::data_key(3, b"k")).unwrap().as_deref(), Some(&b"v"[..]));
        assert!(!copy.exists());
    }

    #[test]
    fn a_snapshot_naming_no_group_or_another_group_is_refused() {
        let data = SnapshotData { group: Vec::new(), file_size: 0, file_checksum: 0 };
        assert!(snapshot_group::<TestGroup>(&data, 3).is_err());
        let other = TestGroup { id: 4, ..Default::default() };
        let data = SnapshotData { group: Group::encode(&other), file_size: 0, file_checksum: 0 };
        assert!(snapshot_group::<TestGroup>(&data, 3).is_err());
    }
}

#[cfg(test)]
mod receive_name_tests {
    use super::SnapshotDir;

    #[test]
    fn two_transfers_of_one_snapshot_write_different_files_that_a_restart_removes() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = SnapshotDir::new(tmp.path().to_path_buf()).unwrap();
        let (a, b) = (dir.receiving(7, 2, 100), dir.receiving(7, 2, 100));
        assert_ne!(a, b);
        std::fs::write(&a, b"x").unwrap();
        std::fs::write(&b, b"y").unwrap();
        SnapshotDir::new(tmp.path().to_path_buf()).unwrap();
        assert!(!a.exists() && !b.exists(), "half-received files go at start-up");
    }
}
