//! Our hand-written SPIRE API client is wire-compatible with the real server: every
//! field we write is read back unchanged, and updates and deletes take effect.

use e2e::Spire;
use e2e::pki::Ca;
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{
    Bundle, Entry, EntryMask, FederationRelationship, HttpsWebProfile, Selector, X509Certificate,
    federation_relationship::BundleEndpointProfile,
};

/// gRPC status code NOT_FOUND, as the batch results carry it.
const NOT_FOUND: i32 = 5;

fn selector(t: &str, v: &str) -> Selector {
    Selector {
        r#type: t.into(),
        value: v.into(),
    }
}

#[tokio::test]
async fn entry_fields_round_trip_through_the_real_server() -> anyhow::Result<()> {
    let spire = Spire::start("smoke.test").await?;
    let client = spire.client();

    // federatesWith needs the other trust domain's bundle on the server first; creating
    // the relationship with its bundle also exercises the TrustDomain API.
    let other_ca = Ca::new("other.test CA")?;
    let relationship = FederationRelationship {
        trust_domain: "other.test".into(),
        bundle_endpoint_url: "https://127.0.0.1:1/bundle".into(),
        bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsWeb(HttpsWebProfile {})),
        trust_domain_bundle: Some(Bundle {
            trust_domain: "other.test".into(),
            x509_authorities: vec![X509Certificate {
                asn1: other_ca.cert_der().to_vec(),
                tainted: false,
            }],
            ..Default::default()
        }),
    };
    let results = client
        .batch_create_federation_relationships(vec![relationship])
        .await?;
    assert_eq!(
        results[0].status.as_ref().map(|s| s.code),
        Some(0),
        "{results:?}"
    );
    let relationships = client.list_federation_relationships().await?;
    assert_eq!(relationships.len(), 1);
    assert_eq!(relationships[0].trust_domain, "other.test");
    assert_eq!(
        relationships[0].bundle_endpoint_url,
        "https://127.0.0.1:1/bundle"
    );

    let wanted = Entry {
        spiffe_id: Some(
            "spiffe://smoke.test/ns/default/sa/web"
                .parse::<SpiffeId>()?
                .to_api(),
        ),
        parent_id: Some(spire.agent_id().to_api()),
        selectors: vec![
            selector("k8s", "pod-uid:1234"),
            selector("k8s", "ns:default"),
        ],
        x509_svid_ttl: 1800,
        jwt_svid_ttl: 300,
        federates_with: vec!["other.test".into()],
        admin: true,
        downstream: true,
        dns_names: vec!["web.default.svc".into(), "web".into()],
        hint: "web".into(),
        ..Default::default()
    };
    let created = client.batch_create_entries(vec![wanted.clone()]).await?;
    let status = created[0].status.clone().unwrap_or_default();
    assert_eq!(status.code, 0, "create failed: {}", status.message);
    let id = created[0]
        .entry
        .as_ref()
        .map(|e| e.id.clone())
        .unwrap_or_default();
    assert!(!id.is_empty(), "the server assigns an entry ID");

    let listed = client.list_entries().await?;
    assert_eq!(
        client.count_entries().await?,
        listed.len(),
        "CountEntries agrees"
    );
    let got = listed
        .iter()
        .find(|e| e.id == id)
        .expect("created entry is listed");
    assert_eq!(got.spiffe_id, wanted.spiffe_id);
    assert_eq!(got.parent_id, wanted.parent_id);
    let mut got_selectors = got.selectors.clone();
    let mut want_selectors = wanted.selectors.clone();
    got_selectors.sort_by(|a, b| (&a.r#type, &a.value).cmp(&(&b.r#type, &b.value)));
    want_selectors.sort_by(|a, b| (&a.r#type, &a.value).cmp(&(&b.r#type, &b.value)));
    assert_eq!(got_selectors, want_selectors);
    assert_eq!(got.x509_svid_ttl, 1800);
    assert_eq!(got.jwt_svid_ttl, 300);
    assert_eq!(got.federates_with, vec!["other.test".to_string()]);
    assert!(got.admin && got.downstream);
    assert_eq!(
        got.dns_names, wanted.dns_names,
        "DNS name order is kept (the first is the certificate CN)"
    );
    assert_eq!(got.hint, "web");
    assert!(got.created_at > 0 && got.revision_number >= 0);
    assert_eq!(client.get_entry(&id).await?.id, id);

    let update = Entry {
        id: id.clone(),
        hint: "web-v2".into(),
        x509_svid_ttl: 900,
        ..Default::default()
    };
    let mask = EntryMask {
        hint: true,
        x509_svid_ttl: true,
        ..Default::default()
    };
    let updated = client.batch_update_entries(vec![update], mask).await?;
    assert_eq!(
        updated[0].status.as_ref().map(|s| s.code),
        Some(0),
        "{updated:?}"
    );
    let got = client.get_entry(&id).await?;
    assert_eq!((got.hint.as_str(), got.x509_svid_ttl), ("web-v2", 900));
    assert_eq!(
        got.jwt_svid_ttl, 300,
        "fields outside the mask are untouched"
    );

    let deleted = client
        .batch_delete_entries(vec![id.clone(), "no-such-entry".into()])
        .await?;
    assert_eq!(deleted[0].status.as_ref().map(|s| s.code), Some(0));
    assert_eq!(deleted[1].status.as_ref().map(|s| s.code), Some(NOT_FOUND));
    assert!(client.list_entries().await?.iter().all(|e| e.id != id));
    assert_eq!(client.count_entries().await?, listed.len() - 1);

    let gone = client
        .batch_delete_federation_relationships(vec!["other.test".into()])
        .await?;
    assert_eq!(gone[0].status.as_ref().map(|s| s.code), Some(0), "{gone:?}");
    assert!(client.list_federation_relationships().await?.is_empty());
    Ok(())
}
