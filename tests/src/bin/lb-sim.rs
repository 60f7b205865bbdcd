//! `lb-sim`: compares balancing policies in the deterministic, virtual-time
//! simulator (`lb_server::sim`): the real registry and policy engine with
//! modelled backends and clients, every policy on the same arrivals.
//!
//! Prints a Markdown table (p50 / p99 / p99.9, errors, timeouts, largest
//! queue, each backend's share of requests against its share of capacity in
//! the steady phase) and writes JSON to `--json` if given. The same `--seed`
//! gives byte-identical output. Build with `--release`:
//! `cargo run --release -p lb-tests --bin lb-sim -- --policies all`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_server::sim::{self, scenario::SCENARIOS, Contender, Scenario};

/// Compares balancing policies in simulation.
#[derive(Debug, Parser)]
struct Args {
    /// Scenario to run (hetero-degrade, uniform).
    #[arg(long, default_value = "hetero-degrade")]
    scenario: String,
    /// Comma-separated policies (any policy name, or p2c_peak_ewma), or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    policies: Vec<String>,
    /// Seed of the arrivals and of the clients' own randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measured run length (after the warm-up), e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = lb_server::config::parse_duration)]
    duration: Duration,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn contenders(names: &[String]) -> anyhow::Result<Vec<Contender>> {
    if names.iter().any(|n| n == "all") {
        return Ok(Contender::all());
    }
    names
        .iter()
        .map(|n| {
            Contender::by_name(n).with_context(|| {
                let known: Vec<String> = Contender::all().into_iter().map(|c| c.name).collect();
                format!("unknown policy {n:?}; known: {}, all", known.join(", "))
            })
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let Some(scenario) = Scenario::by_name(&args.scenario, args.duration) else {
        bail!(
            "unknown scenario {:?}; known: {}",
            args.scenario,
            SCENARIOS.join(", ")
        );
    };
    let contenders = contenders(&args.policies)?;
    let started = Instant::now();
    let report = sim::compare(&scenario, &contenders, args.seed);
    print!("{}", report.table());
    // Wall time goes to stderr so stdout stays byte-identical across runs.
    eprintln!("simulated in {:.2} s", started.elapsed().as_secs_f64());
    if let Some(p) = args.json {
        std::fs::write(&p, report.to_json()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
