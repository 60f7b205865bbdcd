//! The protobuf edge: the only module (with `api`) that sees `lb_proto` types.
//!
//! Inbound messages become domain types here, and this is where bad input turns
//! into `invalid_argument` naming the field (dotted path from the request root).
//! Outbound, plans become `ServerList`s rotated for one client.

use std::time::Duration;

use lb_proto::v1 as pb;
use tonic::Status;

use crate::engine::{EngineError, InstanceView, Published, ServiceView};
use crate::model::{
    ClientIdentity, ClientStats, FieldError, InstanceKey, InstanceOutcomes, InstanceSpec, Load,
    MAX_TTL, MIN_TTL,
};
use crate::policy::client_order;
use crate::registry::Attachment;
use crate::registry::RegistryError;

/// A bad field, as the status a caller sees.
pub fn invalid(e: FieldError) -> Status {
    Status::invalid_argument(e.to_string())
}

/// An engine refusal, as the status a caller sees.
pub fn engine_status(e: EngineError) -> Status {
    match e {
        EngineError::Registry(
            e @ (RegistryError::AddressConflict { .. } | RegistryError::StreamOwned(_)),
        ) => Status::failed_precondition(e.to_string()),
        EngineError::Registry(e @ RegistryError::NotAttached(_)) => {
            Status::failed_precondition(e.to_string())
        }
        EngineError::Store(e) => Status::unavailable(format!("not persisted: {e}")),
        EngineError::ShuttingDown => Status::unavailable("lb-server is shutting down"),
        EngineError::NotFound(what) => Status::not_found(what),
    }
}

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
    };
    spec.check().map_err(|e| e.within(field))?;
    Ok(spec)
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

/// The service and key of a `DeregisterRequest`, validated.
pub fn deregister_key(r: pb::DeregisterRequest) -> Result<InstanceKey, FieldError> {
    crate::model::check_service(&r.service).map_err(|e| FieldError::new("service", e))?;
    crate::model::check_id(&r.instance_id).map_err(|e| FieldError::new("instance_id", e))?;
    Ok(InstanceKey {
        service: r.service,
        instance_id: r.instance_id,
    })
}

/// A `Subscription`, validated.
pub fn subscription(
    s: pb::Subscription,
    field: &str,
) -> Result<(String, ClientIdentity), FieldError> {
    crate::model::check_service(&s.service)
        .map_err(|e| FieldError::new(format!("{field}.service"), e))?;
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
    Ok((s.service, id))
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
            })
            .collect(),
        dropped: s.dropped,
        no_backend: s.no_backend,
    };
    st.check().map_err(|e| e.within(field))?;
    Ok(st)
}

/// The list one client sees: the plan arranged for this client (see
/// [`crate::policy::client_order`]), with the affinity table if any.
pub fn server_list(p: &Published, client_seq: u64) -> pb::ServerList {
    pb::ServerList {
        version: p.version,
        servers: p
            .plan
            .servers
            .iter()
            .map(|s| pb::Server {
                instance_id: s.instance_id.clone(),
                address: s.address.clone(),
                zone: s.zone.clone(),
                tier: s.tier,
                drop: s.drop,
                token: s.token.clone(),
            })
            .collect(),
        order: client_order(&p.plan, p.version, client_seq),
        affinity: p.plan.affinity.clone(),
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
        }
        .to_string(),
        static_weight: i.spec.weight,
        weight_override: i.over.weight.unwrap_or(0),
        drained: i.over.drained,
        effective_weight: i.effective_weight,
        share: i.share,
        load: i.load.as_ref().map(|(l, _)| load_report(l)),
        load_age_ms: i.load.as_ref().map_or(0, |(_, age)| age.as_millis() as u64),
        calls_started: i.outcomes.calls_started,
        calls_finished: i.outcomes.calls_finished,
        calls_failed: i.outcomes.calls_failed,
        latency_ewma_ms: i.latency_us.map_or(0.0, |us| us / 1000.0),
    }
}

/// An engine view of a service, as the admin API shows it.
pub fn service_status(v: &ServiceView) -> pb::ServiceStatus {
    pb::ServiceStatus {
        name: v.name.clone(),
        policy: Some(pb::Policy {
            name: v.policy.kind.name().to_string(),
            params: v.policy.params().into_iter().collect(),
        }),
        instances: v.instances.iter().map(instance_status).collect(),
        version: v.version,
        list_len: v.list_len as u32,
        max_share_error: v.max_share_error,
        dropped: v.dropped,
        no_backend: v.no_backend,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PlanServer, ServicePlan};

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
    fn lists_are_rotated_per_client() {
        let server = |id: &str| PlanServer {
            instance_id: id.into(),
            address: "127.0.0.1:1".into(),
            zone: String::new(),
            tier: 0,
            drop: false,
            token: String::new(),
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
        let a = server_list(&p, 0);
        let b = server_list(&p, 1);
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
