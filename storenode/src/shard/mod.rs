//! The shard state machine: applies key-value commands from a shard's Raft log
//! to the `data` CF, with at-most-once application of retried requests.
//!
//! Values are stored behind a 2-byte header (format version, flags) so the
//! format can grow (e.g. expiry) without rewriting data.

use prost::Message;
use ringkv_proto::error::{shard_error::Kind, ShardError};
use ringkv_proto::kv::{
    compare,
    compare_and_swap_request::{Expected, New},
    mutation, BatchPutResponse, CompareAndSwapResponse, DeleteResponse, GetResult, PutResponse, TxnResponse,
};
use ringkv_proto::meta::ShardDescriptor;
use ringkv_proto::storage::{
    shard_command::Op, shard_command_result::Result as CmdResult, DedupRecord, ShardCommand, ShardCommandResult,
};

use ringkv_raft::engine::Cf;
use ringkv_raft::{ApplyContext, Group, StateMachine};

use crate::error::{Error, Result};
use crate::keys;

mod descriptor;
pub mod split;
pub use descriptor::{to_member, to_replica, Shard};

const VALUE_FORMAT_V1: u8 = 1;

/// How many Raft entries a de-dup record outlives the write that made it. A
/// retry later than that (minutes at any realistic write rate, far beyond a
/// client's deadline) is treated as a new request.
pub const DEDUP_WINDOW_ENTRIES: u64 = 200_000;
/// Expired records are removed every this many entries: at index `i` (a
/// multiple of it, past the window), the records written in
/// `[i - WINDOW - EVERY, i - WINDOW)`.
/// Each sweep covers its own slice of indexes, at most one record per entry,
/// so what a sweep removes depends only on the entries applied, never on how
/// they were grouped into passes: every replica holds the same table.
const DEDUP_GC_EVERY: u64 = 1024;

/// A value as stored in the `data` CF: the value header, then the value.
pub fn encode_value(v: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() + 2);
    out.push(VALUE_FORMAT_V1);
    out.push(0);
    out.extend_from_slice(v);
    out
}

/// The value inside a stored `data` CF value; `Corrupt` on an unknown header.
pub fn decode_value(stored: &[u8]) -> Result<&[u8]> {
    match stored {
        [VALUE_FORMAT_V1, 0, rest @ ..] => Ok(rest),
        _ => Err(Error::Corrupt("value with an unknown header".into())),
    }
}

/// The key-value state machine of a shard (stateless: everything is in RocksDB).
#[derive(Default)]
pub struct ShardStateMachine;

fn err_result(e: Error) -> ShardCommandResult {
    let proto = e.to_proto().unwrap_or(ShardError {
        kind: Some(Kind::Retryable(ringkv_proto::error::Retryable { reason: e.to_string() })),
    });
    ShardCommandResult { result: Some(CmdResult::Error(proto)) }
}

fn ok(r: CmdResult) -> ShardCommandResult {
    ShardCommandResult { result: Some(r) }
}

fn check_key(shard: &ShardDescriptor, key: &[u8]) -> Result<()> {
    if keys::in_range(keys::key_hash(key), shard.start, shard.end) {
        Ok(())
    } else {
        Err(Error::KeyNotInShard { key: key.to_vec(), shard: Box::new(shard.clone()) })
    }
}

impl ShardStateMachine {
    fn read(ctx: &ApplyContext<'_, Shard>, key: &[u8]) -> Result<Option<Vec<u8>>> {
        match ctx.get(Cf::Data, &keys::data_key(key))? {
            Some(v) => Ok(Some(decode_value(&v)?.to_vec())),
            None => Ok(None),
        }
    }

