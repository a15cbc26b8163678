//! The config file as written: every key spire-controller-manager v0.6.x and the
//! controller-runtime settings it embeds know, decoded as leniently as its loader does.
//!
//! spire-controller-manager reads the file with `sigs.k8s.io/yaml` into Go structs, so
//! `time.Duration` fields (`gcInterval`) take integer nanoseconds and YAML floats with a
//! whole value (`1e+10`, which Helm's `toYaml` writes for 10000000000), while
//! `metav1.Duration` fields (`syncPeriod`, `leaderElection.leaseDuration`) take Go duration
//! strings. [`RawDuration`] accepts all three forms everywhere. Keys nobody knows are
//! collected by the caller (see `Config::from_yaml`) and reported, not fatal. Values
//! accepted without being read are `serde_norway::Value`s (not `IgnoredAny`, which
//! would report their contents as unknown keys).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

use crate::crd::parse_go_duration;

/// Top level of a `ControllerManagerConfig`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawConfig {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    /// Accepted and ignored, as there (some examples carry one).
    #[allow(dead_code)]
    pub metadata: Option<serde_norway::Value>,
    pub trust_domain: Option<String>,
    pub cluster_name: Option<String>,
    pub cluster_domain: Option<String>,
    pub ignore_namespaces: Option<Vec<String>>,
    pub spire_server_socket_path: Option<PathBuf>,
    /// Ours (see [`super::spire_server`]).
    pub spire_server_address: Option<String>,
    #[serde(rename = "spireServerSPIFFEID")]
    pub spire_server_spiffe_id: Option<String>,
    #[serde(rename = "workloadAPIAddress")]
    pub workload_api_address: Option<String>,
    pub gc_interval: Option<RawDuration>,
    pub class_name: Option<String>,
    pub watch_classless: Option<bool>,
    pub filter_by_class_name: Option<bool>,
    #[serde(rename = "clusterSPIFFEIDLabelSelectorConfig")]
    pub cluster_spiffe_id_label_selector_config: Option<RawLabelSelectorConfig>,
    #[serde(rename = "parentIDTemplate")]
    pub parent_id_template: Option<String>,
    pub reconcile: Option<RawReconcile>,
    #[serde(rename = "entryIDPrefix")]
    pub entry_id_prefix: Option<String>,
    #[serde(rename = "entryIDPrefixCleanup")]
    pub entry_id_prefix_cleanup: Option<String>,
    pub validating_webhook_configuration_name: Option<String>,
    pub static_manifest_path: Option<String>,
    pub expand_env_static_manifests: Option<bool>,
    pub enable_entry_render_cache: Option<bool>,
    pub entry_render_cache_size: Option<i64>,
    pub grpc: Option<RawGrpc>,
    pub log_level: Option<String>,
    pub log_encoding: Option<String>,
    // controller-runtime's ControllerManagerConfigurationSpec, embedded inline.
    pub sync_period: Option<RawDuration>,
    pub leader_election: Option<RawLeaderElection>,
    pub cache_namespace: Option<String>,
    pub cache_namespaces: Option<BTreeMap<String, Option<RawCacheNamespace>>>,
    #[serde(rename = "gracefulShutDown")]
    pub graceful_shut_down: Option<RawDuration>,
    pub controller: Option<RawController>,
    #[serde(default)]
    pub metrics: RawMetrics,
    #[serde(default)]
    pub health: RawHealth,
    pub webhook: Option<RawWebhook>,
    /// Ours, not spire-controller-manager's (see [`super::annotations`]).
    pub annotation_identities: Option<super::annotations::RawAnnotationIdentities>,
}

/// `reconcile.*`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawReconcile {
    #[serde(rename = "clusterSPIFFEIDs")]
    pub cluster_spiffe_ids: Option<bool>,
    pub cluster_federated_trust_domains: Option<bool>,
    pub cluster_static_entries: Option<bool>,
}

/// `clusterSPIFFEIDLabelSelectorConfig`: a label selector the ClusterSPIFFEID watch uses.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawLabelSelectorConfig {
    pub match_labels: Option<BTreeMap<String, String>>,
    pub match_expressions: Option<Vec<RawLabelSelectorRequirement>>,
}

/// One `matchExpressions` item of a label selector.
#[derive(Deserialize, Debug)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawLabelSelectorRequirement {
    pub key: String,
    pub operator: String,
    #[serde(default)]
    pub values: Vec<String>,
}

