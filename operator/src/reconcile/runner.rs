//! The reconcile loop: drains the dirty set, recomputes what changed, writes the
//! difference to SPIRE, then reports. The only part that owns clients.
//!
//! One pass, in order: re-list the server if a resync is due ([`Reconciler::pass`]),
//! recompute the marked pods ([`super::pods`]) and static entries ([`super::statics`])
//! into [`Desired`], plan against the [`Mirror`], write ([`super::writer`]), record the
//! outcome ([`super::bookkeeping`]), save adopted IDs ([`super::adopted`]), then publish
//! gauges, statuses and events ([`super::report`]).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::runtime::events::Recorder;

use super::adopted::{self, ADOPTED_CONFIG_MAP};
use super::annotations::AnnotationOutcome;
use super::backoff::Retrier;
use super::bookkeeping::Books;
use super::concurrency::WriteConcurrency;
use super::diff::Plan;
use super::dirty::DirtySet;
use super::ownership::Ownership;
use super::pod_cache::{CachedPod, PodKey};
use super::pods::{ClusterSpiffeIds, NodeDataCache, PodRecord, PodRenderer};
use super::state::{Desired, KeyId, KeyMap, KeySet, Mirror, Source, plan_all, plan_keys};
use super::statics::{self, StaticRecord};
use super::watch::{Dirty, Stores};
use super::writer::{self, WriteReport};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::render::{ParentTemplate, Refusal, SpecError};
use crate::spire::api::types::EntryMask;
use crate::spire::{EntrySpec, SpireClient, managed_fields};

/// Everything the loop needs from outside.
pub struct Context {
    /// The effective configuration.
    pub config: Arc<Config>,
    /// The cluster domain (configured or detected; may be empty).
    pub cluster_domain: String,
    /// The operator's namespace (for the adoption ConfigMap).
    pub namespace: String,
    /// Kubernetes client; `None` in static mode, where adopted IDs are kept in memory
    /// only and statuses and events are logged instead.
    pub kube: Option<kube::Client>,
    /// SPIRE client.
    pub spire: SpireClient,
    /// The watched objects.
    pub stores: Stores,
    /// Pending work.
    pub dirty: Arc<DirtySet<Dirty>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher; `None` in static mode.
    pub recorder: Option<Recorder>,
    /// Static mode's `--state-dir`: where adopted IDs are kept without the API.
    pub state_dir: Option<std::path::PathBuf>,
    /// `--entry-resync-interval`: the shortest time between two timed full listings.
    pub entry_resync_interval: Duration,
    /// `--spire-write-concurrency`: entry write batches in flight at once.
    pub write_concurrency: WriteConcurrency,
}

