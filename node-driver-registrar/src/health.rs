//! `GET /healthz` on `--http-endpoint`, for the container's liveness probe: 200 while
//! kubelet can reach the registration socket and the driver answers; otherwise an error
//! status with the reason as the body, so the probe restarts the container, which
//! re-creates the socket and so registers again.

use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

use crate::api::InfoRequest;
use crate::api::registration_client::RegistrationClient;
use crate::driver::{self, error_chain};

/// What `/healthz` checks.
#[derive(Debug, Clone)]
pub struct Health {
    /// The registration socket this process serves.
    pub registration_socket: PathBuf,
    /// The driver's socket (`--csi-address`).
    pub driver_socket: PathBuf,
    /// The registered driver name, which both must still report.
    pub driver_name: String,
    /// Per call (`--timeout`).
    pub timeout: Duration,
}

/// Why the registrar is unhealthy.
#[derive(Debug, thiserror::Error)]
pub enum Unhealthy {
    /// The socket was deleted (or never created): kubelet has deregistered the driver.
    #[error("registration socket {0:?} does not exist")]
    NoSocket(PathBuf),
    /// Something else sits at the socket path.
    #[error("{0:?} is not a socket")]
    NotASocket(PathBuf),
    /// The registration socket does not answer GetInfo.
    #[error("registration socket {path:?} does not answer GetInfo: {reason}")]
    Registration {
        /// The socket.
        path: PathBuf,
        /// The error chain.
        reason: String,
    },
    /// GetInfo or the driver reports another name than the one registered.
    #[error("{what} reports driver name {got:?}, registered as {want:?}")]
    WrongName {
        /// Who answered.
        what: &'static str,
        /// The name in the answer.
        got: String,
        /// The registered name.
        want: String,
    },
    /// The driver does not answer.
    #[error("the CSI driver does not answer GetPluginInfo")]
    Driver(#[from] driver::DriverError),
}

impl Unhealthy {
    /// 404 for a missing socket (upstream's answer), 500 for anything else.
    pub fn status(&self) -> StatusCode {
        match self {
            Unhealthy::NoSocket(_) => StatusCode::NOT_FOUND,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl Health {
    /// Runs the checks: the socket exists, answers GetInfo with our name, and the driver
    /// answers GetPluginInfo with the same name.
    pub async fn check(&self) -> Result<(), Unhealthy> {
        let path = &self.registration_socket;
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {}
            Ok(_) => return Err(Unhealthy::NotASocket(path.clone())),
            Err(_) => return Err(Unhealthy::NoSocket(path.clone())),
        }
        let registration = |reason: String| Unhealthy::Registration {
            path: path.clone(),
            reason,
        };
        let ask = async {
            let channel = driver::uds_channel(path)
                .await
                .map_err(|e| registration(error_chain(&e)))?;
            RegistrationClient::new(channel)
                .get_info(InfoRequest {})
                .await
                .map_err(|e| registration(error_chain(&e)))
        };
        let info = tokio::time::timeout(self.timeout, ask)
            .await
            .map_err(|_| registration(format!("no answer within {:?}", self.timeout)))??
            .into_inner();
        self.same_name("the registration socket", info.name)?;
        let name = driver::plugin_name(&self.driver_socket, self.timeout).await?;
        self.same_name("the CSI driver", name)
    }

    fn same_name(&self, what: &'static str, got: String) -> Result<(), Unhealthy> {
        if got == self.driver_name {
            Ok(())
        } else {
            Err(Unhealthy::WrongName {
                what,
                got,
                want: self.driver_name.clone(),
            })
        }
    }
}

/// The HTTP routes: `/healthz`.
pub fn router(health: Arc<Health>) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(healthz))
        .with_state(health)
}

async fn healthz(State(health): State<Arc<Health>>) -> (StatusCode, String) {
    match health.check().await {
        Ok(()) => (StatusCode::OK, "ok".to_owned()),
        Err(e) => {
            let reason = error_chain(&e);
            tracing::error!(error = %reason, "health check failed");
            (e.status(), reason)
        }
    }
}

/// Listens on a Go-style `--http-endpoint` address: `host:port` on that host, `:port` on
/// every interface as Go does: `[::]` (which also takes IPv4 unless the host sets
/// `net.ipv6.bindv6only`, in which case `0.0.0.0` is bound beside it), or `0.0.0.0` alone
/// on a host without IPv6.
pub async fn listen(address: &str) -> std::io::Result<Vec<tokio::net::TcpListener>> {
    use tokio::net::TcpListener;
    let Some(port) = address.strip_prefix(':') else {
        return Ok(vec![TcpListener::bind(address).await?]);
    };
    let v4 = format!("0.0.0.0:{port}");
    let Ok(v6) = TcpListener::bind(format!("[::]:{port}")).await else {
        return Ok(vec![TcpListener::bind(v4).await?]);
    };
    // Fails with "address in use" exactly when the IPv6 socket already takes IPv4.
    let port = v6.local_addr()?.port();
    match TcpListener::bind(format!("0.0.0.0:{port}")).await {
        Ok(v4) => Ok(vec![v6, v4]),
        Err(_) => Ok(vec![v6]),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use axum::body::Body;
    use spiffe_csi_driver::csi::v1::identity_server::IdentityServer;
    use spiffe_csi_driver::identity::IdentityService;
    use tokio_stream::wrappers::UnixListenerStream;
    use tower::ServiceExt;

    use super::*;
    use crate::registration::{self, RegistrationService};

    /// Our CSI driver's Identity service on `socket`, until the task is aborted.
    fn driver(socket: &Path, name: &str) -> tokio::task::JoinHandle<()> {
        let listener = tokio::net::UnixListener::bind(socket).unwrap();
        let identity = IdentityService {
            plugin_name: name.to_owned(),
            agent_socket_dir: socket.with_file_name("agent"),
            agent_socket_name: None,
        };
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(IdentityServer::new(identity))
                .serve_with_incoming(UnixListenerStream::new(listener))
                .await
                .unwrap();
        })
    }

