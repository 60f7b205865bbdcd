//! `lb.v1` ⇄ domain: inbound messages become `lb-core` types (validated:
//! bad input becomes a [`FieldError`] naming the field by its dotted path
//! from the request root, in the wire message's field names), and plans and
//! views become messages (a plan as one client's `ServerList`).
//!
//! Each unary request has one function here that turns the whole request
//! into what its command needs (`register`, `set_policy`, `put_rule`, …);
//! the services in `api/` call it and nothing else, so the property tests
//! and fuzz targets (`lb-server/tests/hostile/`) check exactly what the
//! daemon runs.

use std::time::Duration;

use lb_core::access::{check_name, Grant};
use lb_core::cluster::{
    self, Broadcast, ClusterChange, ClusterConfig, Collect, Failover, Kind, Mode, ModeChange,
};
use lb_core::inspect::{InstanceView, ServiceView};
use lb_core::model::{
    check_id, check_service, check_weight, is_link_local, ClientIdentity, ClientStats, FieldError,
    InstanceKey, InstanceOutcomes, InstanceSpec, Load, MAX_TTL, MIN_TTL,
};
use lb_core::policy::view::client_view;
use lb_core::policy::{PolicyChange, ServicePolicy};
use lb_core::registry::Attachment;
use lb_core::replan::Published;
use lb_core::routing;
use lb_core::status::Code;
use lb_proto::v1 as pb;

/// An `Instance` message under `field`, validated.
pub fn instance(i: Option<pb::Instance>, field: &str) -> Result<InstanceSpec, FieldError> {
    let i = i.ok_or_else(|| FieldError::new(field, "missing"))?;
    let spec = InstanceSpec {
        service: i.service,
        instance_id: i.instance_id,
        address: i.address,
        zone: i.zone,
        weight: i.weight,
        labels: i.labels.into_iter().collect(),
        version: i.version,
        token: i.token,
    };
    spec.check().map_err(|e| e.within(field))?;
    Ok(spec.with_token())
}

/// A TTL in ms (0 = the daemon's default), validated.
pub fn ttl(ms: u32, field: &str) -> Result<Option<Duration>, FieldError> {
    if ms == 0 {
        return Ok(None);
    }
    let d = Duration::from_millis(u64::from(ms));
    if d < MIN_TTL || d > MAX_TTL {
        return Err(FieldError::new(
            field,
            format!(
                "{ms} ms is outside {}..={} ms",
                MIN_TTL.as_millis(),
                MAX_TTL.as_millis()
            ),
        ));
    }
    Ok(Some(d))
}

/// A `LoadReport`, validated.
pub fn load(r: pb::LoadReport, field: &str) -> Result<Load, FieldError> {
    let l = Load {
        cpu_utilization: r.cpu_utilization,
        active_requests: r.active_requests,
        qps: r.qps,
        eps: r.eps,
        mem_utilization: r.mem_utilization,
        named_metrics: r.named_metrics.into_iter().collect(),
    };
    l.check().map_err(|e| e.within(field))?;
    Ok(l)
}

/// `field` under `at` (an empty `at` is the request root).
fn path(at: &str, field: &str) -> String {
    if at.is_empty() {
        field.to_string()
    } else {
        format!("{at}.{field}")
    }
}

/// Refuses an instance whose address is link-local (cloud metadata services
/// live there) unless the daemon allows them (`--allow-link-local`). `field`
/// is the instance's path in the request.
pub fn target(spec: &InstanceSpec, allow_link_local: bool, field: &str) -> Result<(), FieldError> {
    if !allow_link_local && is_link_local(&spec.address) {
        return Err(FieldError::new(
            format!("{field}.address"),
            format!(
                "{} is link-local; start lb-server with --allow-link-local to register such addresses",
                spec.address
            ),
        ));
    }
    Ok(())
}

/// A registration whose `instance` and `ttl_ms` fields sit under `at` (""
/// for a `RegisterRequest`, `"register"` for a ReportLoad stream's first
/// message): the instance, validated, and its TTL (`None`: the daemon's
/// default).
pub fn registration(
    instance: Option<pb::Instance>,
    ttl_ms: u32,
    at: &str,
    allow_link_local: bool,
) -> Result<(InstanceSpec, Option<Duration>), FieldError> {
    let field = path(at, "instance");
    let spec = self::instance(instance, &field)?;
    target(&spec, allow_link_local, &field)?;
    let ttl = ttl(ttl_ms, &path(at, "ttl_ms"))?;
    Ok((spec, ttl))
}

/// A `RegisterRequest`: the instance and its lease (`None`: the default).
pub fn register(
    r: pb::RegisterRequest,
    allow_link_local: bool,
) -> Result<(InstanceSpec, Option<Duration>), FieldError> {
    registration(r.instance, r.ttl_ms, "", allow_link_local)
}

