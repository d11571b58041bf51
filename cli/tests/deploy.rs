//! deploy/ against this build: every `ringkv` command line of the compose
//! stack, the Kubernetes manifests and the systemd units (with the TOML
//! files they read) is accepted by this binary's argument parser, and ports
//! and addresses agree across the files (`deploy/check_deploy.py`, which
//! also runs by hand). Docker and Kubernetes themselves cannot run here:
//! this is what can be proven without them. And a cluster configured by
//! nothing but `RINGKV_…` environment variables, as containers are, serves.

mod common;

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

#[test]
fn servers_take_every_setting_from_ringkv_environment_variables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (p_grpc, p_http) = (common::free_addr(), common::free_addr());
    let (s_grpc, s_http) = (common::free_addr(), common::free_addr());
    let (r_grpc, r_http) = (common::free_addr(), common::free_addr());
    let spawn = |role: &str, env: Vec<(&str, String)>| {
        let log = std::fs::File::create(dir.path().join(format!("{role}.log"))).expect("log");
        // No flags at all: a container's environment is the whole config.
        common::ringkv()
            .arg(role)
            .envs(env)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn")
    };
    let data = |name: &str| dir.path().join(name).display().to_string();
    let mut kids = common::Kids(Vec::new());
    kids.0.push(spawn(
        "placement",
        vec![
            ("RINGKV_ID", "1".into()),
            ("RINGKV_LISTEN", p_grpc.clone()),
            ("RINGKV_HTTP", p_http.clone()),
            ("RINGKV_DATA_DIR", data("placement")),
            ("RINGKV_MEMBER", format!("1={p_grpc}")),
            ("RINGKV_REPLICATION_FACTOR", "1".into()),
            ("RINGKV_INITIAL_SHARDS", "2".into()),
        ],
    ));
    kids.0.push(spawn(
        "storenode",
        vec![
            ("RINGKV_LISTEN", s_grpc.clone()),
            ("RINGKV_HTTP", s_http.clone()),
            ("RINGKV_DATA_DIR", data("storenode")),
            ("RINGKV_PLACEMENT", p_grpc.clone()),
        ],
    ));
    kids.0.push(spawn(
        "router",
        vec![("RINGKV_LISTEN", r_grpc), ("RINGKV_HTTP", r_http.clone()), ("RINGKV_PLACEMENT", p_grpc)],
    ));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    loop {
        let put = common::try_http("PUT", &r_http, "/v1/kv/from-env", b"yes");
        if put.as_ref().is_ok_and(|(code, _)| *code == 200 || *code == 204) {
            break;
        }
        if std::time::Instant::now() > deadline {
            let logs: Vec<String> = ["placement", "storenode", "router"]
                .iter()
                .map(|r| std::fs::read_to_string(dir.path().join(format!("{r}.log"))).unwrap_or_default())
                .collect();
            panic!("no write through a cluster configured by environment: {put:?}\n{}", logs.join("\n---\n"));
        }
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (code, body) = common::http("GET", &r_http, "/v1/kv/from-env", b"");
    assert_eq!((code, body.as_slice()), (200, b"yes".as_slice()));
    for http in [&p_http, &s_http, &r_http] {
        assert_eq!(common::http("GET", http, "/readyz", b"").0, 200, "{http} ready");
    }
    assert!(dir.path().join("storenode/identity.toml").exists(), "the storenode got its id from placement and kept it");
}
