//! In-process gRPC tests of the daemon's API (`proto/lb/v1/lb.proto`).
//!
//! Each test runs its own daemon (`lb_server::run` on `127.0.0.1:0`) over its
//! own temporary data directory and talks to it with the generated clients.
//! Nothing here sleeps to synchronise: every wait is for an observable
//! condition (a list on a Subscribe stream, a status on a ReportLoad stream)
//! under a deadline.

use std::collections::HashMap;
use std::fmt::Debug;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use lb_proto::v1::{
    balancer_client::BalancerClient, registry_client::RegistryClient,
    report_load_request::Msg as BackendMsg, subscribe_request::Msg as ClientMsg, ClientIdentity,
    ClientStats, DeregisterRequest, Drain, Instance, InstanceStats, LoadReport, RegisterRequest,
    Registration, ReportLoadRequest, ReportLoadResponse, ServerList, SubscribeRequest,
    SubscribeResponse, Subscription,
};
use lb_server::{Config, ServerError};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status, Streaming};

/// The service most tests register under.
const SERVICE: &str = "echo.v1/Echo";
/// Deadline for anything that should happen "soon".
const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------ harness

/// A daemon running in this test's runtime.
struct Daemon {
    addr: SocketAddr,
    shutdown: oneshot::Sender<()>,
    task: JoinHandle<Result<(), ServerError>>,
}

