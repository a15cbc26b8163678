//! The CSI driver being registered: its name comes from its Identity service
//! (`GetPluginInfo`) on its socket (`--csi-address`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use spiffe_csi_driver::csi::v1::GetPluginInfoRequest;
use spiffe_csi_driver::csi::v1::identity_client::IdentityClient;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Why the driver's name could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// `--csi-address` names no Unix socket.
    #[error("--csi-address {0:?}: want a Unix socket path, `unix:///path` or `unix:path`")]
    Address(String),
    /// The socket did not accept a gRPC connection.
    #[error("connecting to the CSI driver at {path:?}")]
    Connect {
        /// The driver's socket.
        path: PathBuf,
        /// What the transport said.
        #[source]
        source: tonic::transport::Error,
    },
    /// The call failed.
    #[error("GetPluginInfo on the CSI driver at {path:?}")]
    Call {
        /// The driver's socket.
        path: PathBuf,
        /// The gRPC status.
        #[source]
        source: tonic::Status,
    },
    /// No answer within the timeout.
    #[error("GetPluginInfo on the CSI driver at {path:?}: no answer within {timeout:?}")]
    Timeout {
        /// The driver's socket.
        path: PathBuf,
        /// `--timeout`.
        timeout: Duration,
    },
    /// An answer without a name: kubelet could not register it.
    #[error("the CSI driver at {path:?} answered GetPluginInfo with an empty name")]
    EmptyName {
        /// The driver's socket.
        path: PathBuf,
    },
}

/// The socket path in a `--csi-address`: a path, `unix:///path` or `unix:path`
/// (upstream hands the latter two to gRPC, which reads them so).
pub fn socket_path(address: &str) -> Result<PathBuf, DriverError> {
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address);
    if path.is_empty() || (address.contains("://") && !address.starts_with("unix://")) {
        return Err(DriverError::Address(address.to_owned()));
    }
    Ok(PathBuf::from(path))
}

/// A gRPC channel over the Unix socket `path`, connected now.
pub async fn uds_channel(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let path = path.to_owned();
    // The URI is required by tonic and ignored by the connector.
    Endpoint::from_static("http://uds.invalid")
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move {
                let stream = UnixStream::connect(path).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
}

/// Asks the driver at `socket` for its name, connection included within `timeout`.
pub async fn plugin_name(socket: &Path, timeout: Duration) -> Result<String, DriverError> {
    let ask = async {
        let channel = uds_channel(socket)
            .await
            .map_err(|source| DriverError::Connect {
                path: socket.to_owned(),
                source,
            })?;
        let info = IdentityClient::new(channel)
            .get_plugin_info(GetPluginInfoRequest {})
            .await
            .map_err(|source| DriverError::Call {
                path: socket.to_owned(),
                source,
            })?
            .into_inner();
        if info.name.is_empty() {
            return Err(DriverError::EmptyName {
                path: socket.to_owned(),
            });
        }
        Ok(info.name)
    };
    tokio::time::timeout(timeout, ask)
        .await
        .unwrap_or_else(|_| {
            Err(DriverError::Timeout {
                path: socket.to_owned(),
                timeout,
            })
        })
}

/// [`plugin_name`], retried until the driver answers: the driver container of the same
/// pod may start after this one, or restart. Waits between attempts grow from `first`
/// to at most `max`; each failure is logged.
pub async fn wait_for_plugin_name(
    socket: &Path,
    timeout: Duration,
    first: Duration,
    max: Duration,
) -> String {
    let mut wait = first;
    let mut attempt = 1u32;
    loop {
        match plugin_name(socket, timeout).await {
            Ok(name) => return name,
            Err(e) => {
                tracing::warn!(
                    attempt,
                    retry_in = ?wait,
                    error = %error_chain(&e),
                    "the CSI driver does not answer yet"
                );
            }
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(max);
        attempt = attempt.saturating_add(1);
    }
}

/// `error: cause: cause`, as one line.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        // Some errors (tonic's transport error) already print their source.
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csi_addresses_in_the_forms_upstream_accepts() {
        for (address, want) in [
            ("/csi/csi.sock", "/csi/csi.sock"),
            ("unix:///csi/csi.sock", "/csi/csi.sock"),
            ("unix:/csi/csi.sock", "/csi/csi.sock"),
            ("csi.sock", "csi.sock"),
        ] {
            assert_eq!(
                socket_path(address).unwrap(),
                PathBuf::from(want),
                "{address}"
            );
        }
        for address in ["", "unix://", "tcp://127.0.0.1:10000", "dns:///x:1"] {
            assert!(
                matches!(socket_path(address), Err(DriverError::Address(_))),
                "{address}"
            );
        }
    }

    #[tokio::test]
    async fn a_missing_socket_is_a_connect_error_naming_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        let err = plugin_name(&socket, Duration::from_secs(5))
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Connect { .. }), "{err:?}");
        assert!(err.to_string().contains("csi.sock"), "{err}");
    }

    #[tokio::test]
    async fn a_socket_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("csi.sock");
        // Accepts connections (the backlog does) but never speaks HTTP/2.
        let _listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        let err = plugin_name(&socket, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(err, DriverError::Timeout { .. }), "{err:?}");
    }
}
