//! `lb-sim`: compares balancing policies in the deterministic, virtual-time
//! simulator (this crate, `lb_sim`): the real registry and policy engine with
//! modelled backends and clients, every policy on the same arrivals.
//!
//! Prints a Markdown table (p50 / p99 / p99.9, errors, timeouts, largest
//! queue, each backend's share of requests against its share of capacity in
//! the steady phase) and writes JSON to `--json` if given. The same `--seed`
//! gives byte-identical output. Build with `--release`:
//! `cargo run --release -p lb-sim -- --policies all`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Parser;
use lb_sim::{scenario::SCENARIOS, Contender, Scenario};

/// Compares balancing policies in simulation.
#[derive(Debug, Parser)]
struct Args {
    /// Scenario to run (hetero-degrade, uniform, latency-spread).
    #[arg(long, default_value = "hetero-degrade")]
    scenario: String,
    /// Comma-separated policies (any policy name, or p2c_peak_ewma), or `all`.
    #[arg(long, value_delimiter = ',', default_value = "all")]
    policies: Vec<String>,
    /// Seed of the arrivals and of the clients' own randomness.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Measured run length (after the warm-up), e.g. 30s.
    #[arg(long, default_value = "30s", value_parser = lb_core::duration::parse)]
    duration: Duration,
    /// Write results as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// A policy parameter `name=value` applied to every contender that takes
    /// it (repeatable), e.g. `--param active_weighting=false`.
    #[arg(long = "param", value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Overrides the scenario's backend report interval.
    #[arg(long, value_parser = lb_core::duration::parse)]
    report_interval: Option<Duration>,
    /// Overrides the scenario's offered load (fraction of initial capacity).
    #[arg(long)]
    load: Option<f64>,
}

fn parse_param(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not name=value"))
}

/// Applies `params` to each contender's policy (those that do not take a
/// parameter keep their own settings for it).
fn with_params(
    mut cs: Vec<Contender>,
    params: &[(String, String)],
) -> anyhow::Result<Vec<Contender>> {
    if params.is_empty() {
        return Ok(cs);
    }
    for c in &mut cs {
        let mut mine = c.policy.params();
        let mut any = false;
        for (k, v) in params {
            if mine.contains_key(k) {
                mine.insert(k.clone(), v.clone());
                any = true;
            }
        }
        if any {
            c.policy =
                lb_core::policy::ServicePolicy::parse(c.policy.kind.name(), &mine, &c.policy)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", c.name))?;
        }
    }
    Ok(cs)
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
    let contenders = with_params(contenders(&args.policies)?, &args.params)?;
    let mut scenario = scenario;
    if let Some(r) = args.report_interval {
        scenario.report_interval = r;
    }
    if let Some(l) = args.load {
        scenario.load = l;
    }
    let started = Instant::now();
    let report = lb_sim::compare(&scenario, &contenders, args.seed);
    print!("{}", report.table());
    // Wall time goes to stderr so stdout stays byte-identical across runs.
    eprintln!("simulated in {:.2} s", started.elapsed().as_secs_f64());
    if let Some(p) = args.json {
        std::fs::write(&p, report.to_json()).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}
