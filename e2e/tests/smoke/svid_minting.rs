//! SVID minting through our client against the real server (the README's "proven
//! wire-compatible"): an X.509-SVID for a CSR of a key generated here comes back for that
//! key, with the SPIFFE ID as its URI SAN, and chains to the server's bundle; a CSR for
//! another trust domain is refused with InvalidArgument.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use e2e::Spire;
use rcgen::{CertificateParams, KeyPair, SanType};
use spire_operator::spire::{SpiffeId, SpireError};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

const TRUST_DOMAIN: &str = "mint.test";

fn csr_for(key: &KeyPair, spiffe_id: &str) -> anyhow::Result<Vec<u8>> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params.subject_alt_names = vec![SanType::URI(spiffe_id.try_into()?)];
    Ok(params.serialize_request(key)?.der().to_vec())
}

fn uri_sans(cert: &X509Certificate<'_>) -> anyhow::Result<Vec<String>> {
    Ok(cert
        .subject_alternative_name()?
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

#[tokio::test]
async fn x509_svid_minted_through_our_client_chains_to_the_bundle() -> anyhow::Result<()> {
    let spire = Spire::start(TRUST_DOMAIN).await?;
    let client = spire.client();
    let spiffe_id = format!("spiffe://{TRUST_DOMAIN}/minted/web");
    let key = KeyPair::generate()?;
    let ttl = Duration::from_secs(600);
    let minted_at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let svid = client
        .mint_x509_svid(csr_for(&key, &spiffe_id)?, ttl)
        .await?;

    let id = svid.id.as_ref().map(SpiffeId::from_api).transpose()?;
    assert_eq!(id.map(|id| id.to_string()), Some(spiffe_id.clone()));
    anyhow::ensure!(!svid.cert_chain.is_empty(), "an empty chain: {svid:?}");
    let chain: Vec<X509Certificate<'_>> = svid
        .cert_chain
        .iter()
        .map(|der| X509Certificate::from_der(der).map(|(_, cert)| cert))
        .collect::<Result<_, _>>()?;
    let leaf = &chain[0];
    assert_eq!(uri_sans(leaf)?, [spiffe_id.as_str()], "the leaf's URI SANs");
    assert_eq!(
        leaf.public_key().subject_public_key.data.as_ref(),
        key.public_key_raw(),
        "the leaf certifies the key of the CSR"
    );
    assert!(!leaf.is_ca(), "the leaf is not a CA");
    // The TTL asked for is what the server signed (its CA lives 24h, so no capping).
    let not_after = leaf.validity().not_after.timestamp();
    assert!(
        (not_after - minted_at - ttl.as_secs() as i64).abs() <= 60,
        "not_after {not_after} is not about {}s after {minted_at}",
        ttl.as_secs()
    );
    assert_eq!(
        svid.expires_at, not_after,
        "expires_at is the leaf's not_after"
    );

    // Each certificate is signed by the next; the last by an authority of the bundle.
    for pair in chain.windows(2) {
        pair[0].verify_signature(Some(pair[1].public_key()))?;
    }
    let bundle = client.get_bundle().await?;
    assert_eq!(bundle.trust_domain, TRUST_DOMAIN);
    let authorities: Vec<X509Certificate<'_>> = bundle
        .x509_authorities
        .iter()
        .map(|a| X509Certificate::from_der(&a.asn1).map(|(_, cert)| cert))
        .collect::<Result<_, _>>()?;
    let last = chain.last().expect("not empty");
    anyhow::ensure!(
        authorities.iter().any(|ca| ca.subject() == last.issuer()
            && last.verify_signature(Some(ca.public_key())).is_ok()),
        "the chain's last certificate (issuer {}) is signed by none of the {} bundle authorities",
        last.issuer(),
        authorities.len()
    );

    // Outside the server's trust domain: refused, and the status says so.
    let refused = client
        .mint_x509_svid(csr_for(&key, "spiffe://elsewhere.test/web")?, ttl)
        .await
        .expect_err("a CSR for another trust domain is refused");
    match &refused {
        SpireError::Rpc { source, .. } => {
            assert_eq!(source.code(), tonic::Code::InvalidArgument, "{refused:#}")
        }
        other => anyhow::bail!("expected an RPC error, got {other:#}"),
    }
    Ok(())
}
