//! Checks of the balancing-quality benchmark's own machinery (`lb-backend`,
//! `lb-loadgen`, `lb-bench`), with real processes on 127.0.0.1:
//! - the backend model puts queueing into latency (FIFO slots);
//! - identical backends get equal shares under round_robin and load_aware;
//! - a killed backend gets no requests once the kill has propagated;
//! - every scenario file in `scripts/scenarios/` parses.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lb_bench::clock::unix_ms;
use lb_bench::work::work_client::WorkClient;
use lb_bench::work::DoRequest;
use lb_tests::harness::{bin, Daemon, Proc};
use serde_json::Value;

fn backend(daemon: &str, id: &str, extra: &[&str], dir: &Path) -> Proc {
    let mut args: Vec<String> = ["--daemon", daemon, "--service", "work", "--id", id]
        .iter()
        .map(|s| s.to_string())
        .collect();
    args.extend(extra.iter().map(|s| s.to_string()));
    Proc::spawn(
        &bin("lb-backend").expect("lb-backend built"),
        &args,
        dir.join(format!("{id}.log")),
        Duration::from_secs(20),
    )
    .expect("start lb-backend")
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

#[tokio::test]
async fn queueing_is_part_of_latency() {
    let dir = tempfile::tempdir().unwrap();
    // No daemon: the reporter keeps retrying in the background; serving works.
    let b = backend(
        "127.0.0.1:1",
        "q1",
        &["--slots", "1", "--service-ms", "50"],
        dir.path(),
    );
    let mut client = WorkClient::connect(format!("http://{}", b.addr))
        .await
        .unwrap();
    // Warm the connection so both calls below start together.
    client.r#do(DoRequest { work: 0.01 }).await.unwrap();
    let call = |mut c: WorkClient<tonic::transport::Channel>| async move {
        let t = Instant::now();
        c.r#do(DoRequest { work: 1.0 }).await.unwrap();
        t.elapsed()
    };
    let (a, b2) = tokio::join!(call(client.clone()), call(client.clone()));
    let (first, second) = if a < b2 { (a, b2) } else { (b2, a) };
    assert!(
        first >= Duration::from_millis(40),
        "one slot, 50 ms: first took {first:?}"
    );
    assert!(
        second.as_secs_f64() >= 1.6 * first.as_secs_f64(),
        "the second request must wait for the first: {first:?} then {second:?}"
    );
    drop(b);
}

/// Runs lb-bench on `scenario` (TOML text) and returns its result.
fn run_bench(name: &str, scenario: &str, policies: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.toml"));
    std::fs::write(&path, scenario).unwrap();
    let out = dir.path().join("out");
    let o = Command::new(bin("lb-bench").expect("lb-bench built"))
        .args(["--scenario", &path.display().to_string()])
        .args(["--policies", policies])
        .args(["--out", &out.display().to_string()])
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "lb-bench failed:\n{}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    let text = std::fs::read_to_string(out.join(format!("quality-{name}.json"))).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn identical_backends_get_equal_shares() {
    let scenario = r#"
name = "equal"
clients = 4
load = 0.15
warmup = "1s"
duration = "3s"
seed = 7
[[backends]]
id = "e0"
service_ms = 10
[[backends]]
id = "e1"
service_ms = 10
[[backends]]
id = "e2"
service_ms = 10
"#;
    let r = run_bench("equal", scenario, "round_robin,load_aware");
    let shares = &r["series"]["shares"];
    for policy in ["round_robin", "load_aware"] {
        for id in ["e0", "e1", "e2"] {
            let s = shares[policy][id].as_f64().unwrap();
            assert!(
                (s - 100.0 / 3.0).abs() <= 5.0,
                "{policy}: {id} got {s} % of the requests: {shares}"
            );
        }
    }
    let cols = r["columns"].as_array().unwrap();
    let errors = cols.iter().position(|c| c == "errors").unwrap();
    for row in r["rows"].as_array().unwrap() {
        assert_eq!(row[errors], 0, "no errors at 15 % load: {row}");
    }
}

#[test]
fn a_killed_backend_gets_no_requests_after_propagation() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[]).unwrap();
    let addr = daemon.addr();
    let _k0 = backend(&addr, "k0", &["--service-ms", "10"], dir.path());
    let mut k1 = backend(&addr, "k1", &["--service-ms", "10"], dir.path());
    let out = dir.path().join("run.json");
    let start = unix_ms() + 1000;
    let mut lg = Command::new(bin("lb-loadgen").unwrap())
        .args(["--daemon", &addr, "--service", "work", "--clients", "4"])
        .args(["--rate", "300", "--warmup", "500ms", "--duration", "2500ms"])
        .args(["--min-servers", "2", "--phases", "1s,1200ms"])
        .args(["--start-at-unix-ms", &start.to_string()])
        .args(["--out", &out.display().to_string()])
        .spawn()
        .unwrap();
    // Kill k1 one second into the measured run.
    let kill_at = start + 500 + 1000;
    std::thread::sleep(Duration::from_millis(kill_at.saturating_sub(unix_ms())));
    k1.kill9();
    assert!(lg.wait().unwrap().success(), "lb-loadgen failed");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    let phases = r["phases"].as_array().unwrap();
    assert_eq!(phases.len(), 3, "{r}");
    assert!(
        phases[0]["backends"]["k1"].as_u64().unwrap_or(0) > 50,
        "k1 served before the kill: {}",
        phases[0]
    );
    assert_eq!(
        phases[2]["backends"]["k1"].as_u64().unwrap_or(0),
        0,
        "requests reached k1 more than 200 ms after its kill: {}",
        phases[2]
    );
    assert_eq!(phases[2]["errors"], 0, "{}", phases[2]);
}

#[test]
fn scenario_files_parse() {
    let dir = workspace_root().join("scripts/scenarios");
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml") {
            let o = Command::new(bin("lb-bench").unwrap())
                .args(["--check", "--scenario", &p.display().to_string()])
                .output()
                .unwrap();
            assert!(
                o.status.success(),
                "{}: {}",
                p.display(),
                String::from_utf8_lossy(&o.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 3, "expected the scenario files in {}", dir.display());
}
