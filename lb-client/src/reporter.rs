//! The backend side: register with the daemon and stream load reports.
//!
//! [`Reporter::start`] spawns a task that keeps one `Registry/ReportLoad` stream
//! open, on the process's shared connection to the daemon (the one its
//! subscriptions use, see [`crate::daemon`]): registration first, then a
//! [`LoadSample`] every interval the daemon asks for. The daemon takes the
//! instance out of every list as soon as the stream breaks, so the task
//! reconnects forever (jittered backoff, daemons in turn). [`Reporter::shutdown`] drains gracefully: it sends `Drain`, waits for
//! the daemon to close the stream (bounded by a timeout), then stops.
//!
//! ```no_run
//! use std::time::Duration;
//! use lb_client::{Registration, Reporter, ReporterOptions};
//! # async fn demo() {
//! let reg = Registration::new("hello", "b1", "10.0.0.5:50051");
//! let reporter = Reporter::start(reg, ReporterOptions::new("127.0.0.1:7400"));
//! // Server::builder().layer(reporter.layer()).add_service(...).serve(...).await?;
//! reporter.shutdown(Duration::from_secs(2)).await;
//! # }
//! ```
//!
//! By default a sample is this process's CPU utilization ([`crate::CpuSampler`])
//! plus the requests counted by [`Reporter::layer`].

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::{rngs::StdRng, SeedableRng};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_stream::StreamExt;
use tonic::{Code, Status};
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::cpu::CpuSampler;
use crate::credentials::Credentials;
use crate::daemon::{self, DaemonError};
use crate::inflight::{InFlight, InFlightLayer};
use crate::protocol::{Directive, LoadSample, Outgoing, Registration};

/// Why a reporter wait ended without success.
///
/// ```
/// use std::time::Duration;
/// use lb_client::{DaemonError, ReporterError};
/// let e = ReporterError::Timeout {
///     waited: Duration::from_secs(2),
///     last: Some(DaemonError::ConnectionRefused { daemon: "127.0.0.1:7400".into() }),
/// };
/// assert_eq!(
///     e.to_string(),
///     "the lb daemon did not acknowledge the registration within 2s: \
///      cannot reach the lb daemon at 127.0.0.1:7400: connection refused"
/// );
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The daemon did not acknowledge the registration in time: `last`
    /// says why the latest attempt failed (unreachable, refused), if one did.
    #[error(
        "the lb daemon did not acknowledge the registration within {waited:?}{}",
        last.as_ref().map(|e| format!(": {e}")).unwrap_or_default()
    )]
    Timeout {
        /// How long it waited.
        waited: Duration,
        /// The latest failed attempt, if any.
        last: Option<DaemonError>,
    },
}

/// A load sampler, called once per report.
///
/// Called on the reporter's task: keep it quick, and never block.
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
/// use std::sync::{Arc, Mutex};
/// use lb_client::{CpuSampler, LoadSample, ReporterOptions};
///
/// let queued = Arc::new(AtomicU64::new(0)); // the application's own gauge
/// let cpu = Mutex::new(CpuSampler::new());
/// let gauge = Arc::clone(&queued);
/// let mut options = ReporterOptions::new("127.0.0.1:7400");
/// options.sampler = Some(Arc::new(move || LoadSample {
///     cpu_utilization: cpu.lock().map_or(None, |mut c| c.sample()).unwrap_or(0.0),
///     active_requests: gauge.load(Relaxed),
///     ..LoadSample::default()
/// }));
/// queued.store(7, Relaxed);
/// assert_eq!(options.sampler.as_ref().map(|s| s().active_requests), Some(7));
/// ```
pub type Sampler = Arc<dyn Fn() -> LoadSample + Send + Sync>;

