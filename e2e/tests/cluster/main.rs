//! The story a user lives, on a real node (`e2e::cluster`): `helm install` of the chart
//! from images built here; a workload Deployment with the CSI volume gets its X.509- and
//! JWT-SVID (the JWT checks out against the OIDC provider's JWKS); a deleted pod's mount
//! and entry go; the kubelet, the CSI driver and the agent restart under running
//! workloads; `helm upgrade` rolls out; `helm uninstall` leaves nothing behind.

use std::time::{Duration, Instant};

use e2e::cluster::app::{
    App, entry_ids, name_of, pod_entry_ids, uid_of, unix_now, wait_entries_gone, wait_pod_gone,
};
use e2e::cluster::{Cluster, NAMESPACE, TRUST_DOMAIN, describe_pods};
use e2e::wait;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::storage::v1::CSINode;
use kube::api::{Api, DeleteParams, ListParams};

const APP: App = App {
    namespace: "shop",
    name: "web",
    service_account: "web",
    audience: "e2e-cluster",
    annotated_id: None,
};

/// A workload whose identity comes from its pods' `spiffe.io/spiffe-id` annotation.
const ANNOTATED: App = App {
    namespace: NAMESPACE,
    name: "annotated",
    service_account: "annotated",
    audience: "e2e-cluster",
    annotated_id: Some("spiffe://example.org/ns/spire-system/annotated"),
};

#[tokio::test]
async fn helm_install_workload_identity_restarts_upgrade_and_uninstall() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let client = cluster.control_plane.client();

    // 1. helm install: every workload of the chart rolls out on the node, and the kubelet
    //    registered the CSI driver (through the registrar).
    let installed = Instant::now();
    cluster.install(&[])?;
    cluster.wait_rolled_out(Duration::from_secs(180)).await?;
    println!(
        "helm install -> every pod ready: {:.1} s",
        installed.elapsed().as_secs_f64()
    );
    let csi_node = Api::<CSINode>::all(client.clone())
        .get(cluster.node.name())
        .await?;
    let drivers: Vec<(&str, &str)> = csi_node
        .spec
        .drivers
        .iter()
        .map(|d| (d.name.as_str(), d.node_id.as_str()))
        .collect();
    assert_eq!(
        drivers,
        [("csi.spiffe.io", cluster.node.name())],
        "CSINode drivers (name, node id)"
    );

    // The chart's validating webhook answers the real API server: kubectl apply of an
    // invalid ClusterSPIFFEID is refused with the operator's message, a valid one passes.
    let bad = "apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterSPIFFEID
