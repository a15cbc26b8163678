//! `helm lint` and `helm template` with the defaults and every values file under `ci/`;
//! each rendered object is validated by the pinned kube-apiserver (a server-side dry-run
//! apply with strict field validation: unknown or misspelt fields are errors), and wrong
//! values fail with a message naming the value.

use std::collections::BTreeMap;

use std::process::Command;

use anyhow::Context;
use e2e::operator::Operator;
use e2e::{ControlPlane, WorkDir, tools};
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::discovery::{Discovery, Scope};
use serde_json::Value;

use e2e::helm::{self, Helm};

const NAMESPACE: &str = "spire-system";

#[tokio::test]
async fn every_values_file_lints_renders_and_validates_against_the_apiserver() -> anyhow::Result<()>
{
    let helm = Helm::new()?;
    let chart = helm::chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let mut cases = vec![("defaults".to_owned(), None)];
    cases.extend(
        helm::values_files()?
            .into_iter()
            .map(|(name, path)| (name, Some(path))),
    );

    let mut rendered = BTreeMap::new();
    for (name, values) in &cases {
        let mut args = Vec::new();
        if let Some(path) = values {
            args.extend(["--values", path.to_str().context("values path")?]);
        }
        let mut lint = vec!["lint", "--strict", chart];
        lint.extend_from_slice(&args);
        helm.run(&lint)
            .with_context(|| format!("helm lint with {name}"))?;
        let objects = helm
            .template(NAMESPACE, &args)
            .with_context(|| format!("helm template with {name}"))?;
        rendered.insert(name.clone(), objects);
    }

    // What each values file changes, as the objects it yields.
    let kinds = |name: &str| -> Vec<String> { rendered[name].iter().map(helm::describe).collect() };
    let defaults = kinds("defaults");
    for expected in [
        "StatefulSet/spire-rs-spire-server",
        "DaemonSet/spire-rs-spire-agent",
        "DaemonSet/spire-rs-spiffe-csi-driver",
        "CSIDriver/csi.spiffe.io",
        "Deployment/spire-rs-oidc-discovery-provider",
        "ClusterSPIFFEID/default",
        "ClusterSPIFFEID/spire-rs-oidc-discovery-provider",
        "ValidatingWebhookConfiguration/spire-system-spire-rs-spire-operator-webhook",
        "Service/spire-rs-spire-operator-webhook",
    ] {
        assert!(
            defaults.iter().any(|k| k == expected),
            "{expected} missing from {defaults:?}"
        );
    }
    let no_webhook = kinds("no-webhook-values");
    assert!(
        !no_webhook.iter().any(|k| k.contains("webhook")),
        "{no_webhook:?}"
    );
    let existing = kinds("existing-spire-values");
    assert!(
        !existing
            .iter()
            .any(|k| k.contains("spire-server") || k.contains("spire-agent")),
        "{existing:?}"
    );
    assert!(existing.contains(&"DaemonSet/spire-rs-spiffe-csi-driver".to_owned()));
    let custom = kinds("custom-plugin-values");
    assert!(
        custom.contains(&"CSIDriver/csi.identity.example.com".to_owned()),
        "{custom:?}"
    );
    assert!(
        !kinds("no-oidc-values")
            .iter()
            .any(|k| k.contains("oidc") || k.ends_with("/default"))
    );
    assert!(
        kinds("external-db-values")
            .contains(&"Ingress/spire-rs-oidc-discovery-provider".to_owned())
    );
    assert!(
        kinds("operator-deployment-values")
            .contains(&"Deployment/spire-rs-spire-operator".to_owned())
    );
    let federation = kinds("federation-values");
    for expected in [
        "Service/spire-rs-spire-server-bundle-endpoint",
        "Ingress/spire-rs-spire-server-bundle-endpoint",
        "ClusterFederatedTrustDomain/cluster-b",
        "ClusterFederatedTrustDomain/partner",
    ] {
        assert!(
            federation.iter().any(|k| k == expected),
            "{expected} missing from {federation:?}"
        );
    }
    assert!(
        !defaults
            .iter()
            .any(|k| k.contains("bundle-endpoint") || k.starts_with("ClusterFederatedTrustDomain/")),
        "{defaults:?}"
    );

    // Annotation identities reach the operator's config only when turned on.
    let operator_config = |name: &str| -> String {
        rendered[name]
            .iter()
            .filter(|o| o["kind"] == "ConfigMap")
            .find_map(|o| o["data"]["config.yaml"].as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    assert!(!operator_config("defaults").contains("annotationIdentities"));
    let annotations = operator_config("annotations-values");
    for needle in [
        "annotationIdentities:",
        "enabled: true",
        "spiffe.io/annotations: enabled",
    ] {
        assert!(annotations.contains(needle), "{needle} in {annotations}");
    }

    // The components accept the configuration files rendered for them.
    let dir = WorkDir::new("chart-configs")?;
    let mut validated: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for (name, objects) in &rendered {
        for object in objects.iter().filter(|o| o["kind"] == "ConfigMap") {
            let Some(data) = object["data"].as_object() else {
                continue;
            };
            for (key, text) in data {
                let path = dir.join(format!("{name}-{key}"));
                std::fs::write(&path, text.as_str().unwrap_or_default())?;
                let path = path.to_str().context("path")?.to_owned();
                let (program, args) = match key.as_str() {
                    "server.conf" => (
                        tools::tool("spire-server")?,
                        vec!["validate", "-config", &path],
                    ),
                    "agent.conf" => (
                        tools::tool("spire-agent")?,
                        vec!["validate", "-config", &path],
                    ),
                    "config.yaml" => (Operator::binary()?, vec!["check-config", "--config", &path]),
                    _ => continue,
                };
                let output = Command::new(&program).args(&args).output()?;
                assert!(
                    output.status.success(),
                    "{name}: {} rejects its {key}:\n{}{}",
                    program.display(),
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
                validated.entry(name).or_default().push(key);
            }
        }
    }
    // Every setup that runs a component had its config checked (a renamed key or
    // ConfigMap would otherwise skip the check silently).
    for name in rendered.keys() {
        let mut keys = validated.get(name.as_str()).cloned().unwrap_or_default();
        keys.sort();
        let want: &[&str] = if name == "existing-spire-values" {
            &[]
        } else {
            &["agent.conf", "config.yaml", "server.conf"]
        };
        assert_eq!(keys, want, "{name}: configs validated");
    }

    // The pinned apiserver validates every object of every case.
    let control_plane = ControlPlane::start().await?;
    let client = control_plane.client();
    e2e::kube_util::ensure_namespace(&client, NAMESPACE).await?;
    e2e::kube_util::apply_crd_objects(&client, &spire_operator::crd::all()).await?;
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut failures = Vec::new();
    for (name, objects) in &rendered {
        println!("{name}: {} objects", objects.len());
        for object in objects {
            if let Err(e) = dry_run_apply(&client, &discovery, object).await {
                failures.push(format!("{name}: {}: {e:#}", helm::describe(object)));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "rejected by the apiserver:\n{}",
        failures.join("\n")
    );
    Ok(())
}

async fn dry_run_apply(
    client: &kube::Client,
    discovery: &Discovery,
    object: &Value,
) -> anyhow::Result<()> {
    let object: DynamicObject = serde_json::from_value(object.clone())?;
    let types = object.types.clone().context("no apiVersion/kind")?;
    let gvk = kube::api::GroupVersionKind::try_from(&types)?;
    let (resource, capabilities) = discovery
        .resolve_gvk(&gvk)
        .with_context(|| format!("the apiserver does not serve {gvk:?}"))?;
    let name = object.metadata.name.clone().context("no name")?;
    let api: Api<DynamicObject> = match capabilities.scope {
        Scope::Namespaced => {
            let namespace = object.metadata.namespace.clone().context("no namespace")?;
            Api::namespaced_with(client.clone(), &namespace, &resource)
        }
        Scope::Cluster => Api::all_with(client.clone(), &resource),
    };
    let params = PatchParams::apply("chart-test")
        .dry_run()
        .validation_strict();
    api.patch(&name, &params, &Patch::Apply(&object)).await?;
    Ok(())
}

#[tokio::test]
async fn wrong_values_fail_with_a_message_naming_them() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let chart = helm::chart_dir();
    let chart = chart.to_str().context("chart path")?;
    let cases: &[(&[&str], &str)] = &[
        (
            &["--set", "spireServer.replicas=0"],
            "/spireServer/replicas",
        ),
        (
            &["--set", "global.trustDomain=Example.ORG"],
            "/global/trustDomain",
        ),
        (&["--set", "csiDriver.pluginNmae=x"], "pluginNmae"),
        (
            &["--set", "csiDriver.agentSocketDir=/sockets"],
            "csiDriver.agentSocketDir (or spireAgent.socketDir) \"/sockets\"",
        ),
        (
            &["--set", "csiDriver.agentSocketWait=90"],
            "/csiDriver/agentSocketWait",
        ),
        (&["--set", "csiDriver.nodeMount=rw"], "/csiDriver/nodeMount"),
        (
            &["--set", "csiDriver.requiresRepublish=maybe"],
            "/csiDriver/requiresRepublish",
        ),
        (
            &["--set", "spireServer.dataStore.type=oracle"],
            "/spireServer/dataStore/type",
        ),
        (
            &["--set", "spireServer.caTTL=one-day"],
            "/spireServer/caTTL",
        ),
        (
            &["--set", "spireServer.enabled=false"],
            "operator.enabled needs spireServer.enabled",
        ),
        (
            &["--set", "spireServer.dataStore.type=postgres"],
            "spireServer.dataStore.existingSecret.name",
        ),
        (
            &["--set", "spireServer.replicas=2"],
            "needs spireServer.dataStore.type postgres or mysql",
        ),
        (
            &[
                "--set",
                "operator.config.annotationIdentities.allowedSPIFFEIDTemplates[0]=ns/x",
            ],
            "/operator/config/annotationIdentities/allowedSPIFFEIDTemplates/0",
        ),
        (
            &[
                "--set",
                "operator.deployment.enabled=true,csiDriver.enabled=false",
            ],
            "operator.deployment.enabled needs spireAgent.enabled and csiDriver.enabled",
        ),
        (
            &["--set", "operator.deployment.spiffeID=example.org/operator"],
            "/operator/deployment/spiffeID",
        ),
        (
            &["--set", "operator.enabled=false,spireServer.enabled=false"],
            "spireAgent.server.address is required",
        ),
        (
            &[
                "--set",
                "spireServer.federation.enabled=true,spireServer.federation.bundleEndpoint.profile=https_web",
            ],
            "spireServer.federation.bundleEndpoint.tlsSecret is required",
        ),
        (
            &[
                "--set",
                "spireServer.federation.bundleEndpoint.profile=https_spiffy",
            ],
            "/spireServer/federation/bundleEndpoint/profile",
        ),
    ];
    for (args, expected) in cases {
        let mut all = vec!["template", "spire-rs", chart];
        all.extend_from_slice(args);
        let output = helm.output(&all)?;
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{args:?} rendered");
        assert!(
            stderr.contains(expected),
            "{args:?}: {expected:?} not in:\n{stderr}"
        );
    }
    Ok(())
}

#[test]
fn the_csidriver_asks_for_republish_unless_turned_off() -> anyhow::Result<()> {
    let helm = Helm::new()?;
    let cases: [(&[&str], bool); 2] = [
        (&[], true),
        (&["--set", "csiDriver.requiresRepublish=false"], false),
    ];
    for (args, want) in cases {
        let objects = helm.template(NAMESPACE, args)?;
        let driver = objects
            .iter()
            .find(|o| helm::describe(o) == "CSIDriver/csi.spiffe.io")
            .with_context(|| format!("no CSIDriver rendered with {args:?}"))?;
        assert_eq!(
            driver["spec"]["requiresRepublish"], want,
            "spec.requiresRepublish of the CSIDriver rendered with {args:?}"
        );
    }
    Ok(())
}
