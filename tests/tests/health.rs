//! The operator's gRPC surfaces on a real daemon: health checking with a
//! stock client (grpcio's `grpcio-health-checking` stub, `python/`), and
//! server reflection with tonic-reflection's client (what grpcurl uses).

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use lb_tests::harness::{ctl, repo_root, stock_python, BackendSpec, Daemon};
use prost::Message;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

#[test]
fn a_stock_health_client_sees_the_daemon_and_a_service_stop_serving_when_it_drains() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[]).expect("daemon");
    let _b1 = BackendSpec::new("svc", "b1", 1)
        .start(&daemon.addr(), dir.path())
        .expect("backend");
    let root = repo_root();
    let python = stock_python();
    // The backend registers before the client asks (a first Check may come
    // before the first plan otherwise): wait for the list through ctl.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while !ctl(&daemon.addr(), &["get", "svc"]).is_ok_and(|s| s.contains("b1")) {
        assert!(std::time::Instant::now() < deadline, "b1 never registered");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut child = Command::new(python)
        .arg(root.join("tests/python/health_client.py"))
        .args([
            "--target",
            &daemon.addr(),
            "--service",
            "svc",
            "--timeout",
            "30",
        ])
        .env("GRPC_VERBOSITY", "ERROR")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the grpcio health client");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    let mut next = || -> serde_json::Value {
        let line = lines.next().expect("a line").expect("read");
        serde_json::from_str(&line).expect("JSON")
    };
    let checked = next();
    assert_eq!(checked["daemon"], "SERVING", "{checked}");
    assert_eq!(checked["service"], "SERVING", "{checked}");
    assert_eq!(next()["watch"], "SERVING");
    // Its only instance drains: the service stops serving, pushed to Watch.
    ctl(&daemon.addr(), &["drain", "svc", "b1"]).expect("drain");
    assert_eq!(next()["watch"], "NOT_SERVING");
    ctl(&daemon.addr(), &["undrain", "svc", "b1"]).expect("undrain");
    assert_eq!(next()["watch"], "SERVING");
    let _ = child.kill();
    let _ = child.wait();
}

async fn reflect(
    client: &mut ServerReflectionClient<tonic::transport::Channel>,
    request: MessageRequest,
) -> MessageResponse {
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(request),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect("reflection")
        .into_inner();
    answers
        .message()
        .await
        .expect("an answer")
        .and_then(|a| a.message_response)
        .expect("a response")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_lists_every_service_and_describes_admin() {
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[]).expect("daemon");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr()))
        .expect("an address")
        .connect()
        .await
        .expect("connect");
    let mut client = ServerReflectionClient::new(channel);
    let MessageResponse::ListServicesResponse(list) =
        reflect(&mut client, MessageRequest::ListServices(String::new())).await
    else {
        panic!("not a list of services");
    };
    let mut names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    names.sort();
    assert_eq!(
        names,
        [
            "grpc.health.v1.Health",
            "grpc.lb.v1.LoadBalancer",
            "grpc.reflection.v1.ServerReflection",
            "lb.v1.Admin",
            "lb.v1.Balancer",
            "lb.v1.Registry",
        ]
    );
    // What grpcurl needs to call Admin/GetService: the file that defines it.
    let MessageResponse::FileDescriptorResponse(files) = reflect(
        &mut client,
        MessageRequest::FileContainingSymbol("lb.v1.Admin".into()),
    )
    .await
    else {
        panic!("no file for lb.v1.Admin");
    };
    let file = prost_types::FileDescriptorProto::decode(files.file_descriptor_proto[0].as_slice())
        .expect("a file descriptor");
    let admin = file
        .service
        .iter()
        .find(|s| s.name() == "Admin")
        .expect("Admin in its file");
    let get = admin
        .method
        .iter()
        .find(|m| m.name() == "GetService")
        .expect("GetService");
    assert_eq!(get.input_type(), ".lb.v1.GetServiceRequest");
    assert_eq!(get.output_type(), ".lb.v1.ServiceStatus");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_health_stays_open_and_reflection_needs_a_token() {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon =
        Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &["--auth"]).expect("daemon");
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", daemon.addr()))
        .expect("an address")
        .connect()
        .await
        .expect("connect");
    // A probe sends no token.
    let status = HealthClient::new(channel.clone())
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .expect("an anonymous health check")
        .into_inner()
        .status;
    assert_eq!(status, 1, "SERVING");
    // Reflection is for operators: anonymous callers are refused.
    let req = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let refused = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::once(req))
        .await
        .expect_err("anonymous reflection");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused}");
}

