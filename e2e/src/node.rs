//! A real Kubernetes node on loopback: containerd and a kubelet registered with a
//! [`ControlPlane`] started with [`crate::ControlPlaneOptions::nodes`].
//!
//! No registry is reachable, so images come from OCI archives imported with `ctr`
//! (see `images/node-images.sh`); pods use the host network (the CNI configuration
//! only makes containerd report the network ready). Everything listens on 127.0.0.1
//! or on sockets in the node's working directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::Node as NodeObject;
use k8s_openapi::jiff::Timestamp;

mod host;

use host::{create_cgroup_root, remove_cgroup_root, set_up_propagation, unmount_under};

use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::Process;
use crate::tools::{bin_dir, tool};
use crate::wait;
use crate::workdir::WorkDir;

/// The image containerd runs pod sandboxes from (`images/node-images.sh`).
pub const PAUSE_IMAGE: &str = "spire-rs.test/pause:e2e";
/// A test image: `/probe echo WORD...` prints the words on one line and exits 0;
/// without arguments it waits for SIGTERM; `cat FILE...`, `ls DIR` and `mount-tmpfs DIR`
/// are described in `images/node/main.go`.
pub const PROBE_IMAGE: &str = "spire-rs.test/probe:e2e";

/// The Node's name. The kubelet refuses a loopback node IP, so the apiserver reaches
/// the kubelet (listening on 127.0.0.1 only) through the node's Hostname address, and
/// `localhost` is the one name that resolves to loopback everywhere. Hence one node
/// per control plane.
pub const NODE_NAME: &str = "localhost";

/// containerd + kubelet, registered as a Node named [`NODE_NAME`].
///
/// containerd runs as PID 1 of its own PID and mount namespaces: when it stops, the
/// kernel kills every shim and container it started, and its mounts vanish with the
/// namespace. Pods' cgroups live under a cgroup root of the node's own, removed on drop.
/// The kubelet stops first.
pub struct Node {
    kubelet: Option<Process>,
    containerd: Process,
    name: String,
    socket: PathBuf,
    kubelet_port: u16,
    ca_file: PathBuf,
    cgroup_root: String,
    dir: WorkDir,
}

impl Node {
    /// Starts containerd with the harness images imported, then a kubelet with a client
    /// certificate for `system:node:<name>` signed by the control plane's CA, and waits
    /// until its Node object is Ready.
    pub async fn start(control_plane: &ControlPlane) -> anyhow::Result<Self> {
        let dir = WorkDir::new("node")?;
        // Unique per node, for the cgroups the node's pods get (the path's random part).
        let suffix: String = dir
            .path()
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.rsplit('-').next())
            .unwrap_or("0")
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .collect();
        let name = NODE_NAME.to_owned();
        let cgroup_root = format!("/spire-rs-node-{suffix}");
        create_cgroup_root(&cgroup_root)?;

