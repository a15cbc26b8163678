//! The operator's own identity from the SPIFFE Workload API of the local SPIRE agent:
//! the X.509-SVID it presents to the SPIRE server over TCP, and the trust bundle it
//! verifies the server against.
//!
//! [`X509Source::start`] opens the `FetchX509SVID` stream and keeps reading it in a
//! background task: the agent sends a new response whenever the SVID is rotated or the
//! bundle changes, and each one replaces the previous identity. A broken stream (agent
//! restart) is reopened with backoff; until then the last identity stays in use.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use hyper_util::rt::TokioIo;
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::sign::CertifiedKey;
use tokio::net::UnixStream;
use tokio::sync::watch;
use tonic::transport::{Endpoint, Uri};

use crate::spire::SpiffeId;

#[allow(clippy::all, missing_docs)]
mod generated {
    // The Workload API's messages are in no protobuf package: prost names the file `_`.
    include!(concat!(env!("OUT_DIR"), "/_.rs"));
}

pub use generated::{X509svid, X509svidRequest, X509svidResponse};
/// The generated gRPC client and server (the server for tests that stand in for an agent).
pub use generated::{spiffe_workload_api_client, spiffe_workload_api_server};

/// The metadata every Workload API call must carry, so that the agent can tell a
/// workload's call from a forwarded browser request.
pub const SECURITY_HEADER: &str = "workload.spiffe.io";

/// The environment variable the SPIFFE libraries read the Workload API address from.
pub const ENDPOINT_SOCKET_ENV: &str = "SPIFFE_ENDPOINT_SOCKET";

/// What went wrong getting an identity from the Workload API.
#[derive(Debug, thiserror::Error)]
pub enum WorkloadApiError {
    /// The agent's socket could not be dialled.
    #[error("connecting to the Workload API at unix://{}", socket.display())]
    Connect {
        /// The socket.
        socket: PathBuf,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// The agent refused the call or the stream broke.
    #[error("Workload API call FetchX509SVID at unix://{} failed", socket.display())]
    Rpc {
        /// The socket.
        socket: PathBuf,
        /// The status, with the agent's message (PermissionDenied: no entry matches
        /// this process).
        #[source]
        source: tonic::Status,
    },
    /// A response could not be used.
    #[error("unusable X.509-SVID response from the Workload API: {0}")]
    Malformed(String),
    /// No response arrived in time.
    #[error("no X.509-SVID from the Workload API at unix://{} within {timeout:?}", socket.display())]
    Timeout {
        /// The socket.
        socket: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
}

/// One X.509 identity as the Workload API handed it out.
#[derive(Debug)]
pub struct X509Identity {
    /// The SVID's SPIFFE ID.
    pub spiffe_id: SpiffeId,
    /// The certificate chain and key, ready for a TLS client.
    pub certified_key: Arc<CertifiedKey>,
    /// The trust domain's X.509 authorities.
    pub bundle: Arc<RootCertStore>,
    /// Number of certificates in the bundle.
    pub bundle_len: usize,
    /// When the leaf certificate expires.
    pub not_after: SystemTime,
    /// The leaf's serial number, hex: tells one rotation from a bundle-only update.
    pub serial: String,
}

impl X509Identity {
    /// Builds an identity from the default (first) SVID of a response.
    pub fn from_response(
        response: &X509svidResponse,
        provider: &CryptoProvider,
    ) -> Result<Self, WorkloadApiError> {
        let svid = response
            .svids
            .first()
            .ok_or_else(|| WorkloadApiError::Malformed("the response holds no SVID".into()))?;
        let spiffe_id: SpiffeId = svid.spiffe_id.parse().map_err(|e| {
            WorkloadApiError::Malformed(format!("SPIFFE ID {:?}: {e}", svid.spiffe_id))
        })?;
        let chain = split_certificates(&svid.x509_svid, "x509_svid")?;
        let leaf = chain
            .first()
            .ok_or_else(|| WorkloadApiError::Malformed("x509_svid holds no certificate".into()))?;
        let (not_after, serial) = leaf_facts(leaf)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(svid.x509_svid_key.clone()));
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            WorkloadApiError::Malformed(format!("x509_svid_key of {spiffe_id}: {e}"))
        })?;
        let certified_key = Arc::new(CertifiedKey::new(chain, signing_key));
        let authorities = split_certificates(&svid.bundle, "bundle")?;
        let bundle_len = authorities.len();
        let mut bundle = RootCertStore::empty();
        for (i, authority) in authorities.into_iter().enumerate() {
            bundle.add(authority).map_err(|e| {
                WorkloadApiError::Malformed(format!(
                    "bundle certificate {i} is not a usable CA: {e}"
                ))
            })?;
        }
        Ok(Self {
            spiffe_id,
            certified_key,
            bundle: Arc::new(bundle),
            bundle_len,
            not_after,
            serial,
        })
    }
}

