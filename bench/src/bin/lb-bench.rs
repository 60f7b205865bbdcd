//! `lb-bench`: the balancing-quality benchmark with real processes on
//! 127.0.0.1 (the benchmark plan, family A).
//!
//! For each policy, one after the other: a fresh `lb-server` (temporary data
//! directory), the service's policy set with `lb-server ctl set-policy`, one
//! `lb-backend` process per backend, and `lb-loadgen` (open-loop Poisson
//! arrivals from the scenario's seed, the same for every policy, over
//! independent clients with their own subscriptions) for the warm-up and the
//! measured run. The scenario's events happen at their times; then everything
//! is stopped. The result is `OUT/quality-<scenario>.json` (rows = policies)
//! plus each policy's raw loadgen result in `OUT/quality-<scenario>/`.
//!
//! ```sh
//! cargo build --release --workspace
//! target/release/lb-bench --scenario scripts/scenarios/hetero-degrade.toml --out bench-results
//! target/release/lb-bench --scenario scripts/scenarios/cold-join.toml --quick --policies load_aware,p2c
//! target/release/lb-bench --scenario scripts/scenarios/hash-zipf.toml \
//!     --policies consistent_hash,consistent_hash+bounded,round_robin,p2c
//! ```
//!
//! Policies (`--policies`, comma-separated): any policy name of
//! `lb-server ctl set-policy` (every backend registered with weight 1), plus
//! two peers: `weighted` = `weighted_round_robin` with every backend
//! registered with a static weight equal to its true capacity (the best any
//! static configuration can do), and `p2c` = tower's p2c balancer with
//! PeakEWMA inside each client, which takes only the membership from its lb
//! subscription and sees only its own calls. `POLICY+shed` is POLICY with
//! load shedding by backlog on (`shed_delay=100ms`: the daemon adds drop
//! entries when the farm's reported requests would take longer than 100 ms to
//! drain, so only what the farm cannot serve is shed; dropped calls count as
//! errors). `POLICY+slow` is POLICY with slow start on
//! (`slow_start_window=5s`: a new or re-admitted instance ramps up over 5 s).
//! `POLICY+bounded` is POLICY with `load_bound=1.25` (consistent hashing with
//! bounded loads, c = 1.25: no instance holds more than 1.25 × the mean share
//! of the affinity table's slots; see `core/src/policy/chash.rs`).
//! `POLICY@NAME=VALUE` is POLICY with one more `ctl set-policy` parameter
//! (repeatable), for experiments: `load_aware@client_choices=1`.
//! Default: `round_robin,weighted,load_aware,load_aware@choice_prior=0,load_aware@client_choices=1,load_aware+shed,least_active,fastest_response,p2c`.
//! lb's clients run every call under the service's cluster mode (failover
//! by default: a call cut by a killed backend is retried on another one).
//! `--quick` runs a third of the duration (events scaled alike) and at most
//! 2 s of warm-up.
//!
//! # Scenario files (TOML)
//!
//! ```toml
//! name = "hetero-degrade"         # names the result: quality-<name>.json
//! title = "..."                   # optional, for the table
//! service = "work"                # optional (default "work")
//! clients = 16                    # independent clients, each its own subscription
//! load = 0.7                      # offered load, fraction of the initial backends' capacity
//! warmup = "3s"                   # not measured
//! duration = "30s"                # measured run
//! seed = 1                        # arrival times, clients and service demands
//! timeout = "1s"                  # optional (default 1s); a later answer is an error
//! notes = ["..."]                 # optional, copied into the result
//!
//! [[backends]]                    # one lb-backend process each
//! id = "b0"
//! slots = 8                       # concurrent workers (default 8)
//! service_ms = 10                 # mean exponential service time
//! weight = 800                    # optional: static weight under `weighted`
//!                                 #   (default: capacity = slots × 1000 / service_ms)
//! cold_factor = 4                 # optional: starts 4× slower ...
//! cold_for = "5s"                 # ... and warms up linearly over 5 s
//!
//! [keys]                          # optional: every request carries a key,
//! count = 10000                   #   a rank in 1..=count drawn from
//! zipf_s = 1.1                    #   Zipf(s) (default s = 1)
//!
//! [[events]]                      # `at` counts from the start of the measured run
//! at = "12s"
//! kind = "degrade"                # the backend's mean service time changes
//! backend = "b0"                  #   (any number per backend: a later one
//! service_ms = 80                 #   back to the old time is a recovery)
//!
//! [[events]]
//! at = "18s"
//! kind = "load"                   # the offered rate steps to factor × the
//! factor = 1.5                    #   base rate (a flash crowd; 1.0 ends it)
//!
//! [[events]]
//! at = "21s"
//! kind = "kill"                   # SIGKILL: the backend dies without deregistering
//! backend = "b2"
//!
//! [[events]]
//! at = "6s"
//! kind = "join"                   # a new backend starts (cold unless told otherwise)
//! backend = { id = "b4", slots = 8, service_ms = 20, cold_factor = 4, cold_for = "5s" }
//!
//! [[events]]
//! at = "5s"
//! kind = "restart-balancer"       # lb-server is killed -9 and restarted on the
//!                                 # same port and data directory
//! ```
//!
//! Degrades are scheduled inside the backend by wall-clock time and `load`
//! steps inside the load generator's plan (its arrivals are drawn up front
//! from the seed, at a piecewise-constant rate: the same for every policy);
//! the other events are applied by `lb-bench` at their time, and how late
//! they were is reported in the notes. Events at the same instant make one
//! phase, labelled with all of them and its start ("after degrade b2 to
//! 40 ms + degrade b3 to 40 ms (from 10s)"). `--check` prints each phase's
//! offered load against the capacity then up (nominal service times).
//!
//! Keyed scenarios: in lb's client mode the key travels in the `lb-hash-key`
//! metadata (`lb_client::channel::HASH_KEY`) through lb-client's
//! `LbChannel`, the cluster-call path on which the hash policies follow it;
//! p2c ignores it. The table gains "max keyed share ÷ mean": the busiest
//! backend's share of the requests the backends received over the measured
//! run (their own per-second counts, timeouts included) divided by 1/N.
//!
//! # Result (`quality-<scenario>.json`)
//!
//! `{"bench", "title", "command", "machine", "columns", "rows", "notes",
//! "series": {"p99_per_second": {policy: [[t_s, p99_ms], ...]},
//! "errors_per_second": {policy: [[t_s, n], ...]}, "shares": {policy:
//! {backend: share %}}, "events": [[t_s, "degrade b0 to 80 ms"], ...]}}` (one
//! mark per phase: events at one instant share it, joined by " + "). Shares are
//! of requests sent in a backend's reference phase: the steady phase (before
//! the first event) for the initial backends, the phase after its join for a
//! joiner. Latency percentiles are over answered requests, from the scheduled
//! arrival (queueing included); errors = timeouts + failed calls.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use clap::Parser;
use lb_bench::args::DEFAULT_SERVICE;
use lb_bench::clock::unix_ms;
use lb_bench::machine::machine;
use lb_bench::procfs::cpu_seconds;
use lb_bench::stats::round;
use lb_bench::zipf::Zipf;
use lb_tests::harness::{bin, ctl, Daemon, Proc};
use serde::Deserialize;
use serde_json::{json, Value};

