//! Where each kind's watch events go: a [`Sink`] applies them to its cache and reports
//! what to mark. Relists are buffered and swapped in at `InitDone`, and only then are
//! the objects that changed or vanished marked (see [`super::watch`]).

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Resource;
use kube::runtime::reflector::store::Writer;
use kube::runtime::watcher::Event;
use serde::Serialize;

use super::access::slice_from_endpoints;
use super::pod_cache::{CachedPod, PodCache, Pods};
use super::services::ServiceIndex;
use super::watch::Dirty;
use super::watched_pod::WatchedPod;
use crate::config::Config;
use crate::template::PodFields;

/// Where one kind's events go: `apply` updates the cache and adds what to mark.
pub(super) trait Sink<K>: Send + 'static {
    /// Applies one event; adds to `marks` what must be recomputed.
    fn apply(&mut self, event: Event<K>, marks: &mut Vec<Dirty>);
}

/// Pods go into the compact [`PodCache`]; each pod marks itself.
pub(super) struct PodSink {
    pub(super) cache: Arc<PodCache>,
    pub(super) config: Arc<Config>,
    /// A listing being received, and the fields its pods are cached with.
    pub(super) building: Option<(Pods, Arc<PodFields>)>,
}

impl PodSink {
    fn compact(config: &Config, pod: &WatchedPod, fields: &PodFields) -> Option<CachedPod> {
        let ignored = pod
            .metadata
            .namespace
            .as_deref()
            .is_some_and(|ns| !config.watches_namespace(ns));
        if ignored {
            return None;
        }
        let settings = &config.annotation_identities;
        let kept: &[&str] = if settings.enabled {
            &[
                &settings.spiffe_id_annotation,
                &settings.dns_names_annotation,
            ]
        } else {
            &[]
        };
        CachedPod::new(pod, fields)
            .map(|cached| cached.keep_annotations(pod, kept))
            .inspect_err(|e| {
                tracing::warn!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace, error = %e, "cannot cache pod")
            })
            .ok()
    }
}

impl Sink<WatchedPod> for PodSink {
    fn apply(&mut self, event: Event<WatchedPod>, marks: &mut Vec<Dirty>) {
        match event {
            Event::Init => self.building = Some(new_listing(&self.cache)),
            Event::InitApply(pod) => {
                let (pods, fields) = self
                    .building
                    .get_or_insert_with(|| new_listing(&self.cache));
                if let Some(cached) = Self::compact(&self.config, &pod, fields) {
                    pods.insert(
                        (cached.namespace.clone(), cached.name.clone()),
                        Arc::new(cached),
                    );
                }
            }
            Event::InitDone => {
                let (pods, fields) = self
                    .building
                    .take()
                    .unwrap_or_else(|| new_listing(&self.cache));
                let changed = self.cache.replace(pods, fields);
                marks.extend(changed.into_iter().map(|(ns, name)| Dirty::Pod(ns, name)));
            }
            Event::Apply(pod) => {
                if let Some(cached) = Self::compact(&self.config, &pod, &self.cache.fields()) {
                    marks.push(Dirty::Pod(cached.namespace.clone(), cached.name.clone()));
                    self.cache.insert(cached);
                }
            }
            Event::Delete(pod) => {
                if let (Some(ns), Some(name)) = (pod.metadata.namespace, pod.metadata.name) {
                    self.cache.remove(&ns, &name);
                    marks.push(Dirty::Pod(ns, name));
                }
            }
        }
    }
}

/// An empty listing, its pods to be cached with the fields `cache` wants now.
fn new_listing(cache: &PodCache) -> (Pods, Arc<PodFields>) {
    (HashMap::new(), cache.wanted())
}

/// A reflector store, marking an object only when what templates and specs can see
/// changed: status-only updates and heartbeats produce no marks.
pub(super) struct StoreSink<K: Resource<DynamicType = ()> + Clone + 'static> {
    pub(super) writer: Writer<K>,
    pub(super) mark: fn(&K) -> Option<Dirty>,
    /// Per object key: its fingerprint and its mark (to mark it when it vanishes).
    pub(super) seen: HashMap<String, (u64, Option<Dirty>)>,
    pub(super) relist: Option<Relist>,
}

/// A relist in progress: the new listing and the marks held back until `InitDone`.
#[derive(Default)]
pub(super) struct Relist {
    seen: HashMap<String, (u64, Option<Dirty>)>,
    marks: Vec<Dirty>,
}

