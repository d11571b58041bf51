//! The web console at `/ui`: one page (HTML, CSS and JS embedded in the
//! binary, nothing fetched from elsewhere) that polls two JSON endpoints
//! every two seconds and draws nodes, shards, operators and the router's
//! own qps and p99.
//!
//! - `GET /ui`: the page (`page.html` beside this file).
//! - `GET /ui/api/cluster`: nodes, shards (health first), operators and a
//!   summary, from the same placement calls and rows as the `ringkv` CLI
//!   ([`api`]).
//! - `GET /ui/api/traffic`: this router's requests, errors and p99 per
//!   second over the last five minutes ([`traffic`]). Each router charts
//!   its own traffic; behind a load balancer, one page shows one router.

pub mod api;
pub mod traffic;

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Json;
use ringkv_common::cluster_view::now_ms;
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::{
    ClusterStatusRequest, ClusterStatusResponse, GetShardMapRequest, ListOperatorsRequest, ListOperatorsResponse,
    ShardMap,
};
use tonic::Status;

use self::api::ConsoleError;
use self::traffic::{unix_secs, TRAFFIC, WINDOW_SECS};

/// The page, with its styles and script inline.
const PAGE: &str = include_str!("page.html");

/// How long the cluster endpoint waits for placement: less than the page's
/// poll period would be ideal, but a placement election takes a few
/// seconds, and a late answer beats an error.
const PLACEMENT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone)]
struct Console {
    placement: Arc<PlacementClient>,
}

/// The console's routes, asking `placement` for the cluster's state.
pub fn routes(placement: Arc<PlacementClient>) -> axum::Router {
    axum::Router::new()
        .route("/ui", get(page))
        .route("/ui/", get(page))
        .route("/ui/api/cluster", get(cluster))
        .route("/ui/api/traffic", get(traffic))
        .with_state(Console { placement })
}

async fn page() -> Response {
    ([(header::CONTENT_TYPE, "text/html; charset=utf-8"), (header::CACHE_CONTROL, "no-store")], PAGE).into_response()
}

/// `GET /ui/api/cluster`: [`api::ClusterView`] as JSON, or a JSON error.
async fn cluster(State(c): State<Console>) -> Response {
    let pc = &c.placement;
    // Three reads of placement's leader at once; each is what one CLI
    // command reads.
    let (map, status, ops) = tokio::join!(
        pc.call(PLACEMENT_TIMEOUT, |mut p| async move { p.get_shard_map(GetShardMapRequest {}).await }),
        pc.call(PLACEMENT_TIMEOUT, |mut p| async move { p.cluster_status(ClusterStatusRequest {}).await }),
        pc.call(PLACEMENT_TIMEOUT, |mut p| async move { p.list_operators(ListOperatorsRequest {}).await }),
    );
    match view(map, status, ops) {
        Ok(view) => ([(header::CACHE_CONTROL, "no-store")], Json(view)).into_response(),
        Err(e) => {
            tracing::debug!("console: {e}");
            (e.status(), [(header::CACHE_CONTROL, "no-store")], Json(e.body())).into_response()
        }
    }
}

/// The view of placement's three answers, or the first error among them.
fn view(
    map: Result<ShardMap, Status>,
    status: Result<ClusterStatusResponse, Status>,
    ops: Result<ListOperatorsResponse, Status>,
) -> Result<api::ClusterView, ConsoleError> {
    let map = map.map_err(|s| ConsoleError::placement("shard map", &s))?;
    let status = status.map_err(|s| ConsoleError::placement("cluster status", &s))?;
    let ops = ops.map_err(|s| ConsoleError::placement("operator list", &s))?;
    Ok(api::cluster_view(&map, &status, &ops, now_ms()))
}

/// `GET /ui/api/traffic`: `{"window_secs": 300, "samples": [...]}`, oldest first.
async fn traffic() -> Response {
    let samples = TRAFFIC.samples(unix_secs());
    let body = serde_json::json!({ "window_secs": WINDOW_SECS, "samples": samples });
    ([(header::CACHE_CONTROL, "no-store")], Json(body)).into_response()
}
