//! The history file of a run, `history.jsonl`, and checking one on its own.
//!
//! A run writes every operation its clients recorded and the final read of
//! every set key; `ringkv chaos check FILE` reads such a file back — or one
//! converted from another tool's history, e.g. Jepsen's register operations —
//! and runs the same checkers ([`check_registers`], [`check_sets`]) without
//! a cluster. The format is one JSON object per line, each with exactly one
//! of these keys (docs/fault-injection.md shows every field with examples):
//!
//! - `register`: a [`RegEvent`], one read, write or compare-and-swap with
//!   its invocation and completion time and its outcome;
//! - `set`: a [`SetAdd`], one attempt to add an element to a set;
//! - `final_reads`: set key → the elements read back after the run.
//!
//! The reader is strict, because a history that is read wrongly proves
//! nothing: a line that is not JSON, an unknown key or field, a missing
//! field, an unknown operation, a result that does not fit its operation,
//! or an ok/failed operation without a completion time is an error naming
//! the line, and so is a set key with additions but no final read.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::checker::{check_registers, check_sets, Outcome, RegEvent, RegOp, RegReport, RegResult, SetAdd, SetReport};

/// The exit status of `ringkv chaos` (a run or a check) when an anomaly or
/// a lost acknowledged write was found.
pub const EXIT_ANOMALY: i32 = 3;
/// The exit status when some register key could not be checked within its
/// time budget (and nothing worse was found): an unchecked key proves nothing.
pub const EXIT_UNDECIDED: i32 = 4;

/// Everything a run's clients saw, as the checkers need it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct History {
    /// Register operations, in the order they were recorded.
    pub registers: Vec<RegEvent>,
    /// Set additions, in the order they were recorded.
    pub sets: Vec<SetAdd>,
    /// The final read of every set key (its elements, in stored order).
    pub final_reads: BTreeMap<String, Vec<u64>>,
    /// Where each entry came from in a file that was read (1-based line
    /// numbers, parallel to `registers` and `sets`); empty for a history
    /// recorded in memory.
    pub lines: Lines,
}

/// Line numbers of a history read from a file.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lines {
    /// The line of `registers[i]`.
    pub registers: Vec<usize>,
    /// The line of `sets[i]`.
    pub sets: Vec<usize>,
}

/// One line of the file as written.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum LineOut<'a> {
    Register(&'a RegEvent),
    Set(&'a SetAdd),
    FinalReads(&'a BTreeMap<String, Vec<u64>>),
}

/// One line of the file as read; the same shape as [`LineOut`] (a test
/// round-trips them).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum LineIn {
    Register(RegEvent),
    Set(SetAdd),
    FinalReads(BTreeMap<String, Vec<u64>>),
}

/// Why a history file could not be read. Every problem with the content
/// names its 1-based line.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The file could not be opened.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A line that is not a valid history entry.
    #[error("line {line}: {message}")]
    Line {
        /// 1-based line number.
        line: usize,
        /// What is wrong with it.
        message: String,
    },
    /// Additions to a set whose final content the history does not say.
    #[error(
        "line {line}: set key {key:?} has additions but no final read (a `final_reads` line must list it, \
         with [] if the set was read back empty)"
    )]
    NoFinalRead {
        /// The set key.
        key: String,
        /// The first line that adds to it.
        line: usize,
    },
}

impl History {
    /// Writes the history in the line format, registers first, then sets,
    /// then one `final_reads` line.
    pub fn write_to(&self, mut w: impl Write) -> std::io::Result<()> {
        for e in &self.registers {
            writeln!(w, "{}", serde_json::to_string(&LineOut::Register(e))?)?;
        }
        for e in &self.sets {
            writeln!(w, "{}", serde_json::to_string(&LineOut::Set(e))?)?;
        }
        writeln!(w, "{}", serde_json::to_string(&LineOut::FinalReads(&self.final_reads))?)?;
        w.flush()
    }

