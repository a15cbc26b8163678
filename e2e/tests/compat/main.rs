//! Compatibility with the reference spire-controller-manager on the same control plane:
//! migration from it, restarts, and a differential comparison of the entries.

mod diff;
mod differential;
mod differential_config;
mod differential_edges;
mod differential_semantics;
mod differential_templates;
mod differential_ties;
mod hardened_chart;
mod hardened_static;
mod hardened_webhook;
mod migration;
