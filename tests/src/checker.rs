//! The checkers that judge a run's histories.
//!
//! **Registers** are checked for linearizability with the Wing–Gong search as
//! improved by Lowe (the algorithm of Porcupine and Knossos' `linear`): walk
//! the history's call/return events in time order, try to linearize every
//! pending call whose effect is legal in the current state, backtrack when a
//! return is reached before its call was linearized, and memoise
//! `(linearized set, state)` pairs so no configuration is explored twice.
//! Keys are independent registers, so the history is partitioned per key
//! (P-compositionality) and keys are checked in parallel.
//!
//! The register model is a *set* of possible values (the powerset
//! construction Porcupine uses for nondeterministic models), because two
//! kinds of operation have more than one possible effect:
//! - an operation whose outcome is unknown (`info`) may have happened at any
//!   point after its invocation, or never: it gets an infinite return time and
//!   a compare-and-swap of unknown outcome leads to {swapped, not swapped};
//! - a window cut out of the middle of a history starts from "any value".
//!
//! **Failing sub-histories** are shrunk with reductions that are sound — if
//! the full history were linearizable, the reduced one would be too — so the
//! reported witness proves the violation on its own: cut the history to a
//! time window (ops before it become the "any value" start, ops straddling
//! its edges become `info`), then weaken single operations to `info` (a read
//! weakened to `info` says nothing and is dropped) while the result still
//! fails.
//!
//! **Sets** (the append workload) are checked against the final reads: every
//! acknowledged element present (else *lost*), none present twice
//! (*duplicated*), none present that was never attempted or definitely failed
//! (*phantom*).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

// The serde forms of these types are the lines of `history.jsonl`, which
// `ringkv chaos check` reads back, possibly written by another tool: unknown
// fields are refused (a misspelt field must not be read as absent), and
// `Option` fields are required with `deserialize_with` (serde would
// otherwise read a missing one as `None`, e.g. a compare-and-swap "only if
// absent"); `null` says `None`. docs/fault-injection.md describes the format.

/// A register operation as invoked.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RegOp {
    Read,
    Write(u64),
    /// `expected: None` means "only if absent".
    Cas {
        #[serde(deserialize_with = "Option::deserialize")]
        expected: Option<u64>,
        new: u64,
    },
}

/// What a completed register operation returned. `None` is "absent".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub enum RegResult {
    Read(Option<u64>),
    Written,
    /// `current` is the value the compare saw (on success, the expected one).
    Cas {
        succeeded: bool,
        #[serde(deserialize_with = "Option::deserialize")]
        current: Option<u64>,
    },
}

/// How an operation ended: ok (with its result), fail (definitely not
/// applied), or info (unknown: it may or may not have taken effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    Ok(RegResult),
    Fail,
    Info,
}

/// One register operation: invoked at `invoke_ns`, completed at
/// `complete_ns` (None for info: it may take effect at any later time).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegEvent {
    pub client: u32,
    pub key: String,
    pub op: RegOp,
    pub invoke_ns: u64,
    #[serde(deserialize_with = "Option::deserialize")]
    pub complete_ns: Option<u64>,
    pub outcome: Outcome,
}

/// One attempt to add `element` to the set at `key`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetAdd {
    pub key: String,
    pub element: u64,
    pub outcome: Outcome,
}

/// A non-linearizable sub-history of one key: on its own, with the register
/// starting at any value, no order of these operations explains what the
/// clients saw.
#[derive(Clone, Debug, Serialize)]
pub struct Violation {
    pub key: String,
    /// The operations of the key in the full history.
    pub key_ops: usize,
    /// The shrunk witness, in invocation order.
    pub ops: Vec<RegEvent>,
    /// Where each of `ops` is in the events given to [`check_registers`]
    /// (not written to `violations.json`: a reader of a history file maps
    /// them to line numbers).
    #[serde(skip)]
    pub sources: Vec<usize>,
}

