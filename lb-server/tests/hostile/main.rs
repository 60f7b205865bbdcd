//! Hostile input, proven: property tests over every wire → domain
//! conversion of the daemon (every request message of every RPC), and a
//! fuzzer of every RPC's request bytes through the decode path the server
//! runs.
//!
//! - `conv_*`: arbitrary messages (every field drawn from valid, limit and
//!   hostile values: see `gen`) through the RPC's conversion; judged by
//!   `judge` (refusals name a real field and quote a bounded amount of
//!   input; accepted values are whole, valid, and round-trip).
//! - `decode_*`: arbitrary bytes, and valid encodings mutated (bit flips,
//!   truncations, varints past 64 bits, repeated and unknown fields, huge
//!   lengths, all of it inside nested messages too), through tonic's
//!   `Streaming` with lb-proto's codec and then the conversion (`wire`).
//!   The same target runs under libFuzzer: `fuzz/`, `scripts/fuzz.sh`.
//! - `store_refusals_write_nothing`: sequences of requests through the
//!   daemon's own handlers and engine over a store that records every
//!   write (`reach`): a refused request writes nothing and changes no view,
//!   and every record stored is valid.
//! - `schema`: field paths checked against the `.proto` files.
//!
//! The case counts here keep CI short; `scripts/proptest-long.sh` runs the
//! same properties with millions of cases (see `run` for the knobs).

mod gen;
mod judge;
mod reach;
mod run;
mod schema;
mod wire;

use gen::Maps;
use judge::Outcome;
use proptest::collection::vec;
use proptest::prelude::*;
use wire::{apply, frame, Mutation, Rpc, Tally};

/// Cases per conversion property in CI.
const CONV_CASES: u32 = 1024;
/// Cases per decode fuzz target in CI.
const DECODE_CASES: u32 = 512;
/// Sequences of requests through the handlers in CI.
const STORE_CASES: u32 = 512;

fn tally(outcomes: &[Outcome]) -> Tally {
    let mut t = Tally::default();
    for o in outcomes {
        match o {
            Outcome::Accepted => t.accepted += 1,
            Outcome::Refused => t.refused += 1,
            Outcome::OutOfOrder => t.out_of_order += 1,
        }
    }
    t
}

/// A property over one unary request type's conversion.
macro_rules! conv {
    ($($test:ident: $gen:expr => $judge:path;)*) => {$(
        #[test]
        fn $test() {
            run::check(stringify!($test), CONV_CASES, $gen, |r| tally(&[$judge(r)]));
        }
    )*};
}

/// A property over one stream's messages, each as the first and as a later one.
macro_rules! conv_stream {
    ($($test:ident: $gen:expr => $judge:path;)*) => {$(
        #[test]
        fn $test() {
            run::check(stringify!($test), CONV_CASES, $gen, |m| {
                tally(&[$judge(m.clone(), true), $judge(m, false)])
            });
        }
    )*};
}

conv! {
    conv_register: gen::register(Maps::Many) => judge::register;
    conv_deregister: gen::deregister() => judge::deregister;
    conv_list_services: gen::list_services() => judge::list_services;
    conv_get_service: gen::get_service() => judge::get_service;
    conv_set_policy: gen::set_policy(Maps::Many) => judge::set_policy;
    conv_set_weight: gen::set_weight() => judge::set_weight;
    conv_set_drain: gen::set_drain() => judge::set_drain;
    conv_put_rule: gen::put_rule(Maps::Many) => judge::put_rule;
    conv_delete_rule: gen::delete_rule() => judge::delete_rule;
    conv_set_cluster: gen::set_cluster(Maps::Many) => judge::set_cluster;
    conv_put_static: gen::put_static(Maps::Many) => judge::put_static;
    conv_remove_static: gen::remove_static() => judge::remove_static;
    conv_delete_service: gen::delete_service() => judge::delete_service;
    conv_create_token: gen::create_token() => judge::create_token;
    conv_revoke_token: gen::revoke_token() => judge::revoke_token;
    conv_list_tokens: gen::list_tokens() => judge::list_tokens;
}

conv_stream! {
    conv_report_load: gen::report_load(Maps::Many) => judge::report_load;
    conv_subscribe: gen::subscribe(Maps::Many) => judge::subscribe;
    conv_balance_load: gen::balance_load() => judge::balance_load;
}

