//! The Registration service kubelet's plugin watcher calls, on
//! `<plugin registration dir>/<driver name>-reg.sock`.

use std::future::Future;
use std::io;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

use crate::api::registration_server::{Registration, RegistrationServer};
use crate::api::{
    CSI_PLUGIN, InfoRequest, PluginInfo, RegistrationStatus, RegistrationStatusResponse,
};
use crate::authority::relay;

/// Why the registration socket could not be served.
#[derive(Debug, thiserror::Error)]
pub enum RegistrationError {
    /// Something other than a socket sits at the socket path; it is not ours to delete.
    #[error("{0:?} exists and is not a socket")]
    NotASocket(PathBuf),
    /// Removing a stale socket, binding or setting the mode failed.
    #[error("creating registration socket {path:?}")]
    Bind {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("serving the Registration service")]
    Transport(#[from] tonic::transport::Error),
}

/// Where kubelet looks for this driver's registration socket: upstream's name, so a
/// switch between the two images leaves no second socket behind.
pub fn socket_path(registration_dir: &Path, driver_name: &str) -> PathBuf {
    registration_dir.join(format!("{driver_name}-reg.sock"))
}

/// Binds `path`, replacing a stale socket (a registrar killed without SIGTERM leaves
/// one), and makes it 0600: only kubelet (root) needs it.
pub fn bind(path: &Path) -> Result<UnixListener, RegistrationError> {
    let bind_err = |source| RegistrationError::Bind {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path).map_err(bind_err)?,
        Ok(_) => return Err(RegistrationError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(bind_err(e)),
    }
    let listener = UnixListener::bind(path).map_err(bind_err)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(bind_err)?;
    Ok(listener)
}

/// Removes the socket, which makes kubelet deregister the driver. A socket already gone
/// is fine.
pub fn remove(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Answers kubelet: GetInfo describes the driver; a failed registration is passed on to
/// `refused`, so the process can exit non-zero and the container restart (upstream's
/// way of retrying).
#[derive(Debug, Clone)]
pub struct RegistrationService {
    info: PluginInfo,
    refused: mpsc::Sender<String>,
}

impl RegistrationService {
    /// The service for CSI driver `driver_name` whose socket kubelet reaches at `endpoint`
    /// (a path on the node, `--kubelet-registration-path`).
    pub fn new(driver_name: &str, endpoint: &str, refused: mpsc::Sender<String>) -> Self {
        Self {
            info: PluginInfo {
                r#type: CSI_PLUGIN.to_owned(),
                name: driver_name.to_owned(),
                endpoint: endpoint.to_owned(),
                supported_versions: crate::SUPPORTED_VERSIONS
                    .iter()
                    .map(|v| (*v).to_owned())
                    .collect(),
            },
            refused,
        }
    }
}

#[tonic::async_trait]
impl Registration for RegistrationService {
    async fn get_info(
        &self,
        _request: Request<InfoRequest>,
    ) -> Result<Response<PluginInfo>, Status> {
        tracing::debug!(driver = %self.info.name, "GetInfo");
        Ok(Response::new(self.info.clone()))
    }

    async fn notify_registration_status(
        &self,
        request: Request<RegistrationStatus>,
    ) -> Result<Response<RegistrationStatusResponse>, Status> {
        let status = request.into_inner();
        if status.plugin_registered {
            tracing::info!(driver = %self.info.name, endpoint = %self.info.endpoint, "kubelet registered the driver");
        } else {
            tracing::error!(
                driver = %self.info.name,
                error = %status.error,
                "kubelet failed to register the driver; exiting so that the container restarts"
            );
            // Full only if kubelet already said so; one report is enough.
            let _ = self.refused.try_send(status.error);
        }
        Ok(Response::new(RegistrationStatusResponse {}))
    }
}

/// Serves `service` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: UnixListener,
    service: RegistrationService,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RegistrationError> {
    use tokio_stream::StreamExt;
    // kubelet's requests carry an authority tonic refuses; see crate::authority.
    let incoming = UnixListenerStream::new(listener).map(|stream| stream.map(relay));
    tonic::transport::Server::builder()
        .add_service(RegistrationServer::new(service))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::registration_client::RegistrationClient;
    use crate::driver::uds_channel;

    #[tokio::test]
    async fn kubelet_gets_the_driver_and_a_refusal_is_passed_on() {
        let dir = tempfile::tempdir().unwrap();
        let path = socket_path(dir.path(), "csi.example.org");
        assert_eq!(path, dir.path().join("csi.example.org-reg.sock"));
        // A stale socket from an earlier run is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        let listener = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let (tx, mut refused) = mpsc::channel(1);
        let service = RegistrationService::new(
            "csi.example.org",
            "/var/lib/kubelet/plugins/csi.example.org/csi.sock",
            tx,
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(listener, service, async {
            let _ = stopped.await;
        }));

        let mut client = RegistrationClient::new(uds_channel(&path).await.unwrap());
        let info = client.get_info(InfoRequest {}).await.unwrap().into_inner();
        assert_eq!(
            info,
            PluginInfo {
                r#type: "CSIPlugin".into(),
                name: "csi.example.org".into(),
                endpoint: "/var/lib/kubelet/plugins/csi.example.org/csi.sock".into(),
                supported_versions: vec!["1.0.0".into()],
            }
        );
        client
            .notify_registration_status(RegistrationStatus {
                plugin_registered: true,
                error: String::new(),
            })
            .await
            .unwrap();
        assert!(refused.try_recv().is_err(), "success is no refusal");
        client
            .notify_registration_status(RegistrationStatus {
                plugin_registered: false,
                error: "version 9.0.0 not supported".into(),
            })
            .await
            .unwrap();
        assert_eq!(refused.recv().await.unwrap(), "version 9.0.0 not supported");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn a_file_that_is_not_a_socket_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x-reg.sock");
        std::fs::write(&path, "keep me").unwrap();
        assert!(matches!(bind(&path), Err(RegistrationError::NotASocket(_))));
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "keep me");
        remove(&dir.path().join("absent")).unwrap();
    }
}
