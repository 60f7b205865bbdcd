//! The xDS conversation, message by message, with envoy-types' own ADS
//! client against the real daemon: versions and nonces, ACKs, NACKs
//! (counted on /metrics), stale requests ignored, and bad requests ending
//! their stream only, with a status naming the field.

use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{Locality, Node};
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};
use envoy_types::pb::google::rpc::Status as RpcStatus;
use lb_tests::harness::{ctl, scrape, Daemon};
use prost::Message;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

const EDS: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LDS: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
/// Longest wait for one answer.
const ANSWER: Duration = Duration::from_secs(10);

/// One ADS stream: what to send, what came back.
struct Stream {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Stream {
    /// Opens a stream with its first request (the daemon answers the call
    /// once it has one).
    async fn open(daemon: &str, first: DiscoveryRequest) -> Stream {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{daemon}"))
            .await
            .expect("connect");
        let (tx, rx) = mpsc::channel(8);
        tx.send(first).await.expect("queue the first request");
        let rx = client
            .stream_aggregated_resources(ReceiverStream::new(rx))
            .await
            .expect("open the stream")
            .into_inner();
        Stream { tx, rx }
    }

    async fn send(&self, r: DiscoveryRequest) {
        self.tx.send(r).await.expect("send");
    }

    async fn answer(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(ANSWER, self.rx.message())
            .await
            .expect("an answer in time")
            .expect("an answer, not an error")
            .expect("an answer, not the end")
    }

