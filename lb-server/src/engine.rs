//! The engine: the one task that owns the registry and the store, and the hub
//! through which it publishes plans to subscribers.
//!
//! Writer/reader split (as kube-runtime's reflector): the gRPC edges send
//! [`Command`]s over a channel; the engine task applies them in batches, writes
//! the store, re-plans every service the batch touched and publishes each
//! changed plan on that service's `watch` channel in the [`Hub`], where
//! subscriber streams pick it up. Nothing here holds a lock across `.await`.
//!
//! Durability: a batch's store writes are flushed once (group commit) before
//! any caller in the batch hears "ok". Plans are published before that flush,
//! since a list that runs ahead of the disk by a few milliseconds costs nothing
//! (a restart restores whatever is durable and grants it a grace period).
//!
//! Re-planning: membership and operator changes are planned and pushed at once.
//! Load reports (for policies that use them), client stats (for policies that
//! use them) and slow-start ramps mark a service for a damped re-plan: at most
//! once per `min_plan_interval`, and pushed only if some weight moved by more
//! than the policy's `hysteresis` (so clients are not herded by noise).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::cluster::ClusterConfig;
use crate::config::Config;
use crate::health::HostStatus;
use crate::model::{ClientStats, FieldError, GrpclbStats, InstanceKey, InstanceSpec, Load};
use crate::policy::{PolicyKind, ServicePlan, ServicePolicy};
use crate::registry::{Attachment, GrpclbTotals, OutcomeTotals, Override, Registry, RegistryError};
use crate::routing::{self, Rule};
use crate::store::{Store, StoreError};

/// How often the engine looks for expired instances.
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);
/// How often outlier detection evaluates the outcomes of the last interval
/// (Envoy's `interval`; ours is shorter because stats arrive every second).
const HEALTH_INTERVAL: Duration = Duration::from_secs(2);
/// Most commands applied in one batch (one flush).
const MAX_BATCH: usize = 1024;

/// A plan as subscribers see it.
#[derive(Debug)]
pub struct Published {
    /// Strictly increasing over the daemon's life and across restarts.
    pub version: u64,
    /// The plan.
    pub plan: ServicePlan,
}

/// Where plans are published: one `watch` channel per service.
#[derive(Debug)]
pub struct Hub {
    plans: Mutex<HashMap<String, watch::Sender<Arc<Published>>>>,
    next_version: AtomicU64,
    next_client: AtomicU64,
    /// Open grpc.lb.v1 streams per service (for `ctl get`).
    grpclb: Mutex<HashMap<String, u32>>,
    /// Load reports received and validated, all streams.
    pub reports_received: AtomicU64,
    /// Of those, reports handed to the engine (the rest were superseded by
    /// a newer report of the same stream that had already arrived).
    pub reports_applied: AtomicU64,
}

/// Counts one open grpc.lb.v1 stream of a service while it lives.
#[derive(Debug)]
pub struct GrpclbStream {
    hub: Arc<Hub>,
    service: String,
}

impl Drop for GrpclbStream {
    fn drop(&mut self) {
        let mut open = self.hub.grpclb.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.service) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                open.remove(&self.service);
            }
        }
    }
}

impl Hub {
    /// A hub whose versions start above every version of earlier generations.
    pub fn new(generation: u64) -> Self {
        Hub {
            plans: Mutex::new(HashMap::new()),
            next_version: AtomicU64::new(generation << 32),
            next_client: AtomicU64::new(0),
            grpclb: Mutex::new(HashMap::new()),
            reports_received: AtomicU64::new(0),
            reports_applied: AtomicU64::new(0),
        }
    }

    /// Counts a grpc.lb.v1 stream on `service` until the guard is dropped.
    pub fn grpclb_stream(self: &Arc<Self>, service: &str) -> GrpclbStream {
        let mut open = self.grpclb.lock().unwrap_or_else(|e| e.into_inner());
        *open.entry(service.to_string()).or_default() += 1;
        GrpclbStream {
            hub: self.clone(),
            service: service.to_string(),
        }
    }

    /// grpc.lb.v1 streams open on `service` now.
    pub fn grpclb_streams(&self, service: &str) -> u32 {
        let open = self.grpclb.lock().unwrap_or_else(|e| e.into_inner());
        open.get(service).copied().unwrap_or(0)
    }