/// Runs a balancing-quality scenario for every policy and writes the table.
#[derive(Debug, Parser)]
struct Args {
    /// Scenario file (TOML).
    #[arg(long)]
    scenario: PathBuf,
    /// Policies to compare (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "round_robin,weighted,load_aware,load_aware@choice_prior=0,load_aware@client_choices=1,load_aware+shed,least_active,fastest_response,p2c"
    )]
    policies: Vec<String>,
    /// A third of the duration (events scaled alike), at most 2 s of warm-up.
    #[arg(long)]
    quick: bool,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Only parse and check the scenario, print it, and exit.
    #[arg(long)]
    check: bool,
    /// Output directory.
    #[arg(long, default_value = "bench-results")]
    out: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendSpec {
    id: String,
    #[serde(default = "default_slots")]
    slots: u32,
    service_ms: f64,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    cold_factor: Option<f64>,
    #[serde(default)]
    cold_for: Option<String>,
}

fn default_slots() -> u32 {
    8
}

impl BackendSpec {
    fn capacity(&self) -> f64 {
        f64::from(self.slots) * 1000.0 / self.service_ms
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum BackendRef {
    Id(String),
    Spec(BackendSpec),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventSpec {
    at: String,
    kind: String,
    #[serde(default)]
    backend: Option<BackendRef>,
    #[serde(default)]
    service_ms: Option<f64>,
    /// `load` events: the offered rate from then on, a factor of the base rate.
    #[serde(default)]
    factor: Option<f64>,
}

/// `[keys]`: every request carries a key, a Zipf-distributed rank.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
struct KeysSpec {
    count: u32,
    #[serde(default = "default_zipf_s")]
    zipf_s: f64,
}

fn default_zipf_s() -> f64 {
    1.0
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct ScenarioFile {
    name: String,
    #[serde(default)]
    title: String,
    #[serde(default = "default_service")]
    service: String,
    clients: u32,
    load: f64,
    warmup: String,
    duration: String,
    #[serde(default = "default_seed")]
    seed: u64,
    #[serde(default)]
    timeout: Option<String>,
    backends: Vec<BackendSpec>,
    #[serde(default)]
    keys: Option<KeysSpec>,
    #[serde(default)]
    events: Vec<EventSpec>,
    #[serde(default)]
    notes: Vec<String>,
}

fn default_service() -> String {
    DEFAULT_SERVICE.into()
}

fn default_seed() -> u64 {
    1
}

#[derive(Debug, Clone)]
enum Event {
    Degrade {
        backend: String,
        service_ms: f64,
    },
    Kill {
        backend: String,
    },
    Join(BackendSpec),
    RestartBalancer,
    /// The offered rate becomes `factor` × the scenario's base rate.
    Load {
        factor: f64,
    },
}

impl Event {
    fn label(&self) -> String {
        match self {
            Event::Degrade {
                backend,
                service_ms,
            } => format!("degrade {backend} to {service_ms} ms"),
            Event::Kill { backend } => format!("kill {backend}"),
            Event::Join(b) => format!("join {}", b.id),
            Event::RestartBalancer => "restart-balancer".into(),
            Event::Load { factor } => format!("load {factor}× base"),
        }
    }

    /// The label, and for a `load` step the rate it offers.
    fn describe(&self, base_rate: f64) -> String {
        match self {
            Event::Load { factor } => format!(
                "{} (offered {:.0} req/s from then on: a step of the Poisson rate, its arrivals still drawn up front from the seed, the same for every policy)",
                self.label(),
                factor * base_rate
            ),
            _ => self.label(),
        }
    }
}

/// A phase of the measured run: from an instant at which events happen to
/// the next one. The first, `steady`, has none.
#[derive(Debug, Clone)]
struct Phase {
    from: Duration,
    events: Vec<Event>,
}

/// `8s`, or `3.3s` when not a whole second.
fn fmt_secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if (s - s.round()).abs() < 0.05 {
        format!("{s:.0}s")
    } else {
        format!("{s:.1}s")
    }
}

/// A checked scenario, durations parsed (and scaled by `--quick`).
#[derive(Debug, Clone)]
struct Scenario {
    name: String,
    title: String,
    service: String,
    clients: u32,
    load: f64,
    warmup: Duration,
    duration: Duration,
    seed: u64,
    timeout: Duration,
    backends: Vec<BackendSpec>,
    keys: Option<KeysSpec>,
    /// In time order (file order within an instant), at whole milliseconds.
    events: Vec<(Duration, Event)>,
    notes: Vec<String>,
}

impl Scenario {
    fn capacity(&self) -> f64 {
        self.backends.iter().map(BackendSpec::capacity).sum()
    }

    /// The base offered rate (`load` events scale it).
    fn rate(&self) -> f64 {
        self.load * self.capacity()
    }

    /// The phases: `steady`, then one per distinct event instant.
    fn phases(&self) -> Vec<Phase> {
        let mut out = vec![Phase {
            from: Duration::ZERO,
            events: Vec::new(),
        }];
        for (at, e) in &self.events {
            match out.last_mut() {
                Some(p) if p.from == *at && !p.events.is_empty() => p.events.push(e.clone()),
                _ => out.push(Phase {
                    from: *at,
                    events: vec![e.clone()],
                }),
            }
        }
        out
    }

    /// Each phase's label, unique: "steady (from 0s)", "after degrade b0
    /// to 80 ms (from 8s)", "after degrade b2 to 40 ms + degrade b3 to
    /// 40 ms (from 10s)".
    fn phase_labels(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for p in self.phases() {
            let what = if p.events.is_empty() {
                "steady".to_string()
            } else {
                let l: Vec<String> = p.events.iter().map(Event::label).collect();
                format!("after {}", l.join(" + "))
            };
            let mut label = format!("{what} (from {})", fmt_secs(p.from));
            let mut n = 2;
            while out.contains(&label) {
                label = format!("{what} (from {}) [{n}]", fmt_secs(p.from));
                n += 1;
            }
            out.push(label);
        }
        out
    }

    /// Per phase: (capacity of the backends then up at their nominal mean
    /// service times, cold starts ignored; offered rate), req/s.
    fn phase_loads(&self) -> Vec<(f64, f64)> {
        let mut up: BTreeMap<String, BackendSpec> = self
            .backends
            .iter()
            .map(|b| (b.id.clone(), b.clone()))
            .collect();
        let mut factor = 1.0;
        let mut out = Vec::new();
        for p in self.phases() {
            for e in &p.events {
                match e {
                    Event::Degrade {
                        backend,
                        service_ms,
                    } => {
                        if let Some(b) = up.get_mut(backend) {
                            b.service_ms = *service_ms;
                        }
                    }
                    Event::Kill { backend } => {
                        up.remove(backend);
                    }
                    Event::Join(b) => {
                        up.insert(b.id.clone(), b.clone());
                    }
                    Event::Load { factor: f } => factor = *f,
                    Event::RestartBalancer => {}
                }
            }
            let cap: f64 = up.values().map(BackendSpec::capacity).sum();
            out.push((cap, self.rate() * factor));
        }
        out
    }

    /// Every backend that ever runs: the initial ones, then the joiners.
    fn all_backend_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.backends.iter().map(|b| b.id.clone()).collect();
        for (_, e) in &self.events {
            if let Event::Join(b) = e {
                ids.push(b.id.clone());
            }
        }
        ids
    }
}

/// A scenario's duration (`250ms`, `3s`, `2m`): [`lb_core::duration::parse`].
fn parse_duration(s: &str) -> anyhow::Result<Duration> {
    lb_core::duration::parse(s).map_err(anyhow::Error::msg)
}

fn check_backend(b: &BackendSpec) -> anyhow::Result<()> {
    if b.id.is_empty() {
        bail!("a backend has an empty id");
    }
    if b.slots == 0 || !(b.service_ms.is_finite() && b.service_ms > 0.0) {
        bail!("backend {}: slots and service_ms must be positive", b.id);
    }
    if let Some(c) = &b.cold_for {
        parse_duration(c).with_context(|| format!("backend {}: cold_for", b.id))?;
    }
    Ok(())
}

fn load_scenario(path: &Path, quick: bool, seed: Option<u64>) -> anyhow::Result<Scenario> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse_scenario(&text, quick, seed).with_context(|| format!("bad scenario {}", path.display()))
}

/// A scenario from its TOML text, checked.
fn parse_scenario(text: &str, quick: bool, seed: Option<u64>) -> anyhow::Result<Scenario> {
    let f: ScenarioFile = toml::from_str(text)?;
    let mut warmup = parse_duration(&f.warmup).context("warmup")?;
    let mut duration = parse_duration(&f.duration).context("duration")?;
    let scale = if quick { 1.0 / 3.0 } else { 1.0 };
    if quick {
        warmup = warmup.min(Duration::from_secs(2));
        duration = duration.mul_f64(scale);
    }
    if f.clients == 0 || !(f.load.is_finite() && f.load > 0.0) || f.backends.is_empty() {
        bail!("clients, load and backends must be positive / non-empty");
    }
    let mut ids: Vec<String> = Vec::new();
    for b in &f.backends {
        check_backend(b)?;
        if ids.contains(&b.id) {
            bail!("backend id {} is used twice", b.id);
        }
        ids.push(b.id.clone());
    }
    if let Some(k) = &f.keys {
        Zipf::new(k.count, k.zipf_s).context("[keys]")?;
    }
    let mut events = Vec::new();
    // (backend, when) of every degrade: two at once would be ambiguous.
    let mut degraded: Vec<(String, Duration)> = Vec::new();
    for e in &f.events {
        // Whole milliseconds: the phases' boundaries as lb-loadgen gets them.
        let at = parse_duration(&e.at)
            .with_context(|| format!("event at {:?}", e.at))?
            .mul_f64(scale);
        let at = Duration::from_millis(at.as_millis() as u64);
        if at >= duration {
            bail!("event {} at {:?} is after the end of the run", e.kind, e.at);
        }
        if at.is_zero() {
            bail!(
                "event {} at {:?}: events happen after the measured run starts (at > 0)",
                e.kind,
                e.at
            );
        }
        if e.factor.is_some() && e.kind != "load" {
            bail!(
                "event {} at {:?}: `factor` is for load events",
                e.kind,
                e.at
            );
        }
        let id = |r: &Option<BackendRef>| -> anyhow::Result<String> {
            match r {
                Some(BackendRef::Id(id)) if ids.contains(id) => Ok(id.clone()),
                Some(BackendRef::Id(id)) => bail!("event {}: unknown backend {id}", e.kind),
                _ => bail!("event {} needs `backend = \"ID\"`", e.kind),
            }
        };
        let ev = match e.kind.as_str() {
            "degrade" => {
                let backend = id(&e.backend)?;
                if degraded.contains(&(backend.clone(), at)) {
                    bail!("backend {backend} degrades twice at {:?}", e.at);
                }
                degraded.push((backend.clone(), at));
                let service_ms = e
                    .service_ms
                    .filter(|m| m.is_finite() && *m > 0.0)
                    .ok_or_else(|| anyhow!("degrade needs a positive service_ms"))?;
                Event::Degrade {
                    backend,
                    service_ms,
                }
            }
            "kill" => Event::Kill {
                backend: id(&e.backend)?,
            },
            "join" => match &e.backend {
                Some(BackendRef::Spec(b)) => {
                    check_backend(b)?;
                    if ids.contains(&b.id) {
                        bail!("join: backend id {} is used twice", b.id);
                    }
                    ids.push(b.id.clone());
                    Event::Join(b.clone())
                }
                _ => bail!("join needs `backend = {{ id = ..., service_ms = ... }}`"),
            },
            "restart-balancer" => Event::RestartBalancer,
            "load" => {
                if e.backend.is_some() || e.service_ms.is_some() {
                    bail!("load event at {:?}: only `factor`, no backend", e.at);
                }
                let factor = e
                    .factor
                    .filter(|x| x.is_finite() && *x > 0.0)
                    .ok_or_else(|| anyhow!("load event at {:?} needs a positive `factor`", e.at))?;
                Event::Load { factor }
            }
            k => bail!("unknown event kind {k:?} (degrade, kill, join, restart-balancer, load)"),
        };
        events.push((at, ev));
    }
    events.sort_by_key(|(at, _)| *at);
    Ok(Scenario {
        name: f.name,
        title: f.title,
        service: f.service,
        clients: f.clients,
        load: f.load,
        warmup,
        duration,
        seed: seed.unwrap_or(f.seed),
        timeout: match &f.timeout {
            Some(t) => parse_duration(t)?,
            None => Duration::from_secs(1),
        },
        backends: f.backends,
        keys: f.keys,
        events,
        notes: f.notes,
    })
}

fn sleep_until_unix_ms(t: u64) {
    let now = unix_ms();
    if t > now {
        std::thread::sleep(Duration::from_millis(t - now));
    }
}

/// What one contender is: the lb policy to set, the client mode, the weights.
struct Contender {
    name: String,
    lb_policy: String,
    /// `-p name=value` arguments of `ctl set-policy`.
    params: Vec<String>,
    p2c: bool,
    capacity_weights: bool,
}

fn contender(name: &str) -> Contender {
    // `POLICY@name=value`: POLICY with one more policy parameter (repeatable:
    // `load_aware@client_choices=1@blackout=0s`), for experiments.
    if let Some((base, param)) = name.rsplit_once('@') {
        let mut c = contender(base);
        c.name = name.into();
        c.params.extend(["-p".into(), param.into()]);
        return c;
    }
    // `POLICY+slow`: POLICY with slow start (new and re-admitted instances
    // ramp up over 5 s, Envoy's formula).
    if let Some(base) = name.strip_suffix("+slow") {
        let mut c = contender(base);
        c.name = name.into();
        c.params
            .extend(["-p".into(), "slow_start_window=5s".into()]);
        return c;
    }
    // `POLICY+bounded`: consistent hashing with bounded loads, c = 1.25
    // (Mirrokni et al., SODA 2018).
    if let Some(base) = name.strip_suffix("+bounded") {
        let mut c = contender(base);
        c.name = name.into();
        c.params.extend(["-p".into(), "load_bound=1.25".into()]);
        return c;
    }
    if let Some(base) = name.strip_suffix("+shed") {
        return Contender {
            name: name.into(),
            params: vec!["-p".into(), "shed_delay=100ms".into()],
            ..contender(base)
        };
    }
    match name {
        "weighted" => Contender {
            name: name.into(),
            lb_policy: "weighted_round_robin".into(),
            params: Vec::new(),
            p2c: false,
            capacity_weights: true,
        },
        // The daemon's list only gives p2c its membership; round robin keeps it plain.
        "p2c" => Contender {
            name: name.into(),
            lb_policy: "round_robin".into(),
            params: Vec::new(),
            p2c: true,
            capacity_weights: false,
        },
        other => Contender {
            name: other.into(),
            lb_policy: other.into(),
            params: Vec::new(),
            p2c: false,
            capacity_weights: false,
        },
    }
}

/// One policy's run: the loadgen's result and what lb-bench saw around it.
struct PolicyRun {
    run: Value,
    max_queue: u64,
    backend_stats: Vec<Value>,
    /// (event label, how late it was applied, ms).
    event_lateness: Vec<(String, f64)>,
    /// CPU seconds per process kind over the run (processes alive at the end).
    cpu: BTreeMap<String, f64>,
    restart_ms: Vec<f64>,
    /// Requests each backend received in the whole seconds of the measured
    /// run (its own counts: answered, timed out or cancelled).
    received: BTreeMap<String, u64>,
}

struct Farm<'a> {
    sc: &'a Scenario,
    c: &'a Contender,
    daemon_addr: String,
    dir: PathBuf,
    /// Wall-clock start of the measured run.
    measured_unix_ms: u64,
}

