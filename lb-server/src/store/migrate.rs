//! Layout 1 → layout 2, on the first start of this version on an old
//! directory.
//!
//! Layout 1 (lb-server up to commit 14429aa) kept one sled tree per kind of
//! record, no revisions, and stored routing rules and cluster modes as the
//! wire API's `lb.v1.Rule` and `lb.v1.ClusterConfig` messages. Its records
//! are read with the decoders that wrote them (the routing ones through the
//! API's own validating conversions), rewritten as layout 2 records at
//! revision 1 in one atomic batch and flushed; only then is the layout
//! recorded, and only after that are the old trees dropped. A crash at any
//! point leaves either the old layout (migrated again at the next start) or
//! the new one.

use prost::Message;

use super::record::{self, StoredInstance, StoredPolicy, REVISION_KEY};
use super::{Record, StoreError};
use crate::pb::v1 as pb;
use lb_core::model::InstanceKey;

/// The trees of layout 1.
const TREES: [&str; 4] = ["instances", "policies", "overrides", "routing"];

/// Layout 1's routing record: the wire API's messages.
#[derive(Clone, PartialEq, prost::Message)]
struct Routing {
    #[prost(message, repeated, tag = "1")]
    rules: Vec<lb_proto::v1::Rule>,
    #[prost(message, optional, tag = "2")]
    cluster: Option<lb_proto::v1::ClusterConfig>,
}

fn has_tree(db: &sled::Db, name: &str) -> bool {
    db.tree_names()
        .iter()
        .any(|t| t.as_ref() == name.as_bytes())
}

/// One layout 1 record as a layout 2 one, or why not.
fn convert(tree: &str, key: &[u8], value: &[u8]) -> Result<Record, String> {
    let text = String::from_utf8_lossy(key).into_owned();
    let pair = || -> Result<InstanceKey, String> {
        let (service, id) = text.split_once('\0').ok_or("malformed key")?;
        Ok(InstanceKey {
            service: service.to_string(),
            instance_id: id.to_string(),
        })
    };
    let decoded = |e: prost::DecodeError| e.to_string();
    let invalid = |e: lb_core::model::FieldError| e.to_string();
    match tree {
        "instances" => {
            record::instance(StoredInstance::decode(value).map_err(decoded)?).map_err(invalid)
        }
        "policies" => {
            let mut p = StoredPolicy::decode(value).map_err(decoded)?;
            p.service = text;
            record::policy(p).map_err(invalid)
        }
        "overrides" => {
            let o = record::StoredOverride::decode(value).map_err(decoded)?;
            Ok(Record::Override {
                key: pair()?,
                over: record::over(o.weight, o.drained).map_err(invalid)?,
            })
        }
        _ => {
            let r = Routing::decode(value).map_err(decoded)?;
            let rules = r
                .rules
                .into_iter()
                .map(|x| pb::rule(Some(x), "rule"))
                .collect::<Result<Vec<_>, _>>()
                .map_err(invalid)?;
            let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
            let cluster = pb::cluster_config(r.cluster, &names, "cluster").map_err(invalid)?;
            record::routing(text, rules, cluster).map_err(invalid)
        }
    }
}

/// Rewrites a layout 1 directory's records as layout 2 ones in `records`
/// (nothing to do for a new directory).
pub(super) fn from_layout_1(db: &sled::Db, records: &sled::Tree) -> Result<(), StoreError> {
    if !TREES.iter().any(|t| has_tree(db, t)) {
        return Ok(());
    }
    const REVISION: u64 = 1;
    let mut batch = sled::Batch::default();
    let (mut moved, mut skipped) = (0usize, 0usize);
    for name in TREES.into_iter().filter(|t| has_tree(db, t)) {
        for item in db.open_tree(name)?.iter() {
            let (k, v) = item?;
            match convert(name, &k, &v) {
                Ok(r) => {
                    batch.insert(record::encode_key(&r.key()), record::encode(&r, REVISION));
                    moved += 1;
                }
                Err(e) => {
                    skipped += 1;
                    tracing::warn!(tree = name, key = ?String::from_utf8_lossy(&k), error = %e, "skipping a layout 1 record that does not read back");
                }
            }
        }
    }
    batch.insert(REVISION_KEY, &REVISION.to_be_bytes());
    records.apply_batch(batch)?;
    db.flush()?;
    tracing::info!(
        records = moved,
        skipped,
        "store migrated from layout 1 to layout {}",
        record::LAYOUT
    );
    Ok(())
}

/// Drops layout 1's trees, if any are left.
pub(super) fn drop_layout_1(db: &sled::Db) -> Result<(), StoreError> {
    let mut dropped = false;
    for t in TREES.into_iter().filter(|t| has_tree(db, t)) {
        db.drop_tree(t)?;
        dropped = true;
    }
    if dropped {
        db.flush()?;
    }
    Ok(())
}
