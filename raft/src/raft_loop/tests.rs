//! Unit tests of the loop driven by hand: no thread, no sockets, no sleeps.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ringkv_proto::engine::RaftMessage;
use tokio::sync::oneshot;

use super::*;
use crate::testing::{TestCommand, TestGroup, TestResponse, TestStateMachine};
use crate::{Member, MemberRole};

struct NoNetwork;

impl Transport for NoNetwork {
    fn send(&self, _: u64, _: Vec<RaftMessage>) -> bool {
        true
    }
    fn send_snapshot(&self, _: u64, _: u64, _: RaftMessage, _: PathBuf) {}
    fn address(&self, _: u64) -> Option<String> {
        None
    }
}

fn single_voter(id: u64) -> TestGroup {
    TestGroup {
        id,
        members: vec![Member { replica_id: id * 10, node_id: 1, role: MemberRole::Voter as i32 }],
        conf_ver: 1,
        version: 1,
        ..Default::default()
    }
}

fn new_loop(dir: &std::path::Path) -> (RaftLoop<TestStateMachine, NoNetwork>, Arc<RaftMetrics>) {
    let engine = Engine::open(&dir.join("db")).unwrap();
    let metrics = Arc::new(RaftMetrics::new(1));
    let cfg = LoopConfig { node_id: 1, snapshot_dir: dir.join("snap"), raft: RaftConfig::default() };
    let (lp, _h) = RaftLoop::new(cfg, engine, NoNetwork, metrics.clone(), TestStateMachine::default).unwrap();
    (lp, metrics)
}

fn later() -> Instant {
    Instant::now() + Duration::from_secs(60)
}

/// Eight replicas each with a proposal in the same pass: their entries
/// and hard states go to disk in one synced WriteBatch.
#[test]
fn one_fsync_per_pass_for_all_replicas() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, metrics) = new_loop(dir.path());
    const N: u64 = 8;
    for id in 1..=N {
        let (tx, mut rx) = oneshot::channel();
        lp.handle(LoopRequest::CreateReplica {
            group: single_voter(id),
            replica_id: id * 10,
            bootstrap: true,
            campaign: false,
            cb: tx,
        });
        rx.try_recv().unwrap().unwrap();
    }
    // Single voters elect themselves once their election timeout passes.
    for _ in 0..40 {
        lp.tick();
        lp.run_pass();
    }
    assert!(lp.replicas.values().all(|r| r.is_leader), "every replica leads");
    while !lp.dirty.is_empty() {
        lp.run_pass();
    }
    let fsyncs = metrics.raft_fsyncs.get();
    let hist_before = metrics.raft_readies_per_fsync.get_sample_sum();
    let mut answers = Vec::new();
    for id in 1..=N {
        let cmd = TestCommand { key: b"k".to_vec(), value: b"v".to_vec(), ..Default::default() };
        let (tx, rx) = oneshot::channel();
        lp.handle(LoopRequest::Propose { group_id: id, cmd, deadline: later(), cb: tx });
        answers.push(rx);
    }
    lp.run_pass();
    assert_eq!(metrics.raft_fsyncs.get(), fsyncs + 1, "one fsync for {N} replicas");
    assert_eq!(metrics.raft_readies_per_fsync.get_sample_sum() - hist_before, N as f64);
    // Single voters commit on their own persist: every proposal is answered.
    for mut rx in answers {
        let r = rx.try_recv().expect("answered in the same pass").expect("applied");
        assert_eq!(r.value, TestResponse::Applied(None));
    }
}

fn create(
    lp: &mut RaftLoop<TestStateMachine, NoNetwork>,
    group: TestGroup,
    replica_id: u64,
    bootstrap: bool,
) -> Result<()> {
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::CreateReplica { group, replica_id, bootstrap, campaign: false, cb: tx });
    rx.try_recv().expect("answered at once")
}

/// Ticks and runs passes until every replica of the given groups leads.
fn elect(lp: &mut RaftLoop<TestStateMachine, NoNetwork>, ids: &[u64]) {
    for _ in 0..100 {
        lp.tick();
        lp.run_pass();
        if ids.iter().all(|id| lp.replicas.get(id).is_some_and(|r| r.is_leader)) {
            while !lp.dirty.is_empty() {
                lp.run_pass();
            }
            return;
        }
    }
    panic!("groups {ids:?} did not elect a leader");
}

