//! Annotation identities in the reconcile loop: the entry a pod's (or its
//! ServiceAccount's) `spiffe.io/spiffe-id` annotation asks for, declared as its own
//! [`Source::Annotation`] next to the pod's ClusterSPIFFEID entries, and the Warning
//! events and metric of refused annotations. The policy itself is
//! [`crate::render::annotated_entry`].
//!
//! Precedence: the pod's annotation wins over its ServiceAccount's (the DNS names come
//! from the same object as the SPIFFE ID). An annotation entry whose key (SPIFFE ID,
//! parent ID, selectors) a ClusterSPIFFEID or ClusterStaticEntry also declares is
//! masked by theirs (see [`crate::render::Age::of_annotation`]); otherwise it is one
//! more entry of the pod, owned and adopted like any other.

use kube::runtime::reflector::ObjectRef;

use super::pod_cache::{CachedPod, PodKey};
use super::pods::PodRenderer;
use super::report::{Announced, EVENTS_PER_PASS, pod_reference};
use super::runner::Reconciler;
use super::state::{KeySet, Source};
use crate::render::Age;
use crate::render::{AnnotatedBy, AnnotationInput, AnnotationRequest, Refusal, annotated_entry};
use crate::spire::EntrySpec;

/// What a pod's identity annotation amounts to.
#[derive(Debug)]
pub enum AnnotationOutcome {
    /// No annotation (or the feature is off, or the pod has no node yet).
    Nothing,
    /// The entry it asks for, with the age of the annotated object.
    Entry(Box<(Age, EntrySpec)>),
    /// Refused by the policy.
    Refused(Refusal),
}

/// The event subject of a pod's refused annotation.
pub fn annotation_subject(namespace: &str, pod: &str) -> String {
    format!("annotation/{namespace}/{pod}")
}

impl PodRenderer<'_> {
    /// The entry the pod's or its ServiceAccount's annotation asks for.
    pub fn annotation(&mut self, cached: &CachedPod) -> AnnotationOutcome {
        let settings = &self.config.annotation_identities;
        if !settings.enabled || self.config.is_namespace_ignored(&cached.namespace) {
            return AnnotationOutcome::Nothing;
        }
        let stores = self.stores;
        let service_account = stores
            .service_accounts
            .get(&ObjectRef::new(&cached.service_account).within(&cached.namespace));
        let from_sa = |name: &str| {
            let sa = service_account.as_ref()?;
            sa.metadata.annotations.as_ref()?.get(name).cloned()
        };
        let request = match cached.annotation(&settings.spiffe_id_annotation) {
            Some(value) => AnnotationRequest {
                by: AnnotatedBy::Pod,
                spiffe_id: value.to_owned(),
                dns_names: cached
                    .annotation(&settings.dns_names_annotation)
                    .map(str::to_owned),
            },
            None => match from_sa(&settings.spiffe_id_annotation) {
                Some(value) => AnnotationRequest {
                    by: AnnotatedBy::ServiceAccount(cached.service_account.clone()),
                    spiffe_id: value,
                    dns_names: from_sa(&settings.dns_names_annotation),
                },
                None => return AnnotationOutcome::Nothing,
            },
        };
        // As for ClusterSPIFFEID entries: no node yet, no entry and no error; the node's
        // arrival marks the pod again.
        let Some(node) = cached
            .node_name
            .as_deref()
            .and_then(|node| stores.nodes.get(&ObjectRef::new(node)))
        else {
            return AnnotationOutcome::Nothing;
        };
        let pod = match cached.pod() {
            Ok(pod) => pod,
            Err(e) => {
                tracing::error!(pod = %format!("{}/{}", cached.namespace, cached.name), error = %e, "decoding a cached pod");
                return AnnotationOutcome::Nothing;
            }
        };
        let trust_domain = &self.config.trust_domain;
        let node = self.node_data(node, trust_domain);
        let parent = match &node.parent {
            Ok(parent) => parent.clone(),
            Err(e) => {
                tracing::debug!(pod = %format!("{}/{}", cached.namespace, cached.name), error = %e, "no parent ID for an annotated pod");
                return AnnotationOutcome::Nothing;
            }
        };
        let mut data = node.data.clone().with_pod(&pod);
        let namespace = stores.namespaces.get(&ObjectRef::new(&cached.namespace));
        if let Some(namespace) = &namespace {
            data = data.with_namespace_meta(self.node_data.namespace(namespace));
        }
        if let Some(sa) = &service_account {
            data = data.with_service_account_meta(self.node_data.service_account(sa));
        }
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let input = AnnotationInput {
            data: &data,
            namespace: &cached.namespace,
            namespace_labels: namespace.as_ref().and_then(|n| n.metadata.labels.as_ref()),
            pod_uid: &uid,
            parent_id: &parent,
        };
        let age = match (&request.by, &service_account) {
            (AnnotatedBy::ServiceAccount(_), Some(sa)) => Age::of_annotation(&sa.metadata),
            _ => Age::of_annotation(&pod.metadata),
        };
        match annotated_entry(settings, trust_domain, &request, &input) {
            Ok(entry) => AnnotationOutcome::Entry(Box::new((age, entry))),
            Err(refusal) => AnnotationOutcome::Refused(refusal),
        }
    }
}

impl Reconciler {
    /// Declares (or withdraws) a pod's annotation entry and records a refusal; true when
    /// the declared entry changed. A refusal is counted once per new value, not at
    /// every recomputation.
    pub(super) fn set_annotation(
        &mut self,
        key: &PodKey,
        outcome: AnnotationOutcome,
        touched: &mut KeySet,
    ) -> bool {
        let source = Source::Annotation {
            namespace: key.0.clone(),
            name: key.1.clone(),
        };
        let entries = match outcome {
            AnnotationOutcome::Entry(entry) => {
                self.annotation_refusals.remove(key);
                vec![*entry]
            }
            AnnotationOutcome::Refused(refusal) => {
                if self.annotation_refusals.get(key) != Some(&refusal) {
                    self.ctx.metrics.annotation_refused(refusal.reason.label());
                    tracing::info!(pod = %format!("{}/{}", key.0, key.1), reason = refusal.reason.label(), "{refusal}");
                    self.annotation_refusals.insert(key.clone(), refusal);
                }
                Vec::new()
            }
            AnnotationOutcome::Nothing => {
                self.annotation_refusals.remove(key);
                Vec::new()
            }
        };
        self.desired.set(source, entries, touched)
    }

    /// Publishes a Warning event (reason `AnnotationRefused`) on each pod whose
    /// annotation is refused, once per refusal. Returns whether some are left to publish.
    pub(super) async fn report_annotation_refusals(&mut self) -> bool {
        let mut pending: Vec<(PodKey, String)> = self
            .annotation_refusals
            .iter()
            .filter(|((ns, pod), refusal)| {
                self.announced.get(&annotation_subject(ns, pod)) != Some(&refusal.message)
            })
            .map(|(key, refusal)| (key.clone(), refusal.message.clone()))
            .collect();
        pending.sort();
        let mut left = false;
        for (index, ((ns, pod), message)) in pending.into_iter().enumerate() {
            if index >= EVENTS_PER_PASS {
                left = true;
                break;
            }
            let reference = pod_reference(&ns, &pod);
            let subject = annotation_subject(&ns, &pod);
            if let Announced::Failed = self
                .announce(subject, &reference, "AnnotationRefused", message)
                .await
            {
                left = true;
            }
        }
        left
    }
}
