//! The router's own traffic, second by second, for the console's live
//! charts: a bounded ring of per-second samples (requests, errors, p99
//! latency) over the last [`WINDOW_SECS`]. Prometheus has the same calls in
//! `/metrics`, but a console that needs no Prometheus must keep its own
//! short history.
//!
//! Every API call records into the current second under one short mutex
//! (an HDR histogram record and two additions; nothing is awaited while it
//! is held). A second is closed, and its p99 read, by the first call or
//! read that sees the clock past it; seconds without a single call are
//! filled in as zeros, so the charts' time axis has no holes.

use std::collections::VecDeque;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use parking_lot::Mutex;
use serde::Serialize;

/// Seconds of history kept: five minutes, what an on-call engineer looks
/// back over before going to Prometheus.
pub const WINDOW_SECS: usize = 300;

/// Latencies above this are counted as this (a call never waits longer than
/// the router's 60 s deadline clamp).
const MAX_LATENCY_US: u64 = 60_000_000;

/// One second of the router's traffic.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Sample {
    /// The second (since the Unix epoch) it covers.
    pub unix_secs: u64,
    /// API calls that finished in it.
    pub requests: u64,
    /// Of those, the ones that failed for a reason other than bad input.
    pub errors: u64,
    /// 99th percentile latency of its calls, in microseconds (0: no call).
    pub p99_us: u64,
}

/// The ring of samples and the second being counted.
pub struct TrafficRing {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The second being counted (0: nothing seen yet).
    second: u64,
    latencies: Histogram<u64>,
    requests: u64,
    errors: u64,
    closed: VecDeque<Sample>,
}

impl Default for TrafficRing {
    fn default() -> Self {
        Self::new()
    }
}

impl TrafficRing {
    /// An empty ring.
    pub fn new() -> TrafficRing {
        // Two significant digits: p99 within 1%, and a few KiB of counters.
        let latencies = Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid constant bounds");
        TrafficRing {
            inner: Mutex::new(Inner {
                second: 0,
                latencies,
                requests: 0,
                errors: 0,
                closed: VecDeque::with_capacity(WINDOW_SECS),
            }),
        }
    }

    /// Counts one call that finished in second `unix_secs` after `latency`.
    pub fn record(&self, unix_secs: u64, latency: Duration, failed: bool) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(MAX_LATENCY_US).clamp(1, MAX_LATENCY_US);
        let mut inner = self.inner.lock();
        inner.roll(unix_secs);
        inner.latencies.saturating_record(us);
        inner.requests += 1;
        inner.errors += u64::from(failed);
    }

    /// The closed seconds before `unix_secs`, oldest first (at most
    /// [`WINDOW_SECS`]).
    pub fn samples(&self, unix_secs: u64) -> Vec<Sample> {
        let mut inner = self.inner.lock();
        inner.roll(unix_secs);
        inner.closed.iter().copied().collect()
    }
}

impl Inner {
    /// Closes the second being counted if `now` is past it. A clock that
    /// stepped back counts into the current second rather than rewriting
    /// history.
    fn roll(&mut self, now: u64) {
        if self.second == 0 {
            self.second = now;
            return;
        }
        if now <= self.second {
            return;
        }
        let p99 = if self.requests == 0 { 0 } else { self.latencies.value_at_quantile(0.99) };
        self.push(Sample { unix_secs: self.second, requests: self.requests, errors: self.errors, p99_us: p99 });
        // Quiet seconds in between, but never more than the window holds
        // (after a long silence, or a clock jump forward).
        let first_gap = (self.second + 1).max(now.saturating_sub(WINDOW_SECS as u64));
        for s in first_gap..now {
            self.push(Sample { unix_secs: s, requests: 0, errors: 0, p99_us: 0 });
        }
        self.second = now;
        self.latencies.reset();
        self.requests = 0;
        self.errors = 0;
    }

    fn push(&mut self, s: Sample) {
        if self.closed.len() == WINDOW_SECS {
            self.closed.pop_front();
        }
        self.closed.push_back(s);
    }
}

/// The router's own ring, fed by [`crate::metrics::observe`].
pub static TRAFFIC: LazyLock<TrafficRing> = LazyLock::new(TrafficRing::new);

/// The current second since the Unix epoch.
pub fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_second_is_closed_with_its_count_errors_and_p99() {
        let ring = TrafficRing::new();
        // 1 ms .. 100 ms, one call each: p99 is 99 ms.
        for i in 1..=100 {
            ring.record(1000, ms(i), i % 10 == 0);
        }
        assert!(ring.samples(1000).is_empty(), "the current second is still open");
        let s = ring.samples(1001);
        assert_eq!(s.len(), 1);
        assert_eq!((s[0].unix_secs, s[0].requests, s[0].errors), (1000, 100, 10));
        let p99 = s[0].p99_us as f64;
        assert!((p99 - 99_000.0).abs() <= 99_000.0 * 0.01, "p99 {p99}us, expected 99ms within 1%");
    }

    #[test]
    fn one_slow_call_in_a_hundred_does_not_make_the_p99_but_two_do() {
        let ring = TrafficRing::new();
        for i in 0..100 {
            ring.record(5, ms(if i == 0 { 2000 } else { 1 }), false);
        }
        for i in 0..100 {
            ring.record(6, ms(if i < 2 { 2000 } else { 1 }), false);
        }
        let s = ring.samples(7);
        assert!(s[0].p99_us < 1_100, "second 5: p99 {}us", s[0].p99_us);
        assert!(s[1].p99_us > 1_900_000, "second 6: p99 {}us", s[1].p99_us);
    }

    #[test]
    fn quiet_seconds_are_zeros_and_the_ring_keeps_only_the_window() {
        let ring = TrafficRing::new();
        ring.record(100, ms(3), false);
        ring.record(103, ms(3), false);
        let s = ring.samples(104);
        let secs: Vec<u64> = s.iter().map(|x| x.unix_secs).collect();
        assert_eq!(secs, vec![100, 101, 102, 103]);
        assert_eq!(s.iter().map(|x| x.requests).collect::<Vec<_>>(), vec![1, 0, 0, 1]);
        assert_eq!(s[1].p99_us, 0);

        // Long after: only the last WINDOW_SECS seconds, contiguous, ending
        // just before now.
        let now = 104 + 10 * WINDOW_SECS as u64;
        let s = ring.samples(now);
        assert_eq!(s.len(), WINDOW_SECS);
        assert_eq!(s.last().map(|x| x.unix_secs), Some(now - 1));
        assert!(s.windows(2).all(|w| w[1].unix_secs == w[0].unix_secs + 1));
        assert!(s.iter().all(|x| x.requests == 0));
    }

    #[test]
    fn samples_roll_over_one_at_a_time() {
        let ring = TrafficRing::new();
        for sec in 1..=(WINDOW_SECS as u64 + 5) {
            ring.record(sec, ms(1), false);
        }
        let s = ring.samples(WINDOW_SECS as u64 + 6);
        assert_eq!(s.len(), WINDOW_SECS);
        assert_eq!(s.first().map(|x| x.unix_secs), Some(6), "the 5 oldest seconds rolled off");
        assert!(s.iter().all(|x| x.requests == 1));
    }

    #[test]
    fn a_clock_step_back_counts_into_the_open_second() {
        let ring = TrafficRing::new();
        ring.record(50, ms(1), false);
        ring.record(49, ms(1), false);
        let s = ring.samples(51);
        assert_eq!(s, vec![Sample { unix_secs: 50, requests: 2, errors: 0, p99_us: s[0].p99_us }]);
    }
}
