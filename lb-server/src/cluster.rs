//! Cluster modes: what a client does with a call across instances (Dubbo's
//! cluster fault tolerance: failover, failfast, failsafe, forking, broadcast;
//! multicast is broadcast over one routing rule's instances; forking is gRPC's
//! hedging, A6). The daemon only validates, stores and pushes these settings
//! with the list; lb-client executes them (`lb_client::cluster`).
//!
//! Settings are per service with per-method overrides, plus the service's
//! retry budget (Finagle's `RetryBudget`: retries may add a percentage of the
//! calls plus a floor per second).

use std::collections::BTreeMap;

use crate::model::FieldError;

/// Largest `attempts` for failover.
pub const MAX_ATTEMPTS: u32 = 10;
/// Largest `forks` for forking.
pub const MAX_FORKS: u32 = 10;
/// Largest base backoff, ms.
pub const MAX_BACKOFF_MS: u32 = 10_000;
/// Largest backoff ceiling, ms.
pub const MAX_BACKOFF_MAX_MS: u32 = 60_000;
/// Most per-method entries.
pub const MAX_METHODS: usize = 256;
/// Longest method path, bytes.
pub const MAX_METHOD_LEN: usize = 256;
/// Largest `budget_min_per_sec`.
pub const MAX_BUDGET_MIN_PER_SEC: u32 = 100_000;

/// Which mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Kind {
    /// Retry a retryable failure on another instance.
    #[default]
    Failover,
    /// One attempt; the error goes to the caller.
    Failfast,
    /// One attempt; an error is swallowed, a default answer returned.
    Failsafe,
    /// `forks` attempts at once on distinct instances; first success wins.
    Forking,
    /// Every instance.
    Broadcast,
    /// Every instance a routing rule selects.
    Multicast,
}

impl Kind {
    /// Every kind, in documentation order.
    pub const ALL: [Kind; 6] = [
        Kind::Failover,
        Kind::Failfast,
        Kind::Failsafe,
        Kind::Forking,
        Kind::Broadcast,
        Kind::Multicast,
    ];

    /// The name used by `ctl`.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Failover => "failover",
            Kind::Failfast => "failfast",
            Kind::Failsafe => "failsafe",
            Kind::Forking => "forking",
            Kind::Broadcast => "broadcast",
            Kind::Multicast => "multicast",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }
}

/// What broadcast and multicast return.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Collect {
    /// The first success.
    #[default]
    First,
    /// Every instance's answer.
    All,
    /// Only whether it failed.
    None,
}

impl Collect {
    /// The name used by `ctl`.
    pub fn name(self) -> &'static str {
        match self {
            Collect::First => "first",
            Collect::All => "all",
            Collect::None => "none",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Collect> {
        [Collect::First, Collect::All, Collect::None]
            .into_iter()
            .find(|c| c.name() == s)
    }
}

/// One mode with its settings. Fields that do not belong to `kind` must be
/// zero/empty (a contradiction is refused, not ignored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mode {
    /// Which mode.
    pub kind: Kind,
    /// Failover: total attempts, `1..=MAX_ATTEMPTS`.
    pub attempts: u32,
    /// Failover: base backoff, ms.
    pub backoff_ms: u32,
    /// Failover: backoff ceiling, ms (0 = 10 × `backoff_ms`).
    pub backoff_max_ms: u32,
    /// Failover: status names retried (empty = UNAVAILABLE).
    pub retry_on: Vec<String>,
    /// Forking: instances at once, `2..=MAX_FORKS`.
    pub forks: u32,
    /// Broadcast / multicast: what the caller gets.
    pub collect: Collect,
    /// Broadcast / multicast: fail above this percentage of failures.
    pub max_failure_percent: u32,
    /// Multicast: the routing rule whose instances are called.
    pub route: String,
}

impl Default for Mode {
    /// Failover, 3 attempts, 10 ms backoff doubling to 100 ms, on UNAVAILABLE.
    fn default() -> Self {
        Mode {
            kind: Kind::Failover,
            attempts: 3,
            backoff_ms: 10,
            backoff_max_ms: 100,
            retry_on: Vec::new(),
            forks: 0,
            collect: Collect::First,
            max_failure_percent: 0,
            route: String::new(),
        }
    }
}

impl Mode {
    /// `kind` with its own settings at their defaults.
    pub fn of(kind: Kind) -> Mode {
        let base = Mode {
            kind,
            attempts: 0,
            backoff_ms: 0,
            backoff_max_ms: 0,
            ..Mode::default()
        };
        match kind {
            Kind::Failover => Mode::default(),
            Kind::Forking => Mode { forks: 2, ..base },
            _ => base,
        }
    }

