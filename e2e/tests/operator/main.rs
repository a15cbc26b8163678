//! The operator against the real kube-apiserver and SPIRE server: one scenario per file.

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
mod reconcile_switches;
mod spire_tcp;
mod static_mode;
mod webhook;
