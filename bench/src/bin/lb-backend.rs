//! `lb-backend`: one backend of the balancing-quality benchmark (the benchmark
//! plan, family A). It serves `lb.bench.v1.Work/Do` with the backend model of the
//! scenarios: `--slots` workers; a request waits FIFO for a free slot (tokio's
//! `Semaphore` is FIFO-fair), then holds it for an exponential service time
//! whose mean is the backend's current `service_ms` (a timer, not CPU burn).
//! The unit exponential draw comes with the request (`DoRequest.work`, drawn by
//! the load generator from its seed) so every policy sees the same demands; a
//! request without one gets a draw from `--seed`.
//!
//! It registers with lb through lb-client's `Reporter` and reports what a real
//! backend would, with a custom sampler:
//! - utilization = busy slot-time / (slots × interval) over the last interval;
//! - active requests = queued + in service, now;
//! - qps = completions per second, eps = cancelled requests (the client gave
//!   up) per second, over the interval.
//!
//! `--degrade-at-unix-ms T --degrade-to-ms M` changes the mean service time at
//! wall-clock time T (so an orchestrator can line it up with its run); both
//! flags may be repeated, paired in order, for several changes (a degrade and
//! a recovery).
//! `--cold-factor F --cold-for-ms D` starts the backend cold: its mean service
//! time starts F times higher and falls linearly to `service_ms` over D ms.
//! The timer's overshoot (tokio fires on millisecond ticks) is measured and
//! subtracted from later sleeps, so the realized mean service time matches
//! the model; `--stats-out` reports the realized mean.
//! `--stats-out FILE` writes, every second and at exit, the backend's counters,
//! the largest queue seen in every wall-clock second and the requests
//! received in every wall-clock second (JSON).
//!
//! `lb-backend --daemon 127.0.0.1:7400 --service work --id b0 --slots 8 --service-ms 10`

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use lb_bench::args::Target;
use lb_bench::clock::unix_ms;
use lb_bench::work::work_server::{Work, WorkServer};
use lb_bench::work::{DoReply, DoRequest};
use lb_client::{LoadSample, Registration, Reporter, ReporterOptions};
use lb_sim::workload::exponential;
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::sync::Semaphore;
use tonic::{Request, Response, Status};

/// A modelled backend that registers with lb and reports its load.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    target: Target,
    /// Instance id (unique within the service).
    #[arg(long)]
    id: String,
    /// Concurrent workers.
    #[arg(long, default_value_t = 8)]
    slots: u32,
    /// Mean service time, ms.
    #[arg(long, default_value_t = 10.0)]
    service_ms: f64,
    /// Static weight (1..=10000).
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Address to serve on (port 0 picks one; printed as `listening on ADDR`).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: String,
    /// Wall-clock time (ms since the Unix epoch) of a degrade (repeatable).
    #[arg(long, requires = "degrade_to_ms")]
    degrade_at_unix_ms: Vec<u64>,
    /// Mean service time after the degrade of the same position, ms.
    #[arg(long, requires = "degrade_at_unix_ms")]
    degrade_to_ms: Vec<f64>,
    /// Seed of the service-time draws of requests that carry no `work`.
    #[arg(long)]
    seed: Option<u64>,
    /// Service time multiplier at start (cold backend); falls linearly to 1.
    #[arg(long, default_value_t = 1.0)]
    cold_factor: f64,
    /// How long the cold start lasts, ms.
    #[arg(long, default_value_t = 0)]
    cold_for_ms: u64,
    /// Where to write the backend's counters (JSON), every second and at exit.
    #[arg(long)]
    stats_out: Option<PathBuf>,
}

/// Counters, integrated exactly at every change.
#[derive(Debug)]
struct Acct {
    slots: u32,
    queued: u32,
    in_service: u32,
    last_change: Instant,
    /// Busy slot-nanoseconds since the last sample.
    busy_ns: f64,
    completions: u64,
    errors: u64,
    last_sample: Instant,
    // Totals since the start, for --stats-out.
    total_completed: u64,
    total_cancelled: u64,
    /// Realized service time (slot acquired → timer fired) of completed requests.
    total_service_ns: f64,
    /// Largest number of requests waiting for a slot in each Unix second.
    max_queue: BTreeMap<u64, u32>,
    /// Requests received (answered or not) in each Unix second.
    received: BTreeMap<u64, u64>,
}

impl Acct {
    fn account(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.last_change).as_nanos() as f64;
        self.busy_ns += f64::from(self.in_service) * dt;
        self.last_change = now;
    }

    fn sample(&mut self) -> LoadSample {
        let now = Instant::now();
        self.account(now);
        let interval = now.saturating_duration_since(self.last_sample);
        let secs = interval.as_secs_f64().max(1e-9);
        let utilization =
            (self.busy_ns / (f64::from(self.slots.max(1)) * secs * 1e9)).clamp(0.0, 1.0);
        let s = LoadSample {
            cpu_utilization: utilization,
            active_requests: u64::from(self.queued + self.in_service),
            qps: Some(self.completions as f64 / secs),
            eps: Some(self.errors as f64 / secs),
            ..LoadSample::default()
        };
        self.busy_ns = 0.0;
        self.completions = 0;
        self.errors = 0;
        self.last_sample = now;
        s
    }
}

