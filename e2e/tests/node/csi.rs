//! The chart's CSI DaemonSet (`helm template --show-only templates/csi/csi-driver.yaml`)
//! on the real node, with images of our spiffe-csi-driver and our
//! csi-node-driver-registrar: the real kubelet registers the driver (CSINode), mounts the
//! agent's socket directory into a pod through it and unmounts it when the pod goes, and
//! registers the driver again after the registration socket is deleted, the driver
//! container restarts or the pod is replaced.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::csi_node::{
    DRIVER, NAMESPACE, create, daemonset_state, driver_pid, import_our_images, is_mount_point,
    is_ready, name_of, render, wait_daemonset_pod, wait_registered,
};
use e2e::node::PROBE_IMAGE;
use e2e::ports::free_port;
use e2e::tools::workspace_binary;
use e2e::{ControlPlane, ControlPlaneOptions, Node, kube_util, wait};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, LogParams, PostParams};

#[tokio::test]
async fn chart_csi_daemonset_registers_with_kubelet_and_mounts_the_agent_socket()
-> anyhow::Result<()> {
    let driver_binary = workspace_binary("spiffe-csi-driver", "spiffe-csi-driver")?;
    let registrar_binary =
        workspace_binary("csi-node-driver-registrar", "csi-node-driver-registrar")?;
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        scheduler: true,
        controller_manager: true,
        ..Default::default()
    })
    .await?;
    let mut node = Node::start(&cp).await?;
    let client = cp.client();
    for (image, size) in import_our_images(&node, &driver_binary, &registrar_binary)? {
        println!(
            "image {image}: {:.1} MiB (uncompressed archive of a {} build)",
            size as f64 / 1048576.0,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
    }

    // The agent's socket directory: a listening socket is all the driver looks for. The
    // chart mounts its parent with HostToContainer propagation, which containerd allows
    // only from a shared (or slave) mount ("path ... is mounted on "/" but it is not a
    // shared or slave mount"): on this node that is the kubelet's root directory alone.
    let socket_dir = node.kubelet_root().join("e2e-agent/sockets");
    std::fs::create_dir_all(&socket_dir)?;
    let _agent_socket =
        std::os::unix::net::UnixListener::bind(socket_dir.join("spire-agent.sock"))?;

    kube_util::ensure_namespace(&client, NAMESPACE).await?;
    default_service_account(&client).await?;
    let objects = render(&node.kubelet_root(), &socket_dir, free_port()?, &[])?;
    let created = create(&client, &objects).await?;
    let node_id = match wait_registered(&client, &mut node, true).await {
        Ok(id) => id,
        Err(e) => return Err(e.context(daemonset_state(&client).await)),
    };
    let registered_after = created.elapsed();
    assert_eq!(
        node_id.as_deref(),
        Some(node.name()),
        "nodeID of driver {DRIVER} in CSINode {}",
        node.name()
    );
    let pod = wait_daemonset_pod(&client, &mut node, |_| true).await?;
    println!(
        "CSINode {} lists {DRIVER} {registered_after:.1?} after the DaemonSet was created; \
         pod {NAMESPACE}/{} Ready after {:.1?}",
        node.name(),
        name_of(&pod),
        created.elapsed()
    );

    workload_gets_the_socket(&client, &mut node, "workload-1").await?;

    // kubelet drops a driver whose registration socket goes; the registrar's liveness
    // probe then fails, and the restarted registrar registers it again.
    let socket = node
        .kubelet_root()
        .join(format!("plugins_registry/{DRIVER}-reg.sock"));
    std::fs::remove_file(&socket).with_context(|| format!("removing {}", socket.display()))?;
    let removed = Instant::now();
    wait_registered(&client, &mut node, false).await?;
    let deregistered_after = removed.elapsed();
    let node_id = wait_registered(&client, &mut node, true).await?;
    assert_eq!(
        node_id.as_deref(),
        Some(node.name()),
        "nodeID after re-registration"
    );
    let pod = wait_daemonset_pod(&client, &mut node, |pod| {
        restarts(pod, "node-driver-registrar") >= 1
    })
    .await?;
    println!(
        "registration socket removed: driver dropped from CSINode after {deregistered_after:.1?}, \
         registrar restarted ({} restarts) and the driver listed again after {:.1?}",
        restarts(&pod, "node-driver-registrar"),
        removed.elapsed()
    );

    // The driver container dies and is restarted; kubelet reaches the new process.
    let pid = driver_pid(&pod)?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL)
        .with_context(|| format!("killing the driver, pid {pid:?}"))?;
    let killed = Instant::now();
    let pod = wait_daemonset_pod(&client, &mut node, |pod| {
        restarts(pod, "spiffe-csi-driver") >= 1
    })
    .await?;
    println!(
        "driver killed: container restarted and Ready after {:.1?} (pod {})",
        killed.elapsed(),
        name_of(&pod)
    );
    wait_registered(&client, &mut node, true).await?;
    workload_gets_the_socket(&client, &mut node, "workload-2").await?;

    // A deleted pod (a rollout): the registrar removes its socket on SIGTERM, kubelet drops
    // the driver, and the DaemonSet's next pod registers it again.
    let old = name_of(&pod).to_owned();
    Api::<Pod>::namespaced(client.clone(), NAMESPACE)
        .delete(&old, &DeleteParams::default())
        .await?;
    let deleted = Instant::now();
    wait_registered(&client, &mut node, false).await?;
    let dropped_after = deleted.elapsed();
    let pod = wait_daemonset_pod(&client, &mut node, |pod| name_of(pod) != old).await?;
    wait_registered(&client, &mut node, true).await?;
    println!(
        "pod {old} deleted: driver dropped from CSINode after {dropped_after:.1?}, \
         listed again through pod {} after {:.1?}",
        name_of(&pod),
        deleted.elapsed()
    );
    Ok(())
}

