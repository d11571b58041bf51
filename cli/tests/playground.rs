//! `ringkv playground` as a user runs it: it comes up and serves even when
//! a port it wants is taken (and records the port it used instead), and
//! `playground scale-out` adds a storenode that placement lists UP, that
//! playground.json records, and that stopping the playground stops too;
//! the balancer gives it its share, and `scale-in` decommissions it (its
//! replicas move off, it ends REMOVED) and stops it. `scale-in`'s refusals
//! stop nothing.

mod common;

use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use common::{ringkv, run_cli};
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
    alive(pid) && args.contains("ringkv") && args.contains(&*dir.to_string_lossy())
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

/// A `sleep` child killed when dropped.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
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
    let sleeper = Sleeper(std::process::Command::new("sleep").arg("600").spawn().expect("spawn sleep"));
    let mut procs = pg.procs();
    let mut fake = added.clone();
    fake["id"] = 99.into();
    fake["pid"] = sleeper.0.id().into();
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
    assert!(alive(sleeper.0.id()) && alive(pid), "nothing was stopped");
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
    assert!(alive(sleeper.0.id()), "a recorded pid that is not a ringkv process of the playground is left alone");
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
