//! Where each process of a test cluster listens, and the `ringkv` arguments
//! that start it. One description serves every multi-process harness: the
//! fault-injection cluster (fixed loopback addresses in a namespace) and the
//! `cli/tests` clusters (free ports on 127.0.0.1).

use std::path::{Path, PathBuf};

/// Every address of a cluster: placement members, storenodes, routers.
pub struct Layout {
    /// Data directories go below this.
    pub dir: PathBuf,
    /// gRPC addresses of the placement members (ids 1, 2, ...).
    pub placement: Vec<String>,
    /// HTTP (metrics) addresses of the placement members, if served.
    pub placement_http: Vec<Option<String>>,
    /// (gRPC, HTTP) of each storenode (node ids 1, 2, ...).
    pub storenodes: Vec<(String, String)>,
    /// (gRPC, HTTP) of each router.
    pub routers: Vec<(String, String)>,
    pub shards: u64,
    /// Replicas per shard (placement's `--replication-factor`).
    pub replication_factor: usize,
    /// A router's default request deadline, if not its own default.
    pub router_timeout_ms: Option<u64>,
    /// More flags for every placement member and every storenode.
    pub placement_flags: Vec<String>,
    pub storenode_flags: Vec<String>,
}

/// Raft ticks of the test clusters: elections after 0.5-1 s.
const RAFT_TICK_MS: &str = "50";
/// A silent storenode is DOWN to placement after this many seconds.
const DOWN_AFTER_SECS: &str = "3";

fn flags(pairs: &[(&str, String)]) -> Vec<String> {
    pairs.iter().flat_map(|(f, v)| [f.to_string(), v.clone()]).collect()
}

impl Layout {
    /// Arguments of placement member `i` (0-based).
    pub fn placement_args(&self, i: usize) -> Vec<String> {
        let mut args = vec!["placement".to_string()];
        args.extend(flags(&[
            ("--id", (i + 1).to_string()),
            ("--listen", self.placement[i].clone()),
            ("--data-dir", self.dir.join(format!("placement-{}", i + 1)).display().to_string()),
            ("--initial-shards", self.shards.to_string()),
            ("--replication-factor", self.replication_factor.to_string()),
            ("--raft-tick-ms", RAFT_TICK_MS.into()),
            ("--down-after-secs", DOWN_AFTER_SECS.into()),
        ]));
        if let Some(Some(http)) = self.placement_http.get(i) {
            args.extend(flags(&[("--http", http.clone())]));
        }
        for (m, addr) in self.placement.iter().enumerate() {
            args.extend(flags(&[("--member", format!("{}={addr}", m + 1))]));
        }
        args.extend(self.placement_flags.iter().cloned());
        args
    }

    /// Arguments of storenode `i` (0-based), node id `i + 1`.
    pub fn storenode_args(&self, i: usize) -> Vec<String> {
        let (grpc, http) = &self.storenodes[i];
        let data_dir = self.dir.join(format!("storenode-{}", i + 1));
        let mut args = vec!["storenode".to_string()];
        args.extend(flags(&[("--node-id", (i + 1).to_string())]));
        args.extend(self.storenode_common_args(grpc, http, &data_dir));
        args
    }

    /// Arguments of a storenode that joins later, at `grpc`/`http` with a
    /// new `data_dir`: no `--node-id`, so placement allocates one (kept in
    /// the data dir, so that a restart keeps it).
    pub fn new_storenode_args(&self, grpc: &str, http: &str, data_dir: &Path) -> Vec<String> {
        let mut args = vec!["storenode".to_string()];
        args.extend(self.storenode_common_args(grpc, http, data_dir));
        args
    }

    fn storenode_common_args(&self, grpc: &str, http: &str, data_dir: &Path) -> Vec<String> {
        let mut args = flags(&[
            ("--listen", grpc.to_string()),
            ("--http", http.to_string()),
            ("--data-dir", data_dir.display().to_string()),
            ("--raft-tick-ms", RAFT_TICK_MS.into()),
        ]);
        for p in &self.placement {
            args.extend(flags(&[("--placement", p.clone())]));
        }
        args.extend(self.storenode_flags.iter().cloned());
        args
    }

    /// Arguments of router `i` (0-based).
    pub fn router_args(&self, i: usize) -> Vec<String> {
        let (grpc, http) = &self.routers[i];
        let mut args = vec!["router".to_string()];
        args.extend(flags(&[
            ("--listen", grpc.clone()),
            ("--http", http.clone()),
            ("--placement", self.placement.join(",")),
        ]));
        if let Some(ms) = self.router_timeout_ms {
            args.extend(flags(&[("--timeout-ms", ms.to_string())]));
        }
        args
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments_name_every_member_and_placement_address() {
        let l = Layout {
            dir: PathBuf::from("/d"),
            placement: vec!["a:1".into(), "b:1".into()],
            placement_http: vec![None, Some("b:2".into())],
            storenodes: vec![("s:1".into(), "s:2".into())],
            routers: vec![("r:1".into(), "r:2".into())],
            shards: 4,
            replication_factor: 1,
            router_timeout_ms: Some(2000),
            placement_flags: Vec::new(),
            storenode_flags: Vec::new(),
        };
        let p = l.placement_args(1).join(" ");
        assert!(p.starts_with("placement --id 2 --listen b:1 --data-dir /d/placement-2"), "{p}");
        assert!(p.contains("--http b:2") && p.contains("--member 1=a:1 --member 2=b:1"), "{p}");
        assert!(!l.placement_args(0).contains(&"--http".to_string()));
        let s = l.storenode_args(0).join(" ");
        assert!(
            s.contains("--node-id 1 --listen s:1 --http s:2") && s.ends_with("--placement a:1 --placement b:1"),
            "{s}"
        );
        let n = l.new_storenode_args("s:3", "s:4", Path::new("/d/storenode-9")).join(" ");
        assert!(
            n.starts_with("storenode --listen s:3 --http s:4 --data-dir /d/storenode-9") && !n.contains("--node-id"),
            "{n}"
        );
        assert_eq!(l.router_args(0).join(" "), "router --listen r:1 --http r:2 --placement a:1,b:1 --timeout-ms 2000");
    }
}
