//! What to write: the declared relationships against the server's listing and the
//! record of what the operator owns. Pure.

use std::collections::{BTreeMap, BTreeSet};

use super::record::{Owned, OwnedRelationship};
use super::relationship::{Differences, Relationship};
use crate::render::{Age, SpecError};
use crate::spire::api::types;

/// One in-class ClusterFederatedTrustDomain, as the planner sees it.
#[derive(Debug, Clone)]
pub struct Declared {
    /// Its name.
    pub name: String,
    /// Its age: of two resources for one trust domain, the older wins.
    pub age: Age,
    /// Whether it carries the adoption annotation (see [`super::ADOPT_ANNOTATION`]).
    pub adopt: bool,
    /// Its parsed spec.
    pub relationship: Result<Relationship, SpecError>,
}

/// What happened to, or is about to happen to, one resource's relationship.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// On the server as declared; nothing to write.
    InSync {
        /// The trust domain.
        trust_domain: String,
    },
    /// A create or update is planned; the write's result decides.
    Writing {
        /// The trust domain.
        trust_domain: String,
    },
    /// The spec does not parse; the relationship it had (if any) is left as it is.
    Invalid(SpecError),
    /// An older resource declares the same trust domain.
    Conflict {
        /// The trust domain.
        trust_domain: String,
        /// The older resource.
        winner: String,
    },
    /// The server has a relationship for the trust domain that the operator neither
    /// created nor adopted; it is left alone.
    Foreign {
        /// The trust domain.
        trust_domain: String,
    },
}

/// An update: the declaration, and which fields to send.
#[derive(Debug, Clone, PartialEq)]
pub struct Update {
    /// The declaring resource.
    pub resource: String,
    /// The declared relationship.
    pub relationship: Relationship,
    /// Fields that differ (URL, profile).
    pub differences: Differences,
    /// Whether the declared bundle changed since it was last sent.
    pub bundle: bool,
}

/// The writes of one pass, and each resource's outcome.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Plan {
    /// Trust domains to record as owned before anything is created (claims) or because
    /// their resource opted in to adopting the existing relationship.
    pub record: BTreeMap<String, OwnedRelationship>,
    /// Relationships to create, with the declaring resource.
    pub create: Vec<(String, Relationship)>,
    /// Relationships to update.
    pub update: Vec<Update>,
    /// Owned relationships no resource declares any more.
    pub delete: Vec<String>,
    /// Owned trust domains with neither a relationship nor a declaration: forget them.
    pub forget: Vec<String>,
    /// Per resource name.
    pub outcomes: BTreeMap<String, Outcome>,
}

