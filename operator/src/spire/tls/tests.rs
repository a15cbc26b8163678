//! The verifier and resolver against a real rustls server, with SPIFFE certificates
//! made here: a trusted CA, an untrusted one, and server SVIDs with various IDs.

use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::*;
use crate::workload_api::{X509Identity, X509svid, X509svidResponse};

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    der: Vec<u8>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = params.self_signed(&key).unwrap().der().to_vec();
    Ca {
        issuer: Issuer::new(params, key),
        der,
    }
}

/// An X.509-SVID for `id`, DER certificate and PKCS#8 key.
fn svid(ca: &Ca, id: &str) -> (Vec<u8>, Vec<u8>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = vec![SanType::URI(id.try_into().unwrap())];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.der().to_vec(), key.serialize_der())
}

/// The operator's identity as the Workload API would hand it out, trusting `bundle`.
fn operator_source(ca: &Ca, bundle: &Ca) -> X509Source {
    let (cert, key) = svid(ca, "spiffe://example.org/operator");
    let response = X509svidResponse {
        svids: vec![X509svid {
            spiffe_id: "spiffe://example.org/operator".into(),
            x509_svid: cert,
            x509_svid_key: key,
            bundle: bundle.der.clone(),
        }],
    };
    let provider = rustls::crypto::ring::default_provider();
    X509Source::fixed(X509Identity::from_response(&response, &provider).unwrap())
}

/// A TLS server presenting `server_id` (signed by `ca`) that requires a client
/// certificate from `ca` and answers one byte: what SPIRE's TCP API does, minus gRPC.
async fn server(ca: &Ca, server_id: &str) -> String {
    let (cert, key) = svid(ca, server_id);
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from(ca.der.clone())).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .build()
        .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(cert)],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(mut tls) = acceptor.accept(tcp).await {
                    use tokio::io::AsyncWriteExt;
                    let _ = tls.write_all(b"!").await;
                    let _ = tls.shutdown().await;
                }
            });
        }
    });
    address
}

async fn handshake(source: &X509Source, address: &str, expected: &str) -> Result<(), String> {
    let mut connector = Connector::new(address, expected.parse().unwrap(), source)?;
    let uri: Uri = "http://spire-server.invalid".parse().unwrap();
    let io = tower::Service::call(&mut connector, uri)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = io.into_inner();
    use tokio::io::AsyncReadExt;
    let mut byte = [0u8; 1];
    stream
        .read_exact(&mut byte)
        .await
        .map_err(|e| e.to_string())?;
    assert_eq!(stream.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    Ok(())
}

#[tokio::test]
async fn a_server_with_the_expected_id_from_the_bundle_is_accepted() {
    let ca = ca();
    let address = server(&ca, "spiffe://example.org/spire/server").await;
    let source = operator_source(&ca, &ca);
    handshake(&source, &address, "spiffe://example.org/spire/server")
        .await
        .unwrap();
}

#[tokio::test]
async fn a_server_with_another_id_is_refused_naming_both_ids() {
    let ca = ca();
    let address = server(&ca, "spiffe://example.org/not/the/server").await;
    let source = operator_source(&ca, &ca);
    let err = handshake(&source, &address, "spiffe://example.org/spire/server")
        .await
        .unwrap_err();
    assert!(
        err.contains("spiffe://example.org/not/the/server")
            && err.contains("expected spiffe://example.org/spire/server"),
        "{err}"
    );
}

#[tokio::test]
async fn a_server_outside_the_bundle_is_refused_even_with_the_right_id() {
    let (ca, other) = (ca(), ca());
    let address = server(&other, "spiffe://example.org/spire/server").await;
    let source = operator_source(&ca, &ca);
    let err = handshake(&source, &address, "spiffe://example.org/spire/server")
        .await
        .unwrap_err();
    // Both test CAs have the same (empty) name, so webpki tries the trusted one and
    // finds the signature wrong; with distinct names it would say UnknownIssuer.
    assert!(
        err.contains("invalid peer certificate")
            && (err.contains("BadSignature") || err.contains("UnknownIssuer")),
        "{err}"
    );
}

#[test]
fn server_names_from_host_port() {
    assert!(server_name("spire-server.spire:8081").is_ok());
    assert!(server_name("127.0.0.1:8081").is_ok());
    assert!(server_name("[::1]:8081").is_ok());
    assert!(server_name("spire-server").is_err());
    assert!(server_name("spire-server:http").is_err());
}
