//! Strategies for hostile requests: every request message of `lb.v1` and
//! `grpc.lb.v1`, with each field drawn from valid values, values at and
//! just past its documented limit, and hostile ones (empty, huge, unicode,
//! control characters, NaN, infinities, negative and huge numbers).
//!
//! Valid values get the largest weight, so most generated messages are
//! refused for one or two fields only and the deep checks are reached; a
//! fair share is accepted whole.
//!
//! [`Maps::AtMostOne`] generates maps of at most one entry: prost encodes a
//! `HashMap` in its (random) iteration order, so only such messages encode
//! to the same bytes in every run (the mutation fuzzer needs that to be
//! reproducible; it makes larger maps by repeating an entry's record).

use std::collections::HashMap;

use lb_core::model::{
    MAX_ACTIVE_REQUESTS, MAX_ID_LEN, MAX_LABELS, MAX_LABEL_KEY_LEN, MAX_LABEL_VALUE_LEN,
    MAX_NAMED_METRICS, MAX_RATE, MAX_SERVICE_LEN, MAX_STATS_ENTRIES, MAX_TOKEN_LEN,
    MAX_UTILIZATION, MAX_VERSION_LEN, MAX_WEIGHT, MAX_ZONE_LEN,
};
use lb_proto::grpclb as lb;
use lb_proto::v1 as pb;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

/// Longest "huge" string, in characters: far past every limit (the longest
/// is 255 bytes) and every error quote ([`lb_core::model::MAX_QUOTE`]),
/// short enough for millions of cases.
pub const HUGE: usize = 8192;

/// How large generated maps may be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Maps {
    /// Up to just past each map's limit.
    Many,
    /// At most one entry (deterministic encoding).
    AtMostOne,
}

/// Letters, digits and `._-/`: service names, zones, label keys.
const NAME: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/";
/// [`NAME`] and `:`: instance and client ids.
const ID: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-/:";
/// Rule names.
const RULE: &str = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
/// Printable ASCII without space: tokens.
const TOKEN: &str =
    "!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~";
/// Characters no name allows, and some that confuse parsers, terminals and
/// error paths: controls, quotes, brackets, separators, multi-byte and
/// invisible characters.
const HOSTILE: &[char] = &[
    '\0',
    '\n',
    '\r',
    '\t',
    '\u{1b}',
    '\u{7f}',
    ' ',
    '"',
    '\'',
    '\\',
    '[',
    ']',
    '.',
    ':',
    '=',
    '%',
    '/',
    '\u{85}',
    '\u{a0}',
    '\u{2028}',
    '\u{202e}',
    '\u{feff}',
    'é',
    '…',
    'ß',
    '中',
    '🦀',
    '\u{10ffff}',
    '\u{fffd}',
];

fn chars(alphabet: &str) -> Vec<char> {
    alphabet.chars().collect()
}

/// A string of `alphabet`'s characters, `len` of them.
fn from(alphabet: &str, len: std::ops::RangeInclusive<usize>) -> BoxedStrategy<String> {
    vec(select(chars(alphabet)), len)
        .prop_map(String::from_iter)
        .boxed()
}

/// A string for a field whose valid values are `1..=limit` bytes of
/// `alphabet` (an empty one is generated too, valid or not).
pub fn text(alphabet: &'static str, limit: usize) -> BoxedStrategy<String> {
    let mut hostile = chars(alphabet);
    hostile.extend_from_slice(HOSTILE);
    let hostile = vec(select(hostile), 1..=24).prop_map(String::from_iter);
    let at_limit = (
        select(chars(alphabet)),
        prop_oneof![Just(limit), Just(limit + 1)],
    )
        .prop_map(|(c, n)| c.to_string().repeat(n));
    let huge = (select(HOSTILE.to_vec()), limit + 1..=HUGE)
        .prop_map(|(c, n)| std::iter::repeat_n(c, n).collect::<String>());
    let huge_valid =
        (select(chars(alphabet)), limit + 1..=HUGE).prop_map(|(c, n)| c.to_string().repeat(n));
    prop_oneof![
        12 => from(alphabet, 1..=limit.min(16)),
        2 => Just(String::new()),
        2 => at_limit,
        1 => huge,
        1 => huge_valid,
        3 => hostile,
        1 => any::<String>(),
    ]
    .boxed()
}

/// A field that may also be empty when valid (zones, versions, tokens).
fn optional_text(alphabet: &'static str, limit: usize) -> BoxedStrategy<String> {
    prop_oneof![1 => Just(String::new()), 3 => text(alphabet, limit)].boxed()
}

