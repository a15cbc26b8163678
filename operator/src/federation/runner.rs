//! The federation loop: on any ClusterFederatedTrustDomain change, every `gcInterval`
//! and on retries, one pass lists the server's relationships, plans against the
//! declarations and the ownership record, records claims, writes, then reports.
//! Relationships are few, so every pass is a full one.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::Store;
use kube::{Api, Resource, ResourceExt};

use super::ADOPT_ANNOTATION;
use super::plan::{Declared, Outcome, Plan, plan};
use super::record::{self, FEDERATION_CONFIG_MAP, Owned, RecordError};
use super::relationship::Relationship;
use crate::config::Config;
use crate::crd::ClusterFederatedTrustDomain;
use crate::metrics::{Metrics, Operation};
use crate::reconcile::backoff::Retrier;
use crate::reconcile::dirty::DirtySet;
use crate::reconcile::pods::in_class;
use crate::reconcile::watch::Dirty;
use crate::render::Age;
use crate::spire::SpireClient;
use crate::spire::api::types::{self, FederationRelationshipMask};
use crate::status::{self, Readiness};

/// gRPC code SPIRE answers a create with when the trust domain already has one.
const ALREADY_EXISTS: i32 = 6;
/// gRPC NotFound: a delete of a relationship that is already gone.
const NOT_FOUND: i32 = 5;

/// Everything the loop needs from outside.
pub struct FederationContext {
    /// The effective configuration (trust domain, class, gcInterval).
    pub config: Arc<Config>,
    /// The operator's namespace, where the ownership record lives.
    pub namespace: String,
    /// Kubernetes client; `None` in static mode, where the ownership record is kept in
    /// memory only and statuses and events are logged instead.
    pub kube: Option<kube::Client>,
    /// SPIRE client.
    pub spire: SpireClient,
    /// The watched ClusterFederatedTrustDomains.
    pub store: Store<ClusterFederatedTrustDomain>,
    /// Marks from the watch and from retry timers.
    pub dirty: Arc<DirtySet<Dirty>>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Event publisher; `None` in static mode.
    pub recorder: Option<Recorder>,
    /// Static mode's `--state-dir`: where the ownership record is kept without the API.
    pub state_dir: Option<std::path::PathBuf>,
}

/// The loop's state between passes.
pub struct FederationReconciler {
    ctx: FederationContext,
    owned: Owned,
    persisted: Owned,
    /// Trust domain -> message of its last failed write.
    failures: BTreeMap<String, String>,
    /// Last event note per resource, so an event goes out once per change.
    announced: HashMap<String, String>,
    retry: Retrier,
}

impl FederationReconciler {
    /// Reads the ownership record; fails when it cannot be read (acting without it
    /// could take a CLI-made relationship for ours or forget ours).
    pub async fn new(ctx: FederationContext) -> Result<Self, RecordError> {
        let owned = match &ctx.kube {
            Some(kube) => record::load(kube, &ctx.namespace).await?,
            None => match &ctx.state_dir {
                Some(dir) => record::load_file(&record::file_in(dir))?,
                None => Owned::new(),
            },
        };
        let retry = Retrier::new(
            Dirty::Retry,
            ctx.dirty.clone(),
            Duration::from_millis(500),
            Duration::from_secs(60),
        );
        Ok(Self {
            persisted: owned.clone(),
            owned,
            failures: BTreeMap::new(),
            announced: HashMap::new(),
            retry,
            ctx,
        })
    }

    /// Runs passes forever. Call once the watch has synced.
    pub async fn run(mut self) {
        self.ctx.dirty.mark(Dirty::Resync);
        let dirty = self.ctx.dirty.clone();
        let interval = self.ctx.config.gc_interval;
        tokio::spawn(async move {
            let mut ticker = tokio::time::interval(interval);
            ticker.tick().await;
            loop {
                ticker.tick().await;
                dirty.mark(Dirty::Resync);
            }
        });
        loop {
            let _ = self.ctx.dirty.drain().await;
            if self.pass().await {
                self.retry.succeeded();
            } else if let Some(delay) = self.retry.failed() {
                tracing::debug!(retry_in = ?delay, "federation pass incomplete; retrying");
            }
        }
    }

