//! Several lb-server replicas on one etcd cluster (`--store etcd://…`),
//! all real processes: what one replica is told, every replica's clients
//! get: registrations, static instances, policies, overrides; a backend
//! that dies leaves every replica's lists; a replica killed with -9 and
//! started again loads everything from etcd.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_client::{subscribe, ClientOptions, Subscription};
use lb_proto::v1::{self as pb, admin_client::AdminClient};
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;
use lb_tests::etcd::EtcdCluster;
use lb_tests::harness::{
    ctl, ids, instances_of, set, wait_ids, wait_until, BackendSpec, Daemon, WAIT,
};

fn replica(dir: &std::path::Path, name: &str, url: &str) -> Daemon {
    Daemon::start(&dir.join(name), "127.0.0.1:0", &["--store", url]).expect("replica starts")
}

async fn client(d: &Daemon) -> Subscription {
    subscribe("svc", ClientOptions::new(d.addr()))
        .await
        .expect("subscribe")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_one_replica_is_told_every_replicas_clients_get() {
    let cluster = EtcdCluster::start(3).expect("etcd");
    let url = cluster.url("replicas");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(dir.path(), "a", &url);
    let b = replica(dir.path(), "b", &url);
    let mut c = replica(dir.path(), "c", &url);

    // A static instance through C, a backend registered with A: B lists both.
    ctl(
        &c.addr(),
        &["put-static", "svc", "s1", "127.0.0.1:9", "--create"],
    )
    .expect("put-static");
    let mut b1 = BackendSpec::new("svc", "b1", 1)
        .start(&a.addr(), dir.path())
        .expect("backend");
    let on_a = client(&a).await;
    let on_b = client(&b).await;
    wait_ids(&on_b, &set(&["b1", "s1"])).await;
    let shown = ctl(&b.addr(), &["get", "svc"]).expect("get on b");
    assert!(
        shown.contains("replica"),
        "B shows b1 as registered elsewhere:\n{shown}"
    );

    // A policy set through A reaches B's clients with the list.
    ctl(
        &a.addr(),
        &[
            "set-policy",
            "svc",
            "consistent_hash",
            "-p",
            "load_bound=1.5",
        ],
    )
    .expect("set-policy");
    on_b.wait_for(WAIT, |l| l.load_bound() == Some(1.5))
        .await
        .expect("B's client gets A's policy");

    // Drained through C: out of A's lists; undrained through B: back.
    ctl(&c.addr(), &["drain", "svc", "b1"]).expect("drain");
    wait_ids(&on_a, &set(&["s1"])).await;
    ctl(&b.addr(), &["undrain", "svc", "b1"]).expect("undrain");
    wait_ids(&on_a, &set(&["b1", "s1"])).await;

    // C killed with -9 and started again: it loads everything from etcd.
    c.proc.kill9();
    let c = replica(dir.path(), "c", &url);
    let on_c = client(&c).await;
    let list = wait_ids(&on_c, &set(&["b1", "s1"])).await;
    assert_eq!(list.load_bound(), Some(1.5), "C's policy after its restart");

    // The backend dies: its stream to A breaks, A removes it, and so
    // does every replica.
    b1.kill9();
    for (name, sub) in [("a", &on_a), ("b", &on_b), ("c", &on_c)] {
        let want: BTreeSet<String> = set(&["s1"]);
        if sub.wait_for(WAIT, |l| ids(l) == want).await.is_err() {
            panic!("replica {name} still lists {:?}", ids(&sub.current()));
        }
    }
}

/// The daemon list that makes a client named `client_id` start on `first`
/// (lb-client starts at a hash of its id, `DefaultHasher` over the id).
fn starting_on(client_id: &str, first: &Daemon, second: &Daemon) -> Vec<String> {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    client_id.hash(&mut h);
    if h.finish().is_multiple_of(2) {
        vec![first.addr(), second.addr()]
    } else {
        vec![second.addr(), first.addr()]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_never_moves_to_a_replica_behind_the_state_it_holds() {
    let cluster = EtcdCluster::start(3).expect("etcd");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = replica(dir.path(), "a", &cluster.url("behind"));
    // B reaches etcd through member 2 only, so freezing that member cuts it
    // off while A and the majority go on.
    let only_2 = format!("etcd://{}/behind", cluster.endpoints()[2]);
    let b = replica(dir.path(), "b", &only_2);
    ctl(
        &a.addr(),
        &["put-static", "svc", "s1", "127.0.0.1:9", "--create"],
    )
    .expect("put-static");
    let mut o = ClientOptions::new(a.addr());
    o.client_id = "mover".into();
    o.daemons = starting_on("mover", &a, &b);
    let sub = subscribe("svc", o).await.expect("subscribe");
    wait_ids(&sub, &set(&["s1"])).await;
    let on_b = client(&b).await;
    wait_ids(&on_b, &set(&["s1"])).await;

    // B falls behind: s2 is added through A while B cannot hear of it.
    cluster.stop(2).expect("freeze member 2");
    // If member 2 led the cluster, writes wait for a new leader (the
    // answer meanwhile is `unavailable`, and the change is not made).
    let mut put = ctl(&a.addr(), &["put-static", "svc", "s2", "127.0.0.1:10"]);
    let deadline = std::time::Instant::now() + WAIT;
    while put.is_err() && std::time::Instant::now() < deadline {
        put = ctl(&a.addr(), &["put-static", "svc", "s2", "127.0.0.1:10"]);
    }
    put.expect("put-static s2");
    let held = wait_ids(&sub, &set(&["s1", "s2"])).await;
    let revision = held.state().revision;
    assert!(
        revision > 0 && held.state().id.starts_with("etcd:"),
        "{:?}",
        held.state()
    );

    // A dies; the client's only other replica is B, which holds {s1}: it
    // refuses the client (UNAVAILABLE, naming both revisions) rather than
    // hand it the older state, and the client keeps {s1, s2}.
    let mut a = a;
    a.proc.kill9();
    let refused = wait_until(WAIT, || {
        sub.last_error()
            .is_some_and(|e| e.to_string().contains("behind the revision"))
    })
    .await;
    assert!(
        refused,
        "B never said it was behind: {:?}, connected {}, list {:?} {:?}; B's log:\n{}",
        sub.last_error(),
        sub.connected(),
        ids(&sub.current()),
        sub.current().state(),
        b.proc.log()
    );
    assert_eq!(ids(&sub.current()), set(&["s1", "s2"]));
    assert_eq!(sub.current().state().revision, revision);

    // B hears from etcd again, catches up, and the client follows it.
    cluster.cont(2).expect("resume member 2");
    wait_ids(&on_b, &set(&["s1", "s2"])).await;
    sub.wait_for(Duration::from_secs(30), |l| {
        l.state().revision >= revision && l.version() != held.version()
    })
    .await
    .expect("the client moves to B once B has caught up");
    assert_eq!(ids(&sub.current()), set(&["s1", "s2"]));
}

/// Acknowledged static instances of service "writes", put through the
/// replicas in turn (a dead replica's refusals are not acknowledged).
async fn write(replicas: &[String], i: usize) -> Option<String> {
    let id = format!("w{i:04}");
    let addr = &replicas[i % replicas.len()];
    let mut admin = AdminClient::connect(format!("http://{addr}")).await.ok()?;
    let put = admin.put_static(pb::PutStaticRequest {
        instance: Some(pb::Instance {
            service: "writes".into(),
            instance_id: id.clone(),
            address: "127.0.0.1:9".into(),
            weight: 1,
            ..Default::default()
        }),
        create: true,
    });
    tokio::time::timeout(Duration::from_secs(5), put)
        .await
        .ok()?
        .ok()
        .map(|_| id)
}

async fn instance_ids(addr: &str, service: &str) -> BTreeSet<String> {
    instances_of(addr, service)
        .await
        .into_iter()
        .map(|i| i.instance_id)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_call_fails_while_each_replica_and_an_etcd_member_are_killed() {
    let mut cluster = EtcdCluster::start(3).expect("etcd");
    let url = cluster.url("kills");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut replicas: Vec<Daemon> = ["a", "b", "c"]
        .iter()
        .map(|n| replica(dir.path(), n, &url))
        .collect();
    let addrs: Vec<String> = replicas.iter().map(Daemon::addr).collect();
    // Backends report to every replica.
    let _backends: Vec<_> = ["b1", "b2", "b3"]
        .iter()
        .map(|id| {
            BackendSpec::new("svc", id, 1)
                .start(&addrs.join(","), dir.path())
                .expect("backend")
        })
        .collect();
    for d in &replicas {
        wait_ids(&client(d).await, &set(&["b1", "b2", "b3"])).await;
    }

    // Clients spread over the replicas, calling without pause.
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let mut callers = tokio::task::JoinSet::new();
    let mut subs = Vec::new();
    for i in 0..6 {
        let mut o = ClientOptions::new(addrs[0].clone());
        o.daemons = addrs.clone();
        o.client_id = format!("caller-{i}");
        let sub = subscribe("svc", o).await.expect("subscribe");
        wait_ids(&sub, &set(&["b1", "b2", "b3"])).await;
        subs.push(sub.clone());
        let (stop, calls) = (Arc::clone(&stop), Arc::clone(&calls));
        callers.spawn(async move {
            let mut echo = EchoClient::new(sub.channel());
            let mut failed = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match echo.whoami(WhoamiRequest {}).await {
                    Ok(_) => {
                        calls.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => failed.push(e.to_string()),
                }
            }
            failed
        });
    }
    // Admin writes through the replicas in turn, all along.
    let acked = Arc::new(std::sync::Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked, addrs) = (Arc::clone(&stop), Arc::clone(&acked), addrs.clone());
        tokio::spawn(async move {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                if let Some(id) = write(&addrs, i).await {
                    acked.lock().expect("lock").push(id);
                }
                i += 1;
            }
        })
    };
    let progress = |n: u64| {
        let calls = Arc::clone(&calls);
        async move {
            let from = calls.load(Ordering::Relaxed);
            assert!(
                wait_until(WAIT, || calls.load(Ordering::Relaxed) >= from + n).await,
                "calls stalled at {}",
                calls.load(Ordering::Relaxed)
            );
        }
    };
    progress(200).await;

    // Each replica in turn: kill -9, calls go on, start it again on the same
    // store, and it lists every backend before the next one goes.
    for (i, name) in ["a", "b", "c"].iter().enumerate() {
        replicas[i].proc.kill9();
        progress(300).await;
        let back = Daemon::start(&dir.path().join(name), &addrs[i], &["--store", &url])
            .expect("replica restarts on its address");
        wait_ids(&client(&back).await, &set(&["b1", "b2", "b3"])).await;
        replicas[i] = back;
        progress(300).await;
    }
    // Then an etcd member (the cluster keeps its majority).
    cluster.kill9(0);
    progress(300).await;
    let acked_before = acked.lock().expect("lock").len();
    assert!(
        wait_until(Duration::from_secs(20), || acked
            .lock()
            .expect("lock")
            .len()
            > acked_before + 3)
        .await,
        "admin writes stopped after the etcd member died"
    );

    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer");
    let mut failed = Vec::new();
    while let Some(r) = callers.join_next().await {
        failed.extend(r.expect("caller"));
    }
    let total = calls.load(Ordering::Relaxed);
    assert!(
        failed.is_empty(),
        "{} of {total} calls failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(total > 1500, "only {total} calls");
    eprintln!(
        "{total} calls, none failed; {} admin writes acknowledged",
        acked.lock().expect("lock").len()
    );

    // Every acknowledged write is on every replica.
    let acked: BTreeSet<String> = acked.lock().expect("lock").iter().cloned().collect();
    assert!(acked.len() > 10, "only {} writes acknowledged", acked.len());
    for d in &replicas {
        let deadline = std::time::Instant::now() + WAIT;
        loop {
            let held = instance_ids(&d.addr(), "writes").await;
            let missing: Vec<&String> = acked.difference(&held).collect();
            if missing.is_empty() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{} lacks acknowledged writes {missing:?}",
                d.addr()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    drop(subs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_renewed_through_a_replica_that_died_expires_on_the_others() {
    let cluster = EtcdCluster::start(3).expect("etcd");
    let url = cluster.url("leases");
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = replica(dir.path(), "a", &url);
    let b = replica(dir.path(), "b", &url);
    let on_b = client(&b).await;
    let mut registry = pb::registry_client::RegistryClient::connect(format!("http://{}", a.addr()))
        .await
        .expect("registry");
    let ttl = Duration::from_millis(1000);
    let renew = pb::RegisterRequest {
        instance: Some(pb::Instance {
            service: "svc".into(),
            instance_id: "l1".into(),
            address: "127.0.0.1:9".into(),
            weight: 1,
            ..Default::default()
        }),
        ttl_ms: 1000,
    };
    // Renewed through A every 250 ms for three TTLs: B lists it all along
    // (A rewrites the record every half TTL, which moves B's expiry).
    registry.register(renew.clone()).await.expect("register");
    wait_ids(&on_b, &set(&["l1"])).await;
    let until = std::time::Instant::now() + 3 * ttl;
    while std::time::Instant::now() < until {
        registry.register(renew.clone()).await.expect("renew");
        tokio::time::sleep(Duration::from_millis(250)).await;
        assert_eq!(
            ids(&on_b.current()),
            set(&["l1"]),
            "B dropped a renewed lease"
        );
    }
    // A dies and nobody renews: B lets it go within about a TTL, and the
    // record goes from etcd (a replica started now does not list it).
    a.proc.kill9();
    let gone = std::time::Instant::now();
    wait_ids(&on_b, &set(&[])).await;
    assert!(
        gone.elapsed() < ttl * 3,
        "expired after {:?}",
        gone.elapsed()
    );
    let c = replica(dir.path(), "c", &url);
    assert!(
        instances_of(&c.addr(), "svc").await.is_empty(),
        "the record outlived the lease"
    );
}
