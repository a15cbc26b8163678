//! The SPIRE server: API client and SPIFFE ID handling.

pub mod api;
mod client;
mod spiffe_id;

pub use client::{SpireAddress, SpireClient, SpireError};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
