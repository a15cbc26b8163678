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
    /// directory (device and inode), and it has not been removed.
    fn same_directory(&self, target: &OpenTarget, source: &Path) -> io::Result<bool>;
    /// Bind-mounts `source` onto `target` with `mode`'s flags in effect from the moment
    /// the mount appears, in this namespace and in every peer it propagates to.
    fn bind(&self, source: &Path, target: &OpenTarget, mode: HostMount) -> io::Result<()>;
    /// Removes the top mount on `target`.
    fn unmount(&self, target: &OpenTarget) -> io::Result<()>;
    /// The id (as in mountinfo) and read-only flag of the mount on top of `path`, when
    /// the kernel can tell without reading mountinfo; `None` otherwise.
    fn top_mount(&self, path: &Path) -> Option<(u64, bool)>;
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
    fn top_mount(&self, path: &Path) -> Option<(u64, bool)> {
        (**self).top_mount(path)
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
///
/// The staged mount is kept and reused by every publish while it still shows the
/// source directory (same device and inode), so a publish is one bind; unmounting a
/// staged mount per publish cost a kernel RCU grace period (milliseconds) each time.
#[derive(Debug)]
pub struct LinuxMounter {
    staging_dir: PathBuf,
    next: AtomicU64,
    stage: std::sync::Mutex<Option<Stage>>,
}

/// The read-only (or read-write) bind of the source kept in the staging directory.
#[derive(Debug)]
struct Stage {
    dir: PathBuf,
    mode: HostMount,
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
            stage: std::sync::Mutex::new(None),
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

    /// The staged bind of `source` with `mode`'s flags: the kept one while it still
    /// shows `source` in this mount namespace, else a new one (the old one detached).
    fn staged(&self, source: &Path, mode: HostMount) -> io::Result<PathBuf> {
        let mut stage = self.stage.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(kept) = stage.as_ref()
            && kept.mode == mode
            && same_inode(&kept.dir, source)?
        {
            return Ok(kept.dir.clone());
        }
        if let Some(old) = stage.take() {
            discard_stage(&old.dir)?;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.staging_dir.join(format!("{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        if let Err(e) =
            mount_bind(source, &dir).and_then(|()| mount_remount(&dir, mode.flags(), ""))
        {
            discard_stage(&dir)?;
            return Err(e.into());
        }
        *stage = Some(Stage {
            dir: dir.clone(),
            mode,
        });
        Ok(dir)
    }
}

/// Whether `a` and `b` are the same directory now (device and inode, through mounts),
/// and it still exists (a removed directory has no links left, though a mount of it
/// keeps it reachable).
fn same_inode(a: &Path, b: &Path) -> io::Result<bool> {
    let (a, b) = (std::fs::metadata(a)?, std::fs::metadata(b)?);
    Ok(a.dev() == b.dev() && a.ino() == b.ino() && a.nlink() > 0)
}

/// Detaches whatever is mounted on a staging directory and removes it.
fn discard_stage(dir: &Path) -> io::Result<()> {
    match unmount(dir, UnmountFlags::DETACH) {
        // Not (or no longer) a mount point in this namespace.
        Ok(()) | Err(rustix::io::Errno::INVAL) => {}
        Err(e) => return Err(e.into()),
    }
    match std::fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Whether `path` is the root of a mount, from `statx` alone: `None` when the kernel
/// cannot tell (before Linux 5.8) or the path cannot be examined, so that the caller
/// reads mountinfo instead.
fn is_mount_root(path: &Path) -> Option<bool> {
    use rustix::fs::{AtFlags, CWD, StatxAttributes, StatxFlags};
    let st = rustix::fs::statx(
        CWD,
        path,
        AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::empty(),
    )
    .ok()?;
    st.stx_attributes_mask
        .contains(StatxAttributes::MOUNT_ROOT)
        .then(|| st.stx_attributes.contains(StatxAttributes::MOUNT_ROOT))
}

impl Mounter for LinuxMounter {
    fn mounts_at(&self, path: &Path) -> io::Result<Vec<MountEntry>> {
        // mountinfo grows with every pod on the node and is read whole: skip it when
        // statx already says nothing is mounted here (a first publish, an unpublish
        // done, the agent directory under our chart's layout).
        if is_mount_root(path) == Some(false) {
            return Ok(Vec::new());
        }
        let text = std::fs::read_to_string(mountinfo::THREAD_MOUNTINFO)?;
        Ok(mountinfo::mounts_at_in(&text, path))
    }

    fn same_directory(&self, target: &OpenTarget, source: &Path) -> io::Result<bool> {
        let a = rustix::fs::fstat(target.open_dir()?)?;
        let b = std::fs::metadata(source)?;
        // A removed directory (no links) is never the live source, even when the
        // driver's own view of the source is the same dead mount.
        Ok(a.st_dev == b.dev() && a.st_ino == b.ino() && a.st_nlink > 0)
    }

    fn bind(&self, source: &Path, target: &OpenTarget, mode: HostMount) -> io::Result<()> {
        // Mount onto the directory that was validated, by its descriptor: a symlink put
        // at the path after validation cannot redirect the bind.
        let target_fd = target.open_dir()?;
        let stage = self.staged(source, mode)?;
        mount_bind(&stage, fd_handle(&target_fd))?;
        Ok(())
    }

    fn top_mount(&self, path: &Path) -> Option<(u64, bool)> {
        use rustix::fs::{AtFlags, CWD, StatVfsMountFlags, StatxFlags};
        let st = rustix::fs::statx(
            CWD,
            path,
            AtFlags::NO_AUTOMOUNT | AtFlags::SYMLINK_NOFOLLOW,
            StatxFlags::MNT_ID,
        )
        .ok()?;
        if !StatxFlags::from_bits_retain(st.stx_mask).contains(StatxFlags::MNT_ID) {
            return None;
        }
        let read_only = rustix::fs::statvfs(path)
            .ok()?
            .f_flag
            .contains(StatVfsMountFlags::RDONLY);
        Some((st.stx_mnt_id, read_only))
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

        fn same_directory(&self, target: &OpenTarget, _source: &Path) -> io::Result<bool> {
            let mounts = self.lock();
            let top = mounts.get(&target.path).and_then(|m| m.last());
            Ok(!top.is_some_and(MountEntry::is_deleted))
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

        fn top_mount(&self, path: &Path) -> Option<(u64, bool)> {
            let mounts = self.lock();
            let top = mounts.get(path)?.last()?;
            Some((top.mount_id, top.read_only))
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
