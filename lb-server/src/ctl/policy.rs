//! `ctl set-policy SERVICE POLICY [-p name=value]… [--reset] [--create]`.

use clap::Args;
use lb_proto::v1 as pb;

use super::{no_such_service, parse_param, show, Ctx, Failure};

/// `ctl set-policy`.
#[derive(Debug, Args)]
pub struct SetPolicy {
    /// Service name.
    service: String,
    /// Policy name.
    policy: String,
    /// A parameter, `name=value` (repeatable; see below). Durations need a
    /// unit: 1.5s, 250ms, 100us, 2m.
    #[arg(long = "param", short = 'p', value_parser = parse_param)]
    params: Vec<(String, String)>,
    /// Start from the defaults: every parameter not given takes its default
    /// (otherwise it keeps its value).
    #[arg(long)]
    reset: bool,
    /// Create the service if it has no instance and no settings yet
    /// (without it, a typo in the name is refused instead of making one).
    #[arg(long)]
    create: bool,
}

/// Sets the policy; prints what changed (json: the daemon's whole
/// `ServiceStatus`, `previous_policy` included).
pub(crate) async fn set(ctx: &mut Ctx, c: SetPolicy) -> Result<(), Failure> {
    let s = ctx
        .admin
        .set_policy(pb::SetPolicyRequest {
            service: c.service.clone(),
            policy: Some(pb::Policy {
                name: c.policy,
                params: c.params.into_iter().collect(),
            }),
            reset: c.reset,
            create: c.create,
        })
        .await
        .map_err(|s| no_such_service(ctx, s))?
        .into_inner();
    ctx.answer(&s, || {
        let before = s.previous_policy.clone().unwrap_or_default();
        let after = s.policy.clone().unwrap_or_default();
        let lines = show::policy_diff(&before, &after);
        show::change(&c.service, &format!("policy {}", after.name), &lines);
    })
}