/// Why the loop cannot start.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// `parentIDTemplate` does not parse.
    #[error("config key parentIDTemplate")]
    ParentTemplate(#[source] SpecError),
    /// The adopted IDs' state file could not be read.
    #[error("reading {}", path.display())]
    ReadAdoptedFile {
        /// The file.
        path: std::path::PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
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

/// The reconciler's state between passes. Only the pass loop mutates it.
pub struct Reconciler {
    pub(super) ctx: Context,
    parent: ParentTemplate,
    /// Node template data, built once per node in a pass.
    node_data: NodeDataCache,
    /// The ClusterSPIFFEIDs as last loaded (on [`Dirty::ClusterSpiffeIds`]).
    pub(super) cluster_spiffe_ids: ClusterSpiffeIds,
    /// Desired entries, by key and by declaring object.
    pub(super) desired: Desired,
    /// The server's entries as last listed, updated from our own writes.
    pub(super) mirror: Mirror,
    ownership: Ownership,
    /// Non-key fields compared and updated (narrowed for older servers).
    mask: EntryMask,
    /// Per selected pod: outcomes and owners, for statuses.
    pub(super) pod_records: HashMap<PodKey, PodRecord>,
    /// Pods whose identity annotation is refused, with why (for events).
    pub(super) annotation_refusals: HashMap<PodKey, Refusal>,
    /// Per ClusterStaticEntry: its source and key, for statuses.
    pub(super) static_records: BTreeMap<String, StaticRecord>,
    /// Keys whose last write failed, with the message.
    pub(super) failed_writes: KeyMap<String>,
    /// The adopted IDs last saved to the ConfigMap.
    persisted_adopted: BTreeSet<String>,
    /// The last event message per subject, so an event is published once per change.
    pub(super) announced: HashMap<String, String>,
    /// Event subjects of desired entries held by entries we may not adopt, with the
    /// entry's ID (see [`Reconciler::report_conflict`]).
    pub(super) entry_conflicts: BTreeMap<String, String>,
    /// ClusterSPIFFEIDs whose last status patch or event failed.
    pub(super) pending_statuses: BTreeSet<String>,
    listed_once: bool,
    /// Marks held back until the server has been listed once.
    deferred: Vec<Dirty>,
    /// When the mask was last reset to every managed field.
    mask_checked: Instant,
    /// A failed ListEntries.
    list_retry: Retrier,
    /// Failed entry writes.
    write_retry: Retrier,
    /// Creates that found their key taken: the mirror is stale, re-list.
    conflict_retry: Retrier,
    /// Failed status patches and events.
    status_retry: Retrier,
}

/// How often the timer re-lists the server: `gcInterval`, or `--entry-resync-interval`
/// when that is longer. Watch events and the operator's own writes keep the mirror
/// current in between; the listing is only the net for changes made behind its back,
/// and at spire-controller-manager's usual 10 s it is most of the server's idle load.
pub fn resync_period(gc_interval: Duration, entry_resync_interval: Duration) -> Duration {
    gc_interval.max(entry_resync_interval)
}

/// How often fields found unsupported are compared again, in case the server was
/// upgraded (spire-controller-manager re-checks every 10 minutes too).
const MASK_RECHECK: Duration = Duration::from_secs(600);

/// What one pass has already recomputed from the caches.
struct Recomputed<'a> {
    pods: &'a HashSet<PodKey>,
    statics: bool,
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
        let adopted = match &ctx.kube {
            Some(kube) => adopted::load(kube, &ctx.namespace)
                .await
                .map_err(|source| RunError::ReadAdopted {
                    namespace: ctx.namespace.clone(),
                    source,
                })?,
            None => match &ctx.state_dir {
                Some(dir) => {
                    let path = adopted::file_in(dir);
                    adopted::load_file(&path)
                        .map_err(|source| RunError::ReadAdoptedFile { path, source })?
                }
                None => BTreeSet::new(),
            },
        };
        ownership.set_adopted(adopted.clone());
        let dirty = ctx.dirty.clone();
        let retrier = |mark: Dirty, initial: u64, max: u64| {
            Retrier::new(
                mark,
                dirty.clone(),
                Duration::from_millis(initial),
                Duration::from_secs(max),
            )
        };
        Ok(Self {
            list_retry: retrier(Dirty::Resync, 1000, 60),
            write_retry: retrier(Dirty::Retry, 500, 60),
            conflict_retry: retrier(Dirty::Resync, 1000, 300),
            status_retry: retrier(Dirty::Retry, 1000, 60),
            pending_statuses: BTreeSet::new(),
            mask_checked: Instant::now(),
            ctx,
            parent,
            node_data: NodeDataCache::default(),
            cluster_spiffe_ids: ClusterSpiffeIds::default(),
            desired: Desired::default(),
            mirror: Mirror::default(),
            ownership,
            mask: managed_fields(),
            pod_records: HashMap::new(),
            annotation_refusals: HashMap::new(),
            static_records: BTreeMap::new(),
            failed_writes: KeyMap::default(),
            persisted_adopted: adopted,
            announced: HashMap::new(),
            entry_conflicts: BTreeMap::new(),
            listed_once: false,
            deferred: Vec::new(),
        })
    }

    /// Runs passes forever. Call once the watches have synced; the first pass is a full one.
    pub async fn run(mut self) {
        self.ctx.dirty.mark(Dirty::Resync);
        let resync = resync_period(self.ctx.config.gc_interval, self.ctx.entry_resync_interval);
        tracing::info!(every = ?resync, "entries are fully re-listed on a timer");
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

    /// One pass over everything marked in `batch`.
    pub(super) async fn pass(&mut self, mut batch: Vec<Dirty>) {
        batch.append(&mut self.deferred);
        self.node_data.clear();
        // A failed listing schedules its own retry; meanwhile the pass is incremental.
        let resync = batch.contains(&Dirty::Resync) && self.list_entries().await;
        if !self.listed_once {
            // Nothing can be planned before the server was listed once: keep the marks
            // for the pass that lists.
            batch.retain(|m| *m != Dirty::Resync);
            self.deferred = batch;
            return;
        }
        let mut cluster_spiffe_ids = false;
        let mut statics = false;
        let mut retry = false;
        let mut pod_keys: HashSet<PodKey> = HashSet::new();
        let mut groups = Vec::new();
        for mark in batch {
            match mark {
                Dirty::Resync => {}
                Dirty::ClusterSpiffeIds => cluster_spiffe_ids = true,
                Dirty::ClusterStaticEntries => statics = true,
                Dirty::Retry => retry = true,
                Dirty::Pod(ns, name) => {
                    pod_keys.insert((ns, name));
                }
                other => groups.push(other),
            }
        }

        // ClusterSPIFFEIDs whose statuses may change this pass.
        let mut affected: BTreeSet<String> = BTreeSet::new();
        if cluster_spiffe_ids {
            self.reload_cluster_spiffe_ids(&mut pod_keys, &mut affected);
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

        let mut touched = KeySet::default();
        for key in &pod_keys {
            self.recompute_pod(key.clone(), &mut touched, &mut affected);
        }
        if statics {
            self.recompute_statics(&mut touched);
        }
        if resync {
            // What this pass just recomputed from the caches cannot have drifted: the
            // first pass (every pod marked) renders each pod once, not twice.
            let recomputed = Recomputed {
                pods: &pod_keys,
                statics,
            };
            self.check_drift(&recomputed, &mut touched, &mut affected);
            if self.mask_checked.elapsed() >= MASK_RECHECK {
                self.mask_checked = Instant::now();
                self.mask = managed_fields();
            }
        }
        // A declaration appearing or going may mask or unmask the entries other objects
        // declare with the same key: their owners' stats change too.
        for key in &touched {
            self.add_owners_of(key, &mut affected);
        }
        if retry {
            touched.extend(self.failed_writes.keys().cloned());
        }

        let plan = if resync {
            plan_all(&self.desired, &self.mirror, &self.mask)
        } else {
            plan_keys(&self.desired, &self.mirror, &touched, &self.mask)
        };
        // Not needed while the writes run, which on a cold start at 10k pods is a minute
        // (the two sets are 3 MiB then).
        drop((touched, pod_keys));
        let (report, recovered) = self.write(plan).await;
        if report.unreachable {
            self.ctx.metrics.spire_reachable.set(0);
        } else if report.reached {
            self.ctx.metrics.spire_reachable.set(1);
        }
        let failed_keys = report
            .failed
            .iter()
            .filter_map(|f| f.key.as_ref().map(KeyId::of));
        for key in failed_keys.chain(recovered) {
            self.add_owners_of(&key, &mut affected);
        }
        // Failures of keys nobody declares any more (and that are not on the server
        // waiting for a delete) are moot.
        let (desired, mirror) = (&self.desired, &self.mirror);
        self.failed_writes
            .retain(|key, _| desired.get(key).is_some() || mirror.has(key));
        if self.failed_writes.is_empty() {
            self.write_retry.succeeded();
        }

        self.persist_adopted().await;
        self.update_gauges();
        let refusals_pending = self.report_annotation_refusals().await;
        if self.write_statuses(&affected).await | refusals_pending {
            self.status_retry.failed();
        } else {
            self.status_retry.succeeded();
        }
        if resync {
            self.prune_announced();
            self.ctx.metrics.initial_sync_complete.set(1);
        }
    }

    /// Re-lists the server into the mirror; false (and a retry scheduled) on failure.
    async fn list_entries(&mut self) -> bool {
        let started = Instant::now();
        self.mirror.begin_listing();
        let (mirror, ownership, desired) = (&mut self.mirror, &self.ownership, &self.desired);
        let listing = self.ctx.spire.list_entries_by_page(|page| {
            for entry in page {
                match EntrySpec::from_api(entry) {
                    Ok((id, spec)) => mirror.listed(id, spec, ownership, desired),
                    // One odd entry must not stop the others from reconciling.
                    Err((id, err)) => {
                        tracing::warn!(entry = %id, error = %err, "skipping an entry with an unparsable SPIFFE ID");
                    }
                }
            }
        });
        match listing.await {
            Ok(()) => {
                self.mirror.end_listing();
                self.ctx
                    .metrics
                    .observe_rpc("entry.v1.Entry/ListEntries", started.elapsed());
                self.ctx.metrics.entry_lists.inc();
                self.ctx.metrics.spire_reachable.set(1);
                let failures = self.list_retry.succeeded();
                if failures > 0 {
                    tracing::info!(failures, "listing entries works again");
                }
                self.listed_once = true;
                true
            }
            Err(e) => {
                self.ctx.metrics.spire_reachable.set(0);
                self.ctx.metrics.rpc_failed("entry.v1.Entry/ListEntries");
                let retry_in = self.list_retry.failed();
                if let Some(suppressed) = self.list_retry.should_log() {
                    tracing::warn!(error = %crate::spire::error_chain(&e), ?retry_in, failures = self.list_retry.attempt(), suppressed, "listing entries failed; retrying with backoff");
                }
                false
            }
        }
    }

    /// Reloads the ClusterSPIFFEIDs: every pod is recomputed, every status may change.
    fn reload_cluster_spiffe_ids(
        &mut self,
        pod_keys: &mut HashSet<PodKey>,
        affected: &mut BTreeSet<String>,
    ) {
        let loaded = ClusterSpiffeIds::load(&self.ctx.config, &self.ctx.stores);
        // Warn once per new problem, not at every resync.
        for (name, error) in &loaded.invalid {
            if self.cluster_spiffe_ids.invalid.get(name) != Some(error) {
                tracing::warn!(clusterspiffeid = %name, error = %error, "invalid ClusterSPIFFEID");
            }
        }
        self.cluster_spiffe_ids = loaded;
        affected.extend(
            self.ctx
                .stores
                .cluster_spiffe_ids
                .state()
                .iter()
                .map(|c| c.name_any()),
        );
        pod_keys.extend(self.ctx.stores.pods.keys_where(|_| true));
        pod_keys.extend(self.pod_records.keys().cloned());
        // Pods that declare only an annotation entry have no record.
        pod_keys.extend(self.desired.sources().filter_map(|source| match source {
            Source::Annotation { namespace, name } => Some((namespace.clone(), name.clone())),
            _ => None,
        }));
    }

    /// Re-reads the ClusterStaticEntries; returns how many changed their entry.
    fn recompute_statics(&mut self, touched: &mut KeySet) -> usize {
        statics::recompute(
            &self.ctx.config,
            &self.ctx.stores.cluster_static_entries,
            &mut self.static_records,
            &mut self.desired,
            touched,
        )
    }

    /// The safety net behind the watches: recomputes every pod and static entry from
    /// the caches and counts the declaring objects whose entries the incremental state
    /// had wrong (a change the watches did not deliver). Should find nothing.
    /// `recomputed` names what this pass already recomputed from the caches.
    fn check_drift(
        &mut self,
        recomputed: &Recomputed,
        touched: &mut KeySet,
        affected: &mut BTreeSet<String>,
    ) {
        let mut pod_keys = HashSet::new();
        self.reload_cluster_spiffe_ids(&mut pod_keys, &mut BTreeSet::new());
        let mut drift = 0;
        for key in pod_keys {
            if !recomputed.pods.contains(&key) {
                drift += usize::from(self.recompute_pod(key, touched, affected));
            }
        }
        if !recomputed.statics {
            drift += self.recompute_statics(touched);
        }
        if drift > 0 {
            tracing::warn!(
                objects = drift,
                "desired entries recomputed from the caches differ from the incremental state; corrected"
            );
            self.ctx.metrics.desired_drift.inc_by(drift as u64);
        }
    }

    /// Recomputes one pod; true when its entries changed.
    fn recompute_pod(
        &mut self,
        key: PodKey,
        touched: &mut KeySet,
        affected: &mut BTreeSet<String>,
    ) -> bool {
        let cached = self.ctx.stores.pods.get(&key.0, &key.1);
        if cached.is_some() && !self.pods_hold_what_templates_read() {
            // Left as it is until the pods are listed again; the listing marks them all.
            return false;
        }
        let mut renderer = PodRenderer {
            config: &self.ctx.config,
            cluster_domain: &self.ctx.cluster_domain,
            stores: &self.ctx.stores,
            parent: &self.parent,
            cluster_spiffe_ids: &self.cluster_spiffe_ids,
            node_data: &mut self.node_data,
        };
        let (entries, record, annotation) = match cached {
            Some(pod) => {
                self.ctx.metrics.pod_renders.inc();
                let (entries, record) = renderer.render(&pod);
                (entries, record, renderer.annotation(&pod))
            }
            None => (Vec::new(), None, AnnotationOutcome::Nothing),
        };
        let annotation_changed = self.set_annotation(&key, annotation, touched);
        let source = Source::Pod(key.clone());
        let old = self.pod_records.get(&key);
        if old != record.as_ref() {
            let outcomes = old.into_iter().chain(record.as_ref());
            for (name, _) in outcomes.flat_map(|r| r.outcomes.iter()) {
                mark_affected(affected, name);
            }
        }
        match record {
            Some(record) => {
                self.pod_records.insert(key, record);
            }
            None => {
                self.pod_records.remove(&key);
            }
        }
        self.desired.set(source, entries, touched) | annotation_changed
    }

    /// Whether the cached pods hold every field the ClusterSPIFFEIDs' templates read.
    /// When they do not, the pod watch is asked to list every pod again with those
    /// fields too.
    fn pods_hold_what_templates_read(&self) -> bool {
        let pods = &self.ctx.stores.pods;
        let read = &self.cluster_spiffe_ids.pod_fields;
        if pods.fields().covers(read) {
            return true;
        }
        if pods.want(read) {
            tracing::info!(
                "ClusterSPIFFEID templates read pod fields the cached pods do not hold; listing every pod again"
            );
        }
        false
    }

    /// Adopts what the plan takes over, writes the rest and records the outcome.
    /// Returns the report and the keys whose earlier failure this write cleared.
    async fn write(&mut self, plan: Plan) -> (WriteReport, Vec<KeyId>) {
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
            return (WriteReport::default(), Vec::new());
        }
        tracing::info!(
            create = plan.create.len(),
            update = plan.update.len(),
            rename = plan.rename.len(),
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
            self.ctx.write_concurrency,
            |id| mirror.get(id).map(|e| e.spec.as_ref()),
        )
        .await;
        let recovered = Books {
            mirror: &mut self.mirror,
            ownership: &mut self.ownership,
            failed_writes: &mut self.failed_writes,
            mask: &mut self.mask,
        }
        .record(&mut report);
        if self.failed_writes.is_empty() {
            self.write_retry.succeeded();
        } else if !report.failed.is_empty() {
            let retry_in = self.write_retry.failed();
            if let Some(suppressed) = self.write_retry.should_log() {
                let first = &report.failed[0].message;
                tracing::warn!(failed = report.failed.len(), error = %first, ?retry_in, suppressed, "entry writes failed; retrying with backoff");
            }
        }
        if report.stale_mirror {
            self.conflict_retry.failed();
        } else {
            self.conflict_retry.succeeded();
        }
        (report, recovered)
    }

    /// The non-key fields currently compared.
    pub fn mask(&self) -> &EntryMask {
        &self.mask
    }

    /// Pretends the unsupported-field check ran `ago`.
    #[cfg(test)]
    pub(super) fn age_mask_check(&mut self, ago: Duration) {
        self.mask_checked -= ago;
    }

    /// Adds the ClusterSPIFFEIDs whose pods declare `key` as winners to `affected`.
    fn add_owners_of(&self, key: &KeyId, affected: &mut BTreeSet<String>) {
        let owners = self
            .desired
            .sources_of(key)
            .filter_map(|s| match s {
                Source::Pod(pod) => self.pod_records.get(pod),
                Source::Static { .. } | Source::Annotation { .. } => None,
            })
            .flat_map(|r| r.owners.iter().filter(|(_, k)| k == key));
        for (owner, _) in owners {
            mark_affected(affected, owner);
        }
    }

    /// Static mode: the state file, or memory only without `--state-dir`.
    fn persist_adopted_file(&mut self) {
        if let Some(dir) = &self.ctx.state_dir {
            let path = adopted::file_in(dir);
            if let Err(e) = adopted::save_file(&path, self.ownership.adopted()) {
                tracing::warn!(file = %path.display(), error = %e, "saving adopted entry IDs failed; will retry");
                return;
            }
        }
        self.persisted_adopted = self.ownership.adopted().clone();
    }

    async fn persist_adopted(&mut self) {
        if *self.ownership.adopted() == self.persisted_adopted {
            return;
        }
        let Some(kube) = &self.ctx.kube else {
            self.persist_adopted_file();
            return;
        };
        match adopted::save(kube, &self.ctx.namespace, self.ownership.adopted()).await {
            Ok(()) => self.persisted_adopted = self.ownership.adopted().clone(),
            Err(e) => {
                tracing::warn!(namespace = %self.ctx.namespace, configmap = ADOPTED_CONFIG_MAP, error = %e, "saving adopted entry IDs failed; will retry")
            }
        }
    }
}

/// Adds a ClusterSPIFFEID to those whose statuses may change, copying its name only
/// the first time (a pass may name one for each of thousands of pods).
fn mark_affected(affected: &mut BTreeSet<String>, name: &str) {
    if !affected.contains(name) {
        affected.insert(name.to_owned());
    }
}
