//! Differential, on the entry semantics ours changed to match the reference:
//! `federatesWith` as a SPIFFE ID and as a bare name, masking between a
//! ClusterStaticEntry and a pod entry with the same key (the older owner wins, whichever
//! kind it is), and the order of DNS names from templates (with duplicates) and from
//! Services with several EndpointSlices, several Endpoints subsets and endpoints that
//! are not ready.
//!
//! Then a ClusterFederatedTrustDomain: both tools create the same relationship, its
//! presence changes neither tool's entries, and ours leaves the relationship made at
//! its server by hand as it is (the reference would delete it: README "Deliberate
//! differences").
//!
//! Last, changes: a Service stops listing a pod, and each masking owner goes, so that the
//! masked one takes over.

use std::time::Duration;

use e2e::entries::{self, EntryView};
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use e2e::wait;
use kube::ResourceExt;
use serde_json::json;
use spire_operator::spire::SpireClient;
use spire_operator::spire::api::types::{
    FederationRelationship, HttpsWebProfile, federation_relationship::BundleEndpointProfile,
};

use crate::diff::{Pair, by_path, paths, resync_changes_nothing};

const TRUST_DOMAIN: &str = "diffs.test";
const CLUSTER: &str = "diffs";
const CONFIG: &str = "clusterDomain: cluster.local\n";
const REFERENCE_GC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn federates_with_masking_and_dns_name_order_agree() -> anyhow::Result<()> {
    let pair = Pair::start(TRUST_DOMAIN).await?;
    let world = &pair.world;
    pair.federated_bundle("partner.org")?;
    // A relationship made at our server by hand: ours must leave it as it is.
    let manual = relationship("manual.org");
    let created = world
        .spire
        .client()
        .batch_create_federation_relationships(vec![manual.clone()])
        .await?;
    anyhow::ensure!(
        created
            .iter()
            .all(|r| r.status.as_ref().is_some_and(|s| s.code == 0)),
        "creating the manual federation relationship: {created:?}"
    );

    let node = world.node("node-a").await?;
    world.namespace("app", &[]).await?;
    let mut pods = Vec::new();
    for (name, app) in [
        ("fed-0", "fed-url"),
        ("fed-1", "fed-name"),
        ("mask-0", "static-older"),
        ("mask-1", "pod-older"),
        ("dns-0", "dns"),
        ("dns-1", "dns"),
    ] {
        pods.push(
            world
                .pod("app", name, "default", "node-a", &[("app", app)])
                .await?,
        );
    }
    let (mask_0, mask_1, dns_0, dns_1) = (&pods[2], &pods[3], &pods[4], &pods[5]);

    // Service web: two slices, dns-1 not ready in the second; two Endpoints subsets alike.
    // Service api: one slice with both (dns-1 not ready). Service zz: dns-0 only.
    world
        .endpoint_slice_named("app", "web", "web-a", &[(dns_0, "10.1.0.1", true)])
        .await?;
    world
        .endpoint_slice_named("app", "web", "web-b", &[(dns_1, "10.1.0.2", false)])
        .await?;
    world
        .endpoints_subsets(
            "app",
            "web",
            &[&[(dns_0, "10.1.0.1", true)], &[(dns_1, "10.1.0.2", false)]],
        )
        .await?;
    let api = [(dns_0, "10.1.0.1", true), (dns_1, "10.1.0.2", false)];
    world
        .endpoint_slice_named("app", "api", "api-x", &api)
        .await?;
    world.endpoints_subsets("app", "api", &[&api]).await?;
    let zz = [(dns_0, "10.1.0.1", true)];
    world.endpoint_slice_named("app", "zz", "zz-1", &zz).await?;
    world.endpoints_subsets("app", "zz", &[&zz]).await?;

    for (name, app, federates_with) in [
        ("fed-url", "fed-url", "spiffe://partner.org"),
        ("fed-name", "fed-name", "partner.org"),
    ] {
        world
            .apply_csid(
                name,
                json!({
                    "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/fed/{{ .PodMeta.Name }}",
                    "podSelector": { "matchLabels": { "app": app } },
                    "federatesWith": [federates_with],
                }),
            )
            .await?;
    }
    world
        .apply_csid(
            "dns",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/dns/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "dns" } },
                "autoPopulateDNSNames": true,
                "dnsNameTemplates": [
                    "zeta.example",
                    "{{ .PodMeta.Name }}.alpha.example",
                    "zeta.example",
                    "web.app",
                    "mid.example",
                ],
            }),
        )
        .await?;

    // Masking by age across kinds. Creation timestamps have one-second resolution.
    let parent = format!(
        "spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/{CLUSTER}/{}",
        node.uid().unwrap_or_default()
    );
    let static_twin = |pod: &k8s_openapi::api::core::v1::Pod| {
        json!({
            "spiffeID": format!("spiffe://{TRUST_DOMAIN}/mask/{}", pod.name_any()),
            "parentID": parent,
            "selectors": [
                format!("k8s:pod-uid:{}", pod.uid().unwrap_or_default()),
                "k8s:ns:app",
            ],
            "hint": "static",
            "x509SVIDTTL": "2h",
        })
    };
    let masked_csid = |app: &'static str| {
        world.apply_csid(
            app,
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/mask/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": app } },
                "workloadSelectorTemplates": ["k8s:ns:{{ .PodMeta.Namespace }}"],
                "hint": "pod",
            }),
        )
    };
    world
        .apply_spire_object("ClusterStaticEntry", "mask-0", static_twin(mask_0))
        .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    masked_csid("static-older").await?;
    masked_csid("pod-older").await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world
        .apply_spire_object("ClusterStaticEntry", "mask-1", static_twin(mask_1))
        .await?;

    let _reference = ReferenceControllerManager::start(
        &world.control_plane,
        &pair.reference,
        CLUSTER,
        &format!("{CONFIG}gcInterval: {}\n", REFERENCE_GC.as_nanos()),
    )
    .await?;
    let mut ours = Operator::start(
        &world.control_plane,
        &world.spire,
        CLUSTER,
        &format!("{CONFIG}gcInterval: 3s\n"),
    )
    .await?;

    let ours_entries = pair
        .converge("the initial state", |e| {
            paths(e)
                == [
                    "/dns/dns-0",
                    "/dns/dns-1",
                    "/fed/fed-0",
                    "/fed/fed-1",
                    "/mask/mask-0",
                    "/mask/mask-1",
                ]
        })
        .await?;
    // What both agreed on, spelled out so a shared mistake shows too.
    for fed in ["/fed/fed-0", "/fed/fed-1"] {
        let entry = by_path(&ours_entries, fed)?;
        assert_eq!(
            entry.federates_with.iter().collect::<Vec<_>>(),
            ["partner.org"],
            "{entry}"
        );
    }
    assert_eq!(by_path(&ours_entries, "/mask/mask-0")?.hint, "static");
    assert_eq!(by_path(&ours_entries, "/mask/mask-1")?.hint, "pod");
    let service = |name: &str| {
        [
            name.to_owned(),
            format!("{name}.app"),
            format!("{name}.app.svc"),
            format!("{name}.app.svc.cluster.local"),
        ]
    };
    let expected_dns = |pod: &str, services: &[&str]| -> Vec<String> {
        let mut auto: Vec<String> = services.iter().flat_map(|s| service(s)).collect();
        auto.sort();
        let mut names = vec![
            "zeta.example".to_owned(),
            format!("{pod}.alpha.example"),
            "web.app".to_owned(),
            "mid.example".to_owned(),
        ];
        names.extend(auto.into_iter().filter(|n| n != "web.app"));
        names
    };
    assert_eq!(
        by_path(&ours_entries, "/dns/dns-0")?.dns_names,
        expected_dns("dns-0", &["api", "web", "zz"])
    );
    assert_eq!(
        by_path(&ours_entries, "/dns/dns-1")?.dns_names,
        expected_dns("dns-1", &["api", "web"])
    );

    // The ClusterFederatedTrustDomain: entries before it, on both servers, IDs included.
    let ours_before = entries::list(&world.spire).await?;
    let reference_before = entries::list(&pair.reference).await?;
    world
        .apply_spire_object(
            "ClusterFederatedTrustDomain",
            "partner",
            json!({
                "trustDomain": "partner.org",
                "bundleEndpointURL": "https://127.0.0.1:9/bundle",
                "bundleEndpointProfile": { "type": "https_web" },
            }),
        )
        .await?;
    wait::until(
        "the reference creates the federation relationship with partner.org",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || async {
            let relationships = trust_domains(&pair.reference.client()).await?;
            Ok(relationships
                .contains(&"partner.org".to_owned())
                .then_some(()))
        },
    )
    .await?;
    resync_changes_nothing(
        &mut ours,
        &pair,
        REFERENCE_GC,
        "with a ClusterFederatedTrustDomain",
    )
    .await?;
    assert_same_entries("ours", &ours_before, &entries::list(&world.spire).await?)?;
    assert_same_entries(
        "the reference",
        &reference_before,
        &entries::list(&pair.reference).await?,
    )?;
    let shape = |r: &FederationRelationship| {
        (
            r.trust_domain.clone(),
            r.bundle_endpoint_url.clone(),
            r.bundle_endpoint_profile.clone(),
        )
    };
    let reference_partner: Vec<_> = pair
        .reference
        .client()
        .list_federation_relationships()
        .await?
        .iter()
        .map(shape)
        .collect();
    let ours_relationships = world.spire.client().list_federation_relationships().await?;
    let mut want = vec![shape(&manual)];
    want.extend(reference_partner);
    want.sort_by(|a, b| a.0.cmp(&b.0));
    let mut got: Vec<_> = ours_relationships.iter().map(shape).collect();
    got.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        got, want,
        "ours creates the reference's relationship and leaves the manual one as it is"
    );

    // Service web stops listing dns-1: its second slice goes, and its Endpoints lose the
    // second subset (deleted and made again: the reference sees the change either way).
    world.delete_endpoint_slice("app", "web-b").await?;
    world.delete_endpoints("app", "web").await?;
    world
        .endpoints_subsets("app", "web", &[&[(dns_0, "10.1.0.1", true)]])
        .await?;
    let expected = expected_dns("dns-1", &["api"]);
    pair.converge("web no longer lists dns-1", |e| {
        by_path(e, "/dns/dns-1").is_ok_and(|d| d.dns_names == expected)
    })
    .await?;

    // The masking owners go: the masked one takes the entry over, in place or not.
    world
        .delete_spire_object("ClusterStaticEntry", "mask-0")
        .await?;
    pair.converge("mask-0's static entry deleted", |e| {
        by_path(e, "/mask/mask-0").is_ok_and(|m| m.hint == "pod")
    })
    .await?;
    world.delete_csid("pod-older").await?;
    pair.converge("mask-1's ClusterSPIFFEID deleted", |e| {
        by_path(e, "/mask/mask-1").is_ok_and(|m| m.hint == "static" && m.x509_svid_ttl == 7200)
    })
    .await?;
    Ok(())
}

fn relationship(trust_domain: &str) -> FederationRelationship {
    FederationRelationship {
        trust_domain: trust_domain.to_owned(),
        bundle_endpoint_url: "https://127.0.0.1:9/bundle".to_owned(),
        bundle_endpoint_profile: Some(BundleEndpointProfile::HttpsWeb(HttpsWebProfile {})),
        trust_domain_bundle: None,
    }
}

async fn trust_domains(client: &SpireClient) -> anyhow::Result<Vec<String>> {
    Ok(client
        .list_federation_relationships()
        .await?
        .into_iter()
        .map(|r| r.trust_domain)
        .collect())
}

fn assert_same_entries(who: &str, before: &[EntryView], after: &[EntryView]) -> anyhow::Result<()> {
    anyhow::ensure!(
        before == after,
        "{who}: the entries changed once a ClusterFederatedTrustDomain exists:\nbefore:\n{}\nafter:\n{}",
        entries::describe(before),
        entries::describe(after)
    );
    Ok(())
}
