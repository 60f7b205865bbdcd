//! `lb.v1.Admin` (what `lb-server ctl` talks to), as a thin shell: validate
//! at the edge, run an engine command, render the engine's views.
//!
//! Every change is validated here (unknown policies, parameters out of range,
//! weights beyond the maximum → `invalid_argument` naming the field), made
//! durable by the engine before the answer, and pushed to subscribers at once.
//! Reads come from the engine's snapshot, which shows every answered change.

use lb_core::inspect::ServiceView;
use lb_core::model::InstanceKey;
use lb_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::engine_status;
use crate::config::Config;
use crate::engine::cmd::{
    PutStatic, RemoveStatic, RoutingChange, SetOverride, SetPolicy, SetRouting,
};
use crate::engine::EngineHandle;
use crate::pb::invalid;
use crate::pb::v1::{self as conv, instance_status, service_status};

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
        let service = conv::service(request.into_inner().service).map_err(invalid)?;
        Ok(Response::new(service_status(&self.view(&service)?)))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let (service, policy) =
            conv::set_policy(request.into_inner(), self.engine.default_policy())
                .map_err(invalid)?;
        let command = SetPolicy {
            service: service.clone(),
            policy,
        };
        self.engine.run(command).await.map_err(engine_status)?;
        Ok(Response::new(service_status(&self.view(&service)?)))
    }

    async fn set_weight(
        &self,
        request: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let (key, weight) = conv::set_weight(request.into_inner()).map_err(invalid)?;
        self.set_override(key, Some(weight), None).await
    }

    async fn set_drain(
        &self,
        request: Request<pb::SetDrainRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let r = request.into_inner();
        let key = conv::instance_key(r.service, r.instance_id).map_err(invalid)?;
        self.set_override(key, None, Some(r.drain)).await
    }

    async fn put_rule(
        &self,
        request: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let (service, rule, position) = conv::put_rule(request.into_inner()).map_err(invalid)?;
        self.routing(service, RoutingChange::PutRule { rule, position })
            .await
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let (service, name) = conv::delete_rule(request.into_inner()).map_err(invalid)?;
        self.routing(service, RoutingChange::DeleteRule(name)).await
    }

    async fn set_cluster(
        &self,
        request: Request<pb::SetClusterRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        // Multicast routes are checked against the service's rules by the
        // engine; everything else is checked here.
        let (service, cluster) = conv::set_cluster(request.into_inner()).map_err(invalid)?;
        self.routing(service, RoutingChange::Cluster(cluster)).await
    }

    async fn put_static(
        &self,
        request: Request<pb::PutStaticRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let spec = conv::put_static(request.into_inner(), self.config.allow_link_local)
            .map_err(invalid)?;
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
        let key = conv::instance_key(r.service, r.instance_id).map_err(invalid)?;
        let existed = self
            .engine
            .run(RemoveStatic(key))
            .await
            .map_err(engine_status)?;
        Ok(Response::new(pb::RemoveStaticResponse { existed }))
    }
}

impl AdminApi {
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
