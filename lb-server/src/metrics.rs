//! Prometheus metrics: `GET /metrics` on `--http-listen`, encoded by
//! `prometheus-client` in the OpenMetrics text format (which Prometheus
//! reads; openmetrics.io). A counter's family is named without `_total`
//! and its samples with it, as OpenMetrics has it; sample names are those
//! of earlier releases.
//!
//! The figures are the engine's views from its snapshot (what `lb-server ctl
//! get` shows; a scrape never waits for the engine), turned into families
//! of samples by pure functions and encoded by a `prometheus-client`
//! collector at each scrape; [`crate::http`] serves the page.

use std::sync::atomic::Ordering;

use lb_core::inspect::{InstanceView, ServiceView};
use lb_core::quota::Quota;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

use crate::auth::Auth;
use crate::engine::EngineHandle;

/// A sample's labels, in order.
type Labels = Vec<(&'static str, String)>;

/// One metric family, as data: what a scrape holds before
/// `prometheus-client` encodes it.
#[derive(Debug, Clone)]
struct Family {
    /// The name; a counter's ends in `_total`, which its samples keep
    /// (prometheus-client names the family without it, as OpenMetrics does).
    name: &'static str,
    counter: bool,
    help: &'static str,
    samples: Vec<(Labels, f64)>,
}

fn gauge(name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) -> Family {
    Family {
        name,
        counter: false,
        help,
        samples,
    }
}

fn counter(name: &'static str, help: &'static str, samples: Vec<(Labels, f64)>) -> Family {
    Family {
        name,
        counter: true,
        help,
        samples,
    }
}

/// The page's families, encoded at each scrape by `prometheus-client`.
#[derive(Debug)]
struct Families(Vec<Family>);

impl Collector for Families {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for f in &self.0 {
            let (name, kind) = if f.counter {
                (
                    f.name.strip_suffix("_total").unwrap_or(f.name),
                    MetricType::Counter,
                )
            } else {
                (f.name, MetricType::Gauge)
            };
            let mut metric = encoder.encode_descriptor(name, f.help, None, kind)?;
            for (labels, v) in &f.samples {
                let sample = metric.encode_family(labels)?;
                // Whole numbers print as such (`3`, not `3.0`).
                let whole = v.fract() == 0.0 && v.abs() < 9.0e15;
                match (f.counter, whole) {
                    (true, true) => ConstCounter::new(*v as u64).encode(sample)?,
                    (true, false) => ConstCounter::new(*v).encode(sample)?,
                    (false, true) => ConstGauge::new(*v as i64).encode(sample)?,
                    (false, false) => ConstGauge::new(*v).encode(sample)?,
                }
            }
        }
        Ok(())
    }
}

/// `families` in the Prometheus text format (OpenMetrics text 1.0, which
/// Prometheus reads), by `prometheus-client`.
fn encode(families: Vec<Family>) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(Families(families)));
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
    out
}

