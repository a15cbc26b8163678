//! The operator against the real kube-apiserver and SPIRE server: one scenario per file.

// First in name order, so that its 3.5-minute rotation test starts first and the
// binary's other tests run beside it rather than after it.
mod admin_over_tcp;
mod annotations;
mod datastore_full;
mod dns_names;
mod federation;
mod federation_ownership;
mod health;
mod identities;
mod large_entries;
mod leader_election;
mod pod_entries;
mod pod_fields;
mod reconcile_switches;
mod renames_and_resync;
mod static_mode;
mod webhook;
