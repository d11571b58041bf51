//! Operator commands, answered by the placement service:
//! `ringkv node list`, `ringkv shard list|show`, `ringkv cluster status`.

use std::time::Duration;

use anyhow::Context;
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{
    ClusterStatusRequest, GetShardMapRequest, ListNodesRequest, Node, NodeState, SetNodeStateRequest, ShardInfo,
    ShardMap,
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
    fn client(&self) -> anyhow::Result<PlacementClient> {
        for p in &self.placement {
            p.parse::<std::net::SocketAddr>().with_context(|| format!("--placement {p:?}: expected IP:PORT"))?;
        }
        Ok(PlacementClient::new(self.placement.clone()))
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.max(1))
    }
}

#[derive(clap::Subcommand)]
pub enum NodeCmd {
    /// Every storenode with its state and address.
    List(PlacementConn),
    /// Mark a storenode draining (its replicas are to move elsewhere).
    Drain {
        id: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Mark a draining storenode up again.
    Undrain {
        id: u64,
        #[command(flatten)]
        conn: PlacementConn,
    },
    /// Remove a storenode for good (its id is never reused).
    Remove {
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
}

#[derive(clap::Subcommand)]
pub enum ClusterCmd {
    /// Nodes, shards, leaders and under-replicated shards at a glance.
    Status(PlacementConn),
}

fn state_name(s: i32) -> String {
    NodeState::try_from(s).map_or("unknown".into(), |s| s.as_str_name().to_lowercase())
}

#[derive(Serialize)]
struct NodeRow {
    id: u64,
    state: String,
    address: String,
    http_address: String,
    zone: String,
    capacity: u64,
    last_heartbeat_ago_ms: u64,
}

fn node_row(n: &Node) -> NodeRow {
    NodeRow {
        id: n.id,
        state: state_name(n.state),
        address: n.address.clone(),
        http_address: n.http_address.clone(),
        zone: n.zone.clone(),
        capacity: n.capacity,
        last_heartbeat_ago_ms: n.last_heartbeat_ago_ms,
    }
}

#[derive(Serialize)]
struct ShardRow {
    id: u64,
    start: String,
    end: String,
    version: u64,
    conf_ver: u64,
    replicas: Vec<String>,
    leader_node: u64,
    down_replicas: u32,
}

fn shard_row(s: &ShardInfo) -> ShardRow {
    let d = s.shard.clone().unwrap_or_default();
    let e = d.epoch.unwrap_or_default();
    ShardRow {
        id: d.id,
        start: format!("{:016x}", d.start),
        end: if d.end == 0 { "end".into() } else { format!("{:016x}", d.end) },
        version: e.version,
        conf_ver: e.conf_ver,
        replicas: d
            .replicas
            .iter()
            .map(|r| format!("{}@node{}{}", r.replica_id, r.node_id, if r.role == 1 { "(learner)" } else { "" }))
            .collect(),
        leader_node: s.leader_node_id,
        down_replicas: s.down_replicas,
    }
}

async fn shard_map(c: &PlacementConn) -> anyhow::Result<ShardMap> {
    c.client()?
        .call(c.timeout(), |mut p| async move { p.get_shard_map(GetShardMapRequest {}).await })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))
}

async fn set_state(id: u64, state: NodeState, c: PlacementConn) -> anyhow::Result<()> {
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move {
            p.set_node_state(SetNodeStateRequest { node_id: id, state: state as i32 }).await
        })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))?;
    let row = node_row(&r.node.unwrap_or_default());
    let table = vec![vec![row.id.to_string(), row.state.clone(), row.address.clone()]];
    print(c.output, &row, &["id", "state", "address"], table)
}

