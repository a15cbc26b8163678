//! A CSI DaemonSet's driver container, reproduced on a simulated node: the container's
//! args, env and hostPath volume mounts (with their `readOnly` and `mountPropagation`),
//! in a private mount namespace, chrooted into a scratch root filesystem.
//!
//! Layout, all inside one private mount namespace (nothing reaches the real host):
//! - `<work>/node` stands for the node's `/`: a hostPath `/var/lib/kubelet/pods` is
//!   `<work>/node/var/lib/kubelet/pods`. It is made a shared mount, as `/` is on systemd
//!   hosts, so `Bidirectional` propagation has a peer to reach.
//! - `<work>/rootfs` is the container's root: a tmpfs with the system directories bound
//!   in (for the binary's libraries), `/proc`, the driver binary at `/spiffe-csi-driver`,
//!   and each volume mount bound from the node path to the container path; the tmpfs is
//!   then made read-only (`readOnlyRootFilesystem: true`).
//!
//! kubelet sends target paths in its own (the node's) namespace; the charts mount the
//! pods directory at the same path in the container, so the harness sends the container
//! path, and the node sees the mount at `<work>/node/<path>` through propagation.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::csi::Driver;
use crate::process::Process;

/// `volumeMounts[].mountPropagation`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Propagation {
    /// Unset: the container's copy is private.
    None,
    /// Mounts made on the node below the path reach the container.
    HostToContainer,
    /// Both ways: the container's mounts below the path reach the node.
    Bidirectional,
}

/// One hostPath volume and its mount in the driver container.
#[derive(Debug, Clone)]
pub struct HostPathMount {
    /// `volumes[].hostPath.path`, a path on the node.
    pub host: String,
    /// `volumeMounts[].mountPath`.
    pub container: String,
    /// `volumeMounts[].readOnly`.
    pub read_only: bool,
    /// `volumeMounts[].mountPropagation`.
    pub propagation: Propagation,
}

/// The driver container of a DaemonSet, as a chart renders it.
#[derive(Debug, Clone)]
pub struct ContainerShape {
    /// Which chart and values produced it, for messages.
    pub name: &'static str,
    /// `args`.
    pub args: Vec<String>,
    /// `env` (values resolved: `MY_NODE_NAME` from `spec.nodeName`).
    pub env: Vec<(String, String)>,
    /// `volumeMounts` joined with their hostPath volumes.
    pub mounts: Vec<HostPathMount>,
}

/// A simulated node: the node's filesystem under `<dir>/node`.
pub struct Node {
    dir: PathBuf,
}

impl Node {
    /// A node rooted at `<dir>/node`.
    pub fn new(dir: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dir.join("node"))?;
        std::fs::create_dir_all(dir.join("rootfs"))?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    /// Where node path `path` lives in this namespace.
    pub fn path(&self, path: &str) -> PathBuf {
        self.dir.join("node").join(path.trim_start_matches('/'))
    }

    /// Starts `binary` as the container `shape` describes; waits for its CSI socket,
    /// `csi_socket` in the container's view. Every hostPath must exist on the node
    /// (create `DirectoryOrCreate` ones first, as kubelet would).
    pub async fn start(
        &self,
        shape: &ContainerShape,
        binary: &Path,
        csi_socket: &str,
        log: &Path,
    ) -> anyhow::Result<Driver> {
        let node = self.dir.join("node");
        let rootfs = self.dir.join("rootfs");
        let mut script = String::from("set -e\n");
        let mut line = |l: String| {
            script.push_str(&l);
            script.push('\n');
        };
        line(format!("mount --bind {} {}", q(&node), q(&node)));
        line(format!("mount --make-rshared {}", q(&node)));
        line(format!("mount -t tmpfs rootfs {}", q(&rootfs)));
        for sys in ["usr", "lib", "lib64", "bin", "sbin", "etc"] {
            let host = Path::new("/").join(sys);
            let inside = rootfs.join(sys);
            if host.is_symlink() {
                let to = std::fs::read_link(&host)?;
                line(format!("ln -s {} {}", q(&to), q(&inside)));
            } else if host.is_dir() {
                line(format!("mkdir -p {}", q(&inside)));
                line(format!("mount --rbind {} {}", q(&host), q(&inside)));
            }
        }
        line(format!("mkdir -p {}", q(&rootfs.join("proc"))));
        line(format!("mount -t proc proc {}", q(&rootfs.join("proc"))));
        line(format!("touch {}", q(&rootfs.join("spiffe-csi-driver"))));
        line(format!(
            "mount --bind {} {}",
            q(binary),
            q(&rootfs.join("spiffe-csi-driver"))
        ));
        for m in &shape.mounts {
            let host = self.path(&m.host);
            anyhow::ensure!(
                host.is_dir(),
                "{}: hostPath {} does not exist on the node",
                shape.name,
                m.host
            );
            let inside = rootfs.join(m.container.trim_start_matches('/'));
            line(format!("mkdir -p {}", q(&inside)));
            line(format!("mount --bind {} {}", q(&host), q(&inside)));
            line(match m.propagation {
                Propagation::None => format!("mount --make-rprivate {}", q(&inside)),
                Propagation::HostToContainer => format!("mount --make-rslave {}", q(&inside)),
                Propagation::Bidirectional => format!("mount --make-rshared {}", q(&inside)),
            });
            if m.read_only {
                line(format!("mount -o remount,bind,ro {}", q(&inside)));
            }
        }
        // Both charts set readOnlyRootFilesystem: true.
        line(format!("mount -o remount,ro {}", q(&rootfs)));
        line(format!(
            "exec chroot {} /spiffe-csi-driver \"$@\"",
            q(&rootfs)
        ));
        let mut cmd = Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(&script)
            .arg("sh")
            .args(&shape.args)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .envs(shape.env.iter().map(|(k, v)| (k, v)));
        let process = Process::spawn(shape.name, cmd, log)?;
        // The container's path through the process's root: short enough for sun_path.
        let socket = PathBuf::from(format!(
            "/proc/{}/root/{}",
            process.id(),
            csi_socket.trim_start_matches('/')
        ));
        Driver::wait_for(shape.name, process, socket).await
    }

    /// Runs `program args` in the driver's mount namespace (with its root reset to the
    /// namespace's, so node paths work) and returns whether it succeeded.
    pub fn in_namespace(driver: &Driver, program: &str, args: &[&str]) -> anyhow::Result<bool> {
        Ok(Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", driver.process.id()))
            .arg(program)
            .args(args)
            .stderr(std::process::Stdio::null())
            .status()?
            .success())
    }
}

/// Single-quotes a path for sh.
fn q(path: &Path) -> String {
    format!("'{}'", path.display().to_string().replace('\'', r"'\''"))
}
