//! Turning desired entries into SPIRE writes.

pub mod desired;
pub mod diff;
pub mod dirty;
pub mod ownership;
pub mod pod_cache;
pub mod runner;
pub mod state;
pub mod watch;
pub mod writer;
