//! The simulator in CI: short runs that check the harness itself and the one
//! comparison the product exists for (load-aware beats round robin on a
//! heterogeneous, degrading farm). Virtual time, so these take seconds even in
//! debug builds and never flake on a busy machine.

use std::time::Duration;

use lb_core::policy::{choice, PolicyKind};
use lb_sim::{Contender, EventKind, Scenario};

fn contender(name: &str) -> Contender {
    Contender::by_name(name).unwrap_or_else(|| panic!("no contender {name}"))
}

#[test]
fn load_aware_beats_round_robin_on_hetero_degrade() {
    // 10 s instead of 30: the degrade at 4 s and the kill at 7 s both happen.
    let s = Scenario::hetero_degrade(Duration::from_secs(10));
    let r = lb_sim::compare(&s, &[contender("load_aware"), contender("round_robin")], 1);
    let (la, rr) = (&r.results[0], &r.results[1]);
    // Same arrivals for both.
    assert_eq!(la.requests, rr.requests);
    assert!(
        la.p99_ms < rr.p99_ms,
        "load_aware p99 {} ms is not below round_robin's {} ms\n{}",
        la.p99_ms,
        rr.p99_ms,
        r.table()
    );
    // Before the kill capacity suffices, so each phase's p99 compares too
    // (after it, the benchmark plan's farm is over capacity for every policy).
    for (phase, (a, b)) in la.phases.iter().zip(&rr.phases).take(2).enumerate() {
        assert!(
            a.p99_ms < b.p99_ms,
            "phase {phase}: load_aware p99 {} ms vs round_robin {} ms\n{}",
            a.p99_ms,
            b.p99_ms,
            r.table()
        );
    }
    assert!(la.errors() * 5 < rr.errors(), "{}", r.table());
}

#[test]
fn two_choices_cut_the_tail_after_a_degrade() {
    // The per-request signal (lb_core::policy::choice): between two load
    // reports, each client steers away from the backend it already waits
    // on. The same plans with clients that follow the list do worse in the
    // phase after the fast backend degrades.
    let s = Scenario::hetero_degrade(Duration::from_secs(10));
    let two = contender("load_aware");
    assert_eq!(two.policy.client_choices, choice::TWO);
    let mut follow = contender("load_aware");
    follow.name = "load_aware, clients follow the list".into();
    follow.policy.client_choices = choice::FOLLOW;
    let r = lb_sim::compare(&s, &[two, follow], 1);
    let (two, follow) = (&r.results[0].phases[1], &r.results[1].phases[1]);
    assert!(
        two.p99_ms < follow.p99_ms,
        "after the degrade: two choices p99 {} ms vs following {} ms\n{}",
        two.p99_ms,
        follow.p99_ms,
        r.table()
    );
}

#[test]
fn with_a_wide_spread_of_speeds_the_slow_backends_get_less_than_capacity() {
    // Prequal's point (NSDI '24): when the fast backends have headroom, the
    // tail is set by how much reaches the slow ones. load_aware's default
    // (two choices with a prior of 1) keeps them below their capacity share
    // and the p99 well below capacity-proportional weighted round robin's;
    // with a prior of 0 the shares follow capacity.
    let s = Scenario::latency_spread(Duration::from_secs(10));
    let mut exact = contender("load_aware");
    exact.name = "load_aware, choice_prior=0".into();
    exact.policy.choice_prior = 0;
    let r = lb_sim::compare(
        &s,
        &[
            contender("load_aware"),
            exact,
            contender("weighted_round_robin"),
        ],
        1,
    );
    let (la, exact, wrr) = (&r.results[0], &r.results[1], &r.results[2]);
    let slow = |p: &lb_sim::PolicyResult| p.backends[4].steady_share + p.backends[5].steady_share;
    let capacity = wrr.backends[4].capacity_share + wrr.backends[5].capacity_share;
    assert!(
        slow(la) < capacity / 2.0,
        "slow share {} vs capacity {capacity}\n{}",
        slow(la),
        r.table()
    );
    assert!(
        (slow(exact) - capacity).abs() < capacity / 2.0,
        "{}",
        r.table()
    );
    assert!(la.p99_ms < 0.5 * wrr.p99_ms, "{}", r.table());
    assert!(la.errors() <= wrr.errors() + 5, "{}", r.table());
}

fn assert_equal_shares(contenders: &[Contender], tolerance: f64) {
    let mut s = Scenario::uniform(6, Duration::from_secs(5));
    s.clients = 8;
    let r = lb_sim::compare(&s, contenders, 3);
    for p in &r.results {
        for b in &p.backends {
            assert!(
                (b.steady_share - 1.0 / 6.0).abs() < tolerance,
                "{}: {} got {:.3}\n{}",
                p.policy,
                b.id,
                b.steady_share,
                r.table()
            );
        }
    }
}

