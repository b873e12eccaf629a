//! Compiles the .proto files with the vendored protoc, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded; PROTOC is read by prost-build below.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/types.proto",
        "proto/ca.proto",
        "proto/control.proto",
        "proto/dispatcher.proto",
        "proto/daemon.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    tonic_prost_build::configure().compile_protos(&files, &["proto"])?;
    Ok(())
}
