//! The CSI drivers through the real kubelet: a control plane and a real node (containerd
//! and kubelet, `e2e::node`), each driver deployed as its users deploy it, then
//! `--kubelet-pods` pods with the inline CSI volume created at once, and deleted at once
//! when every one is Ready.
//!
//! - Ours: our chart's CSIDriver and DaemonSet (`requiresRepublish: true`: kubelet calls
//!   NodePublishVolume again on every pod sync).
//! - Go: the container shape and CSIDriver of spiffe/helm-charts-hardened (three
//!   single-dash flags, the agent directory mounted read-only, no `requiresRepublish`),
//!   in our chart's DaemonSet otherwise; the Go driver image holds the reference build.
//!
//! Both run beside our node-driver-registrar. Per run: each pod's latency from its
//! create call to Ready (the volume is set up before any container starts) and from its
//! delete call to the object being gone (kubelet removes a pod only once its volumes are
//! unmounted); the driver's calls as kubelet times them (`csi_operations_seconds` from
//! the kubelet's /metrics), failed calls, the driver's CPU time
//! and RSS, and CSI mounts left on the node.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::csi_node::{
    DRIVER, DRIVER_CONTAINER, NAMESPACE, POD_SELECTOR, create, daemonset_state, driver_pid,
    import_binary_image, import_our_images, is_ready, name_of, render, wait_daemonset_pod,
    wait_registered,
};
use e2e::node::PROBE_IMAGE;
use e2e::operator::MetricsSnapshot;
use e2e::{ControlPlane, ControlPlaneOptions, Node, kube_util, wait};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::DaemonSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::runtime::watcher;
use serde_json::{Value, json};

use crate::csi::{CsiFigures, DriverKind};
use crate::probe::{cpu_seconds, peak_rss_mib, quantile, rss_mib};

/// The Go driver's image: the reference build at the path of upstream's image.
const GO_DRIVER_IMAGE: &str = "spire-rs.test/spiffe-csi-driver-go:e2e";
/// The workload pods' namespace and label.
const WORKLOAD_NAMESPACE: &str = "default";
const WORKLOAD_LABEL: (&str, &str) = ("app", "bench-csi");
/// Creates and deletes in flight.
const IN_FLIGHT: usize = 8;
/// How long the pods of one run may take to become Ready, and to be gone.
const READY_TIMEOUT: Duration = Duration::from_secs(300);
const GONE_TIMEOUT: Duration = Duration::from_secs(180);

/// The node and what every run shares.
struct Stand {
    node: Node,
    control_plane: ControlPlane,
    agent_dir: PathBuf,
    _agent: std::os::unix::net::UnixListener,
    /// The kubelet's API, as a ServiceAccount allowed `nodes/metrics` (the API server's
    /// node proxy refuses the node's loopback address).
    kubelet: kube::Client,
    /// `csiDriver.requiresRepublish` for ours.
    republish: bool,
}

/// Runs every driver `runs` times, alternating, with `pods` pods each.
/// `republish`: ours' `csiDriver.requiresRepublish`.
pub async fn compare(
    drivers: &[DriverKind],
    runs: usize,
    pods: usize,
    republish: bool,
) -> anyhow::Result<BTreeMap<&'static str, Vec<CsiFigures>>> {
    let mut stand = start(drivers).await?;
    stand.republish = republish;
    let mut out: BTreeMap<&'static str, Vec<CsiFigures>> = BTreeMap::new();
    for run in 0..runs {
        for &kind in drivers {
            let figures = one_run(&mut stand, kind, pods)
                .await
                .with_context(|| format!("kubelet CSI run {run} of {}", kind.name()))?;
            eprintln!(
                "[bench] kubelet CSI run {run} {}: {}",
                kind.name(),
                json!(figures)
            );
            out.entry(kind.name()).or_default().push(figures);
        }
    }
    Ok(out)
}