metadata: {name: bad}
spec:
  spiffeIDTemplate: \"spiffe://example.org/ns/{{ .PodMeta.Namespace }}\"
  federatesWith: [\"Not A Domain\"]
";
    let refused = cluster
        .kubectl_apply(bad)
        .expect_err("an invalid ClusterSPIFFEID is refused");
    assert!(
        refused.to_string().contains(
            "denied the request: ClusterSPIFFEID \"bad\": spec.federatesWith[0]: \"Not A Domain\" is not a trust domain name"
        ),
        "{refused:#}"
    );
    let admitted = cluster.kubectl_apply(&bad.replace("\"Not A Domain\"", "partner.test"))?;
    assert!(
        admitted.contains("clusterspiffeid.spire.spiffe.io/bad created"),
        "{admitted}"
    );
    cluster.kubectl(&["delete", "clusterspiffeid", "bad"])?;

    // 2. A workload Deployment as in the README gets its SVIDs through the CSI volume.
    APP.create(&client).await?;
    let first = APP.running_pod(&cluster, &[]).await?;
    let first_uid = uid_of(&first)?;
    let line = APP.svid_line(&cluster, &name_of(&first), 0).await?;
    println!(
        "helm install -> workload holds its SVID: {:.1} s",
        installed.elapsed().as_secs_f64()
    );
    let id = APP.spiffe_id();
    assert_eq!(line["x509_svid"]["spiffe_id"], id.as_str(), "{line}");
    assert_eq!(line["jwt_svid"]["spiffe_id"], id.as_str(), "{line}");
    let token = line["jwt_svid"]["token"].as_str().unwrap_or_default();
    let verified = cluster.verify_jwt(token, APP.audience).await?;
    assert_eq!(verified.spiffe_id().to_string(), id);
    let spire = cluster.spire_client().await?;
    assert_eq!(pod_entry_ids(&spire, &first_uid).await?, [id.as_str()]);
    let mounts = cluster.pod_mounts(&first_uid)?;
    assert!(
        mounts.iter().any(|m| m.contains("kubernetes.io~csi")),
        "the CSI volume of pod {} is mounted on the node: {mounts:?}",
        name_of(&first)
    );

    // An annotation identity (annotationIdentities on): a pod in the release namespace,
    //    which no ClusterSPIFFEID selects, asks for its ID by annotation and gets it.
    ANNOTATED.create(&client).await?;
    let annotated = ANNOTATED.running_pod(&cluster, &[]).await?;
    let line = ANNOTATED
        .svid_line(&cluster, &name_of(&annotated), 0)
        .await?;
    assert_eq!(
        line["x509_svid"]["spiffe_id"],
        ANNOTATED.spiffe_id().as_str(),
        "{line}"
    );
    assert_eq!(
        pod_entry_ids(&spire, &uid_of(&annotated)?).await?,
        [ANNOTATED.spiffe_id()]
    );
    ANNOTATED.scale(&client, 0).await?;
    wait_pod_gone(
        &Api::namespaced(client.clone(), ANNOTATED.namespace),
        &name_of(&annotated),
    )
    .await?;
    wait_entries_gone(&spire, &uid_of(&annotated)?).await?;

    // 3. Deleting the pod: the kubelet unpublishes, the entry goes, the replacement gets
    //    its own.
    let pods: Api<Pod> = Api::namespaced(client.clone(), APP.namespace);
    let deleted = Instant::now();
    pods.delete(&name_of(&first), &DeleteParams::default())
        .await?;
    wait_entries_gone(&spire, &first_uid).await?;
    println!(
        "pod deleted -> its entry removed: {:.2} s",
        deleted.elapsed().as_secs_f64()
    );
    wait_pod_gone(&pods, &name_of(&first)).await?;
    assert_eq!(
        cluster.pod_mounts(&first_uid)?,
        Vec::<String>::new(),
        "mounts left of the deleted pod"
    );
    let second = APP.running_pod(&cluster, &[&first_uid]).await?;
    let second_uid = uid_of(&second)?;
    APP.svid_line(&cluster, &name_of(&second), 0).await?;
    assert_eq!(pod_entry_ids(&spire, &second_uid).await?, [id.as_str()]);

    // 4. The kubelet and the CSI driver restart: the running workload keeps its socket,
    //    and a new pod gets one. The agent restarts: both recover their SVIDs.
    cluster.node.restart_kubelet(&cluster.control_plane).await?;
    cluster.restart_pods_of("spiffe-csi-driver").await?;
    let since = unix_now();
    APP.svid_line(&cluster, &name_of(&second), since).await?;
    // kubelet republishes on every pod sync (requiresRepublish): to the restarted driver,
    // twice, the same volume stays one mount, still serving.
    republish_twice(&cluster, &second).await?;
    let since = unix_now();
    APP.svid_line(&cluster, &name_of(&second), since).await?;
    APP.scale(&client, 2).await?;
    let third = APP
        .running_pod(&cluster, &[&first_uid, &second_uid])
        .await?;
    APP.svid_line(&cluster, &name_of(&third), 0).await?;
    cluster.restart_pods_of("spire-agent").await?;
    let since = unix_now();
    for pod in [&second, &third] {
        APP.svid_line(&cluster, &name_of(pod), since).await?;
    }
    APP.scale(&client, 0).await?;
    for pod in [&second, &third] {
        wait_pod_gone(&pods, &name_of(pod)).await?;
        wait_entries_gone(&spire, &uid_of(pod)?).await?;
        // Unpublished by the restarted driver.
        assert_eq!(
            cluster.pod_mounts(&uid_of(pod)?)?,
            Vec::<String>::new(),
            "mounts left of pod {} after the driver's restart",
            name_of(pod)
        );
    }

    // 5. helm upgrade with a changed value rolls the agent out; helm uninstall leaves no
    //    pod and no mount.
    let agents_before = cluster.pod_uids_of("spire-agent").await?;
    cluster.upgrade(&["--set", "spireAgent.logLevel=DEBUG"])?;
    cluster.wait_rolled_out(Duration::from_secs(120)).await?;
    let agents_after = cluster.pod_uids_of("spire-agent").await?;
    assert!(
        agents_before.iter().all(|uid| !agents_after.contains(uid)),
        "helm upgrade replaced the agent pod ({agents_before:?} -> {agents_after:?})"
    );
    let ids = entry_ids(&cluster.spire_client().await?, |_| true).await?;
    let app_prefix = format!("spiffe://{TRUST_DOMAIN}/ns/{}/", APP.namespace);
    assert!(
        ids.iter().all(|id| !id.starts_with(&app_prefix)),
        "workload entries left after scaling to 0: {ids:?}"
    );
    cluster.uninstall()?;
    let release_pods: Api<Pod> = Api::namespaced(client.clone(), NAMESPACE);
    let uninstalled = Instant::now();
    let gone = wait::until(
        "no pod left in the release namespace",
        Duration::from_secs(120),
        Duration::from_millis(500),
        || {
            let release_pods = release_pods.clone();
            async move {
                let left = release_pods.list(&ListParams::default()).await?.items;
                Ok(left.is_empty().then_some(()))
            }
        },
    )
    .await;
    if let Err(e) = gone {
        return Err(e.context(describe_pods(&client, NAMESPACE).await));
    }
    println!(
        "helm uninstall -> no pod left: {:.1} s",
        uninstalled.elapsed().as_secs_f64()
    );
    let kubelet_root = cluster.node.kubelet_root();
    let kubelet_root = kubelet_root.to_string_lossy();
    let csi_mounts: Vec<String> = std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(kubelet_root.as_ref()) && m.contains("kubernetes.io~csi"))
        .map(str::to_owned)
        .collect();
    assert_eq!(
        csi_mounts,
        Vec::<String>::new(),
        "CSI mounts left after uninstall"
    );
    Ok(())
}
/// Sends the running `pod`'s NodePublishVolume to the node's CSI driver twice, as
/// kubelet would on its next syncs, and checks that the pod still has exactly one CSI
/// mount.
async fn republish_twice(cluster: &Cluster, pod: &Pod) -> anyhow::Result<()> {
    use e2e::csi::{PodVolume, uds_channel};
    use spiffe_csi_driver::csi::v1::node_client::NodeClient;

    let uid = uid_of(pod)?;
    let name = name_of(pod);
    let volume = PodVolume {
        pod: &name,
        namespace: APP.namespace,
        uid: &uid,
        service_account: APP.service_account,
        volume: APP.volume(),
    };
    let root = cluster.node.kubelet_root();
    let target = root.join(format!(
        "pods/{uid}/volumes/kubernetes.io~csi/{}/mount",
        volume.volume
    ));
    let csi_mounts = || -> anyhow::Result<Vec<String>> {
        Ok(cluster
            .pod_mounts(&uid)?
            .into_iter()
            .filter(|m| m.contains("kubernetes.io~csi"))
            .collect())
    };
    assert_eq!(csi_mounts()?, [target.display().to_string()]);
    // The socket path is too long for sun_path from the kubelet's root: a short link.
    let link = std::env::temp_dir().join(format!("csi-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(root.join("plugins/csi.spiffe.io/csi.sock"), &link)?;
    let mut client = NodeClient::new(uds_channel(&link).await?);
    for _ in 0..2 {
        client
            .node_publish_volume(volume.publish_request(&target))
            .await?;
    }
    std::fs::remove_file(&link)?;
    assert_eq!(
        csi_mounts()?,
        [target.display().to_string()],
        "mounts of pod {name} after two republishes"
    );
    Ok(())
}

mod demo;
mod operator_deployment;
