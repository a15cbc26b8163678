//! With kube-controller-manager, namespaces behave as on a real cluster: they get a
//! `default` ServiceAccount, and deleting one removes it and its contents.

use std::time::Duration;

use e2e::{ControlPlane, ControlPlaneOptions, wait};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, ServiceAccount};
use kube::api::{Api, DeleteParams, PostParams};

#[tokio::test]
async fn namespaces_get_service_accounts_and_can_be_deleted() -> anyhow::Result<()> {
    let mut cp = ControlPlane::start_with(ControlPlaneOptions {
        controller_manager: true,
        ..Default::default()
    })
    .await?;
    let client = cp.client();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let mut ns = Namespace::default();
    ns.metadata.name = Some("team-a".into());
    namespaces.create(&PostParams::default(), &ns).await?;

    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "team-a");
    wait::until(
        "default ServiceAccount in team-a",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let accounts = accounts.clone();
            async move { Ok(accounts.get_opt("default").await?.map(|_| ())) }
        },
    )
    .await?;

    let config_maps: Api<ConfigMap> = Api::namespaced(client, "team-a");
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some("settings".into());
    config_maps.create(&PostParams::default(), &cm).await?;

    namespaces
        .delete("team-a", &DeleteParams::default())
        .await?;
    wait::until(
        "namespace team-a removed",
        Duration::from_secs(60),
        Duration::from_millis(200),
        || {
            let namespaces = namespaces.clone();
            async move { Ok(namespaces.get_opt("team-a").await?.is_none().then_some(())) }
        },
    )
    .await?;
    cp.ensure_running()?;
    Ok(())
}
