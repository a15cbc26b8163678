//! Repair that really happens: the driver runs in its own mount namespace laid out like
//! a DaemonSet (the node's agent directory, the driver's hostPath mount of it, the pods
//! directory with Bidirectional propagation). The agent directory is deleted and
//! re-created on the node with a new socket (the real spire-agent restarted into it);
//! kubelet republishes (the chart's CSIDriver sets `requiresRepublish`), and a workload
//! started afterwards fetches its SVIDs again.
//!
//! Under our chart's layout (the agent directory's parent mounted, HostToContainer) the
//! driver sees the new directory and the republish repairs the mount. Under the Go
//! driver's layout (the directory itself mounted) the driver's own view is dead too, so
//! no republish can repair it: the driver says so (FailedPrecondition) instead of binding
//! the dead directory again. That half documents why our chart mounts the parent.

use std::path::{Path, PathBuf};

use e2e::csi::{Driver, PodVolume, our_driver};
use e2e::daemonset::Node;
use e2e::{Spire, WorkDir};
use spiffe_csi_driver::csi::v1 as csi;
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};
use tonic::Code;

use crate::daemonsets::{hardened, ours};
use crate::spire_agent::{assert_svids, fetch_svids};

const UID: &str = "5a6b7c8d-9e0f-4a1b-8c2d-3e4f5a6b7c8d";

const POD: PodVolume<'static> = PodVolume {
    pod: "web-0",
    namespace: "default",
    uid: UID,
    service_account: "web",
    volume: "spiffe",
};

/// One node with one driver and one published pod volume.
struct Published {
    _work: WorkDir,
    driver: Driver,
    target: PathBuf,
    /// A short path to the target on the node, for the workload's socket path.
    short: PathBuf,
}

async fn publish_on_node(
    shape: e2e::daemonset::ContainerShape,
    spire_dir: &Path,
) -> anyhow::Result<Published> {
    let work = WorkDir::new(shape.name)?;
    let node = Node::new(work.path())?;
    // The node's /run/spire is the directory the real agent works in.
    std::fs::create_dir_all(node.path("/run"))?;
    std::os::unix::fs::symlink(spire_dir, node.path("/run/spire"))?;
    for m in &shape.mounts {
        std::fs::create_dir_all(node.path(&m.host))?;
    }
    let driver = node
        .start(
            &shape,
            &our_driver()?,
            "/spiffe-csi/csi.sock",
            &work.join("driver.log"),
        )
        .await?;
    let target = PathBuf::from(format!(
        "/var/lib/kubelet/pods/{UID}/volumes/kubernetes.io~csi/spiffe/mount"
    ));
    std::fs::create_dir_all(node.path(&target.display().to_string()).join(".."))?;
    let mut client = csi::node_client::NodeClient::new(driver.channel().await?);
    client
        .node_publish_volume(POD.publish_request(&target))
        .await?;
    let short = work.join("s");
    std::os::unix::fs::symlink(node.path(&target.display().to_string()), &short)?;
    Ok(Published {
        _work: work,
        driver,
        target,
        short,
    })
}

impl Published {
    async fn republish(&self) -> Result<(), tonic::Status> {
        let channel = self
            .driver
            .channel()
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        csi::node_client::NodeClient::new(channel)
            .node_publish_volume(POD.publish_request(&self.target))
            .await
            .map(drop)
    }
}

#[tokio::test]
async fn recreated_agent_dir_is_repaired_by_republish_under_our_charts_layout() -> anyhow::Result<()>
{
    let mut spire = Spire::start("csi.test").await?;
    let id: SpiffeId = "spiffe://csi.test/ns/default/sa/web".parse()?;
    let created = spire
        .client()
        .batch_create_entries(vec![Entry {
            spiffe_id: Some(id.to_api()),
            parent_id: Some(spire.agent_id().to_api()),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: format!("uid:{}", rustix::process::getuid().as_raw()),
            }],
            ..Default::default()
        }])
        .await?;
    assert_eq!(
        created[0].status.as_ref().map(|s| s.code),
        Some(0),
        "{created:?}"
    );
    let agent_dir = spire
        .workload_socket()
        .parent()
        .ok_or_else(|| anyhow::anyhow!("agent socket has no dir"))?
        .to_owned();
    assert_eq!(
        agent_dir.file_name().and_then(|n| n.to_str()),
        Some("agent-sockets"),
        "the layouts below expect <spire dir>/agent-sockets"
    );
    let spire_dir = agent_dir.parent().unwrap_or(Path::new("/")).to_owned();

    let ours = publish_on_node(ours("repair-ours"), &spire_dir).await?;
    let go_layout = publish_on_node(
        hardened(
            "repair-hardened",
            "csi.spiffe.io",
            "/run/spire/agent-sockets",
            "/var/lib/kubelet",
        ),
        &spire_dir,
    )
    .await?;
    for p in [&ours, &go_layout] {
        assert_svids(
            &fetch_svids(p.driver.process.id(), &p.short, 60).await?,
            &id,
        );
    }

    // The agent directory is deleted and re-created on the node; the agent comes back
    // with a new socket in the new directory.
    std::fs::remove_dir_all(&agent_dir)?;
    std::fs::create_dir_all(&agent_dir)?;
    spire.restart_agent().await?;
    for p in [&ours, &go_layout] {
        assert!(
            fetch_svids(p.driver.process.id(), &p.short, 2)
                .await
                .is_err(),
            "the dead mount still reached the agent"
        );
    }

    // kubelet's periodic republish.
    ours.republish().await?;
    assert_svids(
        &fetch_svids(ours.driver.process.id(), &ours.short, 60).await?,
        &id,
    );
    let refused = go_layout
        .republish()
        .await
        .expect_err("republish under the Go layout claimed success");
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused.message().contains("mount the directory's parent"),
        "{refused:?}"
    );
    println!(
        "Go driver's layout after re-creation: {}",
        refused.message()
    );
    Ok(())
}
