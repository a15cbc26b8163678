//! `helm install` into the real kube-apiserver, the operator reconciling with nothing but
//! the chart's ServiceAccount credentials (least privilege: enough to work, nothing more),
//! then `helm uninstall`.

use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::WorkDir;
use e2e::entries::{self, EntryView};
use e2e::kube_util;
use e2e::operator::Operator;
use e2e::world::World;
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::storage::v1::CSIDriver;
use kube::api::{Api, DeleteParams, ListParams};
use serde_norway::Value;
use spire_operator::crd::ClusterSPIFFEID;

use e2e::helm::{self, Helm};

const NAMESPACE: &str = "spire-system";
const TRUST_DOMAIN: &str = "example.org";
const CLUSTER: &str = "e2e";

#[tokio::test]
async fn install_reconcile_as_the_chart_service_account_and_uninstall() -> anyhow::Result<()> {
    let world = World::start_without_crds(TRUST_DOMAIN).await?;
    let helm = Helm::new()?;
    let chart = helm::chart_dir();
    let kubeconfig = world
        .control_plane
        .kubeconfig()
        .to_str()
        .context("path")?
        .to_owned();
    let cluster_name = format!("global.clusterName={CLUSTER}");

    let started = Instant::now();
    helm.run(&[
        "install",
        "spire-rs",
        chart.to_str().context("chart path")?,
        "--namespace",
        NAMESPACE,
        "--create-namespace",
        "--kubeconfig",
        &kubeconfig,
        "--set",
        &cluster_name,
    ])?;
    println!("helm install: {:.1} s", started.elapsed().as_secs_f64());

    // The CRDs came from the chart's crds/ (the top-level crds/ directory), and the
    // objects that need them were created after them.
    let client = world.client.clone();
    let csids: Api<ClusterSPIFFEID> = Api::all(client.clone());
    let names: Vec<String> = csids
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter_map(|c| c.metadata.name)
        .collect();
    assert_eq!(names, ["default", "spire-rs-oidc-discovery-provider"]);
    let statefulsets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), NAMESPACE);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), NAMESPACE);
    let csi_drivers: Api<CSIDriver> = Api::all(client.clone());
    statefulsets.get("spire-rs-spire-server").await?;
    daemonsets.get("spire-rs-spire-agent").await?;
    daemonsets.get("spire-rs-spiffe-csi-driver").await?;
    deployments.get("spire-rs-oidc-discovery-provider").await?;
    let driver = csi_drivers.get("csi.spiffe.io").await?.spec;
    assert_eq!(driver.attach_required, Some(false));
    assert_eq!(driver.pod_info_on_mount, Some(true));
    assert_eq!(driver.fs_group_policy.as_deref(), Some("None"));
    assert_eq!(
        driver.volume_lifecycle_modes,
        Some(vec!["Ephemeral".to_owned()])
    );
    // kubelet republishes every pod sync, which is what repairs a stale mount.
    assert_eq!(driver.requires_republish, Some(true));
    // No seLinuxMount (the API server defaults it to false): kubelet would pass
    // `context=` mount flags, which a bind mount cannot honour (docs/troubleshooting.md).
    assert_eq!(driver.se_linux_mount, Some(false));

    // The operator with the server pod's ServiceAccount token and the chart's config
    // (only the socket and listen addresses differ: no kubelet runs the pod here).
    let dir = WorkDir::new("chart-sa")?;
    let token =
        kube_util::service_account_token(&client, NAMESPACE, "spire-rs-spire-server").await?;
    let sa_kubeconfig = dir.join("kubeconfig");
    let sa_client = world
        .control_plane
        .token_kubeconfig(&token, &sa_kubeconfig)
        .await?;
    let config = chart_operator_config(&client).await?;
    let mut operator = Operator::start_as(
        &world.control_plane,
        &world.spire,
        CLUSTER,
        &config,
        &sa_kubeconfig,
    )
    .await
    .context("the operator under the chart's ServiceAccount")?;
    operator
        .wait_metric("spire_operator_leader", &[], Duration::from_secs(30), |v| {
            v == 1.0
        })
        .await?;
    // The chart's RBAC lets it watch and patch its ValidatingWebhookConfiguration (by
    // name only): all three webhooks get the trust bundle.
    let configuration = format!("{NAMESPACE}-spire-rs-spire-operator-webhook");
    let bundles = e2e::webhook::wait_ca_bundles(&client, &configuration)
        .await
        .with_context(|| operator.log_tail(30))?;
    assert_eq!(
        bundles.len(),
        3,
        "caBundle on each webhook of {configuration}"
    );

    let node = world.node("node-a").await?;
    world.namespace("shop", &[]).await?;
    let pod = world
        .pod("shop", "web-0", "default", "node-a", &[("app", "web")])
        .await?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let want_id = format!("spiffe://{TRUST_DOMAIN}/ns/shop/sa/default");
    let want_parent = format!(
        "spiffe://{TRUST_DOMAIN}/spire/agent/k8s_psat/{CLUSTER}/{}",
        node.metadata.uid.clone().unwrap_or_default()
    );
    let all = entries::wait_for(
        &world.spire,
        "the default ClusterSPIFFEID's entry for shop/web-0",
        |all| entries::for_pod(all, &uid).len() == 1,
    )
    .await?;
    let entry: &EntryView = entries::for_pod(&all, &uid)[0];
    assert_eq!(entry.spiffe_id, want_id, "{}", entries::describe(&all));
    assert_eq!(entry.parent_id, want_parent);
    // Status writes are allowed too.
    world
        .wait_csid_status("default", "Ready with one entry", |s| {
            s.stats.entries_to_set == 1
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        })
        .await?;

    // Nothing beyond what it needs.
    let secrets: Api<Secret> = Api::namespaced(sa_client.clone(), NAMESPACE);
    assert_forbidden(secrets.list(&ListParams::default()).await, "list Secrets");
    let all_secrets: Api<Secret> = Api::all(sa_client.clone());
    assert_forbidden(
        all_secrets.list(&ListParams::default()).await,
        "list Secrets cluster-wide",
    );
    let pods: Api<Pod> = Api::namespaced(sa_client.clone(), "shop");
    assert_forbidden(
        pods.delete("web-0", &DeleteParams::default())
            .await
            .map(|_| ()),
        "delete a Pod",
    );
    let sa_csids: Api<ClusterSPIFFEID> = Api::all(sa_client.clone());
    assert_forbidden(
        sa_csids
            .delete("default", &DeleteParams::default())
            .await
            .map(|_| ()),
        "delete a ClusterSPIFFEID",
    );
    let config_maps: Api<ConfigMap> = Api::namespaced(sa_client.clone(), NAMESPACE);
    assert_forbidden(
        config_maps.get("spire-rs-spire-operator").await,
        "read another ConfigMap",
    );
    drop(operator);
    // Every permission it has, each verb allowed, a sample of the rest refused.
    let (granted, refused) = crate::rbac::sweep(
        &sa_client,
        NAMESPACE,
        &configuration,
        "spire-rs-spire-operator",
    )
    .await?;
    println!("RBAC sweep: {granted} grants allowed, {refused} refusals checked");

    let started = Instant::now();
    helm.run(&[
        "uninstall",
        "spire-rs",
        "--namespace",
        NAMESPACE,
        "--kubeconfig",
        &kubeconfig,
        "--wait",
        "--timeout",
        "60s",
    ])?;
    println!("helm uninstall: {:.1} s", started.elapsed().as_secs_f64());
    for (what, gone) in [
        (
            "StatefulSet",
            statefulsets
                .get_opt("spire-rs-spire-server")
                .await?
                .is_none(),
        ),
        (
            "agent DaemonSet",
            daemonsets.get_opt("spire-rs-spire-agent").await?.is_none(),
        ),
        (
            "CSIDriver",
            csi_drivers.get_opt("csi.spiffe.io").await?.is_none(),
        ),
        ("ClusterSPIFFEID", csids.get_opt("default").await?.is_none()),
    ] {
        assert!(gone, "{what} left after helm uninstall");
    }
    Ok(())
}

/// The operator config the chart rendered, without the keys the harness sets itself
/// (socket path and listen addresses, the webhook's included).
async fn chart_operator_config(client: &kube::Client) -> anyhow::Result<String> {
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), NAMESPACE);
    let map = config_maps.get("spire-rs-spire-operator").await?;
    let text = map
        .data
        .and_then(|mut d| d.remove("config.yaml"))
        .context("config.yaml missing from the chart's operator ConfigMap")?;
    let mut config: Value = serde_norway::from_str(&text)?;
    let mapping = config.as_mapping_mut().context("config is not a mapping")?;
    for key in ["spireServerSocketPath", "metrics", "health", "webhook"] {
        mapping.remove(key);
    }
    Ok(serde_norway::to_string(&config)?)
}

fn assert_forbidden<T>(result: Result<T, kube::Error>, what: &str) {
    match result {
        Err(kube::Error::Api(e)) if e.code == 403 => {}
        Err(other) => panic!("{what}: expected 403 Forbidden, got {other}"),
        // The object itself (a Secret's data, say) has no place in a test log.
        Ok(_) => panic!("{what}: expected 403 Forbidden, but it was allowed"),
    }
}
