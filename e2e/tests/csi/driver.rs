//! The controller stand-in csi-sanity needs; the driver harness is `e2e::csi`.

use std::path::Path;

use e2e::csi::Driver;
use spiffe_csi_driver::csi::v1 as csi;
use tonic::transport::Channel;

pub use e2e::csi::our_driver;

/// csi-sanity v5.4.0 calls ControllerGetCapabilities before every Node spec and wants a
/// non-nil list, even when the plugin does not offer a controller. This stand-in answers
/// with a single UNKNOWN capability (which matches no real capability), so node-only
/// plugins can be tested; both drivers get the same stand-in. csi-sanity sends Identity
/// calls to the controller endpoint, so those are forwarded to the driver unchanged.
struct NoController;

#[tonic::async_trait]
impl csi::controller_server::Controller for NoController {
    async fn controller_get_capabilities(
        &self,
        _: tonic::Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<tonic::Response<csi::ControllerGetCapabilitiesResponse>, tonic::Status> {
        use csi::controller_service_capability::{Rpc, Type, rpc};
        Ok(tonic::Response::new(
            csi::ControllerGetCapabilitiesResponse {
                capabilities: vec![csi::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc {
                        r#type: rpc::Type::Unknown.into(),
                    })),
                }],
            },
        ))
    }
}

/// Forwards Identity calls to the driver under test.
struct IdentityProxy(csi::identity_client::IdentityClient<Channel>);

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityProxy {
    async fn get_plugin_info(
        &self,
        request: tonic::Request<csi::GetPluginInfoRequest>,
    ) -> Result<tonic::Response<csi::GetPluginInfoResponse>, tonic::Status> {
        self.0.clone().get_plugin_info(request.into_inner()).await
    }

    async fn get_plugin_capabilities(
        &self,
        request: tonic::Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<tonic::Response<csi::GetPluginCapabilitiesResponse>, tonic::Status> {
        self.0
            .clone()
            .get_plugin_capabilities(request.into_inner())
            .await
    }

    async fn probe(
        &self,
        request: tonic::Request<csi::ProbeRequest>,
    ) -> Result<tonic::Response<csi::ProbeResponse>, tonic::Status> {
        self.0.clone().probe(request.into_inner()).await
    }
}

/// Serves [`NoController`] (and Identity, forwarded to `driver`) on `socket` until the
/// returned task is aborted.
pub async fn spawn_controller_stand_in(
    socket: &Path,
    driver: &Driver,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::UnixListener::bind(socket)?;
    let identity = IdentityProxy(csi::identity_client::IdentityClient::new(
        driver.channel().await?,
    ));
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(identity))
            .add_service(csi::controller_server::ControllerServer::new(NoController))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
    }))
}
