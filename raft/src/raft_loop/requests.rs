//! What callers ask of a replica: peer messages, proposals, reads, membership
//! changes. Everything that can be refused is refused here, before raft-rs
//! sees it, with a typed error the caller can act on.

use std::time::Instant;

use prost::Message as _;
use raft::prelude::{
    ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message as RaftMsg, MessageType,
};
use raft::{Changer, StateRole};
use ringkv_proto::engine::{ConfChangeContext, MemberRole};

use super::api::{Callback, MemberChange, MemberChangeKind, ReadMode, Timed, Timings, Transport};
use super::read_index::ReadWaiter;
use super::replica::{Lifecycle, Proposal, Replica, Waiter};
use super::RaftLoop;
use crate::error::{Error, Result};
use crate::snapshot;
use crate::state_machine::{Group, StateMachine};

impl<S: StateMachine, T: Transport> RaftLoop<S, T> {
    /// The live replica of a group, or why there is none.
    pub(super) fn replica(&mut self, group_id: u64) -> Result<&mut Replica<S>> {
        if let Some(f) = self.failed.get(&group_id) {
            return Err(Error::ReplicaFailed { group_id, reason: f.reason.clone() });
        }
        self.replicas.get_mut(&group_id).ok_or(Error::GroupNotFound(group_id))
    }

    pub(super) fn not_leader(&self, r: &Replica<S>) -> Error {
        self.not_leader_fn(r)()
    }

    /// A "not the leader" error for `r` (its leader hint and that leader's
    /// address), to build as often as needed.
    pub(super) fn not_leader_fn(&self, r: &Replica<S>) -> impl Fn() -> Error {
        let (group_id, leader) = (r.id(), r.leader());
        let leader_address = leader.as_ref().and_then(|l| self.transport.address(l.node_id)).unwrap_or_default();
        move || Error::NotLeader { group_id, leader, leader_address: leader_address.clone() }
    }

    /// The replica of a group if it leads.
    pub(super) fn leader(&mut self, group_id: u64) -> Result<&mut Replica<S>> {
        let r = self.replica(group_id)?;
        if r.raw.raft.state != StateRole::Leader {
            let r = &self.replicas[&group_id];
            return Err(self.not_leader(r));
        }
        self.replica(group_id)
    }

    /// Steps a peer's message into its replica. Messages for groups with no
    /// live replica here, for another incarnation of the replica (`to` is
    /// not its id), and snapshots whose descriptor is missing or names
    /// another group are dropped: Raft tolerates lost messages, not wrong ones.
    pub(super) fn step(&mut self, group_id: u64, from_node: u64, msg: RaftMsg) {
        let Some(r) = self.replicas.get_mut(&group_id) else {
            // A group a split here is about to create (the new group's
            // leader applied it first): kept briefly. Never for a group
            // whose replica was removed or fenced off here.
            let known = self.tombstones.contains_key(&group_id)
                || self.failed.contains_key(&group_id)
                || self.destroying.contains(&group_id);
            if !known && self.stash.keep(group_id, from_node, msg, Instant::now()) {
                self.metrics.raft_messages_stashed.inc();
            } else {
                self.metrics.raft_messages_dropped.inc();
            }
            return;
        };
        if msg.to != r.replica_id {
            tracing::debug!(group_id, to = msg.to, replica = r.replica_id, "message for another replica id dropped");
            self.metrics.raft_messages_dropped.inc();
            return;
        }
        // A leader hands over with MsgTimeoutNow once a follower's log
        // matches; an installing replica's does (its snapshot is persisted)
        // but it cannot campaign until the install is done (see `tick`). The
        // leader's transfer times out and it stays leader.
        // A node that is stopping (see `LoopRequest::Drain`) does not take
        // leaderships either: they would die with it a moment later.
        let campaigns = matches!(msg.get_msg_type(), MessageType::MsgTimeoutNow | MessageType::MsgHup);
        if campaigns && (r.lifecycle != Lifecycle::Normal || self.draining) {
            tracing::info!(
                group_id,
                draining = self.draining,
                "leadership not taken (installing a snapshot or stopping)"
            );
            self.metrics.raft_messages_dropped.inc();
            return;
        }
        if msg.get_msg_type() == MessageType::MsgSnapshot {
            let checked = snapshot::snapshot_data(msg.get_snapshot())
                .and_then(|d| snapshot::snapshot_group::<S::Group>(&d, group_id));
            if let Err(e) = checked {
                tracing::warn!(group_id, "snapshot refused: {e}");
                self.metrics.snapshots.with_label_values(&["refused"]).inc();
                return;
            }
        }
        r.peer_nodes.insert(msg.from, from_node);
        if let Err(e) = r.raw.step(msg) {
            tracing::debug!(group_id, "step: {e}");
        }
        self.dirty.insert(group_id);
    }

