//! The fault schedule: generated up front from the seed, so the same seed
//! replays the same faults (kinds, targets, timings). Targets that depend on
//! the cluster's state at the time (the leader of a shard) are resolved when
//! the fault fires and logged.

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

/// Faults for a run of `duration_ms`, from `seed`, drawn from `kinds`.
pub fn schedule(seed: u64, duration_ms: u64, kinds: &[Kind]) -> Vec<Fault> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut out = Vec::new();
    // Let the cluster serve a little before the first fault; end with a quiet tail.
    let mut t = 3_000u64;
    while t + 8_000 < duration_ms && !kinds.is_empty() {
        let kind = kinds[rng.gen_range(0..kinds.len())];
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
                shuffle(&mut rng, &mut p);
                shuffle(&mut rng, &mut s);
                let minority: Vec<usize> = p[..1].iter().chain(&s[..2]).copied().collect();
                let majority: Vec<usize> = p[1..].iter().chain(&s[2..]).copied().collect();
                (minority, majority)
            }
            Kind::KillShardLeader => (Vec::new(), vec![rng.gen_range(0..64)]),
        };
        out.push(Fault { at_ms: t, kind, duration_ms, targets, other });
        t += duration_ms + rng.gen_range(1_000..4_000);
    }
    out
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

    #[test]
    fn faults_do_not_overlap_and_leave_a_quiet_tail() {
        let s = schedule(1, 300_000, &ALL);
        assert!(s.len() > 10);
        for w in s.windows(2) {
            assert!(w[0].at_ms + w[0].duration_ms < w[1].at_ms);
        }
        let last = s.last().unwrap();
        assert!(last.at_ms + last.duration_ms + 2_000 <= 300_000);
        for f in s.iter().filter(|f| f.kind == Kind::Halves) {
            assert_eq!(f.targets.len(), 3, "minority: 1 placement + 2 storenodes");
            assert_eq!(f.other.len(), 5, "majority: 2 placement + 3 storenodes");
        }
    }
}
