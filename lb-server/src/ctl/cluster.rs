//! `ctl set-cluster SERVICE [MODE] [--method M] [settings] [--reset|--clear]`:
//! only the settings given change, on the daemon (see `lb_core::cluster::
//! ClusterChange`); ctl prints what changed.

use std::time::Duration;

use clap::Args;
use lb_core::cluster::{Collect, Kind};
use lb_proto::v1 as pb;

use super::{no_such_service, show, Ctx, Failure};

/// `ctl set-cluster`.
#[derive(Debug, Args)]
pub struct SetCluster {
    /// Service name.
    service: String,
    /// Mode: failover, failfast, failsafe, forking, broadcast, multicast
    /// (absent: the mode in force; another mode starts from its defaults).
    #[arg(conflicts_with = "clear")]
    mode: Option<String>,
    /// Only for this method ("/package.Service/Method"); default: the
    /// service. A method without its own mode starts from the service's.
    #[arg(long)]
    method: Option<String>,
    /// The mode's settings.
    #[command(flatten)]
    flags: ModeFlags,
    /// Retry budget: retries may add this % of calls (0..=100).
    #[arg(long)]
    budget_percent: Option<u32>,
    /// Retry budget: plus this many retries per second.
    #[arg(long)]
    budget_min_per_sec: Option<u32>,
    /// Default deadline of a call whose caller set none (`2s`, `500ms`;
    /// `0`: none); covers retries and hedges; a caller's own wins.
    #[arg(long, value_parser = lb_core::duration::parse)]
    deadline: Option<Duration>,
    /// Remove the method's own mode (it follows the service's again).
    #[arg(long, requires = "method", conflicts_with = "reset")]
    clear: bool,
    /// Start from the defaults: the mode's own, and for the service's mode
    /// the default retry budget (methods' own modes are kept).
    #[arg(long)]
    reset: bool,
    /// Create the service if it has no instance and no settings yet.
    #[arg(long)]
    create: bool,
}

/// `ctl set-cluster`'s mode settings; those not given keep their values.
#[derive(Debug, Args)]
pub struct ModeFlags {
    /// failover: total attempts (1..=10).
    #[arg(long)]
    attempts: Option<u32>,
    /// failover: base backoff, e.g. 10ms (doubling, jittered); the ceiling
    /// follows when it would be lower (10 × the base).
    #[arg(long, value_parser = lb_core::duration::parse)]
    backoff: Option<Duration>,
    /// failover: largest backoff, e.g. 100ms.
    #[arg(long, value_parser = lb_core::duration::parse)]
    backoff_max: Option<Duration>,
    /// failover: status names to retry (repeatable; replaces the list;
    /// default UNAVAILABLE).
    #[arg(long = "retry-on")]
    retry_on: Vec<String>,
    /// forking: instances at once (2..=10).
    #[arg(long)]
    forks: Option<u32>,
    /// broadcast/multicast: first, all or none.
    #[arg(long)]
    collect: Option<String>,
    /// broadcast/multicast: fail above this percentage of failures.
    #[arg(long)]
    max_failure_percent: Option<u32>,
    /// multicast: the routing rule whose instances are called.
    #[arg(long)]
    route: Option<String>,
}

/// A backoff flag in the wire's whole milliseconds.
fn millis(flag: &str, d: Option<Duration>) -> Result<Option<u32>, String> {
    let Some(d) = d else { return Ok(None) };
    if d.subsec_nanos() % 1_000_000 != 0 {
        return Err(format!(
            "{flag} {}: kept in whole milliseconds",
            lb_core::duration::show(d)
        ));
    }
    u32::try_from(d.as_millis())
        .map(Some)
        .map_err(|_| format!("{flag} {}: too long", lb_core::duration::show(d)))
}

/// The change the flags ask for.
fn change(c: &SetCluster) -> Result<pb::ClusterChange, String> {
    use pb::cluster_mode::{Collect as C, Kind as K};
    let kind = match &c.mode {
        None => None,
        Some(name) => {
            let kind = Kind::parse(name).ok_or_else(|| {
                let known: Vec<&str> = Kind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown mode {name:?}: {}", known.join(", "))
            })?;
            Some(match kind {
                Kind::Failover => K::Failover,
                Kind::Failfast => K::Failfast,
                Kind::Failsafe => K::Failsafe,
                Kind::Forking => K::Forking,
                Kind::Broadcast => K::Broadcast,
                Kind::Multicast => K::Multicast,
            } as i32)
        }
    };
    let f = &c.flags;
    let collect = match &f.collect {
        None => None,
        Some(name) => Some(match Collect::parse(name) {
            Some(Collect::First) => C::First,
            Some(Collect::All) => C::All,
            Some(Collect::None) => C::None,
            None => return Err(format!("--collect {name:?}: first, all or none")),
        } as i32),
    };
    Ok(pb::ClusterChange {
        method: c.method.clone().unwrap_or_default(),
        clear: c.clear,
        reset: c.reset,
        kind,
        attempts: f.attempts,
        backoff_ms: millis("--backoff", f.backoff)?,
        backoff_max_ms: millis("--backoff-max", f.backoff_max)?,
        retry_on: f.retry_on.clone(),
        forks: f.forks,
        collect,
        max_failure_percent: f.max_failure_percent,
        route: f.route.clone(),
        budget_percent: c.budget_percent,
        budget_min_per_sec: c.budget_min_per_sec,
        deadline_ms: millis("--deadline", c.deadline)?,
    })
}

/// Changes the cluster modes; prints what changed (json: the daemon's whole
/// `ServiceStatus`, `previous_cluster` included).
pub(crate) async fn set(ctx: &mut Ctx, c: SetCluster) -> Result<(), Failure> {
    let change = change(&c)?;
    let s = ctx
        .admin
        .set_cluster(pb::SetClusterRequest {
            service: c.service.clone(),
            cluster: None,
            change: Some(change),
            create: c.create,
        })
        .await
        .map_err(|s| no_such_service(ctx, s))?
        .into_inner();
    ctx.answer(&s, || {
        let before = s.previous_cluster.clone().unwrap_or_default();
        let after = s.cluster.clone().unwrap_or_default();
        let lines = show::diff(&show::cluster_lines(&before), &show::cluster_lines(&after));
        show::change(&c.service, "cluster modes", &lines);
    })
}
