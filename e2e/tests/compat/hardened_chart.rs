//! The SPIRE project's Helm chart (spiffe/helm-charts-hardened) with our image in place of
//! spire-controller-manager's: its config file shapes (`operator/tests/fixtures/hardened-chart`),
//! its container args verbatim, and the CRDs it installs (spire-controller-manager's own,
//! whose status schema has no `conditions` or `observedGeneration`). The operator must
//! start unchanged, reconcile as that config says, and not loop patching a status the
//! API server prunes.

use std::time::Duration;

use anyhow::Context;
use e2e::control_plane::Options;
use e2e::entries::{self, EntryView};
use e2e::kube_util::{self, apply_crds, ensure_namespace};
use e2e::operator::{Deployment, Listen, Operator};
use e2e::reference::ReferenceControllerManager;
use e2e::world::World;
use kube::api::{Api, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::discovery::ApiResource;
use serde_json::{Value, json};

const FIXTURES: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../operator/tests/fixtures/hardened-chart"
);
const WRITES: &str = "spire_operator_entry_writes_total";

/// The fixture's text with the harness's addresses and socket in place of the chart's
/// (line by line, so everything else, e.g. `gcInterval: 1e+10`, stays as the chart wrote it),
/// and a `webhook` block (the chart leaves controller-runtime's `:9443`, which tests
/// running side by side cannot all bind) on `webhook_host`.
fn adapt(fixture: &str, listen: &Listen, webhook_host: &str, world: &World) -> String {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{fixture}"))
        .unwrap_or_else(|e| panic!("reading fixture {fixture}: {e}"));
    let mut lines: Vec<String> = text
        .lines()
        .map(|line| {
            let indent = &line[..line.len() - line.trim_start().len()];
            match line.trim_start().split_once(':').map(|(key, _)| key) {
                Some("bindAddress") => format!("{indent}bindAddress: {}", listen.metrics),
                Some("healthProbeBindAddress") => {
                    format!("{indent}healthProbeBindAddress: {}", listen.health)
                }
                Some("spireServerSocketPath") => format!(
                    "spireServerSocketPath: \"{}\"",
                    world.spire.server_socket().display()
                ),
                _ => line.to_owned(),
            }
        })
        .collect();
    lines.push(format!(
        "webhook:\n  host: \"{webhook_host}\"\n  port: {}",
        listen.webhook_port
    ));
    lines.join("\n")
}

/// Starts our binary as the chart's Deployment would: `fixture` adapted (see [`adapt`])
/// as its config file `file_name` in the working directory, `args` verbatim, only `env`;
/// returns it once ready.
async fn deploy(
    world: &World,
    fixture: &str,
    file_name: &str,
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<Operator> {
    deploy_on(world, fixture, file_name, args, env, "127.0.0.1").await
}

/// [`deploy`] with the webhook listening on `webhook_host`.
pub(super) async fn deploy_on(
    world: &World,
    fixture: &str,
    file_name: &str,
    args: &[&str],
    env: &[(&str, &str)],
    webhook_host: &str,
) -> anyhow::Result<Operator> {
    let config = |listen: &Listen| adapt(fixture, listen, webhook_host, world);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let mut operator = Operator::spawn_deployed(&Deployment {
        file_name,
        config: &config,
        args: &args,
        env,
    })?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    Ok(operator)
}

pub(super) fn admin_kubeconfig(world: &World) -> String {
    world
        .control_plane
        .kubeconfig()
        .to_string_lossy()
        .into_owned()
}

/// A world with spire-controller-manager's CRDs, the chart's namespace, a node and pods.
async fn world(trust_domain: &str, pods: &[(&str, &str)]) -> anyhow::Result<World> {
    world_with(trust_domain, pods, Options::default()).await
}

pub(super) async fn world_with(
    trust_domain: &str,
    pods: &[(&str, &str)],
    options: Options,
) -> anyhow::Result<World> {
    let world = World::start_without_crds_with(trust_domain, options).await?;
    apply_crds(&world.client, &ReferenceControllerManager::crd_files()?).await?;
    ensure_namespace(&world.client, "identity").await?;
    world.node("node-a").await?;
    for (namespace, name) in pods {
        world.namespace(namespace, &[]).await?;
        world
            .pod(namespace, name, "default", "node-a", &[("app", "web")])
            .await?;
    }
    Ok(world)
}

/// Applies a ClusterSPIFFEID with labels (the chart labels its own with their class).
pub(super) async fn csid(
    world: &World,
    name: &str,
    labels: Value,
    spec: Value,
) -> anyhow::Result<()> {
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    let api: Api<DynamicObject> = Api::all_with(world.client.clone(), &ApiResource::from_gvk(&gvk));
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "spire.spiffe.io/v1alpha1",
        "kind": "ClusterSPIFFEID",
        "metadata": { "name": name, "labels": labels },
        "spec": spec,
    }))?;
    api.patch(
        name,
        &PatchParams::apply("e2e").force(),
        &Patch::Apply(&object),
    )
    .await
    .with_context(|| format!("applying ClusterSPIFFEID {name}"))?;
    Ok(())
}

