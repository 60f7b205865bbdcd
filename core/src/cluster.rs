//! Cluster modes: what a client does with a call across instances (Dubbo's
//! cluster fault tolerance: failover, failfast, failsafe, forking, broadcast;
//! multicast is broadcast over one routing rule's instances; forking is gRPC's
//! hedging, A6). The daemon validates, stores and pushes these settings with
//! the list; lb-client executes them (`lb_client::cluster`). Both use these
//! types, so a default is written down once.
//!
//! Settings are per service with per-method overrides, plus the service's
//! retry budget (Finagle's `RetryBudget`: retries may add a percentage of the
//! calls plus a floor per second) and an optional default deadline per call
//! (gRPC's service config `timeout`, gRFC A6: it bounds the whole call, every
//! retry and hedge included; a deadline the caller sets wins).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use crate::model::FieldError;
use crate::status::Code;

/// Largest `attempts` for failover.
pub const MAX_ATTEMPTS: u32 = 10;
/// Largest `forks` for forking.
pub const MAX_FORKS: u32 = 10;
/// Largest base backoff.
pub const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// Largest backoff ceiling.
pub const MAX_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A failover backoff ceiling left unset is this many times the base backoff.
pub const BACKOFF_MAX_FACTOR: u32 = 10;
/// Most per-method entries.
pub const MAX_METHODS: usize = 256;
/// Longest method path, bytes.
pub const MAX_METHOD_LEN: usize = 256;
/// Most `retry_on` codes: each error code once (there are 16, OK is not one).
pub const MAX_RETRY_ON: usize = Code::ALL.len() - 1;
/// Largest retry budget floor, per second.
pub const MAX_BUDGET_MIN_PER_SEC: u32 = 100_000;
/// Largest default deadline per call.
pub const MAX_DEADLINE: Duration = Duration::from_secs(3600);

/// Which mode, by name (the CLI's and the wire's vocabulary).
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

/// What one logical call does across instances.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mode {
    /// Retry retryable errors on other instances (the default).
    Failover(Failover),
    /// One attempt; its error is returned.
    Failfast,
    /// One attempt; an error (or no instance) is swallowed and a default
    /// answer returned.
    Failsafe,
    /// Hedging: `forks` attempts on distinct instances at once (fewer when
    /// fewer instances exist or the budget refuses); the first success wins
    /// and the others are cancelled.
    Forking {
        /// Attempts started at once, `2..=MAX_FORKS`.
        forks: u32,
    },
    /// Call every instance concurrently.
    Broadcast(Broadcast),
    /// Call every instance of one routing rule concurrently.
    Multicast {
        /// The routing rule whose instances are called.
        route: String,
        /// How results are collected and judged.
        broadcast: Broadcast,
    },
}

impl Default for Mode {
    fn default() -> Self {
        Mode::Failover(Failover::default())
    }
}

/// Failover settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failover {
    /// Total attempts, the first included, `1..=MAX_ATTEMPTS`.
    pub attempts: u32,
    /// Ceiling of the first backoff (full jitter: the delay is uniform in
    /// `[0, ceiling]`, the ceiling doubling per retry).
    pub backoff: Duration,
    /// Largest backoff ceiling (at least `backoff`).
    pub backoff_max: Duration,
    /// Codes worth retrying elsewhere (at least one).
    pub retry_on: Vec<Code>,
}

impl Failover {
    /// The backoff ceiling that goes with a base backoff when none is set:
    /// [`BACKOFF_MAX_FACTOR`] times it, at most [`MAX_BACKOFF_MAX`], at
    /// least the base.
    pub fn backoff_max_for(backoff: Duration) -> Duration {
        (backoff * BACKOFF_MAX_FACTOR)
            .min(MAX_BACKOFF_MAX)
            .max(backoff)
    }
}

impl Default for Failover {
    /// Three attempts (Dubbo's `retries=2`), 10 ms backoff doubling to
    /// 100 ms, retry on UNAVAILABLE only.
    fn default() -> Self {
        let backoff = Duration::from_millis(10);
        Failover {
            attempts: 3,
            backoff,
            backoff_max: Failover::backoff_max_for(backoff),
            retry_on: vec![Code::Unavailable],
        }
    }
}

/// Broadcast (and multicast) settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Broadcast {
    /// What the caller gets on success.
    pub collect: Collect,
    /// `0..=100`: the broadcast fails when more than this percentage of the
    /// instances fail (0: any failure fails it).
    pub max_failure_percent: u32,
}

