//! `lb.v1.Admin`: routing rules, cluster modes and static instances:
//! validated, persisted, refused with the field named.

use crate::common::*;

/// 14. Routing rules and cluster modes: bad ones are refused with the field
///     and nothing is persisted; good ones survive a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_rules_and_cluster_modes_are_refused_and_not_persisted() {
    use lb_proto::v1::{
        cluster_mode::Kind, ClusterConfig, ClusterMode, PutRuleRequest, Rule, SetClusterRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut adm = admin(d.addr).await;
    let rule = |name: &str, when: &[(&str, &str)], select: &[(&str, &str)]| Rule {
        name: name.into(),
        when_request: when
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        select: select
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let put = |r: Rule| PutRuleRequest {
        service: SERVICE.into(),
        rule: Some(r),
        position: None,
        create: true,
    };
    let good = rule("ab", &[("group", "B")], &[("group", "B")]);
    adm.put_rule(put(good.clone())).await.unwrap();
    let bad_rules = [
        (rule("", &[("g", "1")], &[("g", "1")]), "rule.name"),
        (rule("x y", &[("g", "1")], &[("g", "1")]), "rule.name"),
        (rule("x", &[], &[("g", "1")]), "rule.when"),
        (rule("x", &[("g", "1")], &[]), "rule.select"),
        (rule("x", &[("", "1")], &[("g", "1")]), "rule.when"),
        (
            Rule {
                instance: "i".into(),
                ..rule("x", &[("g", "1")], &[("g", "1")])
            },
            "rule.instance",
        ),
    ];
    for (r, field) in bad_rules {
        let s = adm.put_rule(put(r)).await.unwrap_err();
        assert_status(&s, Code::InvalidArgument, field);
    }
    let s = adm
        .put_rule(PutRuleRequest {
            position: Some(64),
            ..put(rule("x", &[("g", "1")], &[("g", "1")]))
        })
        .await
        .unwrap_err();
    assert_field(&s, "position");
    let mode = |kind: Kind, attempts: u32| ClusterMode {
        kind: kind as i32,
        attempts,
        ..Default::default()
    };
    let set = |m: ClusterMode| SetClusterRequest {
        service: SERVICE.into(),
        cluster: Some(ClusterConfig {
            default_mode: Some(m),
            ..Default::default()
        }),
        create: true,
        ..Default::default()
    };
    for (m, field) in [
        (mode(Kind::Failover, 0), "cluster.default_mode.attempts"),
        (mode(Kind::Failover, 11), "cluster.default_mode.attempts"),
        (mode(Kind::Failfast, 3), "cluster.default_mode.attempts"),
        (
            ClusterMode {
                kind: Kind::Broadcast as i32,
                max_failure_percent: 101,
                ..Default::default()
            },
            "cluster.default_mode.max_failure_percent",
        ),
        (
            ClusterMode {
                kind: Kind::Multicast as i32,
                route: "nope".into(),
                ..Default::default()
            },
            "cluster.default_mode.route",
        ),
        (
            ClusterMode {
                kind: 99,
                ..Default::default()
            },
            "cluster.default_mode.kind",
        ),
        (
            ClusterMode {
                retry_on: vec!["SOMETIMES".into()],
                ..mode(Kind::Failover, 2)
            },
            "cluster.default_mode.retry_on[0]",
        ),
    ] {
        let s = adm.set_cluster(set(m)).await.unwrap_err();
        assert_status(&s, Code::InvalidArgument, field);
    }
    let s = adm
        .set_cluster(SetClusterRequest {
            service: SERVICE.into(),
            cluster: Some(ClusterConfig {
                budget_percent: Some(150),
                ..Default::default()
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_field(&s, "cluster.budget_percent");
    let deadline = |deadline_ms| SetClusterRequest {
        service: SERVICE.into(),
        cluster: Some(ClusterConfig {
            default_mode: Some(mode(Kind::Failover, 5)),
            deadline_ms,
            ..Default::default()
        }),
        ..Default::default()
    };
    let s = adm.set_cluster(deadline(3_600_001)).await.unwrap_err();
    assert_status(&s, Code::InvalidArgument, "cluster.deadline_ms");
    adm.set_cluster(deadline(1500)).await.unwrap();
    d.stop().await;

    // Only the good settings were persisted.
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut adm = admin(d.addr).await;
    let status = adm
        .get_service(lb_proto::v1::GetServiceRequest {
            service: SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let rules: Vec<Rule> = status.rules.into_iter().filter_map(|r| r.rule).collect();
    assert_eq!(rules, [good]);
    let cluster = status.cluster.unwrap();
    assert_eq!(cluster.default_mode.unwrap().attempts, 5);
    assert_eq!(cluster.deadline_ms, 1500);
    let mut sub = subscribe(d.addr, SERVICE).await;
    let l = next_list(&mut sub).await;
    assert_eq!(l.routes.len(), 1);
    let cluster = l.cluster.unwrap();
    assert_eq!(cluster.default_mode.unwrap().attempts, 5);
    assert_eq!(cluster.deadline_ms, 1500);
    drop(sub);
    d.stop().await;
}

// ------------------------------------------------------------------ grpclb

/// 17. Static instances: validated like registrations, persisted, never
///     expire (they outlive the restart grace), and do not mix with
///     backends' registrations of the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_instances_persist_and_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let put = |i: Instance| lb_proto::v1::PutStaticRequest {
        instance: Some(i),
        create: true,
    };
    {
        let d = Daemon::start(dir.path(), |_| {}).await;
        let mut adm = admin(d.addr).await;
        let mut bad = instance(GRPCLB_SERVICE, "s", 90, 1);
        bad.address = "nowhere".into();
        assert_field(
            &adm.put_static(put(bad)).await.unwrap_err(),
            "instance.address",
        );
        let mut bad = instance(GRPCLB_SERVICE, "s", 90, 1);
        bad.token = "two words".into();
        assert_field(
            &adm.put_static(put(bad)).await.unwrap_err(),
            "instance.token",
        );
        let mut bad = instance(GRPCLB_SERVICE, "s", 90, 1);
        bad.token = "lb-drop".into();
        assert_field(
            &adm.put_static(put(bad)).await.unwrap_err(),
            "instance.token",
        );
        // Nothing half-written: the service does not exist.
        assert_eq!(
            adm.get_service(lb_proto::v1::GetServiceRequest {
                service: GRPCLB_SERVICE.into()
            })
            .await
            .unwrap_err()
            .code(),
            Code::NotFound
        );
        adm.put_static(put(instance(GRPCLB_SERVICE, "s", 90, 2)))
            .await
            .unwrap();
        // Update: a new address and weight.
        let s = adm
            .put_static(put(instance(GRPCLB_SERVICE, "s", 91, 3)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!((s.address.as_str(), s.static_weight), ("127.0.0.1:91", 3));
        // A backend cannot take the id; remove-static refuses a backend's instance.
        let refused = registry(d.addr)
            .await
            .register(lease(instance(GRPCLB_SERVICE, "s", 91, 3), 60_000))
            .await
            .unwrap_err();
        assert_status(&refused, Code::FailedPrecondition, "static instance");
        // A backend's instance (a stream: a lease would outlive the restart
        // below for its TTL).
        let _backend = attach(d.addr, instance(GRPCLB_SERVICE, "streamed", 92, 1), 0).await;
        let refused = adm
            .remove_static(lb_proto::v1::RemoveStaticRequest {
                service: GRPCLB_SERVICE.into(),
                instance_id: "streamed".into(),
            })
            .await
            .unwrap_err();
        assert_status(
            &refused,
            Code::FailedPrecondition,
            "registered by a backend",
        );
        d.stop().await;
    }
    // After a restart with a short grace, the streamed instance is gone
    // once the grace ends; the static one stays, still static.
    let d = Daemon::start(dir.path(), |c| c.restore_grace = Duration::from_millis(300)).await;
    let mut list_stream = subscribe(d.addr, GRPCLB_SERVICE).await;
    let list = next_list_where(&mut list_stream, WAIT, |l| ids(l) == ["s"]).await;
    assert_eq!(shares(&list, "s"), list.order.len());
    let mut adm = admin(d.addr).await;
    let st = adm
        .get_service(lb_proto::v1::GetServiceRequest {
            service: GRPCLB_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let s = st.instances.iter().find(|i| i.instance_id == "s").unwrap();
    assert_eq!(
        (s.attachment.as_str(), s.address.as_str()),
        ("static", "127.0.0.1:91")
    );
    let r = adm
        .remove_static(lb_proto::v1::RemoveStaticRequest {
            service: GRPCLB_SERVICE.into(),
            instance_id: "s".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.existed);
    next_list_where(&mut list_stream, WAIT, |l| l.servers.is_empty()).await;
    drop(list_stream);
    d.stop().await;
}
