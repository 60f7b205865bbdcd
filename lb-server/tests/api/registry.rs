//! `lb.v1.Registry`: ReportLoad streams (registration, reports, drain,
//! protocol errors, TTLs, backlogs) and the unary Register / Deregister.

use crate::common::*;

/// 1. A ReportLoad registration shows up in a subscriber's list, with
///    GCD-reduced weights, and the daemon announces its report interval.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_appears_in_lists() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |c| {
        c.report_interval = Duration::from_millis(250);
    })
    .await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let empty = next_list(&mut sub).await;
    assert!(
        empty.servers.is_empty() && empty.order.is_empty(),
        "{empty:?}"
    );

    let a = attach(d.addr, instance(SERVICE, "a", 7001, 2), 0).await;
    assert_eq!(a.hello.report_interval_ms, 250);
    assert!(!a.hello.drain);
    let b = attach(d.addr, instance(SERVICE, "b", 7002, 4), 0).await;
    assert_eq!(b.hello.report_interval_ms, 250);
    a.tx.send(report_msg(good_load())).await.unwrap();

    let list = next_list_where(&mut sub, WAIT, |l| l.servers.len() == 2).await;
    assert_well_formed(&list);
    assert_eq!(ids(&list), ["a", "b"]);
    assert_eq!(list.servers[0].address, "127.0.0.1:7001");
    assert_eq!(list.servers[1].address, "127.0.0.1:7002");
    assert_eq!(list.servers[0].zone, "zone-a");
    assert!(list.servers.iter().all(|s| s.tier == 0 && !s.drop));
    // Weights 2 and 4 reduce to 1 and 2: a period of 3.
    assert_eq!(list.order.len(), 3, "{list:?}");
    assert_eq!((shares(&list, "a"), shares(&list, "b")), (1, 2));
    assert!(list.version > empty.version);
    drop((a, b));
    d.stop().await;
}

/// 2. Registrations outside the documented limits are refused naming the
///    field, and none of them is listed or persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_registrations_are_refused_and_not_persisted() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let with = |f: fn(&mut Instance)| {
        let mut i = instance(SERVICE, "b1", 7001, 1);
        f(&mut i);
        register_msg(i, 0)
    };
    let cases: Vec<(&str, ReportLoadRequest, &str)> = vec![
        (
            "no instance",
            ReportLoadRequest {
                msg: Some(BackendMsg::Register(Registration {
                    instance: None,
                    ttl_ms: 0,
                })),
            },
            "register.instance",
        ),
        (
            "empty service",
            with(|i| i.service.clear()),
            "register.instance.service",
        ),
        (
            "254-byte service",
            with(|i| i.service = "s".repeat(254)),
            "register.instance.service",
        ),
        (
            "service with a space",
            with(|i| i.service = "echo v1".into()),
            "register.instance.service",
        ),
        (
            "empty instance_id",
            with(|i| i.instance_id.clear()),
            "register.instance.instance_id",
        ),
        (
            "address without port",
            with(|i| i.address = "nohost".into()),
            "register.instance.address",
        ),
        (
            "port 0",
            with(|i| i.address = "127.0.0.1:0".into()),
            "register.instance.address",
        ),
        (
            "port 99999",
            with(|i| i.address = "127.0.0.1:99999".into()),
            "register.instance.address",
        ),
        (
            "unspecified host",
            with(|i| i.address = "0.0.0.0:80".into()),
            "register.instance.address",
        ),
        (
            "broadcast host",
            with(|i| i.address = "255.255.255.255:80".into()),
            "register.instance.address",
        ),
        (
            "multicast host",
            with(|i| i.address = "224.0.0.1:80".into()),
            "register.instance.address",
        ),
        (
            "numeric host that is not a dotted quad",
            with(|i| i.address = "0x7f.1:80".into()),
            "register.instance.address",
        ),
        (
            "host 0",
            with(|i| i.address = "0:80".into()),
            "register.instance.address",
        ),
        (
            "link-local host (cloud metadata)",
            with(|i| i.address = "169.254.169.254:80".into()),
            "register.instance.address",
        ),
        (
            "weight 0",
            with(|i| i.weight = 0),
            "register.instance.weight",
        ),
        (
            "weight 10001",
            with(|i| i.weight = 10_001),
            "register.instance.weight",
        ),
        (
            "65 labels",
            with(|i| {
                i.labels = (0..65)
                    .map(|n| (format!("k{n}"), "v".to_string()))
                    .collect();
            }),
            "register.instance.labels",
        ),
        (
            "ttl 50 ms",
            register_msg(instance(SERVICE, "b1", 7001, 1), 50),
            "register.ttl_ms",
        ),
        (
            "ttl above an hour",
            register_msg(instance(SERVICE, "b1", 7001, 1), 3_600_001),
            "register.ttl_ms",
        ),
    ];
    for (what, req, field) in cases {
        let (_tx, r) = open_report_stream(d.addr, req).await;
        let s = first_error(r).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(
            s.message().contains(&format!("{field}:")),
            "{what}: {:?} does not name {field}",
            s.message()
        );
    }
    let mut sub = subscribe(d.addr, SERVICE).await;
    let list = next_list(&mut sub).await;
    assert!(list.servers.is_empty() && list.order.is_empty(), "{list:?}");
    drop(sub);
    d.stop().await;

    let d = Daemon::start(dir.path(), |c| c.restore_grace = Duration::from_secs(5)).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let list = next_list(&mut sub).await;
    assert!(list.servers.is_empty() && list.order.is_empty(), "{list:?}");
    drop(sub);
    d.stop().await;
}

