//! The SPIRE server: API client and SPIFFE ID handling.

mod address;
pub mod api;
pub mod bootstrap;
mod client;
mod entry;
#[cfg(test)]
pub mod fake;
mod spiffe_id;
pub mod tcp;
pub mod tls;

pub use client::{
    ClientOptions, DEFAULT_LIST_PAGE_SIZE, DEFAULT_MAX_RECEIVE_MESSAGE_SIZE, SpireAddress,
    SpireClient, SpireError,
};
pub use entry::{EntryKey, EntrySpec, Selectors, managed_fields};
pub use spiffe_id::{SpiffeId, SpiffeIdError};

/// An error and its sources, `: `-separated: what logs and statuses show, since the
/// top-level message alone rarely says why (e.g. which certificate a handshake refused).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // tonic and hyper repeat their source's message in their own; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
