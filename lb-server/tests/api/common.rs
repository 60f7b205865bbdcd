//! What every API test uses: a daemon in this runtime over a temporary
//! directory, the generated clients, request builders and assertions.

pub(crate) use std::collections::HashMap;
pub(crate) use std::fmt::Debug;
pub(crate) use std::net::SocketAddr;
pub(crate) use std::path::Path;
pub(crate) use std::time::Duration;

pub(crate) use lb_proto::v1::{
    balancer_client::BalancerClient, registry_client::RegistryClient,
    report_load_request::Msg as BackendMsg, subscribe_request::Msg as ClientMsg, ClientIdentity,
    ClientStats, DeregisterRequest, Drain, Instance, InstanceStats, LoadReport, RegisterRequest,
    Registration, ReportLoadRequest, ReportLoadResponse, ServerList, SubscribeRequest,
    SubscribeResponse, Subscription,
};
pub(crate) use lb_server::{Config, ServerError};
pub(crate) use tokio::net::TcpListener;
pub(crate) use tokio::sync::{mpsc, oneshot};
pub(crate) use tokio::task::JoinHandle;
pub(crate) use tokio::time::{timeout, Instant};
pub(crate) use tokio_stream::wrappers::ReceiverStream;
pub(crate) use tokio_stream::StreamExt;
pub(crate) use tonic::transport::Channel;
pub(crate) use tonic::{Code, Status, Streaming};

/// The service most tests register under.
pub(crate) const SERVICE: &str = "echo.v1/Echo";
/// The grpclb service name stock clients dial in these tests.
pub(crate) const GRPCLB_SERVICE: &str = "echo.test";
/// Deadline for anything that should happen "soon".
pub(crate) const WAIT: Duration = Duration::from_secs(5);

// ------------------------------------------------------------------ harness

/// A daemon running in this test's runtime.
pub(crate) struct Daemon {
    pub(crate) addr: SocketAddr,
    pub(crate) shutdown: oneshot::Sender<()>,
    pub(crate) task: JoinHandle<Result<(), ServerError>>,
}

