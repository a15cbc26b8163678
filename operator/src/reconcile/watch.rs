//! Watches: reflector stores of trimmed objects, and the dirty marks each change makes.
//!
//! Objects are trimmed before they are stored (no managedFields, no status, no
//! last-applied annotation), and pods of ignored namespaces are not stored at all.
//! Nodes, namespaces and service accounts mark their pods only when something a
//! template can see changed, so node heartbeats cost nothing.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{Namespace, Node, Pod, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::dirty::DirtySet;
use super::pod_cache::{CachedPod, PodCache, PodKey};
use super::services::ServiceIndex;
use crate::config::Config;
use crate::crd::{ClusterSPIFFEID, ClusterStaticEntry};

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

/// The stores the reconciler reads.
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

/// Watches everything the reconciler reads, marking `dirty` as objects change. The
/// returned future runs the watches until dropped; `synced` is called once per kind
/// when its first listing is complete.
pub fn spawn(
    client: Client,
    config: Arc<Config>,
    dirty: Arc<DirtySet<Dirty>>,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
) -> (Stores, Vec<tokio::task::JoinHandle<()>>) {
    let mut tasks = Vec::new();
    let services = Arc::new(Mutex::new(ServiceIndex::default()));

    let pods = Arc::new(PodCache::default());
    {
        let (pods, dirty, synced, config) =
            (pods.clone(), dirty.clone(), synced.clone(), config.clone());
        let stream = watcher::watcher(Api::<Pod>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .modify(trim_pod);
        tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut building: Option<HashMap<PodKey, Arc<CachedPod>>> = None;
            let mut reported = false;
            while let Some(event) = stream.next().await {
                let event = match event {
                    Ok(event) => event,
                    Err(e) => {
                        tracing::warn!(kind = "pods", error = %e, "watch failed; retrying");
                        continue;
                    }
                };
                let keep = |pod: &Pod| {
                    !pod.metadata
                        .namespace
                        .as_deref()
                        .is_some_and(|ns| config.is_namespace_ignored(ns))
                };
                let compact = |pod: &Pod| {
                    CachedPod::new(pod)
                        .inspect_err(|e| tracing::warn!(error = %e, "cannot cache pod"))
                        .ok()
                };
                match event {
                    Event::Init => building = Some(HashMap::new()),
                    Event::InitApply(pod) => {
                        if keep(&pod)
                            && let (Some(map), Some(cached)) = (building.as_mut(), compact(&pod))
                        {
                            map.insert(
                                (cached.namespace.clone(), cached.name.clone()),
                                Arc::new(cached),
                            );
                        }
                    }
                    Event::InitDone => {
                        pods.replace(building.take().unwrap_or_default());
                        dirty.mark(Dirty::ClusterSpiffeIds);
                        if !reported {
                            reported = true;
                            synced("pods");
                        }
                    }
                    Event::Apply(pod) => {
                        if keep(&pod)
                            && let Some(cached) = compact(&pod)
                        {
                            let key = Dirty::Pod(cached.namespace.clone(), cached.name.clone());
                            pods.insert(cached);
                            dirty.mark(key);
                        }
                    }
                    Event::Delete(pod) => {
                        if let (Some(ns), Some(name)) =
                            (&pod.metadata.namespace, &pod.metadata.name)
                        {
                            pods.remove(ns, name);
                            dirty.mark(Dirty::Pod(ns.clone(), name.clone()));
                        }
                    }
                }
            }
        }));
    }
    let nodes = watch_fingerprinted::<Node>(
        Api::all(client.clone()),
        |node| {
            node.status = None;
            trim_meta(&mut node.metadata);
        },
        |node| node.metadata.name.clone().map(Dirty::Node),
        dirty.clone(),
        "nodes",
        synced.clone(),
        &mut tasks,
    );
    let namespaces = watch_fingerprinted::<Namespace>(
        Api::all(client.clone()),
        |ns| {
            ns.status = None;
            trim_meta(&mut ns.metadata);
        },
        |ns| ns.metadata.name.clone().map(Dirty::Namespace),
        dirty.clone(),
        "namespaces",
        synced.clone(),
        &mut tasks,
    );
    let service_accounts = watch_fingerprinted::<ServiceAccount>(
        Api::all(client.clone()),
        |sa| {
            sa.secrets = None;
            trim_meta(&mut sa.metadata);
        },
        |sa| {
            Some(Dirty::ServiceAccount(
                sa.metadata.namespace.clone()?,
                sa.metadata.name.clone()?,
            ))
        },
        dirty.clone(),
        "serviceaccounts",
        synced.clone(),
        &mut tasks,
    );
    let cluster_spiffe_ids = watch_fingerprinted::<ClusterSPIFFEID>(
        Api::all(client.clone()),
        |csid| trim_meta(&mut csid.metadata),
        |_| Some(Dirty::ClusterSpiffeIds),
        dirty.clone(),
        "clusterspiffeids",
        synced.clone(),
        &mut tasks,
    );
    let cluster_static_entries = watch_fingerprinted::<ClusterStaticEntry>(
        Api::all(client.clone()),
        |cse| trim_meta(&mut cse.metadata),
        |_| Some(Dirty::ClusterStaticEntries),
        dirty.clone(),
        "clusterstaticentries",
        synced.clone(),
        &mut tasks,
    );

    // EndpointSlices are not stored: only which pods each one lists.
    {
        let services = services.clone();
        let dirty = dirty.clone();
        let synced = synced.clone();
        let stream = watcher::watcher(
            Api::<EndpointSlice>::all(client),
            watcher::Config::default(),
        )
        .default_backoff();
        tasks.push(tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut reported = false;
            while let Some(event) = stream.next().await {
                let Ok(event) =
                    event.inspect_err(|e| tracing::warn!(error = %e, "watching endpointslices"))
                else {
                    continue;
                };
                let changed = services
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .apply(&event);
                dirty.mark_all(changed.into_iter().map(|(ns, name)| Dirty::Pod(ns, name)));
                if matches!(event, Event::InitDone) && !reported {
                    reported = true;
                    synced("endpointslices");
                }
            }
        }));
    }

    let stores = Stores {
        pods,
        nodes,
        namespaces,
        service_accounts,
        cluster_spiffe_ids,
        cluster_static_entries,
        services,
    };
    (stores, tasks)
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