async fn start(drivers: &[DriverKind]) -> anyhow::Result<Stand> {
    let started = Instant::now();
    let control_plane = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        scheduler: true,
        controller_manager: true,
        ..Default::default()
    })
    .await?;
    let node = Node::start(&control_plane).await?;
    let registrar =
        e2e::tools::workspace_binary("csi-node-driver-registrar", "csi-node-driver-registrar")?;
    import_our_images(&node, &e2e::csi::our_driver()?, &registrar)?;
    if drivers.contains(&DriverKind::Go) {
        import_binary_image(
            &node,
            &e2e::tools::tool("spiffe-csi-driver")?,
            "/usr/local/bin/spiffe-csi-driver",
            GO_DRIVER_IMAGE,
        )?;
    }
    // Under the kubelet's root: the only shared mount on this node, which the chart's
    // HostToContainer mount of the directory's parent needs (see e2e::csi_node).
    let agent_dir = node.kubelet_root().join("bench-agent/sockets");
    std::fs::create_dir_all(&agent_dir)?;
    let agent = std::os::unix::net::UnixListener::bind(agent_dir.join("spire-agent.sock"))?;
    let client = control_plane.client();
    kube_util::ensure_namespace(&client, NAMESPACE).await?;
    kube_util::ensure_service_account(&client, WORKLOAD_NAMESPACE, "default").await?;
    let kubelet = metrics_reader(&client, &node).await?;
    eprintln!(
        "[bench] kubelet CSI: control plane and node up in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    Ok(Stand {
        node,
        control_plane,
        agent_dir,
        _agent: agent,
        kubelet,
        republish: true,
    })
}