impl Daemon {
    /// Starts a daemon over `dir`; `tweak` adjusts the configuration.
    pub(crate) async fn start(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Daemon {
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
    pub(crate) async fn stop(self) {
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

pub(crate) async fn registry(addr: SocketAddr) -> RegistryClient<Channel> {
    RegistryClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub(crate) async fn balancer(addr: SocketAddr) -> BalancerClient<Channel> {
    BalancerClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// A valid instance at `127.0.0.1:{port}`.
pub(crate) fn instance(service: &str, id: &str, port: u16, weight: u32) -> Instance {
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

pub(crate) fn register_msg(instance: Instance, ttl_ms: u32) -> ReportLoadRequest {
    ReportLoadRequest {
        msg: Some(BackendMsg::Register(Registration {
            instance: Some(instance),
            ttl_ms,
        })),
    }
}

pub(crate) fn report_msg(load: LoadReport) -> ReportLoadRequest {
    ReportLoadRequest {
        msg: Some(BackendMsg::Report(load)),
    }
}

pub(crate) fn drain_msg() -> ReportLoadRequest {
    ReportLoadRequest {
        msg: Some(BackendMsg::Drain(Drain {})),
    }
}

/// A plausible, valid load report.
pub(crate) fn good_load() -> LoadReport {
    LoadReport {
        cpu_utilization: 0.4,
        active_requests: 12,
        qps: Some(250.0),
        eps: Some(0.5),
        mem_utilization: Some(0.3),
        named_metrics: HashMap::from([("queue_depth".to_string(), 3.0)]),
    }
}

pub(crate) fn lease(instance: Instance, ttl_ms: u32) -> RegisterRequest {
    RegisterRequest {
        instance: Some(instance),
        ttl_ms,
    }
}

/// The request sender and the response stream (or refusal) of a
/// bidirectional stream opened by `call` with `first` as its first request.
/// Keep the sender to keep the request side open; dropping it ends the stream.
pub(crate) type Opened<Req, Resp> = (mpsc::Sender<Req>, Result<Streaming<Resp>, Status>);

/// Opens a bidirectional stream with `call`, `first` already queued; `what`
/// names the RPC in the timeout message.
pub(crate) async fn open_with<Req, Resp, Fut>(
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
pub(crate) async fn open_report_stream(
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
pub(crate) struct Backend {
    pub(crate) tx: mpsc::Sender<ReportLoadRequest>,
    pub(crate) stream: Streaming<ReportLoadResponse>,
    pub(crate) hello: ReportLoadResponse,
}

/// Registers `inst` over a new ReportLoad stream and reads the first response.
pub(crate) async fn attach(addr: SocketAddr, inst: Instance, ttl_ms: u32) -> Backend {
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

pub(crate) fn subscription(service: &str, client_id: &str) -> SubscribeRequest {
    SubscribeRequest {
        msg: Some(ClientMsg::Subscribe(Subscription {
            service: service.into(),
            client: Some(ClientIdentity {
                client_id: client_id.into(),
                zone: "zone-a".into(),
                labels: HashMap::new(),
            }),
            ..Default::default()
        })),
    }
}

pub(crate) fn stats_msg(stats: ClientStats) -> SubscribeRequest {
    SubscribeRequest {
        msg: Some(ClientMsg::Stats(stats)),
    }
}

/// Opens a Subscribe stream whose first request is `first`; keep the sender
/// to keep the stream open and to send stats.
pub(crate) async fn subscribe_with(
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
pub(crate) async fn subscribe(addr: SocketAddr, service: &str) -> Streaming<SubscribeResponse> {
    let outbound =
        tokio_stream::once(subscription(service, "test-client/1")).chain(tokio_stream::pending());
    timeout(WAIT, balancer(addr).await.subscribe(outbound))
        .await
        .expect("Subscribe answers within 5 s")
        .unwrap_or_else(|s| panic!("subscribing to {service:?} was refused: {s:?}"))
        .into_inner()
}

/// The first list on `stream` that satisfies `pred`, within `within`.
pub(crate) async fn next_list_where(
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
pub(crate) async fn next_list(stream: &mut Streaming<SubscribeResponse>) -> ServerList {
    next_list_where(stream, WAIT, |_| true).await
}

/// The error a refused first message produced: either the call's own error
/// (trailers-only response) or the first item of its response stream.
pub(crate) async fn first_error<T: Debug>(r: Result<Streaming<T>, Status>) -> Status {
    match r {
        Err(s) => s,
        Ok(mut stream) => stream_error(&mut stream).await,
    }
}

/// The next item of `stream`, which must be an error.
pub(crate) async fn stream_error<T: Debug>(stream: &mut Streaming<T>) -> Status {
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
pub(crate) async fn subscription_error(stream: &mut Streaming<SubscribeResponse>) -> Status {
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
pub(crate) fn assert_status(s: &Status, code: Code, needle: &str) {
    assert_eq!(s.code(), code, "unexpected status: {s:?}");
    assert!(
        s.message().contains(needle),
        "status message {:?} does not mention {needle:?}",
        s.message()
    );
}

/// `s` is INVALID_ARGUMENT naming exactly `field` (the daemon writes `field: reason`).
#[track_caller]
pub(crate) fn assert_field(s: &Status, field: &str) {
    assert_status(s, Code::InvalidArgument, &format!("{field}:"));
}

pub(crate) fn ids(list: &ServerList) -> Vec<&str> {
    list.servers
        .iter()
        .map(|s| s.instance_id.as_str())
        .collect()
}

pub(crate) fn has(list: &ServerList, id: &str) -> bool {
    list.servers.iter().any(|s| s.instance_id == id)
}

/// How many entries of `order` point at the server `id`.
pub(crate) fn shares(list: &ServerList, id: &str) -> usize {
    let i = list
        .servers
        .iter()
        .position(|s| s.instance_id == id)
        .unwrap_or_else(|| panic!("{id:?} not in {list:?}")) as u32;
    list.order.iter().filter(|&&x| x == i).count()
}

/// Every `order` index points into `servers`.
#[track_caller]
pub(crate) fn assert_well_formed(list: &ServerList) {
    for &i in &list.order {
        assert!(
            (i as usize) < list.servers.len(),
            "bad index {i} in {list:?}"
        );
    }
}

pub(crate) fn is_rotation(a: &[u32], b: &[u32]) -> bool {
    a.len() == b.len() && (a.is_empty() || (0..a.len()).any(|k| a[k..].iter().chain(&a[..k]).eq(b)))
}

// -------------------------------------------------------------------- tests

pub(crate) async fn admin(addr: SocketAddr) -> lb_proto::v1::admin_client::AdminClient<Channel> {
    lb_proto::v1::admin_client::AdminClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

pub(crate) async fn service_status(
    adm: &mut lb_proto::v1::admin_client::AdminClient<Channel>,
) -> lb_proto::v1::ServiceStatus {
    adm.get_service(lb_proto::v1::GetServiceRequest {
        service: SERVICE.into(),
    })
    .await
    .unwrap()
    .into_inner()
}

/// A codec for raw bytes, to send what no generated client would.
#[derive(Default)]
pub(crate) struct RawCodec;

pub(crate) struct RawBytes;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawBytes;
    type Decoder = RawBytes;

    fn encoder(&mut self) -> RawBytes {
        RawBytes
    }

    fn decoder(&mut self) -> RawBytes {
        RawBytes
    }
}

impl tonic::codec::Encoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), Status> {
        use bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawBytes {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        use bytes::Buf;
        Ok(Some(src.copy_to_bytes(src.remaining()).to_vec()))
    }
}

/// Sends `body` as the request of the unary method `path`; returns its
/// refusal (panics if it was accepted).
pub(crate) async fn raw_unary(addr: SocketAddr, path: &'static str, body: Vec<u8>) -> Status {
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(body), path, RawCodec)
        .await
        .expect_err("undecodable bytes are refused")
}
