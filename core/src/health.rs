//! Passive health: outlier ejection from client-reported call outcomes, and a
//! circuit breaker on backend-reported utilization.
//!
//! Sources:
//! - Envoy's outlier detection (Envoy docs, `intro/arch_overview/upstream/outlier`
//!   and `config.cluster.v3.OutlierDetection`): three detectors and one
//!   ejection algorithm.
//!   - *Consecutive failures* (Envoy's `consecutive_5xx`, default 5) eject at
//!     once, inline, when a report shows the run.
//!   - *Failure percentage* (`failure_percentage_threshold`, default 85, and
//!     `failure_percentage_request_volume`): once per interval, a host whose
//!     `failed × 100 ≥ threshold × finished` over the interval, with enough
//!     finished calls, is ejected.
//!   - *Success rate* (`success_rate_stdev_factor` 1900 = 1.9,
//!     `success_rate_request_volume`, `success_rate_minimum_hosts` 5): once per
//!     interval, over the hosts with enough calls (and only if there are enough
//!     such hosts), a host whose success rate is below
//!     `mean − factor × stdev` (population standard deviation) is ejected.
//!   - *Ejection*: for `base_ejection_time × k`, `k` the number of times the
//!     host has been ejected, capped at `max_ejection_time`; `k` stops growing
//!     once the cap is reached and is decremented for every interval the host
//!     stays in service, so an old ejection stops lengthening new ones.
//!     `max_ejection_percent` bounds how many hosts may be out at once, but at
//!     least one host may always be ejected.
//! - The circuit breaker on utilization is Hystrix-style (Netflix Hystrix,
//!   "How it Works: Circuit Breaker"): open on a threshold, stay open until the
//!   signal has clearly recovered. Here the signal is the backend's own
//!   utilization report rather than an error rate: at or above
//!   `utilization_ceiling` the circuit opens (the host leaves the lists), at or
//!   below `ceiling − 0.1` it closes. The gap is the hysteresis that keeps a
//!   host hovering at the ceiling from flapping in and out of every list.
//!
//! Differences from Envoy, deliberate:
//! - The evidence comes from clients, not from calls the daemon made, so no
//!   single client decides ([`crate::evidence`], `stats_min_clients` = `m`):
//!   the interval detectors see each host's counts with every client's
//!   contribution capped at the `m`-th largest ([`Tally`]), and a run of
//!   consecutive failures ejects only when `m` clients each have a run at the
//!   threshold (reported in this interval or the previous one). With one
//!   client in total, client stats eject nothing.
//! - Clients report outcomes per stats interval, not per call. A report carries
//!   the client's current run of consecutive failures; the run that counts is
//!   `min(run, failures that client reported since the host was last
//!   ejected)`, so a client's stale run (it had no calls to send while the
//!   host was out) does not re-eject a host the moment it is readmitted.
//!   Envoy resets its own counter on ejection to the same effect.
//! - Reports for a host while it is ejected are ignored: they can only be calls
//!   that were in flight when it left.
//! - The multiplier decays only for a host that was in service for the whole
//!   interval and is not ejected by this interval's checks, so a host that
//!   fails every interval keeps its growing ejection time.
//! - When several hosts are outliers in one interval and the cap does not
//!   allow them all, the lowest success rates go first.
//! - The cap counts circuit-broken hosts as out. Opening a circuit is not
//!   itself capped (the host says it is overloaded; load shedding deals with
//!   a whole service over its target).
//!
//! All of it is pure: time is a parameter, membership comes from
//! [`Detector::set_hosts`], and ids not in the membership are ignored.

use std::collections::BTreeMap;
use std::time::Duration;

use std::time::Instant;

use crate::evidence;
use crate::model::{FieldError, MAX_UTILIZATION};

/// Longest ejection time accepted (and applied, whatever the config says).
pub const MAX_EJECTION_LIMIT: Duration = Duration::from_secs(24 * 3600);
/// The circuit closes at `utilization_ceiling − CIRCUIT_HYSTERESIS`.
pub const CIRCUIT_HYSTERESIS: f64 = 0.1;
/// Largest `success_rate_stdev` accepted.
pub const MAX_STDEV_FACTOR: f64 = 100.0;

/// Outlier detection and circuit breaker settings of one service.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthConfig {
    /// Eject when a client reports this many consecutive failures; 0 = off.
    pub consecutive_failures: u32,
    /// Eject when `failed × 100 ≥ failure_percent × finished` in one interval
    /// (`0..=100`; 0 = off) ...
    pub failure_percent: u32,
    /// ... with at least this many finished calls.
    pub failure_min_requests: u64,
    /// Eject when the success rate is below `mean − stdev × this`; 0 = off.
    pub success_rate_stdev: f64,
    /// Hosts with fewer finished calls in the interval are left out of the
    /// success-rate statistics.
    pub success_rate_min_requests: u64,
    /// Success-rate ejection needs at least this many hosts with enough calls.
    pub success_rate_min_hosts: usize,
    /// Ejection time = this × times ejected ...
    pub base_ejection: Duration,
    /// ... capped at this.
    pub max_ejection: Duration,
    /// At most this percentage of hosts out (ejected or circuit-broken) at
    /// once; at least one host may always be ejected.
    pub max_ejection_percent: u32,
    /// A host reporting utilization at or above this is circuit-broken until
    /// it reports at most `ceiling − 0.1`; 0 = off.
    pub utilization_ceiling: f64,
    /// `m` of [`crate::evidence`]: client evidence moves a host (ejection,
    /// and the outcome and latency weights) only as far as this many
    /// distinct clients agree; `1..=`[`evidence::MAX_MIN_CLIENTS`].
    pub min_clients: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            consecutive_failures: 5,
            failure_percent: 85,
            failure_min_requests: 20,
            success_rate_stdev: 1.9,
            success_rate_min_requests: 50,
            success_rate_min_hosts: 5,
            base_ejection: Duration::from_secs(10),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
            utilization_ceiling: 0.0,
            min_clients: evidence::DEFAULT_MIN_CLIENTS,
        }
    }
}

