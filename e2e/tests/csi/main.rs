//! CSI driver scenarios: csi-sanity against our driver and the Go reference, and the
//! driver serving a real spire-agent's Workload API into a "pod" volume. Needs root
//! (mount namespaces, real bind mounts).

mod daemonsets;
mod driver;
mod repair;
mod sanity;
mod spire_agent;
