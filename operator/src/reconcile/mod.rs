//! Turning Kubernetes objects into SPIRE registration entries.
//!
//! ```text
//! watch ──marks──> dirty set ──drain──> pass ──> desired (pods, statics) ─┐
//!  (stores)         (dirty)            (runner)                           ├─> plan ──> writer ──> report
//!                                       └─ resync: ListEntries ─> mirror ─┘  (state)   (writer)   (statuses,
//!                                                                                                   events, gauges)
//! ```
//!
//! - [`watch`] runs one loop per kind: a sink ([`sinks`]) keeps trimmed copies of the
//!   objects in a cache and marks in the [`dirty`] set what each change affects (a pod,
//!   a namespace's pods, every pod...). A relist marks only after the cache swapped.
//! - [`runner`] drains the set into one pass: [`pods`] and [`statics`] recompute the
//!   marked objects into [`state::Desired`]; [`state`] plans the touched keys against the
//!   [`state::Mirror`] ([`diff`] is the pure comparison); [`writer`] sends the plan;
//!   [`bookkeeping`] folds the outcome back into the mirror; [`adopted`] saves adopted
//!   IDs; [`report`] publishes gauges, statuses and events. [`backoff`] paces retries.
//!
//! Invariants:
//! - Only the leader's runner writes to SPIRE, to the CRs' status and to the adopted-IDs
//!   ConfigMap; watches only fill caches and mark.
//! - The mirror changes only from a full listing or from our own write results.
//! - A resync (every `gcInterval`, and after a create hits AlreadyExists) re-lists the
//!   server, recomputes every desired entry from the caches (any difference from the
//!   incremental state is counted as drift: it should be none) and plans every key.
//!   Between resyncs desired state changes only through marks.
//! - No mark is lost: a mark made during a pass waits for the next drain; failures
//!   are retried by one timer per kind of failure, never faster than its backoff.
//! - Entries are deleted only when [`ownership`] says they are ours; a key held by a
//!   join-token agent entry is never written.

pub mod access;
pub mod adopted;
pub mod annotations;
pub mod backoff;
pub mod bookkeeping;
pub mod chains;
pub mod concurrency;
pub mod desired;
pub mod diff;
pub mod dirty;
pub mod mirror;
pub mod ownership;
#[cfg(test)]
mod plan_properties;
pub mod pod_cache;
pub mod pods;
pub mod report;
pub mod runner;
pub mod services;
pub mod sinks;
pub mod state;
pub mod statics;
#[cfg(test)]
mod tests;
pub mod watch;
pub mod watched_pod;
pub mod writer;
