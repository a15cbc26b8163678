//! Deciding one AdmissionReview (`admission.k8s.io/v1`): the same parsing the reconciler
//! applies to ClusterSPIFFEID, ClusterStaticEntry and ClusterFederatedTrustDomain, plus
//! the trust domain checks that SPIRE would otherwise make at write time. Pure: a
//! request in, a response out.
//!
//! What is allowed without looking at the spec:
//! - DELETE (and CONNECT): an object stored invalid can always be removed.
//! - an UPDATE that leaves `spec` unchanged (labels, annotations, finalizers): an
//!   invalid object stored before the webhook existed can still have its finalizers
//!   removed. spire-controller-manager validates the whole object on every UPDATE, so
//!   such an object cannot be touched there (its issue #282).
//!
//! Trust domain checks (a static entry's IDs, the literal start of a `spiffeIDTemplate`,
//! a federation with the server's own trust domain) are skipped for resources that name
//! another `className` than the operator's: another operator, maybe of another trust
//! domain, handles them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crd::{ClusterFederatedTrustDomain, ClusterSPIFFEID, ClusterStaticEntry};
use crate::render::{
    FederationRelationship, PodIdentity, SpecError, StaticEntry, check_spiffe_id_template,
};

/// What the webhook checks resources against.
#[derive(Debug, Clone)]
pub struct Validator {
    /// The SPIRE server's trust domain (`trustDomain`).
    pub trust_domain: String,
    /// The operator's `className`, if any.
    pub class_name: Option<String>,
}

/// The parts of an `AdmissionReview` request the webhook reads.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Echoed in the response.
    pub uid: String,
    /// The kind of the object.
    pub kind: RequestKind,
    /// CREATE, UPDATE, DELETE or CONNECT.
    pub operation: String,
    /// The object's name (empty for some CREATEs with generateName).
    #[serde(default)]
    pub name: String,
    /// The object as it would be stored (CREATE, UPDATE).
    #[serde(default)]
    pub object: Option<Value>,
    /// The object as stored (UPDATE, DELETE).
    #[serde(default)]
    pub old_object: Option<Value>,
}

/// `request.kind`.
#[derive(Debug, Clone, Deserialize)]
pub struct RequestKind {
    /// API group, e.g. `spire.spiffe.io`.
    #[serde(default)]
    pub group: String,
    /// Kind, e.g. `ClusterSPIFFEID`.
    pub kind: String,
}

#[derive(Debug, Deserialize)]
struct AdmissionReviewIn {
    request: Option<AdmissionRequest>,
}

/// The verdict on one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Admitted.
    Allowed,
    /// Refused, with the message the client sees.
    Denied(String),
}

/// A decided review: the verdict (for logs and metrics) and the response body.
#[derive(Debug, Clone)]
pub struct Reviewed {
    /// The request's kind, or `unknown`.
    pub kind: String,
    /// The verdict.
    pub verdict: Verdict,
    /// The `AdmissionReview` to send back.
    pub response: Value,
}

#[derive(Serialize)]
struct AdmissionReviewOut<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'static str,
    kind: &'static str,
    response: ResponseOut<'a>,
}

#[derive(Serialize)]
struct ResponseOut<'a> {
    uid: &'a str,
    allowed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<StatusOut<'a>>,
}

/// A `metav1.Status` as controller-runtime's `admission.Denied` fills it.
#[derive(Serialize)]
struct StatusOut<'a> {
    status: &'static str,
    message: &'a str,
    reason: &'static str,
    code: u16,
}

/// Why a body is not an AdmissionReview the webhook can answer (HTTP 400).
#[derive(Debug, thiserror::Error)]
#[error("the request body is not an admission.k8s.io/v1 AdmissionReview with a request: {0}")]
pub struct BadReview(String);

impl Validator {
    /// Decides the AdmissionReview in `body`.
    pub fn review(&self, body: &[u8]) -> Result<Reviewed, BadReview> {
        let review: AdmissionReviewIn =
            serde_json::from_slice(body).map_err(|e| BadReview(e.to_string()))?;
        let request = review
            .request
            .ok_or_else(|| BadReview("no request".into()))?;
        let verdict = self.decide(&request);
        let message = match &verdict {
            Verdict::Allowed => None,
            Verdict::Denied(message) => Some(message.as_str()),
        };
        let response = serde_json::to_value(AdmissionReviewOut {
            api_version: "admission.k8s.io/v1",
            kind: "AdmissionReview",
            response: ResponseOut {
                uid: &request.uid,
                allowed: message.is_none(),
                status: message.map(|message| StatusOut {
                    status: "Failure",
                    message,
                    reason: "Forbidden",
                    code: 403,
                }),
            },
        })
        .map_err(|e| BadReview(e.to_string()))?;
        Ok(Reviewed {
            kind: request.kind.kind.clone(),
            verdict,
            response,
        })
    }