/// Plans one pass. `listed` is the server's relationships by trust domain, `owned` the
/// record. Only owned relationships are updated or deleted; a relationship whose
/// declaring resource has become invalid is kept as it is.
pub fn plan(
    declared: &[Declared],
    listed: &BTreeMap<String, types::FederationRelationship>,
    owned: &Owned,
) -> Plan {
    let mut plan = Plan::default();
    let mut by_age: Vec<&Declared> = declared.iter().collect();
    by_age.sort_by(|a, b| a.age.cmp(&b.age).then_with(|| a.name.cmp(&b.name)));
    let mut winners: BTreeMap<&str, &str> = BTreeMap::new();
    // Trust domains still declared, or held by a resource whose spec broke.
    let mut keep: BTreeSet<&str> = BTreeSet::new();
    for resource in by_age {
        let relationship = match &resource.relationship {
            Ok(r) => r,
            Err(e) => {
                keep.extend(
                    owned
                        .iter()
                        .filter(|(_, o)| o.resource == resource.name)
                        .map(|(td, _)| td.as_str()),
                );
                plan.outcomes
                    .insert(resource.name.clone(), Outcome::Invalid(e.clone()));
                continue;
            }
        };
        let td = relationship.trust_domain.as_str();
        if let Some(winner) = winners.get(td) {
            plan.outcomes.insert(
                resource.name.clone(),
                Outcome::Conflict {
                    trust_domain: td.to_owned(),
                    winner: (*winner).to_owned(),
                },
            );
            continue;
        }
        winners.insert(td, &resource.name);
        keep.insert(td);
        let digest = relationship.bundle.as_ref().map(|b| b.digest.clone());
        let outcome = match (listed.get(td), owned.get(td)) {
            (None, _) => {
                plan.record.insert(
                    td.to_owned(),
                    OwnedRelationship {
                        resource: resource.name.clone(),
                        bundle_digest: None,
                    },
                );
                plan.create
                    .push((resource.name.clone(), relationship.clone()));
                Outcome::Writing {
                    trust_domain: td.to_owned(),
                }
            }
            (Some(_), None) if !resource.adopt => Outcome::Foreign {
                trust_domain: td.to_owned(),
            },
            (Some(current), record) => {
                let sent_digest = record.and_then(|r| r.bundle_digest.clone());
                let recorded = OwnedRelationship {
                    resource: resource.name.clone(),
                    bundle_digest: sent_digest.clone(),
                };
                if record != Some(&recorded) {
                    // Adopted now, or declared by another resource than before.
                    plan.record.insert(td.to_owned(), recorded);
                }
                let differences = relationship.differences(current);
                let bundle = digest.is_some() && digest != sent_digest;
                if differences.none() && !bundle {
                    Outcome::InSync {
                        trust_domain: td.to_owned(),
                    }
                } else {
                    plan.update.push(Update {
                        resource: resource.name.clone(),
                        relationship: relationship.clone(),
                        differences,
                        bundle,
                    });
                    Outcome::Writing {
                        trust_domain: td.to_owned(),
                    }
                }
            }
        };
        plan.outcomes.insert(resource.name.clone(), outcome);
    }
    for td in owned.keys() {
        if keep.contains(td.as_str()) {
            continue;
        }
        if listed.contains_key(td) {
            plan.delete.push(td.clone());
        } else {
            plan.forget.push(td.clone());
        }
    }
    plan
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{
        BundleEndpointProfile, BundleEndpointProfileType, ClusterFederatedTrustDomainSpec,
    };

    fn declared(name: &str, created: i64, td: &str, url: &str) -> Declared {
        let spec = ClusterFederatedTrustDomainSpec {
            trust_domain: td.into(),
            bundle_endpoint_url: url.into(),
            bundle_endpoint_profile: BundleEndpointProfile {
                type_: BundleEndpointProfileType::HttpsWeb,
                endpoint_spiffe_id: None,
            },
            trust_domain_bundle: None,
            class_name: None,
        };
        Declared {
            name: name.into(),
            age: Age::of(&ObjectMeta {
                creation_timestamp: Some(Time(Timestamp::from_second(created).unwrap())),
                ..Default::default()
            }),
            adopt: false,
            relationship: Relationship::parse(&spec, "own"),
        }
    }

    fn listing(rels: &[&Declared]) -> BTreeMap<String, types::FederationRelationship> {
        rels.iter()
            .map(|d| {
                let r = d.relationship.as_ref().unwrap();
                (r.trust_domain.clone(), r.to_api(false))
            })
            .collect()
    }

    fn owned(entries: &[(&str, &str)]) -> Owned {
        entries
            .iter()
            .map(|(td, resource)| {
                (
                    (*td).to_owned(),
                    OwnedRelationship {
                        resource: (*resource).to_owned(),
                        bundle_digest: None,
                    },
                )
            })
            .collect()
    }

    #[test]
    fn missing_relationships_are_claimed_and_created() {
        let a = declared("a", 1, "a.test", "https://a");
        let plan = plan(std::slice::from_ref(&a), &BTreeMap::new(), &Owned::new());
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.record["a.test"].resource, "a");
        assert!(matches!(plan.outcomes["a"], Outcome::Writing { .. }));
    }

    #[test]
    fn foreign_relationships_are_neither_changed_nor_deleted() {
        let a = declared("a", 1, "a.test", "https://a");
        let mut listed = listing(&[&a]);
        listed.get_mut("a.test").unwrap().bundle_endpoint_url = "https://cli".into();
        let cli_made = declared("x", 1, "cli.test", "https://cli");
        listed.extend(listing(&[&cli_made]));
        let plan = plan(std::slice::from_ref(&a), &listed, &Owned::new());
        assert_eq!(
            plan.outcomes["a"],
            Outcome::Foreign {
                trust_domain: "a.test".into()
            }
        );
        assert!(plan.create.is_empty() && plan.update.is_empty() && plan.delete.is_empty());
        assert!(plan.record.is_empty());
    }

    #[test]
    fn adoption_is_opt_in_and_recorded_before_the_update() {
        let mut a = declared("a", 1, "a.test", "https://a");
        a.adopt = true;
        let mut listed = listing(&[&a]);
        listed.get_mut("a.test").unwrap().bundle_endpoint_url = "https://old".into();
        let plan = plan(std::slice::from_ref(&a), &listed, &Owned::new());
        assert_eq!(plan.record["a.test"].resource, "a");
        assert_eq!(plan.update.len(), 1);
        assert!(plan.update[0].differences.url && !plan.update[0].bundle);
    }

    #[test]
    fn only_owned_undeclared_relationships_are_deleted() {
        let a = declared("a", 1, "a.test", "https://a");
        let b = declared("b", 1, "b.test", "https://b");
        let listed = listing(&[&a, &b]);
        let record = owned(&[("a.test", "a"), ("gone.test", "g")]);
        let plan = plan(&[], &listed, &record);
        assert_eq!(plan.delete, ["a.test"]);
        assert_eq!(plan.forget, ["gone.test"]);
    }

    #[test]
    fn a_resource_whose_spec_broke_keeps_its_relationship() {
        let a = declared("a", 1, "a.test", "https://a");
        let listed = listing(&[&a]);
        let broken = declared("a", 1, "A.test", "https://a");
        let plan = plan(&[broken], &listed, &owned(&[("a.test", "a")]));
        assert!(plan.delete.is_empty(), "{plan:?}");
        assert!(matches!(plan.outcomes["a"], Outcome::Invalid(_)));
    }

    #[test]
    fn the_older_resource_wins_a_trust_domain() {
        let old = declared("old", 1, "a.test", "https://old");
        let new = declared("new", 2, "a.test", "https://new");
        let plan = plan(&[new, old], &BTreeMap::new(), &Owned::new());
        assert_eq!(plan.create.len(), 1);
        assert_eq!(plan.create[0].0, "old");
        assert_eq!(
            plan.outcomes["new"],
            Outcome::Conflict {
                trust_domain: "a.test".into(),
                winner: "old".into()
            }
        );
    }

    #[test]
    fn a_changed_bundle_alone_is_an_update_and_an_unchanged_one_is_not() {
        let json = |seq: u64| serde_json::json!({"keys": [], "spiffe_sequence": seq}).to_string();
        let mut a = declared("a", 1, "a.test", "https://a");
        if let Ok(r) = a.relationship.as_mut() {
            r.bundle = Relationship::parse(
                &ClusterFederatedTrustDomainSpec {
                    trust_domain_bundle: Some(json(1)),
                    ..spec_of(r)
                },
                "own",
            )
            .unwrap()
            .bundle;
        }
        let listed = listing(&[&a]);
        let digest = a
            .relationship
            .as_ref()
            .unwrap()
            .bundle
            .as_ref()
            .unwrap()
            .digest
            .clone();
        let mut record = owned(&[("a.test", "a")]);
        record.get_mut("a.test").unwrap().bundle_digest = Some(digest);
        assert!(
            plan(std::slice::from_ref(&a), &listed, &record)
                .update
                .is_empty()
        );
        record.get_mut("a.test").unwrap().bundle_digest = Some("older".into());
        let p = plan(std::slice::from_ref(&a), &listed, &record);
        assert_eq!(p.update.len(), 1);
        assert!(p.update[0].bundle && p.update[0].differences.none());
    }

    fn spec_of(r: &Relationship) -> ClusterFederatedTrustDomainSpec {
        ClusterFederatedTrustDomainSpec {
            trust_domain: r.trust_domain.clone(),
            bundle_endpoint_url: r.bundle_endpoint_url.clone(),
            bundle_endpoint_profile: BundleEndpointProfile {
                type_: BundleEndpointProfileType::HttpsWeb,
                endpoint_spiffe_id: None,
            },
            trust_domain_bundle: None,
            class_name: None,
        }
    }
}
