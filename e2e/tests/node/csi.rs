//! The chart's CSI DaemonSet (`helm template --show-only templates/csi/csi-driver.yaml`)
//! on the real node, with images of our spiffe-csi-driver and our
//! csi-node-driver-registrar: the real kubelet registers the driver (CSINode), mounts the
//! agent's socket directory into a pod through it and unmounts it when the pod goes, and
//! registers the driver again after the registration socket is deleted, the driver
//! container restarts or the pod is replaced.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::image::binary_image_at;
use e2e::node::PROBE_IMAGE;
use e2e::ports::free_port;
use e2e::tools::{tool, workspace_binary};
use e2e::{ControlPlane, ControlPlaneOptions, Node, WorkDir, kube_util, wait};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::api::{Api, DeleteParams, ListParams, LogParams, PostParams};
use serde_json::Value;

const NAMESPACE: &str = "spire-system";
const DRIVER: &str = "csi.spiffe.io";
const DRIVER_IMAGE: &str = "spire-rs.test/spiffe-csi-driver";
const REGISTRAR_IMAGE: &str = "spire-rs.test/csi-node-driver-registrar";
const TAG: &str = "e2e";
/// The DaemonSet pods' label (the chart's selector labels).
const POD_SELECTOR: &str = "app.kubernetes.io/name=spiffe-csi-driver";

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
    // The registrar at upstream's entrypoint path, so upstream's args (and a `command`
    // naming the binary) work unchanged.
    for (binary, entrypoint, image) in [
        (
            &driver_binary,
            "/usr/local/bin/spiffe-csi-driver",
            DRIVER_IMAGE,
        ),
        (
            &registrar_binary,
            "/csi-node-driver-registrar",
            REGISTRAR_IMAGE,
        ),
    ] {
        let name = format!("{image}:{TAG}");
        let file = image.rsplit('/').next().unwrap_or(image);
        let archive = node.dir().join(format!("{file}.tar"));
        binary_image_at(binary, Path::new(entrypoint), &name, &archive)?;
        println!(
            "image {name}: {:.1} MiB (uncompressed archive of a {} build)",
            std::fs::metadata(&archive)?.len() as f64 / 1048576.0,
            if cfg!(debug_assertions) {
                "debug"
            } else {
                "release"
            }
        );
        node.import_image(&archive)?;
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
    let objects = render(&node.kubelet_root(), &socket_dir, free_port()?)?;
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
    let root = node.kubelet_root();
    let pid = driver_pid(&root)?;
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

/// The chart's CSI template with our images (never pulled), the node's kubelet root, the
/// test's agent directory, the host network and a free health port (the registrar's
/// /healthz is then a port of the host). Pods on the node's bridge network run too, but a
/// node torn down by killing containerd never releases their addresses: the bridge and
/// host-local's reservations (`/var/lib/cni/networks/e2e`) would stay on the host.
fn render(kubelet_root: &Path, agent_dir: &Path, health_port: u16) -> anyhow::Result<Vec<Value>> {
    let chart = Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/spire-rs");
    let home = WorkDir::new("helm")?;
    let set = [
        format!("csiDriver.image.repository={DRIVER_IMAGE}"),
        format!("csiDriver.image.tag={TAG}"),
        "csiDriver.image.pullPolicy=Never".to_owned(),
        format!("csiDriver.nodeDriverRegistrar.image.repository={REGISTRAR_IMAGE}"),
        format!("csiDriver.nodeDriverRegistrar.image.tag={TAG}"),
        "csiDriver.nodeDriverRegistrar.image.pullPolicy=Never".to_owned(),
        format!("csiDriver.nodeDriverRegistrar.healthPort={health_port}"),
        format!("csiDriver.kubeletPath={}", kubelet_root.display()),
        format!("csiDriver.agentSocketDir={}", agent_dir.display()),
        "csiDriver.hostNetwork=true".to_owned(),
        // Readable in the kept logs of a failed run.
        "csiDriver.logFormat=console".to_owned(),
    ];
    let mut command = std::process::Command::new(tool("helm")?);
    command
        .args(["template", "spire-rs"])
        .arg(&chart)
        .args(["--namespace", NAMESPACE])
        .args(["--show-only", "templates/csi/csi-driver.yaml"])
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    for value in &set {
        command.args(["--set", value]);
    }
    let out = command.output().context("running helm template")?;
    if !out.status.success() {
        bail!(
            "helm template failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let mut objects = Vec::new();
    for document in serde_norway::Deserializer::from_str(std::str::from_utf8(&out.stdout)?) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            objects.push(value);
        }
    }
    Ok(objects)
}

/// Creates the rendered objects; returns when the DaemonSet was created.
async fn create(client: &kube::Client, objects: &[Value]) -> anyhow::Result<Instant> {
    let mut daemonset = None;
    for object in objects {
        let pp = PostParams::default();
        match object["kind"].as_str() {
            Some("CSIDriver") => {
                let o: CSIDriver = serde_json::from_value(object.clone())?;
                Api::<CSIDriver>::all(client.clone())
                    .create(&pp, &o)
                    .await?;
            }
            Some("ServiceAccount") => {
                let o: ServiceAccount = serde_json::from_value(object.clone())?;
                Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
                    .create(&pp, &o)
                    .await?;
            }
            Some("DaemonSet") => {
                daemonset = Some(serde_json::from_value::<DaemonSet>(object.clone())?)
            }
            other => bail!("the CSI template rendered an unexpected kind {other:?}"),
        }
    }
    let daemonset = daemonset.context("the CSI template rendered no DaemonSet")?;
    let created = Instant::now();
    Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &daemonset)
        .await?;
    Ok(created)
}

