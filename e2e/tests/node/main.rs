//! A real node: containerd and a kubelet registered with the control plane run pods
//! from an image this repository builds. See `e2e::node`. One scenario per file.

mod csi;
mod kubelet_api;
mod pod;
mod volumes;
mod workspace_image;

use std::time::Duration;

use anyhow::bail;
use e2e::node::PROBE_IMAGE;
use e2e::{Node, wait};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, PostParams};

/// Creates the `default` ServiceAccount of namespace `default`: the ServiceAccount
/// admission plugin wants it, and only kube-controller-manager would create it.
pub async fn default_service_account(client: &kube::Client) -> anyhow::Result<()> {
    let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "default"},
    }))?;
    Api::<ServiceAccount>::namespaced(client.clone(), "default")
        .create(&PostParams::default(), &sa)
        .await?;
    Ok(())
}

/// Creates hostNetwork pod `default/<name>` running `/probe echo <line>` from the probe
/// image (never pulled), bound to `node_name` when given (no scheduler then), and
/// waits until it has Succeeded; returns the pod as it was then.
pub async fn run_probe(
    client: &kube::Client,
    node: &mut Node,
    name: &str,
    node_name: Option<&str>,
    line: &str,
) -> anyhow::Result<Pod> {
    run_pod(client, node, name, node_name, PROBE_IMAGE, &["echo", line]).await
}

/// [`run_probe`] with another image (imported, never pulled) and arguments.
pub async fn run_pod(
    client: &kube::Client,
    node: &mut Node,
    name: &str,
    node_name: Option<&str>,
    image: &str,
    args: &[&str],
) -> anyhow::Result<Pod> {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "nodeName": node_name,
            "hostNetwork": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": image,
                "imagePullPolicy": "Never",
                "args": args,
            }],
        },
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await?;
    wait::until(
        &format!("Pod default/{name} Succeeded"),
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                let pod = pods.get(name).await?;
                let status = pod.status.clone().unwrap_or_default();
                match status.phase.as_deref() {
                    Some("Succeeded") => Ok(Some(pod)),
                    Some("Failed") => {
                        bail!("Pod default/{name} Failed: {:?}", status.container_statuses)
                    }
                    other => bail!(
                        "Pod default/{name} phase {other:?}, conditions {:?}, containers {:?}",
                        status.conditions,
                        status.container_statuses
                    ),
                }
            }
        },
    )
    .await
}

/// Waits until pod `default/<name>` has Succeeded or Failed; returns the phase.
pub async fn finished(pods: &Api<Pod>, node: &mut Node, name: &str) -> anyhow::Result<String> {
    wait::until(
        &format!("Pod default/{name} finished"),
        Duration::from_secs(90),
        Duration::from_millis(500),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                let phase = pods.get(name).await?.status.and_then(|s| s.phase);
                Ok(phase.filter(|p| p == "Succeeded" || p == "Failed"))
            }
        },
    )
    .await
}
