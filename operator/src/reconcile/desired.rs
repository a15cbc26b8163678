//! The entries one pod should have, given every ClusterSPIFFEID in scope: selection,
//! fallback and masking, as spire-controller-manager decides them. Pure.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::render::{Age, PodIdentity, SpecError};
use crate::spire::{EntryKey, EntrySpec};

/// What one ClusterSPIFFEID did for one pod that it selects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Its entry is the one set for the pod (`entriesToSet`).
    Set,
    /// An older ClusterSPIFFEID declares the identical entry (`entriesMasked`).
    Masked,
    /// A fallback identity skipped because a non-fallback one applies.
    FallbackSkipped,
    /// Rendering failed (`podEntryRenderFailures`). Boxed: the other outcomes, kept per
    /// pod and ClusterSPIFFEID, are then 8 bytes instead of 48.
    RenderFailed(Box<SpecError>),
}

/// The entries of one pod and what each selecting ClusterSPIFFEID contributed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PodEntries {
    /// One entry per distinct key, the winner's.
    pub entries: Vec<EntrySpec>,
    /// The winning ClusterSPIFFEID of each entry, in the same order.
    pub owners: Vec<Arc<str>>,
    /// The age of each entry's winning ClusterSPIFFEID (for masking across objects).
    pub owner_ages: Vec<Age>,
    /// Per selecting ClusterSPIFFEID (by name), its outcome.
    pub outcomes: Vec<(Arc<str>, Outcome)>,
}

