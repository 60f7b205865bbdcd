//! A stock gRPC client follows lb through grpc.lb.v1: unmodified grpcio
//! (gRPC's C-core) with its built-in `grpclb` policy, finding the balancer
//! through DNS SRV records served on loopback, calling real `echo-backend`
//! processes on distinct loopback IPs. The Python side is
//! `tests/python/grpclb_client.py`; its virtualenv (pinned grpcio and dnslib)
//! is made by `scripts/python-env.sh` on first use.
//!
//! grpclb's pitfall: a client that never engages grpclb silently uses the
//! name's A records. The name's A record points at a separate fallback
//! backend (127.0.0.20), and every phase asserts it got nothing, except the
//! one where the daemon sends `fallback_response` on purpose.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use lb_proto::v1 as pb;
use lb_tests::harness::{ctl, ctl_command, succeeded, wait_until, BackendSpec, Cluster, WAIT};
use lb_tests::pki::Pki;
use lb_tests::stock::{StockClient, CONVERGE};

/// The DNS name stock clients dial, and the service it maps to.
const NAME: &str = "echo.test";
/// The grpcio client of `tests/python/grpclb_client.py`, resolving NAME
/// through its own DNS server.
fn grpclb_client(
    lb_port: u16,
    target_port: u16,
    fallback_ip: &str,
    extra: &[String],
) -> StockClient {
    let mut args: Vec<String> = vec![
        "--name".into(),
        NAME.into(),
        "--lb-port".into(),
        lb_port.to_string(),
        "--target-port".into(),
        target_port.to_string(),
        "--fallback-ip".into(),
        fallback_ip.into(),
    ];
    args.extend(extra.iter().cloned());
    let c = StockClient::start("grpclb_client.py", &args);
    assert!(c.hello["dns_port"].as_u64().is_some(), "{}", c.hello);
    c
}

fn on(service: &str, id: &str, weight: u32, ip: &str) -> BackendSpec {
    let mut b = BackendSpec::new(service, id, weight);
    b.extra = vec!["--listen".into(), format!("{ip}:0")];
    b
}

fn counts(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
    pairs.iter().map(|(k, v)| (k.to_string(), *v)).collect()
}