pub(super) fn csid_spec(path: &str, class: Option<&str>) -> Value {
    let mut spec = json!({
        "spiffeIDTemplate": format!("spiffe://{{{{ .TrustDomain }}}}/{path}/{{{{ .PodMeta.Namespace }}}}/{{{{ .PodMeta.Name }}}}"),
        "podSelector": {},
    });
    if let Some(class) = class {
        spec["className"] = class.into();
    }
    spec
}

fn ids(entries: &[EntryView]) -> Vec<(&str, &str)> {
    entries
        .iter()
        .filter(|e| e.is_pod_entry())
        .map(|e| (e.spiffe_id.as_str(), e.id.as_str()))
        .collect()
}

async fn resource_version(world: &World, name: &str) -> anyhow::Result<(String, Value)> {
    let gvk = GroupVersionKind::gvk("spire.spiffe.io", "v1alpha1", "ClusterSPIFFEID");
    let api: Api<DynamicObject> = Api::all_with(world.client.clone(), &ApiResource::from_gvk(&gvk));
    let object = api.get(name).await?;
    Ok((
        object.metadata.resource_version.unwrap_or_default(),
        object.data.get("status").cloned().unwrap_or(Value::Null),
    ))
}

#[tokio::test]
async fn the_charts_default_config_and_args_start_it_unchanged() -> anyhow::Result<()> {
    let world = world("shop.example", &[("shop", "web-0")]).await?;
    csid(
        &world,
        "chart-default",
        json!({"spire.spiffe.io/class-name": "identity-id"}),
        csid_spec("chart", Some("identity-id")),
    )
    .await?;
    // Classless, and the chart's config does not watch classless resources.
    csid(&world, "classless", json!({}), csid_spec("classless", None)).await?;

    let kubeconfig = admin_kubeconfig(&world);
    let mut operator = deploy(
        &world,
        "default.yaml",
        "controller-manager-config.yaml",
        &["--config=controller-manager-config.yaml"],
        // The chart's environment, plus the Go tool's listing cadence (a full listing
        // every gcInterval instead of every 5 minutes), so that a resync happens within
        // the check below.
        &[
            ("ENABLE_WEBHOOKS", "true"),
            ("KUBECONFIG", &kubeconfig),
            ("SPIRE_OPERATOR_ENTRY_RESYNC_INTERVAL", "0s"),
        ],
    )
    .await?;

    let listed = entries::wait_for(&world.spire, "the chart's class gets its entry", |e| {
        ids(e).len() == 1
    })
    .await
    .with_context(|| operator.log_tail(40))?;
    let (spiffe_id, id) = ids(&listed)[0];
    assert_eq!(spiffe_id, "spiffe://shop.example/chart/shop/web-0");
    assert!(id.starts_with("shop-cluster."), "entryIDPrefix: {id}");

    // The CRDs prune conditions and observedGeneration; the stats stay. Once settled,
    // a full resync (gcInterval 1e+10 = 10 s) must patch nothing and write nothing.
    let status = wait_status(&world, "chart-default").await?;
    assert_eq!(status["stats"]["entriesToSet"], 1, "{status}");
    let (version, _) = resource_version(&world, "chart-default").await?;
    let writes = operator.metrics().await?.value(WRITES, &[]);
    tokio::time::sleep(Duration::from_secs(13)).await;
    operator.ensure_running()?;
    let (after, status) = resource_version(&world, "chart-default").await?;
    assert_eq!(
        version, after,
        "status re-patched across a resync: {status}"
    );
    assert_eq!(operator.metrics().await?.value(WRITES, &[]), writes);
    let metrics = operator.metrics().await?;
    assert!(
        metrics.value("spire_operator_entry_lists_total", &[]) >= 2.0,
        "a resync ran"
    );

    let log = std::fs::read_to_string(operator.log_path())?;
    assert!(
        !log.contains('\u{1b}'),
        "colour codes in a log that is not a terminal"
    );
    assert!(
        log.contains("validatingWebhookConfigurationName"),
        "the unhonoured key is reported at start:\n{log}"
    );
    Ok(())
}

