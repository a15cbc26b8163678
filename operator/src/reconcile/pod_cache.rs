//! The pods the operator knows, kept compact.
//!
//! A decoded `k8s_openapi` Pod takes 10-50 KB of memory (every optional field of every
//! container and volume is allocated inline), and the operator needs one per pod in the
//! cluster. Templates read a pod only when its entries are rendered, which happens when
//! it or something it depends on changes; between those times the JSON of the fields
//! they read (a few hundred bytes; [`PodFields`]) is enough. Selection needs only
//! namespace, labels, node and service account, which are kept decoded.
//!
//! When the ClusterSPIFFEIDs come to read a field the cached pods do not hold, the
//! reconciler asks for it ([`PodCache::want`]); the pod watch then lists every pod again,
//! and the listing, pruned to the wider fields, replaces the cache at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, RwLock};

use k8s_openapi::api::core::v1::Pod;
use serde_json::value::RawValue;
use tokio::sync::watch;

use super::watched_pod::WatchedPod;
use crate::template::PodFields;

/// (namespace, name).
pub type PodKey = (String, String);

/// Cached pods by key.
pub type Pods = HashMap<PodKey, Arc<CachedPod>>;

/// One pod: what selection needs, decoded; the rest as JSON.
#[derive(Debug, PartialEq, Eq)]
pub struct CachedPod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels, for podSelector.
    pub labels: PodLabels,
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
    /// Compacts a watched pod, keeping `fields` of it for templates.
    pub fn new(pod: &WatchedPod, fields: &PodFields) -> Result<Self, serde_json::Error> {
        let metadata = serde_json::to_string(&pod.metadata)?;
        let spec = pod.spec.as_deref().map_or("null", RawValue::get);
        let json =
            format!(r#"{{"apiVersion":"v1","kind":"Pod","metadata":{metadata},"spec":{spec}}}"#);
        let json = if fields.is_everything() {
            json.into_bytes()
        } else {
            fields.prune(json.as_bytes())?
        };
        Ok(Self {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: PodLabels::new(pod.metadata.labels.as_ref()),
            node_name: pod.node_name.clone(),
            service_account: pod
                .service_account_name
                .clone()
                .unwrap_or_else(|| "default".into()),
            annotations: Box::default(),
            json: json.into_boxed_slice(),
        })
    }

    /// Compacts a decoded pod (as the watch would have decoded it), whole.
    pub fn from_pod(pod: &Pod) -> Result<Self, serde_json::Error> {
        Self::new(&WatchedPod::from_pod(pod)?, &PodFields::everything())
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

    /// The pod, decoded again (whole only when cached with every field).
    pub fn pod(&self) -> Result<Pod, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }

    /// The pod as JSON text (an object with `metadata` and `spec`, holding the fields it
    /// was cached with): templates decode only what they read of it.
    pub fn json_text(&self) -> &[u8] {
        &self.json
    }
}

/// A pod's labels, sorted by key: a tenth of a `BTreeMap`'s memory for the few labels
/// a pod has (its smallest node holds eleven).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct PodLabels(Box<[(Box<str>, Box<str>)]>);

impl PodLabels {
    /// The labels of a pod's metadata.
    pub fn new(labels: Option<&BTreeMap<String, String>>) -> Self {
        // A BTreeMap iterates in key order: the slice is sorted.
        Self(
            labels
                .into_iter()
                .flatten()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        )
    }
}

impl PodLabels {
    /// The value of label `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| (**k).cmp(key))
            .ok()
            .map(|i| &*self.0[i].1)
    }
}

/// All cached pods, shared between the watch (writer) and the reconciler (reader).
#[derive(Debug)]
pub struct PodCache {
    /// The pods, and the fields every one of them holds.
    pods: RwLock<(Pods, Arc<PodFields>)>,
    /// The fields the reconciler wants held; the pod watch lists again on a change.
    wanted: watch::Sender<Arc<PodFields>>,
}

impl Default for PodCache {
    /// Empty, holding (and wanting) whole pods.
    fn default() -> Self {
        let everything = Arc::new(PodFields::everything());
        Self {
            pods: RwLock::new((HashMap::new(), everything.clone())),
            wanted: watch::Sender::new(everything),
        }
    }
}

impl PodCache {
    /// The fields every cached pod holds.
    pub fn fields(&self) -> Arc<PodFields> {
        self.read().1.clone()
    }

    /// The fields to cache pods with from now on.
    pub fn wanted(&self) -> Arc<PodFields> {
        self.wanted.borrow().clone()
    }

    /// Asks for pods holding `fields` too; true when that is new (the pod watch then
    /// lists every pod again, see [`Self::replace`]).
    pub fn want(&self, fields: &PodFields) -> bool {
        self.wanted.send_if_modified(|wanted| {
            if wanted.covers(fields) {
                return false;
            }
            *wanted = Arc::new(wanted.union(fields));
            true
        })
    }