impl<K> Sink<K> for StoreSink<K>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + Send + Sync + 'static,
{
    fn apply(&mut self, event: Event<K>, marks: &mut Vec<Dirty>) {
        // The store changes first, so the marks below are read against the new objects.
        self.writer.apply_watcher_event(&event);
        match event {
            Event::Init => self.relist = Some(Relist::default()),
            Event::InitApply(obj) => {
                let (key, print, mark) = (object_key(&obj), fingerprint(&obj), (self.mark)(&obj));
                let relist = self.relist.get_or_insert_default();
                if self.seen.get(&key).map(|s| s.0) != Some(print) {
                    relist.marks.extend(mark.clone());
                }
                relist.seen.insert(key, (print, mark));
            }
            Event::InitDone => {
                let relist = self.relist.take().unwrap_or_default();
                // Objects deleted while the watch was down.
                for (key, (_, mark)) in &self.seen {
                    if !relist.seen.contains_key(key) {
                        marks.extend(mark.clone());
                    }
                }
                marks.extend(relist.marks);
                self.seen = relist.seen;
            }
            Event::Apply(obj) => {
                let (key, print, mark) = (object_key(&obj), fingerprint(&obj), (self.mark)(&obj));
                let before = self.seen.insert(key, (print, mark.clone()));
                if before.map(|s| s.0) != Some(print) {
                    marks.extend(mark);
                }
            }
            Event::Delete(obj) => {
                self.seen.remove(&object_key(&obj));
                marks.extend((self.mark)(&obj));
            }
        }
    }
}

/// EndpointSlices feed the [`ServiceIndex`]; the pods whose Services changed are marked.
pub(super) struct SliceSink(pub(super) Arc<Mutex<ServiceIndex>>);

impl Sink<EndpointSlice> for SliceSink {
    fn apply(&mut self, event: Event<EndpointSlice>, marks: &mut Vec<Dirty>) {
        let changed = self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .apply(&event);
        marks.extend(changed.into_iter().map(|(ns, name)| Dirty::Pod(ns, name)));
    }
}

/// Core Endpoints, read as the EndpointSlices they stand for (when the credentials
/// allow no EndpointSlices; see [`super::access::Access`]).
pub(super) struct EndpointsSink(pub(super) SliceSink);

impl Sink<Endpoints> for EndpointsSink {
    fn apply(&mut self, event: Event<Endpoints>, marks: &mut Vec<Dirty>) {
        let event = match event {
            Event::Init => Event::Init,
            Event::InitApply(e) => Event::InitApply(slice_from_endpoints(&e)),
            Event::InitDone => Event::InitDone,
            Event::Apply(e) => Event::Apply(slice_from_endpoints(&e)),
            Event::Delete(e) => Event::Delete(slice_from_endpoints(&e)),
        };
        self.0.apply(event, marks);
    }
}

/// Drops what no template reads (status, managed fields and volumes are never decoded,
/// see [`WatchedPod`]).
pub(super) fn trim_pod(pod: &mut WatchedPod) {
    trim_meta(&mut pod.metadata);
}

/// Drops what no template reads and what bloats memory.
pub(super) fn trim_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
    meta.managed_fields = None;
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    }
}

fn object_key<K: Resource>(obj: &K) -> String {
    let meta = obj.meta();
    format!(
        "{}/{}",
        meta.namespace.as_deref().unwrap_or_default(),
        meta.name.as_deref().unwrap_or_default()
    )
}

