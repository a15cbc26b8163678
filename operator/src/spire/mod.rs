//! The SPIRE server: API client and SPIFFE ID handling.

pub mod api;
mod client;
mod entry;
#[cfg(test)]
pub mod fake;
mod spiffe_id;

pub use client::{
    ClientOptions, DEFAULT_LIST_PAGE_SIZE, DEFAULT_MAX_RECEIVE_MESSAGE_SIZE, SpireAddress,
    SpireClient, SpireError,
};
pub use entry::{EntryKey, EntrySpec, Selectors, managed_fields};
pub use spiffe_id::{SpiffeId, SpiffeIdError};
