//! deploy/ against this build: every `ringkv` command line of the compose
//! stack, the Kubernetes manifests and the systemd units (with the TOML
//! files they read) is accepted by this binary's argument parser, and ports
//! and addresses agree across the files (`deploy/check_deploy.py`, which
//! also runs by hand). Docker and Kubernetes themselves cannot run here:
//! this is what can be proven without them.

use std::path::Path;
use std::process::{Command, Stdio};

#[test]
fn every_command_line_in_deploy_is_accepted_and_the_files_agree() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let yaml = Command::new("python3").args(["-c", "import yaml"]).stderr(Stdio::null()).status();
    if !yaml.is_ok_and(|s| s.success()) {
        eprintln!("skipping: python3 with PyYAML is not installed (scripts/setup.sh installs python3-yaml)");
        return;
    }
    let out = Command::new("python3")
        .args(["deploy/check_deploy.py", "--check-binary", env!("CARGO_BIN_EXE_ringkv")])
        .current_dir(&root)
        .stdin(Stdio::null())
        .output()
        .expect("run deploy/check_deploy.py");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    let n: usize =
        text.lines().find_map(|l| l.strip_prefix("ok: ")?.split_whitespace().next()?.parse().ok()).unwrap_or(0);
    assert!(n >= 9, "command lines checked: {text}");
}
