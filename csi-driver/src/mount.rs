//! Mount operations behind a trait, so node logic is unit-tested with a fake and the
//! real implementation is tested with real mounts in a private mount namespace.

use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::mount::{
    MountFlags, MountPropagationFlags, UnmountFlags, mount_bind, mount_change, mount_remount,
    unmount,
};

use crate::mountinfo::{self, MountEntry};
use crate::target_path::{OpenTarget, fd_handle};

/// How the agent's directory is mounted on the node (`--node-mount`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMount {
    /// Read-only on the node and in every propagated copy (the default).
    ReadOnly,
    /// Read-write on the node, like the Go driver; containers still get it read-only
    /// because the pod spec says `readOnly: true`.
    ReadWrite,
}

impl HostMount {
    /// Whether the mount carries `ro`.
    pub fn read_only(self) -> bool {
        self == Self::ReadOnly
    }

    /// The per-mount flags applied to the staged bind before it reaches the target.
    pub fn flags(self) -> MountFlags {
        let base = MountFlags::BIND | MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
        match self {
            Self::ReadOnly => base | MountFlags::RDONLY,
            Self::ReadWrite => base,
        }
    }
}

/// What the node service needs from the kernel.
pub trait Mounter: Send + Sync + 'static {
    /// The mounts stacked on `path`, bottom first; empty when it is not a mount point.
    fn mounts_at(&self, path: &Path) -> io::Result<Vec<MountEntry>>;
    /// Whether `target` (as it is now, through any mount on it) and `source` are the same
    /// directory (device and inode).
    fn same_directory(&self, target: &OpenTarget, source: &Path) -> io::Result<bool>;
    /// Bind-mounts `source` onto `target` with `mode`'s flags in effect from the moment
    /// the mount appears, in this namespace and in every peer it propagates to.
    fn bind(&self, source: &Path, target: &OpenTarget, mode: HostMount) -> io::Result<()>;
    /// Removes the top mount on `target`.
    fn unmount(&self, target: &OpenTarget) -> io::Result<()>;
}

impl<M: Mounter> Mounter for std::sync::Arc<M> {
    fn mounts_at(&self, path: &Path) -> io::Result<Vec<MountEntry>> {
        (**self).mounts_at(path)
    }
    fn same_directory(&self, target: &OpenTarget, source: &Path) -> io::Result<bool> {
        (**self).same_directory(target, source)
    }
    fn bind(&self, source: &Path, target: &OpenTarget, mode: HostMount) -> io::Result<()> {
        (**self).bind(source, target, mode)
    }
    fn unmount(&self, target: &OpenTarget) -> io::Result<()> {
        (**self).unmount(target)
    }
}

/// The real mounter (rustix syscalls, `/proc/thread-self/mountinfo`).
///
/// `mount(MS_BIND|MS_RDONLY)` ignores the read-only flag, and the usual fix, a second
/// `MS_REMOUNT|MS_BIND|MS_RDONLY`, only changes the mount in our namespace: when the
/// target sits under a shared mount (kubelet's pods dir with Bidirectional propagation)
/// the copies already propagated to peers stay writable. So the source is first bound
/// into a private staging directory and made read-only there, and only that read-only
/// mount is bound onto the target: a bind copies the per-mount flags, and so do the
/// propagated copies.
#[derive(Debug)]
pub struct LinuxMounter {
    staging_dir: PathBuf,
    next: AtomicU64,
}

impl LinuxMounter {
    /// Prepares `staging_dir`: creates it and makes it a private mount point (a bind onto
    /// itself), unless it already is a mount point from an earlier start.
    pub fn new(staging_dir: impl Into<PathBuf>) -> io::Result<Self> {
        let staging_dir = staging_dir.into();
        std::fs::create_dir_all(&staging_dir)?;
        let staging_dir = staging_dir.canonicalize()?;
        let mounter = Self {
            staging_dir,
            next: AtomicU64::new(0),
        };
        if mounter.mounts_at(&mounter.staging_dir)?.is_empty() {
            mount_bind(&mounter.staging_dir, &mounter.staging_dir)?;
        }
        mount_change(&mounter.staging_dir, MountPropagationFlags::PRIVATE)?;
        Ok(mounter)
    }

    /// The private directory used for staging read-only binds.
    pub fn staging_dir(&self) -> &Path {
        &self.staging_dir
    }
}

