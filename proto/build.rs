//! Compiles `lb/v1/lb.proto` and `grpc/lb/v1/load_balancer.proto` with protox (pure Rust), so no system `protoc` is needed.

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
    // Bytes that do not decode are the caller's error: see src/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::codec::LbCodec")
        // The HTTP API (`lb-server --http-listen`, /api/...) answers with
        // the admin API's own messages, as JSON.
        .type_attribute(".lb.v1", "#[derive(serde::Serialize)]")
        .compile_fds(fds)?;
    Ok(())
}
