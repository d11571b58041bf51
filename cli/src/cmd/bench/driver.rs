//! The load loops. Closed loop: `clients` tasks, each sending its next
//! operation when the last one answers (throughput at a fixed concurrency).
//! Open loop: operations start on a fixed schedule whatever the answers do,
//! at most `clients` in flight, and each one's latency counts from when it
//! was due — so queueing shows in the percentiles instead of slowing the
//! load down (no coordinated omission).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;

use super::cpu::{delta, CpuProbe, CpuSample};
use super::target::Conn;
use super::workload::{KeyChooser, Workload};

/// One phase's load.
pub struct Load {
    /// The operation mix.
    pub workload: Workload,
    /// Which keys.
    pub keys: Arc<KeyChooser>,
    /// Bytes per value written.
    pub value_size: usize,
    /// Concurrent clients (closed loop), or the most operations in flight
    /// (open loop).
    pub clients: usize,
    /// How long the phase runs.
    pub duration: Duration,
    /// Operations per second for the open loop; `None` for a closed loop.
    pub rate: Option<f64>,
}

/// What one phase measured.
pub struct PhaseResult {
    /// Operations that succeeded.
    pub ops: u64,
    /// Operations that failed (their latency is not recorded).
    pub errors: u64,
    /// How long the phase took.
    pub elapsed: Duration,
    /// Latency of the successful operations, in microseconds.
    pub hist: Histogram<u64>,
    /// CPU seconds of each accounted process during the phase.
    pub cpu: CpuSample,
}

fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("constant bounds are valid")
}

/// Operations of a phase (or of one of its tasks) that succeeded and failed.
#[derive(Default)]
struct Tally {
    ops: u64,
    errors: u64,
}

/// Runs one phase against `conns` and measures it, CPU included.
pub async fn run(conns: &[Conn], load: &Load, probe: &CpuProbe) -> anyhow::Result<PhaseResult> {
    anyhow::ensure!(!conns.is_empty(), "no connection to the target");
    let cpu_before = probe.sample();
    let start = Instant::now();
    let (tally, hist) = match (load.workload, load.rate) {
        (Workload::Idle, _) => {
            tokio::time::sleep(load.duration).await;
            (Tally::default(), histogram())
        }
        (_, None) => closed(conns, load).await?,
        (_, Some(rate)) => open(conns, load, rate).await?,
    };
    let elapsed = start.elapsed();
    let cpu = delta(&cpu_before, &probe.sample());
    Ok(PhaseResult { ops: tally.ops, errors: tally.errors, elapsed, hist, cpu })
}

async fn closed(conns: &[Conn], load: &Load) -> anyhow::Result<(Tally, Histogram<u64>)> {
    let deadline = Instant::now() + load.duration;
    let mut tasks = Vec::new();
    for c in 0..load.clients {
        let mut conn = conns[c % conns.len()].clone();
        let (keys, workload, value) = (load.keys.clone(), load.workload, vec![b'v'; load.value_size]);
        tasks.push(tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(c as u64);
            let (mut hist, mut tally) = (histogram(), Tally::default());
            while Instant::now() < deadline {
                let (op, key) = (workload.next_op(&mut rng), keys.next_key(&mut rng));
                let t = Instant::now();
                if conn.run(op, &key, &value).await {
                    tally.ops += 1;
                    let _ = hist.record(t.elapsed().as_micros() as u64);
                } else {
                    tally.errors += 1;
                }
            }
            (tally, hist)
        }));
    }
    let (mut tally, mut hist) = (Tally::default(), histogram());
    for t in tasks {
        let (t, h) = t.await?;
        tally.ops += t.ops;
        tally.errors += t.errors;
        hist.add(&h)?;
    }
    Ok((tally, hist))
}

async fn open(conns: &[Conn], load: &Load, rate: f64) -> anyhow::Result<(Tally, Histogram<u64>)> {
    anyhow::ensure!(rate > 0.0 && rate.is_finite(), "--rate must be a positive number");
    let interval = Duration::from_secs_f64(1.0 / rate);
    // Exactly rate × duration operations, each due at its slot.
    let total = (rate * load.duration.as_secs_f64()).round() as u64;
    let slots = Arc::new(tokio::sync::Semaphore::new(load.clients));
    let shared = Arc::new(Mutex::new((Tally::default(), histogram())));
    let mut rng = rand::rngs::StdRng::seed_from_u64(0);
    let value: Arc<[u8]> = vec![b'v'; load.value_size].into();
    let start = tokio::time::Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let due = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(due).await;
        // Waiting for a slot is part of the operation's latency: it was due.
        let permit = slots.clone().acquire_owned().await?;
        let mut conn = conns[i as usize % conns.len()].clone();
        let (op, key) = (load.workload.next_op(&mut rng), load.keys.next_key(&mut rng));
        let (shared, value) = (shared.clone(), value.clone());
        tasks.spawn(async move {
            let ok = conn.run(op, &key, &value).await;
            let latency = due.elapsed().as_micros() as u64;
            drop(permit);
            let mut g = shared.lock().unwrap_or_else(|p| p.into_inner());
            if ok {
                g.0.ops += 1;
                let _ = g.1.record(latency);
            } else {
                g.0.errors += 1;
            }
        });
        // Reap finished tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
    }
    while tasks.join_next().await.is_some() {}
    let shared = Arc::try_unwrap(shared).map_err(|_| anyhow::anyhow!("tally still shared"))?;
    Ok(shared.into_inner().unwrap_or_else(|p| p.into_inner()))
}

impl PhaseResult {
    /// Operations per second.
    pub fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    /// A latency quantile.
    pub fn quantile(&self, q: f64) -> Duration {
        Duration::from_micros(self.hist.value_at_quantile(q))
    }

    /// Cores the accounted processes kept busy on average (CPU seconds per
    /// second), all of them together.
    pub fn cores(&self) -> f64 {
        self.cpu.values().sum::<f64>() / self.elapsed.as_secs_f64()
    }

    /// CPU microseconds per successful operation, all accounted processes.
    pub fn cpu_us_per_op(&self) -> Option<f64> {
        (!self.cpu.is_empty() && self.ops > 0).then(|| self.cpu.values().sum::<f64>() * 1e6 / self.ops as f64)
    }
}
