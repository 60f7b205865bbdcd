//! The backend model of the benchmark plan: `slots` workers, a FIFO queue in front of
//! them, and the load report a real backend would send.
//!
//! The model only tracks which request holds which slot; the simulator decides
//! service times (a request's unit exponential work × the backend's current
//! mean) and schedules completions. Every method takes the virtual time in
//! nanoseconds so busy time can be integrated exactly.

use std::collections::VecDeque;

use crate::scenario::BackendSpec;

/// What a backend reports over one interval (becomes a `model::Load`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Busy slot-time ÷ (slots × interval).
    pub utilization: f64,
    /// Queued + in service at the moment of the report.
    pub active: u64,
    /// Completions per second over the interval.
    pub qps: f64,
    /// Errors (cancelled by the client's timeout) per second over the interval.
    pub eps: f64,
}

/// One backend's queue and slots.
#[derive(Debug, Clone)]
pub struct Backend {
    /// Slots and the current mean service time.
    pub spec: BackendSpec,
    /// False once killed.
    pub alive: bool,
    queue: VecDeque<u32>,
    in_service: Vec<u32>,
    busy_slot_ns: u128,
    last_change: u64,
    last_report: u64,
    completions: u64,
    errors: u64,
}

impl Backend {
    /// A backend that starts, idle, at `now`.
    pub fn new(spec: BackendSpec, now: u64) -> Self {
        Backend {
            spec,
            alive: true,
            queue: VecDeque::new(),
            in_service: Vec::with_capacity(spec.slots as usize),
            busy_slot_ns: 0,
            last_change: now,
            last_report: now,
            completions: 0,
            errors: 0,
        }
    }

    /// Requests waiting for a slot.
    pub fn queued(&self) -> usize {
        self.queue.len()
    }

    /// Requests waiting or in service.
    pub fn active(&self) -> usize {
        self.queue.len() + self.in_service.len()
    }

    fn account(&mut self, now: u64) {
        let busy = self.in_service.len() as u128;
        self.busy_slot_ns += busy * u128::from(now.saturating_sub(self.last_change));
        self.last_change = now;
    }

    /// `req` arrives; returns it if it takes a free slot at once (else it queues).
    pub fn arrive(&mut self, req: u32, now: u64) -> Option<u32> {
        if self.in_service.len() < self.spec.slots as usize {
            self.account(now);
            self.in_service.push(req);
            Some(req)
        } else {
            self.queue.push_back(req);
            None
        }
    }

    fn release(&mut self, req: u32, now: u64) -> Option<u32> {
        let pos = self.in_service.iter().position(|&r| r == req)?;
        self.account(now);
        self.in_service.swap_remove(pos);
        let next = self.queue.pop_front()?;
        self.in_service.push(next);
        Some(next)
    }

    /// `req` finished service; returns the queued request that takes its slot.
    pub fn complete(&mut self, req: u32, now: u64) -> Option<u32> {
        self.completions += 1;
        self.release(req, now)
    }

    /// The client gave up on `req` (its deadline passed): the server drops it
    /// from the queue or frees its slot, as a gRPC server does on cancellation.
    /// Returns the queued request that takes a freed slot.
    pub fn cancel(&mut self, req: u32, now: u64) -> Option<u32> {
        self.errors += 1;
        if let Some(p) = self.queue.iter().position(|&r| r == req) {
            self.queue.remove(p);
            return None;
        }
        self.release(req, now)
    }

    /// The backend dies: returns every request it held (they fail).
    pub fn kill(&mut self, now: u64) -> Vec<u32> {
        self.account(now);
        self.alive = false;
        let mut lost: Vec<u32> = self.in_service.drain(..).collect();
        lost.extend(self.queue.drain(..));
        lost
    }

    /// The load report at `now`, covering the time since the previous one.
    pub fn sample(&mut self, now: u64) -> Sample {
        self.account(now);
        let interval_ns = now.saturating_sub(self.last_report).max(1);
        let secs = interval_ns as f64 / 1e9;
        let s = Sample {
            utilization: (self.busy_slot_ns as f64
                / (f64::from(self.spec.slots.max(1)) * interval_ns as f64))
                .min(1.0),
            active: self.active() as u64,
            qps: self.completions as f64 / secs,
            eps: self.errors as f64 / secs,
        };
        self.busy_slot_ns = 0;
        self.completions = 0;
        self.errors = 0;
        self.last_report = now;
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn one_slot() -> Backend {
        Backend::new(
            BackendSpec {
                slots: 1,
                service_ms: 10.0,
            },
            0,
        )
    }

    #[test]
    fn fifo_and_utilization() {
        let mut b = one_slot();
        assert_eq!(b.arrive(1, 0), Some(1));
        assert_eq!(b.arrive(2, MS), None);
        assert_eq!(b.arrive(3, 2 * MS), None);
        assert_eq!(b.active(), 3);
        // 1 completes at 10 ms; 2 (queued first) takes the slot.
        assert_eq!(b.complete(1, 10 * MS), Some(2));
        // 3 gives up while queued: nothing starts.
        assert_eq!(b.cancel(3, 11 * MS), None);
        assert_eq!(b.complete(2, 20 * MS), None);
        let s = b.sample(40 * MS);
        assert!((s.utilization - 0.5).abs() < 1e-9, "{s:?}");
        assert!((s.qps - 50.0).abs() < 1e-9);
        assert!((s.eps - 25.0).abs() < 1e-9);
        assert_eq!(s.active, 0);
    }

    #[test]
    fn kill_returns_everything_held() {
        let mut b = one_slot();
        b.arrive(1, 0);
        b.arrive(2, 0);
        let mut lost = b.kill(MS);
        lost.sort_unstable();
        assert_eq!(lost, [1, 2]);
        assert!(!b.alive);
        assert_eq!(b.active(), 0);
    }
}
