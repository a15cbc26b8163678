//! SELinux on the node: whether it is enforcing and how the agent directory is labelled.
//!
//! Why the driver only looks and never relabels: kubelet asks the container runtime to
//! relabel a volume only when the volume is "managed", which for CSI means not read-only
//! (`csi_mounter.go` `GetAttributes`: `Managed: !readOnly`; `kubelet_pods.go` `makeMounts`
//! relabels only `Managed && SELinuxRelabel` volumes). Our volumes are always
//! `readOnly: true`, so no runtime relabels them, and the read-only node mount cannot
//! make a relabel fail. What does matter is the directory's own label: a container may
//! connect to the agent socket only if its type allows it (`container_file_t`), which is
//! set once per node (the chart's `csiDriver.selinux` init container, or the node image).

use std::path::{Path, PathBuf};

/// The type containers may use on SELinux nodes (container-selinux policy).
pub const CONTAINER_FILE_TYPE: &str = "container_file_t";

/// What the driver found about SELinux on this node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SelinuxState {
    /// No selinuxfs: SELinux is not enabled in this kernel.
    Disabled,
    /// Enabled, not enforcing: denials are only logged.
    Permissive,
    /// Enabled and enforcing.
    Enforcing,
}

/// Where selinuxfs is mounted on the node (and, through the privileged container's
/// `/sys`, in the driver).
pub const SELINUXFS: &str = "/sys/fs/selinux";

/// Reads `<selinuxfs>/enforce`: `1` enforcing, `0` permissive, absent disabled.
pub fn state(selinuxfs: &Path) -> SelinuxState {
    match std::fs::read_to_string(selinuxfs.join("enforce")) {
        Ok(s) if s.trim() == "1" => SelinuxState::Enforcing,
        Ok(_) => SelinuxState::Permissive,
        Err(_) => SelinuxState::Disabled,
    }
}

/// The `security.selinux` label of `path` (`user:role:type:level`), if it has one.
pub fn label(path: &Path) -> Option<String> {
    let mut buf = vec![0u8; 256];
    let n = rustix::fs::getxattr(path, "security.selinux", &mut buf).ok()?;
    buf.truncate(n);
    while buf.last() == Some(&0) {
        buf.pop();
    }
    String::from_utf8(buf).ok()
}

/// The type field of a label: `system_u:object_r:container_file_t:s0` -> `container_file_t`.
pub fn label_type(label: &str) -> Option<&str> {
    label.split(':').nth(2).filter(|t| !t.is_empty())
}

/// A warning for the log when pods would be denied the socket, else `None`.
pub fn check_agent_dir(state: &SelinuxState, dir: &Path, label: Option<&str>) -> Option<String> {
    if *state != SelinuxState::Enforcing {
        return None;
    }
    let dir = PathBuf::from(dir);
    match label.and_then(label_type) {
        Some(CONTAINER_FILE_TYPE) => None,
        Some(other) => Some(format!(
            "SELinux is enforcing and the agent socket directory {} has type {other}: pods \
             will get permission denied on the socket; label it {CONTAINER_FILE_TYPE} (chart: \
             csiDriver.selinux.enabled=true, or `chcon -Rt {CONTAINER_FILE_TYPE}` on the node)",
            dir.display()
        )),
        None => Some(format!(
            "SELinux is enforcing and the label of the agent socket directory {} cannot be read",
            dir.display()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_comes_from_selinuxfs_enforce() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(state(dir.path()), SelinuxState::Disabled);
        std::fs::write(dir.path().join("enforce"), "0").unwrap();
        assert_eq!(state(dir.path()), SelinuxState::Permissive);
        std::fs::write(dir.path().join("enforce"), "1").unwrap();
        assert_eq!(state(dir.path()), SelinuxState::Enforcing);
        // This machine: whatever it is, reading it does not fail.
        let _ = state(Path::new(SELINUXFS));
    }

    #[test]
    fn labels_and_warnings() {
        assert_eq!(
            label_type("system_u:object_r:container_file_t:s0"),
            Some("container_file_t")
        );
        assert_eq!(
            label_type("system_u:object_r:var_run_t:s0:c1,c2"),
            Some("var_run_t")
        );
        assert_eq!(label_type("garbage"), None);
        let dir = Path::new("/run/spire/agent-sockets");
        let enforcing = SelinuxState::Enforcing;
        assert_eq!(
            check_agent_dir(
                &enforcing,
                dir,
                Some("system_u:object_r:container_file_t:s0")
            ),
            None
        );
        let warning =
            check_agent_dir(&enforcing, dir, Some("system_u:object_r:var_run_t:s0")).unwrap();
        assert!(
            warning.contains("var_run_t") && warning.contains("csiDriver.selinux"),
            "{warning}"
        );
        assert!(check_agent_dir(&enforcing, dir, None).is_some());
        for relaxed in [SelinuxState::Permissive, SelinuxState::Disabled] {
            assert_eq!(
                check_agent_dir(&relaxed, dir, Some("x:y:var_run_t:s0")),
                None
            );
        }
        // A file without a label (no SELinux here) reads as None, not an error.
        let file = tempfile::NamedTempFile::new().unwrap();
        if state(Path::new(SELINUXFS)) == SelinuxState::Disabled {
            assert_eq!(label(file.path()), None);
        }
    }
}
