//! Load shedding: drop entries by utilization target and by backlog.

use std::path::Path;

use crate::common::*;

fn busy(utilization: f64) -> LoadReport {
    LoadReport {
        cpu_utilization: utilization,
        ..Default::default()
    }
}

/// A daemon reporting every 20 ms whose service is round_robin with one
/// shedding parameter set, a subscriber, and backends "a" and "b" attached
/// and listed.
struct Shedding {
    d: Daemon,
    adm: lb_proto::v1::admin_client::AdminClient<Channel>,
    sub: Streaming<SubscribeResponse>,
    a: Backend,
    b: Backend,
}

impl Shedding {
    async fn start(dir: &Path, param: &str, value: &str) -> Shedding {
        let d = Daemon::start(dir, |c| {
            c.report_interval = Duration::from_millis(20);
        })
        .await;
        let mut adm = admin(d.addr).await;
        adm.set_policy(lb_proto::v1::SetPolicyRequest {
            service: SERVICE.into(),
            policy: Some(lb_proto::v1::Policy {
                name: "round_robin".into(),
                params: HashMap::from([(param.to_string(), value.to_string())]),
            }),
            create: true,
            ..Default::default()
        })
        .await
        .unwrap();
        let mut sub = subscribe(d.addr, SERVICE).await;
        let a = attach(d.addr, instance(SERVICE, "a", 7001, 1), 0).await;
        let b = attach(d.addr, instance(SERVICE, "b", 7002, 1), 0).await;
        next_list_where(&mut sub, WAIT, |l| l.servers.len() == 2).await;
        Shedding { d, adm, sub, a, b }
    }
}

/// 13. Load shedding: above the target utilization the list carries drop
///     entries (the drop fraction visible in GetService); below it they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overloaded_service_gets_drop_entries_until_it_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let Shedding {
        d,
        mut adm,
        mut sub,
        a,
        b,
    } = Shedding::start(dir.path(), "shed_target", "0.5").await;
    let report = |u: f64| {
        let (a, b) = (a.tx.clone(), b.tx.clone());
        async move {
            a.send(report_msg(busy(u))).await.unwrap();
            b.send(report_msg(busy(u))).await.unwrap();
        }
    };
    // Saturated: the controller admits less each report interval.
    let drops = |l: &ServerList| {
        let d: Vec<u32> = l
            .servers
            .iter()
            .enumerate()
            .filter(|(_, s)| s.drop)
            .map(|(i, _)| i as u32)
            .collect();
        l.order.iter().filter(|i| d.contains(i)).count() as f64 / l.order.len().max(1) as f64
    };
    let deadline = Instant::now() + WAIT;
    let shedding = loop {
        report(1.0).await;
        let l = next_list(&mut sub).await;
        assert_well_formed(&l);
        if drops(&l) > 0.3 {
            break l;
        }
        assert!(Instant::now() < deadline, "no drop entries after {WAIT:?}");
    };
    // Every drop server is a pure drop entry; the real servers keep equal shares.
    assert!(shedding
        .servers
        .iter()
        .filter(|s| s.drop)
        .all(|s| s.address.is_empty()));
    assert!(shares(&shedding, "a").abs_diff(shares(&shedding, "b")) <= 1);
    let status = service_status(&mut adm).await;
    assert!(status.drop_fraction > 0.0, "{status:?}");
    assert!((status.utilization - 1.0).abs() < 1e-9);
    // Recovered: the drop entries go away.
    let deadline = Instant::now() + WAIT;
    loop {
        report(0.1).await;
        let l = next_list(&mut sub).await;
        if drops(&l) == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "still dropping after {WAIT:?}");
    }
    drop((a, b, sub));
    d.stop().await;
}

/// 13b. Shedding by backlog (`shed_delay`): busy backends with short queues
///     shed nothing; a backlog longer than the delay (active requests ÷ the
///     rate the backends serve fully busy) brings drop entries, shown with the
///     backlog in GetService; once it drains they go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_growing_backlog_gets_drop_entries_until_it_drains() {
    let dir = tempfile::tempdir().unwrap();
    let Shedding {
        d,
        mut adm,
        mut sub,
        a,
        b,
    } = Shedding::start(dir.path(), "shed_delay", "100ms").await;
    // Each backend serves 200/s fully busy (qps 100 at utilization 0.5, or
    // 200 at 1.0): `active` requests drain in active / 200 s.
    let report = |utilization: f64, qps: f64, active: u64| {
        let (a, b) = (a.tx.clone(), b.tx.clone());
        let load = LoadReport {
            cpu_utilization: utilization,
            qps: Some(qps),
            active_requests: active,
            ..Default::default()
        };
        async move {
            a.send(report_msg(load.clone())).await.unwrap();
            b.send(report_msg(load)).await.unwrap();
        }
    };
    // Fully busy, 10 ms of backlog: no drops.
    report(1.0, 200.0, 2).await;
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = service_status(&mut adm).await;
        if (s.backlog_seconds - 0.01).abs() < 1e-9 {
            break s;
        }
        assert!(Instant::now() < deadline, "backlog not shown: {s:?}");
        report(1.0, 200.0, 2).await;
    };
    assert_eq!(s.drop_fraction, 0.0, "{s:?}");
    // 0.5 s of backlog: drop entries, for a fraction of the calls.
    let deadline = Instant::now() + WAIT;
    loop {
        report(1.0, 200.0, 100).await;
        let l = next_list(&mut sub).await;
        assert_well_formed(&l);
        if l.servers.iter().any(|s| s.drop) {
            break;
        }
        assert!(Instant::now() < deadline, "no drop entries after {WAIT:?}");
    }
    // GetService reads the engine's snapshot: it shows both backends'
    // latest reports once the engine has published them.
    let deadline = Instant::now() + WAIT;
    let s = loop {
        let s = service_status(&mut adm).await;
        if (s.backlog_seconds - 0.5).abs() < 1e-9 {
            break s;
        }
        assert!(Instant::now() < deadline, "backlog not shown: {s:?}");
        report(1.0, 200.0, 100).await;
    };
    assert!(s.drop_fraction > 0.0 && s.drop_fraction <= 0.9, "{s:?}");
    // Drained: the drop entries go away.
    let deadline = Instant::now() + WAIT;
    loop {
        report(0.5, 100.0, 0).await;
        let l = next_list(&mut sub).await;
        if l.servers.iter().all(|s| !s.drop) {
            break;
        }
        assert!(Instant::now() < deadline, "still dropping after {WAIT:?}");
    }
    drop((a, b, sub));
    d.stop().await;
}