impl Daemon {
    /// Starts a daemon over `dir`; `tweak` adjusts the configuration.
    async fn start(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Daemon {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut config = Config::new(dir);
        config.drain_timeout = Duration::from_secs(3);
        // These tests check exact list shapes: static weights, no load policy.
        config.default_policy = lb_core::policy::PolicyKind::WeightedRoundRobin;
        tweak(&mut config);
        let (shutdown, shutdown_rx) = oneshot::channel::<()>();
        let task = tokio::spawn(lb_server::run(listener, config, async {
            shutdown_rx.await.ok();
        }));
        Daemon {
            addr,
            shutdown,
            task,
        }
    }

    /// Stops the daemon gracefully and checks it stopped cleanly.
    async fn stop(self) {
        // The daemon may have stopped by itself (an error): the join says why.
        let _ = self.shutdown.send(());
        let r = timeout(Duration::from_secs(15), self.task)
            .await
            .expect("the daemon stops within 15 s")
            .expect("the daemon task does not panic");
        if let Err(e) = r {
            panic!("the daemon stopped with an error: {e}");
        }
    }
}

async fn registry(addr: SocketAddr) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

async fn balancer(addr: SocketAddr) -> BalancerClient<Channel> {
    BalancerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A valid instance at `127.0.0.1:{port}`.
fn instance(service: &str, id: &str, port: u16, weight: u32) -> Instance {
    Instance {
        service: service.into(),
        instance_id: id.into(),
        address: format!("127.0.0.1:{port}"),
        zone: "zone-a".into(),
        weight,
        labels: HashMap::from([("track".to_string(), "stable".to_string())]),
        version: "1.2.3".into(),
        token: String::new(),
    }
}

fn register_msg(instance: Instance, ttl_ms: u32) -> ReportLoadRequest {
    ReportLoadRequest {
        msg: Some(BackendMsg::Register(Registration {
            instance: Some(instance),
            ttl_ms,
        })),
    }
}

fn report_msg(load: LoadReport) -> ReportLoadRequest {
    ReportLoadRequest {
        msg: Some(BackendMsg::Report(load)),
    }
}

fn drain_msg() -> ReportLoadRequest {
    ReportLoadRequest {
        msg: Some(BackendMsg::Drain(Drain {})),
    }
}

/// A plausible, valid load report.
fn good_load() -> LoadReport {
    LoadReport {
        cpu_utilization: 0.4,
        active_requests: 12,
        qps: Some(250.0),
        eps: Some(0.5),
        mem_utilization: Some(0.3),
        named_metrics: HashMap::from([("queue_depth".to_string(), 3.0)]),
    }
}

fn lease(instance: Instance, ttl_ms: u32) -> RegisterRequest {
    RegisterRequest {
        instance: Some(instance),
        ttl_ms,
    }
}

/// The request sender and the response stream (or refusal) of a
/// bidirectional stream opened by `call` with `first` as its first request.
/// Keep the sender to keep the request side open; dropping it ends the stream.
type Opened<Req, Resp> = (mpsc::Sender<Req>, Result<Streaming<Resp>, Status>);

/// Opens a bidirectional stream with `call`, `first` already queued; `what`
/// names the RPC in the timeout message.
async fn open_with<Req, Resp, Fut>(
    what: &str,
    first: Req,
    call: impl FnOnce(ReceiverStream<Req>) -> Fut,
) -> Opened<Req, Resp>
where
    Fut: std::future::Future<Output = Result<tonic::Response<Streaming<Resp>>, Status>>,
{
    let (tx, rx) = mpsc::channel(16);
    tx.send(first).await.unwrap();
    let r = timeout(WAIT, call(ReceiverStream::new(rx)))
        .await
        .unwrap_or_else(|_| panic!("{what} answers within 5 s"))
        .map(|r| r.into_inner());
    (tx, r)
}

/// Opens a ReportLoad stream whose first request is `first`.
async fn open_report_stream(
    addr: SocketAddr,
    first: ReportLoadRequest,
) -> Opened<ReportLoadRequest, ReportLoadResponse> {
    let mut client = registry(addr).await;
    open_with("ReportLoad", first, |rx| async move {
        client.report_load(rx).await
    })
    .await
}

/// A backend attached through ReportLoad: the request sender, the response
/// stream, and the daemon's first response (already read).
struct Backend {
    tx: mpsc::Sender<ReportLoadRequest>,
    stream: Streaming<ReportLoadResponse>,
    hello: ReportLoadResponse,
}

/// Registers `inst` over a new ReportLoad stream and reads the first response.
async fn attach(addr: SocketAddr, inst: Instance, ttl_ms: u32) -> Backend {
    let id = inst.instance_id.clone();
    let (tx, r) = open_report_stream(addr, register_msg(inst, ttl_ms)).await;
    let mut stream = r.unwrap_or_else(|s| panic!("registering {id:?} was refused: {s:?}"));
    let hello = timeout(WAIT, stream.message())
        .await
        .expect("the first ReportLoadResponse arrives within 5 s")
        .unwrap_or_else(|s| panic!("registering {id:?} failed: {s:?}"))
        .expect("the ReportLoad stream ended before its first response");
    Backend { tx, stream, hello }
}

fn subscription(service: &str, client_id: &str) -> SubscribeRequest {
    SubscribeRequest {
        msg: Some(ClientMsg::Subscribe(Subscription {
            service: service.into(),
            client: Some(ClientIdentity {
                client_id: client_id.into(),
                zone: "zone-a".into(),
                labels: HashMap::new(),
            }),
        })),
    }
}

fn stats_msg(stats: ClientStats) -> SubscribeRequest {
    SubscribeRequest {
        msg: Some(ClientMsg::Stats(stats)),
    }
}

/// Opens a Subscribe stream whose first request is `first`; keep the sender
/// to keep the stream open and to send stats.
async fn subscribe_with(
    addr: SocketAddr,
    first: SubscribeRequest,
) -> Opened<SubscribeRequest, SubscribeResponse> {
    let mut client = balancer(addr).await;
    open_with("Subscribe", first, |rx| async move {
        client.subscribe(rx).await
    })
    .await
}

/// Subscribes to `service` with a valid identity. The request side stays
/// open for as long as the returned stream lives.
async fn subscribe(addr: SocketAddr, service: &str) -> Streaming<SubscribeResponse> {
    let outbound =
        tokio_stream::once(subscription(service, "test-client/1")).chain(tokio_stream::pending());
    timeout(WAIT, balancer(addr).await.subscribe(outbound))
        .await
        .expect("Subscribe answers within 5 s")
        .unwrap_or_else(|s| panic!("subscribing to {service:?} was refused: {s:?}"))
        .into_inner()
}

/// The first list on `stream` that satisfies `pred`, within `within`.
async fn next_list_where(
    stream: &mut Streaming<SubscribeResponse>,
    within: Duration,
    pred: impl Fn(&ServerList) -> bool,
) -> ServerList {
    let mut last = None;
    let found = timeout(within, async {
        loop {
            match stream.message().await {
                Ok(Some(SubscribeResponse {
                    list: Some(list), ..
                })) => {
                    if pred(&list) {
                        return list;
                    }
                    last = Some(list);
                }
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended; last list: {last:?}"),
                Err(s) => panic!("the subscription failed: {s:?}; last list: {last:?}"),
            }
        }
    })
    .await;
    match found {
        Ok(list) => list,
        Err(_) => panic!("no matching list within {within:?}; last list: {last:?}"),
    }
}

/// The next list on `stream`, whatever it holds.
async fn next_list(stream: &mut Streaming<SubscribeResponse>) -> ServerList {
    next_list_where(stream, WAIT, |_| true).await
}

/// The error a refused first message produced: either the call's own error
/// (trailers-only response) or the first item of its response stream.
async fn first_error<T: Debug>(r: Result<Streaming<T>, Status>) -> Status {
    match r {
        Err(s) => s,
        Ok(mut stream) => stream_error(&mut stream).await,
    }
}

/// The next item of `stream`, which must be an error.
async fn stream_error<T: Debug>(stream: &mut Streaming<T>) -> Status {
    match timeout(WAIT, stream.message())
        .await
        .expect("the stream ends within 5 s")
    {
        Err(s) => s,
        Ok(Some(m)) => panic!("expected an error, got {m:?}"),
        Ok(None) => panic!("the stream ended OK, expected an error"),
    }
}

/// The first error on a Subscribe stream, skipping any lists before it.
async fn subscription_error(stream: &mut Streaming<SubscribeResponse>) -> Status {
    timeout(WAIT, async {
        loop {
            match stream.message().await {
                Err(s) => return s,
                Ok(Some(_)) => {}
                Ok(None) => panic!("the subscription ended OK, expected an error"),
            }
        }
    })
    .await
    .expect("the subscription fails within 5 s")
}

/// `s` has `code` and its message contains `needle`.
#[track_caller]
fn assert_status(s: &Status, code: Code, needle: &str) {
    assert_eq!(s.code(), code, "unexpected status: {s:?}");
    assert!(
        s.message().contains(needle),
        "status message {:?} does not mention {needle:?}",
        s.message()
    );
}

/// `s` is INVALID_ARGUMENT naming exactly `field` (the daemon writes `field: reason`).
#[track_caller]
fn assert_field(s: &Status, field: &str) {
    assert_status(s, Code::InvalidArgument, &format!("{field}:"));
}

fn ids(list: &ServerList) -> Vec<&str> {
    list.servers
        .iter()
        .map(|s| s.instance_id.as_str())
        .collect()
}

fn has(list: &ServerList, id: &str) -> bool {
    list.servers.iter().any(|s| s.instance_id == id)
}

/// How many entries of `order` point at the server `id`.
fn shares(list: &ServerList, id: &str) -> usize {
    let i = list
        .servers
        .iter()
        .position(|s| s.instance_id == id)
        .unwrap_or_else(|| panic!("{id:?} not in {list:?}")) as u32;
    list.order.iter().filter(|&&x| x == i).count()
}

/// Every `order` index points into `servers`.
#[track_caller]
fn assert_well_formed(list: &ServerList) {
    for &i in &list.order {
        assert!(
            (i as usize) < list.servers.len(),
            "bad index {i} in {list:?}"
        );
    }
}

fn is_rotation(a: &[u32], b: &[u32]) -> bool {
    a.len() == b.len() && (a.is_empty() || (0..a.len()).any(|k| a[k..].iter().chain(&a[..k]).eq(b)))
}

// -------------------------------------------------------------------- tests

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

async fn admin(addr: SocketAddr) -> lb_proto::v1::admin_client::AdminClient<Channel> {
    lb_proto::v1::admin_client::AdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

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

async fn service_status(
    adm: &mut lb_proto::v1::admin_client::AdminClient<Channel>,
) -> lb_proto::v1::ServiceStatus {
    adm.get_service(lb_proto::v1::GetServiceRequest {
        service: SERVICE.into(),
    })
    .await
    .unwrap()
    .into_inner()
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
    let s = service_status(&mut adm).await;
    assert!((s.backlog_seconds - 0.5).abs() < 1e-9, "{s:?}");
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
        })
        .await
        .unwrap_err();
    assert_field(&s, "cluster.budget_percent");
    adm.set_cluster(set(mode(Kind::Failover, 5))).await.unwrap();
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
    let mut sub = subscribe(d.addr, SERVICE).await;
    let l = next_list(&mut sub).await;
    assert_eq!(l.routes.len(), 1);
    assert_eq!(l.cluster.unwrap().default_mode.unwrap().attempts, 5);
    drop(sub);
    d.stop().await;
}

// ------------------------------------------------------------------ grpclb

use lb_proto::grpclb::{
    load_balance_request::LoadBalanceRequestType as LbReq,
    load_balance_response::LoadBalanceResponseType as LbResp,
    load_balancer_client::LoadBalancerClient, ClientStatsPerToken, InitialLoadBalanceRequest,
    LoadBalanceRequest, LoadBalanceResponse,
};

/// The grpclb service name stock clients dial in these tests.
const GRPCLB_SERVICE: &str = "echo.test";

fn initial(name: &str) -> LoadBalanceRequest {
    LoadBalanceRequest {
        load_balance_request_type: Some(LbReq::InitialRequest(InitialLoadBalanceRequest {
            name: name.into(),
        })),
    }
}

fn grpclb_stats(stats: lb_proto::grpclb::ClientStats) -> LoadBalanceRequest {
    LoadBalanceRequest {
        load_balance_request_type: Some(LbReq::ClientStats(stats)),
    }
}

/// Opens a BalanceLoad stream whose first request is `first`; keep the
/// sender to keep the stream open and to send more.
async fn balance_load(
    addr: SocketAddr,
    first: LoadBalanceRequest,
) -> Opened<LoadBalanceRequest, LoadBalanceResponse> {
    let mut client = LoadBalancerClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    open_with("BalanceLoad", first, |rx| async move {
        client.balance_load(rx).await
    })
    .await
}

/// The next grpclb response that `pred` accepts, skipping others.
async fn next_lb_where(
    stream: &mut Streaming<LoadBalanceResponse>,
    what: &str,
    pred: impl Fn(&LbResp) -> bool,
) -> LbResp {
    timeout(WAIT, async {
        loop {
            let m = stream
                .message()
                .await
                .unwrap_or_else(|s| panic!("BalanceLoad failed while waiting for {what}: {s:?}"))
                .expect("BalanceLoad ended");
            let r = m.load_balance_response_type.expect("a response type");
            if pred(&r) {
                return r;
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no {what} within 5 s"))
}

/// The next server list whose entries satisfy `pred`.
async fn next_grpclb_list(
    stream: &mut Streaming<LoadBalanceResponse>,
    what: &str,
    pred: impl Fn(&[lb_proto::grpclb::Server]) -> bool,
) -> Vec<lb_proto::grpclb::Server> {
    match next_lb_where(
        stream,
        what,
        |r| matches!(r, LbResp::ServerList(l) if pred(&l.servers)),
    )
    .await
    {
        LbResp::ServerList(l) => l.servers,
        _ => unreachable!(),
    }
}

fn entries(list: &[lb_proto::grpclb::Server], token: &str) -> usize {
    list.iter()
        .filter(|s| s.load_balance_token == token)
        .count()
}

/// 15. grpc.lb.v1: a stock client's stream gets an initial response with the
///     stats interval, then the plan as IPs, ports and tokens (weights as
///     repeated entries, hostnames resolved, shedding as drop entries), its
///     stats reach `GetService`, and an empty service sends it to fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpclb_streams_lists_drops_stats_and_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |c| {
        c.stats_interval = Duration::from_millis(250)
    })
    .await;
    let mut reg = registry(d.addr).await;
    let mut a = instance(GRPCLB_SERVICE, "a", 81, 1);
    a.address = "127.0.0.11:81".into();
    let mut b = instance(GRPCLB_SERVICE, "b", 82, 3);
    b.address = "[::1]:82".into();
    b.token = "token-b".into();
    for i in [a, b] {
        reg.register(lease(i, 60_000)).await.unwrap();
    }
    // A static instance behind a DNS name: resolved by the daemon.
    let mut h = instance(GRPCLB_SERVICE, "h", 83, 1);
    h.address = "localhost:83".into();
    let mut adm = admin(d.addr).await;
    let hs = adm
        .put_static(lb_proto::v1::PutStaticRequest { instance: Some(h) })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hs.attachment, "static");

    let (tx, r) = balance_load(d.addr, initial("echo.test:50051")).await;
    let mut s = r.expect("BalanceLoad accepted");
    let first = timeout(WAIT, s.message()).await.unwrap().unwrap().unwrap();
    match first.load_balance_response_type {
        Some(LbResp::InitialResponse(i)) => {
            let d = i.client_stats_report_interval.expect("an interval");
            assert_eq!((d.seconds, d.nanos), (0, 250_000_000));
        }
        other => panic!("expected initial_response first, got {other:?}"),
    }
    let status = adm
        .get_service(lb_proto::v1::GetServiceRequest {
            service: GRPCLB_SERVICE.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let token = |id: &str| {
        status
            .instances
            .iter()
            .find(|i| i.instance_id == id)
            .map(|i| i.token.clone())
            .unwrap()
    };
    let (ta, th) = (token("a"), token("h"));
    assert_eq!(token("b"), "token-b");
    assert!(
        ta.starts_with('t') && ta.len() == 17,
        "derived token {ta:?}"
    );
    let list = next_grpclb_list(&mut s, "the first list", |l| l.len() == 5).await;
    assert_eq!(entries(&list, &ta), 1);
    assert_eq!(entries(&list, "token-b"), 3);
    assert_eq!(entries(&list, &th), 1);
    for e in &list {
        let (ip, port): (Vec<u8>, i32) = if e.load_balance_token == ta {
            (vec![127, 0, 0, 11], 81)
        } else if e.load_balance_token == th {
            (vec![127, 0, 0, 1], 83)
        } else {
            let mut v6 = vec![0u8; 15];
            v6.push(1);
            (v6, 82)
        };
        assert_eq!((e.ip_address.clone(), e.port, e.drop), (ip, port, false));
    }

    // An operator's fixed drop: half the entries become drop entries.
    let set = |floor: &str| lb_proto::v1::SetPolicyRequest {
        service: GRPCLB_SERVICE.into(),
        policy: Some(lb_proto::v1::Policy {
            name: "weighted_round_robin".into(),
            params: HashMap::from([("shed_floor".to_string(), floor.to_string())]),
        }),
    };
    adm.set_policy(set("0.5")).await.unwrap();
    let list = next_grpclb_list(&mut s, "a list with drops", |l| l.iter().any(|e| e.drop)).await;
    assert_eq!(list.len(), 10);
    assert_eq!(entries(&list, "lb-drop"), 5);
    assert!(list
        .iter()
        .filter(|e| e.drop)
        .all(|e| e.ip_address.is_empty()));
    adm.set_policy(set("0")).await.unwrap();
    next_grpclb_list(&mut s, "the list without drops", |l| l.len() == 5).await;

    // Stats are added to the service's grpclb totals.
    let report = lb_proto::grpclb::ClientStats {
        num_calls_started: 10,
        num_calls_finished: 9,
        num_calls_finished_with_client_failed_to_send: 1,
        num_calls_finished_known_received: 5,
        calls_finished_with_drop: vec![ClientStatsPerToken {
            load_balance_token: "lb-drop".into(),
            num_calls: 3,
        }],
        ..Default::default()
    };
    tx.send(grpclb_stats(report.clone())).await.unwrap();
    tx.send(grpclb_stats(report)).await.unwrap();
    let deadline = Instant::now() + WAIT;
    let g = loop {
        let st = adm
            .get_service(lb_proto::v1::GetServiceRequest {
                service: GRPCLB_SERVICE.into(),
            })
            .await
            .unwrap()
            .into_inner();
        let g = st.grpclb.clone().unwrap_or_default();
        if g.calls_started == 20 || Instant::now() > deadline {
            assert_eq!(st.dropped, 6, "drops count in the service's total");
            break g;
        }
        tokio::task::yield_now().await;
    };
    assert_eq!(
        (
            g.streams,
            g.calls_started,
            g.calls_finished,
            g.calls_failed_to_send,
            g.calls_known_received
        ),
        (1, 20, 18, 2, 10)
    );
    assert_eq!(g.dropped_by_token.get("lb-drop"), Some(&6));

    // Nothing usable: fallback, once; instances back: a list again.
    for id in ["a", "b"] {
        reg.deregister(DeregisterRequest {
            service: GRPCLB_SERVICE.into(),
            instance_id: id.into(),
        })
        .await
        .unwrap();
    }
    adm.set_drain(lb_proto::v1::SetDrainRequest {
        service: GRPCLB_SERVICE.into(),
        instance_id: "h".into(),
        drain: true,
    })
    .await
    .unwrap();
    next_lb_where(&mut s, "fallback", |r| {
        matches!(r, LbResp::FallbackResponse(_))
    })
    .await;
    adm.set_drain(lb_proto::v1::SetDrainRequest {
        service: GRPCLB_SERVICE.into(),
        instance_id: "h".into(),
        drain: false,
    })
    .await
    .unwrap();
    let list = next_grpclb_list(&mut s, "the list after fallback", |_| true).await;
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].load_balance_token, th);

    // An unknown service goes to fallback at once.
    let (_tx2, r) = balance_load(d.addr, initial("nobody.test:443")).await;
    let mut s2 = r.unwrap();
    next_lb_where(&mut s2, "fallback for an unknown service", |r| {
        matches!(r, LbResp::FallbackResponse(_))
    })
    .await;
    drop((tx, s, s2));
    d.stop().await;
}

/// 16. grpc.lb.v1 bad input ends that stream with a status naming the
///     problem; another stream on the same service is unaffected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpclb_bad_input_ends_only_that_stream() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(dir.path(), |_| {}).await;
    let mut reg = registry(d.addr).await;
    reg.register(lease(instance(GRPCLB_SERVICE, "a", 81, 1), 60_000))
        .await
        .unwrap();
    let (_keep, good) = balance_load(d.addr, initial(GRPCLB_SERVICE)).await;
    let mut good = good.unwrap();
    next_grpclb_list(&mut good, "the good stream's list", |l| l.len() == 1).await;

