//! `operator.deployment.enabled` on the real node: the chart runs the operator as its
//! own Deployment, which gets its X.509-SVID through the CSI driver from the real agent
//! and reaches the server's TCP port with mTLS (admin_ids). Its webhook certificate is
//! minted and entries are written over that connection, across an SVID rotation.

use std::time::{Duration, Instant};

use e2e::cluster::{Cluster, NAMESPACE, RELEASE};
use e2e::operator::MetricsSnapshot;
use e2e::{http, wait};
use k8s_openapi::api::apps::v1::StatefulSet;
use kube::api::Api;

async fn operator_metrics(cluster: &Cluster) -> anyhow::Result<MetricsSnapshot> {
    let addr = format!("127.0.0.1:{}", cluster.ports.operator_metrics);
    let (status, body) = http::get(&addr, "/metrics").await?;
    anyhow::ensure!(status == 200, "/metrics answered {status}");
    MetricsSnapshot::parse(&body)
}

#[tokio::test]
async fn the_operator_deployment_reconciles_over_tcp_with_mtls_on_the_real_node()
-> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let server_address = format!(
        "operator.deployment.spireServerAddress=127.0.0.1:{}",
        cluster.ports.server
    );
    let installed = Instant::now();
    cluster.install(&[
        "--set",
        "operator.deployment.enabled=true",
        // No pod network or cluster DNS on this node: the operator's pod uses the host
        // network and the server's host port, as the agents do.
        "--set",
        "operator.deployment.hostNetwork=true",
        "--set",
        &server_address,
        "--set",
        "operator.deployment.svidTTL=2m",
    ])?;
    cluster.wait_rolled_out(Duration::from_secs(240)).await?;
    println!(
        "helm install (operator Deployment) -> every pod ready: {:.1} s",
        installed.elapsed().as_secs_f64()
    );

    // The server's pod runs the bootstrap container, not the operator.
    let statefulset = Api::<StatefulSet>::namespaced(cluster.control_plane.client(), NAMESPACE)
        .get(&format!("{RELEASE}-spire-server"))
        .await?;
    let containers: Vec<String> = statefulset
        .spec
        .template
        .spec
        .map(|p| p.containers.into_iter().map(|c| c.name).collect())
        .unwrap_or_default();
    assert_eq!(containers, ["spire-server", "spire-operator-bootstrap"]);

    // The webhook (certificate minted over TCP) admits a valid ClusterStaticEntry and the
    // operator writes its entry over TCP.
    let manifest = "apiVersion: spire.spiffe.io/v1alpha1
kind: ClusterStaticEntry
metadata: {name: over-tcp}
spec:
  spiffeID: spiffe://example.org/over-tcp
  parentID: spiffe://example.org/host
  selectors: [\"unix:uid:1000\"]
";
    wait::until(
        "the webhook admits the ClusterStaticEntry",
        Duration::from_secs(120),
        Duration::from_secs(2),
        || async { Ok(cluster.kubectl_apply(manifest).ok().map(|_| ())) },
    )
    .await?;
    let spire = cluster.spire_client().await?;
    wait::until(
        "the entry written over TCP",
        Duration::from_secs(60),
        Duration::from_millis(500),
        || {
            let spire = spire.clone();
            async move {
                let found = spire.list_entries().await?.iter().any(|e| {
                    e.spiffe_id
                        .as_ref()
                        .is_some_and(|id| id.path == "/over-tcp")
                });
                Ok(found.then_some(()))
            }
        },
    )
    .await?;

    // One rotation of the operator's SVID (2 m TTL, renewed at about half) with no
    // failed call.
    let first = operator_metrics(&cluster)
        .await?
        .value("spire_operator_workload_svid_expiry_timestamp_seconds", &[]);
    let waited = Instant::now();
    wait::until(
        "a rotated operator SVID",
        Duration::from_secs(150),
        Duration::from_secs(2),
        || async {
            let metrics = operator_metrics(&cluster).await?;
            let expiry =
                metrics.value("spire_operator_workload_svid_expiry_timestamp_seconds", &[]);
            Ok((expiry > first).then_some(()))
        },
    )
    .await?;
    let metrics = operator_metrics(&cluster).await?;
    // + 0.0: an empty sum is -0.0, which prints as "-0".
    let failed = metrics.value("spire_operator_spire_rpc_failures_total", &[]) + 0.0;
    let failed_writes = metrics.value(
        "spire_operator_entry_writes_total",
        &[("result", "failure")],
    ) + 0.0;
    println!(
        "operator SVID rotated {:.0} s after the first check; {} SVID updates, {failed} failed SPIRE calls, {failed_writes} failed writes",
        waited.elapsed().as_secs_f64(),
        metrics.value("spire_operator_workload_svid_updates_total", &[]),
    );
    assert_eq!((failed, failed_writes), (0.0, 0.0));
    Ok(())
}