/// How to reach the daemons and what to report.
///
/// ```
/// use std::time::Duration;
/// use lb_client::{Credentials, ReporterOptions};
/// let mut options = ReporterOptions::new("10.0.0.2:7400")
///     .with_credentials(Credentials::default().with_token("s3cret"));
/// options.daemons.push("10.0.0.3:7400".into()); // a replica: reported to as well
/// options.connect_timeout = Duration::from_secs(1);
/// assert_eq!(options.daemons.len(), 2);
/// ```
#[derive(Clone)]
pub struct ReporterOptions {
    /// Daemon addresses, "host:port" or "http://host:port": reported to all
    /// at once, or tried in turn (see [`ReporterOptions::every_daemon`]).
    pub daemons: Vec<String>,
    /// With several `daemons`: keep a stream open to every one of them at
    /// once (the default; replicas sharing one store each plan from the
    /// backend's own reports and see its liveness first hand, and one
    /// replica dying leaves the others' view untouched). `false`: one
    /// stream, the daemons tried in turn.
    pub every_daemon: bool,
    /// Reconnect backoff.
    pub backoff: Backoff,
    /// Bound on establishing a connection to a daemon.
    pub connect_timeout: Duration,
    /// Replaces the default sampler (process CPU from /proc + the in-flight counter).
    pub sampler: Option<Sampler>,
    /// A token and TLS settings, for daemons that require them.
    pub credentials: Credentials,
}

impl std::fmt::Debug for ReporterOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReporterOptions")
            .field("daemons", &self.daemons)
            .field("every_daemon", &self.every_daemon)
            .field("backoff", &self.backoff)
            .field("connect_timeout", &self.connect_timeout)
            .field("sampler", &self.sampler.as_ref().map(|_| "custom"))
            .field("credentials", &self.credentials)
            .finish()
    }
}

impl ReporterOptions {
    /// Options for one daemon; everything else defaults.
    ///
    /// ```
    /// let options = lb_client::ReporterOptions::new("127.0.0.1:7400");
    /// assert_eq!(options.daemons, ["127.0.0.1:7400"]);
    /// assert!(options.sampler.is_none()); // CPU from /proc and the in-flight counter
    /// ```
    pub fn new(daemon: impl Into<String>) -> Self {
        ReporterOptions {
            daemons: vec![daemon.into()],
            every_daemon: true,
            backoff: Backoff::default(),
            connect_timeout: Duration::from_secs(2),
            sampler: None,
            credentials: Credentials::default(),
        }
    }

    /// The same options with `credentials`.
    ///
    /// ```
    /// use lb_client::{Credentials, ReporterOptions};
    /// let token = std::env::var("LB_TOKEN").unwrap_or_default();
    /// let options = ReporterOptions::new("127.0.0.1:7400")
    ///     .with_credentials(Credentials::default().with_token(token));
    /// assert!(!options.credentials.uses_tls());
    /// ```
    pub fn with_credentials(mut self, credentials: Credentials) -> Self {
        self.credentials = credentials;
        self
    }
}

/// Used until the daemon names an interval.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(1);

/// The daemon's interval, clamped to [10 ms, 60 s]; 0 keeps `current`.
fn report_interval(ms: u32, current: Duration) -> Duration {
    if ms == 0 {
        return current;
    }
    Duration::from_millis(u64::from(ms)).clamp(Duration::from_millis(10), Duration::from_secs(60))
}

struct Shared {
    /// True while a stream is up and its registration acknowledged.
    registered: watch::Sender<bool>,
    /// Streams up and acknowledged (several with
    /// [`ReporterOptions::every_daemon`]).
    up: std::sync::atomic::AtomicUsize,
    /// The latest failed attempt; cleared on registration.
    last_error: Mutex<Option<DaemonError>>,
    drain_requested: AtomicBool,
    in_flight: InFlight,
}

/// Registers a backend and streams its load; see the module docs.
///
/// A backend's whole life with lb (a complete program:
/// `examples/hello/src/bin/backend.rs`):
///
/// ```no_run
/// # #[derive(Clone)]
/// # struct GreeterServer;
/// # struct Hello;
/// # impl GreeterServer { fn new(_: Hello) -> Self { GreeterServer } }
/// # impl tonic::server::NamedService for GreeterServer { const NAME: &'static str = "hello.Greeter"; }
/// # impl tower_service::Service<http::Request<tonic::body::Body>> for GreeterServer {
/// #     type Response = http::Response<tonic::body::Body>;
/// #     type Error = std::convert::Infallible;
/// #     type Future = std::future::Ready<Result<Self::Response, Self::Error>>;
/// #     fn poll_ready(&mut self, _: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
/// #         std::task::Poll::Ready(Ok(()))
/// #     }
/// #     fn call(&mut self, _: http::Request<tonic::body::Body>) -> Self::Future { unimplemented!() }
/// # }
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use lb_client::{Registration, Reporter, ReporterOptions};
/// use tonic::transport::{server::TcpIncoming, Server};
///
/// let listener = tokio::net::TcpListener::bind("0.0.0.0:50051").await?;
/// let reg = Registration::new("hello", "b1", "10.0.0.5:50051"); // the address clients dial
/// let reporter = Reporter::start(reg, ReporterOptions::new("127.0.0.1:7400"));
/// Server::builder()
///     .layer(reporter.layer()) // counts in-flight requests for the load reports
///     .add_service(GreeterServer::new(Hello))
///     .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
///         let _ = tokio::signal::ctrl_c().await;
///     })
///     .await?;
/// reporter.shutdown(Duration::from_secs(2)).await; // leave every list, then stop
/// # Ok(()) }
/// ```
pub struct Reporter {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Reporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reporter")
            .field("registered", &self.registered())
            .field("drain_requested", &self.drain_requested())
            .finish()
    }
}

