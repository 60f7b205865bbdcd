//! The storage format, layout version 2: how a [`Record`] becomes bytes and
//! back. Its own protobuf messages (defined here, not the wire API's), so
//! fields can be added compatibly and the API can change without touching
//! what is on disk. Enumerations are stored by name.
//!
//! Keys: a kind byte, then the service, then (for per-instance records) a
//! NUL and the instance id (names are printable ASCII, so NUL cannot occur
//! inside them): `i` registrations, `p` policies, `o` overrides, `r` routing,
//! `t` tokens (by id).
//! Values: a [`StoredRecord`], the revision that wrote it and the body.
//!
//! Everything read back is validated as if it came off the network (a store
//! written by a broken or newer build must not be served as is): a record
//! that does not decode or validate is an error here, which the store turns
//! into a warning and a skipped record.

use std::collections::BTreeMap;
use std::time::Duration;

use lb_core::cluster::{Broadcast, Budget, ClusterConfig, Collect, Failover, Kind, Mode};
use lb_core::model::{check_weight, FieldError, InstanceKey, InstanceSpec};
use lb_core::policy::ServicePolicy;
use lb_core::registry::Override;
use lb_core::routing::{self, Match, Rule, Target};
use lb_core::status::Code;
use prost::Message;

use super::{Key, Lifetime, Record, Revision};

/// The layout version this module writes and reads.
pub const LAYOUT: u32 = 2;

/// A stored value: the revision that wrote it and what it holds.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRecord {
    /// The commit that wrote it.
    #[prost(uint64, tag = "1")]
    pub revision: u64,
    /// The record.
    #[prost(oneof = "Body", tags = "2, 3, 4, 5, 6")]
    pub body: Option<Body>,
}

/// The kinds of record.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// A registration.
    #[prost(message, tag = "2")]
    Instance(StoredInstance),
    /// A policy.
    #[prost(message, tag = "3")]
    Policy(StoredPolicy),
    /// An override.
    #[prost(message, tag = "4")]
    Override(StoredOverride),
    /// Routing rules and cluster modes.
    #[prost(message, tag = "5")]
    Routing(StoredRouting),
    /// An access token.
    #[prost(message, tag = "6")]
    Token(StoredToken),
}

/// An access token: its digest and grant, never its secret.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredToken {
    #[prost(string, tag = "1")]
    pub id: String,
    #[prost(string, tag = "2")]
    pub name: String,
    /// The role's name (`lb_core::access::Role::name`).
    #[prost(string, tag = "3")]
    pub role: String,
    #[prost(string, repeated, tag = "4")]
    pub services: Vec<String>,
    /// SHA-256 of the secret; empty for a certificate binding.
    #[prost(bytes = "vec", tag = "5")]
    pub hash: Vec<u8>,
    #[prost(string, tag = "6")]
    pub identity: String,
    #[prost(uint64, tag = "7")]
    pub created_ms: u64,
}

/// A registration (the same message as layout 1's).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredInstance {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(string, tag = "2")]
    pub instance_id: String,
    #[prost(string, tag = "3")]
    pub address: String,
    #[prost(string, tag = "4")]
    pub zone: String,
    #[prost(uint32, tag = "5")]
    pub weight: u32,
    #[prost(btree_map = "string, string", tag = "6")]
    pub labels: BTreeMap<String, String>,
    #[prost(string, tag = "7")]
    pub version: String,
    #[prost(uint64, tag = "8")]
    pub ttl_ms: u64,
    #[prost(string, tag = "9")]
    pub token: String,
    /// Added by an operator: restored as static, never expires.
    #[prost(bool, tag = "10")]
    pub is_static: bool,
    /// Kept alive by a unary lease rather than a stream (layout 2; layout 1
    /// records, which lack it, read as streams).
    #[prost(bool, tag = "11")]
    pub lease: bool,
    /// The token that registered it (layout 2, later builds; empty: none).
    #[prost(string, tag = "12")]
    pub owner: String,
}

/// A policy: its name and every parameter as text (layout 1's message).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredPolicy {
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub params: BTreeMap<String, String>,
    /// The service (layout 2; layout 1 had it in the key only).
    #[prost(string, tag = "3")]
    pub service: String,
}

/// An override (layout 1's message, and the instance it belongs to).
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredOverride {
    /// 0 = no weight override.
    #[prost(uint32, tag = "1")]
    pub weight: u32,
    #[prost(bool, tag = "2")]
    pub drained: bool,
    #[prost(string, tag = "3")]
    pub service: String,
    #[prost(string, tag = "4")]
    pub instance_id: String,
}

