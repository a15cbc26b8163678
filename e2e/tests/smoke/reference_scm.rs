//! The reference spire-controller-manager runs against the harness unchanged: its CRDs
//! apply, and a ClusterSPIFFEID for a scheduled pod becomes an entry on the real SPIRE
//! server. Migration and differential tests build on this.

use std::time::Duration;

use e2e::kube_util::{apply_crds, node, scheduled_pod};
use e2e::reference::ReferenceControllerManager;
use e2e::{ControlPlane, ControlPlaneOptions, Spire, wait};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod};
use kube::ResourceExt;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;
use spire_operator::spire::SpiffeId;

#[tokio::test]
async fn reference_controller_manager_registers_a_pod() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await?;
    let spire = Spire::start("scm.test").await?;
    let client = cp.client();
    apply_crds(&client, &ReferenceControllerManager::crd_files()?).await?;

    let node = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node("node-a"))
        .await?;
    let mut ns = Namespace::default();
    ns.metadata.name = Some("shop".into());
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await?;
    // The ServiceAccount admission plugin waits for kube-controller-manager's `default` account.
    let pods: Api<Pod> = Api::namespaced(client.clone(), "shop");
    let pod = wait::until(
        "pod created",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let pods = pods.clone();
            async move {
                Ok(pods
                    .create(
                        &PostParams::default(),
                        &scheduled_pod("shop", "web-0", "default", "node-a", &[("app", "web")]),
                    )
                    .await
                    .ok())
            }
        },
    )
    .await?;

    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    let csids: Api<DynamicObject> = Api::all_with(client.clone(), &ApiResource::from_gvk(&gvk));
    let csid: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": { "name": "ns-sa" },
        "spec": {
            "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "podSelector": { "matchLabels": { "app": "web" } },
        },
    }))?;
    csids
        .patch("ns-sa", &PatchParams::apply("e2e"), &Patch::Apply(&csid))
        .await?;

    let _scm = ReferenceControllerManager::start(
        &cp,
        &spire,
        "harness",
        "gcInterval: 1000000000 # 1s; v0.6.4 reads a bare time.Duration (nanoseconds)",
    )
    .await?;

    let want_id: SpiffeId = "spiffe://scm.test/ns/shop/sa/default".parse()?;
    let want_parent: SpiffeId = format!(
        "spiffe://scm.test/spire/agent/k8s_psat/harness/{}",
        node.uid().unwrap_or_default()
    )
    .parse()?;
    let spire_client = spire.client();
    let entry = wait::until(
        "entry for shop/web-0",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let spire_client = spire_client.clone();
            let want_id = want_id.clone();
            async move {
                let entries = spire_client.list_entries().await?;
                Ok(entries.into_iter().find(|e| {
                    e.spiffe_id
                        .as_ref()
                        .and_then(|id| SpiffeId::from_api(id).ok())
                        .as_ref()
                        == Some(&want_id)
                }))
            }
        },
    )
    .await?;
    assert_eq!(
        entry
            .parent_id
            .as_ref()
            .map(SpiffeId::from_api)
            .transpose()?,
        Some(want_parent)
    );
    let pod_uid = format!("pod-uid:{}", pod.uid().unwrap_or_default());
    assert!(
        entry
            .selectors
            .iter()
            .any(|s| s.r#type == "k8s" && s.value == pod_uid),
        "every pod entry carries k8s:pod-uid: {:?}",
        entry.selectors
    );
    Ok(())
}
