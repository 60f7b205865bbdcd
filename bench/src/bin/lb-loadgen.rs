//! `lb-loadgen`: the load generator of the balancing-quality benchmark
//! (the benchmark plan, family A).
//!
//! - **Open loop.** The Poisson arrival times are generated up front from
//!   `--seed` (the same for every policy and mode), each with its client (one
//!   of `--clients`, uniformly) and its unit-mean exponential service demand.
//!   `--load-step 18s=1.3` steps the rate to 1.3 × `--rate` from 18 s into
//!   the measured run (repeatable; a later `22s=1` steps it back): the rate
//!   is piecewise constant ([`lb_bench::rate`]), still one seeded stream.
//! - **Keys.** `--keys 10000 --zipf-s 1.1` gives each arrival a key, rank
//!   `k` of a Zipf distribution ([`lb_bench::zipf`]), drawn from its own
//!   stream of the seed (so the arrival times, clients and demands stay those
//!   of an unkeyed run). In `--client-mode lb` a keyed request goes through
//!   lb-client's [`lb_client::LbChannel`] with the key `k<rank>` in the
//!   `lb-hash-key` metadata: that is the cluster-call path on which the hash
//!   policies follow a key (`Subscription::call` carries none); the others
//!   pick as usual. In `--client-mode p2c` the key is ignored.
//!   A dedicated thread sleeps until each arrival's time and spawns the request
//!   on the runtime; nothing waits for a previous request. How late the
//!   requests started against their schedule is measured and reported
//!   (`send_delay_ms`).
//! - **Independent clients.** Each client has its own `lb_client::subscribe`
//!   subscription (its own list and cursor). In `--client-mode lb` a request
//!   is `Subscription::call` (the service's cluster mode over `pick()`) + a
//!   per-address cached tonic channel, and its outcome goes back to the
//!   daemon (timeouts included); a keyed one goes through `LbChannel` (see
//!   above), whose failed calls name no backend. In `--client-mode p2c` each
//!   client runs tower's p2c balancer over `PeakEwmaDiscover` (linkerd's
//!   defaults: 30 ms default RTT, 10 s decay) and takes only the membership
//!   from its subscription: it sees only its own calls.
//! - **Latency** runs from the scheduled arrival to the reply, so it includes
//!   the generator's own lateness and the queueing at the backend. A request
//!   not answered within `--timeout` (1 s) of its arrival is a timeout; every
//!   failure counts as an error.
//!
//! The measured run starts after `--warmup`; `--phases 12s,21s` splits it (at
//! the scenario's event times, from the start of the measured run) for
//! per-phase figures. The result is one JSON file (`--out`).
//!
//! `lb-loadgen --daemon 127.0.0.1:7400 --service work --clients 16 --rate 1960 --duration 30s --warmup 3s --seed 1 --client-mode lb --out run.json`

use std::collections::{BTreeMap, HashMap};
use std::convert::Infallible;
use std::future::{poll_fn, Future};
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use lb_bench::args::Target;
use lb_bench::clock::unix_ms;
use lb_bench::procfs::cpu_seconds;
use lb_bench::rate::{piecewise_poisson, RateStep};
use lb_bench::stats::{percentile_ms, round};
use lb_bench::work::work_client::WorkClient;
use lb_bench::work::{DoRequest, WORK_METHOD};
use lb_bench::zipf::Zipf;
use lb_client::channel::HASH_KEY;
use lb_client::{subscribe, ClientOptions, LbChannel, Subscription};
use lb_core::duration::parse as parse_duration;
use lb_sim::workload::{exponential, stream_rng, ARRIVAL_STREAM};
use rand::Rng;
use serde::Serialize;
use tonic::body::Body;
use tonic::transport::{Channel, Endpoint};
use tower::balance::p2c::Balance;
use tower::discover::Change;
use tower::load::{CompleteOnResponse, PeakEwmaDiscover};
use tower::Service;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
enum Mode {
    /// lb-client's pick() over the daemon's list.
    Lb,
    /// tower's p2c + PeakEwma inside each client; membership from lb.
    P2c,
}

