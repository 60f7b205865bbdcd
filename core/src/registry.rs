//! The registry: which instances exist, what keeps each alive, their live load
//! and the outcomes clients report for them.
//!
//! Client reports are taken in per client ([`Registry::record_stats`]) and
//! judged once per interval ([`Registry::evaluate_health`]) under the rule of
//! [`crate::evidence`]: an instance moves (ejection, outcome weight, latency
//! estimate) only as far as `stats_min_clients` distinct clients agree.
//!
//! A synchronous state machine with an explicit `now` and no I/O: the engine
//! task owns the only instance and decides, from what these methods return,
//! what to persist and which services to re-plan. Changes are split into a
//! fallible `check_*` and an infallible `apply_*`, so the engine can make the
//! change durable in between and nothing half-applied is ever visible.
//! The `check_*` step also applies the [`crate::quota`]s, so nothing a
//! quota refuses reaches the store.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::time::Instant;

use crate::cluster::ClusterConfig;
use crate::evidence::{self, Ledger};
use crate::health::{self, Detector, Tally};
use crate::model::{ClientStats, GrpclbStats, InstanceKey, InstanceSpec, Load, MAX_DROP_TOKENS};
use crate::policy::ewma::LatencyEwma;
use crate::policy::{outcome, Candidate, LoadState, ServicePlan, ServicePolicy};
use crate::quota::{self, Footprint, ListSize, Quota, QuotaError, Quotas, ServiceShape};
use crate::routing::Rule;

/// What keeps an instance in the lists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attachment {
    /// An open `ReportLoad` stream; `session` tells successive streams apart.
    Stream {
        /// The engine-assigned id of the stream.
        session: u64,
    },
    /// A unary `Register` lease, renewed by registering again.
    Lease,
    /// Loaded from the store after a restart, waiting for its backend to return.
    Restored,
    /// Added by an operator, with no backend process behind it: never
    /// expires, removed only by an operator.
    Static,
    /// Registered through another daemon replica sharing the store: listed
    /// while the shared store holds its registration (that replica, or
    /// etcd, ends it), never expired here; a registration of its own
    /// (stream or lease) takes it over.
    Replica,
}

/// How far ahead "never" is for an instance another replica keeps alive by
/// a stream ([`Registry::adopt`] without `until`): removed by name when its
/// record goes, not by time.
const KEPT: Duration = Duration::from_secs(100 * 365 * 86_400);

/// Totals of what clients reported for one instance since it registered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OutcomeTotals {
    /// Calls started.
    pub calls_started: u64,
    /// Calls finished.
    pub calls_finished: u64,
    /// Calls failed.
    pub calls_failed: u64,
    /// Sum of latencies, µs.
    pub latency_sum_us: u64,
}

/// One registered instance.
#[derive(Debug, Clone)]
pub struct Instance {
    /// What it registered.
    pub spec: InstanceSpec,
    /// What keeps it alive.
    pub attachment: Attachment,
    /// How long it may stay silent.
    pub ttl: Duration,
    /// When it leaves unless renewed (a report, a lease renewal, a reattach).
    pub expires: Instant,
    /// Its latest load report.
    pub load: Option<LoadState>,
    /// What clients reported about it, as reported (for operators: no
    /// decision reads these; see [`crate::evidence`]).
    pub outcomes: OutcomeTotals,
    /// Outcome-driven efficient weight (seed 000), in units of its weight.
    pub efficient: f64,
    /// Client-reported latency EWMA (fastest_response).
    pub latency: Option<LatencyEwma>,
    /// When it became active (registered, or undrained), for slow start;
    /// `None` once it no longer matters (restored after a daemon restart).
    pub active_since: Option<Instant>,
}

impl Instance {
    fn new(spec: InstanceSpec, attachment: Attachment, ttl: Duration, expires: Instant) -> Self {
        Instance {
            efficient: f64::from(spec.weight),
            spec,
            attachment,
            ttl,
            expires,
            load: None,
            outcomes: OutcomeTotals::default(),
            latency: None,
            active_since: None,
        }
    }
}

/// What an operator set on an instance (persisted; outlives registrations,
/// so a drained backend that restarts stays drained).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Override {
    /// Replaces the registered weight.
    pub weight: Option<u32>,
    /// Out of every list; the backend is told to drain.
    pub drained: bool,
}

/// One service: its instances and its policy.
#[derive(Debug, Clone, Default)]
pub struct Service {
    /// Instances by id (shared with snapshots until one changes).
    pub instances: BTreeMap<String, Arc<Instance>>,
    /// Policy settings.
    pub policy: ServicePolicy,
    /// Calls clients dropped locally on drop entries.
    pub dropped: u64,
    /// Calls clients could not place (empty list).
    pub no_backend: u64,
    /// Routing rules, in order (persisted).
    pub rules: Vec<Rule>,
    /// Cluster modes (persisted).
    pub cluster: ClusterConfig,
    /// Outlier detection and circuit breaking.
    pub health: Detector,
    /// What each client reported about each instance this interval.
    pub evidence: Ledger,
    /// Load shedding: the fraction of calls dropped now.
    pub drop_fraction: f64,
    /// When `drop_fraction` was last stepped.
    pub shed_at: Option<Instant>,
    /// consistent_hash with a bound: each instance's spill fraction for
    /// keyed calls ([`crate::policy::bounded::next_spill`]); only non-zero
    /// ones are kept.
    pub key_spill: BTreeMap<String, f64>,
    /// When `key_spill` was last stepped.
    pub spill_at: Option<Instant>,
    /// Cumulative client-reported failures by gRPC status code, per instance
    /// (as reported, for operators).
    pub failed_by_code: BTreeMap<String, BTreeMap<u32, u64>>,
    /// What stock gRPC clients reported (grpc.lb.v1), cumulative.
    pub grpclb: GrpclbTotals,
    /// What the instances add to the service's answers (kept in step with
    /// `instances` by the registry).
    footprint: Footprint,
}

/// Cumulative grpclb client stats of one service.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GrpclbTotals {
    /// Calls started.
    pub calls_started: u64,
    /// Calls finished.
    pub calls_finished: u64,
    /// Calls that never reached a server (drops excluded).
    pub failed_to_send: u64,
    /// Calls known to have reached a server.
    pub known_received: u64,
    /// Dropped calls by token; at most [`MAX_DROP_TOKENS`] tokens, later
    /// ones are counted under `"other"`.
    pub dropped_by_token: BTreeMap<String, u64>,
}

impl Service {
    /// What the instances add to the service's encoded answers.
    pub fn footprint(&self) -> Footprint {
        self.footprint
    }

    /// Nothing but defaults: the service can be forgotten once it has no instance.
    fn is_default(&self, policy: &ServicePolicy) -> bool {
        self.instances.is_empty()
            && self.policy == *policy
            && self.rules.is_empty()
            && self.cluster == ClusterConfig::default()
    }

    /// An instance's latest load report, if it is still fresh under the
    /// policy's `expiry` (what the service-wide controllers, shedding and
    /// key spill, read).
    fn fresh_load<'a>(&self, instance: &'a Instance, now: Instant) -> Option<&'a LoadState> {
        let expiry = self.policy.load_aware.expiry;
        instance
            .load
            .as_ref()
            .filter(|l| now.saturating_duration_since(l.at) <= expiry)
    }

    /// What the shedding controller sees over the instances with a fresh
    /// report: their mean utilization, and how long their reported requests
    /// take to drain at their full rates (`Σ active / Σ μ`, counting only
    /// instances that report qps; `None` if none does, or if requests are
    /// reported while nothing completes).
    pub fn shed_signal(&self, now: Instant) -> crate::policy::shed::Signal {
        // `known`: some instance tells its rate (or that it is idle).
        let (mut util, mut n, mut active, mut rate, mut known) = (0.0, 0usize, 0.0, 0.0, false);
        for l in self
            .instances
            .values()
            .filter_map(|i| self.fresh_load(i, now))
        {
            util += l.load.cpu_utilization;
            n += 1;
            if let Some(mu) =
                crate::policy::load_aware::full_rate(l.load.qps, l.load.cpu_utilization)
            {
                active += l.load.active_requests as f64;
                rate += mu;
                known = true;
            } else if l.load.qps == Some(0.0) && l.load.active_requests == 0 {
                // Idle and saying so: no backlog.
                known = true;
            }
        }
        crate::policy::shed::Signal {
            utilization: (n > 0).then(|| util / n as f64),
            backlog: match (known, rate > 0.0) {
                (false, _) => None,
                (true, true) => Some(active / rate),
                (true, false) => Some(0.0),
            },
        }
    }
}

impl Service {
    /// Ends the service's evidence interval: judges what each client
    /// reported about each instance ([`evidence::believe`]), moves the
    /// instances' outcome weights by what is believed, and returns each
    /// instance's believed tally for the detectors, and whether any outcome
    /// weight moved.
    fn fold_evidence(&mut self, now: Instant) -> (BTreeMap<String, Tally>, bool) {
        let mut tallies = BTreeMap::new();
        let interval = self.evidence.take(now);
        let m = self.policy.health.min_clients;
        let outcome_policy = self.policy.outcome;
        let mut moved = false;
        for (id, clients) in interval {
            let Some(inst) = self.instances.get_mut(&id).map(Arc::make_mut) else {
                continue;
            };
            let b = evidence::believe(&clients, m);
            tallies.insert(
                id,
                Tally {
                    finished: b.finished,
                    failed: b.failed,
                },
            );
            if b.succeeded > 0 || b.failed > 0 {
                let efficient = outcome::update(
                    &outcome_policy,
                    f64::from(inst.spec.weight),
                    inst.efficient,
                    b.succeeded,
                    b.failed,
                );
                moved |= efficient != inst.efficient;
                inst.efficient = efficient;
            }
        }
        (tallies, moved)
    }

