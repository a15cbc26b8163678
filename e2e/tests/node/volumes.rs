//! Volumes the kubelet mounts on the host (a downward API volume is a tmpfs under the
//! kubelet's root directory) reach the containers containerd starts.

use e2e::node::PROBE_IMAGE;
use e2e::{ControlPlane, ControlPlaneOptions, Node, wait};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams, PostParams};
use std::time::Duration;

use crate::default_service_account;

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
    let phase = wait::until(
        "Pod default/reader finished",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                let phase = pods.get("reader").await?.status.and_then(|s| s.phase);
                Ok(phase.filter(|p| p == "Succeeded" || p == "Failed"))
            }
        },
    )
    .await?;
    let log = pods.logs("reader", &LogParams::default()).await?;
    assert_eq!(
        (phase.as_str(), log.trim_end()),
        ("Succeeded", "from-the-downward-api"),
        "default/reader: phase and log"
    );
    Ok(())
}
