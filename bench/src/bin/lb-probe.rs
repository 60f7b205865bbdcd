//! `lb-probe`: measures the foundation's two figures with real processes.
//!
//! - `liveness`: a backend process is killed with -9; time until a subscribed
//!   client holds a list without it (the daemon learns from the broken stream).
//!   Baseline in the same run: a backend frozen with SIGSTOP, whose connection
//!   stays up, so only HTTP/2 keepalive or the TTL can find it (what a
//!   heartbeat-only registry always has to wait for).
//! - `restart`: `lb-server` holding N persisted instances (over S services) is
//!   killed with -9 and started again; time from spawning the new process until
//!   a subscriber (already retrying, 1 ms backoff) holds the full restored list.
//!   Baseline in the same run: the same restart with an empty store.
//!
//! Prints a Markdown table and writes JSON to `--json` if given. Build with
//! `--release` for figures worth quoting: `cargo run --release -p lb-bench --bin lb-probe`.

use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_bench::stats::p50_p99_max;
use lb_client::{subscribe, Backoff, ClientOptions};
use lb_proto::v1::{registry_client::RegistryClient, Instance, RegisterRequest};
use lb_tests::harness::{BackendSpec, Daemon};

/// Measures liveness and restart times of lb.
#[derive(Debug, Parser)]
struct Args {
    /// Kill/observe trials for the liveness figure.
    #[arg(long, default_value_t = 20)]
    trials: usize,
    /// Frozen-backend trials for the liveness baseline (each takes seconds).
    #[arg(long, default_value_t = 3)]
    frozen_trials: usize,
    /// Persisted instances for the restart figure (comma-separated sizes; 0 is the baseline).
    #[arg(long, value_delimiter = ',', default_value = "0,1000,10000")]
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

fn fast_client(daemon: &str) -> ClientOptions {
    let mut o = ClientOptions::new(daemon);
    o.backoff = Backoff {
        initial: Duration::from_millis(1),
        max: Duration::from_millis(5),
        multiplier: 2.0,
    };
    o
}

/// How a backend is taken away in a liveness trial.
#[derive(Clone, Copy)]
enum Fault {
    Kill,
    Freeze,
}

async fn liveness(trials: usize, fault: Fault) -> anyhow::Result<Vec<f64>> {
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
        match fault {
            Fault::Kill => b.kill9(),
            Fault::Freeze => {
                std::process::Command::new("kill")
                    .args(["-STOP", &b.pid().to_string()])
                    .status()?;
            }
        }
        sub.wait_for(Duration::from_secs(30), |l| {
            !l.servers().iter().any(|e| e.instance_id() == id)
        })
        .await
        .context("backend never left the list")?;
        out.push(t0.elapsed().as_secs_f64() * 1e3);
        b.kill9();
    }
    Ok(out)
}

async fn restart(n: usize, services: usize, restarts: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir()?;
    let data = dir.path().join("data");
    let mut daemon = Daemon::start(&data, "127.0.0.1:0", &["--restore-grace", "10m"])?;
    let addr = daemon.addr();
    let per = n.div_ceil(services.max(1)).max(1);
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
    let last = format!("svc-{}", n.saturating_sub(1) / per);
    let want = n - n.saturating_sub(1) / per * per;
    let mut out = Vec::new();
    for _ in 0..restarts {
        daemon.proc.kill9();
        // Subscribed while the daemon is down: no wait for a first list
        // (it would fail at once on the refused connection); the
        // subscription keeps reconnecting, and the clock starts with the
        // new daemon.
        let options = fast_client(&addr).with_first_list_timeout(None);
        let sub = subscribe(&last, options).await?;
        let t0 = Instant::now();
        daemon = Daemon::start(
            &data,
            &format!("127.0.0.1:{port}"),
            &["--restore-grace", "10m"],
        )?;
        // Daemon lists have versions ≥ 2^32 (generation-prefixed); the initial one is 0.
        sub.wait_for(Duration::from_secs(30), |l| {
            l.version() > 0 && l.servers().len() == want
        })
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
    let live = liveness(args.trials, Fault::Kill).await?;
    let frozen = if args.frozen_trials > 0 {
        liveness(args.frozen_trials, Fault::Freeze).await?
    } else {
        Vec::new()
    };
    for (name, key, v) in [
        (
            "backend kill -9 → client holds new list",
            "liveness_kill",
            &live,
        ),
        (
            "baseline: backend frozen (SIGSTOP) → client holds new list",
            "liveness_frozen",
            &frozen,
        ),
    ] {
        if v.is_empty() {
            continue;
        }
        let (p50, p99, max) = p50_p99_max(v);
        println!("| {name} | {} | {p50:.1} | {p99:.1} | {max:.1} |", v.len());
        json.push(format!(
            r#"{{"figure":"{key}","samples":{},"p50_ms":{p50:.3},"p99_ms":{p99:.3},"max_ms":{max:.3}}}"#,
            v.len()
        ));
    }
    if !frozen.is_empty() {
        let ratio = p50_p99_max(&live).0 / p50_p99_max(&frozen).0;
        println!("| ratio of medians, kill / frozen | | {ratio:.5} | | |");
    }
    let mut baseline = None;
    for &n in &args.instances {
        let services = args.services.min(n).max(1);
        let r = restart(n, services, args.restarts).await?;
        let (p50, p99, max) = p50_p99_max(&r);
        let ratio = match baseline {
            Some(b) if n > 0 => format!(" ({:.2}× the empty-store restart)", p50 / b),
            _ => String::new(),
        };
        if n == 0 {
            baseline = Some(p50);
        }
        println!(
            "| restart with {n} persisted instances ({services} services) → client holds restored list{ratio} | {} | {p50:.1} | {p99:.1} | {max:.1} |",
            r.len()
        );
        json.push(format!(
            r#"{{"figure":"restart","instances":{n},"services":{services},"samples":{},"p50_ms":{p50:.3},"p99_ms":{p99:.3},"max_ms":{max:.3}}}"#,
            r.len()
        ));
    }
    if let Some(p) = args.json {
        std::fs::write(&p, format!("[{}]\n", json.join(",\n")))?;
    }
    Ok(())
}
