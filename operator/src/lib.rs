//! spire-operator: turns Kubernetes workloads and `spire.spiffe.io` resources into
//! SPIRE registration entries.
//!
//! The binary in `main.rs` only parses arguments and wires these modules together.
#![warn(missing_docs)]

pub mod config;
pub mod crd;
pub mod federation;
pub mod http;
pub mod label_selector;
pub mod leader;
pub mod metrics;
pub mod reconcile;
pub mod render;
pub mod spire;
pub mod static_mode;
pub mod status;
pub mod template;
pub mod webhook;
pub mod workload_api;
