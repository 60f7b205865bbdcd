//! `ctl set-rule`, `ctl delete-rule`: a service's routing rules. Each prints
//! the rules as they now stand, with what each selects (json: the daemon's
//! `ServiceStatus`).

use clap::Args;
use lb_proto::v1 as pb;

use super::{no_such_service, parse_param, show, Ctx, Failure};

/// `ctl set-rule`.
#[derive(Debug, Args)]
pub struct SetRule {
    /// Service name.
    service: String,
    /// Rule name (unique in the service).
    name: String,
    /// Request label the call must carry, `key=value` (repeatable).
    #[arg(long = "when", value_parser = parse_param)]
    when: Vec<(String, String)>,
    /// Subscriber label the client must have, `key=value` (repeatable;
    /// `zone=` matches the client's zone).
    #[arg(long = "when-client", value_parser = parse_param)]
    when_client: Vec<(String, String)>,
    /// Only this client id.
    #[arg(long = "client-id", default_value = "")]
    client_id: String,
    /// Instance label to select, `key=value` (repeatable; `zone=` matches
    /// the instance's zone).
    #[arg(long = "select", value_parser = parse_param, conflicts_with = "instance")]
    select: Vec<(String, String)>,
    /// One instance id (direct routing, for debugging).
    #[arg(long)]
    instance: Option<String>,
    /// The selected instances serve only traffic matching this rule.
    #[arg(long)]
    exclusive: bool,
    /// When nothing is selected, fail the call instead of using the default list.
    #[arg(long)]
    strict: bool,
    /// Position in the rule order (0 = first).
    #[arg(long)]
    position: Option<u32>,
    /// Create the service if it has no instance and no settings yet.
    #[arg(long)]
    create: bool,
}

/// `ctl delete-rule`.
#[derive(Debug, Args)]
pub struct DeleteRule {
    /// Service name.
    service: String,
    /// Rule name.
    name: String,
}

pub(crate) async fn set(ctx: &mut Ctx, c: SetRule) -> Result<(), Failure> {
    let s = ctx
        .admin
        .put_rule(pb::PutRuleRequest {
            service: c.service,
            rule: Some(pb::Rule {
                name: c.name,
                when_request: c.when.into_iter().collect(),
                when_client: c.when_client.into_iter().collect(),
                when_client_id: c.client_id,
                select: c.select.into_iter().collect(),
                instance: c.instance.unwrap_or_default(),
                exclusive: c.exclusive,
                strict: c.strict,
            }),
            position: c.position,
            create: c.create,
        })
        .await
        .map_err(|s| no_such_service(ctx, s))?
        .into_inner();
    ctx.answer(&s, || show::rules(&s.rules))
}

pub(crate) async fn delete(ctx: &mut Ctx, c: DeleteRule) -> Result<(), Failure> {
    let s = ctx
        .admin
        .delete_rule(pb::DeleteRuleRequest {
            service: c.service,
            name: c.name.clone(),
        })
        .await
        .map_err(|s| ctx.refused(s))?
        .into_inner();
    ctx.answer(&s, || {
        super::say!("deleted rule {}", c.name);
        show::rules(&s.rules);
    })
}