fn propose(
    lp: &mut RaftLoop<TestStateMachine, NoNetwork>,
    group_id: u64,
    cmd: TestCommand,
    deadline: Instant,
) -> oneshot::Receiver<Result<Timed<TestResponse>>> {
    let (tx, rx) = oneshot::channel();
    lp.handle(LoopRequest::Propose { group_id, cmd, deadline, cb: tx });
    rx
}

fn put(key: &str) -> TestCommand {
    TestCommand { key: key.as_bytes().to_vec(), value: b"v".to_vec(), ..Default::default() }
}

fn status(lp: &mut RaftLoop<TestStateMachine, NoNetwork>, id: u64) -> ReplicaStatus<TestGroup> {
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::Status { group_ids: vec![id], cb: tx });
    rx.try_recv().unwrap().pop().expect("a status")
}

#[test]
fn a_membership_change_raft_would_refuse_is_answered_refused_before_proposing() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, _) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, true).unwrap();
    elect(&mut lp, &[1]);
    // Demoting the only voter to a learner leaves no voter at all.
    let change = MemberChange {
        kind: MemberChangeKind::AddLearner,
        member: Member { replica_id: 10, node_id: 1, role: MemberRole::Learner as i32 },
    };
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::ChangeMembers {
        group_id: 1,
        expect: None,
        changes: vec![change],
        deadline: later(),
        cb: tx,
    });
    match rx.try_recv().unwrap() {
        Err(Error::ConfChangeRefused(reason)) => assert!(reason.contains("voter"), "{reason}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(lp.replicas[&1].raw.raft.raft_log.last_index(), lp.replicas[&1].raw.raft.raft_log.committed);
}

#[test]
fn a_committed_membership_change_raft_refuses_is_a_no_op_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, _) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, true).unwrap();
    create(&mut lp, single_voter(2), 20, true).unwrap();
    elect(&mut lp, &[1, 2]);
    // Bypass the check at proposal time, as an entry written by an older
    // version (or a race between two changes) would.
    let mut single = raft::prelude::ConfChangeSingle::default();
    single.set_change_type(raft::prelude::ConfChangeType::RemoveNode);
    single.node_id = 10;
    let mut cc = raft::prelude::ConfChangeV2::default();
    cc.set_changes(vec![single].into());
    lp.replicas.get_mut(&1).unwrap().raw.propose_conf_change(vec![], cc).unwrap();
    lp.dirty.insert(1);
    lp.run_pass();
    let r = &lp.replicas[&1];
    assert_eq!(r.raw.store().applied_index(), r.raw.raft.raft_log.committed, "the entry applied");
    assert_eq!(r.raw.store().conf_state().voters, vec![10], "and changed nothing");
    assert!(!r.removed);
    // The group, and its neighbour, still take writes.
    for id in [1, 2] {
        let mut rx = propose(&mut lp, id, put("k"), later());
        lp.run_pass();
        assert!(matches!(rx.try_recv().unwrap().map(|t| t.value), Ok(TestResponse::Applied(None))));
    }
}

#[test]
fn a_removed_replica_leaves_a_tombstone_that_refuses_late_creates() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, _) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, true).unwrap();
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::RemoveReplica { group_id: 1, cb: tx });
    rx.try_recv().unwrap().unwrap();
    // Until the worker has deleted the state, the group is reserved.
    assert!(matches!(create(&mut lp, single_voter(1), 11, false), Err(Error::Retryable(_))));
    let done = lp.internal.recv_timeout(Duration::from_secs(10)).expect("the deletion reports back");
    lp.handle(done);
    let late = create(&mut lp, single_voter(1), 10, true);
    assert!(matches!(late, Err(Error::InvalidArgument { .. })), "a late create of the removed replica: {late:?}");
    // The tombstone is on disk: it survives a restart.
    drop(lp);
    let (mut lp, _) = new_loop(dir.path());
    assert!(matches!(create(&mut lp, single_voter(1), 10, true), Err(Error::InvalidArgument { .. })));
    // A new incarnation (a newer replica id) may be created.
    let mut g = single_voter(1);
    g.members[0].replica_id = 12;
    create(&mut lp, g, 12, true).unwrap();
}