    /// One full pass; false when something failed and needs another try.
    pub(super) async fn pass(&mut self) -> bool {
        let started = Instant::now();
        let listed = match self.ctx.spire.list_federation_relationships().await {
            Ok(listed) => listed,
            Err(e) => {
                self.ctx.metrics.spire_reachable.set(0);
                self.ctx
                    .metrics
                    .rpc_failed("trustdomain.v1.TrustDomain/ListFederationRelationships");
                if let Some(suppressed) = self.retry.should_log() {
                    tracing::warn!(error = %crate::spire::error_chain(&e), suppressed, "listing federation relationships failed; retrying with backoff");
                }
                return false;
            }
        };
        self.ctx.metrics.observe_rpc(
            "trustdomain.v1.TrustDomain/ListFederationRelationships",
            started.elapsed(),
        );
        self.ctx.metrics.spire_reachable.set(1);
        let listed: BTreeMap<String, types::FederationRelationship> = listed
            .into_iter()
            .map(|r| (r.trust_domain.clone(), r))
            .collect();
        let resources: Vec<Arc<ClusterFederatedTrustDomain>> = self
            .ctx
            .store
            .state()
            .into_iter()
            .filter(|r| in_class(&self.ctx.config, r.spec.class_name.as_deref()))
            .collect();
        let declared: Vec<Declared> = resources
            .iter()
            .map(|r| Declared {
                name: r.name_any(),
                age: Age::of(&r.metadata),
                adopt: r
                    .annotations()
                    .get(ADOPT_ANNOTATION)
                    .is_some_and(|v| v == "true"),
                relationship: Relationship::parse(&r.spec, &self.ctx.config.trust_domain),
            })
            .collect();
        let mut plan = plan(&declared, &listed, &self.owned);
        let mut ok = self.write(&mut plan).await;
        for td in std::mem::take(&mut plan.forget) {
            self.owned.remove(&td);
        }
        ok &= self.persist().await;
        self.failures
            .retain(|td, _| plan.outcomes.values().any(|o| outcome_td(o) == Some(td)));
        let foreign = listed
            .keys()
            .filter(|td| !self.owned.contains_key(*td))
            .count();
        let owned = listed
            .keys()
            .filter(|td| self.owned.contains_key(*td))
            .count();
        self.ctx
            .metrics
            .federation_relationships_owned
            .set(owned as i64);
        self.ctx
            .metrics
            .federation_relationships_foreign
            .set(foreign as i64);
        ok &= self.report(&resources, &plan).await;
        ok && self.failures.is_empty()
    }

