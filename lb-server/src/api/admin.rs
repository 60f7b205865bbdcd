//! `lb.v1.Admin` (what `lb-server ctl` talks to), as a thin shell: validate
//! at the edge, run an engine command, render the engine's views.
//!
//! Every change is validated here (unknown policies, parameters out of range,
//! weights beyond the maximum → `invalid_argument` naming the field), made
//! durable by the engine before the answer, and pushed to subscribers at once.
//! Reads come from the engine's snapshot, which shows every answered change.

use lb_core::inspect::ServiceView;
use lb_core::model::{bounded, check_id, check_service, check_weight, FieldError, InstanceKey};
use lb_core::policy::ServicePolicy;
use lb_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::{check_target, engine_status};
use crate::config::Config;
use crate::engine::cmd::{
    PutStatic, RemoveStatic, RoutingChange, SetOverride, SetPolicy, SetRouting,
};
use crate::engine::EngineHandle;
use crate::pb::invalid;
use crate::pb::v1::{cluster_config, instance, instance_status, rule, service_status};

/// The operator side of the API.
#[derive(Clone)]
pub struct AdminApi {
    engine: EngineHandle,
    config: Config,
}

impl AdminApi {
    /// An admin service over `engine`.
    pub fn new(engine: EngineHandle, config: Config) -> Self {
        AdminApi { engine, config }
    }

    fn view(&self, service: &str) -> Result<ServiceView, Status> {
        self.engine
            .views(Some(service))
            .into_iter()
            .next()
            .ok_or_else(|| {
                Status::not_found(format!(
                    "no service {service:?}: nothing is registered in it and it has no policy"
                ))
            })
    }
}

impl AdminApi {
    /// Applies an override and answers with the instance as it now stands.
    async fn set_override(
        &self,
        key: InstanceKey,
        weight: Option<Option<u32>>,
        drained: Option<bool>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let command = SetOverride {
            key: key.clone(),
            weight,
            drained,
        };
        self.engine.run(command).await.map_err(engine_status)?;
        Ok(Response::new(instance_of(self.view(&key.service)?, &key)?))
    }
}

fn key(service: String, instance_id: String) -> Result<InstanceKey, Status> {
    check_service(&service).map_err(|e| invalid(FieldError::new("service", e)))?;
    check_id(&instance_id).map_err(|e| invalid(FieldError::new("instance_id", e)))?;
    Ok(InstanceKey {
        service,
        instance_id,
    })
}

fn instance_of(v: ServiceView, key: &InstanceKey) -> Result<pb::InstanceStatus, Status> {
    v.instances
        .into_iter()
        .find(|i| i.spec.instance_id == key.instance_id)
        .map(|i| instance_status(&i))
        .ok_or_else(|| Status::not_found(format!("no instance {:?}", key.instance_id)))
}