/// `grpc.*`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawGrpc {
    pub max_call_recv_msg_size: Option<i64>,
}

/// `leaderElection.*` (Kubernetes' LeaderElectionConfiguration).
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawLeaderElection {
    pub leader_elect: Option<bool>,
    pub resource_lock: Option<String>,
    pub resource_namespace: Option<String>,
    pub resource_name: Option<String>,
    pub lease_duration: Option<RawDuration>,
    pub renew_deadline: Option<RawDuration>,
    pub retry_period: Option<RawDuration>,
}

/// One value of `cacheNamespaces`: selectors narrowing the cache inside that namespace.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawCacheNamespace {
    pub label_selectors: Option<serde_norway::Value>,
    pub field_selectors: Option<serde_norway::Value>,
}

/// `controller.*`: controller-runtime's worker settings.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawController {
    pub group_kind_concurrency: Option<serde_norway::Value>,
    pub cache_sync_timeout: Option<RawDuration>,
    pub recover_panic: Option<bool>,
}

/// `metrics.*`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawMetrics {
    pub bind_address: Option<String>,
}

/// `health.*`.
#[derive(Deserialize, Debug, Default, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawHealth {
    pub health_probe_bind_address: Option<String>,
    pub readiness_endpoint_name: Option<String>,
    pub liveness_endpoint_name: Option<String>,
}

/// `webhook.*`.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase")]
pub(super) struct RawWebhook {
    pub port: Option<i64>,
    pub host: Option<String>,
    pub cert_dir: Option<String>,
}

/// A duration written as integer nanoseconds, a YAML float with a whole value (`1e+10`),
/// or a Go duration string (`10s`, `1m30s`, `1.5h`). Signed: callers decide what zero
/// or a negative value means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct RawDuration(pub i64);

impl<'de> Deserialize<'de> for RawDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(RawDurationVisitor)
    }
}

struct RawDurationVisitor;

impl Visitor<'_> for RawDurationVisitor {
    type Value = RawDuration;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a duration: nanoseconds (10000000000, 1e+10) or a Go duration (10s, 1m30s)")
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<RawDuration, E> {
        Ok(RawDuration(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<RawDuration, E> {
        i64::try_from(v)
            .map(RawDuration)
            .map_err(|_| E::custom(format!("{v} nanoseconds is out of range")))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<RawDuration, E> {
        // Go's decoder takes a float only when it is a whole number of nanoseconds.
        const LIMIT: f64 = 9.223_372_036_854_775e18;
        if v.fract() == 0.0 && v.abs() < LIMIT {
            #[allow(clippy::cast_possible_truncation)] // whole and in range, checked above
            Ok(RawDuration(v as i64))
        } else {
            Err(E::custom(format!(
                "{v} is not a whole number of nanoseconds; write a Go duration such as 10s"
            )))
        }
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<RawDuration, E> {
        parse_go_duration(v.trim())
            .map(RawDuration)
            .map_err(E::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn duration(yaml: &str) -> Result<i64, String> {
        #[derive(Deserialize)]
        struct Holder {
            d: RawDuration,
        }
        serde_norway::from_str::<Holder>(&format!("d: {yaml}"))
            .map(|h| h.d.0)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn durations_in_every_form_spire_controller_manager_users_write() {
        for (yaml, nanos) in [
            ("10000000000", 10_000_000_000),
            ("1e+10", 10_000_000_000),
            ("1.0e10", 10_000_000_000),
            ("10s", 10_000_000_000),
            ("\"10s\"", 10_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5h", 5_400_000_000_000),
            ("300ms", 300_000_000),
            ("0", 0),
            ("-1", -1),
        ] {
            assert_eq!(duration(yaml), Ok(nanos), "{yaml}");
        }
    }

    #[test]
    fn bad_durations_name_the_value() {
        for (yaml, needle) in [
            ("1.5", "1.5 is not a whole number of nanoseconds"),
            ("ten", "\"ten\" is not a Go duration"),
            ("10x", "unknown unit \"x\""),
            ("true", "a duration"),
        ] {
            let err = duration(yaml).unwrap_err();
            assert!(err.contains(needle), "{yaml}: {err}");
            assert!(err.starts_with("d:"), "the key is named: {err}");
        }
    }
}
