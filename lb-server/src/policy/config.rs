//! A service's policy settings: which policy, and every parameter, parsed from
//! and rendered to text (admin API, `lb-server ctl`, the store).
//!
//! Parameters are `name=value` strings so one format serves the CLI, the gRPC
//! API and persistence. Unknown names, names that do not belong to the chosen
//! policy and values out of range are refused with a [`FieldError`] whose
//! field is `params.NAME`. Rendering lists every parameter that applies,
//! defaults included, so `ctl get` shows what is in force.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::parse_duration;
use crate::model::FieldError;

use crate::health::HealthConfig;

use super::chash;
use super::load_aware::LoadAware;
use super::outcome::OutcomeWeights;
use super::shed::{self, ShedConfig};
use super::slow_start::SlowStart;

/// Default and upper bound of a list's length (entries in one period).
pub const DEFAULT_MAX_LIST_LEN: u32 = 1024;
/// Default `list_precision`: a fifth of a percent of the calls.
pub const DEFAULT_LIST_PRECISION: f64 = 0.002;
/// Largest `max_list_len` accepted.
pub const MAX_LIST_LEN: u32 = 65_536;

/// Which balancing policy a service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyKind {
    /// Equal shares, smooth order.
    RoundRobin,
    /// Smooth weighted round robin over static weights (nginx).
    WeightedRoundRobin,
    /// Equal probabilities, a random order per client.
    Random,
    /// Weights as probabilities, a random order per client.
    WeightedRandom,
    /// Modular hashing of a request key over the weighted list.
    Hash,
    /// Ring or Maglev table with bounded load.
    ConsistentHash,
    /// Fewest active requests (backend reports), static weights ignored.
    LeastConnections,
    /// Static weight ÷ active requests (Dubbo's LeastActive).
    LeastActive,
    /// Inverse of an EWMA of client-reported latency.
    FastestResponse,
    /// gRPC's ORCA formula over backend reports, plus active requests.
    #[default]
    LoadAware,
}

/// Every policy, in documentation order.
pub const ALL_POLICIES: [PolicyKind; 10] = [
    PolicyKind::RoundRobin,
    PolicyKind::WeightedRoundRobin,
    PolicyKind::Random,
    PolicyKind::WeightedRandom,
    PolicyKind::Hash,
    PolicyKind::ConsistentHash,
    PolicyKind::LeastConnections,
    PolicyKind::LeastActive,
    PolicyKind::FastestResponse,
    PolicyKind::LoadAware,
];

impl PolicyKind {
    /// The name used in the API, the CLI and the store.
    pub fn name(self) -> &'static str {
        match self {
            PolicyKind::RoundRobin => "round_robin",
            PolicyKind::WeightedRoundRobin => "weighted_round_robin",
            PolicyKind::Random => "random",
            PolicyKind::WeightedRandom => "weighted_random",
            PolicyKind::Hash => "hash",
            PolicyKind::ConsistentHash => "consistent_hash",
            PolicyKind::LeastConnections => "least_connections",
            PolicyKind::LeastActive => "least_active",
            PolicyKind::FastestResponse => "fastest_response",
            PolicyKind::LoadAware => "load_aware",
        }
    }

    /// Parses a policy name; `None` for an unknown one.
    pub fn parse(name: &str) -> Option<Self> {
        ALL_POLICIES.into_iter().find(|k| k.name() == name)
    }

    /// Whether plans depend on backends' load reports (re-plan on reports).
    pub fn uses_load(self) -> bool {
        matches!(
            self,
            PolicyKind::LoadAware | PolicyKind::LeastActive | PolicyKind::LeastConnections
        )
    }

    /// The parameters only this policy takes.
    fn own_params(self) -> &'static [&'static str] {
        match self {
            PolicyKind::ConsistentHash => &["algorithm", "table_size", "vnodes", "load_bound"],
            PolicyKind::FastestResponse => &["decay"],
            PolicyKind::LoadAware => &[
                "blackout",
                "expiry",
                "error_penalty",
                "min_ratio",
                "max_ratio",
                "active_weighting",
                "drain_horizon",
            ],
            _ => &[],
        }
    }
}