/// A `PutStaticRequest`: the instance, validated like a registration's.
pub fn put_static(
    r: pb::PutStaticRequest,
    allow_link_local: bool,
) -> Result<(InstanceSpec, bool), FieldError> {
    let spec = instance(r.instance, "instance")?;
    target(&spec, allow_link_local, "instance")?;
    Ok((spec, r.create))
}

/// A service name in the request's `service` field.
pub fn service(service: String) -> Result<String, FieldError> {
    check_service(&service).map_err(|e| FieldError::new("service", e))?;
    Ok(service)
}

/// An instance named by the request's `service` and `instance_id` fields
/// (`DeregisterRequest`, `SetWeightRequest`, `SetDrainRequest`,
/// `RemoveStaticRequest`).
pub fn instance_key(service: String, instance_id: String) -> Result<InstanceKey, FieldError> {
    let service = self::service(service)?;
    check_id(&instance_id).map_err(|e| FieldError::new("instance_id", e))?;
    Ok(InstanceKey {
        service,
        instance_id,
    })
}

/// A `SetPolicyRequest`: the service, the change to its policy (each
/// parameter checked on its own; the engine applies it to the policy in
/// force and checks the whole), and whether it may create the service.
pub fn set_policy(r: pb::SetPolicyRequest) -> Result<(String, PolicyChange, bool), FieldError> {
    let service = service(r.service)?;
    let p = r
        .policy
        .ok_or_else(|| FieldError::new("policy", "missing"))?;
    let params = p.params.into_iter().collect();
    let change = PolicyChange::parse(&p.name, &params, r.reset).map_err(|e| e.within("policy"))?;
    Ok((service, change, r.create))
}

/// A `DeleteServiceRequest`: the service, and whether to deregister its
/// backends' instances too.
pub fn delete_service(r: pb::DeleteServiceRequest) -> Result<(String, bool), FieldError> {
    Ok((service(r.service)?, r.force))
}

/// A `SetWeightRequest`: the instance and its weight override (`None`
/// clears it).
pub fn set_weight(r: pb::SetWeightRequest) -> Result<(InstanceKey, Option<u32>), FieldError> {
    let key = instance_key(r.service, r.instance_id)?;
    let weight = match r.weight {
        0 => None,
        w => {
            check_weight(w).map_err(|e| FieldError::new("weight", e))?;
            Some(w)
        }
    };
    Ok((key, weight))
}

/// A `PutRuleRequest`: the service, the rule (checked on its own; the
/// engine checks it against the service's other rules) and its position.
pub fn put_rule(r: pb::PutRuleRequest) -> Result<PutRule, FieldError> {
    let service = service(r.service)?;
    let rule = rule(r.rule, "rule")?;
    let position = match r.position {
        Some(p) if p as usize >= routing::MAX_RULES => {
            return Err(FieldError::new(
                "position",
                format!("{p} is outside 0..{}", routing::MAX_RULES),
            ))
        }
        p => p.map(|p| p as usize),
    };
    Ok(PutRule {
        service,
        rule,
        position,
        create: r.create,
    })
}

/// A `PutRuleRequest`, converted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PutRule {
    /// The service.
    pub service: String,
    /// The rule (checked on its own).
    pub rule: routing::Rule,
    /// Where to put it (0 = first).
    pub position: Option<usize>,
    /// It may create the service.
    pub create: bool,
}

/// A `DeleteRuleRequest`: the service and the name of the rule.
pub fn delete_rule(r: pb::DeleteRuleRequest) -> Result<(String, String), FieldError> {
    let service = service(r.service)?;
    routing::check_rule_name(&r.name).map_err(|e| FieldError::new("name", e))?;
    Ok((service, r.name))
}

/// Longest certificate identity a token may bind (`CreateToken.identity`).
pub const MAX_IDENTITY_LEN: usize = 512;

/// A token as `CreateToken` asks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewToken {
    /// Its unique name.
    pub name: String,
    /// Its role and services.
    pub grant: Grant,
    /// The client-certificate identity it binds instead of a secret.
    pub identity: Option<String>,
}

/// A `CreateTokenRequest`: name, role, service patterns, and an optional
/// certificate identity (1..=[`MAX_IDENTITY_LEN`] bytes, no control
/// characters).
pub fn create_token(r: pb::CreateTokenRequest) -> Result<NewToken, FieldError> {
    check_name(&r.name, "name")?;
    let grant = Grant::parse(&r.role, &r.services)?;
    let identity = if r.identity.is_empty() {
        None
    } else if r.identity.len() > MAX_IDENTITY_LEN || r.identity.chars().any(char::is_control) {
        return Err(FieldError::new(
            "identity",
            format!("must be 1..={MAX_IDENTITY_LEN} bytes without control characters"),
        ));
    } else {
        Some(r.identity)
    };
    Ok(NewToken {
        name: r.name,
        grant,
        identity,
    })
}

