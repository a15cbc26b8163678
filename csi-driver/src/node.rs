//! The CSI Node service: publish the agent socket directory into pods, read-only.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::{Request, Response, Status};
use tracing::{Instrument, info, warn};

use crate::csi::v1::{
    self as csi, node_service_capability, volume_capability::AccessType,
    volume_capability::access_mode::Mode,
};
use crate::error::{PublishError, StatsError, UnpublishError, io_err};
use crate::identity::holds_socket;
use crate::mount::{HostMount, Mounter};
use crate::target_path::{OpenTarget, PodsDir};
use crate::volume_context::VolumeContext;

/// Settings of the Node service.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Returned by NodeGetInfo.
    pub node_id: String,
    /// The directory holding the agent's Workload API socket; this is what gets mounted.
    pub agent_socket_dir: PathBuf,
    /// The socket's file name inside that directory; `None`: any socket will do.
    pub agent_socket_name: Option<String>,
    /// Which kubelet pods directories targets may live in.
    pub pods_dir: PodsDir,
    /// How long NodePublishVolume waits for the agent socket; zero means not at all.
    pub agent_socket_wait: Duration,
    /// Read-only or read-write on the node (`--node-mount`).
    pub host_mount: HostMount,
}

/// The Node service.
pub struct NodeService<M> {
    config: NodeConfig,
    mounter: Arc<M>,
    in_flight: Arc<Mutex<HashSet<String>>>,
    /// Targets this process published or found live: to tell a repeated call from a
    /// different volume on the same target, and to answer kubelet's republish of a live
    /// mount without reading mountinfo.
    published: Mutex<HashMap<PathBuf, Published>>,
}

/// What this process knows about a target it published.
#[derive(Debug, Clone)]
struct Published {
    volume_id: String,
    /// The mount's id when we last saw it live and alone on the target.
    mount_id: Option<u64>,
}

/// Proof that we hold a volume; dropping it lets the next call for the volume in.
struct VolumeGuard {
    set: Arc<Mutex<HashSet<String>>>,
    volume_id: String,
}

