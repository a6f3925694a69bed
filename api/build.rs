//! Compiles `proto/*.proto` with the vendored protoc (no system protoc);
//! the generated code stays in `OUT_DIR`, included by `src/lib.rs` only.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/master.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(config, &protos, &["proto"])?;
    Ok(())
}