/// Splits concatenated DER certificates, as the Workload API sends chains and bundles.
fn split_certificates(
    mut der: &[u8],
    field: &str,
) -> Result<Vec<CertificateDer<'static>>, WorkloadApiError> {
    let mut certificates = Vec::new();
    while !der.is_empty() {
        let (rest, _) = x509_parser::parse_x509_certificate(der).map_err(|e| {
            WorkloadApiError::Malformed(format!(
                "{field}: certificate {} is not DER X.509: {e}",
                certificates.len()
            ))
        })?;
        let used = der.len() - rest.len();
        certificates.push(CertificateDer::from(der[..used].to_vec()));
        der = rest;
    }
    Ok(certificates)
}

fn leaf_facts(leaf: &CertificateDer<'_>) -> Result<(SystemTime, String), WorkloadApiError> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf)
        .map_err(|e| WorkloadApiError::Malformed(format!("x509_svid leaf: {e}")))?;
    let seconds = u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0);
    Ok((
        SystemTime::UNIX_EPOCH + Duration::from_secs(seconds),
        hex::encode(cert.raw_serial()),
    ))
}

/// A live X.509 identity: the newest one the agent sent. Cheap to clone.
#[derive(Clone, Debug)]
pub struct X509Source {
    socket: PathBuf,
    current: watch::Receiver<Option<Arc<X509Identity>>>,
}

impl PartialEq for X509Source {
    fn eq(&self, other: &Self) -> bool {
        self.socket == other.socket && self.current.same_channel(&other.current)
    }
}

impl Eq for X509Source {}

impl X509Source {
    /// Starts watching the Workload API at `socket` in a background task that lives as
    /// long as any clone of the source. Returns at once; see [`X509Source::ready`].
    pub fn start(socket: PathBuf) -> Self {
        let (tx, current) = watch::channel(None);
        tokio::spawn(watch_stream(socket.clone(), tx));
        Self { socket, current }
    }

    /// A source that holds `identity` and never changes (for tests).
    #[cfg(test)]
    pub(crate) fn fixed(identity: X509Identity) -> Self {
        let (_, current) = watch::channel(Some(Arc::new(identity)));
        Self {
            socket: PathBuf::from("/fixed"),
            current,
        }
    }

    /// The Workload API socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The newest identity, if one has arrived.
    pub fn current(&self) -> Option<Arc<X509Identity>> {
        self.current.borrow().clone()
    }

    /// Waits up to `timeout` for the first identity.
    pub async fn ready(&self, timeout: Duration) -> Result<Arc<X509Identity>, WorkloadApiError> {
        let mut current = self.current.clone();
        let wait = current.wait_for(Option::is_some);
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(identity)) => Ok(identity.clone().expect("waited for Some")),
            _ => Err(WorkloadApiError::Timeout {
                socket: self.socket.clone(),
                timeout,
            }),
        }
    }

    /// A receiver that sees every new identity (for metrics and logs).
    pub fn subscribe(&self) -> watch::Receiver<Option<Arc<X509Identity>>> {
        self.current.clone()
    }
}

