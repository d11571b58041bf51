//! `ringkv chaos`: one fault-injection run (see the `ringkv-chaos` crate).
//! Must run as root inside a network namespace made for it, e.g.
//! `ip netns add rk && ip netns exec rk ip link set lo up && ip netns exec rk ringkv chaos`
//! (`scripts/chaos.sh` does exactly that). Exits 3 when an anomaly or a lost
//! acknowledged write was found, 4 when some key's history could not be
//! checked within its time budget.
//!
//! `ringkv chaos check FILE` re-checks a recorded `history.jsonl` on its own
//! (no cluster, no root) with the same checkers and the same exit codes; a
//! file that cannot be read as a history is an error naming the line (exit 1).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use ringkv_chaos::history::{self, History, HistoryError, EXIT_ANOMALY, EXIT_UNDECIDED};
use ringkv_chaos::nemesis::{Kind, ALL};
use ringkv_chaos::run::{run, Options, KEY_BUDGET};

/// `ringkv chaos [flags]` runs; `ringkv chaos check FILE` only checks.
#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct Args {
    #[command(subcommand)]
    command: Option<ChaosCmd>,
    #[command(flatten)]
    run: RunArgs,
}

impl Args {
    /// A run starts servers (and logs like one); a check does not.
    pub fn is_run(&self) -> bool {
        self.command.is_none()
    }
}

#[derive(clap::Subcommand)]
enum ChaosCmd {
    /// Check a recorded history (history.jsonl) without a cluster: exit 0
    /// clean, 3 anomaly or lost write, 4 a key not checked in its budget.
    Check(CheckArgs),
}

#[derive(clap::Args)]
struct CheckArgs {
    /// The history file: one JSON object per line (docs/fault-injection.md).
    path: PathBuf,
    /// Time budget of the linearizability search per register key: seconds,
    /// or with a unit (90s, 30m, 1h). A key not decided in time exits 4.
    #[arg(long, value_parser = parse_duration)]
    key_budget: Option<Duration>,
}

#[derive(clap::Args)]
struct RunArgs {
    /// How long the clients and faults run: seconds, or with a unit (90s, 30m, 1h).
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    duration: Duration,
    /// Seed of the fault schedule and the clients (default: random, printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Concurrent client workers.
    #[arg(long, default_value_t = 16)]
    workers: usize,
    /// Fault kinds, comma-separated: kill, pause, isolate, halves, bridge,
    /// one-way, kill-shard-leader, move-replica, decommission,
    /// add-storenode, transfer-leader (default: all, mixed).
    #[arg(long, value_delimiter = ',')]
    nemesis: Vec<String>,
    #[arg(long, default_value_t = 8)]
    shards: u64,
    /// Where the cluster's data, logs, history and summary go.
    #[arg(long, default_value = "ringkv-data/chaos")]
    out: PathBuf,
    /// Turn on the storenode's deliberate stale-read bug (to see the checker catch it).
    #[arg(long)]
    unsafe_local_reads: bool,
}

pub async fn run_cmd(a: Args) -> anyhow::Result<()> {
    match a.command {
        Some(ChaosCmd::Check(c)) => check_cmd(c).await,
        None => run_chaos(a.run).await,
    }
}

/// Reads and checks a history file; exits with the run's codes on a finding.
async fn check_cmd(c: CheckArgs) -> anyhow::Result<()> {
    let budget = c.key_budget.unwrap_or(KEY_BUDGET);
    if budget.is_zero() {
        bail!("--key-budget must be positive");
    }
    let path = c.path;
    // Reading and the search are CPU-bound: off the async runtime.
    let (h, report) = tokio::task::spawn_blocking(move || {
        let h = History::read_file(&path).map_err(|e| match e {
            // Already names the file.
            HistoryError::Io { .. } => anyhow::anyhow!("{e}"),
            _ => anyhow::anyhow!("{}: {e}", path.display()),
        })?;
        if h.registers.is_empty() && h.sets.is_empty() {
            // Trivially clean, and most likely not the file that was meant.
            bail!("{}: holds no operation: nothing to check", path.display());
        }
        let report = history::check(&h, budget);
        anyhow::Ok((h, report))
    })
    .await??;
    println!("chaos check: {} register operations, {} set additions", h.registers.len(), h.sets.len());
    print!("{}", report.render(&h));
    match report.exit_code() {
        0 => Ok(()),
        code => {
            if code == EXIT_ANOMALY {
                eprintln!("error: {} anomalies, {} acknowledged writes lost", report.anomalies(), report.lost());
            } else {
                eprintln!(
                    "error: {} register keys could not be checked in time: nothing proven for them (raise --key-budget)",
                    report.registers.undecided.len()
                );
            }
            std::process::exit(code);
        }
    }
}

async fn run_chaos(a: RunArgs) -> anyhow::Result<()> {
    let kinds = if a.nemesis.is_empty() {
        ALL.to_vec()
    } else {
        a.nemesis
            .iter()
            .map(|n| Kind::parse(n).ok_or_else(|| anyhow::anyhow!("--nemesis {n:?}: unknown fault kind")))
            .collect::<anyhow::Result<Vec<_>>>()?
    };
    if a.duration < Duration::from_secs(10) || a.workers == 0 || a.shards == 0 {
        bail!("--duration must be at least 10s, --workers and --shards at least 1");
    }
    let seed = a.seed.unwrap_or_else(rand::random);
    let opts = Options {
        ringkv: std::env::current_exe()?,
        out: a.out,
        duration: a.duration,
        seed,
        workers: a.workers,
        kinds,
        shards: a.shards,
        unsafe_local_reads: a.unsafe_local_reads,
    };
    let s = run(opts).await?;
    if s.anomalies > 0 || s.acknowledged_writes_lost > 0 {
        eprintln!(
            "error: {} anomalies, {} acknowledged writes lost (seed {seed})",
            s.anomalies, s.acknowledged_writes_lost
        );
        std::process::exit(EXIT_ANOMALY);
    }
    if s.undecided_keys > 0 {
        eprintln!(
            "error: {} register keys could not be checked in time: nothing proven for them (seed {seed})",
            s.undecided_keys
        );
        std::process::exit(EXIT_UNDECIDED);
    }
    Ok(())
}

/// `90`, `90s`, `30m` or `1h`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.trim().split_at(s.trim().find(|c: char| !c.is_ascii_digit()).unwrap_or(s.trim().len()));
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number with an optional unit (s, m, h)"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n.saturating_mul(60),
        "h" => n.saturating_mul(3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?} (use s, m or h)")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("75"), Ok(Duration::from_secs(75)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5d").is_err());
        assert!(parse_duration("m").is_err());
    }
}
