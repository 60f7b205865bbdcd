//! `lb-auth-bench`: what authentication and TLS cost a caller of the daemon.
//!
//! Three real `lb-server` processes on 127.0.0.1, started side by side:
//! `plain` (the loopback quick start: no tokens, no TLS), `auth` (`--auth`,
//! every call carries a bearer token the daemon hashes and compares) and
//! `auth+tls` (the same over rustls). For each, in rounds that rotate the
//! order so drift hits every configuration alike:
//! - `ListServices` (a read, an `admin-read-only` token) and `Register` (a
//!   write to the store, a `backend` token), `--calls` calls each with
//!   `--concurrency` in flight over one connection: calls per second and
//!   per-call latency;
//! - `connect`: a fresh connection and one `ListServices` on it (with TLS,
//!   the handshake), `--connects` times, one at a time.
//!
//! The baseline is `plain`, measured in the same run; each figure is printed
//! as its median over the rounds and as a ratio to the baseline's. Writes
//! `<out>/auth.json`. Every loop is bounded in count. Build with
//! `--release` for figures worth quoting:
//! `cargo build --release -p lb-bench -p lb-server`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Parser;
use lb_bench::machine::machine;
use lb_bench::stats::{p50_p99_max, round};
use lb_client::credentials::{Authorize, Credentials};
use lb_proto::v1::{
    admin_client::AdminClient, registry_client::RegistryClient, CreateTokenRequest, Instance,
    ListServicesRequest, RegisterRequest,
};
use lb_tests::harness::{Daemon, WAIT};
use lb_tests::pki::Pki;
use serde_json::json;
use tokio::task::JoinSet;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// What authentication and TLS cost a caller of the daemon.
#[derive(Debug, Parser)]
struct Args {
    /// Directory for the JSON result.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
    /// Calls per RPC, configuration and round. Default 20000 (4000 with --quick).
    #[arg(long)]
    calls: Option<usize>,
    /// Calls in flight on the one connection.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Fresh connections per configuration and round. Default 100 (30 with --quick).
    #[arg(long)]
    connects: Option<usize>,
    /// Rounds; the order of the configurations rotates each round.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Smaller sizes, so that it finishes in well under a minute.
    #[arg(long)]
    quick: bool,
}

/// One configuration under test: a daemon and the credentials of its callers.
struct Setup {
    name: &'static str,
    daemon: Daemon,
    reader: Credentials,
    backend: Credentials,
}

type Authed = InterceptedService<Channel, Authorize>;

async fn dial(addr: &str, c: &Credentials) -> Result<Channel> {
    lb_client::daemon::connect(addr, Duration::from_secs(5), c)
        .await
        .with_context(|| format!("connect to {addr}"))
}

fn admin(ch: Channel, c: &Credentials) -> AdminClient<Authed> {
    AdminClient::with_interceptor(ch, Authorize::new(c))
}

/// Waits for the token the daemon generates into its data directory.
async fn admin_token(d: &Daemon) -> Result<String> {
    let path = d.data_dir.join("admin.token");
    let ok =
        lb_tests::harness::wait_until(WAIT, || std::fs::metadata(&path).is_ok_and(|m| m.len() > 0))
            .await;
    if !ok {
        bail!("no {}", path.display());
    }
    Ok(std::fs::read_to_string(&path)?.trim().to_string())
}

async fn setup(name: &'static str, dir: &Path, tls: Option<&Pki>) -> Result<Setup> {
    let data = dir.join(name);
    let Some(pki) = tls.filter(|_| name.contains("tls")) else {
        let auth = name != "plain";
        let flags: &[&str] = if auth { &["--auth"] } else { &[] };
        let daemon = Daemon::start(&data, "127.0.0.1:0", flags)?;
        return credentials(name, daemon, Credentials::default()).await;
    };
    let server = pki.server(&format!("{name}-server"), &[])?;
    let (cert, key) = (server.cert.display(), server.key.display());
    let daemon = Daemon::start(
        &data,
        "127.0.0.1:0",
        &[
            "--auth",
            "--tls-cert",
            &cert.to_string(),
            "--tls-key",
            &key.to_string(),
        ],
    )?;
    let base = Credentials::default()
        .with_ca_pem(pki.ca_pem())
        .with_domain_name("localhost");
    credentials(name, daemon, base).await
}