/// A u32 field documented as `lo..=hi`.
pub fn u32_in(lo: u32, hi: u32) -> BoxedStrategy<u32> {
    prop_oneof![
        6 => lo..=hi,
        1 => Just(0u32),
        1 => Just(lo.saturating_sub(1)),
        1 => Just(hi),
        1 => Just(hi.saturating_add(1)),
        1 => Just(u32::MAX),
        1 => any::<u32>(),
    ]
    .boxed()
}

/// A u64 field documented as at most `hi`.
fn u64_to(hi: u64) -> BoxedStrategy<u64> {
    prop_oneof![
        6 => 0..=hi.min(1_000),
        1 => 0..=hi,
        1 => Just(hi),
        1 => Just(hi.saturating_add(1)),
        1 => Just(u64::MAX),
        1 => any::<u64>(),
    ]
    .boxed()
}

/// An i64 count (grpclb's counters must not be negative).
fn i64_count() -> BoxedStrategy<i64> {
    prop_oneof![
        6 => 0..1_000i64,
        1 => Just(-1i64),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
        1 => any::<i64>(),
    ]
    .boxed()
}

/// An f64 field documented as `0..=hi`: NaNs (quiet, signalling,
/// negative), infinities, negative zero, subnormals, the limit and just
/// past it, and anything.
pub fn f64_to(hi: f64) -> BoxedStrategy<f64> {
    prop_oneof![
        6 => 0.0..=hi,
        1 => Just(0.0),
        1 => Just(-0.0),
        1 => Just(hi),
        1 => Just(hi * (1.0 + f64::EPSILON)),
        1 => Just(-f64::MIN_POSITIVE),
        1 => Just(f64::MIN_POSITIVE / 4.0),
        1 => Just(f64::NAN),
        1 => Just(-f64::NAN),
        1 => Just(f64::from_bits(0x7ff0_0000_0000_0001)),
        1 => Just(f64::INFINITY),
        1 => Just(f64::NEG_INFINITY),
        1 => Just(f64::MAX),
        1 => Just(-1.0),
        2 => any::<f64>(),
    ]
    .boxed()
}

/// A map of `n` entries drawn from `keys` and `values`, fewer when keys
/// repeat. (proptest's `hash_map` insists on `n` distinct keys and draws
/// again until it has them: with small key spaces, such as names that are
/// often empty, that never ends.)
fn entries<K, V>(
    keys: BoxedStrategy<K>,
    values: BoxedStrategy<V>,
    n: impl Into<proptest::collection::SizeRange>,
) -> BoxedStrategy<HashMap<K, V>>
where
    K: std::fmt::Debug + Clone + std::hash::Hash + Eq + 'static,
    V: std::fmt::Debug + Clone + 'static,
{
    vec((keys, values), n)
        .prop_map(|kv| kv.into_iter().collect())
        .boxed()
}

/// A map of `keys` to `values`: usually a few entries (fewer when keys
/// repeat), sometimes, with [`Maps::Many`], from just under to just past
/// `limit` (distinct valid keys `k0`, `k1`, …, one value drawn for all).
fn map<V: std::fmt::Debug + Clone + 'static>(
    maps: Maps,
    limit: usize,
    keys: BoxedStrategy<String>,
    values: BoxedStrategy<V>,
) -> BoxedStrategy<HashMap<String, V>> {
    match maps {
        Maps::AtMostOne => entries(keys, values, 0..=1),
        Maps::Many => {
            let many = (limit.saturating_sub(1)..=limit + 2, values.clone())
                .prop_map(|(n, v)| (0..n).map(|i| (format!("k{i}"), v.clone())).collect());
            prop_oneof![12 => entries(keys, values, 0..=3), 1 => many].boxed()
        }
    }
}

/// A label key (also `zone`, which routing treats specially).
fn label_key() -> BoxedStrategy<String> {
    prop_oneof![6 => text(NAME, MAX_LABEL_KEY_LEN), 1 => Just("zone".to_string())].boxed()
}

/// A label map (instance, client, rule conditions and selectors).
pub fn labels(maps: Maps) -> BoxedStrategy<HashMap<String, String>> {
    let value = prop_oneof![
        3 => optional_text(NAME, MAX_ZONE_LEN),
        1 => text(TOKEN, MAX_LABEL_VALUE_LEN),
    ]
    .boxed();
    map(maps, MAX_LABELS, label_key(), value)
}

/// A service name.
pub fn service() -> BoxedStrategy<String> {
    text(NAME, MAX_SERVICE_LEN)
}

