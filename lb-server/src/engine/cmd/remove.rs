//! Removals: a stream that asks to leave, a unary deregistration, and an
//! operator removing a static instance. Each answers whether there was
//! something to remove.

use std::time::Instant;

use lb_core::model::InstanceKey;
use lb_core::registry::{Attachment, RegistryError};

use super::Command;
use crate::engine::state::State;
use crate::engine::EngineError;

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
