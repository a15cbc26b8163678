//! Mount propagation between the host and containers, as on a real node: volumes the
//! kubelet mounts on the host (a downward API volume is a tmpfs under the kubelet's root
//! directory) reach containers, and mounts a privileged container makes under a
//! `Bidirectional` volume reach the host (what a CSI driver's NodePublishVolume does).

use e2e::node::PROBE_IMAGE;
use e2e::{ControlPlane, ControlPlaneOptions, Node};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};

use crate::{default_service_account, finished};

#[tokio::test]
async fn kubelet_volumes_reach_the_container() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        ..Default::default()
    })
    .await?;
    let mut node = Node::start(&cp).await?;
    let client = cp.client();
    default_service_account(&client).await?;

    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "reader", "labels": {"marker": "from-the-downward-api"}},
        "spec": {
            "nodeName": node.name(),
            "hostNetwork": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["cat", "/etc/podinfo/marker"],
                "volumeMounts": [{"name": "podinfo", "mountPath": "/etc/podinfo"}],
            }],
            "volumes": [{
                "name": "podinfo",
                "downwardAPI": {"items": [
                    {"path": "marker", "fieldRef": {"fieldPath": "metadata.labels['marker']"}},
                ]},
            }],
        },
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await?;
    let phase = finished(&pods, &mut node, "reader").await?;
    let log = pods.logs("reader", &LogParams::default()).await?;
    assert_eq!(
        (phase.as_str(), log.trim_end()),
        ("Succeeded", "from-the-downward-api"),
        "default/reader: phase and log"
    );
    Ok(())
}

#[tokio::test]
async fn bidirectional_mounts_reach_the_host() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        ..Default::default()
    })
    .await?;
    let mut node = Node::start(&cp).await?;
    let client = cp.client();
    default_service_account(&client).await?;

    // Under the kubelet's root directory, like a CSI driver's view of the pods' volumes.
    let shared = node.kubelet_root().join("plugins/e2e-propagation");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "mounter"},
        "spec": {
            "nodeName": node.name(),
            "hostNetwork": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "containers": [{
                "name": "main",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["mount-tmpfs", "/host/inner"],
                "securityContext": {"privileged": true},
                "volumeMounts": [{
                    "name": "host",
                    "mountPath": "/host",
                    "mountPropagation": "Bidirectional",
                }],
            }],
            "volumes": [{
                "name": "host",
                "hostPath": {"path": shared, "type": "DirectoryOrCreate"},
            }],
        },
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await?;
    let phase = finished(&pods, &mut node, "mounter").await?;
    let log = pods.logs("mounter", &LogParams::default()).await?;
    assert_eq!(
        (phase.as_str(), log.trim_end()),
        ("Succeeded", "mounted /host/inner"),
        "default/mounter: phase and log"
    );
    let inner = shared.join("inner");
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    assert!(
        mountinfo
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(inner.to_str().unwrap_or_default())),
        "{} is not a mount point on the host",
        inner.display()
    );
    Ok(())
}
