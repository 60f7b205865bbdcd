//! The daemon's configuration surfaces, on the real binary: `--config`
//! (a TOML file of flags; flags and `LB_*` variables override it),
//! `--print-config`, `--log-format json`, shell completions, and the
//! repository's example file and systemd unit.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use lb_tests::harness::{bin, succeeded, Proc};

fn lb_server() -> Command {
    let mut cmd = Command::new(bin("lb-server").expect("lb-server is built"));
    // Only what a test sets.
    for (k, _) in std::env::vars() {
        if k.starts_with("LB_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `key = value  # source` lines of `--print-config`, by key.
fn effective(out: &str) -> std::collections::BTreeMap<String, (String, String)> {
    out.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (kv, source) = l.split_once("  # ")?;
            let (k, v) = kv.split_once(" = ")?;
            Some((k.to_string(), (v.to_string(), source.to_string())))
        })
        .collect()
}

#[test]
fn flags_and_the_environment_override_the_file_and_print_config_says_which() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lb.toml");
    std::fs::write(
        &file,
        "listen = \"127.0.0.1:7499\"\nreport_interval = \"100ms\"\ndefault-policy = \"round_robin\"\nauth = true\n",
    )
    .expect("write");
    let out = succeeded(
        lb_server()
            .args(["--config"])
            .arg(&file)
            .args(["--print-config", "--default-policy", "random"])
            .env("LB_REPORT_INTERVAL", "300ms")
            .output()
            .expect("run"),
        "--print-config",
    );
    let e = effective(&out);
    let at = |k: &str| e.get(k).cloned().unwrap_or_default();
    assert_eq!(at("listen"), ("\"127.0.0.1:7499\"".into(), "file".into()));
    assert_eq!(
        at("report-interval"),
        ("\"300ms\"".into(), "environment".into())
    );
    assert_eq!(at("default-policy"), ("\"random\"".into(), "flag".into()));
    assert_eq!(at("auth"), ("true".into(), "file".into()));
    assert_eq!(at("drain-timeout"), ("\"5s\"".into(), "default".into()));
    // What it prints reads back as a configuration file, to the same values.
    let again = dir.path().join("again.toml");
    std::fs::write(&again, &out).expect("write");
    let back = succeeded(
        lb_server()
            .arg("--config")
            .arg(&again)
            .arg("--print-config")
            .output()
            .expect("run"),
        "--print-config of its own output",
    );
    let values = |m: &std::collections::BTreeMap<String, (String, String)>| {
        m.iter()
            .map(|(k, (v, _))| (k.clone(), v.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(values(&effective(&back)), values(&e));
}

#[test]
fn a_bad_file_is_refused_naming_the_key() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lb.toml");
    std::fs::write(&file, "lisen = \"127.0.0.1:7400\"\n").expect("write");
    let out = lb_server()
        .arg("--config")
        .arg(&file)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("\"lisen\" is not an lb-server flag"), "{err}");
    let out = lb_server()
        .arg("--config")
        .arg(dir.path().join("missing.toml"))
        .output()
        .expect("run");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration file"));
}

#[test]
fn the_daemon_runs_from_a_file_and_logs_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("lb.toml");
    std::fs::write(
        &file,
        format!(
            "listen = \"127.0.0.1:0\"\ndata-dir = {:?}\nlog-format = \"json\"\n",
            dir.path().join("data").display().to_string()
        ),
    )
    .expect("write");
    let mut daemon = Proc::spawn(
        &bin("lb-server").expect("built"),
        &["--config".to_string(), file.display().to_string()],
        dir.path().join("daemon.log"),
        Duration::from_secs(20),
    )
    .expect("the daemon starts from its file");
    assert!(
        dir.path().join("data").exists(),
        "its data directory came from the file"
    );
    let log = daemon.log();
    let first = log.lines().next().expect("a log line");
    let line: serde_json::Value = serde_json::from_str(first).expect("a JSON log line");
    assert!(line["fields"]["message"].is_string(), "{line}");
    assert_eq!(line["level"], "INFO");
    daemon.kill9();
}

#[test]
fn completions_and_the_repository_examples_work() {
    for shell in ["bash", "zsh", "fish"] {
        let out = succeeded(
            lb_server()
                .args(["completions", shell])
                .output()
                .expect("run"),
            shell,
        );
        assert!(
            out.contains("lb-server") && out.contains("print-config"),
            "{shell}"
        );
    }
    // The example file is valid, every key a flag.
    let example = root().join("deploy/lb.example.toml");
    let out = succeeded(
        lb_server()
            .arg("--config")
            .arg(&example)
            .arg("--print-config")
            .output()
            .expect("run"),
        "the example configuration",
    );
    assert_eq!(
        effective(&out)["data-dir"],
        ("\"/var/lib/lb\"".into(), "file".into())
    );
    // The systemd unit runs a command line the daemon accepts.
    let unit = std::fs::read_to_string(root().join("deploy/lb-server.service")).expect("unit");
    let exec = unit
        .lines()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let flags: Vec<&str> = exec.split_whitespace().skip(1).collect();
    assert_eq!(flags, ["--config", "/etc/lb/lb.toml"]);
}
