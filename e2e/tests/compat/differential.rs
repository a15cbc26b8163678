//! Scenario 10: on one control plane, ours and the reference controller manager each
//! reconcile into their own SPIRE server; for every cluster state reached here the two
//! servers hold the same entries (all fields but the entry ID).
//!
//! The state covers the operator scenarios: a template using every field, pod and
//! namespace selectors, masking, fallback, className, Service DNS names, an invalid
//! template, an unscheduled pod, a static entry, and changes to pods, labels and
//! templates. Nothing here relies on a documented deliberate difference.

use std::cell::RefCell;
use std::collections::BTreeSet;
use std::time::Duration;

use e2e::entries::{self, EntryFields, EntryView};
use e2e::kube_util::scheduled_pod;
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use e2e::world::World;
use e2e::{Spire, wait};
use serde_json::json;

const TRUST_DOMAIN: &str = "diff.test";
const CLUSTER: &str = "diff";
/// Configuration both implementations get, beside what their harnesses generate.
const SHARED_CONFIG: &str = "clusterDomain: cluster.local
className: blue
watchClassless: true
ignoreNamespaces: [kube-system, kube-public, spire-system]
";

fn fields(entries: &[EntryView]) -> BTreeSet<EntryFields> {
    entries.iter().map(EntryView::fields).collect()
}

/// Waits until ours satisfies `expected`, then until the reference's entries equal ours
/// (both listed in the same poll); fails showing both sides and their difference.
async fn converge(
    ours: &Spire,
    reference: &Spire,
    what: &str,
    expected: impl FnMut(&[EntryView]) -> bool,
) -> anyhow::Result<Vec<EntryView>> {
    entries::wait_for(ours, what, expected).await?;
    let last = RefCell::new((BTreeSet::new(), BTreeSet::new()));
    let last_ref = &last;
    let result = wait::until(
        &format!("{what}: the reference holds the same entries"),
        Duration::from_secs(30),
        Duration::from_millis(500),
        || async move {
            let a = entries::list(ours).await?;
            let b = entries::list(reference).await?;
            let equal = fields(&a) == fields(&b);
            *last_ref.borrow_mut() = (fields(&a), fields(&b));
            Ok(equal.then_some(a))
        },
    )
    .await;
    result.map_err(|e| {
        let (a, b) = &*last.borrow();
        let only_ours: Vec<_> = a.difference(b).collect();
        let only_reference: Vec<_> = b.difference(a).collect();
        e.context(format!(
            "only in ours: {only_ours:#?}\nonly in the reference: {only_reference:#?}"
        ))
    })
}

#[tokio::test]
async fn ours_and_the_reference_produce_the_same_entries() -> anyhow::Result<()> {
    let world = World::start(TRUST_DOMAIN).await?;
    let reference_spire = Spire::start(TRUST_DOMAIN).await?;
    for spire in [&world.spire, &reference_spire] {
        let ca = e2e::pki::Ca::new("partner.test CA")?;
        let path = spire.dir().join("partner.pem");
        std::fs::write(&path, ca.cert_pem())?;
        spire.server_cli(&[
            "bundle",
            "set",
            "-id",
            "spiffe://partner.test",
            "-path",
            &path.to_string_lossy(),
        ])?;
    }

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
        &reference_spire,
        CLUSTER,
        &format!("{SHARED_CONFIG}gcInterval: 1000000000 # 1s, in nanoseconds for the reference\n"),
    )
    .await?;
    let _ours = Operator::start(&world.control_plane, &world.spire, CLUSTER, SHARED_CONFIG).await?;

    // kube-system is ignored; red is another class's; broken renders nothing; the
    // pending pod is not scheduled; web-0 and web-1 share an ID, not parent or pod UID.
    converge(&world.spire, &reference_spire, "the initial state", |e| {
        paths(e)
            == [
                "/api/api-0",
                "/db/db-0",
                "/fallback/plain/tool-0",
                "/gateway",
                "/ns/shop/sa/web-sa",
                "/ns/shop/sa/web-sa",
            ]
    })
    .await?;

    world.delete_pod("shop", "web-0").await?;
    converge(&world.spire, &reference_spire, "web-0 deleted", |e| {
        e.len() == 5
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
    converge(
        &world.spire,
        &reference_spire,
        "ns-sa's template changed",
        |e| paths(e).contains(&"/v2/web-1".to_owned()) && e.len() == 6,
    )
    .await?;

    world
        .label_namespace("shop", json!({ "mesh": null }))
        .await?;
    converge(
        &world.spire,
        &reference_spire,
        "shop leaves the mesh",
        |e| !paths(e).contains(&"/v2/web-1".to_owned()) && e.len() == 5,
    )
    .await?;

    world
        .label_pod("plain", "tool-0", json!({ "app": "api" }))
        .await?;
    world.delete_csid("db").await?;
    converge(
        &world.spire,
        &reference_spire,
        "tool-0 relabelled, db deleted",
        |e| {
            paths(e).contains(&"/api/tool-0".to_owned())
                && !paths(e).contains(&"/db/db-0".to_owned())
        },
    )
    .await?;
    Ok(())
}

/// The SPIFFE ID paths of the entries, sorted.
fn paths(entries: &[EntryView]) -> Vec<String> {
    let prefix = format!("spiffe://{TRUST_DOMAIN}");
    let mut paths: Vec<String> = entries
        .iter()
        .map(|e| e.spiffe_id.trim_start_matches(&prefix).to_owned())
        .collect();
    paths.sort();
    paths
}