/// The per-service, per-rule and per-instance families of `views`.
fn view_families(views: &[ServiceView]) -> Vec<Family> {
    let svc = |v: &ServiceView| -> Labels { vec![("service", v.name.clone())] };
    let per_service = |f: &dyn Fn(&ServiceView) -> f64| -> Vec<(Labels, f64)> {
        views.iter().map(|v| (svc(v), f(v))).collect()
    };
    let per_instance = |f: &dyn Fn(&InstanceView) -> f64| -> Vec<(Labels, f64)> {
        views
            .iter()
            .flat_map(|v| {
                v.instances.iter().map(move |i| {
                    let mut l = svc(v);
                    l.push(("instance", i.spec.instance_id.clone()));
                    (l, f(i))
                })
            })
            .collect()
    };
    let rules = |f: &dyn Fn(usize) -> f64| -> Vec<(Labels, f64)> {
        views
            .iter()
            .flat_map(|v| {
                v.rules.iter().map(move |(r, n)| {
                    let mut l = svc(v);
                    l.push(("rule", r.name.clone()));
                    (l, f(*n))
                })
            })
            .collect()
    };
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    vec![
        gauge("lb_service_instances", "Registered instances.", per_service(&|v| v.instances.len() as f64)),
        gauge("lb_service_list_version", "Version of the list subscribers get.", per_service(&|v| v.version as f64)),
        counter("lb_service_dropped_total", "Calls clients failed locally on drop entries (load shedding).", per_service(&|v| v.dropped as f64)),
        counter("lb_service_no_backend_total", "Calls clients could not place (empty list or a strict route with no instance).", per_service(&|v| v.no_backend as f64)),
        gauge("lb_service_drop_fraction", "Fraction of calls the list drops now (load shedding).", per_service(&|v| v.drop_fraction)),
        gauge("lb_service_utilization", "Mean reported utilization of the service's instances.", per_service(&|v| v.utilization)),
        gauge("lb_service_backlog_seconds", "Seconds the instances' reported requests take to drain at their full rates.", per_service(&|v| v.backlog_seconds)),
        gauge("lb_service_subscribers", "lb.v1 subscriptions (lb-client) open on the service.", per_service(&|v| f64::from(v.subscribers))),
        gauge("lb_grpclb_streams", "grpc.lb.v1 (stock client) streams open on the service.", per_service(&|v| f64::from(v.grpclb_streams))),
        gauge("lb_xds_streams", "xDS (proxyless gRPC client) streams asking for the service's assignment.", per_service(&|v| f64::from(v.xds_streams))),
        counter("lb_grpclb_calls_started_total", "Calls stock grpclb clients reported starting.", per_service(&|v| v.grpclb.calls_started as f64)),
        counter("lb_grpclb_calls_known_received_total", "Calls stock grpclb clients reported as received by a backend.", per_service(&|v| v.grpclb.known_received as f64)),
        counter("lb_grpclb_calls_failed_to_send_total", "Calls stock grpclb clients could not send to a backend.", per_service(&|v| v.grpclb.failed_to_send as f64)),
        gauge("lb_rule_selected_instances", "Instances a routing rule selects.", rules(&|n| n as f64)),
        gauge("lb_rule_matches_no_instance", "1 when a routing rule selects no instance (flagged).", rules(&|n| flag(n == 0))),
        gauge("lb_instance_share", "Share of the default list (0 for an instance an exclusive rule reserves).", per_instance(&|i| i.share)),
        gauge("lb_instance_key_spill", "consistent_hash: fraction of the instance's keyed calls sent to their keys' next instance (past load_bound).", per_instance(&|i| i.key_spill)),
        gauge("lb_instance_effective_weight", "Weight the policy gave the instance (mean 1).", per_instance(&|i| i.effective_weight)),
        counter("lb_instance_calls_total", "Calls clients finished on the instance.", per_instance(&|i| i.outcomes.calls_finished as f64)),
        counter("lb_instance_failed_total", "Calls that failed on the instance.", per_instance(&|i| i.outcomes.calls_failed as f64)),
        gauge("lb_instance_ejected", "1 while outlier detection has ejected the instance.", per_instance(&|i| flag(i.ejected_for.is_some()))),
        gauge("lb_instance_circuit_open", "1 while the instance is out for reporting utilization above the ceiling.", per_instance(&|i| flag(i.health.circuit_open))),
        gauge("lb_instance_times_ejected", "Ejections counted towards the next ejection's length.", per_instance(&|i| f64::from(i.health.times_ejected))),
    ]
}

/// The metrics of `views`, in the text exposition format.
pub fn render(views: &[ServiceView]) -> String {
    encode(view_families(views))
}