/// What a successful broadcast returns to `Subscription::call` (the
/// broadcast API always has every instance's result).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Collect {
    /// The first success, in endpoint order.
    #[default]
    First,
    /// Every answer is wanted (a single-answer call gets the first).
    All,
    /// Only success or failure matters: a default answer.
    None,
}

impl Collect {
    /// Every value.
    pub const ALL: [Collect; 3] = [Collect::First, Collect::All, Collect::None];

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
        Collect::ALL.into_iter().find(|c| c.name() == s)
    }
}

impl Mode {
    /// `kind` with its settings at their defaults (multicast with no route,
    /// which [`Mode::check`] refuses until one is set).
    pub fn of(kind: Kind) -> Mode {
        match kind {
            Kind::Failover => Mode::default(),
            Kind::Failfast => Mode::Failfast,
            Kind::Failsafe => Mode::Failsafe,
            Kind::Forking => Mode::Forking { forks: 2 },
            Kind::Broadcast => Mode::Broadcast(Broadcast::default()),
            Kind::Multicast => Mode::Multicast {
                route: String::new(),
                broadcast: Broadcast::default(),
            },
        }
    }

    /// Which kind this is.
    pub fn kind(&self) -> Kind {
        match self {
            Mode::Failover(_) => Kind::Failover,
            Mode::Failfast => Kind::Failfast,
            Mode::Failsafe => Kind::Failsafe,
            Mode::Forking { .. } => Kind::Forking,
            Mode::Broadcast(_) => Kind::Broadcast,
            Mode::Multicast { .. } => Kind::Multicast,
        }
    }

