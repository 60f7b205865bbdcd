//! Compiles `lb/v1/lb.proto` and `grpc/lb/v1/load_balancer.proto` with protox (pure Rust), so no system `protoc` is needed.

use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

/// Every enum-typed field of `lb.v1`, with the Rust type of its enum: each
/// serializes as its value's name (see `src/json.rs`). The build fails on
/// an enum field missing here (and on an entry that names none), so no
/// enum slips into the JSON as a bare number.
const ENUM_FIELDS: &[(&str, &str)] = &[
    (".lb.v1.ClusterMode.kind", "crate::v1::cluster_mode::Kind"),
    (
        ".lb.v1.ClusterMode.collect",
        "crate::v1::cluster_mode::Collect",
    ),
    (".lb.v1.ClusterChange.kind", "crate::v1::cluster_mode::Kind"),
    (
        ".lb.v1.ClusterChange.collect",
        "crate::v1::cluster_mode::Collect",
    ),
];

/// The `serialize_with` attribute of each enum-typed field of `lb.v1`, by
/// the field's full path (`.lb.v1.ClusterMode.kind`).
fn enum_field_attributes(fds: &FileDescriptorSet) -> Result<Vec<(String, String)>, String> {
    let mut attrs = Vec::new();
    for file in fds.file.iter().filter(|f| f.package() == "lb.v1") {
        let mut messages: Vec<(String, &DescriptorProto)> = file
            .message_type
            .iter()
            .map(|m| (format!(".lb.v1.{}", m.name()), m))
            .collect();
        while let Some((path, m)) = messages.pop() {
            messages.extend(
                m.nested_type
                    .iter()
                    .map(|n| (format!("{path}.{}", n.name()), n)),
            );
            let map_entry = m.options.as_ref().is_some_and(|o| o.map_entry());
            for f in m.field.iter().filter(|f| f.r#type() == Type::Enum) {
                let field = format!("{path}.{}", f.name());
                if map_entry || f.label() == Label::Repeated {
                    return Err(format!(
                        "{field}: a repeated or map enum field needs its own helper in src/json.rs"
                    ));
                }
                let rust = ENUM_FIELDS
                    .iter()
                    .find(|(p, _)| *p == field)
                    .map(|(_, rust)| rust)
                    .ok_or_else(|| {
                        format!("{field} is an enum field: add it to ENUM_FIELDS in proto/build.rs")
                    })?;
                let helper = if f.proto3_optional() {
                    "optional_enum_name"
                } else {
                    "enum_name"
                };
                attrs.push((
                    field,
                    format!("#[serde(serialize_with = \"crate::json::{helper}::<{rust}, _>\")]"),
                ));
            }
        }
    }
    if let Some((stale, _)) = ENUM_FIELDS
        .iter()
        .find(|(p, _)| !attrs.iter().any(|(f, _)| f == p))
    {
        return Err(format!(
            "ENUM_FIELDS in proto/build.rs names {stale}, which is no enum field of lb.v1"
        ));
    }
    Ok(attrs)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["lb/v1/lb.proto", "grpc/lb/v1/load_balancer.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // The descriptors themselves, for gRPC server reflection.
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("lb_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    let enum_fields = enum_field_attributes(&fds)?;
    // Bytes that do not decode are the caller's error: see src/codec.rs.
    let mut build = tonic_prost_build::configure()
        .codec_path("crate::codec::LbCodec")
        // The HTTP API (`lb-server --http-listen`, /api/...) and
        // `lb-server ctl --output json` print the admin API's own messages
        // as JSON (the mapping: src/json.rs).
        .type_attribute(".lb.v1", "#[derive(serde::Serialize)]");
    for (field, attribute) in enum_fields {
        build = build.field_attribute(field, attribute);
    }
    build.compile_fds(fds)?;
    Ok(())
}