impl Drop for VolumeGuard {
    fn drop(&mut self) {
        lock(&self.set).remove(&self.volume_id);
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere must not wedge every later call.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What a publish found on its target.
#[derive(Debug, Clone, Copy)]
enum OnTarget {
    /// Not a mount point.
    Nothing,
    /// Exactly one read-only (or per `--node-mount`) mount of the agent directory as it
    /// is now: nothing to do.
    Live,
    /// Mounts that show a deleted or other directory, the wrong flags, or several.
    Stale {
        /// How many mounts are stacked there.
        mounts: usize,
    },
}

/// A NodePublishVolume request that passed validation (public for the fuzz targets:
/// this is everything checked before the filesystem is touched).
#[derive(Debug)]
pub struct Publish {
    /// The volume's handle.
    pub volume_id: String,
    /// The target path as sent (checked later against the pods directory).
    pub target_path: String,
    /// The parsed volume context.
    pub context: VolumeContext,
}

impl Publish {
    /// Checks, in order: volume_id, target_path, capability (mount only), access mode,
    /// readonly, ephemeral context. The first failure is reported.
    pub fn parse(req: csi::NodePublishVolumeRequest) -> Result<Self, PublishError> {
        let unsupported = |field, reason: &str| PublishError::Unsupported {
            field,
            reason: reason.to_owned(),
        };
        if req.volume_id.is_empty() {
            return Err(PublishError::Missing("volume_id"));
        }
        if req.target_path.is_empty() {
            return Err(PublishError::Missing("target_path"));
        }
        let capability = req
            .volume_capability
            .ok_or(PublishError::Missing("volume_capability"))?;
        match capability.access_type {
            None => return Err(PublishError::Missing("volume_capability.access_type")),
            Some(AccessType::Block(_)) => {
                return Err(unsupported(
                    "volume_capability.block",
                    "block volumes are not supported, use a mount volume",
                ));
            }
            Some(AccessType::Mount(mount)) => {
                if !mount.fs_type.is_empty() {
                    return Err(unsupported(
                        "volume_capability.mount.fs_type",
                        &format!("must be empty, got {:?}", mount.fs_type),
                    ));
                }
                if !mount.mount_flags.is_empty() {
                    return Err(unsupported(
                        "volume_capability.mount.mount_flags",
                        "mount flags are not supported",
                    ));
                }
            }
        }
        let access_mode = capability
            .access_mode
            .ok_or(PublishError::Missing("volume_capability.access_mode"))?;
        match Mode::try_from(access_mode.mode) {
            Ok(Mode::Unknown) | Err(_) => {
                return Err(unsupported(
                    "volume_capability.access_mode.mode",
                    &format!("unknown access mode {}", access_mode.mode),
                ));
            }
            Ok(_) => {}
        }
        if !req.readonly {
            return Err(unsupported(
                "readonly",
                "must be true: set pod.spec.volumes[].csi.readOnly to true",
            ));
        }
        let context = VolumeContext::parse(&req.volume_context)?;
        if !context.is_ephemeral() {
            return Err(unsupported(
                "volume_context[\"csi.storage.k8s.io/ephemeral\"]",
                "must be \"true\": only ephemeral inline volumes are supported (CSIDriver podInfoOnMount: true)",
            ));
        }
        Ok(Self {
            volume_id: req.volume_id,
            target_path: req.target_path,
            context,
        })
    }
}

impl<M: Mounter> NodeService<M> {
    /// A Node service mounting with `mounter`.
    pub fn new(config: NodeConfig, mounter: M) -> Self {
        Self {
            config,
            mounter: Arc::new(mounter),
            in_flight: Arc::default(),
            published: Mutex::default(),
        }
    }

    fn claim(&self, volume_id: &str) -> Option<VolumeGuard> {
        lock(&self.in_flight)
            .insert(volume_id.to_owned())
            .then(|| VolumeGuard {
                set: self.in_flight.clone(),
                volume_id: volume_id.to_owned(),
            })
    }

    /// Validates, waits for the agent if configured, then mounts (idempotently).
    pub async fn publish(&self, req: csi::NodePublishVolumeRequest) -> Result<(), PublishError> {
        let req = Publish::parse(req)?;
        let target = self
            .config
            .pods_dir
            .open(&req.target_path)
            .map_err(PublishError::TargetPath)?;
        target
            .target
            .check_pod_uid(req.context.pod_uid.as_deref())
            .map_err(PublishError::TargetPath)?;
        let _guard = self
            .claim(&req.volume_id)
            .ok_or_else(|| PublishError::Busy(req.volume_id.clone()))?;
        // Mount syscalls are fast and must run on this thread: the integration tests
        // give only the calling thread a private mount namespace.
        let on_target = self.inspect(&req.volume_id, &target)?;
        if let OnTarget::Live = on_target {
            // kubelet republishes every sync when the CSIDriver asks for it: a live mount
            // needs nothing, not even the agent (which may be restarting right now).
            tracing::debug!(volume_id = %req.volume_id, target = %target.path.display(), "already published");
            return Ok(());
        }
        self.wait_for_agent().await?;
        self.mount(&req.volume_id, &target, on_target)?;
        info!(volume_id = %req.volume_id, pod = %req.context.pod(), target = %target.path.display(), "published");
        Ok(())
    }

    fn agent_ready(&self) -> bool {
        holds_socket(
            &self.config.agent_socket_dir,
            self.config.agent_socket_name.as_deref(),
        )
    }

    async fn wait_for_agent(&self) -> Result<(), PublishError> {
        let wait = self.config.agent_socket_wait;
        if wait.is_zero() {
            return Ok(());
        }
        let deadline = tokio::time::Instant::now() + wait;
        while !self.agent_ready() {
            if tokio::time::Instant::now() >= deadline {
                return Err(PublishError::AgentNotReady {
                    path: self.config.agent_socket_dir.clone(),
                    waited: wait,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Ok(())
    }

    /// Creates the target directory and says what is mounted there; a mount that belongs
    /// to another volume is AlreadyExists.
    fn inspect(&self, volume_id: &str, target: &OpenTarget) -> Result<OnTarget, PublishError> {
        let path = &target.path;
        target
            .create_dir()
            .map_err(io_err("creating target directory", path))?;
        if self.still_live(volume_id, target) {
            return Ok(OnTarget::Live);
        }
        let stacked = self
            .mounter
            .mounts_at(path)
            .map_err(io_err("reading mountinfo for", path))?;
        let Some(top) = stacked.last() else {
            return Ok(OnTarget::Nothing);
        };
        // Whose mount is this? Ours from memory, or, after a restart, the volume kubelet
        // names for this path (its handle is derived from the pod uid and volume name).
        let owner = lock(&self.published)
            .get(path)
            .map(|p| p.volume_id.clone())
            .unwrap_or_else(|| target.target.kubelet_volume_id());
        if owner != volume_id {
            return Err(PublishError::AlreadyPublished {
                target: path.to_owned(),
                existing: owner,
            });
        }
        let live = !top.is_deleted()
            && top.read_only == self.config.host_mount.read_only()
            && self
                .mounter
                .same_directory(target, &self.config.agent_socket_dir)
                .unwrap_or(false);
        if live && stacked.len() == 1 {
            self.remember(path, volume_id, Some(top.mount_id));
            return Ok(OnTarget::Live);
        }
        Ok(OnTarget::Stale {
            mounts: stacked.len(),
        })
    }

    /// Binds the agent directory onto the target, replacing stale mounts first.
    fn mount(
        &self,
        volume_id: &str,
        target: &OpenTarget,
        on_target: OnTarget,
    ) -> Result<(), PublishError> {
        let path = &target.path;
        // Only replace what we can replace with something better.
        self.check_source()?;
        if let OnTarget::Stale { mounts } = on_target {
            warn!(volume_id, target = %path.display(), mounts, "replacing stale or foreign mount");
            self.unmount_all(target)
                .map_err(io_err("unmounting stale mount", path))?;
        }
        self.mounter
            .bind(
                &self.config.agent_socket_dir,
                target,
                self.config.host_mount,
            )
            .map_err(io_err(
                "bind-mounting the agent socket directory onto",
                path,
            ))?;
        let mount_id = self.mounter.top_mount(path).map(|(id, _)| id);
        self.remember(path, volume_id, mount_id);
        Ok(())
    }

    fn remember(&self, path: &Path, volume_id: &str, mount_id: Option<u64>) {
        lock(&self.published).insert(
            path.to_owned(),
            Published {
                volume_id: volume_id.to_owned(),
                mount_id,
            },
        );
    }

    /// kubelet's republish of a mount this process saw live: the same mount is still
    /// on top (so nothing was stacked on it, and it was alone when we saw it), with the
    /// right read-only flag, and still shows the agent directory. Answered with two
    /// stats instead of a mountinfo read, which grows with every mount on the node.
    fn still_live(&self, volume_id: &str, target: &OpenTarget) -> bool {
        let known = lock(&self.published).get(&target.path).cloned();
        let Some(Published {
            volume_id: owner,
            mount_id: Some(known_id),
        }) = known
        else {
            return false;
        };
        owner == volume_id
            && self.mounter.top_mount(&target.path)
                == Some((known_id, self.config.host_mount.read_only()))
            && self
                .mounter
                .same_directory(target, &self.config.agent_socket_dir)
                .unwrap_or(false)
    }

    /// The agent directory must exist and, seen from this process, not be a dead mount.
    fn check_source(&self) -> Result<(), PublishError> {
        let source = &self.config.agent_socket_dir;
        if !source.is_dir() {
            return Err(PublishError::AgentDirMissing(source.clone()));
        }
        // When the driver's own view of the agent directory is a mount of that directory
        // (the Go driver's DaemonSets), re-creating it on the node leaves that view dead;
        // binding it would only hand pods the dead directory.
        let own_view = self
            .mounter
            .mounts_at(source)
            .map_err(io_err("reading mountinfo for", source))?;
        if own_view.last().is_some_and(|m| m.is_deleted()) {
            return Err(PublishError::AgentDirStale(source.clone()));
        }
        Ok(())
    }

    /// Unmounts every mount stacked on `target`; a mount that vanished meanwhile is fine.
    fn unmount_all(&self, target: &OpenTarget) -> io::Result<()> {
        let stacked = self.mounter.mounts_at(&target.path)?;
        for _ in 0..stacked.len() {
            match self.mounter.unmount(target) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(rustix::io::Errno::INVAL.raw_os_error()) => {
                    break;
                }
                Err(e) => return Err(e),
            }
        }
        if self.mounter.mounts_at(&target.path)?.is_empty() {
            Ok(())
        } else {
            Err(io::Error::other("mounts remain after unmounting"))
        }
    }

    /// Unmounts and removes the target; OK when there is nothing to undo.
    pub fn unpublish(&self, req: csi::NodeUnpublishVolumeRequest) -> Result<(), UnpublishError> {
        if req.volume_id.is_empty() {
            return Err(UnpublishError::Missing("volume_id"));
        }
        if req.target_path.is_empty() {
            return Err(UnpublishError::Missing("target_path"));
        }
        let target = match self.config.pods_dir.open(&req.target_path) {
            Ok(target) => target,
            // After a reboot or a finished teardown the pod dir may be gone: nothing to do.
            Err(e) if e.is_missing() => return Ok(()),
            Err(e) => return Err(UnpublishError::TargetPath(e)),
        };
        let _guard = self
            .claim(&req.volume_id)
            .ok_or_else(|| UnpublishError::Busy(req.volume_id.clone()))?;
        let path = &target.path;
        self.unmount_all(&target)
            .map_err(io_err("unmounting", path))?;
        target
            .remove_dir()
            .map_err(io_err("removing target directory", path))?;
        lock(&self.published).remove(path);
        info!(volume_id = %req.volume_id, pod_uid = %target.target.pod_uid, target = %path.display(), "unpublished");
        Ok(())
    }

    /// Reports usage of the mounted directory and whether the mount is still live.
    pub fn stats(
        &self,
        req: csi::NodeGetVolumeStatsRequest,
    ) -> Result<csi::NodeGetVolumeStatsResponse, StatsError> {
        if req.volume_id.is_empty() {
            return Err(StatsError::Missing("volume_id"));
        }
        if req.volume_path.is_empty() {
            return Err(StatsError::Missing("volume_path"));
        }
        let not_found = || StatsError::NotFound {
            volume_id: req.volume_id.clone(),
            path: req.volume_path.clone(),
        };
        if std::fs::symlink_metadata(&req.volume_path).is_err() {
            return Err(not_found());
        }
        let target = self
            .config
            .pods_dir
            .open(&req.volume_path)
            .map_err(StatsError::VolumePath)?;
        let path = &target.path;
        let stacked = self
            .mounter
            .mounts_at(path)
            .map_err(io_err("reading mountinfo for", path))?;
        let source = &self.config.agent_socket_dir;
        let problem = match stacked.last() {
            None => Some("target is not a mount point".to_owned()),
            Some(top) if top.is_deleted() => Some(format!(
                "mount shows a deleted agent socket directory ({})",
                top.root
            )),
            Some(_)
                if !self
                    .mounter
                    .same_directory(&target, source)
                    .unwrap_or(false) =>
            {
                Some(format!("mount no longer shows {}", source.display()))
            }
            Some(_) if !holds_socket(path, self.config.agent_socket_name.as_deref()) => {
                Some(match &self.config.agent_socket_name {
                    Some(name) => format!("agent socket {name} not present"),
                    None => "no agent socket present".to_owned(),
                })
            }
            Some(_) => None,
        };
        let usage = usage(path).map_err(io_err("statvfs", path))?;
        Ok(csi::NodeGetVolumeStatsResponse {
            usage,
            volume_condition: Some(csi::VolumeCondition {
                abnormal: problem.is_some(),
                message: problem.unwrap_or_else(|| "agent socket directory mounted".to_owned()),
            }),
        })
    }
}

fn usage(path: &Path) -> io::Result<Vec<csi::VolumeUsage>> {
    let st = rustix::fs::statvfs(path)?;
    let clamp = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    let bytes = |blocks: u64| clamp(blocks.saturating_mul(st.f_frsize));
    Ok(vec![
        csi::VolumeUsage {
            available: bytes(st.f_bavail),
            total: bytes(st.f_blocks),
            used: bytes(st.f_blocks.saturating_sub(st.f_bfree)),
            unit: csi::volume_usage::Unit::Bytes.into(),
        },
        csi::VolumeUsage {
            available: clamp(st.f_favail),
            total: clamp(st.f_files),
            used: clamp(st.f_files.saturating_sub(st.f_ffree)),
            unit: csi::volume_usage::Unit::Inodes.into(),
        },
    ])
}

/// Turns a Node RPC's outcome into the gRPC reply, logging a failure with its code in
/// the RPC's span.
fn reply<T, E: Into<Status>>(
    span: &tracing::Span,
    result: Result<T, E>,
) -> Result<Response<T>, Status> {
    result.map(Response::new).map_err(|e| {
        let status = e.into();
        span.in_scope(|| warn!(code = ?status.code(), message = status.message(), "failed"));
        status
    })
}

fn rpc_capability(kind: node_service_capability::rpc::Type) -> csi::NodeServiceCapability {
    csi::NodeServiceCapability {
        r#type: Some(node_service_capability::Type::Rpc(
            node_service_capability::Rpc {
                r#type: kind.into(),
            },
        )),
    }
}

#[tonic::async_trait]
impl<M: Mounter> csi::node_server::Node for NodeService<M> {
    async fn node_stage_volume(
        &self,
        _: Request<csi::NodeStageVolumeRequest>,
    ) -> Result<Response<csi::NodeStageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "STAGE_UNSTAGE_VOLUME is not supported",
        ))
    }

