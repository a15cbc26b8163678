//! A binary of this workspace, packed as an image with its shared libraries
//! (`e2e::image`), runs in a pod on the real node.

use e2e::image::binary_image;
use e2e::tools::workspace_binary;
use e2e::{ControlPlane, ControlPlaneOptions, Node};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, LogParams};

use crate::{default_service_account, run_pod};

#[tokio::test]
async fn csi_driver_image_runs_in_a_pod() -> anyhow::Result<()> {
    let binary = workspace_binary("spiffe-csi-driver", "spiffe-csi-driver")?;
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        nodes: true,
        ..Default::default()
    })
    .await?;
    let mut node = Node::start(&cp).await?;
    let image = "spire-rs.test/spiffe-csi-driver:e2e";
    let archive = binary_image(&binary, image, &node.dir().join("spiffe-csi-driver.tar"))?;
    node.import_image(&archive)?;
    let client = cp.client();
    default_service_account(&client).await?;

    let name = node.name().to_owned();
    run_pod(
        &client,
        &mut node,
        "driver",
        Some(&name),
        image,
        &["--version"],
    )
    .await?;
    let log = Api::<Pod>::namespaced(client, "default")
        .logs("driver", &LogParams::default())
        .await?;
    assert_eq!(
        log.trim_end(),
        format!("spiffe-csi-driver {}", env!("CARGO_PKG_VERSION")),
        "log of default/driver"
    );
    Ok(())
}
