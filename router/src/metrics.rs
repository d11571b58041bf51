//! The router's Prometheus metrics: every API call by operation and outcome
//! and its latency, retries by cause, calls in flight, and how fresh the
//! shard map is. Served on the HTTP port at /metrics. One registry per
//! process (a router holds no node id; Prometheus's `instance` tells
//! routers apart). Every call also feeds the console's per-second traffic
//! ring.

use std::sync::LazyLock;
use std::time::Instant;

use parking_lot::Mutex;
use prometheus::{Histogram, HistogramVec, IntCounterVec, IntGauge, Registry};
use ringkv_common::metrics::{counter_vec, gauge, histogram, histogram_vec, register_process_metrics};
use ringkv_common::WireError;
use ringkv_proto::api::{Error as ApiError, ErrorCode};

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    retries: IntCounterVec,
    in_flight: IntGauge,
    map_version: IntGauge,
    map_shards: IntGauge,
    map_age: IntGauge,
    /// `None` while the watch stream to placement is open (every change is
    /// pushed: the map is current); else when the router last was in sync.
    out_of_sync_since: Mutex<Option<Instant>>,
    slow_requests: IntCounterVec,
    batch_commands: Histogram,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let r = &registry;
    register_process_metrics(r);
    Metrics {
        requests: counter_vec(
            r,
            "ringkv_router_requests_total",
            "API calls by operation and outcome",
            &["op", "outcome"],
        ),
        duration: histogram_vec(
            r,
            "ringkv_router_request_duration_seconds",
            "API call latency, retries included",
            &["op"],
            prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets"),
        ),
        retries: counter_vec(r, "ringkv_router_retries_total", "Attempts retried, by cause", &["cause"]),
        in_flight: gauge(r, "ringkv_router_in_flight", "Calls in flight"),
        map_version: gauge(r, "ringkv_router_shard_map_version", "Version of the cached shard map"),
        map_shards: gauge(r, "ringkv_router_shard_map_shards", "Shards in the cached shard map"),
        map_age: gauge(
            r,
            "ringkv_router_shard_map_age_seconds",
            "Seconds the router has been out of sync with placement (0 while its watch stream is open)",
        ),
        slow_requests: counter_vec(
            r,
            "ringkv_router_slow_requests_total",
            "API calls slower than --slow-request-ms (each logged once)",
            &["op"],
        ),
        batch_commands: histogram(
            r,
            "ringkv_router_batch_commands_per_message",
            "Calls per message sent on a storenode's ShardKv Batch stream",
            prometheus::exponential_buckets(1.0, 2.0, 11).expect("valid buckets"),
        ),
        out_of_sync_since: Mutex::new(Some(Instant::now())),
        registry,
    }
});

/// Records one call of `op` that started at `start`.
pub fn observe<T>(op: &str, start: Instant, r: &Result<T, ApiError>) {
    let outcome = match r {
        Ok(_) => "ok",
        Err(e) => match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown) {
            ErrorCode::InvalidArgument | ErrorCode::CrossTag => "invalid",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Ambiguous => "ambiguous",
            ErrorCode::Overloaded => "shed",
            ErrorCode::Unknown => "error",
        },
    };
    let took = start.elapsed();
    METRICS.requests.with_label_values(&[op, outcome]).inc();
    METRICS.duration.with_label_values(&[op]).observe(took.as_secs_f64());
    // Bad input is the caller's error, not the cluster's: not charted as one.
    let failed = !matches!(outcome, "ok" | "invalid");
    crate::console::traffic::TRAFFIC.record(crate::console::traffic::unix_secs(), took, failed);
}

/// The retry cause an attempt's error is counted under.
pub fn retry_cause(e: &WireError) -> &'static str {
    match e {
        WireError::NotLeader { .. } => "not_leader",
        WireError::EpochMismatch(_) => "epoch_mismatch",
        WireError::KeyNotInShard { .. } | WireError::ShardNotFound(_) => "stale_map",
        WireError::Busy(_) => "busy",
        WireError::Ambiguous(_) => "ambiguous",
        _ => "unavailable",
    }
}

/// Counts an attempt that failed with `e` and is retried.
pub fn retried(e: &WireError) {
    METRICS.retries.with_label_values(&[retry_cause(e)]).inc();
}

/// A call in flight, counted until dropped.
pub struct InFlight(());

impl InFlight {
    /// Counts a call in flight.
    pub fn start() -> InFlight {
        METRICS.in_flight.inc();
        InFlight(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        METRICS.in_flight.dec();
    }
}

/// Records the shard map the router installed.
pub fn map_installed(version: u64, shards: usize) {
    METRICS.map_version.set(version as i64);
    METRICS.map_shards.set(shards as i64);
}

/// Records whether the watch stream to placement is open (`true`: the map
/// is current) or has just closed.
pub fn map_in_sync(open: bool) {
    let mut since = METRICS.out_of_sync_since.lock();
    match (open, *since) {
        (true, _) => *since = None,
        (false, None) => *since = Some(Instant::now()),
        (false, Some(_)) => {}
    }
}

/// Records one message sent on a Batch stream carrying `n` calls.
pub fn batch_sent(n: usize) {
    METRICS.batch_commands.observe(n as f64);
}

/// Counts a call of `op` logged as slow.
pub fn count_slow(op: &str) {
    METRICS.slow_requests.with_label_values(&[op]).inc();
}

/// The router's metrics in the Prometheus text format.
pub fn render() -> String {
    let age = METRICS.out_of_sync_since.lock().map_or(0, |t| t.elapsed().as_secs());
    METRICS.map_age.set(age as i64);
    ringkv_common::metrics::render(&METRICS.registry)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_causes_are_the_documented_labels() {
        assert_eq!(retry_cause(&WireError::EpochMismatch(Box::default())), "epoch_mismatch");
        assert_eq!(retry_cause(&WireError::Retryable("x".into())), "unavailable");
        assert_eq!(retry_cause(&WireError::ShardNotFound(3)), "stale_map");
        retried(&WireError::Busy("full".into()));
        let text = render();
        assert!(text.contains("ringkv_router_retries_total{cause=\"busy\"}"), "{text}");
        assert!(text.contains("ringkv_router_shard_map_age_seconds"), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
    }
}