/// 2b. Refusals quote a bounded prefix of the input (a 1 MB label key does
///     not come back as a 1 MB message); bytes that do not decode are the
///     caller's error; link-local addresses register only when allowed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_registrations_get_short_invalid_argument_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut reg = registry(d.addr).await;
    let mut huge = instance(SERVICE, "b1", 7001, 1);
    // Half the default --max-message-size: decoded, then refused.
    huge.labels = HashMap::from([("k".repeat(1 << 19), "v".to_string())]);
    let s = reg.register(lease(huge.clone(), 0)).await.unwrap_err();
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(
        s.message().starts_with("instance.labels[\"kkk"),
        "{}",
        &s.message()[..80]
    );
    assert!(s.message().len() < 1024, "{} bytes", s.message().len());
    // Twice the limit: refused before decoding, as resource_exhausted.
    huge.labels = HashMap::from([("k".repeat(2 << 20), "v".to_string())]);
    let s = reg.register(lease(huge, 0)).await.unwrap_err();
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    assert!(s.message().contains("the limit is: 1048576 bytes"), "{s:?}");

    let s = raw_unary(d.addr, "/lb.v1.Registry/Register", vec![0xff; 16]).await;
    assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
    assert!(s.message().contains("undecodable"), "{s:?}");
    d.stop().await;

    let d = Daemon::start(dir.path(), |c| c.allow_link_local = true).await;
    let mut reg = registry(d.addr).await;
    let mut meta = instance(SERVICE, "m1", 7001, 1);
    meta.address = "169.254.10.1:8080".into();
    reg.register(lease(meta, 0))
        .await
        .expect("link-local allowed by the flag");
    d.stop().await;
}

/// 3. A load report outside the limits ends its stream with INVALID_ARGUMENT
///    naming the field, and the instance leaves the lists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_load_reports_end_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let cases: Vec<(&str, LoadReport, &str)> = vec![
        (
            "cpu NaN",
            LoadReport {
                cpu_utilization: f64::NAN,
                ..good_load()
            },
            "report.cpu_utilization",
        ),
        (
            "cpu -0.5",
            LoadReport {
                cpu_utilization: -0.5,
                ..good_load()
            },
            "report.cpu_utilization",
        ),
        (
            "cpu 1e9",
            LoadReport {
                cpu_utilization: 1e9,
                ..good_load()
            },
            "report.cpu_utilization",
        ),
        (
            "qps -1",
            LoadReport {
                qps: Some(-1.0),
                ..good_load()
            },
            "report.qps",
        ),
        (
            "active_requests 10_000_001",
            LoadReport {
                active_requests: 10_000_001,
                ..good_load()
            },
            "report.active_requests",
        ),
    ];
    for (what, load, field) in cases {
        let mut b = attach(d.addr, instance(SERVICE, "b1", 7001, 1), 0).await;
        next_list_where(&mut sub, WAIT, |l| has(l, "b1")).await;
        // A valid report first: it must not be what ends the stream.
        b.tx.send(report_msg(good_load())).await.unwrap();
        b.tx.send(report_msg(load)).await.unwrap();
        let s = stream_error(&mut b.stream).await;
        assert_eq!(s.code(), Code::InvalidArgument, "{what}: {s:?}");
        assert!(
            s.message().contains(&format!("{field}:")),
            "{what}: {:?} does not name {field}",
            s.message()
        );
        // The sender is still alive: the daemon, not the client, ended it.
        let gone = next_list_where(&mut sub, WAIT, |l| !has(l, "b1")).await;
        assert!(gone.servers.is_empty(), "{what}: {gone:?}");
    }
    drop(sub);
    d.stop().await;
}

