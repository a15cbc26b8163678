//! One manifest file: which files of the directory count, and how one is read into a
//! ClusterStaticEntry or ClusterFederatedTrustDomain (pure, apart from listing and
//! reading files).

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::config::expand_env;
use crate::crd::{ClusterFederatedTrustDomain, ClusterStaticEntry};
use crate::render::SpecError;
use crate::webhook::Validator;

/// The API version both kinds must carry.
pub const API_VERSION: &str = "spire.spiffe.io/v1alpha1";
/// Files larger than this are refused (a manifest is a few hundred bytes).
pub const MAX_FILE_BYTES: usize = 1 << 20;

/// A valid object read from a file.
#[derive(Debug, Clone)]
pub enum Manifest {
    /// A ClusterStaticEntry.
    Static(ClusterStaticEntry),
    /// A ClusterFederatedTrustDomain.
    Federation(ClusterFederatedTrustDomain),
}

/// Same object, same metadata and spec (what the reconcilers read).
impl PartialEq for Manifest {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Static(a), Self::Static(b)) => a.metadata == b.metadata && a.spec == b.spec,
            (Self::Federation(a), Self::Federation(b)) => {
                a.metadata == b.metadata && a.spec == b.spec
            }
            _ => false,
        }
    }
}

impl Manifest {
    /// `Kind/name`, as logs name the object.
    pub fn id(&self) -> (&'static str, String) {
        match self {
            Self::Static(o) => (
                "ClusterStaticEntry",
                o.metadata.name.clone().unwrap_or_default(),
            ),
            Self::Federation(o) => (
                "ClusterFederatedTrustDomain",
                o.metadata.name.clone().unwrap_or_default(),
            ),
        }
    }
}

/// Why a file's content is not a usable manifest. Each names the key and the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    /// The file could not be read.
    #[error("cannot be read: {0}")]
    Read(String),
    /// Larger than [`MAX_FILE_BYTES`].
    #[error("is {0} bytes, more than the {MAX_FILE_BYTES} a manifest may have")]
    TooLarge(usize),
    /// Not YAML, or more than one document.
    #[error("is not one YAML document: {0}")]
    Yaml(String),
    /// `apiVersion` is not [`API_VERSION`].
    #[error("apiVersion: {0:?} is not \"{API_VERSION}\"")]
    ApiVersion(String),
    /// `kind` is neither kind static mode reads.
    #[error("kind: {0:?} is not ClusterStaticEntry or ClusterFederatedTrustDomain")]
    Kind(String),
    /// `metadata.name` is missing or empty: objects are told apart by name.
    #[error("metadata.name is required (objects are told apart by name)")]
    NoName,
    /// The object does not have the kind's shape, or its spec is invalid (the same
    /// checks as the validating webhook).
    #[error("{kind} {name:?}: {error}")]
    Spec {
        /// The kind.
        kind: &'static str,
        /// `metadata.name`.
        name: String,
        /// The field and what is wrong with it.
        error: SpecError,
    },
    /// Another file declares an object of the same kind and name.
    #[error("{kind} {name:?} is already declared by {}", other.display())]
    Duplicate {
        /// The kind.
        kind: &'static str,
        /// `metadata.name`.
        name: String,
        /// The file that declares it (the first by file name).
        other: PathBuf,
    },
}

/// The manifest files of `dir`, sorted: regular files (or symlinks to them) named
/// `*.yaml`, as spire-controller-manager reads. Names starting with `..` are skipped:
/// a ConfigMap volume's `..data` and `..<timestamp>` entries hold the same files again.
pub fn list(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with("..") || !name.ends_with(".yaml") {
            continue;
        }
        let path = entry.path();
        // Follows symlinks: a ConfigMap key is a symlink into `..data`.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_dir()) {
            continue;
        }
        files.push(path);
    }
    files.sort();
    Ok(files)
}

/// Reads one file's text into a valid manifest: environment expansion first (with
/// `expand`; unset variables become empty, as Go's `os.ExpandEnv`), then one YAML
/// document, its `apiVersion` and `kind`, its name, and the kind's spec checks.
pub fn parse(text: &str, expand: bool, validator: &Validator) -> Result<Manifest, ManifestError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(ManifestError::TooLarge(text.len()));
    }
    let expanded;
    let text = if expand {
        expanded = expand_env(text, |name| std::env::var(name).ok());
        &expanded
    } else {
        text
    };
    let object: Value =
        serde_norway::from_str(text).map_err(|e| ManifestError::Yaml(e.to_string()))?;
    let field = |key: &str| object.get(key).and_then(Value::as_str).unwrap_or_default();
    if field("apiVersion") != API_VERSION {
        return Err(ManifestError::ApiVersion(field("apiVersion").into()));
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .filter(|n| !n.is_empty())
        .map(str::to_owned);
    match field("kind") {
        "ClusterStaticEntry" => {
            let name = name.ok_or(ManifestError::NoName)?;
            let spec = |error| ManifestError::Spec {
                kind: "ClusterStaticEntry",
                name: name.clone(),
                error,
            };
            let resource: ClusterStaticEntry = typed(object.clone()).map_err(spec)?;
            validator.cluster_static_entry(&resource).map_err(spec)?;
            Ok(Manifest::Static(without_status(resource)))
        }
        "ClusterFederatedTrustDomain" => {
            let name = name.ok_or(ManifestError::NoName)?;
            let spec = |error| ManifestError::Spec {
                kind: "ClusterFederatedTrustDomain",
                name: name.clone(),
                error,
            };
            let resource: ClusterFederatedTrustDomain = typed(object.clone()).map_err(spec)?;
            validator
                .cluster_federated_trust_domain(&resource)
                .map_err(spec)?;
            Ok(Manifest::Federation(resource))
        }
        other => Err(ManifestError::Kind(other.into())),
    }
}

fn typed<T: serde::de::DeserializeOwned>(object: Value) -> Result<T, SpecError> {
    serde_json::from_value(object).map_err(|e| SpecError {
        field: "spec".into(),
        message: format!("cannot be read: {e}"),
    })
}

/// A status written into a file means nothing: the reconciler would take it for the
/// object's last reported state.
fn without_status(mut resource: ClusterStaticEntry) -> ClusterStaticEntry {
    resource.status = None;
    resource
}
