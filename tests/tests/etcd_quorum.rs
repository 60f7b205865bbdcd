//! Replicas when etcd loses its quorum (two of three members killed with
//! -9) and gets it back: lists and calls go on, load reports are still
//! taken (each replica plans from them), admin writes and new
//! registrations are refused with `unavailable` saying why, and all of it
//! resumes when the members return, without restarting anything.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_client::{subscribe, ClientOptions};
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;
use lb_tests::etcd::EtcdCluster;
use lb_tests::harness::{
    ctl, ids, instances_of, set, wait_ids, wait_until, BackendSpec, Daemon, WAIT,
};

/// The age of `instance`'s latest load report on the daemon at `addr`.
async fn load_age(addr: &str, instance: &str) -> Option<Duration> {
    instances_of(addr, "svc")
        .await
        .into_iter()
        .find(|i| i.instance_id == instance && i.load.is_some())
        .map(|i| Duration::from_millis(i.load_age_ms))
}

/// Each instance of "svc" on the daemon at `addr` with its weight override.
async fn instances(addr: &str) -> Vec<(String, u32)> {
    let mut v: Vec<(String, u32)> = instances_of(addr, "svc")
        .await
        .into_iter()
        .map(|i| (i.instance_id, i.weight_override))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_replicas_serve_what_they_know_and_refuse_writes_until_it_returns() {
    let mut cluster = EtcdCluster::start(3).expect("etcd");
    let url = cluster.url("quorum");
    let dir = tempfile::tempdir().expect("tempdir");
    let a = Daemon::start(&dir.path().join("a"), "127.0.0.1:0", &["--store", &url]).expect("a");
    let b = Daemon::start(&dir.path().join("b"), "127.0.0.1:0", &["--store", &url]).expect("b");
    let both = format!("{},{}", a.addr(), b.addr());
    let _b1 = BackendSpec::new("svc", "b1", 1)
        .start(&both, dir.path())
        .expect("b1");
    let mut o = ClientOptions::new(a.addr());
    o.daemons = vec![a.addr(), b.addr()];
    let sub = subscribe("svc", o).await.expect("subscribe");
    wait_ids(&sub, &set(&["b1"])).await;

    // Calls all along.
    let stop = Arc::new(AtomicBool::new(false));
    let (calls, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let caller = {
        let (stop, calls, failed, sub) = (
            Arc::clone(&stop),
            Arc::clone(&calls),
            Arc::clone(&failed),
            sub.clone(),
        );
        tokio::spawn(async move {
            let mut echo = EchoClient::new(sub.channel());
            while !stop.load(Ordering::Relaxed) {
                let counter = match echo.whoami(WhoamiRequest {}).await {
                    Ok(_) => &calls,
                    Err(_) => &failed,
                };
                counter.fetch_add(1, Ordering::Relaxed);
            }
        })
    };

    // Two of three members die: no quorum.
    cluster.kill9(1);
    cluster.kill9(2);
    let lost = Instant::now();

    // Admin writes are refused, saying why (the first may take the store's
    // timeout to fail; later ones are refused at once).
    let refused =
        ctl(&a.addr(), &["set-weight", "svc", "b1", "3"]).expect_err("no quorum, no write");
    let why = refused.to_string();
    assert!(
        why.contains("Unavailable") && why.contains("majority"),
        "{why}"
    );
    let again = Instant::now();
    let refused = ctl(&b.addr(), &["put-static", "svc", "s1", "127.0.0.1:9"]).expect_err("refused");
    assert!(refused.to_string().contains("Unavailable"), "{refused}");
    assert!(
        again.elapsed() < Duration::from_secs(8),
        "a refusal took {:?}",
        again.elapsed()
    );

    // A new backend cannot register...
    let _b2 = BackendSpec::new("svc", "b2", 1)
        .start(&both, dir.path())
        .expect("b2");
    // ...while lists, subscriptions and load reports go on: a new client of
    // B gets B's list, and b1's reports keep arriving at both replicas.
    let late = subscribe("svc", ClientOptions::new(b.addr()))
        .await
        .expect("a new subscription without a quorum");
    assert_eq!(ids(&late.current()), set(&["b1"]));
    let calls_then = calls.load(Ordering::Relaxed);
    for addr in [a.addr(), b.addr()] {
        let age = load_age(&addr, "b1").await;
        assert!(
            age.is_some_and(|a| a < Duration::from_secs(2)),
            "{addr}: b1's last report is {age:?} old, {:?} after the quorum was lost",
            lost.elapsed()
        );
    }
    assert!(
        wait_until(WAIT, || calls.load(Ordering::Relaxed) > calls_then + 100).await,
        "calls stopped"
    );
    assert_eq!(
        ids(&sub.current()),
        set(&["b1"]),
        "b2 registered without a quorum"
    );

    // The members return: writes and the waiting registration go through,
    // on both replicas, without restarting anything.
    cluster.restart(1).expect("member 1");
    cluster.restart(2).expect("member 2");
    let deadline = Instant::now() + Duration::from_secs(30);
    while ctl(&b.addr(), &["set-weight", "svc", "b1", "3"]).is_err() {
        assert!(Instant::now() < deadline, "writes never resumed");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    wait_ids(&sub, &set(&["b1", "b2"])).await;
    wait_ids(&late, &set(&["b1", "b2"])).await;
    for addr in [a.addr(), b.addr()] {
        let deadline = Instant::now() + WAIT;
        loop {
            let view = instances(&addr).await;
            if view == [("b1".to_string(), 3), ("b2".to_string(), 0)] {
                break;
            }
            assert!(Instant::now() < deadline, "{addr} shows {view:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    stop.store(true, Ordering::Relaxed);
    caller.await.expect("caller");
    assert_eq!(failed.load(Ordering::Relaxed), 0, "calls failed");
    eprintln!(
        "{} calls, none failed, through the quorum's loss and return",
        calls.load(Ordering::Relaxed)
    );
}
