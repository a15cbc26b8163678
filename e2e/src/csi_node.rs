//! The chart's CSI DaemonSet (`helm template --show-only templates/csi/csi-driver.yaml`)
//! on a real [`Node`]: rendered with images imported into the node (never pulled),
//! created object by object, and watched as kubelet registers the driver (CSINode) and
//! runs its pod. Shared by the node tests and the benchmark's kubelet suite.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::api::storage::v1::{CSIDriver, CSINode};
use kube::api::{Api, ListParams, LogParams, PostParams};
use serde_json::Value;

use crate::image::binary_image_at;
use crate::node::Node;
use crate::tools::tool;
use crate::wait;
use crate::workdir::WorkDir;

/// The namespace the DaemonSet runs in.
pub const NAMESPACE: &str = "spire-system";
/// The CSI driver's name (`csiDriver.pluginName`).
pub const DRIVER: &str = "csi.spiffe.io";
/// Our driver's image.
pub const DRIVER_IMAGE: &str = "spire-rs.test/spiffe-csi-driver:e2e";
/// Our node-driver-registrar's image.
pub const REGISTRAR_IMAGE: &str = "spire-rs.test/csi-node-driver-registrar:e2e";
/// The DaemonSet pods' label (the chart's selector labels).
pub const POD_SELECTOR: &str = "app.kubernetes.io/name=spiffe-csi-driver";
/// The driver container's name.
pub const DRIVER_CONTAINER: &str = "spiffe-csi-driver";

/// Packs `binary` as image `name` with the binary at `entrypoint` and imports it into
/// `node`; returns the archive's size in bytes.
pub fn import_binary_image(
    node: &Node,
    binary: &Path,
    entrypoint: &str,
    name: &str,
) -> anyhow::Result<u64> {
    let file = name.rsplit('/').next().unwrap_or(name).replace(':', "-");
    let archive = node.dir().join(format!("{file}.tar"));
    binary_image_at(binary, Path::new(entrypoint), name, &archive)?;
    let size = std::fs::metadata(&archive)?.len();
    node.import_image(&archive)?;
    std::fs::remove_file(&archive)?;
    Ok(size)
}

/// Images our driver and registrar run from, at the entrypoint paths of upstream's
/// images, so that upstream's args (and a `command` naming the binary) work unchanged.
pub fn import_our_images(
    node: &Node,
    driver: &Path,
    registrar: &Path,
) -> anyhow::Result<Vec<(&'static str, u64)>> {
    Ok(vec![
        (
            DRIVER_IMAGE,
            import_binary_image(
                node,
                driver,
                "/usr/local/bin/spiffe-csi-driver",
                DRIVER_IMAGE,
            )?,
        ),
        (
            REGISTRAR_IMAGE,
            import_binary_image(
                node,
                registrar,
                "/csi-node-driver-registrar",
                REGISTRAR_IMAGE,
            )?,
        ),
    ])
}

