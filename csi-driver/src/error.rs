//! Errors of the Node service, one enum per RPC, each mapped to a gRPC code.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use tonic::{Code, Status};

use crate::target_path::TargetPathError;
use crate::volume_context::VolumeContextError;

/// A system call failed: what was being done, on which path.
#[derive(Debug, thiserror::Error)]
#[error("{action} {path:?}")]
pub struct IoFailure {
    /// What was being done.
    pub action: &'static str,
    /// On which path.
    pub path: PathBuf,
    /// The OS error.
    #[source]
    pub source: io::Error,
}

/// Builds an [`IoFailure`] for `map_err`.
pub fn io_err(action: &'static str, path: &std::path::Path) -> impl FnOnce(io::Error) -> IoFailure {
    let path = path.to_owned();
    move |source| IoFailure {
        action,
        path,
        source,
    }
}

/// Why NodePublishVolume failed.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A required field is empty or unset.
    #[error("{0} is required")]
    Missing(&'static str),
    /// A field holds a value this driver does not support.
    #[error("{field}: {reason}")]
    Unsupported {
        /// The request field, e.g. `volume_capability.mount.fs_type`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The volume context could not be parsed.
    #[error(transparent)]
    VolumeContext(#[from] VolumeContextError),
    /// `target_path` is outside the kubelet root or otherwise unsafe.
    #[error("target_path")]
    TargetPath(#[source] TargetPathError),
    /// Another call for the same volume is running.
    #[error("an operation on volume {0} is already in progress")]
    Busy(String),
    /// The agent socket did not appear within the configured wait.
    #[error("no SPIRE agent socket in {path:?} after waiting {waited:?}")]
    AgentNotReady {
        /// The agent socket directory that was watched.
        path: PathBuf,
        /// How long we waited.
        waited: Duration,
    },
    /// The agent's socket directory does not exist (yet): kubelet retries.
    #[error("SPIRE agent socket directory {0:?} does not exist")]
    AgentDirMissing(PathBuf),
    /// The driver's own mount of the agent directory shows a deleted directory.
    #[error(
        "the driver's mount of the agent socket directory {0:?} shows a deleted directory \
         (it was re-created on the node): restart this driver pod, or mount the directory's \
         parent into the driver (our chart does) so that re-creation is seen"
    )]
    AgentDirStale(PathBuf),
    /// The target is already published for another volume.
    #[error("target {target:?} is already published for volume {existing}")]
    AlreadyPublished {
        /// The target path.
        target: PathBuf,
        /// The volume that owns it.
        existing: String,
    },
    /// Creating the target directory, reading mountinfo or mounting failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// Why NodeUnpublishVolume failed.
#[derive(Debug, thiserror::Error)]
pub enum UnpublishError {
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// `target_path` is outside the kubelet root or otherwise unsafe.
    #[error("target_path")]
    TargetPath(#[source] TargetPathError),
    /// Another call for the same volume is running.
    #[error("an operation on volume {0} is already in progress")]
    Busy(String),
    /// Unmounting or removing the target failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// Why NodeGetVolumeStats failed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// A required field is empty.
    #[error("{0} is required")]
    Missing(&'static str),
    /// Nothing exists at `volume_path`.
    #[error("volume {volume_id} not found at {path:?}")]
    NotFound {
        /// The volume asked about.
        volume_id: String,
        /// The path given.
        path: String,
    },
    /// `volume_path` is outside the kubelet root or otherwise unsafe.
    #[error("volume_path")]
    VolumePath(#[source] TargetPathError),
    /// Reading mountinfo or statvfs failed.
    #[error(transparent)]
    Io(#[from] IoFailure),
}

/// The message and its `source()` chain, joined.
pub fn full_message(err: &dyn std::error::Error) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

impl From<PublishError> for Status {
    fn from(err: PublishError) -> Self {
        let code = match &err {
            PublishError::Missing(_)
            | PublishError::Unsupported { .. }
            | PublishError::VolumeContext(_)
            | PublishError::TargetPath(_) => Code::InvalidArgument,
            PublishError::Busy(_) => Code::Aborted,
            PublishError::AgentNotReady { .. } | PublishError::AgentDirMissing(_) => {
                Code::Unavailable
            }
            PublishError::AlreadyPublished { .. } => Code::AlreadyExists,
            PublishError::AgentDirStale(_) => Code::FailedPrecondition,
            PublishError::Io(_) => Code::Internal,
        };
        Status::new(code, full_message(&err))
    }
}

impl From<UnpublishError> for Status {
    fn from(err: UnpublishError) -> Self {
        let code = match &err {
            UnpublishError::Missing(_) | UnpublishError::TargetPath(_) => Code::InvalidArgument,
            UnpublishError::Busy(_) => Code::Aborted,
            UnpublishError::Io(_) => Code::Internal,
        };
        Status::new(code, full_message(&err))
    }
}

impl From<StatsError> for Status {
    fn from(err: StatsError) -> Self {
        let code = match &err {
            StatsError::Missing(_) | StatsError::VolumePath(_) => Code::InvalidArgument,
            StatsError::NotFound { .. } => Code::NotFound,
            StatsError::Io(_) => Code::Internal,
        };
        Status::new(code, full_message(&err))
    }
}