#[test]
fn metrics_parse_with_prometheus_own_parser() {
    use std::io::Write;
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--metrics-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    ctl(
        &daemon.addr(),
        &["put-static", "svc", "s\"1", "127.0.0.1:9", "--create"],
    )
    .expect_err("a quote is no valid instance id");
    ctl(
        &daemon.addr(),
        &["put-static", "svc", "s1", "127.0.0.1:9", "--create"],
    )
    .expect("put");
    let page = lb_tests::harness::scrape(&daemon);
    let (head, body) = page.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.to_lowercase()
            .contains("content-type: application/openmetrics-text; version=1.0.0"),
        "{head}"
    );
    let root = repo_root();
    let mut child = Command::new(stock_python())
        .arg(root.join("tests/python/parse_metrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the parser");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(body.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("parse");
    assert!(
        out.status.success(),
        "Prometheus' parser refused the page: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("JSON");
    let find = |name: &str| {
        samples
            .iter()
            .find(|s| s["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {samples:?}"))
            .clone()
    };
    let instances = find("lb_service_instances");
    assert_eq!(instances["labels"]["service"], "svc");
    assert_eq!(instances["value"].as_f64(), Some(1.0));
    let calls = find("lb_instance_calls_total");
    assert_eq!(
        (calls["family"].clone(), calls["type"].clone()),
        ("lb_instance_calls".into(), "counter".into())
    );
    assert_eq!(find("lb_store_degraded")["value"].as_f64(), Some(0.0));
    assert!(
        samples
            .iter()
            .filter(|s| s["family"] == "lb_quota_refused")
            .count()
            >= 5
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_listener_answers_health_readiness_and_the_json_api() {
    use lb_tests::harness::{http_get, wait_until, WAIT};
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--http-listen", "127.0.0.1:0", "--restore-grace", "1s"],
    )
    .expect("daemon");
    let get = |path: &str| http_get(&daemon, path, None).expect("GET");
    assert_eq!(get("/healthz"), (200, "ok\n".to_string()));
    // Not ready while backends may still be reconnecting (the restore
    // grace), then ready.
    let (code, why) = get("/readyz");
    assert_eq!(code, 503, "{why}");
    assert!(why.contains("restore grace"), "{why}");
    assert!(
        wait_until(WAIT, || get("/readyz").0 == 200).await,
        "never ready"
    );
    ctl(
        &daemon.addr(),
        &["put-static", "svc", "s1", "127.0.0.1:9", "--create"],
    )
    .expect("put");
    let (code, body) = get("/api/services");
    assert_eq!(code, 200, "{body}");
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(list["services"][0]["name"], "svc", "{list}");
    assert_eq!(list["services"][0]["instances"], 1, "{list}");
    let (code, body) = get("/api/services/svc");
    assert_eq!(code, 200, "{body}");
    let svc: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(svc["instances"][0]["instance_id"], "s1", "{svc}");
    assert_eq!(svc["instances"][0]["attachment"], "static", "{svc}");
    assert_eq!(svc["policy"]["name"], "load_aware", "{svc}");
    assert_eq!(get("/api/services/nope").0, 404);
    assert_eq!(get("/api/services/bad%20name").0, 400);
    assert_eq!(get("/nothing-here").0, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_authentication_the_http_api_needs_a_token_and_health_does_not() {
    use lb_tests::harness::{http_get, wait_until, WAIT};
    let dir = tempfile::tempdir().expect("tempdir");
    let daemon = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--auth", "--http-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    let token_file = daemon.data_dir.join("admin.token");
    assert!(wait_until(WAIT, || token_file.exists()).await);
    let token = std::fs::read_to_string(&token_file)
        .expect("token")
        .trim()
        .to_string();
    for path in ["/metrics", "/api/services"] {
        assert_eq!(http_get(&daemon, path, None).expect("GET").0, 401, "{path}");
        assert_eq!(
            http_get(&daemon, path, Some("lb_wrong")).expect("GET").0,
            401,
            "{path}"
        );
        assert_eq!(
            http_get(&daemon, path, Some(&token)).expect("GET").0,
            200,
            "{path}"
        );
    }
    assert_eq!(http_get(&daemon, "/healthz", None).expect("GET").0, 200);
}
