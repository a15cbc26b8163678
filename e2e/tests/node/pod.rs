//! The kubelet runs our image in a pod, the apiserver reads its log from the kubelet,
//! and the kubelet finishes the pod's deletion; kube-scheduler binds pods to the node
//! once the node lifecycle controller has lifted its not-ready taint.

use std::time::{Duration, Instant};

use e2e::{ControlPlane, ControlPlaneOptions, Node, wait};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, LogParams};

use crate::{default_service_account, run_probe};

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
    default_service_account(&client).await?;

    let line = format!("hello from a real kubelet on {}", node.name());
    let name = node.name().to_owned();
    run_probe(&client, &mut node, "probe", Some(&name), &line).await?;

    // pods/log: the apiserver calls the kubelet's /containerLogs with its client certificate.
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
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

#[tokio::test]
async fn scheduler_binds_a_pod_to_the_node() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        scheduler: true,
        controller_manager: true,
        ..ControlPlaneOptions::default()
    })
    .await?;
    let mut node = Node::start(&cp).await?;
    let client = cp.client();
    // kube-controller-manager creates it.
    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    wait::until(
        "ServiceAccount default/default",
        Duration::from_secs(60),
        Duration::from_millis(250),
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?) }
        },
    )
    .await?;

    let pod = run_probe(&client, &mut node, "scheduled", None, "scheduled").await?;
    let bound = pod.spec.and_then(|s| s.node_name);
    assert_eq!(
        bound.as_deref(),
        Some(node.name()),
        "spec.nodeName of default/scheduled"
    );
    Ok(())
}
