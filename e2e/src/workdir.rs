//! Temporary directories that outlive a failed test.

use std::path::{Path, PathBuf};

/// A temporary directory for one component's configuration, data and logs.
///
/// Removed on drop, unless the thread is panicking (a failed test): then it is kept
/// and its path printed, so the component logs can be read.
#[derive(Debug)]
pub struct WorkDir {
    dir: Option<tempfile::TempDir>,
    path: PathBuf,
}

impl WorkDir {
    /// Creates `$TMPDIR/spire-rs-<name>-XXXXXX`. Paths stay short on purpose: Unix
    /// socket paths inside must fit in 108 bytes.
    pub fn new(name: &str) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("spire-rs-{name}-"))
            .tempdir()?;
        let path = dir.path().to_path_buf();
        // Printed now and captured by the test runner, which shows it only for a failing test.
        println!("[harness] {name}: working directory {}", path.display());
        Ok(Self {
            dir: Some(dir),
            path,
        })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, relative: impl AsRef<Path>) -> PathBuf {
        self.path.join(relative)
    }

    /// Keeps the directory after drop, e.g. for the demo's closing message.
    pub fn keep(&mut self) -> PathBuf {
        if let Some(dir) = self.dir.take() {
            let _ = dir.keep();
        }
        self.path.clone()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let path = self.keep();
            eprintln!(
                "[harness] test failed: logs and state kept in {}",
                path.display()
            );
        }
    }
}