    /// Judges one client report's latency about instance `id` (rule 3 of
    /// [`crate::evidence`]) and moves its estimate by the sample.
    fn observe_latency(&mut self, id: &str, client: &str, counts: evidence::Counts, now: Instant) {
        let m = self.policy.health.min_clients;
        let Some(lat) = self.evidence.latency(id, client, counts, m, now) else {
            return;
        };
        let Some(own) = self
            .instances
            .get(id)
            .map(|i| i.latency.and_then(|l| l.value()))
        else {
            return;
        };
        // An instance without an estimate, with too few clients to place
        // one, starts from the service's mean (computed only then: it reads
        // every instance).
        let prior = if own.is_none() && lat.low_us > lat.high_us {
            let known: Vec<f64> = self
                .instances
                .values()
                .filter_map(|i| i.latency.and_then(|l| l.value()))
                .collect();
            (!known.is_empty()).then(|| known.iter().sum::<f64>() / known.len() as f64)
        } else {
            None
        };
        let decay = self.policy.ewma_decay;
        let Some(inst) = self.instances.get_mut(id).map(Arc::make_mut) else {
            return;
        };
        if let Some(sample) = lat.sample(own, prior) {
            match (&mut inst.latency, own) {
                (Some(l), Some(_)) => l.observe(sample, lat.calls, now, decay),
                _ => inst.latency = Some(LatencyEwma::new(sample, now)),
            }
        }
    }
}

/// What one interval's evaluation changed in a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluated {
    /// The service.
    pub service: String,
    /// Ejections and re-admissions (list changes).
    pub events: Vec<health::Event>,
    /// Client evidence moved an outcome weight.
    pub weights: bool,
}

/// Why a change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The id is taken by a live instance at another address: deregister it
    /// first, or register under another id.
    #[error("instance_id: {instance_id:?} is live at {existing}; deregister it first or use another id (got address {requested})")]
    AddressConflict {
        /// The contested id.
        instance_id: String,
        /// Address of the live instance.
        existing: String,
        /// Address asked for.
        requested: String,
    },
    /// A unary lease was asked for an instance kept alive by a stream: use one
    /// mechanism per instance.
    #[error(
        "instance_id: {0:?} is kept alive by a ReportLoad stream; it cannot also hold a lease"
    )]
    StreamOwned(String),
    /// A backend tried to register over a static instance (or an operator
    /// tried to make a backend's live instance static).
    #[error("instance_id: {0:?} is a static instance; remove it (`lb-server ctl remove-static`) or use another id")]
    StaticOwned(String),
    /// An operator tried to add a static instance under the id of a live
    /// backend's registration: stop that backend, or use another id.
    #[error("instance_id: {0:?} is registered by a running backend; stop that backend (it leaves as it drains) or use another id")]
    BackendOwned(String),
    /// `remove-static` named an instance a backend registered.
    #[error("instance_id: {0:?} was registered by a backend, not added as static; it leaves when its backend deregisters")]
    NotStatic(String),
    /// The stream is no longer the one that owns the instance (it expired, was
    /// deregistered or replaced by a newer stream): register again.
    #[error("instance {0:?} is no longer registered on this stream; register again")]
    NotAttached(String),
    /// A quota refused the change (see [`QuotaError`] for what to do).
    #[error(transparent)]
    Quota(#[from] QuotaError),
}

/// What an applied registration means for the store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registered {
    /// The spec or TTL differs from what the store holds: write it.
    pub persist: bool,
    /// A previous stream session this one replaced.
    pub replaced_session: Option<u64>,
}

/// The registry of every service.
///
/// Cloning it is cheap: services, instances and the overrides sit behind
/// `Arc`s and are copied on write (`Arc::make_mut`), so a clone shares
/// everything until one side changes it, and then copies only the service
/// (and the instance) that changed. The daemon's readers get their
/// snapshots this way.
#[derive(Debug, Clone, Default)]
pub struct Registry {
    services: BTreeMap<String, Arc<Service>>,
    default_policy: ServicePolicy,
    overrides: Arc<BTreeMap<InstanceKey, Override>>,
    /// Instances in every service.
    instances: usize,
}

impl Registry {
    /// An empty registry whose services start with the default policy.
    pub fn new() -> Self {
        Registry::default()
    }

    /// An empty registry whose services start with `policy`.
    pub fn with_default_policy(policy: ServicePolicy) -> Self {
        Registry {
            services: BTreeMap::new(),
            default_policy: policy,
            overrides: Arc::default(),
            instances: 0,
        }
    }

    /// Instances in every service.
    pub fn instance_count(&self) -> usize {
        self.instances
    }

    /// A service as the list quota sees it (an unknown one: no instance and
    /// the defaults).
    fn shape<'a>(&'a self, service: &'a str) -> ServiceShape<'a> {
        match self.services.get(service) {
            Some(s) => ServiceShape {
                name: service,
                instances: s.footprint,
                policy: &s.policy,
                rules: &s.rules,
                cluster: Cow::Borrowed(&s.cluster),
            },
            None => ServiceShape {
                name: service,
                instances: Footprint::default(),
                policy: &self.default_policy,
                rules: &[],
                cluster: Cow::Owned(ClusterConfig::default()),
            },
        }
    }

    /// The estimated encoded sizes of a known service's answers
    /// ([`quota::list_size`]).
    pub fn list_size(&self, service: &str) -> Option<ListSize> {
        self.services.get(service)?;
        Some(quota::list_size(&self.shape(service)))
    }

    /// A service, if known.
    pub fn service(&self, name: &str) -> Option<&Service> {
        self.services.get(name).map(|s| &**s)
    }

    /// Every service, by name.
    pub fn services(&self) -> impl Iterator<Item = (&String, &Service)> {
        self.services.iter().map(|(n, s)| (n, &**s))
    }

    /// One instance.
    pub fn instance(&self, key: &InstanceKey) -> Option<&Instance> {
        self.services
            .get(&key.service)?
            .instances
            .get(&key.instance_id)
            .map(|i| &**i)
    }

    /// A known service, to change (copied first if a snapshot shares it).
    fn known_mut(&mut self, service: &str) -> Option<&mut Service> {
        self.services.get_mut(service).map(Arc::make_mut)
    }

    /// A registered instance, to change (copied first if shared).
    fn instance_mut(&mut self, key: &InstanceKey) -> Option<&mut Instance> {
        self.instance(key)?;
        let svc = self.known_mut(&key.service)?;
        svc.instances.get_mut(&key.instance_id).map(Arc::make_mut)
    }

