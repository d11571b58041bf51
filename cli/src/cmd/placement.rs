//! `ringkv placement`: runs one member of the placement group until Ctrl-C / SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context};
use ringkv_placement::{PlacementConfig, PlacementServer, PlacementSettings};
use ringkv_raft::RaftConfig;

/// Flags, or the same keys in a TOML file (`--config`); a flag wins over
/// the file, the file over the default.
#[derive(clap::Args, serde::Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Args {
    /// TOML file with any of these settings (keys in snake_case).
    #[arg(long, env = "RINGKV_CONFIG")]
    #[serde(skip)]
    config: Option<PathBuf>,
    /// Log lines as `text` or `json` (one object per line). Default text.
    #[arg(long, value_enum, env = "RINGKV_LOG_FORMAT")]
    #[serde(skip)]
    pub log_format: Option<super::LogFormat>,
    /// This member's id (1, 2, 3…). Default 1.
    #[arg(long, env = "RINGKV_ID")]
    id: Option<u64>,
    /// Take the member id from the host name's trailing ordinal plus one
    /// (`placement-0` → 1, `placement-2.placement.ns.svc` → 3), as a
    /// Kubernetes StatefulSet names its pods.
    #[arg(long, env = "RINGKV_ID_FROM_HOSTNAME", conflicts_with = "id")]
    #[serde(skip)]
    id_from_hostname: bool,
    /// gRPC listen address. Default 127.0.0.1:6390.
    #[arg(long, env = "RINGKV_LISTEN")]
    listen: Option<SocketAddr>,
    /// HTTP address for /metrics, /healthz, /readyz.
    #[arg(long, env = "RINGKV_HTTP")]
    http: Option<SocketAddr>,
    /// Default ringkv-data/placement-ID.
    #[arg(long, env = "RINGKV_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Every member as ID=ADDRESS, this one included (repeatable). Default:
    /// a single member at --listen.
    #[arg(long = "member", env = "RINGKV_MEMBER", value_delimiter = ',')]
    #[serde(rename = "members")]
    members: Vec<String>,
    /// Replicas per shard, and storenodes needed before the first shards exist. Default 3.
    #[arg(long, env = "RINGKV_REPLICATION_FACTOR")]
    replication_factor: Option<usize>,
    /// Shards created when the cluster bootstraps. Default 16.
    #[arg(long, env = "RINGKV_INITIAL_SHARDS")]
    initial_shards: Option<u64>,
    /// Seconds without a heartbeat before a storenode is DOWN for good and its
    /// replicas are replaced elsewhere. Default 300 (it is shown down after
    /// 10, or this when shorter).
    #[arg(long, env = "RINGKV_DOWN_AFTER_SECS")]
    down_after_secs: Option<u64>,
    /// The same for a node in maintenance (planned downtime). Default 1800.
    #[arg(long, env = "RINGKV_MAINTENANCE_DOWN_AFTER_SECS")]
    maintenance_down_after_secs: Option<u64>,
    /// Replica moves (operators) in flight in the cluster. Default 16.
    #[arg(long, env = "RINGKV_MAX_OPERATORS")]
    max_operators: Option<usize>,
    /// Moves in flight into or out of one storenode. Default 2.
    #[arg(long, env = "RINGKV_MAX_OPERATORS_PER_NODE")]
    max_operators_per_node: Option<usize>,
    /// New replicas catching up (receiving a snapshot) on one storenode. Default 1.
    #[arg(long, env = "RINGKV_MAX_SNAPSHOTS_PER_NODE")]
    max_snapshots_per_node: Option<usize>,
    /// Seconds a new replica may take to catch up before its move rolls back. Default 600.
    #[arg(long, env = "RINGKV_CATCH_UP_TIMEOUT_SECS")]
    catch_up_timeout_secs: Option<u64>,
    /// Raft tick in milliseconds. Default 100.
    #[arg(long, env = "RINGKV_RAFT_TICK_MS")]
    raft_tick_ms: Option<u64>,
    /// Split a shard whose data passes this size, at its middle (e.g. 128MiB,
    /// 1GiB; 0: never by size). Default 128MiB.
    #[arg(long, value_parser = super::parse_bytes, env = "RINGKV_SHARD_MAX_BYTES")]
    shard_max_bytes: Option<u64>,
    /// Split a shard that serves more requests per second than this ...
    /// Default 3000.
    #[arg(long, env = "RINGKV_SPLIT_QPS")]
    split_qps: Option<f64>,
    /// ... in this many heartbeats in a row, where its load halves (0: never
    /// by load). Default 10.
    #[arg(long, env = "RINGKV_SPLIT_DETECTIONS")]
    split_detections: Option<u32>,
}

