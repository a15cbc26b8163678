//! Confines CSI target paths to kubelet's pods directory.

use std::io;
use std::path::{Component, Path, PathBuf};

/// Why a target path was refused.
#[derive(Debug, thiserror::Error)]
pub enum TargetPathError {
    /// Kubelet always sends absolute paths.
    #[error("target path {0:?} is not absolute")]
    NotAbsolute(String),
    /// `..` could walk out of the kubelet root after our check.
    #[error("target path {0:?} contains '..'")]
    ParentComponent(String),
    /// The path has no final component to create.
    #[error("target path {0:?} has no final component")]
    NoFileName(String),
    /// The parent resolves (after following symlinks) outside the kubelet root.
    #[error("target path {path:?} resolves outside the kubelet pods directory {root:?}")]
    Outside {
        /// The path as sent.
        path: String,
        /// The configured root.
        root: PathBuf,
    },
    /// The target itself is a symlink, which a mount would follow.
    #[error("target path {0:?} is a symbolic link")]
    Symlink(PathBuf),
    /// The parent directory does not exist (kubelet creates it before publishing).
    #[error("parent directory of target path {path:?} is not accessible")]
    Parent {
        /// The path as sent.
        path: String,
        /// Why resolving it failed.
        #[source]
        source: io::Error,
    },
}

impl TargetPathError {
    /// True when the parent directory does not exist at all.
    pub fn is_missing(&self) -> bool {
        matches!(self, Self::Parent { source, .. } if source.kind() == io::ErrorKind::NotFound)
    }
}

/// The kubelet pods directory, canonicalized once.
#[derive(Debug, Clone)]
pub struct KubeletRoot(PathBuf);

impl KubeletRoot {
    /// Resolves `dir` (it must exist).
    pub fn new(dir: impl AsRef<Path>) -> io::Result<Self> {
        Ok(Self(dir.as_ref().canonicalize()?))
    }

    /// The canonical root.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Returns the canonical form of `raw` if it names an entry inside the root.
    ///
    /// The parent is canonicalized (it exists: kubelet makes it), so symlinks in it are
    /// resolved before the prefix check; the last component is not followed.
    pub fn confine(&self, raw: &str) -> Result<PathBuf, TargetPathError> {
        let path = Path::new(raw);
        if !path.is_absolute() {
            return Err(TargetPathError::NotAbsolute(raw.to_owned()));
        }
        if path.components().any(|c| c == Component::ParentDir) {
            return Err(TargetPathError::ParentComponent(raw.to_owned()));
        }
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(TargetPathError::NoFileName(raw.to_owned()));
        };
        let parent = parent
            .canonicalize()
            .map_err(|source| TargetPathError::Parent {
                path: raw.to_owned(),
                source,
            })?;
        if !parent.starts_with(&self.0) {
            return Err(TargetPathError::Outside {
                path: raw.to_owned(),
                root: self.0.clone(),
            });
        }
        let target = parent.join(name);
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(TargetPathError::Symlink(target));
        }
        Ok(target)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_inside_the_root_are_accepted_and_escapes_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("pods");
        std::fs::create_dir_all(root.join("uid/volumes")).unwrap();
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("uid/escape")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), root.join("uid/volumes/link"))
            .unwrap();
        let kubelet = KubeletRoot::new(&root).unwrap();
        let r = root.display();
        let cases: [(String, &str); 7] = [
            (format!("{r}/uid/volumes/mount"), "ok"),
            ("relative/mount".into(), "not absolute"),
            (format!("{r}/uid/../../elsewhere/mount"), ".."),
            (format!("{r}/uid/escape/mount"), "outside"),
            (format!("{r}/uid/volumes/link"), "symbolic link"),
            (format!("{r}/uid/missing/mount"), "not accessible"),
            ("/".into(), "no final component"),
        ];
        for (path, want) in cases {
            match kubelet.confine(&path) {
                Ok(p) => assert_eq!(want, "ok", "{path} accepted as {p:?}"),
                Err(e) => assert!(e.to_string().contains(want), "{path}: {e}"),
            }
        }
    }
}