/// A `RevokeTokenRequest`: the token's name.
pub fn revoke_token(r: pb::RevokeTokenRequest) -> Result<String, FieldError> {
    check_name(&r.name, "name")?;
    Ok(r.name)
}

/// What a `SetClusterRequest` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterSetting {
    /// Every cluster setting, replacing those in force.
    Replace(ClusterConfig),
    /// Only what the change sets.
    Change(ClusterChange),
}

/// A `SetClusterRequest`: the service, its cluster modes or the change to
/// them, and whether it may create the service. A multicast route must
/// name one of the service's rules, which only the engine knows: here every
/// route named is taken as a rule, and the engine checks them.
pub fn set_cluster(r: pb::SetClusterRequest) -> Result<(String, ClusterSetting, bool), FieldError> {
    let service = service(r.service)?;
    let setting = match (r.cluster, r.change) {
        (Some(_), Some(_)) => {
            return Err(FieldError::new(
                "change",
                "set either cluster (every setting) or change, not both",
            ))
        }
        (None, Some(c)) => ClusterSetting::Change(cluster_change(c, "change")?),
        (cluster, None) => {
            let routes: Vec<String> = cluster
                .iter()
                .flat_map(|c| c.default_mode.iter().chain(c.methods.values()))
                .map(|m| m.route.clone())
                .filter(|r| !r.is_empty())
                .collect();
            let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
            ClusterSetting::Replace(cluster_config(cluster, &routes, "cluster")?)
        }
    };
    Ok((service, setting, r.create))
}

/// A `ClusterChange` under `field`, checked on its own (names, codes,
/// `clear` alone); ranges and which fields belong to the resulting mode are
/// checked when the engine applies it to the settings in force.
pub fn cluster_change(c: pb::ClusterChange, field: &str) -> Result<ClusterChange, FieldError> {
    use pb::cluster_mode::{Collect as C, Kind as K};
    let at = |name: &str| format!("{field}.{name}");
    let kind = match c.kind.map(K::try_from) {
        None => None,
        Some(Ok(k)) => Some(kind_of(k)),
        Some(Err(_)) => {
            return Err(FieldError::new(
                at("kind"),
                format!("{} is not a known mode", c.kind.unwrap_or_default()),
            ))
        }
    };
    let collect = match c.collect.map(C::try_from) {
        None => None,
        Some(Ok(C::First)) => Some(Collect::First),
        Some(Ok(C::All)) => Some(Collect::All),
        Some(Ok(C::None)) => Some(Collect::None),
        Some(Err(_)) => {
            return Err(FieldError::new(
                at("collect"),
                format!(
                    "{} is not FIRST, ALL or NONE",
                    c.collect.unwrap_or_default()
                ),
            ))
        }
    };
    let retry_on = if c.retry_on.is_empty() {
        None
    } else {
        Some(retry_codes(&c.retry_on).map_err(|e| e.within(field))?)
    };
    let ms = |v: Option<u32>| v.map(|ms| Duration::from_millis(u64::from(ms)));
    let change = ClusterChange {
        method: (!c.method.is_empty()).then_some(c.method),
        clear: c.clear,
        reset: c.reset,
        mode: ModeChange {
            kind,
            attempts: c.attempts,
            backoff: ms(c.backoff_ms),
            backoff_max: ms(c.backoff_max_ms),
            retry_on,
            forks: c.forks,
            collect,
            max_failure_percent: c.max_failure_percent,
            route: c.route,
        },
        budget_percent: c.budget_percent,
        budget_min_per_sec: c.budget_min_per_sec,
        deadline: c
            .deadline_ms
            .map(|ms| (ms > 0).then(|| Duration::from_millis(u64::from(ms)))),
    };
    change.check().map_err(|e| e.within(field))?;
    Ok(change)
}

/// A wire mode kind as the domain's.
fn kind_of(k: pb::cluster_mode::Kind) -> Kind {
    use pb::cluster_mode::Kind as K;
    match k {
        K::Failover => Kind::Failover,
        K::Failfast => Kind::Failfast,
        K::Failsafe => Kind::Failsafe,
        K::Forking => Kind::Forking,
        K::Broadcast => Kind::Broadcast,
        K::Multicast => Kind::Multicast,
    }
}

/// `retry_on` status names as codes: at most the codes there are (the
/// length is checked before any name is read), each a gRPC status name; a
/// repeat is dropped.
fn retry_codes(names: &[String]) -> Result<Vec<Code>, FieldError> {
    if names.len() > cluster::MAX_RETRY_ON {
        return Err(FieldError::new(
            "retry_on",
            format!(
                "{} entries, more than the {} error codes there are",
                names.len(),
                cluster::MAX_RETRY_ON
            ),
        ));
    }
    let mut codes = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        let code = Code::error_named(name).ok_or_else(|| {
            FieldError::new(
                format!("retry_on[{i}]"),
                format!("{name:?} is not a gRPC status name (e.g. UNAVAILABLE, DEADLINE_EXCEEDED)"),
            )
        })?;
        if !codes.contains(&code) {
            codes.push(code);
        }
    }
    Ok(codes)
}

