//! The kubelet's secure port authenticates ServiceAccount tokens and authorizes them
//! with the apiserver, as SPIRE's k8s workload attestor needs.

use std::time::Duration;

use e2e::kube_util::service_account_token;
use e2e::{ControlPlane, ControlPlaneOptions, Node, wait};
use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
use kube::api::{Api, PostParams};

#[tokio::test]
async fn kubelet_api_takes_service_account_tokens_authorized_by_rbac() -> anyhow::Result<()> {
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        ..Default::default()
    })
    .await?;
    let node = Node::start(&cp).await?;
    let client = cp.client();

    let accounts = Api::<ServiceAccount>::namespaced(client.clone(), "default");
    for name in ["reader", "outsider"] {
        let sa: ServiceAccount = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
        }))?;
        accounts.create(&PostParams::default(), &sa).await?;
    }
    // What the SPIRE agent's chart grants for the kubelet's /pods.
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubelet-reader"},
        "rules": [{"apiGroups": [""], "resources": ["nodes/proxy"], "verbs": ["get"]}],
    }))?;
    Api::<ClusterRole>::all(client.clone())
        .create(&PostParams::default(), &role)
        .await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kubelet-reader"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kubelet-reader"},
        "subjects": [{"kind": "ServiceAccount", "name": "reader", "namespace": "default"}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone())
        .create(&PostParams::default(), &binding)
        .await?;

    let reader = node
        .kubelet_client(&service_account_token(&client, "default", "reader").await?)
        .await?;
    // RBAC changes reach the authorizer's cache within moments; the kubelet caches
    // decisions too, so poll instead of asserting the first answer.
    let pods = wait::until(
        "kubelet /pods with the reader's token",
        Duration::from_secs(30),
        Duration::from_millis(500),
        || {
            let reader = reader.clone();
            async move {
                let request = http::Request::get("/pods").body(Vec::new())?;
                Ok(Some(reader.request_text(request).await?))
            }
        },
    )
    .await?;
    let pods: serde_json::Value = serde_json::from_str(&pods)?;
    assert_eq!(pods["kind"], "PodList", "kubelet /pods answered {pods}");

    let outsider = node
        .kubelet_client(&service_account_token(&client, "default", "outsider").await?)
        .await?;
    let request = http::Request::get("/pods").body(Vec::new())?;
    let denied = outsider.request_text(request).await;
    assert!(
        matches!(&denied, Err(kube::Error::Api(s)) if s.code == 403),
        "kubelet /pods without RBAC: {denied:?}"
    );

    let stranger = node.kubelet_client("not-a-token").await?;
    let request = http::Request::get("/pods").body(Vec::new())?;
    let refused = stranger.request_text(request).await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 401),
        "kubelet /pods with a bogus token: {refused:?}"
    );
    Ok(())
}
