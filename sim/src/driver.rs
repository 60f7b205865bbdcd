//! The discrete-event loop: one run of one contender over one workload.
//!
//! Virtual time is `u64` nanoseconds from the start (warm-up included).
//! Arrivals come from the pre-generated [`Workload`], merged with a binary
//! heap of everything else ordered by (time, sequence number), so equal times
//! resolve in the order events were scheduled and a run is a pure function
//! of (scenario, contender, workload, seed).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};
use std::time::Duration;

use lb_core::policy::{bounded, choice};
use rand::rngs::StdRng;
use rand::Rng as _;

use crate::backend::Backend;
use crate::engine::{CallTotals, Engine, Published};
use crate::metrics::{percentile_ms, BackendResult, PhaseResult, PolicyResult};
use crate::p2c::{self, PeakEwma};
use crate::scenario::{BackendSpec, EventKind, Scenario};
use crate::workload::{stream_rng, Workload};
use crate::{ClientSide, Contender, StaticWeights};

/// RNG streams of the clients' p2c choices start here (one per client).
const P2C_STREAM: u64 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Ev {
    Complete {
        backend: u32,
        req: u32,
    },
    Timeout(u32),
    Report(u32),
    Stats(u32),
    /// The end of an evidence interval.
    Interval,
    PlanTick,
    Deliver,
    Scenario(u32),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    Failed,
    Timeout,
}

const NO_BACKEND: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Req {
    backend: u32,
    done: bool,
}

/// A list entry as a client holds it: a backend index, or a drop entry.
type Entry = Option<u32>;

#[derive(Debug)]
struct Client {
    seq: u64,
    list: Vec<Entry>,
    affinity: Vec<Entry>,
    cursor: usize,
    totals: Vec<CallTotals>,
    ewma: Vec<PeakEwma>,
    ready: Vec<usize>,
    rng: StdRng,
    /// lb mode: this client's requests in flight per backend.
    in_flight: Vec<u64>,
    /// lb mode, weighted two choices: each backend's entries in `list`
    /// (empty when the client follows the list), and the plan's prior.
    shares: Vec<u32>,
    prior: u32,
    /// lb mode, consistent_hash: the plan's bound on keyed requests in
    /// flight (0: none), `affinity` as backend indices (empty if it names a
    /// server the simulation does not know) and each backend's slots in it.
    load_bound: f64,
    table: Vec<u32>,
    slots: Vec<u32>,
    /// Each backend's spill fraction from the plan (0: none).
    spill: Vec<f64>,
}

struct Sim<'a> {
    sc: &'a Scenario,
    p2c: bool,
    weights: StaticWeights,
    work: &'a Workload,
    engine: Engine,
    specs: Vec<BackendSpec>,
    ids: Vec<String>,
    backends: Vec<Backend>,
    clients: Vec<Client>,
    /// Each client's `client_id`, as its stats name it.
    client_ids: Vec<String>,
    reqs: Vec<Req>,
    heap: BinaryHeap<Reverse<(u64, u64, Ev)>>,
    seq: u64,
    in_flight: VecDeque<Published>,
    /// A `PlanTick` is in the heap.
    tick_pending: bool,
    events: Vec<(u64, EventKind)>,
    joined: usize,
    warmup: u64,
    steady_end: u64,
    // Measurements, per phase (the measured run split at every event).
    phase_starts: Vec<u64>,
    latencies: Vec<Vec<u64>>,
    requests: Vec<u64>,
    failed: Vec<u64>,
    timeouts: Vec<u64>,
    max_queue: u64,
    steady_sent: Vec<u64>,
    measured_sent: Vec<u64>,
    last_sent: Vec<Option<u64>>,
    plans: u64,
}

fn ns(d: Duration) -> u64 {
    d.as_nanos().min(u128::from(u64::MAX)) as u64
}

