//! Bounded load for keyed *requests*: a client moves a keyed call off the
//! key's home when the home already holds more than its bounded share of the
//! client's calls in flight.
//!
//! Sources: V. Mirrokni, M. Thorup, M. Zadimoghaddam, "Consistent Hashing
//! with Bounded Loads", SODA 2018 (a bin of capacity `⌈c · m / n⌉` for `m`
//! balls in `n` bins; a ball whose bin is full goes on to the next one), as
//! deployed for requests rather than keys by Envoy's `hash_balance_factor`
//! (Envoy docs, "Ring hash" and "Maglev" load balancers: "no host will have
//! more than `hash_balance_factor` times the average number of requests in
//! flight"; a host is overloaded when its active requests exceed
//! `max(1, ⌈⌈(active + 1) · c⌉ · w⌉)`, `w` its normalised weight) and by
//! HAProxy's `hash-balance-factor`.
//!
//! The daemon's affinity table ([`super::chash`]) already caps each server's
//! share of *slots* at `c` times its weight, but a slot is not a request: one
//! popular key is one slot and can draw 15 % of all calls (Zipf keys). The
//! bound here is on what the client actually sends:
//! - `total` is this client's calls in flight on the servers the table names,
//!   `share_i` a server's slots over the table's length;
//! - server `i` has room while `in_flight_i ≤ max(1, ⌈⌈c · (total + 1)⌉ ·
//!   share_i⌉)` (Envoy's rule: the `max(1, …)` and the second rounding
//!   let a key's home hold a call or two more than the strict `⌈c · m/n⌉`,
//!   which matters when one client has only a few calls in flight and the
//!   strict bound would move a key whenever its home is busy at all);
//! - the key's home is taken when it has room, otherwise the first server
//!   with room in the key's own probe sequence ([`probe`]: table slots drawn
//!   from the key's hash, so every client moves a key to the same second
//!   home and a hot key spreads over few servers, not all), otherwise the
//!   least overloaded server probed.
//!
//! With nothing in flight on the home (light load) the pick is exactly the
//! table's, so affinity holds; it loosens only for the calls a busy home
//! would have queued. `c = ∞` (or below 1) turns the bound off.
//!
//! # The daemon's part: spill fractions
//!
//! A client's own calls in flight are a small sample (a few calls each when
//! many clients share a service), and the `max(1, …)` above then lets a hot
//! key's server run well past `c` times its share of all calls. The daemon
//! sees every server's received rate in its load reports, so it closes the
//! loop on the bound as Mirrokni et al. state it, over *all* calls: each
//! report interval, [`next_spill`] moves server `i`'s spill fraction `f_i` by
//! `GAIN · (x_i − t_i) / max(x_i, t_i)`, where `x_i` is its share of the
//! service's reported qps and `t_i = c ·` its weight's share (an integral
//! controller: it settles where the received share meets the bound,
//! whatever the keys' popularity, which the daemon never sees). `f_i` is
//! quantised to [`SPILL_STEP`] (so noise below half a step does not push a
//! new list) and capped at [`MAX_SPILL`] (a key keeps most of its calls on
//! its home). The list carries the fractions; a client sends a keyed call
//! whose home spills `f_i` to the key's next server ([`choose`] with the
//! home skipped) with probability `f_i`. Spilled calls of one key land on
//! one second server, the same on every client.
//!
//! The rule is a pure function here so `lb-client` (the real pick) and
//! `lb-sim` (the model) make the same decision.

/// Table slots a bounded pick tries after the key's home before it settles
/// for the least overloaded of them.
pub const PROBES: u32 = 8;

/// How far one report interval moves a spill fraction, per unit of relative
/// excess share.
pub const GAIN: f64 = 0.5;

/// The largest spill fraction: a key keeps at least this much of the rest
/// on its home.
pub const MAX_SPILL: f64 = 0.75;

/// Spill fractions are multiples of this (1/64).
pub const SPILL_STEP: f64 = 1.0 / 64.0;

/// One step of the daemon's spill controller for one server: `current` its
/// spill fraction, `share` its share of the service's reported calls,
/// `target` the most it should get (`c` times its weight's share). Rises
/// while the server gets more than `target`, falls back toward 0 while it
/// gets less. Inputs that are not finite or negative read as 0.
///
/// ```
/// use lb_core::policy::bounded::{next_spill, SPILL_STEP};
/// // A hot server with 31 % of the calls against a bound of 21 %:
/// let f = next_spill(0.0, 0.31, 0.21);
/// assert!(f > 0.15 && f < 0.17);
/// // Within the bound with nothing spilled: nothing to do.
/// assert_eq!(next_spill(0.0, 0.18, 0.21), 0.0);
/// // Below the bound, a spill eases off; tiny moves round away.
/// assert!(next_spill(0.3, 0.15, 0.21) < 0.3);
/// assert_eq!(next_spill(0.25, 0.2101, 0.21), 0.25);
/// # let _ = SPILL_STEP;
/// ```
pub fn next_spill(current: f64, share: f64, target: f64) -> f64 {
    let clean = |x: f64| if x.is_finite() && x > 0.0 { x } else { 0.0 };
    let (f, x, t) = (clean(current), clean(share), clean(target));
    let scale = x.max(t);
    let moved = if scale > 0.0 {
        f + GAIN * (x - t) / scale
    } else {
        0.0
    };
    ((moved.clamp(0.0, MAX_SPILL) / SPILL_STEP).round() * SPILL_STEP).min(MAX_SPILL)
}

