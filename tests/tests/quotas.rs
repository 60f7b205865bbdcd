//! Quotas, with the real daemon: each refuses the change that would exceed
//! it with `resource_exhausted` naming the quota, its limit and the service;
//! renewals at the limit pass; refusals are counted in `/metrics`; and
//! nothing refused reaches the store (the daemon is killed and restarted on
//! its data, and what it restores is what was acknowledged).

use std::collections::HashMap;
use std::path::Path;

use lb_proto::v1::{self as pb, admin_client::AdminClient, registry_client::RegistryClient};
use lb_tests::harness::{sample, scrape, Daemon};
use prost::Message;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Small quotas, so each is reached in a few calls.
const SMALL: [&str; 14] = [
    "--max-instances-per-service",
    "3",
    "--max-instances",
    "4",
    "--max-labels",
    "2",
    "--max-label-bytes",
    "16",
    "--max-rules",
    "1",
    "--max-retry-on",
    "2",
    "--metrics-listen",
    "127.0.0.1:0",
];

fn instance(service: &str, id: &str, labels: &[(&str, &str)]) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        instance_id: id.into(),
        address: "10.0.0.1:8080".into(),
        weight: 1,
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<HashMap<_, _>>(),
        ..Default::default()
    }
}

async fn lease(reg: &mut RegistryClient<Channel>, i: pb::Instance) -> Result<(), Status> {
    reg.register(pb::RegisterRequest {
        instance: Some(i),
        ttl_ms: 3_600_000,
    })
    .await
    .map(drop)
}

/// Asserts `r` is the refusal of `quota` (limit `limit`, flag `flag`) in
/// `service`.
fn refused<T: std::fmt::Debug>(r: Result<T, Status>, quota: &str, limit: &str, service: &str) {
    let s = r.expect_err("refused");
    assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
    let m = s.message();
    eprintln!("refused: {m}");
    let head = format!("quota {quota} exceeded in service {service:?}: ");
    assert!(m.starts_with(&head), "{m}");
    let flag = format!("--max-{}", quota.replace('_', "-"));
    assert!(
        m.ends_with(&format!("; the limit is {limit} (lb-server {flag})")),
        "{m}"
    );
}

async fn clients(d: &Daemon) -> (RegistryClient<Channel>, AdminClient<Channel>) {
    let url = format!("http://{}", d.addr());
    let reg = RegistryClient::connect(url.clone())
        .await
        .expect("registry");
    let admin = AdminClient::connect(url).await.expect("admin");
    (reg, admin)
}

async fn status(admin: &mut AdminClient<Channel>, service: &str) -> pb::ServiceStatus {
    admin
        .get_service(pb::GetServiceRequest {
            service: service.into(),
        })
        .await
        .expect("GetService answers")
        .into_inner()
}

/// Instance ids and labels of a service, sorted.
fn instances(s: &pb::ServiceStatus) -> Vec<(String, Vec<(String, String)>)> {
    let mut out: Vec<_> = s
        .instances
        .iter()
        .map(|i| {
            let mut labels: Vec<_> = i.labels.clone().into_iter().collect();
            labels.sort();
            (i.instance_id.clone(), labels)
        })
        .collect();
    out.sort();
    out
}

fn failover(retry_on: Vec<String>) -> pb::SetClusterRequest {
    pb::SetClusterRequest {
        service: "alpha".into(),
        cluster: Some(pb::ClusterConfig {
            default_mode: Some(pb::ClusterMode {
                attempts: 2,
                retry_on,
                ..Default::default()
            }),
            ..Default::default()
        }),
        create: true,
        ..Default::default()
    }
}

fn rule(name: &str) -> pb::PutRuleRequest {
    pb::PutRuleRequest {
        service: "alpha".into(),
        rule: Some(pb::Rule {
            name: name.into(),
            when_request: [("group".to_string(), name.to_string())].into(),
            select: [("track".to_string(), "canary".to_string())].into(),
            ..Default::default()
        }),
        position: None,
        create: true,
    }
}