/// 4. Protocol errors on the ReportLoad stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_load_protocol_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;

    let (_tx, r) = open_report_stream(d.addr, report_msg(good_load())).await;
    assert_status(&first_error(r).await, Code::FailedPrecondition, "register");

    let (_tx, r) = open_report_stream(d.addr, drain_msg()).await;
    assert_status(&first_error(r).await, Code::FailedPrecondition, "register");

    let (_tx, r) = open_report_stream(d.addr, ReportLoadRequest { msg: None }).await;
    assert_field(&first_error(r).await, "msg");

    // A stream that ends before saying anything.
    let r = timeout(
        WAIT,
        registry(d.addr)
            .await
            .report_load(tokio_stream::empty::<ReportLoadRequest>()),
    )
    .await
    .unwrap()
    .map(|r| r.into_inner());
    assert_eq!(first_error(r).await.code(), Code::InvalidArgument);

    let mut sub = subscribe(d.addr, SERVICE).await;
    // A second `register` on a registered stream.
    let mut b = attach(d.addr, instance(SERVICE, "b1", 7001, 1), 0).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "b1")).await;
    b.tx.send(register_msg(instance(SERVICE, "b1", 7001, 1), 0))
        .await
        .unwrap();
    assert_status(
        &stream_error(&mut b.stream).await,
        Code::FailedPrecondition,
        "register",
    );
    next_list_where(&mut sub, WAIT, |l| !has(l, "b1")).await;

    // An empty message on a registered stream.
    let mut b = attach(d.addr, instance(SERVICE, "b2", 7002, 1), 0).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "b2")).await;
    b.tx.send(ReportLoadRequest { msg: None }).await.unwrap();
    assert_field(&stream_error(&mut b.stream).await, "msg");
    next_list_where(&mut sub, WAIT, |l| !has(l, "b2")).await;
    drop(sub);
    d.stop().await;
}

/// 5. A live id keeps its address; the same id at the same address on a new
///    stream takes over and the old stream is told it was replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instance_id_conflicts_and_takeover() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let mut first = attach(d.addr, instance(SERVICE, "a1", 7001, 1), 0).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "a1")).await;

    let (_tx, r) =
        open_report_stream(d.addr, register_msg(instance(SERVICE, "a1", 7002, 1), 0)).await;
    assert_status(
        &first_error(r).await,
        Code::FailedPrecondition,
        "127.0.0.1:7001",
    );
    // Unaffected: a new subscriber sees the first registration.
    let mut other = subscribe(d.addr, SERVICE).await;
    let list = next_list(&mut other).await;
    assert_eq!(ids(&list), ["a1"]);
    assert_eq!(list.servers[0].address, "127.0.0.1:7001");
    // And its stream is still the owner: it can report.
    first.tx.send(report_msg(good_load())).await.unwrap();

    // Same id and address: a reconnect, which takes over.
    let second = attach(d.addr, instance(SERVICE, "a1", 7001, 1), 0).await;
    assert_status(
        &stream_error(&mut first.stream).await,
        Code::FailedPrecondition,
        "replaced",
    );
    // The replaced stream closing must not remove the instance.
    drop(first);
    let _z = attach(d.addr, instance(SERVICE, "z1", 7009, 1), 0).await;
    let list = next_list_where(&mut sub, WAIT, |l| has(l, "z1")).await;
    assert_eq!(ids(&list), ["a1", "z1"]);
    assert_eq!(list.servers[0].address, "127.0.0.1:7001");
    // The new owner's stream is the one that counts now.
    drop(second);
    let list = next_list_where(&mut sub, WAIT, |l| !has(l, "a1")).await;
    assert_eq!(ids(&list), ["z1"]);
    drop((sub, other));
    d.stop().await;
}

