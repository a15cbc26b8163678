//! Scenario 10: on one control plane, ours and the reference controller manager each
//! reconcile into their own SPIRE server; for every cluster state reached here the two
//! servers hold the same entries (all fields but the entry ID).
//!
//! The state covers the operator scenarios: a template using every field, pod and
//! namespace selectors, masking, fallback, className, Service DNS names, an invalid
//! template, an unscheduled pod, a static entry, and changes to pods, labels and
//! templates. Nothing here relies on a documented deliberate difference.
//!
//! Beyond the first comparison: both tools resync with nothing to change (equal after,
//! and ours writes nothing), a pending pod gets scheduled, a pod whose Node is missing
//! (a render failure in both) gets its Node, and the ClusterStaticEntry changes and goes.

use std::time::Duration;

use e2e::kube_util::scheduled_pod;
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use serde_json::json;

use crate::diff::{Pair, paths, resync_changes_nothing};

const TRUST_DOMAIN: &str = "diff.test";
const CLUSTER: &str = "diff";
/// Configuration both implementations get, beside what their harnesses generate.
const SHARED_CONFIG: &str = "clusterDomain: cluster.local
className: blue
watchClassless: true
ignoreNamespaces: [kube-system, kube-public, spire-system]
";
/// The reference's full resync period (`gcInterval`, integer nanoseconds for it).
const REFERENCE_GC: Duration = Duration::from_secs(1);