/// Each server's slots in `table` (indices at or past `servers` are ignored).
///
/// ```
/// use lb_core::policy::bounded::slots;
/// assert_eq!(slots(&[0, 1, 0, 2, 0], 3), vec![3, 1, 1]);
/// ```
pub fn slots(table: &[u32], servers: usize) -> Vec<u32> {
    let mut s = vec![0u32; servers];
    for &i in table {
        if let Some(n) = s.get_mut(i as usize) {
            *n += 1;
        }
    }
    s
}

/// Whether the bound `c` is on: finite and at least 1.
pub fn is_on(c: f64) -> bool {
    c.is_finite() && c >= 1.0
}

/// The most calls a server holding `slots` of a `table_len`-slot table may
/// have in flight while this client has `total` in flight on the table's
/// servers: `max(1, ⌈⌈c · (total + 1)⌉ · slots / table_len⌉)`. 0 for a
/// server with no slot.
///
/// ```
/// use lb_core::policy::bounded::capacity;
/// assert_eq!(capacity(0, 100, 600, 1.25), 1); // idle client: one call anywhere
/// assert_eq!(capacity(23, 100, 600, 1.25), 5); // ⌈⌈1.25 · 24⌉ / 6⌉
/// assert_eq!(capacity(23, 0, 600, 1.25), 0);
/// ```
pub fn capacity(total: u64, slots: u32, table_len: u32, c: f64) -> u64 {
    if slots == 0 || table_len == 0 {
        return 0;
    }
    let all = (c * (total as f64 + 1.0)).ceil();
    let mine = (all * f64::from(slots) / f64::from(table_len)).ceil();
    // `as` saturates; a NaN (c = NaN never gets here) would read as 0.
    (mine as u64).max(1)
}

/// The table slot of a key's `k`-th probe (`k ≥ 1`; the home is slot
/// `hash % table_len`): the key's hash mixed with `k` by the splitmix64
/// finaliser (as [`crate::keyhash`]), so probes are independent of the home
/// and of each other, and the same on every client.
///
/// ```
/// use lb_core::policy::bounded::probe;
/// assert!(probe(42, 1, 7) < 7);
/// assert_eq!(probe(42, 3, 7), probe(42, 3, 7));
/// ```
pub fn probe(hash: u64, k: u32, table_len: u32) -> usize {
    let mut z = hash.wrapping_add(u64::from(k).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z % u64::from(table_len.max(1))) as usize
}

