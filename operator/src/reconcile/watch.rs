//! Watches: one loop per kind keeps trimmed copies of the objects in a cache and marks
//! in the dirty set what each change affects.
//!
//! Every kind runs the same loop ([`drive`]) with the same relist rule. During a relist
//! (`Init`, `InitApply`..., `InitDone`) the cache keeps serving the old objects while the
//! new ones are buffered; at `InitDone` the buffer replaces the cache, and only then are
//! the objects that changed or vanished marked. A mark made before the swap would let a
//! pass recompute from the old objects and consider the change handled.
//!
//! Objects are trimmed before they are cached (no managedFields, no status, no
//! last-applied annotation), and pods of ignored namespaces are not cached at all.
//! Nodes, namespaces and service accounts mark their pods only when something a
//! template can see changed, so node heartbeats cost nothing.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store, store::Writer};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::access::{Access, slice_from_endpoints};
use super::backoff::LogLimiter;
use super::dirty::DirtySet;
use super::pod_cache::{CachedPod, PodCache, PodKey};
use super::services::ServiceIndex;
use crate::config::Config;
use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};
use crate::http::Health;

/// What needs recomputing.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Dirty {
    /// One pod, by namespace and name.
    Pod(String, String),
    /// Every pod of a namespace.
    Namespace(String),
    /// Every pod on a node.
    Node(String),
    /// Every pod running as a service account (namespace, name).
    ServiceAccount(String, String),
    /// The ClusterSPIFFEIDs changed: reload them and recompute every pod.
    ClusterSpiffeIds,
    /// The ClusterStaticEntries changed: re-read them all.
    ClusterStaticEntries,
    /// Re-list the server's entries and recompute everything.
    Resync,
    /// Retry the writes that failed.
    Retry,
}

/// The stores the reconciler reads. Kinds that are not watched stay empty.
#[derive(Clone)]
pub struct Stores {
    /// Pods outside ignored namespaces, compacted.
    pub pods: Arc<PodCache>,
    /// Nodes.
    pub nodes: Store<Node>,
    /// Namespaces.
    pub namespaces: Store<Namespace>,
    /// Service accounts.
    pub service_accounts: Store<ServiceAccount>,
    /// ClusterSPIFFEIDs.
    pub cluster_spiffe_ids: Store<ClusterSPIFFEID>,
    /// ClusterStaticEntries.
    pub cluster_static_entries: Store<ClusterStaticEntry>,
    /// Which Services' EndpointSlices reference each pod.
    pub services: Arc<Mutex<ServiceIndex>>,
}

/// Which kinds to watch: what a disabled `reconcile.*` switch does not need is not
/// watched, so a deployment without pod RBAC, or a cluster without one of the CRDs,
/// still converges; and what the credentials allow (see [`Access`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchOptions {
    /// ClusterSPIFFEIDs and what pod entries are rendered from: pods, nodes,
    /// namespaces, service accounts, EndpointSlices (`reconcile.clusterSPIFFEIDs`).
    pub cluster_spiffe_ids: bool,
    /// ClusterStaticEntries (`reconcile.clusterStaticEntries`).
    pub cluster_static_entries: bool,
    /// What the credentials may list: EndpointSlices or else core Endpoints, and
    /// whether ServiceAccounts are watched at all.
    pub access: Access,
    /// The label selector of the ClusterSPIFFEID watch (`filterByClassName`,
    /// `clusterSPIFFEIDLabelSelectorConfig`); `None` watches them all.
    pub cluster_spiffe_id_selector: Option<String>,
}

impl WatchOptions {
    /// The kinds `config` reconciles, with everything readable.
    pub fn from_config(config: &Config) -> Self {
        Self {
            cluster_spiffe_ids: config.reconcile.cluster_spiffe_ids,
            cluster_static_entries: config.reconcile.cluster_static_entries,
            access: Access::default(),
            cluster_spiffe_id_selector: config.cluster_spiffe_id_label_selector.clone(),
        }
    }

    /// The kinds watched, as `synced` names them.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.cluster_spiffe_ids {
            kinds.extend(["pods", "nodes", "namespaces", "clusterspiffeids"]);
            if self.access.service_accounts {
                kinds.push("serviceaccounts");
            }
            kinds.push(if self.access.endpoint_slices {
                "endpointslices"
            } else {
                "endpoints"
            });
        }
        if self.cluster_static_entries {
            kinds.push("clusterstaticentries");
        }
        kinds
    }
}

/// The running watches.
pub struct Watches {
    /// Their caches.
    pub stores: Stores,
    /// One task per kind; a task that ends turns `/healthz` unhealthy.
    pub tasks: Vec<tokio::task::JoinHandle<()>>,
    /// The kinds watched (see [`WatchOptions::kinds`]).
    pub kinds: Vec<&'static str>,
}