/// A `Subscription`, validated: the service, the client, and the state of
/// the list it holds (`held_state_id`, `held_state_revision`).
pub fn subscription(
    s: pb::Subscription,
    field: &str,
) -> Result<(String, ClientIdentity, (String, u64)), FieldError> {
    if s.held_state_id.len() > lb_core::model::MAX_STATE_ID_LEN {
        return Err(FieldError::new(
            format!("{field}.held_state_id"),
            format!(
                "{} bytes, more than {}: {:?}",
                s.held_state_id.len(),
                lb_core::model::MAX_STATE_ID_LEN,
                lb_core::model::bounded(s.held_state_id, 32)
            ),
        ));
    }
    check_service(&s.service).map_err(|e| FieldError::new(format!("{field}.service"), e))?;
    let c = s
        .client
        .ok_or_else(|| FieldError::new(format!("{field}.client"), "missing"))?;
    let id = ClientIdentity {
        client_id: c.client_id,
        zone: c.zone,
        labels: c.labels.into_iter().collect(),
    };
    id.check()
        .map_err(|e| e.within(&format!("{field}.client")))?;
    Ok((s.service, id, (s.held_state_id, s.held_state_revision)))
}

/// A `ClientStats`, validated.
pub fn stats(s: pb::ClientStats, field: &str) -> Result<ClientStats, FieldError> {
    let st = ClientStats {
        instances: s
            .instances
            .into_iter()
            .map(|i| InstanceOutcomes {
                instance_id: i.instance_id,
                calls_started: i.calls_started,
                calls_finished: i.calls_finished,
                calls_failed: i.calls_failed,
                latency_sum_us: i.latency_sum_us,
                failed_by_code: i.failed_by_code.into_iter().collect(),
                consecutive_failures: i.consecutive_failures,
            })
            .collect(),
        dropped: s.dropped,
        no_backend: s.no_backend,
    };
    st.check().map_err(|e| e.within(field))?;
    Ok(st)
}

/// A `ClusterMode`, validated against the service's rule names. Fields that
/// do not belong to the mode's kind must be zero (a contradiction is refused,
/// not ignored); unset failover fields take their documented defaults
/// (`retry_on` empty: UNAVAILABLE; `backoff_max_ms` 0: 10 × `backoff_ms`).
/// `retry_on` may list at most the codes there are (its length is checked
/// before any name is read; the daemon's `--max-retry-on` quota is checked
/// before that, by the edge); a repeat is dropped.
pub fn cluster_mode(m: pb::ClusterMode, rules: &[&str]) -> Result<Mode, FieldError> {
    use pb::cluster_mode::{Collect as C, Kind as K};
    let kind = match K::try_from(m.kind) {
        Ok(k) => kind_of(k),
        Err(_) => {
            return Err(FieldError::new(
                "kind",
                format!("{} is not a known mode", m.kind),
            ))
        }
    };
    let collect = match C::try_from(m.collect) {
        Ok(C::First) => Collect::First,
        Ok(C::All) => Collect::All,
        Ok(C::None) => Collect::None,
        Err(_) => {
            return Err(FieldError::new(
                "collect",
                format!("{} is not FIRST, ALL or NONE", m.collect),
            ))
        }
    };
    let only = |field: &str, owner: &str| {
        Err(FieldError::new(
            field,
            format!("only applies to {owner}, not {}", kind.name()),
        ))
    };
    if kind != Kind::Failover {
        if m.attempts != 0 {
            return only("attempts", "failover");
        }
        if m.backoff_ms != 0 {
            return only("backoff_ms", "failover");
        }
        if m.backoff_max_ms != 0 {
            return only("backoff_max_ms", "failover");
        }
        if !m.retry_on.is_empty() {
            return only("retry_on", "failover");
        }
    }
    if kind != Kind::Forking && m.forks != 0 {
        return only("forks", "forking");
    }
    let fan_out = matches!(kind, Kind::Broadcast | Kind::Multicast);
    if !fan_out {
        if m.max_failure_percent != 0 {
            return only("max_failure_percent", "broadcast and multicast");
        }
        if collect != Collect::First {
            return only("collect", "broadcast and multicast");
        }
    }
    if kind != Kind::Multicast && !m.route.is_empty() {
        return only("route", "multicast");
    }
    let broadcast = Broadcast {
        collect,
        max_failure_percent: m.max_failure_percent,
    };
    let mode = match kind {
        Kind::Failover => {
            let retry_on = retry_codes(&m.retry_on)?;
            let d = Failover::default();
            let backoff = Duration::from_millis(u64::from(m.backoff_ms));
            Mode::Failover(Failover {
                attempts: m.attempts,
                backoff,
                backoff_max: match m.backoff_max_ms {
                    0 => Failover::backoff_max_for(backoff),
                    ms => Duration::from_millis(u64::from(ms)),
                },
                retry_on: if retry_on.is_empty() {
                    d.retry_on
                } else {
                    retry_on
                },
            })
        }
        Kind::Failfast => Mode::Failfast,
        Kind::Failsafe => Mode::Failsafe,
        Kind::Forking => Mode::Forking { forks: m.forks },
        Kind::Broadcast => Mode::Broadcast(broadcast),
        Kind::Multicast => Mode::Multicast {
            route: m.route,
            broadcast,
        },
    };
    mode.check(rules)?;
    Ok(mode)
}