impl Farm<'_> {
    fn spawn_backend(&self, b: &BackendSpec) -> anyhow::Result<Proc> {
        let weight = if self.c.capacity_weights {
            b.weight
                .unwrap_or_else(|| b.capacity().round().clamp(1.0, 10_000.0) as u32)
        } else {
            1
        };
        let mut args: Vec<String> = vec![
            "--daemon".into(),
            self.daemon_addr.clone(),
            "--service".into(),
            self.sc.service.clone(),
            "--id".into(),
            b.id.clone(),
            "--slots".into(),
            b.slots.to_string(),
            "--service-ms".into(),
            b.service_ms.to_string(),
            "--weight".into(),
            weight.to_string(),
            "--stats-out".into(),
            self.dir
                .join(format!("{}.stats.json", b.id))
                .display()
                .to_string(),
        ];
        for (at, e) in &self.sc.events {
            if let Event::Degrade {
                backend,
                service_ms,
            } = e
            {
                if *backend == b.id {
                    args.push("--degrade-at-unix-ms".into());
                    args.push((self.measured_unix_ms + at.as_millis() as u64).to_string());
                    args.push("--degrade-to-ms".into());
                    args.push(service_ms.to_string());
                }
            }
        }
        if let (Some(f), Some(d)) = (b.cold_factor, &b.cold_for) {
            args.push("--cold-factor".into());
            args.push(f.to_string());
            args.push("--cold-for-ms".into());
            args.push(parse_duration(d)?.as_millis().to_string());
        }
        Proc::spawn(
            &bin("lb-backend")?,
            &args,
            self.dir.join(format!("{}.log", b.id)),
            Duration::from_secs(20),
        )
    }
}

