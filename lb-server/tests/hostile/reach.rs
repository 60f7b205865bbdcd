//! "Nothing refused reaches the store", shown on the daemon itself: the
//! api handlers (`RegistryApi`, `AdminApi`, called as the generated
//! servers call them) over the real engine (`engine::start`), whose store
//! is [`Memory`]: an in-memory [`Store`] that records every write it is
//! asked to commit and checks each record it is handed is valid.
//!
//! A case is a short sequence of requests (names drawn from a small pool
//! part of the time, so requests meet each other's services, instances
//! and rules and the engine refuses some too). For each request:
//!
//! - a request whose conversion refuses it ([`crate::judge`]) is refused by
//!   its handler with `invalid_argument`;
//! - any refusal (the handler's or the engine's, whatever the code) leaves
//!   the store without a write and the engine's views as they were;
//! - every record the store receives passes the domain's checks.
//!
//! The runtime's clock is paused (tokio's test clock), so no lease expires
//! and no sweep runs: every write during a request is the request's own.
//! After each request a barrier (a command that writes nothing) goes
//! through the engine, which runs commands in order, so whatever a request
//! made the engine do has been committed before the store is looked at.
//!
//! Covered: every unary RPC, and the first message of `ReportLoad` (the
//! registration; the stream's later messages are loads, which are never
//! stored). `Subscribe` and `BalanceLoad` write nothing: subscriptions live
//! in the hub only.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use lb_core::model::{is_link_local, InstanceKey};
use lb_core::policy::ServicePolicy;
use lb_core::routing;
use lb_proto::v1 as pb;
use lb_proto::v1::admin_server::Admin;
use lb_proto::v1::registry_server::Registry;
use lb_server::api::{AdminApi, RegistryApi};
use lb_server::auth::Auth;
use lb_server::engine::cmd::Deregister;
use lb_server::engine::EngineHandle;
use lb_server::store::{
    BoxFuture, EventStream, Expect, Key, Loaded, Record, Revision, Store, StoreError, Write,
};
use lb_server::Config;
use proptest::prelude::*;
use proptest::sample::select;
use tokio::sync::watch;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Status};

use crate::gen::{self, Maps};
use crate::judge::{self, Outcome};
use crate::wire::{self, Tally};

// ------------------------------------------------------------- the store

#[derive(Default)]
struct Contents {
    revision: Revision,
    generation: u64,
    records: BTreeMap<Key, (Record, Revision)>,
    /// Every write committed, in order.
    writes: u64,
}

/// An in-memory store that records what it is asked to write.
#[derive(Default)]
pub struct Memory(Mutex<Contents>);

impl Memory {
    /// Writes committed so far, and the records held.
    fn state(&self) -> (u64, String) {
        let c = self.0.lock().expect("the store's lock");
        (c.writes, format!("{:?}", c.records))
    }
}

/// Panics unless `r` is a record the domain would have accepted.
#[track_caller]
fn valid(r: &Record) {
    match r {
        Record::Instance { spec, .. } => {
            assert_eq!(spec.check(), Ok(()), "an invalid instance stored: {spec:?}");
            assert!(
                !is_link_local(&spec.address),
                "a link-local address stored: {spec:?}"
            );
        }
        Record::Token(t) => {
            assert_eq!(lb_core::access::check_name(&t.name, "name"), Ok(()));
            assert!(
                t.hash.len() == 32 || t.identity.is_some(),
                "a token stored without its digest: {}",
                t.name
            );
        }
        Record::Policy { service, policy } => {
            assert_eq!(lb_core::model::check_service(service), Ok(()));
            let again = ServicePolicy::parse(policy.kind.name(), &policy.params(), policy);
            assert_eq!(again.as_ref(), Ok(&**policy), "an invalid policy stored");
        }
        Record::Override { key, over } => {
            assert_eq!(lb_core::model::check_service(&key.service), Ok(()));
            assert_eq!(lb_core::model::check_id(&key.instance_id), Ok(()));
            if let Some(w) = over.weight {
                assert_eq!(lb_core::model::check_weight(w), Ok(()));
            }
        }
        Record::Routing {
            service,
            rules,
            cluster,
        } => {
            assert_eq!(lb_core::model::check_service(service), Ok(()));
            assert_eq!(routing::check(rules), Ok(()), "invalid rules stored");
            let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
            assert_eq!(cluster.check(&names), Ok(()), "an invalid cluster stored");
        }
    }
}

