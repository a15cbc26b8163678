//! The operator's configuration file: spire-controller-manager's `ControllerManagerConfig`
//! YAML, same keys and meaning, so an existing file works unchanged.
//!
//! Differences from spire-controller-manager, on purpose:
//! - A key spire-controller-manager knows but this operator does not implement yet is
//!   rejected with [`ConfigError::Unsupported`] naming it, and any other unknown key with
//!   [`ConfigError::Parse`]; spire-controller-manager silently ignores unknown keys and
//!   some of its own (`webhook.port`, `gracefulShutDown`, ...).
//! - `ignoreNamespaces` patterns must match the **whole** namespace name (they are
//!   anchored as `^(?:pattern)$`): `spire` ignores `spire`, not `my-spire-app`. Write
//!   `.*spire.*` for spire-controller-manager's substring behaviour.
//! - `gcInterval` may be a Go duration string (`10s`) as well as the integer number of
//!   nanoseconds spire-controller-manager's decoder requires.
//! - `metadata` (present in some examples) is accepted and has no effect, like there.

mod expand;

use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::{Deserialize, Serialize};

use crate::crd::GoDuration;
pub use expand::expand_env;

/// Keys of spire-controller-manager's config that this operator does not implement.
const UNSUPPORTED_KEYS: &[&str] = &[
    "validatingWebhookConfigurationName",
    "syncPeriod",
    "cacheNamespace",
    "cacheNamespaces",
    "gracefulShutDown",
    "controller",
    "webhook",
    "staticManifestPath",
    "expandEnvStaticManifests",
    "enableEntryRenderCache",
    "entryRenderCacheSize",
    "grpc",
];

const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(10);

/// Why a configuration file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("reading config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML is malformed, a value has the wrong type, or a key is unknown.
    #[error("parsing the config file")]
    Parse(#[source] serde_norway::Error),
    /// A spire-controller-manager key this operator does not implement.
    #[error(
        "config key {0:?} is a spire-controller-manager setting that spire-operator does not support; remove it"
    )]
    Unsupported(String),
    /// A required key is missing or empty.
    #[error("config key {0:?} is required")]
    Missing(&'static str),
    /// A key has a value outside what it accepts.
    #[error("config key {key:?}: {message}")]
    Invalid {
        /// The key, e.g. `ignoreNamespaces[1]`.
        key: String,
        /// What is wrong with it.
        message: String,
    },
}

/// The file as written: spire-controller-manager's keys, camelCase.
#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawConfig {
    api_version: Option<String>,
    kind: Option<String>,
    #[allow(dead_code)] // accepted for compatibility, has no effect
    metadata: Option<serde_norway::Value>,
    trust_domain: Option<String>,
    cluster_name: Option<String>,
    cluster_domain: Option<String>,
    ignore_namespaces: Option<Vec<String>>,
    spire_server_socket_path: Option<PathBuf>,
    gc_interval: Option<RawDuration>,
    class_name: Option<String>,
    #[serde(default)]
    watch_classless: bool,
    #[serde(rename = "parentIDTemplate")]
    parent_id_template: Option<String>,
    reconcile: Option<RawReconcile>,
    #[serde(rename = "entryIDPrefix")]
    entry_id_prefix: Option<String>,
    #[serde(rename = "entryIDPrefixCleanup")]
    entry_id_prefix_cleanup: Option<String>,
    #[serde(default)]
    leader_election: RawLeaderElection,
    #[serde(default)]
    metrics: Metrics,
    #[serde(default)]
    health: Health,
    log_level: Option<LogLevel>,
    log_encoding: Option<LogEncoding>,
}

/// `time.Duration` in spire-controller-manager's file is integer nanoseconds; a Go
/// duration string is accepted too.
#[derive(Deserialize, Debug)]
#[serde(untagged)]
enum RawDuration {
    Nanos(i64),
    Text(String),
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawReconcile {
    #[serde(default, rename = "clusterSPIFFEIDs")]
    cluster_spiffe_ids: bool,
    #[serde(default)]
    cluster_federated_trust_domains: bool,
    #[serde(default)]
    cluster_static_entries: bool,
}

#[derive(Deserialize, Debug, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawLeaderElection {
    leader_elect: Option<bool>,
    resource_lock: Option<String>,
    resource_namespace: Option<String>,
    resource_name: Option<String>,
    lease_duration: Option<GoDuration>,
    renew_deadline: Option<GoDuration>,
    retry_period: Option<GoDuration>,
}