    /// Checks ranges and that only `kind`'s own fields are set; `rules` are
    /// the service's rule names (multicast must name one).
    pub fn check(&self, rules: &[&str]) -> Result<(), FieldError> {
        let k = self.kind;
        let only = |field: &str, owner: &str| {
            FieldError::new(field, format!("only applies to {owner}, not {}", k.name()))
        };
        if k == Kind::Failover {
            if self.attempts == 0 || self.attempts > MAX_ATTEMPTS {
                return Err(FieldError::new(
                    "attempts",
                    format!("{} is outside 1..={MAX_ATTEMPTS}", self.attempts),
                ));
            }
            if self.backoff_ms > MAX_BACKOFF_MS {
                return Err(FieldError::new(
                    "backoff_ms",
                    format!("{} is outside 0..={MAX_BACKOFF_MS}", self.backoff_ms),
                ));
            }
            if self.backoff_max_ms != 0
                && (self.backoff_max_ms < self.backoff_ms
                    || self.backoff_max_ms > MAX_BACKOFF_MAX_MS)
            {
                return Err(FieldError::new(
                    "backoff_max_ms",
                    format!(
                        "{} is outside backoff_ms..={MAX_BACKOFF_MAX_MS} ({}..={MAX_BACKOFF_MAX_MS})",
                        self.backoff_max_ms, self.backoff_ms
                    ),
                ));
            }
            for (i, name) in self.retry_on.iter().enumerate() {
                if lb_proto::status::code(name).is_none() {
                    return Err(FieldError::new(
                        format!("retry_on[{i}]"),
                        format!(
                            "{name:?} is not a gRPC status name (e.g. UNAVAILABLE, DEADLINE_EXCEEDED)"
                        ),
                    ));
                }
            }
        } else {
            if self.attempts != 0 {
                return Err(only("attempts", "failover"));
            }
            if self.backoff_ms != 0 {
                return Err(only("backoff_ms", "failover"));
            }
            if self.backoff_max_ms != 0 {
                return Err(only("backoff_max_ms", "failover"));
            }
            if !self.retry_on.is_empty() {
                return Err(only("retry_on", "failover"));
            }
        }
        if k == Kind::Forking {
            if self.forks < 2 || self.forks > MAX_FORKS {
                return Err(FieldError::new(
                    "forks",
                    format!("{} is outside 2..={MAX_FORKS}", self.forks),
                ));
            }
        } else if self.forks != 0 {
            return Err(only("forks", "forking"));
        }
        let fan_out = matches!(k, Kind::Broadcast | Kind::Multicast);
        if fan_out {
            if self.max_failure_percent > 100 {
                return Err(FieldError::new(
                    "max_failure_percent",
                    format!("{} is outside 0..=100", self.max_failure_percent),
                ));
            }
        } else {
            if self.max_failure_percent != 0 {
                return Err(only("max_failure_percent", "broadcast and multicast"));
            }
            if self.collect != Collect::First {
                return Err(only("collect", "broadcast and multicast"));
            }
        }
        if k == Kind::Multicast {
            if self.route.is_empty() {
                return Err(FieldError::new(
                    "route",
                    "multicast needs the name of a routing rule",
                ));
            }
            if !rules.contains(&self.route.as_str()) {
                return Err(FieldError::new(
                    "route",
                    format!("no routing rule named {:?} in this service", self.route),
                ));
            }
        } else if !self.route.is_empty() {
            return Err(only("route", "multicast"));
        }
        Ok(())
    }
}

/// A service's cluster settings (persisted, pushed with the list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// The service's mode.
    pub default: Mode,
    /// Per-method modes, by "/package.Service/Method".
    pub methods: BTreeMap<String, Mode>,
    /// Retries may add this percentage of the calls, `0..=100`.
    pub budget_percent: u32,
    /// ... plus this many per second.
    pub budget_min_per_sec: u32,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            default: Mode::default(),
            methods: BTreeMap::new(),
            budget_percent: 20,
            budget_min_per_sec: 10,
        }
    }
}

