//! `lb.v1.Admin` (what `lb-server ctl` talks to), as a thin shell: validate
//! at the edge, run an engine command, render the engine's views.
//!
//! Every change is validated here (unknown policies, parameters out of range,
//! weights beyond the maximum → `invalid_argument` naming the field), made
//! durable by the engine before the answer, and pushed to subscribers at once.
//! Reads come from the engine's snapshot, which shows every answered change.
//!
//! Every change that succeeds is logged as an audit event (target `audit`):
//! who (the token's name, or `anonymous` without authentication), what, on
//! which service or instance, and the state before → after. Token management
//! (`CreateToken`, `ListTokens`, `RevokeToken`) lives here too.

use std::sync::Arc;

use lb_core::cluster::ClusterConfig;
use lb_core::inspect::ServiceView;
use lb_core::model::{bounded, InstanceKey};
use lb_proto::v1 as pb;
use tonic::{Request, Response, Status};

use super::engine_status;
use crate::auth::{self, token, Auth, TokenRecord};
use crate::config::Config;
use crate::engine::cmd::{
    CreateToken, DeleteService, PutStatic, RemoveStatic, RevokeToken, RoutingChange, SetOverride,
    SetPolicy, SetRouting,
};
use crate::engine::EngineHandle;
use crate::pb::invalid;
use crate::pb::v1::{self as conv, cluster_config_pb, instance_status, policy_pb, ClusterSetting};

/// The operator side of the API.
#[derive(Clone)]
pub struct AdminApi {
    engine: EngineHandle,
    config: Config,
    auth: Arc<Auth>,
}

/// Logs an admin change that succeeded: who, what, before → after.
fn audit(who: &str, action: &str, target: &str, before: &str, after: &str) {
    let cut = |s: &str| lb_core::model::bounded(s.to_string(), 1024);
    tracing::info!(target: "audit", who, action, target, before = %cut(before), after = %cut(after), "admin change");
}

/// Who is calling, for audit lines.
fn who<T>(request: &Request<T>) -> String {
    auth::caller(request).map_or_else(|| "internal".to_string(), |c| c.who().to_string())
}

/// A token as `token list` shows it.
fn token_info(t: &TokenRecord, last_used_ms: u64) -> pb::TokenInfo {
    pb::TokenInfo {
        name: t.name.clone(),
        role: t.grant.role.name().to_string(),
        services: t.grant.services.iter().map(|p| p.to_string()).collect(),
        identity: t.identity.clone().unwrap_or_default(),
        created_unix_ms: t.created_ms,
        last_used_unix_ms: last_used_ms,
    }
}

impl AdminApi {
    /// An admin service over `engine`; tokens are listed from `auth`.
    pub fn new(engine: EngineHandle, config: Config, auth: Arc<Auth>) -> Self {
        AdminApi {
            engine,
            config,
            auth,
        }
    }

    /// What an instance is now, for audit lines.
    fn instance_text(&self, key: &InstanceKey) -> String {
        self.engine
            .views(Some(&key.service))
            .into_iter()
            .flat_map(|v| v.instances)
            .find(|i| i.spec.instance_id == key.instance_id)
            .map_or_else(
                || "absent".to_string(),
                |i| {
                    format!(
                        "address={} weight={} override_weight={:?} drained={}",
                        i.spec.address, i.spec.weight, i.over.weight, i.over.drained
                    )
                },
            )
    }

    /// What a service's settings are now, for audit lines.
    fn settings_text(&self, service: &str) -> String {
        self.engine
            .views(Some(service))
            .into_iter()
            .next()
            .map_or_else(
                || "absent".to_string(),
                |v| {
                    format!(
                        "policy={} {:?} rules={:?} cluster={:?}",
                        v.policy.kind.name(),
                        v.policy.params(),
                        v.rules
                            .iter()
                            .map(|(r, _)| r.name.clone())
                            .collect::<Vec<_>>(),
                        v.cluster
                    )
                },
            )
    }

