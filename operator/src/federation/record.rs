//! The record of the federation relationships the operator owns, kept in a ConfigMap in
//! its namespace so that a restart (or a new leader) knows them.
//!
//! SPIRE relationships carry no owner, and one made with `spire-server federation
//! create` looks exactly like ours; only this record tells them apart. A trust domain is
//! recorded *before* its relationship is created, so no relationship the operator
//! created is ever unrecorded; a claim whose create then finds the relationship
//! already there (made by someone else meanwhile) is withdrawn.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde::{Deserialize, Serialize};

/// ConfigMap (in the operator's namespace) recording the owned relationships.
pub const FEDERATION_CONFIG_MAP: &str = "spire-operator-federation";
const KEY: &str = "relationships.json";
const FIELD_MANAGER: &str = "spire-operator";

/// One owned relationship.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OwnedRelationship {
    /// The ClusterFederatedTrustDomain that declares it.
    pub resource: String,
    /// Digest of the `trustDomainBundle` last sent to the server (see
    /// [`super::relationship::DeclaredBundle`]); `None` when none was sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bundle_digest: Option<String>,
}

/// Owned relationships by trust domain name.
pub type Owned = BTreeMap<String, OwnedRelationship>;

/// Why the record could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The API server refused or failed.
    #[error("reading ConfigMap {namespace}/{FEDERATION_CONFIG_MAP}")]
    Read {
        /// The operator's namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
    /// The state file (static mode's `--state-dir`) could not be read.
    #[error("reading {}", path.display())]
    ReadFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The state file's content is not the record.
    #[error("{} is not a JSON object of trust domain to {{resource, bundleDigest}}", path.display())]
    ParseFile {
        /// The file.
        path: std::path::PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
    /// The ConfigMap's content is not the record.
    #[error(
        "ConfigMap {namespace}/{FEDERATION_CONFIG_MAP} key {KEY} is not a JSON object of trust domain to {{resource, bundleDigest}}"
    )]
    Parse {
        /// The operator's namespace.
        namespace: String,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

/// The record in `namespace`; empty when the ConfigMap does not exist.
pub async fn load(kube: &kube::Client, namespace: &str) -> Result<Owned, RecordError> {
    let maps: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
    let map = maps
        .get_opt(FEDERATION_CONFIG_MAP)
        .await
        .map_err(|source| RecordError::Read {
            namespace: namespace.into(),
            source,
        })?;
    match map.and_then(|cm| cm.data).and_then(|mut d| d.remove(KEY)) {
        None => Ok(Owned::new()),
        Some(json) => serde_json::from_str(&json).map_err(|source| RecordError::Parse {
            namespace: namespace.into(),
            source,
        }),
    }
}

/// Saves the record (server-side apply, so a hand-edited ConfigMap is taken over).
pub async fn save(kube: &kube::Client, namespace: &str, owned: &Owned) -> Result<(), kube::Error> {
    let json = serde_json::to_string_pretty(owned).unwrap_or_else(|_| "{}".into());
    let map = serde_json::json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": FEDERATION_CONFIG_MAP,
            "labels": {"app.kubernetes.io/managed-by": "spire-operator"},
            "annotations": {"spire.spiffe.io/purpose": "SPIRE federation relationships spire-operator created or adopted; it changes and deletes only these"},
        },
        "data": {KEY: json},
    });
    let api: Api<ConfigMap> = Api::namespaced(kube.clone(), namespace);
    api.patch(
        FEDERATION_CONFIG_MAP,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&map),
    )
    .await
    .map(drop)
}

/// The record's file in static mode's state directory.
pub fn file_in(dir: &std::path::Path) -> std::path::PathBuf {
    dir.join(format!("{FEDERATION_CONFIG_MAP}.json"))
}

/// The record kept in `path` (static mode); empty when the file does not exist.
pub fn load_file(path: &std::path::Path) -> Result<Owned, RecordError> {
    match std::fs::read_to_string(path) {
        Ok(json) => serde_json::from_str(&json).map_err(|source| RecordError::ParseFile {
            path: path.into(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Owned::new()),
        Err(source) => Err(RecordError::ReadFile {
            path: path.into(),
            source,
        }),
    }
}

/// Saves the record to `path` (written aside, then renamed over it).
pub fn save_file(path: &std::path::Path, owned: &Owned) -> std::io::Result<()> {
    let json = serde_json::to_string_pretty(owned).unwrap_or_else(|_| "{}".into());
    crate::reconcile::adopted::write_atomically(path, &json)
}
