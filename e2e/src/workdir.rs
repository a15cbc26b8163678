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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removed_after_success() {
        let dir = WorkDir::new("unit-ok").unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(dir.join("component.log"), "fine").unwrap();
        drop(dir);
        assert!(!path.exists());
    }

    #[test]
    fn kept_when_the_test_panics() {
        let (tx, rx) = std::sync::mpsc::channel();
        let result = std::thread::spawn(move || {
            let dir = WorkDir::new("unit-panic").unwrap();
            std::fs::write(dir.join("component.log"), "what went wrong").unwrap();
            tx.send(dir.path().to_path_buf()).unwrap();
            panic!("simulated test failure");
        })
        .join();
        assert!(result.is_err());
        let path = rx.recv().unwrap();
        let log = std::fs::read_to_string(path.join("component.log"));
        std::fs::remove_dir_all(&path).unwrap();
        assert_eq!(log.unwrap(), "what went wrong");
    }
}