#[derive(Debug, Default, Serialize)]
pub struct RegReport {
    /// Operations that took part in the check (ok and info).
    pub ops_checked: usize,
    pub violations: Vec<Violation>,
    /// Keys whose search ran out of time or memory: neither proven nor refuted.
    pub undecided: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct SetReport {
    pub acknowledged: usize,
    /// Acknowledged elements missing from the final read of their key.
    pub lost: Vec<(String, u64)>,
    /// Elements present more than once.
    pub duplicated: Vec<(String, u64)>,
    /// Elements present that were never attempted, or whose add definitely failed.
    pub phantom: Vec<(String, u64)>,
    /// Elements of unknown outcome that turned out present (allowed).
    pub unknown_present: usize,
}

// ---------------------------------------------------------------------------
// The register model.

/// One operation as the search sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Read(Option<u64>),
    Write(u64),
    CasOk {
        expected: Option<u64>,
        new: u64,
    },
    CasFailed {
        expected: Option<u64>,
        current: Option<u64>,
    },
    /// A compare-and-swap of unknown outcome: swapped or not.
    CasInfo {
        expected: Option<u64>,
        new: u64,
    },
}

/// The register's possible values: `Any` or a small sorted set.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
enum State {
    Any,
    Values(Vec<Option<u64>>),
}

impl State {
    fn one(v: Option<u64>) -> State {
        State::Values(vec![v])
    }

    fn contains(&self, v: Option<u64>) -> bool {
        match self {
            State::Any => true,
            State::Values(vs) => vs.contains(&v),
        }
    }

    /// The states after `step`, or None when `step` is impossible from every value.
    fn apply(&self, step: Step) -> Option<State> {
        match step {
            Step::Read(v) => self.contains(v).then(|| State::one(v)),
            Step::Write(v) => Some(State::one(Some(v))),
            Step::CasOk { expected, new } => self.contains(expected).then(|| State::one(Some(new))),
            Step::CasFailed { expected, current } => {
                (current != expected && self.contains(current)).then(|| State::one(current))
            }
            Step::CasInfo { expected, new } => match self {
                State::Any => Some(State::Any),
                State::Values(vs) => {
                    let mut out = vs.clone();
                    if vs.contains(&expected) {
                        out.push(Some(new));
                        out.sort_unstable();
                        out.dedup();
                    }
                    Some(State::Values(out))
                }
            },
        }
    }
}

/// An operation of one key's history, ready for the search.
#[derive(Clone, Copy, Debug)]
struct Op {
    step: Step,
    call: u64,
    /// `u64::MAX` for info operations.
    ret: u64,
    /// Index into the caller's event list.
    source: usize,
}

impl Op {
    fn is_info(&self) -> bool {
        self.ret == u64::MAX
    }
}

/// The search's view of an event, or None when it constrains nothing
/// (failed operations, reads of unknown outcome).
fn to_op(e: &RegEvent, source: usize) -> Option<Op> {
    let step = match (e.op, e.outcome) {
        (_, Outcome::Fail) | (RegOp::Read, Outcome::Info) => return None,
        (RegOp::Read, Outcome::Ok(RegResult::Read(v))) => Step::Read(v),
        (RegOp::Write(v), Outcome::Ok(_) | Outcome::Info) => Step::Write(v),
        (RegOp::Cas { expected, new }, Outcome::Ok(RegResult::Cas { succeeded: true, .. })) => {
            Step::CasOk { expected, new }
        }
        (RegOp::Cas { expected, .. }, Outcome::Ok(RegResult::Cas { succeeded: false, current })) => {
            Step::CasFailed { expected, current }
        }
        (RegOp::Cas { expected, new }, Outcome::Info) => Step::CasInfo { expected, new },
        // A result that does not match its operation: the client recorded
        // nonsense, which no linearization can explain.
        (_, Outcome::Ok(_)) => Step::Read(Some(u64::MAX)),
    };
    let ret = match e.outcome {
        Outcome::Info => u64::MAX,
        _ => e.complete_ns.unwrap_or(u64::MAX),
    };
    Some(Op { step, call: e.invoke_ns, ret, source })
}