/// A client of the kubelet's API with the token of a ServiceAccount that may read its
/// /metrics; returns once it does.
async fn metrics_reader(client: &kube::Client, node: &Node) -> anyhow::Result<kube::Client> {
    const NAME: &str = "bench-kubelet-metrics";
    kube_util::ensure_service_account(client, NAMESPACE, NAME).await?;
    let role: ClusterRole = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "rules": [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(json!({
        "metadata": {"name": NAME},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": NAME},
        "subjects": [{"kind": "ServiceAccount", "name": NAME, "namespace": NAMESPACE}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;
    let token = kube_util::service_account_token(client, NAMESPACE, NAME).await?;
    let kubelet = node.kubelet_client(&token).await?;
    // The authorizer's cache takes RBAC changes in moments.
    wait::until(
        "the kubelet's /metrics",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let kubelet = kubelet.clone();
            async move { kubelet_csi_calls(&kubelet).await.map(Some) }
        },
    )
    .await?;
    Ok(kubelet)
}

/// The CSIDriver and DaemonSet `kind`'s users deploy (see the module's doc).
fn objects(stand: &Stand, kind: DriverKind) -> anyhow::Result<Vec<Value>> {
    let mut objects = render(
        &stand.node.kubelet_root(),
        &stand.agent_dir,
        e2e::ports::free_port()?,
        &[
            // No grace on the way out: runs are separated by the DaemonSet's deletion.
            "csiDriver.shutdownDelaySeconds=0".to_owned(),
            format!("csiDriver.requiresRepublish={}", stand.republish),
        ],
    )?;
    if kind == DriverKind::Go {
        for object in &mut objects {
            match object["kind"].as_str() {
                Some("CSIDriver") => as_hardened_csidriver(object)?,
                Some("DaemonSet") => as_hardened_daemonset(object, &stand.agent_dir)?,
                _ => {}
            }
        }
    }
    Ok(objects)
}

/// The hardened chart's CSIDriver: ours without `requiresRepublish`.
fn as_hardened_csidriver(object: &mut Value) -> anyhow::Result<()> {
    object["spec"]
        .as_object_mut()
        .context("CSIDriver without spec")?
        .remove("requiresRepublish");
    Ok(())
}

/// The hardened chart's driver container in our DaemonSet: the Go driver image, its three
/// flags, and the agent directory itself mounted read-only at `/spire-agent-socket`.
fn as_hardened_daemonset(object: &mut Value, agent_dir: &Path) -> anyhow::Result<()> {
    let spec = &mut object["spec"]["template"]["spec"];
    let container = spec["containers"]
        .as_array_mut()
        .and_then(|c| c.iter_mut().find(|c| c["name"] == DRIVER_CONTAINER))
        .context("DaemonSet without the driver container")?;
    container["image"] = json!(GO_DRIVER_IMAGE);
    container["args"] = json!([
        "-workload-api-socket-dir",
        "/spire-agent-socket",
        "-plugin-name",
        DRIVER,
        "-csi-socket-path",
        "/spiffe-csi/csi.sock",
    ]);
    let mounts = container["volumeMounts"]
        .as_array_mut()
        .context("driver container without volumeMounts")?;
    mounts.retain(|m| m["name"] != "agent-socket-parent");
    mounts.push(json!({
        "name": "spire-agent-socket",
        "mountPath": "/spire-agent-socket",
        "readOnly": true,
    }));
    spec["volumes"]
        .as_array_mut()
        .context("DaemonSet without volumes")?
        .push(json!({
            "name": "spire-agent-socket",
            "hostPath": {"path": agent_dir, "type": "DirectoryOrCreate"},
        }));
    Ok(())
}

async fn one_run(stand: &mut Stand, kind: DriverKind, pods: usize) -> anyhow::Result<CsiFigures> {
    let client = stand.control_plane.client();
    create(&client, &objects(stand, kind)?).await?;
    if let Err(e) = wait_registered(&client, &mut stand.node, true).await {
        return Err(e.context(daemonset_state(&client).await));
    }
    let daemon = wait_daemonset_pod(&client, &mut stand.node, |_| true).await?;
    let pid = driver_pid(&daemon)?.as_raw_nonzero().get() as u32;
    let mut figures = CsiFigures::new();
    figures.insert("rss_idle_mib".into(), rss_mib(pid));
    let cpu_before = cpu_seconds(pid);
    let calls_before = kubelet_csi_calls(&stand.kubelet).await?;
    let mounts_before = csi_mounts(&stand.node.kubelet_root())?;

    let times = Times::default();
    let (synced, listed) = tokio::sync::oneshot::channel();
    let watch = tokio::spawn(watch_pods(client.clone(), times.clone(), synced));
    listed
        .await
        .context("the workload pods' watch ended before its first listing")?;
    let api = Api::<Pod>::namespaced(client.clone(), WORKLOAD_NAMESPACE);
    let names: Vec<String> = (0..pods).map(|i| format!("csi-{i}")).collect();
    let started = Instant::now();
    each_pod(&names, &times, Mark::Created, |name| {
        let api = api.clone();
        async move {
            api.create(&PostParams::default(), &workload(&name)?)
                .await
                .with_context(|| format!("creating pod {WORKLOAD_NAMESPACE}/{name}"))?;
            Ok(())
        }
    })
    .await?;
    let all_ready = wait_all(&times, &names, Mark::Ready, READY_TIMEOUT).await;
    figures.insert("all_ready_s".into(), started.elapsed().as_secs_f64());
    figures.insert(
        "pods_not_ready".into(),
        names.len().saturating_sub(all_ready) as f64,
    );
    figures.insert(
        "mounts_with_pods".into(),
        csi_mounts(&stand.node.kubelet_root())?.saturating_sub(mounts_before) as f64,
    );
    figures.insert("rss_mib".into(), rss_mib(pid));

    let deleting = Instant::now();
    each_pod(&names, &times, Mark::Deleted, |name| {
        let api = api.clone();
        async move {
            api.delete(&name, &DeleteParams::default())
                .await
                .with_context(|| format!("deleting pod {WORKLOAD_NAMESPACE}/{name}"))?;
            Ok(())
        }
    })
    .await?;
    let all_gone = wait_all(&times, &names, Mark::Gone, GONE_TIMEOUT).await;
    figures.insert("all_gone_s".into(), deleting.elapsed().as_secs_f64());
    figures.insert(
        "pods_not_gone".into(),
        names.len().saturating_sub(all_gone) as f64,
    );
    watch.abort();
    figures.insert("cpu_s".into(), cpu_seconds(pid) - cpu_before);
    figures.insert("peak_rss_mib".into(), peak_rss_mib(pid));
    figures.insert(
        "mounts_left".into(),
        csi_mounts(&stand.node.kubelet_root())?.saturating_sub(mounts_before) as f64,
    );
    let calls = kubelet_csi_calls(&stand.kubelet).await?;
    let total = |calls: &BTreeMap<String, Calls>| calls.values().map(|c| c.count).sum::<f64>();
    figures.insert("all_calls".into(), total(&calls) - total(&calls_before));
    for (method, key) in [
        ("NodePublishVolume", "publish"),
        ("NodeUnpublishVolume", "unpublish"),
    ] {
        let delta = calls.get(method).copied().unwrap_or_default()
            - calls_before.get(method).copied().unwrap_or_default();
        figures.insert(format!("{key}_calls"), delta.count);
        figures.insert(format!("{key}_failed"), delta.failed);
        figures.insert(
            format!("{key}_mean_ms"),
            if delta.count > 0.0 {
                delta.seconds / delta.count * 1000.0
            } else {
                f64::NAN
            },
        );
    }
    for (key, mark, from) in [
        ("ready", Mark::Ready, Mark::Created),
        ("gone", Mark::Gone, Mark::Deleted),
    ] {
        let mut seconds = times.latencies(from, mark);
        seconds.sort_by(f64::total_cmp);
        figures.insert(format!("{key}_p50_s"), quantile(&seconds, 0.5));
        figures.insert(format!("{key}_p99_s"), quantile(&seconds, 0.99));
        figures.insert(
            format!("{key}_max_s"),
            seconds.last().copied().unwrap_or(f64::NAN),
        );
    }
    force_delete_left(&api, &names, &times).await;
    remove_driver(stand).await?;
    Ok(figures)
}

/// Calls `call` for every pod, [`IN_FLIGHT`] at a time, marking `mark` as each call
/// starts.
async fn each_pod<F, Fut>(
    names: &[String],
    times: &Times,
    mark: Mark,
    call: F,
) -> anyhow::Result<()>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    futures::stream::iter(names)
        .map(|name| {
            times.mark(name, mark);
            call(name.clone())
        })
        .buffer_unordered(IN_FLIGHT)
        .try_for_each(|()| async { Ok(()) })
        .await
}

/// A pod whose one container waits, with the CSI volume mounted read-only.
fn workload(name: &str) -> anyhow::Result<Pod> {
    Ok(serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {WORKLOAD_LABEL.0: WORKLOAD_LABEL.1}},
        "spec": {
            "hostNetwork": true,
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 5,
            "containers": [{
                "name": "main",
                "image": PROBE_IMAGE,
                "imagePullPolicy": "Never",
                "volumeMounts": [{
                    "name": "spiffe-workload-api",
                    "mountPath": "/spiffe-workload-api",
                    "readOnly": true,
                }],
            }],
            "volumes": [{
                "name": "spiffe-workload-api",
                "csi": {"driver": DRIVER, "readOnly": true},
            }],
        },
    }))?)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Mark {
    Created,
    Ready,
    Deleted,
    Gone,
}