/// A hash of what templates and specs can see: everything but resourceVersion and status
/// (already trimmed). Custom resources hash their generation instead of their status.
fn fingerprint<K: Resource + Serialize>(obj: &K) -> u64 {
    let mut value = serde_json::to_value(obj).unwrap_or_default();
    if let Some(map) = value.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(|m| m.as_object_mut()) {
            meta.remove("resourceVersion");
        }
    }
    let mut hasher = DefaultHasher::new();
    value.to_string().hash(&mut hasher);
    hasher.finish()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::Node;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::runtime::reflector::{self, Store};

    use super::*;

    fn node(name: &str, label: &str) -> Node {
        Node {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([("zone".to_string(), label.to_string())].into()),
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn node_sink() -> (Store<Node>, StoreSink<Node>) {
        let (store, writer) = reflector::store();
        let sink = StoreSink {
            writer,
            mark: |n: &Node| n.metadata.name.clone().map(Dirty::Node),
            seen: HashMap::new(),
            relist: None,
        };
        (store, sink)
    }

    fn zone(store: &Store<Node>, name: &str) -> Option<String> {
        store
            .get(&reflector::ObjectRef::new(name))
            .and_then(|n| n.metadata.labels.as_ref()?.get("zone").cloned())
    }

    /// Replays a relist and checks, at every mark, that the store already holds what the
    /// mark asks to recompute from: a pass started right then must see the new object.
    #[test]
    fn a_relist_marks_changed_and_vanished_objects_only_after_the_store_swapped() {
        let (store, mut sink) = node_sink();
        let mut marks = Vec::new();
        for event in [
            Event::Init,
            Event::InitApply(node("a", "1")),
            Event::InitApply(node("b", "1")),
            Event::InitDone,
        ] {
            sink.apply(event, &mut marks);
        }
        marks.sort_by_key(|m| format!("{m:?}"));
        assert_eq!(marks, [Dirty::Node("a".into()), Dirty::Node("b".into())]);
        marks.clear();

        // The watch breaks; meanwhile a changes zone and b is deleted.
        for event in [Event::Init, Event::InitApply(node("a", "2"))] {
            sink.apply(event, &mut marks);
            assert!(
                marks.is_empty(),
                "marked {marks:?} while the store still held the old objects"
            );
        }
        assert_eq!(zone(&store, "a").as_deref(), Some("1"));
        sink.apply(Event::InitDone, &mut marks);
        assert_eq!(zone(&store, "a").as_deref(), Some("2"));
        assert!(zone(&store, "b").is_none());
        marks.sort_by_key(|m| format!("{m:?}"));
        assert_eq!(marks, [Dirty::Node("a".into()), Dirty::Node("b".into())]);
    }

    #[test]
    fn unchanged_objects_are_not_marked_again() {
        let (_store, mut sink) = node_sink();
        let mut marks = Vec::new();
        sink.apply(Event::Apply(node("a", "1")), &mut marks);
        assert_eq!(marks.len(), 1);
        marks.clear();
        let mut heartbeat = node("a", "1");
        heartbeat.metadata.resource_version = Some("42".into());
        sink.apply(Event::Apply(heartbeat), &mut marks);
        for event in [
            Event::Init,
            Event::InitApply(node("a", "1")),
            Event::InitDone,
        ] {
            sink.apply(event, &mut marks);
        }
        assert!(marks.is_empty(), "{marks:?}");
    }

    #[test]
    fn a_pod_relist_marks_only_changed_and_vanished_pods() {
        let cache = Arc::new(PodCache::default());
        let config = Arc::new(Config::from_yaml("trustDomain: td\nclusterName: c\n").unwrap());
        let mut sink = PodSink {
            cache: cache.clone(),
            config,
            building: None,
        };
        let pod = |name: &str, node: &str| {
            let json = serde_json::json!({
                "metadata": {"name": name, "namespace": "shop"},
                "spec": {"nodeName": node},
            });
            serde_json::from_str::<WatchedPod>(&json.to_string()).unwrap()
        };
        let mut marks = Vec::new();
        sink.apply(Event::Apply(pod("a", "n1")), &mut marks);
        sink.apply(Event::Apply(pod("b", "n1")), &mut marks);
        sink.apply(Event::Apply(pod("c", "n1")), &mut marks);
        marks.clear();
        for event in [
            Event::Init,
            Event::InitApply(pod("a", "n1")),
            Event::InitApply(pod("b", "n2")),
        ] {
            sink.apply(event, &mut marks);
        }
        assert!(marks.is_empty());
        assert_eq!(
            cache.get("shop", "b").unwrap().node_name.as_deref(),
            Some("n1")
        );
        sink.apply(Event::InitDone, &mut marks);
        marks.sort_by_key(|m| format!("{m:?}"));
        assert_eq!(
            marks,
            [
                Dirty::Pod("shop".into(), "b".into()),
                Dirty::Pod("shop".into(), "c".into())
            ]
        );
        assert_eq!(
            cache.get("shop", "b").unwrap().node_name.as_deref(),
            Some("n2")
        );
        assert!(cache.get("shop", "c").is_none());
    }
}