/// An instance or client id.
pub fn id() -> BoxedStrategy<String> {
    text(ID, MAX_ID_LEN)
}

/// A zone.
fn zone() -> BoxedStrategy<String> {
    optional_text(NAME, MAX_ZONE_LEN)
}

/// A port as text: valid, 0, past 65535, signed, padded, not a number.
fn port_text() -> BoxedStrategy<String> {
    prop_oneof![
        6 => (1..=65535u16).prop_map(|p| p.to_string()),
        1 => select(vec!["0", "65535", "65536", "99999999999999999999", "-1", "+80", "080", "", " 80", "http", "8O"])
            .prop_map(str::to_string),
    ]
    .boxed()
}

/// An address: IPv4, IPv6 and DNS names that are valid, numeric hosts in
/// disguise, addresses nothing can dial, link-local ones, and junk.
pub fn address() -> BoxedStrategy<String> {
    let v4 = (any::<[u8; 4]>(), port_text())
        .prop_map(|(ip, port)| format!("{}:{port}", std::net::Ipv4Addr::from(ip)));
    let v6 = (any::<[u8; 16]>(), port_text())
        .prop_map(|(ip, port)| format!("[{}]:{port}", std::net::Ipv6Addr::from(ip)));
    let dns = (
        vec(from("abcdefghijklmnopqrstuvwxyz0123456789-", 1..=12), 1..=4),
        port_text(),
    )
        .prop_map(|(labels, port)| format!("{}:{port}", labels.join(".")));
    let special = select(vec![
        "127.0.0.1:80",
        "0.0.0.0:80",
        "255.255.255.255:80",
        "224.0.0.1:80",
        "[ff02::1]:80",
        "[::]:80",
        "[::1]:7400",
        "169.254.169.254:80",
        "[fe80::1]:80",
        "[fe80::1%eth0]:80",
        "127.1:80",
        "0:80",
        "0x7f.1:80",
        "0x7f000001:80",
        "2130706433:80",
        "127.000.000.001:80",
        "1.2.3.4.5:80",
        "host:0",
        "host:65536",
        "host:",
        ":80",
        "[::1]",
        "::1:80",
        "a..b:80",
        "-a.b:80",
        "a-.b:80",
        "localhost:1",
        "xn--bcher-kva.example:443",
        "10x.example:80",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        3 => v4,
        1 => v6,
        3 => dns,
        3 => special,
        1 => text(NAME, 253),
    ]
    .boxed()
}

/// An instance token: empty (derived), valid, the reserved drop token, junk.
fn token() -> BoxedStrategy<String> {
    prop_oneof![
        3 => Just(String::new()),
        3 => text(TOKEN, MAX_TOKEN_LEN),
        1 => Just("lb-drop".to_string()),
    ]
    .boxed()
}

/// An `Instance`.
pub fn instance(maps: Maps) -> BoxedStrategy<pb::Instance> {
    (
        service(),
        id(),
        address(),
        zone(),
        u32_in(1, MAX_WEIGHT),
        labels(maps),
        optional_text(TOKEN, MAX_VERSION_LEN),
        token(),
    )
        .prop_map(
            |(service, instance_id, address, zone, weight, labels, version, token)| pb::Instance {
                service,
                instance_id,
                address,
                zone,
                weight,
                labels,
                version,
                token,
            },
        )
        .boxed()
}

/// A TTL in ms (0: the default; 100..=3_600_000).
fn ttl_ms() -> BoxedStrategy<u32> {
    prop_oneof![1 => Just(0u32), 4 => u32_in(100, 3_600_000)].boxed()
}

/// An optional sub-message: present most of the time.
fn some<T: std::fmt::Debug + Clone + 'static>(s: BoxedStrategy<T>) -> BoxedStrategy<Option<T>> {
    option::weighted(0.95, s).boxed()
}

/// A `RegisterRequest`.
pub fn register(maps: Maps) -> BoxedStrategy<pb::RegisterRequest> {
    (some(instance(maps)), ttl_ms())
        .prop_map(|(instance, ttl_ms)| pb::RegisterRequest { instance, ttl_ms })
        .boxed()
}

/// A `LoadReport`.
pub fn load_report(maps: Maps) -> BoxedStrategy<pb::LoadReport> {
    let metrics = map(maps, MAX_NAMED_METRICS, label_key(), f64_to(1e12));
    (
        f64_to(MAX_UTILIZATION),
        u64_to(MAX_ACTIVE_REQUESTS),
        option::of(f64_to(MAX_RATE)),
        option::of(f64_to(MAX_RATE)),
        option::of(f64_to(MAX_UTILIZATION)),
        metrics,
    )
        .prop_map(
            |(cpu_utilization, active_requests, qps, eps, mem_utilization, named_metrics)| {
                pb::LoadReport {
                    cpu_utilization,
                    active_requests,
                    qps,
                    eps,
                    mem_utilization,
                    named_metrics,
                }
            },
        )
        .boxed()
}