impl HealthConfig {
    /// Checks every field's range; the field names are the struct's.
    pub fn check(&self) -> Result<(), FieldError> {
        if self.failure_percent > 100 {
            return Err(FieldError::new(
                "failure_percent",
                format!("{} is outside 0..=100 (0 = off)", self.failure_percent),
            ));
        }
        let f = self.success_rate_stdev;
        if !f.is_finite() || !(0.0..=MAX_STDEV_FACTOR).contains(&f) {
            return Err(FieldError::new(
                "success_rate_stdev",
                format!("{f} is outside 0..={MAX_STDEV_FACTOR} (0 = off)"),
            ));
        }
        if self.base_ejection.is_zero() || self.base_ejection > MAX_EJECTION_LIMIT {
            return Err(FieldError::new(
                "base_ejection",
                format!(
                    "{:?} is outside (0, {:?}]",
                    self.base_ejection, MAX_EJECTION_LIMIT
                ),
            ));
        }
        if self.max_ejection < self.base_ejection || self.max_ejection > MAX_EJECTION_LIMIT {
            return Err(FieldError::new(
                "max_ejection",
                format!(
                    "{:?} is outside [base_ejection, {:?}]",
                    self.max_ejection, MAX_EJECTION_LIMIT
                ),
            ));
        }
        if self.max_ejection_percent > 100 {
            return Err(FieldError::new(
                "max_ejection_percent",
                format!("{} is outside 0..=100", self.max_ejection_percent),
            ));
        }
        if !(1..=evidence::MAX_MIN_CLIENTS).contains(&self.min_clients) {
            return Err(FieldError::new(
                "min_clients",
                format!(
                    "{} is outside 1..={}",
                    self.min_clients,
                    evidence::MAX_MIN_CLIENTS
                ),
            ));
        }
        let c = self.utilization_ceiling;
        if !c.is_finite() || (c != 0.0 && !(c > CIRCUIT_HYSTERESIS && c <= MAX_UTILIZATION)) {
            return Err(FieldError::new(
                "utilization_ceiling",
                format!(
                    "{c} must be 0 (off) or in ({CIRCUIT_HYSTERESIS}, {MAX_UTILIZATION}]: \
                     the circuit closes at ceiling − {CIRCUIT_HYSTERESIS}"
                ),
            ));
        }
        Ok(())
    }

    /// Ejection time for the `k`-th ejection in a row.
    fn ejection_time(&self, k: u32) -> Duration {
        let base = self.base_ejection.min(MAX_EJECTION_LIMIT);
        let max = self.max_ejection.max(base).min(MAX_EJECTION_LIMIT);
        base.saturating_mul(k).min(max)
    }

    /// The multiplier never grows past the one that reaches `max_ejection`.
    fn max_multiplier(&self) -> u32 {
        let base = self.base_ejection.as_nanos();
        if base == 0 {
            return 1;
        }
        let max = self.max_ejection.as_nanos().max(base);
        u32::try_from(max.div_ceil(base)).unwrap_or(u32::MAX).max(1)
    }
}

/// Why a host was ejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// A client reported a run of consecutive failures.
    ConsecutiveFailures,
    /// Too large a share of its calls failed in one interval.
    FailurePercent,
    /// Its success rate was a statistical outlier among its peers.
    SuccessRate,
}

/// One ejection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ejection {
    /// Instance id.
    pub id: String,
    /// Back in service at this instant.
    pub until: Instant,
    /// Why.
    pub reason: Reason,
}

/// A change of a host's availability.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// Out of service until `until`.
    Ejected {
        /// Instance id.
        id: String,
        /// Back in service at this instant.
        until: Instant,
        /// Why.
        reason: Reason,
    },
    /// An ejection expired.
    Readmitted {
        /// Instance id.
        id: String,
    },
    /// It reported utilization at or above the ceiling.
    CircuitOpened {
        /// Instance id.
        id: String,
    },
    /// Its utilization came back below the ceiling minus the hysteresis.
    CircuitClosed {
        /// Instance id.
        id: String,
    },
}

impl From<Ejection> for Event {
    fn from(e: Ejection) -> Self {
        Event::Ejected {
            id: e.id,
            until: e.until,
            reason: e.reason,
        }
    }
}

