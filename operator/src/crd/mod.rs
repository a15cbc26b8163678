//! The `spire.spiffe.io/v1alpha1` custom resources, drop-in compatible with
//! spire-controller-manager's, and their CustomResourceDefinitions as YAML.
//!
//! The YAML checked in under `crds/` is generated from these types; regenerate it with
//! [`REGENERATE_COMMAND`] after changing them (a unit test fails while it is stale).

mod cluster_federated_trust_domain;
mod cluster_spiffe_id;
mod cluster_static_entry;
mod duration;

use std::path::{Path, PathBuf};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{
    CustomResourceDefinition, JSONSchemaProps, JSONSchemaPropsOrArray, JSONSchemaPropsOrBool,
};
use kube::CustomResourceExt;

pub use cluster_federated_trust_domain::{
    BundleEndpointProfile, BundleEndpointProfileType, ClusterFederatedTrustDomain,
    ClusterFederatedTrustDomainSpec, ClusterFederatedTrustDomainStatus,
};
pub use cluster_spiffe_id::{
    ClusterSPIFFEID, ClusterSPIFFEIDSpec, ClusterSPIFFEIDStats, ClusterSPIFFEIDStatus,
};
pub use cluster_static_entry::{
    ClusterStaticEntry, ClusterStaticEntrySpec, ClusterStaticEntryStatus,
};
pub use duration::{DurationError, GoDuration, parse_go_duration};

/// The command that rewrites the files in `crds/` from these types.
pub const REGENERATE_COMMAND: &str = "cargo run -p spire-operator -- crds --out-dir crds";

/// Failure to render or write the CRD YAML.
#[derive(Debug, thiserror::Error)]
pub enum CrdError {
    /// A CRD could not be serialized to YAML.
    #[error("serializing CRD {name} to YAML")]
    Yaml {
        /// The CRD's name, e.g. `clusterspiffeids.spire.spiffe.io`.
        name: String,
        /// The serializer's error.
        #[source]
        source: serde_norway::Error,
    },
    /// A CRD file could not be written.
    #[error("writing {}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}

/// The CustomResourceDefinitions of all three kinds, as served by the operator.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        ClusterSPIFFEID::crd(),
        ClusterStaticEntry::crd(),
        ClusterFederatedTrustDomain::crd(),
    ];
    for crd in &mut crds {
        for version in &mut crd.spec.versions {
            if let Some(schema) = version
                .schema
                .as_mut()
                .and_then(|s| s.open_api_v3_schema.as_mut())
            {
                strip_defaults_and_nullable(schema);
            }
        }
    }
    crds
}

/// Removes the `default` and `nullable` keywords schemars derives from `#[serde(default)]`
/// and `Option`. A schema default would make the apiserver write `admin: false` and
/// friends into every stored object, and `nullable` would let `ttl: null` be stored;
/// spire-controller-manager's CRDs have neither, and ours must store objects the same way.
fn strip_defaults_and_nullable(schema: &mut JSONSchemaProps) {
    schema.default = None;
    schema.nullable = None;
    for child in schema.properties.iter_mut().flat_map(|p| p.values_mut()) {
        strip_defaults_and_nullable(child);
    }
    match schema.items.as_mut() {
        Some(JSONSchemaPropsOrArray::Schema(item)) => strip_defaults_and_nullable(item),
        Some(JSONSchemaPropsOrArray::Schemas(items)) => {
            items.iter_mut().for_each(strip_defaults_and_nullable)
        }
        None => {}
    }
    if let Some(JSONSchemaPropsOrBool::Schema(extra)) = schema.additional_properties.as_mut() {
        strip_defaults_and_nullable(extra);
    }
}

/// The file name of a CRD under `crds/`, e.g. `spire.spiffe.io_clusterspiffeids.yaml`.
pub fn file_name(crd: &CustomResourceDefinition) -> String {
    format!("{}_{}.yaml", crd.spec.group, crd.spec.names.plural)
}

/// One CRD as a YAML document, preceded by a comment saying how to regenerate it.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, CrdError> {
    let body = serde_norway::to_string(crd).map_err(|source| CrdError::Yaml {
        name: crd.metadata.name.clone().unwrap_or_default(),
        source,
    })?;
    Ok(format!(
        "# Generated from the spire-operator Rust types; do not edit.\n\
         # Regenerate with: {REGENERATE_COMMAND}\n---\n{body}"
    ))
}

/// All three CRDs as one multi-document YAML stream.
pub fn all_yaml() -> Result<String, CrdError> {
    let docs = all().iter().map(to_yaml).collect::<Result<Vec<_>, _>>()?;
    Ok(docs.concat())
}

/// Writes one file per CRD into `dir` (which must exist) and returns their paths.
pub fn write_dir(dir: &Path) -> Result<Vec<PathBuf>, CrdError> {
    let mut written = Vec::new();
    for crd in all() {
        let path = dir.join(file_name(&crd));
        std::fs::write(&path, to_yaml(&crd)?).map_err(|source| CrdError::Write {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

fn is_false(b: &bool) -> bool {
    !*b
}

#[cfg(test)]
mod tests;
