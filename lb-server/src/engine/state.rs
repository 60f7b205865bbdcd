//! The state the engine task owns, and the steps every command shares:
//! register, forget, persist, tell a stream.
//!
//! Commands ([`super::cmd`]) change it through these methods; the actor
//! ([`super::actor`]) runs them in batches and commits what they staged.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lb_core::model::{InstanceKey, InstanceSpec};
use lb_core::registry::{Attachment, Registry};
use lb_core::replan::Replanner;
use tokio::sync::mpsc;

use super::{Directive, EngineError, Hub};
use crate::auth::{Auth, TokenRecord};
use crate::config::Config;
use crate::store::{self, Key, Lifetime, Record};

/// How a registration keeps its instance alive.
#[derive(Debug)]
pub(crate) enum Via {
    /// A `ReportLoad` stream, reached through its directive channel.
    Stream(mpsc::Sender<Directive>),
    /// A `Register` lease.
    Lease,
    /// An operator's static instance: no TTL.
    Static,
}

/// What the engine task owns.
pub struct State {
    pub(crate) registry: Registry,
    pub(crate) replanner: Replanner,
    pub(crate) hub: Arc<Hub>,
    pub(crate) config: Config,
    /// The directive channel of every stream-attached instance.
    sessions: HashMap<InstanceKey, (u64, mpsc::Sender<Directive>)>,
    next_session: u64,
    /// Shutting down: commands are refused, broken streams deregister nothing.
    pub(crate) frozen: bool,
    /// The store is failing (why): commands that would write are refused.
    pub(crate) fault: Option<String>,
    /// Store writes of the batch being applied, committed together.
    pub(crate) writes: Vec<store::Write>,
    /// The access tokens, by id; published to `auth` after each commit
    /// that changed them.
    pub(crate) tokens: BTreeMap<String, TokenRecord>,
    pub(crate) tokens_changed: bool,
    pub(crate) auth: Arc<Auth>,
    /// Which token registered each instance (see `Record::Instance`).
    pub(crate) owners: HashMap<InstanceKey, String>,
    /// Registrations another replica removed while their backends are
    /// alive here, and when to write them again if they still are (see
    /// `follow`).
    pub(crate) contested: HashMap<InstanceKey, Instant>,
    /// With a shared store: when each lease registered here was last
    /// written (other replicas expire a lease a TTL after its last write,
    /// so renewals rewrite it every half TTL).
    lease_written: HashMap<InstanceKey, Instant>,
}

impl State {
    pub(crate) fn new(registry: Registry, hub: Arc<Hub>, config: Config, auth: Arc<Auth>) -> Self {
        State {
            registry,
            replanner: Replanner::new(),
            hub,
            config,
            sessions: HashMap::new(),
            next_session: 1,
            frozen: false,
            fault: None,
            writes: Vec::new(),
            tokens: BTreeMap::new(),
            tokens_changed: false,
            auth,
            owners: HashMap::new(),
            contested: HashMap::new(),
            lease_written: HashMap::new(),
        }
    }

    /// Stages a store write for this batch's commit.
    pub(crate) fn persist(&mut self, w: store::Write) {
        self.writes.push(w);
    }

    /// Registers a stream, a lease or a static instance; returns the stream
    /// session (0 for the others). The registration is checked first (its
    /// owner, then the quotas), so a refusal changes nothing.
    pub(crate) fn register(
        &mut self,
        spec: InstanceSpec,
        ttl: Option<Duration>,
        via: Via,
        owner: Option<String>,
        now: Instant,
    ) -> Result<u64, EngineError> {
        let key = spec.key();
        self.check_owner(&key, owner.as_deref())?;
        let (ttl, kind) = match via {
            Via::Static => (Duration::ZERO, Attachment::Static),
            Via::Lease => (ttl.unwrap_or(self.config.default_ttl), Attachment::Lease),
            Via::Stream(_) => (
                ttl.unwrap_or(self.config.default_ttl),
                Attachment::Stream { session: 0 },
            ),
        };
        let claims = owner
            .as_ref()
            .is_some_and(|o| self.owners.get(&key) != Some(o));
        // Best effort: not while the store fails (a renewal must not be
        // refused for it).
        let refresh = matches!(via, Via::Lease)
            && self.config.store != crate::config::StoreChoice::Sled
            && self.fault.is_none()
            && self
                .lease_written
                .get(&key)
                .is_none_or(|at| now >= *at + ttl / 2);
        if self
            .registry
            .check_register(&spec, ttl, kind, now, &self.config.quotas)?
            || claims
            || refresh
        {
            if matches!(via, Via::Lease) {
                self.lease_written.insert(key.clone(), now);
            }
            if let Some(o) = owner {
                self.owners.insert(key.clone(), o);
            }
            let lifetime = match via {
                Via::Static => Lifetime::Static,
                Via::Lease => Lifetime::Lease(ttl),
                Via::Stream(_) => Lifetime::Stream(ttl),
            };
            self.persist(store::Write::put(Record::Instance {
                spec: spec.clone(),
                lifetime,
                owner: self.owners.get(&key).cloned(),
            }));
        }
        self.replanner.changed(&spec.service);
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
    pub(crate) fn end_session(&mut self, key: &InstanceKey, why: &str) {
        if let Some((_, tx)) = self.sessions.remove(key) {
            let _ = tx.try_send(Directive::End(why.to_string()));
        }
    }

    /// Forgets a stream without telling it (it is gone, or asked to leave).
    pub(crate) fn drop_session(&mut self, key: &InstanceKey) {
        self.sessions.remove(key);
    }

    /// Tells an instance's stream, if it has one, that it was (un)drained.
    pub(crate) fn tell_drain(&self, key: &InstanceKey, drained: bool) {
        if let Some((_, tx)) = self.sessions.get(key) {
            let _ = tx.try_send(Directive::Drain(drained));
        }
    }

    /// Refuses a change to `key` by `owner` if another token registered it
    /// (`None`: an admin or an unauthenticated daemon, which may).
    pub(crate) fn check_owner(
        &self,
        key: &InstanceKey,
        owner: Option<&str>,
    ) -> Result<(), EngineError> {
        match (owner, self.owners.get(key)) {
            (Some(new), Some(old)) if new != old => Err(EngineError::Denied(format!(
                "instance {:?} of service {:?} was registered with another token; only that token (or an admin) may register or remove it",
                key.instance_id, key.service
            ))),
            _ => Ok(()),
        }
    }

    /// Refuses a change that would create `service` (one with no instance
    /// and no settings) unless `create`: a typo in a service's name must not
    /// make a service that lingers in every listing.
    pub(crate) fn check_exists(&self, service: &str, create: bool) -> Result<(), EngineError> {
        if create || self.registry.service(service).is_some() {
            return Ok(());
        }
        Err(EngineError::NotFound(format!(
            "no service {service:?}: it has no instance and no settings; set create to make it"
        )))
    }

    /// Drops a removed instance's record and re-plans its service.
    pub(crate) fn forget(&mut self, key: &InstanceKey) {
        self.owners.remove(key);
        self.lease_written.remove(key);
        self.replanner.changed(&key.service);
        self.persist(store::Write::delete(Key::Instance(key.clone())));
    }
}
