//! Operator commands, answered by the placement service: `ringkv node
//! list|decommission|recommission|maintenance|remove`, `ringkv shard
//! list|show|move`, `ringkv operator list|cancel`, `ringkv cluster status`.

use std::time::Duration;

use ringkv_common::cluster_view::{node_counts, now_ms, ClusterSummary, NodeRow, OperatorRow, ShardContext, ShardRow};
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{
    CancelOperatorRequest, ClusterStatusRequest, GetShardMapRequest, ListNodesRequest, ListOperatorsRequest,
    MoveReplicaRequest, NodeState, Operator, SetMaintenanceRequest, SetNodeStateRequest, ShardInfo, ShardMap,
    SplitShardRequest,
};
use serde::Serialize;

use crate::output::{print, Format};

#[derive(clap::Args, Clone)]
pub struct PlacementConn {
    /// Placement gRPC addresses, comma-separated (the leader is found).
    #[arg(long, env = "RINGKV_PLACEMENT", value_delimiter = ',', default_value = super::defaults::PLACEMENT_ADDR)]
    pub placement: Vec<String>,
    #[arg(long, default_value_t = 5000)]
    pub timeout_ms: u64,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: Format,
}

impl PlacementConn {
    pub fn client(&self) -> anyhow::Result<PlacementClient> {
        for p in &self.placement {
            ringkv_common::net::check_host_port(p).map_err(|e| anyhow::anyhow!("--placement {p:?}: {e}"))?;
        }
        Ok(PlacementClient::new(self.placement.clone()))
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// Every storenode with its state and address.
    List(PlacementConn),
    /// Move every replica and leadership off a storenode; once it holds none
    /// it becomes REMOVED by itself. Refused when fewer than the replication
    /// factor of UP nodes would remain.
    #[command(visible_alias = "drain")]
    Decommission {
        id: u64,
        /// Show what would move, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Wait until the node is REMOVED, with a progress bar; names the
        /// stuck shards when nothing moves for --stall-secs.
        #[arg(long)]
        wait: bool,
        #[arg(long, default_value_t = 30)]
        stall_secs: u64,
        /// Give up waiting after this many seconds (the decommission goes on).
        #[arg(long, default_value_t = 3600)]
        wait_timeout_secs: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Stop decommissioning a storenode: it is UP again and takes replicas.
    #[command(visible_alias = "undrain")]
    Recommission {
        id: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Planned downtime: `on` moves every leadership off the node (replicas
    /// stay) and reports its absence as planned; repair waits longer.
    Maintenance {
        id: u64,
        #[arg(value_parser = ["on", "off"])]
        mode: String,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Remove a storenode that holds no replica for good (its id is never reused).
    Remove {
        id: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
}

#[derive(clap::Subcommand)]
pub enum OperatorCmd {
    /// Operators in flight: shard, kind, from → to, step, age; then the
    /// shards that need a move nothing can make now.
    List(PlacementConn),
    /// Roll an operator back (only before its promote step).
    Cancel {
        id: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
}

#[derive(clap::Subcommand)]
pub enum ShardCmd {
    /// Every shard: range, epoch, replicas, leader.
    List(PlacementConn),
    /// One shard in detail.
    Show {
        id: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Split a shard in two on the same storenodes (no data moves): at
    /// `--at HASH`, or where its data halves.
    Split {
        id: u64,
        /// The hash the new shard starts at (decimal or 0x hex), strictly
        /// inside the shard's range.
        #[arg(long, value_parser = parse_hash)]
        at: Option<u64>,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Move a shard's replica from one storenode to another (an operator).
    Move {
        id: u64,
        #[arg(long)]
        from: u64,
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Nodes, shards, leaders and under-replicated shards at a glance.
    Status(PlacementConn),
}

/// An operator's row, its ages as of now.
pub fn operator_row(o: &Operator) -> OperatorRow {
    OperatorRow::new(o, now_ms())
}

fn operator_table(rows: &[OperatorRow]) -> Vec<Vec<String>> {
    let node = |n: u64| if n == 0 { "-".to_string() } else { n.to_string() };
    rows.iter()
        .map(|o| {
            vec![
                o.id.to_string(),
                o.shard.to_string(),
                o.kind.clone(),
                format!("{} → {}", node(o.from_node), node(o.to_node)),
                format!("{} ({}s)", o.step, o.step_age_secs),
                format!("{}s", o.age_secs),
                o.reason.clone(),
                o.note.clone(),
            ]
        })
        .collect()
}

const OPERATOR_HEADER: &[&str] = &["id", "shard", "kind", "from → to", "step", "age", "reason", "note"];

fn placement_err(s: tonic::Status) -> anyhow::Error {
    anyhow::anyhow!("placement: {}", s.message())
}

/// Shard rows with the health, sizes and loads placement's leader knows
/// (sizes left at 0 and only lagging replicas counted if it cannot say).
async fn shard_rows(c: &PlacementConn, shards: &[ShardInfo]) -> Vec<ShardRow> {
    let status = c.client().ok().map(|pc| async move {
        pc.call(c.timeout(), |mut p| async move { p.cluster_status(ClusterStatusRequest {}).await }).await
    });
    let ctx = match status {
        Some(f) => f.await.map(|s| ShardContext::from_status(&s)).unwrap_or_default(),
        None => ShardContext::default(),
    };
    shards.iter().map(|s| ShardRow::new(s, &ctx)).collect()
}

/// Bytes as people read them.
fn human_bytes(b: u64) -> String {
    match b {
        0 => "-".into(),
        b if b >= 1 << 30 => format!("{:.1} GiB", b as f64 / (1u64 << 30) as f64),
        b if b >= 1 << 20 => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b as f64 / 1024.0),
    }
}

const SHARD_HEADER: &[&str] = &["id", "range", "epoch", "replicas", "leader node", "health", "size", "qps"];

fn replica_labels(s: &ShardRow) -> String {
    s.replicas.iter().map(|r| r.label()).collect::<Vec<_>>().join(" ")
}

fn shard_cells(s: &ShardRow) -> Vec<String> {
    vec![
        s.id.to_string(),
        format!("[{}, {})", s.start, s.end),
        format!("{}/{}", s.version, s.conf_ver),
        replica_labels(s),
        s.leader_node.to_string(),
        s.health.name().into(),
        human_bytes(s.approximate_bytes),
        format!("{:.0}", s.qps),
    ]
}

/// A ring hash as typed: decimal, or hex with `0x` (as `shard list` prints
/// ranges, without it).
fn parse_hash(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let parsed = match t.strip_prefix("0x").or_else(|| t.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => t.parse(),
    };
    parsed.map_err(|_| format!("{s:?}: expected a hash, decimal or 0x-prefixed hex (e.g. 0x8000000000000000)"))
}

pub async fn shard_map(c: &PlacementConn) -> anyhow::Result<ShardMap> {
    c.client()?
        .call(c.timeout(), |mut p| async move { p.get_shard_map(GetShardMapRequest {}).await })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))
}

async fn set_state(id: u64, state: NodeState, dry_run: bool, c: &PlacementConn) -> anyhow::Result<()> {
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move {
            p.set_node_state(SetNodeStateRequest { node_id: id, state: state as i32, dry_run }).await
        })
        .await
        .map_err(placement_err)?;
    if state == NodeState::Draining {
        let verb = if dry_run { "would move" } else { "moves" };
        let node = |n: u64| if n == 0 { "nowhere".to_string() } else { format!("node {n}") };
        if c.output == Format::Table {
            println!("decommissioning node {id} {verb} {} replicas:", r.plan.len());
            for m in &r.plan {
                println!("  shard {}: node {} → {} ({})", m.shard_id, m.from_node, node(m.to_node), m.reason);
            }
            if dry_run {
                println!("dry run: nothing changed");
                return Ok(());
            }
        } else if dry_run {
            let plan: Vec<serde_json::Value> = r
                .plan
                .iter()
                .map(|m| serde_json::json!({"shard": m.shard_id, "from_node": m.from_node, "to_node": m.to_node, "reason": m.reason}))
                .collect();
            println!("{}", serde_json::to_string_pretty(&plan)?);
            return Ok(());
        }
    }
    let row = NodeRow::new(&r.node.unwrap_or_default());
    let table = vec![vec![row.id.to_string(), row.shown_state(), row.address.clone()]];
    print(c.output, &row, &["id", "state", "address"], table)
}

pub async fn node(cmd: NodeCmd) -> anyhow::Result<()> {
    let c = match cmd {
        NodeCmd::List(c) => c,
        NodeCmd::Decommission { id, dry_run, wait, stall_secs, wait_timeout_secs, conn } => {
            set_state(id, NodeState::Draining, dry_run, &conn).await?;
            if wait && !dry_run {
                let limits = (Duration::from_secs(stall_secs.max(1)), Duration::from_secs(wait_timeout_secs));
                return super::decommission::wait(id, &conn, limits.0, limits.1).await;
            }
            return Ok(());
        }
        NodeCmd::Recommission { id, conn } => return set_state(id, NodeState::Up, false, &conn).await,
        NodeCmd::Remove { id, conn } => return set_state(id, NodeState::Removed, false, &conn).await,
        NodeCmd::Maintenance { id, mode, conn } => {
            let on = mode == "on";
            let r = conn
                .client()?
                .call(conn.timeout(), |mut p| async move {
                    p.set_maintenance(SetMaintenanceRequest { node_id: id, on }).await
                })
                .await
                .map_err(placement_err)?;
            let row = NodeRow::new(&r.node.unwrap_or_default());
            let table = vec![vec![row.id.to_string(), row.shown_state(), row.maintenance.to_string()]];
            return print(conn.output, &row, &["id", "state", "maintenance"], table);
        }
    };
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move { p.list_nodes(ListNodesRequest {}).await })
        .await
        .map_err(placement_err)?;
    let map = shard_map(&c).await?;
    let rows: Vec<NodeRow> = r.nodes.iter().map(NodeRow::new).collect();
    let counts = node_counts(&map.shards);
    let table = rows
        .iter()
        .map(|n| {
            let c = counts.get(&n.id).copied().unwrap_or_default();
            vec![
                n.id.to_string(),
                n.shown_state(),
                n.address.clone(),
                n.zone.clone(),
                c.replicas.to_string(),
                c.leaders.to_string(),
                format!("{}ms", n.last_heartbeat_ago_ms),
            ]
        })
        .collect();
    print(c.output, &rows, &["id", "state", "address", "zone", "replicas", "leaders", "last heartbeat"], table)
}

pub async fn operator(cmd: OperatorCmd) -> anyhow::Result<()> {
    match cmd {
        OperatorCmd::List(c) => {
            let r = c
                .client()?
                .call(c.timeout(), |mut p| async move { p.list_operators(ListOperatorsRequest {}).await })
                .await
                .map_err(placement_err)?;
            let rows: Vec<OperatorRow> = r.operators.iter().map(operator_row).collect();
            if c.output == Format::Json {
                let blocked: Vec<serde_json::Value> =
                    r.blocked.iter().map(|b| serde_json::json!({"shard": b.shard_id, "reason": b.reason})).collect();
                println!(
                    "{}",
                    serde_json::to_string_pretty(&serde_json::json!({"operators": rows, "blocked": blocked}))?
                );
                return Ok(());
            }
            if rows.is_empty() {
                println!("no operators in flight");
            } else {
                print(c.output, &rows, OPERATOR_HEADER, operator_table(&rows))?;
            }
            for b in &r.blocked {
                println!("shard {} cannot move now: {}", b.shard_id, b.reason);
            }
            Ok(())
        }
        OperatorCmd::Cancel { id, conn } => {
            let r = conn
                .client()?
                .call(conn.timeout(), |mut p| async move { p.cancel_operator(CancelOperatorRequest { id }).await })
                .await
                .map_err(placement_err)?;
            let rows = vec![operator_row(&r.operator.unwrap_or_default())];
            print(conn.output, &rows[0], OPERATOR_HEADER, operator_table(&rows))
        }
    }
}

pub async fn shard(cmd: ShardCmd) -> anyhow::Result<()> {
    match cmd {
        ShardCmd::List(c) => {
            let map = shard_map(&c).await?;
            let rows = shard_rows(&c, &map.shards).await;
            let table = rows.iter().map(shard_cells).collect();
            print(c.output, &rows, SHARD_HEADER, table)
        }
        ShardCmd::Show { id, conn } => {
            let map = shard_map(&conn).await?;
            let s = map
                .shards
                .iter()
                .find(|s| s.shard.as_ref().is_some_and(|d| d.id == id))
                .ok_or_else(|| anyhow::anyhow!("no shard {id}"))?;
            let rows = shard_rows(&conn, std::slice::from_ref(s)).await;
            let row = rows.into_iter().next().ok_or_else(|| anyhow::anyhow!("no shard {id}"))?;
            let table = vec![
                vec!["id".into(), row.id.to_string()],
                vec!["range".into(), format!("[{}, {})", row.start, row.end)],
                vec!["epoch".into(), format!("version {} conf_ver {}", row.version, row.conf_ver)],
                vec!["replicas".into(), replica_labels(&row)],
                vec!["leader node".into(), row.leader_node.to_string()],
                vec!["down replicas".into(), row.down_replicas.to_string()],
                vec!["health".into(), row.health.name().into()],
            ];
            print(conn.output, &row, &["field", "value"], table)
        }
        ShardCmd::Split { id, at, conn } => {
            if at == Some(0) {
                anyhow::bail!("hash 0 is not strictly inside any shard's range: no shard can split there");
            }
            let req = SplitShardRequest { shard_id: id, split_hash: at.unwrap_or(0) };
            let r = conn
                .client()?
                .call(conn.timeout(), |mut p| async move { p.split_shard(req).await })
                .await
                .map_err(placement_err)?;
            let rows: Vec<ShardRow> = [r.left, r.right]
                .into_iter()
                .flatten()
                .map(|d| ShardRow::new(&ShardInfo { shard: Some(d), ..Default::default() }, &ShardContext::default()))
                .collect();
            let table = rows.iter().map(shard_cells).collect();
            print(conn.output, &rows, SHARD_HEADER, table)
        }
        ShardCmd::Move { id, from, to, conn } => {
            let req = MoveReplicaRequest { shard_id: id, from_node: from, to_node: to };
            let r = conn
                .client()?
                .call(conn.timeout(), |mut p| async move { p.move_replica(req).await })
                .await
                .map_err(placement_err)?;
            let rows = vec![operator_row(&r.operator.unwrap_or_default())];
            print(conn.output, &rows[0], OPERATOR_HEADER, operator_table(&rows))
        }
    }
}

#[derive(Serialize)]
struct LoadRow {
    node: u64,
    replicas: u32,
    leaders: u32,
}

#[derive(Serialize)]
struct Status {
    #[serde(flatten)]
    summary: ClusterSummary,
    operators: Vec<OperatorRow>,
    loads: Vec<LoadRow>,
    nodes: Vec<NodeRow>,
}

pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    let ClusterCmd::Status(c) = cmd;
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move { p.cluster_status(ClusterStatusRequest {}).await })
        .await
        .map_err(placement_err)?;
    let st = Status {
        summary: ClusterSummary::new(&r),
        operators: r.operators.iter().map(operator_row).collect(),
        loads: r.loads.iter().map(|l| LoadRow { node: l.node_id, replicas: l.replicas, leaders: l.leaders }).collect(),
        nodes: r.nodes.iter().map(NodeRow::new).collect(),
    };
    let minmax = |f: fn(&LoadRow) -> u32| {
        let v: Vec<u32> = st.loads.iter().map(f).collect();
        format!("{} / {}", v.iter().min().copied().unwrap_or(0), v.iter().max().copied().unwrap_or(0))
    };
    let sum = &st.summary;
    let states: Vec<String> = sum.nodes_by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    let table = vec![
        vec!["bootstrapped".into(), sum.bootstrapped.to_string()],
        vec!["placement leader".into(), sum.placement_leader.to_string()],
        vec!["storenodes".into(), format!("{} ({})", sum.nodes_total, states.join(", "))],
        vec!["shards".into(), sum.shards.to_string()],
        vec!["shards with a leader".into(), sum.shards_with_leader.to_string()],
        vec!["leaderless shards".into(), sum.leaderless.to_string()],
        vec!["under-replicated shards".into(), sum.under_replicated.to_string()],
        vec!["replication factor".into(), sum.replication_factor.to_string()],
        vec![
            "replicas per node (min / max)".into(),
            format!("{} (ideal {:.1})", minmax(|l| l.replicas), sum.ideal_replicas),
        ],
        vec![
            "leaders per node (min / max)".into(),
            format!("{} (ideal {:.1})", minmax(|l| l.leaders), sum.ideal_leaders),
        ],
        vec!["operators in flight".into(), st.operators.len().to_string()],
        vec!["balanced".into(), sum.balanced.to_string()],
        vec!["shard map version".into(), sum.map_version.to_string()],
    ];
    print(c.output, &st, &["", ""], table)?;
    if c.output == Format::Table {
        let loads: Vec<Vec<String>> =
            st.loads.iter().map(|l| vec![l.node.to_string(), l.replicas.to_string(), l.leaders.to_string()]).collect();
        println!();
        print(c.output, &st.loads, &["node", "replicas", "leaders"], loads)?;
        if !st.operators.is_empty() {
            println!();
            print(c.output, &st.operators, OPERATOR_HEADER, operator_table(&st.operators))?;
        }
    }
    Ok(())
}
