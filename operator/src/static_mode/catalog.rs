//! What the manifest directory declares, file by file, with the last valid version of
//! each file kept: a file that turns bad (a typo, a half-written edit, a wrong kind)
//! keeps declaring what it declared before, so bad input never deletes an entry.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::manifest::{self, Manifest, ManifestError};
use super::saved::Saved;
use crate::crd::{ClusterFederatedTrustDomain, ClusterStaticEntry};
use crate::webhook::Validator;

/// One file as last read.
#[derive(Debug)]
struct FileState {
    /// SHA-256 of the content last parsed; `None` when it could not be read.
    digest: Option<[u8; 32]>,
    /// What the file declared when it was last valid.
    valid: Option<Manifest>,
    /// Why its current content is not used, if it is not.
    error: Option<ManifestError>,
}

/// What one [`Catalog::scan`] found.
#[derive(Debug, Default, PartialEq)]
pub struct Scan {
    /// The declared objects changed: the stores need replacing.
    pub changed: bool,
    /// Bad file versions seen for the first time: (file, why).
    pub new_errors: Vec<(PathBuf, ManifestError)>,
}

/// The manifest directory's files and what they declare.
pub struct Catalog {
    dir: PathBuf,
    expand: bool,
    validator: Validator,
    files: BTreeMap<PathBuf, FileState>,
    dir_error: Option<String>,
    /// `--state-dir`'s copies of the last valid versions.
    saved: Option<Saved>,
    scanned_once: bool,
}

impl Catalog {
    /// An empty catalog of `dir`; nothing is read until [`Catalog::scan`].
    pub fn new(dir: PathBuf, expand: bool, validator: Validator) -> Self {
        Self {
            dir,
            expand,
            validator,
            files: BTreeMap::new(),
            dir_error: None,
            saved: None,
            scanned_once: false,
        }
    }

