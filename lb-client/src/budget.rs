//! A retry budget: retries allowed as a fraction of recent requests.
//!
//! Retrying on failure multiplies the load on a service that is already
//! failing; a budget caps that amplification. The model is Finagle's
//! `com.twitter.finagle.service.RetryBudget` (the token budget of
//! `RetryBudget(ttl, minRetriesPerSec, percentCanRetry)`): every original
//! request deposits `percent` of a token, every retry withdraws one whole
//! token, deposits and withdrawals live for `ttl`, and a constant reserve of
//! `min_per_sec × ttl` tokens lets a low-traffic client retry at all. Over any
//! window of `ttl`, retries ≤ `percent × requests + min_per_sec × ttl_seconds`.
//! gRPC's retry throttling (proposal A6, *gRPC Retry Design*) follows the same
//! idea with a token bucket per channel.
//!
//! ```
//! let budget = lb_client::RetryBudget::default(); // 20 % of calls + 10 retries a second
//! let attempt = |n: u32| if n < 2 { Err("unavailable") } else { Ok("reply") };
//! budget.deposit(); // one call ...
//! let mut n = 0;
//! let reply = loop {
//!     match attempt(n) {
//!         Err(_) if budget.try_withdraw() => n += 1, // ... retried within the budget
//!         r => break r,
//!     }
//! };
//! assert_eq!(reply, Ok("reply"));
//! ```
//!
//! The window is bucketed (10 buckets of `ttl / 10`), as Finagle's
//! `WindowedAdder`: an entry expires between `0.9 × ttl` and `ttl` after it was
//! made. Time is [`tokio::time::Instant`], so tests can pause and advance it.
//! The state sits behind a [`Mutex`]: it is touched once per call and once per
//! retry, never on the pick path.

use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Fixed-point scale: one retry costs this many units, a request deposits
/// `percent × SCALE`.
const SCALE: i64 = 1000;
/// Buckets of the sliding window.
const BUCKETS: usize = 10;
/// Shortest bucket, so a zero or tiny `ttl` cannot stall the window arithmetic.
const MIN_BUCKET: Duration = Duration::from_millis(1);

/// Retry budget parameters. The daemon sets a service's budget
/// (`ctl set-cluster --budget-percent 20 --budget-min-per-sec 10`, the
/// default) and a subscription follows it; build one yourself for
/// [`crate::cluster::call`].
///
/// ```
/// use std::time::Duration;
/// use lb_client::{BudgetConfig, RetryBudget};
///
/// // One retry per five calls, plus one a second, over 10 s:
/// let cfg = BudgetConfig { percent: 0.2, min_per_sec: 1, ttl: Duration::from_secs(10) };
/// assert_eq!(RetryBudget::new(cfg).balance(), 10); // the reserve: 1/s × 10 s
/// assert_eq!(BudgetConfig::default().percent, 0.2);
/// assert_eq!(BudgetConfig::default().min_per_sec, 10);
/// ```
#[derive(Clone, Debug, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed as a fraction of requests (0.2 = one retry per five
    /// requests). Negative or NaN act as 0; values above 1 are allowed (hedging).
    pub percent: f64,
    /// Retries per second always allowed, whatever the request rate: a reserve
    /// of `min_per_sec × ttl` retries per window.
    pub min_per_sec: u32,
    /// How long a deposit or withdrawal counts.
    pub ttl: Duration,
}

/// How long a deposit or withdrawal counts unless set (Finagle's default).
///
/// ```
/// use std::time::Duration;
/// use lb_client::{budget::DEFAULT_TTL, BudgetConfig};
/// assert_eq!(DEFAULT_TTL, Duration::from_secs(10));
/// assert_eq!(BudgetConfig::default().ttl, DEFAULT_TTL);
/// ```
pub const DEFAULT_TTL: Duration = Duration::from_secs(10);

impl Default for BudgetConfig {
    /// The daemon's default budget ([`lb_core::cluster::Budget`]: 20 % of
    /// the calls plus 10 retries per second) over a 10 s window.
    fn default() -> Self {
        BudgetConfig::from(lb_core::cluster::Budget::default())
    }
}

impl From<lb_core::cluster::Budget> for BudgetConfig {
    /// A service's budget as the daemon configures it, over a 10 s window.
    fn from(b: lb_core::cluster::Budget) -> Self {
        BudgetConfig {
            percent: f64::from(b.percent) / 100.0,
            min_per_sec: b.min_per_sec,
            ttl: DEFAULT_TTL,
        }
    }
}

