//! What the router learns about one API call while it routes it: the id it
//! is known by, and each hop (shard-map lookups, every attempt with the
//! storenode's own hops, backoff waits), for the call's span and the
//! slow-request log.
//!
//! A batch call routes several shards in parallel under one id, so the log
//! sits behind a lock; it is taken a few times per attempt, never across an
//! await.

use std::time::Duration;

use parking_lot::Mutex;
use ringkv_common::trace::{self, Hop};
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::Status;

/// One attempt of a call against a storenode.
#[derive(Clone, Debug)]
pub struct AttemptHop {
    /// The shard it was for.
    pub shard: u64,
    /// The storenode it went to (0: none had an address).
    pub node: u64,
    /// Connect, send and wait for the answer.
    pub took: Duration,
    /// `ok`, or the kind of error (`not_leader`, `ambiguous`, ...).
    pub outcome: &'static str,
    /// The storenode's own hops (its `ringkv-timing` answer; empty if it
    /// sent none or an unreadable one).
    pub storenode: Vec<Hop>,
}

#[derive(Debug, Default)]
struct Log {
    route: Duration,
    backoff: Duration,
    attempts: Vec<AttemptHop>,
}

/// The trace of one API call.
#[derive(Debug)]
pub struct CallTrace {
    /// The id the call is known by (see [`ringkv_common::trace`]).
    pub id: String,
    /// The id as metadata, for the storenode (validated once).
    meta: Option<AsciiMetadataValue>,
    log: Mutex<Log>,
}

impl CallTrace {
    /// A trace under `id`.
    pub fn new(id: String) -> CallTrace {
        let meta = AsciiMetadataValue::try_from(id.as_str()).ok();
        CallTrace { id, meta, log: Mutex::new(Log::default()) }
    }

    /// A trace under a fresh id.
    pub fn fresh() -> CallTrace {
        CallTrace::new(fresh_id())
    }

    /// Adds a shard-map lookup.
    pub fn route(&self, d: Duration) {
        self.log.lock().route += d;
    }

    /// Adds a wait between attempts.
    pub fn backoff(&self, d: Duration) {
        self.log.lock().backoff += d;
    }

    /// Records an attempt.
    pub fn attempt(&self, a: AttemptHop) {
        self.log.lock().attempts.push(a);
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> usize {
        self.log.lock().attempts.len()
    }

    /// The shards attempted, in order, without repeats (`1` or `1,4`).
    pub fn shards(&self) -> String {
        let log = self.log.lock();
        let mut seen: Vec<u64> = Vec::new();
        for a in &log.attempts {
            if !seen.contains(&a.shard) {
                seen.push(a.shard);
            }
        }
        seen.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
    }

    /// Total shard-map lookup and backoff time.
    pub fn route_and_backoff(&self) -> (Duration, Duration) {
        let log = self.log.lock();
        (log.route, log.backoff)
    }

    /// Every hop, Server-Timing style: `route;dur=MS`, then per attempt
    /// `attemptN;dur=MS;node=N;shard=S;outcome=O` followed by that attempt's
    /// storenode hops as `attemptN.NAME;dur=MS`, then `backoff;dur=MS`.
    pub fn hops(&self) -> String {
        let log = self.log.lock();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let mut parts = vec![format!("route;dur={:.3}", ms(log.route))];
        for (i, a) in log.attempts.iter().enumerate() {
            let n = i + 1;
            parts.push(format!(
                "attempt{n};dur={:.3};node={};shard={};outcome={}",
                ms(a.took),
                a.node,
                a.shard,
                a.outcome
            ));
            parts.extend(a.storenode.iter().map(|h| format!("attempt{n}.{};dur={:.3}", h.name, h.ms)));
        }
        parts.push(format!("backoff;dur={:.3}", ms(log.backoff)));
        parts.join(", ")
    }
}

/// A fresh request id: 16 random bytes in hex.
pub fn fresh_id() -> String {
    trace::id_from_bytes(rand::random())
}

/// The storenode's hops from its answer's metadata (none if absent or unreadable).
pub fn storenode_hops(meta: &MetadataMap) -> Vec<Hop> {
    meta.get(trace::TIMING_HEADER).and_then(|v| v.to_str().ok()).map(trace::parse_timing).unwrap_or_default()
}

/// Puts the call's id in the metadata of every request of an attempt.
#[derive(Clone, Debug)]
pub struct SendRequestId(pub Option<AsciiMetadataValue>);

impl SendRequestId {
    /// The interceptor for `trace`'s attempts.
    pub fn of(trace: &CallTrace) -> Self {
        SendRequestId(trace.meta.clone())
    }
}

impl Interceptor for SendRequestId {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert(trace::REQUEST_ID_HEADER, v.clone());
        }
        Ok(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hops_list_route_every_attempt_with_its_storenode_hops_and_backoff() {
        let t = CallTrace::new("id-1".into());
        t.route(Duration::from_micros(10));
        t.attempt(AttemptHop {
            shard: 3,
            node: 1,
            took: Duration::from_millis(2),
            outcome: "not_leader",
            storenode: Vec::new(),
        });
        t.backoff(Duration::from_millis(5));
        t.attempt(AttemptHop {
            shard: 3,
            node: 2,
            took: Duration::from_millis(4),
            outcome: "ok",
            storenode: trace::parse_timing("queue;dur=0.100, commit;dur=1.500"),
        });
        assert_eq!(
            t.hops(),
            "route;dur=0.010, attempt1;dur=2.000;node=1;shard=3;outcome=not_leader, \
             attempt2;dur=4.000;node=2;shard=3;outcome=ok, attempt2.queue;dur=0.100, attempt2.commit;dur=1.500, \
             backoff;dur=5.000"
        );
        assert_eq!((t.attempts(), t.shards()), (2, "3".to_string()));
        let names: Vec<String> = trace::parse_timing(&t.hops()).into_iter().map(|h| h.name).collect();
        assert_eq!(names, ["route", "attempt1", "attempt2", "attempt2.queue", "attempt2.commit", "backoff"]);
    }

    #[test]
    fn an_id_that_is_not_metadata_is_not_sent() {
        assert!(SendRequestId::of(&CallTrace::new("fine".into())).0.is_some());
        assert!(SendRequestId::of(&CallTrace::new("not\nfine".into())).0.is_none());
        assert_eq!(fresh_id().len(), 32);
    }
}