    /// [`History::write_to`] a new file at `path`.
    pub fn write_file(&self, path: &Path) -> std::io::Result<()> {
        self.write_to(std::io::BufWriter::new(std::fs::File::create(path)?))
    }

    /// Reads the file at `path`.
    pub fn read_file(path: &Path) -> Result<History, HistoryError> {
        let f = std::fs::File::open(path).map_err(|source| HistoryError::Io { path: path.to_path_buf(), source })?;
        History::read_from(std::io::BufReader::new(f))
    }

    /// Reads the line format from `r`. Blank lines are skipped; several
    /// `final_reads` lines are merged (a key may appear in only one).
    pub fn read_from(r: impl BufRead) -> Result<History, HistoryError> {
        let mut h = History::default();
        let mut final_line: HashMap<String, usize> = HashMap::new();
        for (i, text) in r.lines().enumerate() {
            let line = i + 1;
            let bad = |message: String| HistoryError::Line { line, message };
            let text = text.map_err(|e| match e.kind() {
                std::io::ErrorKind::InvalidData => bad("not UTF-8 text".into()),
                _ => bad(format!("reading: {e}")),
            })?;
            if text.trim().is_empty() {
                continue;
            }
            let parsed: LineIn = serde_json::from_str(&text).map_err(|e| bad(json_message(&e)))?;
            match parsed {
                LineIn::Register(e) => {
                    validate_register(&e).map_err(bad)?;
                    h.registers.push(e);
                    h.lines.registers.push(line);
                }
                LineIn::Set(e) => {
                    if matches!(e.outcome, Outcome::Ok(r) if r != RegResult::Written) {
                        return Err(bad(format!(
                            "a set addition that is ok says {{\"Ok\": \"Written\"}}, not {:?}",
                            e.outcome
                        )));
                    }
                    h.sets.push(e);
                    h.lines.sets.push(line);
                }
                LineIn::FinalReads(reads) => {
                    for (key, elems) in reads {
                        if let Some(first) = final_line.insert(key.clone(), line) {
                            return Err(bad(format!(
                                "a second final read of set key {key:?} (the first is on line {first})"
                            )));
                        }
                        h.final_reads.insert(key, elems);
                    }
                }
            }
        }
        for (e, &line) in h.sets.iter().zip(&h.lines.sets) {
            if !h.final_reads.contains_key(&e.key) {
                return Err(HistoryError::NoFinalRead { key: e.key.clone(), line });
            }
        }
        Ok(h)
    }

    /// The line an entry came from, as text for messages ("" when unknown).
    fn at(lines: &[usize], i: usize) -> String {
        lines.get(i).map_or_else(String::new, |l| format!("line {l}: "))
    }
}

/// serde_json's message without its position: the file's line is ours to
/// say, serde_json's "line 1" would only mislead; the column helps.
fn json_message(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let message = text.rsplit_once(" at line ").map_or(text.as_str(), |(m, _)| m);
    if e.column() > 0 {
        format!("{message} (column {})", e.column())
    } else {
        message.to_string()
    }
}

/// What serde cannot say about a register line: a completion time where
/// the outcome needs one, and a result that fits the operation.
fn validate_register(e: &RegEvent) -> Result<(), String> {
    match (e.outcome, e.complete_ns) {
        (Outcome::Ok(_) | Outcome::Fail, None) => {
            return Err("an ok or failed operation needs \"complete_ns\" (null is only for info)".into())
        }
        (_, Some(c)) if c < e.invoke_ns => {
            return Err(format!("\"complete_ns\" {c} is before \"invoke_ns\" {}", e.invoke_ns))
        }
        _ => {}
    }
    let fits = match (e.op, e.outcome) {
        (_, Outcome::Fail | Outcome::Info) => true,
        (RegOp::Read, Outcome::Ok(r)) => matches!(r, RegResult::Read(_)),
        (RegOp::Write(_), Outcome::Ok(r)) => matches!(r, RegResult::Written),
        (RegOp::Cas { .. }, Outcome::Ok(r)) => matches!(r, RegResult::Cas { .. }),
    };
    if !fits {
        return Err(format!("the result {:?} does not fit the operation {:?}", e.outcome, e.op));
    }
    Ok(())
}

