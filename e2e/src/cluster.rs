//! The whole stack on a real [`Node`], installed the way a user installs it: `helm
//! install` of `charts/spire-rs` from images built on this machine (see
//! [`crate::image::stack_images`]), onto a control plane with a scheduler and
//! kube-controller-manager.
//!
//! What the node cannot offer, the chart's documented options cover: there is no pod
//! network, kube-proxy or cluster DNS, so the server, the operator and the OIDC
//! provider run with `hostNetwork`, the agents reach the server at 127.0.0.1, and the
//! server and operator reach the API server through `global.kubernetesServiceHost`; the
//! API server reaches the operator's webhook through its Service's endpoints
//! (`--enable-aggregator-routing`), the node's address.
//! Every port is picked free, and every host path lies in the node's directory, so
//! clusters of parallel tests do not meet.

pub mod app;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, LogParams};
use serde_json::{Value, json};
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, TrustDomain};
use spire_operator::spire::{SpireAddress, SpireClient};

use crate::control_plane::{ControlPlane, Options as ControlPlaneOptions};
use crate::helm::{self, Helm};
use crate::http;
use crate::image::stack_images;
use crate::node::Node;
use crate::ports::free_port;
use crate::wait;
use crate::workdir::WorkDir;

/// The namespace the chart is installed into.
pub const NAMESPACE: &str = "spire-system";
/// The Helm release name (object names start with it).
pub const RELEASE: &str = "spire-rs";
/// `global.trustDomain`.
pub const TRUST_DOMAIN: &str = "example.org";
/// `global.clusterName`.
pub const CLUSTER_NAME: &str = "e2e";
/// The OIDC discovery provider's domain (the `Host` it answers for; the issuer).
pub const OIDC_DOMAIN: &str = "oidc-discovery.example.org";

/// Host ports of the stack's listeners (all pods that listen use the host network).
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// The SPIRE server's agent API (`spireServer.port`).
    pub server: u16,
    /// The server's /live and /ready.
    pub server_health: u16,
    /// The operator's /metrics.
    pub operator_metrics: u16,
    /// The operator's /healthz and /readyz.
    pub operator_health: u16,
    /// The agent's /live and /ready.
    pub agent_health: u16,
    /// The OIDC discovery provider's HTTP port.
    pub oidc: u16,
    /// The OIDC discovery provider's /live and /ready.
    pub oidc_health: u16,
    /// The node-driver-registrar's /healthz.
    pub registrar_health: u16,
    /// The operator's validating webhook.
    pub webhook: u16,
}

impl Ports {
    fn pick() -> anyhow::Result<Self> {
        Ok(Self {
            server: free_port()?,
            server_health: free_port()?,
            operator_metrics: free_port()?,
            operator_health: free_port()?,
            agent_health: free_port()?,
            oidc: free_port()?,
            oidc_health: free_port()?,
            registrar_health: free_port()?,
            webhook: free_port()?,
        })
    }
}

/// A control plane, a node with the stack's images, and the chart's values for them;
/// [`Cluster::install`] runs `helm install`.
///
/// Fields drop in order: the node (kubelet, containerd and every container) goes
/// before the control plane.
pub struct Cluster {
    /// The node the chart's pods run on.
    pub node: Node,
    /// etcd, kube-apiserver, kube-scheduler and kube-controller-manager.
    pub control_plane: ControlPlane,
    /// The chart's listeners.
    pub ports: Ports,
    helm: Helm,
    values: PathBuf,
    dir: WorkDir,
}

