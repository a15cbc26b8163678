//! Status of the custom resources: stats, the Ready condition and observedGeneration.
//! Building a status is pure; the reconciler patches it only when it differs.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::{
    ClusterFederatedTrustDomainStatus, ClusterSPIFFEIDStats, ClusterSPIFFEIDStatus,
    ClusterStaticEntryStatus,
};

/// Condition type reported on every resource.
pub const READY: &str = "Ready";

/// Why a resource is or is not ready.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Everything declared is on the server.
    Reconciled,
    /// The spec cannot be used; the message names the field.
    InvalidSpec(String),
    /// Some pod's entry cannot be rendered; the message names the pod and field.
    RenderFailed(String),
    /// The server refused or failed some writes; they are retried.
    EntryWriteFailed(String),
    /// Another resource declares the identical entry and wins it.
    Masked(String),
    /// Not handled by this operator (className).
    Ignored(String),
    /// A ClusterFederatedTrustDomain's relationship is on the server as declared.
    Federated(String),
    /// The server already has a relationship for the trust domain that the operator
    /// did not create and may not adopt.
    RelationshipNotOwned(String),
    /// An older ClusterFederatedTrustDomain declares the same trust domain.
    TrustDomainConflict(String),
    /// The server refused or failed the relationship's write; it is retried.
    RelationshipWriteFailed(String),
}

impl Readiness {
    /// The Warning event this readiness deserves (reason, message), if any: invalid
    /// specs and failed writes. Render failures are announced on the pod instead.
    pub fn event(&self) -> Option<(&'static str, String)> {
        match self {
            Self::InvalidSpec(m) => Some(("InvalidSpec", m.clone())),
            Self::EntryWriteFailed(m) => Some(("EntryWriteFailed", m.clone())),
            Self::RelationshipNotOwned(m) => Some(("RelationshipNotOwned", m.clone())),
            Self::TrustDomainConflict(m) => Some(("TrustDomainConflict", m.clone())),
            Self::RelationshipWriteFailed(m) => Some(("RelationshipWriteFailed", m.clone())),
            _ => None,
        }
    }

    fn parts(&self) -> (&'static str, &'static str, String) {
        match self {
            Self::Reconciled => (
                "True",
                "Reconciled",
                "all entries are on the SPIRE server".into(),
            ),
            Self::InvalidSpec(m) => ("False", "InvalidSpec", m.clone()),
            Self::RenderFailed(m) => ("False", "RenderFailed", m.clone()),
            Self::EntryWriteFailed(m) => ("False", "EntryWriteFailed", m.clone()),
            Self::Masked(m) => ("True", "Masked", m.clone()),
            Self::Ignored(m) => ("Unknown", "Ignored", m.clone()),
            Self::Federated(m) => ("True", "Reconciled", m.clone()),
            Self::RelationshipNotOwned(m) => ("False", "RelationshipNotOwned", m.clone()),
            Self::TrustDomainConflict(m) => ("False", "TrustDomainConflict", m.clone()),
            Self::RelationshipWriteFailed(m) => ("False", "RelationshipWriteFailed", m.clone()),
        }
    }
}

/// The Ready condition for `readiness`, keeping the previous transition time when the
/// status did not change.
pub fn ready_condition(
    readiness: &Readiness,
    generation: Option<i64>,
    previous: &[Condition],
    now: &Time,
) -> Condition {
    let (status, reason, message) = readiness.parts();
    let last_transition_time = previous
        .iter()
        .find(|c| c.type_ == READY && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or_else(|| now.clone());
    Condition {
        type_: READY.into(),
        status: status.into(),
        reason: reason.into(),
        // The API server caps messages at 32768 bytes.
        message: truncate(message, 4096),
        observed_generation: generation,
        last_transition_time,
    }
}

/// A ClusterSPIFFEID's status.
pub fn spiffe_id_status(
    stats: ClusterSPIFFEIDStats,
    readiness: &Readiness,
    generation: Option<i64>,
    previous: Option<&ClusterSPIFFEIDStatus>,
    now: &Time,
) -> ClusterSPIFFEIDStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    ClusterSPIFFEIDStatus {
        stats,
        conditions: vec![ready_condition(
            readiness,
            generation,
            previous_conditions,
            now,
        )],
        observed_generation: generation,
    }
}

/// A ClusterStaticEntry's status. `set` means the entry is on the server as declared.
pub fn static_entry_status(
    rendered: bool,
    masked: bool,
    set: bool,
    readiness: &Readiness,
    generation: Option<i64>,
    previous: Option<&ClusterStaticEntryStatus>,
    now: &Time,
) -> ClusterStaticEntryStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    ClusterStaticEntryStatus {
        rendered,
        masked,
        set,
        conditions: vec![ready_condition(
            readiness,
            generation,
            previous_conditions,
            now,
        )],
        observed_generation: generation,
    }
}

/// A ClusterFederatedTrustDomain's status.
pub fn federated_trust_domain_status(
    readiness: &Readiness,
    generation: Option<i64>,
    previous: Option<&ClusterFederatedTrustDomainStatus>,
    now: &Time,
) -> ClusterFederatedTrustDomainStatus {
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    ClusterFederatedTrustDomainStatus {
        conditions: vec![ready_condition(
            readiness,
            generation,
            previous_conditions,
            now,
        )],
        observed_generation: generation,
    }
}

fn truncate(mut message: String, max: usize) -> String {
    if message.len() > max {
        let mut cut = max;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
        message.push_str("...");
    }
    message
}

#[cfg(test)]
mod tests {
    use k8s_openapi::jiff::Timestamp;

    use super::*;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_changes_only_with_the_status() {
        let first = ready_condition(&Readiness::Reconciled, Some(1), &[], &at(100));
        assert_eq!(
            (first.status.as_str(), first.reason.as_str()),
            ("True", "Reconciled")
        );
        let same = ready_condition(
            &Readiness::Reconciled,
            Some(2),
            std::slice::from_ref(&first),
            &at(200),
        );
        assert_eq!(same.last_transition_time, at(100));
        assert_eq!(same.observed_generation, Some(2));
        let failed = ready_condition(
            &Readiness::InvalidSpec("spec.spiffeIDTemplate: bad".into()),
            Some(3),
            &[same],
            &at(300),
        );
        assert_eq!(
            (failed.status.as_str(), failed.reason.as_str()),
            ("False", "InvalidSpec")
        );
        assert_eq!(failed.last_transition_time, at(300));
        assert_eq!(failed.message, "spec.spiffeIDTemplate: bad");
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        let message = "é".repeat(3000);
        let cut = truncate(message, 4097);
        assert!(cut.len() <= 4100 && cut.ends_with("..."));
    }
}