    async fn ended(&mut self) -> tonic::Status {
        match tokio::time::timeout(ANSWER, self.rx.message())
            .await
            .expect("the end in time")
        {
            Err(s) => s,
            Ok(m) => panic!("expected the stream to end with a status, got {m:?}"),
        }
    }
}

fn request(type_url: &str, names: &[&str], version: &str, nonce: &str) -> DiscoveryRequest {
    DiscoveryRequest {
        node: Some(Node {
            id: "protocol-test".into(),
            locality: Some(Locality {
                zone: "z1".into(),
                ..Locality::default()
            }),
            ..Node::default()
        }),
        type_url: type_url.into(),
        resource_names: names.iter().map(|n| n.to_string()).collect(),
        version_info: version.into(),
        response_nonce: nonce.into(),
        ..DiscoveryRequest::default()
    }
}

/// Each endpoint's (sub-zone, locality weight) in an EDS answer.
fn weights(r: &DiscoveryResponse) -> Vec<(String, u32)> {
    r.resources
        .iter()
        .flat_map(|any| {
            let cla = ClusterLoadAssignment::decode(any.value.as_slice()).expect("a CLA");
            cla.endpoints
                .into_iter()
                .map(|l| {
                    (
                        l.locality.map(|l| l.sub_zone).unwrap_or_default(),
                        l.load_balancing_weight.map(|w| w.value).unwrap_or(0),
                    )
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

fn nacks(d: &Daemon) -> u64 {
    scrape(d)
        .lines()
        .find_map(|l| l.strip_prefix("lb_xds_nacks_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_nonces_acks_nacks_and_stale_requests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--http-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    let daemon = d.addr();
    ctl(
        &daemon,
        &["set-policy", "svc", "weighted_round_robin", "--create"],
    )
    .expect("policy");
    ctl(
        &daemon,
        &["put-static", "svc", "s1", "127.0.0.41:7", "--weight", "1"],
    )
    .expect("s1");
    ctl(
        &daemon,
        &["put-static", "svc", "s2", "127.0.0.42:7", "--weight", "3"],
    )
    .expect("s2");

    let mut s = Stream::open(&daemon, request(EDS, &["svc"], "", "")).await;
    let first = s.answer().await;
    assert_eq!(first.type_url, EDS);
    assert_eq!(first.version_info, "1");
    assert_eq!(weights(&first), [("s1".into(), 1), ("s2".into(), 3)]);

    // ACK; a change is the next answer, with the next version.
    s.send(request(EDS, &["svc"], &first.version_info, &first.nonce))
        .await;
    ctl(&daemon, &["set-weight", "svc", "s1", "3"]).expect("set-weight");
    let second = s.answer().await;
    assert_eq!(second.version_info, "2");
    assert_ne!(second.nonce, first.nonce);
    assert_eq!(weights(&second), [("s1".into(), 1), ("s2".into(), 1)]);

    // A NACK is counted, and updates go on.
    let before = nacks(&d);
    let mut nack = request(EDS, &["svc"], &first.version_info, &second.nonce);
    nack.error_detail = Some(RpcStatus {
        code: 3,
        message: "weights look wrong to me".into(),
        details: Vec::new(),
    });
    s.send(nack).await;
    // A stale request (an older nonce) asking for another name is ignored:
    // the next answer is for the request after it.
    s.send(request(EDS, &["svc", "other"], "2", &first.nonce))
        .await;
    s.send(request(LDS, &["svc:443"], "", "")).await;
    let listener = s.answer().await;
    assert_eq!(listener.type_url, LDS, "the stale request was answered");
    assert_eq!(listener.version_info, "1");
    assert_eq!(listener.resources.len(), 1);
    let deadline = tokio::time::Instant::now() + ANSWER;
    while nacks(&d) != before + 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the NACK is not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ctl(&daemon, &["set-weight", "svc", "s1", "0"]).expect("clear the override");
    let third = loop {
        let a = s.answer().await;
        if a.type_url == EDS {
            break a;
        }
    };
    assert_eq!(third.version_info, "3");
    assert_eq!(weights(&third), [("s1".into(), 1), ("s2".into(), 3)]);

    // The client ACKs, then asks for one more name (a second channel's
    // target) naming the same, already acknowledged answer: that is not
    // stale, and both are answered.
    s.send(request(EDS, &["svc"], &third.version_info, &third.nonce))
        .await;
    s.send(request(
        EDS,
        &["svc", "svc2"],
        &third.version_info,
        &third.nonce,
    ))
    .await;
    let both = s.answer().await;
    assert_eq!(both.version_info, "4");
    assert_eq!(both.resources.len(), 2, "{both:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_end_their_own_stream_only() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[]).expect("daemon");
    let daemon = d.addr();
    ctl(
        &daemon,
        &["set-policy", "svc", "weighted_round_robin", "--create"],
    )
    .expect("policy");
    ctl(&daemon, &["put-static", "svc", "s1", "127.0.0.41:7"]).expect("s1");
    ctl(&daemon, &["put-static", "svc", "s2", "127.0.0.42:7"]).expect("s2");
    let mut good = Stream::open(&daemon, request(EDS, &["svc"], "", "")).await;
    let first = good.answer().await;
    good.send(request(EDS, &["svc"], &first.version_info, &first.nonce))
        .await;

    let huge = "n".repeat(100_000);
    let many: Vec<String> = (0..1001).map(|i| format!("s{i}")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let cases: [(DiscoveryRequest, &str); 4] = [
        (
            request("type.googleapis.com/no.Such", &["svc"], "", ""),
            "type_url",
        ),
        (request(EDS, &[&huge], "", ""), "resource_names"),
        (request(LDS, &["bad name:80"], "", ""), "resource_names"),
        (request(EDS, &many, "", ""), "resource_names"),
    ];
    for (bad, field) in cases {
        let status = match AggregatedDiscoveryServiceClient::connect(format!("http://{daemon}"))
            .await
            .expect("connect")
            .stream_aggregated_resources(tokio_stream::once(bad))
            .await
        {
            // Refused before the stream is answered (the first request)...
            Err(s) => s,
            // ...or after.
            Ok(r) => {
                Stream {
                    tx: mpsc::channel(1).0,
                    rx: r.into_inner(),
                }
                .ended()
                .await
            }
        };
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
        assert!(status.message().starts_with(field), "{status:?}");
        assert!(
            status.message().len() < 512,
            "{} bytes",
            status.message().len()
        );
    }
    // The good stream still gets its updates.
    ctl(&daemon, &["set-weight", "svc", "s1", "3"]).expect("set-weight");
    let next = good.answer().await;
    assert_eq!(next.version_info, "2");
    assert_eq!(weights(&next), [("s1".into(), 3), ("s2".into(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_that_never_acknowledges_is_ended() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--xds-ack-timeout", "300ms"],
    )
    .expect("daemon");
    let daemon = d.addr();
    let mut silent = Stream::open(&daemon, request(EDS, &["svc"], "", "")).await;
    let mut polite = Stream::open(&daemon, request(EDS, &["svc"], "", "")).await;
    silent.answer().await;
    let first = polite.answer().await;
    polite
        .send(request(EDS, &["svc"], &first.version_info, &first.nonce))
        .await;
    let status = silent.ended().await;
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    assert!(status.message().contains("ACK"), "{status:?}");
    // The stream that acknowledged is still served.
    ctl(
        &daemon,
        &["put-static", "svc", "s1", "127.0.0.41:7", "--create"],
    )
    .expect("s1");
    let next = polite.answer().await;
    assert_eq!(weights(&next), [("s1".into(), 1)]);
}
