//! Prometheus metrics: `GET /metrics` on `--metrics-listen`, in the text
//! exposition format (version 0.0.4, prometheus.io/docs/instrumenting/exposition_formats).
//!
//! The figures are the engine's views from its snapshot (what `lb-server ctl
//! get` shows; a scrape never waits for the engine), rendered
//! by the pure [`render`]; the listener is a minimal HTTP/1.1 responder (one
//! request per connection, then close), enough for a Prometheus scraper or curl
//! without a web framework.

use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use lb_core::access::Need;
use lb_core::inspect::{InstanceView, ServiceView};
use lb_core::quota::Quota;

use crate::auth::Auth;
use crate::engine::EngineHandle;
use crate::tls::Tls;

/// Longest request head read before answering.
const MAX_REQUEST: usize = 8 * 1024;
/// A scraper that sends nothing for this long is dropped.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics of `views`, in the text exposition format.
pub fn render(views: &[ServiceView]) -> String {
    let mut out = String::new();
    let mut family = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for (labels, v) in samples {
            let _ = writeln!(out, "{name}{{{labels}}} {v}");
        }
    };
    let svc = |v: &ServiceView| format!("service=\"{}\"", esc(&v.name));
    let per_service = |f: &dyn Fn(&ServiceView) -> f64| -> Vec<(String, f64)> {
        views.iter().map(|v| (svc(v), f(v))).collect()
    };
    let inst = |v: &ServiceView, id: &str| format!("{},instance=\"{}\"", svc(v), esc(id));
    let per_instance = |f: &dyn Fn(&InstanceView) -> f64| -> Vec<(String, f64)> {
        views
            .iter()
            .flat_map(|v| {
                v.instances
                    .iter()
                    .map(move |i| (inst(v, &i.spec.instance_id), f(i)))
            })
            .collect()
    };
    family(
        "lb_service_instances",
        "gauge",
        "Registered instances.",
        per_service(&|v| v.instances.len() as f64),
    );
    family(
        "lb_service_list_version",
        "gauge",
        "Version of the list subscribers get.",
        per_service(&|v| v.version as f64),
    );
    family(
        "lb_service_dropped_total",
        "counter",
        "Calls clients failed locally on drop entries (load shedding).",
        per_service(&|v| v.dropped as f64),
    );
    family(
        "lb_service_no_backend_total",
        "counter",
        "Calls clients could not place (empty list or a strict route with no instance).",
        per_service(&|v| v.no_backend as f64),
    );
    family(
        "lb_service_drop_fraction",
        "gauge",
        "Fraction of calls the list drops now (load shedding).",
        per_service(&|v| v.drop_fraction),
    );
    family(
        "lb_service_utilization",
        "gauge",
        "Mean reported utilization of the service's instances.",
        per_service(&|v| v.utilization),
    );
    family(
        "lb_service_backlog_seconds",
        "gauge",
        "Seconds the instances' reported requests take to drain at their full rates.",
        per_service(&|v| v.backlog_seconds),
    );
    family(
        "lb_service_subscribers",
        "gauge",
        "lb.v1 subscriptions (lb-client) open on the service.",
        per_service(&|v| f64::from(v.subscribers)),
    );
    family(
        "lb_grpclb_streams",
        "gauge",
        "grpc.lb.v1 (stock client) streams open on the service.",
        per_service(&|v| f64::from(v.grpclb_streams)),
    );
    family(
        "lb_grpclb_calls_started_total",
        "counter",
        "Calls stock grpclb clients reported starting.",
        per_service(&|v| v.grpclb.calls_started as f64),
    );
    family(
        "lb_grpclb_calls_known_received_total",
        "counter",
        "Calls stock grpclb clients reported as received by a backend.",
        per_service(&|v| v.grpclb.known_received as f64),
    );
    family(
        "lb_grpclb_calls_failed_to_send_total",
        "counter",
        "Calls stock grpclb clients could not send to a backend.",
        per_service(&|v| v.grpclb.failed_to_send as f64),
    );
    let rules = |f: &dyn Fn(usize) -> f64| -> Vec<(String, f64)> {
        views
            .iter()
            .flat_map(|v| {
                v.rules
                    .iter()
                    .map(move |(r, n)| (format!("{},rule=\"{}\"", svc(v), esc(&r.name)), f(*n)))
            })
            .collect()
    };
    family(
        "lb_rule_selected_instances",
        "gauge",
        "Instances a routing rule selects.",
        rules(&|n| n as f64),
    );
    family(
        "lb_rule_matches_no_instance",
        "gauge",
        "1 when a routing rule selects no instance (flagged).",
        rules(&|n| if n == 0 { 1.0 } else { 0.0 }),
    );
    family(
        "lb_instance_share",
        "gauge",
        "Share of the default list (0 for an instance an exclusive rule reserves).",
        per_instance(&|i| i.share),
    );
    family(
        "lb_instance_key_spill",
        "gauge",
        "consistent_hash: fraction of the instance's keyed calls sent to their keys' next instance (past load_bound).",
        per_instance(&|i| i.key_spill),
    );
    family(
        "lb_instance_effective_weight",
        "gauge",
        "Weight the policy gave the instance (mean 1).",
        per_instance(&|i| i.effective_weight),
    );
    family(
        "lb_instance_calls_total",
        "counter",
        "Calls clients finished on the instance.",
        per_instance(&|i| i.outcomes.calls_finished as f64),
    );
    family(
        "lb_instance_failed_total",
        "counter",
        "Calls that failed on the instance.",
        per_instance(&|i| i.outcomes.calls_failed as f64),
    );
    family(
        "lb_instance_ejected",
        "gauge",
        "1 while outlier detection has ejected the instance.",
        per_instance(&|i| if i.ejected_for.is_some() { 1.0 } else { 0.0 }),
    );
    family(
        "lb_instance_circuit_open",
        "gauge",
        "1 while the instance is out for reporting utilization above the ceiling.",
        per_instance(&|i| if i.health.circuit_open { 1.0 } else { 0.0 }),
    );
    family(
        "lb_instance_times_ejected",
        "gauge",
        "Ejections counted towards the next ejection's length.",
        per_instance(&|i| f64::from(i.health.times_ejected)),
    );
    out
}

