//! Quotas: how much the daemon takes on from one registration, for one
//! service and in all, and the estimate of a service's encoded answers that
//! the list quota compares with its limit.
//!
//! The limits of [`crate::model`] (and [`crate::routing::MAX_RULES`],
//! [`crate::cluster::MAX_RETRY_ON`]) say what a *valid* value is; beyond them
//! a request is `invalid_argument`. Quotas say how much valid input the
//! daemon accepts; beyond one a change is `resource_exhausted`, with a
//! message naming the quota, its limit and the service. Each has a flag
//! (`lb-server --max-…`) and a default here:
//!
//! | quota | default | why |
//! |---|---|---|
//! | [`Quota::InstancesPerService`] | 10,000 | a large fleet behind one name; Kubernetes truncates an Endpoints object at 1,000 and splits EndpointSlices at 100 |
//! | [`Quota::Instances`] | 100,000 | ten such services; at most ~5 KB registered each (32 labels of 128 bytes), so registrations hold under ~0.5 GB however they are shaped, within etcd's default 2 GiB backend quota |
//! | [`Quota::Labels`] | 32 | half the hard limit ([`MAX_LABELS`]): routing selects on a handful |
//! | [`Quota::LabelBytes`] | 128 | key + value; a Kubernetes label (name ≤ 63, value ≤ 63) fits |
//! | [`Quota::Rules`] | 32 | half the hard limit ([`MAX_RULES`]); each rule is evaluated per subscriber on every plan |
//! | [`Quota::RetryOn`] | 16 | the distinct error codes ([`MAX_RETRY_ON`]): a longer list can only repeat one |
//! | [`Quota::ListBytes`] | 2 MiB | half gRPC's default 4 MiB receive limit (grpc-go, grpc-java, C-core and tonic clients all default to it): the rest is headroom for what the estimate leaves out (see below) |
//!
//! Every check is pure and runs in the registry's `check_*` step, before
//! anything is stored: a refused change leaves no trace. The `retry_on`
//! quota is checked by the daemon's edge on the request's entries, before
//! their names are read (the domain list holds each code once). A change that does
//! not add (a renewal, a re-registration with the same spec, fewer rules, a
//! smaller list) is never refused, so lowering a quota below what a store
//! already holds strands nothing.
//!
//! # The list estimate
//! [`list_size`] adds up, from domain values alone, the protobuf encoding
//! of a service's three answers (protobuf.dev, "Encoding": a field is a
//! varint tag `field << 3 | wire type`, then a varint or a varint length
//! and that many bytes; proto3 leaves out fields at their default, and
//! prost leaves out a map entry's default key and value):
//! 1. the `lb.v1` `SubscribeResponse` carrying the `ServerList` any client
//!    gets: an upper bound. Every instance is counted (a plan lists a
//!    subset), with the largest tier, a drop entry, `order` at its longest
//!    (`max(max_list_len, servers)` entries, `policy::swrr::reduce`'s cap),
//!    the affinity table of the hash policies, and a route per rule with
//!    request conditions whose order is as long as the list's;
//! 2. the `grpc.lb.v1` `LoadBalanceResponse` (one server message per
//!    `order` entry, each at the largest address and token): an upper bound;
//! 3. the `GetService` answer (`ServiceStatus`): exact for what was
//!    registered or set (names, addresses, labels, tokens, policy, rules,
//!    cluster modes), the widest encoding for operator state (attachment,
//!    weight override, drain) and the service's own figures. The live
//!    figures of each instance are left out: they are not a change anyone
//!    could be refused. They add at most [`STATUS_FIGURES_MAX`] bytes per
//!    instance, plus the backend's named metrics (≤ 76 bytes each, ≤ 32)
//!    and the per-code failure counts (≤ 16 bytes per code, ≤ 16).
//!
//! The estimate is the largest of the three. With the defaults, a service
//! at the instance quota whose instances carry a few short labels stays
//! under the list quota, and its answers under 4 MiB with every figure in
//! (`quota::tests`, and lb-server's `pb` tests, which compare the estimate
//! with prost's encoded lengths).

use std::borrow::Cow;
use std::collections::BTreeMap;

use crate::cluster::{ClusterConfig, Mode, MAX_RETRY_ON};
use crate::model::{
    bounded, InstanceSpec, MAX_ACTIVE_REQUESTS, MAX_DROP_TOKENS, MAX_LABELS, MAX_LABEL_KEY_LEN,
    MAX_LABEL_VALUE_LEN, MAX_QUOTE, MAX_TOKEN_LEN, MAX_WEIGHT,
};
use crate::policy::{chash, PolicyKind, ServicePolicy};
use crate::routing::{Rule, Target, MAX_RULES};