fn restart(d: Daemon, data: &Path) -> Daemon {
    let mut d = d;
    d.proc.kill9();
    drop(d);
    Daemon::start(
        data,
        "127.0.0.1:0",
        &[&SMALL[..], &["--restore-grace", "1h"]].concat(),
    )
    .expect("restart")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_quota_refuses_with_resource_exhausted_and_nothing_refused_is_stored() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let d = Daemon::start(&data, "127.0.0.1:0", &SMALL).expect("daemon");
    let (mut reg, mut admin) = clients(&d).await;

    // Instances per service: three pass, the fourth is refused; at the
    // limit, the three still renew.
    for id in ["a1", "a2", "a3"] {
        lease(&mut reg, instance("alpha", id, &[])).await.expect(id);
    }
    let r = lease(&mut reg, instance("alpha", "a4", &[])).await;
    refused(r, "instances_per_service", "3", "alpha");
    lease(&mut reg, instance("alpha", "a1", &[]))
        .await
        .expect("a renewal at the limit");

    // Instances in all services: the fourth passes, the fifth is refused.
    lease(&mut reg, instance("beta", "b1", &[]))
        .await
        .expect("b1");
    let r = lease(&mut reg, instance("beta", "b2", &[])).await;
    refused(r, "instances", "4", "beta");

    // Labels: two pass, three are refused; so is a label of 17 bytes. The
    // instance keeps what it had.
    let two = [("app", "shop"), ("track", "stable")];
    lease(&mut reg, instance("alpha", "a2", &two))
        .await
        .expect("two labels");
    let three = [("app", "shop"), ("track", "stable"), ("pool", "main")];
    let r = lease(&mut reg, instance("alpha", "a2", &three)).await;
    refused(r, "labels", "2", "alpha");
    let long = [("app", "shop"), ("track", "stable-canary")];
    let r = lease(&mut reg, instance("alpha", "a2", &long)).await;
    refused(r, "label_bytes", "16 bytes", "alpha");
    // The attacker's shape (64 labels of 255 bytes) is within the hard
    // limits and refused by the quota.
    let wide: Vec<(String, String)> = (0..64)
        .map(|k| (format!("k{k:02}"), "v".repeat(252)))
        .collect();
    let wide: Vec<(&str, &str)> = wide.iter().map(|(k, v)| (&**k, &**v)).collect();
    let r = lease(&mut reg, instance("alpha", "a3", &wide)).await;
    refused(r, "labels", "2", "alpha");

    // retry_on: two entries pass, three are refused, and so is a list of
    // 50,000 (650 KB, under --max-message-size), before any name is read.
    let codes = |n: usize| vec!["UNAVAILABLE".to_string(); n];
    admin
        .set_cluster(failover(vec!["UNAVAILABLE".into(), "INTERNAL".into()]))
        .await
        .expect("two codes");
    let r = admin.set_cluster(failover(codes(3))).await;
    refused(r, "retry_on", "2", "alpha");
    let r = admin.set_cluster(failover(codes(50_000))).await;
    refused(r, "retry_on", "2", "alpha");

    // Rules: one passes, a second is refused.
    admin.put_rule(rule("canary")).await.expect("one rule");
    let r = admin.put_rule(rule("beta")).await;
    refused(r, "rules", "1", "alpha");

    // Each refusal is counted once, under its quota.
    let page = scrape(&d);
    for (quota, n) in [
        ("instances_per_service", 1.0),
        ("instances", 1.0),
        ("labels", 2.0),
        ("label_bytes", 1.0),
        ("retry_on", 2.0),
        ("rules", 1.0),
        ("list_bytes", 0.0),
    ] {
        let name = format!("lb_quota_refused_total{{quota=\"{quota}\"}}");
        assert_eq!(sample(&page, &name), Some(n), "{name}\n{page}");
    }

    // Killed and restarted on its data: what was acknowledged, and nothing
    // that was refused.
    let want_alpha = instances(&status(&mut admin, "alpha").await);
    let d = restart(d, &data);
    let (_, mut admin) = clients(&d).await;
    let alpha = status(&mut admin, "alpha").await;
    assert_eq!(instances(&alpha), want_alpha);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        instances(&alpha),
        [
            (String::from("a1"), vec![]),
            (
                "a2".into(),
                vec![
                    ("app".into(), "shop".into()),
                    ("track".into(), "stable".into())
                ]
            ),
            ("a3".into(), vec![]),
        ]
    );
    let beta = status(&mut admin, "beta").await;
    assert_eq!(instances(&beta), [("b1".to_string(), vec![])]);
    let rules: Vec<&str> = alpha
        .rules
        .iter()
        .filter_map(|r| r.rule.as_ref().map(|r| r.name.as_str()))
        .collect();
    assert_eq!(rules, ["canary"]);
    let retry_on = alpha
        .cluster
        .and_then(|c| c.default_mode)
        .map(|m| m.retry_on)
        .unwrap_or_default();
    assert_eq!(retry_on, strings(&["UNAVAILABLE", "INTERNAL"]));
    // The counters start again at zero.
    let page = scrape(&d);
    assert_eq!(
        sample(&page, "lb_quota_refused_total{quota=\"labels\"}"),
        Some(0.0),
        "{page}"
    );
}

