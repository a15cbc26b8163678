//! csi-node-driver-registrar: registers a CSI node plugin with kubelet, as
//! kubernetes-csi/node-driver-registrar does, with the same flags, so its image can
//! stand in for the upstream one.
//!
//! kubelet's plugin watcher watches its plugin registry directory
//! (`/var/lib/kubelet/plugins_registry`) for sockets. For each new one it calls
//! `Registration.GetInfo`, registers the CSI driver found there (calling NodeGetInfo on
//! the driver's own socket and adding the driver to the node's CSINode object), and
//! reports the outcome with `NotifyRegistrationStatus`. When the socket goes away, it
//! deregisters the driver.
//!
//! - [`driver`]: asking the driver for its name (CSI Identity over its socket).
//! - [`registration`]: the Registration service and its socket.
//! - [`health`]: `GET /healthz` for the container's liveness probe.
//! - [`authority`]: the request rewriting kubelet's plugin watcher needs to talk to tonic.
#![warn(missing_docs)]

pub mod api;
pub mod authority;
pub mod driver;
pub mod health;
pub mod registration;

/// The plugin API versions this registrar offers kubelet for CSI: upstream's list.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0"];
