//! Security with the real daemon: every method refuses anonymous calls when
//! authentication is on, tokens keep to their role and services, an
//! instance cannot be taken over with another token, a revoked token's
//! streams end within a second, TLS and mTLS are enforced (and certificates
//! are reloaded without dropping streams), a non-loopback listener needs TLS
//! and authentication, and the limits against hostile peers bite: idle
//! connections and silent streams are closed by their deadlines, and
//! streams past the per-connection limit are refused with the daemon's
//! memory bounded.

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_client::credentials::{Authorize, Credentials};
use lb_proto::v1::{self as pb, admin_client::AdminClient, balancer_client::BalancerClient};
use lb_proto::v1::{registry_client::RegistryClient, subscribe_request};
use lb_tests::harness::{
    bin, ctl_command, failure_stats, sample, scrape_with as scrape, succeeded, wait_until, Daemon,
    WAIT,
};
use lb_tests::pki::Pki;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_stream::StreamExt;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

/// Runs `lb-server ctl` against `d` with its data directory (so it finds
/// the generated admin token unless `LB_TOKEN` or `--token-file` say
/// otherwise).
fn ctl(d: &Daemon, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = ctl_command(&d.addr(), &d.data_dir);
    cmd.args(args);
    if let Some(t) = token {
        cmd.env("LB_TOKEN", t);
    }
    cmd.output().expect("run lb-server ctl")
}

/// `ctl` that must succeed; its stdout.
fn ctl_ok(d: &Daemon, args: &[&str]) -> String {
    succeeded(ctl(d, None, args), &format!("ctl {args:?}"))
}

/// Creates a token with ctl; returns it.
fn token(d: &Daemon, name: &str, role: &str, services: &[&str]) -> String {
    let mut args = vec!["token", "create", "--name", name, "--role", role];
    for s in services {
        args.extend(["--service", s]);
    }
    ctl_ok(d, &args).trim().to_string()
}

fn creds(token: Option<&str>) -> Credentials {
    Credentials::default().with_token(token.unwrap_or(""))
}

async fn channel(addr: &str, creds: &Credentials) -> Result<Channel, String> {
    lb_client::daemon::connect(addr, Duration::from_secs(5), creds)
        .await
        .map_err(|e| format!("{e:?}"))
}

type Authed = InterceptedService<Channel, Authorize>;

async fn admin(addr: &str, c: &Credentials) -> AdminClient<Authed> {
    AdminClient::with_interceptor(channel(addr, c).await.expect("connect"), Authorize::new(c))
}

async fn registry(addr: &str, c: &Credentials) -> RegistryClient<Authed> {
    RegistryClient::with_interceptor(channel(addr, c).await.expect("connect"), Authorize::new(c))
}

async fn balancer(addr: &str, c: &Credentials) -> BalancerClient<Authed> {
    BalancerClient::with_interceptor(channel(addr, c).await.expect("connect"), Authorize::new(c))
}

fn instance(service: &str, id: &str, port: u16) -> pb::Instance {
    pb::Instance {
        service: service.into(),
        instance_id: id.into(),
        address: format!("127.0.0.1:{port}"),
        weight: 1,
        ..Default::default()
    }
}

fn lease(i: pb::Instance) -> pb::RegisterRequest {
    pb::RegisterRequest {
        instance: Some(i),
        ttl_ms: 60_000,
    }
}

