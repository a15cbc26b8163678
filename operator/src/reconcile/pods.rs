//! Pod entries: which ClusterSPIFFEIDs are in scope, and the entries one pod gets from
//! them with the objects it depends on (its Node, Namespace, ServiceAccount, Services).

use std::collections::hash_map::Entry;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::ResourceExt;
use kube::runtime::reflector::{ObjectRef, Store};

use super::desired::{Outcome, pod_entries};
use super::pod_cache::CachedPod;
use super::state::KeyId;
use super::watch::Stores;
use crate::config::Config;
use crate::crd::ClusterSPIFFEID;
use crate::render::{Age, ParentTemplate, PodIdentity, PodInput, SpecError, service_dns_names};
use crate::spire::{EntrySpec, SpiffeId};
use crate::template::{ObjectData, PodFields, TemplateData};

/// The ClusterSPIFFEIDs as last loaded from the store, sorted by what the reconciler
/// does with them.
#[derive(Debug, Default)]
pub struct ClusterSpiffeIds {
    /// Parsed and in our class: these render pod entries.
    pub valid: Vec<Arc<PodIdentity>>,
    /// In our class but unusable, with the reason (reported as InvalidSpec).
    pub invalid: BTreeMap<String, SpecError>,
    /// Another operator's (className): no entries, no status.
    pub out_of_class: BTreeSet<String>,
    /// What the valid ones' templates read of a pod (the whole pod with annotation
    /// identities): only that is cached and decoded to render.
    pub pod_fields: PodFields,
}

impl ClusterSpiffeIds {
    /// Loads them from the store; empty when `reconcile.clusterSPIFFEIDs` is off.
    pub fn load(config: &Config, stores: &Stores) -> Self {
        Self::from_store(config, &stores.cluster_spiffe_ids)
    }

    /// Loads them from `store`; empty when `reconcile.clusterSPIFFEIDs` is off.
    pub fn from_store(config: &Config, store: &Store<ClusterSPIFFEID>) -> Self {
        let mut loaded = Self::default();
        if config.reconcile.cluster_spiffe_ids {
            loaded.parse(config, store);
        }
        // Annotation identities render templates from annotations, unknown in advance,
        // and read the whole pod.
        loaded.pod_fields = if config.annotation_identities.enabled {
            PodFields::everything()
        } else {
            PodFields::of(loaded.valid.iter().flat_map(|i| i.templates()))
        };
        loaded
    }

    fn parse(&mut self, config: &Config, store: &Store<ClusterSPIFFEID>) {
        let loaded = self;
        for resource in store.state() {
            let name = resource.name_any();
            if !in_class(config, resource.spec.class_name.as_deref()) {
                loaded.out_of_class.insert(name);
                continue;
            }
            match PodIdentity::parse(&resource) {
                Ok(identity) => loaded.valid.push(Arc::new(identity)),
                Err(e) => {
                    loaded.invalid.insert(name, e);
                }
            }
        }
    }
}

/// What the reconciler remembers about one pod between passes (for statuses).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// What each selecting ClusterSPIFFEID did for the pod.
    pub outcomes: Vec<(Arc<str>, Outcome)>,
    /// (winning ClusterSPIFFEID, key) per entry of the pod.
    pub owners: Vec<(Arc<str>, KeyId)>,
    /// No node yet (no `spec.nodeName`): no entry, no error.
    pub unscheduled: bool,
}

/// Per node: its template data and the parent ID rendered from it, shared by the
/// node's pods (they were built again for every pod); per Namespace and
/// ServiceAccount: their template data. An entry holds while the store holds the same
/// object.
#[derive(Default)]
pub struct NodeDataCache {
    nodes: HashMap<String, NodeData>,
    namespaces: HashMap<String, (Arc<Namespace>, ObjectData)>,
    service_accounts: HashMap<(String, String), (Arc<ServiceAccount>, ObjectData)>,
}

