//! The operator CLI cannot surprise (issue 16), with the real daemon and the
//! real `lb-server ctl` binary: a change changes only what it names and
//! prints only that; a typo never makes a service; a service can be
//! deleted; durations need a unit; `get` shows what differs from the
//! defaults, zones, labels, report ages, subscribers and true shares;
//! `LB_*` variables; a daemon that is down, and a second daemon on a held
//! data directory, each get one clear line.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use lb_proto::v1::{self as pb, admin_client::AdminClient};
use lb_tests::harness::{bin, scrape, wait_until, BackendSpec, Cluster, Daemon, WAIT};

/// `lb-server ctl --server DAEMON ARGS…`, whatever its exit.
fn ctl(daemon: &str, args: &[&str]) -> Output {
    Command::new(bin("lb-server").expect("lb-server is built"))
        .arg("ctl")
        .args(["--server", daemon])
        .args(args)
        .env_remove("LB_SERVER")
        .output()
        .expect("ctl runs")
}

/// `ctl …` that must succeed: its stdout.
#[track_caller]
fn ok(daemon: &str, args: &[&str]) -> String {
    let out = ctl(daemon, args);
    assert!(
        out.status.success(),
        "ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `ctl …` that must fail: its stderr.
#[track_caller]
fn refused(daemon: &str, args: &[&str]) -> String {
    let out = ctl(daemon, args);
    assert!(
        !out.status.success(),
        "ctl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn lines(text: &str) -> Vec<&str> {
    text.lines().collect()
}

fn daemon(dir: &tempfile::TempDir, extra: &[&str]) -> Daemon {
    Daemon::start(&dir.path().join("data"), "127.0.0.1:0", extra).expect("lb-server starts")
}

async fn status(daemon: &str, service: &str) -> pb::ServiceStatus {
    AdminClient::connect(format!("http://{daemon}"))
        .await
        .expect("admin connects")
        .get_service(pb::GetServiceRequest {
            service: service.into(),
        })
        .await
        .expect("get")
        .into_inner()
}

/// The policy lines of `ctl get` (`  * name = value …` or `    name = value`).
fn param_lines(get: &str) -> Vec<&str> {
    get.lines()
        .skip_while(|l| !l.starts_with("policy "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .collect()
}

#[test]
fn set_policy_changes_only_the_parameters_given_and_prints_only_them() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir, &[]);
    let a = d.addr();
    let out = ok(
        &a,
        &[
            "set-policy",
            "shop",
            "load_aware",
            "-p",
            "eject_consecutive=3",
            "--create",
        ],
    );
    assert_eq!(
        lines(&out),
        ["shop (policy load_aware):", "  eject_consecutive: 5 → 3"]
    );
    // The next change names another parameter: the first one's value stays.
    let out = ok(
        &a,
        &["set-policy", "shop", "load_aware", "-p", "hysteresis=0.1"],
    );
    assert_eq!(
        lines(&out),
        ["shop (policy load_aware):", "  hysteresis: 0.05 → 0.1"]
    );
    let get = ok(&a, &["get", "shop"]);
    let shown = param_lines(&get);
    assert_eq!(shown.len(), 2, "{get}");
    assert!(
        shown[0].starts_with("  * eject_consecutive = 3") && shown[0].contains("(default 5)"),
        "{get}"
    );
    assert!(
        shown[1].starts_with("  * hysteresis") && shown[1].contains("= 0.1"),
        "{get}"
    );
    // The same again changes nothing, and says so.
    let out = ok(
        &a,
        &["set-policy", "shop", "load_aware", "-p", "hysteresis=0.1"],
    );
    assert_eq!(lines(&out), ["shop (policy load_aware): nothing changed"]);
    // Another policy keeps the common parameters; client_choices, left at
    // load_aware's default, takes round_robin's (and the diff says so).
    let out = ok(&a, &["set-policy", "shop", "round_robin"]);
    assert_eq!(
        lines(&out),
        [
            "shop (policy round_robin):",
            "  client_choices: 2 → 1",
            "  policy: load_aware → round_robin"
        ]
    );
    assert_eq!(param_lines(&ok(&a, &["get", "shop"])).len(), 2);

    // --reset: everything not given goes back to its default.
    let out = ok(
        &a,
        &[
            "set-policy",
            "shop",
            "round_robin",
            "--reset",
            "-p",
            "hysteresis=0.2",
        ],
    );
    assert_eq!(
        lines(&out),
        [
            "shop (policy round_robin):",
            "  eject_consecutive: 3 → 5",
            "  hysteresis: 0.1 → 0.2",
        ]
    );
    let get = ok(&a, &["get", "shop"]);
    assert_eq!(param_lines(&get).len(), 1, "{get}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_hides_defaults_and_all_lists_every_parameter() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir, &[]);
    let a = d.addr();
    ok(&a, &["set-policy", "shop", "load_aware", "--create"]);
    let get = ok(&a, &["get", "shop"]);
    assert!(param_lines(&get).is_empty(), "{get}");
    assert!(
        get.contains("every parameter at its default; --all lists them"),
        "{get}"
    );
    ok(
        &a,
        &["set-policy", "shop", "load_aware", "-p", "blackout=5s"],
    );
    let all = ok(&a, &["get", "shop", "--all"]);
    let every = param_lines(&all);
    let params = status(&a, "shop").await.policy.expect("a policy").params;
    assert_eq!(every.len(), params.len(), "{all}");
    let marked: Vec<&&str> = every.iter().filter(|l| l.starts_with("  * ")).collect();
    assert_eq!(marked.len(), 1, "{all}");
    assert!(
        marked[0].contains("blackout") && marked[0].contains("5s"),
        "{all}"
    );
    assert!(
        every
            .iter()
            .any(|l| l.starts_with("    hysteresis") && l.contains("= 0.05")),
        "{all}"
    );
}

#[test]
fn set_cluster_changes_only_the_settings_given() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir, &[]);
    let a = d.addr();
    let out = ok(
        &a,
        &[
            "set-cluster",
            "shop",
            "failover",
            "--backoff",
            "50ms",
            "--budget-percent",
            "30",
            "--create",
        ],
    );
    assert_eq!(lines(&out).len(), 3, "the mode and the budget: {out}");
    // --attempts alone keeps the backoff and the budget.
    let out = ok(&a, &["set-cluster", "shop", "--attempts", "5"]);
    assert_eq!(
        lines(&out),
        [
            "shop (cluster modes):",
            "  mode: failover attempts=3 backoff=50ms..100ms retry_on=UNAVAILABLE → failover attempts=5 backoff=50ms..100ms retry_on=UNAVAILABLE",
        ]
    );
    let get = ok(&a, &["get", "shop"]);
    assert!(
        get.contains("cluster   failover attempts=5 backoff=50ms..100ms retry_on=UNAVAILABLE (retry budget 30% + 10/s)"),
        "{get}"
    );
    // A method's own mode, and back to the service's (the README's line).
    let m = "/shop.v1.Shop/GetPrice";
    let out = ok(
        &a,
        &[
            "set-cluster",
            "shop",
            "forking",
            "--forks",
            "2",
            "--method",
            m,
        ],
    );
    assert_eq!(
        lines(&out),
        [
            "shop (cluster modes):",
            &format!("  method {m}: (none) → forking forks=2")
        ]
    );
    let out = ok(&a, &["set-cluster", "shop", "--method", m, "--clear"]);
    assert_eq!(
        lines(&out),
        [
            "shop (cluster modes):",
            &format!("  method {m}: forking forks=2 → (none)")
        ]
    );
    // A setting of another mode is refused, naming it.
    let err = refused(&a, &["set-cluster", "shop", "forking", "--attempts", "3"]);
    assert!(err.contains("attempts: only applies to failover"), "{err}");
    // --reset: the mode's defaults and the default budget.
    let out = ok(&a, &["set-cluster", "shop", "--reset"]);
    assert!(
        out.contains("retry budget: 30% + 10/s → 20% + 10/s"),
        "{out}"
    );
    assert!(
        out.contains("→ failover attempts=3 backoff=10ms..100ms"),
        "{out}"
    );
}

#[test]
fn a_write_to_an_unknown_service_needs_create() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir, &[]);
    let a = d.addr();
    for args in [
        &["set-policy", "nosuch", "round_robin"][..],
        &[
            "set-rule", "nosuch", "r", "--when", "a=b", "--select", "c=d",
        ],
        &["set-cluster", "nosuch", "failfast"],
        &["put-static", "nosuch", "s1", "127.0.0.1:9"],
    ] {
        let err = refused(&a, args);
        assert!(
            err.contains("no service \"nosuch\"") && err.contains("pass --create"),
            "{args:?}: {err}"
        );
    }
    assert!(!ok(&a, &["services"]).contains("nosuch"));
    ok(&a, &["set-policy", "nosuch", "round_robin", "--create"]);
    let services = ok(&a, &["services"]);
    assert!(
        services.lines().any(|l| l.starts_with("nosuch ")),
        "{services}"
    );
    // Once it exists, no --create is needed.
    ok(&a, &["set-cluster", "nosuch", "failfast"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_service_removes_everything_but_refuses_while_backends_are_registered() {
    let mut c = Cluster::start(
        &["--metrics-listen", "127.0.0.1:0"],
        &[BackendSpec::new("shop", "b1", 1)],
    );
    let a = c.daemon.addr();
    ok(
        &a,
        &[
            "set-policy",
            "shop",
            "round_robin",
            "-p",
            "hysteresis=0.1",
            "--create",
        ],
    );
    ok(&a, &["put-static", "shop", "s1", "127.0.0.1:9"]);
    ok(
        &a,
        &[
            "set-rule",
            "shop",
            "ab",
            "--when",
            "g=B",
            "--instance",
            "s1",
        ],
    );
    assert!(
        wait_until(WAIT, || ok(&a, &["get", "shop"]).contains("\nb1 ")).await,
        "b1 registers"
    );
    let err = refused(&a, &["delete-service", "shop"]);
    assert!(
        err.contains("registered by backends (\"b1\")") && err.contains("--force"),
        "{err}"
    );
    assert!(
        ok(&a, &["services"]).contains("shop"),
        "nothing was deleted"
    );

    // The backend goes away (its stream breaks): now it can be deleted.
    c.backends.remove("b1").expect("b1").kill9();
    assert!(
        wait_until(WAIT, || !ok(&a, &["get", "shop"]).contains("\nb1 ")).await,
        "b1 leaves"
    );
    let out = ok(&a, &["delete-service", "shop"]);
    assert_eq!(
        lines(&out),
        ["deleted service shop: its policy; 1 rule(s); static s1"]
    );
    assert!(!ok(&a, &["services"]).contains("shop"));
    let err = refused(&a, &["get", "shop"]);
    assert!(err.contains("NotFound"), "{err}");
    let page = scrape(&c.daemon);
    assert!(!page.contains("service=\"shop\""), "{page}");
    // Idempotent.
    let out = ok(&a, &["delete-service", "shop"]);
    assert_eq!(lines(&out), ["no service shop: nothing to delete"]);
}

#[test]
fn durations_need_a_unit_and_take_decimals() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir, &[]);
    let a = d.addr();
    let out = ok(
        &a,
        &[
            "set-policy",
            "shop",
            "load_aware",
            "-p",
            "slow_start_window=1.5s",
            "--create",
        ],
    );
    assert!(out.contains("slow_start_window: 0s → 1500ms"), "{out}");
    let err = refused(
        &a,
        &[
            "set-policy",
            "shop",
            "load_aware",
            "-p",
            "slow_start_window=30",
        ],
    );
    assert!(
        err.contains("params.slow_start_window")
            && err.contains("\"30\" has no unit")
            && err.contains("units: ns, us, ms, s, m, h"),
        "{err}"
    );
    // ctl's own duration flags, and the daemon's, read the same way.
    let err = refused(&a, &["set-cluster", "shop", "--backoff", "30"]);
    assert!(
        err.contains("has no unit") && err.contains("ms, s, m, h"),
        "{err}"
    );
    ok(&a, &["set-cluster", "shop", "--backoff", "0.25s"]);
    let out = Command::new(bin("lb-server").unwrap())
        .args(["--listen", "127.0.0.1:0", "--report-interval", "250"])
        .arg("--data-dir")
        .arg(dir.path().join("other"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("has no unit") && err.contains("ms, s, m, h"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_shows_zones_labels_report_ages_subscribers_and_true_shares() {
    let mut b1 = BackendSpec::new("shop", "b1", 1);
    b1.extra = [
        "--zone",
        "eu-1a",
        "--label",
        "track=canary",
        "--label",
        "app=shop",
    ]
    .map(String::from)
    .to_vec();
    let c = Cluster::start(&["--default-policy", "round_robin"], &[b1]);
    let a = c.daemon.addr();
    for (id, port) in [("s1", "9001"), ("s2", "9002")] {
        ok(
            &a,
            &[
                "put-static",
                "shop",
                id,
                &format!("127.0.0.1:{port}"),
                "--create",
            ],
        );
    }
    // b1 is reserved for requests labelled group=B: no share of the rest.
    ok(
        &a,
        &[
            "set-rule",
            "shop",
            "ab",
            "--when",
            "group=B",
            "--instance",
            "b1",
            "--exclusive",
        ],
    );
    let sub = c.client("shop").await;
    assert!(
        wait_until(WAIT, || ok(&a, &["get", "shop"])
            .contains("clients   1 subscribed"))
        .await,
        "the subscription is counted"
    );
    // Wait for b1's first report.
    let reported = |get: &str| {
        get.lines()
            .find(|l| l.starts_with("b1 "))
            .is_some_and(|l| !l.contains(" never"))
    };
    assert!(wait_until(WAIT, || reported(&ok(&a, &["get", "shop"]))).await);
    let get = ok(&a, &["get", "shop"]);
    let row = |id: &str| -> Vec<String> {
        get.lines()
            .find(|l| l.starts_with(&format!("{id} ")))
            .unwrap_or_else(|| panic!("no {id} in {get}"))
            .split_whitespace()
            .map(String::from)
            .collect()
    };
    let header: Vec<&str> = get
        .lines()
        .find(|l| l.starts_with("INSTANCE"))
        .expect("a header")
        .split_whitespace()
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name).expect(name);
    let (share, zone, age) = (col("SHARE%"), col("ZONE"), col("REPORT_AGE"));
    let b1 = row("b1");
    assert_eq!(b1[share], "0.0", "reserved by an exclusive rule: {get}");
    assert_eq!(b1[zone], "eu-1a", "{get}");
    let ms: f64 = match b1[age].strip_suffix("ms") {
        Some(ms) => ms.parse().unwrap(),
        None => b1[age].trim_end_matches('s').parse::<f64>().unwrap() * 1000.0,
    };
    assert!(ms < 10_000.0, "a recent report: {get}");
    for s in ["s1", "s2"] {
        let r = row(s);
        assert_eq!(
            (r[share].as_str(), r[age].as_str()),
            ("50.0", "static"),
            "{get}"
        );
    }
    assert!(get.contains("labels app=shop,track=canary"), "{get}");
    // The API says the same.
    let st = status(&a, "shop").await;
    let shares: BTreeMap<String, f64> = st
        .instances
        .iter()
        .map(|i| (i.instance_id.clone(), i.share))
        .collect();
    assert_eq!(shares["b1"], 0.0);
    assert_eq!(st.subscribers, 1);
    // The version as generation.sequence, in get and services alike.
    let version = format!("{}.{}", st.version >> 32, st.version & 0xffff_ffff);
    assert!(st.version >> 32 >= 1);
    assert!(
        get.contains(&format!("list      version {version},")),
        "{get}"
    );
    let services = ok(&a, &["services"]);
    let line = services
        .lines()
        .find(|l| l.starts_with("shop "))
        .expect("shop is listed");
    assert!(line.ends_with(&version), "{services}");
    drop(sub);
}

#[test]
fn connection_flags_read_lb_variables() {
    let dir = tempfile::tempdir().unwrap();
    let d = daemon(&dir, &[]);
    let out = Command::new(bin("lb-server").unwrap())
        .args(["ctl", "services"])
        .env("LB_SERVER", d.addr())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("SERVICE "));
    let help = ok(&d.addr(), &["--help"]);
    for var in ["LB_SERVER", "LB_DATA_DIR", "LB_TOKEN_FILE", "LB_CA"] {
        assert!(help.contains(&format!("[env: {var}=")), "{var}: {help}");
    }
    // The daemon's flags too, named after the flag.
    let out = Command::new(bin("lb-server").unwrap())
        .arg("--help")
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for var in [
        "LB_LISTEN",
        "LB_DATA_DIR",
        "LB_REPORT_INTERVAL",
        "LB_MAX_LIST_BYTES",
    ] {
        assert!(help.contains(&format!("[env: {var}=")), "{var}: {help}");
    }
}

#[test]
fn a_daemon_that_is_down_is_named_with_connection_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut d = daemon(&dir, &[]);
    let addr = d.addr();
    d.proc.kill9();
    let err = refused(&addr, &["services"]);
    assert!(
        err.contains(&format!(
            "cannot reach lb-server at {addr}: connection refused"
        )),
        "{err}"
    );
    assert!(err.contains("hint: is lb-server running there?"), "{err}");
    assert!(!err.contains("transport error"), "{err}");
}

#[test]
fn a_second_daemon_on_a_held_data_directory_says_who_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = daemon(&dir, &[]);
    let data = dir.path().join("data");
    let mut second = Command::new(bin("lb-server").unwrap())
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // It exits by itself (after sled's lock retries, about two seconds).
    let deadline = std::time::Instant::now() + WAIT;
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(std::time::Instant::now() < deadline, "it did not exit");
        // No notification exists for another process's exit: poll under
        // the deadline.
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = second.wait_with_output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!status.success());
    assert!(!stdout.contains("listening"), "{stdout}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "one line: {stderr}");
    assert!(
        errors[0].contains(&format!(
            "the data directory {} is in use by",
            data.display()
        )) && errors[0].contains(&format!("pid {}", first.proc.pid())),
        "{stderr}"
    );
    assert_eq!(stderr.matches("in use by").count(), 1, "{stderr}");
}
