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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::future::BoxFuture;
use futures::stream::BoxStream;
use futures::{FutureExt, Stream, StreamExt};
use k8s_openapi::api::core::v1::{Endpoints, Namespace, Node, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::WatchStreamExt;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::access::Access;
use super::backoff::LogLimiter;
use super::dirty::DirtySet;
use super::pod_cache::PodCache;
use super::pods::ClusterSpiffeIds;
use super::services::ServiceIndex;
use super::sinks::{EndpointsSink, PodSink, Sink, SliceSink, StoreSink, trim_meta, trim_pod};
use super::watched_pod::WatchedPod;
use crate::config::Config;
use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};
use crate::http::Health;
use crate::template::PodFields;

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
    /// The ClusterFederatedTrustDomains changed (marked in the federation loop's set).
    ClusterFederatedTrustDomains,
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
    /// ClusterFederatedTrustDomains.
    pub cluster_federated_trust_domains: Store<ClusterFederatedTrustDomain>,
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
    /// Pods, nodes, namespaces and service accounts for annotation identities
    /// (`annotationIdentities.enabled`), even when ClusterSPIFFEIDs are not reconciled.
    pub annotations: bool,
    /// ClusterStaticEntries (`reconcile.clusterStaticEntries`).
    pub cluster_static_entries: bool,
    /// ClusterFederatedTrustDomains (`reconcile.clusterFederatedTrustDomains`).
    pub cluster_federated_trust_domains: bool,
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
            annotations: config.annotation_identities.enabled,
            cluster_static_entries: config.reconcile.cluster_static_entries,
            cluster_federated_trust_domains: config.reconcile.cluster_federated_trust_domains,
            access: Access::default(),
            cluster_spiffe_id_selector: config.cluster_spiffe_id_label_selector.clone(),
        }
    }

    /// The kinds watched, as `synced` names them.
    pub fn kinds(&self) -> Vec<&'static str> {
        let mut kinds = Vec::new();
        if self.watches_pods() {
            kinds.extend(["pods", "nodes", "namespaces"]);
            if self.access.service_accounts {
                kinds.push("serviceaccounts");
            }
        }
        if self.cluster_spiffe_ids {
            kinds.push("clusterspiffeids");
            kinds.push(if self.access.endpoint_slices {
                "endpointslices"
            } else {
                "endpoints"
            });
        }
        if self.cluster_static_entries {
            kinds.push("clusterstaticentries");
        }
        if self.cluster_federated_trust_domains {
            kinds.push("clusterfederatedtrustdomains");
        }
        kinds
    }

    /// Whether pods and what their entries are rendered from are watched.
    pub fn watches_pods(&self) -> bool {
        self.cluster_spiffe_ids || self.annotations
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

/// Starts the watches `options` asks for, marking `dirty` as objects change (and
/// `federation_dirty`, the federation loop's own set, for ClusterFederatedTrustDomains);
/// `synced` is called once per kind when its first listing is in the cache.
pub fn spawn(
    client: Client,
    config: Arc<Config>,
    options: WatchOptions,
    dirty: Arc<DirtySet<Dirty>>,
    federation_dirty: Arc<DirtySet<Dirty>>,
    health: Arc<Health>,
    synced: Arc<dyn Fn(&'static str) + Send + Sync>,
) -> Watches {
    let shared = Shared {
        dirty,
        synced,
        health,
    };
    let federation = Shared {
        dirty: federation_dirty,
        ..shared.clone()
    };
    let mut watches = Watches {
        stores: Stores {
            pods: Arc::default(),
            nodes: reflector::store().0,
            namespaces: reflector::store().0,
            service_accounts: reflector::store().0,
            cluster_spiffe_ids: reflector::store().0,
            cluster_static_entries: reflector::store().0,
            cluster_federated_trust_domains: reflector::store().0,
            services: Arc::default(),
        },
        tasks: Vec::new(),
        kinds: Vec::new(),
    };
    if options.watches_pods() {
        watches.stores.nodes = watches.start_store(
            Api::all(client.clone()),
            watcher::Config::default(),
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
            watcher::Config::default(),
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
                watcher::Config::default(),
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
    }
    if options.cluster_spiffe_ids {
        let mut selected = watcher::Config::default();
        if let Some(selector) = &options.cluster_spiffe_id_selector {
            selected = selected.labels(selector);
        }
        watches.stores.cluster_spiffe_ids = watches.start_store(
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
                watcher::Config::default(),
                |_| {},
                slices,
                "endpointslices",
                &shared,
            );
        } else {
            watches.start(
                Api::<Endpoints>::all(client.clone()),
                watcher::Config::default(),
                |_| {},
                EndpointsSink(slices),
                "endpoints",
                &shared,
            );
        }
    }
    if options.cluster_federated_trust_domains {
        watches.stores.cluster_federated_trust_domains = watches.start_store(
            Api::all(client.clone()),
            watcher::Config::default(),
            |cftd: &mut ClusterFederatedTrustDomain| trim_meta(&mut cftd.metadata),
            |_| Some(Dirty::ClusterFederatedTrustDomains),
            "clusterfederatedtrustdomains",
            &federation,
        );
    }
    if options.watches_pods() {
        // Pods are cached with the fields the ClusterSPIFFEIDs' templates read: known
        // once the ClusterSPIFFEIDs are.
        let csids = watches.stores.cluster_spiffe_ids.clone();
        let cache = watches.stores.pods.clone();
        let watched = options.cluster_spiffe_ids;
        let sink_config = config.clone();
        let ready = async move {
            if watched {
                // Err: the ClusterSPIFFEID watch ended; its health check reports it.
                let _ = csids.wait_until_ready().await;
            }
            cache.want_exactly(ClusterSpiffeIds::from_store(&config, &csids).pod_fields);
        };
        let sink = PodSink {
            cache: watches.stores.pods.clone(),
            config: sink_config,
            building: None,
        };
        let events = pod_events(Api::all(client.clone()), watches.stores.pods.clone(), ready);
        watches.kinds.push("pods");
        watches
            .tasks
            .push(tokio::spawn(drive(events, sink, "pods", shared.clone())));
    }
    if options.cluster_static_entries {
        watches.stores.cluster_static_entries = watches.start_store(
            Api::all(client),
            watcher::Config::default(),
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
        self.start(api, config, trim, sink, kind, shared);
        store
    }
}

/// The pod watch. It starts once `ready` has set the fields to cache pods with, and lists
/// every pod again (a new watch) whenever the reconciler wants fields the cached pods do
/// not hold ([`PodCache::want`]).
fn pod_events(
    api: Api<WatchedPod>,
    cache: Arc<PodCache>,
    ready: impl Future<Output = ()> + Send + 'static,
) -> impl Stream<Item = Result<Event<WatchedPod>, watcher::Error>> + Send {
    type Events = BoxStream<'static, Result<Event<WatchedPod>, watcher::Error>>;
    let start = move || -> Events {
        watcher::watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .modify(trim_pod)
            .boxed()
    };
    struct State<S> {
        ready: Option<BoxFuture<'static, ()>>,
        wanted: tokio::sync::watch::Receiver<Arc<PodFields>>,
        /// False once the cache is gone (shutting down): the current watch is kept.
        follows_wanted: bool,
        events: Option<Events>,
        start: S,
    }
    let state = State {
        ready: Some(ready.boxed()),
        wanted: cache.subscribe(),
        follows_wanted: true,
        events: None,
        start,
    };
    futures::stream::unfold(state, |mut state| async move {
        if let Some(ready) = state.ready.take() {
            ready.await;
        }
        loop {
            if state.events.is_none() {
                state.wanted.borrow_and_update();
                state.events = Some((state.start)());
            }
            let events = state.events.as_mut()?;
            if !state.follows_wanted {
                return events.next().await.map(|event| (event, state));
            }
            let restart = tokio::select! {
                event = events.next() => return event.map(|event| (event, state)),
                changed = state.wanted.changed() => changed.is_ok(),
            };
            if restart {
                tracing::info!("listing every pod again, for pod fields the templates now read");
                state.events = None;
            } else {
                state.follows_wanted = false;
            }
        }
    })
}

/// The one watch loop: applies each event to the sink, then marks what it reported.
async fn drive<K, S: Sink<K>>(
    stream: impl Stream<Item = Result<Event<K>, watcher::Error>>,
    mut sink: S,
    kind: &'static str,
    shared: Shared,
) {
    // A watch stream never ends by itself: if this loop returns or panics, /healthz
    // reports the dead watch.
    let alive = shared.health.task_alive(kind);
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
    alive.ended();
}
