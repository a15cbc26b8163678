//! What the operator tells about a pass: gauges, the status of each ClusterSPIFFEID and
//! ClusterStaticEntry, and Kubernetes Events for invalid specs and render failures.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::annotations::annotation_subject;
use super::desired::Outcome;
use super::ownership::Class;
use super::runner::Reconciler;
use super::state::{KeyId, Source};
use crate::crd::{ClusterSPIFFEID, ClusterSPIFFEIDStats, ClusterStaticEntry};
use crate::spire::EntryKey;
use crate::status::{self, Readiness};

/// Events published per pass at most, so a broken template does not flood the API server.
pub(super) const EVENTS_PER_PASS: usize = 20;

/// Stats, readiness and the render failures (pod, message) of one ClusterSPIFFEID.
type IdentityReport = (
    ClusterSPIFFEIDStats,
    Readiness,
    Vec<((String, String), String)>,
);

impl Reconciler {
    pub(super) fn update_gauges(&self) {
        let metrics = &self.ctx.metrics;
        let (owned, foreign) = self.mirror.counts();
        metrics.entries_desired.set(self.desired.len() as i64);
        metrics.entries_owned.set(owned as i64);
        metrics.entries_foreign.set(foreign as i64);
        let failed = self
            .pod_records
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
            .set(self.pod_records.values().filter(|r| r.unscheduled).count() as i64);
    }

    /// Writes the status of the `affected` ClusterSPIFFEIDs (and of those whose last
    /// status or event failed), of every ClusterStaticEntry, and the events that go with
    /// them. Returns whether something failed and needs another try.
    pub(super) async fn write_statuses(&mut self, affected: &BTreeSet<String>) -> bool {
        let now = Time(Timestamp::now());
        let mut events = 0;
        let retry: BTreeSet<String> = std::mem::take(&mut self.pending_statuses);
        for resource in self.ctx.stores.cluster_spiffe_ids.state() {
            let name = resource.name_any();
            if !(affected.contains(&name) || retry.contains(&name))
                || self.cluster_spiffe_ids.out_of_class.contains(&name)
            {
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
            let mut ok = true;
            if resource.status.as_ref() != Some(&status)
                && let Some(kube) = self.ctx.kube.clone()
            {
                let api: Api<ClusterSPIFFEID> = Api::all(kube);
                let patch = serde_json::json!({ "status": status });
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(clusterspiffeid = %name, error = %e, "writing status failed; will retry");
                    self.ctx.metrics.report_failures.inc();
                    ok = false;
                }
            }
            if let Some((reason, message)) = readiness.event()
                && events < EVENTS_PER_PASS
            {
                let reference = resource.object_ref(&());
                match self
                    .announce(format!("csid/{name}"), &reference, reason, message)
                    .await
                {
                    Announced::Published => events += 1,
                    Announced::Failed => ok = false,
                    Announced::AlreadyKnown => {}
                }
            }
            for (pod, message) in render_failures {
                if events >= EVENTS_PER_PASS {
                    break;
                }
                let reference = pod_reference(&pod.0, &pod.1);
                let subject = format!("pod/{}/{}/{name}", pod.0, pod.1);
                let note = format!("ClusterSPIFFEID {name}: {message}");
                match self
                    .announce(subject, &reference, "RenderFailed", note)
                    .await
                {
                    Announced::Published => events += 1,
                    Announced::Failed => ok = false,
                    Announced::AlreadyKnown => {}
                }
            }
            if !ok {
                self.pending_statuses.insert(name);
            }
        }
        let statics_ok = self.write_static_statuses(&now, &mut events).await;
        !self.pending_statuses.is_empty() || !statics_ok
    }