/// A `ReportLoadRequest`: register, report, drain or nothing.
pub fn report_load(maps: Maps) -> BoxedStrategy<pb::ReportLoadRequest> {
    use pb::report_load_request::Msg;
    let registration = (some(instance(maps)), ttl_ms())
        .prop_map(|(instance, ttl_ms)| Msg::Register(pb::Registration { instance, ttl_ms }));
    let msg = prop_oneof![
        3 => registration,
        3 => load_report(maps).prop_map(Msg::Report),
        1 => Just(Msg::Drain(pb::Drain {})),
    ];
    option::weighted(0.95, msg)
        .prop_map(|msg| pb::ReportLoadRequest { msg })
        .boxed()
}

/// A `DeregisterRequest`.
pub fn deregister() -> BoxedStrategy<pb::DeregisterRequest> {
    (service(), id())
        .prop_map(|(service, instance_id)| pb::DeregisterRequest {
            service,
            instance_id,
        })
        .boxed()
}

/// One `InstanceStats`: mostly consistent counts, sometimes not.
fn instance_stats(maps: Maps) -> BoxedStrategy<pb::InstanceStats> {
    let code =
        prop_oneof![8 => 1..=16u32, 1 => Just(0u32), 1 => Just(17u32), 1 => any::<u32>()].boxed();
    let by_code = match maps {
        Maps::AtMostOne => entries(code, u64_to(100), 0..=1),
        Maps::Many => prop_oneof![
            8 => entries(code, u64_to(100), 0..=3),
            // Every code, and past them: codes 1..=n.
            1 => (15..=20u32, u64_to(100)).prop_map(|(n, v)| (1..=n).map(|c| (c, v)).collect()),
        ]
        .boxed(),
    };
    (
        id(),
        u64_to(1_000_000),
        u64_to(1_000),
        u64_to(1_000),
        any::<u64>(),
        by_code,
        u64_to(100),
    )
        .prop_map(
            |(
                instance_id,
                calls_started,
                calls_finished,
                calls_failed,
                latency_sum_us,
                failed_by_code,
                consecutive_failures,
            )| {
                pb::InstanceStats {
                    instance_id,
                    calls_started,
                    calls_finished,
                    calls_failed,
                    latency_sum_us,
                    failed_by_code,
                    consecutive_failures,
                }
            },
        )
        .boxed()
}

/// A `ClientStats` (lb.v1), sometimes with more entries than allowed.
pub fn client_stats(maps: Maps) -> BoxedStrategy<pb::ClientStats> {
    let instances = prop_oneof![
        50 => vec(instance_stats(maps), 0..=3),
        // Cheap to make: one entry, cloned past the limit.
        1 => instance_stats(maps).prop_map(|s| vec![s; MAX_STATS_ENTRIES + 1]),
    ];
    (instances, u64_to(1_000), u64_to(1_000))
        .prop_map(|(instances, dropped, no_backend)| pb::ClientStats {
            instances,
            dropped,
            no_backend,
        })
        .boxed()
}

/// A `ClientIdentity`.
fn client_identity(maps: Maps) -> BoxedStrategy<pb::ClientIdentity> {
    (id(), zone(), labels(maps))
        .prop_map(|(client_id, zone, labels)| pb::ClientIdentity {
            client_id,
            zone,
            labels,
        })
        .boxed()
}

/// A `SubscribeRequest`: subscribe, stats or nothing.
pub fn subscribe(maps: Maps) -> BoxedStrategy<pb::SubscribeRequest> {
    use pb::subscribe_request::Msg;
    let subscription = (
        service(),
        some(client_identity(maps)),
        text("sledtc:0123456789abcdef", lb_core::model::MAX_STATE_ID_LEN),
        any::<u64>(),
    )
        .prop_map(|(service, client, held_state_id, held_state_revision)| {
            Msg::Subscribe(pb::Subscription {
                service,
                client,
                held_state_id,
                held_state_revision,
            })
        });
    let msg = prop_oneof![
        1 => subscription,
        1 => client_stats(maps).prop_map(Msg::Stats),
    ];
    option::weighted(0.95, msg)
        .prop_map(|msg| pb::SubscribeRequest { msg })
        .boxed()
}