    pub(super) fn propose(
        &mut self,
        group_id: u64,
        cmd: S::Command,
        deadline: Instant,
        cb: Callback<Timed<S::Response>>,
    ) {
        let accepted = Instant::now();
        let res = self.leader(group_id).and_then(|r| {
            if let Some(answer) = S::check_proposal(&r.group, &cmd) {
                let timings = Timings { accepted, committed: None, done: accepted };
                let answer = Timed { value: answer, timings };
                return Ok(Err(answer));
            }
            let data = cmd.encode_to_vec();
            // Apply skips empty entries (a new leader's no-op) on every
            // replica: a command that encodes to no bytes would never be
            // applied nor its caller answered.
            if data.is_empty() {
                return Err(Error::invalid("command", "encodes to no bytes"));
            }
            let before = r.raw.raft.raft_log.last_index();
            match r.raw.propose(vec![], data) {
                Ok(()) => {}
                // Over `max_uncommitted_bytes`, or a leader transfer in progress.
                Err(raft::Error::ProposalDropped) => {
                    return Err(Error::Busy("proposal dropped (uncommitted log full or leader transfer)".into()))
                }
                Err(e) => return Err(e.into()),
            }
            let index = r.raw.raft.raft_log.last_index();
            if index == before {
                return Err(Error::Retryable("proposal dropped (leader transfer)".into()));
            }
            let term = r.raw.raft.term;
            r.proposals.push_back(Proposal { index, term, waiter: None, deadline, accepted });
            Ok(Ok(()))
        });
        match res {
            Ok(Ok(())) => {
                let r = self.replicas.get_mut(&group_id).expect("just proposed to it");
                if let Some(p) = r.proposals.back_mut() {
                    p.waiter = Some(Waiter::Cmd(cb));
                }
                self.dirty.insert(group_id);
            }
            Ok(Err(answer)) => {
                let _ = cb.send(Ok(answer));
            }
            Err(e) => {
                // Only for groups hosted here: a caller naming arbitrary
                // groups must not create series.
                if self.replicas.contains_key(&group_id) {
                    self.metrics.shard_proposals_dropped.with_label_values(&[&group_id.to_string()]).inc();
                }
                let _ = cb.send(Err(e));
            }
        }
    }

    pub(super) fn read(&mut self, group_id: u64, mode: ReadMode, deadline: Instant, cb: Callback<Timed<S::Group>>) {
        let accepted = Instant::now();
        let r = match self.replica(group_id) {
            Ok(r) => r,
            Err(e) => {
                let _ = cb.send(Err(e));
                return;
            }
        };
        let applying = r.lifecycle != super::replica::Lifecycle::Normal;
        let leader_only = match mode {
            // A replica installing a snapshot has no consistent state to show.
            ReadMode::Local if applying => {
                let _ = cb.send(Err(Error::Retryable("replica is applying a snapshot".into())));
                return;
            }
            ReadMode::Local => {
                let timings = Timings { accepted, committed: None, done: accepted };
                let _ = cb.send(Ok(Timed { value: r.group.clone(), timings }));
                return;
            }
            ReadMode::Leader => true,
            ReadMode::Follower => false,
        };
        if leader_only && !r.leads() {
            let r = &self.replicas[&group_id];
            let _ = cb.send(Err(self.not_leader(r)));
            return;
        }
        r.reads.push(ReadWaiter { cb, leader_only, deadline, accepted });
        self.dirty.insert(group_id);
    }