fn wait_child(child: &mut Child, limit: Duration) -> anyhow::Result<bool> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(s) = child.try_wait()? {
            return Ok(s.success());
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!("lb-loadgen did not finish within {limit:?}");
        }
        // No async exit notification for a child in std; a bounded poll.
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn run_policy(sc: &Scenario, c: &Contender, out_dir: &Path) -> anyhow::Result<PolicyRun> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    let data = dir.join("data");
    let mut daemon = Daemon::start(&data, "127.0.0.1:0", &[])?;
    let daemon_addr = daemon.addr();
    // Before any backend registers: --create makes the service.
    let mut set = vec![
        "set-policy",
        sc.service.as_str(),
        c.lb_policy.as_str(),
        "--create",
    ];
    set.extend(c.params.iter().map(String::as_str));
    ctl(&daemon_addr, &set)?;

    // The warm-up starts a few seconds from now, once everything is up.
    let start_unix_ms = unix_ms() + 1500 + 100 * sc.backends.len() as u64;
    let farm = Farm {
        sc,
        c,
        daemon_addr: daemon_addr.clone(),
        dir: dir.clone(),
        measured_unix_ms: start_unix_ms + sc.warmup.as_millis() as u64,
    };
    let mut procs: BTreeMap<String, Proc> = BTreeMap::new();
    for b in &sc.backends {
        procs.insert(b.id.clone(), farm.spawn_backend(b)?);
    }

    let run_path = dir.join("run.json");
    let lg_log = std::fs::File::create(dir.join("loadgen.log"))?;
    let mut loadgen = Command::new(bin("lb-loadgen")?)
        .args([
            "--daemon",
            &daemon_addr,
            "--service",
            &sc.service,
            "--clients",
            &sc.clients.to_string(),
            "--rate",
            &sc.rate().to_string(),
            "--duration",
            &format!("{}ms", sc.duration.as_millis()),
            "--warmup",
            &format!("{}ms", sc.warmup.as_millis()),
            "--seed",
            &sc.seed.to_string(),
            "--client-mode",
            if c.p2c { "p2c" } else { "lb" },
            "--timeout",
            &format!("{}ms", sc.timeout.as_millis()),
            "--start-at-unix-ms",
            &start_unix_ms.to_string(),
            "--min-servers",
            &sc.backends.len().to_string(),
            "--out",
            &run_path.display().to_string(),
        ])
        .args(loadgen_extra_args(sc))
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(lg_log.try_clone()?)
        .stderr(lg_log)
        .spawn()
        .context("cannot start lb-loadgen")?;

    let mut event_lateness = Vec::new();
    let mut restart_ms = Vec::new();
    for (at, e) in &sc.events {
        let t = farm.measured_unix_ms + at.as_millis() as u64;
        if let Event::Degrade { .. } | Event::Load { .. } = e {
            continue; // scheduled inside the backend / the load generator's plan
        }
        sleep_until_unix_ms(t);
        let late = unix_ms().saturating_sub(t) as f64;
        match e {
            Event::Kill { backend } => {
                if let Some(mut p) = procs.remove(backend) {
                    p.kill9();
                }
            }
            Event::Join(b) => {
                procs.insert(b.id.clone(), farm.spawn_backend(b)?);
            }
            Event::RestartBalancer => {
                daemon.proc.kill9();
                let t0 = Instant::now();
                daemon = Daemon::start(&data, &daemon_addr, &[])
                    .context("restarting lb-server on the same port")?;
                restart_ms.push(t0.elapsed().as_secs_f64() * 1000.0);
            }
            Event::Degrade { .. } | Event::Load { .. } => {}
        }
        event_lateness.push((e.label(), late));
    }

    let limit = sc.warmup + sc.duration + sc.timeout + Duration::from_secs(40);
    let ok = wait_child(&mut loadgen, limit)?;
    let lg_text = std::fs::read_to_string(dir.join("loadgen.log")).unwrap_or_default();
    if !ok {
        bail!("lb-loadgen failed:\n{lg_text}");
    }
    let run: Value = serde_json::from_str(
        &std::fs::read_to_string(&run_path).context("lb-loadgen wrote no result")?,
    )?;

    let mut cpu = BTreeMap::new();
    if let Some(s) = cpu_seconds(&daemon.proc.pid().to_string()) {
        cpu.insert("lb-server".to_string(), s);
    }
    let backend_cpu: f64 = procs
        .values()
        .filter_map(|p| cpu_seconds(&p.pid().to_string()))
        .sum();
    cpu.insert("lb-backend (all)".to_string(), backend_cpu);
    if let Some(s) = run.get("cpu_s").and_then(Value::as_f64) {
        cpu.insert("lb-loadgen".to_string(), s);
    }

    for p in procs.values_mut() {
        let _ = p.terminate(Duration::from_secs(3));
    }
    let _ = daemon.proc.terminate(Duration::from_secs(5));

    // Largest queue on any backend during the measured run.
    let (from_s, to_s) = (
        farm.measured_unix_ms / 1000,
        (farm.measured_unix_ms + sc.duration.as_millis() as u64) / 1000,
    );
    let mut backend_stats = Vec::new();
    let mut max_queue = 0u64;
    let mut received = BTreeMap::new();
    let measured_end_ms = farm.measured_unix_ms + sc.duration.as_millis() as u64;
    for id in sc.all_backend_ids() {
        let Ok(text) = std::fs::read_to_string(dir.join(format!("{id}.stats.json"))) else {
            continue;
        };
        let Ok(v) = serde_json::from_str::<Value>(&text) else {
            continue;
        };
        if let Some(q) = v.get("max_queue").and_then(Value::as_array) {
            for e in q {
                let s = e.get(0).and_then(Value::as_u64).unwrap_or(0);
                let n = e.get(1).and_then(Value::as_u64).unwrap_or(0);
                if (from_s..=to_s).contains(&s) {
                    max_queue = max_queue.max(n);
                }
            }
        }
        let got = whole_seconds_within(v.get("received"), farm.measured_unix_ms, measured_end_ms);
        received.insert(id, got);
        backend_stats.push(v);
    }

    // Keep the raw run and the logs of a failed or surprising run for reading.
    let keep = out_dir.join(format!("quality-{}", sc.name));
    std::fs::create_dir_all(&keep)?;
    std::fs::write(
        keep.join(format!("{}.run.json", c.name)),
        serde_json::to_string_pretty(&run)?,
    )?;
    Ok(PolicyRun {
        run,
        max_queue,
        backend_stats,
        event_lateness,
        cpu,
        restart_ms,
        received,
    })
}