/// The verdict on a history: both checkers' reports and operation counts.
#[derive(Debug)]
pub struct CheckReport {
    /// Operations by kind and outcome ("register read ok", "register cas
    /// info", "set-add ok", ...).
    pub ops_by_kind: BTreeMap<String, usize>,
    /// The linearizability check of the registers.
    pub registers: RegReport,
    /// The check of the sets against their final reads.
    pub sets: SetReport,
}

impl CheckReport {
    /// Linearizability violations plus duplicated and phantom set elements
    /// (as a run's summary counts them).
    pub fn anomalies(&self) -> usize {
        self.registers.violations.len() + self.sets.duplicated.len() + self.sets.phantom.len()
    }

    /// Acknowledged set elements missing from their final read.
    pub fn lost(&self) -> usize {
        self.sets.lost.len()
    }

    /// 0 clean, [`EXIT_ANOMALY`], or [`EXIT_UNDECIDED`] — the codes of a run.
    pub fn exit_code(&self) -> i32 {
        if self.anomalies() > 0 || self.lost() > 0 {
            EXIT_ANOMALY
        } else if !self.registers.undecided.is_empty() {
            EXIT_UNDECIDED
        } else {
            0
        }
    }
}

fn outcome_name(o: &Outcome) -> &'static str {
    match o {
        Outcome::Ok(_) => "ok",
        Outcome::Fail => "fail",
        Outcome::Info => "info",
    }
}

/// Runs both checkers on `h`, each register key within `key_budget`.
pub fn check(h: &History, key_budget: Duration) -> CheckReport {
    let mut ops_by_kind: BTreeMap<String, usize> = BTreeMap::new();
    for e in &h.registers {
        let kind = match e.op {
            RegOp::Read => "read",
            RegOp::Write(_) => "write",
            RegOp::Cas { .. } => "cas",
        };
        *ops_by_kind.entry(format!("register {kind} {}", outcome_name(&e.outcome))).or_default() += 1;
    }
    for e in &h.sets {
        *ops_by_kind.entry(format!("set-add {}", outcome_name(&e.outcome))).or_default() += 1;
    }
    CheckReport {
        ops_by_kind,
        registers: check_registers(&h.registers, key_budget),
        sets: check_sets(&h.sets, &h.final_reads),
    }
}

/// One register operation for a person: time, client, what, outcome.
fn describe(e: &RegEvent) -> String {
    let value = |v: Option<u64>| v.map_or_else(|| "absent".to_string(), |v| v.to_string());
    let op = match e.op {
        RegOp::Read => "read".to_string(),
        RegOp::Write(v) => format!("write {v}"),
        RegOp::Cas { expected, new } => format!("cas {} -> {new}", value(expected)),
    };
    let outcome = match e.outcome {
        Outcome::Ok(RegResult::Read(v)) => format!("ok, read {}", value(v)),
        Outcome::Ok(RegResult::Written) => "ok".to_string(),
        Outcome::Ok(RegResult::Cas { succeeded: true, .. }) => "ok, swapped".to_string(),
        Outcome::Ok(RegResult::Cas { succeeded: false, current }) => {
            format!("ok, not swapped: held {}", value(current))
        }
        Outcome::Fail => "fail".to_string(),
        Outcome::Info => "info (outcome unknown)".to_string(),
    };
    let done = e.complete_ns.map_or_else(|| "-".to_string(), |c| c.to_string());
    format!("[{} .. {done} ns] client {}: {op}: {outcome}", e.invoke_ns, e.client)
}

