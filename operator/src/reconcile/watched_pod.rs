//! Pods as the operator's watch decodes them.
//!
//! Decoding a whole `k8s_openapi` Pod (managed fields, status, every container's every
//! field) and encoding it again for the pod cache was about a sixth of the operator's
//! CPU during a cold start. The operator needs the metadata decoded (selection, names,
//! annotations) and the spec only as JSON (templates read it when a pod's entries are
//! rendered). So the watch decodes the metadata without `managedFields`, keeps the
//! spec's top-level fields as their JSON text, without `volumes` (large, and never read),
//! and skips the status unread.

use std::borrow::Cow;
use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};
use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// A watched pod: decoded metadata, the spec as JSON text.
#[derive(Debug, Clone)]
pub struct WatchedPod {
    /// Metadata, without managed fields.
    pub metadata: ObjectMeta,
    /// The spec's top-level fields but `volumes`, as JSON text (a JSON object).
    pub spec: Option<Box<RawValue>>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName`.
    pub service_account_name: Option<String>,
}

/// The spec fields the operator drops.
const DROPPED_SPEC_FIELDS: &[&str] = &["volumes"];

impl WatchedPod {
    /// The same pod from a decoded one (tests and the webhook's callers build those).
    pub fn from_pod(pod: &Pod) -> Result<Self, serde_json::Error> {
        serde_json::from_str(&serde_json::to_string(pod)?)
    }
}

/// ObjectMeta's fields but `managedFields`, which serde then skips without decoding.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MetaWire {
    annotations: Option<BTreeMap<String, String>>,
    creation_timestamp: Option<Time>,
    deletion_grace_period_seconds: Option<i64>,
    deletion_timestamp: Option<Time>,
    finalizers: Option<Vec<String>>,
    generate_name: Option<String>,
    generation: Option<i64>,
    labels: Option<BTreeMap<String, String>>,
    name: Option<String>,
    namespace: Option<String>,
    owner_references: Option<Vec<OwnerReference>>,
    resource_version: Option<String>,
    self_link: Option<String>,
    uid: Option<String>,
}

#[derive(Deserialize)]
struct PodWire {
    #[serde(default)]
    metadata: MetaWire,
    #[serde(default)]
    spec: Option<BTreeMap<String, Box<RawValue>>>,
}

impl<'de> Deserialize<'de> for WatchedPod {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let wire = PodWire::deserialize(deserializer)?;
        let m = wire.metadata;
        let metadata = ObjectMeta {
            annotations: m.annotations,
            creation_timestamp: m.creation_timestamp,
            deletion_grace_period_seconds: m.deletion_grace_period_seconds,
            deletion_timestamp: m.deletion_timestamp,
            finalizers: m.finalizers,
            generate_name: m.generate_name,
            generation: m.generation,
            labels: m.labels,
            managed_fields: None,
            name: m.name,
            namespace: m.namespace,
            owner_references: m.owner_references,
            resource_version: m.resource_version,
            self_link: m.self_link,
            uid: m.uid,
        };
        let (spec, node_name, service_account_name) = match wire.spec {
            Some(mut fields) => {
                for dropped in DROPPED_SPEC_FIELDS {
                    fields.remove(*dropped);
                }
                let string = |key: &str| -> Result<Option<String>, D::Error> {
                    fields
                        .get(key)
                        .map(|raw| serde_json::from_str::<Option<String>>(raw.get()))
                        .transpose()
                        .map(Option::flatten)
                        .map_err(serde::de::Error::custom)
                };
                let node_name = string("nodeName")?;
                let service_account_name = string("serviceAccountName")?;
                let text = serde_json::to_string(&fields).map_err(serde::de::Error::custom)?;
                let spec = RawValue::from_string(text).map_err(serde::de::Error::custom)?;
                (Some(spec), node_name, service_account_name)
            }
            None => (None, None, None),
        };
        Ok(Self {
            metadata,
            spec,
            node_name,
            service_account_name,
        })
    }
}

impl kube::Resource for WatchedPod {
    type DynamicType = ();
    type Scope = k8s_openapi::NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        <Pod as kube::Resource>::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_metadata_and_spec_drops_managed_fields_volumes_and_status() {
        let json = r#"{
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u1",
                         "labels": {"app": "web"}, "annotations": {"a": "b"},
                         "creationTimestamp": "2026-01-01T00:00:00Z",
                         "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web", "uid": "rs"}],
                         "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}]},
            "spec": {"nodeName": "n1", "serviceAccountName": "frontend",
                     "containers": [{"name": "app", "image": "img:1"}],
                     "volumes": [{"name": "token", "projected": {"sources": []}}],
                     "hostNetwork": true},
            "status": {"phase": "Running", "podIP": "10.0.0.1"}
        }"#;
        let pod: WatchedPod = serde_json::from_str(json).unwrap();
        assert_eq!(pod.metadata.name.as_deref(), Some("web-0"));
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["app"], "web");
        assert_eq!(pod.metadata.owner_references.as_ref().unwrap().len(), 1);
        assert!(pod.metadata.creation_timestamp.is_some());
        assert!(pod.metadata.managed_fields.is_none());
        assert_eq!(pod.node_name.as_deref(), Some("n1"));
        assert_eq!(pod.service_account_name.as_deref(), Some("frontend"));
        let spec: serde_json::Value = serde_json::from_str(pod.spec.unwrap().get()).unwrap();
        assert_eq!(
            spec,
            serde_json::json!({"nodeName": "n1", "serviceAccountName": "frontend",
                "containers": [{"name": "app", "image": "img:1"}], "hostNetwork": true})
        );
    }

    #[test]
    fn a_pod_without_spec_or_with_nulls_decodes() {
        let pod: WatchedPod =
            serde_json::from_str(r#"{"metadata": {"name": "p"}, "spec": {"nodeName": null}}"#)
                .unwrap();
        assert_eq!(pod.node_name, None);
        let pod: WatchedPod = serde_json::from_str(r#"{"metadata": {"name": "p"}}"#).unwrap();
        assert!(pod.spec.is_none());
    }

    #[test]
    fn from_a_decoded_pod() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "ns"},
            "spec": {"nodeName": "n", "containers": [{"name": "c"}]}
        }))
        .unwrap();
        let watched = WatchedPod::from_pod(&pod).unwrap();
        assert_eq!(watched.metadata, pod.metadata);
        assert_eq!(watched.node_name.as_deref(), Some("n"));
    }
}
