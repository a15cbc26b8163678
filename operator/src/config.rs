//! The operator's configuration file: spire-controller-manager's `ControllerManagerConfig`
//! YAML, same keys and meaning, so an existing file (for example the one the SPIRE
//! project's Helm chart renders) works unchanged.
//!
//! Every key spire-controller-manager v0.6.x knows is accepted. Most are honoured; the
//! few that have no counterpart here (or no effect, because the operator works
//! differently) are accepted with a [`ConfigNote`] that `run` logs once at start and
//! `check-config` prints. Unknown keys get a note too, never an error, as with
//! spire-controller-manager's lenient loader. Errors are kept for values that cannot mean
//! anything (`logLevel: verbose`, `gcInterval: soon`) and name the key and the value.
//!
//! Differences from spire-controller-manager, on purpose:
//! - `ignoreNamespaces` patterns must match the **whole** namespace name (they are
//!   anchored as `^(?:pattern)$`): `spire` ignores `spire`, not `my-spire-app`. Write
//!   `.*spire.*` for spire-controller-manager's substring behaviour.
//! - Durations take every form either of its decoders takes, in every key: integer
//!   nanoseconds, whole YAML floats (`1e+10`, as Helm writes 10000000000) and Go duration
//!   strings (`10s`, `1m30s`).
//! - `metadata` (present in some examples) is accepted and has no effect, like there.

mod annotations;
pub mod expand;
mod raw;
pub mod spire_server;
mod static_mode;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use regex::Regex;
use serde::Serialize;

pub use annotations::AnnotationIdentities;
pub use expand::expand_env;
use raw::{RawConfig, RawDuration, RawLabelSelectorConfig, RawLeaderElection};
pub use spire_server::SpireServerTcp;
pub use static_mode::StaticMode;

const DEFAULT_GC_INTERVAL: Duration = Duration::from_secs(10);

/// The label spire-controller-manager's chart puts on ClusterSPIFFEIDs of a class, and
/// that `filterByClassName` selects on.
pub const CLASS_NAME_LABEL: &str = "spire.spiffe.io/class-name";

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
    /// The YAML is malformed or a value has the wrong type; the message names the key
    /// path, the value and the line.
    #[error("parsing the config file")]
    Parse(#[source] serde_norway::Error),
    /// A spire-controller-manager mode this operator does not implement, which it cannot
    /// stand in for without doing something else than asked.
    #[error("config key {key:?}: {message}")]
    Unsupported {
        /// The key.
        key: &'static str,
        /// What the operator cannot do, and what to do instead.
        message: String,
    },
    /// A required key is missing or empty.
    #[error("config key {0:?} is required")]
    Missing(&'static str),
    /// A key has a value outside what it accepts.
    #[error("config key {key:?}: {message}")]
    Invalid {
        /// The key, e.g. `ignoreNamespaces[1]`.
        key: String,
        /// What is wrong with it, naming the value.
        message: String,
    },
}

/// Something about an accepted file that a reader should know: a key that is accepted
/// but not honoured (and what the operator does instead), or a key nobody knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfigNote {
    /// The key path, e.g. `webhook.port`.
    pub key: String,
    /// What the operator does with it.
    pub message: String,
}

