//! Stopping playground processes that are not this process's children —
//! storenodes a `scale-out` started and left running — by the pid recorded
//! in playground.json.
//!
//! A recorded pid may be stale: the process exited and the OS gave its pid
//! to something else. Before signalling, the process's command line (Linux:
//! `/proc/PID/cmdline`) must be the one the playground started: the same
//! role as subcommand and the same data directory (the router: the same
//! listen address). A process that does not match is left alone.
//!
//! A process that exited but was not reaped (a zombie: its parent, the
//! scale-out command, is gone and a container's init may not reap) counts
//! as gone.

use std::path::Path;
use std::time::{Duration, Instant};

use super::file::{ProcessInfo, Role};

/// How often a stopping process is looked at.
const POLL: Duration = Duration::from_millis(50);

/// `pid` as a kill(2) target, or None when it cannot name one process (0,
/// 1, or too large: kill(2) would read a negative number as a process group).
fn target(pid: u32) -> Option<libc::pid_t> {
    libc::pid_t::try_from(pid).ok().filter(|&p| p > 1)
}

/// The state letter of `/proc/PID/stat` (R, S, Z, ...), None without one.
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE ...": COMM may hold spaces and parentheses; the
    // state follows the last ')'.
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Whether `pid` is a running (not exited, not zombie) process.
pub fn alive(pid: u32) -> bool {
    let Some(p) = target(pid) else { return false };
    if Path::new("/proc/self/stat").exists() {
        return proc_state(pid).is_some_and(|s| s != 'Z' && s != 'X');
    }
    // Without /proc: kill(pid, 0) only tells that the pid exists.
    // SAFETY: signal 0 sends nothing; kill(2) has no memory effects.
    unsafe { libc::kill(p, 0) == 0 }
}

/// The arguments `pid` was started with, None when they cannot be read.
fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Whether `args` (argv of a process) start the process `info` describes.
fn same_process(args: &[String], info: &ProcessInfo) -> bool {
    let flag = |name: &str| args.windows(2).find(|w| w[0] == name).map(|w| w[1].as_str());
    if info.role == Role::Prometheus {
        // Its data directory is its TSDB's.
        return args.iter().any(|a| a.strip_prefix("--storage.tsdb.path=").map(Path::new) == Some(&info.data_dir));
    }
    if args.get(1).map(String::as_str) != Some(info.role.name()) {
        return false;
    }
    if info.data_dir.as_os_str().is_empty() {
        flag("--listen") == Some(info.grpc.as_str())
    } else {
        flag("--data-dir").map(Path::new) == Some(info.data_dir.as_path())
    }
}

/// Whether `info.pid` is alive and is the process `info` describes (where
/// the OS lets us check).
pub fn is_ours(info: &ProcessInfo) -> bool {
    if !alive(info.pid) {
        return false;
    }
    match cmdline(info.pid) {
        Some(args) => same_process(&args, info),
        // No /proc (not Linux): the pid is all there is to go on.
        None => !Path::new("/proc/self/cmdline").exists(),
    }
}

fn signal(pid: u32, sig: libc::c_int) {
    if let Some(p) = target(pid) {
        // SAFETY: kill(2) has no memory effects; `p` names one process.
        unsafe {
            libc::kill(p, sig);
        }
    }
}

/// SIGTERM to every process of `procs` that is ours, SIGKILL to those
/// still running after `grace`; returns the ones that were stopped and
/// says which recorded pids were left alone.
pub fn stop(procs: &[ProcessInfo], grace: Duration) -> Vec<ProcessInfo> {
    let mut stopping = Vec::new();
    for p in procs {
        if is_ours(p) {
            signal(p.pid, libc::SIGTERM);
            stopping.push(p.clone());
        } else if alive(p.pid) {
            eprintln!(
                "{} {}: pid {} is not the process playground.json describes any more; left alone",
                p.role.name(),
                p.id,
                p.pid
            );
        }
    }
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline && stopping.iter().any(|p| alive(p.pid)) {
        std::thread::sleep(POLL);
    }
    for p in stopping.iter().filter(|p| alive(p.pid)) {
        eprintln!("{} {} (pid {}) did not stop within {grace:?}: SIGKILL", p.role.name(), p.id, p.pid);
        signal(p.pid, libc::SIGKILL);
    }
    // SIGKILL cannot be refused; give the OS a moment to finish it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && stopping.iter().any(|p| alive(p.pid)) {
        std::thread::sleep(POLL);
    }
    stopping
}

#[cfg(test)]
mod tests {
    use super::super::file::Role;
    use super::*;
    use std::path::PathBuf;

    fn info(role: Role, data_dir: &str, grpc: &str) -> ProcessInfo {
        ProcessInfo {
            role,
            id: 4,
            grpc: grpc.into(),
            http: String::new(),
            pid: 0,
            data_dir: PathBuf::from(data_dir),
            log: PathBuf::new(),
        }
    }

    fn args(s: &str) -> Vec<String> {
        s.split(' ').map(String::from).collect()
    }

    #[test]
    fn a_process_is_recognised_by_role_and_data_dir_or_listen_address() {
        let sn = info(Role::Storenode, "/pg/storenode-4", "127.0.0.1:5");
        assert!(same_process(&args("/bin/ringkv storenode --node-id 4 --data-dir /pg/storenode-4"), &sn));
        assert!(!same_process(&args("/bin/ringkv storenode --node-id 5 --data-dir /pg/storenode-5"), &sn));
        assert!(!same_process(&args("/bin/ringkv placement --data-dir /pg/storenode-4"), &sn));
        assert!(!same_process(&args("sleep 600"), &sn));
        let router = info(Role::Router, "", "127.0.0.1:6380");
        assert!(same_process(&args("/bin/ringkv router --listen 127.0.0.1:6380 --http x"), &router));
        assert!(!same_process(&args("/bin/ringkv router --listen 127.0.0.1:7000"), &router));
    }

    #[test]
    fn pids_that_name_no_single_process_are_never_signalled() {
        assert_eq!(target(0), None);
        assert_eq!(target(1), None);
        assert_eq!(target(u32::MAX), None, "would be -1: every process");
        assert_eq!(target(1234), Some(1234));
        assert!(!alive(0) && !alive(u32::MAX));
    }

    #[test]
    fn a_child_is_alive_until_it_exits_even_unreaped() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("spawn sleep");
        let pid = child.id();
        assert!(alive(pid));
        let ours = info(Role::Storenode, "/nowhere", "");
        assert!(!is_ours(&ProcessInfo { pid, ..ours }), "sleep is not a storenode");
        child.kill().expect("kill");
        // Not reaped yet: a zombie counts as gone.
        let deadline = Instant::now() + Duration::from_secs(5);
        while alive(pid) && Instant::now() < deadline {
            std::thread::sleep(POLL);
        }
        assert!(!alive(pid));
        child.wait().expect("reap");
    }
}
