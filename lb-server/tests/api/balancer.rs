//! `lb.v1.Balancer`: Subscribe streams, their stats, and each
//! subscriber's rotation of the list.

use crate::common::*;

/// 9. Subscribe: unknown services, bad subscriptions, stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_lists_and_stats() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |c| {
        c.stats_interval = Duration::from_millis(700);
    })
    .await;
    let mut reg = registry(d.addr).await;

    // An unknown service: an empty list at once, then the backend.
    let mut sub = subscribe(d.addr, "unknown.svc").await;
    let first = timeout(WAIT, sub.message())
        .await
        .unwrap()
        .unwrap()
        .expect("a first response");
    assert_eq!(first.stats_interval_ms, 700);
    let empty = first.list.expect("the first response carries a list");
    assert!(
        empty.servers.is_empty() && empty.order.is_empty(),
        "{empty:?}"
    );
    reg.register(lease(instance("unknown.svc", "u1", 7001, 1), 60_000))
        .await
        .unwrap();
    let list = next_list_where(&mut sub, WAIT, |l| has(l, "u1")).await;
    assert_eq!(list.order, [0]);
    assert!(
        list.version > empty.version,
        "{} <= {}",
        list.version,
        empty.version
    );

    // Bad subscriptions.
    let sub_req = |service: &str, client: Option<ClientIdentity>| SubscribeRequest {
        msg: Some(ClientMsg::Subscribe(Subscription {
            service: service.into(),
            client,
            ..Default::default()
        })),
    };
    let client = |id: String| {
        Some(ClientIdentity {
            client_id: id,
            ..Default::default()
        })
    };
    let cases = vec![
        (
            "empty service",
            sub_req("", client("c".into())),
            "subscribe.service",
        ),
        (
            "254-byte service",
            sub_req(&"s".repeat(254), client("c".into())),
            "subscribe.service",
        ),
        ("no client", sub_req(SERVICE, None), "subscribe.client"),
        (
            "empty client_id",
            sub_req(SERVICE, client(String::new())),
            "subscribe.client.client_id",
        ),
        (
            "129-byte client_id",
            sub_req(SERVICE, client("c".repeat(129))),
            "subscribe.client.client_id",
        ),
    ];
    for (what, req, field) in cases {
        let (_tx, r) = subscribe_with(d.addr, req).await;
        let s = first_error(r).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(
            s.message().contains(&format!("{field}:")),
            "{what}: {:?} does not name {field}",
            s.message()
        );
    }
    let (_tx, r) = subscribe_with(d.addr, stats_msg(ClientStats::default())).await;
    assert_status(&first_error(r).await, Code::FailedPrecondition, "subscribe");
    let (_tx, r) = subscribe_with(d.addr, SubscribeRequest { msg: None }).await;
    assert_field(&first_error(r).await, "msg");

    // Valid stats are taken in and the stream stays open; bad ones end it.
    let (tx, r) = subscribe_with(d.addr, subscription(SERVICE, "stats-client")).await;
    let mut stream = r.unwrap();
    assert!(next_list(&mut stream).await.servers.is_empty());
    tx.send(stats_msg(ClientStats {
        instances: vec![InstanceStats {
            instance_id: "v1".into(),
            calls_started: 10,
            calls_finished: 9,
            calls_failed: 1,
            latency_sum_us: 9_000,
            ..Default::default()
        }],
        dropped: 0,
        no_backend: 2,
    }))
    .await
    .unwrap();
    reg.register(lease(instance(SERVICE, "v1", 7002, 1), 60_000))
        .await
        .unwrap();
    next_list_where(&mut stream, WAIT, |l| has(l, "v1")).await;
    tx.send(stats_msg(ClientStats {
        instances: vec![InstanceStats {
            instance_id: "v1".into(),
            calls_started: 5,
            calls_finished: 4,
            calls_failed: 5,
            latency_sum_us: 100,
            ..Default::default()
        }],
        ..Default::default()
    }))
    .await
    .unwrap();
    // The only error is the bad message's: the valid one was accepted.
    assert_field(
        &subscription_error(&mut stream).await,
        "stats.instances[0].calls_failed",
    );

    // A second subscription on one stream.
    let (tx, r) = subscribe_with(d.addr, subscription(SERVICE, "twice")).await;
    let mut stream = r.unwrap();
    tx.send(subscription(SERVICE, "twice")).await.unwrap();
    assert_status(
        &subscription_error(&mut stream).await,
        Code::FailedPrecondition,
        "subscribed",
    );
    drop((sub, tx));
    d.stop().await;
}

/// 11. Subscribers get their own rotation of the same list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_get_different_rotations() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut reg = registry(d.addr).await;
    for (n, port) in [(1u32, 7001u16), (2, 7002), (3, 7003)] {
        reg.register(lease(instance(SERVICE, &format!("r{n}"), port, n), 60_000))
            .await
            .unwrap();
    }
    let mut lists = Vec::new();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let mut sub = subscribe(d.addr, SERVICE).await;
        lists.push(next_list_where(&mut sub, WAIT, |l| l.servers.len() == 3).await);
        subs.push(sub);
    }
    for l in &lists {
        assert_well_formed(l);
        assert_eq!(l.servers, lists[0].servers);
        assert_eq!(l.order.len(), 6, "{l:?}");
        assert_eq!(
            (shares(l, "r1"), shares(l, "r2"), shares(l, "r3")),
            (1, 2, 3)
        );
        assert!(
            is_rotation(&lists[0].order, &l.order),
            "{:?} is not a rotation of {:?}",
            l.order,
            lists[0].order
        );
    }
    assert!(
        lists.iter().any(|l| l.order != lists[0].order),
        "every subscriber got the same order: {:?}",
        lists[0].order
    );
    drop(subs);
    d.stop().await;
}