impl Reporter {
    /// Spawns the reporting task and returns at once (the daemon may be down).
    /// Must be called within a Tokio runtime. Dropping the `Reporter` stops the
    /// task abruptly (the daemon sees a broken stream); prefer
    /// [`Reporter::shutdown`].
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use lb_client::{Registration, Reporter, ReporterOptions};
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut reg = Registration::new("hello", "b1", "10.0.0.5:50051");
    /// reg.instance.labels.insert("version".into(), "v2".into());
    /// let reporter = Reporter::start(reg, ReporterOptions::new("127.0.0.1:7400"));
    /// // Optional: wait for the daemon to acknowledge it (e.g. before a readiness probe says yes).
    /// reporter.wait_registered(Duration::from_secs(5)).await?;
    /// # Ok(()) }
    /// ```
    pub fn start(registration: Registration, options: ReporterOptions) -> Reporter {
        let in_flight = InFlight::default();
        let shared = Arc::new(Shared {
            registered: watch::Sender::new(false),
            up: std::sync::atomic::AtomicUsize::new(0),
            last_error: Mutex::new(None),
            drain_requested: AtomicBool::new(false),
            in_flight: in_flight.clone(),
        });
        let sampler = options
            .sampler
            .clone()
            .unwrap_or_else(|| default_sampler(in_flight));
        let (stop, stop_rx) = watch::channel(false);
        let mut seed = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(
            &(
                &registration.instance.service,
                &registration.instance.instance_id,
            ),
            &mut seed,
        );
        let task = Task {
            shared: Arc::clone(&shared),
            registration,
            options,
            sampler,
            rng: StdRng::seed_from_u64(std::hash::Hasher::finish(&seed)),
        };
        Reporter {
            shared,
            stop,
            task: Some(tokio::spawn(task.run(stop_rx))),
        }
    }

    /// The in-flight counter the default sampler reads.
    ///
    /// For requests a [`Reporter::layer`] does not see (another server, a
    /// queue consumer):
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # // Offline: the reporter's task never runs (nothing here yields).
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// let in_flight = reporter.in_flight();
    /// let job = in_flight.guard(); // counted as active until dropped
    /// assert_eq!(reporter.in_flight().get(), 1);
    /// drop(job);
    /// assert_eq!(in_flight.completed(), 1);
    /// # }
    /// ```
    pub fn in_flight(&self) -> InFlight {
        self.shared.in_flight.clone()
    }

    /// A tower layer counting the server's requests into [`Reporter::in_flight`].
    ///
    /// On a tonic server: `Server::builder().layer(reporter.layer())` (see
    /// [`Reporter`]); on any tower service:
    ///
    /// ```
    /// use tower::{service_fn, Layer, ServiceExt};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # // Offline: the reporter's task never runs (nothing here yields).
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// let hello = service_fn(|name: String| async move { Ok::<_, ()>(format!("hello, {name}")) });
    /// let svc = reporter.layer().layer(hello);
    /// assert_eq!(svc.oneshot("b1".into()).await, Ok("hello, b1".to_string()));
    /// assert_eq!(reporter.in_flight().completed(), 1);
    /// # }
    /// ```
    pub fn layer(&self) -> InFlightLayer {
        InFlightLayer::new(self.in_flight())
    }

    /// True while the stream is up and the daemon acknowledged the registration.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # // Offline: the reporter's task never runs (nothing here yields).
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// // E.g. for a readiness probe. Not yet: nothing was sent.
    /// assert!(!reporter.registered());
    /// # }
    /// ```
    pub fn registered(&self) -> bool {
        *self.shared.registered.borrow()
    }

