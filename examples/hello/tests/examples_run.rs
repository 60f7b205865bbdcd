//! The example programs, run as a newcomer runs them: a real `lb-server`,
//! two `backend`s, then `caller` and `routed`, each of which must work on
//! its first try and print what the README says it prints.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

use lb_tests::harness::{ctl, wait_until, Daemon, Proc, WAIT};

fn backend(daemon: &str, id: &str, label: &str, logs: &Path) -> Proc {
    let args = [daemon.to_string(), id.to_string(), label.to_string()];
    Proc::spawn(
        Path::new(env!("CARGO_BIN_EXE_backend")),
        &args,
        logs.join(format!("{id}.log")),
        WAIT,
    )
    .expect("backend starts")
}

/// Runs an example to its end; its stdout, or a panic with its stderr.
fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .expect("the example runs");
    assert!(
        out.status.success(),
        "{program} {args:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The `served by X` of every line of `out`.
fn served_by(out: &str) -> Vec<String> {
    out.lines()
        .filter_map(|l| l.rsplit("served by ").next())
        .map(|s| s.trim_end_matches(')').to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_examples_work_on_their_first_try() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[]).expect("daemon");
    let addr = d.addr();
    let _b1 = backend(&addr, "b1", "version=v1", dir.path());
    let _b2 = backend(&addr, "b2", "version=v2", dir.path());
    let both_up = wait_until(WAIT, || {
        ctl(&addr, &["get", "hello"]).is_ok_and(|out| {
            let ids: BTreeSet<&str> = out
                .lines()
                .filter_map(|l| l.split_whitespace().next())
                .collect();
            ids.contains("b1") && ids.contains("b2")
        })
    })
    .await;
    assert!(both_up, "both backends register");

    // caller: six calls through a generated client, all answered, by both.
    let out = run(env!("CARGO_BIN_EXE_caller"), &[&addr, "6"]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 6, "{out}");
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(&format!("hello, call {i} (served by b")),
            "{l}"
        );
    }
    let servers: BTreeSet<String> = served_by(&out).into_iter().collect();
    assert_eq!(servers, ["b1", "b2"].map(String::from).into(), "{out}");

    // routed: group=beta goes to the version=v2 instance only, and one key
    // sticks to one backend under consistent hashing.
    ctl(
        &addr,
        &[
            "set-rule",
            "hello",
            "beta",
            "--when",
            "group=beta",
            "--select",
            "version=v2",
        ],
    )
    .expect("set-rule");
    ctl(&addr, &["set-policy", "hello", "consistent_hash"]).expect("set-policy");
    let mut keyed = BTreeSet::new();
    for _ in 0..3 {
        let out = run(env!("CARGO_BIN_EXE_routed"), &[&addr, "beta", "user-42"]);
        let by = served_by(&out);
        assert_eq!(by.len(), 4, "{out}");
        assert_eq!(by[0], "b2", "the rule routes group=beta to b2: {out}");
        keyed.extend(by[1..].iter().cloned());
    }
    assert_eq!(
        keyed.len(),
        1,
        "one key, one backend, in every process: {keyed:?}"
    );
}
