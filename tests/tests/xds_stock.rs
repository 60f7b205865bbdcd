//! A stock gRPC client follows lb through xDS: unmodified grpcio (gRPC's
//! C-core) dials `xds:///echo` with a bootstrap file naming the daemon
//! (`tests/python/xds_client.py`), and calls real `echo-backend` processes
//! on distinct loopback IPs. Nothing in the client knows about lb.
//!
//! Counts are bounded, not exact: gRPC picks localities by weight with its
//! own scheduler and drops by a random draw per call.

use std::time::Instant;

use lb_tests::harness::{ctl, wait_until, BackendSpec, Cluster, Daemon, WAIT};
use lb_tests::stock::{Batch, StockClient, CONVERGE};

/// The service, and the target's name.
const NAME: &str = "echo";

fn on(id: &str, weight: u32, zone: &str, ip: &str) -> BackendSpec {
    let mut b = BackendSpec::new(NAME, id, weight);
    b.extra = ["--listen", &format!("{ip}:0"), "--zone", zone]
        .map(String::from)
        .to_vec();
    b
}

fn xds_client(daemon: &str, zone: &str) -> StockClient {
    xds_client_as(daemon, zone, "xds-e2e")
}

fn xds_client_as(daemon: &str, zone: &str, node: &str) -> StockClient {
    let args = [
        "--server",
        daemon,
        "--name",
        NAME,
        "--zone",
        zone,
        "--node-id",
        node,
    ]
    .map(String::from);
    StockClient::start("xds_client.py", &args)
}

