//! Starting the operator in static mode (`staticManifestPath`): no Kubernetes API at
//! all. The environment is emptied (no `KUBECONFIG`, no in-cluster variables, a `HOME`
//! without `~/.kube`), so a start that tried to reach an API server would fail.

use std::path::Path;
use std::process::Command;

use anyhow::bail;
use serde_norway::Value;

use super::{Operator, config_yaml};
use crate::ports::free_port;
use crate::process::Process;
use crate::spire::Spire;
use crate::workdir::WorkDir;

impl Operator {
    /// Starts `spire-operator run` in static mode against `spire`, reading the manifests
    /// in `manifests`, with `extra_config` merged as in [`Operator::start`] and `args`
    /// added to the command line; returns once its readiness endpoint answers 200.
    pub async fn start_static(
        spire: &Spire,
        manifests: &Path,
        extra_config: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        Self::until_serving(|| async { Self::spawn_static(spire, manifests, extra_config, args) })
            .await
    }

    fn spawn_static(
        spire: &Spire,
        manifests: &Path,
        extra_config: &str,
        args: &[&str],
    ) -> anyhow::Result<Self> {
        let binary = Self::binary()?;
        let dir = WorkDir::new("operator-static")?;
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let health_addr = format!("127.0.0.1:{}", free_port()?);
        let webhook_port = free_port()?;
        let mut config = config_yaml(
            &metrics_addr,
            &health_addr,
            webhook_port,
            "static",
            spire.trust_domain(),
            spire.server_socket(),
            extra_config,
        )?;
        let Value::Mapping(map) = &mut config else {
            bail!("the generated config is not a mapping")
        };
        map.insert(
            "staticManifestPath".into(),
            manifests.to_string_lossy().as_ref().into(),
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, serde_norway::to_string(&config)?)?;
        let log_path = dir.join("operator.log");
        let home = dir.join("home");
        std::fs::create_dir_all(&home)?;
        let mut command = Command::new(&binary);
        command
            .arg("run")
            .arg("--config")
            .arg(&config_path)
            .args(args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("RUST_BACKTRACE", "1")
            .env(super::ENTRY_RESYNC_INTERVAL, "0s");
        let process = Process::spawn("spire-operator", command, &log_path)?;
        Ok(Self {
            process,
            metrics_addr,
            health_addr,
            // Configured, and never served in static mode.
            webhook_port,
            readiness_path: "/readyz".into(),
            identity: "static".into(),
            config_path,
            log_path,
            dir,
        })
    }
}