    /// Checks ranges; `rules` are the service's rule names (multicast must
    /// name one). Field names are the wire message's (`attempts`,
    /// `backoff_ms`, ...).
    pub fn check(&self, rules: &[&str]) -> Result<(), FieldError> {
        match self {
            Mode::Failover(f) => f.check(),
            Mode::Failfast | Mode::Failsafe => Ok(()),
            Mode::Forking { forks } => {
                if *forks < 2 || *forks > MAX_FORKS {
                    return Err(FieldError::new(
                        "forks",
                        format!("{forks} is outside 2..={MAX_FORKS}"),
                    ));
                }
                Ok(())
            }
            Mode::Broadcast(b) => b.check(),
            Mode::Multicast { route, broadcast } => {
                broadcast.check()?;
                if route.is_empty() {
                    return Err(FieldError::new(
                        "route",
                        "multicast needs the name of a routing rule",
                    ));
                }
                if !rules.contains(&route.as_str()) {
                    return Err(FieldError::new(
                        "route",
                        format!("no routing rule named {route:?} in this service"),
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Failover {
    fn check(&self) -> Result<(), FieldError> {
        if self.attempts == 0 || self.attempts > MAX_ATTEMPTS {
            return Err(FieldError::new(
                "attempts",
                format!("{} is outside 1..={MAX_ATTEMPTS}", self.attempts),
            ));
        }
        let ms = |d: Duration| d.as_millis();
        if self.backoff > MAX_BACKOFF {
            return Err(FieldError::new(
                "backoff_ms",
                format!("{} is outside 0..={}", ms(self.backoff), ms(MAX_BACKOFF)),
            ));
        }
        if self.backoff_max < self.backoff || self.backoff_max > MAX_BACKOFF_MAX {
            return Err(FieldError::new(
                "backoff_max_ms",
                format!(
                    "{} is outside backoff_ms..={} ({}..={})",
                    ms(self.backoff_max),
                    ms(MAX_BACKOFF_MAX),
                    ms(self.backoff),
                    ms(MAX_BACKOFF_MAX)
                ),
            ));
        }
        if self.retry_on.is_empty() || self.retry_on.len() > MAX_RETRY_ON {
            return Err(FieldError::new(
                "retry_on",
                format!("{} codes, not 1..={MAX_RETRY_ON}", self.retry_on.len()),
            ));
        }
        if let Some(i) = self.retry_on.iter().position(|c| *c == Code::Ok) {
            return Err(FieldError::new(
                format!("retry_on[{i}]"),
                "OK is not an error to retry",
            ));
        }
        Ok(())
    }
}

impl Broadcast {
    fn check(&self) -> Result<(), FieldError> {
        if self.max_failure_percent > 100 {
            return Err(FieldError::new(
                "max_failure_percent",
                format!("{} is outside 0..=100", self.max_failure_percent),
            ));
        }
        Ok(())
    }
}

impl fmt::Display for Mode {
    /// As `ctl get` shows it: `failover attempts=3 backoff=10ms..100ms
    /// retry_on=UNAVAILABLE`, `forking forks=2`, ...
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fan_out = |f: &mut fmt::Formatter<'_>, b: &Broadcast| {
            write!(
                f,
                " collect={} max_failure_percent={}",
                b.collect.name(),
                b.max_failure_percent
            )
        };
        f.write_str(self.kind().name())?;
        match self {
            Mode::Failover(o) => {
                let codes: Vec<&str> = o.retry_on.iter().map(|c| c.name()).collect();
                write!(
                    f,
                    " attempts={} backoff={}ms..{}ms retry_on={}",
                    o.attempts,
                    o.backoff.as_millis(),
                    o.backoff_max.as_millis(),
                    codes.join(",")
                )
            }
            Mode::Failfast | Mode::Failsafe => Ok(()),
            Mode::Forking { forks } => write!(f, " forks={forks}"),
            Mode::Broadcast(b) => fan_out(f, b),
            Mode::Multicast { route, broadcast } => {
                fan_out(f, broadcast)?;
                write!(f, " route={route}")
            }
        }
    }
}

/// The retry budget: retries (and extra hedges) may add `percent` of the
/// calls plus `min_per_sec` per second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    /// Percentage of the calls, `0..=100`.
    pub percent: u32,
    /// Retries per second always allowed.
    pub min_per_sec: u32,
}

impl Default for Budget {
    /// Finagle's defaults: 20 % of the calls plus 10 per second.
    fn default() -> Self {
        Budget {
            percent: 20,
            min_per_sec: 10,
        }
    }
}

/// A service's cluster settings (persisted, pushed with the list).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterConfig {
    /// The service's mode.
    pub default: Mode,
    /// Per-method modes, by "/package.Service/Method".
    pub methods: BTreeMap<String, Mode>,
    /// The retry budget.
    pub budget: Budget,
    /// The deadline of a call whose caller set none (`None`: no default),
    /// `1ms..=MAX_DEADLINE`.
    pub deadline: Option<Duration>,
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
        if self.budget.percent > 100 {
            return Err(FieldError::new(
                "budget_percent",
                format!("{} is outside 0..=100", self.budget.percent),
            ));
        }
        if self.budget.min_per_sec > MAX_BUDGET_MIN_PER_SEC {
            return Err(FieldError::new(
                "budget_min_per_sec",
                format!(
                    "{} is outside 0..={MAX_BUDGET_MIN_PER_SEC}",
                    self.budget.min_per_sec
                ),
            ));
        }
        if let Some(d) = self.deadline {
            if d.is_zero() || d > MAX_DEADLINE {
                return Err(FieldError::new(
                    "deadline_ms",
                    format!(
                        "{} is outside 1..={} (0 means no default deadline)",
                        d.as_millis(),
                        MAX_DEADLINE.as_millis()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The mode for `method` (the service's when it has none of its own).
    pub fn mode_for(&self, method: &str) -> &Mode {
        self.methods.get(method).unwrap_or(&self.default)
    }

    /// Rule names the settings depend on (multicast routes).
    pub fn routes(&self) -> impl Iterator<Item = &str> {
        std::iter::once(&self.default)
            .chain(self.methods.values())
            .filter_map(|m| match m {
                Mode::Multicast { route, .. } => Some(route.as_str()),
                _ => None,
            })
    }
}

/// A change to one mode, the service's or a method's: only what is set
/// changes (an operator's `ctl set-cluster`). Fields that do not belong to
/// the resulting kind are refused, naming the field (the wire's names).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModeChange {
    /// The kind; `None`: the kind in force.
    pub kind: Option<Kind>,
    /// Failover: total attempts.
    pub attempts: Option<u32>,
    /// Failover: base backoff.
    pub backoff: Option<Duration>,
    /// Failover: largest backoff.
    pub backoff_max: Option<Duration>,
    /// Failover: the codes retried (replacing the list in force).
    pub retry_on: Option<Vec<Code>>,
    /// Forking: attempts at once.
    pub forks: Option<u32>,
    /// Broadcast, multicast: what the caller gets.
    pub collect: Option<Collect>,
    /// Broadcast, multicast: the failure percentage that fails the call.
    pub max_failure_percent: Option<u32>,
    /// Multicast: the routing rule.
    pub route: Option<String>,
}

impl ModeChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == ModeChange::default()
    }

    /// The mode this change makes of `current`: the same kind keeps every
    /// setting not given, another kind (or `reset`) starts from that kind's
    /// defaults. A new base backoff keeps the ceiling in force unless the
    /// ceiling would fall below it; then the ceiling is the default for it
    /// ([`Failover::backoff_max_for`]).
    pub fn apply(&self, current: &Mode, reset: bool) -> Result<Mode, FieldError> {
        let kind = self.kind.unwrap_or(current.kind());
        let mut m = if reset || kind != current.kind() {
            Mode::of(kind)
        } else {
            current.clone()
        };
        let only = |field: &str, owner: &str| {
            Err(FieldError::new(
                field,
                format!("only applies to {owner}, not {}", kind.name()),
            ))
        };
        let failover_only = [
            ("attempts", self.attempts.is_some()),
            ("backoff_ms", self.backoff.is_some()),
            ("backoff_max_ms", self.backoff_max.is_some()),
            ("retry_on", self.retry_on.is_some()),
        ];
        let fan_out_only = [
            ("collect", self.collect.is_some()),
            ("max_failure_percent", self.max_failure_percent.is_some()),
        ];
        match &mut m {
            Mode::Failover(f) => {
                if let Some(v) = self.attempts {
                    f.attempts = v;
                }
                if let Some(v) = self.backoff {
                    f.backoff = v;
                    if f.backoff_max < v {
                        f.backoff_max = Failover::backoff_max_for(v);
                    }
                }
                if let Some(v) = self.backoff_max {
                    f.backoff_max = v;
                }
                if let Some(v) = &self.retry_on {
                    f.retry_on.clone_from(v);
                }
            }
            _ => {
                if let Some((field, _)) = failover_only.iter().find(|(_, set)| *set) {
                    return only(field, "failover");
                }
            }
        }
        match &mut m {
            Mode::Forking { forks } => {
                if let Some(v) = self.forks {
                    *forks = v;
                }
            }
            _ if self.forks.is_some() => return only("forks", "forking"),
            _ => {}
        }
        match &mut m {
            Mode::Broadcast(b) | Mode::Multicast { broadcast: b, .. } => {
                if let Some(v) = self.collect {
                    b.collect = v;
                }
                if let Some(v) = self.max_failure_percent {
                    b.max_failure_percent = v;
                }
            }
            _ => {
                if let Some((field, _)) = fan_out_only.iter().find(|(_, set)| *set) {
                    return only(field, "broadcast and multicast");
                }
            }
        }
        match &mut m {
            Mode::Multicast { route, .. } => {
                if let Some(v) = &self.route {
                    route.clone_from(v);
                }
            }
            _ if self.route.is_some() => return only("route", "multicast"),
            _ => {}
        }
        Ok(m)
    }
}

/// A change to a service's cluster settings: one mode (the service's, or
/// one method's) and the retry budget; only what is set changes. Applied by
/// the daemon's one writer to the settings in force, so two operators'
/// changes to different settings both take effect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClusterChange {
    /// The method whose mode changes; `None`: the service's.
    pub method: Option<String>,
    /// Remove the method's own mode (it follows the service's again).
    pub clear: bool,
    /// Start from the defaults: the mode's own, and for the service's mode
    /// the default retry budget too (methods' own modes are kept).
    pub reset: bool,
    /// What changes in the mode.
    pub mode: ModeChange,
    /// The budget's percentage.
    pub budget_percent: Option<u32>,
    /// The budget's floor per second.
    pub budget_min_per_sec: Option<u32>,
    /// The default deadline per call: `Some(None)` removes it.
    pub deadline: Option<Option<Duration>>,
}

impl ClusterChange {
    /// Checks what can be checked without the settings in force: the
    /// method's path, `clear` with a method and nothing else.
    pub fn check(&self) -> Result<(), FieldError> {
        if let Some(m) = &self.method {
            check_method(m).map_err(|e| FieldError::new("method", e))?;
        }
        if self.clear {
            if self.method.is_none() {
                return Err(FieldError::new(
                    "clear",
                    "only a method's own mode can be cleared: name the method",
                ));
            }
            if self.reset || !self.mode.is_empty() {
                return Err(FieldError::new(
                    "clear",
                    "clears the method's mode: set nothing else of it",
                ));
            }
        }
        Ok(())
    }

    /// The settings this change makes of `current`, checked as a whole
    /// against the service's rule names (`rules`, for multicast routes).
    /// Errors name the change's fields (`attempts`, `budget_percent`, ...:
    /// the same names as a mode's).
    pub fn apply(
        &self,
        current: &ClusterConfig,
        rules: &[&str],
    ) -> Result<ClusterConfig, FieldError> {
        self.check()?;
        let mut c = current.clone();
        match &self.method {
            None => {
                if self.reset {
                    c.budget = Budget::default();
                }
                if self.reset || !self.mode.is_empty() {
                    c.default = self.mode.apply(&current.default, self.reset)?;
                    c.default.check(rules)?;
                }
            }
            Some(m) if self.clear => {
                c.methods.remove(m);
            }
            Some(m) => {
                // A method without its own mode starts from the one it
                // follows now: the service's.
                let now = current.methods.get(m).unwrap_or(&current.default);
                let mode = self.mode.apply(now, self.reset)?;
                mode.check(rules)?;
                if c.methods.insert(m.clone(), mode).is_none() && c.methods.len() > MAX_METHODS {
                    return Err(FieldError::new(
                        "method",
                        format!("a mode for one more method than the {MAX_METHODS} allowed"),
                    ));
                }
            }
        }
        if let Some(v) = self.budget_percent {
            c.budget.percent = v;
        }
        if let Some(v) = self.budget_min_per_sec {
            c.budget.min_per_sec = v;
        }
        if let Some(d) = self.deadline {
            c.deadline = d;
        }
        // The budget's own fields have the change's names; the rest (the
        // number of methods) is the whole configuration's.
        c.check(rules)?;
        Ok(c)
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

    fn failover(f: impl FnOnce(&mut Failover)) -> Mode {
        let mut o = Failover::default();
        f(&mut o);
        Mode::Failover(o)
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(ClusterConfig::default().check(&[]), Ok(()));
        for k in Kind::ALL {
            let mut m = Mode::of(k);
            if let Mode::Multicast { route, .. } = &mut m {
                *route = "r".into();
            }
            assert_eq!(m.check(&["r"]), Ok(()), "{k:?}");
            assert_eq!(m.kind(), k);
        }
    }

    #[test]
    fn out_of_range_settings_are_refused() {
        let bad = |m: Mode| m.check(&["r"]).unwrap_err().field;
        assert_eq!(bad(failover(|f| f.attempts = 0)), "attempts");
        assert_eq!(bad(failover(|f| f.attempts = 11)), "attempts");
        assert_eq!(
            bad(failover(|f| {
                f.backoff = Duration::from_millis(50);
                f.backoff_max = Duration::from_millis(10);
            })),
            "backoff_max_ms"
        );
        assert_eq!(bad(failover(|f| f.retry_on.clear())), "retry_on");
        assert_eq!(
            bad(failover(|f| f.retry_on = vec![Code::Ok])),
            "retry_on[0]"
        );
        assert_eq!(bad(Mode::Forking { forks: 1 }), "forks");
        assert_eq!(
            bad(Mode::Broadcast(Broadcast {
                max_failure_percent: 101,
                ..Broadcast::default()
            })),
            "max_failure_percent"
        );
        assert_eq!(bad(Mode::of(Kind::Multicast)), "route");
        assert_eq!(
            bad(Mode::Multicast {
                route: "other".into(),
                broadcast: Broadcast::default()
            }),
            "route"
        );
    }

    #[test]
    fn config_errors_name_the_path() {
        let mut c = ClusterConfig::default();
        c.methods
            .insert("/a.B/C".into(), failover(|f| f.attempts = 0));
        assert_eq!(
            c.check(&[]).unwrap_err().field,
            "methods[\"/a.B/C\"].attempts"
        );
        let mut c = ClusterConfig::default();
        c.methods.insert("nope".into(), Mode::default());
        assert_eq!(c.check(&[]).unwrap_err().field, "methods[\"nope\"]");
        let c = ClusterConfig {
            budget: Budget {
                percent: 101,
                ..Budget::default()
            },
            ..ClusterConfig::default()
        };
        assert_eq!(c.check(&[]).unwrap_err().field, "budget_percent");
        for (d, ok) in [
            (Duration::ZERO, false),
            (Duration::from_millis(1), true),
            (MAX_DEADLINE, true),
            (MAX_DEADLINE + Duration::from_millis(1), false),
        ] {
            let c = ClusterConfig {
                deadline: Some(d),
                ..ClusterConfig::default()
            };
            let r = c.check(&[]).map_err(|e| e.field);
            assert_eq!(r.is_ok(), ok, "{d:?}");
            if !ok {
                assert_eq!(r.unwrap_err(), "deadline_ms");
            }
        }
    }

    #[test]
    fn a_change_keeps_what_it_does_not_name() {
        let ms = Duration::from_millis;
        let set = |c: &ClusterConfig, ch: ClusterChange| ch.apply(c, &["r"]).unwrap();
        let c = set(
            &ClusterConfig::default(),
            ClusterChange {
                mode: ModeChange {
                    backoff: Some(ms(50)),
                    ..ModeChange::default()
                },
                budget_percent: Some(30),
                ..ClusterChange::default()
            },
        );
        // Then only the attempts: the backoff and the budget stay.
        let c = set(
            &c,
            ClusterChange {
                mode: ModeChange {
                    kind: Some(Kind::Failover),
                    attempts: Some(5),
                    ..ModeChange::default()
                },
                ..ClusterChange::default()
            },
        );
        let Mode::Failover(f) = &c.default else {
            panic!("{:?}", c.default)
        };
        assert_eq!((f.attempts, f.backoff, f.backoff_max), (5, ms(50), ms(100)));
        assert_eq!(c.budget.percent, 30);
        // A backoff above the ceiling takes the ceiling that goes with it.
        let up = set(
            &c,
            ClusterChange {
                mode: ModeChange {
                    backoff: Some(ms(200)),
                    ..ModeChange::default()
                },
                ..ClusterChange::default()
            },
        );
        assert!(matches!(&up.default, Mode::Failover(f) if f.backoff_max == ms(2000)));
        // A method starts from the service's mode; clear removes it again.
        let method = || Some("/a.B/C".to_string());
        let m = set(
            &c,
            ClusterChange {
                method: method(),
                mode: ModeChange {
                    attempts: Some(2),
                    ..ModeChange::default()
                },
                ..ClusterChange::default()
            },
        );
        assert!(
            matches!(&m.methods["/a.B/C"], Mode::Failover(f) if f.attempts == 2 && f.backoff == ms(50))
        );
        let cleared = set(
            &m,
            ClusterChange {
                method: method(),
                clear: true,
                ..ClusterChange::default()
            },
        );
        assert_eq!(cleared, c);
        // Another kind starts from its defaults; reset too (and the budget).
        let forking = set(
            &c,
            ClusterChange {
                mode: ModeChange {
                    kind: Some(Kind::Forking),
                    ..ModeChange::default()
                },
                ..ClusterChange::default()
            },
        );
        assert_eq!(forking.default, Mode::Forking { forks: 2 });
        let reset = set(
            &c,
            ClusterChange {
                reset: true,
                ..ClusterChange::default()
            },
        );
        assert_eq!(reset, ClusterConfig::default());
        // A setting of another kind is refused, naming it.
        let e = ClusterChange {
            mode: ModeChange {
                kind: Some(Kind::Forking),
                attempts: Some(3),
                ..ModeChange::default()
            },
            ..ClusterChange::default()
        }
        .apply(&c, &[])
        .unwrap_err();
        assert_eq!(e.field, "attempts");
        assert!(e.reason.contains("only applies to failover"), "{e}");
        let e = ClusterChange {
            clear: true,
            ..ClusterChange::default()
        }
        .apply(&c, &[])
        .unwrap_err();
        assert_eq!(e.field, "clear");
    }

    #[test]
    fn modes_render_as_ctl_shows_them() {
        assert_eq!(
            Mode::default().to_string(),
            "failover attempts=3 backoff=10ms..100ms retry_on=UNAVAILABLE"
        );
        assert_eq!(Mode::Forking { forks: 2 }.to_string(), "forking forks=2");
        assert_eq!(
            Mode::Multicast {
                route: "ab".into(),
                broadcast: Broadcast {
                    collect: Collect::All,
                    max_failure_percent: 25
                }
            }
            .to_string(),
            "multicast collect=all max_failure_percent=25 route=ab"
        );
    }
}