    fn plans(&self) -> std::sync::MutexGuard<'_, HashMap<String, watch::Sender<Arc<Published>>>> {
        // A panic elsewhere while holding this lock leaves the map consistent
        // (every operation is a single insert/replace), so poisoning is ignored.
        self.plans.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn next_version(&self) -> u64 {
        self.next_version.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// A sequence number for a new subscriber (its rotation of the list).
    pub fn next_client_seq(&self) -> u64 {
        self.next_client.fetch_add(1, Ordering::Relaxed)
    }

    /// Follows a service's plan; an unknown service starts with an empty plan.
    pub fn subscribe(&self, service: &str) -> watch::Receiver<Arc<Published>> {
        let mut plans = self.plans();
        if let Some(tx) = plans.get(service) {
            return tx.subscribe();
        }
        let (tx, rx) = watch::channel(Arc::new(Published {
            version: self.next_version(),
            plan: ServicePlan::default(),
        }));
        plans.insert(service.to_string(), tx);
        rx
    }

    /// The current plan of a service, if anyone published or subscribed to it.
    pub fn current(&self, service: &str) -> Option<Arc<Published>> {
        self.plans().get(service).map(|tx| tx.borrow().clone())
    }

    /// Publishes `plan` if it differs from the current one (by more than
    /// `hysteresis`, when given); returns whether it did.
    fn publish(&self, service: &str, plan: ServicePlan, hysteresis: Option<f64>) -> bool {
        let mut plans = self.plans();
        match plans.get(service) {
            Some(tx) if tx.borrow().plan.same_list(&plan) => false,
            Some(tx) if hysteresis.is_some_and(|h| plan.close_to(&tx.borrow().plan, h)) => false,
            Some(tx) => {
                let version = self.next_version();
                tx.send_replace(Arc::new(Published { version, plan }));
                true
            }
            None if plan.servers.is_empty()
                && plan.rules.is_empty()
                && *plan.cluster == ClusterConfig::default() =>
            {
                false
            }
            None => {
                let version = self.next_version();
                let (tx, _) = watch::channel(Arc::new(Published { version, plan }));
                plans.insert(service.to_string(), tx);
                true
            }
        }
    }

    /// Forgets services nobody follows and nobody serves.
    fn collect_garbage(&self) {
        self.plans()
            .retain(|_, tx| tx.receiver_count() > 0 || !tx.borrow().plan.servers.is_empty());
    }
}

/// Why the engine refused or could not complete a command.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The registry refused the change (see the variant for what to do).
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The change could not be made durable; retry later and check the disk.
    #[error("{0}")]
    Store(String),
    /// The daemon is shutting down; retry against it once it is back.
    #[error("lb-server is shutting down")]
    ShuttingDown,
    /// No such instance: check the service and instance id (`ctl get SERVICE`).
    #[error("{0}")]
    NotFound(String),
    /// The change is invalid in the context of the service's other settings
    /// (e.g. a duplicate rule name, a multicast mode naming a missing rule).
    #[error(transparent)]
    Invalid(#[from] FieldError),
}

/// A change to a service's routing settings.
#[derive(Debug, Clone)]
pub enum RoutingChange {
    /// Add a rule, or replace the rule of the same name; `position` moves it.
    PutRule {
        /// The rule (checked on its own by the edge).
        rule: Rule,
        /// Where to put it (0 = first); `None`: last, or its current place.
        position: Option<usize>,
    },
    /// Remove a rule by name.
    DeleteRule(String),
    /// Replace the cluster modes (checked on their own by the edge).
    Cluster(ClusterConfig),
}

/// What the engine tells a backend's stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Directive {
    /// The registration ended without the stream asking (expired, replaced,
    /// deregistered): close the stream with this reason.
    End(String),
    /// An operator drained (true) or undrained (false) the instance.
    Drain(bool),
}

/// A service as `ctl get` shows it.
#[derive(Debug, Clone)]
pub struct ServiceView {
    /// Service name.
    pub name: String,
    /// Policy in force.
    pub policy: ServicePolicy,
    /// Version of the published list (0 if none).
    pub version: u64,
    /// Entries in one period.
    pub list_len: usize,
    /// Largest share error of the published list.
    pub max_share_error: f64,
    /// Client-reported drops.
    pub dropped: u64,
    /// Client-reported calls with an empty list.
    pub no_backend: u64,
    /// Every registered instance, drained ones included.
    pub instances: Vec<InstanceView>,
    /// Routing rules, with how many instances each selects now.
    pub rules: Vec<(Rule, usize)>,
    /// Cluster modes.
    pub cluster: ClusterConfig,
    /// Load shedding: the fraction dropped now.
    pub drop_fraction: f64,
    /// Mean fresh reported utilization.
    pub utilization: f64,
    /// Seconds the reported backlog takes to drain (0 if unknown).
    pub backlog_seconds: f64,
    /// What stock gRPC clients reported.
    pub grpclb: GrpclbTotals,
    /// grpc.lb.v1 streams open on the service now.
    pub grpclb_streams: u32,
}

/// An instance as `ctl get` shows it.
#[derive(Debug, Clone)]
pub struct InstanceView {
    /// What it registered.
    pub spec: InstanceSpec,
    /// What keeps it alive.
    pub attachment: Attachment,
    /// Operator settings.
    pub over: Override,
    /// Its effective weight in the published plan (0 if not listed).
    pub effective_weight: f64,
    /// Its share of the published list.
    pub share: f64,
    /// Latest load report and its age.
    pub load: Option<(Load, Duration)>,
    /// Client-reported outcomes.
    pub outcomes: OutcomeTotals,
    /// Latency estimate now, µs.
    pub latency_us: Option<f64>,
    /// Outlier detection and circuit state.
    pub health: HostStatus,
    /// While ejected: how long until re-admission.
    pub ejected_for: Option<Duration>,
    /// Cumulative client-reported failures by status code.
    pub failed_by_code: BTreeMap<u32, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(id: &str) -> InstanceSpec {
        InstanceSpec {
            service: "svc".into(),
            instance_id: id.into(),
            address: "127.0.0.1:9".into(),
            zone: String::new(),
            weight: 1,
            labels: BTreeMap::new(),
            version: String::new(),
            token: String::new(),
        }
    }

    fn busy(active: u64) -> Load {
        Load {
            cpu_utilization: 0.5,
            active_requests: active,
            qps: Some(100.0),
            ..Load::default()
        }
    }