/// A policy parameter's value: numbers (in and out of range, NaN, inf),
/// durations, flags, choices, and junk.
fn param_value() -> BoxedStrategy<String> {
    let words = select(vec![
        "0",
        "1",
        "2",
        "0.5",
        "0.05",
        "0.002",
        "-1",
        "-0",
        "1e9",
        "1e309",
        "NaN",
        "inf",
        "-inf",
        "none",
        " 3 ",
        "1.5",
        "65536",
        "65537",
        "1000003",
        "1000004",
        "7",
        "10ms",
        "250ms",
        "5s",
        "2m",
        "1h",
        "0ms",
        "99999999999999999999h",
        "5 s",
        "5S",
        "true",
        "false",
        "on",
        "off",
        "ring",
        "maglev",
        "",
    ])
    .prop_map(str::to_string);
    prop_oneof![
        6 => words,
        2 => any::<f64>().prop_map(|x| x.to_string()),
        2 => (0..=70_000u32).prop_map(|x| x.to_string()),
        1 => (0..=100_000u64).prop_map(|x| format!("{x}ms")),
        1 => text(TOKEN, 32),
    ]
    .boxed()
}

/// A `Policy`: known and unknown names, parameters of the policy, of other
/// policies, and unknown ones.
pub fn policy(maps: Maps) -> BoxedStrategy<pb::Policy> {
    use lb_core::policy::config::{ALL_POLICIES, PARAMS};
    let names: Vec<String> = ALL_POLICIES.iter().map(|k| k.name().to_string()).collect();
    let params: Vec<String> = PARAMS.iter().map(|p| p.name.to_string()).collect();
    let name = prop_oneof![8 => select(names), 1 => text(RULE, 32)];
    let key = prop_oneof![8 => select(params), 1 => text(NAME, 32)].boxed();
    let params = match maps {
        Maps::AtMostOne => entries(key, param_value(), 0..=1),
        Maps::Many => prop_oneof![
            4 => entries(key.clone(), param_value(), 0..=2),
            1 => entries(key, param_value(), 3..=8),
        ]
        .boxed(),
    };
    (name, params)
        .prop_map(|(name, params)| pb::Policy { name, params })
        .boxed()
}

/// A `SetPolicyRequest`.
pub fn set_policy(maps: Maps) -> BoxedStrategy<pb::SetPolicyRequest> {
    (service(), some(policy(maps)), any::<(bool, bool)>())
        .prop_map(|(service, policy, (reset, create))| pb::SetPolicyRequest {
            service,
            policy,
            reset,
            create,
        })
        .boxed()
}

/// A `SetWeightRequest` (0 clears the override).
pub fn set_weight() -> BoxedStrategy<pb::SetWeightRequest> {
    (service(), id(), u32_in(0, MAX_WEIGHT))
        .prop_map(|(service, instance_id, weight)| pb::SetWeightRequest {
            service,
            instance_id,
            weight,
        })
        .boxed()
}

/// A `SetDrainRequest`.
pub fn set_drain() -> BoxedStrategy<pb::SetDrainRequest> {
    (service(), id(), any::<bool>())
        .prop_map(|(service, instance_id, drain)| pb::SetDrainRequest {
            service,
            instance_id,
            drain,
        })
        .boxed()
}

/// A rule name.
pub fn rule_name() -> BoxedStrategy<String> {
    text(RULE, lb_core::routing::MAX_RULE_NAME_LEN)
}

/// A `Rule`: mostly exactly one of `select` and `instance`, sometimes both
/// or neither; conditions sometimes all empty.
pub fn rule(maps: Maps) -> BoxedStrategy<pb::Rule> {
    let target = prop_oneof![
        4 => labels(maps).prop_map(|s| (s, String::new())),
        2 => id().prop_map(|i| (HashMap::new(), i)),
        1 => (labels(maps), id()),
    ];
    (
        rule_name(),
        labels(maps),
        labels(maps),
        prop_oneof![3 => Just(String::new()), 1 => id()],
        target,
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(
                name,
                when_request,
                when_client,
                when_client_id,
                (select, instance),
                (exclusive, strict),
            )| {
                pb::Rule {
                    name,
                    when_request,
                    when_client,
                    when_client_id,
                    select,
                    instance,
                    exclusive,
                    strict,
                }
            },
        )
        .boxed()
}

/// A `PutRuleRequest`.
pub fn put_rule(maps: Maps) -> BoxedStrategy<pb::PutRuleRequest> {
    (
        service(),
        some(rule(maps)),
        option::of(u32_in(0, lb_core::routing::MAX_RULES as u32 - 1)),
        any::<bool>(),
    )
        .prop_map(|(service, rule, position, create)| pb::PutRuleRequest {
            service,
            rule,
            position,
            create,
        })
        .boxed()
}

