//! `staticManifestPath` / `expandEnvStaticManifests`: static mode, where the operator
//! reconciles ClusterStaticEntry and ClusterFederatedTrustDomain manifests read from a
//! directory and never talks to a Kubernetes API server.
//!
//! spire-controller-manager's start-up rules apply: leader election and ClusterSPIFFEID
//! reconciliation are refused (both need the API), and without a `reconcile` block
//! ClusterSPIFFEIDs default to off. Our own additions that need the API are refused too
//! (`annotationIdentities.enabled`); statuses, Events and the validating webhook do not
//! exist in static mode (the webhook keys are accepted and have no effect, as there).

use std::path::PathBuf;

use serde::Serialize;

use super::raw::{RawConfig, RawReconcile};
use super::{ConfigError, ConfigNote, Reconcile};

/// Static mode's settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticMode {
    /// `staticManifestPath`: the directory whose `*.yaml` files are the manifests.
    pub manifest_path: PathBuf,
    /// `expandEnvStaticManifests`: replace `$VAR` / `${VAR}` in each file from the
    /// environment before parsing (Go's `os.ExpandEnv`: unset variables become empty).
    pub expand_env: bool,
}

/// Static mode from the raw keys; `None` when `staticManifestPath` is absent or empty
/// (spire-controller-manager would enter static mode with an empty path and fail to
/// read the directory `""` on every pass; here the empty key means "off").
/// Refuses what static mode cannot do, naming the key.
pub(super) fn parse(
    raw: &RawConfig,
    notes: &mut Vec<ConfigNote>,
) -> Result<Option<StaticMode>, ConfigError> {
    let expand_env = raw.expand_env_static_manifests.unwrap_or(false);
    let Some(path) = raw
        .static_manifest_path
        .as_deref()
        .filter(|p| !p.is_empty())
    else {
        if expand_env {
            notes.push(ConfigNote {
                key: "expandEnvStaticManifests".into(),
                message: "ignored: staticManifestPath is not set".into(),
            });
        }
        return Ok(None);
    };
    let refuse = |key: &str, why: &str| ConfigError::Invalid {
        key: key.into(),
        message: format!(
            "true is not possible with staticManifestPath {path:?}: static mode runs without the Kubernetes API, {why}"
        ),
    };
    if raw
        .leader_election
        .as_ref()
        .and_then(|l| l.leader_elect)
        .unwrap_or(false)
    {
        return Err(refuse(
            "leaderElection.leaderElect",
            "so there is no Lease to elect a leader with",
        ));
    }
    if raw
        .reconcile
        .as_ref()
        .and_then(|r| r.cluster_spiffe_ids)
        .unwrap_or(false)
    {
        return Err(refuse(
            "reconcile.clusterSPIFFEIDs",
            "and ClusterSPIFFEIDs select pods, which only the API has",
        ));
    }
    if raw
        .annotation_identities
        .as_ref()
        .and_then(|a| a.enabled)
        .unwrap_or(false)
    {
        return Err(refuse(
            "annotationIdentities.enabled",
            "and annotations are read from pods and ServiceAccounts",
        ));
    }
    Ok(Some(StaticMode {
        manifest_path: PathBuf::from(path),
        expand_env,
    }))
}

