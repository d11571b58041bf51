//! The fault schedule: generated up front from the seed, so the same seed
//! replays the same faults (kinds, targets, timings). Targets that depend on
//! the cluster's state at the time (the leader of a shard, the storenodes
//! that are members, a shard's replicas) are resolved when the fault fires,
//! from numbers drawn here, and logged.
//!
//! Faults come in three classes: network (partitions), process (kills and
//! pauses) and membership (replica moves, decommissions, new storenodes,
//! leadership transfers, asked of placement and storenodes as an operator
//! would). A run of [`ALONE_PHASE_MIN`] or longer with several kinds first
//! uses each kind alone, in one block apiece over a third of the run, then
//! mixes them at random; a shorter run mixes from the start, its first
//! faults one of each class present so that even a short run sees every
//! class. In the mixed part a network fault may get a companion process
//! fault, and a membership fault a companion network or process fault,
//! inside it, as Jepsen's composed nemeses do. Invariant: at most one fault
//! of each class at a time (healing a partition flushes every rule; two
//! membership changes at once would undo each other's bookkeeping).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{PLACEMENT, ROUTERS, STORENODES, STORENODE_SLOTS};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Kind {
    /// kill -9 a random process of any role, restart it after the duration.
    Kill,
    /// SIGSTOP a process for the duration (longer than an election timeout).
    Pause,
    /// Cut one process off from every other.
    Isolate,
    /// Split storenodes and placement into a majority and a minority.
    Halves,
    /// Two halves and one node that sees both.
    Bridge,
    /// Drop packets one way only, from one process to the rest.
    OneWay,
    /// kill -9 the storenode leading a chosen shard.
    KillShardLeader,
    /// Ask placement to move a replica of a shard to a node without one.
    MoveReplica,
    /// Decommission a storenode; recommission it at the end unless it was
    /// removed, in which case a new storenode takes its place.
    Decommission,
    /// Start a new storenode (placement balances replicas onto it), then
    /// decommission one so that the cluster returns to its size.
    AddStorenode,
    /// Ask a shard's leader to hand leadership to another voter.
    TransferLeader,
    /// Split a shard by hand (placement's `SplitShard`) at a chosen hash.
    Split,
}

pub const ALL: [Kind; 12] = [
    Kind::Kill,
    Kind::Pause,
    Kind::Isolate,
    Kind::Halves,
    Kind::Bridge,
    Kind::OneWay,
    Kind::KillShardLeader,
    Kind::MoveReplica,
    Kind::Decommission,
    Kind::AddStorenode,
    Kind::TransferLeader,
    Kind::Split,
];

/// What a fault acts on; faults of one class never overlap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Class {
    /// iptables rules between processes.
    Network,
    /// Signals to one process.
    Process,
    /// Membership and leadership changes through the admin APIs.
    Membership,
}

impl Kind {
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "kill" => Kind::Kill,
            "pause" => Kind::Pause,
            "isolate" => Kind::Isolate,
            "halves" => Kind::Halves,
            "bridge" => Kind::Bridge,
            "one-way" => Kind::OneWay,
            "kill-shard-leader" => Kind::KillShardLeader,
            "move-replica" => Kind::MoveReplica,
            "decommission" => Kind::Decommission,
            "add-storenode" => Kind::AddStorenode,
            "transfer-leader" => Kind::TransferLeader,
            "split" => Kind::Split,
            _ => return None,
        })
    }

    pub fn class(self) -> Class {
        match self {
            Kind::Isolate | Kind::Halves | Kind::Bridge | Kind::OneWay => Class::Network,
            Kind::Kill | Kind::Pause | Kind::KillShardLeader => Class::Process,
            Kind::MoveReplica | Kind::Decommission | Kind::AddStorenode | Kind::TransferLeader | Kind::Split => {
                Class::Membership
            }
        }
    }

    /// Partitions (iptables) as opposed to faults of one process.
    pub fn is_network(self) -> bool {
        self.class() == Class::Network
    }

    /// Duration range (ms). Membership faults last longer: a replica move
    /// takes seconds (a learner, its snapshot, a joint change), and a
    /// decommission only ends in a removal when the node's every replica
    /// has moved off in time.
    fn durations(self) -> std::ops::Range<u64> {
        match self {
            Kind::MoveReplica => 4_000..15_000,
            Kind::Decommission => 6_000..20_000,
            Kind::AddStorenode => 10_000..25_000,
            _ => 1_500..6_000,
        }
    }
}

