//! Subcommand dispatch.

pub mod bench;
pub mod chaos;
pub mod data;
pub mod decommission;
pub mod ops;
pub mod placement;
pub mod playground;
pub mod router;
pub mod storenode;

use clap::{Parser, Subcommand};

/// Where servers listen and clients look when no address is given: one
/// source for every command. The placement ports are not etcd's 2379/2380
/// (a playground must start next to a local etcd) nor any other well-known
/// service's.
pub mod defaults {
    /// Placement gRPC port (a playground's members use 6390, 6391, ...).
    pub const PLACEMENT_PORT: u16 = 6390;
    /// Placement HTTP port of a playground's first member (6490, 6491, ...).
    pub const PLACEMENT_HTTP_PORT: u16 = 6490;
    /// The placement address clients try by default.
    pub const PLACEMENT_ADDR: &str = "127.0.0.1:6390";
    /// Router gRPC (Kv API) port.
    pub const ROUTER_PORT: u16 = 6380;
    /// Router HTTP gateway port.
    pub const ROUTER_HTTP_PORT: u16 = 8080;
    /// The router address clients try by default.
    pub const ROUTER_ADDR: &str = "127.0.0.1:6380";
    /// A playground's first storenode gRPC port (20160, 20161, ...).
    pub const STORENODE_PORT: u16 = 20160;
    /// A playground's first storenode HTTP port (20260, 20261, ...).
    pub const STORENODE_HTTP_PORT: u16 = 20260;
}

#[derive(Parser)]
#[command(name = "ringkv", version, about = "ringkv: a sharded, linearizable key-value store")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run a member of the placement service.
    Placement(placement::Args),
    /// Run a storenode server.
    Storenode(storenode::Args),
    /// Run a router: the gRPC Kv API and the HTTP gateway.
    Router(router::Args),
    /// Read a key (prints its value).
    Get(data::Get),
    /// Write a key.
    Put(data::Put),
    /// Delete a key.
    Delete(data::Delete),
    /// Compare-and-swap: write NEW only if the key holds --expect (or is --absent).
    Cas(data::Cas),
    /// List keys by prefix.
    Scan(data::Scan),
    /// Storenodes.
    #[command(subcommand)]
    Node(ops::NodeCmd),
    /// Shards.
    #[command(subcommand)]
    Shard(ops::ShardCmd),
    /// The cluster as a whole.
    #[command(subcommand)]
    Cluster(ops::ClusterCmd),
    /// Operators: the replica moves placement is making.
    #[command(subcommand)]
    Operator(ops::OperatorCmd),
    /// Start a local cluster on 127.0.0.1 and keep it running until Ctrl-C;
    /// `playground scale-out|scale-in` change a running one.
    Playground(playground::Args),
    /// Measure throughput, latency and CPU per operation: of an in-process
    /// cluster, a running one (through its routers) or etcd.
    Bench(bench::Args),
    /// A fault-injection run with a linearizability check (root, in a network
    /// namespace); `chaos check FILE` re-checks a recorded history on its own.
    Chaos(chaos::Args),
}

/// How a server writes its log lines (`--log-format`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, event fields at the top level, for log
    /// shippers.
    Json,
}

impl LogFormat {
    /// The flag's value, to pass on to a child process.
    pub fn as_str(self) -> &'static str {
        match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        }
    }
}

impl Command {
    /// The log format a server subcommand was given (text for the others).
    pub fn log_format(&self) -> LogFormat {
        let given = match self {
            Command::Placement(a) => a.log_format,
            Command::Storenode(a) => a.log_format,
            Command::Router(a) => a.log_format,
            Command::Playground(a) => a.log_format(),
            _ => None,
        };
        given.unwrap_or_default()
    }

    pub fn is_server(&self) -> bool {
        matches!(self, Command::Placement(_) | Command::Storenode(_) | Command::Router(_) | Command::Bench(_))
            || matches!(self, Command::Chaos(a) if a.is_run())
            || matches!(self, Command::Playground(a) if a.is_start())
    }
}

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Placement(a) => placement::run(a).await,
        Command::Storenode(a) => storenode::run(a).await,
        Command::Router(a) => router::run(a).await,
        Command::Get(a) => data::get(a).await,
        Command::Put(a) => data::put(a).await,
        Command::Delete(a) => data::delete(a).await,
        Command::Cas(a) => data::cas(a).await,
        Command::Scan(a) => data::scan(a).await,
        Command::Node(c) => ops::node(c).await,
        Command::Shard(c) => ops::shard(c).await,
        Command::Cluster(c) => ops::cluster(c).await,
        Command::Operator(c) => ops::operator(c).await,
        Command::Playground(a) => playground::run(a).await,
        Command::Bench(a) => bench::run(a).await,
        Command::Chaos(a) => chaos::run_cmd(a).await,
    }
}

/// Reads a TOML settings file; unknown keys are errors (a typo must not be
/// silently ignored).
pub fn load_toml<T: serde::de::DeserializeOwned>(path: &std::path::Path) -> anyhow::Result<T> {
    use anyhow::Context;
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A size in bytes as people write it: `1048576`, `512KiB`, `32MiB`,
/// `1GiB` (or KB/MB/GB, also powers of 1024 as RocksDB and TiKV read them).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?}: expected a number of bytes, e.g. 32MiB"))?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        u => return Err(format!("{s:?}: unknown unit {u:?} (B, KiB, MiB, GiB, TiB)")),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| format!("{s:?}: too large"))
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use super::parse_bytes;

    #[test]
    fn sizes_parse_with_binary_units_and_bad_ones_are_refused() {
        assert_eq!(parse_bytes("32MiB"), Ok(32 << 20));
        assert_eq!(parse_bytes("1gb"), Ok(1 << 30));
        assert_eq!(parse_bytes("4096"), Ok(4096));
        assert_eq!(parse_bytes("0"), Ok(0));
        for bad in ["", "MiB", "12 parsecs", "-1", "99999999999TiB"] {
            assert!(parse_bytes(bad).is_err(), "{bad}");
        }
    }
}