impl std::fmt::Display for ConfigNote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "config key {:?}: {}", self.key, self.message)
    }
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
    /// `/spire-server/api.sock`. Not used with `spireServerAddress`.
    pub spire_server_socket_path: PathBuf,
    /// `spireServerAddress` and its keys: the server's TCP API over mTLS instead of the
    /// socket (ours; see [`spire_server`]).
    #[serde(flatten, skip_serializing_if = "Option::is_none")]
    pub spire_server_tcp: Option<SpireServerTcp>,
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
    /// The label selector (Kubernetes syntax) the ClusterSPIFFEID watch uses, from
    /// `clusterSPIFFEIDLabelSelectorConfig` or `filterByClassName`; `None` watches all.
    #[serde(rename = "clusterSPIFFEIDLabelSelector")]
    pub cluster_spiffe_id_label_selector: Option<String>,
    /// `cacheNamespace` / `cacheNamespaces`: the namespaces whose pods, service accounts
    /// and EndpointSlices are watched; empty means all namespaces.
    pub cache_namespaces: Vec<String>,
    /// `grpc.maxCallRecvMsgSize`: the largest SPIRE API response accepted, in bytes;
    /// `None` keeps the client's default.
    pub grpc_max_call_recv_msg_size: Option<usize>,
    /// `validatingWebhookConfigurationName`: the ValidatingWebhookConfiguration whose
    /// webhooks the operator serves and whose `caBundle` it keeps current. Default:
    /// `spire-controller-manager-webhook`.
    pub validating_webhook_configuration_name: String,
    /// `webhook.*`: where the webhook server listens.
    pub webhook: Webhook,
    /// `annotationIdentities.*`: SPIFFE IDs asked for by pod and ServiceAccount
    /// annotations (an addition to spire-controller-manager's keys; off by default).
    pub annotation_identities: AnnotationIdentities,
    /// `staticManifestPath` / `expandEnvStaticManifests`: manifests from files and no
    /// Kubernetes API at all; `None` reconciles from the API.
    pub static_mode: Option<StaticMode>,
    /// What a reader should know about keys accepted but not honoured, or unknown.
    #[serde(skip)]
    pub notes: Vec<ConfigNote>,
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
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// `metrics.bindAddress`, e.g. `0.0.0.0:8082`; `None` keeps the operator's default
    /// (`:8082`), `"0"` turns the metrics server off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bind_address: Option<String>,
}

impl Metrics {
    /// The address to serve `/metrics` on, or `None` when turned off with `"0"`.
    pub fn address(&self) -> Option<&str> {
        serving_address(self.bind_address.as_deref(), ":8082")
    }
}

/// `health.*`.
#[derive(Serialize, Debug, Clone, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Health {
    /// `health.healthProbeBindAddress`, e.g. `0.0.0.0:8083`; `None` keeps the default
    /// (`:8083`), `"0"` turns the probe server off.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub health_probe_bind_address: Option<String>,
    /// `health.readinessEndpointName`, e.g. `/readyz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub readiness_endpoint_name: Option<String>,
    /// `health.livenessEndpointName`, e.g. `/healthz`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub liveness_endpoint_name: Option<String>,
}

impl Health {
    /// The address to serve the probes on, or `None` when turned off with `"0"`.
    pub fn address(&self) -> Option<&str> {
        serving_address(self.health_probe_bind_address.as_deref(), ":8083")
    }
}

/// controller-runtime's convention: `"0"` disables a server, empty means the default.
fn serving_address<'a>(configured: Option<&'a str>, default: &'a str) -> Option<&'a str> {
    match configured {
        Some("0") => None,
        Some(address) if !address.is_empty() => Some(address),
        _ => Some(default),
    }
}

/// `webhook.*` (controller-runtime's webhook server settings).
#[derive(Serialize, Debug, Clone, PartialEq, Eq)]
pub struct Webhook {
    /// `webhook.host`: the address to listen on; empty means every interface. Default: empty.
    pub host: String,
    /// `webhook.port`. Default: 9443 (also for 0, as controller-runtime).
    pub port: u16,
}

impl Default for Webhook {
    fn default() -> Self {
        Self {
            host: String::new(),
            port: 9443,
        }
    }
}

impl Webhook {
    /// `host:port` to bind (`[host]:port` for an IPv6 host; `[::]:port`, every interface
    /// of both families, for none, as Go's `:port`).
    pub fn address(&self) -> String {
        match self.host.as_str() {
            "" => format!("[::]:{}", self.port),
            host if host.contains(':') => format!("[{host}]:{}", self.port),
            host => format!("{host}:{}", self.port),
        }
    }
}

/// `logLevel`, read case-insensitively with zap's names.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    /// Everything, including per-entry details.
    Debug,
    /// Normal operation.
    #[default]
    Info,
    /// Problems that the operator works around.
    Warn,
    /// Failures only (zap's `dpanic`, `panic` and `fatal` mean this too).
    Error,
}