struct Model {
    id: String,
    slots: Semaphore,
    acct: Mutex<Acct>,
    /// Base mean service time, ms (f64 bits); the degrade changes it.
    mean_ms: AtomicU64,
    /// Running mean of the timer's overshoot, ns (f64 bits).
    overshoot_ns: AtomicU64,
    started: Instant,
    cold_factor: f64,
    cold_for: Duration,
    rng: Mutex<StdRng>,
}

impl Model {
    fn acct(&self) -> std::sync::MutexGuard<'_, Acct> {
        self.acct.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The current mean service time, ms, cold start included.
    fn mean_ms(&self) -> f64 {
        let base = f64::from_bits(self.mean_ms.load(Relaxed));
        if self.cold_for.is_zero() || self.cold_factor <= 1.0 {
            return base;
        }
        let left = 1.0 - self.started.elapsed().as_secs_f64() / self.cold_for.as_secs_f64();
        base * (1.0 + (self.cold_factor - 1.0) * left.max(0.0))
    }

    fn stats_json(&self) -> serde_json::Value {
        let a = self.acct();
        let mean = if a.total_completed > 0 {
            a.total_service_ns / a.total_completed as f64 / 1e6
        } else {
            0.0
        };
        serde_json::json!({
            "id": self.id,
            "completed": a.total_completed,
            "cancelled": a.total_cancelled,
            "service_ms_realized_mean": mean,
            "service_ms_now": self.mean_ms(),
            "max_queue": a.max_queue.iter().map(|(s, q)| [*s, u64::from(*q)]).collect::<Vec<_>>(),
            "received": a.received.iter().map(|(s, n)| [*s, *n]).collect::<Vec<_>>(),
        })
    }
}

/// Where a request is in the backend; its `Drop` undoes the counts of a
/// request the client cancelled (its future is dropped).
enum Stage {
    Queued,
    InService(Instant),
    Done,
}

struct Track<'a> {
    model: &'a Model,
    stage: Stage,
}

impl<'a> Track<'a> {
    fn queued(model: &'a Model) -> Self {
        let mut a = model.acct();
        a.queued += 1;
        let q = a.queued;
        let e = a.max_queue.entry(unix_ms() / 1000).or_default();
        *e = (*e).max(q);
        drop(a);
        Track {
            model,
            stage: Stage::Queued,
        }
    }

    fn in_service(model: &'a Model) -> Self {
        let now = Instant::now();
        let mut a = model.acct();
        a.account(now);
        a.in_service += 1;
        drop(a);
        Track {
            model,
            stage: Stage::InService(now),
        }
    }

    fn start(&mut self) {
        let now = Instant::now();
        let mut a = self.model.acct();
        a.account(now);
        a.queued -= 1;
        a.in_service += 1;
        self.stage = Stage::InService(now);
    }

    fn finish(&mut self) {
        let now = Instant::now();
        let mut a = self.model.acct();
        if let Stage::InService(since) = self.stage {
            a.account(now);
            a.in_service -= 1;
            a.completions += 1;
            a.total_completed += 1;
            a.total_service_ns += now.saturating_duration_since(since).as_nanos() as f64;
        }
        self.stage = Stage::Done;
    }
}

impl Drop for Track<'_> {
    fn drop(&mut self) {
        let stage = std::mem::replace(&mut self.stage, Stage::Done);
        if matches!(stage, Stage::Done) {
            return;
        }
        let now = Instant::now();
        let mut a = self.model.acct();
        a.account(now);
        match stage {
            Stage::Queued => a.queued -= 1,
            Stage::InService(_) => a.in_service -= 1,
            Stage::Done => {}
        }
        a.errors += 1;
        a.total_cancelled += 1;
    }
}

#[derive(Clone)]
struct WorkService(Arc<Model>);