/// An instance with 16 labels of 250 bytes (key and value).
fn heavy(n: usize) -> pb::Instance {
    let labels: Vec<(String, String)> = (0..16)
        .map(|k| (format!("k{k:02}"), "v".repeat(247)))
        .collect();
    let labels: Vec<(&str, &str)> = labels.iter().map(|(k, v)| (&**k, &**v)).collect();
    pb::Instance {
        address: format!("10.0.{}.{}:8080", n / 250, n % 250 + 1),
        ..instance("wide", &format!("w{n:04}"), &labels)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_list_quota_bounds_what_one_service_answers() {
    const LIMIT: usize = 64 << 10;
    let tmp = tempfile::tempdir().expect("tempdir");
    let data = tmp.path().join("data");
    let flags = [
        "--max-list-bytes",
        "64KiB",
        "--max-list-len",
        "16",
        "--max-labels",
        "64",
        "--max-label-bytes",
        "318",
        "--metrics-listen",
        "127.0.0.1:0",
    ];
    let d = Daemon::start(&data, "127.0.0.1:0", &flags).expect("daemon");
    let (mut reg, mut admin) = clients(&d).await;

    // Register until the list quota refuses one.
    let mut acked = 0;
    let refusal = loop {
        assert!(acked < 200, "never refused");
        match lease(&mut reg, heavy(acked)).await {
            Ok(()) => acked += 1,
            Err(s) => break s,
        }
    };
    refused(
        Err::<(), _>(refusal.clone()),
        "list_bytes",
        "65536 bytes",
        "wide",
    );
    assert!(
        refusal
            .message()
            .contains("its GetService answer would take about"),
        "{refusal:?}"
    );
    // Each instance takes ~4.3 KB of the answer.
    assert!((12..=15).contains(&acked), "{acked} accepted");
    // The answer is under the limit, and not far under it.
    let wide = status(&mut admin, "wide").await;
    assert_eq!(wide.instances.len(), acked);
    let len = wide.encoded_len();
    eprintln!("list quota 64 KiB: {acked} instances accepted, GetService answers {len} bytes");
    assert!(
        (LIMIT * 3 / 4..=LIMIT).contains(&len),
        "GetService answers {len} bytes"
    );
    // A policy whose lists would outgrow the quota is refused too, and the
    // service keeps its own.
    let r = admin
        .set_policy(pb::SetPolicyRequest {
            service: "wide".into(),
            policy: Some(pb::Policy {
                name: "round_robin".into(),
                params: [("max_list_len".to_string(), "65536".to_string())].into(),
            }),
            ..Default::default()
        })
        .await;
    refused(r, "list_bytes", "65536 bytes", "wide");
    let page = scrape(&d);
    assert_eq!(
        sample(&page, "lb_quota_refused_total{quota=\"list_bytes\"}"),
        Some(2.0),
        "{page}"
    );

    // Nothing refused was stored.
    let mut d = d;
    d.proc.kill9();
    drop(d);
    let d = Daemon::start(
        &data,
        "127.0.0.1:0",
        &[&flags[..], &["--restore-grace", "1h"]].concat(),
    )
    .expect("restart");
    let (_, mut admin) = clients(&d).await;
    let wide = status(&mut admin, "wide").await;
    assert_eq!(wide.instances.len(), acked);
    let policy = wide.policy.expect("a policy");
    assert_ne!(
        policy.params.get("max_list_len").map(String::as_str),
        Some("65536"),
        "{policy:?}"
    );
}
