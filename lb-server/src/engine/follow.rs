//! Following a shared store: changes other replicas commit reach this
//! engine (kube-runtime's reflector: a list, then a watch from its
//! revision, and a new list when the watch cannot continue).
//!
//! A task ([`follow`]) reads [`Store::watch`] from the revision the engine
//! loaded and sends each change to the engine as an input; the engine
//! applies it ([`State::apply_remote`]) like the command that made it
//! elsewhere, without writing anything back, and re-plans. Its own commits
//! come back the same way and change nothing (the state already holds
//! them); a change older than this engine's own later write to the same
//! key is skipped, so a late echo never undoes a newer change.
//!
//! Registrations from elsewhere are listed as [`Attachment::Replica`]: a
//! stream's kept while its record is in the store (the replica holding the
//! stream removes it when the stream ends), a lease's until its TTL from the
//! record's last write (the replica that renews it rewrites it every half
//! TTL, so a lease whose replica died with its backend expires everywhere,
//! each replica deleting the record: idempotent). This daemon's own stream or
//! lease for the same instance wins over the record: a delete that arrives
//! while the backend still streams here (its stream to another replica
//! broke) leaves it listed here, and if the stream here is still up two
//! report intervals later the registration is written again (a backend
//! that died breaks its stream here too, in that time).
//!
//! When the watch fails (the store is unreachable, or has compacted the
//! revisions it would replay) the task loads the whole state again and
//! the engine reconciles with it ([`State::resync`]), then watches from
//! there; it retries every [`RETRY`] until the store answers.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::cluster::ClusterConfig;
use lb_core::model::InstanceKey;
use lb_core::registry::{Attachment, Override};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;

use super::state::State;
use crate::store::{Event, Key, Lifetime, Loaded, Record, Revision, Store, Write};

/// How long the follower waits before trying a failed store again.
pub(crate) const RETRY: Duration = Duration::from_secs(1);
/// Shortest wait before a registration another replica removed, but whose
/// backend is alive here, is written again (otherwise two report
/// intervals: long enough for a backend that died to break its stream
/// here too).
const CONTEST_MIN: Duration = Duration::from_millis(100);

/// What the follower hands the engine.
pub(crate) enum Followed {
    /// A change committed to the store (by another replica, or an echo of
    /// this one's).
    Change(Box<Event>),
    /// Everything the store holds, after a watch that broke.
    Everything(Box<Loaded>),
}

/// Follows `store` from revision `after` until the engine's input closes.
pub(crate) async fn follow<I: From<Followed>>(
    store: Arc<dyn Store>,
    mut after: Revision,
    tx: mpsc::Sender<I>,
) {
    let mut reload = false;
    loop {
        if reload {
            match store.load().await {
                Ok(loaded) => {
                    after = loaded.revision;
                    let all = Followed::Everything(Box::new(loaded));
                    if tx.send(all.into()).await.is_err() {
                        return;
                    }
                    reload = false;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot load the shared store; retrying");
                    if pause(&tx).await {
                        return;
                    }
                    continue;
                }
            }
        }
        let mut events = match store.watch(after) {
            Ok(events) => events,
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the shared store; retrying");
                reload = true;
                if pause(&tx).await {
                    return;
                }
                continue;
            }
        };
        while let Some(item) = events.next().await {
            match item {
                Ok(event) => {
                    after = after.max(event.revision);
                    if tx
                        .send(Followed::Change(Box::new(event)).into())
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, after, "the watch of the shared store broke; loading it again");
                    // Compacted or lagged, the changes in between are gone;
                    // unreachable, the watch might resume, but one range
                    // read settles both: the whole state is read again.
                    reload = true;
                    break;
                }
            }
        }
        if pause(&tx).await {
            return;
        }
    }
}

/// Waits [`RETRY`]; returns whether the engine has stopped.
async fn pause<I>(tx: &mpsc::Sender<I>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(RETRY) => false,
        _ = tx.closed() => true,
    }
}

