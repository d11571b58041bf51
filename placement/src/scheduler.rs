//! The placement leader's background loop. Today it watches leadership (to
//! reset liveness when this member becomes leader) and bootstraps the initial
//! shards once `replication_factor` storenodes are up. Replica repair and
//! balancing will live here too.

use std::time::{Duration, Instant};

use ringkv_proto::placement::{placement_command::Op, BootstrapShards, Node, NodeState};
use tokio::sync::watch;

use crate::ring::initial_shards;
use crate::service::PlacementService;
use crate::GROUP_ID;

const INTERVAL: Duration = Duration::from_millis(200);

/// Runs the leader's background loop every 200 ms until `stop` turns true.
pub async fn run(svc: PlacementService, mut stop: watch::Receiver<bool>) {
    let mut was_leader = false;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(INTERVAL) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let leader = is_leader(&svc).await;
        if leader != was_leader {
            let mut live = svc.liveness.lock();
            live.last_seen.clear();
            live.since_leader = leader.then(Instant::now);
            tracing::info!(member = svc.member_id, leader, "placement leadership changed");
        }
        was_leader = leader;
        if leader {
            maybe_bootstrap(&svc).await;
        }
    }
}

async fn is_leader(svc: &PlacementService) -> bool {
    let status = svc.loop_handle.status(vec![GROUP_ID]).await.unwrap_or_default();
    status.into_iter().next().is_some_and(|r| r.is_leader)
}

async fn maybe_bootstrap(svc: &PlacementService) {
    let st = svc.shared.state.read().clone();
    if st.bootstrapped {
        return;
    }
    // Only nodes heard from since this member became leader count.
    let ready: Vec<Node> = {
        let live = svc.liveness.lock();
        st.nodes
            .values()
            .filter(|n| n.state == NodeState::Up as i32 && live.last_seen.contains_key(&n.id))
            .cloned()
            .collect()
    };
    if ready.len() < svc.settings.replication_factor {
        return;
    }
    let shards = initial_shards(&ready, svc.settings.initial_shards, svc.settings.replication_factor);
    tracing::info!(nodes = ready.len(), shards = shards.len(), "bootstrapping the initial shards");
    if let Err(e) = svc.propose(Op::Bootstrap(BootstrapShards { shards })).await {
        tracing::warn!("bootstrap: {e}");
    }
}