    /// Versions published for `svc` while `reports` reports (one every 10 ms,
    /// b's queue given by `active(i)`) arrive under `policy`.
    async fn publishes(policy: ServicePolicy, reports: u64, active: fn(u64) -> u64) -> u64 {
        let dir = tempfile::tempdir().unwrap();
        let config = Config::new(dir.path());
        let store = Store::open(dir.path()).unwrap();
        let (engine, _task) = start(store, config).await.unwrap();
        engine.set_policy("svc".into(), policy).await.unwrap();
        let mut sessions = Vec::new();
        for id in ["a", "b"] {
            let (tx, rx) = mpsc::channel(8);
            let a = engine.attach(spec(id), None, tx).await.unwrap();
            sessions.push((spec(id).key(), a.session, rx));
        }
        engine
            .report(sessions[0].0.clone(), sessions[0].1, busy(4))
            .await;
        engine
            .report(sessions[1].0.clone(), sessions[1].1, busy(4))
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let first = engine.hub().current("svc").unwrap().version;
        for i in 0..reports {
            engine
                .report(sessions[1].0.clone(), sessions[1].1, busy(active(i)))
                .await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        engine.hub().current("svc").unwrap().version - first
    }

    fn load_aware(min_interval_ms: u64, hysteresis: f64) -> ServicePolicy {
        let mut p = ServicePolicy::with_kind(PolicyKind::LoadAware);
        p.load_aware.blackout = Duration::ZERO;
        p.min_plan_interval = Duration::from_millis(min_interval_ms);
        p.hysteresis = hysteresis;
        p
    }

    #[tokio::test(start_paused = true)]
    async fn load_replans_are_damped_by_the_minimum_interval() {
        // b's backlog grows with every report (100 reports over 1 s), so every
        // plan differs from the last one.
        let growing = |i: u64| i;
        let n = publishes(load_aware(100, 0.0), 100, growing).await;
        // At most one push per 100 ms over ~1.2 s, and it does re-plan.
        assert!((5..=13).contains(&n), "{n} publishes");
        let undamped = publishes(load_aware(0, 0.0), 100, growing).await;
        assert!(undamped > 3 * n, "{undamped} vs {n}");
    }

    #[tokio::test(start_paused = true)]
    async fn small_weight_moves_are_not_pushed() {
        // b's queue wobbles between 4 and 5 (weights move ~10%).
        let wobble = |i: u64| 4 + i % 2;
        assert_eq!(publishes(load_aware(0, 0.5), 50, wobble).await, 0);
        assert!(publishes(load_aware(0, 0.0), 50, wobble).await > 10);
    }

    #[test]
    fn report_interval_leaves_room_in_the_ttl() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(report_interval(s(1), s(5)), s(1));
        assert_eq!(report_interval(s(1), ms(300)), ms(100));
        assert_eq!(report_interval(s(1), ms(1)), ms(10));
    }
}

impl From<StoreError> for EngineError {
    fn from(e: StoreError) -> Self {
        EngineError::Store(e.to_string())
    }
}

/// A stream registration that succeeded.
#[derive(Debug, Clone, Copy)]
pub struct Attached {
    /// The stream's session id (to quote in reports and on detach).
    pub session: u64,
    /// How often the backend should report.
    pub report_interval: Duration,
    /// An operator has drained this instance: tell the backend at once.
    pub drained: bool,
}

type Reply<T> = oneshot::Sender<Result<T, EngineError>>;

/// What the edges ask the engine to do.
#[derive(Debug)]
pub enum Command {
    /// A `ReportLoad` stream registered; `directives` reaches its stream.
    Attach {
        /// What registered.
        spec: InstanceSpec,
        /// Silence allowed before expiry (`None`: the default).
        ttl: Option<Duration>,
        /// Where the engine sends [`Directive`]s for this stream.
        directives: mpsc::Sender<Directive>,
        /// The answer.
        reply: Reply<Attached>,
    },
    /// A load report on an attached stream.
    Report {
        /// The instance.
        key: InstanceKey,
        /// The stream's session.
        session: u64,
        /// The report.
        load: Load,
    },
    /// A stream broke (or ended without `drain`).
    Detach {
        /// The instance.
        key: InstanceKey,
        /// The stream's session.
        session: u64,
    },
    /// A unary registration or renewal with a lease.
    Lease {
        /// What registered.
        spec: InstanceSpec,
        /// Lease length (`None`: the default).
        ttl: Option<Duration>,
        /// The lease granted.
        reply: Reply<Duration>,
    },
    /// A stream asked to leave (`drain`): remove its instance now, if this
    /// stream still owns it (a replaced stream's drain must not remove the
    /// instance its successor registered).
    Drain {
        /// The instance.
        key: InstanceKey,
        /// The stream's session.
        session: u64,
        /// Whether the instance was removed.
        reply: Reply<bool>,
    },
    /// Remove an instance now.
    Deregister {
        /// The instance.
        key: InstanceKey,
        /// Whether it existed.
        reply: Reply<bool>,
    },
    /// An operator adds or updates a static instance.
    PutStatic {
        /// The instance.
        spec: InstanceSpec,
        /// Done once durable.
        reply: Reply<()>,
    },
    /// An operator removes a static instance.
    RemoveStatic {
        /// The instance.
        key: InstanceKey,
        /// Whether it existed.
        reply: Reply<bool>,
    },
    /// A stock client's grpclb stats (`grpc.lb.v1.ClientStats`).
    GrpclbStats {
        /// The service the client follows.
        service: String,
        /// What it reported.
        stats: GrpclbStats,
    },
    /// A client's call statistics.
    Stats {
        /// The service the client follows.
        service: String,
        /// What it saw.
        stats: ClientStats,
    },
    /// Sets a service's policy (validated by the caller).
    SetPolicy {
        /// The service.
        service: String,
        /// The policy (boxed: it is by far the largest command).
        policy: Box<ServicePolicy>,
        /// Done once durable.
        reply: Reply<()>,
    },
    /// Changes an instance's override: `weight` (Some(None) clears it) and/or
    /// `drained`. The instance must be registered.
    SetOverride {
        /// The instance.
        key: InstanceKey,
        /// New weight override, if changing it.
        weight: Option<Option<u32>>,
        /// New drain state, if changing it.
        drained: Option<bool>,
        /// The override now in force.
        reply: Reply<Override>,
    },
    /// A snapshot of one service (or all) for the admin API.
    Inspect {
        /// One service, or every one.
        service: Option<String>,
        /// The views.
        reply: oneshot::Sender<Vec<ServiceView>>,
    },
    /// Changes a service's rules or cluster modes.
    SetRouting {
        /// The service.
        service: String,
        /// The change.
        change: RoutingChange,
        /// Done once durable.
        reply: Reply<()>,
    },
    /// Stop changing state: the daemon is shutting down, and streams closing
    /// because of that must not deregister their instances.
    Freeze {
        /// Acknowledged once frozen.
        reply: oneshot::Sender<()>,
    },
}

