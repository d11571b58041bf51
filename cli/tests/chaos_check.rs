//! `ringkv chaos check FILE`: a recorded history checked on its own, no
//! cluster, no root. Hand-written histories: a clean one passes (exit 0), a
//! stale read is an anomaly and a lost acknowledged set addition is reported
//! (exit 3), and a corrupt line is an error that names it (exit 1).

mod common;

use std::path::Path;

use common::ringkv;

/// Writes `lines` as a history file in `dir`; runs `ringkv chaos check` on
/// it: exit code, stdout, stderr.
fn check(dir: &Path, lines: &[&str]) -> (i32, String, String) {
    let path = dir.join("history.jsonl");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write the history");
    let out = ringkv().args(["chaos", "check"]).arg(&path).output().expect("run ringkv chaos check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const WRITE_1: &str =
    r#"{"register":{"client":0,"key":"r","op":{"Write":1},"invoke_ns":0,"complete_ns":10,"outcome":{"Ok":"Written"}}}"#;
const WRITE_2: &str = r#"{"register":{"client":0,"key":"r","op":{"Write":2},"invoke_ns":20,"complete_ns":30,"outcome":{"Ok":"Written"}}}"#;
const READ_2: &str =
    r#"{"register":{"client":1,"key":"r","op":"Read","invoke_ns":40,"complete_ns":50,"outcome":{"Ok":{"Read":2}}}}"#;
/// Reads 1 after the write of 2 completed: stale.
const READ_1_LATE: &str =
    r#"{"register":{"client":1,"key":"r","op":"Read","invoke_ns":40,"complete_ns":50,"outcome":{"Ok":{"Read":1}}}}"#;
const CAS_2_3: &str = r#"{"register":{"client":2,"key":"r","op":{"Cas":{"expected":2,"new":3}},"invoke_ns":60,"complete_ns":null,"outcome":"Info"}}"#;
const ADD_7: &str = r#"{"set":{"key":"s","element":7,"outcome":{"Ok":"Written"}}}"#;
const ADD_8: &str = r#"{"set":{"key":"s","element":8,"outcome":{"Ok":"Written"}}}"#;
const ADD_9_INFO: &str = r#"{"set":{"key":"s","element":9,"outcome":"Info"}}"#;

#[test]
fn a_clean_history_passes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = check(
        dir.path(),
        &[WRITE_1, WRITE_2, READ_2, CAS_2_3, ADD_7, ADD_8, ADD_9_INFO, r#"{"final_reads":{"s":[7,8]}}"#],
    );
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("read ok") && out.contains("write ok") && out.contains("cas info"), "counts by kind: {out}");
    assert!(out.contains("set-add ok"), "{out}");
    let zero = |label: &str| out.lines().any(|l| l.contains(label) && l.trim_end().ends_with(" 0"));
    assert!(zero("anomalies (must be 0)") && zero("acknowledged writes lost (must be 0)"), "{out}");
}

#[test]
fn a_stale_read_is_an_anomaly_with_its_key_and_operations() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = check(dir.path(), &[WRITE_1, WRITE_2, READ_1_LATE, r#"{"final_reads":{}}"#]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(out.contains("anomaly: register key \"r\" is not linearizable"), "{out}");
    assert!(out.contains("line 3: [40 .. 50 ns] client 1: read: ok, read 1"), "the stale read, by line: {out}");
    assert!(out.contains("line 2: [20 .. 30 ns] client 0: write 2: ok"), "the write it missed: {out}");
    assert!(err.contains("1 anomalies"), "{err}");
}

#[test]
fn a_lost_acknowledged_set_add_is_reported() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (code, out, err) = check(dir.path(), &[ADD_7, ADD_8, ADD_9_INFO, r#"{"final_reads":{"s":[7,9]}}"#]);
    assert_eq!(code, 3, "{out}{err}");
    assert!(
        out.contains("lost: line 2: set key \"s\": element 8 was acknowledged but is not in the final read"),
        "{out}"
    );
    assert!(err.contains("1 acknowledged writes lost"), "{err}");
}

#[test]
fn a_corrupt_line_is_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("not JSON", r#"{"register": {"client": 0,"#.to_string(), "EOF while parsing"),
        ("unknown op", READ_2.replace("\"Read\"", "{\"Append\":5}"), "unknown variant `Append`"),
        ("missing field", READ_2.replace("\"invoke_ns\":40,", ""), "missing field `invoke_ns`"),
    ];
    for (what, bad, says) in cases {
        let (code, out, err) = check(dir.path(), &[WRITE_1, WRITE_2, &bad, r#"{"final_reads":{}}"#]);
        assert_eq!(code, 1, "{what}: {out}{err}");
        assert!(err.contains("history.jsonl: line 3") && err.contains(says), "{what}: {err}");
        assert!(!err.contains("panicked"), "{what}: {err}");
    }
    let (code, _, err) = check(dir.path(), &[r#"{"final_reads":{}}"#]);
    assert!(code == 1 && err.contains("holds no operation"), "an empty history proves nothing: {err}");
    let out = ringkv().args(["chaos", "check", "/nonexistent/history.jsonl"]).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/nonexistent/history.jsonl: No such file"), "names the file once: {err}");
}