    /// The candidates the policy may put in the service's list at `now`:
    /// every instance but the drained ones, with overrides applied.
    pub fn candidates(&self, service: &str, now: Instant) -> Vec<Candidate<'_>> {
        let Some(s) = self.services.get(service) else {
            return Vec::new();
        };
        let decay = s.policy.ewma_decay;
        // Estimates relax toward the service's mean latency (re-probing).
        let known: Vec<f64> = s
            .instances
            .values()
            .filter_map(|i| i.latency.map(|l| l.estimate(now, decay, 0.0)))
            .filter(|x| *x > 0.0)
            .collect();
        let prior = if known.is_empty() {
            0.0
        } else {
            known.iter().sum::<f64>() / known.len() as f64
        };
        // Each non-drained instance with its override and whether outlier
        // detection lets it in (each looked up once).
        let live: Vec<(&Instance, Override, bool)> = s
            .instances
            .values()
            .map(|i| &**i)
            .filter_map(|i| {
                let o = self
                    .overrides
                    .get(&i.spec.key())
                    .copied()
                    .unwrap_or_default();
                (!o.drained).then(|| (i, o, s.health.available(&i.spec.instance_id, now)))
            })
            .collect();
        // Envoy's panic threshold: when too few instances are healthy, use
        // them all rather than overload the few.
        let healthy = live.iter().filter(|(_, _, ok)| *ok).count();
        let panic = (healthy as f64) < s.policy.panic_threshold * live.len() as f64;
        let readmit_window = s.policy.readmit_window;
        live.into_iter()
            .filter_map(|(i, o, ok)| {
                if !panic && !ok {
                    return None;
                }
                let weight = o.weight.unwrap_or(i.spec.weight);
                Some(Candidate {
                    spec: &i.spec,
                    weight,
                    load: i.load.as_ref(),
                    efficient: i.efficient * f64::from(weight) / f64::from(i.spec.weight.max(1)),
                    latency_us: i.latency.map(|l| l.estimate(now, decay, prior)),
                    active_since: i.active_since,
                    readmitted: s
                        .health
                        .readmitted_at(&i.spec.instance_id)
                        .filter(|t| now.saturating_duration_since(*t) < readmit_window),
                })
            })
            .collect()
    }

    /// The operator's settings for an instance.
    pub fn override_of(&self, key: &InstanceKey) -> Override {
        self.overrides.get(key).copied().unwrap_or_default()
    }

    /// Every override, by instance.
    pub fn overrides(&self) -> impl Iterator<Item = (&InstanceKey, &Override)> {
        self.overrides.iter()
    }

    /// Sets (or, with the default, clears) an operator override. An instance
    /// coming back from a drain restarts its slow-start ramp.
    pub fn set_override(&mut self, key: &InstanceKey, o: Override, now: Instant) {
        let was_drained = self.override_of(key).drained;
        let overrides = Arc::make_mut(&mut self.overrides);
        if o == Override::default() {
            overrides.remove(key);
        } else {
            overrides.insert(key.clone(), o);
        }
        if was_drained && !o.drained {
            if let Some(i) = self.instance_mut(key) {
                i.active_since = Some(now);
            }
        }
    }

    /// The service's policy (the default for an unknown service).
    pub fn policy(&self, service: &str) -> &ServicePolicy {
        self.services
            .get(service)
            .map_or(&self.default_policy, |s| &s.policy)
    }

    /// A service to change, created with the default policy if unknown.
    fn service_mut(&mut self, service: &str) -> &mut Service {
        let default = &self.default_policy;
        Arc::make_mut(self.services.entry(service.to_string()).or_insert_with(|| {
            Arc::new(Service {
                policy: default.clone(),
                ..Service::default()
            })
        }))
    }

    /// May `service` take `policy`? Refused when its list would grow past
    /// the list quota (a longer `max_list_len`, a hash table).
    pub fn check_policy(
        &self,
        service: &str,
        policy: &ServicePolicy,
        quotas: &Quotas,
    ) -> Result<(), RegistryError> {
        let before = self.shape(service);
        let after = ServiceShape {
            policy,
            ..before.clone()
        };
        Ok(quota::check_growth(&before, &after, quotas)?)
    }

    /// Sets a service's policy.
    pub fn set_policy(&mut self, service: &str, policy: ServicePolicy) {
        self.service_mut(service).policy = policy;
    }

    /// May `spec` register as `attachment`? Returns whether the store must be
    /// written (new instance, or spec/TTL changed).
    ///
    /// A live instance (stream or lease, not yet expired) keeps its address: a
    /// second registration with another address is refused. A restored or
    /// expired one may be taken over by anyone.
    ///
    /// Static instances and backends' registrations do not replace each
    /// other: a backend cannot register over a static instance, and a static
    /// instance cannot take the id of a live registration (a restored one it
    /// may take over). A static instance may change its address.
    ///
    /// Then the quotas: the spec's labels; for a new instance, room in its
    /// service and in the registry; for a new or changed one, the service's
    /// list size. An instance registering again (a renewal, a reconnect, a
    /// restored instance's backend returning) is not counted again.
    pub fn check_register(
        &self,
        spec: &InstanceSpec,
        ttl: Duration,
        attachment: Attachment,
        now: Instant,
        quotas: &Quotas,
    ) -> Result<bool, RegistryError> {
        let cur = self.instance(&spec.key());
        let persist = match cur {
            Some(cur) => Self::check_owner(cur, spec, ttl, attachment, now)?,
            None => true,
        };
        self.check_register_quotas(spec, cur.map(|c| &c.spec), quotas)?;
        Ok(persist)
    }

    /// The quotas of [`Registry::check_register`]; `old` is the instance's
    /// current spec, if it is registered.
    fn check_register_quotas(
        &self,
        spec: &InstanceSpec,
        old: Option<&InstanceSpec>,
        quotas: &Quotas,
    ) -> Result<(), QuotaError> {
        quotas.check_labels(spec)?;
        let before = self.shape(&spec.service);
        if old.is_none() {
            let here = before.instances.instances;
            if here >= quotas.instances_per_service as u64 {
                return Err(quotas.refuse(
                    Quota::InstancesPerService,
                    &spec.service,
                    format!(
                        "it has {here} instances, and {:?} would be one more",
                        spec.instance_id
                    ),
                ));
            }
            if self.instances >= quotas.instances {
                return Err(quotas.refuse(
                    Quota::Instances,
                    &spec.service,
                    format!(
                        "the daemon holds {} instances in all services, and {:?} would be one more",
                        self.instances, spec.instance_id
                    ),
                ));
            }
        }
        if old == Some(spec) {
            return Ok(());
        }
        let mut instances = before.instances;
        if let Some(old) = old {
            instances = instances.without(quota::instance_bytes(old));
        }
        let after = ServiceShape {
            instances: instances.with(quota::instance_bytes(spec)),
            ..before.clone()
        };
        quota::check_growth(&before, &after, quotas)
    }

    /// Who owns a registered instance ([`Registry::check_register`]);
    /// returns whether the store must be written.
    fn check_owner(
        cur: &Instance,
        spec: &InstanceSpec,
        ttl: Duration,
        attachment: Attachment,
        now: Instant,
    ) -> Result<bool, RegistryError> {
        let requested_static = attachment == Attachment::Static;
        if cur.attachment == Attachment::Static {
            if !requested_static {
                return Err(RegistryError::StaticOwned(spec.instance_id.clone()));
            }
            return Ok(cur.spec != *spec);
        }
        // Another replica's registration is live while its record is.
        let live = cur.attachment == Attachment::Replica
            || (cur.expires > now && cur.attachment != Attachment::Restored);
        if live && requested_static {
            return Err(RegistryError::BackendOwned(spec.instance_id.clone()));
        }
        let stream = matches!(attachment, Attachment::Stream { .. });
        if live && cur.spec.address != spec.address {
            return Err(RegistryError::AddressConflict {
                instance_id: spec.instance_id.clone(),
                existing: cur.spec.address.clone(),
                requested: spec.address.clone(),
            });
        }
        if live && !stream && matches!(cur.attachment, Attachment::Stream { .. }) {
            return Err(RegistryError::StreamOwned(spec.instance_id.clone()));
        }
        // The record says how the instance is kept alive (a lease survives
        // a restart for its TTL, a stream for the grace): a new way, or a
        // restored instance coming back, is written again.
        let kind_changed =
            std::mem::discriminant(&cur.attachment) != std::mem::discriminant(&attachment);
        Ok(cur.spec != *spec || cur.ttl != ttl || requested_static || kind_changed)
    }

    /// Applies a registration that [`Registry::check_register`] accepted.
    pub fn apply_register(
        &mut self,
        spec: InstanceSpec,
        ttl: Duration,
        attachment: Attachment,
        now: Instant,
    ) -> Registered {
        let svc = self.service_mut(&spec.service);
        let expires = now + ttl;
        match svc.instances.get_mut(&spec.instance_id).map(Arc::make_mut) {
            Some(cur) => {
                let persist = cur.spec != spec || cur.ttl != ttl;
                if cur.spec != spec {
                    svc.footprint = svc
                        .footprint
                        .without(quota::instance_bytes(&cur.spec))
                        .with(quota::instance_bytes(&spec));
                }
                let replaced_session = match (cur.attachment, attachment) {
                    (Attachment::Stream { session: old }, Attachment::Stream { session: new })
                        if old != new =>
                    {
                        Some(old)
                    }
                    _ => None,
                };
                if cur.spec.address != spec.address {
                    svc.evidence.forget(&spec.instance_id);
                    cur.load = None;
                    cur.outcomes = OutcomeTotals::default();
                    cur.latency = None;
                    cur.active_since = Some(now);
                }
                if cur.spec.weight != spec.weight {
                    cur.efficient = f64::from(spec.weight);
                }
                if replaced_session.is_some() {
                    // A new stream starts a new run of reports (blackout).
                    cur.load = None;
                }
                cur.spec = spec;
                cur.attachment = attachment;
                cur.ttl = ttl;
                cur.expires = expires;
                Registered {
                    persist,
                    replaced_session,
                }
            }
            None => {
                let mut i = Instance::new(spec, attachment, ttl, expires);
                i.active_since = Some(now);
                svc.health.add_host(&i.spec.instance_id);
                svc.footprint = svc.footprint.with(quota::instance_bytes(&i.spec));
                svc.instances
                    .insert(i.spec.instance_id.clone(), Arc::new(i));
                self.instances += 1;
                Registered {
                    persist: true,
                    replaced_session: None,
                }
            }
        }
    }

    /// Puts an instance loaded from the store back, until `deadline`; a
    /// static one (`ttl` `None`) for good.
    pub fn restore(&mut self, spec: InstanceSpec, ttl: Option<Duration>, deadline: Instant) {
        let spec_id = spec.instance_id.clone();
        let svc = self.service_mut(&spec.service);
        svc.footprint = svc.footprint.with(quota::instance_bytes(&spec));
        let instance = match ttl {
            Some(ttl) => Instance::new(spec, Attachment::Restored, ttl, deadline),
            None => Instance::new(spec, Attachment::Static, Duration::ZERO, deadline),
        };
        svc.health.add_host(&spec_id);
        match svc.instances.insert(spec_id, Arc::new(instance)) {
            Some(replaced) => {
                svc.footprint = svc.footprint.without(quota::instance_bytes(&replaced.spec));
            }
            None => self.instances += 1,
        }
    }

    /// Lists an instance another replica registered ([`Attachment::Replica`]),
    /// or updates it; one registered here is left as it is (returns
    /// `false`): this daemon's own stream or lease is the better witness.
    /// `until`: when it expires here unless its record is written again (a
    /// lease, which the replica renewing it rewrites); `None`: kept while
    /// its record exists (a stream, which that replica ends). Returns
    /// whether what is listed changed (a new instance or a new spec; a
    /// later expiry alone is not).
    pub fn adopt(
        &mut self,
        spec: InstanceSpec,
        ttl: Duration,
        until: Option<Instant>,
        now: Instant,
    ) -> bool {
        let expires = until.unwrap_or(now + KEPT);
        match self
            .instance(&spec.key())
            .map(|i| (i.attachment, i.spec == spec))
        {
            Some((Attachment::Stream { .. } | Attachment::Lease, _)) => return false,
            Some((Attachment::Replica, true)) => {
                let svc = self.service_mut(&spec.service);
                if let Some(i) = svc.instances.get_mut(&spec.instance_id).map(Arc::make_mut) {
                    i.expires = expires;
                }
                return false;
            }
            _ => {}
        }
        self.restore(spec.clone(), Some(ttl), expires);
        let svc = self.service_mut(&spec.service);
        if let Some(i) = svc.instances.get_mut(&spec.instance_id).map(Arc::make_mut) {
            i.attachment = Attachment::Replica;
        }
        true
    }

    /// Forgets `service` if nothing but defaults is left of it (what
    /// [`Registry::remove`] does after an instance leaves), after its
    /// settings were reset by another replica.
    pub fn forget_if_default(&mut self, service: &str) {
        if self
            .services
            .get(service)
            .is_some_and(|s| s.is_default(&self.default_policy))
        {
            self.services.remove(service);
        }
    }

    /// Gives an instance restored after a restart the load it last reported
    /// before the restart (a warm restart: plans start from what was known,
    /// and the backend's reports continue the same unbroken run, so no new
    /// blackout). Only for an instance still waiting for its backend
    /// ([`Attachment::Restored`]) at `address`, with no report since;
    /// returns whether it applied.
    pub fn restore_load(&mut self, key: &InstanceKey, address: &str, state: LoadState) -> bool {
        let Some(svc) = self.known_mut(&key.service) else {
            return false;
        };
        let Some(inst) = svc.instances.get_mut(&key.instance_id) else {
            return false;
        };
        if inst.attachment != Attachment::Restored
            || inst.spec.address != address
            || inst.load.is_some()
        {
            return false;
        }
        Arc::make_mut(inst).load = Some(state);
        true
    }

    /// Records a load report from stream `session`, which must own the
    /// instance. Returns whether the instance's circuit opened or closed
    /// (utilization ceiling), which changes the list at once.
    pub fn report(
        &mut self,
        key: &InstanceKey,
        session: u64,
        load: Load,
        now: Instant,
    ) -> Result<bool, RegistryError> {
        if self
            .instance(key)
            .is_none_or(|i| i.attachment != Attachment::Stream { session })
        {
            return Err(RegistryError::NotAttached(key.instance_id.clone()));
        }
        let Some(svc) = self.known_mut(&key.service) else {
            return Ok(false);
        };
        let Some(inst) = svc.instances.get_mut(&key.instance_id).map(Arc::make_mut) else {
            return Ok(false);
        };
        // A gap longer than the TTL would have expired the instance, so any
        // previous report belongs to the same unbroken run.
        let since = inst.load.as_ref().map_or(now, |l| l.since);
        let rate = crate::policy::load_aware::full_rate(load.qps, load.cpu_utilization)
            .or_else(|| inst.load.as_ref().and_then(|l| l.rate));
        let utilization = load.cpu_utilization;
        inst.load = Some(LoadState {
            load,
            at: now,
            since,
            rate,
        });
        inst.expires = now + inst.ttl;
        Ok(svc
            .health
            .utilization(&key.instance_id, utilization, &svc.policy.health, now))
    }

    /// Stream `session` broke: remove its instance if it still owns it.
    pub fn detach(&mut self, key: &InstanceKey, session: u64) -> bool {
        let owns = self
            .instance(key)
            .is_some_and(|i| i.attachment == Attachment::Stream { session });
        owns && self.remove(key).is_some()
    }

    /// Removes an instance; returns it if it existed.
    pub fn remove(&mut self, key: &InstanceKey) -> Option<Arc<Instance>> {
        self.instance(key)?;
        let svc = self.services.get_mut(&key.service).map(Arc::make_mut)?;
        let removed = svc.instances.remove(&key.instance_id);
        if let Some(i) = &removed {
            svc.footprint = svc.footprint.without(quota::instance_bytes(&i.spec));
            self.instances -= 1;
        }
        svc.health.remove_host(&key.instance_id);
        svc.evidence.forget(&key.instance_id);
        if svc.is_default(&self.default_policy) {
            self.services.remove(&key.service);
        }
        removed
    }

    /// Removes a service with everything in it (instances, settings, health
    /// and outcome state) and the operator overrides of its instances, those
    /// registered now and those that outlived their registrations. Returns
    /// the service, if it was known, and the keys of the overrides removed.
    pub fn remove_service(&mut self, service: &str) -> (Option<Arc<Service>>, Vec<InstanceKey>) {
        let removed = self.services.remove(service);
        if let Some(s) = &removed {
            self.instances -= s.instances.len();
        }
        let keys: Vec<InstanceKey> = self
            .overrides
            .keys()
            .filter(|k| k.service == service)
            .cloned()
            .collect();
        if !keys.is_empty() {
            let overrides = Arc::make_mut(&mut self.overrides);
            for k in &keys {
                overrides.remove(k);
            }
        }
        (removed, keys)
    }

    /// Removes every instance whose time ran out; returns their keys.
    pub fn expire(&mut self, now: Instant) -> Vec<InstanceKey> {
        let expired: Vec<InstanceKey> = self
            .services
            .values()
            .flat_map(|s| s.instances.values())
            .filter(|i| i.expires <= now && i.attachment != Attachment::Static)
            .map(|i| i.spec.key())
            .collect();
        for k in &expired {
            self.remove(k);
        }
        expired
    }

    /// The earliest expiry, if any instance is registered.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.services
            .values()
            .flat_map(|s| s.instances.values())
            .filter(|i| i.attachment != Attachment::Static)
            .map(|i| i.expires)
            .min()
    }

    /// Takes in one client's outcome report. The totals operators see add
    /// up at once, and so does the latency estimate, by as much as the other
    /// clients' latest reports allow ([`evidence::Ledger::latency`]). Outlier
    /// detection and outcome weights take the counts per client, judged at
    /// the end of the interval by [`Registry::evaluate_health`], except a
    /// run of consecutive failures, which ejects at once when
    /// `stats_min_clients` clients have one ([`Detector::record`]). `client` is the reporter's id. Entries for
    /// instances that are gone (the list moved on) and for ejected instances
    /// (calls that were in flight) are left out of the evidence.
    ///
    /// Returns whether outlier detection ejected an instance (a list change).
    pub fn record_stats(
        &mut self,
        service: &str,
        client: &str,
        stats: &ClientStats,
        now: Instant,
    ) -> bool {
        let Some(svc) = self.known_mut(service) else {
            return false;
        };
        let mut ejected = false;
        for s in &stats.instances {
            let Some(i) = svc.instances.get_mut(&s.instance_id).map(Arc::make_mut) else {
                continue;
            };
            let o = &mut i.outcomes;
            o.calls_started = o.calls_started.saturating_add(s.calls_started);
            o.calls_finished = o.calls_finished.saturating_add(s.calls_finished);
            o.calls_failed = o.calls_failed.saturating_add(s.calls_failed);
            o.latency_sum_us = o.latency_sum_us.saturating_add(s.latency_sum_us);
            if !s.failed_by_code.is_empty() {
                let m = svc.failed_by_code.entry(s.instance_id.clone()).or_default();
                for (&code, &n) in &s.failed_by_code {
                    let e = m.entry(code).or_insert(0);
                    *e = e.saturating_add(n);
                }
            }
            if svc.health.ejected(&s.instance_id, now) {
                continue;
            }
            let counts = evidence::Counts {
                finished: s.calls_finished,
                failed: s.calls_failed,
                latency_sum_us: s.latency_sum_us,
            };
            svc.evidence.record(&s.instance_id, client, counts);
            // Finished calls with no latency at all: the reporter does not
            // measure it (an xDS client's LRS report), rather than calls
            // that took no time.
            if s.latency_sum_us > 0 || s.calls_finished == 0 {
                svc.observe_latency(&s.instance_id, client, counts, now);
            }
            ejected |= svc
                .health
                .record(
                    &s.instance_id,
                    client,
                    s.calls_failed,
                    s.consecutive_failures,
                    &svc.policy.health,
                    now,
                )
                .is_some();
        }
        svc.dropped = svc.dropped.saturating_add(stats.dropped);
        svc.no_backend = svc.no_backend.saturating_add(stats.no_backend);
        ejected
    }

    /// May `service` take these routing rules and cluster modes (each
    /// checked on its own by the caller)? Refused when they are more rules
    /// than the rules quota allows (and more than the service has), or when
    /// they make its list grow past the list quota.
    pub fn check_routing(
        &self,
        service: &str,
        rules: &[Rule],
        cluster: &ClusterConfig,
        quotas: &Quotas,
    ) -> Result<(), RegistryError> {
        let before = self.shape(service);
        if rules.len() > quotas.rules && rules.len() > before.rules.len() {
            return Err(quotas
                .refuse(
                    Quota::Rules,
                    service,
                    format!("it would have {} rules", rules.len()),
                )
                .into());
        }
        let after = ServiceShape {
            rules,
            cluster: Cow::Borrowed(cluster),
            ..before.clone()
        };
        Ok(quota::check_growth(&before, &after, quotas)?)
    }

    /// Sets a service's routing rules (checked by the caller).
    pub fn set_rules(&mut self, service: &str, rules: Vec<Rule>) {
        self.service_mut(service).rules = rules;
    }

    /// Sets a service's cluster modes (checked by the caller).
    pub fn set_cluster(&mut self, service: &str, cluster: ClusterConfig) {
        self.service_mut(service).cluster = cluster;
    }

    /// Ends every service's evidence interval (once per
    /// [`evidence::INTERVAL`]): moves outcome weights by what the clients'
    /// reports are believed to show, runs outlier detection on it, and
    /// readmits instances whose ejection is over. Returns the services where
    /// something changed, and what.
    pub fn evaluate_health(&mut self, now: Instant) -> Vec<Evaluated> {
        self.end_interval(now, true)
    }

    /// [`Registry::evaluate_health`] without outlier detection or
    /// re-admissions: the outcome weights alone. For the simulator, which
    /// does not model the daemon's interval detectors.
    pub fn fold_outcomes(&mut self, now: Instant) -> Vec<Evaluated> {
        self.end_interval(now, false)
    }

    fn end_interval(&mut self, now: Instant, detect: bool) -> Vec<Evaluated> {
        let mut changed = Vec::new();
        for (name, svc) in &mut self.services {
            let svc = Arc::make_mut(svc);
            let (tallies, weights) = svc.fold_evidence(now);
            // Membership is kept in step by register/restore/remove.
            let events = if detect {
                svc.health.evaluate(&svc.policy.health, &tallies, now)
            } else {
                Vec::new()
            };
            if !events.is_empty() || weights {
                changed.push(Evaluated {
                    service: name.clone(),
                    events,
                    weights,
                });
            }
        }
        changed
    }

    /// Readmits the instances whose ejection is over, between intervals;
    /// returns the services whose lists change, with what happened in each.
    pub fn readmit(&mut self, now: Instant) -> Vec<(String, Vec<health::Event>)> {
        let mut changed = Vec::new();
        for (name, svc) in &mut self.services {
            if svc.health.next_deadline().is_none_or(|t| t > now) {
                continue;
            }
            let events = Arc::make_mut(svc).health.readmit(now);
            if !events.is_empty() {
                changed.push((name.clone(), events));
            }
        }
        changed
    }

    /// The earliest moment an ejection ends, over every service.
    pub fn next_readmission(&self) -> Option<Instant> {
        self.services
            .values()
            .filter_map(|s| s.health.next_deadline())
            .min()
    }

    /// Adds a stock client's grpclb stats to its service's totals; drops also
    /// count in the service's `dropped`. Stats for an unknown service are ignored.
    pub fn record_grpclb(&mut self, service: &str, stats: &GrpclbStats) {
        let Some(svc) = self.known_mut(service) else {
            return;
        };
        let g = &mut svc.grpclb;
        g.calls_started = g.calls_started.saturating_add(stats.calls_started);
        g.calls_finished = g.calls_finished.saturating_add(stats.calls_finished);
        g.failed_to_send = g.failed_to_send.saturating_add(stats.failed_to_send);
        g.known_received = g.known_received.saturating_add(stats.known_received);
        for (token, n) in &stats.dropped_by_token {
            let key = if g.dropped_by_token.contains_key(token)
                || g.dropped_by_token.len() < MAX_DROP_TOKENS
            {
                token.clone()
            } else {
                "other".to_string()
            };
            let slot = g.dropped_by_token.entry(key).or_default();
            *slot = slot.saturating_add(*n);
        }
        svc.dropped = svc.dropped.saturating_add(stats.dropped());
    }

    /// Steps a service's load-shedding controller (at most once per `step`);
    /// returns the drop fraction in force.
    pub fn step_shedding(&mut self, service: &str, step: Duration, now: Instant) -> f64 {
        use crate::policy::shed;
        let Some(current) = self.services.get(service) else {
            return 0.0;
        };
        // Only a step or a reset changes the service (and copies it if a
        // snapshot shares it); most plans do neither.
        let cfg = &current.policy.shed;
        let adaptive = shed::adaptive(cfg);
        let steps = adaptive
            && current
                .shed_at
                .is_none_or(|t| now.saturating_duration_since(t) >= step);
        if steps || (!adaptive && current.drop_fraction != 0.0) {
            let Some(svc) = self.known_mut(service) else {
                return 0.0;
            };
            if steps {
                let seen = svc.shed_signal(now);
                svc.drop_fraction = shed::next_drop(svc.drop_fraction, seen, &svc.policy.shed);
                svc.shed_at = Some(now);
            } else {
                svc.drop_fraction = 0.0;
            }
        }
        let svc = &self.services[service];
        shed::with_floor(
            if adaptive { svc.drop_fraction } else { 0.0 },
            &svc.policy.shed,
        )
    }

    /// Steps a service's keyed-call spill controller (at most once per
    /// `step`) over the servers of its new `plan`, and returns each
    /// server's spill fraction in the plan's order (empty when none
    /// spills). Only under consistent_hash with a bound, and only when
    /// every server of the plan has a fresh report with its qps: shares of
    /// a partial picture would be wrong, so then every spill eases off.
    pub fn step_key_spill(
        &mut self,
        service: &str,
        plan: &crate::policy::ServicePlan,
        step: Duration,
        now: Instant,
    ) -> Vec<f64> {
        use crate::policy::bounded;
        let Some(current) = self.services.get(service) else {
            return Vec::new();
        };
        let on = current.policy.spills_keys();
        if !on && current.key_spill.is_empty() {
            return Vec::new();
        }
        let due = current
            .spill_at
            .is_none_or(|t| now.saturating_duration_since(t) >= step);
        if on && due {
            let c = current.policy.chash.load_bound;
            let servers: Vec<(&str, f64)> = plan
                .servers
                .iter()
                .zip(&plan.weights)
                .filter(|(s, _)| !s.drop)
                .map(|(s, &w)| (s.instance_id.as_str(), w))
                .collect();
            let qps: Option<Vec<f64>> = servers
                .iter()
                .map(|(id, _)| {
                    current
                        .fresh_load(current.instances.get(*id)?, now)?
                        .load
                        .qps
                })
                .collect();
            let total: f64 = qps.iter().flatten().sum();
            let weight: f64 = servers.iter().map(|(_, w)| w).sum();
            let next: BTreeMap<String, f64> = servers
                .iter()
                .enumerate()
                .map(|(k, (id, w))| {
                    let share = match &qps {
                        Some(q) if total > 0.0 => q[k] / total,
                        _ => 0.0,
                    };
                    let target = if weight > 0.0 { c * w / weight } else { 0.0 };
                    let f = current.key_spill.get(*id).copied().unwrap_or(0.0);
                    ((*id).to_string(), bounded::next_spill(f, share, target))
                })
                .filter(|(_, f)| *f > 0.0)
                .collect();
            if let Some(svc) = self.known_mut(service) {
                svc.key_spill = next;
                svc.spill_at = Some(now);
            }
        } else if !on {
            if let Some(svc) = self.known_mut(service) {
                svc.key_spill.clear();
                svc.spill_at = None;
            }
        }
        let Some(svc) = self.services.get(service) else {
            return Vec::new();
        };
        if svc.key_spill.is_empty() {
            return Vec::new();
        }
        plan.servers
            .iter()
            .map(|s| svc.key_spill.get(&s.instance_id).copied().unwrap_or(0.0))
            .collect()
    }

    /// A service's plan at `now`, as its subscribers get it: steps the
    /// shedding controller (at most once per `shed_step`), plans the
    /// candidates with the service's policy and adds its rules, cluster
    /// modes, panic threshold and zone counts. Also returns whether to plan
    /// again even if nothing else changes: while weights ramp (slow start) or
    /// load is shed, time alone moves the plan. The daemon and the simulator
    /// both plan through here, so they cannot drift apart.
    pub fn plan(
        &mut self,
        service: &str,
        shed_step: Duration,
        now: Instant,
    ) -> (ServicePlan, bool) {
        let drop = self.step_shedding(service, shed_step, now);
        let policy = self.policy(service);
        let cands = self.candidates(service, now);
        let mut plan = crate::policy::plan_shedding(&cands, policy, drop, now);
        plan.panic_threshold = policy.panic_threshold;
        if let Some(svc) = self.services.get(service) {
            plan.rules = Arc::new(svc.rules.clone());
            plan.cluster = Arc::new(svc.cluster.clone());
            // Per zone: (candidates, instances not drained by an operator).
            let mut zones: BTreeMap<String, (usize, usize)> = BTreeMap::new();
            for i in svc.instances.values() {
                if !self.override_of(&i.spec.key()).drained {
                    zones.entry(i.spec.zone.clone()).or_default().1 += 1;
                }
            }
            for c in &cands {
                zones.entry(c.spec.zone.clone()).or_default().0 += 1;
            }
            plan.zones = zones;
        }
        plan.spill = self.step_key_spill(service, &plan, shed_step, now);
        let again = plan.ramping || drop > 0.0 || !plan.spill.is_empty();
        (plan, again)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::InstanceOutcomes;
    use crate::policy::PolicyKind;

    fn spec(id: &str, addr: &str) -> InstanceSpec {
        InstanceSpec::new("svc", id, addr)
    }

    const TTL: Duration = Duration::from_secs(5);
    const STREAM: Attachment = Attachment::Stream { session: 1 };
    const Q: Quotas = Quotas::DEFAULT;

    #[test]
    fn another_replicas_instances_stay_until_removed_and_yield_to_our_own() {
        let now = Instant::now();
        let mut r = Registry::new();
        let a = spec("a", "127.0.0.1:1");
        assert!(r.adopt(a.clone(), TTL, None, now));
        assert_eq!(
            r.instance(&a.key()).map(|i| i.attachment),
            Some(Attachment::Replica)
        );
        // A stream's: not expired here (its record goes when it ends).
        assert!(r.expire(now + Duration::from_secs(86_400)).is_empty());
        // A lease's: expires unless its record is written again.
        let l = spec("l", "127.0.0.1:2");
        assert!(r.adopt(l.clone(), TTL, Some(now + TTL), now));
        assert!(
            !r.adopt(l.clone(), TTL, Some(now + 2 * TTL), now),
            "a renewal lists nothing new"
        );
        assert!(
            r.expire(now + TTL).is_empty(),
            "the rewrite moved its expiry"
        );
        assert_eq!(r.expire(now + 2 * TTL), [l.key()]);
        // Live: another address for its id, or a static one, is refused.
        assert!(matches!(
            r.check_register(&spec("a", "127.0.0.1:9"), TTL, STREAM, now, &Q),
            Err(RegistryError::AddressConflict { .. })
        ));
        assert_eq!(
            r.check_register(&a, Duration::ZERO, Attachment::Static, now, &Q),
            Err(RegistryError::BackendOwned("a".into()))
        );
        // Its backend streaming here takes it over (and it is written again).
        assert_eq!(r.check_register(&a, TTL, STREAM, now, &Q), Ok(true));
        r.apply_register(a.clone(), TTL, STREAM, now);
        // Now the record from elsewhere no longer replaces it.
        assert!(!r.adopt(spec("a", "127.0.0.1:1"), TTL, None, now));
        assert_eq!(r.instance(&a.key()).map(|i| i.attachment), Some(STREAM));
        // A service left with defaults only is forgotten on request.
        r.remove(&a.key());
        r.set_policy("svc", ServicePolicy::with_kind(PolicyKind::Random));
        r.forget_if_default("svc");
        assert!(r.service("svc").is_some(), "it has a policy");
        r.set_policy("svc", ServicePolicy::default());
        r.forget_if_default("svc");
        assert!(r.service("svc").is_none());
    }

    #[test]
    fn static_instances_never_expire_and_do_not_mix_with_backends() {
        let now = Instant::now();
        let mut r = Registry::new();
        let s = spec("s", "127.0.0.1:1");
        assert_eq!(
            r.check_register(&s, Duration::ZERO, Attachment::Static, now, &Q),
            Ok(true)
        );
        r.apply_register(s.clone(), Duration::ZERO, Attachment::Static, now);
        // A backend cannot take a static instance's id, by stream or lease.
        for via in [STREAM, Attachment::Lease] {
            assert_eq!(
                r.check_register(&s, TTL, via, now, &Q),
                Err(RegistryError::StaticOwned("s".into()))
            );
        }
        // An operator may move it; the same spec again is not rewritten.
        let moved = spec("s", "127.0.0.1:2");
        assert_eq!(
            r.check_register(&moved, Duration::ZERO, Attachment::Static, now, &Q),
            Ok(true)
        );
        assert_eq!(
            r.check_register(&s, Duration::ZERO, Attachment::Static, now, &Q),
            Ok(false)
        );
        // It outlives any lease: nothing expires, and no expiry is scheduled.
        let much_later = now + Duration::from_secs(86_400);
        assert!(r.expire(much_later).is_empty());
        assert_eq!(r.next_expiry(), None);
        assert!(r.instance(&s.key()).is_some());
        // A live backend's id cannot become static; a restored one can.
        let b = spec("b", "127.0.0.1:3");
        r.apply_register(b.clone(), TTL, STREAM, now);
        assert_eq!(
            r.check_register(&b, Duration::ZERO, Attachment::Static, now, &Q),
            Err(RegistryError::BackendOwned("b".into()))
        );
        let c = spec("c", "127.0.0.1:4");
        r.restore(c.clone(), Some(TTL), now + TTL);
        assert_eq!(
            r.check_register(&c, Duration::ZERO, Attachment::Static, now, &Q),
            Ok(true)
        );
        // Restored static instances come back static.
        let d = spec("d", "127.0.0.1:5");
        r.restore(d.clone(), None, now);
        assert_eq!(
            r.instance(&d.key()).map(|i| i.attachment),
            Some(Attachment::Static)
        );
        assert_eq!(
            r.expire(much_later).len(),
            2,
            "b and c expire, s and d stay"
        );
    }

    #[test]
    fn a_clone_is_a_snapshot_that_shares_until_written() {
        let now = Instant::now();
        let mut r = Registry::new();
        r.apply_register(spec("a", "127.0.0.1:1"), TTL, STREAM, now);
        let mut other = spec("o", "127.0.0.1:9");
        other.service = "other".into();
        r.apply_register(other, TTL, Attachment::Lease, now);
        let snap = r.clone();
        let a = spec("a", "x:1").key();
        let busy = Load {
            active_requests: 5,
            ..Load::default()
        };
        r.report(&a, 1, busy, now).unwrap();
        r.apply_register(spec("b", "127.0.0.1:2"), TTL, Attachment::Lease, now);
        r.set_override(
            &a,
            Override {
                weight: Some(3),
                drained: false,
            },
            now,
        );
        // The snapshot still shows the state it was taken at ...
        assert!(snap.instance(&a).unwrap().load.is_none());
        assert_eq!(snap.service("svc").unwrap().instances.len(), 1);
        assert_eq!(snap.override_of(&a), Override::default());
        // ... the registry moved on ...
        assert_eq!(
            r.instance(&a)
                .unwrap()
                .load
                .as_ref()
                .unwrap()
                .load
                .active_requests,
            5
        );
        assert_eq!(r.service("svc").unwrap().instances.len(), 2);
        // ... and what neither changed is still shared, not copied.
        assert!(Arc::ptr_eq(&r.services["other"], &snap.services["other"]));
        assert!(!Arc::ptr_eq(&r.services["svc"], &snap.services["svc"]));
    }

    #[test]
    fn live_instance_keeps_its_address() {
        let now = Instant::now();
        let mut r = Registry::new();
        let a = spec("a", "127.0.0.1:1");
        assert_eq!(r.check_register(&a, TTL, STREAM, now, &Q), Ok(true));
        r.apply_register(a.clone(), TTL, Attachment::Stream { session: 1 }, now);
        let moved = spec("a", "127.0.0.1:2");
        assert!(matches!(
            r.check_register(&moved, TTL, STREAM, now, &Q),
            Err(RegistryError::AddressConflict { .. })
        ));
        // Same address: a reconnect; takes over the session, nothing to persist.
        assert_eq!(r.check_register(&a, TTL, STREAM, now, &Q), Ok(false));
        let reg = r.apply_register(a, TTL, Attachment::Stream { session: 2 }, now);
        assert_eq!(reg.replaced_session, Some(1));
        assert!(!reg.persist);
        // The old stream's reports and breakage no longer count.
        let key = InstanceKey {
            service: "svc".into(),
            instance_id: "a".into(),
        };
        assert!(r.report(&key, 1, Load::default(), now).is_err());
        assert!(!r.detach(&key, 1));
        assert!(r.instance(&key).is_some());
        assert!(r.detach(&key, 2));
        assert!(r.instance(&key).is_none());
        // Once gone, the id is free for any address.
        assert_eq!(r.check_register(&moved, TTL, STREAM, now, &Q), Ok(true));
    }

    #[test]
    fn expired_or_restored_ids_can_move() {
        let now = Instant::now();
        let mut r = Registry::new();
        r.restore(spec("a", "127.0.0.1:1"), Some(TTL), now + TTL);
        assert_eq!(
            r.check_register(&spec("a", "127.0.0.1:2"), TTL, STREAM, now, &Q),
            Ok(true)
        );
        r.apply_register(spec("b", "127.0.0.1:3"), TTL, Attachment::Lease, now);
        let later = now + TTL;
        assert_eq!(
            r.check_register(&spec("b", "127.0.0.1:4"), TTL, Attachment::Lease, later, &Q),
            Ok(true)
        );
    }

    #[test]
    fn lease_cannot_take_a_streamed_instance() {
        let now = Instant::now();
        let mut r = Registry::new();
        let a = spec("a", "127.0.0.1:1");
        r.apply_register(a.clone(), TTL, Attachment::Stream { session: 7 }, now);
        assert_eq!(
            r.check_register(&a, TTL, Attachment::Lease, now, &Q),
            Err(RegistryError::StreamOwned("a".into()))
        );
    }

    #[test]
    fn reports_extend_life_and_expiry_removes() {
        let t0 = Instant::now();
        let mut r = Registry::new();
        let key = spec("a", "127.0.0.1:1").key();
        r.apply_register(
            spec("a", "127.0.0.1:1"),
            TTL,
            Attachment::Stream { session: 1 },
            t0,
        );
        r.apply_register(spec("b", "127.0.0.1:2"), TTL, Attachment::Lease, t0);
        let t1 = t0 + Duration::from_secs(4);
        r.report(&key, 1, Load::default(), t1).unwrap();
        assert_eq!(r.next_expiry(), Some(t0 + TTL));
        let gone = r.expire(t0 + TTL);
        assert_eq!(gone.len(), 1);
        assert_eq!(gone[0].instance_id, "b");
        assert!(r.expire(t1 + TTL - Duration::from_millis(1)).is_empty());
        assert_eq!(r.expire(t1 + TTL).len(), 1);
        assert!(r.service("svc").is_none());
    }

    #[test]
    fn stats_accumulate_and_ignore_unknown_ids() {
        let now = Instant::now();
        let mut r = Registry::new();
        r.apply_register(spec("a", "127.0.0.1:1"), TTL, Attachment::Lease, now);
        let stats = ClientStats {
            instances: vec![
                InstanceOutcomes {
                    instance_id: "a".into(),
                    calls_started: 3,
                    calls_finished: 2,
                    calls_failed: 1,
                    latency_sum_us: 10,
                    ..Default::default()
                },
                InstanceOutcomes {
                    instance_id: "gone".into(),
                    calls_started: 9,
                    ..Default::default()
                },
            ],
            dropped: 4,
            no_backend: 0,
        };
        r.record_stats("svc", "c1", &stats, now);
        r.record_stats("svc", "c1", &stats, now);
        let i = r.instance(&spec("a", "x:1").key()).unwrap();
        assert_eq!(i.outcomes.calls_started, 6);
        assert_eq!(i.outcomes.calls_failed, 2);
        assert_eq!(r.service("svc").unwrap().dropped, 8);
    }

    /// One client's report about instance `id` of service "svc": `finished`
    /// calls, `failed` of them, with mean latency `mean_us`, and its current
    /// run of consecutive failures.
    fn report(id: &str, finished: u64, failed: u64, mean_us: u64, run: u64) -> ClientStats {
        ClientStats {
            instances: vec![InstanceOutcomes {
                instance_id: id.into(),
                calls_started: finished,
                calls_finished: finished,
                calls_failed: failed,
                latency_sum_us: finished.saturating_mul(mean_us),
                consecutive_failures: run,
                ..Default::default()
            }],
            dropped: 0,
            no_backend: 0,
        }
    }

    /// Service "svc" with `n` leased instances i0..i{n-1} under `policy`.
    fn farm(n: usize, policy: ServicePolicy, now: Instant) -> Registry {
        let mut r = Registry::new();
        r.set_policy("svc", policy);
        for i in 0..n {
            r.apply_register(
                spec(&format!("i{i}"), &format!("127.0.0.1:{}", i + 1)),
                Duration::from_secs(3600),
                Attachment::Lease,
                now,
            );
        }
        r
    }

    fn listed(r: &Registry, now: Instant) -> Vec<String> {
        r.candidates("svc", now)
            .iter()
            .map(|c| c.spec.instance_id.clone())
            .collect()
    }

    fn policy(kind: PolicyKind, min_clients: u32) -> ServicePolicy {
        let mut p = ServicePolicy::with_kind(kind);
        p.health.min_clients = min_clients;
        p
    }

    #[test]
    fn one_client_cannot_eject_two_agreeing_clients_can() {
        let t0 = Instant::now();
        let all: Vec<String> = (0..4).map(|i| format!("i{i}")).collect();
        let mut r = farm(4, policy(PolicyKind::RoundRobin, 2), t0);
        assert_eq!(r.policy("svc").health.min_clients, 2, "the default");
        // Mallory reports 10⁹ failed calls to i0, all in one run, again and
        // again, over several intervals.
        let lie = report("i0", 1_000_000_000, 1_000_000_000, 1, 1_000_000_000);
        let mut t = t0;
        for _ in 0..5 {
            for _ in 0..10 {
                assert!(!r.record_stats("svc", "mallory", &lie, t));
            }
            // An honest client sees i1 and i0 serve well.
            r.record_stats("svc", "alice", &report("i0", 100, 0, 900, 0), t);
            t += evidence::INTERVAL;
            assert!(r.evaluate_health(t).iter().all(|e| e.events.is_empty()));
            assert_eq!(listed(&r, t), all);
        }
        // Two clients that both see i1 fail: a run each ejects at once ...
        assert!(!r.record_stats("svc", "alice", &report("i1", 5, 5, 900, 5), t));
        assert_eq!(listed(&r, t), all);
        assert!(r.record_stats("svc", "bob", &report("i1", 5, 5, 900, 5), t));
        assert_eq!(listed(&r, t), ["i0", "i2", "i3"]);
        // (The liar is a witness too: with one honest client's run on i0,
        // the two runs agree.)
        assert!(r.record_stats("svc", "alice", &report("i0", 5, 5, 900, 5), t));
        // ... and so do their failure percentages over an interval.
        let mut p = policy(PolicyKind::RoundRobin, 2);
        p.health.consecutive_failures = 0;
        let mut r = farm(4, p, t0);
        r.record_stats("svc", "mallory", &lie, t0);
        assert!(r.evaluate_health(t0 + evidence::INTERVAL).is_empty());
        assert_eq!(listed(&r, t0 + evidence::INTERVAL), all);
        let t = t0 + evidence::INTERVAL;
        r.record_stats("svc", "alice", &report("i0", 60, 60, 900, 0), t);
        r.record_stats("svc", "bob", &report("i0", 60, 55, 900, 0), t);
        r.record_stats("svc", "mallory", &lie, t);
        let judged = r.evaluate_health(t + evidence::INTERVAL);
        assert!(
            matches!(&judged[0].events[..], [health::Event::Ejected { id, .. }] if id == "i0"),
            "{judged:?}"
        );
    }

    #[test]
    fn with_one_min_client_one_client_ejects_as_before() {
        let t0 = Instant::now();
        let mut r = farm(4, policy(PolicyKind::RoundRobin, 1), t0);
        assert!(!r.record_stats("svc", "c", &report("i0", 4, 4, 1, 4), t0));
        assert!(r.record_stats("svc", "c", &report("i0", 1, 1, 1, 5), t0));
        assert!(!listed(&r, t0).contains(&"i0".to_string()));
        let mut p = policy(PolicyKind::RoundRobin, 1);
        p.health.consecutive_failures = 0;
        let mut r = farm(4, p, t0);
        r.record_stats("svc", "c", &report("i1", 100, 90, 1, 0), t0);
        let judged = r.evaluate_health(t0 + evidence::INTERVAL);
        assert!(matches!(&judged[0].events[..], [health::Event::Ejected { id, .. }] if id == "i1"));
    }

    #[test]
    fn outcome_weights_need_agreement() {
        let t0 = Instant::now();
        let mut p = policy(PolicyKind::WeightedRoundRobin, 2);
        p.outcome.enabled = true;
        let mut r = farm(2, p, t0);
        let key = spec("i0", "x:1").key();
        let base = r.instance(&key).unwrap().efficient;
        r.record_stats("svc", "mallory", &report("i0", 1000, 1000, 1, 0), t0);
        r.record_stats("svc", "alice", &report("i0", 10, 0, 1, 0), t0);
        r.evaluate_health(t0 + evidence::INTERVAL);
        assert_eq!(r.instance(&key).unwrap().efficient, base, "one witness");
        let t = t0 + evidence::INTERVAL;
        r.record_stats("svc", "alice", &report("i0", 10, 3, 1, 0), t);
        r.record_stats("svc", "bob", &report("i0", 10, 3, 1, 0), t);
        let judged = r.evaluate_health(t + evidence::INTERVAL);
        assert!(judged[0].weights);
        assert!(r.instance(&key).unwrap().efficient < base, "two witnesses");
    }

    proptest::proptest! {
        #![proptest_config(crate::proptest_config())]

        /// With `stats_min_clients = 1` the latency estimates are exactly
        /// what the registry computed before the rule: every report's mean
        /// folded into the instance's EWMA as it arrives.
        #[test]
        fn one_min_client_keeps_the_old_latency_estimates(
            reports in proptest::collection::vec((0usize..4, 0usize..3, 1u64..100_000, 1u64..50, 0u64..700), 1..60),
        ) {
            let t0 = Instant::now();
            let mut r = farm(3, policy(PolicyKind::FastestResponse, 1), t0);
            let decay = r.policy("svc").ewma_decay;
            let mut old: Vec<Option<LatencyEwma>> = vec![None; 3];
            let mut t = t0;
            for (client, i, mean, n, dt) in reports {
                t += Duration::from_millis(dt);
                r.record_stats("svc", &format!("c{client}"), &report(&format!("i{i}"), n, 0, mean, 0), t);
                match &mut old[i] {
                    Some(l) => l.observe(mean as f64, n, t, decay),
                    None => old[i] = Some(LatencyEwma::new(mean as f64, t)),
                }
                for (j, o) in old.iter().enumerate() {
                    let now = r.instance(&spec(&format!("i{j}"), "x:1").key()).unwrap().latency;
                    proptest::prop_assert_eq!(now.and_then(|l| l.value()), o.and_then(|l| l.value()));
                }
            }
        }

        /// A liar among three honest clients (m = 2): every estimate stays
        /// within the honest reports' range, and once every client has
        /// reported, no report (the liar's least of all) moves an estimate
        /// away from its own instance's honest range.
        #[test]
        fn a_liar_cannot_move_latency_beyond_the_honest_range(
            ranges in proptest::collection::vec((1u64..10_000, 1u64..10), 3),
            honest in proptest::collection::vec(
                proptest::collection::vec((0usize..3, 0u64..1000), 9), 1..12),
            lies in proptest::collection::vec((0usize..3, proptest::prelude::any::<u64>(), 1u64..1_000_000, 0usize..10), 1..12),
        ) {
            let t0 = Instant::now();
            let mut r = farm(3, policy(PolicyKind::FastestResponse, 2), t0);
            // Instance i's honest reports lie in [lo_i, lo_i × f_i].
            let range = |i: usize| (ranges[i].0 as f64, (ranges[i].0 * ranges[i].1) as f64);
            let global = (
                (0..3).map(|i| range(i).0).fold(f64::INFINITY, f64::min),
                (0..3).map(|i| range(i).1).fold(0.0, f64::max),
            );
            let dist = |i: usize, x: f64| {
                let (lo, hi) = range(i);
                (lo - x).max(x - hi).max(0.0)
            };
            let estimate = |r: &Registry, i: usize| {
                r.instance(&spec(&format!("i{i}"), "x:1").key()).unwrap().latency.and_then(|l| l.value())
            };
            let mut t = t0;
            let mut seen = [[false; 4]; 3];
            for (round, reports) in honest.iter().enumerate() {
                // Each round: each honest client reports on each instance,
                // the liar once somewhere among them.
                let mut batch: Vec<(&str, usize, u64, u64)> = Vec::new();
                for (k, &(i, x)) in reports.iter().enumerate() {
                    let (lo, hi) = range(i);
                    let mean = (lo + (hi - lo) * x as f64 / 999.0).round() as u64;
                    batch.push((["h0", "h1", "h2"][k % 3], i, mean, 10));
                }
                if let Some(&(i, lie, n, at)) = lies.get(round) {
                    batch.insert(at.min(batch.len()), ("liar", i, lie % 1_000_000_000_000, n));
                }
                for (client, i, mean, n) in batch {
                    t += Duration::from_millis(20);
                    let before: Vec<Option<f64>> = (0..3).map(|j| estimate(&r, j)).collect();
                    r.record_stats("svc", client, &report(&format!("i{i}"), n, 0, mean, 0), t);
                    seen[i][match client { "h0" => 0, "h1" => 1, "h2" => 2, _ => 3 }] = true;
                    for j in 0..3 {
                        let Some(e) = estimate(&r, j) else { continue };
                        proptest::prop_assert!(e >= global.0 - 1e-6 && e <= global.1 + 1e-6,
                            "i{} at {} outside [{}, {}]", j, e, global.0, global.1);
                        // Every honest client has a latest report on j.
                        if seen[j][..3].iter().all(|&s| s) {
                            if let Some(b) = before[j] {
                                proptest::prop_assert!(dist(j, e) <= dist(j, b) + 1e-6,
                                    "{} moved i{} from {} to {}, away from {:?}", client, j, b, e, range(j));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Registers `spec` the way the engine does: check, then apply.
    fn register(
        r: &mut Registry,
        spec: InstanceSpec,
        via: Attachment,
        q: &Quotas,
        now: Instant,
    ) -> Result<(), RegistryError> {
        r.check_register(&spec, TTL, via, now, q)?;
        r.apply_register(spec, TTL, via, now);
        Ok(())
    }

    fn quota_of(e: RegistryError) -> Quota {
        match e {
            RegistryError::Quota(q) => q.quota,
            other => panic!("not a quota refusal: {other:?}"),
        }
    }

    #[test]
    fn instances_per_service_at_the_limit_pass_and_renewals_do_not_count() {
        let now = Instant::now();
        let q = Quotas {
            instances_per_service: 3,
            ..Q
        };
        let mut r = Registry::new();
        for id in ["a", "b", "c"] {
            register(&mut r, spec(id, "127.0.0.1:1"), Attachment::Lease, &q, now).unwrap();
        }
        let e = register(&mut r, spec("d", "127.0.0.1:1"), Attachment::Lease, &q, now).unwrap_err();
        let msg = e.to_string();
        assert_eq!(quota_of(e), Quota::InstancesPerService);
        assert!(
            msg.starts_with(
                "quota instances_per_service exceeded in service \"svc\": it has 3 instances"
            ),
            "{msg}"
        );
        assert!(
            msg.contains("the limit is 3 (lb-server --max-instances-per-service)"),
            "{msg}"
        );
        assert!(r.instance(&spec("d", "x:1").key()).is_none());
        // At the limit, the three renew, reconnect and change their labels.
        let mut labelled = spec("b", "127.0.0.1:1");
        labelled.labels.insert("track".into(), "canary".into());
        register(&mut r, spec("a", "127.0.0.1:1"), Attachment::Lease, &q, now).unwrap();
        register(&mut r, spec("c", "127.0.0.1:1"), STREAM, &q, now).unwrap();
        register(&mut r, labelled, Attachment::Lease, &q, now).unwrap();
        assert_eq!(r.instance_count(), 3);
        // Another service has room of its own; a leaving instance makes room.
        let mut other = spec("a", "127.0.0.1:1");
        other.service = "other".into();
        register(&mut r, other, Attachment::Lease, &q, now).unwrap();
        r.remove(&spec("a", "x:1").key());
        register(&mut r, spec("d", "127.0.0.1:1"), Attachment::Lease, &q, now).unwrap();
        // A restored instance whose backend returns is not a new one.
        let mut restored = Registry::new();
        for id in ["a", "b", "c"] {
            restored.restore(spec(id, "127.0.0.1:1"), Some(TTL), now + TTL);
        }
        assert_eq!(restored.instance_count(), 3);
        register(&mut restored, spec("b", "127.0.0.1:1"), STREAM, &q, now).unwrap();
    }

    #[test]
    fn instances_in_all_services_at_the_limit_pass() {
        let now = Instant::now();
        let q = Quotas { instances: 2, ..Q };
        let mut r = Registry::new();
        let in_service = |service: &str, id: &str| {
            let mut s = spec(id, "127.0.0.1:1");
            s.service = service.into();
            s
        };
        register(&mut r, in_service("x", "a"), Attachment::Lease, &q, now).unwrap();
        register(&mut r, in_service("y", "a"), Attachment::Static, &q, now).unwrap();
        let e = register(&mut r, in_service("z", "a"), Attachment::Lease, &q, now).unwrap_err();
        assert!(
            e.to_string().contains("the daemon holds 2 instances"),
            "{e}"
        );
        assert!(e.to_string().contains("--max-instances)"), "{e}");
        assert_eq!(quota_of(e), Quota::Instances);
        // Renewing one of the two still passes.
        register(&mut r, in_service("x", "a"), Attachment::Lease, &q, now).unwrap();
        assert!(r.expire(now + TTL).len() == 1 && r.instance_count() == 1);
        register(&mut r, in_service("z", "a"), Attachment::Lease, &q, now).unwrap();
    }

    #[test]
    fn labels_over_the_quotas_are_refused_before_anything_else() {
        let now = Instant::now();
        let q = Quotas {
            labels: 2,
            label_bytes: 8,
            ..Q
        };
        let mut r = Registry::new();
        let mut s = spec("a", "127.0.0.1:1");
        s.labels = [("k1", "v"), ("k2", "123456")]
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .into();
        register(&mut r, s.clone(), Attachment::Lease, &q, now).unwrap();
        // The same instance asking for a third label, or a longer one, is refused
        // and keeps what it had.
        let mut more = s.clone();
        more.labels.insert("k3".into(), "v".into());
        let e = register(&mut r, more, Attachment::Lease, &q, now).unwrap_err();
        assert_eq!(quota_of(e), Quota::Labels);
        let mut longer = s.clone();
        longer.labels.insert("k2".into(), "1234567".into());
        let e = register(&mut r, longer, Attachment::Lease, &q, now).unwrap_err();
        assert!(
            e.to_string()
                .contains("label \"k2\" of instance \"a\" has 9 bytes"),
            "{e}"
        );
        assert_eq!(quota_of(e), Quota::LabelBytes);
        assert_eq!(r.instance(&s.key()).map(|i| &i.spec), Some(&s));
    }

    #[test]
    fn the_list_quota_refuses_growth_and_keeps_the_footprint_in_step() {
        let now = Instant::now();
        // Instances with four labels of 60 bytes: the GetService answer is
        // the largest of the service's answers.
        let heavy = |id: &str, addr: &str| {
            let mut s = spec(id, addr);
            for k in ["k1", "k2", "k3", "k4"] {
                s.labels.insert(k.into(), "v".repeat(58));
            }
            s
        };
        let mut r = Registry::new();
        for i in 0..400 {
            r.apply_register(heavy(&format!("i{i:03}"), "127.0.0.1:1"), TTL, STREAM, now);
        }
        let size = |r: &Registry| r.list_size("svc").unwrap();
        let before = size(&r);
        assert_eq!(before.largest(), "GetService answer", "{before:?}");
        // A limit that fits exactly one more instance like the others.
        r.apply_register(heavy("i400", "127.0.0.1:1"), TTL, Attachment::Lease, now);
        assert!(size(&r).bytes() > before.bytes());
        let q = Quotas {
            list_bytes: size(&r).bytes(),
            ..Q
        };
        let e = register(&mut r, heavy("i401", "127.0.0.1:1"), STREAM, &q, now).unwrap_err();
        assert!(
            e.to_string()
                .contains("its GetService answer would take about"),
            "{e}"
        );
        assert!(e.to_string().contains("--max-list-bytes"), "{e}");
        assert_eq!(quota_of(e), Quota::ListBytes);
        // Re-registering as it is does not count twice; a longer address
        // grows the answer and is refused, a shorter one is not.
        register(
            &mut r,
            heavy("i400", "127.0.0.1:1"),
            Attachment::Lease,
            &q,
            now,
        )
        .unwrap();
        let e = register(
            &mut r,
            heavy("i400", "127.0.0.10:1"),
            Attachment::Lease,
            &q,
            later(now),
        )
        .unwrap_err();
        assert_eq!(quota_of(e), Quota::ListBytes);
        register(
            &mut r,
            heavy("i400", "10.0.0.1:1"),
            Attachment::Lease,
            &q,
            later(now),
        )
        .unwrap();
        // The running footprint is what adding up the instances gives.
        let sum = r
            .service("svc")
            .unwrap()
            .instances
            .values()
            .fold(Footprint::default(), |f, i| {
                f.with(quota::instance_bytes(&i.spec))
            });
        assert_eq!(r.service("svc").unwrap().footprint(), sum);
        assert_eq!(r.instance_count(), 401);
        for i in 0..=400 {
            r.remove(&spec(&format!("i{i:03}"), "x:1").key());
        }
        assert!(r.service("svc").is_none() && r.instance_count() == 0);
    }

    /// A moment after `now`, when a lease registered at `now` has expired.
    fn later(now: Instant) -> Instant {
        now + TTL
    }

    #[test]
    fn rules_and_policies_are_checked_against_their_quotas() {
        use crate::policy::PolicyKind;
        use crate::routing::{Match, Target};
        let now = Instant::now();
        let rule = |i: usize| Rule {
            name: format!("r{i}"),
            when: Match {
                request: [("group".to_string(), format!("g{i}"))].into(),
                ..Match::default()
            },
            target: Target::Instance("a".into()),
            exclusive: false,
            strict: false,
        };
        let q = Quotas { rules: 2, ..Q };
        let mut r = Registry::new();
        let cluster = ClusterConfig::default();
        let two: Vec<Rule> = (0..2).map(rule).collect();
        let three: Vec<Rule> = (0..3).map(rule).collect();
        assert_eq!(r.check_routing("svc", &two, &cluster, &q), Ok(()));
        let e = r.check_routing("svc", &three, &cluster, &q).unwrap_err();
        assert!(e.to_string().contains("it would have 3 rules"), "{e}");
        assert_eq!(quota_of(e), Quota::Rules);
        // A service above a lowered quota may still lose rules.
        r.set_rules("svc", three.clone());
        assert_eq!(r.check_routing("svc", &two, &cluster, &q), Ok(()));
        assert_eq!(r.check_routing("svc", &three, &cluster, &q), Ok(()));

        // A hash table that would not fit the list quota is refused.
        for i in 0..1000 {
            r.apply_register(spec(&format!("i{i}"), "127.0.0.1:1"), TTL, STREAM, now);
        }
        let q = Quotas {
            list_bytes: 128 << 10,
            ..Q
        };
        assert!(r.list_size("svc").unwrap().bytes() < q.list_bytes);
        let chash = ServicePolicy::with_kind(PolicyKind::ConsistentHash);
        let e = r.check_policy("svc", &chash, &q).unwrap_err();
        assert_eq!(quota_of(e), Quota::ListBytes);
        let rr = ServicePolicy::with_kind(PolicyKind::RoundRobin);
        assert_eq!(r.check_policy("svc", &rr, &q), Ok(()));
    }

    #[test]
    fn a_server_past_the_keyed_bound_spills_until_its_share_meets_it() {
        let t0 = Instant::now();
        let mut r = Registry::new();
        let mut p = ServicePolicy::with_kind(PolicyKind::ConsistentHash);
        p.load_aware.blackout = Duration::ZERO;
        r.set_policy("svc", p.clone());
        let ids = ["a", "b", "c"];
        for (k, id) in ids.iter().enumerate() {
            let addr = format!("127.0.0.1:{}", k + 1);
            let via = Attachment::Stream {
                session: k as u64 + 1,
            };
            r.apply_register(spec(id, &addr), TTL, via, t0);
        }
        let step = Duration::from_millis(250);
        let report = |r: &mut Registry, qps: [f64; 3], at: Instant| {
            for (k, id) in ids.iter().enumerate() {
                let load = Load {
                    cpu_utilization: 0.5,
                    qps: Some(qps[k]),
                    ..Load::default()
                };
                r.report(&spec(id, "x").key(), k as u64 + 1, load, at)
                    .expect("report");
            }
        };
        // a receives 60 % of the calls against a bound of 1.25 / 3.
        report(&mut r, [60.0, 20.0, 20.0], t0);
        let (plan, again) = r.plan("svc", step, t0);
        assert_eq!(plan.spill, vec![10.0 / 64.0, 0.0, 0.0]);
        assert!(again, "a spilling service stays due");
        // Within the step nothing moves; after it, the spill grows.
        let (plan, _) = r.plan("svc", step, t0 + step / 2);
        assert_eq!(plan.spill[0], 10.0 / 64.0);
        let t1 = t0 + step;
        report(&mut r, [55.0, 22.0, 23.0], t1);
        let (plan, _) = r.plan("svc", step, t1);
        assert!(plan.spill[0] > 10.0 / 64.0, "{:?}", plan.spill);
        // Shares within the bound: the spill eases off to nothing.
        let mut t = t1;
        for _ in 0..20 {
            t += step;
            report(&mut r, [34.0, 33.0, 33.0], t);
            r.plan("svc", step, t);
        }
        let (plan, again) = r.plan("svc", step, t + step);
        assert!(plan.spill.is_empty(), "{:?}", plan.spill);
        assert!(!again);
        // One server without qps: no partial picture, no spill.
        report(&mut r, [60.0, 20.0, 20.0], t + step * 2);
        let quiet = Load {
            cpu_utilization: 0.5,
            ..Load::default()
        };
        r.report(&spec("c", "x").key(), 3, quiet, t + step * 2)
            .expect("report");
        let (plan, _) = r.plan("svc", step, t + step * 2);
        assert!(plan.spill.is_empty(), "{:?}", plan.spill);
        // load_bound=none: nothing spills whatever the shares.
        p.chash.load_bound = f64::INFINITY;
        r.set_policy("svc", p);
        report(&mut r, [60.0, 20.0, 20.0], t + step * 3);
        let (plan, _) = r.plan("svc", step, t + step * 3);
        assert!(plan.spill.is_empty() && plan.load_bound == 0.0);
    }
}