/// Who may scrape, and over what.
#[derive(Debug, Clone)]
pub struct Access {
    /// TLS for the listener (the daemon's certificates).
    pub tls: Option<Arc<Tls>>,
    /// With authentication on, a scrape needs an admin (read-only suffices)
    /// bearer token.
    pub auth: Arc<Auth>,
}

/// Serves `GET /metrics` on `listener` until `stop` resolves; `body` renders
/// the page for each scrape.
pub async fn serve<B>(
    listener: TcpListener,
    access: Access,
    body: B,
    stop: impl Future<Output = ()>,
) where
    B: Fn() -> String + Clone + Send + 'static,
{
    tokio::pin!(stop);
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = &mut stop => return,
        };
        let Ok((sock, _)) = conn else { continue };
        let (body, access) = (body.clone(), access.clone());
        tokio::spawn(async move {
            match &access.tls {
                None => respond(sock, &access.auth, body).await,
                Some(tls) => {
                    if let Ok(Ok(s)) =
                        tokio::time::timeout(READ_TIMEOUT, tls.acceptor().accept(sock)).await
                    {
                        respond(s, &access.auth, body).await;
                    }
                }
            }
        });
    }
}

/// Reads one request head from `sock` and answers it.
async fn respond<S, B>(mut sock: S, auth: &Arc<Auth>, body: B)
where
    S: AsyncRead + AsyncWrite + Unpin,
    B: Fn() -> String,
{
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 1024];
    // Read the request head (up to the blank line), bounded in size and time.
    let head = tokio::time::timeout(READ_TIMEOUT, async {
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < MAX_REQUEST {
            match sock.read(&mut chunk).await {
                Ok(0) | Err(_) => return false,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        true
    })
    .await;
    if !matches!(head, Ok(true)) {
        return;
    }
    let head = String::from_utf8_lossy(&buf);
    let mut lines = head.split("\r\n");
    let line = lines.next().unwrap_or_default();
    let bearer = lines
        .filter_map(|l| l.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("authorization"))
        .and_then(|(_, v)| v.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim().to_string());
    let allowed = auth
        .authenticate(bearer.as_deref(), None)
        .and_then(|c| c.allow(&Need::AdminRead));
    let (status, ctype, text) = if !(line.starts_with("GET /metrics ") || line == "GET /metrics") {
        (
            "404 Not Found",
            "text/plain",
            "only GET /metrics is served here\n".to_string(),
        )
    } else if let Err(e) = allowed {
        let status = if e.code() == tonic::Code::PermissionDenied {
            "403 Forbidden"
        } else {
            "401 Unauthorized\r\nWWW-Authenticate: Bearer"
        };
        (status, "text/plain", format!("{}\n", e.message()))
    } else {
        ("200 OK", "text/plain; version=0.0.4", body())
    };
    let resp = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
        text.len()
    );
    let _ = sock.write_all(resp.as_bytes()).await;
    let _ = sock.shutdown().await;
}

/// The metrics page of `engine`, from its latest snapshot, with the
/// authentication and limit counters of `auth`.
pub fn page(engine: &EngineHandle, auth: &Auth, insecure: bool) -> String {
    let hub = engine.hub();
    let mut page = render(&engine.views(None));
    page.push_str(&render_ingest(
        hub.reports_received.load(Ordering::Relaxed),
        hub.reports_applied.load(Ordering::Relaxed),
    ));
    page.push_str(&render_store(
        hub.store.fault().is_some(),
        hub.store.failures.load(Ordering::Relaxed),
    ));
    page.push_str(&render_security(auth, insecure));
    page.push_str(&render_quotas(&hub.quotas.counts()));
    page
}

