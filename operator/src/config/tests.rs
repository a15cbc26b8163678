use super::*;

const MINIMAL: &str = "trustDomain: example.org\nclusterName: prod\n";

/// spire-controller-manager's demo config (demo/config/cluster1), same keys.
const SCM_DEMO: &str = r#"
apiVersion: spire.spiffe.io/v1alpha1
kind: ControllerManagerConfig
metrics:
  bindAddress: 127.0.0.1:8082
health:
  healthProbeBindAddress: 0.0.0.0:8083
leaderElection:
  leaderElect: true
  resourceName: 98c9c988.spiffe.io
  resourceNamespace: spire-system
clusterName: cluster1
logLevel: info
trustDomain: cluster1.demo
ignoreNamespaces:
  - kube-system
  - kube-public
  - spire-system
  - local-path-storage
"#;

#[test]
fn defaults_match_spire_controller_manager() {
    let c = Config::from_yaml(MINIMAL).unwrap();
    assert_eq!(c.trust_domain, "example.org");
    assert_eq!(c.cluster_name, "prod");
    assert_eq!(c.cluster_domain, None);
    let patterns: Vec<&str> = c.ignore_namespaces.iter().map(Regex::as_str).collect();
    assert_eq!(
        patterns,
        [
            "^(?:kube-system)$",
            "^(?:kube-public)$",
            "^(?:spire-system)$"
        ]
    );
    assert_eq!(
        c.spire_server_socket_path,
        Path::new("/spire-server/api.sock")
    );
    assert_eq!(c.gc_interval, Duration::from_secs(10));
    assert_eq!(
        c.reconcile,
        Reconcile {
            cluster_spiffe_ids: true,
            cluster_static_entries: true,
            cluster_federated_trust_domains: true
        }
    );
    assert!(!c.leader_election.leader_elect);
    assert_eq!(c.leader_election.lease_duration, Duration::from_secs(15));
    assert_eq!(c.log_level, LogLevel::Info);
    assert_eq!(c.log_encoding, LogEncoding::Console);
    assert_eq!(c.entry_id_prefix, None);
}

#[test]
fn reads_the_scm_demo_config() {
    let c = Config::from_yaml(SCM_DEMO).unwrap();
    assert_eq!(c.trust_domain, "cluster1.demo");
    assert_eq!(c.metrics.bind_address.as_deref(), Some("127.0.0.1:8082"));
    assert_eq!(
        c.health.health_probe_bind_address.as_deref(),
        Some("0.0.0.0:8083")
    );
    assert!(c.leader_election.leader_elect);
    assert_eq!(
        c.leader_election.resource_name.as_deref(),
        Some("98c9c988.spiffe.io")
    );
    assert!(c.is_namespace_ignored("local-path-storage"));
}

#[test]
fn every_supported_key_is_read() {
    let yaml = r#"
trustDomain: example.org
clusterName: prod
clusterDomain: cluster.local
ignoreNamespaces: ["kube-.*"]
spireServerSocketPath: /run/spire/api.sock
gcInterval: 1m
className: a
watchClassless: true
parentIDTemplate: "spiffe://{{ .TrustDomain }}/agent/{{ .NodeMeta.Name }}"
reconcile: {clusterSPIFFEIDs: true, clusterStaticEntries: false, clusterFederatedTrustDomains: true}
entryIDPrefix: ours
entryIDPrefixCleanup: ""
leaderElection: {leaderElect: true, resourceLock: leases, resourceNamespace: spire, resourceName: op, leaseDuration: 30s, renewDeadline: 20s, retryPeriod: 5s}
metrics: {bindAddress: ":8082"}
health: {healthProbeBindAddress: ":8083", readinessEndpointName: /ready, livenessEndpointName: /live}
logLevel: debug
logEncoding: json
"#;
    let c = Config::from_yaml(yaml).unwrap();
    assert_eq!(c.cluster_domain.as_deref(), Some("cluster.local"));
    assert_eq!(c.spire_server_socket_path, Path::new("/run/spire/api.sock"));
    assert_eq!(c.gc_interval, Duration::from_secs(60));
    assert_eq!(c.class_name.as_deref(), Some("a"));
    assert!(c.watch_classless);
    assert!(c.parent_id_template.is_some());
    assert!(!c.reconcile.cluster_static_entries && c.reconcile.cluster_spiffe_ids);
    assert_eq!(c.entry_id_prefix.as_deref(), Some("ours."));
    assert_eq!(c.entry_id_prefix_cleanup.as_deref(), Some(""));
    assert_eq!(c.leader_election.retry_period, Duration::from_secs(5));
    assert_eq!(
        c.leader_election.resource_namespace.as_deref(),
        Some("spire")
    );
    assert_eq!(c.health.liveness_endpoint_name.as_deref(), Some("/live"));
    assert_eq!(c.log_level, LogLevel::Debug);
    assert_eq!(c.log_encoding, LogEncoding::Json);
}