async fn status(daemon: &str) -> pb::ServiceStatus {
    let mut admin = pb::admin_client::AdminClient::connect(format!("http://{daemon}"))
        .await
        .expect("connect admin");
    admin
        .get_service(pb::GetServiceRequest {
            service: NAME.into(),
        })
        .await
        .expect("get the service")
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_grpcio_client_follows_lb_through_grpclb() {
    let mut c = Cluster::start(
        &["--stats-interval", "200ms"],
        &[
            on(NAME, "b1", 1, "127.0.0.11"),
            on(NAME, "b2", 3, "127.0.0.12"),
            // Registers elsewhere; added to NAME below as a static instance.
            on("static.backing", "s13", 1, "127.0.0.13"),
            // The A-record (fallback) backend: must see nothing while grpclb works.
            on("fallback.only", "fallback", 1, "127.0.0.20"),
        ],
    );
    let daemon = c.daemon.addr();
    // Backends may not have registered yet: --create makes the service.
    ctl(
        &daemon,
        &["set-policy", NAME, "weighted_round_robin", "--create"],
    )
    .expect("set-policy");
    let s13 = c.backends["s13"].addr.to_string();
    ctl(&daemon, &["put-static", NAME, "s13", &s13, "--weight", "2"]).expect("put-static");
    let fallback_port = c.backends["fallback"].addr.port();
    let mut client = grpclb_client(c.daemon.proc.addr.port(), fallback_port, "127.0.0.20", &[]);

    // Weights 1:3:2 over a period of 6: 60 calls once every backend is
    // connected are exactly 10/30/20, and the fallback backend gets none.
    let b = client.until("shares 1:3:2", 60, |b| {
        b.ok == counts(&[("b1", 10), ("b2", 30), ("s13", 20)])
    });
    assert_eq!(b.errors(), 0, "{b:?}");
    // Each backend received its own lb-token from the stock client.
    let st = status(&daemon).await;
    for i in &st.instances {
        assert_eq!(b.tokens.get(&i.instance_id), Some(&i.token), "{b:?}");
    }

    // An operator's weight change reaches the stock client.
    ctl(&daemon, &["set-weight", NAME, "b1", "3"]).expect("set-weight");
    client.until("shares 3:3:2 after set-weight", 80, |b| {
        b.ok == counts(&[("b1", 30), ("b2", 30), ("s13", 20)])
    });

    // A quarter of the calls dropped: the list is 24 entries and 8 drops,
    // so any 64 calls are 16 drops (UNAVAILABLE) and 18/18/12 served.
    let shed_floor = |f: &str| {
        let p = format!("shed_floor={f}");
        ctl(
            &daemon,
            &["set-policy", NAME, "weighted_round_robin", "-p", &p],
        )
        .expect("set-policy shed_floor")
    };
    shed_floor("0.25");
    // The batch that first shows 16 drops may straddle the old list and the
    // new one; the next batch runs wholly on the new list.
    client.until("a quarter dropped", 64, |b| b.errors() == 16);
    let dropped = client.calls(64);
    assert_eq!(
        dropped.errors,
        counts(&[("UNAVAILABLE", 16)]),
        "{dropped:?}"
    );
    assert!(
        dropped.details.iter().all(|d| d.contains("drop")),
        "drops say so: {dropped:?}"
    );
    assert_eq!(
        dropped.ok,
        counts(&[("b1", 18), ("b2", 18), ("s13", 12)]),
        "{dropped:?}"
    );
    let more = client.calls(64);
    assert_eq!(more.errors, counts(&[("UNAVAILABLE", 16)]), "{more:?}");
    shed_floor("0");
    client.until("no more drops", 80, |b| b.errors() == 0 && b.ok.len() == 3);

    // ClientStats arrive: the stream is counted, calls are counted, and
    // drops are attributed to the drop entries' token (at least the 32
    // dropped in the two checked batches; drops of the converging batches
    // count too).
    let deadline = Instant::now() + CONVERGE;
    let g = loop {
        let g = status(&daemon).await.grpclb.unwrap_or_default();
        let drops = g.dropped_by_token.get("lb-drop").copied().unwrap_or(0);
        if (g.streams >= 1 && g.calls_started >= 200 && drops >= 32) || Instant::now() > deadline {
            break g;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(g.streams >= 1, "{g:?}");
    assert!(g.calls_started >= 200, "{g:?}");
    assert!(g.calls_known_received >= 160, "{g:?}");
    assert!(
        g.dropped_by_token.get("lb-drop").copied().unwrap_or(0) >= 32,
        "{g:?}"
    );
    let shown = ctl(&daemon, &["get", NAME]).expect("ctl get");
    assert!(shown.contains("grpclb    1 stream(s)"), "{shown}");
    assert!(shown.contains("lb-drop:"), "{shown}");

    // Nothing usable: the daemon sends fallback_response and the client uses
    // the name's A record; instances back: the list again.
    for id in ["b1", "b2"] {
        ctl(&daemon, &["drain", NAME, id]).expect("drain");
    }
    ctl(&daemon, &["remove-static", NAME, "s13"]).expect("remove-static");
    client.until("fallback to the A record", 20, |b| {
        b.ok == counts(&[("fallback", 20)])
    });
    for id in ["b1", "b2"] {
        ctl(&daemon, &["undrain", NAME, id]).expect("undrain");
    }
    client.until("back on the list after fallback", 60, |b| {
        b.ok == counts(&[("b1", 30), ("b2", 30)])
    });

    // The daemon dies: the client keeps the last list.
    c.daemon.proc.kill9();
    let after = client.calls(60);
    assert_eq!(after.ok, counts(&[("b1", 30), ("b2", 30)]), "{after:?}");
    assert_eq!(after.errors(), 0, "{after:?}");
}

/// `lb-server ctl` against a daemon that requires TLS and a token (the
/// generated admin token, from its data directory).
fn secure_ctl(addr: &str, data_dir: &Path, ca: &Path, args: &[&str]) -> String {
    let out = ctl_command(addr, data_dir)
        .arg("--ca")
        .arg(ca)
        .args(args)
        .output()
        .expect("run ctl");
    succeeded(out, &format!("ctl {args:?}")).trim().to_string()
}

/// The same stock client against a daemon that requires TLS, client
/// certificates and authentication, set up as the README's recipe says:
/// TLS channel credentials trusting lb's CA with the client's certificate
/// (the backends serve TLS too: grpcio uses one set of channel credentials
/// for the balancer and the backends), the certificate's SPIFFE ID bound to
/// the `client` role for the service (`token create --identity`). gRPC
/// C-core never sends call credentials to the balancer (its grpclb policy
/// strips them from the balancer channel), so a bearer token alone cannot
/// open the grpclb stream; the token the client also sends reaches only the
/// backends. Revoking the binding ends the stream and the client falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stock_grpcio_client_with_tls_and_a_certificate_identity_follows_its_lists() {
    let certs = tempfile::tempdir().expect("tempdir");
    let pki = Pki::new(certs.path(), "lb").expect("ca");
    // The backends are dialled as NAME, the balancer as lb.NAME.
    let server = pki
        .server("server", &[NAME, &format!("lb.{NAME}")])
        .expect("server cert");
    let web = pki
        .client("web", "spiffe://lb.test/web")
        .expect("client cert");
    let ops = pki.client("ops", "spiffe://lb.test/ops").expect("ops cert");
    let p = |p: &Path| p.display().to_string();
    let mut c = Cluster::start(
        &[
            "--auth",
            "--stats-interval",
            "200ms",
            "--tls-cert",
            &p(&server.cert),
            "--tls-key",
            &p(&server.key),
            "--tls-client-ca",
            &p(pki.ca_file()),
        ],
        &[],
    );
    let ca = pki.ca_file().to_path_buf();
    let token_path = c.daemon.data_dir.join("admin.token");
    assert!(wait_until(WAIT, || token_path.exists()).await);
    let (addr, data_dir) = (c.daemon.addr(), c.daemon.data_dir.clone());
    let mtls = [
        "--cert".to_string(),
        p(&ops.cert),
        "--key".into(),
        p(&ops.key),
    ];
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = mtls.iter().map(String::as_str).collect();
        all.extend_from_slice(args);
        secure_ctl(&addr, &data_dir, &ca, &all)
    };
    let backend = run(&[
        "token",
        "create",
        "--name",
        "echo-deploy",
        "--role",
        "backend",
        "--service",
        NAME,
    ]);
    let fallback = run(&[
        "token",
        "create",
        "--name",
        "fallback",
        "--role",
        "backend",
        "--service",
        "fallback.only",
    ]);
    run(&[
        "token",
        "create",
        "--name",
        "web",
        "--role",
        "client",
        "--service",
        NAME,
        "--identity",
        "spiffe://lb.test/web",
    ]);
    let token_file = |name: &str, token: &str| {
        let f = certs.path().join(format!("{name}.token"));
        std::fs::write(&f, token).expect("token file");
        p(&f)
    };
    let tls_backend = |service: &str, id: &str, weight: u32, ip: &str, token: &str| {
        let mut b = on(service, id, weight, ip);
        b.extra.extend([
            "--token-file".into(),
            token_file(id, token),
            "--ca".into(),
            p(&ca),
            "--cert".into(),
            p(&ops.cert),
            "--key".into(),
            p(&ops.key),
            "--tls-cert".into(),
            p(&server.cert),
            "--tls-key".into(),
            p(&server.key),
        ]);
        b
    };
    // Exact shares of the static weights (the default, load_aware, follows
    // measured load once reports arrive).
    run(&["set-policy", NAME, "weighted_round_robin", "--create"]);
    c.add(&tls_backend(NAME, "b1", 1, "127.0.0.11", &backend));
    c.add(&tls_backend(NAME, "b2", 3, "127.0.0.12", &backend));
    c.add(&tls_backend(
        "fallback.only",
        "fallback",
        1,
        "127.0.0.20",
        &fallback,
    ));
    let fallback_port = c.backends["fallback"].addr.port();
    let mut client = grpclb_client(
        c.daemon.proc.addr.port(),
        fallback_port,
        "127.0.0.20",
        &[
            "--ca".into(),
            p(&ca),
            "--cert".into(),
            p(&web.cert),
            "--key".into(),
            p(&web.key),
        ],
    );
    let b = client.until("shares 1:3 over mTLS", 40, |b| {
        b.ok == counts(&[("b1", 10), ("b2", 30)])
    });
    assert_eq!(b.errors(), 0, "{b:?}");
    // Each backend got its own lb-token through the secured balancer.
    assert!(b.tokens.values().all(|t| !t.is_empty()), "{b:?}");
    // An operator's change reaches it.
    run(&["set-weight", NAME, "b1", "3"]);
    client.until("shares 3:3 after set-weight", 60, |b| {
        b.ok == counts(&[("b1", 30), ("b2", 30)])
    });
    // The grpclb stream belongs to the binding: revoked, the stream ends
    // and cannot be reopened. A grpclb client keeps its last list when its
    // balancer goes away, so it goes on calling b1 and b2 as before, but
    // changes no longer reach it.
    let streams = |shown: &str| shown.contains("grpclb    1 stream(s)");
    assert!(streams(&run(&["get", NAME])), "one grpclb stream before");
    run(&["token", "revoke", "web"]);
    let ended = wait_until(WAIT, || !streams(&run(&["get", NAME]))).await;
    assert!(ended, "the revoked binding's stream ended");
    run(&["set-weight", NAME, "b1", "1"]);
    let after = client.calls(60);
    assert_eq!(after.ok, counts(&[("b1", 30), ("b2", 30)]), "{after:?}");
}
