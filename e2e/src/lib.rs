//! Test harness: real components on loopback, for e2e tests, benchmarks and the demo.
//!
//! - [`ControlPlane`]: etcd + kube-apiserver with generated certificates and a ready
//!   [`kube::Client`].
//! - [`Node`]: containerd and a kubelet registered with a [`ControlPlane`], running
//!   real pods from images imported without a registry.
//! - [`Spire`]: spire-server (sqlite) + spire-agent attested by a join token, with the
//!   unix workload attestor.
//! - [`postgres::Postgres`]: a PostgreSQL server for SPIRE's datastore (HA, faults).
//!
//! Every process runs in its own process group and is stopped when its owner drops,
//! also when a test panics. Each component works in its own temporary directory, which
//! is removed on success and kept (its path printed) when the test fails.
#![warn(missing_docs)]

pub mod cluster;
pub mod control_plane;
pub mod csi;
pub mod csi_node;
pub mod daemonset;
pub mod entries;
pub mod helm;
pub mod http;
pub mod image;
pub mod kube_util;
pub mod node;
pub mod operator;
pub mod pki;
pub mod ports;
pub mod postgres;
pub mod process;
pub mod proxy;
pub mod reference;
pub mod spire;
pub mod stand_in_kubelet;
pub mod tools;
pub mod wait;
pub mod webhook;
pub mod workdir;
pub mod world;

pub use control_plane::{ControlPlane, Options as ControlPlaneOptions};
pub use node::Node;
pub use spire::{Options as SpireOptions, Spire};
pub use workdir::WorkDir;