/// A `DeleteRuleRequest`.
pub fn delete_rule() -> BoxedStrategy<pb::DeleteRuleRequest> {
    (service(), rule_name())
        .prop_map(|(service, name)| pb::DeleteRuleRequest { service, name })
        .boxed()
}

/// A token's name (`[A-Za-z0-9._-]`, 1..=64 bytes).
fn token_name() -> BoxedStrategy<String> {
    text(RULE, lb_core::access::MAX_NAME_LEN)
}

/// A service pattern: names, globs, and hostile strings.
fn pattern() -> BoxedStrategy<String> {
    prop_oneof![
        4 => service(),
        2 => service().prop_map(|s| format!("{s}*")),
        1 => Just("*".to_string()),
        1 => Just("**".to_string()),
    ]
    .boxed()
}

/// A `CreateTokenRequest`.
pub fn create_token() -> BoxedStrategy<pb::CreateTokenRequest> {
    let roles = prop_oneof![
        4 => select(vec!["backend", "client", "admin-read-only", "admin"]).prop_map(str::to_string),
        1 => text(RULE, 16),
    ];
    let identity = prop_oneof![
        3 => Just(String::new()),
        1 => text(ID, lb_server::pb::v1::MAX_IDENTITY_LEN),
    ];
    (token_name(), roles, vec(pattern(), 0..=3), identity)
        .prop_map(|(name, role, services, identity)| pb::CreateTokenRequest {
            name,
            role,
            services,
            identity,
        })
        .boxed()
}

/// A `RevokeTokenRequest`.
pub fn revoke_token() -> BoxedStrategy<pb::RevokeTokenRequest> {
    token_name()
        .prop_map(|name| pb::RevokeTokenRequest { name })
        .boxed()
}

/// A `ListTokensRequest` (it has no fields).
pub fn list_tokens() -> BoxedStrategy<pb::ListTokensRequest> {
    Just(pb::ListTokensRequest {}).boxed()
}

/// A status name for `retry_on`.
fn status_name() -> BoxedStrategy<String> {
    let names: Vec<String> = lb_core::status::Code::ALL
        .iter()
        .map(|c| c.name().to_string())
        .collect();
    let lower: Vec<String> = names.iter().map(|n| n.to_lowercase()).collect();
    prop_oneof![6 => select(names), 1 => select(lower), 1 => text(NAME, 24)].boxed()
}

/// An enum field's raw value: known ones, and numbers no enum has.
fn enum_value(known: i32) -> BoxedStrategy<i32> {
    prop_oneof![
        12 => 0..known,
        1 => Just(known),
        1 => Just(-1i32),
        1 => Just(i32::MAX),
        1 => Just(i32::MIN),
    ]
    .boxed()
}

/// A `ClusterMode`. Most keep to their kind's fields (the others zero), so
/// that ranges are reached; the rest mix fields of every kind.
pub fn cluster_mode() -> BoxedStrategy<pb::ClusterMode> {
    use lb_core::cluster::{MAX_ATTEMPTS, MAX_FORKS};
    let retry_on = prop_oneof![
        8 => vec(status_name(), 0..=3),
        1 => vec(status_name(), 17..=18),
    ];
    let raw = (
        enum_value(6),
        u32_in(1, MAX_ATTEMPTS),
        u32_in(0, 10_000),
        prop_oneof![1 => Just(0u32), 2 => u32_in(0, 60_000)],
        retry_on,
        u32_in(2, MAX_FORKS),
        enum_value(3),
        u32_in(0, 100),
        prop_oneof![1 => Just(String::new()), 2 => rule_name()],
    )
        .prop_map(
            |(
                kind,
                attempts,
                backoff_ms,
                backoff_max_ms,
                retry_on,
                forks,
                collect,
                max_failure_percent,
                route,
            )| {
                pb::ClusterMode {
                    kind,
                    attempts,
                    backoff_ms,
                    backoff_max_ms,
                    retry_on,
                    forks,
                    collect,
                    max_failure_percent,
                    route,
                }
            },
        );
    (raw, prop::bool::weighted(0.8))
        .prop_map(|(mut m, tidy)| {
            if tidy {
                keep_to_kind(&mut m);
            }
            m
        })
        .boxed()
}

