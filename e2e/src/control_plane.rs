//! A real Kubernetes control plane on loopback: etcd and kube-apiserver.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use kube::config::{KubeConfigOptions, Kubeconfig};

use crate::pki::{self, Ca};
use crate::ports::{free_port, retry_on_port_clash};
use crate::process::Process;
use crate::tools::tool;
use crate::wait;
use crate::workdir::WorkDir;

/// The service-account token issuer; also the audience tokens carry by default.
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";

/// What to run besides etcd and kube-apiserver.
#[derive(Clone, Copy, Debug, Default)]
pub struct Options {
    /// Also run kube-controller-manager: namespaces then get their `default`
    /// ServiceAccount (which the ServiceAccount admission plugin requires before a pod
    /// can be created there), deleted namespaces are emptied and removed, and owner
    /// references are garbage-collected. The node lifecycle controller stays off
    /// unless [`Options::nodes`] is set: without a kubelet it would mark every node
    /// unreachable and evict its pods.
    pub controller_manager: bool,
    /// Prepare the apiserver for real kubelets ([`crate::node::Node`]): the Node
    /// authorizer before RBAC and the NodeRestriction admission plugin, as a cluster
    /// with nodes runs them, and a client certificate for the apiserver's calls to
    /// kubelets (pod logs, exec), bound to `system:kubelet-api-admin`. Kubelets are
    /// reached on their Hostname address; their serving certificates are checked
    /// against the harness CA.
    pub nodes: bool,
    /// Also run kube-scheduler, which binds pods without `spec.nodeName` to a node
    /// (DaemonSet pods included): for charts on a real [`crate::node::Node`]. Nodes
    /// register with a not-ready taint that only the node lifecycle controller lifts,
    /// so this goes with `controller_manager` and `nodes`.
    pub scheduler: bool,
    /// `--enable-aggregator-routing=true`: the apiserver calls admission webhooks (and
    /// aggregated APIs) at an address from the Service's EndpointSlices instead of its
    /// ClusterIP, which nothing routes here (no kube-proxy). With it, a selector-less
    /// Service and a hand-made EndpointSlice pointing at this host's non-loopback
    /// address (EndpointSlice validation refuses loopback) reach a local webhook server
    /// under the Service's DNS name (see [`crate::webhook`]).
    pub endpoint_routing: bool,
}

/// The user the apiserver authenticates as to kubelets (with [`Options::nodes`]).
pub const KUBELET_CLIENT_USER: &str = "kube-apiserver-kubelet-client";

/// etcd + kube-apiserver (RBAC, service-account tokens) with an admin client, and
/// optionally kube-controller-manager and kube-scheduler.
///
/// Fields drop in declaration order: the scheduler, the controller manager and the
/// apiserver stop before etcd, and the directory goes last.
pub struct ControlPlane {
    scheduler: Option<Process>,
    controller_manager: Option<Process>,
    apiserver: Process,
    etcd: Process,
    // What they were started with, for restarts.
    apiserver_args: Vec<OsString>,
    etcd_args: Vec<OsString>,
    ca: Ca,
    client: kube::Client,
    url: String,
    kubeconfig: PathBuf,
    dir: WorkDir,
}

