//! The CSI Identity service.

use std::path::PathBuf;

use tonic::{Request, Response, Status};

use crate::csi::v1 as csi;

/// Answers who we are and whether the agent socket directory is usable.
#[derive(Debug, Clone)]
pub struct IdentityService {
    /// The plugin name kubelet knows us by.
    pub plugin_name: String,
    /// The agent socket directory that Probe checks.
    pub agent_socket_dir: PathBuf,
    /// The socket file name inside it.
    pub agent_socket_name: String,
}

impl IdentityService {
    /// Ready when the directory exists and holds the agent socket.
    pub fn ready(&self) -> bool {
        self.agent_socket_dir.is_dir()
            && self.agent_socket_dir.join(&self.agent_socket_name).exists()
    }
}

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityService {
    async fn get_plugin_info(
        &self,
        _: Request<csi::GetPluginInfoRequest>,
    ) -> Result<Response<csi::GetPluginInfoResponse>, Status> {
        Ok(Response::new(csi::GetPluginInfoResponse {
            name: self.plugin_name.clone(),
            vendor_version: env!("CARGO_PKG_VERSION").to_owned(),
            manifest: Default::default(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<csi::GetPluginCapabilitiesResponse>, Status> {
        // Node-only plugin: no controller service, no topology.
        Ok(Response::new(csi::GetPluginCapabilitiesResponse {
            capabilities: vec![],
        }))
    }

    async fn probe(
        &self,
        _: Request<csi::ProbeRequest>,
    ) -> Result<Response<csi::ProbeResponse>, Status> {
        let ready = self.ready();
        if !ready {
            tracing::info!(dir = %self.agent_socket_dir.display(), "probe: agent socket not present");
        }
        Ok(Response::new(csi::ProbeResponse { ready: Some(ready) }))
    }
}
