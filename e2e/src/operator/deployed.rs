//! Starting the binary the way a Deployment of spire-controller-manager's chart starts
//! its image: the config file mounted in the working directory under the chart's name,
//! the container args verbatim (no `run` subcommand), only the environment given.

use std::process::Command;

use super::Operator;
use crate::ports::free_port;
use crate::process::Process;
use crate::workdir::WorkDir;

/// What a manifest gives the container.
pub struct Deployment<'a> {
    /// The config file's name in the working directory, e.g. `controller-manager-config.yaml`.
    pub file_name: &'a str,
    /// The file's text, given the addresses to bind (free ports).
    pub config: &'a dyn Fn(&Listen) -> String,
    /// The container args, verbatim, e.g. `["--config=controller-manager-config.yaml"]`.
    pub args: &'a [String],
    /// The container's environment (nothing else is inherited but `PATH`).
    pub env: &'a [(&'a str, &'a str)],
}

/// Where the harness wants the operator's servers: free ports (the webhook's host is
/// the fixture's business: 127.0.0.1, or a routable address for the API server to call).
pub struct Listen {
    /// `metrics.bindAddress`.
    pub metrics: String,
    /// `health.healthProbeBindAddress`.
    pub health: String,
    /// `webhook.port`.
    pub webhook_port: u16,
}

impl Operator {
    /// Starts the binary as `deployment` describes; wait with [`Operator::wait_ready`].
    pub fn spawn_deployed(deployment: &Deployment<'_>) -> anyhow::Result<Self> {
        let binary = Self::binary()?;
        let dir = WorkDir::new("operator")?;
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let health_addr = format!("127.0.0.1:{}", free_port()?);
        let listen = Listen {
            metrics: metrics_addr.clone(),
            health: health_addr.clone(),
            webhook_port: free_port()?,
        };
        let config_path = dir.join(deployment.file_name);
        std::fs::write(&config_path, (deployment.config)(&listen))?;
        let log_path = dir.join("operator.log");
        let mut command = Command::new(&binary);
        command
            .args(deployment.args)
            .current_dir(dir.path())
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(deployment.env.iter().copied());
        let process = Process::spawn("spire-operator", command, &log_path)?;
        let identity = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_default();
        Ok(Self {
            process,
            metrics_addr,
            health_addr,
            webhook_port: listen.webhook_port,
            readiness_path: "/readyz".into(),
            identity,
            config_path,
            log_path,
            dir,
        })
    }
}
