//! What a node changes on the host, and undoes: mount propagation and cgroups.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;

use crate::workdir::WorkDir;

/// Sets up mount propagation as on a real node, before containerd's mount namespace
/// copies the host's mounts: the node's directory becomes a private bind mount (so the
/// rootfs mounts containerd makes under it never reach the host, even where `/` is
/// shared), and the kubelet's root directory and the node's `run/` inside it shared
/// ones, which containerd's copy joins as a peer. Then the volumes the kubelet mounts there (tmpfs for secrets,
/// downward API, projected tokens) reach containers, and mounts a container makes under
/// a `Bidirectional` volume (a CSI driver's) reach the host. (The kubelet would make its
/// root shared itself, but only after containerd's namespace exists.)
pub(super) fn set_up_propagation(dir: &WorkDir) -> anyhow::Result<()> {
    use rustix::mount::{MountPropagationFlags, mount_bind, mount_change};
    let bind = |path: &Path, propagation: MountPropagationFlags| -> anyhow::Result<()> {
        mount_bind(path, path).with_context(|| format!("bind-mounting {}", path.display()))?;
        mount_change(path, propagation)
            .with_context(|| format!("changing the propagation of {}", path.display()))?;
        Ok(())
    };
    bind(dir.path(), MountPropagationFlags::PRIVATE)?;
    // The kubelet's root, and the node's `/run` (where agents put their sockets): a
    // hostPath volume with HostToContainer or Bidirectional propagation must lie on a
    // shared mount, as everything does on a systemd host.
    for shared in ["kubelet", "run"] {
        let path = dir.join(shared);
        std::fs::create_dir_all(&path)?;
        bind(&path, MountPropagationFlags::SHARED)?;
    }
    Ok(())
}

/// Detaches every mount at or below `dir`, deepest first, so the directory can go.
pub(super) fn unmount_under(dir: &Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut points: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| line.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal.
        .map(|p| {
            p.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for point in points {
        let _ = rustix::mount::unmount(&point, rustix::mount::UnmountFlags::DETACH);
    }
}

/// The mounted cgroup hierarchies: one per controller on cgroup v1, one on v2.
fn cgroup_hierarchies() -> Vec<PathBuf> {
    let base = Path::new("/sys/fs/cgroup");
    if base.join("cgroup.controllers").exists() {
        return vec![base.to_path_buf()];
    }
    std::fs::read_dir(base)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                // Skip the symlinks (cpu,cpuacct -> cpu) that alias a hierarchy.
                .filter(|p| p.is_dir() && !p.is_symlink())
                .collect()
        })
        .unwrap_or_default()
}

/// The kubelet requires its cgroup root to exist in every hierarchy.
pub(super) fn create_cgroup_root(root: &str) -> anyhow::Result<()> {
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(root.trim_start_matches('/'));
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating cgroup {}", dir.display()))?;
        // A new v1 cpuset starts empty, and no task may join an empty cpuset.
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(file);
            let own = dir.join(file);
            if parent.exists() && std::fs::read_to_string(&own).is_ok_and(|s| s.trim().is_empty()) {
                let value = std::fs::read_to_string(&parent)?;
                std::fs::write(&own, value.trim())
                    .with_context(|| format!("writing {}", own.display()))?;
            }
        }
    }
    Ok(())
}

/// Removes the node's cgroups, deepest first; they are empty once containerd's PID
/// namespace is gone (retried briefly while the kernel reaps its last tasks).
pub(super) fn remove_cgroup_root(root: &str) {
    fn remove(dir: &Path) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                remove(&path)?;
            }
        }
        std::fs::remove_dir(dir)
    }
    for hierarchy in cgroup_hierarchies() {
        let dir = hierarchy.join(root.trim_start_matches('/'));
        for _ in 0..50 {
            match remove(&dir) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    std::thread::sleep(Duration::from_millis(100))
                }
                _ => break,
            }
        }
    }
}
