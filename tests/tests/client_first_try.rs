//! The first hour with lb-client, end to end (real `lb-server`, real
//! `echo-backend`): the README's snippet works on its first call; a
//! daemon that cannot be reached, that wants a token, or whose certificate
//! the client does not trust, fails `subscribe` at once with an error that
//! names the daemon and the cause; an unknown service subscribes and its
//! calls say why they fail; and one process's subscriptions and reporter
//! share one connection to the daemon, across a daemon kill -9 and restart.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_client::daemon::DaemonError;
use lb_client::{
    subscribe, ClientOptions, Code, Credentials, Error, LoadSample, Registration, Reporter,
    ReporterError, ReporterOptions,
};
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;
use lb_tests::harness::{
    connections_to, ctl_command, ids, set, succeeded, wait_ids, wait_until, BackendSpec, Cluster,
    Daemon, WAIT,
};
use lb_tests::pki::Pki;

/// A loopback address nothing listens on: bound, noted, closed.
fn refusing_address() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").to_string()
}

/// Waits until the daemon lists exactly `want` for `service`, through a
/// subscription that is closed again (so its connection is too).
async fn until_listed(c: &Cluster, service: &str, want: &[&str]) {
    let probe = c.client(service).await;
    wait_ids(&probe, &set(want)).await;
    probe.shutdown(Duration::from_secs(1)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_snippet_succeeds_on_its_first_call() {
    let c = Cluster::start(&[], &[BackendSpec::new("echo", "b1", 1)]);
    until_listed(&c, "echo", &["b1"]).await;
    let addr = c.daemon.addr();
    // Fresh each time: a new subscription on a new connection.
    for round in 0..3 {
        // As in the README, nothing in between.
        let sub = lb_client::subscribe("echo", ClientOptions::new(&addr))
            .await
            .expect("subscribe");
        let mut client = EchoClient::new(sub.channel());
        let reply = client
            .whoami(WhoamiRequest {})
            .await
            .unwrap_or_else(|s| panic!("round {round}: the first call failed: {s:?}"));
        assert_eq!(reply.into_inner().instance_id, "b1");
        sub.shutdown(Duration::from_secs(1)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_subscribes_and_its_calls_say_why_they_fail() {
    let mut c = Cluster::start(&[], &[]);
    let addr = c.daemon.addr();
    let sub = subscribe("not-yet", ClientOptions::new(&addr))
        .await
        .expect("an unknown service subscribes: callers may start before backends");
    assert!(
        sub.version() > 0,
        "the daemon's (empty) list, not a fallback"
    );
    assert!(sub.current().is_empty());
    let mut client = EchoClient::new(sub.channel());
    let status = client.whoami(WhoamiRequest {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.message(),
        format!(
            "no backend available for \"not-yet\": the lb daemon at {addr} lists no instance of it (none registered, or all drained or ejected)"
        )
    );
    // The backend comes later; the same subscription follows.
    c.add(&BackendSpec::new("not-yet", "late", 1));
    wait_ids(&sub, &set(&["late"])).await;
    let reply = client.whoami(WhoamiRequest {}).await.expect("call");
    assert_eq!(reply.into_inner().instance_id, "late");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_connection_fails_at_once_naming_the_daemon() {
    let addr = refusing_address();
    let started = Instant::now();
    let err = subscribe("echo", ClientOptions::new(&addr))
        .await
        .expect_err("nothing listens there");
    // A definite answer, not the end of the first-list wait.
    assert!(
        matches!(&err, Error::Daemon { cause: DaemonError::ConnectionRefused { daemon }, .. } if *daemon == addr),
        "{err:?}"
    );
    assert!(started.elapsed() < lb_client::subscription::DEFAULT_FIRST_LIST_TIMEOUT);
    let text = err.to_string();
    assert!(
        text.contains(&addr) && text.contains("connection refused"),
        "{text}"
    );

    // The reporter retries by itself; its last error says the same.
    let mut options = ReporterOptions::new(&addr);
    options.sampler = Some(Arc::new(LoadSample::default));
    let reporter = Reporter::start(Registration::new("echo", "b1", "127.0.0.1:9"), options);
    assert!(wait_until(WAIT, || reporter.last_error().is_some()).await);
    assert_eq!(
        reporter.last_error(),
        Some(DaemonError::ConnectionRefused {
            daemon: addr.clone()
        })
    );
    let err = reporter
        .wait_registered(Duration::from_millis(1))
        .await
        .unwrap_err();
    assert!(matches!(err, ReporterError::Timeout { last: Some(_), .. }));
    assert!(err.to_string().ends_with("connection refused"), "{err}");
    reporter.shutdown(Duration::from_secs(1)).await;
}

/// `lb-server ctl` with the daemon's data directory (its admin token).
fn ctl(d: &Daemon, args: &[&str]) -> String {
    let out = ctl_command(&d.addr(), &d.data_dir)
        .args(args)
        .output()
        .expect("run lb-server ctl");
    succeeded(out, &format!("ctl {args:?}")).trim().to_string()
}

fn with_token(addr: &str, token: &str) -> ClientOptions {
    ClientOptions::new(addr).with_credentials(Credentials::default().with_token(token))
}

/// The refusal `subscribe` failed with.
fn refusal(err: &Error) -> (Code, &str) {
    match err {
        Error::Daemon {
            cause: DaemonError::Refused { code, message, .. },
            ..
        } => (*code, message),
        other => panic!("not a refusal: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_that_wants_a_token_says_unauthenticated() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &["--auth"]).expect("daemon");
    let addr = d.addr();
    let admin = d.data_dir.join("admin.token");
    assert!(
        wait_until(WAIT, || std::fs::metadata(&admin)
            .is_ok_and(|m| m.len() > 0))
        .await,
        "no admin token"
    );

    let err = subscribe("echo", ClientOptions::new(&addr))
        .await
        .expect_err("no token");
    assert_eq!(refusal(&err).0, Code::Unauthenticated);
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot subscribe to \"echo\": the lb daemon at {addr} refused: unauthenticated: "
        )),
        "{text}"
    );
    let err = subscribe("echo", with_token(&addr, "lbt_not_a_token"))
        .await
        .expect_err("unknown token");
    assert_eq!(refusal(&err).0, Code::Unauthenticated, "{err}");

    // A client token for echo: subscribes to echo, and only to echo.
    let web = ctl(
        &d,
        &[
            "token",
            "create",
            "--name",
            "web",
            "--role",
            "client",
            "--service",
            "echo",
        ],
    );
    let sub = subscribe("echo", with_token(&addr, &web))
        .await
        .expect("a client token subscribes");
    assert!(sub.connected());
    let err = subscribe("payments", with_token(&addr, &web))
        .await
        .expect_err("out of the token's scope");
    let (code, message) = refusal(&err);
    assert_eq!(code, Code::PermissionDenied);
    assert!(message.contains("payments"), "{message}");
    assert!(
        err.to_string().contains("refused: permission_denied: "),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_the_client_does_not_trust_is_a_tls_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(dir.path(), "lb").expect("pki");
    let stranger = Pki::new(&dir.path().join("other"), "other").expect("pki");
    let server = pki.server("daemon", &[]).expect("server certificate");
    let p = |p: &Path| p.display().to_string();
    let d = Daemon::start(
        &dir.path().join("data"),
        "127.0.0.1:0",
        &["--tls-cert", &p(&server.cert), "--tls-key", &p(&server.key)],
    )
    .expect("daemon");
    let addr = d.addr();
    let tls = |pem: String| {
        ClientOptions::new(&addr).with_credentials(Credentials::default().with_ca_pem(pem))
    };

    let err = subscribe("echo", tls(stranger.ca_pem()))
        .await
        .expect_err("another CA signed the daemon's certificate");
    assert!(
        matches!(
            &err,
            Error::Daemon {
                cause: DaemonError::Tls { .. },
                ..
            }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "cannot subscribe to \"echo\": TLS handshake with the lb daemon at {addr} failed: "
        )),
        "{text}"
    );
    assert!(text.to_lowercase().contains("certificate"), "{text}");

    // Plaintext on the TLS port: the daemon says so, at once.
    let err = subscribe("echo", ClientOptions::new(&addr))
        .await
        .expect_err("plaintext");
    let (code, message) = refusal(&err);
    assert_eq!(code, Code::Unavailable);
    assert!(message.contains("serves TLS"), "{message}");

    // The right CA.
    let sub = subscribe("echo", tls(pki.ca_pem())).await.expect("trusted");
    assert!(sub.connected());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_and_the_reporter_share_one_connection_across_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    let mut d = Daemon::start(&data, "127.0.0.1:0", &[]).expect("daemon");
    let addr = d.addr();
    let port = d.proc.addr.port();
    assert_eq!(connections_to(port), 0);

    let mut options = ReporterOptions::new(&addr);
    options.sampler = Some(Arc::new(LoadSample::default));
    let reporter = Reporter::start(Registration::new("svc-0", "i-0", "127.0.0.1:9"), options);
    let mut subs = Vec::new();
    for i in 0..5 {
        subs.push(
            subscribe(&format!("svc-{i}"), ClientOptions::new(&addr))
                .await
                .expect("subscribe"),
        );
    }
    reporter.wait_registered(WAIT).await.expect("registered");
    wait_ids(&subs[0], &set(&["i-0"])).await;
    assert_eq!(
        connections_to(port),
        1,
        "five subscriptions and a reporter, one connection"
    );

    // kill -9 and restart on the same port: everyone reconnects, still on one.
    d.proc.kill9();
    assert!(wait_until(WAIT, || subs.iter().all(|s| !s.connected())).await);
    assert!(subs.iter().all(|s| s.last_error().is_some()));
    d = Daemon::start(&data, &format!("127.0.0.1:{port}"), &[]).expect("restart");
    assert!(
        wait_until(WAIT, || subs.iter().all(|s| s.connected())
            && reporter.registered())
        .await,
        "everyone reconnects: {:?}",
        subs.iter().map(|s| s.last_error()).collect::<Vec<_>>()
    );
    assert!(subs.iter().all(|s| s.last_error().is_none()));
    assert_eq!(ids(&subs[0].current()), set(&["i-0"]));
    assert!(
        wait_until(WAIT, || connections_to(port) == 1).await,
        "one connection after the restart, not {}",
        connections_to(port)
    );
    drop(d);
}
