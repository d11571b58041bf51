//! ringkv's fault-injection suite, in the manner of Jepsen and etcd's
//! robustness tests: a real cluster (3 placement, 5 storenodes, 2 routers)
//! from the `ringkv` binary, each process on its own loopback address inside
//! a network namespace the caller made, clients recording every operation as
//! invoke/complete with monotonic timestamps, nemeses that kill, pause,
//! partition and change membership (move replicas, decommission and add
//! storenodes, transfer leadership), and checkers that judge the histories.
//!
//! - [`cluster`]: the processes and the faults applied to them (signals,
//!   iptables); [`layout`]: the arguments that start each process, shared
//!   with the `cli/tests` harness.
//! - [`nemesis`]: the seeded fault schedule.
//! - [`membership`]: the membership faults, asked of placement and
//!   storenodes as an operator would, and keeping the cluster at its size.
//! - [`workload`]: register (read/write/CAS) and set/append clients.
//! - [`checker`]: linearizability (Wing–Gong/Lowe, per key) and set checks.
//! - [`history`]: the `history.jsonl` file of a run, and checking one on its
//!   own (`ringkv chaos check FILE`, no cluster, no root).
//! - [`run`]: one run end to end, and its summary.
//!
//! Entry point: `ringkv chaos` (run inside a network namespace as root);
//! `make test` runs a short one, `make chaos DURATION=30m` a long one.
//! `ringkv chaos check FILE` re-checks a recorded history.

pub mod checker;
pub mod cluster;
pub mod history;
pub mod layout;
pub mod membership;
pub mod nemesis;
pub mod run;
pub mod workload;