impl ControlPlane {
    /// Starts etcd and kube-apiserver on free loopback ports and waits until the
    /// apiserver reports ready (`/readyz`).
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Options::default()).await
    }

    /// Like [`ControlPlane::start`], with the components `options` asks for.
    pub async fn start_with(options: Options) -> anyhow::Result<Self> {
        retry_on_port_clash("control plane", || Self::try_start(options)).await
    }

    async fn try_start(options: Options) -> anyhow::Result<Self> {
        let dir = WorkDir::new("control-plane")?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let write = |name: &str, contents: &str| -> anyhow::Result<PathBuf> {
            let path = pki_dir.join(name);
            std::fs::write(&path, contents)
                .with_context(|| format!("writing {}", path.display()))?;
            Ok(path)
        };

        let ca = Ca::new("spire-rs e2e cluster CA")?;
        let serving = ca.issue_server(
            "kube-apiserver",
            &[
                "localhost",
                "127.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        let admin = ca.issue_client("e2e-admin", &["system:masters"])?;
        let (sa_key, sa_pub) = pki::key_pair()?;
        let ca_file = write("ca.crt", ca.cert_pem())?;
        let serving_cert = write("apiserver.crt", &serving.cert_pem)?;
        let serving_key = write("apiserver.key", &serving.key_pem)?;
        let admin_cert = write("admin.crt", &admin.cert_pem)?;
        let admin_key = write("admin.key", &admin.key_pem)?;
        let sa_key_file = write("sa.key", &sa_key)?;
        let sa_pub_file = write("sa.pub", &sa_pub)?;

        let etcd_port = free_port()?;
        let etcd_peer_port = free_port()?;
        let apiserver_port = free_port()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer_port}");

        let mut etcd = Command::new(tool("etcd")?);
        etcd.arg("--name=e2e")
            .arg(format!("--data-dir={}", dir.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!("--listen-peer-urls={peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={peer_url}"))
            .arg(format!("--initial-cluster=e2e={peer_url}"))
            // Test data is thrown away; fsync would only slow every write down.
            .arg("--unsafe-no-fsync")
            .arg("--log-level=warn");
        let etcd_args: Vec<OsString> = etcd.get_args().map(ToOwned::to_owned).collect();
        let mut etcd = Process::spawn("etcd", etcd, &dir.join("etcd.log"))?;

        let mut apiserver = Command::new(tool("kube-apiserver")?);
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={apiserver_port}"))
            .arg(format!(
                "--cert-dir={}",
                dir.join("apiserver-certs").display()
            ))
            .arg(format!("--tls-cert-file={}", serving_cert.display()))
            .arg(format!("--tls-private-key-file={}", serving_key.display()))
            .arg(format!("--client-ca-file={}", ca_file.display()))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!(
                "--service-account-key-file={}",
                sa_pub_file.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                sa_key_file.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--allow-privileged=true")
            .arg("--profiling=false")
            // One client at a time; flow control only adds latency here.
            .arg("--enable-priority-and-fairness=false");
        if options.endpoint_routing {
            apiserver.arg("--enable-aggregator-routing=true");
        }
        if options.nodes {
            let kubelet_client = ca.issue_client(KUBELET_CLIENT_USER, &[])?;
            let cert = write("apiserver-kubelet-client.crt", &kubelet_client.cert_pem)?;
            let key = write("apiserver-kubelet-client.key", &kubelet_client.key_pem)?;
            apiserver
                .arg("--authorization-mode=Node,RBAC")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg(format!("--kubelet-client-certificate={}", cert.display()))
                .arg(format!("--kubelet-client-key={}", key.display()))
                .arg(format!(
                    "--kubelet-certificate-authority={}",
                    ca_file.display()
                ))
                // The harness's kubelet listens on 127.0.0.1 only and is named `localhost`
                // (a loopback InternalIP is refused by the kubelet), see node::NODE_NAME.
                .arg("--kubelet-preferred-address-types=Hostname");
        } else {
            apiserver.arg("--authorization-mode=RBAC");
        }
        let apiserver_args: Vec<OsString> = apiserver.get_args().map(ToOwned::to_owned).collect();
        let mut apiserver =
            Process::spawn("kube-apiserver", apiserver, &dir.join("kube-apiserver.log"))?;

        let url = format!("https://127.0.0.1:{apiserver_port}");
        let kubeconfig = dir.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            kubeconfig_yaml(&url, &ca_file, &admin_cert, &admin_key),
        )?;
        let client = client_for(&kubeconfig).await?;

        wait_ready(&mut etcd, &mut apiserver, &client).await?;

        if options.nodes {
            bind_kubelet_api_admin(&client).await?;
        }

        let controller_manager = if options.controller_manager {
            let mut kcm = Command::new(tool("kube-controller-manager")?);
            kcm.arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg(format!("--root-ca-file={}", ca_file.display()))
                // With real kubelets (Options::nodes) heart-beating, the node lifecycle
                // controller does its real job: it lifts the not-ready taint kubelets
                // register with, which the scheduler would otherwise honour.
                .arg(if options.nodes {
                    "--controllers=*"
                } else {
                    "--controllers=*,-node-lifecycle-controller"
                })
                .arg("--leader-elect=false")
                // Nothing scrapes it; not serving avoids another port.
                .arg("--secure-port=0");
            let log = dir.join("kube-controller-manager.log");
            Some(Process::spawn("kube-controller-manager", kcm, &log)?)
        } else {
            None
        };

        let scheduler = if options.scheduler {
            let mut scheduler = Command::new(tool("kube-scheduler")?);
            scheduler
                .arg(format!("--kubeconfig={}", kubeconfig.display()))
                .arg("--leader-elect=false")
                // Nothing scrapes it; not serving avoids another port.
                .arg("--secure-port=0");
            let log = dir.join("kube-scheduler.log");
            Some(Process::spawn("kube-scheduler", scheduler, &log)?)
        } else {
            None
        };

        Ok(Self {
            scheduler,
            controller_manager,
            apiserver,
            etcd,
            apiserver_args,
            etcd_args,
            ca,
            client,
            url,
            kubeconfig,
            dir,
        })
    }

    /// Stops the kube-apiserver (SIGTERM, as a rolling restart does) and starts it again
    /// with the same flags; returns once it is ready. Clients' watches break meanwhile.
    pub async fn restart_apiserver(&mut self) -> anyhow::Result<()> {
        self.apiserver.stop();
        let mut apiserver = Command::new(tool("kube-apiserver")?);
        apiserver.args(&self.apiserver_args);
        let log = self.dir.join("kube-apiserver.log");
        self.apiserver = Process::spawn("kube-apiserver", apiserver, &log)?;
        wait_ready(&mut self.etcd, &mut self.apiserver, &self.client).await
    }

    /// Stops etcd and starts it again on the same data; returns once the kube-apiserver,
    /// which stays up, is ready again.
    pub async fn restart_etcd(&mut self) -> anyhow::Result<()> {
        self.etcd.stop();
        let mut etcd = Command::new(tool("etcd")?);
        etcd.args(&self.etcd_args);
        self.etcd = Process::spawn("etcd", etcd, &self.dir.join("etcd.log"))?;
        wait_ready(&mut self.etcd, &mut self.apiserver, &self.client).await
    }

    /// The kube-apiserver process ID.
    pub fn apiserver_pid(&self) -> u32 {
        self.apiserver.id()
    }

    /// The etcd process ID.
    pub fn etcd_pid(&self) -> u32 {
        self.etcd.id()
    }

    /// etcd's data directory (`member/snap/db` is its database).
    pub fn etcd_data_dir(&self) -> PathBuf {
        self.dir.join("etcd")
    }

    /// A client authenticated as a cluster admin (`system:masters`).
    pub fn client(&self) -> kube::Client {
        self.client.clone()
    }

    /// The CA that signed the apiserver's certificates and that the apiserver trusts
    /// for client certificates: it issues a node's kubelet certificates.
    pub fn ca(&self) -> &Ca {
        &self.ca
    }

    /// The CA certificate file.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("pki").join("ca.crt")
    }

    /// The apiserver URL, `https://127.0.0.1:<port>`.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// An admin kubeconfig file, for kubectl, helm and the operator.
    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// Writes a kubeconfig that authenticates with a bearer token (e.g. a ServiceAccount
    /// token from the TokenRequest API) to `path`, and returns a client for it.
    pub async fn token_kubeconfig(&self, token: &str, path: &Path) -> anyhow::Result<kube::Client> {
        let ca = self.dir.join("pki").join("ca.crt");
        std::fs::write(
            path,
            format!(
                "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: token
  user:
    token: {token}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: token
current-context: e2e
",
                url = self.url,
                ca = ca.display(),
            ),
        )?;
        client_for(path).await
    }

    /// The working directory (certificates, etcd data, logs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Fails, with the end of its log, if a component has exited.
    pub fn ensure_running(&mut self) -> anyhow::Result<()> {
        self.etcd.ensure_running()?;
        self.apiserver.ensure_running()?;
        if let Some(kcm) = &mut self.controller_manager {
            kcm.ensure_running()?;
        }
        if let Some(scheduler) = &mut self.scheduler {
            scheduler.ensure_running()?;
        }
        Ok(())
    }
}

