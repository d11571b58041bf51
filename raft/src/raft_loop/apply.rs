//! Applying committed entries: commands go to the state machine, membership
//! changes to raft-rs and the group descriptor; the applied index goes into
//! the same batch as what it covers.
//!
//! Everything here is deterministic: the same entries give the same writes
//! and answers on every replica. A membership change raft-rs refuses, or
//! whose bytes do not decode, is a no-op answered as refused on every
//! replica alike. Only the state machine's `Err` (a local read failure, a
//! corrupt record on this node) stops this replica, and then nothing of its
//! pass is written.

use std::time::Instant;

use prometheus::Histogram;
use prost::Message as _;
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, ConfState, Entry, EntryType};
use raft::{ProgressState, StateRole};
use ringkv_proto::engine::{ConfChangeContext, MemberRole, ReplicaState};
use rocksdb::WriteBatch;

use super::api::{Timed, Timings};
use super::replica::{Replica, Waiter};
use crate::config::RaftConfig;
use crate::engine::{Cf, Engine};
use crate::error::Error;
use crate::keys;
use crate::state_machine::{ApplyBatch, Group, StateMachine};
use crate::Member;

/// An answer to send once the pass's apply batch is written.
pub(super) enum Answer<S: StateMachine> {
    /// A command's response, and when its proposal was accepted.
    Cmd(super::api::Callback<Timed<S::Response>>, S::Response, Instant),
    /// A completed membership change.
    Conf(super::api::Callback<S::Group>, S::Group),
    /// A refusal (superseded proposal, refused membership change).
    Fail(Waiter<S>, Error),
}

impl<S: StateMachine> Answer<S> {
    /// Sends the answer: the pass saw the entry committed at `committed`
    /// and wrote its apply batch at `done`. A command's propose → commit
    /// time is observed (answers exist on the proposing leader only).
    pub fn send(self, committed: Instant, done: Instant, propose_commit: &Histogram) {
        match self {
            Answer::Cmd(cb, r, accepted) => {
                propose_commit.observe(committed.saturating_duration_since(accepted).as_secs_f64());
                let timings = Timings { accepted, committed: Some(committed), done };
                let _ = cb.send(Ok(Timed { value: r, timings }));
            }
            Answer::Conf(cb, g) => {
                let _ = cb.send(Ok(g));
            }
            Answer::Fail(w, e) => w.fail(e),
        }
    }

    /// Sends "outcome unknown" instead: the replica failed before its pass
    /// was written (the entries are committed and apply elsewhere).
    pub fn abandon(self) {
        let e = || Error::Ambiguous("replica failed while applying".into());
        match self {
            Answer::Cmd(cb, _, _) => {
                let _ = cb.send(Err(e()));
            }
            Answer::Conf(cb, _) => {
                let _ = cb.send(Err(e()));
            }
            Answer::Fail(w, _) => w.fail(e()),
        }
    }
}

fn role_of(id: u64, cs: &ConfState) -> Option<MemberRole> {
    if cs.voters.contains(&id) || cs.voters_outgoing.contains(&id) {
        Some(MemberRole::Voter)
    } else if cs.learners.contains(&id) || cs.learners_next.contains(&id) {
        Some(MemberRole::Learner)
    } else {
        None
    }
}

/// A split applied by [`apply_entries`], which stopped right after it.
pub(super) struct SplitOff<G> {
    /// The new group.
    pub new: G,
    /// The split entry's index and term: the new group's Raft state starts there.
    pub index: u64,
    pub term: u64,
    /// The entries after the split, still to apply.
    pub rest: Vec<Entry>,
}

