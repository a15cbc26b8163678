//! The operator's Prometheus metrics, all prefixed `spire_operator_`.
//!
//! What they answer: how much the operator writes to SPIRE and whether it succeeds
//! (`entry_writes_total`), how often it re-lists the server (`entry_lists_total`), how long
//! passes and SPIRE calls take, and the sizes it works with (desired, owned and foreign
//! entries, pods that cannot get an entry yet).

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A kind of entry write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// BatchCreateEntry.
    Create,
    /// BatchUpdateEntry.
    Update,
    /// BatchDeleteEntry.
    Delete,
}

impl Operation {
    fn label(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Update => "update",
            Self::Delete => "delete",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WriteLabels {
    operation: &'static str,
    result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReviewLabels {
    kind: String,
    allowed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusalLabels {
    reason: &'static str,
}

type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Every metric the operator exports.
pub struct Metrics {
    registry: Registry,
    entry_writes: Family<WriteLabels, Counter>,
    spire_rpc_duration: HistogramFamily,
    spire_rpc_failures: Family<MethodLabels, Counter>,
    /// X.509-SVIDs (new or rotated, or a new bundle) received from the Workload API, for
    /// the TCP+mTLS connection to the SPIRE server.
    pub workload_svid_updates: Counter,
    /// When the operator's current X.509-SVID expires, Unix seconds (0 without one).
    pub workload_svid_expiry: Gauge,
    /// Existing entries taken over in place.
    pub entries_adopted: Counter,
    /// Desired entries found as entries the operator may not adopt (left alone).
    pub entry_conflicts: Counter,
    /// Full ListEntries runs.
    pub entry_lists: Counter,
    /// Reconcile passes completed.
    pub passes: Counter,
    /// Pods whose entries were rendered (each rendering of one pod counts once).
    pub pod_renders: Counter,
    /// Duration of reconcile passes.
    pub pass_duration: Histogram,
    /// Distinct entries the cluster declares.
    pub entries_desired: Gauge,
    /// Entries on the server this operator owns.
    pub entries_owned: Gauge,
    /// Entries on the server this operator leaves alone.
    pub entries_foreign: Gauge,
    /// Pods with at least one entry that failed to render.
    pub pods_render_failed: Gauge,
    /// Selected pods without a node yet: no entry, no error.
    pub pods_unscheduled: Gauge,
    /// Objects waiting for recomputation.
    pub dirty_objects: Gauge,
    /// 1 while this replica holds the leader lease.
    pub leader: Gauge,
    /// 1 once the first full reconcile after start finished.
    pub initial_sync_complete: Gauge,
    /// 1 once every watch has completed its first listing.
    pub caches_synced: Gauge,
    /// 1 while the last SPIRE call reached the server.
    pub spire_reachable: Gauge,
    /// Entries whose incrementally kept desired state differed from a recomputation
    /// from the caches at a resync: changes the watches failed to deliver. Should stay 0.
    pub desired_drift: Counter,
    /// Status patches and event publications that failed (retried).
    pub report_failures: Counter,
    webhook_reviews: Family<ReviewLabels, Counter>,
    annotations_refused: Family<RefusalLabels, Counter>,
    /// Time to decide one admission review (body read to response built).
    pub webhook_review_duration: Histogram,
    /// Webhook serving certificates minted.
    pub webhook_certificates_minted: Counter,
    /// Failed attempts to mint the webhook serving certificate (retried with backoff).
    pub webhook_mint_failures: Counter,
    /// Expiry of the webhook serving certificate in use, Unix seconds; 0 before the first.
    pub webhook_certificate_expiry: Gauge,
    /// Patches of the ValidatingWebhookConfiguration's caBundle.
    pub webhook_ca_bundle_patches: Counter,
    federation_writes: Family<WriteLabels, Counter>,
    /// Federation relationships on the server this operator owns.
    pub federation_relationships_owned: Gauge,
    /// Federation relationships on the server this operator leaves alone.
    pub federation_relationships_foreign: Gauge,
    /// Static mode: bad manifest file versions seen (each counted once).
    pub static_manifest_errors: Counter,
    /// Static mode: manifest files whose current content is not used.
    pub static_manifests_invalid: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("spire_operator");
        let entry_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "entry_writes",
            "SPIRE entries written, by operation and result",
            entry_writes.clone(),
        );
        let spire_rpc_duration: HistogramFamily =
            Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16)));
        registry.register(
            "spire_rpc_duration_seconds",
            "SPIRE server API call latency, by method",
            spire_rpc_duration.clone(),
        );
        let spire_rpc_failures = Family::<MethodLabels, Counter>::default();
        registry.register(
            "spire_rpc_failures",
            "SPIRE server API calls that failed as a whole (unreachable, refused, timed out), by method",
            spire_rpc_failures.clone(),
        );
        let counter = |registry: &mut Registry, name: &str, help: &str| {
            let c = Counter::default();
            registry.register(name, help, c.clone());
            c
        };
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let g = Gauge::default();
            registry.register(name, help, g.clone());
            g
        };
        let entries_adopted = counter(
            &mut registry,
            "entries_adopted",
            "Existing entries taken over in place",
        );
        let entry_conflicts = counter(
            &mut registry,
            "entry_conflicts",
            "Desired entries that already exist as entries spire-operator may not adopt (left alone)",
        );
        let entry_lists = counter(&mut registry, "entry_lists", "Full ListEntries runs");
        let passes = counter(&mut registry, "passes", "Reconcile passes completed");
        let pod_renders = counter(
            &mut registry,
            "pod_renders",
            "Pods whose entries were rendered from their templates",
        );
        let pass_duration = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "pass_duration_seconds",
            "Reconcile pass duration",
            pass_duration.clone(),
        );
        let desired_drift = counter(
            &mut registry,
            "desired_drift",
            "Desired entries found different when recomputed from the caches at a resync (changes the watches lost; should stay 0)",
        );
        let report_failures = counter(
            &mut registry,
            "report_failures",
            "Status patches and Kubernetes Events that failed to be written (retried)",
        );
        let annotations_refused = Family::<RefusalLabels, Counter>::default();
        registry.register(
            "annotations_refused",
            "Identity annotations (spiffe.io/spiffe-id) refused by annotationIdentities' policy, by reason; counted once per refused value",
            annotations_refused.clone(),
        );
        let webhook_reviews = Family::<ReviewLabels, Counter>::default();
        registry.register(
            "webhook_reviews",
            "Admission reviews answered, by kind and verdict",
            webhook_reviews.clone(),
        );
        let webhook_review_duration = Histogram::new(exponential_buckets(0.00005, 2.0, 14));
        registry.register(
            "webhook_review_duration_seconds",
            "Time to decide one admission review",
            webhook_review_duration.clone(),
        );
        let federation_writes = Family::<WriteLabels, Counter>::default();
        registry.register(
            "federation_relationship_writes",
            "SPIRE federation relationships written, by operation and result",
            federation_writes.clone(),
        );
        Self {
            annotations_refused,
            webhook_reviews,
            webhook_review_duration,
            webhook_certificates_minted: counter(
                &mut registry,
                "webhook_certificates_minted",
                "Webhook serving certificates minted by SPIRE",
            ),
            webhook_mint_failures: counter(
                &mut registry,
                "webhook_mint_failures",
                "Failed attempts to mint the webhook serving certificate (retried)",
            ),
            webhook_certificate_expiry: gauge(
                &mut registry,
                "webhook_certificate_expiry_timestamp_seconds",
                "Expiry of the webhook serving certificate in use, Unix seconds (0: none yet)",
            ),
            webhook_ca_bundle_patches: counter(
                &mut registry,
                "webhook_ca_bundle_patches",
                "Patches of the ValidatingWebhookConfiguration's caBundle",
            ),
            federation_writes,
            federation_relationships_owned: gauge(
                &mut registry,
                "federation_relationships_owned",
                "Federation relationships on the server owned by this operator",
            ),
            federation_relationships_foreign: gauge(
                &mut registry,
                "federation_relationships_foreign",
                "Federation relationships on the server this operator leaves alone (server CLI, other tools)",
            ),
            static_manifest_errors: counter(
                &mut registry,
                "static_manifest_errors",
                "Static mode: invalid manifest file versions seen (skipped; the file's last valid version stays in force)",
            ),
            static_manifests_invalid: gauge(
                &mut registry,
                "static_manifests_invalid",
                "Static mode: manifest files whose current content is invalid and not used",
            ),
            caches_synced: gauge(
                &mut registry,
                "caches_synced",
                "1 once every watch has completed its first listing",
            ),
            spire_reachable: gauge(
                &mut registry,
                "spire_reachable",
                "1 while the last SPIRE server call reached the server",
            ),
            desired_drift,
            report_failures,
            entries_desired: gauge(
                &mut registry,
                "entries_desired",
                "Distinct entries the cluster declares",
            ),
            entries_owned: gauge(
                &mut registry,
                "entries_owned",
                "Entries on the server owned by this operator",
            ),
            entries_foreign: gauge(
                &mut registry,
                "entries_foreign",
                "Entries on the server this operator leaves alone",
            ),
            pods_render_failed: gauge(
                &mut registry,
                "pods_render_failed",
                "Pods with an entry that failed to render",
            ),
            pods_unscheduled: gauge(
                &mut registry,
                "pods_unscheduled",
                "Selected pods without a node yet",
            ),
            dirty_objects: gauge(
                &mut registry,
                "dirty_objects",
                "Objects waiting for recomputation",
            ),
            leader: gauge(
                &mut registry,
                "leader",
                "1 while this replica holds the leader lease",
            ),
            initial_sync_complete: gauge(
                &mut registry,
                "initial_sync_complete",
                "1 once the first full reconcile after start finished",
            ),
            workload_svid_updates: counter(
                &mut registry,
                "workload_svid_updates",
                "X.509-SVID updates received from the Workload API",
            ),
            workload_svid_expiry: gauge(
                &mut registry,
                "workload_svid_expiry_timestamp_seconds",
                "When the operator's own X.509-SVID expires (Unix seconds)",
            ),
            registry,
            entry_writes,
            spire_rpc_duration,
            spire_rpc_failures,
            entries_adopted,
            entry_conflicts,
            entry_lists,
            passes,
            pod_renders,
            pass_duration,
        }
    }

    /// Counts entries written with `op`.
    pub fn record_writes(&self, op: Operation, succeeded: u64, failed: u64) {
        for (result, n) in [("success", succeeded), ("failure", failed)] {
            if n > 0 {
                self.entry_writes
                    .get_or_create(&WriteLabels {
                        operation: op.label(),
                        result,
                    })
                    .inc_by(n);
            }
        }
    }

    /// Counts federation relationships written with `op`.
    pub fn record_federation_writes(&self, op: Operation, succeeded: u64, failed: u64) {
        for (result, n) in [("success", succeeded), ("failure", failed)] {
            if n > 0 {
                self.federation_writes
                    .get_or_create(&WriteLabels {
                        operation: op.label(),
                        result,
                    })
                    .inc_by(n);
            }
        }
    }

    /// Counts one refused identity annotation (`reason` from
    /// [`crate::render::RefusalReason::label`]).
    pub fn annotation_refused(&self, reason: &'static str) {
        self.annotations_refused
            .get_or_create(&RefusalLabels { reason })
            .inc();
    }

    /// Records one SPIRE API call's latency.
    pub fn observe_rpc(&self, method: &str, elapsed: Duration) {
        self.spire_rpc_duration
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .observe(elapsed.as_secs_f64());
    }

    /// Counts one SPIRE API call that failed as a whole.
    pub fn rpc_failed(&self, method: &str) {
        self.spire_rpc_failures
            .get_or_create(&MethodLabels {
                method: method.to_owned(),
            })
            .inc();
    }

    /// Counts one admission review of `kind` and its verdict.
    pub fn record_review(&self, kind: &str, allowed: bool, elapsed: Duration) {
        self.webhook_reviews
            .get_or_create(&ReviewLabels {
                kind: kind.to_owned(),
                allowed: if allowed { "true" } else { "false" },
            })
            .inc();
        self.webhook_review_duration.observe(elapsed.as_secs_f64());
    }

    /// The OpenMetrics text served at `/metrics`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exports_every_metric_with_its_name() {
        let metrics = Metrics::new();
        metrics.record_writes(Operation::Create, 3, 1);
        metrics.observe_rpc("entry.v1.Entry/ListEntries", Duration::from_millis(5));
        let text = metrics.encode();
        assert!(
            text.contains(
                "spire_operator_entry_writes_total{operation=\"create\",result=\"success\"} 3"
            ),
            "{text}"
        );
        assert!(text.contains(
            "spire_operator_entry_writes_total{operation=\"create\",result=\"failure\"} 1"
        ));
        for name in [
            "spire_operator_entries_adopted_total",
            "spire_operator_entry_lists_total",
            "spire_operator_passes_total",
            "spire_operator_pod_renders_total",
            "spire_operator_pass_duration_seconds_bucket",
            "spire_operator_spire_rpc_duration_seconds_bucket{",
            "spire_operator_entries_desired",
            "spire_operator_entries_owned",
            "spire_operator_entries_foreign",
            "spire_operator_pods_render_failed",
            "spire_operator_pods_unscheduled",
            "spire_operator_dirty_objects",
            "spire_operator_leader",
            "spire_operator_initial_sync_complete",
            "spire_operator_caches_synced",
            "spire_operator_spire_reachable",
            "spire_operator_desired_drift_total",
            "spire_operator_report_failures_total",
            "spire_operator_webhook_certificates_minted_total",
            "spire_operator_webhook_mint_failures_total",
            "spire_operator_webhook_certificate_expiry_timestamp_seconds",
            "spire_operator_webhook_ca_bundle_patches_total",
            "spire_operator_webhook_review_duration_seconds_bucket",
            "spire_operator_static_manifest_errors_total",
            "spire_operator_static_manifests_invalid",
        ] {
            assert!(text.contains(name), "{name} missing from\n{text}");
        }
    }
}
