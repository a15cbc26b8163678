//! spiffe-csi-driver: a CSI node plugin that bind-mounts the SPIRE agent's Workload API
//! socket directory into pods as a read-only ephemeral inline volume.
#![warn(missing_docs)]

/// The CSI plugin name kubelet and pod specs use unless configured otherwise.
pub const DEFAULT_PLUGIN_NAME: &str = "csi.spiffe.io";
