//! spiffe-csi-driver command line: flags, logging, wiring.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use spiffe_csi_driver::identity::IdentityService;
use spiffe_csi_driver::mount::LinuxMounter;
use spiffe_csi_driver::node::{NodeConfig, NodeService};
use spiffe_csi_driver::target_path::KubeletRoot;
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
    /// File name of the agent socket inside that directory (Probe, readiness wait).
    #[arg(long, env, default_value = "spire-agent.sock")]
    agent_socket_name: String,
    /// CSI plugin name (several instances need distinct names).
    #[arg(long, env, default_value = spiffe_csi_driver::DEFAULT_PLUGIN_NAME)]
    plugin_name: String,
    /// Node id returned by NodeGetInfo (the Kubernetes node name).
    #[arg(long, env = "MY_NODE_NAME")]
    node_id: String,
    /// Kubelet's pods directory; target paths outside it are refused.
    #[arg(long, env, default_value = "/var/lib/kubelet/pods")]
    kubelet_pods_dir: PathBuf,
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    match cli.log_format {
        LogFormat::Console => logs.init(),
        LogFormat::Json => logs.json().init(),
    }

    let kubelet_root = KubeletRoot::new(&cli.kubelet_pods_dir)
        .with_context(|| format!("kubelet pods dir {:?}", cli.kubelet_pods_dir))?;
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
            node_id: cli.node_id.clone(),
            agent_socket_dir: cli.workload_api_socket_dir.clone(),
            agent_socket_name: cli.agent_socket_name.clone(),
            kubelet_root,
            agent_socket_wait: cli.agent_socket_wait,
        },
        mounter,
    );
    tracing::info!(
        socket = %cli.csi_socket_path.display(),
        plugin = %cli.plugin_name,
        node = %cli.node_id,
        version = env!("CARGO_PKG_VERSION"),
        "serving CSI Identity and Node"
    );
    server::serve(listener, identity, node, shutdown_signal()).await?;
    tracing::info!("shut down");
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; stop with SIGKILL");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
}