impl Args {
    /// These flags over the `--config` file's values.
    fn merged(self) -> anyhow::Result<Args> {
        let Some(path) = &self.config else { return Ok(self) };
        let f: Args = super::load_toml(path)?;
        Ok(Args {
            config: self.config.clone(),
            // Logging started before the file was read: the flag only.
            log_format: self.log_format,
            id: self.id.or(f.id),
            id_from_hostname: self.id_from_hostname,
            listen: self.listen.or(f.listen),
            http: self.http.or(f.http),
            data_dir: self.data_dir.or(f.data_dir),
            members: if self.members.is_empty() { f.members } else { self.members },
            replication_factor: self.replication_factor.or(f.replication_factor),
            initial_shards: self.initial_shards.or(f.initial_shards),
            down_after_secs: self.down_after_secs.or(f.down_after_secs),
            maintenance_down_after_secs: self.maintenance_down_after_secs.or(f.maintenance_down_after_secs),
            max_operators: self.max_operators.or(f.max_operators),
            max_operators_per_node: self.max_operators_per_node.or(f.max_operators_per_node),
            max_snapshots_per_node: self.max_snapshots_per_node.or(f.max_snapshots_per_node),
            catch_up_timeout_secs: self.catch_up_timeout_secs.or(f.catch_up_timeout_secs),
            raft_tick_ms: self.raft_tick_ms.or(f.raft_tick_ms),
            shard_max_bytes: self.shard_max_bytes.or(f.shard_max_bytes),
            split_qps: self.split_qps.or(f.split_qps),
            split_detections: self.split_detections.or(f.split_detections),
        })
    }
}

/// The member id a host name gives: its first label's trailing `-N`, plus
/// one (ids start at 1, StatefulSet ordinals at 0).
fn ordinal_id(host: &str) -> anyhow::Result<u64> {
    let first = host.split('.').next().unwrap_or_default();
    let ordinal = first.rsplit_once('-').map(|(_, n)| n).unwrap_or_default();
    let n: u64 = ordinal.parse().with_context(|| {
        format!("--id-from-hostname: host name {host:?} does not end in -N (a StatefulSet ordinal)")
    })?;
    Ok(n + 1)
}

/// This machine's (or pod's) host name.
fn hostname() -> anyhow::Result<String> {
    if let Ok(h) = std::env::var("HOSTNAME") {
        if !h.is_empty() {
            return Ok(h);
        }
    }
    let mut buf = [0u8; 256];
    // SAFETY: gethostname writes at most buf.len() bytes into buf.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    anyhow::ensure!(rc == 0, "gethostname: {}", std::io::Error::last_os_error());
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}

pub fn parse_id_addr(flag: &str, s: &str) -> anyhow::Result<(u64, String)> {
    let Some((id, addr)) = s.split_once('=') else { bail!("{flag} {s:?}: expected ID=ADDRESS") };
    let id: u64 = id.parse().with_context(|| format!("{flag} {s:?}: bad id"))?;
    ringkv_common::net::check_host_port(addr).map_err(|e| anyhow::anyhow!("{flag} {s:?}: {e}"))?;
    Ok((id, addr.to_string()))
}

