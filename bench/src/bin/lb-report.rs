//! `lb-report`: turns the benchmarks' JSON into `BENCHMARKS.md` and its plots.
//!
//! Reads every `*.json` in `--results` (default `bench/results`):
//! - the **common format** every benchmark writes:
//!   `{"bench", "title", "command", "machine", "columns", "rows", "notes",
//!   "series"?, "metrics"?}`; rendered as a section with a Markdown table;
//! - `lb-probe --json` output (an array of figures), converted here, and
//!   `lb-sim --json` output (`{"scenario", "results": [...]}`), read back as
//!   `lb_sim::metrics::Summary`, which renders its table as `lb-sim` prints it.
//!
//! Sections come in a fixed order: balancing quality (real processes), the
//! simulator, pick, propagation, ingest, connections and scale, liveness and
//! restart, hop cost, authentication and TLS cost;
//! then a table of the goals with the figure each run reached, looked up in
//! `metrics` (preferred) or in the table.
//!
//! Plots (SVG, `plotters`; no system fonts needed) go to `--plots` (default
//! `bench/plots`): for a quality result with `series.p99_per_second`, p99 over
//! time per policy with the scenario's `series.events` marked; for one with
//! `series.shares`, each backend's share of requests against its share of
//! capacity; and the same two from the simulator (p99 by phase, steady-phase
//! shares). The series formats it reads:
//!
//! ```json
//! "series": {
//!   "p99_per_second": {"load_aware": [12.1, 13.0, ...]},
//!   "events": [{"t_s": 12.0, "label": "b00 degrades to 80 ms"}],
//!   "shares": {"load_aware": [{"backend": "b00", "share": 0.29, "capacity": 0.286}]}
//! }
//! ```
//!
//! (`p99_per_second` values are ms for second 0, 1, … of the measured run;
//! `[t, ms]` pairs work too.)
//!
//! `target/release/lb-report --results bench/results --out BENCHMARKS.md --plots bench/plots`

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use clap::Parser;
use lb_bench::machine::machine;
use lb_bench::stats::round;
use lb_sim::metrics::{PolicySummary, Summary};
use serde::Deserialize;
use serde_json::Value;

/// Writes BENCHMARKS.md and the plots from the benchmarks' JSON.
#[derive(Debug, Parser)]
struct Args {
    /// Directory of the benchmarks' JSON.
    #[arg(long, default_value = "bench/results")]
    results: PathBuf,
    /// The Markdown report to write.
    #[arg(long, default_value = "BENCHMARKS.md")]
    out: PathBuf,
    /// Directory for the SVG plots.
    #[arg(long, default_value = "bench/plots")]
    plots: PathBuf,
}

// ---------------------------------------------------------------------------
// Input
// ---------------------------------------------------------------------------

/// One benchmark's result in the common format.
#[derive(Debug, Clone, Default, PartialEq)]
struct Bench {
    /// File it came from (its stem names its plots).
    file: String,
    bench: String,
    title: String,
    command: String,
    machine: String,
    columns: Vec<String>,
    rows: Vec<Vec<Value>>,
    notes: Vec<String>,
    series: Value,
    metrics: Value,
}

impl Bench {
    fn from_value(file: &str, v: &Value) -> anyhow::Result<Bench> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let columns: Vec<String> = v
            .get("columns")
            .and_then(Value::as_array)
            .context("no \"columns\" array")?
            .iter()
            .map(|c| c.as_str().map_or_else(|| c.to_string(), str::to_string))
            .collect();
        let rows: Vec<Vec<Value>> = v
            .get("rows")
            .and_then(Value::as_array)
            .context("no \"rows\" array")?
            .iter()
            .map(|r| r.as_array().cloned().unwrap_or_else(|| vec![r.clone()]))
            .collect();
        let notes = match v.get("notes") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|n| n.as_str().map_or_else(|| n.to_string(), str::to_string))
                .collect(),
            Some(Value::String(n)) => vec![n.clone()],
            _ => Vec::new(),
        };
        let bench = s("bench");
        Ok(Bench {
            file: file.to_string(),
            title: Some(s("title"))
                .filter(|t| !t.is_empty())
                .unwrap_or_else(|| bench.clone()),
            bench,
            command: s("command"),
            machine: s("machine"),
            columns,
            rows,
            notes,
            series: v.get("series").cloned().unwrap_or(Value::Null),
            metrics: v.get("metrics").cloned().unwrap_or(Value::Null),
        })
    }

    /// A number from `metrics`.
    fn metric(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).and_then(num)
    }

    /// Index of the first column whose lower-cased header satisfies `pred`.
    fn col(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.columns.iter().position(|c| pred(&c.to_lowercase()))
    }

    /// Index of the first row whose first cell (lower-cased) satisfies `pred`.
    fn row(&self, pred: impl Fn(&str) -> bool) -> Option<usize> {
        self.rows.iter().position(|r| {
            r.first()
                .is_some_and(|c| pred(&cell_text(c).to_lowercase()))
        })
    }

    fn cell(&self, row: usize, col: usize) -> Option<f64> {
        self.rows.get(row)?.get(col).and_then(num)
    }

    /// The first row whose first cell contains every one of `words` (lower case).
    fn row_with(&self, words: &[&str]) -> Option<usize> {
        self.row(|r| words.iter().all(|w| r.contains(w)))
    }

    /// The numbers in row `row` after its first cell.
    fn row_nums(&self, row: usize) -> Vec<f64> {
        self.rows
            .get(row)
            .map(|r| r.iter().skip(1).filter_map(num).collect())
            .unwrap_or_default()
    }

    /// The largest number in column `col`.
    fn col_max(&self, col: usize) -> Option<f64> {
        self.rows
            .iter()
            .filter_map(|r| r.get(col).and_then(num))
            .reduce(f64::max)
    }
}

/// A number, or a string holding one ("1,234", "12.5 ms").
fn num(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .split_whitespace()
            .next()?
            .replace([',', '×', '%'], "")
            .parse()
            .ok(),
        _ => None,
    }
}

