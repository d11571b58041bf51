//! Compiles the .proto files with a vendored protoc, so a fresh machine needs none installed.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let protos = [
        "proto/meta.proto",
        "proto/error.proto",
        "proto/kv.proto",
        "proto/engine.proto",
        "proto/raft.proto",
        "proto/storage.proto",
        "proto/placement.proto",
        "proto/api.proto",
    ];
    tonic_build::configure().compile_protos(&protos, &["proto"])?;
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    Ok(())
}
