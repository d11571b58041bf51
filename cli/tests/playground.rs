//! `ringkv playground` as a user runs it: it comes up and serves even when
//! a port it wants is taken (and records the port it used instead), and
//! `playground scale-out` adds a storenode that placement lists UP, that
//! playground.json records, and that stopping the playground stops too;
//! the balancer gives it its share, and `scale-in` decommissions it (its
//! replicas move off, it ends REMOVED) and stops it. `scale-in`'s refusals
//! stop nothing. With Prometheus installed, the playground runs it with the
//! shipped config and rules, and every dashboard query and alert rule of
//! deploy/ evaluates against the real cluster.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{ringkv, run_cli, try_http};
use serde_json::Value;

/// Playgrounds are heavy for a 2-core machine: one test at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

const START_TIMEOUT: Duration = Duration::from_secs(120);
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// A `--port-base` whose 20 ports are free now and lie below the OS's
/// ephemeral range: a port from that range can be taken at any moment as
/// the source port of some outgoing connection (one process's connection to
/// another has taken a port the router was about to bind).
fn port_base() -> u16 {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next().and_then(|p| p.parse::<u16>().ok()))
        .unwrap_or(32768);
    let (from, to) = (10_000u16, low.saturating_sub(20).max(10_001));
    // Start somewhere different in every test process, then walk.
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    let seed = std::process::id() as u64 * 7919 + nanos as u64;
    let span = (to - from) as u64;
    for i in 0..200u64 {
        let base = from + ((seed + i * 97) % span) as u16;
        if (base..base + 20).all(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()) {
            return base;
        }
    }
    panic!("no 20 free ports in a row between {from} and {to}")
}

/// A [`port_base`] whose first port this test holds with a listener (a
/// port can be taken between the look and the bind: then another base).
fn held_port_base() -> (TcpListener, u16) {
    for _ in 0..50 {
        let base = port_base();
        if let Ok(l) = TcpListener::bind(("127.0.0.1", base)) {
            return (l, base);
        }
    }
    panic!("could not hold the first port of a free --port-base")
}

/// Whether `pid` runs (an exited but unreaped process does not).
fn alive(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    stat.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()).is_some_and(|s| s != 'Z' && s != 'X')
}

/// Whether `pid` is a `ringkv` process working in `dir` (so that cleanup
/// never signals a process that merely reused a recorded pid).
fn is_ringkv_in(pid: u32, dir: &Path) -> bool {
    let Ok(raw) = std::fs::read(format!("/proc/{pid}/cmdline")) else { return false };
    let args = String::from_utf8_lossy(&raw);
    // The playground's Prometheus is not `ringkv` but works in `dir` too.
    let ours = args.contains("ringkv") || args.contains("prometheus");
    alive(pid) && ours && args.contains(&*dir.to_string_lossy())
}