/// The metrics page of `engine`, from its latest snapshot, with the
/// authentication and limit counters of `auth`.
pub fn page(engine: &EngineHandle, auth: &Auth, insecure: bool) -> String {
    let hub = engine.hub();
    let mut families = view_families(&engine.views(None));
    families.extend(ingest_families(
        hub.reports_received.load(Ordering::Relaxed),
        hub.reports_applied.load(Ordering::Relaxed),
    ));
    families.push(counter(
        "lb_xds_nacks_total",
        "xDS answers clients rejected (NACKs); the daemon logs each with the client's error.",
        one(hub.xds_nacks.load(Ordering::Relaxed) as f64),
    ));
    families.extend(store_families(
        hub.store.fault().is_some(),
        hub.store.failures.load(Ordering::Relaxed),
    ));
    families.extend(security_families(auth, insecure));
    families.push(quota_family(&hub.quotas.counts()));
    encode(families)
}

fn one(v: f64) -> Vec<(Labels, f64)> {
    vec![(Vec::new(), v)]
}

/// Refused calls and connections, and whether the daemon runs exposed.
fn security_families(auth: &Auth, insecure: bool) -> Vec<Family> {
    let flag = |b: bool| if b { 1.0 } else { 0.0 };
    vec![
        gauge("lb_auth_enabled", "1 when every call must authenticate.", one(flag(auth.is_enabled()))),
        gauge("lb_insecure", "1 when started with --insecure: listening beyond loopback without TLS or authentication.", one(flag(insecure))),
        counter(
            "lb_auth_denied_total",
            "Calls refused by authentication or authorization.",
            auth.denied_counts()
                .into_iter()
                .map(|((role, reason), n)| (vec![("role", role.to_string()), ("reason", reason.to_string())], n as f64))
                .collect(),
        ),
        counter(
            "lb_limit_refused_total",
            "Calls and connections refused or closed by a limit.",
            auth.limited_counts()
                .into_iter()
                .map(|(limit, n)| (vec![("limit", limit.to_string())], n as f64))
                .collect(),
        ),
    ]
}

/// Changes refused per quota (every quota listed, so rates start at 0).
fn quota_family(counts: &[(Quota, u64)]) -> Family {
    counter(
        "lb_quota_refused_total",
        "Changes refused because they would exceed a quota (resource_exhausted).",
        counts
            .iter()
            .map(|(q, n)| (vec![("quota", q.name().to_string())], *n as f64))
            .collect(),
    )
}

/// The store's health: degraded while commits fail.
fn store_families(degraded: bool, failures: u64) -> Vec<Family> {
    vec![
        gauge(
            "lb_store_degraded",
            "1 while the store fails: changes are refused, lists and load reports go on.",
            one(if degraded { 1.0 } else { 0.0 }),
        ),
        counter(
            "lb_store_failures_total",
            "Commits and recoveries of the store that failed.",
            one(failures as f64),
        ),
    ]
}