/// One `lb-probe --json` figure.
#[derive(Debug, Clone, Deserialize, PartialEq)]
struct ProbeFigure {
    figure: String,
    #[serde(default)]
    instances: Option<u64>,
    #[serde(default)]
    services: Option<u64>,
    samples: u64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

/// The simulator's runs: the main comparison, other seeds, and variants.
#[derive(Debug, Clone, Default)]
struct SimSet {
    main: Option<Summary>,
    /// `sim-seed*.json`.
    seeds: Vec<Summary>,
    /// `sim-variant-*.json`, by file stem.
    variants: BTreeMap<String, Summary>,
}

/// Everything read from the results directory.
#[derive(Debug, Default)]
struct Results {
    benches: Vec<Bench>,
    sim: SimSet,
    /// `run.meta` written by scripts/bench.sh.
    meta: Value,
    /// Files that could not be read, with why.
    skipped: Vec<String>,
}

fn load(dir: &Path) -> anyhow::Result<Results> {
    let mut out = Results::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("cannot read {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .collect();
    files.sort();
    for path in files {
        let stem = path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        let text = std::fs::read_to_string(&path)?;
        let value: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(e) => {
                out.skipped
                    .push(format!("{}: not JSON ({e})", path.display()));
                continue;
            }
        };
        match classify(&stem, value) {
            Ok(Input::Bench(b)) => out.benches.push(*b),
            Ok(Input::Sim(r)) => {
                if stem.starts_with("sim-seed") {
                    out.sim.seeds.push(*r);
                } else if let Some(v) = stem.strip_prefix("sim-variant-") {
                    out.sim.variants.insert(v.to_string(), *r);
                } else {
                    out.sim.main = Some(*r);
                }
            }
            Err(e) => out.skipped.push(format!("{}: {e:#}", path.display())),
        }
    }
    if let Ok(meta) = std::fs::read_to_string(dir.join("run.meta")) {
        out.meta = serde_json::from_str(&meta).unwrap_or(Value::Null);
    }
    Ok(out)
}

enum Input {
    Bench(Box<Bench>),
    Sim(Box<Summary>),
}

fn classify(stem: &str, v: Value) -> anyhow::Result<Input> {
    if v.get("columns").is_some() {
        return Ok(Input::Bench(Box::new(Bench::from_value(stem, &v)?)));
    }
    if v.get("scenario").is_some() && v.get("results").is_some() {
        return Ok(Input::Sim(Box::new(serde_json::from_value(v)?)));
    }
    if v.as_array()
        .is_some_and(|a| a.iter().all(|f| f.get("figure").is_some()))
    {
        let figures: Vec<ProbeFigure> = serde_json::from_value(v)?;
        return Ok(Input::Bench(Box::new(probe_bench(stem, &figures))));
    }
    bail!("neither the common format, lb-sim's nor lb-probe's JSON")
}

// ---------------------------------------------------------------------------
// Conversions
// ---------------------------------------------------------------------------

/// `lb-probe`'s figures as a common-format result (the rows of the
/// foundation's table).
fn probe_bench(stem: &str, figures: &[ProbeFigure]) -> Bench {
    let mut b = Bench {
        file: stem.to_string(),
        bench: "restart".into(),
        title: "Liveness and restart".into(),
        machine: machine(),
        columns: ["figure", "samples", "p50 ms", "p99 ms", "max ms"]
            .map(String::from)
            .to_vec(),
        ..Bench::default()
    };
    let mut metrics = serde_json::Map::new();
    let kill = figures.iter().find(|f| f.figure == "liveness_kill");
    let frozen = figures.iter().find(|f| f.figure == "liveness_frozen");
    let row = |name: String, f: &ProbeFigure| {
        vec![
            Value::from(name),
            Value::from(f.samples),
            Value::from(round(f.p50_ms, 1)),
            Value::from(round(f.p99_ms, 1)),
            Value::from(round(f.max_ms, 1)),
        ]
    };
    if let Some(f) = kill {
        b.rows
            .push(row("backend kill -9 → client holds new list".into(), f));
        metrics.insert("kill_p50_ms".into(), f.p50_ms.into());
        metrics.insert("kill_p99_ms".into(), f.p99_ms.into());
    }
    if let Some(f) = frozen {
        b.rows.push(row(
            "baseline: backend frozen (SIGSTOP) → client holds new list".into(),
            f,
        ));
    }
    if let (Some(k), Some(f)) = (kill, frozen) {
        b.rows.push(vec![
            "ratio of medians, kill / frozen".into(),
            Value::Null,
            Value::from(round_sig(k.p50_ms / f.p50_ms, 2)),
            Value::Null,
            Value::Null,
        ]);
    }
    let restarts: Vec<&ProbeFigure> = figures.iter().filter(|f| f.figure == "restart").collect();
    let empty = restarts
        .iter()
        .find(|f| f.instances == Some(0))
        .map(|f| f.p50_ms);
    for f in &restarts {
        let n = f.instances.unwrap_or(0);
        let ratio = match empty {
            Some(e) if n > 0 && e > 0.0 => {
                format!(" ({:.2}× the empty-store restart)", f.p50_ms / e)
            }
            _ => String::new(),
        };
        b.rows.push(row(
            format!(
                "restart with {n} persisted instances ({} services) → client holds restored list{ratio}",
                f.services.unwrap_or(1)
            ),
            f,
        ));
        metrics.insert(format!("restart_{n}_p50_ms"), f.p50_ms.into());
        metrics.insert(format!("restart_{n}_p99_ms"), f.p99_ms.into());
    }
    b.metrics = Value::Object(metrics);
    let instances: Vec<String> = restarts
        .iter()
        .map(|f| f.instances.unwrap_or(0).to_string())
        .collect();
    b.command = format!(
        "target/release/lb-probe --trials {} --frozen-trials {} --instances {} --restarts {} --json bench/results/{stem}.json",
        kill.map_or(0, |f| f.samples),
        frozen.map_or(0, |f| f.samples),
        instances.join(","),
        restarts.first().map_or(0, |f| f.samples),
    );
    b.notes = PROBE_NOTES.iter().map(|s| s.to_string()).collect();
    b
}

const PROBE_NOTES: &[&str] = &[
    "**backend kill -9 → client holds new list**: a registered `echo-backend` is killed with SIGKILL. The clock runs from the kill until a subscribed lb-client holds a list without that backend. The kernel closes the backend's TCP connection, so the daemon sees its `ReportLoad` stream break, re-plans, and pushes the new list. Daemon defaults apply (report interval 250 ms, TTL 5 s).",
    "**baseline: backend frozen (SIGSTOP)**: the same measurement for a backend that hangs. Its connection stays open, so only the daemon's HTTP/2 keepalive (2 s interval + 2 s timeout) or its TTL (5 s) can find it. This is the wait a heartbeat-only registry has for every failure, crashes included.",
    "**restart with N persisted instances**: N instances are registered through unary `Register` leases (over 100 services, weights 1–5) and the daemon is killed with `-9`. A subscriber to the last service is already retrying with a 1 ms backoff. The clock runs from spawning the new `lb-server` process until that subscriber holds the complete restored list. It includes process start, opening sled, loading and planning every service, and the first push. N = 0 is the empty-store baseline.",
];

/// Where a bench goes in the report.
fn rank(b: &Bench) -> u8 {
    let n = b.bench.to_lowercase();
    match () {
        _ if n == "sim" || n == "simulator" => 1,
        _ if n.contains("pick") => 2,
        _ if n.contains("propagation") || n == "replicas" || n == "xds" => 3,
        _ if n.contains("ingest") => 4,
        _ if n.contains("scale") => 5,
        // Next to scale, its neighbour in subject (daemon memory and sockets).
        _ if n == "connections" => 5,
        _ if n.contains("restart") && !is_quality(b) || n.contains("liveness") => 6,
        _ if n.contains("probe") => 6,
        _ if n.contains("hop") => 7,
        _ if n == "auth" => 8,
        _ => 0,
    }
}

/// A balancing-quality result (real processes, one scenario): it carries
/// per-policy series, or is not one of the control-plane names.
fn is_quality(b: &Bench) -> bool {
    b.series.get("p99_per_second").is_some()
        || b.series.get("shares").is_some()
        || b.bench.starts_with("quality")
}

/// Quality results first with hetero-degrade leading, then the fixed order.
fn ordered(benches: &[Bench]) -> Vec<&Bench> {
    let mut v: Vec<&Bench> = benches.iter().collect();
    v.sort_by_key(|b| {
        (
            rank(b),
            !b.bench.contains("hetero-degrade"),
            b.bench.clone(),
            b.file.clone(),
        )
    });
    v
}

// ---------------------------------------------------------------------------
// Markdown
// ---------------------------------------------------------------------------

fn cell_text(v: &Value) -> String {
    match v {
        Value::Null => "–".into(),
        Value::String(s) => s.replace('|', "\\|").replace('\n', " "),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) => {
            if n.is_f64() {
                let x = n.as_f64().unwrap_or(f64::NAN);
                if x.fract() == 0.0 && x.abs() < 1e15 {
                    format!("{x:.1}")
                } else {
                    format!("{x}")
                }
            } else {
                n.to_string()
            }
        }
        other => other.to_string().replace('|', "\\|"),
    }
}

/// A Markdown table; numeric columns are right-aligned.
fn table(columns: &[String], rows: &[Vec<Value>]) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "| {} |",
        columns
            .iter()
            .map(|c| c.replace('|', "\\|"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    let align: Vec<&str> = (0..columns.len())
        .map(|i| {
            let mut cells = rows
                .iter()
                .filter_map(|r| r.get(i))
                .filter(|v| !v.is_null());
            let numeric = cells.clone().next().is_some() && cells.all(Value::is_number);
            if numeric {
                "---:"
            } else {
                "---"
            }
        })
        .collect();
    let _ = writeln!(t, "|{}|", align.join("|"));
    for r in rows {
        let cells: Vec<String> = (0..columns.len())
            .map(|i| r.get(i).map_or_else(String::new, cell_text))
            .collect();
        let _ = writeln!(t, "| {} |", cells.join(" | "));
    }
    t
}

fn section(b: &Bench, plots: &[(String, String)]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "## {}\n", b.title);
    if !b.command.is_empty() {
        let _ = writeln!(s, "```sh\n{}\n```\n", b.command);
    }
    if !b.machine.is_empty() {
        let _ = writeln!(s, "Machine: {}.\n", b.machine);
    }
    s.push_str(&table(&b.columns, &b.rows));
    // Rows named NAME@PARAM=VALUE (lb-bench's experiment syntax), for
    // results whose own notes predate it.
    let experiments = b
        .rows
        .iter()
        .any(|r| r.first().is_some_and(|c| cell_text(c).contains('@')));
    let explained = b.notes.iter().any(|n| n.contains("NAME@PARAM=VALUE"));
    if !b.notes.is_empty() || (experiments && !explained) {
        s.push('\n');
        for n in &b.notes {
            let _ = writeln!(s, "- {n}");
        }
        if experiments && !explained {
            let _ = writeln!(
                s,
                "- NAME@PARAM=VALUE is NAME with that `ctl set-policy` parameter: load_aware@client_choices=1 has clients follow the list without the two choices; load_aware@choice_prior=0 uses two choices that keep the list's shares at light load."
            );
        }
    }
    for (alt, link) in plots {
        let _ = writeln!(s, "\n![{alt}]({link})");
    }
    s.push('\n');
    s
}