/// One process, as the schedule names it: storenodes by their rank among
/// the storenodes that are members when the fault fires (membership faults
/// change which ones those are).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub enum Target {
    /// Placement member `i` (0-based).
    Placement(usize),
    /// The `k`th storenode member in slot order (modulo their number).
    Storenode(usize),
    /// Router `i` (0-based).
    Router(usize),
}

/// One planned fault: start `at_ms` after the run starts, last `duration_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub at_ms: u64,
    pub kind: Kind,
    pub duration_ms: u64,
    /// The target(s), or for partitions the minority side.
    pub targets: Vec<Target>,
    /// For partitions: the majority side.
    pub other: Vec<Target>,
    /// Numbers that choose among what exists when the fault fires (shards,
    /// replicas, nodes, storenode members): choice `n` is `picks[n]`
    /// modulo the number of candidates, in a stable order.
    pub picks: Vec<u64>,
}

/// Every process as the schedule may name it.
pub fn all_targets() -> Vec<Target> {
    (0..PLACEMENT)
        .map(Target::Placement)
        .chain((0..STORENODES).map(Target::Storenode))
        .chain((0..ROUTERS).map(Target::Router))
        .collect()
}

/// Runs at least this long use each kind alone first.
pub const ALONE_PHASE_MIN: u64 = 10 * 60 * 1000;

/// Faults for a run of `duration_ms`, from `seed`, drawn from `kinds`,
/// sorted by start time.
pub fn schedule(seed: u64, duration_ms: u64, kinds: &[Kind]) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    if kinds.is_empty() {
        return out;
    }
    // Let the cluster serve a little before the first fault; end with a quiet tail.
    let mut t = 3_000u64;
    let end = duration_ms.saturating_sub(8_000);
    // Every fault ends by then (short faults started before `end` do anyway).
    let last_end = end + 6_000;
    if duration_ms >= ALONE_PHASE_MIN && kinds.len() > 1 {
        // The blocks fill the first third exactly; the mixed part starts
        // after the last block, whatever its faults' lengths.
        let block = (duration_ms / 3 - 3_000) / kinds.len() as u64;
        for (i, &kind) in kinds.iter().enumerate() {
            let block_end = 3_000 + block * (i as u64 + 1);
            while t + 6_000 < block_end {
                let f = fault(&mut rng, kind, t, block_end);
                t += f.duration_ms + rng.gen_range(1_000..4_000);
                out.push(f);
            }
        }
        t = t.max(duration_ms / 3);
    }
    let of_class = |c: Class| kinds.iter().copied().filter(|k| k.class() == c).collect::<Vec<Kind>>();
    let (process_kinds, network_kinds) = (of_class(Class::Process), of_class(Class::Network));
    let companions_of = |main: Kind| -> Vec<Kind> {
        match main.class() {
            Class::Network => process_kinds.clone(),
            Class::Membership => process_kinds.iter().chain(&network_kinds).copied().collect(),
            Class::Process => Vec::new(),
        }
    };
    // The first mixed faults: one of each class present, in a seeded order.
    let mut first: Vec<Class> =
        [Class::Network, Class::Process, Class::Membership].into_iter().filter(|&c| !of_class(c).is_empty()).collect();
    shuffle(&mut rng, &mut first);
    while t < end {
        let kind = match first.pop() {
            Some(c) => {
                let of = of_class(c);
                of[rng.gen_range(0..of.len())]
            }
            None => kinds[rng.gen_range(0..kinds.len())],
        };
        let main = fault(&mut rng, kind, t, last_end);
        t += main.duration_ms + rng.gen_range(1_000..4_000);
        // One network fault in three, and one membership fault in two, gets
        // a fault of another class inside it.
        let chances = if kind.is_network() { (1, 3) } else { (1, 2) };
        let inner = companions_of(kind);
        let companion = (!inner.is_empty() && rng.gen_ratio(chances.0, chances.1)).then(|| {
            let offset = rng.gen_range(0..main.duration_ms / 2);
            let kind = inner[rng.gen_range(0..inner.len())];
            let mut c = fault(&mut rng, kind, main.at_ms + offset, last_end);
            c.duration_ms = rng.gen_range(500..=(main.duration_ms - offset).min(6_000));
            c
        });
        out.push(main);
        out.extend(companion);
    }
    out.sort_by_key(|f| f.at_ms);
    out
}

