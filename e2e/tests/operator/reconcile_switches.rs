//! `reconcile.*` switches turn off what they disable, watches included: a deployment
//! that reconciles only ClusterStaticEntries needs neither pod RBAC nor the other CRDs.

use e2e::entries;
use e2e::kube_util::apply_crd_objects;
use e2e::operator::{Operator, restricted_kubeconfig};
use e2e::workdir::WorkDir;
use e2e::world::World;
use serde_json::json;

const TRUST_DOMAIN: &str = "switches.test";

#[tokio::test]
async fn static_entries_converge_without_pod_rbac_or_the_cluster_spiffe_id_crd()
-> anyhow::Result<()> {
    let world = World::start_without_crds(TRUST_DOMAIN).await?;
    let static_crd: Vec<_> = spire_operator::crd::all()
        .into_iter()
        .filter(|crd| crd.spec.names.kind == "ClusterStaticEntry")
        .collect();
    apply_crd_objects(&world.client, &static_crd).await?;

    // What a static-entries-only deployment grants: its own kind, its ConfigMap and
    // events. No pods, nodes, namespaces, service accounts or EndpointSlices.
    let dir = WorkDir::new("statics-only")?;
    let kubeconfig = dir.join("kubeconfig");
    restricted_kubeconfig(
        &world.control_plane,
        "statics-only",
        json!([
            {"apiGroups": ["spire.spiffe.io"], "resources": ["clusterstaticentries"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["spire.spiffe.io"], "resources": ["clusterstaticentries/status"],
             "verbs": ["get", "patch", "update"]},
            {"apiGroups": [""], "resources": ["configmaps"],
             "verbs": ["get", "create", "patch", "update"]},
            {"apiGroups": ["", "events.k8s.io"], "resources": ["events"],
             "verbs": ["create", "patch"]},
        ]),
        &kubeconfig,
    )
    .await?;
    let mut operator = Operator::start_as(
        &world.control_plane,
        &world.spire,
        "statics",
        "reconcile:\n  clusterStaticEntries: true\n",
        &kubeconfig,
    )
    .await?;
    operator.wait_initial_sync().await?;

    let want = format!("spiffe://{TRUST_DOMAIN}/db");
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            "db",
            json!({"spiffeID": want, "parentID": format!("spiffe://{TRUST_DOMAIN}/host"),
                   "selectors": ["unix:uid:1000"]}),
        )
        .await?;
    entries::wait_for(&world.spire, "the ClusterStaticEntry's entry", |all| {
        all.iter().any(|e| e.spiffe_id == want)
    })
    .await?;
    operator.ensure_running()?;
    Ok(())
}

#[tokio::test]
async fn pod_entries_converge_on_a_cluster_without_the_static_entry_crd() -> anyhow::Result<()> {
    let world = World::start_without_crds(TRUST_DOMAIN).await?;
    let csid_crd: Vec<_> = spire_operator::crd::all()
        .into_iter()
        .filter(|crd| crd.spec.names.kind == "ClusterSPIFFEID")
        .collect();
    apply_crd_objects(&world.client, &csid_crd).await?;
    world.node("node-a").await?;
    world.namespace("shop", &[]).await?;
    let pod = world.pod("shop", "web-0", "default", "node-a", &[]).await?;
    let mut operator = Operator::start(
        &world.control_plane,
        &world.spire,
        "pods",
        "reconcile:\n  clusterSPIFFEIDs: true\n",
    )
    .await?;
    operator.wait_initial_sync().await?;
    world
        .apply_csid(
            "per-pod",
            json!({"spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/pod/{{ .PodMeta.Name }}"}),
        )
        .await?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    entries::wait_for(&world.spire, "web-0's entry", |all| {
        entries::for_pod(all, &uid).len() == 1
    })
    .await?;
    Ok(())
}