/// The effective configuration: defaults applied, values checked.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Config {
    /// `trustDomain` (required): the SPIRE trust domain, e.g. `example.org`.
    pub trust_domain: String,
    /// `clusterName` (required): the name used in templates and the default parent ID.
    pub cluster_name: String,
    /// `clusterDomain`: e.g. `cluster.local`; `None` means auto-detect at start-up.
    pub cluster_domain: Option<String>,
    /// `ignoreNamespaces`: namespaces whose pods never get entries, as patterns matching
    /// the whole name. Default: kube-system, kube-public, spire-system.
    #[serde(serialize_with = "serialize_patterns")]
    pub ignore_namespaces: Vec<Regex>,
    /// `spireServerSocketPath`: the SPIRE server admin API socket. Default:
    /// `/spire-server/api.sock`.
    pub spire_server_socket_path: PathBuf,
    /// `gcInterval`: the full-resync interval (re-list of SPIRE entries). Default 10s;
    /// zero or negative means the default.
    #[serde(serialize_with = "serialize_duration")]
    pub gc_interval: Duration,
    /// `className`: act only on resources of this class. Default: none.
    pub class_name: Option<String>,
    /// `watchClassless`: also act on resources without a className. Default: false.
    pub watch_classless: bool,
    /// `parentIDTemplate`: overrides the default parent ID template for pod entries.
    #[serde(rename = "parentIDTemplate")]
    pub parent_id_template: Option<String>,
    /// `reconcile`: which kinds are reconciled.
    pub reconcile: Reconcile,
    /// `entryIDPrefix`: owned entries have IDs `<prefix>.<uuid>`; stored with its dot.
    #[serde(rename = "entryIDPrefix")]
    pub entry_id_prefix: Option<String>,
    /// `entryIDPrefixCleanup`: entries with this prefix are deleted; `Some("")` means
    /// every entry whose ID has no dot. Stored with its dot when not empty.
    #[serde(rename = "entryIDPrefixCleanup")]
    pub entry_id_prefix_cleanup: Option<String>,
    /// `leaderElection`.
    pub leader_election: LeaderElection,
    /// `metrics`.
    pub metrics: Metrics,
    /// `health`.
    pub health: Health,
    /// `logLevel`. Default: info.
    pub log_level: LogLevel,
    /// `logEncoding`. Default: console.
    pub log_encoding: LogEncoding,
}

/// `reconcile.*`. Without a `reconcile` block all three are reconciled; with one, a
/// kind it does not list is not (spire-controller-manager's semantics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Reconcile {
    /// `reconcile.clusterSPIFFEIDs`.
    #[serde(rename = "clusterSPIFFEIDs")]
    pub cluster_spiffe_ids: bool,
    /// `reconcile.clusterStaticEntries`.
    #[serde(rename = "clusterStaticEntries")]
    pub cluster_static_entries: bool,
    /// `reconcile.clusterFederatedTrustDomains`.
    #[serde(rename = "clusterFederatedTrustDomains")]
    pub cluster_federated_trust_domains: bool,
}

/// `leaderElection.*`, on a coordination.k8s.io Lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderElection {
    /// `leaderElection.leaderElect`. Default: false.
    pub leader_elect: bool,
    /// `leaderElection.resourceNamespace`; `None` means the operator's own namespace.
    pub resource_namespace: Option<String>,
    /// `leaderElection.resourceName`: the Lease name (required with leaderElect).
    pub resource_name: Option<String>,
    /// `leaderElection.leaseDuration`. Default: 15s.
    #[serde(serialize_with = "serialize_duration")]
    pub lease_duration: Duration,
    /// `leaderElection.renewDeadline`. Default: 10s.
    #[serde(serialize_with = "serialize_duration")]
    pub renew_deadline: Duration,
    /// `leaderElection.retryPeriod`. Default: 2s.
    #[serde(serialize_with = "serialize_duration")]
    pub retry_period: Duration,
}

