//! The HTTP/JSON gateway: `GET/PUT/DELETE /v1/kv/{key}` over the same
//! [`KvService`] as gRPC, with DESIGN.md's status codes (404 missing key, 400
//! bad input, 409 failed compare, 503 unavailable, 504 outcome unknown, 429
//! shed). Keys are the URL path segment (percent-decoded); values are the raw
//! request/response body. `?timeout_ms=` overrides the deadline;
//! `?consistency=follower|stale` relaxes a read; `PUT ...?if_value=V` or
//! `?if_absent=true` makes the write a compare-and-swap. `POST /v1/batch_get`
//! takes JSON `{"keys": [...]}`.
//!
//! A request is known by the caller's `ringkv-request-id` header, else the
//! trace id of a valid W3C `traceparent`, else a fresh id; every answer
//! carries that id back in `ringkv-request-id`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use ringkv_proto::api::compare_and_swap_request::{Expected, New};
use ringkv_proto::api::{BatchGetRequest, CompareAndSwapRequest, Error as ApiError, ErrorCode};
use ringkv_proto::kv::ReadConsistency;
use serde_json::json;

use ringkv_common::trace::TRACEPARENT_HEADER;

use crate::routing::CallOptions;
use crate::service::{trace_from, write_options, KvService, REQUEST_ID_HEADER};
use crate::trace::CallTrace;

/// Deadlines longer than this are clamped.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

/// The gateway's routes, answering through `svc`; `default_timeout` applies
/// when a request has no `?timeout_ms=`.
pub fn routes(svc: KvService, default_timeout: Duration) -> axum::Router {
    axum::Router::new()
        .route("/v1/kv/:key", get(get_key).put(put_key).delete(delete_key))
        .route("/v1/batch_get", post(batch_get))
        .with_state(Gateway { svc, default_timeout })
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchGetBody {
    keys: Vec<String>,
}

/// `POST /v1/batch_get` with `{"keys": ["a", "b"]}`: each key's value (or
/// null when missing, or its own error), read linearizably.
async fn batch_get(
    State(g): State<Gateway>,
    Query(q): Params,
    headers: HeaderMap,
    body: Result<Json<BatchGetBody>, JsonRejection>,
) -> Response {
    let trace = trace_of(&headers);
    let answer = batch_get_inner(g, q, trace.clone(), body).await;
    with_id(&trace, answer)
}

async fn batch_get_inner(
    g: Gateway,
    q: HashMap<String, String>,
    trace: Arc<CallTrace>,
    body: Result<Json<BatchGetBody>, JsonRejection>,
) -> Response {
    let Json(body) = match body {
        Ok(b) => b,
        Err(e) => return bad_request(format!("request body: {}", e.body_text())),
    };
    let opts = match g.deadline(&q) {
        Ok(d) => CallOptions::read(d, trace),
        Err(r) => return r,
    };
    let req = BatchGetRequest {
        keys: body.keys.into_iter().map(String::into_bytes).collect(),
        consistency: ReadConsistency::Linearizable as i32,
    };
    match g.svc.batch_get_at(req, &opts).await {
        Ok(r) => {
            let results: Vec<serde_json::Value> = r
                .results
                .into_iter()
                .map(|k| match k.error {
                    Some(e) => json!({ "key": String::from_utf8_lossy(&k.key), "error": e.message }),
                    None => json!({
                        "key": String::from_utf8_lossy(&k.key),
                        "value": k.found.then(|| String::from_utf8_lossy(&k.value).into_owned()),
                    }),
                })
                .collect();
            (StatusCode::OK, Json(json!({ "results": results }))).into_response()
        }
        Err(e) => error_response(e),
    }
}

#[derive(Clone)]
struct Gateway {
    svc: KvService,
    default_timeout: Duration,
}

type Params = Query<HashMap<String, String>>;

/// A write's options: the `ringkv-request-id` header, if any, makes retries
/// of the same HTTP request apply once.
fn write_opts(headers: &HeaderMap, deadline: Instant, trace: Arc<CallTrace>) -> CallOptions {
    let id = headers.get(REQUEST_ID_HEADER).map(|v| v.as_bytes().to_vec());
    write_options(id, deadline, trace)
}

/// The request's trace, from its `ringkv-request-id` or `traceparent` header.
fn trace_of(headers: &HeaderMap) -> Arc<CallTrace> {
    trace_from(
        headers.get(REQUEST_ID_HEADER).map(|v| v.as_bytes()),
        headers.get(TRACEPARENT_HEADER).map(|v| v.as_bytes()),
    )
}

/// The answer with the request's id in `ringkv-request-id`.
fn with_id(trace: &CallTrace, mut r: Response) -> Response {
    if let Ok(v) = HeaderValue::from_str(&trace.id) {
        r.headers_mut().insert(REQUEST_ID_HEADER, v);
    }
    r
}

fn status_of(e: &ApiError) -> StatusCode {
    match ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown) {
        ErrorCode::InvalidArgument | ErrorCode::CrossTag => StatusCode::BAD_REQUEST,
        ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        ErrorCode::Ambiguous => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Overloaded => StatusCode::TOO_MANY_REQUESTS,
        ErrorCode::Unknown => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_response(e: ApiError) -> Response {
    let code = ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unknown).as_str_name().to_lowercase();
    (status_of(&e), Json(json!({ "error": code, "message": e.message }))).into_response()
}

fn bad_request(msg: impl Into<String>) -> Response {
    error_response(ApiError { code: ErrorCode::InvalidArgument as i32, message: msg.into(), key: Vec::new() })
}

impl Gateway {
    fn deadline(&self, q: &HashMap<String, String>) -> Result<Instant, Response> {
        let t = match q.get("timeout_ms") {
            None => self.default_timeout,
            Some(v) => match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Duration::from_millis(ms).min(MAX_TIMEOUT),
                _ => return Err(bad_request(format!("timeout_ms {v:?}: expected a positive integer"))),
            },
        };
        Ok(Instant::now() + t)
    }
}