impl Store for Memory {
    fn load(&self) -> BoxFuture<'_, Result<Loaded, StoreError>> {
        let c = self.0.lock().expect("the store's lock");
        let loaded = Loaded {
            revision: c.revision,
            records: c.records.values().cloned().collect(),
        };
        Box::pin(std::future::ready(Ok(loaded)))
    }

    fn next_generation(&self) -> BoxFuture<'_, Result<u64, StoreError>> {
        let mut c = self.0.lock().expect("the store's lock");
        c.generation += 1;
        Box::pin(std::future::ready(Ok(c.generation)))
    }

    fn commit(&self, writes: Vec<Write>) -> BoxFuture<'_, Result<Revision, StoreError>> {
        let mut c = self.0.lock().expect("the store's lock");
        let result = (|| {
            if writes.is_empty() {
                return Ok(c.revision);
            }
            for w in &writes {
                let found = c.records.get(&w.key).map(|(_, r)| *r);
                let holds = match w.expect {
                    Expect::Any => true,
                    Expect::Absent => found.is_none(),
                    Expect::Revision(r) => found == Some(r),
                };
                if !holds {
                    return Err(StoreError::Conflict {
                        key: w.key.clone(),
                        expected: w.expect,
                        found,
                    });
                }
            }
            c.revision += 1;
            let revision = c.revision;
            for w in writes {
                c.writes += 1;
                match w.value {
                    Some(record) => {
                        valid(&record);
                        assert_eq!(record.key(), w.key, "a record under another key");
                        c.records.insert(w.key, (record, revision));
                    }
                    None => {
                        c.records.remove(&w.key);
                    }
                }
            }
            Ok(revision)
        })();
        Box::pin(std::future::ready(result))
    }

    fn watch(&self, _after: Revision) -> Result<EventStream, StoreError> {
        Ok(Box::pin(tokio_stream::empty()))
    }

    fn recover(&self) -> BoxFuture<'_, Result<(), StoreError>> {
        Box::pin(std::future::ready(Ok(())))
    }

    fn identity(&self) -> String {
        "memory".into()
    }
}

// ------------------------------------------------------------ the daemon

/// The daemon's handlers over its engine and a [`Memory`] store, in a
/// runtime of their own with a paused clock.
pub struct Daemon {
    rt: tokio::runtime::Runtime,
    store: Arc<Memory>,
    engine: EngineHandle,
    registry: RegistryApi,
    admin: AdminApi,
    _stop: watch::Sender<bool>,
}

/// A key no request names: the barrier's (`Deregister` of an instance that
/// is not there writes nothing).
fn barrier_key() -> InstanceKey {
    InstanceKey {
        service: "barrier".into(),
        instance_id: "none".into(),
    }
}

impl Daemon {
    /// A fresh daemon with the default configuration (link-local refused).
    pub fn start() -> Daemon {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(true)
            .build()
            .expect("a runtime");
        let store = Arc::new(Memory::default());
        let config = Config::new("/nonexistent/lb-hostile");
        let auth = Arc::new(Auth::open(Default::default()));
        let (engine, _task) = rt
            .block_on(lb_server::engine::start(
                store.clone(),
                config.clone(),
                Arc::clone(&auth),
            ))
            .expect("the engine starts over an empty store");
        let (stop, stop_rx) = watch::channel(false);
        let registry = RegistryApi::new(engine.clone(), config.clone(), stop_rx);
        let admin = AdminApi::new(engine.clone(), config, auth);
        Daemon {
            rt,
            store,
            engine,
            registry,
            admin,
            _stop: stop,
        }
    }

