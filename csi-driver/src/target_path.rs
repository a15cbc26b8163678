//! Target paths: only the shape kubelet uses for an ephemeral inline CSI volume,
//! `<pods dir>/<pod uid>/volumes/kubernetes.io~csi/<volume name>/mount`, and every later
//! step acts on file descriptors opened while validating, so a symlink swapped into the
//! path afterwards cannot redirect a mount, an unmount or a removal.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, Mode, OFlags, ResolveFlags, mkdirat, openat2, unlinkat};

/// The directory kubelet keeps per-volume CSI mount points in, under a pod's directory.
pub const CSI_PLUGIN_DIR: &str = "kubernetes.io~csi";
/// The last component kubelet gives every CSI mount point.
pub const MOUNT_DIR: &str = "mount";

/// Why a target path was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetPathError {
    /// Kubelet always sends absolute paths.
    #[error("target path {0:?} is not absolute")]
    NotAbsolute(String),
    /// `..`, `.` or a doubled slash: kubelet never sends them, and `..` could walk out.
    #[error("target path {0:?} is not in normal form (no '.', '..' or empty components)")]
    NotNormal(String),
    /// Not `<pods dir>/<pod uid>/volumes/kubernetes.io~csi/<volume>/mount`.
    #[error(
        "target path {0:?} is not kubelet's path for an inline CSI volume \
         (<pods dir>/<pod uid>/volumes/kubernetes.io~csi/<volume name>/mount)"
    )]
    NotKubeletShape(String),
    /// The pod uid in the path is not the pod kubelet named in the volume context.
    #[error(
        "target path {path:?} belongs to pod uid {in_path}, but volume_context[\"csi.storage.k8s.io/pod.uid\"] is {in_context}"
    )]
    PodUidMismatch {
        /// The path as sent.
        path: String,
        /// The uid component of the path.
        in_path: String,
        /// The uid kubelet sent.
        in_context: String,
    },
    /// The pods dir of the path is not the one configured with `--kubelet-pods-dir`.
    #[error("target path {path:?} is outside the kubelet pods directory {root:?}")]
    Outside {
        /// The path as sent.
        path: String,
        /// The configured root.
        root: PathBuf,
    },
    /// A component below the pods dir is a symbolic link.
    #[error("target path {0:?} goes through a symbolic link below the pods directory")]
    Symlink(String),
    /// The volume directory could not be opened (kubelet creates it before publishing).
    #[error("volume directory of target path {path:?} is not accessible")]
    Parent {
        /// The path as sent.
        path: String,
        /// Why opening it failed.
        #[source]
        source: io::Error,
    },
}

impl TargetPathError {
    /// True when the pods dir or volume directory does not exist at all.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Parent { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// A target path in kubelet's shape, parsed lexically (nothing opened yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KubeletTarget {
    /// The path as kubelet sent it.
    pub raw: String,
    /// Everything before the pod uid (kubelet's `<root-dir>/pods`).
    pub pods_dir: PathBuf,
    /// The pod uid component.
    pub pod_uid: String,
    /// The volume's name in the pod spec.
    pub volume: String,
}