/// When each pod reached each mark (the first time).
#[derive(Clone, Default)]
struct Times(Arc<Mutex<HashMap<(String, Mark), Instant>>>);

impl Times {
    fn mark(&self, pod: &str, mark: Mark) {
        let mut times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        times
            .entry((pod.to_owned(), mark))
            .or_insert_with(Instant::now);
    }

    fn count(&self, names: &[String], mark: Mark) -> usize {
        let times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        names
            .iter()
            .filter(|n| times.contains_key(&((*n).clone(), mark)))
            .count()
    }

    /// Marks Gone, now, every pod deleted and not yet gone that `listed` (a new listing
    /// of the pods) no longer holds: a watch that started again lists what exists and
    /// says nothing of what went meanwhile.
    fn gone_unless_listed(&self, listed: &HashSet<String>) {
        let mut times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let vanished: Vec<String> = times
            .keys()
            .filter(|(pod, mark)| *mark == Mark::Deleted && !listed.contains(pod))
            .map(|(pod, _)| pod.clone())
            .collect();
        for pod in vanished {
            times.entry((pod, Mark::Gone)).or_insert_with(Instant::now);
        }
    }

    /// Seconds from `from` to `to` for every pod that reached both.
    fn latencies(&self, from: Mark, to: Mark) -> Vec<f64> {
        let times = self.0.lock().unwrap_or_else(|e| e.into_inner());
        times
            .iter()
            .filter(|((_, mark), _)| *mark == to)
            .filter_map(|((pod, _), end)| {
                let start = times.get(&(pod.clone(), from))?;
                Some(end.saturating_duration_since(*start).as_secs_f64())
            })
            .collect()
    }
}

