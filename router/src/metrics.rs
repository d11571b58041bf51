//! The router's Prometheus metrics: every API call by operation and outcome,
//! and its latency. Served on the HTTP port at /metrics; every call also
//! feeds the console's per-second traffic ring.

use std::sync::LazyLock;
use std::time::Instant;

use prometheus::{Encoder, HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use ringkv_proto::api::{Error as ApiError, ErrorCode};

struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
}

static METRICS: LazyLock<Metrics> = LazyLock::new(|| {
    let registry = Registry::new();
    let requests = IntCounterVec::new(
        Opts::new("ringkv_router_requests_total", "API calls by operation and outcome"),
        &["op", "outcome"],
    )
    .expect("valid metric");
    let duration = HistogramVec::new(
        HistogramOpts::new("ringkv_router_request_duration_seconds", "API call latency, retries included")
            .buckets(prometheus::exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
        &["op"],
    )
    .expect("valid metric");
    registry.register(Box::new(requests.clone())).expect("register");
    registry.register(Box::new(duration.clone())).expect("register");
    Metrics { registry, requests, duration }
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

/// The router's metrics in the Prometheus text format.
pub fn render() -> String {
    let mut buf = Vec::new();
    let _ = prometheus::TextEncoder::new().encode(&METRICS.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