/// The chart's CSI template with [`DRIVER_IMAGE`] and [`REGISTRAR_IMAGE`] (never
/// pulled), the node's kubelet root, `agent_dir`, the host network and `health_port` for
/// the registrar's /healthz (a port of the host then), then `extra` `--set` values. Pods
/// on the node's bridge network run too, but a node torn down by killing containerd never
/// releases their addresses: the bridge and host-local's reservations would stay on the
/// host.
pub fn render(
    kubelet_root: &Path,
    agent_dir: &Path,
    health_port: u16,
    extra: &[String],
) -> anyhow::Result<Vec<Value>> {
    let chart = crate::helm::chart_dir();
    let home = WorkDir::new("helm")?;
    let (driver_repository, driver_tag) = split_image(DRIVER_IMAGE)?;
    let (registrar_repository, registrar_tag) = split_image(REGISTRAR_IMAGE)?;
    let mut set = vec![
        format!("csiDriver.image.repository={driver_repository}"),
        format!("csiDriver.image.tag={driver_tag}"),
        "csiDriver.image.pullPolicy=Never".to_owned(),
        format!("csiDriver.nodeDriverRegistrar.image.repository={registrar_repository}"),
        format!("csiDriver.nodeDriverRegistrar.image.tag={registrar_tag}"),
        "csiDriver.nodeDriverRegistrar.image.pullPolicy=Never".to_owned(),
        format!("csiDriver.nodeDriverRegistrar.healthPort={health_port}"),
        format!("csiDriver.kubeletPath={}", kubelet_root.display()),
        format!("csiDriver.agentSocketDir={}", agent_dir.display()),
        "csiDriver.hostNetwork=true".to_owned(),
        // Readable in the kept logs of a failed run.
        "csiDriver.logFormat=console".to_owned(),
    ];
    set.extend_from_slice(extra);
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

fn split_image(image: &str) -> anyhow::Result<(&str, &str)> {
    image
        .rsplit_once(':')
        .with_context(|| format!("image {image} has no tag"))
}

/// Creates the rendered objects (a CSIDriver, ServiceAccount and DaemonSet; an object
/// that exists already is left as it is, except the DaemonSet); returns when the
/// DaemonSet was created.
pub async fn create(client: &kube::Client, objects: &[Value]) -> anyhow::Result<Instant> {
    let mut daemonset = None;
    for object in objects {
        let pp = PostParams::default();
        let result = match object["kind"].as_str() {
            Some("CSIDriver") => {
                let o: CSIDriver = serde_json::from_value(object.clone())?;
                Api::<CSIDriver>::all(client.clone())
                    .create(&pp, &o)
                    .await
                    .map(drop)
            }
            Some("ServiceAccount") => {
                let o: ServiceAccount = serde_json::from_value(object.clone())?;
                Api::<ServiceAccount>::namespaced(client.clone(), NAMESPACE)
                    .create(&pp, &o)
                    .await
                    .map(drop)
            }
            Some("DaemonSet") => {
                daemonset = Some(serde_json::from_value::<DaemonSet>(object.clone())?);
                Ok(())
            }
            other => bail!("the CSI template rendered an unexpected kind {other:?}"),
        };
        match result {
            Ok(()) => {}
            Err(kube::Error::Api(status)) if status.is_already_exists() => {}
            Err(e) => return Err(e.into()),
        }
    }
    let daemonset = daemonset.context("the CSI template rendered no DaemonSet")?;
    let created = Instant::now();
    Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE)
        .create(&PostParams::default(), &daemonset)
        .await?;
    Ok(created)
}

/// Waits until CSINode `<node>` lists [`DRIVER`] (`listed`) or no longer does; returns
/// its nodeID when listed.
pub async fn wait_registered(
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
pub async fn wait_daemonset_pod(
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

/// The DaemonSet's pods, their container states and the end of each container's log: what
/// a failed wait needs to say.
pub async fn daemonset_state(client: &kube::Client) -> String {
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

/// Whether the pod's Ready condition is True.
pub fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// The pod's name, or `?`.
pub fn name_of(pod: &Pod) -> &str {
    pod.metadata.name.as_deref().unwrap_or("?")
}

/// Whether `path` is a mount point in this process's mount namespace.
pub fn is_mount_point(path: &Path) -> anyhow::Result<bool> {
    let path = path.to_str().context("path is not UTF-8")?;
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(path)))
}

/// The driver process of DaemonSet pod `pod` (the host sees the processes of
/// containerd's PID namespace): the one whose binary is `spiffe-csi-driver` and whose
/// cgroup is the pod's (the node's kubelet names pod cgroups `pod<uid>`).
pub fn driver_pid(pod: &Pod) -> anyhow::Result<rustix::process::Pid> {
    let uid = pod.metadata.uid.as_deref().context("pod without uid")?;
    let cgroup = format!("/pod{uid}/");
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
        let (Ok(cmdline), Ok(cgroups)) = (
            std::fs::read(entry.path().join("cmdline")),
            std::fs::read_to_string(entry.path().join("cgroup")),
        ) else {
            continue;
        };
        let is_driver = cmdline
            .split(|b| *b == 0)
            .next()
            .is_some_and(|a| a.ends_with(b"/spiffe-csi-driver"));
        if is_driver && cgroups.contains(&cgroup) {
            found.push(pid);
        }
    }
    match found.as_slice() {
        [pid] => rustix::process::Pid::from_raw(*pid).context("pid 0"),
        other => bail!(
            "want one spiffe-csi-driver process in the cgroup of pod {}, found {other:?}",
            name_of(pod)
        ),
    }
}
