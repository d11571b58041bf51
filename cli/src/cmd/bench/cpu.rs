//! CPU seconds of the server processes, read from `/proc/PID/stat` (user +
//! system time of every thread) before and after each phase, so the bench
//! reports what an operation costs, not only how fast it went.

use std::collections::BTreeMap;

/// The processes whose CPU the bench accounts, each under a label (its role,
/// or its command name); processes with the same label are summed.
pub struct CpuProbe {
    procs: Vec<(String, u32)>,
    ticks_per_second: f64,
}

/// CPU seconds per label at one instant.
pub type CpuSample = BTreeMap<String, f64>;

impl CpuProbe {
    /// A probe of `procs` (label, pid). Fails when a pid is not readable now,
    /// so a typo is an error, not a zero.
    pub fn new(procs: Vec<(String, u32)>) -> anyhow::Result<CpuProbe> {
        // SAFETY: sysconf has no preconditions.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        anyhow::ensure!(ticks > 0, "sysconf(_SC_CLK_TCK) failed");
        let probe = CpuProbe { procs, ticks_per_second: ticks as f64 };
        for (label, pid) in &probe.procs {
            probe.seconds(*pid).map_err(|e| anyhow::anyhow!("process {pid} ({label}): {e}"))?;
        }
        Ok(probe)
    }

    /// CPU seconds so far, per label. A process that has exited counts as
    /// zero from then on (its share of the phase is then lost, not invented).
    pub fn sample(&self) -> CpuSample {
        let mut out = CpuSample::new();
        for (label, pid) in &self.procs {
            *out.entry(label.clone()).or_default() += self.seconds(*pid).unwrap_or(0.0);
        }
        out
    }

    fn seconds(&self, pid: u32) -> anyhow::Result<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        Ok(parse_stat_ticks(&stat)? as f64 / self.ticks_per_second)
    }
}

/// The label of `pid` when none is given: its command name.
pub fn comm(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| pid.to_string())
}

/// utime + stime (clock ticks) from the text of `/proc/PID/stat`. The command
/// name (field 2) may hold spaces and parentheses, so fields are counted
/// from the last `)`.
fn parse_stat_ticks(stat: &str) -> anyhow::Result<u64> {
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow::anyhow!("malformed stat"))?;
    // `rest` starts at field 3 (state); utime and stime are fields 14 and 15.
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = || -> anyhow::Result<u64> {
        fields
            .next()
            .ok_or_else(|| anyhow::anyhow!("short stat"))?
            .parse()
            .map_err(|_| anyhow::anyhow!("malformed stat"))
    };
    Ok(next()? + next()?)
}

/// CPU seconds spent per label between two samples.
pub fn delta(before: &CpuSample, after: &CpuSample) -> CpuSample {
    after.iter().map(|(k, v)| (k.clone(), (v - before.get(k).copied().unwrap_or(0.0)).max(0.0))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        let stat = "4242 (ring kv) x) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0 20 0 9 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat).unwrap(), 300);
        assert!(parse_stat_ticks("4242 (x) S 1 2").is_err());
        assert!(parse_stat_ticks("garbage").is_err());
    }

    #[test]
    fn this_process_is_measured() {
        let probe = CpuProbe::new(vec![("me".into(), std::process::id())]).unwrap();
        let before = probe.sample();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < std::time::Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        let d = delta(&before, &probe.sample());
        assert!(d["me"] > 0.0, "50 ms of spinning measured as {:?}", d);
        assert!(CpuProbe::new(vec![("gone".into(), u32::MAX)]).is_err());
    }
}
