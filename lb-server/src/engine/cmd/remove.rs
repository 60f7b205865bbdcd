//! Removals: a stream that asks to leave, a unary deregistration, an
//! operator removing a static instance, and an operator removing a whole
//! service. Each answers whether there was something to remove.

use std::time::Instant;

use lb_core::cluster::ClusterConfig;
use lb_core::model::InstanceKey;
use lb_core::registry::{Attachment, RegistryError};

use super::Command;
use crate::engine::state::State;
use crate::engine::EngineError;
use crate::store::{Key, Write};

/// A stream asked to leave (`drain`): remove its instance now, if this
/// stream still owns it (a replaced stream's drain must not remove the
/// instance its successor registered).
#[derive(Debug)]
pub struct Drain {
    /// The instance.
    pub key: InstanceKey,
    /// The stream's session.
    pub session: u64,
}

impl Command for Drain {
    type Output = bool;

    fn apply(self, st: &mut State, _: Instant) -> Result<bool, EngineError> {
        let key = self.key;
        if !st.registry.detach(&key, self.session) {
            return Ok(false);
        }
        tracing::info!(service = %key.service, instance = %key.instance_id, "backend drained");
        st.forget(&key);
        st.drop_session(&key);
        Ok(true)
    }
}

/// Remove an instance now, however it registered.
#[derive(Debug)]
pub struct Deregister {
    /// The instance.
    pub key: InstanceKey,
    /// The caller's token name (`None`: an admin, or no authentication):
    /// another token's instance is refused.
    pub owner: Option<String>,
}

impl Command for Deregister {
    type Output = bool;

    fn apply(self, st: &mut State, _: Instant) -> Result<bool, EngineError> {
        let key = self.key;
        st.check_owner(&key, self.owner.as_deref())?;
        if st.registry.remove(&key).is_none() {
            return Ok(false);
        }
        tracing::info!(service = %key.service, instance = %key.instance_id, "deregistered");
        st.forget(&key);
        st.end_session(&key, "deregistered");
        Ok(true)
    }
}

/// An operator removes a static instance (not one a backend registered).
#[derive(Debug)]
pub struct RemoveStatic(pub InstanceKey);

impl Command for RemoveStatic {
    type Output = bool;

    fn apply(self, st: &mut State, _: Instant) -> Result<bool, EngineError> {
        let key = self.0;
        match st.registry.instance(&key).map(|i| i.attachment) {
            None => Ok(false),
            Some(Attachment::Static) => {
                st.registry.remove(&key);
                tracing::info!(service = %key.service, instance = %key.instance_id, "static instance removed");
                st.forget(&key);
                Ok(true)
            }
            Some(_) => Err(RegistryError::NotStatic(key.instance_id.clone()).into()),
        }
    }
}

/// An operator removes a service: its policy, rules, cluster modes,
/// overrides and static instances. Instances backends registered keep it:
/// refused, naming them, unless `force`, which deregisters them too (their
/// streams end; a backend that keeps running registers again, and the
/// service comes back with default settings).
#[derive(Debug)]
pub struct DeleteService {
    /// The service.
    pub service: String,
    /// Also deregister the backends' instances.
    pub force: bool,
}

/// What [`DeleteService`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Deleted {
    /// Whether the service was known (or had overrides left).
    pub existed: bool,
    /// It had a policy of its own.
    pub policy: bool,
    /// Routing rules removed.
    pub rules: usize,
    /// It had cluster modes of its own.
    pub cluster: bool,
    /// Overrides removed (of instances registered now or before).
    pub overrides: usize,
    /// Static instances removed.
    pub static_instances: Vec<String>,
    /// Backends' instances deregistered (with `force`).
    pub deregistered: Vec<String>,
}

/// How many backend instances a refusal names before "and N more".
const NAMED: usize = 5;

impl Command for DeleteService {
    type Output = Deleted;

    fn apply(self, st: &mut State, _: Instant) -> Result<Deleted, EngineError> {
        let DeleteService { service, force } = self;
        let mut backends = Vec::new();
        let mut statics = Vec::new();
        if let Some(s) = st.registry.service(&service) {
            for i in s.instances.values() {
                match i.attachment {
                    Attachment::Static => statics.push(i.spec.instance_id.clone()),
                    _ => backends.push(i.spec.instance_id.clone()),
                }
            }
        }
        if !backends.is_empty() && !force {
            let mut named = backends
                .iter()
                .take(NAMED)
                .map(|i| format!("{i:?}"))
                .collect::<Vec<_>>()
                .join(", ");
            if backends.len() > NAMED {
                named.push_str(&format!(" and {} more", backends.len() - NAMED));
            }
            return Err(EngineError::Busy(format!(
                "service {service:?} has {} instance(s) registered by backends ({named}): stop those backends first (they leave as they drain), or force the deletion, which deregisters them (a backend still running registers again)",
                backends.len()
            )));
        }
        let default_policy = st.config.default_service_policy();
        let (removed, overrides) = st.registry.remove_service(&service);
        let Some(removed) = removed else {
            for k in &overrides {
                st.persist(Write::delete(Key::Override(k.clone())));
            }
            return Ok(Deleted {
                existed: !overrides.is_empty(),
                overrides: overrides.len(),
                ..Deleted::default()
            });
        };
        for id in removed.instances.keys() {
            let key = InstanceKey {
                service: service.clone(),
                instance_id: id.clone(),
            };
            st.forget(&key);
            st.end_session(&key, "the service was deleted by an operator");
        }
        for k in &overrides {
            st.persist(Write::delete(Key::Override(k.clone())));
        }
        st.persist(Write::delete(Key::Policy(service.clone())));
        st.persist(Write::delete(Key::Routing(service.clone())));
        st.replanner.changed(&service);
        tracing::info!(%service, statics = statics.len(), deregistered = backends.len(), "service deleted");
        Ok(Deleted {
            existed: true,
            policy: removed.policy != default_policy,
            rules: removed.rules.len(),
            cluster: removed.cluster != ClusterConfig::default(),
            overrides: overrides.len(),
            static_instances: statics,
            deregistered: backends,
        })
    }
}