async fn get_key(State(g): State<Gateway>, Path(key): Path<String>, Query(q): Params, headers: HeaderMap) -> Response {
    let trace = trace_of(&headers);
    let answer = get_key_inner(g, key, q, trace.clone()).await;
    with_id(&trace, answer)
}

async fn get_key_inner(g: Gateway, key: String, q: HashMap<String, String>, trace: Arc<CallTrace>) -> Response {
    let opts = match g.deadline(&q) {
        Ok(d) => CallOptions::read(d, trace),
        Err(r) => return r,
    };
    let consistency = match q.get("consistency").map(String::as_str) {
        None | Some("linearizable") => ReadConsistency::Linearizable,
        Some("follower") => ReadConsistency::Follower,
        Some("stale") => ReadConsistency::Stale,
        Some(other) => return bad_request(format!("consistency {other:?}: linearizable, follower or stale")),
    };
    match g.svc.get_at(key.into_bytes(), consistency as i32, &opts).await {
        Ok(r) if r.found => (StatusCode::OK, r.value).into_response(),
        Ok(_) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found", "message": "no such key" }))).into_response()
        }
        Err(e) => error_response(e),
    }
}

async fn put_key(
    State(g): State<Gateway>,
    Path(key): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let trace = trace_of(&headers);
    let answer = put_key_inner(g, key, q, &headers, trace.clone(), body).await;
    with_id(&trace, answer)
}

async fn put_key_inner(
    g: Gateway,
    key: String,
    q: HashMap<String, String>,
    headers: &HeaderMap,
    trace: Arc<CallTrace>,
    body: Bytes,
) -> Response {
    let opts = match g.deadline(&q) {
        Ok(d) => write_opts(headers, d, trace),
        Err(r) => return r,
    };
    let expected = match (q.get("if_value"), q.get("if_absent").map(String::as_str)) {
        (Some(v), None) => Some(Expected::ExpectedValue(v.clone().into_bytes())),
        (None, Some("true")) => Some(Expected::ExpectAbsent(true)),
        (None, None) => None,
        _ => return bad_request("use either if_value=V or if_absent=true"),
    };
    let key = key.into_bytes();
    let Some(expected) = expected else {
        return match g.svc.put_at(key, body.to_vec(), &opts).await {
            Ok(_) => StatusCode::NO_CONTENT.into_response(),
            Err(e) => error_response(e),
        };
    };
    let req = CompareAndSwapRequest { key, expected: Some(expected), new: Some(New::NewValue(body.to_vec())) };
    match g.svc.cas_at(req, &opts).await {
        Ok(r) if r.succeeded => StatusCode::NO_CONTENT.into_response(),
        Ok(r) => (
            StatusCode::CONFLICT,
            Json(json!({
                "error": "compare_failed",
                "found": r.found,
                "current_value": String::from_utf8_lossy(&r.current_value),
            })),
        )
            .into_response(),
        Err(e) => error_response(e),
    }
}

async fn delete_key(
    State(g): State<Gateway>,
    Path(key): Path<String>,
    Query(q): Params,
    headers: HeaderMap,
) -> Response {
    let trace = trace_of(&headers);
    let opts = match g.deadline(&q) {
        Ok(d) => write_opts(&headers, d, trace.clone()),
        Err(r) => return with_id(&trace, r),
    };
    with_id(&trace, delete_key_inner(g, key, opts).await)
}

async fn delete_key_inner(g: Gateway, key: String, opts: CallOptions) -> Response {
    match g.svc.delete_at(key.into_bytes(), &opts).await {
        Ok(r) if r.existed => StatusCode::NO_CONTENT.into_response(),
        Ok(_) => {
            (StatusCode::NOT_FOUND, Json(json!({ "error": "not_found", "message": "no such key" }))).into_response()
        }
        Err(e) => error_response(e),
    }
}
