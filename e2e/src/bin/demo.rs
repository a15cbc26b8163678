//! `make demo`: the whole story on the local machine, without Docker or a kubelet. A real
//! kube-apiserver, a real SPIRE server and agent, our operator and CSI driver, and the
//! real OIDC discovery provider; the demo itself plays the kubelet (it publishes the
//! pod's CSI volume, puts the workload process in the pod's cgroup and answers the
//! agent's "which pod is this process in?" on a stand-in read-only port).
//!
//! `demo --no-wait` runs the same story and exits instead of waiting (used by the tests).
//! Everything stops and is cleaned up on Ctrl-C.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use e2e::csi::{Driver, PodVolume, uds_channel};
use e2e::entries::{self, EntryView};
use e2e::kube_util::{
    apply_crd_objects, ensure_namespace, ensure_service_account, node, scheduled_pod,
};
use e2e::operator::Operator;
use e2e::ports::free_port;
use e2e::process::Process;
use e2e::spire::KUBELET_NODE;
use e2e::stand_in_kubelet::{Kubelet, PodCgroup, running_pod};
use e2e::{ControlPlane, Spire, SpireOptions, WorkDir, http, tools, wait};
use k8s_openapi::api::core::v1::{CSIVolumeSource, Node, Pod, Volume, VolumeMount};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use spiffe::{JwtBundle, JwtBundleSet, JwtSvid, TrustDomain};
use spiffe_csi_driver::csi::v1 as csi;

const TRUST_DOMAIN: &str = "example.org";
const CLUSTER: &str = "demo";
const PLUGIN: &str = "csi.spiffe.io";
const VOLUME: &str = "spiffe-workload-api";
const AUDIENCE: &str = "api://AzureADTokenExchange";
const OIDC_DOMAIN: &str = "localhost";