impl Cluster {
    /// Starts the control plane and the node, and imports the stack's images.
    pub async fn start() -> anyhow::Result<Self> {
        let control_plane = ControlPlane::start_with(ControlPlaneOptions {
            nodes: true,
            scheduler: true,
            controller_manager: true,
            // Admission webhooks reached through their Service's endpoints (the host's
            // address, as the operator's pod uses the host network): no kube-proxy here.
            endpoint_routing: true,
        })
        .await?;
        let node = Node::start(&control_plane).await?;
        let dir = WorkDir::new("cluster")?;
        for image in stack_images()? {
            let archive = dir.join(format!("{}.tar", image.short_name));
            image.image().pack(&archive)?;
            node.import_image(&archive)?;
            std::fs::remove_file(&archive)?;
        }
        let ports = Ports::pick()?;
        let values = dir.join("values.json");
        let cluster = Self {
            node,
            control_plane,
            ports,
            helm: Helm::new()?,
            values,
            dir,
        };
        std::fs::write(
            &cluster.values,
            serde_json::to_string_pretty(&cluster.values_json()?)?,
        )?;
        Ok(cluster)
    }

    /// The values file every helm command of this cluster passes (`-f`, after
    /// [`local_values_file`]): host networking, the node's paths and free ports.
    pub fn values_file(&self) -> &Path {
        &self.values
    }

    /// The host directory of the agent's Workload API socket (`spireAgent.socketDir`).
    pub fn agent_socket_dir(&self) -> PathBuf {
        self.node.dir().join("run/spire/agent-sockets")
    }

    fn values_json(&self) -> anyhow::Result<Value> {
        let api_port = self
            .control_plane
            .url()
            .rsplit(':')
            .next()
            .context("the apiserver URL has no port")?
            .to_owned();
        let p = &self.ports;
        Ok(json!({
            "global": {
                "trustDomain": TRUST_DOMAIN,
                "clusterName": CLUSTER_NAME,
                "kubernetesServiceHost": "127.0.0.1",
                "kubernetesServicePort": api_port,
            },
            "spireServer": {
                "hostNetwork": true,
                "port": p.server,
                "healthPort": p.server_health,
                "persistence": {"enabled": false},
            },
            "operator": {
                "metricsPort": p.operator_metrics,
                "healthPort": p.operator_health,
                "webhook": {"port": p.webhook},
                "config": {"annotationIdentities": {"enabled": true}},
            },
            "spireAgent": {
                "server": {"address": "127.0.0.1", "port": p.server},
                "socketDir": self.agent_socket_dir(),
                "kubelet": {"port": self.node.kubelet_port()},
                "healthPort": p.agent_health,
            },
            "csiDriver": {
                "kubeletPath": self.node.kubelet_root(),
                "hostNetwork": true,
                "nodeDriverRegistrar": {
                    "healthPort": p.registrar_health,
                },
            },
            "oidcDiscoveryProvider": {
                "hostNetwork": true,
                "port": p.oidc,
                "healthPort": p.oidc_health,
                "domains": [OIDC_DOMAIN],
            },
        }))
    }

    /// Runs helm with `args` followed by this cluster's kubeconfig, namespace and
    /// values files (for install, upgrade, template); fails with helm's output unless it
    /// succeeds.
    pub fn helm(&self, args: &[&str]) -> anyhow::Result<String> {
        let kubeconfig = self.control_plane.kubeconfig().to_str().context("path")?;
        let values = self.values.to_str().context("path")?;
        let images = local_values_file();
        let mut all = args.to_vec();
        all.extend_from_slice(&[
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            NAMESPACE,
            "-f",
            images.to_str().context("path")?,
            "-f",
            values,
        ]);
        self.helm.run(&all)
    }

    /// `helm install spire-rs charts/spire-rs --create-namespace` with `extra` args.
    pub fn install(&self, extra: &[&str]) -> anyhow::Result<String> {
        let chart = helm::chart_dir();
        let mut args = vec![
            "install",
            RELEASE,
            chart.to_str().context("chart path")?,
            "--create-namespace",
        ];
        args.extend_from_slice(extra);
        self.helm(&args)
    }

    /// `kubectl <args>` with the admin kubeconfig; its output, or an error with both
    /// outputs.
    pub fn kubectl(&self, args: &[&str]) -> anyhow::Result<String> {
        self.kubectl_with_input(args, None)
    }