/// Health and shedding parameters (every policy), and the `HealthConfig` /
/// `ShedConfig` field each sets (for error messages).
const HEALTH_PARAMS: [(&str, &str); 16] = [
    ("panic_threshold", "panic_threshold"),
    ("readmit_window", "readmit_window"),
    ("eject_consecutive", "consecutive_failures"),
    ("eject_failure_percent", "failure_percent"),
    ("eject_failure_min_requests", "failure_min_requests"),
    ("eject_success_rate_stdev", "success_rate_stdev"),
    (
        "eject_success_rate_min_requests",
        "success_rate_min_requests",
    ),
    ("eject_success_rate_min_hosts", "success_rate_min_hosts"),
    ("eject_base_time", "base_ejection"),
    ("eject_max_time", "max_ejection"),
    ("eject_max_percent", "max_ejection_percent"),
    ("utilization_ceiling", "utilization_ceiling"),
    ("shed_target", "target"),
    ("shed_delay", "delay"),
    ("shed_max_drop", "max_drop"),
    ("shed_floor", "floor"),
];

/// Parameters every policy takes.
const COMMON_PARAMS: [&str; 11] = [
    "max_list_len",
    "list_precision",
    "min_plan_interval",
    "hysteresis",
    "slow_start_window",
    "slow_start_aggression",
    "slow_start_min_percent",
    "outcome_weights",
    "outcome_floor",
    "outcome_failure_step",
    "outcome_success_step",
];

/// A service's policy and all its parameters (persisted).
#[derive(Debug, Clone, PartialEq)]
pub struct ServicePolicy {
    /// The balancing policy.
    pub kind: PolicyKind,
    /// Cap on a list's length; longer periods are scaled down.
    pub max_list_len: u32,
    /// Computed (non-integer) weights are listed in the shortest period whose
    /// every share is within this much of the computed one (a fraction of
    /// all calls), up to `max_list_len`; 0 always uses `max_list_len`.
    pub list_precision: f64,
    /// Load- and outcome-driven re-plans happen at most this often (damping;
    /// membership and operator changes are always immediate).
    pub min_plan_interval: Duration,
    /// A re-plan whose weights all moved by less than this fraction is not
    /// pushed (hysteresis against flapping).
    pub hysteresis: f64,
    /// Ramp for new or recovered instances.
    pub slow_start: SlowStart,
    /// Dynamic weights from call outcomes.
    pub outcome: OutcomeWeights,
    /// load_aware's settings.
    pub load_aware: LoadAware,
    /// consistent_hash's settings.
    pub chash: chash::Params,
    /// fastest_response's EWMA time constant.
    pub ewma_decay: Duration,
    /// Outlier ejection and circuit breaking.
    pub health: HealthConfig,
    /// Load shedding.
    pub shed: ShedConfig,
    /// Below this fraction of healthy instances, ejections are ignored (and
    /// a zone's clients spill to every zone): Envoy's panic threshold.
    pub panic_threshold: f64,
    /// A re-admitted instance ramps up over this window (slow start).
    pub readmit_window: Duration,
}

impl Default for ServicePolicy {
    fn default() -> Self {
        ServicePolicy::with_kind(PolicyKind::default())
    }
}

fn bad(name: &str, reason: impl Into<String>) -> FieldError {
    FieldError::new(format!("params.{name}"), reason)
}