/// Drops operations of unknown outcome whose written value nobody ever saw
/// or expected. Sound: such a write can always be moved to the end of a
/// linearization (where it changes nothing anyone observed), and with every
/// value unique nothing else can depend on it. It keeps the search from
/// exploring every subset of the writes a partition left in doubt.
fn prune_unobserved(ops: Vec<Op>) -> Vec<Op> {
    let mut seen: HashSet<u64> = HashSet::new();
    for o in &ops {
        match o.step {
            Step::Read(Some(v)) => {
                seen.insert(v);
            }
            Step::CasOk { expected: Some(e), .. } | Step::CasInfo { expected: Some(e), .. } => {
                seen.insert(e);
            }
            Step::CasFailed { expected, current } => {
                seen.extend(expected);
                seen.extend(current);
            }
            _ => {}
        }
    }
    ops.into_iter()
        .filter(|o| match o.step {
            Step::Write(v) | Step::CasInfo { new: v, .. } if o.is_info() => seen.contains(&v),
            _ => true,
        })
        .collect()
}

// ---------------------------------------------------------------------------
// The search.

enum Verdict {
    Linearizable,
    /// Not linearizable; the op whose return the deepest attempt could not pass.
    Violation {
        stuck: usize,
    },
    /// Out of time or memory.
    Unknown,
}

struct Limits {
    deadline: Instant,
    max_cache: usize,
}

/// Lowe's just-in-time linearization over a doubly linked list of events.
fn search(ops: &[Op], initial: State, limits: &Limits) -> Verdict {
    let n = ops.len();
    if n == 0 {
        return Verdict::Linearizable;
    }
    // Events: node 0 is the head sentinel; node 1 + 2i is op i's call and
    // 2 + 2i its return. Calls sort before returns at equal times (the more
    // permissive reading of a tie).
    let mut order: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * n);
    for (i, o) in ops.iter().enumerate() {
        order.push((o.call, false, 1 + 2 * i));
        order.push((o.ret, true, 2 + 2 * i));
    }
    order.sort_unstable();
    let nodes = 2 * n + 1;
    const NIL: usize = usize::MAX;
    let mut next = vec![NIL; nodes];
    let mut prev = vec![NIL; nodes];
    let mut last = 0;
    for &(_, _, node) in &order {
        next[last] = node;
        prev[node] = last;
        last = node;
    }
    let is_call = |node: usize| node % 2 == 1;
    let op_of = |node: usize| (node - 1) / 2;

    let words = n.div_ceil(64);
    let mut linearized = vec![0u64; words];
    let mut remaining_definite = ops.iter().filter(|o| !o.is_info()).count();
    let mut cache: HashSet<(Vec<u64>, State)> = HashSet::new();
    let mut calls: Vec<(usize, State)> = Vec::new();
    let mut state = initial;
    let mut entry = next[0];
    let (mut best_depth, mut stuck) = (0usize, 0usize);
    let mut steps = 0u64;

    while remaining_definite > 0 {
        steps += 1;
        if steps.is_multiple_of(4096) && (Instant::now() > limits.deadline || cache.len() > limits.max_cache) {
            return Verdict::Unknown;
        }
        // With definite ops left, their returns are still in the list.
        debug_assert_ne!(entry, NIL);
        if is_call(entry) {
            let i = op_of(entry);
            if let Some(new_state) = state.apply(ops[i].step) {
                linearized[i / 64] |= 1 << (i % 64);
                if cache.insert((linearized.clone(), new_state.clone())) {
                    calls.push((entry, std::mem::replace(&mut state, new_state)));
                    if !ops[i].is_info() {
                        remaining_definite -= 1;
                    }
                    // Lift the call and its return out of the list.
                    let ret = entry + 1;
                    next[prev[entry]] = next[entry];
                    prev[next[entry]] = prev[entry];
                    next[prev[ret]] = next[ret];
                    if next[ret] != NIL {
                        prev[next[ret]] = prev[ret];
                    }
                    entry = next[0];
                    continue;
                }
                linearized[i / 64] &= !(1 << (i % 64));
            }
            entry = next[entry];
        } else {
            // A return whose call is not linearized: backtrack.
            if calls.len() >= best_depth {
                best_depth = calls.len();
                stuck = op_of(entry);
            }
            let Some((call, old_state)) = calls.pop() else {
                return Verdict::Violation { stuck };
            };
            let i = op_of(call);
            state = old_state;
            linearized[i / 64] &= !(1 << (i % 64));
            if !ops[i].is_info() {
                remaining_definite += 1;
            }
            // Unlift: the return first, then the call (reverse of lifting).
            let ret = call + 1;
            next[prev[ret]] = ret;
            if next[ret] != NIL {
                prev[next[ret]] = ret;
            }
            next[prev[call]] = call;
            prev[next[call]] = call;
            entry = next[call];
        }
    }
    Verdict::Linearizable
}

