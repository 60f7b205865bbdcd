//! Compiles `lb/v1/lb.proto` and `grpc/lb/v1/load_balancer.proto` with protox (pure Rust), so no system `protoc` is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["lb/v1/lb.proto", "grpc/lb/v1/load_balancer.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["."])?;
    // Bytes that do not decode are the caller's error: see src/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::codec::LbCodec")
        .compile_fds(fds)?;
    Ok(())
}
