//! The CSI Identity service.

use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use tonic::{Request, Response, Status};

use crate::csi::v1 as csi;

/// Answers who we are and whether the agent socket directory is usable.
#[derive(Debug, Clone)]
pub struct IdentityService {
    /// The plugin name kubelet knows us by.
    pub plugin_name: String,
    /// The agent socket directory that Probe checks.
    pub agent_socket_dir: PathBuf,
    /// The socket file name inside it; `None`: any socket in the directory.
    pub agent_socket_name: Option<String>,
}

impl IdentityService {
    /// Ready when the directory holds the agent socket.
    pub fn ready(&self) -> bool {
        holds_socket(&self.agent_socket_dir, self.agent_socket_name.as_deref())
    }
}

/// Whether `dir` holds a Unix socket: the one called `name`, or any when `name` is `None`
/// (SPIRE's agent calls it `spire-agent.sock`, Istio's `socket`, others `agent.sock`,
/// and charts add symlink aliases, which count when they lead to a socket).
pub fn holds_socket(dir: &Path, name: Option<&str>) -> bool {
    let is_socket = |p: &Path| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_socket());
    match name {
        Some(name) => is_socket(&dir.join(name)),
        None => std::fs::read_dir(dir)
            .is_ok_and(|entries| entries.filter_map(Result::ok).any(|e| is_socket(&e.path()))),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_means_a_socket_of_any_name_unless_one_is_configured() {
        let dir = tempfile::tempdir().unwrap();
        let probe = |name: Option<&str>| IdentityService {
            plugin_name: "csi.spiffe.io".into(),
            agent_socket_dir: dir.path().to_owned(),
            agent_socket_name: name.map(str::to_owned),
        };
        assert!(!probe(None).ready(), "empty dir");
        std::fs::write(dir.path().join("spire-agent.sock"), "").unwrap();
        assert!(!probe(None).ready(), "a regular file is not a socket");
        // Istio's agent names its socket `socket`.
        let _listener = std::os::unix::net::UnixListener::bind(dir.path().join("socket")).unwrap();
        assert!(probe(None).ready());
        assert!(probe(Some("socket")).ready());
        assert!(!probe(Some("spire-agent.sock")).ready());
        std::os::unix::fs::symlink("socket", dir.path().join("agent.sock")).unwrap();
        assert!(
            probe(Some("agent.sock")).ready(),
            "a symlink alias to the socket"
        );
        let missing = IdentityService {
            agent_socket_dir: dir.path().join("missing"),
            ..probe(None)
        };
        assert!(!missing.ready());
    }
}