impl KubeletTarget {
    /// Accepts `/.../pods/<uid>/volumes/kubernetes.io~csi/<volume>/mount` only.
    pub fn parse(raw: &str) -> Result<Self, TargetPathError> {
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(TargetPathError::NotAbsolute(raw.to_owned()));
        }
        // Components::new silently drops "." and repeated slashes; refuse them instead so
        // that what we validate is byte for byte what kubelet sent.
        if raw.contains("//") || raw.ends_with('/') {
            return Err(TargetPathError::NotNormal(raw.to_owned()));
        }
        let mut parts = Vec::new();
        for c in path.components() {
            match c {
                Component::RootDir => {}
                Component::Normal(s) => parts.push(s),
                _ => return Err(TargetPathError::NotNormal(raw.to_owned())),
            }
        }
        if raw.split('/').any(|p| p == ".") {
            return Err(TargetPathError::NotNormal(raw.to_owned()));
        }
        let shape = || TargetPathError::NotKubeletShape(raw.to_owned());
        let n = parts.len();
        // pods, uid, volumes, kubernetes.io~csi, volume, mount
        if n < 6 {
            return Err(shape());
        }
        let tail = &parts[n - 6..];
        let text = |s: &OsStr| s.to_str().map(str::to_owned).ok_or_else(shape);
        if tail[0] != "pods"
            || tail[2] != "volumes"
            || tail[3] != CSI_PLUGIN_DIR
            || tail[5] != MOUNT_DIR
        {
            return Err(shape());
        }
        let pods_dir: PathBuf = std::iter::once(OsStr::new("/"))
            .chain(parts[..n - 5].iter().copied())
            .collect();
        Ok(Self {
            raw: raw.to_owned(),
            pods_dir,
            pod_uid: text(tail[1])?,
            volume: text(tail[4])?,
        })
    }

    /// The handle kubelet gives this inline volume: `csi-` + hex(sha256(uid + volume))
    /// (`makeVolumeHandle` in kubelet's `csi_mounter.go`).
    pub fn kubelet_volume_id(&self) -> String {
        use sha2::{Digest, Sha256};
        let digest = Sha256::digest(format!("{}{}", self.pod_uid, self.volume));
        format!("csi-{}", hex::encode(digest))
    }

    /// Refuses a path whose pod uid differs from the one kubelet put in the context.
    pub fn check_pod_uid(&self, context_uid: Option<&str>) -> Result<(), TargetPathError> {
        match context_uid {
            Some(uid) if uid != self.pod_uid => Err(TargetPathError::PodUidMismatch {
                path: self.raw.clone(),
                in_path: self.pod_uid.clone(),
                in_context: uid.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// Which pods directories target paths may live in.
#[derive(Debug, Clone)]
pub enum PodsDir {
    /// Only this one (`--kubelet-pods-dir`), canonicalized at start.
    Configured(PathBuf),
    /// Any directory named `pods` (kubelet's `--root-dir` varies: k0s, k3s, microk8s).
    Any,
}

impl PodsDir {
    /// Resolves a configured directory; it must exist.
    pub fn configured(dir: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self::Configured(dir.as_ref().canonicalize()?))
    }

    /// Parses `raw`, then opens its volume directory below the pods dir without following
    /// any symlink there.
    pub fn open(&self, raw: &str) -> Result<OpenTarget, TargetPathError> {
        let target = KubeletTarget::parse(raw)?;
        let parent_err = |source| TargetPathError::Parent {
            path: raw.to_owned(),
            source,
        };
        // The pods dir itself may be reached through symlinks (a relocated kubelet root);
        // it is kubelet's, not a pod's.
        let pods = rustix::fs::open(
            &target.pods_dir,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| parent_err(e.into()))?;
        if let Self::Configured(root) = self {
            let actual = fd_path(&pods).map_err(parent_err)?;
            if &actual != root {
                return Err(TargetPathError::Outside {
                    path: raw.to_owned(),
                    root: root.clone(),
                });
            }
        }
        let below = format!(
            "{}/volumes/{CSI_PLUGIN_DIR}/{}",
            target.pod_uid, target.volume
        );
        let parent = open_dir_beneath(&pods, &below).map_err(|e| match e {
            rustix::io::Errno::LOOP => TargetPathError::Symlink(raw.to_owned()),
            e => parent_err(e.into()),
        })?;
        let parent_path = fd_path(&parent).map_err(parent_err)?;
        Ok(OpenTarget {
            target,
            path: parent_path.join(MOUNT_DIR),
            parent,
        })
    }
}

/// A validated target whose volume directory is held open.
#[derive(Debug)]
pub struct OpenTarget {
    /// What the path said.
    pub target: KubeletTarget,
    /// The target as it appears in mountinfo (the volume directory's resolved path plus
    /// `mount`).
    pub path: PathBuf,
    parent: OwnedFd,
}

impl OpenTarget {
    /// Creates the `mount` directory (0750, like kubelet's own directories); an existing
    /// directory is fine, anything else there is an error.
    pub fn create_dir(&self) -> io::Result<()> {
        match mkdirat(&self.parent, MOUNT_DIR, Mode::from_raw_mode(0o750)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(e.into()),
        }
        self.open_dir().map(drop)
    }

    /// Opens `mount` itself (the top mount's root when something is mounted there),
    /// refusing a symlink; NotFound when it does not exist.
    pub fn open_dir(&self) -> io::Result<OwnedFd> {
        open_dir_beneath(&self.parent, MOUNT_DIR).map_err(|e| match e {
            rustix::io::Errno::LOOP => io::Error::other("target is a symbolic link"),
            e => e.into(),
        })
    }

    /// A path naming `mount` through the held volume directory, for syscalls that take
    /// paths (umount): the parent cannot be swapped, and callers refuse to follow the
    /// last component.
    pub fn handle(&self) -> PathBuf {
        PathBuf::from(format!(
            "/proc/self/fd/{}/{MOUNT_DIR}",
            self.parent.as_raw_fd()
        ))
    }

    /// Removes the `mount` directory; NotFound is fine. Something else in its place (a
    /// symlink) is removed itself, never what it points to, so that teardown finishes.
    pub fn remove_dir(&self) -> io::Result<()> {
        match unlinkat(&self.parent, MOUNT_DIR, AtFlags::REMOVEDIR) {
            Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
            Err(rustix::io::Errno::NOTDIR) => {
                match unlinkat(&self.parent, MOUNT_DIR, AtFlags::empty()) {
                    Ok(()) | Err(rustix::io::Errno::NOENT) => Ok(()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Opens directory `relative` (plain names joined by `/`, already validated: no `..`,
/// no empty part) below `dir` as an `O_PATH` descriptor, following no symlink: `LOOP`
/// when a component is one. `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS` does
/// it in one call on Linux 5.6 and later; older kernels (RHEL 8's 4.18) answer `NOSYS`,
/// and then the same is done a component at a time.
fn open_dir_beneath(dir: &OwnedFd, relative: &str) -> Result<OwnedFd, rustix::io::Errno> {
    match openat2(
        dir,
        relative,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS,
    ) {
        Err(rustix::io::Errno::NOSYS) => open_dir_by_components(dir, relative),
        result => result,
    }
}

/// The fallback of [`open_dir_beneath`]: `O_NOFOLLOW` on each component opens a symlink
/// itself, which `O_DIRECTORY` then refuses with `NOTDIR`; a look at what refused tells
/// a symlink (`LOOP`, as `openat2` says it) from a file.
fn open_dir_by_components(dir: &OwnedFd, relative: &str) -> Result<OwnedFd, rustix::io::Errno> {
    let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut current: Option<OwnedFd> = None;
    for name in relative.split('/') {
        if name.is_empty() || name == "." || name == ".." {
            return Err(rustix::io::Errno::INVAL);
        }
        let at = current.as_ref().unwrap_or(dir);
        let next = match rustix::fs::openat(at, name, flags, Mode::empty()) {
            Err(rustix::io::Errno::NOTDIR) => {
                let stat = rustix::fs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW)?;
                return Err(
                    if rustix::fs::FileType::from_raw_mode(stat.st_mode)
                        == rustix::fs::FileType::Symlink
                    {
                        rustix::io::Errno::LOOP
                    } else {
                        rustix::io::Errno::NOTDIR
                    },
                );
            }
            result => result?,
        };
        current = Some(next);
    }
    current.ok_or(rustix::io::Errno::INVAL)
}

/// The path an open file descriptor refers to, as the kernel resolved it.
pub fn fd_path(fd: &OwnedFd) -> io::Result<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// The magic-link path of an open file descriptor, to hand to path-based syscalls.
pub fn fd_handle(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_pre_openat2_walk_refuses_symlinks_and_files_and_opens_directories() {
        let root = tempfile::tempdir().unwrap();
        let base = root.path();
        std::fs::create_dir_all(base.join("uid/volumes/kubernetes.io~csi/vol")).unwrap();
        std::fs::create_dir_all(base.join("elsewhere/vol")).unwrap();
        std::os::unix::fs::symlink(base.join("elsewhere"), base.join("uid/volumes/link")).unwrap();
        std::fs::write(base.join("uid/volumes/file"), "").unwrap();
        let dir = rustix::fs::open(base, OFlags::PATH | OFlags::DIRECTORY, Mode::empty()).unwrap();
        let opened =
            super::open_dir_by_components(&dir, "uid/volumes/kubernetes.io~csi/vol").unwrap();
        assert_eq!(
            super::fd_path(&opened).unwrap(),
            base.canonicalize()
                .unwrap()
                .join("uid/volumes/kubernetes.io~csi/vol")
        );
        for (relative, errno) in [
            ("uid/volumes/link/vol", rustix::io::Errno::LOOP),
            ("uid/volumes/file", rustix::io::Errno::NOTDIR),
            ("uid/volumes/missing", rustix::io::Errno::NOENT),
            ("uid/../uid", rustix::io::Errno::INVAL),
        ] {
            assert_eq!(
                super::open_dir_by_components(&dir, relative).unwrap_err(),
                errno,
                "{relative}"
            );
            // The one-call form says the same where the kernel has it.
            if relative != "uid/../uid" {
                assert_eq!(
                    super::open_dir_beneath(&dir, relative).unwrap_err(),
                    errno,
                    "{relative}"
                );
            }
        }
    }

    use super::*;

    const UID: &str = "6f3c2a9e-1b7d-4e55-9a0c-2d8f4b1e7c31";

    #[test]
    fn only_kubelets_inline_volume_shape_parses() {
        let ok = format!("/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~csi/spiffe/mount");
        let t = KubeletTarget::parse(&ok).unwrap();
        assert_eq!(t.pods_dir, PathBuf::from("/var/lib/kubelet/pods"));
        assert_eq!(t.pod_uid, UID);
        assert_eq!(t.volume, "spiffe");
        let custom = format!("/var/data/k0s/kubelet/pods/{UID}/volumes/kubernetes.io~csi/v/mount");
        assert_eq!(
            KubeletTarget::parse(&custom).unwrap().pods_dir,
            PathBuf::from("/var/data/k0s/kubelet/pods")
        );
        for (bad, want) in [
            (
                "relative/pods/u/volumes/kubernetes.io~csi/v/mount",
                "not absolute",
            ),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~secret/v/mount",
                "kubelet's path",
            ),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v",
                "kubelet's path",
            ),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/data",
                "kubelet's path",
            ),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount/x",
                "kubelet's path",
            ),
            (
                "/var/lib/kubelet/pods/u/plugins/kubernetes.io~csi/v/mount",
                "kubelet's path",
            ),
            (
                "/var/lib/kubelet/other/u/volumes/kubernetes.io~csi/v/mount",
                "kubelet's path",
            ),
            ("/pods/u/volumes/kubernetes.io~csi/v/mount", "ok"),
            ("/tmp/mount", "kubelet's path"),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/../../../x/volumes/kubernetes.io~csi/v/mount",
                "normal form",
            ),
            (
                "/var/lib/kubelet/pods/u/./volumes/kubernetes.io~csi/v/mount",
                "normal form",
            ),
            (
                "/var/lib/kubelet/pods//u/volumes/kubernetes.io~csi/v/mount",
                "normal form",
            ),
            (
                "/var/lib/kubelet/pods/u/volumes/kubernetes.io~csi/v/mount/",
                "normal form",
            ),
            ("/", "normal form"),
        ] {
            match KubeletTarget::parse(bad) {
                Ok(_) => assert_eq!(want, "ok", "{bad} accepted"),
                Err(e) => assert!(e.to_string().contains(want), "{bad}: {e}"),
            }
        }
    }

    #[test]
    fn volume_id_is_kubelets_handle_and_pod_uid_must_match_the_context() {
        let t = KubeletTarget::parse(&format!(
            "/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~csi/spiffe-workload-api/mount"
        ))
        .unwrap();
        // sha256("6f3c...7c31" + "spiffe-workload-api"), as kubelet computes it.
        assert_eq!(t.kubelet_volume_id().len(), 4 + 64);
        assert!(t.kubelet_volume_id().starts_with("csi-"));
        t.check_pod_uid(None).unwrap();
        t.check_pod_uid(Some(UID)).unwrap();
        let err = t.check_pod_uid(Some("other-uid")).unwrap_err();
        assert!(err.to_string().contains("other-uid"), "{err}");
    }

    #[test]
    fn open_refuses_symlinks_below_the_pods_dir_and_other_roots() {
        let dir = tempfile::tempdir().unwrap();
        let pods = dir.path().join("pods");
        let vol = |uid: &str| pods.join(format!("{uid}/volumes/kubernetes.io~csi/v"));
        std::fs::create_dir_all(vol("a")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere/volumes/kubernetes.io~csi/v")).unwrap();
        // A pod dir that is a symlink to somewhere else, and a volume dir that is one.
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), pods.join("b")).unwrap();
        std::fs::create_dir_all(pods.join("c/volumes/kubernetes.io~csi")).unwrap();
        std::os::unix::fs::symlink(vol("a"), vol("c")).unwrap();
        let other_pods = dir.path().join("other/pods");
        std::fs::create_dir_all(other_pods.join("a/volumes/kubernetes.io~csi/v")).unwrap();
        let target = |pods: &Path, uid: &str| {
            format!("{}/{uid}/volumes/kubernetes.io~csi/v/mount", pods.display())
        };
        let configured = PodsDir::configured(&pods).unwrap();
        let canonical_pods = pods.canonicalize().unwrap();
        let opened = configured.open(&target(&pods, "a")).unwrap();
        assert_eq!(
            opened.path,
            canonical_pods.join("a/volumes/kubernetes.io~csi/v/mount")
        );
        for (pods_dir, uid, want) in [
            (&pods, "b", "symbolic link"),
            (&pods, "c", "symbolic link"),
            (&pods, "missing", "not accessible"),
            (&other_pods, "a", "outside the kubelet pods directory"),
        ] {
            let err = configured.open(&target(pods_dir, uid)).unwrap_err();
            assert!(err.to_string().contains(want), "{uid}: {err}");
        }
        assert!(
            configured
                .open(&target(&pods, "missing"))
                .unwrap_err()
                .is_missing()
        );
        // Without a configured root, any pods dir in kubelet's shape, still no symlinks.
        PodsDir::Any.open(&target(&other_pods, "a")).unwrap();
        let err = PodsDir::Any.open(&target(&pods, "b")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
    }

    #[test]
    fn a_symlink_at_the_mount_component_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let vol = dir.path().join("pods/a/volumes/kubernetes.io~csi/v");
        std::fs::create_dir_all(&vol).unwrap();
        std::fs::create_dir_all(dir.path().join("secret")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("secret"), vol.join("mount")).unwrap();
        let opened = PodsDir::Any
            .open(&format!("{}/mount", vol.display()))
            .unwrap();
        let err = opened.create_dir().unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        // remove_dir unlinks the link itself, never what it points to.
        std::fs::write(dir.path().join("secret/keep"), "x").unwrap();
        opened.remove_dir().unwrap();
        assert!(
            std::fs::symlink_metadata(vol.join("mount")).is_err(),
            "link left"
        );
        assert!(dir.path().join("secret/keep").is_file());
    }
}