    fn identity_report(&self, resource: &ClusterSPIFFEID) -> IdentityReport {
        let name = resource.name_any();
        let mut stats = ClusterSPIFFEIDStats::default();
        if let Some(e) = self.cluster_spiffe_ids.invalid.get(&name) {
            return (stats, Readiness::InvalidSpec(e.to_string()), Vec::new());
        }
        let Some(identity) = self
            .cluster_spiffe_ids
            .valid
            .iter()
            .find(|i| *i.name == *name)
        else {
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
        for (pod, record) in &self.pod_records {
            for (owner, outcome) in &record.outcomes {
                if **owner != *name {
                    continue;
                }
                stats.pods_selected += 1;
                match outcome {
                    // Counted below: a pod's winning entry may still lose its key to
                    // an older object (a ClusterStaticEntry, another pod's entry).
                    Outcome::Set => {}
                    Outcome::Masked => stats.entries_masked += 1,
                    Outcome::FallbackSkipped => {}
                    Outcome::RenderFailed(e) => {
                        stats.pod_entry_render_failures += 1;
                        render_failures.push((pod.clone(), e.to_string()));
                    }
                }
            }
            let source = Source::Pod(pod.clone());
            for (owner, key) in &record.owners {
                if **owner != *name {
                    continue;
                }
                if self.desired.wins(&source, key) {
                    stats.entries_to_set += 1;
                } else {
                    stats.entries_masked += 1;
                }
                if let Some(message) = self.failed_writes.get(key) {
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

    /// Returns false when a status or event failed.
    async fn write_static_statuses(&mut self, now: &Time, events: &mut usize) -> bool {
        // Static mode has no API: no status, the problems are logged (see `announce`).
        let api: Option<Api<ClusterStaticEntry>> = self.ctx.kube.clone().map(Api::all);
        let mut all_ok = true;
        for resource in self.ctx.stores.cluster_static_entries.state() {
            let name = resource.name_any();
            let Some(record) = self.static_records.get(&name) else {
                continue;
            };
            let (rendered, masked, set, readiness) = match &record.result {
                Err(e) => (false, false, false, Readiness::InvalidSpec(e.to_string())),
                Ok(key) => {
                    let masked = !self.desired.wins(&record.source, key);
                    let set =
                        !masked && self.mirror.has(key) && !self.failed_writes.contains_key(key);
                    let readiness = if masked {
                        Readiness::Masked("an older resource declares the identical entry".into())
                    } else if let Some(message) = self.failed_writes.get(key) {
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
            if resource.status.as_ref() != Some(&status)
                && let Some(api) = &api
            {
                let patch = serde_json::json!({ "status": status });
                if let Err(e) = api
                    .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
                    .await
                {
                    tracing::warn!(clusterstaticentry = %name, error = %e, "writing status failed; will retry");
                    self.ctx.metrics.report_failures.inc();
                    all_ok = false;
                }
            }
            if let Some((reason, message)) = readiness.event()
                && *events < EVENTS_PER_PASS
            {
                let reference = resource.object_ref(&());
                match self
                    .announce(format!("cse/{name}"), &reference, reason, message)
                    .await
                {
                    Announced::Published => *events += 1,
                    Announced::Failed => all_ok = false,
                    Announced::AlreadyKnown => {}
                }
            }
        }
        all_ok
    }

    /// Publishes a Warning event about `subject` unless `note` was already published
    /// for it (events go out once per change). A failed publication is forgotten, so
    /// the next pass tries again.
    pub(super) async fn announce(
        &mut self,
        subject: String,
        reference: &ObjectReference,
        reason: &str,
        note: String,
    ) -> Announced {
        if self.announced.get(&subject) == Some(&note) {
            return Announced::AlreadyKnown;
        }
        let event = Event {
            type_: EventType::Warning,
            reason: reason.into(),
            note: Some(note.clone()),
            action: "Reconcile".into(),
            secondary: None,
        };
        let Some(recorder) = &self.ctx.recorder else {
            // Static mode: no API to publish to; the log is the only report.
            tracing::warn!(%subject, reason, note = %note, "problem (static mode: logged, no Event)");
            self.announced.insert(subject, note);
            return Announced::Published;
        };
        match recorder.publish(&event, reference).await {
            Ok(()) => {
                self.announced.insert(subject, note);
                Announced::Published
            }
            Err(e) => {
                tracing::warn!(%subject, error = %e, reason, "publishing event failed; will retry");
                self.ctx.metrics.report_failures.inc();
                Announced::Failed
            }
        }
    }

    /// Forgets the events of subjects that no longer fail, so memory follows the
    /// current failures and a failure that comes back is announced again.
    pub(super) fn prune_announced(&mut self) {
        let mut live: BTreeSet<String> = BTreeSet::new();
        for name in self.cluster_spiffe_ids.invalid.keys() {
            live.insert(format!("csid/{name}"));
        }
        for ((ns, pod), record) in &self.pod_records {
            for (name, outcome) in &record.outcomes {
                if matches!(outcome, Outcome::RenderFailed(_)) {
                    live.insert(format!("pod/{ns}/{pod}/{name}"));
                }
            }
        }
        let failing_csids: BTreeSet<&std::sync::Arc<str>> = self
            .pod_records
            .values()
            .flat_map(|r| r.owners.iter())
            .filter(|(_, key)| self.failed_writes.contains_key(key))
            .map(|(name, _)| name)
            .collect();
        live.extend(failing_csids.into_iter().map(|n| format!("csid/{n}")));
        for (name, record) in &self.static_records {
            let failing = match &record.result {
                Err(_) => true,
                Ok(key) => self.failed_writes.contains_key(key),
            };
            if failing {
                live.insert(format!("cse/{name}"));
            }
        }
        live.extend((self.annotation_refusals.keys()).map(|(ns, pod)| annotation_subject(ns, pod)));
        // A conflict lasts while the other entry is there and its key is still desired.
        for (subject, id) in &self.entry_conflicts {
            let holds = self.mirror.get(id).is_some_and(|entry| {
                entry.class != Class::Owned
                    && self.desired.get(&KeyId::of(&entry.spec.key)).is_some()
            });
            if holds {
                live.insert(subject.clone());
            }
        }
        self.entry_conflicts
            .retain(|subject, _| live.contains(subject));
        self.announced.retain(|subject, _| live.contains(subject));
    }

    /// A desired entry whose key an entry we may not adopt already has (CLI-made, another
    /// cluster's, a join-token agent's): that entry keeps serving as it is; the pods that
    /// wanted it get a Warning event, once while the conflict lasts.
    pub(super) async fn report_conflict(&mut self, id: &str, key: &EntryKey) {
        let message = format!(
            "SPIRE entry {id} (not created by spire-operator and outside the entries it may adopt) already has this pod's SPIFFE ID {}, parent ID and selectors; it keeps serving as it is, and spire-operator does not manage its other fields",
            key.spiffe_id
        );
        let pods: Vec<(String, String)> = self
            .desired
            .sources_of(&KeyId::of(key))
            .filter_map(|source| match source {
                Source::Pod(pod) => Some(pod.clone()),
                Source::Annotation { namespace, name } => Some((namespace.clone(), name.clone())),
                Source::Static { .. } => None,
            })
            .collect();
        let first = !self.entry_conflicts.values().any(|known| known == id);
        if first {
            self.ctx.metrics.entry_conflicts.inc();
            tracing::warn!(entry = %id, spiffe_id = %key.spiffe_id, "a desired entry already exists as an entry spire-operator may not adopt; left alone");
        }
        for (namespace, name) in pods {
            let subject = format!("conflict/{namespace}/{name}");
            self.entry_conflicts.insert(subject.clone(), id.to_owned());
            let reference = pod_reference(&namespace, &name);
            self.announce(subject, &reference, "EntryNotAdopted", message.clone())
                .await;
        }
    }
}

/// What [`Reconciler::announce`] did.
pub(super) enum Announced {
    Published,
    AlreadyKnown,
    Failed,
}

pub(super) fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}