fn step(n: u32, text: &str) {
    println!("\n[{n}] {text}");
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let no_wait = match std::env::args().nth(1).as_deref() {
        None => false,
        Some("--no-wait") => true,
        Some(other) => bail!("unknown argument {other:?} (the only option is --no-wait)"),
    };
    if !rustix::process::geteuid().is_root() {
        bail!(
            "the demo plays the kubelet: it bind-mounts the pod's CSI volume and puts the \
             workload in the pod's cgroup, which needs root. Run `sudo make demo`."
        );
    }
    let started = Instant::now();
    let bin = tools::bin_dir()?;
    let exe_dir = std::env::current_exe()?
        .parent()
        .context("no directory around the demo binary")?
        .to_owned();
    let dir = WorkDir::new("demo")?;

    step(
        1,
        "Starting a Kubernetes control plane (etcd + kube-apiserver) on 127.0.0.1 ...",
    );
    let control_plane = ControlPlane::start()
        .await
        .context("starting the control plane (did `make tools` run?)")?;
    let client = control_plane.client();
    let version = client.apiserver_version().await?;
    println!(
        "    kube-apiserver {} is ready at {}",
        version.git_version,
        control_plane.url()
    );

    step(
        2,
        "Installing our CRDs (generated from the operator's Rust types) ...",
    );
    for name in apply_crd_objects(&client, &spire_operator::crd::all()).await? {
        println!("    {name}");
    }

    step(
        3,
        &format!("Creating Node {KUBELET_NODE} and its stand-in kubelet ..."),
    );
    let node_object = Api::<Node>::all(client.clone())
        .create(&PostParams::default(), &node(KUBELET_NODE))
        .await?;
    let kubelet = Kubelet::start().await?;
    println!(
        "    the kubelet's read-only port answers on 127.0.0.1:{} (GET /pods), as a real kubelet would",
        kubelet.port
    );

    step(
        4,
        &format!("Starting SPIRE for trust domain {TRUST_DOMAIN}: a server and an agent ..."),
    );
    let spire = Spire::start_with(
        TRUST_DOMAIN,
        SpireOptions {
            kubelet_read_only_port: Some(kubelet.port),
            jwt_issuer: Some(format!("http://{OIDC_DOMAIN}")),
            ..SpireOptions::default()
        },
    )
    .await?;
    println!(
        "    spire-server admin API: {}",
        spire.server_socket().display()
    );
    println!("    spire-agent attested as {}", spire.agent_id());
    println!(
        "    its workload attestors: unix, and k8s (asking the kubelet which pod a process is in)"
    );

    step(5, "Starting spire-operator ...");
    // In a cluster the agent is attested by k8s_psat as
    // spiffe://<td>/spire/agent/k8s_psat/<cluster>/<node uid>, the default parent; here a
    // join token attested it, so the parent template names it.
    let operator_config = format!("parentIDTemplate: \"{}\"\n", spire.agent_id());
    let operator = Operator::start(&control_plane, &spire, CLUSTER, &operator_config).await?;
    println!(
        "    ready (metrics on http://{}/metrics); its config is spire-controller-manager's:\n      {}",
        operator.metrics_addr(),
        std::fs::read_to_string(operator.config_path())?
            .trim_end()
            .replace('\n', "\n      ")
    );

    step(
        6,
        "Starting spiffe-csi-driver (in a private mount namespace, like a node's) ...",
    );
    let pods_dir = dir.join("pods");
    std::fs::create_dir_all(&pods_dir)?;
    let csi_socket = dir.join("csi/csi.sock");
    let agent_dir = spire
        .workload_socket()
        .parent()
        .context("agent socket dir")?
        .to_owned();
    let driver = Driver::start(
        "spiffe-csi-driver",
        &e2e::csi::our_driver()?,
        &[
            format!("--csi-socket-path={}", csi_socket.display()),
            format!("--workload-api-socket-dir={}", agent_dir.display()),
            format!("--kubelet-pods-dir={}", pods_dir.display()),
            format!("--node-id={KUBELET_NODE}"),
            format!("--plugin-name={PLUGIN}"),
        ],
        &csi_socket,
        &dir.join("spiffe-csi-driver.log"),
    )
    .await?;
    println!(
        "    CSI socket {}, serving the agent's directory {}",
        csi_socket.display(),
        agent_dir.display()
    );

    step(
        7,
        "Applying a ClusterSPIFFEID, as in any spire-controller-manager tutorial ...",
    );
    let csid = json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": {"name": "demo"},
        "spec": {
            "spiffeIDTemplate": "spiffe://{{ .TrustDomain }}/ns/{{ .PodMeta.Namespace }}/sa/{{ .PodSpec.ServiceAccountName }}",
            "podSelector": {"matchLabels": {"app": "web"}},
            "dnsNameTemplates": ["{{ .PodMeta.Name }}.{{ .PodMeta.Namespace }}.svc"],
        }
    });
    println!("{}", indent(&serde_norway::to_string(&csid)?, 4));
    let api: Api<kube::api::DynamicObject> = Api::all_with(
        client.clone(),
        &kube::discovery::ApiResource::erase::<spire_operator::crd::ClusterSPIFFEID>(&()),
    );
    api.patch("demo", &PatchParams::apply("demo"), &Patch::Apply(&csid))
        .await?;

    step(
        8,
        "Creating namespace shop, ServiceAccount web and Pod web-0 on the node ...",
    );
    ensure_namespace(&client, "shop").await?;
    ensure_service_account(&client, "shop", "web").await?;
    let pod = pod_with_csi_volume();
    let pod = Api::<Pod>::namespaced(client.clone(), "shop")
        .create(&PostParams::default(), &pod)
        .await?;
    let pod_uid = pod.metadata.uid.clone().context("pod without uid")?;
    println!(
        "    the pod mounts its identity with `csi: {{driver: {PLUGIN}, readOnly: true}}`, no hostPath"
    );
    println!("    pod uid {pod_uid}");

    step(9, "The operator registers the pod on the SPIRE server ...");
    let all = entries::wait_for(&spire, "the pod's entry", |all| {
        entries::for_pod(all, &pod_uid).len() == 1
    })
    .await?;
    let entry: &EntryView = entries::for_pod(&all, &pod_uid)[0];
    println!("    entry {}", entry.id);
    println!("      SPIFFE ID  {}", entry.spiffe_id);
    println!("      parent     {}", entry.parent_id);
    println!(
        "      selectors  {}",
        entry
            .selectors
            .iter()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!("      DNS names  {}", entry.dns_names.join(", "));
    println!(
        "    (node {} has uid {}; the pod-uid selector ties the entry to this pod alone)",
        KUBELET_NODE,
        node_object.metadata.uid.unwrap_or_default()
    );

    step(
        10,
        "The kubelet publishes the pod's CSI volume (NodePublishVolume) ...",
    );
    let target = pods_dir
        .join(&pod_uid)
        .join("volumes/kubernetes.io~csi")
        .join(VOLUME)
        .join("mount");
    // kubelet creates the volume's directory; the driver creates `mount` inside it.
    std::fs::create_dir_all(target.parent().context("target has a parent")?)?;
    let mut node_client = csi::node_client::NodeClient::new(uds_channel(&csi_socket).await?);
    node_client
        .node_publish_volume(pod_volume(&pod_uid).publish_request(&target))
        .await
        .context("NodePublishVolume")?;
    let mount = mount_line(driver.process.id(), &target)?;
    println!(
        "    {} is now a read-only bind of the agent's directory:",
        target.display()
    );
    println!("      {mount}");

    step(
        11,
        "The container starts: in the pod's cgroup, seeing the volume at its mount path ...",
    );
    let cgroup = PodCgroup::create(&pod_uid)?;
    kubelet.set_pods(vec![running_pod(&pod)?]);
    // A socket path must fit in 108 bytes; a container reaches the mount through its
    // short mount path, the workload here through a short symlink to it.
    let short = dir.join("w");
    std::os::unix::fs::symlink(&target, &short)?;
    let endpoint = format!("unix://{}/spire-agent.sock", short.display());
    println!("    cgroup {}", cgroup.path.display());
    println!("    SPIFFE_ENDPOINT_SOCKET={endpoint}");
    let got = run_workload(
        &exe_dir.join("workload"),
        &cgroup,
        driver.process.id(),
        &endpoint,
    )
    .await?;
    let want = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/web");
    println!(
        "    X.509-SVID: {} ({} certificate(s) in the chain)",
        got["x509_svid"]["spiffe_id"], got["x509_svid"]["chain_length"]
    );
    println!(
        "    JWT-SVID:   {} for audience {}",
        got["jwt_svid"]["spiffe_id"], got["jwt_svid"]["audience"]
    );
    if got["x509_svid"]["spiffe_id"] != want.as_str()
        || got["jwt_svid"]["spiffe_id"] != want.as_str()
    {
        bail!("the workload received {got} instead of {want}");
    }

    step(
        12,
        "A relying party (Azure AD, Vault, AWS) validates the JWT-SVID with the OIDC discovery provider ...",
    );
    let oidc = OidcProvider::start(&dir, &spire).await?;
    let (status, discovery) =
        http::get_with_host(&oidc.addr, "/.well-known/openid-configuration", OIDC_DOMAIN).await?;
    anyhow::ensure!(status == 200, "discovery document: {status} {discovery}");
    let discovery: Value = serde_json::from_str(&discovery)?;
    println!(
        "    issuer {}, jwks_uri {}",
        discovery["issuer"], discovery["jwks_uri"]
    );
    let (status, jwks) = http::get_with_host(&oidc.addr, "/keys", OIDC_DOMAIN).await?;
    anyhow::ensure!(status == 200, "JWKS: {status} {jwks}");
    let keys: Value = serde_json::from_str(&jwks)?;
    println!(
        "    JWKS: {} key(s), \"use\": {}",
        keys["keys"].as_array().map_or(0, Vec::len),
        keys["keys"][0]["use"]
    );
    let bundle: JwtBundleSet = [JwtBundle::from_jwt_authorities(
        TrustDomain::new(TRUST_DOMAIN)?,
        jwks.as_bytes(),
    )?]
    .into_iter()
    .collect();
    let token = got["jwt_svid"]["token"].as_str().context("no JWT token")?;
    let svid = JwtSvid::parse_and_validate(token, &bundle, &[AUDIENCE])
        .context("validating the JWT-SVID against the JWKS")?;
    println!(
        "    signature, audience and expiry check out: the token proves {}",
        svid.spiffe_id()
    );
    if svid.spiffe_id().to_string() != want {
        bail!(
            "the validated JWT-SVID is for {} instead of {want}",
            svid.spiffe_id()
        );
    }
    println!(
        "\nThe workload received its identity {} s after start.",
        started.elapsed().as_secs()
    );

    if !no_wait {
        print_next_steps(&bin, &control_plane, &spire, &operator, &oidc);
        wait_for_shutdown().await?;
    }
    println!(
        "\nStopping: unpublishing the volume, then every process; removing temporary directories ..."
    );
    node_client
        .node_unpublish_volume(pod_volume(&pod_uid).unpublish_request(&target))
        .await
        .context("NodeUnpublishVolume")?;
    drop((
        oidc,
        driver,
        operator,
        spire,
        kubelet,
        cgroup,
        control_plane,
    ));
    println!("Done.");
    Ok(())
}

