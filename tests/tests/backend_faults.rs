//! Backends that freeze, die or dawdle under a generated tonic client on
//! `Subscription::channel()`: the real `lb-server`, `echo-backend`
//! processes (frozen with SIGSTOP, killed with SIGKILL), cluster modes and
//! deadlines set with `lb-server ctl`, and lb-client in this process.
//!
//! A stopped process is always resumed or killed: `Proc`'s drop sends
//! SIGKILL, which ends a stopped process too, so a failing test leaves none
//! behind.

use std::time::Duration;

use lb_client::{ChannelOptions, Subscription};
use lb_proto::v1 as pb;
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::{CallsRequest, EchoRequest, WhoamiRequest};
use lb_tests::harness::{ctl, set, wait_ids, BackendSpec, Cluster, WAIT};
use tonic::Code;

/// Longer than any bound below: reaching it means a call hung.
const HANG: Duration = Duration::from_secs(60);

/// How many calls the backend at `addr` has received (its own count).
async fn calls(addr: &str) -> u64 {
    EchoClient::connect(format!("http://{addr}"))
        .await
        .expect("connect to the backend")
        .calls(CallsRequest {})
        .await
        .expect("Calls")
        .into_inner()
        .calls
}

/// `id` at `addr` in `service` as a static instance: it stays in the list
/// when its process dies (the daemon hears of that only from clients'
/// reports, and one client is too few to eject it).
fn put_static(c: &Cluster, service: &str, id: &str, addr: &str) {
    ctl(
        &c.daemon.addr(),
        &["put-static", service, id, addr, "--create"],
    )
    .expect("put-static");
}

/// A backend that registers in another service (so only `put_static`
/// brings it into "echo").
fn outsider(id: &str) -> BackendSpec {
    BackendSpec::new("elsewhere", id, 1)
}

fn whoami_with_timeout(t: Duration) -> tonic::Request<WhoamiRequest> {
    let mut r = tonic::Request::new(WhoamiRequest {});
    r.set_timeout(t);
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_ends_in_flight_calls_at_the_deadline() {
    let c = Cluster::start(&[], &[BackendSpec::new("echo", "b1", 1)]);
    let addr = c.backends["b1"].addr.to_string();
    let out = ctl(
        &c.daemon.addr(),
        &[
            "set-cluster",
            "echo",
            "failover",
            "--deadline",
            "2s",
            "--create",
        ],
    )
    .expect("set-cluster --deadline");
    assert!(
        out.lines()
            .any(|l| l.contains("deadline") && l.contains("2s")),
        "{out}"
    );
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1"])).await;
    sub.wait_for(WAIT, |l| {
        l.settings().deadline == Some(Duration::from_secs(2))
    })
    .await
    .expect("the default deadline reaches the client");
    let mut client = EchoClient::new(sub.channel());
    client.whoami(WhoamiRequest {}).await.expect("warm-up call");

    let b1 = &c.backends["b1"];
    b1.stop().expect("SIGSTOP");
    // In flight on a frozen backend: the service's default deadline ends it.
    let status = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
        .await
        .expect("the call hung")
        .expect_err("a frozen backend cannot answer");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status
            .message()
            .contains("the service's default deadline, 2000ms"),
        "{status:?}"
    );
    assert!(status.message().contains(&addr), "{status:?}");
    // A caller's own deadline wins over the default.
    let status = tokio::time::timeout(
        HANG,
        client.whoami(whoami_with_timeout(Duration::from_millis(300))),
    )
    .await
    .expect("the call hung")
    .expect_err("still frozen");
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    assert!(
        status.message().contains("the caller's deadline, 300ms"),
        "{status:?}"
    );
    b1.cont().expect("SIGCONT");
    // Resumed, it answers again.
    let r = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
        .await
        .expect("the call hung");
    assert_eq!(r.expect("answered").into_inner().instance_id, "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_backend_fails_in_flight_calls_by_keepalive() {
    let c = Cluster::start(&[], &[BackendSpec::new("echo", "b1", 1)]);
    let addr = c.backends["b1"].addr.to_string();
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1"])).await;
    assert_eq!(
        sub.current().settings().deadline,
        None,
        "no default deadline"
    );
    // Keep-alive alone, tightened so the test is short: a PING after 1 s
    // without a frame, the connection closed 1 s later without a PONG.
    let options = ChannelOptions {
        keepalive_interval: Some(Duration::from_secs(1)),
        keepalive_timeout: Duration::from_secs(1),
        ..ChannelOptions::default()
    };
    let mut client = EchoClient::new(sub.channel_with(options));
    client.whoami(WhoamiRequest {}).await.expect("warm-up call");

    let b1 = &c.backends["b1"];
    b1.stop().expect("SIGSTOP");
    let status = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
        .await
        .expect("the call hung: keep-alive did not notice the frozen backend")
        .expect_err("a frozen backend cannot answer");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with(&format!("backend {addr}: ")),
        "{status:?}"
    );
    assert!(status.message().contains("keep-alive"), "{status:?}");
    b1.cont().expect("SIGCONT");
    // The channel reconnects to the resumed backend.
    let r = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
        .await
        .expect("the call hung");
    assert_eq!(r.expect("answered").into_inner().instance_id, "b1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_fails_calls_with_unavailable() {
    let mut b = outsider("b1");
    b.extra = vec!["--delay-ms".into(), "60000".into()];
    let mut c = Cluster::start(&[], &[b]);
    let addr = c.backends["b1"].addr.to_string();
    put_static(&c, "echo", "b1", &addr);
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["b1"])).await;
    let mut client = EchoClient::new(sub.channel());

    // A call in flight (the backend holds it) when the backend is killed.
    let in_flight = tokio::spawn({
        let mut client = client.clone();
        async move { client.whoami(WhoamiRequest {}).await }
    });
    assert!(
        eventually(WAIT, || async { calls(&addr).await >= 1 }).await,
        "the call reached the backend"
    );
    c.backends.get_mut("b1").expect("b1").kill9();
    let status = tokio::time::timeout(HANG, in_flight)
        .await
        .expect("the call hung")
        .expect("task")
        .expect_err("its backend died");
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status.message().starts_with(&format!("backend {addr}: ")),
        "{status:?}"
    );

    // Later calls find nothing listening, once the channel has seen its
    // connection close (a call sent on it meanwhile is cancelled by the
    // closing connection: UNAVAILABLE too).
    let mut refused = false;
    for _ in 0..10 {
        let status = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
            .await
            .expect("the call hung")
            .expect_err("nothing listens");
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(
            status.message().starts_with(&format!("backend {addr}: ")),
            "{status:?}"
        );
        if status.message().contains("Connection refused") {
            refused = true;
            break;
        }
    }
    assert!(refused, "no call was refused by the dead backend's port");
}