#[test]
fn gc_interval_forms() {
    let cases = [
        ("gcInterval: 10000000000", Duration::from_secs(10)),
        ("gcInterval: 1h", Duration::from_secs(3600)),
        ("gcInterval: 0", Duration::from_secs(10)),
        ("gcInterval: 0s", Duration::from_secs(10)),
        ("gcInterval: -5s", Duration::from_secs(10)),
        ("gcInterval: 500ms", Duration::from_millis(500)),
    ];
    for (line, want) in cases {
        let c = Config::from_yaml(&format!("{MINIMAL}{line}\n")).unwrap();
        assert_eq!(c.gc_interval, want, "{line}");
    }
}

#[test]
fn a_reconcile_block_turns_off_what_it_omits() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}reconcile: {{clusterStaticEntries: true}}\n"
    ))
    .unwrap();
    assert_eq!(
        c.reconcile,
        Reconcile {
            cluster_spiffe_ids: false,
            cluster_static_entries: true,
            cluster_federated_trust_domains: false
        }
    );
}

#[test]
fn ignore_namespaces_match_whole_names() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}ignoreNamespaces: [spire, 'team-.*', 'a|b']\n"
    ))
    .unwrap();
    let cases = [
        ("spire", true),
        ("my-spire-app", false),
        ("spire-system", false),
        ("team-x", true),
        ("my-team-x", false),
        ("a", true),
        ("ab", false),
        ("kube-system", false),
    ];
    for (namespace, ignored) in cases {
        assert_eq!(c.is_namespace_ignored(namespace), ignored, "{namespace}");
    }
}

#[test]
fn bad_files_are_rejected_naming_the_key() {
    let cases: &[(&str, &str)] = &[
        ("clusterName: prod\n", "trustDomain"),
        ("trustDomain: example.org\n", "clusterName"),
        ("trustDomain: ''\nclusterName: prod\n", "trustDomain"),
        ("grpc: {maxCallRecvMsgSize: 1}\n", "grpc.maxCallRecvMsgSize"),
        (
            "grpc: {maxCallRecvMsgSize: big}\n",
            "grpc.maxCallRecvMsgSize",
        ),
        (
            "logLevel: verbose\n",
            "\"logLevel\": \"verbose\" is not one of",
        ),
        (
            "logEncoding: xml\n",
            "\"logEncoding\": \"xml\" is not one of",
        ),
        ("ignoreNamespaces: ['(']\n", "ignoreNamespaces[0]"),
        (
            "gcInterval: soon\n",
            "gcInterval: \"soon\" is not a Go duration",
        ),
        ("gcInterval: 1.5\n", "gcInterval: 1.5 is not a whole number"),
        ("gcInterval: [1]\n", "gcInterval"),
        ("watchClassless: maybe\n", "watchClassless"),
        (
            "clusterSPIFFEIDLabelSelectorConfig: {matchExpressions: [{key: a, operator: Near}]}\n",
            "clusterSPIFFEIDLabelSelectorConfig.matchExpressions[0]",
        ),
        (
            "leaderElection: {leaseDuration: 5s}\n",
            "leaderElection.leaseDuration",
        ),
        (
            "leaderElection: {retryPeriod: 9s}\n",
            "leaderElection.renewDeadline",
        ),
        (
            "leaderElection: {renewDeadline: -1s}\n",
            "leaderElection.renewDeadline",
        ),
        (
            "leaderElection: {resourceLock: configmaps}\n",
            "leaderElection.resourceLock",
        ),
        (
            "leaderElection: {leaderElect: true}\n",
            "leaderElection.resourceName",
        ),
        (
            "entryIDPrefix: a\nentryIDPrefixCleanup: a.\n",
            "entryIDPrefixCleanup",
        ),
        ("kind: Pod\n", "kind"),
        ("apiVersion: v1\n", "apiVersion"),
    ];
    for (extra, key) in cases {
        let yaml = if extra.contains("trustDomain") || extra.contains("clusterName") {
            extra.to_string()
        } else {
            format!("{MINIMAL}{extra}")
        };
        let err = Config::from_yaml(&yaml).expect_err(extra);
        let chain = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(": ");
        assert!(
            chain.contains(key),
            "{extra:?}: {chain:?} should name {key}"
        );
    }
}

