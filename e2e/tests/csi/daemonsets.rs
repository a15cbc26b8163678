//! Our driver image under the DaemonSet shapes users run: spiffe/helm-charts-hardened
//! (every distinct driver container it renders: its defaults and `ci/` files, the
//! `upstream-spiffe-csi-driver` copy, a custom plugin name, agent socket and extra env,
//! the `kubeletPath` of k0s, k3s and OpenShift on IBM Cloud) and our own chart. Each fixture
//! below is written from the chart's templates: the container's args, env and hostPath
//! mounts. The driver runs chrooted in a private mount namespace laid out like the node
//! (see `e2e::daemonset`), and the harness calls it as kubelet does.

use std::os::unix::net::UnixListener;
use std::path::Path;

use e2e::WorkDir;
use e2e::csi::{PodVolume, our_driver};
use e2e::daemonset::{ContainerShape, HostPathMount, Node, Propagation};
use spiffe_csi_driver::csi::v1 as csi;
use tonic::Code;

/// A hostPath mount.
pub fn mount(
    host: &str,
    container: &str,
    read_only: bool,
    propagation: Propagation,
) -> HostPathMount {
    HostPathMount {
        host: host.into(),
        container: container.into(),
        read_only,
        propagation,
    }
}

/// The hardened chart's `spiffe-csi-driver` container (`templates/daemonset.yaml`):
/// three single-dash flags, `MY_NODE_NAME` from `spec.nodeName`, the agent socket
/// directory read-only at `/spire-agent-socket`, the plugin dir at `/spiffe-csi` and
/// `<kubeletPath>/pods` with Bidirectional propagation. `agent_socket_dir` is the
/// directory of its `agentSocketPath` value.
pub fn hardened(
    name: &'static str,
    plugin: &str,
    agent_socket_dir: &str,
    kubelet_path: &str,
) -> ContainerShape {
    ContainerShape {
        name,
        args: [
            "-workload-api-socket-dir",
            "/spire-agent-socket",
            "-plugin-name",
            plugin,
            "-csi-socket-path",
            "/spiffe-csi/csi.sock",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("MY_NODE_NAME".into(), "node-a".into())],
        mounts: vec![
            mount(
                agent_socket_dir,
                "/spire-agent-socket",
                true,
                Propagation::None,
            ),
            mount(
                &format!("{kubelet_path}/plugins/{plugin}"),
                "/spiffe-csi",
                false,
                Propagation::None,
            ),
            mount(
                &format!("{kubelet_path}/pods"),
                &format!("{kubelet_path}/pods"),
                false,
                Propagation::Bidirectional,
            ),
        ],
    }
}

/// Our chart's `spiffe-csi-driver` container (`charts/spire-rs/templates/csi/`) with its
/// defaults: the agent directory's *parent* read-only with HostToContainer propagation,
/// so a re-created agent directory is seen (see the repair test).
pub fn ours(name: &'static str) -> ContainerShape {
    ContainerShape {
        name,
        args: [
            "--csi-socket-path=/spiffe-csi/csi.sock",
            "--workload-api-socket-dir=/spire-agent-parent/agent-sockets",
            "--agent-socket-name=spire-agent.sock",
            "--plugin-name=csi.spiffe.io",
            "--kubelet-pods-dir=/var/lib/kubelet/pods",
            "--agent-socket-wait=0s",
            "--log-format=json",
        ]
        .map(String::from)
        .to_vec(),
        env: vec![("MY_NODE_NAME".into(), "node-a".into())],
        mounts: vec![
            mount(
                "/var/lib/kubelet/plugins/csi.spiffe.io",
                "/spiffe-csi",
                false,
                Propagation::None,
            ),
            mount(
                "/run/spire",
                "/spire-agent-parent",
                true,
                Propagation::HostToContainer,
            ),
            mount(
                "/var/lib/kubelet/pods",
                "/var/lib/kubelet/pods",
                false,
                Propagation::Bidirectional,
            ),
        ],
    }
}

const UID: &str = "0b1c2d3e-4f50-4a6b-8c7d-9e0f1a2b3c4d";

/// One drop-in case: the shape, its plugin name, agent dir and socket name (plus the
/// symlink aliases the hardened spire-agent chart adds), kubelet path.
struct Case {
    shape: ContainerShape,
    plugin: &'static str,
    agent_dir: &'static str,
    socket_name: &'static str,
    aliases: &'static [&'static str],
    kubelet_path: &'static str,
}