// ---------------------------------------------------------------- store

/// Nothing refused reaches the store: sequences of requests through the
/// daemon's handlers and engine over a recording store (see `reach`).
#[test]
fn store_refusals_write_nothing() {
    run::check(
        "store_refusals_write_nothing",
        STORE_CASES,
        vec(reach::call(), 1..=6),
        reach::run,
    );
}

// ------------------------------------------------------------- decoding

/// A mutation of an encoding.
fn mutation() -> BoxedStrategy<Mutation> {
    let leaf = prop_oneof![
        4 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        2 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
        1 => (any::<usize>(), vec(any::<u8>(), 1..=8)).prop_map(|(at, bytes)| Mutation::Splice { at, bytes }),
        1 => (any::<usize>(), any::<bool>()).prop_map(|(record, length)| Mutation::LongVarint { record, length }),
        3 => any::<usize>().prop_map(|record| Mutation::Repeat { record }),
        2 => (
            prop_oneof![4 => 1..=40u32, 1 => Just(0u32), 1 => Just((1u32 << 29) - 1), 1 => Just(1u32 << 29), 1 => any::<u32>()],
            0..=7u8,
            vec(any::<u8>(), 0..=12),
        )
            .prop_map(|(field, wire, payload)| Mutation::Unknown { field, wire, payload }),
        1 => (any::<usize>(), prop_oneof![Just(u64::MAX), Just(1u64 << 31), Just(1u64 << 32), 1..=64u64])
            .prop_map(|(record, length)| Mutation::HugeLength { record, length }),
    ];
    leaf.prop_recursive(2, 6, 1, |inner| {
        (any::<usize>(), inner).prop_map(|(record, then)| Mutation::Inside {
            record,
            then: Box::new(then),
        })
    })
    .boxed()
}

/// Fuzz inputs for a request type (see `wire` for the format): arbitrary
/// bytes, one valid message mutated, and several messages in one raw body
/// (a stream), its framing sometimes broken.
fn input<M>(messages: BoxedStrategy<M>) -> BoxedStrategy<Vec<u8>>
where
    M: prost::Message + Clone + std::fmt::Debug + 'static,
{
    let arbitrary = (any::<u8>(), vec(any::<u8>(), 0..=512)).prop_map(|(ctrl, bytes)| {
        let mut input = vec![ctrl];
        input.extend(bytes);
        input
    });
    let mutated =
        (messages.clone(), vec(mutation(), 0..=3), 0..=8u8).prop_map(|(m, mutations, chunk)| {
            let mut b = m.encode_to_vec();
            for x in &mutations {
                apply(&mut b, x);
            }
            let mut input = vec![chunk << 1];
            input.extend(b);
            input
        });
    let body_mutation = prop_oneof![
        2 => (any::<usize>(), any::<u8>()).prop_map(|(at, bit)| Mutation::FlipBit { at, bit }),
        1 => any::<usize>().prop_map(|at| Mutation::Truncate { at }),
    ];
    let stream = (
        vec((messages, vec(mutation(), 0..=1)), 1..=3),
        proptest::option::weighted(0.3, body_mutation),
        0..=8u8,
    )
        .prop_map(|(ms, broken, chunk)| {
            let mut body = Vec::new();
            for (m, mutations) in ms {
                let mut b = m.encode_to_vec();
                for x in &mutations {
                    apply(&mut b, x);
                }
                body.extend(frame(&b));
            }
            if let Some(x) = broken {
                apply(&mut body, &x);
            }
            let mut input = vec![(chunk << 1) | 1];
            input.extend(body);
            input
        });
    prop_oneof![2 => arbitrary, 6 => mutated, 2 => stream].boxed()
}