/// `reconcile.*`: without a block all kinds, except ClusterSPIFFEIDs in static mode
/// (spire-controller-manager's default there); with one, only the kinds it lists.
pub(super) fn reconcile(raw: Option<&RawReconcile>, static_mode: bool) -> Reconcile {
    match raw {
        None => Reconcile {
            cluster_spiffe_ids: !static_mode,
            cluster_static_entries: true,
            cluster_federated_trust_domains: true,
        },
        Some(r) => Reconcile {
            cluster_spiffe_ids: r.cluster_spiffe_ids.unwrap_or(false),
            cluster_static_entries: r.cluster_static_entries.unwrap_or(false),
            cluster_federated_trust_domains: r.cluster_federated_trust_domains.unwrap_or(false),
        },
    }
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, ConfigError};

    const BASE: &str = "trustDomain: example.org\nclusterName: prod\nstaticManifestPath: /m\n";

    fn refusal(extra: &str) -> String {
        match Config::from_yaml(&format!("{BASE}{extra}")) {
            Err(e @ ConfigError::Invalid { .. }) => e.to_string(),
            other => panic!("{extra:?}: expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn the_path_turns_static_mode_on_and_an_empty_one_does_not() {
        let c = Config::from_yaml(BASE).unwrap();
        let mode = c.static_mode.unwrap();
        assert_eq!(mode.manifest_path, std::path::Path::new("/m"));
        assert!(!mode.expand_env);
        let c = Config::from_yaml(&format!("{BASE}expandEnvStaticManifests: true\n")).unwrap();
        assert!(c.static_mode.unwrap().expand_env);
        let off = "trustDomain: example.org\nclusterName: prod\nstaticManifestPath: ''\n";
        assert_eq!(Config::from_yaml(off).unwrap().static_mode, None);
    }

    #[test]
    fn cluster_spiffe_ids_default_to_off_in_static_mode_only() {
        let c = Config::from_yaml(BASE).unwrap();
        assert!(!c.reconcile.cluster_spiffe_ids);
        assert!(c.reconcile.cluster_static_entries && c.reconcile.cluster_federated_trust_domains);
        let api = Config::from_yaml("trustDomain: example.org\nclusterName: prod\n").unwrap();
        assert!(api.reconcile.cluster_spiffe_ids);
        // A block listing only one kind reconciles only that kind, as everywhere.
        let c = Config::from_yaml(&format!(
            "{BASE}reconcile: {{clusterStaticEntries: true}}\n"
        ))
        .unwrap();
        assert!(c.reconcile.cluster_static_entries && !c.reconcile.cluster_federated_trust_domains);
    }

    #[test]
    fn leader_election_is_refused_naming_the_key() {
        let e = refusal("leaderElection: {leaderElect: true, resourceName: x}\n");
        assert!(
            e.contains("\"leaderElection.leaderElect\"") && e.contains("\"/m\""),
            "{e}"
        );
        // Off is fine.
        Config::from_yaml(&format!("{BASE}leaderElection: {{leaderElect: false}}\n")).unwrap();
    }

    #[test]
    fn cluster_spiffe_ids_explicitly_on_are_refused_naming_the_key() {
        let e = refusal("reconcile: {clusterSPIFFEIDs: true, clusterStaticEntries: true}\n");
        assert!(e.contains("\"reconcile.clusterSPIFFEIDs\""), "{e}");
        let c =
            Config::from_yaml(&format!("{BASE}reconcile: {{clusterSPIFFEIDs: false}}\n")).unwrap();
        assert!(!c.reconcile.cluster_spiffe_ids);
    }

    #[test]
    fn annotation_identities_are_refused_naming_the_key() {
        let e = refusal("annotationIdentities: {enabled: true}\n");
        assert!(e.contains("\"annotationIdentities.enabled\""), "{e}");
        Config::from_yaml(&format!("{BASE}annotationIdentities: {{enabled: false}}\n")).unwrap();
    }

    #[test]
    fn expand_env_without_a_path_is_noted() {
        let c = Config::from_yaml(
            "trustDomain: example.org\nclusterName: prod\nexpandEnvStaticManifests: true\n",
        )
        .unwrap();
        assert_eq!(c.static_mode, None);
        assert_eq!(c.notes.len(), 1);
        assert_eq!(c.notes[0].key, "expandEnvStaticManifests");
    }

    #[test]
    fn webhook_keys_are_accepted_and_have_no_effect() {
        // The SPIRE chart's static config keeps validatingWebhookConfigurationName.
        let c = Config::from_yaml(&format!(
            "{BASE}validatingWebhookConfigurationName: w\nwebhook: {{port: 9443}}\n"
        ))
        .unwrap();
        assert!(
            c.static_mode.is_some() && c.notes.is_empty(),
            "{:?}",
            c.notes
        );
    }
}