impl ClusterConfig {
    /// Checks every field; `rules` are the service's rule names.
    pub fn check(&self, rules: &[&str]) -> Result<(), FieldError> {
        self.default
            .check(rules)
            .map_err(|e| e.within("default_mode"))?;
        if self.methods.len() > MAX_METHODS {
            return Err(FieldError::new(
                "methods",
                format!("{} entries, more than {MAX_METHODS}", self.methods.len()),
            ));
        }
        for (m, mode) in &self.methods {
            let field = format!("methods[{m:?}]");
            check_method(m).map_err(|e| FieldError::new(field.clone(), e))?;
            mode.check(rules).map_err(|e| e.within(&field))?;
        }
        if self.budget_percent > 100 {
            return Err(FieldError::new(
                "budget_percent",
                format!("{} is outside 0..=100", self.budget_percent),
            ));
        }
        if self.budget_min_per_sec > MAX_BUDGET_MIN_PER_SEC {
            return Err(FieldError::new(
                "budget_min_per_sec",
                format!(
                    "{} is outside 0..={MAX_BUDGET_MIN_PER_SEC}",
                    self.budget_min_per_sec
                ),
            ));
        }
        Ok(())
    }

    /// Rule names the settings depend on (multicast routes).
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.default)
            .chain(self.methods.values())
            .filter(|m| m.kind == Kind::Multicast)
            .map(|m| m.route.as_str())
    }
}

/// A method path: "/package.Service/Method".
fn check_method(m: &str) -> Result<(), String> {
    if m.len() > MAX_METHOD_LEN {
        return Err(format!("longer than {MAX_METHOD_LEN} bytes"));
    }
    let Some(rest) = m.strip_prefix('/') else {
        return Err("must look like /package.Service/Method".into());
    };
    match rest.split_once('/') {
        Some((svc, method))
            if !svc.is_empty()
                && !method.is_empty()
                && !method.contains('/')
                && m.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._/-".contains(&b)) =>
        {
            Ok(())
        }
        _ => Err("must look like /package.Service/Method".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ClusterConfig::default().check(&[]), Ok(()));
        for k in Kind::ALL {
            let rules = ["r"];
            let mut m = Mode::of(k);
            if k == Kind::Multicast {
                m.route = "r".into();
            }
            assert_eq!(m.check(&rules), Ok(()), "{k:?}");
        }
    }

    #[test]
    fn out_of_range_and_contradictory_settings_are_refused() {
        let bad = |m: Mode| m.check(&["r"]).unwrap_err().field;
        assert_eq!(
            bad(Mode {
                attempts: 0,
                ..Mode::default()
            }),
            "attempts"
        );
        assert_eq!(
            bad(Mode {
                attempts: 11,
                ..Mode::default()
            }),
            "attempts"
        );
        assert_eq!(
            bad(Mode {
                backoff_ms: 50,
                backoff_max_ms: 10,
                ..Mode::default()
            }),
            "backoff_max_ms"
        );
        assert_eq!(
            bad(Mode {
                retry_on: vec!["NOPE".into()],
                ..Mode::default()
            }),
            "retry_on[0]"
        );
        assert_eq!(
            bad(Mode {
                forks: 2,
                ..Mode::default()
            }),
            "forks"
        );
        assert_eq!(
            bad(Mode {
                forks: 1,
                ..Mode::of(Kind::Forking)
            }),
            "forks"
        );
        assert_eq!(
            bad(Mode {
                attempts: 3,
                ..Mode::of(Kind::Failfast)
            }),
            "attempts"
        );
        assert_eq!(
            bad(Mode {
                max_failure_percent: 101,
                ..Mode::of(Kind::Broadcast)
            }),
            "max_failure_percent"
        );
        assert_eq!(bad(Mode::of(Kind::Multicast)), "route");
        assert_eq!(
            bad(Mode {
                route: "other".into(),
                ..Mode::of(Kind::Multicast)
            }),
            "route"
        );
        assert_eq!(
            bad(Mode {
                collect: Collect::All,
                ..Mode::of(Kind::Failsafe)
            }),
            "collect"
        );
    }

    #[test]
    fn config_errors_name_the_path() {
        let mut c = ClusterConfig::default();
        c.methods.insert(
            "/a.B/C".into(),
            Mode {
                attempts: 0,
                ..Mode::default()
            },
        );
        assert_eq!(
            c.check(&[]).unwrap_err().field,
            "methods[\"/a.B/C\"].attempts"
        );
        let mut c = ClusterConfig::default();
        c.methods.insert("nope".into(), Mode::default());
        assert_eq!(c.check(&[]).unwrap_err().field, "methods[\"nope\"]");
        let c = ClusterConfig {
            budget_percent: 101,
            ..ClusterConfig::default()
        };
        assert_eq!(c.check(&[]).unwrap_err().field, "budget_percent");
    }
}
