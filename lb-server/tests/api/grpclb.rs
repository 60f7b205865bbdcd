//! `grpc.lb.v1.LoadBalancer`: a stock client's stream (lists, drops,
//! stats, fallback) and its bad input.

use crate::common::*;

use lb_proto::grpclb::{
    load_balance_request::LoadBalanceRequestType as LbReq,
    load_balance_response::LoadBalanceResponseType as LbResp,
    load_balancer_client::LoadBalancerClient, ClientStatsPerToken, InitialLoadBalanceRequest,
    LoadBalanceRequest, LoadBalanceResponse,
};

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
        .put_static(lb_proto::v1::PutStaticRequest {
            instance: Some(h),
            create: true,
        })
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
        create: true,
        ..Default::default()
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
