//! `ctl set-weight`, `drain`, `undrain`, `put-static`, `remove-static`: one
//! instance each; each but `remove-static` prints the instance as it now
//! stands (json: the daemon's `InstanceStatus`).

use clap::Args;
use lb_proto::v1 as pb;

use super::{no_such_service, parse_param, say, show, About, Ctx, Failure};

/// An instance of a service (`drain`, `undrain`, `remove-static`).
#[derive(Debug, Args)]
pub struct Instance {
    /// Service name.
    service: String,
    /// Instance id.
    instance: String,
}

/// `ctl set-weight`.
#[derive(Debug, Args)]
pub struct SetWeight {
    /// Service name.
    service: String,
    /// Instance id.
    instance: String,
    /// 1..=10000, or 0 to go back to the registered weight.
    weight: u32,
}

/// `ctl put-static`.
#[derive(Debug, Args)]
pub struct PutStatic {
    /// Service name.
    service: String,
    /// Instance id.
    instance: String,
    /// Where clients connect: host:port.
    address: String,
    /// Weight (1..=10000).
    #[arg(long, default_value_t = 1)]
    weight: u32,
    /// Zone.
    #[arg(long, default_value = "")]
    zone: String,
    /// Label, `key=value` (repeatable).
    #[arg(long = "label", value_parser = parse_param)]
    labels: Vec<(String, String)>,
    /// Token sent to the backend as `lb-token` (default: derived from
    /// the service and instance id).
    #[arg(long, default_value = "")]
    token: String,
    /// Create the service if it has no instance and no settings yet.
    #[arg(long)]
    create: bool,
}

pub(crate) async fn set_weight(ctx: &mut Ctx, c: SetWeight) -> Result<(), Failure> {
    let i = ctx
        .admin
        .set_weight(pb::SetWeightRequest {
            service: c.service,
            instance_id: c.instance,
            weight: c.weight,
        })
        .await
        .map_err(|s| ctx.refused(s))?
        .into_inner();
    instance(ctx, &i)
}

pub(crate) async fn set_drain(ctx: &mut Ctx, c: Instance, drain: bool) -> Result<(), Failure> {
    let i = ctx
        .admin
        .set_drain(pb::SetDrainRequest {
            service: c.service,
            instance_id: c.instance,
            drain,
        })
        .await
        .map_err(|s| ctx.refused(s))?
        .into_inner();
    instance(ctx, &i)
}

pub(crate) async fn put_static(ctx: &mut Ctx, c: PutStatic) -> Result<(), Failure> {
    let i = ctx
        .admin
        .put_static(pb::PutStaticRequest {
            instance: Some(pb::Instance {
                service: c.service,
                instance_id: c.instance,
                address: c.address,
                zone: c.zone,
                weight: c.weight,
                labels: c.labels.into_iter().collect(),
                version: String::new(),
                token: c.token,
            }),
            create: c.create,
        })
        .await
        .map_err(|s| no_such_service(ctx, s))?
        .into_inner();
    instance(ctx, &i)
}

pub(crate) async fn remove_static(ctx: &mut Ctx, c: Instance) -> Result<(), Failure> {
    let r = ctx
        .admin
        .remove_static(pb::RemoveStaticRequest {
            service: c.service.clone(),
            instance_id: c.instance.clone(),
        })
        .await
        .map_err(|s| ctx.refused(s))?
        .into_inner();
    let about = [
        ("service", c.service.as_str()),
        ("instance_id", &c.instance),
    ];
    ctx.answer(&About::new(&about, &r), || {
        if r.existed {
            say!("removed {}", c.instance);
        } else {
            say!("no instance {}: nothing to remove", c.instance);
        }
    })
}

/// Prints an instance as the daemon answered it.
fn instance(ctx: &Ctx, i: &pb::InstanceStatus) -> Result<(), Failure> {
    ctx.answer(i, || show::instances(std::slice::from_ref(i)))
}