/// `metrics.*`.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Metrics {
    /// `metrics.bindAddress`, e.g. `0.0.0.0:8082`; `None` keeps the operator's default.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
}

/// `health.*`.
#[derive(Deserialize, Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Health {
    /// `health.healthProbeBindAddress`, e.g. `0.0.0.0:8083`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_probe_bind_address: Option<String>,
    /// `health.readinessEndpointName`, e.g. `/readyz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_endpoint_name: Option<String>,
    /// `health.livenessEndpointName`, e.g. `/healthz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_endpoint_name: Option<String>,
}

/// `logLevel`.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-entry details.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems that the operator works around.
    Warn,
    /// Failures only.
    Error,
}

/// `logEncoding`.
#[derive(Deserialize, Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    /// Human-readable lines.
    #[default]
    Console,
    /// One JSON object per line.
    Json,
}

impl Config {
    /// Reads and parses the file at `path`; with `expand_env`, `$VAR` / `${VAR}` are
    /// first replaced from the process environment (see [`expand_env`]).
    pub fn load(path: &Path, expand_env_vars: bool) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let text = if expand_env_vars {
            expand_env(&text, |name| std::env::var(name).ok())
        } else {
            text
        };
        Self::from_yaml(&text)
    }

    /// Parses the YAML text of a config file.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let value: serde_norway::Value =
            serde_norway::from_str(text).map_err(ConfigError::Parse)?;
        if let Some(map) = value.as_mapping() {
            for key in map.keys().filter_map(|k| k.as_str()) {
                if UNSUPPORTED_KEYS.contains(&key) {
                    return Err(ConfigError::Unsupported(key.to_owned()));
                }
            }
        }
        let raw: RawConfig = if value.is_null() {
            RawConfig::default()
        } else {
            // From the text, not the value: errors then carry the key path and line.
            serde_norway::from_str(text).map_err(ConfigError::Parse)?
        };
        Self::from_raw(raw)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        check_type_meta(&raw)?;
        let non_empty = |v: Option<String>| v.filter(|s| !s.is_empty());
        let trust_domain =
            non_empty(raw.trust_domain).ok_or(ConfigError::Missing("trustDomain"))?;
        let cluster_name =
            non_empty(raw.cluster_name).ok_or(ConfigError::Missing("clusterName"))?;
        let ignore_namespaces = raw
            .ignore_namespaces
            .unwrap_or_else(|| {
                ["kube-system", "kube-public", "spire-system"]
                    .map(String::from)
                    .to_vec()
            })
            .iter()
            .enumerate()
            .map(|(i, pattern)| {
                Regex::new(&format!("^(?:{pattern})$")).map_err(|e| ConfigError::Invalid {
                    key: format!("ignoreNamespaces[{i}]"),
                    message: format!("{pattern:?} is not a valid regular expression: {e}"),
                })
            })
            .collect::<Result<_, _>>()?;
        let gc_interval = match raw.gc_interval {
            None => DEFAULT_GC_INTERVAL,
            Some(RawDuration::Nanos(n)) => u64::try_from(n)
                .ok()
                .filter(|n| *n > 0)
                .map_or(DEFAULT_GC_INTERVAL, Duration::from_nanos),
            Some(RawDuration::Text(text)) => {
                let nanos =
                    crate::crd::parse_go_duration(&text).map_err(|e| ConfigError::Invalid {
                        key: "gcInterval".into(),
                        message: e.to_string(),
                    })?;
                u64::try_from(nanos)
                    .ok()
                    .filter(|n| *n > 0)
                    .map_or(DEFAULT_GC_INTERVAL, Duration::from_nanos)
            }
        };
        let reconcile = match raw.reconcile {
            None => Reconcile {
                cluster_spiffe_ids: true,
                cluster_static_entries: true,
                cluster_federated_trust_domains: true,
            },
            Some(r) => Reconcile {
                cluster_spiffe_ids: r.cluster_spiffe_ids,
                cluster_static_entries: r.cluster_static_entries,
                cluster_federated_trust_domains: r.cluster_federated_trust_domains,
            },
        };
        let entry_id_prefix = non_empty(raw.entry_id_prefix).map(with_dot);
        let entry_id_prefix_cleanup = raw.entry_id_prefix_cleanup.map(with_dot);
        if entry_id_prefix.is_some() && entry_id_prefix == entry_id_prefix_cleanup {
            return Err(ConfigError::Invalid {
                key: "entryIDPrefixCleanup".into(),
                message: "must differ from entryIDPrefix".into(),
            });
        }
        Ok(Self {
            trust_domain,
            cluster_name,
            cluster_domain: non_empty(raw.cluster_domain),
            ignore_namespaces,
            spire_server_socket_path: raw
                .spire_server_socket_path
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from("/spire-server/api.sock")),
            gc_interval,
            class_name: non_empty(raw.class_name),
            watch_classless: raw.watch_classless,
            parent_id_template: non_empty(raw.parent_id_template),
            reconcile,
            entry_id_prefix,
            entry_id_prefix_cleanup,
            leader_election: leader_election(raw.leader_election)?,
            metrics: raw.metrics,
            health: raw.health,
            log_level: raw.log_level.unwrap_or_default(),
            log_encoding: raw.log_encoding.unwrap_or_default(),
        })
    }

    /// Whether pods in `namespace` are ignored (`ignoreNamespaces`, whole-name match).
    pub fn is_namespace_ignored(&self, namespace: &str) -> bool {
        self.ignore_namespaces
            .iter()
            .any(|re| re.is_match(namespace))
    }
}