impl CheckReport {
    /// The summary a person reads: counts, then every anomaly with its key
    /// and operations (with their lines when `h` was read from a file), every
    /// lost write and every undecided key.
    pub fn render(&self, h: &History) -> String {
        let mut s = String::new();
        // Writing to a String cannot fail.
        let mut line = |text: String| {
            let _ = writeln!(s, "{text}");
        };
        line(format!("  {:<40} {:>10}", "operations", "count"));
        for (k, v) in &self.ops_by_kind {
            line(format!("  {k:<40} {v:>10}"));
        }
        line(format!("  {:<40} {:>10}", "register operations checked", self.registers.ops_checked));
        line(format!("  {:<40} {:>10}", "register keys undecided", self.registers.undecided.len()));
        line(format!("  {:<40} {:>10}", "set elements acknowledged", self.sets.acknowledged));
        line(format!("  {:<40} {:>10}", "set elements of unknown outcome present", self.sets.unknown_present));
        line(format!("  {:<40} {:>10}", "anomalies (must be 0)", self.anomalies()));
        line(format!("  {:<40} {:>10}", "acknowledged writes lost (must be 0)", self.lost()));
        for v in &self.registers.violations {
            line(format!(
                "anomaly: register key {:?} is not linearizable ({} operations of the key; no order explains these {}):",
                v.key,
                v.key_ops,
                v.ops.len()
            ));
            for (e, &src) in v.ops.iter().zip(&v.sources) {
                line(format!("    {}{}", History::at(&h.lines.registers, src), describe(e)));
            }
        }
        let set_line: HashMap<(&str, u64), usize> =
            h.sets.iter().enumerate().map(|(i, e)| ((e.key.as_str(), e.element), i)).collect();
        let set_at = |key: &str, elem: u64| {
            set_line.get(&(key, elem)).map_or_else(String::new, |&i| History::at(&h.lines.sets, i))
        };
        for (key, elem) in &self.sets.lost {
            line(format!(
                "lost: {}set key {key:?}: element {elem} was acknowledged but is not in the final read",
                set_at(key, *elem)
            ));
        }
        for (key, elem) in &self.sets.duplicated {
            line(format!("anomaly: set key {key:?}: element {elem} is in the final read more than once"));
        }
        for (key, elem) in &self.sets.phantom {
            let why = if set_line.contains_key(&(key.as_str(), *elem)) {
                "its addition definitely failed"
            } else {
                "it was never added"
            };
            line(format!(
                "anomaly: {}set key {key:?}: element {elem} is in the final read but {why}",
                set_at(key, *elem)
            ));
        }
        for key in &self.registers.undecided {
            line(format!("undecided: register key {key:?}: the search ran out of its time budget (nothing proven)"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(text: &str) -> Result<History, HistoryError> {
        History::read_from(text.as_bytes())
    }

    fn line_of(e: HistoryError) -> usize {
        match e {
            HistoryError::Line { line, .. } | HistoryError::NoFinalRead { line, .. } => line,
            other => panic!("not a line error: {other}"),
        }
    }

    const READ: &str =
        r#"{"register":{"client":1,"key":"k","op":"Read","invoke_ns":5,"complete_ns":6,"outcome":{"Ok":{"Read":1}}}}"#;
    const WRITE: &str = r#"{"register":{"client":0,"key":"k","op":{"Write":1},"invoke_ns":1,"complete_ns":2,"outcome":{"Ok":"Written"}}}"#;

    #[test]
    fn a_written_history_reads_back_the_same() {
        let ok = Outcome::Ok(RegResult::Written);
        let h = History {
            registers: vec![
                RegEvent {
                    client: 0,
                    key: "k".into(),
                    op: RegOp::Write(1),
                    invoke_ns: 1,
                    complete_ns: Some(2),
                    outcome: ok,
                },
                RegEvent {
                    client: 1,
                    key: "k".into(),
                    op: RegOp::Cas { expected: None, new: 2 },
                    invoke_ns: 3,
                    complete_ns: None,
                    outcome: Outcome::Info,
                },
                RegEvent {
                    client: 2,
                    key: "k".into(),
                    op: RegOp::Read,
                    invoke_ns: 4,
                    complete_ns: Some(9),
                    outcome: Outcome::Ok(RegResult::Read(None)),
                },
            ],
            sets: vec![SetAdd { key: "s".into(), element: 7, outcome: ok }],
            final_reads: [("s".to_string(), vec![7])].into(),
            lines: Lines::default(),
        };
        let mut buf = Vec::new();
        h.write_to(&mut buf).expect("write to memory");
        let back = History::read_from(buf.as_slice()).expect("read back");
        assert_eq!(back.registers, h.registers);
        assert_eq!(back.sets, h.sets);
        assert_eq!(back.final_reads, h.final_reads);
        assert_eq!(back.lines, Lines { registers: vec![1, 2, 3], sets: vec![4] });
    }

    #[test]
    fn the_documented_examples_parse() {
        // The examples of docs/fault-injection.md, verbatim.
        let text = r#"{"register":{"client":3,"key":"reg-0-1","op":{"Write":3000000001},"invoke_ns":1200,"complete_ns":3400,"outcome":{"Ok":"Written"}}}
{"register":{"client":1,"key":"reg-0-1","op":"Read","invoke_ns":3500,"complete_ns":4100,"outcome":{"Ok":{"Read":3000000001}}}}
{"register":{"client":2,"key":"reg-0-1","op":"Read","invoke_ns":100,"complete_ns":900,"outcome":{"Ok":{"Read":null}}}}
{"register":{"client":0,"key":"reg-0-1","op":{"Cas":{"expected":3000000001,"new":1000000002}},"invoke_ns":4200,"complete_ns":5000,"outcome":{"Ok":{"Cas":{"succeeded":true,"current":3000000001}}}}}
{"register":{"client":2,"key":"reg-0-1","op":{"Cas":{"expected":null,"new":2000000001}},"invoke_ns":5100,"complete_ns":5600,"outcome":{"Ok":{"Cas":{"succeeded":false,"current":1000000002}}}}}
{"register":{"client":1,"key":"reg-0-1","op":{"Write":1000000003},"invoke_ns":5700,"complete_ns":null,"outcome":"Info"}}
{"register":{"client":0,"key":"reg-0-1","op":{"Write":1000000004},"invoke_ns":5800,"complete_ns":6000,"outcome":"Fail"}}
{"set":{"key":"set-0-0","element":4000000001,"outcome":{"Ok":"Written"}}}
{"set":{"key":"set-0-0","element":4000000002,"outcome":"Info"}}
{"set":{"key":"set-0-0","element":4000000003,"outcome":"Fail"}}
{"final_reads":{"set-0-0":[4000000001,4000000002]}}
"#;
        let h = read(text).expect("the documented examples are a valid history");
        assert_eq!((h.registers.len(), h.sets.len(), h.final_reads.len()), (7, 3, 1));
        let r = check(&h, Duration::from_secs(5));
        assert_eq!(r.exit_code(), 0, "{}", r.render(&h));
    }

    #[test]
    fn corrupt_lines_are_errors_that_name_the_line() {
        let cases = [
            ("not JSON", format!("{WRITE}\n{{\"register\": \n")),
            ("unknown op", format!("{WRITE}\n{}\n", READ.replace("\"Read\",", "{\"Append\":3},"))),
            ("missing field", format!("{WRITE}\n{}\n", READ.replace("\"client\":1,", ""))),
            ("missing Option field", format!("{WRITE}\n{}\n", READ.replace("\"complete_ns\":6,", ""))),
            ("unknown field", format!("{WRITE}\n{}\n", READ.replace("\"client\"", "\"process\":0,\"client\""))),
            ("unknown kind of line", format!("{WRITE}\n{{\"nemesis\":{{}}}}\n")),
            ("two kinds on one line", format!("{WRITE}\n{{\"set\":{{}},\"register\":{{}}}}\n")),
            ("result of another op", format!("{WRITE}\n{}\n", READ.replace("{\"Read\":1}", "\"Written\""))),
            (
                "set addition with a read result",
                format!("{WRITE}\n{{\"set\":{{\"key\":\"s\",\"element\":1,\"outcome\":{{\"Ok\":{{\"Read\":1}}}}}}}}\n"),
            ),
            (
                "ok without completion",
                format!("{WRITE}\n{}\n", READ.replace("\"complete_ns\":6", "\"complete_ns\":null")),
            ),
            (
                "completed before invoked",
                format!("{WRITE}\n{}\n", READ.replace("\"complete_ns\":6", "\"complete_ns\":4")),
            ),
            ("final read twice", "{\"final_reads\":{\"s\":[]}}\n{\"final_reads\":{\"s\":[1]}}\n".to_string()),
            (
                "set without final read",
                format!("{WRITE}\n{{\"set\":{{\"key\":\"s\",\"element\":1,\"outcome\":\"Fail\"}}}}\n"),
            ),
        ];
        for (what, text) in cases {
            let e = read(&text).expect_err(what);
            let msg = e.to_string();
            assert!(msg.starts_with("line 2: "), "{what}: {msg}");
            assert_eq!(line_of(e), 2, "{what}");
            assert!(!msg.contains("at line 1"), "{what}: serde_json's own position is dropped: {msg}");
        }
        let e = read(&format!("{WRITE}\n{}\n", READ.replace("\"Read\",", "{\"Append\":3},"))).expect_err("unknown op");
        assert!(e.to_string().contains("unknown variant `Append`"), "{e}");
        let bytes = [WRITE.as_bytes(), b"\n\xff\xfe\n"].concat();
        let e = History::read_from(bytes.as_slice()).expect_err("not UTF-8");
        assert_eq!(e.to_string(), "line 2: not UTF-8 text");
    }

    #[test]
    fn exit_codes_rank_anomalies_over_undecided_keys() {
        let report = |violations: usize, lost: usize, undecided: usize| CheckReport {
            ops_by_kind: BTreeMap::new(),
            registers: RegReport {
                ops_checked: 0,
                violations: (0..violations)
                    .map(|i| crate::checker::Violation {
                        key: format!("k{i}"),
                        key_ops: 0,
                        ops: Vec::new(),
                        sources: Vec::new(),
                    })
                    .collect(),
                undecided: (0..undecided).map(|i| format!("u{i}")).collect(),
            },
            sets: SetReport { lost: (0..lost as u64).map(|e| ("s".to_string(), e)).collect(), ..Default::default() },
        };
        assert_eq!(report(0, 0, 0).exit_code(), 0);
        assert_eq!(report(0, 0, 1).exit_code(), EXIT_UNDECIDED);
        assert_eq!(report(1, 0, 1).exit_code(), EXIT_ANOMALY);
        assert_eq!(report(0, 1, 1).exit_code(), EXIT_ANOMALY);
    }

    #[test]
    fn a_stale_read_and_a_lost_add_are_reported_with_their_lines() {
        let text = format!(
            "{WRITE}\n{}\n{}\n{{\"set\":{{\"key\":\"s\",\"element\":9,\"outcome\":{{\"Ok\":\"Written\"}}}}}}\n{{\"final_reads\":{{\"s\":[]}}}}\n",
            WRITE.replace("{\"Write\":1}", "{\"Write\":2}").replace("\"invoke_ns\":1,\"complete_ns\":2", "\"invoke_ns\":3,\"complete_ns\":4"),
            READ,
        );
        let h = read(&text).expect("valid");
        let r = check(&h, Duration::from_secs(5));
        assert_eq!((r.anomalies(), r.lost(), r.exit_code()), (1, 1, EXIT_ANOMALY));
        let out = r.render(&h);
        assert!(out.contains("anomaly: register key \"k\" is not linearizable"), "{out}");
        assert!(out.contains("line 3: [5 .. 6 ns] client 1: read: ok, read 1"), "{out}");
        assert!(out.contains("lost: line 4: set key \"s\": element 9 was acknowledged"), "{out}");
    }
}
