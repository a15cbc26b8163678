//! Faults on the real components (SPIRE servers on PostgreSQL, the kube-apiserver, the
//! operator): each scenario ends by checking the exact entry set on the server and a
//! sentinel entry made with the SPIRE CLI, and prints how long convergence took.

mod chart_datastore;
mod common;
mod ha;
mod restarts;
mod spire_server;