/// A `ClusterConfig`, validated against the service's rule names.
pub fn cluster_config(
    c: Option<pb::ClusterConfig>,
    rules: &[&str],
    field: &str,
) -> Result<ClusterConfig, FieldError> {
    let c = c.ok_or_else(|| FieldError::new(field, "missing"))?;
    let d = ClusterConfig::default();
    let default = match c.default_mode {
        Some(m) => {
            cluster_mode(m, rules).map_err(|e| e.within(&format!("{field}.default_mode")))?
        }
        None => d.default,
    };
    if c.methods.len() > cluster::MAX_METHODS {
        return Err(FieldError::new(
            format!("{field}.methods"),
            format!(
                "{} entries, more than {}",
                c.methods.len(),
                cluster::MAX_METHODS
            ),
        ));
    }
    let mut methods = std::collections::BTreeMap::new();
    // In key order, so the first bad entry named is the same every time
    // (a HashMap's order is not).
    let wire: std::collections::BTreeMap<String, pb::ClusterMode> = c.methods.into_iter().collect();
    for (k, m) in wire {
        let mode =
            cluster_mode(m, rules).map_err(|e| e.within(&format!("{field}.methods[{k:?}]")))?;
        methods.insert(k, mode);
    }
    let cfg = ClusterConfig {
        default,
        methods,
        budget: cluster::Budget {
            percent: c.budget_percent.unwrap_or(d.budget.percent),
            min_per_sec: c.budget_min_per_sec.unwrap_or(d.budget.min_per_sec),
        },
        deadline: (c.deadline_ms > 0).then(|| Duration::from_millis(u64::from(c.deadline_ms))),
    };
    cfg.check(rules).map_err(|e| e.within(field))?;
    Ok(cfg)
}

/// A domain cluster mode, as the wire message.
pub fn cluster_mode_pb(m: &Mode) -> pb::ClusterMode {
    use pb::cluster_mode::{Collect as C, Kind as K};
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let mut out = pb::ClusterMode {
        kind: match m.kind() {
            Kind::Failover => K::Failover,
            Kind::Failfast => K::Failfast,
            Kind::Failsafe => K::Failsafe,
            Kind::Forking => K::Forking,
            Kind::Broadcast => K::Broadcast,
            Kind::Multicast => K::Multicast,
        } as i32,
        ..pb::ClusterMode::default()
    };
    let fan_out = |out: &mut pb::ClusterMode, b: &Broadcast| {
        out.collect = match b.collect {
            Collect::First => C::First,
            Collect::All => C::All,
            Collect::None => C::None,
        } as i32;
        out.max_failure_percent = b.max_failure_percent;
    };
    match m {
        Mode::Failover(f) => {
            out.attempts = f.attempts;
            out.backoff_ms = ms(f.backoff);
            out.backoff_max_ms = ms(f.backoff_max);
            out.retry_on = f.retry_on.iter().map(|c| c.name().to_string()).collect();
        }
        Mode::Failfast | Mode::Failsafe => {}
        Mode::Forking { forks } => out.forks = *forks,
        Mode::Broadcast(b) => fan_out(&mut out, b),
        Mode::Multicast { route, broadcast } => {
            fan_out(&mut out, broadcast);
            out.route = route.clone();
        }
    }
    out
}

/// A domain cluster config, as the wire message.
pub fn cluster_config_pb(c: &ClusterConfig) -> pb::ClusterConfig {
    pb::ClusterConfig {
        default_mode: Some(cluster_mode_pb(&c.default)),
        methods: c
            .methods
            .iter()
            .map(|(k, m)| (k.clone(), cluster_mode_pb(m)))
            .collect(),
        budget_percent: Some(c.budget.percent),
        budget_min_per_sec: Some(c.budget.min_per_sec),
        deadline_ms: c
            .deadline
            .map_or(0, |d| u32::try_from(d.as_millis()).unwrap_or(u32::MAX)),
    }
}