/// lb-loadgen's arguments beyond the common ones: phase boundaries, `load`
/// steps, keys.
fn loadgen_extra_args(sc: &Scenario) -> Vec<String> {
    let mut a = Vec::new();
    let cuts: Vec<String> = sc.phases()[1..]
        .iter()
        .map(|p| format!("{}ms", p.from.as_millis()))
        .collect();
    if !cuts.is_empty() {
        a.extend(["--phases".to_string(), cuts.join(",")]);
    }
    for (at, e) in &sc.events {
        if let Event::Load { factor } = e {
            a.extend([
                "--load-step".to_string(),
                format!("{}ms={factor}", at.as_millis()),
            ]);
        }
    }
    if let Some(k) = &sc.keys {
        a.extend([
            "--keys".to_string(),
            k.count.to_string(),
            "--zipf-s".to_string(),
            k.zipf_s.to_string(),
        ]);
    }
    a
}

/// The sum of a `[[unix_s, n], ...]` series over the seconds that lie whole
/// within `[from_ms, to_ms)`.
fn whole_seconds_within(series: Option<&Value>, from_ms: u64, to_ms: u64) -> u64 {
    let Some(a) = series.and_then(Value::as_array) else {
        return 0;
    };
    a.iter()
        .filter_map(|e| Some((e.get(0)?.as_u64()?, e.get(1)?.as_u64()?)))
        .filter(|(s, _)| s * 1000 >= from_ms && (s + 1) * 1000 <= to_ms)
        .map(|(_, n)| n)
        .sum()
}

/// The busiest backend's share of `received` over the mean share 1/`n`
/// (`n` backends; one that received nothing counts as 0). None without
/// requests.
fn max_share_over_mean(received: &BTreeMap<String, u64>, n: usize) -> Option<f64> {
    let total: u64 = received.values().sum();
    let max = received.values().copied().max()?;
    if total == 0 || n == 0 {
        return None;
    }
    Some(max as f64 / total as f64 * n as f64)
}

fn num(v: &Value, k: &str) -> f64 {
    v.get(k).and_then(Value::as_f64).unwrap_or(0.0)
}

fn count(v: &Value, k: &str) -> u64 {
    v.get(k).and_then(Value::as_u64).unwrap_or(0)
}

