//! spiffe-csi-driver command line: flags, logging, wiring.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{CommandFactory, Parser, ValueEnum};
use spiffe_csi_driver::identity::IdentityService;
use spiffe_csi_driver::mount::{HostMount, LinuxMounter};
use spiffe_csi_driver::node::{NodeConfig, NodeService};
use spiffe_csi_driver::target_path::PodsDir;
use spiffe_csi_driver::{duration, server};

/// CSI node plugin that mounts the SPIRE agent's Workload API socket directory into
/// pods (`csi: {driver: csi.spiffe.io, readOnly: true}`), read-only, so workloads need
/// no hostPath.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Unix socket the CSI services listen on (kubelet / node-driver-registrar dial it).
    #[arg(long, env, default_value = "/spiffe-csi/csi.sock")]
    csi_socket_path: PathBuf,
    /// Directory holding the SPIRE agent's Workload API socket; it is what pods get.
    #[arg(long, env, default_value = "/spire-agent-socket")]
    workload_api_socket_dir: PathBuf,
    /// File name of the agent socket inside that directory, for Probe, the readiness wait
    /// and volume health. Default: any socket in the directory counts (SPIRE names it
    /// `spire-agent.sock`, Istio `socket`).
    #[arg(long, env)]
    agent_socket_name: Option<String>,
    /// CSI plugin name (several instances need distinct names).
    #[arg(long, env, default_value = spiffe_csi_driver::DEFAULT_PLUGIN_NAME)]
    plugin_name: String,
    /// Node id returned by NodeGetInfo (the Kubernetes node name). Default: the value of
    /// the environment variable named by --node-id-env.
    #[arg(long)]
    node_id: Option<String>,
    /// Environment variable holding the node id when --node-id is not given.
    #[arg(long, default_value = "MY_NODE_NAME")]
    node_id_env: String,
    /// Kubelet's pods directory (it must exist); target paths in other pods directories
    /// are refused. Default: any directory named `pods`, as the Go driver's DaemonSets do
    /// not say where kubelet lives. Either way only kubelet's inline-volume path shape
    /// `<pods>/<uid>/volumes/kubernetes.io~csi/<volume>/mount` is accepted.
    #[arg(long, env)]
    kubelet_pods_dir: Option<PathBuf>,
    /// How the agent directory is mounted on the node: `read-only` (default; pods and
    /// runtimes cannot write into it) or `read-write` (the Go driver's behaviour).
    #[arg(long, env, value_enum, default_value_t = NodeMount::ReadOnly)]
    node_mount: NodeMount,
    /// How long NodePublishVolume waits for the agent socket before answering
    /// Unavailable (kubelet retries), e.g. `30s`; `0` publishes without waiting.
    #[arg(long, env, default_value = "0", value_parser = duration::parse)]
    agent_socket_wait: Duration,
    /// Private directory for staging read-only binds (default: `staging` next to the CSI
    /// socket, which is writable and not propagated).
    #[arg(long, env)]
    staging_dir: Option<PathBuf>,
    /// Log format.
    #[arg(long, env, value_enum, default_value_t = LogFormat::Console)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Console,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum NodeMount {
    ReadOnly,
    ReadWrite,
}

impl From<NodeMount> for HostMount {
    fn from(m: NodeMount) -> Self {
        match m {
            NodeMount::ReadOnly => HostMount::ReadOnly,
            NodeMount::ReadWrite => HostMount::ReadWrite,
        }
    }
}

/// The node id: `--node-id`, else `$<node_id_env>`; empty is refused, since kubelet
/// would register the plugin under an empty node id.
fn node_id(cli: &Cli, env: impl Fn(&str) -> Option<String>) -> anyhow::Result<String> {
    let id = match &cli.node_id {
        Some(id) => id.clone(),
        None => env(&cli.node_id_env).unwrap_or_default(),
    };
    anyhow::ensure!(
        !id.is_empty(),
        "node id is empty: pass --node-id or set ${} (e.g. from the downward API, spec.nodeName)",
        cli.node_id_env
    );
    Ok(id)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse_from(go_style_flags(std::env::args_os().collect()));
    let node_id = node_id(&cli, |name| std::env::var(name).ok())?;
    // RUST_LOG (e.g. `info`, `spiffe_csi_driver=debug`) filters; logs go to stderr, with
    // colours only when stderr is a terminal.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match cli.log_format {
        LogFormat::Console => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let selinux = spiffe_csi_driver::selinux::state(std::path::Path::new(
        spiffe_csi_driver::selinux::SELINUXFS,
    ));
    let agent_label = spiffe_csi_driver::selinux::label(&cli.workload_api_socket_dir);
    tracing::info!(?selinux, agent_dir_label = agent_label.as_deref().unwrap_or("-"), node_mount = ?cli.node_mount, "SELinux");
    if let Some(warning) = spiffe_csi_driver::selinux::check_agent_dir(
        &selinux,
        &cli.workload_api_socket_dir,
        agent_label.as_deref(),
    ) {
        tracing::warn!("{warning}");
    }
    let pods_dir = match &cli.kubelet_pods_dir {
        Some(dir) => {
            PodsDir::configured(dir).with_context(|| format!("--kubelet-pods-dir {dir:?}"))?
        }
        None => PodsDir::Any,
    };
    // First, so that the socket's directory is created 0700 before anything else is
    // put into it.
    let listener = server::bind_private(&cli.csi_socket_path)?;
    let staging_dir = cli.staging_dir.clone().unwrap_or_else(|| {
        cli.csi_socket_path
            .parent()
            .unwrap_or(std::path::Path::new("/"))
            .join("staging")
    });
    let mounter = LinuxMounter::new(&staging_dir)
        .with_context(|| format!("preparing staging dir {staging_dir:?}"))?;
    let identity = IdentityService {
        plugin_name: cli.plugin_name.clone(),
        agent_socket_dir: cli.workload_api_socket_dir.clone(),
        agent_socket_name: cli.agent_socket_name.clone(),
    };
    let node = NodeService::new(
        NodeConfig {
            node_id: node_id.clone(),
            agent_socket_dir: cli.workload_api_socket_dir.clone(),
            agent_socket_name: cli.agent_socket_name.clone(),
            pods_dir,
            agent_socket_wait: cli.agent_socket_wait,
            host_mount: cli.node_mount.into(),
        },
        mounter,
    );
    tracing::info!(
        socket = %cli.csi_socket_path.display(),
        plugin = %cli.plugin_name,
        node = %node_id,
        version = env!("CARGO_PKG_VERSION"),
        "serving CSI Identity and Node"
    );
    server::serve(
        listener,
        identity,
        node,
        spiffe_csi_driver::cli::shutdown_signal(),
    )
    .await?;
    tracing::info!("shut down");
    Ok(())
}