#[allow(clippy::too_many_arguments)]
fn watch<K>(
    api: Api<K>,
    trim: impl Fn(&mut K) + Send + 'static,
    skip: impl Fn(&K) -> bool + Send + 'static,
    on_event: impl Fn(&Event<K>) + Send + 'static,
    kind: &'static str,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
) -> Store<K>
where
    K: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug
        + Send
        + Sync
        + 'static,
{
    let (store, writer) = reflector::store();
    let stream = watcher::watcher(api, watcher::Config::default())
        .default_backoff()
        .modify(trim)
        .filter(move |event| {
            let keep = match event {
                Ok(Event::Apply(o) | Event::Delete(o) | Event::InitApply(o)) => !skip(o),
                _ => true,
            };
            std::future::ready(keep)
        });
    let stream = reflector::reflector(writer, stream);
    tasks.push(tokio::spawn(drive(stream, on_event, kind, synced)));
    store
}

async fn drive<K>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    on_event: impl Fn(&Event<K>),
    kind: &'static str,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
) {
    let mut stream = std::pin::pin!(stream);
    let mut reported = false;
    while let Some(event) = stream.next().await {
        match event {
            Ok(event) => {
                on_event(&event);
                if matches!(event, Event::InitDone) && !reported {
                    reported = true;
                    synced(kind);
                }
            }
            Err(e) => tracing::warn!(kind, error = %e, "watch failed; retrying"),
        }
    }
}

/// Watches a kind whose changes matter only when its template-visible content changes:
/// status-only updates and heartbeats produce no marks.
fn watch_fingerprinted<K>(
    api: Api<K>,
    trim: impl Fn(&mut K) + Send + 'static,
    mark: impl Fn(&K) -> Option<Dirty> + Send + 'static,
    dirty: Arc<DirtySet<Dirty>>,
    kind: &'static str,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
    tasks: &mut Vec<tokio::task::JoinHandle<()>>,
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
    let seen: Mutex<HashMap<String, u64>> = Mutex::default();
    let relisting = Mutex::new(None::<HashMap<String, u64>>);
    let on_event = move |event: &Event<K>| {
        let mut seen = seen.lock().unwrap_or_else(|e| e.into_inner());
        let mut relisting = relisting.lock().unwrap_or_else(|e| e.into_inner());
        match event {
            Event::Init => *relisting = Some(HashMap::new()),
            Event::InitApply(obj) => {
                if let Some(building) = relisting.as_mut() {
                    building.insert(object_key(obj), fingerprint(obj));
                }
                if seen.get(&object_key(obj)) != Some(&fingerprint(obj))
                    && let Some(d) = mark(obj)
                {
                    dirty.mark(d);
                }
            }
            Event::InitDone => {
                // Objects deleted while the watch was down are in `seen` but not in the new
                // listing; the kinds marked through `mark` recompute from the stores, which
                // the reflector has replaced by now. A generic full mark covers them.
                let new = relisting.take().unwrap_or_default();
                if seen.keys().any(|k| !new.contains_key(k)) {
                    dirty.mark(Dirty::ClusterSpiffeIds);
                    dirty.mark(Dirty::ClusterStaticEntries);
                }
                *seen = new;
            }
            Event::Apply(obj) => {
                let print = fingerprint(obj);
                if seen.insert(object_key(obj), print) != Some(print)
                    && let Some(d) = mark(obj)
                {
                    dirty.mark(d);
                }
            }
            Event::Delete(obj) => {
                seen.remove(&object_key(obj));
                if let Some(d) = mark(obj) {
                    dirty.mark(d);
                }
            }
        }
    };
    watch(api, trim, |_| false, on_event, kind, synced, tasks)
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
