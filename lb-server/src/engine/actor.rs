//! The engine task: takes inputs in batches, applies them, and after each
//! batch (or sweep) re-plans, commits, publishes a snapshot and answers.
//!
//! Per batch, in this order: apply every input (commands stage their store
//! writes); commit the staged writes once (group commit); plan and publish
//! what the re-plan scheduler says is due; mark the store revision the
//! plans reflect; publish the readers' snapshot; answer the batch's
//! commands, each with the commit's error if it failed.
//! The sweep tick (every [`SWEEP_INTERVAL`]) expires registrations, runs
//! the clients' evidence every [`evidence::INTERVAL`] (outlier detection,
//! outcome weights, latency estimates: lb-core's [`evidence`] rule),
//! readmits ejected instances when due and gives damped re-plans their turn.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::evidence;
use lb_core::model::{ClientStats, GrpclbStats, InstanceKey, Load};
use lb_core::registry::Registry;
use tokio::sync::{mpsc, oneshot, watch};

use super::cmd::{Answer, Dispatch};
use super::follow::Followed;
use super::snapshot::{self, Snapshot};
use super::state::State;
use super::{now, EngineHandle, Hub};
use crate::config::Config;
use crate::store::{Key, Lifetime, Record, Revision, Store, StoreError};

/// How often the engine looks for expired instances and due re-plans.
const SWEEP_INTERVAL: Duration = Duration::from_millis(20);
/// Most inputs applied in one batch (one commit).
const MAX_BATCH: usize = 1024;
/// Longest wait for the store: a commit or a recovery that takes longer is
/// a failure (degraded mode), so a stuck disk cannot stall the engine.
const STORE_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a failing store is tried again.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);
/// Inputs waiting for the engine before senders wait.
const QUEUE: usize = 4096;

/// What the edges send the engine.
pub(crate) enum Input {
    /// A load report on an attached stream.
    Report {
        key: InstanceKey,
        session: u64,
        load: Load,
    },
    /// A stream broke (or ended without `drain`).
    Detach { key: InstanceKey, session: u64 },
    /// A client's call statistics, with the witness they count for.
    Stats {
        service: String,
        client: String,
        stats: ClientStats,
    },
    /// A stock client's grpclb stats.
    GrpclbStats { service: String, stats: GrpclbStats },
    /// A command with an answer.
    Command(Box<dyn Dispatch>),
    /// Stop changing state; acknowledged once frozen.
    Freeze(oneshot::Sender<()>),
    /// From the shared store's follower (see [`super::follow`]).
    Followed(Followed),
}

impl From<Followed> for Input {
    fn from(f: Followed) -> Input {
        Input::Followed(f)
    }
}

impl std::fmt::Debug for Input {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Input::Report { .. } => "Report",
            Input::Detach { .. } => "Detach",
            Input::Stats { .. } => "Stats",
            Input::GrpclbStats { .. } => "GrpclbStats",
            Input::Command(_) => "Command",
            Input::Freeze(_) => "Freeze",
            Input::Followed(_) => "Followed",
        })
    }
}

struct Actor {
    st: State,
    store: Arc<dyn Store>,
    /// Writes of events (a broken stream, an expiry) whose commit failed:
    /// the facts stand, so they are written with the next commit.
    unwritten: Vec<crate::store::Write>,
    /// While the store is failing: when to try it again.
    next_probe: Option<Instant>,
    snapshot: watch::Sender<Arc<Snapshot>>,
    /// When the snapshot was last published.
    published: Instant,
    /// Something readers see changed since.
    stale: bool,
    sweeps: u64,
    /// When outlier detection next runs over the interval's outcomes.
    next_health: Instant,
    /// A shared store: the revision of this engine's last commit to each
    /// key the watch has not yet echoed (older remote changes to it are
    /// skipped; see [`super::follow::superseded`]).
    own: Option<HashMap<Key, Revision>>,
    /// A recovery running ([`Actor::probe`]).
    probing: Option<tokio::task::JoinHandle<Result<(), StoreError>>>,
    /// The store revision the state holds now (loaded, committed here, or
    /// applied from the watch); published to the hub after each batch's
    /// plans.
    revision: Revision,
    /// Inputs that arrived while the engine waited for the store, other
    /// than load reports: applied, in their order, as the next batch.
    deferred: Vec<Input>,
}

