//! Shared by the multi-process tests: real `ringkv` processes on 127.0.0.1
//! ports picked free, their logs in the test's temporary directory, and a
//! guard that kills every one of them when the test ends, pass or fail (and
//! prints the tail of each log when it failed).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs::File;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ringkv_chaos::layout::Layout;
use ringkv_client::Client;
use ringkv_common::placement_client::PlacementClient;
use ringkv_proto::placement::ClusterStatusRequest;
pub use ringkv_storenode::testkit::eventually;

pub fn ringkv() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ringkv"))
}

/// A loopback port that is free now and that this test process has not
/// handed out before: the OS may return a port it just gave (and that was
/// closed again) for the next bind of port 0, and two processes of one test
/// cluster given the same port fail to start (seen: a router and a placement
/// member both on 127.0.0.1:43207).
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
    panic!("no loopback port left that this process has not handed out")
}

pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

struct Proc {
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// Children (not ringkv's: etcd, `sleep`, or ringkv with its own
/// environment) killed when dropped, whatever the test's outcome.
pub struct Kids(pub Vec<Child>);

impl Drop for Kids {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Named processes that can be killed and restarted with the same arguments.
pub struct Procs {
    dir: PathBuf,
    procs: BTreeMap<String, Proc>,
}

impl Procs {
    pub fn new(dir: &Path) -> Procs {
        Procs { dir: dir.to_path_buf(), procs: BTreeMap::new() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn start(&mut self, name: &str, args: Vec<String>) {
        let log = self.dir.join(format!("{name}.log"));
        self.procs.insert(name.to_string(), Proc { args, log, child: None });
        self.restart(name);
    }

    /// Starts `name` again with its original arguments.
    pub fn restart(&mut self, name: &str) {
        let p = self.procs.get_mut(name).expect("a known process");
        assert!(p.child.is_none(), "{name} is already running");
        let log = File::options().create(true).append(true).open(&p.log).expect("log file");
        let child = ringkv()
            .args(&p.args)
            .env("RUST_LOG", "info,raft=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn ringkv");
        p.child = Some(child);
    }

    /// SIGKILL: no chance to flush or say goodbye.
    pub fn kill9(&mut self, name: &str) {
        let p = self.procs.get_mut(name).expect("a known process");
        if let Some(mut c) = p.child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reap");
        }
    }

    /// SIGTERM (a planned stop: systemd, Kubernetes, Ctrl-C) and waits up to
    /// `timeout` for the process to exit; panics if it does not.
    pub fn terminate(&mut self, name: &str, timeout: Duration) -> std::process::ExitStatus {
        let p = self.procs.get_mut(name).expect("a known process");
        let mut c = p.child.take().expect("running");
        // SAFETY: kill(2) on our own child's pid has no memory effects.
        unsafe {
            libc::kill(c.id() as libc::pid_t, libc::SIGTERM);
        }
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(st) = c.try_wait().expect("wait") {
                return st;
            }
            if std::time::Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{name} did not exit within {timeout:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The process id of `name`, while it runs.
    pub fn pid(&self, name: &str) -> Option<u32> {
        self.procs.get(name)?.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self, name: &str) -> bool {
        let p = self.procs.get_mut(name).expect("a known process");
        p.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for p in self.procs.values_mut() {
            if let Some(mut c) = p.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            for (name, p) in &self.procs {
                let log = std::fs::read_to_string(&p.log).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                eprintln!("--- {name} (last lines of {}) ---", p.log.display());
                for l in tail.iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

/// A playground-shaped cluster: placement members, storenodes, routers.
pub struct TestCluster {
    pub procs: Procs,
    pub placement: Vec<String>,
    /// HTTP (/metrics) of each placement member.
    pub placement_http: Vec<String>,
    pub storenodes: Vec<String>,
    /// HTTP (/metrics) of each storenode.
    pub storenode_http: Vec<String>,
    pub routers: Vec<String>,
    pub router_http: Vec<String>,
}

impl TestCluster {
    pub fn start(dir: &Path, placement: usize, storenodes: usize, routers: usize, shards: u64) -> TestCluster {
        Self::start_with(dir, placement, storenodes, routers, shards, &[], &[])
    }

    /// `start`, with more flags for every placement member and storenode.
    pub fn start_with(
        dir: &Path,
        placement: usize,
        storenodes: usize,
        routers: usize,
        shards: u64,
        placement_flags: &[&str],
        storenode_flags: &[&str],
    ) -> TestCluster {
        let layout = Layout {
            dir: dir.to_path_buf(),
            placement: (0..placement).map(|_| free_addr()).collect(),
            placement_http: (0..placement).map(|_| Some(free_addr())).collect(),
            storenodes: (0..storenodes).map(|_| (free_addr(), free_addr())).collect(),
            routers: (0..routers).map(|_| (free_addr(), free_addr())).collect(),
            shards,
            replication_factor: storenodes.min(3),
            router_timeout_ms: None,
            placement_flags: placement_flags.iter().map(|f| f.to_string()).collect(),
            storenode_flags: storenode_flags.iter().map(|f| f.to_string()).collect(),
        };
        let mut procs = Procs::new(dir);
        for i in 0..placement {
            procs.start(&format!("placement-{}", i + 1), layout.placement_args(i));
        }
        for i in 0..storenodes {
            procs.start(&format!("storenode-{}", i + 1), layout.storenode_args(i));
        }
        for i in 0..routers {
            procs.start(&format!("router-{}", i + 1), layout.router_args(i));
        }
        TestCluster {
            procs,
            placement: layout.placement,
            placement_http: layout.placement_http.into_iter().flatten().collect(),
            storenodes: layout.storenodes.iter().map(|(grpc, _)| grpc.clone()).collect(),
            storenode_http: layout.storenodes.into_iter().map(|(_, http)| http).collect(),
            routers: layout.routers.iter().map(|(grpc, _)| grpc.clone()).collect(),
            router_http: layout.routers.into_iter().map(|(_, http)| http).collect(),
        }
    }

    pub async fn client(&self) -> Client {
        Client::connect(&self.routers).await.expect("router addresses").with_timeout(Duration::from_secs(10))
    }

    /// Until a write and a read go through every router.
    pub async fn wait_serving(&self, timeout: Duration) {
        for r in &self.routers {
            let c = Client::connect([r]).await.expect("router address").with_timeout(Duration::from_secs(2));
            eventually(&format!("router {r} to serve"), timeout, || {
                let c = &c;
                async move {
                    c.put(b"probe", b"ok").await.ok()?;
                    (c.get(b"probe").await.ok()?.as_deref() == Some(b"ok".as_slice())).then_some(())
                }
            })
            .await;
        }
    }

    /// Writes keys `big-0` .. `big-{count-1}` with `value(i)` through
    /// `writers` clients at once; a put that fails fails the test.
    pub async fn put_big(&self, writers: usize, count: usize, value: fn(usize) -> Vec<u8>) {
        let mut tasks = Vec::new();
        for w in 0..writers {
            let client = self.client().await;
            tasks.push(tokio::spawn(async move {
                for i in (w..count).step_by(writers) {
                    client.put(format!("big-{i}").as_bytes(), &value(i)).await.expect("bulk put");
                }
            }));
        }
        for t in tasks {
            t.await.expect("writer");
        }
    }

    /// The placement member (1-based) that leads the group now.
    pub async fn placement_leader(&self) -> Option<u64> {
        let pc = PlacementClient::new(self.placement.clone());
        let st = pc
            .call(Duration::from_secs(3), |mut c| async move { c.cluster_status(ClusterStatusRequest {}).await })
            .await
            .ok()?;
        st.placement.iter().find(|m| m.is_leader).map(|m| m.id)
    }
}

/// `ringkv` with `args`, its exit status, stdout and stderr.
pub fn run_cli(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let out = ringkv().args(args).envs(envs.iter().copied()).stdin(Stdio::null()).output().expect("run ringkv");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// One HTTP request to `addr` (HTTP/1.1, connection closed after): status and body.
pub fn http(method: &str, addr: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    try_http(method, addr, path, body).expect("an HTTP exchange with the gateway")
}

/// [`http`], with connection errors returned (for polling a starting server).
pub fn try_http(method: &str, addr: &str, path: &str, body: &[u8]) -> std::io::Result<(u16, Vec<u8>)> {
    try_http_with(method, addr, path, &[], body).map(|(status, _, body)| (status, body))
}

/// An HTTP answer: status, headers (names lowercased) and body.
pub type HttpAnswer = (u16, Vec<(String, String)>, Vec<u8>);

/// [`http`] with extra request headers; the answer's headers too.
pub fn http_with(method: &str, addr: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> HttpAnswer {
    try_http_with(method, addr, path, headers, body).expect("an HTTP exchange with the gateway")
}

fn try_http_with(
    method: &str,
    addr: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<HttpAnswer> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(Duration::from_secs(15)))?;
    let extra: String = headers.iter().map(|(k, v)| format!("{k}: {v}\r\n")).collect();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nContent-Type: application/json\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes())?;
    s.write_all(body)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let bad = || std::io::Error::other("not an HTTP response");
    let split = resp.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(bad)?;
    let head = String::from_utf8_lossy(&resp[..split]).into_owned();
    let status: u16 = head.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(bad)?;
    let mut body = resp[split + 4..].to_vec();
    if head.to_ascii_lowercase().contains("transfer-encoding: chunked") {
        body = dechunk(&body);
    }
    let headers = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok((status, headers, body))
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
    out
}

/// The sum of a counter (every label set matching `labels`) in Prometheus text.
pub fn metric(text: &str, name: &str, labels: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(labels) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// A process's /metrics page.
pub fn scrape(addr: &str) -> String {
    String::from_utf8_lossy(&http("GET", addr, "/metrics", b"").1).into_owned()
}