/// Default of [`Quotas::instances_per_service`].
pub const DEFAULT_MAX_INSTANCES_PER_SERVICE: usize = 10_000;
/// Default of [`Quotas::instances`].
pub const DEFAULT_MAX_INSTANCES: usize = 100_000;
/// Default of [`Quotas::labels`] (at most [`MAX_LABELS`]).
pub const DEFAULT_MAX_LABELS: usize = 32;
/// Default of [`Quotas::label_bytes`] (at most [`MAX_LABEL_BYTES`]).
pub const DEFAULT_MAX_LABEL_BYTES: usize = 128;
/// Largest [`Quotas::label_bytes`]: the longest valid key and value.
pub const MAX_LABEL_BYTES: usize = MAX_LABEL_KEY_LEN + MAX_LABEL_VALUE_LEN;
/// Default of [`Quotas::rules`] (at most [`MAX_RULES`]).
pub const DEFAULT_MAX_RULES: usize = 32;
/// Default of [`Quotas::retry_on`]: every error code once.
pub const DEFAULT_MAX_RETRY_ON: usize = MAX_RETRY_ON;
/// Default of [`Quotas::list_bytes`].
pub const DEFAULT_MAX_LIST_BYTES: u64 = 2 << 20;
/// Smallest [`Quotas::list_bytes`]: a service with no instance takes ~4.5 KB.
pub const MIN_LIST_BYTES: u64 = 64 << 10;
/// The receive limit gRPC clients have unless configured otherwise (4 MiB):
/// a list quota above it makes lists that such clients refuse.
pub const CLIENT_RECEIVE_LIMIT: u64 = 4 << 20;

/// One quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Quota {
    /// Instances in one service.
    InstancesPerService,
    /// Instances in all services together.
    Instances,
    /// Labels on one instance.
    Labels,
    /// Bytes of one label, key and value together.
    LabelBytes,
    /// Routing rules of one service.
    Rules,
    /// Entries in one cluster mode's `retry_on` list, as sent.
    RetryOn,
    /// Encoded bytes of one service's list or `GetService` answer ([`list_size`]).
    ListBytes,
}

impl Quota {
    /// Every quota.
    pub const ALL: [Quota; 7] = [
        Quota::InstancesPerService,
        Quota::Instances,
        Quota::Labels,
        Quota::LabelBytes,
        Quota::Rules,
        Quota::RetryOn,
        Quota::ListBytes,
    ];

    /// Its name in messages and in `/metrics` (`lb_quota_refused_total{quota=…}`).
    pub fn name(self) -> &'static str {
        match self {
            Quota::InstancesPerService => "instances_per_service",
            Quota::Instances => "instances",
            Quota::Labels => "labels",
            Quota::LabelBytes => "label_bytes",
            Quota::Rules => "rules",
            Quota::RetryOn => "retry_on",
            Quota::ListBytes => "list_bytes",
        }
    }

    /// The daemon flag that sets it.
    pub fn flag(self) -> &'static str {
        match self {
            Quota::InstancesPerService => "--max-instances-per-service",
            Quota::Instances => "--max-instances",
            Quota::Labels => "--max-labels",
            Quota::LabelBytes => "--max-label-bytes",
            Quota::Rules => "--max-rules",
            Quota::RetryOn => "--max-retry-on",
            Quota::ListBytes => "--max-list-bytes",
        }
    }

    fn unit(self) -> &'static str {
        match self {
            Quota::LabelBytes | Quota::ListBytes => " bytes",
            _ => "",
        }
    }
}

impl std::fmt::Display for Quota {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A change refused by a quota: which one, its limit, the service, and what
/// the change would have made. Becomes `resource_exhausted`; the caller can
/// wait for room (instances leave), make the change smaller, or ask the
/// operator to raise the flag.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "quota {quota} exceeded in service {service:?}: {what}; the limit is {limit}{unit} (lb-server {flag})",
    unit = .quota.unit(),
    flag = .quota.flag()
)]
pub struct QuotaError {
    /// The quota.
    pub quota: Quota,
    /// Its limit.
    pub limit: u64,
    /// The service the change was for (cut to [`MAX_QUOTE`] bytes).
    pub service: String,
    /// What the change would have made (cut to [`MAX_QUOTE`] bytes).
    pub what: String,
}

/// The quotas in force (the daemon's flags).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quotas {
    /// Most instances in one service.
    pub instances_per_service: usize,
    /// Most instances in all services together.
    pub instances: usize,
    /// Most labels on one instance (at most [`MAX_LABELS`]).
    pub labels: usize,
    /// Most bytes of one label, key and value together (at most [`MAX_LABEL_BYTES`]).
    pub label_bytes: usize,
    /// Most routing rules in one service (at most [`MAX_RULES`]).
    pub rules: usize,
    /// Most entries in one `retry_on` list (at most [`MAX_RETRY_ON`]).
    pub retry_on: usize,
    /// Most encoded bytes of one service's answers, as [`list_size`] estimates them.
    pub list_bytes: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas::DEFAULT
    }
}