fn duration(name: &str, v: &str, min: Duration, max: Duration) -> Result<Duration, FieldError> {
    let d = parse_duration(v).map_err(|e| bad(name, e))?;
    if d < min || d > max {
        return Err(bad(
            name,
            format!(
                "{v} is outside {}..={}",
                show_duration(min),
                show_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn number(name: &str, v: &str, min: f64, max: f64) -> Result<f64, FieldError> {
    let x: f64 = v
        .trim()
        .parse()
        .map_err(|_| bad(name, format!("{v:?} is not a number")))?;
    if !x.is_finite() || x < min || x > max {
        return Err(bad(name, format!("{v} is outside {min}..={max}")));
    }
    Ok(x)
}

fn boolean(name: &str, v: &str) -> Result<bool, FieldError> {
    match v.trim() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(bad(name, format!("{v:?} is not true or false"))),
    }
}

/// Renders a duration the way [`parse_duration`] reads it.
pub fn show_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl ServicePolicy {
    /// `kind` with every parameter at its default.
    pub fn with_kind(kind: PolicyKind) -> Self {
        ServicePolicy {
            kind,
            max_list_len: DEFAULT_MAX_LIST_LEN,
            list_precision: DEFAULT_LIST_PRECISION,
            min_plan_interval: Duration::from_millis(50),
            hysteresis: 0.05,
            slow_start: SlowStart::default(),
            outcome: OutcomeWeights::default(),
            // Our backends report every second straight to the daemon, so two
            // reports are enough to trust: a shorter blackout than A58's 10 s.
            load_aware: LoadAware {
                blackout: Duration::from_secs(2),
                ..LoadAware::default()
            },
            chash: chash::Params::default(),
            ewma_decay: Duration::from_secs(10),
            health: HealthConfig::default(),
            shed: ShedConfig::default(),
            panic_threshold: 0.5,
            readmit_window: Duration::from_secs(5),
        }
    }

    /// Parses a policy name and `params` on top of `base`'s common settings
    /// (e.g. the daemon's `--max-list-len`). Every error names the parameter.
    pub fn parse(
        name: &str,
        params: &BTreeMap<String, String>,
        base: &ServicePolicy,
    ) -> Result<ServicePolicy, FieldError> {
        let kind = PolicyKind::parse(name).ok_or_else(|| {
            let known: Vec<&str> = ALL_POLICIES.iter().map(|k| k.name()).collect();
            FieldError::new(
                "name",
                format!("unknown policy {name:?}; known: {}", known.join(", ")),
            )
        })?;
        let mut p = ServicePolicy::with_kind(kind);
        p.max_list_len = base.max_list_len;
        for (k, v) in params {
            let k = k.as_str();
            if !COMMON_PARAMS.contains(&k)
                && !HEALTH_PARAMS.iter().any(|(p, _)| *p == k)
                && !kind.own_params().contains(&k)
            {
                let owner = ALL_POLICIES.iter().find(|o| o.own_params().contains(&k));
                return Err(bad(
                    k,
                    match owner {
                        Some(o) => format!("belongs to {}, not {}", o.name(), kind.name()),
                        None => "unknown parameter".to_string(),
                    },
                ));
            }
            p.set(k, v)?;
        }
        p.check()?;
        Ok(p)
    }

    fn set(&mut self, k: &str, v: &str) -> Result<(), FieldError> {
        let hour = Duration::from_secs(3600);
        match k {
            "max_list_len" => {
                self.max_list_len = number(k, v, 1.0, f64::from(MAX_LIST_LEN))? as u32;
            }
            "list_precision" => self.list_precision = number(k, v, 0.0, 0.05)?,
            "min_plan_interval" => {
                self.min_plan_interval = duration(k, v, Duration::ZERO, Duration::from_secs(10))?
            }
            "hysteresis" => self.hysteresis = number(k, v, 0.0, 0.5)?,
            "slow_start_window" => self.slow_start.window = duration(k, v, Duration::ZERO, hour)?,
            "slow_start_aggression" => self.slow_start.aggression = number(k, v, 0.01, 100.0)?,
            "slow_start_min_percent" => {
                self.slow_start.min_weight_percent = number(k, v, 0.0, 100.0)?
            }
            "outcome_weights" => self.outcome.enabled = boolean(k, v)?,
            "outcome_floor" => self.outcome.floor_ratio = number(k, v, 0.001, 1.0)?,
            "outcome_failure_step" => self.outcome.failure_step = number(k, v, 0.0, 1.0)?,
            "outcome_success_step" => self.outcome.success_step = number(k, v, 0.0, 1.0)?,
            "algorithm" => {
                self.chash.algorithm = match v.trim() {
                    "ring" => chash::Algorithm::Ring,
                    "maglev" => chash::Algorithm::Maglev,
                    _ => return Err(bad(k, format!("{v:?} is not ring or maglev"))),
                }
            }
            "table_size" => {
                self.chash.table_size = number(k, v, 0.0, f64::from(chash::MAX_TABLE_SIZE))? as u32
            }
            "vnodes" => self.chash.vnodes = number(k, v, 1.0, 1000.0)? as u32,
            "load_bound" => {
                self.chash.load_bound = if v.trim() == "none" {
                    f64::INFINITY
                } else {
                    number(k, v, 1.0, 100.0)?
                }
            }
            "decay" => {
                self.ewma_decay =
                    duration(k, v, Duration::from_millis(100), Duration::from_secs(600))?
            }
            "blackout" => {
                self.load_aware.blackout = duration(k, v, Duration::ZERO, Duration::from_secs(600))?
            }
            "expiry" => self.load_aware.expiry = duration(k, v, Duration::from_secs(1), hour)?,
            "error_penalty" => self.load_aware.error_penalty = number(k, v, 0.0, 100.0)?,
            "min_ratio" => self.load_aware.min_ratio = number(k, v, 0.001, 1.0)?,
            "max_ratio" => self.load_aware.max_ratio = number(k, v, 1.0, 1000.0)?,
            "active_weighting" => self.load_aware.active_weighting = boolean(k, v)?,
            "drain_horizon" => {
                self.load_aware.drain_horizon =
                    duration(k, v, Duration::from_millis(10), Duration::from_secs(60))?
            }
            "panic_threshold" => self.panic_threshold = number(k, v, 0.0, 100.0)? / 100.0,
            "readmit_window" => self.readmit_window = duration(k, v, Duration::ZERO, hour)?,
            "eject_consecutive" => {
                self.health.consecutive_failures = number(k, v, 0.0, 1e6)? as u32
            }
            "eject_failure_percent" => {
                self.health.failure_percent = number(k, v, 0.0, 100.0)? as u32
            }
            "eject_failure_min_requests" => {
                self.health.failure_min_requests = number(k, v, 0.0, 1e9)? as u64
            }
            "eject_success_rate_stdev" => {
                self.health.success_rate_stdev = number(k, v, 0.0, 100.0)?
            }
            "eject_success_rate_min_requests" => {
                self.health.success_rate_min_requests = number(k, v, 0.0, 1e9)? as u64
            }
            "eject_success_rate_min_hosts" => {
                self.health.success_rate_min_hosts = number(k, v, 1.0, 1e6)? as usize
            }
            "eject_base_time" => {
                self.health.base_ejection = duration(k, v, Duration::from_millis(100), 24 * hour)?
            }
            "eject_max_time" => {
                self.health.max_ejection = duration(k, v, Duration::from_millis(100), 24 * hour)?
            }
            "eject_max_percent" => {
                self.health.max_ejection_percent = number(k, v, 0.0, 100.0)? as u32
            }
            "utilization_ceiling" => self.health.utilization_ceiling = number(k, v, 0.0, 16.0)?,
            "shed_target" => self.shed.target = number(k, v, 0.0, 1.0)?,
            "shed_delay" => {
                self.shed.delay = duration(k, v, Duration::ZERO, Duration::from_secs(60))?
            }
            "shed_max_drop" => self.shed.max_drop = number(k, v, 0.0, shed::MAX_DROP_LIMIT)?,
            "shed_floor" => self.shed.floor = number(k, v, 0.0, shed::MAX_DROP_LIMIT)?,
            _ => return Err(bad(k, "unknown parameter")),
        }
        Ok(())
    }

    /// Cross-parameter checks.
    fn check(&self) -> Result<(), FieldError> {
        if self.kind == PolicyKind::ConsistentHash {
            chash::validate(&self.chash).map_err(|e| FieldError::from(e).within("params"))?;
        }
        if self.load_aware.expiry <= self.load_aware.blackout {
            return Err(bad("expiry", "must be longer than blackout"));
        }
        let param = |field: &str| {
            HEALTH_PARAMS
                .iter()
                .find(|(_, f)| *f == field)
                .map_or(field.to_string(), |(p, _)| p.to_string())
        };
        self.health
            .check()
            .map_err(|e| bad(&param(&e.field), e.reason))?;
        self.shed
            .check()
            .map_err(|e| bad(&param(&e.field), e.reason))?;
        Ok(())
    }

    /// Every parameter that applies to this policy, as text (defaults included).
    pub fn params(&self) -> BTreeMap<String, String> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: String| {
            m.insert(k.to_string(), v);
        };
        put("max_list_len", self.max_list_len.to_string());
        put("list_precision", self.list_precision.to_string());
        put("min_plan_interval", show_duration(self.min_plan_interval));
        put("hysteresis", self.hysteresis.to_string());
        put("slow_start_window", show_duration(self.slow_start.window));
        put(
            "slow_start_aggression",
            self.slow_start.aggression.to_string(),
        );
        put(
            "slow_start_min_percent",
            self.slow_start.min_weight_percent.to_string(),
        );
        put("outcome_weights", self.outcome.enabled.to_string());
        put("outcome_floor", self.outcome.floor_ratio.to_string());
        put(
            "outcome_failure_step",
            self.outcome.failure_step.to_string(),
        );
        put(
            "outcome_success_step",
            self.outcome.success_step.to_string(),
        );
        let h = &self.health;
        put(
            "panic_threshold",
            (self.panic_threshold * 100.0).to_string(),
        );
        put("readmit_window", show_duration(self.readmit_window));
        put("eject_consecutive", h.consecutive_failures.to_string());
        put("eject_failure_percent", h.failure_percent.to_string());
        put(
            "eject_failure_min_requests",
            h.failure_min_requests.to_string(),
        );
        put("eject_success_rate_stdev", h.success_rate_stdev.to_string());
        put(
            "eject_success_rate_min_requests",
            h.success_rate_min_requests.to_string(),
        );
        put(
            "eject_success_rate_min_hosts",
            h.success_rate_min_hosts.to_string(),
        );
        put("eject_base_time", show_duration(h.base_ejection));
        put("eject_max_time", show_duration(h.max_ejection));
        put("eject_max_percent", h.max_ejection_percent.to_string());
        put("utilization_ceiling", h.utilization_ceiling.to_string());
        put("shed_target", self.shed.target.to_string());
        put("shed_delay", show_duration(self.shed.delay));
        put("shed_max_drop", self.shed.max_drop.to_string());
        put("shed_floor", self.shed.floor.to_string());
        match self.kind {
            PolicyKind::ConsistentHash => {
                put(
                    "algorithm",
                    match self.chash.algorithm {
                        chash::Algorithm::Ring => "ring".into(),
                        chash::Algorithm::Maglev => "maglev".into(),
                    },
                );
                put("table_size", self.chash.table_size.to_string());
                put("vnodes", self.chash.vnodes.to_string());
                put(
                    "load_bound",
                    if self.chash.load_bound.is_finite() {
                        self.chash.load_bound.to_string()
                    } else {
                        "none".into()
                    },
                );
            }
            PolicyKind::FastestResponse => put("decay", show_duration(self.ewma_decay)),
            PolicyKind::LoadAware => {
                let l = &self.load_aware;
                put("blackout", show_duration(l.blackout));
                put("expiry", show_duration(l.expiry));
                put("error_penalty", l.error_penalty.to_string());
                put("min_ratio", l.min_ratio.to_string());
                put("max_ratio", l.max_ratio.to_string());
                put("active_weighting", l.active_weighting.to_string());
                put("drain_horizon", show_duration(l.drain_horizon));
            }
            _ => {}
        }
        m
    }
}

/// One line per parameter: name, default, range, meaning (for `ctl --help`
/// and the README).
pub const PARAMS_HELP: &str = "\
Parameters of every policy:
  max_list_len=1024          entries in one list period (1..=65536)
  list_precision=0.002       computed weights: shortest period with every share within this of the target (0..=0.05; 0 = always max_list_len)
  min_plan_interval=50ms     damping: load/outcome re-plans at most this often (0..=10s)
  hysteresis=0.05            do not push a re-plan whose weights moved less than this fraction (0..=0.5)
  slow_start_window=0s       ramp new/recovered instances over this window (0 = off; ..=1h)
  slow_start_aggression=1    ramp curve exponent: weight × (t/window)^(1/aggression) (0.01..=100)
  slow_start_min_percent=10  lowest weight during the ramp, percent (0..=100)
  outcome_weights=false      lower weights on failed calls, raise on successes (true/false)
  outcome_floor=0.05         lowest efficient weight, fraction of the weight (0.001..=1)
  outcome_failure_step=0.1   weight fraction lost per failed call (0..=1)
  outcome_success_step=0.01  weight fraction regained per successful call (0..=1)
Health, ejection and load shedding (every policy):
  eject_consecutive=5        eject after a client reports this many consecutive failures (0 = off)
  eject_failure_percent=85   eject when this % of an interval's calls failed (0..=100, 0 = off) ...
  eject_failure_min_requests=20  ... with at least this many calls
  eject_success_rate_stdev=1.9   eject below mean - this x stdev of success rates (0 = off) ...
  eject_success_rate_min_requests=50  ... over instances with this many calls ...
  eject_success_rate_min_hosts=5      ... when at least this many have them
  eject_base_time=10s        ejection time = this x times ejected ...
  eject_max_time=300s        ... capped at this
  eject_max_percent=50       at most this % of instances out at once (at least one may be)
  readmit_window=5s          a re-admitted instance ramps up over this window (slow start)
  utilization_ceiling=0      take out an instance reporting utilization >= this until <= this - 0.1 (0 = off)
  panic_threshold=50         below this % healthy, use every instance (ejections ignored; zones spill)
  shed_target=0              drop calls so the service's mean utilization stays at this (0..=1, 0 = off)
  shed_delay=0s              drop calls so the service's reported backlog drains within this (0 = off; ..=60s)
  shed_max_drop=0.9          most of the calls ever dropped (0..=0.99)
  shed_floor=0               always drop at least this fraction of calls, whatever the load (0..=0.99)
consistent_hash:
  algorithm=maglev           maglev or ring
  table_size=0               lookup table size, a prime (0 = smallest prime >= 100 x instances; ..=1000003)
  vnodes=100                 ring: virtual nodes per unit of weight (1..=1000)
  load_bound=1.25            no instance above c x the average share of keys (c >= 1, or none)
fastest_response:
  decay=10s                  EWMA time constant; estimates relax to the mean without samples (100ms..=10m)
load_aware:
  blackout=2s                ignore an instance's reports for this long after it starts reporting (..=10m)
  expiry=3m                  ignore reports older than this (1s..=1h, > blackout)
  error_penalty=1            weight = qps / (utilization + eps/qps x error_penalty) (0..=100)
  min_ratio=0.1              clamp weights to [min_ratio, max_ratio] x the mean
  max_ratio=10
  active_weighting=true      throttle backlogs: scale by 1 - (active / (qps/utilization)) / drain_horizon
  drain_horizon=500ms        a backlog that takes this long to drain takes the weight to min_ratio (10ms..=60s)";

#[cfg(test)]
mod tests {
    use super::*;

    fn params(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for k in ALL_POLICIES {
            assert_eq!(PolicyKind::parse(k.name()), Some(k));
        }
        assert_eq!(PolicyKind::parse("nope"), None);
    }

    #[test]
    fn parse_render_parse_is_identity() {
        let base = ServicePolicy::default();
        for k in ALL_POLICIES {
            let p = ServicePolicy::parse(k.name(), &BTreeMap::new(), &base).unwrap();
            let again = ServicePolicy::parse(k.name(), &p.params(), &base).unwrap();
            assert_eq!(p, again, "{}", k.name());
        }
        let p = ServicePolicy::parse(
            "consistent_hash",
            &params(&[
                ("algorithm", "ring"),
                ("table_size", "1009"),
                ("load_bound", "none"),
            ]),
            &base,
        )
        .unwrap();
        assert_eq!(p.chash.algorithm, chash::Algorithm::Ring);
        assert_eq!(p.chash.table_size, 1009);
        assert!(p.chash.load_bound.is_infinite());
        let again = ServicePolicy::parse("consistent_hash", &p.params(), &base).unwrap();
        assert_eq!(p.chash.table_size, again.chash.table_size);
    }

    #[test]
    fn bad_input_names_the_parameter() {
        let base = ServicePolicy::default();
        let err = |name: &str, kv: &[(&str, &str)]| {
            ServicePolicy::parse(name, &params(kv), &base)
                .unwrap_err()
                .field
        };
        assert_eq!(err("fastest", &[]), "name");
        assert_eq!(
            err("consistent_hash", &[("load_bound", "0.9")]),
            "params.load_bound"
        );
        assert_eq!(
            err("consistent_hash", &[("table_size", "1000")]),
            "params.table_size"
        );
        assert_eq!(
            err("consistent_hash", &[("table_size", "2000003")]),
            "params.table_size"
        );
        assert_eq!(
            err("round_robin", &[("load_bound", "2")]),
            "params.load_bound"
        );
        assert_eq!(err("round_robin", &[("bogus", "2")]), "params.bogus");
        assert_eq!(
            err("round_robin", &[("slow_start_window", "-1s")]),
            "params.slow_start_window"
        );
        assert_eq!(
            err("round_robin", &[("max_list_len", "70000")]),
            "params.max_list_len"
        );
        assert_eq!(
            err("load_aware", &[("blackout", "5m"), ("expiry", "1m")]),
            "params.expiry"
        );
        assert_eq!(
            err("round_robin", &[("hysteresis", "NaN")]),
            "params.hysteresis"
        );
    }
}