    /// A service as the admin API shows it.
    fn status(&self, service: &str) -> Result<pb::ServiceStatus, Status> {
        Ok(conv::service_status(
            &self.view(service)?,
            self.engine.default_policy(),
        ))
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
        who: &str,
        key: InstanceKey,
        weight: Option<Option<u32>>,
        drained: Option<bool>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let before = self.instance_text(&key);
        let command = SetOverride {
            key: key.clone(),
            weight,
            drained,
        };
        self.engine.run(command).await.map_err(engine_status)?;
        let action = if drained.is_some() {
            "set-drain"
        } else {
            "set-weight"
        };
        let target = format!("{}/{}", key.service, key.instance_id);
        audit(who, action, &target, &before, &self.instance_text(&key));
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
            services: views.iter().map(conv::service_summary).collect(),
        }))
    }

    async fn get_service(
        &self,
        request: Request<pb::GetServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let service = conv::service(request.into_inner().service).map_err(invalid)?;
        Ok(Response::new(self.status(&service)?))
    }

    async fn set_policy(
        &self,
        request: Request<pb::SetPolicyRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = who(&request);
        let (service, change, create) = conv::set_policy(request.into_inner()).map_err(invalid)?;
        let command = SetPolicy {
            service: service.clone(),
            change,
            create,
        };
        let (before, after) = self.engine.run(command).await.map_err(engine_status)?;
        let text =
            |p: &lb_core::policy::ServicePolicy| format!("{} {:?}", p.kind.name(), p.params());
        audit(&who, "set-policy", &service, &text(&before), &text(&after));
        // The policy before and after this change, as the engine applied it
        // (a read of the view could show another change made meanwhile).
        let mut status = self.status(&service)?;
        status.policy = Some(policy_pb(&after));
        status.non_default_params = after
            .non_default_params(self.engine.default_policy())
            .into_iter()
            .map(str::to_string)
            .collect();
        status.previous_policy = Some(policy_pb(&before));
        Ok(Response::new(status))
    }

    async fn set_weight(
        &self,
        request: Request<pb::SetWeightRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let who = who(&request);
        let (key, weight) = conv::set_weight(request.into_inner()).map_err(invalid)?;
        self.set_override(&who, key, Some(weight), None).await
    }

    async fn set_drain(
        &self,
        request: Request<pb::SetDrainRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let who = who(&request);
        let r = request.into_inner();
        let key = conv::instance_key(r.service, r.instance_id).map_err(invalid)?;
        self.set_override(&who, key, None, Some(r.drain)).await
    }

    async fn put_rule(
        &self,
        request: Request<pb::PutRuleRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = who(&request);
        let r = conv::put_rule(request.into_inner()).map_err(invalid)?;
        let change = RoutingChange::PutRule {
            rule: r.rule,
            position: r.position,
        };
        self.routing(&who, "put-rule", r.service, change, r.create)
            .await
            .map(|(status, _)| Response::new(status))
    }

    async fn delete_rule(
        &self,
        request: Request<pb::DeleteRuleRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = who(&request);
        let (service, name) = conv::delete_rule(request.into_inner()).map_err(invalid)?;
        self.routing(
            &who,
            "delete-rule",
            service,
            RoutingChange::DeleteRule(name),
            false,
        )
        .await
        .map(|(status, _)| Response::new(status))
    }

    async fn set_cluster(
        &self,
        request: Request<pb::SetClusterRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let who = who(&request);
        let r = request.into_inner();
        // The retry_on quota is counted on the entries as sent, before any
        // code name is read.
        self.check_retry_on(&r.service, r.cluster.as_ref(), r.change.as_ref())?;
        // Multicast routes are checked against the service's rules by the
        // engine; everything else is checked here.
        let (service, setting, create) = conv::set_cluster(r).map_err(invalid)?;
        let change = match setting {
            ClusterSetting::Replace(c) => RoutingChange::Cluster(c),
            ClusterSetting::Change(c) => RoutingChange::ClusterChange(c),
        };
        let (mut status, (before, after)) = self
            .routing(&who, "set-cluster", service, change, create)
            .await?;
        status.cluster = Some(cluster_config_pb(&after));
        status.previous_cluster = Some(cluster_config_pb(&before));
        Ok(Response::new(status))
    }

    async fn put_static(
        &self,
        request: Request<pb::PutStaticRequest>,
    ) -> Result<Response<pb::InstanceStatus>, Status> {
        let who = who(&request);
        let (spec, create) = conv::put_static(request.into_inner(), self.config.allow_link_local)
            .map_err(invalid)?;
        let key = spec.key();
        let before = self.instance_text(&key);
        self.engine
            .run(PutStatic { spec, create })
            .await
            .map_err(engine_status)?;
        let target = format!("{}/{}", key.service, key.instance_id);
        audit(
            &who,
            "put-static",
            &target,
            &before,
            &self.instance_text(&key),
        );
        Ok(Response::new(instance_of(self.view(&key.service)?, &key)?))
    }

    async fn remove_static(
        &self,
        request: Request<pb::RemoveStaticRequest>,
    ) -> Result<Response<pb::RemoveStaticResponse>, Status> {
        let who = who(&request);
        let r = request.into_inner();
        let key = conv::instance_key(r.service, r.instance_id).map_err(invalid)?;
        let before = self.instance_text(&key);
        let existed = self
            .engine
            .run(RemoveStatic(key.clone()))
            .await
            .map_err(engine_status)?;
        if existed {
            let target = format!("{}/{}", key.service, key.instance_id);
            audit(&who, "remove-static", &target, &before, "absent");
        }
        Ok(Response::new(pb::RemoveStaticResponse { existed }))
    }

    async fn delete_service(
        &self,
        request: Request<pb::DeleteServiceRequest>,
    ) -> Result<Response<pb::DeleteServiceResponse>, Status> {
        let who = who(&request);
        let (service, force) = conv::delete_service(request.into_inner()).map_err(invalid)?;
        let before = self.settings_text(&service);
        let d = self
            .engine
            .run(DeleteService {
                service: service.clone(),
                force,
            })
            .await
            .map_err(engine_status)?;
        if d.existed {
            audit(&who, "delete-service", &service, &before, "absent");
        }
        Ok(Response::new(pb::DeleteServiceResponse {
            existed: d.existed,
            policy: d.policy,
            rules: d.rules as u32,
            cluster: d.cluster,
            overrides: d.overrides as u32,
            static_instances: d.static_instances,
            deregistered: d.deregistered,
        }))
    }

    async fn create_token(
        &self,
        request: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateTokenResponse>, Status> {
        let who = who(&request);
        let r = request.into_inner();
        let new = conv::create_token(r).map_err(invalid)?;
        let created = auth::unix_ms();
        let (text, record) = match new.identity {
            None => token::mint(&new.name, new.grant, created).map_err(Status::internal)?,
            Some(identity) => (
                String::new(),
                TokenRecord {
                    id: format!("cert:{}", new.name),
                    name: new.name,
                    grant: new.grant,
                    hash: Vec::new(),
                    identity: Some(identity),
                    created_ms: created,
                },
            ),
        };
        let info = token_info(&record, 0);
        let after = format!(
            "role={} services={}",
            record.grant.role,
            record.grant.scope()
        );
        let name = record.name.clone();
        self.engine
            .run(CreateToken(record))
            .await
            .map_err(engine_status)?;
        audit(&who, "create-token", &name, "absent", &after);
        Ok(Response::new(pb::CreateTokenResponse {
            token: text,
            info: Some(info),
        }))
    }

    async fn list_tokens(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let tokens = self
            .auth
            .entries()
            .iter()
            .map(|e| token_info(&e.record, e.last_used_ms()))
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let who = who(&request);
        let name = conv::revoke_token(request.into_inner()).map_err(invalid)?;
        let existed = self
            .engine
            .run(RevokeToken(name.clone()))
            .await
            .map_err(engine_status)?;
        if existed {
            audit(&who, "revoke-token", &name, "present", "revoked");
        }
        Ok(Response::new(pb::RevokeTokenResponse { existed }))
    }
}