// ---------------------------------------------------------------------------
// Shrinking a violation to a small witness.

/// Cuts `ops` to the window `[a, b]` soundly: ops that returned before `a`
/// are dropped (the register starts at any value), ops invoked after `b` are
/// dropped, and ops that straddle either edge become info.
fn window(ops: &[Op], a: u64, b: u64) -> Vec<Op> {
    ops.iter()
        .filter(|o| o.ret >= a && o.call <= b)
        .filter_map(|o| if o.call < a || o.ret > b { weaken(o) } else { Some(*o) })
        .collect()
}

/// The same op with its outcome unknown; None for reads (which then say nothing).
fn weaken(o: &Op) -> Option<Op> {
    let step = match o.step {
        Step::Read(_) => return None,
        Step::Write(v) => Step::Write(v),
        Step::CasOk { expected, new } => Step::CasInfo { expected, new },
        // A failed compare changed nothing: as info it would only add doubt.
        Step::CasFailed { .. } => return None,
        Step::CasInfo { expected, new } => Step::CasInfo { expected, new },
    };
    Some(Op { step, ret: u64::MAX, ..*o })
}

fn fails(ops: &[Op], limits: &Limits) -> bool {
    matches!(search(&prune_unobserved(ops.to_vec()), State::Any, limits), Verdict::Violation { .. })
}

/// The smallest failing sub-history found within the limits, or None when
/// no window reproduces the violation (the full history is then the witness).
fn shrink(ops: &[Op], stuck: usize, limits: &Limits) -> Option<Vec<Op>> {
    let b = ops[stuck].ret;
    // Widen the window backwards from the stuck op until it fails on its own.
    let mut starts: Vec<u64> = ops.iter().filter(|o| o.ret <= b).map(|o| o.call).collect();
    starts.sort_unstable_by(|x, y| y.cmp(x));
    starts.dedup();
    let mut found = None;
    let mut width = 1;
    while width <= starts.len() * 2 {
        let a = starts[(width - 1).min(starts.len() - 1)];
        let w = window(ops, a, b);
        if fails(&w, limits) {
            found = Some(w);
            break;
        }
        if width >= starts.len() || Instant::now() > limits.deadline {
            break;
        }
        width *= 2;
    }
    let mut w = prune_unobserved(found?);
    // Weaken one definite op at a time while the witness still fails. Info
    // ops are left alone: removing one is not sound (it may be the write
    // that explains a read); unobserved ones were pruned already. Every
    // accepted step removes a definite op, so this ends.
    let mut i = 0;
    while i < w.len() && Instant::now() < limits.deadline {
        if w[i].is_info() {
            i += 1;
            continue;
        }
        let mut candidate = w.clone();
        match weaken(&w[i]) {
            Some(weak) => candidate[i] = weak,
            None => {
                candidate.remove(i);
            }
        }
        let candidate = prune_unobserved(candidate);
        if fails(&candidate, limits) {
            w = candidate;
            i = 0;
        } else {
            i += 1;
        }
    }
    Some(w)
}

