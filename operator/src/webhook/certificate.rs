//! The webhook's serving certificate: a key generated here, a certificate signing
//! request for the webhook's SPIFFE ID and the Service DNS names, the X.509-SVID SPIRE
//! mints from it, and the rustls resolver that hands the current one to each TLS
//! handshake (so a rotation needs no restart and no file).

use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType};
use rustls::crypto::ring::sign::any_supported_type;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The path of the SPIFFE ID the webhook certificate carries, spire-controller-manager's
/// (`spiffe://<trust domain>/spire-controller-manager-webhook`), so a SPIRE policy or
/// audit rule written for it keeps matching.
pub const WEBHOOK_ID_PATH: &str = "/spire-controller-manager-webhook";

/// Why a certificate could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    /// Key generation or CSR encoding failed.
    #[error("preparing the certificate signing request for {id} with DNS names {dns_names:?}")]
    Request {
        /// The SPIFFE ID asked for.
        id: String,
        /// The DNS names asked for.
        dns_names: Vec<String>,
        /// rcgen's error.
        #[source]
        source: rcgen::Error,
    },
    /// The generated key is not one rustls can sign with.
    #[error("loading the generated key for TLS: {0}")]
    Key(String),
    /// SPIRE answered with no certificate.
    #[error("SPIRE minted an empty certificate chain")]
    EmptyChain,
}

/// A key and the DER certificate signing request made with it.
pub struct Request {
    key: KeyPair,
    /// The DER PKCS#10 request for MintX509SVID.
    pub csr_der: Vec<u8>,
}

impl Request {
    /// A fresh ECDSA P-256 key and a request for `spiffe://<trust_domain>` +
    /// [`WEBHOOK_ID_PATH`] with `dns_names`.
    pub fn new(trust_domain: &str, dns_names: &[String]) -> Result<Self, CertificateError> {
        let id = format!("spiffe://{trust_domain}{WEBHOOK_ID_PATH}");
        let wrap = |source| CertificateError::Request {
            id: id.clone(),
            dns_names: dns_names.to_vec(),
            source,
        };
        let key = KeyPair::generate().map_err(wrap)?;
        let mut params = CertificateParams::new(dns_names.to_vec()).map_err(wrap)?;
        // rcgen's placeholder subject would otherwise travel in the request.
        params.distinguished_name = DistinguishedName::new();
        params
            .subject_alt_names
            .push(SanType::URI(id.as_str().try_into().map_err(wrap)?));
        let csr = params.serialize_request(&key).map_err(wrap)?;
        Ok(Self {
            csr_der: csr.der().to_vec(),
            key,
        })
    }

    /// The minted chain (leaf first, DER) with this request's key, ready for rustls.
    pub fn certified(&self, chain: Vec<Vec<u8>>) -> Result<Arc<CertifiedKey>, CertificateError> {
        if chain.is_empty() {
            return Err(CertificateError::EmptyChain);
        }
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.serialize_der()));
        let signing = any_supported_type(&key).map_err(|e| CertificateError::Key(e.to_string()))?;
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        Ok(Arc::new(CertifiedKey::new(chain, signing)))
    }
}

/// When a certificate valid from `issued` to `expires` is renewed: at half its
/// lifetime, so a SPIRE server that is unreachable for up to half the lifetime (12 h of
/// the default 24 h) costs nothing. spire-controller-manager renews a 24 h certificate
/// 30 minutes before it expires.
pub fn renew_at(issued: SystemTime, expires: SystemTime) -> SystemTime {
    let lifetime = expires.duration_since(issued).unwrap_or(Duration::ZERO);
    issued + lifetime / 2
}

/// The certificate TLS handshakes use; empty until the first one is minted (handshakes
/// then fail, and the API server reports the webhook as unreachable).
#[derive(Debug, Default)]
pub struct CertificateStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
}

impl CertificateStore {
    /// Replaces the certificate; handshakes from now on use the new one.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Some(key);
    }

    /// Whether a certificate is loaded.
    pub fn is_loaded(&self) -> bool {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }
}

impl ResolvesServerCert for CertificateStore {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The rustls server configuration: TLS 1.2 and 1.3 (as spire-controller-manager's
/// minimum), ring, the certificate from `store`, no client certificates (the API server
/// authenticates the webhook, not the other way round).
pub fn server_config(store: Arc<CertificateStore>) -> Result<rustls::ServerConfig, rustls::Error> {
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map(|builder| builder.with_no_client_auth().with_cert_resolver(store))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renewal_is_at_half_the_lifetime() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let hour = Duration::from_secs(3600);
        for (lifetime, lead) in [
            (24 * hour, 12 * hour),
            (hour, hour / 2),
            (Duration::from_secs(30), Duration::from_secs(15)),
            (Duration::ZERO, Duration::ZERO),
        ] {
            assert_eq!(renew_at(t0, t0 + lifetime), t0 + lifetime - lead);
        }
        // Expiry before issue (a clock step): renew at once.
        assert_eq!(renew_at(t0, t0 - hour), t0);
    }

    #[test]
    fn the_request_carries_the_spiffe_id_and_dns_names() {
        let names = vec!["webhook.spire.svc".to_owned()];
        let request = Request::new("example.org", &names).unwrap();
        // IA5 strings appear verbatim in the DER.
        let contains = |needle: &str| {
            request
                .csr_der
                .windows(needle.len())
                .any(|w| w == needle.as_bytes())
        };
        assert!(contains("webhook.spire.svc"));
        assert!(contains(
            "spiffe://example.org/spire-controller-manager-webhook"
        ));
        assert!(!contains("rcgen"), "no placeholder subject");
        assert!(matches!(
            request.certified(Vec::new()),
            Err(CertificateError::EmptyChain)
        ));
    }
}