        let socket = dir.join("containerd.sock");
        let containerd =
            match set_up_propagation(&dir).and_then(|()| start_containerd(&dir, &socket)) {
                Ok(containerd) => containerd,
                Err(e) => {
                    unmount_under(dir.path());
                    remove_cgroup_root(&cgroup_root);
                    return Err(e);
                }
            };
        let mut node = Self {
            // Owned from here on, so an error below still stops containerd.
            kubelet: None,
            containerd,
            name,
            socket,
            kubelet_port: free_port()?,
            ca_file: control_plane.ca_file(),
            cgroup_root,
            dir,
        };
        node.wait_for_containerd().await?;
        let bin = bin_dir()?;
        for archive in ["pause.tar", "probe.tar"] {
            node.import_image(&bin.join(archive))?;
        }
        node.write_kubelet_files(control_plane)?;
        node.kubelet = Some(node.spawn_kubelet()?);
        node.wait_ready(control_plane).await?;
        Ok(node)
    }

    /// Stops the kubelet and starts it again with the same configuration, as a node's
    /// `systemctl restart kubelet` does; containers keep running meanwhile. Returns once
    /// the Node is Ready again (after the new kubelet's first heartbeat).
    pub async fn restart_kubelet(&mut self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        if let Some(mut kubelet) = self.kubelet.take() {
            kubelet.stop();
        }
        let restarted = Timestamp::now();
        self.kubelet = Some(self.spawn_kubelet()?);
        self.wait_ready_since(control_plane, restarted).await
    }

    /// The Node object's name (also the kubelet's hostname).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The working directory: configuration, certificates, logs, containerd and kubelet state.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The kubelet's root directory (`--root-dir`), what charts call `kubeletPath`
    /// (`/var/lib/kubelet` on most nodes): `pods/`, `plugins/`, `plugins_registry/`.
    pub fn kubelet_root(&self) -> PathBuf {
        self.dir.join("kubelet")
    }

    /// The kubelet's secure port on 127.0.0.1.
    pub fn kubelet_port(&self) -> u16 {
        self.kubelet_port
    }

    /// containerd's socket (CRI and containerd API).
    pub fn containerd_socket(&self) -> &Path {
        &self.socket
    }

    /// The kubelet's secure (and only) port: `https://127.0.0.1:<port>`.
    pub fn kubelet_url(&self) -> String {
        format!("https://127.0.0.1:{}", self.kubelet_port)
    }

    /// A client for the kubelet's API (`/pods`, `/containerLogs/...`) that presents a
    /// bearer token, e.g. a ServiceAccount's, as SPIRE's k8s workload attestor does; the
    /// kubelet checks it with a TokenReview and a SubjectAccessReview.
    pub async fn kubelet_client(&self, token: &str) -> anyhow::Result<kube::Client> {
        static CLIENTS: AtomicU32 = AtomicU32::new(0);
        let n = CLIENTS.fetch_add(1, Ordering::Relaxed);
        let kubeconfig = self.dir.join(format!("kubelet-client-{n}.kubeconfig"));
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: kubelet
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: token
  user:
    token: {token}
contexts:
- name: kubelet
  context:
    cluster: kubelet
    user: token
current-context: kubelet
",
                url = self.kubelet_url(),
                ca = self.ca_file.display(),
            ),
        )?;
        crate::control_plane::client_for(&kubeconfig).await
    }

    /// Imports an OCI image archive into containerd's CRI namespace (`k8s.io`), where
    /// pods with `imagePullPolicy: Never` find it.
    pub fn import_image(&self, archive: &Path) -> anyhow::Result<()> {
        let out = Command::new(tool("ctr")?)
            .arg(format!("--address={}", self.socket.display()))
            .args(["--namespace=k8s.io", "images", "import"])
            .arg(archive)
            .output()
            .with_context(|| format!("running ctr images import {}", archive.display()))?;
        if !out.status.success() {
            bail!(
                "ctr images import {} failed ({}): {}",
                archive.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    /// Fails, with the end of its log, if containerd or the kubelet has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.containerd.ensure_running()?;
        match &mut self.kubelet {
            Some(kubelet) => kubelet.ensure_running(),
            None => Ok(()),
        }
    }

    async fn wait_for_containerd(&mut self) -> anyhow::Result<()> {
        let socket = self.socket.clone();
        let containerd = &mut self.containerd;
        wait::until(
            "containerd socket",
            Duration::from_secs(60),
            Duration::from_millis(100),
            || {
                let running = containerd.ensure_running();
                let ready = socket.exists();
                async move {
                    running?;
                    Ok(ready.then_some(()))
                }
            },
        )
        .await
    }

    /// Writes the kubelet's certificates, kubeconfig and configuration file.
    fn write_kubelet_files(&self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        let pki = self.dir.join("pki");
        std::fs::create_dir_all(&pki)?;
        let write = |file: &str, contents: &str| -> anyhow::Result<PathBuf> {
            let path = pki.join(file);
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };
        let ca = control_plane.ca();
        // The identity the Node authorizer and NodeRestriction know a kubelet by.
        let client = ca.issue_client(&format!("system:node:{}", self.name), &["system:nodes"])?;
        let serving = ca.issue_server(&self.name, &["127.0.0.1", &self.name])?;
        // No --node-ip: a loopback one is rejected; the InternalIP is the host's, unused.
        let client_cert = write("kubelet-client.crt", &client.cert_pem)?;
        let client_key = write("kubelet-client.key", &client.key_pem)?;
        let serving_cert = write("kubelet.crt", &serving.cert_pem)?;
        let serving_key = write("kubelet.key", &serving.key_pem)?;
        let ca_file = control_plane.ca_file();

        let kubeconfig = self.dir.join("kubelet.kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: kubelet
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: kubelet
current-context: e2e
",
                url = control_plane.url(),
                ca = ca_file.display(),
                cert = client_cert.display(),
                key = client_key.display(),
            ),
        )?;

        let config = self.dir.join("kubelet.yaml");
        let config_yaml = kubelet_config(&KubeletConfig {
            port: self.kubelet_port,
            ca_file: &ca_file,
            serving_cert: &serving_cert,
            serving_key: &serving_key,
            cgroup_root: &self.cgroup_root,
            socket: &self.socket,
            pod_logs: &self.dir.join("pod-logs"),
            volume_plugins: &self.dir.join("volume-plugins"),
        });
        std::fs::write(&config, config_yaml)
            .with_context(|| format!("writing {}", config.display()))?;
        Ok(())
    }

    /// Starts the kubelet with the files [`Node::write_kubelet_files`] wrote.
    fn spawn_kubelet(&self) -> anyhow::Result<Process> {
        let mut kubelet = Command::new(tool("kubelet")?);
        kubelet
            .arg(format!(
                "--config={}",
                self.dir.join("kubelet.yaml").display()
            ))
            .arg(format!(
                "--kubeconfig={}",
                self.dir.join("kubelet.kubeconfig").display()
            ))
            .arg(format!("--root-dir={}", self.kubelet_root().display()))
            .arg(format!("--hostname-override={}", self.name))
            .arg("--v=2");
        Process::spawn("kubelet", kubelet, &self.dir.join("kubelet.log"))
    }

    async fn wait_ready(&mut self, control_plane: &ControlPlane) -> anyhow::Result<()> {
        self.wait_ready_since(control_plane, Timestamp::UNIX_EPOCH)
            .await
    }

    /// Waits for the Node's Ready condition, heart-beaten at or after `since` (the
    /// apiserver keeps whole seconds).
    async fn wait_ready_since(
        &mut self,
        control_plane: &ControlPlane,
        since: Timestamp,
    ) -> anyhow::Result<()> {
        let since = since.as_second();
        let nodes = kube::Api::<NodeObject>::all(control_plane.client());
        let name = self.name.clone();
        wait::until(
            &format!("Node {name} Ready"),
            Duration::from_secs(120),
            Duration::from_millis(500),
            || {
                let running = self.ensure_running();
                let nodes = nodes.clone();
                let name = name.clone();
                async move {
                    running?;
                    let Some(node) = nodes.get_opt(&name).await? else {
                        return Ok(None);
                    };
                    let ready = node
                        .status
                        .and_then(|s| s.conditions)
                        .unwrap_or_default()
                        .into_iter()
                        .find(|c| c.type_ == "Ready");
                    match ready {
                        Some(c) if c.status == "True" => Ok(c
                            .last_heartbeat_time
                            .filter(|t| t.0.as_second() >= since)
                            .map(|_| ())),
                        Some(c) => bail!(
                            "Node {name} condition Ready={}: {} {}",
                            c.status,
                            c.reason.unwrap_or_default(),
                            c.message.unwrap_or_default()
                        ),
                        None => Ok(None),
                    }
                }
            },
        )
        .await
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so it does not restart what containerd's end kills.
        if let Some(kubelet) = &mut self.kubelet {
            kubelet.stop();
        }
        self.containerd.stop();
        remove_cgroup_root(&self.cgroup_root);
        // The node's directory and the kubelet's root are bind mounts onto themselves
        // (set_up_propagation), with the kubelet's volume mounts below.
        unmount_under(self.dir.path());
    }
}