/// Open-loop Poisson load over independent lb clients.
#[derive(Debug, Parser)]
struct Args {
    #[command(flatten)]
    target: Target,
    /// Independent clients (each its own subscription).
    #[arg(long, default_value_t = 16)]
    clients: u32,
    /// Offered load, requests per second (Poisson).
    #[arg(long)]
    rate: f64,
    /// `AT=FACTOR`: from AT into the measured run, the rate is FACTOR ×
    /// `--rate` (repeatable or comma-separated).
    #[arg(long, value_parser = parse_load_step, value_delimiter = ',')]
    load_step: Vec<LoadStep>,
    /// Keys drawn per request (Zipf ranks 1..=N; 0: requests carry no key).
    #[arg(long, default_value_t = 0)]
    keys: u32,
    /// Exponent of the keys' Zipf distribution.
    #[arg(long, default_value_t = 1.0)]
    zipf_s: f64,
    /// Measured run length (e.g. 30s).
    #[arg(long, value_parser = parse_duration, default_value = "30s")]
    duration: Duration,
    /// Unmeasured warm-up before the run.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    warmup: Duration,
    /// Seed of the arrivals (times, clients, service demands).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Who chooses the backend.
    #[arg(long, value_enum, default_value_t = Mode::Lb)]
    client_mode: Mode,
    /// Per-request timeout, counted from the scheduled arrival.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    timeout: Duration,
    /// Phase boundaries, from the start of the measured run (comma-separated).
    #[arg(long, value_parser = parse_duration, value_delimiter = ',')]
    phases: Vec<Duration>,
    /// Wall-clock start of the warm-up (ms since the Unix epoch), so an
    /// orchestrator can line its events up; default: as soon as ready.
    #[arg(long)]
    start_at_unix_ms: Option<u64>,
    /// Before starting, wait until every client's list holds this many servers.
    #[arg(long, default_value_t = 1)]
    min_servers: usize,
    /// Where to write the result (JSON).
    #[arg(long)]
    out: PathBuf,
}

/// A `--load-step`: from `at` into the measured run, `factor` × `--rate`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
struct LoadStep {
    #[serde(serialize_with = "as_secs")]
    at: Duration,
    factor: f64,
}

fn as_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// `18s=1.3`: a [`LoadStep`].
fn parse_load_step(s: &str) -> Result<LoadStep, String> {
    let (at, factor) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?}: expected AT=FACTOR, e.g. 18s=1.3"))?;
    let at = parse_duration(at.trim())?;
    let factor: f64 = factor
        .trim()
        .parse()
        .map_err(|e| format!("{s:?}: factor: {e}"))?;
    if !(factor.is_finite() && factor > 0.0) {
        return Err(format!("{s:?}: the factor must be positive"));
    }
    Ok(LoadStep { at, factor })
}

/// The RNG stream of request keys (the arrivals' is [`ARRIVAL_STREAM`]).
const KEY_STREAM: u64 = 2;

#[derive(Debug, Clone, Copy)]
struct Arrival {
    /// ns since the start of the warm-up.
    at: u64,
    client: u32,
    work: f64,
    /// Zipf rank of the request's key, if requests are keyed.
    key: Option<u32>,
}

/// The run's arrivals from `seed`, drawn as the simulator draws its own (same
/// RNG stream and generator), at `rate` changed by `steps` (times from the
/// start of the arrivals, i.e. of the warm-up); then, from a stream of their
/// own, their keys if `keys` is given.
fn arrivals(
    seed: u64,
    rate: f64,
    steps: &[RateStep],
    span: Duration,
    clients: u32,
    keys: Option<&Zipf>,
) -> Vec<Arrival> {
    let mut rng = stream_rng(seed, ARRIVAL_STREAM);
    let mut plan = piecewise_poisson(&mut rng, rate, steps, span, |at, rng| Arrival {
        at,
        client: rng.random_range(0..clients.max(1)),
        work: exponential(rng, 1.0),
        key: None,
    });
    if let Some(z) = keys {
        let mut rng = stream_rng(seed, KEY_STREAM);
        for a in &mut plan {
            a.key = Some(z.sample(&mut rng));
        }
    }
    plan
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    Timeout,
    /// Failed before the timeout (refused, reset, unavailable).
    Failed,
    /// The client's list was empty.
    NoBackend,
}

