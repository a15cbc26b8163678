//! A CSI driver binary (ours or the Go reference) in a private mount namespace, talked
//! to over its Unix socket the way kubelet talks to it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use spiffe_csi_driver::csi::v1 as csi;
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::process::Process;

/// Our driver binary, built if stale.
pub fn our_driver() -> anyhow::Result<PathBuf> {
    crate::tools::workspace_binary("spiffe-csi-driver", "spiffe-csi-driver")
}

/// A driver process; it runs under `unshare --mount --propagation private`, so its
/// mounts stay out of the host's mount table and vanish with it.
pub struct Driver {
    /// The `unshare` process, which execs the driver (same PID).
    pub process: Process,
    /// The driver's CSI socket.
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
        let process = Process::spawn(name, cmd, log)?;
        Self::wait_for(name, process, socket.to_owned()).await
    }

    /// Waits until `socket` accepts connections, failing early if `process` exits.
    pub async fn wait_for(
        name: &str,
        mut process: Process,
        socket: PathBuf,
    ) -> anyhow::Result<Self> {
        let socket_path = socket.clone();
        crate::wait::until(
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
        Ok(Self { process, socket })
    }

    /// Resident set size from `/proc/<pid>/status`, in KiB.
    pub fn rss_kib(&self) -> Option<u64> {
        crate::process::status_kib(self.process.id(), "VmRSS:")
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

/// kubelet's volume handle for an inline (ephemeral) volume `volume` of pod `pod_uid`
/// (`pkg/volume/csi/csi_mounter.go`: `csi-` + sha256 of the two).
pub fn kubelet_volume_id(pod_uid: &str, volume: &str) -> String {
    use sha2::{Digest, Sha256};
    format!(
        "csi-{}",
        hex::encode(Sha256::digest(format!("{pod_uid}{volume}")))
    )
}

/// A pod's inline CSI volume as kubelet describes it in `NodePublishVolume`.
pub struct PodVolume<'a> {
    /// Pod name.
    pub pod: &'a str,
    /// Pod namespace.
    pub namespace: &'a str,
    /// Pod UID.
    pub uid: &'a str,
    /// The pod's service account.
    pub service_account: &'a str,
    /// The volume's name in the pod spec.
    pub volume: &'a str,
}

impl PodVolume<'_> {
    /// The `NodePublishVolume` request kubelet sends for this volume at `target`: the
    /// kubelet volume handle, a mount capability with the access mode kubelet always sends
    /// for inline volumes (single-node writer), read-only, and the pod info context
    /// (`podInfoOnMount`).
    pub fn publish_request(&self, target: &Path) -> csi::NodePublishVolumeRequest {
        use csi::volume_capability::{AccessMode, AccessType, MountVolume, access_mode::Mode};
        csi::NodePublishVolumeRequest {
            volume_id: kubelet_volume_id(self.uid, self.volume),
            target_path: target.display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter.into(),
                }),
            }),
            readonly: true,
            volume_context: [
                ("csi.storage.k8s.io/pod.name", self.pod),
                ("csi.storage.k8s.io/pod.namespace", self.namespace),
                ("csi.storage.k8s.io/pod.uid", self.uid),
                (
                    "csi.storage.k8s.io/serviceAccount.name",
                    self.service_account,
                ),
                ("csi.storage.k8s.io/ephemeral", "true"),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect(),
            ..Default::default()
        }
    }

    /// The matching `NodeUnpublishVolume` request.
    pub fn unpublish_request(&self, target: &Path) -> csi::NodeUnpublishVolumeRequest {
        csi::NodeUnpublishVolumeRequest {
            volume_id: kubelet_volume_id(self.uid, self.volume),
            target_path: target.display().to_string(),
        }
    }
}
