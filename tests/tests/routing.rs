//! Routing, health and cluster modes end to end: the real `lb-server`,
//! `echo-backend` processes, rules and modes set with `lb-server ctl`, and
//! lb-client in this process making real calls.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lb_client::{Broadcast, ClusterError, Collect, Endpoint, Subscription};
use lb_proto::v1 as pb;
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;
use lb_tests::harness::{ctl, ids, set, wait_ids, BackendSpec, Cluster, Daemon, WAIT};
use tonic::transport::Channel;

const WHOAMI: &str = "/lb.example.v1.Echo/Whoami";

fn labelled(id: &str, kv: &str) -> BackendSpec {
    let mut b = BackendSpec::new("echo", id, 1);
    b.extra = vec!["--label".into(), kv.into()];
    b
}

/// One lazily connected channel per backend address.
#[derive(Default)]
struct Channels(Mutex<HashMap<String, Channel>>);

impl Channels {
    fn get(&self, ep: &Endpoint) -> Channel {
        let mut m = self.0.lock().unwrap();
        m.entry(ep.address().to_string())
            .or_insert_with(|| {
                tonic::transport::Endpoint::from_shared(format!("http://{}", ep.address()))
                    .expect("address")
                    .connect_lazy()
            })
            .clone()
    }
}

/// One Whoami call under the service's cluster mode; the answering instance.
async fn whoami(
    sub: &Subscription,
    chans: &Channels,
    labels: &[(&str, &str)],
) -> Result<String, ClusterError<tonic::Status>> {
    sub.call(WHOAMI, labels, |ep| {
        let ch = chans.get(&ep);
        async move {
            let r = EchoClient::new(ch).whoami(WhoamiRequest {}).await?;
            Ok(r.into_inner().instance_id)
        }
    })
    .await
}

