//! spire-operator: turns Kubernetes workloads and `spire.spiffe.io` resources into
//! SPIRE registration entries.
//!
//! The binary in `main.rs` only parses arguments and wires these modules together.
#![warn(missing_docs)]

pub mod config;
pub mod crd;
pub mod reconcile;
pub mod spire;
pub mod template;