    fn execute(ctx: &mut ApplyContext<'_, Shard>, op: Op) -> Result<CmdResult> {
        let shard = &ctx.group.0;
        Ok(match op {
            Op::Put(p) => {
                check_key(shard, &p.key)?;
                ctx.put(Cf::Data, &keys::data_key(&p.key), &encode_value(&p.value));
                CmdResult::Put(PutResponse {})
            }
            Op::Delete(d) => {
                check_key(shard, &d.key)?;
                let existed = Self::read(ctx, &d.key)?.is_some();
                if existed {
                    ctx.delete(Cf::Data, &keys::data_key(&d.key));
                }
                CmdResult::Delete(DeleteResponse { existed })
            }
            Op::Cas(c) => {
                check_key(shard, &c.key)?;
                let current = Self::read(ctx, &c.key)?;
                let holds = match (&c.expected, &current) {
                    (Some(Expected::ExpectedValue(want)), Some(have)) => want == have,
                    (Some(Expected::ExpectAbsent(true)), None) => true,
                    _ => false,
                };
                if holds {
                    match c.new {
                        Some(New::NewValue(v)) => ctx.put(Cf::Data, &keys::data_key(&c.key), &encode_value(&v)),
                        Some(New::Delete(true)) => ctx.delete(Cf::Data, &keys::data_key(&c.key)),
                        _ => {}
                    }
                }
                CmdResult::Cas(CompareAndSwapResponse {
                    succeeded: holds,
                    found: current.is_some(),
                    current_value: current.unwrap_or_default(),
                })
            }
            Op::BatchPut(b) => {
                for p in &b.pairs {
                    check_key(shard, &p.key)?;
                }
                for p in &b.pairs {
                    ctx.put(Cf::Data, &keys::data_key(&p.key), &encode_value(&p.value));
                }
                CmdResult::BatchPut(BatchPutResponse {})
            }
            Op::Txn(t) => {
                for k in t.compares.iter().map(|c| &c.key).chain(t.mutations.iter().map(|m| &m.key)) {
                    check_key(shard, k)?;
                }
                let mut current = Vec::with_capacity(t.compares.len());
                let mut holds = true;
                for c in &t.compares {
                    let v = Self::read(ctx, &c.key)?;
                    holds &= match (&c.expected, &v) {
                        (Some(compare::Expected::ExpectedValue(want)), Some(have)) => want == have,
                        (Some(compare::Expected::ExpectAbsent(true)), None) => true,
                        _ => false,
                    };
                    current.push(GetResult { key: c.key.clone(), found: v.is_some(), value: v.unwrap_or_default() });
                }
                if holds {
                    for m in t.mutations {
                        match m.op {
                            Some(mutation::Op::Put(v)) => ctx.put(Cf::Data, &keys::data_key(&m.key), &encode_value(&v)),
                            Some(mutation::Op::Delete(true)) => ctx.delete(Cf::Data, &keys::data_key(&m.key)),
                            _ => {}
                        }
                    }
                }
                CmdResult::Txn(TxnResponse { succeeded: holds, current })
            }
            Op::Split(s) => split::apply(ctx, s)?,
        })
    }

    /// Drops the de-dup records that left the window at this entry (see
    /// [`DEDUP_GC_EVERY`]).
    fn expire_dedup(ctx: &mut ApplyContext<'_, Shard>) -> Result<()> {
        if !ctx.index.is_multiple_of(DEDUP_GC_EVERY) || ctx.index <= DEDUP_WINDOW_ENTRIES {
            return Ok(());
        }
        let shard_id = ctx.group.id;
        let below = ctx.index - DEDUP_WINDOW_ENTRIES;
        // The first sweep starts at 0; each later one where the previous ended.
        let (_, lo) = keys::meta_dedup_by_index_range(shard_id, below.saturating_sub(DEDUP_GC_EVERY));
        let (_, hi) = keys::meta_dedup_by_index_range(shard_id, below);
        for k in ctx.scan_keys(Cf::Meta, &lo, &hi, DEDUP_GC_EVERY as usize + 1)? {
            let id = keys::dedup_by_index_request_id(&k).to_vec();
            ctx.delete(Cf::Meta, &keys::meta_dedup_key(shard_id, &id));
            ctx.delete(Cf::Meta, &k);
        }
        Ok(())
    }
}

impl StateMachine for ShardStateMachine {
    type Command = ShardCommand;
    type Response = ShardCommandResult;
    type Group = Shard;

    fn apply(
        &mut self,
        ctx: &mut ApplyContext<'_, Shard>,
        cmd: ShardCommand,
    ) -> ringkv_raft::Result<ShardCommandResult> {
        self.apply_command(ctx, cmd).map_err(|e| ringkv_raft::Error::Corrupt(format!("shard {}: {e}", ctx.group.id)))
    }

    fn undecodable(&self, reason: String) -> ShardCommandResult {
        err_result(Error::invalid("command", format!("undecodable: {reason}")))
    }