    /// Store writes, stored records and the engine's views: what a refused
    /// request must leave as it was.
    fn state(&self) -> (u64, String, String) {
        let (writes, records) = self.store.state();
        (writes, records, format!("{:?}", self.engine.views(None)))
    }

    /// Runs `call` through its handler; `Ok` if the handler accepted it.
    fn handle(&self, call: Call) -> Result<(), Status> {
        let (r, a) = (&self.registry, &self.admin);
        self.rt.block_on(async {
            let r = match call {
                Call::Register(m) => r.register(Request::new(m)).await.map(drop),
                Call::Deregister(m) => r.deregister(Request::new(m)).await.map(drop),
                Call::ReportLoad(m) => {
                    let body = wire::frame(&prost::Message::encode_to_vec(&m));
                    let inbound = wire::stream(vec![body.into()]);
                    match r.report_load(Request::new(inbound)).await {
                        // The session ends with the request stream (one
                        // message): read its responses to the end.
                        Ok(resp) => {
                            let mut out = resp.into_inner();
                            while out.next().await.is_some() {}
                            Ok(())
                        }
                        Err(s) => Err(s),
                    }
                }
                Call::ListServices(m) => a.list_services(Request::new(m)).await.map(drop),
                Call::GetService(m) => a.get_service(Request::new(m)).await.map(drop),
                Call::SetPolicy(m) => a.set_policy(Request::new(m)).await.map(drop),
                Call::SetWeight(m) => a.set_weight(Request::new(m)).await.map(drop),
                Call::SetDrain(m) => a.set_drain(Request::new(m)).await.map(drop),
                Call::PutRule(m) => a.put_rule(Request::new(m)).await.map(drop),
                Call::DeleteRule(m) => a.delete_rule(Request::new(m)).await.map(drop),
                Call::SetCluster(m) => a.set_cluster(Request::new(m)).await.map(drop),
                Call::PutStatic(m) => a.put_static(Request::new(m)).await.map(drop),
                Call::RemoveStatic(m) => a.remove_static(Request::new(m)).await.map(drop),
                Call::DeleteService(m) => a.delete_service(Request::new(m)).await.map(drop),
                Call::CreateToken(m) => a.create_token(Request::new(m)).await.map(drop),
                Call::ListTokens(m) => a.list_tokens(Request::new(m)).await.map(drop),
                Call::RevokeToken(m) => a.revoke_token(Request::new(m)).await.map(drop),
            };
            let barrier = self
                .engine
                .run(Deregister {
                    key: barrier_key(),
                    owner: None,
                })
                .await;
            assert!(matches!(barrier, Ok(false)), "the barrier: {barrier:?}");
            r
        })
    }

    /// Runs one request and checks the contract (see the module docs).
    pub fn check(&self, call: Call) -> Tally {
        let verdict = call.judge();
        let before = self.state();
        let shown = format!("{call:?}");
        let result = self.handle(call);
        if let Err(status) = &result {
            let after = self.state();
            assert!(
                before == after,
                "refused with {status:?}, yet the store or the engine changed:\n\
                 request: {shown}\nwrites {} -> {}\nrecords before: {}\nrecords after: {}",
                before.0,
                after.0,
                before.1,
                after.1,
            );
        }
        let mut t = Tally::default();
        match (verdict, &result) {
            // A quota (retry_on) is counted on the request as sent, before
            // the conversion: `resource_exhausted` naming the quota.
            (Outcome::Refused, Err(s))
                if s.code() == Code::ResourceExhausted && s.message().starts_with("quota ") =>
            {
                t.refused += 1;
            }
            (Outcome::Refused, Err(s)) => {
                assert_eq!(s.code(), Code::InvalidArgument, "{shown}: {s:?}");
                t.refused += 1;
            }
            (Outcome::OutOfOrder, Err(s)) => {
                assert_eq!(s.code(), Code::FailedPrecondition, "{shown}: {s:?}");
                t.out_of_order += 1;
            }
            (Outcome::Refused | Outcome::OutOfOrder, Ok(())) => {
                panic!("the conversion refuses it, the handler took it: {shown}")
            }
            (Outcome::Accepted, Ok(())) => t.accepted += 1,
            // Accepted by the conversion, refused by the engine (a conflict
            // with the state: a duplicate rule name, a missing instance, a
            // registration that is not static): checked above as a refusal.
            (Outcome::Accepted, Err(_)) => t.conflict += 1,
        }
        t
    }
}

