//! How `lb.v1`'s messages read as JSON: what the daemon's HTTP API
//! (`/api/services`) serves and `lb-server ctl --output json` prints, both
//! with `serde_json` over the `serde::Serialize` derived on every `lb.v1`
//! type (`build.rs`).
//!
//! The mapping, next to protobuf's canonical JSON mapping:
//! - field names are those of `lb.proto` (`instance_id`), as protobuf's
//!   printers write them with "preserve proto field names";
//! - an enum-typed field is its value's name (`"kind": "FAILOVER"`), as in
//!   protobuf's mapping; a number that names no value (a newer peer's)
//!   stays a number. prost keeps these fields as `i32`: `build.rs` points
//!   each of them at [`enum_name`] or [`optional_enum_name`];
//! - 64-bit integers are JSON numbers, not strings as in protobuf's
//!   mapping (exact for `serde_json` and most tools; JavaScript's `Number`
//!   rounds past 2^53, which no counter here reaches in practice);
//! - every field is present, defaults included (protobuf's printers leave
//!   them out by default); an absent message or an unset `optional` field
//!   is `null`;
//! - a map is an object; its integer keys (`failed_by_code`) are strings,
//!   as JSON requires (`"14": 3`);
//! - a `double` that is not finite is `null` (protobuf writes `"NaN"`,
//!   `"Infinity"`); the daemon never sends one.

use std::marker::PhantomData;

use serde::{Serialize, Serializer};

/// A protobuf enum of `lb.v1`: a value prost stores as `i32`, with a name.
pub trait ProtoEnum: TryFrom<i32> {
    /// The value's name as in the `.proto` file (`"FAILOVER"`).
    fn proto_name(&self) -> &'static str;
}

/// Serializes an enum-typed field (an `i32` in prost's types) of enum `E`
/// as its value's name, or as the number when `E` has no such value.
pub fn enum_name<E: ProtoEnum, S: Serializer>(value: &i32, s: S) -> Result<S::Ok, S::Error> {
    match E::try_from(*value) {
        Ok(e) => s.serialize_str(e.proto_name()),
        Err(_) => s.serialize_i32(*value),
    }
}

/// [`enum_name`] for an `optional` enum field: `null` when unset.
pub fn optional_enum_name<E: ProtoEnum, S: Serializer>(
    value: &Option<i32>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(v) => s.serialize_some(&Named::<E>(*v, PhantomData)),
        None => s.serialize_none(),
    }
}

/// A value of enum `E`, serialized by [`enum_name`].
struct Named<E>(i32, PhantomData<E>);

impl<E: ProtoEnum> Serialize for Named<E> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        enum_name::<E, S>(&self.0, s)
    }
}

/// Implements [`ProtoEnum`] for prost's enums, with the names prost-build
/// generates (`as_str_name`).
macro_rules! proto_enums {
    ($($e:ty),* $(,)?) => {
        $(impl ProtoEnum for $e {
            fn proto_name(&self) -> &'static str {
                self.as_str_name()
            }
        })*
    };
}

proto_enums!(
    crate::v1::cluster_mode::Kind,
    crate::v1::cluster_mode::Collect,
);

#[cfg(test)]
mod tests {
    use crate::v1::{cluster_mode, ClusterChange, ClusterMode};

    #[test]
    fn enum_fields_are_their_value_names() {
        let mode = ClusterMode {
            kind: cluster_mode::Kind::Broadcast as i32,
            collect: cluster_mode::Collect::All as i32,
            ..ClusterMode::default()
        };
        let json = serde_json::to_value(&mode).expect("serializes");
        assert_eq!(json["kind"], "BROADCAST");
        assert_eq!(json["collect"], "ALL");
        assert_eq!(json["attempts"], 0, "defaults are present");

        let unknown = ClusterMode {
            kind: 99,
            ..ClusterMode::default()
        };
        let json = serde_json::to_value(&unknown).expect("serializes");
        assert_eq!(json["kind"], 99, "a number that names no value");
        assert_eq!(json["collect"], "FIRST");

        let change = ClusterChange {
            kind: Some(cluster_mode::Kind::Forking as i32),
            ..ClusterChange::default()
        };
        let json = serde_json::to_value(&change).expect("serializes");
        assert_eq!(json["kind"], "FORKING");
        assert!(json["collect"].is_null(), "unset: {json}");
    }
}