#[derive(Debug, Clone)]
struct Record {
    latency_ns: u64,
    send_delay_ns: u64,
    status: Status,
    backend: Option<Arc<str>>,
}

/// Where a p2c request tells which backend tower picked.
#[derive(Clone, Default)]
struct Picked(Arc<OnceLock<Arc<str>>>);

/// A backend's channel under tower's balancer, which notes its id in the
/// request's [`Picked`] slot.
#[derive(Clone)]
struct Tagged {
    id: Arc<str>,
    inner: Channel,
}

impl Service<http::Request<Body>> for Tagged {
    type Response = http::Response<Body>;
    type Error = tonic::transport::Error;
    type Future = <Channel as Service<http::Request<Body>>>::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if let Some(p) = req.extensions().get::<Picked>() {
            let _ = p.0.set(Arc::clone(&self.id));
        }
        self.inner.call(req)
    }
}

type Disco =
    tokio_stream::wrappers::UnboundedReceiverStream<Result<Change<Arc<str>, Tagged>, Infallible>>;
type P2cBalance = Balance<PeakEwmaDiscover<Disco, CompleteOnResponse>, http::Request<Body>>;

/// One client's p2c balancer, shared by its concurrent requests (the lock is
/// held for `poll_ready` + `call` only, as tower's `Buffer` would).
#[derive(Clone)]
struct P2cService(Arc<tokio::sync::Mutex<P2cBalance>>);

type BoxFuture = Pin<Box<dyn Future<Output = Result<http::Response<Body>, BoxError>> + Send>>;

impl Service<http::Request<Body>> for P2cService {
    type Response = http::Response<Body>;
    type Error = BoxError;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> BoxFuture {
        let bal = Arc::clone(&self.0);
        Box::pin(async move {
            let fut = {
                let mut b = bal.lock().await;
                poll_fn(|cx| b.poll_ready(cx)).await?;
                b.call(req)
            };
            fut.await
        })
    }
}

/// The client of `addr`, connected lazily once and shared.
fn cached_client(
    channels: &Mutex<HashMap<String, WorkClient<Channel>>>,
    addr: &str,
) -> Result<WorkClient<Channel>, tonic::Status> {
    let mut m = channels.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(c) = m.get(addr) {
        return Ok(c.clone());
    }
    let c = WorkClient::new(
        channel(addr).map_err(|e| tonic::Status::unavailable(format!("{addr}: {e}")))?,
    );
    m.insert(addr.to_string(), c.clone());
    Ok(c)
}

fn channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_lazy())
}

/// Feeds tower's discovery from the subscription's membership.
async fn discover(
    sub: Subscription,
    tx: tokio::sync::mpsc::UnboundedSender<Result<Change<Arc<str>, Tagged>, Infallible>>,
) {
    let mut known: HashMap<Arc<str>, String> = HashMap::new();
    let mut version = u64::MAX;
    loop {
        let list = match sub
            .wait_for(Duration::from_secs(3600), |l| l.version() != version)
            .await
        {
            Ok(l) => l,
            Err(_) => continue,
        };
        version = list.version();
        let now: HashMap<Arc<str>, String> = list
            .servers()
            .iter()
            .filter(|s| !s.is_drop())
            .map(|s| (Arc::from(s.instance_id()), s.address().to_string()))
            .collect();
        for (id, addr) in &known {
            if now.get(id) != Some(addr) && tx.send(Ok(Change::Remove(Arc::clone(id)))).is_err() {
                return;
            }
        }
        for (id, addr) in &now {
            if known.get(id) == Some(addr) {
                continue;
            }
            match channel(addr) {
                Ok(inner) => {
                    let svc = Tagged {
                        id: Arc::clone(id),
                        inner,
                    };
                    if tx.send(Ok(Change::Insert(Arc::clone(id), svc))).is_err() {
                        return;
                    }
                }
                Err(e) => tracing::warn!(%addr, "bad backend address: {e}"),
            }
        }
        known = now;
    }
}