fn indent(text: &str, by: usize) -> String {
    let pad = " ".repeat(by);
    text.lines()
        .map(|l| format!("{pad}{l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn pod_with_csi_volume() -> Pod {
    let mut pod = scheduled_pod("shop", "web-0", "web", KUBELET_NODE, &[("app", "web")]);
    let spec = pod.spec.as_mut().expect("scheduled_pod has a spec");
    spec.volumes = Some(vec![Volume {
        name: VOLUME.into(),
        csi: Some(CSIVolumeSource {
            driver: PLUGIN.into(),
            read_only: Some(true),
            ..Default::default()
        }),
        ..Default::default()
    }]);
    spec.containers[0].volume_mounts = Some(vec![VolumeMount {
        name: VOLUME.into(),
        mount_path: "/spiffe-workload-api".into(),
        read_only: Some(true),
        ..Default::default()
    }]);
    pod
}

/// Pod web-0's CSI volume, as kubelet describes it to the driver.
fn pod_volume(pod_uid: &str) -> PodVolume<'_> {
    PodVolume {
        pod: "web-0",
        namespace: "shop",
        uid: pod_uid,
        service_account: "web",
        volume: VOLUME,
    }
}

/// The mountinfo line of `target` in the driver's mount namespace.
fn mount_line(driver_pid: u32, target: &Path) -> anyhow::Result<String> {
    let mountinfo = std::fs::read_to_string(format!("/proc/{driver_pid}/mountinfo"))?;
    let target = target.display().to_string();
    mountinfo
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(target.as_str()))
        .map(str::to_owned)
        .with_context(|| format!("{target} is not mounted"))
}

