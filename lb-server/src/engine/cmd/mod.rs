//! The engine's commands: every change that has an answer, one small type
//! each behind one dispatcher (mini-redis's `cmd/`), instead of one match
//! that grows with every feature.
//!
//! A command arrives validated by the edge, is checked against the engine's
//! state (and the quotas: a refusal is counted for `/metrics` here, once)
//! and applied by [`Command::apply`], which stages its store writes;
//! the engine commits the batch's writes once (group commit) and only then
//! answers: an answer means durable. While the daemon shuts down every
//! command is refused with [`EngineError::ShuttingDown`], here, once.
//!
//! Adding one: a type and its `impl Command` here, and the call at the edge
//! (`engine.run(TheCommand { .. })`).
//!
//! - `register`: [`Attach`] (a `ReportLoad` stream), [`Lease`],
//!   [`PutStatic`].
//! - `remove`: [`Drain`] (a stream leaving), [`Deregister`], [`RemoveStatic`],
//!   [`DeleteService`].
//! - `settings`: [`SetPolicy`], [`SetOverride`], [`SetRouting`].
//! - `token`: [`CreateToken`], [`RevokeToken`].

mod register;
mod remove;
mod settings;
mod token;

pub use register::{Attach, Attached, Lease, PutStatic};
pub use remove::{DeleteService, Deleted, Deregister, Drain, RemoveStatic};
pub use settings::{RoutingChange, SetOverride, SetPolicy, SetRouting};
pub use token::{CreateToken, RevokeToken};

use std::time::Instant;

use tokio::sync::oneshot;

use super::state::State;
use super::EngineError;
use lb_core::registry::RegistryError;

/// A change with an answer.
pub trait Command: Send + 'static {
    /// The answer.
    type Output: Send + 'static;
    /// Checks the change against `st` and applies it at `now`, staging its
    /// store writes; a refusal must leave `st` as it was.
    fn apply(self, st: &mut State, now: Instant) -> Result<Self::Output, EngineError>;

    /// Whether applying it would write to the store (while the store fails,
    /// such commands are refused; the others, such as a lease renewal, run).
    fn writes(&self, _st: &State, _now: Instant) -> bool {
        true
    }
}

/// A command on its way to the engine, with where its answer goes.
pub(crate) trait Dispatch: Send {
    /// Runs the command (refused while frozen) and keeps its result until
    /// the batch is committed.
    fn dispatch(self: Box<Self>, st: &mut State, now: Instant) -> Box<dyn Answer>;
}

/// A command's result, waiting for its batch's commit.
pub(crate) trait Answer: Send {
    /// Answers the caller; a result that needed the commit becomes the
    /// commit's error if it failed.
    fn send(self: Box<Self>, committed: &Result<(), String>);
}

pub(crate) struct Envelope<C: Command> {
    pub(crate) command: C,
    pub(crate) reply: oneshot::Sender<Result<C::Output, EngineError>>,
}

struct Pending<T> {
    reply: oneshot::Sender<Result<T, EngineError>>,
    result: Result<T, EngineError>,
}

impl<C: Command> Dispatch for Envelope<C> {
    fn dispatch(self: Box<Self>, st: &mut State, now: Instant) -> Box<dyn Answer> {
        let Envelope { command, reply } = *self;
        let result = if st.frozen {
            Err(EngineError::ShuttingDown)
        } else if let Some(cause) = st.fault.as_ref().filter(|_| command.writes(st, now)) {
            Err(EngineError::Store(format!(
                "the store is failing, changes are refused meanwhile: {cause}"
            )))
        } else {
            command.apply(st, now)
        };
        if let Err(EngineError::Registry(RegistryError::Quota(q))) = &result {
            tracing::debug!(quota = %q.quota, error = %q, "refused by a quota");
            st.hub.quotas.refused(q.quota);
        }
        Box::new(Pending { reply, result })
    }
}

impl<T: Send> Answer for Pending<T> {
    fn send(self: Box<Self>, committed: &Result<(), String>) {
        let result = match (committed, self.result) {
            (Err(e), Ok(_)) => Err(EngineError::Store(e.clone())),
            (_, r) => r,
        };
        let _ = self.reply.send(result);
    }
}