    /// Keeps each file's last valid version in `saved` too, and falls back on it for a
    /// file that is invalid when the operator starts.
    pub fn with_saved(mut self, saved: Saved) -> Self {
        self.saved = Some(saved);
        self
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Re-reads the directory and the files whose content changed. An unreadable
    /// directory changes nothing (a missing mount must not delete every entry).
    pub fn scan(&mut self) -> Scan {
        let mut scan = Scan::default();
        let paths = match manifest::list(&self.dir) {
            Ok(paths) => {
                if self.dir_error.take().is_some() {
                    tracing::info!(dir = %self.dir.display(), "manifest directory readable again");
                }
                paths
            }
            Err(e) => {
                let message = e.to_string();
                if self.dir_error.as_ref() != Some(&message) {
                    tracing::warn!(dir = %self.dir.display(), error = %message, "staticManifestPath cannot be read; keeping what its files declared");
                }
                self.dir_error = Some(message);
                return scan;
            }
        };
        let mut present = Vec::new();
        for path in paths {
            match std::fs::read(&path) {
                Ok(bytes) => {
                    present.push(path.clone());
                    self.read(path, &bytes, &mut scan);
                }
                // Gone between the listing and the read (a ConfigMap key removed).
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    present.push(path.clone());
                    self.refuse(path, None, ManifestError::Read(e.to_string()), &mut scan);
                }
            }
        }
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p))
            .cloned()
            .collect();
        for path in gone {
            if let Some(state) = self.files.remove(&path) {
                tracing::info!(file = %path.display(), "manifest file removed");
                scan.changed |= state.valid.is_some();
            }
        }
        if scan.changed {
            self.retry_duplicates(&mut scan);
        }
        if let Some(saved) = &self.saved
            && (scan.changed || !self.scanned_once)
        {
            saved.retain(&present);
        }
        self.scanned_once = true;
        scan
    }

    /// A file another one shadowed may be usable now that something changed.
    fn retry_duplicates(&mut self, scan: &mut Scan) {
        let waiting: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, s)| matches!(s.error, Some(ManifestError::Duplicate { .. })))
            .map(|(p, _)| p.clone())
            .collect();
        for path in waiting {
            if let Ok(bytes) = std::fs::read(&path) {
                if let Some(state) = self.files.get_mut(&path) {
                    state.digest = None;
                }
                self.read(path, &bytes, scan);
            }
        }
    }

    fn read(&mut self, path: PathBuf, bytes: &[u8], scan: &mut Scan) {
        let digest: [u8; 32] = Sha256::digest(bytes).into();
        if self.files.get(&path).and_then(|s| s.digest) == Some(digest) {
            return;
        }
        let text =
            std::str::from_utf8(bytes).map_err(|e| ManifestError::Yaml(format!("not UTF-8: {e}")));
        let parsed = text
            .clone()
            .and_then(|text| manifest::parse(text, self.expand, &self.validator))
            .and_then(|m| self.unique(&path, m));
        match parsed {
            Ok(m) => {
                if let (Some(saved), Ok(text)) = (&self.saved, text) {
                    saved.save(&path, text);
                }
                let (kind, name) = m.id();
                let state = self.files.entry(path.clone()).or_insert(FileState {
                    digest: None,
                    valid: None,
                    error: None,
                });
                if state.valid.as_ref() != Some(&m) {
                    tracing::info!(file = %path.display(), kind, name = %name, "manifest read");
                    scan.changed = true;
                }
                *state = FileState {
                    digest: Some(digest),
                    valid: Some(m),
                    error: None,
                };
            }
            Err(e) => self.refuse(path, Some(digest), e, scan),
        }
    }

    /// `m` unless another file already declares an object of its kind and name.
    fn unique(&self, path: &Path, m: Manifest) -> Result<Manifest, ManifestError> {
        let id = m.id();
        let other = self
            .files
            .iter()
            .find(|(p, s)| *p != path && s.valid.as_ref().is_some_and(|v| v.id() == id));
        match other {
            None => Ok(m),
            Some((other, _)) => Err(ManifestError::Duplicate {
                kind: id.0,
                name: id.1,
                other: other.clone(),
            }),
        }
    }

    fn refuse(
        &mut self,
        path: PathBuf,
        digest: Option<[u8; 32]>,
        error: ManifestError,
        scan: &mut Scan,
    ) {
        let restored = match self.files.get(&path) {
            None => self.restore(&path),
            Some(_) => None,
        };
        scan.changed |= restored.is_some();
        let state = self.files.entry(path.clone()).or_insert(FileState {
            digest: None,
            valid: restored,
            error: None,
        });
        if state.error.as_ref() != Some(&error) {
            let kept = state
                .valid
                .as_ref()
                .map(|m| format!("{} {:?}", m.id().0, m.id().1));
            tracing::warn!(file = %path.display(), error = %error, kept = %kept.as_deref().unwrap_or("nothing"), "invalid manifest file skipped; what its last valid version declared is kept");
            scan.new_errors.push((path, error.clone()));
        }
        state.digest = digest;
        state.error = Some(error);
    }

    /// The last valid version `--state-dir` kept of a file first seen invalid.
    fn restore(&self, path: &Path) -> Option<Manifest> {
        let text = self.saved.as_ref()?.load(path)?;
        let m = manifest::parse(&text, self.expand, &self.validator).ok()?;
        let m = self.unique(path, m).ok()?;
        let (kind, name) = m.id();
        tracing::info!(file = %path.display(), kind, name = %name, "using the last valid version of an invalid manifest file, kept in --state-dir");
        Some(m)
    }

    /// How many files are currently not used as written.
    pub fn invalid_files(&self) -> usize {
        self.files.values().filter(|s| s.error.is_some()).count()
    }

    /// The declared objects, from each file's last valid version.
    pub fn objects(&self) -> (Vec<ClusterStaticEntry>, Vec<ClusterFederatedTrustDomain>) {
        let (mut statics, mut federations) = (Vec::new(), Vec::new());
        for state in self.files.values() {
            match &state.valid {
                Some(Manifest::Static(o)) => statics.push(o.clone()),
                Some(Manifest::Federation(o)) => federations.push(o.clone()),
                None => {}
            }
        }
        (statics, federations)
    }
}
