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
use std::os::unix::net::UnixListener;

use spiffe_csi_driver::mount::{HostMount, LinuxMounter};
use spiffe_csi_driver::mountinfo::{self, MountEntry};
use spiffe_csi_driver::node::{NodeConfig, NodeService};
use spiffe_csi_driver::target_path::PodsDir;

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
    config: NodeConfig,
    node: NodeService<LinuxMounter>,
    runtime: tokio::runtime::Runtime,
    _agent: UnixListener,
}

/// A listening socket, like the agent's.
fn agent_socket(agent_dir: &Path) -> UnixListener {
    UnixListener::bind(agent_dir.join("spire-agent.sock")).unwrap()
}

/// Agent dir with a listening socket, kubelet pods dir `pods`, a pod volume dir.
fn setup(dir: &Path, pods: &Path) -> Setup {
    setup_with(dir, pods, HostMount::ReadOnly)
}

fn setup_with(dir: &Path, pods: &Path, host_mount: HostMount) -> Setup {
    let agent_dir = dir.join("agent-sockets");
    std::fs::create_dir_all(&agent_dir).unwrap();
    let agent = agent_socket(&agent_dir);
    let volume_dir = pods.join("pod-uid/volumes/kubernetes.io~csi/spiffe");
    std::fs::create_dir_all(&volume_dir).unwrap();
    let mounter = LinuxMounter::new(dir.join("staging")).unwrap();
    let config = NodeConfig {
        node_id: "node-a".into(),
        agent_socket_dir: agent_dir.clone(),
        agent_socket_name: None,
        pods_dir: PodsDir::configured(pods).unwrap(),
        agent_socket_wait: Duration::ZERO,
        host_mount,
    };
    let node = NodeService::new(config.clone(), mounter);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    Setup {
        agent_dir,
        target: volume_dir.canonicalize().unwrap().join("mount"),
        config,
        node,
        runtime,
        _agent: agent,
    }
}

impl Setup {
    fn publish(&self) {
        self.runtime
            .block_on(self.node.publish(self.publish_request("csi-0123")))
            .unwrap();
    }