/// A `Rule`, validated on its own (the rule set is checked as a whole by the engine).
pub fn rule(r: Option<pb::Rule>, field: &str) -> Result<routing::Rule, FieldError> {
    let r = r.ok_or_else(|| FieldError::new(field, "missing"))?;
    let target = match (r.select.is_empty(), r.instance.is_empty()) {
        (false, true) => routing::Target::Selector(r.select.into_iter().collect()),
        (true, false) => routing::Target::Instance(r.instance),
        (true, true) => {
            return Err(FieldError::new(
                format!("{field}.select"),
                "set either select (labels) or instance (an instance id)",
            ))
        }
        (false, false) => {
            return Err(FieldError::new(
                format!("{field}.instance"),
                "set either select or instance, not both",
            ))
        }
    };
    let rule = routing::Rule {
        name: r.name,
        when: routing::Match {
            request: r.when_request.into_iter().collect(),
            client: r.when_client.into_iter().collect(),
            client_id: r.when_client_id,
        },
        target,
        exclusive: r.exclusive,
        strict: r.strict,
    };
    routing::check(std::slice::from_ref(&rule)).map_err(|e| FieldError {
        field: rule_field(&e.field, field),
        reason: e.reason,
    })?;
    Ok(rule)
}

/// A path of [`routing::check`] (`rules[0].when.request["k"]`, in the
/// domain's names) as the path of the `Rule` message at `field`
/// (`rule.when_request["k"]`). Both were cut to [`MAX_QUOTE`] where they
/// quote input; this changes a few bytes of their fixed part only.
///
/// [`MAX_QUOTE`]: lb_core::model::MAX_QUOTE
fn rule_field(domain: &str, field: &str) -> String {
    // Longest first: `.when.client_id` before `.when.client` before `.when`.
    const WIRE: [(&str, &str); 6] = [
        (".when.request", ".when_request"),
        (".when.client_id", ".when_client_id"),
        (".when.client", ".when_client"),
        // No condition at all: named by the first condition field.
        (".when", ".when_request"),
        (".target.selector", ".select"),
        (".target.instance", ".instance"),
    ];
    let Some(rest) = domain.strip_prefix("rules[0]") else {
        return field.to_string();
    };
    for (from, to) in WIRE {
        if let Some(tail) = rest.strip_prefix(from) {
            if tail.is_empty() || tail.starts_with('[') {
                return format!("{field}{to}{tail}");
            }
        }
    }
    format!("{field}{rest}")
}

/// A domain rule, as the wire message.
pub fn rule_pb(r: &routing::Rule) -> pb::Rule {
    let (select, instance) = match &r.target {
        routing::Target::Selector(s) => (s.clone().into_iter().collect(), String::new()),
        routing::Target::Instance(i) => (Default::default(), i.clone()),
    };
    pb::Rule {
        name: r.name.clone(),
        when_request: r.when.request.clone().into_iter().collect(),
        when_client: r.when.client.clone().into_iter().collect(),
        when_client_id: r.when.client_id.clone(),
        select,
        instance,
        exclusive: r.exclusive,
        strict: r.strict,
    }
}

/// The list one client sees: the plan arranged for this client (see
/// [`lb_core::policy::client_order`]), with the affinity table if any.
///
/// `state` is the store's identity and the revision the daemon has applied
/// (`ServerList.state_id`, `state_revision`).
pub fn server_list(
    p: &Published,
    client_seq: u64,
    client: &ClientIdentity,
    state: (&str, u64),
) -> pb::ServerList {
    let view = client_view(&p.plan, p.version, client_seq, client);
    pb::ServerList {
        version: p.version,
        state_id: state.0.to_string(),
        state_revision: state.1,
        servers: p
            .plan
            .servers
            .iter()
            .enumerate()
            .map(|(i, s)| pb::Server {
                instance_id: s.instance_id.clone(),
                address: s.address.clone(),
                zone: s.zone.clone(),
                tier: view.tiers.get(i).copied().unwrap_or(0),
                drop: s.drop,
                token: s.token.clone(),
            })
            .collect(),
        order: view.order,
        affinity: p.plan.affinity.clone(),
        routes: view
            .routes
            .into_iter()
            .map(|r| pb::Route {
                name: r.name,
                request: r.request.into_iter().collect(),
                order: r.order,
                strict: r.strict,
            })
            .collect(),
        // The default modes are lb-client's defaults too: not sent, so the
        // common list stays as small and cheap as it was.
        cluster: (*p.plan.cluster != ClusterConfig::default())
            .then(|| cluster_config_pb(&p.plan.cluster)),
        choices: p.plan.choices,
        choice_prior: p.plan.choice_prior,
        load_bound: p.plan.load_bound,
        key_spill: p.plan.spill.clone(),
    }
}

/// A domain load report, as the wire message.
pub fn load_report(l: &Load) -> pb::LoadReport {
    pb::LoadReport {
        cpu_utilization: l.cpu_utilization,
        active_requests: l.active_requests,
        qps: l.qps,
        eps: l.eps,
        mem_utilization: l.mem_utilization,
        named_metrics: l.named_metrics.clone().into_iter().collect(),
    }
}