/// Opens a Subscribe stream for `service`; the stream, or the refusal.
async fn subscribe(
    client: &mut BalancerClient<Authed>,
    service: &str,
) -> Result<tonic::Streaming<pb::SubscribeResponse>, Status> {
    let first = pb::SubscribeRequest {
        msg: Some(subscribe_request::Msg::Subscribe(pb::Subscription {
            service: service.into(),
            client: Some(pb::ClientIdentity {
                client_id: format!("test-{service}"),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let requests = tokio_stream::once(first).chain(tokio_stream::pending());
    let mut stream = client.subscribe(requests).await?.into_inner();
    // The first list arrives at once; a refusal arrives instead of it.
    match stream.message().await? {
        Some(_) => Ok(stream),
        None => Err(Status::unknown("the stream ended without a list")),
    }
}

/// Every method of every service the daemon serves, from the `.proto`
/// files (so a new method is covered by the anonymous-call check at once).
fn methods() -> Vec<String> {
    let files = [
        include_str!("../../proto/lb/v1/lb.proto"),
        include_str!("../../proto/grpc/lb/v1/load_balancer.proto"),
    ];
    let mut out = Vec::new();
    for text in files {
        let package = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("package "))
            .map(|p| p.trim_end_matches(';').trim())
            .expect("package");
        let mut service = None;
        for line in text.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_string);
            } else if let (Some(rest), Some(s)) = (line.strip_prefix("rpc "), &service) {
                let method = rest.split('(').next().expect("rpc name").trim();
                out.push(format!("/{package}.{s}/{method}"));
            }
        }
    }
    out
}

/// Reads `stream` to its end: the status it ended with (`ok` if it ended
/// cleanly).
async fn end<T>(stream: &mut tonic::Streaming<T>) -> Status {
    loop {
        match stream.message().await {
            Ok(Some(_)) => continue,
            Ok(None) => return Status::ok("ended"),
            Err(s) => return s,
        }
    }
}

/// Calls `path` with one empty message and no credentials; the status.
async fn anonymous(addr: &str, path: &str) -> Status {
    let ch = channel(addr, &Credentials::default())
        .await
        .expect("connect");
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.expect("ready");
    let path: tonic::codegen::http::uri::PathAndQuery = path.parse().expect("path");
    let codec = tonic_prost::ProstCodec::<(), ()>::default();
    let req = tonic::Request::new(tokio_stream::once(()));
    match grpc.streaming(req, path, codec).await {
        Err(s) => s,
        Ok(resp) => end(&mut resp.into_inner()).await,
    }
}

fn data(dir: &tempfile::TempDir) -> std::path::PathBuf {
    dir.path().join("data")
}

/// The admin token the daemon generates into its data directory (it is
/// written just after the daemon starts listening).
async fn admin_token(d: &Daemon) -> String {
    let path = d.data_dir.join("admin.token");
    assert!(
        wait_until(WAIT, || std::fs::metadata(&path).is_ok_and(|m| m.len() > 0)).await,
        "no {}",
        path.display()
    );
    std::fs::read_to_string(path).unwrap().trim().to_string()
}

/// 1. With `--auth`: every method of every service refuses an anonymous
///    caller; backend, client and read-only admin tokens do what their role
///    and services allow and get `permission_denied` naming the missing
///    role or scope otherwise; an instance registered with one token
///    cannot be replaced or removed with another; `/metrics` needs a token
///    and counts the refusals.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_keep_callers_to_their_role_and_services() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &data(&dir),
        "127.0.0.1:0",
        &["--auth", "--metrics-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    let addr = d.addr();
    let admin_token = admin_token(&d).await;
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(d.data_dir.join("admin.token"))
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the admin token is private");

    // Anonymous: refused everywhere, before the body is read.
    let all = methods();
    assert!(all.len() >= 18, "{all:?}");
    for path in &all {
        let s = anonymous(&addr, path).await;
        assert_eq!(s.code(), Code::Unauthenticated, "{path}: {s:?}");
        assert!(s.message().contains("needs a token"), "{path}: {s:?}");
    }

    // ctl finds the generated admin token through --data-dir.
    let shop = token(&d, "shop-deploy", "backend", &["shop-*"]);
    let other = token(&d, "shop-other", "backend", &["shop-*"]);
    let web = token(&d, "web", "client", &["shop-api"]);
    let reader = token(&d, "dashboard", "admin-read-only", &[]);
    assert!(shop.starts_with("lbt_") && shop.len() > 64, "{shop}");
    let listed = ctl_ok(&d, &["token", "list"]);
    for name in ["shop-deploy", "shop-other", "web", "dashboard"] {
        assert!(listed.contains(name), "{listed}");
    }
    assert!(
        !listed.contains(&shop[..20]),
        "token list never shows a secret"
    );

    // A backend token: its services only, registering only.
    let mut reg = registry(&addr, &creds(Some(&shop))).await;
    reg.register(lease(instance("shop-api", "a1", 7001)))
        .await
        .expect("backend token registers in shop-*");
    let s = reg
        .register(lease(instance("payments", "p1", 7002)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(
        s.message().contains("payments") && s.message().contains("shop-*"),
        "names the scope: {s:?}"
    );
    assert!(!s.message().contains(&shop[..20]), "never the token");
    let s = subscribe(&mut balancer(&addr, &creds(Some(&shop))).await, "shop-api")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("client"), "names the role: {s:?}");

    // Takeover: the same instance id with another token of the same scope.
    let mut thief = registry(&addr, &creds(Some(&other))).await;
    let s = thief
        .register(lease(instance("shop-api", "a1", 9999)))
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    assert!(s.message().contains("another token"), "{s:?}");
    let s = thief
        .deregister(pb::DeregisterRequest {
            service: "shop-api".into(),
            instance_id: "a1".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // A client token: subscribes to its service, and it sees the original
    // address (the takeover did not land).
    let mut web_b = balancer(&addr, &creds(Some(&web))).await;
    let mut sub = subscribe(&mut web_b, "shop-api").await.expect("subscribe");
    drop(sub.message());
    let s = subscribe(&mut web_b, "payments").await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
    let mut ro = admin(&addr, &creds(Some(&reader))).await;
    let svc = ro
        .get_service(pb::GetServiceRequest {
            service: "shop-api".into(),
        })
        .await
        .expect("read-only admin reads")
        .into_inner();
    let addrs: Vec<_> = svc.instances.iter().map(|i| i.address.clone()).collect();
    assert_eq!(addrs, vec!["127.0.0.1:7001".to_string()]);
    let s = ro
        .set_policy(pb::SetPolicyRequest {
            service: "shop-api".into(),
            policy: Some(pb::Policy {
                name: "random".into(),
                params: HashMap::new(),
            }),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // ctl without a token (another data directory, no LB_TOKEN): a hint.
    let mut cmd = Command::new(bin("lb-server").unwrap());
    let out = cmd
        .args(["ctl", "--server", &addr, "--data-dir"])
        .arg(dir.path().join("elsewhere"))
        .arg("services")
        .env_remove("LB_TOKEN")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Unauthenticated") && err.contains("LB_TOKEN"),
        "{err}"
    );
    let out = ctl(&d, Some(&reader), &["services"]);
    assert!(out.status.success(), "LB_TOKEN is used");

    // /metrics: 401 without a token, 403 with a client token, the page with
    // a read-only admin token, and it counts the refusals.
    let page = scrape(&d, None).unwrap();
    assert_eq!(page.split_whitespace().nth(1), Some("401"), "{page}");
    let page = scrape(&d, Some(&web)).unwrap();
    assert_eq!(page.split_whitespace().nth(1), Some("403"), "{page}");
    let page = scrape(&d, Some(&reader)).unwrap();
    assert_eq!(page.split_whitespace().nth(1), Some("200"), "{page}");
    assert_eq!(sample(&page, "lb_auth_enabled"), Some(1.0));
    let anon = sample(
        &page,
        "lb_auth_denied_total{role=\"anonymous\",reason=\"no_token\"}",
    );
    assert!(anon >= Some(all.len() as f64 + 1.0), "{anon:?}\n{page}");
    assert!(
        sample(
            &page,
            "lb_auth_denied_total{role=\"backend\",reason=\"scope\"}"
        ) >= Some(1.0),
        "{page}"
    );
    // The audit log names who made each change.
    assert!(wait_until(WAIT, || d.proc.log().contains("create-token")).await);
    let log = d.proc.log();
    assert!(
        log.lines().any(|l| l.contains("audit")
            && l.contains("who=\"admin\"")
            && l.contains("shop-deploy")),
        "{log}"
    );
    assert!(!log.contains(&shop[20..]), "the log never holds a secret");
    assert!(!log.contains(&admin_token[20..]));
}

/// 2. Revoking a token ends the streams it opened within a second (a
///    subscription and a backend's load-report stream), and the token is
///    refused afterwards; other tokens' streams stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_tokens_streams_end_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&data(&dir), "127.0.0.1:0", &["--auth"]).expect("daemon");
    let addr = d.addr();
    admin_token(&d).await;
    let victim = token(&d, "victim", "client", &["svc"]);
    let bystander = token(&d, "bystander", "client", &["svc"]);
    let backend = token(&d, "backend", "backend", &["svc"]);

    let mut victim_sub = subscribe(&mut balancer(&addr, &creds(Some(&victim))).await, "svc")
        .await
        .expect("subscribe");
    let mut other_sub = subscribe(&mut balancer(&addr, &creds(Some(&bystander))).await, "svc")
        .await
        .expect("subscribe");
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(pb::ReportLoadRequest {
        msg: Some(pb::report_load_request::Msg::Register(pb::Registration {
            instance: Some(instance("svc", "b1", 7001)),
            ttl_ms: 60_000,
        })),
    })
    .await
    .unwrap();
    let mut reports = registry(&addr, &creds(Some(&backend)))
        .await
        .report_load(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("report stream")
        .into_inner();
    reports.message().await.expect("accepted");

    let started = Instant::now();
    let out = ctl_ok(&d, &["token", "revoke", "victim"]);
    assert!(out.contains("revoked victim"), "{out}");
    let ended = tokio::time::timeout(Duration::from_secs(1), end(&mut victim_sub))
        .await
        .expect("the revoked token's stream ends within a second");
    let took = started.elapsed();
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");
    assert!(ended.message().contains("revoked"), "{ended:?}");
    println!("revoked stream ended {took:?} after `ctl token revoke` started");

    ctl_ok(&d, &["token", "revoke", "backend"]);
    let ended = tokio::time::timeout(Duration::from_secs(1), end(&mut reports))
        .await
        .expect("the backend's stream ends within a second");
    assert_eq!(ended.code(), Code::Unauthenticated, "{ended:?}");

    // The bystander's subscription is still live: the backend leaving
    // (its stream ended) reaches it.
    let next = tokio::time::timeout(WAIT, other_sub.message())
        .await
        .expect("the other stream lives on");
    assert!(next.is_ok(), "{next:?}");
    let s = subscribe(&mut balancer(&addr, &creds(Some(&victim))).await, "svc")
        .await
        .unwrap_err();
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
}

/// 3. TLS: a plaintext caller fails with a clear error; lb-client and ctl
///    with the CA work; with `--tls-client-ca` a caller without a client
///    certificate is refused, and a certificate identity bound to a role
///    (`token create --identity`) stands in for a token; new certificates
///    are picked up on SIGHUP while an open stream carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mtls_are_enforced_and_certificates_reload() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path(), "lb").unwrap();
    let server = pki.server("daemon", &[]).unwrap();
    let web = pki.client("web", "spiffe://lb.test/web").unwrap();
    let data = data(&dir);
    let p = |p: &Path| p.display().to_string();
    let (cert, key, ca) = (p(&server.cert), p(&server.key), p(pki.ca_file()));
    let d = Daemon::start(
        &data,
        "127.0.0.1:0",
        &[
            "--auth",
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
    .expect("daemon");
    let addr = d.addr();
    let admin_token = admin_token(&d).await;
    let tls = |c: Credentials| c.with_ca_pem(pki.ca_pem());
    let mtls = |c: Credentials| {
        tls(c)
            .with_identity_files(&web.cert, &web.key)
            .expect("client cert")
    };

    // Plaintext: the call fails saying the daemon serves TLS; so does ctl.
    let ch = channel(&addr, &creds(Some(&admin_token)))
        .await
        .expect("TCP connects");
    let s = AdminClient::new(ch)
        .list_services(pb::ListServicesRequest {})
        .await
        .expect_err("plaintext is refused");
    assert_eq!(s.code(), Code::Unavailable, "{s:?}");
    assert!(s.message().contains("serves TLS"), "{s:?}");
    let out = ctl(&d, None, &["services"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serves TLS") && err.contains("--ca"), "{err}");

    // TLS without a client certificate: refused in the handshake.
    let no_cert = tls(creds(Some(&admin_token)));
    let r = match channel(&addr, &no_cert).await {
        Err(e) => Err(e),
        Ok(ch) => AdminClient::with_interceptor(ch, Authorize::new(&no_cert))
            .list_services(pb::ListServicesRequest {})
            .await
            .map(|_| ())
            .map_err(|s| format!("{s:?}")),
    };
    assert!(r.is_err(), "mTLS requires a client certificate");

    // ctl over mTLS with the admin token; bind the web identity to a role.
    let out = ctl(
        &d,
        None,
        &[
            "--ca",
            &ca,
            "--cert",
            &p(&web.cert),
            "--key",
            &p(&web.key),
            "token",
            "create",
            "--name",
            "web-cert",
            "--role",
            "client",
            "--service",
            "echo",
            "--identity",
            "spiffe://lb.test/web",
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The certificate alone (no token) subscribes to its service only.
    let cert_only = mtls(Credentials::default());
    let mut b = balancer(&addr, &cert_only).await;
    let mut sub = subscribe(&mut b, "echo")
        .await
        .expect("identity subscribes");
    let s = subscribe(&mut b, "other").await.unwrap_err();
    assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

    // Reload: a certificate from a new CA, on SIGHUP. New connections need
    // the new CA; the open stream goes on (a change still reaches it).
    let pki2 = Pki::new(&dir.path().join("ca2"), "lb2").unwrap();
    let server2 = pki2.server("daemon2", &[]).unwrap();
    std::fs::copy(&server2.cert, &server.cert).unwrap();
    std::fs::copy(&server2.key, &server.key).unwrap();
    let pid = d.proc.pid().to_string();
    assert!(Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap()
        .success());
    let new_ca = Credentials::default()
        .with_ca_pem(pki2.ca_pem())
        .with_identity_files(&web.cert, &web.key)
        .unwrap();
    let mut reloaded = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(ch) = channel(&addr, &new_ca).await {
            let mut b = BalancerClient::with_interceptor(ch, Authorize::new(&new_ca));
            if subscribe(&mut b, "echo").await.is_ok() {
                reloaded = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reloaded, "the new certificate is served after SIGHUP");
    assert!(
        channel(&addr, &mtls(Credentials::default())).await.is_err()
            || subscribe(&mut balancer(&addr, &cert_only).await, "echo")
                .await
                .is_err(),
        "the old CA no longer verifies the daemon"
    );
    // Changed files are picked up without a signal too (checked every 2 s).
    let pki3 = Pki::new(&dir.path().join("ca3"), "lb3").unwrap();
    let server3 = pki3.server("daemon3", &[]).unwrap();
    std::fs::copy(&server3.key, &server.key).unwrap();
    std::fs::copy(&server3.cert, &server.cert).unwrap();
    let ca3 = Credentials::default()
        .with_ca_pem(pki3.ca_pem())
        .with_identity_files(&web.cert, &web.key)
        .unwrap();
    let mut watched = false;
    let deadline = Instant::now() + WAIT;
    while Instant::now() < deadline {
        if let Ok(ch) = channel(&addr, &ca3).await {
            let mut b = BalancerClient::with_interceptor(ch, Authorize::new(&ca3));
            if subscribe(&mut b, "echo").await.is_ok() {
                watched = true;
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        watched,
        "a changed certificate file is served without SIGHUP"
    );
    let new_ca = ca3;

    // The stream opened before the reloads still gets lists.
    let admin_mtls = new_ca.clone().with_token(&admin_token);
    admin(&addr, &admin_mtls)
        .await
        .put_static(pb::PutStaticRequest {
            instance: Some(instance("echo", "s1", 7100)),
            create: true,
        })
        .await
        .expect("put-static over the reloaded certificate");
    let update = tokio::time::timeout(WAIT, sub.message())
        .await
        .expect("the old stream still gets lists")
        .expect("no error")
        .expect("a list");
    let servers = update.list.map(|l| l.servers.len()).unwrap_or_default();
    assert_eq!(servers, 1, "{servers}");
}

/// 4. Beyond loopback without TLS and authentication the daemon refuses to
///    start (before it listens), saying what is missing; `--insecure`
///    starts it with a warning (run in a network namespace of its own, so
///    nothing beyond this test can reach it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_needs_tls_and_auth_unless_insecure() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(bin("lb-server").unwrap())
        .args(["--listen", "0.0.0.0:0", "--data-dir"])
        .arg(data(&dir))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("refusing to serve 0.0.0.0:0 without TLS and authentication"),
        "{err}"
    );
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("listening"),
        "it never listened"
    );
    let out = Command::new(bin("lb-server").unwrap())
        .args(["--listen", "0.0.0.0:0", "--auth", "--data-dir"])
        .arg(data(&dir))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("without TLS"),
        "{out:?}"
    );

    let unshare = Command::new("unshare").args(["-n", "true"]).status();
    if !unshare.is_ok_and(|s| s.success()) {
        println!("SKIPPED the --insecure half: `unshare -n` is not allowed here");
        return;
    }
    let log = dir.path().join("insecure.log");
    let args: Vec<String> = [
        "-n",
        &bin("lb-server").unwrap().display().to_string(),
        "--listen",
        "0.0.0.0:0",
        "--insecure",
        "--data-dir",
        &dir.path().join("ns").display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let p = lb_tests::harness::Proc::spawn(Path::new("/usr/bin/unshare"), &args, log, WAIT)
        .expect("--insecure starts");
    assert!(
        wait_until(WAIT, || p.log().contains("--insecure: serving")).await,
        "{}",
        p.log()
    );
}

/// 5. Connections that never finish their handshake are closed by
///    `--handshake-timeout` while the daemon keeps answering, and a stream
///    that never sends its first message is closed by
///    `--first-message-timeout`; both are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_and_silent_streams_are_closed_by_their_deadlines() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &data(&dir),
        "127.0.0.1:0",
        &[
            "--handshake-timeout",
            "1s",
            "--first-message-timeout",
            "1s",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .expect("daemon");
    let addr = d.addr();
    let opened = Instant::now();
    let mut idle = Vec::new();
    for _ in 0..500 {
        idle.push(
            tokio::net::TcpStream::connect(&addr)
                .await
                .expect("connect"),
        );
    }
    // The daemon answers while they are open.
    let mut a = admin(&addr, &Credentials::default()).await;
    a.list_services(pb::ListServicesRequest {})
        .await
        .expect("answers with 500 idle connections open");
    // Each is closed by the deadline: EOF (or a reset) within it plus slack.
    let closed = tokio::time::timeout(WAIT, async {
        for s in &mut idle {
            let mut buf = [0u8; 64];
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "all 500 closed");
    let took = opened.elapsed();
    assert!(
        took >= Duration::from_secs(1),
        "not before the deadline: {took:?}"
    );
    println!("500 idle connections closed {took:?} after they opened (deadline 1 s)");
    let page = scrape(&d, None).unwrap();
    assert_eq!(
        sample(&page, "lb_limit_refused_total{limit=\"handshake_timeout\"}"),
        Some(500.0),
        "{page}"
    );

    // A stream with no first message.
    let mut b = BalancerClient::new(channel(&addr, &Credentials::default()).await.unwrap());
    let started = Instant::now();
    let s = b
        .subscribe(tokio_stream::pending::<pb::SubscribeRequest>())
        .await
        .map(|_| ())
        .unwrap_err();
    assert_eq!(s.code(), Code::DeadlineExceeded, "{s:?}");
    assert!(s.message().contains("--first-message-timeout"), "{s:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let page = scrape(&d, None).unwrap();
    assert_eq!(
        sample(
            &page,
            "lb_limit_refused_total{limit=\"first_message_timeout\"}"
        ),
        Some(1.0),
        "{page}"
    );
}

/// 5b. Past `--max-connections`, a new connection is closed at accept (and
///    counted); once others close, connections are served again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_past_the_limit_are_closed_at_accept() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &data(&dir),
        "127.0.0.1:0",
        &["--max-connections", "3", "--metrics-listen", "127.0.0.1:0"],
    )
    .expect("daemon");
    let addr = d.addr();
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(tokio::net::TcpStream::connect(&addr).await.unwrap());
    }
    // Wait until the daemon holds all three (accepted, in its loop).
    let mut extra = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(WAIT, extra.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "the fourth connection is closed at once: {closed:?}"
    );
    let page = scrape(&d, None).unwrap();
    assert!(
        sample(&page, "lb_limit_refused_total{limit=\"max_connections\"}") >= Some(1.0),
        "{page}"
    );
    drop(idle);
    // Slots come back as the idle ones go.
    let deadline = Instant::now() + WAIT;
    let mut served = false;
    while !served && Instant::now() < deadline {
        if let Ok(ch) = channel(&addr, &Credentials::default()).await {
            served = AdminClient::new(ch)
                .list_services(pb::ListServicesRequest {})
                .await
                .is_ok();
        }
    }
    assert!(served, "served again once the idle connections closed");
}

/// An HTTP/2 client written frame by frame (RFC 9113), which, unlike a real
/// one, ignores the server's SETTINGS_MAX_CONCURRENT_STREAMS: the attack.
mod raw_h2 {
    pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    pub const HEADERS: u8 = 0x1;
    pub const RST_STREAM: u8 = 0x3;
    pub const SETTINGS: u8 = 0x4;
    pub const PING: u8 = 0x6;
    pub const GOAWAY: u8 = 0x7;

    /// One frame: 9-byte header (RFC 9113 §4.1) and payload.
    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = Vec::with_capacity(9 + payload.len());
        f.extend_from_slice(&len.to_be_bytes()[1..]);
        f.push(kind);
        f.push(flags);
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK string literal, not Huffman-coded (RFC 7541 §5.2; values
    /// here are under 127 bytes, so the length fits the 7-bit prefix).
    fn string(out: &mut Vec<u8>, s: &str) {
        assert!(s.len() < 127);
        out.push(s.len() as u8);
        out.extend_from_slice(s.as_bytes());
    }

    /// The header block of a gRPC request to `path` (RFC 7541: indexed
    /// fields from the static table, literals without indexing).
    pub fn request_headers(path: &str) -> Vec<u8> {
        let mut b = vec![0x83, 0x86]; // :method POST, :scheme http
        b.push(0x04); // :path (static index 4), literal value
        string(&mut b, path);
        b.push(0x01); // :authority (static index 1)
        string(&mut b, "lb");
        b.extend_from_slice(&[0x0f, 0x10]); // content-type (static index 31)
        string(&mut b, "application/grpc");
        b.push(0x00); // a new name: te
        string(&mut b, "te");
        string(&mut b, "trailers");
        b
    }
}

/// What the raw client has read so far.
#[derive(Debug, Default, Clone, Copy)]
struct Seen {
    /// RST_STREAM frames with REFUSED_STREAM.
    refused: u32,
    /// GOAWAY's last stream id and error code.
    goaway: Option<(u32, u32)>,
    /// The connection ended.
    closed: bool,
}

/// The daemon's resident memory, from /proc.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// 6. 100,000 streams opened on one connection by a client that ignores
///    the advertised limit: at most `--max-concurrent-streams` are
///    accepted, the rest refused (RST_STREAM REFUSED_STREAM, or the
///    connection closed with GOAWAY), the daemon's memory stays bounded and
///    it keeps answering others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_per_connection_limit_are_refused_with_memory_bounded() {
    use raw_h2::*;
    const STREAMS: u32 = 100_000;
    const LIMIT: u32 = 256; // the default --max-concurrent-streams
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&data(&dir), "127.0.0.1:0", &[]).expect("daemon");
    let addr = d.addr();
    let pid = d.proc.pid();
    let before = rss_kib(pid);

    let sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let (mut rd, wr) = sock.into_split();
    let wr = Arc::new(tokio::sync::Mutex::new(wr));
    // The client preface goes first: the reader below acknowledges the
    // daemon's SETTINGS, and an acknowledgement before the preface would be
    // a protocol error that closes the connection.
    {
        let mut w = wr.lock().await;
        w.write_all(PREFACE).await.unwrap();
        w.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
    }
    // The reader answers SETTINGS and PING (so the connection is not closed
    // for that) and tallies refusals and GOAWAY.
    let (seen_tx, mut seen) = tokio::sync::watch::channel(Seen::default());
    let reader = {
        let wr = Arc::clone(&wr);
        tokio::spawn(async move {
            let (mut refused, mut goaway) = (0u32, None::<(u32, u32)>);
            let mut head = [0u8; 9];
            while rd.read_exact(&mut head).await.is_ok() {
                let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
                let (kind, flags) = (head[3], head[4]);
                let mut payload = vec![0u8; len];
                if rd.read_exact(&mut payload).await.is_err() {
                    break;
                }
                let word = |i: usize| {
                    u32::from_be_bytes([payload[i], payload[i + 1], payload[i + 2], payload[i + 3]])
                };
                match kind {
                    RST_STREAM if len == 4 && word(0) == 0x7 => refused += 1,
                    GOAWAY if len >= 8 => goaway = Some((word(0) & 0x7fff_ffff, word(4))),
                    SETTINGS if flags & 1 == 0 => {
                        let ack = frame(SETTINGS, 1, 0, &[]);
                        let _ = wr.lock().await.write_all(&ack).await;
                    }
                    PING if flags & 1 == 0 => {
                        let pong = frame(PING, 1, 0, &payload);
                        let _ = wr.lock().await.write_all(&pong).await;
                    }
                    _ => {}
                }
                seen_tx.send_replace(Seen {
                    refused,
                    goaway,
                    closed: false,
                });
            }
            seen_tx.send_replace(Seen {
                refused,
                goaway,
                closed: true,
            });
        })
    };
    let block = request_headers("/lb.v1.Balancer/Subscribe");
    let mut sent = 0u32;
    'send: for chunk in (0..STREAMS).collect::<Vec<_>>().chunks(1000) {
        let mut buf = Vec::new();
        for i in chunk {
            // END_HEADERS, not END_STREAM: each stream stays open.
            buf.extend(frame(HEADERS, 0x4, 2 * i + 1, &block));
        }
        if wr.lock().await.write_all(&buf).await.is_err() {
            break 'send; // the daemon closed the connection
        }
        sent += chunk.len() as u32;
    }
    // Done when every stream past the limit is refused, or the daemon
    // sent GOAWAY (it may keep the accepted ones open until they end).
    let outcome = tokio::time::timeout(
        Duration::from_secs(30),
        seen.wait_for(|s| s.closed || s.goaway.is_some() || s.refused + LIMIT >= sent),
    )
    .await
    .expect("refusals or GOAWAY")
    .map(|s| *s)
    .unwrap_or_default();
    let peak = rss_kib(pid);
    reader.abort();
    let Seen {
        refused, goaway, ..
    } = outcome;
    let last = goaway.map_or(2 * STREAMS, |(last, _)| last);
    let considered = last.div_ceil(2).min(sent);
    let accepted = considered.saturating_sub(refused);
    println!(
        "sent {sent} stream openings; refused {refused}; GOAWAY {goaway:?}; \
         accepted at most {accepted}; RSS {before} -> {peak} KiB"
    );
    assert!(accepted <= LIMIT, "{accepted} accepted > {LIMIT}");
    assert!(
        peak.saturating_sub(before) < 64 * 1024,
        "RSS grew from {before} to {peak} KiB"
    );
    // Still answering.
    let mut a = admin(&addr, &Credentials::default()).await;
    a.list_services(pb::ListServicesRequest {})
        .await
        .expect("answers after the attack");
}

/// An open subscription: its lists, and its request side (dropping both
/// ends the stream, as a client going away does).
#[derive(Debug)]
struct Sub {
    _lists: tonic::Streaming<pb::SubscribeResponse>,
    requests: tokio::sync::mpsc::Sender<pb::SubscribeRequest>,
}

/// Opens a Subscribe stream for `service` as `client_id`.
async fn subscribe_as(
    client: &mut BalancerClient<Authed>,
    service: &str,
    client_id: &str,
) -> Result<Sub, Status> {
    let first = pb::SubscribeRequest {
        msg: Some(subscribe_request::Msg::Subscribe(pb::Subscription {
            service: service.into(),
            client: Some(pb::ClientIdentity {
                client_id: client_id.into(),
                ..Default::default()
            }),
            ..Default::default()
        })),
    };
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    tx.send(first).await.expect("queued");
    let requests = tokio_stream::wrappers::ReceiverStream::new(rx);
    let mut stream = client.subscribe(requests).await?.into_inner();
    match stream.message().await? {
        Some(_) => Ok(Sub {
            _lists: stream,
            requests: tx,
        }),
        None => Err(Status::unknown("the stream ended without a list")),
    }
}

/// Asserts a refusal by the limit behind `flag`.
fn limited<T>(r: Result<T, Status>, flag: &str) {
    match r {
        Ok(_) => panic!("not refused by {flag}"),
        Err(s) => {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            assert!(s.message().contains(flag), "{flag}: {s:?}");
        }
    }
}

/// 7. The per-token and per-client limits bite with `resource_exhausted`
///    naming their flag, and are counted: calls open per token, connections
///    per token, subscriptions per client id, the admin write rate; and
///    `--grpclb-anonymous` opens grpclb lists of the public services only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_token_and_per_client_limits_bite_and_are_counted() {
    use lb_proto::grpclb::{
        load_balance_request::LoadBalanceRequestType, load_balancer_client::LoadBalancerClient,
        InitialLoadBalanceRequest, LoadBalanceRequest,
    };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(
        &data(&dir),
        "127.0.0.1:0",
        &[
            "--auth",
            "--max-streams-per-token",
            "3",
            "--max-connections-per-token",
            "2",
            "--max-subscriptions-per-client",
            "2",
            "--admin-write-rate",
            "5",
            "--grpclb-anonymous",
            "public-*",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
    )
    .expect("daemon");
    let addr = d.addr();
    let admin_token = admin_token(&d).await;

    // Calls open per token: three on one connection, the fourth refused.
    let streams = creds(Some(&token(&d, "streams", "client", &["*"])));
    let mut b = balancer(&addr, &streams).await;
    let mut open = Vec::new();
    for i in 0..3 {
        open.push(
            subscribe_as(&mut b, "svc", &format!("s{i}"))
                .await
                .expect("within"),
        );
    }
    limited(
        subscribe_as(&mut b, "svc", "s3").await,
        "--max-streams-per-token",
    );
    drop(open.pop());
    // A stream given back is a slot again (the daemon learns of the reset
    // at once, but give it a moment under load).
    let mut again = Err(Status::unknown("not tried"));
    for _ in 0..100 {
        again = subscribe_as(&mut b, "svc", "s3").await;
        if again.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(again.is_ok(), "{again:?}");

    // Connections per token: two, and a third connection is refused.
    let conns = creds(Some(&token(&d, "conns", "client", &["*"])));
    let mut held = Vec::new();
    for i in 0..2 {
        let mut c = balancer(&addr, &conns).await;
        held.push(
            subscribe_as(&mut c, "svc", &format!("c{i}"))
                .await
                .expect("within"),
        );
    }
    let mut third = balancer(&addr, &conns).await;
    limited(
        subscribe_as(&mut third, "svc", "c2").await,
        "--max-connections-per-token",
    );

    // Subscriptions per client id.
    let same = creds(Some(&token(&d, "same-id", "client", &["*"])));
    let mut c = balancer(&addr, &same).await;
    let _one = subscribe_as(&mut c, "svc", "dup").await.expect("first");
    let _two = subscribe_as(&mut c, "other", "dup").await.expect("second");
    limited(
        subscribe_as(&mut c, "third", "dup").await,
        "--max-subscriptions-per-client",
    );

    // The admin write rate: 5 per second (burst 5); 20 changes at once.
    let mut a = admin(&addr, &creds(Some(&admin_token))).await;
    let mut refused = 0;
    for i in 0..20 {
        let r = a
            .put_static(pb::PutStaticRequest {
                instance: Some(instance("static", &format!("s{i}"), 7000 + i)),
                create: true,
            })
            .await;
        if let Err(s) = r {
            assert_eq!(s.code(), Code::ResourceExhausted, "{s:?}");
            assert!(s.message().contains("--admin-write-rate"), "{s:?}");
            refused += 1;
        }
    }
    // At most the burst (5, shared with the token creations above) and what
    // refilled meanwhile passed.
    assert!(refused >= 5, "{refused} of 20 refused");
    // The bucket refills: a change goes through again within a second or so.
    let deadline = Instant::now() + WAIT;
    let mut later = a
        .put_static(pb::PutStaticRequest {
            instance: Some(instance("static", "later", 7999)),
            create: true,
        })
        .await;
    while later.is_err() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        later = a
            .put_static(pb::PutStaticRequest {
                instance: Some(instance("static", "later", 7999)),
                create: true,
            })
            .await;
    }
    assert!(later.is_ok(), "{later:?}");

    // grpclb: anonymous for public-* only.
    let ch = channel(&addr, &Credentials::default()).await.unwrap();
    let mut g = LoadBalancerClient::new(ch);
    let initial = |name: &str| {
        tokio_stream::once(LoadBalanceRequest {
            load_balance_request_type: Some(LoadBalanceRequestType::InitialRequest(
                InitialLoadBalanceRequest { name: name.into() },
            )),
        })
        .chain(tokio_stream::pending())
    };
    let mut public = g
        .balance_load(initial("public-web:443"))
        .await
        .expect("public service")
        .into_inner();
    assert!(public.message().await.expect("answer").is_some());
    let s = match g.balance_load(initial("private:443")).await {
        Err(s) => s,
        Ok(r) => end(&mut r.into_inner()).await,
    };
    assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");

    let page = scrape(&d, Some(&admin_token)).unwrap();
    for limit in [
        "streams_per_token",
        "connections_per_token",
        "subscriptions_per_client",
        "admin_write_rate",
    ] {
        let n = sample(
            &page,
            &format!("lb_limit_refused_total{{limit=\"{limit}\"}}"),
        );
        assert!(n >= Some(1.0), "{limit}: {n:?}\n{page}");
    }
    assert_eq!(sample(&page, "lb_insecure"), Some(0.0));
}

/// `ctl get echo`'s line for `instance`.
fn instance_line(d: &Daemon, instance: &str) -> String {
    lb_tests::harness::instance_line(&ctl_ok(d, &["get", "echo"]), instance)
}

/// 8. With authentication on, client stats count per credential (lb-core's
///    `evidence`): one client token under two client ids is one witness and
///    ejects nothing, however long it insists; two tokens that agree eject.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_token_under_many_client_ids_is_one_witness() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&data(&dir), "127.0.0.1:0", &["--auth"]).expect("daemon");
    let addr = d.addr();
    let admin = creds(Some(&admin_token(&d).await));
    ctl_ok(
        &d,
        &[
            "set-policy",
            "echo",
            "round_robin",
            "-p",
            "eject_max_percent=100",
            "--create",
        ],
    );
    let mut reg = registry(&addr, &admin).await;
    for (id, port) in [("b1", 7101), ("b2", 7102), ("b3", 7103)] {
        reg.register(lease(instance("echo", id, port)))
            .await
            .expect("register");
    }
    let mallory = creds(Some(&token(&d, "mallory", "client", &["echo"])));
    let alice = creds(Some(&token(&d, "alice", "client", &["echo"])));
    let bob = creds(Some(&token(&d, "bob", "client", &["echo"])));

    // Mallory's one token subscribes as two clients, both of which say that
    // every call to b2 fails, in runs of 10⁹, twenty times a second.
    let mut streams = Vec::new();
    for id in ["m1", "m2"] {
        let sub = subscribe_as(&mut balancer(&addr, &mallory).await, "echo", id)
            .await
            .expect("mallory subscribes");
        streams.push(sub);
    }
    let senders: Vec<_> = streams.iter().map(|s| s.requests.clone()).collect();
    let forger = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(50));
        loop {
            tick.tick().await;
            for tx in &senders {
                if tx.send(failure_stats("b2", 1_000_000_000)).await.is_err() {
                    return;
                }
            }
        }
    });
    assert!(
        wait_until(WAIT, || instance_line(&d, "b2").contains("1000000000")).await,
        "the daemon takes mallory's reports in: {}",
        instance_line(&d, "b2")
    );

    // Alice and Bob, two credentials, each see a run of 5 on b3: ejected.
    for (who, c) in [("alice", &alice), ("bob", &bob)] {
        let sub = subscribe_as(&mut balancer(&addr, c).await, "echo", who)
            .await
            .expect("subscribes");
        sub.requests
            .send(failure_stats("b3", 5))
            .await
            .expect("stats sent");
        streams.push(sub);
    }
    assert!(
        wait_until(WAIT, || instance_line(&d, "b3").contains("EJECTED")).await,
        "two credentials that agree eject: {}",
        instance_line(&d, "b3")
    );
    // By now mallory's two ids have sent runs far past the threshold for
    // seconds; as two witnesses they would have ejected b2 at once.
    let b2 = instance_line(&d, "b2");
    assert!(!b2.contains("EJECTED"), "one token is one witness: {b2}");
    forger.abort();
}
