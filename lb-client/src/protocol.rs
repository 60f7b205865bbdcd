//! What lb-client and the daemon say to each other, as plain types: a
//! backend's [`Registration`] and its [`LoadSample`]s, the daemon's answers to
//! a backend (`Directive`), a client's call statistics (`StatsReport`) and the
//! daemon's updates to a client (`Update`). The gRPC edge (`pb`) converts them
//! to and from the wire; the daemon connection (`daemon`) carries them.

use std::collections::BTreeMap;
use std::time::Duration;

use lb_core::model::{InstanceSpec, Load};

use crate::list::{self, CallCounts, PickList};

/// What a backend registers: the instance (service, id, the address clients
/// connect to, zone, static weight 1..=10000, labels, version, and the token
/// clients send as `lb-token`, empty for one the daemon derives), and how
/// long the daemon waits for a report.
///
/// ```
/// use std::time::Duration;
/// let mut reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
/// reg.instance.weight = 2; // twice the share of a weight-1 instance
/// reg.instance.zone = "eu-1".into();
/// reg.instance.labels.insert("version".into(), "v2".into()); // for routing rules
/// reg.ttl = Some(Duration::from_secs(10));
/// // Reporter::start(reg, ReporterOptions::new("127.0.0.1:7400")) registers it.
/// ```
#[derive(Clone, Debug)]
pub struct Registration {
    /// The instance, as the daemon records it.
    pub instance: InstanceSpec,
    /// How long the daemon waits for a report before dropping the instance;
    /// `None` = the daemon's default.
    pub ttl: Option<Duration>,
}

impl Registration {
    /// Weight 1, everything else empty (set `instance`'s fields to change them).
    ///
    /// ```
    /// let reg = lb_client::Registration::new("hello", "b1", "10.0.0.5:50051");
    /// assert_eq!((reg.instance.service.as_str(), reg.instance.weight), ("hello", 1));
    /// assert!(reg.ttl.is_none()); // the daemon's default
    /// ```
    pub fn new(
        service: impl Into<String>,
        instance_id: impl Into<String>,
        address: impl Into<String>,
    ) -> Self {
        Registration {
            instance: InstanceSpec::new(service, instance_id, address),
            ttl: None,
        }
    }
}

/// A backend's live load at one moment: lb-core's [`Load`] (utilization,
/// requests in flight, and optionally qps, eps, memory and up to 32 named
/// metrics). Values outside the daemon's ranges are clamped before sending.
///
/// A custom [`crate::reporter::Sampler`] returns one per report:
///
/// ```
/// use std::collections::BTreeMap;
/// let sample = lb_client::LoadSample {
///     cpu_utilization: 0.35,
///     active_requests: 12,
///     qps: Some(480.0),
///     named_metrics: BTreeMap::from([("queue_depth".to_string(), 3.0)]),
///     ..Default::default() // eps and memory: not reported
/// };
/// assert!(sample.check().is_ok()); // within the daemon's ranges
/// ```
pub type LoadSample = Load;

/// A message to the daemon after the registration.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Report(LoadSample),
    Drain,
}

/// What the daemon asks of the backend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Directive {
    pub(crate) report_interval_ms: u32,
    pub(crate) drain: bool,
}

/// Call outcomes to send in one `ClientStats`.
#[derive(Debug, Default)]
pub(crate) struct StatsReport {
    pub(crate) instances: Vec<(String, CallCounts)>,
    pub(crate) dropped: u64,
    pub(crate) no_backend: u64,
}

/// One message from the daemon, decoded by `pb`.
#[derive(Debug)]
pub(crate) struct Update {
    pub(crate) list: Option<Result<PickList, list::Error>>,
    pub(crate) stats_interval_ms: u32,
}

/// Who a client is, as its subscription tells the daemon.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Identity<'a> {
    pub(crate) client_id: &'a str,
    pub(crate) zone: &'a str,
    pub(crate) labels: &'a BTreeMap<String, String>,
}
