//! The reference Go implementations, run against the harness's components for
//! migration and differential tests and for side-by-side benchmarks.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use anyhow::Context;

use crate::control_plane::ControlPlane;
use crate::ports::free_port;
use crate::process::Process;
use crate::spire::Spire;
use crate::tools::tool;
use crate::workdir::WorkDir;
use crate::{http, wait};

/// spire-controller-manager (the pinned reference release) reconciling into a [`Spire`]
/// server from a [`ControlPlane`], with its webhook off and leader election off.
pub struct ReferenceControllerManager {
    // Held for their Drop: the process stops, then its directory goes.
    _process: Process,
    _dir: WorkDir,
}

impl ReferenceControllerManager {
    /// The process ID (for its CPU time).
    pub fn pid(&self) -> u32 {
        self._process.id()
    }

    /// Peak resident set size (`VmHWM`), in KiB; `None` once the process is gone.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        crate::process::status_kib(self._process.id(), "VmHWM:")
    }

    /// spire-controller-manager's own CRD files, as shipped in its release.
    pub fn crd_files() -> anyhow::Result<Vec<PathBuf>> {
        let binary = tool("spire-controller-manager")?.canonicalize()?;
        let dir = binary.with_file_name("crds");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .with_context(|| format!("reading {} (run `make tools`)", dir.display()))?
            .map(|entry| entry.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        // Only the resources it reconciles; its config kind is not served by the apiserver.
        files.retain(|p| !p.to_string_lossy().contains("controllermanagerconfigs"));
        files.sort();
        Ok(files)
    }

    /// Starts it for `cluster_name` with the harness's trust domain. `extra_config` is
    /// appended to its ControllerManagerConfig YAML (top-level keys such as
    /// `gcInterval: 1s` or `ignoreNamespaces: [...]`). Returns once it reports ready.
    pub async fn start(
        control_plane: &ControlPlane,
        spire: &Spire,
        cluster_name: &str,
        extra_config: &str,
    ) -> anyhow::Result<Self> {
        let dir = WorkDir::new("scm")?;
        let metrics_addr = format!("127.0.0.1:{}", free_port()?);
        let health_addr = format!("127.0.0.1:{}", free_port()?);
        let config = format!(
            "apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: {metrics_addr}
health:
  healthProbeBindAddress: {health_addr}
leaderElection:
  leaderElect: false
clusterName: {cluster_name}
trustDomain: {trust_domain}
spireServerSocketPath: {socket}
{extra_config}
",
            trust_domain = spire.trust_domain(),
            socket = spire.server_socket().display(),
        );
        let config_file = dir.join("config.yaml");
        std::fs::write(&config_file, config)?;
        let mut command = Command::new(tool("spire-controller-manager")?);
        command
            .arg(format!("--config={}", config_file.display()))
            .env("KUBECONFIG", control_plane.kubeconfig())
            // The webhook needs a serving certificate from SPIRE and an apiserver that can
            // reach it; the reconcilers are what the comparisons need.
            .env("ENABLE_WEBHOOKS", "false");
        let mut process =
            Process::spawn("spire-controller-manager", command, &dir.join("scm.log"))?;

        wait::until(
            "spire-controller-manager /readyz",
            Duration::from_secs(60),
            Duration::from_millis(200),
            || {
                let running = process.ensure_running();
                let health_addr = health_addr.clone();
                async move {
                    running?;
                    Ok(match http::get(&health_addr, "/readyz").await {
                        Ok((200, _)) => Some(()),
                        _ => None,
                    })
                }
            },
        )
        .await?;
        Ok(Self {
            _process: process,
            _dir: dir,
        })
    }
}
