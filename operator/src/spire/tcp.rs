//! Setting up the TCP+mTLS address of the SPIRE server: the operator's identity from
//! the Workload API, watched for as long as the process runs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::SpireAddress;
use crate::config::SpireServerTcp;
use crate::metrics::Metrics;
use crate::workload_api::{ENDPOINT_SOCKET_ENV, X509Source, socket_from_address};

/// Why the TCP address cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TcpSetupError {
    /// Neither `workloadAPIAddress` nor `SPIFFE_ENDPOINT_SOCKET` says where the agent is.
    #[error(
        "spireServerAddress {address:?} needs the operator's own X.509-SVID: set workloadAPIAddress or the {ENDPOINT_SOCKET_ENV} environment variable"
    )]
    NoWorkloadApi {
        /// `spireServerAddress`.
        address: String,
    },
    /// `SPIFFE_ENDPOINT_SOCKET` holds something that is not a Unix socket address.
    #[error("environment variable {ENDPOINT_SOCKET_ENV}: {0}")]
    BadEnvironment(String),
}

/// The Workload API socket: the config's, else `SPIFFE_ENDPOINT_SOCKET`'s.
pub fn workload_api_socket(
    tcp: &SpireServerTcp,
    env: Option<String>,
) -> Result<PathBuf, TcpSetupError> {
    if let Some(socket) = &tcp.workload_api_socket {
        return Ok(socket.clone());
    }
    match env.filter(|v| !v.is_empty()) {
        Some(value) => socket_from_address(&value).map_err(TcpSetupError::BadEnvironment),
        None => Err(TcpSetupError::NoWorkloadApi {
            address: tcp.address.clone(),
        }),
    }
}

/// Starts watching the operator's identity and waits (logging every `every`) until the
/// first X.509-SVID arrives: without it no handshake can succeed. Every update is
/// counted in `metrics`.
pub async fn address(
    tcp: &SpireServerTcp,
    metrics: Arc<Metrics>,
) -> Result<SpireAddress, TcpSetupError> {
    let socket = workload_api_socket(tcp, std::env::var(ENDPOINT_SOCKET_ENV).ok())?;
    tracing::info!(spire_server = %tcp.address, server_id = %tcp.spiffe_id, workload_api = %socket.display(), "reaching the SPIRE server over TCP with mTLS");
    let source = X509Source::start(socket);
    let mut updates = source.subscribe();
    tokio::spawn(async move {
        while updates.changed().await.is_ok() {
            let Some(identity) = updates.borrow_and_update().clone() else {
                continue;
            };
            metrics.workload_svid_updates.inc();
            let expiry = identity
                .not_after
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            metrics
                .workload_svid_expiry
                .set(i64::try_from(expiry).unwrap_or(i64::MAX));
        }
    });
    let every = Duration::from_secs(10);
    loop {
        match source.ready(every).await {
            Ok(identity) => {
                tracing::info!(spiffe_id = %identity.spiffe_id, "got the operator's X.509-SVID; the SPIRE server must list it in admin_ids for the operator's calls to be allowed");
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, "waiting for the operator's X.509-SVID; is there a registration entry for this workload?")
            }
        }
    }
    Ok(SpireAddress::Tcp {
        address: tcp.address.clone(),
        server_id: tcp.spiffe_id.clone(),
        source,
    })
}