    fn publish_request(&self, volume_id: &str) -> csi::NodePublishVolumeRequest {
        csi::NodePublishVolumeRequest {
            volume_id: volume_id.into(),
            target_path: self.target.display().to_string(),
            volume_capability: Some(csi::VolumeCapability {
                access_type: Some(AccessType::Mount(MountVolume::default())),
                access_mode: Some(AccessMode { mode: 1 }),
            }),
            readonly: true,
            volume_context: [("csi.storage.k8s.io/ephemeral".into(), "true".into())].into(),
            ..Default::default()
        }
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
        // One staged mount is kept for the next publish: read-only, like the target.
        let text = std::fs::read_to_string(mountinfo::THREAD_MOUNTINFO).unwrap();
        let staged: Vec<MountEntry> = mountinfo::parse(&text)
            .into_iter()
            .filter(|m| {
                m.mount_point.starts_with(s.node_staging(dir))
                    && m.mount_point != s.node_staging(dir)
            })
            .collect();
        assert_eq!(staged.len(), 1, "{staged:?}");
        assert!(staged[0].read_only, "{staged:?}");
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

/// Republish answers from the mount id it remembered; a mount stacked on top since, or
/// the same mount made writable, must still be noticed and repaired.
#[test]
fn republish_repairs_a_mount_stacked_on_top_or_made_writable() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        s.publish();
        s.publish();
        mount_bind(&s.agent_dir, &s.target).unwrap();
        assert_eq!(mounts_at(&s.target).len(), 2);
        s.publish();
        let mounts = mounts_at(&s.target);
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert_read_only(&s.target);
        rustix::mount::mount_remount(&s.target, rustix::mount::MountFlags::BIND, "").unwrap();
        assert!(!mounts_at(&s.target)[0].read_only);
        s.publish();
        let mounts = mounts_at(&s.target);
        assert_eq!(mounts.len(), 1, "{mounts:?}");
        assert!(mounts[0].read_only, "{mounts:?}");
        assert_read_only(&s.target);
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
        let _agent = agent_socket(&s.agent_dir);
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

/// A mounter that lets a test act between the node service's validation and its bind.
struct BeforeBind<F> {
    inner: LinuxMounter,
    hook: F,
}

impl<F: Fn() + Send + Sync + 'static> spiffe_csi_driver::mount::Mounter for BeforeBind<F> {
    fn mounts_at(&self, path: &Path) -> std::io::Result<Vec<MountEntry>> {
        self.inner.mounts_at(path)
    }
    fn same_directory(
        &self,
        target: &spiffe_csi_driver::target_path::OpenTarget,
        source: &Path,
    ) -> std::io::Result<bool> {
        self.inner.same_directory(target, source)
    }
    fn bind(
        &self,
        source: &Path,
        target: &spiffe_csi_driver::target_path::OpenTarget,
        mode: HostMount,
    ) -> std::io::Result<()> {
        (self.hook)();
        self.inner.bind(source, target, mode)
    }
    fn unmount(&self, target: &spiffe_csi_driver::target_path::OpenTarget) -> std::io::Result<()> {
        self.inner.unmount(target)
    }
    fn top_mount(&self, path: &Path) -> Option<(u64, bool)> {
        self.inner.top_mount(path)
    }
}

/// The volume directory (or the `mount` directory) is replaced by a symlink to a decoy
/// after the driver validated the path: the bind must not follow it. The control at the
/// end shows that a bind by path, as the driver did before, lands in the decoy.
#[test]
fn a_symlink_swapped_in_after_validation_cannot_redirect_the_bind() {
    for swap_volume_dir in [true, false] {
        in_private_mount_namespace(move |dir| {
            let s = setup(dir, &dir.join("pods"));
            let volume_dir = s.target.parent().unwrap().to_owned();
            let decoy = dir.join("decoy");
            std::fs::create_dir_all(decoy.join("mount")).unwrap();
            let (vd, d) = (volume_dir.clone(), decoy.clone());
            let hook = move || {
                if swap_volume_dir {
                    std::fs::rename(&vd, vd.with_extension("old")).unwrap();
                    std::os::unix::fs::symlink(&d, &vd).unwrap();
                } else {
                    let mount = vd.join("mount");
                    std::fs::rename(&mount, vd.join("mount.old")).unwrap();
                    std::os::unix::fs::symlink(d.join("mount"), &mount).unwrap();
                }
            };
            let node = NodeService::new(
                s.config.clone(),
                BeforeBind {
                    inner: LinuxMounter::new(dir.join("staging")).unwrap(),
                    hook,
                },
            );
            let result = s
                .runtime
                .block_on(node.publish(s.publish_request("csi-0123")));
            let decoy_mount = decoy.join("mount").canonicalize().unwrap();
            assert!(
                mounts_at(&decoy_mount).is_empty(),
                "the bind followed the swapped-in symlink (swap_volume_dir={swap_volume_dir}, result {result:?})"
            );
            assert!(!decoy_mount.join("spire-agent.sock").exists());
            if swap_volume_dir {
                // The bind went where validation looked: the (renamed) volume directory.
                result.unwrap();
                let validated = volume_dir.with_extension("old").join("mount");
                assert_eq!(mounts_at(&validated).len(), 1);
            } else {
                let err = spiffe_csi_driver::error::full_message(&result.unwrap_err());
                assert!(err.contains("symbolic link"), "{err}");
            }
            // Control: a bind by path resolves the symlink and mounts onto the decoy.
            mount_bind(&s.agent_dir, &s.target).unwrap();
            assert_eq!(mounts_at(&decoy_mount).len(), 1);
            unmount(&decoy_mount, UnmountFlags::DETACH).unwrap();
        });
    }
}

#[test]
fn node_mount_mode_decides_the_read_only_flag_on_the_node() {
    for (mode, read_only) in [(HostMount::ReadOnly, true), (HostMount::ReadWrite, false)] {
        in_private_mount_namespace(move |dir| {
            let s = setup_with(dir, &dir.join("pods"), mode);
            s.publish();
            let mounts = mounts_at(&s.target);
            assert_eq!(mounts.len(), 1, "{mounts:?}");
            assert_eq!(mounts[0].read_only, read_only, "{mode:?}: {mounts:?}");
            if read_only {
                assert_read_only(&s.target);
            } else {
                std::fs::write(s.target.join("label-me"), "x").unwrap();
                assert!(s.agent_dir.join("label-me").exists());
            }
            // Restarted with the other mode, the next publish replaces the mount.
            let other = match mode {
                HostMount::ReadOnly => HostMount::ReadWrite,
                HostMount::ReadWrite => HostMount::ReadOnly,
            };
            let node = NodeService::new(
                NodeConfig {
                    host_mount: other,
                    ..s.config.clone()
                },
                LinuxMounter::new(dir.join("staging")).unwrap(),
            );
            s.runtime
                .block_on(node.publish(s.publish_request("csi-0123")))
                .unwrap_err(); // another volume id than kubelet's: AlreadyExists after a restart
            let kubelets = spiffe_csi_driver::target_path::KubeletTarget::parse(
                &s.target.display().to_string(),
            )
            .unwrap()
            .kubelet_volume_id();
            s.runtime
                .block_on(node.publish(s.publish_request(&kubelets)))
                .unwrap();
            let mounts = mounts_at(&s.target);
            assert_eq!(mounts.len(), 1, "{mounts:?}");
            assert_eq!(mounts[0].read_only, !read_only, "{mounts:?}");
        });
    }
}

/// kubelet republishes every volume on each pod sync once the CSIDriver sets
/// `requiresRepublish`; when nothing changed that must stay a mountinfo read and a few
/// stats, no mount. Prints the cost per call, with this namespace's mountinfo and with
/// 500 more mounts (a busy node).
#[test]
fn republish_without_changes_mounts_nothing_and_its_cost_is_printed() {
    in_private_mount_namespace(|dir| {
        let s = setup(dir, &dir.join("pods"));
        s.publish();
        let first = mounts_at(&s.target)[0].mount_id;
        let measure = |label: &str| {
            let lines = std::fs::read_to_string(mountinfo::THREAD_MOUNTINFO)
                .unwrap()
                .lines()
                .count();
            let n = 2000u32;
            let start = Instant::now();
            for _ in 0..n {
                s.publish();
            }
            let per_call = start.elapsed() / n;
            println!(
                "republish, nothing changed ({label}): {per_call:?} per call, {n} calls, {lines} mountinfo lines"
            );
        };
        measure("test namespace");
        let extra = dir.join("extra");
        for i in 0..500 {
            let d = extra.join(i.to_string());
            std::fs::create_dir_all(&d).unwrap();
            rustix::mount::mount(
                "tmpfs",
                &d,
                "tmpfs",
                rustix::mount::MountFlags::empty(),
                None,
            )
            .unwrap();
        }
        measure("500 more mounts");
        let mounts = mounts_at(&s.target);
        assert_eq!(mounts.len(), 1);
        assert_eq!(mounts[0].mount_id, first, "republish replaced a live mount");
    });
}