#[test]
fn effective_config_prints_as_yaml() {
    let c = Config::from_yaml(SCM_DEMO).unwrap();
    let yaml = serde_norway::to_string(&c).unwrap();
    assert!(yaml.contains("gcInterval: 10s"), "{yaml}");
    assert!(yaml.contains("^(?:local-path-storage)$"), "{yaml}");
    assert!(yaml.contains("entryIDPrefix: null"), "{yaml}");
}

fn note_keys(c: &Config) -> Vec<&str> {
    c.notes.iter().map(|n| n.key.as_str()).collect()
}

#[test]
fn every_spire_controller_manager_key_is_accepted() {
    // Each key spire-controller-manager v0.6.x and its controller-runtime settings know,
    // with the value types they take there.
    let yaml = r#"
trustDomain: example.org
clusterName: prod
validatingWebhookConfigurationName: spire-controller-manager-webhook
filterByClassName: false
staticManifestPath: ""
expandEnvStaticManifests: false
enableEntryRenderCache: false
entryRenderCacheSize: 300000
grpc: {maxCallRecvMsgSize: 16777216}
syncPeriod: 10h
gracefulShutDown: 30s
cacheNamespace: ""
cacheNamespaces: {shop: {}, bank: {labelSelectors: [app=x]}}
controller: {groupKindConcurrency: {ClusterSPIFFEID.spire.spiffe.io: 1}, cacheSyncTimeout: 2m, recoverPanic: true}
webhook: {port: 9443, host: 0.0.0.0, certDir: /tmp}
metrics: {bindAddress: "0"}
health: {healthProbeBindAddress: "0"}
"#;
    let c = Config::from_yaml(yaml).unwrap();
    assert_eq!(c.grpc_max_call_recv_msg_size, Some(16 * 1024 * 1024));
    assert_eq!(c.cache_namespaces, ["bank", "shop"]);
    assert_eq!(c.metrics.address(), None, "metrics off");
    assert_eq!(c.health.address(), None, "probes off");
    assert_eq!(
        c.validating_webhook_configuration_name,
        "spire-controller-manager-webhook"
    );
    assert_eq!(c.cluster_spiffe_id_label_selector, None);
    assert_eq!(c.webhook.address(), "0.0.0.0:9443", "host 0.0.0.0 as given");
    assert_eq!(
        note_keys(&c),
        [
            "webhook.certDir",
            "syncPeriod",
            "gracefulShutDown",
            "controller",
            "enableEntryRenderCache",
            "cacheNamespaces.bank",
        ]
    );
    for note in &c.notes {
        assert!(!note.message.is_empty(), "{note}");
    }
}

#[test]
fn helm_writes_the_gc_interval_as_a_float() {
    // Helm's toYaml writes 10000000000 as 1e+10.
    let c = Config::from_yaml(&format!("{MINIMAL}gcInterval: 1e+10\n")).unwrap();
    assert_eq!(c.gc_interval, Duration::from_secs(10));
    let c = Config::from_yaml(&format!("{MINIMAL}gcInterval: 1m30s\n")).unwrap();
    assert_eq!(c.gc_interval, Duration::from_secs(90));
}