pub(super) struct NodeData {
    node: Arc<Node>,
    /// Cluster and node data for templates.
    pub(super) data: TemplateData,
    /// `parentIDTemplate` rendered with it.
    pub(super) parent: Result<SpiffeId, SpecError>,
}

impl NodeDataCache {
    /// Forgets every object (the cache lives for one pass).
    pub fn clear(&mut self) {
        self.nodes.clear();
        self.namespaces.clear();
        self.service_accounts.clear();
    }

    /// The template data of `namespace`.
    pub(super) fn namespace(&mut self, namespace: &Arc<Namespace>) -> ObjectData {
        shared_meta(&mut self.namespaces, namespace.name_any(), namespace)
    }

    /// The template data of `service_account`.
    pub(super) fn service_account(&mut self, service_account: &Arc<ServiceAccount>) -> ObjectData {
        let key = (
            service_account.namespace().unwrap_or_default(),
            service_account.name_any(),
        );
        shared_meta(&mut self.service_accounts, key, service_account)
    }
}

/// The template data of `object`, built once while the store holds the same object.
fn shared_meta<K, T>(
    held: &mut HashMap<K, (Arc<T>, ObjectData)>,
    key: K,
    object: &Arc<T>,
) -> ObjectData
where
    K: std::hash::Hash + Eq,
    T: kube::Resource,
{
    match held.entry(key) {
        Entry::Occupied(mut slot) => {
            if !Arc::ptr_eq(&slot.get().0, object) {
                slot.insert((object.clone(), ObjectData::of(object.meta())));
            }
            slot.get().1.clone()
        }
        Entry::Vacant(slot) => {
            let data = ObjectData::of(object.meta());
            slot.insert((object.clone(), data.clone()));
            data
        }
    }
}

/// Everything rendering a pod reads besides the pod.
pub struct PodRenderer<'a> {
    /// The configuration.
    pub config: &'a Config,
    /// The cluster domain (may be empty).
    pub cluster_domain: &'a str,
    /// The watched objects.
    pub stores: &'a Stores,
    /// `parentIDTemplate`, parsed.
    pub parent: &'a ParentTemplate,
    /// The ClusterSPIFFEIDs in scope.
    pub cluster_spiffe_ids: &'a ClusterSpiffeIds,
    /// Node data already built in this pass.
    pub node_data: &'a mut NodeDataCache,
}