/// Makes the reader and backend tokens of an authenticating daemon (none
/// for `plain`).
async fn credentials(name: &'static str, daemon: Daemon, base: Credentials) -> Result<Setup> {
    if name == "plain" {
        return Ok(Setup {
            name,
            daemon,
            reader: base.clone(),
            backend: base,
        });
    }
    let root = base.clone().with_token(admin_token(&daemon).await?);
    let mut a = admin(dial(&daemon.addr(), &root).await?, &root);
    let mut tokens = Vec::new();
    for (n, role, services) in [
        ("bench-reader", "admin-read-only", vec![]),
        ("bench-backend", "backend", vec!["bench".to_string()]),
    ] {
        let req = CreateTokenRequest {
            name: n.into(),
            role: role.into(),
            services,
            identity: String::new(),
        };
        tokens.push(a.create_token(req).await?.into_inner().token);
    }
    let [reader, backend] =
        <[String; 2]>::try_from(tokens).map_err(|_| anyhow::anyhow!("tokens"))?;
    Ok(Setup {
        name,
        daemon,
        reader: base.clone().with_token(reader),
        backend: base.with_token(backend),
    })
}

/// Which call a load loop makes.
#[derive(Clone, Copy, Debug)]
enum Rpc {
    List,
    Register,
}

/// `calls` calls of `rpc`, `concurrency` in flight on one connection: the
/// calls per second and every call's latency (µs).
async fn load(s: &Setup, rpc: Rpc, calls: usize, concurrency: usize) -> Result<(f64, Vec<f64>)> {
    let creds = match rpc {
        Rpc::List => &s.reader,
        Rpc::Register => &s.backend,
    };
    let ch = dial(&s.daemon.addr(), creds).await?;
    let auth = Authorize::new(creds);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for _ in 0..concurrency {
        let (ch, auth, next) = (ch.clone(), auth.clone(), next.clone());
        tasks.spawn(async move {
            let mut admin = AdminClient::with_interceptor(ch.clone(), auth.clone());
            let mut registry = RegistryClient::with_interceptor(ch, auth);
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= calls {
                    return anyhow::Ok(lat);
                }
                let t = Instant::now();
                match rpc {
                    Rpc::List => {
                        admin.list_services(ListServicesRequest {}).await?;
                    }
                    Rpc::Register => {
                        registry.register(lease(i % 8)).await?;
                    }
                }
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
        });
    }
    let mut all = Vec::with_capacity(calls);
    while let Some(r) = tasks.join_next().await {
        all.extend(r??);
    }
    Ok((calls as f64 / started.elapsed().as_secs_f64(), all))
}

fn lease(i: usize) -> RegisterRequest {
    RegisterRequest {
        instance: Some(Instance {
            service: "bench".into(),
            instance_id: format!("i{i}"),
            address: format!("127.0.0.1:{}", 20_000 + i),
            weight: 1,
            ..Default::default()
        }),
        ttl_ms: 600_000,
    }
}

/// `n` fresh connections, one at a time, each with one `ListServices`: the
/// time of each (µs).
async fn connects(s: &Setup, n: usize) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let mut a = admin(dial(&s.daemon.addr(), &s.reader).await?, &s.reader);
        a.list_services(ListServicesRequest {}).await?;
        out.push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(out)
}

fn median(v: &[f64]) -> f64 {
    p50_p99_max(v).0
}

