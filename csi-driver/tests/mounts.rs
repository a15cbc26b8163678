//! Real mounts, each test on a thread with its own private mount namespace (needs root).
//!
//! The node service is driven directly (no gRPC) on that thread, because a mount
//! namespace set up with `unshare` belongs to the calling thread only.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rustix::mount::{MountPropagationFlags, UnmountFlags, mount_bind, mount_change, unmount};
use rustix::thread::{UnshareFlags, unshare_unsafe};
use spiffe_csi_driver::csi::v1 as csi;
use spiffe_csi_driver::csi::v1::volume_capability::{AccessMode, AccessType, MountVolume};
use spiffe_csi_driver::mount::LinuxMounter;
use spiffe_csi_driver::mountinfo::{self, MountEntry};
use spiffe_csi_driver::node::{NodeConfig, NodeService};
use spiffe_csi_driver::target_path::KubeletRoot;

/// Runs `body` on a fresh thread in a private mount namespace whose mounts do not
/// propagate back to the host (`/` made rslave).
fn in_private_mount_namespace(body: impl FnOnce(&Path) + Send + 'static) {
    let handle = std::thread::spawn(move || {
        // SAFETY: NEWNS only; no file descriptor table is unshared.
        unsafe { unshare_unsafe(UnshareFlags::NEWNS) }.expect("unshare(CLONE_NEWNS): run as root");
        mount_change(
            "/",
            MountPropagationFlags::DOWNSTREAM | MountPropagationFlags::REC,
        )
        .expect("make / rslave");
        let dir = tempfile::tempdir().unwrap();
        body(dir.path());
        // The namespace and its mounts die with this thread; leave the dir to TempDir
        // only once nothing is mounted in it.
        let _ = std::fs::remove_dir_all(dir.path());
    });
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}

fn mounts_at(path: &Path) -> Vec<MountEntry> {
    let text = std::fs::read_to_string(mountinfo::THREAD_MOUNTINFO).unwrap();
    mountinfo::mounts_at(&mountinfo::parse(&text), path)
}

struct Setup {
    agent_dir: PathBuf,
    target: PathBuf,
    node: NodeService<LinuxMounter>,
    runtime: tokio::runtime::Runtime,
}

/// Agent dir with a fake socket file, kubelet root `<dir>/<pods_under>`, a pod volume dir.
fn setup(dir: &Path, pods: &Path) -> Setup {
    let agent_dir = dir.join("agent-sockets");
    std::fs::create_dir_all(&agent_dir).unwrap();
    std::fs::write(agent_dir.join("spire-agent.sock"), "").unwrap();
    let volume_dir = pods.join("pod-uid/volumes/kubernetes.io~csi/spiffe");
    std::fs::create_dir_all(&volume_dir).unwrap();
    let mounter = LinuxMounter::new(dir.join("staging")).unwrap();
    let node = NodeService::new(
        NodeConfig {
            node_id: "node-a".into(),
            agent_socket_dir: agent_dir.clone(),
            agent_socket_name: "spire-agent.sock".into(),
            kubelet_root: KubeletRoot::new(pods).unwrap(),
            agent_socket_wait: Duration::ZERO,
        },
        mounter,
    );
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    Setup {
        agent_dir,
        target: volume_dir.canonicalize().unwrap().join("mount"),
        node,
        runtime,
    }
}

impl Setup {
    fn publish(&self) {
        let req = csi::NodePublishVolumeRequest {
            volume_id: "csi-0123".into(),
            target_path: self.target.display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode { mode: 1 }),
            }),
            readonly: true,
            volume_context: [("csi.storage.k8s.io/ephemeral".into(), "true".into())].into(),
            ..Default::default()
        };
        self.runtime.block_on(self.node.publish(req)).unwrap();
    }

    fn unpublish(&self) {
        let req = csi::NodeUnpublishVolumeRequest {
            volume_id: "csi-0123".into(),
            target_path: self.target.display().to_string(),
        };
        self.node.unpublish(req).unwrap();
    }

    fn condition(&self) -> csi::VolumeCondition {
        let req = csi::NodeGetVolumeStatsRequest {
            volume_id: "csi-0123".into(),
            volume_path: self.target.display().to_string(),
            ..Default::default()
        };
        self.node.stats(req).unwrap().volume_condition.unwrap()
    }
}

fn assert_read_only(dir: &Path) {
    let err = std::fs::write(dir.join("intruder"), "x").unwrap_err();
    assert_eq!(
        err.raw_os_error(),
        Some(rustix::io::Errno::ROFS.raw_os_error()),
        "writing into {dir:?}: {err}"
    );
}

#[test]
fn published_target_is_read_only_on_the_node_and_shows_the_agent_socket() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        s.publish();
        assert!(s.target.join("spire-agent.sock").exists());
        assert_read_only(&s.target);
        let mounts = mounts_at(&s.target);
        assert_eq!(mounts.len(), 1);
        assert!(mounts[0].read_only, "{mounts:?}");
        // The agent keeps writing its own directory.
        std::fs::write(s.agent_dir.join("new"), "x").unwrap();
        assert!(s.target.join("new").exists());
        // No staging mount is left behind.
        let text = std::fs::read_to_string(mountinfo::THREAD_MOUNTINFO).unwrap();
        let staged = mountinfo::parse(&text)
            .into_iter()
            .filter(|m| {
                m.mount_point.starts_with(s.node_staging(dir))
                    && m.mount_point != s.node_staging(dir)
            })
            .count();
        assert_eq!(staged, 0);
        let condition = s.condition();
        assert!(
            !condition.abnormal,
            "live mount reported abnormal: {condition:?}"
        );
    });
}