impl Mounter for LinuxMounter {
    fn mounts_at(&self, path: &Path) -> io::Result<Vec<MountEntry>> {
        let text = std::fs::read_to_string(mountinfo::THREAD_MOUNTINFO)?;
        Ok(mountinfo::mounts_at_in(&text, path))
    }

    fn same_directory(&self, target: &OpenTarget, source: &Path) -> io::Result<bool> {
        let a = rustix::fs::fstat(target.open_dir()?)?;
        let b = std::fs::metadata(source)?;
        Ok(a.st_dev == b.dev() && a.st_ino == b.ino())
    }

    fn bind(&self, source: &Path, target: &OpenTarget, mode: HostMount) -> io::Result<()> {
        // Mount onto the directory that was validated, by its descriptor: a symlink put
        // at the path after validation cannot redirect the bind.
        let target_fd = target.open_dir()?;
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let stage = self.staging_dir.join(format!("{}-{n}", std::process::id()));
        std::fs::create_dir_all(&stage)?;
        let result = stage_and_bind(source, &stage, &fd_handle(&target_fd), mode);
        // Detach: nothing should hold the staging mount, and it must never linger.
        if !self.mounts_at(&stage)?.is_empty() {
            unmount(&stage, UnmountFlags::DETACH)?;
        }
        std::fs::remove_dir(&stage)?;
        result
    }

    fn unmount(&self, target: &OpenTarget) -> io::Result<()> {
        // Through the held volume directory, and NOFOLLOW for the last component: the
        // target lives in a directory pods can influence.
        let handle = target.handle();
        match unmount(&handle, UnmountFlags::NOFOLLOW) {
            Err(rustix::io::Errno::BUSY) => {
                unmount(&handle, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)?
            }
            other => other?,
        }
        Ok(())
    }
}

fn stage_and_bind(source: &Path, stage: &Path, target: &Path, mode: HostMount) -> io::Result<()> {
    mount_bind(source, stage)?;
    mount_remount(stage, mode.flags(), "")?;
    mount_bind(stage, target)?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory mounter: a "mount" is a record, and `same_directory` is true unless
    //! a test marked the mount stale.
    use super::*;
    use std::collections::HashMap;
    use std::sync::Mutex;

    #[derive(Debug, Default)]
    pub struct FakeMounter {
        pub mounts: Mutex<HashMap<PathBuf, Vec<MountEntry>>>,
        pub binds: AtomicU64,
        pub fail_bind: std::sync::atomic::AtomicBool,
    }

    impl FakeMounter {
        pub fn count(&self, target: &Path) -> usize {
            self.lock().get(target).map_or(0, Vec::len)
        }

        /// Makes the top mount on `target` look like its source dir was deleted.
        pub fn mark_deleted(&self, target: &Path) {
            if let Some(top) = self.lock().get_mut(target).and_then(|v| v.last_mut()) {
                top.root.push_str("//deleted");
            }
        }

        fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<PathBuf, Vec<MountEntry>>> {
            self.mounts.lock().unwrap_or_else(|e| e.into_inner())
        }
    }

    impl Mounter for FakeMounter {
        fn mounts_at(&self, path: &Path) -> io::Result<Vec<MountEntry>> {
            Ok(self.lock().get(path).cloned().unwrap_or_default())
        }

        fn same_directory(&self, _target: &OpenTarget, _source: &Path) -> io::Result<bool> {
            Ok(true)
        }

        fn bind(&self, source: &Path, target: &OpenTarget, mode: HostMount) -> io::Result<()> {
            let target = &target.path;
            if self.fail_bind.load(Ordering::Relaxed) {
                return Err(io::Error::from_raw_os_error(1));
            }
            let id = self.binds.fetch_add(1, Ordering::Relaxed);
            self.lock()
                .entry(target.to_owned())
                .or_default()
                .push(MountEntry {
                    mount_id: id,
                    root: source.display().to_string(),
                    mount_point: target.to_owned(),
                    read_only: mode.read_only(),
                });
            Ok(())
        }

        fn unmount(&self, target: &OpenTarget) -> io::Result<()> {
            let mut mounts = self.lock();
            match mounts.get_mut(&target.path).and_then(Vec::pop) {
                Some(_) => Ok(()),
                None => Err(io::Error::from_raw_os_error(22)),
            }
        }
    }
}
