//! Prometheus metrics of one storenode: the engine's ([`RaftMetrics`], whose
//! registry is the node's) plus the ShardKv service's. Names follow
//! Prometheus conventions: `ringkv_` prefix, units in the name, `_total` for
//! counters.

use std::sync::Arc;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts};
use ringkv_raft::RaftMetrics;

/// The storenode's metrics.
pub struct Metrics {
    /// The engine's metrics and the node's registry.
    pub raft: Arc<RaftMetrics>,
    /// ShardKv requests by method and result.
    pub requests: IntCounterVec,
    /// ShardKv request latency by method.
    pub request_duration: HistogramVec,
    // Request tracing (issue 12).
    /// ShardKv requests slower than `--slow-request-ms`, by method (each logged once).
    pub slow_requests: IntCounterVec,
}

impl Metrics {
    /// A storenode's metrics in a new registry labelled with its node id.
    pub fn new(node_id: u64) -> Metrics {
        let raft = Arc::new(RaftMetrics::new(node_id));
        let r = &raft.registry;
        let requests = IntCounterVec::new(
            Opts::new("ringkv_storenode_requests_total", "ShardKv requests by method and result"),
            &["method", "result"],
        )
        .expect("valid metric");
        r.register(Box::new(requests.clone())).expect("unique metric");
        let request_duration = HistogramVec::new(
            HistogramOpts::new("ringkv_storenode_request_duration_seconds", "ShardKv request latency by method")
                .buckets(prometheus::exponential_buckets(0.0001, 2.0, 16).expect("valid buckets")),
            &["method"],
        )
        .expect("valid metric");
        r.register(Box::new(request_duration.clone())).expect("unique metric");
        // Request tracing (issue 12).
        let slow_requests = IntCounterVec::new(
            Opts::new(
                "ringkv_storenode_slow_requests_total",
                "ShardKv requests slower than --slow-request-ms, by method (each logged once)",
            ),
            &["method"],
        )
        .expect("valid metric");
        r.register(Box::new(slow_requests.clone())).expect("unique metric");
        Metrics { raft, requests, request_duration, slow_requests }
    }

    /// The registry in Prometheus text format.
    pub fn render(&self) -> String {
        self.raft.render()
    }
}