/// Marks Ready and Gone from a watch on the workload pods; sends on `synced` once its
/// first listing is done.
async fn watch_pods(client: kube::Client, times: Times, synced: tokio::sync::oneshot::Sender<()>) {
    let mut synced = Some(synced);
    // The pods of the listing in progress.
    let mut listed = HashSet::new();
    let api = Api::<Pod>::namespaced(client, WORKLOAD_NAMESPACE);
    let config =
        watcher::Config::default().labels(&format!("{}={}", WORKLOAD_LABEL.0, WORKLOAD_LABEL.1));
    let mut events = std::pin::pin!(watcher(api, config));
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod)) => {
                if is_ready(&pod) {
                    times.mark(name_of(&pod), Mark::Ready);
                }
            }
            Ok(watcher::Event::Delete(pod)) => times.mark(name_of(&pod), Mark::Gone),
            Ok(watcher::Event::Init) => listed.clear(),
            Ok(watcher::Event::InitApply(pod)) => {
                if is_ready(&pod) {
                    times.mark(name_of(&pod), Mark::Ready);
                }
                listed.insert(name_of(&pod).to_owned());
            }
            Ok(watcher::Event::InitDone) => {
                times.gone_unless_listed(&listed);
                if let Some(synced) = synced.take() {
                    // The receiver only goes away with the run.
                    let _ = synced.send(());
                }
            }
            // The watcher lists again after an error (InitDone above).
            Err(e) => eprintln!("[bench] watching the workload pods: {e}"),
        }
    }
}