/// Zeroes the fields that do not belong to `m`'s kind.
fn keep_to_kind(m: &mut pb::ClusterMode) {
    use pb::cluster_mode::Kind as K;
    let kind = K::try_from(m.kind).ok();
    if kind != Some(K::Failover) {
        m.attempts = 0;
        m.backoff_ms = 0;
        m.backoff_max_ms = 0;
        m.retry_on.clear();
    }
    if kind != Some(K::Forking) {
        m.forks = 0;
    }
    if !matches!(kind, Some(K::Broadcast | K::Multicast)) {
        m.max_failure_percent = 0;
        m.collect = 0;
    }
    if kind != Some(K::Multicast) {
        m.route.clear();
    }
}

/// A method path for per-method modes.
fn method() -> BoxedStrategy<String> {
    let valid = (from(RULE, 1..=12), from(RULE, 1..=12)).prop_map(|(svc, m)| format!("/{svc}/{m}"));
    prop_oneof![
        6 => valid,
        1 => text(NAME, lb_core::cluster::MAX_METHOD_LEN),
        1 => (from(RULE, 1..=8), lb_core::cluster::MAX_METHOD_LEN - 4..=lb_core::cluster::MAX_METHOD_LEN + 4)
            .prop_map(|(m, n)| format!("/{}/{m}", "s".repeat(n))),
    ]
    .boxed()
}

/// `lb_core::cluster::MAX_DEADLINE` in the wire's milliseconds.
const MAX_DEADLINE_MS: u32 = lb_core::cluster::MAX_DEADLINE.as_millis() as u32;

/// A `ClusterConfig`, sometimes with more methods than allowed.
pub fn cluster_config(maps: Maps) -> BoxedStrategy<pb::ClusterConfig> {
    use lb_core::cluster::{MAX_BUDGET_MIN_PER_SEC, MAX_METHODS};
    let methods = match maps {
        Maps::AtMostOne => entries(method(), cluster_mode(), 0..=1),
        Maps::Many => prop_oneof![
            30 => entries(method(), cluster_mode(), 0..=3),
            // Cheap to make: one mode under MAX_METHODS + 1 names.
            1 => cluster_mode().prop_map(|m| {
                (0..=MAX_METHODS).map(|i| (format!("/p.S/m{i}"), m.clone())).collect()
            }),
        ]
        .boxed(),
    };
    (
        some(cluster_mode()),
        methods,
        option::of(u32_in(0, 100)),
        option::of(u32_in(0, MAX_BUDGET_MIN_PER_SEC)),
        u32_in(0, MAX_DEADLINE_MS),
    )
        .prop_map(
            |(default_mode, methods, budget_percent, budget_min_per_sec, deadline_ms)| {
                pb::ClusterConfig {
                    default_mode,
                    methods,
                    budget_percent,
                    budget_min_per_sec,
                    deadline_ms,
                }
            },
        )
        .boxed()
}

/// A `ClusterChange`: each field set or not, from valid, limit and
/// hostile values (ranges and kinds are judged when it is applied).
pub fn cluster_change() -> BoxedStrategy<pb::ClusterChange> {
    use lb_core::cluster::{MAX_ATTEMPTS, MAX_BUDGET_MIN_PER_SEC, MAX_FORKS};
    let retry_on = prop_oneof![
        8 => vec(status_name(), 0..=3),
        1 => vec(status_name(), 17..=18),
    ];
    let mode = (
        option::of(enum_value(6)),
        option::of(u32_in(0, MAX_ATTEMPTS + 1)),
        option::of(u32_in(0, 20_000)),
        option::of(u32_in(0, 70_000)),
        retry_on,
        option::of(u32_in(0, MAX_FORKS + 1)),
        option::of(enum_value(3)),
        option::of(u32_in(0, 101)),
        option::of(prop_oneof![1 => Just(String::new()), 2 => rule_name()]),
    );
    let scope = (
        prop_oneof![2 => Just(String::new()), 1 => method()],
        any::<(bool, bool)>(),
        option::of(u32_in(0, 101)),
        option::of(u32_in(0, MAX_BUDGET_MIN_PER_SEC + 1)),
        option::of(u32_in(0, MAX_DEADLINE_MS + 1)),
    );
    (mode, scope)
        .prop_map(
            |(
                (
                    kind,
                    attempts,
                    backoff_ms,
                    backoff_max_ms,
                    retry_on,
                    forks,
                    collect,
                    max_failure_percent,
                    route,
                ),
                (method, (clear, reset), budget_percent, budget_min_per_sec, deadline_ms),
            )| pb::ClusterChange {
                method,
                clear,
                reset,
                kind,
                attempts,
                backoff_ms,
                backoff_max_ms,
                retry_on,
                forks,
                collect,
                max_failure_percent,
                route,
                budget_percent,
                budget_min_per_sec,
                deadline_ms,
            },
        )
        .boxed()
}