impl Quotas {
    /// Every quota at its default.
    pub const DEFAULT: Quotas = Quotas {
        instances_per_service: DEFAULT_MAX_INSTANCES_PER_SERVICE,
        instances: DEFAULT_MAX_INSTANCES,
        labels: DEFAULT_MAX_LABELS,
        label_bytes: DEFAULT_MAX_LABEL_BYTES,
        rules: DEFAULT_MAX_RULES,
        retry_on: DEFAULT_MAX_RETRY_ON,
        list_bytes: DEFAULT_MAX_LIST_BYTES,
    };

    /// The limit of `quota`.
    pub fn limit(&self, quota: Quota) -> u64 {
        let n = |x: usize| x as u64;
        match quota {
            Quota::InstancesPerService => n(self.instances_per_service),
            Quota::Instances => n(self.instances),
            Quota::Labels => n(self.labels),
            Quota::LabelBytes => n(self.label_bytes),
            Quota::Rules => n(self.rules),
            Quota::RetryOn => n(self.retry_on),
            Quota::ListBytes => self.list_bytes,
        }
    }

    /// The refusal of a change to `service` by `quota`.
    pub fn refuse(&self, quota: Quota, service: &str, what: String) -> QuotaError {
        QuotaError {
            quota,
            limit: self.limit(quota),
            service: bounded(service.to_string(), MAX_QUOTE),
            what: bounded(what, MAX_QUOTE),
        }
    }

    /// Whether the quotas are within the hard limits they narrow, and the
    /// list quota at least [`MIN_LIST_BYTES`]; the reason if not.
    pub fn check(&self) -> Result<(), String> {
        let checks = [
            (
                Quota::Labels,
                self.labels <= MAX_LABELS,
                format!("0..={MAX_LABELS}"),
            ),
            (
                Quota::LabelBytes,
                self.label_bytes <= MAX_LABEL_BYTES,
                format!("0..={MAX_LABEL_BYTES}"),
            ),
            (
                Quota::Rules,
                self.rules <= MAX_RULES,
                format!("0..={MAX_RULES}"),
            ),
            (
                Quota::RetryOn,
                (1..=MAX_RETRY_ON).contains(&self.retry_on),
                format!("1..={MAX_RETRY_ON}"),
            ),
            (
                Quota::ListBytes,
                self.list_bytes >= MIN_LIST_BYTES,
                format!("at least {MIN_LIST_BYTES}"),
            ),
        ];
        match checks.into_iter().find(|(_, ok, _)| !ok) {
            Some((q, _, range)) => {
                Err(format!("{} {} is outside {range}", q.flag(), self.limit(q)))
            }
            None => Ok(()),
        }
    }

    /// Whether a service of one instance with `policy` fits the list quota:
    /// the lists its `max_list_len` allows (as grpclb lists, one message per
    /// entry) must fit before any instance is registered. The daemon checks
    /// its default policy at start.
    pub fn check_default_policy(&self, policy: &ServicePolicy) -> Result<(), String> {
        let one = ServiceShape {
            name: "",
            instances: Footprint::default().with(InstanceBytes::default()),
            policy,
            rules: &[],
            cluster: Cow::Owned(ClusterConfig::default()),
        };
        let size = list_size(&one);
        if size.bytes() <= self.list_bytes {
            return Ok(());
        }
        Err(format!(
            "with --max-list-len {}, one instance's {} may take {} bytes encoded, more than --max-list-bytes {}; lower the one or raise the other",
            policy.max_list_len,
            size.largest(),
            size.bytes(),
            self.list_bytes
        ))
    }

    /// The `retry_on` quota for one cluster mode of a request: `entries`
    /// is how many the request lists (repeats included), `field` where.
    pub fn check_retry_on(
        &self,
        service: &str,
        field: &str,
        entries: usize,
    ) -> Result<(), QuotaError> {
        if entries <= self.retry_on {
            return Ok(());
        }
        Err(self.refuse(
            Quota::RetryOn,
            service,
            format!("{} has {entries} entries", bounded(field.to_string(), 128)),
        ))
    }

    /// The label quotas for one registration: how many, and how long each
    /// (key and value together).
    pub fn check_labels(&self, spec: &InstanceSpec) -> Result<(), QuotaError> {
        if spec.labels.len() > self.labels {
            return Err(self.refuse(
                Quota::Labels,
                &spec.service,
                format!(
                    "instance {:?} has {} labels",
                    spec.instance_id,
                    spec.labels.len()
                ),
            ));
        }
        if let Some((k, v)) = spec
            .labels
            .iter()
            .find(|(k, v)| k.len() + v.len() > self.label_bytes)
        {
            return Err(self.refuse(
                Quota::LabelBytes,
                &spec.service,
                format!(
                    "label {:?} of instance {:?} has {} bytes (key and value)",
                    bounded(k.clone(), 64),
                    spec.instance_id,
                    k.len() + v.len()
                ),
            ));
        }
        Ok(())
    }
}

// ------------------------------------------------------------ wire sizes

/// Bytes of `v` as a protobuf varint (1..=10).
pub const fn varint_len(v: u64) -> u64 {
    let bits = 64 - (v | 1).leading_zeros() as u64;
    bits.div_ceil(7)
}