// ------------------------------------------------------------- requests

/// One request to a handler that may write.
#[derive(Debug, Clone)]
pub enum Call {
    Register(pb::RegisterRequest),
    Deregister(pb::DeregisterRequest),
    /// The first message of a `ReportLoad` stream.
    ReportLoad(pb::ReportLoadRequest),
    ListServices(pb::ListServicesRequest),
    GetService(pb::GetServiceRequest),
    SetPolicy(pb::SetPolicyRequest),
    SetWeight(pb::SetWeightRequest),
    SetDrain(pb::SetDrainRequest),
    PutRule(pb::PutRuleRequest),
    DeleteRule(pb::DeleteRuleRequest),
    SetCluster(pb::SetClusterRequest),
    PutStatic(pb::PutStaticRequest),
    RemoveStatic(pb::RemoveStaticRequest),
    DeleteService(pb::DeleteServiceRequest),
    CreateToken(pb::CreateTokenRequest),
    ListTokens(pb::ListTokensRequest),
    RevokeToken(pb::RevokeTokenRequest),
}

impl Call {
    /// The conversion's verdict ([`crate::judge`], which also checks its
    /// contract).
    fn judge(&self) -> Outcome {
        match self.clone() {
            Call::Register(m) => judge::register(m),
            Call::Deregister(m) => judge::deregister(m),
            Call::ReportLoad(m) => judge::report_load(m, true),
            Call::ListServices(m) => judge::list_services(m),
            Call::GetService(m) => judge::get_service(m),
            Call::SetPolicy(m) => judge::set_policy(m),
            Call::SetWeight(m) => judge::set_weight(m),
            Call::SetDrain(m) => judge::set_drain(m),
            Call::PutRule(m) => judge::put_rule(m),
            Call::DeleteRule(m) => judge::delete_rule(m),
            Call::SetCluster(m) => judge::set_cluster(m),
            Call::PutStatic(m) => judge::put_static(m),
            Call::RemoveStatic(m) => judge::remove_static(m),
            Call::DeleteService(m) => judge::delete_service(m),
            Call::CreateToken(m) => judge::create_token(m),
            Call::ListTokens(m) => judge::list_tokens(m),
            Call::RevokeToken(m) => judge::revoke_token(m),
        }
    }

    /// Names the service `s` (and the instance `i`, where it names one).
    fn pin(&mut self, s: &str, i: &str) {
        fn inst(x: &mut Option<pb::Instance>, s: &str, i: &str) {
            if let Some(x) = x {
                (x.service, x.instance_id) = (s.into(), i.into());
            }
        }
        use pb::report_load_request::Msg;
        match self {
            Call::Register(m) => inst(&mut m.instance, s, i),
            Call::ReportLoad(m) => {
                if let Some(Msg::Register(r)) = &mut m.msg {
                    inst(&mut r.instance, s, i);
                }
            }
            Call::PutStatic(m) => inst(&mut m.instance, s, i),
            Call::Deregister(m) => (m.service, m.instance_id) = (s.into(), i.into()),
            Call::SetWeight(m) => (m.service, m.instance_id) = (s.into(), i.into()),
            Call::SetDrain(m) => (m.service, m.instance_id) = (s.into(), i.into()),
            Call::RemoveStatic(m) => (m.service, m.instance_id) = (s.into(), i.into()),
            Call::ListServices(_)
            | Call::CreateToken(_)
            | Call::ListTokens(_)
            | Call::RevokeToken(_) => {}
            Call::GetService(m) => m.service = s.into(),
            Call::SetPolicy(m) => m.service = s.into(),
            Call::PutRule(m) => m.service = s.into(),
            Call::DeleteRule(m) => m.service = s.into(),
            Call::SetCluster(m) => m.service = s.into(),
            Call::DeleteService(m) => m.service = s.into(),
        }
    }
}