/// Polls `cond` until it holds or `timeout` passes; returns whether it
/// held (`wait_until` for a condition that must ask over the network).
async fn eventually<F, Fut>(timeout: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Failed calls the daemon has heard of for `instance` of "echo" (from
/// this process's client stats).
async fn failures_reported(c: &Cluster, instance: &str) -> u64 {
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{}", c.daemon.addr()))
        .await
        .expect("connect to the daemon");
    let s = admin
        .get_service(pb::GetServiceRequest {
            service: "echo".into(),
        })
        .await
        .expect("get")
        .into_inner();
    s.instances
        .iter()
        .find(|i| i.instance_id == instance)
        .map_or(0, |i| i.calls_failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failover_through_the_channel_hides_a_killed_backend() {
    let mut c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[BackendSpec::new("echo", "a", 1), outsider("d")],
    );
    let d_addr = c.backends["d"].addr.to_string();
    put_static(&c, "echo", "d", &d_addr);
    ctl(&c.daemon.addr(), &["set-cluster", "echo", "failover"]).expect("set-cluster");
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["a", "d"])).await;
    let mut client = EchoClient::new(sub.channel());
    let (mut a, mut d) = (0, 0);
    for _ in 0..10 {
        match client.whoami(WhoamiRequest {}).await {
            Ok(r) if r.get_ref().instance_id == "a" => a += 1,
            Ok(_) => d += 1,
            Err(e) => panic!("before the kill: {e:?}"),
        }
    }
    assert!(a > 0 && d > 0, "both answer: a {a}, d {d}");

    c.backends.get_mut("d").expect("d").kill9();
    for i in 0..20 {
        let r = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
            .await
            .expect("the call hung");
        match r {
            Ok(r) => assert_eq!(r.into_inner().instance_id, "a", "call {i}"),
            Err(e) => panic!("call {i} failed though a is up: {e:?}"),
        }
    }
    // The dead backend was tried (and failed over): the client's stats
    // reached the daemon.
    assert!(
        eventually(WAIT, || async { failures_reported(&c, "d").await > 0 }).await,
        "the daemon heard of no failed attempt on d"
    );

    // Under failfast the same channel makes one attempt: the dead
    // backend's calls fail, as UNAVAILABLE naming it.
    ctl(&c.daemon.addr(), &["set-cluster", "echo", "failfast"]).expect("failfast");
    sub.wait_for(WAIT, |l| {
        *l.settings().mode_for("/lb.example.v1.Echo/Whoami") == lb_client::Mode::Failfast
    })
    .await
    .expect("failfast reaches the client");
    let mut failed = 0;
    for _ in 0..4 {
        if let Err(s) = client.whoami(WhoamiRequest {}).await {
            assert_eq!(s.code(), Code::Unavailable, "{s:?}");
            assert!(s.message().contains(&d_addr), "{s:?}");
            failed += 1;
        }
    }
    assert!(failed > 0, "round robin reached d under failfast");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hedging_through_the_channel_answers_from_the_fast_backend() {
    let mut slow = BackendSpec::new("echo", "slow", 1);
    slow.extra = vec!["--delay-ms".into(), "60000".into()];
    let c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[slow, BackendSpec::new("echo", "fast", 1)],
    );
    let slow_addr = c.backends["slow"].addr.to_string();
    ctl(
        &c.daemon.addr(),
        &["set-cluster", "echo", "forking", "--forks", "2", "--create"],
    )
    .expect("set-cluster forking");
    let sub = c.client("echo").await;
    wait_ids(&sub, &set(&["slow", "fast"])).await;
    sub.wait_for(WAIT, |l| {
        *l.settings().mode_for("/lb.example.v1.Echo/Whoami")
            == lb_client::Mode::Forking { forks: 2 }
    })
    .await
    .expect("forking reaches the client");
    let mut client = EchoClient::new(sub.channel());
    // Round robin makes "slow" the first pick of every other call; the
    // hedge on "fast" answers each of them.
    for i in 0..6 {
        let r = tokio::time::timeout(HANG, client.whoami(WhoamiRequest {}))
            .await
            .expect("the call hung: no hedge answered it");
        assert_eq!(
            r.expect("answered").into_inner().instance_id,
            "fast",
            "call {i}"
        );
    }
    // And the slow backend did get its attempts.
    assert!(
        eventually(WAIT, || async { calls(&slow_addr).await >= 1 }).await,
        "no attempt reached the slow backend"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streaming_and_oversize_requests_make_one_attempt() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fault = dir.path().join("fail");
    let failing = |id: &str| {
        let mut b = BackendSpec::new("echo", id, 1);
        b.extra = vec!["--fail-while".into(), fault.display().to_string()];
        b
    };
    let c = Cluster::start(
        &["--default-policy", "round_robin"],
        &[failing("b1"), failing("b2")],
    );
    let addrs: Vec<String> = ["b1", "b2"]
        .iter()
        .map(|id| c.backends[*id].addr.to_string())
        .collect();
    ctl(
        &c.daemon.addr(),
        &[
            "set-cluster",
            "echo",
            "failover",
            "--attempts",
            "3",
            "--create",
        ],
    )
    .expect("set-cluster");
    let sub: Subscription = c.client("echo").await;
    wait_ids(&sub, &set(&["b1", "b2"])).await;
    std::fs::write(&fault, b"").expect("fault file");
    let total = || {
        let addrs = addrs.clone();
        async move {
            let mut n = 0;
            for a in &addrs {
                n += calls(a).await;
            }
            n
        }
    };
    let mut client = EchoClient::new(sub.channel());
    let payload = |n: usize| EchoRequest {
        payload: vec![7u8; n],
    };

    // Attempts a call made: the backends' counts before and after.
    macro_rules! attempts {
        ($call:expr) => {{
            let before = total().await;
            let r = tokio::time::timeout(HANG, $call)
                .await
                .expect("the call hung");
            let status = r.expect_err("every backend fails");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            total().await - before
        }};
    }

    // A small unary request is kept: failover tries the other backend.
    assert_eq!(attempts!(client.echo(payload(100))), 2);
    // Larger than the 64 KiB kept: one attempt.
    assert_eq!(attempts!(client.echo(payload(100 * 1024))), 1);
    // A client stream that has ended when the call starts is kept too.
    let ended = tokio_stream::iter(vec![payload(10), payload(10)]);
    assert_eq!(attempts!(client.collect(ended)), 2);
    // One still open is not: one attempt.
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(payload(10)).await.expect("send");
    let open = tokio_stream::wrappers::ReceiverStream::new(rx);
    assert_eq!(attempts!(client.collect(open)), 1);
    drop(tx);
}