    /// A split's new shard takes over the request-id records of its keys.
    fn split_child(ctx: &mut ApplyContext<'_, Shard>, parent: &Shard) -> ringkv_raft::Result<()> {
        let copied = split::carry_over_dedup(ctx, parent)
            .map_err(|e| ringkv_raft::Error::Corrupt(format!("shard {}: {e}", parent.id)))?;
        tracing::info!(shard = ctx.group.id, parent = parent.id, copied, "request-id records carried over by a split");
        Ok(())
    }

    /// A write routed with another epoch version is refused before it takes
    /// a log slot (apply re-checks, since the epoch may change meanwhile).
    fn check_proposal(shard: &Shard, cmd: &ShardCommand) -> Option<ShardCommandResult> {
        (cmd.epoch_version != shard.version()).then(|| err_result(Error::EpochMismatch(Box::new(shard.0.clone()))))
    }
}

impl ShardStateMachine {
    /// Applies one command. `Err` is a local failure (a record on this node
    /// that does not decode, a read error): the engine fences the replica.
    fn apply_command(&mut self, ctx: &mut ApplyContext<'_, Shard>, cmd: ShardCommand) -> Result<ShardCommandResult> {
        Self::expire_dedup(ctx)?;
        let shard_id = ctx.group.id;
        let dedup_key = (!cmd.request_id.is_empty()).then(|| keys::meta_dedup_key(shard_id, &cmd.request_id));
        if let Some(k) = &dedup_key {
            if let Some(b) = ctx.get(Cf::Meta, k)? {
                let rec =
                    DedupRecord::decode(b.as_slice()).map_err(|e| Error::Corrupt(format!("dedup record: {e}")))?;
                return Ok(expand(rec.result.unwrap_or_default(), &cmd));
            }
        }
        let version = ctx.group.version();
        let hashes = cmd.op.as_ref().and_then(key_hashes);
        let result = if cmd.epoch_version != version {
            // Routed with an old range: refuse, the router refreshes and retries.
            err_result(Error::EpochMismatch(Box::new(ctx.group.0.clone())))
        } else {
            let done = match cmd.op {
                Some(op) => Self::execute(ctx, op),
                None => Err(Error::invalid("op", "missing")),
            };
            match done {
                Ok(r) => ok(r),
                Err(
                    e @ (Error::KeyNotInShard { .. }
                    | Error::InvalidArgument { .. }
                    | Error::EpochMismatch(_)
                    | Error::Retryable(_)),
                ) => err_result(e),
                Err(e) => return Err(e),
            }
        };
        // Only writes that changed something are remembered, without the
        // values they read (see `compact`). A retry of one that changed
        // nothing (a failed compare, a refusal) simply runs again: the first
        // run had no effect and nobody saw its answer, so the retry is the
        // one that counts, linearized where it applies.
        if let (Some(k), true) = (dedup_key, changed_state(&result)) {
            let (min_hash, max_hash) = hashes.unwrap_or((0, u64::MAX));
            let rec =
                DedupRecord { index: ctx.index, result: Some(compact(&result)), min_hash, max_hash, hashed: true };
            ctx.put(Cf::Meta, &k, &rec.encode_to_vec());
            ctx.put(Cf::Meta, &keys::meta_dedup_by_index_key(shard_id, ctx.index, &cmd.request_id), &[]);
        }
        Ok(result)
    }
}

/// The lowest and highest hash of the keys `op` writes or compares.
pub(crate) fn key_hashes(op: &Op) -> Option<(u64, u64)> {
    let keys: Vec<&[u8]> = match op {
        Op::Put(p) => vec![&p.key],
        Op::Delete(d) => vec![&d.key],
        Op::Cas(c) => vec![&c.key],
        Op::BatchPut(b) => b.pairs.iter().map(|p| p.key.as_slice()).collect(),
        Op::Txn(t) => {
            t.compares.iter().map(|c| c.key.as_slice()).chain(t.mutations.iter().map(|m| m.key.as_slice())).collect()
        }
        Op::Split(_) => return None,
    };
    let hashes = keys.into_iter().map(keys::key_hash);
    hashes.fold(None, |acc, h| Some(acc.map_or((h, h), |(lo, hi): (u64, u64)| (lo.min(h), hi.max(h)))))
}

