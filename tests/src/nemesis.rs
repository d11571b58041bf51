//! The fault schedule: generated up front from the seed, so the same seed
//! replays the same faults (kinds, targets, timings). Targets that depend on
//! the cluster's state at the time (the leader of a shard) are resolved when
//! the fault fires and logged.
//!
//! A run of [`ALONE_PHASE_MIN`] or longer with several kinds first uses each
//! kind alone, in one block apiece over a third of the run, then mixes them
//! at random. In the mixed part a network fault may get a companion process
//! fault (a kill or pause inside the partition), as Jepsen's composed
//! nemeses do. Invariant: at most one network fault and one process fault at
//! a time (healing a partition flushes every rule).

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;

use crate::cluster::{PLACEMENT, ROUTERS, STORENODES};

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
}

pub const ALL: [Kind; 7] =
    [Kind::Kill, Kind::Pause, Kind::Isolate, Kind::Halves, Kind::Bridge, Kind::OneWay, Kind::KillShardLeader];

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
            _ => return None,
        })
    }
}

/// One planned fault: start `at_ms` after the run starts, last `duration_ms`.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub at_ms: u64,
    pub kind: Kind,
    pub duration_ms: u64,
    /// Process indices (see `Cluster::procs`): the target(s), or one side.
    pub targets: Vec<usize>,
    /// For partitions: the other side; for shard-leader kills: the shard's index.
    pub other: Vec<usize>,
}

/// Indices into `Cluster::procs` by role.
pub fn placement_procs() -> Vec<usize> {
    (0..PLACEMENT).collect()
}

pub fn storenode_procs() -> Vec<usize> {
    (PLACEMENT..PLACEMENT + STORENODES).collect()
}

pub fn all_procs() -> Vec<usize> {
    (0..PLACEMENT + STORENODES + ROUTERS).collect()
}

impl Kind {
    /// Partitions (iptables) as opposed to faults of one process.
    pub fn is_network(self) -> bool {
        matches!(self, Kind::Isolate | Kind::Halves | Kind::Bridge | Kind::OneWay)
    }
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
    if duration_ms >= ALONE_PHASE_MIN && kinds.len() > 1 {
        let block = duration_ms / 3 / kinds.len() as u64;
        for (i, &kind) in kinds.iter().enumerate() {
            let block_end = 3_000 + block * (i as u64 + 1);
            while t + 6_000 < block_end {
                let f = fault(&mut rng, kind, t);
                t += f.duration_ms + rng.gen_range(1_000..4_000);
                out.push(f);
            }
        }
    }
    let process_kinds: Vec<Kind> = kinds.iter().copied().filter(|k| matches!(k, Kind::Kill | Kind::Pause)).collect();
    while t < end {
        let kind = kinds[rng.gen_range(0..kinds.len())];
        let main = fault(&mut rng, kind, t);
        t += main.duration_ms + rng.gen_range(1_000..4_000);
        // One network fault in three gets a process fault inside it.
        let companion = (main.kind.is_network() && !process_kinds.is_empty() && rng.gen_ratio(1, 3)).then(|| {
            let offset = rng.gen_range(0..main.duration_ms / 2);
            let kind = process_kinds[rng.gen_range(0..process_kinds.len())];
            let mut c = fault(&mut rng, kind, main.at_ms + offset);
            c.duration_ms = rng.gen_range(500..=main.duration_ms - offset);
            c
        });
        out.push(main);
        out.extend(companion);
    }
    out.sort_by_key(|f| f.at_ms);
    out
}

/// One fault of `kind` starting at `at_ms`, its targets drawn from `rng`.
fn fault(rng: &mut StdRng, kind: Kind, at_ms: u64) -> Fault {
    let duration_ms = rng.gen_range(1_500..6_000);
    let (targets, other) = match kind {
        Kind::Kill | Kind::Pause | Kind::Isolate | Kind::OneWay => {
            let all = all_procs();
            (vec![all[rng.gen_range(0..all.len())]], Vec::new())
        }
        Kind::Halves | Kind::Bridge => {
            // Shuffle placement and storenodes separately so each side has
            // a clear majority of both groups.
            let mut p = placement_procs();
            let mut s = storenode_procs();
            shuffle(rng, &mut p);
            shuffle(rng, &mut s);
            let minority: Vec<usize> = p[..1].iter().chain(&s[..2]).copied().collect();
            let majority: Vec<usize> = p[1..].iter().chain(&s[2..]).copied().collect();
            (minority, majority)
        }
        Kind::KillShardLeader => (Vec::new(), vec![rng.gen_range(0..64)]),
    };
    Fault { at_ms, kind, duration_ms, targets, other }
}

fn shuffle(rng: &mut StdRng, v: &mut [usize]) {
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

    /// Faults of one class (network, process) never overlap, and the run ends quietly.
    fn check_invariants(s: &[Fault], duration_ms: u64) {
        for network in [true, false] {
            let class: Vec<&Fault> = s.iter().filter(|f| f.kind.is_network() == network).collect();
            for w in class.windows(2) {
                assert!(w[0].at_ms + w[0].duration_ms <= w[1].at_ms, "{:?} overlaps {:?}", w[0], w[1]);
            }
        }
        let last_end = s.iter().map(|f| f.at_ms + f.duration_ms).max().unwrap();
        assert!(last_end + 2_000 <= duration_ms);
        for f in s.iter().filter(|f| f.kind == Kind::Halves) {
            assert_eq!(f.targets.len(), 3, "minority: 1 placement + 2 storenodes");
            assert_eq!(f.other.len(), 5, "majority: 2 placement + 3 storenodes");
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