/// Applies `entries` of replica `r` into `batch`; answers go to `answers`.
/// Stops right after an entry that split the group (the parent's side of
/// the split is written: its narrowed descriptor and applied index), so that
/// the caller creates the new group's replica from the state as of that
/// entry, then applies the rest. An `Err` means the replica must stop (its
/// batch must not be written).
pub(super) fn apply_entries<S: StateMachine>(
    engine: &Engine,
    r: &mut Replica<S>,
    entries: Vec<Entry>,
    batch: &mut ApplyBatch,
    answers: &mut Vec<Answer<S>>,
) -> Result<Option<SplitOff<S::Group>>, Error> {
    let mut last = None;
    let mut entries = entries.into_iter();
    while let Some(e) = entries.next() {
        last = Some((e.index, e.term));
        let waiter = take_waiter(r, e.index, e.term, answers);
        match e.get_entry_type() {
            EntryType::EntryNormal => {
                if e.data.is_empty() {
                    // A new leader's empty entry, or one raft-rs put in place
                    // of a refused proposal: whoever waited for it is told so.
                    if let Some((w, _)) = waiter {
                        answers.push(Answer::Fail(w, Error::Retryable("proposal replaced by raft-rs".into())));
                    }
                    continue;
                }
                let mut split = None;
                let resp = match S::Command::decode(e.data.as_ref()) {
                    Ok(cmd) => {
                        let mut ctx = batch.context(engine, &r.group, e.index);
                        ctx.joint = !r.raw.store().conf_state().voters_outgoing.is_empty();
                        let applied = r.sm.apply(&mut ctx, cmd);
                        split = ctx.take_split();
                        match applied {
                            Ok(resp) => resp,
                            Err(err) => {
                                if let Some((w, _)) = waiter {
                                    answers.push(Answer::Fail(w, Error::Ambiguous(err.to_string())));
                                }
                                return Err(err);
                            }
                        }
                    }
                    Err(err) => r.sm.undecodable(err.to_string()),
                };
                if let Some((Waiter::Cmd(cb), accepted)) = waiter {
                    answers.push(Answer::Cmd(cb, resp, accepted));
                }
                if let Some(split) = split {
                    r.group = split.narrowed;
                    write_replica_state(engine, r, &mut batch.wb);
                    r.raw.mut_store().set_applied(&mut batch.wb, e.index, e.term);
                    return Ok(Some(SplitOff {
                        new: split.new,
                        index: e.index,
                        term: e.term,
                        rest: entries.collect(),
                    }));
                }
            }
            EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                match apply_conf_change(engine, r, &e, &mut batch.wb) {
                    Ok(()) => {
                        if let Some((Waiter::Conf(cb), _)) = waiter {
                            r.joint_waiters.push(cb);
                        }
                        if r.raw.store().conf_state().voters_outgoing.is_empty() {
                            for cb in r.joint_waiters.drain(..) {
                                answers.push(Answer::Conf(cb, r.group.clone()));
                            }
                        }
                    }
                    Err(refused) => {
                        tracing::warn!(group = r.id(), index = e.index, "membership change not applied: {refused}");
                        if let Some((w, _)) = waiter {
                            answers.push(Answer::Fail(w, refused));
                        }
                    }
                }
            }
        }
    }
    if let Some((index, term)) = last {
        r.raw.mut_store().set_applied(&mut batch.wb, index, term);
    }
    Ok(None)
}

/// Persists the replica's descriptor (after a membership change or a split).
fn write_replica_state<S: StateMachine>(engine: &Engine, r: &Replica<S>, wb: &mut WriteBatch) {
    let st = ReplicaState { group: r.group.encode(), replica_id: r.replica_id, ..Default::default() };
    engine.put_cf(wb, Cf::Meta, &keys::replica_state_key(r.id()), &st.encode_to_vec());
}

/// The waiter of the proposal at (index, term) and when it was accepted;
/// superseded ones are answered.
fn take_waiter<S: StateMachine>(
    r: &mut Replica<S>,
    index: u64,
    term: u64,
    answers: &mut Vec<Answer<S>>,
) -> Option<(Waiter<S>, Instant)> {
    while let Some(p) = r.proposals.front() {
        if p.index > index {
            return None;
        }
        let p = r.proposals.pop_front()?;
        if p.index == index && p.term == term {
            return p.waiter.map(|w| (w, p.accepted));
        }
        // Another entry was committed at this index: ours is gone for good.
        if let Some(w) = p.waiter {
            answers.push(Answer::Fail(w, Error::Retryable(format!("proposal at {} superseded", p.index))));
        }
    }
    None
}