#[test]
fn messages_for_another_incarnation_of_a_replica_are_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, metrics) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, true).unwrap();
    let before = metrics.raft_messages_dropped.get();
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    m.from = 99;
    m.to = 9; // an older replica of the group on this node
    m.term = 100;
    lp.handle(LoopRequest::Raft { group_id: 1, from_node: 2, msg: Box::new(m) });
    assert_eq!(metrics.raft_messages_dropped.get(), before + 1);
    assert_eq!(lp.replicas[&1].raw.raft.term, crate::storage::INIT_TERM, "the term did not move");
}

#[test]
fn a_snapshot_without_a_descriptor_or_for_another_group_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, metrics) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, false).unwrap();
    for group in [Vec::new(), Group::encode(&single_voter(2))] {
        let data = ringkv_proto::engine::SnapshotData { group, file_size: 1, file_checksum: 1 };
        let mut m = raft::prelude::Message::default();
        m.set_msg_type(raft::prelude::MessageType::MsgSnapshot);
        m.from = 20;
        m.to = 10;
        m.term = 7;
        let snap = m.mut_snapshot();
        snap.mut_metadata().index = 100;
        snap.mut_metadata().term = 7;
        snap.mut_metadata().mut_conf_state().voters = vec![20];
        snap.data = prost::Message::encode_to_vec(&data).into();
        lp.handle(LoopRequest::Raft { group_id: 1, from_node: 2, msg: Box::new(m) });
    }
    assert_eq!(metrics.snapshots.with_label_values(&["refused"]).get(), 2);
    lp.run_pass();
    let r = &lp.replicas[&1];
    assert_eq!(r.raw.store().applied_index(), 0, "nothing installed");
    assert_eq!(r.lifecycle, replica::Lifecycle::Normal);
}

#[test]
fn a_replica_whose_apply_fails_is_fenced_off_and_the_node_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, metrics) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, true).unwrap();
    create(&mut lp, single_voter(2), 20, true).unwrap();
    elect(&mut lp, &[1, 2]);
    let mut ok = propose(&mut lp, 1, put("a"), later());
    let mut bad = propose(&mut lp, 1, TestCommand { fail: true, ..put("b") }, later());
    let mut other = propose(&mut lp, 2, put("c"), later());
    lp.run_pass();
    assert!(
        matches!(other.try_recv().unwrap().map(|t| t.value), Ok(TestResponse::Applied(None))),
        "the other group applied"
    );
    assert!(matches!(ok.try_recv().unwrap(), Err(Error::Ambiguous(_))), "its pass was not written");
    assert!(matches!(bad.try_recv().unwrap(), Err(Error::Ambiguous(_))));
    assert_eq!(metrics.replicas_failed.get(), 1);
    match status(&mut lp, 1).condition {
        ReplicaCondition::Failed(reason) => assert!(reason.contains("apply"), "{reason}"),
        c => panic!("replica 1 is {c:?}"),
    }
    let mut rx = propose(&mut lp, 1, put("d"), later());
    assert!(matches!(rx.try_recv().unwrap(), Err(Error::ReplicaFailed { group_id: 1, .. })));
    let mut rx = propose(&mut lp, 2, put("e"), later());
    lp.run_pass();
    assert!(rx.try_recv().unwrap().is_ok());
}

#[test]
fn a_replica_that_cannot_open_is_fenced_off_and_the_others_start() {
    let dir = tempfile::tempdir().unwrap();
    {
        let (mut lp, _) = new_loop(dir.path());
        create(&mut lp, single_voter(1), 10, true).unwrap();
        create(&mut lp, single_voter(2), 20, true).unwrap();
        // Group 1's hard state is garbage on disk.
        let mut wb = rocksdb::WriteBatch::default();
        lp.engine.put_cf(&mut wb, crate::Cf::Raft, &crate::keys::raft_hard_state_key(1), b"\xff\xff garbage");
        lp.engine.write(wb, true).unwrap();
    }
    let (mut lp, metrics) = new_loop(dir.path());
    assert_eq!(metrics.replicas_failed.get(), 1);
    assert!(matches!(status(&mut lp, 1).condition, ReplicaCondition::Failed(_)));
    elect(&mut lp, &[2]);
    // Removing the failed replica clears it.
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::RemoveReplica { group_id: 1, cb: tx });
    rx.try_recv().unwrap().unwrap();
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::Status { group_ids: vec![1], cb: tx });
    assert!(rx.try_recv().unwrap().is_empty());
}