/// One fault of `kind` starting at `at_ms` and over by `until_ms` (at
/// least 1.5 s long), its targets drawn from `rng`.
fn fault(rng: &mut StdRng, kind: Kind, at_ms: u64, until_ms: u64) -> Fault {
    let duration_ms = rng.gen_range(kind.durations()).min(until_ms.saturating_sub(at_ms)).max(1_500);
    let (mut targets, mut other, mut picks) = (Vec::new(), Vec::new(), Vec::new());
    match kind {
        Kind::Kill | Kind::Pause | Kind::Isolate | Kind::OneWay => {
            let all = all_targets();
            targets.push(all[rng.gen_range(0..all.len())]);
        }
        Kind::Halves | Kind::Bridge => {
            // Shuffle placement and storenodes separately so each side has
            // a clear majority of both groups. All storenode slots are
            // ranked: members beyond the first five (during membership
            // faults) join the sides in that order.
            let mut p: Vec<usize> = (0..PLACEMENT).collect();
            let mut s: Vec<usize> = (0..STORENODE_SLOTS).collect();
            shuffle(rng, &mut p);
            shuffle(rng, &mut s);
            let first_five: Vec<usize> = s.iter().copied().filter(|&k| k < STORENODES).collect();
            targets = vec![Target::Placement(p[0]), Target::Storenode(first_five[0]), Target::Storenode(first_five[1])];
            other = p[1..].iter().map(|&i| Target::Placement(i)).collect();
            other.extend(first_five[2..].iter().map(|&k| Target::Storenode(k)));
            picks = s.iter().map(|&k| k as u64).collect();
        }
        // Shard, then replica or node choices, resolved when it fires.
        Kind::KillShardLeader
        | Kind::MoveReplica
        | Kind::Decommission
        | Kind::AddStorenode
        | Kind::TransferLeader
        | Kind::Split => picks = (0..3).map(|_| rng.gen_range(0..1 << 16)).collect(),
    }
    Fault { at_ms, kind, duration_ms, targets, other, picks }
}

