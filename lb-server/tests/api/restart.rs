//! Registrations across a daemon restart: listed at once, kept for the
//! grace period, kept for good when their backend re-registers.

use std::path::Path;

use crate::common::*;

/// Registers p1..p3 (weights 1, 2, 3) over streams, checks they are listed,
/// stops the daemon and checks every stream ends with UNAVAILABLE. Returns
/// the highest list version seen.
async fn register_three_and_stop(dir: &Path) -> u64 {
    let d = Daemon::start(dir, |_| {}).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let mut backends = Vec::new();
    for (n, port) in [(1u32, 7001u16), (2, 7002), (3, 7003)] {
        backends.push(attach(d.addr, instance(SERVICE, &format!("p{n}"), port, n), 0).await);
    }
    let before = next_list_where(&mut sub, WAIT, |l| l.servers.len() == 3).await;
    assert_eq!(ids(&before), ["p1", "p2", "p3"]);

    let stopping = tokio::spawn(d.stop());
    for b in &mut backends {
        assert_status(
            &stream_error(&mut b.stream).await,
            Code::Unavailable,
            "shutting down",
        );
    }
    assert_eq!(subscription_error(&mut sub).await.code(), Code::Unavailable);
    stopping.await.unwrap();
    before.version
}

/// 10. Registrations survive a graceful restart, are listed at once with a
///     higher version, and leave after the grace unless their backends return.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_survive_a_restart_for_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    let before = register_three_and_stop(dir.path()).await;

    let d = Daemon::start(dir.path(), |c| c.restore_grace = Duration::from_secs(1)).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    let list = next_list(&mut sub).await;
    assert_well_formed(&list);
    assert_eq!(ids(&list), ["p1", "p2", "p3"]);
    let addrs: Vec<&str> = list.servers.iter().map(|s| s.address.as_str()).collect();
    assert_eq!(
        addrs,
        ["127.0.0.1:7001", "127.0.0.1:7002", "127.0.0.1:7003"]
    );
    assert_eq!(
        (
            shares(&list, "p1"),
            shares(&list, "p2"),
            shares(&list, "p3")
        ),
        (1, 2, 3)
    );
    assert!(list.version > before, "{} <= {before}", list.version);

    let gone = next_list_where(&mut sub, WAIT, |l| l.servers.is_empty()).await;
    assert!(gone.order.is_empty());
    assert!(gone.version > list.version);
    drop(sub);
    d.stop().await;
}

/// 10b. After a restart, a backend that re-registers within the grace stays;
///      the others leave when the grace ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reattached_backend_outlives_the_grace() {
    let dir = tempfile::tempdir().unwrap();
    register_three_and_stop(dir.path()).await;

    let d = Daemon::start(dir.path(), |c| {
        c.restore_grace = Duration::from_millis(1500)
    })
    .await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    assert_eq!(ids(&next_list(&mut sub).await), ["p1", "p2", "p3"]);
    let _p2 = attach(d.addr, instance(SERVICE, "p2", 7002, 2), 0).await;
    let list = next_list_where(&mut sub, WAIT, |l| l.servers.len() < 3).await;
    assert_eq!(ids(&list), ["p2"]);
    assert_eq!(list.servers[0].address, "127.0.0.1:7002");
    assert_eq!(list.order, [0]);
    drop(sub);
    d.stop().await;
}

/// 10c. A lease outlives a restart for its TTL, not only the grace: a
///      streamed instance leaves when the grace ends, a leased one stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_keeps_its_ttl_across_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut reg = registry(d.addr).await;
    reg.register(lease(instance(SERVICE, "leased", 7010, 1), 3_600_000))
        .await
        .expect("a one-hour lease");
    let streamed = attach(d.addr, instance(SERVICE, "streamed", 7011, 1), 0).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    next_list_where(&mut sub, WAIT, |l| l.servers.len() == 2).await;
    drop((sub, reg));
    d.stop().await;
    drop(streamed);

    let d = Daemon::start(dir.path(), |c| c.restore_grace = Duration::from_millis(300)).await;
    let mut sub = subscribe(d.addr, SERVICE).await;
    assert_eq!(ids(&next_list(&mut sub).await), ["leased", "streamed"]);
    // The grace ends: the stream's instance goes, the lease's stays.
    let after = next_list_where(&mut sub, WAIT, |l| l.servers.len() < 2).await;
    assert_eq!(ids(&after), ["leased"]);
    drop(sub);
    d.stop().await;
}
