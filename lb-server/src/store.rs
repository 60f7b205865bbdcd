//! Persistence in sled: registrations (with static weights; static instances
//! flagged as such), per-service policy
//! settings, operator overrides (weight, drain), and the daemon's generation
//! counter.
//!
//! Records are small protobuf messages defined here (a storage format, not the
//! wire API), so fields can be added compatibly. Writes land in sled's memory
//! first; [`Store::flush`] makes them durable, and the engine acknowledges a
//! change to its caller only after that flush (one flush per batch of commands:
//! group commit).
//!
//! Trees: `instances` and `overrides` (key `service \0 instance_id`),
//! `policies` (key `service`; the policy's name and its parameters as text,
//! re-validated on load), `routing` (key `service`; routing rules and
//! cluster modes), `meta` (key `generation`, a big-endian u64).

use std::path::Path;
use std::time::Duration;

use prost::Message;

use crate::cluster::ClusterConfig;
use crate::model::{InstanceKey, InstanceSpec};
use crate::policy::ServicePolicy;
use crate::registry::Override;
use crate::routing::Rule;

/// A store failure. The daemon cannot promise durability, so the caller's
/// change is refused with `unavailable`; check the disk under `--data-dir`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (I/O error, corruption, or the directory is locked by
    /// another lb-server).
    #[error("storage error: {0}")]
    Sled(#[from] sled::Error),
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredInstance {
    #[prost(string, tag = "1")]
    service: String,
    #[prost(string, tag = "2")]
    instance_id: String,
    #[prost(string, tag = "3")]
    address: String,
    #[prost(string, tag = "4")]
    zone: String,
    #[prost(uint32, tag = "5")]
    weight: u32,
    #[prost(btree_map = "string, string", tag = "6")]
    labels: std::collections::BTreeMap<String, String>,
    #[prost(string, tag = "7")]
    version: String,
    #[prost(uint64, tag = "8")]
    ttl_ms: u64,
    #[prost(string, tag = "9")]
    token: String,
    /// Added by an operator: restored as static, never expires.
    #[prost(bool, tag = "10")]
    is_static: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredPolicy {
    #[prost(string, tag = "1")]
    kind: String,
    #[prost(btree_map = "string, string", tag = "2")]
    params: std::collections::BTreeMap<String, String>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StoredOverride {
    /// 0 = no weight override.
    #[prost(uint32, tag = "1")]
    weight: u32,
    #[prost(bool, tag = "2")]
    drained: bool,
}

/// A service's routing rules and cluster modes. The rule and mode messages
/// are the wire API's (`lb.v1.Rule`, `lb.v1.ClusterConfig`), which only
/// grows compatibly; they are re-validated on load like everything else.
#[derive(Clone, PartialEq, prost::Message)]
struct StoredRouting {
    #[prost(message, repeated, tag = "1")]
    rules: Vec<lb_proto::v1::Rule>,
    #[prost(message, optional, tag = "2")]
    cluster: Option<lb_proto::v1::ClusterConfig>,
}

/// A service's routing settings, as loaded from the store.
pub type Routing = (Vec<Rule>, ClusterConfig);

/// The daemon's durable state.
#[derive(Clone)]
pub struct Store {
    db: sled::Db,
    instances: sled::Tree,
    policies: sled::Tree,
    overrides: sled::Tree,
    routing: sled::Tree,
    meta: sled::Tree,
}

fn instance_key(service: &str, id: &str) -> Vec<u8> {
    // Names are validated to printable ASCII, so NUL cannot occur inside them.
    let mut k = Vec::with_capacity(service.len() + 1 + id.len());
    k.extend_from_slice(service.as_bytes());
    k.push(0);
    k.extend_from_slice(id.as_bytes());
    k
}

impl Store {
    /// Opens (or creates) the store in `dir`.
    ///
    /// If the directory's lock is held (another lb-server uses it, or a
    /// previous one in this process is still letting go), retries for up to
    /// two seconds before giving up with that error.
    pub fn open(dir: &Path) -> Result<Store, StoreError> {
        let mut tries = 0;
        let db = loop {
            // No background flusher: every acknowledged write is flushed
            // explicitly, and a flusher thread would hold the directory lock
            // for a moment after the store is dropped.
            match sled::Config::new().path(dir).flush_every_ms(None).open() {
                Ok(db) => break db,
                Err(e) if tries < 40 && e.to_string().contains("could not acquire lock") => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => return Err(e.into()),
            }
        };
        Ok(Store {
            instances: db.open_tree("instances")?,
            policies: db.open_tree("policies")?,
            overrides: db.open_tree("overrides")?,
            routing: db.open_tree("routing")?,
            meta: db.open_tree("meta")?,
            db,
        })
    }

    /// Increments and durably records the generation; plan versions are
    /// prefixed with it so they keep increasing across restarts.
    pub fn next_generation(&self) -> Result<u64, StoreError> {
        let prev = self
            .meta
            .get("generation")?
            .and_then(|v| <[u8; 8]>::try_from(v.as_ref()).ok())
            .map(u64::from_be_bytes)
            .unwrap_or(0);
        let next = prev + 1;
        self.meta.insert("generation", &next.to_be_bytes())?;
        self.db.flush()?;
        Ok(next)
    }

    /// Writes (not yet durably) an instance's registration; `ttl` is `None`
    /// for a static instance.
    pub fn put_instance(
        &self,
        spec: &InstanceSpec,
        ttl: Option<Duration>,
    ) -> Result<(), StoreError> {
        let rec = StoredInstance {
            service: spec.service.clone(),
            instance_id: spec.instance_id.clone(),
            address: spec.address.clone(),
            zone: spec.zone.clone(),
            weight: spec.weight,
            labels: spec.labels.clone(),
            version: spec.version.clone(),
            ttl_ms: ttl.map_or(0, |t| t.as_millis() as u64),
            token: spec.token.clone(),
            is_static: ttl.is_none(),
        };
        self.instances.insert(
            instance_key(&spec.service, &spec.instance_id),
            rec.encode_to_vec(),
        )?;
        Ok(())
    }

    /// Deletes (not yet durably) an instance's registration.
    pub fn delete_instance(&self, key: &InstanceKey) -> Result<(), StoreError> {
        self.instances
            .remove(instance_key(&key.service, &key.instance_id))?;
        Ok(())
    }

    /// Every stored registration that still passes validation. Records that do
    /// not decode or validate (written by a broken or newer build) are skipped
    /// with a warning rather than served.
    /// The TTL is `None` for a static instance.
    pub fn instances(&self) -> Result<Vec<(InstanceSpec, Option<Duration>)>, StoreError> {
        let mut out = Vec::new();
        for item in self.instances.iter() {
            let (k, v) = item?;
            let rec = match StoredInstance::decode(v.as_ref()) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = ?String::from_utf8_lossy(&k), error = %e, "skipping undecodable instance record");
                    continue;
                }
            };
            let spec = InstanceSpec {
                service: rec.service,
                instance_id: rec.instance_id,
                address: rec.address,
                zone: rec.zone,
                weight: rec.weight,
                labels: rec.labels,
                version: rec.version,
                token: rec.token,
            };
            if let Err(e) = spec.check() {
                tracing::warn!(key = ?String::from_utf8_lossy(&k), error = %e, "skipping invalid instance record");
                continue;
            }
            let ttl = (!rec.is_static).then(|| Duration::from_millis(rec.ttl_ms));
            out.push((spec.with_token(), ttl));
        }
        Ok(out)
    }

    /// Writes (not yet durably) a service's policy.
    pub fn put_policy(&self, service: &str, policy: &ServicePolicy) -> Result<(), StoreError> {
        let rec = StoredPolicy {
            kind: policy.kind.name().to_string(),
            params: policy.params(),
        };
        self.policies
            .insert(service.as_bytes(), rec.encode_to_vec())?;
        Ok(())
    }

    /// Every stored service policy, re-validated on top of `base` (records a
    /// newer build wrote and this one cannot read are skipped with a warning).
    pub fn policies(
        &self,
        base: &ServicePolicy,
    ) -> Result<Vec<(String, ServicePolicy)>, StoreError> {
        let mut out = Vec::new();
        for item in self.policies.iter() {
            let (k, v) = item?;
            let service = String::from_utf8_lossy(&k).into_owned();
            let parsed = StoredPolicy::decode(v.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    ServicePolicy::parse(&r.kind, &r.params, base).map_err(|e| e.to_string())
                });
            match parsed {
                Ok(p) => out.push((service, p)),
                Err(e) => tracing::warn!(%service, error = %e, "skipping unreadable policy record"),
            }
        }
        Ok(out)
    }

    /// Writes (not yet durably) an instance's override; the default deletes it.
    pub fn put_override(&self, key: &InstanceKey, o: &Override) -> Result<(), StoreError> {
        let k = instance_key(&key.service, &key.instance_id);
        if *o == Override::default() {
            self.overrides.remove(k)?;
        } else {
            let rec = StoredOverride {
                weight: o.weight.unwrap_or(0),
                drained: o.drained,
            };
            self.overrides.insert(k, rec.encode_to_vec())?;
        }
        Ok(())
    }

    /// Every stored override.
    pub fn overrides(&self) -> Result<Vec<(InstanceKey, Override)>, StoreError> {
        let mut out = Vec::new();
        for item in self.overrides.iter() {
            let (k, v) = item?;
            let key = String::from_utf8_lossy(&k).into_owned();
            let Some((service, id)) = key.split_once('\0') else {
                tracing::warn!(%key, "skipping malformed override key");
                continue;
            };
            match StoredOverride::decode(v.as_ref()) {
                Ok(r) => out.push((
                    InstanceKey {
                        service: service.to_string(),
                        instance_id: id.to_string(),
                    },
                    Override {
                        weight: (r.weight > 0).then_some(r.weight),
                        drained: r.drained,
                    },
                )),
                Err(e) => tracing::warn!(%key, error = %e, "skipping undecodable override"),
            }
        }
        Ok(out)
    }

    /// Writes (not yet durably) a service's rules and cluster modes; with
    /// none of either, deletes the record.
    pub fn put_routing(
        &self,
        service: &str,
        rules: &[Rule],
        cluster: &ClusterConfig,
    ) -> Result<(), StoreError> {
        if rules.is_empty() && *cluster == ClusterConfig::default() {
            self.routing.remove(service.as_bytes())?;
            return Ok(());
        }
        let rec = StoredRouting {
            rules: rules.iter().map(crate::pb::rule_pb).collect(),
            cluster: Some(crate::pb::cluster_config_pb(cluster)),
        };
        self.routing
            .insert(service.as_bytes(), rec.encode_to_vec())?;
        Ok(())
    }

    /// Every stored service's rules and cluster modes, re-validated (a record
    /// that no longer validates is skipped with a warning).
    pub fn routing(&self) -> Result<Vec<(String, Routing)>, StoreError> {
        let mut out = Vec::new();
        for item in self.routing.iter() {
            let (k, v) = item?;
            let service = String::from_utf8_lossy(&k).into_owned();
            let parsed = StoredRouting::decode(v.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|r| {
                    let rules = r
                        .rules
                        .into_iter()
                        .map(|x| crate::pb::rule(Some(x), "rule"))
                        .collect::<Result<Vec<Rule>, _>>()
                        .map_err(|e| e.to_string())?;
                    crate::routing::check(&rules).map_err(|e| e.to_string())?;
                    let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
                    let cluster = crate::pb::cluster_config(r.cluster, &names, "cluster")
                        .map_err(|e| e.to_string())?;
                    Ok((rules, cluster))
                });
            match parsed {
                Ok(x) => out.push((service, x)),
                Err(e) => {
                    tracing::warn!(%service, error = %e, "skipping unreadable routing record")
                }
            }
        }
        Ok(out)
    }

    /// Makes every write so far durable.
    pub async fn flush(&self) -> Result<(), StoreError> {
        self.db.flush_async().await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[tokio::test]
    async fn round_trip_and_generation() {
        let dir = tempfile::tempdir().unwrap();
        let spec = InstanceSpec {
            service: "svc".into(),
            instance_id: "a".into(),
            address: "127.0.0.1:9".into(),
            zone: "z1".into(),
            weight: 7,
            labels: BTreeMap::from([("group".into(), "B".into())]),
            version: "1.2".into(),
            token: String::new(),
        };
        let mut fixed = spec.clone();
        fixed.instance_id = "s".into();
        fixed.token = "tok-1".into();
        {
            let s = Store::open(dir.path()).unwrap();
            assert_eq!(s.next_generation().unwrap(), 1);
            s.put_instance(&spec, Some(Duration::from_secs(3))).unwrap();
            s.put_instance(&fixed, None).unwrap();
            let mut other = spec.clone();
            other.instance_id = "b".into();
            s.put_instance(&other, Some(Duration::from_secs(3)))
                .unwrap();
            s.delete_instance(&other.key()).unwrap();
            s.put_policy("svc", &ServicePolicy::default()).unwrap();
            s.put_override(
                &spec.key(),
                &Override {
                    weight: Some(9),
                    drained: true,
                },
            )
            .unwrap();
            s.flush().await.unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        assert_eq!(s.next_generation().unwrap(), 2);
        assert_eq!(
            s.instances().unwrap(),
            vec![
                // Loaded with its token filled in (derived: none was registered).
                (spec.clone().with_token(), Some(Duration::from_secs(3))),
                (fixed, None)
            ]
        );
        assert_eq!(
            s.policies(&ServicePolicy::default()).unwrap(),
            vec![("svc".to_string(), ServicePolicy::default())]
        );
        assert_eq!(
            s.overrides().unwrap(),
            vec![(
                spec.key(),
                Override {
                    weight: Some(9),
                    drained: true
                }
            )]
        );
    }
}
