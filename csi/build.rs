//! Compiles `proto/csi.proto` with the vendored protoc (no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/csi.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let include = protoc_bin_vendored::include_path()?;
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        .build_client(true)
        .compile_with_config(
            config,
            &protos,
            &["proto", include.to_str().ok_or("protoc include path")?],
        )?;
    Ok(())
}