/// Group 1 with voters 10 (here) and 11 (on a node that never answers),
/// replica 10 made leader: nothing it proposes can commit.
fn lead_two_voter_group_alone(lp: &mut RaftLoop<TestStateMachine, NoNetwork>) {
    let mut g = single_voter(1);
    g.members.push(Member { replica_id: 11, node_id: 2, role: MemberRole::Voter as i32 });
    create(lp, g, 10, true).unwrap();
    let r = lp.replicas.get_mut(&1).unwrap();
    r.raw.raft.become_candidate();
    r.raw.raft.become_leader();
    lp.run_pass();
}

#[test]
fn a_proposal_that_cannot_commit_is_answered_ambiguous_at_its_deadline() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, _) = new_loop(dir.path());
    lead_two_voter_group_alone(&mut lp);
    // A deadline that has passed by the next tick: deadlines are checked
    // on ticks, the pass itself only persists and sends.
    let mut rx = propose(&mut lp, 1, put("k"), Instant::now());
    lp.run_pass();
    assert!(rx.try_recv().is_err(), "still waiting");
    lp.tick();
    assert!(matches!(rx.try_recv().unwrap(), Err(Error::Ambiguous(_))));
}

#[test]
fn a_leader_that_steps_down_answers_its_proposals_ambiguous_and_its_reads_retryable() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, _) = new_loop(dir.path());
    lead_two_voter_group_alone(&mut lp);
    assert!(lp.replicas[&1].is_leader);
    let mut write = propose(&mut lp, 1, put("k"), later());
    let (tx, mut read) = oneshot::channel();
    lp.handle(LoopRequest::Read { group_id: 1, mode: ReadMode::Leader, deadline: later(), cb: tx });
    lp.run_pass();
    // A higher term from the other voter deposes it.
    let mut m = raft::prelude::Message::default();
    m.set_msg_type(raft::prelude::MessageType::MsgHeartbeat);
    m.from = 11;
    m.to = 10;
    m.term = 100;
    lp.handle(LoopRequest::Raft { group_id: 1, from_node: 2, msg: Box::new(m) });
    lp.run_pass();
    assert!(matches!(write.try_recv().unwrap(), Err(Error::Ambiguous(_))));
    assert!(matches!(
        read.try_recv().unwrap(),
        Err(Error::NotLeader { leader: Some(Member { replica_id: 11, .. }), .. })
    ));
}

#[test]
fn a_full_inbox_answers_busy_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let raft = RaftConfig { inbox_capacity: 2, ..Default::default() };
    let cfg = LoopConfig { node_id: 1, snapshot_dir: dir.path().join("snap"), raft };
    let metrics = Arc::new(RaftMetrics::new(1));
    let (_lp, h) = RaftLoop::new(cfg, engine, NoNetwork, metrics, TestStateMachine::default).unwrap();
    let req = || {
        let (tx, _rx) = oneshot::channel();
        LoopRequest::Propose { group_id: 1, cmd: put("k"), deadline: later(), cb: tx }
    };
    h.try_send(req()).unwrap();
    h.try_send(req()).unwrap();
    assert!(matches!(h.try_send(req()), Err(Error::Busy(_))));
    // Reports of the loop's own work are never refused.
    h.send_internal(LoopRequest::SnapshotGenerated { group_id: 1 }).unwrap();
}