const fn tag(field: u64) -> u64 {
    varint_len(field << 3)
}

/// A length-delimited field (string, bytes, message) of `len` bytes.
const fn len_field(field: u64, len: u64) -> u64 {
    tag(field) + varint_len(len) + len
}

/// A string field; absent when empty.
fn str_field(field: u64, s: &str) -> u64 {
    if s.is_empty() {
        0
    } else {
        len_field(field, s.len() as u64)
    }
}

/// A varint field holding `v`; absent at 0.
const fn varint_field(field: u64, v: u64) -> u64 {
    if v == 0 {
        0
    } else {
        tag(field) + varint_len(v)
    }
}

/// A varint field at its widest (`max` the largest value it can hold).
const fn widest(field: u64, max: u64) -> u64 {
    tag(field) + varint_len(max)
}

/// A double field (fixed 8 bytes).
const fn double(field: u64) -> u64 {
    tag(field) + 8
}

/// A bool field set to true.
const fn flag(field: u64) -> u64 {
    tag(field) + 1
}

/// A `map<string, string>` field.
fn str_map(field: u64, m: &BTreeMap<String, String>) -> u64 {
    m.iter()
        .map(|(k, v)| len_field(field, str_field(1, k) + str_field(2, v)))
        .sum()
}

/// A packed `repeated uint32` field of `n` values of at most `width` bytes.
const fn packed(field: u64, n: u64, width: u64) -> u64 {
    if n == 0 {
        0
    } else {
        len_field(field, n * width)
    }
}

/// `lb.v1.Server.tier` at its widest (tiers are 0 or 1).
const TIER_MAX: u64 = widest(4, 1);
/// A drop entry in `lb.v1.ServerList.servers`: `drop` and the token `lb-drop`.
const DROP_SERVER: u64 = len_field(2, flag(5) + len_field(6, 7));
/// One `grpc.lb.v1.Server` at its largest: an IPv6 address, the largest
/// port, the longest token, `drop`.
const GRPCLB_SERVER_MAX: u64 = len_field(
    1,
    len_field(1, 16) + widest(2, 65_535) + len_field(3, MAX_TOKEN_LEN as u64) + flag(4),
);
/// `InstanceStatus.attachment` at its longest ("restored").
const ATTACHMENT_MAX: u64 = len_field(5, 8);
/// `InstanceStatus.weight_override` and `drained` at their widest.
const OPERATOR_MAX: u64 = widest(7, MAX_WEIGHT as u64) + flag(8);
/// The live figures of one `InstanceStatus` at their widest, except the
/// load report's named metrics and the per-code failure counts: effective
/// weight, share, load (without named metrics), load age, the three call
/// counters, latency, health ("circuit_open"), time left ejected, times
/// ejected. [`list_size`] leaves them out (see the module docs).
pub const STATUS_FIGURES_MAX: u64 = double(9)
    + double(10)
    + len_field(
        11,
        double(1) + widest(2, MAX_ACTIVE_REQUESTS) + double(3) + double(4) + double(5),
    )
    + widest(12, u64::MAX)
    + 3 * widest(13, u64::MAX)
    + double(16)
    + len_field(17, 12)
    + widest(18, u64::MAX)
    + widest(19, u32::MAX as u64);
/// The figures of one `ServiceStatus`, at their widest: version, list
/// length, share error, drop and no-backend counts, drop fraction,
/// utilization, backlog, subscribers, and the grpclb totals with every drop
/// token.
const SERVICE_FIGURES_MAX: u64 = widest(4, u64::MAX)
    + widest(15, u32::MAX as u64)
    + widest(5, u32::MAX as u64)
    + double(6)
    + 2 * widest(7, u64::MAX)
    + 3 * double(11)
    + len_field(
        13,
        widest(1, u32::MAX as u64)
            + 4 * widest(2, u64::MAX)
            + (MAX_DROP_TOKENS as u64 + 1)
                * len_field(6, len_field(1, MAX_TOKEN_LEN as u64) + widest(2, u64::MAX)),
    );
/// `SubscribeResponse` fields besides the list: `stats_interval_ms`.
const SUBSCRIBE_EXTRA: u64 = widest(2, u32::MAX as u64);

/// What one instance adds to its service's answers, in encoded bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct InstanceBytes {
    /// Its entry in `lb.v1.ServerList.servers`, at its widest.
    pub server: u64,
    /// Its entry in `ServiceStatus.instances`, without live figures.
    pub status: u64,
}

/// What `spec` adds to its service's answers.
pub fn instance_bytes(spec: &InstanceSpec) -> InstanceBytes {
    let token = spec.effective_token().len() as u64;
    let named =
        str_field(1, &spec.instance_id) + str_field(2, &spec.address) + str_field(3, &spec.zone);
    let server = named + TIER_MAX + len_field(6, token);
    let status = named
        + str_map(4, &spec.labels)
        + ATTACHMENT_MAX
        + varint_field(6, u64::from(spec.weight))
        + OPERATOR_MAX
        + len_field(21, token);
    InstanceBytes {
        server: len_field(2, server),
        // Framed as it is with its figures, so the figures add at most
        // STATUS_FIGURES_MAX.
        status: tag(3) + varint_len(status + STATUS_FIGURES_MAX) + status,
    }
}