// ---------------------------------------------------------------------------
// Entry points.

/// Checks every key's register history within `time_limit` per key.
pub fn check_registers(events: &[RegEvent], time_limit: Duration) -> RegReport {
    let mut by_key: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, e) in events.iter().enumerate() {
        by_key.entry(&e.key).or_default().push(i);
    }
    let keys: Vec<(&str, Vec<usize>)> = by_key.into_iter().collect();
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get()).min(keys.len().max(1));
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results: Vec<(usize, KeyVerdict)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|_| {
                s.spawn(|| {
                    let mut out = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let Some((_, idx)) = keys.get(k) else { break };
                        out.push((k, check_key(events, idx, time_limit)));
                    }
                    out
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("checker thread panicked")).collect()
    });
    let mut report = RegReport::default();
    for (k, v) in results {
        let key = keys[k].0.to_string();
        report.ops_checked += v.checked;
        match v.result {
            Verdict::Linearizable => {}
            Verdict::Unknown => report.undecided.push(key),
            Verdict::Violation { .. } => report.violations.push(Violation {
                key,
                key_ops: keys[k].1.len(),
                ops: v.witness.iter().map(|&i| events[i].clone()).collect(),
                sources: v.witness,
            }),
        }
    }
    report.undecided.sort();
    report.violations.sort_by(|a, b| a.key.cmp(&b.key));
    report
}

struct KeyVerdict {
    checked: usize,
    result: Verdict,
    /// Event indices of the witness (violations only).
    witness: Vec<usize>,
}

fn check_key(events: &[RegEvent], idx: &[usize], time_limit: Duration) -> KeyVerdict {
    let ops: Vec<Op> = idx.iter().filter_map(|&i| to_op(&events[i], i)).collect();
    let checked = ops.len();
    let limits = Limits { deadline: Instant::now() + time_limit, max_cache: 20_000_000 };
    let pruned = prune_unobserved(ops);
    let result = search(&pruned, State::one(None), &limits);
    let witness = match &result {
        Verdict::Violation { stuck } => {
            // Shrinking gets its own budget: the search may have used most of it.
            let shrink_limits = Limits { deadline: Instant::now() + time_limit, max_cache: limits.max_cache };
            let mut w: Vec<usize> = match shrink(&pruned, *stuck, &shrink_limits) {
                Some(w) => w.iter().map(|o| o.source).collect(),
                None => pruned.iter().map(|o| o.source).collect(),
            };
            w.sort_by_key(|&i| events[i].invoke_ns);
            w
        }
        _ => Vec::new(),
    };
    KeyVerdict { checked, result, witness }
}

