//! The protobuf edge: the only module (with `api`) that sees `lb_proto` types.
//!
//! Inbound messages become domain types here, and this is where bad input turns
//! into `invalid_argument` naming the field (dotted path from the request root).
//! Outbound, plans become `ServerList`s rotated for one client.

use std::time::Duration;

use lb_proto::v1 as pb;
use tonic::Status;

use crate::engine::{EngineError, Published};
use crate::model::{
    ClientIdentity, ClientStats, FieldError, InstanceKey, InstanceOutcomes, InstanceSpec, Load,
    MAX_TTL, MIN_TTL,
};
use crate::policy::client_offset;
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

/// The list one client sees: the plan's period rotated by the client's offset.
pub fn server_list(p: &Published, client_seq: u64) -> pb::ServerList {
    let order = &p.plan.order;
    let offset = client_offset(client_seq, order.len());
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
        order: order[offset..]
            .iter()
            .chain(&order[..offset])
            .copied()
            .collect(),
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
                order: vec![0, 1, 1, 1],
                max_share_error: 0.0,
            },
        };
        let a = server_list(&p, 0);
        let b = server_list(&p, 1);
        assert_eq!(a.order, vec![0, 1, 1, 1]);
        assert_ne!(a.order, b.order);
        let mut sorted = b.order.clone();
        sorted.sort();
        assert_eq!(sorted, vec![0, 1, 1, 1]);
        assert_eq!(b.version, 9);
    }
}
