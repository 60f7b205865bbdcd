//! Warm restart end to end (issue 17): `lb-server` is killed with -9 and
//! started again on the same data directory. Its first lists must be the
//! load-aware plan it had before (not static weights while it waits for
//! reports), and the backends' first reports afterwards must count at once
//! (their reporting run continues: no new blackout). The real daemon binary;
//! the backends are raw `ReportLoad` streams so their loads are exact, and a
//! raw `Subscribe` stream sees every list the daemon pushes, in order.

use std::collections::HashMap;
use std::time::Duration;

use lb_proto::v1 as pb;
use lb_tests::harness::{ctl, Daemon};
use pb::report_load_request::Msg as BackendMsg;
use pb::subscribe_request::Msg as ClientMsg;
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_stream::wrappers::ReceiverStream;

const WAIT: Duration = Duration::from_secs(20);

/// A backend on a ReportLoad stream: keep the sender to keep it attached.
struct Backend {
    tx: mpsc::Sender<pb::ReportLoadRequest>,
    _responses: tonic::Streaming<pb::ReportLoadResponse>,
}

fn report(util: f64, qps: f64) -> pb::ReportLoadRequest {
    pb::ReportLoadRequest {
        msg: Some(BackendMsg::Report(pb::LoadReport {
            cpu_utilization: util,
            qps: Some(qps),
            ..Default::default()
        })),
    }
}

async fn attach(daemon: &str, id: &str, port: u16) -> Backend {
    let mut client = pb::registry_client::RegistryClient::connect(format!("http://{daemon}"))
        .await
        .expect("connect");
    let (tx, rx) = mpsc::channel(16);
    tx.send(pb::ReportLoadRequest {
        msg: Some(BackendMsg::Register(pb::Registration {
            instance: Some(pb::Instance {
                service: "warm".into(),
                instance_id: id.into(),
                address: format!("127.0.0.1:{port}"),
                weight: 1,
                ..Default::default()
            }),
            ttl_ms: 60_000,
        })),
    })
    .await
    .expect("register");
    let mut responses = client
        .report_load(ReceiverStream::new(rx))
        .await
        .expect("attached")
        .into_inner();
    responses
        .message()
        .await
        .expect("the first response")
        .expect("the stream stays open");
    Backend {
        tx,
        _responses: responses,
    }
}

/// Reports `util`/`qps` for `b` every 100 ms until the returned task is aborted.
fn keep_reporting(b: &Backend, util: f64, qps: f64) -> tokio::task::JoinHandle<()> {
    let tx = b.tx.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        loop {
            tick.tick().await;
            if tx.send(report(util, qps)).await.is_err() {
                return;
            }
        }
    })
}

