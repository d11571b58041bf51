//! Prometheus plumbing every process shares: constructors that register a
//! metric in a registry as they build it, the series every process exports
//! (the prometheus crate's process collector: CPU, RSS, open fds; and
//! `ringkv_build_info`), and rendering a registry in the text format.
//! docs/metrics.md lists every metric ringkv exports.

use prometheus::core::Collector;
use prometheus::{
    Counter, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

/// Registers `c` in `r` and returns it. Metric names are fixed strings of
/// the calling module: a clash is a programming error, found by any test
/// that builds the registry.
pub fn register<C: Collector + Clone + 'static>(r: &Registry, c: C) -> C {
    r.register(Box::new(c.clone())).expect("unique metric");
    c
}

/// A counter registered in `r`.
pub fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    register(r, IntCounter::new(name, help).expect("valid metric"))
}

/// A counter with labels registered in `r`.
pub fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(r, IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A counter of fractional amounts (seconds) registered in `r`.
pub fn float_counter(r: &Registry, name: &str, help: &str) -> Counter {
    register(r, Counter::new(name, help).expect("valid metric"))
}

/// A gauge of fractional values (rates) with labels registered in `r`.
pub fn float_gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(r, GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A gauge registered in `r`.
pub fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    register(r, IntGauge::new(name, help).expect("valid metric"))
}

/// A gauge with labels registered in `r`.
pub fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(r, IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"))
}

/// A histogram registered in `r`.
pub fn histogram(r: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(r, Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)).expect("valid metric"))
}

/// A histogram with labels registered in `r`.
pub fn histogram_vec(r: &Registry, name: &str, help: &str, labels: &[&str], buckets: Vec<f64>) -> HistogramVec {
    register(r, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels).expect("valid metric"))
}

/// Buckets for durations from 50 µs to ~13 s (doubling): Raft passes and
/// fsyncs at the bottom, a stalled disk or a slow snapshot at the top.
pub fn latency_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.00005, 2.0, 19).expect("valid buckets")
}

/// Buckets for durations from 10 ms to ~20 min: snapshots.
pub fn long_buckets() -> Vec<f64> {
    prometheus::exponential_buckets(0.01, 2.0, 18).expect("valid buckets")
}

/// Registers what every ringkv process exports whatever its role: the
/// process collector (`process_cpu_seconds_total`,
/// `process_resident_memory_bytes`, `process_open_fds`, ...) and
/// `ringkv_build_info{version}`. Several nodes of one test process each
/// register their own (their registries are labelled by node).
pub fn register_process_metrics(r: &Registry) {
    // The process collector only fails to register on a name clash, which
    // the fixed names make impossible; on platforms without /proc it
    // collects nothing.
    let _ = r.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()));
    let info = gauge_vec(r, "ringkv_build_info", "Always 1; the version of the binary", &["version"]);
    info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
}

/// A registry in the Prometheus text format.
pub fn render(r: &Registry) -> String {
    let mut buf = Vec::new();
    // Encoding gathered families into a Vec cannot fail.
    let _ = prometheus::TextEncoder::new().encode(&r.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn process_metrics_and_build_info_render() {
        let r = Registry::new();
        register_process_metrics(&r);
        let text = render(&r);
        assert!(text.contains("ringkv_build_info{version=\""), "{text}");
        #[cfg(target_os = "linux")]
        {
            assert!(text.contains("process_resident_memory_bytes"), "{text}");
            assert!(text.contains("process_open_fds"), "{text}");
        }
    }
}