/// 6. A broken stream removes its instance at once; `drain` removes it and
///    ends the stream OK; neither comes back after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_break_and_drain_remove_the_instance() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut sub = subscribe(d.addr, SERVICE).await;

    let b = attach(d.addr, instance(SERVICE, "b1", 7001, 1), 0).await;
    let _keep = attach(d.addr, instance(SERVICE, "k1", 7002, 1), 0).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "b1") && has(l, "k1")).await;
    drop(b);
    let list = next_list_where(&mut sub, Duration::from_secs(2), |l| !has(l, "b1")).await;
    assert_eq!(ids(&list), ["k1"]);

    let mut b = attach(d.addr, instance(SERVICE, "b2", 7003, 1), 0).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "b2")).await;
    b.tx.send(drain_msg()).await.unwrap();
    let end = timeout(WAIT, b.stream.message())
        .await
        .expect("the drained stream ends within 5 s");
    assert!(
        matches!(end, Ok(None)),
        "drain should end the stream OK: {end:?}"
    );
    let list = next_list_where(&mut sub, WAIT, |l| !has(l, "b2")).await;
    assert_eq!(ids(&list), ["k1"]);
    drop((sub, b));
    d.stop().await;

    // Only k1 was registered when the daemon stopped.
    let d = Daemon::start(dir.path(), |c| c.restore_grace = Duration::from_secs(5)).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    assert_eq!(ids(&next_list(&mut sub).await), ["k1"]);
    drop(sub);
    d.stop().await;
}

/// 7. Reports keep a stream registration alive; silence beyond its TTL
///    removes it and ends the stream with FAILED_PRECONDITION.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_stream_expires_after_its_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let mut b = attach(d.addr, instance(SERVICE, "b1", 7001, 1), 300).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "b1")).await;

    // Reports every 100 ms for a second (over three TTLs): it stays listed.
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => b.tx.send(report_msg(good_load())).await.unwrap(),
            m = sub.message() => {
                let list = m.unwrap().expect("subscription open").list.unwrap();
                assert!(has(&list, "b1"), "left while reporting: {list:?}");
            }
        }
    }

    // Silence: it expires.
    let list = next_list_where(&mut sub, WAIT, |l| !has(l, "b1")).await;
    assert!(list.servers.is_empty(), "{list:?}");
    assert_status(
        &stream_error(&mut b.stream).await,
        Code::FailedPrecondition,
        "expired",
    );
    drop((sub, b));
    d.stop().await;
}

