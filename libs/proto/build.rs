//! Compiles every `.proto` under `proto/` once, with the descriptor set that
//! gRPC reflection serves.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // A fresh machine has no protoc; the vendored binary is used unless PROTOC
    // names a real file.
    let protoc_set = std::env::var_os("PROTOC")
        .map(|p| PathBuf::from(p).is_file())
        .unwrap_or(false);
    if !protoc_set {
        return compile(Some(protoc_bin_vendored::protoc_bin_path()?));
    }
    compile(None)
}

fn compile(protoc: Option<PathBuf>) -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "runnel/common/v1/common.proto",
        "runnel/coordinator/v1/coordinator.proto",
        "runnel/storage/v1/storage.proto",
        "runnel/ingest/v1/ingest.proto",
        "runnel/groups/v1/groups.proto",
    ];
    let paths: Vec<PathBuf> = files.iter().map(|f| root.join(f)).collect();
    for p in &paths {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = tonic_prost_build::Config::new();
    if let Some(protoc) = protoc {
        config.protoc_executable(protoc);
    }
    config.bytes(["."]);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("runnel_descriptor.bin"))
        .compile_with_config(config, &paths, &[root])?;
    Ok(())
}