/// What every watch loop shares.
#[derive(Clone)]
struct Shared {
    dirty: Arc<DirtySet<Dirty>>,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
    health: Arc<Health>,
}

/// Starts the watches `options` asks for, marking `dirty` as objects change; `synced`
/// is called once per kind when its first listing is in the cache.
pub fn spawn(
    client: Client,
    config: Arc<Config>,
    options: WatchOptions,
    dirty: Arc<DirtySet<Dirty>>,
    health: Arc<Health>,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
) -> Watches {
    let shared = Shared {
        dirty,
        synced,
        health,
    };
    let mut watches = Watches {
        stores: Stores {
            pods: Arc::default(),
            nodes: reflector::store().0,
            namespaces: reflector::store().0,
            service_accounts: reflector::store().0,
            cluster_spiffe_ids: reflector::store().0,
            cluster_static_entries: reflector::store().0,
            services: Arc::default(),
        },
        tasks: Vec::new(),
        kinds: Vec::new(),
    };
    if options.cluster_spiffe_ids {
        let pods = PodSink {
            cache: watches.stores.pods.clone(),
            config,
            building: None,
        };
        watches.start(
            Api::<Pod>::all(client.clone()),
            trim_pod,
            pods,
            "pods",
            &shared,
        );
        watches.stores.nodes = watches.start_store(
            Api::all(client.clone()),
            |node: &mut Node| {
                node.status = None;
                trim_meta(&mut node.metadata);
            },
            |node| node.metadata.name.clone().map(Dirty::Node),
            "nodes",
            &shared,
        );
        watches.stores.namespaces = watches.start_store(
            Api::all(client.clone()),
            |ns: &mut Namespace| {
                ns.status = None;
                trim_meta(&mut ns.metadata);
            },
            |ns| ns.metadata.name.clone().map(Dirty::Namespace),
            "namespaces",
            &shared,
        );
        if options.access.service_accounts {
            watches.stores.service_accounts = watches.start_store(
                Api::all(client.clone()),
                |sa: &mut ServiceAccount| {
                    sa.secrets = None;
                    trim_meta(&mut sa.metadata);
                },
                |sa| {
                    Some(Dirty::ServiceAccount(
                        sa.metadata.namespace.clone()?,
                        sa.metadata.name.clone()?,
                    ))
                },
                "serviceaccounts",
                &shared,
            );
        }
        let mut selected = watcher::Config::default();
        if let Some(selector) = &options.cluster_spiffe_id_selector {
            selected = selected.labels(selector);
        }
        watches.stores.cluster_spiffe_ids = watches.start_store_with(
            Api::all(client.clone()),
            selected,
            |csid: &mut ClusterSPIFFEID| trim_meta(&mut csid.metadata),
            |_| Some(Dirty::ClusterSpiffeIds),
            "clusterspiffeids",
            &shared,
        );
        // EndpointSlices (or Endpoints) are not stored: only which pods each one lists.
        let slices = SliceSink(watches.stores.services.clone());
        if options.access.endpoint_slices {
            watches.start(
                Api::<EndpointSlice>::all(client.clone()),
                |_| {},
                slices,
                "endpointslices",
                &shared,
            );
        } else {
            watches.start(
                Api::<Endpoints>::all(client.clone()),
                |_| {},
                EndpointsSink(slices),
                "endpoints",
                &shared,
            );
        }
    }
    if options.cluster_static_entries {
        watches.stores.cluster_static_entries = watches.start_store(
            Api::all(client),
            |cse: &mut ClusterStaticEntry| trim_meta(&mut cse.metadata),
            |_| Some(Dirty::ClusterStaticEntries),
            "clusterstaticentries",
            &shared,
        );
    }
    watches
}

impl Watches {
    fn start<K, S>(
        &mut self,
        api: Api<K>,
        trim: fn(&mut K),
        sink: S,
        kind: &'static str,
        shared: &Shared,
    ) where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        S: Sink<K>,
    {
        self.start_with(api, watcher::Config::default(), trim, sink, kind, shared);
    }

    fn start_with<K, S>(
        &mut self,
        api: Api<K>,
        config: watcher::Config,
        trim: fn(&mut K),
        sink: S,
        kind: &'static str,
        shared: &Shared,
    ) where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        S: Sink<K>,
    {
        let stream = watcher::watcher(api, config).default_backoff().modify(trim);
        self.kinds.push(kind);
        self.tasks
            .push(tokio::spawn(drive(stream, sink, kind, shared.clone())));
    }

    fn start_store<K>(
        &mut self,
        api: Api<K>,
        trim: fn(&mut K),
        mark: fn(&K) -> Option<Dirty>,
        kind: &'static str,
        shared: &Shared,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        self.start_store_with(api, watcher::Config::default(), trim, mark, kind, shared)
    }