/// The driver containers spiffe/helm-charts-hardened renders, one per distinct shape
/// (renders of the chart's defaults, its ci/ values files and the values below).
fn cases() -> Vec<Case> {
    let hardened_case = |name, plugin, agent_dir, socket_name, kubelet_path| Case {
        shape: hardened(name, plugin, agent_dir, kubelet_path),
        plugin,
        agent_dir,
        socket_name,
        aliases: &[],
        kubelet_path,
    };
    let mut custom = hardened_case(
        "hardened-custom",
        "my.csi.example",
        "/run/custom-agent",
        "agent.sock",
        "/var/lib/kubelet",
    );
    custom.shape.env.push(("EXTRA".into(), "1".into()));
    vec![
        // Chart defaults. Every ci/*.yaml file, namespaceOverride, the production
        // recommendations and global.openshift / selinux.enabled render this same driver
        // container (they change the namespace, priorityClassName, or add the chcon
        // init container). The agent chart adds the alias `socket`.
        Case {
            aliases: &["socket"],
            ..hardened_case(
                "hardened-defaults",
                "csi.spiffe.io",
                "/run/spire/agent-sockets",
                "spire-agent.sock",
                "/var/lib/kubelet",
            )
        },
        // upstream.enabled: the second copy for the upstream agent.
        hardened_case(
            "hardened-upstream",
            "upstream.csi.spiffe.io",
            "/run/spire/agent-sockets-upstream",
            "spire-agent.sock",
            "/var/lib/kubelet",
        ),
        // pluginName, agentSocketPath /run/custom-agent/agent.sock, extraEnvVars.
        custom,
        // kubeletPath for k0s and k3s.
        hardened_case(
            "hardened-k0s",
            "csi.spiffe.io",
            "/run/spire/agent-sockets",
            "spire-agent.sock",
            "/var/lib/k0s/kubelet",
        ),
        hardened_case(
            "hardened-k3s",
            "csi.spiffe.io",
            "/run/spire/agent-sockets",
            "spire-agent.sock",
            "/var/lib/rancher/k3s/agent/kubelet",
        ),
        // examples/openshift/values-ibm-cloud.yaml: kubeletPath /var/data/kubelet.
        hardened_case(
            "hardened-ibm-openshift",
            "csi.spiffe.io",
            "/run/spire/agent-sockets",
            "spire-agent.sock",
            "/var/data/kubelet",
        ),
        Case {
            shape: ours("ours-defaults"),
            plugin: "csi.spiffe.io",
            agent_dir: "/run/spire/agent-sockets",
            socket_name: "spire-agent.sock",
            aliases: &[],
            kubelet_path: "/var/lib/kubelet",
        },
    ]
}

#[tokio::test]
async fn our_driver_runs_under_every_hardened_chart_daemonset_shape_and_ours() -> anyhow::Result<()>
{
    let binary = our_driver()?;
    for case in cases() {
        run_case(&case, &binary)
            .await
            .map_err(|e| e.context(format!("DaemonSet shape {}", case.shape.name)))?;
        println!(
            "{}: started, probed, published and unpublished",
            case.shape.name
        );
    }
    Ok(())
}