/// 8. Unary Register (leases) and Deregister.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_register_and_deregister() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |c| c.default_ttl = Duration::from_secs(2)).await;
    let mut reg = registry(d.addr).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let dereg = |id: &str| DeregisterRequest {
        service: SERVICE.into(),
        instance_id: id.into(),
    };

    // Default TTL, listing, deregistration (idempotent).
    let r = reg
        .register(lease(instance(SERVICE, "l1", 7001, 1), 0))
        .await;
    assert_eq!(r.unwrap().into_inner().ttl_ms, 2000);
    let list = next_list_where(&mut sub, WAIT, |l| has(l, "l1")).await;
    assert_eq!(list.servers[0].address, "127.0.0.1:7001");
    let r = reg.deregister(dereg("l1")).await.unwrap().into_inner();
    assert!(r.existed);
    next_list_where(&mut sub, WAIT, |l| !has(l, "l1")).await;
    let r = reg.deregister(dereg("l1")).await.unwrap().into_inner();
    assert!(!r.existed);

    // A lease that is not renewed runs out.
    let r = reg
        .register(lease(instance(SERVICE, "l2", 7002, 1), 300))
        .await;
    assert_eq!(r.unwrap().into_inner().ttl_ms, 300);
    next_list_where(&mut sub, WAIT, |l| has(l, "l2")).await;
    next_list_where(&mut sub, WAIT, |l| !has(l, "l2")).await;

    // A renewed lease stays, then runs out once renewals stop.
    let l3 = lease(instance(SERVICE, "l3", 7003, 1), 300);
    reg.register(l3.clone()).await.unwrap();
    next_list_where(&mut sub, WAIT, |l| has(l, "l3")).await;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < until {
        tokio::select! {
            _ = tick.tick() => {
                let r = reg.register(l3.clone()).await.unwrap().into_inner();
                assert_eq!(r.ttl_ms, 300);
            }
            m = sub.message() => {
                let list = m.unwrap().expect("subscription open").list.unwrap();
                assert!(has(&list, "l3"), "left while renewed: {list:?}");
            }
        }
    }
    next_list_where(&mut sub, WAIT, |l| !has(l, "l3")).await;

    // Bad requests name the field.
    let s = reg
        .deregister(DeregisterRequest {
            service: String::new(),
            instance_id: "x".into(),
        })
        .await
        .unwrap_err();
    assert_field(&s, "service");
    let s = reg
        .deregister(DeregisterRequest {
            service: SERVICE.into(),
            instance_id: String::new(),
        })
        .await
        .unwrap_err();
    assert_field(&s, "instance_id");
    let s = reg
        .register(RegisterRequest {
            instance: None,
            ttl_ms: 0,
        })
        .await
        .unwrap_err();
    assert_field(&s, "instance");
    let mut bad = instance(SERVICE, "l4", 7004, 1);
    bad.address = "nohost".into();
    let s = reg.register(lease(bad, 0)).await.unwrap_err();
    assert_field(&s, "instance.address");
    let s = reg
        .register(lease(instance(SERVICE, "l4", 7004, 1), 50))
        .await
        .unwrap_err();
    assert_field(&s, "ttl_ms");

    // A lease cannot take an id a live stream holds; Deregister can remove it.
    let mut b = attach(d.addr, instance(SERVICE, "s1", 7005, 1), 0).await;
    next_list_where(&mut sub, WAIT, |l| has(l, "s1")).await;
    let s = reg
        .register(lease(instance(SERVICE, "s1", 7005, 1), 0))
        .await
        .unwrap_err();
    assert_status(&s, Code::FailedPrecondition, "s1");
    let mut other = subscribe(d.addr, SERVICE).await;
    assert_eq!(ids(&next_list(&mut other).await), ["s1"]);
    let r = reg.deregister(dereg("s1")).await.unwrap().into_inner();
    assert!(r.existed);
    next_list_where(&mut sub, WAIT, |l| !has(l, "s1")).await;
    assert_status(
        &stream_error(&mut b.stream).await,
        Code::FailedPrecondition,
        "deregistered",
    );
    drop((sub, other, b));
    d.stop().await;
}

/// The interval the daemon asks for must let a backend that follows it stay
/// registered: with `ttl_ms` 300 and the default 1 s report interval, a
/// backend reporting as told is expired between any two reports.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_interval_fits_within_the_ttl() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |c| c.report_interval = Duration::from_secs(1)).await;
    let b = attach(d.addr, instance(SERVICE, "b1", 7001, 1), 300).await;
    assert!(
        b.hello.report_interval_ms > 0 && b.hello.report_interval_ms < 300,
        "asked to report every {} ms with a 300 ms TTL",
        b.hello.report_interval_ms
    );
    drop(b);
    d.stop().await;
}

/// 18. A backlog of load reports on one stream: every report is validated,
///     the newest is the one in force, and a bad report behind valid ones
///     still ends the stream with its field named.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_backlogs_apply_the_newest_and_still_refuse_bad_ones() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let b = attach(d.addr, instance(SERVICE, "a", 81, 1), 60_000).await;
    let report = |active: u64| {
        report_msg(LoadReport {
            active_requests: active,
            ..good_load()
        })
    };
    for i in 1..=500 {
        b.tx.send(report(i)).await.unwrap();
    }
    let mut adm = admin(d.addr).await;
    let deadline = Instant::now() + WAIT;
    loop {
        let st = adm
            .get_service(lb_proto::v1::GetServiceRequest {
                service: SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let active = st.instances[0].load.as_ref().map(|l| l.active_requests);
        if active == Some(500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "newest report not applied: {active:?}"
        );
        tokio::task::yield_now().await;
    }
    let mut stream = b.stream;
    for i in 1..=100 {
        b.tx.send(report(i)).await.unwrap();
    }
    b.tx.send(report_msg(LoadReport {
        cpu_utilization: f64::NAN,
        ..good_load()
    }))
    .await
    .unwrap();
    for i in 1..=100 {
        // The stream may already be closing; later sends may fail.
        let _ = b.tx.send(report(i)).await;
    }
    assert_field(&stream_error(&mut stream).await, "report.cpu_utilization");
    d.stop().await;
}