/// Whether `got` is within `slack` of `want`.
fn near(got: u64, want: u64, slack: u64) -> bool {
    got.abs_diff(want) <= slack
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_xds_client_follows_weights_zones_shedding_and_outlives_the_daemon() {
    let mut c = Cluster::start(&[], &[]);
    let daemon = c.daemon.addr();
    ctl(
        &daemon,
        &["set-policy", NAME, "weighted_round_robin", "--create"],
    )
    .expect("set-policy");
    let mut b1 = on("b1", 1, "z1", "127.0.0.31");
    let fault_flag = c.dir.path().join("b1.fail").display().to_string();
    b1.extra.extend(["--fail-while".to_string(), fault_flag]);
    c.add(&b1);
    c.add(&on("b2", 3, "z1", "127.0.0.32"));
    c.add(&on("b3", 1, "z2", "127.0.0.33"));
    let mut client = xds_client(&daemon, "z1");

    // Weights 1:3 in the client's zone; the other zone's instance is a
    // lower priority and takes nothing. (gRPC's weighted scheduler makes
    // any 400 calls close to 100:300.)
    let b = client.until("shares 1:3 in zone z1", 400, |b| {
        b.errors() == 0 && b.on("b3") == 0 && near(b.on("b1"), 100, 20)
    });
    assert_eq!(b.on("b1") + b.on("b2"), 400, "{b:?}");

    // A weight set through ctl moves the shares.
    ctl(&daemon, &["set-weight", NAME, "b1", "3"]).expect("set-weight");
    client.until("shares 3:3 after set-weight", 400, |b| {
        b.errors() == 0 && near(b.on("b1"), 200, 25) && b.on("b3") == 0
    });

    // Load shedding: a quarter of calls dropped with UNAVAILABLE.
    let shed = |f: &str| {
        let p = format!("shed_floor={f}");
        ctl(
            &daemon,
            &["set-policy", NAME, "weighted_round_robin", "-p", &p],
        )
        .expect("set-policy shed_floor")
    };
    shed("0.25");
    let quarter = |b: &Batch| {
        b.errors() == b.errors.get("UNAVAILABLE").copied().unwrap_or(0) && near(b.errors(), 100, 35)
    };
    client.until("a quarter dropped", 400, quarter);
    let dropped = client.calls(400);
    assert!(quarter(&dropped), "{dropped:?}");
    shed("0");
    client.until("no more drops", 200, |b| b.errors() == 0);

    // The client's zone drains: it moves to the next priority, and back.
    for id in ["b1", "b2"] {
        ctl(&daemon, &["drain", NAME, id]).expect("drain");
    }
    client.until("all on z2 while z1 drains", 100, |b| {
        b.errors() == 0 && b.on("b3") == 100
    });
    for id in ["b1", "b2"] {
        ctl(&daemon, &["undrain", NAME, id]).expect("undrain");
    }
    client.until("back on z1", 100, |b| b.errors() == 0 && b.on("b3") == 0);

    // b1 (a quarter of the calls again) fails every call with UNAVAILABLE.
    // The service's failover mode is the route's retry policy (gRFC A44):
    // with 5 attempts a call fails only if every attempt lands on b1, and
    // gRPC picks each attempt afresh (it has no "other host" predicate), so
    // about 0.25^5 of calls (0.1 %) fail. With one attempt (failfast), a
    // quarter fail.
    ctl(&daemon, &["set-weight", NAME, "b1", "1"]).expect("set-weight");
    ctl(
        &daemon,
        &["set-cluster", NAME, "failover", "--attempts", "5"],
    )
    .expect("failover");
    client.until("shares 1:3 again", 400, |b| {
        b.errors() == 0 && near(b.on("b1"), 100, 20)
    });
    let fault = c.dir.path().join("b1.fail");
    std::fs::write(&fault, b"").expect("fault file");
    let retried = client.calls(400);
    assert!(retried.errors() <= 4, "{retried:?}");
    assert_eq!(retried.on("b1"), 0, "{retried:?}");
    ctl(&daemon, &["set-cluster", NAME, "failfast"]).expect("failfast");
    let quarter_fail = |b: &Batch| near(b.errors.get("UNAVAILABLE").copied().unwrap_or(0), 100, 35);
    client.until("a quarter fails under failfast", 400, quarter_fail);
    let unretried = client.calls(400);
    assert!(
        quarter_fail(&unretried),
        "{unretried:?} with failfast, {retried:?} with failover"
    );
    eprintln!(
        "b1 failing: {} of 400 calls failed with 5 attempts, {} with one",
        retried.errors(),
        unretried.errors()
    );
    ctl(&daemon, &["set-cluster", NAME, "failover"]).expect("failover");
    client.until("retried again under failover", 200, |b| b.errors() <= 2);
    std::fs::remove_file(&fault).expect("remove the fault file");

    // A hash policy: the cluster becomes a ring hash on the lb-key header.
    // Each key stays on one instance, and the keys spread over both.
    ctl(&daemon, &["set-policy", NAME, "consistent_hash"]).expect("consistent_hash");
    let keyed = |client: &mut StockClient| -> serde_json::Value {
        client.command(r#"{"cmd":"keyed","keys":40,"n":5}"#)
    };
    let deadline = Instant::now() + CONVERGE;
    let by_key = loop {
        let k = keyed(&mut client);
        let sticky = k["by_key"].as_object().is_some_and(|m| {
            m.len() == 40
                && m.values()
                    .all(|v| v.as_object().is_some_and(|o| o.len() == 1))
        });
        if sticky || Instant::now() > deadline {
            break k;
        }
    };
    let homes: std::collections::BTreeSet<String> = by_key["by_key"]
        .as_object()
        .expect("by_key")
        .values()
        .filter_map(|v| v.as_object().and_then(|o| o.keys().next().cloned()))
        .collect();
    assert!(
        by_key["by_key"].as_object().is_some_and(|m| m
            .values()
            .all(|v| v.as_object().is_some_and(|o| o.len() == 1))),
        "a key moved between instances: {by_key}"
    );
    assert_eq!(by_key["errors"], serde_json::json!({}), "{by_key}");
    assert_eq!(
        homes,
        ["b1", "b2"].map(String::from).into_iter().collect(),
        "the keys' homes: {by_key}"
    );
    ctl(&daemon, &["set-policy", NAME, "weighted_round_robin"]).expect("back to weights");

    // The daemon dies: the client keeps its last resources and keeps
    // calling, with no failure.
    let data = c.daemon.data_dir.clone();
    c.daemon.proc.kill9();
    let alone = client.calls(200);
    assert_eq!(alone.errors(), 0, "{alone:?}");
    assert_eq!(alone.on("b1") + alone.on("b2"), 200, "{alone:?}");

    // It comes back on the same address: the client reconnects and follows
    // a change made after the restart.
    let restarted = Daemon::start(&data, &daemon, &[]).expect("restart the daemon");
    let back = Instant::now();
    assert!(
        wait_until(WAIT, || ctl(&daemon, &["set-weight", NAME, "b1", "3"])
            .is_ok())
        .await,
        "set-weight after the restart"
    );
    client.until("shares 3:3 after the restart", 400, |b| {
        b.errors() == 0 && near(b.on("b1"), 200, 25) && b.on("b3") == 0
    });
    eprintln!(
        "the client followed a change {:?} after the daemon came back",
        back.elapsed()
    );
    drop(restarted);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_xds_clients_report_their_calls_and_a_failing_backend_is_ejected() {
    let mut c = Cluster::start(&["--stats-interval", "200ms"], &[]);
    let daemon = c.daemon.addr();
    ctl(
        &daemon,
        &["set-policy", NAME, "weighted_round_robin", "--create"],
    )
    .expect("set-policy");
    // One attempt: the client sees each failure (and reports it).
    ctl(&daemon, &["set-cluster", NAME, "failfast"]).expect("failfast");
    let fault = c.dir.path().join("b1.fail");
    let mut b1 = on("b1", 1, "z1", "127.0.0.34");
    b1.extra
        .extend(["--fail-while".to_string(), fault.display().to_string()]);
    c.add(&b1);
    c.add(&on("b2", 1, "z1", "127.0.0.35"));
    c.add(&on("b3", 1, "z1", "127.0.0.36"));
    // Two clients: outlier detection believes no single client
    // (stats_min_clients = 2; each node id is a witness of its own).
    let mut clients = [
        xds_client_as(&daemon, "z1", "xds-a"),
        xds_client_as(&daemon, "z1", "xds-b"),
    ];
    for client in &mut clients {
        client.until("every backend answers", 90, |b| {
            b.errors() == 0 && ["b1", "b2", "b3"].iter().all(|i| b.on(i) > 0)
        });
    }

    // b1 starts failing. The clients' load reports (LRS) carry their
    // failures to the daemon, whose outlier detection ejects b1: it leaves
    // the assignment and the calls stop failing.
    std::fs::write(&fault, b"").expect("fault file");
    let deadline = Instant::now() + CONVERGE;
    let healed = loop {
        let batches: Vec<Batch> = clients.iter_mut().map(|c| c.calls(60)).collect();
        if batches.iter().all(|b| b.errors() == 0 && b.on("b1") == 0) {
            break batches;
        }
        assert!(
            Instant::now() < deadline,
            "b1 never ejected; last batches: {batches:?}"
        );
    };
    assert_eq!(healed[0].on("b2") + healed[0].on("b3"), 60, "{healed:?}");
    let status = lb_tests::harness::instances_of(&daemon, NAME).await;
    let b1 = status
        .iter()
        .find(|i| i.instance_id == "b1")
        .expect("b1 is still registered");
    assert_eq!(b1.health, "ejected", "{b1:?}");
    assert!(
        b1.calls_failed > 0,
        "the client's reports reached the daemon: {b1:?}"
    );
    let b2 = status.iter().find(|i| i.instance_id == "b2").expect("b2");
    assert!(b2.calls_finished > 0 && b2.calls_failed == 0, "{b2:?}");
}

/// With TLS, client certificates and authentication on: the client's
/// bootstrap carries mTLS channel credentials (gRFC A65), its certificate's
/// SPIFFE ID is bound to the `client` role for the service, and revoking the
/// binding ends its xDS streams (the client keeps its last resources).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_xds_client_authenticates_with_its_certificate() {
    use lb_tests::pki::Pki;
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(certs.path(), "lb").expect("ca");
    let server = pki.server("server", &[]).expect("server cert");
    let web = pki
        .client("web", "spiffe://lb.test/web")
        .expect("client cert");
    let ops = pki.client("ops", "spiffe://lb.test/ops").expect("ops cert");
    let p = |p: &std::path::Path| p.display().to_string();
    let mut c = Cluster::start(
        &[
            "--auth",
            "--tls-cert",
            &p(&server.cert),
            "--tls-key",
            &p(&server.key),
            "--tls-client-ca",
            &p(pki.ca_file()),
        ],
        &[],
    );
    let token_path = c.daemon.data_dir.join("admin.token");
    assert!(wait_until(WAIT, || token_path.exists()).await);
    let (addr, data_dir) = (c.daemon.addr(), c.daemon.data_dir.clone());
    let run = |args: &[&str]| -> String {
        let out = lb_tests::harness::ctl_command(&addr, &data_dir)
            .args([
                "--ca",
                &p(pki.ca_file()),
                "--cert",
                &p(&ops.cert),
                "--key",
                &p(&ops.key),
            ])
            .args(args)
            .output()
            .expect("ctl");
        lb_tests::harness::succeeded(out, &format!("ctl {args:?}"))
            .trim()
            .to_string()
    };
    let backend = run(&[
        "token",
        "create",
        "--name",
        "deploy",
        "--role",
        "backend",
        "--service",
        NAME,
    ]);
    run(&[
        "token",
        "create",
        "--name",
        "web",
        "--role",
        "client",
        "--service",
        NAME,
        "--identity",
        "spiffe://lb.test/web",
    ]);
    run(&["set-policy", NAME, "weighted_round_robin", "--create"]);
    let token_file = certs.path().join("backend.token");
    std::fs::write(&token_file, &backend).expect("token file");
    for (id, weight, ip) in [("b1", 1, "127.0.0.37"), ("b2", 3, "127.0.0.38")] {
        let mut b = on(id, weight, "z1", ip);
        b.extra.extend(
            [
                "--token-file",
                &p(&token_file),
                "--ca",
                &p(pki.ca_file()),
                "--cert",
                &p(&ops.cert),
                "--key",
                &p(&ops.key),
            ]
            .map(String::from),
        );
        c.add(&b);
    }
    let args = [
        "--server",
        &addr,
        "--name",
        NAME,
        "--zone",
        "z1",
        "--node-id",
        "web-1",
        "--ca",
        &p(pki.ca_file()),
        "--cert",
        &p(&web.cert),
        "--key",
        &p(&web.key),
    ]
    .map(String::from);
    let mut client = StockClient::start("xds_client.py", &args);
    client.until("shares 1:3 over mTLS", 400, |b| {
        b.errors() == 0 && near(b.on("b1"), 100, 20)
    });
    let streams = || {
        let shown = run(&["--output", "json", "get", NAME]);
        serde_json::from_str::<serde_json::Value>(&shown).expect("JSON")["xds_streams"]
            .as_u64()
            .unwrap_or(0)
    };
    assert_eq!(streams(), 1, "one xDS stream before the revocation");
    run(&["token", "revoke", "web"]);
    assert!(
        wait_until(WAIT, || streams() == 0).await,
        "the revoked binding's xDS stream ended"
    );
    // The client keeps its last resources.
    let after = client.calls(100);
    assert_eq!(after.errors(), 0, "{after:?}");
}