/// Log compaction must not livelock a group whose follower is receiving a
/// snapshot: the leader keeps the entries that follower continues from.
#[test]
fn the_leader_keeps_the_log_a_follower_receiving_a_snapshot_will_need() {
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let raft = RaftConfig { compact_log_entries: 10, ..Default::default() };
    let cfg = LoopConfig { node_id: 1, snapshot_dir: dir.path().join("snap"), raft };
    let (mut lp, _h) =
        RaftLoop::new(cfg, engine, NoNetwork, Arc::new(RaftMetrics::new(1)), TestStateMachine::default).unwrap();
    // Voter 10 here (it commits alone), learner 11 on a node that never answers.
    create(&mut lp, single_voter(1), 10, true).unwrap();
    elect(&mut lp, &[1]);
    let learner = MemberChange {
        kind: MemberChangeKind::AddLearner,
        member: Member { replica_id: 11, node_id: 2, role: MemberRole::Learner as i32 },
    };
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::ChangeMembers {
        group_id: 1,
        expect: None,
        changes: vec![learner],
        deadline: later(),
        cb: tx,
    });
    lp.run_pass();
    assert!(rx.try_recv().unwrap().is_ok(), "learner added");
    let snapshot_at = lp.replicas[&1].raw.raft.raft_log.last_index();
    lp.replicas.get_mut(&1).unwrap().raw.raft.mut_prs().get_mut(11).unwrap().become_snapshot(snapshot_at);
    for i in 0..40 {
        let mut rx = propose(&mut lp, 1, put(&format!("k{i}")), later());
        lp.run_pass();
        assert!(rx.try_recv().unwrap().is_ok());
    }
    let store = lp.replicas[&1].raw.store();
    assert!(store.applied_index() > snapshot_at + 30, "entries applied past the compaction threshold");
    assert!(
        store.truncated_index() <= snapshot_at,
        "truncated to {} although the learner continues from {snapshot_at}",
        store.truncated_index()
    );
    // Once the learner is back to replicating, compaction resumes.
    lp.replicas.get_mut(&1).unwrap().raw.raft.mut_prs().get_mut(11).unwrap().become_probe();
    let mut rx = propose(&mut lp, 1, put("last"), later());
    lp.run_pass();
    assert!(rx.try_recv().unwrap().is_ok());
    assert!(lp.replicas[&1].raw.store().truncated_index() > snapshot_at, "compaction goes on");
}

/// A proposal's answer says when the loop accepted it, saw it committed and
/// applied it, in that order, and the engine's histograms saw it; so does a
/// linearizable read's (accepted, index confirmed, ready).
#[test]
fn answers_carry_their_timings_in_order_and_the_histograms_count_them() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lp, metrics) = new_loop(dir.path());
    create(&mut lp, single_voter(1), 10, true).unwrap();
    elect(&mut lp, &[1]);
    let (pc, ca) =
        (metrics.propose_commit_duration.get_sample_count(), metrics.commit_apply_duration.get_sample_count());
    let before = Instant::now();
    let mut rx = propose(&mut lp, 1, put("k"), later());
    lp.run_pass();
    let after = Instant::now();
    let answer = rx.try_recv().expect("answered in the same pass").expect("applied");
    assert_eq!(answer.value, TestResponse::Applied(None));
    let t = answer.timings;
    let committed = t.committed.expect("a proposal has a commit step");
    assert!(before <= t.accepted && t.accepted <= committed && committed <= t.done && t.done <= after, "{t:?}");
    assert_eq!(t.to_commit() + t.to_done(), t.done - t.accepted);
    assert_eq!(metrics.propose_commit_duration.get_sample_count(), pc + 1);
    assert_eq!(metrics.commit_apply_duration.get_sample_count(), ca + 1);

    let reads = metrics.read_index_duration.get_sample_count();
    let (tx, mut read) = oneshot::channel();
    lp.handle(LoopRequest::Read { group_id: 1, mode: ReadMode::Leader, deadline: later(), cb: tx });
    // A single voter confirms its read index without a round trip; a few
    // passes leave room for raft-rs to hand it over in a later Ready.
    for _ in 0..3 {
        lp.run_pass();
    }
    let t = read.try_recv().expect("a single voter confirms its read index at once").expect("readable").timings;
    let confirmed = t.committed.expect("a linearizable read has a confirmation step");
    assert!(t.accepted <= confirmed && confirmed <= t.done, "{t:?}");
    assert_eq!(metrics.read_index_duration.get_sample_count(), reads + 1);

    let (tx, mut local) = oneshot::channel();
    lp.handle(LoopRequest::Read { group_id: 1, mode: ReadMode::Local, deadline: later(), cb: tx });
    let t = local.try_recv().expect("a local read is answered at once").expect("readable").timings;
    assert_eq!((t.committed, t.done), (None, t.accepted), "a local read has no confirmation step");
}

