//! A shard's split as its state machine applies it: the shard keeps the
//! lower part of its hash range, a new shard takes the upper part on the
//! same nodes (one new replica per replica), and nothing in the `data` CF
//! moves: the new shard's range of it already holds its keys. The request-id
//! records of the keys the new shard takes are copied to it, so a write
//! retried across the split is still applied at most once.
//!
//! Every check here is made on the replicated state only, so all replicas
//! refuse or apply the same split.

use prost::Message;
use ringkv_proto::meta::{Epoch, Replica, ShardDescriptor};
use ringkv_proto::storage::{shard_command_result::Result as CmdResult, DedupRecord, SplitCommand, SplitResult};
use ringkv_raft::engine::Cf;
use ringkv_raft::{ApplyContext, Group};

use super::Shard;
use crate::error::{Error, Result};
use crate::keys;

/// The two descriptors a split makes of `shard`, or why it is refused (a
/// refusal is an answer, the same on every replica).
pub fn split_descriptors(shard: &ShardDescriptor, s: &SplitCommand, joint: bool) -> Result<(Shard, Shard)> {
    let epoch = shard.epoch.unwrap_or_default();
    if s.conf_ver != epoch.conf_ver {
        return Err(Error::EpochMismatch(Box::new(shard.clone())));
    }
    if joint {
        return Err(Error::Retryable("a membership change is in progress".into()));
    }
    if !ringkv_common::hashing::splits(shard.start, shard.end, s.split_hash) {
        return Err(Error::invalid(
            "split_hash",
            format!(
                "{:#018x} is not inside the shard's range ({:#018x}, {:#018x})",
                s.split_hash, shard.start, shard.end
            ),
        ));
    }
    let mut members: Vec<&Replica> = shard.replicas.iter().collect();
    members.sort_by_key(|r| r.replica_id);
    let mut ids = s.new_replica_ids.clone();
    ids.sort_unstable();
    ids.dedup();
    if s.new_replica_ids.len() != members.len() || ids.len() != members.len() || ids.contains(&0) {
        return Err(Error::invalid("new_replica_ids", format!("{} distinct non-zero ids needed", members.len())));
    }
    if s.new_shard_id == 0 || s.new_shard_id == shard.id {
        return Err(Error::invalid("new_shard_id", "must be a new non-zero id"));
    }
    let version = epoch.version + 1;
    let left = ShardDescriptor {
        end: s.split_hash,
        epoch: Some(Epoch { version, conf_ver: epoch.conf_ver }),
        ..shard.clone()
    };
    let replicas = members
        .iter()
        .zip(&s.new_replica_ids)
        .map(|(r, id)| Replica { replica_id: *id, node_id: r.node_id, role: r.role })
        .collect();
    let right = ShardDescriptor {
        id: s.new_shard_id,
        start: s.split_hash,
        end: shard.end,
        epoch: Some(Epoch { version, conf_ver: epoch.conf_ver }),
        replicas,
    };
    Ok((Shard(left), Shard(right)))
}

/// Applies a split command: asks the engine to split, answers with both
/// descriptors.
pub fn apply(ctx: &mut ApplyContext<'_, Shard>, s: SplitCommand) -> Result<CmdResult> {
    let (left, right) = split_descriptors(&ctx.group.0, &s, ctx.joint)?;
    let result = SplitResult { left: Some(left.0.clone()), right: Some(right.0.clone()) };
    ctx.split(left, right);
    Ok(CmdResult::Split(result))
}

