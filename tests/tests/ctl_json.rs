//! `lb-server ctl --output json`, with the real daemon, a real backend and
//! the real `ctl` binary: every command prints exactly one JSON document on
//! stdout (the daemon's answer, enums by name; for an answer that does not
//! say what it is about, that answer with the names the command gave), and
//! every failure exits non-zero with one JSON object on stderr,
//! `{"error": {"code": …, "message": …}}`, without text mode's hints.

use std::path::Path;
use std::process::Output;

use lb_tests::harness::{ctl_command, http_get, wait_until, BackendSpec, Daemon, WAIT};
use serde_json::Value;

/// `lb-server ctl --output json ARGS…` against `d`, with its data directory
/// (its admin token, when it has one), whatever its exit.
fn ctl(d: &Daemon, args: &[&str]) -> Output {
    ctl_command(&d.addr(), &d.data_dir)
        .args(["--output", "json"])
        .args(args)
        .output()
        .expect("ctl runs")
}

/// One JSON document and a single trailing newline, or a panic naming
/// `what`.
#[track_caller]
fn one_document(text: &[u8], what: &str) -> Value {
    let text = String::from_utf8_lossy(text);
    assert!(
        text.ends_with('\n') && !text.ends_with("\n\n"),
        "{what}: not one newline-terminated document: {text:?}"
    );
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{what}: not one JSON document ({e}): {text}"))
}