/// The daemon-wide load-report counters.
fn ingest_families(received: u64, applied: u64) -> Vec<Family> {
    vec![
        counter("lb_load_reports_received_total", "Load reports received and validated.", one(received as f64)),
        counter("lb_load_reports_applied_total", "Load reports applied; the others were superseded by a newer report of the same stream that had already arrived.", one(applied as f64)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use lb_core::cluster::ClusterConfig;
    use lb_core::health::HostStatus;
    use lb_core::model::InstanceSpec;
    use lb_core::policy::ServicePolicy;
    use lb_core::registry::{Attachment, OutcomeTotals, Override};
    use lb_core::routing::{Match, Rule, Target};
    use std::time::Duration;

    fn view() -> ServiceView {
        let spec = InstanceSpec {
            service: "shop".into(),
            instance_id: "b\"1".into(),
            address: "127.0.0.1:1".into(),
            zone: String::new(),
            weight: 1,
            labels: Default::default(),
            version: String::new(),
            token: String::new(),
        };
        let rule = |name: &str| Rule {
            name: name.into(),
            when: Match {
                request: [("g".to_string(), "B".to_string())].into(),
                ..Match::default()
            },
            target: Target::Selector([("g".to_string(), "B".to_string())].into()),
            exclusive: false,
            strict: false,
        };
        ServiceView {
            name: "shop".into(),
            policy: ServicePolicy::default(),
            version: 7,
            list_len: 4,
            max_share_error: 0.0,
            dropped: 12,
            no_backend: 1,
            instances: vec![InstanceView {
                spec,
                attachment: Attachment::Lease,
                over: Override::default(),
                effective_weight: 1.0,
                share: 0.75,
                key_spill: 0.0,
                load: None,
                outcomes: OutcomeTotals {
                    calls_finished: 40,
                    calls_failed: 3,
                    ..OutcomeTotals::default()
                },
                latency_us: None,
                health: HostStatus {
                    times_ejected: 2,
                    ..HostStatus::default()
                },
                ejected_for: Some(Duration::from_secs(3)),
                failed_by_code: Default::default(),
            }],
            rules: vec![(rule("ab"), 1), (rule("ghost"), 0)],
            cluster: ClusterConfig::default(),
            drop_fraction: 0.25,
            utilization: 0.95,
            backlog_seconds: 0.125,
            grpclb: lb_core::registry::GrpclbTotals {
                calls_started: 30,
                ..Default::default()
            },
            grpclb_streams: 2,
            xds_streams: 1,
            subscribers: 3,
        }
    }

    #[test]
    fn renders_every_quota_with_its_refusals() {
        let text = encode(vec![quota_family(&[
            (Quota::Labels, 2),
            (Quota::ListBytes, 0),
        ])]);
        assert!(text.contains("# TYPE lb_quota_refused counter\n"), "{text}");
        assert!(
            text.lines()
                .any(|l| l == "lb_quota_refused_total{quota=\"labels\"} 2"),
            "{text}"
        );
        assert!(
            text.lines()
                .any(|l| l == "lb_quota_refused_total{quota=\"list_bytes\"} 0"),
            "{text}"
        );
    }

    #[test]
    fn says_when_it_runs_insecure_and_counts_refusals() {
        let auth = Auth::open(Default::default());
        auth.limited("handshake_timeout");
        auth.limited("handshake_timeout");
        let text = encode(security_families(&auth, true));
        for line in [
            "lb_insecure 1",
            "lb_auth_enabled 0",
            "lb_limit_refused_total{limit=\"handshake_timeout\"} 2",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(encode(security_families(&auth, false)).contains("lb_insecure 0\n"));
    }

    #[test]
    fn renders_the_ingest_counters() {
        let text = encode(ingest_families(10, 4));
        assert!(text
            .lines()
            .any(|l| l == "lb_load_reports_received_total 10"));
        assert!(text.lines().any(|l| l == "lb_load_reports_applied_total 4"));
        assert!(text.contains("# TYPE lb_load_reports_applied counter\n"));
    }

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let text = render(&[view()]);
        for line in [
            "lb_service_dropped_total{service=\"shop\"} 12",
            "lb_service_drop_fraction{service=\"shop\"} 0.25",
            "lb_service_backlog_seconds{service=\"shop\"} 0.125",
            "lb_service_list_version{service=\"shop\"} 7",
            "lb_service_subscribers{service=\"shop\"} 3",
            "lb_grpclb_streams{service=\"shop\"} 2",
            "lb_xds_streams{service=\"shop\"} 1",
            "lb_grpclb_calls_started_total{service=\"shop\"} 30",
            "lb_rule_matches_no_instance{service=\"shop\",rule=\"ghost\"} 1",
            "lb_rule_matches_no_instance{service=\"shop\",rule=\"ab\"} 0",
            "lb_instance_share{service=\"shop\",instance=\"b\\\"1\"} 0.75",
            "lb_instance_ejected{service=\"shop\",instance=\"b\\\"1\"} 1",
            "lb_instance_failed_total{service=\"shop\",instance=\"b\\\"1\"} 3",
            "# TYPE lb_instance_calls counter",
            "# EOF",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}
