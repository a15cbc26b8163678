//! The control plane is the pinned, real kube-apiserver.

use e2e::ControlPlane;

#[tokio::test]
async fn apiserver_reports_the_pinned_version() -> anyhow::Result<()> {
    let cp = ControlPlane::start().await?;
    let version = cp.client().apiserver_version().await?;
    let pinned =
        e2e::tools::pinned("KUBERNETES_VERSION").expect("KUBERNETES_VERSION in versions.env");
    assert_eq!(version.git_version, pinned);
    assert_eq!(
        format!("v{}.{}", version.major, version.minor),
        pinned.rsplit_once('.').unwrap().0
    );
    Ok(())
}