/// Applies one membership change entry, or refuses it (deterministically:
/// every replica decodes the same bytes against the same configuration).
fn apply_conf_change<S: StateMachine>(
    engine: &Engine,
    r: &mut Replica<S>,
    e: &Entry,
    wb: &mut WriteBatch,
) -> Result<(), Error> {
    let undecodable = |x: protobuf::ProtobufError| Error::ConfChangeRefused(format!("undecodable: {x}"));
    let (cc, ctx) = if e.get_entry_type() == EntryType::EntryConfChangeV2 {
        let cc = ConfChangeV2::parse_from_bytes(&e.data).map_err(undecodable)?;
        let ctx = cc.context.to_vec();
        (cc, ctx)
    } else {
        let cc = ConfChange::parse_from_bytes(&e.data).map_err(undecodable)?;
        let ctx = cc.context.to_vec();
        // A v1 change is a v2 change of one step (raft-rs's `into_v2`).
        let mut single = raft::prelude::ConfChangeSingle::default();
        single.set_change_type(cc.get_change_type());
        single.node_id = cc.node_id;
        let mut v2 = ConfChangeV2::default();
        v2.set_changes(vec![single].into());
        (v2, ctx)
    };
    // raft-rs checks the change against the current configuration before
    // touching anything: on Err nothing changed.
    super::requests::check_conf_change(&r.raw.raft, &cc)?;
    let cs = r.raw.apply_conf_change(&cc).map_err(|x| Error::ConfChangeRefused(x.to_string()))?;
    // `propose_conf_change` puts its context on the entry.
    let ctx = if e.context.is_empty() { ctx } else { e.context.to_vec() };
    let listed: Vec<Member> = match ConfChangeContext::decode(ctx.as_slice()) {
        Ok(c) if !ctx.is_empty() => c.members,
        _ => r.group.members(),
    };
    let mut members: Vec<Member> = listed
        .into_iter()
        .filter_map(|mut m| {
            m.role = role_of(m.replica_id, &cs)? as i32;
            Some(m)
        })
        .collect();
    members.sort_by_key(|m| m.replica_id);
    members.dedup_by_key(|m| m.replica_id);
    r.group.set_members(members);
    if role_of(r.replica_id, &cs).is_none() {
        r.removed = true;
    }
    r.raw.mut_store().set_conf_state(cs);
    write_replica_state(engine, r, wb);
    Ok(())
}

/// Truncates the log in the same (apply) batch as the applied index, so a
/// lost apply batch loses its truncation too and replay finds every entry.
///
/// A leader keeps the entries a follower receiving a snapshot will need
/// right after it: compacting them away would make that follower need
/// another snapshot, and a shard written faster than a snapshot travels
/// would never catch up (a livelock).
pub(super) fn maybe_compact<S: StateMachine>(r: &mut Replica<S>, wb: &mut WriteBatch, cfg: &RaftConfig) {
    let store = r.raw.store();
    let (applied, truncated) = (store.applied_index(), store.truncated_index());
    let mut to = if store.log_bytes() > cfg.compact_log_bytes {
        applied
    } else if applied.saturating_sub(truncated) > cfg.compact_log_entries {
        applied - cfg.compact_log_entries / 2
    } else {
        return;
    };
    if r.raw.raft.state == StateRole::Leader {
        let receiving = r.raw.raft.prs().iter().filter(|(_, p)| p.state == ProgressState::Snapshot);
        if let Some(keep_from) = receiving.map(|(_, p)| p.pending_snapshot).min() {
            to = to.min(keep_from);
        }
    }
    if to <= truncated {
        return;
    }
    if let Err(e) = r.raw.mut_store().compact(wb, to) {
        tracing::warn!(group = r.id(), "log compaction: {e}");
    }
}