fn feeds_back(c: &Contender) -> bool {
    c.policy.kind.uses_load() || c.policy.kind == PolicyKind::FastestResponse
}

/// The harness: with identical backends every policy that does not feed back
/// on load or latency spreads evenly (±3 points of share: ~8,400 requests,
/// hashes over 10,000 keys), and so does the client-side p2c.
#[test]
fn identical_backends_get_equal_shares() {
    let cs: Vec<Contender> = Contender::all()
        .into_iter()
        .filter(|c| !feeds_back(c))
        .collect();
    assert_equal_shares(&cs, 0.03);
}

/// The policies driven by backend load reports on identical backends: no
/// herding. (With 1 s reports and a weight factor comparing raw active counts
/// across backends, every client piled onto whichever backend looked idlest
/// in the last snapshot: queues of hundreds, shares 12–23 %. load_aware's
/// backlog correction and 250 ms reports fixed it.)
#[test]
fn load_driven_policies_do_not_herd_on_identical_backends() {
    let cs: Vec<Contender> = Contender::all()
        .into_iter()
        .filter(|c| c.policy.kind.uses_load())
        .collect();
    assert_equal_shares(&cs, 0.03);
}

/// fastest_response follows 1 s batches of client-reported latency, whose
/// noise moves its weights: on identical backends its shares spread by up to
/// ~7 points over 5 s (measured; still no timeouts). A known weakness, bounded
/// here so that it cannot get worse unnoticed.
#[test]
fn fastest_response_spread_is_bounded_on_identical_backends() {
    let cs = [contender("fastest_response")];
    assert_equal_shares(&cs, 0.075);
}

#[test]
fn a_killed_backend_gets_nothing_after_kill_and_propagation() {
    let s = Scenario::hetero_degrade(Duration::from_secs(6));
    let (killed, at) = s
        .events
        .iter()
        .find_map(|e| match e.kind {
            EventKind::Kill { backend } => Some((backend, e.at)),
            _ => None,
        })
        .expect("hetero-degrade kills a backend");
    let deadline = s.warmup + at + s.propagation;
    let cs = [
        contender("round_robin"),
        contender("load_aware"),
        contender("consistent_hash"),
        Contender::p2c_peak_ewma(),
    ];
    let r = lb_sim::compare(&s, &cs, 5);
    for p in &r.results {
        let last = p.backends[killed]
            .last_request
            .expect("the backend served before it was killed");
        assert!(
            last <= deadline,
            "{}: last request to {} at {:?}, after {:?}",
            p.policy,
            p.backends[killed].id,
            last,
            deadline
        );
        assert!(
            last + Duration::from_millis(100) > s.warmup + at,
            "{}: idle before the kill",
            p.policy
        );
    }
}

#[test]
fn bounded_consistent_hashing_keeps_a_hot_keys_backend_near_its_bound() {
    // Zipf keys: the top key alone draws 15 % of the requests, so strict
    // affinity puts about 1.8 × the mean share on its backend (over its
    // capacity). With the default load_bound of 1.25 the daemon's spill
    // fractions and the clients' in-flight bound hold it near 1.25 ×.
    let s = Scenario::hash_zipf(Duration::from_secs(10));
    let bounded = contender("consistent_hash");
    assert_eq!(bounded.policy.chash.load_bound, 1.25);
    let mut plain = contender("consistent_hash");
    plain.name = "consistent_hash, load_bound=none".into();
    plain.policy.chash.load_bound = f64::INFINITY;
    let r = lb_sim::compare(&s, &[bounded, plain], 1);
    let max_over_mean = |i: usize| {
        let b = &r.results[i].backends;
        let total: u64 = b.iter().map(|x| x.requests).sum();
        let max = b.iter().map(|x| x.requests).max().unwrap_or(0);
        max as f64 * b.len() as f64 / total.max(1) as f64
    };
    let (with, without) = (max_over_mean(0), max_over_mean(1));
    assert!(
        with <= 1.35,
        "bounded: max share {with:.3} × mean\n{}",
        r.table()
    );
    assert!(
        without >= 1.6,
        "plain: max share {without:.3} × mean\n{}",
        r.table()
    );
    let (a, b) = (&r.results[0], &r.results[1]);
    assert!(a.p99_ms * 3.0 < b.p99_ms, "{}", r.table());
    assert!(a.errors() < b.errors(), "{}", r.table());
}