/// The server (an index into `slots`) a keyed call with `hash` goes to under
/// the bound `c`: the home `table[hash % len]` if it has room, else the
/// first of the key's [`PROBES`] probes that has, else the first server that
/// has, scanning from a point the key decides (one always has: the
/// capacities sum to more than the calls in flight). With `spill` (the
/// daemon's spill fraction drew this call off its home) the home is skipped
/// and is taken only if the service has no other server.
/// `in_flight(i)` is this client's calls in flight on server `i`; it is read
/// once per server at most, and only the home's when the home is idle.
/// `None` for an empty table.
///
/// `slots` must be [`slots`]`(table, n)` and every entry of `table` below
/// `n`; with the bound off ([`is_on`] false) this is the home.
///
/// ```
/// use lb_core::policy::bounded::{choose, slots};
/// let table = [0, 1, 2, 0, 1, 2];
/// let s = slots(&table, 3);
/// let idle = [0u64, 0, 0];
/// assert_eq!(choose(3, &table, &s, 1.25, false, |i| idle[i]), Some(0)); // the home
/// assert_ne!(choose(3, &table, &s, 1.25, true, |i| idle[i]), Some(0)); // spilled
/// let busy = [9u64, 0, 0]; // home 0 holds 9 of this client's 9 calls
/// assert_ne!(choose(3, &table, &s, 1.25, false, |i| busy[i]), Some(0));
/// assert_eq!(choose(3, &table, &s, f64::INFINITY, false, |i| busy[i]), Some(0)); // off
/// ```
pub fn choose(
    hash: u64,
    table: &[u32],
    slots: &[u32],
    c: f64,
    spill: bool,
    in_flight: impl Fn(usize) -> u64,
) -> Option<usize> {
    let len = u32::try_from(table.len()).ok().filter(|&n| n > 0)?;
    let home = table[(hash % u64::from(len)) as usize] as usize;
    if !is_on(c) {
        return Some(home);
    }
    let home_load = in_flight(home);
    if home_load == 0 && !spill {
        // Every server with a slot has room for one call.
        return Some(home);
    }
    let total: u64 = slots
        .iter()
        .enumerate()
        .filter(|(_, &s)| s > 0)
        .map(|(i, _)| if i == home { home_load } else { in_flight(i) })
        .sum();
    let cap = |i: usize| capacity(total, slots.get(i).copied().unwrap_or(0), len, c);
    let home_cap = cap(home);
    if home_load <= home_cap && !spill {
        return Some(home);
    }
    // Least overloaded so far, as (server, in_flight, capacity), compared by
    // cross-multiplication; a spilled call counts the home only as a last
    // resort.
    let mut best = (!spill).then_some((home, home_load, home_cap));
    let mut consider = |i: usize| -> bool {
        if i == home || slots.get(i).is_none_or(|&s| s == 0) {
            return false;
        }
        let (load, room) = (in_flight(i), cap(i));
        if load <= room {
            best = Some((i, load, room));
            return true;
        }
        if best.is_none_or(|(_, l, r)| {
            u128::from(load) * u128::from(r) < u128::from(l) * u128::from(room)
        }) {
            best = Some((i, load, room));
        }
        false
    };
    for k in 1..=PROBES {
        if consider(table[probe(hash, k, len)] as usize) {
            return best.map(|b| b.0);
        }
    }
    // The probes missed (they land by slots, so a small server is rarely
    // probed): scan every server from a point the key decides. Some server
    // always has room (the capacities sum to at least `total + 1`).
    let n = slots.len();
    let start = (hash % n.max(1) as u64) as usize;
    for j in 0..n {
        if consider((start + j) % n) {
            break;
        }
    }
    Some(best.map_or(home, |b| b.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn capacity_follows_envoys_rounding() {
        // 6 equal servers (100 slots each), c = 1.25.
        assert_eq!(capacity(0, 100, 600, 1.25), 1);
        assert_eq!(capacity(3, 100, 600, 1.25), 1); // ⌈5/6⌉
        assert_eq!(capacity(4, 100, 600, 1.25), 2); // ⌈⌈6.25⌉/6⌉ = ⌈7/6⌉
        assert_eq!(capacity(47, 100, 600, 1.25), 10); // ⌈60/6⌉
                                                      // A server with twice the slots gets twice the room.
        assert_eq!(capacity(47, 200, 700, 1.25), 18); // ⌈60 · 2/7⌉
        assert_eq!(capacity(u64::MAX, 1, 1, 1.0), u64::MAX);
    }

    #[test]
    fn a_busy_home_keeps_calls_within_its_bound() {
        let table = [0, 1, 2, 3];
        let s = slots(&table, 4);
        // Hash 0's home is server 0. One call on it, none elsewhere: capacity
        // ⌈⌈1.25 · 2⌉ / 4⌉ = 1, so the home takes this one too.
        let loads = [1u64, 0, 0, 0];
        assert_eq!(choose(0, &table, &s, 1.25, false, |i| loads[i]), Some(0));
        // Two calls on it: capacity ⌈⌈1.25 · 3⌉ / 4⌉ = 1 < 2, so it moves.
        let loads = [2u64, 0, 0, 0];
        assert_ne!(choose(0, &table, &s, 1.25, false, |i| loads[i]), Some(0));
        // Elsewhere calls raise the mean, and with it the home's room:
        // 2 on the home and 6 spread, capacity ⌈⌈1.25 · 9⌉ / 4⌉ = 3.
        let loads = [2u64, 2, 2, 2];
        assert_eq!(choose(0, &table, &s, 1.25, false, |i| loads[i]), Some(0));
    }

    #[test]
    fn a_moved_key_goes_to_the_same_server_on_every_client() {
        let table: Vec<u32> = (0..60).map(|k| k % 6).collect();
        let s = slots(&table, 6);
        let busy = [10u64, 0, 0, 0, 0, 0];
        let a = choose(6, &table, &s, 1.25, false, |i| busy[i]);
        assert_ne!(a, Some(0));
        assert_eq!(a, choose(6, &table, &s, 1.25, false, |i| busy[i]));
        // 49 calls: c = 1.25 gives ⌈⌈62.5⌉ / 6⌉ = 11 each and nobody is
        // over; c = 1 gives ⌈50 / 6⌉ = 9 and the home (10) is.
        let all = [10u64, 9, 9, 9, 3, 9];
        assert_eq!(choose(6, &table, &s, 1.25, false, |i| all[i]), Some(0));
        assert_ne!(choose(6, &table, &s, 1.0, false, |i| all[i]), Some(0));
    }

    #[test]
    fn a_server_the_probes_miss_is_found_by_the_scan() {
        // 10 servers, 10 slots each; 11 calls on each of servers 0..9, none
        // on 9: total 99, capacity ⌈⌈1.25 · 100⌉ / 10⌉ = 13 with c = 1.25
        // (nobody over) and ⌈100 / 10⌉ = 10 with c = 1 (all but 9 over).
        let table: Vec<u32> = (0..100).map(|k| k % 10).collect();
        let s = slots(&table, 10);
        let loads = [11u64, 11, 11, 11, 11, 11, 11, 11, 11, 0];
        // A key whose home and probes all miss server 9.
        let hash = (0u64..)
            .find(|&h| {
                table[(h % 100) as usize] != 9 && (1..=PROBES).all(|k| table[probe(h, k, 100)] != 9)
            })
            .expect("such a key exists");
        let home = table[(hash % 100) as usize] as usize;
        assert_eq!(
            choose(hash, &table, &s, 1.25, false, |i| loads[i]),
            Some(home)
        );
        assert_eq!(choose(hash, &table, &s, 1.0, false, |i| loads[i]), Some(9));
    }

    #[test]
    fn a_spilled_call_leaves_its_home_for_the_keys_second_server() {
        let table: Vec<u32> = (0..60).map(|k| k % 6).collect();
        let s = slots(&table, 6);
        let idle = [0u64; 6];
        for hash in 0..200u64 {
            let home = table[(hash % 60) as usize] as usize;
            let a = choose(hash, &table, &s, 1.25, true, |i| idle[i]).expect("a server");
            assert_ne!(a, home);
            // The same second server every time (and on every client).
            assert_eq!(Some(a), choose(hash, &table, &s, 1.25, true, |i| idle[i]));
        }
        // A single server has nowhere to spill to.
        assert_eq!(choose(5, &[0, 0], &[2], 1.25, true, |_| 3), Some(0));
    }

    #[test]
    fn the_spill_controller_settles_where_the_share_meets_the_bound() {
        // A server whose keys draw 30 % of the calls, bound 1.25 / 6: each
        // step it keeps (1 - f) of its own and the rest goes elsewhere.
        let (offered, target) = (0.30, 1.25 / 6.0);
        let mut f = 0.0;
        for _ in 0..40 {
            f = next_spill(f, offered * (1.0 - f), target);
        }
        let share = offered * (1.0 - f);
        assert!((share - target).abs() < 0.01, "share {share}, f {f}");
        assert_eq!(f, (f / SPILL_STEP).round() * SPILL_STEP);
        // Offered below the bound: the spill winds down to 0.
        for _ in 0..40 {
            f = next_spill(f, 0.15, target);
        }
        assert_eq!(f, 0.0);
        // Never more than MAX_SPILL; garbage in reads as 0.
        assert_eq!(next_spill(0.7, 1.0, 0.01), MAX_SPILL);
        assert_eq!(next_spill(f64::NAN, f64::INFINITY, -1.0), 0.0);
    }

    #[test]
    fn off_and_empty() {
        assert_eq!(choose(1, &[], &[], 1.25, false, |_| 0), None);
        let loads = [100u64, 0];
        for c in [f64::INFINITY, 0.5, f64::NAN] {
            assert_eq!(choose(0, &[0, 1], &[1, 1], c, false, |i| loads[i]), Some(0));
        }
    }

    proptest! {
        /// Whatever the loads, the pick is a server with a slot; with the
        /// home idle or within its capacity it is the home; and a server
        /// other than the home is taken only if it has room or nothing
        /// probed had room.
        #[test]
        fn picks_are_valid_and_the_home_wins_when_it_has_room(
            table in proptest::collection::vec(0u32..5, 1..64),
            loads in proptest::collection::vec(0u64..40, 5),
            hash in any::<u64>(),
            c in 1.0f64..3.0,
        ) {
            let s = slots(&table, 5);
            let i = choose(hash, &table, &s, c, false, |i| loads[i]).expect("non-empty");
            prop_assert!(s[i] > 0);
            let home = table[(hash % table.len() as u64) as usize] as usize;
            let total: u64 = (0..5).filter(|&j| s[j] > 0).map(|j| loads[j]).sum();
            let len = table.len() as u32;
            if loads[home] <= capacity(total, s[home], len, c) {
                prop_assert_eq!(i, home);
            } else if i != home && loads[i] > capacity(total, s[i], len, c) {
                for k in 1..=PROBES {
                    let j = table[probe(hash, k, len)] as usize;
                    prop_assert!(j == home || loads[j] > capacity(total, s[j], len, c));
                }
            }
        }
    }
}
