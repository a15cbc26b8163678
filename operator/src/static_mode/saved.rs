//! The last valid version of each manifest file, kept in `--state-dir` so that a file
//! which is invalid when the operator restarts still declares what it declared before.

use std::path::{Path, PathBuf};

use crate::reconcile::adopted::write_atomically;

/// Copies of valid manifest files, by file name, in `<state-dir>/static-manifests`.
#[derive(Debug)]
pub struct Saved {
    dir: PathBuf,
}

impl Saved {
    /// The copies' directory under `state_dir`, created if needed.
    pub fn open(state_dir: &Path) -> std::io::Result<Self> {
        let dir = state_dir.join("static-manifests");
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    fn copy_of(&self, file: &Path) -> Option<PathBuf> {
        file.file_name().map(|name| self.dir.join(name))
    }

    /// Keeps `text` as the last valid version of `file`.
    pub fn save(&self, file: &Path, text: &str) {
        let Some(copy) = self.copy_of(file) else {
            return;
        };
        if std::fs::read_to_string(&copy).is_ok_and(|kept| kept == text) {
            return;
        }
        if let Err(e) = write_atomically(&copy, text) {
            tracing::warn!(file = %copy.display(), error = %e, "saving the last valid version of a manifest failed");
        }
    }

    /// The last valid version of `file`, if one was kept.
    pub fn load(&self, file: &Path) -> Option<String> {
        std::fs::read_to_string(self.copy_of(file)?).ok()
    }

    /// Forgets the copies of files not in `present` (deleted, also while the operator
    /// was down).
    pub fn retain(&self, present: &[PathBuf]) {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !present
                .iter()
                .any(|p| p.file_name() == Some(name.as_os_str()))
            {
                let _ = std::fs::remove_file(entry.path());
            }
        }
    }
}