/// A sliding-window retry budget. `Send + Sync`; share it (by reference or in
/// an `Arc`) between all calls to one service. A [`crate::Subscription`]
/// keeps one per service, under the daemon's settings; this is for your own
/// retry loops and [`crate::cluster::call`].
///
/// ```
/// use lb_client::{BudgetConfig, RetryBudget};
///
/// let cfg = BudgetConfig { percent: 0.2, min_per_sec: 0, ..Default::default() };
/// let budget = RetryBudget::new(cfg);
/// for _ in 0..10 {
///     budget.deposit(); // once per call
/// }
/// // 20 % of 10 calls: two retries, then none until more calls come.
/// assert!(budget.try_withdraw());
/// assert!(budget.try_withdraw());
/// assert!(!budget.try_withdraw());
/// ```
#[derive(Debug)]
pub struct RetryBudget {
    /// Units deposited per request.
    deposit: i64,
    /// Constant reserve, in units.
    reserve: i64,
    /// Width of one bucket.
    width: Duration,
    /// `None`: unlimited (every withdrawal succeeds).
    window: Option<Mutex<Window>>,
}

/// Net units (deposits minus withdrawals) per bucket.
#[derive(Debug)]
struct Window {
    buckets: [i64; BUCKETS],
    /// The bucket being filled.
    head: usize,
    /// When the head bucket started.
    head_start: Instant,
}

impl Window {
    /// Expires the buckets older than the window as of `now`.
    fn advance(&mut self, now: Instant, width: Duration) {
        let elapsed = now.saturating_duration_since(self.head_start);
        let steps = elapsed.as_nanos() / width.as_nanos().max(1);
        if steps == 0 {
            return;
        }
        if steps >= BUCKETS as u128 {
            self.buckets = [0; BUCKETS];
            self.head_start = now;
            return;
        }
        // steps < BUCKETS, so these conversions are lossless.
        let steps = steps as usize;
        for _ in 0..steps {
            self.head = (self.head + 1) % BUCKETS;
            self.buckets[self.head] = 0;
        }
        self.head_start += width * steps as u32;
    }

    fn sum(&self) -> i64 {
        self.buckets.iter().fold(0i64, |a, &b| a.saturating_add(b))
    }

    fn add(&mut self, units: i64) {
        let b = &mut self.buckets[self.head];
        *b = b.saturating_add(units);
    }
}

impl RetryBudget {
    /// A budget with `cfg`, empty but for the reserve.
    ///
    /// ```
    /// use lb_client::{BudgetConfig, RetryBudget};
    /// let budget = RetryBudget::new(BudgetConfig::default());
    /// assert_eq!(budget.balance(), 100); // 10 retries a second × 10 s
    /// ```
    pub fn new(cfg: BudgetConfig) -> Self {
        let percent = if cfg.percent.is_finite() && cfg.percent > 0.0 {
            cfg.percent
        } else if cfg.percent == f64::INFINITY {
            f64::MAX
        } else {
            0.0
        };
        // `as` saturates on overflow: a huge percent just means "always".
        let deposit = (percent * SCALE as f64).round() as i64;
        let reserve = (f64::from(cfg.min_per_sec) * cfg.ttl.as_secs_f64() * SCALE as f64) as i64;
        RetryBudget {
            deposit,
            reserve,
            width: (cfg.ttl / BUCKETS as u32).max(MIN_BUCKET),
            window: Some(Mutex::new(Window {
                buckets: [0; BUCKETS],
                head: 0,
                head_start: Instant::now(),
            })),
        }
    }

    /// A budget that never refuses a retry (no throttling).
    ///
    /// ```
    /// let budget = lb_client::RetryBudget::unlimited();
    /// assert!((0..1000).all(|_| budget.try_withdraw()));
    /// assert_eq!(budget.balance(), u64::MAX);
    /// ```
    pub fn unlimited() -> Self {
        RetryBudget {
            deposit: 0,
            reserve: 0,
            width: MIN_BUCKET,
            window: None,
        }
    }

    /// Records one original request (call once per call, not per attempt).
    ///
    /// ```
    /// use lb_client::{BudgetConfig, RetryBudget};
    /// let cfg = BudgetConfig { percent: 0.2, min_per_sec: 0, ..Default::default() };
    /// let budget = RetryBudget::new(cfg);
    /// assert_eq!(budget.balance(), 0);
    /// (0..5).for_each(|_| budget.deposit());
    /// assert_eq!(budget.balance(), 1); // 5 calls × 20 %
    /// ```
    pub fn deposit(&self) {
        if let Some(w) = &self.window {
            let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
            w.advance(Instant::now(), self.width);
            w.add(self.deposit);
        }
    }

    /// Takes one retry (or extra hedge) from the budget. `false`: the budget is
    /// exhausted, do not retry.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lb_client::{BudgetConfig, RetryBudget};
    /// // No calls yet, a reserve of 1 retry a second over 2 s:
    /// let ttl = Duration::from_secs(2);
    /// let cfg = BudgetConfig { min_per_sec: 1, ttl, ..Default::default() };
    /// let budget = RetryBudget::new(cfg);
    /// assert!(budget.try_withdraw());
    /// assert!(budget.try_withdraw());
    /// assert!(!budget.try_withdraw()); // fail the call rather than retry it
    /// ```
    pub fn try_withdraw(&self) -> bool {
        let Some(w) = &self.window else {
            return true;
        };
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.advance(Instant::now(), self.width);
        if w.sum().saturating_add(self.reserve) >= SCALE {
            w.add(-SCALE);
            true
        } else {
            false
        }
    }

