//! Registrations: a backend's `ReportLoad` stream, a unary lease, and an
//! operator's static instance. All three go through [`State::register`],
//! which refuses a registration that would take over someone else's
//! instance or go over a quota (see `Registry::check_register`).

use std::time::{Duration, Instant};

use lb_core::model::InstanceSpec;
use lb_core::registry::Attachment;
use tokio::sync::mpsc;

use super::Command;
use crate::engine::state::{State, Via};
use crate::engine::{Directive, EngineError};

/// A `ReportLoad` stream registered; `directives` reaches its stream.
#[derive(Debug)]
pub struct Attach {
    /// What registered.
    pub spec: InstanceSpec,
    /// Silence allowed before expiry (`None`: the daemon's default).
    pub ttl: Option<Duration>,
    /// Where the engine sends [`Directive`]s for this stream.
    pub directives: mpsc::Sender<Directive>,
    /// The registering token's name (`None`: an admin, or no
    /// authentication).
    pub owner: Option<String>,
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

/// Whether registering `spec` as `owner` would record a new owner (a
/// write, even if nothing else changes).
fn claims(st: &State, spec: &InstanceSpec, owner: Option<&str>) -> bool {
    owner.is_some_and(|o| st.owners.get(&spec.key()).map(String::as_str) != Some(o))
}

/// The interval a backend with `ttl` is asked to report at: the configured
/// one, but at least three reports per TTL so one late report is not fatal.
fn report_interval(configured: Duration, ttl: Duration) -> Duration {
    configured.min(ttl / 3).max(Duration::from_millis(10))
}

impl Command for Attach {
    type Output = Attached;

    fn writes(&self, st: &State, now: Instant) -> bool {
        let ttl = self.ttl.unwrap_or(st.config.default_ttl);
        let stream = Attachment::Stream { session: 0 };
        claims(st, &self.spec, self.owner.as_deref())
            || !matches!(
                st.registry
                    .check_register(&self.spec, ttl, stream, now, &st.config.quotas),
                Ok(false)
            )
    }

    fn apply(self, st: &mut State, now: Instant) -> Result<Attached, EngineError> {
        let ttl = self.ttl.unwrap_or(st.config.default_ttl);
        let key = self.spec.key();
        let session = st.register(
            self.spec,
            Some(ttl),
            Via::Stream(self.directives),
            self.owner,
            now,
        )?;
        Ok(Attached {
            session,
            report_interval: report_interval(st.config.report_interval, ttl),
            drained: st.registry.override_of(&key).drained,
        })
    }
}

/// A unary registration or renewal with a lease; answers the lease granted.
#[derive(Debug)]
pub struct Lease {
    /// What registered.
    pub spec: InstanceSpec,
    /// Lease length (`None`: the daemon's default).
    pub ttl: Option<Duration>,
    /// The registering token's name (see [`Attach::owner`]).
    pub owner: Option<String>,
}

impl Command for Lease {
    type Output = Duration;

    fn writes(&self, st: &State, now: Instant) -> bool {
        let ttl = self.ttl.unwrap_or(st.config.default_ttl);
        claims(st, &self.spec, self.owner.as_deref())
            || !matches!(
                st.registry.check_register(
                    &self.spec,
                    ttl,
                    Attachment::Lease,
                    now,
                    &st.config.quotas
                ),
                Ok(false)
            )
    }

    fn apply(self, st: &mut State, now: Instant) -> Result<Duration, EngineError> {
        let ttl = self.ttl.unwrap_or(st.config.default_ttl);
        st.register(self.spec, Some(ttl), Via::Lease, self.owner, now)?;
        Ok(ttl)
    }
}

/// An operator adds or updates a static instance.
#[derive(Debug)]
pub struct PutStatic {
    /// The instance.
    pub spec: InstanceSpec,
    /// It may create its service (else a service with no instance and no
    /// settings is refused: a typo must not make one).
    pub create: bool,
}

impl Command for PutStatic {
    type Output = ();

    fn apply(self, st: &mut State, now: Instant) -> Result<(), EngineError> {
        st.check_exists(&self.spec.service, self.create)?;
        st.register(self.spec, None, Via::Static, None, now)
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_interval_leaves_room_in_the_ttl() {
        let s = Duration::from_secs;
        let ms = Duration::from_millis;
        assert_eq!(report_interval(s(1), s(5)), s(1));
        assert_eq!(report_interval(s(1), ms(300)), ms(100));
        assert_eq!(report_interval(s(1), ms(1)), ms(10));
    }
}
