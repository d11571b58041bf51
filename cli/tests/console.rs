//! The router's web console against a real cluster (1 placement member, 3
//! storenodes, 8 shards, a router): its JSON lists every shard of
//! placement's map, led, and every storenode; its traffic ring has the
//! test's own calls; a router whose placement is gone answers a JSON error,
//! not a panic; `ringkv shard list` and `cluster status` print the same
//! shards and summary. Then Debian's `chromium`, headless, loads `/ui` and the
//! test reads the DOM it rendered: one shards-table row per shard with the
//! right ids, and every storenode in the nodes table. Without `chromium` on
//! PATH the browser part is skipped, saying so.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{eventually, free_addr, run_cli, try_http, TestCluster};
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::GetShardMapRequest;
use serde_json::Value;

const SHARDS: u64 = 8;

/// How long chromium may take to load, run the page's polls and dump the DOM.
const BROWSER_TIMEOUT: Duration = Duration::from_secs(90);

/// `GET path` on `addr` as JSON, with its status; `None` if the router
/// cannot be reached or does not answer JSON.
async fn get_json(addr: &str, path: &str) -> Option<(u16, Value)> {
    let (addr, path) = (addr.to_string(), path.to_string());
    let (status, body) = tokio::task::spawn_blocking(move || try_http("GET", &addr, &path, b"")).await.ok()?.ok()?;
    Some((status, serde_json::from_slice(&body).ok()?))
}

fn ids(v: &Value, list: &str, field: &str) -> BTreeSet<u64> {
    v[list].as_array().map(|a| a.iter().filter_map(|x| x[field].as_u64()).collect()).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_console_shows_every_shard_and_storenode_in_json_and_in_a_browser() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cluster = TestCluster::start(dir.path(), 1, 3, 1, SHARDS);
    cluster.wait_serving(Duration::from_secs(90)).await;
    let http = cluster.router_http[0].clone();

    // The JSON, once every shard is led and fully replicated.
    let view = eventually("the console's JSON to show every shard led", Duration::from_secs(60), || {
        let http = http.clone();
        async move {
            let (status, v) = get_json(&http, "/ui/api/cluster").await?;
            let shards = v["shards"].as_array()?;
            let settled = status == 200
                && shards.len() as u64 == SHARDS
                && shards.iter().all(|s| s["leader_node"].as_u64().is_some_and(|n| n != 0) && s["health"] == "ok");
            settled.then_some(v)
        }
    })
    .await;
    let pc = PlacementClient::new(cluster.placement.clone());
    let map = pc
        .call(Duration::from_secs(5), |mut p| async move { p.get_shard_map(GetShardMapRequest {}).await })
        .await
        .expect("placement's shard map");
    let map_ids: BTreeSet<u64> = map.shards.iter().filter_map(|s| s.shard.as_ref().map(|d| d.id)).collect();
    assert_eq!(ids(&view, "shards", "id"), map_ids, "the console's shards are placement's");
    assert_eq!(view["summary"]["shards"].as_u64(), Some(SHARDS));
    let addresses: BTreeSet<String> = view["nodes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|n| n["address"].as_str().map(String::from))
        .collect();
    assert_eq!(
        addresses,
        cluster.storenodes.iter().cloned().collect::<BTreeSet<String>>(),
        "every storenode, by address"
    );
    for n in view["nodes"].as_array().into_iter().flatten() {
        assert_eq!(n["state"], "up", "node {n}");
        assert_eq!(n["replicas"].as_u64(), Some(SHARDS), "3 nodes, replication factor 3: node {n}");
    }
    let leaders: u64 = view["nodes"].as_array().into_iter().flatten().filter_map(|n| n["leaders"].as_u64()).sum();
    assert_eq!(leaders, SHARDS, "every shard's leader is on one node");
    for s in view["shards"].as_array().into_iter().flatten() {
        let roles: Vec<&str> =
            s["replicas"].as_array().into_iter().flatten().filter_map(|r| r["role"].as_str()).collect();
        assert_eq!(roles, ["voter"; 3], "shard {s}");
    }

    // The CLI, asked now, prints the same shards with the same replicas and
    // health, and the same summary (leaders may move in between: not compared).
    let placement = cluster.placement.join(",");
    let env = [("RINGKV_PLACEMENT", placement.as_str())];
    let (ok, out, err) = run_cli(&["shard", "list", "-o", "json"], &env);
    assert!(ok, "ringkv shard list: {err}");
    let cli: Value = serde_json::from_str(&out).expect("shard list JSON");
    let shape = |shards: &Value| -> BTreeMap<u64, (Value, Value)> {
        shards
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| Some((s["id"].as_u64()?, (s["replicas"].clone(), s["health"].clone()))))
            .collect()
    };
    assert_eq!(shape(&cli), shape(&view["shards"]), "ringkv shard list and the console agree");
    let (ok, out, err) = run_cli(&["cluster", "status", "-o", "json"], &env);
    assert!(ok, "ringkv cluster status: {err}");
    let st: Value = serde_json::from_str(&out).expect("cluster status JSON");
    for field in ["shards", "nodes_up", "nodes_total", "replication_factor", "bootstrapped"] {
        assert_eq!(st[field], view["summary"][field], "cluster status {field}");
    }

    // The traffic ring has the probes wait_serving sent, once their second closed.
    eventually("the traffic ring to count this test's calls", Duration::from_secs(10), || {
        let http = http.clone();
        async move {
            let (_, v) = get_json(&http, "/ui/api/traffic").await?;
            let samples = v["samples"].as_array()?;
            let requests: u64 = samples.iter().filter_map(|s| s["requests"].as_u64()).sum();
            let p99_seen = samples.iter().any(|s| s["p99_us"].as_u64().is_some_and(|p| p > 0));
            (requests >= 2 && p99_seen).then_some(())
        }
    })
    .await;

    // A router whose placement does not answer: a JSON error, with a
    // status that says "try again".
    let lost = free_addr();
    let lost_http = free_addr();
    cluster.procs.start(
        "router-without-placement",
        vec![
            "router".into(),
            "--listen".into(),
            lost,
            "--http".into(),
            lost_http.clone(),
            "--placement".into(),
            free_addr(),
        ],
    );
    let (status, err) = eventually("the router without placement to answer", Duration::from_secs(30), || {
        let lost_http = lost_http.clone();
        async move { get_json(&lost_http, "/ui/api/cluster").await }
    })
    .await;
    assert!(status == 503 || status == 504, "status {status}: {err}");
    assert_eq!(err["error"], "placement_unavailable");
    assert!(err["message"].as_str().is_some_and(|m| m.starts_with("placement ")), "{err}");

    // The page itself, served from the binary.
    let (status, page) = tokio::task::spawn_blocking({
        let http = http.clone();
        move || try_http("GET", &http, "/ui", b"")
    })
    .await
    .expect("join")
    .expect("GET /ui");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<table id=\"shards\">"));

    let Some(chromium) = find_on_path("chromium") else {
        println!("skipping the browser check: chromium not installed (not found on PATH)");
        return;
    };
    let profile = tempfile::tempdir().expect("chromium profile dir");
    let url = format!("http://{http}/ui");
    let dom = tokio::task::spawn_blocking(move || dump_dom(&chromium, profile.path(), &url))
        .await
        .expect("join")
        .unwrap_or_else(|e| panic!("chromium: {e}"));

    let shards = table(&dom, "shards").unwrap_or_else(|| panic!("no shards table in the DOM:\n{dom}"));
    let rows = attr_values(shards, "data-shard");
    assert_eq!(rows.len() as u64, SHARDS, "one row per shard: {rows:?}");
    assert_eq!(rows.iter().copied().collect::<BTreeSet<u64>>(), map_ids, "the rows are placement's shards");
    let nodes = table(&dom, "nodes").unwrap_or_else(|| panic!("no nodes table in the DOM:\n{dom}"));
    assert_eq!(attr_values(nodes, "data-node").len(), cluster.storenodes.len());
    for addr in &cluster.storenodes {
        assert!(nodes.contains(addr.as_str()), "storenode {addr} in the nodes table:\n{nodes}");
    }
}