/// Waits until every pod has `mark` or `timeout` passes; how many have it.
async fn wait_all(times: &Times, names: &[String], mark: Mark, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let done = times.count(names, mark);
        if done == names.len() || Instant::now() >= deadline {
            return done;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Pods still there after the timeout: removed without waiting for kubelet, so that the
/// next run starts empty (what their volumes left on the node shows in `mounts_left`).
async fn force_delete_left(api: &Api<Pod>, names: &[String], times: &Times) {
    for name in names {
        if times.count(std::slice::from_ref(name), Mark::Gone) == 0 {
            let result = api
                .delete(name, &DeleteParams::default().grace_period(0))
                .await;
            eprintln!(
                "[bench] pod {WORKLOAD_NAMESPACE}/{name} not gone in time: deleted with no grace ({})",
                result.map_or_else(|e| e.to_string(), |_| "accepted".to_owned())
            );
        }
    }
}

/// Deletes the DaemonSet and the CSIDriver and waits until the driver's pod is gone and
/// kubelet has dropped the driver.
async fn remove_driver(stand: &mut Stand) -> anyhow::Result<()> {
    let client = stand.control_plane.client();
    let daemonsets = Api::<DaemonSet>::namespaced(client.clone(), NAMESPACE);
    for ds in daemonsets.list(&ListParams::default()).await?.items {
        daemonsets
            .delete(&ds.name_any(), &DeleteParams::foreground())
            .await?;
    }
    let pods = Api::<Pod>::namespaced(client.clone(), NAMESPACE);
    wait::until(
        "the CSI DaemonSet's pods gone",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            let pods = pods.clone();
            async move {
                let left = pods
                    .list(&ListParams::default().labels(POD_SELECTOR))
                    .await?;
                Ok(left.items.is_empty().then_some(()))
            }
        },
    )
    .await?;
    wait_registered(&client, &mut stand.node, false).await?;
    let drivers = Api::<CSIDriver>::all(client);
    drivers.delete(DRIVER, &DeleteParams::default()).await?;
    wait::until(
        "CSIDriver gone",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || {
            let drivers = drivers.clone();
            async move { Ok(drivers.get_opt(DRIVER).await?.is_none().then_some(())) }
        },
    )
    .await
}

/// CSI volume mounts on the node (below the kubelet's pod directories).
fn csi_mounts(kubelet_root: &Path) -> anyhow::Result<usize> {
    let pods = kubelet_root.join("pods");
    let prefix = pods.to_str().context("non-UTF-8 path")?;
    Ok(std::fs::read_to_string("/proc/self/mountinfo")?
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        .filter(|m| m.starts_with(prefix) && m.contains("/volumes/kubernetes.io~csi/"))
        .count())
}

/// One CSI method's calls as kubelet counted them.
#[derive(Debug, Clone, Copy, Default)]
struct Calls {
    count: f64,
    failed: f64,
    seconds: f64,
}

impl std::ops::Sub for Calls {
    type Output = Self;
    fn sub(self, before: Self) -> Self {
        Self {
            count: self.count - before.count,
            failed: self.failed - before.failed,
            seconds: self.seconds - before.seconds,
        }
    }
}

/// The kubelet's `csi_operations_seconds` for [`DRIVER`] by method (`NodePublishVolume`),
/// from its /metrics.
async fn kubelet_csi_calls(kubelet: &kube::Client) -> anyhow::Result<BTreeMap<String, Calls>> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = kubelet
        .request_text(request)
        .await
        .context("the kubelet's /metrics")?;
    let snapshot = MetricsSnapshot::parse(&text).context("the kubelet's /metrics")?;
    let mut calls: BTreeMap<String, Calls> = BTreeMap::new();
    for sample in snapshot.samples() {
        let label = |k: &str| sample.labels.get(k).map(String::as_str);
        if label("driver_name") != Some(DRIVER) {
            continue;
        }
        let Some(method) = label("method_name").and_then(|m| m.rsplit('/').next()) else {
            continue;
        };
        let entry = calls.entry(method.to_owned()).or_default();
        match sample.name.as_str() {
            "csi_operations_seconds_count" => {
                entry.count += sample.value;
                if label("grpc_status_code") != Some("OK") {
                    entry.failed += sample.value;
                }
            }
            "csi_operations_seconds_sum" => entry.seconds += sample.value,
            _ => {}
        }
    }
    Ok(calls)
}

/// What the kubelet table shows: (label, figure).
const ROWS: &[(&str, &str)] = &[
    ("pod created -> Ready p50, s", "ready_p50_s"),
    ("pod created -> Ready p99, s", "ready_p99_s"),
    ("pod created -> Ready max, s", "ready_max_s"),
    ("all pods Ready, s", "all_ready_s"),
    ("pod deleted -> gone p50, s", "gone_p50_s"),
    ("pod deleted -> gone p99, s", "gone_p99_s"),
    ("pod deleted -> gone max, s", "gone_max_s"),
    ("all pods gone, s", "all_gone_s"),
    (
        "NodePublishVolume as kubelet timed it, mean ms",
        "publish_mean_ms",
    ),
    (
        "NodeUnpublishVolume as kubelet timed it, mean ms",
        "unpublish_mean_ms",
    ),
    ("NodePublishVolume calls", "publish_calls"),
    ("NodeUnpublishVolume calls", "unpublish_calls"),
    ("CSI calls of every method", "all_calls"),
    ("failed NodePublishVolume", "publish_failed"),
    ("failed NodeUnpublishVolume", "unpublish_failed"),
    ("pods not Ready in time", "pods_not_ready"),
    ("pods not gone in time", "pods_not_gone"),
    ("CSI mounts with every pod Ready", "mounts_with_pods"),
    ("CSI mounts left after the pods", "mounts_left"),
    ("driver CPU over the run, s", "cpu_s"),
    ("driver RSS idle, MiB", "rss_idle_mib"),
    ("driver RSS with every pod Ready, MiB", "rss_mib"),
    ("driver peak RSS, MiB", "peak_rss_mib"),
];