    async fn get_healthz(health: &Arc<Health>) -> (StatusCode, String) {
        let response = router(health.clone())
            .oneshot(
                axum::http::Request::get("/healthz")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 4096)
            .await
            .unwrap();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn a_port_alone_listens_on_ipv4_loopback_too() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let _listeners = listen(&format!(":{port}")).await.unwrap();
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn healthy_while_socket_and_driver_answer_with_the_registered_name() {
        let dir = tempfile::tempdir().unwrap();
        let driver_socket = dir.path().join("csi.sock");
        let running_driver = driver(&driver_socket, "csi.example.org");
        let socket = registration::socket_path(dir.path(), "csi.example.org");
        let listener = registration::bind(&socket).unwrap();
        let (tx, _refused) = tokio::sync::mpsc::channel(1);
        let service = RegistrationService::new("csi.example.org", "/p/csi.sock", tx);
        tokio::spawn(registration::serve(
            listener,
            service,
            std::future::pending(),
        ));
        let health = Arc::new(Health {
            registration_socket: socket.clone(),
            driver_socket: driver_socket.clone(),
            driver_name: "csi.example.org".into(),
            timeout: Duration::from_secs(5),
        });
        assert_eq!(get_healthz(&health).await, (StatusCode::OK, "ok".into()));

        // A driver that says another name is not the one kubelet knows.
        let renamed = Arc::new(Health {
            driver_name: "csi.other.org".into(),
            ..(*health).clone()
        });
        let (status, body) = get_healthz(&renamed).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        assert!(body.contains("\"csi.example.org\""), "{body}");

        // The driver is gone (its socket file stays, as after a crash).
        running_driver.abort();
        let _ = running_driver.await;
        let (status, body) = get_healthz(&health).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
        assert!(
            body.contains("GetPluginInfo") && body.contains("csi.sock"),
            "{body}"
        );

        // The registration socket is deleted: kubelet has dropped the driver.
        std::fs::remove_file(&socket).unwrap();
        let (status, body) = get_healthz(&health).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert!(
            body.contains("does not exist") && body.contains("csi.example.org-reg.sock"),
            "{body}"
        );
    }
}