fn signal(pid: u32, sig: libc::c_int) {
    let Ok(p) = libc::pid_t::try_from(pid) else { return };
    if p > 1 {
        // SAFETY: kill(2) has no memory effects.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// A `ringkv playground` process and its directory. Dropped, it stops the
/// playground (SIGTERM, then SIGKILL) and then anything playground.json
/// still lists, so no process outlives the test, pass or fail.
struct Playground {
    child: Option<Child>,
    dir: PathBuf,
    out: PathBuf,
}

impl Playground {
    fn start(root: &Path, args: &[String]) -> Playground {
        let dir = root.join("pg");
        let out = root.join("playground.out");
        let f = File::create(&out).expect("output file");
        let child = ringkv()
            .arg("playground")
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdin(Stdio::null())
            .stdout(f.try_clone().expect("output file"))
            .stderr(f)
            .spawn()
            .expect("start ringkv playground");
        Playground { child: Some(child), dir, out }
    }

    fn output(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Until it says it is up; panics (with its output) if it exits or times out.
    fn wait_up(&mut self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if self.output().contains("ringkv playground is up") {
                return;
            }
            let exited = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten());
            assert!(exited.is_none(), "the playground exited ({exited:?}):\n{}", self.output());
            assert!(Instant::now() < deadline, "the playground is not up after {START_TIMEOUT:?}:\n{}", self.output());
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn procs(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(self.dir.join("playground.json")).expect("playground.json");
        serde_json::from_str::<Value>(&text).expect("JSON").as_array().expect("a list").clone()
    }

    fn find(&self, role: &str, id: u64) -> Option<Value> {
        self.procs().into_iter().find(|p| p["role"] == role && p["id"] == id)
    }

    fn addr(&self, role: &str) -> String {
        let addrs: Vec<String> = self
            .procs()
            .iter()
            .filter(|p| p["role"] == role)
            .map(|p| p["grpc"].as_str().expect("grpc address").to_string())
            .collect();
        addrs.join(",")
    }

    /// SIGTERM (what Ctrl-C does), then waits for it to finish stopping.
    fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        signal(child.id(), libc::SIGTERM);
        let deadline = Instant::now() + STOP_TIMEOUT;
        loop {
            if let Some(st) = child.try_wait().expect("wait") {
                return st;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!("the playground did not stop within {STOP_TIMEOUT:?}:\n{}", self.output());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Playground {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(child.id(), libc::SIGTERM);
            if !wait_gone(child.id(), STOP_TIMEOUT) {
                let _ = child.kill();
            }
            let _ = child.wait();
        }
        let listed = std::fs::read_to_string(self.dir.join("playground.json")).unwrap_or_default();
        let listed: Vec<Value> = serde_json::from_str(&listed).unwrap_or_default();
        for pid in listed.iter().filter_map(|p| p["pid"].as_u64()).filter_map(|p| u32::try_from(p).ok()) {
            if is_ringkv_in(pid, &self.dir) {
                signal(pid, libc::SIGKILL);
                wait_gone(pid, Duration::from_secs(5));
            }
        }
        if std::thread::panicking() {
            eprintln!("--- playground output ---\n{}", self.output());
            for p in &listed {
                let log = p["log"].as_str().map(|l| std::fs::read_to_string(l).unwrap_or_default()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(20).collect();
                eprintln!("--- {} {} ---", p["role"], p["id"]);
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

#[test]
fn playground_serves_when_a_port_it_wants_is_taken_and_records_the_fallback() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().expect("tempdir");
    // The playground wants port-base for placement 1's gRPC: hold it.
    let (held, base) = held_port_base();
    let args: Vec<String> =
        ["--placement", "1", "--storenodes", "1", "--shards", "2", "--port-base", &base.to_string()]
            .map(String::from)
            .into();
    let mut pg = Playground::start(root.path(), &args);
    pg.wait_up();

    let placement = pg.find("placement", 1).expect("placement 1 in playground.json");
    let grpc = placement["grpc"].as_str().expect("grpc");
    assert_ne!(grpc, format!("127.0.0.1:{base}"), "the taken port is not recorded");
    let out = pg.output();
    assert!(out.contains(&format!("port {base} (placement 1 gRPC) is in use: using {grpc} instead")), "{out}");
    assert!(out.contains(&format!("RINGKV_PLACEMENT={grpc}")), "the export line names the real address: {out}");

    let router = pg.addr("router");
    let env = [("RINGKV_ROUTER", router.as_str()), ("RINGKV_PLACEMENT", grpc)];
    let (ok, _, err) = run_cli(&["put", "hello", "world"], &env);
    assert!(ok, "put: {err}");
    let (ok, value, err) = run_cli(&["get", "hello"], &env);
    assert!(ok, "get: {err}");
    assert_eq!(value.trim(), "world");
    let (ok, nodes, err) = run_cli(&["node", "list", "-o", "json"], &env);
    assert!(ok && nodes.contains("\"up\""), "the CLI reaches placement on the fallback port: {nodes}{err}");

    assert!(pg.stop().success(), "{}", pg.output());
    drop(held);
}

#[test]
fn scale_out_adds_a_storenode_that_stopping_the_playground_stops_too() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().expect("tempdir");
    let base = port_base();
    let args: Vec<String> =
        ["--placement", "1", "--storenodes", "3", "--shards", "4", "--port-base", &base.to_string()]
            .map(String::from)
            .into();
    let mut pg = Playground::start(root.path(), &args);
    pg.wait_up();
    let dir = pg.dir.to_str().expect("utf-8 path").to_string();
    let env = [("RINGKV_PLACEMENT", pg.addr("placement"))];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();

    let (ok, out, err) = run_cli(&["playground", "scale-out", "--storenodes", "1", "--dir", &dir], &[]);
    assert!(ok, "scale-out: {out}{err}");
    assert!(out.contains("storenode 4 is up"), "{out}");
    let added = pg.find("storenode", 4).expect("storenode 4 recorded in playground.json");
    let pid = u32::try_from(added["pid"].as_u64().expect("pid")).expect("a pid");
    assert!(alive(pid), "the added storenode outlives the scale-out command");
    assert!(added["log"].as_str().is_some_and(|l| l.ends_with("logs/storenode-4.log")), "{added}");
    // The playground's Prometheus (where installed) scrapes it from now on.
    let targets = pg.dir.join("prometheus/targets/storenode.json");
    if on_path("prometheus") {
        let sd = std::fs::read_to_string(&targets).expect("the storenodes' file_sd targets");
        assert!(sd.contains(added["http"].as_str().expect("http")), "{sd}");
    }

    let (ok, nodes, err) = run_cli(&["node", "list", "-o", "json"], &env);
    assert!(ok, "{err}");
    let nodes: Value = serde_json::from_str(&nodes).expect("JSON");
    let node4 = nodes.as_array().and_then(|n| n.iter().find(|n| n["id"] == 4)).expect("node 4 listed");
    assert_eq!(node4["state"], "up", "{nodes}");
    assert_eq!(node4["address"], added["grpc"]);

    // scale-in refusals stop nothing. A node that is not a storenode here:
    let (ok, _, err) = run_cli(&["playground", "scale-in", "--node", "42", "--dir", &dir], &[]);
    assert!(!ok && err.contains("node 42 is not a storenode of the playground"), "{err}");
    assert!(err.contains("1, 2, 3, 4"), "lists the storenodes: {err}");
    // A node placement refuses to decommission (here: one it never saw,
    // recorded by hand with a process that must survive).
    let sleeper = common::Kids(vec![std::process::Command::new("sleep").arg("600").spawn().expect("spawn sleep")]);
    let mut procs = pg.procs();
    let mut fake = added.clone();
    fake["id"] = 99.into();
    fake["pid"] = sleeper.0[0].id().into();
    procs.push(fake);
    std::fs::write(pg.dir.join("playground.json"), serde_json::to_string_pretty(&procs).expect("JSON"))
        .expect("write playground.json");
    let (ok, _, err) = run_cli(&["playground", "scale-in", "--node", "99", "--dir", &dir], &[]);
    assert!(!ok, "refused");
    assert!(
        err.contains("placement refused to decommission storenode 99: NotFound: node 99 is not registered"),
        "{err}"
    );
    assert!(err.contains("nothing was stopped"), "{err}");
    assert!(alive(sleeper.0[0].id()) && alive(pid), "nothing was stopped");
    assert!(pg.find("storenode", 99).is_some(), "playground.json unchanged");

    // The balance is visible: node 4 gets its share of the 12 replicas.
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (_, out, _) = run_cli(&["cluster", "status", "-o", "json"], &env);
        let st: Value = serde_json::from_str(&out).unwrap_or_default();
        let on4 = st["loads"].as_array().and_then(|l| l.iter().find(|l| l["node"] == 4)).map(|l| l["replicas"].clone());
        if st["balanced"] == true && on4 == Some(3.into()) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 4 never got its share: {out}");
        std::thread::sleep(Duration::from_millis(500));
    }
    // scale-in: decommission moves them off, the node ends REMOVED, its process stops.
    let (ok, out, err) = run_cli(&["playground", "scale-in", "--node", "4", "--dir", &dir], &[]);
    assert!(ok, "scale-in: {out}{err}");
    assert!(wait_gone(pid, Duration::from_secs(15)), "scale-in stopped storenode 4 (pid {pid})");
    assert!(pg.find("storenode", 4).is_none(), "storenode 4 dropped from playground.json");
    let (_, nodes, _) = run_cli(&["node", "list", "-o", "json"], &env);
    let nodes: Value = serde_json::from_str(&nodes).expect("JSON");
    let node4 = nodes.as_array().and_then(|n| n.iter().find(|n| n["id"] == 4)).expect("node 4 listed");
    assert_eq!(node4["state"], "removed", "{nodes}");

    // Stopping the playground stops what scale-out added.
    let (ok, out, err) = run_cli(&["playground", "scale-out", "--storenodes", "1", "--dir", &dir], &[]);
    assert!(ok, "scale-out: {out}{err}");
    // (The next id is above every id recorded, the hand-made 99 included.)
    let added = pg
        .procs()
        .into_iter()
        .find(|p| p["role"] == "storenode" && ![1, 2, 3, 99].contains(&p["id"].as_u64().unwrap_or(0)))
        .expect("the new storenode recorded");
    let pid = u32::try_from(added["pid"].as_u64().expect("pid")).expect("a pid");
    assert!(pg.stop().success(), "{}", pg.output());
    assert!(wait_gone(pid, Duration::from_secs(5)), "stopping the playground stopped the added storenode (pid {pid})");
    assert!(alive(sleeper.0[0].id()), "a recorded pid that is not a ringkv process of the playground is left alone");
}

#[test]
fn scale_commands_without_a_playground_say_so() {
    let root = tempfile::tempdir().expect("tempdir");
    let dir = root.path().to_str().expect("utf-8 path");
    for args in
        [["playground", "scale-out", "--dir", dir].as_slice(), &["playground", "scale-in", "--node", "1", "--dir", dir]]
    {
        let (ok, _, err) = run_cli(args, &[]);
        assert!(!ok && err.contains("no playground in") && err.contains("playground.json does not exist"), "{err}");
    }
}

/// The repository's root (deploy/ and docs/ live there).
fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

/// Runs `cmd` with `args` from the repository root; panics with its output
/// unless it succeeds.
fn must_succeed(cmd: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(cmd)
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {cmd}: {e}"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// `s` percent-encoded for a URL's query string.
fn url_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A Prometheus HTTP API answer (`GET path`), as JSON; `None` until it answers.
fn prom_get(addr: &str, path: &str) -> Option<Value> {
    let (status, body) = try_http("GET", addr, path, b"").ok()?;
    let v: Value = serde_json::from_slice(&body).ok()?;
    (status == 200 || v["status"] == "error").then_some(v)
}

/// An instant query: the result vector, or the error Prometheus gave.
fn prom_query(addr: &str, query: &str) -> Result<Vec<Value>, String> {
    let v = prom_get(addr, &format!("/api/v1/query?query={}", url_encode(query)))
        .ok_or_else(|| "no answer from Prometheus".to_string())?;
    if v["status"] != "success" {
        return Err(format!("{}: {}", v["errorType"], v["error"]));
    }
    Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
}

/// Polls `f` every 500 ms until it is `Some` or `timeout` passes.
fn poll<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The metric names an expression reads (`ringkv_*`, `process_*`; a
/// histogram's `_bucket` series by their own names).
fn metric_names(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while i < b.len() {
        let starts = expr[i..].starts_with("ringkv_") || expr[i..].starts_with("process_");
        let boundary = i == 0 || !(b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if starts && boundary {
            let end = expr[i..].find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).map_or(b.len(), |e| i + e);
            out.push(expr[i..end].to_string());
            i = end;
        } else {
            i += 1;
        }
    }
    out
}

/// Whether a query may rightly return nothing on a healthy, lightly loaded
/// cluster: a threshold (an alert's condition, a `== 1` filter), the
/// alerts themselves, or errors by outcome.
fn may_be_empty(query: &str) -> bool {
    let mut outside = String::new();
    let mut depth = 0;
    for c in query.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if depth == 0 => outside.push(c),
            _ => {}
        }
    }
    ["<", ">", "==", "!="].iter().any(|op| outside.contains(op))
        || query.contains("ALERTS")
        || query.contains("outcome=~")
}

#[test]
fn the_shipped_alerts_and_dashboards_evaluate_against_a_playgrounds_prometheus() {
    if !on_path("prometheus") || !on_path("promtool") {
        eprintln!("skipping: prometheus/promtool not installed (scripts/setup.sh installs Debian's prometheus)");
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The files themselves: configs load, rules parse, the rules' unit
    // tests pass, dashboards are well formed and name only exported metrics.
    must_succeed("promtool", &["check", "config", "deploy/prometheus/prometheus.yml"]);
    must_succeed("promtool", &["check", "config", "deploy/prometheus/prometheus-compose.yml"]);
    must_succeed("promtool", &["check", "rules", "deploy/prometheus/alerts.yml"]);
    must_succeed("promtool", &["test", "rules", "deploy/prometheus/alerts_test.yml"]);
    must_succeed("python3", &["deploy/check_dashboards.py"]);
    must_succeed("python3", &["deploy/grafana/gen_dashboards.py", "--check"]);
    let listed = must_succeed("python3", &["deploy/check_dashboards.py", "--list-queries"]);
    let queries: Vec<Value> = listed.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(queries.len() > 100, "dashboard and alert queries listed: {}", queries.len());

    let root = tempfile::tempdir().expect("tempdir");
    let base = port_base().to_string();
    let args: Vec<String> =
        ["--placement", "3", "--storenodes", "3", "--shards", "4", "--port-base", &base].map(String::from).into();
    let mut pg = Playground::start(root.path(), &args);
    pg.wait_up();
    let prom = pg.procs().into_iter().find(|p| p["role"] == "prometheus").expect("prometheus in playground.json");
    let prom = prom["http"].as_str().expect("its address").to_string();
    assert!(pg.output().contains(&format!("prometheus    http://{prom}")), "{}", pg.output());

    // Every process scraped and up: 3 placement, 3 storenodes, 1 router.
    poll(Duration::from_secs(90), "every target up", || {
        let t = prom_get(&prom, "/api/v1/targets")?;
        let active = t["data"]["activeTargets"].as_array()?.clone();
        (active.len() == 7 && active.iter().all(|a| a["health"] == "up")).then_some(())
    });
    // Some traffic once every process is scraped, so that request series
    // exist and grow between scrapes.
    let router = pg.addr("router");
    let (ok, _, err) = run_cli(
        &["bench", "--router", &router, "--duration", "2", "--clients", "4", "--keys", "2000", "--value-size", "64"],
        &[],
    );
    assert!(ok, "bench: {err}");

    // Rates need two scrapes after the traffic; every rule evaluated once.
    poll(Duration::from_secs(60), "request rates", || {
        let r = prom_query(&prom, "sum(rate(ringkv_router_requests_total[1m])) > 0").ok()?;
        (!r.is_empty()).then_some(())
    });
    let rules = poll(Duration::from_secs(60), "every alert rule evaluated", || {
        let v = prom_get(&prom, "/api/v1/rules")?;
        let rules: Vec<Value> = v["data"]["groups"]
            .as_array()?
            .iter()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        let evaluated = rules.iter().all(|r| r["lastEvaluation"].as_str().is_some_and(|t| !t.starts_with("0001")));
        (!rules.is_empty() && evaluated).then_some(rules)
    });
    let unhealthy: Vec<String> =
        rules.iter().filter(|r| r["health"] != "ok").map(|r| format!("{}: {}", r["name"], r["lastError"])).collect();
    assert!(unhealthy.is_empty(), "alert rules failing to evaluate: {unhealthy:#?}");

    // Every query parses and runs; one that reads only series the cluster
    // exports and sets no threshold must return data.
    let present: Vec<String> = prom_query(&prom, r#"count by (__name__) ({__name__=~"ringkv_.+|process_.+"})"#)
        .expect("metric names")
        .iter()
        .filter_map(|s| s["metric"]["__name__"].as_str().map(String::from))
        .collect();
    // Every metric of the catalogue is exported, but those whose series
    // appear with their first event (a label per cause, kind or phase).
    let sparse = [
        "ringkv_router_retries_total",
        "ringkv_router_slow_requests_total",
        "ringkv_storenode_slow_requests_total",
        "ringkv_raft_snapshots_total",
        "ringkv_raft_snapshot_duration_seconds",
        "ringkv_raft_snapshots_in_progress",
        "ringkv_placement_operators_total",
        "ringkv_placement_leader_transfers_total",
        "ringkv_placement_splits_total",
        "ringkv_shard_proposals_dropped_total",
    ];
    let catalogue = std::fs::read_to_string(repo_root().join("docs/metrics.md")).expect("docs/metrics.md");
    let documented: Vec<&str> = catalogue
        .lines()
        .filter_map(|l| l.strip_prefix("| `")?.split(['`', '{']).next())
        .filter(|n| n.starts_with("ringkv_"))
        .collect();
    assert!(documented.len() > 60, "metrics in the catalogue: {documented:?}");
    let missing: Vec<&&str> = documented
        .iter()
        .filter(|d| !sparse.contains(d))
        .filter(|d| !present.iter().any(|p| p == *d || *p == format!("{d}_bucket")))
        .collect();
    assert!(missing.is_empty(), "documented in docs/metrics.md but not exported: {missing:?}");
    // Rates need two scrapes of every series: poll until the queries
    // expected to return data all do (or the deadline names those that
    // never did).
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let (mut failed, mut empty, mut checked) = (Vec::new(), Vec::new(), 0);
        for q in &queries {
            let (query, panel) = (q["query"].as_str().unwrap_or_default(), q["panel"].as_str().unwrap_or_default());
            let exported = metric_names(query).iter().all(|m| {
                let base = m.strip_suffix("_bucket").unwrap_or(m);
                present.iter().any(|p| p == m || p.starts_with(base))
            });
            let expected = exported && !may_be_empty(query);
            match prom_query(&prom, query) {
                Err(e) => failed.push(format!("{panel}: {query}: {e}")),
                Ok(r) if r.is_empty() && expected => empty.push(format!("{panel}: {query}")),
                Ok(_) => {}
            }
            checked += usize::from(expected);
        }
        assert!(failed.is_empty(), "queries Prometheus refuses: {failed:#?}");
        assert!(checked > 80, "only {checked} queries were expected to return data");
        if empty.is_empty() {
            break;
        }
        assert!(Instant::now() < deadline, "queries with no series where the cluster exports them: {empty:#?}");
        std::thread::sleep(Duration::from_secs(2));
    }

    // A healthy cluster raises nothing critical (the disk alerts speak of
    // the machine the test runs on, which may well be short of space).
    let firing = prom_query(&prom, r#"ALERTS{severity="critical", alertname!~"RingkvDiskFree.*"}"#).expect("ALERTS");
    assert!(firing.is_empty(), "critical alerts on a healthy playground: {firing:#?}");
    pg.stop();
}

/// The shell blocks of docs/ marked ```` ```sh playground ````, in file order.
fn playground_blocks() -> Vec<(String, String)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo_root().join("docs"))
        .expect("docs/")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "md"))
        .collect();
    files.push(repo_root().join("README.md"));
    files.sort();
    let mut blocks = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read a doc");
        let mut block: Option<String> = None;
        for line in text.lines() {
            match (&mut block, line.trim_start()) {
                (None, l) if l.starts_with("```sh playground") => block = Some(String::new()),
                (Some(b), l) if l.starts_with("```") => {
                    let name = f.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
                    blocks.push((name, std::mem::take(b)));
                    block = None;
                }
                (Some(b), _) => {
                    b.push_str(line);
                    b.push('\n');
                }
                (None, _) => {}
            }
        }
    }
    blocks
}

#[test]
fn the_docs_commands_marked_for_a_playground_run_against_one() {
    let blocks = playground_blocks();
    assert!(blocks.len() >= 5, "marked blocks: {}", blocks.len());
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let root = tempfile::tempdir().expect("tempdir");
    let base = port_base().to_string();
    let args: Vec<String> =
        ["--placement", "3", "--storenodes", "3", "--shards", "4", "--port-base", &base, "--no-prometheus"]
            .map(String::from)
            .into();
    let mut pg = Playground::start(root.path(), &args);
    pg.wait_up();
    let router = pg.find("router", 1).expect("the router");
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_ringkv")).parent().expect("the binary's directory").to_path_buf();
    let path = std::env::join_paths(
        std::iter::once(bin_dir).chain(std::env::var_os("PATH").iter().flat_map(std::env::split_paths)),
    )
    .expect("PATH");
    for (file, block) in &blocks {
        let out = std::process::Command::new("bash")
            .args(["-euo", "pipefail", "-c", block])
            .env("PATH", &path)
            .env("RINGKV_ROUTER", router["grpc"].as_str().expect("grpc"))
            .env("RINGKV_ROUTER_HTTP", router["http"].as_str().expect("http"))
            .env("RINGKV_PLACEMENT", pg.addr("placement"))
            .env("RINGKV_PLAYGROUND_DIR", &pg.dir)
            .stdin(Stdio::null())
            .output()
            .expect("run bash");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "a block of docs/{file} fails:\n{block}\n--- output ---\n{text}");
    }
    pg.stop();
}