/// A service's routing rules and cluster modes.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRouting {
    #[prost(string, tag = "1")]
    pub service: String,
    #[prost(message, repeated, tag = "2")]
    pub rules: Vec<StoredRule>,
    #[prost(message, optional, tag = "3")]
    pub cluster: Option<StoredCluster>,
}

/// A routing rule.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredRule {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(btree_map = "string, string", tag = "2")]
    pub when_request: BTreeMap<String, String>,
    #[prost(btree_map = "string, string", tag = "3")]
    pub when_client: BTreeMap<String, String>,
    #[prost(string, tag = "4")]
    pub when_client_id: String,
    /// Selector labels (exactly one of `select` and `instance` is set).
    #[prost(btree_map = "string, string", tag = "5")]
    pub select: BTreeMap<String, String>,
    #[prost(string, tag = "6")]
    pub instance: String,
    #[prost(bool, tag = "7")]
    pub exclusive: bool,
    #[prost(bool, tag = "8")]
    pub strict: bool,
}

/// Cluster modes and the retry budget.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredCluster {
    #[prost(message, optional, tag = "1")]
    pub default_mode: Option<StoredMode>,
    #[prost(btree_map = "string, message", tag = "2")]
    pub methods: BTreeMap<String, StoredMode>,
    #[prost(uint32, tag = "3")]
    pub budget_percent: u32,
    #[prost(uint32, tag = "4")]
    pub budget_min_per_sec: u32,
    /// The default deadline per call, ms (0: none; absent in records
    /// written before it existed).
    #[prost(uint64, tag = "5")]
    pub deadline_ms: u64,
}

/// One cluster mode; fields that do not belong to `kind` are zero.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StoredMode {
    /// The mode's name (`failover`, `forking`, ...).
    #[prost(string, tag = "1")]
    pub kind: String,
    #[prost(uint32, tag = "2")]
    pub attempts: u32,
    #[prost(uint64, tag = "3")]
    pub backoff_ms: u64,
    #[prost(uint64, tag = "4")]
    pub backoff_max_ms: u64,
    /// Status names.
    #[prost(string, repeated, tag = "5")]
    pub retry_on: Vec<String>,
    #[prost(uint32, tag = "6")]
    pub forks: u32,
    /// `first`, `all` or `none`.
    #[prost(string, tag = "7")]
    pub collect: String,
    #[prost(uint32, tag = "8")]
    pub max_failure_percent: u32,
    #[prost(string, tag = "9")]
    pub route: String,
}

/// The key byte of the store's own bookkeeping (the revision counter).
pub const META: u8 = b'#';
/// Where the revision counter lives, among the records.
pub const REVISION_KEY: &[u8] = b"#revision";

fn pair_key(kind: u8, k: &InstanceKey) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + k.service.len() + k.instance_id.len());
    out.push(kind);
    out.extend_from_slice(k.service.as_bytes());
    out.push(0);
    out.extend_from_slice(k.instance_id.as_bytes());
    out
}

fn service_key(kind: u8, service: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + service.len());
    out.push(kind);
    out.extend_from_slice(service.as_bytes());
    out
}

/// A key's bytes.
pub fn encode_key(key: &Key) -> Vec<u8> {
    match key {
        Key::Instance(k) => pair_key(b'i', k),
        Key::Policy(s) => service_key(b'p', s),
        Key::Override(k) => pair_key(b'o', k),
        Key::Routing(s) => service_key(b'r', s),
        Key::Token(id) => service_key(b't', id),
    }
}

/// The key stored as `bytes` ([`encode_key`]'s inverse), or `None` for bytes
/// no record is stored under. What a store reports deleted has no value to
/// read the key from.
pub fn decode_key(bytes: &[u8]) -> Option<Key> {
    let (&kind, rest) = bytes.split_first()?;
    let text = std::str::from_utf8(rest).ok()?;
    let pair = || {
        let (service, instance_id) = text.split_once('\0')?;
        Some(InstanceKey {
            service: service.to_string(),
            instance_id: instance_id.to_string(),
        })
    };
    match kind {
        b'i' => pair().map(Key::Instance),
        b'o' => pair().map(Key::Override),
        b'p' if !text.contains('\0') => Some(Key::Policy(text.to_string())),
        b'r' if !text.contains('\0') => Some(Key::Routing(text.to_string())),
        b't' if !text.contains('\0') => Some(Key::Token(text.to_string())),
        _ => None,
    }
}

