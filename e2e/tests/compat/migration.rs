//! Scenarios 7 and 8: the reference controller manager reconciles a cluster with its own
//! CRDs; it is stopped, our CRDs replace its CRDs, and we take over without writing a
//! single entry (same entry IDs, so no SVID is re-issued). A restart with nothing changed
//! writes nothing either, and the adopted entries stay ours across it.

use std::time::Duration;

use e2e::entries;
use e2e::kube_util::apply_crds;
use e2e::operator::Operator;
use e2e::reference::ReferenceControllerManager;
use e2e::world::World;
use kube::ResourceExt;
use serde_json::json;

const WRITES: &str = "spire_operator_entry_writes_total";
const ADOPTED: &str = "spire_operator_entries_adopted_total";
const LISTS: &str = "spire_operator_entry_lists_total";

#[tokio::test]
async fn migrating_from_the_reference_controller_manager_rewrites_nothing() -> anyhow::Result<()> {
    let world = World::start_without_crds("migrate.test").await?;
    apply_crds(&world.client, &ReferenceControllerManager::crd_files()?).await?;
    world.node("node-a").await?;
    world.namespace("shop", &[]).await?;
    let mut pods = Vec::new();
    for name in ["web-0", "web-1", "web-2"] {
        pods.push(
            world
                .pod("shop", name, "default", "node-a", &[("app", "web")])
                .await?,
        );
    }
    world
        .apply_csid(
            "per-pod",
            json!({
                "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/pod/{{ .PodMeta.Name }}",
                "podSelector": { "matchLabels": { "app": "web" } },
                "dnsNameTemplates": ["{{ .PodMeta.Name }}.shop.svc"],
                "workloadSelectorTemplates": ["k8s:ns:{{ .PodMeta.Namespace }}"],
                "ttl": "1h",
            }),
        )
        .await?;
    world
        .apply_spire_object(
            "ClusterStaticEntry",
            "gateway",
            json!({
                "spiffeID": "spiffe://migrate.test/gateway",
                "parentID": "spiffe://migrate.test/spire/agent/x509pop/gw",
                "selectors": ["unix:uid:0"],
                "dnsNames": ["gateway.example"],
            }),
        )
        .await?;
    let scm = ReferenceControllerManager::start(
        &world.control_plane,
        &world.spire,
        "migrate",
        "gcInterval: 1000000000 # 1s; the reference reads a bare time.Duration (nanoseconds)",
    )
    .await?;
    entries::wait_for(
        &world.spire,
        "the reference made 3 pod entries and the static one",
        |e| entries::pod_entries_of(e).len() == 3 && e.len() == 4,
    )
    .await?;
    let before = entries::holds_for(
        &world.spire,
        "the reference is settled",
        Duration::from_secs(3),
        |e| e.len() == 4,
    )
    .await?;
    drop(scm);
    // Made after the reference stopped: it deletes every entry it did not make
    // (no entryIDPrefix), the fault ours does not copy.
    let foreign = world
        .cli_entry(
            "spiffe://migrate.test/admin/cli",
            "spiffe://migrate.test/spire/agent/other",
            "unix:uid:1000",
        )
        .await?;

    let mut before = before;
    before.push(foreign.clone());
    before.sort();

    world.apply_our_crds().await?;
    // Resyncs every 2 s: "nothing changes" must hold across full re-lists, not only
    // between them.
    let resync = "gcInterval: 2s";
    let mut operator =
        Operator::start(&world.control_plane, &world.spire, "migrate", resync).await?;
    operator.wait_initial_sync().await?;
    let after = entries::holds_for(
        &world.spire,
        "nothing changes",
        Duration::from_secs(5),
        |e| e == before.as_slice(),
    )
    .await?;
    operator
        .wait_metric(LISTS, &[], Duration::from_secs(30), |v| v >= 3.0)
        .await?;
    assert!(after.contains(&foreign));
    let metrics = operator.metrics().await?;
    assert_eq!(
        metrics.value(WRITES, &[]),
        0.0,
        "no create, update or delete"
    );
    assert_eq!(
        metrics.value(ADOPTED, &[]),
        4.0,
        "3 pod entries and the static one"
    );
    assert_eq!(metrics.value("spire_operator_entries_foreign", &[]), 1.0);

    // A restart with nothing changed: no write, nothing to adopt again.
    operator.stop();
    let mut operator =
        Operator::start(&world.control_plane, &world.spire, "migrate", resync).await?;
    operator.wait_initial_sync().await?;
    entries::holds_for(
        &world.spire,
        "nothing changes after a restart",
        Duration::from_secs(5),
        |e| e == before.as_slice(),
    )
    .await?;
    operator
        .wait_metric(LISTS, &[], Duration::from_secs(30), |v| v >= 3.0)
        .await?;
    let metrics = operator.metrics().await?;
    assert_eq!(
        metrics.value(WRITES, &[]),
        0.0,
        "no write across two resyncs"
    );
    assert_eq!(metrics.value(ADOPTED, &[]), 0.0, "adoption was remembered");

    // The adopted entries are ours to delete; the CLI entry is not.
    world.delete_pod("shop", "web-0").await?;
    let uid = pods[0].uid().unwrap();
    let left = entries::wait_for(&world.spire, "web-0's adopted entry is deleted", |e| {
        entries::for_pod(e, &uid).is_empty() && e.len() == 4
    })
    .await?;
    assert!(left.contains(&foreign));
    let metrics = operator.metrics().await?;
    assert_eq!(
        metrics.value(WRITES, &[("operation", "delete"), ("result", "success")]),
        1.0
    );
    assert_eq!(metrics.value(WRITES, &[("operation", "create")]), 0.0);
    Ok(())
}