    let (_t, r) = balance_load(d.addr, initial("")).await;
    assert_field(&first_error(r).await, "initial_request.name");
    let (_t, r) = balance_load(d.addr, initial(&"a".repeat(256))).await;
    let s = first_error(r).await;
    assert_field(&s, "initial_request.name");
    assert!(s.message().contains("longer than 255"), "{s:?}");
    let (_t, r) = balance_load(d.addr, initial("bad name:80")).await;
    assert_field(&first_error(r).await, "initial_request.name");
    let (_t, r) = balance_load(d.addr, grpclb_stats(Default::default())).await;
    assert_status(
        &first_error(r).await,
        Code::FailedPrecondition,
        "client_stats before initial_request",
    );
    let (_t, r) = balance_load(
        d.addr,
        LoadBalanceRequest {
            load_balance_request_type: None,
        },
    )
    .await;
    assert_field(&first_error(r).await, "load_balance_request_type");

    // A second initial request, and a negative count, on open streams.
    let (t, r) = balance_load(d.addr, initial(GRPCLB_SERVICE)).await;
    let mut s = r.unwrap();
    next_grpclb_list(&mut s, "a list", |_| true).await;
    t.send(initial(GRPCLB_SERVICE)).await.unwrap();
    assert_status(
        &stream_error(&mut s).await,
        Code::FailedPrecondition,
        "already initialized",
    );
    let (t, r) = balance_load(d.addr, initial(GRPCLB_SERVICE)).await;
    let mut s = r.unwrap();
    next_grpclb_list(&mut s, "a list", |_| true).await;
    t.send(grpclb_stats(lb_proto::grpclb::ClientStats {
        num_calls_started: -5,
        ..Default::default()
    }))
    .await
    .unwrap();
    assert_field(
        &stream_error(&mut s).await,
        "client_stats.num_calls_started",
    );

    // The good stream still follows the service.
    reg.register(lease(instance(GRPCLB_SERVICE, "b", 82, 1), 60_000))
        .await
        .unwrap();
    next_grpclb_list(&mut good, "the good stream's next list", |l| l.len() == 2).await;
    drop(good);
    d.stop().await;
}

/// 17. Static instances: validated like registrations, persisted, never
///     expire (they outlive the restart grace), and do not mix with
///     backends' registrations of the same id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_instances_persist_and_never_expire() {
    let dir = tempfile::tempdir().unwrap();
    let put = |i: Instance| lb_proto::v1::PutStaticRequest { instance: Some(i) };
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
        registry(d.addr)
            .await
            .register(lease(instance(GRPCLB_SERVICE, "leased", 92, 1), 60_000))
            .await
            .unwrap();
        let refused = adm
            .remove_static(lb_proto::v1::RemoveStaticRequest {
                service: GRPCLB_SERVICE.into(),
                instance_id: "leased".into(),
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
    // After a restart with a short grace, the leased instance is gone once
    // the grace ends; the static one stays, still static.
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
