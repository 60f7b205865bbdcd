//! Access tokens: an operator makes one or revokes one. The engine keeps
//! them in its state and the store, and publishes them to the daemon's
//! [`crate::auth::Auth`] once the change is durable (a revoked token's
//! streams end then).

use std::time::Instant;

use super::Command;
use crate::auth::TokenRecord;
use crate::engine::state::State;
use crate::engine::EngineError;
use crate::store::{Key, Record, Write};

/// Keep a new token (made by the edge, which prints its secret once).
#[derive(Debug)]
pub struct CreateToken(pub TokenRecord);

impl Command for CreateToken {
    type Output = ();

    fn apply(self, st: &mut State, _: Instant) -> Result<(), EngineError> {
        let t = self.0;
        if st.tokens.values().any(|o| o.name == t.name) {
            return Err(EngineError::Exists(format!(
                "a token named {:?} exists; revoke it first or choose another name",
                t.name
            )));
        }
        if let Some(identity) = &t.identity {
            if st
                .tokens
                .values()
                .any(|o| o.identity.as_ref() == Some(identity))
            {
                return Err(EngineError::Exists(format!(
                    "the identity {identity:?} is bound already; revoke that binding first"
                )));
            }
        }
        st.persist(Write::put(Record::Token(t.clone())));
        st.tokens.insert(t.id.clone(), t);
        st.tokens_changed = true;
        Ok(())
    }
}

/// Revoke the token named so; answers whether there was one.
#[derive(Debug)]
pub struct RevokeToken(pub String);

impl Command for RevokeToken {
    type Output = bool;

    fn apply(self, st: &mut State, _: Instant) -> Result<bool, EngineError> {
        let Some(id) = st
            .tokens
            .values()
            .find(|t| t.name == self.0)
            .map(|t| t.id.clone())
        else {
            return Ok(false);
        };
        st.tokens.remove(&id);
        st.persist(Write::delete(Key::Token(id)));
        st.tokens_changed = true;
        Ok(true)
    }
}
