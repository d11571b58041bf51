//! `DIR/playground.json`: every process of a playground (role, id,
//! addresses, pid, data directory, log), written by `ringkv playground` when
//! it starts and changed by `scale-out` and `scale-in` while it runs.
//!
//! Writers take an exclusive lock on `DIR/playground.lock` around their
//! read-modify-write (two scale-outs at once must not both pick node 4), and
//! replace the file atomically (temporary file, fsync, rename, fsync of the
//! directory) so that a reader — or a crash — never sees half a file.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use serde::{Deserialize, Serialize};

/// The file's name inside the playground directory.
pub const FILE_NAME: &str = "playground.json";

/// What a process of the playground is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A placement member.
    Placement,
    /// A storenode.
    Storenode,
    /// The router.
    Router,
    /// The Prometheus the playground started (not a ringkv process).
    Prometheus,
}

impl Role {
    /// The `ringkv` subcommand that runs this role (also its name in files).
    pub fn name(self) -> &'static str {
        match self {
            Role::Placement => "placement",
            Role::Storenode => "storenode",
            Role::Router => "router",
            Role::Prometheus => "prometheus",
        }
    }
}

/// One process of the playground, as recorded in `playground.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct ProcessInfo {
    /// Its role.
    pub role: Role,
    /// Member id (placement), node id (storenode) or 1 (router).
    pub id: u64,
    /// gRPC address it listens on.
    pub grpc: String,
    /// HTTP address it listens on.
    pub http: String,
    /// Its process id.
    pub pid: u32,
    /// Its data directory (empty for the router).
    pub data_dir: PathBuf,
    /// The file its output goes to.
    pub log: PathBuf,
}

/// The path of `playground.json` in `dir`.
pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE_NAME)
}

/// Reads `dir`'s playground.json; a clear error when there is none or it
/// is not one.
pub fn read(dir: &Path) -> anyhow::Result<Vec<ProcessInfo>> {
    let p = path(dir);
    let text = match std::fs::read_to_string(&p) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!(
            "no playground in {}: {} does not exist (start one with `ringkv playground --dir {}`, or give --dir)",
            dir.display(),
            p.display(),
            dir.display()
        ),
        Err(e) => return Err(e).with_context(|| format!("reading {}", p.display())),
    };
    serde_json::from_str(&text).with_context(|| format!("{} is not a playground file", p.display()))
}

/// Replaces `dir`'s playground.json with `procs`, atomically.
pub fn write(dir: &Path, procs: &[ProcessInfo]) -> anyhow::Result<()> {
    let p = path(dir);
    let tmp = dir.join(format!(".{FILE_NAME}.tmp-{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(serde_json::to_string_pretty(procs)?.as_bytes())?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &p)?;
        // The rename is durable once the directory is synced.
        File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("writing {}", p.display()))?;
    super::prometheus::write_targets(dir, procs)
}

/// An exclusive lock on a playground's files, released when dropped.
pub struct Lock {
    _file: File,
}

/// How long a writer waits for another one (a scale-out holds the lock only
/// while it picks ids and records processes, not while they start).
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Takes `dir`'s lock, waiting up to [`LOCK_WAIT`] for another holder.
pub fn lock(dir: &Path) -> anyhow::Result<Lock> {
    let p = dir.join("playground.lock");
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&p)
        .with_context(|| format!("opening {}", p.display()))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        // SAFETY: flock on a descriptor this function owns; no memory is passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Lock { _file: file });
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("locking {}", p.display()));
        }
        if Instant::now() > deadline {
            bail!("{} is held by another ringkv command for over {LOCK_WAIT:?}", p.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(role: Role, id: u64) -> ProcessInfo {
        ProcessInfo {
            role,
            id,
            grpc: "127.0.0.1:1".into(),
            http: "127.0.0.1:2".into(),
            pid: 42,
            data_dir: PathBuf::from("/d"),
            log: PathBuf::from("/l"),
        }
    }

    #[test]
    fn a_written_file_reads_back_and_leaves_no_temporary_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let procs = vec![proc(Role::Placement, 1), proc(Role::Storenode, 1), proc(Role::Router, 1)];
        write(dir.path(), &procs).expect("write");
        assert_eq!(read(dir.path()).expect("read"), procs);
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("list")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec![FILE_NAME.to_string()]);
        let text = std::fs::read_to_string(path(dir.path())).expect("text");
        assert!(text.contains("\"role\": \"storenode\""), "roles are lowercase names: {text}");
    }

    #[test]
    fn a_missing_or_foreign_file_is_a_clear_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read(dir.path()).expect_err("no file").to_string();
        assert!(e.contains("no playground in") && e.contains("ringkv playground --dir"), "{e}");
        std::fs::write(path(dir.path()), "{\"not\": \"a list\"}").expect("write");
        let e = format!("{:#}", read(dir.path()).expect_err("not a playground file"));
        assert!(e.contains("is not a playground file"), "{e}");
    }

    #[test]
    fn the_lock_is_exclusive_until_dropped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let held = lock(dir.path()).expect("first lock");
        let p = dir.path().join("playground.lock");
        let other = File::options().write(true).open(&p).expect("open");
        // SAFETY: flock on a descriptor this test owns.
        let r = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, -1, "a second holder is refused while the first holds it");
        drop(held);
        // SAFETY: as above.
        let r = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, 0, "free once dropped");
    }
}
