//! Turning desired entries into SPIRE writes.

pub mod diff;
pub mod dirty;
