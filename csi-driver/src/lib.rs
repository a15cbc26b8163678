//! spiffe-csi-driver: a CSI node plugin that bind-mounts the SPIRE agent's Workload API
//! socket directory into pods as a read-only ephemeral inline volume.
//!
//! - [`identity`]: GetPluginInfo, GetPluginCapabilities, Probe.
//! - [`node`]: NodePublishVolume / NodeUnpublishVolume / NodeGetVolumeStats and friends.
//! - [`mount`]: the read-only bind, behind the [`mount::Mounter`] trait.
//! - [`volume_context`], [`target_path`], [`mountinfo`]: parsing kubelet's inputs.
//! - [`server`]: the private Unix socket and the gRPC server.
//! - [`selinux`]: what SELinux on the node means for the agent directory.
#![warn(missing_docs)]

pub mod cli;
pub mod csi;
pub mod duration;
pub mod error;
pub mod identity;
pub mod mount;
pub mod mountinfo;
pub mod node;
pub mod selinux;
pub mod server;
pub mod target_path;
pub mod volume_context;

/// The CSI plugin name kubelet and pod specs use unless configured otherwise.
pub const DEFAULT_PLUGIN_NAME: &str = "csi.spiffe.io";