/// Checks the append workload: `adds` are every attempt, `finals` the final
/// read of each key after the cluster healed.
pub fn check_sets(adds: &[SetAdd], finals: &BTreeMap<String, Vec<u64>>) -> SetReport {
    let mut report = SetReport::default();
    let mut attempts: HashMap<(&str, u64), Outcome> = HashMap::new();
    for a in adds {
        attempts.insert((a.key.as_str(), a.element), a.outcome);
    }
    let mut present: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
    for (key, elems) in finals {
        let mut seen = BTreeSet::new();
        for &e in elems {
            if !seen.insert(e) {
                report.duplicated.push((key.clone(), e));
                continue;
            }
            match attempts.get(&(key.as_str(), e)) {
                None | Some(Outcome::Fail) => report.phantom.push((key.clone(), e)),
                Some(Outcome::Info) => report.unknown_present += 1,
                Some(Outcome::Ok(_)) => {}
            }
        }
        present.insert(key, seen);
    }
    for a in adds.iter().filter(|a| matches!(a.outcome, Outcome::Ok(_))) {
        report.acknowledged += 1;
        let there = present.get(a.key.as_str()).is_some_and(|s| s.contains(&a.element));
        if !there {
            report.lost.push((a.key.clone(), a.element));
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A history from a compact script: `client key op invoke complete result`.
    struct H(Vec<RegEvent>);

    impl H {
        fn new() -> H {
            H(Vec::new())
        }
        fn push(mut self, client: u32, op: RegOp, invoke: u64, complete: Option<u64>, outcome: Outcome) -> H {
            self.0.push(RegEvent { client, key: "k".into(), op, invoke_ns: invoke, complete_ns: complete, outcome });
            self
        }
        fn read(self, c: u32, t0: u64, t1: u64, v: Option<u64>) -> H {
            self.push(c, RegOp::Read, t0, Some(t1), Outcome::Ok(RegResult::Read(v)))
        }
        fn write(self, c: u32, t0: u64, t1: u64, v: u64) -> H {
            self.push(c, RegOp::Write(v), t0, Some(t1), Outcome::Ok(RegResult::Written))
        }
        fn write_info(self, c: u32, t0: u64, v: u64) -> H {
            self.push(c, RegOp::Write(v), t0, None, Outcome::Info)
        }
        fn write_failed(self, c: u32, t0: u64, t1: u64, v: u64) -> H {
            self.push(c, RegOp::Write(v), t0, Some(t1), Outcome::Fail)
        }
        fn cas_ok(self, c: u32, t0: u64, t1: u64, expected: Option<u64>, new: u64) -> H {
            let r = RegResult::Cas { succeeded: true, current: expected };
            self.push(c, RegOp::Cas { expected, new }, t0, Some(t1), Outcome::Ok(r))
        }
        fn cas_failed(self, c: u32, t0: u64, t1: u64, expected: Option<u64>, current: Option<u64>) -> H {
            let r = RegResult::Cas { succeeded: false, current };
            self.push(c, RegOp::Cas { expected, new: 999 }, t0, Some(t1), Outcome::Ok(r))
        }
        fn cas_info(self, c: u32, t0: u64, expected: Option<u64>, new: u64) -> H {
            self.push(c, RegOp::Cas { expected, new }, t0, None, Outcome::Info)
        }
        fn check(&self) -> RegReport {
            check_registers(&self.0, Duration::from_secs(10))
        }
        fn linearizable(&self) -> bool {
            let r = self.check();
            assert!(r.undecided.is_empty());
            r.violations.is_empty()
        }
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = H::new().read(1, 0, 1, None).write(1, 2, 3, 1).read(2, 4, 5, Some(1)).cas_ok(1, 6, 7, Some(1), 2);
        assert!(h.linearizable());
    }

    #[test]
    fn stale_read_after_a_completed_write_is_rejected() {
        // The write of 2 completed before the read began; the read saw 1.
        let h = H::new().write(1, 0, 1, 1).write(1, 2, 3, 2).read(2, 4, 5, Some(1));
        let r = h.check();
        assert_eq!(r.violations.len(), 1);
        let w = &r.violations[0].ops;
        assert!(w.iter().any(|e| e.op == RegOp::Read), "the stale read is in the witness: {w:?}");
        assert!(w.len() <= 3);
    }

    #[test]
    fn concurrent_read_may_see_either_value() {
        let h = H::new().write(1, 0, 1, 1).write(1, 2, 10, 2).read(2, 3, 4, Some(1)).read(3, 5, 6, Some(2));
        assert!(h.linearizable());
    }

    #[test]
    fn reads_going_back_in_time_are_rejected() {
        // Both reads overlap the write, but once a read saw 2 a later one
        // cannot see 1 again.
        let h = H::new().write(1, 0, 1, 1).write(1, 2, 20, 2).read(2, 3, 4, Some(2)).read(3, 5, 6, Some(1));
        assert!(!h.linearizable());
    }

    #[test]
    fn read_of_a_value_never_written_is_rejected() {
        let h = H::new().write(1, 0, 1, 1).read(2, 2, 3, Some(7));
        assert!(!h.linearizable());
    }

    #[test]
    fn initial_value_is_absent() {
        assert!(!H::new().read(1, 0, 1, Some(1)).linearizable());
        assert!(H::new().read(1, 0, 1, None).linearizable());
    }

    #[test]
    fn a_failed_write_must_not_be_seen() {
        let h = H::new().write(1, 0, 1, 1).write_failed(1, 2, 3, 2).read(2, 4, 5, Some(2));
        assert!(!h.linearizable());
    }

    #[test]
    fn an_unknown_write_may_appear_late_or_never() {
        // Seen long after the client gave up: fine.
        let late = H::new().write(1, 0, 1, 1).write_info(1, 2, 2).read(2, 100, 101, Some(2));
        assert!(late.linearizable());
        // Never seen: fine too.
        let never = H::new().write(1, 0, 1, 1).write_info(1, 2, 2).read(2, 100, 101, Some(1));
        assert!(never.linearizable());
        // But not before it was invoked.
        let early = H::new().write(1, 0, 1, 1).read(2, 2, 3, Some(2)).write_info(1, 10, 2);
        assert!(!early.linearizable());
    }

    #[test]
    fn an_unknown_write_takes_effect_once() {
        // 2 appears, is overwritten by 3, and then 2 cannot come back.
        let h = H::new()
            .write_info(1, 0, 2)
            .read(2, 10, 11, Some(2))
            .write(3, 12, 13, 3)
            .read(2, 14, 15, Some(3))
            .read(2, 16, 17, Some(2));
        assert!(!h.linearizable());
    }

    #[test]
    fn compare_and_swap_semantics() {
        let ok = H::new().write(1, 0, 1, 1).cas_ok(2, 2, 3, Some(1), 2).read(3, 4, 5, Some(2));
        assert!(ok.linearizable());
        // A CAS cannot succeed against a value the register did not hold.
        let bad = H::new().write(1, 0, 1, 1).cas_ok(2, 2, 3, Some(5), 2);
        assert!(!bad.linearizable());
        // A failed CAS must report a value the register held, other than expected.
        let bad_fail = H::new().write(1, 0, 1, 1).cas_failed(2, 2, 3, Some(1), Some(1));
        assert!(!bad_fail.linearizable());
        let good_fail = H::new().write(1, 0, 1, 1).cas_failed(2, 2, 3, Some(4), Some(1));
        assert!(good_fail.linearizable());
        // Two CAS from the same value cannot both succeed.
        let twice = H::new().write(1, 0, 1, 1).cas_ok(2, 2, 10, Some(1), 2).cas_ok(3, 2, 10, Some(1), 3);
        assert!(!twice.linearizable());
        let absent = H::new().cas_ok(1, 0, 1, None, 9).read(2, 2, 3, Some(9));
        assert!(absent.linearizable());
    }

    #[test]
    fn an_unknown_cas_may_or_may_not_have_swapped() {
        let swapped = H::new().write(1, 0, 1, 1).cas_info(2, 2, Some(1), 2).read(3, 10, 11, Some(2));
        assert!(swapped.linearizable());
        let not = H::new().write(1, 0, 1, 1).cas_info(2, 2, Some(1), 2).read(3, 10, 11, Some(1));
        assert!(not.linearizable());
        // It cannot swap from a value the register never held.
        let impossible = H::new().write(1, 0, 1, 1).cas_info(2, 2, Some(7), 2).read(3, 10, 11, Some(2));
        assert!(!impossible.linearizable());
    }

    #[test]
    fn keys_are_independent() {
        let mut h = H::new().write(1, 0, 1, 1).read(2, 2, 3, Some(1));
        let mut other = H::new().write(1, 0, 1, 5).read(2, 2, 3, Some(1)).0;
        for e in &mut other {
            e.key = "other".into();
        }
        h.0.extend(other);
        let r = h.check();
        assert_eq!(r.violations.len(), 1);
        assert_eq!(r.violations[0].key, "other");
    }

    #[test]
    fn a_long_history_with_one_stale_read_is_shrunk_to_a_small_witness() {
        // 2,000 sequential writes and reads with clients overlapping a little,
        // then one read that returns a value overwritten long before.
        let mut h = H::new();
        let mut t = 0;
        for v in 1..=1000u64 {
            h = h.write((v % 4) as u32, t, t + 3, v).read(((v + 1) % 4) as u32, t + 4, t + 6, Some(v));
            t += 5;
        }
        h = h.read(9, t + 10, t + 11, Some(500));
        let r = h.check();
        assert_eq!(r.violations.len(), 1, "{r:?}");
        let w = &r.violations[0].ops;
        assert!(w.len() <= 4, "witness of {} ops: {w:?}", w.len());
        assert!(w.iter().any(|e| e.outcome == Outcome::Ok(RegResult::Read(Some(500)))));
        assert!(r.undecided.is_empty());
    }

    #[test]
    fn many_concurrent_unknown_writes_stay_tractable() {
        // 200 writes left in doubt by a partition, none of them ever read,
        // interleaved with a clean sequential history.
        let mut h = H::new();
        let mut t = 0;
        for v in 1..=200u64 {
            h = h.write_info(7, t, 1_000_000 + v).write(1, t + 1, t + 2, v).read(2, t + 3, t + 4, Some(v));
            t += 5;
        }
        assert!(h.linearizable());
    }

    #[test]
    fn witness_is_sound_on_its_own() {
        // Whatever the shrinker returns must itself fail from "any value".
        let h = H::new().write(1, 0, 1, 1).write(2, 2, 3, 2).read(3, 4, 5, Some(2)).write(1, 6, 7, 3).read(
            2,
            8,
            9,
            Some(1),
        );
        let r = h.check();
        let w: Vec<Op> = r.violations[0].ops.iter().enumerate().filter_map(|(i, e)| to_op(e, i)).collect();
        let limits = Limits { deadline: Instant::now() + Duration::from_secs(5), max_cache: 1_000_000 };
        assert!(fails(&w, &limits), "{:?}", r.violations[0].ops);
    }

    #[test]
    fn sets_find_lost_duplicated_and_phantom_elements() {
        let add = |k: &str, e: u64, o: Outcome| SetAdd { key: k.into(), element: e, outcome: o };
        let ok = Outcome::Ok(RegResult::Written);
        let adds = vec![
            add("s", 1, ok),
            add("s", 2, ok),
            add("s", 3, Outcome::Info),
            add("s", 4, Outcome::Fail),
            add("s", 5, ok),
            add("t", 6, ok),
        ];
        let mut finals = BTreeMap::new();
        finals.insert("s".to_string(), vec![1, 2, 2, 3, 4, 99]);
        finals.insert("t".to_string(), vec![6]);
        let r = check_sets(&adds, &finals);
        assert_eq!(r.acknowledged, 4);
        assert_eq!(r.lost, vec![("s".to_string(), 5)]);
        assert_eq!(r.duplicated, vec![("s".to_string(), 2)]);
        assert_eq!(r.phantom, vec![("s".to_string(), 4), ("s".to_string(), 99)]);
        assert_eq!(r.unknown_present, 1);

        let mut clean = BTreeMap::new();
        clean.insert("s".to_string(), vec![1, 2, 5]);
        clean.insert("t".to_string(), vec![6]);
        let r = check_sets(&adds, &clean);
        assert!(r.lost.is_empty() && r.duplicated.is_empty() && r.phantom.is_empty());
    }
}
