//! Operator settings: a service's policy, an instance's override (weight,
//! drain), a service's routing rules and cluster modes. Each is checked
//! against the quotas (rules, list bytes) before it is persisted, and pushed
//! to the service's subscribers at once. A change to a service's settings
//! creates the service only when asked to (`create`).

use std::time::Instant;

use lb_core::cluster::{ClusterChange, ClusterConfig};
use lb_core::model::{FieldError, InstanceKey};
use lb_core::policy::{PolicyChange, ServicePolicy};
use lb_core::registry::Override;
use lb_core::routing::{self, Rule};

use super::Command;
use crate::engine::state::State;
use crate::engine::EngineError;
use crate::store::{Key, Record, Write};

/// Changes a service's policy (each parameter validated by the edge): on
/// top of the policy in force, here, by the one writer, so two operators'
/// changes to different parameters both hold whatever their order (a
/// read-modify-write by the caller would lose one of them). Answers the
/// policy before and after.
#[derive(Debug)]
pub struct SetPolicy {
    /// The service.
    pub service: String,
    /// The change.
    pub change: PolicyChange,
    /// It may create the service.
    pub create: bool,
}

impl Command for SetPolicy {
    type Output = (ServicePolicy, ServicePolicy);

    fn apply(
        self,
        st: &mut State,
        _: Instant,
    ) -> Result<(ServicePolicy, ServicePolicy), EngineError> {
        let SetPolicy {
            service,
            change,
            create,
        } = self;
        st.check_exists(&service, create)?;
        let before = st.registry.policy(&service).clone();
        let policy = change
            .apply(&before, &st.config.default_service_policy())
            .map_err(|e| e.within("policy"))?;
        st.registry
            .check_policy(&service, &policy, &st.config.quotas)?;
        tracing::info!(%service, policy = policy.kind.name(), "policy set");
        st.persist(Write::put(Record::Policy {
            service: service.clone(),
            policy: Box::new(policy.clone()),
        }));
        st.registry.set_policy(&service, policy.clone());
        st.replanner.changed(&service);
        Ok((before, policy))
    }
}

/// Changes an instance's override: `weight` (`Some(None)` clears it) and/or
/// `drained`. The instance must be registered; answers the override now in
/// force. Overrides outlive registrations: a drained backend that restarts
/// stays drained.
#[derive(Debug)]
pub struct SetOverride {
    /// The instance.
    pub key: InstanceKey,
    /// New weight override, if changing it.
    pub weight: Option<Option<u32>>,
    /// New drain state, if changing it.
    pub drained: Option<bool>,
}

impl Command for SetOverride {
    type Output = Override;

    fn apply(self, st: &mut State, now: Instant) -> Result<Override, EngineError> {
        let SetOverride {
            key,
            weight,
            drained,
        } = self;
        if st.registry.instance(&key).is_none() {
            return Err(EngineError::NotFound(format!(
                "no instance {:?} in service {:?}",
                key.instance_id, key.service
            )));
        }
        let mut o = st.registry.override_of(&key);
        if let Some(w) = weight {
            o.weight = w;
        }
        let drain_changed = drained.is_some_and(|d| d != o.drained);
        if let Some(d) = drained {
            o.drained = d;
        }
        st.persist(if o == Override::default() {
            Write::delete(Key::Override(key.clone()))
        } else {
            Write::put(Record::Override {
                key: key.clone(),
                over: o,
            })
        });
        st.registry.set_override(&key, o, now);
        if drain_changed {
            st.tell_drain(&key, o.drained);
        }
        tracing::info!(service = %key.service, instance = %key.instance_id, weight = ?o.weight, drained = o.drained, "override set");
        st.replanner.changed(&key.service);
        Ok(o)
    }
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
    /// Change only what the change sets in the cluster modes (checked on
    /// its own by the edge).
    ClusterChange(ClusterChange),
}

/// Changes a service's rules or cluster modes, after checking the result
/// against the service's other settings (a duplicate rule name, a multicast
/// mode naming a missing rule). Answers the cluster modes before and after.
#[derive(Debug)]
pub struct SetRouting {
    /// The service.
    pub service: String,
    /// The change.
    pub change: RoutingChange,
    /// It may create the service (removing a rule never does).
    pub create: bool,
}

impl Command for SetRouting {
    type Output = (ClusterConfig, ClusterConfig);

    fn apply(
        self,
        st: &mut State,
        _: Instant,
    ) -> Result<(ClusterConfig, ClusterConfig), EngineError> {
        let SetRouting {
            service,
            change,
            create,
        } = self;
        st.check_exists(&service, create)?;
        let (mut rules, mut cluster) = match st.registry.service(&service) {
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
            RoutingChange::ClusterChange(c) => {
                let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
                cluster = c.apply(&cluster, &names).map_err(|e| e.within("change"))?;
            }
        }
        let before = st
            .registry
            .service(&service)
            .map(|s| s.cluster.clone())
            .unwrap_or_default();
        // The quotas first, so too many rules are resource_exhausted even
        // where the quota is the hard limit.
        st.registry
            .check_routing(&service, &rules, &cluster, &st.config.quotas)?;
        routing::check(&rules)?;
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        cluster.check(&names).map_err(|e| e.within("cluster"))?;
        st.persist(if rules.is_empty() && cluster == ClusterConfig::default() {
            Write::delete(Key::Routing(service.clone()))
        } else {
            Write::put(Record::Routing {
                service: service.clone(),
                rules: rules.clone(),
                cluster: cluster.clone(),
            })
        });
        tracing::info!(%service, rules = rules.len(), "routing set");
        st.registry.set_rules(&service, rules);
        st.registry.set_cluster(&service, cluster.clone());
        st.replanner.changed(&service);
        Ok((before, cluster))
    }
}