impl AdminApi {
    /// The `retry_on` quota, on each mode's entries as sent (before any
    /// name is read): `resource_exhausted`, counted for `/metrics`.
    fn check_retry_on(
        &self,
        service: &str,
        cluster: Option<&pb::ClusterConfig>,
        change: Option<&pb::ClusterChange>,
    ) -> Result<(), Status> {
        let quotas = &self.config.quotas;
        let modes = cluster
            .into_iter()
            .flat_map(|c| {
                (c.default_mode.iter().map(|m| (None, m.retry_on.len())))
                    .chain(c.methods.iter().map(|(k, m)| (Some(k), m.retry_on.len())))
            })
            // The field's path is written only for a refusal.
            .filter(|(_, n)| *n > quotas.retry_on);
        let fields = modes
            .map(|(method, n)| {
                let field = match method {
                    None => "cluster.default_mode.retry_on".to_string(),
                    Some(k) => format!("cluster.methods[{:?}].retry_on", bounded(k.clone(), 64)),
                };
                (field, n)
            })
            .chain(
                change
                    .filter(|c| c.retry_on.len() > quotas.retry_on)
                    .map(|c| ("change.retry_on".to_string(), c.retry_on.len())),
            );
        for (field, n) in fields {
            if let Err(q) = quotas.check_retry_on(service, &field, n) {
                self.engine.hub().quotas.refused(q.quota);
                return Err(Status::resource_exhausted(q.to_string()));
            }
        }
        Ok(())
    }

    /// Runs a routing change; answers the service as it now stands and the
    /// cluster modes before and after the change.
    async fn routing(
        &self,
        who: &str,
        action: &str,
        service: String,
        change: RoutingChange,
        create: bool,
    ) -> Result<(pb::ServiceStatus, (ClusterConfig, ClusterConfig)), Status> {
        let before = self.settings_text(&service);
        let command = SetRouting {
            service: service.clone(),
            change,
            create,
        };
        let clusters = self.engine.run(command).await.map_err(engine_status)?;
        audit(
            who,
            action,
            &service,
            &before,
            &self.settings_text(&service),
        );
        Ok((self.status(&service)?, clusters))
    }
}
