//! Two replicas with leader election: only the Lease holder writes entries; when it
//! stops, the other takes the Lease and keeps the entries in line.

use std::time::Duration;

use e2e::entries;
use e2e::kube_util::{apply_crd_objects, node, scheduled_pod};
use e2e::operator::Operator;
use e2e::{ControlPlane, Spire};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};

/// Leases sized for a loaded machine (two cores shared by parallel tests): a leader
/// must renew within 10 s, so a slow scheduler does not make it lose the lease while it
/// is alive, which a 4 s lease did.
const CONFIG: &str = "leaderElection:
  leaderElect: true
  resourceName: spire-operator-leader
  resourceNamespace: spire-system
  leaseDuration: 15s
  renewDeadline: 10s
  retryPeriod: 2s
";

async fn lease_holder(client: &kube::Client) -> anyhow::Result<Option<String>> {
    let leases: Api<Lease> = Api::namespaced(client.clone(), "spire-system");
    Ok(leases
        .get_opt("spire-operator-leader")
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity))
}

#[tokio::test]
async fn only_the_leader_writes_and_a_standby_takes_over() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let spire = Spire::start("leader.test").await?;
    let client = cp.client();
    apply_crd_objects(&client, &spire_operator::crd::all()).await?;
    Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node("node-a"))
        .await?;
    let mut ns = Namespace::default();
    ns.metadata.name = Some("shop".into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("default".into());
    Api::<ServiceAccount>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &sa)
        .await?;
    let csid = serde_json::json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": { "name": "per-pod" },
        "spec": { "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/pod/{{ .PodMeta.Name }}" },
    });
    let csids: Api<spire_operator::crd::ClusterSPIFFEID> = Api::all(client.clone());
    csids
        .patch("per-pod", &PatchParams::apply("e2e"), &Patch::Apply(&csid))
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    pods.create(
        &PostParams::default(),
        &scheduled_pod("shop", "web-0", "default", "node-a", &[]),
    )
    .await?;

    let mut first = Operator::start(&cp, &spire, "harness", CONFIG).await?;
    entries::wait_for(&spire, "web-0 has its entry", |e| e.len() == 1).await?;
    assert_eq!(
        lease_holder(&client).await?.as_deref(),
        Some(first.identity())
    );

    // The standby becomes ready (warm caches) but neither leads nor writes.
    let mut second = Operator::start(&cp, &spire, "harness", CONFIG).await?;
    pods.create(
        &PostParams::default(),
        &scheduled_pod("shop", "web-1", "default", "node-a", &[]),
    )
    .await?;
    entries::wait_for(&spire, "web-1 has its entry", |e| e.len() == 2).await?;
    let standby = second.metrics().await?;
    assert_eq!(standby.value("spire_operator_leader", &[]), 0.0);
    assert_eq!(standby.value("spire_operator_entry_writes_total", &[]), 0.0);
    assert_eq!(
        lease_holder(&client).await?.as_deref(),
        Some(first.identity())
    );

    // The leader goes; the standby takes the Lease and reconciles what changed meanwhile.
    first.stop();
    pods.delete(
        "web-0",
        &DeleteParams {
            grace_period_seconds: Some(0),
            ..Default::default()
        },
    )
    .await?;
    // The stopped leader released the Lease; should it not have, it expires in 15 s.
    second
        .wait_metric("spire_operator_leader", &[], Duration::from_secs(60), |v| {
            v == 1.0
        })
        .await?;
    let left = entries::wait_for(&spire, "web-0's entry is gone", |e| e.len() == 1).await?;
    assert!(left[0].spiffe_id.ends_with("/pod/web-1"), "{left:?}");
    assert_eq!(
        lease_holder(&client).await?.as_deref(),
        Some(second.identity())
    );
    Ok(())
}
