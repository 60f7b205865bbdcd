//! Several daemon addresses in one client (issue 18's replicas): clients
//! spread over the daemons instead of all starting on the first one, and a
//! client whose daemon dies moves to the next one.

use lb_client::{subscribe, ClientOptions};
use lb_proto::v1::{self as pb, admin_client::AdminClient};
use lb_tests::harness::{Daemon, WAIT};

/// The same static instance on a daemon, so it knows the service.
async fn put_static(addr: &str) {
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin connects");
    admin
        .put_static(pb::PutStaticRequest {
            instance: Some(pb::Instance {
                service: "svc".into(),
                instance_id: "s1".into(),
                address: "127.0.0.1:9".into(),
                weight: 1,
                ..Default::default()
            }),
            create: true,
        })
        .await
        .expect("put static");
}

async fn subscribers(addr: &str, service: &str) -> u32 {
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin connects");
    admin
        .list_services(pb::ListServicesRequest::default())
        .await
        .expect("list services")
        .into_inner()
        .services
        .into_iter()
        .find(|s| s.name == service)
        .map_or(0, |s| s.subscribers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_spread_over_the_daemons_and_move_when_one_dies() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut a = Daemon::start(&dir.path().join("a"), "127.0.0.1:0", &[]).expect("daemon a");
    let b = Daemon::start(&dir.path().join("b"), "127.0.0.1:0", &[]).expect("daemon b");
    let daemons = vec![a.addr(), b.addr()];
    for d in &daemons {
        put_static(d).await;
    }
    let mut subs = Vec::new();
    for i in 0..20 {
        let mut o = ClientOptions::new(daemons[0].clone());
        o.daemons = daemons.clone();
        o.client_id = format!("client-{i}");
        subs.push(subscribe("svc", o).await.expect("subscribe"));
    }
    // Every subscription holds the first list of the daemon it started on,
    // so its stream is open there.
    let (on_a, on_b) = (
        subscribers(&a.addr(), "svc").await,
        subscribers(&b.addr(), "svc").await,
    );
    assert_eq!(on_a + on_b, 20, "a {on_a}, b {on_b}");
    assert!((5..=15).contains(&on_a), "a {on_a}, b {on_b}: not spread");
    // a dies: its clients reconnect to b.
    a.proc.kill9();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = subscribers(&b.addr(), "svc").await;
        if n == 20 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "only {n} of 20 clients on b after a died"
        );
        tokio::task::yield_now().await;
    }
}
