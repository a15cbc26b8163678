//! Starting a CSI driver binary (ours or the Go reference) in a private mount namespace,
//! talking to it over its Unix socket, and the controller stand-in csi-sanity needs.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context;
use e2e::process::Process;
use spiffe_csi_driver::csi::v1 as csi;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

/// Our driver binary, built if stale. `CARGO_BIN_EXE_*` only exists for binaries of the
/// same package, so ask cargo (a no-op when `cargo test --workspace` already built it)
/// and take it from the target directory this test binary runs from.
pub fn our_driver() -> anyhow::Result<PathBuf> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let status = Command::new(cargo)
        .args([
            "build",
            "--quiet",
            "-p",
            "spiffe-csi-driver",
            "--bin",
            "spiffe-csi-driver",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .status()
        .context("building spiffe-csi-driver")?;
    anyhow::ensure!(status.success(), "cargo build -p spiffe-csi-driver failed");
    // target/debug/deps/csi-<hash> -> target/debug/spiffe-csi-driver
    let exe = std::env::current_exe()?;
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test binary has no target dir")?;
    let path = profile_dir.join("spiffe-csi-driver");
    anyhow::ensure!(path.exists(), "{} missing", path.display());
    Ok(path)
}

/// A driver process; it runs under `unshare --mount --propagation private`, so its
/// mounts stay out of the host's mount table and vanish with it.
pub struct Driver {
    pub process: Process,
    pub socket: PathBuf,
}

impl Driver {
    /// Runs `unshare --mount --propagation private <binary> <args>` and waits until
    /// `socket` accepts connections.
    pub async fn start(
        name: &str,
        binary: &Path,
        args: &[String],
        socket: &Path,
        log: &Path,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private"])
            .arg(binary)
            .args(args)
            .env("MY_NODE_NAME", "e2e-node");
        let mut process = Process::spawn(name, cmd, log)?;
        let socket_path = socket.to_owned();
        e2e::wait::until(
            &format!("{name} CSI socket"),
            Duration::from_secs(30),
            Duration::from_millis(50),
            || {
                let running = process.ensure_running();
                let socket = socket_path.clone();
                async move {
                    running?;
                    Ok(UnixStream::connect(&socket).await.ok().map(|_| ()))
                }
            },
        )
        .await?;
        Ok(Self {
            process,
            socket: socket.to_owned(),
        })
    }

    /// Resident set size from `/proc/<pid>/status`, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.process.id())).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
    }

    /// A gRPC channel on the driver's socket.
    pub async fn channel(&self) -> anyhow::Result<Channel> {
        uds_channel(&self.socket).await
    }
}

/// A tonic channel over a Unix socket.
pub async fn uds_channel(socket: &Path) -> anyhow::Result<Channel> {
    let socket = socket.to_owned();
    Ok(Endpoint::try_from("http://csi.invalid")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let socket = socket.clone();
            async move {
                let stream = UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await?)
}

/// csi-sanity v5.4.0 calls ControllerGetCapabilities before every Node spec and wants a
/// non-nil list, even when the plugin does not offer a controller. This stand-in answers
/// with a single UNKNOWN capability (which matches no real capability), so node-only
/// plugins can be tested; both drivers get the same stand-in. csi-sanity sends Identity
/// calls to the controller endpoint, so those are forwarded to the driver unchanged.
struct NoController;

#[tonic::async_trait]
impl csi::controller_server::Controller for NoController {
    async fn controller_get_capabilities(
        &self,
        _: tonic::Request<csi::ControllerGetCapabilitiesRequest>,
    ) -> Result<tonic::Response<csi::ControllerGetCapabilitiesResponse>, tonic::Status> {
        use csi::controller_service_capability::{Rpc, Type, rpc};
        Ok(tonic::Response::new(
            csi::ControllerGetCapabilitiesResponse {
                capabilities: vec![csi::ControllerServiceCapability {
                    r#type: Some(Type::Rpc(Rpc {
                        r#type: rpc::Type::Unknown.into(),
                    })),
                }],
            },
        ))
    }
}

/// Forwards Identity calls to the driver under test.
struct IdentityProxy(csi::identity_client::IdentityClient<Channel>);

#[tonic::async_trait]
impl csi::identity_server::Identity for IdentityProxy {
    async fn get_plugin_info(
        &self,
        request: tonic::Request<csi::GetPluginInfoRequest>,
    ) -> Result<tonic::Response<csi::GetPluginInfoResponse>, tonic::Status> {
        self.0.clone().get_plugin_info(request.into_inner()).await
    }

    async fn get_plugin_capabilities(
        &self,
        request: tonic::Request<csi::GetPluginCapabilitiesRequest>,
    ) -> Result<tonic::Response<csi::GetPluginCapabilitiesResponse>, tonic::Status> {
        self.0
            .clone()
            .get_plugin_capabilities(request.into_inner())
            .await
    }

    async fn probe(
        &self,
        request: tonic::Request<csi::ProbeRequest>,
    ) -> Result<tonic::Response<csi::ProbeResponse>, tonic::Status> {
        self.0.clone().probe(request.into_inner()).await
    }
}

/// Serves [`NoController`] (and Identity, forwarded to `driver`) on `socket` until the
/// returned task is aborted.
pub async fn spawn_controller_stand_in(
    socket: &Path,
    driver: &Driver,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let listener = tokio::net::UnixListener::bind(socket)?;
    let identity = IdentityProxy(csi::identity_client::IdentityClient::new(
        driver.channel().await?,
    ));
    Ok(tokio::spawn(async move {
        let _ = tonic::transport::Server::builder()
            .add_service(csi::identity_server::IdentityServer::new(identity))
            .add_service(csi::controller_server::ControllerServer::new(NoController))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener))
            .await;
    }))
}