/// An engine view of a service, as `ListServices` sums it up.
pub fn service_summary(v: &ServiceView) -> pb::ServiceSummary {
    pb::ServiceSummary {
        name: v.name.clone(),
        policy: v.policy.kind.name().to_string(),
        instances: v.instances.len() as u32,
        version: v.version,
        subscribers: v
            .subscribers
            .saturating_add(v.grpclb_streams)
            .saturating_add(v.xds_streams),
    }
}

/// An engine view of an instance, as the admin API shows it.
pub fn instance_status(i: &InstanceView) -> pb::InstanceStatus {
    pb::InstanceStatus {
        instance_id: i.spec.instance_id.clone(),
        address: i.spec.address.clone(),
        zone: i.spec.zone.clone(),
        labels: i.spec.labels.clone().into_iter().collect(),
        attachment: match i.attachment {
            Attachment::Stream { .. } => "stream",
            Attachment::Lease => "lease",
            Attachment::Restored => "restored",
            Attachment::Static => "static",
            Attachment::Replica => "replica",
        }
        .to_string(),
        static_weight: i.spec.weight,
        weight_override: i.over.weight.unwrap_or(0),
        drained: i.over.drained,
        effective_weight: i.effective_weight,
        share: i.share,
        key_spill: i.key_spill,
        load: i.load.as_ref().map(|(l, _)| load_report(l)),
        load_age_ms: i.load.as_ref().map_or(0, |(_, age)| age.as_millis() as u64),
        calls_started: i.outcomes.calls_started,
        calls_finished: i.outcomes.calls_finished,
        calls_failed: i.outcomes.calls_failed,
        latency_ewma_ms: i.latency_us.map_or(0.0, |us| us / 1000.0),
        health: if i.ejected_for.is_some() {
            "ejected"
        } else if i.health.circuit_open {
            "circuit_open"
        } else {
            "ok"
        }
        .to_string(),
        ejected_for_ms: i.ejected_for.map_or(0, |d| d.as_millis() as u64),
        times_ejected: i.health.times_ejected,
        failed_by_code: i.failed_by_code.clone().into_iter().collect(),
        token: i.spec.effective_token(),
    }
}

/// An engine view of a service, as the admin API shows it; `base` is the
/// daemon's default policy (whose `max_list_len` is the default one).
pub fn service_status(v: &ServiceView, base: &ServicePolicy) -> pb::ServiceStatus {
    pb::ServiceStatus {
        name: v.name.clone(),
        policy: Some(policy_pb(&v.policy)),
        instances: v.instances.iter().map(instance_status).collect(),
        version: v.version,
        list_len: v.list_len as u32,
        max_share_error: v.max_share_error,
        dropped: v.dropped,
        no_backend: v.no_backend,
        rules: v
            .rules
            .iter()
            .map(|(r, n)| pb::RuleStatus {
                rule: Some(rule_pb(r)),
                selected: *n as u32,
            })
            .collect(),
        cluster: Some(cluster_config_pb(&v.cluster)),
        drop_fraction: v.drop_fraction,
        utilization: v.utilization,
        backlog_seconds: v.backlog_seconds,
        grpclb: Some(pb::GrpclbStats {
            streams: v.grpclb_streams,
            calls_started: v.grpclb.calls_started,
            calls_finished: v.grpclb.calls_finished,
            calls_failed_to_send: v.grpclb.failed_to_send,
            calls_known_received: v.grpclb.known_received,
            dropped_by_token: v.grpclb.dropped_by_token.clone().into_iter().collect(),
        }),
        subscribers: v.subscribers,
        xds_streams: v.xds_streams,
        non_default_params: v
            .policy
            .non_default_params(base)
            .into_iter()
            .map(str::to_string)
            .collect(),
        previous_policy: None,
        previous_cluster: None,
    }
}

