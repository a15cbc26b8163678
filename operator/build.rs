//! Generates the SPIRE server API client and the Workload API client from the
//! hand-written protos in `proto/`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    let protos = [
        "proto/spire/api/types.proto",
        "proto/spire/api/entry.proto",
        "proto/spire/api/bundle.proto",
        "proto/spire/api/svid.proto",
        "proto/spire/api/trustdomain.proto",
        "proto/spire/api/agent.proto",
        "proto/spiffe/workload.proto",
    ];
    tonic_prost_build::configure()
        .build_server(true)
        .compile_protos(&protos, &["proto"])?;
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    Ok(())
}