impl Setup {
    fn node_staging(&self, dir: &Path) -> PathBuf {
        dir.join("staging").canonicalize().unwrap()
    }
}

#[test]
fn repeated_publish_keeps_exactly_one_mount() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        for _ in 0..10 {
            s.publish();
        }
        assert_eq!(mounts_at(&s.target).len(), 1);
    });
}

#[test]
fn target_under_a_shared_mount_is_read_only_here_and_in_the_peer() {
    in_private_mount_namespace(|dir| {
        // kubelet's pods dir as a shared mount with a peer (like Bidirectional
        // propagation between the driver container and the host).
        let pods = dir.join("pods");
        let peer = dir.join("peer");
        std::fs::create_dir_all(&pods).unwrap();
        std::fs::create_dir_all(&peer).unwrap();
        mount_bind(&pods, &pods).unwrap();
        mount_change(&pods, MountPropagationFlags::SHARED).unwrap();
        mount_bind(&pods, &peer).unwrap();
        let s = setup(dir, &pods);
        s.publish();
        assert_read_only(&s.target);
        let peer_target = peer.join("pod-uid/volumes/kubernetes.io~csi/spiffe/mount");
        assert!(
            peer_target.join("spire-agent.sock").exists(),
            "mount did not propagate to the peer"
        );
        let peer_mounts = mounts_at(&peer_target.canonicalize().unwrap());
        assert_eq!(peer_mounts.len(), 1, "{peer_mounts:?}");
        assert!(
            peer_mounts[0].read_only,
            "peer copy is writable: {peer_mounts:?}"
        );
        assert_read_only(&peer_target);
        // Unpublish propagates too.
        s.unpublish();
        assert!(mounts_at(&peer_target).is_empty());
    });
}

/// The control for the test above: the textbook bind + `MS_REMOUNT|MS_BIND|MS_RDONLY`
/// leaves the peer's copy writable, which is why the driver stages a read-only bind.
#[test]
fn plain_bind_then_remount_leaves_the_peer_writable() {
    in_private_mount_namespace(|dir| {
        let (pods, peer, source) = (dir.join("pods"), dir.join("peer"), dir.join("source"));
        for d in [&pods, &peer, &source] {
            std::fs::create_dir_all(d).unwrap();
        }
        mount_bind(&pods, &pods).unwrap();
        mount_change(&pods, MountPropagationFlags::SHARED).unwrap();
        mount_bind(&pods, &peer).unwrap();
        let target = pods.join("t");
        std::fs::create_dir(&target).unwrap();
        mount_bind(&source, &target).unwrap();
        rustix::mount::mount_remount(
            &target,
            rustix::mount::MountFlags::BIND | rustix::mount::MountFlags::RDONLY,
            "",
        )
        .unwrap();
        assert_read_only(&target);
        std::fs::write(peer.join("t/written-through-peer"), "x").unwrap();
        assert!(source.join("written-through-peer").exists());
    });
}

#[test]
fn stale_mount_after_agent_dir_recreated_is_reported_and_repaired() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        s.publish();
        std::fs::remove_dir_all(&s.agent_dir).unwrap();
        std::fs::create_dir_all(&s.agent_dir).unwrap();
        std::fs::write(s.agent_dir.join("spire-agent.sock"), "").unwrap();
        let mounts = mounts_at(&s.target);
        assert!(mounts[0].is_deleted(), "{mounts:?}");
        assert!(!s.target.join("spire-agent.sock").exists());
        let condition = s.condition();
        assert!(condition.abnormal, "{condition:?}");
        s.publish();
        let mounts = mounts_at(&s.target);
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert!(!mounts[0].is_deleted());
        assert!(s.target.join("spire-agent.sock").exists());
        assert!(!s.condition().abnormal);
        assert_read_only(&s.target);
    });
}

#[test]
fn unpublish_after_the_mount_vanished_succeeds_and_removes_the_target() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        s.publish();
        unmount(&s.target, UnmountFlags::empty()).unwrap();
        s.unpublish();
        assert_eq!(
            std::fs::metadata(&s.target).unwrap_err().kind(),
            ErrorKind::NotFound
        );
        // Nothing there at all: still OK.
        s.unpublish();
    });
}

#[test]
fn unpublish_removes_stacked_mounts() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        s.publish();
        // What spiffe-csi < 0.2.12 left behind after kubelet restarts.
        mount_bind(&s.agent_dir, &s.target).unwrap();
        mount_bind(&s.agent_dir, &s.target).unwrap();
        assert_eq!(mounts_at(&s.target).len(), 3);
        s.unpublish();
        assert!(mounts_at(&s.target).is_empty());
        assert!(!s.target.exists());
    });
}

#[test]
fn publish_unpublish_latency() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        let (mut publish, mut unpublish) = (Vec::new(), Vec::new());
        for _ in 0..100 {
            let t = Instant::now();
            s.publish();
            publish.push(t.elapsed());
            let t = Instant::now();
            s.unpublish();
            unpublish.push(t.elapsed());
        }
        publish.sort();
        unpublish.sort();
        println!(
            "publish p50 {:?} p95 {:?}; unpublish p50 {:?} p95 {:?} (100 cycles, real mounts)",
            publish[50], publish[95], unpublish[50], unpublish[95]
        );
        assert!(mounts_at(&s.target).is_empty());
    });
}