/// Computes a pod's entries. `cluster_spiffe_ids` are the valid ClusterSPIFFEIDs in scope, in
/// any order; `selects` says whether one selects this pod (pod and namespace selectors,
/// ignored namespaces); `render` renders its entry for this pod.
pub fn pod_entries(
    cluster_spiffe_ids: &[Arc<PodIdentity>],
    selects: impl Fn(&PodIdentity) -> bool,
    render: impl Fn(&PodIdentity) -> Result<EntrySpec, SpecError>,
) -> PodEntries {
    let mut selected: Vec<&Arc<PodIdentity>> =
        cluster_spiffe_ids.iter().filter(|i| selects(i)).collect();
    // Non-fallback identities first; a fallback applies only if none of them produced an entry.
    selected.sort_by(|a, b| (a.fallback, &a.age).cmp(&(b.fallback, &b.age)));

    let mut result = PodEntries::default();
    let mut rendered: Vec<(&Arc<PodIdentity>, EntrySpec)> = Vec::new();
    let mut non_fallback_applied = false;
    for identity in selected {
        if identity.fallback && non_fallback_applied {
            result
                .outcomes
                .push((identity.name.clone(), Outcome::FallbackSkipped));
            continue;
        }
        match render(identity) {
            Ok(entry) => {
                non_fallback_applied |= !identity.fallback;
                rendered.push((identity, entry));
            }
            Err(e) => result
                .outcomes
                .push((identity.name.clone(), Outcome::RenderFailed(Box::new(e)))),
        }
    }

    // Identical keys: the oldest declaring identity wins.
    let mut by_key: BTreeMap<EntryKey, Vec<(&Arc<PodIdentity>, EntrySpec)>> = BTreeMap::new();
    for (identity, entry) in rendered {
        by_key
            .entry(entry.key.clone())
            .or_default()
            .push((identity, entry));
    }
    for (_, mut claims) in by_key {
        claims.sort_by(|a, b| a.0.age.cmp(&b.0.age));
        let mut claims = claims.into_iter();
        if let Some((winner, entry)) = claims.next() {
            result.outcomes.push((winner.name.clone(), Outcome::Set));
            result.entries.push(entry);
            result.owners.push(winner.name.clone());
            result.owner_ages.push(winner.age.clone());
        }
        for (loser, _) in claims {
            result.outcomes.push((loser.name.clone(), Outcome::Masked));
        }
    }
    result.outcomes.sort_by(|a, b| a.0.cmp(&b.0));
    result
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
    use k8s_openapi::jiff::Timestamp;

    use super::*;
    use crate::crd::{ClusterSPIFFEID, ClusterSPIFFEIDSpec};

    fn identity(name: &str, created_secs: i64, template: &str, fallback: bool) -> Arc<PodIdentity> {
        let resource = ClusterSPIFFEID {
            metadata: ObjectMeta {
                name: Some(name.into()),
                uid: Some(format!("uid-{name}")),
                creation_timestamp: Some(Time(Timestamp::from_second(created_secs).unwrap())),
                ..Default::default()
            },
            spec: ClusterSPIFFEIDSpec {
                spiffe_id_template: template.into(),
                fallback,
                ..Default::default()
            },
            status: None,
        };
        Arc::new(PodIdentity::parse(&resource).unwrap())
    }

    /// Renders without templates: the identity's name decides the path, so identities
    /// whose template is "same" collide.
    fn fake_render(identity: &PodIdentity, path: &str) -> EntrySpec {
        let _ = identity;
        EntrySpec::keyed(
            &format!("spiffe://td/{path}"),
            "spiffe://td/agent",
            ["k8s:pod-uid:1".to_string()],
        )
    }

    fn run(identities: &[Arc<PodIdentity>], paths: &[(&str, Option<&str>)]) -> PodEntries {
        let paths: BTreeMap<&str, Option<&str>> = paths.iter().copied().collect();
        pod_entries(
            identities,
            |i| paths.contains_key(&*i.name),
            |i| match paths[&*i.name] {
                Some(path) => Ok(fake_render(i, path)),
                None => Err(SpecError {
                    field: "spec.spiffeIDTemplate".into(),
                    message: "boom".into(),
                }),
            },
        )
    }

    fn outcomes(result: &PodEntries) -> Vec<(&str, &Outcome)> {
        result.outcomes.iter().map(|(n, o)| (&**n, o)).collect()
    }

    #[test]
    fn identical_entries_go_to_the_oldest_identity() {
        let old = identity("old", 100, "x", false);
        let new = identity("new", 200, "x", false);
        let result = run(&[new, old], &[("old", Some("same")), ("new", Some("same"))]);
        assert_eq!(result.entries.len(), 1);
        assert_eq!(
            outcomes(&result),
            vec![("new", &Outcome::Masked), ("old", &Outcome::Set)]
        );
    }

    #[test]
    fn different_entries_from_two_identities_both_apply() {
        let a = identity("a", 100, "x", false);
        let b = identity("b", 200, "x", false);
        let result = run(&[a, b], &[("a", Some("one")), ("b", Some("two"))]);
        assert_eq!(result.entries.len(), 2);
    }

    #[test]
    fn fallback_applies_only_without_a_rendered_non_fallback_identity() {
        let main = identity("main", 200, "x", false);
        let fallback = identity("fallback", 100, "x", true);
        let both = [main.clone(), fallback.clone()];

        let selected_by_both = run(&both, &[("main", Some("main")), ("fallback", Some("fb"))]);
        assert_eq!(
            outcomes(&selected_by_both),
            vec![
                ("fallback", &Outcome::FallbackSkipped),
                ("main", &Outcome::Set)
            ]
        );

        let only_fallback = run(&both, &[("fallback", Some("fb"))]);
        assert_eq!(outcomes(&only_fallback), vec![("fallback", &Outcome::Set)]);

        // spire-controller-manager counts a non-fallback identity as applied only once
        // its entry rendered.
        let main_failed = run(&both, &[("main", None), ("fallback", Some("fb"))]);
        assert_eq!(main_failed.entries.len(), 1);
        assert!(matches!(
            main_failed.outcomes[1].1,
            Outcome::RenderFailed(_)
        ));
    }

    #[test]
    fn unselected_pod_has_no_entries() {
        let a = identity("a", 100, "x", false);
        assert_eq!(run(&[a], &[]), PodEntries::default());
    }
}