/// Refused calls and connections, and whether the daemon runs exposed.
fn render_security(auth: &Auth, insecure: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP lb_auth_enabled 1 when every call must authenticate.\n# TYPE lb_auth_enabled gauge\nlb_auth_enabled {}",
        u8::from(auth.is_enabled())
    );
    let _ = writeln!(
        out,
        "# HELP lb_insecure 1 when started with --insecure: listening beyond loopback without TLS or authentication.\n# TYPE lb_insecure gauge\nlb_insecure {}",
        u8::from(insecure)
    );
    let _ = writeln!(
        out,
        "# HELP lb_auth_denied_total Calls refused by authentication or authorization.\n# TYPE lb_auth_denied_total counter"
    );
    for ((role, reason), n) in auth.denied_counts() {
        let _ = writeln!(
            out,
            "lb_auth_denied_total{{role=\"{role}\",reason=\"{reason}\"}} {n}"
        );
    }
    let _ = writeln!(
        out,
        "# HELP lb_limit_refused_total Calls and connections refused or closed by a limit.\n# TYPE lb_limit_refused_total counter"
    );
    for (limit, n) in auth.limited_counts() {
        let _ = writeln!(out, "lb_limit_refused_total{{limit=\"{limit}\"}} {n}");
    }
    out
}

/// Changes refused per quota (every quota listed, so rates start at 0).
fn render_quotas(counts: &[(Quota, u64)]) -> String {
    let mut out = String::from(
        "# HELP lb_quota_refused_total Changes refused because they would exceed a quota (resource_exhausted).\n\
         # TYPE lb_quota_refused_total counter\n",
    );
    for (q, n) in counts {
        let _ = writeln!(out, "lb_quota_refused_total{{quota=\"{}\"}} {n}", q.name());
    }
    out
}

/// The store's health: degraded while commits fail.
fn render_store(degraded: bool, failures: u64) -> String {
    format!(
        "# HELP lb_store_degraded 1 while the store fails: changes are refused, lists and load reports go on.\n\
         # TYPE lb_store_degraded gauge\n\
         lb_store_degraded {}\n\
         # HELP lb_store_failures_total Commits and recoveries of the store that failed.\n\
         # TYPE lb_store_failures_total counter\n\
         lb_store_failures_total {failures}\n",
        u8::from(degraded)
    )
}

/// The daemon-wide load-report counters.
fn render_ingest(received: u64, applied: u64) -> String {
    format!(
        "# HELP lb_load_reports_received_total Load reports received and validated.\n\
         # TYPE lb_load_reports_received_total counter\n\
         lb_load_reports_received_total {received}\n\
         # HELP lb_load_reports_applied_total Load reports applied; the others were superseded by a newer report of the same stream that had already arrived.\n\
         # TYPE lb_load_reports_applied_total counter\n\
         lb_load_reports_applied_total {applied}\n"
    )
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
            subscribers: 3,
        }
    }

    #[test]
    fn renders_every_quota_with_its_refusals() {
        let text = render_quotas(&[(Quota::Labels, 2), (Quota::ListBytes, 0)]);
        assert!(
            text.contains("# TYPE lb_quota_refused_total counter\n"),
            "{text}"
        );
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
        let text = render_security(&auth, true);
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
        assert!(render_security(&auth, false).contains("lb_insecure 0\n"));
    }

    #[test]
    fn renders_the_ingest_counters() {
        let text = render_ingest(10, 4);
        assert!(text
            .lines()
            .any(|l| l == "lb_load_reports_received_total 10"));
        assert!(text.lines().any(|l| l == "lb_load_reports_applied_total 4"));
        assert!(text.contains("# TYPE lb_load_reports_applied_total counter\n"));
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
            "lb_grpclb_calls_started_total{service=\"shop\"} 30",
            "lb_rule_matches_no_instance{service=\"shop\",rule=\"ghost\"} 1",
            "lb_rule_matches_no_instance{service=\"shop\",rule=\"ab\"} 0",
            "lb_instance_share{service=\"shop\",instance=\"b\\\"1\"} 0.75",
            "lb_instance_ejected{service=\"shop\",instance=\"b\\\"1\"} 1",
            "lb_instance_failed_total{service=\"shop\",instance=\"b\\\"1\"} 3",
            "# TYPE lb_instance_calls_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }

    #[tokio::test]
    async fn serves_get_metrics_and_404_otherwise() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            Access {
                tls: None,
                auth: Arc::new(Auth::open(Default::default())),
            },
            || "lb_x 1\n".to_string(),
            async {
                stop_rx.await.ok();
            },
        ));
        let get = |path: &'static str| async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nlb_x 1\n"), "{ok}");
        let nf = get("/").await;
        assert!(nf.starts_with("HTTP/1.1 404"), "{nf}");
        stop_tx.send(()).unwrap();
        server.await.unwrap();
    }
}