enum Client {
    Lb {
        sub: Subscription,
        channels: Mutex<HashMap<String, WorkClient<Channel>>>,
        /// Keyed requests: the key rides in `lb-hash-key` metadata.
        keyed: WorkClient<LbChannel>,
    },
    P2c {
        // Kept so the subscription lives as long as the client.
        _sub: Subscription,
        client: WorkClient<P2cService>,
    },
}

impl Client {
    async fn new(mode: Mode, sub: Subscription) -> Client {
        match mode {
            Mode::Lb => Client::Lb {
                keyed: WorkClient::new(sub.channel()),
                sub,
                channels: Mutex::new(HashMap::new()),
            },
            Mode::P2c => {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                tokio::spawn(discover(sub.clone(), tx));
                let disco = PeakEwmaDiscover::new(
                    tokio_stream::wrappers::UnboundedReceiverStream::new(rx),
                    Duration::from_millis(30),
                    Duration::from_secs(10),
                    CompleteOnResponse::default(),
                );
                let bal = Balance::new(disco);
                Client::P2c {
                    _sub: sub,
                    client: WorkClient::new(P2cService(Arc::new(tokio::sync::Mutex::new(bal)))),
                }
            }
        }
    }

    /// Sends one request; returns its status and the backend, if known.
    async fn call(
        &self,
        work: f64,
        key: Option<u32>,
        deadline: tokio::time::Instant,
    ) -> (Status, Option<Arc<str>>) {
        let req = DoRequest { work };
        match self {
            Client::Lb { keyed, .. } if key.is_some() => {
                // One logical call under the service's cluster mode; under a
                // hash policy its first attempt goes to the key's backend.
                let mut request = tonic::Request::new(req);
                if let Some(k) = key {
                    if let Ok(v) = format!("k{k}").parse() {
                        request.metadata_mut().insert(HASH_KEY, v);
                    }
                }
                let mut client = keyed.clone();
                match tokio::time::timeout_at(deadline, client.r#do(request)).await {
                    Ok(Ok(reply)) => (
                        Status::Ok,
                        Some(Arc::from(reply.into_inner().backend_id.as_str())),
                    ),
                    Ok(Err(_)) => (Status::Failed, None),
                    Err(_) => (Status::Timeout, None),
                }
            }
            Client::Lb { sub, channels, .. } => {
                // One logical call under the service's cluster mode (failover
                // by default: a call cut by a killed backend is retried on
                // another one); the deadline covers every attempt.
                let last: Mutex<Option<Arc<str>>> = Mutex::new(None);
                let r = tokio::time::timeout_at(
                    deadline,
                    sub.call(WORK_METHOD, &[], |ep| {
                        *last.lock().unwrap_or_else(PoisonError::into_inner) =
                            Some(Arc::from(ep.instance_id()));
                        let client = cached_client(channels, ep.address());
                        async move {
                            let mut client = client?;
                            Ok::<_, tonic::Status>(client.r#do(req).await?.into_inner())
                        }
                    }),
                )
                .await;
                let tried = last.lock().unwrap_or_else(PoisonError::into_inner).clone();
                match r {
                    Ok(Ok(reply)) => (Status::Ok, Some(Arc::from(reply.backend_id.as_str()))),
                    Ok(Err(lb_client::ClusterError::NoPick(_))) => (Status::NoBackend, None),
                    Ok(Err(_)) => (Status::Failed, tried),
                    Err(_) => (Status::Timeout, tried),
                }
            }
            Client::P2c { client, .. } => {
                let picked = Picked::default();
                let mut request = tonic::Request::new(req);
                request.extensions_mut().insert(picked.clone());
                let mut client = client.clone();
                let r = tokio::time::timeout_at(deadline, client.r#do(request)).await;
                let status = match r {
                    Ok(Ok(reply)) => {
                        let id = reply.into_inner().backend_id;
                        let _ = picked.0.set(Arc::from(id.as_str()));
                        Status::Ok
                    }
                    Ok(Err(_)) => Status::Failed,
                    Err(_) => Status::Timeout,
                };
                (status, picked.0.get().cloned())
            }
        }
    }
}

#[derive(Debug, Serialize)]
struct Summary {
    requests: u64,
    ok: u64,
    errors: u64,
    timeouts: u64,
    failed: u64,
    no_backend: u64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    max_ms: f64,
    mean_ms: f64,
    /// Requests sent to each backend (answered or not), when known.
    backends: BTreeMap<String, u64>,
    /// Failed requests whose backend is unknown (p2c mode, failed before a pick).
    unknown_backend: u64,
    /// 99th percentile of how late requests started against their schedule, ms.
    send_delay_p99_ms: f64,
}

fn summarize<'a>(recs: impl Iterator<Item = &'a Record>) -> Summary {
    let mut lat = Vec::new();
    let mut s = Summary {
        requests: 0,
        ok: 0,
        errors: 0,
        timeouts: 0,
        failed: 0,
        no_backend: 0,
        p50_ms: 0.0,
        p99_ms: 0.0,
        p999_ms: 0.0,
        max_ms: 0.0,
        mean_ms: 0.0,
        backends: BTreeMap::new(),
        unknown_backend: 0,
        send_delay_p99_ms: 0.0,
    };
    let mut delays = Vec::new();
    for r in recs {
        delays.push(r.send_delay_ns);
        s.requests += 1;
        match r.status {
            Status::Ok => {
                s.ok += 1;
                lat.push(r.latency_ns);
            }
            Status::Timeout => s.timeouts += 1,
            Status::Failed => s.failed += 1,
            Status::NoBackend => s.no_backend += 1,
        }
        match &r.backend {
            Some(b) => *s.backends.entry(b.to_string()).or_default() += 1,
            None => s.unknown_backend += 1,
        }
    }
    s.errors = s.requests - s.ok;
    delays.sort_unstable();
    s.send_delay_p99_ms = round(percentile_ms(&delays, 0.99), 3);
    lat.sort_unstable();
    s.p50_ms = round(percentile_ms(&lat, 0.50), 3);
    s.p99_ms = round(percentile_ms(&lat, 0.99), 3);
    s.p999_ms = round(percentile_ms(&lat, 0.999), 3);
    s.max_ms = round(lat.last().copied().unwrap_or(0) as f64 / 1e6, 3);
    s.mean_ms = round(
        if lat.is_empty() {
            0.0
        } else {
            lat.iter().map(|&x| x as f64).sum::<f64>() / lat.len() as f64 / 1e6
        },
        3,
    );
    s
}

/// Of `(key, backend)` pairs, the percentage whose backend is the one its
/// key used most (None without any pair).
fn key_affinity<'a>(pairs: impl Iterator<Item = (u32, &'a str)>) -> Option<f64> {
    let mut by_key: HashMap<u32, HashMap<&'a str, u64>> = HashMap::new();
    let mut all = 0u64;
    for (k, b) in pairs {
        *by_key.entry(k).or_default().entry(b).or_default() += 1;
        all += 1;
    }
    let top: u64 = by_key
        .values()
        .map(|m| m.values().copied().max().unwrap_or(0))
        .sum();
    (all > 0).then(|| round(100.0 * top as f64 / all as f64, 2))
}

