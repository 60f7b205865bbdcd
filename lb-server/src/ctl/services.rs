//! `ctl services`, `ctl get SERVICE`, `ctl delete-service SERVICE`.

use clap::Args;
use lb_core::replan::show_version;
use lb_proto::v1 as pb;

use super::{say, show, About, Ctx, Failure};

/// `ctl get`.
#[derive(Debug, Args)]
pub struct Get {
    /// Service name.
    service: String,
    /// List every policy parameter, defaults included (those not at their
    /// default are marked `*`).
    #[arg(long)]
    all: bool,
}

/// `ctl delete-service`.
#[derive(Debug, Args)]
pub struct DeleteService {
    /// Service name.
    service: String,
    /// Also deregister the instances backends registered (their streams
    /// end; a backend still running registers again, and the service comes
    /// back with default settings).
    #[arg(long)]
    force: bool,
}

pub(crate) async fn list(ctx: &mut Ctx) -> Result<(), Failure> {
    let r = ctx
        .admin
        .list_services(pb::ListServicesRequest {})
        .await
        .map_err(|s| ctx.refused(s))?
        .into_inner();
    ctx.answer(&r, || {
        say!(
            "{:<32} {:<22} {:>9} {:>11}  {}",
            "SERVICE",
            "POLICY",
            "INSTANCES",
            "SUBSCRIBERS",
            "VERSION"
        );
        for s in &r.services {
            say!(
                "{:<32} {:<22} {:>9} {:>11}  {}",
                s.name,
                s.policy,
                s.instances,
                s.subscribers,
                show_version(s.version)
            );
        }
    })
}

pub(crate) async fn get(ctx: &mut Ctx, c: Get) -> Result<(), Failure> {
    let s = ctx
        .admin
        .get_service(pb::GetServiceRequest { service: c.service })
        .await
        .map_err(|s| ctx.refused(s))?
        .into_inner();
    ctx.answer(&s, || show::service(&s, c.all))
}

pub(crate) async fn delete(ctx: &mut Ctx, c: DeleteService) -> Result<(), Failure> {
    let r = ctx
        .admin
        .delete_service(pb::DeleteServiceRequest {
            service: c.service.clone(),
            force: c.force,
        })
        .await
        .map_err(|s| {
            if s.code() == tonic::Code::FailedPrecondition {
                let text = format!(
                    "{}\nhint: `lb-server ctl get {}` shows them; --force deregisters them",
                    s.message(),
                    c.service
                );
                Failure::refused(&s, text)
            } else {
                ctx.refused(s)
            }
        })?
        .into_inner();
    ctx.answer(&About::new(&[("service", &c.service)], &r), || {
        deleted(&c.service, &r)
    })
}

/// What `delete-service` prints: what went with the service.
fn deleted(service: &str, r: &pb::DeleteServiceResponse) {
    if !r.existed {
        say!("no service {service}: nothing to delete");
        return;
    }
    let mut gone = Vec::new();
    if r.policy {
        gone.push("its policy".to_string());
    }
    if r.rules > 0 {
        gone.push(format!("{} rule(s)", r.rules));
    }
    if r.cluster {
        gone.push("its cluster modes".to_string());
    }
    if r.overrides > 0 {
        gone.push(format!("{} override(s)", r.overrides));
    }
    if !r.static_instances.is_empty() {
        gone.push(format!("static {}", r.static_instances.join(", ")));
    }
    if !r.deregistered.is_empty() {
        gone.push(format!("deregistered {}", r.deregistered.join(", ")));
    }
    if gone.is_empty() {
        say!("deleted service {service}");
    } else {
        say!("deleted service {service}: {}", gone.join("; "));
    }
}
