//! Generated CSI v1 types and gRPC stubs (from `proto/csi.proto`).
//!
//! Generated code is confined to this module; the rest of the crate uses `csi::v1::…`.
#![allow(clippy::all, missing_docs)]

/// Package `csi.v1`: Identity and Node services, their messages and enums.
pub mod v1 {
    tonic::include_proto!("csi.v1");
}