/// A record's bytes, as written by the commit at `revision`.
pub fn encode(record: &Record, revision: Revision) -> Vec<u8> {
    let body = match record {
        Record::Instance {
            spec,
            lifetime,
            owner,
        } => Body::Instance(StoredInstance {
            service: spec.service.clone(),
            instance_id: spec.instance_id.clone(),
            address: spec.address.clone(),
            zone: spec.zone.clone(),
            weight: spec.weight,
            labels: spec.labels.clone(),
            version: spec.version.clone(),
            ttl_ms: match lifetime {
                Lifetime::Stream(t) | Lifetime::Lease(t) => {
                    u64::try_from(t.as_millis()).unwrap_or(u64::MAX)
                }
                Lifetime::Static => 0,
            },
            token: spec.token.clone(),
            is_static: *lifetime == Lifetime::Static,
            lease: matches!(lifetime, Lifetime::Lease(_)),
            owner: owner.clone().unwrap_or_default(),
        }),
        Record::Policy { service, policy } => Body::Policy(StoredPolicy {
            kind: policy.kind.name().to_string(),
            params: policy.params(),
            service: service.clone(),
        }),
        Record::Override { key, over } => Body::Override(StoredOverride {
            weight: over.weight.unwrap_or(0),
            drained: over.drained,
            service: key.service.clone(),
            instance_id: key.instance_id.clone(),
        }),
        Record::Routing {
            service,
            rules,
            cluster,
        } => Body::Routing(StoredRouting {
            service: service.clone(),
            rules: rules.iter().map(stored_rule).collect(),
            cluster: Some(stored_cluster(cluster)),
        }),
        Record::Token(t) => Body::Token(StoredToken {
            id: t.id.clone(),
            name: t.name.clone(),
            role: t.grant.role.name().to_string(),
            services: t.grant.services.iter().map(|p| p.to_string()).collect(),
            hash: t.hash.clone(),
            identity: t.identity.clone().unwrap_or_default(),
            created_ms: t.created_ms,
        }),
    };
    StoredRecord {
        revision,
        body: Some(body),
    }
    .encode_to_vec()
}