    /// Waits until [`Reporter::registered`] is true.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// if let Err(e) = reporter.wait_registered(Duration::from_secs(5)).await {
    ///     // "the lb daemon did not acknowledge the registration within 5s: cannot
    ///     // reach the lb daemon at 127.0.0.1:7400: connection refused"; it keeps trying.
    ///     eprintln!("{e}");
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn wait_registered(&self, timeout: Duration) -> Result<(), Error> {
        let mut rx = self.shared.registered.subscribe();
        let acked = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|r| *r)).await,
            Ok(Ok(_))
        );
        if acked {
            Ok(())
        } else {
            Err(Error::Timeout {
                waited: timeout,
                last: self.last_error(),
            })
        }
    }

    /// Why the latest attempt to reach a daemon or register failed (the
    /// address and the cause), or `None` while registered. The task retries
    /// by itself.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// if let Some(e) = reporter.last_error() {
    ///     eprintln!("not registered with lb: {e}"); // e.g. in a health endpoint
    /// }
    /// # Ok(()) }
    /// ```
    pub fn last_error(&self) -> Option<DaemonError> {
        self.shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// True once the daemon asked this backend to drain.
    ///
    /// `lb-server ctl drain` takes the instance out of every list and sets this;
    /// finish the work in flight, then [`Reporter::shutdown`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// # // Offline: the reporter's task never runs (nothing here yields).
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// if reporter.drain_requested() {
    ///     // stop taking work from queues, let calls in flight end ...
    /// }
    /// assert!(!reporter.drain_requested());
    /// # }
    /// ```
    pub fn drain_requested(&self) -> bool {
        self.shared.drain_requested.load(Relaxed)
    }

    /// Graceful stop: sends `Drain`, waits for the daemon to close the stream,
    /// and stops the task; gives up (abruptly) after `timeout`.
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// # let reporter = lb_client::Reporter::start(reg, lb_client::ReporterOptions::new("127.0.0.1:7400"));
    /// // After the server stopped taking calls (e.g. on SIGTERM):
    /// reporter.shutdown(Duration::from_secs(2)).await;
    /// # Ok(()) }
    /// ```
    pub async fn shutdown(mut self, timeout: Duration) {
        self.stop.send_replace(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(timeout, &mut task).await.is_err() {
                warn!("lb reporter did not drain within {timeout:?}; closing the stream");
                task.abort();
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Rates of completed and failed requests between two samples.
struct Rates {
    at: std::time::Instant,
    completed: u64,
    failed: u64,
}

fn default_sampler(in_flight: InFlight) -> Sampler {
    let cpu = Mutex::new(CpuSampler::new());
    let rates = Mutex::new(Rates {
        at: std::time::Instant::now(),
        completed: in_flight.completed(),
        failed: in_flight.failed(),
    });
    Arc::new(move || {
        let (qps, eps) = {
            let mut r = rates.lock().unwrap_or_else(PoisonError::into_inner);
            let now = std::time::Instant::now();
            let dt = now.duration_since(r.at).as_secs_f64();
            let (completed, failed) = (in_flight.completed(), in_flight.failed());
            let rates = (dt > 0.0).then(|| {
                (
                    completed.saturating_sub(r.completed) as f64 / dt,
                    failed.saturating_sub(r.failed) as f64 / dt,
                )
            });
            *r = Rates {
                at: now,
                completed,
                failed,
            };
            rates.unzip()
        };
        LoadSample {
            cpu_utilization: cpu
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .sample()
                .unwrap_or(0.0),
            active_requests: in_flight.get(),
            qps,
            eps,
            ..LoadSample::default()
        }
    })
}

/// How a session ended, which decides the next backoff.
#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Stop requested; the task exits.
    Stopped,
    /// Registered, then the stream broke: reconnect soon.
    Acked,
    /// Refused for a reason that will not fix itself: retry at the max delay.
    Refused,
    /// Could not connect or register: usual backoff.
    Failed,
}

/// INVALID_ARGUMENT / FAILED_PRECONDITION mean our registration is wrong or not
/// acceptable; retrying quickly would only hammer the daemon.
fn classify(status: &Status) -> End {
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition => End::Refused,
        _ => End::Failed,
    }
}

async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await;
}

struct Task {
    shared: Arc<Shared>,
    registration: Registration,
    options: ReporterOptions,
    sampler: Sampler,
    rng: StdRng,
}

/// One acknowledged stream, counted in [`Shared::up`] while it lives.
struct Up<'a>(&'a Shared);

