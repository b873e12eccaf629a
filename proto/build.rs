//! Compiles the .proto files with the vendored protoc, so no system package is needed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // Build scripts are single-threaded; prost-build reads PROTOC below.
    std::env::set_var("PROTOC", protoc);
    let files = [
        "proto/types.proto",
        "proto/networks.proto",
        "proto/services.proto",
        "proto/ca.proto",
        "proto/access.proto",
        "proto/control.proto",
        "proto/dispatcher.proto",
        "proto/daemon.proto",
        "proto/raft.proto",
    ];
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    // Key material and token secrets get hand-written, redacted Debug impls (see lib.rs).
    tonic_prost_build::configure()
        .skip_debug([
            "shoal.RootCa",
            "shoal.RootRotation",
            "shoal.RotateRootCARequest",
            "shoal.JoinTokenRecord",
            "shoal.UnlockKey",
            "shoal.SecretVersion",
            "shoal.SecretData",
            "shoal.CreateSecretRequest",
            "shoal.UpdateSecretRequest",
            "shoal.InitResponse",
            "shoal.JoinRequest",
            "shoal.IssueNodeCertificateRequest",
            "shoal.UnlockRequest",
            "shoal.JoinTokenInfo",
            "shoal.UnlockKeyInfo",
            "shoal.RegistryAuth",
            "shoal.TrustTimestampKey",
        ])
        .compile_protos(&files, &["proto"])?;
    Ok(())
}