    async fn node_unstage_volume(
        &self,
        _: Request<csi::NodeUnstageVolumeRequest>,
    ) -> Result<Response<csi::NodeUnstageVolumeResponse>, Status> {
        Err(Status::unimplemented(
            "STAGE_UNSTAGE_VOLUME is not supported",
        ))
    }

    async fn node_publish_volume(
        &self,
        request: Request<csi::NodePublishVolumeRequest>,
    ) -> Result<Response<csi::NodePublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let (volume_id, target) = (req.volume_id.clone(), req.target_path.clone());
        let pod = VolumeContext::parse(&req.volume_context)
            .map(|c| c.pod())
            .unwrap_or_default();
        let span = tracing::info_span!("NodePublishVolume", %volume_id, %pod, %target);
        let result = self.publish(req).instrument(span.clone()).await;
        reply(&span, result.map(|()| csi::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        request: Request<csi::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<csi::NodeUnpublishVolumeResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("NodeUnpublishVolume", volume_id = %req.volume_id, target = %req.target_path);
        reply(
            &span,
            span.in_scope(|| self.unpublish(req))
                .map(|()| csi::NodeUnpublishVolumeResponse {}),
        )
    }

    async fn node_get_volume_stats(
        &self,
        request: Request<csi::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<csi::NodeGetVolumeStatsResponse>, Status> {
        let req = request.into_inner();
        let span = tracing::info_span!("NodeGetVolumeStats", volume_id = %req.volume_id, path = %req.volume_path);
        reply(&span, span.in_scope(|| self.stats(req)))
    }

    async fn node_expand_volume(
        &self,
        _: Request<csi::NodeExpandVolumeRequest>,
    ) -> Result<Response<csi::NodeExpandVolumeResponse>, Status> {
        Err(Status::unimplemented("EXPAND_VOLUME is not supported"))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<csi::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<csi::NodeGetCapabilitiesResponse>, Status> {
        use node_service_capability::rpc::Type;
        Ok(Response::new(csi::NodeGetCapabilitiesResponse {
            capabilities: vec![
                rpc_capability(Type::GetVolumeStats),
                rpc_capability(Type::VolumeCondition),
            ],
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<csi::NodeGetInfoRequest>,
    ) -> Result<Response<csi::NodeGetInfoResponse>, Status> {
        Ok(Response::new(csi::NodeGetInfoResponse {
            node_id: self.config.node_id.clone(),
            max_volumes_per_node: 0,
            accessible_topology: None,
        }))
    }
}

#[cfg(test)]
#[path = "node_tests.rs"]
mod tests;