/// The edges' handle on the engine.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    tx: mpsc::Sender<Command>,
    hub: Arc<Hub>,
    default_policy: Arc<ServicePolicy>,
}

impl EngineHandle {
    /// The hub subscribers follow.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    async fn ask<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)?
    }

    /// Registers a stream; see [`Command::Attach`].
    pub async fn attach(
        &self,
        spec: InstanceSpec,
        ttl: Option<Duration>,
        directives: mpsc::Sender<Directive>,
    ) -> Result<Attached, EngineError> {
        self.ask(|reply| Command::Attach {
            spec,
            ttl,
            directives,
            reply,
        })
        .await
    }

    /// Sets a service's policy; see [`Command::SetPolicy`].
    pub async fn set_policy(
        &self,
        service: String,
        policy: ServicePolicy,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Command::SetPolicy {
            service,
            policy: Box::new(policy),
            reply,
        })
        .await
    }

    /// Changes an override; see [`Command::SetOverride`].
    pub async fn set_override(
        &self,
        key: InstanceKey,
        weight: Option<Option<u32>>,
        drained: Option<bool>,
    ) -> Result<Override, EngineError> {
        self.ask(|reply| Command::SetOverride {
            key,
            weight,
            drained,
            reply,
        })
        .await
    }

    /// Changes a service's routing settings; see [`Command::SetRouting`].
    pub async fn set_routing(
        &self,
        service: String,
        change: RoutingChange,
    ) -> Result<(), EngineError> {
        self.ask(|reply| Command::SetRouting {
            service,
            change,
            reply,
        })
        .await
    }

    /// Snapshots one service or all of them.
    pub async fn inspect(&self, service: Option<String>) -> Result<Vec<ServiceView>, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Inspect { service, reply })
            .await
            .map_err(|_| EngineError::ShuttingDown)?;
        rx.await.map_err(|_| EngineError::ShuttingDown)
    }

    /// The default policy of new services (the daemon's flags applied).
    pub fn default_policy(&self) -> &ServicePolicy {
        &self.default_policy
    }

    /// Passes a load report on (no answer: a report for a stale session is dropped).
    pub async fn report(&self, key: InstanceKey, session: u64, load: Load) {
        let _ = self.tx.send(Command::Report { key, session, load }).await;
    }

    /// Tells the engine a stream is gone.
    pub async fn detach(&self, key: InstanceKey, session: u64) {
        let _ = self.tx.send(Command::Detach { key, session }).await;
    }

    /// Registers or renews a lease.
    pub async fn lease(
        &self,
        spec: InstanceSpec,
        ttl: Option<Duration>,
    ) -> Result<Duration, EngineError> {
        self.ask(|reply| Command::Lease { spec, ttl, reply }).await
    }

    /// Removes a stream's instance if the stream still owns it.
    pub async fn drain(&self, key: InstanceKey, session: u64) -> Result<bool, EngineError> {
        self.ask(|reply| Command::Drain {
            key,
            session,
            reply,
        })
        .await
    }

    /// Removes an instance.
    pub async fn deregister(&self, key: InstanceKey) -> Result<bool, EngineError> {
        self.ask(|reply| Command::Deregister { key, reply }).await
    }

    /// Adds or updates a static instance; see [`Command::PutStatic`].
    pub async fn put_static(&self, spec: InstanceSpec) -> Result<(), EngineError> {
        self.ask(|reply| Command::PutStatic { spec, reply }).await
    }

    /// Removes a static instance; see [`Command::RemoveStatic`].
    pub async fn remove_static(&self, key: InstanceKey) -> Result<bool, EngineError> {
        self.ask(|reply| Command::RemoveStatic { key, reply }).await
    }

    /// Passes a stock client's grpclb stats on.
    pub async fn grpclb_stats(&self, service: String, stats: GrpclbStats) {
        let _ = self.tx.send(Command::GrpclbStats { service, stats }).await;
    }

    /// Passes a client's stats on.
    pub async fn stats(&self, service: String, stats: ClientStats) {
        let _ = self.tx.send(Command::Stats { service, stats }).await;
    }

    /// Freezes the engine (see [`Command::Freeze`]).
    pub async fn freeze(&self) {
        let (reply, rx) = oneshot::channel();
        if self.tx.send(Command::Freeze { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// The interval a backend with `ttl` is asked to report at: the configured
/// one, but at least three reports per TTL so one late report is not fatal.
fn report_interval(configured: Duration, ttl: Duration) -> Duration {
    configured.min(ttl / 3).max(Duration::from_millis(10))
}

/// How a registration keeps its instance alive.
enum Via {
    /// A `ReportLoad` stream, reached through its directive channel.
    Stream(mpsc::Sender<Directive>),
    /// A `Register` lease.
    Lease,
    /// An operator's static instance: no TTL.
    Static,
}

enum Pending {
    Attach(Reply<Attached>, Result<Attached, EngineError>),
    Lease(Reply<Duration>, Result<Duration, EngineError>),
    Deregister(Reply<bool>, Result<bool, EngineError>),
    Done(Reply<()>, Result<(), EngineError>),
    Override(Reply<Override>, Result<Override, EngineError>),
    Freeze(oneshot::Sender<()>),
}

struct Actor {
    registry: Registry,
    store: Store,
    hub: Arc<Hub>,
    config: Config,
    /// The directive channel of every stream-attached instance.
    sessions: HashMap<InstanceKey, (u64, mpsc::Sender<Directive>)>,
    next_session: u64,
    frozen: bool,
    /// Services to re-plan and push now (membership, operator changes).
    urgent: BTreeSet<String>,
    /// Services to re-plan when their damping interval allows.
    dirty: BTreeSet<String>,
    /// When each service was last planned.
    last_plan: HashMap<String, Instant>,
    wrote: bool,
    sweeps: u64,
    /// When outlier detection next runs over the interval's outcomes.
    next_health: Instant,
}

/// Loads the store, publishes the restored plans and starts the engine task.
/// Returns once subscribers can be served.
pub async fn start(
    store: Store,
    config: Config,
) -> Result<(EngineHandle, tokio::task::JoinHandle<()>), StoreError> {
    let generation = store.next_generation()?;
    let hub = Arc::new(Hub::new(generation));
    let default_policy = ServicePolicy {
        max_list_len: config.max_list_len,
        ..ServicePolicy::with_kind(config.default_policy)
    };
    let mut registry = Registry::with_default_policy(default_policy.clone());
    for (service, policy) in store.policies(&default_policy)? {
        registry.set_policy(&service, policy);
    }
    let mut routed = Vec::new();
    for (service, (rules, cluster)) in store.routing()? {
        registry.set_rules(&service, rules);
        registry.set_cluster(&service, cluster);
        routed.push(service);
    }
    let now = Instant::now();
    for (key, o) in store.overrides()? {
        registry.set_override(&key, o, now);
    }
    let deadline = now + config.restore_grace;
    let restored = store.instances()?;
    let count = restored.len();
    let mut dirty: BTreeSet<String> = routed.into_iter().collect();
    for (spec, ttl) in restored {
        dirty.insert(spec.service.clone());
        registry.restore(spec, ttl, deadline);
    }
    let (tx, rx) = mpsc::channel(4096);
    let mut actor = Actor {
        registry,
        store,
        hub: hub.clone(),
        config,
        sessions: HashMap::new(),
        next_session: 1,
        frozen: false,
        urgent: dirty,
        dirty: BTreeSet::new(),
        last_plan: HashMap::new(),
        wrote: false,
        sweeps: 0,
        next_health: now + HEALTH_INTERVAL,
    };
    actor.publish(now);
    tracing::info!(
        generation,
        restored = count,
        grace = ?actor.config.restore_grace,
        "registry loaded"
    );
    let task = tokio::spawn(actor.run(rx));
    Ok((
        EngineHandle {
            tx,
            hub,
            default_policy: Arc::new(default_policy),
        },
        task,
    ))
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Command>) {
        let mut buf = Vec::with_capacity(MAX_BATCH);
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut pending = Vec::new();
            tokio::select! {
                n = rx.recv_many(&mut buf, MAX_BATCH) => {
                    if n == 0 {
                        break;
                    }
                    let now = Instant::now();
                    for cmd in buf.drain(..) {
                        self.apply(cmd, now, &mut pending);
                    }
                }
                _ = sweep.tick() => self.sweep(Instant::now()),
            }
            self.finish(pending, Instant::now()).await;
        }
        if let Err(e) = self.store.flush().await {
            tracing::error!(error = %e, "final flush failed");
        }
    }

    fn apply(&mut self, cmd: Command, now: Instant, pending: &mut Vec<Pending>) {
        match cmd {
            Command::Attach {
                spec,
                ttl,
                directives,
                reply,
            } => {
                let ttl = ttl.unwrap_or(self.config.default_ttl);
                let key = spec.key();
                let r = self
                    .register(spec, Some(ttl), Via::Stream(directives), now)
                    .map(|session| Attached {
                        session,
                        report_interval: report_interval(self.config.report_interval, ttl),
                        drained: self.registry.override_of(&key).drained,
                    });
                pending.push(Pending::Attach(reply, r));
            }
            Command::Lease { spec, ttl, reply } => {
                let ttl = ttl.unwrap_or(self.config.default_ttl);
                let r = self.register(spec, Some(ttl), Via::Lease, now).map(|_| ttl);
                pending.push(Pending::Lease(reply, r));
            }
            Command::PutStatic { spec, reply } => {
                let r = self.register(spec, None, Via::Static, now).map(|_| ());
                pending.push(Pending::Done(reply, r));
            }
            Command::RemoveStatic { key, reply } => {
                let r = match self.registry.instance(&key).map(|i| i.attachment) {
                    _ if self.frozen => Err(EngineError::ShuttingDown),
                    None => Ok(false),
                    Some(Attachment::Static) => {
                        self.registry.remove(&key);
                        tracing::info!(service = %key.service, instance = %key.instance_id, "static instance removed");
                        self.forget(&key);
                        Ok(true)
                    }
                    Some(_) => Err(RegistryError::NotStatic(key.instance_id.clone()).into()),
                };
                pending.push(Pending::Deregister(reply, r));
            }
            Command::GrpclbStats { service, stats } => {
                self.registry.record_grpclb(&service, &stats);
            }
            Command::Report { key, session, load } => {
                // A stale session's report is a race with its removal; the
                // stream has been (or is being) told via its directives.
                if let Ok(circuit) = self.registry.report(&key, session, load, now) {
                    if circuit {
                        self.urgent.insert(key.service);
                    } else {
                        let p = self.registry.policy(&key.service);
                        if p.kind.uses_load() || crate::policy::shed::adaptive(&p.shed) {
                            self.dirty.insert(key.service);
                        }
                    }
                }
            }
            Command::Detach { key, session } => {
                if !self.frozen && self.registry.detach(&key, session) {
                    tracing::info!(service = %key.service, instance = %key.instance_id, "stream ended; instance removed");
                    self.forget(&key);
                    self.sessions.remove(&key);
                }
            }
            Command::SetPolicy {
                service,
                policy,
                reply,
            } => {
                let r = if self.frozen {
                    Err(EngineError::ShuttingDown)
                } else {
                    self.store
                        .put_policy(&service, &policy)
                        .map_err(EngineError::from)
                        .map(|()| {
                            tracing::info!(%service, policy = policy.kind.name(), "policy set");
                            self.wrote = true;
                            self.registry.set_policy(&service, *policy);
                            self.urgent.insert(service);
                        })
                };
                pending.push(Pending::Done(reply, r));
            }
            Command::SetOverride {
                key,
                weight,
                drained,
                reply,
            } => {
                let r = self.set_override(key, weight, drained, now);
                pending.push(Pending::Override(reply, r));
            }
            Command::Inspect { service, reply } => {
                let _ = reply.send(self.inspect(service.as_deref(), now));
            }
            Command::Drain {
                key,
                session,
                reply,
            } => {
                let r = if self.frozen {
                    Err(EngineError::ShuttingDown)
                } else if self.registry.detach(&key, session) {
                    tracing::info!(service = %key.service, instance = %key.instance_id, "backend drained");
                    self.forget(&key);
                    self.sessions.remove(&key);
                    Ok(true)
                } else {
                    Ok(false)
                };
                pending.push(Pending::Deregister(reply, r));
            }
            Command::Deregister { key, reply } => {
                let r = if self.frozen {
                    Err(EngineError::ShuttingDown)
                } else {
                    Ok(match self.registry.remove(&key) {
                        Some(_) => {
                            tracing::info!(service = %key.service, instance = %key.instance_id, "deregistered");
                            self.forget(&key);
                            self.end_session(&key, "deregistered");
                            true
                        }
                        None => false,
                    })
                };
                pending.push(Pending::Deregister(reply, r));
            }
            Command::Stats { service, stats } => {
                if self.registry.record_stats(&service, &stats, now) {
                    self.urgent.insert(service);
                } else {
                    let p = self.registry.policy(&service);
                    if p.kind == PolicyKind::FastestResponse || p.outcome.enabled {
                        self.dirty.insert(service);
                    }
                }
            }
            Command::SetRouting {
                service,
                change,
                reply,
            } => {
                let r = if self.frozen {
                    Err(EngineError::ShuttingDown)
                } else {
                    self.set_routing(service, change)
                };
                pending.push(Pending::Done(reply, r));
            }
            Command::Freeze { reply } => {
                self.frozen = true;
                pending.push(Pending::Freeze(reply));
            }
        }
    }

    /// Registers a stream, a lease or a static instance; returns the stream
    /// session (0 for the others).
    fn register(
        &mut self,
        spec: InstanceSpec,
        ttl: Option<Duration>,
        via: Via,
        now: Instant,
    ) -> Result<u64, EngineError> {
        if self.frozen {
            return Err(EngineError::ShuttingDown);
        }
        let (ttl, kind) = match via {
            Via::Static => (Duration::ZERO, Attachment::Static),
            Via::Lease => (ttl.unwrap_or(self.config.default_ttl), Attachment::Lease),
            Via::Stream(_) => (
                ttl.unwrap_or(self.config.default_ttl),
                Attachment::Stream { session: 0 },
            ),
        };
        let persist = self.registry.check_register(&spec, ttl, kind, now)?;
        if persist {
            // Written before applying: a store error leaves memory untouched.
            let stored_ttl = (kind != Attachment::Static).then_some(ttl);
            self.store.put_instance(&spec, stored_ttl)?;
            self.wrote = true;
        }
        let key = spec.key();
        self.urgent.insert(spec.service.clone());
        let (attachment, session) = match via {
            Via::Static => {
                tracing::info!(service = %key.service, instance = %key.instance_id, address = %spec.address, "static instance set");
                (Attachment::Static, 0)
            }
            Via::Stream(directives) => {
                let session = self.next_session;
                self.next_session += 1;
                self.end_session(
                    &key,
                    "replaced by a newer ReportLoad stream for this instance",
                );
                self.sessions.insert(key.clone(), (session, directives));
                (Attachment::Stream { session }, session)
            }
            Via::Lease => {
                self.end_session(&key, "replaced by a Register lease for this instance");
                (Attachment::Lease, 0)
            }
        };
        self.registry.apply_register(spec, ttl, attachment, now);
        Ok(session)
    }

    /// Tells a stream its registration is over (if it has one) and forgets it.
    fn end_session(&mut self, key: &InstanceKey, why: &str) {
        if let Some((_, tx)) = self.sessions.remove(key) {
            let _ = tx.try_send(Directive::End(why.to_string()));
        }
    }

    fn set_override(
        &mut self,
        key: InstanceKey,
        weight: Option<Option<u32>>,
        drained: Option<bool>,
        now: Instant,
    ) -> Result<Override, EngineError> {
        if self.frozen {
            return Err(EngineError::ShuttingDown);
        }
        if self.registry.instance(&key).is_none() {
            return Err(EngineError::NotFound(format!(
                "no instance {:?} in service {:?}",
                key.instance_id, key.service
            )));
        }
        let mut o = self.registry.override_of(&key);
        if let Some(w) = weight {
            o.weight = w;
        }
        let drain_changed = drained.is_some_and(|d| d != o.drained);
        if let Some(d) = drained {
            o.drained = d;
        }
        self.store.put_override(&key, &o)?;
        self.wrote = true;
        self.registry.set_override(&key, o, now);
        if drain_changed {
            if let Some((_, tx)) = self.sessions.get(&key) {
                let _ = tx.try_send(Directive::Drain(o.drained));
            }
        }
        tracing::info!(service = %key.service, instance = %key.instance_id, weight = ?o.weight, drained = o.drained, "override set");
        self.urgent.insert(key.service);
        Ok(o)
    }

    /// Applies a routing change after checking it against the service's
    /// other settings; persisted before it is applied.
    fn set_routing(&mut self, service: String, change: RoutingChange) -> Result<(), EngineError> {
        let (mut rules, mut cluster) = match self.registry.service(&service) {
            Some(s) => (s.rules.clone(), s.cluster.clone()),
            None => (Vec::new(), ClusterConfig::default()),
        };
        match change {
            RoutingChange::PutRule { rule, position } => {
                let at = rules.iter().position(|r| r.name == rule.name);
                if let Some(i) = at {
                    rules.remove(i);
                }
                let i = position.or(at).unwrap_or(rules.len()).min(rules.len());
                rules.insert(i, rule);
            }
            RoutingChange::DeleteRule(name) => {
                let Some(i) = rules.iter().position(|r| r.name == name) else {
                    return Err(EngineError::NotFound(format!(
                        "no rule {name:?} in service {service:?}"
                    )));
                };
                if cluster.routes().any(|r| r == name) {
                    return Err(FieldError::new(
                        "name",
                        format!("rule {name:?} is the route of a multicast mode; change the cluster modes first"),
                    )
                    .into());
                }
                rules.remove(i);
            }
            RoutingChange::Cluster(c) => cluster = c,
        }
        routing::check(&rules)?;
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        cluster.check(&names).map_err(|e| e.within("cluster"))?;
        self.store.put_routing(&service, &rules, &cluster)?;
        self.wrote = true;
        tracing::info!(%service, rules = rules.len(), "routing set");
        self.registry.set_rules(&service, rules);
        self.registry.set_cluster(&service, cluster);
        self.urgent.insert(service);
        Ok(())
    }

    fn inspect(&self, only: Option<&str>, now: Instant) -> Vec<ServiceView> {
        let mut names: BTreeSet<String> =
            self.registry.services().map(|(n, _)| n.clone()).collect();
        if let Some(o) = only {
            names.retain(|n| n == o);
        }
        names
            .into_iter()
            .filter_map(|name| {
                let svc = self.registry.service(&name)?;
                let published = self.hub.current(&name);
                let plan = published.as_ref().map(|p| &p.plan);
                let shares = plan.map(|p| p.shares()).unwrap_or_default();
                let latency: BTreeMap<&str, f64> = self
                    .registry
                    .candidates(&name, now)
                    .into_iter()
                    .filter_map(|c| Some((c.spec.instance_id.as_str(), c.latency_us?)))
                    .collect();
                let instances = svc
                    .instances
                    .values()
                    .map(|i| {
                        let health = svc.health.status(&i.spec.instance_id, now);
                        let at = plan.and_then(|p| {
                            p.servers
                                .iter()
                                .position(|s| s.instance_id == i.spec.instance_id)
                        });
                        InstanceView {
                            spec: i.spec.clone(),
                            attachment: i.attachment,
                            over: self.registry.override_of(&i.spec.key()),
                            effective_weight: at
                                .and_then(|k| plan.and_then(|p| p.weights.get(k).copied()))
                                .unwrap_or(0.0),
                            share: at.and_then(|k| shares.get(k).copied()).unwrap_or(0.0),
                            load: i
                                .load
                                .as_ref()
                                .map(|l| (l.load.clone(), now.saturating_duration_since(l.at))),
                            outcomes: i.outcomes,
                            latency_us: latency.get(i.spec.instance_id.as_str()).copied(),
                            ejected_for: health.ejected_until.filter(|t| *t > now).map(|t| t - now),
                            health,
                            failed_by_code: svc
                                .failed_by_code
                                .get(&i.spec.instance_id)
                                .cloned()
                                .unwrap_or_default(),
                        }
                    })
                    .collect();
                let route_servers: Vec<routing::RouteServer<'_>> = svc
                    .instances
                    .values()
                    .map(|i| routing::RouteServer {
                        instance_id: &i.spec.instance_id,
                        zone: &i.spec.zone,
                        labels: &i.spec.labels,
                    })
                    .collect();
                let rules = svc
                    .rules
                    .iter()
                    .map(|r| {
                        let n = routing::selected(r, &route_servers);
                        (r.clone(), n)
                    })
                    .collect();
                let seen = svc.shed_signal(now);
                Some(ServiceView {
                    policy: svc.policy.clone(),
                    version: published.as_ref().map_or(0, |p| p.version),
                    list_len: plan.map_or(0, |p| p.order.len()),
                    max_share_error: plan.map_or(0.0, |p| p.max_share_error),
                    dropped: svc.dropped,
                    no_backend: svc.no_backend,
                    instances,
                    rules,
                    cluster: svc.cluster.clone(),
                    drop_fraction: plan.map_or(0.0, |p| p.drop_fraction),
                    utilization: seen.utilization.unwrap_or(0.0),
                    backlog_seconds: seen.backlog.unwrap_or(0.0),
                    grpclb: svc.grpclb.clone(),
                    grpclb_streams: self.hub.grpclb_streams(&name),
                    name,
                })
            })
            .collect()
    }

    /// Drops a removed instance from the store and marks its service.
    fn forget(&mut self, key: &InstanceKey) {
        self.urgent.insert(key.service.clone());
        match self.store.delete_instance(key) {
            Ok(()) => self.wrote = true,
            Err(e) => {
                tracing::error!(error = %e, instance = %key.instance_id, "could not delete instance record")
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        self.sweeps += 1;
        if self.sweeps.is_multiple_of(50) {
            self.hub.collect_garbage();
        }
        if !self.frozen
            && (now >= self.next_health
                || self.registry.next_readmission().is_some_and(|t| t <= now))
        {
            self.next_health = now + HEALTH_INTERVAL;
            for service in self.registry.evaluate_health(now) {
                self.urgent.insert(service);
            }
        }
        if self.frozen || self.registry.next_expiry().is_none_or(|t| t > now) {
            return;
        }
        for key in self.registry.expire(now) {
            tracing::info!(service = %key.service, instance = %key.instance_id, "registration expired");
            self.forget(&key);
            self.end_session(&key, "registration expired: no load report within its TTL");
        }
    }

    /// Plans and pushes every urgent service, and every dirty one whose
    /// damping interval has passed (those only if they moved past hysteresis).
    fn publish(&mut self, now: Instant) {
        let due: Vec<String> = self
            .dirty
            .iter()
            .filter(|s| {
                let min = self.registry.policy(s).min_plan_interval;
                self.last_plan
                    .get(*s)
                    .is_none_or(|t| now.saturating_duration_since(*t) >= min)
            })
            .cloned()
            .collect();
        for service in std::mem::take(&mut self.urgent) {
            self.dirty.remove(&service);
            self.plan(&service, now, None);
        }
        for service in due {
            if self.dirty.remove(&service) {
                let h = self.registry.policy(&service).hysteresis;
                self.plan(&service, now, Some(h));
            }
        }
    }

    fn plan(&mut self, service: &str, now: Instant, hysteresis: Option<f64>) {
        let (plan, again) = self
            .registry
            .plan(service, self.config.report_interval, now);
        let n = plan.servers.iter().filter(|s| !s.drop).count();
        self.last_plan.insert(service.to_string(), now);
        if self.hub.publish(service, plan, hysteresis) {
            tracing::debug!(%service, instances = n, "plan published");
        }
        if again {
            // Slow start and shedding move the plan with time alone: come back later.
            self.dirty.insert(service.to_string());
        }
        if self.registry.service(service).is_none() {
            self.last_plan.remove(service);
        }
    }

    async fn finish(&mut self, pending: Vec<Pending>, now: Instant) {
        self.publish(now);
        let mut flushed = Ok(());
        if std::mem::take(&mut self.wrote) {
            flushed = self.store.flush().await.map_err(|e| e.to_string());
            if let Err(e) = &flushed {
                tracing::error!(error = %e, "flush failed; refusing this batch's registrations");
            }
        }
        fn durable<T>(
            flushed: &Result<(), String>,
            r: Result<T, EngineError>,
        ) -> Result<T, EngineError> {
            match (flushed, r) {
                (Err(e), Ok(_)) => Err(EngineError::Store(e.clone())),
                (_, r) => r,
            }
        }
        for p in pending {
            match p {
                Pending::Attach(tx, r) => {
                    let _ = tx.send(durable(&flushed, r));
                }
                Pending::Lease(tx, r) => {
                    let _ = tx.send(durable(&flushed, r));
                }
                Pending::Deregister(tx, r) => {
                    let _ = tx.send(durable(&flushed, r));
                }
                Pending::Done(tx, r) => {
                    let _ = tx.send(durable(&flushed, r));
                }
                Pending::Override(tx, r) => {
                    let _ = tx.send(durable(&flushed, r));
                }
                Pending::Freeze(tx) => {
                    let _ = tx.send(());
                }
            }
        }
    }
}