/// Why stored bytes were not accepted.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not a record of this layout.
    #[error("undecodable: {0}")]
    Bytes(#[from] prost::DecodeError),
    /// A record with no body.
    #[error("empty record")]
    Empty,
    /// The body is not what its key says.
    #[error("stored under the key of another record ({0:?})")]
    WrongKey(Key),
    /// The record decodes but does not validate.
    #[error("invalid: {0}")]
    Invalid(#[from] FieldError),
}

/// The revision that wrote a stored value, without validating the rest.
pub fn revision(value: &[u8]) -> Option<Revision> {
    StoredRecord::decode(value).ok().map(|r| r.revision)
}

/// A record and the revision that wrote it, from its bytes, checked against
/// the key it was stored under.
pub fn decode(key: &[u8], value: &[u8]) -> Result<(Record, Revision), DecodeError> {
    let stored = StoredRecord::decode(value)?;
    let record = match stored.body.ok_or(DecodeError::Empty)? {
        Body::Instance(i) => instance(i)?,
        Body::Policy(p) => policy(p)?,
        Body::Override(o) => Record::Override {
            key: InstanceKey {
                service: o.service,
                instance_id: o.instance_id,
            },
            over: over(o.weight, o.drained)?,
        },
        Body::Routing(r) => routing_record(r)?,
        Body::Token(t) => token(t)?,
    };
    let expected = record.key();
    if encode_key(&expected) != key {
        return Err(DecodeError::WrongKey(expected));
    }
    Ok((record, stored.revision))
}

/// A stored registration, validated (layouts 1 and 2).
pub fn instance(rec: StoredInstance) -> Result<Record, FieldError> {
    let spec = InstanceSpec {
        service: rec.service,
        instance_id: rec.instance_id,
        address: rec.address,
        zone: rec.zone,
        weight: rec.weight,
        labels: rec.labels,
        version: rec.version,
        token: rec.token,
    };
    spec.check()?;
    let ttl = Duration::from_millis(rec.ttl_ms);
    let lifetime = match (rec.is_static, rec.lease) {
        (true, _) => Lifetime::Static,
        (false, true) => Lifetime::Lease(ttl),
        (false, false) => Lifetime::Stream(ttl),
    };
    Ok(Record::Instance {
        spec: spec.with_token(),
        lifetime,
        owner: (!rec.owner.is_empty()).then_some(rec.owner),
    })
}

/// A stored token, validated.
pub fn token(rec: StoredToken) -> Result<Record, FieldError> {
    use lb_core::access::{check_name, Grant};
    check_name(&rec.name, "name")?;
    let grant = Grant::parse(&rec.role, &rec.services)?;
    let identity = (!rec.identity.is_empty()).then_some(rec.identity);
    if identity.is_none() && rec.hash.len() != 32 {
        return Err(FieldError::new(
            "hash",
            "a token needs a SHA-256 digest or an identity",
        ));
    }
    if rec.id.is_empty() || rec.id.len() > crate::auth::token::MAX_ID_LEN {
        return Err(FieldError::new("id", "missing or too long"));
    }
    Ok(Record::Token(crate::auth::TokenRecord {
        id: rec.id,
        name: rec.name,
        grant,
        hash: rec.hash,
        identity,
        created_ms: rec.created_ms,
    }))
}

/// A stored policy, re-validated (layouts 1 and 2). The stored parameters
/// include `max_list_len`, so no daemon setting is needed to read it.
pub fn policy(rec: StoredPolicy) -> Result<Record, FieldError> {
    lb_core::model::check_service(&rec.service).map_err(|e| FieldError::new("service", e))?;
    let policy = ServicePolicy::parse(&rec.kind, &rec.params, &ServicePolicy::default())?;
    Ok(Record::Policy {
        service: rec.service,
        policy: Box::new(policy),
    })
}

/// A stored override, validated (layouts 1 and 2).
pub fn over(weight: u32, drained: bool) -> Result<Override, FieldError> {
    if weight != 0 {
        check_weight(weight).map_err(|e| FieldError::new("weight", e))?;
    }
    Ok(Override {
        weight: (weight > 0).then_some(weight),
        drained,
    })
}

fn stored_rule(r: &Rule) -> StoredRule {
    let (select, instance) = match &r.target {
        Target::Selector(s) => (s.clone(), String::new()),
        Target::Instance(i) => (BTreeMap::new(), i.clone()),
    };
    StoredRule {
        name: r.name.clone(),
        when_request: r.when.request.clone(),
        when_client: r.when.client.clone(),
        when_client_id: r.when.client_id.clone(),
        select,
        instance,
        exclusive: r.exclusive,
        strict: r.strict,
    }
}

fn rule(r: StoredRule) -> Result<Rule, FieldError> {
    let target = match (r.select.is_empty(), r.instance.is_empty()) {
        (false, true) => Target::Selector(r.select),
        (true, false) => Target::Instance(r.instance),
        _ => {
            return Err(FieldError::new(
                "select",
                "exactly one of select and instance must be set",
            ))
        }
    };
    Ok(Rule {
        name: r.name,
        when: Match {
            request: r.when_request,
            client: r.when_client,
            client_id: r.when_client_id,
        },
        target,
        exclusive: r.exclusive,
        strict: r.strict,
    })
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn stored_mode(m: &Mode) -> StoredMode {
    let mut s = StoredMode {
        kind: m.kind().name().to_string(),
        ..StoredMode::default()
    };
    let fan_out = |s: &mut StoredMode, b: &Broadcast| {
        s.collect = b.collect.name().to_string();
        s.max_failure_percent = b.max_failure_percent;
    };
    match m {
        Mode::Failover(f) => {
            s.attempts = f.attempts;
            s.backoff_ms = ms(f.backoff);
            s.backoff_max_ms = ms(f.backoff_max);
            s.retry_on = f.retry_on.iter().map(|c| c.name().to_string()).collect();
        }
        Mode::Failfast | Mode::Failsafe => {}
        Mode::Forking { forks } => s.forks = *forks,
        Mode::Broadcast(b) => fan_out(&mut s, b),
        Mode::Multicast { route, broadcast } => {
            fan_out(&mut s, broadcast);
            s.route = route.clone();
        }
    }
    s
}

fn mode(s: StoredMode) -> Result<Mode, FieldError> {
    let kind =
        Kind::parse(&s.kind).ok_or_else(|| FieldError::new("kind", format!("{:?}", s.kind)))?;
    let broadcast = || -> Result<Broadcast, FieldError> {
        Ok(Broadcast {
            collect: Collect::parse(&s.collect)
                .ok_or_else(|| FieldError::new("collect", format!("{:?}", s.collect)))?,
            max_failure_percent: s.max_failure_percent,
        })
    };
    Ok(match kind {
        Kind::Failover => Mode::Failover(Failover {
            attempts: s.attempts,
            backoff: Duration::from_millis(s.backoff_ms),
            backoff_max: Duration::from_millis(s.backoff_max_ms),
            retry_on: s
                .retry_on
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    Code::error_named(n)
                        .ok_or_else(|| FieldError::new(format!("retry_on[{i}]"), n.clone()))
                })
                .collect::<Result<_, _>>()?,
        }),
        Kind::Failfast => Mode::Failfast,
        Kind::Failsafe => Mode::Failsafe,
        Kind::Forking => Mode::Forking { forks: s.forks },
        Kind::Broadcast => Mode::Broadcast(broadcast()?),
        Kind::Multicast => Mode::Multicast {
            route: s.route.clone(),
            broadcast: broadcast()?,
        },
    })
}

