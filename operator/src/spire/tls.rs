//! mTLS to the SPIRE server's TCP API with the operator's own X.509-SVID.
//!
//! The client certificate is whatever the Workload API sent last ([`SvidResolver`]), so a
//! rotated SVID is used from the next handshake on while established connections stay
//! up. The server must present a certificate that chains to the trust bundle from the
//! Workload API (no host name check: SPIFFE certificates carry no DNS names for the
//! server) and whose URI SAN is exactly the expected server SPIFFE ID
//! ([`SpiffeServerVerifier`]).

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, verify_server_cert_signed_by_trust_anchor};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use x509_parser::extensions::GeneralName;

use super::SpiffeId;
use crate::workload_api::X509Source;

/// Presents the newest SVID of the source as the client certificate.
#[derive(Debug)]
pub struct SvidResolver {
    source: X509Source,
}

impl ResolvesClientCert for SvidResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.source
            .current()
            .map(|identity| identity.certified_key.clone())
    }

    fn has_certs(&self) -> bool {
        self.source.current().is_some()
    }
}

/// Accepts a server certificate that chains to the source's current bundle and names
/// the expected SPIFFE ID.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    source: X509Source,
    expected: SpiffeId,
    algorithms: WebPkiSupportedAlgorithms,
}

impl SpiffeServerVerifier {
    /// A verifier for a server that must present `expected`.
    pub fn new(source: X509Source, expected: SpiffeId, provider: &CryptoProvider) -> Self {
        Self {
            source,
            expected,
            algorithms: provider.signature_verification_algorithms,
        }
    }
}

/// Why a server certificate was refused, as the TLS error's message.
#[derive(thiserror::Error)]
enum PeerError {
    #[error("no trust bundle from the Workload API yet")]
    NoBundle,
    #[error(
        "the SPIRE server presented SPIFFE ID {got}, expected {expected} (spireServerSPIFFEID)"
    )]
    WrongId { got: String, expected: SpiffeId },
    #[error("the SPIRE server's certificate has {0} URI SANs; an X.509-SVID has exactly one")]
    UriSans(usize),
    #[error("the SPIRE server's certificate cannot be parsed: {0}")]
    Unparsable(String),
}

// rustls shows the error inside `OtherError` with `{:?}`: make that the message.
impl std::fmt::Debug for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

fn refuse(error: PeerError) -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::Other(rustls::OtherError(
        Arc::new(error),
    )))
}

/// The URI SAN of an X.509-SVID (exactly one, per the SPIFFE X.509-SVID standard).
fn uri_san(cert: &CertificateDer<'_>) -> Result<String, PeerError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| PeerError::Unparsable(e.to_string()))?;
    let uris: Vec<String> = parsed
        .subject_alternative_name()
        .map_err(|e| PeerError::Unparsable(e.to_string()))?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    match <[String; 1]>::try_from(uris) {
        Ok([uri]) => Ok(uri),
        Err(uris) => Err(PeerError::UriSans(uris.len())),
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let identity = self
            .source
            .current()
            .ok_or_else(|| refuse(PeerError::NoBundle))?;
        let parsed = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &identity.bundle,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        let got = uri_san(end_entity).map_err(refuse)?;
        if got != self.expected.to_string() {
            return Err(refuse(PeerError::WrongId {
                got,
                expected: self.expected.clone(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// The TLS client configuration for the SPIRE server: our SVID, the SPIFFE verifier,
/// ALPN `h2` (gRPC servers refuse TLS connections without it).
pub fn client_config(
    source: &X509Source,
    expected: SpiffeId,
) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = SpiffeServerVerifier::new(source.clone(), expected, &provider);
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SvidResolver {
            source: source.clone(),
        }));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// Dials the SPIRE server's TCP address and does the TLS handshake: the connector of
/// the gRPC channel, called for the first connection and for every reconnection.
#[derive(Clone)]
pub struct Connector {
    address: Arc<str>,
    name: ServerName<'static>,
    tls: TlsConnector,
    source: X509Source,
}

impl Connector {
    /// A connector for `address` (`host:port`) expecting the server to be `server_id`.
    pub fn new(address: &str, server_id: SpiffeId, source: &X509Source) -> Result<Self, String> {
        let name = server_name(address)?;
        let config = client_config(source, server_id).map_err(|e| e.to_string())?;
        Ok(Self {
            address: address.into(),
            name,
            tls: TlsConnector::from(Arc::new(config)),
            source: source.clone(),
        })
    }
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let this = self.clone();
        Box::pin(async move {
            let tcp = TcpStream::connect(&*this.address).await?;
            tcp.set_nodelay(true)?;
            let stream = this.tls.connect(this.name, tcp).await?;
            // One line per connection (SPIRE closes them after 3 minutes): which SVID a
            // new handshake presented shows that rotations reach new connections.
            let serial = this.source.current().map(|i| i.serial.clone());
            tracing::info!(address = %this.address, client_svid_serial = %serial.as_deref().unwrap_or("none"), "TLS connection to the SPIRE server established");
            Ok(TokioIo::new(stream))
        })
    }
}

/// The name rustls needs for a handshake (and sends as SNI when it is a DNS name); the
/// verifier does not check it.
pub fn server_name(address: &str) -> Result<ServerName<'static>, String> {
    let host = match address.rsplit_once(':') {
        Some((host, port)) if port.parse::<u16>().is_ok() => host,
        _ => return Err(format!("{address:?} is not host:port")),
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_owned()).map_err(|e| format!("{address:?}: host {host:?}: {e}"))
}

#[cfg(test)]
mod tests;