    fn start_store_with<K>(
        &mut self,
        api: Api<K>,
        config: watcher::Config,
        trim: fn(&mut K),
        mark: fn(&K) -> Option<Dirty>,
        kind: &'static str,
        shared: &Shared,
    ) -> Store<K>
    where
        K: Resource<DynamicType = ()>
            + Clone
            + DeserializeOwned
            + Serialize
            + std::fmt::Debug
            + Send
            + Sync
            + 'static,
    {
        let (store, writer) = reflector::store();
        let sink = StoreSink {
            writer,
            mark,
            seen: HashMap::new(),
            relist: None,
        };
        self.start_with(api, config, trim, sink, kind, shared);
        store
    }
}

/// Where one kind's events go: `apply` updates the cache and adds what to mark.
trait Sink<K>: Send + 'static {
    fn apply(&mut self, event: Event<K>, marks: &mut Vec<Dirty>);
}

/// The one watch loop: applies each event to the sink, then marks what it reported.
async fn drive<K, S: Sink<K>>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    mut sink: S,
    kind: &'static str,
    shared: Shared,
) {
    // Dropped when the loop ends or panics: /healthz then reports the dead watch.
    let _alive = shared.health.task_alive(kind);
    let mut stream = std::pin::pin!(stream);
    let mut reported = false;
    let mut errors = LogLimiter::new(Duration::from_secs(60));
    let mut marks = Vec::new();
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                let done = matches!(event, Event::InitDone);
                sink.apply(event, &mut marks);
                if !marks.is_empty() {
                    shared.dirty.mark_all(marks.drain(..));
                }
                if done && !reported {
                    reported = true;
                    (shared.synced)(kind);
                }
            }
            Err(e) => {
                if let Some(suppressed) = errors.allow() {
                    tracing::warn!(kind, error = %e, suppressed, "watch failed; retrying with backoff");
                }
            }
        }
    }
}

/// Pods go into the compact [`PodCache`]; each pod marks itself.
struct PodSink {
    cache: Arc<PodCache>,
    config: Arc<Config>,
    building: Option<HashMap<PodKey, Arc<CachedPod>>>,
}

impl PodSink {
    fn compact(&self, pod: &Pod) -> Option<CachedPod> {
        let ignored = pod
            .metadata
            .namespace
            .as_deref()
            .is_some_and(|ns| !self.config.watches_namespace(ns));
        if ignored {
            return None;
        }
        CachedPod::new(pod)
            .inspect_err(|e| {
                tracing::warn!(pod = ?pod.metadata.name, namespace = ?pod.metadata.namespace, error = %e, "cannot cache pod")
            })
            .ok()
    }
}

impl Sink<Pod> for PodSink {
    fn apply(&mut self, event: Event<Pod>, marks: &mut Vec<Dirty>) {
        match event {
            Event::Init => self.building = Some(HashMap::new()),
            Event::InitApply(pod) => {
                if let Some(cached) = self.compact(&pod) {
                    self.building.get_or_insert_default().insert(
                        (cached.namespace.clone(), cached.name.clone()),
                        Arc::new(cached),
                    );
                }
            }
            Event::InitDone => {
                let changed = self.cache.replace(self.building.take().unwrap_or_default());
                marks.extend(changed.into_iter().map(|(ns, name)| Dirty::Pod(ns, name)));
            }
            Event::Apply(pod) => {
                if let Some(cached) = self.compact(&pod) {
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

/// A reflector store, marking an object only when what templates and specs can see
/// changed: status-only updates and heartbeats produce no marks.
struct StoreSink<K: Resource<DynamicType = ()> + Clone + 'static> {
    writer: Writer<K>,
    mark: fn(&K) -> Option<Dirty>,
    /// Per object key: its fingerprint and its mark (to mark it when it vanishes).
    seen: HashMap<String, (u64, Option<Dirty>)>,
    relist: Option<Relist>,
}

/// A relist in progress: the new listing and the marks held back until `InitDone`.
#[derive(Default)]
struct Relist {
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
struct SliceSink(Arc<Mutex<ServiceIndex>>);

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
/// allow no EndpointSlices; see [`Access`]).
struct EndpointsSink(SliceSink);

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

/// Drops what no template reads: status, managed fields and volumes (a k8s-openapi
/// Volume holds every source type inline, 3 KB each even when empty).
fn trim_pod(pod: &mut Pod) {
    pod.status = None;
    trim_meta(&mut pod.metadata);
    if let Some(spec) = pod.spec.as_mut() {
        spec.volumes = None;
    }
}

/// Drops what no template reads and what bloats memory.
fn trim_meta(meta: &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) {
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
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
        let pod = |name: &str, node: &str| Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("shop".into()),
                ..Default::default()
            },
            spec: Some(k8s_openapi::api::core::v1::PodSpec {
                node_name: Some(node.into()),
                ..Default::default()
            }),
            status: None,
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