/// The sums of [`instance_bytes`] over a service's instances.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// Instances.
    pub instances: u64,
    /// Sum of [`InstanceBytes::server`].
    pub servers: u64,
    /// Sum of [`InstanceBytes::status`].
    pub statuses: u64,
}

impl Footprint {
    /// With one more instance.
    pub fn with(self, b: InstanceBytes) -> Footprint {
        Footprint {
            instances: self.instances + 1,
            servers: self.servers + b.server,
            statuses: self.statuses + b.status,
        }
    }

    /// With one instance less.
    pub fn without(self, b: InstanceBytes) -> Footprint {
        Footprint {
            instances: self.instances.saturating_sub(1),
            servers: self.servers.saturating_sub(b.server),
            statuses: self.statuses.saturating_sub(b.status),
        }
    }
}

/// A service as [`list_size`] sees it.
#[derive(Debug, Clone)]
pub struct ServiceShape<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its instances.
    pub instances: Footprint,
    /// Its policy.
    pub policy: &'a ServicePolicy,
    /// Its routing rules.
    pub rules: &'a [Rule],
    /// Its cluster modes.
    pub cluster: Cow<'a, ClusterConfig>,
}

/// The estimated encoded sizes of a service's answers, in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ListSize {
    /// An `lb.v1.SubscribeResponse` with its list, for any client: at most this.
    pub list: u64,
    /// A `grpc.lb.v1.LoadBalanceResponse` with its server list: at most this.
    pub grpclb: u64,
    /// The `GetService` answer without the instances' live figures.
    pub status: u64,
}

impl ListSize {
    /// The largest of the three: what the list quota compares.
    pub fn bytes(&self) -> u64 {
        self.list.max(self.grpclb).max(self.status)
    }

    /// Which answer is the largest, for messages.
    pub fn largest(&self) -> &'static str {
        if self.status >= self.list && self.status >= self.grpclb {
            "GetService answer"
        } else if self.list >= self.grpclb {
            "list"
        } else {
            "grpclb list"
        }
    }
}

/// The encoded sizes of `s`'s answers (see the module docs for what is
/// bounded and what is exact).
pub fn list_size(s: &ServiceShape<'_>) -> ListSize {
    let n = s.instances.instances;
    // Longest period (swrr::reduce's cap, with a drop entry), and the width
    // of an index into the servers (the drop entry's is `n`).
    let entries = if n == 0 {
        0
    } else {
        u64::from(s.policy.max_list_len).max(n + 1)
    };
    let width = varint_len(n);
    let affinity = match s.policy.kind {
        PolicyKind::Hash => entries,
        PolicyKind::ConsistentHash if n > 0 => {
            u64::from(chash::table_size(&s.policy.chash, n as usize))
        }
        _ => 0,
    };
    let routes: u64 = s
        .rules
        .iter()
        .filter(|r| !r.when.request.is_empty())
        .map(|r| {
            len_field(
                5,
                str_field(1, &r.name)
                    + str_map(2, &r.when.request)
                    + packed(3, entries, width)
                    + flag(4),
            )
        })
        .sum();
    let cluster = cluster_bytes(&s.cluster);
    let list = widest(1, u64::MAX)
        + widest(11, u64::MAX)
        + len_field(12, crate::model::MAX_STATE_ID_LEN as u64)
        + s.instances.servers
        + if n > 0 { DROP_SERVER } else { 0 }
        + packed(3, entries, width)
        + packed(4, affinity, width)
        + routes
        + if *s.cluster == ClusterConfig::default() {
            0
        } else {
            len_field(6, cluster)
        };
    let grpclb = len_field(2, entries * GRPCLB_SERVER_MAX);
    let params: u64 = s
        .policy
        .params()
        .iter()
        .map(|(k, v)| len_field(2, str_field(1, k) + str_field(2, v)))
        .sum();
    // `non_default_params`: at most every parameter's name.
    let non_default: u64 = s.policy.params().keys().map(|k| str_field(16, k)).sum();
    let rules: u64 = s
        .rules
        .iter()
        .map(|r| len_field(9, len_field(1, rule_bytes(r)) + widest(2, u32::MAX as u64)))
        .sum();
    let status = str_field(1, s.name)
        + len_field(2, str_field(1, s.policy.kind.name()) + params)
        + non_default
        + s.instances.statuses
        + SERVICE_FIGURES_MAX
        + rules
        + len_field(10, cluster);
    ListSize {
        list: len_field(1, list) + SUBSCRIBE_EXTRA,
        grpclb,
        status,
    }
}

