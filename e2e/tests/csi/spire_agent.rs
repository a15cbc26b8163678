//! The driver serves a real spire-agent's Workload API into a pod volume, published the
//! way kubelet publishes an inline CSI volume, and keeps serving it across agent
//! restarts; a recreated agent directory is reported abnormal and repaired by republish.

use std::path::{Path, PathBuf};
use std::process::Command;

use e2e::{Spire, WorkDir};
use spiffe_csi_driver::csi::v1 as csi;
use spiffe_csi_driver::csi::v1::node_client::NodeClient;
use spire_operator::spire::SpiffeId;
use spire_operator::spire::api::types::{Entry, Selector};
use tonic::transport::Channel;

use e2e::csi::{Driver, PodVolume, kubelet_volume_id, our_driver};

const POD_UID: &str = "6f3c2a9e-1b7d-4e55-9a0c-2d8f4b1e7c31";
const VOLUME: &str = "spiffe-workload-api";

/// The "pod" whose volume the scenario publishes.
const POD: PodVolume<'static> = PodVolume {
    pod: "web-0",
    namespace: "default",
    uid: POD_UID,
    service_account: "web",
    volume: VOLUME,
};

/// Runs the workload in the driver's mount namespace (where the bind mount lives, as a
/// pod's container would see it) and returns its JSON report.
///
/// `endpoint_dir` is a short symlink to the target: the full kubelet target path plus
/// the socket name exceeds the 108-byte `sun_path`, just as a pod reaches the same mount
/// through a short container path.
pub(crate) async fn fetch_svids(
    driver_pid: u32,
    endpoint_dir: &Path,
    timeout_secs: u32,
) -> anyhow::Result<serde_json::Value> {
    let endpoint = format!("unix://{}/spire-agent.sock", endpoint_dir.display());
    let mut cmd = Command::new("nsenter");
    cmd.arg(format!("--mount=/proc/{driver_pid}/ns/mnt"))
        .arg(env!("CARGO_BIN_EXE_workload"))
        .args(["--jwt-audience", "csi-e2e", "--timeout-secs"])
        .arg(timeout_secs.to_string())
        .env("SPIFFE_ENDPOINT_SOCKET", endpoint);
    let output = tokio::task::spawn_blocking(move || cmd.output()).await??;
    anyhow::ensure!(
        output.status.success(),
        "workload failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

pub(crate) fn assert_svids(got: &serde_json::Value, id: &SpiffeId) {
    assert_eq!(got["x509_svid"]["spiffe_id"], id.to_string(), "{got}");
    assert!(
        got["x509_svid"]["chain_length"].as_u64() >= Some(1),
        "{got}"
    );
    assert_eq!(got["jwt_svid"]["spiffe_id"], id.to_string(), "{got}");
}

async fn condition(
    node: &mut NodeClient<Channel>,
    target: &Path,
) -> anyhow::Result<csi::VolumeCondition> {
    let stats = node
        .node_get_volume_stats(csi::NodeGetVolumeStatsRequest {
            volume_id: kubelet_volume_id(POD_UID, VOLUME),
            volume_path: target.display().to_string(),
            ..Default::default()
        })
        .await?
        .into_inner();
    stats
        .volume_condition
        .ok_or_else(|| anyhow::anyhow!("no volume condition"))
}

#[tokio::test]
async fn pod_volume_serves_svids_across_agent_restart_and_dir_recreation() -> anyhow::Result<()> {
    let mut spire = Spire::start("csi.test").await?;
    let uid = rustix::process::getuid().as_raw();
    let id: SpiffeId = "spiffe://csi.test/ns/default/sa/web".parse()?;
    let created = spire
        .client()
        .batch_create_entries(vec![Entry {
            spiffe_id: Some(id.to_api()),
            parent_id: Some(spire.agent_id().to_api()),
            selectors: vec![Selector {
                r#type: "unix".into(),
                value: format!("uid:{uid}"),
            }],
            ..Default::default()
        }])
        .await?;
    assert_eq!(
        created[0].status.as_ref().map(|s| s.code),
        Some(0),
        "{created:?}"
    );

    let agent_dir: PathBuf = spire
        .workload_socket()
        .parent()
        .ok_or_else(|| anyhow::anyhow!("agent socket has no dir"))?
        .to_owned();
    let work = WorkDir::new("csi")?;
    let pods = work.join("pods");
    // kubelet creates the volume's parent dir (0750) before calling the plugin.
    let volume_dir = pods.join(format!("{POD_UID}/volumes/kubernetes.io~csi/{VOLUME}"));
    std::fs::create_dir_all(&volume_dir)?;
    let target = volume_dir.join("mount");
    let short = work.join("s");
    std::os::unix::fs::symlink(&target, &short)?;

    let socket = work.join("csi/csi.sock");
    let args = vec![
        format!("--csi-socket-path={}", socket.display()),
        format!("--workload-api-socket-dir={}", agent_dir.display()),
        format!("--kubelet-pods-dir={}", pods.display()),
        "--agent-socket-wait=30s".to_owned(),
    ];
    let driver = Driver::start(
        "spiffe-csi-driver",
        &our_driver()?,
        &args,
        &socket,
        &work.join("driver.log"),
    )
    .await?;
    let pid = driver.process.id();
    let mut node = NodeClient::new(driver.channel().await?);

    node.node_publish_volume(POD.publish_request(&target))
        .await?;
    assert_svids(&fetch_svids(pid, &short, 60).await?, &id);
    assert!(!condition(&mut node, &target).await?.abnormal);

    // Agent restart: the socket is recreated inside the same directory, which is what
    // the pod has mounted, so the same mount keeps working.
    spire.restart_agent().await?;
    assert_svids(&fetch_svids(pid, &short, 60).await?, &id);

    // The agent directory itself is deleted and recreated (e.g. hostPath wiped): the
    // mount now shows the dead directory.
    std::fs::remove_dir_all(&agent_dir)?;
    std::fs::create_dir_all(&agent_dir)?;
    spire.restart_agent().await?;
    let c = condition(&mut node, &target).await?;
    assert!(c.abnormal, "dead mount reported healthy: {c:?}");
    println!("condition after agent dir recreation: {}", c.message);
    assert!(
        fetch_svids(pid, &short, 2).await.is_err(),
        "the dead mount still reached the agent"
    );

    // kubelet republishes (it does so periodically); the mount is replaced.
    node.node_publish_volume(POD.publish_request(&target))
        .await?;
    let c = condition(&mut node, &target).await?;
    assert!(!c.abnormal, "{c:?}");
    assert_svids(&fetch_svids(pid, &short, 60).await?, &id);

    node.node_unpublish_volume(POD.unpublish_request(&target))
        .await?;
    assert!(!target.exists(), "target left behind");
    Ok(())
}
