//! The webhook objects spiffe/helm-charts-hardened renders, served by our operator in
//! place of spire-controller-manager: the ValidatingWebhookConfiguration
//! `<namespace>-spire-controller-manager-webhook` with its two webhooks (names, paths,
//! no port, `failurePolicy: Fail` as its post-install hook sets it, no caBundle), the
//! Service `spire-controller-manager-webhook` (443 -> the named port `https`), the
//! chart's config file and container environment, and the chart's RBAC.

use anyhow::Context;
use e2e::control_plane::Options;
use e2e::webhook::{self, Hook};
use serde_json::json;

use super::hardened_chart::{csid, csid_spec, deploy_on, grant_the_charts_rbac, world_with};

/// `validatingWebhookConfigurationName` in the fixture (release `id`, namespace `identity`).
const CONFIGURATION: &str = "id-spire-controller-manager-webhook";
const SERVICE: &str = "spire-controller-manager-webhook";

#[tokio::test]
async fn the_charts_webhook_configuration_is_served_under_its_rbac() -> anyhow::Result<()> {
    let options = Options {
        endpoint_routing: true,
        ..Options::default()
    };
    let world = world_with("shop.example", &[], options).await?;
    grant_the_charts_rbac(&world, "identity", "spire-server").await?;
    let token =
        e2e::kube_util::service_account_token(&world.client, "identity", "spire-server").await?;
    let dir = e2e::WorkDir::new("chart-webhook")?;
    let kubeconfig = dir.join("kubeconfig");
    world
        .control_plane
        .token_kubeconfig(&token, &kubeconfig)
        .await?;
    let kubeconfig = kubeconfig.to_string_lossy().into_owned();

    // The chart's hooks, in the order it renders them.
    let hooks = [
        Hook {
            name: "vclusterfederatedtrustdomain.kb.io",
            path: "/validate-spire-spiffe-io-v1alpha1-clusterfederatedtrustdomain",
            resource: "clusterfederatedtrustdomains",
        },
        Hook {
            name: "vclusterspiffeid.kb.io",
            path: "/validate-spire-spiffe-io-v1alpha1-clusterspiffeid",
            resource: "clusterspiffeids",
        },
    ];
    webhook::apply_configuration(
        &world.client,
        CONFIGURATION,
        "identity",
        SERVICE,
        &hooks,
        "Fail",
    )
    .await?;
    let host = webhook::host_address()?.to_string();
    let operator = deploy_on(
        &world,
        "default.yaml",
        "controller-manager-config.yaml",
        &["--config=controller-manager-config.yaml"],
        &[
            ("ENABLE_WEBHOOKS", "true"),
            ("KUBECONFIG", &kubeconfig),
            ("POD_NAMESPACE", "identity"),
        ],
        &host,
    )
    .await?;
    let host = host.parse()?;
    webhook::route_service(
        &world.client,
        "identity",
        SERVICE,
        host,
        operator.webhook_port(),
    )
    .await?;

    let bundles = webhook::wait_ca_bundles(&world.client, CONFIGURATION)
        .await
        .with_context(|| operator.log_tail(30))?;
    assert_eq!(
        bundles.len(),
        2,
        "both of the chart's webhooks get the trust bundle"
    );

    // Admitted once the certificate is served, then a bad one is refused.
    e2e::wait::until(
        "the chart's ClusterSPIFFEID webhook admits a valid resource",
        std::time::Duration::from_secs(60),
        std::time::Duration::from_millis(250),
        || async {
            csid(
                &world,
                "chart-default",
                json!({"spire.spiffe.io/class-name": "identity-id"}),
                csid_spec("chart", Some("identity-id")),
            )
            .await
            .map(Some)
        },
    )
    .await
    .with_context(|| operator.log_tail(30))?;
    let mut bad = csid_spec("chart", Some("identity-id"));
    bad["dnsNameTemplates"] = json!(["{{ .PodMeta.Name "]);
    let err = csid(
        &world,
        "chart-bad",
        json!({"spire.spiffe.io/class-name": "identity-id"}),
        bad,
    )
    .await
    .expect_err("refused");
    let err = format!("{err:#}");
    assert!(
        err.contains("admission webhook \"vclusterspiffeid.kb.io\" denied the request: ClusterSPIFFEID \"chart-bad\": spec.dnsNameTemplates[0]"),
        "{err}"
    );
    Ok(())
}