/// Refuses a change from `before` to `after` that makes the estimate grow
/// past `quotas.list_bytes` (a change that does not grow it passes, even
/// above the limit).
pub fn check_growth(
    before: &ServiceShape<'_>,
    after: &ServiceShape<'_>,
    quotas: &Quotas,
) -> Result<(), QuotaError> {
    let new = list_size(after);
    if new.bytes() <= quotas.list_bytes || new.bytes() <= list_size(before).bytes() {
        return Ok(());
    }
    Err(quotas.refuse(
        Quota::ListBytes,
        after.name,
        format!(
            "its {} would take about {} bytes encoded",
            new.largest(),
            new.bytes()
        ),
    ))
}

/// An `lb.v1.Rule` message.
fn rule_bytes(r: &Rule) -> u64 {
    str_field(1, &r.name)
        + str_map(2, &r.when.request)
        + str_map(3, &r.when.client)
        + str_field(4, &r.when.client_id)
        + match &r.target {
            Target::Selector(m) => str_map(5, m),
            Target::Instance(i) => str_field(6, i),
        }
        + flag(7)
        + flag(8)
}

/// An `lb.v1.ClusterConfig` message (budget fields are always present).
fn cluster_bytes(c: &ClusterConfig) -> u64 {
    let deadline_ms = c
        .deadline
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
    varint_field(5, deadline_ms)
        + len_field(1, mode_bytes(&c.default))
        + c.methods
            .iter()
            .map(|(k, m)| len_field(2, str_field(1, k) + len_field(2, mode_bytes(m))))
            .sum::<u64>()
        + tag(3)
        + varint_len(u64::from(c.budget.percent))
        + tag(4)
        + varint_len(u64::from(c.budget.min_per_sec))
}