/// What ctl shows about one host.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HostStatus {
    /// Ejected until this instant (`None` when in service).
    pub ejected_until: Option<Instant>,
    /// Why it is ejected (`None` when in service).
    pub reason: Option<Reason>,
    /// The ejection multiplier: ejections in a row, decayed while healthy.
    pub times_ejected: u32,
    /// Circuit-broken on utilization.
    pub circuit_open: bool,
    /// Success rate (0..=1) over the last evaluated interval, if it had calls.
    pub success_rate: Option<f64>,
}

/// One host's calls over an interval as the detectors see them: each
/// client's contribution capped ([`evidence::believe`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Finished calls.
    pub finished: u64,
    /// Of those, failed.
    pub failed: u64,
}

/// One client's run of consecutive failures on one host.
#[derive(Debug, Clone, Copy, Default)]
struct Run {
    /// Failures this client reported since the host was last ejected.
    failed_since_back: u64,
    /// Its latest run, cut to `failed_since_back`.
    run: u64,
    /// The interval of its latest report.
    interval: u64,
}

#[derive(Debug, Clone, Default)]
struct Host {
    /// Set by an ejection, cleared when [`Detector::readmit`] readmits.
    ejected_until: Option<Instant>,
    reason: Option<Reason>,
    times_ejected: u32,
    circuit_open: bool,
    readmitted_at: Option<Instant>,
    /// Ejected at some point of the current interval (no decay for it).
    out_in_interval: bool,
    /// Each client's run, by client id ([`evidence::slot`]: at most
    /// [`evidence::MAX_CLIENTS_PER_INSTANCE`], then one shared slot).
    runs: BTreeMap<String, Run>,
    last_success_rate: Option<f64>,
}

impl Host {
    fn ejected(&self, now: Instant) -> bool {
        self.ejected_until.is_some_and(|u| now < u)
    }

    fn out(&self, now: Instant) -> bool {
        self.ejected(now) || self.circuit_open
    }
}

/// Outlier and circuit state of one service's hosts, keyed by instance id.
#[derive(Debug, Clone, Default)]
pub struct Detector {
    hosts: BTreeMap<String, Host>,
    /// Intervals evaluated so far (runs older than the previous one expire).
    interval: u64,
}

impl Detector {
    /// An empty detector; call [`Detector::set_hosts`] before anything else.
    pub fn new() -> Self {
        Detector::default()
    }

    /// Adds one host to the membership (no-op if known).
    pub fn add_host(&mut self, id: &str) {
        if !self.hosts.contains_key(id) {
            self.hosts.insert(id.to_string(), Host::default());
        }
    }

    /// Removes one host from the membership.
    pub fn remove_host(&mut self, id: &str) {
        self.hosts.remove(id);
    }

    /// Replaces the membership: hosts that stay keep their state, new ones
    /// start fresh, the others are forgotten.
    pub fn set_hosts(&mut self, ids: impl IntoIterator<Item = String>) {
        let mut next: BTreeMap<String, Host> =
            ids.into_iter().map(|id| (id, Host::default())).collect();
        for (id, h) in next.iter_mut() {
            if let Some(old) = self.hosts.remove(id) {
                *h = old;
            }
        }
        self.hosts = next;
    }

    /// Whether one more host may be taken out without going over the cap.
    fn may_eject(&self, id: &str, cfg: &HealthConfig, now: Instant) -> bool {
        if self.hosts.get(id).is_some_and(|h| h.circuit_open) {
            // Already counted as out.
            return true;
        }
        let n = self.hosts.len() as u64;
        let cap = (n * u64::from(cfg.max_ejection_percent.min(100)) / 100).max(1);
        let out = self.hosts.values().filter(|h| h.out(now)).count() as u64;
        out < cap
    }

    fn eject(
        &mut self,
        id: &str,
        reason: Reason,
        cfg: &HealthConfig,
        now: Instant,
    ) -> Option<Ejection> {
        let max_k = cfg.max_multiplier();
        let h = self.hosts.get_mut(id)?;
        if let Some(u) = h.ejected_until {
            // An expired ejection evaluate() has not processed yet: it came back at `u`.
            h.readmitted_at = Some(u);
        }
        h.times_ejected = h.times_ejected.saturating_add(1).min(max_k);
        let until = now
            .checked_add(cfg.ejection_time(h.times_ejected))
            .unwrap_or(now);
        h.ejected_until = Some(until);
        h.reason = Some(reason);
        h.out_in_interval = true;
        // Runs start again: only failures after this ejection count.
        h.runs.clear();
        Some(Ejection {
            id: id.to_string(),
            until,
            reason,
        })
    }