/// Reads the Go driver's single-dash flags (`-workload-api-socket-dir /x`,
/// `-plugin-name=y`) as ours, so its DaemonSet args work unchanged with this image.
fn go_style_flags(args: Vec<OsString>) -> Vec<OsString> {
    let command = Cli::command();
    let longs: Vec<&str> = command
        .get_arguments()
        .filter_map(|a| a.get_long())
        .collect();
    spiffe_csi_driver::cli::go_style_flags(args, &longs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Cli {
        Cli::try_parse_from(go_style_flags(args.iter().map(OsString::from).collect()))
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }

    #[test]
    fn the_go_drivers_daemonset_args_parse() {
        let cli = parse(&[
            "spiffe-csi-driver",
            "-workload-api-socket-dir",
            "/spire-agent-socket",
            "-plugin-name=csi.example.org",
            "-csi-socket-path",
            "/spiffe-csi/csi.sock",
            "-node-id-env",
            "NODE",
        ]);
        assert_eq!(
            cli.workload_api_socket_dir,
            PathBuf::from("/spire-agent-socket")
        );
        assert_eq!(cli.plugin_name, "csi.example.org");
        assert_eq!(cli.csi_socket_path, PathBuf::from("/spiffe-csi/csi.sock"));
        assert_eq!(cli.node_id_env, "NODE");
        assert_eq!(cli.node_id, None);
    }

    /// The container args spiffe/helm-charts-hardened renders for its two DaemonSets (the
    /// default driver and `upstream-spiffe-csi-driver`): no kubelet path, no node id flag.
    #[test]
    fn the_hardened_charts_daemonset_args_parse_with_defaults_for_the_rest() {
        for plugin in ["csi.spiffe.io", "upstream.csi.spiffe.io"] {
            let cli = parse(&[
                "spiffe-csi-driver",
                "-workload-api-socket-dir",
                "/spire-agent-socket",
                "-plugin-name",
                plugin,
                "-csi-socket-path",
                "/spiffe-csi/csi.sock",
            ]);
            assert_eq!(cli.plugin_name, plugin);
            assert_eq!(cli.kubelet_pods_dir, None, "no kubelet path assumed");
            assert_eq!(cli.agent_socket_name, None, "any socket name");
            assert_eq!(cli.node_mount, NodeMount::ReadOnly);
            let env = |name: &str| (name == "MY_NODE_NAME").then(|| "node-a".to_owned());
            assert_eq!(node_id(&cli, env).unwrap(), "node-a");
        }
    }

    #[test]
    fn an_empty_or_missing_node_id_is_refused() {
        let unset = parse(&["spiffe-csi-driver"]);
        let empty_flag = parse(&["spiffe-csi-driver", "--node-id", ""]);
        for (cli, env) in [
            (&unset, None),
            (&unset, Some(String::new())),
            (&empty_flag, Some("node-a".to_owned())),
        ] {
            let err = node_id(cli, |_| env.clone()).unwrap_err();
            assert!(
                err.to_string().contains("node id is empty")
                    && err.to_string().contains("$MY_NODE_NAME"),
                "{err}"
            );
        }
        let flag = parse(&["spiffe-csi-driver", "-node-id=node-b"]);
        assert_eq!(node_id(&flag, |_| None).unwrap(), "node-b");
    }

    #[test]
    fn values_and_unknown_flags_are_left_alone() {
        let cli = parse(&[
            "spiffe-csi-driver",
            "--node-id",
            "node-a",
            "-log-format=json",
        ]);
        assert_eq!(cli.node_id.as_deref(), Some("node-a"));
        assert!(matches!(cli.log_format, LogFormat::Json));
        let unknown = ["spiffe-csi-driver", "-log-level", "debug"];
        let args = go_style_flags(unknown.iter().map(OsString::from).collect());
        assert_eq!(
            args[1], "-log-level",
            "not one of our flags: left for clap to refuse"
        );
        assert!(Cli::try_parse_from(args).is_err());
    }
}