/// Share (%) of the requests of `phase` sent to `id`.
fn share(phase: &Value, id: &str) -> f64 {
    let n = phase
        .get("backends")
        .and_then(|b| b.get(id))
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let total: u64 = phase
        .get("backends")
        .and_then(Value::as_object)
        .map(|m| m.values().filter_map(Value::as_u64).sum())
        .unwrap_or(0);
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

fn ratio(a: f64, b: Option<f64>) -> Value {
    match b {
        Some(b) if b > 0.0 => json!(round(a / b, 3)),
        _ => Value::Null,
    }
}

fn main() -> anyhow::Result<()> {
    lb_tests::cli::init_tracing("info");
    let args = Args::parse();
    let sc = load_scenario(&args.scenario, args.quick, args.seed)?;
    if args.check {
        println!(
            "{}: {} backends, capacity {:.0} req/s, offered {:.0} req/s, {} events{}",
            sc.name,
            sc.backends.len(),
            sc.capacity(),
            sc.rate(),
            sc.events.len(),
            match &sc.keys {
                Some(k) => format!(", {} keys (Zipf s = {})", k.count, k.zipf_s),
                None => String::new(),
            }
        );
        for (l, (cap, offered)) in sc.phase_labels().iter().zip(sc.phase_loads()) {
            println!(
                "  {l}: offered {offered:.0} req/s of {cap:.0} = {:.0} % of capacity",
                100.0 * offered / cap.max(1e-9)
            );
        }
        return Ok(());
    }
    for name in ["lb-server", "lb-backend", "lb-loadgen"] {
        bin(name)?;
    }
    std::fs::create_dir_all(&args.out)?;
    eprintln!(
        "scenario {}: {} backends, capacity {:.0} req/s, offered {:.0} req/s, {} clients, warm-up {:?}, run {:?}, seed {}{}",
        sc.name,
        sc.backends.len(),
        sc.capacity(),
        sc.rate(),
        sc.clients,
        sc.warmup,
        sc.duration,
        sc.seed,
        if args.quick { " (--quick)" } else { "" }
    );

    let mut runs: Vec<(Contender, PolicyRun)> = Vec::new();
    for p in &args.policies {
        let c = contender(p);
        eprintln!("== {} ...", c.name);
        let r = run_policy(&sc, &c, &args.out).with_context(|| format!("policy {p}"))?;
        eprintln!(
            "   p50 {} ms, p99 {} ms, errors {}, max queue {}",
            num(&r.run, "p50_ms"),
            num(&r.run, "p99_ms"),
            count(&r.run, "errors"),
            r.max_queue
        );
        runs.push((c, r));
    }

    // Phases and their labels (unique, each with its start).
    let phase_labels = sc.phase_labels();
    let empty = Vec::new();
    let phases_of = |r: &PolicyRun| -> Vec<Value> {
        r.run
            .get("phases")
            .and_then(Value::as_array)
            .unwrap_or(&empty)
            .clone()
    };
    // Each backend's reference phase: steady for the initial ones, the phase
    // after its join for a joiner.
    let total_cap = sc.capacity();
    let mut share_cols: Vec<(String, usize, Option<f64>)> = sc
        .backends
        .iter()
        .map(|b| (b.id.clone(), 0, Some(100.0 * b.capacity() / total_cap)))
        .collect();
    for (i, p) in sc.phases().iter().enumerate() {
        for e in &p.events {
            if let Event::Join(b) = e {
                share_cols.push((b.id.clone(), i, None));
            }
        }
    }

    let mut columns: Vec<String> = [
        "policy",
        "p50 ms",
        "p99 ms",
        "p99.9 ms",
        "errors",
        "timeouts",
        "max queue",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for (id, phase, cap) in &share_cols {
        columns.push(match cap {
            Some(c) => format!("{id} share % (capacity {c:.1})"),
            None => format!("{id} share % ({})", phase_labels[*phase]),
        });
    }
    columns.push("worst share/capacity (steady)".into());
    if sc.keys.is_some() {
        columns.push("max keyed share ÷ mean".into());
        columns.push("keyed calls on their key's usual backend %".into());
    }
    for l in &phase_labels {
        columns.push(format!("p99 ms {l}"));
    }
    for l in &phase_labels[1..] {
        columns.push(format!("errors {l}"));
    }
    // Calls that failed outright (not timeouts of an over-capacity farm):
    // what failover is for.
    for l in &phase_labels[1..] {
        columns.push(format!("failed {l} (not timeouts)"));
    }
    columns.extend(
        [
            "p99 ÷ round_robin",
            "p99 ÷ p2c",
            "p99 ÷ weighted",
            "errors ÷ round_robin",
            "errors ÷ p2c",
        ]
        .iter()
        .map(|s| s.to_string()),
    );

    let base = |name: &str, k: &str| -> Option<f64> {
        runs.iter()
            .find(|(c, _)| c.name == name)
            .map(|(_, r)| num(&r.run, k))
    };
    let mut rows = Vec::new();
    let mut p99_series = serde_json::Map::new();
    let mut err_series = serde_json::Map::new();
    let mut shares = serde_json::Map::new();
    for (c, r) in &runs {
        let phases = phases_of(r);
        let mut row = vec![
            json!(c.name),
            json!(round(num(&r.run, "p50_ms"), 1)),
            json!(round(num(&r.run, "p99_ms"), 1)),
            json!(round(num(&r.run, "p999_ms"), 1)),
            json!(count(&r.run, "errors")),
            json!(count(&r.run, "timeouts")),
            json!(r.max_queue),
        ];
        let mut s = serde_json::Map::new();
        let mut worst: f64 = 0.0;
        for (id, phase, cap) in &share_cols {
            let sh = phases.get(*phase).map(|p| share(p, id)).unwrap_or(0.0);
            row.push(json!(round(sh, 1)));
            s.insert(id.clone(), json!(round(sh, 1)));
            if let Some(cap) = cap {
                worst = worst.max(sh / cap);
            }
        }
        shares.insert(c.name.clone(), Value::Object(s));
        row.push(json!(round(worst, 3)));
        if sc.keys.is_some() {
            row.push(
                max_share_over_mean(&r.received, share_cols.len())
                    .map_or(Value::Null, |x| json!(round(x, 3))),
            );
            row.push(
                r.run
                    .get("key_affinity_pct")
                    .and_then(Value::as_f64)
                    .map_or(Value::Null, |x| json!(round(x, 1))),
            );
        }
        for i in 0..phase_labels.len() {
            row.push(json!(round(
                phases.get(i).map(|p| num(p, "p99_ms")).unwrap_or(0.0),
                1
            )));
        }
        for i in 1..phase_labels.len() {
            row.push(json!(phases
                .get(i)
                .map(|p| count(p, "errors"))
                .unwrap_or(0)));
        }
        for i in 1..phase_labels.len() {
            row.push(json!(phases
                .get(i)
                .map(|p| count(p, "failed") + count(p, "no_backend"))
                .unwrap_or(0)));
        }
        let (p99, errs) = (num(&r.run, "p99_ms"), num(&r.run, "errors"));
        row.push(ratio(p99, base("round_robin", "p99_ms")));
        row.push(ratio(p99, base("p2c", "p99_ms")));
        row.push(ratio(p99, base("weighted", "p99_ms")));
        row.push(ratio(errs, base("round_robin", "errors")));
        row.push(ratio(errs, base("p2c", "errors")));
        rows.push(Value::Array(row));
        p99_series.insert(
            c.name.clone(),
            r.run.get("p99_per_second").cloned().unwrap_or(json!([])),
        );
        err_series.insert(
            c.name.clone(),
            r.run.get("errors_per_second").cloned().unwrap_or(json!([])),
        );
    }

    // Notes: what was run, and the benchmark's own limits.
    let mut notes: Vec<String> = Vec::new();
    let stepped = sc
        .events
        .iter()
        .any(|(_, e)| matches!(e, Event::Load { .. }));
    notes.push(format!(
        "{} backends ({}), capacity {:.0} req/s; {} independent clients; open-loop Poisson arrivals at {:.0} % of capacity = {:.0} req/s{}; warm-up {:.0} s (not measured), measured {:.0} s; seed {} (same arrival times, clients and service demands for every policy); timeout {} ms counted as an error{}.",
        sc.backends.len(),
        sc.backends
            .iter()
            .map(|b| format!("{} {}×{} ms", b.id, b.slots, b.service_ms))
            .collect::<Vec<_>>()
            .join(", "),
        sc.capacity(),
        sc.clients,
        sc.load * 100.0,
        sc.rate(),
        if stepped { " (the base rate: load events step it)" } else { "" },
        sc.warmup.as_secs_f64(),
        sc.duration.as_secs_f64(),
        sc.seed,
        sc.timeout.as_millis(),
        if args.quick { "; --quick (a third of the scenario's duration)" } else { "" }
    ));
    if !sc.events.is_empty() {
        notes.push(format!(
            "Events (from the start of the measured run): {}.",
            sc.events
                .iter()
                .map(|(at, e)| format!("{:.1} s {}", at.as_secs_f64(), e.describe(sc.rate())))
                .collect::<Vec<_>>()
                .join("; ")
        ));
        notes.push(format!(
            "Offered load ÷ capacity of the backends up, by phase (nominal mean service times; cold starts and the backlog an earlier phase leaves not counted): {}.",
            phase_labels
                .iter()
                .zip(sc.phase_loads())
                .map(|(l, (cap, offered))| format!(
                    "{l} {:.0} %",
                    100.0 * offered / cap.max(1e-9)
                ))
                .collect::<Vec<_>>()
                .join("; ")
        ));
    }
    if let Some(k) = &sc.keys {
        let z = Zipf::new(k.count, k.zipf_s)?;
        notes.push(format!(
            "Keyed requests: {} keys, Zipf s = {} (the most popular key draws {:.1} % of requests, the top 10 {:.1} %), drawn from their own stream of the seed, the same for every policy. lb's clients send the key in `lb-hash-key` metadata through lb-client's LbChannel (the cluster-call path on which the hash policies follow it; the other policies ignore it); p2c ignores it. max keyed share ÷ mean = the busiest backend's share of the requests the {} backends received in the whole seconds of the measured run (their own counts, timeouts included), over 1/{}: 1 is even. keyed calls on their key's usual backend % = of the measured keyed calls whose backend the client knows, the share served by the backend their key used most (100: strict affinity; a key-blind policy scores about 1/{} plus the skew). The share % columns count requests whose backend the client knows (a keyed call that failed names none).",
            k.count,
            k.zipf_s,
            100.0 * z.pmf(1),
            100.0 * z.top(10),
            share_cols.len(),
            share_cols.len(),
            share_cols.len()
        ));
    }
    notes.push("Real processes on 127.0.0.1: one lb-server (defaults: 250 ms load reports, 1 s client stats), one lb-backend process per backend (FIFO slots, exponential service times as timers, not CPU), one lb-loadgen process holding every client. Latency runs from the scheduled arrival to the reply (queueing and the generator's own lateness included); percentiles are over answered requests; errors = timeouts + failed calls.".into());
    notes.push("weighted = weighted_round_robin with every backend registered at a static weight equal to its true capacity; p2c = tower 0.5 p2c + PeakEwmaDiscover (30 ms default RTT, 10 s decay) inside each client, membership from its lb subscription; every other row is the lb policy of that name with all weights 1; NAME+shed adds load shedding by backlog (shed_delay=100ms: drop entries when the farm's reported requests would take over 100 ms to drain; drops count as errors); NAME+slow adds slow start (slow_start_window=5s); NAME+bounded sets load_bound=1.25 (consistent hashing with bounded loads: no instance above 1.25 × the mean share of the affinity table's slots; the daemon spills keyed calls off an instance that receives more than 1.25 × its share, and each client moves a keyed call off a key's backend that holds more than its bounded share of the client's calls in flight; consistent_hash's default); NAME@PARAM=VALUE is NAME with that ctl set-policy parameter (load_aware@client_choices=1: clients follow the list without the two choices; load_aware@choice_prior=0: two choices that keep the list's shares at light load).".into());
    let delays: Vec<String> = runs
        .iter()
        .map(|(c, r)| {
            let d = r.run.get("send_delay_ms");
            let g = |k: &str| {
                d.and_then(|d| d.get(k))
                    .and_then(Value::as_f64)
                    .unwrap_or(0.0)
            };
            format!("{} {:.2}/{:.2}/{:.1}", c.name, g("p50"), g("p99"), g("max"))
        })
        .collect();
    notes.push(format!(
        "Load generator lateness (request started vs. scheduled, ms, p50/p99/max over warm-up + run): {}.",
        delays.join("; ")
    ));
    let phase_delays: Vec<String> = runs
        .iter()
        .map(|(c, r)| {
            let d: Vec<String> = phases_of(r)
                .iter()
                .map(|p| format!("{:.2}", num(p, "send_delay_p99_ms")))
                .collect();
            format!("{} {}", c.name, d.join(" / "))
        })
        .collect();
    notes.push(format!(
        "Lateness p99 by phase, ms ({}): {}.",
        phase_labels.join(" / "),
        phase_delays.join("; ")
    ));
    let cpu: Vec<String> = runs
        .iter()
        .map(|(c, r)| {
            let span = sc.warmup.as_secs_f64() + sc.duration.as_secs_f64();
            format!(
                "{} {}",
                c.name,
                r.cpu
                    .iter()
                    .map(|(k, v)| format!("{k} {:.2} cores", v / span))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    notes.push(format!(
        "CPU used (average over warm-up + run, 2 cores available; lb-server and backends counted for processes alive at the end): {}.",
        cpu.join("; ")
    ));
    let realized: Vec<String> = runs
        .iter()
        .map(|(c, r)| {
            format!(
                "{} {}",
                c.name,
                r.backend_stats
                    .iter()
                    .map(|v| format!(
                        "{} {:.2}",
                        v.get("id").and_then(Value::as_str).unwrap_or("?"),
                        num(v, "service_ms_realized_mean")
                    ))
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        })
        .collect();
    notes.push(format!(
        "Realized mean service time of completed requests per backend over its whole life, ms (the model's timer overshoot is calibrated away; a degraded backend mixes both means, and a backend whose requests time out keeps only the shorter ones): {}.",
        realized.join("; ")
    ));
    let late: Vec<String> = runs
        .iter()
        .filter(|(_, r)| !r.event_lateness.is_empty())
        .map(|(c, r)| {
            format!(
                "{} {}",
                c.name,
                r.event_lateness
                    .iter()
                    .map(|(l, ms)| format!("{l} +{ms:.0} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    if !late.is_empty() {
        notes.push(format!(
            "Events applied by lb-bench, lateness vs. schedule: {}.",
            late.join("; ")
        ));
    }
    let restarts: Vec<String> = runs
        .iter()
        .filter(|(_, r)| !r.restart_ms.is_empty())
        .map(|(c, r)| {
            format!(
                "{} {}",
                c.name,
                r.restart_ms
                    .iter()
                    .map(|ms| format!("{ms:.0} ms"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        })
        .collect();
    if !restarts.is_empty() {
        notes.push(format!(
            "lb-server restart (spawn to listening, same port and data dir): {}.",
            restarts.join("; ")
        ));
    }
    notes.extend(sc.notes.iter().cloned());

    // One mark per phase: events at one instant share it.
    let events: Vec<Value> = sc.phases()[1..]
        .iter()
        .map(|p| {
            let l: Vec<String> = p.events.iter().map(Event::label).collect();
            json!([round(p.from.as_secs_f64(), 3), l.join(" + ")])
        })
        .collect();
    let command = format!(
        "target/release/lb-bench --scenario {}{}{}",
        args.scenario.display(),
        if args.policies.join(",")
            == "round_robin,weighted,load_aware,least_active,fastest_response,p2c"
        {
            String::new()
        } else {
            format!(" --policies {}", args.policies.join(","))
        },
        if args.quick { " --quick" } else { "" }
    );
    let result = json!({
        "bench": format!("quality-{}", sc.name),
        "title": if sc.title.is_empty() { format!("Balancing quality, {}", sc.name) } else { sc.title.clone() },
        "command": command,
        "machine": machine(),
        "columns": columns,
        "rows": rows,
        "notes": notes,
        "series": {
            "p99_per_second": p99_series,
            "errors_per_second": err_series,
            "shares": shares,
            "events": events,
        },
    });
    let path = args.out.join(format!("quality-{}.json", sc.name));
    std::fs::write(&path, serde_json::to_string_pretty(&result)?)?;

    // A table a person can read.
    println!("| {} |", columns.join(" | "));
    println!("|{}|", vec!["---"; columns.len()].join("|"));
    for row in &rows {
        let cells: Vec<String> = row
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|v| match v {
                        Value::String(s) => s.clone(),
                        Value::Null => "-".into(),
                        other => other.to_string(),
                    })
                    .collect()
            })
            .unwrap_or_default();
        println!("| {} |", cells.join(" | "));
    }
    for n in &notes {
        println!("- {n}");
    }
    println!("wrote {}", path.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suffixes_add_their_parameters_to_the_base_policy() {
        let c = contender("load_aware@client_choices=1");
        assert_eq!(c.params, ["-p", "client_choices=1"]);
        let c = contender("load_aware+shed+slow");
        assert_eq!(c.name, "load_aware+shed+slow");
        assert_eq!(c.lb_policy, "load_aware");
        assert_eq!(
            c.params,
            ["-p", "shed_delay=100ms", "-p", "slow_start_window=5s"]
        );
        let p = contender("p2c");
        assert!(p.p2c && p.params.is_empty());
        let b = contender("consistent_hash+bounded");
        assert_eq!(
            (b.lb_policy.as_str(), b.params.as_slice()),
            (
                "consistent_hash",
                ["-p", "load_bound=1.25"].map(String::from).as_slice()
            )
        );
    }

    const FARM: &str = r#"
name = "t"
clients = 4
load = 0.5
warmup = "3s"
duration = "30s"

[[backends]]
id = "b0"
service_ms = 10

[[backends]]
id = "b1"
service_ms = 20
"#;

    fn scenario(extra: &str) -> anyhow::Result<Scenario> {
        parse_scenario(&format!("{FARM}{extra}"), false, None)
    }

    #[test]
    fn a_backend_may_degrade_and_recover_and_events_may_share_an_instant() {
        let sc = scenario(
            r#"
[[events]]
at = "8s"
kind = "degrade"
backend = "b0"
service_ms = 80

[[events]]
at = "16s"
kind = "degrade"
backend = "b0"
service_ms = 10

[[events]]
at = "12s"
kind = "degrade"
backend = "b1"
service_ms = 40

[[events]]
at = "12s"
kind = "kill"
backend = "b0"
"#,
        )
        .unwrap();
        assert_eq!(sc.events.len(), 4);
        assert_eq!(
            sc.phase_labels(),
            [
                "steady (from 0s)",
                "after degrade b0 to 80 ms (from 8s)",
                "after degrade b1 to 40 ms + kill b0 (from 12s)",
                "after degrade b0 to 10 ms (from 16s)",
            ]
        );
        // Capacities: 800 + 400; b0 at 80 ms: 100 + 400; b1 at 40 ms, b0 gone: 200.
        let caps: Vec<f64> = sc.phase_loads().iter().map(|(c, _)| c.round()).collect();
        assert_eq!(caps, [1200.0, 500.0, 200.0, 200.0]);
        assert_eq!(
            loadgen_extra_args(&sc),
            ["--phases", "8000ms,12000ms,16000ms"]
        );
        // The same backend twice at one instant is ambiguous.
        let twice = r#"
[[events]]
at = "8s"
kind = "degrade"
backend = "b0"
service_ms = 80

[[events]]
at = "8s"
kind = "degrade"
backend = "b0"
service_ms = 40
"#;
        assert!(scenario(twice).is_err());
    }

    #[test]
    fn same_labels_at_different_instants_stay_apart_and_quick_scales_them() {
        let ev = r#"
[[events]]
at = "10s"
kind = "degrade"
backend = "b0"
service_ms = 80

[[events]]
at = "20s"
kind = "degrade"
backend = "b0"
service_ms = 80
"#;
        let sc = parse_scenario(&format!("{FARM}{ev}"), true, None).unwrap();
        assert_eq!(
            sc.phase_labels(),
            [
                "steady (from 0s)",
                "after degrade b0 to 80 ms (from 3.3s)",
                "after degrade b0 to 80 ms (from 6.7s)",
            ]
        );
        assert_eq!(sc.events[0].0, Duration::from_millis(3333));
    }

    #[test]
    fn load_events_step_the_offered_rate() {
        let sc = scenario(
            r#"
[[events]]
at = "18s"
kind = "load"
factor = 1.3

[[events]]
at = "22s"
kind = "load"
factor = 1.0
"#,
        )
        .unwrap();
        assert_eq!(sc.rate(), 600.0);
        let offered: Vec<f64> = sc.phase_loads().iter().map(|(_, o)| o.round()).collect();
        assert_eq!(offered, [600.0, 780.0, 600.0]);
        assert_eq!(
            sc.phase_labels()[1..],
            [
                "after load 1.3× base (from 18s)",
                "after load 1× base (from 22s)"
            ]
        );
        assert_eq!(
            loadgen_extra_args(&sc),
            [
                "--phases",
                "18000ms,22000ms",
                "--load-step",
                "18000ms=1.3",
                "--load-step",
                "22000ms=1"
            ]
        );
        for bad in [
            "[[events]]\nat = \"5s\"\nkind = \"load\"\n",
            "[[events]]\nat = \"5s\"\nkind = \"load\"\nfactor = 0\n",
            "[[events]]\nat = \"5s\"\nkind = \"load\"\nfactor = 2\nbackend = \"b0\"\n",
            "[[events]]\nat = \"5s\"\nkind = \"kill\"\nbackend = \"b0\"\nfactor = 2\n",
            "[[events]]\nat = \"0s\"\nkind = \"load\"\nfactor = 2\n",
        ] {
            assert!(scenario(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_keys_table() {
        let sc = scenario(
            "
[keys]
count = 10000
zipf_s = 1.1
",
        )
        .unwrap();
        let k = sc.keys.unwrap();
        assert_eq!((k.count, k.zipf_s), (10000, 1.1));
        assert_eq!(
            loadgen_extra_args(&sc),
            ["--keys", "10000", "--zipf-s", "1.1"]
        );
        let default_s = scenario(
            "
[keys]
count = 50
",
        )
        .unwrap();
        assert_eq!(default_s.keys.unwrap().zipf_s, 1.0);
        assert!(scenario("").unwrap().keys.is_none());
        assert!(scenario(
            "
[keys]
count = 0
"
        )
        .is_err());
        assert!(scenario(
            "
[keys]
count = 10
zipf_s = -1
"
        )
        .is_err());
        assert!(
            scenario(
                "
[keys]
count = 10
zipf = 1
"
            )
            .is_err(),
            "unknown field"
        );
    }

    #[test]
    fn keyed_share_counts_whole_seconds_of_the_run() {
        let series = json!([[99, 5], [100, 10], [101, 20], [102, 7]]);
        // Run from 100.0 s to 102.5 s: seconds 100 and 101 are whole.
        assert_eq!(whole_seconds_within(Some(&series), 100_000, 102_500), 30);
        assert_eq!(whole_seconds_within(None, 0, 1), 0);
        let even: BTreeMap<String, u64> =
            [("a".into(), 10), ("b".into(), 10)].into_iter().collect();
        assert_eq!(max_share_over_mean(&even, 2), Some(1.0));
        // A third backend that received nothing still counts in the mean.
        assert_eq!(max_share_over_mean(&even, 3), Some(1.5));
        let none: BTreeMap<String, u64> = [("a".into(), 0)].into_iter().collect();
        assert_eq!(max_share_over_mean(&none, 1), None);
    }
}