    /// One client's stats message about one instance: the failures it
    /// reported and its current run of consecutive failures. Ejects at once
    /// (subject to the cap) when `min_clients` clients each have a run of at
    /// least `consecutive_failures`, reported in this interval or the
    /// previous one. Reports about an ejected host are ignored.
    pub fn record(
        &mut self,
        id: &str,
        client: &str,
        failed: u64,
        consecutive_failures: u64,
        cfg: &HealthConfig,
        now: Instant,
    ) -> Option<Ejection> {
        let interval = self.interval;
        let h = self.hosts.get_mut(id)?;
        if h.ejected(now) {
            return None;
        }
        let slot = evidence::slot(&h.runs, client).to_string();
        let r = h.runs.entry(slot).or_default();
        r.failed_since_back = r.failed_since_back.saturating_add(failed);
        r.run = consecutive_failures.min(r.failed_since_back);
        r.interval = interval;
        let threshold = u64::from(cfg.consecutive_failures);
        if threshold == 0 {
            return None;
        }
        let agreeing = h
            .runs
            .values()
            .filter(|r| r.run >= threshold && r.interval + 1 >= interval)
            .count();
        if agreeing >= cfg.min_clients.max(1) as usize && self.may_eject(id, cfg, now) {
            return self.eject(id, Reason::ConsecutiveFailures, cfg, now);
        }
        None
    }

    /// Whether the host is ejected at `now` (a circuit-broken host is not).
    pub fn ejected(&self, id: &str, now: Instant) -> bool {
        self.hosts.get(id).is_some_and(|h| h.ejected(now))
    }

    /// A utilization report: opens or closes the host's circuit. True when
    /// the circuit state changed.
    pub fn utilization(
        &mut self,
        id: &str,
        utilization: f64,
        cfg: &HealthConfig,
        now: Instant,
    ) -> bool {
        let Some(h) = self.hosts.get_mut(id) else {
            return false;
        };
        let ceiling = cfg.utilization_ceiling;
        let off = !(ceiling.is_finite() && ceiling > 0.0);
        let close = off || (utilization.is_finite() && utilization <= ceiling - CIRCUIT_HYSTERESIS);
        let open = !off && utilization.is_finite() && utilization >= ceiling;
        if h.circuit_open && close {
            h.circuit_open = false;
            if !h.ejected(now) {
                h.readmitted_at = Some(now);
            }
            true
        } else if !h.circuit_open && open {
            h.circuit_open = true;
            true
        } else {
            false
        }
    }

    /// Readmits the hosts whose ejection expired by `now`.
    pub fn readmit(&mut self, now: Instant) -> Vec<Event> {
        let mut events = Vec::new();
        for (id, h) in self.hosts.iter_mut() {
            if let Some(u) = h.ejected_until.filter(|u| *u <= now) {
                h.ejected_until = None;
                h.reason = None;
                if !h.circuit_open {
                    h.readmitted_at = Some(u);
                }
                events.push(Event::Readmitted { id: id.clone() });
            }
        }
        events
    }

    /// Once per interval: readmits hosts whose ejection expired, ejects on
    /// failure percentage and success rate over the interval's `tallies`
    /// (hosts without one had no believed calls), decays the multiplier of
    /// hosts that stayed in service, and starts a new interval.
    pub fn evaluate(
        &mut self,
        cfg: &HealthConfig,
        tallies: &BTreeMap<String, Tally>,
        now: Instant,
    ) -> Vec<Event> {
        let mut events = self.readmit(now);
        let tally = |id: &String| tallies.get(id).copied().unwrap_or_default();

        // Outliers among the hosts in service, worst first.
        let mut outliers: Vec<(f64, String, Reason)> = Vec::new();
        if cfg.failure_percent > 0 {
            let min = cfg.failure_min_requests.max(1);
            let pct = u128::from(cfg.failure_percent.min(100));
            for (id, h) in &self.hosts {
                let t = tally(id);
                if !h.ejected(now)
                    && t.finished >= min
                    && u128::from(t.failed) * 100 >= pct * u128::from(t.finished)
                {
                    outliers.push((success_rate(t), id.clone(), Reason::FailurePercent));
                }
            }
        }
        let factor = cfg.success_rate_stdev;
        if factor.is_finite() && factor > 0.0 {
            let min = cfg.success_rate_min_requests.max(1);
            let rates: Vec<(&String, f64)> = self
                .hosts
                .iter()
                .filter(|(id, h)| !h.ejected(now) && tally(id).finished >= min)
                .map(|(id, _)| (id, success_rate(tally(id))))
                .collect();
            if !rates.is_empty() && rates.len() >= cfg.success_rate_min_hosts {
                let n = rates.len() as f64;
                let mean = rates.iter().map(|r| r.1).sum::<f64>() / n;
                let var = rates.iter().map(|r| (r.1 - mean).powi(2)).sum::<f64>() / n;
                let threshold = mean - factor * var.sqrt();
                for (id, rate) in rates {
                    if rate < threshold && !outliers.iter().any(|o| &o.1 == id) {
                        outliers.push((rate, id.clone(), Reason::SuccessRate));
                    }
                }
            }
        }
        outliers.sort_by(|a, b| a.0.total_cmp(&b.0).then_with(|| a.1.cmp(&b.1)));
        for (_, id, reason) in outliers {
            if self.may_eject(&id, cfg, now) {
                if let Some(e) = self.eject(&id, reason, cfg, now) {
                    events.push(e.into());
                }
            }
        }

        self.interval += 1;
        let interval = self.interval;
        for (id, h) in self.hosts.iter_mut() {
            if h.ejected_until.is_none() && !h.out_in_interval {
                h.times_ejected = h.times_ejected.saturating_sub(1);
            }
            h.out_in_interval = h.ejected_until.is_some();
            let t = tally(id);
            h.last_success_rate = (t.finished > 0).then(|| success_rate(t));
            h.runs.retain(|_, r| r.interval + 1 >= interval);
        }
        events
    }