impl LogLevel {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "debug" => Some(Self::Debug),
            "" | "info" => Some(Self::Info),
            "warn" | "warning" => Some(Self::Warn),
            "error" | "dpanic" | "panic" | "fatal" => Some(Self::Error),
            _ => None,
        }
    }

    /// The level as a tracing filter directive.
    pub fn as_filter(self) -> &'static str {
        match self {
            Self::Debug => "debug",
            Self::Info => "info",
            Self::Warn => "warn",
            Self::Error => "error",
        }
    }
}

/// `logEncoding`.
#[derive(Serialize, Debug, Clone, Copy, Default, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogEncoding {
    /// Human-readable lines (colour only on a terminal).
    #[default]
    Console,
    /// One JSON object per line.
    Json,
}

impl LogEncoding {
    fn parse(text: &str) -> Option<Self> {
        match text.to_ascii_lowercase().as_str() {
            "" | "console" => Some(Self::Console),
            "json" => Some(Self::Json),
            _ => None,
        }
    }
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
        let mut unknown = Vec::new();
        // An empty file (or one holding only comments) is a null document.
        let raw: Option<RawConfig> =
            serde_ignored::deserialize(serde_norway::Deserializer::from_str(text), |path| {
                unknown.push(key_path(&path))
            })
            .map_err(ConfigError::Parse)?;
        let mut config = Self::from_raw(raw.unwrap_or_default())?;
        let known_elsewhere = config.notes.len();
        config.notes.extend(unknown.into_iter().map(|key| ConfigNote {
            message: "unknown key, ignored (a typo, or a setting of a newer spire-controller-manager)".into(),
            key,
        }));
        config.notes[known_elsewhere..].sort_by(|a, b| a.key.cmp(&b.key));
        Ok(config)
    }

    fn from_raw(raw: RawConfig) -> Result<Self, ConfigError> {
        check_type_meta(&raw)?;
        let mut notes = Vec::new();
        note_unhonoured(&raw, &mut notes);
        let static_mode = static_mode::parse(&raw, &mut notes)?;
        let reconcile = static_mode::reconcile(raw.reconcile.as_ref(), static_mode.is_some());
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
        // spire-controller-manager coerces a zero or negative interval to 10s (#699).
        let gc_interval = raw
            .gc_interval
            .and_then(|d| u64::try_from(d.0).ok())
            .filter(|n| *n > 0)
            .map_or(DEFAULT_GC_INTERVAL, Duration::from_nanos);
        let entry_id_prefix = non_empty(raw.entry_id_prefix).map(with_dot);
        let entry_id_prefix_cleanup = raw.entry_id_prefix_cleanup.map(with_dot);
        if entry_id_prefix.is_some() && entry_id_prefix == entry_id_prefix_cleanup {
            return Err(ConfigError::Invalid {
                key: "entryIDPrefixCleanup".into(),
                message: format!(
                    "{:?} must differ from entryIDPrefix",
                    entry_id_prefix_cleanup.unwrap_or_default()
                ),
            });
        }
        let class_name = non_empty(raw.class_name);
        let cluster_spiffe_id_label_selector = cluster_spiffe_id_label_selector(
            raw.cluster_spiffe_id_label_selector_config,
            raw.filter_by_class_name.unwrap_or(false),
            class_name.as_deref(),
            &mut notes,
        )?;
        if raw
            .cache_namespace
            .as_deref()
            .is_some_and(|ns| !ns.is_empty())
            && raw.cache_namespaces.is_some()
        {
            return Err(ConfigError::Invalid {
                key: "cacheNamespace".into(),
                message: "cannot be set together with cacheNamespaces; list the namespace there"
                    .into(),
            });
        }
        let cache_namespaces =
            cache_namespaces(raw.cache_namespace, raw.cache_namespaces, &mut notes);
        let grpc_max_call_recv_msg_size =
            match raw.grpc.and_then(|g| g.max_call_recv_msg_size) {
                None | Some(0) => None,
                Some(n) => Some(usize::try_from(n).ok().filter(|n| *n >= 1024).ok_or_else(
                    || ConfigError::Invalid {
                        key: "grpc.maxCallRecvMsgSize".into(),
                        message: format!("{n} is not a size in bytes of at least 1024"),
                    },
                )?),
            };
        let webhook = webhook(raw.webhook.as_ref())?;
        let socket_path_set = raw
            .spire_server_socket_path
            .as_ref()
            .is_some_and(|p| !p.as_os_str().is_empty());
        let spire_server_tcp = spire_server::parse(
            spire_server::RawTcp {
                address: raw.spire_server_address,
                spiffe_id: raw.spire_server_spiffe_id,
                workload_api_address: raw.workload_api_address,
            },
            socket_path_set,
            &trust_domain,
        )?;
        let annotation_identities = annotations::parse(raw.annotation_identities)?;
        let log_level = match raw.log_level {
            None => LogLevel::default(),
            Some(text) => LogLevel::parse(&text).ok_or_else(|| ConfigError::Invalid {
                key: "logLevel".into(),
                message: format!("{text:?} is not one of debug, info, warn, error"),
            })?,
        };
        let log_encoding = match raw.log_encoding {
            None => LogEncoding::default(),
            Some(text) => LogEncoding::parse(&text).ok_or_else(|| ConfigError::Invalid {
                key: "logEncoding".into(),
                message: format!("{text:?} is not one of console, json"),
            })?,
        };
        Ok(Self {
            trust_domain,
            cluster_name,
            cluster_domain: non_empty(raw.cluster_domain),
            ignore_namespaces,
            spire_server_socket_path: raw
                .spire_server_socket_path
                .filter(|p| !p.as_os_str().is_empty())
                .unwrap_or_else(|| PathBuf::from(spire_server::DEFAULT_SOCKET_PATH)),
            spire_server_tcp,
            gc_interval,
            class_name,
            watch_classless: raw.watch_classless.unwrap_or(false),
            parent_id_template: non_empty(raw.parent_id_template),
            reconcile,
            entry_id_prefix,
            entry_id_prefix_cleanup,
            leader_election: leader_election(raw.leader_election.unwrap_or_default(), &mut notes)?,
            metrics: Metrics {
                bind_address: raw.metrics.bind_address,
            },
            health: Health {
                health_probe_bind_address: raw.health.health_probe_bind_address,
                readiness_endpoint_name: raw.health.readiness_endpoint_name,
                liveness_endpoint_name: raw.health.liveness_endpoint_name,
            },
            log_level,
            log_encoding,
            cluster_spiffe_id_label_selector,
            cache_namespaces,
            grpc_max_call_recv_msg_size,
            validating_webhook_configuration_name: non_empty(
                raw.validating_webhook_configuration_name,
            )
            .unwrap_or_else(|| "spire-controller-manager-webhook".into()),
            webhook,
            annotation_identities,
            static_mode,
            notes,
        })
    }

    /// Whether pods in `namespace` are ignored (`ignoreNamespaces`, whole-name match).
    pub fn is_namespace_ignored(&self, namespace: &str) -> bool {
        self.ignore_namespaces
            .iter()
            .any(|re| re.is_match(namespace))
    }

    /// Whether pods in `namespace` are considered at all: inside `cacheNamespaces`
    /// (when set) and not ignored.
    pub fn watches_namespace(&self, namespace: &str) -> bool {
        (self.cache_namespaces.is_empty() || self.cache_namespaces.iter().any(|ns| ns == namespace))
            && !self.is_namespace_ignored(namespace)
    }
}

