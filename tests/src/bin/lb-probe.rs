//! `lb-probe`: measures the foundation's two figures with real processes.
//!
//! - `liveness`: a backend process is killed with -9; time until a subscribed
//!   client holds a list without it (the daemon learns from the broken stream).
//! - `restart`: `lb-server` holding N persisted instances (over S services) is
//!   killed with -9 and started again; time from spawning the new process until
//!   a subscriber (already retrying, 1 ms backoff) holds the full restored list.
//!
//! Prints a Markdown table and writes JSON to `--json` if given. Build with
//! `--release` for figures worth quoting: `cargo run --release -p lb-tests --bin lb-probe`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_client::{subscribe, Backoff, ClientOptions};
use lb_proto::v1::{registry_client::RegistryClient, Instance, RegisterRequest};
use lb_tests::harness::{BackendSpec, Daemon};

/// Measures liveness and restart times of lb.
#[derive(Debug, Parser)]
struct Args {
    /// Kill/observe trials for the liveness figure.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Persisted instances for the restart figure (comma-separated list of sizes).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    instances: Vec<usize>,
    /// Services the instances are spread over.
    #[arg(long, default_value_t = 100)]
    services: usize,
    /// Restarts per size.
    #[arg(long, default_value_t = 5)]
    restarts: usize,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<std::path::PathBuf>,
}

fn stats(mut v: Vec<f64>) -> (f64, f64, f64) {
    v.sort_by(f64::total_cmp);
    let p = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    (p(0.5), p(0.99), v[v.len() - 1])
}

fn fast_client(daemon: &str) -> ClientOptions {
    let mut o = ClientOptions::new(daemon);
    o.backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        multiplier: 2.0,
    };
    o
}

async fn liveness(trials: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let daemon = Daemon::start(&dir.path().join("data"), "127.0.0.1:0", &[])?;
    let sub = subscribe("probe", fast_client(&daemon.addr())).await?;
    let mut out = Vec::new();
    for t in 0..trials {
        let id = format!("victim-{t}");
        let mut b = BackendSpec::new("probe", &id, 1).start(&daemon.addr(), dir.path())?;
        sub.wait_for(Duration::from_secs(10), |l| {
            l.servers().iter().any(|e| e.instance_id() == id)
        })
        .await
        .context("backend never listed")?;
        let t0 = Instant::now();
        b.kill9();
        sub.wait_for(Duration::from_secs(10), |l| {
            !l.servers().iter().any(|e| e.instance_id() == id)
        })
        .await
        .context("killed backend never left the list")?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok(out)
}

async fn restart(n: usize, services: usize, restarts: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut daemon = Daemon::start(&data, "127.0.0.1:0", &["--restore-grace", "10m"])?;
    let addr = daemon.addr();
    let per = n.div_ceil(services);
    // Register through unary leases (no backend processes needed), 64 at a time.
    let client = RegistryClient::connect(format!("http://{addr}")).await?;
    let mut set = tokio::task::JoinSet::new();
    for i in 0..n {
        let mut c = client.clone();
        set.spawn(async move {
            c.register(RegisterRequest {
                instance: Some(Instance {
                    service: format!("svc-{}", i / per),
                    instance_id: format!("i-{i}"),
                    address: format!("127.0.0.{}:{}", 1 + i / 60000, 1024 + i % 60000),
                    weight: 1 + (i % 5) as u32,
                    ..Default::default()
                }),
                ttl_ms: 3_600_000,
            })
            .await
        });
        if set.len() >= 64 {
            if let Some(r) = set.join_next().await {
                r??;
            }
        }
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let port = daemon.proc.addr.port();
    let last = format!("svc-{}", (n - 1) / per);
    let want = n - (n - 1) / per * per;
    let mut out = Vec::new();
    for _ in 0..restarts {
        daemon.proc.kill9();
        let sub = subscribe(&last, fast_client(&addr)).await?;
        let t0 = Instant::now();
        daemon = Daemon::start(
            &data,
            &format!("127.0.0.1:{port}"),
            &["--restore-grace", "10m"],
        )?;
        sub.wait_for(Duration::from_secs(30), |l| l.servers().len() == want)
            .await
            .context("restored list never arrived")?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
        sub.close();
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.trials == 0 || args.restarts == 0 {
        bail!("--trials and --restarts must be at least 1");
    }
    let mut json = Vec::new();
    println!("| figure | samples | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|");
    let live = liveness(args.trials).await?;
    let (p50, p99, max) = stats(live.clone());
    println!(
        "| backend kill -9 → client holds new list | {} | {p50:.1} | {p99:.1} | {max:.1} |",
        live.len()
    );
    json.push(format!(
        r#"{{"figure":"liveness","samples":{},"p50_ms":{p50:.3},"p99_ms":{p99:.3},"max_ms":{max:.3}}}"#,
        live.len()
    ));
    for &n in &args.instances {
        let r = restart(n, args.services.min(n), args.restarts).await?;
        let (p50, p99, max) = stats(r.clone());
        println!(
            "| restart with {n} persisted instances ({} services) → client holds restored list | {} | {p50:.1} | {p99:.1} | {max:.1} |",
            args.services.min(n),
            r.len()
        );
        json.push(format!(
            r#"{{"figure":"restart","instances":{n},"services":{},"samples":{},"p50_ms":{p50:.3},"p99_ms":{p99:.3},"max_ms":{max:.3}}}"#,
            args.services.min(n),
            r.len()
        ));
    }
    if let Some(p) = args.json {
        std::fs::write(&p, format!("[{}]\n", json.join(",\n")))?;
    }
    Ok(())
}
