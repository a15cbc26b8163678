use std::path::PathBuf;
use std::sync::atomic::Ordering;

use tonic::Code;

use super::*;
use crate::csi::v1::volume_capability::{AccessMode, BlockVolume, MountVolume};
use crate::mount::fake::FakeMounter;

struct Fixture {
    _dir: tempfile::TempDir,
    root: PathBuf,
    agent_dir: PathBuf,
    config: NodeConfig,
    fake: Arc<FakeMounter>,
    node: NodeService<Arc<FakeMounter>>,
}

fn fixture(wait: Duration) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("pods");
    std::fs::create_dir_all(root.join("uid/volumes/kubernetes.io~csi/spiffe")).unwrap();
    let agent_dir = dir.path().join("agent");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let config = NodeConfig {
        node_id: "node-a".into(),
        agent_socket_dir: agent_dir.clone(),
        agent_socket_name: Some("spire-agent.sock".into()),
        pods_dir: PodsDir::configured(&root).unwrap(),
        agent_socket_wait: wait,
        host_mount: HostMount::ReadOnly,
    };
    let fake = Arc::new(FakeMounter::default());
    let node = NodeService::new(config.clone(), fake.clone());
    let root = root.canonicalize().unwrap();
    Fixture {
        _dir: dir,
        root,
        agent_dir,
        config,
        fake,
        node,
    }
}

/// A listening socket at `path`, like the agent's (a plain file is not a socket).
fn socket_at(path: &std::path::Path) -> std::os::unix::net::UnixListener {
    std::os::unix::net::UnixListener::bind(path).unwrap()
}

impl Fixture {
    fn target(&self) -> PathBuf {
        self.root.join("uid/volumes/kubernetes.io~csi/spiffe/mount")
    }

    fn request(&self) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: "csi-abc".into(),
            target_path: self.target().display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode {
                    mode: Mode::SingleNodeWriter.into(),
                }),
            }),
            readonly: true,
            volume_context: [
                ("csi.storage.k8s.io/ephemeral", "true"),
                ("csi.storage.k8s.io/pod.name", "web-0"),
                ("csi.storage.k8s.io/pod.namespace", "prod"),
            ]
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect(),
            ..Default::default()
        }
    }

    async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<(), Status> {
        self.node.publish(req).await.map_err(Status::from)
    }
}

type Edit = fn(&mut csi::NodePublishVolumeRequest);