/// The ClusterSPIFFEID's status once the operator wrote stats into it.
async fn wait_status(world: &World, name: &str) -> anyhow::Result<Value> {
    for _ in 0..150 {
        let (_, status) = resource_version(world, name).await?;
        if status.get("stats").is_some() {
            return Ok(status);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    anyhow::bail!("ClusterSPIFFEID {name} got no status stats within 30 s")
}

#[tokio::test]
async fn the_charts_overrides_with_expand_env() -> anyhow::Result<()> {
    let world = world("bank.example", &[("pay", "api-0")]).await?;
    csid(
        &world,
        "payments",
        json!({"spire.spiffe.io/class-name": "payments"}),
        csid_spec("payments", Some("payments")),
    )
    .await?;
    // filterByClassName: the watch selects the class label, so a resource of the class
    // without the label is not seen, and neither is a classless one (though
    // watchClassless is on), as with spire-controller-manager.
    csid(
        &world,
        "unlabelled",
        json!({}),
        csid_spec("unlabelled", Some("payments")),
    )
    .await?;
    csid(&world, "classless", json!({}), csid_spec("classless", None)).await?;

    let kubeconfig = admin_kubeconfig(&world);
    let operator = deploy(
        &world,
        "overrides.yaml",
        "controller-manager-config.yaml",
        &["--config=controller-manager-config.yaml", "--expand-env"],
        &[
            ("ENABLE_WEBHOOKS", "true"),
            ("KUBECONFIG", &kubeconfig),
            ("CLUSTER_NAME", "bank-eu"),
        ],
    )
    .await?;
    let listed = entries::wait_for(&world.spire, "the labelled class gets its entry", |e| {
        ids(e).len() == 1
    })
    .await
    .with_context(|| operator.log_tail(40))?;
    entries::holds_for(
        &world.spire,
        "only the labelled resource is reconciled",
        Duration::from_secs(3),
        |e| ids(e).len() == 1,
    )
    .await?;
    let entry = listed
        .iter()
        .find(|e| e.is_pod_entry())
        .context("pod entry")?;
    assert_eq!(entry.spiffe_id, "spiffe://bank.example/payments/pay/api-0");
    // parentIDTemplate with .NodeMeta.Name and the cluster name from the environment.
    assert_eq!(
        entry.parent_id,
        "spiffe://bank.example/spire/agent/k8s_psat/bank-eu/node-a"
    );
    // logEncoding: json
    let log = std::fs::read_to_string(operator.log_path())?;
    let first = log.lines().next().context("no log line")?;
    serde_json::from_str::<Value>(first).with_context(|| format!("not JSON: {first}"))?;
    Ok(())
}

#[tokio::test]
async fn an_external_cluster_config_with_its_kubeconfig_flag() -> anyhow::Result<()> {
    // cacheNamespaces: checkout only, so the pod in "other" is not considered.
    let world = world(
        "shop.example",
        &[("checkout", "cart-0"), ("other", "cart-1")],
    )
    .await?;
    // Classless: this config watches classless resources.
    csid(&world, "classless", json!({}), csid_spec("edge", None)).await?;

    let kubeconfig = admin_kubeconfig(&world);
    let operator = deploy(
        &world,
        "external-cluster.yaml",
        "controller-manager-config-edge.yaml",
        &[
            &format!("--kubeconfig={kubeconfig}"),
            "--config=controller-manager-config-edge.yaml",
        ],
        &[("ENABLE_WEBHOOKS", "false")],
    )
    .await?;
    let listed = entries::wait_for(&world.spire, "the classless resource gets its entry", |e| {
        ids(e).len() == 1
    })
    .await
    .with_context(|| operator.log_tail(40))?;
    let (spiffe_id, id) = ids(&listed)[0];
    assert_eq!(spiffe_id, "spiffe://shop.example/edge/checkout/cart-0");
    assert!(id.starts_with("edge."), "{id}");
    entries::holds_for(
        &world.spire,
        "no entry for the pod outside cacheNamespaces",
        Duration::from_secs(3),
        |e| ids(e).len() == 1,
    )
    .await?;
    Ok(())
}

/// The rules the hardened chart grants the server pod's ServiceAccount, which
/// spire-controller-manager's container (and so our image in its place) runs as: core
/// Endpoints but no EndpointSlices, no ServiceAccounts, events only in its namespace.
pub(super) async fn grant_the_charts_rbac(
    world: &World,
    namespace: &str,
    account: &str,
) -> anyhow::Result<()> {
    let spire = |resource: &str, verbs: &[&str]| json!({"apiGroups": ["spire.spiffe.io"], "resources": [resource], "verbs": verbs});
    let all = [
        "get", "list", "watch", "create", "update", "patch", "delete",
    ];
    let status = ["get", "patch", "update"];
    let read = ["get", "list", "watch"];
    let objects = [
        json!({"apiVersion": "v1", "kind": "ServiceAccount",
               "metadata": {"name": account, "namespace": namespace}}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": "chart-controller-manager"},
        "rules": [
            {"apiGroups": [""], "resources": ["namespaces", "nodes", "endpoints", "pods"], "verbs": read},
            {"apiGroups": ["admissionregistration.k8s.io"], "resources": ["validatingwebhookconfigurations"], "verbs": ["get", "list", "patch", "watch"]},
            spire("clusterfederatedtrustdomains", &all),
            spire("clusterfederatedtrustdomains/status", &status),
            spire("clusterspiffeids", &all),
            spire("clusterspiffeids/status", &status),
            spire("clusterstaticentries", &all),
            spire("clusterstaticentries/status", &status),
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding",
               "metadata": {"name": "chart-controller-manager"},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "chart-controller-manager"},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": "chart-leader-election", "namespace": namespace},
        "rules": [
            {"apiGroups": [""], "resources": ["configmaps"], "verbs": all},
            {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": all},
            {"apiGroups": [""], "resources": ["events"], "verbs": ["create", "patch"]},
        ]}),
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
               "metadata": {"name": "chart-leader-election", "namespace": namespace},
               "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "chart-leader-election"},
               "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}]}),
    ];
    for object in objects {
        let object: DynamicObject = serde_json::from_value(object)?;
        let types = object
            .types
            .clone()
            .context("object without apiVersion/kind")?;
        let gvk = GroupVersionKind::try_from(&types)?;
        let resource = ApiResource::from_gvk(&gvk);
        let api: Api<DynamicObject> = match object.metadata.namespace.as_deref() {
            Some(ns) => Api::namespaced_with(world.client.clone(), ns, &resource),
            None => Api::all_with(world.client.clone(), &resource),
        };
        let name = object.metadata.name.clone().unwrap_or_default();
        api.patch(
            &name,
            &PatchParams::apply("e2e").force(),
            &Patch::Apply(&object),
        )
        .await
        .with_context(|| format!("applying {} {name}", types.kind))?;
    }
    Ok(())
}

#[tokio::test]
async fn under_the_charts_rbac_with_endpoints_and_no_service_accounts() -> anyhow::Result<()> {
    let world = world("shop.example", &[]).await?;
    world.namespace("shop", &[]).await?;
    let pod = world
        .pod("shop", "web-0", "default", "node-a", &[("app", "web")])
        .await?;
    // The chart's RBAC lets it read core Endpoints only, so DNS names come from them.
    world.endpoints("shop", "web", &[&pod]).await?;
    let mut spec = csid_spec("chart", Some("identity-id"));
    spec["autoPopulateDNSNames"] = true.into();
    csid(
        &world,
        "chart-default",
        json!({"spire.spiffe.io/class-name": "identity-id"}),
        spec,
    )
    .await?;
    grant_the_charts_rbac(&world, "identity", "spire-server").await?;
    let token = kube_util::service_account_token(&world.client, "identity", "spire-server").await?;
    let dir = e2e::WorkDir::new("chart-rbac")?;
    let kubeconfig = dir.join("kubeconfig");
    world
        .control_plane
        .token_kubeconfig(&token, &kubeconfig)
        .await?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();

    // In the pod the namespace comes from the service account's namespace file,
    // which this process has not: the same value, given the other way.
    let operator = deploy(
        &world,
        "default.yaml",
        "controller-manager-config.yaml",
        &["--config=controller-manager-config.yaml"],
        &[
            ("ENABLE_WEBHOOKS", "true"),
            ("KUBECONFIG", &kubeconfig),
            ("POD_NAMESPACE", "identity"),
        ],
    )
    .await?;
    let listed = entries::wait_for(
        &world.spire,
        "the pod's entry, with its Service's DNS names",
        |e| {
            e.iter()
                .any(|e| e.is_pod_entry() && e.dns_names.iter().any(|n| n == "web.shop.svc"))
        },
    )
    .await
    .with_context(|| operator.log_tail(40))?;
    let entry = listed
        .iter()
        .find(|e| e.is_pod_entry())
        .context("pod entry")?;
    assert_eq!(entry.spiffe_id, "spiffe://shop.example/chart/shop/web-0");
    let status = wait_status(&world, "chart-default").await?;
    assert_eq!(status["stats"]["entriesToSet"], 1, "{status}");
    Ok(())
}