/// Waits until CSINode `localhost` lists [`DRIVER`] (`listed`) or no longer does; returns
/// its nodeID when listed.
async fn wait_registered(
    client: &kube::Client,
    node: &mut Node,
    listed: bool,
) -> anyhow::Result<Option<String>> {
    let csinodes = Api::<CSINode>::all(client.clone());
    let name = node.name().to_owned();
    wait::until(
        &format!(
            "CSINode {name} {} {DRIVER}",
            if listed { "lists" } else { "drops" }
        ),
        Duration::from_secs(120),
        Duration::from_millis(100),
        || {
            let running = node.ensure_running();
            let csinodes = csinodes.clone();
            let name = name.clone();
            async move {
                running?;
                let drivers = csinodes
                    .get_opt(&name)
                    .await?
                    .map(|n| n.spec.drivers)
                    .unwrap_or_default();
                let ours = drivers.into_iter().find(|d| d.name == DRIVER);
                Ok(match (listed, ours) {
                    (true, Some(driver)) => Some(Some(driver.node_id)),
                    (false, None) => Some(None),
                    _ => None,
                })
            }
        },
    )
    .await
}

/// Waits until the DaemonSet's pod is Ready and `also` holds for it.
async fn wait_daemonset_pod(
    client: &kube::Client,
    node: &mut Node,
    also: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let also = &also;
    wait::until(
        "the CSI DaemonSet's pod Ready",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            let running = node.ensure_running();
            let pods = pods.clone();
            async move {
                running?;
                let list = pods
                    .list(&ListParams::default().labels(POD_SELECTOR))
                    .await?;
                let Some(pod) = list.items.into_iter().next() else {
                    bail!("no pod yet");
                };
                if is_ready(&pod) && also(&pod) {
                    return Ok(Some(pod));
                }
                bail!(
                    "pod {} not there yet: {:?}",
                    name_of(&pod),
                    pod.status.as_ref().map(|s| &s.container_statuses)
                )
            }
        },
    )
    .await
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

/// The DaemonSet's pods, their container states and the end of each container's log: what
/// a failed wait needs to say.
async fn daemonset_state(client: &kube::Client) -> String {
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    let list = match pods.list(&ListParams::default().labels(POD_SELECTOR)).await {
        Ok(list) => list,
        Err(e) => return format!("listing the DaemonSet's pods: {e}"),
    };
    let mut out = String::new();
    for pod in list.items {
        let name = name_of(&pod).to_owned();
        let statuses = pod
            .status
            .and_then(|s| s.container_statuses)
            .unwrap_or_default();
        for status in statuses {
            let params = LogParams {
                container: Some(status.name.clone()),
                tail_lines: Some(10),
                ..Default::default()
            };
            let log = pods
                .logs(&name, &params)
                .await
                .unwrap_or_else(|e| e.to_string());
            out.push_str(&format!(
                "pod {name} container {}: ready {}, restarts {}, state {:?}\n{log}\n",
                status.name, status.ready, status.restart_count, status.state
            ));
        }
    }
    out
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn restarts(pod: &Pod, container: &str) -> i32 {
    pod.status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.iter().find(|c| c.name == container))
        .map_or(0, |c| c.restart_count)
}

fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("?")
}

fn is_mount_point(path: &Path) -> anyhow::Result<bool> {
    let path = path.to_str().context("path is not UTF-8")?;
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path)))
}

/// The driver process of this node's DaemonSet pod (the host sees the processes of
/// containerd's PID namespace): the one whose `--kubelet-pods-dir` is this kubelet's.
fn driver_pid(kubelet_root: &Path) -> anyhow::Result<rustix::process::Pid> {
    let flag = format!("--kubelet-pods-dir={}", kubelet_root.join("pods").display());
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|p| p.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
        let is_driver = args
            .first()
            .is_some_and(|a| a.ends_with(b"/spiffe-csi-driver"));
        if is_driver && args.contains(&flag.as_bytes()) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => rustix::process::Pid::from_raw(*pid).context("pid 0"),
        other => bail!("want one spiffe-csi-driver process with {flag}, found {other:?}"),
    }
}