/// One configuration's figures over all rounds.
#[derive(Default)]
struct Figures {
    rate: [Vec<f64>; 2],
    latency: [Vec<f64>; 2],
    connect: Vec<f64>,
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let calls = args
        .calls
        .unwrap_or(if args.quick { 4_000 } else { 20_000 });
    let n_connects = args.connects.unwrap_or(if args.quick { 30 } else { 100 });
    let dir = tempfile::tempdir()?;
    let pki = Pki::new(&dir.path().join("pki"), "bench")?;
    let mut setups = Vec::new();
    for name in ["plain", "auth", "auth+tls"] {
        setups.push(setup(name, dir.path(), Some(&pki)).await?);
    }
    let mut figures: Vec<Figures> = setups.iter().map(|_| Figures::default()).collect();
    for r in 0..args.rounds {
        for k in 0..setups.len() {
            let i = (r + k) % setups.len();
            let s = &setups[i];
            for (j, rpc) in [Rpc::List, Rpc::Register].into_iter().enumerate() {
                let (rate, lat) = load(s, rpc, calls, args.concurrency).await?;
                figures[i].rate[j].push(rate);
                figures[i].latency[j].extend(lat);
            }
            figures[i].connect.extend(connects(s, n_connects).await?);
        }
    }

    let base = &figures[0];
    let base_rate = [median(&base.rate[0]), median(&base.rate[1])];
    let base_connect = median(&base.connect);
    let columns = [
        "configuration",
        "ListServices calls/s",
        "× plain",
        "p50 µs",
        "p99 µs",
        "Register calls/s",
        "× plain",
        "p50 µs",
        "p99 µs",
        "connect + 1 call p50 µs",
        "× plain",
    ];
    println!("| {} |", columns.join(" | "));
    println!("|---{}|", "|---:".repeat(columns.len() - 1));
    let mut rows = Vec::new();
    let mut metrics = serde_json::Map::new();
    for (s, f) in setups.iter().zip(&figures) {
        let rate = [median(&f.rate[0]), median(&f.rate[1])];
        let (l50, l99, _) = p50_p99_max(&f.latency[0]);
        let (r50, r99, _) = p50_p99_max(&f.latency[1]);
        let c50 = median(&f.connect);
        let row = [
            rate[0].round(),
            round(rate[0] / base_rate[0], 2),
            round(l50, 0),
            round(l99, 0),
            rate[1].round(),
            round(rate[1] / base_rate[1], 2),
            round(r50, 0),
            round(r99, 0),
            round(c50, 0),
            round(c50 / base_connect, 2),
        ];
        println!(
            "| {} | {} |",
            s.name,
            row.map(|x| x.to_string()).join(" | ")
        );
        let key = s.name.replace('+', "_");
        metrics.insert(format!("{key}_list_ratio"), json!(row[1]));
        metrics.insert(format!("{key}_register_ratio"), json!(row[5]));
        metrics.insert(format!("{key}_connect_ratio"), json!(row[9]));
        let mut cells = vec![json!(s.name)];
        // Whole numbers as integers, so the report prints them so.
        cells.extend(row.iter().map(|&x| {
            if x.fract() == 0.0 {
                json!(x as i64)
            } else {
                json!(x)
            }
        }));
        rows.push(cells);
    }
    std::fs::create_dir_all(&args.out)?;
    let out = args.out.join("auth.json");
    let command = format!(
        "target/release/lb-auth-bench{} --out {}",
        if args.quick { " --quick" } else { "" },
        args.out.display()
    );
    let doc = json!({
        "bench": "auth",
        "title": "Authentication and TLS: what they cost a caller",
        "command": command,
        "machine": machine(),
        "columns": columns,
        "rows": rows,
        "metrics": metrics,
        "notes": [
            "Three lb-server processes side by side: plain (no tokens, no TLS: the loopback quick start), auth (--auth: each call's bearer token is hashed with SHA-256 and compared in constant time) and auth+tls (the same over rustls, TLS 1.3).",
            format!("ListServices (an admin-read-only token) and Register (a backend token; a store write): {calls} calls each with {} in flight over one HTTP/2 connection; calls/s is the median over {} rounds whose order of configurations rotates, latency is over every call. The ratio is calls/s against plain in the same run.", args.concurrency, args.rounds),
            format!("connect + 1 call: a fresh connection (with TLS, the handshake) and one ListServices, {n_connects} per round, one at a time; the ratio is against plain's median."),
        ],
    });
    std::fs::write(&out, serde_json::to_string_pretty(&doc)?)
        .with_context(|| format!("write {}", out.display()))?;
    println!("wrote {}", out.display());
    Ok(())
}
