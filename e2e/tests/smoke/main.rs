//! Smoke tests: each starts real components through the harness and asserts what a
//! user would observe. One scenario per file.

mod agent_attestation;
mod apiserver_version;
mod check_spire;
mod cli_interop;
mod controller_manager;
mod crd_round_trip;
mod reference_scm;
mod spire_entries;
mod svid_minting;
mod workload_svid;