    /// Sets the fields to cache pods with, narrower ones included: before the first
    /// listing, when nothing is cached yet.
    pub fn want_exactly(&self, fields: PodFields) {
        self.wanted.send_replace(Arc::new(fields));
    }

    /// Notified when the wanted fields change.
    pub fn subscribe(&self) -> watch::Receiver<Arc<PodFields>> {
        self.wanted.subscribe()
    }

    /// The pod `namespace/name`.
    pub fn get(&self, namespace: &str, name: &str) -> Option<Arc<CachedPod>> {
        self.read()
            .0
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Keys of the pods matching `predicate`.
    pub fn keys_where(&self, predicate: impl Fn(&CachedPod) -> bool) -> Vec<PodKey> {
        self.read()
            .0
            .iter()
            .filter(|(_, p)| predicate(p))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Stores or replaces a pod (cached with [`Self::fields`]).
    pub fn insert(&self, pod: CachedPod) {
        let key = (pod.namespace.clone(), pod.name.clone());
        self.write().0.insert(key, Arc::new(pod));
    }

    /// Forgets a pod.
    pub fn remove(&self, namespace: &str, name: &str) {
        self.write()
            .0
            .remove(&(namespace.to_owned(), name.to_owned()));
    }

    /// Replaces everything (after a re-list) with `pods`, cached with `fields`; returns
    /// the pods that changed, appeared or vanished: all of them when the fields changed.
    pub fn replace(&self, pods: Pods, fields: Arc<PodFields>) -> Vec<PodKey> {
        let (old, old_fields) = std::mem::replace(&mut *self.write(), (pods, fields));
        let guard = self.read();
        let (new, fields) = &*guard;
        let all = old_fields != *fields;
        let mut changed: Vec<PodKey> = old
            .iter()
            .filter(|(key, pod)| all || new.get(*key) != Some(*pod))
            .map(|(key, _)| key.clone())
            .collect();
        changed.extend(new.keys().filter(|key| !old.contains_key(*key)).cloned());
        changed
    }

    /// How many pods are cached.
    pub fn len(&self) -> usize {
        self.read().0.len()
    }

    /// Whether no pod is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, (Pods, Arc<PodFields>)> {
        // Writers replace whole values; a panic mid-write cannot leave a torn map.
        self.pods.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, (Pods, Arc<PodFields>)> {
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

    #[test]
    fn labels_are_looked_up_by_key() {
        let map: BTreeMap<String, String> = [("tier", "db"), ("app", "web"), ("zone", "a")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        let labels = PodLabels::new(Some(&map));
        for (key, value) in &map {
            assert_eq!(labels.get(key), Some(value.as_str()));
        }
        assert_eq!(labels.get("team"), None);
        assert_eq!(PodLabels::new(None).get("app"), None);
    }

    fn fields(source: &str) -> PodFields {
        PodFields::of([&crate::template::Template::parse("t", source).unwrap()])
    }

    #[test]
    fn pods_are_cached_with_the_fields_templates_read() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "web-0", "namespace": "shop", "uid": "u-1",
                         "labels": {"app": "web"}, "annotations": {"note": "x"}},
            "spec": {"nodeName": "n1", "serviceAccountName": "sa",
                     "containers": [{"name": "app", "image": "img:1"}]}
        }))
        .unwrap();
        let watched = WatchedPod::from_pod(&pod).unwrap();
        let name_only = fields("{{ .PodMeta.Name }}");
        let cached = CachedPod::new(&watched, &name_only).unwrap();
        let json: serde_json::Value = serde_json::from_slice(cached.json_text()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"metadata": {"name": "web-0", "uid": "u-1"}, "spec": null}),
            "only what templates read, and the UID"
        );
        assert_eq!(
            cached.labels,
            PodLabels::new(pod.metadata.labels.as_ref()),
            "selection keeps its fields"
        );
        assert_eq!(cached.node_name.as_deref(), Some("n1"));

        // A template reading more is not covered: the cache wants the union, once.
        let cache = PodCache::default();
        cache.want_exactly(name_only.clone());
        let changed = cache.replace(
            HashMap::from([(("shop".into(), "web-0".into()), Arc::new(cached))]),
            Arc::new(name_only.clone()),
        );
        assert_eq!(changed.len(), 1);
        let labels = fields("{{ .PodMeta.Labels.app }}");
        assert!(!cache.fields().covers(&labels));
        assert!(cache.want(&labels), "new: the watch lists again");
        assert!(!cache.want(&labels), "asked already");
        assert!(cache.wanted().covers(&labels) && cache.wanted().covers(&name_only));

        // The listing with the wider fields marks every pod, changed or not.
        let wider = cache.wanted();
        let recached = CachedPod::new(&watched, &wider).unwrap();
        let pods = HashMap::from([(("shop".into(), "web-0".into()), Arc::new(recached))]);
        assert_eq!(cache.replace(pods.clone(), wider.clone()).len(), 1);
        assert!(cache.fields().covers(&labels));
        assert_eq!(
            cache.replace(pods, wider).len(),
            0,
            "the same listing with the same fields changes nothing"
        );
    }
}
