//! Scenarios: the backends, the clients, the offered load and the timed events
//! of one simulated run (the project's benchmark scenarios, family A).

use std::time::Duration;

/// One backend: `slots` workers serving FIFO with exponential service times.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BackendSpec {
    /// Concurrent workers.
    pub slots: u32,
    /// Mean service time, ms.
    pub service_ms: f64,
}

impl BackendSpec {
    /// Requests per second the backend completes when every slot is busy.
    pub fn capacity(&self) -> f64 {
        f64::from(self.slots) / self.service_ms * 1000.0
    }
}

/// What happens at an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum EventKind {
    /// Backend number `backend` now serves with this mean service time
    /// (requests already in service keep theirs).
    Degrade {
        /// Index into [`Scenario::backends`] (joined backends follow the initial ones).
        backend: usize,
        /// The new mean service time, ms.
        service_ms: f64,
    },
    /// Backend number `backend` dies without deregistering: what it holds fails.
    Kill {
        /// Index of the backend.
        backend: usize,
    },
    /// A new backend starts cold and registers; it gets the next index.
    Join(BackendSpec),
}

/// A timed change to the farm.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Event {
    /// When, counted from the end of the warm-up (the start of the measured run).
    pub at: Duration,
    /// What.
    pub kind: EventKind,
}

/// Everything that defines a run except the policy and the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Scenario {
    /// Name (for tables and JSON).
    pub name: String,
    /// Backends alive from the start.
    pub backends: Vec<BackendSpec>,
    /// Independent clients; each arrival goes to one of them uniformly.
    pub clients: u32,
    /// Offered load as a fraction of the initial backends' aggregate capacity.
    pub load: f64,
    /// Unmeasured time before the run.
    pub warmup: Duration,
    /// Measured run length.
    pub duration: Duration,
    /// Per-request timeout; a request not answered by then is an error.
    pub timeout: Duration,
    /// How often each backend reports its load.
    pub report_interval: Duration,
    /// How often each client reports call outcomes.
    pub stats_interval: Duration,
    /// Delay from a published plan to every client holding it.
    pub propagation: Duration,
    /// Request keys (for hash policies) are drawn from `0..key_space`:
    /// uniformly, or by Zipf's law with exponent `key_zipf_s` when it is
    /// positive (key `k` with weight `1 / (k + 1)^s`).
    pub key_space: u64,
    /// See `key_space` (0: uniform keys).
    pub key_zipf_s: f64,
    /// Timed events, in any order.
    pub events: Vec<Event>,
}

/// Names accepted by [`Scenario::by_name`].
pub const SCENARIOS: [&str; 4] = ["hetero-degrade", "uniform", "latency-spread", "hash-zipf"];

impl Scenario {
    /// A scenario with no events and the benchmark plan's defaults around `backends`.
    pub fn new(name: &str, backends: Vec<BackendSpec>, duration: Duration) -> Self {
        Scenario {
            name: name.to_string(),
            backends,
            clients: 16,
            load: 0.7,
            warmup: Duration::from_secs(3),
            duration,
            timeout: Duration::from_secs(1),
            report_interval: lb_core::DEFAULT_REPORT_INTERVAL,
            stats_interval: Duration::from_secs(1),
            propagation: Duration::from_millis(1),
            key_space: 10_000,
            key_zipf_s: 0.0,
            events: Vec::new(),
        }
    }

    /// The reference scenario: 6 backends of 8 slots at 10, 10, 20, 20, 40 and
    /// 40 ms (2,800 req/s), 16 clients at 70 % of capacity; at 40 % of the run
    /// backend 0 (10 ms) degrades to 80 ms, at 70 % backend 2 (20 ms) is killed.
    pub fn hetero_degrade(duration: Duration) -> Self {
        let backends = [10.0, 10.0, 20.0, 20.0, 40.0, 40.0]
            .map(|service_ms| BackendSpec {
                slots: 8,
                service_ms,
            })
            .to_vec();
        let mut s = Scenario::new("hetero-degrade", backends, duration);
        s.events = vec![
            Event {
                at: duration.mul_f64(0.4),
                kind: EventKind::Degrade {
                    backend: 0,
                    service_ms: 80.0,
                },
            },
            Event {
                at: duration.mul_f64(0.7),
                kind: EventKind::Kill { backend: 2 },
            },
        ];
        s
    }