    /// Records claims and adoptions, then creates, updates and deletes. Returns false
    /// when the record could not be saved (nothing is created then) or a call failed.
    async fn write(&mut self, plan: &mut Plan) -> bool {
        if !plan.record.is_empty() {
            let before = self.owned.clone();
            for (td, owned) in &plan.record {
                if !self.owned.contains_key(td) {
                    tracing::info!(trust_domain = %td, resource = %owned.resource, "recording federation relationship as owned");
                }
                self.owned.insert(td.clone(), owned.clone());
            }
            if !self.persist().await {
                // Never create or adopt what the record does not hold.
                self.owned = before;
                for (name, outcome) in plan.outcomes.iter_mut() {
                    if let Outcome::Writing { trust_domain } = outcome {
                        let message = format!(
                            "saving {} failed; the relationship is written once it is saved",
                            self.record_location()
                        );
                        tracing::debug!(resource = %name, "{message}");
                        self.failures.insert(trust_domain.clone(), message);
                    }
                }
                return false;
            }
        }
        let mut ok = true;
        let mut refresh = Vec::new();
        if !plan.create.is_empty() {
            let relationships = plan.create.iter().map(|(_, r)| r.to_api(true)).collect();
            let started = Instant::now();
            let result = self
                .ctx
                .spire
                .batch_create_federation_relationships(relationships)
                .await;
            self.ctx.metrics.observe_rpc(
                "trustdomain.v1.TrustDomain/BatchCreateFederationRelationship",
                started.elapsed(),
            );
            let (mut good, mut bad) = (0, 0);
            match result {
                Ok(results) => {
                    for ((resource, relationship), result) in plan.create.iter().zip(results) {
                        let td = &relationship.trust_domain;
                        let status = result.status.unwrap_or_default();
                        if status.code == 0 {
                            good += 1;
                            tracing::info!(trust_domain = %td, resource = %resource, url = %relationship.bundle_endpoint_url, "created federation relationship");
                            // SPIRE starts fetching a new relationship's bundle by itself.
                            self.sent(td, relationship);
                        } else if status.code == ALREADY_EXISTS {
                            // Made by someone else since the listing: not ours.
                            bad += 1;
                            self.owned.remove(td);
                            plan.outcomes.insert(
                                resource.clone(),
                                Outcome::Foreign {
                                    trust_domain: td.clone(),
                                },
                            );
                        } else {
                            bad += 1;
                            ok = false;
                            self.fail(td, "creating", &status.message);
                        }
                    }
                }
                Err(e) => {
                    bad = plan.create.len() as u64;
                    ok = false;
                    for (_, relationship) in &plan.create {
                        self.fail(&relationship.trust_domain, "creating", &format!("{e:#}"));
                    }
                }
            }
            self.ctx
                .metrics
                .record_federation_writes(Operation::Create, good, bad);
        }
        for update in &plan.update {
            let relationship = &update.relationship;
            let td = &relationship.trust_domain;
            let mask = FederationRelationshipMask {
                bundle_endpoint_url: update.differences.url,
                bundle_endpoint_profile: update.differences.profile,
                trust_domain_bundle: update.bundle,
            };
            let result = self
                .ctx
                .spire
                .batch_update_federation_relationships(
                    vec![relationship.to_api(update.bundle)],
                    mask,
                )
                .await;
            let status = match result {
                Ok(mut results) => results.pop().and_then(|r| r.status).unwrap_or_default(),
                Err(e) => types::Status {
                    code: 14,
                    message: format!("{e:#}"),
                },
            };
            if status.code == 0 {
                tracing::info!(trust_domain = %td, resource = %update.resource, url = update.differences.url, profile = update.differences.profile, bundle = update.bundle, "updated federation relationship");
                self.sent(td, relationship);
                refresh.push(td.clone());
                self.ctx
                    .metrics
                    .record_federation_writes(Operation::Update, 1, 0);
            } else {
                ok = false;
                self.fail(td, "updating", &status.message);
                self.ctx
                    .metrics
                    .record_federation_writes(Operation::Update, 0, 1);
            }
        }
        if !plan.delete.is_empty() {
            let result = self
                .ctx
                .spire
                .batch_delete_federation_relationships(plan.delete.clone())
                .await;
            let (mut good, mut bad) = (0, 0);
            match result {
                Ok(results) => {
                    for (td, result) in plan.delete.iter().zip(results) {
                        let status = result.status.unwrap_or_default();
                        if status.code == 0 || status.code == NOT_FOUND {
                            good += 1;
                            tracing::info!(trust_domain = %td, "deleted federation relationship");
                            self.owned.remove(td);
                        } else {
                            bad += 1;
                            ok = false;
                            tracing::warn!(trust_domain = %td, error = %status.message, "deleting federation relationship failed; will retry");
                        }
                    }
                }
                Err(e) => {
                    bad = plan.delete.len() as u64;
                    ok = false;
                    tracing::warn!(error = %e, "deleting federation relationships failed; will retry");
                }
            }
            self.ctx
                .metrics
                .record_federation_writes(Operation::Delete, good, bad);
        }
        // After an update the server keeps its fetch schedule (the bundle's refresh hint,
        // minutes): ask it to fetch from the new endpoint, or with the new bundle, now.
        for td in refresh {
            if let Err(e) = self.ctx.spire.refresh_bundle(&td).await {
                tracing::debug!(trust_domain = %td, error = %e, "immediate bundle refresh failed; the server fetches it at its next poll");
            }
        }
        ok
    }

    /// A write of `relationship` succeeded: remember the bundle it carried.
    fn sent(&mut self, td: &str, relationship: &Relationship) {
        self.failures.remove(td);
        if let Some(owned) = self.owned.get_mut(td)
            && let Some(bundle) = &relationship.bundle
        {
            owned.bundle_digest = Some(bundle.digest.clone());
        }
    }

    fn fail(&mut self, td: &str, doing: &str, message: &str) {
        let message = format!("{doing} the federation relationship with {td}: {message}");
        if self.failures.get(td) != Some(&message) {
            tracing::warn!(trust_domain = %td, error = %message, "federation relationship write failed; will retry");
        }
        self.failures.insert(td.to_owned(), message);
    }

    /// Saves the record if it changed; false when that failed.
    async fn persist(&mut self) -> bool {
        if self.owned == self.persisted {
            return true;
        }
        let Some(kube) = &self.ctx.kube else {
            return self.persist_file();
        };
        match record::save(kube, &self.ctx.namespace, &self.owned).await {
            Ok(()) => {
                self.persisted = self.owned.clone();
                true
            }
            Err(e) => {
                tracing::warn!(namespace = %self.ctx.namespace, configmap = FEDERATION_CONFIG_MAP, error = %e, "saving the federation ownership record failed; will retry");
                false
            }
        }
    }