    /// `kubectl apply -f -` of `manifest`.
    pub fn kubectl_apply(&self, manifest: &str) -> anyhow::Result<String> {
        self.kubectl_with_input(&["apply", "-f", "-"], Some(manifest))
    }

    fn kubectl_with_input(&self, args: &[&str], input: Option<&str>) -> anyhow::Result<String> {
        use std::io::Write as _;
        use std::process::{Command, Stdio};
        let mut child = Command::new(crate::tools::tool("kubectl")?)
            .arg(format!(
                "--kubeconfig={}",
                self.control_plane.kubeconfig().display()
            ))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running kubectl")?;
        if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(input.as_bytes())?;
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!(
                "kubectl {} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `helm uninstall spire-rs`.
    pub fn uninstall(&self) -> anyhow::Result<String> {
        let kubeconfig = self.control_plane.kubeconfig().to_str().context("path")?;
        self.helm.run(&[
            "uninstall",
            RELEASE,
            "--kubeconfig",
            kubeconfig,
            "--namespace",
            NAMESPACE,
        ])
    }

    /// `helm upgrade spire-rs charts/spire-rs` with `extra` args (e.g. `--set k=v`).
    pub fn upgrade(&self, extra: &[&str]) -> anyhow::Result<String> {
        let chart = helm::chart_dir();
        let mut args = vec!["upgrade", RELEASE, chart.to_str().context("chart path")?];
        args.extend_from_slice(extra);
        self.helm(&args)
    }

    /// Waits until the server StatefulSet, the agent and CSI DaemonSets and the OIDC
    /// Deployment have rolled out their current generation with every pod ready. The
    /// error describes the release's pods.
    pub async fn wait_rolled_out(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let client = self.control_plane.client();
        let result = wait::until(
            "the chart's workloads rolled out and ready",
            timeout,
            Duration::from_millis(500),
            || {
                let running = self.node.ensure_running();
                let client = client.clone();
                async move {
                    running?;
                    let pending = not_rolled_out(&client).await?;
                    if pending.is_empty() {
                        Ok(Some(()))
                    } else {
                        bail!("not rolled out: {}", pending.join("; "))
                    }
                }
            },
        )
        .await;
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(e.context(describe_pods(&client, NAMESPACE).await)),
        }
    }

    /// A client on the admin socket of the running server pod (see
    /// [`Cluster::admin_socket`]).
    pub async fn spire_client(&self) -> anyhow::Result<SpireClient> {
        Ok(SpireClient::connect(
            SpireAddress::Unix(self.admin_socket().await?),
            Duration::from_secs(10),
        )
        .await?)
    }

    /// The admin socket of the running server pod on the host: in the kubelet's
    /// directory of the pod's `admin-socket` emptyDir, reached through a short symlink
    /// (the full path exceeds a socket address's 108 bytes). For `spire-server
    /// <command> -socketPath <this>`.
    pub async fn admin_socket(&self) -> anyhow::Result<PathBuf> {
        let pods: Api<Pod> = Api::namespaced(self.control_plane.client(), NAMESPACE);
        let server = pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=spire-server"))
            .await?
            .items
            .into_iter()
            .find(|p| p.metadata.deletion_timestamp.is_none())
            .context("no spire-server pod")?;
        let uid = server.metadata.uid.context("pod without uid")?;
        let dir = self
            .node
            .kubelet_root()
            .join("pods")
            .join(&uid)
            .join("volumes/kubernetes.io~empty-dir/admin-socket");
        let link = self.dir.join(format!("admin-{}", &uid[..8]));
        if !link.exists() {
            std::os::unix::fs::symlink(&dir, &link)
                .with_context(|| format!("linking {} to {}", link.display(), dir.display()))?;
        }
        Ok(link.join("api.sock"))
    }

    /// Checks `token` as a relying party (Azure AD, Vault, AWS) does: with the keys
    /// the OIDC discovery provider serves at the `jwks_uri` of its discovery document,
    /// and for `audience`.
    pub async fn verify_jwt(&self, token: &str, audience: &str) -> anyhow::Result<JwtSvid> {
        let addr = format!("127.0.0.1:{}", self.ports.oidc);
        let (status, discovery) =
            http::get_with_host(&addr, "/.well-known/openid-configuration", OIDC_DOMAIN).await?;
        anyhow::ensure!(
            status == 200,
            "GET /.well-known/openid-configuration from the OIDC provider: {status} {discovery}"
        );
        let discovery: Value = serde_json::from_str(&discovery)?;
        let jwks_uri = format!("https://{OIDC_DOMAIN}/keys");
        anyhow::ensure!(
            discovery["jwks_uri"] == jwks_uri.as_str(),
            "jwks_uri of the discovery document is {}, not {jwks_uri}",
            discovery["jwks_uri"]
        );
        let (status, jwks) = http::get_with_host(&addr, "/keys", OIDC_DOMAIN).await?;
        anyhow::ensure!(
            status == 200,
            "GET /keys from the OIDC provider: {status} {jwks}"
        );
        let bundle =
            JwtBundle::from_jwt_authorities(TrustDomain::new(TRUST_DOMAIN)?, jwks.as_bytes())?;
        let mut set = JwtBundleSet::new();
        set.add_bundle(bundle);
        Ok(JwtSvid::parse_and_validate(token, &set, &[audience])?)
    }

    /// The uids of the release's pods of `component` (`app.kubernetes.io/name`).
    pub async fn pod_uids_of(&self, component: &str) -> anyhow::Result<Vec<String>> {
        let pods: Api<Pod> = Api::namespaced(self.control_plane.client(), NAMESPACE);
        Ok(pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={component}")))
            .await?
            .items
            .into_iter()
            .filter_map(|p| p.metadata.uid)
            .collect())
    }

    /// Deletes the release's pods of `component` and waits until their controller's
    /// replacements are ready.
    pub async fn restart_pods_of(&mut self, component: &str) -> anyhow::Result<()> {
        let pods: Api<Pod> = Api::namespaced(self.control_plane.client(), NAMESPACE);
        let list = pods
            .list(&ListParams::default().labels(&format!("app.kubernetes.io/name={component}")))
            .await?;
        for pod in list {
            let name = app::name_of(&pod);
            pods.delete(&name, &kube::api::DeleteParams::default())
                .await?;
            app::wait_pod_gone(&pods, &name).await?;
        }
        self.wait_rolled_out(Duration::from_secs(120)).await
    }

    /// The mounts (mount points) under the kubelet's directory of pod `uid`, from this
    /// process's mountinfo (the node's mounts propagate to the host).
    pub fn pod_mounts(&self, uid: &str) -> anyhow::Result<Vec<String>> {
        let prefix = self.node.kubelet_root().join("pods").join(uid);
        let prefix = prefix.to_str().context("path")?;
        Ok(std::fs::read_to_string("/proc/self/mountinfo")?
            .lines()
            .filter_map(|line| line.split(' ').nth(4))
            .filter(|mount_point| mount_point.starts_with(prefix))
            .map(str::to_owned)
            .collect())
    }
}

/// `images/local-values.yaml`: the chart's images are the local ones, never pulled.
pub fn local_values_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../images/local-values.yaml")
}

