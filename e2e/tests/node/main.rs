//! A real node: containerd and a kubelet registered with the control plane run a pod
//! from an image this repository builds, and the apiserver reaches the kubelet for its
//! log. See `e2e::node`.

mod kubelet_api;

use std::time::{Duration, Instant};

use anyhow::bail;
use e2e::node::PROBE_IMAGE;
use e2e::{ControlPlane, ControlPlaneOptions, Node, wait};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, LogParams, PostParams};

#[tokio::test]
async fn kubelet_runs_a_pod_from_an_imported_image_and_serves_its_log() -> anyhow::Result<()> {
    let started = Instant::now();
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        ..Default::default()
    })
    .await?;
    let mut node = Node::start(&cp).await?;
    let ready_after = started.elapsed();
    let client = cp.client();

    // The ServiceAccount admission plugin wants the namespace's default ServiceAccount,
    // which only kube-controller-manager would create.
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "default"},
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await?;

    let line = format!("hello from a real kubelet on {}", node.name());
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "probe"},
        "spec": {
            // No scheduler runs: the pod is bound to the node directly.
            "nodeName": node.name(),
            "hostNetwork": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "probe",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "args": ["echo", line],
            }],
        },
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await?;

    let phase = wait::until(
        "Pod default/probe Succeeded",
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                let pod = pods.get("probe").await?;
                let status = pod.status.unwrap_or_default();
                match status.phase.as_deref() {
                    Some("Succeeded") => Ok(Some("Succeeded")),
                    Some("Failed") => {
                        bail!("Pod default/probe Failed: {:?}", status.container_statuses)
                    }
                    other => bail!(
                        "Pod default/probe phase {other:?}, conditions {:?}, containers {:?}",
                        status.conditions,
                        status.container_statuses
                    ),
                }
            }
        },
    )
    .await?;
    assert_eq!(phase, "Succeeded");

    // pods/log: the apiserver calls the kubelet's /containerLogs with its client certificate.
    let log = pods.logs("probe", &LogParams::default()).await?;
    assert_eq!(log.trim_end(), line, "log of default/probe");

    pods.delete("probe", &DeleteParams::default()).await?;
    // The object goes only once the kubelet has confirmed the containers are gone.
    wait::until(
        "Pod default/probe deleted by the kubelet",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                Ok(pods.get_opt("probe").await?.is_none().then_some(()))
            }
        },
    )
    .await?;
    println!(
        "node {} Ready after {ready_after:?}; pod ran, logged and was deleted after {:?}",
        node.name(),
        started.elapsed()
    );
    Ok(())
}