impl<'a> Up<'a> {
    fn new(shared: &'a Shared) -> Up<'a> {
        shared.up.fetch_add(1, Relaxed);
        shared.registered.send_replace(true);
        Up(shared)
    }
}

impl Drop for Up<'_> {
    fn drop(&mut self) {
        if self.0.up.fetch_sub(1, Relaxed) == 1 {
            self.0.registered.send_replace(false);
        }
    }
}

impl Task {
    /// One stream, or one per daemon with [`ReporterOptions::every_daemon`]
    /// (each with its own reconnect loop; aborting this task aborts them).
    async fn run(mut self, stop: watch::Receiver<bool>) {
        if !self.options.every_daemon || self.options.daemons.len() < 2 {
            return self.run_one(stop).await;
        }
        let mut streams = tokio::task::JoinSet::new();
        for daemon in &self.options.daemons {
            let mut options = self.options.clone();
            options.daemons = vec![daemon.clone()];
            let task = Task {
                shared: Arc::clone(&self.shared),
                registration: self.registration.clone(),
                options,
                sampler: Arc::clone(&self.sampler),
                rng: StdRng::seed_from_u64(rand::Rng::random(&mut self.rng)),
            };
            streams.spawn(task.run_one(stop.clone()));
        }
        while streams.join_next().await.is_some() {}
    }