/// Prints the kubelet table and returns its medians as JSON.
pub fn print_table(runs: &BTreeMap<&'static str, Vec<CsiFigures>>, pods: usize) -> Value {
    println!(
        "\n### spiffe-csi-driver through the real kubelet: ours vs the Go driver ({pods} pods created at once, then deleted at once)\n"
    );
    crate::csi::print_rows(runs, ROWS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relisting_marks_deleted_pods_it_no_longer_holds_gone() {
        let times = Times::default();
        for pod in ["a", "b", "c"] {
            times.mark(pod, Mark::Created);
        }
        times.mark("a", Mark::Deleted);
        times.mark("b", Mark::Deleted);
        let names: Vec<String> = ["a", "b", "c"].map(String::from).to_vec();
        // "b" is still listed (terminating); "c" was never deleted.
        times.gone_unless_listed(&HashSet::from(["b".to_owned(), "c".to_owned()]));
        assert_eq!(times.count(&names, Mark::Gone), 1);
        assert_eq!(times.count(&names[..1], Mark::Gone), 1, "a is gone");
        assert_eq!(times.latencies(Mark::Deleted, Mark::Gone).len(), 1);
    }

    #[test]
    fn the_go_driver_gets_the_hardened_charts_container_shape() {
        let mut objects = render(
            Path::new("/var/lib/kubelet"),
            Path::new("/run/spire/agent-sockets"),
            9809,
            &[],
        )
        .expect("render");
        let agent = Path::new("/run/spire/agent-sockets");
        for object in &mut objects {
            match object["kind"].as_str() {
                Some("CSIDriver") => as_hardened_csidriver(object).expect("CSIDriver"),
                Some("DaemonSet") => as_hardened_daemonset(object, agent).expect("DaemonSet"),
                _ => {}
            }
        }
        let csidriver = objects
            .iter()
            .find(|o| o["kind"] == "CSIDriver")
            .expect("a CSIDriver");
        assert_eq!(csidriver["spec"].get("requiresRepublish"), None);
        assert_eq!(csidriver["spec"]["podInfoOnMount"], true);
        let daemonset = objects
            .iter()
            .find(|o| o["kind"] == "DaemonSet")
            .expect("a DaemonSet");
        let spec = &daemonset["spec"]["template"]["spec"];
        let driver = spec["containers"]
            .as_array()
            .and_then(|c| c.iter().find(|c| c["name"] == DRIVER_CONTAINER))
            .expect("the driver container");
        assert_eq!(driver["image"], GO_DRIVER_IMAGE);
        assert_eq!(
            driver["args"],
            json!([
                "-workload-api-socket-dir",
                "/spire-agent-socket",
                "-plugin-name",
                "csi.spiffe.io",
                "-csi-socket-path",
                "/spiffe-csi/csi.sock"
            ])
        );
        let mounts: Vec<(&str, &str)> = driver["volumeMounts"]
            .as_array()
            .expect("mounts")
            .iter()
            .map(|m| {
                (
                    m["name"].as_str().unwrap_or(""),
                    m["mountPath"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            mounts,
            [
                ("plugin-dir", "/spiffe-csi"),
                ("kubelet-pods", "/var/lib/kubelet/pods"),
                ("spire-agent-socket", "/spire-agent-socket"),
            ]
        );
        let volume = spec["volumes"]
            .as_array()
            .and_then(|v| v.iter().find(|v| v["name"] == "spire-agent-socket"))
            .expect("the agent socket volume");
        assert_eq!(volume["hostPath"]["path"], "/run/spire/agent-sockets");
    }
}