pub fn config(a: Args) -> anyhow::Result<PlacementConfig> {
    let a = a.merged()?;
    let id = if a.id_from_hostname { ordinal_id(&hostname()?)? } else { a.id.unwrap_or(1) };
    let listen = a.listen.unwrap_or_else(|| ([127, 0, 0, 1], super::defaults::PLACEMENT_PORT).into());
    let members = if a.members.is_empty() {
        vec![(id, listen.to_string())]
    } else {
        a.members.iter().map(|m| parse_id_addr("--member", m)).collect::<anyhow::Result<Vec<_>>>()?
    };
    if !members.iter().any(|(m, _)| *m == id) {
        bail!("--id {id} is not among the --member list");
    }
    let defaults = PlacementSettings::default();
    let settings = PlacementSettings {
        replication_factor: a.replication_factor.unwrap_or(defaults.replication_factor),
        initial_shards: a.initial_shards.unwrap_or(defaults.initial_shards),
        down_after: a.down_after_secs.map_or(defaults.down_after, Duration::from_secs),
        maintenance_down_after: a
            .maintenance_down_after_secs
            .map_or(defaults.maintenance_down_after, Duration::from_secs),
        max_operators: a.max_operators.unwrap_or(defaults.max_operators),
        max_operators_per_node: a.max_operators_per_node.unwrap_or(defaults.max_operators_per_node),
        max_snapshots_per_node: a.max_snapshots_per_node.unwrap_or(defaults.max_snapshots_per_node),
        catch_up_timeout: a.catch_up_timeout_secs.map_or(defaults.catch_up_timeout, Duration::from_secs),
        shard_max_bytes: a.shard_max_bytes.unwrap_or(defaults.shard_max_bytes),
        split_qps: a.split_qps.unwrap_or(defaults.split_qps),
        split_detections: a.split_detections.unwrap_or(defaults.split_detections),
        ..defaults
    };
    if !settings.split_qps.is_finite() || settings.split_qps <= 0.0 {
        bail!("--split-qps must be a positive number");
    }
    if settings.replication_factor == 0 || settings.initial_shards == 0 || settings.down_after.is_zero() {
        bail!("replication factor, initial shards and down-after must be at least 1");
    }
    if settings.max_operators == 0 || settings.max_operators_per_node == 0 || settings.max_snapshots_per_node == 0 {
        bail!("max-operators, max-operators-per-node and max-snapshots-per-node must be at least 1");
    }
    let raft = RaftConfig {
        tick_ms: a.raft_tick_ms.unwrap_or(ringkv_raft::config::DEFAULT_TICK_MS).max(1),
        ..Default::default()
    };
    Ok(PlacementConfig {
        member_id: id,
        listen_addr: listen,
        http_addr: a.http,
        data_dir: a.data_dir.unwrap_or_else(|| PathBuf::from(format!("ringkv-data/placement-{id}"))),
        members,
        raft,
        settings,
    })
}

pub async fn run(a: Args) -> anyhow::Result<()> {
    let cfg = config(a)?;
    let h = PlacementServer::start(cfg).await?;
    println!("placement {} serving gRPC on {} (http {:?})", h.member_id, h.grpc_addr, h.http_addr);
    super::shutdown_signal().await;
    tracing::info!("shutting down");
    h.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_statefulset_ordinal_gives_the_member_id() {
        assert_eq!(ordinal_id("placement-0").unwrap(), 1);
        assert_eq!(ordinal_id("placement-2.placement.ringkv.svc.cluster.local").unwrap(), 3);
        assert_eq!(ordinal_id("my-placement-10").unwrap(), 11);
        for bad in ["placement", "placement-", "placement-x", ""] {
            let e = ordinal_id(bad).unwrap_err().to_string();
            assert!(e.contains("does not end in -N"), "{bad}: {e}");
        }
    }
}
