//! Generated kubelet plugin registration types and gRPC stubs (from
//! `proto/pluginregistration.proto`); the rest of the crate uses `api::…`.
#![allow(clippy::all, missing_docs)]

tonic::include_proto!("pluginregistration");

/// `PluginInfo.type` of a CSI driver.
pub const CSI_PLUGIN: &str = "CSIPlugin";
