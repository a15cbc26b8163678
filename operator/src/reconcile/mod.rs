//! Turning Kubernetes objects into SPIRE registration entries.
//!
//! ```text
//! watch ──marks──> dirty set ──drain──> pass ──> desired (pods, statics) ─┐
//!  (stores)         (dirty)            (runner)                           ├─> plan ──> writer ──> report
//!                                       └─ resync: ListEntries ─> mirror ─┘  (state)   (writer)   (statuses,
//!                                                                                                   events, gauges)
//! ```
//!
//! - [`watch`] keeps trimmed copies of the watched objects in stores and marks in the
//!   [`dirty`] set what each change affects (a pod, a namespace's pods, every pod...).
//! - [`runner`] drains the set into one pass: [`pods`] and [`statics`] recompute the
//!   marked objects into [`state::Desired`]; [`state`] plans the touched keys against the
//!   [`state::Mirror`] ([`diff`] is the pure comparison); [`writer`] sends the plan;
//!   [`bookkeeping`] folds the outcome back into the mirror; [`report`] publishes status.
//!
//! Invariants:
//! - Only the leader's runner writes to SPIRE, to the CRs' status and to the adopted-IDs
//!   ConfigMap ([`adopted`]); watches only fill stores and mark.
//! - The mirror changes only from a full listing or from our own write results. A
//!   resync (every `gcInterval`, and after a create hits AlreadyExists) re-lists the
//!   server and plans every key; desired state comes from the stores, recomputed
//!   incrementally as marks arrive.
//! - No mark is lost: a mark made during a pass waits for the next drain.
//! - Entries are deleted only when [`ownership`] says they are ours.

pub mod access;
pub mod adopted;
pub mod backoff;
pub mod bookkeeping;
pub mod desired;
pub mod diff;
pub mod dirty;
pub mod ownership;
pub mod pod_cache;
pub mod pods;
pub mod report;
pub mod runner;
pub mod services;
pub mod state;
pub mod statics;
#[cfg(test)]
mod tests;
pub mod watch;
pub mod writer;