    /// Where the ownership record is kept, for messages.
    fn record_location(&self) -> String {
        match (&self.ctx.kube, &self.ctx.state_dir) {
            (Some(_), _) => format!("ConfigMap {}/{FEDERATION_CONFIG_MAP}", self.ctx.namespace),
            (None, Some(dir)) => record::file_in(dir).display().to_string(),
            (None, None) => "the ownership record".into(),
        }
    }

    /// Static mode: the state file, or memory only without `--state-dir`.
    fn persist_file(&mut self) -> bool {
        if let Some(dir) = &self.ctx.state_dir {
            let path = record::file_in(dir);
            if let Err(e) = record::save_file(&path, &self.owned) {
                tracing::warn!(file = %path.display(), error = %e, "saving the federation ownership record failed; will retry");
                return false;
            }
        }
        self.persisted = self.owned.clone();
        true
    }

    /// Patches statuses that changed and publishes events for new problems. False when
    /// a patch or event failed.
    async fn report(
        &mut self,
        resources: &[Arc<ClusterFederatedTrustDomain>],
        plan: &Plan,
    ) -> bool {
        let now = Time(Timestamp::now());
        let api: Option<Api<ClusterFederatedTrustDomain>> = self.ctx.kube.clone().map(Api::all);
        let mut ok = true;
        let mut live = BTreeSet::new();
        for resource in resources {
            let name = resource.name_any();
            let Some(outcome) = plan.outcomes.get(&name) else {
                continue;
            };
            let readiness = self.readiness(outcome);
            let status = status::federated_trust_domain_status(
                &readiness,
                resource.metadata.generation,
                resource.status.as_ref(),
                &now,
            );
            if resource.status.as_ref() != Some(&status)
                && let Some(api) = &api
            {
                let patch = serde_json::json!({ "status": status });
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(clusterfederatedtrustdomain = %name, error = %e, "writing status failed; will retry");
                    self.ctx.metrics.report_failures.inc();
                    ok = false;
                }
            }
            if let Some((reason, note)) = readiness.event() {
                live.insert(name.clone());
                if self.announced.get(&name) != Some(&note) {
                    let event = Event {
                        type_: EventType::Warning,
                        reason: reason.into(),
                        note: Some(note.clone()),
                        action: "Reconcile".into(),
                        secondary: None,
                    };
                    let Some(recorder) = &self.ctx.recorder else {
                        // Static mode: the log is the only report.
                        tracing::warn!(clusterfederatedtrustdomain = %name, reason, note = %note, "problem (static mode: logged, no Event)");
                        self.announced.insert(name, note);
                        continue;
                    };
                    match recorder.publish(&event, &resource.object_ref(&())).await {
                        Ok(()) => {
                            self.announced.insert(name, note);
                        }
                        Err(e) => {
                            tracing::warn!(clusterfederatedtrustdomain = %name, error = %e, reason, "publishing event failed; will retry");
                            self.ctx.metrics.report_failures.inc();
                            ok = false;
                        }
                    }
                }
            }
        }
        self.announced.retain(|name, _| live.contains(name));
        ok
    }

    fn readiness(&self, outcome: &Outcome) -> Readiness {
        match outcome {
            Outcome::Invalid(e) => Readiness::InvalidSpec(e.to_string()),
            Outcome::Conflict {
                trust_domain,
                winner,
            } => Readiness::TrustDomainConflict(format!(
                "ClusterFederatedTrustDomain {winner} is older and declares trust domain {trust_domain} too; this one is not applied"
            )),
            Outcome::Foreign { trust_domain } => Readiness::RelationshipNotOwned(format!(
                "the SPIRE server already has a federation relationship with {trust_domain} that spire-operator did not create (made with spire-server federation create or another tool); it is left alone. To let spire-operator manage it, annotate this resource {ADOPT_ANNOTATION}=true"
            )),
            Outcome::InSync { trust_domain } | Outcome::Writing { trust_domain } => {
                match self.failures.get(trust_domain) {
                    Some(message) => Readiness::RelationshipWriteFailed(message.clone()),
                    None => Readiness::Federated(format!(
                        "the federation relationship with {trust_domain} is on the SPIRE server as declared"
                    )),
                }
            }
        }
    }
}

fn outcome_td(outcome: &Outcome) -> Option<&String> {
    match outcome {
        Outcome::InSync { trust_domain } | Outcome::Writing { trust_domain } => Some(trust_domain),
        _ => None,
    }
}