/// What has not rolled out, one phrase per workload.
async fn not_rolled_out(client: &kube::Client) -> anyhow::Result<Vec<String>> {
    let mut pending = Vec::new();
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    for s in statefulsets.list(&ListParams::default()).await? {
        let name = s.metadata.name.clone().unwrap_or_default();
        let want = s.spec.replicas.unwrap_or(1);
        let status = s.status.clone().unwrap_or_default();
        // The API server leaves zero counts out.
        let current = status.observed_generation == s.metadata.generation
            && status.updated_replicas.unwrap_or(0) == want
            && status.ready_replicas.unwrap_or(0) == want;
        if !current {
            pending.push(format!(
                "StatefulSet {name}: ready {:?}/{want}, updated {:?}",
                status.ready_replicas, status.updated_replicas
            ));
        }
    }
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    for d in daemonsets.list(&ListParams::default()).await? {
        let name = d.metadata.name.clone().unwrap_or_default();
        let status = d.status.clone().unwrap_or_default();
        let want = status.desired_number_scheduled;
        let current = status.observed_generation == d.metadata.generation
            && want > 0
            && status.updated_number_scheduled == Some(want)
            && status.number_ready == want
            && status.number_available == Some(want);
        if !current {
            pending.push(format!(
                "DaemonSet {name}: ready {}/{want}, updated {:?}",
                status.number_ready, status.updated_number_scheduled
            ));
        }
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    for d in deployments.list(&ListParams::default()).await? {
        let name = d.metadata.name.clone().unwrap_or_default();
        let want = d.spec.replicas.unwrap_or(1);
        let status = d.status.clone().unwrap_or_default();
        let current = status.observed_generation == d.metadata.generation
            && status.updated_replicas.unwrap_or(0) == want
            && status.available_replicas.unwrap_or(0) == want
            && status.replicas.unwrap_or(0) == want;
        if !current {
            pending.push(format!(
                "Deployment {name}: available {:?}/{want}, updated {:?}",
                status.available_replicas, status.updated_replicas
            ));
        }
    }
    Ok(pending)
}

/// One line per pod of `namespace` with its phase and each container's state, for
/// errors.
pub async fn describe_pods(client: &kube::Client, namespace: &str) -> String {
    let pods: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let list = match pods.list(&ListParams::default()).await {
        Ok(list) => list,
        Err(e) => return format!("pods of {namespace}: {e}"),
    };
    let mut out = format!("pods of namespace {namespace}:");
    for pod in list {
        let name = pod.metadata.name.unwrap_or_default();
        let status = pod.status.unwrap_or_default();
        let _ = write!(out, "\n  {name}: {}", status.phase.unwrap_or_default());
        let containers = status
            .init_container_statuses
            .unwrap_or_default()
            .into_iter()
            .chain(status.container_statuses.unwrap_or_default());
        for c in containers {
            let state = c.state.unwrap_or_default();
            let state = if let Some(w) = state.waiting {
                format!(
                    "waiting {} {}",
                    w.reason.unwrap_or_default(),
                    w.message.unwrap_or_default()
                )
            } else if let Some(t) = state.terminated {
                format!(
                    "terminated {} (exit {}) {}",
                    t.reason.unwrap_or_default(),
                    t.exit_code,
                    t.message.unwrap_or_default()
                )
            } else {
                "running".to_owned()
            };
            let _ = write!(
                out,
                "\n    {}: {state}, ready {}, restarts {}",
                c.name, c.ready, c.restart_count
            );
            // A container that failed says why in its (previous) log.
            if c.restart_count > 0 {
                let params = LogParams {
                    container: Some(c.name.clone()),
                    previous: true,
                    tail_lines: Some(5),
                    ..LogParams::default()
                };
                if let Ok(log) = pods.logs(&name, &params).await {
                    for line in log.lines() {
                        let _ = write!(out, "\n      | {line}");
                    }
                }
            }
        }
    }
    // Why pods wait (FailedMount, FailedScheduling, BackOff ...): the warnings.
    let events: Api<Event> = Api::namespaced(client.clone(), namespace);
    if let Ok(list) = events.list(&ListParams::default()).await {
        for e in list
            .items
            .iter()
            .filter(|e| e.type_.as_deref() == Some("Warning"))
        {
            let _ = write!(
                out,
                "\n  warning {} {}: {} (x{})",
                e.involved_object.name.as_deref().unwrap_or_default(),
                e.reason.as_deref().unwrap_or_default(),
                e.message.as_deref().unwrap_or_default().trim_end(),
                e.count.unwrap_or(1)
            );
        }
    }
    out
}