fn fmt_int(n: u64) -> String {
    let d = n.to_string();
    let mut out = String::new();
    for (i, c) in d.chars().enumerate() {
        if i > 0 && (d.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn ratio(a: f64, b: f64) -> String {
    if b == 0.0 {
        return "–".into();
    }
    let r = a / b;
    if r < 0.1 {
        format!("{r:.3}×")
    } else {
        format!("{r:.2}×")
    }
}

fn phase_p99(p: &PolicySummary, i: usize) -> f64 {
    p.phases.get(i).map_or(f64::NAN, |ph| ph.p99_ms)
}

fn sim_command(r: &Summary, policies: &str, extra: &str, file: &str) -> String {
    let mut c = format!("target/release/lb-sim --policies {policies}");
    if r.scenario != "hetero-degrade" {
        let _ = write!(c, " --scenario {}", r.scenario);
    }
    if r.seed != 1 {
        let _ = write!(c, " --seed {}", r.seed);
    }
    if (r.duration_s - 30.0).abs() > 1e-9 {
        let _ = write!(c, " --duration {}s", r.duration_s);
    }
    let _ = write!(c, "{extra} --json bench/results/{file}.json");
    c
}

/// The simulator's section: the comparison table as `lb-sim` prints it, how
/// to read it (figures from the run), and the variants behind the defaults.
fn sim_section(sim: &SimSet, plots: &[(String, String)]) -> Option<String> {
    let r = sim.main.as_ref()?;
    let mut s = String::new();
    s.push_str("## Policies on `hetero-degrade`, simulated\n\n");
    s.push_str(SIM_INTRO);
    let _ = writeln!(s, "\n```sh\n{}\n```\n", sim_command(r, "all", "", "sim"));
    s.push_str(&r.table());
    for (alt, link) in plots {
        let _ = writeln!(s, "\n![{alt}]({link})");
    }
    s.push_str("\nHow to read it:\n");
    s.push_str(SIM_SATURATION);
    let la = r.policy("load_aware");
    if let (Some(la), Some(rr)) = (la, r.policy("round_robin")) {
        let _ = writeln!(
            s,
            "- **load_aware vs round_robin:** errors {} vs {} ({}). p99 is {:.0} ms vs {:.0} ms in the steady phase ({}) and {:.0} ms vs {:.0} ms after the degrade ({}).",
            fmt_int(la.errors),
            fmt_int(rr.errors),
            ratio(la.errors as f64, rr.errors as f64),
            phase_p99(la, 0),
            phase_p99(rr, 0),
            ratio(phase_p99(la, 0), phase_p99(rr, 0)),
            phase_p99(la, 1),
            phase_p99(rr, 1),
            ratio(phase_p99(la, 1), phase_p99(rr, 1)),
        );
    }
    if let (Some(la), Some(p2c)) = (la, r.policy("p2c_peak_ewma")) {
        let _ = writeln!(
            s,
            "- **load_aware vs p2c + PeakEWMA:** errors {} vs {} ({}). Degrade-phase p99 is {:.0} ms vs {:.0} ms ({}); steady phase {:.0} vs {:.0} ms.",
            fmt_int(la.errors),
            fmt_int(p2c.errors),
            ratio(la.errors as f64, p2c.errors as f64),
            phase_p99(la, 1),
            phase_p99(p2c, 1),
            ratio(phase_p99(la, 1), phase_p99(p2c, 1)),
            phase_p99(la, 0),
            phase_p99(p2c, 0),
        );
    }
    if let (Some(la), Some(w)) = (la, r.policy("weighted_round_robin")) {
        let _ = writeln!(
            s,
            "- **load_aware vs weighted_round_robin (capacity weights known in advance):** steady phase {:.0} vs {:.0} ms. After the degrade, the static weights cannot react ({:.0} ms, {} errors).",
            phase_p99(la, 0),
            phase_p99(w, 0),
            phase_p99(w, 1),
            fmt_int(w.errors),
        );
    }
    let mut seeds: Vec<&Summary> = sim.seeds.iter().collect();
    seeds.sort_by_key(|r| r.seed);
    let seed_rows: Vec<(u64, &PolicySummary, &PolicySummary)> = seeds
        .iter()
        .filter_map(|r| Some((r.seed, r.policy("load_aware")?, r.policy("p2c_peak_ewma")?)))
        .collect();
    if !seed_rows.is_empty() {
        let flags: Vec<String> = seed_rows
            .iter()
            .map(|(k, _, _)| format!("`--seed {k}`"))
            .collect();
        let list = |f: &dyn Fn(&(u64, &PolicySummary, &PolicySummary)) -> String| {
            seed_rows.iter().map(f).collect::<Vec<_>>().join(" / ")
        };
        let _ = writeln!(
            s,
            "- **Other seeds:** with {}, load_aware has {} errors against p2c's {}, and a degrade-phase p99 of {} ms against {} ms.",
            flags.join(" / "),
            list(&|(_, la, _)| fmt_int(la.errors)),
            list(&|(_, _, p)| fmt_int(p.errors)),
            list(&|(_, la, _)| format!("{:.0}", phase_p99(la, 1))),
            list(&|(_, _, p)| format!("{:.0}", phase_p99(p, 1))),
        );
    }
    s.push_str(SIM_IGNORE_LOAD);
    if let Some(lc) = r.policy("least_connections") {
        let _ = writeln!(
            s,
            "- **least_connections and least_active** (rows identical because every static weight is 1) compare raw active counts across backends. Every client acts on the same snapshot until the next report, so they herd a little: steady-phase p99 is {:.0} ms.",
            phase_p99(lc, 0)
        );
    }
    if let Some(fr) = r.policy("fastest_response") {
        let _ = writeln!(
            s,
            "- **fastest_response** follows 1 s batches of client-reported latency: steady-phase p99 {:.0} ms, after the degrade {:.0} ms (it reacts slowly).",
            phase_p99(fr, 0),
            phase_p99(fr, 1)
        );
    }

    // The variants behind the defaults.
    let variant = |name: &str, flag: &str, rep: Option<&Summary>| -> Option<String> {
        let p = rep?.policy("load_aware")?;
        Some(format!(
            "| load_aware, {name}{flag} | {} | {} |",
            fmt_int(p.errors),
            p.p99_by_phase()
        ))
    };
    let mut rows = Vec::new();
    rows.extend(variant("250 ms reports (default)", "", Some(r)));
    for (key, label, flag, note) in SIM_VARIANTS {
        let shown = format!("`{}`{note}", flag.trim_start());
        rows.extend(variant(label, &shown, sim.variants.get(key)));
    }
    s.push_str("\nWhat shaped the defaults (same command with the flag shown");
    if !sim.variants.is_empty() {
        let cmds: Vec<String> = sim
            .variants
            .iter()
            .map(|(k, v)| {
                let flag = SIM_VARIANTS
                    .iter()
                    .find(|(key, ..)| key == k)
                    .map_or("", |(_, _, flag, _)| flag);
                format!(
                    "`{}`",
                    sim_command(v, "load_aware", flag, &format!("sim-variant-{k}"))
                )
            })
            .collect();
        let _ = write!(s, "; this run: {}", cmds.join(", "));
    }
    s.push_str("):\n\n| variant | errors | p99 by phase (steady / degraded / after kill) |\n|---|---:|---|\n");
    for row in rows {
        let _ = writeln!(s, "{row}");
    }
    s.push_str(SIM_HISTORICAL_ROW);
    s.push_str(SIM_OUTRO);
    s.push('\n');
    Some(s)
}

/// The simulator variants `scripts/bench.sh` runs (`sim-variant-KEY.json`):
/// key, label, the flag added to the command, a note after the flag.
const SIM_VARIANTS: [(&str, &str, &str, &str); 4] = [
    ("report-1s", "", " --report-interval 1s", ""),
    ("a58", "", " --param active_weighting=false", " (A58 alone)"),
    (
        "shed-delay",
        "shedding by backlog, ",
        " --param shed_delay=100ms",
        " (the `+shed` rows)",
    ),
    (
        "shed-target",
        "shedding by utilization, ",
        " --param shed_target=0.9",
        "",
    ),
];

const SIM_INTRO: &str =
    "The simulator (`lb-sim`, the `sim/` crate) is deterministic and runs in virtual
time. It drives lb-core's registry, policy engine and re-plan scheduler (`plan`,
`client_order`, damping, hysteresis, load shedding: the daemon's own code) with modelled backends and clients. The model follows the benchmark plan:
- 6 backends, each with 8 slots, FIFO queueing and exponential service times;
  mean service time 10, 10, 20, 20, 40, 40 ms;
- 16 clients, each following its own list;
- open-loop Poisson arrivals at 70 % of capacity (1,960 req/s), a 1 s timeout;
- b00 degrades to 80 ms at 40 % of the run, and b02 is killed at 70 %;
- 30 s measured after a 3 s warm-up.

Every policy sees the same arrivals. Backends report every 250 ms (the daemon's
default) and clients send stats every second. `weighted_round_robin` gets static
weights equal to true capacity (the benchmark plan's \"weighted\" peer, the best a
static configuration can do); every other policy gets weight 1 and must find
capacity itself. `p2c_peak_ewma` models tower's p2c + PeakEWMA inside each
client, which sees only its own calls.

Command (well under a second of wall time):
";

const SIM_SATURATION: &str =
    "- **p99 saturates after the kill.** After the kill the farm is over capacity
  (100 + 800 + 400 + 200 + 200 = 1,700 req/s < 1,960 offered), so whatever the
  policy, about 4 % of the run times out, and the whole-run p99 and p99.9 sit
  near the 1 s timeout. The policies differ in their errors and in the p99 of
  the phases before the kill. Only shedding keeps the tail short then: the
  excess is 260 req/s for 9 s, about 2,340 calls, which must fail one way or
  another; shedding by backlog fails about that many at once instead of letting
  queues grow toward the timeout (the variants below).
";

const SIM_IGNORE_LOAD: &str =
    "- **Policies that ignore load** (round_robin, random, hash, consistent_hash)
  give the 40 ms backends three times their capacity share and time out
  throughout. That is expected: they are for affinity, not for heterogeneous
  farms.
";

const SIM_HISTORICAL_ROW: &str = "| first version: active requests compared across backends, 1 s reports (historical, before `fcfc836`; not re-run) | 3,144 | 972 / 992 / 997 |\n";

const SIM_OUTRO: &str = "
The first version scaled each weight by (1 + mean active) / (1 + active). Every
client acted on the same snapshot for a whole report interval, and they herded
onto whichever backend looked idlest: queues of hundreds, even on identical
backends. The shipped correction throttles a backend by how long its own
backlog takes to drain at its own rate (active / (qps / utilization)), measured
against `drain_horizon` (500 ms). Normal queues barely move the weights; real
backlogs are throttled until they drain. CI runs a 10 s version of this
comparison, and a no-herding check on identical backends
(`sim/tests/sim.rs`).
";

// ---------------------------------------------------------------------------
// Goals
// ---------------------------------------------------------------------------

/// One goal of the benchmark issue and what this run reached.
#[derive(Debug, Clone, PartialEq)]
struct Goal {
    goal: String,
    target: &'static str,
    reached: String,
    met: Option<bool>,
}

const NOT_MEASURED: &str = "not measured";

fn goal(goal: &'static str, target: &'static str, found: Option<(String, bool)>) -> Goal {
    match found {
        Some((reached, met)) => Goal {
            goal: goal.into(),
            target,
            reached,
            met: Some(met),
        },
        None => Goal {
            goal: goal.into(),
            target,
            reached: NOT_MEASURED.into(),
            met: None,
        },
    }
}

/// Like [`goal`], but says what the simulator shows when the real-process
/// benchmark is missing (not counted as met).
fn goal_or_sim(
    g: &'static str,
    target: &'static str,
    found: Option<(String, bool)>,
    sim: Option<String>,
) -> Goal {
    match (found, sim) {
        (None, Some(s)) => Goal {
            goal: g.into(),
            target,
            reached: format!("{NOT_MEASURED} with real processes (simulator: {s})"),
            met: None,
        },
        (found, _) => goal(g, target, found),
    }
}

/// The policy a quality bench calls ours: `load_aware` unless `metrics.ours` says.
fn ours(b: &Bench) -> String {
    b.metrics
        .get("ours")
        .and_then(Value::as_str)
        .unwrap_or("load_aware")
        .to_string()
}

/// p99 of `ours` over p99 of the row matching `peer`.
fn p99_ratio(b: &Bench, peer: &dyn Fn(&str) -> bool, peer_name: &str) -> Option<(f64, String)> {
    let col = b.col(|c| c.starts_with("p99") && !c.starts_with("p99.9") && !c.contains("phase"))?;
    let me = ours(b);
    let mine = b.cell(b.row(|r| r == me)?, col)?;
    let theirs = b.cell(b.row(peer)?, col)?;
    let r = mine / theirs;
    Some((
        r,
        format!("{r:.2}× ({me} p99 {mine:.0} ms vs {peer_name} {theirs:.0} ms)"),
    ))
}

/// A p99 goal against `peer`: `ours`, and its shedding variant
/// (`ours+shed`) when the run has one. Met when either is within `limit`;
/// the shedding row's errors are shown next to the peer's, since shedding
/// buys its tail by failing calls fast.
fn p99_goal(
    b: &Bench,
    peer: &dyn Fn(&str) -> bool,
    peer_name: &str,
    limit: f64,
) -> Option<(String, bool)> {
    let (r, mut text) = p99_ratio(b, peer, peer_name)?;
    let mut met = r <= limit;
    let shed = format!("{}+shed", ours(b));
    if let Some(row) = b.row(|n| n == shed) {
        let col =
            b.col(|c| c.starts_with("p99") && !c.starts_with("p99.9") && !c.contains("phase"))?;
        let theirs = b.row(peer)?;
        let (mine, base) = (b.cell(row, col)?, b.cell(theirs, col)?);
        let rs = mine / base;
        let errors = b
            .col(|c| c == "errors")
            .and_then(|c| Some((b.cell(row, c)?, b.cell(theirs, c)?)))
            .map_or_else(String::new, |(e, pe)| {
                format!(", with {e:.0} errors (mostly drops) vs {peer_name}'s {pe:.0}")
            });
        text = format!("{text}; {shed} {rs:.2}× (p99 {mine:.0} ms{errors})");
        if !met && rs <= limit {
            met = true;
            text = format!("{text}: met with shedding only");
        }
    }
    Some((text, met))
}

fn hetero(benches: &[Bench]) -> Option<&Bench> {
    benches.iter().find(|b| {
        rank(b) == 0 && (b.bench.contains("hetero-degrade") || b.file.contains("hetero-degrade"))
    })
}

fn named(benches: &[Bench], r: u8) -> Option<&Bench> {
    benches.iter().find(|b| rank(b) == r)
}

/// The phase columns of a quality result: (label, p99 column, errors
/// column if any). The whole run counts as a phase when the scenario has
/// no events.
fn phases(b: &Bench) -> Vec<(String, usize, Option<usize>)> {
    let mut out = Vec::new();
    for (i, c) in b.columns.iter().enumerate() {
        let Some(label) = c.strip_prefix("p99 ms ") else {
            continue;
        };
        let errors = b
            .columns
            .iter()
            .position(|e| *e == format!("errors {label}"));
        out.push((label.to_string(), i, errors));
    }
    if out.is_empty() {
        if let Some(i) = b.columns.iter().position(|c| c == "p99 ms") {
            out.push((
                "whole run".into(),
                i,
                b.columns.iter().position(|c| c == "errors"),
            ));
        }
    }
    out
}

/// Issue 17's goals for one quality scenario: in every phase, ours' p99
/// within `limit` × the peer's (tower p2c 0.8, round_robin 0.3), and its
/// errors no more than p2c's. `None` when the run lacks ours or the peer.
fn phase_goals(b: &Bench) -> Vec<Goal> {
    let me = ours(b);
    let Some(mine) = b.row(|r| r == me) else {
        return Vec::new();
    };
    let scenario = b.bench.trim_start_matches("quality-").to_string();
    let mut out = Vec::new();
    for (peer, peer_name, limit) in [
        ("p2c", "tower p2c", 0.8),
        ("round_robin", "round_robin", 0.3),
    ] {
        let Some(theirs) = b.row(|r| r == peer) else {
            continue;
        };
        let mut worst: Option<(f64, String)> = None;
        let mut each = Vec::new();
        for (label, col, _) in phases(b) {
            let (Some(a), Some(p)) = (b.cell(mine, col), b.cell(theirs, col)) else {
                continue;
            };
            let r = a / p;
            each.push(format!("{label}: {r:.2}× ({a:.0} vs {p:.0} ms)"));
            if worst.as_ref().is_none_or(|(w, _)| r > *w) {
                worst = Some((r, label));
            }
        }
        let Some((w, _)) = worst else { continue };
        out.push(Goal {
            goal: format!("{scenario}: {me} p99 vs {peer_name}, every phase"),
            target: if limit == 0.8 {
                "≤ 0.8×"
            } else {
                "≤ 0.3×"
            },
            reached: each.join("; "),
            met: Some(w <= limit),
        });
    }
    if let Some(theirs) = b.row(|r| r == "p2c") {
        let mut each = Vec::new();
        let mut met = true;
        let errors_col = b.columns.iter().position(|c| c == "errors");
        let cols = phases(b)
            .into_iter()
            .filter_map(|(label, _, e)| Some((label, e?)))
            .chain(errors_col.map(|c| ("whole run".to_string(), c)));
        let mut seen = std::collections::BTreeSet::new();
        for (label, col) in cols {
            if !seen.insert(col) {
                continue;
            }
            let (Some(a), Some(p)) = (b.cell(mine, col), b.cell(theirs, col)) else {
                continue;
            };
            met &= a <= p;
            each.push(format!("{label}: {a:.0} vs {p:.0}"));
        }
        if !each.is_empty() {
            out.push(Goal {
                goal: format!("{scenario}: {me} errors vs tower p2c"),
                target: "≤ p2c's",
                reached: each.join("; "),
                met: Some(met),
            });
        }
    }
    out
}

/// Issue 17's goals for a keyed scenario: each consistent_hash row with a
/// bound keeps the busiest backend's share of the requests within `c` ×
/// the mean (`c` its `load_bound`, lb-core's default for the plain row),
/// and beats plain consistent hashing (`@load_bound=none`) on p99.
fn keyed_goals(b: &Bench) -> Vec<Goal> {
    let (Some(share_col), Some(p99_col)) = (
        b.columns.iter().position(|c| c == "max keyed share ÷ mean"),
        b.columns.iter().position(|c| c == "p99 ms"),
    ) else {
        return Vec::new();
    };
    let scenario = b.bench.trim_start_matches("quality-").to_string();
    let plain = b.row(|r| r == "consistent_hash@load_bound=none");
    let mut out = Vec::new();
    for name in b.rows.iter().filter_map(|r| r.first()?.as_str()) {
        let c = match name.strip_prefix("consistent_hash") {
            Some("") => lb_core::policy::chash::Params::default().load_bound,
            Some(rest) => match rest
                .strip_prefix("@load_bound=")
                .and_then(|v| v.parse::<f64>().ok())
            {
                Some(c) if c.is_finite() => c,
                _ => continue,
            },
            None => continue,
        };
        let Some(row) = b.row(|r| r == name) else {
            continue;
        };
        if let Some(share) = b.cell(row, share_col) {
            out.push(Goal {
                goal: format!("{scenario}: {name} max keyed share ÷ mean"),
                target: "≤ c (its load_bound)",
                reached: format!("{share:.3} (c = {c})"),
                met: Some(share <= c + 1e-9),
            });
        }
        if let Some((a, p)) =
            plain.and_then(|pl| Some((b.cell(row, p99_col)?, b.cell(pl, p99_col)?)))
        {
            out.push(Goal {
                goal: format!("{scenario}: {name} p99 vs plain consistent hashing"),
                target: "below it",
                reached: format!("{:.2}× ({a:.0} vs {p:.0} ms)", a / p),
                met: Some(a < p),
            });
        }
    }
    out
}

/// Every goal of the benchmark issue, looked up in this run's results.
fn goals(res: &Results) -> Vec<Goal> {
    let b = &res.benches;
    let sim = res.sim.main.as_ref();
    let sim_la = sim.and_then(|s| s.policy("load_aware"));
    let hd = hetero(b);
    let mut out = Vec::new();

    // Balancing quality on hetero-degrade.
    let rr = |n: &str| n == "round_robin";
    let p2c = |n: &str| n.contains("p2c");
    let sim_ratio = |peer: &str| -> Option<String> {
        let la = sim_la?;
        let p = sim?.policy(peer)?;
        Some(format!(
            "whole run {}, degrade phase {}",
            ratio(la.p99_ms, p.p99_ms),
            ratio(phase_p99(la, 1), phase_p99(p, 1))
        ))
    };
    let found = hd.and_then(|h| {
        h.metric("p99_ratio_vs_round_robin")
            .map(|r| (format!("{r:.2}×"), r <= 0.3))
            .or_else(|| p99_goal(h, &rr, "round_robin", 0.3))
    });
    out.push(goal_or_sim(
        "hetero-degrade p99 vs round_robin",
        "≤ 0.3×",
        found,
        sim_ratio("round_robin"),
    ));
    let found = hd.and_then(|h| {
        h.metric("p99_ratio_vs_p2c")
            .map(|r| (format!("{r:.2}×"), r <= 0.8))
            .or_else(|| p99_goal(h, &p2c, "tower p2c", 0.8))
    });
    out.push(goal_or_sim(
        "hetero-degrade p99 vs tower p2c + PeakEWMA",
        "≤ 0.8×",
        found,
        sim_ratio("p2c_peak_ewma"),
    ));
    // Errors caused by the kill: failed calls, not timeouts of an over-capacity farm.
    let found = hd.and_then(|h| {
        if let Some(e) = h.metric("kill_errors") {
            return Some((format!("{e:.0}"), e == 0.0));
        }
        let col = h
            .col(|c| c.starts_with("failed") && c.contains("kill"))
            .or_else(|| h.col(|c| c.starts_with("errors") && c.contains("kill")))
            .or_else(|| h.col(|c| c.contains("failed")))
            .or_else(|| h.col(|c| c.starts_with("errors")))?;
        let me = ours(h);
        let e = h.cell(h.row(|r| r == me)?, col)?;
        Some((
            format!("{e:.0} ({me}, column \"{}\")", h.columns[col]),
            e == 0.0,
        ))
    });
    out.push(goal_or_sim(
        "errors when a backend is killed (hetero-degrade)",
        "0",
        found,
        sim_la.map(|p| format!("{} failed calls besides timeouts", p.failed)),
    ));
    let found = hd.and_then(|h| {
        let w = h
            .metric("worst_share_over_capacity")
            .or_else(|| {
                let col = h.col(|c| c.contains("share/capacity") || c.contains("worst share"))?;
                let me = ours(h);
                h.cell(h.row(|r| r == me)?, col)
            })
            .or_else(|| {
                let me = ours(h);
                shares(h)
                    .into_iter()
                    .find(|(p, _)| *p == me)
                    .and_then(|(_, bs)| worst_share(&bs))
            })?;
        Some((format!("{w:.2}"), w <= 1.2))
    });
    out.push(goal_or_sim(
        "worst backend share / capacity share (hetero-degrade, steady)",
        "≤ 1.2",
        found,
        sim_la.and_then(|p| {
            let bs: Vec<(String, f64, f64)> = p
                .backends
                .iter()
                .map(|b| (b.id.clone(), b.steady_share, b.capacity_share))
                .collect();
            worst_share(&bs).map(|w| format!("{w:.2}"))
        }),
    ));

    // Control plane.
    let found = named(b, 2).and_then(|p| {
        // Rows "figure | PickList::pick | Subscription::pick | baseline…":
        // both of lb's picks must meet the goal.
        let lb_cols = |row: usize| -> Option<f64> {
            let cols: Vec<usize> = (1..p.columns.len())
                .filter(|&i| p.columns[i].to_lowercase().contains("pick"))
                .filter(|&i| !p.columns[i].to_lowercase().contains("baseline"))
                .collect();
            cols.iter()
                .filter_map(|&c| p.cell(row, c))
                .reduce(f64::max)
                .or_else(|| p.row_nums(row).first().copied())
        };
        let ns = p
            .metric("pick_ns")
            .or_else(|| p.metric("ns_per_pick"))
            .or_else(|| lb_cols(p.row_with(&["1 thread", "ns"])?))?;
        let allocs = p
            .metric("allocs_per_pick")
            .or_else(|| lb_cols(p.row_with(&["alloc"])?));
        let a = allocs.map_or_else(
            || "allocations not measured".into(),
            |a| format!("{a} allocations"),
        );
        Some((
            format!("{ns:.1} ns (1 thread, slowest of lb's picks: PickList::pick, Subscription::pick, two choices), {a}"),
            ns <= 10.0 && allocs == Some(0.0),
        ))
    });
    out.push(goal(
        "pick() on a 100-entry list",
        "≤ 10 ns, 0 allocations",
        found,
    ));
    let found = b
        .iter()
        .find(|x| x.bench.contains("propagation"))
        .and_then(|p| {
            let v = p.metric("p99_ms").or_else(|| {
                // The change kinds' rows, not the baselines'.
                let col = p.col(|c| c.starts_with("p99"))?;
                p.rows
                    .iter()
                    .filter(|r| {
                        !r.first()
                            .and_then(Value::as_str)
                            .is_some_and(|n| n.starts_with("baseline"))
                    })
                    .filter_map(|r| r.get(col).and_then(num))
                    .reduce(f64::max)
            })?;
            let subs = p
                .col(|c| c.starts_with("subscribers"))
                .and_then(|c| p.col_max(c))
                .map_or_else(String::new, |n| format!(", {n:.0} subscribers"));
            let floor = p
                .col(|c| c.starts_with("p99"))
                .and_then(|col| p.cell(p.row(|r| r.starts_with("baseline: transport floor"))?, col))
                .map_or_else(String::new, |f| {
                    format!("; the transport floor alone (plain TCP push, same fan-out) {f:.2} ms")
                });
            Some((
                format!("{v:.2} ms (worst change kind{subs}){floor}"),
                v <= 5.0,
            ))
        });
    out.push(goal(
        "propagation to 1,000 subscribers, p99",
        "≤ 5 ms",
        found,
    ));
    let found = b.iter().find(|x| x.bench == "replicas").and_then(|p| {
        let row = p.row(|r| r.starts_with("policy change via replica a"))?;
        let v = p.cell(row, p.col(|c| c.starts_with("p99"))?)?;
        let single = p
            .row(|r| r.starts_with("baseline"))
            .and_then(|r| p.cell(r, p.col(|c| c.starts_with("p99"))?))
            .map_or_else(String::new, |b| format!(" (one daemon: {b:.2} ms)"));
        Some((format!("{v:.2} ms{single}"), v <= 100.0))
    });
    out.push(goal(
        "a policy change through one replica held by every client of the others, p99",
        "≤ 100 ms",
        found,
    ));
    let found = named(b, 4).and_then(|p| {
        let v = p
            .metric("reports_per_s")
            .or_else(|| {
                let row = p
                    .row_with(&["reports ingested per second"])
                    .or_else(|| p.row_with(&["reports applied per second"]))?;
                p.row_nums(row).first().copied()
            })
            .or_else(|| {
                let col = p.col(|c| c.contains("reports/s") || c.contains("reports per"))?;
                p.col_max(col)
            })?;
        Some((
            format!("{} reports/s", fmt_int(v.round() as u64)),
            v >= 250_000.0,
        ))
    });
    out.push(goal("load reports ingested", "≥ 250,000 /s", found));
    let found = b
        .iter()
        .find(|x| rank(x) == 5 && x.bench.contains("scale"))
        .and_then(|p| {
            let v = p
                .metric("rss_mib")
                .or_else(|| {
                    p.row_nums(p.row_with(&["rss", "subscribers"])?)
                        .first()
                        .copied()
                })
                .or_else(|| {
                    let col = p.col(|c| c.contains("rss"))?;
                    p.col_max(col)
                })?;
            Some((format!("{v:.0} MiB ({})", p.title), v <= 500.0))
        });
    out.push(goal(
        "daemon RSS, 10,000 backends × 10,000 subscribers",
        "≤ 500 MiB",
        found,
    ));
    let probe = b.iter().find(|x| x.bench == "restart");
    let found = probe.and_then(|p| {
        let p50 = p.metric("restart_10000_p50_ms")?;
        let p99 = p.metric("restart_10000_p99_ms")?;
        Some((format!("p50 {p50:.1} ms, p99 {p99:.1} ms"), p99 <= 200.0))
    });
    out.push(goal(
        "restart with 10,000 persisted instances → list served",
        "≤ 200 ms",
        found,
    ));
    let found = b
        .iter()
        .find(|x| rank(x) == 0 && x.bench.contains("restart"))
        .and_then(|h| {
            let e = h.metric("errors").or_else(|| {
                let col = h.col(|c| c.starts_with("errors") || c.contains("failed"))?;
                let me = ours(h);
                h.cell(h.row(|r| r == me)?, col)
            })?;
            Some((format!("{e:.0}"), e == 0.0))
        });
    out.push(goal(
        "failed calls while the balancer is killed -9 and restarted under load",
        "0",
        found,
    ));
    let found = probe.and_then(|p| {
        let v = p.metric("kill_p99_ms")?;
        Some((format!("p99 {v:.1} ms"), v <= 100.0))
    });
    out.push(goal(
        "backend kill -9 → clients hold the new list",
        "≤ 100 ms",
        found,
    ));
    // Issue 17: every quality scenario, every phase.
    for q in b.iter().filter(|q| is_quality(q) && rank(q) == 0) {
        out.extend(phase_goals(q));
        out.extend(keyed_goals(q));
    }
    out
}

fn goals_table(goals: &[Goal]) -> String {
    let mut s = String::from("| goal | target | reached | met |\n|---|---|---|---|\n");
    for g in goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "–",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {met} |",
            g.goal,
            g.target,
            g.reached.replace('|', "\\|")
        );
    }
    s
}

// ---------------------------------------------------------------------------
// Series (for plots)
// ---------------------------------------------------------------------------

fn first_num(v: &Value, keys: &[&str]) -> Option<f64> {
    keys.iter().find_map(|k| v.get(*k).and_then(num))
}

fn first_str(v: &Value, keys: &[&str]) -> Option<String> {
    keys.iter()
        .find_map(|k| v.get(*k).and_then(Value::as_str).map(str::to_string))
}

/// Points of one series: plain numbers (t = index), `[t, v]` pairs or objects.
fn points(v: &Value) -> Vec<(f64, f64)> {
    let Some(a) = v.as_array() else {
        return Vec::new();
    };
    a.iter()
        .enumerate()
        .filter_map(|(i, p)| match p {
            Value::Array(xy) if xy.len() >= 2 => Some((num(&xy[0])?, num(&xy[1])?)),
            Value::Object(_) => Some((
                first_num(p, &["t", "t_s", "s", "second", "at_s"]).unwrap_or(i as f64),
                first_num(p, &["p99_ms", "p99", "ms", "v", "value"])?,
            )),
            other => Some((i as f64, num(other)?)),
        })
        .collect()
}

/// Named series from `{"name": [...]}` or `[{"policy": name, "values": [...]}]`.
fn named_series(v: &Value) -> Vec<(String, Vec<(f64, f64)>)> {
    match v {
        Value::Object(m) => m.iter().map(|(k, s)| (k.clone(), points(s))).collect(),
        Value::Array(a) => a
            .iter()
            .filter_map(|s| {
                let name = first_str(s, &["policy", "name", "label"])?;
                let pts = ["values", "p99_ms", "points", "series"]
                    .iter()
                    .find_map(|k| s.get(*k))
                    .map(points)?;
                Some((name, pts))
            })
            .collect(),
        _ => Vec::new(),
    }
}

fn events(v: &Value) -> Vec<(f64, String)> {
    let Some(a) = v.as_array() else {
        return Vec::new();
    };
    a.iter()
        .filter_map(|e| match e {
            Value::Array(x) if x.len() >= 2 => Some((num(&x[0])?, cell_text(&x[1]))),
            Value::Object(_) => {
                let t = first_num(e, &["t_s", "t", "at_s", "at", "time_s", "second"])?;
                let mut label = first_str(e, &["label", "kind", "event", "name"])
                    .unwrap_or_else(|| "event".into());
                if let Some(target) = first_str(e, &["target", "backend", "id"]) {
                    if !label.contains(&target) {
                        label = format!("{label} {target}");
                    }
                }
                Some((t, label))
            }
            _ => None,
        })
        .collect()
}

/// Per policy: (backend, share, capacity share).
type Shares = Vec<(String, Vec<(String, f64, f64)>)>;

fn share_entries(v: &Value, caps: &BTreeMap<String, f64>) -> Vec<(String, f64, f64)> {
    if let Value::Object(m) = v {
        // {backend: share}, capacities from the table's headers.
        return m
            .iter()
            .filter_map(|(id, sh)| {
                Some((id.clone(), num(sh)?, caps.get(id).copied().unwrap_or(0.0)))
            })
            .collect();
    }
    v.as_array()
        .map(|a| {
            a.iter()
                .enumerate()
                .filter_map(|(i, e)| match e {
                    Value::Array(x) if x.len() >= 3 => {
                        Some((cell_text(&x[0]), num(&x[1])?, num(&x[2])?))
                    }
                    Value::Object(_) => Some((
                        first_str(e, &["backend", "id", "name"]).unwrap_or_else(|| format!("b{i}")),
                        first_num(e, &["share", "steady_share", "requests_share"])?,
                        first_num(e, &["capacity", "capacity_share"])?,
                    )),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Capacity shares named in headers like `b0 share % (capacity 28.6)`.
fn header_capacities(columns: &[String]) -> BTreeMap<String, f64> {
    columns
        .iter()
        .filter_map(|c| {
            let (id, rest) = c.split_once(" share")?;
            let cap = rest.split("capacity").nth(1)?;
            let cap: String = cap
                .chars()
                .skip_while(|c| !c.is_ascii_digit())
                .take_while(|c| c.is_ascii_digit() || *c == '.')
                .collect();
            Some((id.trim().to_string(), cap.parse().ok()?))
        })
        .collect()
}

fn shares(b: &Bench) -> Shares {
    let caps = header_capacities(&b.columns);
    match b.series.get("shares") {
        Some(Value::Object(m)) => m
            .iter()
            .map(|(k, v)| (k.clone(), share_entries(v, &caps)))
            .collect(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|p| {
                Some((
                    first_str(p, &["policy", "name"])?,
                    share_entries(p.get("backends")?, &caps),
                ))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Largest share / capacity over backends with capacity.
fn worst_share(bs: &[(String, f64, f64)]) -> Option<f64> {
    bs.iter()
        .filter(|(_, _, c)| *c > 0.0)
        .map(|(_, s, c)| s / c)
        .reduce(f64::max)
}

// ---------------------------------------------------------------------------
// Plots
// ---------------------------------------------------------------------------

mod plot {
    use std::path::Path;

    use plotters::prelude::*;

    fn color(i: usize) -> RGBColor {
        const C: [RGBColor; 10] = [
            RGBColor(31, 119, 180),
            RGBColor(255, 127, 14),
            RGBColor(44, 160, 44),
            RGBColor(214, 39, 40),
            RGBColor(148, 103, 189),
            RGBColor(140, 86, 75),
            RGBColor(227, 119, 194),
            RGBColor(127, 127, 127),
            RGBColor(188, 189, 34),
            RGBColor(23, 190, 207),
        ];
        C[i % C.len()]
    }

    /// p99 (log scale) over time per series, with labelled event markers.
    pub fn lines(
        path: &Path,
        title: &str,
        x_desc: &str,
        series: &[(String, Vec<(f64, f64)>)],
        events: &[(f64, String)],
    ) -> anyhow::Result<()> {
        let all = || series.iter().flat_map(|(_, p)| p.iter());
        let xmax = all().map(|p| p.0).fold(1.0f64, f64::max);
        let ymax = all().map(|p| p.1).fold(1.0f64, f64::max) * 1.6;
        let ymin = all()
            .map(|p| p.1)
            .filter(|y| *y > 0.0)
            .fold(f64::INFINITY, f64::min)
            .min(ymax / 10.0)
            .max(0.01)
            * 0.7;
        let root = SVGBackend::new(path, (960, 480)).into_drawing_area();
        root.fill(&WHITE)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 20))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0f64..xmax, (ymin..ymax).log_scale())?;
        chart
            .configure_mesh()
            .x_desc(x_desc)
            .y_desc("p99 latency, ms (log)")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .draw()?;
        for (t, label) in events {
            let style = BLACK.mix(0.5).stroke_width(1);
            chart.draw_series(LineSeries::new([(*t, ymin), (*t, ymax)], style))?;
            chart.draw_series(std::iter::once(Text::new(
                format!(" {label}"),
                (*t, ymax / 1.05),
                ("sans-serif", 13),
            )))?;
        }
        for (i, (name, pts)) in series.iter().enumerate() {
            let c = color(i);
            let pts: Vec<(f64, f64)> = pts.iter().map(|&(x, y)| (x, y.max(ymin))).collect();
            chart
                .draw_series(LineSeries::new(pts, c.stroke_width(2)))?
                .label(name.as_str())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .label_font(("sans-serif", 13))
            .draw()?;
        root.present()?;
        Ok(())
    }

    /// One small panel per policy: each backend's share of requests (bar)
    /// against its share of capacity (black tick).
    pub fn shares(path: &Path, title: &str, data: &super::Shares) -> anyhow::Result<()> {
        let cols = data.len().clamp(1, 3);
        let rows = data.len().div_ceil(cols).max(1);
        let root =
            SVGBackend::new(path, (320 * cols as u32, 60 + 220 * rows as u32)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(
            &format!(
                "{title}: share of requests (bars; red > 1.2 × capacity) vs share of capacity (black)"
            ),
            ("sans-serif", 18),
        )?;
        // Percent when given as fractions.
        let scale = if data
            .iter()
            .flat_map(|(_, b)| b.iter())
            .all(|(_, s, c)| *s <= 1.0 && *c <= 1.0)
        {
            100.0
        } else {
            1.0
        };
        let ymax = data
            .iter()
            .flat_map(|(_, b)| b.iter())
            .map(|(_, s, c)| s.max(*c) * scale)
            .fold(1.0f64, f64::max)
            * 1.2;
        for (area, (policy, backends)) in root.split_evenly((rows, cols)).iter().zip(data) {
            let n = backends.len().max(1) as f64;
            let mut chart = ChartBuilder::on(area)
                .caption(policy, ("sans-serif", 15))
                .margin(8)
                .x_label_area_size(8)
                .y_label_area_size(40)
                .build_cartesian_2d(0f64..n, 0f64..ymax)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_desc("%")
                .light_line_style(WHITE.mix(0.0))
                .draw()?;
            for (i, (id, share, cap)) in backends.iter().enumerate() {
                let x = i as f64;
                let over = *cap > 0.0 && share / cap > 1.2;
                let fill = if over { color(3) } else { color(0) };
                chart.draw_series(std::iter::once(Rectangle::new(
                    [(x + 0.15, 0.0), (x + 0.85, share * scale)],
                    fill.mix(0.8).filled(),
                )))?;
                // No marker for a backend without a capacity share (a joiner).
                if *cap > 0.0 {
                    chart.draw_series(LineSeries::new(
                        [(x + 0.05, cap * scale), (x + 0.95, cap * scale)],
                        BLACK.stroke_width(3),
                    ))?;
                }
                chart.draw_series(std::iter::once(Text::new(
                    id.clone(),
                    (x + 0.15, ymax * 0.97),
                    ("sans-serif", 11),
                )))?;
            }
        }
        root.present()?;
        Ok(())
    }
}

/// Plots of one quality result; returns (alt text, file name).
fn quality_plots(b: &Bench, dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    let series = b
        .series
        .get("p99_per_second")
        .map(named_series)
        .unwrap_or_default();
    if series.iter().any(|(_, p)| !p.is_empty()) {
        let ev = b.series.get("events").map(events).unwrap_or_default();
        let path = dir.join(format!("{}-p99.svg", b.file));
        plot::lines(
            &path,
            &format!("{}: p99 per second", b.title),
            "seconds into the measured run",
            &series,
            &ev,
        )?;
        out.push((format!("{}: p99 per second by policy", b.title), path));
    }
    let sh = shares(b);
    if sh.iter().any(|(_, e)| !e.is_empty()) {
        let path = dir.join(format!("{}-shares.svg", b.file));
        plot::shares(&path, &b.title, &sh)?;
        out.push((format!("{}: shares vs capacity", b.title), path));
    }
    Ok(out)
}

/// The simulator's plots: p99 by phase (steps) for the main contenders, and
/// steady-phase shares.
fn sim_plots(r: &Summary, dir: &Path) -> anyhow::Result<Vec<(String, PathBuf)>> {
    const SHOWN: [&str; 6] = [
        "round_robin",
        "weighted_round_robin",
        "least_connections",
        "fastest_response",
        "p2c_peak_ewma",
        "load_aware",
    ];
    let picked: Vec<&PolicySummary> = SHOWN.iter().filter_map(|n| r.policy(n)).collect();
    let mut out = Vec::new();
    if picked.is_empty() {
        return Ok(out);
    }
    let series: Vec<(String, Vec<(f64, f64)>)> = picked
        .iter()
        .map(|p| {
            let mut pts = Vec::new();
            for (i, ph) in p.phases.iter().enumerate() {
                let end = p.phases.get(i + 1).map_or(r.duration_s, |n| n.from_s);
                pts.push((ph.from_s, ph.p99_ms));
                pts.push((end, ph.p99_ms));
            }
            (p.policy.clone(), pts)
        })
        .collect();
    let labels = ["b00 degrades to 80 ms", "b02 killed"];
    let ev: Vec<(f64, String)> = picked[0]
        .phases
        .iter()
        .skip(1)
        .enumerate()
        .map(|(i, ph)| {
            let l = if r.scenario == "hetero-degrade" {
                labels.get(i).map_or("event", |s| s)
            } else {
                "event"
            };
            (ph.from_s, l.to_string())
        })
        .collect();
    let path = dir.join("sim-p99-by-phase.svg");
    plot::lines(
        &path,
        &format!("Simulator, {}: p99 by phase", r.scenario),
        "seconds into the measured run",
        &series,
        &ev,
    )?;
    out.push(("Simulator: p99 by phase".to_string(), path));
    let sh: Shares = picked
        .iter()
        .map(|p| {
            (
                p.policy.clone(),
                p.backends
                    .iter()
                    .map(|b| (b.id.clone(), b.steady_share, b.capacity_share))
                    .collect(),
            )
        })
        .collect();
    let path = dir.join("sim-shares.svg");
    plot::shares(&path, "Simulator, steady phase", &sh)?;
    out.push((
        "Simulator: steady-phase shares vs capacity".to_string(),
        path,
    ));
    Ok(out)
}

/// `target` as a link relative to the directory of `from` (a file).
fn rel_link(from: &Path, target: &Path) -> String {
    let base = from
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let abs = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    let (base, t) = (abs(base), abs(target));
    match t.strip_prefix(&base) {
        Ok(r) => r.display().to_string(),
        Err(_) => target.display().to_string(),
    }
}

// ---------------------------------------------------------------------------
// The report
// ---------------------------------------------------------------------------

/// Rounds to `sig` significant digits.
fn round_sig(x: f64, sig: i32) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let d = sig - 1 - x.abs().log10().floor() as i32;
    round(x, d.max(0))
}

fn command_output(cmd: &str, args: &[&str]) -> Option<String> {
    let o = std::process::Command::new(cmd).args(args).output().ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Today's date (UTC).
fn today() -> String {
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    lb_core::duration::utc_date(since)
}

/// Where the run happened, for the intro.
#[derive(Debug, Clone, Default)]
struct RunInfo {
    machine: String,
    date: String,
    commit: String,
    rustc: String,
}

impl RunInfo {
    fn detect() -> Self {
        let commit = command_output("git", &["rev-parse", "--short", "HEAD"]).unwrap_or_default();
        // The run's own outputs (results, plots, this page) do not make the
        // measured code "uncommitted".
        let dirty = command_output(
            "git",
            &[
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                ".",
                ":!bench",
                ":!BENCHMARKS.md",
            ],
        )
        .is_some_and(|s| !s.is_empty());
        RunInfo {
            machine: machine(),
            date: today(),
            commit: if dirty && !commit.is_empty() {
                format!("{commit} + uncommitted changes")
            } else {
                commit
            },
            rustc: command_output("rustc", &["--version"]).unwrap_or_default(),
        }
    }
}

/// The whole Markdown report; `plots` maps a result's file stem to its plots.
fn render(res: &Results, ctx: &RunInfo, plots: &BTreeMap<String, Vec<(String, String)>>) -> String {
    let mut s = String::from("# Benchmarks\n\n");
    s.push_str(
        "Every figure here comes from a real run on this repository's code, with the command\n\
that produced it; this page is generated from the JSON in `bench/results/` by\n\
`lb-report`. Where a baseline makes sense, it was measured in the same run and is\n\
given as a ratio. The benchmarks follow the project's benchmark plan: balancing\n\
quality against peers with real processes, the simulator's policy comparison, and\n\
the control plane (pick, propagation, ingest, scale, restart, hop cost).\n\n",
    );
    s.push_str("Run them all, then regenerate this page and its plots:\n\n```sh\nscripts/bench.sh            # full run: bench/results/*.json, bench/plots/*.svg, BENCHMARKS.md\nscripts/bench.sh --quick    # smoke run (< 5 min): everything under target/bench-quick/\n```\n\n");
    let loopback = if ctx.machine.contains("loopback only") {
        ""
    } else {
        "; loopback only"
    };
    let _ = writeln!(s, "- Machine: {}{loopback}.", ctx.machine);
    let _ = writeln!(s, "- Date: {}.", ctx.date);
    if !ctx.commit.is_empty() {
        let _ = writeln!(s, "- Commit: `{}`.", ctx.commit);
    }
    if !ctx.rustc.is_empty() {
        let _ = writeln!(s, "- Toolchain: {}, release build.", ctx.rustc);
    }
    if let Some(mode) = res.meta.get("mode").and_then(Value::as_str) {
        let secs = res.meta.get("seconds").and_then(Value::as_u64).unwrap_or(0);
        let _ = writeln!(
            s,
            "- Run: `{}` ({mode}), {}m{:02}s of benchmarks.",
            res.meta
                .get("command")
                .and_then(Value::as_str)
                .unwrap_or("scripts/bench.sh"),
            secs / 60,
            secs % 60
        );
        let not_ok: Vec<String> = res
            .meta
            .get("components")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter(|c| c.get("status").and_then(Value::as_str) != Some("ok"))
                    .map(|c| {
                        format!(
                            "{} ({})",
                            c.get("name").and_then(Value::as_str).unwrap_or("?"),
                            c.get("status").and_then(Value::as_str).unwrap_or("?")
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        if !not_ok.is_empty() {
            let _ = writeln!(s, "- Not in this run: {}.", not_ok.join("; "));
        }
    }
    s.push('\n');

    let order = ordered(&res.benches);
    let mut contents = Vec::new();
    let mut body = String::new();
    let mut sim_done = false;
    let push_sim = |body: &mut String, contents: &mut Vec<String>| {
        if let Some(text) = sim_section(
            &res.sim,
            plots.get("sim").map(Vec::as_slice).unwrap_or_default(),
        ) {
            contents.push("Policies on `hetero-degrade`, simulated".to_string());
            body.push_str(&text);
        }
    };
    for b in order {
        if !sim_done && rank(b) >= 1 {
            push_sim(&mut body, &mut contents);
            sim_done = true;
        }
        contents.push(b.title.clone());
        body.push_str(&section(
            b,
            plots.get(&b.file).map(Vec::as_slice).unwrap_or_default(),
        ));
    }
    if !sim_done {
        push_sim(&mut body, &mut contents);
    }
    contents.push("Goals".to_string());
    s.push_str("Contents: ");
    s.push_str(
        &contents
            .iter()
            .map(|c| format!("[{}](#{})", c.replace('`', ""), anchor(c)))
            .collect::<Vec<_>>()
            .join(" · "),
    );
    s.push_str("\n\n");
    s.push_str(&body);
    s.push_str("## Goals\n\nThe goals of the benchmark issue, and what this run reached (\"not measured\" where its benchmark is missing from this run).\n\n");
    s.push_str(&goals_table(&goals(res)));
    if !res.skipped.is_empty() {
        s.push_str("\nFiles in the results directory that were not understood:\n");
        for f in &res.skipped {
            let _ = writeln!(s, "- {f}");
        }
    }
    s
}

/// GitHub's heading anchor.
fn anchor(title: &str) -> String {
    title
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let res = load(&args.results)?;
    std::fs::create_dir_all(&args.plots)
        .with_context(|| format!("cannot create {}", args.plots.display()))?;
    let mut plots: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    let mut add = |key: &str, made: Vec<(String, PathBuf)>| {
        for (alt, p) in made {
            eprintln!("wrote {}", p.display());
            plots
                .entry(key.to_string())
                .or_default()
                .push((alt, rel_link(&args.out, &p)));
        }
    };
    for b in res.benches.iter().filter(|b| rank(b) == 0) {
        match quality_plots(b, &args.plots) {
            Ok(made) => add(&b.file, made),
            Err(e) => eprintln!("warning: plots of {}: {e:#}", b.file),
        }
    }
    if let Some(r) = &res.sim.main {
        match sim_plots(r, &args.plots) {
            Ok(made) => add("sim", made),
            Err(e) => eprintln!("warning: simulator plots: {e:#}"),
        }
    }
    let md = render(&res, &RunInfo::detect(), &plots);
    if let Some(dir) = args.out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, md).with_context(|| format!("writing {}", args.out.display()))?;
    for f in &res.skipped {
        eprintln!("warning: skipped {f}");
    }
    eprintln!(
        "wrote {} ({} results, simulator: {})",
        args.out.display(),
        res.benches.len(),
        if res.sim.main.is_some() { "yes" } else { "no" }
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOP: &str = r#"{"bench": "hop", "title": "Hop cost", "command": "target/release/lb-hop --calls 5000",
        "machine": "2 cores", "columns": ["path", "p50 µs", "p99 µs", "ratio"],
        "rows": [["direct (lb-client)", 95.1, 180.2, 1.0], ["via nginx", 180.3, 400.1, 1.9]],
        "notes": ["a note"]}"#;

    const QUALITY: &str = r#"{"bench": "hetero-degrade", "title": "hetero-degrade (real processes)",
        "command": "target/release/lb-bench --scenario scripts/scenarios/hetero-degrade.toml",
        "machine": "2 cores", "columns": ["policy", "p50 ms", "p99 ms", "p99.9 ms", "failed", "errors"],
        "rows": [["round_robin", 20, 900, 990, 3, 500], ["p2c_peak_ewma", 20, 300, 900, 0, 40],
                 ["load_aware", 18, 120, 500, 0, 10]],
        "series": {"p99_per_second": {"round_robin": [10, 20, 900], "load_aware": [[0, 9], [1, 10], [2, 120]]},
                   "events": [{"t_s": 1.0, "kind": "degrade", "target": "b00"}],
                   "shares": {"load_aware": [{"backend": "b00", "share": 0.3, "capacity": 0.29},
                                             {"backend": "b01", "share": 0.2, "capacity": 0.14}]}}}"#;

    fn bench(s: &str) -> Bench {
        match classify("x", serde_json::from_str(s).unwrap()).unwrap() {
            Input::Bench(b) => *b,
            Input::Sim(_) => panic!("not a bench"),
        }
    }

    #[test]
    fn renders_a_table_of_the_right_shape() {
        let b = bench(HOP);
        let md = section(&b, &[]);
        assert!(md.starts_with("## Hop cost\n"));
        assert!(md.contains("```sh\ntarget/release/lb-hop --calls 5000\n```"));
        let lines: Vec<&str> = md.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 2 + 2, "header, separator, two rows");
        for l in &lines {
            assert_eq!(l.matches('|').count() - 1, 4, "4 cells in {l:?}");
        }
        assert_eq!(lines[0], "| path | p50 µs | p99 µs | ratio |");
        assert_eq!(lines[1], "|---|---:|---:|---:|");
        assert_eq!(lines[2], "| direct (lb-client) | 95.1 | 180.2 | 1.0 |");
        assert!(md.contains("- a note"));
    }

    #[test]
    fn probe_array_becomes_a_section() {
        let v = serde_json::json!([
            {"figure": "liveness_kill", "samples": 5, "p50_ms": 0.7, "p99_ms": 1.0, "max_ms": 1.0},
            {"figure": "liveness_frozen", "samples": 1, "p50_ms": 4000.0, "p99_ms": 4000.0, "max_ms": 4000.0},
            {"figure": "restart", "instances": 0, "services": 1, "samples": 2, "p50_ms": 7.0, "p99_ms": 8.0, "max_ms": 8.0},
            {"figure": "restart", "instances": 10000, "services": 100, "samples": 2, "p50_ms": 40.0, "p99_ms": 60.0, "max_ms": 60.0}
        ]);
        let Input::Bench(b) = classify("probe", v).unwrap() else {
            panic!("probe JSON is a bench");
        };
        assert_eq!(b.rows.len(), 5);
        assert!(b.command.contains("--instances 0,10000 --restarts 2"));
        assert!(cell_text(&b.rows[3][0]).contains("(1 services)"));
        assert!(cell_text(&b.rows[4][0]).contains("5.71× the empty-store restart"));
        let res = Results {
            benches: vec![*b],
            ..Results::default()
        };
        let g = goals(&res);
        let restart = g.iter().find(|g| g.goal.starts_with("restart")).unwrap();
        assert_eq!(restart.met, Some(true));
        assert_eq!(restart.reached, "p50 40.0 ms, p99 60.0 ms");
    }

    #[test]
    fn goals_come_from_tables_and_default_to_not_measured() {
        let res = Results {
            benches: vec![bench(QUALITY), bench(HOP)],
            ..Results::default()
        };
        let g = goals(&res);
        assert_eq!(g[0].met, Some(true), "{:?}", g[0]); // 120 / 900
        assert!(g[0].reached.starts_with("0.13×"));
        assert_eq!(g[1].met, Some(true)); // 120 / 300 = 0.4
        assert_eq!(g[2].reached, "0 (load_aware, column \"failed\")");
        assert_eq!(g[3].reached, "1.43"); // 0.2 / 0.14
        assert_eq!(g[3].met, Some(false));
        let pick = g.iter().find(|g| g.goal.starts_with("pick")).unwrap();
        assert_eq!(pick.reached, NOT_MEASURED);
        assert_eq!(pick.met, None);
        let md = goals_table(&g);
        assert_eq!(md.lines().count(), 2 + g.len());
    }

    #[test]
    fn keyed_goals_read_each_bounded_row_against_its_own_c() {
        let q = r#"{"bench": "quality-hash-zipf", "title": "q", "columns": ["policy", "p99 ms", "max keyed share ÷ mean"],
            "rows": [["consistent_hash", 94.0, 1.249], ["consistent_hash@load_bound=2", 120.0, 2.1],
                     ["consistent_hash@load_bound=none", 990.0, 1.85], ["p2c", 93.0, 1.02]]}"#;
        let g = keyed_goals(&bench(q));
        let find = |prefix: &str| g.iter().find(|g| g.goal.starts_with(prefix)).unwrap();
        let d = find("hash-zipf: consistent_hash max keyed");
        assert_eq!(
            (d.reached.as_str(), d.met),
            ("1.249 (c = 1.25)", Some(true))
        );
        let two = find("hash-zipf: consistent_hash@load_bound=2 max keyed");
        assert_eq!(two.met, Some(false));
        assert_eq!(find("hash-zipf: consistent_hash p99").met, Some(true));
        // The plain row is the reference, not a contender; p2c has no bound.
        assert_eq!(g.len(), 4, "{g:?}");
    }

    #[test]
    fn goals_from_figure_value_tables() {
        let pick = r#"{"bench": "pick", "title": "pick", "columns": ["figure", "PickList::pick", "Subscription::pick", "baseline: Mutex", "ratio", "goal"],
            "rows": [["pick, 1 thread: ns per pick (median)", 3.1, 4.2, 20.0, 0.15, ""],
                     ["allocations per pick", 0, 0, 0, "n/a", "0"]]}"#;
        let ingest = r#"{"bench": "ingest", "title": "ingest", "columns": ["figure", "value", "unit", "goal"],
            "rows": [["load reports applied per second (sent ÷ time)", 180000, "reports/s", "≥ 250,000"]]}"#;
        let res = Results {
            benches: vec![bench(pick), bench(ingest)],
            ..Results::default()
        };
        let g = goals(&res);
        let p = g.iter().find(|g| g.goal.starts_with("pick")).unwrap();
        assert_eq!(p.met, Some(true), "{p:?}");
        assert!(p.reached.starts_with("4.2 ns"), "{p:?}");
        let i = g
            .iter()
            .find(|g| g.goal.starts_with("load reports"))
            .unwrap();
        assert_eq!(
            (i.reached.as_str(), i.met),
            ("180,000 reports/s", Some(false))
        );
    }

    #[test]
    fn series_in_several_shapes() {
        let b = bench(QUALITY);
        let s = named_series(&b.series["p99_per_second"]);
        assert_eq!(s.len(), 2);
        assert!(s.iter().all(|(_, p)| p.len() == 3));
        assert_eq!(
            events(&b.series["events"]),
            vec![(1.0, "degrade b00".to_string())]
        );
        assert_eq!(shares(&b)[0].1.len(), 2);
        let mut lb = b.clone();
        lb.columns.push("b7 share % (capacity 28.6)".into());
        lb.series["shares"] = serde_json::json!({"load_aware": {"b7": 30.1, "b9": 2.0}});
        assert_eq!(
            shares(&lb)[0].1,
            vec![("b7".to_string(), 30.1, 28.6), ("b9".to_string(), 2.0, 0.0)]
        );
    }

    #[test]
    fn report_orders_sections_and_plots_render() {
        let dir = tempfile::tempdir().unwrap();
        let res = Results {
            benches: vec![bench(HOP), bench(QUALITY)],
            ..Results::default()
        };
        let mut plots = BTreeMap::new();
        let made = quality_plots(&res.benches[1], dir.path()).unwrap();
        assert_eq!(made.len(), 2);
        for (_, p) in &made {
            let svg = std::fs::read_to_string(p).unwrap();
            assert!(svg.starts_with("<svg") && svg.contains("load_aware"));
        }
        plots.insert(
            "x".to_string(),
            vec![("alt".to_string(), "bench/plots/x-p99.svg".to_string())],
        );
        let md = render(&res, &RunInfo::default(), &plots);
        let quality = md.find("## hetero-degrade").unwrap();
        let hop = md.find("## Hop cost").unwrap();
        let goals = md.find("## Goals").unwrap();
        assert!(quality < hop && hop < goals);
        assert!(md.contains("![alt](bench/plots/x-p99.svg)"));
    }

    #[test]
    fn the_simulator_table_is_the_one_lb_sim_prints() {
        use lb_sim::{BackendResult, PhaseResult, PolicyResult, Report};
        use std::time::Duration;
        let backend = |id: &str, cap: f64, steady: f64| BackendResult {
            id: id.into(),
            capacity_share: cap,
            steady_share: steady,
            requests: 100,
            last_request: None,
        };
        let phase = |from: u64, p99: f64| PhaseResult {
            from: Duration::from_secs(from),
            requests: 50,
            p50_ms: 5.0,
            p99_ms: p99,
            errors: 1,
        };
        let report = Report {
            scenario: "hetero-degrade".into(),
            seed: 1,
            duration: Duration::from_secs(30),
            rate: 1960.0,
            results: vec![PolicyResult {
                policy: "load_aware".into(),
                requests: 100,
                ok: 97,
                p50_ms: 12.5,
                p99_ms: 250.25,
                p999_ms: 900.0,
                max_ms: 999.0,
                mean_ms: 20.0,
                failed: 1,
                timeouts: 2,
                max_queue: 7,
                backends: vec![backend("b00", 0.75, 0.5), backend("b01", 0.25, 0.5)],
                phases: vec![phase(0, 20.0), phase(12, 250.0)],
                plans: 3,
            }],
        };
        let Input::Sim(read) =
            classify("sim", serde_json::from_str(&report.to_json()).unwrap()).unwrap()
        else {
            panic!("lb-sim's JSON is the simulator's");
        };
        assert_eq!(*read, report.summary());
        let sim = SimSet {
            main: Some(*read),
            ..SimSet::default()
        };
        let md = sim_section(&sim, &[]).unwrap();
        assert!(md.contains(&report.table()), "{md}");
        assert_eq!(sim.main.unwrap().results[0].failed, 1);
    }

    #[test]
    fn civil_date_is_plausible() {
        let d = today();
        assert_eq!(d.len(), 10);
        assert!(d.starts_with("20"));
    }
}