fn check_type_meta(raw: &RawConfig) -> Result<(), ConfigError> {
    if let Some(v) = raw.api_version.as_deref()
        && v != "spire.spiffe.io/v1alpha1"
    {
        return Err(ConfigError::Invalid {
            key: "apiVersion".into(),
            message: format!("{v:?} is not spire.spiffe.io/v1alpha1"),
        });
    }
    if let Some(k) = raw.kind.as_deref()
        && k != "ControllerManagerConfig"
    {
        return Err(ConfigError::Invalid {
            key: "kind".into(),
            message: format!("{k:?} is not ControllerManagerConfig"),
        });
    }
    Ok(())
}

fn leader_election(raw: RawLeaderElection) -> Result<LeaderElection, ConfigError> {
    if let Some(lock) = raw.resource_lock.as_deref()
        && lock != "leases"
    {
        return Err(ConfigError::Invalid {
            key: "leaderElection.resourceLock".into(),
            message: format!("{lock:?} is not supported; only \"leases\" is"),
        });
    }
    let duration = |key: &str, value: Option<GoDuration>, default: u64| match value {
        None => Ok(Duration::from_secs(default)),
        Some(d) => d.to_std().map_err(|e| ConfigError::Invalid {
            key: format!("leaderElection.{key}"),
            message: e.to_string(),
        }),
    };
    let leader_elect = raw.leader_elect.unwrap_or(false);
    let resource_name = raw.resource_name.filter(|s| !s.is_empty());
    if leader_elect && resource_name.is_none() {
        return Err(ConfigError::Missing("leaderElection.resourceName"));
    }
    Ok(LeaderElection {
        leader_elect,
        resource_namespace: raw.resource_namespace.filter(|s| !s.is_empty()),
        resource_name,
        lease_duration: duration("leaseDuration", raw.lease_duration, 15)?,
        renew_deadline: duration("renewDeadline", raw.renew_deadline, 10)?,
        retry_period: duration("retryPeriod", raw.retry_period, 2)?,
    })
}

fn with_dot(prefix: String) -> String {
    if prefix.is_empty() || prefix.ends_with('.') {
        prefix
    } else {
        prefix + "."
    }
}

fn serialize_patterns<S: serde::Serializer>(res: &[Regex], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(res.iter().map(Regex::as_str))
}

fn serialize_duration<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{d:?}"))
}

#[cfg(test)]
mod tests;
