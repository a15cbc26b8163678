//! Generates the CSI Identity and Node services from the hand-written `proto/csi.proto`.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC from the environment.
    unsafe { std::env::set_var("PROTOC", protoc_bin_vendored::protoc_bin_path()?) };
    // google/protobuf/wrappers.proto (ProbeResponse.ready) comes with the vendored protoc.
    let includes = [PathBuf::from("proto"), protoc_bin_vendored::include_path()?];
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&[PathBuf::from("proto/csi.proto")], &includes)?;
    println!("cargo:rerun-if-changed=proto/csi.proto");
    Ok(())
}