/// One batch: its commands (run after its events), their answers waiting
/// for the commit, and what to undo if the commit fails.
#[derive(Default)]
struct Batch {
    commands: Vec<Box<dyn Dispatch>>,
    answers: Vec<Box<dyn Answer>>,
    frozen: Vec<oneshot::Sender<()>>,
    /// What the commands may change, as it was before they ran.
    before_commands: Option<Before>,
}

/// The state commands change, saved before they run (cheap: the registry
/// is copy-on-write, the rest is small).
struct Before {
    registry: Registry,
    /// How many of the staged writes came before the commands (the events').
    writes: usize,
    tokens: std::collections::BTreeMap<String, crate::auth::TokenRecord>,
    owners: std::collections::HashMap<lb_core::model::InstanceKey, String>,
}

/// `op`, or a timeout error after [`STORE_TIMEOUT`].
async fn bounded<T>(
    op: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(STORE_TIMEOUT, op)
        .await
        .unwrap_or_else(|_| {
            Err(StoreError::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("the store did not answer within {STORE_TIMEOUT:?}"),
            )))
        })
}

/// Keeps the last of several writes to one key (in their order): what a
/// long degraded spell leaves unwritten stays bounded by the registry's size.
fn supersede(writes: &mut Vec<crate::store::Write>) {
    let mut seen = std::collections::HashSet::new();
    let mut kept: Vec<_> = writes
        .drain(..)
        .rev()
        .filter(|w| seen.insert(w.key.clone()))
        .collect();
    kept.reverse();
    *writes = kept;
}

/// Loads the store, publishes the restored plans and starts the engine task.
/// Returns once subscribers can be served.
pub async fn start(
    store: Arc<dyn Store>,
    config: Config,
    auth: Arc<crate::auth::Auth>,
) -> Result<(EngineHandle, tokio::task::JoinHandle<()>), StoreError> {
    let generation = bounded(store.next_generation()).await?;
    let hub = Arc::new(Hub::new(generation));
    hub.state.set_id(store.identity());
    let default_policy = config.default_service_policy();
    let loaded = bounded(store.load()).await?;
    let loaded_at = loaded.revision;
    let shared = store.shared();
    let follower = shared.then(|| Arc::clone(&store));
    let now = now();
    let deadline = now + config.restore_grace;
    let mut registry = Registry::with_default_policy(default_policy.clone());
    // Settings first, then the instances they apply to.
    let mut records: Vec<Record> = loaded.records.into_iter().map(|(r, _)| r).collect();
    records.sort_by_key(|r| match r {
        Record::Policy { .. } => 0,
        Record::Routing { .. } => 1,
        Record::Override { .. } => 2,
        Record::Instance { .. } => 3,
        Record::Token(_) => 4,
    });
    let mut tokens = std::collections::BTreeMap::new();
    let mut owners = std::collections::HashMap::new();
    let mut replan = BTreeSet::new();
    let mut restored = 0usize;
    for r in records {
        match r {
            Record::Policy { service, policy } => registry.set_policy(&service, *policy),
            Record::Routing {
                service,
                rules,
                cluster,
            } => {
                registry.set_rules(&service, rules);
                registry.set_cluster(&service, cluster);
                replan.insert(service);
            }
            Record::Override { key, over } => registry.set_override(&key, over, now),
            Record::Token(t) => {
                tokens.insert(t.id.clone(), t);
            }
            Record::Instance {
                spec,
                lifetime,
                owner,
            } => {
                replan.insert(spec.service.clone());
                if let Some(owner) = owner {
                    owners.insert(spec.key(), owner);
                }
                let (ttl, until) = match lifetime {
                    Lifetime::Stream(ttl) => (Some(ttl), deadline),
                    // The lease may have been renewed just before the stop.
                    Lifetime::Lease(ttl) => (Some(ttl), deadline.max(now + ttl)),
                    Lifetime::Static => (None, deadline),
                };
                registry.restore(spec, ttl, until);
                restored += 1;
            }
        }
    }
    // Warm restart: the last reports before the stop (see `crate::warm`).
    let warmed = match crate::warm::read(&config.data_dir, std::time::SystemTime::now()) {
        Ok(entries) => crate::warm::restore(&mut registry, entries, now, config.restore_grace),
        Err(e) => {
            tracing::warn!(error = %e, "load snapshot not used: this start is cold");
            0
        }
    };
    auth.replace(tokens.values().cloned());
    let mut st = State::new(registry, hub.clone(), config, auth);
    st.tokens = tokens;
    st.owners = owners;
    for service in &replan {
        st.replanner.changed(service);
    }
    let (snapshot, readers) = watch::channel(Arc::new(Snapshot::default()));
    let mut actor = Actor {
        st,
        store,
        unwritten: Vec::new(),
        next_probe: None,
        snapshot,
        published: now,
        stale: true,
        sweeps: 0,
        next_health: now + evidence::INTERVAL,
        own: shared.then(HashMap::new),
        revision: loaded_at,
        probing: None,
        deferred: Vec::new(),
    };
    actor.replan(now);
    actor.st.hub.state.advance(loaded_at);
    actor.publish_snapshot(now);
    tracing::info!(
        generation,
        restored,
        warmed,
        grace = ?actor.st.config.restore_grace,
        "registry loaded"
    );
    let (tx, rx) = mpsc::channel(QUEUE);
    if let Some(store) = follower {
        tokio::spawn(super::follow::follow(store, loaded_at, tx.clone()));
    }
    let task = tokio::spawn(actor.run(rx));
    Ok((
        EngineHandle {
            tx,
            hub,
            snapshot: readers,
            default_policy: Arc::new(default_policy),
        },
        task,
    ))
}