#[tokio::test]
async fn ours_and_the_reference_produce_the_same_entries() -> anyhow::Result<()> {
    let pair = Pair::start(TRUST_DOMAIN).await?;
    let world = &pair.world;
    pair.federated_bundle("partner.test")?;

    world.node("node-a").await?;
    world.node("node-b").await?;
    world.namespace("shop", &[("mesh", "on")]).await?;
    world.namespace("plain", &[]).await?;
    world.namespace("kube-system", &[("mesh", "on")]).await?;
    world.service_account("shop", "web-sa").await?;
    let web = [("app", "web")];
    world.pod("shop", "web-0", "web-sa", "node-a", &web).await?;
    world.pod("shop", "web-1", "web-sa", "node-b", &web).await?;
    world
        .pod("shop", "db-0", "default", "node-a", &[("app", "db")])
        .await?;
    let api = world
        .pod("shop", "api-0", "default", "node-b", &[("app", "api")])
        .await?;
    world
        .pod("plain", "tool-0", "default", "node-a", &[])
        .await?;
    world
        .pod("kube-system", "web-sys", "default", "node-a", &web)
        .await?;
    let mut pending = scheduled_pod("shop", "web-pending", "web-sa", "", &web);
    pending.spec.as_mut().unwrap().node_name = None;
    world.create_pod(pending).await?;
    // Selected only by resources that fail (one renders outside the trust domain, one
    // does not parse): the fallback applies to them in both.
    world
        .pod(
            "shop",
            "lonely-0",
            "default",
            "node-a",
            &[("app", "lonely")],
        )
        .await?;
    world
        .pod(
            "shop",
            "lonely-1",
            "default",
            "node-b",
            &[("app", "unparsable")],
        )
        .await?;
    // Bound to a node that has no Node object: both fail to render it (no parent ID).
    world
        .pod("shop", "ghost-0", "default", "ghost", &[("app", "db")])
        .await?;
    world.endpoint_slice("shop", "api", &[&api]).await?;
    world.endpoints("shop", "api", &[&api]).await?;

    world
        .apply_csid(
            "ns-sa",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                "podSelector": { "matchLabels": { "app": "web" } },
                "namespaceSelector": { "matchLabels": { "mesh": "on" } },
                "dnsNameTemplates": [
                    "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
                    "{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc.{{ .ClusterDomain }}",
                    "{{ .NodeMeta.Name }}.{{ .ClusterName }}",
                ],
                "workloadSelectorTemplates": [
                    "k8s:ns:{{ .PodMeta.Namespace }}",
                    "k8s:sa:{{ .PodSpec.ServiceAccountName }}",
                    "k8s:pod-image:{{ (index .PodSpec.Containers 0).Image }}",
                ],
                "federatesWith": ["partner.test"],
                "ttl": "1h30m",
                "jwtTtl": "5m",
                "admin": true,
                "downstream": true,
                "hint": "web",
            }),
        )
        .await?;
    // Creation timestamps have one-second resolution: make the masked one clearly younger.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    world
        .apply_csid(
            "ns-sa-copy",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
                "podSelector": { "matchLabels": { "app": "web" } },
                "workloadSelectorTemplates": [
                    "k8s:ns:{{ .PodMeta.Namespace }}",
                    "k8s:sa:{{ .PodSpec.ServiceAccountName }}",
                    "k8s:pod-image:{{ (index .PodSpec.Containers 0).Image }}",
                ],
                "hint": "masked",
            }),
        )
        .await?;
    world
        .apply_csid(
            "fallback",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/fallback/{{ .PodMeta.Namespace }}/{{ .PodMeta.Name }}",
                "fallback": true,
            }),
        )
        .await?;
    world
        .apply_csid(
            "db",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/db/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "db" } },
                "className": "blue",
                "ttl": "10m",
            }),
        )
        .await?;
    world
        .apply_csid(
            "red",
            json!({ "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/red/{{ .PodMeta.Name }}", "className": "red" }),
        )
        .await?;
    world
        .apply_csid(
            "api",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/api/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "api" } },
                "autoPopulateDNSNames": true,
                "dnsNameTemplates": ["api.example"],
            }),
        )
        .await?;
    world
        .apply_csid(
            "broken",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/x/{{ .PodMeta.Labels.missing }}",
                "podSelector": { "matchLabels": { "app": "db" } },
            }),
        )
        .await?;
    world
        .apply_csid(
            "elsewhere",
            json!({
                "spiffeIDTemplate": "spiffe://elsewhere.test/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "lonely" } },
            }),
        )
        .await?;
    world
        .apply_csid(
            "unparsable",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/{{ .PodMeta.Name",
                "podSelector": { "matchLabels": { "app": "unparsable" } },
            }),
        )
        .await?;
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            "red-static",
            json!({
                "spiffeID": "spiffe://diff.test/red-static",
                "parentID": "spiffe://diff.test/spire/agent/x509pop/gw",
                "selectors": ["unix:uid:7"],
                "className": "red",
            }),
        )
        .await?;
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            "gateway",
            json!({
                "spiffeID": "spiffe://diff.test/gateway",
                "parentID": "spiffe://diff.test/spire/agent/x509pop/gw",
                "selectors": ["unix:uid:0", "unix:gid:0"],
                "federatesWith": ["partner.test"],
                "x509SVIDTTL": "2h",
                "jwtSVIDTTL": "15m",
                "dnsNames": ["gateway.example", "gw.example"],
                "hint": "edge",
                "storeSVID": true,
            }),
        )
        .await?;

    let _reference = ReferenceControllerManager::start(
        &world.control_plane,
        &pair.reference,
        CLUSTER,
        &format!(
            "{SHARED_CONFIG}gcInterval: {} # in nanoseconds for the reference\n",
            REFERENCE_GC.as_nanos()
        ),
    )
    .await?;
    // A short resync period so that the resync comparison below does not wait long.
    let mut ours = Operator::start(
        &world.control_plane,
        &world.spire,
        CLUSTER,
        &format!("{SHARED_CONFIG}gcInterval: 3s\n"),
    )
    .await?;

    // kube-system is ignored; red and red-static are another class's; broken renders
    // nothing; elsewhere and unparsable fail, so the fallback applies; the pending pod
    // is not scheduled; ghost-0's node is missing; web-0 and web-1 share an
    // ID, not parent or pod UID.
    pair.converge("the initial state", |e| {
        paths(e)
            == [
                "/api/api-0",
                "/db/db-0",
                "/fallback/plain/tool-0",
                "/fallback/shop/lonely-0",
                "/fallback/shop/lonely-1",
                "/gateway",
                "/ns/shop/sa/web-sa",
                "/ns/shop/sa/web-sa",
            ]
    })
    .await?;
    resync_changes_nothing(&mut ours, &pair, REFERENCE_GC, "the initial state").await?;

    // The scheduler binds the pending pod: it gets the entry web-1 has, on its node.
    world.bind_pod("shop", "web-pending", "node-a").await?;
    pair.converge("web-pending scheduled", |e| {
        paths(e)
            .iter()
            .filter(|p| *p == "/ns/shop/sa/web-sa")
            .count()
            == 3
    })
    .await?;

    // ghost-0's Node appears: it renders now (ours at once, the reference at its resync).
    world.node("ghost").await?;
    pair.converge("ghost-0's node created", |e| {
        paths(e).contains(&"/db/ghost-0".to_owned())
    })
    .await?;

    world.delete_pod("shop", "web-0").await?;
    world.delete_pod("shop", "web-pending").await?;
    world.delete_pod("shop", "ghost-0").await?;
    pair.converge("web-0, web-pending and ghost-0 deleted", |e| e.len() == 7)
        .await?;

    // The static entry changes every field it has but its key, then its key, then goes.
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            "gateway",
            json!({
                "spiffeID": "spiffe://diff.test/gateway",
                "parentID": "spiffe://diff.test/spire/agent/x509pop/gw",
                "selectors": ["unix:uid:0", "unix:gid:0"],
                "x509SVIDTTL": "3h",
                "jwtSVIDTTL": "20m",
                "dnsNames": ["gw.example", "gateway.example", "edge.example"],
                "hint": "edge-2",
                "admin": true,
            }),
        )
        .await?;
    pair.converge("gateway changed", |e| {
        e.iter().any(|e| e.hint == "edge-2" && e.admin)
    })
    .await?;
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            "gateway",
            json!({
                "spiffeID": "spiffe://diff.test/gateway-2",
                "parentID": "spiffe://diff.test/spire/agent/x509pop/gw",
                "selectors": ["unix:uid:1"],
                "hint": "edge-3",
            }),
        )
        .await?;
    pair.converge("gateway's key changed", |e| {
        paths(e).contains(&"/gateway-2".to_owned()) && !paths(e).contains(&"/gateway".to_owned())
    })
    .await?;
    world
        .delete_spire_object("ClusterStaticEntry", "gateway")
        .await?;
    pair.converge("gateway deleted", |e| {
        !paths(e).iter().any(|p| p.starts_with("/gateway"))
    })
    .await?;

    // The masking resource changes its template: the masked one takes over web-1.
    world
        .apply_csid(
            "ns-sa",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/v2/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "web" } },
                "namespaceSelector": { "matchLabels": { "mesh": "on" } },
                "ttl": "2h",
            }),
        )
        .await?;
    pair.converge("ns-sa's template changed", |e| {
        paths(e).contains(&"/v2/web-1".to_owned()) && e.len() == 7
    })
    .await?;

    world
        .label_namespace("shop", json!({ "mesh": null }))
        .await?;
    pair.converge("shop leaves the mesh", |e| {
        !paths(e).contains(&"/v2/web-1".to_owned()) && e.len() == 6
    })
    .await?;

    world
        .label_pod("plain", "tool-0", json!({ "app": "api" }))
        .await?;
    world.delete_csid("db").await?;
    pair.converge("tool-0 relabelled, db deleted", |e| {
        paths(e).contains(&"/api/tool-0".to_owned()) && !paths(e).contains(&"/db/db-0".to_owned())
    })
    .await?;
    resync_changes_nothing(&mut ours, &pair, REFERENCE_GC, "the final state").await?;
    Ok(())
}