async fn run_case(case: &Case, binary: &Path) -> anyhow::Result<()> {
    let work = WorkDir::new("ds")?;
    let node = Node::new(work.path())?;
    // What kubelet and the agent's DaemonSet create on the node first.
    for m in &case.shape.mounts {
        std::fs::create_dir_all(node.path(&m.host))?;
    }
    std::fs::create_dir_all(node.path(case.agent_dir))?;
    let _agent = UnixListener::bind(node.path(case.agent_dir).join(case.socket_name))?;
    for alias in case.aliases {
        std::os::unix::fs::symlink(case.socket_name, node.path(case.agent_dir).join(alias))?;
    }
    let driver = node
        .start(
            &case.shape,
            binary,
            "/spiffe-csi/csi.sock",
            &work.join("driver.log"),
        )
        .await?;
    let channel = driver.channel().await?;
    let mut identity = csi::identity_client::IdentityClient::new(channel.clone());
    let mut node_client = csi::node_client::NodeClient::new(channel);

    let info = identity
        .get_plugin_info(csi::GetPluginInfoRequest {})
        .await?
        .into_inner();
    anyhow::ensure!(info.name == case.plugin, "plugin name {:?}", info.name);
    let probe = identity.probe(csi::ProbeRequest {}).await?.into_inner();
    anyhow::ensure!(probe.ready == Some(true), "not ready: {probe:?}");
    let node_id = node_client
        .node_get_info(csi::NodeGetInfoRequest {})
        .await?
        .into_inner()
        .node_id;
    anyhow::ensure!(node_id == "node-a", "node id {node_id:?}");

    let pod = PodVolume {
        pod: "web-0",
        namespace: "default",
        uid: UID,
        service_account: "web",
        volume: "spiffe",
    };
    let target = format!(
        "{}/pods/{UID}/volumes/kubernetes.io~csi/spiffe/mount",
        case.kubelet_path
    );
    // kubelet creates the volume directory before publishing.
    std::fs::create_dir_all(node.path(&target).parent().unwrap_or(Path::new("/")))?;
    node_client
        .node_publish_volume(pod.publish_request(Path::new(&target)))
        .await?;
    // The node (kubelet, then the container runtime) sees the agent socket at the target.
    let on_node = node.path(&target).join(case.socket_name);
    let on_node = on_node.to_str().unwrap_or_default();
    anyhow::ensure!(
        Node::in_namespace(&driver, "test", &["-S", on_node])?,
        "the agent socket is not visible at {on_node} on the node"
    );
    anyhow::ensure!(
        !Node::in_namespace(&driver, "touch", &[&format!("{on_node}.x")])?,
        "the target is writable on the node"
    );

    // Another volume plugin's directory in the same pod is refused, not unmounted.
    let secret = format!(
        "{}/pods/{UID}/volumes/kubernetes.io~secret/token",
        case.kubelet_path
    );
    std::fs::create_dir_all(node.path(&secret))?;
    let refused = node_client
        .node_unpublish_volume(csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-x".into(),
            target_path: secret.clone(),
        })
        .await
        .expect_err("unpublish of a secret volume dir accepted");
    anyhow::ensure!(refused.code() == Code::InvalidArgument, "{refused:?}");
    anyhow::ensure!(node.path(&secret).is_dir(), "secret volume dir removed");

    node_client
        .node_unpublish_volume(pod.unpublish_request(Path::new(&target)))
        .await?;
    anyhow::ensure!(!node.path(&target).exists(), "target left behind");

    // The log (stderr, a file here) is plain text or JSON, without colour codes.
    let log = std::fs::read_to_string(work.join("driver.log"))?;
    anyhow::ensure!(log.contains("serving CSI Identity and Node"), "log: {log}");
    anyhow::ensure!(
        !log.contains('\x1b'),
        "ANSI escape codes in a log file: {log}"
    );
    Ok(())
}

/// Control for the fixtures: the binary the hardened chart ships (the Go driver v0.2.6)
/// starts and publishes under the same shapes, so a failure of ours above is ours.
#[tokio::test]
async fn the_go_driver_runs_under_the_same_hardened_shapes() -> anyhow::Result<()> {
    let go = e2e::tools::tool("spiffe-csi-driver")?;
    for case in cases()
        .into_iter()
        .filter(|c| c.shape.name.starts_with("hardened-"))
    {
        let work = WorkDir::new("ds-go")?;
        let node = Node::new(work.path())?;
        for m in &case.shape.mounts {
            std::fs::create_dir_all(node.path(&m.host))?;
        }
        let _agent = UnixListener::bind(node.path(case.agent_dir).join(case.socket_name))?;
        let driver = node
            .start(
                &case.shape,
                &go,
                "/spiffe-csi/csi.sock",
                &work.join("driver.log"),
            )
            .await?;
        let mut client = csi::node_client::NodeClient::new(driver.channel().await?);
        let target = format!(
            "{}/pods/{UID}/volumes/kubernetes.io~csi/spiffe/mount",
            case.kubelet_path
        );
        std::fs::create_dir_all(node.path(&target).parent().unwrap_or(Path::new("/")))?;
        let pod = PodVolume {
            pod: "web-0",
            namespace: "default",
            uid: UID,
            service_account: "web",
            volume: "spiffe",
        };
        client
            .node_publish_volume(pod.publish_request(Path::new(&target)))
            .await?;
        let on_node = node.path(&target).join(case.socket_name);
        anyhow::ensure!(
            Node::in_namespace(
                &driver,
                "test",
                &["-S", on_node.to_str().unwrap_or_default()]
            )?,
            "{}: the Go driver's mount is not visible on the node",
            case.shape.name
        );
        client
            .node_unpublish_volume(pod.unpublish_request(Path::new(&target)))
            .await?;
        println!("{}: the Go driver started and published", case.shape.name);
    }
    Ok(())
}