pub async fn node(cmd: NodeCmd) -> anyhow::Result<()> {
    let c = match cmd {
        NodeCmd::List(c) => c,
        NodeCmd::Drain { id, conn } => return set_state(id, NodeState::Draining, conn).await,
        NodeCmd::Undrain { id, conn } => return set_state(id, NodeState::Up, conn).await,
        NodeCmd::Remove { id, conn } => return set_state(id, NodeState::Removed, conn).await,
    };
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move { p.list_nodes(ListNodesRequest {}).await })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))?;
    let rows: Vec<NodeRow> = r.nodes.iter().map(node_row).collect();
    let table = rows
        .iter()
        .map(|n| {
            vec![
                n.id.to_string(),
                n.state.clone(),
                n.address.clone(),
                n.zone.clone(),
                format!("{}ms", n.last_heartbeat_ago_ms),
            ]
        })
        .collect();
    print(c.output, &rows, &["id", "state", "address", "zone", "last heartbeat"], table)
}

pub async fn shard(cmd: ShardCmd) -> anyhow::Result<()> {
    match cmd {
        ShardCmd::List(c) => {
            let map = shard_map(&c).await?;
            let rows: Vec<ShardRow> = map.shards.iter().map(shard_row).collect();
            let table = rows
                .iter()
                .map(|s| {
                    vec![
                        s.id.to_string(),
                        format!("[{}, {})", s.start, s.end),
                        format!("{}/{}", s.version, s.conf_ver),
                        s.replicas.join(" "),
                        s.leader_node.to_string(),
                    ]
                })
                .collect();
            print(c.output, &rows, &["id", "range", "epoch", "replicas", "leader node"], table)
        }
        ShardCmd::Show { id, conn } => {
            let map = shard_map(&conn).await?;
            let s = map
                .shards
                .iter()
                .find(|s| s.shard.as_ref().is_some_and(|d| d.id == id))
                .ok_or_else(|| anyhow::anyhow!("no shard {id}"))?;
            let row = shard_row(s);
            let table = vec![
                vec!["id".into(), row.id.to_string()],
                vec!["range".into(), format!("[{}, {})", row.start, row.end)],
                vec!["epoch".into(), format!("version {} conf_ver {}", row.version, row.conf_ver)],
                vec!["replicas".into(), row.replicas.join(" ")],
                vec!["leader node".into(), row.leader_node.to_string()],
                vec!["down replicas".into(), row.down_replicas.to_string()],
            ];
            print(conn.output, &row, &["field", "value"], table)
        }
    }
}

#[derive(Serialize)]
struct Status {
    map_version: u64,
    bootstrapped: bool,
    placement_leader: u64,
    nodes_up: usize,
    nodes_total: usize,
    shards: u32,
    shards_with_leader: u32,
    under_replicated: u32,
    replication_factor: u32,
    nodes: Vec<NodeRow>,
}

pub async fn cluster(cmd: ClusterCmd) -> anyhow::Result<()> {
    let ClusterCmd::Status(c) = cmd;
    let r = c
        .client()?
        .call(c.timeout(), |mut p| async move { p.cluster_status(ClusterStatusRequest {}).await })
        .await
        .map_err(|s| anyhow::anyhow!("placement: {}", s.message()))?;
    let st = Status {
        map_version: r.map_version,
        bootstrapped: r.bootstrapped,
        placement_leader: r.placement.iter().find(|m| m.is_leader).map_or(0, |m| m.id),
        nodes_up: r.nodes.iter().filter(|n| n.state == NodeState::Up as i32).count(),
        nodes_total: r.nodes.len(),
        shards: r.shards,
        shards_with_leader: r.shards_with_leader,
        under_replicated: r.under_replicated,
        replication_factor: r.replication_factor,
        nodes: r.nodes.iter().map(node_row).collect(),
    };
    let table = vec![
        vec!["bootstrapped".into(), st.bootstrapped.to_string()],
        vec!["placement leader".into(), st.placement_leader.to_string()],
        vec!["storenodes up".into(), format!("{} of {}", st.nodes_up, st.nodes_total)],
        vec!["shards".into(), st.shards.to_string()],
        vec!["shards with a leader".into(), st.shards_with_leader.to_string()],
        vec!["under-replicated shards".into(), st.under_replicated.to_string()],
        vec!["replication factor".into(), st.replication_factor.to_string()],
        vec!["shard map version".into(), st.map_version.to_string()],
    ];
    print(c.output, &st, &["", ""], table)
}