/// Runs `contender` over `work`; see [`crate::run_workload`].
pub(crate) fn run(
    sc: &Scenario,
    contender: &Contender,
    work: &Workload,
    seed: u64,
) -> PolicyResult {
    let specs = sc.all_backends();
    let n = specs.len();
    let ids: Vec<String> = (0..n).map(|i| format!("b{i:02}")).collect();
    let t0 = std::time::Instant::now();
    let engine = Engine::new(contender.policy.clone(), t0, sc.report_interval);
    let warmup = ns(sc.warmup);
    // Events sorted by time; ties keep the scenario's order (as `all_backends`).
    let mut events: Vec<(u64, EventKind)> = sc
        .events
        .iter()
        .map(|e| (warmup + ns(e.at), e.kind))
        .collect();
    events.sort_by_key(|e| e.0);
    let end = warmup + ns(sc.duration);
    let mut phase_starts = vec![warmup];
    phase_starts.extend(
        events
            .iter()
            .map(|e| e.0)
            .filter(|&t| t > warmup && t < end),
    );
    phase_starts.dedup();
    let phases = phase_starts.len();
    let clients = (0..sc.clients.max(1))
        .map(|c| Client {
            seq: u64::from(c),
            list: Vec::new(),
            affinity: Vec::new(),
            cursor: 0,
            totals: vec![CallTotals::default(); n],
            ewma: vec![PeakEwma::new(0); n],
            ready: Vec::new(),
            rng: stream_rng(seed, P2C_STREAM + u64::from(c)),
            in_flight: vec![0; n],
            shares: Vec::new(),
            prior: 0,
            load_bound: 0.0,
            table: Vec::new(),
            slots: Vec::new(),
            spill: vec![0.0; n],
        })
        .collect();
    let mut sim = Sim {
        sc,
        p2c: contender.client == ClientSide::P2cPeakEwma,
        weights: contender.weights,
        work,
        engine,
        specs,
        ids,
        backends: Vec::with_capacity(n),
        client_ids: (0..sc.clients.max(1)).map(|c| format!("c{c:03}")).collect(),
        clients,
        reqs: vec![
            Req {
                backend: NO_BACKEND,
                done: false,
            };
            work.arrivals.len()
        ],
        heap: BinaryHeap::new(),
        seq: 0,
        in_flight: VecDeque::new(),
        tick_pending: false,
        events,
        joined: sc.backends.len(),
        warmup,
        steady_end: warmup + ns(sc.steady_end()),
        phase_starts,
        latencies: vec![Vec::new(); phases],
        requests: vec![0; phases],
        failed: vec![0; phases],
        timeouts: vec![0; phases],
        max_queue: 0,
        steady_sent: vec![0; n],
        measured_sent: vec![0; n],
        last_sent: vec![None; n],
        plans: 0,
    };
    sim.start();
    sim.run_loop();
    sim.result(&contender.name)
}