fn shuffle<T>(rng: &mut StdRng, v: &mut [T]) {
    for i in (1..v.len()).rev() {
        v.swap(i, rng.gen_range(0..=i));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_seed_gives_the_same_schedule() {
        let a = serde_json::to_string(&schedule(7, 120_000, &ALL)).unwrap();
        let b = serde_json::to_string(&schedule(7, 120_000, &ALL)).unwrap();
        let c = serde_json::to_string(&schedule(8, 120_000, &ALL)).unwrap();
        assert_eq!(a, b);
        assert_ne!(a, c);
    }

    /// Faults of one class never overlap, and the run ends quietly.
    fn check_invariants(s: &[Fault], duration_ms: u64) {
        for c in [Class::Network, Class::Process, Class::Membership] {
            let class: Vec<&Fault> = s.iter().filter(|f| f.kind.class() == c).collect();
            for w in class.windows(2) {
                assert!(w[0].at_ms + w[0].duration_ms <= w[1].at_ms, "{:?} overlaps {:?}", w[0], w[1]);
            }
        }
        let last_end = s.iter().map(|f| f.at_ms + f.duration_ms).max().unwrap();
        assert!(last_end + 2_000 <= duration_ms);
        for f in s.iter().filter(|f| f.kind == Kind::Halves) {
            assert_eq!(f.targets.len(), 3, "minority: 1 placement + 2 storenodes");
            assert_eq!(f.other.len(), 5, "majority: 2 placement + 3 storenodes");
            let mut ranks = f.picks.clone();
            ranks.sort_unstable();
            assert_eq!(ranks, (0..STORENODE_SLOTS as u64).collect::<Vec<_>>(), "every storenode slot ranked once");
        }
        for f in s {
            assert!(f.duration_ms >= 500, "{f:?}");
            if f.kind.class() == Class::Membership {
                assert_eq!(f.picks.len(), 3, "{f:?}");
            }
        }
    }

    #[test]
    fn every_short_run_sees_every_class_of_fault() {
        for seed in 0..200 {
            let s = schedule(seed, 75_000, &ALL);
            check_invariants(&s, 75_000);
            for c in [Class::Network, Class::Process, Class::Membership] {
                assert!(s.iter().any(|f| f.kind.class() == c), "seed {seed}: no {c:?} fault in {s:?}");
            }
        }
        // Only the classes asked for.
        let s = schedule(5, 75_000, &[Kind::Decommission, Kind::Kill]);
        assert!(s.iter().all(|f| matches!(f.kind, Kind::Decommission | Kind::Kill)), "{s:?}");
    }

    #[test]
    fn membership_faults_get_companions_of_other_classes_inside_them() {
        let s = schedule(11, 600_000 - 1, &ALL);
        check_invariants(&s, 600_000 - 1);
        let inside = |outer: &Fault, inner: &Fault| {
            outer.at_ms <= inner.at_ms && inner.at_ms + inner.duration_ms <= outer.at_ms + outer.duration_ms
        };
        let membership: Vec<&Fault> = s.iter().filter(|f| f.kind.class() == Class::Membership).collect();
        for c in [Class::Network, Class::Process] {
            assert!(
                membership.iter().any(|m| s.iter().any(|f| f.kind.class() == c && inside(m, f))),
                "some membership fault has a {c:?} fault inside it"
            );
        }
    }

    #[test]
    fn faults_do_not_overlap_and_leave_a_quiet_tail() {
        let s = schedule(1, 300_000, &ALL);
        assert!(s.len() > 10);
        check_invariants(&s, 300_000);
        assert!(s.iter().any(|f| !f.kind.is_network()) && s.iter().any(|f| f.kind.is_network()));
    }

    #[test]
    fn long_runs_use_each_kind_alone_then_mix_them() {
        let duration = 30 * 60 * 1000;
        let s = schedule(3, duration, &ALL);
        check_invariants(&s, duration);
        let third = duration / 3;
        let alone: Vec<Kind> = s.iter().filter(|f| f.at_ms < third).map(|f| f.kind).collect();
        // Blocks in the order given, each kind alone.
        let mut blocks = alone.clone();
        blocks.dedup();
        assert_eq!(blocks, ALL.to_vec());
        // The mixed part has network faults with a process fault inside.
        let mixed: Vec<&Fault> = s.iter().filter(|f| f.at_ms >= third + 10_000).collect();
        let inside = mixed.windows(2).any(|w| {
            w[0].kind.is_network()
                && !w[1].kind.is_network()
                && w[1].at_ms + w[1].duration_ms <= w[0].at_ms + w[0].duration_ms
        });
        assert!(inside, "some partition has a kill or pause inside it");
        // A single kind never gets an alone phase or companions.
        let only_kills = schedule(3, duration, &[Kind::Kill]);
        assert!(only_kills.iter().all(|f| f.kind == Kind::Kill));
        check_invariants(&only_kills, duration);
    }
}