fn stored_cluster(c: &ClusterConfig) -> StoredCluster {
    StoredCluster {
        default_mode: Some(stored_mode(&c.default)),
        methods: c
            .methods
            .iter()
            .map(|(k, m)| (k.clone(), stored_mode(m)))
            .collect(),
        budget_percent: c.budget.percent,
        budget_min_per_sec: c.budget.min_per_sec,
        deadline_ms: c
            .deadline
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
    }
}

fn routing_record(r: StoredRouting) -> Result<Record, FieldError> {
    lb_core::model::check_service(&r.service).map_err(|e| FieldError::new("service", e))?;
    let rules = r
        .rules
        .into_iter()
        .map(rule)
        .collect::<Result<Vec<_>, _>>()?;
    let c = r
        .cluster
        .ok_or_else(|| FieldError::new("cluster", "missing"))?;
    let cluster = ClusterConfig {
        default: mode(c.default_mode.unwrap_or_default()).map_err(|e| e.within("default_mode"))?,
        methods: c
            .methods
            .into_iter()
            .map(|(k, m)| {
                let field = format!("methods[{k:?}]");
                Ok((k, mode(m).map_err(|e| e.within(&field))?))
            })
            .collect::<Result<_, FieldError>>()?,
        budget: Budget {
            percent: c.budget_percent,
            min_per_sec: c.budget_min_per_sec,
        },
        deadline: (c.deadline_ms > 0).then(|| Duration::from_millis(c.deadline_ms)),
    };
    routing(r.service, rules, cluster)
}