/// Runs the workload as the container's process: in the pod's cgroup (where the agent's
/// k8s attestor finds the pod UID and container ID) and the driver's mount namespace
/// (where the volume is mounted).
async fn run_workload(
    workload: &Path,
    cgroup: &PodCgroup,
    driver_pid: u32,
    endpoint: &str,
) -> anyhow::Result<Value> {
    let mut command = cgroup.command(Path::new("nsenter"));
    command
        .arg(format!("--mount=/proc/{driver_pid}/ns/mnt"))
        .arg(workload)
        .args(["--jwt-audience", AUDIENCE, "--timeout-secs", "60"])
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint);
    let output = tokio::task::spawn_blocking(move || command.output())
        .await?
        .with_context(|| {
            format!(
                "running {} (build it with `cargo build -p e2e --bins`)",
                workload.display()
            )
        })?;
    if !output.status.success() {
        bail!(
            "the workload got no identity:\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// The real SPIRE OIDC discovery provider, reading the JWT signing keys from the
/// server's API, serving plain HTTP on loopback (a TLS proxy fronts it in production).
struct OidcProvider {
    addr: String,
    _process: Process,
}

impl OidcProvider {
    async fn start(dir: &WorkDir, spire: &Spire) -> anyhow::Result<Self> {
        let addr = format!("127.0.0.1:{}", free_port()?);
        let config = dir.join("oidc-discovery-provider.conf");
        std::fs::write(
            &config,
            format!(
                r#"log_level = "INFO"
domains = ["{OIDC_DOMAIN}"]
insecure_addr = "{addr}"
allow_insecure_scheme = true
set_key_use = true
server_api {{
    address = "unix://{socket}"
}}
"#,
                socket = spire.server_socket().display()
            ),
        )?;
        let mut command = Command::new(tools::tool("oidc-discovery-provider")?);
        command.arg("-config").arg(&config);
        let mut process = Process::spawn(
            "oidc-discovery-provider",
            command,
            &dir.join("oidc-discovery-provider.log"),
        )?;
        let probe = addr.clone();
        wait::until(
            "the OIDC discovery provider serving keys",
            Duration::from_secs(30),
            Duration::from_millis(200),
            || {
                let running = process.ensure_running();
                let addr = probe.clone();
                async move {
                    running?;
                    Ok(
                        match http::get_with_host(&addr, "/keys", OIDC_DOMAIN).await {
                            Ok((200, body)) if body.contains("\"kid\"") => Some(()),
                            _ => None,
                        },
                    )
                }
            },
        )
        .await?;
        Ok(Self {
            addr,
            _process: process,
        })
    }
}

fn print_next_steps(
    bin: &Path,
    control_plane: &ControlPlane,
    spire: &Spire,
    operator: &Operator,
    oidc: &OidcProvider,
) {
    println!("\nThe stack keeps running until you press Ctrl-C. In another terminal, try:");
    println!("  export PATH={}:$PATH", bin.display());
    println!(
        "  export KUBECONFIG={}",
        control_plane.kubeconfig().display()
    );
    println!("  kubectl get clusterspiffeids        # PODS / ENTRIES / READY");
    println!("  kubectl get clusterspiffeid demo -o yaml");
    println!("  kubectl -n shop delete pod web-0     # and watch the entry go");
    println!(
        "  spire-server entry show -socketPath {}",
        spire.server_socket().display()
    );
    println!(
        "  curl -s http://{}/metrics | grep spire_operator_entr",
        operator.metrics_addr()
    );
    println!(
        "  curl -s -H 'Host: {OIDC_DOMAIN}' http://{}/keys",
        oidc.addr
    );
    println!(
        "Logs: {}/*.log, {}/*.log, {}",
        control_plane.dir().display(),
        spire.dir().display(),
        operator.log_path().display()
    );
}

async fn wait_for_shutdown() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