/// The first executable named `name` in PATH.
fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0))
}

/// Kills the browser and its helper processes (renderer, zygote: one
/// process group, which it leads) on every path out of the test, a panic
/// included.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(pgid) = i32::try_from(self.0.id()) {
            // SAFETY: kill(2) on the group this test started; no memory is involved.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The DOM of `url` after chromium ran its scripts for 15 s of virtual time
/// (several 2 s polls); an error if it fails or takes longer than
/// [`BROWSER_TIMEOUT`].
fn dump_dom(chromium: &Path, profile: &Path, url: &str) -> Result<String, String> {
    let child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", "--virtual-time-budget=15000", url])
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", chromium.display()))?;
    let mut guard = KillOnDrop(child);
    // Read both pipes on threads so a chatty chromium never blocks on a full pipe.
    let mut out = guard.0.stdout.take().ok_or("no stdout pipe")?;
    let mut err = guard.0.stderr.take().ok_or("no stderr pipe")?;
    let out = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = out.read_to_string(&mut s);
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + BROWSER_TIMEOUT;
    let status = loop {
        match guard.0.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Ok(None) => {
                drop(guard);
                return Err(format!("no DOM after {BROWSER_TIMEOUT:?}; stderr:\n{}", err.join().unwrap_or_default()));
            }
            Err(e) => return Err(format!("waiting for chromium: {e}")),
        }
    };
    // Helpers that outlive the browser would hold the pipes open.
    drop(guard);
    let (out, err) = (out.join().unwrap_or_default(), err.join().unwrap_or_default());
    if !status.success() || out.is_empty() {
        return Err(format!("exited {status} with {} bytes of DOM; stderr:\n{err}", out.len()));
    }
    Ok(out)
}

/// The markup of `<table id="ID">` up to its end tag.
fn table<'a>(dom: &'a str, id: &str) -> Option<&'a str> {
    let start = dom.find(&format!("<table id=\"{id}\""))?;
    let len = dom[start..].find("</table>")?;
    Some(&dom[start..start + len])
}

/// Every numeric value of attribute `name` in `html`, in order.
fn attr_values(html: &str, name: &str) -> Vec<u64> {
    let key = format!("{name}=\"");
    html.match_indices(&key)
        .filter_map(|(i, _)| {
            let rest = &html[i + key.len()..];
            rest[..rest.find('"')?].parse().ok()
        })
        .collect()
}

#[test]
fn attribute_values_are_read_from_a_table_only() {
    let dom = r#"<table id="nodes"><tr data-node="1"></tr></table><table id="shards"><tbody><tr data-shard="4" class="x"><td>4</td></tr><tr data-shard="12"></tr></tbody></table>"#;
    let shards = table(dom, "shards").expect("a shards table");
    assert_eq!(attr_values(shards, "data-shard"), vec![4, 12]);
    assert!(attr_values(shards, "data-node").is_empty());
    assert!(table(dom, "operators").is_none());
}