/// A domain policy, as the wire message (every parameter, defaults
/// included).
pub fn policy_pb(p: &ServicePolicy) -> pb::Policy {
    pb::Policy {
        name: p.kind.name().to_string(),
        params: p.params().into_iter().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::policy::{PlanServer, ServicePlan};

    #[test]
    fn field_paths_in_errors() {
        let e = instance(
            Some(pb::Instance {
                service: "s".into(),
                instance_id: "i".into(),
                address: "127.0.0.1:1".into(),
                weight: 0,
                ..Default::default()
            }),
            "register.instance",
        )
        .unwrap_err();
        assert_eq!(e.field, "register.instance.weight");
        let e = instance(None, "instance").unwrap_err();
        assert_eq!(e.to_string(), "instance: missing");
        assert_eq!(ttl(50, "ttl_ms").unwrap_err().field, "ttl_ms");
        assert_eq!(ttl(0, "ttl_ms"), Ok(None));
    }

    #[test]
    fn cluster_modes_refuse_fields_of_other_modes_and_fill_defaults() {
        use pb::cluster_mode::{Collect as C, Kind as K};
        let wire = |kind: K| pb::ClusterMode {
            kind: kind as i32,
            ..pb::ClusterMode::default()
        };
        let bad = |m: pb::ClusterMode| cluster_mode(m, &["r"]).unwrap_err();
        let e = bad(pb::ClusterMode {
            attempts: 3,
            forks: 2,
            ..wire(K::Failover)
        });
        assert_eq!(e.field, "forks");
        assert!(e.reason.contains("only applies to forking"), "{e}");
        assert_eq!(
            bad(pb::ClusterMode {
                attempts: 3,
                ..wire(K::Failfast)
            })
            .field,
            "attempts"
        );
        assert_eq!(
            bad(pb::ClusterMode {
                collect: C::All as i32,
                ..wire(K::Failsafe)
            })
            .field,
            "collect"
        );
        assert_eq!(
            bad(pb::ClusterMode {
                route: "r".into(),
                ..wire(K::Broadcast)
            })
            .field,
            "route"
        );
        assert_eq!(
            bad(pb::ClusterMode {
                attempts: 3,
                retry_on: vec!["SOMETIMES".into()],
                ..wire(K::Failover)
            })
            .field,
            "retry_on[0]"
        );
        // A list longer than the codes there are is refused before its
        // names are read; a long name is quoted in part.
        let e = bad(pb::ClusterMode {
            attempts: 2,
            retry_on: vec!["x".repeat(1 << 20); 4],
            ..wire(K::Failover)
        });
        assert_eq!(e.field, "retry_on[0]");
        assert!(e.to_string().len() < 600, "the name is quoted in part");
        let e = bad(pb::ClusterMode {
            attempts: 2,
            retry_on: vec!["UNAVAILABLE".into(); 100_000],
            ..wire(K::Failover)
        });
        assert_eq!(e.field, "retry_on");
        assert!(e.reason.contains("100000 entries, more than the 16"), "{e}");
        // Unset failover fields take the documented defaults; repeats go.
        let m = cluster_mode(
            pb::ClusterMode {
                attempts: 2,
                backoff_ms: 20,
                retry_on: vec!["unavailable".into(), "UNAVAILABLE".into()],
                ..wire(K::Failover)
            },
            &[],
        )
        .unwrap();
        assert_eq!(
            m,
            Mode::Failover(Failover {
                attempts: 2,
                backoff: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
                retry_on: vec![Code::Unavailable],
            })
        );
        // Every mode survives the trip to the wire and back.
        for kind in Kind::ALL {
            let mut mode = Mode::of(kind);
            if let Mode::Multicast { route, .. } = &mut mode {
                *route = "r".into();
            }
            assert_eq!(cluster_mode(cluster_mode_pb(&mode), &["r"]), Ok(mode));
        }
    }

    #[test]
    fn cluster_deadline_is_bounded_and_optional() {
        let with = |deadline_ms| {
            cluster_config(
                Some(pb::ClusterConfig {
                    deadline_ms,
                    ..pb::ClusterConfig::default()
                }),
                &[],
                "cluster",
            )
        };
        assert_eq!(with(0).unwrap().deadline, None);
        let c = with(2000).unwrap();
        assert_eq!(c.deadline, Some(Duration::from_secs(2)));
        assert_eq!(cluster_config_pb(&c).deadline_ms, 2000);
        assert_eq!(cluster_config_pb(&with(0).unwrap()).deadline_ms, 0);
        let max = u32::try_from(cluster::MAX_DEADLINE.as_millis()).unwrap();
        assert!(with(max).is_ok());
        let e = with(max + 1).unwrap_err();
        assert_eq!(e.field, "cluster.deadline_ms");
        assert!(e.to_string().contains("3600001"), "{e}");
    }

    #[test]
    fn lists_are_rotated_per_client() {
        let server = |id: &str| PlanServer {
            instance_id: id.into(),
            address: "127.0.0.1:1".into(),
            zone: String::new(),
            tier: 0,
            drop: false,
            token: String::new(),
            labels: Default::default(),
        };
        let p = Published {
            version: 9,
            plan: ServicePlan {
                servers: vec![server("a"), server("b")],
                weights: vec![0.5, 1.5],
                order: vec![0, 1, 1, 1],
                ..ServicePlan::default()
            },
        };
        let c = ClientIdentity::default();
        let a = server_list(&p, 0, &c, ("", 0));
        let b = server_list(&p, 1, &c, ("", 0));
        // Both are rotations of the period, and they differ.
        let period = [0, 1, 1, 1, 0, 1, 1, 1];
        assert!(period.windows(4).any(|w| w == a.order.as_slice()));
        assert_ne!(a.order, b.order);
        let mut sorted = b.order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 1, 1]);
        assert_eq!(b.version, 9);
    }
}