impl PodRenderer<'_> {
    /// The entries of one pod with the age of the ClusterSPIFFEID that declares each,
    /// and the pod's record (`None` when nothing selects the pod).
    pub fn render(&mut self, cached: &CachedPod) -> (Vec<(Age, EntrySpec)>, Option<PodRecord>) {
        let config = self.config;
        let stores = self.stores;
        let namespace_name = cached.namespace.clone();
        if config.is_namespace_ignored(&namespace_name) {
            return (Vec::new(), None);
        }
        let namespace = stores.namespaces.get(&ObjectRef::new(&namespace_name));
        let namespace_labels = namespace.as_ref().and_then(|n| n.metadata.labels.as_ref());
        let selected: Vec<&Arc<PodIdentity>> = self
            .cluster_spiffe_ids
            .valid
            .iter()
            .filter(|i| {
                i.namespace_selector.matches(namespace_labels)
                    && i.pod_selector.matches_labels(|key| cached.labels.get(key))
            })
            .collect();
        if selected.is_empty() {
            return (Vec::new(), None);
        }
        let Some(node_name) = cached.node_name.as_deref() else {
            // Pending: no entry and no error (spire-controller-manager skips pods
            // without a nodeName since #741).
            let record = PodRecord {
                unscheduled: true,
                ..Default::default()
            };
            return (Vec::new(), Some(record));
        };
        let Some(node) = stores.nodes.get(&ObjectRef::new(node_name)) else {
            // Scheduled to a node we do not know: the parent ID cannot be rendered, which
            // spire-controller-manager reports as a render failure.
            let mut outcomes: Vec<(Arc<str>, Outcome)> = selected
                .iter()
                .map(|i| {
                    let error = SpecError {
                        field: "spec.nodeName".into(),
                        message: format!("Node {node_name} not found"),
                    };
                    (i.name.clone(), Outcome::RenderFailed(Box::new(error)))
                })
                .collect();
            outcomes.sort_by(|a, b| a.0.cmp(&b.0));
            let record = PodRecord {
                outcomes,
                ..Default::default()
            };
            return (Vec::new(), Some(record));
        };
        // The JSON was written by us (CachedPod::new): failing here is a bug.
        let decoded = self
            .cluster_spiffe_ids
            .pod_fields
            .decode(cached.json_text());
        let (metadata, spec) = match decoded {
            Ok(decoded) => decoded,
            Err(e) => {
                tracing::error!(pod = %format!("{}/{}", cached.namespace, cached.name), error = %e, "decoding a cached pod");
                return (Vec::new(), None);
            }
        };
        let uid = metadata
            .get("uid")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
            .to_owned();

        let trust_domain = &config.trust_domain;
        let node = self.node_data(node, trust_domain);
        let parent = node.parent.clone();
        let mut data = node.data.clone().with_pod_json(metadata, spec);
        if let Some(namespace) = &namespace {
            data = data.with_namespace_meta(self.node_data.namespace(namespace));
        }
        if let Some(sa) = stores
            .service_accounts
            .get(&ObjectRef::new(&cached.service_account).within(&namespace_name))
        {
            data = data.with_service_account_meta(self.node_data.service_account(&sa));
        }
        let dns_names: Vec<String> = if selected.iter().any(|i| i.auto_populate_dns_names) {
            let services = stores
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .services_of(&namespace_name, &cached.name, &uid);
            let mut names: Vec<String> = services
                .iter()
                .flat_map(|s| service_dns_names(s, &namespace_name, self.cluster_domain))
                .collect();
            names.sort();
            names
        } else {
            Vec::new()
        };
        let selected_names: HashSet<&str> = selected.iter().map(|i| &*i.name).collect();
        let result = pod_entries(
            &self.cluster_spiffe_ids.valid,
            |i| selected_names.contains(&*i.name),
            |i| {
                let parent = parent.as_ref().map_err(Clone::clone)?;
                let input = PodInput {
                    data: &data,
                    pod_uid: &uid,
                    parent_id: parent,
                    service_dns_names: &dns_names,
                };
                i.render(&input, trust_domain)
            },
        );
        let owners = (result.owners.iter().cloned())
            .zip(result.entries.iter().map(|e| KeyId::of(&e.key)))
            .collect();
        // Kept until the pod next changes: no spare capacity.
        let mut outcomes = result.outcomes;
        outcomes.shrink_to_fit();
        let record = PodRecord {
            outcomes,
            owners,
            unscheduled: false,
        };
        let entries = result.owner_ages.into_iter().zip(result.entries).collect();
        (entries, Some(record))
    }
}

impl PodRenderer<'_> {
    /// The node's template data and parent ID, built once per node and pass.
    pub(super) fn node_data(&mut self, node: Arc<Node>, trust_domain: &str) -> &NodeData {
        let name = node.name_any();
        let fresh = |node: Arc<Node>| {
            let data =
                TemplateData::new(trust_domain, &self.config.cluster_name, self.cluster_domain)
                    .with_node(&node);
            let parent = self.parent.render(&data, trust_domain);
            NodeData { node, data, parent }
        };
        match self.node_data.nodes.entry(name) {
            Entry::Occupied(mut held) => {
                if !Arc::ptr_eq(&held.get().node, &node) {
                    held.insert(fresh(node));
                }
                held.into_mut()
            }
            Entry::Vacant(slot) => slot.insert(fresh(node)),
        }
    }
}

/// spire-controller-manager's class rule: a resource is handled when its className equals
/// ours, or it has none and classless resources are watched.
pub fn in_class(config: &Config, class_name: Option<&str>) -> bool {
    let class_name = class_name.unwrap_or_default();
    class_name == config.class_name.as_deref().unwrap_or_default()
        || (class_name.is_empty() && config.watch_classless)
}