/// Whether applying produced an effect that a retry must not repeat.
fn changed_state(r: &ShardCommandResult) -> bool {
    match &r.result {
        Some(CmdResult::Put(_) | CmdResult::BatchPut(_)) => true,
        Some(CmdResult::Delete(d)) => d.existed,
        Some(CmdResult::Cas(c)) => c.succeeded,
        Some(CmdResult::Txn(t)) => t.succeeded,
        Some(CmdResult::Error(_) | CmdResult::Split(_)) | None => false,
    }
}

/// A result as the de-dup table keeps it: without the values a successful
/// compare read, which can be as large as any value and would make the
/// table (and every snapshot, which carries it) grow with the values
/// written rather than with the number of writes. `expand` rebuilds them.
fn compact(r: &ShardCommandResult) -> ShardCommandResult {
    let result = match &r.result {
        Some(CmdResult::Cas(c)) => {
            Some(CmdResult::Cas(CompareAndSwapResponse { current_value: Vec::new(), ..c.clone() }))
        }
        Some(CmdResult::Txn(t)) => Some(CmdResult::Txn(TxnResponse { succeeded: t.succeeded, current: Vec::new() })),
        other => other.clone(),
    };
    ShardCommandResult { result }
}

/// The answer to a retried `cmd` from its compacted record. Only successful
/// compares are recorded, and after a success the values read are exactly
/// the ones the command expected.
fn expand(stored: ShardCommandResult, cmd: &ShardCommand) -> ShardCommandResult {
    let expected = |e: &Option<Expected>| match e {
        Some(Expected::ExpectedValue(v)) => (true, v.clone()),
        _ => (false, Vec::new()),
    };
    let result = match (stored.result, &cmd.op) {
        (Some(CmdResult::Cas(c)), Some(Op::Cas(req))) if c.succeeded => {
            let (found, current_value) = expected(&req.expected);
            Some(CmdResult::Cas(CompareAndSwapResponse { succeeded: true, found, current_value }))
        }
        (Some(CmdResult::Txn(t)), Some(Op::Txn(req))) if t.succeeded => {
            let current = req
                .compares
                .iter()
                .map(|c| {
                    let (found, value) = match &c.expected {
                        Some(compare::Expected::ExpectedValue(v)) => (true, v.clone()),
                        _ => (false, Vec::new()),
                    };
                    GetResult { key: c.key.clone(), found, value }
                })
                .collect();
            Some(CmdResult::Txn(TxnResponse { succeeded: true, current }))
        }
        (other, _) => other,
    };
    ShardCommandResult { result }
}

/// Turns a command result into the typed error it carries, if any.
pub fn into_result(r: ShardCommandResult) -> Result<CmdResult> {
    match r.result {
        Some(CmdResult::Error(e)) => Err(Error::from_proto(e)),
        Some(other) => Ok(other),
        None => Err(Error::Corrupt("empty command result".into())),
    }
}

#[cfg(test)]
mod tests {
    use ringkv_proto::kv::{CompareAndSwapRequest, PutRequest};
    use ringkv_proto::meta::Epoch;

    use super::*;
    use ringkv_raft::engine::Engine;
    use ringkv_raft::state_machine::ApplyBatch;

    fn shard() -> Shard {
        Shard(ShardDescriptor {
            id: 1,
            start: 0,
            end: 0,
            epoch: Some(Epoch { version: 1, conf_ver: 1 }),
            replicas: vec![],
        })
    }

    fn cmd(request_id: &[u8], op: Op) -> ShardCommand {
        ShardCommand { request_id: request_id.to_vec(), epoch_version: 1, op: Some(op) }
    }

    fn cas(expected: &[u8], new: &[u8]) -> Op {
        Op::Cas(CompareAndSwapRequest {
            context: None,
            key: b"k".to_vec(),
            expected: Some(Expected::ExpectedValue(expected.to_vec())),
            new: Some(New::NewValue(new.to_vec())),
        })
    }

    /// Applies `cmds` at indexes 1, 2, ... in one batch; the results.
    fn apply_all(cmds: Vec<ShardCommand>) -> (Vec<ShardCommandResult>, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let shard = shard();
        let mut batch = ApplyBatch::default();
        let mut sm = ShardStateMachine;
        let mut out = Vec::new();
        let mut record_sizes = Vec::new();
        for (i, c) in cmds.into_iter().enumerate() {
            let id = c.request_id.clone();
            let mut ctx = batch.context(&engine, &shard, i as u64 + 1);
            out.push(sm.apply(&mut ctx, c).unwrap());
            let rec = ctx.get(Cf::Meta, &keys::meta_dedup_key(1, &id)).unwrap();
            record_sizes.push(rec.map_or(0, |r| r.len()));
        }
        (out, record_sizes)
    }

