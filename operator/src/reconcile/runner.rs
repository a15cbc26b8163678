//! The reconcile loop: drains the dirty set, recomputes what changed, writes the
//! difference to SPIRE, then reports status. The only part that owns clients.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Resource, ResourceExt};

use super::desired::{Outcome, pod_entries};
use super::diff::Plan;
use super::dirty::DirtySet;
use super::ownership::Ownership;
use super::pod_cache::CachedPod;
use super::state::{Desired, KeyId, Mirror, Source, plan_all, plan_keys};
use super::watch::{Dirty, Stores};
use super::writer::{self, WriteReport};
use crate::config::Config;
use crate::crd::{ClusterSPIFFEID, ClusterSPIFFEIDStats, ClusterStaticEntry};
use crate::http::Health;
use crate::metrics::Metrics;
use crate::render::{
    ParentTemplate, PodIdentity, PodInput, SpecError, StaticEntry, service_dns_names,
};
use crate::spire::api::types::EntryMask;
use crate::spire::{EntryKey, EntrySpec, SpireClient, managed_fields};
use crate::status::{self, Readiness};
use crate::template::TemplateData;

/// ConfigMap (in the operator's namespace) remembering adopted entry IDs.
pub const ADOPTED_CONFIG_MAP: &str = "spire-operator-adopted-entries";
const ADOPTED_KEY: &str = "ids";
const FIELD_MANAGER: &str = "spire-operator";
/// Events published per pass at most, so a broken template does not flood the API server.
const EVENTS_PER_PASS: usize = 20;

/// Everything the loop needs from outside.
pub struct Context {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The cluster domain (configured or detected; may be empty).
    pub cluster_domain: String,
    /// The operator's namespace (for the adoption ConfigMap).
    pub namespace: String,
    /// Kubernetes client.
    pub kube: kube::Client,
    /// SPIRE client.
    pub spire: SpireClient,
    /// The watched objects.
    pub stores: Stores,
    /// Pending work.
    pub dirty: Arc<DirtySet<Dirty>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness.
    pub health: Arc<Health>,
    /// Event publisher.
    pub recorder: Recorder,
}

/// Why the loop cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `parentIDTemplate` does not parse.
    #[error("config key parentIDTemplate")]
    ParentTemplate(#[source] SpecError),
    /// The adoption ConfigMap could not be read.
    #[error("reading ConfigMap {namespace}/{ADOPTED_CONFIG_MAP}")]
    ReadAdopted {
        /// The operator's namespace.
        namespace: String,
        /// The API error.
        #[source]
        source: kube::Error,
    },
}

#[derive(Debug, Default, Clone)]
struct PodRecord {
    outcomes: Vec<(String, Outcome)>,
    /// (winning ClusterSPIFFEID, key) per entry of the pod.
    owners: Vec<(String, KeyId)>,
    /// No node yet (or its Node object not seen yet): no entry, no error.
    unscheduled: bool,
}

/// Stats, readiness and the render failures (pod, message) of one ClusterSPIFFEID.
type IdentityReport = (
    ClusterSPIFFEIDStats,
    Readiness,
    Vec<((String, String), String)>,
);

struct StaticRecord {
    source: Source,
    result: Result<KeyId, SpecError>,
}

/// The reconciler's state between passes.
pub struct Reconciler {
    ctx: Context,
    parent: ParentTemplate,
    identities: Vec<Arc<PodIdentity>>,
    invalid: BTreeMap<String, SpecError>,
    out_of_class: BTreeSet<String>,
    desired: Desired,
    mirror: Mirror,
    ownership: Ownership,
    mask: EntryMask,
    pods: HashMap<(String, String), PodRecord>,
    statics: BTreeMap<String, StaticRecord>,
    failed: HashMap<KeyId, String>,
    retry_attempt: u32,
    persisted_adopted: BTreeSet<String>,
    announced: HashMap<String, String>,
    listed_once: bool,
}