#[tonic::async_trait]
impl pb::admin_server::Admin for AdminApi {
    async fn list_services(
        &self,
        _: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let views = self.engine.views(None);
        Ok(Response::new(pb::ListServicesResponse {
            services: views
                .iter()
                .map(|v| pb::ServiceSummary {
                    name: v.name.clone(),
                    policy: v.policy.kind.name().to_string(),
                    instances: v.instances.len() as u32,
                    version: v.version,
                })
                .collect(),
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let service = request.into_inner().service;
        check_service(&service).map_err(|e| invalid(FieldError::new("service", e)))?;
        Ok(Response::new(service_status(&self.view(&service)?)))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let r = request.into_inner();
        check_service(&r.service).map_err(|e| invalid(FieldError::new("service", e)))?;
        let p = r
            .policy
            .ok_or_else(|| invalid(FieldError::new("policy", "missing")))?;
        let params = p.params.into_iter().collect();
        let policy = ServicePolicy::parse(&p.name, &params, self.engine.default_policy())
            .map_err(|e| invalid(e.within("policy")))?;
        let command = SetPolicy {
            service: r.service.clone(),
            policy,
        };
        self.engine.run(command).await.map_err(engine_status)?;
        Ok(Response::new(service_status(&self.view(&r.service)?)))
    }

    async fn set_weight(
        &self,
        request: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let r = request.into_inner();
        let key = key(r.service, r.instance_id)?;
        let weight = match r.weight {
            0 => None,
            w => {
                check_weight(w).map_err(|e| invalid(FieldError::new("weight", e)))?;
                Some(w)
            }
        };
        self.set_override(key, Some(weight), None).await
    }

    async fn set_drain(
        &self,
        request: Request<pb::SetDrainRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let r = request.into_inner();
        let key = key(r.service, r.instance_id)?;
        self.set_override(key, None, Some(r.drain)).await
    }

    async fn put_rule(
        &self,
        request: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let r = request.into_inner();
        check_service(&r.service).map_err(|e| invalid(FieldError::new("service", e)))?;
        let rule = rule(r.rule, "rule").map_err(invalid)?;
        let position = match r.position {
            Some(p) if p as usize >= lb_core::routing::MAX_RULES => {
                return Err(invalid(FieldError::new(
                    "position",
                    format!("{p} is outside 0..{}", lb_core::routing::MAX_RULES),
                )))
            }
            p => p.map(|p| p as usize),
        };
        self.routing(r.service, RoutingChange::PutRule { rule, position })
            .await
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let r = request.into_inner();
        check_service(&r.service).map_err(|e| invalid(FieldError::new("service", e)))?;
        if r.name.is_empty() {
            return Err(invalid(FieldError::new("name", "must not be empty")));
        }
        self.routing(r.service, RoutingChange::DeleteRule(r.name))
            .await
    }

    async fn set_cluster(
        &self,
        request: Request<pb::SetClusterRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let r = request.into_inner();
        check_service(&r.service).map_err(|e| invalid(FieldError::new("service", e)))?;
        self.check_retry_on(&r.service, r.cluster.as_ref())?;
        // Multicast routes are checked against the service's rules by the
        // engine; everything else is checked here.
        let routes: Vec<String> = r
            .cluster
            .iter()
            .flat_map(|c| c.default_mode.iter().chain(c.methods.values()))
            .map(|m| m.route.clone())
            .filter(|r| !r.is_empty())
            .collect();
        let routes: Vec<&str> = routes.iter().map(String::as_str).collect();
        let cluster = cluster_config(r.cluster, &routes, "cluster").map_err(invalid)?;
        self.routing(r.service, RoutingChange::Cluster(cluster))
            .await
    }

    async fn put_static(
        &self,
        request: Request<pb::PutStaticRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let spec = instance(request.into_inner().instance, "instance").map_err(invalid)?;
        check_target(&spec, &self.config, "instance")?;
        let key = spec.key();
        self.engine
            .run(PutStatic(spec))
            .await
            .map_err(engine_status)?;
        Ok(Response::new(instance_of(self.view(&key.service)?, &key)?))
    }

    async fn remove_static(
        &self,
        request: Request<pb::RemoveStaticRequest>,
    ) -> Result<Response<pb::RemoveStaticResponse>, Status> {
        let r = request.into_inner();
        let key = key(r.service, r.instance_id)?;
        let existed = self
            .engine
            .run(RemoveStatic(key))
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::RemoveStaticResponse { existed }))
    }
}

impl AdminApi {
    /// The `retry_on` quota, on each mode's entries as sent (before any
    /// name is read): `resource_exhausted`, counted for `/metrics`.
    fn check_retry_on(
        &self,
        service: &str,
        cluster: Option<&pb::ClusterConfig>,
    ) -> Result<(), Status> {
        let Some(c) = cluster else { return Ok(()) };
        let quotas = &self.config.quotas;
        let modes = (c.default_mode.iter().map(|m| (None, m)))
            .chain(c.methods.iter().map(|(k, m)| (Some(k), m)))
            // The field's path is written only for a refusal.
            .filter(|(_, m)| m.retry_on.len() > quotas.retry_on);
        for (method, m) in modes {
            let field = match method {
                None => "cluster.default_mode.retry_on".to_string(),
                Some(k) => format!("cluster.methods[{:?}].retry_on", bounded(k.clone(), 64)),
            };
            if let Err(q) = quotas.check_retry_on(service, &field, m.retry_on.len()) {
                self.engine.hub().quotas.refused(q.quota);
                return Err(Status::resource_exhausted(q.to_string()));
            }
        }
        Ok(())
    }

    async fn routing(
        &self,
        service: String,
        change: RoutingChange,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let command = SetRouting {
            service: service.clone(),
            change,
        };
        self.engine.run(command).await.map_err(engine_status)?;
        Ok(Response::new(service_status(&self.view(&service)?)))
    }
}