/// `metrics.bindAddres` for a path serde_ignored reports, without its `?` markers for
/// optional values.
fn key_path(path: &serde_ignored::Path) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", key_path(parent)),
        Path::Map { parent, key } => match key_path(parent) {
            prefix if prefix.is_empty() => key.clone(),
            prefix => format!("{prefix}.{key}"),
        },
        Path::Some { parent }
        | Path::NewtypeStruct { parent }
        | Path::NewtypeVariant { parent } => key_path(parent),
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

/// The ClusterSPIFFEID watch's label selector. An explicit
/// `clusterSPIFFEIDLabelSelectorConfig` wins; `filterByClassName: true` with a
/// `className` selects the class label, as spire-controller-manager does to keep other
/// classes' resources out of its cache.
fn cluster_spiffe_id_label_selector(
    config: Option<RawLabelSelectorConfig>,
    filter_by_class_name: bool,
    class_name: Option<&str>,
    notes: &mut Vec<ConfigNote>,
) -> Result<Option<String>, ConfigError> {
    let key = "clusterSPIFFEIDLabelSelectorConfig";
    if let Some(config) = config {
        let mut terms: Vec<String> = config
            .match_labels
            .unwrap_or_default()
            .into_iter()
            .map(|(label, value)| format!("{label}={value}"))
            .collect();
        for (i, requirement) in config
            .match_expressions
            .unwrap_or_default()
            .into_iter()
            .enumerate()
        {
            let invalid = |message: String| ConfigError::Invalid {
                key: format!("{key}.matchExpressions[{i}]"),
                message,
            };
            let values = requirement.values.join(",");
            terms.push(match requirement.operator.as_str() {
                "In" | "NotIn" if requirement.values.is_empty() => {
                    return Err(invalid(format!(
                        "operator {} needs values",
                        requirement.operator
                    )));
                }
                "In" => format!("{} in ({values})", requirement.key),
                "NotIn" => format!("{} notin ({values})", requirement.key),
                "Exists" => requirement.key.clone(),
                "DoesNotExist" => format!("!{}", requirement.key),
                other => {
                    return Err(invalid(format!(
                        "operator {other:?} is not one of In, NotIn, Exists, DoesNotExist"
                    )));
                }
            });
        }
        if !terms.is_empty() {
            return Ok(Some(terms.join(",")));
        }
    }
    match (filter_by_class_name, class_name) {
        (true, Some(class)) => Ok(Some(format!("{CLASS_NAME_LABEL}={class}"))),
        (true, None) => {
            notes.push(ConfigNote {
                key: "filterByClassName".into(),
                message: "has no effect without className; every ClusterSPIFFEID is watched".into(),
            });
            Ok(None)
        }
        (false, _) => Ok(None),
    }
}