#[test]
fn unknown_keys_are_notes_not_errors() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}trustDomian: typo\nmetrics: {{bindAddres: x, bindAddress: ':9000'}}\nfutureKey: {{a: 1}}\n"
    ))
    .unwrap();
    assert_eq!(
        note_keys(&c),
        ["futureKey", "metrics.bindAddres", "trustDomian"]
    );
    assert_eq!(c.metrics.address(), Some(":9000"));
    assert!(
        c.notes[0].to_string().contains("unknown key"),
        "{}",
        c.notes[0]
    );
}

#[test]
fn log_settings_read_as_zap_does() {
    for (text, level) in [
        ("DEBUG", LogLevel::Debug),
        ("Info", LogLevel::Info),
        ("warn", LogLevel::Warn),
        ("error", LogLevel::Error),
        ("panic", LogLevel::Error),
    ] {
        let c = Config::from_yaml(&format!("{MINIMAL}logLevel: {text}\n")).unwrap();
        assert_eq!(c.log_level, level, "{text}");
    }
    let c = Config::from_yaml(&format!("{MINIMAL}logEncoding: JSON\n")).unwrap();
    assert_eq!(c.log_encoding, LogEncoding::Json);
}

#[test]
fn the_cluster_spiffe_id_watch_selector() {
    let cases = [
        (
            "className: blue\nfilterByClassName: true\n",
            Some("spire.spiffe.io/class-name=blue"),
        ),
        ("className: blue\nfilterByClassName: false\n", None),
        ("filterByClassName: true\n", None),
        (
            "clusterSPIFFEIDLabelSelectorConfig: {matchLabels: {team: a}, matchExpressions: [{key: tier, operator: In, values: [x, y]}, {key: legacy, operator: DoesNotExist}]}\n",
            Some("team=a,tier in (x,y),!legacy"),
        ),
        (
            "className: blue\nfilterByClassName: true\nclusterSPIFFEIDLabelSelectorConfig: {matchLabels: {team: a}}\n",
            Some("team=a"),
        ),
    ];
    for (extra, want) in cases {
        let c = Config::from_yaml(&format!("{MINIMAL}{extra}")).unwrap();
        assert_eq!(
            c.cluster_spiffe_id_label_selector.as_deref(),
            want,
            "{extra}"
        );
    }
}

#[test]
fn old_multi_locks_use_their_lease() {
    let c = Config::from_yaml(&format!(
        "{MINIMAL}leaderElection: {{leaderElect: true, resourceName: x, resourceLock: configmapsleases}}\n"
    ))
    .unwrap();
    assert!(c.leader_election.leader_elect);
    assert_eq!(note_keys(&c), ["leaderElection.resourceLock"]);
}

/// The shapes the SPIRE project's Helm chart renders (see the fixtures' README).
mod hardened_chart {
    use super::*;

    const DEFAULT: &str = include_str!("../../tests/fixtures/hardened-chart/default.yaml");
    const NO_WEBHOOK: &str =
        include_str!("../../tests/fixtures/hardened-chart/no-webhook-cleanup.yaml");
    const OVERRIDES: &str = include_str!("../../tests/fixtures/hardened-chart/overrides.yaml");
    const EXTERNAL: &str =
        include_str!("../../tests/fixtures/hardened-chart/external-cluster.yaml");
    const STATIC: &str = include_str!("../../tests/fixtures/hardened-chart/static.yaml");

    #[test]
    fn default_shape() {
        let c = Config::from_yaml(DEFAULT).unwrap();
        assert_eq!(c.gc_interval, Duration::from_secs(10));
        assert_eq!(c.entry_id_prefix.as_deref(), Some("shop-cluster."));
        assert_eq!(c.class_name.as_deref(), Some("identity-id"));
        assert!(!c.watch_classless);
        assert_eq!(c.cluster_spiffe_id_label_selector, None);
        assert!(c.leader_election.leader_elect);
        assert_eq!(c.leader_election.retry_period, Duration::from_secs(2));
        assert_eq!(
            c.validating_webhook_configuration_name,
            "id-spire-controller-manager-webhook"
        );
        assert!(c.is_namespace_ignored("openshift-monitoring"));
        // Nothing is unknown or unhonoured; the webhook is served (on 9443, as there).
        assert!(c.notes.is_empty(), "{:?}", c.notes);
        assert_eq!(c.webhook, Webhook::default());
    }