impl State {
    /// Applies a change another replica (or this one) committed. Returns
    /// whether it changed anything here.
    pub(crate) fn apply_remote(&mut self, key: Key, value: Option<Record>, now: Instant) -> bool {
        match (key, value) {
            (_, Some(Record::Policy { service, policy })) => {
                if *self.registry.policy(&service) == *policy {
                    return false;
                }
                tracing::info!(%service, policy = policy.kind.name(), "policy set by another replica");
                self.registry.set_policy(&service, *policy);
                self.replanner.changed(&service);
            }
            (Key::Policy(service), None) => {
                let default = self.config.default_service_policy();
                if self.registry.service(&service).is_none()
                    || *self.registry.policy(&service) == default
                {
                    return false;
                }
                self.registry.set_policy(&service, default);
                self.registry.forget_if_default(&service);
                self.replanner.changed(&service);
            }
            (
                _,
                Some(Record::Routing {
                    service,
                    rules,
                    cluster,
                }),
            ) => return self.set_routing(&service, rules, cluster),
            (Key::Routing(service), None) => {
                if self.registry.service(&service).is_none() {
                    return false;
                }
                let changed = self.set_routing(&service, Vec::new(), ClusterConfig::default());
                self.registry.forget_if_default(&service);
                return changed;
            }
            (_, Some(Record::Override { key, over })) => {
                return self.set_override_from(&key, over, now)
            }
            (Key::Override(key), None) => {
                return self.set_override_from(&key, Override::default(), now)
            }
            (_, Some(Record::Token(t))) => {
                if self.tokens.get(&t.id) == Some(&t) {
                    return false;
                }
                self.tokens.insert(t.id.clone(), t);
                self.tokens_changed = true;
            }
            (Key::Token(id), None) => {
                if self.tokens.remove(&id).is_none() {
                    return false;
                }
                self.tokens_changed = true;
            }
            (
                _,
                Some(Record::Instance {
                    spec,
                    lifetime,
                    owner,
                }),
            ) => {
                let key = spec.key();
                let current = self.registry.instance(&key);
                if current.is_some_and(|i| {
                    i.spec == spec
                        && !matches!(i.attachment, Attachment::Restored | Attachment::Replica)
                }) {
                    return false;
                }
                let listed = match lifetime {
                    Lifetime::Static => {
                        self.registry.restore(spec.clone(), None, now);
                        true
                    }
                    // Kept while its stream's replica keeps the record.
                    Lifetime::Stream(ttl) => self.registry.adopt(spec.clone(), ttl, None, now),
                    // The replica renewing it rewrites it every half TTL
                    // (`State::register`); unrenewed, it expires here too.
                    Lifetime::Lease(ttl) => {
                        self.registry.adopt(spec.clone(), ttl, Some(now + ttl), now)
                    }
                };
                if !listed {
                    return false;
                }
                match owner {
                    Some(o) => self.owners.insert(key.clone(), o),
                    None => self.owners.remove(&key),
                };
                tracing::info!(service = %key.service, instance = %key.instance_id, "instance registered through another replica");
                self.replanner.changed(&key.service);
            }
            (Key::Instance(key), None) => {
                let Some(i) = self.registry.instance(&key) else {
                    return false;
                };
                if matches!(i.attachment, Attachment::Stream { .. } | Attachment::Lease) {
                    // Its backend is alive here: perhaps only its stream to
                    // the replica that removed it broke. If it is still
                    // alive here a moment later (its stream here did not
                    // break too: the backend did not die), it is written
                    // again ([`State::settle_contested`]).
                    let due = now + (self.config.report_interval * 2).max(CONTEST_MIN);
                    self.contested.insert(key, due);
                    return false;
                }
                self.registry.remove(&key);
                self.owners.remove(&key);
                self.end_session(&key, "deregistered through another replica");
                tracing::info!(service = %key.service, instance = %key.instance_id, "instance removed through another replica");
                self.replanner.changed(&key.service);
            }
        }
        true
    }