/// Rule names drawn from a small pool part of the time, so rules collide
/// and multicast routes name rules that exist.
fn pin_rule(call: &mut Call, name: &str) {
    use pb::cluster_mode::Kind;
    match call {
        Call::PutRule(m) => {
            if let Some(r) = &mut m.rule {
                r.name = name.into();
            }
        }
        Call::DeleteRule(m) => m.name = name.into(),
        // Token names from the same pool, so revocations find tokens and
        // creations collide.
        Call::CreateToken(m) => m.name = name.into(),
        Call::RevokeToken(m) => m.name = name.into(),
        Call::SetCluster(m) => {
            if let Some(r) = m.change.as_mut().and_then(|c| c.route.as_mut()) {
                *r = name.into();
            }
            if let Some(c) = &mut m.cluster {
                for mode in c.default_mode.iter_mut().chain(c.methods.values_mut()) {
                    if mode.kind == Kind::Multicast as i32 {
                        mode.route = name.into();
                    }
                }
            }
        }
        _ => {}
    }
}

/// Any request to a handler that may write.
pub fn call() -> BoxedStrategy<Call> {
    let m = Maps::Many;
    let any = prop_oneof![
        3 => gen::register(m).prop_map(Call::Register),
        2 => gen::deregister().prop_map(Call::Deregister),
        3 => gen::report_load(m).prop_map(Call::ReportLoad),
        1 => gen::list_services().prop_map(Call::ListServices),
        1 => gen::get_service().prop_map(Call::GetService),
        2 => gen::set_policy(m).prop_map(Call::SetPolicy),
        2 => gen::set_weight().prop_map(Call::SetWeight),
        2 => gen::set_drain().prop_map(Call::SetDrain),
        3 => gen::put_rule(m).prop_map(Call::PutRule),
        2 => gen::delete_rule().prop_map(Call::DeleteRule),
        3 => gen::set_cluster(m).prop_map(Call::SetCluster),
        3 => gen::put_static(m).prop_map(Call::PutStatic),
        2 => gen::remove_static().prop_map(Call::RemoveStatic),
        1 => gen::delete_service().prop_map(Call::DeleteService),
        2 => gen::create_token().prop_map(Call::CreateToken),
        1 => gen::list_tokens().prop_map(Call::ListTokens),
        1 => gen::revoke_token().prop_map(Call::RevokeToken),
    ];
    let pool = proptest::option::weighted(
        0.6,
        (
            select(vec!["svc.a", "svc.b"]),
            select(vec!["i-1", "i-2"]),
            select(vec!["r1", "r2"]),
        ),
    );
    (any, pool)
        .prop_map(|(mut c, pool)| {
            if let Some((s, i, r)) = pool {
                c.pin(s, i);
                pin_rule(&mut c, r);
            }
            c
        })
        .boxed()
}

/// Runs a case (a sequence of requests) on a fresh daemon (cheap: a
/// runtime and an engine over an empty store), so that a failing case
/// replays, and shrinks, the same way every time.
pub fn run(calls: Vec<Call>) -> Tally {
    let d = Daemon::start();
    let mut t = Tally::default();
    for c in calls {
        t.add(d.check(c));
    }
    t
}