async fn subscribe(daemon: &str) -> tonic::Streaming<pb::SubscribeResponse> {
    let mut client = pb::balancer_client::BalancerClient::connect(format!("http://{daemon}"))
        .await
        .expect("connect");
    let first = pb::SubscribeRequest {
        msg: Some(ClientMsg::Subscribe(pb::Subscription {
            service: "warm".into(),
            client: Some(pb::ClientIdentity {
                client_id: "watcher".into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let outbound =
        tokio_stream::StreamExt::chain(tokio_stream::once(first), tokio_stream::pending());
    client
        .subscribe(outbound)
        .await
        .expect("subscribed")
        .into_inner()
}

/// b1's entries ÷ b2's in a list (0 when b2 has none; `None` without both).
fn ratio(l: &pb::ServerList) -> Option<f64> {
    let mut n: HashMap<&str, u32> = HashMap::new();
    for &i in &l.order {
        let s = l.servers.get(i as usize)?;
        *n.entry(s.instance_id.as_str()).or_default() += 1;
    }
    let (a, b) = (*n.get("b1")?, *n.get("b2")?);
    Some(f64::from(a) / f64::from(b))
}

/// Every list on `stream` until one satisfies `pred` (within `WAIT`).
async fn lists_until(
    stream: &mut tonic::Streaming<pb::SubscribeResponse>,
    pred: impl Fn(&pb::ServerList) -> bool,
) -> Vec<pb::ServerList> {
    let mut seen = Vec::new();
    let r = timeout(WAIT, async {
        loop {
            match stream.message().await {
                Ok(Some(pb::SubscribeResponse {
                    list: Some(list), ..
                })) => {
                    let done = pred(&list);
                    seen.push(list);
                    if done {
                        return;
                    }
                }
                Ok(Some(_)) => {}
                other => panic!("the subscription ended: {other:?}"),
            }
        }
    })
    .await;
    let ratios: Vec<_> = seen.iter().map(ratio).collect();
    assert!(
        r.is_ok(),
        "no such list within {WAIT:?}; ratios seen: {ratios:?}"
    );
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_daemon_serves_the_plan_it_had_and_keeps_the_reporting_runs() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut daemon = Daemon::start(data.path(), "127.0.0.1:0", &["--restore-grace", "60s"])
        .expect("start lb-server");
    let addr = daemon.addr();
    // b1 has four times b2's capacity (full rates 400 and 100 req/s).
    let b1 = attach(&addr, "b1", 1001).await;
    let b2 = attach(&addr, "b2", 1002).await;
    let mut watcher = subscribe(&addr).await;
    let reporting = [
        keep_reporting(&b1, 0.2, 80.0),
        keep_reporting(&b2, 0.8, 80.0),
    ];
    lists_until(&mut watcher, |l| ratio(l).is_some_and(|r| r >= 3.0)).await;
    // The snapshot is written every second: wait for one that holds both.
    let snapshot = data.path().join(lb_server::warm::FILE);
    let written = tokio::time::Instant::now();
    loop {
        let entries =
            lb_server::warm::read(data.path(), std::time::SystemTime::now()).unwrap_or_default();
        if entries.len() == 2
            && entries
                .iter()
                .all(|e| e.reporting_for >= Duration::from_secs(2))
        {
            break;
        }
        assert!(
            written.elapsed() < WAIT,
            "no snapshot with both reports in {snapshot:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // kill -9; the backends' streams break and nothing reports.
    for r in reporting {
        r.abort();
    }
    let port = daemon.proc.addr.port();
    daemon.proc.kill9();
    drop((b1, b2, watcher));
    let daemon = Daemon::start(
        data.path(),
        &format!("127.0.0.1:{port}"),
        &["--restore-grace", "60s"],
    )
    .expect("restart lb-server");
    let addr = daemon.addr();
    assert!(
        daemon.proc.log().contains("warmed=2"),
        "the start log counts the restored reports:\n{}",
        daemon.proc.log()
    );

    // The first list after the restart is the plan from before it.
    let mut watcher = subscribe(&addr).await;
    let first = lists_until(&mut watcher, |_| true).await;
    let r = ratio(&first[0]).expect("both instances listed");
    assert!(r >= 3.0, "first list after the restart: b1/b2 = {r}");

    // The backends come back with swapped loads. Their runs continue, so
    // their reports count at once: the plan flips straight from 4:1 to 1:4,
    // never through the static 1:1 a new blackout would bring.
    let b1 = attach(&addr, "b1", 1001).await;
    let b2 = attach(&addr, "b2", 1002).await;
    let _reporting = [
        keep_reporting(&b1, 0.8, 80.0),
        keep_reporting(&b2, 0.2, 80.0),
    ];
    let seen = lists_until(&mut watcher, |l| ratio(l).is_some_and(|r| r <= 1.0 / 3.0)).await;
    let ratios: Vec<f64> = seen.iter().filter_map(ratio).collect();
    assert!(
        ratios.iter().all(|&r| !(0.67..=1.5).contains(&r)),
        "a list near 1:1 came between (a new blackout): {ratios:?}"
    );
    // The operator's view agrees: both attached again.
    let shown = ctl(&addr, &["get", "warm"]).expect("ctl get");
    assert!(shown.contains("b1") && shown.contains("b2"), "{shown}");
}
