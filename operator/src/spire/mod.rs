//! The SPIRE server: API client and SPIFFE ID handling.

pub mod api;
mod client;
mod entry;
mod spiffe_id;

pub use client::{SpireAddress, SpireClient, SpireError};
pub use entry::{EntryKey, EntrySpec, Selectors, managed_fields};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
