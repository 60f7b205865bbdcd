//! `echo-client`: the example client. Subscribes to a service through
//! lb-client, makes `--calls` Whoami calls over `LbChannel` (a generated tonic
//! client on top of lb's per-request pick), and prints each backend's count and
//! share. With `--expect ID=WEIGHT` (repeatable) it exits 1 unless every share
//! is within `--tolerance` percentage points of its weight share.
//!
//! `echo-client --daemon 127.0.0.1:7400 --service echo --calls 6000 --min-servers 3`

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use clap::Parser;
use lb_client::{subscribe, ClientOptions};
use lb_tests::echo::echo_client::EchoClient;
use lb_tests::echo::WhoamiRequest;

/// Calls Echo through lb and prints the spread.
#[derive(Debug, Parser)]
struct Args {
    /// lb-server address.
    #[arg(long, default_value = "127.0.0.1:7400")]
    daemon: String,
    /// Service to call.
    #[arg(long, default_value = "echo")]
    service: String,
    /// Number of calls.
    #[arg(long, default_value_t = 6000)]
    calls: u64,
    /// Calls in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: u64,
    /// Wait until the list holds at least this many servers before calling
    /// (subscribing already waits for the daemon's first list; this waits
    /// for backends that are still registering).
    #[arg(long, default_value_t = 0)]
    min_servers: usize,
    /// Fallback backend addresses used until the daemon answers (comma-separated).
    #[arg(long, value_delimiter = ',')]
    fallback: Vec<String>,
    /// Expected weight of an instance, `ID=WEIGHT` (repeatable).
    #[arg(long = "expect", value_parser = parse_expect)]
    expect: Vec<(String, u64)>,
    /// Allowed deviation from the expected share, in percentage points.
    #[arg(long, default_value_t = 2.0)]
    tolerance: f64,
}

fn parse_expect(s: &str) -> Result<(String, u64), String> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not ID=WEIGHT"))?;
    let w = v.parse().map_err(|_| format!("{v:?} is not a weight"))?;
    Ok((k.to_string(), w))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_tests::cli::init_tracing("warn");
    let args = Args::parse();
    let mut opts = ClientOptions::new(&args.daemon);
    opts.fallback = args.fallback.clone();
    // Returns with the daemon's first list in place (or fails saying why
    // the daemon could not be reached), so the first call has backends.
    let sub = subscribe(&args.service, opts).await?;
    let min = args.min_servers;
    if min > 0 {
        sub.wait_for(Duration::from_secs(30), |l| l.servers().len() >= min)
            .await
            .map_err(|_| anyhow::anyhow!("the list never reached {min} servers within 30 s"))?;
    }

    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let per_task = args.calls / args.concurrency.max(1);
    let extra = args.calls % args.concurrency.max(1);
    for t in 0..args.concurrency.max(1) {
        let mut client = EchoClient::new(sub.channel());
        let n = per_task + u64::from(t < extra);
        tasks.spawn(async move {
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut errors = 0u64;
            let mut first_error = None;
            for _ in 0..n {
                match client.whoami(WhoamiRequest {}).await {
                    Ok(r) => *counts.entry(r.into_inner().instance_id).or_default() += 1,
                    Err(s) => {
                        errors += 1;
                        first_error
                            .get_or_insert_with(|| format!("{:?}: {}", s.code(), s.message()));
                    }
                }
            }
            (counts, errors, first_error)
        });
    }
    let mut counts: BTreeMap<String, u64> = BTreeMap::new();
    let mut errors = 0u64;
    let mut first_error = None;
    while let Some(r) = tasks.join_next().await {
        let (c, e, first) = r?;
        for (k, v) in c {
            *counts.entry(k).or_default() += v;
        }
        errors += e;
        first_error = first_error.or(first);
    }
    let elapsed = started.elapsed();
    // Hand the last call outcomes to the daemon before exiting.
    sub.shutdown(Duration::from_secs(1)).await;
    let ok: u64 = counts.values().sum();
    let weight_sum: u64 = args.expect.iter().map(|(_, w)| w).sum();
    let mut bad = false;
    println!(
        "{:<16} {:>8} {:>8} {:>8}",
        "instance", "calls", "share%", "want%"
    );
    let mut ids: Vec<&String> = counts.keys().collect();
    for (id, _) in &args.expect {
        if !counts.contains_key(id) {
            ids.push(id);
        }
    }
    for id in ids {
        let n = counts.get(id).copied().unwrap_or(0);
        let share = 100.0 * n as f64 / ok.max(1) as f64;
        let want = args
            .expect
            .iter()
            .find(|(k, _)| k == id)
            .map(|(_, w)| 100.0 * *w as f64 / weight_sum.max(1) as f64);
        let want_s = want
            .map(|w| format!("{w:.1}"))
            .unwrap_or_else(|| "-".into());
        println!("{id:<16} {n:>8} {share:>8.2} {want_s:>8}");
        match want {
            Some(w) if (share - w).abs() > args.tolerance => bad = true,
            None if !args.expect.is_empty() => bad = true,
            _ => {}
        }
    }
    println!(
        "calls={} ok={ok} errors={errors} elapsed={:.2}s",
        args.calls,
        elapsed.as_secs_f64()
    );
    if let Some(e) = first_error {
        println!("first error: {e}");
    }
    if errors > 0 || bad {
        println!("FAIL: shares or errors outside the expectation");
        std::process::exit(1);
    }
    if !args.expect.is_empty() {
        println!(
            "OK: every share within {} points of its weight share",
            args.tolerance
        );
    }
    Ok(())
}