/// Waits until kube-controller-manager has made ServiceAccount `default/default`, which
/// the workload pods need.
async fn default_service_account(client: &kube::Client) -> anyhow::Result<()> {
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
    Ok(())
}

/// A pod with the inline CSI volume: an init container lists the volume, another prints
/// its mount table, the main container waits. Asserts the agent socket is there (read-only),
/// the volume is a mount on the node while the pod runs, and is gone with the pod.
async fn workload_gets_the_socket(
    client: &kube::Client,
    node: &mut Node,
    name: &str,
) -> anyhow::Result<()> {
    let mount = serde_json::json!([{
        "name": "spiffe-workload-api",
        "mountPath": "/spiffe-workload-api",
        "readOnly": true,
    }]);
    let container = |name: &str, args: &[&str]| {
        serde_json::json!({
            "name": name,
            "image": PROBE_IMAGE,
            "imagePullPolicy": "Never",
            "args": args,
            "volumeMounts": mount,
        })
    };
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "initContainers": [
                container("ls", &["ls", "/spiffe-workload-api"]),
                container("mounts", &["cat", "/proc/self/mountinfo"]),
            ],
            "containers": [container("main", &[])],
            "volumes": [{
                "name": "spiffe-workload-api",
                "csi": {"driver": DRIVER, "readOnly": true},
            }],
        },
    }))?;
    let pods = Api::<Pod>::namespaced(client.clone(), "default");
    pods.create(&PostParams::default(), &pod).await?;
    let started = Instant::now();
    let pod = wait::until(
        &format!("Pod default/{name} Ready"),
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                let pod = pods.get(name).await?;
                if is_ready(&pod) {
                    return Ok(Some(pod));
                }
                let status = pod.status.unwrap_or_default();
                bail!(
                    "phase {:?}, conditions {:?}, init containers {:?}",
                    status.phase,
                    status.conditions,
                    status.init_container_statuses
                )
            }
        },
    )
    .await?;
    let ready_after = started.elapsed();
    let log = |container: &str| {
        let pods = pods.clone();
        let params = LogParams {
            container: Some(container.to_owned()),
            ..Default::default()
        };
        async move { pods.logs(name, &params).await }
    };
    assert_eq!(
        log("ls").await?.trim_end(),
        "spire-agent.sock socket",
        "what default/{name} sees in its CSI volume"
    );
    let mounts = log("mounts").await?;
    let options = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/spiffe-workload-api"))
        .and_then(|l| l.split(' ').nth(5))
        .with_context(|| {
            format!("/spiffe-workload-api is not a mount in default/{name}:\n{mounts}")
        })?;
    assert!(
        options.split(',').any(|o| o == "ro"),
        "/spiffe-workload-api in default/{name} is mounted {options}, want ro"
    );

    let uid = pod.metadata.uid.clone().context("pod without uid")?;
    let target = node.kubelet_root().join(format!(
        "pods/{uid}/volumes/kubernetes.io~csi/spiffe-workload-api/mount"
    ));
    assert!(
        is_mount_point(&target)?,
        "{} is not a mount point on the node while default/{name} runs",
        target.display()
    );

    pods.delete(name, &DeleteParams::default()).await?;
    let deleting = Instant::now();
    wait::until(
        &format!("Pod default/{name} gone"),
        Duration::from_secs(90),
        Duration::from_millis(250),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                Ok(pods.get_opt(name).await?.is_none().then_some(()))
            }
        },
    )
    .await?;
    assert!(
        !is_mount_point(&target)?,
        "{} is still mounted after default/{name} was deleted",
        target.display()
    );
    println!(
        "default/{name}: Ready with the agent socket after {ready_after:.1?}, \
         gone and unmounted {:.1?} after deletion",
        deleting.elapsed()
    );
    Ok(())
}

fn restarts(pod: &Pod, container: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .map_or(0, |c| c.restart_count)
}
