//! ClusterFederatedTrustDomains into SPIRE federation relationships (trustdomain v1 API).
//!
//! ```text
//! watch (store) ──marks──> dirty ──> pass: ListFederationRelationships ─┐
//!                                        declarations (in class, parsed)├─> plan ──> record claims ──> write ──> record ──> status, events
//!                                        ownership record (ConfigMap) ──┘
//! ```
//!
//! - [`relationship`] parses a spec (spire-controller-manager's rules, fields named in
//!   errors) and compares it with a listed relationship; [`bundle`] reads SPIFFE bundle
//!   JSON; [`plan`] decides; [`record`] keeps what the operator owns; [`runner`] does
//!   the I/O.
//!
//! Ownership: SPIRE relationships carry no owner, so the operator records the trust
//! domains whose relationships it created or adopted in the ConfigMap
//! [`record::FEDERATION_CONFIG_MAP`] of its namespace, and changes or deletes only
//! those. A declared trust domain that already has a relationship it does not own
//! (`spire-server federation create`, another tool) is left alone and reported
//! (`Ready=False`, reason `RelationshipNotOwned`, and an Event) unless the resource
//! carries [`ADOPT_ANNOTATION`]`: "true"`. Relationships from the server's config file
//! (`federation.federates_with`) are not in the API's listing at all, so they are never
//! seen, changed or deleted.

pub mod bundle;
pub mod plan;
pub mod record;
pub mod relationship;
pub mod runner;
#[cfg(test)]
mod tests;

pub use runner::{FederationContext, FederationReconciler};

/// Annotation on a ClusterFederatedTrustDomain that lets the operator adopt an existing
/// relationship for its trust domain that it did not create (value `"true"`).
pub const ADOPT_ANNOTATION: &str = "spire.spiffe.io/adopt-federation-relationship";
