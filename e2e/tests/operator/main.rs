//! The operator against the real kube-apiserver and SPIRE server: one scenario per file.

mod leader_election;
