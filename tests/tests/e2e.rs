//! End to end with real processes: the `lb-server` binary, `echo-backend`
//! processes registering through the reporter, and lb-client in this process
//! making real gRPC calls to the backends it picks.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use lb_client::{subscribe, ClientOptions, PickList, Subscription};
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;
use lb_tests::harness::{
    call, ctl, ids, set, wait_ids, wait_until, BackendSpec, Cluster, Daemon, WAIT,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_backends_shares_match_weights() {
    let c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 2),
            BackendSpec::new("echo", "b3", 3),
        ],
    );
    ctl(
        &c.daemon.addr(),
        // Backends may not have registered yet: --create makes the service.
        &["set-policy", "echo", "weighted_round_robin", "--create"],
    )
    .expect("ctl set-policy");
    let sub = c.client("echo").await;
    let list = sub
        .wait_for(WAIT, |l| ids(l).len() == 3 && l.len() == 6)
        .await
        .expect("weights 1,2,3 expand to a 6-entry period");
    assert_eq!(ids(&list), set(&["b1", "b2", "b3"]));
    // 100 whole periods: the shares are exact, not approximately right.
    let (counts, errors) = call(&sub, 600).await;
    assert_eq!(errors, 0);
    assert_eq!(
        counts,
        BTreeMap::from([("b1".into(), 100), ("b2".into(), 200), ("b3".into(), 300)])
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_backend_leaves_the_list_and_calls_keep_working() {
    let mut c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
        ],
    );
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2", "b3"])).await;
    let before = sub.version();
    c.backends.get_mut("b2").expect("b2").kill9();
    let list = wait_ids(&sub, &set(&["b1", "b3"])).await;
    assert!(list.version() > before);
    let (counts, errors) = call(&sub, 100).await;
    assert_eq!(errors, 0);
    assert_eq!(counts.values().sum::<u64>(), 100);
    assert!(!counts.contains_key("b2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_backend_drains_out_of_the_list() {
    let mut c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
        ],
    );
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2"])).await;
    let clean = c
        .backends
        .get_mut("b1")
        .expect("b1")
        .terminate(WAIT)
        .expect("terminate");
    assert!(clean, "echo-backend should exit 0 after draining");
    wait_ids(&sub, &set(&["b2"])).await;
    let log = c.daemon.proc.log();
    assert!(log.contains("backend drained"), "daemon log:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn daemon_kill9_clients_keep_picking_and_restart_restores() {
    let mut c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
        ],
    );
    let sub = c.client("echo").await;
    let first = wait_ids(&sub, &set(&["b1", "b2", "b3"])).await;

    // A caller picking and calling continuously through the whole outage.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let caller = {
        let (sub, stop, calls) = (sub.clone(), stop.clone(), calls.clone());
        tokio::spawn(async move {
            let mut client = EchoClient::new(sub.channel());
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Err(s) = client.whoami(WhoamiRequest {}).await {
                    errors.push(s.to_string());
                }
                calls.fetch_add(1, Ordering::Relaxed);
            }
            errors
        })
    };
    assert!(wait_until(WAIT, || calls.load(Ordering::Relaxed) >= 100).await);

    let port = c.daemon.proc.addr.port();
    c.daemon.proc.kill9();
    assert!(
        wait_until(WAIT, || !sub.connected()).await,
        "client should notice the daemon is gone"
    );
    let at_kill = calls.load(Ordering::Relaxed);
    assert!(wait_until(WAIT, || calls.load(Ordering::Relaxed) >= at_kill + 300).await);
    stop.store(true, Ordering::Relaxed);
    let errors = caller.await.expect("caller");
    assert!(
        errors.is_empty(),
        "calls failed during the outage: {errors:?}"
    );
    assert_eq!(
        ids(&sub.current()),
        set(&["b1", "b2", "b3"]),
        "last list kept"
    );

    // b3 dies while the daemon is down: it will never reattach.
    c.backends.get_mut("b3").expect("b3").kill9();
    let data = c.daemon.data_dir.clone();
    c.daemon = Daemon::start(
        &data,
        &format!("127.0.0.1:{port}"),
        &["--restore-grace", "2s"],
    )
    .expect("restart lb-server");

    // A brand-new client is served the persisted registry at once, b3 included.
    let fresh = c.client("echo").await;
    let restored = fresh
        .wait_for(WAIT, |l| !l.is_empty())
        .await
        .expect("restored list");
    assert_eq!(ids(&restored), set(&["b1", "b2", "b3"]));
    assert!(
        restored.version() > first.version(),
        "versions keep increasing across restarts"
    );
    // b1 and b2 reattach; b3 is dropped when the grace period ends.
    wait_ids(&fresh, &set(&["b1", "b2"])).await;
    // The old client reconnected by itself and follows too.
    wait_ids(&sub, &set(&["b1", "b2"])).await;
    assert!(wait_until(WAIT, || sub.connected()).await);
    let (_, errors) = call(&sub, 50).await;
    assert_eq!(errors, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_starts_from_fallback_while_daemon_is_down() {
    // A port nobody listens on: bind, note it, close.
    let dead = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").to_string()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let backend = BackendSpec::new("echo", "lonely", 1)
        .start(&dead, dir.path())
        .expect("backend");
    let mut opts = ClientOptions::new(&dead);
    opts.fallback = vec![backend.addr.to_string()];
    let sub = subscribe("echo", opts).await.expect("subscribe");
    assert_eq!(sub.version(), 0, "fallback lists have version 0");
    let (counts, errors) = call(&sub, 20).await;
    assert_eq!(errors, 0);
    assert_eq!(counts, BTreeMap::from([("lonely".into(), 20)]));
    assert!(!sub.connected());
}

/// Entries per instance in the client's current list.
fn entry_counts(list: &PickList) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for e in list.entries() {
        *m.entry(e.instance_id().to_string()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_policy_change_reaches_running_clients_and_survives_restart() {
    let mut c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 4),
        ],
    );
    let daemon = c.daemon.addr();
    ctl(
        &daemon,
        &["set-policy", "echo", "weighted_round_robin", "--create"],
    )
    .expect("ctl");
    let sub = c.client("echo").await;
    let wrr = sub
        .wait_for(WAIT, |l| ids(l).len() == 3 && l.len() == 6)
        .await
        .expect("wrr list");
    assert_eq!(entry_counts(&wrr)["b3"], 4);
    let (counts, errors) = call(&sub, 60).await;
    assert_eq!(errors, 0);
    assert_eq!(counts["b3"], 40, "{counts:?}");

    // Switch the running service to round robin: the same stream delivers it.
    let out = ctl(&daemon, &["set-policy", "echo", "round_robin"]).expect("ctl");
    assert!(out.contains("round_robin"), "{out}");
    let rr = sub
        .wait_for(WAIT, |l| l.len() == 3 && ids(l).len() == 3)
        .await
        .expect("rr list");
    assert!(rr.version() > wrr.version());
    assert_eq!(sub.streams_opened(), 1, "no reconnect was needed");
    let (counts, errors) = call(&sub, 60).await;
    assert_eq!(errors, 0);
    assert_eq!(counts.values().copied().collect::<Vec<_>>(), [20, 20, 20]);

    // Bad input is refused and changes nothing.
    let err = ctl(
        &daemon,
        &[
            "set-policy",
            "echo",
            "consistent_hash",
            "--param",
            "load_bound=0.5",
        ],
    )
    .expect_err("c < 1 must be refused");
    assert!(err.to_string().contains("params.load_bound"), "{err}");
    let err = ctl(&daemon, &["set-policy", "echo", "fastest"]).expect_err("unknown policy");
    assert!(err.to_string().contains("unknown policy"), "{err}");

    // kill -9 and restart: the policy is still round robin.
    let port = c.daemon.proc.addr.port();
    c.daemon.proc.kill9();
    let data = c.daemon.data_dir.clone();
    c.daemon = Daemon::start(&data, &format!("127.0.0.1:{port}"), &[]).expect("restart");
    let out = ctl(&daemon, &["get", "echo"]).expect("ctl get");
    assert!(out.contains("policy    round_robin"), "{out}");
    let fresh = c.client("echo").await;
    let l = fresh
        .wait_for(WAIT, |l| ids(l).len() == 3)
        .await
        .expect("restored");
    assert_eq!(l.len(), 3, "round robin after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_weight_override_and_drain() {
    let mut c = Cluster::start(
        &["--default-policy", "weighted_round_robin"],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
        ],
    );
    let daemon = c.daemon.addr();
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2"])).await;

    ctl(&daemon, &["set-weight", "echo", "b2", "3"]).expect("set-weight");
    let l = sub
        .wait_for(WAIT, |l| l.len() == 4)
        .await
        .expect("weights 1:3");
    assert_eq!(entry_counts(&l)["b2"], 3);
    let err = ctl(&daemon, &["set-weight", "echo", "b2", "10001"]).expect_err("too heavy");
    assert!(err.to_string().contains("weight"), "{err}");
    let err = ctl(&daemon, &["set-weight", "echo", "nobody", "2"]).expect_err("unknown");
    assert!(err.to_string().contains("NotFound"), "{err}");

    // Drain b2: out of the list, and its backend is told.
    ctl(&daemon, &["drain", "echo", "b2"]).expect("drain");
    wait_ids(&sub, &set(&["b1"])).await;
    let b2 = c.backends.get("b2").expect("b2");
    assert!(
        wait_until(WAIT, || b2.log().contains("asked this backend to drain")).await,
        "backend log:\n{}",
        b2.log()
    );
    let out = ctl(&daemon, &["get", "echo"]).expect("get");
    assert!(out.contains("DRAINED"), "{out}");

    // Undrain: back, with its override still in force; clearing it restores 1:1.
    ctl(&daemon, &["undrain", "echo", "b2"]).expect("undrain");
    let l = sub
        .wait_for(WAIT, |l| ids(l).len() == 2)
        .await
        .expect("back");
    assert_eq!(entry_counts(&l)["b2"], 3);
    ctl(&daemon, &["set-weight", "echo", "b2", "0"]).expect("clear");
    sub.wait_for(WAIT, |l| l.len() == 2)
        .await
        .expect("1:1 again");
    c.backends.remove("b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consistent_hash_agrees_across_clients_and_moves_few_keys() {
    let mut c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
            BackendSpec::new("echo", "b4", 1),
        ],
    );
    ctl(
        &c.daemon.addr(),
        &["set-policy", "echo", "consistent_hash", "--create"],
    )
    .expect("ctl");
    let (a, b) = (c.client("echo").await, c.client("echo").await);
    let ready = |l: &PickList| l.has_affinity() && ids(l).len() == 4;
    a.wait_for(WAIT, ready).await.expect("a has the table");
    b.wait_for(WAIT, ready).await.expect("b has the table");
    let owners = |s: &Subscription| -> Vec<String> {
        (0..2000u32)
            .map(|k| {
                s.pick_for_key(format!("user-{k}").as_bytes())
                    .expect("pick")
                    .instance_id()
                    .to_string()
            })
            .collect()
    };
    let before = owners(&a);
    assert_eq!(before, owners(&b), "two clients, one mapping");
    for id in ["b1", "b2", "b3", "b4"] {
        let n = before.iter().filter(|o| *o == id).count();
        assert!((300..=700).contains(&n), "{id} owns {n} of 2000 keys");
    }
    c.backends.get_mut("b3").expect("b3").kill9();
    a.wait_for(WAIT, |l| {
        l.has_affinity() && ids(l) == set(&["b1", "b2", "b4"])
    })
    .await
    .expect("b3 gone");
    let after = owners(&a);
    let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
    let b3_keys = before.iter().filter(|o| *o == "b3").count();
    assert!(after.iter().all(|o| o != "b3"));
    // Consistent hashing: b3's keys move, and only a few others do.
    assert!(
        moved >= b3_keys && moved <= b3_keys + 2000 / 5,
        "{moved} moved, b3 had {b3_keys}"
    );
    // The bound on keyed calls travels with the list (1.25 by default), and
    // load_bound=none takes it away: keys then follow the table strictly.
    assert_eq!(a.current().load_bound(), Some(1.25));
    ctl(
        &c.daemon.addr(),
        &[
            "set-policy",
            "echo",
            "consistent_hash",
            "-p",
            "load_bound=none",
        ],
    )
    .expect("ctl");
    a.wait_for(WAIT, |l| l.has_affinity() && l.load_bound().is_none())
        .await
        .expect("the bound is gone");
    ctl(
        &c.daemon.addr(),
        &[
            "set-policy",
            "echo",
            "consistent_hash",
            "-p",
            "load_bound=2",
        ],
    )
    .expect("ctl");
    a.wait_for(WAIT, |l| l.load_bound() == Some(2.0))
        .await
        .expect("c = 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hot_key_spills_off_its_backend_past_the_load_bound() {
    // One key gets every call, one at a time (so no client ever holds two
    // calls in flight and only the daemon's spill fraction can move it):
    // its backend reports 100 % of the service's qps against a bound of
    // 1.25 / 3, the daemon raises its spill fraction, and the key's calls
    // start landing on the key's second backend.
    let c = Cluster::start(
        &[],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
        ],
    );
    ctl(
        &c.daemon.addr(),
        &["set-policy", "echo", "consistent_hash", "--create"],
    )
    .expect("ctl");
    let sub = c.client("echo").await;
    sub.wait_for(WAIT, |l| l.has_affinity() && ids(l).len() == 3)
        .await
        .expect("the table");
    let home = sub.pick_for_key(b"hot").expect("pick");
    sub.report(
        &home,
        lb_client::Outcome::success(std::time::Duration::from_millis(1)),
    );
    let home = home.instance_id().to_string();
    let mut client = EchoClient::new(sub.channel());
    let call = |client: &mut EchoClient<lb_client::LbChannel>| {
        let mut request = tonic::Request::new(WhoamiRequest {});
        request
            .metadata_mut()
            .insert(lb_client::channel::HASH_KEY, "hot".parse().expect("ascii"));
        let mut client = client.clone();
        async move {
            client
                .whoami(request)
                .await
                .map(|r| r.into_inner().instance_id)
        }
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut landed: BTreeMap<String, u64> = BTreeMap::new();
    while landed
        .iter()
        .filter(|(id, _)| **id != home)
        .map(|(_, n)| n)
        .sum::<u64>()
        < 20
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the hot key never spilled off {home}: {landed:?}"
        );
        let id = call(&mut client).await.expect("call");
        *landed.entry(id).or_default() += 1;
    }
    // The spilled calls go to one second backend, the same every time.
    assert_eq!(landed.len(), 2, "{landed:?}");
    let shown = ctl(&c.daemon.addr(), &["get", "echo"]).expect("ctl get");
    assert!(shown.contains("KEYS SPILL"), "{shown}");
    // load_bound=none: strict affinity again, every call on the home.
    ctl(
        &c.daemon.addr(),
        &[
            "set-policy",
            "echo",
            "consistent_hash",
            "-p",
            "load_bound=none",
        ],
    )
    .expect("ctl");
    sub.wait_for(WAIT, |l| l.load_bound().is_none())
        .await
        .expect("the bound is gone");
    for _ in 0..50 {
        assert_eq!(call(&mut client).await.expect("call"), home);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_call_stats_reach_the_daemon_even_when_the_client_exits_at_once() {
    let c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
        ],
    );
    // This client's latencies are the only ones: trust it alone, so that
    // they reach the latency estimates checked below (by default
    // stats_min_clients=2 clients must agree).
    ctl(
        &c.daemon.addr(),
        &[
            "set-policy",
            "echo",
            "round_robin",
            "-p",
            "stats_min_clients=1",
            "--create",
        ],
    )
    .expect("set-policy");
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2", "b3"])).await;
    let (counts, errors) = call(&sub, 90).await;
    assert_eq!((counts.values().sum::<u64>(), errors), (90, 0));
    // Well inside the first 1 s stats interval: only the final flush can deliver.
    sub.shutdown(WAIT).await;
    let mut admin =
        lb_proto::v1::admin_client::AdminClient::connect(format!("http://{}", c.daemon.addr()))
            .await
            .expect("admin");
    // Admin reads come from the engine's snapshot, which shows client stats
    // within its refresh interval (100 ms): wait for them, then check them.
    let want = BTreeMap::from([("b1".into(), 30), ("b2".into(), 30), ("b3".into(), 30)]);
    let deadline = std::time::Instant::now() + WAIT;
    let (s, per) = loop {
        let s = admin
            .get_service(lb_proto::v1::GetServiceRequest {
                service: "echo".into(),
            })
            .await
            .expect("get")
            .into_inner();
        let per: BTreeMap<String, u64> = s
            .instances
            .iter()
            .map(|i| (i.instance_id.clone(), i.calls_finished))
            .collect();
        if per == want || std::time::Instant::now() >= deadline {
            break (s, per);
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    assert_eq!(per, want);
    assert!(s
        .instances
        .iter()
        .all(|i| i.calls_failed == 0 && i.latency_ewma_ms > 0.0));
}

/// `lb-server ctl services | head -1` ends quietly when the reader goes
/// away, as a Unix tool does, instead of panicking on the broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_output_into_a_closed_pipe_ends_quietly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[]).expect("daemon");
    let mut child = std::process::Command::new(lb_tests::harness::bin("lb-server").expect("bin"))
        .args(["ctl", "--server", &d.addr(), "services"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("ctl starts");
    // Close the reading end before ctl has its answer to print.
    drop(child.stdout.take());
    let out = child.wait_with_output().expect("ctl ends");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
}