/// Lets the apiserver's kubelet client call every kubelet API (logs, exec, ...):
/// kubelets authorize those calls with a SubjectAccessReview on `nodes/proxy` & co.
async fn bind_kubelet_api_admin(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    let binding = ClusterRoleBinding {
        metadata: kube::api::ObjectMeta {
            name: Some(KUBELET_CLIENT_USER.to_owned()),
            ..Default::default()
        },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "ClusterRole".to_owned(),
            name: "system:kubelet-api-admin".to_owned(),
        },
        subjects: Some(vec![Subject {
            api_group: Some("rbac.authorization.k8s.io".to_owned()),
            kind: "User".to_owned(),
            name: KUBELET_CLIENT_USER.to_owned(),
            namespace: None,
        }]),
    };
    kube::Api::<ClusterRoleBinding>::all(client.clone())
        .create(&Default::default(), &binding)
        .await
        .with_context(|| format!("creating ClusterRoleBinding {KUBELET_CLIENT_USER}"))?;
    Ok(())
}

/// Waits until the apiserver answers `/readyz` with `ok`; fails at once if either process
/// exits.
async fn wait_ready(
    etcd: &mut Process,
    apiserver: &mut Process,
    client: &kube::Client,
) -> anyhow::Result<()> {
    wait::until(
        "kube-apiserver /readyz",
        Duration::from_secs(120),
        Duration::from_millis(250),
        || {
            let running = etcd
                .ensure_running()
                .and_then(|()| apiserver.ensure_running());
            let client = client.clone();
            async move {
                running?;
                let request = http::Request::get("/readyz").body(Vec::new())?;
                Ok(client
                    .request_text(request)
                    .await
                    .ok()
                    .filter(|body| body == "ok")
                    .map(|_| ()))
            }
        },
    )
    .await
}

/// A kube client for a kubeconfig file's current context.
pub async fn client_for(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kubeconfig = Kubeconfig::read_from(kubeconfig)?;
    let config =
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?;
    Ok(kube::Client::try_from(config)?)
}

fn kubeconfig_yaml(url: &str, ca: &Path, cert: &Path, key: &Path) -> String {
    format!(
        "apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: {url}
    certificate-authority: {ca}
users:
- name: e2e-admin
  user:
    client-certificate: {cert}
    client-key: {key}
contexts:
- name: e2e
  context:
    cluster: e2e
    user: e2e-admin
current-context: e2e
",
        ca = ca.display(),
        cert = cert.display(),
        key = key.display(),
    )
}