    #[test]
    fn a_retried_successful_cas_answers_the_same_without_storing_values() {
        let big = vec![b'x'; 256 * 1024];
        let (res, sizes) = apply_all(vec![
            cmd(b"w", Op::Put(PutRequest { context: None, key: b"k".to_vec(), value: big.clone() })),
            cmd(b"c", cas(&big, b"new")),
            cmd(b"c", cas(&big, b"new")),
        ]);
        let want = CmdResult::Cas(CompareAndSwapResponse { succeeded: true, found: true, current_value: big.clone() });
        assert_eq!(res[1].result, Some(want.clone()));
        assert_eq!(res[2].result, Some(want), "the retry gets the first answer back");
        assert!(sizes[1] > 0 && sizes[1] < 100, "the record holds no value: {} bytes", sizes[1]);
    }

    #[test]
    fn a_cas_that_changed_nothing_is_not_recorded_and_runs_again_on_retry() {
        let (res, sizes) = apply_all(vec![
            cmd(b"c", cas(b"v1", b"v2")),
            cmd(b"w", Op::Put(PutRequest { context: None, key: b"k".to_vec(), value: b"v1".to_vec() })),
            cmd(b"c", cas(b"v1", b"v2")),
            cmd(b"c", cas(b"v1", b"v2")),
        ]);
        assert!(matches!(res[0].result, Some(CmdResult::Cas(CompareAndSwapResponse { succeeded: false, .. }))));
        assert_eq!(sizes[0], 0, "nothing recorded for a failed compare");
        // The retry runs against the new value and succeeds, once.
        assert!(matches!(res[2].result, Some(CmdResult::Cas(CompareAndSwapResponse { succeeded: true, .. }))));
        assert!(matches!(res[3].result, Some(CmdResult::Cas(CompareAndSwapResponse { succeeded: true, .. }))));
    }

    /// Counts the de-dup records of shard 1 in the engine.
    fn dedup_records(engine: &Engine) -> usize {
        let (lo, hi) = keys::meta_dedup_range(1);
        let mut it = engine.iter_range(Cf::Meta, &lo, &hi);
        let mut n = 0;
        while it.key().is_some() {
            n += 1;
            it.next();
        }
        n
    }

    /// Expires records at two sweep points, applied in one pass or in two.
    fn expire_in_passes(one_pass: bool) -> usize {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        // 6,000 old writes, one record each, at indexes 1..=6000.
        let mut wb = rocksdb::WriteBatch::default();
        for i in 1..=6000u64 {
            let id = format!("req-{i}").into_bytes();
            engine.put_cf(&mut wb, Cf::Meta, &keys::meta_dedup_key(1, &id), b"r");
            engine.put_cf(&mut wb, Cf::Meta, &keys::meta_dedup_by_index_key(1, i, &id), &[]);
        }
        engine.write(wb, true).unwrap();
        let shard = shard();
        let mut sm = ShardStateMachine;
        let mut batch = ApplyBatch::default();
        // Two sweep points whose slices are [4800, 5824) and [5824, 6848).
        for (n, index) in [201 * DEDUP_GC_EVERY, 202 * DEDUP_GC_EVERY].into_iter().enumerate() {
            let put = Op::Put(PutRequest { context: None, key: b"k".to_vec(), value: b"v".to_vec() });
            let mut ctx = batch.context(&engine, &shard, index);
            sm.apply(&mut ctx, cmd(b"", put)).unwrap();
            if !one_pass || n == 1 {
                engine.write(batch.take(), false).unwrap();
            }
        }
        dedup_records(&engine)
    }

    #[test]
    fn dedup_expiry_does_not_depend_on_how_entries_were_grouped_into_passes() {
        let (together, apart) = (expire_in_passes(true), expire_in_passes(false));
        assert_eq!(together, apart, "replicas must hold the same de-dup table");
        // Each sweep removed its own slice: the records (two keys each) of
        // indexes 4800..=6000.
        assert_eq!(apart, 2 * (6000 - 1201));
    }
}