    /// Not ejected and circuit closed (ids the detector does not know are available).
    pub fn available(&self, id: &str, now: Instant) -> bool {
        self.hosts.get(id).is_none_or(|h| !h.out(now))
    }

    /// When the host last came back into service (for slow start).
    pub fn readmitted_at(&self, id: &str) -> Option<Instant> {
        self.hosts.get(id).and_then(|h| h.readmitted_at)
    }

    /// The host's state for ctl (all defaults for an unknown id).
    pub fn status(&self, id: &str, now: Instant) -> HostStatus {
        let Some(h) = self.hosts.get(id) else {
            return HostStatus::default();
        };
        let ejected = h.ejected(now);
        HostStatus {
            ejected_until: h.ejected_until.filter(|_| ejected),
            reason: h.reason.filter(|_| ejected),
            times_ejected: h.times_ejected,
            circuit_open: h.circuit_open,
            success_rate: h.last_success_rate,
        }
    }

    /// The earliest ejection expiry not yet processed by [`Detector::evaluate`]
    /// (may be in the past until it runs): when the engine should re-plan.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.hosts.values().filter_map(|h| h.ejected_until).min()
    }
}

/// Success rate over the interval, 0..=1 (1 with no calls).
fn success_rate(t: Tally) -> f64 {
    if t.finished == 0 {
        return 1.0;
    }
    (t.finished - t.failed.min(t.finished)) as f64 / t.finished as f64
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn s(secs: u64) -> Duration {
        Duration::from_secs(secs)
    }

    fn detector(n: usize) -> Detector {
        let mut d = Detector::new();
        d.set_hosts((0..n).map(|i| format!("h{i}")));
        d
    }

    /// Envoy's algorithm as it was: one client's reports are believed.
    fn only_consecutive() -> HealthConfig {
        HealthConfig {
            failure_percent: 0,
            success_rate_stdev: 0.0,
            min_clients: 1,
            ..HealthConfig::default()
        }
    }

    fn tallies(t: &[(&str, u64, u64)]) -> BTreeMap<String, Tally> {
        t.iter()
            .map(|&(id, finished, failed)| (id.to_string(), Tally { finished, failed }))
            .collect()
    }

    fn none() -> BTreeMap<String, Tally> {
        BTreeMap::new()
    }

    #[test]
    fn consecutive_failures_eject_at_once() {
        let t0 = Instant::now();
        let cfg = only_consecutive();
        let mut d = detector(10);
        assert_eq!(
            d.record("h0", "c", 4, 4, &cfg, t0),
            None,
            "below the threshold"
        );
        let e = d.record("h0", "c", 1, 5, &cfg, t0 + s(1));
        assert_eq!(
            e,
            Some(Ejection {
                id: "h0".into(),
                until: t0 + s(11),
                reason: Reason::ConsecutiveFailures
            })
        );
        assert!(!d.available("h0", t0 + s(1)));
        assert!(!d.available("h0", t0 + s(11) - Duration::from_millis(1)));
        assert!(
            d.available("h0", t0 + s(11)),
            "back at the expiry, even before evaluate"
        );
        assert!(d.available("h1", t0 + s(1)));
        let st = d.status("h0", t0 + s(2));
        assert_eq!(st.ejected_until, Some(t0 + s(11)));
        assert_eq!(st.reason, Some(Reason::ConsecutiveFailures));
        assert_eq!(st.times_ejected, 1);
        assert_eq!(d.next_deadline(), Some(t0 + s(11)));
        // Reports while ejected are ignored.
        assert_eq!(d.record("h0", "c", 9, 20, &cfg, t0 + s(5)), None);
        // Off: never.
        let off = HealthConfig {
            consecutive_failures: 0,
            ..only_consecutive()
        };
        assert_eq!(d.record("h1", "c", 50, 50, &off, t0), None);
    }

    #[test]
    fn ejection_time_grows_then_decays() {
        let t0 = Instant::now();
        let cfg = HealthConfig {
            max_ejection: s(25),
            ..only_consecutive()
        };
        let mut d = detector(4);
        let mut t = t0;
        let mut lengths = Vec::new();
        for _ in 0..4 {
            let e = d.record("h0", "c", 5, 5, &cfg, t).expect("ejected");
            lengths.push(e.until - t);
            assert_eq!(
                d.evaluate(&cfg, &none(), e.until - Duration::from_millis(1)),
                []
            );
            assert_eq!(
                d.evaluate(&cfg, &none(), e.until),
                [Event::Readmitted { id: "h0".into() }]
            );
            assert_eq!(d.readmitted_at("h0"), Some(e.until));
            assert_eq!(d.next_deadline(), None);
            t = e.until + s(1);
        }
        assert_eq!(lengths, [s(10), s(20), s(25), s(25)], "base × k, capped");
        assert_eq!(
            d.status("h0", t).times_ejected,
            3,
            "k stops at ⌈max / base⌉"
        );
        // Healthy intervals decrement the multiplier, one per interval.
        for k in (0..3).rev() {
            t += s(10);
            assert_eq!(d.evaluate(&cfg, &none(), t), []);
            assert_eq!(d.status("h0", t).times_ejected, k);
        }
        t += s(10);
        d.evaluate(&cfg, &none(), t);
        assert_eq!(d.status("h0", t).times_ejected, 0);
        let e = d.record("h0", "c", 5, 5, &cfg, t).expect("ejected");
        assert_eq!(e.until - t, s(10), "back to the base time");
    }

    #[test]
    fn stale_runs_do_not_reeject() {
        let t0 = Instant::now();
        let cfg = only_consecutive();
        let mut d = detector(4);
        let e = d.record("h0", "c", 5, 5, &cfg, t0).expect("ejected");
        d.evaluate(&cfg, &none(), e.until);
        let t = e.until + s(1);
        // The client had nothing to send while h0 was out; its run is still 7.
        assert_eq!(d.record("h0", "c", 0, 7, &cfg, t), None);
        assert_eq!(d.record("h0", "c", 1, 8, &cfg, t), None, "one new failure");
        assert_eq!(
            d.record("h0", "c", 3, 11, &cfg, t),
            None,
            "four new failures"
        );
        let again = d
            .record("h0", "c", 1, 12, &cfg, t)
            .expect("five new failures");
        assert_eq!(again.until, t + s(20));
    }

    #[test]
    fn failure_percent_ejects_over_an_interval() {
        let t0 = Instant::now();
        let cfg = HealthConfig {
            consecutive_failures: 0,
            success_rate_stdev: 0.0,
            ..HealthConfig::default()
        };
        let mut d = detector(10);
        let t = tallies(&[
            ("h0", 20, 17), // 85 %
            ("h1", 19, 19), // too few calls
            ("h2", 20, 16), // 80 %
            ("h3", 100, 0),
        ]);
        let ev = d.evaluate(&cfg, &t, t0 + s(10));
        assert_eq!(
            ev,
            [Event::Ejected {
                id: "h0".into(),
                until: t0 + s(20),
                reason: Reason::FailurePercent
            }]
        );
        assert_eq!(d.status("h2", t0 + s(10)).success_rate, Some(0.2));
        assert_eq!(d.status("h4", t0 + s(10)).success_rate, None);
        // Each interval is judged on its own tallies.
        assert_eq!(
            d.evaluate(&cfg, &tallies(&[("h1", 1, 1)]), t0 + s(20)),
            [Event::Readmitted { id: "h0".into() }]
        );
    }

    #[test]
    fn success_rate_outlier_among_five_hosts() {
        let t0 = Instant::now();
        let cfg = HealthConfig {
            consecutive_failures: 0,
            failure_percent: 0,
            ..HealthConfig::default()
        };
        let mut d = detector(6);
        // h5 has too few calls to count as a peer.
        let fails = [0u64, 1, 0, 1, 60];
        let mut t: BTreeMap<String, Tally> = fails
            .iter()
            .enumerate()
            .map(|(i, &failed)| {
                (
                    format!("h{i}"),
                    Tally {
                        finished: 100,
                        failed,
                    },
                )
            })
            .collect();
        t.insert(
            "h5".into(),
            Tally {
                finished: 10,
                failed: 10,
            },
        );
        let ev = d.evaluate(&cfg, &t, t0 + s(10));
        assert_eq!(
            ev,
            [Event::Ejected {
                id: "h4".into(),
                until: t0 + s(20),
                reason: Reason::SuccessRate
            }]
        );
        // Only four hosts with enough calls: no statistics, no ejection.
        let mut d = detector(6);
        t.insert(
            "h0".into(),
            Tally {
                finished: 49,
                failed: 0,
            },
        );
        assert_eq!(d.evaluate(&cfg, &t, t0 + s(10)), []);
        // All alike: nobody is an outlier.
        let mut d = detector(5);
        let t: BTreeMap<String, Tally> = (0..5)
            .map(|i| {
                (
                    format!("h{i}"),
                    Tally {
                        finished: 100,
                        failed: 30,
                    },
                )
            })
            .collect();
        assert_eq!(d.evaluate(&cfg, &t, t0 + s(10)), []);
    }

    #[test]
    fn max_ejection_percent_caps_but_allows_one() {
        let t0 = Instant::now();
        let cfg = only_consecutive();
        // 4 hosts at 50 %: two may be out.
        let mut d = detector(4);
        assert!(d.record("h0", "c", 5, 5, &cfg, t0).is_some());
        assert!(d.record("h1", "c", 5, 5, &cfg, t0).is_some());
        assert_eq!(d.record("h2", "c", 5, 5, &cfg, t0), None);
        assert!(d.available("h2", t0));
        // 3 hosts at 10 %: 0.3 rounds down, but one may always go.
        let few = HealthConfig {
            max_ejection_percent: 10,
            ..cfg.clone()
        };
        let mut d = detector(3);
        assert!(d.record("h0", "c", 5, 5, &few, t0).is_some());
        assert_eq!(d.record("h1", "c", 5, 5, &few, t0), None);
        // Once h0 is back, h1 may go.
        assert!(d.record("h1", "c", 5, 5, &few, t0 + s(10)).is_some());
        // Circuit-broken hosts count as out.
        let cb = HealthConfig {
            utilization_ceiling: 0.9,
            ..cfg.clone()
        };
        let mut d = detector(4);
        assert!(d.utilization("h0", 0.95, &cb, t0));
        assert!(d.record("h1", "c", 5, 5, &cb, t0).is_some());
        assert_eq!(d.record("h2", "c", 5, 5, &cb, t0), None);
        // ... and ejecting one of them does not take another host out.
        assert!(d.record("h0", "c", 5, 5, &cb, t0).is_some());
        // The cap orders interval ejections worst first.
        let interval = HealthConfig {
            consecutive_failures: 0,
            success_rate_stdev: 0.0,
            max_ejection_percent: 25,
            ..HealthConfig::default()
        };
        let mut d = detector(4);
        let t = tallies(&[("h0", 100, 90), ("h1", 100, 99)]);
        let ev = d.evaluate(&interval, &t, t0 + s(10));
        assert_eq!(ev.len(), 1);
        assert!(
            matches!(&ev[0], Event::Ejected { id, .. } if id == "h1"),
            "{ev:?}"
        );
    }

    #[test]
    fn circuit_opens_and_closes_with_hysteresis() {
        let t0 = Instant::now();
        let cfg = HealthConfig {
            utilization_ceiling: 0.9,
            ..HealthConfig::default()
        };
        let mut d = detector(2);
        assert!(!d.utilization("h0", 0.85, &cfg, t0));
        assert!(
            d.utilization("h0", 0.9, &cfg, t0 + s(1)),
            "opens at the ceiling"
        );
        assert!(!d.available("h0", t0 + s(1)));
        assert!(d.status("h0", t0 + s(1)).circuit_open);
        assert!(!d.utilization("h0", 0.95, &cfg, t0 + s(2)));
        assert!(
            !d.utilization("h0", 0.85, &cfg, t0 + s(3)),
            "still above ceiling − 0.1"
        );
        assert!(
            !d.utilization("h0", f64::NAN, &cfg, t0 + s(3)),
            "bad reports change nothing"
        );
        assert!(!d.available("h0", t0 + s(3)));
        assert!(
            d.utilization("h0", 0.8, &cfg, t0 + s(4)),
            "closes at ceiling − 0.1"
        );
        assert!(d.available("h0", t0 + s(4)));
        assert_eq!(d.readmitted_at("h0"), Some(t0 + s(4)));
        // Off: never opens, and turning it off closes an open circuit.
        let off = HealthConfig::default();
        assert!(!d.utilization("h1", 5.0, &off, t0));
        assert!(d.utilization("h0", 0.99, &cfg, t0 + s(5)));
        assert!(d.utilization("h0", 0.99, &off, t0 + s(6)));
        assert!(d.available("h0", t0 + s(6)));
    }

    #[test]
    fn membership_and_unknown_ids() {
        let t0 = Instant::now();
        let cfg = only_consecutive();
        let mut d = detector(3);
        assert!(d.record("h0", "c", 5, 5, &cfg, t0).is_some());
        assert_eq!(d.record("nobody", "c", 5, 5, &cfg, t0), None);
        assert!(!d.utilization("nobody", 9.0, &cfg, t0));
        assert!(d.available("nobody", t0));
        assert_eq!(d.status("nobody", t0), HostStatus::default());
        // Kept hosts keep their state; removed ones are forgotten.
        d.set_hosts(["h0".to_string(), "h2".to_string(), "h9".to_string()]);
        assert!(!d.available("h0", t0));
        d.set_hosts(["h2".to_string()]);
        assert!(d.available("h0", t0));
        assert_eq!(d.next_deadline(), None);
    }

    #[test]
    fn config_check_names_the_field() {
        assert_eq!(HealthConfig::default().check(), Ok(()));
        let field = |f: &dyn Fn(&mut HealthConfig)| {
            let mut c = HealthConfig::default();
            f(&mut c);
            c.check().map_err(|e| e.field)
        };
        assert_eq!(
            field(&|c| c.failure_percent = 101),
            Err("failure_percent".into())
        );
        assert_eq!(field(&|c| c.failure_percent = 0), Ok(()));
        assert_eq!(
            field(&|c| c.success_rate_stdev = -1.0),
            Err("success_rate_stdev".into())
        );
        assert_eq!(
            field(&|c| c.success_rate_stdev = f64::NAN),
            Err("success_rate_stdev".into())
        );
        assert_eq!(
            field(&|c| c.base_ejection = Duration::ZERO),
            Err("base_ejection".into())
        );
        assert_eq!(
            field(&|c| c.base_ejection = s(400)),
            Err("max_ejection".into())
        );
        assert_eq!(
            field(&|c| c.max_ejection = s(90_000)),
            Err("max_ejection".into())
        );
        assert_eq!(
            field(&|c| c.max_ejection_percent = 101),
            Err("max_ejection_percent".into())
        );
        for bad in [f64::NAN, -0.5, 0.05, 0.1, 17.0] {
            assert_eq!(
                field(&|c| c.utilization_ceiling = bad),
                Err("utilization_ceiling".into()),
                "{bad}"
            );
        }
        assert_eq!(field(&|c| c.utilization_ceiling = 0.8), Ok(()));
        for bad in [0, evidence::MAX_MIN_CLIENTS + 1] {
            assert_eq!(
                field(&|c| c.min_clients = bad),
                Err("min_clients".into()),
                "{bad}"
            );
        }
        assert_eq!(field(&|c| c.min_clients = 1), Ok(()));
    }

    #[test]
    fn one_client_alone_cannot_eject_two_agreeing_clients_can() {
        let t0 = Instant::now();
        let cfg = HealthConfig::default();
        assert_eq!(cfg.min_clients, 2);
        let mut d = detector(4);
        // Mallory reports every call to h0 failed, a run of a thousand.
        for i in 0..10 {
            assert_eq!(d.record("h0", "mallory", 1000, 1000 * i, &cfg, t0), None);
        }
        assert!(d.available("h0", t0));
        // An honest client whose calls succeed does not make a second witness.
        assert_eq!(d.record("h0", "alice", 0, 0, &cfg, t0), None);
        // One whose run is short of the threshold does not either ...
        assert_eq!(d.record("h0", "alice", 4, 4, &cfg, t0), None);
        assert!(d.available("h0", t0));
        // ... until it reaches it: two clients agree.
        let e = d.record("h0", "alice", 1, 5, &cfg, t0).expect("ejected");
        assert_eq!(e.reason, Reason::ConsecutiveFailures);
        // Runs expire after an interval without reports: a run from two
        // intervals ago is not a witness any more.
        let cfg1 = HealthConfig {
            base_ejection: s(1),
            ..cfg.clone()
        };
        let mut d = detector(4);
        assert_eq!(d.record("h1", "alice", 9, 9, &cfg1, t0), None);
        d.evaluate(&cfg1, &none(), t0 + s(2));
        d.evaluate(&cfg1, &none(), t0 + s(4));
        assert_eq!(d.record("h1", "bob", 9, 9, &cfg1, t0 + s(5)), None);
        // Alice's old run was forgotten with it: only her new failures count.
        assert_eq!(d.record("h1", "alice", 1, 10, &cfg1, t0 + s(5)), None);
        assert!(d.record("h1", "alice", 4, 14, &cfg1, t0 + s(5)).is_some());
    }

    #[derive(Debug, Clone)]
    enum Op {
        /// Host, client, finished, failed, run.
        Record(usize, usize, u64, u64, u64),
        Evaluate,
        Advance(u64),
    }

    fn arb_op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..8, 0usize..3, 0u64..40, 0u64..40, 0u64..10)
                .prop_map(|(i, client, n, f, c)| Op::Record(i, client, n, f, c)),
            1 => Just(Op::Evaluate),
            2 => (0u64..30_000).prop_map(Op::Advance),
        ]
    }

    proptest! {
        #![proptest_config(crate::proptest_config())]

        #[test]
        fn never_more_out_than_the_cap(
            hosts in 1usize..8,
            pct in 0u32..=100,
            min_clients in 1u32..3,
            ops in prop::collection::vec(arb_op(), 1..80),
        ) {
            let cfg = HealthConfig {
                max_ejection_percent: pct,
                failure_min_requests: 5,
                success_rate_min_requests: 5,
                success_rate_min_hosts: 2,
                min_clients,
                ..HealthConfig::default()
            };
            // What the registry would hand over: each client's counts,
            // believed under the rule at the end of the interval.
            let mut ledger = evidence::Ledger::new();
            let cap = (hosts * pct as usize / 100).max(1);
            let mut d = detector(hosts);
            let mut now = Instant::now();
            for op in ops {
                match op {
                    Op::Record(i, client, n, f, c) => {
                        let id = format!("h{}", i % hosts);
                        let client = format!("c{client}");
                        let f = f.min(n);
                        ledger.record(&id, &client, evidence::Counts { finished: n, failed: f, latency_sum_us: 0 });
                        if let Some(e) = d.record(&id, &client, f, c, &cfg, now) {
                            prop_assert!(e.until > now && e.until <= now + cfg.max_ejection);
                        }
                    }
                    Op::Evaluate => {
                        let tallies: BTreeMap<String, Tally> = ledger
                            .take(now)
                            .iter()
                            .map(|(id, clients)| {
                                let b = evidence::believe(clients, min_clients);
                                (id.clone(), Tally { finished: b.finished, failed: b.failed })
                            })
                            .collect();
                        for ev in d.evaluate(&cfg, &tallies, now) {
                            if let Event::Ejected { until, .. } = ev {
                                prop_assert!(until > now && until <= now + cfg.max_ejection);
                            }
                        }
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                }
                let out = (0..hosts).filter(|i| !d.available(&format!("h{i}"), now)).count();
                prop_assert!(out <= cap, "{} out of {}, cap {}", out, hosts, cap);
                if let Some(next) = d.next_deadline() {
                    prop_assert!(next <= now + cfg.max_ejection);
                }
            }
        }
    }
}