/// `cacheNamespace` (one) or `cacheNamespaces` (a map whose keys are namespaces).
fn cache_namespaces(
    single: Option<String>,
    several: Option<BTreeMap<String, Option<raw::RawCacheNamespace>>>,
    notes: &mut Vec<ConfigNote>,
) -> Vec<String> {
    let mut namespaces: Vec<String> = single.into_iter().filter(|s| !s.is_empty()).collect();
    for (namespace, selectors) in several.unwrap_or_default() {
        if selectors.is_some_and(|s| s.label_selectors.is_some() || s.field_selectors.is_some()) {
            notes.push(ConfigNote {
                key: format!("cacheNamespaces.{namespace}"),
                message: "label and field selectors are not applied; every pod of the namespace is watched".into(),
            });
        }
        if !namespaces.contains(&namespace) {
            namespaces.push(namespace);
        }
    }
    namespaces
}

/// Notes for keys that are accepted but have no effect here, each saying why.
fn note_unhonoured(raw: &RawConfig, notes: &mut Vec<ConfigNote>) {
    let mut note = |key: &str, message: &str| {
        notes.push(ConfigNote {
            key: key.into(),
            message: message.into(),
        });
    };
    if raw
        .webhook
        .as_ref()
        .is_some_and(|w| w.cert_dir.as_deref().is_some_and(|d| !d.is_empty()))
    {
        note(
            "webhook.certDir",
            "ignored: the webhook certificate is minted from SPIRE and kept in memory",
        );
    }
    if raw.sync_period.is_some() {
        note(
            "syncPeriod",
            "ignored: watches are event-driven; the periodic full resync is gcInterval",
        );
    }
    if raw.graceful_shut_down.is_some() {
        note(
            "gracefulShutDown",
            "ignored: on SIGTERM the operator finishes the write in flight and stops",
        );
    }
    if let Some(controller) = &raw.controller
        && (controller.group_kind_concurrency.is_some()
            || controller.cache_sync_timeout.is_some()
            || controller.recover_panic.is_some())
    {
        note(
            "controller",
            "ignored: one reconcile loop handles every kind, writes are batched and concurrent",
        );
    }
    if raw.enable_entry_render_cache == Some(true) || raw.entry_render_cache_size.is_some() {
        note(
            "enableEntryRenderCache",
            "ignored: entries are rendered once per pod change and kept, so no render cache is needed",
        );
    }
}