impl Sim<'_> {
    /// The phase of a request that arrived at `at`, if measured.
    fn phase(&self, at: u64) -> Option<usize> {
        if at < self.warmup {
            return None;
        }
        Some(self.phase_starts.partition_point(|&s| s <= at) - 1)
    }

    fn push(&mut self, at: u64, ev: Ev) {
        self.seq += 1;
        self.heap.push(Reverse((at, self.seq, ev)));
    }

    fn weight(&self, b: usize) -> u32 {
        match self.weights {
            StaticWeights::Equal => 1,
            StaticWeights::Capacity => {
                let min = self
                    .specs
                    .iter()
                    .map(BackendSpec::capacity)
                    .fold(f64::INFINITY, f64::min);
                (self.specs[b].capacity() / min)
                    .round()
                    .clamp(1.0, f64::from(lb_core::model::MAX_WEIGHT)) as u32
            }
        }
    }

    fn start(&mut self) {
        let n0 = self.sc.backends.len();
        let report = ns(self.sc.report_interval);
        for b in 0..n0 {
            self.join(b, 0);
            // Stagger report phases so reports do not all land together.
            let phase = (report as f64 * (b as f64 + 0.5) / n0 as f64) as u64;
            self.push(phase, Ev::Report(b as u32));
        }
        let stats = ns(self.sc.stats_interval);
        let nc = self.clients.len();
        for c in 0..nc {
            let phase = (stats as f64 * (c as f64 + 0.5) / nc as f64) as u64;
            self.push(phase, Ev::Stats(c as u32));
        }
        for i in 0..self.events.len() {
            self.push(self.events[i].0, Ev::Scenario(i as u32));
        }
        self.push(ns(lb_core::evidence::INTERVAL), Ev::Interval);
        self.replan(0);
    }

    /// Backend `b` starts and registers (its report stream is session `b + 1`).
    fn join(&mut self, b: usize, now: u64) {
        debug_assert_eq!(self.backends.len(), b);
        self.backends.push(Backend::new(self.specs[b], now));
        let weight = self.weight(b);
        self.engine
            .register(&self.ids[b], b, weight, b as u64 + 1, now);
    }

    fn run_loop(&mut self) {
        let horizon = ns(self.sc.warmup + self.sc.duration + self.sc.timeout) + 1;
        let work = self.work;
        let arrivals = &work.arrivals;
        let mut next = 0usize;
        loop {
            let heap_at = self.heap.peek().map(|Reverse((t, _, _))| *t);
            let arrival_at = arrivals.get(next).map(|a| a.at);
            let take_arrival = match (arrival_at, heap_at) {
                (Some(a), Some(h)) => a < h,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => break,
            };
            if take_arrival {
                self.arrive(next as u32);
                next += 1;
                continue;
            }
            let Some(Reverse((now, _, ev))) = self.heap.pop() else {
                break;
            };
            if now > horizon {
                break;
            }
            match ev {
                Ev::Complete { backend, req } => self.complete(backend, req, now),
                Ev::Timeout(req) => self.timeout(req, now),
                Ev::Report(b) => self.report(b as usize, now),
                Ev::Stats(c) => self.stats(c as usize, now),
                Ev::Interval => {
                    self.engine.end_interval(now);
                    self.schedule_tick(now);
                    self.push(now + ns(lb_core::evidence::INTERVAL), Ev::Interval);
                }
                Ev::PlanTick => {
                    self.tick_pending = false;
                    self.replan(now);
                }
                Ev::Deliver => self.deliver(now),
                Ev::Scenario(i) => self.scenario_event(i as usize, now),
            }
        }
    }

    /// Puts a `PlanTick` in the heap for when the daemon's scheduler next
    /// has something to plan (unless one is there already).
    fn schedule_tick(&mut self, now: u64) {
        if self.tick_pending {
            return;
        }
        if let Some(at) = self.engine.next_due(now) {
            self.push(at, Ev::PlanTick);
            self.tick_pending = true;
        }
    }

    /// Plans what is due now, as the daemon does after a batch of commands:
    /// membership changes at once, load and outcomes once their damping
    /// interval allows; a published plan reaches the clients after
    /// `propagation`.
    fn replan(&mut self, now: u64) {
        if let Some(p) = self.engine.replan(now) {
            self.plans += 1;
            self.in_flight.push_back(p);
            self.push(now + ns(self.sc.propagation), Ev::Deliver);
        }
        self.schedule_tick(now);
    }

    /// The oldest plan in flight reaches every client.
    fn deliver(&mut self, now: u64) {
        let Some(p) = self.in_flight.pop_front() else {
            return;
        };
        let servers: Vec<Entry> = p
            .servers()
            .map(|(id, drop)| {
                if drop {
                    None
                } else {
                    self.ids.iter().position(|x| x == id).map(|b| b as u32)
                }
            })
            .collect();
        let affinity: Vec<Entry> = p
            .affinity()
            .iter()
            .map(|&i| servers.get(i as usize).copied().flatten())
            .collect();
        let mut ready: Vec<usize> = servers.iter().flatten().map(|&b| b as usize).collect();
        ready.sort_unstable();
        ready.dedup();
        for c in &mut self.clients {
            if self.p2c {
                // tower creates an endpoint when discovery inserts it.
                for &b in &ready {
                    if !c.ready.contains(&b) {
                        let pending = c.ewma[b].pending;
                        c.ewma[b] = PeakEwma::new(now);
                        c.ewma[b].pending = pending;
                    }
                }
                c.ready.clone_from(&ready);
            } else {
                c.list = p
                    .order_for(c.seq)
                    .iter()
                    .map(|&i| servers.get(i as usize).copied().flatten())
                    .collect();
                c.affinity.clone_from(&affinity);
                // As lb-client's `PickList::with_load_bound`.
                c.table = affinity
                    .iter()
                    .copied()
                    .collect::<Option<_>>()
                    .unwrap_or_default();
                c.slots = bounded::slots(&c.table, c.in_flight.len());
                c.load_bound = p.load_bound();
                c.spill.iter_mut().for_each(|f| *f = 0.0);
                for (k, &f) in p.key_spill().iter().enumerate() {
                    if let Some(Some(b)) = servers.get(k) {
                        c.spill[*b as usize] = f;
                    }
                }
                // A new list starts from its first entry (lb-client swaps the list
                // and its cursor together).
                c.cursor = 0;
                // As lb-client's `Lane::set_choices` (drop entries map past
                // the backends, so the table ignores them).
                let (choices, prior) = p.choice();
                let order: Vec<u32> = c.list.iter().map(|e| e.unwrap_or(u32::MAX)).collect();
                c.shares = choice::share_table(choices, &order, c.in_flight.len());
                c.prior = prior;
            }
        }
    }

    /// Which backend client `c` sends a request with `key` to; `None` fails it
    /// locally (empty list or a drop entry).
    fn pick(&mut self, c: usize, key: u64, now: u64) -> Option<u32> {
        let cl = &mut self.clients[c];
        if self.p2c {
            return p2c::pick(
                &mut cl.ewma,
                &cl.ready,
                &mut cl.rng,
                now,
                p2c::DEFAULT_DECAY_NS,
            )
            .map(|b| b as u32);
        }
        if !cl.affinity.is_empty() {
            let h = lb_core::keyhash::hash(&key.to_le_bytes());
            let home = cl.affinity[(h % cl.affinity.len() as u64) as usize];
            if !bounded::is_on(cl.load_bound) || cl.table.is_empty() {
                return home;
            }
            // lb-client's keyed call path (`PickList::pick_keyed`).
            let spill = home
                .and_then(|b| cl.spill.get(b as usize))
                .is_some_and(|&f| f > 0.0 && cl.rng.random::<f64>() < f);
            let in_flight = &cl.in_flight;
            return bounded::choose(h, &cl.table, &cl.slots, cl.load_bound, spill, |b| {
                in_flight[b]
            })
            .map(|b| b as u32);
        }
        if cl.list.is_empty() {
            return None;
        }
        let e = cl.list[cl.cursor % cl.list.len()];
        cl.cursor = cl.cursor.wrapping_add(1);
        // Weighted two choices (lb-client's `Lane::take`): the next entry,
        // unless one drawn at random has fewer of this client's requests in
        // flight per share.
        if let (false, Some(a)) = (cl.shares.is_empty(), e) {
            let j = cl.rng.random_range(0..cl.list.len());
            if let Some(b) = cl.list[j] {
                let (ai, bi) = (a as usize, b as usize);
                if b != a
                    && choice::prefer_second(
                        cl.in_flight[ai],
                        cl.shares[ai],
                        cl.in_flight[bi],
                        cl.shares[bi],
                        cl.prior,
                    )
                {
                    return Some(b);
                }
            }
        }
        e
    }

    fn arrive(&mut self, r: u32) {
        let a = self.work.arrivals[r as usize];
        let now = a.at;
        let phase = self.phase(now);
        let measured = phase.is_some();
        if let Some(p) = phase {
            self.requests[p] += 1;
        }
        let c = a.client as usize;
        let Some(b) = self.pick(c, a.key, now) else {
            self.reqs[r as usize].done = true;
            if let Some(p) = phase {
                self.failed[p] += 1;
            }
            return;
        };
        let bi = b as usize;
        self.reqs[r as usize].backend = b;
        self.clients[c].totals[bi].started += 1;
        self.clients[c].in_flight[bi] += 1;
        if self.p2c {
            self.clients[c].ewma[bi].pending += 1;
        }
        self.last_sent[bi] = Some(now);
        if measured {
            self.measured_sent[bi] += 1;
            if now < self.steady_end {
                self.steady_sent[bi] += 1;
            }
        }
        if !self.backends[bi].alive {
            // Connection refused: fails at once.
            self.finish(r, now, Outcome::Failed);
            return;
        }
        if let Some(s) = self.backends[bi].arrive(r, now) {
            self.begin_service(b, s, now);
        } else if measured {
            self.max_queue = self.max_queue.max(self.backends[bi].queued() as u64);
        }
        self.push(now + ns(self.sc.timeout), Ev::Timeout(r));
    }

    fn begin_service(&mut self, b: u32, r: u32, now: u64) {
        let mean_ns = self.backends[b as usize].spec.service_ms * 1e6;
        let dur = (self.work.arrivals[r as usize].work * mean_ns) as u64;
        self.push(now + dur, Ev::Complete { backend: b, req: r });
    }

    fn complete(&mut self, b: u32, r: u32, now: u64) {
        let q = self.reqs[r as usize];
        if q.done || q.backend != b {
            return; // timed out or lost in a kill; the slot was freed then
        }
        if let Some(next) = self.backends[b as usize].complete(r, now) {
            self.begin_service(b, next, now);
        }
        self.finish(r, now, Outcome::Ok);
    }

    fn timeout(&mut self, r: u32, now: u64) {
        let q = self.reqs[r as usize];
        if q.done {
            return;
        }
        if let Some(next) = self.backends[q.backend as usize].cancel(r, now) {
            self.begin_service(q.backend, next, now);
        }
        self.finish(r, now, Outcome::Timeout);
    }

    fn finish(&mut self, r: u32, now: u64, outcome: Outcome) {
        let a = self.work.arrivals[r as usize];
        let q = &mut self.reqs[r as usize];
        q.done = true;
        let latency = now - a.at;
        let b = q.backend as usize;
        let cl = &mut self.clients[a.client as usize];
        cl.in_flight[b] = cl.in_flight[b].saturating_sub(1);
        let t = &mut cl.totals[b];
        t.finished += 1;
        t.failed += u64::from(outcome != Outcome::Ok);
        t.latency_sum_us += latency / 1000;
        if self.p2c {
            let e = &mut cl.ewma[b];
            e.pending = e.pending.saturating_sub(1);
            e.update(latency as f64, now, p2c::DEFAULT_DECAY_NS);
        }
        if let Some(p) = self.phase(a.at) {
            match outcome {
                Outcome::Ok => self.latencies[p].push(latency),
                Outcome::Failed => self.failed[p] += 1,
                Outcome::Timeout => self.timeouts[p] += 1,
            }
        }
    }

    fn report(&mut self, b: usize, now: u64) {
        if !self.backends[b].alive {
            return; // a dead process reports nothing
        }
        let s = self.backends[b].sample(now);
        self.engine.report(&self.ids[b], b as u64 + 1, s, now);
        self.schedule_tick(now);
        self.push(now + ns(self.sc.report_interval), Ev::Report(b as u32));
    }

    fn stats(&mut self, c: usize, now: u64) {
        let totals: Vec<(&str, CallTotals)> = self.clients[c]
            .totals
            .iter()
            .enumerate()
            .filter(|(_, t)| t.started > 0 || t.finished > 0)
            .map(|(b, t)| (self.ids[b].as_str(), *t))
            .collect();
        if !totals.is_empty() {
            self.engine.record_stats(&self.client_ids[c], &totals, now);
            self.schedule_tick(now);
        }
        self.clients[c].totals.fill(CallTotals::default());
        self.push(now + ns(self.sc.stats_interval), Ev::Stats(c as u32));
    }

    fn scenario_event(&mut self, i: usize, now: u64) {
        match self.events[i].1 {
            EventKind::Degrade {
                backend,
                service_ms,
            } => {
                if let Some(b) = self.backends.get_mut(backend) {
                    b.spec.service_ms = service_ms;
                }
            }
            EventKind::Kill { backend } => {
                if backend >= self.backends.len() || !self.backends[backend].alive {
                    return;
                }
                for r in self.backends[backend].kill(now) {
                    self.finish(r, now, Outcome::Failed);
                }
                // The daemon sees the report stream break and drops the instance.
                self.engine.remove(&self.ids[backend]);
                self.replan(now);
            }
            EventKind::Join(_) => {
                let b = self.joined;
                self.joined += 1;
                self.join(b, now);
                self.push(now + ns(self.sc.report_interval), Ev::Report(b as u32));
                self.replan(now);
            }
        }
    }

    fn result(mut self, name: &str) -> PolicyResult {
        let phases = self
            .latencies
            .iter_mut()
            .enumerate()
            .map(|(p, l)| {
                l.sort_unstable();
                PhaseResult {
                    from: Duration::from_nanos(self.phase_starts[p] - self.warmup),
                    requests: self.requests[p],
                    p50_ms: percentile_ms(l, 0.5),
                    p99_ms: percentile_ms(l, 0.99),
                    errors: self.failed[p] + self.timeouts[p],
                }
            })
            .collect();
        let mut all: Vec<u64> = self.latencies.concat();
        all.sort_unstable();
        let l = &all;
        let caps: Vec<f64> = self.specs.iter().map(BackendSpec::capacity).collect();
        let initial = self.sc.backends.len();
        let cap_total: f64 = caps[..initial].iter().sum();
        let steady_total: u64 = self.steady_sent.iter().sum();
        let backends = (0..self.specs.len())
            .map(|b| BackendResult {
                id: self.ids[b].clone(),
                capacity_share: if b < initial {
                    caps[b] / cap_total
                } else {
                    0.0
                },
                steady_share: self.steady_sent[b] as f64 / steady_total.max(1) as f64,
                requests: self.measured_sent[b],
                last_request: self.last_sent[b].map(Duration::from_nanos),
            })
            .collect();
        PolicyResult {
            policy: name.to_string(),
            requests: self.requests.iter().sum(),
            ok: l.len() as u64,
            p50_ms: percentile_ms(l, 0.5),
            p99_ms: percentile_ms(l, 0.99),
            p999_ms: percentile_ms(l, 0.999),
            max_ms: l.last().map_or(0.0, |&x| x as f64 / 1e6),
            mean_ms: if l.is_empty() {
                0.0
            } else {
                l.iter().map(|&x| x as f64).sum::<f64>() / l.len() as f64 / 1e6
            },
            failed: self.failed.iter().sum(),
            timeouts: self.timeouts.iter().sum(),
            max_queue: self.max_queue,
            backends,
            phases,
            plans: self.plans,
        }
    }
}