fn start_containerd(dir: &WorkDir, socket: &Path) -> anyhow::Result<Process> {
    let bin = bin_dir()?;
    let cni_conf = dir.join("cni");
    std::fs::create_dir_all(&cni_conf)?;
    // Never executed (pods use the host network), but containerd reports the runtime
    // network ready only once a configuration loads.
    std::fs::write(
        cni_conf.join("10-e2e.conflist"),
        r#"{"cniVersion":"1.0.0","name":"e2e","plugins":[{"type":"bridge","bridge":"spire-rs-e2e","ipam":{"type":"host-local","ranges":[[{"subnet":"10.244.0.0/24"}]]}}]}"#,
    )?;
    let config = dir.join("containerd.toml");
    std::fs::write(
        &config,
        format!(
            r#"version = 3
root = "{root}"
state = "{state}"
# NRI listens on a fixed path; nothing here uses it.
disabled_plugins = ["io.containerd.nri.v1.nri"]

[grpc]
  address = "{socket}"

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = "{pause}"

[plugins."io.containerd.cri.v1.runtime"]
  # Test machines may withhold CAP_SYS_RESOURCE; without this runc fails to start a
  # sandbox ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = "{runc}"
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = ["{bin}"]
    conf_dir = "{cni_conf}"
"#,
            root = dir.join("containerd/root").display(),
            state = dir.join("containerd/state").display(),
            socket = socket.display(),
            pause = PAUSE_IMAGE,
            runc = tool("runc")?.display(),
            bin = bin.display(),
            cni_conf = cni_conf.display(),
        ),
    )?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&path));
    // PID 1 of new PID and mount namespaces: its death takes every shim and container
    // with it, and its own mounts vanish with the namespace. The propagation of the
    // host's mounts is kept (see set_up_propagation).
    let mut command = Command::new("unshare");
    command
        .args([
            "--pid",
            "--fork",
            "--kill-child",
            "--mount-proc",
            "--propagation=unchanged",
        ])
        .arg(tool("containerd")?)
        .arg(format!("--config={}", config.display()))
        // The shim is looked up on PATH.
        .env("PATH", std::env::join_paths(paths)?);
    Process::spawn("containerd", command, &dir.join("containerd.log"))
}

