//! Per-shard request load, for placement's load-based split: how many reads
//! and writes this node served for each shard, and a uniform sample of the
//! hashes they touched, whose median is where the load halves. The
//! heartbeat takes the tally every interval and reports it for the shards
//! this node leads.

use std::collections::HashMap;

use parking_lot::Mutex;

/// Hashes kept per shard and interval (a reservoir sample).
const SAMPLES: usize = 256;
/// Fewer samples than this give no split hash.
const MIN_SAMPLES: usize = 64;

#[derive(Default)]
struct Tally {
    reads: u64,
    writes: u64,
    seen: u64,
    samples: Vec<u64>,
}

/// One shard's load over an interval.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Load {
    /// Reads served.
    pub reads: u64,
    /// Writes served.
    pub writes: u64,
    /// The hash below which half the sampled requests fell; 0 when too few
    /// were sampled or they all touched one hash (a single hot key cannot be
    /// split apart).
    pub split_hash: u64,
}

/// The node's tally, shared by the kv service (writer) and the heartbeat.
#[derive(Default)]
pub struct ShardLoad {
    tallies: Mutex<HashMap<u64, Tally>>,
}

impl ShardLoad {
    /// Counts one request of `shard_id` touching hash `h`.
    pub fn record(&self, shard_id: u64, write: bool, h: u64) {
        let mut t = self.tallies.lock();
        let t = t.entry(shard_id).or_default();
        if write {
            t.writes += 1;
        } else {
            t.reads += 1;
        }
        t.seen += 1;
        if t.samples.len() < SAMPLES {
            t.samples.push(h);
        } else {
            // Reservoir sampling (Algorithm R), with a cheap deterministic
            // spread of the request count standing in for a random draw.
            let j = (t.seen.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 11) % t.seen;
            if (j as usize) < SAMPLES {
                t.samples[j as usize] = h;
            }
        }
    }

    /// The load since the last call, by shard; starts a new interval.
    pub fn take(&self) -> HashMap<u64, Load> {
        let tallies = std::mem::take(&mut *self.tallies.lock());
        tallies
            .into_iter()
            .map(|(id, mut t)| {
                t.samples.sort_unstable();
                let n = t.samples.len();
                let split_hash = if n < MIN_SAMPLES || t.samples[0] == t.samples[n - 1] {
                    0
                } else {
                    // The first hash past the lower half: the halves then
                    // hold the samples below it and the rest.
                    t.samples.iter().copied().find(|h| *h > t.samples[0] && *h >= t.samples[n / 2]).unwrap_or(0)
                };
                (id, Load { reads: t.reads, writes: t.writes, split_hash })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_is_counted_per_shard_and_halves_at_the_median_hash() {
        let l = ShardLoad::default();
        for i in 0..10_000u64 {
            l.record(1, i % 4 == 0, i * 1_000_000);
        }
        l.record(2, false, 5);
        let got = l.take();
        let one = got[&1];
        assert_eq!((one.reads, one.writes), (7500, 2500));
        let half = 5_000 * 1_000_000;
        assert!(one.split_hash > half * 8 / 10 && one.split_hash < half * 12 / 10, "{}", one.split_hash);
        assert_eq!(got[&2], Load { reads: 1, writes: 0, split_hash: 0 }, "too few samples");
        assert!(l.take().is_empty(), "a new interval");
    }

    #[test]
    fn one_hot_key_gives_no_split_hash() {
        let l = ShardLoad::default();
        for _ in 0..1000 {
            l.record(1, true, 42);
        }
        assert_eq!(l.take()[&1].split_hash, 0);
    }
}
