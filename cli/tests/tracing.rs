//! Following a request: a cluster whose router and storenodes log every
//! request as slow (`--slow-request-ms 0`) in JSON (`--log-format json`).
//! A put under a caller's `ringkv-request-id` (gRPC and HTTP) and a get
//! under a W3C `traceparent` come back with their id, and the router's log
//! has exactly one slow-request line for each, naming every hop down to the
//! storenode's commit and apply; a storenode's log has the same id. A
//! malformed `traceparent` gets a fresh id and the request still succeeds.

mod common;

use std::path::Path;
use std::time::Duration;

use common::{free_addr, http_with, metric, scrape, TestCluster};
use ringkv_client::ReadConsistency;
use serde_json::Value;

const START_TIMEOUT: Duration = Duration::from_secs(60);
const LOG_TIMEOUT: Duration = Duration::from_secs(10);
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

/// The JSON lines of a process's log (other lines, e.g. the start banner on
/// stdout, are skipped).
fn json_lines(log: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()).collect()
}

/// The slow-request lines of `log` about request `id`.
fn slow_lines(log: &Path, id: &str) -> Vec<Value> {
    json_lines(log).into_iter().filter(|v| v["message"] == "slow request" && v["request_id"] == id).collect()
}

/// Polls `log` until it has a slow-request line for `id`; then all of them.
async fn wait_slow_lines(log: &Path, id: &str) -> Vec<Value> {
    common::eventually(&format!("a slow-request line for {id} in {}", log.display()), LOG_TIMEOUT, || async {
        let lines = slow_lines(log, id);
        (!lines.is_empty()).then_some(lines)
    })
    .await
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// The hop names of a `hops` field (`name;dur=MS;...`, comma-separated).
fn hop_names(line: &Value) -> Vec<String> {
    let hops = line["hops"].as_str().unwrap_or_default();
    hops.split(',').filter_map(|h| h.trim().split(';').next()).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn requests_are_followed_by_their_id_through_router_and_storenode_logs() {
    let dir = tempfile::tempdir().expect("tempdir");
    let traced = ["--slow-request-ms", "0", "--log-format", "json"];
    let mut cluster = TestCluster::start_with(dir.path(), 1, 3, 0, 4, &["--log-format", "json"], &traced);
    let (grpc, http) = (free_addr(), free_addr());
    let mut args: Vec<String> = vec!["router".into(), "--listen".into(), grpc.clone(), "--http".into(), http.clone()];
    args.extend(["--placement".into(), cluster.placement.join(",")]);
    args.extend(traced.iter().map(|s| s.to_string()));
    cluster.procs.start("router-1", args);
    cluster.routers.push(grpc);
    cluster.router_http.push(http.clone());
    cluster.wait_serving(START_TIMEOUT).await;
    let router_log = dir.path().join("router-1.log");
    let storenode_logs: Vec<_> = (1..=3).map(|i| dir.path().join(format!("storenode-{i}.log"))).collect();

    // A put over gRPC under the caller's id: the id comes back.
    let client = cluster.client().await;
    let put_id = format!("put-{}", std::process::id());
    let put = client.put_traced(b"traced-key", b"v1", Some(&put_id)).await.expect("put");
    assert_eq!(put.request_id, put_id, "the router answers with the caller's id");

    // The router logged it once, with every hop: the route, the attempt(s)
    // and the storenode's own hops of the attempt that answered.
    let lines = wait_slow_lines(&router_log, &put_id).await;
    assert_eq!(lines.len(), 1, "logged exactly once: {lines:?}");
    let line = &lines[0];
    assert_eq!(line["level"], "WARN");
    assert_eq!(line["op"], "put");
    assert_eq!(line["outcome"], "ok");
    let attempts = line["attempts"].as_u64().expect("attempts");
    assert!(attempts >= 1, "{line}");
    for field in ["total_ms", "route_ms", "backoff_ms"] {
        assert!(line[field].as_f64().is_some_and(|ms| ms >= 0.0), "{field} in {line}");
    }
    let names = hop_names(line);
    let last = format!("attempt{attempts}");
    for hop in ["route".to_string(), "attempt1".into(), last.clone(), format!("{last}.queue")] {
        assert!(names.contains(&hop), "{hop} in {names:?}");
    }
    for hop in ["commit", "apply", "total"] {
        assert!(names.contains(&format!("{last}.{hop}")), "the storenode's {hop} in {names:?}");
    }
    assert!(line["hops"].as_str().unwrap_or_default().contains(";outcome=ok"), "{line}");

    // The storenode that served it logged the same id, with its own hops
    // (storenodes that answered earlier attempts "not the leader" logged
    // it too, with their one hop).
    let sn = common::eventually("a storenode log line with the put's id", LOG_TIMEOUT, || async {
        storenode_logs.iter().flat_map(|l| slow_lines(l, &put_id)).find(|v| v["outcome"] == "ok")
    })
    .await;
    assert_eq!(sn["method"], "put");
    let names = hop_names(&sn);
    for hop in ["queue", "commit", "apply", "total"] {
        assert!(names.iter().any(|n| n == hop), "{hop} in {names:?}");
    }

    // HTTP: a put under the caller's id, then a get under a traceparent.
    let http_put_id = format!("http-put-{}", std::process::id());
    let (status, headers, _) =
        http_with("PUT", &http, "/v1/kv/traced-key", &[("ringkv-request-id", &http_put_id)], b"v2");
    assert_eq!(status, 204);
    assert_eq!(header(&headers, "ringkv-request-id"), Some(http_put_id.as_str()));
    assert_eq!(wait_slow_lines(&router_log, &http_put_id).await.len(), 1);

    let traceparent = format!("00-{TRACE_ID}-00f067aa0ba902b7-01");
    let (status, headers, body) = http_with("GET", &http, "/v1/kv/traced-key", &[("traceparent", &traceparent)], b"");
    assert_eq!((status, body.as_slice()), (200, b"v2".as_slice()));
    assert_eq!(header(&headers, "ringkv-request-id"), Some(TRACE_ID), "the trace id of the traceparent");
    let lines = wait_slow_lines(&router_log, TRACE_ID).await;
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["op"], "get");
    let names = hop_names(&lines[0]);
    assert!(
        names.iter().any(|n| n.ends_with(".read_index")) && names.iter().any(|n| n.ends_with(".read")),
        "{names:?}"
    );
    let sn = common::eventually("a storenode log line with the get's trace id", LOG_TIMEOUT, || async {
        storenode_logs.iter().flat_map(|l| slow_lines(l, TRACE_ID)).find(|v| v["outcome"] == "ok")
    })
    .await;
    assert_eq!(sn["method"], "get");
    let names = hop_names(&sn);
    for hop in ["queue", "read_index", "read", "total"] {
        assert!(names.iter().any(|n| n == hop), "{hop} in {names:?}");
    }

    // A malformed traceparent is ignored: a fresh id, and the get succeeds.
    for bad in ["00-00000000000000000000000000000000-00f067aa0ba902b7-01", "ff-not-a-trace", "00-ZZ"] {
        let (status, headers, body) = http_with("GET", &http, "/v1/kv/traced-key", &[("traceparent", bad)], b"");
        assert_eq!((status, body.as_slice()), (200, b"v2".as_slice()), "traceparent {bad:?}");
        let id = header(&headers, "ringkv-request-id").expect("an id is always returned");
        assert!(id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && id != TRACE_ID, "{id}");
        assert_eq!(wait_slow_lines(&router_log, id).await.len(), 1);
    }

    // And over gRPC: a get under the caller's id, read back with it.
    let got = client.get_traced(b"traced-key", ReadConsistency::Linearizable, Some("grpc-get-1")).await.expect("get");
    assert_eq!((got.value.as_deref(), got.request_id.as_str()), (Some(b"v2".as_slice()), "grpc-get-1"));
    let got = client.get_traced(b"traced-key", ReadConsistency::Linearizable, None).await.expect("get");
    assert_eq!(got.request_id.len(), 32, "a fresh id: {}", got.request_id);

    // Every one of them counted.
    let m = scrape(&http);
    assert!(metric(&m, "ringkv_router_slow_requests_total", "op=\"put\"") >= 2, "{m}");
    assert!(metric(&m, "ringkv_router_slow_requests_total", "op=\"get\"") >= 5);
    let sn_puts: u64 = cluster
        .storenode_http
        .iter()
        .map(|h| metric(&scrape(h), "ringkv_storenode_slow_requests_total", "method=\"put\""))
        .sum();
    assert!(sn_puts >= 2, "storenode slow puts: {sn_puts}");
    let raft: String = cluster.storenode_http.iter().map(|h| scrape(h)).collect();
    for h in ["ringkv_raft_propose_commit_duration_seconds_count", "ringkv_raft_read_index_duration_seconds_count"] {
        assert!(metric(&raft, h, "") >= 1, "{h}");
    }
}