/// Records what the loop sends, with how many apply writes it had made by then.
struct Recording {
    metrics: Arc<RaftMetrics>,
    sent: std::sync::Mutex<Vec<(raft::prelude::MessageType, u64)>>,
}

impl Transport for Arc<Recording> {
    fn send(&self, _: u64, batch: Vec<RaftMessage>) -> bool {
        let applies = self.metrics.apply_writes.get();
        let mut sent = self.sent.lock().unwrap();
        for m in batch {
            let msg = <raft::prelude::Message as protobuf::Message>::parse_from_bytes(&m.message).unwrap();
            sent.push((msg.get_msg_type(), applies));
        }
        true
    }
    fn send_snapshot(&self, _: u64, _: u64, _: RaftMessage, _: PathBuf) {}
    fn address(&self, _: u64) -> Option<String> {
        None
    }
}

/// A follower acknowledges the entries a pass persisted before it applies
/// the ones that pass found committed: the leader's commit waits on the
/// follower's fsync, not on its apply.
#[test]
fn a_follower_acknowledges_before_it_applies() {
    use raft::prelude::{Entry, Message as RaftMsg, MessageType};
    let dir = tempfile::tempdir().unwrap();
    let engine = Engine::open(&dir.path().join("db")).unwrap();
    let metrics = Arc::new(RaftMetrics::new(2));
    let net = Arc::new(Recording { metrics: metrics.clone(), sent: Default::default() });
    let cfg = LoopConfig { node_id: 2, snapshot_dir: dir.path().join("snap"), raft: RaftConfig::default() };
    let (mut lp, _h) = RaftLoop::new(cfg, engine, net.clone(), metrics.clone(), TestStateMachine::default).unwrap();
    let members = (1..=3).map(|n| Member { replica_id: n * 10, node_id: n, role: MemberRole::Voter as i32 }).collect();
    let group = TestGroup { id: 1, members, conf_ver: 1, version: 1, ..Default::default() };
    let (tx, mut rx) = oneshot::channel();
    lp.handle(LoopRequest::CreateReplica { group, replica_id: 20, bootstrap: true, campaign: false, cb: tx });
    rx.try_recv().unwrap().unwrap();
    lp.run_pass();

    // The leader (replica 10, term 6) appends entries 6 and 7 and has
    // committed 6: this one pass persists both and applies 6.
    let entry = |index| {
        let cmd = TestCommand { key: format!("k{index}").into_bytes(), value: b"v".to_vec(), ..Default::default() };
        Entry { index, term: 6, data: prost::Message::encode_to_vec(&cmd).into(), ..Default::default() }
    };
    let msg = RaftMsg {
        msg_type: MessageType::MsgAppend,
        from: 10,
        to: 20,
        term: 6,
        log_term: 5,
        index: 5,
        entries: vec![entry(6), entry(7)].into(),
        commit: 6,
        ..Default::default()
    };
    lp.handle(LoopRequest::Raft { group_id: 1, from_node: 1, msg: Box::new(msg) });
    let applies_before = metrics.apply_writes.get();
    net.sent.lock().unwrap().clear();
    lp.run_pass();

    assert_eq!(metrics.apply_writes.get(), applies_before + 1, "the pass applied entry 6");
    assert_eq!(lp.replicas[&1].raw.store().applied_index(), 6);
    let sent = net.sent.lock().unwrap().clone();
    let acks: Vec<_> = sent.iter().filter(|(t, _)| *t == MessageType::MsgAppendResponse).collect();
    assert!(!acks.is_empty(), "the follower acknowledged the append: {sent:?}");
    assert!(
        acks.iter().all(|(_, applies)| *applies == applies_before),
        "every acknowledgement left before the apply write: {sent:?}"
    );
}
