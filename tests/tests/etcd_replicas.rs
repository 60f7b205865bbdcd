//! Several lb-server replicas on one etcd cluster (`--store etcd://…`),
//! all real processes: what one replica is told, every replica's clients
//! get: registrations, static instances, policies, overrides; a backend
//! that dies leaves every replica's lists; a replica killed with -9 and
//! started again loads everything from etcd.

use std::collections::BTreeSet;

use lb_client::{subscribe, ClientOptions, Subscription};
use lb_tests::etcd::EtcdCluster;
use lb_tests::harness::{ctl, ids, set, wait_ids, BackendSpec, Daemon, WAIT};

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