/// A service's routing settings, checked as a whole (layouts 1 and 2).
pub fn routing(
    service: String,
    rules: Vec<Rule>,
    cluster: ClusterConfig,
) -> Result<Record, FieldError> {
    routing::check(&rules)?;
    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
    cluster.check(&names).map_err(|e| e.within("cluster"))?;
    Ok(Record::Routing {
        service,
        rules,
        cluster,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip(r: Record) {
        let bytes = encode(&r, 7);
        let key = encode_key(&r.key());
        assert_eq!(decode_key(&key), Some(r.key()), "the key reads back");
        let (back, rev) = decode(&key, &bytes).expect("decodes");
        assert_eq!((back, rev), (r, 7));
    }

    #[test]
    fn bytes_that_are_no_key_read_as_none() {
        for bad in [&b""[..], b"i", b"isvc", b"x\0y", b"psvc\0a", b"t\xff"] {
            assert_eq!(decode_key(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_kind_of_record_round_trips() {
        let spec = InstanceSpec {
            service: "svc".into(),
            instance_id: "a".into(),
            address: "127.0.0.1:9".into(),
            zone: "z1".into(),
            weight: 7,
            labels: BTreeMap::from([("group".into(), "B".into())]),
            version: "1.2".into(),
            token: "tok".into(),
        };
        for lifetime in [
            Lifetime::Stream(Duration::from_secs(3)),
            Lifetime::Lease(Duration::from_secs(3600)),
            Lifetime::Static,
        ] {
            round_trip(Record::Instance {
                spec: spec.clone(),
                lifetime,
                owner: None,
            });
            round_trip(Record::Instance {
                spec: spec.clone(),
                lifetime,
                owner: Some("shop-deploy".into()),
            });
        }
        let (_, t) = crate::auth::token::mint(
            "shop-deploy",
            lb_core::access::Grant::new(
                lb_core::access::Role::Backend,
                vec![lb_core::access::Pattern::parse("shop-*", "s").unwrap()],
            )
            .unwrap(),
            1_700_000_000_000,
        )
        .unwrap();
        round_trip(Record::Token(t.clone()));
        round_trip(Record::Token(crate::auth::TokenRecord {
            id: "cert:py".into(),
            hash: Vec::new(),
            identity: Some("spiffe://example.org/py".into()),
            ..t
        }));
        round_trip(Record::Policy {
            service: "svc".into(),
            policy: Box::default(),
        });
        round_trip(Record::Override {
            key: spec.key(),
            over: Override {
                weight: Some(9),
                drained: true,
            },
        });
        let rules = vec![
            Rule {
                name: "ab".into(),
                when: Match {
                    request: BTreeMap::from([("group".into(), "B".into())]),
                    ..Match::default()
                },
                target: Target::Selector(BTreeMap::from([("group".into(), "B".into())])),
                exclusive: true,
                strict: false,
            },
            Rule {
                name: "debug".into(),
                when: Match {
                    client_id: "alice".into(),
                    ..Match::default()
                },
                target: Target::Instance("a".into()),
                exclusive: false,
                strict: true,
            },
        ];
        let mut cluster = ClusterConfig::default();
        cluster.methods.insert(
            "/a.B/C".into(),
            Mode::Multicast {
                route: "ab".into(),
                broadcast: Broadcast {
                    collect: Collect::All,
                    max_failure_percent: 25,
                },
            },
        );
        cluster
            .methods
            .insert("/a.B/D".into(), Mode::Forking { forks: 3 });
        cluster.budget.percent = 30;
        cluster.deadline = Some(Duration::from_millis(2500));
        round_trip(Record::Routing {
            service: "svc".into(),
            rules,
            cluster,
        });
    }

    #[test]
    fn bad_records_are_refused() {
        let r = Record::Policy {
            service: "svc".into(),
            policy: Box::default(),
        };
        // Under another key.
        let bytes = encode(&r, 1);
        assert!(matches!(
            decode(&encode_key(&Key::Policy("other".into())), &bytes),
            Err(DecodeError::WrongKey(_))
        ));
        // Not a record.
        assert!(decode(b"psvc", b"\xff\xff\xff").is_err());
        // A parameter out of range.
        let mut p = StoredPolicy {
            kind: "round_robin".into(),
            params: BTreeMap::from([("hysteresis".into(), "9".into())]),
            service: "svc".into(),
        };
        assert!(policy(p.clone()).is_err());
        p.params.clear();
        assert!(policy(p).is_ok());
        // A cluster mode naming a rule that does not exist.
        let bad = StoredRouting {
            service: "svc".into(),
            rules: vec![],
            cluster: Some(StoredCluster {
                default_mode: Some(stored_mode(&Mode::Multicast {
                    route: "nope".into(),
                    broadcast: Broadcast::default(),
                })),
                ..StoredCluster::default()
            }),
        };
        assert_eq!(
            routing_record(bad).unwrap_err().field,
            "cluster.default_mode.route"
        );
        // A default deadline out of range.
        let bad = StoredRouting {
            service: "svc".into(),
            rules: vec![],
            cluster: Some(StoredCluster {
                deadline_ms: 3_600_001,
                ..stored_cluster(&ClusterConfig::default())
            }),
        };
        assert_eq!(
            routing_record(bad).unwrap_err().field,
            "cluster.deadline_ms"
        );
    }

    #[test]
    fn routing_records_written_before_the_deadline_field_load() {
        // What an older build wrote: field 5 of the cluster message absent.
        let old = StoredCluster {
            default_mode: Some(stored_mode(&Mode::Failfast)),
            budget_percent: 20,
            budget_min_per_sec: 10,
            ..StoredCluster::default()
        };
        let bytes = old.encode_to_vec();
        let back = StoredCluster::decode(bytes.as_slice()).unwrap();
        let r = routing_record(StoredRouting {
            service: "svc".into(),
            rules: vec![],
            cluster: Some(back),
        })
        .unwrap();
        match r {
            Record::Routing { cluster, .. } => {
                assert_eq!(cluster.default, Mode::Failfast);
                assert_eq!(cluster.deadline, None);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}