/// The fuzz inputs of `rpc`'s request.
fn inputs(rpc: Rpc) -> BoxedStrategy<Vec<u8>> {
    let m = Maps::AtMostOne;
    match rpc {
        Rpc::Register => input(gen::register(m)),
        Rpc::Deregister => input(gen::deregister()),
        Rpc::ReportLoad => input(gen::report_load(m)),
        Rpc::Subscribe => input(gen::subscribe(m)),
        Rpc::ListServices => input(gen::list_services()),
        Rpc::GetService => input(gen::get_service()),
        Rpc::SetPolicy => input(gen::set_policy(m)),
        Rpc::SetWeight => input(gen::set_weight()),
        Rpc::SetDrain => input(gen::set_drain()),
        Rpc::PutRule => input(gen::put_rule(m)),
        Rpc::DeleteRule => input(gen::delete_rule()),
        Rpc::SetCluster => input(gen::set_cluster(m)),
        Rpc::PutStatic => input(gen::put_static(m)),
        Rpc::RemoveStatic => input(gen::remove_static()),
        Rpc::DeleteService => input(gen::delete_service()),
        Rpc::CreateToken => input(gen::create_token()),
        Rpc::ListTokens => input(gen::list_tokens()),
        Rpc::RevokeToken => input(gen::revoke_token()),
        Rpc::BalanceLoad => input(gen::balance_load()),
    }
}

/// One decode fuzz target per RPC.
macro_rules! decode {
    ($($test:ident: $rpc:expr;)*) => {$(
        #[test]
        fn $test() {
            let rpc = $rpc;
            run::check(stringify!($test), DECODE_CASES, inputs(rpc), |data| wire::run(rpc, &data));
        }
    )*};
}

decode! {
    decode_register: Rpc::Register;
    decode_deregister: Rpc::Deregister;
    decode_report_load: Rpc::ReportLoad;
    decode_subscribe: Rpc::Subscribe;
    decode_list_services: Rpc::ListServices;
    decode_get_service: Rpc::GetService;
    decode_set_policy: Rpc::SetPolicy;
    decode_set_weight: Rpc::SetWeight;
    decode_set_drain: Rpc::SetDrain;
    decode_put_rule: Rpc::PutRule;
    decode_delete_rule: Rpc::DeleteRule;
    decode_set_cluster: Rpc::SetCluster;
    decode_put_static: Rpc::PutStatic;
    decode_remove_static: Rpc::RemoveStatic;
    decode_delete_service: Rpc::DeleteService;
    decode_create_token: Rpc::CreateToken;
    decode_list_tokens: Rpc::ListTokens;
    decode_revoke_token: Rpc::RevokeToken;
    decode_balance_load: Rpc::BalanceLoad;
}

/// Every RPC of the `.proto` files has its target here (a new RPC must be
/// added to `Rpc`, `gen`, `judge` and the fuzz targets), and each target
/// judges errors against its own request message.
#[test]
fn every_rpc_has_a_target() {
    let methods = schema::Schema::get().methods();
    let mut names: Vec<&str> = methods.iter().map(|(m, _)| m.as_str()).collect();
    names.sort();
    let mut ours: Vec<&str> = Rpc::ALL.iter().map(|r| r.method()).collect();
    ours.sort();
    assert_eq!(names, ours);
}

/// Writes libFuzzer's seed corpus: `LB_FUZZ_CORPUS=DIR` writes, for every
/// RPC, `DIR/<rpc>/seed-N` (`LB_FUZZ_SEEDS` of them, default 64): valid and
/// near-valid messages in the fuzz input format. Does nothing without it.
#[test]
fn write_fuzz_corpus() {
    use proptest::strategy::ValueTree;
    let Ok(dir) = std::env::var("LB_FUZZ_CORPUS") else {
        return;
    };
    let seeds: usize = std::env::var("LB_FUZZ_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    for rpc in Rpc::ALL {
        let path = std::path::Path::new(&dir).join(rpc.name());
        std::fs::create_dir_all(&path).unwrap();
        let s = inputs(rpc);
        for i in 0..seeds {
            let input = s.new_tree(&mut runner).unwrap().current();
            std::fs::write(path.join(format!("seed-{i}")), input).unwrap();
        }
    }
}

/// Cases the properties found, kept as they were found.
#[test]
fn regressions() {
    // An unknown policy parameter's name was quoted raw in the error
    // (`policy.params.<name>`): control characters reached the caller.
    let r = lb_proto::v1::SetPolicyRequest {
        service: "svc".into(),
        policy: Some(lb_proto::v1::Policy {
            name: "round_robin".into(),
            params: [("Kk =J/t\n\u{1b}[2J\u{10ffff}".to_string(), "2".to_string())].into(),
        }),
        ..Default::default()
    };
    assert_eq!(judge::set_policy(r), Outcome::Refused);
}
