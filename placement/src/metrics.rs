//! The placement leader's scheduling metrics, registered in the member's
//! registry (next to the Raft engine's) and served on its /metrics. Counters
//! move only on the member that leads while the work happens; gauges are
//! set by the leader's scheduler and zeroed when it stops leading.

use prometheus::{IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The scheduler's metrics.
pub struct SchedulerMetrics {
    /// Operators finished, by kind and outcome.
    pub operators: IntCounterVec,
    /// Operators in flight, by kind.
    pub operators_in_flight: IntGaugeVec,
    /// Leadership transfers asked of shard leaders, by reason.
    pub leader_transfers: IntCounterVec,
    /// Nodes by observed state (up, down, draining, maintenance).
    pub nodes: IntGaugeVec,
    /// Shards with fewer healthy voters than the replication factor.
    pub under_replicated: IntGauge,
    /// Shards that need a move no node can take now.
    pub blocked: IntGauge,
    /// 1 when every node is within one replica and one leader of its share.
    pub balanced: IntGauge,
    /// Shards split, by reason (size, load, manual).
    pub splits: IntCounterVec,
}

fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: M) -> M {
    // Names are fixed and distinct from the engine's: registration cannot clash.
    let _ = r.register(Box::new(m.clone()));
    m
}

impl SchedulerMetrics {
    /// The metrics, registered in `r`.
    pub fn new(r: &Registry) -> SchedulerMetrics {
        let vec = |name: &str, help: &str, label: &[&str]| {
            register(r, IntGaugeVec::new(Opts::new(name, help), label).expect("valid metric"))
        };
        SchedulerMetrics {
            operators: register(
                r,
                IntCounterVec::new(
                    Opts::new("ringkv_placement_operators_total", "Operators finished, by kind and outcome"),
                    &["kind", "outcome"],
                )
                .expect("valid metric"),
            ),
            operators_in_flight: vec("ringkv_placement_operators_in_flight", "Operators in flight", &["kind"]),
            leader_transfers: register(
                r,
                IntCounterVec::new(
                    Opts::new("ringkv_placement_leader_transfers_total", "Leadership transfers asked, by reason"),
                    &["reason"],
                )
                .expect("valid metric"),
            ),
            nodes: vec("ringkv_placement_nodes", "Storenodes by observed state", &["state"]),
            under_replicated: register(
                r,
                IntGauge::new("ringkv_placement_under_replicated_shards", "Shards short of healthy voters")
                    .expect("valid metric"),
            ),
            blocked: register(
                r,
                IntGauge::new("ringkv_placement_blocked_shards", "Shards needing a move no node can take now")
                    .expect("valid metric"),
            ),
            balanced: register(
                r,
                IntGauge::new("ringkv_placement_balanced", "1 when replicas and leaders are balanced")
                    .expect("valid metric"),
            ),
            splits: register(
                r,
                IntCounterVec::new(Opts::new("ringkv_placement_splits_total", "Shards split, by reason"), &["reason"])
                    .expect("valid metric"),
            ),
        }
    }
}