impl Reconciler {
    /// Prepares the loop; reads the adopted entry IDs.
    pub async fn new(ctx: Context) -> Result<Self, RunError> {
        let parent = ParentTemplate::parse(ctx.config.parent_id_template.as_deref())
            .map_err(RunError::ParentTemplate)?;
        let mut ownership = Ownership::new(
            ctx.config.entry_id_prefix.as_deref(),
            &ctx.config.cluster_name,
            ctx.config.entry_id_prefix_cleanup.as_deref(),
        );
        let maps: Api<ConfigMap> = Api::namespaced(ctx.kube.clone(), &ctx.namespace);
        let adopted: BTreeSet<String> = maps
            .get_opt(ADOPTED_CONFIG_MAP)
            .await
            .map_err(|source| RunError::ReadAdopted {
                namespace: ctx.namespace.clone(),
                source,
            })?
            .and_then(|cm| cm.data)
            .and_then(|mut d| d.remove(ADOPTED_KEY))
            .map(|ids| {
                ids.lines()
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        ownership.set_adopted(adopted.clone());
        Ok(Self {
            ctx,
            parent,
            identities: Vec::new(),
            invalid: BTreeMap::new(),
            out_of_class: BTreeSet::new(),
            desired: Desired::default(),
            mirror: Mirror::default(),
            ownership,
            mask: managed_fields(),
            pods: HashMap::new(),
            statics: BTreeMap::new(),
            failed: HashMap::new(),
            retry_attempt: 0,
            persisted_adopted: adopted,
            announced: HashMap::new(),
            listed_once: false,
        })
    }

    /// Runs passes forever. Call once the watches have synced; the first pass is a full one.
    pub async fn run(mut self) {
        self.ctx.dirty.mark(Dirty::Resync);
        let resync = self.ctx.config.gc_interval;
        let dirty = self.ctx.dirty.clone();
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(resync);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                dirty.mark(Dirty::Resync);
            }
        });
        loop {
            let batch = self.ctx.dirty.drain().await;
            let started = Instant::now();
            self.pass(batch).await;
            let metrics = &self.ctx.metrics;
            metrics
                .pass_duration
                .observe(started.elapsed().as_secs_f64());
            metrics.passes.inc();
            metrics.dirty_objects.set(self.ctx.dirty.len() as i64);
        }
    }

    async fn pass(&mut self, batch: Vec<Dirty>) {
        let mut resync = false;
        let mut all_pods = false;
        let mut statics = false;
        let mut retry = false;
        let mut pod_keys: HashSet<(String, String)> = HashSet::new();
        let mut groups = Vec::new();
        for mark in batch {
            match mark {
                Dirty::Resync => resync = true,
                Dirty::AllPods => all_pods = true,
                Dirty::Statics => statics = true,
                Dirty::Retry => retry = true,
                Dirty::Pod(ns, name) => {
                    pod_keys.insert((ns, name));
                }
                other => groups.push(other),
            }
        }

        if resync {
            let started = Instant::now();
            match self.ctx.spire.list_entries().await {
                Ok(entries) => {
                    self.ctx
                        .metrics
                        .observe_rpc("entry.v1.Entry/ListEntries", started.elapsed());
                    self.ctx.metrics.entry_lists.inc();
                    self.ctx.health.set_spire_reachable(true);
                    let parsed = entries
                        .iter()
                        .filter_map(|e| match EntrySpec::from_api(e) {
                            Ok(parsed) => Some(parsed),
                            Err(err) => {
                                // One odd entry must not stop the others from reconciling.
                                tracing::warn!(entry = %e.id, error = %err, "skipping an entry with an unparsable SPIFFE ID");
                                None
                            }
                        })
                        .collect();
                    // Desired state is kept current by the watches (a re-listed watch marks
                    // everything), so a resync re-reads only the server.
                    self.mirror = Mirror::from_listing(parsed, &self.ownership);
                    self.listed_once = true;
                }
                Err(e) => {
                    self.ctx.health.set_spire_reachable(false);
                    tracing::warn!(error = %e, "listing entries failed; retrying");
                    self.schedule(Dirty::Resync, self.backoff());
                    if !self.listed_once {
                        return;
                    }
                    resync = false;
                }
            }
        }

        let mut affected: BTreeSet<String> = BTreeSet::new();
        if all_pods {
            self.reload_identities();
            affected.extend(
                self.ctx
                    .stores
                    .identities
                    .state()
                    .iter()
                    .map(|c| c.name_any()),
            );
            pod_keys.extend(self.ctx.stores.pods.keys_where(|_| true));
            pod_keys.extend(self.pods.keys().cloned());
        } else {
            for group in groups {
                let matches = |pod: &CachedPod| match &group {
                    Dirty::Namespace(ns) => pod.namespace == *ns,
                    Dirty::Node(node) => pod.node_name.as_ref() == Some(node),
                    Dirty::ServiceAccount(ns, sa) => {
                        pod.namespace == *ns && pod.service_account == *sa
                    }
                    _ => false,
                };
                pod_keys.extend(self.ctx.stores.pods.keys_where(matches));
            }
        }

        let mut touched = HashSet::new();
        for key in pod_keys {
            self.recompute_pod(key, &mut touched, &mut affected);
        }
        if statics {
            self.recompute_statics(&mut touched);
        }
        if retry {
            touched.extend(self.failed.keys().cloned());
        }

        let plan = if resync {
            plan_all(&self.desired, &self.mirror, &self.mask)
        } else {
            plan_keys(&self.desired, &self.mirror, &touched, &self.mask)
        };
        let report = self.write(plan).await;
        if report.unreachable {
            self.ctx.health.set_spire_reachable(false);
        } else if report.reached {
            self.ctx.health.set_spire_reachable(true);
        }
        for key in report.failed.iter().filter_map(|f| f.key.as_ref()) {
            affected.extend(self.owners_of(&KeyId::of(key)));
        }

        self.persist_adopted().await;
        self.update_gauges();
        self.write_statuses(&affected, all_pods || statics).await;
        if resync {
            self.ctx.metrics.initial_sync_complete.set(1);
        }
    }

    fn reload_identities(&mut self) {
        let config = &self.ctx.config;
        self.identities.clear();
        self.invalid.clear();
        self.out_of_class.clear();
        if !config.reconcile.cluster_spiffe_ids {
            return;
        }
        for resource in self.ctx.stores.identities.state() {
            let name = resource.name_any();
            if !in_class(config, resource.spec.class_name.as_deref()) {
                self.out_of_class.insert(name);
                continue;
            }
            match PodIdentity::parse(&resource) {
                Ok(identity) => self.identities.push(Arc::new(identity)),
                Err(e) => {
                    tracing::warn!(clusterspiffeid = %name, error = %e, "invalid ClusterSPIFFEID");
                    self.invalid.insert(name, e);
                }
            }
        }
    }

    fn recompute_pod(
        &mut self,
        key: (String, String),
        touched: &mut HashSet<KeyId>,
        affected: &mut BTreeSet<String>,
    ) {
        let pod = self.ctx.stores.pods.get(&key.0, &key.1);
        let (entries, record) = match pod {
            Some(pod) => self.pod_entries(&pod),
            None => (Vec::new(), None),
        };
        let source = Source::Pod {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        if let Some(old) = self.pods.get(&key) {
            affected.extend(old.outcomes.iter().map(|(n, _)| n.clone()));
        }
        match record {
            Some(record) => {
                affected.extend(record.outcomes.iter().map(|(n, _)| n.clone()));
                self.pods.insert(key, record);
            }
            None => {
                self.pods.remove(&key);
            }
        }
        self.desired.set(source, entries, touched);
    }

    fn pod_entries(&self, cached: &CachedPod) -> (Vec<EntrySpec>, Option<PodRecord>) {
        let config = &self.ctx.config;
        let stores = &self.ctx.stores;
        let namespace_name = cached.namespace.clone();
        if config.is_namespace_ignored(&namespace_name) {
            return (Vec::new(), None);
        }
        let namespace = stores.namespaces.get(&ObjectRef::new(&namespace_name));
        let namespace_labels = namespace.as_ref().and_then(|n| n.metadata.labels.as_ref());
        let selected: Vec<&Arc<PodIdentity>> = self
            .identities
            .iter()
            .filter(|i| {
                i.namespace_selector.matches(namespace_labels)
                    && i.pod_selector.matches(cached.labels.as_ref())
            })
            .collect();
        if selected.is_empty() {
            return (Vec::new(), None);
        }
        let node = cached
            .node_name
            .as_deref()
            .and_then(|n| stores.nodes.get(&ObjectRef::new(n)));
        let Some(node) = node else {
            let record = PodRecord {
                unscheduled: true,
                ..Default::default()
            };
            return (Vec::new(), Some(record));
        };
        let pod = match cached.pod() {
            Ok(pod) => pod,
            Err(e) => {
                // The JSON was produced by us from a decoded pod; failing here is a bug.
                tracing::error!(pod = %format!("{}/{}", cached.namespace, cached.name), error = %e, "decoding a cached pod");
                return (Vec::new(), None);
            }
        };
        let pod = &pod;

        let trust_domain = &config.trust_domain;
        let node_data =
            TemplateData::new(trust_domain, &config.cluster_name, &self.ctx.cluster_domain)
                .with_node(&node);
        let parent = self.parent.render(&node_data, trust_domain);
        let mut data = node_data.with_pod(pod);
        if let Some(namespace) = &namespace {
            data = data.with_namespace(namespace);
        }
        let service_account = pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.as_deref())
            .unwrap_or("default");
        if let Some(sa) = stores
            .service_accounts
            .get(&ObjectRef::new(service_account).within(&namespace_name))
        {
            data = data.with_service_account(&sa);
        }
        let dns_names: Vec<String> = if selected.iter().any(|i| i.auto_populate_dns_names) {
            let services = stores
                .services
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .services_of(&namespace_name, &pod.name_any());
            let mut names: Vec<String> = services
                .iter()
                .flat_map(|s| service_dns_names(s, &namespace_name, &self.ctx.cluster_domain))
                .collect();
            names.sort();
            names
        } else {
            Vec::new()
        };
        let uid = pod.uid().unwrap_or_default();
        let selected_names: HashSet<&str> = selected.iter().map(|i| i.name.as_str()).collect();
        let result = pod_entries(
            &self.identities,
            |i| selected_names.contains(i.name.as_str()),
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
        let record = PodRecord {
            outcomes: result.outcomes,
            owners,
            unscheduled: false,
        };
        (result.entries, Some(record))
    }

    fn recompute_statics(&mut self, touched: &mut HashSet<KeyId>) {
        let config = &self.ctx.config;
        let mut seen = BTreeSet::new();
        if config.reconcile.cluster_static_entries {
            for resource in self.ctx.stores.statics.state() {
                if !in_class(config, resource.spec.class_name.as_deref()) {
                    continue;
                }
                let name = resource.name_any();
                seen.insert(name.clone());
                let (source, entries, result) = match StaticEntry::parse(&resource) {
                    Ok(entry) => {
                        let source = Source::Static {
                            age: entry.age.clone(),
                            name: name.clone(),
                        };
                        let key = KeyId::of(&entry.entry.key);
                        (source, vec![entry.entry], Ok(key))
                    }
                    Err(e) => {
                        let source = Source::Static {
                            age: crate::render::Age::default(),
                            name: name.clone(),
                        };
                        (source, Vec::new(), Err(e))
                    }
                };
                if let Some(old) = self.statics.get(&name)
                    && old.source != source
                {
                    self.desired.set(old.source.clone(), Vec::new(), touched);
                }
                self.desired.set(source.clone(), entries, touched);
                self.statics.insert(name, StaticRecord { source, result });
            }
        }
        let gone: Vec<String> = self
            .statics
            .keys()
            .filter(|n| !seen.contains(*n))
            .cloned()
            .collect();
        for name in gone {
            if let Some(old) = self.statics.remove(&name) {
                self.desired.set(old.source, Vec::new(), touched);
            }
        }
    }

    async fn write(&mut self, plan: Plan) -> WriteReport {
        for id in &plan.adopt {
            if self.ownership.adopt(id) {
                self.ctx.metrics.entries_adopted.inc();
                tracing::info!(entry = %id, "adopted existing entry");
            }
            self.mirror.set_owned(id);
        }
        for (id, key) in &plan.conflicts {
            self.report_conflict(id, key).await;
        }
        if plan.is_empty() {
            return WriteReport::default();
        }
        tracing::info!(
            create = plan.create.len(),
            update = plan.update.len(),
            delete = plan.delete.len(),
            "writing entries"
        );
        let mirror = &self.mirror;
        let mut report = writer::execute(
            &self.ctx.spire,
            plan,
            &self.ownership,
            &self.mask,
            &self.ctx.metrics,
            |id| mirror.get(id).map(|e| e.spec.key.clone()),
        )
        .await;
        for (id, spec) in std::mem::take(&mut report.created) {
            self.failed.remove(&KeyId::of(&spec.key));
            self.mirror.insert(super::diff::ActualEntry {
                id,
                spec,
                class: super::ownership::Class::Owned,
            });
        }
        for (id, spec) in std::mem::take(&mut report.updated) {
            self.failed.remove(&KeyId::of(&spec.key));
            self.mirror.update(&id, spec);
        }
        for id in &report.deleted {
            if let Some(entry) = self.mirror.remove(id) {
                self.failed.remove(&KeyId::of(&entry.spec.key));
            }
            self.ownership.forget(id);
        }
        for field in &report.unsupported {
            tracing::warn!(
                field,
                "the SPIRE server does not keep this entry field; no longer comparing it"
            );
            match *field {
                "jwt_svid_ttl" => self.mask.jwt_svid_ttl = false,
                "hint" => self.mask.hint = false,
                "store_svid" => self.mask.store_svid = false,
                _ => {}
            }
        }
        for failure in &report.failed {
            tracing::warn!(error = %failure.message, "entry write failed; will retry");
            if let Some(key) = &failure.key {
                self.failed.insert(KeyId::of(key), failure.message.clone());
            }
        }
        if report.failed.is_empty() {
            self.retry_attempt = 0;
        } else {
            let delay = self.backoff();
            self.retry_attempt += 1;
            self.schedule(Dirty::Retry, delay);
        }
        if report.stale_mirror {
            self.schedule(Dirty::Resync, Duration::from_secs(1));
        }
        report
    }

    fn backoff(&self) -> Duration {
        let base = Duration::from_millis(500) * 2u32.saturating_pow(self.retry_attempt.min(7));
        let base = base.min(Duration::from_secs(60));
        base + base.mul_f64(fastrand::f64() * 0.5)
    }

    fn schedule(&self, mark: Dirty, after: Duration) {
        let dirty = self.ctx.dirty.clone();
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            dirty.mark(mark);
        });
    }

    fn owners_of(&self, key: &KeyId) -> Vec<String> {
        self.desired
            .sources_of(key)
            .filter_map(|s| match s {
                Source::Pod { namespace, name } => {
                    self.pods.get(&(namespace.clone(), name.clone()))
                }
                Source::Static { .. } => None,
            })
            .flat_map(|r| {
                r.owners
                    .iter()
                    .filter(|(_, k)| k == key)
                    .map(|(o, _)| o.clone())
            })
            .collect()
    }

    async fn persist_adopted(&mut self) {
        if *self.ownership.adopted() == self.persisted_adopted {
            return;
        }
        let ids: Vec<&str> = self
            .ownership
            .adopted()
            .iter()
            .map(String::as_str)
            .collect();
        let map = serde_json::json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": ADOPTED_CONFIG_MAP,
                "labels": {"app.kubernetes.io/managed-by": "spire-operator"},
                "annotations": {"spire.spiffe.io/purpose": "IDs of SPIRE entries spire-operator adopted; deleting this makes it leave them alone"},
            },
            "data": {ADOPTED_KEY: ids.join("\n")},
        });
        let api: Api<ConfigMap> = Api::namespaced(self.ctx.kube.clone(), &self.ctx.namespace);
        match api
            .patch(
                ADOPTED_CONFIG_MAP,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&map),
            )
            .await
        {
            Ok(_) => self.persisted_adopted = self.ownership.adopted().clone(),
            Err(e) => {
                tracing::warn!(namespace = %self.ctx.namespace, error = %e, "saving adopted entry IDs failed; will retry")
            }
        }
    }

    fn update_gauges(&self) {
        let metrics = &self.ctx.metrics;
        let (owned, foreign) = self.mirror.counts();
        metrics.entries_desired.set(self.desired.len() as i64);
        metrics.entries_owned.set(owned as i64);
        metrics.entries_foreign.set(foreign as i64);
        let failed = self
            .pods
            .values()
            .filter(|r| {
                r.outcomes
                    .iter()
                    .any(|(_, o)| matches!(o, Outcome::RenderFailed(_)))
            })
            .count();
        metrics.pods_render_failed.set(failed as i64);
        metrics
            .pods_unscheduled
            .set(self.pods.values().filter(|r| r.unscheduled).count() as i64);
    }

    async fn write_statuses(&mut self, affected: &BTreeSet<String>, statics: bool) {
        let now = Time(Timestamp::now());
        let mut events = 0;
        for resource in self.ctx.stores.identities.state() {
            let name = resource.name_any();
            if !affected.contains(&name) || self.out_of_class.contains(&name) {
                continue;
            }
            let (stats, readiness, render_failures) = self.identity_report(&resource);
            let status = status::spiffe_id_status(
                stats,
                &readiness,
                resource.metadata.generation,
                resource.status.as_ref(),
                &now,
            );
            if resource.status.as_ref() != Some(&status) {
                let api: Api<ClusterSPIFFEID> = Api::all(self.ctx.kube.clone());
                let patch = serde_json::json!({ "status": status });
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(clusterspiffeid = %name, error = %e, "writing status failed");
                }
            }
            if let Readiness::InvalidSpec(message) = &readiness
                && events < EVENTS_PER_PASS
                && self.announce(format!("csid/{name}"), message)
            {
                events += 1;
                self.publish(&resource.object_ref(&()), "InvalidSpec", message.clone())
                    .await;
            }
            for (pod, message) in render_failures {
                if events >= EVENTS_PER_PASS {
                    break;
                }
                if self.announce(format!("pod/{}/{}/{name}", pod.0, pod.1), &message) {
                    events += 1;
                    let reference = Pod::object_ref_from(&pod.0, &pod.1);
                    self.publish(
                        &reference,
                        "RenderFailed",
                        format!("ClusterSPIFFEID {name}: {message}"),
                    )
                    .await;
                }
            }
        }
        if statics {
            self.write_static_statuses(&now).await;
        }
    }

    fn identity_report(&self, resource: &ClusterSPIFFEID) -> IdentityReport {
        let name = resource.name_any();
        let mut stats = ClusterSPIFFEIDStats::default();
        if let Some(e) = self.invalid.get(&name) {
            return (stats, Readiness::InvalidSpec(e.to_string()), Vec::new());
        }
        let Some(identity) = self.identities.iter().find(|i| i.name == name) else {
            return (stats, Readiness::Reconciled, Vec::new());
        };
        for ns in self.ctx.stores.namespaces.state() {
            if identity
                .namespace_selector
                .matches(ns.metadata.labels.as_ref())
            {
                stats.namespaces_selected += 1;
                if self.ctx.config.is_namespace_ignored(&ns.name_any()) {
                    stats.namespaces_ignored += 1;
                }
            }
        }
        let mut render_failures = Vec::new();
        let mut write_failure = None;
        for (pod, record) in &self.pods {
            for (owner, outcome) in &record.outcomes {
                if *owner != name {
                    continue;
                }
                stats.pods_selected += 1;
                match outcome {
                    Outcome::Set => stats.entries_to_set += 1,
                    Outcome::Masked => stats.entries_masked += 1,
                    Outcome::FallbackSkipped => {}
                    Outcome::RenderFailed(e) => {
                        stats.pod_entry_render_failures += 1;
                        render_failures.push((pod.clone(), e.to_string()));
                    }
                }
            }
            for (owner, key) in &record.owners {
                if *owner == name
                    && let Some(message) = self.failed.get(key)
                {
                    stats.entry_failures += 1;
                    write_failure.get_or_insert_with(|| message.clone());
                }
            }
        }
        render_failures.sort();
        let readiness = if let Some(((ns, pod), message)) = render_failures.first() {
            let more = render_failures.len() - 1;
            let tail = if more > 0 {
                format!(" (and {more} more pods)")
            } else {
                String::new()
            };
            Readiness::RenderFailed(format!("pod {ns}/{pod}: {message}{tail}"))
        } else if let Some(message) = write_failure {
            Readiness::EntryWriteFailed(message)
        } else {
            Readiness::Reconciled
        };
        (stats, readiness, render_failures)
    }

    async fn write_static_statuses(&mut self, now: &Time) {
        let api: Api<ClusterStaticEntry> = Api::all(self.ctx.kube.clone());
        for resource in self.ctx.stores.statics.state() {
            let name = resource.name_any();
            let Some(record) = self.statics.get(&name) else {
                continue;
            };
            let (rendered, masked, set, readiness) = match &record.result {
                Err(e) => (false, false, false, Readiness::InvalidSpec(e.to_string())),
                Ok(key) => {
                    let masked = !self.desired.wins(&record.source, key);
                    let set = !masked && self.mirror.has(key) && !self.failed.contains_key(key);
                    let readiness = if masked {
                        Readiness::Masked("an older resource declares the identical entry".into())
                    } else if let Some(message) = self.failed.get(key) {
                        Readiness::EntryWriteFailed(message.clone())
                    } else {
                        Readiness::Reconciled
                    };
                    (true, masked, set, readiness)
                }
            };
            let status = status::static_entry_status(
                rendered,
                masked,
                set,
                &readiness,
                resource.metadata.generation,
                resource.status.as_ref(),
                now,
            );
            if resource.status.as_ref() != Some(&status) {
                let patch = serde_json::json!({ "status": status });
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(clusterstaticentry = %name, error = %e, "writing status failed");
                }
            }
        }
    }

    /// A desired entry whose key an entry we may not adopt already has (CLI-made, another
    /// cluster's, a join-token agent's): that entry keeps serving as it is; the pods that
    /// wanted it get a Warning event, once.
    async fn report_conflict(&mut self, id: &str, key: &EntryKey) {
        let message = format!(
            "SPIRE entry {id} (not created by spire-operator and outside the entries it may adopt) already has this pod's SPIFFE ID {}, parent ID and selectors; it is left as it is, so spire-operator does not manage its other fields",
            key.spiffe_id
        );
        if !self.announce(format!("conflict/{id}"), &message) {
            return;
        }
        self.ctx.metrics.entry_conflicts.inc();
        tracing::warn!(entry = %id, spiffe_id = %key.spiffe_id, "a desired entry already exists as an entry spire-operator may not adopt; left alone");
        let pods: Vec<_> = self
            .desired
            .sources_of(&KeyId::of(key))
            .filter_map(|source| match source {
                Source::Pod { namespace, name } => Some(Pod::object_ref_from(namespace, name)),
                Source::Static { .. } => None,
            })
            .collect();
        for pod in pods {
            self.publish(&pod, "EntryNotAdopted", message.clone()).await;
        }
    }

    /// Whether `message` is new for `subject` (events are published once per change).
    fn announce(&mut self, subject: String, message: &str) -> bool {
        if self.announced.get(&subject).map(String::as_str) == Some(message) {
            return false;
        }
        self.announced.insert(subject, message.to_owned());
        true
    }

    async fn publish(
        &self,
        reference: &k8s_openapi::api::core::v1::ObjectReference,
        reason: &str,
        note: String,
    ) {
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(e) = self.ctx.recorder.publish(&event, reference).await {
            tracing::warn!(error = %e, reason, "publishing event failed");
        }
    }
}

/// spire-controller-manager's class rule: a resource is handled when its className equals
/// ours, or it has none and classless resources are watched.
fn in_class(config: &Config, class_name: Option<&str>) -> bool {
    let class_name = class_name.unwrap_or_default();
    class_name == config.class_name.as_deref().unwrap_or_default()
        || (class_name.is_empty() && config.watch_classless)
}

trait PodRef {
    fn object_ref_from(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::ObjectReference;
}

impl PodRef for Pod {
    fn object_ref_from(namespace: &str, name: &str) -> k8s_openapi::api::core::v1::ObjectReference {
        k8s_openapi::api::core::v1::ObjectReference {
            api_version: Some("v1".into()),
            kind: Some("Pod".into()),
            namespace: Some(namespace.into()),
            name: Some(name.into()),
            ..Default::default()
        }
    }
}