    /// Writes again the registrations another replica removed while their
    /// backends still stream (or renew) here, once the moment to be sure
    /// has passed.
    pub(crate) fn settle_contested(&mut self, now: Instant) {
        if self.contested.values().all(|due| *due > now) {
            return;
        }
        let due: Vec<InstanceKey> = self
            .contested
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.contested.remove(&key);
            let Some(i) = self.registry.instance(&key) else {
                continue;
            };
            let lifetime = match i.attachment {
                Attachment::Stream { .. } => Lifetime::Stream(i.ttl),
                Attachment::Lease => Lifetime::Lease(i.ttl),
                _ => continue,
            };
            tracing::info!(service = %key.service, instance = %key.instance_id, "removed by another replica but alive here: registered again");
            let record = Record::Instance {
                spec: i.spec.clone(),
                lifetime,
                owner: self.owners.get(&key).cloned(),
            };
            self.persist(Write::put(record));
        }
    }

    fn set_routing(
        &mut self,
        service: &str,
        rules: Vec<lb_core::routing::Rule>,
        cluster: ClusterConfig,
    ) -> bool {
        let same = self
            .registry
            .service(service)
            .is_some_and(|s| s.rules == rules && s.cluster == cluster);
        if same
            || (self.registry.service(service).is_none()
                && rules.is_empty()
                && cluster == ClusterConfig::default())
        {
            return false;
        }
        tracing::info!(%service, rules = rules.len(), "routing set by another replica");
        self.registry.set_rules(service, rules);
        self.registry.set_cluster(service, cluster);
        self.replanner.changed(service);
        true
    }

    fn set_override_from(&mut self, key: &InstanceKey, over: Override, now: Instant) -> bool {
        let before = self.registry.override_of(key);
        if before == over {
            return false;
        }
        self.registry.set_override(key, over, now);
        if before.drained != over.drained {
            self.tell_drain(key, over.drained);
        }
        self.replanner.changed(&key.service);
        true
    }

    /// Reconciles with everything the store holds (after a watch that could
    /// not continue): every record is applied, and what this daemon holds
    /// from the store but the store no longer has is removed.
    pub(crate) fn resync(&mut self, loaded: Loaded, now: Instant) -> bool {
        let mut changed = false;
        let mut present = BTreeSet::new();
        for (record, _) in loaded.records {
            present.insert(record.key());
            changed |= self.apply_remote(record.key(), Some(record), now);
        }
        let mut gone: Vec<Key> = Vec::new();
        let default = self.config.default_service_policy();
        for (name, s) in self.registry.services() {
            if s.policy != default {
                gone.push(Key::Policy(name.clone()));
            }
            if !s.rules.is_empty() || s.cluster != ClusterConfig::default() {
                gone.push(Key::Routing(name.clone()));
            }
            for i in s.instances.values() {
                if matches!(i.attachment, Attachment::Static | Attachment::Replica) {
                    gone.push(Key::Instance(i.spec.key()));
                }
            }
        }
        gone.extend(
            self.registry
                .overrides()
                .map(|(k, _)| Key::Override(k.clone())),
        );
        gone.extend(self.tokens.keys().map(|id| Key::Token(id.clone())));
        for key in gone {
            if !present.contains(&key) {
                changed |= self.apply_remote(key, None, now);
            }
        }
        changed
    }
}

/// Whether an event is older than this engine's own later write to its key
/// (`own`: key → revision of the last commit here that wrote it); drops
/// entries the watch has caught up with.
pub(crate) fn superseded(own: &mut std::collections::HashMap<Key, Revision>, e: &Event) -> bool {
    match own.get(&e.key) {
        Some(&mine) if e.revision < mine => true,
        Some(_) => {
            own.remove(&e.key);
            false
        }
        None => false,
    }
}