#[derive(Debug, Serialize)]
struct Phase {
    from_s: f64,
    to_s: f64,
    #[serde(flatten)]
    summary: Summary,
}

#[derive(Debug, Serialize)]
struct RunResult {
    mode: Mode,
    service: String,
    rate: f64,
    clients: u32,
    seed: u64,
    /// `--load-step`s (seconds into the measured run, factor of `rate`).
    load_steps: Vec<LoadStep>,
    /// `--keys` (0: none) and `--zipf-s`.
    keys: u32,
    zipf_s: f64,
    warmup_s: f64,
    duration_s: f64,
    timeout_ms: f64,
    /// Arrivals over warm-up + run.
    arrivals_total: usize,
    /// Wall-clock start of the warm-up, ms since the Unix epoch.
    start_unix_ms: u64,
    /// How late requests started against their schedule (whole run).
    send_delay_ms: BTreeMap<String, f64>,
    /// CPU seconds this process used (user + system), whole run.
    cpu_s: f64,
    #[serde(flatten)]
    summary: Summary,
    phases: Vec<Phase>,
    /// [second of the measured run, p99 ms of requests that arrived in it and were answered].
    p99_per_second: Vec<(u64, f64)>,
    /// [second, errors among requests that arrived in it].
    errors_per_second: Vec<(u64, u64)>,
    /// Keyed runs: of the measured keyed requests whose backend is known,
    /// the percentage served by their key's most used backend (100: every
    /// key stayed on one backend).
    key_affinity_pct: Option<f64>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lb_tests::cli::init_tracing("warn");
    let args = Args::parse();
    if !(args.rate.is_finite() && args.rate > 0.0) {
        bail!("--rate must be positive");
    }
    let span = args.warmup + args.duration;
    let steps: Vec<RateStep> = args
        .load_step
        .iter()
        .map(|s| RateStep {
            at: args.warmup + s.at,
            rate: args.rate * s.factor,
        })
        .collect();
    let zipf = match args.keys {
        0 => None,
        n => Some(Zipf::new(n, args.zipf_s).context("--keys / --zipf-s")?),
    };
    let plan = arrivals(
        args.seed,
        args.rate,
        &steps,
        span,
        args.clients,
        zipf.as_ref(),
    );

