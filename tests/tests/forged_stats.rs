//! Forged client statistics end to end (issue 15): one client's `ClientStats`
//! alone cannot eject an instance, two clients that agree can (lb-core's
//! `evidence` rule, `stats_min_clients` = 2 by default). The real `lb-server`
//! and `echo-backend` processes; the reporters are raw `lb.v1` Subscribe
//! streams, as an attacker would open them, and an lb-client subscription
//! watches the list the other clients get.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lb_proto::v1 as pb;
use lb_tests::harness::{
    ctl, failure_stats, ids, instance_line, set, wait_ids, BackendSpec, Cluster,
};
use pb::subscribe_request::Msg;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

/// Longer than two evidence intervals (lb-core's `evidence::INTERVAL`, 2 s)
/// and a readmission-free margin: ejections last 10 s by default.
const EJECTION: Duration = Duration::from_secs(8);

/// A Subscribe stream of `service` as `client_id`: the sender for its stats,
/// and the response stream (kept open while it is held).
async fn reporter(
    daemon: &str,
    service: &str,
    client_id: &str,
) -> (
    mpsc::Sender<pb::SubscribeRequest>,
    tonic::Streaming<pb::SubscribeResponse>,
) {
    let mut client = pb::balancer_client::BalancerClient::connect(format!("http://{daemon}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::SubscribeRequest {
        msg: Some(Msg::Subscribe(pb::Subscription {
            service: service.into(),
            client: Some(pb::ClientIdentity {
                client_id: client_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    })
    .await
    .expect("subscribe");
    let mut responses = client
        .subscribe(ReceiverStream::new(rx))
        .await
        .expect("subscribed")
        .into_inner();
    // The first list: the subscription was taken in.
    responses
        .message()
        .await
        .expect("a list")
        .expect("the stream stays open");
    (tx, responses)
}

/// Sends `msg` on `tx` every 50 ms until `stop`.
fn keep_sending(
    tx: mpsc::Sender<pb::SubscribeRequest>,
    msg: pb::SubscribeRequest,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            if tx.send(msg.clone()).await.is_err() {
                return;
            }
        }
    })
}

/// `ctl get`'s line for `instance`.
fn status_line(daemon: &str, service: &str, instance: &str) -> String {
    instance_line(&ctl(daemon, &["get", service]).expect("ctl get"), instance)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_forging_client_cannot_eject_two_agreeing_clients_can() {
    let c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[
            BackendSpec::new("echo", "b1", 1),
            BackendSpec::new("echo", "b2", 1),
            BackendSpec::new("echo", "b3", 1),
            BackendSpec::new("echo", "b4", 1),
        ],
    );
    let daemon = c.daemon.addr();
    // Every instance may be ejected (no cap to hide a wrong ejection behind);
    // stats_min_clients stays at its default, 2.
    ctl(
        &daemon,
        &[
            "set-policy",
            "echo",
            "round_robin",
            "-p",
            "eject_max_percent=100",
            // Backends may not have registered yet.
            "--create",
        ],
    )
    .expect("set-policy");
    let watcher = c.client("echo").await;
    let all = set(&["b1", "b2", "b3", "b4"]);
    wait_ids(&watcher, &all).await;

    // Mallory says every call to the healthy b2 fails: 10⁹ failures in a
    // run of 10⁹, twenty times a second, for the whole test.
    let stop = Arc::new(AtomicBool::new(false));
    let (mallory, _m) = reporter(&daemon, "echo", "mallory").await;
    let forger = keep_sending(mallory, failure_stats("b2", 1_000_000_000), stop.clone());
    let taken_in = |line: &str| {
        line.split_whitespace()
            .nth(10)
            .and_then(|f| f.parse::<u64>().ok())
            .is_some_and(|n| n >= 1_000_000_000)
    };
    let wait_taken_in = lb_tests::harness::wait_until(Duration::from_secs(10), || {
        taken_in(&status_line(&daemon, "echo", "b2"))
    })
    .await;
    assert!(
        wait_taken_in,
        "the daemon counts mallory's reports (for operators)"
    );

    // Consecutive failures: alice and bob both see a run of 5 on b3, and b3
    // is ejected at once; mallory's run on b2, alone, ejects nothing.
    let (alice, _a) = reporter(&daemon, "echo", "alice").await;
    let (bob, _b) = reporter(&daemon, "echo", "bob").await;
    alice.send(failure_stats("b3", 5)).await.expect("alice");
    bob.send(failure_stats("b3", 5)).await.expect("bob");
    wait_ids(&watcher, &set(&["b1", "b2", "b4"])).await;
    let b2 = status_line(&daemon, "echo", "b2");
    assert!(!b2.contains("EJECTED"), "{b2}");

    // Failure percentage (consecutive runs off): alice and bob report b4's
    // calls failing until b4 is ejected at the end of an interval; mallory
    // reported on b2 in that interval too, and b2 stays.
    ctl(
        &daemon,
        &[
            "set-policy",
            "echo",
            "round_robin",
            "-p",
            "eject_max_percent=100",
            "-p",
            "eject_consecutive=0",
        ],
    )
    .expect("set-policy");
    let honest = [
        keep_sending(alice, failure_stats("b4", 100), stop.clone()),
        keep_sending(bob, failure_stats("b4", 100), stop.clone()),
    ];
    let expected: BTreeSet<String> = set(&["b1", "b2"]);
    let l = watcher
        .wait_for(EJECTION, |l| !ids(l).contains("b4"))
        .await
        .expect("b4 is ejected on two clients' failures");
    assert_eq!(ids(&l), expected);
    let b2 = status_line(&daemon, "echo", "b2");
    assert!(!b2.contains("EJECTED"), "{b2}");
    assert!(taken_in(&b2), "{b2}");

    stop.store(true, Ordering::Relaxed);
    forger.await.expect("forger");
    for h in honest {
        h.await.expect("honest reporter");
    }
}
