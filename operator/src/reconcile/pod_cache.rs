//! The pods the operator knows, kept compact.
//!
//! A decoded `k8s_openapi` Pod takes 10-50 KB of memory (every optional field of every
//! container and volume is allocated inline), and the operator needs one per pod in the
//! cluster. Templates read a pod only when its entries are rendered, which happens when
//! it or something it depends on changes; between those times its trimmed JSON (a few
//! KB) is enough. Selection needs only namespace, labels, node and service account,
//! which are kept decoded.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use serde_json::value::RawValue;

use super::watched_pod::WatchedPod;

/// (namespace, name).
pub type PodKey = (String, String);

/// One pod: what selection needs, decoded; the rest as JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct CachedPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels, for podSelector.
    pub labels: Option<BTreeMap<String, String>>,
    /// `spec.nodeName`.
    pub node_name: Option<String>,
    /// `spec.serviceAccountName` (`default` when unset).
    pub service_account: String,
    /// The identity annotations (`annotationIdentities`) the pod carries, kept decoded
    /// so that the many pods without one are passed over without decoding them.
    pub annotations: Box<[(String, String)]>,
    json: Box<[u8]>,
}

impl CachedPod {
    /// Compacts a watched pod.
    pub fn new(pod: &WatchedPod) -> Result<Self, serde_json::Error> {
        let metadata = serde_json::to_string(&pod.metadata)?;
        let spec = pod.spec.as_deref().map_or("null", RawValue::get);
        let json =
            format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{metadata},"spec":{spec}}}"#);
        Ok(Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone(),
            node_name: pod.node_name.clone(),
            service_account: pod
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            annotations: Box::default(),
            json: json.into_bytes().into_boxed_slice(),
        })
    }

    /// Compacts a decoded pod (as the watch would have decoded it).
    pub fn from_pod(pod: &Pod) -> Result<Self, serde_json::Error> {
        Self::new(&WatchedPod::from_pod(pod)?)
    }

    /// Keeps the values of the annotations `names` that `pod` carries.
    pub fn keep_annotations(mut self, pod: &WatchedPod, names: &[&str]) -> Self {
        let annotations = pod.metadata.annotations.iter().flatten();
        self.annotations = annotations
            .filter(|(name, _)| names.contains(&name.as_str()))
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect();
        self
    }

    /// The value of a kept annotation.
    pub fn annotation(&self, name: &str) -> Option<&str> {
        self.annotations
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The pod, decoded again.
    pub fn pod(&self) -> Result<Pod, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }

    /// The pod as JSON text (`apiVersion`, `kind`, `metadata`, `spec`): templates decode
    /// only what they read of it.
    pub fn json_text(&self) -> &[u8] {
        &self.json
    }
}

/// All cached pods, shared between the watch (writer) and the reconciler (reader).
#[derive(Debug, Default)]
pub struct PodCache {
    pods: RwLock<HashMap<PodKey, Arc<CachedPod>>>,
}

impl PodCache {
    /// The pod `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedPod>> {
        self.read()
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Keys of the pods matching `predicate`.
    pub fn keys_where(&self, predicate: impl Fn(&CachedPod) -> bool) -> Vec<PodKey> {
        self.read()
            .iter()
            .filter(|(_, p)| predicate(p))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stores or replaces a pod.
    pub fn insert(&self, pod: CachedPod) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.write().insert(key, Arc::new(pod));
    }

    /// Forgets a pod.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.write()
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Replaces everything (after a re-list); returns the pods that changed, appeared
    /// or vanished.
    pub fn replace(&self, pods: HashMap<PodKey, Arc<CachedPod>>) -> Vec<PodKey> {
        let old = std::mem::replace(&mut *self.write(), pods);
        let new = self.read();
        let mut changed: Vec<PodKey> = old
            .iter()
            .filter(|(key, pod)| new.get(*key) != Some(*pod))
            .map(|(key, _)| key.clone())
            .collect();
        changed.extend(new.keys().filter(|key| !old.contains_key(*key)).cloned());
        changed
    }

    /// How many pods are cached.
    pub fn len(&self) -> usize {
        self.read().len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<PodKey, Arc<CachedPod>>> {
        // Writers replace whole values; a panic mid-write cannot leave a torn map.
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<PodKey, Arc<CachedPod>>> {
        self.pods.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{Container, PodSpec};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    #[test]
    fn a_cached_pod_decodes_to_the_same_pod() {
        let pod = Pod {
            metadata: ObjectMeta {
                name: Some("web-0".into()),
                namespace: Some("shop".into()),
                labels: Some([("app".to_string(), "web".to_string())].into()),
                ..Default::default()
            },
            spec: Some(PodSpec {
                node_name: Some("n1".into()),
                containers: vec![Container {
                    name: "app".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            status: None,
        };
        let cached = CachedPod::from_pod(&pod).unwrap();
        assert_eq!(cached.service_account, "default");
        assert_eq!(cached.node_name.as_deref(), Some("n1"));
        assert_eq!(cached.pod().unwrap(), pod);

        let cache = PodCache::default();
        cache.insert(cached);
        assert!(cache.get("shop", "web-0").is_some());
        assert_eq!(
            cache
                .keys_where(|p| p.node_name.as_deref() == Some("n1"))
                .len(),
            1
        );
        cache.remove("shop", "web-0");
        assert!(cache.is_empty());
    }
}