/// Reads the stream for as long as anyone holds the source; reopens it with backoff.
async fn watch_stream(socket: PathBuf, tx: watch::Sender<Option<Arc<X509Identity>>>) {
    let provider = rustls::crypto::ring::default_provider();
    let mut delay = Duration::from_millis(200);
    loop {
        let outcome = tokio::select! {
            outcome = read_stream(&socket, &provider, &tx) => outcome,
            () = tx.closed() => return,
        };
        match outcome {
            Ok(()) => {
                tracing::warn!(socket = %socket.display(), "the Workload API closed the X.509-SVID stream; reopening")
            }
            Err(e) => {
                tracing::warn!(error = %crate::spire::error_chain(&e), retry_in = ?delay, "no X.509-SVID from the Workload API")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = tx.closed() => return,
        }
        delay = (delay * 2).min(Duration::from_secs(10));
    }
}

/// One FetchX509SVID stream, until it ends. Bad responses are logged and skipped: the
/// previous identity stays in use.
async fn read_stream(
    socket: &Path,
    provider: &CryptoProvider,
    tx: &watch::Sender<Option<Arc<X509Identity>>>,
) -> Result<(), WorkloadApiError> {
    let mut stream = fetch_x509_svid(socket).await?;
    let rpc = |source| WorkloadApiError::Rpc {
        socket: socket.to_owned(),
        source,
    };
    while let Some(response) = stream.message().await.map_err(rpc)? {
        match X509Identity::from_response(&response, provider) {
            Ok(identity) => {
                let seconds_left = identity
                    .not_after
                    .duration_since(SystemTime::now())
                    .map_or(0, |d| d.as_secs());
                tracing::info!(spiffe_id = %identity.spiffe_id, serial = %identity.serial, expires_in_seconds = seconds_left, bundle_authorities = identity.bundle_len, "X.509-SVID from the Workload API");
                tx.send_replace(Some(Arc::new(identity)));
            }
            Err(e) => tracing::warn!(error = %e, "ignoring an X.509-SVID update"),
        }
    }
    Ok(())
}

async fn fetch_x509_svid(
    socket: &Path,
) -> Result<tonic::Streaming<X509svidResponse>, WorkloadApiError> {
    let path = socket.to_owned();
    // The URI is required by the HTTP/2 layer but never resolved.
    let channel = Endpoint::from_static("http://workload-api.invalid")
        .connect_timeout(Duration::from_secs(10))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await
        .map_err(|source| WorkloadApiError::Connect {
            socket: socket.to_owned(),
            source,
        })?;
    let mut request = tonic::Request::new(X509svidRequest {});
    request.metadata_mut().insert(
        SECURITY_HEADER,
        tonic::metadata::MetadataValue::from_static("true"),
    );
    spiffe_workload_api_client::SpiffeWorkloadApiClient::new(channel)
        .fetch_x509svid(request)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|source| WorkloadApiError::Rpc {
            socket: socket.to_owned(),
            source,
        })
}

/// The Workload API socket from an address as the SPIFFE libraries take it in
/// `SPIFFE_ENDPOINT_SOCKET` (`unix:///path`, `unix:/path`) or a plain path.
pub fn socket_from_address(address: &str) -> Result<PathBuf, String> {
    let path = address
        .strip_prefix("unix://")
        .or_else(|| address.strip_prefix("unix:"))
        .unwrap_or(address);
    if address.starts_with("tcp:") {
        return Err(format!(
            "{address:?}: only a Unix socket Workload API is supported"
        ));
    }
    if !path.starts_with('/') {
        return Err(format!(
            "{address:?} is not an absolute socket path or unix:// address"
        ));
    }
    Ok(PathBuf::from(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_in_every_form_the_spiffe_libraries_take() {
        for (address, want) in [
            ("unix:///run/spire/agent.sock", Ok("/run/spire/agent.sock")),
            ("unix:/run/spire/agent.sock", Ok("/run/spire/agent.sock")),
            ("/run/spire/agent.sock", Ok("/run/spire/agent.sock")),
            ("tcp://127.0.0.1:8000", Err("only a Unix socket")),
            ("agent.sock", Err("not an absolute socket path")),
        ] {
            match (socket_from_address(address), want) {
                (Ok(got), Ok(want)) => assert_eq!(got, PathBuf::from(want), "{address}"),
                (Err(got), Err(want)) => assert!(got.contains(want), "{address}: {got}"),
                (got, want) => panic!("{address}: got {got:?}, want {want:?}"),
            }
        }
    }
}
