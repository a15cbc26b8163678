//! The CRDs we ship in `crds/`, served by a real kube-apiserver: spire-controller-manager's
//! own example objects are accepted and read back unchanged through our Rust types,
//! `kubectl explain` has our descriptions, and a wrongly typed field is rejected.

mod scm_objects;