/// Copies to the new shard (`ctx.group`) the request-id records of `parent`
/// that cover any of its keys (records of older versions, which do not say,
/// are copied too): a retry routed to the new shard finds the answer.
pub fn carry_over_dedup(ctx: &mut ApplyContext<'_, Shard>, parent: &Shard) -> Result<usize> {
    let new = ctx.group.0.clone();
    let (lo, hi) = keys::meta_dedup_records_range(parent.id());
    let mut copied = 0;
    for k in ctx.scan_keys(Cf::Meta, &lo, &hi, usize::MAX)? {
        let Some(v) = ctx.get(Cf::Meta, &k)? else { continue };
        let rec = DedupRecord::decode(v.as_slice()).map_err(|e| Error::Corrupt(format!("dedup record: {e}")))?;
        let takes = !rec.hashed || keys::ranges_meet(rec.min_hash, rec.max_hash, new.start, new.end);
        if !takes {
            continue;
        }
        let request_id = keys::dedup_request_id(&k).to_vec();
        ctx.put(Cf::Meta, &keys::meta_dedup_key(new.id, &request_id), &v);
        ctx.put(Cf::Meta, &keys::meta_dedup_by_index_key(new.id, rec.index, &request_id), &[]);
        copied += 1;
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use ringkv_proto::kv::PutRequest;
    use ringkv_proto::storage::{shard_command::Op, ShardCommand};
    use ringkv_raft::engine::Engine;
    use ringkv_raft::state_machine::ApplyBatch;
    use ringkv_raft::StateMachine;

    use super::*;
    use crate::shard::ShardStateMachine;

    fn shard() -> ShardDescriptor {
        let replicas = [(12, 2), (11, 1), (13, 3)]
            .into_iter()
            .map(|(replica_id, node_id)| Replica { replica_id, node_id, role: 0 })
            .collect();
        ShardDescriptor { id: 1, start: 0, end: 0, epoch: Some(Epoch { version: 3, conf_ver: 5 }), replicas }
    }

    fn split_at(h: u64) -> SplitCommand {
        SplitCommand { split_hash: h, new_shard_id: 9, new_replica_ids: vec![91, 92, 93], conf_ver: 5 }
    }

    #[test]
    fn a_split_halves_the_range_and_pairs_new_replicas_with_the_old_by_replica_id() {
        let (l, r) = split_descriptors(&shard(), &split_at(1 << 63), false).unwrap();
        assert_eq!((l.start, l.end, l.version(), l.conf_version()), (0, 1 << 63, 4, 5));
        assert_eq!((r.id, r.start, r.end, r.version(), r.conf_version()), (9, 1 << 63, 0, 4, 5));
        let pairs: Vec<(u64, u64)> = r.replicas.iter().map(|x| (x.replica_id, x.node_id)).collect();
        assert_eq!(pairs, vec![(91, 1), (92, 2), (93, 3)]);
        assert_eq!(l.replicas, shard().replicas, "the shard keeps its replicas");
    }

    #[test]
    fn a_split_is_refused_on_a_stale_membership_a_joint_one_a_bad_hash_or_bad_ids() {
        let refused = |s: SplitCommand, joint| split_descriptors(&shard(), &s, joint).unwrap_err();
        assert!(matches!(refused(SplitCommand { conf_ver: 4, ..split_at(7) }, false), Error::EpochMismatch(_)));
        assert!(matches!(refused(split_at(7), true), Error::Retryable(_)));
        assert!(matches!(refused(split_at(0), false), Error::InvalidArgument { .. }), "the range's own start");
        let narrow = ShardDescriptor { start: 10, end: 20, ..shard() };
        assert!(split_descriptors(&narrow, &split_at(20), false).is_err(), "the range's end");
        assert!(split_descriptors(&narrow, &split_at(5), false).is_err(), "outside");
        assert!(split_descriptors(&narrow, &split_at(19), false).is_ok());
        for ids in [vec![91, 92], vec![91, 91, 92], vec![0, 92, 93]] {
            assert!(matches!(
                refused(SplitCommand { new_replica_ids: ids, ..split_at(7) }, false),
                Error::InvalidArgument { .. }
            ));
        }
        assert!(refused(SplitCommand { new_shard_id: 1, ..split_at(7) }, false).to_string().contains("new_shard_id"));
    }

    /// Keys with a hash below and above `h`.
    fn keys_around(h: u64) -> (Vec<u8>, Vec<u8>) {
        let mut below = None;
        let mut above = None;
        for i in 0..1000 {
            let k = format!("key-{i}").into_bytes();
            if keys::key_hash(&k) < h {
                below.get_or_insert(k);
            } else {
                above.get_or_insert(k);
            }
        }
        (below.unwrap(), above.unwrap())
    }

    #[test]
    fn request_records_of_the_new_shards_keys_follow_it_and_a_retry_there_is_not_applied_again() {
        let dir = tempfile::tempdir().unwrap();
        let engine = Engine::open(&dir.path().join("db")).unwrap();
        let parent = Shard(shard());
        let h = 1 << 63;
        let (low, high) = keys_around(h);
        let put = |id: &[u8], key: &[u8], v: &[u8], version| ShardCommand {
            request_id: id.to_vec(),
            epoch_version: version,
            op: Some(Op::Put(PutRequest { context: None, key: key.to_vec(), value: v.to_vec() })),
        };
        let mut batch = ApplyBatch::default();
        let mut sm = ShardStateMachine;
        for (i, c) in [put(b"lo", &low, b"1", 3), put(b"hi", &high, b"1", 3)].into_iter().enumerate() {
            sm.apply(&mut batch.context(&engine, &parent, i as u64 + 10), c).unwrap();
        }
        engine.write(batch.take(), false).unwrap();
        let (_, right) = split_descriptors(&parent, &split_at(h), false).unwrap();
        let copied = carry_over_dedup(&mut batch.context(&engine, &right, 12), &parent).unwrap();
        engine.write(batch.take(), false).unwrap();
        assert_eq!(copied, 1, "only the record of the key the new shard takes");
        // The retried write reaches the new shard after the split, with the
        // new version: answered from the record, the value not written again.
        engine.write(batch.take(), false).unwrap();
        let retry = put(b"hi", &high, b"2", 4);
        let res = sm.apply(&mut batch.context(&engine, &right, 13), retry).unwrap();
        assert!(matches!(res.result, Some(CmdResult::Put(_))));
        engine.write(batch.take(), false).unwrap();
        let stored = engine.get(Cf::Data, &keys::data_key(&high)).unwrap().unwrap();
        assert_eq!(crate::shard::decode_value(&stored).unwrap(), b"1", "applied once");
        // A new request id is applied.
        let res = sm.apply(&mut batch.context(&engine, &right, 14), put(b"new", &high, b"3", 4)).unwrap();
        assert!(matches!(res.result, Some(CmdResult::Put(_))));
        engine.write(batch.take(), false).unwrap();
        let stored = engine.get(Cf::Data, &keys::data_key(&high)).unwrap().unwrap();
        assert_eq!(crate::shard::decode_value(&stored).unwrap(), b"3");
    }
}
