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
        (
            "webhook: {port: 9443}\ntrustDomain: a\nclusterName: b\n",
            "webhook",
        ),
        ("grpc: {maxCallRecvMsgSize: 1}\n", "grpc"),
        ("staticManifestPath: /m\n", "staticManifestPath"),
        (
            "validatingWebhookConfigurationName: x\n",
            "validatingWebhookConfigurationName",
        ),
        ("trustDomian: typo\n", "trustDomian"),
        ("metrics: {bindAddres: x}\n", "bindAddres"),
        ("logLevel: verbose\n", "verbose"),
        ("logEncoding: xml\n", "xml"),
        ("ignoreNamespaces: ['(']\n", "ignoreNamespaces[0]"),
        ("gcInterval: soon\n", "gcInterval"),
        (
            "leaderElection: {resourceLock: configmaps}\n",
            "leaderElection.resourceLock",
        ),
        ("leaderElection: {leaseDuration: 15}\n", "leaseDuration"),
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
