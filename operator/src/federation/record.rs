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