    let mut clients = Vec::with_capacity(args.clients as usize);
    for i in 0..args.clients.max(1) {
        let mut opts = ClientOptions::new(&args.target.daemon);
        opts.client_id = format!("loadgen-{}-{i}", std::process::id());
        let sub = subscribe(&args.target.service, opts).await?;
        let min = args.min_servers;
        sub.wait_for(Duration::from_secs(30), |l| l.servers().len() >= min)
            .await
            .map_err(|_| anyhow::anyhow!("client {i}: the list never reached {min} servers"))?;
        clients.push(Arc::new(Client::new(args.client_mode, sub).await));
    }

    // Line the start up with the wall clock.
    let now_unix = unix_ms();
    let start_unix = args.start_at_unix_ms.unwrap_or(now_unix + 200);
    if start_unix + 50 < now_unix {
        bail!(
            "--start-at-unix-ms is {} ms in the past: setup took too long",
            now_unix - start_unix
        );
    }
    let start = Instant::now() + Duration::from_millis(start_unix.saturating_sub(now_unix));
    let tstart = tokio::time::Instant::from_std(start);
    let timeout = args.timeout;

    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Record)>();
    let handle = tokio::runtime::Handle::current();
    let n = plan.len();
    let plan = Arc::new(plan);
    let dispatch_plan = Arc::clone(&plan);
    // The dispatcher: a thread, so sends keep to schedule at sub-millisecond
    // precision (std sleep) without spinning.
    let dispatcher = std::thread::spawn(move || {
        for (i, a) in dispatch_plan.iter().enumerate() {
            let target = start + Duration::from_nanos(a.at);
            let now = Instant::now();
            if target > now {
                std::thread::sleep(target - now);
            }
            let client = Arc::clone(&clients[a.client as usize % clients.len()]);
            let tx = tx.clone();
            let (work, key) = (a.work, a.key);
            handle.spawn(async move {
                let began = Instant::now();
                let deadline = tokio::time::Instant::from_std(target + timeout);
                let (status, backend) = client.call(work, key, deadline).await;
                let latency = Instant::now().saturating_duration_since(target);
                let _ = tx.send((
                    i,
                    Record {
                        latency_ns: latency.as_nanos() as u64,
                        send_delay_ns: began.saturating_duration_since(target).as_nanos() as u64,
                        status,
                        backend,
                    },
                ));
            });
        }
    });

    let mut records: Vec<Option<Record>> = vec![None; n];
    let mut got = 0usize;
    let hard_end = tstart + span + timeout + Duration::from_secs(10);
    while got < n {
        match tokio::time::timeout_at(hard_end, rx.recv()).await {
            Ok(Some((i, r))) => {
                if let Some(slot) = records.get_mut(i) {
                    if slot.is_none() {
                        got += 1;
                    }
                    *slot = Some(r);
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    if dispatcher.join().is_err() {
        bail!("the dispatcher thread panicked");
    }
    if got < n {
        tracing::warn!("{} requests never finished; counted as timeouts", n - got);
    }
    let records: Vec<Record> = records
        .into_iter()
        .map(|r| {
            r.unwrap_or(Record {
                latency_ns: timeout.as_nanos() as u64,
                send_delay_ns: 0,
                status: Status::Timeout,
                backend: None,
            })
        })
        .collect();

    let mut delays: Vec<u64> = records.iter().map(|r| r.send_delay_ns).collect();
    delays.sort_unstable();
    let send_delay_ms: BTreeMap<String, f64> = [
        ("p50", percentile_ms(&delays, 0.5)),
        ("p99", percentile_ms(&delays, 0.99)),
        ("p999", percentile_ms(&delays, 0.999)),
        ("max", delays.last().copied().unwrap_or(0) as f64 / 1e6),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), round(v, 3)))
    .collect();

    let warm_ns = args.warmup.as_nanos() as u64;
    let measured: Vec<(u64, &Record)> = plan
        .iter()
        .zip(&records)
        .filter(|(a, _)| a.at >= warm_ns)
        .map(|(a, r)| (a.at - warm_ns, r))
        .collect();

    let mut bounds: Vec<f64> = vec![0.0];
    let mut cuts: Vec<f64> = args
        .phases
        .iter()
        .map(Duration::as_secs_f64)
        .filter(|&s| s > 0.0 && s < args.duration.as_secs_f64())
        .collect();
    cuts.sort_by(f64::total_cmp);
    cuts.dedup();
    bounds.extend(cuts);
    bounds.push(args.duration.as_secs_f64());
    let phases = bounds
        .windows(2)
        .map(|w| {
            let (from, to) = (w[0], w[1]);
            Phase {
                from_s: from,
                to_s: to,
                summary: summarize(
                    measured
                        .iter()
                        .filter(|(t, _)| {
                            let s = *t as f64 / 1e9;
                            s >= from && s < to
                        })
                        .map(|(_, r)| *r),
                ),
            }
        })
        .collect();

    let secs = args.duration.as_secs_f64().ceil() as u64;
    let mut per_sec: Vec<Vec<u64>> = vec![Vec::new(); secs as usize];
    let mut err_sec: Vec<u64> = vec![0; secs as usize];
    for (t, r) in &measured {
        let s = (*t / 1_000_000_000) as usize;
        if s < per_sec.len() {
            if r.status == Status::Ok {
                per_sec[s].push(r.latency_ns);
            } else {
                err_sec[s] += 1;
            }
        }
    }
    let p99_per_second = per_sec
        .iter_mut()
        .enumerate()
        .map(|(s, v)| {
            v.sort_unstable();
            (s as u64, round(percentile_ms(v, 0.99), 3))
        })
        .collect();
    let errors_per_second = err_sec
        .iter()
        .enumerate()
        .map(|(s, e)| (s as u64, *e))
        .collect();

    let key_affinity_pct = key_affinity(
        plan.iter()
            .zip(&records)
            .filter(|(a, _)| a.at >= warm_ns)
            .filter_map(|(a, r)| Some((a.key?, r.backend.as_deref()?))),
    );

    let result = RunResult {
        mode: args.client_mode,
        service: args.target.service.clone(),
        rate: args.rate,
        clients: args.clients,
        seed: args.seed,
        load_steps: args.load_step.clone(),
        keys: args.keys,
        zipf_s: args.zipf_s,
        warmup_s: args.warmup.as_secs_f64(),
        duration_s: args.duration.as_secs_f64(),
        timeout_ms: args.timeout.as_secs_f64() * 1000.0,
        arrivals_total: n,
        start_unix_ms: start_unix,
        send_delay_ms,
        cpu_s: cpu_seconds("self").unwrap_or(0.0),
        summary: summarize(measured.iter().map(|(_, r)| *r)),
        phases,
        p99_per_second,
        errors_per_second,
        key_affinity_pct,
    };
    let body = serde_json::to_string_pretty(&result)?;
    std::fs::write(&args.out, body)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    println!(
        "lb-loadgen: {} requests measured, ok {}, errors {} (timeouts {}), p50 {:.1} ms, p99 {:.1} ms, send delay p99 {:.3} ms",
        result.summary.requests,
        result.summary.ok,
        result.summary.errors,
        result.summary.timeouts,
        result.summary.p50_ms,
        result.summary.p99_ms,
        result.send_delay_ms.get("p99").copied().unwrap_or(0.0)
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_affinity_counts_calls_on_each_keys_most_used_backend() {
        assert_eq!(key_affinity(std::iter::empty()), None);
        // Key 1: 3 on b1, 1 on b2; key 2: 2 on b3. 5 of 6 on the usual one.
        let pairs = [
            (1, "b1"),
            (1, "b2"),
            (2, "b3"),
            (1, "b1"),
            (2, "b3"),
            (1, "b1"),
        ];
        assert_eq!(key_affinity(pairs.into_iter()), Some(83.33));
    }

    #[test]
    fn load_steps_parse() {
        let s = parse_load_step("18s=1.3").unwrap();
        assert_eq!((s.at, s.factor), (Duration::from_secs(18), 1.3));
        let s = parse_load_step("2500ms = 1").unwrap();
        assert_eq!((s.at, s.factor), (Duration::from_millis(2500), 1.0));
        for bad in ["18s", "18s=0", "18s=-1", "18s=x", "soon=2"] {
            assert!(parse_load_step(bad).is_err(), "{bad}");
        }
        let a = Args::try_parse_from([
            "lb-loadgen",
            "--rate",
            "100",
            "--out",
            "x.json",
            "--load-step",
            "6s=1.5,9s=1",
            "--load-step",
            "12s=0.5",
        ])
        .unwrap();
        assert_eq!(a.load_step.len(), 3);
        assert_eq!(a.load_step[2].factor, 0.5);
    }

    #[test]
    fn keys_come_from_their_own_stream() {
        let span = Duration::from_secs(2);
        let z = Zipf::new(1000, 1.1).unwrap();
        let plain = arrivals(4, 500.0, &[], span, 16, None);
        let keyed = arrivals(4, 500.0, &[], span, 16, Some(&z));
        assert_eq!(plain.len(), keyed.len());
        // Times, clients and demands are those of the unkeyed run.
        for (p, k) in plain.iter().zip(&keyed) {
            assert_eq!((p.at, p.client, p.work), (k.at, k.client, k.work));
            assert_eq!(p.key, None);
            assert!(k.key.is_some_and(|r| (1..=1000).contains(&r)));
        }
        let again = arrivals(4, 500.0, &[], span, 16, Some(&z));
        assert!(keyed.iter().zip(&again).all(|(a, b)| a.key == b.key));
    }

    #[test]
    fn a_load_step_changes_the_rate_from_its_time() {
        let span = Duration::from_secs(6);
        let steps = [RateStep {
            at: Duration::from_secs(3),
            rate: 1500.0,
        }];
        let a = arrivals(1, 500.0, &steps, span, 4, None);
        let before = a.iter().filter(|x| x.at < 3_000_000_000).count() as f64;
        let after = a.len() as f64 - before;
        // 1,500 and 4,500 expected; Poisson sd ≈ 39 and 67.
        assert!((before - 1500.0).abs() < 5.0 * 1500f64.sqrt(), "{before}");
        assert!((after - 4500.0).abs() < 5.0 * 4500f64.sqrt(), "{after}");
        // The arrivals before the step are the unstepped run's.
        let plain = arrivals(1, 500.0, &[], span, 4, None);
        let n = before as usize;
        assert!(a[..n]
            .iter()
            .zip(&plain[..n])
            .all(|(x, y)| (x.at, x.client) == (y.at, y.client)));
    }
}