/// A command that must succeed: its stdout as JSON (and nothing on stderr).
#[track_caller]
fn answer(out: Output, args: &[&str]) -> Value {
    assert!(
        out.status.success(),
        "ctl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "ctl {args:?} wrote to stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    one_document(&out.stdout, &format!("ctl {args:?}"))
}

/// `ctl --output json ARGS…` that must succeed: its answer.
#[track_caller]
fn ok(d: &Daemon, args: &[&str]) -> Value {
    answer(ctl(d, args), args)
}

/// A command that must fail: the `error` object of its stderr (nothing on
/// stdout, no hint in the message).
#[track_caller]
fn error(out: Output, args: &[&str]) -> Value {
    assert!(
        !out.status.success(),
        "ctl {args:?} succeeded: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        out.stdout.is_empty(),
        "ctl {args:?} failed with output: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let doc = one_document(&out.stderr, &format!("stderr of ctl {args:?}"));
    let e = doc["error"].clone();
    assert!(e["code"].is_string(), "{doc}");
    let message = e["message"].as_str().unwrap_or_else(|| panic!("{doc}"));
    assert!(!message.is_empty() && !message.contains("hint"), "{doc}");
    e
}

/// `ctl --output json ARGS…` that must fail: its error.
#[track_caller]
fn refused(d: &Daemon, args: &[&str]) -> Value {
    error(ctl(d, args), args)
}

fn daemon(dir: &Path, extra: &[&str]) -> Daemon {
    Daemon::start(&dir.join("data"), "127.0.0.1:0", extra).expect("lb-server starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_prints_the_daemons_answer_as_one_json_document() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), &["--http-listen", "127.0.0.1:0"]);
    let _b1 = BackendSpec::new("svc", "b1", 1)
        .start(&d.addr(), dir.path())
        .expect("backend");
    let registered = || {
        let out = ctl(&d, &["get", "svc"]);
        out.status.success()
            && serde_json::from_slice::<Value>(&out.stdout)
                .is_ok_and(|s| s["instances"][0]["instance_id"] == "b1")
    };
    assert!(wait_until(WAIT, registered).await, "b1 never registered");

    // Reads.
    let list = ok(&d, &["services"]);
    let services = list["services"].as_array().expect("services");
    assert_eq!(services.len(), 1, "{list}");
    assert_eq!(services[0]["name"], "svc", "{list}");
    assert_eq!(services[0]["instances"], 1, "{list}");
    assert_eq!(services[0]["policy"], "load_aware", "{list}");
    assert!(
        services[0]["version"].is_u64(),
        "64-bit numbers are numbers: {list}"
    );

    let get = ok(&d, &["get", "svc"]);
    assert_eq!(get["name"], "svc", "{get}");
    assert_eq!(get["policy"]["name"], "load_aware", "{get}");
    let b1 = &get["instances"][0];
    assert_eq!(b1["instance_id"], "b1", "{get}");
    assert_eq!(b1["attachment"], "stream", "{get}");
    assert_eq!(b1["static_weight"], 1, "{get}");
    assert_eq!(b1["drained"], false, "{get}");
    assert_eq!(get["cluster"]["default_mode"]["kind"], "FAILOVER", "{get}");
    assert_eq!(get["cluster"]["default_mode"]["collect"], "FIRST", "{get}");
    // `--output` is global: after the command too; `get --all` changes
    // nothing (every parameter is in the answer).
    let all = answer(
        ctl_command(&d.addr(), &d.data_dir)
            .args(["get", "svc", "--all", "--output", "json"])
            .output()
            .expect("ctl runs"),
        &["get", "svc", "--all"],
    );
    assert_eq!(all["policy"], get["policy"], "{all}");

    // An instance's overrides: the instance as it now stands.
    let i = ok(&d, &["set-weight", "svc", "b1", "3"]);
    assert_eq!(i["instance_id"], "b1", "{i}");
    assert_eq!(i["weight_override"], 3, "{i}");
    assert_eq!(i["static_weight"], 1, "{i}");
    let i = ok(&d, &["drain", "svc", "b1"]);
    assert_eq!(i["instance_id"], "b1", "{i}");
    assert_eq!(i["drained"], true, "{i}");
    let i = ok(&d, &["undrain", "svc", "b1"]);
    assert_eq!(i["drained"], false, "{i}");
    assert_eq!(i["weight_override"], 3, "{i}");

    // A policy change: the whole status, the previous policy included.
    let s = ok(
        &d,
        &["set-policy", "svc", "round_robin", "-p", "hysteresis=0.1"],
    );
    assert_eq!(s["name"], "svc", "{s}");
    assert_eq!(s["policy"]["name"], "round_robin", "{s}");
    assert_eq!(s["policy"]["params"]["hysteresis"], "0.1", "{s}");
    assert_eq!(s["previous_policy"]["name"], "load_aware", "{s}");
    assert_eq!(s["previous_policy"]["params"]["hysteresis"], "0.05", "{s}");
    assert_eq!(s["instances"][0]["instance_id"], "b1", "{s}");

    // Cluster modes: enums by name, the previous modes included.
    let s = ok(&d, &["set-cluster", "svc", "forking", "--forks", "2"]);
    let mode = &s["cluster"]["default_mode"];
    assert_eq!(mode["kind"], "FORKING", "{s}");
    assert_eq!(mode["forks"], 2, "{s}");
    assert_eq!(
        s["previous_cluster"]["default_mode"]["kind"], "FAILOVER",
        "{s}"
    );
    let s = ok(
        &d,
        &[
            "set-cluster",
            "svc",
            "broadcast",
            "--method",
            "/a.B/C",
            "--collect",
            "all",
            "--max-failure-percent",
            "25",
        ],
    );
    let method = &s["cluster"]["methods"]["/a.B/C"];
    assert_eq!(method["kind"], "BROADCAST", "{s}");
    assert_eq!(method["collect"], "ALL", "{s}");
    assert_eq!(method["max_failure_percent"], 25, "{s}");
    assert_eq!(s["cluster"]["default_mode"]["kind"], "FORKING", "{s}");
    assert!(
        s["previous_cluster"]["methods"]
            .as_object()
            .is_some_and(|m| m.is_empty()),
        "{s}"
    );
    // The HTTP API serves the same messages the same way.
    let (code, body) = http_get(&d, "/api/services/svc", None).expect("GET");
    assert_eq!(code, 200, "{body}");
    let api: Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(api["cluster"], s["cluster"], "{api}");

    // Routing rules: the service's status, rules in order.
    let s = ok(
        &d,
        &[
            "set-rule",
            "svc",
            "canary",
            "--when",
            "group=B",
            "--instance",
            "b1",
        ],
    );
    let rule = &s["rules"][0];
    assert_eq!(rule["rule"]["name"], "canary", "{s}");
    assert_eq!(rule["rule"]["when_request"]["group"], "B", "{s}");
    assert_eq!(rule["rule"]["instance"], "b1", "{s}");
    assert_eq!(rule["selected"], 1, "{s}");
    let s = ok(&d, &["delete-rule", "svc", "canary"]);
    assert_eq!(s["name"], "svc", "{s}");
    assert_eq!(s["rules"], Value::Array(Vec::new()), "{s}");

    // Static instances.
    let i = ok(
        &d,
        &[
            "put-static",
            "svc",
            "s1",
            "127.0.0.1:9",
            "--weight",
            "2",
            "--label",
            "dc=old",
        ],
    );
    assert_eq!(i["instance_id"], "s1", "{i}");
    assert_eq!(i["attachment"], "static", "{i}");
    assert_eq!(i["static_weight"], 2, "{i}");
    assert_eq!(i["labels"]["dc"], "old", "{i}");
    assert!(i["load"].is_null(), "a static instance never reports: {i}");
    let r = ok(&d, &["remove-static", "svc", "s1"]);
    assert_eq!(
        r,
        serde_json::json!({"service": "svc", "instance_id": "s1", "existed": true})
    );
    let r = ok(&d, &["remove-static", "svc", "s1"]);
    assert_eq!(r["existed"], false, "{r}");

    // Deleting services: what went with each.
    ok(
        &d,
        &["put-static", "other", "s2", "127.0.0.1:9", "--create"],
    );
    let r = ok(&d, &["delete-service", "other"]);
    assert_eq!(r["service"], "other", "{r}");
    assert_eq!(r["existed"], true, "{r}");
    assert_eq!(r["static_instances"], serde_json::json!(["s2"]), "{r}");
    let r = ok(&d, &["delete-service", "ghost"]);
    assert_eq!(r["service"], "ghost", "{r}");
    assert_eq!(r["existed"], false, "{r}");

    // Refusals: the daemon's code by its gRPC name, its message alone.
    let e = refused(&d, &["get", "nope"]);
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("nope")),
        "{e}"
    );
    let e = refused(&d, &["set-policy", "nope", "round_robin"]);
    assert_eq!(e["code"], "NOT_FOUND", "{e}");
    let message = e["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with("no service \"nope\"") && !message.contains("--create"),
        "the daemon's words, without text mode's advice: {e}"
    );
    let e = refused(&d, &["set-weight", "svc", "b1", "20000"]);
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    let e = refused(&d, &["delete-service", "svc"]);
    assert_eq!(e["code"], "FAILED_PRECONDITION", "{e}");
    assert!(
        e["message"].as_str().is_some_and(|m| m.contains("b1")),
        "{e}"
    );
    // ctl's own refusal of a flag, before any call.
    let e = refused(&d, &["set-cluster", "svc", "--backoff", "1500us"]);
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("whole milliseconds")),
        "{e}"
    );
    // A daemon that is not there: a port nothing listens on any more.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = free.local_addr().expect("addr").to_string();
    drop(free);
    let args = ["--output", "json", "services"];
    let out = ctl_command(&gone, &d.data_dir)
        .args(args)
        .output()
        .expect("ctl runs");
    let e = error(out, &args);
    assert_eq!(e["code"], "connection", "{e}");
    assert_eq!(
        e["message"],
        format!("cannot reach lb-server at {gone}: connection refused"),
        "{e}"
    );

    // --force deregisters the backend's instance, and says so.
    let r = ok(&d, &["delete-service", "svc", "--force"]);
    assert_eq!(r["service"], "svc", "{r}");
    assert_eq!(r["existed"], true, "{r}");
    assert_eq!(r["policy"], true, "{r}");
    assert_eq!(r["cluster"], true, "{r}");
    assert_eq!(r["overrides"], 1, "{r}");
    assert_eq!(r["deregistered"], serde_json::json!(["b1"]), "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_commands_print_json_and_refusals_name_their_code() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = daemon(dir.path(), &["--auth"]);
    let admin = d.data_dir.join("admin.token");
    assert!(
        wait_until(WAIT, || std::fs::metadata(&admin)
            .is_ok_and(|m| m.len() > 0))
        .await,
        "no admin token"
    );

    // The secret is in the answer (and only on stdout).
    let r = ok(
        &d,
        &[
            "token",
            "create",
            "--name",
            "web",
            "--role",
            "client",
            "--service",
            "echo",
        ],
    );
    let secret = r["token"].as_str().expect("a token").to_string();
    assert!(secret.starts_with("lbt_"), "{r}");
    assert_eq!(r["info"]["name"], "web", "{r}");
    assert_eq!(r["info"]["role"], "client", "{r}");
    assert_eq!(r["info"]["services"], serde_json::json!(["echo"]), "{r}");
    assert!(
        r["info"]["created_unix_ms"].as_u64().is_some_and(|t| t > 0),
        "{r}"
    );

    // An identity binding has no secret.
    let r = ok(
        &d,
        &[
            "token",
            "create",
            "--name",
            "web-cert",
            "--role",
            "client",
            "--service",
            "echo",
            "--identity",
            "spiffe://example.org/web",
        ],
    );
    assert_eq!(r["token"], "", "{r}");
    assert_eq!(r["info"]["identity"], "spiffe://example.org/web", "{r}");

    let r = ok(&d, &["token", "list"]);
    let tokens = r["tokens"].as_array().expect("tokens");
    let web = tokens
        .iter()
        .find(|t| t["name"] == "web")
        .unwrap_or_else(|| panic!("no web in {r}"));
    assert_eq!(web["role"], "client", "{r}");
    assert!(tokens.iter().any(|t| t["name"] == "web-cert"), "{r}");
    assert!(!r.to_string().contains(&secret), "never the secret: {r}");

    // A client token may not administer; a bogus one is not a token.
    let args = ["--output", "json", "services"];
    let out = ctl_command(&d.addr(), &d.data_dir)
        .env("LB_TOKEN", &secret)
        .args(args)
        .output()
        .expect("ctl runs");
    assert_eq!(error(out, &args)["code"], "PERMISSION_DENIED");
    let with_token_file = |text: &str| {
        let file = dir.path().join("other.token");
        std::fs::write(&file, text).expect("write");
        let out = ctl_command(&d.addr(), &d.data_dir)
            .arg("--token-file")
            .arg(&file)
            .args(args)
            .output()
            .expect("ctl runs");
        error(out, &args)
    };
    let unknown = format!("lbt_0123456789abcdef_{}\n", "a".repeat(64));
    let e = with_token_file(&unknown);
    assert_eq!(e["code"], "UNAUTHENTICATED", "{e}");
    // A file ctl cannot use: its own refusal, before any call.
    let e = with_token_file("short\n");
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");
    assert!(
        e["message"]
            .as_str()
            .is_some_and(|m| m.contains("token file")),
        "{e}"
    );
    let e = refused(&d, &["token", "create", "--name", "x", "--role", "root"]);
    assert_eq!(e["code"], "INVALID_ARGUMENT", "{e}");

    let r = ok(&d, &["token", "revoke", "web"]);
    assert_eq!(r, serde_json::json!({"name": "web", "existed": true}));
    let r = ok(&d, &["token", "revoke", "web"]);
    assert_eq!(r, serde_json::json!({"name": "web", "existed": false}));
}