/// Counts answers per instance over `n` calls carrying `labels`.
async fn shares(
    sub: &Subscription,
    chans: &Channels,
    labels: &[(&str, &str)],
    n: usize,
) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for _ in 0..n {
        let id = whoami(sub, chans, labels).await.expect("call");
        *m.entry(id).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ab_rule_splits_by_label_changes_live_and_survives_restart() {
    let mut c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[
            labelled("a1", "group=A"),
            labelled("a2", "group=A"),
            labelled("b1", "group=B"),
        ],
    );
    let daemon = c.daemon.addr();
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["a1", "a2", "b1"])).await;
    let chans = Channels::default();

    let out = ctl(
        &daemon,
        &[
            "set-rule",
            "echo",
            "ab",
            "--when",
            "group=B",
            "--select",
            "group=B",
            "--exclusive",
        ],
    )
    .expect("set-rule");
    assert!(
        out.contains("ab") && out.contains("[1 instance(s)]"),
        "{out}"
    );
    let l = sub
        .wait_for(WAIT, |l| l.routes().len() == 1)
        .await
        .expect("the rule reaches the running client");
    assert_eq!(l.routes()[0].name(), "ab");
    // Group B goes to b1 only; everything else to the A instances only.
    let b = shares(&sub, &chans, &[("group", "B")], 20).await;
    assert_eq!(b, BTreeMap::from([("b1".into(), 20)]));
    let rest = shares(&sub, &chans, &[], 20).await;
    assert_eq!(rest, BTreeMap::from([("a1".into(), 10), ("a2".into(), 10)]));
    // The same through a tonic client on LbChannel, labels as metadata.
    let mut client = EchoClient::new(sub.channel());
    for _ in 0..5 {
        let mut req = tonic::Request::new(WhoamiRequest {});
        req.metadata_mut()
            .insert("lb-label-group", "B".parse().unwrap());
        let id = client
            .whoami(req)
            .await
            .expect("call")
            .into_inner()
            .instance_id;
        assert_eq!(id, "b1");
    }

    // Change the rule: group B now goes to a1 (direct routing).
    ctl(
        &daemon,
        &[
            "set-rule",
            "echo",
            "ab",
            "--when",
            "group=B",
            "--instance",
            "a1",
        ],
    )
    .expect("set-rule");
    sub.wait_for(WAIT, |l| {
        l.pick_with(&[("group", "B")])
            .is_ok_and(|e| e.instance_id() == "a1")
    })
    .await
    .expect("the changed rule reaches the running client");
    let b = shares(&sub, &chans, &[("group", "B")], 10).await;
    assert_eq!(b, BTreeMap::from([("a1".into(), 10)]));
    assert_eq!(sub.streams_opened(), 1, "no reconnect was needed");

    // A rule that selects nothing is accepted and flagged; malformed ones are refused.
    let out = ctl(
        &daemon,
        &[
            "set-rule", "echo", "ghost", "--when", "x=y", "--select", "group=Z",
        ],
    )
    .expect("set-rule");
    assert!(out.contains("MATCHES NO INSTANCE"), "{out}");
    ctl(&daemon, &["delete-rule", "echo", "ghost"]).expect("delete-rule");
    for (args, field) in [
        (
            vec!["set-rule", "echo", "bad", "--when", "group=B"],
            "rule.select",
        ),
        (
            vec!["set-rule", "echo", "bad", "--select", "group=B"],
            "rule.when",
        ),
        (
            vec![
                "set-rule", "echo", "b@d", "--when", "a=b", "--select", "c=d",
            ],
            "rule.name",
        ),
        (
            vec!["set-cluster", "echo", "failover", "--attempts", "0"],
            "attempts",
        ),
        (
            vec!["set-cluster", "echo", "failover", "--attempts", "11"],
            "attempts",
        ),
        (
            vec!["set-cluster", "echo", "forking", "--forks", "1"],
            "forks",
        ),
        (
            vec![
                "set-cluster",
                "echo",
                "broadcast",
                "--max-failure-percent",
                "101",
            ],
            "max_failure_percent",
        ),
        (
            vec!["set-cluster", "echo", "multicast", "--route", "nope"],
            "route",
        ),
        (
            vec!["set-cluster", "echo", "failfast", "--forks", "3"],
            "forks",
        ),
    ] {
        let err = ctl(&daemon, &args).expect_err("refused");
        let msg = err.to_string();
        assert!(
            msg.contains("InvalidArgument") && msg.contains(field),
            "{args:?}: {msg}"
        );
    }
    let out = ctl(&daemon, &["get", "echo"]).expect("get");
    assert!(
        !out.contains("bad") && out.contains("failover attempts=3"),
        "{out}"
    );

    // kill -9 and restart: the rule is still there and clients follow it.
    let before = sub.version();
    let port = c.daemon.proc.addr.port();
    c.daemon.proc.kill9();
    let data = c.daemon.data_dir.clone();
    c.daemon = Daemon::start(&data, &format!("127.0.0.1:{port}"), &[]).expect("restart");
    sub.wait_for(WAIT, |l| l.version() > before && l.routes().len() == 1)
        .await
        .expect("the restored rule reaches the client");
    let b = shares(&sub, &chans, &[("group", "B")], 10).await;
    assert_eq!(b, BTreeMap::from([("a1".into(), 10)]));
    let out = ctl(&daemon, &["get", "echo"]).expect("get");
    assert!(out.contains("instance a1"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_hides_a_killed_backend_under_continuous_load() {
    let mut c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
            // Registers itself in another service; below, a lease puts its
            // address into "echo", so its death goes unnoticed by the daemon
            // until the clients' failures get it ejected.
            BackendSpec::new("elsewhere", "b4", 1),
        ],
    );
    let b4_addr = c.backends["b4"].addr.to_string();
    let mut reg =
        pb::registry_client::RegistryClient::connect(format!("http://{}", c.daemon.addr()))
            .await
            .expect("connect");
    reg.register(pb::RegisterRequest {
        instance: Some(pb::Instance {
            service: "echo".into(),
            instance_id: "b4".into(),
            address: b4_addr,
            weight: 1,
            ..Default::default()
        }),
        ttl_ms: 600_000,
    })
    .await
    .expect("lease");
    // One client (this process's subscription) is the only witness of b4's
    // death: trust it alone (the default, stats_min_clients=2, wants two
    // clients to agree before their stats eject anything).
    ctl(
        &c.daemon.addr(),
        &[
            "set-policy",
            "echo",
            "round_robin",
            "-p",
            "stats_min_clients=1",
        ],
    )
    .expect("set-policy");
    // Retries may add up to half the calls: one instance in four failing
    // needs a quarter (the default budget, 20 %, protects an outage instead).
    ctl(
        &c.daemon.addr(),
        &["set-cluster", "echo", "failover", "--budget-percent", "50"],
    )
    .expect("set-cluster");
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2", "b3", "b4"])).await;
    sub.wait_for(WAIT, |l| l.settings().budget.percent == 50)
        .await
        .expect("budget");

    let chans = Arc::new(Channels::default());
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let attempts_on_dead = Arc::new(AtomicU64::new(0));
    let dead = Arc::new(AtomicBool::new(false));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (sub, chans, stop, ok) = (sub.clone(), chans.clone(), stop.clone(), ok.clone());
        let (attempts_on_dead, dead) = (attempts_on_dead.clone(), dead.clone());
        workers.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let r = sub
                    .call(WHOAMI, &[], |ep| {
                        if ep.instance_id() == "b4" && dead.load(Ordering::Relaxed) {
                            attempts_on_dead.fetch_add(1, Ordering::Relaxed);
                        }
                        let ch = chans.get(&ep);
                        async move {
                            let r = EchoClient::new(ch).whoami(WhoamiRequest {}).await?;
                            Ok::<_, tonic::Status>(r.into_inner().instance_id)
                        }
                    })
                    .await;
                match r {
                    Ok(_) => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => errors.push(e.to_string()),
                }
            }
            errors
        }));
    }
    let reached = |n: u64| {
        let ok = ok.clone();
        async move { lb_tests::harness::wait_until(WAIT, || ok.load(Ordering::Relaxed) >= n).await }
    };
    assert!(reached(200).await, "calls are flowing");
    dead.store(true, Ordering::Relaxed);
    c.backends.get_mut("b4").expect("b4").kill9();
    // Outlier detection ejects it from the clients' failure reports.
    sub.wait_for(Duration::from_secs(15), |l| !ids(l).contains("b4"))
        .await
        .expect("the dead backend is ejected");
    let now = ok.load(Ordering::Relaxed);
    assert!(
        reached(now + 200).await,
        "calls keep flowing after the ejection"
    );
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for w in workers {
        errors.extend(w.await.expect("worker"));
    }
    assert!(
        errors.is_empty(),
        "{} user-visible errors, first: {:?}",
        errors.len(),
        errors.first()
    );
    assert!(
        attempts_on_dead.load(Ordering::Relaxed) > 0,
        "some attempts hit the dead backend, so failover was exercised"
    );
    let out = ctl(&c.daemon.addr(), &["get", "echo"]).expect("get");
    assert!(out.contains("EJECTED"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_instance_is_ejected_and_readmitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("b3-fails");
    let mut b3 = BackendSpec::new("echo", "b3", 1);
    b3.extra = vec!["--fail-while".into(), flag.display().to_string()];
    let c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            b3,
        ],
    );
    let daemon = c.daemon.addr();
    ctl(
        &daemon,
        &[
            "set-policy",
            "echo",
            "round_robin",
            "-p",
            "eject_base_time=1s",
            // The test's one client is the only witness: trust it alone.
            "-p",
            "stats_min_clients=1",
            // Backends may not have registered yet.
            "--create",
        ],
    )
    .expect("set-policy");
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2", "b3"])).await;
    ctl(&daemon, &["set-cluster", "echo", "failfast"]).expect("failfast");
    sub.wait_for(WAIT, |l| {
        *l.settings().mode_for(WHOAMI) == lb_client::Mode::Failfast
    })
    .await
    .expect("failfast reaches the client");
    std::fs::write(&flag, b"").expect("flag");
    let chans = Channels::default();
    let mut failed = 0;
    for _ in 0..30 {
        if whoami(&sub, &chans, &[]).await.is_err() {
            failed += 1;
        }
    }
    assert_eq!(failed, 10, "failfast shows b3's failures");
    // The client's stats (every second) carry b3's run of failures.
    sub.wait_for(WAIT, |l| !ids(l).contains("b3"))
        .await
        .expect("b3 is ejected");
    let out = ctl(&daemon, &["get", "echo"]).expect("get");
    assert!(out.contains("EJECTED") && out.contains("14:10"), "{out}");
    let s = shares(&sub, &chans, &[], 20).await;
    assert_eq!(s, BTreeMap::from([("b1".into(), 10), ("b2".into(), 10)]));

    // Healthy again: re-admitted once its ejection time is over.
    std::fs::remove_file(&flag).expect("unflag");
    sub.wait_for(WAIT, |l| ids(l).contains("b3"))
        .await
        .expect("b3 is re-admitted");
    let out = ctl(&daemon, &["get", "echo"]).expect("get");
    assert!(!out.contains("EJECTED"), "{out}");
    let mut answered = BTreeMap::new();
    for _ in 0..30 {
        let id = whoami(&sub, &chans, &[])
            .await
            .expect("call after re-admission");
        *answered.entry(id).or_insert(0u64) += 1;
    }
    assert!(answered.get("b3").copied().unwrap_or(0) > 0, "{answered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcast_and_multicast_reach_every_instance() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("b3-fails");
    let mut b3 = labelled("b3", "rack=r2");
    b3.extra
        .extend(["--fail-while".into(), flag.display().to_string()]);
    let c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[labelled("b1", "rack=r1"), labelled("b2", "rack=r2"), b3],
    );
    let daemon = c.daemon.addr();
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2", "b3"])).await;
    let chans = Channels::default();
    let call = |ep: Arc<Endpoint>| {
        let ch = chans.get(&ep);
        async move {
            let r = EchoClient::new(ch).whoami(WhoamiRequest {}).await?;
            Ok::<_, tonic::Status>(r.into_inner().instance_id)
        }
    };
    let all = Broadcast {
        collect: Collect::All,
        max_failure_percent: 0,
    };
    let report = sub.broadcast(&[], &all, call).await.expect("broadcast");
    let answers: BTreeMap<String, String> = report
        .results
        .iter()
        .map(|(ep, r)| (ep.instance_id().to_string(), r.clone().expect("ok")))
        .collect();
    assert_eq!(
        answers,
        BTreeMap::from([
            ("b1".into(), "b1".into()),
            ("b2".into(), "b2".into()),
            ("b3".into(), "b3".into())
        ])
    );

    // One of three fails: over a 0 % threshold it is an error, under 50 % not.
    std::fs::write(&flag, b"").expect("flag");
    match sub.broadcast(&[], &all, call).await {
        Err(ClusterError::Broadcast { failed, total }) => assert_eq!((failed, total), (1, 3)),
        other => panic!("expected a broadcast failure, got {other:?}"),
    }
    let half = Broadcast {
        collect: Collect::All,
        max_failure_percent: 50,
    };
    let report = sub
        .broadcast(&[], &half, call)
        .await
        .expect("within threshold");
    assert_eq!(report.failed(), 1);
    let failed: Vec<&str> = report
        .results
        .iter()
        .filter(|(_, r)| r.is_err())
        .map(|(ep, _)| ep.instance_id())
        .collect();
    assert_eq!(failed, ["b3"]);

    // Multicast: the instances of one routing rule.
    ctl(
        &daemon,
        &[
            "set-rule", "echo", "rack2", "--when", "rack=r2", "--select", "rack=r2",
        ],
    )
    .expect("set-rule");
    sub.wait_for(WAIT, |l| l.routes().len() == 1)
        .await
        .expect("rule");
    let report = sub
        .multicast("rack2", &half, call)
        .await
        .expect("multicast");
    let reached: Vec<&str> = report
        .results
        .iter()
        .map(|(ep, _)| ep.instance_id())
        .collect();
    let mut reached = reached;
    reached.sort();
    assert_eq!(reached, ["b2", "b3"]);
    // And as a configured mode: `call` on a multicast method returns the first success.
    ctl(
        &daemon,
        &[
            "set-cluster",
            "echo",
            "multicast",
            "--route",
            "rack2",
            "--max-failure-percent",
            "50",
        ],
    )
    .expect("set-cluster");
    sub.wait_for(WAIT, |l| {
        matches!(
            l.settings().mode_for(WHOAMI),
            lb_client::Mode::Multicast { .. }
        )
    })
    .await
    .expect("mode");
    assert_eq!(
        whoami(&sub, &chans, &[]).await.expect("multicast call"),
        "b2"
    );
    let out = ctl(&daemon, &["delete-rule", "echo", "rack2"]).expect_err("in use");
    assert!(out.to_string().contains("multicast"), "{out}");
}