    async fn run_one(mut self, mut stop: watch::Receiver<bool>) {
        let daemons = self.options.daemons.clone();
        let mut attempt = 0u32;
        for daemon in daemons.iter().cycle() {
            let end = self.session(daemon, attempt, &mut stop).await;
            let delay = match end {
                End::Stopped => break,
                End::Refused => self.options.backoff.max,
                End::Acked => {
                    attempt = 0;
                    self.options.backoff.delay(0, &mut self.rng)
                }
                End::Failed => {
                    attempt = attempt.saturating_add(1);
                    self.options.backoff.delay(attempt - 1, &mut self.rng)
                }
            };
            tokio::select! {
                _ = stopped(&mut stop) => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn session(
        &mut self,
        daemon: &str,
        attempt: u32,
        stop: &mut watch::Receiver<bool>,
    ) -> End {
        let (service, id) = (
            &self.registration.instance.service,
            &self.registration.instance.instance_id,
        );
        // The process's connection to this daemon, shared with its
        // subscriptions; dialled (or re-dialled) by the call below.
        let lease = match daemon::lease(
            daemon,
            self.options.connect_timeout,
            &self.options.credentials,
        ) {
            Ok(l) => l,
            Err(e) => {
                let e = DaemonError::undialable(daemon, self.options.credentials.uses_tls(), &e);
                warn!(%service, instance = %id, error = %e, "cannot dial the lb daemon");
                self.record(Some(e));
                return End::Failed;
            }
        };
        let (tx, rx) = mpsc::channel(4);
        let mut stream = tokio::select! {
            _ = stopped(stop) => return End::Stopped,
            r = daemon::report_load(lease.channel(), &self.options.credentials, &self.registration, rx) => match r {
                Ok(s) => s,
                Err(status) => return self.refused(daemon, &status, attempt),
            },
        };

        // The first response is the acknowledgement.
        let first = tokio::select! {
            _ = stopped(stop) => return drain(tx, stream).await,
            m = stream.next() => m,
        };
        let mut interval = match first {
            Some(Ok(d)) => {
                self.apply(d);
                report_interval(d.report_interval_ms, DEFAULT_INTERVAL)
            }
            Some(Err(status)) => return self.refused(daemon, &status, attempt),
            None => {
                warn!(%daemon, %service, instance = %id, "daemon closed the stream without acknowledging");
                self.record(Some(DaemonError::Broken {
                    daemon: daemon.to_owned(),
                    cause: "the daemon closed the stream without acknowledging".to_owned(),
                }));
                return End::Failed;
            }
        };
        self.record(None);
        let _up = Up::new(&self.shared);
        info!(%daemon, %service, instance = %id, ?interval, "registered with lb daemon");

        // Report at once so the daemon has load data for a new instance.
        let mut next = Instant::now();
        loop {
            tokio::select! {
                _ = stopped(stop) => return drain(tx, stream).await,
                _ = tokio::time::sleep_until(next) => {
                    next = Instant::now() + interval;
                    // A report that cannot be queued now would be stale later: skip it.
                    if let Err(mpsc::error::TrySendError::Closed(_)) =
                        tx.try_send(Outgoing::Report((self.sampler)()))
                    {
                        return End::Acked;
                    }
                }
                m = stream.next() => match m {
                    Some(Ok(d)) => {
                        self.apply(d);
                        let new = report_interval(d.report_interval_ms, interval);
                        if new != interval {
                            debug!(?new, "daemon changed the report interval");
                            interval = new;
                            next = next.min(Instant::now() + interval);
                        }
                    }
                    Some(Err(status)) => {
                        // Even FAILED_PRECONDITION here (TTL expired, replaced) is
                        // worth a prompt re-registration: the registration itself
                        // was fine. A refusal at registration time backs off.
                        let e = self.classify_status(daemon, &status);
                        info!(%service, instance = %id, error = %e, "report stream ended; registering again");
                        self.record(Some(e));
                        return End::Acked;
                    }
                    None => {
                        info!(%daemon, %service, instance = %id, "daemon ended the report stream; reconnecting");
                        return End::Acked;
                    }
                },
            }
        }
    }

    /// `status` from the daemon at `daemon`, said for a person.
    fn classify_status(&self, daemon: &str, status: &Status) -> DaemonError {
        DaemonError::classify(
            daemon,
            self.options.credentials.uses_tls(),
            self.options.connect_timeout,
            status,
        )
    }

    /// The stream could not be opened, or the registration was refused:
    /// logged (loud once per outage), recorded, and how to back off.
    fn refused(&self, daemon: &str, status: &Status, attempt: u32) -> End {
        let (service, id) = (
            &self.registration.instance.service,
            &self.registration.instance.instance_id,
        );
        let e = self.classify_status(daemon, status);
        if attempt == 0 || e.is_answer() {
            warn!(%service, instance = %id, error = %e, "not registered; retrying");
        } else {
            debug!(%service, instance = %id, error = %e, attempt, "not registered; retrying");
        }
        self.record(Some(e));
        classify(status)
    }

    /// Sets (or, registered, clears) the latest failure.
    fn record(&self, e: Option<DaemonError>) {
        *self
            .shared
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = e;
    }

    fn apply(&self, d: Directive) {
        if d.drain && !self.shared.drain_requested.swap(true, Relaxed) {
            info!(service = %self.registration.instance.service, instance = %self.registration.instance.instance_id, "daemon asked this backend to drain");
        }
    }
}

/// Sends `Drain`, half-closes, and waits for the daemon to close its side.
/// Bounded by the caller ([`Reporter::shutdown`]'s timeout).
async fn drain(
    tx: mpsc::Sender<Outgoing>,
    mut stream: impl tokio_stream::Stream<Item = Result<Directive, Status>> + Unpin,
) -> End {
    if tx.send(Outgoing::Drain).await.is_ok() {
        drop(tx);
        while let Some(Ok(_)) = stream.next().await {}
        info!("drained from lb daemon");
    }
    End::Stopped
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interval_is_clamped() {
        let cur = Duration::from_secs(1);
        assert_eq!(report_interval(0, cur), cur);
        assert_eq!(report_interval(1, cur), Duration::from_millis(10));
        assert_eq!(report_interval(250, cur), Duration::from_millis(250));
        assert_eq!(report_interval(u32::MAX, cur), Duration::from_secs(60));
    }

    #[test]
    fn permanent_refusals_back_off_at_max() {
        assert_eq!(classify(&Status::invalid_argument("bad")), End::Refused);
        assert_eq!(classify(&Status::failed_precondition("no")), End::Refused);
        assert_eq!(classify(&Status::unavailable("later")), End::Failed);
    }

    #[tokio::test]
    async fn start_does_not_wait_for_the_daemon() {
        let mut o = ReporterOptions::new("127.0.0.1:1");
        o.sampler = Some(Arc::new(LoadSample::default));
        let r = Reporter::start(Registration::new("svc", "i1", "127.0.0.1:2"), o);
        assert!(!r.registered());
        let g = r.in_flight().guard();
        assert_eq!(r.in_flight().get(), 1);
        drop(g);
        assert!(matches!(
            r.wait_registered(Duration::from_millis(20)).await,
            Err(Error::Timeout { .. })
        ));
        r.shutdown(Duration::from_secs(1)).await;
    }
}