impl Actor {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) {
        let mut buf = Vec::with_capacity(MAX_BATCH);
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut batch = Batch::default();
            if !self.deferred.is_empty() {
                // They came before anything still queued.
                buf.append(&mut self.deferred);
            } else {
                tokio::select! {
                    n = rx.recv_many(&mut buf, MAX_BATCH) => {
                        if n == 0 {
                            break;
                        }
                    }
                    _ = sweep.tick() => self.sweep(now()),
                }
            }
            if !buf.is_empty() {
                let now = now();
                for input in buf.drain(..) {
                    self.apply(input, now, &mut batch);
                }
                self.run_commands(&mut batch, now);
            }
            self.finish(batch, now(), &mut rx).await;
        }
    }

    /// Waits for the store's answer to `op` (at most [`STORE_TIMEOUT`])
    /// while still taking load reports, so that a slow or failing store
    /// (an etcd without a quorum, a stalled disk) never ages what the daemon
    /// plans from and shows. Each report is recorded in the registry and in
    /// `rollback` (the registry a failed commit returns to), and readers'
    /// snapshots go on every [`snapshot::INTERVAL`], taken from `rollback`
    /// when there is one: readers never see a change the store may refuse.
    /// Every other input waits in [`Actor::deferred`] for the next batch,
    /// in its order.
    async fn wait_for_store<T>(
        &mut self,
        op: impl std::future::Future<Output = Result<T, StoreError>>,
        rx: &mut mpsc::Receiver<Input>,
        mut rollback: Option<&mut Registry>,
    ) -> Result<T, StoreError> {
        let op = bounded(op);
        tokio::pin!(op);
        let mut open = true;
        loop {
            tokio::select! {
                biased;
                result = &mut op => return result,
                input = rx.recv(), if open => match input {
                    Some(Input::Report { key, session, load }) => {
                        let now = now();
                        if let Some(r) = rollback.as_deref_mut() {
                            let _ = r.report(&key, session, load.clone(), now);
                        }
                        self.record(&key, session, load, now);
                        if now.saturating_duration_since(self.published) >= snapshot::INTERVAL {
                            let shown = rollback.as_deref().unwrap_or(&self.st.registry);
                            self.snapshot.send_replace(Arc::new(Snapshot::new(shown.clone())));
                            self.published = now;
                        }
                    }
                    Some(input) => self.deferred.push(input),
                    None => open = false,
                },
            }
        }
    }

    /// Records a load report (a stale session's is a race with its removal;
    /// the stream has been, or is being, told via its directives).
    fn record(&mut self, key: &InstanceKey, session: u64, load: Load, now: Instant) {
        let st = &mut self.st;
        if let Ok(circuit) = st.registry.report(key, session, load, now) {
            st.replanner
                .load_reported(&st.registry, &key.service, circuit);
            self.stale = true;
        }
    }

    fn apply(&mut self, input: Input, now: Instant, batch: &mut Batch) {
        let st = &mut self.st;
        match input {
            Input::Report { key, session, load } => self.record(&key, session, load, now),
            Input::Detach { key, session } => {
                if !st.frozen && st.registry.detach(&key, session) {
                    tracing::info!(service = %key.service, instance = %key.instance_id, "stream ended; instance removed");
                    st.forget(&key);
                    st.drop_session(&key);
                    self.stale = true;
                }
            }
            Input::Stats {
                service,
                client,
                stats,
            } => {
                let ejected = st.registry.record_stats(&service, &client, &stats, now);
                st.replanner.stats_reported(&st.registry, &service, ejected);
                self.stale = true;
            }
            Input::GrpclbStats { service, stats } => {
                st.registry.record_grpclb(&service, &stats);
                self.stale = true;
            }
            Input::Command(c) => batch.commands.push(c),
            Input::Freeze(reply) => {
                st.frozen = true;
                batch.frozen.push(reply);
            }
            Input::Followed(Followed::Change(event)) => {
                let event = *event;
                self.revision = self.revision.max(event.revision);
                let stale = self
                    .own
                    .as_mut()
                    .is_some_and(|own| super::follow::superseded(own, &event));
                if !st.frozen && !stale && st.apply_remote(event.key, event.value, now) {
                    self.stale = true;
                }
            }
            Input::Followed(Followed::Everything(loaded)) => {
                self.revision = self.revision.max(loaded.revision);
                if !st.frozen && st.resync(*loaded, now) {
                    self.stale = true;
                }
            }
        }
    }

    fn sweep(&mut self, now: Instant) {
        let st = &mut self.st;
        self.sweeps += 1;
        if self.sweeps.is_multiple_of(50) {
            st.hub.collect_garbage();
        }
        if st.frozen {
            return;
        }
        st.settle_contested(now);
        if now >= self.next_health {
            self.next_health = now + evidence::INTERVAL;
            for judged in st.registry.evaluate_health(now) {
                for e in &judged.events {
                    tracing::info!(service = %judged.service, event = ?e, "health");
                }
                st.replanner.evidence_judged(&st.registry, &judged);
                self.stale = true;
            }
        } else if st.registry.next_readmission().is_some_and(|t| t <= now) {
            for (service, events) in st.registry.readmit(now) {
                for e in &events {
                    tracing::info!(%service, event = ?e, "health");
                }
                st.replanner.changed(&service);
                self.stale = true;
            }
        }
        if st.registry.next_expiry().is_none_or(|t| t > now) {
            return;
        }
        for key in st.registry.expire(now) {
            tracing::info!(service = %key.service, instance = %key.instance_id, "registration expired");
            st.forget(&key);
            st.end_session(&key, "registration expired: no load report within its TTL");
            self.stale = true;
        }
    }

    /// Plans what is due and publishes what changed; returns whether it
    /// published anything.
    fn replan(&mut self, now: Instant) -> bool {
        let st = &mut self.st;
        let shed_step = st.config.report_interval;
        let mut published = false;
        for p in st.replanner.run(&mut st.registry, now, shed_step) {
            let service = p.service.clone();
            let listed = p.plan.servers.iter().filter(|s| !s.drop).count();
            if st.hub.publish(p) {
                tracing::debug!(%service, instances = listed, "plan published");
                published = true;
            }
        }
        published
    }

    fn publish_snapshot(&mut self, now: Instant) {
        self.snapshot
            .send_replace(Arc::new(Snapshot::new(self.st.registry.clone())));
        self.published = now;
        self.stale = false;
    }

    /// Runs the batch's commands, after its events (so that a failed commit
    /// undoes the commands alone: events are facts that happened), from a
    /// snapshot of the registry to return to.
    fn run_commands(&mut self, batch: &mut Batch, now: Instant) {
        if batch.commands.is_empty() {
            return;
        }
        batch.before_commands = Some(Before {
            registry: self.st.registry.clone(),
            writes: self.st.writes.len(),
            tokens: self.st.tokens.clone(),
            owners: self.st.owners.clone(),
        });
        for c in std::mem::take(&mut batch.commands) {
            batch.answers.push(c.dispatch(&mut self.st, now));
        }
    }

    /// Commits what the batch staged, with what earlier failed commits left
    /// of events. A failed commit undoes the batch's commands (their callers
    /// hear why), keeps its events' writes for the next commit, and puts the
    /// engine in degraded mode: commands that would write are refused until
    /// the store recovers (see [`Actor::probe`]).
    async fn commit(
        &mut self,
        batch: &mut Batch,
        now: Instant,
        rx: &mut mpsc::Receiver<Input>,
    ) -> Result<(), String> {
        let mut staged = std::mem::take(&mut self.st.writes);
        let events = batch
            .before_commands
            .as_ref()
            .map_or(staged.len(), |b| b.writes);
        if let Some(cause) = self.st.fault.clone() {
            // Only the probe writes while the store fails; commands that
            // would write were refused (one that wrote anyway is undone).
            let commands = staged.split_off(events);
            self.unwritten.extend(staged);
            supersede(&mut self.unwritten);
            if commands.is_empty() {
                return Ok(());
            }
            self.undo_commands(batch, now);
            return Err(cause);
        }
        if staged.is_empty() && self.unwritten.is_empty() {
            return Ok(());
        }
        let mut writes = std::mem::take(&mut self.unwritten);
        let carried = writes.len();
        writes.extend(staged);
        let store = Arc::clone(&self.store);
        let rollback = batch.before_commands.as_mut().map(|b| &mut b.registry);
        let e = match self
            .wait_for_store(store.commit(writes.clone()), rx, rollback)
            .await
        {
            Ok(revision) => {
                self.revision = self.revision.max(revision);
                // An echo filter needs one revision per key: a commit the
                // store split into several transactions has several.
                let atomic = self.store.atomic_writes().is_none_or(|n| writes.len() <= n);
                match &mut self.own {
                    Some(own) if atomic => {
                        own.extend(writes.into_iter().map(|w| (w.key, revision)));
                    }
                    Some(own) => {
                        for w in &writes {
                            own.remove(&w.key);
                        }
                    }
                    None => {}
                }
                return Ok(());
            }
            Err(e) => e,
        };
        let cause = e.to_string();
        writes.truncate(carried + events);
        self.unwritten = writes;
        supersede(&mut self.unwritten);
        self.undo_commands(batch, now);
        self.degrade(&cause, now);
        Err(cause)
    }

    /// Returns the registry to before the batch's commands (their callers
    /// are told they failed) and re-plans every service from it.
    fn undo_commands(&mut self, batch: &mut Batch, now: Instant) {
        let Some(before) = batch.before_commands.take() else {
            return;
        };
        self.st.registry = before.registry;
        self.st.tokens = before.tokens;
        self.st.owners = before.owners;
        self.st.tokens_changed = false;
        let services: Vec<String> = self
            .st
            .registry
            .services()
            .map(|(n, _)| n.clone())
            .collect();
        for service in &services {
            self.st.replanner.changed(service);
        }
        self.replan(now);
    }

    /// Enters (or stays in) degraded mode for `cause`.
    fn degrade(&mut self, cause: &str, now: Instant) {
        self.st.hub.store.failed(cause);
        if self.st.fault.is_none() {
            tracing::error!(error = %cause, "store failing: changes are refused until it recovers; lists and load reports go on");
        }
        self.st.fault = Some(cause.to_string());
        self.next_probe = Some(now + PROBE_INTERVAL);
    }

    /// In degraded mode, once per [`PROBE_INTERVAL`]: asks the store to
    /// recover and, if it does, writes what events left unwritten and leaves
    /// degraded mode. The recovery runs as a task of its own (a store that
    /// does not answer must not stall reports and plans); its answer is
    /// taken at the first batch after it arrives.
    async fn probe(&mut self, now: Instant, rx: &mut mpsc::Receiver<Input>) {
        let mut result = match self.probing.take() {
            Some(task) if task.is_finished() => task
                .await
                .unwrap_or_else(|e| Err(StoreError::Io(std::io::Error::other(e.to_string())))),
            Some(task) => {
                self.probing = Some(task);
                return;
            }
            None => {
                if self.next_probe.is_none_or(|t| now < t) {
                    return;
                }
                let store = Arc::clone(&self.store);
                self.probing = Some(tokio::spawn(async move { bounded(store.recover()).await }));
                self.next_probe = Some(now + PROBE_INTERVAL);
                return;
            }
        };
        if result.is_ok() && !self.unwritten.is_empty() {
            let store = Arc::clone(&self.store);
            let unwritten = self.unwritten.clone();
            result = self
                .wait_for_store(store.commit(unwritten), rx, None)
                .await
                .map(|_| ());
        }
        match result.map_err(|e| e.to_string()) {
            Ok(()) => {
                self.unwritten.clear();
                self.next_probe = None;
                if let Some(cause) = self.st.fault.take() {
                    tracing::info!(was = %cause, "store recovered: changes are accepted again");
                }
                self.st.hub.store.recovered();
            }
            Err(cause) => self.degrade(&cause, now),
        }
    }

    async fn finish(&mut self, mut batch: Batch, now: Instant, rx: &mut mpsc::Receiver<Input>) {
        // Commit first: a plan then never shows a change the store refused,
        // and every list carries a state revision that covers what it
        // shows (a replica's client must not take an older state for it).
        let committed = self.commit(&mut batch, now, rx).await;
        let new_plans = self.replan(now);
        // After the plans: a list read now reflects every change up to it.
        self.st.hub.state.advance(self.revision);
        if self.st.fault.is_some() {
            self.probe(now, rx).await;
        }
        // Readers see a command's effect before its caller hears back, and
        // never an older state than the plans clients were just sent.
        let commands = !batch.answers.is_empty();
        let due = now.saturating_duration_since(self.published) >= snapshot::INTERVAL;
        if commands || (self.stale && (new_plans || due)) {
            self.publish_snapshot(now);
        }
        // Tokens take effect once durable (a failed commit undid them).
        if std::mem::take(&mut self.st.tokens_changed) {
            self.st.auth.replace(self.st.tokens.values().cloned());
        }
        for a in batch.answers {
            a.send(&committed);
        }
        for f in batch.frozen {
            let _ = f.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::Auth;
    use crate::engine::cmd::{Attach, SetPolicy};
    use crate::store::SledStore;
    use lb_core::model::InstanceSpec;
    use lb_core::policy::{PolicyChange, PolicyKind, ServicePolicy};

    fn spec(id: &str) -> InstanceSpec {
        InstanceSpec::new("svc", id, "127.0.0.1:9")
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
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let (engine, _task) = start(store, config, Arc::new(Auth::open(Default::default())))
            .await
            .unwrap();
        engine
            .run(SetPolicy {
                service: "svc".into(),
                change: PolicyChange::parse(policy.kind.name(), &policy.params(), true).unwrap(),
                create: true,
            })
            .await
            .unwrap();
        let mut sessions = Vec::new();
        for id in ["a", "b"] {
            let (tx, rx) = mpsc::channel(8);
            let a = engine
                .run(Attach {
                    spec: spec(id),
                    ttl: None,
                    owner: None,
                    directives: tx,
                })
                .await
                .unwrap();
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

    /// An engine over `store` (in `dir`) with instance "a" attached: the
    /// engine, its task, a's session, and a's directives (kept open).
    async fn with_a(
        store: Arc<dyn Store>,
        dir: &std::path::Path,
    ) -> (
        EngineHandle,
        tokio::task::JoinHandle<()>,
        u64,
        mpsc::Receiver<crate::engine::Directive>,
    ) {
        let (engine, task) = start(
            store,
            Config::new(dir),
            Arc::new(Auth::open(Default::default())),
        )
        .await
        .unwrap();
        let (tx, rx) = mpsc::channel(8);
        let a = engine
            .run(Attach {
                spec: spec("a"),
                ttl: None,
                owner: None,
                directives: tx,
            })
            .await
            .unwrap();
        (engine, task, a.session, rx)
    }

    /// Sled whose commits, once `stall` is set, never answer (a disk that
    /// hangs, an etcd without a quorum).
    struct Stalling {
        inner: SledStore,
        stall: std::sync::atomic::AtomicBool,
    }

    impl Store for Stalling {
        fn load(&self) -> crate::store::BoxFuture<'_, Result<crate::store::Loaded, StoreError>> {
            self.inner.load()
        }
        fn next_generation(&self) -> crate::store::BoxFuture<'_, Result<u64, StoreError>> {
            self.inner.next_generation()
        }
        fn commit(
            &self,
            writes: Vec<crate::store::Write>,
        ) -> crate::store::BoxFuture<'_, Result<Revision, StoreError>> {
            if self.stall.load(std::sync::atomic::Ordering::SeqCst) {
                return Box::pin(std::future::pending());
            }
            self.inner.commit(writes)
        }
        fn watch(&self, after: Revision) -> Result<crate::store::EventStream, StoreError> {
            self.inner.watch(after)
        }
        fn recover(&self) -> crate::store::BoxFuture<'_, Result<(), StoreError>> {
            Box::pin(std::future::pending())
        }
        fn identity(&self) -> String {
            self.inner.identity()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_commit_neither_ages_reports_nor_shows_its_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Stalling {
            inner: SledStore::open(dir.path()).unwrap(),
            stall: false.into(),
        });
        let (engine, _task, a, _rx) =
            with_a(Arc::clone(&store) as Arc<dyn Store>, dir.path()).await;
        engine.report(spec("a").key(), a, busy(1)).await;
        store.stall.store(true, std::sync::atomic::Ordering::SeqCst);
        let change = {
            let engine = engine.clone();
            tokio::spawn(async move {
                engine
                    .run(crate::engine::cmd::SetOverride {
                        key: spec("a").key(),
                        weight: Some(Some(9)),
                        drained: None,
                    })
                    .await
            })
        };
        // Two seconds into the commit's wait: a report is shown at once, and
        // the change the store has not taken is not.
        tokio::time::sleep(Duration::from_secs(2)).await;
        engine.report(spec("a").key(), a, busy(7)).await;
        tokio::time::sleep(SWEEP_INTERVAL).await;
        let shown = |engine: &EngineHandle| {
            let views = engine.views(Some("svc"));
            let i = &views[0].instances[0];
            let (load, age) = i.load.clone().expect("a load");
            (load.active_requests, age, i.over.weight)
        };
        let (active, age, weight) = shown(&engine);
        assert_eq!((active, weight), (7, None));
        assert!(age <= SWEEP_INTERVAL, "{age:?}");
        // The commit fails at the store's timeout; the report stands.
        assert!(change.await.unwrap().is_err());
        let (active, age, weight) = shown(&engine);
        assert_eq!((active, weight), (7, None));
        assert!(
            age >= STORE_TIMEOUT - Duration::from_secs(2) - SWEEP_INTERVAL,
            "{age:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn readers_see_a_command_at_once_and_reports_within_the_interval() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SledStore::open(dir.path()).unwrap());
        let (engine, _task, a, _rx) = with_a(store, dir.path()).await;
        let views = engine.views(Some("svc"));
        assert_eq!(views[0].instances.len(), 1, "the registration is visible");
        assert!(views[0].instances[0].load.is_none());
        engine.report(spec("a").key(), a, busy(7)).await;
        tokio::time::sleep(snapshot::INTERVAL + SWEEP_INTERVAL * 2).await;
        let views = engine.views(Some("svc"));
        let load = views[0].instances[0]
            .load
            .as_ref()
            .map(|(l, _)| l.active_requests);
        assert_eq!(load, Some(7));
    }
}