#[tonic::async_trait]
impl Work for WorkService {
    async fn r#do(&self, req: Request<DoRequest>) -> Result<Response<DoReply>, Status> {
        let m = &*self.0;
        *m.acct().received.entry(unix_ms() / 1000).or_default() += 1;
        let work = req.into_inner().work;
        let work = if work.is_finite() && work > 0.0 {
            work.min(50.0)
        } else {
            exponential(
                &mut *m.rng.lock().unwrap_or_else(PoisonError::into_inner),
                1.0,
            )
        };
        // A free slot now (none can be free while others wait: permits go to
        // waiters first), else wait FIFO.
        let (mut track, _permit) = match m.slots.try_acquire() {
            Ok(p) => (Track::in_service(m), p),
            Err(_) => {
                let mut t = Track::queued(m);
                let p = m
                    .slots
                    .acquire()
                    .await
                    .map_err(|_| Status::unavailable("shutting down"))?;
                t.start();
                (t, p)
            }
        };
        // tokio's timer fires on the first millisecond tick at or after the
        // deadline, ~0.5-1 ms late on average: sleep for the drawn time minus
        // the running mean of that overshoot, so the realized mean service time
        // stays at the model's (it is reported in --stats-out).
        let want_ns = work * m.mean_ms() * 1e6;
        let early = f64::from_bits(m.overshoot_ns.load(Relaxed));
        let ask = Duration::from_nanos((want_ns - early).max(0.0) as u64);
        let slept = Instant::now();
        tokio::time::sleep(ask).await;
        let over = slept.elapsed().as_nanos() as f64 - ask.as_nanos() as f64;
        m.overshoot_ns
            .store((early * 0.99 + over * 0.01).to_bits(), Relaxed);
        track.finish();
        Ok(Response::new(DoReply {
            backend_id: m.id.clone(),
        }))
    }
}

fn write_stats(model: &Model, path: &PathBuf) {
    let tmp = path.with_extension("tmp");
    let body = model.stats_json().to_string();
    if std::fs::write(&tmp, body).is_ok() {
        let _ = std::fs::rename(&tmp, path);
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_tests::cli::init_tracing("info");
    let args = Args::parse();
    anyhow::ensure!(args.slots > 0, "--slots must be positive");
    anyhow::ensure!(
        args.service_ms.is_finite() && args.service_ms > 0.0,
        "--service-ms must be positive"
    );
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let now = Instant::now();
    let seed = args.seed.unwrap_or_else(|| {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&args.id, &mut h);
        std::hash::Hasher::finish(&h)
    });
    let model = Arc::new(Model {
        id: args.id.clone(),
        slots: Semaphore::new(args.slots as usize),
        acct: Mutex::new(Acct {
            slots: args.slots,
            queued: 0,
            in_service: 0,
            last_change: now,
            busy_ns: 0.0,
            completions: 0,
            errors: 0,
            last_sample: now,
            total_completed: 0,
            total_cancelled: 0,
            total_service_ns: 0.0,
            max_queue: BTreeMap::new(),
            received: BTreeMap::new(),
        }),
        mean_ms: AtomicU64::new(args.service_ms.to_bits()),
        overshoot_ns: AtomicU64::new(0f64.to_bits()),
        started: now,
        cold_factor: args.cold_factor,
        cold_for: Duration::from_millis(args.cold_for_ms),
        rng: Mutex::new(StdRng::seed_from_u64(seed)),
    });

    anyhow::ensure!(
        args.degrade_at_unix_ms.len() == args.degrade_to_ms.len(),
        "--degrade-at-unix-ms and --degrade-to-ms come in pairs ({} and {} given)",
        args.degrade_at_unix_ms.len(),
        args.degrade_to_ms.len()
    );
    let mut degrades: Vec<(u64, f64)> = args
        .degrade_at_unix_ms
        .iter()
        .copied()
        .zip(args.degrade_to_ms.iter().copied())
        .collect();
    anyhow::ensure!(
        degrades.iter().all(|(_, to)| to.is_finite() && *to > 0.0),
        "--degrade-to-ms must be positive"
    );
    // In time order; of two at the same time, the later one given wins.
    degrades.sort_by_key(|(at, _)| *at);
    if !degrades.is_empty() {
        let m = Arc::clone(&model);
        tokio::spawn(async move {
            for (at, to) in degrades {
                tokio::time::sleep(Duration::from_millis(at.saturating_sub(unix_ms()))).await;
                m.mean_ms.store(to.to_bits(), Relaxed);
                tracing::info!(
                    late_ms = unix_ms().saturating_sub(at),
                    service_ms = to,
                    "degraded"
                );
            }
        });
    }
    if let Some(path) = args.stats_out.clone() {
        let m = Arc::clone(&model);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                write_stats(&m, &path);
            }
        });
    }

    let mut reg = Registration::new(&args.target.service, &args.id, addr.to_string());
    reg.instance.weight = args.weight;
    reg.instance.version = env!("CARGO_PKG_VERSION").to_string();
    let mut opts = ReporterOptions::new(&args.target.daemon);
    let m = Arc::clone(&model);
    opts.sampler = Some(Arc::new(move || m.acct().sample()));
    let reporter = Reporter::start(reg, opts);

    println!("lb-backend listening on {addr}");
    let service = WorkServer::new(WorkService(Arc::clone(&model)));
    lb_tests::cli::serve_then_drain(reporter, |stop| {
        tonic::transport::Server::builder()
            .max_concurrent_streams(Some(100_000))
            .add_service(service)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                stop,
            )
    })
    .await;
    if let Some(path) = &args.stats_out {
        write_stats(&model, path);
    }
    tracing::info!("stopped");
    Ok(())
}
