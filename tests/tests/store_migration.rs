//! A data directory written by an earlier lb-server still opens: the real
//! daemon binary starts on `tests/fixtures/store-v1.tar.gz` (the first store
//! layout, written and then killed with -9 by the daemon of commit 14429aa;
//! `tests/fixtures/make-store-v1.sh` shows how) and serves everything that
//! daemon had acknowledged: registrations, a static instance, policies with
//! their parameters, a weight override, a drain, routing rules in order and
//! cluster modes. It then restarts on the same directory, which must still
//! hold all of it.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use lb_proto::v1::{self as pb, admin_client::AdminClient};
use lb_tests::harness::Daemon;

/// The list version the old daemon had published: versions after a restart
/// must be above it (the generation counter carried over).
const OLD_VERSION: u64 = 4_294_967_307;

fn unpack(into: &Path) {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/store-v1.tar.gz");
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&fixture)
        .arg("-C")
        .arg(into)
        .status()
        .expect("tar runs");
    assert!(status.success(), "cannot unpack {}", fixture.display());
}

async fn service(addr: &str, name: &str) -> pb::ServiceStatus {
    let mut admin = AdminClient::connect(format!("http://{addr}"))
        .await
        .expect("admin connects");
    admin
        .get_service(pb::GetServiceRequest {
            service: name.into(),
        })
        .await
        .unwrap_or_else(|e| panic!("get {name}: {e}"))
        .into_inner()
}

fn labels(kv: &[(&str, &str)]) -> std::collections::HashMap<String, String> {
    kv.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// Everything the old daemon acknowledged, as the admin API shows it.
fn check(shop: &pb::ServiceStatus, other: &pb::ServiceStatus) {
    let policy = shop.policy.as_ref().expect("policy");
    assert_eq!(policy.name, "consistent_hash");
    assert_eq!(policy.params["algorithm"], "ring");
    assert_eq!(policy.params["load_bound"], "1.5");
    assert_eq!(policy.params["eject_consecutive"], "3");
    assert!(shop.version > OLD_VERSION, "version {}", shop.version);

    let by_id: BTreeMap<&str, &pb::InstanceStatus> = shop
        .instances
        .iter()
        .map(|i| (i.instance_id.as_str(), i))
        .collect();
    assert_eq!(
        by_id.keys().copied().collect::<Vec<_>>(),
        ["b1", "b2", "legacy-1"]
    );
    let b1 = by_id["b1"];
    assert_eq!(b1.attachment, "restored");
    assert_eq!((b1.zone.as_str(), b1.static_weight), ("z1", 3));
    assert_eq!(b1.labels, labels(&[("group", "A"), ("pool", "main")]));
    assert_eq!((b1.weight_override, b1.drained), (7, false));
    let b2 = by_id["b2"];
    assert_eq!((b2.zone.as_str(), b2.drained), ("z2", true));
    assert_eq!(b2.labels, labels(&[("group", "B")]));
    assert_eq!(b2.share, 0.0, "a drained instance is in no list");
    let legacy = by_id["legacy-1"];
    assert_eq!(legacy.attachment, "static");
    assert_eq!(legacy.address, "10.0.0.7:50051");
    assert_eq!(
        (legacy.static_weight, legacy.token.as_str()),
        (2, "tok-legacy")
    );
    assert_eq!(legacy.labels, labels(&[("dc", "old")]));

    let rules: Vec<&pb::Rule> = shop.rules.iter().filter_map(|r| r.rule.as_ref()).collect();
    assert_eq!(rules.len(), 2);
    assert_eq!(
        (rules[0].name.as_str(), rules[0].when_client_id.as_str()),
        ("debug", "alice")
    );
    assert_eq!((rules[0].instance.as_str(), rules[0].strict), ("b1", true));
    assert_eq!(rules[1].name, "ab");
    assert_eq!(rules[1].when_request, labels(&[("group", "B")]));
    assert_eq!(rules[1].select, labels(&[("group", "B")]));
    assert!(rules[1].exclusive && !rules[1].strict);

    use pb::cluster_mode::{Collect, Kind};
    let cluster = shop.cluster.as_ref().expect("cluster");
    let default = cluster.default_mode.as_ref().expect("default mode");
    assert_eq!(default.kind, Kind::Failover as i32);
    assert_eq!((default.attempts, default.backoff_ms), (4, 20));
    assert_eq!(default.retry_on, ["UNAVAILABLE", "DEADLINE_EXCEEDED"]);
    assert_eq!(cluster.budget_percent, Some(30));
    let get_price = &cluster.methods["/shop.v1.Shop/GetPrice"];
    assert_eq!((get_price.kind, get_price.forks), (Kind::Forking as i32, 2));
    let refresh = &cluster.methods["/shop.v1.Shop/Refresh"];
    assert_eq!(refresh.kind, Kind::Multicast as i32);
    assert_eq!(
        (
            refresh.route.as_str(),
            refresh.collect,
            refresh.max_failure_percent
        ),
        ("ab", Collect::All as i32, 25)
    );

    let policy = other.policy.as_ref().expect("policy");
    assert_eq!(policy.name, "weighted_round_robin");
    assert_eq!(policy.params["shed_floor"], "0.1");
    assert_eq!(policy.params["slow_start_window"], "30s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_of_the_first_store_layout_opens_with_everything_in_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    unpack(tmp.path());
    let data = tmp.path().join("lb-data");
    // Restored registrations stay listed for the whole test.
    let flags = ["--restore-grace", "1h"];
    let mut d = Daemon::start(&data, "127.0.0.1:0", &flags).expect("daemon starts");
    let (shop, other) = (
        service(&d.addr(), "shop").await,
        service(&d.addr(), "other").await,
    );
    check(&shop, &other);

    // Once more after a crash: the directory as this daemon left it.
    d.proc.kill9();
    let d = Daemon::start(&data, "127.0.0.1:0", &flags).expect("daemon restarts");
    let again = service(&d.addr(), "shop").await;
    check(&again, &service(&d.addr(), "other").await);
    assert!(again.version > shop.version);
}