    #[test]
    fn webhook_off_with_cleanup() {
        let c = Config::from_yaml(NO_WEBHOOK).unwrap();
        assert_eq!(c.entry_id_prefix_cleanup.as_deref(), Some("legacy."));
        assert_eq!(
            c.validating_webhook_configuration_name,
            "spire-controller-manager-webhook"
        );
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }

    #[test]
    fn overrides_with_expand_env() {
        let text = expand_env(OVERRIDES, |name| {
            (name == "CLUSTER_NAME").then(|| "bank-eu".to_owned())
        });
        let c = Config::from_yaml(&text).unwrap();
        assert_eq!(c.cluster_name, "bank-eu");
        assert_eq!(c.gc_interval, Duration::from_secs(30));
        assert_eq!(
            (c.log_level, c.log_encoding),
            (LogLevel::Debug, LogEncoding::Json)
        );
        assert_eq!(c.leader_election.lease_duration, Duration::from_secs(60));
        assert_eq!(c.entry_id_prefix_cleanup.as_deref(), Some(""));
        assert_eq!(
            c.cluster_spiffe_id_label_selector.as_deref(),
            Some("spire.spiffe.io/class-name=payments")
        );
        assert!(
            c.is_namespace_ignored("cattle-system") && c.is_namespace_ignored("kube-node-lease")
        );
        assert!(!c.reconcile.cluster_static_entries);
    }

    #[test]
    fn external_cluster() {
        let c = Config::from_yaml(EXTERNAL).unwrap();
        assert_eq!(c.cache_namespaces, ["checkout"]);
        assert_eq!(c.metrics.address(), Some("0.0.0.0:8084"));
        assert_eq!(note_keys(&c), ["cacheNamespaces.checkout"]);
    }

    #[test]
    fn static_mode() {
        let c = Config::from_yaml(STATIC).unwrap();
        let mode = c.static_mode.as_ref().expect("static mode");
        assert_eq!(mode.manifest_path, std::path::Path::new("/manifests"));
        assert!(!mode.expand_env);
        // Its reconcile block lists the two static kinds only.
        assert!(!c.reconcile.cluster_spiffe_ids);
        assert!(c.reconcile.cluster_static_entries && c.reconcile.cluster_federated_trust_domains);
        assert!(c.notes.is_empty(), "{:?}", c.notes);
    }
}

#[test]
fn cache_namespaces_restrict_the_pods_considered() {
    let all = Config::from_yaml(MINIMAL).unwrap();
    assert!(all.watches_namespace("shop") && !all.watches_namespace("kube-system"));
    let some = Config::from_yaml(&format!(
        "{MINIMAL}cacheNamespaces: {{shop: {{}}, kube-system: null}}\n"
    ))
    .unwrap();
    assert!(some.watches_namespace("shop"));
    assert!(!some.watches_namespace("bank"), "outside cacheNamespaces");
    assert!(!some.watches_namespace("kube-system"), "still ignored");
    let one = Config::from_yaml(&format!("{MINIMAL}cacheNamespace: bank\n")).unwrap();
    assert!(one.watches_namespace("bank") && !one.watches_namespace("shop"));
    assert!(
        Config::from_yaml(&format!(
            "{MINIMAL}cacheNamespace: bank\ncacheNamespaces: {{shop: {{}}}}\n"
        ))
        .is_err()
    );
}

#[test]
fn webhook_listen_address() {
    let base = "trustDomain: example.org\nclusterName: c\n";
    let c = Config::from_yaml(base).unwrap();
    assert_eq!(c.webhook.address(), "[::]:9443");
    let c = Config::from_yaml(&format!("{base}webhook: {{host: 10.1.2.3, port: 0}}")).unwrap();
    assert_eq!(c.webhook.address(), "10.1.2.3:9443");
    let c = Config::from_yaml(&format!("{base}webhook: {{host: \"::1\", port: 8443}}")).unwrap();
    assert_eq!(c.webhook.address(), "[::1]:8443");
    let err = Config::from_yaml(&format!("{base}webhook: {{port: 70000}}")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "config key \"webhook.port\": 70000 is not a TCP port (1-65535)"
    );
}