    /// Retries currently available (`u64::MAX` when unlimited).
    ///
    /// ```
    /// let budget = lb_client::RetryBudget::default(); // 20 % + 10/s over 10 s
    /// assert_eq!(budget.balance(), 100);
    /// assert!(budget.try_withdraw());
    /// assert_eq!(budget.balance(), 99);
    /// ```
    pub fn balance(&self) -> u64 {
        let Some(w) = &self.window else {
            return u64::MAX;
        };
        let mut w = w.lock().unwrap_or_else(|e| e.into_inner());
        w.advance(Instant::now(), self.width);
        let units = w.sum().saturating_add(self.reserve).max(0);
        // Non-negative after max(0).
        (units / SCALE) as u64
    }
}

impl Default for RetryBudget {
    fn default() -> Self {
        RetryBudget::new(BudgetConfig::default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn cfg(percent: f64, min_per_sec: u32) -> BudgetConfig {
        BudgetConfig {
            percent,
            min_per_sec,
            ttl: Duration::from_secs(10),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn reserve_allows_min_per_sec_times_ttl() {
        let b = RetryBudget::new(BudgetConfig::default());
        assert_eq!(b.balance(), 100); // 10/s × 10 s
        for _ in 0..100 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        assert_eq!(b.balance(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_bounded_by_percent_of_requests_plus_floor() {
        let b = RetryBudget::new(cfg(0.2, 1)); // reserve 10
        let mut retries = 0;
        for _ in 0..1000 {
            b.deposit();
            // Every request wants two retries.
            for _ in 0..2 {
                if b.try_withdraw() {
                    retries += 1;
                }
            }
        }
        assert_eq!(retries, 200 + 10);
    }

    #[tokio::test(start_paused = true)]
    async fn withdrawals_expire_and_the_budget_refills_after_ttl() {
        let b = RetryBudget::new(cfg(0.0, 1));
        for _ in 0..10 {
            assert!(b.try_withdraw());
        }
        assert!(!b.try_withdraw());
        advance(Duration::from_secs(5)).await;
        assert!(!b.try_withdraw(), "still inside the window");
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.balance(), 10);
        assert!(b.try_withdraw());
    }

    #[tokio::test(start_paused = true)]
    async fn deposits_slide_out_of_the_window() {
        let b = RetryBudget::new(cfg(1.0, 0));
        assert_eq!(b.balance(), 0);
        for _ in 0..5 {
            b.deposit();
        }
        advance(Duration::from_secs(5)).await;
        for _ in 0..3 {
            b.deposit();
        }
        assert_eq!(b.balance(), 8);
        // t = 9.5 s: the first deposits are still inside the window.
        advance(Duration::from_millis(4500)).await;
        assert_eq!(b.balance(), 8);
        // t = 10 s: they expired, the later ones still count.
        advance(Duration::from_millis(500)).await;
        assert_eq!(b.balance(), 3);
        assert!(b.try_withdraw());
        assert_eq!(b.balance(), 2);
        // t = 15 s: the later deposits expired; the withdrawal (made at 10 s)
        // still counts and is not covered by anything.
        advance(Duration::from_secs(5)).await;
        assert_eq!(b.balance(), 0);
        b.deposit();
        assert_eq!(b.balance(), 0);
        b.deposit();
        assert_eq!(b.balance(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn long_idle_clears_everything() {
        let b = RetryBudget::new(cfg(1.0, 0));
        b.deposit();
        advance(Duration::from_secs(3600)).await;
        assert_eq!(b.balance(), 0);
        b.deposit();
        assert_eq!(b.balance(), 1);
    }

    #[test]
    fn odd_parameters_do_not_panic() {
        for percent in [f64::NAN, -1.0, 0.0, f64::INFINITY, 1e300] {
            let b = RetryBudget::new(BudgetConfig {
                percent,
                min_per_sec: u32::MAX,
                ttl: Duration::ZERO,
            });
            b.deposit();
            let _ = b.try_withdraw();
            let _ = b.balance();
        }
        let nan = RetryBudget::new(BudgetConfig {
            percent: f64::NAN,
            min_per_sec: 0,
            ttl: Duration::from_secs(1),
        });
        nan.deposit();
        assert!(!nan.try_withdraw());
        let big = RetryBudget::new(BudgetConfig {
            percent: 0.0,
            min_per_sec: u32::MAX,
            ttl: Duration::MAX,
        });
        assert!(big.try_withdraw());
    }

    #[test]
    fn unlimited_never_refuses() {
        let b = RetryBudget::unlimited();
        for _ in 0..10_000 {
            assert!(b.try_withdraw());
        }
        assert_eq!(b.balance(), u64::MAX);
    }

    #[test]
    fn is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<RetryBudget>();
    }
}
