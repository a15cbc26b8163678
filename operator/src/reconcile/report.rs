//! What the operator tells about a pass: gauges, the status of each ClusterSPIFFEID and
//! ClusterStaticEntry, and Kubernetes Events for invalid specs and render failures.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Api, Resource, ResourceExt};

use super::desired::Outcome;
use super::runner::Reconciler;
use crate::crd::{ClusterSPIFFEID, ClusterSPIFFEIDStats, ClusterStaticEntry};
use crate::status::{self, Readiness};

/// Events published per pass at most, so a broken template does not flood the API server.
const EVENTS_PER_PASS: usize = 20;

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

    pub(super) async fn write_statuses(&mut self, affected: &BTreeSet<String>, statics: bool) {
        let now = Time(Timestamp::now());
        let mut events = 0;
        for resource in self.ctx.stores.cluster_spiffe_ids.state() {
            let name = resource.name_any();
            if !affected.contains(&name) || self.cluster_spiffe_ids.out_of_class.contains(&name) {
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
                    let reference = pod_reference(&pod.0, &pod.1);
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
        if let Some(e) = self.cluster_spiffe_ids.invalid.get(&name) {
            return (stats, Readiness::InvalidSpec(e.to_string()), Vec::new());
        }
        let Some(identity) = self
            .cluster_spiffe_ids
            .valid
            .iter()
            .find(|i| i.name == name)
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
                    && let Some(message) = self.failed_writes.get(key)
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

    /// Whether `message` is new for `subject` (events are published once per change).
    fn announce(&mut self, subject: String, message: &str) -> bool {
        if self.announced.get(&subject).map(String::as_str) == Some(message) {
            return false;
        }
        self.announced.insert(subject, message.to_owned());
        true
    }

    async fn publish(&self, reference: &ObjectReference, reason: &str, note: String) {
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

fn pod_reference(namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        namespace: Some(namespace.into()),
        name: Some(name.into()),
        ..Default::default()
    }
}