    pub(super) fn change_members(
        &mut self,
        group_id: u64,
        expect: Option<(u64, u64)>,
        changes: Vec<MemberChange>,
        deadline: Instant,
        cb: Callback<S::Group>,
    ) {
        match self.propose_member_change(group_id, expect, changes) {
            Ok((index, term)) => {
                let r = self.replicas.get_mut(&group_id).expect("just proposed to it");
                let accepted = Instant::now();
                r.proposals.push_back(Proposal { index, term, waiter: Some(Waiter::Conf(cb)), deadline, accepted });
                self.dirty.insert(group_id);
            }
            Err(e) => {
                let _ = cb.send(Err(e));
            }
        }
    }

    /// Builds the ConfChangeV2 and checks it with raft-rs's own changer
    /// against the current configuration before proposing: a change Raft
    /// would refuse at apply (removing every voter, entering a joint state
    /// while in one, ...) is answered [`Error::ConfChangeRefused`] here.
    fn propose_member_change(
        &mut self,
        group_id: u64,
        expect: Option<(u64, u64)>,
        changes: Vec<MemberChange>,
    ) -> Result<(u64, u64)> {
        let r = self.leader(group_id)?;
        if let Some((version, conf_ver)) = expect {
            if version != r.group.version() || conf_ver != r.group.conf_version() {
                return Err(Error::StaleEpoch { group_id, current: r.group.encode() });
            }
        }
        if changes.is_empty() {
            return Err(Error::invalid("changes", "empty"));
        }
        let mut members = r.group.members();
        let mut singles = Vec::new();
        for ch in &changes {
            let m = &ch.member;
            if m.replica_id == 0 || (m.node_id == 0 && ch.kind != MemberChangeKind::Remove) {
                return Err(Error::invalid("member", "replica_id and node_id must be non-zero"));
            }
            if ch.kind == MemberChangeKind::Remove && m.replica_id == r.replica_id {
                return Err(Error::invalid("member", "cannot remove the leader: transfer leadership first"));
            }
            let ty = match ch.kind {
                MemberChangeKind::AddVoter => ConfChangeType::AddNode,
                MemberChangeKind::AddLearner => ConfChangeType::AddLearnerNode,
                MemberChangeKind::Remove => ConfChangeType::RemoveNode,
            };
            if ch.kind != MemberChangeKind::Remove {
                if members.iter().any(|x| x.node_id == m.node_id && x.replica_id != m.replica_id) {
                    return Err(Error::invalid("member", format!("node {} already hosts a member", m.node_id)));
                }
                let mut m = *m;
                m.role =
                    if ch.kind == MemberChangeKind::AddVoter { MemberRole::Voter } else { MemberRole::Learner } as i32;
                members.retain(|x| x.replica_id != m.replica_id);
                members.push(m);
            }
            let mut single = ConfChangeSingle::default();
            single.set_change_type(ty);
            single.node_id = m.replica_id;
            singles.push(single);
        }
        let mut cc = ConfChangeV2::default();
        cc.set_changes(singles.into());
        cc.set_transition(ConfChangeTransition::Auto);
        check_conf_change(&r.raw.raft, &cc)?;
        // raft-rs does not refuse a change proposed while another is still
        // unapplied: it silently appends an empty normal entry in its place,
        // which apply skips, so the caller's callback was dropped unanswered
        // (found by the scripted test `conf_second_change_while_one_is_pending`).
        if r.raw.raft.has_pending_conf() {
            return Err(Error::Retryable("membership change already in progress".into()));
        }
        let ctx = ConfChangeContext { members }.encode_to_vec();
        let before = r.raw.raft.raft_log.last_index();
        r.raw.propose_conf_change(ctx, cc)?;
        let index = r.raw.raft.raft_log.last_index();
        if index == before {
            return Err(Error::Retryable("membership change already in progress".into()));
        }
        Ok((index, r.raw.raft.term))
    }
}

/// What raft-rs's `apply_conf_change` would answer for `cc` on the current
/// configuration, without applying it.
pub(super) fn check_conf_change<St: raft::Storage>(raft: &raft::Raft<St>, cc: &ConfChangeV2) -> Result<()> {
    let mut changer = Changer::new(raft.prs());
    let res = if cc.leave_joint() {
        changer.leave_joint()
    } else if let Some(auto_leave) = cc.enter_joint() {
        changer.enter_joint(auto_leave, &cc.changes)
    } else {
        changer.simple(&cc.changes)
    };
    res.map(|_| ()).map_err(|e| Error::ConfChangeRefused(e.to_string()))
}
