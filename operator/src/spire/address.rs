//! Where the SPIRE server API listens, and dialling it: the admin Unix socket, or the
//! TCP API with mTLS (see [`super::tls`]).

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::{SpiffeId, SpireError, tls};
use crate::workload_api::X509Source;

/// Where the SPIRE server API listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SpireAddress {
    /// The server's local (admin) Unix socket, `server.socket_path` in its config.
    Unix(PathBuf),
    /// The server's TCP API (`server.bind_address`/`bind_port`), over mTLS with our own
    /// X.509-SVID; the server must list our SPIFFE ID in `admin_ids`.
    Tcp {
        /// `host:port`.
        address: String,
        /// The SPIFFE ID the server's certificate must carry.
        server_id: SpiffeId,
        /// Our SVID and the trust bundle, from the Workload API.
        source: X509Source,
    },
}

impl fmt::Display for SpireAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SpireAddress::Unix(path) => write!(f, "unix://{}", path.display()),
            SpireAddress::Tcp {
                address, server_id, ..
            } => write!(f, "tcp://{address} ({server_id})"),
        }
    }
}

/// Connects a gRPC channel to `address`, failing if it is not reachable now; the
/// channel reconnects through the same connector later. Every call gives up after
/// `timeout`.
pub(super) async fn dial(address: SpireAddress, timeout: Duration) -> Result<Channel, SpireError> {
    // The URI is required by the HTTP/2 layer but never resolved: the connectors dial
    // the socket or the TCP address themselves.
    let endpoint = Endpoint::from_static("http://spire-server.invalid")
        .timeout(timeout)
        .connect_timeout(timeout);
    let connected = match &address {
        SpireAddress::Unix(path) => {
            let path = path.clone();
            endpoint
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?))
                    }
                }))
                .await
        }
        SpireAddress::Tcp {
            address: host_port,
            server_id,
            source,
        } => {
            let connector =
                tls::Connector::new(host_port, server_id.clone(), source).map_err(|reason| {
                    SpireError::Address {
                        address: Box::new(address.clone()),
                        reason,
                    }
                })?;
            endpoint.connect_with_connector(connector).await
        }
    };
    connected.map_err(|source| SpireError::Connect {
        address: Box::new(address),
        source,
    })
}