/// A `SetClusterRequest`: mostly whole settings or a change, sometimes
/// both or neither.
pub fn set_cluster(maps: Maps) -> BoxedStrategy<pb::SetClusterRequest> {
    let setting = prop_oneof![
        6 => some(cluster_config(maps)).prop_map(|c| (c, None)),
        6 => cluster_change().prop_map(|c| (None, Some(c))),
        1 => (cluster_config(maps), cluster_change()).prop_map(|(a, b)| (Some(a), Some(b))),
    ];
    (service(), setting, any::<bool>())
        .prop_map(
            |(service, (cluster, change), create)| pb::SetClusterRequest {
                service,
                cluster,
                change,
                create,
            },
        )
        .boxed()
}

/// A `PutStaticRequest`.
pub fn put_static(maps: Maps) -> BoxedStrategy<pb::PutStaticRequest> {
    (some(instance(maps)), any::<bool>())
        .prop_map(|(instance, create)| pb::PutStaticRequest { instance, create })
        .boxed()
}

/// A `DeleteServiceRequest`.
pub fn delete_service() -> BoxedStrategy<pb::DeleteServiceRequest> {
    (service(), any::<bool>())
        .prop_map(|(service, force)| pb::DeleteServiceRequest { service, force })
        .boxed()
}

/// A `RemoveStaticRequest`.
pub fn remove_static() -> BoxedStrategy<pb::RemoveStaticRequest> {
    (service(), id())
        .prop_map(|(service, instance_id)| pb::RemoveStaticRequest {
            service,
            instance_id,
        })
        .boxed()
}

/// A `GetServiceRequest`.
pub fn get_service() -> BoxedStrategy<pb::GetServiceRequest> {
    service()
        .prop_map(|service| pb::GetServiceRequest { service })
        .boxed()
}

/// A `ListServicesRequest` (it has no fields).
pub fn list_services() -> BoxedStrategy<pb::ListServicesRequest> {
    Just(pb::ListServicesRequest {}).boxed()
}

/// A grpclb initial request's name: a service with or without a port, and junk.
fn grpclb_name() -> BoxedStrategy<String> {
    prop_oneof![
        4 => (service(), option::of(port_text())).prop_map(|(s, port)| match port {
            Some(p) => format!("{s}:{p}"),
            None => s,
        }),
        1 => text(ID, 255),
    ]
    .boxed()
}

/// A grpclb `ClientStats`, sometimes with more drop tokens than allowed.
fn grpclb_stats() -> BoxedStrategy<lb::ClientStats> {
    let per_token = (
        prop_oneof![2 => Just("lb-drop".to_string()), 3 => text(TOKEN, MAX_TOKEN_LEN)],
        i64_count(),
    )
        .prop_map(|(load_balance_token, num_calls)| lb::ClientStatsPerToken {
            load_balance_token,
            num_calls,
        });
    let drops = prop_oneof![
        20 => vec(per_token.clone(), 0..=3),
        1 => per_token.prop_map(|t| vec![t; lb_core::model::MAX_DROP_TOKENS + 1]),
    ];
    let timestamp = option::of(
        (any::<i64>(), any::<i32>())
            .prop_map(|(seconds, nanos)| prost_types::Timestamp { seconds, nanos }),
    );
    (
        timestamp,
        i64_count(),
        i64_count(),
        i64_count(),
        i64_count(),
        drops,
    )
        .prop_map(
            |(timestamp, started, finished, failed_to_send, known_received, drops)| {
                lb::ClientStats {
                    timestamp,
                    num_calls_started: started,
                    num_calls_finished: finished,
                    num_calls_finished_with_client_failed_to_send: failed_to_send,
                    num_calls_finished_known_received: known_received,
                    calls_finished_with_drop: drops,
                }
            },
        )
        .boxed()
}

/// A grpclb `LoadBalanceRequest`: initial request, client stats or nothing.
pub fn balance_load() -> BoxedStrategy<lb::LoadBalanceRequest> {
    use lb::load_balance_request::LoadBalanceRequestType as T;
    let t = prop_oneof![
        1 => grpclb_name().prop_map(|name| T::InitialRequest(lb::InitialLoadBalanceRequest { name })),
        1 => grpclb_stats().prop_map(T::ClientStats),
    ];
    option::weighted(0.95, t)
        .prop_map(|load_balance_request_type| lb::LoadBalanceRequest {
            load_balance_request_type,
        })
        .boxed()
}