/// What differs between nodes in the kubelet's configuration file.
struct KubeletConfig<'a> {
    port: u16,
    ca_file: &'a Path,
    serving_cert: &'a Path,
    serving_key: &'a Path,
    cgroup_root: &'a str,
    socket: &'a Path,
    pod_logs: &'a Path,
    volume_plugins: &'a Path,
}

fn kubelet_config(c: &KubeletConfig<'_>) -> String {
    format!(
        r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzPort: 0
tlsCertFile: {serving_cert}
tlsPrivateKeyFile: {serving_key}
rotateCertificates: false
serverTLSBootstrap: false
# The apiserver reaches logs and exec with its client certificate; a ServiceAccount
# token is checked with a TokenReview and authorized with a SubjectAccessReview.
authentication:
  anonymous:
    enabled: false
  webhook:
    enabled: true
  x509:
    clientCAFile: {ca_file}
authorization:
  mode: Webhook
containerRuntimeEndpoint: unix://{socket}
# cgroup v1 hosts are deprecated but still what some test machines are.
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
failSwapOn: false
podLogsDir: {pod_logs}
volumePluginDir: {volume_plugins}
resolvConf: ""
# A test machine's disk and memory must never make the kubelet evict pods or delete
# the imported images (they cannot be pulled again).
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard:
  memory.available: "0%"
  nodefs.available: "0%"
  nodefs.inodesFree: "0%"
  imagefs.available: "0%"
  imagefs.inodesFree: "0%"
"#,
        port = c.port,
        serving_cert = c.serving_cert.display(),
        serving_key = c.serving_key.display(),
        ca_file = c.ca_file.display(),
        socket = c.socket.display(),
        cgroup_root = c.cgroup_root,
        pod_logs = c.pod_logs.display(),
        volume_plugins = c.volume_plugins.display(),
    )
}