    /// The verdict on one request.
    pub fn decide(&self, request: &AdmissionRequest) -> Verdict {
        if !matches!(request.operation.as_str(), "CREATE" | "UPDATE") {
            return Verdict::Allowed;
        }
        let Some(object) = &request.object else {
            return Verdict::Denied(format!(
                "{} {:?}: the request carries no object",
                request.kind.kind, request.name
            ));
        };
        if request.operation == "UPDATE"
            && let Some(old) = &request.old_object
            && old.get("spec") == object.get("spec")
        {
            return Verdict::Allowed;
        }
        let kind = request.kind.kind.as_str();
        let name = object
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or(&request.name);
        let result = match (request.kind.group.as_str(), kind) {
            ("spire.spiffe.io", "ClusterSPIFFEID") => {
                read::<ClusterSPIFFEID>(object).and_then(|r| self.cluster_spiffe_id(&r))
            }
            ("spire.spiffe.io", "ClusterStaticEntry") => {
                read::<ClusterStaticEntry>(object).and_then(|r| self.cluster_static_entry(&r))
            }
            ("spire.spiffe.io", "ClusterFederatedTrustDomain") => {
                read::<ClusterFederatedTrustDomain>(object)
                    .and_then(|r| self.cluster_federated_trust_domain(&r))
            }
            (group, _) => Err(SpecError {
                field: "kind".into(),
                message: format!(
                    "{kind}.{group} is not validated here (only ClusterSPIFFEID, ClusterStaticEntry and ClusterFederatedTrustDomain of spire.spiffe.io); check the ValidatingWebhookConfiguration's rules"
                ),
            }),
        };
        match result {
            Ok(()) => Verdict::Allowed,
            Err(e) => Verdict::Denied(format!("{kind} {name:?}: {e}")),
        }
    }

    /// Whether trust-domain checks apply to a resource of `class_name`.
    fn is_ours(&self, class_name: Option<&str>) -> bool {
        match class_name.filter(|c| !c.is_empty()) {
            None => true,
            Some(class) => self.class_name.as_deref() == Some(class),
        }
    }

    fn cluster_spiffe_id(&self, resource: &ClusterSPIFFEID) -> Result<(), SpecError> {
        PodIdentity::parse(resource)?;
        if self.is_ours(resource.spec.class_name.as_deref()) {
            check_spiffe_id_template(&resource.spec.spiffe_id_template, &self.trust_domain)?;
        } else if resource.spec.spiffe_id_template.trim().is_empty() {
            check_spiffe_id_template("", "")?;
        }
        Ok(())
    }

    /// The webhook's verdict on a ClusterStaticEntry (static mode checks its files with it).
    pub fn cluster_static_entry(&self, resource: &ClusterStaticEntry) -> Result<(), SpecError> {
        let parsed = StaticEntry::parse(resource)?;
        if self.is_ours(resource.spec.class_name.as_deref()) {
            for (field, id) in [
                ("spec.spiffeID", &parsed.entry.key.spiffe_id),
                ("spec.parentID", &parsed.entry.key.parent_id),
            ] {
                if id.trust_domain() != self.trust_domain {
                    return Err(SpecError {
                        field: field.into(),
                        message: format!(
                            "\"{id}\" is not in trust domain {:?}; SPIRE accepts only IDs of its own trust domain",
                            self.trust_domain
                        ),
                    });
                }
            }
        }
        Ok(())
    }

    /// The webhook's verdict on a ClusterFederatedTrustDomain (static mode checks its
    /// files with it).
    pub fn cluster_federated_trust_domain(
        &self,
        resource: &ClusterFederatedTrustDomain,
    ) -> Result<(), SpecError> {
        // The own-trust-domain check needs to know whose server this is.
        let own = if self.is_ours(resource.spec.class_name.as_deref()) {
            self.trust_domain.as_str()
        } else {
            ""
        };
        FederationRelationship::parse(resource, own).map(|_| ())
    }
}

/// The object as the typed resource; a shape the CRD schema would not let through
/// (an old schema, a CRD without it) is refused naming serde's complaint.
fn read<T: serde::de::DeserializeOwned>(object: &Value) -> Result<T, SpecError> {
    serde_json::from_value(object.clone()).map_err(|e| SpecError {
        field: "spec".into(),
        message: format!("cannot be read: {e}"),
    })
}

#[cfg(test)]
mod tests;