#[tokio::test]
async fn each_invalid_publish_request_is_invalid_argument_naming_the_field() {
    let cases: &[(&str, Edit, &str)] = &[
        (
            "no volume id",
            |r| r.volume_id.clear(),
            "volume_id is required",
        ),
        (
            "no target",
            |r| r.target_path.clear(),
            "target_path is required",
        ),
        (
            "no capability",
            |r| r.volume_capability = None,
            "volume_capability is required",
        ),
        (
            "no access type",
            |r| r.volume_capability.as_mut().unwrap().access_type = None,
            "volume_capability.access_type is required",
        ),
        (
            "block",
            |r| {
                r.volume_capability.as_mut().unwrap().access_type =
                    Some(AccessType::Block(BlockVolume {}))
            },
            "volume_capability.block",
        ),
        (
            "fs type",
            |r| {
                r.volume_capability.as_mut().unwrap().access_type =
                    Some(AccessType::Mount(MountVolume {
                        fs_type: "ext4".into(),
                        ..Default::default()
                    }))
            },
            "volume_capability.mount.fs_type",
        ),
        (
            "mount flags",
            |r| {
                r.volume_capability.as_mut().unwrap().access_type =
                    Some(AccessType::Mount(MountVolume {
                        mount_flags: vec!["noatime".into()],
                        ..Default::default()
                    }))
            },
            "volume_capability.mount.mount_flags",
        ),
        (
            "no access mode",
            |r| r.volume_capability.as_mut().unwrap().access_mode = None,
            "volume_capability.access_mode is required",
        ),
        (
            "unknown access mode",
            |r| r.volume_capability.as_mut().unwrap().access_mode = Some(AccessMode { mode: 0 }),
            "volume_capability.access_mode.mode",
        ),
        (
            "out of range access mode",
            |r| r.volume_capability.as_mut().unwrap().access_mode = Some(AccessMode { mode: 99 }),
            "volume_capability.access_mode.mode",
        ),
        (
            "not readonly",
            |r| r.readonly = false,
            "readonly: must be true",
        ),
        (
            "not ephemeral",
            |r| {
                r.volume_context.remove("csi.storage.k8s.io/ephemeral");
            },
            "csi.storage.k8s.io/ephemeral",
        ),
        (
            "relative target",
            |r| r.target_path = "pods/x/mount".into(),
            "not absolute",
        ),
        (
            "dotdot target",
            |r| r.target_path.push_str("/../../../../../../../etc"),
            "not in normal form",
        ),
        (
            "not kubelet's shape",
            |r| r.target_path = "/tmp/mount".into(),
            "is not kubelet's path for an inline CSI volume",
        ),
        (
            "another plugin's volume dir",
            |r| {
                r.target_path = r
                    .target_path
                    .replace("kubernetes.io~csi", "kubernetes.io~secret")
            },
            "is not kubelet's path for an inline CSI volume",
        ),
        (
            "parent missing",
            |r| r.target_path = r.target_path.replace("/uid/", "/other-uid/"),
            "is not accessible: No such file or directory",
        ),
        (
            "pod uid differs from the context",
            |r| {
                r.volume_context
                    .insert("csi.storage.k8s.io/pod.uid".into(), "other-uid".into());
            },
            "belongs to pod uid uid, but volume_context[\"csi.storage.k8s.io/pod.uid\"] is other-uid",
        ),
    ];
    let f = fixture(Duration::ZERO);
    for (name, edit, want) in cases {
        let mut req = f.request();
        edit(&mut req);
        let status = f.publish(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{name}: {status:?}");
        assert!(
            status.message().contains(want),
            "{name}: {:?}",
            status.message()
        );
        assert_eq!(
            status.message().matches(*want).count(),
            1,
            "{name}: said more than once: {:?}",
            status.message()
        );
    }
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn validation_reports_the_first_failing_field_in_order() {
    let f = fixture(Duration::ZERO);
    let mut req = f.request();
    req.readonly = false;
    req.volume_capability = None;
    req.target_path.clear();
    let status = f.publish(req).await.unwrap_err();
    assert_eq!(status.message(), "target_path is required");
}

#[tokio::test]
async fn every_known_access_mode_is_accepted() {
    let f = fixture(Duration::ZERO);
    for mode in 1..=7 {
        let mut req = f.request();
        req.volume_capability.as_mut().unwrap().access_mode = Some(AccessMode { mode });
        f.publish(req).await.unwrap();
    }
}

#[tokio::test]
async fn repeated_publish_is_ok_without_a_second_mount() {
    let f = fixture(Duration::ZERO);
    for _ in 0..5 {
        f.publish(f.request()).await.unwrap();
    }
    assert_eq!(f.fake.count(&f.target()), 1);
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn another_volume_on_a_published_target_is_already_exists() {
    let f = fixture(Duration::ZERO);
    f.publish(f.request()).await.unwrap();
    let mut other = f.request();
    other.volume_id = "csi-other".into();
    let status = f.publish(other).await.unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
}

#[tokio::test]
async fn another_volume_on_a_published_target_is_already_exists_after_a_restart() {
    let f = fixture(Duration::ZERO);
    // kubelet's own handle for pod "uid", volume "spiffe".
    let mut kubelets = f.request();
    kubelets.volume_id = crate::target_path::KubeletTarget::parse(&kubelets.target_path)
        .unwrap()
        .kubelet_volume_id();
    f.publish(kubelets.clone()).await.unwrap();
    // A new process: nothing in memory, the mount is still there.
    let restarted = NodeService::new(f.config.clone(), f.fake.clone());
    let mut other = f.request();
    other.volume_id = "csi-other".into();
    let status = restarted
        .publish(other)
        .await
        .map_err(Status::from)
        .unwrap_err();
    assert_eq!(status.code(), Code::AlreadyExists, "{status:?}");
    assert!(status.message().contains(&kubelets.volume_id), "{status:?}");
    // kubelet's republish after the restart is still a no-op.
    restarted.publish(kubelets).await.unwrap();
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn any_pods_dir_in_kubelets_shape_is_accepted_without_a_configured_root() {
    let f = fixture(Duration::ZERO);
    let node = NodeService::new(
        NodeConfig {
            pods_dir: PodsDir::Any,
            ..f.config.clone()
        },
        FakeMounter::default(),
    );
    node.publish(f.request()).await.unwrap();
    let mut bad = f.request();
    bad.target_path = f
        .root
        .join("uid/volumes/kubernetes.io~csi/spiffe/data")
        .display()
        .to_string();
    let status = Status::from(node.publish(bad).await.unwrap_err());
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
}

#[tokio::test]
async fn stale_mount_is_replaced_on_republish() {
    let f = fixture(Duration::ZERO);
    f.publish(f.request()).await.unwrap();
    f.fake.mark_deleted(&f.target());
    f.publish(f.request()).await.unwrap();
    let mounts = f.fake.mounts_at(&f.target()).unwrap();
    assert_eq!(mounts.len(), 1);
    assert!(!mounts[0].is_deleted());
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn mount_failure_is_internal() {
    let f = fixture(Duration::ZERO);
    f.fake.fail_bind.store(true, Ordering::Relaxed);
    let status = f.publish(f.request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{status:?}");
    assert!(status.message().contains("bind-mounting"), "{status:?}");
}

#[tokio::test]
async fn missing_agent_socket_after_the_wait_is_unavailable() {
    let f = fixture(Duration::from_millis(200));
    let status = f.publish(f.request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    std::fs::write(f.agent_dir.join("spire-agent.sock"), "").unwrap();
    let status = f.publish(f.request()).await.unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "a plain file: {status:?}");
    std::fs::remove_file(f.agent_dir.join("spire-agent.sock")).unwrap();
    let _agent = socket_at(&f.agent_dir.join("spire-agent.sock"));
    f.publish(f.request()).await.unwrap();
}

#[tokio::test]
async fn republishing_a_live_mount_does_not_wait_for_the_agent() {
    let f = fixture(Duration::from_millis(300));
    let agent = socket_at(&f.agent_dir.join("spire-agent.sock"));
    f.publish(f.request()).await.unwrap();
    // The agent restarts: its socket is gone for a moment. kubelet's periodic republish
    // of a live mount must neither wait nor fail (it would put an event on the pod).
    drop(agent);
    std::fs::remove_file(f.agent_dir.join("spire-agent.sock")).unwrap();
    let start = std::time::Instant::now();
    f.publish(f.request()).await.unwrap();
    assert!(
        start.elapsed() < Duration::from_millis(200),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn concurrent_publish_of_one_volume_is_aborted() {
    let f = fixture(Duration::from_millis(500));
    let (first, second) = tokio::join!(f.publish(f.request()), async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        f.publish(f.request()).await
    });
    assert_eq!(first.unwrap_err().code(), Code::Unavailable);
    assert_eq!(second.unwrap_err().code(), Code::Aborted);
    // The guard is released afterwards.
    assert_eq!(
        f.publish(f.request()).await.unwrap_err().code(),
        Code::Unavailable
    );
}

fn unpublish_req(volume_id: &str, target: &str) -> csi::NodeUnpublishVolumeRequest {
    csi::NodeUnpublishVolumeRequest {
        volume_id: volume_id.into(),
        target_path: target.into(),
    }
}

#[tokio::test]
async fn unpublish_unmounts_and_removes_the_target_and_is_idempotent() {
    let f = fixture(Duration::ZERO);
    f.publish(f.request()).await.unwrap();
    let target = f.target().display().to_string();
    for _ in 0..2 {
        f.node.unpublish(unpublish_req("csi-abc", &target)).unwrap();
        assert_eq!(f.fake.count(&f.target()), 0);
        assert!(!f.target().exists());
    }
    // Whole pod dir gone (reboot): still OK.
    let gone = f.root.join("other-uid/volumes/kubernetes.io~csi/x/mount");
    f.node
        .unpublish(unpublish_req("csi-x", &gone.display().to_string()))
        .unwrap();
}

#[test]
fn unpublish_refuses_another_pods_secret_volume_and_leaves_it_alone() {
    let f = fixture(Duration::ZERO);
    let secret = f.root.join("uid2/volumes/kubernetes.io~secret/token");
    std::fs::create_dir_all(&secret).unwrap();
    let status = Status::from(
        f.node
            .unpublish(unpublish_req("csi-abc", &secret.display().to_string()))
            .unwrap_err(),
    );
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");
    assert!(secret.is_dir(), "another volume's directory was removed");
}

#[test]
fn invalid_unpublish_requests_are_invalid_argument() {
    let f = fixture(Duration::ZERO);
    let target = f.target().display().to_string();
    for (req, want) in [
        (unpublish_req("", &target), "volume_id is required"),
        (unpublish_req("v", ""), "target_path is required"),
        (unpublish_req("v", "/etc/passwd"), "kubelet's path"),
        (unpublish_req("v", "relative"), "not absolute"),
    ] {
        let status = Status::from(f.node.unpublish(req).unwrap_err());
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().contains(want), "{:?}", status.message());
    }
}

fn stats_req(volume_id: &str, path: &str) -> csi::NodeGetVolumeStatsRequest {
    csi::NodeGetVolumeStatsRequest {
        volume_id: volume_id.into(),
        volume_path: path.into(),
        ..Default::default()
    }
}

#[tokio::test]
async fn volume_stats_codes_and_conditions() {
    let f = fixture(Duration::ZERO);
    let target = f.target().display().to_string();
    for (req, code) in [
        (stats_req("", &target), Code::InvalidArgument),
        (stats_req("v", ""), Code::InvalidArgument),
        (stats_req("v", "some/path"), Code::NotFound),
        (stats_req("v", &target), Code::NotFound),
    ] {
        assert_eq!(Status::from(f.node.stats(req).unwrap_err()).code(), code);
    }
    let condition = |f: &Fixture| {
        f.node
            .stats(stats_req("csi-abc", &target))
            .unwrap()
            .volume_condition
            .unwrap()
    };
    std::fs::create_dir(f.target()).unwrap();
    let c = condition(&f);
    assert!(
        c.abnormal && c.message.contains("not a mount point"),
        "{c:?}"
    );
    f.publish(f.request()).await.unwrap();
    // The fake mount does not show the agent dir's contents, so give the target a socket.
    let _socket = socket_at(&f.target().join("spire-agent.sock"));
    let c = condition(&f);
    assert!(!c.abnormal, "{c:?}");
    f.fake.mark_deleted(&f.target());
    let c = condition(&f);
    assert!(c.abnormal && c.message.contains("deleted"), "{c:?}");
}

#[tokio::test]
async fn capabilities_and_info() {
    use crate::csi::v1::node_server::Node;
    let f = fixture(Duration::ZERO);
    let caps = f
        .node
        .node_get_capabilities(Request::new(csi::NodeGetCapabilitiesRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 2);
    let info = f
        .node
        .node_get_info(Request::new(csi::NodeGetInfoRequest {}))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.node_id, "node-a");
    let stage = f
        .node
        .node_stage_volume(Request::new(csi::NodeStageVolumeRequest::default()))
        .await
        .unwrap_err();
    assert_eq!(stage.code(), Code::Unimplemented);
}

/// Keys kubelet did not define (`volumeAttributes` a pod author wrote) are ignored, as the
/// Go driver ignores them: the driver reads none of them, so refusing would only break
/// pods that work with it. A look-alike of a key the driver does read never stands in
/// for it: the publish is refused and nothing is mounted.
#[tokio::test]
async fn unknown_volume_context_keys_are_ignored_and_look_alikes_do_not_count() {
    let f = fixture(Duration::ZERO);
    let mut req = f.request();
    req.volume_context.remove("csi.storage.k8s.io/ephemeral");
    for key in [
        "csi.storage.k8s.io/Ephemeral",
        "csi.storage.k8s.io/ephemeral ",
        "csi.storage.k8s.io/ephemeral\0",
    ] {
        req.volume_context.insert(key.into(), "true".into());
    }
    let status = f.publish(req).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status
            .message()
            .contains("volume_context[\"csi.storage.k8s.io/ephemeral\"]: must be \"true\""),
        "{}",
        status.message()
    );
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 0);

    let mut req = f.request();
    req.volume_context
        .insert("someAttribute\nwith-newline".into(), "x\0y".into());
    f.publish(req).await.unwrap();
    assert_eq!(f.fake.binds.load(Ordering::Relaxed), 1);
}

/// A target path (or any string field) that is not UTF-8 never reaches validation:
/// the request does not decode, which tonic answers with an error status.
#[test]
fn a_request_with_a_non_utf8_target_path_does_not_decode() {
    use prost::Message;
    let f = fixture(Duration::ZERO);
    let mut bytes = f.request().encode_to_vec();
    // Field 4 (target_path), wire type 2, one byte that is not UTF-8; a later field
    // replaces the earlier value.
    bytes.extend_from_slice(&[4 << 3 | 2, 1, 0xff]);
    let err = csi::NodePublishVolumeRequest::decode(bytes.as_slice()).unwrap_err();
    assert!(err.to_string().contains("UTF-8"), "{err}");
}