    /// `n` identical backends (8 slots, 20 ms), no events: every policy should
    /// spread requests evenly (a check of the harness itself).
    pub fn uniform(n: usize, duration: Duration) -> Self {
        let spec = BackendSpec {
            slots: 8,
            service_ms: 20.0,
        };
        Scenario::new("uniform", vec![spec; n], duration)
    }

    /// A very wide spread of speeds (8 slots at 5, 5, 20, 20, 200 and 200
    /// ms: 4,080 req/s) at 45 % of capacity, no events: the fast backends
    /// alone have headroom for nearly all of it, so the tail depends on how
    /// little goes to the slow ones (`scripts/scenarios/latency-spread.toml`).
    pub fn latency_spread(duration: Duration) -> Self {
        let backends = [5.0, 5.0, 20.0, 20.0, 200.0, 200.0]
            .map(|service_ms| BackendSpec {
                slots: 8,
                service_ms,
            })
            .to_vec();
        let mut s = Scenario::new("latency-spread", backends, duration);
        s.load = 0.45;
        s
    }

    /// Keyed requests with skewed popularity: 6 equal backends (8 slots at
    /// 20 ms, 2,400 req/s) at 60 %, keys from Zipf(1.1) over 10,000 (the top
    /// key draws 15 % of the requests), as `scripts/scenarios/hash-zipf.toml`.
    pub fn hash_zipf(duration: Duration) -> Self {
        let mut s = Scenario::uniform(6, duration);
        s.name = "hash-zipf".into();
        s.load = 0.6;
        s.key_zipf_s = 1.1;
        s
    }

    /// A scenario by name (see [`SCENARIOS`]).
    pub fn by_name(name: &str, duration: Duration) -> Option<Self> {
        match name {
            "hetero-degrade" => Some(Scenario::hetero_degrade(duration)),
            "uniform" => Some(Scenario::uniform(6, duration)),
            "latency-spread" => Some(Scenario::latency_spread(duration)),
            "hash-zipf" => Some(Scenario::hash_zipf(duration)),
            _ => None,
        }
    }

    /// Aggregate capacity of the initial backends, req/s.
    pub fn capacity(&self) -> f64 {
        self.backends.iter().map(BackendSpec::capacity).sum()
    }

    /// Offered requests per second.
    pub fn rate(&self) -> f64 {
        self.capacity() * self.load
    }

    /// Every backend the run will ever have: the initial ones, then the joiners
    /// in the order they join.
    pub fn all_backends(&self) -> Vec<BackendSpec> {
        let mut all = self.backends.clone();
        let mut joins: Vec<&Event> = self
            .events
            .iter()
            .filter(|e| matches!(e.kind, EventKind::Join(_)))
            .collect();
        joins.sort_by_key(|e| e.at);
        all.extend(joins.iter().filter_map(|e| match e.kind {
            EventKind::Join(spec) => Some(spec),
            _ => None,
        }));
        all
    }

    /// End of the steady phase, from the start of the measured run: the first
    /// event, or the end of the run.
    pub fn steady_end(&self) -> Duration {
        self.events
            .iter()
            .map(|e| e.at)
            .min()
            .unwrap_or(self.duration)
            .min(self.duration)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hetero_degrade_matches_the_reference() {
        let s = Scenario::hetero_degrade(Duration::from_secs(30));
        assert_eq!(s.capacity(), 2800.0);
        assert!((s.rate() - 1960.0).abs() < 1e-9);
        assert_eq!(s.steady_end(), Duration::from_secs(12));
        assert_eq!(s.events[1].at, Duration::from_secs(21));
        assert_eq!(s.all_backends().len(), 6);
    }
}