fn webhook(raw: Option<&raw::RawWebhook>) -> Result<Webhook, ConfigError> {
    let mut webhook = Webhook::default();
    let Some(raw) = raw else { return Ok(webhook) };
    if let Some(host) = &raw.host {
        webhook.host = host.clone();
    }
    match raw.port {
        None | Some(0) => {}
        Some(port) => {
            webhook.port = u16::try_from(port).map_err(|_| ConfigError::Invalid {
                key: "webhook.port".into(),
                message: format!("{port} is not a TCP port (1-65535)"),
            })?;
        }
    }
    Ok(webhook)
}

fn leader_election(
    raw: RawLeaderElection,
    notes: &mut Vec<ConfigNote>,
) -> Result<LeaderElection, ConfigError> {
    match raw.resource_lock.as_deref() {
        None | Some("" | "leases") => {}
        // The multi-locks of older controller-runtime versions include the Lease, so a
        // Lease alone still excludes an old replica during a rolling update.
        Some(lock @ ("configmapsleases" | "endpointsleases")) => notes.push(ConfigNote {
            key: "leaderElection.resourceLock".into(),
            message: format!("{lock:?}: only the Lease part is used"),
        }),
        Some(lock) => {
            return Err(ConfigError::Invalid {
                key: "leaderElection.resourceLock".into(),
                message: format!("{lock:?} is not supported; only \"leases\" is"),
            });
        }
    }
    let duration = |key: &str, value: Option<RawDuration>, default: u64| match value {
        None => Ok(Duration::from_secs(default)),
        Some(RawDuration(nanos)) => u64::try_from(nanos)
            .ok()
            .filter(|n| *n > 0)
            .map(Duration::from_nanos)
            .ok_or_else(|| ConfigError::Invalid {
                key: format!("leaderElection.{key}"),
                message: format!(
                    "{:?} must be positive",
                    Duration::from_nanos(nanos.unsigned_abs())
                ),
            }),
    };
    let leader_elect = raw.leader_elect.unwrap_or(false);
    let resource_name = raw.resource_name.filter(|s| !s.is_empty());
    if leader_elect && resource_name.is_none() {
        return Err(ConfigError::Missing("leaderElection.resourceName"));
    }
    let election = LeaderElection {
        leader_elect,
        resource_namespace: raw.resource_namespace.filter(|s| !s.is_empty()),
        resource_name,
        lease_duration: duration("leaseDuration", raw.lease_duration, 15)?,
        renew_deadline: duration("renewDeadline", raw.renew_deadline, 10)?,
        retry_period: duration("retryPeriod", raw.retry_period, 2)?,
    };
    // client-go's own checks (with its jitter factor 1.2), so a file it would refuse is
    // refused here too instead of electing with nonsense timings.
    let invalid = |key: &str, message: String| ConfigError::Invalid {
        key: format!("leaderElection.{key}"),
        message,
    };
    if election.lease_duration <= election.renew_deadline {
        return Err(invalid(
            "leaseDuration",
            format!(
                "{:?} must be longer than renewDeadline {:?}",
                election.lease_duration, election.renew_deadline
            ),
        ));
    }
    if election.renew_deadline.as_secs_f64() <= election.retry_period.as_secs_f64() * 1.2 {
        return Err(invalid(
            "renewDeadline",
            format!(
                "{:?} must be longer than 1.2 x retryPeriod {:?}",
                election.renew_deadline, election.retry_period
            ),
        ));
    }
    Ok(election)
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
