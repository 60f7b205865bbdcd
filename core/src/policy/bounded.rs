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
//! The rule is a pure function here so `lb-client` (the real pick) and
//! `lb-sim` (the model) make the same decision.

/// Table slots a bounded pick tries after the key's home before it settles
/// for the least overloaded of them.
pub const PROBES: u32 = 8;

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
/// capacities sum to more than the calls in flight).
/// `in_flight(i)` is this client's calls in flight on server `i`; it is read
/// once per server at most, and only when the home is busy. `None` for an
/// empty table.
///
/// `slots` must be [`slots`]`(table, n)` and every entry of `table` below
/// `n`; with the bound off ([`is_on`] false) this is the home.
///
/// ```
/// use lb_core::policy::bounded::{choose, slots};
/// let table = [0, 1, 2, 0, 1, 2];
/// let s = slots(&table, 3);
/// let idle = [0u64, 0, 0];
/// assert_eq!(choose(3, &table, &s, 1.25, |i| idle[i]), Some(0)); // the home
/// let busy = [9u64, 0, 0]; // home 0 holds 9 of this client's 9 calls
/// assert_ne!(choose(3, &table, &s, 1.25, |i| busy[i]), Some(0));
/// assert_eq!(choose(3, &table, &s, f64::INFINITY, |i| busy[i]), Some(0)); // off
/// ```
pub fn choose(
    hash: u64,
    table: &[u32],
    slots: &[u32],
    c: f64,
    in_flight: impl Fn(usize) -> u64,
) -> Option<usize> {
    let len = u32::try_from(table.len()).ok().filter(|&n| n > 0)?;
    let home = table[(hash % u64::from(len)) as usize] as usize;
    if !is_on(c) {
        return Some(home);
    }
    let home_load = in_flight(home);
    if home_load == 0 {
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
    if home_load <= home_cap {
        return Some(home);
    }
    // Least overloaded so far, as (server, in_flight, capacity); compared by
    // cross-multiplication.
    let mut best = (home, home_load, home_cap);
    let mut consider = |i: usize| -> bool {
        if i == home || slots.get(i).is_none_or(|&s| s == 0) {
            return false;
        }
        let (load, room) = (in_flight(i), cap(i));
        if load <= room {
            best = (i, load, room);
            return true;
        }
        if u128::from(load) * u128::from(best.2) < u128::from(best.1) * u128::from(room) {
            best = (i, load, room);
        }
        false
    };
    for k in 1..=PROBES {
        if consider(table[probe(hash, k, len)] as usize) {
            return Some(best.0);
        }
    }
    // The probes missed (they land by slots, so a small server is rarely
    // probed): scan every server from a point the key decides. Some server
    // always has room (the capacities sum to at least `total + 1`).
    let n = slots.len();
    let start = (hash % n as u64) as usize;
    for j in 0..n {
        if consider((start + j) % n) {
            break;
        }
    }
    Some(best.0)
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
        assert_eq!(choose(0, &table, &s, 1.25, |i| loads[i]), Some(0));
        // Two calls on it: capacity ⌈⌈1.25 · 3⌉ / 4⌉ = 1 < 2, so it moves.
        let loads = [2u64, 0, 0, 0];
        assert_ne!(choose(0, &table, &s, 1.25, |i| loads[i]), Some(0));
        // Elsewhere calls raise the mean, and with it the home's room:
        // 2 on the home and 6 spread, capacity ⌈⌈1.25 · 9⌉ / 4⌉ = 3.
        let loads = [2u64, 2, 2, 2];
        assert_eq!(choose(0, &table, &s, 1.25, |i| loads[i]), Some(0));
    }

    #[test]
    fn a_moved_key_goes_to_the_same_server_on_every_client() {
        let table: Vec<u32> = (0..60).map(|k| k % 6).collect();
        let s = slots(&table, 6);
        let busy = [10u64, 0, 0, 0, 0, 0];
        let a = choose(6, &table, &s, 1.25, |i| busy[i]);
        assert_ne!(a, Some(0));
        assert_eq!(a, choose(6, &table, &s, 1.25, |i| busy[i]));
        // 49 calls: c = 1.25 gives ⌈⌈62.5⌉ / 6⌉ = 11 each and nobody is
        // over; c = 1 gives ⌈50 / 6⌉ = 9 and the home (10) is.
        let all = [10u64, 9, 9, 9, 3, 9];
        assert_eq!(choose(6, &table, &s, 1.25, |i| all[i]), Some(0));
        assert_ne!(choose(6, &table, &s, 1.0, |i| all[i]), Some(0));
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
        assert_eq!(choose(hash, &table, &s, 1.25, |i| loads[i]), Some(home));
        assert_eq!(choose(hash, &table, &s, 1.0, |i| loads[i]), Some(9));
    }

    #[test]
    fn off_and_empty() {
        assert_eq!(choose(1, &[], &[], 1.25, |_| 0), None);
        let loads = [100u64, 0];
        for c in [f64::INFINITY, 0.5, f64::NAN] {
            assert_eq!(choose(0, &[0, 1], &[1, 1], c, |i| loads[i]), Some(0));
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
            let i = choose(hash, &table, &s, c, |i| loads[i]).expect("non-empty");
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
