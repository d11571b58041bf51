//! What the bench asks for: the operation mix of each workload (plain puts
//! and gets, YCSB's A, B, C and F) and which keys, uniform or zipfian.

use rand::Rng;
use rand_distr::{Distribution, Zipf};

/// One workload: a mix of operations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Workload {
    /// Every operation a put.
    Put,
    /// Every operation a linearizable get.
    Get,
    /// YCSB A, update heavy: 50 % reads, 50 % updates.
    A,
    /// YCSB B, read mostly: 95 % reads, 5 % updates.
    B,
    /// YCSB C, read only.
    C,
    /// YCSB F: 50 % reads, 50 % read-modify-writes (a get, then a put of
    /// the same key, timed as one operation).
    F,
    /// No operations: what the servers cost while nothing happens (CPU per
    /// second instead of per operation).
    Idle,
}

impl Workload {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Workload::Put => "put",
            Workload::Get => "get",
            Workload::A => "ycsb-a",
            Workload::B => "ycsb-b",
            Workload::C => "ycsb-c",
            Workload::F => "ycsb-f",
            Workload::Idle => "idle",
        }
    }

    /// Draws the next operation of this workload.
    pub fn next_op(self, rng: &mut impl Rng) -> OpKind {
        let p: f64 = rng.gen();
        match self {
            Workload::Put => OpKind::Put,
            Workload::Get | Workload::C | Workload::Idle => OpKind::Get,
            Workload::A if p < 0.5 => OpKind::Get,
            Workload::A => OpKind::Put,
            Workload::B if p < 0.95 => OpKind::Get,
            Workload::B => OpKind::Put,
            Workload::F if p < 0.5 => OpKind::Get,
            Workload::F => OpKind::ReadModifyWrite,
        }
    }
}

/// One operation of a workload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A linearizable get.
    Get,
    /// A put (an update: the key space is the same for every workload).
    Put,
    /// A get, then a put of the same key.
    ReadModifyWrite,
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum KeyDist {
    /// Every key equally likely.
    Uniform,
    /// YCSB's scrambled zipfian (exponent 0.99): a few keys hot, spread
    /// over the key space (and so over shards) by a hash.
    Zipfian,
}

/// Draws keys (8-byte big-endian integers below `keys`).
pub struct KeyChooser {
    keys: u64,
    zipf: Option<Zipf<f64>>,
}

/// YCSB's zipfian constant.
const ZIPF_EXPONENT: f64 = 0.99;

impl KeyChooser {
    /// A chooser over `keys` keys (at least 1).
    pub fn new(keys: u64, dist: KeyDist) -> anyhow::Result<KeyChooser> {
        anyhow::ensure!(keys >= 1, "--keys must be positive");
        let zipf = match dist {
            KeyDist::Uniform => None,
            KeyDist::Zipfian => Some(Zipf::new(keys, ZIPF_EXPONENT).map_err(|e| anyhow::anyhow!("zipf: {e}"))?),
        };
        Ok(KeyChooser { keys, zipf })
    }

    /// The next key.
    pub fn next_key(&self, rng: &mut impl Rng) -> [u8; 8] {
        let k = match &self.zipf {
            // Rank 1 is the hottest; scramble ranks so that hot keys are not
            // neighbours (YCSB's ScrambledZipfianGenerator does the same).
            Some(z) => scramble(z.sample(rng) as u64 - 1) % self.keys,
            None => rng.gen_range(0..self.keys),
        };
        k.to_be_bytes()
    }
}

/// A bijective 64-bit mix (SplitMix64's finaliser).
fn scramble(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn mixes_follow_the_ycsb_proportions() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let count = |w: Workload, k: OpKind, rng: &mut rand::rngs::StdRng| {
            (0..20_000).filter(|_| w.next_op(rng) == k).count() as f64 / 20_000.0
        };
        assert_eq!(count(Workload::Put, OpKind::Put, &mut rng), 1.0);
        assert_eq!(count(Workload::C, OpKind::Get, &mut rng), 1.0);
        assert!((count(Workload::A, OpKind::Put, &mut rng) - 0.5).abs() < 0.02);
        assert!((count(Workload::B, OpKind::Put, &mut rng) - 0.05).abs() < 0.01);
        assert!((count(Workload::F, OpKind::ReadModifyWrite, &mut rng) - 0.5).abs() < 0.02);
    }

    #[test]
    fn zipfian_keys_are_skewed_and_in_range() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let c = KeyChooser::new(1000, KeyDist::Zipfian).unwrap();
        let mut hits = std::collections::HashMap::new();
        for _ in 0..50_000 {
            let k = u64::from_be_bytes(c.next_key(&mut rng));
            assert!(k < 1000);
            *hits.entry(k).or_insert(0u32) += 1;
        }
        let mut counts: Vec<u32> = hits.into_values().collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        // With exponent 0.99 over 1000 keys the hottest key takes ~13 % and
        // the top ten ~39 %; uniform keys would give 0.1 % and 1 %.
        let top10: u32 = counts.iter().take(10).sum();
        assert!(top10 > 15_000, "top ten keys got {top10} of 50000");
        let u = KeyChooser::new(1000, KeyDist::Uniform).unwrap();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..50_000 {
            seen.insert(u.next_key(&mut rng));
        }
        assert_eq!(seen.len(), 1000);
    }
}