/// An `lb.v1.ClusterMode` message, its enums at their widest.
fn mode_bytes(m: &Mode) -> u64 {
    let ms = |d: std::time::Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    let kind = widest(1, 5);
    kind + match m {
        Mode::Failover(f) => {
            varint_field(2, u64::from(f.attempts))
                + varint_field(3, ms(f.backoff))
                + varint_field(4, ms(f.backoff_max))
                + f.retry_on
                    .iter()
                    .map(|c| str_field(5, c.name()))
                    .sum::<u64>()
        }
        Mode::Failfast | Mode::Failsafe => 0,
        Mode::Forking { forks } => varint_field(6, u64::from(*forks)),
        Mode::Broadcast(b) => widest(7, 2) + varint_field(8, u64::from(b.max_failure_percent)),
        Mode::Multicast { route, broadcast } => {
            widest(7, 2)
                + varint_field(8, u64::from(broadcast.max_failure_percent))
                + str_field(9, route)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Failover;
    use crate::routing::Match;
    use crate::status::Code;

    fn spec(id: &str, labels: usize, label_bytes: usize) -> InstanceSpec {
        let mut s = InstanceSpec::new("shop", id, "10.1.2.3:8080");
        for k in 0..labels {
            let key = format!("k{k:02}");
            let value = "v".repeat(label_bytes - key.len());
            s.labels.insert(key, value);
        }
        s
    }

    fn shape<'a>(
        footprint: Footprint,
        policy: &'a ServicePolicy,
        rules: &'a [Rule],
    ) -> ServiceShape<'a> {
        ServiceShape {
            name: "shop",
            instances: footprint,
            policy,
            rules,
            cluster: Cow::Owned(ClusterConfig::default()),
        }
    }

    #[test]
    fn varints_are_sized_like_protobuf() {
        for (v, n) in [
            (0, 1),
            (1, 1),
            (127, 1),
            (128, 2),
            (16_383, 2),
            (16_384, 3),
            (u64::MAX, 10),
        ] {
            assert_eq!(varint_len(v), n, "{v}");
        }
        // Fields 1..=15 take a one-byte tag, 16.. two.
        assert_eq!(tag(15), 1);
        assert_eq!(tag(16), 2);
        assert_eq!(len_field(1, 3), 5);
    }

    #[test]
    fn labels_at_the_limit_pass_and_one_past_is_refused_naming_the_quota() {
        let q = Quotas {
            labels: 3,
            label_bytes: 10,
            ..Quotas::default()
        };
        assert_eq!(q.check_labels(&spec("a", 3, 10)), Ok(()));
        let e = q.check_labels(&spec("a", 4, 10)).unwrap_err();
        assert_eq!((e.quota, e.limit), (Quota::Labels, 3));
        let msg = e.to_string();
        assert!(
            msg.starts_with("quota labels exceeded in service \"shop\""),
            "{msg}"
        );
        assert!(msg.contains("has 4 labels"), "{msg}");
        assert!(
            msg.contains("the limit is 3 (lb-server --max-labels)"),
            "{msg}"
        );
        let e = q.check_labels(&spec("a", 3, 11)).unwrap_err();
        assert_eq!((e.quota, e.limit), (Quota::LabelBytes, 10));
        assert!(
            e.to_string().contains(
                "has 11 bytes (key and value); the limit is 10 bytes (lb-server --max-label-bytes)"
            ),
            "{e}"
        );
    }

    #[test]
    fn retry_on_at_the_limit_passes_and_one_past_is_refused_naming_the_quota() {
        let q = Quotas::default();
        assert_eq!(q.retry_on, MAX_RETRY_ON);
        assert_eq!(
            q.check_retry_on("shop", "cluster.default_mode.retry_on", 16),
            Ok(())
        );
        let e = q
            .check_retry_on("shop", "cluster.default_mode.retry_on", 300_000)
            .unwrap_err();
        assert_eq!((e.quota, e.limit), (Quota::RetryOn, 16));
        assert_eq!(
            e.to_string(),
            "quota retry_on exceeded in service \"shop\": cluster.default_mode.retry_on has 300000 entries; the limit is 16 (lb-server --max-retry-on)"
        );
        let bad = Quotas { retry_on: 0, ..q };
        assert!(bad
            .check()
            .unwrap_err()
            .contains("--max-retry-on 0 is outside 1..=16"));
    }

    #[test]
    fn errors_quote_a_bounded_prefix() {
        let q = Quotas::default();
        let e = q.refuse(Quota::Rules, &"s".repeat(10_000), "x".repeat(10_000));
        assert!(e.to_string().len() < 2 * MAX_QUOTE + 200, "{e}");
    }

    #[test]
    fn quotas_narrow_the_hard_limits() {
        assert_eq!(Quotas::default().check(), Ok(()));
        let bad = Quotas {
            labels: MAX_LABELS + 1,
            ..Quotas::default()
        };
        assert!(bad.check().unwrap_err().contains("--max-labels 65"));
        let bad = Quotas {
            rules: MAX_RULES + 1,
            ..Quotas::default()
        };
        assert!(bad.check().unwrap_err().contains("--max-rules"));
        let bad = Quotas {
            list_bytes: MIN_LIST_BYTES - 1,
            ..Quotas::default()
        };
        assert!(bad.check().unwrap_err().contains("--max-list-bytes"));
        // The default policy fits; the longest lists do not, as grpclb lists.
        let policy = ServicePolicy::default();
        assert_eq!(Quotas::default().check_default_policy(&policy), Ok(()));
        let longest = ServicePolicy {
            max_list_len: crate::policy::config::MAX_LIST_LEN,
            ..policy
        };
        let e = Quotas::default()
            .check_default_policy(&longest)
            .unwrap_err();
        assert!(
            e.contains("--max-list-len 65536, one instance's grpclb list"),
            "{e}"
        );
        // The defaults are inside the hard limits too.
        let d = Quotas::default();
        assert!(d.labels <= MAX_LABELS && d.label_bytes <= MAX_LABEL_BYTES);
        assert!(d.rules <= MAX_RULES && d.list_bytes < CLIENT_RECEIVE_LIMIT);
    }

    /// A service at the instance quota, each instance with a few short
    /// labels: its answers fit the default list quota, and the status
    /// answer stays under clients' 4 MiB with every live figure at its widest.
    #[test]
    fn a_full_service_of_typical_instances_fits_the_default_list_quota() {
        let mut f = Footprint::default();
        for i in 0..DEFAULT_MAX_INSTANCES_PER_SERVICE {
            let mut s = InstanceSpec::new(
                "checkout.v1/Checkout",
                format!("checkout-{i:05}"),
                format!("10.{}.{}.{}:8080", i / 65_536, i / 256 % 256, i % 256),
            );
            s.zone = "us-east-1a".into();
            s.version = "1.42.0".into();
            for (k, v) in [
                ("app", "checkout"),
                ("track", "stable"),
                ("pool", "main"),
                ("version", "v1.42.0"),
            ] {
                s.labels.insert(k.into(), v.into());
            }
            f = f.with(instance_bytes(&s));
        }
        let policy = ServicePolicy::default();
        let size = list_size(&shape(f, &policy, &[]));
        assert!(
            size.bytes() <= DEFAULT_MAX_LIST_BYTES,
            "{size:?} > {DEFAULT_MAX_LIST_BYTES}"
        );
        let with_figures = size.status + f.instances * STATUS_FIGURES_MAX;
        assert!(with_figures < CLIENT_RECEIVE_LIMIT, "{with_figures}");
    }

    /// The attack that motivated the quotas: 5,000 leases with 64 labels of
    /// 255 bytes. The label quotas refuse the first; at the label quotas'
    /// limits the list quota stops one service after a few hundred.
    #[test]
    fn the_label_flood_is_refused_early() {
        let q = Quotas::default();
        let attack = spec("a", 64, 255);
        assert_eq!(q.check_labels(&attack).unwrap_err().quota, Quota::Labels);
        let widest = spec("a", q.labels, q.label_bytes);
        assert_eq!(q.check_labels(&widest), Ok(()));
        let policy = ServicePolicy::default();
        let mut f = Footprint::default();
        let mut accepted = 0;
        loop {
            let next = f.with(instance_bytes(&widest));
            if list_size(&shape(next, &policy, &[])).bytes() > q.list_bytes {
                break;
            }
            f = next;
            accepted += 1;
        }
        assert!((300..=600).contains(&accepted), "{accepted}");
    }

    /// Reprints the table in NOTES-quotas.md: for instances of a few
    /// shapes under the default quotas and policy, how many one service
    /// takes before the list quota refuses one, and its answers' sizes then.
    /// `cargo test -p lb-core --lib quota::tests::footprints -- --ignored --nocapture`
    #[test]
    #[ignore = "prints a table"]
    fn footprints() {
        let q = Quotas::default();
        let policy = ServicePolicy::default();
        println!("| instance | per service | list | grpclb | GetService (no live figures) |");
        println!("|---|---|---|---|---|");
        for (name, labels, bytes) in [
            ("no labels", 0, 0),
            ("4 labels of 16 bytes", 4, 16),
            ("8 labels of 64 bytes", 8, 64),
            ("32 labels of 128 bytes (the widest)", 32, 128),
        ] {
            let mut f = Footprint::default();
            let mut i = 0;
            let size = loop {
                if f.instances as usize == q.instances_per_service {
                    break list_size(&shape(f, &policy, &[]));
                }
                let mut s = spec(&format!("shop-{i:05}"), labels, bytes.max(4));
                s.address = format!("10.{}.{}.{}:8080", i / 65_536, i / 256 % 256, i % 256);
                let next = f.with(instance_bytes(&s));
                if list_size(&shape(next, &policy, &[])).bytes() > q.list_bytes {
                    break list_size(&shape(f, &policy, &[]));
                }
                f = next;
                i += 1;
            };
            println!(
                "| {name} | {} | {} | {} | {} |",
                f.instances, size.list, size.grpclb, size.status
            );
        }
    }

    #[test]
    fn growth_past_the_limit_is_refused_and_shrinking_never_is() {
        let policy = ServicePolicy {
            max_list_len: 1,
            ..ServicePolicy::default()
        };
        let one = instance_bytes(&spec("a", 8, 100));
        let small = Footprint::default().with(one);
        let big = small.with(one).with(one);
        let q = Quotas {
            list_bytes: list_size(&shape(small.with(one), &policy, &[])).bytes(),
            ..Quotas::default()
        };
        // At the limit: accepted; one past: refused, naming the quota.
        assert_eq!(
            check_growth(
                &shape(small, &policy, &[]),
                &shape(small.with(one), &policy, &[]),
                &q
            ),
            Ok(())
        );
        let e = check_growth(
            &shape(small.with(one), &policy, &[]),
            &shape(big, &policy, &[]),
            &q,
        )
        .unwrap_err();
        assert_eq!(e.quota, Quota::ListBytes);
        assert!(e.to_string().contains("--max-list-bytes"), "{e}");
        // Above the limit already (a lowered quota), shrinking passes.
        assert_eq!(
            check_growth(
                &shape(big, &policy, &[]),
                &shape(big.without(one), &policy, &[]),
                &q
            ),
            Ok(())
        );
    }

    #[test]
    fn settings_count_in_the_estimate() {
        let base = ServicePolicy::default();
        let f = (0..100).fold(Footprint::default(), |f, i| {
            f.with(instance_bytes(&spec(&format!("i{i}"), 1, 10)))
        });
        let plain = list_size(&shape(f, &base, &[]));
        // A longer list, and a hash table, make the lists longer.
        let long = ServicePolicy {
            max_list_len: 65_536,
            ..base.clone()
        };
        let long = list_size(&shape(f, &long, &[]));
        assert!(long.list > plain.list + 60_000, "{long:?} vs {plain:?}");
        assert!(long.grpclb > 65_536 * 20, "{long:?}");
        let chash = ServicePolicy::with_kind(PolicyKind::ConsistentHash);
        let chash = list_size(&shape(f, &chash, &[]));
        assert!(chash.list > plain.list + 10_000, "{chash:?} vs {plain:?}");
        // A rule with request conditions adds a route of the list's length.
        let rule = Rule {
            name: "canary".into(),
            when: Match {
                request: [("group".to_string(), "b".to_string())].into(),
                ..Match::default()
            },
            target: Target::Selector([("track".to_string(), "canary".to_string())].into()),
            exclusive: false,
            strict: false,
        };
        let rules = [rule];
        let routed = list_size(&shape(f, &base, &rules));
        assert!(
            routed.list > plain.list + u64::from(base.max_list_len),
            "{routed:?}"
        );
        // Cluster modes travel in the list once they differ from the default.
        let cluster = ClusterConfig {
            default: Mode::Failover(Failover {
                retry_on: Code::ALL[1..].to_vec(),
                ..Failover::default()
            }),
            ..ClusterConfig::default()
        };
        let modes = list_size(&ServiceShape {
            cluster: Cow::Owned(cluster),
            ..shape(f, &base, &[])
        });
        assert!(modes.list > plain.list + 150, "{modes:?} vs {plain:?}");
    }
}
