//! The playground's Prometheus, as `tiup playground` starts one: when a
//! `prometheus` binary is on PATH, the playground runs it with the shipped
//! config and alert rules (deploy/prometheus/, embedded in this binary so
//! that it works from anywhere) scraping every process it started. The
//! targets are file_sd files under `DIR/prometheus/targets/`, rewritten
//! whenever playground.json changes (scale-out, scale-in): Prometheus picks
//! them up without a reload.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde_json::json;

use super::file::{ProcessInfo, Role};

/// deploy/prometheus/prometheus.yml: file_sd jobs, rules from alerts.yml.
const CONFIG: &str = include_str!("../../../../deploy/prometheus/prometheus.yml");
/// deploy/prometheus/alerts.yml.
const ALERTS: &str = include_str!("../../../../deploy/prometheus/alerts.yml");

/// Where the playground keeps Prometheus's config, targets and data.
pub fn dir(playground: &Path) -> PathBuf {
    playground.join("prometheus")
}

/// The `prometheus` binary on PATH, if any.
pub fn find_binary() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("prometheus")).find(|p| p.is_file())
}

/// Writes the config, the rules and the targets of `procs` under
/// `DIR/prometheus`; returns the config's path.
pub fn prepare(playground: &Path, procs: &[ProcessInfo]) -> anyhow::Result<PathBuf> {
    let d = dir(playground);
    std::fs::create_dir_all(d.join("targets")).with_context(|| format!("creating {}", d.display()))?;
    let config = d.join("prometheus.yml");
    std::fs::write(&config, CONFIG).with_context(|| format!("writing {}", config.display()))?;
    std::fs::write(d.join("alerts.yml"), ALERTS).context("writing alerts.yml")?;
    write_targets(playground, procs)?;
    Ok(config)
}

/// Rewrites the file_sd targets from `procs`, if this playground runs a
/// Prometheus. Each file is replaced by a rename, so Prometheus never reads
/// half of one.
pub fn write_targets(playground: &Path, procs: &[ProcessInfo]) -> anyhow::Result<()> {
    let d = dir(playground).join("targets");
    if !d.is_dir() {
        return Ok(());
    }
    for role in [Role::Storenode, Role::Placement, Role::Router] {
        let targets: Vec<&str> = procs.iter().filter(|p| p.role == role).map(|p| p.http.as_str()).collect();
        let body = json!([{ "targets": targets, "labels": { "playground": playground.display().to_string() } }]);
        let path = d.join(format!("{}.json", role.name()));
        let tmp = d.join(format!(".{}.json.tmp", role.name()));
        std::fs::write(&tmp, format!("{body:#}\n")).with_context(|| format!("writing {}", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

/// Prometheus's arguments: the config, its TSDB directory `tsdb` (two days
/// kept), the UI on `http` (loopback).
pub fn args(config: &Path, tsdb: &Path, http: &str) -> Vec<String> {
    vec![
        format!("--config.file={}", config.display()),
        format!("--storage.tsdb.path={}", tsdb.display()),
        "--storage.tsdb.retention.time=2d".into(),
        format!("--web.listen-address={http}"),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(role: Role, id: u64, http: &str) -> ProcessInfo {
        ProcessInfo {
            role,
            id,
            grpc: String::new(),
            http: http.into(),
            pid: 0,
            data_dir: PathBuf::new(),
            log: PathBuf::new(),
        }
    }

    #[test]
    fn targets_follow_the_processes_and_only_when_prometheus_runs() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let pg = tmp.path();
        let procs = vec![proc(Role::Storenode, 1, "127.0.0.1:1"), proc(Role::Router, 1, "127.0.0.1:3")];
        write_targets(pg, &procs).expect("no prometheus: nothing to do");
        assert!(!dir(pg).exists());
        let config = prepare(pg, &procs).expect("prepare");
        assert!(std::fs::read_to_string(config).expect("config").contains("file_sd_configs"));
        let more = [procs.clone(), vec![proc(Role::Storenode, 4, "127.0.0.1:4")]].concat();
        write_targets(pg, &more).expect("rewrite");
        let sd: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(dir(pg).join("targets/storenode.json")).expect("read"))
                .expect("json");
        assert_eq!(sd[0]["targets"], json!(["127.0.0.1:1", "127.0.0.1:4"]));
        let placement = std::fs::read_to_string(dir(pg).join("targets/placement.json")).expect("read");
        assert!(placement.contains("\"targets\": []"), "{placement}");
    }
}
